//! The S-CSCF's registrations (`migrations/*/0002_registrations.sql`): one
//! [`RegistrationRecord`] per registered public identity, with its contact bindings, saved
//! whole in one transaction (so a reader never sees half a registration) and loaded back at
//! start by the S-CSCF whose Server-Name holds them.

use sqlx::Row;

use crate::{Store, StoreError, db};

/// One contact bound to a registered public identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRecord {
    /// The Contact URI (the binding's key).
    pub contact_uri: String,
    /// The whole Contact value as registered, without `expires`.
    pub contact: String,
    /// The Path values of the REGISTER, in order.
    pub path: Vec<String>,
    /// Call-ID of the REGISTER that made or refreshed it.
    pub call_id: String,
    /// Its CSeq number.
    pub cseq: i64,
    /// When it expires, in Unix milliseconds.
    pub expires_at: i64,
}

/// A registered public identity as the S-CSCF keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRecord {
    /// The registered IMPU (the To of the REGISTER).
    pub impu: String,
    /// The IMPI that registered it.
    pub impi: String,
    /// Server-Name of the S-CSCF holding the registration.
    pub scscf_name: String,
    /// The User-Data (IMSSubscription XML) the HSS sent.
    pub user_data: String,
    /// The implicit registration set, as P-Associated-URI lists it.
    pub associated_uris: Vec<String>,
    /// The current contacts.
    pub bindings: Vec<BindingRecord>,
}

fn join_lines(v: &[String]) -> String {
    v.join("\n")
}

fn split_lines(s: &str) -> Vec<String> {
    s.split('\n')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Store {
    /// Saves a registration and replaces its bindings, in one transaction. An empty
    /// `user_data` keeps the one stored (the S-CSCF holds the XML in the store only and
    /// sends it when the HSS sent a new one).
    pub async fn save_registration(&self, r: &RegistrationRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        save_in(&mut tx, r).await?;
        tx.commit().await.map_err(db("commit"))?;
        Ok(())
    }

    /// Deletes a registration and its bindings; returns whether there was one.
    pub async fn delete_registration(&self, impu: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        let had = delete_in(&mut tx, impu).await?;
        tx.commit().await.map_err(db("commit"))?;
        Ok(had)
    }

    /// Applies `writes` in their order in one transaction (the S-CSCF's group commit: the
    /// changes of many REGISTERs cost one commit, and one `begin`/`commit` hand-off to the
    /// database's worker, instead of one each). All or nothing.
    pub async fn apply_registrations(
        &self,
        writes: &[RegistrationWrite],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        for w in writes {
            match w {
                RegistrationWrite::Save(r) => save_in(&mut tx, r).await?,
                RegistrationWrite::Delete(impu) => {
                    delete_in(&mut tx, impu).await?;
                }
            }
        }
        tx.commit().await.map_err(db("commit"))?;
        Ok(())
    }

    /// One registration with its bindings, or `None`.
    pub async fn registration(&self, impu: &str) -> Result<Option<RegistrationRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT impu, impi, scscf_name, user_data, associated_uris FROM scscf_registration WHERE impu = $1",
        )
        .bind(impu)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read registration"))?;
        let Some(row) = row else { return Ok(None) };
        let mut r = registration_row(&row)?;
        r.bindings = self.bindings_of(&r.impu).await?;
        Ok(Some(r))
    }

    /// Every registration held by the S-CSCF named `scscf_name`, with its bindings.
    pub async fn registrations_of_scscf(
        &self,
        scscf_name: &str,
    ) -> Result<Vec<RegistrationRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT impu, impi, scscf_name, user_data, associated_uris FROM scscf_registration \
             WHERE scscf_name = $1 ORDER BY impu",
        )
        .bind(scscf_name)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read registrations"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut r = registration_row(&row)?;
            r.bindings = self.bindings_of(&r.impu).await?;
            out.push(r);
        }
        Ok(out)
    }

    async fn bindings_of(&self, impu: &str) -> Result<Vec<BindingRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT contact_uri, contact, path, call_id, cseq, expires_at FROM scscf_binding \
             WHERE impu = $1 ORDER BY contact_uri",
        )
        .bind(impu)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read bindings"))?;
        let get = |e| db("read bindings")(e);
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(BindingRecord {
                contact_uri: row.try_get(0).map_err(get)?,
                contact: row.try_get(1).map_err(get)?,
                path: split_lines(&row.try_get::<String, _>(2).map_err(get)?),
                call_id: row.try_get(3).map_err(get)?,
                cseq: row.try_get(4).map_err(get)?,
                expires_at: row.try_get(5).map_err(get)?,
            });
        }
        Ok(out)
    }
}

fn registration_row(row: &sqlx::any::AnyRow) -> Result<RegistrationRecord, StoreError> {
    let get = |e| db("read registration")(e);
    Ok(RegistrationRecord {
        impu: row.try_get(0).map_err(get)?,
        impi: row.try_get(1).map_err(get)?,
        scscf_name: row.try_get(2).map_err(get)?,
        user_data: row.try_get(3).map_err(get)?,
        associated_uris: split_lines(&row.try_get::<String, _>(4).map_err(get)?),
        bindings: Vec::new(),
    })
}

/// One change of the S-CSCF's registrations, for [`Store::apply_registrations`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationWrite {
    /// Save it ([`Store::save_registration`]: an empty `user_data` keeps the stored one).
    Save(RegistrationRecord),
    /// Delete the registration of this IMPU with its bindings.
    Delete(String),
}

async fn save_in(tx: &mut sqlx::AnyConnection, r: &RegistrationRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO scscf_registration (impu, impi, scscf_name, user_data, associated_uris) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (impu) DO UPDATE SET impi = excluded.impi, \
         scscf_name = excluded.scscf_name, user_data = CASE WHEN excluded.user_data = '' \
         THEN scscf_registration.user_data ELSE excluded.user_data END, \
         associated_uris = excluded.associated_uris",
    )
    .bind(&r.impu)
    .bind(&r.impi)
    .bind(&r.scscf_name)
    .bind(&r.user_data)
    .bind(join_lines(&r.associated_uris))
    .execute(&mut *tx)
    .await
    .map_err(db("save registration"))?;
    sqlx::query("DELETE FROM scscf_binding WHERE impu = $1")
        .bind(&r.impu)
        .execute(&mut *tx)
        .await
        .map_err(db("save registration"))?;
    for b in &r.bindings {
        sqlx::query(
            "INSERT INTO scscf_binding (impu, contact_uri, contact, path, call_id, cseq, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&r.impu)
        .bind(&b.contact_uri)
        .bind(&b.contact)
        .bind(join_lines(&b.path))
        .bind(&b.call_id)
        .bind(b.cseq)
        .bind(b.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db("save registration"))?;
    }
    Ok(())
}

async fn delete_in(tx: &mut sqlx::AnyConnection, impu: &str) -> Result<bool, StoreError> {
    sqlx::query("DELETE FROM scscf_binding WHERE impu = $1")
        .bind(impu)
        .execute(&mut *tx)
        .await
        .map_err(db("delete registration"))?;
    let res = sqlx::query("DELETE FROM scscf_registration WHERE impu = $1")
        .bind(impu)
        .execute(&mut *tx)
        .await
        .map_err(db("delete registration"))?;
    Ok(res.rows_affected() > 0)
}

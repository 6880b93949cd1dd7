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

/// A list of URIs or header values as one text column, a line each (the S-CSCF's and the
/// P-CSCF's rows alike).
pub(crate) fn join_lines(v: &[String]) -> String {
    v.join("\n")
}

/// [`join_lines`] read back; empty lines dropped.
pub(crate) fn split_lines(s: &str) -> Vec<String> {
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
        save_in(&mut tx, r, &r.user_data).await?;
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
    ///
    /// A batch of [`ROWS`] changes or more is first reduced to the last change of each IMPU
    /// (what applying them in order leaves), then written [`ROWS`] IMPUs at a time with four
    /// multi-row statements (bindings deleted, registrations deleted, registrations upserted,
    /// bindings inserted) instead of three statements per change: each statement is a
    /// hand-off to sqlx's SQLite worker thread, which perf showed as most of the S-CSCF's
    /// cost of a write. The rest goes change by change.
    pub async fn apply_registrations(
        &self,
        writes: &[RegistrationWrite],
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let out = self.apply_registrations_batch(writes).await;
        crate::note_write("registrations", writes.len(), started);
        out
    }

    async fn apply_registrations_batch(
        &self,
        writes: &[RegistrationWrite],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        if writes.len() < ROWS {
            for w in writes {
                match w {
                    RegistrationWrite::Save(r) => save_in(&mut tx, r, &r.user_data).await?,
                    RegistrationWrite::Delete(impu) => {
                        delete_in(&mut tx, impu).await?;
                    }
                }
            }
        } else {
            let last = last_changes(writes);
            let mut chunks = last.chunks_exact(ROWS);
            for chunk in chunks.by_ref() {
                rows_in(&mut tx, chunk).await?;
            }
            for c in chunks.remainder() {
                if c.deleted || c.save.is_none() {
                    delete_in(&mut tx, c.impu).await?;
                }
                if let Some(r) = c.save {
                    save_in(&mut tx, r, c.user_data).await?;
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

/// Saves `r` with the User-Data `user_data` (empty: keep the stored one).
async fn save_in(
    tx: &mut sqlx::AnyConnection,
    r: &RegistrationRecord,
    user_data: &str,
) -> Result<(), StoreError> {
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
    .bind(user_data)
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

/// IMPUs per multi-row statement of [`Store::apply_registrations`] (one SQL text per kind of
/// statement, so that sqlx keeps each prepared).
pub const ROWS: usize = 8;

/// What a batch leaves for one IMPU.
struct LastChange<'a> {
    impu: &'a str,
    /// Its last save, or `None` when its last change deletes it.
    save: Option<&'a RegistrationRecord>,
    /// The User-Data to save with it: that of the latest save since its last delete that
    /// carried one (empty: keep the stored one), as the saves applied in order would leave.
    user_data: &'a str,
    /// A delete came before that save: the stored row goes first (a save without User-Data
    /// then stores none, as applying the changes in order would).
    deleted: bool,
}

/// The last change of each IMPU of `writes`, in the order each IMPU first appears.
fn last_changes(writes: &[RegistrationWrite]) -> Vec<LastChange<'_>> {
    let mut out: Vec<LastChange<'_>> = Vec::with_capacity(writes.len());
    let mut at: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(writes.len());
    for w in writes {
        let impu = match w {
            RegistrationWrite::Save(r) => r.impu.as_str(),
            RegistrationWrite::Delete(impu) => impu.as_str(),
        };
        let i = *at.entry(impu).or_insert_with(|| {
            out.push(LastChange {
                impu,
                save: None,
                user_data: "",
                deleted: false,
            });
            out.len() - 1
        });
        let c = &mut out[i];
        match w {
            RegistrationWrite::Delete(_) => {
                c.save = None;
                c.user_data = "";
                c.deleted = true;
            }
            RegistrationWrite::Save(r) => {
                if !r.user_data.is_empty() {
                    c.user_data = &r.user_data;
                }
                c.save = Some(r);
            }
        }
    }
    out
}

/// `($first, $first+1, ...)` for `n` parameters: one row of a VALUES list, or an IN list.
pub(crate) fn params(first: usize, n: usize) -> String {
    let list: Vec<String> = (first..first + n).map(|i| format!("${i}")).collect();
    format!("({})", list.join(", "))
}

/// Writes one chunk of [`ROWS`] last changes with four multi-row statements.
async fn rows_in(tx: &mut sqlx::AnyConnection, chunk: &[LastChange<'_>]) -> Result<(), StoreError> {
    let op = "save registrations";
    // 1. Every binding of these IMPUs goes (saves bring their own).
    let sql = format!(
        "DELETE FROM scscf_binding WHERE impu IN {}",
        params(1, chunk.len())
    );
    let mut q = sqlx::query(&sql);
    for c in chunk {
        q = q.bind(c.impu);
    }
    q.execute(&mut *tx).await.map_err(db(op))?;
    // 2. Registrations deleted (last change a delete, or a delete before the last save).
    let gone: Vec<&str> = chunk
        .iter()
        .filter(|c| c.deleted || c.save.is_none())
        .map(|c| c.impu)
        .collect();
    if !gone.is_empty() {
        let sql = format!(
            "DELETE FROM scscf_registration WHERE impu IN {}",
            params(1, gone.len())
        );
        let mut q = sqlx::query(&sql);
        for impu in &gone {
            q = q.bind(*impu);
        }
        q.execute(&mut *tx).await.map_err(db(op))?;
    }
    // 3. Registrations saved.
    let saves: Vec<(&RegistrationRecord, &str)> = chunk
        .iter()
        .filter_map(|c| c.save.map(|r| (r, c.user_data)))
        .collect();
    if saves.is_empty() {
        return Ok(());
    }
    let values: Vec<String> = (0..saves.len()).map(|i| params(1 + 5 * i, 5)).collect();
    let sql = format!(
        "INSERT INTO scscf_registration (impu, impi, scscf_name, user_data, associated_uris) \
         VALUES {} ON CONFLICT (impu) DO UPDATE SET impi = excluded.impi, \
         scscf_name = excluded.scscf_name, user_data = CASE WHEN excluded.user_data = '' \
         THEN scscf_registration.user_data ELSE excluded.user_data END, \
         associated_uris = excluded.associated_uris",
        values.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for (r, user_data) in &saves {
        q = q
            .bind(r.impu.as_str())
            .bind(r.impi.as_str())
            .bind(r.scscf_name.as_str())
            .bind(*user_data)
            .bind(join_lines(&r.associated_uris));
    }
    q.execute(&mut *tx).await.map_err(db(op))?;
    // 4. Their bindings.
    let bindings: Vec<(&str, &BindingRecord)> = saves
        .iter()
        .flat_map(|(r, _)| r.bindings.iter().map(move |b| (r.impu.as_str(), b)))
        .collect();
    for part in bindings.chunks(ROWS * 4) {
        let values: Vec<String> = (0..part.len()).map(|i| params(1 + 7 * i, 7)).collect();
        let sql = format!(
            "INSERT INTO scscf_binding (impu, contact_uri, contact, path, call_id, cseq, expires_at) \
             VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (impu, b) in part {
            q = q
                .bind(*impu)
                .bind(b.contact_uri.as_str())
                .bind(b.contact.as_str())
                .bind(join_lines(&b.path))
                .bind(b.call_id.as_str())
                .bind(b.cseq)
                .bind(b.expires_at);
        }
        q.execute(&mut *tx).await.map_err(db(op))?;
    }
    Ok(())
}

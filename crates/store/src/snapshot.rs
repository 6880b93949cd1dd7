//! Whole subscriptions in and batched changes out, for a network function that serves from
//! memory (the HSS's `subscribers` module): [`Store::load_subscriptions`] reads every table
//! of a range of subscriptions in five queries (one subscription on a cache miss, or a whole
//! range of ids when the HSS preloads), and [`Store::apply`] writes many small changes (S-CSCF
//! assignment, registration state, SQN) in one transaction, so that the per-message cost of
//! the database is a share of one commit instead of a round trip per query.

use std::collections::HashMap;

use crate::{
    CapabilitySet, Credentials, PublicIdentity, RegState, SQN_MODULUS, ScscfAssignment, Store,
    StoreError, db,
};
use sqlx::Row;

/// One private identity of a subscription, with the public identities it may use.
#[derive(Debug, Clone)]
pub struct PrivateIdentityRecord {
    pub impi: String,
    pub credentials: Credentials,
    /// Public identities this IMPI may use, sorted.
    pub impus: Vec<String>,
}

/// A whole subscription: everything the HSS needs to answer Cx for it.
#[derive(Debug, Clone)]
pub struct SubscriptionRecord {
    pub id: i64,
    /// The name of its capability set, if it has one.
    pub capability_set: Option<String>,
    pub scscf: Option<ScscfAssignment>,
    /// Visited networks it may register from (besides the home network).
    pub roaming_allowed: Vec<String>,
    /// Sorted by IMPI.
    pub private_identities: Vec<PrivateIdentityRecord>,
    /// Service profiles in id order: their iFC XML and public identities (sorted by IMPU).
    pub profiles: Vec<(String, Vec<PublicIdentity>)>,
}

/// Which identity names a subscription.
#[derive(Debug, Clone, Copy)]
pub enum IdentityKey<'a> {
    Impu(&'a str),
    Impi(&'a str),
}

/// One change for [`Store::apply`].
#[derive(Debug, Clone)]
pub enum Write {
    /// Assign (`Some`) or clear (`None`) the subscription's S-CSCF.
    Scscf {
        subscription_id: i64,
        assignment: Option<ScscfAssignment>,
    },
    /// Set the registration state of one implicit registration set.
    RegState {
        subscription_id: i64,
        irs: i64,
        state: RegState,
    },
    /// Advance the SQN of an AKA IMPI by `delta` (mod 2^48); the outcome is the new value.
    AdvanceSqn { impi: String, delta: u64 },
    /// Set the SQN of an AKA IMPI (resynchronisation); the outcome is the value.
    SetSqn { impi: String, sqn: u64 },
}

impl Store {
    /// The id of the subscription that owns `key`, or `None`.
    pub async fn subscription_id(&self, key: IdentityKey<'_>) -> Result<Option<i64>, StoreError> {
        let (sql, k) = match key {
            IdentityKey::Impu(k) => (
                "SELECT subscription_id FROM public_identity WHERE impu = $1",
                k,
            ),
            IdentityKey::Impi(k) => (
                "SELECT subscription_id FROM private_identity WHERE impi = $1",
                k,
            ),
        };
        sqlx::query_scalar(sql)
            .bind(k)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("find subscription"))
    }

    /// The subscriptions with ids in `first..=last`, whole, in id order (five queries
    /// whatever the range).
    pub async fn load_subscriptions(
        &self,
        first: i64,
        last: i64,
    ) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let op = "load subscriptions";
        let get = |e| db(op)(e);
        let rows = self
            .range(
                "SELECT id, capability_set, scscf_name, scscf_host FROM subscription \
             WHERE id BETWEEN $1 AND $2 ORDER BY id",
                first,
                last,
            )
            .await?;
        let mut subs: Vec<SubscriptionRecord> = Vec::with_capacity(rows.len());
        let mut index: HashMap<i64, usize> = HashMap::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.try_get(0).map_err(get)?;
            let name: Option<String> = r.try_get(2).map_err(get)?;
            let host: Option<String> = r.try_get(3).map_err(get)?;
            index.insert(id, subs.len());
            subs.push(SubscriptionRecord {
                id,
                capability_set: r.try_get(1).map_err(get)?,
                scscf: name.map(|server_name| ScscfAssignment {
                    server_name,
                    diameter_host: host,
                }),
                roaming_allowed: Vec::new(),
                private_identities: Vec::new(),
                profiles: Vec::new(),
            });
        }
        if subs.is_empty() {
            return Ok(subs);
        }
        let rows = self
        .range(
            "SELECT subscription_id, impi, auth_scheme, k, opc, amf, sqn, digest_realm, digest_ha1 \
             FROM private_identity WHERE subscription_id BETWEEN $1 AND $2 ORDER BY impi",
            first,
            last,
        )
        .await?;
        let mut impi_at: HashMap<String, (usize, usize)> = HashMap::with_capacity(rows.len());
        for r in rows {
            let sid: i64 = r.try_get(0).map_err(get)?;
            let Some(&at) = index.get(&sid) else { continue };
            let impi: String = r.try_get(1).map_err(get)?;
            let credentials = crate::credentials_row(&r, 2)?;
            let ids = &mut subs[at].private_identities;
            impi_at.insert(impi.clone(), (at, ids.len()));
            ids.push(PrivateIdentityRecord {
                impi,
                credentials,
                impus: Vec::new(),
            });
        }
        let rows = self
            .range(
                "SELECT a.impi, a.impu FROM impi_impu a JOIN private_identity i ON i.impi = a.impi \
             WHERE i.subscription_id BETWEEN $1 AND $2 ORDER BY a.impu",
                first,
                last,
            )
            .await?;
        for r in rows {
            let impi: String = r.try_get(0).map_err(get)?;
            if let Some(&(s, i)) = impi_at.get(&impi) {
                subs[s].private_identities[i]
                    .impus
                    .push(r.try_get(1).map_err(get)?);
            }
        }
        let rows = self
        .range(
            "SELECT sp.subscription_id, sp.id, sp.ifc_xml, p.impu, p.irs, p.barred, p.reg_state \
             FROM service_profile sp JOIN public_identity p \
             ON p.subscription_id = sp.subscription_id AND p.service_profile_id = sp.id \
             WHERE sp.subscription_id BETWEEN $1 AND $2 ORDER BY sp.subscription_id, sp.id, p.impu",
            first,
            last,
        )
        .await?;
        let mut last_profile: Option<(i64, i64)> = None;
        for r in rows {
            let sid: i64 = r.try_get(0).map_err(get)?;
            let Some(&at) = index.get(&sid) else { continue };
            let pid: i64 = r.try_get(1).map_err(get)?;
            let identity = PublicIdentity {
                impu: r.try_get(3).map_err(get)?,
                subscription_id: sid,
                irs: r.try_get(4).map_err(get)?,
                barred: r.try_get::<i64, _>(5).map_err(get)? != 0,
                reg_state: r.try_get(6).map_err(get)?,
            };
            let profiles = &mut subs[at].profiles;
            match profiles.last_mut() {
                Some((_, ids)) if last_profile == Some((sid, pid)) => ids.push(identity),
                _ => profiles.push((r.try_get(2).map_err(get)?, vec![identity])),
            }
            last_profile = Some((sid, pid));
        }
        let rows = self
            .range(
                "SELECT subscription_id, visited_network FROM roaming_allowed \
             WHERE subscription_id BETWEEN $1 AND $2",
                first,
                last,
            )
            .await?;
        for r in rows {
            let sid: i64 = r.try_get(0).map_err(get)?;
            if let Some(&at) = index.get(&sid) {
                subs[at].roaming_allowed.push(r.try_get(1).map_err(get)?);
            }
        }
        Ok(subs)
    }

    /// The rows of `sql`, whose `$1` and `$2` are the first and last subscription ids.
    async fn range(
        &self,
        sql: &str,
        first: i64,
        last: i64,
    ) -> Result<Vec<sqlx::any::AnyRow>, StoreError> {
        sqlx::query(sql)
            .bind(first)
            .bind(last)
            .fetch_all(&self.pool)
            .await
            .map_err(db("load subscriptions"))
    }

    /// The highest subscription id (0 when there is none): the end of a preload.
    pub async fn max_subscription_id(&self) -> Result<i64, StoreError> {
        let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM subscription")
            .fetch_one(&self.pool)
            .await
            .map_err(db("find subscriptions"))?;
        Ok(id.unwrap_or(0))
    }

    /// A capability set by name, or `None`.
    pub async fn capability_set(&self, name: &str) -> Result<Option<CapabilitySet>, StoreError> {
        let row = sqlx::query(
            "SELECT name, mandatory, optional, server_names FROM capability_set WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read capabilities"))?;
        row.map(|r| crate::capability_row(&r)).transpose()
    }

    /// Writes `writes` in one transaction, in order. The outcome of each is its new SQN for
    /// the SQN writes (`None` when the IMPI is gone or not AKA) and `None` for the others (a
    /// subscription deleted meanwhile is not an error: nothing is left to change). A database
    /// error fails the whole batch and nothing of it is written.
    ///
    /// The batch goes to the database as one SQL text ([`batch_sql`]), so it costs one round
    /// trip to sqlx's SQLite worker thread instead of one per statement: profiled at 1,000,000
    /// subscribers (`mar_load`, every MAR a new subscriber, so a write each), about 60% of
    /// the HSS's CPU was the thread hand-offs of per-statement execution, 1.5% SQLite itself.
    /// A string that cannot be a literal (a NUL in it) sends that batch statement by
    /// statement, with bound parameters, as before.
    pub async fn apply(&self, writes: &[Write]) -> Result<Vec<Option<u64>>, StoreError> {
        let started = std::time::Instant::now();
        let out = self.apply_batch(writes).await;
        crate::note_write("subscriber changes", writes.len(), started);
        out
    }

    async fn apply_batch(&self, writes: &[Write]) -> Result<Vec<Option<u64>>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        // A small batch goes statement by statement: its prepared statements are cached, and
        // parsing a fresh SQL text costs more than the few hand-offs it would save (the lab
        // sweep at 600 registrations/s, batches of one or two writes: HSS 0.72-0.74 ms CPU per
        // registration before the one-text batches, 0.78 with them for every batch).
        if writes.len() < ONE_TEXT_FROM {
            return self.apply_each(writes).await;
        }
        let Some(sql) = batch_sql(writes) else {
            return self.apply_each(writes).await;
        };
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        // (Through `Executor::fetch_all`: `RawSql::fetch_all` on `Any` makes the future ask
        // for `Executor` over every lifetime, and the HSS's writer task would not be `Send`.)
        let rows = sqlx::Executor::fetch_all(&mut *tx, sqlx::raw_sql(&sql))
            .await
            .map_err(db("write batch"))?;
        tx.commit().await.map_err(db("commit"))?;
        let mut out = vec![None; writes.len()];
        for row in rows {
            let index: i64 = row.try_get(0).map_err(db("write batch"))?;
            let sqn: i64 = row.try_get(1).map_err(db("write batch"))?;
            let Some(slot) = usize::try_from(index).ok().and_then(|i| out.get_mut(i)) else {
                continue;
            };
            *slot = match writes.get(index as usize) {
                // The value asked for, as the per-statement path returns it.
                Some(Write::SetSqn { sqn, .. }) => Some(*sqn),
                _ => Some(sqn as u64),
            };
        }
        Ok(out)
    }

    /// [`Store::apply`] statement by statement, with bound parameters.
    async fn apply_each(&self, writes: &[Write]) -> Result<Vec<Option<u64>>, StoreError> {
        if let [w] = writes {
            // One statement is atomic by itself: without BEGIN and COMMIT it is one hand-off
            // to sqlx's SQLite worker thread instead of three (in the lab most batches are
            // one write: a new subscriber's SQN block, or a SAR's assignment).
            return Ok(vec![write_one(&self.pool, w).await?]);
        }
        let mut out = Vec::with_capacity(writes.len());
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        for w in writes {
            out.push(write_one(&mut *tx, w).await?);
        }
        tx.commit().await.map_err(db("commit"))?;
        Ok(out)
    }
}

/// One write of [`Store::apply`], with bound parameters, on `e` (the pool, or a
/// transaction's connection): its new SQN for the SQN writes, else `None`.
async fn write_one<'e, E>(e: E, w: &Write) -> Result<Option<u64>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let op = "write batch";
    match w {
        Write::Scscf {
            subscription_id,
            assignment,
        } => {
            sqlx::query("UPDATE subscription SET scscf_name = $2, scscf_host = $3 WHERE id = $1")
                .bind(subscription_id)
                .bind(assignment.as_ref().map(|a| a.server_name.as_str()))
                .bind(assignment.as_ref().and_then(|a| a.diameter_host.as_deref()))
                .execute(e)
                .await
                .map_err(db(op))?;
            Ok(None)
        }
        Write::RegState {
            subscription_id,
            irs,
            state,
        } => {
            sqlx::query(
                "UPDATE public_identity SET reg_state = $3 WHERE subscription_id = $1 AND irs = $2",
            )
            .bind(subscription_id)
            .bind(irs)
            .bind(*state as i64)
            .execute(e)
            .await
            .map_err(db(op))?;
            Ok(None)
        }
        Write::AdvanceSqn { impi, delta } => {
            let new: Option<i64> = sqlx::query_scalar(
                "UPDATE private_identity SET sqn = (sqn + $2) % 281474976710656 WHERE impi = $1 AND auth_scheme = 'aka' RETURNING sqn",
            )
            .bind(impi)
            .bind((delta % SQN_MODULUS) as i64)
            .fetch_optional(e)
            .await
            .map_err(db(op))?;
            Ok(new.map(|n| n as u64))
        }
        Write::SetSqn { impi, sqn } => {
            let res = sqlx::query(
                "UPDATE private_identity SET sqn = $2 WHERE impi = $1 AND auth_scheme = 'aka'",
            )
            .bind(impi)
            .bind((sqn % SQN_MODULUS) as i64)
            .execute(e)
            .await
            .map_err(db(op))?;
            Ok((res.rows_affected() > 0).then_some(*sqn))
        }
    }
}

/// The size from which a batch goes as one SQL text.
const ONE_TEXT_FROM: usize = 8;

/// The SQL text of a batch for [`Store::apply`]: one statement per write, in order; those
/// that return an SQN return `(index of the write, sqn)`. Numbers are written as they are
/// (they are typed integers), strings as SQL literals with their quotes doubled, which both
/// SQLite and PostgreSQL (standard_conforming_strings, on by default since 9.1) read as the
/// string itself. `None` when a string has a NUL, which no SQL literal can hold.
fn batch_sql(writes: &[Write]) -> Option<String> {
    use std::fmt::Write as _;
    fn lit(s: &str) -> Option<String> {
        (!s.contains('\0')).then(|| format!("'{}'", s.replace('\'', "''")))
    }
    fn opt_lit(s: Option<&str>) -> Option<String> {
        match s {
            Some(s) => lit(s),
            None => Some("NULL".to_owned()),
        }
    }
    let mut sql = String::with_capacity(writes.len() * 128);
    for (i, w) in writes.iter().enumerate() {
        let _ = match w {
            Write::Scscf {
                subscription_id,
                assignment,
            } => writeln!(
                sql,
                "UPDATE subscription SET scscf_name = {}, scscf_host = {} WHERE id = {subscription_id};",
                opt_lit(assignment.as_ref().map(|a| a.server_name.as_str()))?,
                opt_lit(assignment.as_ref().and_then(|a| a.diameter_host.as_deref()))?,
            ),
            Write::RegState {
                subscription_id,
                irs,
                state,
            } => writeln!(
                sql,
                "UPDATE public_identity SET reg_state = {} WHERE subscription_id = {subscription_id} AND irs = {irs};",
                *state as i64
            ),
            Write::AdvanceSqn { impi, delta } => writeln!(
                sql,
                "UPDATE private_identity SET sqn = (sqn + {}) % {SQN_MODULUS} WHERE impi = {} AND auth_scheme = 'aka' RETURNING CAST({i} AS BIGINT), sqn;",
                delta % SQN_MODULUS,
                lit(impi)?
            ),
            Write::SetSqn { impi, sqn } => writeln!(
                sql,
                "UPDATE private_identity SET sqn = {} WHERE impi = {} AND auth_scheme = 'aka' RETURNING CAST({i} AS BIGINT), sqn;",
                sqn % SQN_MODULUS,
                lit(impi)?
            ),
        };
    }
    Some(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_one_text_with_literals_escaped_and_nul_refused() {
        let writes = [
            Write::AdvanceSqn {
                impi: "a'b@hims.net".into(),
                delta: 32,
            },
            Write::RegState {
                subscription_id: 3,
                irs: 1,
                state: RegState::Registered,
            },
        ];
        let sql = batch_sql(&writes).unwrap_or_default();
        assert!(sql.contains("impi = 'a''b@hims.net'"), "{sql}");
        assert!(sql.contains("RETURNING CAST(0 AS BIGINT), sqn;"), "{sql}");
        assert_eq!(sql.lines().count(), 2, "{sql}");
        let nul = [Write::SetSqn {
            impi: "a\0b".into(),
            sqn: 1,
        }];
        assert!(batch_sql(&nul).is_none());
        // tests/it.rs `batched_writes` sends eight writes to take the one-text path.
        const { assert!(ONE_TEXT_FROM <= 8) };
    }
}

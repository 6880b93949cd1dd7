//! The P-CSCF's registrations (`migrations/*/0003_pcscf_registrations.sql`): one
//! [`PcscfRegistrationRecord`] per UE flow, under the name of the P-CSCF holding it, so that a
//! P-CSCF killed and started again still knows where its UEs are (TS 24.229 §5.2.2.4).
//!
//! The P-CSCF writes its changes behind, in batches ([`Store::apply_pcscf_registrations`]: one
//! transaction, applied as the changes in order would leave them) and loads the unexpired
//! ones back at start ([`Store::pcscf_registrations`], which drops the expired rows).

use std::net::SocketAddr;

use sqlx::Row;

use crate::registrations::{join_lines, params, split_lines};
use crate::{Store, StoreError, db};

/// The transport of a UE's flow, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowTransport {
    Udp,
    Tcp,
    Tls,
}

impl FlowTransport {
    /// Its name in the table: `udp`, `tcp` or `tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowTransport::Udp => "udp",
            FlowTransport::Tcp => "tcp",
            FlowTransport::Tls => "tls",
        }
    }

    /// The transport named `s` in the table.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "udp" => Some(FlowTransport::Udp),
            "tcp" => Some(FlowTransport::Tcp),
            "tls" => Some(FlowTransport::Tls),
            _ => None,
        }
    }
}

/// A UE's flow: the key of its registration at the P-CSCF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The transport its requests come on.
    pub transport: FlowTransport,
    /// Their source address.
    pub addr: SocketAddr,
}

/// One contact the UE registered, with its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcscfContactRecord {
    /// The Contact URI as registered.
    pub uri: String,
    /// When it expires, in Unix milliseconds.
    pub expires_at: i64,
}

/// A UE registered through the P-CSCF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcscfRegistrationRecord {
    /// The flow it registered from.
    pub flow: FlowKey,
    /// The private identity that registered.
    pub impi: String,
    /// Its contacts (at least one).
    pub contacts: Vec<PcscfContactRecord>,
    /// P-Associated-URI values of the 200 OK: the first is the default public identity.
    pub associated_uris: Vec<String>,
    /// Service-Route values of the 200 OK, in order.
    pub service_route: Vec<String>,
    /// The UE's protected server port when it registered through IPsec SAs.
    pub ipsec_port_us: Option<u16>,
}

impl PcscfRegistrationRecord {
    /// The latest contact expiry (Unix milliseconds; 0 without contacts).
    pub fn expires_at(&self) -> i64 {
        self.contacts
            .iter()
            .map(|c| c.expires_at)
            .max()
            .unwrap_or(0)
    }
}

/// One change of a P-CSCF's registrations, for [`Store::apply_pcscf_registrations`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcscfWrite {
    /// Save it (insert or replace the registration of its flow).
    Save(PcscfRegistrationRecord),
    /// Delete the registration of this flow.
    Delete(FlowKey),
}

impl PcscfWrite {
    fn flow(&self) -> FlowKey {
        match self {
            PcscfWrite::Save(r) => r.flow,
            PcscfWrite::Delete(f) => *f,
        }
    }
}

/// Flows per multi-row statement of [`Store::apply_pcscf_registrations`] (9 parameters a
/// row: sqlx's SQLite driver looks parameters up by name, O(n²) in a statement).
pub const PCSCF_ROWS: usize = 32;

fn contacts_text(contacts: &[PcscfContactRecord]) -> String {
    contacts
        .iter()
        .map(|c| format!("{} {}", c.expires_at, c.uri))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The contacts column read back; `None` when a line is not `<expires_at> <uri>`.
fn contacts_of(text: &str) -> Option<Vec<PcscfContactRecord>> {
    text.split('\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (at, uri) = l.split_once(' ')?;
            Some(PcscfContactRecord {
                uri: uri.to_owned(),
                expires_at: at.parse().ok()?,
            })
        })
        .collect()
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// The deletion of `n` flows of one P-CSCF (`$1`: its name) over one transport (`$2`), so
/// that the whole primary key is an equality or an `IN` list and each flow is one seek in
/// it. (An `OR` of `(transport = .. AND addr = ..)` pairs made SQLite scan every row of the
/// P-CSCF for each statement: at 70,000 registrations, half the P-CSCF's CPU in the soak.)
fn delete_sql(n: usize) -> String {
    let addrs: Vec<String> = (0..n).map(|i| format!("${}", 3 + i)).collect();
    format!(
        "DELETE FROM pcscf_registration WHERE pcscf_name = $1 AND transport = $2 \
         AND addr IN ({})",
        addrs.join(", ")
    )
}

/// Binds a chunk of flows of one transport (see [`delete_sql`]).
fn bind_deletes<'q>(mut q: AnyQuery<'q>, pcscf_name: &'q str, flows: &[FlowKey]) -> AnyQuery<'q> {
    q = q.bind(pcscf_name);
    if let Some(f) = flows.first() {
        q = q.bind(f.transport.as_str());
    }
    for f in flows {
        q = q.bind(f.addr.to_string());
    }
    q
}

/// The upsert of `n` registration rows.
fn save_sql(n: usize) -> String {
    let values: Vec<String> = (0..n).map(|i| params(1 + 9 * i, 9)).collect();
    format!(
        "INSERT INTO pcscf_registration (pcscf_name, transport, addr, impi, contacts, \
         associated_uris, service_route, ipsec_port_us, expires_at) VALUES {} \
         ON CONFLICT (pcscf_name, transport, addr) DO UPDATE SET impi = excluded.impi, \
         contacts = excluded.contacts, associated_uris = excluded.associated_uris, \
         service_route = excluded.service_route, ipsec_port_us = excluded.ipsec_port_us, \
         expires_at = excluded.expires_at",
        values.join(", ")
    )
}

fn bind_saves<'q>(
    mut q: AnyQuery<'q>,
    pcscf_name: &'q str,
    rows: &[&'q PcscfRegistrationRecord],
) -> AnyQuery<'q> {
    for r in rows {
        q = q
            .bind(pcscf_name)
            .bind(r.flow.transport.as_str())
            .bind(r.flow.addr.to_string())
            .bind(r.impi.as_str())
            .bind(contacts_text(&r.contacts))
            .bind(join_lines(&r.associated_uris))
            .bind(join_lines(&r.service_route))
            .bind(r.ipsec_port_us.map(i64::from))
            .bind(r.expires_at());
    }
    q
}

impl Store {
    /// Applies `writes` of the P-CSCF `pcscf_name` in one transaction, all or nothing. Each
    /// flow ends as its last change in `writes` leaves it (a registration row is written
    /// whole, so only the last change of a flow matters); the flows are written
    /// [`PCSCF_ROWS`] at a time, one multi-row statement for the deletions and one for the
    /// saves of each chunk. A batch that comes to one statement runs without a transaction
    /// around it (one statement is atomic by itself).
    pub async fn apply_pcscf_registrations(
        &self,
        pcscf_name: &str,
        writes: &[PcscfWrite],
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let out = self.apply_pcscf_batch(pcscf_name, writes).await;
        crate::note_write("P-CSCF registrations", writes.len(), started);
        out
    }

    async fn apply_pcscf_batch(
        &self,
        pcscf_name: &str,
        writes: &[PcscfWrite],
    ) -> Result<(), StoreError> {
        // The last change of each flow, in the order the flows first appear.
        let mut last: Vec<&PcscfWrite> = Vec::with_capacity(writes.len());
        let mut at: std::collections::HashMap<FlowKey, usize> =
            std::collections::HashMap::with_capacity(writes.len());
        for w in writes {
            match at.entry(w.flow()) {
                std::collections::hash_map::Entry::Occupied(e) => last[*e.get()] = w,
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(last.len());
                    last.push(w);
                }
            }
        }
        let mut deletes: Vec<FlowKey> = last
            .iter()
            .filter_map(|w| match w {
                PcscfWrite::Delete(f) => Some(*f),
                PcscfWrite::Save(_) => None,
            })
            .collect();
        let saves: Vec<&PcscfRegistrationRecord> = last
            .iter()
            .filter_map(|w| match w {
                PcscfWrite::Save(r) => Some(r),
                PcscfWrite::Delete(_) => None,
            })
            .collect();
        let op = "save P-CSCF registrations";
        // Chunks of one transport each (delete_sql); a flow's last change is its only one
        // here, so reordering the deletions changes nothing.
        deletes.sort_by_key(|f| f.transport.as_str());
        let delete_chunks: Vec<&[FlowKey]> = deletes
            .chunk_by(|a, b| a.transport == b.transport)
            .flat_map(|same| same.chunks(PCSCF_ROWS))
            .collect();
        let save_chunks: Vec<&[&PcscfRegistrationRecord]> = saves.chunks(PCSCF_ROWS).collect();
        let sql: Vec<String> = delete_chunks
            .iter()
            .map(|c| delete_sql(c.len()))
            .chain(save_chunks.iter().map(|c| save_sql(c.len())))
            .collect();
        let queries = delete_chunks
            .iter()
            .zip(&sql)
            .map(|(c, q)| bind_deletes(sqlx::query(q), pcscf_name, c))
            .chain(
                save_chunks
                    .iter()
                    .zip(&sql[delete_chunks.len()..])
                    .map(|(c, q)| bind_saves(sqlx::query(q), pcscf_name, c)),
            );
        if sql.len() == 1 {
            // One statement is atomic by itself: without BEGIN and COMMIT it is one hand-off
            // to sqlx's SQLite worker thread instead of three. Most batches are one
            // registration (the lab at 600/s: 3,000 writes in 2,439 batches).
            for q in queries {
                q.execute(&self.pool).await.map_err(db(op))?;
            }
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        for q in queries {
            q.execute(&mut *tx).await.map_err(db(op))?;
        }
        tx.commit().await.map_err(db("commit"))?;
        Ok(())
    }

    /// The registrations the P-CSCF `pcscf_name` holds that are still alive at `now_ms`
    /// (Unix milliseconds), each with its unexpired contacts, ordered by flow. The expired
    /// ones are deleted first. A row that cannot be read back (not written by this code) is
    /// skipped with one warning naming it.
    pub async fn pcscf_registrations(
        &self,
        pcscf_name: &str,
        now_ms: i64,
    ) -> Result<Vec<PcscfRegistrationRecord>, StoreError> {
        let gone = sqlx::query(
            "DELETE FROM pcscf_registration WHERE pcscf_name = $1 AND expires_at <= $2",
        )
        .bind(pcscf_name)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(db("drop expired P-CSCF registrations"))?;
        if gone.rows_affected() > 0 {
            tracing::info!(
                expired = gone.rows_affected(),
                pcscf = pcscf_name,
                "expired P-CSCF registrations dropped from the store"
            );
        }
        let rows = sqlx::query(
            "SELECT transport, addr, impi, contacts, associated_uris, service_route, \
             ipsec_port_us FROM pcscf_registration WHERE pcscf_name = $1 \
             ORDER BY transport, addr",
        )
        .bind(pcscf_name)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read P-CSCF registrations"))?;
        let get = |e| db("read P-CSCF registrations")(e);
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let transport: String = row.try_get(0).map_err(get)?;
            let addr: String = row.try_get(1).map_err(get)?;
            let contacts: String = row.try_get(3).map_err(get)?;
            let port: Option<i64> = row.try_get(6).map_err(get)?;
            let flow = match (FlowTransport::parse(&transport), addr.parse::<SocketAddr>()) {
                (Some(transport), Ok(addr)) => FlowKey { transport, addr },
                _ => {
                    tracing::warn!(%transport, %addr, pcscf = pcscf_name,
                        "P-CSCF registration row with an unreadable flow skipped");
                    continue;
                }
            };
            let Some(mut contacts) = contacts_of(&contacts) else {
                tracing::warn!(%transport, %addr, pcscf = pcscf_name,
                    "P-CSCF registration row with unreadable contacts skipped");
                continue;
            };
            let ipsec_port_us = match port.map(u16::try_from) {
                None => None,
                Some(Ok(p)) => Some(p),
                Some(Err(_)) => {
                    tracing::warn!(%transport, %addr, pcscf = pcscf_name, port = ?port,
                        "P-CSCF registration row with a bad IPsec port skipped");
                    continue;
                }
            };
            contacts.retain(|c| c.expires_at > now_ms);
            if contacts.is_empty() {
                continue;
            }
            out.push(PcscfRegistrationRecord {
                flow,
                impi: row.try_get(2).map_err(get)?,
                contacts,
                associated_uris: split_lines(&row.try_get::<String, _>(4).map_err(get)?),
                service_route: split_lines(&row.try_get::<String, _>(5).map_err(get)?),
                ipsec_port_us,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_column_round_trips() {
        let c = vec![
            PcscfContactRecord {
                uri: "sip:alice@10.0.0.2:5060".into(),
                expires_at: 1_700_000_000_000,
            },
            PcscfContactRecord {
                uri: "sip:alice@[2001:db8::2]:5070;transport=tcp".into(),
                expires_at: 1_700_000_060_000,
            },
        ];
        assert_eq!(contacts_of(&contacts_text(&c)), Some(c));
        assert_eq!(contacts_of("soon sip:a@b"), None);
        assert_eq!(contacts_of("12"), None);
        assert_eq!(contacts_of(""), Some(Vec::new()));
    }
}

//! The P-CSCF's registrations in its own store (`database` in the config; ims-store, SQLite or
//! PostgreSQL), so that a P-CSCF killed and started again can still reach the UEs that
//! registered through it before (issue #20).
//!
//! # Writing: behind, batched, in order; a 200 waits for its own commit
//! Every change of [`crate::registrations::Registrations`] (a registration stored or
//! refreshed, a contact ended by the network, a deregistration, an expiry) is queued here
//! while the shard holding the flow is still locked, so the queue has the changes of one flow
//! in the order memory made them. One writer task (`writer`) takes whatever is waiting, up
//! to [`WRITE_BATCH`] changes, and applies it in one transaction
//! ([`ims_store::Store::apply_pcscf_registrations`]): a thousand REGISTERs a second cost a
//! few commits, not a thousand, and no request ever waits on the database's lock.
//!
//! The 200 OK of a REGISTER is sent to the UE once the batch holding its registration is
//! committed, as the S-CSCF does with its own (`crates/scscf/src/registrar.rs`): a UE that
//! saw its 200 is in the store, whenever the P-CSCF is killed. Otherwise a kill right after
//! a 200 would lose a registration the UE believes in, and nothing would reach the UE until
//! its next refresh, up to an hour later. The wait is one group commit (well under a
//! millisecond to a few with SQLite in WAL mode), shared by every REGISTER in the batch.
//! Deletions (deregistration, expiry, a reg event NOTIFY) are not waited for: a lost
//! deletion only brings back a registration that the S-CSCF no longer routes to, and it ends
//! with its expiry. A change the store refuses is logged (one line per batch) and kept in
//! memory: the UE is registered here either way. A database that hangs (PostgreSQL
//! unreachable: sqlx waits 30 s for a connection) does not stop registrations: a 200 waits
//! at most 2 s (`STORE_WAIT`) for its commit, with one warning when the store starts being
//! late and one line when it keeps up again.
//!
//! # Reading back at start
//! [`restore`] loads the unexpired registrations held under our `via_host` (the store deletes
//! the expired rows; contacts past their expiry are left out). Registered over UDP without
//! IPsec, a UE is reachable again at once: its address and port are all a request toward it
//! needs. Over TCP (or TLS) the connection it registered on died with the old process, and
//! through IPsec the SAs were removed at start (the P-CSCF removes its predecessor's by
//! their marker), so such a registration comes back marked `flow_lost`: a request toward the
//! UE is answered `430 Flow Failed` (RFC 5626 §5.3) rather than sent over a new connection
//! the UE never opened or in clear to a port its SAs used to protect. The S-CSCF passes the
//! 430 on to the caller; the UE registers again on a new flow (at its refresh, or at once
//! when it notices the connection is gone) and is reachable again from that 200 on. A request
//! from such a UE outside its SAs is refused as before (403), and one on a new TCP connection
//! comes from an unregistered flow (403): both end in a new registration.
//!
//! The reg event subscriptions of the old process are gone too (memory only): the new one
//! subscribes again for each restored registration whose flow survived (one after the other,
//! so that a large store does not burst at the S-CSCF), and answers the S-CSCF's NOTIFYs for
//! its predecessor's subscriptions 481, which ends them there.
//!
//! Without `database` (the default) nothing is written, and a restarted P-CSCF knows nobody:
//! requests toward its UEs get `480 Temporarily Unavailable` until they register again.

use std::time::{Duration, Instant};

use ims_net::dns::Transport;
use ims_store::{
    FlowKey, FlowTransport, PcscfContactRecord, PcscfRegistrationRecord, PcscfWrite, Store,
};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

use crate::registrations::{Flow, Registration};

/// Most changes committed in one transaction.
pub const WRITE_BATCH: usize = 512;

/// Whether a change reached the store (the error as text: it goes to one log line).
pub type Committed = Result<(), String>;

type Job = (PcscfWrite, Option<oneshot::Sender<Committed>>);

/// The queue of the store writer: where [`crate::registrations::Registrations`] puts its
/// changes.
#[derive(Clone)]
pub struct Journal {
    queue: mpsc::UnboundedSender<Job>,
}

impl Journal {
    /// Queues `w`; the receiver (when `wait`) tells when it is committed.
    pub fn queue(&self, w: PcscfWrite, wait: bool) -> Option<oneshot::Receiver<Committed>> {
        let (tx, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        if self.queue.send((w, tx)).is_err() {
            tracing::error!("the P-CSCF's store writer has stopped; registration change not saved");
            return None;
        }
        rx
    }
}

/// Opens the store at `url` and starts its writer, saving under `name` (our `via_host`) and
/// counting into `metrics`; returns the journal and the registrations to restore.
pub async fn open(
    url: &str,
    name: &str,
    metrics: Arc<Metrics>,
) -> Result<(Journal, Vec<Registration>), ims_store::StoreError> {
    let store = Store::open(url).await?;
    let restored = restore(&store, name).await?;
    let (queue, jobs) = mpsc::unbounded_channel();
    tokio::spawn(writer(store, name.to_owned(), jobs, metrics));
    Ok((Journal { queue }, restored))
}

/// The unexpired registrations held under `name`, as memory keeps them.
pub async fn restore(
    store: &Store,
    name: &str,
) -> Result<Vec<Registration>, ims_store::StoreError> {
    let clock = Clock::now();
    let records = store.pcscf_registrations(name, clock.unix_ms).await?;
    Ok(records.into_iter().map(|r| clock.registration(r)).collect())
}

/// The store writer: applies every change waiting in one transaction, in queue order, and
/// tells whoever waits. A failed batch is tried change by change, so that one bad change
/// fails alone. Ends when every [`Journal`] is gone and the queue is empty.
async fn writer(
    store: Store,
    name: String,
    mut queue: mpsc::UnboundedReceiver<Job>,
    metrics: Arc<Metrics>,
) {
    let mut jobs = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut jobs, WRITE_BATCH).await > 0 {
        let (writes, waiting): (Vec<_>, Vec<_>) = jobs.drain(..).unzip();
        let failed = match store.apply_pcscf_registrations(&name, &writes).await {
            Ok(()) => {
                for tx in waiting.into_iter().flatten() {
                    let _ = tx.send(Ok(()));
                }
                0
            }
            Err(e) if writes.len() > 1 => {
                tracing::warn!(error = %e, writes = writes.len(),
                    "P-CSCF registration batch failed; writing its changes one by one");
                let mut failed = 0;
                for (w, tx) in writes.iter().zip(waiting) {
                    let one = store
                        .apply_pcscf_registrations(&name, std::slice::from_ref(w))
                        .await
                        .map_err(|e| e.to_string());
                    failed += usize::from(one.is_err());
                    if let Some(tx) = tx {
                        let _ = tx.send(one);
                    }
                }
                if failed > 0 {
                    tracing::error!(failed, "P-CSCF registration changes not saved to the store");
                }
                failed
            }
            Err(e) => {
                tracing::error!(error = %e, "P-CSCF registration change not saved to the store");
                for tx in waiting.into_iter().flatten() {
                    let _ = tx.send(Err(e.to_string()));
                }
                writes.len()
            }
        };
        metrics.store_batch(writes.len(), failed);
    }
}

/// One reading of both clocks: memory keeps [`Instant`]s, the store Unix milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    at: Instant,
    unix_ms: i64,
}

impl Clock {
    /// Now.
    pub fn now() -> Self {
        Clock {
            at: Instant::now(),
            unix_ms: ims_net::clock::unix_ms_now(),
        }
    }

    /// `t` in Unix milliseconds.
    fn unix(&self, t: Instant) -> i64 {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if t >= self.at {
            self.unix_ms.saturating_add(ms(t - self.at))
        } else {
            self.unix_ms.saturating_sub(ms(self.at - t))
        }
    }

    /// Unix milliseconds `ms` as an [`Instant`] (never before now: only unexpired contacts
    /// are read back).
    fn instant(&self, ms: i64) -> Instant {
        let ahead = u64::try_from(ms.saturating_sub(self.unix_ms)).unwrap_or(0);
        self.at + Duration::from_millis(ahead)
    }

    /// `reg` as the store keeps it.
    pub fn record(&self, reg: &Registration) -> PcscfRegistrationRecord {
        PcscfRegistrationRecord {
            flow: flow_key(&reg.flow),
            impi: reg.impi.clone(),
            contacts: reg
                .contacts
                .iter()
                .map(|(uri, at)| PcscfContactRecord {
                    uri: uri.clone(),
                    expires_at: self.unix(*at),
                })
                .collect(),
            associated_uris: reg.associated.clone(),
            service_route: reg.service_route.clone(),
            ipsec_port_us: reg.ipsec_port_us,
        }
    }

    /// A registration read back after a restart: its TCP connection or IPsec SAs are gone.
    fn registration(&self, r: PcscfRegistrationRecord) -> Registration {
        let transport = match r.flow.transport {
            FlowTransport::Udp => Transport::Udp,
            FlowTransport::Tcp => Transport::Tcp,
            FlowTransport::Tls => Transport::Tls,
        };
        Registration {
            flow: Flow {
                addr: r.flow.addr,
                transport,
            },
            contacts: r
                .contacts
                .into_iter()
                .map(|c| (c.uri, self.instant(c.expires_at)))
                .collect(),
            associated: r.associated_uris,
            service_route: r.service_route,
            impi: r.impi,
            flow_lost: transport != Transport::Udp || r.ipsec_port_us.is_some(),
            ipsec_port_us: r.ipsec_port_us,
        }
    }
}

/// The store's key of a flow.
pub fn flow_key(flow: &Flow) -> FlowKey {
    FlowKey {
        transport: match flow.transport {
            Transport::Udp => FlowTransport::Udp,
            Transport::Tcp => FlowTransport::Tcp,
            Transport::Tls => FlowTransport::Tls,
        },
        addr: flow.addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(transport: Transport, ipsec_port_us: Option<u16>) -> Registration {
        let now = Instant::now();
        Registration {
            flow: Flow {
                addr: "10.0.0.2:5070".parse().unwrap(),
                transport,
            },
            contacts: vec![
                (
                    "sip:alice@10.0.0.2:5070".into(),
                    now + Duration::from_secs(60),
                ),
                (
                    "sip:alice@10.0.0.2:5071".into(),
                    now + Duration::from_secs(600),
                ),
            ],
            associated: vec!["sip:alice@hims.net".into(), "tel:+1234".into()],
            service_route: vec!["<sip:orig@scscf1.hims.net:5060;lr>".into()],
            impi: "alice@hims.net".into(),
            ipsec_port_us,
            flow_lost: false,
        }
    }

    #[test]
    fn a_registration_comes_back_as_it_was_with_its_flow_judged() {
        let clock = Clock::now();
        let udp = reg(Transport::Udp, None);
        let back = clock.registration(clock.record(&udp));
        assert!(!back.flow_lost, "UDP without IPsec is usable at once");
        for ((u, at), (bu, bat)) in udp.contacts.iter().zip(&back.contacts) {
            assert_eq!(u, bu);
            assert!(at.saturating_duration_since(*bat) < Duration::from_millis(1));
        }
        let same = |r: &Registration| {
            (
                r.flow,
                r.impi.clone(),
                r.associated.clone(),
                r.service_route.clone(),
                r.ipsec_port_us,
            )
        };
        assert_eq!(same(&back), same(&udp));
        for (t, port) in [(Transport::Tcp, None), (Transport::Udp, Some(5101))] {
            let r = reg(t, port);
            let back = clock.registration(clock.record(&r));
            assert!(back.flow_lost, "{t:?} {port:?}");
            assert_eq!((back.flow, back.ipsec_port_us), (r.flow, port));
        }
        // Instants round-trip to the millisecond.
        let rec = clock.record(&udp);
        assert_eq!(
            rec.contacts[1].expires_at - rec.contacts[0].expires_at,
            540_000
        );
        assert_eq!(rec.expires_at(), clock.unix_ms + 600_000);
    }
}

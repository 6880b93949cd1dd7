//! A Diameter server over TCP (the HSS's Cx side): a listener, one task per accepted
//! connection running the shared connection driver with the sans-io
//! [`ims_diameter::peer::Peer`] as responder (CER from the allow-list only, 3010 otherwise;
//! DWR/DWA; DPR/DPA; our own DWR when idle), requests answered by a [`Handler`], and a
//! registry of open peers by Origin-Host through which the server sends requests of its own
//! ([`DiameterServer::request`]: the HSS's RTR and PPR to the serving S-CSCF).
//!
//! - **Answers in place.** Most requests are answered without waiting for anything (from
//!   memory): the handler's future is polled once in the connection's task and, when ready,
//!   its answer goes out at once. Only one that waits (on a store) becomes a task of its own,
//!   so that it holds up no other request of the connection, and many are in flight.
//! - **Overload.** At most `max_waiting` requests wait at once, across connections; while
//!   that many wait, new requests get [`Handler::busy`] (3004 DIAMETER_TOO_BUSY, RFC 6733
//!   §7.1.3) at once, so that a slow store makes the server refuse rather than queue without
//!   bound.
//! - **Several connections per Origin-Host** (a restarted S-CSCF reconnecting before its old
//!   connection timed out, or a flood of CERs): requests go to the newest, and a connection
//!   that closes takes only itself out of the registry, never the others.
//! - **Relays.** A peer behind a Diameter relay (e.g. freeDiameterd) is not a peer of ours:
//!   its requests come through the relay, and so must the requests for it. When the
//!   Destination-Host is not an open peer, the request goes to an open peer that advertised
//!   the Relay Application-Id in its CER (RFC 6733 §2.8, §6.1.1), which routes it on.
//!
//! Every log line of a connection's task names the peer's address (the `diameter_peer`
//! span).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ims_diameter::peer::{Peer, PeerConfig, Role};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::conn::{self, Cmd, Owner};

/// What a server does with the requests its peers send.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The answer to `request` (empty: nothing to send, e.g. it was itself an answer). Its
    /// future is polled once in place; it should be ready at once unless it must wait.
    fn handle(&self, request: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send + 'static;

    /// The answer to `request` while too many requests wait (3004 DIAMETER_TOO_BUSY).
    fn busy(&self, request: &[u8]) -> Vec<u8>;

    /// A peer came up (`up`) or went down: for metrics.
    fn peer(&self, _host: &str, _up: bool) {}
}

/// Why a request to a peer could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No open connection to that Origin-Host.
    #[error("no open Diameter connection to {0}")]
    NotConnected(String),
    /// The connection went down or the answer timed out.
    #[error("no answer from {0}")]
    NoAnswer(String),
}

/// One open connection in the registry.
struct Entry {
    /// Unique in this process.
    id: u64,
    /// Its Origin-Realm.
    realm: String,
    /// It advertised the Relay Application-Id: it carries requests for hosts beyond it.
    relay: bool,
    /// Its connection task.
    tx: mpsc::Sender<Cmd>,
}

/// Open peer connections by lower-cased Origin-Host, oldest first (requests go to the last).
type Registry = Arc<Mutex<HashMap<String, Vec<Entry>>>>;

/// A handle on a running server: its peers, and requests to them.
#[derive(Clone)]
pub struct DiameterServer {
    registry: Registry,
    local: SocketAddr,
    stop: Arc<watch::Sender<bool>>,
}

impl DiameterServer {
    /// The listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The realm of an open peer (for Destination-Realm), if connected.
    pub fn peer_realm(&self, host: &str) -> Option<String> {
        self.registry
            .lock()
            .ok()?
            .get(&host.to_ascii_lowercase())?
            .last()
            .map(|e| e.realm.clone())
    }

    /// Open peers' Origin-Hosts.
    pub fn peers(&self) -> Vec<String> {
        self.registry
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The connection a request for Diameter host `host` goes on: that peer's own (its
    /// newest) when it is open, else the open relay peer first by name (RFC 6733 §6.1.1: a
    /// request whose Destination-Host is not a peer goes to a peer that can route it on).
    fn route(&self, host: &str) -> Option<(String, mpsc::Sender<Cmd>)> {
        let r = self.registry.lock().ok()?;
        let key = host.to_ascii_lowercase();
        if let Some(e) = r.get(&key).and_then(|c| c.last()) {
            return Some((key, e.tx.clone()));
        }
        r.iter()
            .filter_map(|(name, c)| c.last().filter(|e| e.relay).map(|e| (name, e)))
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(name, e)| (name.clone(), e.tx.clone()))
    }

    /// Sends `request` (hop-by-hop and end-to-end ids are filled in) to the peer whose
    /// Origin-Host is `host`, or through a relay peer when `host` is not connected, and
    /// waits for its answer (at most the peer's request timeout).
    pub async fn request(&self, host: &str, request: Vec<u8>) -> Result<Vec<u8>, SendError> {
        let (via, tx) = self
            .route(host)
            .ok_or_else(|| SendError::NotConnected(host.to_owned()))?;
        if !via.eq_ignore_ascii_case(host) {
            tracing::debug!(%host, relay = %via, "no connection to the Diameter host: through the relay");
        }
        let (atx, arx) = oneshot::channel();
        tx.send(Cmd::Request(request, atx))
            .await
            .map_err(|_| SendError::NotConnected(host.to_owned()))?;
        match arx.await {
            Ok(Ok(answer)) => Ok(answer),
            _ => Err(SendError::NoAnswer(host.to_owned())),
        }
    }

    /// Disconnects every peer (DPR REBOOTING to the open ones) and waits, at most `limit`,
    /// for their connections to close. The accept loop is stopped by dropping its future.
    pub async fn shutdown(&self, limit: Duration) {
        let _ = self.stop.send(true);
        let end = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < end
            && self.registry.lock().map(|r| !r.is_empty()).unwrap_or(false)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Accepts connections on `listener` until the returned future is dropped; each answered by
/// `handler`, at most `max_waiting` requests waiting at once (see the module docs).
pub fn serve<H: Handler>(
    listener: TcpListener,
    peer_cfg: PeerConfig,
    handler: H,
    max_waiting: usize,
) -> (DiameterServer, impl Future<Output = ()>) {
    let waiting = Arc::new(Waiting {
        now: AtomicUsize::new(0),
        max: max_waiting,
    });
    let registry: Registry = Arc::new(Mutex::new(HashMap::new()));
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (stop, stop_rx) = watch::channel(false);
    let handle = DiameterServer {
        registry: registry.clone(),
        local,
        stop: Arc::new(stop),
    };
    let fut = async move {
        let mut seed: u32 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos());
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "Diameter accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let peer = Peer::new(peer_cfg.clone(), Role::Responder, seed);
            let write_limit = peer_cfg.request_timeout;
            let (tx, rx) = mpsc::channel(1024);
            let owner = ServerOwner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                registered: None,
                registry: registry.clone(),
                tx,
                handler: handler.clone(),
                waiting: waiting.clone(),
            };
            let stop = stop_rx.clone();
            tokio::spawn(
                connection(stream, from, peer, rx, stop, write_limit, owner)
                    .instrument(tracing::info_span!("diameter_peer", %from)),
            );
        }
    };
    (handle, fut)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

async fn connection<H: Handler>(
    stream: tokio::net::TcpStream,
    from: SocketAddr,
    mut peer: Peer,
    mut rx: mpsc::Receiver<Cmd>,
    stop: watch::Receiver<bool>,
    write_limit: Duration,
    mut owner: ServerOwner<H>,
) {
    tracing::debug!(%from, "Diameter connection accepted");
    conn::run(
        stream,
        from,
        &mut peer,
        &mut rx,
        Some(stop),
        write_limit,
        &mut owner,
    )
    .await;
}

/// An accepted connection's side: the registry, and the handler.
struct ServerOwner<H> {
    id: u64,
    /// The registry key it is under while Open.
    registered: Option<String>,
    registry: Registry,
    /// Its own command channel: for the registry, and for answers computed in tasks.
    tx: mpsc::Sender<Cmd>,
    handler: H,
    waiting: Arc<Waiting>,
}

impl<H: Handler> Owner for ServerOwner<H> {
    fn up(&mut self, peer: &Peer, host: String, realm: String) {
        let key = host.to_ascii_lowercase();
        if let Ok(mut r) = self.registry.lock() {
            let conns = r.entry(key.clone()).or_default();
            if !conns.is_empty() {
                tracing::info!(peer = %host, open = conns.len(), "another connection from an Origin-Host already connected: requests go to the newest");
            }
            conns.push(Entry {
                id: self.id,
                realm,
                relay: peer.remote_is_relay(),
                tx: self.tx.clone(),
            });
        }
        self.handler.peer(&host, true);
        self.registered = Some(key);
    }

    fn down(&mut self) {
        let Some(key) = self.registered.take() else {
            return;
        };
        if let Ok(mut r) = self.registry.lock()
            && let Some(conns) = r.get_mut(&key)
        {
            conns.retain(|e| e.id != self.id);
            if conns.is_empty() {
                r.remove(&key);
            }
        }
        self.handler.peer(&key, false);
    }

    fn request(&mut self, peer: &mut Peer, bytes: Vec<u8>) {
        if self.waiting.full() {
            let answer = self.handler.busy(&bytes);
            if !answer.is_empty() {
                peer.send_answer(answer);
            }
            return;
        }
        let mut fut = Box::pin(self.handler.handle(bytes));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(answer) => {
                if !answer.is_empty() {
                    peer.send_answer(answer);
                }
            }
            std::task::Poll::Pending => {
                let tx = self.tx.clone();
                let guard = self.waiting.enter();
                tokio::spawn(
                    async move {
                        let answer = fut.await;
                        drop(guard);
                        if !answer.is_empty() {
                            let _ = tx.send(Cmd::Answer(answer)).await;
                        }
                    }
                    .in_current_span(),
                );
            }
        }
    }
}

/// Requests waiting, and how many may.
struct Waiting {
    now: AtomicUsize,
    max: usize,
}

/// One waiting request: counted from [`Waiting::enter`] until dropped.
struct WaitGuard(Arc<Waiting>);

impl Waiting {
    /// Whether no new request may wait now.
    fn full(&self) -> bool {
        self.now.load(Ordering::Relaxed) >= self.max
    }

    /// Counts one more request waiting, until the guard is dropped.
    fn enter(self: &Arc<Self>) -> WaitGuard {
        self.now.fetch_add(1, Ordering::Relaxed);
        WaitGuard(self.clone())
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

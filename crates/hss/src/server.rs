//! The HSS's Diameter transport: a TCP listener (3868 by default), one task per connection
//! driving the sans-io [`ims_diameter::peer::Peer`] (responder role: CER from the allow-list
//! only, 3010 otherwise; DWR/DWA; DPR/DPA; our own DWR when idle), Cx requests answered by
//! [`crate::cx::CxHandler`] (in the connection's task when the answer is ready at once, as it
//! is from memory; in a task of their own when it waits on the store, so many are in flight
//! per connection), and a
//! registry of open peers by Origin-Host through which the admin API sends RTR and PPR to the
//! serving S-CSCF ([`Diameter::request`]). Several connections may claim one Origin-Host (a
//! restarted S-CSCF reconnecting before its old connection timed out, or a flood of CERs):
//! requests go to the newest, and a connection that closes takes only itself out of the
//! registry, never the others. Every log line of a connection's task names the peer's
//! address (the `diameter_peer` span). An S-CSCF behind a Diameter relay (e.g.
//! freeDiameterd) is not a peer of ours: its requests come through the relay, and so must
//! the requests for it. When the Destination-Host is not an open peer, the request goes to an
//! open peer that advertised the Relay Application-Id in its CER (RFC 6733 §2.8, §6.1.1),
//! which routes it on by the Destination-Host.
//!
//! Overload: at most `max_waiting` requests wait on the store at once, across connections;
//! while that many wait, new requests are answered 3004 DIAMETER_TOO_BUSY at once (RFC 6733
//! §7.1.3), so that a slow store makes the HSS refuse rather than queue without bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ims_diameter::peer::{Event, Peer, PeerConfig, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::cx::CxHandler;
use crate::metrics::Metrics;

/// What a connection task is asked to do from outside.
enum Command {
    /// Send this request; the answer (or `None` on failure) goes back on the channel.
    Request(Vec<u8>, oneshot::Sender<Option<Vec<u8>>>),
    /// Send this answer (a Cx answer computed in its own task).
    Answer(Vec<u8>),
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
    tx: mpsc::Sender<Command>,
}

/// Open peer connections by lower-cased Origin-Host, oldest first (requests go to the last).
type Registry = Arc<Mutex<HashMap<String, Vec<Entry>>>>;

/// Takes connection `id` out of the registry entry `key` (and the entry once empty).
fn unregister(registry: &Registry, key: &str, id: u64) {
    if let Ok(mut r) = registry.lock()
        && let Some(conns) = r.get_mut(key)
    {
        conns.retain(|e| e.id != id);
        if conns.is_empty() {
            r.remove(key);
        }
    }
}

/// A handle on the running Diameter side: send requests to connected peers.
#[derive(Clone)]
pub struct Diameter {
    registry: Registry,
    local: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
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

impl Diameter {
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

    /// The connection a request for Diameter host `host` goes on: that peer's own (its
    /// newest) when it is open, else the open relay peer first by name (RFC 6733 §6.1.1: a
    /// request whose Destination-Host is not a peer goes to a peer that can route it on).
    fn route(&self, host: &str) -> Option<(String, mpsc::Sender<Command>)> {
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
    /// waits for its answer.
    pub async fn request(&self, host: &str, request: Vec<u8>) -> Result<Vec<u8>, SendError> {
        let (via, tx) = self
            .route(host)
            .ok_or_else(|| SendError::NotConnected(host.to_owned()))?;
        if !via.eq_ignore_ascii_case(host) {
            tracing::debug!(%host, relay = %via, "no connection to the Diameter host: through the relay");
        }
        let (atx, arx) = oneshot::channel();
        tx.send(Command::Request(request, atx))
            .await
            .map_err(|_| SendError::NotConnected(host.to_owned()))?;
        arx.await
            .ok()
            .flatten()
            .ok_or_else(|| SendError::NoAnswer(host.to_owned()))
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

    /// Open peers' Origin-Hosts.
    pub fn peers(&self) -> Vec<String> {
        self.registry
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Binds the listener; [`serve`] runs it.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Accepts connections until the returned future is dropped.
pub fn serve(
    listener: TcpListener,
    peer_cfg: PeerConfig,
    cx: CxHandler,
    metrics: Arc<Metrics>,
    max_waiting: usize,
) -> (Diameter, impl std::future::Future<Output = ()>) {
    let on_store = Arc::new(Waiting {
        now: AtomicUsize::new(0),
        max: max_waiting,
    });
    let registry: Registry = Arc::new(Mutex::new(HashMap::new()));
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let handle = Diameter {
        registry: registry.clone(),
        local,
        stop,
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
            tokio::spawn(
                connection(
                    stream,
                    from,
                    peer,
                    cx.clone(),
                    metrics.clone(),
                    registry.clone(),
                    on_store.clone(),
                    stop_rx.clone(),
                )
                .instrument(tracing::info_span!("diameter_peer", %from)),
            );
        }
    };
    (handle, fut)
}

/// Requests waiting on the store, and how many may.
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

#[allow(clippy::too_many_arguments)]
async fn connection(
    mut stream: TcpStream,
    from: SocketAddr,
    mut peer: Peer,
    cx: CxHandler,
    metrics: Arc<Metrics>,
    registry: Registry,
    on_store: Arc<Waiting>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    let mut stopping = false;
    let (tx, mut rx) = mpsc::channel::<Command>(1024);
    let mut waiting: HashMap<u64, oneshot::Sender<Option<Vec<u8>>>> = HashMap::new();
    let mut registered: Option<String> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    peer.handle_connected(Instant::now());
    tracing::debug!(%from, "Diameter connection accepted");
    'conn: loop {
        // Write what the peer wants sent, then act on its events (answering a request queues
        // a transmit: write it before waiting again).
        loop {
            while let Some(bytes) = peer.poll_transmit() {
                if let Err(e) = stream.write_all(&bytes).await {
                    tracing::info!(%from, error = %e, "Diameter write failed");
                    peer.handle_disconnected(Instant::now());
                    break;
                }
            }
            let Some(ev) = peer.poll_event() else { break };
            match ev {
                Event::Up { host, realm } => {
                    let key = host.to_ascii_lowercase();
                    let relay = peer.remote_is_relay();
                    if let Ok(mut r) = registry.lock() {
                        let conns = r.entry(key.clone()).or_default();
                        if !conns.is_empty() {
                            tracing::info!(peer = %host, open = conns.len(), "another connection from an Origin-Host already connected: requests go to the newest");
                        }
                        conns.push(Entry {
                            id,
                            realm,
                            relay,
                            tx: tx.clone(),
                        });
                    }
                    registered = Some(key);
                    metrics.peer_up(1);
                }
                Event::Down(_) => {
                    // The peer logged why (one line, in this connection's span).
                    if let Some(key) = registered.take() {
                        unregister(&registry, &key, id);
                        metrics.peer_up(-1);
                    }
                }
                Event::Request(bytes) => {
                    // Most requests are answered from memory without waiting for anything:
                    // answer those here, in this task. Only one that waits (a load, a write)
                    // becomes a task of its own, so that it holds up no other request.
                    let t = Instant::now();
                    if on_store.full() {
                        let out = cx.busy(&bytes);
                        metrics.answered(out.command, out.result, t.elapsed(), false);
                        if !out.answer.is_empty() {
                            peer.send_answer(out.answer);
                        }
                        continue;
                    }
                    let cx2 = cx.clone();
                    let mut fut = Box::pin(async move { cx2.handle(&bytes).await });
                    let mut ctx = std::task::Context::from_waker(std::task::Waker::noop());
                    match fut.as_mut().poll(&mut ctx) {
                        std::task::Poll::Ready(out) => {
                            metrics.answered(out.command, out.result, t.elapsed(), out.resync);
                            if !out.answer.is_empty() {
                                peer.send_answer(out.answer);
                            }
                        }
                        std::task::Poll::Pending => {
                            let tx = tx.clone();
                            let metrics = metrics.clone();
                            let guard = on_store.enter();
                            tokio::spawn(async move {
                                let out = fut.await;
                                drop(guard);
                                metrics.answered(out.command, out.result, t.elapsed(), out.resync);
                                if !out.answer.is_empty() {
                                    let _ = tx.send(Command::Answer(out.answer)).await;
                                }
                            });
                        }
                    }
                }
                Event::Answer { handle, bytes } => {
                    if let Some(w) = waiting.remove(&handle) {
                        let _ = w.send(Some(bytes));
                    }
                }
                Event::RequestFailed { handle, .. } => {
                    if let Some(w) = waiting.remove(&handle) {
                        let _ = w.send(None);
                    }
                }
                Event::Close => {
                    while let Some(bytes) = peer.poll_transmit() {
                        let _ = stream.write_all(&bytes).await;
                    }
                    let _ = stream.shutdown().await;
                    break 'conn;
                }
                Event::Reconnect => {}
            }
        }
        let wake = peer.poll_timeout();
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    peer.handle_disconnected(Instant::now());
                    eof = true;
                }
                Ok(n) => peer.handle_bytes(Instant::now(), &buf[..n]),
            },
            Some(cmd) = rx.recv() => match cmd {
                Command::Answer(bytes) => peer.send_answer(bytes),
                Command::Request(bytes, answer) => match peer.send_request(Instant::now(), bytes) {
                    Ok(h) => { waiting.insert(h, answer); }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot send a request to the peer");
                        let _ = answer.send(None);
                    }
                },
            },
            () = sleep_until(wake) => peer.handle_timeout(Instant::now()),
            r = stop.changed(), if !stopping => {
                stopping = true;
                if r.is_err() || *stop.borrow() {
                    tracing::info!(%from, "HSS stopping: DPR to the peer");
                    peer.disconnect(Instant::now(), ims_diameter::dict::DisconnectCause::Rebooting);
                }
            }
        }
        if eof {
            // The transport is gone (the peer logged it): stop.
            break;
        }
    }
    for (_, w) in waiting.drain() {
        let _ = w.send(None);
    }
    if let Some(key) = registered.take() {
        unregister(&registry, &key, id);
        metrics.peer_up(-1);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

//! The transaction layer the CSCFs share ([`SipEndpoint`]): RFC 3261 §17 on top of
//! [`SipTransport`], enough for a registrar (UAS) and for stateful proxies.
//!
//! - **Dispatch.** A received message is matched here in the task that read it (the UDP
//!   socket's, or its TCP connection's: [`crate::sip::Receiver`]), with nothing here that
//!   waits; a new request then starts a task of the application's [`Handler`]
//!   ([`SipEndpoint::serve`]), or goes on the channel [`SipEndpoint::bind`] returned until
//!   a handler is set. So a request meets one task switch on its way in (into its
//!   handler's task) and a response one (into the task waiting for it): each hand-off
//!   between tasks is a wake-up, often of another thread, and those were the largest cost
//!   in every daemon's profile (docs/PERFORMANCE.md).
//! - **Server side.** Every new request is handed to the application once, as a
//!   [`ServerRequest`]; retransmissions of it are absorbed while the application works, and
//!   answered with the same final response for Timer J (64·T1 over UDP) after it has
//!   answered. The request's top Via gets `received` (RFC 3261 §18.2.1) and a filled-in
//!   `rport` (RFC 3581) before the application sees it, so a response built from it
//!   ([`ims_sip::response_to`]) carries where it must go. [`SipEndpoint::respond`] sends it
//!   there: back on the connection the request came on (TCP), or to the source address when
//!   the UE asked for `rport`, else to `received`/sent-by (UDP).
//! - **INVITE server side.** A new INVITE is answered `100 Trying` at once and gets an
//!   [`InviteServer`] driven by a task of its own: retransmissions get the last provisional
//!   again, a non-2xx final response is retransmitted (Timer G) until its ACK, which is
//!   absorbed here; after a 2xx the INVITE's retransmissions are absorbed for 64·T1 (RFC
//!   6026) and the ACK of the 2xx goes to the application as a request. A CANCEL is
//!   answered here (200, or 481 when no INVITE matches) and fires the INVITE's
//!   [`ServerRequest::cancellation`].
//! - **Client side.** [`SipEndpoint::send_request`] puts our Via (a fresh branch) on top of a
//!   request and runs the sans-io [`NonInviteClient`] machine over the transport
//!   (retransmissions by Timer E over UDP, Timer F as the time limit), returning the final
//!   response; provisional responses are absorbed. A request larger than 1300 bytes goes
//!   over TCP instead of UDP (RFC 3261 §18.1.1). Retransmitted final responses that come
//!   after it are absorbed for T4. [`SipEndpoint::send_invite`] runs an [`InviteClient`]
//!   (Timers A, B, C, D; the hop-by-hop ACK; CANCEL on request) and reports every response
//!   but the 100; [`crate::proxy`] builds forking on it.
//! - **Stateless forwarding.** A response that matches no client transaction of ours is
//!   forwarded by its Via (ours popped), as RFC 3261 §16.11 allows (2xx retransmissions of
//!   an INVITE among them); so is a request the application forwards with
//!   [`SipEndpoint::forward_stateless`] (the ACK of a 2xx).
//! - **Proxy checks** (§16.3): [`SipEndpoint::admit`] answers `416 Unsupported URI Scheme`
//!   for a Request-URI neither sip:, sips: nor tel:, `420 Bad Extension` (with
//!   Unsupported) for Proxy-Require options other than [`PROXY_OPTIONS`];
//!   [`SipEndpoint::proxy_checks`] answers `483 Too Many Hops` for
//!   Max-Forwards 0 and `482 Loop Detected` when our own Via is there with a branch that the
//!   same request would get from us again; it decrements Max-Forwards (inserting 70 − 1 when
//!   absent).
//!
//! Server transactions are the sans-io [`ServerSide`] of `ims-sip` (RFC 3261 §17.2.3 keys,
//! the non-INVITE machines, a slot per INVITE transaction), in fixed shards by key; client
//! transactions are small maps by branch (no global lock; no lock is held across an await).
//! An INVITE transaction's machine lives in its task, its slot holds the channel to it. A
//! sweep every 500 ms fires the server side's due deadlines (Timer J, Accepted, unanswered
//! requests: it only forgets, so lateness costs nothing) and drops ended client
//! transactions.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ims_sip::transaction::{
    Arrival, Event, InviteClient, InviteServer, KeyMethod, NonInviteClient, ServerSide, TIMER_C,
    Timers, TransactionKey,
};
use ims_sip::{HeaderName, Message, Method, Via, text};
use tokio::sync::{mpsc, watch};

use crate::dns::Transport;
use crate::shards::{SHARDS, Shards, shard_of};
use crate::sip::{Incoming, SendError, SipTransport};

/// The least Retry-After, in seconds, of the 503s we answer (overload, a busy HSS).
pub const RETRY_AFTER: u32 = 5;

/// Seconds for the Retry-After of a 503 (RFC 3261 §21.5.4): [`RETRY_AFTER`] plus 0 to
/// [`RETRY_AFTER`] more, in turn, so that UEs refused together do not all come back in the
/// same second. Every 503 of ours takes its value from here.
pub fn retry_after() -> u32 {
    static TURN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    RETRY_AFTER + TURN.fetch_add(1, Ordering::Relaxed) % (RETRY_AFTER + 1)
}

/// The Proxy-Require option tags every proxy of ours understands: `sec-agree` (RFC 3329),
/// which the P-CSCF acts on and removes (TS 24.229 §5.2.2.1); the I-CSCF and S-CSCF let it
/// pass should a P-CSCF leave it in.
pub const PROXY_OPTIONS: &[&str] = &["sec-agree"];

/// The option tags of `req`'s Proxy-Require that no proxy of ours supports, comma-joined for
/// an Unsupported header (RFC 3261 §16.3 item 5: answered 420 Bad Extension), or `None`.
/// ACK and CANCEL are never refused for it (§8.2.2.3).
pub fn unsupported_proxy_require(req: &Message) -> Option<String> {
    if matches!(req.method(), Some(Method::Ack | Method::Cancel)) {
        return None;
    }
    let unknown: Vec<&str> = req
        .option_tags(HeaderName::ProxyRequire)
        .filter(|t| !PROXY_OPTIONS.iter().any(|o| o.eq_ignore_ascii_case(t)))
        .collect();
    (!unknown.is_empty()).then(|| unknown.join(", "))
}

/// A request for the application, once per transaction.
#[derive(Debug)]
pub struct ServerRequest {
    /// The request, its top Via completed with `received`/`rport`.
    pub message: Message,
    /// Where it came from.
    pub source: SocketAddr,
    /// The transport it came on.
    pub transport: Transport,
    /// The local address it arrived at.
    pub local: SocketAddr,
    key: Option<TransactionKey>,
    /// An INVITE's: turns true when a CANCEL for it arrived (answered 200 here).
    cancel: Option<watch::Receiver<bool>>,
    /// When the endpoint handed it on ([`ServerRequest::received`]).
    received: Instant,
}

/// Why a client transaction ended without a final response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Timer F: no final response in 64·T1.
    #[error("no response from {0} (timeout)")]
    Timeout(SocketAddr),
    /// The transport could not send (connection refused, unreachable, ...).
    #[error(transparent)]
    Transport(#[from] SendError),
    /// The request could not be edited (our Via).
    #[error("cannot send the request: {0}")]
    Message(#[from] ims_sip::Error),
}

/// The handle to an INVITE server transaction's task ([`SipEndpoint::drive_ist`]).
type IstTx = mpsc::UnboundedSender<IstInput>;

/// The server transactions ([`ServerSide`]) in [`SHARDS`] locked shards by key, so that
/// requests of different transactions rarely wait on each other; no lock is held across an
/// await.
struct Servers([std::sync::Mutex<ServerSide<IstTx>>; SHARDS]);

impl Servers {
    fn new(timers: Timers) -> Self {
        Servers(std::array::from_fn(|_| {
            std::sync::Mutex::new(ServerSide::new(timers))
        }))
    }

    /// Runs `f` on the shard of `key`; `None` if its lock is poisoned.
    fn with<R>(
        &self,
        key: &TransactionKey,
        f: impl FnOnce(&mut ServerSide<IstTx>) -> R,
    ) -> Option<R> {
        self.0[shard_of(key)].lock().ok().map(|mut s| f(&mut s))
    }

    /// Fires what is due in every shard; how many unanswered transactions were forgotten.
    fn handle_timeouts(&self, now: Instant) -> usize {
        self.0
            .iter()
            .filter_map(|s| s.lock().ok().map(|mut s| s.handle_timeouts(now)))
            .sum()
    }

    fn len(&self) -> usize {
        self.0
            .iter()
            .map(|s| s.lock().map(|s| s.len()).unwrap_or(0))
            .sum()
    }
}

/// The server transaction key of a request (RFC 3261 §17.2.3: the top Via's branch and
/// sent-by, the method with ACK as INVITE); `None` without an RFC 3261 branch (such a
/// request is handed on untracked).
fn server_key(req: &Message) -> Option<TransactionKey> {
    let via = req.top_via().ok()?;
    let branch = via.branch()?;
    let method = KeyMethod::from_name(req.method_str()?);
    TransactionKey::server_at(branch, via.host_str, via.port, method).ok()
}

/// What reaches an INVITE server transaction's task.
#[derive(Debug)]
enum IstInput {
    /// The INVITE again.
    Retransmission,
    /// The ACK of our non-2xx final response.
    Ack,
    /// The application's response (status, bytes).
    Response(u16, Bytes),
    /// A CANCEL matched it.
    Cancel,
}

enum ClientState {
    Waiting(mpsc::Sender<Message>),
    /// Answered; later copies of the final response are absorbed until the instant.
    Absorbing(Instant),
}

struct Inner {
    transports: Vec<SipTransport>,
    /// Our Via sent-by (`host:port`) on each transport, computed once at bind.
    sent_bys: Vec<String>,
    via_host: String,
    timers: Timers,
    servers: Servers,
    clients: Shards<String, ClientState>,
    branch_seq: AtomicU64,
    salt: u64,
    /// Told of each final response the application sends ([`SipEndpoint::observe_responses`]).
    observer: std::sync::OnceLock<ResponseObserver>,
    /// New requests before a handler is set ([`SipEndpoint::serve`]), or for an
    /// application that reads them from the channel.
    requests: mpsc::Sender<ServerRequest>,
    /// Starts the handling of each new request ([`SipEndpoint::serve`]).
    handler: std::sync::OnceLock<Spawner>,
    /// Cleared by [`SipEndpoint::stop_serving`]: new requests are dropped.
    serving: std::sync::atomic::AtomicBool,
}

/// What [`SipEndpoint::serve`] keeps: starts a task handling one request.
type Spawner = Box<dyn Fn(ServerRequest) + Send + Sync>;

/// The application's side of the endpoint: what each new request is handed to, in a task
/// of its own ([`SipEndpoint::serve`]). The request is answered through the endpoint
/// ([`SipEndpoint::respond`], [`SipEndpoint::reply`]) or forwarded with its client
/// transactions; the endpoint absorbs or answers its retransmissions meanwhile.
pub trait Handler: Send + Sync + 'static {
    /// Handles one new request.
    fn handle(self: Arc<Self>, req: ServerRequest) -> impl Future<Output = ()> + Send + 'static;
}

/// The endpoint as its transports' [`crate::sip::Receiver`]: each received message is
/// dispatched in the task that read it (set once the endpoint exists).
struct Dispatch(std::sync::OnceLock<std::sync::Weak<Inner>>);

impl crate::sip::Receiver for Dispatch {
    fn receive(&self, inc: Incoming) {
        let Some(inner) = self.0.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let ep = SipEndpoint { inner };
        if inc.message.is_request() {
            ep.on_request(inc);
        } else {
            ep.on_response(inc);
        }
    }
}

/// What [`SipEndpoint::observe_responses`] calls: the request answered and the final status.
pub type ResponseObserver = Box<dyn Fn(&ServerRequest, u16) + Send + Sync>;

/// The transaction layer over one [`SipTransport`]. Clone freely.
#[derive(Clone)]
pub struct SipEndpoint {
    inner: Arc<Inner>,
}

impl SipEndpoint {
    /// Binds `listen` (UDP and TCP), names itself `via_host` in the Via it adds (an address or
    /// a host name that resolves to `listen`) and starts dispatching; new requests come on the
    /// returned channel.
    pub async fn bind(
        listen: SocketAddr,
        via_host: &str,
        timers: Timers,
    ) -> std::io::Result<(Self, mpsc::Receiver<ServerRequest>)> {
        Self::bind_all(&[listen], via_host, timers).await
    }

    /// Binds several addresses (an IPv4 and an IPv6 one, say) as one endpoint: requests from
    /// all of them come on one channel, responses leave from the address the request came
    /// to, and requests we send leave from the first address of the destination's family.
    /// When `via_host` is an IP address, each address puts itself in Via instead.
    pub async fn bind_all(
        listens: &[SocketAddr],
        via_host: &str,
        timers: Timers,
    ) -> std::io::Result<(Self, mpsc::Receiver<ServerRequest>)> {
        let listens: Vec<(SocketAddr, bool)> = listens.iter().map(|a| (*a, false)).collect();
        Self::bind_listens(&listens, via_host, timers).await
    }

    /// As [`SipEndpoint::bind_all`]; an address paired with `true` also opens its TCP
    /// connections from its own port ([`SipTransport::bind_connecting_from_port`]: the
    /// P-CSCF's IPsec protected ports).
    pub async fn bind_listens(
        listens: &[(SocketAddr, bool)],
        via_host: &str,
        timers: Timers,
    ) -> std::io::Result<(Self, mpsc::Receiver<ServerRequest>)> {
        let dispatch = Arc::new(Dispatch(std::sync::OnceLock::new()));
        let mut bound = Vec::new();
        for &(l, from_port) in listens {
            bound.push(SipTransport::bind_to(l, from_port, dispatch.clone()).await?);
        }
        if bound.is_empty() {
            return Err(std::io::Error::other("no SIP address to listen on"));
        }
        let transports: Vec<SipTransport> = bound.iter().map(|b| b.transport().clone()).collect();
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5eed, |d| d.as_nanos() as u64);
        let sent_bys = transports
            .iter()
            .map(|t| sent_by_of(via_host, t.local_addr()))
            .collect();
        let (tx, rx) = mpsc::channel(4096);
        let inner = Arc::new(Inner {
            transports,
            sent_bys,
            via_host: via_host.to_owned(),
            timers,
            servers: Servers::new(timers),
            clients: Shards::new(),
            branch_seq: AtomicU64::new(1),
            salt,
            observer: std::sync::OnceLock::new(),
            requests: tx,
            handler: std::sync::OnceLock::new(),
            serving: std::sync::atomic::AtomicBool::new(true),
        });
        let _ = dispatch.0.set(Arc::downgrade(&inner));
        for b in bound {
            b.start();
        }
        let ep = SipEndpoint { inner };
        tokio::spawn(sweep(Arc::downgrade(&ep.inner)));
        Ok((ep, rx))
    }

    /// Hands every new request from now on to `handler`, each in a task of its own, instead
    /// of the channel [`SipEndpoint::bind`] returned (what came before stays there for the
    /// application to read). The endpoint keeps only a weak reference (a handler holds its
    /// endpoint: no cycle): requests are served while the application keeps `handler`, and
    /// dropped after. Set once: false when a handler was set already.
    pub fn serve<H: Handler>(&self, handler: &Arc<H>) -> bool {
        let handler = Arc::downgrade(handler);
        let spawn: Spawner = Box::new(move |req| match handler.upgrade() {
            Some(h) => {
                tokio::spawn(h.handle(req));
            }
            None => tracing::debug!(source = %req.source, "request dropped: no handler any more"),
        });
        self.inner.handler.set(spawn).is_ok()
    }

    /// Stops handing new requests to the application (a daemon shutting down): they are
    /// dropped from now on; transactions under way go on.
    pub fn stop_serving(&self) {
        self.inner.serving.store(false, Ordering::Release);
    }

    /// Hands a new request to the application: its handler, or the channel.
    fn hand_on(&self, req: ServerRequest) {
        if !self.inner.serving.load(Ordering::Acquire) {
            tracing::debug!(source = %req.source, "request dropped: shutting down");
            return;
        }
        if let Some(spawn) = self.inner.handler.get() {
            return spawn(req);
        }
        match self.inner.requests.try_send(req) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(req)) => {
                tracing::warn!(source = %req.source, "request dropped: the application's queue is full");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("request dropped: the application stopped taking requests");
            }
        }
    }

    /// The first bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.transports[0].local_addr()
    }

    /// Every bound address.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner
            .transports
            .iter()
            .map(SipTransport::local_addr)
            .collect()
    }

    /// Our Via sent-by (`host:port`) on the first address.
    pub fn sent_by(&self) -> String {
        self.inner.sent_bys[0].clone()
    }

    /// Whether a Via host names us: our via_host, or the transport's own address.
    fn is_our_host(&self, host: &str, ip: IpAddr) -> bool {
        host.eq_ignore_ascii_case(&self.inner.via_host)
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|h| h == ip)
    }

    /// The transport underneath (the first address's).
    pub fn transport(&self) -> &SipTransport {
        &self.inner.transports[0]
    }

    /// The index of the transport that sends toward `to`: the first of its address family.
    fn toward_index(&self, to: SocketAddr) -> usize {
        self.inner
            .transports
            .iter()
            .position(|t| t.local_addr().is_ipv4() == to.is_ipv4())
            .unwrap_or(0)
    }

    /// The transport that sends toward `to`.
    fn toward(&self, to: SocketAddr) -> &SipTransport {
        &self.inner.transports[self.toward_index(to)]
    }

    /// The transport bound to `local`.
    fn at(&self, local: SocketAddr) -> &SipTransport {
        self.inner
            .transports
            .iter()
            .find(|t| t.local_addr() == local)
            .unwrap_or_else(|| self.toward(local))
    }

    /// Calls `f` with the request and the status of each final response the application
    /// sends through [`SipEndpoint::respond`] (and so [`SipEndpoint::reply`] and the proxy
    /// core): the daemons' response metrics. Set once; false when one was set already.
    pub fn observe_responses(
        &self,
        f: impl Fn(&ServerRequest, u16) + Send + Sync + 'static,
    ) -> bool {
        self.inner.observer.set(Box::new(f)).is_ok()
    }

    /// Tells the observer of a final response to `req`.
    fn observed(&self, req: &ServerRequest, status: u16) {
        if status >= 200
            && let Some(f) = self.inner.observer.get()
        {
            f(req, status);
        }
    }

    /// Transactions currently held (server, client): for metrics and tests.
    pub fn transactions(&self) -> (usize, usize) {
        (self.inner.servers.len(), self.inner.clients.len())
    }

    /// A received request, in the task that read it (nothing here waits).
    fn on_request(&self, inc: Incoming) {
        let Incoming {
            mut message,
            source,
            transport,
            local,
        } = inc;
        if let Err(e) = complete_top_via(&mut message, source, false) {
            // No usable Via: nobody to answer.
            tracing::info!(%source, error = %e, "request without a usable Via dropped");
            return;
        }
        let method = message.method();
        let key = server_key(&message);
        let now = Instant::now();
        let reliable = transport != Transport::Udp;
        let mut cancel = None;
        match (method, &key) {
            (Some(Method::Invite), Some(k)) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let arrival = self.inner.servers.with(k, |s| {
                    let a = s.receive(now, k, reliable);
                    if matches!(a, Arrival::New) {
                        s.start_invite(k.clone(), tx);
                    }
                    a
                });
                match arrival {
                    Some(Arrival::Invite(tx)) => {
                        tracing::debug!(%source, "INVITE retransmission");
                        let _ = tx.send(IstInput::Retransmission);
                        return;
                    }
                    Some(Arrival::New) => {
                        cancel =
                            Some(self.start_ist(k.clone(), &message, transport, source, local, rx));
                    }
                    _ => {
                        tracing::debug!(%source, "INVITE retransmission absorbed (answered 2xx)");
                        return;
                    }
                }
            }
            (Some(Method::Ack), Some(k)) => {
                let tx = self.inner.servers.with(k, |s| s.invite(k).cloned());
                if let Some(tx) = tx.flatten()
                    && tx.send(IstInput::Ack).is_ok()
                {
                    return;
                }
                // The ACK of a 2xx: a request of its own for the application to route.
            }
            (_, Some(k)) => match self.inner.servers.with(k, |s| s.receive(now, k, reliable)) {
                Some(Arrival::New) => {}
                Some(Arrival::Again(bytes)) => {
                    tracing::debug!(%source, ?method, "request retransmission: response sent again");
                    // (Over TCP nothing is kept after the final response.)
                    let (t, to) = response_route(&message, transport, source);
                    if t == Transport::Udp && !self.at(local).try_send_udp(to, &bytes) {
                        tracing::debug!(%to, "response not sent again: the socket is busy");
                    }
                    return;
                }
                _ => {
                    tracing::debug!(%source, ?method, "request retransmission absorbed");
                    return;
                }
            },
            (_, None) => {}
        }
        let tracked = method != Some(Method::Ack);
        let req = ServerRequest {
            message,
            source,
            transport,
            local,
            key: if tracked { key } else { None },
            cancel,
            received: Instant::now(),
        };
        if req.message.method() == Some(Method::Cancel) {
            let ep = self.clone();
            tokio::spawn(async move { ep.on_cancel(req).await });
            return;
        }
        self.hand_on(req);
    }

    /// A received response, in the task that read it (nothing here waits).
    fn on_response(&self, inc: Incoming) {
        let branch = match inc.message.top_via() {
            Ok(v) => v.branch().map(str::to_owned),
            Err(e) => {
                tracing::info!(source = %inc.source, error = %e, "response without a usable Via dropped");
                return;
            }
        };
        if let Some(mut b) = branch {
            // A CANCEL has its INVITE's branch: its responses have a key of their own.
            if inc.message.cseq().is_ok_and(|c| c.method == Method::Cancel) {
                b = cancel_key(&b);
            }
            let now = Instant::now();
            let waiter = self.inner.clients.with(&b, |m| match m.get(&b) {
                Some(ClientState::Waiting(tx)) => Some(Some(tx.clone())),
                Some(ClientState::Absorbing(until)) if *until > now => Some(None),
                _ => None,
            });
            match waiter.flatten() {
                Some(Some(tx)) => {
                    // Full: the transaction has not read the last ones yet; this one is a
                    // retransmission at best (the next copy takes its place).
                    if tx.try_send(inc.message).is_err() {
                        tracing::debug!(source = %inc.source, "response dropped: its transaction is busy");
                    }
                    return;
                }
                Some(None) => return,
                None => {}
            }
        }
        let ep = self.clone();
        tokio::spawn(async move {
            if let Err(e) = ep.forward_response(inc.message).await {
                tracing::info!(source = %inc.source, error = %e, "response could not be forwarded");
            }
        });
    }

    /// Sends the application's response to `req`: final responses are kept for the
    /// request's retransmissions.
    pub async fn respond(&self, req: &ServerRequest, response: Message) {
        let bytes = response.to_bytes();
        let (transport, to) = response_route(&req.message, req.transport, req.source);
        let status = response.status().unwrap_or(0);
        if let (Some(k), Some(Method::Invite)) = (&req.key, req.message.method()) {
            let tx = self.inner.servers.with(k, |s| s.invite(k).cloned());
            match tx
                .flatten()
                .map(|tx| tx.send(IstInput::Response(status, bytes.clone())))
            {
                Some(Ok(())) => return self.observed(req, status),
                // The transaction ended (a 2xx went already): 2xx from other branches go
                // upstream statelessly (RFC 3261 §16.7 item 5), anything else is dropped.
                _ if (200..300).contains(&status) => {}
                _ => {
                    tracing::debug!(status, "response to an ended INVITE transaction dropped");
                    return;
                }
            }
        } else if let Some(k) = &req.key {
            let now = Instant::now();
            match self
                .inner
                .servers
                .with(k, |s| s.respond(now, k, status, bytes.clone()))
            {
                // Sent from its transaction (the same bytes), or without one (forgotten).
                Some(Ok(_)) | None => {}
                Some(Err(e)) => {
                    tracing::info!(status, error = %e, "response refused by its transaction");
                    return;
                }
            }
        }
        self.observed(req, status);
        if let Err(e) = self.at(req.local).send(transport, to, bytes).await {
            tracing::info!(error = %e, status, "response could not be sent");
        }
    }

    /// Starts the INVITE server transaction of a new INVITE: its task sends `100 Trying` at
    /// once (every hop of ours answers an INVITE with 100 at once, RFC 3261 §16.2) and then
    /// carries the application's responses (Timer G, H, I); the returned receiver says
    /// whether a CANCEL came.
    fn start_ist(
        &self,
        key: TransactionKey,
        invite: &Message,
        transport: Transport,
        source: SocketAddr,
        local: SocketAddr,
        rx: mpsc::UnboundedReceiver<IstInput>,
    ) -> watch::Receiver<bool> {
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let (transport, to) = response_route(invite, transport, source);
        let now = Instant::now();
        let reliable = transport != Transport::Udp;
        let mut ist = InviteServer::new(reliable, now, self.inner.timers, None);
        match ims_sip::response_to(invite, 100, "Trying", None) {
            Ok(trying) => {
                let _ = ist.send_response(now, 100, trying.to_bytes());
            }
            Err(e) => tracing::debug!(error = %e, "no 100 Trying for this INVITE"),
        }
        tokio::spawn(
            self.clone()
                .drive_ist(key, ist, rx, cancel_tx, (transport, to, local)),
        );
        cancel_rx
    }

    /// Runs one INVITE server transaction until it ends; then a 2xx leaves its key in the
    /// Accepted state for 64·T1, anything else removes it.
    async fn drive_ist(
        self,
        key: TransactionKey,
        mut ist: InviteServer,
        mut rx: mpsc::UnboundedReceiver<IstInput>,
        cancel: watch::Sender<bool>,
        (transport, to, local): (Transport, SocketAddr, SocketAddr),
    ) {
        let mut accepted = false;
        // An application that never answers (a bug, or a request forwarded statelessly) must
        // not keep the transaction forever: past a proxy's Timer C and 64·T1 it is dropped.
        let stale = Instant::now() + TIMER_C + self.inner.timers.t1x64();
        loop {
            while let Some(b) = ist.poll_transmit() {
                if let Err(e) = self.at(local).send(transport, to, b).await {
                    tracing::info!(error = %e, "INVITE response could not be sent");
                    ist.handle_transport_error(Instant::now());
                }
            }
            while let Some(ev) = ist.poll_event() {
                if ev == Event::AckTimeout {
                    tracing::info!(%to, "no ACK for our final response to an INVITE (Timer H)");
                }
            }
            if ist.is_terminated() {
                break;
            }
            tokio::select! {
                input = rx.recv() => {
                    let now = Instant::now();
                    match input {
                        Some(IstInput::Retransmission) => ist.handle_request_retransmission(now),
                        Some(IstInput::Ack) => ist.handle_ack(now),
                        Some(IstInput::Response(status, bytes)) => {
                            accepted |= (200..300).contains(&status);
                            if let Err(e) = ist.send_response(now, status, bytes) {
                                tracing::debug!(status, error = %e, "response refused by the INVITE transaction");
                            }
                        }
                        Some(IstInput::Cancel) => {
                            let _ = cancel.send(true);
                        }
                        None => break,
                    }
                }
                () = sleep_until(ist.poll_timeout()) => ist.handle_timeout(Instant::now()),
                () = sleep_until(Some(stale)) => {
                    tracing::warn!(%to, "INVITE never answered by the application: transaction dropped");
                    break;
                }
            }
        }
        let now = Instant::now();
        self.inner
            .servers
            .with(&key, |s| s.end_invite(now, &key, accepted));
    }

    /// A CANCEL (RFC 3261 §9.2, §16.10): matched to its INVITE's server transaction by
    /// branch and sent-by, answered here: 200 and the INVITE's [`ServerRequest::cancellation`]
    /// fires (after a final response it changes nothing); no such INVITE: 481.
    async fn on_cancel(&self, req: ServerRequest) {
        let found = req.key.as_ref().and_then(|k| {
            let invite =
                TransactionKey::server(k.branch(), k.sent_by()?, KeyMethod::Invite).ok()?;
            self.inner
                .servers
                .with(&invite, |s| match s.invite(&invite) {
                    Some(tx) => Some(tx.send(IstInput::Cancel).is_ok()),
                    None => s.has_invite(&invite).then_some(true),
                })
        });
        let found = found.flatten();
        let tag = format!("{:x}", self.inner.salt & 0xffff_ffff);
        match found {
            Some(_) => {
                tracing::debug!(source = %req.source, "CANCEL matched its INVITE");
                match ims_sip::response_to(&req.message, 200, "OK", Some(&tag)) {
                    Ok(r) => self.respond(&req, r).await,
                    Err(e) => tracing::info!(error = %e, "CANCEL too broken to answer"),
                }
            }
            None => {
                tracing::info!(source = %req.source, "CANCEL for no INVITE of ours: 481");
                self.reply(&req, 481, "Call/Transaction Does Not Exist", &tag)
                    .await;
            }
        }
    }

    /// Puts our Via (a fresh branch, the transport and address toward `target`) on top of
    /// `req`; returns the branch.
    fn push_via(
        &self,
        req: &mut Message,
        target: crate::dns::Target,
        index: usize,
    ) -> Result<String, ims_sip::Error> {
        let branch = self.branch_for(req);
        let proto = match target.transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        };
        req.prepend_header(
            "Via",
            &format!(
                "SIP/2.0/{proto} {};branch={branch};rport",
                self.inner.sent_bys[index]
            ),
        )?;
        Ok(branch)
    }

    /// Answers `req` with `code` and `reason` (a To tag `tag` added), however broken the
    /// request (see [`ims_sip::error_response`]); a 503 gets a Retry-After
    /// ([`retry_after`]); an ACK gets nothing.
    pub async fn reply(&self, req: &ServerRequest, code: u16, reason: &str, tag: &str) {
        self.reply_then(req, code, reason, tag, code == 503).await
    }

    /// As [`SipEndpoint::reply`], with a Retry-After ([`retry_after`]) whatever the code:
    /// for a temporary failure other than 503 (an unreachable HSS's 480, TS 24.229
    /// §5.3.1.2; RFC 3261 §20.33 allows it there).
    pub async fn reply_retry_later(&self, req: &ServerRequest, code: u16, reason: &str, tag: &str) {
        self.reply_then(req, code, reason, tag, true).await
    }

    async fn reply_then(
        &self,
        req: &ServerRequest,
        code: u16,
        reason: &str,
        tag: &str,
        retry_later: bool,
    ) {
        if req.message.method() == Some(Method::Ack) {
            return;
        }
        match ims_sip::error_response(&req.message, code, reason, Some(tag)) {
            Ok(mut r) => {
                if retry_later {
                    let _ = r.append_header("Retry-After", &retry_after().to_string());
                }
                self.respond(req, r).await
            }
            Err(e) => tracing::info!(error = %e, code, "request too broken to answer"),
        }
    }

    /// The admission of a request a proxy is to handle: RFC 3261 §16.3 (a well-formed
    /// request: 400/505/513 naming the problem; Max-Forwards: 483; loops: 482), answered here.
    /// True when the request may go on (Max-Forwards already decremented).
    pub async fn admit(&self, req: &mut ServerRequest, tag: &str) -> bool {
        if let Err(e) = req.message.check_request() {
            tracing::info!(source = %req.source, error = %e, "bad request");
            let reason: String = e
                .reason()
                .chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect();
            self.reply(req, e.status(), &reason, tag).await;
            return false;
        }
        let scheme = req
            .message
            .request_uri_str()
            .and_then(|u| u.split_once(':'))
            .map_or("", |(s, _)| s);
        if !["sip", "sips", "tel"]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(scheme))
        {
            tracing::info!(source = %req.source, scheme, "416: a Request-URI scheme we do not serve");
            self.reply(req, 416, "Unsupported URI Scheme", tag).await;
            return false;
        }
        if let Some(unknown) = unsupported_proxy_require(&req.message) {
            tracing::info!(source = %req.source, options = %unknown, "420: Proxy-Require with options we do not support");
            if let Ok(mut r) =
                ims_sip::error_response(&req.message, 420, "Bad Extension", Some(tag))
                && r.append_header("Unsupported", &unknown).is_ok()
            {
                self.respond(req, r).await;
            }
            return false;
        }
        if let Err((code, why)) = self.proxy_checks(&mut req.message) {
            tracing::info!(source = %req.source, code, why, "request refused by the proxy checks");
            self.reply(req, code, why, tag).await;
            return false;
        }
        true
    }

    /// A fresh branch: `z9hG4bK` + the loop hash of `req` (§16.6 item 8) + a sequence number.
    pub fn branch_for(&self, req: &Message) -> String {
        let n = self.inner.branch_seq.fetch_add(1, Ordering::Relaxed);
        format!("z9hG4bK{:016x}.{n:x}", self.loop_hash(req))
    }

    fn loop_hash(&self, req: &Message) -> u64 {
        let mut h = DefaultHasher::new();
        self.inner.salt.hash(&mut h);
        req.request_uri_str().unwrap_or("").hash(&mut h);
        req.call_id().unwrap_or("").hash(&mut h);
        if let Ok(c) = req.cseq() {
            c.seq.hash(&mut h);
        }
        req.from_addr().ok().and_then(|f| f.tag()).hash(&mut h);
        req.to_addr().ok().and_then(|t| t.tag()).hash(&mut h);
        for r in req.values(HeaderName::ProxyRequire).flatten() {
            r.hash(&mut h);
        }
        // The route set too: in IMS a request passes the same S-CSCF twice with the same
        // Request-URI (originating with `orig` in its Route, then terminating after the
        // I-CSCF), a spiral and not a loop; a request that comes back with the route set it
        // left with is still a loop.
        for r in req.values(HeaderName::Route).flatten() {
            r.hash(&mut h);
        }
        h.finish()
    }

    /// RFC 3261 §16.3 checks before proxying `req` (Max-Forwards, loops) and the
    /// Max-Forwards decrement. `Err` holds the status and reason to answer with.
    pub fn proxy_checks(&self, req: &mut Message) -> Result<(), (u16, &'static str)> {
        match req.max_forwards() {
            Some(Ok(0)) => return Err((483, "Too Many Hops")),
            Some(Ok(n)) => {
                let v = (n - 1).to_string();
                req.set_header("Max-Forwards", &v)
                    .map_err(|_| (400, "Bad Max-Forwards"))?;
            }
            Some(Err(_)) => return Err((400, "Bad Max-Forwards")),
            None => req
                .set_header("Max-Forwards", "69")
                .map_err(|_| (400, "Bad Max-Forwards"))?,
        }
        // A loop: one of our own Vias whose branch carries the loop hash this request would
        // get from us again (§16.3 item 4). Compared without building strings.
        let hash = self.loop_hash(req);
        let looped = req.vias().flatten().any(|v| {
            let ours = v
                .branch()
                .and_then(|b| b.strip_prefix("z9hG4bK"))
                .and_then(|b| b.get(..16))
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                == Some(hash);
            ours && self.inner.transports.iter().any(|t| {
                let local = t.local_addr();
                v.port == Some(local.port()) && self.is_our_host(v.host_str, local.ip())
            })
        });
        if looped {
            return Err((482, "Loop Detected"));
        }
        Ok(())
    }

    /// Puts our Via on top of `req`, sends it to `target` and waits for the final response
    /// (our Via still on top: pop it with [`pop_own_via`] before passing the response on).
    pub async fn send_request(
        &self,
        req: Message,
        target: crate::dns::Target,
    ) -> Result<Message, ClientError> {
        let index = self.toward_index(target.addr);
        self.send_request_on(req, target, index, false, None).await
    }

    /// As [`SipEndpoint::send_request`], but gives up with [`ClientError::Timeout`] when
    /// nothing at all (not even a provisional response) came back within `silence`: for a
    /// caller with another target to try (RFC 3263 §4.3), which should not wait the whole
    /// of Timer F on a dead server. A late answer then finds no transaction and is dropped.
    pub async fn send_request_or_give_up(
        &self,
        req: Message,
        target: crate::dns::Target,
        silence: Duration,
    ) -> Result<Message, ClientError> {
        let index = self.toward_index(target.addr);
        self.send_request_on(req, target, index, false, Some(silence))
            .await
    }

    /// As [`SipEndpoint::send_request`], leaving from our address `local` (one of
    /// [`SipEndpoint::local_addrs`]; the P-CSCF's protected client port toward an IPsec UE),
    /// which also names itself in the Via. An address we do not have is an error.
    pub async fn send_request_from(
        &self,
        req: Message,
        target: crate::dns::Target,
        local: SocketAddr,
    ) -> Result<Message, ClientError> {
        let index = self.index_of(local)?;
        self.send_request_on(req, target, index, false, None).await
    }

    /// As [`SipEndpoint::send_request`] toward a UE's registered flow (from `local` when
    /// given): the flow's transport is kept whatever the request's size, since a UE
    /// registered over UDP need not listen on TCP (TS 24.229 §5.2.6.4: requests to the UE go
    /// over the flow it registered).
    pub async fn send_request_to_flow(
        &self,
        req: Message,
        target: crate::dns::Target,
        local: Option<SocketAddr>,
    ) -> Result<Message, ClientError> {
        let index = match local {
            Some(l) => self.index_of(l)?,
            None => self.toward_index(target.addr),
        };
        self.send_request_on(req, target, index, true, None).await
    }

    fn index_of(&self, local: SocketAddr) -> Result<usize, ClientError> {
        self.inner
            .transports
            .iter()
            .position(|t| t.local_addr() == local)
            .ok_or_else(|| {
                ClientError::Transport(SendError::Io {
                    transport: Transport::Udp,
                    to: local,
                    source: std::io::Error::new(
                        std::io::ErrorKind::AddrNotAvailable,
                        "not one of this endpoint's addresses",
                    ),
                })
            })
    }

    async fn send_request_on(
        &self,
        mut req: Message,
        mut target: crate::dns::Target,
        index: usize,
        flow: bool,
        silence: Option<Duration>,
    ) -> Result<Message, ClientError> {
        target.transport = transport_for(&req, target.transport, flow);
        let branch = self.push_via(&mut req, target, index)?;
        self.client_transaction(branch, req.to_bytes(), target, index, silence)
            .await
    }

    /// A non-INVITE client transaction for `bytes`, its responses found under `key` (the
    /// branch, or [`cancel_key`] for a CANCEL); after the final response its retransmissions
    /// are absorbed for T4 over UDP.
    async fn client_transaction(
        &self,
        key: String,
        bytes: Bytes,
        target: crate::dns::Target,
        index: usize,
        silence: Option<Duration>,
    ) -> Result<Message, ClientError> {
        let (tx, mut rx) = mpsc::channel(8);
        self.inner
            .clients
            .with(&key, |m| m.insert(key.clone(), ClientState::Waiting(tx)));
        let result = self
            .run_client(bytes, target, index, &mut rx, silence)
            .await;
        let until = Instant::now() + self.inner.timers.t4;
        self.inner.clients.with(&key, |m| {
            if result.is_ok() && target.transport == Transport::Udp {
                m.insert(key.clone(), ClientState::Absorbing(until));
            } else {
                m.remove(&key);
            }
        });
        result
    }

    async fn run_client(
        &self,
        bytes: Bytes,
        target: crate::dns::Target,
        index: usize,
        rx: &mut mpsc::Receiver<Message>,
        silence: Option<Duration>,
    ) -> Result<Message, ClientError> {
        let reliable = target.transport != Transport::Udp;
        let mut nict = NonInviteClient::new(bytes, reliable, Instant::now(), self.inner.timers);
        // Until the first response of any kind: when to give the target up.
        let mut give_up = silence.map(|d| Instant::now() + d);
        loop {
            while let Some(b) = nict.poll_transmit() {
                if let Err(e) = self.inner.transports[index]
                    .send(target.transport, target.addr, b)
                    .await
                {
                    nict.handle_transport_error(Instant::now());
                    return Err(e.into());
                }
            }
            while let Some(ev) = nict.poll_event() {
                if ev == Event::Timeout {
                    return Err(ClientError::Timeout(target.addr));
                }
            }
            let wake = match give_up {
                Some(g) if Instant::now() >= g => return Err(ClientError::Timeout(target.addr)),
                Some(g) => Some(nict.poll_timeout().map_or(g, |t| t.min(g))),
                None => nict.poll_timeout(),
            };
            tokio::select! {
                m = rx.recv() => match m {
                    Some(resp) => {
                        give_up = None;
                        let status = resp.status().unwrap_or(0);
                        nict.handle_response(Instant::now(), status);
                        if status >= 200 {
                            return Ok(resp);
                        }
                    }
                    None => return Err(ClientError::Timeout(target.addr)),
                },
                () = sleep_until(wake) => nict.handle_timeout(Instant::now()),
            }
        }
    }

    /// Sends an INVITE (our Via on top, a fresh branch) to `target`, from our address
    /// `local` when given (with `flow`, `target` is a UE's registered flow: see
    /// [`SipEndpoint::send_request_to_flow`]), and runs its client transaction ([`InviteClient`]: Timer A, B, a
    /// proxy's Timer C, the ACK of a non-2xx final response, CANCEL) in a task of its own.
    /// Its provisional responses (not the 100), its final response and any further 2xx
    /// arrive on `out` tagged with `id`, our Via still on top; a branch that ends without a
    /// final response reports the [`ClientError`] once.
    pub async fn send_invite(
        &self,
        mut req: Message,
        mut target: crate::dns::Target,
        local: Option<SocketAddr>,
        flow: bool,
        (id, out): (usize, mpsc::Sender<BranchReport>),
        unheard: Option<Unheard>,
    ) -> Result<InviteBranch, ClientError> {
        let index = match local {
            Some(l) => self.index_of(l)?,
            None => self.toward_index(target.addr),
        };
        target.transport = transport_for(&req, target.transport, flow);
        let branch = self.push_via(&mut req, target, index)?;
        let (tx, rx) = mpsc::channel(16);
        self.inner.clients.with(&branch, |m| {
            m.insert(branch.clone(), ClientState::Waiting(tx))
        });
        let (cancel_tx, cancel_rx) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().drive_ict(
            req,
            branch,
            (target, index),
            rx,
            cancel_rx,
            (id, out, unheard),
        ));
        Ok(InviteBranch { cancel: cancel_tx })
    }

    async fn drive_ict(
        self,
        sent: Message,
        branch: String,
        (target, index): (crate::dns::Target, usize),
        mut rx: mpsc::Receiver<Message>,
        mut cancel_rx: mpsc::UnboundedReceiver<()>,
        (id, out, mut unheard): (usize, mpsc::Sender<BranchReport>, Option<Unheard>),
    ) {
        let reliable = target.transport != Transport::Udp;
        let timers = self.inner.timers;
        let mut ict = InviteClient::new(
            sent.to_bytes(),
            reliable,
            Instant::now(),
            timers,
            Some(TIMER_C),
        );
        let mut proceeding = false;
        let mut cancel_wanted = false;
        let mut cancel_open = true;
        // After our CANCEL, the INVITE is given up if no final response comes in 64·T1 (§9.1).
        let mut give_up: Option<Instant> = None;
        let mut failure: Option<ClientError> = None;
        loop {
            while let Some(b) = ict.poll_transmit() {
                if let Err(e) = self.inner.transports[index]
                    .send(target.transport, target.addr, b)
                    .await
                {
                    ict.handle_transport_error(Instant::now());
                    failure = Some(e.into());
                }
            }
            while let Some(ev) = ict.poll_event() {
                match ev {
                    Event::Timeout if !proceeding => {
                        failure = Some(ClientError::Timeout(target.addr));
                    }
                    // Timer C: no final response for minutes; CANCEL, then 408 if still none.
                    Event::Timeout => cancel_wanted = true,
                    _ => {}
                }
            }
            if ict.is_terminated() {
                break;
            }
            if cancel_wanted && proceeding && give_up.is_none() {
                give_up = Some(Instant::now() + timers.t1x64());
                match ims_sip::cancel_for(&sent) {
                    Ok(c) => {
                        tokio::spawn(self.clone().send_cancel(c, branch.clone(), target, index));
                    }
                    Err(e) => tracing::info!(error = %e, "cannot build the CANCEL"),
                }
            }
            let wake = match (ict.poll_timeout(), give_up) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                m = rx.recv() => match m {
                    Some(resp) => {
                        // Heard from: no longer counted.
                        drop(unheard.take());
                        let status = resp.status().unwrap_or(0);
                        let ack = (status >= 300)
                            .then(|| ims_sip::ack_for(&sent, &resp).ok().map(|a| a.to_bytes()))
                            .flatten();
                        proceeding |= (100..200).contains(&status);
                        if ict.handle_response(Instant::now(), status, ack)
                            && status > 100
                            && let Err(mpsc::error::SendError((_, Ok(resp)))) =
                                out.send((id, Ok(resp))).await
                        {
                            // The proxy has answered upstream already: a 2xx still goes up
                            // by Via (§16.7 item 5); anything else stops here.
                            if (200..300).contains(&status) {
                                let _ = self.forward_response(resp).await;
                            }
                            cancel_wanted = true;
                        }
                    }
                    None => break,
                },
                c = cancel_rx.recv(), if cancel_open => match c {
                    Some(()) => cancel_wanted = true,
                    None => cancel_open = false,
                },
                () = sleep_until(wake) => {
                    let now = Instant::now();
                    if give_up.is_some_and(|g| g <= now) {
                        tracing::info!(to = %target.addr, "no final response after our CANCEL");
                        failure = Some(ClientError::Timeout(target.addr));
                        break;
                    }
                    ict.handle_timeout(now);
                }
            }
        }
        // Further 2xx (retransmissions) now match nothing and go upstream by Via.
        self.inner.clients.with(&branch, |m| m.remove(&branch));
        if let Some(e) = failure {
            let _ = out.send((id, Err(e))).await;
        }
    }

    /// Sends the CANCEL of an INVITE we sent (same Via and branch) as a non-INVITE client
    /// transaction; its 200 (and retransmissions of it) are absorbed.
    async fn send_cancel(
        self,
        cancel: Message,
        branch: String,
        target: crate::dns::Target,
        index: usize,
    ) {
        let result = self
            .client_transaction(cancel_key(&branch), cancel.to_bytes(), target, index, None)
            .await;
        if let Err(e) = &result {
            tracing::info!(error = %e, "CANCEL not answered");
        }
    }

    /// Pops our Via from a response and sends it to the next Via (RFC 3261 §16.7 item 9,
    /// §18.2.2 with RFC 3581).
    pub async fn forward_response(&self, mut resp: Message) -> Result<(), ClientError> {
        pop_own_via(&mut resp)?;
        let via = resp.top_via()?;
        let transport = via_transport(&via);
        let Some(to) = via_destination(&via) else {
            return Err(ClientError::Message(ims_sip::Error::BadHeader {
                name: "Via",
                why: "the next Via has neither an address nor `received`",
            }));
        };
        self.toward(to).send(transport, to, resp.to_bytes()).await?;
        Ok(())
    }

    /// Forwards a request without a transaction (INVITE, ACK, CANCEL for now): our Via on
    /// top, sent once.
    pub async fn forward_stateless(
        &self,
        req: Message,
        target: crate::dns::Target,
    ) -> Result<(), ClientError> {
        let index = self.toward_index(target.addr);
        self.forward_stateless_on(req, target, index).await
    }

    /// As [`SipEndpoint::forward_stateless`], leaving from our address `local`.
    pub async fn forward_stateless_from(
        &self,
        req: Message,
        target: crate::dns::Target,
        local: SocketAddr,
    ) -> Result<(), ClientError> {
        let index = self.index_of(local)?;
        self.forward_stateless_on(req, target, index).await
    }

    async fn forward_stateless_on(
        &self,
        mut req: Message,
        target: crate::dns::Target,
        index: usize,
    ) -> Result<(), ClientError> {
        self.push_via(&mut req, target, index)?;
        self.inner.transports[index]
            .send(target.transport, target.addr, req.to_bytes())
            .await?;
        Ok(())
    }
}

/// The transport a request goes over: RFC 3261 §18.1.1, a request within 200 bytes of the
/// path MTU (1500) goes over TCP instead of UDP, except over a UE's registered flow, whose
/// transport is kept (the UE may not listen on TCP at all).
fn transport_for(req: &Message, transport: Transport, flow: bool) -> Transport {
    if transport == Transport::Udp && !flow && req.serialized_len() + 80 > 1300 {
        Transport::Tcp
    } else {
        transport
    }
}

/// The client-transaction key of the CANCEL of the INVITE sent with `branch`.
fn cancel_key(branch: &str) -> String {
    format!("{branch} CANCEL")
}

/// Counts an INVITE as not yet heard from by the next hop while it lives: the branch drops it
/// at the first response of any kind (a 100 Trying comes at once from a next hop that keeps
/// up) or when it ends. A counter of these is how far behind the core is, whatever the
/// callee takes to answer: the P-CSCF refuses new calls with 503 past a limit of them.
#[derive(Debug)]
pub struct Unheard(Arc<std::sync::atomic::AtomicUsize>);

impl Unheard {
    /// Counts one more in `counter`; returns the guard and the count before it.
    pub fn enter(counter: &Arc<std::sync::atomic::AtomicUsize>) -> (Self, usize) {
        let before = counter.fetch_add(1, Ordering::Relaxed);
        (Self(counter.clone()), before)
    }
}

impl Drop for Unheard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One INVITE sent by [`SipEndpoint::send_invite`]: its responses arrive on the channel given
/// there; [`InviteBranch::cancel`] CANCELs it.
#[derive(Debug)]
pub struct InviteBranch {
    cancel: mpsc::UnboundedSender<()>,
}

impl InviteBranch {
    /// CANCELs the INVITE (RFC 3261 §9.1): at once when a provisional response has come,
    /// else as soon as one does; nothing once it has a final response. The branch's final
    /// response (a 487, or a 2xx that crossed the CANCEL) still arrives.
    pub fn cancel(&self) {
        let _ = self.cancel.send(());
    }
}

/// What an INVITE branch reports: a response (our Via still on top), or why it ended
/// without a final one.
pub type BranchReport = (usize, Result<Message, ClientError>);

/// Our Via sent-by on `local`: `via_host` when it is a name, else the local address itself
/// (each address of a dual-stack endpoint names itself).
fn sent_by_of(via_host: &str, local: SocketAddr) -> String {
    let host = if via_host.parse::<IpAddr>().is_ok() {
        local.ip().to_string()
    } else {
        via_host.to_owned()
    };
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", local.port())
    } else {
        format!("{host}:{}", local.port())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Drops answered server transactions after Timer J and stale ones after a long while.
async fn sweep(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let stale = inner.servers.handle_timeouts(now);
        if stale > 0 {
            tracing::debug!(stale, "unanswered server transactions forgotten");
        }
        inner.clients.retain(|_, c| match c {
            ClientState::Waiting(tx) => !tx.is_closed(),
            ClientState::Absorbing(until) => *until > now,
        });
    }
}

/// RFC 3261 §18.2.1 and RFC 3581 §4: `received` when the sent-by host is not the source
/// address, `rport=<source port>` when the sender asked for it.
fn complete_top_via(
    req: &mut Message,
    source: SocketAddr,
    force_rport: bool,
) -> Result<(), ims_sip::Error> {
    let via = req.top_via()?;
    let src_ip = source.ip().to_string();
    let host_is_source = via
        .host_str
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip == source.ip());
    let wants_rport = force_rport || via.rport().is_some();
    if host_is_source && !wants_rport {
        return Ok(());
    }
    let index = req
        .headers()
        .position(|h| h.name == HeaderName::Via)
        .ok_or(ims_sip::Error::MissingHeader("Via"))?;
    let value = req
        .headers_named(HeaderName::Via)
        .next()
        .ok_or(ims_sip::Error::MissingHeader("Via"))?
        .value_str()?;
    // The first value of a comma list is the top Via.
    let mut items: Vec<String> = text::split_commas(value).map(str::to_owned).collect();
    let Some(first) = items.first_mut() else {
        return Err(ims_sip::Error::MissingHeader("Via"));
    };
    if !host_is_source {
        *first = text::set_param(first, "received", Some(&src_ip));
    }
    if wants_rport {
        *first = text::set_param(first, "rport", Some(&source.port().to_string()));
    }
    let v = items.join(", ");
    req.replace_value_at(index, &v)
}

impl ServerRequest {
    /// When the endpoint took the request in (for latency metrics: until the observer of
    /// [`SipEndpoint::observe_responses`] sees its final response).
    pub fn received(&self) -> Instant {
        self.received
    }

    /// An INVITE's cancellation: changes to `true` when a CANCEL for it arrived (the
    /// endpoint answered the CANCEL with 200; the proxy now cancels its branches, a UAS
    /// answers 487). `None` for other methods.
    pub fn cancellation(&self) -> Option<watch::Receiver<bool>> {
        self.cancel.clone()
    }

    /// Makes the responses to this request go back to its source address and port whatever
    /// its top Via says (`rport` filled in as if the client had asked for it, RFC 3581): for
    /// flows where only the source is right, like a UE's IPsec protected client port, whose
    /// Via names its protected *server* port (TS 24.229 §5.1.1.2, TS 33.203 §7.1).
    pub fn respond_to_source(&mut self) -> Result<(), ims_sip::Error> {
        complete_top_via(&mut self.message, self.source, true)
    }
}

/// How a response to `req` leaves: on its connection (TCP), else to the Via's
/// `rport`/`received`/sent-by (UDP), else to the source.
fn response_route(
    message: &Message,
    transport: Transport,
    source: SocketAddr,
) -> (Transport, SocketAddr) {
    match transport {
        Transport::Udp => match response_destination(message) {
            Some(to) => (Transport::Udp, to),
            None => (Transport::Udp, source),
        },
        t => (t, source),
    }
}

/// Where a UDP response to `req` goes (RFC 3581 `rport`, else `received`/sent-by).
fn response_destination(req: &Message) -> Option<SocketAddr> {
    via_destination(&req.top_via().ok()?)
}

/// Where a response to this Via goes, with its transport: `received`/`rport` as the
/// transport layer completed them (RFC 3261 §18.2.2, RFC 3581); `None` when the Via names
/// no address (a host name without `received`).
pub fn via_target(via: &Via<'_>) -> Option<crate::dns::Target> {
    Some(crate::dns::Target {
        addr: via_destination(via)?,
        transport: via_transport(via),
    })
}

fn via_transport(via: &Via<'_>) -> Transport {
    if via.transport.eq_ignore_ascii_case("TCP") {
        Transport::Tcp
    } else if via.transport.eq_ignore_ascii_case("TLS") {
        Transport::Tls
    } else {
        Transport::Udp
    }
}

/// The address a response for this Via goes to, when it names one (`received`, or a
/// numeric sent-by); port from `rport`, the sent-by port, or 5060.
fn via_destination(via: &Via<'_>) -> Option<SocketAddr> {
    let host = via.received().unwrap_or(via.host_str);
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let port = match via.rport() {
        Some(Some(p)) => p,
        _ => via.port.unwrap_or(5060),
    };
    Some(SocketAddr::new(ip, port))
}

/// Removes the top Via of a response (ours).
pub fn pop_own_via(resp: &mut Message) -> Result<(), ims_sip::Error> {
    resp.pop_first_value(HeaderName::Via)?;
    Ok(())
}

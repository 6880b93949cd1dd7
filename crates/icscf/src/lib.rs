//! The I-CSCF: the home network's SIP entry point for registrations (3GPP TS 24.229 §5.3.1,
//! TS 29.228 §6.1.1).
//!
//! For each REGISTER it asks the HSS where the user is served (UAR over Cx):
//! - User-Authorization-Type from the expiry asked for: `DE_REGISTRATION` when every binding
//!   is removed (Expires 0), `REGISTRATION` otherwise, `REGISTRATION_AND_CAPABILITIES` when
//!   the S-CSCF the HSS named cannot be reached and another must be chosen.
//! - User-Name is the Authorization header's `username` (the IMPI), or the IMPU without its
//!   scheme when the UE sent none (TS 24.229 §5.1.1.2 derivation); Public-Identity is the To
//!   URI; Visited-Network-Identifier the P-Visited-Network-ID the P-CSCF added.
//!
//! The answer picks the S-CSCF ([`select`]): the Server-Name it gives, or the configured
//! S-CSCFs ranked by the Server-Capabilities (every mandatory capability must be present; the
//! most optional ones win; the HSS's preferred names first). The REGISTER goes there with a
//! `Route: <S-CSCF;lr>`; if that S-CSCF does not answer (no answer within `scscf_timeout_ms`,
//! a transport error, 408, 5xx) the next one is tried. The I-CSCF keeps no state of its own
//! between requests and never adds itself to Path.
//!
//! Failures, as TS 24.229 §5.3.1.2 asks: a negative UAA (user unknown 5001, identities don't
//! match 5002, authorization rejected 5003, roaming not allowed 5004, not registered on a
//! deregistration) → `403 Forbidden`; the HSS too busy (3004) → `503 Service Unavailable`
//! with Retry-After; the HSS unreachable (no connection, no answer) → `480 Temporarily
//! Unavailable` with Retry-After; 3003 DIAMETER_REALM_NOT_SERVED (our `destination_realm` is
//! not the HSS's: one warning naming it) → `500`; failing otherwise (3xxx, 5012) → `480`; no configured
//! S-CSCF has the mandatory capabilities → `500 No S-CSCF Available` (a server-side fault: the operator's S-CSCF list
//! does not match the HSS's capability sets); every S-CSCF tried answered 503 (overload) →
//! `503` with Retry-After, without asking the HSS for another; every S-CSCF tried failed or
//! stayed silent → `504 Server Time-out`, or, when one did answer (500, 408, ...), the last
//! such answer as it came (RFC 3261 §16.7: a branch's response, whose reason says why, e.g.
//! the S-CSCF's HSS refusing its realm) rather than a 504 that says nothing true.
//!
//! Cx has no request from the HSS to the I-CSCF: one that comes anyway (an RTR sent to the
//! wrong node, a hostile peer) is refused 3001 DIAMETER_COMMAND_UNSUPPORTED, not left to time
//! out at the sender.
//!
//! **Terminating requests** (TS 24.229 §5.3.2, TS 29.228 §6.1.4): INVITE, MESSAGE, OPTIONS and a
//! SUBSCRIBE starting a dialog (a P-CSCF's reg event subscription: Kamailio's P-CSCF sends it
//! to the public identity, through the I-CSCF) for a public identity of ours (the Request-URI without parameters, sip: or tel:) make a LIR. A
//! Server-Name routes the request to that S-CSCF; capabilities (Experimental-Result 2003
//! UNREGISTERED_SERVICE: no S-CSCF yet) choose one as for a registration. The S-CSCF gets a
//! `Route: <S-CSCF;lr>` and the I-CSCF does not stay in the path (no Record-Route). Every
//! response is passed back as it is; only an S-CSCF that cannot be reached or stays silent
//! is replaced by the next. A user the HSS does not know (5001) → `404 Not Found`; a user not
//! registered and without services (5003) → `480 Temporarily Unavailable`; a busy HSS →
//! `503` with Retry-After; an unreachable HSS → `480` with Retry-After. INVITE takes the same way through the
//! stateful proxy core ([`ims_net::proxy`]: 100 at once, CANCEL passed on, responses passed
//! back); other methods get `501`.
//!
//! **Diameter requests to the I-CSCF**: it serves none, but a relay between it and the HSS
//! may route one here; each gets 3001 DIAMETER_COMMAND_UNSUPPORTED at once.
//!
//! **Metrics** ([`metrics`]): requests by method, final responses by status, UAA/LIA by
//! result, the UAR/LIR round trips' latency and SIP transactions, at `/metrics` on the admin
//! API ([`admin`]) when `admin_listen` (loopback only) is set.

pub mod admin;
pub mod metrics;
pub mod select;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument;

use ims_diameter::cx::{Lia, Lir, RequestBase, ServerCapabilities, Uaa, Uar};
use ims_diameter::dict::{
    UserAuthorizationType, experimental_result_code as erc, result_code as rc,
};
use ims_diameter::{AnswerResult, SessionIdGenerator};
use ims_net::diameter::{CxClientConfig, DiameterClient};
use ims_net::dns::{Destination, SipResolver};
use ims_net::endpoint::{ServerRequest, SipEndpoint, pop_own_via};
use ims_net::metrics::CxOutcome;
use ims_sip::transaction::Timers;
use ims_sip::{HeaderName, Message, Method, Uri};
use serde::Deserialize;

/// Why the I-CSCF answers a request itself instead of routing it: the SIP status, its reason
/// phrase, and whether the UE is told to come back later (Retry-After).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    code: u16,
    reason: &'static str,
    retry_later: bool,
}

impl Refusal {
    /// A refusal the UE should not simply retry (not found, forbidden, ...).
    const fn final_(code: u16, reason: &'static str) -> Self {
        Refusal {
            code,
            reason,
            retry_later: false,
        }
    }

    /// A refusal that passes: the answer carries Retry-After.
    const fn later(code: u16, reason: &'static str) -> Self {
        Refusal {
            code,
            reason,
            retry_later: true,
        }
    }
}

/// The answer when the HSS cannot be asked (no connection, no answer): 480 as TS 24.229
/// §5.3.1.2 says, with Retry-After (its connection is re-established with back-off).
const HSS_UNREACHABLE: Refusal = Refusal::later(480, "Temporarily Unavailable (HSS unreachable)");

/// The answer when the HSS says 3004 DIAMETER_TOO_BUSY: 503 with Retry-After (issue #16's
/// overload rule: refused at once, to come back later).
const HSS_BUSY: Refusal = Refusal::later(503, "Service Unavailable (HSS too busy)");

/// The HSS answered 3003 DIAMETER_REALM_NOT_SERVED: our `diameter.destination_realm` is
/// not its realm. 500, not TS 24.229's 403 for a refused user nor its 480 for an HSS out of
/// reach: the fault is this node's configuration, and it does not pass.
const REALM_NOT_SERVED: Refusal = Refusal::final_(
    500,
    "Server Internal Error (the HSS does not serve our Diameter realm)",
);

/// A Cx answer the I-CSCF cannot use (unparsable, invalid, an unexpected result).
const CX_UNUSABLE: Refusal = Refusal::final_(480, "Temporarily Unavailable");

/// The I-CSCF configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SIP address (UDP and TCP on the same port).
    pub sip_listen: SocketAddr,
    /// The admin HTTP API (`/health`, `/metrics`): none when unset. A loopback address
    /// only: it has no authentication.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Our host in Via (a name resolving to `sip_listen`, or the address itself).
    pub via_host: String,
    /// The home network's domain (also the Visited-Network-Identifier when the REGISTER
    /// carries no P-Visited-Network-ID).
    pub home_domain: String,
    /// DNS servers for RFC 3263 lookups of S-CSCF names.
    pub dns: Vec<SocketAddr>,
    /// Log filter when RUST_LOG is unset.
    #[serde(default = "default_log")]
    pub log: String,
    /// Cx towards the HSS.
    pub diameter: CxClientConfig,
    /// The S-CSCFs this I-CSCF may choose from, in order of preference.
    #[serde(default)]
    pub scscf: Vec<ScscfEntry>,
    /// Milliseconds an S-CSCF has to answer a request before the next one is tried (when
    /// there is a next one: the last is waited for until its Timer F). Timer F
    /// (32 s) would outlast the P-CSCF's own transaction toward us, so that a stopped S-CSCF
    /// could never be failed over from in time. A live S-CSCF answers a REGISTER after one Cx
    /// exchange (milliseconds); 4 s by default leaves a UE's REGISTER room for a UAR, a
    /// silent S-CSCF, a second UAR and the next S-CSCF well within its own 32 s.
    #[serde(default = "default_scscf_timeout_ms")]
    pub scscf_timeout_ms: u64,
}

/// One S-CSCF the I-CSCF knows.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScscfEntry {
    /// Its SIP URI (as the HSS names it in Server-Name).
    pub uri: String,
    /// The capabilities it has (TS 29.228 Mandatory/Optional-Capability values).
    #[serde(default)]
    pub capabilities: Vec<u32>,
}

fn default_log() -> String {
    "info".to_owned()
}
fn default_scscf_timeout_ms() -> u64 {
    4000
}

impl Config {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        self.diameter.validate()?;
        if self.home_domain.is_empty() || self.via_host.is_empty() {
            return Err("home_domain and via_host must be set".into());
        }
        if self.scscf_timeout_ms == 0 {
            return Err("scscf_timeout_ms must be positive".into());
        }
        if let Some(a) = self.admin_listen
            && !a.ip().is_loopback()
        {
            return Err(format!(
                "admin_listen {a} is not a loopback address: the I-CSCF's admin API has no authentication, so it listens on loopback only"
            ));
        }
        for s in &self.scscf {
            match Uri::parse(&s.uri) {
                Ok(Uri::Sip(_)) => {}
                _ => return Err(format!("scscf.uri `{}` is not a SIP URI", s.uri)),
            }
        }
        Ok(())
    }
}

/// Why the I-CSCF could not start.
#[derive(Debug, thiserror::Error)]
pub enum IcscfError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot listen for SIP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("DNS resolver: {0}")]
    Resolver(#[from] ims_net::dns::ResolveError),
    #[error("cannot listen for the admin API on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started I-CSCF.
pub struct Icscf {
    inner: Arc<Inner>,
    requests: tokio::sync::mpsc::Receiver<ServerRequest>,
    admin: Option<tokio::net::TcpListener>,
}

struct Inner {
    cfg: Config,
    ep: SipEndpoint,
    cx: DiameterClient,
    resolver: SipResolver,
    sessions: SessionIdGenerator,
    /// Our counters ([`metrics`]); the endpoint counts our final responses into them.
    metrics: Arc<metrics::Metrics>,
}

impl Icscf {
    /// Binds SIP and starts the Cx connection.
    pub async fn start(cfg: Config) -> Result<Self, IcscfError> {
        Self::start_with_timers(cfg, Timers::RFC3261).await
    }

    /// As [`Icscf::start`], with other SIP timers (tests).
    pub async fn start_with_timers(cfg: Config, timers: Timers) -> Result<Self, IcscfError> {
        cfg.validate().map_err(IcscfError::Config)?;
        let (ep, requests) = SipEndpoint::bind(cfg.sip_listen, &cfg.via_host, timers)
            .await
            .map_err(|source| IcscfError::Bind {
                addr: cfg.sip_listen,
                source,
            })?;
        let (cx, from_hss) = cfg.diameter.connect(cfg.sip_listen.ip());
        let resolver = SipResolver::new(&cfg.dns)?;
        let high = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        let sessions = SessionIdGenerator::new(cfg.diameter.origin_host.clone(), high);
        let admin = match cfg.admin_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| IcscfError::AdminBind { addr, source })?,
            ),
            None => None,
        };
        let metrics = Arc::new(metrics::Metrics::default());
        let counted = metrics.clone();
        ep.observe_responses(move |_, status| counted.response(status));
        tracing::info!(
            sip = %ep.local_addr(),
            admin = ?admin.as_ref().and_then(|a| a.local_addr().ok()),
            hss = %cfg.diameter.hss,
            "I-CSCF started"
        );
        let inner = Arc::new(Inner {
            cfg,
            ep,
            cx,
            resolver,
            sessions,
            metrics,
        });
        tokio::spawn(cx_requests_loop(Arc::downgrade(&inner), from_hss));
        Ok(Self {
            inner,
            requests,
            admin,
        })
    }

    /// Waits until the Diameter connection to the HSS is open (or `timeout` passes).
    pub async fn wait_diameter(&self, timeout: std::time::Duration) -> bool {
        let mut c = self.inner.cx.clone();
        c.wait_open(timeout).await
    }

    /// The SIP address bound.
    pub fn sip_addr(&self) -> SocketAddr {
        self.inner.ep.local_addr()
    }

    /// The admin API's address, when `admin_listen` is set (port 0 picks one).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) {
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(listener) = self.admin.take() {
            let app = admin::router(self.inner.clone());
            tokio::spawn(async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = admin_stopped.await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "I-CSCF admin API stopped");
                }
            });
        }
        // New requests go straight from the endpoint to a task of their own; the channel
        // holds only what came before this.
        self.inner.ep.serve(&self.inner);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                r = self.requests.recv() => match r {
                    Some(req) => {
                        let inner = self.inner.clone();
                        tokio::spawn(async move { inner.handle(req).await });
                    }
                    None => break,
                },
                () = &mut shutdown => break,
            }
        }
        self.inner.ep.stop_serving();
        let _ = stop_admin.send(());
        tracing::info!("I-CSCF stopped");
    }
}

/// Starts the I-CSCF and serves until `shutdown`.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), IcscfError> {
    Icscf::start(cfg).await?.run_until(shutdown).await;
    Ok(())
}

/// What the UAA said.
enum Where {
    /// The S-CSCF the HSS named.
    Named(String),
    /// Choose by these capabilities.
    Choose(select::Wanted),
}

impl ims_net::endpoint::Handler for Inner {
    async fn handle(self: Arc<Self>, req: ServerRequest) {
        Inner::handle(&self, req).await
    }
}

impl Inner {
    async fn handle(&self, mut req: ServerRequest) {
        self.metrics.request(req.message.method());
        if !self.ep.admit(&mut req, "icscf").await {
            return;
        }
        match req.message.method() {
            Some(Method::Register) => self.register(req).await,
            Some(Method::Message | Method::Options | Method::Invite) => self.terminating(req).await,
            // A SUBSCRIBE that starts a dialog (e.g. a P-CSCF's reg event subscription sent,
            // as Kamailio's is, to the user's public identity without a Route).
            Some(Method::Subscribe) if req.message.to_addr().is_ok_and(|t| t.tag().is_none()) => {
                self.terminating(req).await
            }
            Some(Method::Ack) => {}
            _ => {
                tracing::info!(
                    method = req.message.method_str().unwrap_or("?"),
                    "I-CSCF routes only REGISTER, and INVITE, MESSAGE, OPTIONS and SUBSCRIBE out of a dialog"
                );
                self.reply(&req, 501, "Not Implemented").await
            }
        }
    }

    async fn reply(&self, req: &ServerRequest, code: u16, reason: &str) {
        self.ep.reply(req, code, reason, "icscf").await
    }

    /// Answers `req` with `r`, Retry-After included when `r` passes.
    async fn refuse(&self, req: &ServerRequest, r: Refusal) {
        if r.retry_later {
            return self
                .ep
                .reply_retry_later(req, r.code, r.reason, "icscf")
                .await;
        }
        self.reply(req, r.code, r.reason).await
    }

    async fn register(&self, req: ServerRequest) {
        let m = &req.message;
        let impu = match m.to_addr() {
            Ok(to) => to.uri_str.to_owned(),
            Err(_) => return self.reply(&req, 400, "Bad To").await,
        };
        let impi = m
            .auth(HeaderName::Authorization)
            .flatten()
            .find_map(|a| a.username().map(str::to_owned))
            .unwrap_or_else(|| derive_impi(&impu));
        let visited = m
            .visited_network_ids()
            .flatten()
            .next()
            .map_or_else(|| self.cfg.home_domain.clone(), str::to_owned);
        let dereg = is_deregistration(m);
        let kind = if dereg {
            UserAuthorizationType::DeRegistration
        } else {
            UserAuthorizationType::Registration
        };
        let span = tracing::info_span!("register", %impi, call_id = m.call_id().unwrap_or(""));
        // Instrumented, not entered: a guard held across an await leaks the span into
        // whatever else runs on the thread meanwhile.
        async {
            let mut tried: Vec<String> = Vec::new();
            let mut kind = kind;
            // The last final response of an S-CSCF that failed: passed back rather than one
            // of our own when none takes the REGISTER.
            let mut answered: Option<Message> = None;
            loop {
                let answer = match self.uar(&impi, &impu, &visited, kind).await {
                    Ok(w) => w,
                    Err(r) => return self.refuse(&req, r).await,
                };
                let candidates: Vec<String> = match answer {
                    Where::Named(s) => vec![s],
                    Where::Choose(wanted) => select::rank(&self.cfg.scscf, &wanted),
                };
                let candidates: Vec<String> = candidates
                    .into_iter()
                    .filter(|c| !tried.iter().any(|t| t.eq_ignore_ascii_case(c)))
                    .collect();
                if candidates.is_empty() {
                    if tried.is_empty() {
                        tracing::warn!(
                            "no configured S-CSCF has the capabilities the HSS asks for"
                        );
                        return self.reply(&req, 500, "No S-CSCF Available").await;
                    }
                    tracing::warn!(?tried, "every S-CSCF tried failed");
                    return self.pass_back_or_504(&req, answered).await;
                }
                let mut named_failed = false;
                let mut all_busy = true;
                for scscf in candidates {
                    tried.push(scscf.clone());
                    match self.forward(&req, &scscf, false).await {
                        Ok(resp) => return self.ep.respond(&req, resp).await,
                        Err(Failed::Busy) => {
                            tracing::debug!(%scscf, "S-CSCF answered 503; trying the next");
                            named_failed = true;
                        }
                        Err(Failed::Other(e, resp)) => {
                            tracing::warn!(%scscf, error = %e, "S-CSCF failed; trying the next");
                            named_failed = true;
                            all_busy = false;
                            answered = resp.or(answered);
                        }
                    }
                }
                // Overloaded (the S-CSCFs or the HSS behind them): refuse now, with
                // Retry-After, rather than asking the HSS again for another S-CSCF. Our own
                // 503, not theirs: RFC 3261 §16.7 forwards a 503 only from a proxy that can
                // serve nothing.
                if named_failed && all_busy {
                    return self
                        .reply(&req, 503, "Service Unavailable (S-CSCF overloaded)")
                        .await;
                }
                // The HSS's choice failed: ask for capabilities and choose another (TS 29.228
                // §6.1.1); a deregistration has nowhere else to go.
                if named_failed
                    && kind != UserAuthorizationType::RegistrationAndCapabilities
                    && !dereg
                {
                    kind = UserAuthorizationType::RegistrationAndCapabilities;
                    continue;
                }
                return self.pass_back_or_504(&req, answered).await;
            }
        }
        .instrument(span)
        .await
    }

    /// The end of a REGISTER no S-CSCF took: the last S-CSCF's own final response when one
    /// answered (its status and reason say why, e.g. a 500 naming its HSS's refusal), else
    /// `504` (they all stayed silent or could not be reached).
    async fn pass_back_or_504(&self, req: &ServerRequest, answered: Option<Message>) {
        match answered {
            Some(resp) => self.ep.respond(req, resp).await,
            None => self.reply(req, 504, "Server Time-out").await,
        }
    }

    async fn uar(
        &self,
        impi: &str,
        impu: &str,
        visited: &str,
        kind: UserAuthorizationType,
    ) -> Result<Where, Refusal> {
        let session = self.sessions.next_id();
        let uar = Uar {
            base: self.base(&session),
            user_name: impi,
            public_identity: impu,
            visited_network_identifier: visited.as_bytes(),
            authorization_type: Some(kind),
            uar_flags: None,
        };
        let mut buf = Vec::with_capacity(512);
        let encoded = uar.encode(&mut buf);
        let bytes = self.cx_request("UAR", buf, encoded).await?;
        let invalid = || self.metrics.cx("UAR", CxOutcome::Invalid);
        let msg = parse_answer(&bytes, "UAA").inspect_err(|_| invalid())?;
        let uaa = Uaa::decode(&msg).map_err(|e| {
            invalid();
            invalid_answer("UAA", &e)
        })?;
        let r = uaa.base.result;
        self.metrics.cx("UAR", CxOutcome::Answer(r));
        tracing::info!(result = r.code(), name = r.name().unwrap_or("?"), "UAA");
        match r {
            AnswerResult::Experimental {
                code: 2001..=2003, ..
            }
            | AnswerResult::ResultCode(2001) => Ok(where_of(
                uaa.server_name
                    .filter(|_| kind != UserAuthorizationType::RegistrationAndCapabilities),
                uaa.server_capabilities,
            )),
            AnswerResult::Experimental {
                code: 5001..=5004, ..
            }
            | AnswerResult::ResultCode(5003) => Err(Refusal::final_(403, "Forbidden")),
            AnswerResult::ResultCode(rc::TOO_BUSY) => Err(HSS_BUSY),
            AnswerResult::ResultCode(rc::REALM_NOT_SERVED) => {
                self.cfg
                    .diameter
                    .warn_realm_not_served("UAR", uaa.base.error_message);
                Err(REALM_NOT_SERVED)
            }
            _ => Err(CX_UNUSABLE),
        }
    }

    /// A terminating request (MESSAGE, OPTIONS, SUBSCRIBE): LIR, then the S-CSCF it names or one chosen
    /// by capabilities; see the module docs.
    async fn terminating(&self, mut req: ServerRequest) {
        if let Err(e) = self.pop_own_routes(&mut req.message) {
            tracing::info!(error = %e, "bad Route");
            return self.reply(&req, 400, "Bad Request (Route)").await;
        }
        let impu = match req.message.request_uri().ok().and_then(|u| u.identity()) {
            Some(i) => i,
            None => {
                return self
                    .reply(&req, 416, "Unsupported URI Scheme (neither sip: nor tel:)")
                    .await;
            }
        };
        let span = tracing::info_span!("lir", %impu, call_id = req.message.call_id().unwrap_or(""));
        async {
            let candidates = match self.lir(&impu).await {
                Ok(Where::Named(s)) => vec![s],
                Ok(Where::Choose(wanted)) => select::rank(&self.cfg.scscf, &wanted),
                Err(r) => return self.refuse(&req, r).await,
            };
            if candidates.is_empty() {
                tracing::warn!("no configured S-CSCF has the capabilities the HSS asks for");
                return self.reply(&req, 500, "No S-CSCF Available").await;
            }
            if req.message.method() == Some(Method::Invite) {
                // One INVITE branch to the first S-CSCF that resolves; the proxy core
                // passes every response back (and a 408 when it stays silent).
                for scscf in &candidates {
                    match self.branch_to(&req, scscf).await {
                        Ok(b) => {
                            ims_net::proxy::proxy_invite(&self.ep, &req, vec![b], "icscf").await;
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(%scscf, error = %e, "S-CSCF not reached; trying the next");
                        }
                    }
                }
                return self.reply(&req, 504, "Server Time-out").await;
            }
            for scscf in candidates {
                match self.forward(&req, &scscf, true).await {
                    Ok(resp) => return self.ep.respond(&req, resp).await,
                    Err(Failed::Busy) => {}
                    Err(Failed::Other(e, _)) => {
                        tracing::warn!(%scscf, error = %e, "S-CSCF not reached; trying the next");
                    }
                }
            }
            self.reply(&req, 504, "Server Time-out").await
        }
        .instrument(span)
        .await
    }

    /// Removes Route entries at the top that name this I-CSCF (our host or address and port).
    fn pop_own_routes(&self, m: &mut Message) -> Result<(), ims_sip::Error> {
        loop {
            let top = match m.name_addrs(HeaderName::Route).next() {
                Some(r) => r?.uri_str.to_owned(),
                None => return Ok(()),
            };
            let Ok(Uri::Sip(u)) = Uri::parse(&top) else {
                return Ok(());
            };
            let host = u.host_str.trim_start_matches('[').trim_end_matches(']');
            let local = self.ep.local_addr();
            let me = u.port.unwrap_or(5060) == local.port()
                && (host.eq_ignore_ascii_case(&self.cfg.via_host)
                    || host.parse::<std::net::IpAddr>().ok() == Some(local.ip()));
            if !me {
                return Ok(());
            }
            m.pop_first_value(HeaderName::Route)?;
        }
    }

    /// Sends the Cx request `what` (`buf`, as `encoded` says it was encoded) and returns the
    /// answer's bytes, its round trip observed; the SIP status when it could not be encoded
    /// (500) or got no answer (480: the HSS is unreachable).
    async fn cx_request<E: std::fmt::Display>(
        &self,
        what: &'static str,
        buf: Vec<u8>,
        encoded: Result<usize, E>,
    ) -> Result<Vec<u8>, Refusal> {
        if let Err(e) = encoded {
            tracing::warn!(error = %e, "cannot encode the {what}");
            return Err(Refusal::final_(500, "Server Internal Error"));
        }
        let sent = std::time::Instant::now();
        match self.cx.request(buf).await {
            Ok(b) => {
                self.metrics.cx_round_trip(what, sent.elapsed());
                Ok(b)
            }
            Err(e) => {
                self.metrics.cx(what, (&e).into());
                if matches!(e, ims_net::diameter::RequestError::NotOpen(_)) {
                    // The Diameter client has warned once, naming the HSS's address.
                    tracing::info!(error = %e, "{what} not sent: HSS unreachable");
                } else {
                    tracing::warn!(error = %e, "{what} got no answer: HSS unreachable");
                }
                Err(HSS_UNREACHABLE)
            }
        }
    }

    /// The header of our Cx requests (UAR, LIR) in session `session`.
    fn base<'a>(&'a self, session: &'a str) -> RequestBase<'a> {
        let d = &self.cfg.diameter;
        RequestBase {
            session_id: session,
            origin_host: &d.origin_host,
            origin_realm: &d.origin_realm,
            destination_realm: &d.destination_realm,
            destination_host: d.destination_host.as_deref(),
            ..RequestBase::default()
        }
    }

    async fn lir(&self, impu: &str) -> Result<Where, Refusal> {
        let session = self.sessions.next_id();
        let lir = Lir {
            base: self.base(&session),
            public_identity: impu,
            originating_request: None,
            authorization_type: None,
        };
        let mut buf = Vec::with_capacity(384);
        let encoded = lir.encode(&mut buf);
        let bytes = self.cx_request("LIR", buf, encoded).await?;
        let invalid = || self.metrics.cx("LIR", CxOutcome::Invalid);
        let msg = parse_answer(&bytes, "LIA").inspect_err(|_| invalid())?;
        let lia = Lia::decode(&msg).map_err(|e| {
            invalid();
            invalid_answer("LIA", &e)
        })?;
        let r = lia.base.result;
        self.metrics.cx("LIR", CxOutcome::Answer(r));
        tracing::info!(result = r.code(), name = r.name().unwrap_or("?"), "LIA");
        match r {
            AnswerResult::ResultCode(2001)
            | AnswerResult::Experimental {
                code: erc::UNREGISTERED_SERVICE,
                ..
            } => Ok(where_of(lia.server_name, lia.server_capabilities)),
            AnswerResult::Experimental {
                code: erc::ERROR_USER_UNKNOWN,
                ..
            } => Err(Refusal::final_(404, "Not Found")),
            AnswerResult::Experimental {
                code: erc::ERROR_IDENTITY_NOT_REGISTERED,
                ..
            } => Err(Refusal::final_(480, "Temporarily Unavailable")),
            AnswerResult::ResultCode(rc::TOO_BUSY) => Err(HSS_BUSY),
            AnswerResult::ResultCode(rc::REALM_NOT_SERVED) => {
                self.cfg
                    .diameter
                    .warn_realm_not_served("LIR", lia.base.error_message);
                Err(REALM_NOT_SERVED)
            }
            _ => Err(CX_UNUSABLE),
        }
    }

    /// Sends the request to `scscf` with a Route to it; `Err` when it should be given up on.
    /// A REGISTER's 408 and 5xx count as failures (another S-CSCF may serve it); with
    /// `any_response`, every response is the answer and only silence or a transport error is
    /// a failure (a terminating request may already have reached the callee).
    /// The INVITE toward `scscf` (its Route on top) and the first address it resolves to.
    async fn branch_to(
        &self,
        req: &ServerRequest,
        scscf: &str,
    ) -> Result<ims_net::proxy::ProxyBranch, String> {
        let (targets, route) = self.resolve_scscf(scscf).await?;
        let target = *targets.first().ok_or("no address")?;
        let mut message = req.message.clone();
        message
            .prepend_header("Route", &route)
            .map_err(|e| e.to_string())?;
        Ok(ims_net::proxy::ProxyBranch {
            message,
            target,
            local: None,
            flow: false,
            unheard: None,
        })
    }

    /// The addresses an S-CSCF URI resolves to (RFC 3263) and the Route entry naming it.
    async fn resolve_scscf(
        &self,
        scscf: &str,
    ) -> Result<(Vec<ims_net::dns::Target>, String), String> {
        let uri = Uri::parse(scscf).map_err(|e| format!("`{scscf}`: {e}"))?;
        let Uri::Sip(sip) = uri else {
            return Err(format!("`{scscf}` is not a SIP URI"));
        };
        let targets = self
            .resolver
            .resolve(&Destination::from_sip_uri(&sip))
            .await
            .map_err(|e| e.to_string())?;
        let route = if sip.lr() {
            format!("<{scscf}>")
        } else {
            format!("<{scscf};lr>")
        };
        Ok((targets, route))
    }

    async fn forward(
        &self,
        req: &ServerRequest,
        scscf: &str,
        any_response: bool,
    ) -> Result<Message, Failed> {
        let (targets, route) = self.resolve_scscf(scscf).await?;
        let mut last = String::from("no address");
        let mut busy = false;
        // Giving up early only helps when there is somewhere else to go: the only S-CSCF
        // (or its last address) is waited for as long as its transaction runs (Timer F), or
        // a slow answer would become our 504.
        let elsewhere = self
            .cfg
            .scscf
            .iter()
            .any(|e| !e.uri.eq_ignore_ascii_case(scscf));
        let count = targets.len();
        let mut failed: Option<Message> = None;
        for (i, target) in targets.into_iter().enumerate() {
            let mut fwd = req.message.clone();
            fwd.prepend_header("Route", &route)
                .map_err(|e| e.to_string())?;
            // The transaction runs to its end on its own task (its state is cleaned up
            // then, and a late answer absorbed); we wait for it only so long.
            let ep = self.ep.clone();
            let sent = tokio::spawn(async move { ep.send_request(fwd, target).await });
            let wait = if elsewhere || i + 1 < count {
                std::time::Duration::from_millis(self.cfg.scscf_timeout_ms)
            } else {
                // Timer F bounds the transaction itself.
                std::time::Duration::MAX
            };
            let answer = match tokio::time::timeout(wait, sent).await {
                Ok(Ok(r)) => r.map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(format!("the transaction task failed: {e}")),
                Err(_) => Err(format!(
                    "no answer from {} within {} ms",
                    target.addr, self.cfg.scscf_timeout_ms
                )),
            };
            match answer {
                Ok(mut resp) => {
                    let status = resp.status().unwrap_or(0);
                    if any_response {
                        pop_own_via(&mut resp).map_err(|e| Failed::Other(e.to_string(), None))?;
                        return Ok(resp);
                    }
                    if status == 503 {
                        busy = true;
                        continue;
                    }
                    if status == 408 || (500..600).contains(&status) {
                        last = format!("answered {status}");
                        pop_own_via(&mut resp).map_err(|e| Failed::Other(e.to_string(), None))?;
                        failed = Some(resp);
                        continue;
                    }
                    pop_own_via(&mut resp).map_err(|e| Failed::Other(e.to_string(), None))?;
                    return Ok(resp);
                }
                Err(e) => last = e,
            }
        }
        Err(if busy {
            Failed::Busy
        } else {
            Failed::Other(last, failed)
        })
    }
}

/// Why an S-CSCF did not take a REGISTER.
enum Failed {
    /// It answered 503 (overloaded, or its HSS too busy or unreachable): refused, not
    /// broken.
    Busy,
    /// It failed otherwise (no answer, an error); the reason, and its last final response
    /// (Via popped), if it gave one.
    Other(String, Option<Message>),
}

impl From<String> for Failed {
    fn from(why: String) -> Self {
        Failed::Other(why, None)
    }
}

/// The S-CSCF a UAA or LIA names, or the capabilities to choose one by.
fn where_of(server_name: Option<&str>, caps: Option<ServerCapabilities<'_>>) -> Where {
    match server_name {
        Some(name) => Where::Named(name.to_owned()),
        None => {
            let caps = caps.unwrap_or_default();
            Where::Choose(select::Wanted {
                mandatory: caps.mandatory,
                optional: caps.optional,
                preferred: caps.server_names.iter().map(|s| (*s).to_owned()).collect(),
            })
        }
    }
}

/// A Cx answer (`what`: "UAA", "LIA") parsed; 480 when it does not parse.
fn parse_answer<'a>(bytes: &'a [u8], what: &str) -> Result<ims_diameter::Message<'a>, Refusal> {
    ims_diameter::Message::parse(bytes).map_err(|e| {
        tracing::warn!(error = %e, "{what} does not parse");
        CX_UNUSABLE
    })
}

/// The refusal for a Cx answer (`what`) that parses but is not a valid one: 480.
fn invalid_answer(what: &str, e: &ims_diameter::Error) -> Refusal {
    tracing::warn!(error = %e, "{what} is not valid");
    CX_UNUSABLE
}

/// TS 24.229 §5.1.1.2: without an IMPI, the IMPU minus its scheme.
fn derive_impi(impu: &str) -> String {
    impu.strip_prefix("sip:")
        .or_else(|| impu.strip_prefix("sips:"))
        .unwrap_or(impu)
        .to_owned()
}

/// Expires 0 for every binding (the header, or each Contact's `expires`), or `Contact: *`.
pub fn is_deregistration(m: &Message) -> bool {
    let header = m.expires().and_then(Result::ok);
    let contacts: Vec<_> = m.contacts().flatten().collect();
    if contacts.is_empty() {
        return false;
    }
    contacts.iter().all(|c| match c.addr() {
        None => header == Some(0),
        Some(a) => match a.expires().and_then(Result::ok) {
            Some(e) => e == 0,
            None => header == Some(0),
        },
    })
}

/// Requests that reach the I-CSCF over Cx. None is meant for it (the HSS sends RTR and PPR to
/// S-CSCFs), but a Diameter relay may route one here (e.g. a MAR or UAR, when its routes
/// make the I-CSCF as good a candidate as the HSS): each is answered 3001
/// DIAMETER_COMMAND_UNSUPPORTED (RFC 6733 §7.1.3, §6.2), so that its sender learns at once
/// rather than waiting out its timeout. Holds the I-CSCF weakly: the loop ends with it.
async fn cx_requests_loop(
    inner: std::sync::Weak<Inner>,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
) {
    while let Some(bytes) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let d = &inner.cfg.diameter;
        let answer = command_unsupported(&bytes, &d.origin_host, &d.origin_realm);
        if !answer.is_empty() {
            inner.cx.answer(answer).await;
        }
    }
}

/// The answer to a Cx request the I-CSCF does not serve: 3001 with the E bit, the request's
/// ids and Session-Id, our Origin-Host and Origin-Realm ([`ims_net::diameter::refusal`]).
/// Empty for bytes that are no request.
fn command_unsupported(bytes: &[u8], host: &str, realm: &str) -> Vec<u8> {
    let msg = match ims_diameter::Message::parse(bytes) {
        Ok(m) if m.is_request() => m,
        Ok(_) => return Vec::new(),
        Err(_) => {
            tracing::warn!("unparsable Diameter request dropped");
            return Vec::new();
        }
    };
    let code = msg.command_code();
    tracing::warn!(
        command = code,
        "Diameter request for a command the I-CSCF does not serve: 3001"
    );
    let e = ims_diameter::Error::CommandUnsupported {
        code,
        request: true,
    };
    ims_net::diameter::refusal(&msg, &e, host, realm)
}

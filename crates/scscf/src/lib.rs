//! The S-CSCF of the IMS core (TS 24.229 §5.4): its registrar and the `reg` event package.
//!
//! - [`registrar`]: [`Registrar::handle_register`] turns a REGISTER into its final response
//!   (Digest-AKAv1-MD5 and SIP Digest over Cx MAR/SAR, bindings, Path / Service-Route /
//!   P-Associated-URI, deregistration, expiry, RTR and PPR from the HSS, registration events).
//!   It knows nothing of sockets or transactions.
//! - [`regevent`]: [`RegEvents`], the `reg` event package (RFC 3680, TS 24.229 §5.4.2.1):
//!   SUBSCRIBE from the UE or its P-CSCF, and the NOTIFYs of every registration change, sent
//!   over the transaction layer.
//! - [`cx`]: MAR and SAR to the HSS over `ims_net`'s Diameter client, and how each Cx outcome
//!   maps to a SIP status.
//! - [`userdata`]: the TS 29.228 IMSSubscription User-Data, read just far enough for the
//!   implicit registration set.
//! - [`config`]: the serde [`Config`].
//! - [`Scscf`] / [`run`]: the daemon: a [`Registrar`] and its [`RegEvents`] behind `ims_net`'s
//!   transaction layer ([`SipEndpoint`]: retransmissions absorbed and answered again,
//!   responses routed by Via with `received`/`rport`), one task per request ([`answer`]).
//!   REGISTER and SUBSCRIBE are served; INVITE, MESSAGE and OPTIONS are routed
//!   ([`session`]: originating toward the callee's home I-CSCF, terminating to the callee's
//!   registered contacts through their Path, INVITE record-routed and forked with CANCEL),
//!   and so are the requests of the dialogs we record-routed; other methods get 501.
//! - [`session`]: session routing (TS 24.229 §5.4.3) as a plan made from the registrar's
//!   memory, carried out over the endpoint.
//! - [`admin`]: the admin HTTP API (`admin_listen`): the registrations held, with their
//!   contacts, expiry and P-CSCF, and the Prometheus [`metrics`].
//!
//! Dependencies beyond the workspace's own crates: `ring` (the system CSPRNG for digest nonces
//! and To tags), `hex`, `zeroize` (CK/IK hex wiped after use), `axum` and `serde_json` (the
//! admin API, as the HSS's).

pub mod admin;
pub mod config;
pub mod cx;
pub mod metrics;
pub mod regevent;
pub mod registrar;
mod reply;
pub mod session;
pub mod userdata;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use ims_net::dns::SipResolver;
use ims_net::endpoint::{ServerRequest, SipEndpoint};
use ims_sip::transaction::Timers;
use ims_sip::{Message, Method};

pub use config::Config;
pub use regevent::{NotifyStart, RegEvents};
pub use registrar::{FailureCause, RegEvent, RegEventKind, Registrar, StartError};

/// Why the S-CSCF stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScscfError {
    /// The registrar could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The SIP address could not be bound.
    #[error("cannot listen for SIP on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The admin address could not be bound.
    #[error("cannot listen for the admin API on {addr}: {source}")]
    AdminBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The DNS resolver could not be set up.
    #[error("DNS resolver: {0}")]
    Resolver(#[from] ims_net::dns::ResolveError),
}

/// The S-CSCF daemon, started and bound: its registrar, its `reg` event notifier and its SIP
/// endpoint. [`Scscf::run`] serves requests until told to stop.
pub struct Scscf {
    registrar: Registrar,
    reg_events: RegEvents,
    ep: SipEndpoint,
    resolver: Arc<SipResolver>,
    incoming: tokio::sync::mpsc::Receiver<ServerRequest>,
    admin: Option<tokio::net::TcpListener>,
}

impl Scscf {
    /// Starts the registrar (store, HSS connection), binds SIP on `cfg.sip_listen` (port 0
    /// picks one: see [`Scscf::local_addr`]) and starts the `reg` event notifier.
    pub async fn start(cfg: Config) -> Result<Scscf, ScscfError> {
        let registrar = Registrar::start(cfg.clone()).await?;
        let via_host = ims_sip::SipUri::parse(&cfg.name)
            .map(|u| u.host_str.to_owned())
            .unwrap_or_else(|_| cfg.sip_listen.ip().to_string());
        let (ep, incoming) = SipEndpoint::bind(cfg.sip_listen, &via_host, Timers::RFC3261)
            .await
            .map_err(|source| ScscfError::Bind {
                addr: cfg.sip_listen,
                source,
            })?;
        let resolver = Arc::new(SipResolver::new(&cfg.dns)?);
        // The reg event NOTIFYs resolve a subscriber's host name through `dns` when it is set.
        let reg_events = RegEvents::start_resolving(
            registrar.clone(),
            ep.clone(),
            (!cfg.dns.is_empty()).then(|| resolver.clone()),
        );
        let admin = match cfg.admin_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ScscfError::AdminBind { addr, source })?,
            ),
            None => None,
        };
        tracing::info!(
            sip = %ep.local_addr(),
            admin = ?admin.as_ref().and_then(|a| a.local_addr().ok()),
            name = %cfg.name,
            "S-CSCF running"
        );
        Ok(Scscf {
            registrar,
            reg_events,
            ep,
            resolver,
            incoming,
            admin,
        })
    }

    /// The admin API's address, when `admin_listen` is set (port 0 picks one).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The SIP address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.ep.local_addr()
    }

    /// The registrar.
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// The `reg` event notifier.
    pub fn reg_events(&self) -> &RegEvents {
        &self.reg_events
    }

    /// Serves requests until `shutdown` resolves (or the endpoint stops).
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(listener) = self.admin.take() {
            let app = admin::router(self.registrar.clone(), self.ep.clone());
            tokio::spawn(async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = admin_stopped.await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "S-CSCF admin API stopped");
                }
            });
        }
        // New requests go straight from the endpoint to a task of their own; the channel
        // holds only what came before this.
        // (Kept here: the endpoint holds it weakly, so requests stop when this returns.)
        let served = Arc::new(Served {
            registrar: self.registrar.clone(),
            reg_events: self.reg_events.clone(),
            ep: self.ep.clone(),
            resolver: self.resolver.clone(),
        });
        self.ep.serve(&served);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                msg = self.incoming.recv() => match msg {
                    Some(req) => {
                        tokio::spawn(serve(
                            self.registrar.clone(),
                            self.reg_events.clone(),
                            self.ep.clone(),
                            self.resolver.clone(),
                            req,
                        ));
                    }
                    None => break,
                },
            }
        }
        self.ep.stop_serving();
        let _ = stop_admin.send(());
        tracing::info!("S-CSCF stopped");
    }
}

/// What each request is served with ([`serve`]), as the endpoint's handler.
struct Served {
    registrar: Registrar,
    reg_events: RegEvents,
    ep: SipEndpoint,
    resolver: Arc<SipResolver>,
}

impl ims_net::endpoint::Handler for Served {
    fn handle(self: Arc<Self>, req: ServerRequest) -> impl Future<Output = ()> + Send + 'static {
        serve(
            self.registrar.clone(),
            self.reg_events.clone(),
            self.ep.clone(),
            self.resolver.clone(),
            req,
        )
    }
}

/// Runs the S-CSCF from `cfg` until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ScscfError> {
    Scscf::start(cfg).await?.run(shutdown).await;
    Ok(())
}

/// One received message: the response to send, if any. A SUBSCRIBE's first NOTIFY is
/// started at once (the daemon itself starts it only once the 200 is sent).
pub async fn answer(
    registrar: &Registrar,
    reg_events: &RegEvents,
    req: &Message,
) -> Option<Message> {
    let (resp, start) = dispatch(registrar, reg_events, req).await;
    if let Some(s) = start {
        reg_events.start_notifying(s);
    }
    resp
}

async fn dispatch(
    registrar: &Registrar,
    reg_events: &RegEvents,
    req: &Message,
) -> (Option<Message>, Option<NotifyStart>) {
    if !req.is_request() {
        tracing::debug!("response matching none of our transactions dropped");
        return (None, None);
    }
    if let Err(e) = req.check_request() {
        tracing::info!(error = %e, "malformed request: 400");
        return (simple(req, e.status(), &e.reason()), None);
    }
    if let Some(Ok(0)) = req.max_forwards() {
        return (simple(req, 483, "Too Many Hops"), None);
    }
    match req.method() {
        Some(Method::Register) => (Some(registrar.handle_register(req).await), None),
        Some(Method::Subscribe) => {
            let (resp, start) = reg_events.handle_subscribe(req);
            (Some(resp), start)
        }
        Some(Method::Ack) => (None, None),
        _ => {
            tracing::info!(
                method = req.method_str().unwrap_or("?"),
                "method not implemented by this S-CSCF yet: 501"
            );
            (simple(req, 501, "Not Implemented"), None)
        }
    }
}

fn simple(req: &Message, status: u16, reason: &str) -> Option<Message> {
    match ims_sip::error_response(req, status, reason, Some("scscf")) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::info!(error = %e, status, "request too broken to answer: dropped");
            None
        }
    }
}

async fn serve(
    registrar: Registrar,
    reg_events: RegEvents,
    ep: SipEndpoint,
    resolver: Arc<SipResolver>,
    mut req: ServerRequest,
) {
    if req.message.is_request() && session::is_routed(req.message.method()) {
        if ep.admit(&mut req, "scscf").await {
            session::route(&registrar, &ep, &resolver, req).await;
        }
        return;
    }
    let (resp, start) = dispatch(&registrar, &reg_events, &req.message).await;
    if let Some(resp) = resp {
        ep.respond(&req, resp).await;
    }
    // The first NOTIFY after the 200 (RFC 6665 lets it overtake the 200; we do not need to).
    if let Some(s) = start {
        reg_events.start_notifying(s);
    }
}

//! The S-CSCF of the IMS core (TS 24.229 §5.4): today its registrar.
//!
//! - [`registrar`]: [`Registrar::handle_register`] turns a REGISTER into its final response
//!   (Digest-AKAv1-MD5 and SIP Digest over Cx MAR/SAR, bindings, Path / Service-Route /
//!   P-Associated-URI, deregistration, expiry, RTR and PPR from the HSS, registration events).
//!   It knows nothing of sockets or transactions.
//! - [`cx`]: MAR and SAR to the HSS over `ims_net`'s Diameter client, and how each Cx outcome
//!   maps to a SIP status.
//! - [`userdata`]: the TS 29.228 IMSSubscription User-Data, read just far enough for the
//!   implicit registration set.
//! - [`config`]: the serde [`Config`].
//! - [`run`]: the daemon: a [`Registrar`] behind `ims_net`'s transaction layer
//!   ([`SipEndpoint`]: retransmissions absorbed and answered again, responses routed by Via
//!   with `received`/`rport`), one task per request. Methods other than REGISTER are answered
//!   501 for now.
//!
//! Dependencies beyond the workspace's own crates: `ring` (the system CSPRNG for digest nonces
//! and To tags), `hex`, `zeroize` (CK/IK hex wiped after use).

pub mod config;
pub mod cx;
pub mod registrar;
mod reply;
pub mod userdata;

use std::future::Future;

use ims_net::endpoint::{ServerRequest, SipEndpoint};
use ims_sip::transaction::Timers;
use ims_sip::{Message, Method};

pub use config::Config;
pub use registrar::{RegEvent, RegEventKind, Registrar, StartError};

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
}

/// Runs the S-CSCF from `cfg` until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ScscfError> {
    let registrar = Registrar::start(cfg.clone()).await?;
    let via_host = ims_sip::SipUri::parse(&cfg.name)
        .map(|u| u.host_str.to_owned())
        .unwrap_or_else(|_| cfg.sip_listen.ip().to_string());
    let (ep, mut incoming) = SipEndpoint::bind(cfg.sip_listen, &via_host, Timers::RFC3261)
        .await
        .map_err(|source| ScscfError::Bind {
            addr: cfg.sip_listen,
            source,
        })?;
    tracing::info!(sip = %ep.local_addr(), name = %cfg.name, "S-CSCF running");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            msg = incoming.recv() => match msg {
                Some(req) => {
                    tokio::spawn(serve(registrar.clone(), ep.clone(), req));
                }
                None => break,
            },
        }
    }
    tracing::info!("S-CSCF stopped");
    Ok(())
}

/// One received message: the response to send, if any.
pub async fn answer(registrar: &Registrar, req: &Message) -> Option<Message> {
    if !req.is_request() {
        tracing::debug!("response dropped: the S-CSCF sends no requests yet");
        return None;
    }
    if let Err(e) = req.check_request() {
        tracing::info!(error = %e, "malformed request: 400");
        return simple(req, e.status(), &e.reason());
    }
    if let Some(Ok(0)) = req.max_forwards() {
        return simple(req, 483, "Too Many Hops");
    }
    match req.method() {
        Some(Method::Register) => Some(registrar.handle_register(req).await),
        Some(Method::Ack) => None,
        _ => {
            tracing::info!(
                method = req.method_str().unwrap_or("?"),
                "method not implemented by this S-CSCF yet: 501"
            );
            simple(req, 501, "Not Implemented")
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

async fn serve(registrar: Registrar, ep: SipEndpoint, req: ServerRequest) {
    if let Some(resp) = answer(&registrar, &req.message).await {
        ep.respond(&req, resp).await;
    }
}

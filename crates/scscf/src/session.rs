//! Session routing at the S-CSCF (TS 24.229 §5.4.3) for requests that are neither a
//! registration nor a `reg` event subscription: INVITE, MESSAGE (RFC 3428, pager mode) and
//! OPTIONS outside a dialog, and the requests inside a dialog we record-routed (ACK, BYE,
//! re-INVITE, UPDATE, PRACK, INFO, MESSAGE, REFER, NOTIFY).
//!
//! [`plan`] decides, from the request and the registrar's memory alone (no I/O, so it is
//! tested without sockets); [`route`] carries the plan out over the endpoint.
//!
//! - **Originating** (§5.4.3.2): the top Route is ours with the user part `orig` (the
//!   Service-Route the registrar hands out, which the P-CSCF puts on the UE's requests). The
//!   served user is the first P-Asserted-Identity; it must be registered here, else `403`,
//!   and the request must come from that user's P-CSCF (an address the first entry of the
//!   user's Path resolves to), else `403`: the identity is believed from there only.
//!   With more Route entries the request follows them (loose routing); otherwise a sip: or
//!   sips: Request-URI in one of our home domains, or a tel: URI (our users' numbers live in
//!   the HSS), goes to the home I-CSCF (the configured `icscf`, else RFC 3263 on the
//!   Request-URI's domain, or on our first home domain for a tel: URI), which asks the HSS
//!   where the callee is (LIR). Anything else is `404`: this core has no breakout to other
//!   networks or the PSTN.
//! - **Terminating** (§5.4.3.3): any other request for us (the I-CSCF's Route, or none). The
//!   Request-URI without its parameters is the callee's public identity. Registered here: one
//!   branch per live binding, each with the contact as Request-URI and the binding's Path as
//!   Route (so the UE's P-CSCF delivers it through the UE's flow), sent in parallel; the
//!   first 2xx is the answer, else the best final response (RFC 3261 §16.7: a 6xx, else the
//!   lowest class). Not registered here: SAR UNREGISTERED_USER (the HSS then keeps us as the
//!   user's S-CSCF for the unregistered state), then `480 Temporarily Unavailable`; a user the
//!   HSS does not know is `404`.
//!
//! - **Inside a dialog** (a To tag): our own Route entries (the Record-Route we put in the
//!   dialog) are removed and the request follows the rest of the route set, else its
//!   Request-URI (the remote target): no identity check, the dialog was checked when it was
//!   made.
//!
//! A dialog-creating INVITE gets our `Record-Route` on both passes (originating and
//! terminating), so the dialog's requests come back through us (§5.4.3.2 item 10, §5.4.3.3
//! item 9); MESSAGE and OPTIONS create no dialog and get none. INVITE goes through the
//! stateful proxy core ([`ims_net::proxy`]: forking with CANCEL, the best answer); the ACK
//! of a 2xx is forwarded statelessly.
//!
//! Max-Forwards and loops are checked first ([`SipEndpoint::admit`]); the Route set is part
//! of the loop hash, so the second pass of a request (originating, then terminating at the
//! same S-CSCF) is a spiral, not a loop.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ims_diameter::AnswerResult;
use ims_diameter::dict::experimental_result_code as erc;
use ims_net::dns::{Destination, SipResolver, Target};
use ims_net::endpoint::{ClientError, ServerRequest, SipEndpoint, pop_own_via};
use ims_net::proxy::{ProxyBranch, not_our_503, proxy_invite, rank};
use ims_sip::{HeaderName, Message, Method, Uri};

use crate::config::Config;
use crate::cx::CxFailure;
use crate::registrar::Registrar;

/// The methods routed here (REGISTER and SUBSCRIBE are the registrar's).
pub fn is_routed(method: Option<Method>) -> bool {
    matches!(
        method,
        Some(
            Method::Invite
                | Method::Ack
                | Method::Bye
                | Method::Message
                | Method::Options
                | Method::Update
                | Method::Prack
                | Method::Info
                | Method::Refer
                | Method::Notify
        )
    )
}

/// One request to send: the message and the URI whose RFC 3263 targets it goes to.
#[derive(Debug)]
pub struct Branch {
    /// The request as it leaves (Route, Request-URI set; our Via is added when it is sent).
    pub message: Message,
    /// Where it goes: the first Route, or the Request-URI when there is no Route.
    pub next_hop: String,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Plan {
    /// Answer it with this status and reason.
    Refuse(u16, String),
    /// Originating: forward it toward the callee.
    Forward(Branch),
    /// Terminating: one branch per registered contact of the callee.
    Fork(Vec<Branch>),
    /// Terminating for a public identity not registered here: SAR UNREGISTERED_USER, then
    /// 480 (404 when the HSS does not know it).
    Unregistered(String),
}

/// Whether a Route URI names this S-CSCF (our name's host and port, or our listening
/// address), and whether it carries the `orig` user part.
fn ours(cfg: &Config, uri: &str) -> Option<bool> {
    let Ok(Uri::Sip(u)) = Uri::parse(uri) else {
        return None;
    };
    let port = u.port.unwrap_or(5060);
    let named = ims_sip::SipUri::parse(&cfg.name).ok()?;
    let host = u.host_str.trim_start_matches('[').trim_end_matches(']');
    let me = (host.eq_ignore_ascii_case(named.host_str) && port == named.port.unwrap_or(5060))
        || (host.parse::<std::net::IpAddr>().ok() == Some(cfg.sip_listen.ip())
            && port == cfg.sip_listen.port());
    me.then_some(u.user == Some("orig"))
}

/// Removes the Route entries at the top that name us; `Some(orig)` when there was one.
fn pop_own_routes(cfg: &Config, m: &mut Message) -> Result<Option<bool>, ims_sip::Error> {
    let mut seen: Option<bool> = None;
    loop {
        let top = match m.name_addrs(HeaderName::Route).next() {
            Some(r) => r?.uri_str.to_owned(),
            None => return Ok(seen),
        };
        match ours(cfg, &top) {
            Some(orig) => {
                m.pop_first_value(HeaderName::Route)?;
                seen = Some(seen.unwrap_or(false) || orig);
            }
            None => return Ok(seen),
        }
    }
}

/// The first Route's URI, if any.
fn first_route(m: &Message) -> Result<Option<String>, ims_sip::Error> {
    match m.name_addrs(HeaderName::Route).next() {
        Some(r) => Ok(Some(r?.uri_str.to_owned())),
        None => Ok(None),
    }
}

/// Decides what happens to `req` (one of the [`is_routed`] methods; Max-Forwards already
/// checked).
pub fn plan(req: &Message, registrar: &Registrar) -> Plan {
    match plan_inner(req, registrar) {
        Ok(p) => p,
        Err(e) => Plan::Refuse(e.status(), e.reason()),
    }
}

fn plan_inner(req: &Message, registrar: &Registrar) -> Result<Plan, ims_sip::Error> {
    let cfg = registrar.config();
    let mut m = req.clone();
    let orig = pop_own_routes(cfg, &mut m)? == Some(true);
    if m.to_addr()?.tag().is_some() {
        let next_hop = match first_route(&m)? {
            Some(r) => r,
            None => m.request_uri_str().unwrap_or_default().to_owned(),
        };
        return Ok(Plan::Forward(Branch {
            message: m,
            next_hop,
        }));
    }
    let method = m.method();
    if matches!(
        method,
        Some(
            Method::Ack
                | Method::Notify
                | Method::Bye
                | Method::Update
                | Method::Prack
                | Method::Info
        )
    ) {
        // Requests that only exist inside a dialog, outside one: an ACK for a failure we
        // answered (the endpoint absorbed it), a BYE of a call that never was, ...
        return Ok(Plan::Refuse(
            481,
            "Call/Transaction Does Not Exist (outside any dialog)".into(),
        ));
    }
    let plan = if orig {
        originating(cfg, registrar, m)?
    } else {
        terminating(registrar, m)?
    };
    if method == Some(Method::Invite) {
        return record_route(cfg, plan);
    }
    Ok(plan)
}

/// Our Record-Route entry on each branch of a dialog-creating request.
fn record_route(cfg: &Config, plan: Plan) -> Result<Plan, ims_sip::Error> {
    let rr = match ims_sip::SipUri::parse(&cfg.name) {
        Ok(u) => format!("<sip:{};lr>", u.host_port_str()),
        Err(_) => format!("<sip:{};lr>", cfg.sip_listen),
    };
    let add = |mut b: Branch| -> Result<Branch, ims_sip::Error> {
        b.message.prepend_header("Record-Route", &rr)?;
        Ok(b)
    };
    Ok(match plan {
        Plan::Forward(b) => Plan::Forward(add(b)?),
        Plan::Fork(bs) => Plan::Fork(bs.into_iter().map(add).collect::<Result<_, _>>()?),
        p => p,
    })
}

fn originating(cfg: &Config, registrar: &Registrar, m: Message) -> Result<Plan, ims_sip::Error> {
    let served = match m.name_addrs(HeaderName::PAssertedIdentity).next() {
        Some(a) => a?.uri_str.to_owned(),
        None => {
            tracing::info!("originating request without P-Asserted-Identity: 403");
            return Ok(Plan::Refuse(
                403,
                "Forbidden (no P-Asserted-Identity)".into(),
            ));
        }
    };
    if registrar.registration(&served).is_none() {
        tracing::info!(%served, "originating request for a user not registered here: 403");
        return Ok(Plan::Refuse(
            403,
            "Forbidden (the asserted identity is not registered here)".into(),
        ));
    }
    if let Some(next_hop) = first_route(&m)? {
        return Ok(Plan::Forward(Branch {
            message: m,
            next_hop,
        }));
    }
    let home = match m.request_uri()? {
        Uri::Sip(u) => cfg
            .domains()
            .iter()
            .any(|d| d.eq_ignore_ascii_case(u.host_str))
            .then(|| format!("sip:{}", u.host_port_str())),
        Uri::Tel(_) => cfg.domains().first().map(|d| format!("sip:{d}")),
        _ => None,
    };
    let Some(home) = home else {
        tracing::info!(
            ruri = m.request_uri_str().unwrap_or(""),
            %served,
            "originating request outside the home network: 404 (no breakout)"
        );
        return Ok(Plan::Refuse(
            404,
            "Not Found (no route outside the home network)".into(),
        ));
    };
    let next_hop = cfg.icscf.clone().unwrap_or(home);
    Ok(Plan::Forward(Branch {
        message: m,
        next_hop,
    }))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn terminating(registrar: &Registrar, m: Message) -> Result<Plan, ims_sip::Error> {
    let impu = match m.request_uri()?.identity() {
        Some(i) => i,
        None => {
            return Ok(Plan::Refuse(
                416,
                "Unsupported URI Scheme (neither sip: nor tel:)".into(),
            ));
        }
    };
    let Some(reg) = registrar.registration(&impu) else {
        return Ok(Plan::Unregistered(impu));
    };
    let now = now_ms();
    let mut branches = Vec::new();
    for b in reg.bindings.iter().filter(|b| b.expires_at > now) {
        let mut fwd = m.clone();
        fwd.set_request_uri(&b.contact_uri)?;
        for p in b.path.iter().rev() {
            fwd.prepend_header("Route", p)?;
        }
        let next_hop = match first_route(&fwd)? {
            Some(r) => r,
            None => b.contact_uri.clone(),
        };
        branches.push(Branch {
            message: fwd,
            next_hop,
        });
    }
    if branches.is_empty() {
        return Ok(Plan::Unregistered(impu));
    }
    Ok(Plan::Fork(branches))
}

/// Carries out [`plan`] for `req` and answers it.
pub async fn route(
    registrar: &Registrar,
    ep: &SipEndpoint,
    resolver: &Arc<SipResolver>,
    req: ServerRequest,
) {
    if !from_served_users_pcscf(registrar, resolver, &req).await {
        return ep
            .reply(
                &req,
                403,
                "Forbidden (not from the served user's P-CSCF)",
                "scscf",
            )
            .await;
    }
    let invite = req.message.method() == Some(Method::Invite);
    let ack = req.message.method() == Some(Method::Ack);
    let outcome = match plan(&req.message, registrar) {
        Plan::Refuse(_, _) if ack => return,
        Plan::Forward(b) if ack => {
            // The ACK of a 2xx: end to end, no transaction, no answer.
            if let Ok(target) = resolve(resolver, &b.next_hop).await
                && let Err(e) = ep.forward_stateless(b.message, target).await
            {
                tracing::info!(error = %e, "ACK not forwarded");
            }
            return;
        }
        Plan::Forward(b) if invite => return proxy(ep, resolver, &req, vec![b]).await,
        Plan::Fork(bs) if invite => return proxy(ep, resolver, &req, bs).await,
        Plan::Refuse(code, reason) => Err((code, reason)),
        Plan::Forward(b) => send(ep.clone(), resolver.clone(), b).await,
        Plan::Fork(branches) => fork(ep, resolver, branches).await,
        Plan::Unregistered(impu) => Err(unregistered(registrar, &impu).await),
    };
    match outcome {
        Ok(resp) => ep.respond(&req, resp).await,
        Err((code, reason)) => ep.reply(&req, code, &reason, "scscf").await,
    }
}

/// Whether an originating request (our `orig` Route, outside a dialog) comes from the served
/// user's P-CSCF: an address that the first Path entry of one of the user's bindings
/// resolves to (or the contact's own host for a binding registered without Path). The
/// P-Asserted-Identity is only believed from there (TS 24.229 §5.4.3.2 and its trust
/// domain): anyone else could name any of our users. Other requests, and originating ones
/// whose user is not registered here (which [`plan`] refuses), pass.
async fn from_served_users_pcscf(
    registrar: &Registrar,
    resolver: &SipResolver,
    req: &ServerRequest,
) -> bool {
    let m = &req.message;
    let orig = first_route(m)
        .ok()
        .flatten()
        .and_then(|r| ours(registrar.config(), &r))
        == Some(true);
    if !orig || m.to_addr().is_ok_and(|t| t.tag().is_some()) {
        return true;
    }
    let Some(served) = m
        .name_addrs(HeaderName::PAssertedIdentity)
        .next()
        .and_then(Result::ok)
        .map(|a| a.uri_str.to_owned())
    else {
        return true;
    };
    let Some(reg) = registrar.registration(&served) else {
        return true;
    };
    let source = req.source.ip();
    for b in &reg.bindings {
        let hop = b
            .path
            .first()
            .map(|p| {
                let p = p.trim().trim_start_matches('<');
                p.split('>').next().unwrap_or(p).to_owned()
            })
            .unwrap_or_else(|| b.contact_uri.clone());
        let Ok(Uri::Sip(sip)) = Uri::parse(&hop) else {
            continue;
        };
        if let Ok(targets) = resolver.resolve(&Destination::from_sip_uri(&sip)).await
            && targets.iter().any(|t| t.addr.ip() == source)
        {
            return true;
        }
    }
    tracing::warn!(%served, source = %req.source,
        "originating request from an address that is none of the served user's P-CSCFs: 403");
    false
}

/// An INVITE's branches, resolved, through the stateful proxy core.
async fn proxy(
    ep: &SipEndpoint,
    resolver: &Arc<SipResolver>,
    req: &ServerRequest,
    branches: Vec<Branch>,
) {
    let mut out = Vec::with_capacity(branches.len());
    let mut refusal = None;
    for b in branches {
        match resolve(resolver, &b.next_hop).await {
            Ok(target) => out.push(ProxyBranch {
                message: b.message,
                target,
                local: None,
                flow: false,
                unheard: None,
            }),
            Err(e) => refusal = Some(e),
        }
    }
    if out.is_empty() {
        let (code, reason) = refusal.unwrap_or((480, "Temporarily Unavailable".into()));
        return ep.reply(req, code, &reason, "scscf").await;
    }
    proxy_invite(ep, req, out, "scscf").await;
}

/// SAR UNREGISTERED_USER for a callee not registered here; the status to answer.
async fn unregistered(registrar: &Registrar, impu: &str) -> (u16, String) {
    match registrar.sar_unregistered(impu).await {
        Ok(()) => {
            tracing::info!(%impu, "callee not registered: 480");
            (480, "Temporarily Unavailable".into())
        }
        Err(CxFailure::Refused {
            result: AnswerResult::Experimental { code, .. },
            ..
        }) if code == erc::ERROR_USER_UNKNOWN => {
            tracing::info!(%impu, "callee unknown to the HSS: 404");
            (404, "Not Found".into())
        }
        Err(e) => {
            let (code, reason) = e.sip_status();
            if code == 403 {
                // Not registered and nothing to serve it with (5003), or barred.
                tracing::info!(%impu, error = %e, "callee not reachable: 480");
                return (480, "Temporarily Unavailable".into());
            }
            tracing::warn!(%impu, error = %e, "SAR for an unregistered callee failed");
            (code, reason)
        }
    }
}

/// The first RFC 3263 target of `uri`.
async fn resolve(resolver: &SipResolver, uri: &str) -> Result<Target, (u16, String)> {
    let bad = || {
        (
            500,
            format!("Server Internal Error (next hop {uri} is no SIP URI)"),
        )
    };
    let Uri::Sip(sip) = Uri::parse(uri).map_err(|_| bad())? else {
        return Err(bad());
    };
    match resolver.resolve(&Destination::from_sip_uri(&sip)).await {
        Ok(t) if !t.is_empty() => Ok(t[0]),
        Ok(_) => {
            tracing::warn!(%uri, "the next hop has no address");
            Err((404, "Not Found (the next hop does not resolve)".into()))
        }
        Err(e) => {
            tracing::warn!(%uri, error = %e, "the next hop does not resolve (is `dns` set?)");
            Err((404, "Not Found (the next hop does not resolve)".into()))
        }
    }
}

/// Sends one branch; its final response with our Via popped, or the status to answer.
async fn send(
    ep: SipEndpoint,
    resolver: Arc<SipResolver>,
    b: Branch,
) -> Result<Message, (u16, String)> {
    let target = resolve(&resolver, &b.next_hop).await?;
    match ep.send_request(b.message, target).await {
        Ok(mut resp) => {
            pop_own_via(&mut resp).map_err(|e| (500, format!("Server Internal Error ({e})")))?;
            Ok(resp)
        }
        Err(ClientError::Timeout(_)) => {
            tracing::info!(next_hop = %b.next_hop, "next hop silent: 408");
            Err((408, "Request Timeout".into()))
        }
        Err(e) => {
            tracing::info!(next_hop = %b.next_hop, error = %e, "next hop failed");
            Err((503, "Service Unavailable (next hop failed)".into()))
        }
    }
}

/// Parallel forking (RFC 3261 §16.7): the first 2xx wins (the other branches are not waited
/// for: a non-INVITE cannot be cancelled); else the best final response.
async fn fork(
    ep: &SipEndpoint,
    resolver: &Arc<SipResolver>,
    branches: Vec<Branch>,
) -> Result<Message, (u16, String)> {
    let mut set = tokio::task::JoinSet::new();
    for b in branches {
        set.spawn(send(ep.clone(), resolver.clone(), b));
    }
    let mut best: Option<Result<Message, (u16, String)>> = None;
    while let Some(done) = set.join_next().await {
        let Ok(outcome) = done else { continue };
        let status = match &outcome {
            Ok(resp) => resp.status().unwrap_or(500),
            Err((code, _)) => *code,
        };
        if (200..300).contains(&status) {
            set.detach_all();
            return outcome;
        }
        // (A 503 becomes 500 on the way back, and ranks as the 5xx it is.)
        let better = match &best {
            None => true,
            Some(Ok(b)) => rank(status) < rank(b.status().unwrap_or(500)),
            Some(Err((c, _))) => rank(status) < rank(*c),
        };
        if better {
            best = Some(outcome);
        }
    }
    match best {
        Some(Ok(mut resp)) => {
            not_our_503(&mut resp).map_err(|e| (500, e.to_string()))?;
            Ok(resp)
        }
        Some(b) => b,
        None => Err((480, "Temporarily Unavailable".into())),
    }
}

//! The P-CSCF: the UE's first contact in IMS (3GPP TS 24.229 §5.2), a stateful proxy.
//!
//! **REGISTER** (§5.2.2): the P-CSCF removes its own Route, finds the home network's entry
//! point from the Request-URI's domain by RFC 3263 (NAPTR → SRV → A/AAAA) unless a fixed
//! I-CSCF is configured, and forwards with
//! - `Path: <sip:term@<us>;lr>` and `Require: path` / `Supported: path` (RFC 3327),
//! - `P-Visited-Network-ID` (ours prepended), `P-Charging-Vector` with a fresh `icid-value`
//!   when the UE sent none,
//! - `integrity-protected="no"` in Authorization (whatever the UE put there is removed; "yes"
//!   comes with IPsec),
//! - without the UE's `sec-agree` option tag and Security-Client/Verify headers (the
//!   security agreement ends here; IPsec is not negotiated yet).
//!
//! On the **401** the S-CSCF's `ck` and `ik` are kept (for IPsec) and removed from
//! WWW-Authenticate before the UE sees them. On the **200** the registration is stored
//! ([`registrations`]): the UE's flow, its contacts and expiry, the P-Associated-URI list and
//! the Service-Route; a 200 with no contact left (deregistration) forgets it.
//!
//! **Other requests from a UE** (§5.2.6.3) must come from a registered flow, else `403
//! Forbidden`. The P-CSCF asserts the identity (`P-Asserted-Identity`: the
//! P-Preferred-Identity when it is one of the UE's, else the default public identity; the
//! preferred one is removed), replaces the UE's Route with the Service-Route, Record-Routes
//! dialog-creating requests and forwards to the S-CSCF. **Requests toward a UE** (they come
//! from the core with our Path entry as Route) go to the flow the contact registered from;
//! an unknown contact gets `480 Temporarily Unavailable`.
//!
//! Non-INVITE requests go through client transactions ([`SipEndpoint::send_request`]);
//! INVITE, ACK and CANCEL are forwarded statelessly for now (the INVITE transaction machines
//! are not written yet).

pub mod ipsec;
pub mod registrations;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ims_net::dns::{Destination, SipResolver, Target};
use ims_net::endpoint::{ServerRequest, SipEndpoint, pop_own_via};
use ims_sip::transaction::Timers;
use ims_sip::{Auth, HeaderName, Message, Method, Uri};
use registrations::{Flow, Registration, Registrations, contact_key};
use serde::Deserialize;

/// The P-CSCF configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SIP address facing UEs and the core (UDP and TCP on the same port).
    pub sip_listen: SocketAddr,
    /// A second SIP address, of the other IP family, for UEs that reach us over IPv6 (or
    /// IPv4). Requests to the core leave from the address of the core's family.
    #[serde(default)]
    pub sip_listen_v6: Option<SocketAddr>,
    /// Our host in Via, Path and Record-Route (a name resolving to `sip_listen`, or the
    /// address itself).
    pub via_host: String,
    /// Our network's name in P-Visited-Network-ID and orig-ioi (e.g. `vims.net`).
    pub visited_network_id: String,
    /// DNS servers for RFC 3263 lookups (home domains, S-CSCF names).
    pub dns: Vec<SocketAddr>,
    /// A fixed I-CSCF (`sip:icscf1.hims.net:5060`) instead of DNS discovery.
    #[serde(default)]
    pub icscf: Option<String>,
    /// Log filter when RUST_LOG is unset.
    #[serde(default = "default_log")]
    pub log: String,
    /// IPsec with the UEs (TS 33.203): `[ipsec] mode = "required" | "preferred" | "off"`,
    /// protected ports, SPI range, algorithm preferences.
    #[serde(default)]
    pub ipsec: ipsec::IpsecConfig,
}

fn default_log() -> String {
    "info".to_owned()
}

impl Config {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.via_host.is_empty() || self.visited_network_id.is_empty() {
            return Err("via_host and visited_network_id must be set".into());
        }
        if let Some(i) = &self.icscf
            && !matches!(Uri::parse(i), Ok(Uri::Sip(_)))
        {
            return Err(format!("icscf `{i}` is not a SIP URI"));
        }
        if self.dns.is_empty() && self.icscf.is_none() {
            return Err("set dns servers (RFC 3263 discovery) or a fixed icscf".into());
        }
        self.ipsec.validate()?;
        let sip_port = self.sip_listen.port();
        if sip_port != 0 && (self.ipsec.port_c == sip_port || self.ipsec.port_s == sip_port) {
            return Err(format!(
                "ipsec.port_c/port_s must differ from the SIP port {sip_port}"
            ));
        }
        Ok(())
    }
}

/// Why the P-CSCF could not start.
#[derive(Debug, thiserror::Error)]
pub enum PcscfError {
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
    #[error("{0}")]
    Ipsec(String),
}

/// A started P-CSCF.
pub struct Pcscf {
    inner: Arc<Inner>,
    requests: tokio::sync::mpsc::Receiver<ServerRequest>,
}

/// CK/IK from a 401, kept for the IPsec security association (the IPsec issue).
#[derive(Clone)]
struct AuthKeys {
    #[allow(dead_code)]
    ck: String,
    #[allow(dead_code)]
    ik: String,
    until: Instant,
}

struct Inner {
    cfg: Config,
    ep: SipEndpoint,
    resolver: SipResolver,
    regs: Registrations,
    keys: std::sync::Mutex<std::collections::HashMap<String, AuthKeys>>,
    icid: AtomicU64,
    icid_salt: u64,
}

impl Pcscf {
    /// Binds SIP.
    pub async fn start(cfg: Config) -> Result<Self, PcscfError> {
        Self::start_with_timers(cfg, Timers::RFC3261).await
    }

    /// As [`Pcscf::start`], with other SIP timers (tests).
    pub async fn start_with_timers(cfg: Config, timers: Timers) -> Result<Self, PcscfError> {
        cfg.validate().map_err(PcscfError::Config)?;
        // TS 33.203 needs ESP in the kernel: required stops here when it is missing,
        // preferred goes on without it (one warning), off never looks.
        let ipsec_cfg = cfg.ipsec.clone();
        let use_ipsec = tokio::task::spawn_blocking(move || ipsec::probe::startup(&ipsec_cfg))
            .await
            .map_err(|e| PcscfError::Ipsec(format!("IPsec probe failed: {e}")))?
            .map_err(PcscfError::Ipsec)?;
        let listens: Vec<SocketAddr> = std::iter::once(cfg.sip_listen)
            .chain(cfg.sip_listen_v6)
            .collect();
        let (ep, requests) = SipEndpoint::bind_all(&listens, &cfg.via_host, timers)
            .await
            .map_err(|source| PcscfError::Bind {
                addr: cfg.sip_listen,
                source,
            })?;
        let resolver = SipResolver::new(&cfg.dns)?;
        let icid_salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        tracing::info!(sip = %ep.local_addr(), ipsec = use_ipsec, "P-CSCF started");
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                ep,
                resolver,
                regs: Registrations::new(),
                keys: std::sync::Mutex::new(std::collections::HashMap::new()),
                icid: AtomicU64::new(1),
                icid_salt,
            }),
            requests,
        })
    }

    /// The SIP address bound.
    pub fn sip_addr(&self) -> SocketAddr {
        self.inner.ep.local_addr()
    }

    /// Registered UEs right now.
    pub fn registered(&self) -> usize {
        self.inner.regs.len()
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = self.requests.recv() => match r {
                    Some(req) => {
                        let inner = self.inner.clone();
                        tokio::spawn(async move { inner.handle(req).await });
                    }
                    None => break,
                },
                _ = sweep.tick() => {
                    let now = Instant::now();
                    let n = self.inner.regs.expire(now);
                    if n > 0 {
                        tracing::info!(expired = n, "registrations expired");
                    }
                    if let Ok(mut k) = self.inner.keys.lock() {
                        k.retain(|_, v| v.until > now);
                    }
                }
                () = &mut shutdown => break,
            }
        }
        tracing::info!("P-CSCF stopped");
    }
}

/// Starts the P-CSCF and serves until `shutdown`.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), PcscfError> {
    Pcscf::start(cfg).await?.run_until(shutdown).await;
    Ok(())
}

/// A header line's index and its value, for the first line named `name`.
fn first_line(m: &Message, name: HeaderName) -> Option<(usize, String)> {
    m.headers()
        .enumerate()
        .find(|(_, h)| h.name == name)
        .and_then(|(i, h)| h.value_str().ok().map(|v| (i, v.to_owned())))
}

impl Inner {
    async fn handle(&self, mut req: ServerRequest) {
        if !self.ep.admit(&mut req, "pcscf").await {
            return;
        }
        let flow = Flow {
            addr: req.source,
            transport: req.transport,
        };
        match req.message.method() {
            Some(Method::Register) => self.register(req, flow).await,
            _ => match self.regs.get(&flow, Instant::now()) {
                Some(reg) => self.originating(req, reg).await,
                None => self.terminating(req).await,
            },
        }
    }

    async fn reply(&self, req: &ServerRequest, code: u16, reason: &str) {
        self.ep.reply(req, code, reason, "pcscf").await
    }

    /// Whether a Route/Path URI names this P-CSCF.
    fn is_us(&self, uri: &str) -> bool {
        let Ok(Uri::Sip(s)) = Uri::parse(uri) else {
            return false;
        };
        let host = s.host_str.trim_start_matches('[').trim_end_matches(']');
        let port = s.port.unwrap_or(5060);
        self.ep.local_addrs().iter().any(|local| {
            port == local.port()
                && (host.eq_ignore_ascii_case(&self.cfg.via_host)
                    || host.parse::<IpAddr>().is_ok_and(|ip| ip == local.ip()))
        })
    }

    /// Removes the Route entries at the top that name us; true if one of them was our Path
    /// entry (`sip:term@us`), i.e. the request comes from the home network toward a UE.
    fn pop_own_routes(&self, m: &mut Message) -> bool {
        let mut term = false;
        loop {
            let top = m
                .name_addrs(HeaderName::Route)
                .next()
                .and_then(Result::ok)
                .map(|n| n.uri_str.to_owned());
            match top {
                Some(uri) if self.is_us(&uri) => {
                    if m.pop_first_value(HeaderName::Route).is_err() {
                        return term;
                    }
                    term |= matches!(Uri::parse(&uri), Ok(Uri::Sip(s)) if s.user == Some("term"));
                }
                _ => return term,
            }
        }
    }

    fn next_icid(&self) -> String {
        let n = self.icid.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:08x}", self.icid_salt)
    }

    async fn register(&self, req: ServerRequest, flow: Flow) {
        let mut m = req.message.clone();
        let call_id = m.call_id().unwrap_or("").to_owned();
        let span = tracing::info_span!("register", %call_id, ue = %req.source);
        let _g = span.enter();
        self.pop_own_routes(&mut m);
        if let Err(e) = self.edit_register(&mut m) {
            tracing::info!(error = %e, "REGISTER cannot be edited");
            return self.reply(&req, 400, "Bad Request").await;
        }
        let targets = match self.home_targets(&m).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "no I-CSCF found for the home network");
                return self
                    .reply(&req, 504, "Server Time-out (home network not found)")
                    .await;
            }
        };
        let mut last = None;
        for target in targets {
            match self.ep.send_request(m.clone(), target).await {
                Ok(mut resp) => {
                    if pop_own_via(&mut resp).is_err() {
                        return;
                    }
                    self.on_register_response(&req, &mut resp, flow);
                    return self.ep.respond(&req, resp).await;
                }
                Err(e) => {
                    tracing::warn!(%target.addr, error = %e, "I-CSCF did not answer; trying the next");
                    last = Some(e);
                }
            }
        }
        tracing::warn!(error = ?last.map(|e| e.to_string()), "no I-CSCF answered");
        self.reply(&req, 504, "Server Time-out").await
    }

    /// The edits of TS 24.229 §5.2.2.1 on the REGISTER going home.
    fn edit_register(&self, m: &mut Message) -> Result<(), ims_sip::Error> {
        let port = self.ep.local_addr().port();
        let host = bracket(&self.cfg.via_host);
        m.prepend_header("Path", &format!("<sip:term@{host}:{port};lr>"))?;
        // Option tags: path in Require and Supported; sec-agree is ours, not the home's.
        let mut require: Vec<String> = m
            .option_tags(HeaderName::Require)
            .filter(|t| !t.eq_ignore_ascii_case("sec-agree"))
            .map(str::to_owned)
            .collect();
        if !require.iter().any(|t| t.eq_ignore_ascii_case("path")) {
            require.push("path".into());
        }
        m.remove_headers(HeaderName::Require);
        m.append_header("Require", &require.join(", "))?;
        let proxy_require: Vec<String> = m
            .option_tags(HeaderName::ProxyRequire)
            .filter(|t| !t.eq_ignore_ascii_case("sec-agree"))
            .map(str::to_owned)
            .collect();
        m.remove_headers(HeaderName::ProxyRequire);
        if !proxy_require.is_empty() {
            m.append_header("Proxy-Require", &proxy_require.join(", "))?;
        }
        if !m.has_option_tag(HeaderName::Supported, "path") {
            m.append_header("Supported", "path")?;
        }
        m.remove_headers(HeaderName::SecurityClient);
        m.remove_headers(HeaderName::SecurityVerify);
        // P-Visited-Network-ID: ours first.
        let vnid = format!("\"{}\"", self.cfg.visited_network_id);
        match first_line(m, HeaderName::PVisitedNetworkId) {
            Some((i, v)) => m.replace_value_at(i, &format!("{vnid}, {v}"))?,
            None => m.append_header("P-Visited-Network-ID", &vnid)?,
        }
        if m.header(HeaderName::PChargingVector).is_none() {
            let ip = self.ep.local_addr().ip();
            m.append_header(
                "P-Charging-Vector",
                &format!(
                    "icid-value={};icid-generated-at={};orig-ioi={}",
                    self.next_icid(),
                    bracket(&ip.to_string()),
                    self.cfg.visited_network_id
                ),
            )?;
        }
        // integrity-protected="no" (TS 24.229 §5.2.2.1 without IPsec).
        if let Some((i, v)) = first_line(m, HeaderName::Authorization) {
            let a = Auth::parse(&v)?;
            let edited = a.with("integrity-protected", "no", true);
            m.replace_value_at(i, &edited)?;
        }
        Ok(())
    }

    /// Where the REGISTER goes: the configured I-CSCF, or RFC 3263 on the Request-URI.
    async fn home_targets(&self, m: &Message) -> Result<Vec<Target>, String> {
        let uri_text = match &self.cfg.icscf {
            Some(i) => i.clone(),
            None => m.request_uri_str().unwrap_or("").to_owned(),
        };
        let uri = Uri::parse(&uri_text).map_err(|e| e.to_string())?;
        let Uri::Sip(sip) = uri else {
            return Err(format!("`{uri_text}` is not a SIP URI"));
        };
        self.resolver
            .resolve(&Destination::from_sip_uri(&sip))
            .await
            .map_err(|e| e.to_string())
    }

    /// 401: keep and strip ck/ik. 200: store or forget the registration.
    fn on_register_response(&self, req: &ServerRequest, resp: &mut Message, flow: Flow) {
        let status = resp.status().unwrap_or(0);
        let impi = req
            .message
            .auth(HeaderName::Authorization)
            .flatten()
            .find_map(|a| a.username().map(str::to_owned))
            .unwrap_or_default();
        if status == 401 {
            let lines: Vec<(usize, String)> = resp
                .headers()
                .enumerate()
                .filter(|(_, h)| h.name == HeaderName::WwwAuthenticate)
                .filter_map(|(i, h)| h.value_str().ok().map(|v| (i, v.to_owned())))
                .collect();
            for (i, v) in lines {
                let Ok(a) = Auth::parse(&v) else { continue };
                if let (Some(ck), Some(ik)) = (a.ck(), a.ik())
                    && let Ok(mut k) = self.keys.lock()
                {
                    k.insert(
                        impi.clone(),
                        AuthKeys {
                            ck: ck.trim_matches('"').to_owned(),
                            ik: ik.trim_matches('"').to_owned(),
                            until: Instant::now() + Duration::from_secs(240),
                        },
                    );
                }
                if a.ck().is_some() || a.ik().is_some() {
                    let stripped = a.without(&["ck", "ik"]);
                    if let Err(e) = resp.replace_value_at(i, &stripped) {
                        tracing::warn!(error = %e, "cannot strip ck/ik");
                    }
                }
            }
            return;
        }
        if !(200..300).contains(&status) {
            return;
        }
        let default_expires = resp.expires().and_then(Result::ok).unwrap_or(3600);
        let now = Instant::now();
        let contacts: Vec<(String, Instant)> = resp
            .contacts()
            .flatten()
            .filter_map(|c| {
                let a = c.addr()?;
                let e = a.expires().and_then(Result::ok).unwrap_or(default_expires);
                // Only the UE's own contacts (those it sent in this REGISTER).
                let mine = req.message.contacts().flatten().any(|rc| {
                    rc.addr()
                        .is_some_and(|ra| contact_key(ra.uri_str) == contact_key(a.uri_str))
                });
                (e > 0 && mine).then(|| {
                    (
                        a.uri_str.to_owned(),
                        now + Duration::from_secs(u64::from(e)),
                    )
                })
            })
            .collect();
        if contacts.is_empty() {
            if self.regs.remove(&flow).is_some() {
                tracing::info!(%impi, "deregistered");
            }
            return;
        }
        let associated: Vec<String> = resp
            .name_addrs(HeaderName::PAssociatedUri)
            .flatten()
            .map(|n| n.uri_str.to_owned())
            .collect();
        let service_route: Vec<String> = resp
            .values(HeaderName::ServiceRoute)
            .flatten()
            .map(str::to_owned)
            .collect();
        tracing::info!(%impi, contacts = contacts.len(), identities = associated.len(), "registered");
        self.regs.put(Registration {
            flow,
            contacts,
            associated,
            service_route,
            impi,
        });
    }

    /// A request from a registered UE toward the core (§5.2.6.3).
    async fn originating(&self, req: ServerRequest, reg: Registration) {
        let mut m = req.message.clone();
        let preferred = m
            .name_addrs(HeaderName::PPreferredIdentity)
            .flatten()
            .map(|n| n.uri_str.to_owned())
            .find(|u| reg.owns(u));
        let Some(asserted) = preferred.or_else(|| reg.associated.first().cloned()) else {
            return self.reply(&req, 403, "Forbidden (no identity)").await;
        };
        if reg.service_route.is_empty() {
            return self.reply(&req, 403, "Forbidden (no Service-Route)").await;
        }
        let edit = |m: &mut Message| -> Result<(), ims_sip::Error> {
            m.remove_headers(HeaderName::PPreferredIdentity);
            m.remove_headers(HeaderName::PAssertedIdentity);
            m.append_header("P-Asserted-Identity", &format!("<{asserted}>"))?;
            m.remove_headers(HeaderName::Route);
            for r in reg.service_route.iter().rev() {
                m.prepend_header("Route", r)?;
            }
            if creates_dialog(m) {
                let port = self.ep.local_addr().port();
                m.prepend_header(
                    "Record-Route",
                    &format!("<sip:mo@{}:{port};lr>", bracket(&self.cfg.via_host)),
                )?;
            }
            Ok(())
        };
        if let Err(e) = edit(&mut m) {
            tracing::info!(error = %e, "request cannot be edited");
            return self.reply(&req, 400, "Bad Request").await;
        }
        let first = reg.service_route[0].clone();
        self.relay(req, m, &first).await;
    }

    /// A request from the core toward a UE: our Path entry as Route, a registered contact.
    async fn terminating(&self, req: ServerRequest) {
        let mut m = req.message.clone();
        if !self.pop_own_routes(&mut m) {
            tracing::info!(source = %req.source, method = m.method_str().unwrap_or("?"), "request from an unregistered UE");
            return self.reply(&req, 403, "Forbidden (not registered)").await;
        }
        let key = req
            .message
            .request_uri_str()
            .and_then(contact_key)
            .unwrap_or_default();
        let Some(flow) = self.regs.flow_for_contact(&key) else {
            tracing::info!(contact = %key, "request for a UE that is not registered here");
            return self.reply(&req, 480, "Temporarily Unavailable").await;
        };
        if creates_dialog(&m) {
            let port = self.ep.local_addr().port();
            if let Err(e) = m.prepend_header(
                "Record-Route",
                &format!("<sip:mt@{}:{port};lr>", bracket(&self.cfg.via_host)),
            ) {
                tracing::info!(error = %e, "cannot add Record-Route");
            }
        }
        let target = Target {
            addr: flow.addr,
            transport: flow.transport,
        };
        self.send(req, m, target).await;
    }

    /// Sends `m` to the URI's RFC 3263 target and relays the outcome.
    async fn relay(&self, req: ServerRequest, m: Message, uri: &str) {
        let uri = uri.trim().trim_start_matches('<');
        let uri = uri.split('>').next().unwrap_or(uri);
        let target = match Uri::parse(uri) {
            Ok(Uri::Sip(sip)) => {
                self.resolver
                    .resolve(&Destination::from_sip_uri(&sip))
                    .await
            }
            _ => return self.reply(&req, 500, "Bad Service-Route").await,
        };
        match target {
            Ok(t) if !t.is_empty() => self.send(req, m, t[0]).await,
            Ok(_) | Err(_) => {
                tracing::warn!(%uri, "the next hop does not resolve");
                self.reply(&req, 504, "Server Time-out").await
            }
        }
    }

    async fn send(&self, req: ServerRequest, m: Message, target: Target) {
        match m.method() {
            Some(Method::Invite | Method::Ack | Method::Cancel) => {
                if let Err(e) = self.ep.forward_stateless(m, target).await {
                    tracing::info!(error = %e, "forwarding failed");
                }
            }
            _ => match self.ep.send_request(m, target).await {
                Ok(mut resp) => {
                    if pop_own_via(&mut resp).is_ok() {
                        self.ep.respond(&req, resp).await;
                    }
                }
                Err(e) => {
                    tracing::info!(error = %e, "next hop failed");
                    let (code, why) = match e {
                        ims_net::endpoint::ClientError::Timeout(_) => (408, "Request Timeout"),
                        _ => (503, "Service Unavailable"),
                    };
                    self.reply(&req, code, why).await
                }
            },
        }
    }
}

fn creates_dialog(m: &Message) -> bool {
    matches!(
        m.method(),
        Some(Method::Invite | Method::Subscribe | Method::Refer)
    ) && m.to_addr().is_ok_and(|t| t.tag().is_none())
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

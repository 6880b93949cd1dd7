//! The P-CSCF: the UE's first contact in IMS (3GPP TS 24.229 §5.2), a stateful proxy.
//!
//! **REGISTER** (§5.2.2): the P-CSCF removes its own Route, finds the home network's entry
//! point from the Request-URI's domain by RFC 3263 (NAPTR → SRV → A/AAAA) unless a fixed
//! I-CSCF is configured, and forwards, trying the targets in order (RFC 3263 §4.3: an
//! I-CSCF silent for `icscf_failover_seconds` while another address is left, or one that
//! cannot be reached, is given up and marked down, so the next REGISTERs go to the others
//! first), with
//! - `Path: <sip:term@<us>;lr>` and `Require: path` / `Supported: path` (RFC 3327),
//! - `P-Visited-Network-ID` (ours prepended), `P-Charging-Vector` with a fresh `icid-value`
//!   when the UE sent none,
//! - `integrity-protected` in Authorization: `"yes"` when the REGISTER came through the UE's
//!   IPsec SAs, else `"no"` (whatever the UE put there is replaced),
//! - without the UE's `sec-agree` option tag and Security-Client/Verify headers (the
//!   security agreement ends here).
//!
//! A home domain the DNS says nobody serves (a mistyped one) gets `404 Not Found` at once and
//! one warning naming the domain; a DNS that does not answer, `504`.
//!
//! On the **401** the S-CSCF's `ck` and `ik` are removed from WWW-Authenticate before the UE
//! sees them. On the **200** the registration is stored ([`registrations`]): the UE's flow, its
//! contacts and expiry, the P-Associated-URI list and the Service-Route; a 200 with no contact
//! left (deregistration) forgets it. With `database` set they are also written behind to a
//! store (the 200 waits for its own commit) and come back when the P-CSCF starts again
//! ([`persist`]).
//!
//! **IPsec** (TS 33.203, RFC 3329; [`ipsec`]), when the kernel has ESP and `[ipsec] mode` is
//! not `off`: a first REGISTER whose Security-Client offers an acceptable `ipsec-3gpp`
//! mechanism gets our SPIs; on its 401 the four SAs are installed from `ck`/`ik` (reg-await-auth
//! lifetime) and the 401 carries our Security-Server. The second REGISTER must come through
//! them, from the UE's `port_uc` to our `port_ps`, with a Security-Verify equal to our
//! Security-Server and (until registered) the first Security-Client, else `494 Security
//! Agreement Required`. Its 200 extends the SAs to the registration's lifetime; a failed
//! authentication, a deregistration (after its 200 went out through them) or expiry removes
//! them. With `required`, a REGISTER without `sec-agree` gets `421 Extension Required`, an
//! unacceptable offer `494`, and a challenge without keys (SIP Digest) `403`; with
//! `preferred` such UEs register without IPsec. When the P-CSCF stops it removes every SA it
//! installed; when it starts it removes those a killed predecessor left (our marker). Requests from a
//! protected registration must come through its SAs (elsewhere they get 403); requests toward
//! it leave from our `port_pc` to the UE's `port_us`. At `port_ps` only what an SA carried is
//! served: a request from a source no SA set covers (which the kernel lets through in clear,
//! no policy naming that source port) is dropped unanswered with one log line.
//!
//! **Other requests from a UE** (§5.2.6.3) must come from a registered flow, else `403
//! Forbidden`. The P-CSCF asserts the identity (`P-Asserted-Identity`: the
//! P-Preferred-Identity when it is one of the UE's, else the default public identity; the
//! preferred one is removed), replaces the UE's Route with the Service-Route, Record-Routes
//! dialog-creating requests (twice, RFC 5658: our name for the core, our address and port
//! for the UE, which need not resolve our name and must come back through its SAs) and
//! forwards to the S-CSCF; a request inside such a dialog follows its route set. **Requests toward a UE** (they come
//! from the core with our Path entry, or inside a dialog with one of our Record-Route entries,
//! as Route) go to the flow the contact registered from; an unknown contact gets `480
//! Temporarily Unavailable`, and one whose TCP connection or IPsec SAs did not survive a
//! restart `430 Flow Failed` ([`persist`]). Those Route entries are no credential: such a request must come
//! from the UE's S-CSCF (an address its Service-Route resolves to) or from `core_networks`,
//! else `403` and one warning (an unregistered host could otherwise reach any UE past the
//! core with any identity).
//!
//! **Its own reg event subscription** ([`regevent`], TS 24.229 §5.2.3): after a UE's
//! registration the P-CSCF subscribes to its `reg` event at the S-CSCF (`reg_event = true`, the
//! default); a NOTIFY saying the network ended the UE's contacts (the HSS's RTR, an
//! administrative deregistration, expiry) ends the registration here too, and removes its
//! IPsec SAs. (The UE's own deregistration is acted on when its 200 passes, as before.)
//! After a restart it subscribes again for the registrations restored from the store.
//!
//! **Overload** (the edge of the core refuses, the rest does not queue): at most
//! `max_registrations_in_flight` REGISTERs are forwarded and not yet answered (fewer, with
//! `register_latency_target_ms` set, while the core answers them slower than that on
//! average: [`admission`]); past it a new
//! registration (a REGISTER without credentials: no Authorization, or one with an empty
//! `response`) is answered `503 Service Unavailable` with `Retry-After` at once, and one warning
//! says when refusing starts and one line when it ends. REGISTERs that answer a challenge
//! always go on, so that registrations already begun finish and goodput holds.
//! The same for calls: at most `max_invites_in_flight` new INVITEs from UEs wait for the core's
//! first answer (its 100 Trying, which a core keeping up sends at once; a ringing call no
//! longer counts, [`ims_net::endpoint::Unheard`]); past it a new call is answered `503` with
//! `Retry-After` at once, with one warning when refusing starts and one when it ends.
//!
//! **Metrics** ([`metrics`]): requests by method, final responses by status, REGISTER latency,
//! registrations and IPsec SA sets held, overload refusals and SIP transactions, at `/metrics`
//! on the admin API ([`admin`]) when `admin_listen` (loopback only) is set.
//!
//! Non-INVITE requests go through client transactions ([`SipEndpoint::send_request`]);
//! INVITE through the stateful proxy core ([`ims_net::proxy`]: 100 at once, CANCEL, the
//! hop-by-hop ACK of a failure); the ACK of a 2xx is forwarded statelessly by its Route.

pub mod admin;
pub mod admission;
pub mod ipsec;
pub mod metrics;
pub mod persist;
pub mod regevent;
pub mod registrations;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::Instrument;

use ims_net::dns::{Destination, SipResolver, Target, Transport};
use ims_net::endpoint::{ClientError, ServerRequest, SipEndpoint, Unheard, pop_own_via};
use ims_sip::transaction::Timers;
use ims_sip::{Auth, HeaderName, Message, Method, Uri};
use ipnet::IpNet;
use ipsec::flows::{Flows, SetInfo, SetKey};
use ipsec::{Agreement, IpsecMode};
use regevent::{Subscription, Subscriptions, terminated_contacts};
use registrations::{Flow, Registration, Registrations, contact_key};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

/// The P-CSCF configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SIP address facing UEs and the core (UDP and TCP on the same port).
    pub sip_listen: SocketAddr,
    /// The admin HTTP API (`/health`, `/metrics`): none when unset. A loopback address
    /// only: it has no authentication.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
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
    /// Networks (CIDR, or single addresses) the home core's SIP nodes send from, e.g.
    /// `["10.10.4.0/24"]`. A request toward a UE is accepted from these, or from an address
    /// the UE's own Service-Route (its S-CSCF) resolves to; empty (the default) means just
    /// the latter.
    #[serde(default)]
    pub core_networks: Vec<String>,
    /// Subscribe to the reg event package of each UE registered here (TS 24.229 §5.2.3), so
    /// that a deregistration by the network (the HSS's RTR, an administrative one) ends the
    /// registration and its IPsec SAs here too. Default true.
    #[serde(default = "yes")]
    pub reg_event: bool,
    /// Most REGISTERs forwarded into the core and not yet answered; past it new registrations
    /// get 503 with Retry-After at once (0: no limit). Default 64 (measured in docs/PERFORMANCE.md).
    #[serde(default = "default_max_in_flight")]
    pub max_registrations_in_flight: usize,
    /// The mean time a REGISTER may take in the core (here → the core's final answer), ms:
    /// above it the in-flight limit shrinks, within it the limit grows back up to
    /// `max_registrations_in_flight` ([`admission`]), so that under overload the admitted
    /// registrations keep their latency, at some cost in goodput. 0 (the default): the
    /// fixed limit only.
    #[serde(default)]
    pub register_latency_target_ms: u64,
    /// Most new INVITEs from UEs forwarded into the core that the next hop has not answered
    /// anything yet (not even its 100 Trying, which a next hop keeping up sends at once; how
    /// long the callee takes to answer does not count); past it new calls get 503 with
    /// Retry-After at once (0: no limit). Default 64.
    #[serde(default = "default_max_invites")]
    pub max_invites_in_flight: usize,
    /// When DNS gives several I-CSCFs (RFC 3263), how long a REGISTER waits for a first
    /// answer from one before the next is tried; the silent one is then tried last for
    /// [`ims_net::dns::DOWN_FOR`]. Only toward another address: the same I-CSCF over another
    /// transport gets the whole of Timer F. 0: wait Timer F (32 s) on each. Default 4 s,
    /// about three retransmissions with no answer at all (an I-CSCF that is only slow still
    /// sends nothing before its final answer, so keep this above the home network's worst
    /// REGISTER time).
    #[serde(default = "default_icscf_failover")]
    pub icscf_failover_seconds: u64,
    /// Where the registrations are kept across a restart ([`persist`]): `sqlite://path`
    /// (created at start) or `postgres://...`; several P-CSCFs may share one database, each
    /// keeping its own under its `via_host`. None (the default): in memory only, and a
    /// restarted P-CSCF knows none of its UEs until they register again.
    #[serde(default)]
    pub database: Option<String>,
}

fn default_icscf_failover() -> u64 {
    4
}

fn default_max_in_flight() -> usize {
    64
}

fn default_max_invites() -> usize {
    64
}

fn yes() -> bool {
    true
}

fn default_log() -> String {
    "info".to_owned()
}

/// A network of `core_networks`: `10.10.4.0/24`, `fd00::/64`, or one address.
fn parse_network(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

impl Config {
    /// `core_networks`, parsed.
    fn core_networks(&self) -> Result<Vec<IpNet>, String> {
        self.core_networks
            .iter()
            .map(|n| {
                parse_network(n.trim()).ok_or_else(|| {
                    format!("core_networks: `{n}` is not an address or CIDR network")
                })
            })
            .collect()
    }

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
        if let Some(a) = self.admin_listen
            && !a.ip().is_loopback()
        {
            return Err(format!(
                "admin_listen {a} is not a loopback address: the P-CSCF's admin API has no authentication, so it listens on loopback only"
            ));
        }
        self.ipsec.validate()?;
        self.core_networks()?;
        if let Some(db) = &self.database
            && !(db.starts_with("sqlite:")
                || db.starts_with("postgres://")
                || db.starts_with("postgresql://"))
        {
            return Err(format!(
                "database `{db}` is neither sqlite:// nor postgres://"
            ));
        }
        let sip_port = self.sip_listen.port();
        if sip_port != 0 && (self.ipsec.port_c == sip_port || self.ipsec.port_s == sip_port) {
            return Err(format!(
                "ipsec.port_c/port_s must differ from the SIP port {sip_port}"
            ));
        }
        Ok(())
    }
}

/// Why a REGISTER has nowhere to go in its home network.
#[derive(Debug)]
enum HomeNotFound {
    /// The URI to locate (the Request-URI, or our `icscf`) is not a SIP URI.
    Uri(String),
    /// RFC 3263 found no I-CSCF.
    Dns(ims_net::dns::ResolveError),
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
    #[error("cannot listen for the admin API on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("registration store: {0}")]
    Store(#[from] ims_store::StoreError),
}

/// A started P-CSCF.
pub struct Pcscf {
    inner: Arc<Inner>,
    requests: tokio::sync::mpsc::Receiver<ServerRequest>,
    admin: Option<tokio::net::TcpListener>,
}

/// The reg-await-auth time (TS 24.229 §5.4.1.2.1: 4 minutes): the lifetime of SAs installed
/// on a 401, until the second REGISTER completes.
const REG_AWAIT_AUTH: Duration = Duration::from_secs(240);
/// How long a deregistered TCP flow keeps its SAs: its 200 OK is written (and acknowledged)
/// after the handler has queued it.
const TCP_DEREG_GRACE: Duration = Duration::from_secs(2);
/// How long a UE the network deregistered stays reachable here: the S-CSCF's NOTIFY to the
/// UE's own reg event subscription, sent with ours, must still reach it (through its SAs).
const NETWORK_DEREG_GRACE: Duration = Duration::from_secs(3);
/// Longest a REGISTER's 200 waits for its registration's commit to the store ([`persist`]).
const STORE_WAIT: Duration = Duration::from_secs(2);
/// How long our reg event subscription asks to outlive the registration it watches.
const REG_EVENT_MARGIN: Duration = Duration::from_secs(60);

struct Inner {
    cfg: Config,
    ep: SipEndpoint,
    resolver: SipResolver,
    regs: Registrations,
    /// The UEs' IPsec SA sets, when IPsec is on.
    ipsec: Option<Arc<Flows>>,
    /// `core_networks`, parsed.
    core: Vec<IpNet>,
    /// Our reg event subscriptions, one per registered flow.
    subs: Subscriptions,
    rng: SystemRandom,
    icid: AtomicU64,
    icid_salt: u64,
    /// REGISTERs forwarded and not yet answered.
    in_flight: AtomicUsize,
    /// How many may be ([`admission`]): the limit, read per new registration, and what
    /// moves it, fed per REGISTER the core answered.
    in_flight_limit: AtomicUsize,
    admission: Mutex<admission::Admission>,
    /// New INVITEs from UEs the next hop has not answered yet ([`Unheard`]).
    invites_unheard: Arc<AtomicUsize>,
    /// Refusing new calls (one warning when it starts, one when it ends).
    calls_overloaded: AtomicBool,
    /// Refusing new registrations (for the one line when it starts and ends).
    overloaded: AtomicBool,
    /// The store did not commit a registration within [`STORE_WAIT`] (for the one line when
    /// it starts and ends).
    store_late: AtomicBool,
    /// Our counters ([`metrics`]); the endpoint counts our final responses into them.
    metrics: Arc<metrics::Metrics>,
}

/// One REGISTER in flight, counted until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A REGISTER that starts a registration: no credentials (no Authorization, or one with an
/// empty or absent `response`, as a UE's first REGISTER in IMS has).
fn is_initial_register(m: &Message) -> bool {
    match m.auth(HeaderName::Authorization).next() {
        Some(Ok(a)) => a.response().is_none_or(str::is_empty),
        Some(Err(_)) | None => true,
    }
}

/// Why the security agreement refuses a REGISTER.
enum Refusal {
    /// Answer with this status.
    Status(u16, &'static str),
    /// A REGISTER through the SAs of this UE (registered or not) broke the agreement: 494.
    Broken(SetKey, bool),
}

/// Where a REGISTER stands in the security agreement.
enum Security {
    /// No IPsec for this UE.
    Plain,
    /// A first REGISTER whose offer we accepted: SPIs allocated, SAs come with the 401.
    Offered(Agreement),
    /// It came through the SA set of this UE (`port_uc` → our `port_ps`).
    Protected(SetKey, SetInfo),
}

impl Pcscf {
    /// Binds SIP.
    pub async fn start(cfg: Config) -> Result<Self, PcscfError> {
        Self::start_with_timers(cfg, Timers::RFC3261).await
    }

    /// As [`Pcscf::start`], with other SIP timers (tests).
    pub async fn start_with_timers(cfg: Config, timers: Timers) -> Result<Self, PcscfError> {
        cfg.validate().map_err(PcscfError::Config)?;
        let core = cfg.core_networks().map_err(PcscfError::Config)?;
        // TS 33.203 needs ESP in the kernel: required stops here when it is missing,
        // preferred goes on without it (one warning), off never looks.
        let ipsec_cfg = cfg.ipsec.clone();
        let use_ipsec = tokio::task::spawn_blocking(move || ipsec::probe::startup(&ipsec_cfg))
            .await
            .map_err(|e| PcscfError::Ipsec(format!("IPsec probe failed: {e}")))?
            .map_err(PcscfError::Ipsec)?;
        let ipsec = if use_ipsec {
            let c = cfg.ipsec.clone();
            let flows = tokio::task::spawn_blocking(move || Flows::open(&c))
                .await
                .map_err(|e| PcscfError::Ipsec(format!("IPsec: {e}")))?
                .map_err(PcscfError::Ipsec)?;
            Some(Arc::new(flows))
        } else {
            None
        };
        let mut listens: Vec<(SocketAddr, bool)> = std::iter::once(cfg.sip_listen)
            .chain(cfg.sip_listen_v6)
            .map(|a| (a, false))
            .collect();
        if ipsec.is_some() {
            // The protected ports, on each address (after the plain ones: requests to the
            // core leave from the first address of their family); TCP toward a UE leaves
            // from port_pc itself, as the SA selects.
            let plain = listens.clone();
            for port in [cfg.ipsec.port_c, cfg.ipsec.port_s] {
                listens.extend(
                    plain
                        .iter()
                        .map(|(a, _)| (SocketAddr::new(a.ip(), port), true)),
                );
            }
        }
        let (ep, requests) = SipEndpoint::bind_listens(&listens, &cfg.via_host, timers)
            .await
            .map_err(|source| PcscfError::Bind {
                addr: cfg.sip_listen,
                source,
            })?;
        let resolver = SipResolver::new(&cfg.dns)?;
        let admin = match cfg.admin_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| PcscfError::AdminBind { addr, source })?,
            ),
            None => None,
        };
        let metrics = Arc::new(metrics::Metrics::default());
        metrics.in_flight_limit(cfg.max_registrations_in_flight);
        let counted = metrics.clone();
        ep.observe_responses(move |req, status| {
            counted.response(status);
            if req.message.method() == Some(Method::Register) {
                counted.register(req.received().elapsed());
            }
        });
        // The registrations of a predecessor (killed or stopped) come back from the store.
        let regs = match &cfg.database {
            Some(url) => {
                let (journal, restored) =
                    persist::open(url, &cfg.via_host, metrics.clone()).await?;
                let regs = Registrations::with_journal(journal);
                let lost = restored.iter().filter(|r| r.flow_lost).count();
                tracing::info!(
                    registrations = restored.len(),
                    flows_lost = lost,
                    "registrations restored from the store (flows lost: TCP or IPsec, answered 430 until the UE registers again)"
                );
                regs.restore(restored);
                regs
            }
            None => Registrations::new(),
        };
        let icid_salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        tracing::info!(
            sip = %ep.local_addr(),
            admin = ?admin.as_ref().and_then(|a| a.local_addr().ok()),
            ipsec = use_ipsec,
            "P-CSCF started"
        );
        let admission = admission::Admission::new(
            cfg.max_registrations_in_flight,
            Duration::from_millis(cfg.register_latency_target_ms),
            Instant::now(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                core,
                cfg,
                ep,
                resolver,
                regs,
                subs: Subscriptions::new(),
                rng: SystemRandom::new(),
                ipsec,
                icid: AtomicU64::new(1),
                icid_salt,
                in_flight: AtomicUsize::new(0),
                in_flight_limit: AtomicUsize::new(admission.limit()),
                admission: Mutex::new(admission),
                invites_unheard: Arc::new(AtomicUsize::new(0)),
                calls_overloaded: AtomicBool::new(false),
                overloaded: AtomicBool::new(false),
                store_late: AtomicBool::new(false),
                metrics,
            }),
            requests,
            admin,
        })
    }

    /// The SIP address bound.
    pub fn sip_addr(&self) -> SocketAddr {
        self.inner.ep.local_addr()
    }

    /// The admin API's address, when `admin_listen` is set (port 0 picks one).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Registered UEs right now.
    pub fn registered(&self) -> usize {
        self.inner.regs.len()
    }

    /// IPsec SA sets installed right now (0 without IPsec).
    pub fn ipsec_sets(&self) -> usize {
        self.inner.ipsec.as_ref().map_or(0, |f| f.len())
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
                    tracing::error!(error = %e, "P-CSCF admin API stopped");
                }
            });
        }
        // Our reg event subscriptions died with our predecessor: subscribe again for the
        // registrations restored from the store, one at a time (no burst at the S-CSCF).
        if self.inner.cfg.reg_event {
            let inner = self.inner.clone();
            tokio::spawn(async move { inner.watch_restored().await });
        }
        // New requests go straight from the endpoint to a task of their own; the channel
        // holds only what came before this.
        self.inner.ep.serve(&self.inner);
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
                    self.inner.subs.expire(now);
                    self.inner.refresh_subscriptions(now);
                    if let Some(flows) = self.inner.ipsec.clone() {
                        let n = tokio::task::spawn_blocking(move || flows.sweep(now)).await.unwrap_or(0);
                        if n > 0 {
                            tracing::info!(removed = n, "IPsec SA sets expired");
                        }
                    }
                }
                () = &mut shutdown => break,
            }
        }
        self.inner.ep.stop_serving();
        let _ = stop_admin.send(());
        if let Some(flows) = self.inner.ipsec.clone() {
            let _ = tokio::task::spawn_blocking(move || flows.remove_all()).await;
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

impl ims_net::endpoint::Handler for Inner {
    async fn handle(self: Arc<Self>, req: ServerRequest) {
        Inner::handle(&self, req).await
    }
}

impl Inner {
    async fn handle(&self, mut req: ServerRequest) {
        // Through the UE's SAs, answers go back to its protected client port (the source;
        // its Via names its protected server port), never in clear to another port.
        if self.through_sas(&req) {
            // Only what a UE's SAs carried is served at the protected server port (TS 33.203
            // §7.1): the kernel discards what claims an SA and fails it, but a datagram from
            // a source no SA covers gets through in clear. It gets no answer either (an answer
            // would be SIP in clear from a protected port).
            if !self.ipsec.as_ref().is_some_and(|f| f.covers(req.source)) {
                tracing::info!(
                    source = %req.source, method = req.message.method_str().unwrap_or("?"),
                    "request at the protected server port from a source no IPsec SA covers: dropped"
                );
                return;
            }
            if let Err(e) = req.respond_to_source() {
                tracing::info!(source = %req.source, error = %e, "request without a usable Via dropped");
                return;
            }
        }
        self.metrics.request(req.message.method());
        if !self.ep.admit(&mut req, "pcscf").await {
            return;
        }
        let flow = Flow {
            addr: req.source,
            transport: req.transport,
        };
        if req.message.method() == Some(Method::Notify)
            && let Some(call_id) = req.message.call_id().ok().map(str::to_owned)
            && let Some(sub) = self.subs.get(&call_id)
        {
            return self.reg_notify(req, call_id, sub).await;
        }
        // A reg event NOTIFY to our own address for a subscription we do not hold: one our
        // predecessor made before a restart (they live in memory). 481 ends it at the S-CSCF
        // (RFC 6665 §4.2.2); we subscribe anew when the UE registers again.
        if req.message.method() == Some(Method::Notify)
            && req
                .message
                .header_str(HeaderName::Event)
                .and_then(|e| e.split(';').next())
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("reg"))
            && req.message.request_uri_str().is_some_and(|u| self.is_us(u))
        {
            tracing::info!(source = %req.source, "reg event NOTIFY for a subscription we do not hold: 481");
            return self.reply(&req, 481, "Subscription Does Not Exist").await;
        }
        match req.message.method() {
            Some(Method::Register) => self.admit_register(req, flow).await,
            _ => match self.regs.get(&flow, Instant::now()) {
                Some(reg) if reg.ipsec_port_us.is_some() && !self.through_sas(&req) => {
                    tracing::info!(source = %req.source, "request from a protected UE outside its IPsec SAs");
                    self.reply(&req, 403, "Forbidden (use the IPsec protected port)")
                        .await
                }
                Some(reg) => self.originating(req, reg).await,
                None => self.terminating(req).await,
            },
        }
    }

    /// A REGISTER past the in-flight limit (a new registration gets 503), else on.
    async fn admit_register(&self, req: ServerRequest, flow: Flow) {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut counted = Some(InFlight(&self.in_flight));
        let max = self.in_flight_limit.load(Ordering::Relaxed);
        if self.cfg.max_registrations_in_flight > 0 && is_initial_register(&req.message) {
            if before >= max {
                if !self.overloaded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        in_flight = before,
                        limit = max,
                        "overload: refusing new registrations with 503 until fewer than \
                         the in-flight limit are in the core"
                    );
                }
                self.metrics.refused(metrics::Refused::Register);
                return self
                    .reply(&req, 503, "Service Unavailable (overload)")
                    .await;
            }
            // Read first: no write to the shared flag per admitted REGISTER.
            if self.overloaded.load(Ordering::Relaxed)
                && self.overloaded.swap(false, Ordering::Relaxed)
            {
                tracing::warn!("overload over: new registrations admitted again");
            }
        }
        self.register(req, flow, &mut counted).await
    }

    async fn reply(&self, req: &ServerRequest, code: u16, reason: &str) {
        self.ep.reply(req, code, reason, "pcscf").await
    }

    /// The core answered `req`: its time there moves the in-flight limit ([`admission`]).
    fn answered_register(&self, req: &ServerRequest) {
        if self.cfg.register_latency_target_ms == 0 || self.cfg.max_registrations_in_flight == 0 {
            return;
        }
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let moved = self
            .admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sample(req.received().elapsed(), in_flight, Instant::now());
        if let Some(limit) = moved {
            self.in_flight_limit.store(limit, Ordering::Relaxed);
            self.metrics.in_flight_limit(limit);
            tracing::debug!(limit, "REGISTERs in flight: new limit");
        }
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
    /// entry (`sip:term@us`, a request from the home network toward a UE) or one of our
    /// Record-Route entries (`mo`/`mt`, a request inside a dialog we record-routed, e.g. the
    /// NOTIFY of a UE's reg-event subscription).
    fn pop_own_routes(&self, m: &mut Message) -> bool {
        let mut ours = false;
        loop {
            let top = m
                .name_addrs(HeaderName::Route)
                .next()
                .and_then(Result::ok)
                .map(|n| n.uri_str.to_owned());
            match top {
                Some(uri) if self.is_us(&uri) => {
                    if m.pop_first_value(HeaderName::Route).is_err() {
                        return ours;
                    }
                    // A UE's pre-loaded Route names us without a user part: not toward a UE.
                    ours |= matches!(Uri::parse(&uri), Ok(Uri::Sip(s))
                        if matches!(s.user, Some("term" | "mo" | "mt")));
                }
                _ => return ours,
            }
        }
    }

    fn next_icid(&self) -> String {
        let n = self.icid.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:08x}", self.icid_salt)
    }

    /// Whether `req` came to our protected server port (the kernel lets nothing arrive
    /// there from a UE's protected client port except through its SA; `handle` drops what
    /// comes there from any other source).
    fn through_sas(&self, req: &ServerRequest) -> bool {
        self.ipsec.is_some() && req.local.port() == self.cfg.ipsec.port_s
    }

    /// Where the REGISTER stands in the security agreement, or the answer refusing it.
    async fn security(&self, req: &ServerRequest) -> Result<Security, Refusal> {
        let Some(flows) = &self.ipsec else {
            return Ok(Security::Plain);
        };
        let m = &req.message;
        let client: Vec<String> = m
            .values(HeaderName::SecurityClient)
            .flatten()
            .map(str::to_owned)
            .collect();
        if self.through_sas(req) {
            // `handle` dropped what no set covers; the set can only have gone since.
            let Some(info) = flows.agreement(req.source) else {
                tracing::info!(source = %req.source, "REGISTER at the protected port whose SA set went meanwhile");
                return Err(Refusal::Status(
                    403,
                    "Forbidden (no IPsec security association)",
                ));
            };
            let verify: Vec<&str> = m.values(HeaderName::SecurityVerify).flatten().collect();
            let checked = if info.registered {
                // A re-registration: the UE may offer new parameters for the next SA pair;
                // the Security-Verify must still be ours (RFC 3329 §2.3.1).
                ims_ipsec::secagree::check_verify(&info.agreement.server, verify)
            } else {
                info.agreement
                    .check_second_register(client.iter().map(String::as_str), verify)
            };
            if let Err(e) = checked {
                tracing::info!(source = %req.source, error = %e, "security agreement violated");
                return Err(Refusal::Broken(req.source, info.registered));
            }
            return Ok(Security::Protected(req.source, info));
        }
        let requires = m.has_option_tag(HeaderName::Require, "sec-agree")
            || m.has_option_tag(HeaderName::ProxyRequire, "sec-agree");
        let required = self.cfg.ipsec.mode == IpsecMode::Required;
        if client.is_empty() {
            if required {
                tracing::info!(source = %req.source, "REGISTER without Security-Client, IPsec is required");
                return Err(Refusal::Status(421, "Extension Required"));
            }
            return Ok(Security::Plain);
        }
        // No kernel call here: the SAs come with the 401.
        match flows.negotiate(client.iter().map(String::as_str)) {
            Ok(Some(a)) => Ok(Security::Offered(a)),
            Ok(None) if required => Err(Refusal::Status(
                503,
                "Service Unavailable (no IPsec SPI left)",
            )),
            Ok(None) => Ok(Security::Plain),
            Err(e) if required || requires => {
                tracing::info!(source = %req.source, error = %e, "no acceptable IPsec offer");
                Err(Refusal::Status(494, "Security Agreement Required"))
            }
            Err(e) => {
                tracing::info!(source = %req.source, error = %e, "no acceptable IPsec offer; registering without IPsec");
                Ok(Security::Plain)
            }
        }
    }

    /// `counted` is the REGISTER's place in the in-flight count: given back as soon as the
    /// core's final response is here, not after what follows (a 200's reg-event SUBSCRIBE,
    /// which under loss can take seconds, held new registrations out).
    async fn register(&self, req: ServerRequest, flow: Flow, counted: &mut Option<InFlight<'_>>) {
        let mut m = req.message.clone();
        let call_id = m.call_id().unwrap_or("").to_owned();
        let span = tracing::info_span!("register", %call_id, ue = %req.source);
        // Instrumented, not entered: a guard held across an await leaks the span into
        // whatever else runs on the thread meanwhile.
        async {
            let security = match self.security(&req).await {
                Ok(s) => s,
                Err(Refusal::Status(code, reason)) => {
                    return self.refuse_security(&req, code, reason).await;
                }
                Err(Refusal::Broken(key, registered)) => {
                    // Answered through the SAs; an unfinished set goes with it.
                    self.refuse_security(&req, 494, "Security Agreement Required")
                        .await;
                    if !registered {
                        self.ipsec_failed(key).await;
                    }
                    return;
                }
            };
            self.pop_own_routes(&mut m);
            let protected = matches!(security, Security::Protected(..));
            if let Err(e) = self.edit_register(&mut m, protected) {
                tracing::info!(error = %e, "REGISTER cannot be edited");
                self.give_back(&security);
                return self.reply(&req, 400, "Bad Request").await;
            }
            let targets = match self.home_targets(&m).await {
                Ok(t) => t,
                Err(e) => {
                    let (code, reason) = self.home_not_found(&e);
                    self.give_back(&security);
                    return self.reply(&req, code, reason).await;
                }
            };
            let mut last = None;
            let silence = Duration::from_secs(self.cfg.icscf_failover_seconds);
            for (k, &target) in targets.iter().enumerate() {
                // Give a silent I-CSCF up early only when another one (another address)
                // is left to try.
                let another = targets[k + 1..].iter().any(|t| t.addr != target.addr);
                let sent = if another && !silence.is_zero() {
                    self.ep
                        .send_request_or_give_up(m.clone(), target, silence)
                        .await
                } else {
                    self.ep.send_request(m.clone(), target).await
                };
                match sent {
                    Ok(mut resp) => {
                        // Out of the core: what follows (the SAs, the response, a 200's
                        // reg-event SUBSCRIBE) is not counted, and the count is down before
                        // the UE can see the response and send its next REGISTER.
                        if counted.take().is_some() {
                            self.answered_register(&req);
                        }
                        if pop_own_via(&mut resp).is_err() {
                            self.give_back(&security);
                            return;
                        }
                        return self
                            .register_response(&req, resp, flow, security)
                            .await;
                    }
                    Err(e) => {
                        if matches!(e, ClientError::Timeout(_) | ClientError::Transport(_)) {
                            self.resolver.mark_down(target.addr);
                        }
                        tracing::warn!(%target.addr, error = %e, "I-CSCF did not answer; trying the next");
                        last = Some(e);
                    }
                }
            }
            tracing::warn!(error = ?last.map(|e| e.to_string()), "no I-CSCF answered");
            self.give_back(&security);
            self.reply(&req, 504, "Server Time-out").await
        }
        .instrument(span)
        .await
    }

    /// Answers a REGISTER the security agreement refuses (421 names sec-agree in Require,
    /// 494 lists our mechanism in Security-Server, RFC 3329 §2.3.1).
    async fn refuse_security(&self, req: &ServerRequest, code: u16, reason: &str) {
        let resp = ims_sip::error_response(&req.message, code, reason, Some("pcscf"));
        let Ok(mut resp) = resp else {
            return self.reply(req, code, reason).await;
        };
        let extra = match code {
            421 => Some(("Require", "sec-agree".to_owned())),
            494 => Some((
                "Security-Server",
                format!(
                    "ipsec-3gpp;q=0.1;prot=esp;mod=trans;alg={};ealg={}",
                    self.cfg
                        .ipsec
                        .algorithms
                        .first()
                        .map_or("hmac-sha-1-96", |a| a),
                    self.cfg.ipsec.encryption.first().map_or("null", |a| a)
                ),
            )),
            _ => None,
        };
        if let Some((name, value)) = extra
            && let Err(e) = resp.append_header(name, &value)
        {
            tracing::warn!(error = %e, "cannot add {name}");
        }
        self.ep.respond(req, resp).await
    }

    /// An offer that will get no SA set gives its SPIs back.
    fn give_back(&self, security: &Security) {
        if let (Security::Offered(a), Some(flows)) = (security, &self.ipsec) {
            flows.release(a);
        }
    }

    /// The response to a REGISTER, IPsec included, then on to the UE.
    async fn register_response(
        &self,
        req: &ServerRequest,
        mut resp: Message,
        flow: Flow,
        security: Security,
    ) {
        let status = resp.status().unwrap_or(0);
        let keys = self.strip_ck_ik(&mut resp);
        let impi = register_impi(&req.message);
        match (status, security) {
            (401, Security::Offered(a)) => {
                let Some((ck, ik)) = keys else {
                    // SIP Digest: no keys, no IPsec.
                    self.give_back(&Security::Offered(a));
                    if self.cfg.ipsec.mode == IpsecMode::Required {
                        tracing::info!(%impi, "IPsec is required but the challenge is not AKA (no ck/ik)");
                        return self
                            .reply(req, 403, "Forbidden (IPsec required, needs AKA)")
                            .await;
                    }
                    return self.ep.respond(req, resp).await;
                };
                let server = a.server.clone();
                match self.install(a, &impi, req, ck, ik).await {
                    Ok(()) => {
                        if let Err(e) = resp.append_header("Security-Server", &server) {
                            tracing::warn!(error = %e, "cannot add Security-Server");
                        }
                    }
                    Err(e) if self.cfg.ipsec.mode == IpsecMode::Required => {
                        tracing::error!(error = %e, "IPsec SAs could not be installed; the UE cannot register");
                        return self
                            .reply(req, 500, "Server Internal Error (IPsec setup failed)")
                            .await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "IPsec SAs could not be installed; this UE goes on without IPsec")
                    }
                }
                self.ep.respond(req, resp).await
            }
            (401, Security::Protected(key, info)) => {
                // A new challenge on the protected flow (re-authentication, TS 33.203 §7.4):
                // a new SA set from this REGISTER's offer, announced in the 401, which still
                // leaves through the current set; the new set goes in after it.
                let fresh = match (&keys, &self.ipsec) {
                    (Some(_), Some(flows)) => {
                        let values: Vec<&str> = req
                            .message
                            .values(HeaderName::SecurityClient)
                            .flatten()
                            .collect();
                        flows.negotiate(values).ok().flatten()
                    }
                    _ => None,
                };
                if let Some(a) = &fresh
                    && let Err(e) = resp.append_header("Security-Server", &a.server)
                {
                    tracing::warn!(error = %e, "cannot add Security-Server");
                }
                self.ep.respond(req, resp).await;
                if let (Some(a), Some((ck, ik))) = (fresh, keys) {
                    if let Err(e) = self.install(a, &impi, req, ck, ik).await {
                        tracing::warn!(error = %e, "IPsec SAs for the re-authentication could not be installed");
                    }
                } else if !info.registered {
                    self.ipsec_failed(key).await;
                }
            }
            (200..=299, security) => {
                // An offer answered without a challenge gets no SAs.
                self.give_back(&security);
                let (stored, committed) =
                    self.store_registration(req, &resp, flow, &impi, &security);
                // The UE sees its 200 once its registration is in the store ([`persist`]),
                // or after STORE_WAIT: a database that hangs must not stop registrations.
                if let Some(c) = committed {
                    self.await_commit(&impi, c).await;
                }
                self.ep.respond(req, resp).await;
                if let (Security::Protected(key, _), Some(flows)) = (security, self.ipsec.clone()) {
                    match stored {
                        Some(expiry) => {
                            let margin = Duration::from_secs(self.cfg.ipsec.sa_margin_secs);
                            let life = expiry.saturating_duration_since(Instant::now()) + margin;
                            let _ =
                                tokio::task::spawn_blocking(move || flows.registered(key, life))
                                    .await;
                        }
                        None => {
                            // Deregistered: the 200 has gone out through the SAs; now they
                            // go. Over TCP the 200 is only queued for the connection's writer
                            // yet, and must still cross (and be acknowledged) under the SAs.
                            let tcp = flow.transport == Transport::Tcp;
                            tokio::spawn(async move {
                                if tcp {
                                    tokio::time::sleep(TCP_DEREG_GRACE).await;
                                }
                                let gone = tokio::task::spawn_blocking(move || flows.remove(key))
                                    .await
                                    .unwrap_or(false);
                                if gone {
                                    tracing::info!(ue = %key, "deregistered: IPsec SAs removed");
                                }
                            });
                        }
                    }
                }
                if let Some(expiry) = stored
                    && let Ok(to) = req.message.to_addr()
                {
                    self.watch(flow, to.uri_str.to_owned(), expiry).await;
                }
            }
            (_, security) => {
                self.give_back(&security);
                self.ep.respond(req, resp).await;
                if let Security::Protected(key, info) = security
                    && status >= 300
                    && !info.registered
                {
                    // The authentication through the new SAs failed (403 for a wrong RES).
                    self.ipsec_failed(key).await;
                }
            }
        }
    }

    /// Waits for the commit of a registration, at most [`STORE_WAIT`]; one warning when the
    /// store starts being late, one line when it keeps up again. (The writer logs a failed
    /// commit once per batch.)
    async fn await_commit(
        &self,
        impi: &str,
        committed: tokio::sync::oneshot::Receiver<persist::Committed>,
    ) {
        match tokio::time::timeout(STORE_WAIT, committed).await {
            Ok(Ok(Ok(()))) => {
                if self.store_late.swap(false, Ordering::Relaxed) {
                    tracing::info!("the registration store keeps up again");
                }
            }
            Ok(Ok(Err(e))) => {
                tracing::debug!(%impi, error = %e, "registration not saved to the store; kept in memory")
            }
            Ok(Err(_)) => {
                tracing::debug!(%impi, "the store writer has stopped; registration kept in memory")
            }
            Err(_) => {
                if !self.store_late.swap(true, Ordering::Relaxed) {
                    tracing::warn!(wait = ?STORE_WAIT, "the registration store is late: REGISTER 200s go out before their commit (a restart may lose them)");
                }
            }
        }
    }

    async fn ipsec_failed(&self, key: SetKey) {
        if let Some(flows) = self.ipsec.clone() {
            let _ = tokio::task::spawn_blocking(move || flows.failed(key)).await;
        }
    }

    /// Installs the SA set of `a` for the UE that sent `req` (reg-await-auth lifetime).
    async fn install(
        &self,
        a: Agreement,
        impi: &str,
        req: &ServerRequest,
        ck: String,
        ik: String,
    ) -> Result<(), String> {
        let Some(flows) = self.ipsec.clone() else {
            return Err("IPsec is off".into());
        };
        let (impi, ue, us) = (impi.to_owned(), req.source.ip(), req.local.ip());
        tokio::task::spawn_blocking(move || {
            flows.install(a, &impi, ue, us, (&ck, &ik), REG_AWAIT_AUTH)
        })
        .await
        .map_err(|e| e.to_string())?
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    /// The edits of TS 24.229 §5.2.2.1 on the REGISTER going home.
    fn edit_register(&self, m: &mut Message, protected: bool) -> Result<(), ims_sip::Error> {
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
        // integrity-protected: "yes" through the UE's SAs, else "no" (TS 24.229 §5.2.2.1).
        if let Some((i, v)) = first_line(m, HeaderName::Authorization) {
            let a = Auth::parse(&v)?;
            let value = if protected { "yes" } else { "no" };
            let edited = a.with("integrity-protected", value, true);
            m.replace_value_at(i, &edited)?;
        }
        Ok(())
    }

    /// Where the REGISTER goes: the configured I-CSCF, or RFC 3263 on the Request-URI.
    async fn home_targets(&self, m: &Message) -> Result<Vec<Target>, HomeNotFound> {
        let uri_text = match &self.cfg.icscf {
            Some(i) => i.clone(),
            None => m.request_uri_str().unwrap_or("").to_owned(),
        };
        let uri = Uri::parse(&uri_text).map_err(|e| HomeNotFound::Uri(e.to_string()))?;
        let Uri::Sip(sip) = uri else {
            return Err(HomeNotFound::Uri(format!("`{uri_text}` is not a SIP URI")));
        };
        self.resolver
            .resolve(&Destination::from_sip_uri(&sip))
            .await
            .map_err(HomeNotFound::Dns)
    }

    /// The answer to a REGISTER whose home network has no I-CSCF to be found, after its one
    /// warning naming the domain. A domain the DNS says nobody serves (the UE's Request-URI,
    /// most often mistyped) is `404 Not Found`: RFC 3261 §21.4.5's "the domain in the
    /// Request-URI does not match any of the domains handled", final, for no other P-CSCF
    /// would find it either (a 503 would send the UE to one). The same for our own `icscf`
    /// setting is our fault: `500`. A DNS that does not answer is `504` (§21.5.5: no timely
    /// response from a server accessed, such as the DNS).
    fn home_not_found(&self, e: &HomeNotFound) -> (u16, &'static str) {
        use ims_net::dns::ResolveError;
        match e {
            HomeNotFound::Dns(ResolveError::NotFound { host, detail })
                if self.cfg.icscf.is_none() =>
            {
                tracing::warn!(domain = %host, %detail, "REGISTER for a home domain no DNS name serves (mistyped?): 404");
                (404, "Not Found (home network domain not in DNS)")
            }
            HomeNotFound::Dns(ResolveError::NotFound { host, detail }) => {
                tracing::warn!(icscf = %host, %detail, "the configured icscf is not in DNS: 500");
                (500, "Server Internal Error (I-CSCF not in DNS)")
            }
            HomeNotFound::Dns(ResolveError::Unanswered { host, detail }) => {
                tracing::warn!(domain = %host, %detail, "no DNS answer for the home network: 504");
                (504, "Server Time-out (no DNS answer for the home network)")
            }
            HomeNotFound::Dns(e) => {
                tracing::warn!(error = %e, "no I-CSCF found for the home network: 504");
                (504, "Server Time-out (home network not found)")
            }
            HomeNotFound::Uri(e) => {
                tracing::info!(error = %e, "REGISTER with no SIP home network to send it to: 400");
                (400, "Bad Request (Request-URI)")
            }
        }
    }

    /// Removes `ck` and `ik` from the response's WWW-Authenticate values (the UE never sees
    /// them) and returns the first pair found.
    fn strip_ck_ik(&self, resp: &mut Message) -> Option<(String, String)> {
        if resp.status() != Some(401) {
            return None;
        }
        let lines: Vec<(usize, String)> = resp
            .headers()
            .enumerate()
            .filter(|(_, h)| h.name == HeaderName::WwwAuthenticate)
            .filter_map(|(i, h)| h.value_str().ok().map(|v| (i, v.to_owned())))
            .collect();
        let mut keys = None;
        for (i, v) in lines {
            let Ok(a) = Auth::parse(&v) else { continue };
            if let (Some(ck), Some(ik), None) = (a.ck(), a.ik(), &keys) {
                keys = Some((
                    ck.trim_matches('"').to_owned(),
                    ik.trim_matches('"').to_owned(),
                ));
            }
            if a.ck().is_some() || a.ik().is_some() {
                let stripped = a.without(&["ck", "ik"]);
                if let Err(e) = resp.replace_value_at(i, &stripped) {
                    tracing::warn!(error = %e, "cannot strip ck/ik");
                }
            }
        }
        keys
    }

    /// A 2xx to a REGISTER: stores the registration (returning its expiry, and the receiver
    /// of its commit to the store when there is one) or, with no contact of the UE's left,
    /// forgets it (`None`).
    fn store_registration(
        &self,
        req: &ServerRequest,
        resp: &Message,
        flow: Flow,
        impi: &str,
        security: &Security,
    ) -> (
        Option<Instant>,
        Option<tokio::sync::oneshot::Receiver<persist::Committed>>,
    ) {
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
            return (None, None);
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
        let ipsec_port_us = match security {
            Security::Protected(_, info) => Some(info.agreement.offer.port_s),
            _ => None,
        };
        tracing::info!(%impi, contacts = contacts.len(), identities = associated.len(), ipsec = ipsec_port_us.is_some(), "registered");
        let reg = Registration {
            flow,
            contacts,
            associated,
            service_route,
            impi: impi.to_owned(),
            ipsec_port_us,
            flow_lost: false,
        };
        let expiry = reg.expires();
        let committed = self.regs.put(reg);
        (expiry, committed)
    }

    /// Subscribes to the UE's reg event after its registration's 200 (TS 24.229 §5.2.3), or
    /// refreshes our subscription (inside its dialog) when the registration now outlives it.
    async fn watch(&self, flow: Flow, impu: String, reg_expiry: Instant) {
        self.watch_for_at_least(flow, impu, reg_expiry, 0).await;
    }

    /// [`Pcscf::watch`] asking for no less than `floor` seconds (the Min-Expires of a 423).
    async fn watch_for_at_least(&self, flow: Flow, impu: String, reg_expiry: Instant, floor: u64) {
        if !self.cfg.reg_event {
            return;
        }
        // (Most calls are re-registrations our subscription already covers: they return
        // here without cloning the registration.)
        let want = reg_expiry + REG_EVENT_MARGIN;
        let existing = self
            .subs
            .for_flow(&flow)
            .and_then(|c| self.subs.get(&c).map(|s| (c, s)));
        let (call_id, sub) = match existing {
            Some((_, s)) if s.impu == impu && (s.pending || s.expires_at >= want) => return,
            Some((c, s)) if s.impu == impu && s.remote_target.is_some() => {
                // Atomically: one SUBSCRIBE of a dialog in flight at a time, CSeq + 1.
                match self.subs.begin(&c) {
                    Some(s) => (c, s),
                    None => return,
                }
            }
            other => {
                if let Some((c, _)) = other {
                    self.subs.remove(&c);
                }
                let sub = Subscription {
                    flow,
                    impu: impu.clone(),
                    local_tag: self.random_hex(8),
                    remote_tag: None,
                    remote_target: None,
                    cseq: 1,
                    // Until the S-CSCF's 200 grants more; its NOTIFY may come first.
                    expires_at: Instant::now() + Duration::from_secs(32),
                    granted: Duration::from_secs(32),
                    pending: true,
                };
                let call_id = self.random_hex(16);
                self.subs.put(&call_id, sub.clone());
                (call_id, sub)
            }
        };
        let secs = want
            .saturating_duration_since(Instant::now())
            .as_secs()
            .max(floor);
        let port = self.ep.local_addr().port();
        let me = format!("<sip:{}:{port}>", bracket(&self.cfg.via_host));
        let (ruri, routes, next) = match &sub.remote_target {
            Some(t) => (t.clone(), Vec::new(), t.clone()),
            None => match self
                .regs
                .get(&flow, Instant::now())
                .map(|r| r.service_route)
                .filter(|sr| !sr.is_empty())
            {
                Some(sr) => {
                    let first = sr[0].clone();
                    (impu.clone(), sr, first)
                }
                None => {
                    self.subs.remove(&call_id);
                    return;
                }
            },
        };
        let mut b = ims_sip::RequestBuilder::new("SUBSCRIBE", &ruri);
        for r in &routes {
            b = b.header("Route", r);
        }
        let to = match &sub.remote_tag {
            Some(t) => format!("<{impu}>;tag={t}"),
            None => format!("<{impu}>"),
        };
        let built = b
            .header("Max-Forwards", "70")
            .header("From", &format!("{me};tag={}", sub.local_tag))
            .header("To", &to)
            .header("Call-ID", &call_id)
            .header("CSeq", &format!("{} SUBSCRIBE", sub.cseq))
            .header("Contact", &format!("<sip:{}>", self.ep.local_addr()))
            .header("P-Asserted-Identity", &me)
            .header("Event", "reg")
            .header("Accept", "application/reginfo+xml")
            .header("Expires", &secs.to_string())
            .build();
        let m = match built {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%impu, error = %e, "cannot build the reg event SUBSCRIBE");
                self.subs.remove(&call_id);
                return;
            }
        };
        let target = match self.resolve_route(&next).await {
            Some(Ok(t)) if !t.is_empty() => t[0],
            _ => {
                tracing::warn!(%impu, next = %next, "reg event SUBSCRIBE: the next hop does not resolve");
                self.subs.remove(&call_id);
                return;
            }
        };
        match self.ep.send_request(m, target).await {
            Ok(resp) if resp.status().is_some_and(|s| (200..300).contains(&s)) => {
                let granted = resp.expires().and_then(Result::ok).map_or(secs, u64::from);
                let tag = resp.to_addr().ok().and_then(|a| a.tag().map(str::to_owned));
                let contact = resp
                    .contacts()
                    .flatten()
                    .find_map(|c| c.addr().map(|a| a.uri_str.to_owned()));
                self.subs.update(&call_id, |s| {
                    s.granted = Duration::from_secs(granted);
                    s.expires_at = Instant::now() + s.granted;
                    s.remote_tag = tag.or(s.remote_tag.take());
                    s.remote_target = contact.or(s.remote_target.take());
                    s.pending = false;
                });
                tracing::debug!(%impu, granted, cseq = sub.cseq, "subscribed to the reg event");
            }
            Ok(resp) if resp.status() == Some(423) && floor == 0 => {
                // Interval Too Brief (RFC 6665 §4.1.2.1): the S-CSCF's shortest subscription
                // is longer than the registration; ask once more for its Min-Expires (the
                // registration's end still ends the subscription's use).
                let min = resp
                    .header_str(HeaderName::MinExpires)
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .filter(|m| *m > secs);
                self.subs.remove(&call_id);
                match min {
                    Some(min) => {
                        tracing::info!(%impu, asked = secs, min, "reg event SUBSCRIBE got 423: asking for Min-Expires");
                        Box::pin(self.watch_for_at_least(sub.flow, impu, reg_expiry, min)).await;
                    }
                    None => {
                        tracing::warn!(%impu, "reg event SUBSCRIBE got 423 without a usable Min-Expires");
                    }
                }
            }
            Ok(resp) if resp.status() == Some(481) && sub.remote_target.is_some() => {
                // The S-CSCF no longer knows the dialog: it restarted (its subscriptions live
                // in memory) or dropped it. Subscribe anew at once rather than stay deaf to
                // network deregistrations until the UE's next registration.
                tracing::info!(%impu, "reg event refresh got 481: subscribing anew");
                self.subs.remove(&call_id);
                Box::pin(self.watch(sub.flow, impu, reg_expiry)).await;
            }
            Ok(resp) => {
                tracing::warn!(%impu, status = resp.status().unwrap_or(0), "the S-CSCF refused our reg event subscription");
                self.subs.remove(&call_id);
            }
            Err(e) => {
                tracing::warn!(%impu, error = %e, "reg event SUBSCRIBE got no answer");
                self.subs.remove(&call_id);
            }
        }
    }

    /// Subscribes to the reg event of each registration held at start (restored from the
    /// store), under its default public identity (the first sip: P-Associated-URI, which the
    /// registration made registered), one after the other. A UE whose flow was lost is left
    /// out: it registers again, and that 200 subscribes.
    async fn watch_restored(&self) {
        let now = Instant::now();
        let mut n = 0;
        for r in self.regs.all() {
            if r.flow_lost {
                continue;
            }
            let impu = r.associated.iter().find(|a| a.starts_with("sip:")).cloned();
            if let (Some(impu), Some(expiry)) = (impu, r.expires().filter(|e| *e > now)) {
                self.watch(r.flow, impu, expiry).await;
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(
                registrations = n,
                "reg event subscriptions made again for the restored registrations"
            );
        }
    }

    /// Refreshes the subscriptions past half their granted time whose registration outlives
    /// them (an S-CSCF may grant less than we ask).
    fn refresh_subscriptions(self: &Arc<Self>, now: Instant) {
        for sub in self.subs.due(now) {
            let Some(expiry) = self.regs.get(&sub.flow, now).and_then(|r| r.expires()) else {
                continue;
            };
            if expiry + REG_EVENT_MARGIN > sub.expires_at {
                let inner = self.clone();
                tokio::spawn(async move { inner.watch(sub.flow, sub.impu, expiry).await });
            }
        }
    }

    /// A NOTIFY of one of our reg event subscriptions: contacts it says ended are forgotten,
    /// and a UE left without any loses its registration and its IPsec SAs.
    async fn reg_notify(&self, req: ServerRequest, call_id: String, sub: Subscription) {
        let m = &req.message;
        // RFC 6665 lets a NOTIFY carry no document (a final one, say): nothing ended then.
        let body = m.body();
        let read = if body.iter().all(u8::is_ascii_whitespace) {
            Ok(Vec::new())
        } else {
            terminated_contacts(body)
        };
        let ended = match read {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(source = %req.source, error = %e, "reg event NOTIFY with a document we cannot read");
                return self.reply(&req, 400, "Bad Request (reginfo)").await;
            }
        };
        self.reply(&req, 200, "OK").await;
        let state = m
            .header_str(HeaderName::SubscriptionState)
            .unwrap_or("")
            .trim_start()
            .to_ascii_lowercase();
        if state.starts_with("terminated") {
            self.subs.remove(&call_id);
        } else if sub.remote_tag.is_none() {
            let tag = m.from_addr().ok().and_then(|a| a.tag().map(str::to_owned));
            self.subs.update(&call_id, |s| s.remote_tag = tag);
        }
        if !ended.is_empty() {
            // The S-CSCF notifies the UE's own subscription at the same time; its NOTIFY
            // must still find the UE's flow (and SAs) here.
            tokio::time::sleep(NETWORK_DEREG_GRACE).await;
        }
        for key in ended {
            let Some(flow) = self.regs.flow_for_contact(&key) else {
                continue;
            };
            let Some(reg) = self.regs.drop_contact(&flow, &key) else {
                continue;
            };
            tracing::info!(impi = %reg.impi, impu = %sub.impu, "registration ended by the network (reg event)");
            if reg.ipsec_port_us.is_some()
                && let Some(flows) = self.ipsec.clone()
            {
                let key = flow.addr;
                let _ = tokio::task::spawn_blocking(move || flows.remove(key)).await;
            }
        }
    }

    fn random_hex(&self, bytes: usize) -> String {
        let mut b = [0u8; 16];
        let b = &mut b[..bytes.min(16)];
        if self.rng.fill(b).is_err() {
            // Unique is what a tag must be; the counter is.
            return format!("{:016x}", self.icid.fetch_add(1, Ordering::Relaxed));
        }
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// A request from a registered UE toward the core (§5.2.6.3).
    async fn originating(&self, req: ServerRequest, reg: Registration) {
        // Inside a dialog we record-routed (§5.2.6.3.3 for target refresh and the rest): the
        // UE's route set starts with our entry; the request follows the rest of it.
        if req.message.to_addr().is_ok_and(|t| t.tag().is_some()) {
            let mut m = req.message.clone();
            let ours = self.pop_own_routes(&mut m);
            let next: Option<String> = m
                .name_addrs(HeaderName::Route)
                .next()
                .and_then(Result::ok)
                .map(|n| n.uri_str.to_owned());
            if let (true, Some(next)) = (ours, next) {
                return self.relay(req, m, &next, None).await;
            }
        }
        // A new call: refused at once when the core is behind (overload, the edge refuses).
        let mut unheard = None;
        if req.message.method() == Some(Method::Invite)
            && req.message.to_addr().is_ok_and(|t| t.tag().is_none())
        {
            let (guard, before) = Unheard::enter(&self.invites_unheard);
            let max = self.cfg.max_invites_in_flight;
            if max > 0 && before >= max {
                if !self.calls_overloaded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        unheard = before,
                        "overload: refusing new calls with 503 until fewer than \
                         max_invites_in_flight INVITEs wait for the core"
                    );
                }
                self.metrics.refused(metrics::Refused::Invite);
                return self
                    .reply(&req, 503, "Service Unavailable (overload)")
                    .await;
            }
            if self.calls_overloaded.load(Ordering::Relaxed)
                && self.calls_overloaded.swap(false, Ordering::Relaxed)
            {
                tracing::warn!("overload over: new calls admitted again");
            }
            unheard = Some(guard);
        }
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
                self.record_route(m, "mo", req.local)?;
            }
            Ok(())
        };
        if let Err(e) = edit(&mut m) {
            tracing::info!(error = %e, "request cannot be edited");
            return self.reply(&req, 400, "Bad Request").await;
        }
        let first = reg.service_route[0].clone();
        self.relay(req, m, &first, unheard).await;
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
        let Some((flow, reg)) = self
            .regs
            .flow_for_contact(&key)
            .and_then(|flow| Some((flow, self.regs.get(&flow, Instant::now())?)))
        else {
            tracing::info!(contact = %key, "request for a UE that is not registered here");
            return self.reply(&req, 480, "Temporarily Unavailable").await;
        };
        // Our Route entries are no credential (anyone can write them): only the UE's S-CSCF
        // or the configured core may reach the UE through us (TS 24.229 §5.2.6.4).
        if !self.trusted_toward(req.source.ip(), &reg).await {
            tracing::warn!(source = %req.source, contact = %key, method = m.method_str().unwrap_or("?"),
                "request toward a UE from outside the core (neither its S-CSCF nor core_networks)");
            return self
                .reply(&req, 403, "Forbidden (not from the home network)")
                .await;
        }
        // Its flow did not survive our restart ([`persist`]): no new connection the UE never
        // opened, nothing in clear to a port its SAs protected (RFC 5626 §5.3).
        if reg.flow_lost {
            tracing::info!(contact = %key, impi = %reg.impi, method = m.method_str().unwrap_or("?"),
                "request toward a UE whose flow did not survive the restart: 430");
            return self.reply(&req, 430, "Flow Failed").await;
        }
        // A protected UE: from our protected client port to its protected server port (SA2).
        let protected = reg.ipsec_port_us.map(|port_us| {
            let local = SocketAddr::new(req.local.ip(), self.cfg.ipsec.port_c);
            (SocketAddr::new(flow.addr.ip(), port_us), local)
        });
        if creates_dialog(&m) {
            // Where the UE reaches us: our protected server port for an IPsec UE, else our
            // address of the UE's family.
            let ue_side = match protected {
                Some(_) => SocketAddr::new(req.local.ip(), self.cfg.ipsec.port_s),
                None => self
                    .ep
                    .local_addrs()
                    .into_iter()
                    .find(|a| a.is_ipv4() == flow.addr.is_ipv4())
                    .unwrap_or(req.local),
            };
            if let Err(e) = self.record_route(&mut m, "mt", ue_side) {
                tracing::info!(error = %e, "cannot add Record-Route");
            }
        }
        match protected {
            Some((ue, local)) => {
                let target = Target {
                    addr: ue,
                    transport: flow.transport,
                };
                self.send_from(req, m, target, Some(local), true, None)
                    .await
            }
            None => {
                let target = Target {
                    addr: flow.addr,
                    transport: flow.transport,
                };
                self.send_from(req, m, target, None, true, None).await
            }
        }
    }

    /// Our Record-Route on a dialog-creating request, RFC 5658 double Record-Route: the entry
    /// the core resolves (our name) and, when it differs, the entry the UE uses: `ue_side`,
    /// where the UE reaches us (our protected server port for an IPsec UE). A UE cannot be
    /// expected to resolve our name (linphonec in the lab cannot), and its in-dialog requests
    /// must reach the port its SAs protect. The entry on the UE's side of the list is the
    /// one it reads first: the bottom for a request from it (`mo`, the caller reads the 2xx's
    /// Record-Route from the bottom), the top for a request toward it (`mt`).
    fn record_route(
        &self,
        m: &mut Message,
        user: &str,
        ue_side: SocketAddr,
    ) -> Result<(), ims_sip::Error> {
        let core = self.rr_entry(user, None);
        let ue = Some(self.rr_entry(user, Some(ue_side))).filter(|ue| *ue != core);
        // Prepended in turn, so the second ends on top.
        let order = if user == "mt" {
            [Some(&core), ue.as_ref()]
        } else {
            [ue.as_ref(), Some(&core)]
        };
        for entry in order.into_iter().flatten() {
            m.prepend_header("Record-Route", entry)?;
        }
        Ok(())
    }

    /// `<sip:user@host:port;lr>`: our name and SIP port, or the address `at`.
    fn rr_entry(&self, user: &str, at: Option<SocketAddr>) -> String {
        match at {
            Some(a) => format!("<sip:{user}@{};lr>", a),
            None => format!(
                "<sip:{user}@{}:{};lr>",
                bracket(&self.cfg.via_host),
                self.ep.local_addr().port()
            ),
        }
    }

    /// Whether `source` may send requests toward the UE of `reg`: one of `core_networks`, or
    /// an address its Service-Route's first hop (the S-CSCF) resolves to (cached by the
    /// resolver, as for the UE's own requests).
    async fn trusted_toward(&self, source: IpAddr, reg: &Registration) -> bool {
        if self.core.iter().any(|n| n.contains(&source)) {
            return true;
        }
        match reg.service_route.first() {
            Some(route) => matches!(self.resolve_route(route).await,
                Some(Ok(targets)) if targets.iter().any(|t| t.addr.ip() == source)),
            None => false,
        }
    }

    /// The RFC 3263 targets of a Route value (`<sip:...;lr>`); `None` when it is no SIP URI.
    async fn resolve_route(
        &self,
        route: &str,
    ) -> Option<Result<Vec<Target>, ims_net::dns::ResolveError>> {
        let uri = route.trim().trim_start_matches('<');
        let uri = uri.split('>').next().unwrap_or(uri);
        match Uri::parse(uri) {
            Ok(Uri::Sip(sip)) => Some(
                self.resolver
                    .resolve(&Destination::from_sip_uri(&sip))
                    .await,
            ),
            _ => None,
        }
    }

    /// Sends `m` to the URI's RFC 3263 target and relays the outcome.
    async fn relay(&self, req: ServerRequest, m: Message, uri: &str, unheard: Option<Unheard>) {
        let Some(target) = self.resolve_route(uri).await else {
            return self.reply(&req, 500, "Bad Service-Route").await;
        };
        match target {
            Ok(t) if !t.is_empty() => self.send_from(req, m, t[0], None, false, unheard).await,
            Ok(_) | Err(_) => {
                tracing::warn!(%uri, "the next hop does not resolve");
                self.reply(&req, 504, "Server Time-out").await
            }
        }
    }

    /// Sends `m` to `target` (from our address `local` when given) and relays the outcome.
    /// `flow`: `target` is a UE's registered flow, whose transport is kept whatever the
    /// size of `m` (a UE registered over UDP may not listen on TCP).
    async fn send_from(
        &self,
        req: ServerRequest,
        m: Message,
        target: Target,
        local: Option<SocketAddr>,
        flow: bool,
        unheard: Option<Unheard>,
    ) {
        match m.method() {
            Some(Method::Invite) => {
                let branch = ims_net::proxy::ProxyBranch {
                    message: m,
                    target,
                    local,
                    flow,
                    unheard,
                };
                ims_net::proxy::proxy_invite(&self.ep, &req, vec![branch], "pcscf").await;
            }
            // The ACK of a 2xx (the endpoint absorbs the others; CANCEL never gets here:
            // the endpoint answers it).
            Some(Method::Ack) => {
                let sent = match local {
                    Some(l) => self.ep.forward_stateless_from(m, target, l).await,
                    None => self.ep.forward_stateless(m, target).await,
                };
                if let Err(e) = sent {
                    tracing::info!(error = %e, "forwarding failed");
                }
            }
            _ => match match (local, flow) {
                (_, true) => self.ep.send_request_to_flow(m, target, local).await,
                (Some(l), false) => self.ep.send_request_from(m, target, l).await,
                (None, false) => self.ep.send_request(m, target).await,
            } {
                Ok(mut resp) => {
                    if pop_own_via(&mut resp).is_ok() {
                        self.ep.respond(&req, resp).await;
                    }
                }
                Err(e) => {
                    tracing::info!(error = %e, "next hop failed");
                    let (code, why) = match e {
                        ClientError::Timeout(_) => (408, "Request Timeout"),
                        _ => (503, "Service Unavailable"),
                    };
                    self.reply(&req, code, why).await
                }
            },
        }
    }
}

/// The private identity of a REGISTER (its Authorization username), or "".
fn register_impi(m: &Message) -> String {
    m.auth(HeaderName::Authorization)
        .flatten()
        .find_map(|a| a.username().map(str::to_owned))
        .unwrap_or_default()
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

//! Locating SIP servers, RFC 3263 §4: from a SIP URI's host, optional port and transport to
//! the ordered list of `(address, port, transport)` targets to try.
//!
//! - A numeric host: that address, the given transport (else UDP; TLS for sips) and port
//!   (else 5060; 5061 for TLS).
//! - A name with a port: A/AAAA of the name, the given transport (else UDP).
//! - A name with a transport but no port: SRV for that transport, else A/AAAA on the default port.
//! - A name with neither: NAPTR, keeping the services we speak (`SIP+D2U`, `SIP+D2T`,
//!   `SIPS+D2T`; only `SIPS+` for a sips URI) with flag `s`, in order/preference; each
//!   replacement's SRV records, by priority (then weight, heaviest first). Without NAPTR, SRV
//!   for each transport in turn (`_sips._tcp`, `_sip._tcp`, `_sip._udp` for sips only the first);
//!   without SRV, A/AAAA on the default port over UDP (TLS for sips).
//!
//! SRV targets are resolved to A and AAAA records (IPv4 addresses first, then IPv6); every answer is cached by hickory-resolver
//! for its TTL, so repeated lookups on the request path cost no query. On top of that the whole
//! answer of [`SipResolver::resolve`] (the ordered targets of one destination) is kept until the
//! first of the records it was made of expires, at most [`MAX_CACHED`]: the proxies resolve the
//! same few Route hosts for every request, and going through hickory's cache for the NAPTR,
//! SRV and A/AAAA steps each time cost 7-10% of a CSCF's CPU in the call benchmark
//! (docs/PERFORMANCE.md). Failures are not kept. The RFC 2782 weighted
//! random choice among equal priorities is simplified to a stable heaviest-first order (the lab
//! and tests want determinism); spreading load across equal SRV targets is left to the caller.
//!
//! **Nothing found** says why, for the caller's answer and its one log line: the DNS said
//! that nobody serves the name (NXDOMAIN, REFUSED from a server holding no zone for it, or
//! no record of any type asked: [`ResolveError::NotFound`], a mistyped domain most often), or
//! some query got no answer at all (no reply in time, SERVFAIL:
//! [`ResolveError::Unanswered`], when nothing is known about the name).
//!
//! **Failover** (RFC 3263 §4.3: a client tries the next target when one fails): a caller that
//! got no answer from a target, or could not send to it, says so with
//! [`SipResolver::mark_down`]; for [`DOWN_FOR`] after that, every answer of
//! [`SipResolver::resolve`] lists that address after the others (still listed, so that a
//! destination whose targets are all down is still tried). Without it every request would
//! wait out its timeout on the dead target first. How long to wait before giving a silent
//! target up is the caller's choice (the P-CSCF's `icscf_failover_seconds`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_resolver::Resolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};

/// SIP transports, as RFC 3263 chooses among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// The default port: 5060, or 5061 for TLS.
    pub fn default_port(self) -> u16 {
        if self == Transport::Tls { 5061 } else { 5060 }
    }
    fn srv_prefix(self) -> &'static str {
        match self {
            Transport::Udp => "_sip._udp",
            Transport::Tcp => "_sip._tcp",
            Transport::Tls => "_sips._tcp",
        }
    }
    fn from_naptr_service(s: &[u8], sips: bool) -> Option<Self> {
        match s.to_ascii_uppercase().as_slice() {
            b"SIP+D2U" if !sips => Some(Transport::Udp),
            b"SIP+D2T" if !sips => Some(Transport::Tcp),
            b"SIPS+D2T" => Some(Transport::Tls),
            _ => None,
        }
    }
}

/// One place to send a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub transport: Transport,
}

/// What to locate: the parts of a SIP URI (or of a Route/Path entry) that RFC 3263 reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination<'a> {
    pub host: &'a str,
    pub port: Option<u16>,
    pub transport: Option<Transport>,
    pub sips: bool,
}

impl<'a> Destination<'a> {
    /// What RFC 3263 reads from a SIP URI (or a Route/Path entry): host, port,
    /// `;transport=`, sips. An unknown transport parameter (SCTP, WS) is ignored.
    pub fn from_sip_uri(uri: &ims_sip::SipUri<'a>) -> Self {
        let transport = uri.transport().and_then(|t| {
            if t.eq_ignore_ascii_case("udp") {
                Some(Transport::Udp)
            } else if t.eq_ignore_ascii_case("tcp") {
                Some(Transport::Tcp)
            } else if t.eq_ignore_ascii_case("tls") {
                Some(Transport::Tls)
            } else {
                None
            }
        });
        Destination {
            host: uri.host_str,
            port: uri.port,
            transport,
            sips: uri.secure,
        }
    }
}

/// Why no target was found.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot build the DNS resolver: {0}")]
    Setup(String),
    #[error("`{0}` is not a valid host name")]
    BadName(String),
    /// The DNS answered every query, and no record names a SIP server for `host` (no
    /// such name, a name in no zone the server holds, or no NAPTR, SRV, A or AAAA): nobody
    /// serves it, a mistyped domain most often.
    #[error("no SIP server found for {host}: {detail}")]
    NotFound { host: String, detail: String },
    /// Some query got no answer from the DNS servers (no reply in time, not reachable,
    /// SERVFAIL), and none found a target: nothing is known about `host`.
    #[error("no DNS answer for {host}: {detail}")]
    Unanswered { host: String, detail: String },
}

/// What the queries of one lookup found out besides their records: until when the answer
/// may be kept, and why a query found nothing.
struct Walk {
    /// The expiry of the first record used to expire.
    until: Instant,
    /// The DNS's negative answer (NXDOMAIN, REFUSED, no record of that type), the last seen.
    negative: Option<String>,
    /// A query no DNS server answered, the last seen.
    unanswered: Option<String>,
}

impl Walk {
    /// Notes why `name`'s `kind` query found nothing.
    fn failed(&mut self, name: &str, kind: RecordType, e: &NetError) {
        let negative = match e {
            NetError::Dns(DnsError::NoRecordsFound(n)) => n.response_code != ResponseCode::ServFail,
            NetError::Dns(DnsError::ResponseCode(c)) => matches!(
                c,
                ResponseCode::NXDomain
                    | ResponseCode::Refused
                    | ResponseCode::NotAuth
                    | ResponseCode::NotZone
            ),
            _ => false,
        };
        let why = match e {
            NetError::Dns(DnsError::NoRecordsFound(n)) => {
                format!("{kind} {name}: {}", n.response_code)
            }
            other => format!("{kind} {name}: {other}"),
        };
        tracing::debug!(%why, negative, "DNS query found nothing");
        if negative {
            self.negative = Some(why);
        } else {
            self.unanswered = Some(why);
        }
    }
}

/// The longest a resolved destination is kept (the records' TTLs permitting): it also bounds
/// how long a record that appears later (a NAPTR where there was none) goes unseen.
pub const MAX_CACHED: Duration = Duration::from_secs(60);

/// Destinations kept at most; past it the cache starts again empty.
const CACHE_ENTRIES: usize = 4096;

/// What the cache keeps of a host (by lower-case name): per (port, transport, sips) asked,
/// the targets and until when. Keyed by the name alone so that a lookup borrows the request's
/// host instead of building a key (no allocation per request).
type HostEntries = Vec<((Option<u16>, Option<Transport>, bool), Vec<Target>, Instant)>;

/// An RFC 3263 resolver over given DNS servers.
pub struct SipResolver {
    resolver: Resolver<TokioRuntimeProvider>,
    cache: Mutex<HashMap<String, HostEntries>>,
    /// Targets marked down ([`SipResolver::mark_down`]) and until when.
    down: Mutex<Vec<(SocketAddr, Instant)>>,
    /// Whether `down` may hold anything (no lock per resolve while nothing failed).
    any_down: AtomicBool,
}

/// How long a target marked down ([`SipResolver::mark_down`]) comes after the others: long
/// enough that a dead server costs one caller's wait, not one per request; short enough that
/// a restarted one soon gets its share again.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

impl SipResolver {
    /// A resolver that asks `servers` (UDP, falling back to TCP for truncated answers).
    pub fn new(servers: &[SocketAddr]) -> Result<Self, ResolveError> {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = ResolverConfig::from_parts(None, vec![], name_servers);
        let mut opts = ResolverOpts::default();
        opts.ndots = 0;
        let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| ResolveError::Setup(e.to_string()))?;
        Ok(Self {
            resolver,
            cache: Mutex::new(HashMap::new()),
            down: Mutex::new(Vec::new()),
            any_down: AtomicBool::new(false),
        })
    }

    /// `addr` failed (no answer in time, or it could not be reached): for [`DOWN_FOR`],
    /// [`SipResolver::resolve`] lists it after every other target.
    pub fn mark_down(&self, addr: SocketAddr) {
        let until = Instant::now() + DOWN_FOR;
        if let Ok(mut down) = self.down.lock() {
            match down.iter_mut().find(|(a, _)| *a == addr) {
                Some(e) => e.1 = until,
                None => down.push((addr, until)),
            }
            self.any_down.store(true, Ordering::Release);
        }
        tracing::warn!(%addr, seconds = DOWN_FOR.as_secs(), "next hop marked down: tried last for a while");
    }

    /// Moves the targets marked down after the others, keeping the order within each part.
    fn down_last(&self, targets: &mut [Target]) {
        if !self.any_down.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut down) = self.down.lock() else {
            return;
        };
        let now = Instant::now();
        down.retain(|(_, until)| *until > now);
        if down.is_empty() {
            self.any_down.store(false, Ordering::Release);
            return;
        }
        targets.sort_by_key(|t| down.iter().any(|(a, _)| *a == t.addr));
    }

    fn fqdn(name: &str) -> String {
        if name.ends_with('.') {
            name.to_owned()
        } else {
            format!("{name}.")
        }
    }

    async fn addresses(&self, host: &str, walk: &mut Walk) -> Vec<IpAddr> {
        match self.resolver.lookup_ip(Self::fqdn(host)).await {
            Ok(l) => {
                walk.until = walk.until.min(l.valid_until());
                // hickory asks A and AAAA concurrently; give a stable order, IPv4 first.
                let mut v: Vec<IpAddr> = l.iter().collect();
                v.sort_by_key(IpAddr::is_ipv6);
                v
            }
            Err(e) => {
                walk.failed(host, RecordType::A, &e);
                Vec::new()
            }
        }
    }

    /// SRV records of `name`, by priority then weight (heaviest first), as (target, port).
    async fn srv(&self, name: &str, walk: &mut Walk) -> Vec<(String, u16)> {
        let lookup = match self
            .resolver
            .lookup(Self::fqdn(name), RecordType::SRV)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                walk.failed(name, RecordType::SRV, &e);
                return Vec::new();
            }
        };
        walk.until = walk.until.min(lookup.valid_until());
        let mut v: Vec<(u16, u16, String, u16)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.priority, s.weight, s.target.to_ascii(), s.port)),
                _ => None,
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        v.into_iter().map(|(_, _, t, p)| (t, p)).collect()
    }

    async fn srv_targets(
        &self,
        name: &str,
        transport: Transport,
        out: &mut Vec<Target>,
        walk: &mut Walk,
    ) {
        for (target, port) in self.srv(name, walk).await {
            for ip in self.addresses(&target, walk).await {
                out.push(Target {
                    addr: SocketAddr::new(ip, port),
                    transport,
                });
            }
        }
    }

    /// The ordered targets for `dest` (RFC 3263 §4.1-4.2), those marked down last.
    pub async fn resolve(&self, dest: &Destination<'_>) -> Result<Vec<Target>, ResolveError> {
        let mut targets = self.resolve_in_order(dest).await?;
        self.down_last(&mut targets);
        Ok(targets)
    }

    /// [`SipResolver::resolve`] before the targets marked down are moved.
    async fn resolve_in_order(&self, dest: &Destination<'_>) -> Result<Vec<Target>, ResolveError> {
        let host = dest.host.trim_start_matches('[').trim_end_matches(']');
        let default_transport = if dest.sips {
            Transport::Tls
        } else {
            Transport::Udp
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            let transport = dest.transport.unwrap_or(default_transport);
            let port = dest.port.unwrap_or(transport.default_port());
            return Ok(vec![Target {
                addr: SocketAddr::new(ip, port),
                transport,
            }]);
        }
        if host.is_empty() || host.contains(' ') {
            return Err(ResolveError::BadName(dest.host.to_owned()));
        }
        let name: std::borrow::Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            host.to_ascii_lowercase().into()
        } else {
            host.into()
        };
        let key = (dest.port, dest.transport, dest.sips);
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock()
            && let Some((_, targets, _)) = cache
                .get(name.as_ref())
                .and_then(|e| e.iter().find(|(k, _, until)| *k == key && *until > now))
        {
            return Ok(targets.clone());
        }
        let mut walk = Walk {
            until: now + MAX_CACHED,
            negative: None,
            unanswered: None,
        };
        let found = self.lookup(dest, host, default_transport, &mut walk).await;
        let until = walk.until;
        if let Ok(targets) = &found
            && until > now
            && let Ok(mut cache) = self.cache.lock()
        {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            let entries = cache.entry(name.into_owned()).or_default();
            entries.retain(|(k, _, _)| *k != key);
            entries.push((key, targets.clone(), until));
        }
        found
    }

    /// [`SipResolver::resolve`] for a host name, through DNS; `walk.until` is lowered to
    /// the expiry of every record used. Nothing found is [`ResolveError::Unanswered`] when a
    /// query got no answer (the name may exist), else [`ResolveError::NotFound`].
    async fn lookup(
        &self,
        dest: &Destination<'_>,
        host: &str,
        default_transport: Transport,
        walk: &mut Walk,
    ) -> Result<Vec<Target>, ResolveError> {
        let not_found = |detail: &str, walk: &Walk| match &walk.unanswered {
            Some(why) => ResolveError::Unanswered {
                host: host.to_owned(),
                detail: why.clone(),
            },
            None => ResolveError::NotFound {
                host: host.to_owned(),
                detail: match &walk.negative {
                    Some(why) => format!("{detail} (last: {why})"),
                    None => detail.to_owned(),
                },
            },
        };
        let mut out = Vec::new();
        if let Some(port) = dest.port {
            let transport = dest.transport.unwrap_or(default_transport);
            for ip in self.addresses(host, walk).await {
                out.push(Target {
                    addr: SocketAddr::new(ip, port),
                    transport,
                });
            }
            return if out.is_empty() {
                Err(not_found("no A/AAAA record", walk))
            } else {
                Ok(out)
            };
        }
        if let Some(transport) = dest.transport {
            self.srv_targets(
                &format!("{}.{host}", transport.srv_prefix()),
                transport,
                &mut out,
                walk,
            )
            .await;
        } else {
            self.naptr_targets(host, dest.sips, &mut out, walk).await;
            if out.is_empty() {
                let order: &[Transport] = if dest.sips {
                    &[Transport::Tls]
                } else {
                    &[Transport::Tls, Transport::Tcp, Transport::Udp]
                };
                for &t in order {
                    self.srv_targets(&format!("{}.{host}", t.srv_prefix()), t, &mut out, walk)
                        .await;
                }
            }
        }
        if out.is_empty() {
            let transport = dest.transport.unwrap_or(default_transport);
            for ip in self.addresses(host, walk).await {
                out.push(Target {
                    addr: SocketAddr::new(ip, transport.default_port()),
                    transport,
                });
            }
        }
        if out.is_empty() {
            Err(not_found("no NAPTR, SRV or A/AAAA record", walk))
        } else {
            Ok(out)
        }
    }

    async fn naptr_targets(&self, host: &str, sips: bool, out: &mut Vec<Target>, walk: &mut Walk) {
        let lookup = match self
            .resolver
            .lookup(Self::fqdn(host), RecordType::NAPTR)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                walk.failed(host, RecordType::NAPTR, &e);
                return;
            }
        };
        walk.until = walk.until.min(lookup.valid_until());
        let mut rules: Vec<(u16, u16, Transport, String)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::NAPTR(n) if n.flags.eq_ignore_ascii_case(b"s") => {
                    Transport::from_naptr_service(&n.services, sips)
                        .map(|t| (n.order, n.preference, t, n.replacement.to_ascii()))
                }
                _ => None,
            })
            .collect();
        rules.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        for (_, _, transport, replacement) in rules {
            self.srv_targets(&replacement, transport, out, walk).await;
        }
    }
}

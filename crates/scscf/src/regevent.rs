//! The `reg` event package (RFC 3680 over RFC 6665) as the S-CSCF serves it, TS 24.229
//! §5.4.2.1: [`RegEvents`] answers SUBSCRIBE requests for the registration state of a public
//! user identity and sends the NOTIFY requests that follow, over `ims_net`'s [`SipEndpoint`].
//!
//! # SUBSCRIBE, step by step (§5.4.2.1.1)
//! 1. The request is well formed (400), its `Event` is `reg` (else, or without `Event`, 489
//!    Bad Event with `Allow-Events: reg`), an `Accept` header, when present, admits
//!    `application/reginfo+xml` (406), `Expires` is 0 or at least `subscribe_min_expires`
//!    (423 with Min-Expires); it asks for [`DEFAULT_EXPIRES`] when it names none (RFC 3680
//!    §5.4), and is granted at most `subscribe_max_expires`.
//! 2. Step 0: the resource is the Request-URI's identity, or the To identity, when that one is
//!    registered (explicitly or implicitly) here; when neither is, **480 Temporarily
//!    Unavailable**, as step 0 prescribes for a URI "for which currently no binding exists".
//!    (403 is kept for a subscriber that is not allowed; 404 would claim the user does not
//!    exist, which we cannot know: another S-CSCF may serve them.)
//! 3. Step 1, authorisation (403 otherwise). The subscriber is the identity in
//!    P-Asserted-Identity (NOTE 1: the S-CSCF trusts it, the P-CSCF having asserted it), or
//!    the From URI when the request carries none (requests from inside the trust domain that
//!    assert nothing). It may subscribe when it is
//!    - one of the user's own public identities that are not barred: the implicit
//!      registration set of the registration and every non-barred identity of the user's
//!      IMSSubscription (the HSS's User-Data); or
//!    - an entity on the Path of one of the registration's contacts (the P-CSCF the UE is
//!      attached to): same host, same port (5060 when not written; 5061 for `sips`), the
//!      user part and parameters ignored (`<sip:pcscf1.vims.net>` matches
//!      `<sip:term@pcscf1.vims.net;lr>`).
//!
//!    The third kind of §5.4.2.1.1 (the ASs of the initial filter criteria) is not
//!    recognised yet: the S-CSCF does not read iFCs.
//! 4. The subscription is a dialog (RFC 6665 §4.1.2.1, RFC 3261 §12.1.1): Call-ID, the
//!    subscriber's tag, a fresh tag of ours, the first Contact as the remote target, the
//!    Record-Route URIs in order as the route set, the `Event` value (with its `id`). The
//!    answer is 200 with `Expires` (the granted interval), `Contact: <sip:our host:port>`
//!    and our To tag; then the first NOTIFY carries the full state (with `Expires: 0`, a
//!    fetch, it is also the last: `terminated;reason=timeout`).
//! 5. A SUBSCRIBE inside the dialog (its To tag ours) refreshes it (200 and a full NOTIFY),
//!    or ends it with `Expires: 0` (a NOTIFY `terminated;reason=timeout`); it may change the
//!    remote target. An unknown dialog gets 481, a CSeq not above the last one 500.
//!
//! # NOTIFY
//! Every NOTIFY carries the full state (RFC 3680 §5.3 allows it, `state="full"`): a
//! `<registration aor id state>` for every identity of the resource's implicit registration
//! set, each with a `<contact id state event expires callid cseq>` and its `<uri>` for every
//! contact; contacts that the triggering change removed are listed once more as
//! `state="terminated"` with the event that removed them. The document `version` starts at 0
//! and grows by one per NOTIFY of the subscription; the CSeq grows with it.
//! `Subscription-State` is `active;expires=<seconds left>`, or `terminated;reason=noresource`
//! when the registration is gone (its last NOTIFY: registrations `terminated`), or
//! `terminated;reason=timeout` when the subscription expires or is ended by the subscriber.
//!
//! A change whose outcome the subscriber already knows (the same contacts with the same
//! expiries as in its last NOTIFY: an event from before it subscribed, delivered late) sends
//! nothing.
//!
//! Contact events: `registered` (a first registration, and every contact the change did not
//! touch), `created` / `refreshed` / `shortened` (a re-registration adding a contact,
//! extending one, or shortening one), `unregistered` (the UE removed it), `expired`,
//! `deactivated` (the HSS's RTR: the UE may register again; the registrar's [`RegEvent`] does
//! not carry the RTR reason that would make it `rejected`).
//!
//! The NOTIFYs of one subscription go one at a time, in order (RFC 6665 §4.2.2: the next
//! waits for the final response to the previous one): each subscription has a queue and at
//! most one task draining it. A 481, one of the other responses RFC 6665 §4.2.2 lists (404,
//! 405, 410, 416, 480–485, 489, 501, 604), a timeout (Timer F) or a transport failure removes
//! the subscription.
//!
//! Where a NOTIFY goes: the next hop is the first URI of the route set (or the remote target
//! when there is none), RFC 3261 §12.2.1.1 (a strict router first in the route set is the
//! Request-URI, the remote target the last Route). A numeric host is used as it is (port 5060
//! when not written, transport from `;transport=`, UDP by default); a host name is resolved
//! (RFC 3263) through the S-CSCF's DNS servers (`dns`) when it has any. Only a host name that
//! does not resolve (or no resolver) falls back to the address the SUBSCRIBE came from (its
//! top Via's `received`/`rport`, the neighbour that built the route towards us, the same
//! transport), then to a numeric remote target. Resolving matters when the SUBSCRIBE came
//! through an I-CSCF: Kamailio's P-CSCF sends its reg event SUBSCRIBE to the public identity
//! (so through the home network's I-CSCF, which does not stay in the path) with the Contact
//! `sip:<its FQDN>:5060`; the SUBSCRIBE's source is then the I-CSCF, not the subscriber.
//!
//! # Registration changes
//! A task follows the registrar's broadcast ([`Registrar::subscribe`]): each [`RegEvent`]
//! queues a NOTIFY for every subscription whose resource is one of the event's identities
//! (the registered IMPU and its implicit set); when no contact is left, that NOTIFY is the
//! last (`noresource`). If the task falls behind the broadcast, every subscription is
//! brought up to date from the registrar (a full NOTIFY, or the last one when its
//! registration has gone). A timer ([`SWEEP_INTERVAL`]) ends expired subscriptions.
//!
//! # State
//! Subscriptions live in [`SHARDS`] mutex-guarded maps chosen by a hash of Call-ID and our
//! tag, with an index from the resource (lowercase) to its subscriptions in as many shards.
//! No lock is held across an `.await`; the NOTIFY is built under the shard lock and sent
//! after it is released. Subscriptions are kept in memory only: after a restart the
//! subscribers find out by their refresh (481) and subscribe again.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use ims_net::dns::{Destination, SipResolver, Target, Transport};
use ims_net::endpoint::{SipEndpoint, pop_own_via};
use ims_sip::{HeaderName, Message, Method, NameAddr, RequestBuilder, Uri, text};
use ims_store::RegistrationRecord;
use ring::rand::SystemRandom;
use tokio::sync::broadcast;

use crate::registrar::{RegEvent, RegEventKind, Registrar};
use crate::reply::{new_tag, respond};
use crate::userdata::same_uri;

/// The event package.
pub const EVENT_PACKAGE: &str = "reg";

/// The body type of the NOTIFYs (RFC 3680 §5.2).
pub const CONTENT_TYPE: &str = "application/reginfo+xml";

/// The XML namespace of `reginfo` documents.
pub const NAMESPACE: &str = "urn:ietf:params:xml:ns:reginfo";

/// The subscription interval asked for when the SUBSCRIBE names none (RFC 3680 §5.4),
/// before `subscribe_max_expires` cuts it down.
pub const DEFAULT_EXPIRES: u32 = 3761;

/// Number of state shards.
pub const SHARDS: usize = 64;

/// How often the timer looks for expired subscriptions.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Responses to a NOTIFY after which the subscription is gone (RFC 6665 §4.2.2).
const FATAL: &[u16] = &[
    404, 405, 410, 416, 480, 481, 482, 483, 484, 485, 489, 501, 604,
];

/// Identifies one subscription: the dialog (Call-ID, our tag) and the `Event` `id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SubKey {
    call_id: String,
    local_tag: String,
    event_id: Option<String>,
}

/// A registration change, as a NOTIFY reports it.
#[derive(Debug, Clone)]
struct Change {
    kind: RegEventKind,
    /// The contacts the change is about.
    contacts: Vec<String>,
    /// The implicit registration set of the event.
    impus: Vec<String>,
    /// The registrar's sequence number of the event ([`RegEvent::seq`]).
    seq: u64,
}

/// One NOTIFY to send.
#[derive(Debug, Clone)]
struct Job {
    change: Option<Change>,
    /// The last NOTIFY: `Subscription-State: terminated;reason=<this>`.
    terminate: Option<&'static str>,
}

struct Subscription {
    /// The identity subscribed to.
    resource: String,
    /// Its implicit registration set as last notified.
    impus: Vec<String>,
    /// The subscriber's tag (the dialog's Call-ID and our tag are in its [`SubKey`]).
    remote_tag: String,
    /// The SUBSCRIBE's To value (our From, once tagged).
    local_uri: String,
    /// The SUBSCRIBE's From value, with its tag (our To).
    remote: String,
    /// Shared with the other subscriptions that name the same one ([`Shared`]).
    remote_target: Arc<str>,
    /// Shared likewise: a P-CSCF's subscriptions all carry the same route set.
    route_set: Arc<[String]>,
    /// The `Event` value the NOTIFYs carry (`reg`, with `;id=` when the SUBSCRIBE had one).
    event: Arc<str>,
    local_cseq: u32,
    remote_cseq: u32,
    version: u32,
    expires_at: Instant,
    /// Where the SUBSCRIBE came from (top Via `received`/`rport`).
    source: Option<Target>,
    /// Contacts as last notified (lowercase URI, expiry in ms since the epoch): a vector,
    /// as a UE has one or two contacts.
    notified: Vec<(String, i64)>,
    queue: VecDeque<Job>,
    /// A task is sending the queue (or will be, once the 200 is out).
    draining: bool,
    /// The registrar's event count when the subscription was made: its first NOTIFY (full
    /// state, read later) already holds every change up to this one, so events that old,
    /// delivered late, are not notified again.
    since: u64,
    /// The last NOTIFY is queued: nothing more is, and the index no longer lists it.
    ending: bool,
}

/// Subscriptions are boxed: a map's spare buckets then cost a pointer each, not a whole
/// subscription (issue #16: ≤ 2 KiB per registered UE, most of which have one).
type Shard = Mutex<HashMap<Key, Box<Subscription>>>;

/// A subscription's key, shared by its map entry, the index and the tasks that drain it.
type Key = Arc<SubKey>;

struct Inner {
    registrar: Registrar,
    ep: SipEndpoint,
    /// Our Contact (`<sip:host:port>`).
    contact: String,
    min_expires: u32,
    max_expires: u32,
    rng: SystemRandom,
    subs: Vec<Shard>,
    /// Values many subscriptions share (remote target, route set, event).
    shared: Shared,
    /// Resource (lowercase) → its subscriptions.
    index: Vec<Mutex<HashMap<String, Vec<Key>>>>,
    /// Resolves a next hop named by a host name (the S-CSCF's `dns`), when there is one.
    resolver: Option<Arc<SipResolver>>,
}

/// Where a NOTIFY goes: its next hop's URI, and where to send it when that names no address
/// and does not resolve.
struct Hop {
    uri: String,
    fallback: Option<Target>,
}

/// At most this many distinct values of each kind are shared; past it a value is kept by
/// its subscription alone, so odd Contacts cannot grow the table without bound.
const SHARED_MAX: usize = 4096;

/// One copy of the values that every subscription from the same P-CSCF repeats (its
/// Contact, its Record-Route set, the `Event` value): issue #16 asks for at most 2 KiB per
/// registered UE at the S-CSCF, and each registered UE has a subscription of its P-CSCF's.
#[derive(Default)]
struct Shared {
    texts: Mutex<std::collections::HashSet<Arc<str>>>,
    routes: Mutex<std::collections::HashSet<Arc<[String]>>>,
}

impl Shared {
    fn text(&self, v: &str) -> Arc<str> {
        let mut set = lock(&self.texts);
        if let Some(a) = set.get(v) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(v);
        if set.len() < SHARED_MAX {
            set.insert(a.clone());
        }
        a
    }

    fn routes(&self, v: Vec<String>) -> Arc<[String]> {
        let mut set = lock(&self.routes);
        if let Some(a) = set.get(v.as_slice()) {
            return a.clone();
        }
        let a: Arc<[String]> = Arc::from(v);
        if set.len() < SHARED_MAX {
            set.insert(a.clone());
        }
        a
    }
}

/// The S-CSCF's `reg` event notifier. Clone it freely; clones share the state.
#[derive(Clone)]
pub struct RegEvents {
    inner: Arc<Inner>,
}

/// The first NOTIFY of a subscription (or of a refresh), held back until the 200 to the
/// SUBSCRIBE is on its way: hand it to [`RegEvents::start_notifying`] then.
#[must_use = "the NOTIFYs of the subscription wait for start_notifying"]
#[derive(Debug)]
pub struct NotifyStart(Key);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn shard_of(h: &impl Hash) -> usize {
    let mut s = std::collections::hash_map::DefaultHasher::new();
    h.hash(&mut s);
    (s.finish() % SHARDS as u64) as usize
}

fn now_ms() -> i64 {
    ims_net::clock::unix_ms_now()
}

/// FNV-1a: stable `id`s for registrations and contacts (the same in every NOTIFY and
/// across restarts).
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().map(|b| b.to_ascii_lowercase()).chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A header value on one line (a folded value from the wire has CR LF in it).
fn one_line(s: &str) -> String {
    s.split(['\r', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// XML text and attribute escaping.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// What RFC 3261 §18 needs to send to a SIP URI with a numeric host.
fn numeric_target(uri: &str) -> Option<Target> {
    let Ok(Uri::Sip(u)) = Uri::parse(uri) else {
        return None;
    };
    let ip = u.host.ip()?;
    let transport = match u.transport() {
        Some(t) if t.eq_ignore_ascii_case("tcp") => Transport::Tcp,
        Some(t) if t.eq_ignore_ascii_case("tls") => Transport::Tls,
        _ if u.secure => Transport::Tls,
        _ => Transport::Udp,
    };
    let port = u.port.unwrap_or_else(|| transport.default_port());
    Some(Target {
        addr: SocketAddr::new(ip, port),
        transport,
    })
}

/// Where the request came from: its top Via (`received` and `rport` as the transport layer
/// completed them), with the transport it names.
fn via_source(req: &Message) -> Option<Target> {
    ims_net::endpoint::via_target(&req.top_via().ok()?)
}

/// Same host and port (the default port when not written); user part and parameters ignored.
fn same_host(a: &Uri<'_>, b: &Uri<'_>) -> bool {
    match (a, b) {
        (Uri::Sip(a), Uri::Sip(b)) => {
            let port =
                |u: &ims_sip::SipUri<'_>| u.port.unwrap_or(if u.secure { 5061 } else { 5060 });
            a.host_str.eq_ignore_ascii_case(b.host_str) && port(a) == port(b)
        }
        _ => false,
    }
}

/// A refusal of a SUBSCRIBE.
struct Refusal {
    status: u16,
    reason: String,
    headers: Vec<(&'static str, String)>,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }
    fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// The checked parts of a SUBSCRIBE that every case needs.
struct Checked {
    call_id: String,
    cseq: u32,
    to_tag: Option<String>,
    event: String,
    event_id: Option<String>,
    /// Requested interval (0: fetch or unsubscribe).
    expires: u32,
    /// The first Contact's URI.
    contact: Option<String>,
}

/// One contact in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DocContact {
    uri: String,
    active: bool,
    event: &'static str,
    expires: i64,
    callid: Option<String>,
    cseq: Option<i64>,
}

/// A `reginfo` document in full state: every identity of `impus` with the same contacts.
fn reginfo(version: u32, impus: &[String], active: bool, contacts: &[DocContact]) -> String {
    let mut x = String::with_capacity(256 + impus.len() * (160 + contacts.len() * 200));
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<reginfo xmlns=\"{NAMESPACE}\" version=\"{version}\" state=\"full\">\n"
    ));
    for aor in impus {
        x.push_str(&format!(
            "  <registration aor=\"{}\" id=\"r{:016x}\" state=\"{}\">\n",
            esc(aor),
            fnv(&[aor]),
            if active { "active" } else { "terminated" }
        ));
        for c in contacts {
            x.push_str(&format!(
                "    <contact id=\"c{:016x}\" state=\"{}\" event=\"{}\" expires=\"{}\"",
                fnv(&[aor, &c.uri]),
                if c.active { "active" } else { "terminated" },
                c.event,
                c.expires.max(0)
            ));
            if let Some(id) = &c.callid {
                x.push_str(&format!(" callid=\"{}\"", esc(id)));
            }
            if let Some(n) = c.cseq {
                x.push_str(&format!(" cseq=\"{n}\""));
            }
            x.push_str(&format!(
                ">\n      <uri>{}</uri>\n    </contact>\n",
                esc(&c.uri)
            ));
        }
        x.push_str("  </registration>\n");
    }
    x.push_str("</reginfo>\n");
    x
}

/// The contact event of a removal.
fn removal_event(kind: RegEventKind) -> &'static str {
    match kind {
        RegEventKind::Expired => "expired",
        RegEventKind::Terminated => "deactivated",
        RegEventKind::Deregistered | RegEventKind::Registered | RegEventKind::Refreshed => {
            "unregistered"
        }
    }
}

/// The implicit set of a registration, its IMPU first.
fn set_of(rec: &RegistrationRecord) -> Vec<String> {
    let mut out = vec![rec.impu.clone()];
    for a in &rec.associated_uris {
        if !out.iter().any(|o| same_uri(o, a)) {
            out.push(a.clone());
        }
    }
    out
}

/// The registration's contacts and expiries are exactly those last notified to `sub`.
fn already_notified(sub: &Subscription, rec: &RegistrationRecord) -> bool {
    rec.bindings.len() == sub.notified.len()
        && rec
            .bindings
            .iter()
            .all(|b| notified_at(sub, &b.contact_uri.to_ascii_lowercase()) == Some(b.expires_at))
}

/// The expiry last notified to `sub` for contact `k` (lowercase).
fn notified_at(sub: &Subscription, k: &str) -> Option<i64> {
    sub.notified.iter().find(|(c, _)| c == k).map(|(_, e)| *e)
}

/// The document of one NOTIFY of `sub`, and whether the registration is still active.
/// Updates what `sub` remembers having notified.
fn document_for(
    sub: &mut Subscription,
    job: &Job,
    snapshot: Option<&RegistrationRecord>,
    version: u32,
    now: i64,
) -> String {
    let gone = job.terminate == Some("noresource");
    match snapshot {
        Some(rec) if !gone => {
            let impus = set_of(rec);
            let mut contacts = Vec::new();
            for b in &rec.bindings {
                let k = b.contact_uri.to_ascii_lowercase();
                let touched = job.change.as_ref().is_some_and(|c| {
                    c.contacts
                        .iter()
                        .any(|t| t.eq_ignore_ascii_case(&b.contact_uri))
                });
                let event = match (&job.change, touched) {
                    (Some(c), true) if c.kind == RegEventKind::Refreshed => {
                        match notified_at(sub, &k) {
                            None => "created",
                            Some(old) if b.expires_at < old => "shortened",
                            Some(_) => "refreshed",
                        }
                    }
                    _ => "registered",
                };
                contacts.push(DocContact {
                    uri: b.contact_uri.clone(),
                    active: true,
                    event,
                    expires: ((b.expires_at - now).max(0) + 999) / 1000,
                    callid: Some(b.call_id.clone()),
                    cseq: Some(b.cseq),
                });
            }
            if let Some(c) = &job.change {
                for removed in &c.contacts {
                    if !rec
                        .bindings
                        .iter()
                        .any(|b| b.contact_uri.eq_ignore_ascii_case(removed))
                        && matches!(
                            c.kind,
                            RegEventKind::Deregistered
                                | RegEventKind::Expired
                                | RegEventKind::Terminated
                        )
                    {
                        contacts.push(DocContact {
                            uri: removed.clone(),
                            active: false,
                            event: removal_event(c.kind),
                            expires: 0,
                            callid: None,
                            cseq: None,
                        });
                    }
                }
            }
            sub.notified = rec
                .bindings
                .iter()
                .map(|b| (b.contact_uri.to_ascii_lowercase(), b.expires_at))
                .collect();
            sub.impus.clone_from(&impus);
            let active = !rec.bindings.is_empty();
            reginfo(version, &impus, active, &contacts)
        }
        _ => {
            // The registration is gone: what the change (if any) says was removed.
            let (impus, contacts) = match &job.change {
                Some(c) => (
                    if c.impus.is_empty() {
                        sub.impus.clone()
                    } else {
                        c.impus.clone()
                    },
                    c.contacts
                        .iter()
                        .map(|u| DocContact {
                            uri: u.clone(),
                            active: false,
                            event: removal_event(c.kind),
                            expires: 0,
                            callid: None,
                            cseq: None,
                        })
                        .collect(),
                ),
                None => (sub.impus.clone(), Vec::new()),
            };
            sub.notified.clear();
            reginfo(version, &impus, false, &contacts)
        }
    }
}

impl RegEvents {
    /// The notifier of `registrar`'s registrations, sending over `ep`. Starts the task that
    /// follows the registrar's events and the expiry timer (both end when the last clone is
    /// dropped). The limits are the configuration's `subscribe_min_expires` and
    /// `subscribe_max_expires`.
    pub fn start(registrar: Registrar, ep: SipEndpoint) -> RegEvents {
        RegEvents::start_resolving(registrar, ep, None)
    }

    /// As [`RegEvents::start`], resolving next hops named by a host name with `resolver`
    /// (see the module docs).
    pub fn start_resolving(
        registrar: Registrar,
        ep: SipEndpoint,
        resolver: Option<Arc<SipResolver>>,
    ) -> RegEvents {
        let cfg = registrar.config();
        let (min_expires, max_expires) = (cfg.subscribe_min_expires, cfg.subscribe_max_expires);
        let contact = format!("<sip:{}>", ep.sent_by());
        let events = registrar.subscribe();
        let inner = Arc::new(Inner {
            registrar,
            ep,
            contact,
            min_expires,
            max_expires,
            rng: SystemRandom::new(),
            subs: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            shared: Shared::default(),
            index: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            resolver,
        });
        tokio::spawn(follow(Arc::downgrade(&inner), events));
        tokio::spawn(timer(Arc::downgrade(&inner)));
        RegEvents { inner }
    }

    /// Our Contact in the 200 and the NOTIFYs (`<sip:host:port>`).
    pub fn contact(&self) -> &str {
        &self.inner.contact
    }

    /// Subscriptions held (for metrics and tests).
    pub fn subscription_count(&self) -> usize {
        self.inner.subs.iter().map(|s| lock(s).len()).sum()
    }

    /// The resources (subscribed identities) of the subscriptions held, sorted.
    pub fn resources(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .inner
            .subs
            .iter()
            .flat_map(|s| {
                lock(s)
                    .values()
                    .map(|v| v.resource.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    fn shard(&self, key: &SubKey) -> &Shard {
        &self.inner.subs[shard_of(&(&key.call_id, &key.local_tag))]
    }

    fn index_add(&self, resource: &str, key: &Key) {
        let k = resource.to_ascii_lowercase();
        lock(&self.inner.index[shard_of(&k)])
            .entry(k)
            .or_insert_with(|| Vec::with_capacity(1))
            .push(key.clone());
    }

    fn index_remove(&self, resource: &str, key: &Key) {
        let k = resource.to_ascii_lowercase();
        let mut idx = lock(&self.inner.index[shard_of(&k)]);
        if let Some(v) = idx.get_mut(&k) {
            v.retain(|x| x != key);
            if v.is_empty() {
                idx.remove(&k);
            }
        }
    }

    fn index_get(&self, resource: &str) -> Vec<Key> {
        let k = resource.to_ascii_lowercase();
        lock(&self.inner.index[shard_of(&k)])
            .get(&k)
            .cloned()
            .unwrap_or_default()
    }

    // ------------------------------------------------------------------------------------
    // SUBSCRIBE

    /// Handles one SUBSCRIBE: the response to send, and the first NOTIFY to start once it is
    /// sent ([`RegEvents::start_notifying`]).
    pub fn handle_subscribe(&self, req: &Message) -> (Message, Option<NotifyStart>) {
        let tag = new_tag(&self.inner.rng);
        match self.subscribe(req, &tag) {
            Ok((resp, start)) => (resp, start),
            Err(r) => {
                tracing::info!(
                    status = r.status,
                    reason = %r.reason,
                    call_id = req.call_id().unwrap_or("-"),
                    "SUBSCRIBE refused"
                );
                (respond(req, r.status, &r.reason, &tag, &r.headers), None)
            }
        }
    }

    /// Starts sending the queued NOTIFYs of a subscription (in a task of their own).
    pub fn start_notifying(&self, start: NotifyStart) {
        tokio::spawn(self.clone().drain(start.0));
    }

    fn check(&self, req: &Message) -> Result<Checked, Refusal> {
        if req.method() != Some(Method::Subscribe) {
            return Err(Refusal::new(405, "Method Not Allowed").with("Allow", "SUBSCRIBE"));
        }
        req.check_request()
            .map_err(|e| Refusal::new(e.status(), e.reason()))?;
        let bad_event =
            || Refusal::new(489, "Bad Event").with("Allow-Events", EVENT_PACKAGE.to_owned());
        let event = req.header_str(HeaderName::Event).ok_or_else(bad_event)?;
        let event = one_line(event);
        let (package, params) = match event.find(';') {
            Some(i) => (text::trim(&event[..i]), &event[i..]),
            None => (text::trim(&event), ""),
        };
        if !package.eq_ignore_ascii_case(EVENT_PACKAGE) {
            return Err(bad_event());
        }
        let event_id = text::params(params).get("id").flatten().map(str::to_owned);
        let accepts = req
            .values(HeaderName::Accept)
            .filter_map(Result::ok)
            .any(|a| {
                let t = text::trim(a.split(';').next().unwrap_or(a));
                t.eq_ignore_ascii_case(CONTENT_TYPE)
                    || t.eq_ignore_ascii_case("application/*")
                    || t == "*/*"
            });
        if req.header(HeaderName::Accept).is_some() && !accepts {
            return Err(Refusal::new(406, "Not Acceptable").with("Accept", CONTENT_TYPE));
        }
        let expires = match req.expires() {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(Refusal::new(400, e.reason())),
            None => DEFAULT_EXPIRES,
        };
        if expires != 0 && expires < self.inner.min_expires {
            return Err(Refusal::new(423, "Interval Too Brief")
                .with("Min-Expires", self.inner.min_expires.to_string()));
        }
        let mut contact = None;
        for c in req.contacts() {
            match c {
                Ok(ims_sip::Contact::Addr(a)) if contact.is_none() => {
                    if !matches!(a.uri, Uri::Sip(_)) {
                        return Err(Refusal::new(400, "Bad Request (Contact is not a SIP URI)"));
                    }
                    contact = Some(a.uri_str.to_owned());
                }
                Ok(ims_sip::Contact::Star) => {
                    return Err(Refusal::new(400, "Bad Request (Contact: * in a SUBSCRIBE)"));
                }
                Ok(_) => {}
                Err(e) => return Err(Refusal::new(400, e.reason())),
            }
        }
        let to = req.to_addr().map_err(|e| Refusal::new(400, e.reason()))?;
        Ok(Checked {
            call_id: req
                .call_id()
                .map_err(|e| Refusal::new(400, e.reason()))?
                .to_owned(),
            cseq: req.cseq().map_err(|e| Refusal::new(400, e.reason()))?.seq,
            to_tag: to.tag().map(str::to_owned),
            event: match &event_id {
                Some(id) => format!("{EVENT_PACKAGE};id={id}"),
                None => EVENT_PACKAGE.to_owned(),
            },
            event_id,
            expires,
            contact,
        })
    }

    fn subscribe(
        &self,
        req: &Message,
        tag: &str,
    ) -> Result<(Message, Option<NotifyStart>), Refusal> {
        let c = self.check(req)?;
        if let Some(to_tag) = c.to_tag.clone() {
            return self.refresh(req, c, &to_tag);
        }
        // Step 0: the resource must be registered here.
        let mut resource = None;
        let candidates = [
            req.request_uri().ok().and_then(|u| u.identity()),
            req.to_addr().ok().and_then(|t| t.uri.identity()),
        ];
        let since = self.inner.registrar.events_so_far();
        for id in candidates.into_iter().flatten() {
            if let Some(rec) = self.inner.registrar.registration(&id) {
                resource = Some((id, rec));
                break;
            }
        }
        let Some((resource, rec)) = resource else {
            return Err(Refusal::new(
                480,
                "Temporarily Unavailable (the identity is not registered here)",
            ));
        };
        // Step 1: who may subscribe.
        let identities = self.inner.registrar.identities_of(&rec.impi);
        let subscriber = authorise(req, &rec, &identities).map_err(|who| {
            tracing::info!(%resource, subscriber = %who, "reg subscription not authorised");
            Refusal::new(
                403,
                "Forbidden (not authorised to subscribe to this registration)",
            )
        })?;
        let Some(contact) = c.contact.clone() else {
            return Err(Refusal::new(400, "Bad Request (SUBSCRIBE without Contact)"));
        };
        let mut route_set = Vec::new();
        for r in req.name_addrs(HeaderName::RecordRoute) {
            let r = r.map_err(|e| Refusal::new(400, e.reason()))?;
            route_set.push(r.uri_str.to_owned());
        }
        let from = req.from_addr().map_err(|e| Refusal::new(400, e.reason()))?;
        let Some(remote_tag) = from.tag().map(str::to_owned) else {
            return Err(Refusal::new(400, "Bad Request (From without tag)"));
        };
        let granted = c.expires.min(self.inner.max_expires);
        let key = Arc::new(SubKey {
            call_id: c.call_id.clone(),
            local_tag: tag.to_owned(),
            event_id: c.event_id.clone(),
        });
        let fetch = granted == 0;
        let sub = Subscription {
            resource: resource.clone(),
            impus: set_of(&rec),
            remote_tag,
            local_uri: one_line(req.header_str(HeaderName::To).unwrap_or_default()),
            remote: one_line(req.header_str(HeaderName::From).unwrap_or_default()),
            remote_target: self.inner.shared.text(&contact),
            route_set: self.inner.shared.routes(route_set),
            event: self.inner.shared.text(&c.event),
            local_cseq: 0,
            remote_cseq: c.cseq,
            version: 0,
            expires_at: Instant::now() + Duration::from_secs(u64::from(granted)),
            source: via_source(req),
            notified: Vec::new(),
            queue: VecDeque::from([Job {
                change: None,
                terminate: fetch.then_some("timeout"),
            }]),
            draining: true,
            ending: fetch,
            since,
        };
        lock(self.shard(&key)).insert(key.clone(), Box::new(sub));
        if !fetch {
            self.index_add(&resource, &key);
        }
        tracing::info!(
            %resource,
            %subscriber,
            expires = granted,
            call_id = %c.call_id,
            "reg subscription accepted (200)"
        );
        let resp = respond(
            req,
            200,
            "OK",
            tag,
            &[
                ("Expires", granted.to_string()),
                ("Contact", self.inner.contact.clone()),
            ],
        );
        Ok((resp, Some(NotifyStart(key))))
    }

    /// A SUBSCRIBE inside an existing subscription dialog.
    fn refresh(
        &self,
        req: &Message,
        c: Checked,
        to_tag: &str,
    ) -> Result<(Message, Option<NotifyStart>), Refusal> {
        let key = Arc::new(SubKey {
            call_id: c.call_id.clone(),
            local_tag: to_tag.to_owned(),
            event_id: c.event_id.clone(),
        });
        let from_tag = req
            .from_addr()
            .ok()
            .and_then(|f| f.tag().map(str::to_owned));
        let no_such = || Refusal::new(481, "Subscription Does Not Exist");
        let granted = c.expires.min(self.inner.max_expires);
        let (start, unindex) = {
            let mut shard = lock(self.shard(&key));
            let sub = shard.get_mut(&key).ok_or_else(no_such)?;
            if sub.ending || from_tag.as_deref() != Some(sub.remote_tag.as_str()) {
                return Err(no_such());
            }
            if c.cseq <= sub.remote_cseq {
                return Err(Refusal::new(
                    500,
                    "Server Internal Error (CSeq out of order)",
                ));
            }
            sub.remote_cseq = c.cseq;
            if let Some(target) = &c.contact {
                sub.remote_target = self.inner.shared.text(target);
            }
            if let Some(s) = via_source(req) {
                sub.source = Some(s);
            }
            let unindex = if granted == 0 {
                sub.ending = true;
                sub.queue.push_back(Job {
                    change: None,
                    terminate: Some("timeout"),
                });
                Some(sub.resource.clone())
            } else {
                sub.expires_at = Instant::now() + Duration::from_secs(u64::from(granted));
                sub.queue.push_back(Job {
                    change: None,
                    terminate: None,
                });
                None
            };
            tracing::info!(
                resource = %sub.resource,
                subscriber = %sub.remote,
                expires = granted,
                "reg subscription refreshed (200)"
            );
            let start = !sub.draining;
            sub.draining = true;
            (start, unindex)
        };
        if let Some(resource) = unindex {
            self.index_remove(&resource, &key);
        }
        let resp = respond(
            req,
            200,
            "OK",
            to_tag,
            &[
                ("Expires", granted.to_string()),
                ("Contact", self.inner.contact.clone()),
            ],
        );
        Ok((resp, start.then_some(NotifyStart(key))))
    }

    // ------------------------------------------------------------------------------------
    // NOTIFY

    /// Queues `job` for a subscription, starting a drain task when none runs. `last` makes it
    /// the final NOTIFY (the subscription leaves the index and takes no more jobs).
    fn enqueue(&self, key: &Key, job: Job) {
        let last = job.terminate.is_some();
        let (spawn, resource) = {
            let mut shard = lock(self.shard(key));
            let Some(sub) = shard.get_mut(key) else {
                return;
            };
            if sub.ending {
                return;
            }
            if job.change.as_ref().is_some_and(|c| c.seq <= sub.since) {
                // From before the subscription: its first NOTIFY holds this change already.
                return;
            }
            sub.queue.push_back(job);
            sub.ending = last;
            let spawn = !sub.draining;
            sub.draining = true;
            (spawn, sub.resource.clone())
        };
        if last {
            self.index_remove(&resource, key);
        }
        if spawn {
            tokio::spawn(self.clone().drain(key.clone()));
        }
    }

    fn remove(&self, key: &Key) {
        let gone = lock(self.shard(key)).remove(key);
        if let Some(sub) = gone {
            self.index_remove(&sub.resource, key);
        }
    }

    /// Sends the subscription's queued NOTIFYs, one at a time, until the queue is empty.
    async fn drain(self, key: Key) {
        loop {
            let resource = match lock(self.shard(&key)).get(&key) {
                Some(s) => s.resource.clone(),
                None => return,
            };
            let snapshot = self.inner.registrar.registration(&resource);
            let next = {
                let mut shard = lock(self.shard(&key));
                let Some(sub) = shard.get_mut(&key) else {
                    return;
                };
                let Some(job) = sub.queue.pop_front() else {
                    sub.draining = false;
                    // Held for as long as the subscription lives: give the room back.
                    sub.queue.shrink_to_fit();
                    return;
                };
                if job.terminate.is_none()
                    && job.change.is_some()
                    && snapshot.as_ref().is_some_and(|r| already_notified(sub, r))
                {
                    // A change this subscriber has already seen (an event from before it
                    // subscribed, delivered late): no NOTIFY.
                    tracing::debug!(%resource, "registration change already notified");
                    continue;
                }
                let built = self.notify_request(&key, sub, &job, snapshot.as_ref());
                if job.terminate.is_some() {
                    shard.remove(&key);
                }
                built.map(|(m, t, v)| (m, t, v, job.terminate))
            };
            let (msg, hop, version, last) = match next {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(%resource, error = %e, "NOTIFY cannot be built: subscription removed");
                    self.remove(&key);
                    return;
                }
            };
            let Some(target) = self.target(&hop).await else {
                tracing::warn!(%resource, next_hop = %hop.uri, "NOTIFY has no address for its next hop: subscription removed");
                self.remove(&key);
                return;
            };
            match self.inner.ep.send_request(msg, target).await {
                Ok(mut resp) => {
                    let _ = pop_own_via(&mut resp);
                    let status = resp.status().unwrap_or(0);
                    if (200..300).contains(&status) {
                        tracing::debug!(%resource, version, status, terminated = ?last, "NOTIFY answered");
                    } else if FATAL.contains(&status) {
                        tracing::info!(%resource, status, "NOTIFY refused: subscription removed");
                        self.remove(&key);
                        return;
                    } else {
                        tracing::info!(%resource, status, "NOTIFY refused; the subscription stays");
                    }
                }
                Err(e) => {
                    tracing::info!(%resource, target = %target.addr, error = %e, "NOTIFY failed: subscription removed");
                    self.remove(&key);
                    return;
                }
            }
        }
    }

    /// The address of a NOTIFY's next hop: its numeric host, or its host name resolved, or
    /// else the hop's fallback.
    async fn target(&self, hop: &Hop) -> Option<Target> {
        if let Some(t) = numeric_target(&hop.uri) {
            return Some(t);
        }
        if let (Some(resolver), Ok(Uri::Sip(sip))) = (&self.inner.resolver, Uri::parse(&hop.uri)) {
            match resolver.resolve(&Destination::from_sip_uri(&sip)).await {
                Ok(targets) if !targets.is_empty() => return targets.first().copied(),
                Ok(_) => tracing::info!(next_hop = %hop.uri, "NOTIFY's next hop has no address"),
                Err(e) => {
                    tracing::info!(next_hop = %hop.uri, error = %e, "NOTIFY's next hop does not resolve")
                }
            }
        }
        hop.fallback
    }

    /// The NOTIFY for `job`, where it goes, and its document version.
    fn notify_request(
        &self,
        key: &SubKey,
        sub: &mut Subscription,
        job: &Job,
        snapshot: Option<&RegistrationRecord>,
    ) -> Result<(Message, Hop, u32), String> {
        let version = sub.version;
        sub.version = sub.version.wrapping_add(1);
        sub.local_cseq = sub.local_cseq.wrapping_add(1);
        let body = document_for(sub, job, snapshot, version, now_ms());
        let state = match job.terminate {
            Some(reason) => format!("terminated;reason={reason}"),
            None => {
                let left = sub.expires_at.saturating_duration_since(Instant::now());
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                format!("active;expires={secs}")
            }
        };
        // RFC 3261 §12.2.1.1: the Request-URI and Route set.
        let strict = sub
            .route_set
            .first()
            .is_some_and(|r| !matches!(Uri::parse(r), Ok(Uri::Sip(u)) if u.lr()));
        let (ruri, routes): (String, Vec<String>) = match sub.route_set.split_first() {
            Some((first, rest)) if strict => (
                first.clone(),
                rest.iter()
                    .cloned()
                    .chain([sub.remote_target.to_string()])
                    .collect(),
            ),
            _ => (sub.remote_target.to_string(), sub.route_set.to_vec()),
        };
        let hop = Hop {
            uri: sub
                .route_set
                .first()
                .cloned()
                .unwrap_or_else(|| sub.remote_target.to_string()),
            fallback: sub.source.or_else(|| numeric_target(&sub.remote_target)),
        };
        let mut b = RequestBuilder::new("NOTIFY", &ruri);
        for r in &routes {
            b = b.header("Route", &format!("<{r}>"));
        }
        let from = text::set_param(&sub.local_uri, "tag", Some(&key.local_tag));
        let m = b
            .header("Max-Forwards", "70")
            .header("From", &from)
            .header("To", &sub.remote)
            .header("Call-ID", &key.call_id)
            .header("CSeq", &format!("{} NOTIFY", sub.local_cseq))
            .header("Contact", &self.inner.contact)
            .header("Event", &sub.event)
            .header("Subscription-State", &state)
            .body(CONTENT_TYPE, body.as_bytes())
            .build()
            .map_err(|e| e.to_string())?;
        Ok((m, hop, version))
    }

    // ------------------------------------------------------------------------------------
    // registration changes and expiry

    /// Queues the NOTIFYs a registration change calls for.
    fn on_reg_event(&self, ev: &RegEvent) {
        let gone = ev.contacts_left.is_empty();
        let mut keys: Vec<Key> = Vec::new();
        for id in std::iter::once(&ev.impu).chain(ev.associated_uris.iter()) {
            for k in self.index_get(id) {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        if keys.is_empty() {
            return;
        }
        tracing::debug!(impu = %ev.impu, kind = ?ev.kind, subscriptions = keys.len(), "registration change to notify");
        let mut impus = vec![ev.impu.clone()];
        for a in &ev.associated_uris {
            if !impus.iter().any(|o| same_uri(o, a)) {
                impus.push(a.clone());
            }
        }
        let change = Change {
            kind: ev.kind,
            contacts: ev.contacts.clone(),
            impus,
            seq: ev.seq,
        };
        for k in keys {
            self.enqueue(
                &k,
                Job {
                    change: Some(change.clone()),
                    terminate: gone.then_some("noresource"),
                },
            );
        }
    }

    /// After missing registration events: every subscription gets the current state (or its
    /// end, when its registration is gone).
    fn resync(&self) {
        let all: Vec<(Key, String)> = self
            .inner
            .subs
            .iter()
            .flat_map(|s| {
                lock(s)
                    .iter()
                    .filter(|(_, v)| !v.ending)
                    .map(|(k, v)| (k.clone(), v.resource.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        tracing::warn!(
            subscriptions = all.len(),
            "registration events missed: full NOTIFYs"
        );
        for (k, resource) in all {
            let gone = self.inner.registrar.registration(&resource).is_none();
            self.enqueue(
                &k,
                Job {
                    change: None,
                    terminate: gone.then_some("noresource"),
                },
            );
        }
    }

    /// Ends the subscriptions whose interval has run out (`terminated;reason=timeout`). The
    /// timer task calls it every [`SWEEP_INTERVAL`].
    pub fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<Key> = self
            .inner
            .subs
            .iter()
            .flat_map(|s| {
                lock(s)
                    .iter()
                    .filter(|(_, v)| !v.ending && v.expires_at <= now)
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        for k in expired {
            tracing::info!(call_id = %k.call_id, "reg subscription expired");
            self.enqueue(
                &k,
                Job {
                    change: None,
                    terminate: Some("timeout"),
                },
            );
        }
    }
}

/// TS 24.229 §5.4.2.1.1 step 1 (see the module docs): the subscriber's identity when it may
/// subscribe to `rec`, else (`Err`) the identity refused.
/// `identities` are the subscription's public identities beyond the implicit set
/// ([`Registrar::identities_of`]).
fn authorise(
    req: &Message,
    rec: &RegistrationRecord,
    identities: &[String],
) -> Result<String, String> {
    let asserted: Vec<NameAddr<'_>> = req
        .name_addrs(HeaderName::PAssertedIdentity)
        .filter_map(Result::ok)
        .collect();
    let ids: Vec<NameAddr<'_>> = if asserted.is_empty() {
        req.from_addr().ok().into_iter().collect()
    } else {
        asserted
    };
    let own = |id: &str| {
        set_of(rec).iter().any(|u| same_uri(u, id)) || identities.iter().any(|u| same_uri(u, id))
    };
    let on_path = |uri: &Uri<'_>| {
        rec.bindings
            .iter()
            .flat_map(|b| b.path.iter())
            .flat_map(|p| text::split_commas(p))
            .filter_map(|p| NameAddr::parse(p).ok())
            .any(|p| same_host(&p.uri, uri))
    };
    let mut refused = String::from("(no identity)");
    for na in &ids {
        let Some(id) = na.uri.identity() else {
            refused = na.uri_str.to_owned();
            continue;
        };
        if own(&id) || on_path(&na.uri) {
            return Ok(id);
        }
        refused = id;
    }
    Err(refused)
}

async fn follow(inner: Weak<Inner>, mut events: broadcast::Receiver<RegEvent>) {
    loop {
        let ev = events.recv().await;
        let Some(inner) = inner.upgrade() else { return };
        let me = RegEvents { inner };
        match ev {
            Ok(ev) => me.on_reg_event(&ev),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "registration events missed");
                me.resync();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn timer(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        RegEvents { inner }.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_escapes_and_keeps_ids_stable() {
        let c = DocContact {
            uri: "sip:a@10.0.0.1;x=\"<&>\"".into(),
            active: true,
            event: "registered",
            expires: 60,
            callid: Some("c&1".into()),
            cseq: Some(7),
        };
        let impus = vec!["sip:a@h".to_owned(), "tel:+1".to_owned()];
        let x = reginfo(3, &impus, true, std::slice::from_ref(&c));
        assert!(x.contains(&format!(
            "<reginfo xmlns=\"{NAMESPACE}\" version=\"3\" state=\"full\">"
        )));
        assert!(x.contains("<uri>sip:a@10.0.0.1;x=&quot;&lt;&amp;&gt;&quot;</uri>"));
        assert!(x.contains("callid=\"c&amp;1\" cseq=\"7\""));
        assert!(x.contains(&format!(
            "aor=\"sip:a@h\" id=\"r{:016x}\"",
            fnv(&["SIP:A@H"])
        )));
        assert_eq!(x.matches("<contact ").count(), 2);
        let again = reginfo(4, &impus, false, &[c]);
        let ids = |s: &str| {
            s.split("id=\"")
                .skip(1)
                .map(|p| p[..p.find('"').unwrap()].to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&x), ids(&again));
        assert!(again.contains("state=\"terminated\""));
    }

    #[test]
    fn next_hops_and_path_entities() {
        let t = numeric_target("sip:10.0.0.9;lr;transport=tcp").unwrap();
        assert_eq!(
            (t.addr, t.transport),
            ("10.0.0.9:5060".parse().unwrap(), Transport::Tcp)
        );
        let t = numeric_target("sip:ue@[2001:db8::1]:5070").unwrap();
        assert_eq!(
            (t.addr, t.transport),
            ("[2001:db8::1]:5070".parse().unwrap(), Transport::Udp)
        );
        assert!(numeric_target("sip:mt@pcscf1.vims.net;lr").is_none());
        assert!(numeric_target("tel:+4930").is_none());
        let path = Uri::parse("sip:term@pcscf1.vims.net;lr").unwrap();
        assert!(same_host(
            &path,
            &Uri::parse("sip:pcscf1.vims.net:5060").unwrap()
        ));
        assert!(same_host(
            &path,
            &Uri::parse("sip:PCSCF1.vims.net").unwrap()
        ));
        assert!(!same_host(
            &path,
            &Uri::parse("sip:pcscf1.vims.net:5070").unwrap()
        ));
        assert!(!same_host(
            &path,
            &Uri::parse("sip:pcscf2.vims.net").unwrap()
        ));
        assert_eq!(one_line("<sip:a@b>;\r\n tag=1"), "<sip:a@b>; tag=1");
    }
}

//! The S-CSCF registrar (TS 24.229 §5.4.1, RFC 3261 §10.3, RFC 3310, RFC 3327, RFC 3608):
//! [`Registrar::handle_register`] turns one REGISTER into its final response, whatever
//! carries the SIP (the daemon's loop in `lib.rs` today, a transaction layer later).
//!
//! # A registration, step by step
//! 1. Checks: the request is well formed (400 naming the header), the Request-URI is one of
//!    our domains (403), To is a SIP or tel URI (the IMPU), every Contact parses, `Contact: *`
//!    comes alone and with `Expires: 0` (400), no interval below `min_expires` (423 with
//!    Min-Expires; checked before authentication so that no vector is spent on a request
//!    bound to fail), an `algorithm` we know (`AKAv1-MD5` or `MD5`; anything else 403).
//!    The IMPI is the Authorization `username`, or the IMPU without its scheme when there is
//!    no Authorization (TS 33.203 §7.2).
//! 2. No credentials (no Authorization, or an empty nonce): MAR (one item, scheme "Unknown",
//!    so the HSS picks the subscriber's) and a 401. AKA: `nonce` = base64(RAND||AUTN),
//!    `algorithm=AKAv1-MD5`, `qop="auth,auth-int"`, and `ck`/`ik` in lowercase hex for the
//!    P-CSCF. SIP Digest: our own random nonce, `algorithm=MD5`, the HSS's realm and qop. The
//!    vector (XRES or HA1) is kept per IMPI until reg-await-auth runs out; a new challenge
//!    replaces the old one.
//! 3. Credentials: the pending challenge with that IMPI, IMPU and nonce is taken (used once).
//!    None (unknown or stale nonce) → a fresh 401. A right response (RFC 3310: the password is
//!    RES; RFC 2617 with the HSS's HA1; qop auth or auth-int) → SAR REGISTRATION, or
//!    RE_REGISTRATION with User-Data-Already-Available when the IMPU is registered here → the
//!    binding is stored → 200 OK with the Path values echoed, `Service-Route:
//!    <sip:orig@<our host:port>;lr>`, P-Associated-URI (the implicit registration set from
//!    the User-Data), every current Contact with its `expires`, and Date. A wrong response →
//!    SAR AUTHENTICATION_FAILURE (TS 29.228 §6.1.2: the HSS records the outcome) and 403.
//!    `auts` (resynchronisation) → MAR with SIP-Authorization = RAND||AUTS (RAND from the
//!    nonce the UE answered) → a fresh 401.
//! 4. A re-registration the P-CSCF vouches for (`integrity-protected="yes"`, `tls-yes`,
//!    `tls-connected` or `ip-assoc-yes`) of an IMPU registered here by the same IMPI, with no
//!    challenge pending, is not challenged again (TS 24.229 §5.4.1.2.1: the S-CSCF *may*
//!    re-authenticate); a contact not registered before is refused with 403 there.
//! 5. Deregistration (`Expires: 0`, every contact `expires=0`, or `Contact: *`): the bindings
//!    go; when none is left, SAR USER_DEREGISTRATION; 200 OK listing what remains.
//!
//! Cx failures become SIP answers as `cx.rs` documents (403 for every refusal, 504 when the
//! HSS does not answer). Nothing here panics on input.
//!
//! # Why an authentication failed: one log line
//! A 401 loop is hard to read from a trace, so every failed authentication is logged once,
//! at `warn`, as `<impi>: <likely cause>` with the IMPU, the status, the failures in a row
//! and a `cause` field ([`FailureCause::code`]), instead of the generic "REGISTER refused":
//!
//! | what the UE sent | cause (code) | what it most likely means |
//! |---|---|---|
//! | AKA, `response=""` or a digest of the empty password, no `auts` | `autn_rejected` | its USIM rejected AUTN (MAC failure): K or OPc at the HSS differ from the SIM's |
//! | AKA, another wrong response | `wrong_res` | K/OPc mismatch (a UE that ignores the MAC check) or a replayed response |
//! | SIP Digest, a wrong response | `wrong_password` | the phone's password differs from the HSS's (HA1) |
//! | another algorithm or realm than challenged | `mismatch` | a confused client |
//! | `auts` (at `info`: it is normal after a USIM was used elsewhere) | — | SQN out of range → resync with the HSS |
//! | no answer within reg-await-auth (at `info`) | — | the UE gave up: maybe a silent MAC failure, maybe no network |
//!
//! # Lockout (issue #20)
//! `auth_failures_before_lockout` wrong answers in a row for one IMPI (any of the causes
//! above, each answering a challenge we sent) lock it for `auth_lockout_seconds`: every
//! REGISTER of that IMPI that would need authenticating gets 403 at once, before any MAR
//! (no vector or SQN is spent, the HSS is not asked), with one log line. What we chose, and
//! why:
//! - **Counted per IMPI**, not per source: the S-CSCF sees the P-CSCF's address, not the
//!   UE's, and a count per UE address would let a guesser escape it by changing address.
//! - **Temporary**: a lockout ends by itself, and the count restarts from 0 after it (and is
//!   forgotten `auth_lockout_seconds` after the last failure), so a wrong guess by someone
//!   else can delay the user, never lock them out for good; keeping the user locked needs
//!   a steady stream of fresh challenges answered wrong, each logged with the IMPI.
//! - **Reset by a success**: a right answer clears the count.
//! - **The registered user is not cut off**: bindings stay, and a re-registration the
//!   P-CSCF vouches for (step 4: integrity-protected, no credentials to guess) passes during
//!   a lockout; only authentications are refused. So an attacker elsewhere cannot take a
//!   registered IPsec UE off the network this way.
//!
//! It is held in memory (per S-CSCF), like the pending challenges.
//!
//! # State
//! Registrations and pending challenges live in [`SHARDS`] mutex-guarded maps chosen by a hash
//! of the IMPI (no global lock; no lock is ever held across an `.await`), plus an index from
//! every registered or implicitly registered IMPU to its IMPI. Each change of a registration
//! is written through to the store and awaited before the response goes, group-committed as
//! the HSS does it: one writer task ([`store_writer`]) takes every change waiting and applies
//! them in their order in one transaction ([`ims_store::Store::apply_registrations`]), so 100
//! concurrent REGISTERs cost one commit and one `begin`/`commit` hand-off to the database's
//! worker thread, not 100. A batch that fails is tried again change by change, so that one
//! bad change fails alone. [`Registrar::start`] loads them back. A change that fails to
//! reach the store is logged and kept in memory (the UE is registered either way).
//!
//! # Background
//! [`Registrar::start`] spawns two tasks that hold only a weak reference (they end when the
//! last [`Registrar`] clone is dropped): the timer (what [`Registrar::sweep`] does, one shard
//! every 1/64 s so that each is visited every second: expired
//! bindings go, with SAR TIMEOUT_DEREGISTRATION when an IMPU has none left; expired
//! challenges go, with SAR AUTHENTICATION_TIMEOUT when the IMPU is not registered), and the
//! handler of requests from the HSS ([`Registrar::handle_cx_request`]): RTR drops the named
//! identities' registrations (all of the IMPI's when none is named) and answers 2001, also for
//! identities we do not hold (the HSS's wish is already true); PPR replaces the User-Data of
//! the IMPI's registrations and answers 2001, or Experimental-Result 5001
//! (DIAMETER_ERROR_USER_UNKNOWN) when none is registered here, or 5009
//! (DIAMETER_ERROR_NOT_SUPPORTED_USER_DATA) when the XML cannot be read.
//!
//! Every change is announced on a broadcast channel ([`Registrar::subscribe`], [`RegEvent`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use ims_aka::digest_aka::{self, AkaNonce};
use ims_aka::{AkaError, DigestParams, Ha1, Qop, Res};
use ims_diameter::AnswerResult;
use ims_diameter::cx::{Ppa, Ppr, Rta, Rtr};
use ims_diameter::dict::{self, ServerAssignmentType as Sat, experimental_result_code as erc};
use ims_sip::{Contact, HeaderName, Message, Method, Uri, text};
use ims_store::{BindingRecord, RegistrationRecord, RegistrationWrite, Store};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::Config;
use crate::cx::{CxClient, CxFailure, Vector};
use crate::reply::{http_date, new_tag, respond};
use crate::userdata::{ImsSubscription, same_uri};

/// Number of state shards.
pub const SHARDS: usize = 64;

/// How often the timer looks for expired bindings and challenges.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How many expiries (their SARs TIMEOUT_DEREGISTRATION, AUTHENTICATION_TIMEOUT) the sweep
/// keeps in flight.
const SWEEP_SARS: usize = 64;

/// What happened to a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegEventKind {
    /// A first registration of the IMPU (SAR REGISTRATION).
    Registered,
    /// A re-registration: contacts added or refreshed.
    Refreshed,
    /// The UE removed contacts (the IMPU is gone when `contacts_left` is empty).
    Deregistered,
    /// Contacts expired.
    Expired,
    /// The HSS terminated the registration (RTR).
    Terminated,
}

/// A registration change, for reg-event subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegEvent {
    /// What happened.
    pub kind: RegEventKind,
    /// The IMPI.
    pub impi: String,
    /// The registered IMPU.
    pub impu: String,
    /// Its implicit registration set.
    pub associated_uris: Vec<String>,
    /// The contacts the change is about (added, refreshed or removed).
    pub contacts: Vec<String>,
    /// The contacts still bound afterwards.
    pub contacts_left: Vec<String>,
    /// The registrar's count of events up to this one (1 for the first): a state read after
    /// [`Registrar::events_so_far`] returned `n` already holds every change with `seq <= n`.
    pub seq: u64,
}

/// Why [`Registrar::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is not usable.
    #[error("configuration: {0}")]
    Config(String),
    /// The registration store.
    #[error("registration store: {0}")]
    Store(#[from] ims_store::StoreError),
}

/// The secret a pending challenge is checked against.
enum Secret {
    /// XRES (the RFC 3310 password).
    Aka(Res),
    /// The HSS's HA1.
    Digest(Ha1),
}

/// A challenge sent and not answered yet (reg-await-auth running).
struct Challenge {
    impu: String,
    nonce: String,
    realm: String,
    secret: Secret,
    expires: Instant,
}

#[derive(Default)]
struct User {
    /// Boxed: most users have none, and the shard maps hold `User` inline.
    pending: Option<Box<Challenge>>,
    /// Registrations by IMPU. Their `user_data` is empty here: the User-Data XML is kept
    /// in the store only (a few hundred bytes per IMPU, issue #16's 2 KiB per UE), and what
    /// the S-CSCF reads of it is kept apart ([`User::identities`], the implicit sets).
    regs: Regs,
    /// The subscription's public identities that are not barred, when they are more than the
    /// registered IMPU's implicit set (empty otherwise, as for most users): a reg-event
    /// subscriber may be any of them (TS 24.229 §5.4.2.1.1).
    identities: Vec<String>,
    /// Wrong answers and the lockout (see "Lockout" in the module docs).
    /// Only while there are failures to count (boxed: most users never have any).
    lockout: Option<Box<Lockout>>,
}

/// One IMPI's registrations, one per IMPU (a user registers one to a few IMPUs): a vector
/// searched by the IMPU's lowercase key ([`key`]), holding exactly what it needs, where a map
/// per user would cost several hundred bytes of buckets each (issue #16: ≤ 2 KiB per
/// registered UE).
#[derive(Default)]
struct Regs(Vec<RegistrationRecord>);

impl Regs {
    fn position(&self, k: &str) -> Option<usize> {
        self.0.iter().position(|r| r.impu.eq_ignore_ascii_case(k))
    }

    fn contains_key(&self, k: &str) -> bool {
        self.position(k).is_some()
    }

    fn get(&self, k: &str) -> Option<&RegistrationRecord> {
        self.position(k).map(|i| &self.0[i])
    }

    fn get_mut(&mut self, k: &str) -> Option<&mut RegistrationRecord> {
        self.position(k).map(|i| &mut self.0[i])
    }

    /// The registration of `k`, made by `new` when there is none.
    fn get_or_insert_with(
        &mut self,
        k: &str,
        new: impl FnOnce() -> RegistrationRecord,
    ) -> &mut RegistrationRecord {
        let i = match self.position(k) {
            Some(i) => i,
            None => {
                self.0.reserve_exact(1);
                self.0.push(new());
                self.0.len() - 1
            }
        };
        &mut self.0[i]
    }

    /// Stores `rec`, replacing the registration of its IMPU.
    fn insert(&mut self, rec: RegistrationRecord) {
        match self.position(&rec.impu) {
            Some(i) => self.0[i] = rec,
            None => {
                self.0.reserve_exact(1);
                self.0.push(rec);
            }
        }
    }

    fn remove(&mut self, k: &str) -> Option<RegistrationRecord> {
        self.position(k).map(|i| self.0.swap_remove(i))
    }

    /// Takes out the registrations `pick` chooses.
    fn take_if(
        &mut self,
        mut pick: impl FnMut(&RegistrationRecord) -> bool,
    ) -> Vec<RegistrationRecord> {
        let (out, keep) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|r| pick(r));
        self.0 = keep;
        out
    }

    fn retain(&mut self, keep: impl FnMut(&mut RegistrationRecord) -> bool) {
        self.0.retain_mut(keep);
    }

    fn values(&self) -> std::slice::Iter<'_, RegistrationRecord> {
        self.0.iter()
    }

    fn values_mut(&mut self) -> std::slice::IterMut<'_, RegistrationRecord> {
        self.0.iter_mut()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Wrong answers to our challenges for one IMPI.
#[derive(Default)]
struct Lockout {
    /// Wrong answers in a row since the last success or lockout.
    failures: u32,
    /// When the last one came (the count is forgotten `auth_lockout_seconds` after it).
    last: Option<Instant>,
    /// Locked until then.
    until: Option<Instant>,
}

impl Lockout {
    /// Nothing worth keeping at `now`.
    fn idle(&self, now: Instant, keep: Duration) -> bool {
        self.until.is_none_or(|u| u <= now) && self.last.is_none_or(|l| l + keep <= now)
    }

    /// Seconds left of a lockout running at `now`.
    fn left(&self, now: Instant) -> Option<u64> {
        self.until
            .filter(|u| *u > now)
            .map(|u| (u - now).as_secs_f64().ceil() as u64)
    }
}

/// Why an answer to our challenge was wrong, as far as the S-CSCF can tell (see the table in
/// the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureCause {
    /// AKA: an empty response, or the digest of the empty password without `auts`: the
    /// USIM refused AUTN (MAC failure).
    AutnRejected,
    /// AKA: another response than XRES's.
    WrongRes,
    /// SIP Digest: the response of another password.
    WrongPassword,
    /// Not an answer to the challenge we sent (algorithm or realm differ).
    Mismatch(&'static str),
}

impl FailureCause {
    /// A short stable name (the `cause` field of the log line).
    pub fn code(&self) -> &'static str {
        match self {
            FailureCause::AutnRejected => "autn_rejected",
            FailureCause::WrongRes => "wrong_res",
            FailureCause::WrongPassword => "wrong_password",
            FailureCause::Mismatch(_) => "mismatch",
        }
    }
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureCause::AutnRejected => f.write_str(
                "UE sent an empty AKA response: its USIM rejected AUTN (MAC failure) — K or OPc at the HSS differ from the SIM's",
            ),
            FailureCause::WrongRes => f.write_str(
                "UE sent a wrong RES: K/OPc mismatch (a UE that skips the MAC check) or a replayed response",
            ),
            FailureCause::WrongPassword => f.write_str(
                "wrong digest response: the phone's password differs from the one the HSS holds (HA1), or a replay",
            ),
            FailureCause::Mismatch(what) => write!(f, "the answer does not match our challenge: {what}"),
        }
    }
}

type Shard = Mutex<HashMap<String, User>>;

struct Inner {
    cfg: Config,
    host_port: String,
    domains: Vec<String>,
    cx: CxClient,
    /// The queue of the store writer ([`store_writer`]).
    writes: mpsc::UnboundedSender<StoreJob>,
    shards: Vec<Shard>,
    /// Every registered IMPU and implicitly registered one (lowercase) → IMPI.
    index: Vec<Mutex<HashMap<String, String>>>,
    rng: SystemRandom,
    events: broadcast::Sender<RegEvent>,
    /// How many events have been emitted (each after its change was applied).
    event_seq: std::sync::atomic::AtomicU64,
    metrics: crate::metrics::Metrics,
}

/// The registrar. Clone it freely; clones share the state.
#[derive(Clone)]
pub struct Registrar {
    inner: Arc<Inner>,
}

/// A SIP refusal on the way to the response.
struct Reject {
    status: u16,
    reason: String,
    headers: Vec<(&'static str, String)>,
    /// Its cause is logged already (one line per failure).
    logged: bool,
}

impl Reject {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        Reject {
            status,
            reason: reason.into(),
            headers: Vec::new(),
            logged: false,
        }
    }
    fn logged(mut self) -> Self {
        self.logged = true;
        self
    }
    fn bad(why: impl std::fmt::Display) -> Self {
        Reject::new(400, format!("Bad Request ({why})"))
    }
    fn forbidden(why: impl std::fmt::Display) -> Self {
        Reject::new(403, format!("Forbidden ({why})"))
    }
}

impl From<CxFailure> for Reject {
    fn from(f: CxFailure) -> Self {
        let (status, reason) = f.sip_status();
        let mut r = Reject::new(status, reason);
        if status == 503 {
            // The HSS is too busy (3004) or down: come back later, not at once (RFC 3261
            // §21.5.4).
            r.headers
                .push(("Retry-After", ims_net::endpoint::retry_after().to_string()));
        }
        r
    }
}

impl From<ims_sip::Error> for Reject {
    fn from(e: ims_sip::Error) -> Self {
        Reject::new(e.status(), e.reason())
    }
}

/// One Contact of the REGISTER.
struct ReqContact {
    uri: String,
    /// `<uri>;params` without `expires`.
    value: String,
    /// Granted interval (0: remove).
    expires: u32,
}

/// The Authorization parameters we use, owned.
#[derive(Default)]
struct Creds {
    username: String,
    realm: String,
    nonce: String,
    uri: Option<String>,
    response: String,
    algorithm: Option<String>,
    qop: Option<String>,
    nc: Option<String>,
    cnonce: Option<String>,
    auts: Option<String>,
    integrity_protected: Option<String>,
}

/// A checked REGISTER.
struct Parsed {
    impu: String,
    impi: String,
    call_id: String,
    cseq: u32,
    /// `None` for `Contact: *`.
    contacts: Option<Vec<ReqContact>>,
    creds: Option<Creds>,
    paths: Vec<String>,
}

impl Parsed {
    fn removes_everything(&self) -> bool {
        match &self.contacts {
            None => true,
            Some(cs) => cs.iter().all(|c| c.expires == 0),
        }
    }
}

fn now_ms() -> i64 {
    ims_net::clock::unix_ms_now()
}

fn key(uri: &str) -> String {
    uri.to_ascii_lowercase()
}

fn hash_index(s: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    (h.finish() % SHARDS as u64) as usize
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The IMPU of a To URI: the URI without parameters and headers ([`Uri::identity`]).
fn impu_of(uri: &Uri<'_>) -> Result<String, Reject> {
    uri.identity()
        .ok_or_else(|| Reject::bad("To is neither a SIP nor a tel URI"))
}

/// Remaining seconds of a binding at `now` (rounded up, at least 1 while it lives).
fn remaining_secs(expires_at: i64, now: i64) -> i64 {
    ((expires_at - now).max(0) + 999) / 1000
}

impl Registrar {
    /// Opens the store (restoring the registrations held under our name), connects to the HSS
    /// and starts the timer and the handler of HSS requests (RTR, PPR).
    pub async fn start(cfg: Config) -> Result<Registrar, StartError> {
        cfg.validate().map_err(StartError::Config)?;
        let store = Store::open(&cfg.database).await?;
        let (client, hss_requests) = cfg.diameter.connect(cfg.sip_listen.ip());
        let cx = CxClient::new(client, cfg.diameter.clone(), cfg.name.clone());
        let (events, _) = broadcast::channel(1024);
        let (writes, write_queue) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            host_port: cfg.host_port(),
            domains: cfg.domains(),
            cx,
            writes,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            index: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            rng: SystemRandom::new(),
            events,
            event_seq: std::sync::atomic::AtomicU64::new(0),
            metrics: crate::metrics::Metrics::default(),
            cfg,
        });
        let r = Registrar { inner };
        let restored = store.registrations_of_scscf(&r.inner.cfg.name).await?;
        let n = restored.len();
        for rec in restored {
            r.install(rec);
        }
        tracing::info!(
            registrations = n,
            name = %r.inner.cfg.name,
            "S-CSCF registrar started; registrations restored from the store"
        );
        tokio::spawn(timer(Arc::downgrade(&r.inner)));
        tokio::spawn(hss_requests_loop(Arc::downgrade(&r.inner), hss_requests));
        tokio::spawn(store_writer(store, write_queue, Arc::downgrade(&r.inner)));
        Ok(r)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Waits until the Diameter connection to the HSS is open (or `timeout` passes).
    pub async fn wait_diameter(&self, timeout: Duration) -> bool {
        let mut c = self.inner.cx.client().clone();
        c.wait_open(timeout).await
    }

    /// Registration events (see [`RegEvent`]).
    pub fn subscribe(&self) -> broadcast::Receiver<RegEvent> {
        self.inner.events.subscribe()
    }

    /// The registration an IMPU belongs to (registered itself or implicitly), with its
    /// bindings; `None` when it is not registered here.
    pub fn registration(&self, impu: &str) -> Option<RegistrationRecord> {
        let k = key(impu);
        let impi = lock(&self.inner.index[hash_index(&k)]).get(&k).cloned()?;
        let shard = lock(self.shard(&impi));
        let user = shard.get(&impi)?;
        user.regs
            .values()
            .find(|r| {
                same_uri(&r.impu, impu) || r.associated_uris.iter().any(|a| same_uri(a, impu))
            })
            .cloned()
    }

    /// SAR UNREGISTERED_USER for a callee that is not registered here (session routing).
    pub(crate) async fn sar_unregistered(&self, impu: &str) -> Result<(), CxFailure> {
        self.inner.cx.sar_unregistered(impu).await
    }

    /// The Prometheus text of the registrar's metrics ([`crate::metrics`]), with the SIP
    /// endpoint's `(server, client)` transactions.
    pub fn render_metrics(&self, transactions: (usize, usize)) -> String {
        let held = self
            .inner
            .shards
            .iter()
            .map(|s| lock(s).values().map(|u| u.regs.len()).sum::<usize>())
            .sum();
        let mut o = self.inner.metrics.render(held, transactions);
        self.inner.cx.render_metrics(&mut o);
        o
    }

    /// Every registration held (a snapshot, shard by shard).
    pub fn registrations(&self) -> Vec<RegistrationRecord> {
        let mut out = Vec::new();
        for s in &self.inner.shards {
            for u in lock(s).values() {
                out.extend(u.regs.values().cloned());
            }
        }
        out.sort_by(|a, b| a.impu.cmp(&b.impu));
        out
    }

    fn shard(&self, impi: &str) -> &Shard {
        &self.inner.shards[hash_index(impi)]
    }

    fn index_add(&self, rec: &RegistrationRecord) {
        for u in std::iter::once(&rec.impu).chain(rec.associated_uris.iter()) {
            let k = key(u);
            lock(&self.inner.index[hash_index(&k)]).insert(k, rec.impi.clone());
        }
    }

    fn index_remove(&self, rec: &RegistrationRecord) {
        for u in std::iter::once(&rec.impu).chain(rec.associated_uris.iter()) {
            let k = key(u);
            let mut idx = lock(&self.inner.index[hash_index(&k)]);
            if idx.get(&k) == Some(&rec.impi) {
                idx.remove(&k);
            }
        }
    }

    fn install(&self, mut rec: RegistrationRecord) {
        self.index_add(&rec);
        let ids = ImsSubscription::parse(rec.user_data.as_bytes())
            .map(|s| other_identities(&s, &rec.associated_uris))
            .unwrap_or_default();
        rec.user_data = String::new();
        let mut shard = lock(self.shard(&rec.impi));
        let user = shard.entry(rec.impi.clone()).or_default();
        if !ids.is_empty() {
            user.identities = ids;
        }
        user.regs.insert(rec);
    }

    /// The public identities of `impi`'s subscription beyond its registered implicit sets
    /// ([`User::identities`]); usually none.
    pub fn identities_of(&self, impi: &str) -> Vec<String> {
        lock(self.shard(impi))
            .get(impi)
            .map(|u| u.identities.clone())
            .unwrap_or_default()
    }

    /// How many registration events have been emitted so far. Every change of an event
    /// counted here is already applied: a registration read after this call holds it.
    pub fn events_so_far(&self) -> u64 {
        self.inner
            .event_seq
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn emit(&self, kind: RegEventKind, rec: &RegistrationRecord, contacts: Vec<String>) {
        let seq = self
            .inner
            .event_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let _ = self.inner.events.send(RegEvent {
            seq,
            kind,
            impi: rec.impi.clone(),
            impu: rec.impu.clone(),
            associated_uris: rec.associated_uris.clone(),
            contacts,
            contacts_left: rec.bindings.iter().map(|b| b.contact_uri.clone()).collect(),
        });
    }

    /// Saves `rec` with the User-Data `xml` when the HSS just sent it (else the store keeps
    /// the one it has: `rec.user_data` is empty in memory, see [`User::regs`]).
    async fn persist_with(&self, rec: &RegistrationRecord, xml: Option<&str>) {
        let mut full = rec.clone();
        if let Some(xml) = xml {
            full.user_data = xml.to_owned();
        }
        if let Err(e) = self.write(RegistrationWrite::Save(full)).await {
            tracing::error!(impu = %rec.impu, error = %e, "registration not saved to the store");
        }
    }

    async fn persist(&self, rec: &RegistrationRecord) {
        self.persist_with(rec, None).await;
    }

    async fn forget(&self, impu: &str) {
        if let Err(e) = self.write(RegistrationWrite::Delete(impu.to_owned())).await {
            tracing::error!(%impu, error = %e, "registration not deleted from the store");
        }
    }

    /// Queues `w` for the store writer and waits for its commit.
    async fn write(&self, w: RegistrationWrite) -> Result<(), String> {
        self.queue_write(w)?
            .await
            .map_err(|_| "the store writer has stopped".to_owned())?
    }

    /// Queues `w` for the store writer now; the receiver tells when it is committed.
    fn queue_write(&self, w: RegistrationWrite) -> Result<oneshot::Receiver<StoreResult>, String> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .writes
            .send((w, tx))
            .map_err(|_| "the store writer has stopped".to_owned())?;
        Ok(rx)
    }

    // ------------------------------------------------------------------------------------
    // REGISTER

    /// Handles one REGISTER and returns the final response to send.
    pub async fn handle_register(&self, req: &Message) -> Message {
        let started = Instant::now();
        let resp = self.handle_register_inner(req).await;
        self.inner
            .metrics
            .register(resp.status().unwrap_or(0), started.elapsed());
        resp
    }

    async fn handle_register_inner(&self, req: &Message) -> Message {
        let tag = new_tag(&self.inner.rng);
        match self.register(req, &tag).await {
            Ok(resp) => resp,
            Err(r) => {
                if !r.logged {
                    tracing::info!(
                        status = r.status,
                        reason = %r.reason,
                        call_id = req.call_id().unwrap_or("-"),
                        "REGISTER refused"
                    );
                }
                respond(req, r.status, &r.reason, &tag, &r.headers)
            }
        }
    }

    async fn register(&self, req: &Message, tag: &str) -> Result<Message, Reject> {
        let p = self.parse(req)?;
        let creds = p.creds.as_ref();
        let nonce = creds.map_or("", |c| c.nonce.as_str());
        let auts = creds
            .and_then(|c| c.auts.as_deref())
            .filter(|a| !a.is_empty());
        if auts.is_none() && nonce.is_empty() && self.vouched_reregistration(&p) {
            tracing::debug!(impi = %p.impi, "integrity-protected re-registration: not challenged");
            return self.bind(req, &p, tag).await;
        }
        self.check_lockout(&p)?;
        if let Some(auts) = auts {
            return self.resync(req, &p, nonce, auts, tag).await;
        }
        if nonce.is_empty() {
            return self.challenge(req, &p, tag).await;
        }
        let Some(ch) = self.take_challenge(&p.impi, &p.impu, nonce) else {
            tracing::info!(impi = %p.impi, "unknown or stale nonce: challenging again");
            return self.challenge(req, &p, tag).await;
        };
        let Some(c) = creds else {
            return self.challenge(req, &p, tag).await;
        };
        match verify(req, c, &ch) {
            Ok(()) => {
                if let Some(u) = lock(self.shard(&p.impi)).get_mut(&p.impi) {
                    u.lockout = None;
                }
                self.bind(req, &p, tag).await
            }
            Err(Verdict::Malformed(why)) => Err(Reject::bad(why)),
            Err(Verdict::Wrong(cause)) => {
                let (failures, locked) = self.count_failure(&p.impi);
                self.inner.metrics.auth_failure(cause.code());
                if locked {
                    self.inner.metrics.lockout();
                }
                let lockout = if locked {
                    format!(
                        "; locked out for {} s (auth_failures_before_lockout)",
                        self.inner.cfg.auth_lockout_seconds
                    )
                } else {
                    String::new()
                };
                tracing::warn!(
                    impi = %p.impi,
                    impu = %p.impu,
                    cause = cause.code(),
                    failures,
                    status = 403,
                    "{}: {cause} (failure {failures} in a row){lockout}",
                    p.impi
                );
                if let Err(e) = self
                    .inner
                    .cx
                    .sar(&p.impi, &[&p.impu], Sat::AuthenticationFailure, false)
                    .await
                {
                    tracing::warn!(impi = %p.impi, error = %e, "SAR AUTHENTICATION_FAILURE failed");
                }
                Err(Reject::forbidden("authentication failed").logged())
            }
        }
    }

    /// 403 (one log line) while the IMPI is locked out.
    fn check_lockout(&self, p: &Parsed) -> Result<(), Reject> {
        let left = lock(self.shard(&p.impi))
            .get(&p.impi)
            .and_then(|u| u.lockout.as_ref()?.left(Instant::now()));
        let Some(left) = left else { return Ok(()) };
        tracing::warn!(
            impi = %p.impi,
            impu = %p.impu,
            status = 403,
            seconds_left = left,
            "{}: REGISTER refused: locked out for another {left} s after repeated authentication failures",
            p.impi
        );
        Err(Reject::forbidden(format!(
            "authentication locked for {left} s after repeated failures"
        ))
        .logged())
    }

    /// Counts a wrong answer: (failures in a row, whether this one starts a lockout).
    fn count_failure(&self, impi: &str) -> (u32, bool) {
        let threshold = self.inner.cfg.auth_failures_before_lockout;
        let keep = Duration::from_secs(self.inner.cfg.auth_lockout_seconds);
        let now = Instant::now();
        let mut shard = lock(self.shard(impi));
        let l = shard
            .entry(impi.to_owned())
            .or_default()
            .lockout
            .get_or_insert_with(Box::default);
        if l.last.is_some_and(|t| t + keep <= now) {
            l.failures = 0;
        }
        l.failures += 1;
        l.last = Some(now);
        let n = l.failures;
        if threshold > 0 && n >= threshold {
            l.until = Some(now + keep);
            l.failures = 0;
            return (n, true);
        }
        (n, false)
    }

    fn parse(&self, req: &Message) -> Result<Parsed, Reject> {
        if req.method() != Some(Method::Register) {
            let mut r = Reject::new(405, "Method Not Allowed");
            r.headers.push(("Allow", "REGISTER".into()));
            return Err(r);
        }
        req.check_request()?;
        let ruri = req.request_uri()?;
        let domain_ok = match ruri.as_sip() {
            Some(u) => self
                .inner
                .domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(u.host_str)),
            None => false,
        };
        if !domain_ok {
            return Err(Reject::forbidden(format!(
                "{} is not a home domain",
                ruri.as_str()
            )));
        }
        let to = req.to_addr()?;
        let impu = impu_of(&to.uri)?;
        let call_id = req.call_id()?.to_owned();
        let cseq = req.cseq()?.seq;
        let header_expires = match req.expires() {
            Some(r) => Some(r?),
            None => None,
        };
        let mut star = false;
        let mut list = Vec::new();
        for c in req.contacts() {
            match c? {
                Contact::Star => star = true,
                Contact::Addr(a) => {
                    let asked = match a.expires() {
                        Some(r) => r?,
                        None => header_expires.unwrap_or(self.inner.cfg.default_expires),
                    };
                    if asked != 0 && asked < self.inner.cfg.min_expires {
                        let mut r = Reject::new(423, "Interval Too Brief");
                        r.headers
                            .push(("Min-Expires", self.inner.cfg.min_expires.to_string()));
                        return Err(r);
                    }
                    let full = format!("<{}>{}", a.uri_str, a.params_str());
                    list.push(ReqContact {
                        uri: a.uri_str.to_owned(),
                        value: text::remove_param(&full, "expires"),
                        expires: asked.min(self.inner.cfg.max_expires),
                    });
                }
            }
        }
        let contacts = if star {
            if !list.is_empty() {
                return Err(Reject::bad("Contact: * with other contacts"));
            }
            if header_expires != Some(0) {
                return Err(Reject::bad("Contact: * without Expires: 0"));
            }
            None
        } else if list.is_empty() {
            return Err(Reject::bad("missing Contact header"));
        } else {
            Some(list)
        };
        let creds = self.credentials(req)?;
        let impi = match creds.as_ref().map(|c| c.username.as_str()) {
            Some(u) if !u.is_empty() => u.to_owned(),
            _ => match to.uri.as_sip() {
                Some(u) if u.user.is_some() => u.user_host(),
                _ => {
                    return Err(Reject::forbidden(
                        "no private identity: Authorization username missing",
                    ));
                }
            },
        };
        let paths = req
            .values(HeaderName::Path)
            .filter_map(Result::ok)
            .map(|v| text::trim(v).to_owned())
            .collect();
        Ok(Parsed {
            impu,
            impi,
            call_id,
            cseq,
            contacts,
            creds,
            paths,
        })
    }

    /// The Digest Authorization for our realm (else the first Digest one).
    fn credentials(&self, req: &Message) -> Result<Option<Creds>, Reject> {
        let mut chosen = None;
        for a in req.auth(HeaderName::Authorization) {
            let a = a?;
            if !a.is_digest() {
                continue;
            }
            let ours = a.realm().is_some_and(|r| {
                r.eq_ignore_ascii_case(&self.inner.cfg.realm)
                    || self.inner.domains.iter().any(|d| d.eq_ignore_ascii_case(r))
            });
            if chosen.is_none() || ours {
                chosen = Some(a);
                if ours {
                    break;
                }
            }
        }
        let Some(a) = chosen else { return Ok(None) };
        if let Some(alg) = a.algorithm()
            && !alg.eq_ignore_ascii_case(digest_aka::ALGORITHM)
            && !alg.eq_ignore_ascii_case("MD5")
        {
            return Err(Reject::forbidden(format!(
                "unsupported algorithm {}",
                alg.chars().take(32).collect::<String>()
            )));
        }
        let own = |v: Option<&str>| v.map(str::to_owned);
        Ok(Some(Creds {
            username: a.username().unwrap_or("").to_owned(),
            realm: a.realm().unwrap_or("").to_owned(),
            nonce: a.nonce().unwrap_or("").to_owned(),
            uri: own(a.uri()),
            response: a.response().unwrap_or("").to_owned(),
            algorithm: own(a.algorithm()),
            qop: own(a.qop()),
            nc: own(a.nc()),
            cnonce: own(a.cnonce()),
            auts: own(a.auts()),
            integrity_protected: own(a.integrity_protected()),
        }))
    }

    fn vouched_reregistration(&self, p: &Parsed) -> bool {
        let vouched = p
            .creds
            .as_ref()
            .and_then(|c| c.integrity_protected.as_deref())
            .is_some_and(|v| {
                ["yes", "tls-yes", "tls-connected", "ip-assoc-yes"]
                    .iter()
                    .any(|ok| v.eq_ignore_ascii_case(ok))
            });
        if !vouched {
            return false;
        }
        let shard = lock(self.shard(&p.impi));
        shard
            .get(&p.impi)
            .is_some_and(|u| u.pending.is_none() && u.regs.contains_key(&key(&p.impu)))
    }

    fn take_challenge(&self, impi: &str, impu: &str, nonce: &str) -> Option<Challenge> {
        let mut shard = lock(self.shard(impi));
        let user = shard.get_mut(impi)?;
        let ok = user.pending.as_ref().is_some_and(|c| {
            c.nonce == nonce && same_uri(&c.impu, impu) && c.expires > Instant::now()
        });
        if ok {
            user.pending.take().map(|c| *c)
        } else {
            None
        }
    }

    /// MAR, keep the vector, 401.
    async fn challenge(&self, req: &Message, p: &Parsed, tag: &str) -> Result<Message, Reject> {
        let v = self.inner.cx.mar(&p.impi, &p.impu, None).await?;
        self.challenge_with(req, p, v, tag)
    }

    async fn resync(
        &self,
        req: &Message,
        p: &Parsed,
        nonce: &str,
        auts: &str,
        tag: &str,
    ) -> Result<Message, Reject> {
        let old = AkaNonce::decode(nonce)
            .map_err(|_| Reject::bad("auts with a nonce that is not an AKA nonce"))?;
        let auts = digest_aka::decode_auts(auts).map_err(|e| Reject::bad(format!("auts: {e}")))?;
        let sip_auth = ims_aka::vector::resync_authorization(&old.rand, &auts);
        tracing::info!(
            impi = %p.impi,
            impu = %p.impu,
            "{}: UE sent AUTS: its USIM found the SQN out of range → resync with the HSS",
            p.impi
        );
        // Whatever was pending is void: the UE refused that AUTN.
        if let Some(u) = lock(self.shard(&p.impi)).get_mut(&p.impi) {
            u.pending = None;
        }
        let v = match self.inner.cx.mar(&p.impi, &p.impu, Some(&sip_auth)).await {
            Ok(v) => v,
            Err(e @ CxFailure::Refused { code, .. })
                if code == ims_diameter::dict::result_code::INVALID_AVP_VALUE =>
            {
                tracing::warn!(
                    impi = %p.impi,
                    impu = %p.impu,
                    cause = "auts_rejected",
                    status = 403,
                    "{}: the HSS refused the UE's AUTS (MAC-S check failed): K or OPc at the HSS differ from the SIM's, or a forged AUTS",
                    p.impi
                );
                return Err(Reject::from(e).logged());
            }
            Err(e) => return Err(e.into()),
        };
        self.challenge_with(req, p, v, tag)
    }

    fn challenge_with(
        &self,
        req: &Message,
        p: &Parsed,
        v: Vector,
        tag: &str,
    ) -> Result<Message, Reject> {
        let (header, nonce, realm, secret) = match v {
            Vector::Aka {
                rand,
                autn,
                xres,
                ck,
                ik,
            } => {
                let nonce = Vector::aka_nonce(&rand, &autn);
                let realm = self.inner.cfg.realm.clone();
                let h = format!(
                    "Digest realm={}, nonce=\"{nonce}\", algorithm={}, qop=\"auth,auth-int\", ck=\"{}\", ik=\"{}\"",
                    text::quote(&realm),
                    digest_aka::ALGORITHM,
                    ck.as_str(),
                    ik.as_str()
                );
                (h, nonce, realm, Secret::Aka(xres))
            }
            Vector::Digest { realm, ha1, qop } => {
                let mut raw = [0u8; 16];
                self.inner
                    .rng
                    .fill(&mut raw)
                    .map_err(|_| Reject::new(500, "Server Internal Error (no randomness)"))?;
                let nonce = hex::encode(raw);
                let qop = if qop.is_empty() {
                    "auth".to_owned()
                } else {
                    qop
                };
                let h = format!(
                    "Digest realm={}, nonce=\"{nonce}\", algorithm=MD5, qop={}",
                    text::quote(&realm),
                    text::quote(&qop)
                );
                (h, nonce, realm, Secret::Digest(ha1))
            }
        };
        let ch = Challenge {
            impu: p.impu.clone(),
            nonce,
            realm,
            secret,
            expires: Instant::now() + Duration::from_secs(self.inner.cfg.reg_await_auth_seconds),
        };
        lock(self.shard(&p.impi))
            .entry(p.impi.clone())
            .or_default()
            .pending = Some(Box::new(ch));
        tracing::info!(impi = %p.impi, impu = %p.impu, "challenged (401)");
        Ok(respond(
            req,
            401,
            "Unauthorized",
            tag,
            &[("WWW-Authenticate", header)],
        ))
    }

    /// Authenticated (or vouched for): register or deregister the contacts.
    async fn bind(&self, req: &Message, p: &Parsed, tag: &str) -> Result<Message, Reject> {
        let k = key(&p.impu);
        // RFC 3261 §10.3 step 7: a binding refreshed within its Call-ID needs a higher CSeq;
        // an integrity-protected re-registration may not add contacts (TS 24.229 §5.4.1.2.1).
        let vouched = p.creds.as_ref().is_none_or(|c| c.nonce.is_empty());
        let existed = {
            let shard = lock(self.shard(&p.impi));
            let reg = shard.get(&p.impi).and_then(|u| u.regs.get(&k));
            if let (Some(reg), Some(cs)) = (reg, &p.contacts) {
                for c in cs {
                    let old = reg
                        .bindings
                        .iter()
                        .find(|b| b.contact_uri.eq_ignore_ascii_case(&c.uri));
                    if let Some(b) = old
                        && b.call_id == p.call_id
                        && b.cseq >= i64::from(p.cseq)
                    {
                        return Err(Reject::new(
                            500,
                            "Server Internal Error (CSeq out of order)",
                        ));
                    }
                    if vouched && old.is_none() && c.expires != 0 {
                        return Err(Reject::forbidden(
                            "new contact in an integrity-protected re-registration",
                        ));
                    }
                }
            }
            reg.is_some()
        };
        if p.removes_everything() {
            return self.unbind(req, p, tag).await;
        }
        let user_data = if existed {
            match self
                .inner
                .cx
                .sar(&p.impi, &[&p.impu], Sat::ReRegistration, true)
                .await
            {
                Err(CxFailure::Refused { code, .. })
                    if code == erc::ERROR_IDENTITY_NOT_REGISTERED =>
                {
                    tracing::warn!(impu = %p.impu, "the HSS lost our registration: SAR REGISTRATION");
                    self.inner
                        .cx
                        .sar(&p.impi, &[&p.impu], Sat::Registration, false)
                        .await?
                }
                other => other?,
            }
        } else {
            self.inner
                .cx
                .sar(&p.impi, &[&p.impu], Sat::Registration, false)
                .await?
        };
        let profile = match &user_data {
            Some(xml) => Some(self.profile_of(xml, &p.impu).inspect_err(|_| {
                if !existed {
                    self.undo_registration(p);
                }
            })?),
            None if !existed => {
                self.undo_registration(p);
                return Err(Reject::new(
                    500,
                    "Server Internal Error (no User-Data from the HSS)",
                ));
            }
            None => None,
        };
        let now = now_ms();
        let contacts = p.contacts.as_deref().unwrap_or_default();
        let (rec, refreshed) = {
            let mut shard = lock(self.shard(&p.impi));
            let user = shard.entry(p.impi.clone()).or_default();
            if let Some((_, others)) = &profile {
                user.identities.clone_from(others);
            }
            let refreshed = user.regs.contains_key(&k);
            let reg = user.regs.get_or_insert_with(&k, || RegistrationRecord {
                impu: p.impu.clone(),
                impi: p.impi.clone(),
                scscf_name: self.inner.cfg.name.clone(),
                user_data: String::new(),
                associated_uris: vec![p.impu.clone()],
                bindings: Vec::new(),
            });
            if let Some((set, _)) = &profile {
                reg.associated_uris.clone_from(set);
            }
            for c in contacts {
                reg.bindings
                    .retain(|b| !b.contact_uri.eq_ignore_ascii_case(&c.uri));
                if c.expires > 0 {
                    reg.bindings.reserve_exact(1);
                    reg.bindings.push(BindingRecord {
                        contact_uri: c.uri.clone(),
                        contact: c.value.clone(),
                        path: p.paths.clone(),
                        call_id: p.call_id.clone(),
                        cseq: i64::from(p.cseq),
                        expires_at: now + i64::from(c.expires) * 1000,
                    });
                }
            }
            (reg.clone(), refreshed)
        };
        self.index_add(&rec);
        self.persist_with(&rec, user_data.as_deref()).await;
        let touched: Vec<String> = contacts.iter().map(|c| c.uri.clone()).collect();
        self.emit(
            if refreshed {
                RegEventKind::Refreshed
            } else {
                RegEventKind::Registered
            },
            &rec,
            touched,
        );
        tracing::info!(
            impi = %p.impi,
            impu = %p.impu,
            contacts = rec.bindings.len(),
            refreshed,
            "registered (200)"
        );
        let mut headers: Vec<(&str, String)> = Vec::new();
        for path in req.headers_named(HeaderName::Path) {
            if let Ok(v) = path.value_str() {
                headers.push(("Path", v.to_owned()));
            }
        }
        headers.push((
            "Service-Route",
            format!("<sip:orig@{};lr>", self.inner.host_port),
        ));
        headers.push((
            "P-Associated-URI",
            rec.associated_uris
                .iter()
                .map(|u| format!("<{u}>"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
        push_contacts(&mut headers, &rec.bindings, now);
        headers.push(("Date", http_date(SystemTime::now())));
        Ok(respond(req, 200, "OK", tag, &headers))
    }

    /// The implicit set of `impu` in the User-Data `xml`, and the subscription's other
    /// public identities ([`other_identities`]).
    fn profile_of(&self, xml: &str, impu: &str) -> Result<(Vec<String>, Vec<String>), Reject> {
        let sub = ImsSubscription::parse(xml.as_bytes()).map_err(|e| {
            tracing::error!(%impu, error = %e, "unusable User-Data from the HSS");
            Reject::new(
                500,
                "Server Internal Error (unusable User-Data from the HSS)",
            )
        })?;
        let set = sub.implicit_set(impu).ok_or_else(|| {
            tracing::error!(%impu, "User-Data from the HSS does not list the registered identity");
            Reject::new(
                500,
                "Server Internal Error (User-Data without the registered identity)",
            )
        })?;
        let others = other_identities(&sub, &set);
        Ok((set, others))
    }

    /// The HSS registered the user but we cannot serve them: tell it (in the background).
    fn undo_registration(&self, p: &Parsed) {
        let me = self.clone();
        let (impi, impu) = (p.impi.clone(), p.impu.clone());
        tokio::spawn(async move {
            if let Err(e) = me
                .inner
                .cx
                .sar(&impi, &[&impu], Sat::UserDeregistration, true)
                .await
            {
                tracing::warn!(%impu, error = %e, "SAR USER_DEREGISTRATION (undo) failed");
            }
        });
    }

    async fn unbind(&self, req: &Message, p: &Parsed, tag: &str) -> Result<Message, Reject> {
        let k = key(&p.impu);
        let (removed, left) = {
            let mut shard = lock(self.shard(&p.impi));
            let mut removed = Vec::new();
            let mut left = None;
            if let Some(user) = shard.get_mut(&p.impi)
                && let Some(reg) = user.regs.get_mut(&k)
            {
                match &p.contacts {
                    None => removed.append(&mut reg.bindings),
                    Some(cs) => {
                        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut reg.bindings)
                            .into_iter()
                            .partition(|b| {
                                cs.iter()
                                    .any(|c| c.uri.eq_ignore_ascii_case(&b.contact_uri))
                            });
                        removed = gone;
                        reg.bindings = keep;
                    }
                }
                left = Some(reg.clone());
                if reg.bindings.is_empty() {
                    user.regs.remove(&k);
                }
            }
            (removed, left)
        };
        let removed_uris: Vec<String> = removed.iter().map(|b| b.contact_uri.clone()).collect();
        let now = now_ms();
        let mut headers: Vec<(&str, String)> = Vec::new();
        match &left {
            Some(rec) if !rec.bindings.is_empty() => {
                self.persist(rec).await;
                self.emit(RegEventKind::Deregistered, rec, removed_uris);
                push_contacts(&mut headers, &rec.bindings, now);
            }
            _ => {
                // Nothing left (or nothing was registered: the MAR made the HSS record us).
                if let Err(e) = self
                    .inner
                    .cx
                    .sar(&p.impi, &[&p.impu], Sat::UserDeregistration, true)
                    .await
                {
                    tracing::warn!(impu = %p.impu, error = %e, "SAR USER_DEREGISTRATION failed");
                }
                if let Some(rec) = &left {
                    self.index_remove(rec);
                    self.forget(&rec.impu).await;
                    self.emit(RegEventKind::Deregistered, rec, removed_uris);
                }
            }
        }
        tracing::info!(impi = %p.impi, impu = %p.impu, "deregistered (200)");
        headers.push(("Date", http_date(SystemTime::now())));
        Ok(respond(req, 200, "OK", tag, &headers))
    }

    // ------------------------------------------------------------------------------------
    // timers

    /// Removes expired bindings (SAR TIMEOUT_DEREGISTRATION when an IMPU has none left) and
    /// expired challenges (SAR AUTHENTICATION_TIMEOUT when the IMPU is not registered), in
    /// every shard, and returns when each expiry's SAR, write and event are done. The timer
    /// task does the same one shard at a time ([`Registrar::expired_in`]).
    pub async fn sweep(&self) {
        let room = Arc::new(tokio::sync::Semaphore::new(SWEEP_SARS));
        let mut running = Vec::new();
        for shard in 0..SHARDS {
            running.extend(self.finish_expiries(shard, &room).await);
        }
        for task in running {
            let _ = task.await;
        }
    }

    /// Takes shard `shard`'s expiries ([`Registrar::expired_in`]) and finishes each in a
    /// task of its own ([`Registrar::finish_expiry`]) once `room` has a permit for it: at
    /// most its [`SWEEP_SARS`] permits' worth in flight. Returns the tasks.
    async fn finish_expiries(
        &self,
        shard: usize,
        room: &Arc<tokio::sync::Semaphore>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for job in self.expired_in(shard) {
            let Ok(permit) = room.clone().acquire_owned().await else {
                break;
            };
            let r = self.clone();
            tasks.push(tokio::spawn(async move {
                r.finish_expiry(job).await;
                drop(permit);
            }));
        }
        tasks
    }

    /// Takes shard `shard`'s expired bindings and challenges out of memory and queues their
    /// store writes; what is left of each (SAR, commit, event) is returned for
    /// [`Registrar::finish_expiry`].
    ///
    /// The timer walks one shard every [`SWEEP_INTERVAL`] / [`SHARDS`] rather than all of
    /// them every [`SWEEP_INTERVAL`]: the same work and the same one-second precision, spread
    /// evenly instead of a walk of every user and a second's SARs at once. (The 100,000-UE
    /// soak's refusals were suspected of coming from that burst; spreading it did not change
    /// them: docs/PERFORMANCE.md.)
    fn expired_in(&self, shard: usize) -> Vec<Expiry> {
        let Some(s) = self.inner.shards.get(shard) else {
            return Vec::new();
        };
        let now = now_ms();
        let instant = Instant::now();
        let mut gone: Vec<(RegistrationRecord, Vec<String>)> = Vec::new();
        let mut shrunk: Vec<(RegistrationRecord, Vec<String>)> = Vec::new();
        let mut timed_out: Vec<(String, String)> = Vec::new();
        let keep = Duration::from_secs(self.inner.cfg.auth_lockout_seconds);
        {
            let mut shard = lock(s);
            shard.retain(|impi, user| {
                if user.lockout.as_ref().is_some_and(|l| l.idle(instant, keep)) {
                    user.lockout = None;
                }
                if user.pending.as_ref().is_some_and(|c| c.expires <= instant)
                    && let Some(c) = user.pending.take()
                    && !user.regs.contains_key(&key(&c.impu))
                {
                    timed_out.push((impi.clone(), c.impu));
                }
                user.regs.retain(|reg| {
                    let before = reg.bindings.len();
                    let mut expired = Vec::new();
                    reg.bindings.retain(|b| {
                        let live = b.expires_at > now;
                        if !live {
                            expired.push(b.contact_uri.clone());
                        }
                        live
                    });
                    if reg.bindings.is_empty() {
                        gone.push((reg.clone(), expired));
                        false
                    } else {
                        if reg.bindings.len() != before {
                            shrunk.push((reg.clone(), expired));
                        }
                        true
                    }
                });
                user.pending.is_some()
                    || !user.regs.is_empty()
                    || user.lockout.as_ref().is_some_and(|l| l.last.is_some())
            });
        }
        // The store writes join the writer's queue now, ahead of any REGISTER that comes
        // after this walk (a UE registering anew is saved after its old registration was
        // deleted, never before). Then the HSS, SWEEP_SARS at a time: one by one, a wave of
        // expiries (UEs that all registered in the same second) took a round trip each and
        // the sweep fell behind. Each reg event goes once its SAR is answered and its write
        // committed, as when the sweep did one at a time.
        let mut jobs = Vec::with_capacity(timed_out.len() + shrunk.len() + gone.len());
        for (impi, impu) in timed_out {
            tracing::info!(
                %impi,
                %impu,
                cause = "unanswered",
                "{impi}: challenge unanswered for {} s (reg-await-auth): the UE gave up — its USIM may have rejected AUTN (MAC failure: K or OPc at the HSS differ from the SIM's), or it lost the network",
                self.inner.cfg.reg_await_auth_seconds
            );
            jobs.push(Expiry::Challenge { impi, impu });
        }
        for (rec, expired) in shrunk {
            let write = self.queue_write(RegistrationWrite::Save(rec.clone()));
            jobs.push(Expiry::Bindings {
                rec,
                expired,
                write,
                gone: false,
            });
        }
        for (rec, expired) in gone {
            tracing::info!(impi = %rec.impi, impu = %rec.impu, "registration expired");
            self.index_remove(&rec);
            let write = self.queue_write(RegistrationWrite::Delete(rec.impu.clone()));
            jobs.push(Expiry::Bindings {
                rec,
                expired,
                write,
                gone: true,
            });
        }
        jobs
    }

    /// The rest of one expiry found by [`Registrar::sweep`]: its SAR, its write, its event.
    async fn finish_expiry(&self, job: Expiry) {
        match job {
            Expiry::Challenge { impi, impu } => {
                if let Err(e) = self
                    .inner
                    .cx
                    .sar(&impi, &[&impu], Sat::AuthenticationTimeout, false)
                    .await
                {
                    tracing::warn!(%impu, error = %e, "SAR AUTHENTICATION_TIMEOUT failed");
                }
            }
            Expiry::Bindings {
                rec,
                expired,
                write,
                gone,
            } => {
                if gone
                    && let Err(e) = self
                        .inner
                        .cx
                        .sar(&rec.impi, &[&rec.impu], Sat::TimeoutDeregistration, true)
                        .await
                {
                    tracing::warn!(impu = %rec.impu, error = %e, "SAR TIMEOUT_DEREGISTRATION failed");
                }
                let done = match write {
                    Ok(rx) => rx
                        .await
                        .map_err(|_| "the store writer has stopped".to_owned())
                        .and_then(|r| r),
                    Err(e) => Err(e),
                };
                if let Err(e) = done {
                    tracing::error!(impu = %rec.impu, error = %e, "expired registration not written to the store");
                }
                self.emit(RegEventKind::Expired, &rec, expired);
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // requests from the HSS

    /// Handles one request from the HSS (RTR, PPR) and returns the encoded answer (empty
    /// when there is nothing to answer, e.g. the bytes were an answer).
    pub async fn handle_cx_request(&self, bytes: &[u8]) -> Vec<u8> {
        let msg = match ims_diameter::Message::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "unparsable request from the HSS dropped");
                return Vec::new();
            }
        };
        if !msg.is_request() {
            return Vec::new();
        }
        let (host, realm) = self.inner.cx.origin();
        match msg.command_code() {
            dict::command::REGISTRATION_TERMINATION => match Rtr::decode(&msg) {
                Ok(rtr) => {
                    self.terminate(&rtr).await;
                    let a = Rta {
                        base: rtr.base.answer(AnswerResult::SUCCESS, host, realm),
                    };
                    encode(|b| a.encode(b))
                }
                Err(e) => error_answer(&msg, &e, host, realm),
            },
            dict::command::PUSH_PROFILE => match Ppr::decode(&msg) {
                Ok(ppr) => {
                    let result = self.push_profile(&ppr).await;
                    let a = Ppa {
                        base: ppr.base.answer(result, host, realm),
                    };
                    encode(|b| a.encode(b))
                }
                Err(e) => error_answer(&msg, &e, host, realm),
            },
            code => {
                let e = ims_diameter::Error::CommandUnsupported {
                    code,
                    request: true,
                };
                error_answer(&msg, &e, host, realm)
            }
        }
    }

    async fn terminate(&self, rtr: &Rtr<'_>) {
        let impi = rtr.user_name;
        let named = &rtr.public_identities;
        let removed: Vec<RegistrationRecord> = {
            let mut shard = lock(self.shard(impi));
            match shard.get_mut(impi) {
                None => Vec::new(),
                Some(user) => {
                    let out = user.regs.take_if(|r| {
                        named.is_empty()
                            || named.iter().any(|n| {
                                same_uri(&r.impu, n)
                                    || r.associated_uris.iter().any(|a| same_uri(a, n))
                            })
                    });
                    if named.is_empty() {
                        user.pending = None;
                    }
                    out
                }
            }
        };
        tracing::info!(
            %impi,
            removed = removed.len(),
            reason = ?rtr.deregistration_reason.reason_code,
            "RTR from the HSS"
        );
        for rec in removed {
            self.index_remove(&rec);
            self.forget(&rec.impu).await;
            let contacts = rec.bindings.iter().map(|b| b.contact_uri.clone()).collect();
            let mut gone = rec;
            gone.bindings.clear();
            self.emit(RegEventKind::Terminated, &gone, contacts);
        }
    }

    async fn push_profile(&self, ppr: &Ppr<'_>) -> AnswerResult {
        let impi = ppr.user_name;
        let sub = match ppr.user_data.map(ImsSubscription::parse) {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                tracing::warn!(%impi, error = %e, "PPR with unusable User-Data");
                return AnswerResult::experimental(erc::ERROR_NOT_SUPPORTED_USER_DATA);
            }
        };
        let xml = ppr
            .user_data
            .map(|d| String::from_utf8_lossy(d).into_owned());
        let updated: Vec<RegistrationRecord> = {
            let mut shard = lock(self.shard(impi));
            let Some(user) = shard.get_mut(impi).filter(|u| !u.regs.is_empty()) else {
                tracing::info!(%impi, "PPR for a user not registered here");
                return AnswerResult::experimental(erc::ERROR_USER_UNKNOWN);
            };
            if let Some(sub) = &sub {
                for reg in user.regs.values_mut() {
                    if let Some(set) = sub.implicit_set(&reg.impu) {
                        reg.associated_uris = set;
                    }
                }
                let sets: Vec<String> = user
                    .regs
                    .values()
                    .flat_map(|r| r.associated_uris.iter().cloned())
                    .collect();
                user.identities = other_identities(sub, &sets);
            }
            user.regs.values().cloned().collect()
        };
        for rec in &updated {
            self.index_add(rec);
            self.persist_with(rec, xml.as_deref()).await;
        }
        tracing::info!(%impi, registrations = updated.len(), "PPR: profile updated");
        AnswerResult::SUCCESS
    }
}

/// The subscription's public identities that are not barred, when some are outside `set`
/// (the registered implicit sets); empty when `set` holds them all, as for most users.
fn other_identities(sub: &ImsSubscription, set: &[String]) -> Vec<String> {
    let all: Vec<String> = sub
        .service_profiles
        .iter()
        .flat_map(|sp| sp.public_identities.iter())
        .filter(|pi| !pi.barred)
        .map(|pi| pi.identity.clone())
        .collect();
    if all.iter().all(|i| set.iter().any(|s| same_uri(s, i))) {
        Vec::new()
    } else {
        all
    }
}

fn push_contacts(headers: &mut Vec<(&str, String)>, bindings: &[BindingRecord], now: i64) {
    for b in bindings {
        let secs = remaining_secs(b.expires_at, now).to_string();
        headers.push((
            "Contact",
            text::set_param(&b.contact, "expires", Some(&secs)),
        ));
    }
}

/// Why a response did not pass.
enum Verdict {
    /// The Authorization cannot be checked (400).
    Malformed(String),
    /// It can, and it is wrong (403).
    Wrong(FailureCause),
}

fn verify(req: &Message, c: &Creds, ch: &Challenge) -> Result<(), Verdict> {
    let alg_ok = match (&ch.secret, c.algorithm.as_deref()) {
        (Secret::Aka(_), Some(a)) => a.eq_ignore_ascii_case(digest_aka::ALGORITHM),
        (Secret::Aka(_), None) => false,
        (Secret::Digest(_), a) => a.is_none_or(|a| a.eq_ignore_ascii_case("MD5")),
    };
    if !alg_ok {
        return Err(Verdict::Wrong(FailureCause::Mismatch(
            "algorithm differs from the challenge",
        )));
    }
    let uri = c
        .uri
        .as_deref()
        .ok_or_else(|| Verdict::Malformed("Authorization without uri".into()))?;
    let qop = match c.qop.as_deref() {
        None => None,
        Some(q) => Some(Qop::parse(q).map_err(|e| Verdict::Malformed(e.to_string()))?),
    };
    let params = DigestParams {
        username: &c.username,
        realm: &ch.realm,
        nonce: &c.nonce,
        uri,
        qop,
        nc: c.nc.as_deref(),
        cnonce: c.cnonce.as_deref(),
        method: "REGISTER",
        body: req.body(),
    };
    if !c.realm.eq_ignore_ascii_case(&ch.realm) {
        return Err(Verdict::Wrong(FailureCause::Mismatch(
            "realm differs from the challenge",
        )));
    }
    let (r, wrong) = match &ch.secret {
        Secret::Aka(xres) => {
            // RFC 3310 §3.3 / TS 24.229 §5.1.1.5.3: a UE whose USIM refused AUTN answers with
            // an empty response, or one computed with the empty password (and no auts).
            let empty = c.response.is_empty()
                || params
                    .verify_password(&c.response, digest_aka::RESYNC_PASSWORD)
                    .is_ok();
            if empty {
                return Err(Verdict::Wrong(FailureCause::AutnRejected));
            }
            (
                params.verify_password(&c.response, digest_aka::password(xres)),
                FailureCause::WrongRes,
            )
        }
        Secret::Digest(ha1) => (params.verify(&c.response, ha1), FailureCause::WrongPassword),
    };
    match r {
        Ok(()) => Ok(()),
        Err(AkaError::ResponseMismatch | AkaError::InvalidHex { .. }) => Err(Verdict::Wrong(wrong)),
        Err(e) => Err(Verdict::Malformed(format!("digest: {e}"))),
    }
}

fn encode(f: impl FnOnce(&mut Vec<u8>) -> Result<usize, ims_diameter::Error>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    match f(&mut out) {
        Ok(_) => out,
        Err(e) => {
            tracing::error!(error = %e, "answer to the HSS not encodable");
            Vec::new()
        }
    }
}

/// An answer to a request we could not decode: its Result-Code, Failed-AVP and identifiers
/// ([`ims_net::diameter::refusal`]).
fn error_answer(
    msg: &ims_diameter::Message<'_>,
    e: &ims_diameter::Error,
    host: &str,
    realm: &str,
) -> Vec<u8> {
    tracing::info!(command = msg.command_code(), error = %e, "request from the HSS refused");
    ims_net::diameter::refusal(msg, e, host, realm)
}

/// The expiry timer: one shard every [`SWEEP_INTERVAL`] / [`SHARDS`]
/// ([`Registrar::expired_in`]), at most [`SWEEP_SARS`] expiries finishing at once across
/// ticks (a tick waits for room, so a wave of expiries slows the walk, not the HSS).
async fn timer(inner: Weak<Inner>) {
    let room = Arc::new(tokio::sync::Semaphore::new(SWEEP_SARS));
    let mut tick = tokio::time::interval(SWEEP_INTERVAL / SHARDS as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shard = 0;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        Registrar { inner }.finish_expiries(shard, &room).await;
        shard = (shard + 1) % SHARDS;
    }
}

async fn hss_requests_loop(inner: Weak<Inner>, mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>) {
    while let Some(bytes) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let r = Registrar { inner };
        let answer = r.handle_cx_request(&bytes).await;
        if !answer.is_empty() {
            r.inner.cx.client().answer(answer).await;
        }
    }
}

/// A change for the store writer and who waits for its commit.
type StoreResult = Result<(), String>;

/// What is left to do for one expiry once [`Registrar::sweep`] has taken it out of memory.
enum Expiry {
    /// A challenge not answered in time: SAR AUTHENTICATION_TIMEOUT.
    Challenge { impi: String, impu: String },
    /// Bindings expired: their write (queued already), the SAR TIMEOUT_DEREGISTRATION when
    /// none is left (`gone`), the reg event.
    Bindings {
        rec: RegistrationRecord,
        expired: Vec<String>,
        write: Result<oneshot::Receiver<StoreResult>, String>,
        gone: bool,
    },
}
type StoreJob = (RegistrationWrite, oneshot::Sender<StoreResult>);

/// Most changes committed in one transaction.
const WRITE_BATCH: usize = 512;

/// The store writer: applies every change waiting in one transaction, in queue order (the
/// changes of one IMPU are queued in the order memory made them), and tells each waiter.
/// Ends when the registrar is gone and the queue is empty.
async fn store_writer(
    store: Store,
    mut queue: mpsc::UnboundedReceiver<StoreJob>,
    registrar: Weak<Inner>,
) {
    let mut jobs = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut jobs, WRITE_BATCH).await > 0 {
        let (writes, waiting): (Vec<_>, Vec<_>) = jobs.drain(..).unzip();
        match store.apply_registrations(&writes).await {
            Ok(()) => {
                for tx in waiting {
                    let _ = tx.send(Ok(()));
                }
            }
            Err(e) if writes.len() > 1 => {
                tracing::warn!(error = %e, writes = writes.len(),
                    "registration batch failed; writing its changes one by one");
                for (w, tx) in writes.iter().zip(waiting) {
                    let one = store.apply_registrations(std::slice::from_ref(w)).await;
                    let _ = tx.send(one.map_err(|e| e.to_string()));
                }
            }
            Err(e) => {
                for tx in waiting {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        }
        if let Some(r) = registrar.upgrade() {
            r.metrics.store_batch(writes.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(uri: &str, irs: u32, barred: bool) -> String {
        format!(
            "<PublicIdentity>{}<Identity>{uri}</Identity><Extension><IdentityType>0</IdentityType>\
             <Extension><Extension><IRS>{irs}</IRS></Extension></Extension></Extension></PublicIdentity>",
            if barred {
                "<BarringIndication>1</BarringIndication>"
            } else {
                ""
            }
        )
    }

    fn subscription(ids: &[String]) -> ImsSubscription {
        let xml = format!(
            "<IMSSubscription><PrivateID>alice.private@hims.net</PrivateID><ServiceProfile>{}\
             </ServiceProfile></IMSSubscription>",
            ids.concat()
        );
        ImsSubscription::parse(xml.as_bytes()).expect("parses")
    }

    #[test]
    fn other_identities_are_kept_only_beyond_the_implicit_set() {
        // Every identity that is not barred is in the registered set: nothing to keep.
        let one = subscription(&[
            identity("sip:alice@hims.net", 0, false),
            identity("tel:+4930123", 0, false),
            identity("sip:hidden@hims.net", 0, true),
        ]);
        let set = one.implicit_set("sip:alice@hims.net").expect("listed");
        assert_eq!(set, ["sip:alice@hims.net", "tel:+4930123"]);
        assert!(other_identities(&one, &set).is_empty());
        // A second implicit set: the subscription's identities (not the barred one) are kept,
        // so that a reg-event subscriber may be any of them.
        let two = subscription(&[
            identity("sip:alice@hims.net", 0, false),
            identity("sip:work@hims.net", 1, false),
            identity("sip:hidden@hims.net", 1, true),
        ]);
        let set = two.implicit_set("sip:alice@hims.net").expect("listed");
        assert_eq!(set, ["sip:alice@hims.net"]);
        assert_eq!(
            other_identities(&two, &set),
            ["sip:alice@hims.net", "sip:work@hims.net"]
        );
    }
}

//! A swarm: many UEs registering over one UDP socket, sans-io (the style of `quinn-proto`).
//!
//! [`Swarm`] holds the state of many simulated UEs and no socket, task or clock of its own:
//! the caller feeds it received datagrams ([`Swarm::handle_datagram`]) and the time
//! ([`Swarm::handle_timeout`]), and takes out datagrams to send ([`Swarm::poll_transmit`]),
//! per-UE outcomes ([`Swarm::poll_event`]) and the next instant it needs to be woken
//! ([`Swarm::poll_timeout`]). `ims-load` runs one swarm per socket, so that 100,000 UEs need
//! a handful of file descriptors (as SIPp does) instead of one socket and one task each.
//!
//! # A UE's life
//! Subscriber `n` is `<prefix><n>@<domain>` (IMPI; IMPU `sip:<prefix><n>@<domain>`), with the
//! swarm's one K/OPc (or password). [`Swarm::start`] runs its [`Plan`]:
//! 1. **Register**: REGISTER (the Authorization of a first REGISTER: username, empty nonce and
//!    response, as [`crate::Ue::register`] sends) → 401/407 → the answer → 200. Digest-AKAv1-MD5:
//!    RAND and AUTN from the nonce, AUTN's MAC checked, RES (the digest password), CK and IK
//!    from crates/aka's Milenage; SIP Digest MD5 with the password. At most three challenges
//!    are answered per phase (as [`crate::Ue::register`]).
//! 2. **Re-register** ([`Plan::reregister_every`], [`Plan::reregisters`] times): the same
//!    Call-ID, CSeq + 1, the previous Authorization with `nc` incremented (TS 24.229
//!    §5.1.1.4.1 lets a UE reuse the last challenge's nonce). Our S-CSCF takes a nonce once
//!    (crates/scscf `take_challenge`) and, unless the P-CSCF vouches for the UE
//!    (`integrity-protected="yes"`, with IPsec), challenges again: the swarm answers that 401
//!    as in 1. A registrar that accepts the reused nonce answers 200 at once.
//! 3. **Deregister** ([`Plan::deregister`]): `Expires: 0` with the first-REGISTER
//!    Authorization, as [`crate::Ue::register`]`(0)` does; the S-CSCF challenges it and the
//!    swarm answers.
//!
//! Each REGISTER is a non-INVITE client transaction over UDP (RFC 3261 §17.1.2): Timer E
//! retransmits it after T1 (500 ms), doubling up to T2 (4 s); Timer F gives up at
//! min(64·T1, [`SwarmConfig::timeout`]). Retransmissions are rebuilt from the UE's state (no
//! copy of the request is kept). The USIM side checks AUTN's MAC but keeps no SQN record: a
//! swarm UE accepts any SQN, like a new USIM, and never resynchronises.
//!
//! # Matching
//! The Call-ID is `<slot:8 hex><salt:8 hex>.<swarm seed:8 hex>`: a response's Call-ID names
//! its UE's slot directly (no map), the salt (new for each UE life) rejects answers meant for
//! a previous occupant of the slot, and CSeq must be the one in flight. Anything else — stray
//! responses, requests, garbage — is ignored (traced at `trace` level), never a panic.
//!
//! # Memory
//! A UE is one [`Slot`] in a vector (80 bytes, checked by a unit test), plus, while it keeps
//! the last challenge (answering it, or waiting to re-register), its nonce on the heap
//! (44 bytes of base64 for AKA, 64 with the allocator's rounding) and one 16-byte timer entry
//! when it waits for something. A registered UE waiting to re-register costs about 190 bytes:
//! measured, 1,000,000 of them take 183 MB of resident memory (192 bytes per UE, with the
//! vector's growth slack; the `swarm` bench's `idle_registered_ues` prints the figure).
//! Slots of finished UEs are reused.
//!
//! # Speed
//! The `swarm` bench: 1,000 whole AKA registrations against the in-memory registrar take
//! 10.2 ms of one core, 6.6 ms of which are the registrar's: about 3.6 µs of the swarm's own
//! per registration (two requests built, two responses parsed, Milenage and two MD5
//! digests), some 275,000 registrations a second. Over real sockets `ims-load` spends about
//! 11 µs per registration, most of it in the send and receive system calls.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ims_aka::digest_aka::{self, AkaNonce};
use ims_aka::{Milenage, Qop};
use ims_sip::{HeaderName, Message};

use crate::{
    Challenge, ChallengeKind, DigestAnswer, RegisterText, write_authorization,
    write_initial_authorization, write_register,
};

/// The credentials every UE of a swarm shares.
#[derive(Clone)]
pub enum SwarmCredentials {
    /// A USIM: K and OPc.
    Aka {
        /// K.
        k: [u8; 16],
        /// OPc.
        opc: [u8; 16],
    },
    /// SIP Digest MD5 with this password.
    Password(String),
}

impl fmt::Debug for SwarmCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwarmCredentials::Aka { .. } => f.write_str("Aka { .. }"),
            SwarmCredentials::Password(_) => f.write_str("Password(..)"),
        }
    }
}

/// What each UE does after [`Swarm::start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    /// Wait this long after each successful (re-)registration, then re-register.
    pub reregister_every: Option<Duration>,
    /// How many re-registrations (with `reregister_every`); [`Swarm::wind_down`] ends them
    /// earlier. `u32::MAX`: until then.
    pub reregisters: u32,
    /// Deregister after the last registration.
    pub deregister: bool,
}

/// The swarm's settings.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Home domain: Request-URI `sip:<domain>`, identities `<prefix><n>@<domain>`.
    pub domain: String,
    /// The identities' prefix.
    pub prefix: String,
    /// Where the REGISTERs go.
    pub pcscf: SocketAddr,
    /// The socket's own address (Via sent-by and Contact).
    pub local: SocketAddr,
    /// The credentials of every UE.
    pub credentials: SwarmCredentials,
    /// The Expires of a registration.
    pub expires: u32,
    /// What each UE does.
    pub plan: Plan,
    /// T1 (RFC 3261: 500 ms).
    pub t1: Duration,
    /// T2 (RFC 3261: 4 s).
    pub t2: Duration,
    /// Give up a REGISTER not answered within this (and at 64·T1 at the latest).
    pub timeout: Duration,
    /// Randomness of Call-IDs and tags (distinct per swarm and run).
    pub seed: u64,
}

impl SwarmConfig {
    /// Settings with RFC 3261's timers, `Expires: 600`, a 32 s timeout and a plan of one
    /// registration.
    pub fn new(
        domain: impl Into<String>,
        prefix: impl Into<String>,
        pcscf: SocketAddr,
        local: SocketAddr,
        credentials: SwarmCredentials,
        seed: u64,
    ) -> Self {
        Self {
            domain: domain.into(),
            prefix: prefix.into(),
            pcscf,
            local,
            credentials,
            expires: 600,
            plan: Plan::default(),
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            timeout: Duration::from_secs(32),
            seed,
        }
    }
}

/// A UE of the swarm (its slot; reused after the UE finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UeId(pub u32);

/// A step of a UE's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// The first registration.
    Register,
    /// A re-registration.
    Reregister,
    /// The deregistration.
    Deregister,
}

impl Phase {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Register => "register",
            Phase::Reregister => "reregister",
            Phase::Deregister => "deregister",
        }
    }
}

/// Why a phase failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// A final answer other than 2xx, 401 or 407.
    Status(u16),
    /// No final answer in time (Timer F or the timeout).
    Timeout,
    /// A challenge we cannot read (no WWW-Authenticate, no nonce, a bad AKA nonce, an
    /// unknown algorithm).
    BadChallenge,
    /// An AKA challenge whose AUTN MAC is wrong (not our network, or another K).
    MacFailure,
    /// An AKA challenge for password UEs or an MD5 one for USIMs.
    WrongScheme,
    /// A fourth challenge in one phase.
    TooManyChallenges,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Status(s) => write!(f, "{s}"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::BadChallenge => f.write_str("bad challenge"),
            Failure::MacFailure => f.write_str("AUTN MAC failure"),
            Failure::WrongScheme => f.write_str("wrong auth scheme"),
            Failure::TooManyChallenges => f.write_str("too many challenges"),
        }
    }
}

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseReport {
    /// The UE.
    pub ue: UeId,
    /// Its subscriber number.
    pub subscriber: u32,
    /// The phase.
    pub phase: Phase,
    /// Success (a 2xx), or why not.
    pub result: Result<(), Failure>,
    /// The phase's first REGISTER (first sent) → its first 401/407.
    pub challenge: Option<Duration>,
    /// The last REGISTER with credentials (first sent) → the final answer.
    pub auth: Option<Duration>,
    /// The phase's first REGISTER (first sent) → the final answer (or the give-up).
    pub total: Duration,
    /// Retransmissions (Timer E) in the phase.
    pub retransmissions: u32,
}

/// What the swarm reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A phase ended.
    Phase(PhaseReport),
    /// A UE is done (its plan ran to the end, or a phase failed); its slot is free.
    Finished {
        /// The UE.
        ue: UeId,
        /// Its subscriber number.
        subscriber: u32,
        /// Every phase succeeded.
        ok: bool,
    },
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// The bytes.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    /// Registered, waiting to re-register (a timer is armed).
    Idle,
    /// A REGISTER without credentials in flight.
    Unauth,
    /// A REGISTER answering a challenge (or re-registering with the last one) in flight.
    Auth,
}

/// One UE. Kept small: a million of them must fit in memory.
#[derive(Debug)]
struct Slot {
    subscriber: u32,
    /// New for each UE life; part of the Call-ID and the From tag.
    salt: u32,
    cseq: u32,
    /// The nonce count of the last challenge's answers.
    nc: u32,
    /// Timer generation: a heap entry with another value is stale.
    generation: u32,
    reregisters_done: u32,
    /// The phase's first REGISTER → its first challenge, µs (`u32::MAX`: none yet).
    challenge_us: u32,
    /// The current request's first send, µs after `phase_start`.
    request_off: u32,
    /// The phase's first send, µs since the swarm's epoch.
    phase_start: u64,
    /// The last challenge's nonce.
    nonce: Option<Box<str>>,
    /// RES (AKA) of the last challenge.
    res: [u8; 16],
    res_len: u8,
    /// Index in `Swarm::realms`.
    realm: u8,
    qop: u8,
    state: State,
    phase: Phase,
    challenges: u8,
    /// Sends of the current request.
    sends: u8,
    retransmissions: u8,
}

impl Slot {
    fn free() -> Self {
        Self {
            subscriber: 0,
            salt: 0,
            cseq: 0,
            nc: 0,
            generation: 0,
            reregisters_done: 0,
            challenge_us: u32::MAX,
            request_off: 0,
            phase_start: 0,
            nonce: None,
            res: [0; 16],
            res_len: 0,
            realm: 0,
            qop: 0,
            state: State::Free,
            phase: Phase::Register,
            challenges: 0,
            sends: 0,
            retransmissions: 0,
        }
    }
}

/// Writes through a closure (identities and Call-IDs without allocating).
struct Fmt<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for Fmt<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

const MAX_CHALLENGES: u8 = 3;

/// Many UEs over one socket. See the module documentation.
pub struct Swarm {
    cfg: SwarmConfig,
    milenage: Option<Milenage>,
    epoch: Instant,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// (deadline µs, slot, generation), soonest first; stale entries are skipped.
    timers: BinaryHeap<Reverse<(u64, u32, u32)>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    realms: Vec<Box<str>>,
    rng: u64,
    alive: usize,
    winding_down: bool,
    auth_buf: String,
}

impl fmt::Debug for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Swarm")
            .field("local", &self.cfg.local)
            .field("alive", &self.alive)
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl Swarm {
    /// An empty swarm; `now` is its epoch.
    pub fn new(cfg: SwarmConfig, now: Instant) -> Self {
        let milenage = match &cfg.credentials {
            SwarmCredentials::Aka { k, opc } => Some(Milenage::new(
                &ims_aka::Key::new(*k),
                &ims_aka::Opc::new(*opc),
            )),
            SwarmCredentials::Password(_) => None,
        };
        let realms = vec![cfg.domain.clone().into_boxed_str()];
        let rng = cfg.seed ^ 0x9e37_79b9_7f4a_7c15;
        Self {
            cfg,
            milenage,
            epoch: now,
            slots: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            realms,
            rng,
            alive: 0,
            winding_down: false,
            auth_buf: String::with_capacity(384),
        }
    }

    /// UEs started and not finished.
    pub fn alive(&self) -> usize {
        self.alive
    }

    /// Slots allocated (the most UEs alive at once so far).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The size of one UE's fixed state, in bytes (heap-held nonce and timer entries aside).
    pub fn slot_size() -> usize {
        std::mem::size_of::<Slot>()
    }

    /// Starts subscriber `subscriber`'s plan: its first REGISTER is ready to send.
    pub fn start(&mut self, subscriber: u32, now: Instant) -> UeId {
        let id = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::free());
                (self.slots.len() - 1) as u32
            }
        };
        let salt = loop {
            let s = self.next_random() as u32;
            if s != 0 {
                break s;
            }
        };
        let slot = &mut self.slots[id as usize];
        *slot = Slot::free();
        slot.subscriber = subscriber;
        slot.salt = salt;
        self.alive += 1;
        self.begin_phase(id, Phase::Register, now);
        UeId(id)
    }

    /// Ends the plans early: no more re-registrations; registered UEs waiting for one
    /// deregister now (with [`Plan::deregister`]) or finish.
    pub fn wind_down(&mut self, now: Instant) {
        self.winding_down = true;
        for id in 0..self.slots.len() as u32 {
            if self.slots[id as usize].state == State::Idle {
                self.after_success(id, now);
            }
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Swarm::handle_timeout`] must be called next (`None`: nothing is waiting).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        // Stale entries (answered requests, finished UEs) go first.
        while let Some(&Reverse((at, id, generation))) = self.timers.peek() {
            if self
                .slots
                .get(id as usize)
                .is_some_and(|s| s.generation == generation && s.state != State::Free)
            {
                return Some(self.epoch + Duration::from_micros(at));
            }
            self.timers.pop();
        }
        None
    }

    /// Retransmits, gives up and starts re-registrations whose time has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        let t = self.micros(now);
        while let Some(&Reverse((at, id, generation))) = self.timers.peek() {
            if at > t {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.slots.get(id as usize) else {
                continue;
            };
            if slot.generation != generation {
                continue;
            }
            match slot.state {
                State::Free => {}
                State::Idle => self.begin_phase(id, Phase::Reregister, now),
                State::Unauth | State::Auth => {
                    let sent = slot.phase_start + u64::from(slot.request_off);
                    if t >= sent + self.timer_f() {
                        self.fail(id, Failure::Timeout, now);
                    } else {
                        let slot = &mut self.slots[id as usize];
                        slot.sends = slot.sends.saturating_add(1);
                        slot.retransmissions = slot.retransmissions.saturating_add(1);
                        self.send(id);
                        self.arm_retransmit(id);
                    }
                }
            }
        }
    }

    /// A datagram from the network (a response to one of our REGISTERs, or anything else,
    /// which is ignored).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let msg = match Message::parse(Bytes::copy_from_slice(data)) {
            Ok(m) => m,
            Err(e) => {
                tracing::trace!(%from, error = %e, "unreadable datagram ignored");
                return;
            }
        };
        if msg.is_request() {
            tracing::trace!(%from, "request ignored");
            return;
        }
        let Some(id) = self.match_response(&msg) else {
            tracing::trace!(%from, "response for no UE in flight ignored");
            return;
        };
        let status = msg.status().unwrap_or(0);
        match status {
            100..=199 => {}
            200..=299 => self.succeed(id, now),
            401 | 407 => self.challenged(id, &msg, status, now),
            s => self.fail(id, Failure::Status(s), now),
        }
    }

    /// The slot a response belongs to: Call-ID slot and salt, the CSeq in flight.
    fn match_response(&self, msg: &Message) -> Option<u32> {
        let call_id = msg.call_id().ok()?;
        let (slot_hex, rest) = call_id.split_at_checked(8)?;
        let salt_hex = rest.get(..8)?;
        let id = u32::from_str_radix(slot_hex, 16).ok()?;
        let salt = u32::from_str_radix(salt_hex, 16).ok()?;
        let slot = self.slots.get(id as usize)?;
        if slot.salt != salt || !matches!(slot.state, State::Unauth | State::Auth) {
            return None;
        }
        let cseq = msg.cseq().ok()?;
        (cseq.seq == slot.cseq && cseq.method_str.eq_ignore_ascii_case("REGISTER")).then_some(id)
    }

    fn challenged(&mut self, id: u32, msg: &Message, status: u16, now: Instant) {
        let t = self.micros(now);
        let slot = &mut self.slots[id as usize];
        if slot.challenges >= MAX_CHALLENGES {
            return self.fail(id, Failure::TooManyChallenges, now);
        }
        if slot.challenges == 0 {
            slot.challenge_us = micros_u32(t.saturating_sub(slot.phase_start));
        }
        slot.challenges += 1;
        let name = if status == 407 {
            HeaderName::ProxyAuthenticate
        } else {
            HeaderName::WwwAuthenticate
        };
        let Some(www) = msg.header_str(name) else {
            return self.fail(id, Failure::BadChallenge, now);
        };
        let ch = match Challenge::parse(www) {
            Ok(c) => c,
            Err(why) => {
                tracing::debug!(%why, "unreadable challenge");
                return self.fail(id, Failure::BadChallenge, now);
            }
        };
        let mut res = [0u8; 16];
        let mut res_len = 0u8;
        match (ch.kind, &self.milenage) {
            (ChallengeKind::Aka, Some(m)) => {
                let Ok(n) = AkaNonce::decode(ch.nonce) else {
                    return self.fail(id, Failure::BadChallenge, now);
                };
                match ims_aka::vector::verify_autn(m, &n.rand, &n.autn) {
                    Ok(r) => {
                        let pw = digest_aka::password(&r.res);
                        let len = pw.len().min(16);
                        res[..len].copy_from_slice(&pw[..len]);
                        res_len = len as u8;
                    }
                    Err(_) => return self.fail(id, Failure::MacFailure, now),
                }
            }
            (ChallengeKind::Md5, None) => {}
            _ => return self.fail(id, Failure::WrongScheme, now),
        }
        let realm = ch.realm.unwrap_or(&self.cfg.domain);
        let realm = match self.realms.iter().position(|r| **r == *realm) {
            Some(i) => i,
            None if self.realms.len() < usize::from(u8::MAX) => {
                self.realms.push(realm.into());
                self.realms.len() - 1
            }
            None => return self.fail(id, Failure::BadChallenge, now),
        };
        let slot = &mut self.slots[id as usize];
        slot.nonce = Some(ch.nonce.into());
        slot.res = res;
        slot.res_len = res_len;
        slot.realm = realm as u8;
        slot.qop = match ch.qop {
            None => 0,
            Some(Qop::Auth) => 1,
            Some(Qop::AuthInt) => 2,
        };
        slot.nc = 1;
        slot.cseq += 1;
        slot.state = State::Auth;
        self.first_send(id, now);
    }

    fn succeed(&mut self, id: u32, now: Instant) {
        self.report(id, Ok(()), now);
        self.after_success(id, now);
    }

    /// The next phase of the plan, or the end.
    fn after_success(&mut self, id: u32, now: Instant) {
        let plan = self.cfg.plan;
        let slot = &mut self.slots[id as usize];
        slot.generation = slot.generation.wrapping_add(1);
        match slot.phase {
            Phase::Deregister => self.finish(id, true),
            Phase::Register | Phase::Reregister => {
                if slot.state != State::Idle
                    && let Some(every) = plan.reregister_every
                    && slot.reregisters_done < plan.reregisters
                    && !self.winding_down
                {
                    slot.state = State::Idle;
                    let at = self.micros(now) + every.as_micros() as u64;
                    let slot = &mut self.slots[id as usize];
                    self.timers.push(Reverse((at, id, slot.generation)));
                } else if plan.deregister {
                    self.begin_phase(id, Phase::Deregister, now);
                } else {
                    self.finish(id, true);
                }
            }
        }
    }

    fn fail(&mut self, id: u32, why: Failure, now: Instant) {
        tracing::debug!(subscriber = self.slots[id as usize].subscriber, %why, "phase failed");
        self.report(id, Err(why), now);
        self.finish(id, false);
    }

    fn report(&mut self, id: u32, result: Result<(), Failure>, now: Instant) {
        let t = self.micros(now);
        let slot = &self.slots[id as usize];
        let total = t.saturating_sub(slot.phase_start);
        let auth = (slot.state == State::Auth)
            .then(|| Duration::from_micros(total.saturating_sub(u64::from(slot.request_off))));
        let challenge = (slot.challenge_us != u32::MAX)
            .then(|| Duration::from_micros(u64::from(slot.challenge_us)));
        self.events.push_back(Event::Phase(PhaseReport {
            ue: UeId(id),
            subscriber: slot.subscriber,
            phase: slot.phase,
            result,
            challenge,
            auth,
            total: Duration::from_micros(total),
            retransmissions: u32::from(slot.retransmissions),
        }));
    }

    fn finish(&mut self, id: u32, ok: bool) {
        let slot = &mut self.slots[id as usize];
        let subscriber = slot.subscriber;
        *slot = Slot {
            generation: slot.generation.wrapping_add(1),
            ..Slot::free()
        };
        self.free.push(id);
        self.alive -= 1;
        self.events.push_back(Event::Finished {
            ue: UeId(id),
            subscriber,
            ok,
        });
    }

    fn begin_phase(&mut self, id: u32, phase: Phase, now: Instant) {
        let t = self.micros(now);
        let keep_nonce = self.keeps_nonce();
        let slot = &mut self.slots[id as usize];
        if phase == Phase::Reregister {
            slot.reregisters_done += 1;
        }
        slot.phase = phase;
        slot.phase_start = t;
        slot.challenge_us = u32::MAX;
        slot.challenges = 0;
        slot.retransmissions = 0;
        slot.cseq += 1;
        slot.state = match phase {
            Phase::Reregister if slot.nonce.is_some() => {
                slot.nc = slot.nc.wrapping_add(1);
                State::Auth
            }
            _ => State::Unauth,
        };
        if !keep_nonce || phase == Phase::Deregister {
            slot.nonce = None;
        }
        self.first_send(id, now);
    }

    /// Whether registered UEs keep the last nonce (for re-registering with it).
    fn keeps_nonce(&self) -> bool {
        self.cfg.plan.reregister_every.is_some() && self.cfg.plan.reregisters > 0
    }

    fn first_send(&mut self, id: u32, now: Instant) {
        let t = self.micros(now);
        let slot = &mut self.slots[id as usize];
        slot.request_off = micros_u32(t.saturating_sub(slot.phase_start));
        slot.sends = 1;
        self.send(id);
        self.arm_retransmit(id);
    }

    /// Timer F, µs.
    fn timer_f(&self) -> u64 {
        (self.cfg.t1 * 64).min(self.cfg.timeout).as_micros() as u64
    }

    /// Arms the next retransmission (or Timer F, whichever comes first).
    fn arm_retransmit(&mut self, id: u32) {
        let (t1, t2) = (
            self.cfg.t1.as_micros() as u64,
            self.cfg.t2.as_micros() as u64,
        );
        let f = self.timer_f();
        let slot = &mut self.slots[id as usize];
        // The k-th send happens at sum_{i<k-1} min(T1·2^i, T2) after the first.
        let mut off = 0u64;
        for i in 0..u32::from(slot.sends) {
            off = off.saturating_add(t1.saturating_mul(1u64 << i.min(20)).min(t2));
        }
        let sent = slot.phase_start + u64::from(slot.request_off);
        slot.generation = slot.generation.wrapping_add(1);
        self.timers
            .push(Reverse((sent + off.min(f), id, slot.generation)));
    }

    /// Builds the slot's current request and queues it.
    fn send(&mut self, id: u32) {
        let slot = &self.slots[id as usize];
        let cfg = &self.cfg;
        let n = slot.subscriber;
        let prefix = cfg.prefix.as_str();
        let domain = cfg.domain.as_str();
        let impi = Fmt(|f| write!(f, "{prefix}{n}@{domain}"));
        let impu = Fmt(|f| write!(f, "sip:{prefix}{n}@{domain}"));
        let user = Fmt(|f| write!(f, "{prefix}{n}"));
        let (salt, seed) = (slot.salt, cfg.seed as u32);
        let call_id = Fmt(|f| write!(f, "{id:08x}{salt:08x}.{seed:08x}"));
        let tag = Fmt(|f| write!(f, "{salt:08x}"));
        let auth = &mut self.auth_buf;
        auth.clear();
        let nonce = slot.nonce.as_deref().filter(|_| slot.state == State::Auth);
        match nonce {
            None => write_initial_authorization(auth, &impi, domain),
            Some(nonce) => {
                let password: &[u8] = match &cfg.credentials {
                    SwarmCredentials::Aka { .. } => &slot.res[..usize::from(slot.res_len)],
                    SwarmCredentials::Password(p) => p.as_bytes(),
                };
                let cnonce = format!("{salt:08x}");
                let uri = format!("sip:{domain}");
                let r = write_authorization(
                    auth,
                    &DigestAnswer {
                        username: &impi,
                        realm: self
                            .realms
                            .get(usize::from(slot.realm))
                            .map_or(domain, |r| r),
                        nonce,
                        uri: &uri,
                        algorithm: match cfg.credentials {
                            SwarmCredentials::Aka { .. } => digest_aka::ALGORITHM,
                            SwarmCredentials::Password(_) => "MD5",
                        },
                        qop: match slot.qop {
                            1 => Some(Qop::Auth),
                            2 => Some(Qop::AuthInt),
                            _ => None,
                        },
                        nc: slot.nc,
                        cnonce: &cnonce,
                        extra: "",
                    },
                    password,
                );
                if let Err(e) = r {
                    // Only a qop without nc/cnonce fails, and both are always given.
                    tracing::warn!(error = %e, "cannot compute the digest response");
                }
            }
        }
        let mut text = String::with_capacity(700);
        write_register(
            &mut text,
            &RegisterText {
                domain,
                impu: &impu,
                user: &user,
                proto: "UDP",
                tp: "",
                me: cfg.local,
                call_id: &call_id,
                branch: u64::from(slot.cseq),
                tag: &tag,
                cseq: slot.cseq,
                expires: if slot.phase == Phase::Deregister {
                    0
                } else {
                    cfg.expires
                },
                security: "",
                authorization: auth,
            },
        );
        self.transmits.push_back(Transmit {
            to: cfg.pcscf,
            payload: text.into_bytes(),
        });
    }

    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// splitmix64.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn micros_u32(us: u64) -> u32 {
    u32::try_from(us).unwrap_or(u32::MAX - 1)
}

pub mod fake;

#[cfg(test)]
mod tests;

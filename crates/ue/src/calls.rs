//! A call agent: one registered UE placing and answering many short calls over one UDP
//! socket, sans-io (the style of [`crate::swarm`]), for `ims-load`'s call mode.
//!
//! [`CallAgent`] holds the calls of one UE and no socket, task or clock of its own: the
//! caller feeds it datagrams ([`CallAgent::handle_datagram`]) and the time
//! ([`CallAgent::handle_timeout`]) and takes out datagrams to send
//! ([`CallAgent::poll_transmit`]), outcomes ([`CallAgent::poll_event`]) and the next instant it
//! needs to be woken ([`CallAgent::poll_timeout`]). The UE must be registered already (a
//! [`crate::swarm::Swarm`] on the same socket does that): the P-CSCF knows a UE by the flow it
//! registered from, so each agent has a socket of its own.
//!
//! # A call, as caller ([`CallAgent::call`])
//! INVITE (with an SDP offer) to the P-CSCF, no Route: the P-CSCF puts the UE's Service-Route
//! in. A provisional answer stops Timer A; the 2xx is ACKed along the dialog's route set (the
//! 200's Record-Route, reversed) to its Contact, and after [`CallConfig::hold`] a BYE goes the
//! same way; its 2xx ends the call. A 300-699 to the INVITE is ACKed on the INVITE's
//! transaction (RFC 3261 §17.1.1.3) and ends the call as a failure. Retransmissions follow
//! RFC 3261 §17.1: INVITE on Timer A (T1 doubling) until any answer, Timer B at 64·T1; BYE on
//! Timer E (T1 doubling up to T2), Timer F at 64·T1; a retransmitted 200 gets the ACK again.
//! Every stage gives up at [`CallConfig::timeout`] at the latest.
//!
//! # A call, as callee
//! An INVITE for a Call-ID not known here is answered at once with 180 and then 200 (the SDP
//! answer), both with our To tag, the INVITE's Record-Route and our Contact; the 200 is
//! retransmitted (T1 doubling up to T2, RFC 3261 §13.3.1.4) until the ACK, and given up after
//! 64·T1. A BYE of a known dialog gets 200; the dialog is kept a while (Timer J's 64·T1,
//! capped by the timeout) to answer a retransmitted BYE, and a BYE for nothing gets 481.
//! Anything else — stray responses, other requests, garbage — is ignored (traced at `trace`
//! level), never a panic.
//!
//! # What it measures
//! Each call the agent placed ends in one [`CallEvent::Placed`]: INVITE (first sent) → first
//! 180 (`ringing`), → 200 (`setup`), → the BYE's 200 (`total`), or why it failed. Each call it
//! answered ends in one [`CallEvent::Answered`]: Ok after the BYE, or the ACK or the BYE that
//! never came.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ims_sip::builder::response_to;
use ims_sip::{HeaderName, Message, Method};

use crate::swarm::Transmit;

/// The settings of one agent (one UE).
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// The socket's own address (Via sent-by, Contact, the SDP's connection address).
    pub local: SocketAddr,
    /// The P-CSCF the UE registered through: every request goes there.
    pub pcscf: SocketAddr,
    /// The UE's public identity (From of its calls), e.g. `sip:alice@hims.net`.
    pub impu: String,
    /// The user part of its Contact.
    pub user: String,
    /// Time between the ACK and the BYE.
    pub hold: Duration,
    /// T1 (RFC 3261: 500 ms).
    pub t1: Duration,
    /// T2 (RFC 3261: 4 s).
    pub t2: Duration,
    /// Give up on an answer not come within this (and at 64·T1 at the latest).
    pub timeout: Duration,
    /// Randomness of Call-IDs and tags (distinct per agent and run).
    pub seed: u64,
}

impl CallConfig {
    /// Settings with RFC 3261's timers, no hold time and a 32 s timeout.
    pub fn new(
        local: SocketAddr,
        pcscf: SocketAddr,
        impu: impl Into<String>,
        user: impl Into<String>,
        seed: u64,
    ) -> Self {
        Self {
            local,
            pcscf,
            impu: impu.into(),
            user: user.into(),
            hold: Duration::ZERO,
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            timeout: Duration::from_secs(32),
            seed,
        }
    }
}

/// Where a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallFailure {
    /// The INVITE got this final answer (300-699).
    Invite(u16),
    /// No final answer to the INVITE in time.
    InviteTimeout,
    /// The BYE got this final answer (300-699).
    Bye(u16),
    /// No final answer to the BYE in time.
    ByeTimeout,
    /// Callee: our 200 was never ACKed.
    NoAck,
    /// Callee: the BYE never came.
    NoBye,
}

impl fmt::Display for CallFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallFailure::Invite(s) => write!(f, "INVITE {s}"),
            CallFailure::InviteTimeout => f.write_str("INVITE timeout"),
            CallFailure::Bye(s) => write!(f, "BYE {s}"),
            CallFailure::ByeTimeout => f.write_str("BYE timeout"),
            CallFailure::NoAck => f.write_str("no ACK"),
            CallFailure::NoBye => f.write_str("no BYE"),
        }
    }
}

/// How a placed call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallReport {
    /// Success (answered and hung up), or where not.
    pub result: Result<(), CallFailure>,
    /// INVITE (first sent) → the first 180.
    pub ringing: Option<Duration>,
    /// INVITE (first sent) → the 200.
    pub setup: Option<Duration>,
    /// INVITE (first sent) → the end (the BYE's answer, or the give-up).
    pub total: Duration,
    /// Retransmissions of the INVITE and the BYE.
    pub retransmissions: u32,
}

/// What the agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEvent {
    /// A call this UE placed ended.
    Placed(CallReport),
    /// A call this UE answered ended: Ok after the BYE.
    Answered(Result<(), CallFailure>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Caller: INVITE sent, nothing back (Timer A retransmits).
    Calling,
    /// Caller: a provisional answer came; waiting for the final one.
    Proceeding,
    /// Caller: ACKed; the BYE goes when the timer fires.
    Holding,
    /// Caller: BYE sent (Timer E retransmits).
    Hanging,
    /// Callee: 200 sent, no ACK yet (retransmitted).
    Answered,
    /// Callee: ACKed, waiting for the BYE.
    Confirmed,
    /// Callee: BYE answered; kept to answer its retransmissions.
    Ended,
}

/// One call. The texts that must be sent again are kept whole.
#[derive(Debug)]
struct Call {
    call_id: Box<str>,
    state: State,
    /// Timer generation: a heap entry with another value is stale.
    generation: u32,
    /// The call's first send (or arrival, callee), µs since the epoch.
    start: u64,
    /// The current request's first send, µs since the epoch.
    sent: u64,
    sends: u8,
    retransmissions: u32,
    ringing_us: Option<u64>,
    setup_us: Option<u64>,
    /// Caller: the callee's identity (INVITE's Request-URI and To).
    callee: Box<str>,
    /// Caller: the 200's To (with the callee's tag), Contact and route set, for ACK and BYE.
    to: Box<str>,
    target: Box<str>,
    routes: Vec<Box<str>>,
    /// Caller: the ACK of the 2xx (sent again for each retransmitted 200). Callee: the 200.
    kept: Option<Bytes>,
    /// Callee: where the 200 goes (the hop the INVITE came from).
    peer: SocketAddr,
    salt: u32,
}

impl Call {
    /// A call in `state` whose first message went (or came) at `t`, µs.
    fn new(call_id: Box<str>, state: State, t: u64, peer: SocketAddr, salt: u32) -> Self {
        Self {
            call_id,
            state,
            generation: 0,
            start: t,
            sent: t,
            sends: 1,
            retransmissions: 0,
            ringing_us: None,
            setup_us: None,
            callee: "".into(),
            to: "".into(),
            target: "".into(),
            routes: Vec::new(),
            kept: None,
            peer,
            salt,
        }
    }
}

/// The calls of one UE over one socket. See the module documentation.
pub struct CallAgent {
    cfg: CallConfig,
    epoch: Instant,
    calls: Vec<Option<Call>>,
    free: Vec<u32>,
    by_call_id: HashMap<Box<str>, u32>,
    /// (deadline µs, slot, generation), soonest first; stale entries are skipped.
    timers: BinaryHeap<Reverse<(u64, u32, u32)>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<CallEvent>,
    rng: u64,
    placed_alive: usize,
}

impl fmt::Debug for CallAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallAgent")
            .field("impu", &self.cfg.impu)
            .field("local", &self.cfg.local)
            .field("calls", &self.by_call_id.len())
            .finish_non_exhaustive()
    }
}

/// The SDP of both sides: one audio stream, PCMU; the core never reads it.
fn sdp(local: SocketAddr, session: u32, port: u16) -> String {
    let (ip4, ip) = match local.ip() {
        std::net::IpAddr::V4(a) => ("IP4", a.to_string()),
        std::net::IpAddr::V6(a) => ("IP6", a.to_string()),
    };
    format!(
        "v=0\r\no=- {session} 1 IN {ip4} {ip}\r\ns=-\r\nc=IN {ip4} {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

impl CallAgent {
    /// An agent with no call; `now` is its epoch.
    pub fn new(cfg: CallConfig, now: Instant) -> Self {
        let rng = cfg.seed ^ 0x2545_f491_4f6c_dd1d;
        Self {
            cfg,
            epoch: now,
            calls: Vec::new(),
            free: Vec::new(),
            by_call_id: HashMap::new(),
            timers: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rng,
            placed_alive: 0,
        }
    }

    /// Calls this UE placed that have not ended.
    pub fn placed_alive(&self) -> usize {
        self.placed_alive
    }

    /// Every call held (placed or answered, including answered ones kept after their BYE).
    pub fn calls(&self) -> usize {
        self.by_call_id.len()
    }

    /// Places a call to `callee` (a SIP or tel URI): the INVITE is ready to send.
    pub fn call(&mut self, callee: &str, now: Instant) {
        let t = self.micros(now);
        let salt = self.next_random() as u32;
        let id = self.alloc();
        let call_id: Box<str> = format!("{id:x}-{salt:08x}.{:08x}", self.cfg.seed as u32).into();
        let mut call = Call::new(call_id, State::Calling, t, self.cfg.pcscf, salt);
        call.callee = callee.into();
        self.insert(id, call);
        self.placed_alive += 1;
        self.send_invite(id);
        self.arm(id);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    /// When [`CallAgent::handle_timeout`] must be called next (`None`: nothing is waiting).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, id, generation))) = self.timers.peek() {
            if self.live(id, generation) {
                return Some(self.epoch + Duration::from_micros(at));
            }
            self.timers.pop();
        }
        None
    }

    fn live(&self, id: u32, generation: u32) -> bool {
        matches!(self.calls.get(id as usize), Some(Some(c)) if c.generation == generation)
    }

    /// Retransmits, hangs up and gives up what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let t = self.micros(now);
        while let Some(&Reverse((at, id, generation))) = self.timers.peek() {
            if at > t {
                break;
            }
            self.timers.pop();
            if !self.live(id, generation) {
                continue;
            }
            self.fire(id, t, now);
        }
    }

    fn fire(&mut self, id: u32, t: u64, now: Instant) {
        let give_up = self.give_up();
        let Some(c) = self.call_mut(id) else { return };
        let overdue = t >= c.sent + give_up;
        match c.state {
            State::Calling | State::Proceeding if overdue => {
                self.end_placed(id, Err(CallFailure::InviteTimeout), now);
            }
            State::Hanging if overdue => self.end_placed(id, Err(CallFailure::ByeTimeout), now),
            State::Calling => {
                c.sends = c.sends.saturating_add(1);
                c.retransmissions += 1;
                self.send_invite(id);
                self.arm(id);
            }
            State::Hanging => {
                c.sends = c.sends.saturating_add(1);
                c.retransmissions += 1;
                self.send_bye(id);
                self.arm(id);
            }
            State::Proceeding => self.arm(id),
            State::Holding => {
                c.state = State::Hanging;
                c.sent = t;
                c.sends = 1;
                self.send_bye(id);
                self.arm(id);
            }
            State::Answered if overdue => self.end_answered(id, Err(CallFailure::NoAck)),
            State::Answered => {
                c.sends = c.sends.saturating_add(1);
                if let Some(ok) = c.kept.clone() {
                    let to = c.peer;
                    self.transmits.push_back(Transmit {
                        to,
                        payload: ok.to_vec(),
                    });
                }
                self.arm(id);
            }
            State::Confirmed => self.end_answered(id, Err(CallFailure::NoBye)),
            State::Ended => self.release(id),
        }
    }

    /// A datagram from the network.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let msg = match Message::parse(Bytes::copy_from_slice(data)) {
            Ok(m) => m,
            Err(e) => {
                tracing::trace!(%from, error = %e, "unreadable datagram ignored");
                return;
            }
        };
        let Ok(call_id) = msg.call_id() else {
            tracing::trace!(%from, "message without Call-ID ignored");
            return;
        };
        let id = self.by_call_id.get(call_id).copied();
        if msg.is_request() {
            self.request(now, from, &msg, id);
        } else if let Some(id) = id {
            self.response(now, &msg, id);
        } else {
            tracing::trace!(%from, "response for no call ignored");
        }
    }

    fn response(&mut self, now: Instant, msg: &Message, id: u32) {
        let Ok(cseq) = msg.cseq() else { return };
        let status = msg.status().unwrap_or(0);
        let t = self.micros(now);
        let Some(c) = self.call_mut(id) else { return };
        match (cseq.method, c.state) {
            (Method::Invite, State::Calling | State::Proceeding) if cseq.seq == 1 => {
                if status < 200 {
                    if status == 180 && c.ringing_us.is_none() {
                        c.ringing_us = Some(t - c.start);
                    }
                    if c.state == State::Calling {
                        c.state = State::Proceeding;
                        // Timer A stops; the timeout still runs.
                        self.arm(id);
                    }
                } else if status < 300 {
                    c.setup_us = Some(t - c.start);
                    if let Err(why) = self.confirm(id, msg) {
                        tracing::debug!(%why, "a 200 we cannot follow");
                        self.end_placed(id, Err(CallFailure::Invite(status)), now);
                        return;
                    }
                    self.resend_ack(id);
                    self.hold(id, now);
                } else {
                    self.ack_failure(id, msg);
                    self.end_placed(id, Err(CallFailure::Invite(status)), now);
                }
            }
            (Method::Invite, State::Holding | State::Hanging) if (200..300).contains(&status) => {
                self.resend_ack(id);
            }
            (Method::Bye, State::Hanging) if cseq.seq == 2 && status >= 200 => {
                let r = if status < 300 {
                    Ok(())
                } else {
                    Err(CallFailure::Bye(status))
                };
                self.end_placed(id, r, now);
            }
            _ => tracing::trace!(status, "response not expected now ignored"),
        }
    }

    fn request(&mut self, now: Instant, from: SocketAddr, msg: &Message, id: Option<u32>) {
        let method = msg.method().unwrap_or(Method::Other);
        match (method, id) {
            (Method::Invite, None) => self.answer(now, from, msg),
            (Method::Invite, Some(id)) => {
                // A retransmitted INVITE: the 200 again while not ACKed.
                if let Some(c) = self.call_mut(id)
                    && c.state == State::Answered
                    && let Some(ok) = c.kept.clone()
                {
                    self.transmits.push_back(Transmit {
                        to: from,
                        payload: ok.to_vec(),
                    });
                }
            }
            (Method::Ack, Some(id)) => {
                let t = self.micros(now);
                if let Some(c) = self.call_mut(id)
                    && c.state == State::Answered
                {
                    c.state = State::Confirmed;
                    c.kept = None;
                    c.sent = t;
                    self.arm(id);
                }
            }
            (Method::Bye, Some(id)) => {
                let answer = match self.call_mut(id).map(|c| c.state) {
                    Some(State::Answered | State::Confirmed) => {
                        self.end_answered(id, Ok(()));
                        Some((200, "OK"))
                    }
                    Some(State::Ended) => Some((200, "OK")),
                    _ => None,
                };
                if let Some((code, reason)) = answer {
                    self.reply(from, msg, code, reason);
                }
            }
            (Method::Bye, None) => self.reply(from, msg, 481, "Call/Transaction Does Not Exist"),
            _ => tracing::trace!(%from, method = %method, "request ignored"),
        }
    }

    /// Callee: 180 and 200 for a new INVITE.
    fn answer(&mut self, now: Instant, from: SocketAddr, invite: &Message) {
        let Ok(call_id) = invite.call_id() else {
            return;
        };
        let call_id: Box<str> = call_id.into();
        let salt = self.next_random() as u32;
        let tag = format!("{salt:08x}");
        let contact = format!("<sip:{}@{}>", self.cfg.user, self.cfg.local);
        let body = sdp(self.cfg.local, salt, 40000);
        let build = |status: u16, reason: &str, body: Option<&str>| {
            let mut r = response_to(invite, status, reason, Some(&tag))?;
            for rr in invite.values(HeaderName::RecordRoute) {
                r.append_header("Record-Route", rr?)?;
            }
            r.append_header("Contact", &contact)?;
            if let Some(b) = body {
                r.set_body(
                    Some("application/sdp"),
                    Bytes::copy_from_slice(b.as_bytes()),
                )?;
            }
            Ok::<_, ims_sip::Error>(r.to_bytes())
        };
        let (ringing, ok) = match (build(180, "Ringing", None), build(200, "OK", Some(&body))) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(%from, error = %e, "an INVITE we cannot answer");
                return;
            }
        };
        self.transmits.push_back(Transmit {
            to: from,
            payload: ringing.to_vec(),
        });
        self.transmits.push_back(Transmit {
            to: from,
            payload: ok.to_vec(),
        });
        let t = self.micros(now);
        let id = self.alloc();
        let mut call = Call::new(call_id, State::Answered, t, from, salt);
        call.kept = Some(ok);
        self.insert(id, call);
        self.arm(id);
    }

    fn reply(&mut self, to: SocketAddr, req: &Message, code: u16, reason: &str) {
        match response_to(req, code, reason, None) {
            Ok(r) => self.transmits.push_back(Transmit {
                to,
                payload: r.to_bytes().to_vec(),
            }),
            Err(e) => tracing::debug!(%to, error = %e, "a request we cannot answer"),
        }
    }

    /// Caller: the dialog from the 200 (To with tag, Contact, route set) and its ACK.
    fn confirm(&mut self, id: u32, ok: &Message) -> Result<(), ims_sip::Error> {
        let to: Box<str> = ok
            .header(HeaderName::To)
            .ok_or(ims_sip::Error::MissingHeader("To"))?
            .value_str()?
            .into();
        let target: Box<str> = ok
            .contacts()
            .next()
            .ok_or(ims_sip::Error::MissingHeader("Contact"))??
            .addr()
            .ok_or(ims_sip::Error::MissingHeader("Contact"))?
            .uri_str
            .into();
        let mut routes = Vec::new();
        for rr in ok.values(HeaderName::RecordRoute) {
            routes.push(Box::<str>::from(rr?));
        }
        routes.reverse();
        let Some(c) = self.call_mut(id) else {
            return Ok(());
        };
        c.to = to;
        c.target = target;
        c.routes = routes;
        let mut ack = String::with_capacity(512);
        self.write_in_dialog(&mut ack, id, "ACK", 1, 'a');
        if let Some(c) = self.call_mut(id) {
            c.kept = Some(Bytes::from(ack.into_bytes()));
        }
        Ok(())
    }

    fn resend_ack(&mut self, id: u32) {
        if let Some(ack) = self.call_mut(id).and_then(|c| c.kept.clone()) {
            self.transmits.push_back(Transmit {
                to: self.cfg.pcscf,
                payload: ack.to_vec(),
            });
        }
    }

    fn hold(&mut self, id: u32, now: Instant) {
        let t = self.micros(now);
        let hold = self.cfg.hold.as_micros() as u64;
        let Some(c) = self.call_mut(id) else { return };
        c.state = State::Holding;
        c.sent = t;
        if hold == 0 {
            self.fire(id, t, now);
        } else {
            c.generation = c.generation.wrapping_add(1);
            let g = c.generation;
            self.timers.push(Reverse((t + hold, id, g)));
        }
    }

    /// The ACK of a 300-699: the INVITE's transaction (same branch), the answer's To.
    fn ack_failure(&mut self, id: u32, resp: &Message) {
        let to = resp.header_str(HeaderName::To).unwrap_or("");
        let Some(c) = self.call_ref(id) else { return };
        let mut s = String::with_capacity(400);
        let cfg = &self.cfg;
        let _ = write!(
            s,
            "ACK {callee} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{salt:08x}i{id:x};rport\r\n\
             Max-Forwards: 70\r\nFrom: <{impu}>;tag={salt:08x}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            callee = c.callee,
            local = cfg.local,
            salt = c.salt,
            impu = cfg.impu,
            call_id = c.call_id,
        );
        self.transmits.push_back(Transmit {
            to: cfg.pcscf,
            payload: s.into_bytes(),
        });
    }

    fn send_invite(&mut self, id: u32) {
        let Some(c) = self.call_ref(id) else { return };
        let cfg = &self.cfg;
        let body = sdp(cfg.local, c.salt, 30000);
        let mut s = String::with_capacity(700 + body.len());
        let _ = write!(
            s,
            "INVITE {callee} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{salt:08x}i{id:x};rport\r\n\
             Max-Forwards: 70\r\nFrom: <{impu}>;tag={salt:08x}\r\nTo: <{callee}>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:{user}@{local}>\r\n\
             Allow: INVITE, ACK, CANCEL, BYE, UPDATE, MESSAGE\r\nSupported: 100rel\r\n\
             Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{body}",
            callee = c.callee,
            local = cfg.local,
            salt = c.salt,
            impu = cfg.impu,
            call_id = c.call_id,
            user = cfg.user,
            len = body.len(),
        );
        self.transmits.push_back(Transmit {
            to: cfg.pcscf,
            payload: s.into_bytes(),
        });
    }

    fn send_bye(&mut self, id: u32) {
        let mut s = String::with_capacity(600);
        self.write_in_dialog(&mut s, id, "BYE", 2, 'b');
        self.transmits.push_back(Transmit {
            to: self.cfg.pcscf,
            payload: s.into_bytes(),
        });
    }

    /// ACK (of the 2xx) or BYE inside the dialog: to the Contact, along the route set.
    fn write_in_dialog(&self, s: &mut String, id: u32, method: &str, seq: u32, branch: char) {
        let Some(c) = self.call_ref(id) else { return };
        let cfg = &self.cfg;
        let _ = write!(
            s,
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{salt:08x}{branch}{id:x};rport\r\n\
             Max-Forwards: 70\r\n",
            target = c.target,
            local = cfg.local,
            salt = c.salt,
        );
        for r in &c.routes {
            let _ = write!(s, "Route: {r}\r\n");
        }
        let _ = write!(
            s,
            "From: <{impu}>;tag={salt:08x}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {seq} {method}\r\n\
             Content-Length: 0\r\n\r\n",
            impu = cfg.impu,
            salt = c.salt,
            to = c.to,
            call_id = c.call_id,
        );
    }

    fn end_placed(&mut self, id: u32, result: Result<(), CallFailure>, now: Instant) {
        let t = self.micros(now);
        let Some(c) = self.call_ref(id) else { return };
        let d = Duration::from_micros;
        self.events.push_back(CallEvent::Placed(CallReport {
            result,
            ringing: c.ringing_us.map(d),
            setup: c.setup_us.map(d),
            total: d(t.saturating_sub(c.start)),
            retransmissions: c.retransmissions,
        }));
        self.placed_alive -= 1;
        self.release(id);
    }

    fn end_answered(&mut self, id: u32, result: Result<(), CallFailure>) {
        self.events.push_back(CallEvent::Answered(result));
        if result.is_err() {
            return self.release(id);
        }
        let linger = self.give_up();
        let Some(c) = self.call_mut(id) else { return };
        c.state = State::Ended;
        c.kept = None;
        c.generation = c.generation.wrapping_add(1);
        let at = c.sent + linger;
        let g = c.generation;
        self.timers.push(Reverse((at, id, g)));
    }

    /// Puts `call` in slot `id` (from [`CallAgent::alloc`]), findable by its Call-ID.
    fn insert(&mut self, id: u32, call: Call) {
        self.by_call_id.insert(call.call_id.clone(), id);
        self.calls[id as usize] = Some(call);
    }

    fn release(&mut self, id: u32) {
        if let Some(c) = self.calls.get_mut(id as usize).and_then(Option::take) {
            self.by_call_id.remove(&c.call_id);
            self.free.push(id);
        }
    }

    fn alloc(&mut self) -> u32 {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.calls.push(None);
                (self.calls.len() - 1) as u32
            }
        }
    }

    fn call_ref(&self, id: u32) -> Option<&Call> {
        self.calls.get(id as usize).and_then(Option::as_ref)
    }

    fn call_mut(&mut self, id: u32) -> Option<&mut Call> {
        self.calls.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// Timer B/F/H: 64·T1, capped by the timeout, µs.
    fn give_up(&self) -> u64 {
        (self.cfg.t1 * 64).min(self.cfg.timeout).as_micros() as u64
    }

    /// Arms the call's next timer for its state.
    fn arm(&mut self, id: u32) {
        let (t1, t2) = (
            self.cfg.t1.as_micros() as u64,
            self.cfg.t2.as_micros() as u64,
        );
        let give_up = self.give_up();
        let timeout = self.cfg.timeout.as_micros() as u64;
        let Some(c) = self.call_mut(id) else { return };
        // The k-th send happens at sum_{i<k-1} T1·2^i after the first (capped at T2 but for
        // the INVITE, RFC 3261 §17.1.1.2).
        let mut off = 0u64;
        for i in 0..u32::from(c.sends) {
            let step = t1.saturating_mul(1u64 << i.min(20));
            off = off.saturating_add(if c.state == State::Calling {
                step
            } else {
                step.min(t2)
            });
        }
        let at = match c.state {
            State::Calling | State::Hanging | State::Answered => c.sent + off.min(give_up),
            State::Proceeding => c.sent + give_up,
            State::Confirmed => c.sent + timeout,
            State::Holding | State::Ended => return,
        };
        c.generation = c.generation.wrapping_add(1);
        let g = c.generation;
        self.timers.push(Reverse((at, id, g)));
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

#[cfg(test)]
mod tests;

//! The RFC 6733 §5.6 peer state machine with the RFC 3539 watchdog, sans-io: one [`Peer`]
//! per transport connection. The driver (crates/net, or a test) owns the socket and the
//! clock; it feeds what happened in and carries out what the peer asks for:
//!
//! - in: [`Peer::handle_connected`], [`Peer::handle_bytes`] (stream bytes, any split),
//!   [`Peer::handle_timeout`], [`Peer::handle_disconnected`], [`Peer::send_request`],
//!   [`Peer::send_answer`] (or [`Peer::answer_with_result`]), [`Peer::disconnect`];
//! - out: [`Peer::poll_transmit`] (bytes to write, in order), [`Peer::poll_event`]
//!   ([`Event`]: up, down, an application request or answer, close the socket, reconnect),
//!   [`Peer::poll_timeout`] (the next instant to call `handle_timeout`).
//!
//! States ([`State`]): an initiator goes Closed → WaitConnAck (connecting) → WaitCea (CER
//! sent) → Open; a responder goes Closed → WaitCer → Open after answering the CER. Open →
//! Closing after our DPR, until the DPA. Capabilities exchange advertises our applications
//! (Cx by default: Vendor-Specific-Application-Id {10415, 16777216} and Supported-Vendor-Id
//! 10415); a responder refuses an Origin-Host/Realm outside its allow-list with 3010
//! DIAMETER_UNKNOWN_PEER and a CER without a common application with 5010, then closes.
//! A peer that advertises the Relay Application-Id (0xffffffff) shares all of our
//! applications and is known as a relay ([`Peer::remote_is_relay`]): a driver may send it
//! requests for hosts that are not its own peers (RFC 6733 §2.8).
//!
//! Watchdog (RFC 3539 §3.4.1, [`WatchdogState`]): while OKAY any message received proves the
//! peer alive; after Tw of silence we send a DWR; Tw more without its DWA makes the peer
//! SUSPECT (the driver should fail new requests over to another peer, see
//! [`Peer::watchdog_state`]); a DWA brings it back to OKAY, another Tw without one takes the
//! connection DOWN ([`DownReason::WatchdogTimeout`] and [`Event::Close`]). Tw has no jitter
//! here: a driver wanting RFC 3539's ±2 s sets `watchdog` per connection from its own
//! randomness. DWR and DPR from the peer are answered. An initiator that lost its connection
//! asks to reconnect ([`Event::Reconnect`] at [`Peer::reconnect_at`]) after a back-off that
//! doubles from `reconnect_min` to `reconnect_max`, reset once Open, except when the Open
//! connection before it died within Tw (a peer sending garbage right after its CEA): then
//! it keeps doubling until a connection lives Tw. No reconnect after our own
//! [`Peer::disconnect`] or a DPR saying DO_NOT_WANT_TO_TALK_TO_YOU.
//!
//! Requests: many in flight; each gets a hop-by-hop id unique on this connection and an
//! end-to-end id ([`EndToEndIdGenerator`]), written into the caller's bytes. Answers are
//! matched by hop-by-hop id (an answer the codec refuses is still handed over: the
//! application's decoder reports why); an answer nobody waits for is dropped with a warning.
//! Requests still pending when the connection goes down, or older than `request_timeout`,
//! fail with [`Event::RequestFailed`]. Nothing the peer sends can panic the machine: a
//! malformed request gets the answer the codec's error names (5005, 5004, 3008 ... with
//! Failed-AVP), and a framing error (bad version or length) closes the connection.
//!
//! Time and randomness come from the caller: every input takes `now`, and
//! [`Peer::with_end_to_end`] takes the hop-by-hop seed and an [`EndToEndIdGenerator`] built
//! from the caller's clock ([`Peer::new`] is the shorthand that reads the wall clock once).
//!
//! ```
//! use ims_diameter::peer::{Event, Peer, PeerConfig, Role};
//! use std::time::Instant;
//!
//! let now = Instant::now();
//! let mut icscf = Peer::new(PeerConfig::cx("icscf1.hims.net", "hims.net"), Role::Initiator, 1);
//! let mut hss_cfg = PeerConfig::cx("hss1.hims.net", "hims.net");
//! hss_cfg.allowed_peers = vec!["icscf1.hims.net".into()];
//! let mut hss = Peer::new(hss_cfg, Role::Responder, 2);
//! icscf.handle_connected(now);
//! hss.handle_connected(now);
//! // Carry bytes both ways until both are Open.
//! for _ in 0..2 {
//!     while let Some(b) = icscf.poll_transmit() { hss.handle_bytes(now, &b); }
//!     while let Some(b) = hss.poll_transmit() { icscf.handle_bytes(now, &b); }
//! }
//! assert!(matches!(icscf.poll_event(), Some(Event::Up { .. })));
//! assert!(matches!(hss.poll_event(), Some(Event::Up { .. })));
//! assert_eq!(icscf.common_applications(), &[ims_diameter::dict::APP_CX]);
//! // Next: the watchdog deadline (Tw = 30 s of silence, then a DWR).
//! assert_eq!(icscf.poll_timeout(), Some(now + std::time::Duration::from_secs(30)));
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::avp::Avp;
use crate::builder::MessageBuilder;
use crate::dict::{self, DisconnectCause, result_code as rc};
use crate::error::{Error, FailedAvp};
use crate::header::{DEFAULT_MAX_MESSAGE_LEN, Header, flags, frame};
use crate::message::Message;

/// Who opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We connect and send the CER.
    Initiator,
    /// We accepted the connection and wait for the CER.
    Responder,
}

/// RFC 6733 §5.6 states (the election states are not needed: one connection per peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No connection.
    Closed,
    /// Initiator: connecting.
    WaitConnAck,
    /// Initiator: CER sent, waiting for the CEA.
    WaitCea,
    /// Responder: connected, waiting for the CER.
    WaitCer,
    /// Capabilities exchanged: application messages flow.
    Open,
    /// Our DPR sent, waiting for the DPA.
    Closing,
}

/// RFC 3539 watchdog state of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogState {
    /// The peer answers (or there is no need to ask yet).
    Okay,
    /// Our DWR got no answer within Tw: send new requests elsewhere if possible; the
    /// connection goes down after another Tw without a DWA.
    Suspect,
    /// No open connection.
    Down,
}

/// Why a connection went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// The transport closed or failed.
    TransportClosed,
    /// No DWA within 2*Tw after our DWR (SUSPECT, then DOWN), or no CER/CEA within Tw.
    WatchdogTimeout,
    /// The peer sent DPR with this cause.
    PeerDisconnected(i32),
    /// We disconnected (DPR/DPA done, or DPA timed out).
    Disconnected,
    /// The capabilities exchange failed with this Result-Code.
    CapabilitiesRefused(u32),
    /// The peer sent bytes that cannot be framed (bad version or length).
    Framing(String),
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFailure {
    /// No answer within `request_timeout`.
    Timeout,
    /// The connection went down with the request pending.
    ConnectionDown,
}

/// What the driver must know or do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Capabilities exchanged; the connection is Open.
    Up {
        /// The peer's Origin-Host.
        host: String,
        /// The peer's Origin-Realm.
        realm: String,
    },
    /// The connection left the Open state (or never reached it).
    Down(DownReason),
    /// An application request from the peer: answer it with [`Peer::send_answer`].
    Request(Vec<u8>),
    /// The answer to one of our requests.
    Answer {
        /// What [`Peer::send_request`] returned.
        handle: u64,
        /// The whole answer.
        bytes: Vec<u8>,
    },
    /// One of our requests will get no answer.
    RequestFailed {
        /// What [`Peer::send_request`] returned.
        handle: u64,
        /// Why.
        reason: RequestFailure,
    },
    /// Close the socket (after writing what [`Peer::poll_transmit`] still holds).
    Close,
    /// Initiator: time to connect again (then call [`Peer::handle_connected`]).
    Reconnect,
}

/// Why [`Peer::send_request`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The connection is not Open.
    #[error("Diameter peer connection is not open (state {0:?})")]
    NotOpen(State),
    /// The bytes are not a Diameter request.
    #[error("not a Diameter request: {0}")]
    NotARequest(&'static str),
}

/// What this node says about itself, and how it watches its peers.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Our Origin-Host.
    pub origin_host: String,
    /// Our Origin-Realm.
    pub origin_realm: String,
    /// Host-IP-Address values for the CER/CEA (at least one is sent: 127.0.0.1 if empty).
    pub host_ip_addresses: Vec<IpAddr>,
    /// Vendor-Id (0: none).
    pub vendor_id: u32,
    /// Product-Name.
    pub product_name: String,
    /// Firmware-Revision.
    pub firmware_revision: u32,
    /// Origin-State-Id (changes at each restart).
    pub origin_state_id: u32,
    /// Vendor-Specific-Application-Id entries we advertise: (vendor, auth application).
    pub vendor_auth_apps: Vec<(u32, u32)>,
    /// Supported-Vendor-Id values.
    pub supported_vendor_ids: Vec<u32>,
    /// Responder: Origin-Host values allowed to connect (case-insensitive); empty allows
    /// nobody. Initiator: when not empty, the CEA's Origin-Host must be one of them.
    pub allowed_peers: Vec<String>,
    /// Origin-Realm values allowed (case-insensitive); empty allows any realm.
    pub allowed_realms: Vec<String>,
    /// Tw, the watchdog interval (RFC 3539: 30 s by default, at least 6 s in deployments).
    pub watchdog: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// How long a request may wait for its answer.
    pub request_timeout: Duration,
    /// Largest message accepted.
    pub max_message_len: usize,
}

impl PeerConfig {
    /// A Cx node's configuration with the usual defaults.
    pub fn cx(origin_host: &str, origin_realm: &str) -> Self {
        Self {
            origin_host: origin_host.to_owned(),
            origin_realm: origin_realm.to_owned(),
            host_ip_addresses: Vec::new(),
            vendor_id: 0,
            product_name: "ims-core".to_owned(),
            firmware_revision: 1,
            origin_state_id: 1,
            vendor_auth_apps: vec![(dict::VENDOR_3GPP, dict::APP_CX)],
            supported_vendor_ids: vec![dict::VENDOR_3GPP],
            allowed_peers: Vec::new(),
            allowed_realms: Vec::new(),
            watchdog: Duration::from_secs(30),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            max_message_len: DEFAULT_MAX_MESSAGE_LEN as usize,
        }
    }
}

/// End-to-End identifiers as RFC 6733 §3 advises and freeDiameter does: the low 12 bits of
/// the time in the top 12 bits, a random value in the low 20, then incremented.
#[derive(Debug, Clone)]
pub struct EndToEndIdGenerator {
    next: u32,
}

impl EndToEndIdGenerator {
    /// Seeded from the time (seconds since the epoch) and a random value, both from the caller.
    pub fn new(unix_seconds: u64, random: u32) -> Self {
        Self {
            next: (((unix_seconds & 0xfff) as u32) << 20) | (random & 0xf_ffff),
        }
    }

    /// The next identifier.
    pub fn next_id(&mut self) -> u32 {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        id
    }
}

/// One Diameter connection. See the module docs.
#[derive(Debug)]
pub struct Peer {
    cfg: PeerConfig,
    role: Role,
    state: State,
    rx: Vec<u8>,
    tx: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    hop_by_hop: u32,
    e2e: EndToEndIdGenerator,
    next_handle: u64,
    /// hop-by-hop → (handle, deadline)
    pending: HashMap<u32, (u64, Instant)>,
    /// Watchdog / CER / DPA deadline.
    deadline: Option<Instant>,
    /// Our DWR is waiting for its DWA (RFC 3539 `pending`).
    dwr_outstanding: bool,
    suspect: bool,
    reconnect_at: Option<Instant>,
    backoff: Duration,
    /// When the connection last became Open.
    opened_at: Option<Instant>,
    /// The last Open connection went down within Tw: the next Open does not reset the
    /// back-off (a peer that misbehaves right after its CEA).
    died_young: bool,
    remote: Option<(String, String)>,
    common_apps: Vec<u32>,
    /// The peer advertised the Relay Application-Id in its CER/CEA.
    relay: bool,
    no_reconnect: bool,
    closing_after_send: bool,
}

impl Peer {
    /// A peer in the Closed state. `seed` varies the first hop-by-hop and end-to-end ids
    /// (give it randomness; a fixed seed is for tests). Reads the wall clock once for the
    /// end-to-end ids; [`Peer::with_end_to_end`] takes them from the caller instead.
    pub fn new(cfg: PeerConfig, role: Role, seed: u32) -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::with_end_to_end(cfg, role, seed, EndToEndIdGenerator::new(secs, seed))
    }

    /// A peer in the Closed state, nothing read from the host: `hop_by_hop_seed` places the
    /// first hop-by-hop id, `e2e` hands out the end-to-end ids.
    pub fn with_end_to_end(
        cfg: PeerConfig,
        role: Role,
        hop_by_hop_seed: u32,
        e2e: EndToEndIdGenerator,
    ) -> Self {
        let backoff = cfg.reconnect_min;
        Self {
            cfg,
            role,
            state: State::Closed,
            rx: Vec::new(),
            tx: VecDeque::new(),
            events: VecDeque::new(),
            hop_by_hop: hop_by_hop_seed.rotate_left(16) ^ 0x5a5a_0000,
            e2e,
            next_handle: 1,
            pending: HashMap::new(),
            deadline: None,
            dwr_outstanding: false,
            suspect: false,
            reconnect_at: None,
            backoff,
            opened_at: None,
            died_young: false,
            remote: None,
            common_apps: Vec::new(),
            relay: false,
            no_reconnect: false,
            closing_after_send: false,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The peer's (Origin-Host, Origin-Realm) once known.
    pub fn remote(&self) -> Option<(&str, &str)> {
        self.remote.as_ref().map(|(h, r)| (h.as_str(), r.as_str()))
    }

    /// The applications both ends advertised (known once Open; our own list when the peer
    /// is a relay).
    pub fn common_applications(&self) -> &[u32] {
        &self.common_apps
    }

    /// Whether the peer advertised the Relay Application-Id (0xffffffff) in its CER/CEA
    /// (known once Open): a relay agent carries requests for hosts beyond it (RFC 6733
    /// §2.8), so a request for a Diameter host that is not a peer of ours may go to it.
    pub fn remote_is_relay(&self) -> bool {
        self.relay
    }

    /// The RFC 3539 watchdog state: OKAY or SUSPECT while the connection is Open or
    /// Closing, DOWN otherwise.
    pub fn watchdog_state(&self) -> WatchdogState {
        match self.state {
            State::Open | State::Closing if self.suspect => WatchdogState::Suspect,
            State::Open | State::Closing => WatchdogState::Okay,
            _ => WatchdogState::Down,
        }
    }

    /// Initiator: when [`Event::Reconnect`] will be raised (also in [`Peer::poll_timeout`]).
    pub fn reconnect_at(&self) -> Option<Instant> {
        self.reconnect_at
    }

    /// Requests waiting for their answer.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Initiator: the driver started connecting.
    pub fn handle_connecting(&mut self, _now: Instant) {
        if self.role == Role::Initiator && self.state == State::Closed {
            self.state = State::WaitConnAck;
            self.reconnect_at = None;
        }
    }

    /// The transport is up: an initiator sends its CER, a responder waits for one (for at
    /// most Tw).
    pub fn handle_connected(&mut self, now: Instant) {
        self.rx.clear();
        self.reconnect_at = None;
        self.dwr_outstanding = false;
        self.suspect = false;
        self.closing_after_send = false;
        // The driver connects again, whatever it was told before.
        self.no_reconnect = false;
        match self.role {
            Role::Initiator => {
                let hdr = Header::request(
                    dict::command::CAPABILITIES_EXCHANGE,
                    dict::APP_COMMON,
                    false,
                    self.next_hop(),
                    self.e2e.next_id(),
                );
                let cer = self.build(&hdr, |p, b| p.capabilities(b));
                self.queue(cer);
                self.state = State::WaitCea;
            }
            Role::Responder => self.state = State::WaitCer,
        }
        self.deadline = Some(now + self.cfg.watchdog);
    }

    /// Bytes arrived on the stream (any split: partial or several messages).
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if matches!(self.state, State::Closed | State::WaitConnAck) || self.closing_after_send {
            return;
        }
        self.rx.extend_from_slice(bytes);
        loop {
            let len = match frame(&self.rx, self.cfg.max_message_len as u32) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    // go_down says why, once.
                    self.go_down(now, DownReason::Framing(e.to_string()));
                    return;
                }
            };
            let msg: Vec<u8> = self.rx.drain(..len).collect();
            self.receive(now, &msg);
            if self.state == State::Closed || self.closing_after_send {
                return;
            }
        }
    }

    /// The transport closed or failed.
    pub fn handle_disconnected(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let reason = if self.state == State::Closing {
            DownReason::Disconnected
        } else {
            DownReason::TransportClosed
        };
        self.go_down_quiet(now, reason);
    }

    /// Timers: watchdog, CER/CEA and DPA waits, request timeouts, reconnect.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(at) = self.reconnect_at
            && now >= at
        {
            self.reconnect_at = None;
            self.events.push_back(Event::Reconnect);
        }
        let expired: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(h, _)| *h)
            .collect();
        for h in expired {
            if let Some((handle, _)) = self.pending.remove(&h) {
                self.events.push_back(Event::RequestFailed {
                    handle,
                    reason: RequestFailure::Timeout,
                });
            }
        }
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        match self.state {
            State::Open if !self.dwr_outstanding && !self.suspect => {
                let hdr = Header::request(
                    dict::command::DEVICE_WATCHDOG,
                    dict::APP_COMMON,
                    false,
                    self.next_hop(),
                    self.e2e.next_id(),
                );
                let dwr = self.build(&hdr, |p, b| {
                    p.identity(b);
                    b.u32(&dict::ORIGIN_STATE_ID, p.cfg.origin_state_id);
                });
                self.queue(dwr);
                self.dwr_outstanding = true;
                self.deadline = Some(now + self.cfg.watchdog);
            }
            State::Open if !self.suspect => {
                tracing::warn!(
                    peer = self.remote.as_ref().map_or("", |r| r.0.as_str()),
                    "no DWA within Tw: Diameter peer SUSPECT (fail over)"
                );
                self.suspect = true;
                self.deadline = Some(now + self.cfg.watchdog);
            }
            State::Open | State::WaitCea | State::WaitCer => {
                match self.state {
                    State::WaitCer => tracing::warn!("no CER within Tw of the connection: closing"),
                    State::WaitCea => tracing::warn!("no CEA within Tw of our CER: closing"),
                    _ => tracing::warn!(
                        peer = self.remote.as_ref().map_or("", |r| r.0.as_str()),
                        "no DWA within 2*Tw of our DWR: Diameter peer down, closing"
                    ),
                }
                self.go_down(now, DownReason::WatchdogTimeout);
            }
            State::Closing => self.go_down(now, DownReason::Disconnected),
            State::Closed | State::WaitConnAck => self.deadline = None,
        }
    }

    /// Sends an application request (whole message bytes, R bit set). Its hop-by-hop and
    /// end-to-end ids are assigned here. Returns the handle its answer will carry.
    pub fn send_request(&mut self, now: Instant, mut bytes: Vec<u8>) -> Result<u64, PeerError> {
        if self.state != State::Open {
            return Err(PeerError::NotOpen(self.state));
        }
        if bytes.len() < 20 || bytes[4] & flags::R == 0 {
            return Err(PeerError::NotARequest("no header or R bit clear"));
        }
        // A length field that lies would desynchronise the stream for the peer.
        if frame(&bytes, u32::MAX) != Ok(Some(bytes.len())) {
            return Err(PeerError::NotARequest(
                "the header's length is not the number of bytes",
            ));
        }
        let hop = self.next_hop();
        let e2e = self.e2e.next_id();
        bytes[12..16].copy_from_slice(&hop.to_be_bytes());
        bytes[16..20].copy_from_slice(&e2e.to_be_bytes());
        let handle = self.next_handle;
        self.next_handle += 1;
        self.pending
            .insert(hop, (handle, now + self.cfg.request_timeout));
        self.queue(bytes);
        Ok(handle)
    }

    /// Sends an answer to an [`Event::Request`] (dropped when the connection is not Open).
    pub fn send_answer(&mut self, bytes: Vec<u8>) {
        if self.state == State::Open || self.state == State::Closing {
            self.queue(bytes);
        }
    }

    /// Answers the application request `request` (as an [`Event::Request`] gave it) with
    /// `code` alone, e.g. 3004 DIAMETER_TOO_BUSY when the application has no room for it:
    /// the request's identifiers, its Session-Id first, the Result-Code (the E bit for a
    /// protocol error, 3xxx), our Origin-Host and Origin-Realm. Nothing is sent for bytes
    /// that are not a request.
    pub fn answer_with_result(&mut self, request: &[u8], code: u32) {
        let Ok(msg) = Message::parse(request) else {
            return;
        };
        if !msg.is_request() {
            return;
        }
        let mut hdr = msg.header().answer();
        if (3000..4000).contains(&code) {
            hdr.flags |= flags::E;
        }
        let session = msg.session_id().ok().flatten();
        let answer = self.build(&hdr, |p, b| {
            if let Some(sid) = session {
                b.utf8(&dict::SESSION_ID, sid);
            }
            b.u32(&dict::RESULT_CODE, code);
            p.identity(b);
        });
        if !answer.is_empty() {
            self.send_answer(answer);
        }
    }

    /// Sends DPR with `cause` and waits (at most Tw) for the DPA.
    /// Before Open (or already Closing) the connection is just closed; either way an
    /// initiator does not reconnect until the driver calls [`Peer::handle_connected`] again.
    pub fn disconnect(&mut self, now: Instant, cause: DisconnectCause) {
        if self.state != State::Open {
            self.no_reconnect = true;
            self.reconnect_at = None;
            if self.state != State::Closed {
                self.go_down(now, DownReason::Disconnected);
            }
            return;
        }
        let hdr = Header::request(
            dict::command::DISCONNECT_PEER,
            dict::APP_COMMON,
            false,
            self.next_hop(),
            self.e2e.next_id(),
        );
        let dpr = self.build(&hdr, |p, b| {
            p.identity(b);
            b.enumerated(&dict::DISCONNECT_CAUSE, cause);
        });
        self.queue(dpr);
        self.no_reconnect = true;
        self.state = State::Closing;
        self.deadline = Some(now + self.cfg.watchdog);
    }

    /// The next bytes to write.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Peer::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pending = self.pending.values().map(|(_, d)| *d).min();
        [self.deadline, self.reconnect_at, pending]
            .into_iter()
            .flatten()
            .min()
    }

    // ----- internals -----

    fn next_hop(&mut self) -> u32 {
        self.hop_by_hop = self.hop_by_hop.wrapping_add(1);
        self.hop_by_hop
    }

    fn queue(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.tx.push_back(bytes);
        }
    }

    fn build(&self, hdr: &Header, f: impl FnOnce(&Self, &mut MessageBuilder<'_>)) -> Vec<u8> {
        let mut buf = Vec::with_capacity(256);
        let mut b = MessageBuilder::new(&mut buf, hdr);
        f(self, &mut b);
        match b.finish() {
            Ok(_) => buf,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a base Diameter message");
                Vec::new()
            }
        }
    }

    fn identity(&self, b: &mut MessageBuilder<'_>) {
        b.utf8(&dict::ORIGIN_HOST, &self.cfg.origin_host)
            .utf8(&dict::ORIGIN_REALM, &self.cfg.origin_realm);
    }

    fn capabilities(&self, b: &mut MessageBuilder<'_>) {
        self.identity(b);
        self.cea_body(b);
    }

    /// An answer to `req` with a Result-Code (and the E bit for protocol errors).
    fn base_answer(
        &self,
        req: &Header,
        code: u32,
        failed: Option<&FailedAvp>,
        extra: impl FnOnce(&Self, &mut MessageBuilder<'_>),
    ) -> Vec<u8> {
        let mut hdr = req.answer();
        if (3000..4000).contains(&code) {
            hdr.flags |= flags::E;
        }
        self.build(&hdr, |p, b| {
            b.u32(&dict::RESULT_CODE, code);
            p.identity(b);
            extra(p, b);
            if let Some(f) = failed {
                b.failed_avp(f);
            }
        })
    }

    fn go_down(&mut self, now: Instant, reason: DownReason) {
        self.go_down_quiet(now, reason);
        self.closing_after_send = true;
        self.events.push_back(Event::Close);
    }

    fn go_down_quiet(&mut self, now: Instant, reason: DownReason) {
        let was = self.state;
        self.state = State::Closed;
        self.deadline = None;
        self.dwr_outstanding = false;
        self.suspect = false;
        self.rx.clear();
        let mut failed: Vec<u64> = self.pending.drain().map(|(_, (h, _))| h).collect();
        failed.sort_unstable();
        for handle in failed {
            self.events.push_back(Event::RequestFailed {
                handle,
                reason: RequestFailure::ConnectionDown,
            });
        }
        // The one line saying why the connection went: a warning when the peer misbehaved.
        match reason {
            DownReason::Framing(ref e) => {
                tracing::warn!(?was, error = %e, "Diameter framing error: connection down, closing");
            }
            // A transport that never came up: the driver says why its connect failed (once,
            // not at each retry).
            _ if was == State::WaitConnAck => {
                tracing::debug!(?reason, "Diameter connection attempt failed");
            }
            _ => tracing::info!(?was, ?reason, "Diameter peer connection down"),
        }
        self.events.push_back(Event::Down(reason));
        // A connection that lived Tw was a good one: start the back-off again. One that died
        // sooner (a peer that sends garbage right after the CEA) keeps it doubling through
        // the next Open, so that a hostile peer cannot make us reconnect every second.
        if matches!(was, State::Open | State::Closing) {
            let lived = self
                .opened_at
                .is_some_and(|at| now >= at + self.cfg.watchdog);
            if lived {
                self.backoff = self.cfg.reconnect_min;
            }
            self.died_young = !lived;
        }
        self.opened_at = None;
        if self.role == Role::Initiator && !self.no_reconnect {
            self.reconnect_at = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(self.cfg.reconnect_max);
        }
    }

    fn up(&mut self, now: Instant, host: String, realm: String, (apps, relay): (Vec<u32>, bool)) {
        self.state = State::Open;
        self.common_apps = apps;
        self.relay = relay;
        self.opened_at = Some(now);
        if !self.died_young {
            self.backoff = self.cfg.reconnect_min;
        }
        self.no_reconnect = false;
        self.deadline = Some(now + self.cfg.watchdog);
        tracing::info!(peer = %host, realm = %realm, apps = ?self.common_apps, relay, "Diameter peer connection open");
        self.remote = Some((host.clone(), realm.clone()));
        self.events.push_back(Event::Up { host, realm });
    }

    fn receive(&mut self, now: Instant, bytes: &[u8]) {
        // Any message proves the peer alive while OKAY (RFC 3539 §3.4.1); a SUSPECT peer
        // needs a DWA.
        if self.state == State::Open && !self.suspect {
            self.deadline = Some(now + self.cfg.watchdog);
        }
        let msg = match Message::parse(bytes) {
            Ok(m) => m,
            Err(e) => return self.malformed(now, bytes, &e),
        };
        let hdr = *msg.header();
        let request = msg.is_request();
        match (hdr.command_code, request) {
            (dict::command::CAPABILITIES_EXCHANGE, true) => self.on_cer(now, &msg),
            (dict::command::CAPABILITIES_EXCHANGE, false) => self.on_cea(now, &msg),
            (dict::command::DEVICE_WATCHDOG, true) => {
                let dwa = self.base_answer(&hdr, rc::SUCCESS, None, |p, b| {
                    b.u32(&dict::ORIGIN_STATE_ID, p.cfg.origin_state_id);
                });
                self.queue(dwa);
            }
            (dict::command::DEVICE_WATCHDOG, false) => {
                self.dwr_outstanding = false;
                if self.suspect {
                    tracing::info!("DWA from a SUSPECT Diameter peer: OKAY again (fail back)");
                    self.suspect = false;
                }
                if self.state == State::Open {
                    self.deadline = Some(now + self.cfg.watchdog);
                }
            }
            (dict::command::DISCONNECT_PEER, true) => {
                let cause = find_u32(&msg, &dict::DISCONNECT_CAUSE).map_or(0, |c| c as i32);
                let dpa = self.base_answer(&hdr, rc::SUCCESS, None, |_, _| {});
                self.queue(dpa);
                if cause == DisconnectCause::DoNotWantToTalkToYou as i32 {
                    self.no_reconnect = true;
                }
                self.go_down(now, DownReason::PeerDisconnected(cause));
            }
            (dict::command::DISCONNECT_PEER, false) => {
                if self.state == State::Closing {
                    self.go_down(now, DownReason::Disconnected);
                }
            }
            (_, true) => {
                if self.state == State::Open || self.state == State::Closing {
                    self.events.push_back(Event::Request(bytes.to_vec()));
                } else {
                    tracing::warn!(command = hdr.command_code, state = ?self.state, "application request before the capabilities exchange: closing");
                    self.go_down(now, DownReason::CapabilitiesRefused(rc::UNABLE_TO_COMPLY));
                }
            }
            (_, false) => match self.pending.remove(&hdr.hop_by_hop) {
                Some((handle, _)) => self.events.push_back(Event::Answer {
                    handle,
                    bytes: bytes.to_vec(),
                }),
                None => tracing::warn!(
                    hop_by_hop = hdr.hop_by_hop,
                    command = hdr.command_code,
                    "Diameter answer matches no pending request: dropped"
                ),
            },
        }
    }

    /// A message our codec refused: answer a request with the error's Result-Code and
    /// Failed-AVP; close on a connection-fatal error.
    fn malformed(&mut self, now: Instant, bytes: &[u8], e: &Error) {
        tracing::warn!(error = %e, "malformed Diameter message from peer");
        if e.is_connection_fatal() || bytes.len() < 20 {
            self.go_down(now, DownReason::Framing(e.to_string()));
            return;
        }
        let is_request = bytes[4] & flags::R != 0;
        if is_request {
            let hdr = Header {
                length: 0,
                flags: bytes[4],
                command_code: u32::from_be_bytes([0, bytes[5], bytes[6], bytes[7]]),
                application_id: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
                hop_by_hop: u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
                end_to_end: u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
            };
            let mut hdr = hdr;
            hdr.flags &= flags::R | flags::P;
            let ans = self.base_answer(&hdr, e.result_code(), e.failed_avp(), |_, _| {});
            self.queue(ans);
        } else {
            let hop = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
            // Hand it over all the same: waiting for `request_timeout` helps nobody.
            if let Some((handle, _)) = self.pending.remove(&hop) {
                self.events.push_back(Event::Answer {
                    handle,
                    bytes: bytes.to_vec(),
                });
            }
        }
    }

    fn on_cer(&mut self, now: Instant, msg: &Message<'_>) {
        let hdr = *msg.header();
        if self.state != State::WaitCer {
            // RFC 6733 §5.6.1: a CER on an open connection is answered but changes nothing.
            tracing::warn!(state = ?self.state, "CER on a connection past its capabilities exchange: 5012, nothing changes");
            let cea = self.base_answer(&hdr, rc::UNABLE_TO_COMPLY, None, |p, b| p.cea_body(b));
            self.queue(cea);
            return;
        }
        let (host, realm) = match identity_of(msg) {
            Ok(hr) => hr,
            Err(e) => {
                let cea =
                    self.base_answer(&hdr, e.result_code(), e.failed_avp(), |p, b| p.cea_body(b));
                self.queue(cea);
                self.go_down(now, DownReason::CapabilitiesRefused(e.result_code()));
                return;
            }
        };
        if !self.allowed(&host, &realm) {
            tracing::warn!(peer = %host, realm = %realm, "CER from a peer not in the allow-list: 3010");
            let cea = self.base_answer(&hdr, rc::UNKNOWN_PEER, None, |p, b| p.cea_body(b));
            self.queue(cea);
            self.go_down(now, DownReason::CapabilitiesRefused(rc::UNKNOWN_PEER));
            return;
        }
        let apps = self.shared_applications(msg);
        if apps.0.is_empty() {
            tracing::warn!(peer = %host, "CER without a common application: 5010");
            let cea = self.base_answer(&hdr, rc::NO_COMMON_APPLICATION, None, |p, b| p.cea_body(b));
            self.queue(cea);
            self.go_down(
                now,
                DownReason::CapabilitiesRefused(rc::NO_COMMON_APPLICATION),
            );
            return;
        }
        let cea = self.base_answer(&hdr, rc::SUCCESS, None, |p, b| p.cea_body(b));
        self.queue(cea);
        self.up(now, host, realm, apps);
    }

    /// Origin-Host in the allow-list, and Origin-Realm too when realms are listed.
    fn allowed(&self, host: &str, realm: &str) -> bool {
        self.cfg
            .allowed_peers
            .iter()
            .any(|p| p.eq_ignore_ascii_case(host))
            && (self.cfg.allowed_realms.is_empty()
                || self
                    .cfg
                    .allowed_realms
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(realm)))
    }

    /// Our capabilities after the identity: in a CER, and in a CEA after its Result-Code.
    fn cea_body(&self, b: &mut MessageBuilder<'_>) {
        if self.cfg.host_ip_addresses.is_empty() {
            b.address(&dict::HOST_IP_ADDRESS, IpAddr::from([127, 0, 0, 1]));
        }
        for ip in &self.cfg.host_ip_addresses {
            b.address(&dict::HOST_IP_ADDRESS, *ip);
        }
        b.u32(&dict::VENDOR_ID, self.cfg.vendor_id)
            .utf8(&dict::PRODUCT_NAME, &self.cfg.product_name)
            .u32(&dict::ORIGIN_STATE_ID, self.cfg.origin_state_id);
        for v in &self.cfg.supported_vendor_ids {
            b.u32(&dict::SUPPORTED_VENDOR_ID, *v);
        }
        for (vendor, app) in &self.cfg.vendor_auth_apps {
            b.group(&dict::VENDOR_SPECIFIC_APPLICATION_ID, |g| {
                g.u32(&dict::VENDOR_ID, *vendor)
                    .u32(&dict::AUTH_APPLICATION_ID, *app);
            });
        }
        b.u32(&dict::FIRMWARE_REVISION, self.cfg.firmware_revision);
    }

    fn on_cea(&mut self, now: Instant, msg: &Message<'_>) {
        if self.state != State::WaitCea {
            tracing::warn!(state = ?self.state, "unexpected CEA: ignored");
            return;
        }
        let code = find_u32(msg, &dict::RESULT_CODE).unwrap_or(0);
        if code != rc::SUCCESS {
            tracing::warn!(result = code, "capabilities exchange refused by the peer");
            self.go_down(now, DownReason::CapabilitiesRefused(code));
            return;
        }
        let (host, realm) = match identity_of(msg) {
            Ok(hr) => hr,
            Err(e) => {
                self.go_down(now, DownReason::CapabilitiesRefused(e.result_code()));
                return;
            }
        };
        if !self.cfg.allowed_peers.is_empty()
            && !self
                .cfg
                .allowed_peers
                .iter()
                .any(|p| p.eq_ignore_ascii_case(&host))
        {
            tracing::warn!(peer = %host, "CEA from an unexpected Origin-Host: closing");
            self.go_down(now, DownReason::CapabilitiesRefused(rc::UNKNOWN_PEER));
            return;
        }
        let apps = self.shared_applications(msg);
        if apps.0.is_empty() {
            tracing::warn!(peer = %host, "CEA without a common application: closing");
            self.go_down(
                now,
                DownReason::CapabilitiesRefused(rc::NO_COMMON_APPLICATION),
            );
            return;
        }
        self.up(now, host, realm, apps);
    }

    /// The applications of ours the CER/CEA names (all of ours if it names the relay
    /// application), in our order (empty: no common application), and whether it names the
    /// relay application.
    fn shared_applications(&self, msg: &Message<'_>) -> (Vec<u32>, bool) {
        let mut theirs: Vec<u32> = Vec::new();
        let mut app_of = |a: &Avp<'_>| {
            if (a.is(&dict::AUTH_APPLICATION_ID) || a.is(&dict::ACCT_APPLICATION_ID))
                && let Ok(id) = a.as_u32()
            {
                theirs.push(id);
            }
        };
        for avp in msg.avps().flatten() {
            if avp.is(&dict::VENDOR_SPECIFIC_APPLICATION_ID) {
                avp.grouped().flatten().for_each(|c| app_of(&c));
            } else {
                app_of(&avp);
            }
        }
        let relay = theirs.contains(&dict::APP_RELAY);
        let mut common: Vec<u32> = Vec::new();
        for (_, app) in &self.cfg.vendor_auth_apps {
            if (relay || theirs.contains(app)) && !common.contains(app) {
                common.push(*app);
            }
        }
        (common, relay)
    }
}

fn find_u32(msg: &Message<'_>, def: &dict::AvpDef) -> Option<u32> {
    msg.find(def).ok().flatten().and_then(|a| a.as_u32().ok())
}

fn identity_of(msg: &Message<'_>) -> Result<(String, String), Error> {
    let get = |def: &dict::AvpDef| -> Result<String, Error> {
        match msg.find(def)? {
            Some(a) => Ok(a.as_identity()?.to_owned()),
            None => Err(Error::MissingAvp(FailedAvp::missing(def))),
        }
    };
    Ok((get(&dict::ORIGIN_HOST)?, get(&dict::ORIGIN_REALM)?))
}

#[cfg(test)]
mod tests;

//! A Diameter client connection for the CSCFs (I-CSCF → HSS: UAR, LIR; S-CSCF → HSS: MAR,
//! SAR, and the HSS's RTR/PPR back): one tokio task drives the sans-io
//! [`ims_diameter::peer::Peer`] (initiator) over TCP, reconnects with its back-off, answers
//! DWR/DPR itself, and lets many callers have requests in flight at once
//! ([`DiameterClient::request`]). Requests the server sends us (RTR, PPR) arrive on the
//! channel returned by [`DiameterClient::connect`]; answer them with
//! [`DiameterClient::answer`] (a client with nothing to serve builds its refusal with
//! [`refusal`]).
//!
//! A connection counts as open for new requests only while the peer is Open *and* its RFC
//! 3539 watchdog is OKAY: once our DWR has gone unanswered for Tw (SUSPECT), new requests fail
//! at once with [`RequestError::NotOpen`] instead of each waiting out its timeout on a peer
//! that has stopped answering (with one HSS there is nowhere to fail over to, so the caller
//! answers 503 at once); a DWA makes it usable again, another Tw without one closes the
//! connection and reconnects with back-off. Requests waiting when the connection goes down
//! fail at once with [`RequestError::NotOpen`] too; [`RequestError::NoAnswer`] is a timeout.
//!
//! One exception to "at once": the client's very first connection attempt. A CSCF that has
//! just started (restarted under load, issue #20) takes SIP requests as soon as it is bound,
//! and its TCP connect and CER/CEA may still be under way: nothing is known down yet, so a
//! request then waits for that attempt's outcome (at most the request timeout) and goes out
//! when it opens, instead of a UE getting a 503 or 480 from a core whose HSS is fine. If the
//! first attempt fails (refused, CEA refused, closed), the request fails with
//! [`RequestError::NotOpen`] at once, as every later one does while the link is down.
//!
//! **What the log says** about the link: one warning naming the server's address when it
//! cannot be reached (and again only when the reason changes: refused, then no route), the
//! retries that fail the same way at debug level, and one line when it opens again; the
//! callers then log each request it fails at info level at most, so that an HSS mistyped in
//! a configuration is one clear line, not one per retry or per REGISTER.
//! [`CxClientConfig::warn_realm_not_served`] is the one line a caller writes when the HSS
//! answers 3003 DIAMETER_REALM_NOT_SERVED: it names our `destination_realm`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ims_diameter::peer::{Peer, PeerConfig, Role, State, WatchdogState};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::RequestError;
use super::conn::{self, Cmd, Ended, Owner, refuse};

/// The `[diameter]` section of a CSCF's configuration: how to reach the HSS over Cx.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CxClientConfig {
    /// The HSS's Diameter address (TCP).
    pub hss: SocketAddr,
    /// Our Origin-Host (the HSS allow-lists it).
    pub origin_host: String,
    /// Our Origin-Realm.
    pub origin_realm: String,
    /// Destination-Realm of our requests (the home network).
    pub destination_realm: String,
    /// Destination-Host of our requests (omitted when unset: routed by realm).
    #[serde(default)]
    pub destination_host: Option<String>,
    /// Tw: seconds of silence before we send a DWR (RFC 3539; at least 6).
    #[serde(default = "default_watchdog")]
    pub watchdog_seconds: u64,
    /// Seconds a request waits for its answer.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
    /// Local address to connect from (the HSS sees it, and may filter on it). Unset: the
    /// daemon's SIP address when that is a specific one, else the kernel's choice.
    #[serde(default)]
    pub local_address: Option<IpAddr>,
}

fn default_watchdog() -> u64 {
    30
}

fn default_request_timeout() -> u64 {
    5
}

impl CxClientConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.origin_host.is_empty() || self.origin_realm.is_empty() {
            return Err("diameter.origin_host and diameter.origin_realm must be set".into());
        }
        if self.destination_realm.is_empty() {
            return Err("diameter.destination_realm must be set".into());
        }
        if self.watchdog_seconds < 6 {
            return Err(format!(
                "diameter.watchdog_seconds = {} is below RFC 3539's minimum of 6",
                self.watchdog_seconds
            ));
        }
        if self.request_timeout_seconds == 0 {
            return Err("diameter.request_timeout_seconds must be at least 1".into());
        }
        Ok(())
    }

    /// The peer configuration of a Cx client with these settings.
    pub fn peer_config(&self) -> PeerConfig {
        let mut p = PeerConfig::cx(&self.origin_host, &self.origin_realm);
        p.watchdog = Duration::from_secs(self.watchdog_seconds);
        p.request_timeout = Duration::from_secs(self.request_timeout_seconds);
        p.origin_state_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        p
    }

    /// The one warning for a `command` the HSS (or a relay on the way) answered 3003
    /// DIAMETER_REALM_NOT_SERVED, with its Error-Message: our `destination_realm` names a
    /// network it does not serve (mistyped, most often). The caller answers its SIP request
    /// 500: the fault is this node's configuration, neither the UE's nor passing.
    pub fn warn_realm_not_served(&self, command: &str, error_message: Option<&str>) {
        tracing::warn!(
            command,
            destination_realm = %self.destination_realm,
            hss = %self.hss,
            error_message = error_message.unwrap_or(""),
            "the HSS does not serve our diameter.destination_realm (3003 DIAMETER_REALM_NOT_SERVED): check it in this daemon's [diameter] section"
        );
    }

    /// Starts the client connection with these settings, from `local_address`, else from
    /// `default_local` unless it is unspecified (0.0.0.0, ::).
    pub fn connect(&self, default_local: IpAddr) -> (DiameterClient, mpsc::Receiver<Vec<u8>>) {
        let local = self
            .local_address
            .or((!default_local.is_unspecified()).then_some(default_local));
        DiameterClient::connect_from(self.hss, local, self.peer_config())
    }
}

/// Where the connection stands, for new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// The first connection attempt is under way (TCP connect, CER/CEA): a request waits
    /// for its outcome.
    Starting,
    /// Open, and its watchdog OKAY.
    Open,
    /// Not usable: down, reconnecting, SUSPECT, or the first attempt failed.
    Down,
}

/// A handle on one client connection (clone it freely).
#[derive(Clone)]
pub struct DiameterClient {
    cmds: mpsc::Sender<Cmd>,
    open: watch::Receiver<Link>,
    server: SocketAddr,
    /// How long a request made during the first connection attempt waits for it.
    first_wait: Duration,
}

impl DiameterClient {
    /// Starts connecting to `server` (and keeps reconnecting); requests from the server
    /// come on the returned channel.
    pub fn connect(server: SocketAddr, cfg: PeerConfig) -> (Self, mpsc::Receiver<Vec<u8>>) {
        Self::connect_from(server, None, cfg)
    }

    /// As [`DiameterClient::connect`], binding the connection's local address to `local`.
    pub fn connect_from(
        server: SocketAddr,
        local: Option<IpAddr>,
        cfg: PeerConfig,
    ) -> (Self, mpsc::Receiver<Vec<u8>>) {
        let (cmds, rx) = mpsc::channel(4096);
        let (requests_tx, requests_rx) = mpsc::channel(256);
        let (open_tx, open) = watch::channel(Link::Starting);
        let first_wait = cfg.request_timeout;
        let write_limit = cfg.request_timeout;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.subsec_nanos());
        let peer = Peer::new(cfg, Role::Initiator, seed);
        tokio::spawn(
            drive(server, local, peer, write_limit, rx, requests_tx, open_tx)
                .instrument(tracing::info_span!("diameter_client", %server)),
        );
        (
            Self {
                cmds,
                open,
                server,
                first_wait,
            },
            requests_rx,
        )
    }

    /// Waits until the connection is open for requests: capabilities exchanged, watchdog
    /// OKAY (or `timeout` passes).
    pub async fn wait_open(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.open.wait_for(|o| *o == Link::Open))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Sends a request (its hop-by-hop and end-to-end ids are filled in) and waits for the
    /// answer. While the link is known down it fails at once; during the client's first
    /// connection attempt it waits for that attempt (see the module docs).
    pub async fn request(&self, bytes: Vec<u8>) -> Result<Vec<u8>, RequestError> {
        let link = *self.open.borrow();
        match link {
            Link::Open => {}
            Link::Down => return Err(RequestError::NotOpen(self.server)),
            Link::Starting => {
                let mut open = self.open.clone();
                let settled =
                    tokio::time::timeout(self.first_wait, open.wait_for(|l| *l != Link::Starting))
                        .await;
                match settled.as_ref().map(|r| r.as_deref().copied()) {
                    Ok(Ok(Link::Open)) => {}
                    Ok(Ok(_)) => return Err(RequestError::NotOpen(self.server)),
                    Ok(Err(_)) => return Err(RequestError::Stopped),
                    Err(_) => return Err(RequestError::NoAnswer(self.server)),
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Request(bytes, tx))
            .await
            .map_err(|_| RequestError::Stopped)?;
        // The driver fails every request by the peer's request timeout, or when the
        // connection ends; this bound only keeps a caller from waiting for ever should the
        // driver itself be stuck.
        match tokio::time::timeout(self.first_wait * 2, rx).await {
            Ok(r) => r.map_err(|_| RequestError::Stopped)?,
            Err(_) => {
                tracing::warn!(server = %self.server, "no outcome from the Diameter client within twice the request timeout");
                Err(RequestError::NoAnswer(self.server))
            }
        }
    }

    /// Answers a request the server sent us.
    pub async fn answer(&self, bytes: Vec<u8>) {
        let _ = self.cmds.send(Cmd::Answer(bytes)).await;
    }
}

/// The answer refusing a request we cannot serve (one we do not serve at all, e.g. any
/// request to the I-CSCF, or one that does not decode, e.g. an RTR with an unknown mandatory
/// AVP at the S-CSCF): the error's Result-Code (the E bit for 3xxx), our identity, the
/// request's identifiers and Session-Id, Error-Message and Failed-AVP. Empty when `msg` is
/// not a request.
pub fn refusal(
    msg: &ims_diameter::Message<'_>,
    e: &ims_diameter::Error,
    origin_host: &str,
    origin_realm: &str,
) -> Vec<u8> {
    use ims_diameter::{MessageBuilder, dict, header::flags};
    if !msg.is_request() {
        return Vec::new();
    }
    let mut hdr = msg.header().answer();
    if e.is_protocol_error() {
        hdr.flags |= flags::E;
    }
    let mut out = Vec::with_capacity(256);
    let mut b = MessageBuilder::new(&mut out, &hdr);
    if let Ok(Some(sid)) = msg.session_id() {
        b.utf8(&dict::SESSION_ID, sid);
    }
    b.u32(&dict::RESULT_CODE, e.result_code())
        .utf8(&dict::ORIGIN_HOST, origin_host)
        .utf8(&dict::ORIGIN_REALM, origin_realm)
        .utf8(&dict::ERROR_MESSAGE, &e.to_string());
    if let Some(f) = e.failed_avp() {
        b.failed_avp(f);
    }
    match b.finish() {
        Ok(_) => out,
        Err(_) => Vec::new(),
    }
}

async fn connect_tcp(server: SocketAddr, local: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = local else {
        return TcpStream::connect(server).await;
    };
    let socket = if server.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(server).await
}

async fn drive(
    server: SocketAddr,
    local: Option<IpAddr>,
    mut peer: Peer,
    write_limit: Duration,
    mut cmds: mpsc::Receiver<Cmd>,
    requests: mpsc::Sender<Vec<u8>>,
    open: watch::Sender<Link>,
) {
    let mut owner = ClientOwner {
        open: &open,
        requests: &requests,
        unreachable: None,
    };
    loop {
        // Connect (the peer says when to try again after a failure), refusing the commands
        // that come meanwhile.
        peer.handle_connecting(Instant::now());
        let connected = {
            // Bounded: a SYN that nobody answers (an address where no host is) would
            // otherwise hold the first attempt for the kernel's two minutes, every request
            // meanwhile waiting out its timeout, and the log silent.
            let connecting = async {
                tokio::time::timeout(write_limit, connect_tcp(server, local))
                    .await
                    .unwrap_or_else(|_| {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no answer to the TCP connect within {write_limit:?}"),
                        ))
                    })
            };
            tokio::pin!(connecting);
            loop {
                tokio::select! {
                    r = &mut connecting => break Some(r),
                    cmd = cmds.recv() => match cmd {
                        Some(cmd) => refuse(cmd, server),
                        None => break None,
                    },
                }
            }
        };
        let stream = match connected {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                owner.connect_failed(server, &e);
                let _ = open.send(Link::Down);
                peer.handle_disconnected(Instant::now());
                while peer.poll_event().is_some() {}
                if !back_off(&mut peer, &mut cmds, server).await {
                    return;
                }
                continue;
            }
        };
        let ended = conn::run(
            stream,
            server,
            &mut peer,
            &mut cmds,
            None,
            write_limit,
            &mut owner,
        )
        .await;
        let _ = open.send(Link::Down);
        if ended == Ended::NoCommands || !back_off(&mut peer, &mut cmds, server).await {
            return;
        }
    }
}

/// The client's side of a connection: publishes whether the link takes requests, and hands
/// the server's requests (RTR, PPR) to the daemon.
struct ClientOwner<'a> {
    open: &'a watch::Sender<Link>,
    requests: &'a mpsc::Sender<Vec<u8>>,
    /// Why the last connection attempt failed, while the server cannot be reached (the
    /// warning already written for it).
    unreachable: Option<String>,
}

impl ClientOwner<'_> {
    /// A connection attempt failed: the one warning when the server becomes unreachable, or
    /// for another reason than before; debug for a retry that fails the same way.
    fn connect_failed(&mut self, server: SocketAddr, e: &std::io::Error) {
        let why = e.to_string();
        if self.unreachable.as_deref() == Some(why.as_str()) {
            tracing::debug!(%server, error = %why, "Diameter connect failed again");
            return;
        }
        tracing::warn!(%server, error = %why, "Diameter peer unreachable: its requests fail at once until it answers; retrying with back-off");
        self.unreachable = Some(why);
    }
}

impl Owner for ClientOwner<'_> {
    fn up(&mut self, _peer: &Peer, _host: String, _realm: String) {
        if let Some(why) = self.unreachable.take() {
            tracing::info!(was = %why, "Diameter peer reachable again");
        }
    }

    fn down(&mut self) {}

    fn request(&mut self, peer: &mut Peer, bytes: Vec<u8>) {
        // The daemon serves them from a queue; a full queue gets 3004 at once rather than
        // holding up this connection's answers.
        match self.requests.try_send(bytes) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(bytes)) => {
                tracing::warn!("too many Diameter requests from the server waiting: 3004");
                peer.answer_with_result(&bytes, ims_diameter::dict::result_code::TOO_BUSY);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(
                    "a Diameter request from the server with nobody to serve it: dropped"
                );
            }
        }
    }

    fn settled(&mut self, peer: &Peer) {
        // Usable for new requests only while Open and not SUSPECT (see the module docs).
        let usable = peer.state() == State::Open && peer.watchdog_state() == WatchdogState::Okay;
        // The first attempt stays Starting until it opens or ends.
        self.open.send_if_modified(|o| {
            let now = match (usable, *o) {
                (true, _) => Link::Open,
                (false, Link::Starting) => Link::Starting,
                (false, _) => Link::Down,
            };
            std::mem::replace(o, now) != now
        });
    }
}

/// Waits for the peer's reconnect deadline, refusing every command that comes meanwhile: a
/// request queued just as the connection ended must not wait for the next one, which may be
/// never. False when every handle is gone (the client stops).
async fn back_off(peer: &mut Peer, cmds: &mut mpsc::Receiver<Cmd>, server: SocketAddr) -> bool {
    let Some(at) = peer.poll_timeout() else {
        // The peer was told not to come back (DPR with DO_NOT_WANT_TO_TALK_TO_YOU): there is
        // nothing to wait for but the end of the client.
        while let Some(cmd) = cmds.recv().await {
            refuse(cmd, server);
        }
        return false;
    };
    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(at));
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => break,
            cmd = cmds.recv() => match cmd {
                Some(cmd) => refuse(cmd, server),
                None => return false,
            },
        }
    }
    peer.handle_timeout(Instant::now());
    while peer.poll_event().is_some() {}
    true
}

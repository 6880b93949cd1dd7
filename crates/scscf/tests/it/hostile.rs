//! The S-CSCF's Diameter side against a hostile HSS (issue #20): a TCP listener in the test
//! speaks just enough Diameter (it answers the CER with our own peer in the responder role,
//! then writes raw bytes), and a real [`Registrar`] connects to it. Three hostile HSSs at
//! once, each with its own S-CSCF:
//!
//! - requests the S-CSCF cannot serve (an RTR with an unknown mandatory AVP, a PPR with an
//!   AVP running past the message, an unknown command, reserved header bits) each get their
//!   Result-Code (5001 with Failed-AVP, 5014, 3001, 3008), and the connection stays up;
//! - a bad message length, then HTTP on the next connection, each instead of the MAA to a
//!   REGISTER's MAR: that REGISTER gets 503 with Retry-After at once, the S-CSCF closes and
//!   reconnects with a back-off that doubles (1 s, then 2 s: a connection that dies right
//!   after its CEA does not reset it), and a REGISTER arriving while the link is down gets
//!   503 with Retry-After at once too;
//! - an HSS that stops answering, DWR included: after Tw without a DWA the link is SUSPECT
//!   and a REGISTER gets 503 with Retry-After at once (not a MAR that waits out its
//!   timeout), after 2*Tw the S-CSCF closes and reconnects.
//!
//! Each problem is named by one line of the S-CSCF's log, and nothing panics.

use super::{ALICE, ALICE_IMPI, HeaderName, NAME, Ue, reason};
use ims_diameter::cx::{DeregistrationReason, Ppr, RequestBase, Rtr};
use ims_diameter::header::flags;
use ims_diameter::peer::{Peer, PeerConfig, Role, State};
use ims_diameter::{Header, Message, MessageBuilder, dict, frame};
use ims_net::diameter::CxClientConfig;
use ims_scscf::{Config, Registrar};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The S-CSCF's Tw: RFC 3539's minimum, which its configuration enforces.
const TW: Duration = Duration::from_secs(6);

// ----------------------------------------------------------------------------------------
// the hostile HSS

struct Hostile {
    listener: TcpListener,
}

impl Hostile {
    async fn bind() -> Hostile {
        Hostile {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// The S-CSCF's next connection (at most `within`), with the instant it came.
    async fn accept(&self, within: Duration) -> (Conn, Instant) {
        let (s, _) = tokio::time::timeout(within, self.listener.accept())
            .await
            .expect("the S-CSCF connects")
            .unwrap();
        (Conn { s, rx: Vec::new() }, Instant::now())
    }
}

#[derive(Debug)]
enum Next {
    Message(Vec<u8>),
    Closed,
    Silent,
}

struct Conn {
    s: TcpStream,
    rx: Vec<u8>,
}

impl Conn {
    /// Reads the CER and answers it 2001 (our own peer, responder role).
    async fn handshake(&mut self) {
        let mut cfg = PeerConfig::cx("hss1.hims.net", "hims.net");
        cfg.allowed_peers = vec!["scscf1.hims.net".into()];
        let mut p = Peer::new(cfg, Role::Responder, 9);
        p.handle_connected(Instant::now());
        let Next::Message(cer) = self.next(Duration::from_secs(5), false).await else {
            panic!("no CER");
        };
        p.handle_bytes(Instant::now(), &cer);
        assert_eq!(p.state(), State::Open, "the S-CSCF's CER is accepted");
        while let Some(b) = p.poll_transmit() {
            self.send(&b).await;
        }
    }

    async fn send(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b).await;
    }

    /// The next message, the close, or `limit` of silence; with `answer_dwr`, DWRs are
    /// answered and skipped.
    async fn next(&mut self, limit: Duration, answer_dwr: bool) -> Next {
        let end = tokio::time::Instant::now() + limit;
        let mut buf = [0u8; 8192];
        loop {
            if let Ok(Some(len)) = frame(&self.rx, 1 << 24) {
                let m: Vec<u8> = self.rx.drain(..len).collect();
                if answer_dwr && is_dwr(&m) {
                    self.send(&dwa(&m)).await;
                    continue;
                }
                return Next::Message(m);
            }
            match tokio::time::timeout_at(end, self.s.read(&mut buf)).await {
                Err(_) => return Next::Silent,
                Ok(Ok(0) | Err(_)) => return Next::Closed,
                Ok(Ok(n)) => self.rx.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Sends `req` and returns the answer's (command, Result-Code, E bit, Failed-AVP code).
    async fn ask(&mut self, req: &[u8]) -> (u32, Option<u32>, bool, Option<u32>) {
        self.send(req).await;
        let Next::Message(a) = self.next(Duration::from_secs(5), true).await else {
            panic!("no answer from the S-CSCF");
        };
        let m = Message::parse(&a).unwrap();
        assert!(!m.is_request(), "an answer");
        let failed = m
            .find(&dict::FAILED_AVP)
            .unwrap()
            .and_then(|f| f.grouped().next())
            .map(|a| a.unwrap().code());
        (
            m.command_code(),
            result_code(&m),
            m.header().is_error(),
            failed,
        )
    }
}

fn is_dwr(m: &[u8]) -> bool {
    m[4] & flags::R != 0 && u32::from_be_bytes([0, m[5], m[6], m[7]]) == 280
}

fn dwa(dwr: &[u8]) -> Vec<u8> {
    let req = Message::parse(dwr).unwrap();
    let mut b = Vec::new();
    let mut m = MessageBuilder::new(&mut b, &req.header().answer());
    m.u32(&dict::RESULT_CODE, 2001)
        .utf8(&dict::ORIGIN_HOST, "hss1.hims.net")
        .utf8(&dict::ORIGIN_REALM, "hims.net");
    m.finish().unwrap();
    b
}

fn result_code(m: &Message<'_>) -> Option<u32> {
    m.find(&dict::RESULT_CODE).ok()??.as_u32().ok()
}

// ----------------------------------------------------------------------------------------
// hostile bytes

fn hss_base(session_id: &str) -> RequestBase<'_> {
    RequestBase {
        hop_by_hop: 0x1234,
        end_to_end: 0x5678,
        session_id,
        origin_host: "hss1.hims.net",
        origin_realm: "hims.net",
        destination_realm: "hims.net",
        destination_host: Some("scscf1.hims.net"),
        ..RequestBase::default()
    }
}

fn rtr() -> Vec<u8> {
    let r = Rtr {
        base: hss_base("hss1.hims.net;1;1"),
        user_name: ALICE_IMPI,
        public_identities: vec![ALICE],
        deregistration_reason: DeregistrationReason {
            reason_code: dict::ReasonCode::PermanentTermination,
            reason_info: None,
        },
    };
    let mut b = Vec::new();
    r.encode(&mut b).unwrap();
    b
}

fn ppr() -> Vec<u8> {
    let r = Ppr {
        base: hss_base("hss1.hims.net;1;2"),
        user_name: ALICE_IMPI,
        user_data: None,
        auth_data_item: None,
    };
    let mut b = Vec::new();
    r.encode(&mut b).unwrap();
    b
}

/// `msg` with `avp` appended (raw: flags and length as given) and the header's length fixed.
fn append(mut msg: Vec<u8>, code: u32, flag_bits: u8, len: u32, data: &[u8]) -> Vec<u8> {
    msg.extend_from_slice(&code.to_be_bytes());
    msg.push(flag_bits);
    msg.extend_from_slice(&len.to_be_bytes()[1..]);
    msg.extend_from_slice(data);
    while !msg.len().is_multiple_of(4) {
        msg.push(0);
    }
    let n = (msg.len() as u32).to_be_bytes();
    msg[1..4].copy_from_slice(&n[1..]);
    msg
}

fn unknown_command() -> Vec<u8> {
    let hdr = Header::request(399, dict::APP_CX, true, 7, 7);
    let mut b = Vec::new();
    let mut m = MessageBuilder::new(&mut b, &hdr);
    m.utf8(&dict::SESSION_ID, "hss1.hims.net;1;3")
        .utf8(&dict::ORIGIN_HOST, "hss1.hims.net")
        .utf8(&dict::ORIGIN_REALM, "hims.net");
    m.finish().unwrap();
    b
}

// ----------------------------------------------------------------------------------------
// the S-CSCF and its log

fn config(hss: SocketAddr) -> Config {
    let dir = ims_testkit::scratch_dir("scscf-hostile");
    Config {
        sip_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: None,
        name: NAME.into(),
        realm: "hims.net".into(),
        home_domains: vec![],
        database: format!("sqlite://{}", dir.join("scscf.sqlite").display()),
        min_expires: 2,
        max_expires: 3600,
        default_expires: 600,
        reg_await_auth_seconds: 240,
        auth_failures_before_lockout: 5,
        auth_lockout_seconds: 60,
        subscribe_min_expires: 60,
        subscribe_max_expires: 3600,
        log: "info".into(),
        dns: vec![],
        icscf: None,
        diameter: CxClientConfig {
            hss,
            origin_host: "scscf1.hims.net".into(),
            origin_realm: "hims.net".into(),
            destination_realm: "hims.net".into(),
            destination_host: Some("hss1.hims.net".into()),
            watchdog_seconds: TW.as_secs(),
            request_timeout_seconds: 5,
            local_address: None,
        },
    }
}

/// A REGISTER from alice: it must be refused 503 with Retry-After, at once.
async fn register_is_503_at_once(r: &Registrar, ue: &mut Ue, when: &str) {
    let t = Instant::now();
    let resp = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    assert_eq!(resp.status(), Some(503), "{when}: {resp}");
    assert!(reason(&resp).contains("HSS unreachable"), "{when}: {resp}");
    let after: u32 = resp
        .header_str(HeaderName::RetryAfter)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(after > 0, "{when}: Retry-After in {resp}");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{when}: at once, not after {:?}",
        t.elapsed()
    );
}

/// The S-CSCF's log lines (its runtime's threads write here).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// Lines of the client connected to `hss` (its span names the address) containing `needle`.
fn count(lines: &[String], hss: SocketAddr, needle: &str) -> usize {
    let span = format!("diameter_client{{server={hss}}}");
    lines
        .iter()
        .filter(|l| l.contains(&span) && l.contains(needle))
        .count()
}

// ----------------------------------------------------------------------------------------
// the three hostile HSSs

/// Requests the S-CSCF cannot serve: each its Result-Code, the connection stays.
async fn unservable_requests(logs: Logs) {
    let hss = Hostile::bind().await;
    let r = Registrar::start(config(hss.addr())).await.unwrap();
    let (mut c, _) = hss.accept(Duration::from_secs(5)).await;
    c.handshake().await;
    assert!(r.wait_diameter(Duration::from_secs(5)).await);
    let rtr_m = append(rtr(), 65_000, 0x40, 12, b"evil");
    assert_eq!(
        c.ask(&rtr_m).await,
        (304, Some(5001), false, Some(65_000)),
        "RTR with an unknown mandatory AVP"
    );
    let ppr_long = append(ppr(), 65_001, 0, 64, &[0; 4]);
    assert_eq!(
        c.ask(&ppr_long).await,
        (305, Some(5014), false, Some(65_001)),
        "PPR with an AVP past the message"
    );
    assert_eq!(
        c.ask(&unknown_command()).await,
        (399, Some(3001), true, None),
        "an unknown command"
    );
    let mut bits = rtr();
    bits[4] |= 0x01;
    assert_eq!(
        c.ask(&bits).await,
        (304, Some(3008), true, None),
        "reserved header bits"
    );
    // Still the same connection: our DWR is answered, and the S-CSCF did not reconnect.
    let dwr = {
        let hdr = Header::request(280, 0, false, 0x99, 0x99);
        let mut b = Vec::new();
        let mut m = MessageBuilder::new(&mut b, &hdr);
        m.utf8(&dict::ORIGIN_HOST, "hss1.hims.net")
            .utf8(&dict::ORIGIN_REALM, "hims.net");
        m.finish().unwrap();
        b
    };
    assert_eq!(c.ask(&dwr).await.1, Some(2001), "DWA");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), hss.listener.accept())
            .await
            .is_err(),
        "no second connection"
    );
    let lines = logs.lines();
    for needle in [
        "unsupported mandatory AVP: AVP 65000",
        "invalid AVP length: AVP 65001",
        "unexpected command 399",
        "invalid command flags 0xc1",
    ] {
        let n = lines.iter().filter(|l| l.contains(needle)).count();
        assert_eq!(n, 1, "one line with `{needle}` in {lines:#?}");
    }
    drop(r);
}

/// Bad framing: closed, reconnect after 1 s, then 2 s; a REGISTER meanwhile is 503.
async fn bad_framing(logs: Logs) {
    let hss = Hostile::bind().await;
    let addr = hss.addr();
    let r = Registrar::start(config(addr)).await.unwrap();
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>");
    let mut closed = Vec::new();
    let mut connected = Vec::new();
    let garbage: [&[u8]; 2] = [
        // A length of 13: under 20 and not a multiple of 4.
        &[
            1, 0, 0, 13, 0x80, 0, 1, 0x2c, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1,
        ],
        b"GET / HTTP/1.1\r\nHost: hss1.hims.net\r\n\r\n",
    ];
    for bytes in garbage {
        let (mut c, at) = hss.accept(Duration::from_secs(10)).await;
        connected.push(at);
        c.handshake().await;
        assert!(r.wait_diameter(Duration::from_secs(5)).await);
        // A REGISTER whose MAR is waiting when the garbage comes: 503 at once too.
        let req = ue.register(Some(ue.initial_auth()), &[]);
        let registrar = r.clone();
        let caught = tokio::spawn(async move { registrar.handle_register(&req).await });
        match c.next(Duration::from_secs(5), true).await {
            Next::Message(m) if Message::parse(&m).unwrap().command_code() == 303 => {}
            other => panic!("wanted the REGISTER's MAR: {other:?}"),
        }
        let sent = Instant::now();
        c.send(bytes).await;
        let resp = caught.await.unwrap();
        assert_eq!(resp.status(), Some(503), "MAR caught by {bytes:?}: {resp}");
        assert!(resp.header_str(HeaderName::RetryAfter).is_some(), "{resp}");
        assert!(sent.elapsed() < Duration::from_millis(500), "at once");
        match c.next(Duration::from_secs(3), true).await {
            Next::Closed => closed.push(Instant::now()),
            other => panic!("the S-CSCF did not close after {bytes:?}: {other:?}"),
        }
        register_is_503_at_once(&r, &mut ue, "link down after bad framing").await;
    }
    let (mut c, at) = hss.accept(Duration::from_secs(10)).await;
    connected.push(at);
    // Back-off: 1 s after the first close, 2 s after the second (the connection between
    // lived far less than Tw, so it did not reset the back-off).
    let waits: Vec<Duration> = connected[1..]
        .iter()
        .zip(&closed)
        .map(|(c, d)| c.duration_since(*d))
        .collect();
    assert!(
        waits[0] >= Duration::from_millis(800) && waits[0] < Duration::from_millis(1800),
        "first reconnect after {waits:?}"
    );
    assert!(
        waits[1] >= Duration::from_millis(1800) && waits[1] < Duration::from_millis(3000),
        "second reconnect after {waits:?}"
    );
    // A well-behaved HSS on the third connection: open again.
    c.handshake().await;
    assert!(r.wait_diameter(Duration::from_secs(5)).await);
    let lines = logs.lines();
    for needle in [
        "invalid message length 13",
        "unsupported Diameter version 71",
    ] {
        assert_eq!(
            count(&lines, addr, needle),
            1,
            "one line with `{needle}` in {lines:#?}"
        );
    }
}

/// An HSS that stops answering anything: SUSPECT after Tw (REGISTER 503 at once), closed
/// after 2*Tw, reconnected.
async fn silent_hss(logs: Logs) {
    let hss = Hostile::bind().await;
    let addr = hss.addr();
    let r = Registrar::start(config(addr)).await.unwrap();
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>");
    let (mut c, _) = hss.accept(Duration::from_secs(5)).await;
    c.handshake().await;
    assert!(r.wait_diameter(Duration::from_secs(5)).await);
    // The S-CSCF's DWR after Tw of silence; we never answer it.
    let Next::Message(dwr) = c.next(TW * 2, false).await else {
        panic!("no DWR from the S-CSCF");
    };
    assert!(is_dwr(&dwr), "a DWR");
    let dwr_at = Instant::now();
    // Tw later: SUSPECT. A REGISTER then is 503 at once rather than a MAR left to time out.
    tokio::time::sleep_until((dwr_at + TW + Duration::from_millis(500)).into()).await;
    register_is_503_at_once(&r, &mut ue, "HSS SUSPECT").await;
    // 2*Tw after the DWR: closed (what the S-CSCF may have sent meanwhile is read and
    // dropped), then a new connection after the back-off.
    let closed_at = loop {
        match c.next(TW * 2, false).await {
            Next::Message(_) => {}
            Next::Closed => break Instant::now(),
            Next::Silent => panic!("the S-CSCF never closed the silent link"),
        }
    };
    let gone = closed_at.duration_since(dwr_at);
    assert!(
        gone >= TW * 2 - Duration::from_millis(500) && gone < TW * 2 + Duration::from_secs(2),
        "closed {gone:?} after its DWR"
    );
    register_is_503_at_once(&r, &mut ue, "HSS link closed").await;
    let (mut c, _) = hss.accept(Duration::from_secs(5)).await;
    c.handshake().await;
    assert!(r.wait_diameter(Duration::from_secs(5)).await, "open again");
    let lines = logs.lines();
    for needle in ["Diameter peer SUSPECT", "no DWA within 2*Tw"] {
        assert_eq!(
            count(&lines, addr, needle),
            1,
            "one line with `{needle}` in {lines:#?}"
        );
    }
}

#[test]
fn hostile_hss_gets_its_answers_and_the_scscf_recovers() {
    let logs = Logs::default();
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(logs.clone())
            .finish(),
    );
    let d = dispatch.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&d)))
        .build()
        .unwrap();
    let _here = tracing::dispatcher::set_default(&dispatch);
    let t = Instant::now();
    rt.block_on(async {
        let a = tokio::spawn(unservable_requests(logs.clone()));
        let b = tokio::spawn(bad_framing(logs.clone()));
        let c = tokio::spawn(silent_hss(logs.clone()));
        let (a, b, c) = tokio::join!(a, b, c);
        a.expect("unservable requests");
        b.expect("bad framing");
        c.expect("silent HSS");
    });
    let lines = logs.lines();
    assert!(!lines.iter().any(|l| l.contains("panicked")), "{lines:#?}");
    eprintln!("three hostile HSSs in {:?}", t.elapsed());
}

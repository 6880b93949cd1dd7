//! A hostile Diameter corpus at the HSS over real TCP (issue #20): each case opens its own
//! connection, sends its bytes, and gets exactly its expected outcome (an answer with a
//! specific Result-Code and the connection still open, or the connection closed), plus one
//! log line of the HSS naming the problem on that connection (the HSS's log lines name the
//! peer's address: `diameter_peer{from=...}`). Meanwhile a flood of connections sends CERs
//! (half from an allowed Origin-Host, the very one of the legitimate client), and a
//! legitimate Cx client keeps asking MARs: every one is answered 2001, and after it all the
//! HSS still reaches that client with an RTR, counts one peer up, and its memory has not
//! run away.
//!
//! RFC 6733 on the cases: a framing error (version ≠ 1, a length under 20, not a multiple of
//! 4, above our maximum) leaves a stream that cannot be resynchronised: the HSS closes it
//! (no answer: the bytes after the bad header cannot be trusted to be one). A request before
//! the CER is not served: §5.3 says the peers MUST exchange CER/CEA first, and the §5.6
//! state machine has no transition for another message in that state, so the HSS closes the
//! connection without answering. A CER on an open connection is answered (§5.6, R-Open,
//! R-Rcv-CER → R-Snd-CEA) with 5012 and changes nothing. A peer that never answers our DWR is
//! SUSPECT after Tw and closed after another Tw (RFC 3539 §3.4.1).

use crate::admin::{get, post, start_logged};
use crate::cxclient::{CxClient, mar};
use ims_diameter::cx::{AnswerBase, RequestBase, Rta, Rtr, Sar, Uar};
use ims_diameter::header::flags;
use ims_diameter::peer::{Peer, PeerConfig, Role};
use ims_diameter::{AnswerResult, Header, Message, MessageBuilder, dict, frame};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const K: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const OP: &str = "cdc202d5123e20f62b6d676ac72cb318";
const IMPI: &str = "alice.private@hims.net";
const IMPU: &str = "sip:alice@hims.net";
/// The HSS's Tw in this test: 1 s.
const TW: Duration = Duration::from_secs(1);

// ----------------------------------------------------------------------------------------
// the corpus

/// What the HSS must do with a case's bytes.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// One answer to `command` with this Result-Code (the E bit exactly for 3xxx), Failed-AVP
    /// naming `failed` when given; the connection stays open.
    Answer {
        command: u32,
        code: u32,
        failed: Option<u32>,
    },
    /// `n` answers to `command`, all with this Result-Code; the connection stays open.
    Answers { command: u32, n: usize, code: u32 },
    /// Nothing sent back, the connection stays open.
    Ignored,
    /// A CEA with this Result-Code, then the connection closed.
    Refused(u32),
    /// The connection closed without an answer, within this many milliseconds (and before
    /// anything else came: a DWR from the HSS first would mean it had not closed).
    Closed(u64),
    /// A DWR from the HSS (which we do not answer), then the connection closed after 2*Tw.
    DwrThenClosed,
}

struct Case {
    name: &'static str,
    /// The CER (from an allowed Origin-Host) first, its CEA read, before `bytes`.
    cer_first: bool,
    bytes: fn() -> Vec<u8>,
    expect: Expect,
    /// What the one HSS log line about this connection's problem says; `None`: no problem,
    /// no warning on that connection.
    log: Option<&'static str>,
}

fn corpus() -> Vec<Case> {
    use Expect::*;
    const UAR: u32 = dict::command::USER_AUTHORIZATION;
    const MAR: u32 = dict::command::MULTIMEDIA_AUTH;
    const SAR: u32 = dict::command::SERVER_ASSIGNMENT;
    const CER: u32 = dict::command::CAPABILITIES_EXCHANGE;
    let case = |name, cer_first, bytes, expect, log: &'static str| Case {
        name,
        cer_first,
        bytes,
        expect,
        log: (!log.is_empty()).then_some(log),
    };
    vec![
        case(
            "header length 12, under 20",
            true,
            || with_length(uar(), 12),
            Closed(2000),
            "invalid message length 12",
        ),
        case(
            "header length not a multiple of 4",
            true,
            || {
                let n = uar().len() as u32 + 2;
                with_length(uar(), n)
            },
            Closed(2000),
            "invalid message length",
        ),
        case(
            "header length above the maximum",
            true,
            || with_length(uar(), 0xff_fffc),
            Closed(2000),
            "exceeds the limit",
        ),
        case(
            "header length longer than what follows",
            true,
            || {
                let n = uar().len() as u32 + 400;
                with_length(uar(), n)
            },
            DwrThenClosed,
            "no DWA within 2*Tw",
        ),
        case(
            "version 2",
            true,
            || {
                let mut b = uar();
                b[0] = 2;
                b
            },
            Closed(2000),
            "unsupported Diameter version 2",
        ),
        case(
            "HTTP instead of Diameter",
            true,
            || b"GET / HTTP/1.1\r\nHost: hss\r\n\r\n".to_vec(),
            Closed(2000),
            "unsupported Diameter version 71",
        ),
        case(
            "AVP length past the end of the message",
            true,
            || append(uar(), &avp_header(65_002, 0, 64, &[0; 4])),
            Answer {
                command: UAR,
                code: 5014,
                failed: Some(65_002),
            },
            "invalid AVP length",
        ),
        case(
            "AVP length under 8",
            true,
            || append(uar(), &avp_header(65_003, 0, 4, &[0; 4])),
            Answer {
                command: UAR,
                code: 5014,
                failed: Some(65_003),
            },
            "invalid AVP length",
        ),
        case(
            "unknown mandatory AVP in a UAR",
            true,
            || append(uar(), &avp(65_000, 0x40, b"evil")),
            Answer {
                command: UAR,
                code: 5001,
                failed: Some(65_000),
            },
            "unsupported mandatory AVP",
        ),
        case(
            "unknown mandatory AVP in a MAR",
            true,
            || {
                append(
                    mar(IMPI, IMPU, "icscf1.hims.net"),
                    &avp(65_000, 0x40, b"evil"),
                )
            },
            Answer {
                command: MAR,
                code: 5001,
                failed: Some(65_000),
            },
            "unsupported mandatory AVP",
        ),
        case(
            "unknown mandatory AVP in a SAR",
            true,
            || append(sar(), &avp(65_000, 0x40, b"evil")),
            Answer {
                command: SAR,
                code: 5001,
                failed: Some(65_000),
            },
            "unsupported mandatory AVP",
        ),
        case(
            "unknown AVP without the M bit is ignored",
            true,
            || append(mar(IMPI, IMPU, "icscf1.hims.net"), &avp(65_000, 0, b"fine")),
            Answer {
                command: MAR,
                code: 2001,
                failed: None,
            },
            "",
        ),
        case(
            "reserved AVP flag bits",
            true,
            || append(uar(), &avp(65_004, 0x01, b"bits")),
            Answer {
                command: UAR,
                code: 3009,
                failed: Some(65_004),
            },
            "invalid AVP bits",
        ),
        case(
            "reserved header bits",
            true,
            || {
                let mut b = uar();
                b[4] |= 0x01;
                b
            },
            Answer {
                command: UAR,
                code: 3008,
                failed: None,
            },
            "invalid command flags 0xc1",
        ),
        case(
            "E bit on a request",
            true,
            || {
                let mut b = uar();
                b[4] |= flags::E;
                b
            },
            Answer {
                command: UAR,
                code: 3008,
                failed: None,
            },
            "invalid command flags 0xe0",
        ),
        case(
            "a request of an application we do not serve",
            true,
            || {
                let mut b = uar();
                b[8..12].copy_from_slice(&16_777_217u32.to_be_bytes());
                b
            },
            Answer {
                command: UAR,
                code: 3007,
                failed: None,
            },
            "unsupported application 16777217",
        ),
        case(
            "an answer to no request",
            true,
            stray_answer,
            Ignored,
            "matches no pending request",
        ),
        case(
            "a request before the CER",
            false,
            uar,
            Closed(2000),
            "application request before the capabilities exchange",
        ),
        case(
            "a second CER on an open connection",
            true,
            || cer("icscf1.hims.net"),
            Answer {
                command: CER,
                code: 5012,
                failed: None,
            },
            "CER on a connection past its capabilities exchange",
        ),
        case(
            "200 CERs on one open connection",
            true,
            || (0..200).flat_map(|_| cer("icscf1.hims.net")).collect(),
            Answers {
                command: CER,
                n: 200,
                code: 5012,
            },
            "CER on a connection past its capabilities exchange",
        ),
        case(
            "CER from an Origin-Host not allowed",
            false,
            || cer("evil.example.net"),
            Refused(3010),
            "not in the allow-list",
        ),
        case(
            "CER without a common application",
            false,
            cer_sh_only,
            Refused(5010),
            "without a common application",
        ),
        case(
            "no CER at all",
            false,
            Vec::new,
            Closed(2500),
            "no CER within Tw",
        ),
        case(
            "a peer that never answers our DWR",
            true,
            Vec::new,
            DwrThenClosed,
            "no DWA within 2*Tw",
        ),
    ]
}

// ----------------------------------------------------------------------------------------
// byte builders

/// A well-formed UAR from icscf1 for alice.
fn uar() -> Vec<u8> {
    let r = Uar {
        base: base("icscf1.hims.net;hostile;1"),
        user_name: IMPI,
        public_identity: IMPU,
        visited_network_identifier: b"hims.net",
        authorization_type: None,
        uar_flags: None,
    };
    let mut b = Vec::new();
    r.encode(&mut b).unwrap();
    b
}

/// A well-formed SAR (REGISTRATION) for alice from scscf1.
fn sar() -> Vec<u8> {
    let r = Sar {
        base: RequestBase {
            origin_host: "scscf1.hims.net",
            ..base("scscf1.hims.net;hostile;2")
        },
        user_name: Some(IMPI),
        public_identities: vec![IMPU],
        server_name: "sip:scscf1.hims.net:6060",
        assignment_type: dict::ServerAssignmentType::Registration,
        user_data_already_available: dict::UserDataAlreadyAvailable::UserDataNotAvailable,
    };
    let mut b = Vec::new();
    r.encode(&mut b).unwrap();
    b
}

fn base(session_id: &'static str) -> RequestBase<'static> {
    RequestBase {
        session_id,
        origin_host: "icscf1.hims.net",
        origin_realm: "hims.net",
        destination_realm: "hims.net",
        ..RequestBase::default()
    }
}

/// The CER our own peer sends as `host`.
fn cer(host: &str) -> Vec<u8> {
    cer_with(PeerConfig::cx(host, "hims.net"))
}

/// A CER from an allowed host advertising Sh (16777217) only.
fn cer_sh_only() -> Vec<u8> {
    let mut cfg = PeerConfig::cx("icscf1.hims.net", "hims.net");
    cfg.vendor_auth_apps = vec![(dict::VENDOR_3GPP, 16_777_217)];
    cer_with(cfg)
}

fn cer_with(cfg: PeerConfig) -> Vec<u8> {
    let mut p = Peer::new(cfg, Role::Initiator, 5);
    p.handle_connecting(Instant::now());
    p.handle_connected(Instant::now());
    p.poll_transmit().expect("a CER")
}

/// A UAA nobody asked for (a hop-by-hop id the HSS never used).
fn stray_answer() -> Vec<u8> {
    let hdr = Header {
        length: 0,
        flags: flags::P,
        command_code: dict::command::USER_AUTHORIZATION,
        application_id: dict::APP_CX,
        hop_by_hop: 0xdead_beef,
        end_to_end: 1,
    };
    let mut b = Vec::new();
    let mut m = MessageBuilder::new(&mut b, &hdr);
    m.utf8(&dict::SESSION_ID, "x;1;1")
        .u32(&dict::RESULT_CODE, 2001)
        .utf8(&dict::ORIGIN_HOST, "icscf1.hims.net")
        .utf8(&dict::ORIGIN_REALM, "hims.net");
    m.finish().unwrap();
    b
}

/// `msg` with its header's length field set to `len` (the bytes unchanged).
fn with_length(mut msg: Vec<u8>, len: u32) -> Vec<u8> {
    msg[1..4].copy_from_slice(&len.to_be_bytes()[1..]);
    msg
}

/// `msg` with `avp` (raw bytes) appended and the header's length grown to match.
fn append(mut msg: Vec<u8>, avp: &[u8]) -> Vec<u8> {
    msg.extend_from_slice(avp);
    let n = msg.len() as u32;
    with_length(msg, n)
}

/// An AVP without vendor: these flags as they are (reserved bits too), the right length.
fn avp(code: u32, flag_bits: u8, data: &[u8]) -> Vec<u8> {
    avp_header(code, flag_bits, 8 + data.len() as u32, data)
}

/// An AVP whose length field says `len`, whatever follows; padded to 4.
fn avp_header(code: u32, flag_bits: u8, len: u32, data: &[u8]) -> Vec<u8> {
    let mut a = code.to_be_bytes().to_vec();
    a.push(flag_bits);
    a.extend_from_slice(&len.to_be_bytes()[1..]);
    a.extend_from_slice(data);
    while !a.len().is_multiple_of(4) {
        a.push(0);
    }
    a
}

// ----------------------------------------------------------------------------------------
// a raw connection

/// What came next on a raw connection.
#[derive(Debug)]
enum Next {
    Message(Vec<u8>),
    Closed,
    Silent,
}

struct Raw {
    s: TcpStream,
    rx: Vec<u8>,
    port: u16,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect to the HSS");
        let port = s.local_addr().unwrap().port();
        Raw {
            s,
            rx: Vec::new(),
            port,
        }
    }

    /// Writes `b`; the HSS may already have closed, which the reads will show.
    fn send(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b);
    }

    /// The next whole message, the close, or silence for `limit`. With `answer_dwr`, DWRs
    /// from the HSS are answered and skipped.
    fn next(&mut self, limit: Duration, answer_dwr: bool) -> Next {
        let end = Instant::now() + limit;
        let mut buf = [0u8; 8192];
        loop {
            if let Ok(Some(len)) = frame(&self.rx, 1 << 24) {
                let m: Vec<u8> = self.rx.drain(..len).collect();
                let dwr = m[4] & flags::R != 0
                    && u32::from_be_bytes([0, m[5], m[6], m[7]]) == dict::command::DEVICE_WATCHDOG;
                if dwr && answer_dwr {
                    self.send(&dwa(&m));
                    continue;
                }
                return Next::Message(m);
            }
            let now = Instant::now();
            if now >= end {
                return Next::Silent;
            }
            self.s.set_read_timeout(Some(end - now)).unwrap();
            match self.s.read(&mut buf) {
                Ok(0) => return Next::Closed,
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Next::Closed,
            }
        }
    }

    /// The HSS still talks on this connection: our DWR gets its DWA.
    fn still_open(&mut self) -> bool {
        let hdr = Header::request(dict::command::DEVICE_WATCHDOG, 0, false, 0x77, 0x77);
        let mut b = Vec::new();
        let mut m = MessageBuilder::new(&mut b, &hdr);
        m.utf8(&dict::ORIGIN_HOST, "icscf1.hims.net")
            .utf8(&dict::ORIGIN_REALM, "hims.net");
        m.finish().unwrap();
        self.send(&b);
        match self.next(Duration::from_secs(3), true) {
            Next::Message(a) => {
                let m = Message::parse(&a).unwrap();
                m.command_code() == dict::command::DEVICE_WATCHDOG
                    && !m.is_request()
                    && result_code(&m) == Some(2001)
            }
            _ => false,
        }
    }
}

fn dwa(dwr: &[u8]) -> Vec<u8> {
    let req = Message::parse(dwr).unwrap();
    let mut b = Vec::new();
    let mut m = MessageBuilder::new(&mut b, &req.header().answer());
    m.u32(&dict::RESULT_CODE, 2001)
        .utf8(&dict::ORIGIN_HOST, "icscf1.hims.net")
        .utf8(&dict::ORIGIN_REALM, "hims.net");
    m.finish().unwrap();
    b
}

fn result_code(m: &Message<'_>) -> Option<u32> {
    m.find(&dict::RESULT_CODE).ok()??.as_u32().ok()
}

fn failed_avp_code(m: &Message<'_>) -> Option<u32> {
    let f = m.find(&dict::FAILED_AVP).ok()??;
    Some(f.grouped().next()?.ok()?.code())
}

/// Runs one case on its own connection; `Err` says how the HSS's behaviour differed.
fn run(addr: SocketAddr, case: &Case) -> Result<u16, String> {
    let mut c = Raw::connect(addr);
    if case.cer_first {
        c.send(&cer("icscf1.hims.net"));
        match c.next(Duration::from_secs(3), true) {
            Next::Message(m) if result_code(&Message::parse(&m).unwrap()) == Some(2001) => {}
            other => return Err(format!("no CEA 2001 to the CER: {other:?}")),
        }
    }
    let t = Instant::now();
    c.send(&(case.bytes)());
    let answer = |c: &mut Raw, command: u32, code: u32, failed: Option<u32>| {
        let Next::Message(a) = c.next(Duration::from_secs(3), true) else {
            return Err("no answer".to_owned());
        };
        let m = Message::parse(&a).map_err(|e| format!("unparsable answer: {e}"))?;
        let got = (
            m.command_code(),
            m.is_request(),
            result_code(&m),
            m.header().is_error(),
        );
        let want = (command, false, Some(code), (3000..4000).contains(&code));
        if got != want {
            return Err(format!(
                "answer (command, request, Result-Code, E) {got:?}, wanted {want:?}"
            ));
        }
        if failed.is_some() && failed_avp_code(&m) != failed {
            return Err(format!(
                "Failed-AVP {:?}, wanted {failed:?}",
                failed_avp_code(&m)
            ));
        }
        Ok(())
    };
    match case.expect {
        Expect::Answer {
            command,
            code,
            failed,
        } => {
            answer(&mut c, command, code, failed)?;
            if !c.still_open() {
                return Err("the connection did not stay open".into());
            }
        }
        Expect::Answers { command, n, code } => {
            for i in 0..n {
                answer(&mut c, command, code, None).map_err(|e| format!("answer {i}: {e}"))?;
            }
            if !c.still_open() {
                return Err("the connection did not stay open".into());
            }
        }
        Expect::Ignored => match c.next(Duration::from_millis(300), true) {
            Next::Silent if c.still_open() => {}
            other => return Err(format!("wanted silence on an open connection: {other:?}")),
        },
        Expect::Refused(code) => {
            answer(&mut c, dict::command::CAPABILITIES_EXCHANGE, code, None)?;
            match c.next(Duration::from_secs(2), false) {
                Next::Closed => {}
                other => return Err(format!("not closed after the CEA: {other:?}")),
            }
        }
        Expect::Closed(ms) => match c.next(Duration::from_millis(ms), false) {
            Next::Closed => {}
            other => return Err(format!("not closed within {ms} ms: {other:?}")),
        },
        Expect::DwrThenClosed => {
            match c.next(TW * 3, false) {
                Next::Message(m) if m[4] & flags::R != 0 => {
                    let code = u32::from_be_bytes([0, m[5], m[6], m[7]]);
                    if code != dict::command::DEVICE_WATCHDOG {
                        return Err(format!("wanted a DWR, got command {code}"));
                    }
                }
                other => return Err(format!("wanted a DWR: {other:?}")),
            }
            let dwr_at = t.elapsed();
            match c.next(TW * 4, false) {
                Next::Closed => {}
                other => return Err(format!("not closed after the unanswered DWR: {other:?}")),
            }
            // SUSPECT after Tw, closed after 2*Tw (a little early: timers are not exact).
            let after = t.elapsed() - dwr_at;
            if after < TW * 2 - Duration::from_millis(300) {
                return Err(format!("closed {after:?} after the DWR, before 2*Tw"));
            }
        }
    }
    Ok(c.port)
}

// ----------------------------------------------------------------------------------------
// the log, the legitimate client, the flood

/// The HSS's log lines (its runtime's threads write here).
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

/// VmRSS of this process (the HSS runs in it), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// The legitimate S-CSCF: MARs one after the other until `stop`, answering RTRs with 2001.
/// Returns the Result-Code of every MAA and how many RTRs it answered.
fn legitimate(mut c: CxClient, stop: Arc<AtomicBool>) -> (Vec<u32>, usize) {
    let mut codes = Vec::new();
    let mut rtrs = 0;
    while !stop.load(Ordering::Relaxed) {
        let a = c.ask(mar(IMPI, IMPU, "scscf1.hims.net"));
        codes.push(result_code(&Message::parse(&a).unwrap()).unwrap_or(0));
        c.pump_until(Duration::from_millis(20), |_| false);
        for r in std::mem::take(&mut c.requests) {
            let m = Message::parse(&r).unwrap();
            let rtr = Rtr::decode(&m).unwrap();
            let mut rta = Vec::new();
            Rta {
                base: AnswerBase {
                    hop_by_hop: m.header().hop_by_hop,
                    end_to_end: m.header().end_to_end,
                    session_id: rtr.base.session_id,
                    result: AnswerResult::SUCCESS,
                    origin_host: "scscf1.hims.net",
                    origin_realm: "hims.net",
                    error_message: None,
                    failed_avp: None,
                    supported_features: vec![],
                    extra: vec![],
                },
            }
            .encode(&mut rta)
            .unwrap();
            c.peer.send_answer(rta);
            rtrs += 1;
        }
    }
    (codes, rtrs)
}

/// `threads` × `per_thread` connections, each sending a CER (every other one from
/// scscf1.hims.net, the legitimate client's own Origin-Host, the others from a host not
/// allowed), all held open until the thread's last one got its CEA, then dropped without
/// DPR. Returns how many got 2001 and 3010.
fn flood(addr: SocketAddr, threads: usize, per_thread: usize) -> (usize, usize) {
    let results: Vec<(usize, usize)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut open = Vec::new();
                    let (mut ok, mut refused) = (0, 0);
                    for i in 0..per_thread {
                        let host = if (t + i) % 2 == 0 {
                            "scscf1.hims.net"
                        } else {
                            "flood.evil.net"
                        };
                        let mut c = Raw::connect(addr);
                        c.send(&cer(host));
                        if let Next::Message(m) = c.next(Duration::from_secs(5), true) {
                            match result_code(&Message::parse(&m).unwrap()) {
                                Some(2001) => ok += 1,
                                Some(3010) => refused += 1,
                                other => panic!("CEA {other:?} to a flood CER from {host}"),
                            }
                        }
                        open.push(c);
                    }
                    (ok, refused)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    results.iter().fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
}

#[test]
fn hostile_diameter_corpus_gets_its_answers_and_disturbs_nobody() {
    let logs = Logs::default();
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(logs.clone())
            .finish(),
    );
    let dir = ims_testkit::scratch_dir("hss-hostile");
    let hss = start_logged(
        format!("sqlite://{}", dir.join("hss.sqlite").display()),
        ims_hss::DiameterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            origin_host: Some("hss1.hims.net".into()),
            allowed_peers: vec!["scscf1.hims.net".into(), "icscf1.hims.net".into()],
            watchdog_seconds: TW.as_secs(),
            ..Default::default()
        },
        Some(dispatch),
    );
    let b = hss.base.clone();
    let (st, body) = post(
        &format!("{b}/v1/subscribers"),
        json!({"impi": IMPI, "impus": [IMPU], "aka": {"k": K, "op": OP, "amf": "8000"}}),
    );
    assert_eq!(st, 201, "{body}");

    // The legitimate S-CSCF registers alice (so that the HSS will send it an RTR), then asks
    // MARs all along.
    let mut legit = CxClient::connect(hss.diameter, "scscf1.hims.net").expect("allowed peer");
    let saa = legit.ask(sar());
    assert_eq!(
        result_code(&Message::parse(&saa).unwrap()),
        Some(2001),
        "SAR"
    );
    let rss_before = rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || legitimate(legit, stop))
    };

    // The corpus, every case on its own connection at once, and the flood beside it.
    let t = Instant::now();
    let cases = corpus();
    let addr = hss.diameter;
    let (outcomes, (ok, refused)) = std::thread::scope(|s| {
        let runs: Vec<_> = cases
            .iter()
            .map(|c| s.spawn(move || run(addr, c)))
            .collect();
        let flooded = s.spawn(move || flood(addr, 8, 25));
        let outcomes: Vec<Result<u16, String>> =
            runs.into_iter().map(|h| h.join().unwrap()).collect();
        (outcomes, flooded.join().unwrap())
    });
    let corpus_time = t.elapsed();
    let failures: Vec<String> = cases
        .iter()
        .zip(&outcomes)
        .filter_map(|(c, o)| o.as_ref().err().map(|e| format!("{}: {e}", c.name)))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!((ok, refused), (100, 100), "the flood's CEAs");

    // One log line naming each problem, on that case's connection.
    let lines = logs.lines();
    for (c, port) in cases.iter().zip(&outcomes) {
        let port = port.as_ref().unwrap();
        let from = format!("from=127.0.0.1:{port}}}");
        let (needle, want) = match (c.log, c.expect) {
            (None, _) => (" WARN ", 0),
            (Some(l), Expect::Answers { n, .. }) => (l, n),
            (Some(l), _) => (l, 1),
        };
        let n = lines
            .iter()
            .filter(|l| l.contains(&from) && l.contains(needle))
            .count();
        assert_eq!(
            n,
            want,
            "{}: lines with `{needle}` on {from}:\n{}",
            c.name,
            lines
                .iter()
                .filter(|l| l.contains(&from))
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("panicked") || l.contains("ERROR")),
        "{lines:#?}"
    );

    // The flood is gone: one peer up again (the legitimate client), and it still gets the
    // RTR meant for the serving S-CSCF.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !get(&format!("{b}/metrics"))
        .1
        .contains("ims_hss_diameter_peers_up 1\n")
    {
        assert!(Instant::now() < deadline, "the flood's peers never went");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (st, body) = post(&format!("{b}/v1/subscribers/{IMPI}/deregister"), json!({}));
    assert_eq!(
        (st, body["result_code"].as_u64()),
        (200, Some(2001)),
        "RTR to the legitimate S-CSCF after the flood: {body}"
    );
    stop.store(true, Ordering::Relaxed);
    let (codes, rtrs) = client.join().unwrap();
    assert_eq!(rtrs, 1, "the legitimate client answered the RTR");
    assert!(
        codes.len() >= 10,
        "the legitimate client kept asking: {} MARs in {corpus_time:?}",
        codes.len()
    );
    assert!(codes.iter().all(|c| *c == 2001), "{codes:?}");
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    eprintln!(
        "corpus of {} cases and a flood of 200 CER connections in {corpus_time:?}; {} MARs \
         answered 2001 meanwhile; RSS +{grown} KiB",
        cases.len(),
        codes.len()
    );
}

//! Integration tests of `ims-aka` against an outside judge: SIPp (Debian `sip-tester`) plays a
//! UE that registers with Digest-AKAv1-MD5, computing RES from K/OP itself.
//!
//! The test is the S-CSCF: it opens a UDP socket on 127.0.0.1, answers SIPp's first REGISTER
//! with a 401 whose nonce is base64(RAND || AUTN) built by this crate, checks SIPp's second
//! REGISTER with this crate's verifier (XRES as the password), and answers 200 OK. SIPp exiting
//! 0 proves it accepted our AUTN (it checks MAC-A) and got its 200; our verifier accepting its
//! response proves RES == XRES and the digest hashing agree. A second run sends an AUTN with a
//! wrong MAC and checks that SIPp refuses it.
//!
//! SIPp 3.6.1 never produces AUTS (its SQN check is disabled in the source), so the resync path
//! is covered by the crate's unit tests only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ims_aka::digest_aka::{self, AkaNonce};
use ims_aka::{AkaError, Amf, AuthVector, DigestParams, Key, Milenage, Op, Qop, Rand, Res, Sqn};

// TS 35.208 test set 3 K and OP, with set 1's AMF. SIPp 3.6.1 turns 0x-hex keys into raw bytes
// and then parses them as message text, so a key byte '[' (0x5b, as in set 1's K), ']' or '\\'
// is taken for keyword syntax and a 0x00 ends the C string: `sipp_safe` checks these keys avoid
// all such bytes.
const K: &str = "fec86ba6eb707ed08905757b1bb44b8f";
const OP: &str = "dbc59adcb6f9a0ef735477b7fadf8374";
const AMF: &str = "b9b9";
const IMPI: &str = "001010000000001@ims.mnc001.mcc001.3gppnetwork.org";
const IMPU: &str = "sip:001010000000001@ims.mnc001.mcc001.3gppnetwork.org";
const REALM: &str = "ims.mnc001.mcc001.3gppnetwork.org";

/// Every wait in this file is bounded by this.
const DEADLINE: Duration = Duration::from_secs(20);

/// Kills SIPp if the test fails before it exits.
struct Sipp {
    child: Child,
    dir: PathBuf,
}

impl Sipp {
    fn start(sipp: &Path, dir: &Path, server: SocketAddr, auth_keyword: &str) -> Sipp {
        let template = include_str!("sipp_aka_register.xml");
        let scenario = template
            .replace("@IMPI@", IMPI)
            .replace("@IMPU@", IMPU)
            .replace("@REALM@", REALM)
            .replace("@AUTH@", auth_keyword);
        for ph in ["@IMPI@", "@IMPU@", "@REALM@", "@AUTH@"] {
            assert!(!scenario.contains(ph), "{ph} substituted");
        }
        let sf = dir.join("uac_aka.xml");
        std::fs::write(&sf, scenario).unwrap();
        let local_port = free_udp_port();
        let media_port = free_udp_port();
        let child = Command::new(sipp)
            .current_dir(dir)
            .arg(server.to_string())
            .args(["-sf", sf.to_str().unwrap()])
            .args(["-m", "1", "-i", "127.0.0.1"])
            .args(["-p", &local_port.to_string()])
            .args(["-mp", &media_port.to_string()])
            .args(["-nostdin", "-timeout", "15s", "-timeout_error"])
            .args(["-trace_err", "-trace_msg"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                std::fs::File::create(dir.join("stdout")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("stderr")).unwrap(),
            ))
            .spawn()
            .expect("spawn sipp");
        Sipp {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// SIPp's logs, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "xml") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: String = text
                    .chars()
                    .rev()
                    .take(3000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                out.push_str(&format!("--- {} ---\n{tail}\n", p.display()));
            }
        }
        out
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for SIPp to exit, at most [`DEADLINE`].
    fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.exited() {
                return st;
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("sipp did not exit in time\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A SIP request, parsed just enough for this test.
#[derive(Debug)]
struct Request {
    method: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn parse(bytes: &[u8]) -> Request {
        let text = std::str::from_utf8(bytes).expect("SIP text is UTF-8");
        let head = text.split("\r\n\r\n").next().unwrap();
        let mut lines = head.split("\r\n");
        let start = lines.next().unwrap();
        let method = start.split(' ').next().unwrap().to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // Header folding.
                let last = headers.last_mut().expect("continuation after a header");
                last.1.push(' ');
                last.1.push_str(line.trim());
                continue;
            }
            let (name, value) = line.split_once(':').expect("header line");
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Request { method, headers }
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn one(&self, name: &str) -> &str {
        self.all(name)
            .first()
            .copied()
            .unwrap_or_else(|| panic!("missing {name} in {self:?}"))
    }

    fn cseq(&self) -> u32 {
        self.one("CSeq").split(' ').next().unwrap().parse().unwrap()
    }

    /// A response to this request, with the given status line and extra headers.
    fn response(&self, status: &str, extra: &[String]) -> Vec<u8> {
        let mut out = format!("SIP/2.0 {status}\r\n");
        for via in self.all("Via") {
            out.push_str(&format!("Via: {via}\r\n"));
        }
        out.push_str(&format!("From: {}\r\n", self.one("From")));
        let to = self.one("To");
        if to.contains(";tag=") {
            out.push_str(&format!("To: {to}\r\n"));
        } else {
            out.push_str(&format!("To: {to};tag=scscf1\r\n"));
        }
        out.push_str(&format!("Call-ID: {}\r\n", self.one("Call-ID")));
        out.push_str(&format!("CSeq: {}\r\n", self.one("CSeq")));
        for h in extra {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        out.into_bytes()
    }
}

/// The parameters of `Digest k=v, k="v", ...` (keys lowercased, quotes removed).
fn digest_params(value: &str) -> HashMap<String, String> {
    let rest = value
        .strip_prefix("Digest")
        .expect("Digest scheme")
        .trim_start();
    let mut out = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                val.push(c);
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                val.push(*c);
                chars.next();
            }
        }
        out.insert(name.trim().to_ascii_lowercase(), val.trim().to_string());
    }
    out
}

/// Receives the next SIP request from SIPp, failing if none comes before the deadline or SIPp
/// exits first.
fn recv_request(sock: &UdpSocket, sipp: &mut Sipp) -> (Request, SocketAddr) {
    let start = Instant::now();
    let mut buf = vec![0u8; 65535];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => return (Request::parse(&buf[..n]), from),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv: {e}"),
        }
        if let Some(st) = sipp.exited() {
            panic!("sipp exited early with {st}\n{}", sipp.logs());
        }
        if start.elapsed() > DEADLINE {
            panic!("no request from sipp in time\n{}", sipp.logs());
        }
    }
}

/// True when SIPp can take these bytes through its 0x-hex keyword parameters intact.
fn sipp_safe(bytes: &[u8]) -> bool {
    !bytes
        .iter()
        .any(|b| matches!(b, 0x00 | b'\t' | b'\n' | b'\r' | b' ' | b'[' | b']' | b'\\'))
}

fn auth_keyword() -> String {
    for key in [K, OP, AMF] {
        assert!(
            sipp_safe(&hex::decode(key).unwrap()),
            "{key} has a byte SIPp would misparse"
        );
    }
    // 0x prefixes are required: without them SIPp takes the raw characters (peers.md).
    format!("[authentication username={IMPI} aka_K=0x{K} aka_OP=0x{OP} aka_AMF=0x{AMF}]")
}

fn www_authenticate(nonce: &str) -> String {
    format!(
        "WWW-Authenticate: Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=AKAv1-MD5, qop=\"auth\""
    )
}

fn setup() -> Option<(PathBuf, Milenage, UdpSocket)> {
    let sipp = ims_testkit::require_tool("sipp_aka_register", "sipp")?;
    let m = Milenage::with_op(&Key::from_hex(K).unwrap(), &Op::from_hex(OP).unwrap());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    Some((sipp, m, sock))
}

#[test]
fn sipp_aka_register() {
    let Some((sipp_bin, m, sock)) = setup() else {
        return;
    };
    // RAND of TS 35.208 set 3. SIPp treats RES as a C string, so a RES with a 0x00 byte would
    // make its response wrong: this RAND was chosen because its RES has none.
    let rand = Rand::from_hex("9f7c8d021accf4db213ccff0c7f71a6a").unwrap();
    let av = AuthVector::generate(
        &m,
        rand,
        Sqn::new(0x20 * 5).unwrap(),
        Amf::from_hex(AMF).unwrap(),
    );
    assert!(
        !av.xres.expose().contains(&0),
        "chosen RAND must give a RES without 0x00 (SIPp's C-string RES)"
    );
    let nonce = AkaNonce::new(av.rand, av.autn).encode();

    let dir = ims_testkit::scratch_dir("aka-sipp");
    let mut sipp = Sipp::start(&sipp_bin, &dir, sock.local_addr().unwrap(), &auth_keyword());

    // First REGISTER -> 401 with our challenge (answer retransmissions the same way).
    let (req, from) = recv_request(&sock, &mut sipp);
    assert_eq!(req.method, "REGISTER");
    assert_eq!(req.cseq(), 1);
    let challenge = req.response("401 Unauthorized", &[www_authenticate(&nonce)]);
    sock.send_to(&challenge, from).unwrap();

    let auth_req = loop {
        let (req, from) = recv_request(&sock, &mut sipp);
        assert_eq!(req.method, "REGISTER");
        if req.cseq() == 1 {
            sock.send_to(&challenge, from).unwrap();
            continue;
        }
        break (req, from);
    };
    let (req, from) = auth_req;
    assert_eq!(req.cseq(), 2);
    let p = digest_params(req.one("Authorization"));
    assert_eq!(p["username"], IMPI);
    assert_eq!(p["realm"], REALM);
    assert_eq!(p["nonce"], nonce, "SIPp echoes our nonce");
    assert!(p["algorithm"].eq_ignore_ascii_case("AKAv1-MD5"));
    assert!(!p.contains_key("auts"), "no resync expected");
    let qop = Qop::parse(&p["qop"]).unwrap();
    assert_eq!(qop, Qop::Auth);

    let params = DigestParams {
        username: &p["username"],
        realm: &p["realm"],
        nonce: &p["nonce"],
        uri: &p["uri"],
        qop: Some(qop),
        nc: p.get("nc").map(String::as_str),
        cnonce: p.get("cnonce").map(String::as_str),
        method: &req.method,
        body: b"",
    };
    let response = &p["response"];

    // The S-CSCF check: XRES is the password. SIPp's response must pass.
    params
        .verify_password(response, digest_aka::password(&av.xres))
        .unwrap_or_else(|e| panic!("SIPp's response rejected: {e}\n{}", sipp.logs()));

    // And must not pass with any other password: a wrong XRES, or the resync (empty) one.
    let mut wrong = av.xres.expose().to_vec();
    wrong[0] ^= 1;
    let wrong = Res::from_slice(&wrong).unwrap();
    assert_eq!(
        params.verify_password(response, digest_aka::password(&wrong)),
        Err(AkaError::ResponseMismatch)
    );
    assert_eq!(
        params.verify_password(response, digest_aka::RESYNC_PASSWORD),
        Err(AkaError::ResponseMismatch)
    );
    // A response a UE would compute from a wrong RES is rejected against the real XRES.
    let forged = params
        .response_with_password(digest_aka::password(&wrong))
        .unwrap();
    assert_ne!(&forged, response);
    assert_eq!(
        params.verify_password(&forged, digest_aka::password(&av.xres)),
        Err(AkaError::ResponseMismatch)
    );

    // 200 OK with rspauth computed from XRES.
    let rspauth = params
        .rspauth(&digest_aka::ha1(IMPI, REALM, &av.xres), b"")
        .unwrap();
    let ok = req.response(
        "200 OK",
        &[
            format!(
                "Authentication-Info: rspauth=\"{rspauth}\", qop=auth, cnonce=\"{}\", nc={}",
                p["cnonce"], p["nc"]
            ),
            format!("Contact: {};expires=600", req.one("Contact")),
        ],
    );
    sock.send_to(&ok, from).unwrap();

    // Answer any retransmission of the second REGISTER until SIPp exits.
    let start = Instant::now();
    let mut buf = vec![0u8; 65535];
    let status = loop {
        if let Some(st) = sipp.exited() {
            break st;
        }
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let r = Request::parse(&buf[..n]);
            if r.cseq() == 2 {
                sock.send_to(&ok, from).unwrap();
            }
        }
        if start.elapsed() > DEADLINE {
            break sipp.wait();
        }
    };
    assert!(
        status.success(),
        "sipp must exit 0 after its 200 OK, got {status}\n{}",
        sipp.logs()
    );
    // Logs are kept only when the test fails.
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIPp verifies AUTN's MAC-A: a challenge built with another subscriber's K must be refused
/// (no second REGISTER), so SIPp is a real judge of our AUTN.
#[test]
fn sipp_refuses_autn_with_wrong_mac() {
    let Some((sipp_bin, _m, sock)) = setup() else {
        return;
    };
    // The network side uses another subscriber's K (set 2's).
    let other = Milenage::with_op(
        &Key::from_hex("0396eb317b6d1c36f19c1c84cd6ffd16").unwrap(),
        &Op::from_hex(OP).unwrap(),
    );
    let rand = Rand::from_hex("23553cbe9637a89d218ae64dae47bf35").unwrap();
    let av = AuthVector::generate(
        &other,
        rand,
        Sqn::new(0xa0).unwrap(),
        Amf::from_hex(AMF).unwrap(),
    );
    let nonce = AkaNonce::new(av.rand, av.autn).encode();

    let dir = ims_testkit::scratch_dir("aka-sipp-badmac");
    let mut sipp = Sipp::start(&sipp_bin, &dir, sock.local_addr().unwrap(), &auth_keyword());
    let (req, from) = recv_request(&sock, &mut sipp);
    assert_eq!(req.cseq(), 1);
    let challenge = req.response("401 Unauthorized", &[www_authenticate(&nonce)]);
    sock.send_to(&challenge, from).unwrap();

    // SIPp must not send an authenticated REGISTER; it fails the call and exits non-zero.
    let start = Instant::now();
    let mut buf = vec![0u8; 65535];
    let status = loop {
        if let Some(st) = sipp.exited() {
            break st;
        }
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let r = Request::parse(&buf[..n]);
            assert_eq!(r.cseq(), 1, "SIPp answered a challenge with a bad MAC");
            sock.send_to(&challenge, from).unwrap();
        }
        if start.elapsed() > DEADLINE {
            break sipp.wait();
        }
    };
    assert!(
        !status.success(),
        "sipp must fail the call\n{}",
        sipp.logs()
    );
    let logs = sipp.logs();
    assert!(
        logs.contains("MAC"),
        "SIPp's failure should be the MAC check\n{logs}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! SIPp as a UE: fills the registration scenarios of `bin/tests/sipp/` and runs SIPp 3.6.1
//! (Debian `sip-tester`) against a P-CSCF, returning its exit status and message trace.
//!
//! Scenarios ([`Scenario`]), all templates with `@NAME@` placeholders that [`Ue`] fills:
//! - `reg_aka.xml`: REGISTER → 401 → REGISTER with Digest-AKAv1-MD5 → 200 → pause →
//!   REGISTER Expires: 0 → 200, or 401 → authenticated REGISTER Expires: 0 → 200.
//! - `reg_aka_wrong_res.xml`: REGISTER → 401 → REGISTER with a wrong response → 403.
//! - `reg_md5.xml`: as `reg_aka.xml` with SIP Digest MD5 (a password).
//! - `uas_register.xml`: a stand-in registrar for testing the UE scenarios without the core.
//!
//! ```no_run
//! use ims_testkit::sipp::{Scenario, Sipp, Transport, Ue};
//! let ue = Ue { pcscf: "10.10.2.2:5060".into(), ..Ue::default() };
//! let out = Sipp::ue(Scenario::RegAka, &ue)
//!     .remote("10.10.2.2:5060".parse().unwrap())
//!     .local_ip("10.10.1.2".parse().unwrap())
//!     .transport(Transport::Udp)
//!     .prefix(&["ip", "netns", "exec", "e2e-123-0-ue"]) // or topo.exec_prefix("ue")
//!     .run();
//! if !out.success() {
//!     // SIPp's own RES bug (below), or a real failure of the core?
//!     panic!("{}\n{}", out.aka_verdict(&ue.k, &ue.op), out.report());
//! }
//! ```
//!
//! SIPp traps this module works around (see also `shared/notes/peers.md`):
//! - Templates, not `[fieldN]`: SIPp does not substitute `[fieldN]` inside
//!   `[authentication ...]`, so the keys are written into the scenario text.
//! - Keys: SIPp decodes `aka_K=0x…` (hex is read only with the `0x` prefix; without it the
//!   raw characters are taken) and then parses the decoded **bytes** again as message text, so
//!   a key byte `[` (0x5b) starts a `[keyword]` ("Syntax error or invalid [keyword]", seen with
//!   TS 35.208 set 1's K `465b5c…`). That second parse decodes `\xHH` escapes, so the templates
//!   take keys written as `\x46\x5b\x5c…` without `0x` ([`sipp_key`]): then every byte works
//!   (set 1 registers), except 0x00 before a non-zero byte (keys are C strings; trailing zeros
//!   as in AMF `8000` are fine). Seen here; `peers.md` only knows the `0x` form.
//! - Literal `[` anywhere in a message starts a keyword too, e.g. an IPv6 P-CSCF in the Route
//!   header (`<sip:[fd00::1]:5060;lr>`, "Unsupported keyword '::1'"): every filled value goes
//!   through [`sipp_escape`].
//! - The digest `uri` SIPp puts in its Authorization is `sip:<remote ip>:<remote port>` (the
//!   address SIPp sends to, i.e. the P-CSCF), not the Request-URI `sip:<domain>`
//!   (`call.cpp`: `sprintf(uri, "%s:%d", remote_ip, remote_port)`), and over IPv6 without
//!   brackets (`uri="sip:::1:5060"`, not even a valid URI). A core that insists on `uri` ==
//!   Request-URI, or parses `uri`, rejects SIPp; the response is computed over that text.
//! - RES as a C string: SIPp computes RES and treats it as a NUL-terminated password, so when
//!   RES contains a 0x00 byte (about 3% of random RANDs: 1 − (255/256)^8) its response is wrong
//!   and a correct core answers 403. Do not retry blindly or tolerate a failure rate: compute
//!   RES from the 401's nonce ([`SippOutcome::nonces`], parsed from SIPp's `-trace_msg` file)
//!   with the known K/OP ([`aka_res`], Milenage from `ims-aka`) and classify the run
//!   ([`SippOutcome::aka_verdict`]).
//! - SIPp checks AUTN's MAC with its own K/OP/AMF and aborts on a mismatch, so a "wrong K" UE
//!   never sends its second REGISTER: `reg_aka_wrong_res.xml` sends a wrong response instead.
//! - SIPp opens an RTP echo socket (port 6000 by default) even for REGISTER-only scenarios;
//!   each run gets a free `-mp` port so parallel runs do not collide.
//!
//! Run flags: `-sf <filled scenario> -t u1|t1 -i <local ip> -bind_local -m 1 -nostdin
//! -timeout <t>s -timeout_error -trace_msg -message_file … -trace_err -error_file …`, plus
//! `-p`/`-mp` and the remote `host:port` (`[v6]:port`). The scenario, logs, SIPp's output and
//! `command.txt` are in [`SippOutcome::dir`], removed when the outcome drops unless a panic is
//! under way (a failed assertion keeps them) or [`SippOutcome::keep`] was called.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ims_aka::{AkaNonce, Amf, AuthVector, Key, Milenage, Op, Rand, Sqn};

/// TS 35.208 test set 1 K (§4.3.1). Its bytes include `[` (0x5b), `\` (0x5c) and LF (0x0a),
/// which SIPp takes only as `\xHH` escapes ([`sipp_key`]).
pub const TEST_K: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
/// TS 35.208 test set 1 OP.
pub const TEST_OP: &str = "cdc202d5123e20f62b6d676ac72cb318";
/// The AMF with the "separation bit" set, as HSSs use for IMS (its trailing 0x00 is fine).
pub const TEST_AMF: &str = "8000";

/// The built-in scenario templates (`bin/tests/sipp/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// `reg_aka.xml`: AKA registration and authenticated deregistration.
    RegAka,
    /// `reg_aka_wrong_res.xml`: AKA registration with a wrong response, expecting 403.
    RegAkaWrongRes,
    /// `reg_md5.xml`: Digest MD5 registration and deregistration.
    RegMd5,
    /// `uas_register.xml`: a stand-in registrar (placeholders CHALLENGE1, FINAL, DEREG).
    UasRegister,
}

impl Scenario {
    /// The template's file name.
    pub fn file_name(self) -> &'static str {
        match self {
            Scenario::RegAka => "reg_aka.xml",
            Scenario::RegAkaWrongRes => "reg_aka_wrong_res.xml",
            Scenario::RegMd5 => "reg_md5.xml",
            Scenario::UasRegister => "uas_register.xml",
        }
    }

    /// The template text (compiled in).
    pub fn template(self) -> &'static str {
        match self {
            Scenario::RegAka => include_str!("../../../bin/tests/sipp/reg_aka.xml"),
            Scenario::RegAkaWrongRes => {
                include_str!("../../../bin/tests/sipp/reg_aka_wrong_res.xml")
            }
            Scenario::RegMd5 => include_str!("../../../bin/tests/sipp/reg_md5.xml"),
            Scenario::UasRegister => include_str!("../../../bin/tests/sipp/uas_register.xml"),
        }
    }
}

/// Replaces each `@KEY@` of `template` by its value, then fails if a placeholder (`@` +
/// uppercase letters, digits or `_` + `@`) is left.
pub fn fill(template: &str, values: &[(&str, &str)]) -> Result<String, String> {
    let mut text = template.to_string();
    for (k, v) in values {
        text = text.replace(&format!("@{k}@"), v);
    }
    match leftover_placeholder(&text) {
        Some(p) => Err(format!("placeholder {p} not filled")),
        None => Ok(text),
    }
}

fn leftover_placeholder(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find('@') {
        let start = i + off;
        let mut j = start + 1;
        while j < b.len() && (b[j].is_ascii_uppercase() || b[j].is_ascii_digit() || b[j] == b'_') {
            j += 1;
        }
        if j > start + 1 && j < b.len() && b[j] == b'@' && b[start + 1].is_ascii_uppercase() {
            return Some(&text[start..=j]);
        }
        i = start + 1;
    }
    None
}

/// Writes hex `key` (K, OP or AMF) as SIPp message text for `aka_K=` & co.: every byte a
/// `\xHH` escape. Fails on a key SIPp cannot carry: a 0x00 byte followed by a non-zero one
/// (SIPp ends the key at its first 0x00 and zero-fills the rest, so trailing zeros survive:
/// AMF `8000` works, a K with a 0x00 in the middle fails the MAC check; both seen here).
pub fn sipp_key(key: &str) -> Result<String, String> {
    if !key.len().is_multiple_of(2) || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{key:?} is not hex"));
    }
    let bytes: Vec<u8> = (0..key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key[i..i + 2], 16).unwrap_or(0))
        .collect();
    if let Some(i) = bytes.iter().position(|&b| b == 0)
        && bytes[i..].iter().any(|&b| b != 0)
    {
        return Err(format!(
            "key {key} has a 0x00 byte at {i} before non-zero bytes: SIPp 3.6.1 treats \
             keys as C strings and would use a different key"
        ));
    }
    Ok(bytes.iter().map(|b| format!("\\x{b:02x}")).collect())
}

/// Writes `value` as literal SIPp message text: `[` (which would start a `[keyword]`), `]`,
/// `\` and bytes outside printable ASCII (which would end a keyword parameter) become `\xHH`.
pub fn sipp_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b == b'[' || b == b']' || b == b'\\' || !(33..=126).contains(&b) {
            out.push_str(&format!("\\x{b:02x}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// A subscriber as the UE scenarios see it. `Default` is the lab's `alice` with the test keys.
#[derive(Clone, Debug)]
pub struct Ue {
    /// Private identity (Digest username), e.g. `alice.private@hims.net`.
    pub impi: String,
    /// Public identity, a SIP URI, e.g. `sip:alice@hims.net`.
    pub impu: String,
    /// User part of the Contact.
    pub user: String,
    /// Home domain: the REGISTER Request-URI is `sip:<domain>`.
    pub domain: String,
    /// Digest realm (usually the home domain).
    pub realm: String,
    /// The P-CSCF's `host[:port]` for the preloaded `Route: <sip:…;lr>` (IPv6 in brackets).
    pub pcscf: String,
    /// K, hex without `0x`.
    pub k: String,
    /// OP, hex without `0x`.
    pub op: String,
    /// AMF, hex without `0x`.
    pub amf: String,
    /// The Digest MD5 password (`reg_md5.xml`).
    pub password: String,
    /// Expires of the registration, in seconds.
    pub expires: u32,
    /// Pause before answering a challenge (Kamailio's ims_auth needs ~20 ms, see peers.md).
    pub auth_pause: Duration,
    /// Pause between the registration and the deregistration.
    pub hold: Duration,
}

impl Default for Ue {
    fn default() -> Self {
        Ue {
            impi: "alice.private@hims.net".into(),
            impu: "sip:alice@hims.net".into(),
            user: "alice".into(),
            domain: "hims.net".into(),
            realm: "hims.net".into(),
            pcscf: "pcscf1.vims.net".into(),
            k: TEST_K.into(),
            op: TEST_OP.into(),
            amf: TEST_AMF.into(),
            password: "alice-secret".into(),
            expires: 600,
            auth_pause: Duration::from_millis(20),
            hold: Duration::from_millis(100),
        }
    }
}

impl Ue {
    /// Fills one of the UE templates (values escaped with [`sipp_escape`], keys with
    /// [`sipp_key`]); panics on a key SIPp cannot carry or an unfilled placeholder.
    pub fn fill(&self, scenario: Scenario) -> String {
        self.fill_text(scenario.template())
    }

    /// Fills a UE template given as text (e.g. a scenario of a test's own).
    pub fn fill_text(&self, template: &str) -> String {
        let key = |what: &str, hex: &str| sipp_key(hex).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (k, op, amf) = (
            key("K", &self.k),
            key("OP", &self.op),
            key("AMF", &self.amf),
        );
        let expires = self.expires.to_string();
        let auth_pause = self.auth_pause.as_millis().to_string();
        let hold = self.hold.as_millis().to_string();
        let e = sipp_escape;
        fill(
            template,
            &[
                ("IMPI", &e(&self.impi)),
                ("IMPU", &e(&self.impu)),
                ("USER", &e(&self.user)),
                ("DOMAIN", &e(&self.domain)),
                ("REALM", &e(&self.realm)),
                ("PCSCF", &e(&self.pcscf)),
                ("K", &k),
                ("OP", &op),
                ("AMF", &amf),
                ("PASSWORD", &e(&self.password)),
                ("EXPIRES", &expires),
                ("AUTH_PAUSE_MS", &auth_pause),
                ("HOLD_MS", &hold),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// SIPp's transport: one socket for the whole run (`-t u1` / `-t t1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP, `-t u1`.
    Udp,
    /// TCP, `-t t1`.
    Tcp,
}

impl Transport {
    fn flag(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }
}

/// A port that was free on `ip` a moment ago (UDP), for SIPp's `-p`/`-mp`.
pub fn free_udp_port(ip: IpAddr) -> u16 {
    let any = match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    UdpSocket::bind((ip, 0))
        .or_else(|_| UdpSocket::bind((any, 0)))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// One SIPp run, built step by step; [`Sipp::run`] or [`Sipp::spawn`] start it.
#[derive(Clone, Debug)]
pub struct Sipp {
    name: String,
    scenario: String,
    remote: Option<SocketAddr>,
    local_ip: Option<IpAddr>,
    local_port: Option<u16>,
    media_port: Option<u16>,
    transport: Transport,
    prefix: Vec<String>,
    timeout: Duration,
    calls: u32,
    extra: Vec<String>,
    dir: Option<PathBuf>,
    bin: Option<PathBuf>,
}

impl Sipp {
    /// A run of scenario text `scenario` (written to `<dir>/<name>.xml`).
    pub fn new(name: &str, scenario: String) -> Sipp {
        Sipp {
            name: name.to_string(),
            scenario,
            remote: None,
            local_ip: None,
            local_port: None,
            media_port: None,
            transport: Transport::Udp,
            prefix: Vec::new(),
            timeout: Duration::from_secs(20),
            calls: 1,
            extra: Vec::new(),
            dir: None,
            bin: None,
        }
    }

    /// A UE run of a built-in scenario filled for `ue`.
    pub fn ue(scenario: Scenario, ue: &Ue) -> Sipp {
        let name = scenario.file_name().trim_end_matches(".xml");
        Sipp::new(name, ue.fill(scenario))
    }

    /// Where to send (the P-CSCF); a UAS run has none.
    pub fn remote(mut self, addr: SocketAddr) -> Sipp {
        self.remote = Some(addr);
        self
    }

    /// The local address (`-i`, with `-bind_local`); defaults to the loopback address of the
    /// remote's family.
    pub fn local_ip(mut self, ip: IpAddr) -> Sipp {
        self.local_ip = Some(ip);
        self
    }

    /// The local SIP port (`-p`); by default SIPp picks one (a UAS needs one).
    pub fn local_port(mut self, port: u16) -> Sipp {
        self.local_port = Some(port);
        self
    }

    /// The RTP echo port (`-mp`); by default a free one.
    pub fn media_port(mut self, port: u16) -> Sipp {
        self.media_port = Some(port);
        self
    }

    /// UDP (default) or TCP.
    pub fn transport(mut self, t: Transport) -> Sipp {
        self.transport = t;
        self
    }

    /// A command prefix, e.g. `["ip", "netns", "exec", ns]` (see
    /// [`crate::netns::Topology::exec_prefix`]) to run SIPp inside a namespace.
    pub fn prefix<S: AsRef<str>>(mut self, prefix: &[S]) -> Sipp {
        self.prefix = prefix.iter().map(|s| s.as_ref().to_string()).collect();
        self
    }

    /// SIPp's global timeout (`-timeout`, with `-timeout_error`), whole seconds; default 20 s.
    pub fn timeout(mut self, t: Duration) -> Sipp {
        self.timeout = t;
        self
    }

    /// Number of calls (`-m`), default 1.
    pub fn calls(mut self, n: u32) -> Sipp {
        self.calls = n;
        self
    }

    /// Another SIPp argument (appended as given).
    pub fn arg(mut self, a: &str) -> Sipp {
        self.extra.push(a.to_string());
        self
    }

    /// The directory for the scenario and logs; default a fresh [`crate::scratch_dir`].
    pub fn dir(mut self, dir: &Path) -> Sipp {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// The sipp binary; default `sipp` from `PATH`.
    pub fn bin(mut self, bin: &Path) -> Sipp {
        self.bin = Some(bin.to_path_buf());
        self
    }

    /// The command line this run uses (for logs), without the prefix.
    fn args(&self, dir: &Path, scenario: &Path) -> Vec<String> {
        let local_ip = self.local_ip.unwrap_or(match self.remote {
            Some(SocketAddr::V6(_)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
        });
        let mut a: Vec<String> = Vec::new();
        if let Some(r) = self.remote {
            a.push(r.to_string());
        }
        a.extend(["-sf".into(), scenario.display().to_string()]);
        a.extend(["-t".into(), self.transport.flag().into()]);
        a.extend(["-i".into(), local_ip.to_string(), "-bind_local".into()]);
        if let Some(p) = self.local_port {
            a.extend(["-p".into(), p.to_string()]);
        }
        let mp = self.media_port.unwrap_or_else(|| free_udp_port(local_ip));
        a.extend(["-mp".into(), mp.to_string()]);
        a.extend(["-m".into(), self.calls.to_string(), "-nostdin".into()]);
        a.extend([
            "-timeout".into(),
            format!("{}s", self.timeout.as_secs().max(1)),
            "-timeout_error".into(),
        ]);
        a.extend([
            "-trace_msg".into(),
            "-message_file".into(),
            dir.join("messages.log").display().to_string(),
            "-trace_err".into(),
            "-error_file".into(),
            dir.join("errors.log").display().to_string(),
        ]);
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Starts SIPp in the background (e.g. a UAS), killed when the handle drops.
    pub fn spawn(self) -> SippChild {
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| crate::scratch_dir(&format!("sipp-{}", self.name)));
        std::fs::create_dir_all(&dir).expect("create the SIPp directory");
        let scenario = dir.join(format!("{}.xml", self.name));
        std::fs::write(&scenario, &self.scenario).expect("write the scenario");
        let bin = self
            .bin
            .clone()
            .or_else(|| crate::which("sipp"))
            .unwrap_or_else(|| PathBuf::from("sipp"));
        let args = self.args(&dir, &scenario);
        let mut cmd = match self.prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(&args).current_dir(&dir).stdin(Stdio::null());
        cmd.stdout(std::fs::File::create(dir.join("stdout.log")).expect("stdout log"));
        cmd.stderr(std::fs::File::create(dir.join("stderr.log")).expect("stderr log"));
        let command_line = self
            .prefix
            .iter()
            .cloned()
            .chain([bin.display().to_string()])
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(dir.join("command.txt"), &command_line).expect("write command.txt");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command_line}: {e}"));
        SippChild {
            child: Some(child),
            owned_dir: self.dir.is_none(),
            dir,
            command_line,
            deadline: Instant::now() + self.timeout + Duration::from_secs(10),
        }
    }

    /// Runs SIPp to completion (bounded by its timeout plus 10 s) and collects the results.
    ///
    /// With no `media_port` given, a run that SIPp ends at once because a port of its media
    /// range was taken meanwhile (`Unable to bind ... RTP socket`: the free port is picked
    /// here and SIPp binds it and the three above it, in a namespace where another SIPp of
    /// the test may hold them) runs again on another range, twice at most.
    pub fn run(self) -> SippOutcome {
        let mut left = if self.media_port.is_none() { 2 } else { 0 };
        loop {
            let out = self.clone().spawn().wait();
            let raced = |t: &str| t.contains("Unable to bind") && t.contains("RTP socket");
            if left == 0 || out.status.success() || !(raced(&out.stderr) || raced(&out.errors)) {
                return out;
            }
            left -= 1;
        }
    }
}

/// A SIPp process started by [`Sipp::spawn`]; killed on drop.
pub struct SippChild {
    child: Option<Child>,
    dir: PathBuf,
    owned_dir: bool,
    command_line: String,
    deadline: Instant,
}

impl SippChild {
    /// The run's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True while SIPp runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits for SIPp to end (killing it past its deadline) and collects the results.
    pub fn wait(mut self) -> SippOutcome {
        let mut child = self.child.take().expect("a running child");
        let mut timed_out = false;
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait sipp") {
                break st;
            }
            if Instant::now() > self.deadline {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("wait sipp");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        SippOutcome::collect(
            status,
            timed_out,
            &self.dir,
            &self.command_line,
            self.owned_dir,
        )
    }
}

impl SippChild {
    /// Stops SIPp now (a UE holding its registration while the test acts) and collects what
    /// it left.
    pub fn stop(mut self) -> SippOutcome {
        let mut child = self.child.take().expect("a running child");
        let _ = child.kill();
        let status = child.wait().expect("wait sipp");
        SippOutcome::collect(status, false, &self.dir, &self.command_line, self.owned_dir)
    }
}

impl Drop for SippChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a SIPp run left behind.
#[derive(Debug)]
pub struct SippOutcome {
    /// SIPp's exit status: 0 all calls succeeded, 1 some failed, 97/99 other ends, 255/254
    /// fatal (bad scenario, cannot bind).
    pub status: ExitStatus,
    /// True when SIPp outlived its timeout by 10 s and was killed.
    pub timed_out: bool,
    /// The directory with the scenario, `messages.log`, `errors.log`, `stdout.log`, ….
    pub dir: PathBuf,
    /// The command line.
    pub command_line: String,
    /// `-trace_msg`: every message sent and received.
    pub messages: String,
    /// `-trace_err`: unexpected messages and errors.
    pub errors: String,
    /// SIPp's stdout (its screens).
    pub stdout: String,
    /// SIPp's stderr (scenario errors).
    pub stderr: String,
    /// Remove `dir` on drop (a directory this module created, not kept, no panic under way).
    remove_dir: bool,
}

fn read(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

impl SippOutcome {
    fn collect(
        status: ExitStatus,
        timed_out: bool,
        dir: &Path,
        command_line: &str,
        remove_dir: bool,
    ) -> Self {
        SippOutcome {
            remove_dir,
            status,
            timed_out,
            dir: dir.to_path_buf(),
            command_line: command_line.to_string(),
            messages: read(&dir.join("messages.log")),
            errors: read(&dir.join("errors.log")),
            stdout: read(&dir.join("stdout.log")),
            stderr: read(&dir.join("stderr.log")),
        }
    }

    /// Keeps [`SippOutcome::dir`] after the outcome drops (by default it is removed unless a
    /// panic is under way, so failed assertions leave their logs behind).
    pub fn keep(&mut self) -> &Path {
        self.remove_dir = false;
        &self.dir
    }

    /// True when SIPp exited 0 (every call passed its scenario).
    pub fn success(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    /// The messages of the trace, in order, each as `(received, text)`.
    pub fn trace(&self) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        for block in self
            .messages
            .split("----------------------------------------------- ")
        {
            let Some((head, body)) = block.split_once("\n\n") else {
                continue;
            };
            let received = head.contains("message received");
            if !(received || head.contains("message sent")) {
                continue;
            }
            out.push((received, body.trim_end().to_string()));
        }
        out
    }

    /// Status codes of the responses SIPp received, in order.
    pub fn received_statuses(&self) -> Vec<u16> {
        self.trace()
            .into_iter()
            .filter(|(rx, _)| *rx)
            .filter_map(|(_, m)| {
                m.strip_prefix("SIP/2.0 ")
                    .and_then(|r| r.get(..3))
                    .and_then(|c| c.parse().ok())
            })
            .collect()
    }

    /// The `nonce` of every challenge SIPp received (`WWW-Authenticate` or
    /// `Proxy-Authenticate` in a response), in order, retransmissions included.
    pub fn nonces(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (rx, msg) in self.trace() {
            if !rx || !msg.starts_with("SIP/2.0 ") {
                continue;
            }
            for line in msg.lines() {
                let l = line.trim_start();
                let lower = l.to_ascii_lowercase();
                if !(lower.starts_with("www-authenticate:")
                    || lower.starts_with("proxy-authenticate:"))
                {
                    continue;
                }
                if let Some(n) = param(l, "nonce") {
                    out.push(n);
                }
            }
        }
        out
    }

    /// Classifies an AKA run against SIPp's RES bug: for each challenge, computes RES with
    /// `k`/`op` (hex) and reports whether SIPp's answer was doomed by a 0x00 byte in it.
    pub fn aka_verdict(&self, k: &str, op: &str) -> AkaVerdict {
        let mut nonces = self.nonces();
        nonces.dedup();
        if nonces.is_empty() {
            return AkaVerdict::NoChallenge;
        }
        for nonce in &nonces {
            match aka_res(nonce, k, op) {
                Ok(res) if res.contains(&0) => {
                    return AkaVerdict::SippResBug {
                        nonce: nonce.clone(),
                        res_hex: hex(&res),
                    };
                }
                Ok(_) => {}
                Err(error) => {
                    return AkaVerdict::BadNonce {
                        nonce: nonce.clone(),
                        error,
                    };
                }
            }
        }
        AkaVerdict::Clean { nonces }
    }

    /// Everything useful for a failure message: status, command, and the tails of the logs.
    pub fn report(&self) -> String {
        format!(
            "sipp exit: {}{}\ncommand: {}\ndir: {}\n--- errors.log ---\n{}\n--- stderr ---\n{}\n\
             --- messages.log (tail) ---\n{}\n--- stdout (tail) ---\n{}",
            self.status,
            if self.timed_out {
                " (killed: timeout)"
            } else {
                ""
            },
            self.command_line,
            self.dir.display(),
            tail(&self.errors, 4000),
            tail(&self.stderr, 2000),
            tail(&self.messages, 8000),
            tail(&self.stdout, 2000),
        )
    }
}

impl Drop for SippOutcome {
    fn drop(&mut self) {
        if self.remove_dir && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// How an AKA run relates to SIPp's RES-as-C-string bug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AkaVerdict {
    /// SIPp received no challenge: nothing to judge.
    NoChallenge,
    /// Every challenge's RES is free of 0x00: a failure is not SIPp's RES bug.
    Clean {
        /// The distinct nonces seen.
        nonces: Vec<String>,
    },
    /// RES of this nonce contains 0x00: SIPp's response was wrong, a 403 is correct.
    SippResBug {
        /// The nonce.
        nonce: String,
        /// RES, hex.
        res_hex: String,
    },
    /// The nonce is not base64(RAND || AUTN …), or the keys are not hex.
    BadNonce {
        /// The nonce.
        nonce: String,
        /// Why.
        error: String,
    },
}

impl AkaVerdict {
    /// True when SIPp's RES bug explains a failed run.
    pub fn is_sipp_bug(&self) -> bool {
        matches!(self, AkaVerdict::SippResBug { .. })
    }
}

impl fmt::Display for AkaVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AkaVerdict::NoChallenge => write!(f, "AKA: SIPp received no challenge"),
            AkaVerdict::Clean { nonces } => write!(
                f,
                "AKA: RES of {} challenge(s) has no 0x00 byte: not SIPp's RES bug",
                nonces.len()
            ),
            AkaVerdict::SippResBug { nonce, res_hex } => write!(
                f,
                "AKA: RES {res_hex} of nonce {nonce} contains 0x00: SIPp's C-string RES bug, \
                 its response is wrong and a 403 is the correct answer"
            ),
            AkaVerdict::BadNonce { nonce, error } => {
                write!(f, "AKA: nonce {nonce:?} is unusable: {error}")
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The value of `name=` in a header's parameters (`name="v"` or `name=v`), first match.
pub fn param(header: &str, name: &str) -> Option<String> {
    let lower = header.to_ascii_lowercase();
    let needle = format!("{}=", name.to_ascii_lowercase());
    let mut from = 0;
    while let Some(off) = lower[from..].find(&needle) {
        let at = from + off;
        let before = lower[..at].chars().last();
        if before.is_none_or(|c| c == ' ' || c == ',' || c == '\t' || c == ';') {
            let rest = &header[at + needle.len()..];
            return Some(if let Some(q) = rest.strip_prefix('"') {
                q.split('"').next().unwrap_or("").to_string()
            } else {
                rest.split([',', ';', ' ', '\r', '\n'])
                    .next()
                    .unwrap_or("")
                    .to_string()
            });
        }
        from = at + needle.len();
    }
    None
}

/// RES for a Digest-AKA `nonce` (base64 of RAND || AUTN …) with `k` and `op` in hex:
/// Milenage f2 of the nonce's RAND.
pub fn aka_res(nonce: &str, k: &str, op: &str) -> Result<Vec<u8>, String> {
    let n = AkaNonce::decode(nonce).map_err(|e| e.to_string())?;
    let m = milenage(k, op)?;
    Ok(m.f2(&n.rand).expose().to_vec())
}

fn milenage(k: &str, op: &str) -> Result<Milenage, String> {
    let k = Key::from_hex(k).map_err(|e| format!("K: {e}"))?;
    let op = Op::from_hex(op).map_err(|e| format!("OP: {e}"))?;
    Ok(Milenage::with_op(&k, &op))
}

/// A challenge SIPp can answer, for tests that play the network side: the nonce
/// (base64(RAND || AUTN)) and XRES for `k`/`op`/`amf` and `sqn`. RAND starts at TS 35.208
/// set 3's RAND and is stepped until RES has no 0x00 byte (SIPp's RES bug), so it is deterministic.
pub fn sipp_safe_challenge(k: &str, op: &str, amf: &str, sqn: u64) -> (String, Vec<u8>) {
    let m = milenage(k, op).unwrap_or_else(|e| panic!("{e}"));
    let amf = Amf::from_hex(amf).unwrap_or_else(|e| panic!("AMF: {e}"));
    let sqn = Sqn::new(sqn).unwrap_or_else(|e| panic!("SQN: {e}"));
    let mut rand = [
        0x9f, 0x7c, 0x8d, 0x02, 0x1a, 0xcc, 0xf4, 0xdb, 0x21, 0x3c, 0xcf, 0xf0, 0xc7, 0xf7, 0x1a,
        0x6a,
    ];
    loop {
        let av = AuthVector::generate(&m, Rand::new(rand), sqn, amf);
        if !av.xres.expose().contains(&0) {
            return (
                AkaNonce::new(av.rand, av.autn).encode(),
                av.xres.expose().to_vec(),
            );
        }
        rand[15] = rand[15].wrapping_add(1);
    }
}

/// A nonce for `rand` (hex) whatever its RES: to reproduce SIPp's RES bug on purpose.
pub fn challenge_for_rand(k: &str, op: &str, amf: &str, sqn: u64, rand: &str) -> (String, Vec<u8>) {
    let m = milenage(k, op).unwrap_or_else(|e| panic!("{e}"));
    let amf = Amf::from_hex(amf).unwrap_or_else(|e| panic!("AMF: {e}"));
    let sqn = Sqn::new(sqn).unwrap_or_else(|e| panic!("SQN: {e}"));
    let rand = Rand::from_hex(rand).unwrap_or_else(|e| panic!("RAND: {e}"));
    let av = AuthVector::generate(&m, rand, sqn, amf);
    (
        AkaNonce::new(av.rand, av.autn).encode(),
        av.xres.expose().to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_leftovers() {
        assert_eq!(fill("a @X@ b", &[("X", "1")]).unwrap(), "a 1 b");
        assert!(fill("a @X@ @Y_2@", &[("X", "1")]).is_err());
        // Addresses with '@' are not placeholders.
        assert!(fill("alice.private@hims.net sip:a@[local_ip]", &[]).is_ok());
    }

    #[test]
    fn builtin_templates_fill_completely() {
        let ue = Ue::default();
        for s in [Scenario::RegAka, Scenario::RegAkaWrongRes, Scenario::RegMd5] {
            let text = ue.fill(s);
            assert!(text.contains("alice.private@hims.net"), "{s:?}");
        }
        assert!(
            ue.fill(Scenario::RegAka)
                .contains("aka_K=\\x46\\x5b\\x5c\\xe8")
        );
    }

    #[test]
    fn keys_become_escapes() {
        assert_eq!(sipp_key("465b5c").unwrap(), "\\x46\\x5b\\x5c");
        assert!(sipp_key(TEST_AMF).is_ok(), "trailing 0x00 is fine");
        assert!(sipp_key("fec86ba6eb707e0008905757b1bb44b8").is_err());
        assert!(sipp_key("abc").is_err());
        assert_eq!(sipp_escape("[::1]:5060"), "\\x5b::1\\x5d:5060");
        assert_eq!(sipp_escape("a b\\"), "a\\x20b\\x5c");
    }

    #[test]
    fn params() {
        let h = r#"WWW-Authenticate: Digest realm="hims.net", nonce="abc=", algorithm=AKAv1-MD5, qop="auth""#;
        assert_eq!(param(h, "nonce").as_deref(), Some("abc="));
        assert_eq!(param(h, "algorithm").as_deref(), Some("AKAv1-MD5"));
        assert_eq!(param(h, "cnonce"), None);
    }

    #[test]
    fn res_of_worked_vector() {
        // protocol-facts.md §3: set 1 keys, RAND 23553cbe…, RES = f2 = a54211d5e3ba50bf.
        let res = aka_res(
            "I1U8vpY3qJ0hiuZNrke/NVXzKLQ1d7m5Sp/6w1Tfr7M=",
            "465b5ce8b199b49faa5f0a2ee238a6bc",
            "cdc202d5123e20f62b6d676ac72cb318",
        )
        .unwrap();
        assert_eq!(hex(&res), "a54211d5e3ba50bf");
    }
}

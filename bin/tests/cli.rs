//! The daemons as users run them: flags, --check-config, exit codes, environment overrides,
//! a real start, and a clean stop on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DNS: &str = env!("CARGO_BIN_EXE_ims-dns");
const HSS: &str = env!("CARGO_BIN_EXE_hss");
const LAB_HSS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/lab/hss.toml");
const LAB_DNS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/lab/ims-dns.toml");

#[test]
fn check_config_accepts_the_lab_and_names_what_is_wrong() {
    let ok = Command::new(DNS)
        .args(["--check-config", "-c", LAB_DNS])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("is valid"));

    let dir = ims_testkit::scratch_dir("cli");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = [\"127.0.0.1:0\"]\nzones = 3\n").unwrap();
    let out = Command::new(DNS)
        .args(["--check-config", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `zones`"), "{err}");
    assert_eq!(
        err.lines().count(),
        1,
        "one line that names the problem: {err}"
    );

    // A quoted key the config crate would read as a path with a huge index (it panicked):
    // one line, exit 2.
    std::fs::write(&bad, "listen = [\"127.0.0.1:0\"]\n\"a[99999999999]\" = 1\n").unwrap();
    let out = Command::new(DNS)
        .args(["--check-config", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key `a[99999999999]`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = Command::new(DNS)
        .args(["-c", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    // Environment overrides reach the config (a bad value proves it was read).
    let out = Command::new(DNS)
        .args(["--check-config", "-c", LAB_DNS])
        .env("IMS_DNS__TTL", "not-a-number")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ttl"));
}

#[test]
fn serves_then_stops_cleanly_on_sigterm() {
    let Some(_) = ims_testkit::require_tool("cli_dns_serve", "dig") else {
        return;
    };
    // A free port: bind, read, release (UDP and TCP both get it in the daemon).
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The lab's file, with `listen` (a list) overridden by a TOML array in the environment.
    let listen = ("IMS_DNS__LISTEN", format!("[\"127.0.0.1:{port}\"]"));
    let health = || {
        Command::new(DNS)
            .args(["--health", "-c", LAB_DNS])
            .env(listen.0, &listen.1)
            .output()
            .unwrap()
    };
    let down = health();
    assert_eq!(down.status.code(), Some(1), "nothing listens yet: {down:?}");
    assert!(
        String::from_utf8_lossy(&down.stdout)
            .contains(&format!("127.0.0.1:{port} does not accept")),
        "{down:?}"
    );
    let mut child = Command::new(DNS)
        .args(["--log-format", "json", "-c", LAB_DNS])
        .env(listen.0, &listen.1)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                "+short",
                "+time=1",
                "+tries=1",
            ])
            .args(["SRV", "_sip._udp.hims.net"])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !s.is_empty() && !s.starts_with(";;") {
            break s;
        }
        assert!(Instant::now() < deadline, "ims-dns did not answer in 10 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(answer, "0 0 5060 icscf1.hims.net.");
    let up = health();
    assert!(up.status.success(), "the daemon answers: {up:?}");
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "ims-dns did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(
        log.lines().all(|l| l.starts_with('{')),
        "JSON log lines: {log}"
    );
    assert!(
        log.contains("zone loaded") && log.contains("SIGTERM"),
        "{log}"
    );
}

#[test]
fn hss_check_config_and_bad_database() {
    let ok = Command::new(HSS)
        .args(["--check-config", "-c", LAB_HSS])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    // A database URL it cannot use: one clear line, exit 1, no panic.
    let dir = ims_testkit::scratch_dir("cli-hss");
    let cfg = dir.join("hss.toml");
    std::fs::write(
        &cfg,
        "database = \"mysql://x\"\nadmin_listen = \"127.0.0.1:0\"\nhome_network = \"hims.net\"\n",
    )
    .unwrap();
    let out = Command::new(HSS).arg("-c").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unsupported database URL `mysql://x`"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

const IMSCTL: &str = env!("CARGO_BIN_EXE_imsctl");

fn imsctl(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(IMSCTL)
        .arg("--url")
        .arg(url)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scratch HSS configuration whose admin API listens on `ip` at a free port: (the file,
/// the port).
fn hss_config(tag: &str, ip: &str) -> (std::path::PathBuf, u16) {
    let port = std::net::TcpListener::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = ims_testkit::scratch_dir(tag);
    let cfg = dir.join("hss.toml");
    std::fs::write(
        &cfg,
        format!(
            "database = \"sqlite://{}\"\nadmin_listen = \"{ip}:{port}\"\nhome_network = \"hims.net\"\n[diameter]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("hss.sqlite").display()
        ),
    )
    .unwrap();
    (cfg, port)
}

#[test]
fn imsctl_provisions_through_a_running_hss() {
    let (cfg, port) = hss_config("cli-imsctl", "127.0.0.1");
    let dir = cfg.parent().unwrap().to_path_buf();
    let mut hss = Command::new(HSS)
        .arg("-c")
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !imsctl(&url, &["health"]).0 {
        assert!(Instant::now() < deadline, "hss did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out, _) = imsctl(&url, &["health"]);
    assert!(ok && out.contains("sqlite"), "{out}");

    let add = [
        "subscriber",
        "add",
        "--impi",
        "001010000000001@ims.mnc001.mcc001.3gppnetwork.org",
        "--impu",
        "sip:001010000000001@ims.mnc001.mcc001.3gppnetwork.org",
        "--impu",
        "tel:+491701234567",
        "--k",
        "465b5ce8b199b49faa5f0a2ee238a6bc",
        "--op",
        "cdc202d5123e20f62b6d676ac72cb318",
    ];
    let (ok, out, err) = imsctl(&url, &add);
    assert!(ok, "{out} {err}");
    let (ok, _, err) = imsctl(&url, &add);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("HTTP 409"), "{err}");

    // RTR needs a serving S-CSCF: none yet, so one clear line and 409.
    let (ok, _, err) = imsctl(
        &url,
        &[
            "subscriber",
            "deregister",
            "001010000000001@ims.mnc001.mcc001.3gppnetwork.org",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("has no serving S-CSCF") && err.contains("HTTP 409"),
        "{err}"
    );
    let (ok, out, _) = imsctl(&url, &["metrics"]);
    assert!(ok && out.contains("ims_hss_diameter_peers_up 0"), "{out}");
    // `metrics --from URL`: another daemon's admin API (here the HSS's own, on loopback,
    // where it needs no token); the HSS URL is not used.
    let (ok, from, err) = imsctl("http://127.0.0.1:9", &["metrics", "--from", &url]);
    assert!(
        ok && from.contains("ims_hss_diameter_peers_up 0"),
        "{from} {err}"
    );
    assert!(out.contains("\nims_hss_subscriptions_loaded "), "{out}");
    assert!(
        out.starts_with("# HELP "),
        "the metrics text as it is: {out}"
    );

    let (ok, _, err) = imsctl(
        &url,
        &[
            "subscriber",
            "add",
            "--impi",
            "b@hims.net",
            "--impu",
            "sip:b@hims.net",
            "--k",
            "12",
            "--opc",
            "00",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("field `k`") && err.contains("HTTP 422"),
        "{err}"
    );

    let (ok, out, _) = imsctl(
        &url,
        &[
            "subscriber",
            "show",
            "001010000000001@ims.mnc001.mcc001.3gppnetwork.org",
        ],
    );
    assert!(
        ok && out.contains("\"auth_scheme\": \"aka\"") && !out.contains("465b5ce8"),
        "{out}"
    );

    let csv = dir.join("subs.csv");
    std::fs::write(&csv, "impi,impus,realm,password\nalice@hims.net,sip:alice@hims.net,hims.net,pw\nbob@hims.net,sip:bob@hims.net tel:+4930111,hims.net,pw2\n").unwrap();
    let (ok, out, err) = imsctl(&url, &["subscriber", "import", csv.to_str().unwrap()]);
    assert!(ok && out.contains("\"imported\": 2"), "{out} {err}");
    let (ok, out, _) = imsctl(&url, &["subscriber", "list"]);
    assert!(
        ok && out.contains("alice@hims.net") && out.contains("bob@hims.net"),
        "{out}"
    );

    // A file bigger than one request goes in parts; a quoted cell may hold a newline; an
    // error names the line of the whole file and what was imported before it.
    let mut rows = String::from("impi,impus,realm,password\n");
    for i in 0..11 {
        rows.push_str(&format!(
            "u{i}@hims.net,sip:u{i}@hims.net,hims.net,\"p,{i}\"\n"
        ));
    }
    rows.push_str("q@hims.net,sip:q@hims.net,hims.net,\"two\nlines\"\n\n");
    let big = dir.join("big.csv");
    std::fs::write(&big, &rows).unwrap();
    let path = big.to_str().unwrap();
    let (ok, out, err) = imsctl(&url, &["subscriber", "import", "--batch", "5", path]);
    assert!(ok && out.contains("\"imported\": 12"), "{out} {err}");
    let (ok, out, _) = imsctl(&url, &["subscriber", "show", "u10@hims.net"]);
    assert!(ok && out.contains("u10@hims.net"), "{out}");
    // Line 15 (after the two-line record of lines 13 and 14) has no identity.
    // (Other identities: those of the first file exist now.)
    let mut rows = rows
        .replace("u", "v")
        .replace("impvs", "impus")
        .replace("q@", "r@");
    rows.truncate(rows.len() - 1);
    rows.push_str(",sip:x@hims.net,hims.net,pw\n");
    std::fs::write(&big, &rows).unwrap();
    let (ok, _, err) = imsctl(&url, &["subscriber", "import", "--batch", "5", path]);
    assert!(
        !ok && err.contains("line 15") && err.contains("the 10 rows before line 12 were imported"),
        "{err}"
    );

    let (ok, _, err) = imsctl(
        &url,
        &[
            "capability-set",
            "put",
            "default",
            "--mandatory",
            "1,2",
            "--server",
            "sip:scscf1.hims.net",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, _) = imsctl(&url, &["subscriber", "delete", "alice@hims.net"]);
    assert!(ok);
    let (ok, _, err) = imsctl(&url, &["subscriber", "delete", "alice@hims.net"]);
    assert!(!ok && err.contains("HTTP 404"), "{err}");

    assert!(
        Command::new("kill")
            .args(["-TERM", &hss.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let st = hss.wait().unwrap();
    assert!(st.success(), "hss exits cleanly on SIGTERM: {st:?}");

    // Nobody listening: one clear line.
    let (ok, _, err) = imsctl(&url, &["health"]);
    assert!(
        !ok && err.contains("cannot reach the HSS admin API"),
        "{err}"
    );
}

/// Beyond loopback the admin API needs a token: without one the HSS refuses to start (one
/// line, exit 2); with one, every path but /health and /openapi.json wants it as a bearer
/// credential, and imsctl sends it from IMS_HSS_TOKEN.
#[test]
fn hss_admin_api_needs_a_token_beyond_loopback() {
    let (cfg, port) = hss_config("cli-token", "0.0.0.0");
    let out = Command::new(HSS).arg("-c").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a loopback address: set admin_token"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = Command::new(HSS)
        .arg("-c")
        .arg(&cfg)
        .env("IMS_HSS__ADMIN_TOKEN", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16 characters"));

    const TOKEN: &str = "lab-admin-token-0123456789";
    let mut hss = Command::new(HSS)
        .arg("-c")
        .arg(&cfg)
        .env("IMS_HSS__ADMIN_TOKEN", TOKEN)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    // /health needs no token.
    while !imsctl(&url, &["health"]).0 {
        assert!(Instant::now() < deadline, "hss did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let with = |token: &str, args: &[&str]| {
        let out = Command::new(IMSCTL)
            .arg("--url")
            .arg(&url)
            .args(args)
            .env("IMS_HSS_TOKEN", token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [&["subscriber", "list"][..], &["metrics"]] {
        let (ok, out, err) = imsctl(&url, args);
        assert!(!ok && out.is_empty(), "{args:?}: {out}");
        assert!(
            err.contains("needs a token") && err.contains("HTTP 401"),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        let (ok, _, err) = with("lab-admin-token-wrong-guess", args);
        assert!(!ok && err.contains("wrong admin token"), "{err}");
        let (ok, out, err) = with(TOKEN, args);
        assert!(ok, "{args:?}: {err}");
        assert!(!out.is_empty());
    }
    // `metrics --from URL` reads another daemon's admin API and never sends it the HSS's
    // token: pointed at this HSS (as if it were another daemon), it is refused.
    let (ok, _, err) = with(TOKEN, &["metrics", "--from", &url]);
    assert!(
        !ok && err.contains("HTTP 401"),
        "the token went along: {err}"
    );
    let (ok, out, err) = with(
        TOKEN,
        &[
            "subscriber",
            "add",
            "--impi",
            "t@hims.net",
            "--impu",
            "sip:t@hims.net",
            "--realm",
            "hims.net",
            "--password",
            "secret",
        ],
    );
    assert!(ok, "{out} {err}");
    // The token in another scheme is refused too.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let raw = agent
        .get(format!("{url}/v1/subscribers/t@hims.net"))
        .header("authorization", &format!("Basic {TOKEN}"))
        .call()
        .unwrap();
    assert_eq!(raw.status().as_u16(), 401);
    assert!(
        Command::new("kill")
            .args(["-TERM", &hss.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(hss.wait().unwrap().success());
}

const PCSCF: &str = env!("CARGO_BIN_EXE_pcscf");
const LAB_PCSCF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/lab/pcscf.toml");

/// `core_networks` takes CIDR networks and single addresses of both families; anything else
/// is one line naming the value.
#[test]
fn pcscf_check_config_core_networks() {
    let ok = Command::new(PCSCF)
        .args(["--check-config", "-c", LAB_PCSCF])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let lab = std::fs::read_to_string(LAB_PCSCF).unwrap();
    let dir = ims_testkit::scratch_dir("cli-pcscf");
    let with = |networks: &str| {
        // Top-level keys go before the first table.
        let cfg = dir.join("pcscf.toml");
        std::fs::write(
            &cfg,
            lab.replacen(
                "[ipsec]",
                &format!("core_networks = {networks}\n[ipsec]"),
                1,
            ),
        )
        .unwrap();
        Command::new(PCSCF)
            .args(["--check-config", "-c"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = with("[\"10.10.4.0/24\", \"fd00:4::/64\", \"127.0.0.30\", \"::1\"]");
    assert!(out.status.success(), "{out:?}");
    for bad in ["10.0.0.0/33", "scscf1.hims.net"] {
        let out = with(&format!("[\"127.0.0.0/8\", \"{bad}\"]"));
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "core_networks: `{bad}` is not an address or CIDR network"
            )),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// A Diameter AVP (no vendor): code, the M flag, data padded to four bytes.
fn avp(code: u32, data: &[u8]) -> Vec<u8> {
    let mut a = code.to_be_bytes().to_vec();
    a.extend_from_slice(&(0x4000_0000u32 | (8 + data.len() as u32)).to_be_bytes());
    a.extend_from_slice(data);
    a.resize(a.len().div_ceil(4) * 4, 0);
    a
}

/// A Diameter message: command, request or answer, hop-by-hop id, AVPs.
fn diameter(command: u32, request: bool, hbh: u32, avps: &[Vec<u8>]) -> Vec<u8> {
    let body = avps.concat();
    let mut m = (0x0100_0000u32 | (20 + body.len() as u32))
        .to_be_bytes()
        .to_vec();
    // R for a request, P for everything but the base protocol's CER/CEA.
    let proxiable: u32 = if command == 257 { 0 } else { 0x40 };
    let flags: u32 = if request { 0x80 | proxiable } else { proxiable };
    m.extend_from_slice(&((flags << 24) | command).to_be_bytes());
    let app: u32 = if command == 257 { 0 } else { 16_777_216 };
    for v in [app, hbh, hbh] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m.extend_from_slice(&body);
    m
}

/// `imsctl ladder` over a capture of the one-host lab's addresses (named without `--name`):
/// SIP, DNS on the lab's port 10053, Diameter with a CER/CEA (left out unless `--all`), a UAA
/// with an Experimental-Result; a message captured twice is one arrow. Then what goes
/// wrong: no tshark, no file, not a capture — one line each, exit 2.
#[test]
fn imsctl_ladder_draws_a_capture_and_names_what_is_wrong() {
    let Some(_) = ims_testkit::require_tool("imsctl_ladder_draws_a_capture", "tshark") else {
        return;
    };
    let a = |s: &str| -> std::net::SocketAddrV4 { s.parse().unwrap() };
    let (ue, p, dns, i, h) = (
        a("127.0.0.1:5070"),
        a("127.0.0.10:5060"),
        a("127.0.0.50:10053"),
        a("127.0.0.20:40000"),
        a("127.0.0.40:3868"),
    );
    let headers = "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nFrom: <sip:bob@hims.net>;tag=1\r\nTo: <sip:bob@hims.net>\r\nCall-ID: ladder\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
    let register = format!("REGISTER sip:hims.net SIP/2.0\r\nMax-Forwards: 70\r\n{headers}");
    let challenge = format!("SIP/2.0 401 Unauthorized\r\n{headers}");
    let naptr = |flags: u16| {
        let mut q = [0x12, 0x34].to_vec();
        q.extend_from_slice(&flags.to_be_bytes());
        q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(b"\x04hims\x03net\x00\x00\x23\x00\x01");
        q
    };
    let sid = avp(263, b"icscf;1");
    let ok = avp(268, &2001u32.to_be_bytes());
    let experimental = avp(
        297,
        &[
            avp(266, &10415u32.to_be_bytes()),
            avp(298, &2001u32.to_be_bytes()),
        ]
        .concat(),
    );
    let mut w = ims_testkit::pcap::PcapWriter::new();
    w.udp(ue, p, register.as_bytes());
    w.udp(ue, p, register.as_bytes()); // the same datagram seen twice
    w.udp(a("127.0.0.10:4000"), dns, &naptr(0x0100));
    w.udp(dns, a("127.0.0.10:4000"), &naptr(0x8183)); // NXDOMAIN
    let origin = |host: &[u8]| [avp(264, host), avp(296, b"hims.net")].concat();
    w.tcp(i, h, &diameter(257, true, 1, &[origin(b"icscf1.hims.net")]));
    w.tcp(
        h,
        i,
        &diameter(257, false, 1, &[ok, origin(b"hss1.hims.net")]),
    );
    w.tcp(i, h, &diameter(300, true, 2, std::slice::from_ref(&sid)));
    w.tcp(h, i, &diameter(300, false, 2, &[sid, experimental]));
    w.udp(p, ue, challenge.as_bytes());
    let dir = ims_testkit::scratch_dir("cli-ladder");
    let pcap = dir.join("lab.pcap");
    w.write(&pcap).unwrap();

    let ladder = |args: &[&str]| {
        Command::new(IMSCTL)
            .arg("ladder")
            .arg(&pcap)
            .args(args)
            .output()
            .unwrap()
    };
    let out = ladder(&[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "sequenceDiagram
    participant n127_0_0_1 as 127.0.0.1
    participant P_CSCF as P-CSCF
    participant DNS
    participant I_CSCF as I-CSCF
    participant HSS
    n127_0_0_1->>P_CSCF: REGISTER (1)
    P_CSCF->>DNS: NAPTR? hims.net
    DNS->>P_CSCF: NAPTR hims.net: NXDOMAIN
    I_CSCF->>HSS: UAR
    HSS->>I_CSCF: UAA 2001
    P_CSCF->>n127_0_0_1: 401 Unauthorized (REGISTER)
"
    );
    let out = ladder(&["--all", "--name", "127.0.0.1=UE"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("    participant UE\n"), "{text}");
    assert!(
        text.contains("    I_CSCF->>HSS: CER\n    HSS->>I_CSCF: CEA 2001\n    I_CSCF->>HSS: UAR\n"),
        "{text}"
    );
    let svg_file = dir.join("lab.svg");
    let out = ladder(&["--format", "svg", "-o", svg_file.to_str().unwrap()]);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    let svg = std::fs::read_to_string(&svg_file).unwrap();
    assert_eq!(svg.matches("class=\"msg\"").count(), 6, "{svg}");
    assert!(svg.contains(">401 Unauthorized (REGISTER)</text>"), "{svg}");

    // What goes wrong: one line, exit 2.
    let one_line_exit_2 = |out: std::process::Output, says: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{err}");
    };
    one_line_exit_2(
        Command::new(IMSCTL)
            .args(["ladder", "--tshark", "/nonexistent/tshark"])
            .arg(&pcap)
            .output()
            .unwrap(),
        "/nonexistent/tshark not found",
    );
    one_line_exit_2(ladder_of(&dir.join("missing.pcap")), "cannot read");
    let not_pcap = dir.join("not.pcap");
    std::fs::write(&not_pcap, "not a capture\n").unwrap();
    one_line_exit_2(ladder_of(&not_pcap), "tshark cannot read");
    // A bad flag is clap's usage error (exit 2, with a hint line).
    let out = Command::new(IMSCTL)
        .args(["ladder", "--name", "pcscf=P"])
        .arg(&pcap)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("`pcscf` is not an IP address"));
}

fn ladder_of(pcap: &std::path::Path) -> std::process::Output {
    Command::new(IMSCTL)
        .arg("ladder")
        .arg(pcap)
        .output()
        .unwrap()
}

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
    let lab = std::fs::read_to_string(LAB_DNS).unwrap();
    let dir = ims_testkit::scratch_dir("cli");
    let cfg = dir.join("dns.toml");
    std::fs::write(
        &cfg,
        lab.replace("127.0.0.50:10053", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let mut child = Command::new(DNS)
        .args(["--log-format", "json", "-c"])
        .arg(&cfg)
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

//! The README's first command: `scripts/lab` starts the whole IMS core on one host (each
//! daemon on its 127.0.0.x address, SQLite, demo subscribers), and UEs register against it:
//! alice with AKA, bob with SIP Digest over TCP. Run in a namespace of its own so that it
//! never meets a developer's lab on the host's loopback. Also what a person debugging a
//! registration sees: `ims-ue --verbose`'s steps, a UE whose OP differs from the HSS's
//! (its USIM refuses AUTN: one S-CSCF log line names the cause, `imsctl subscriber show`
//! has the HSS's last authentication). And the soak's one-minute version (issue #20):
//! `scripts/soak` at a small scale, judged as at full scale.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ims_testkit::netns::Topology;

#[test]
fn scripts_lab_runs_the_core_and_ues_register() {
    let test = "scripts_lab_runs_the_core_and_ues_register";
    if !ims_testkit::require_root(test) {
        return;
    }
    let mut topo = Topology::new("labsh");
    topo.add_node("lab", "10.10.9.2/24", "fd00:10:9::2/64");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_hss")).parent().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let state = topo.dir().join("state");
    let mut cmd = Command::new(root.join("scripts/lab"));
    cmd.arg("--bin-dir")
        .arg(bin_dir)
        .env("IMS_LAB_STATE", &state);
    let mut lab = topo.spawn("lab", &cmd);
    let t0 = Instant::now();
    while !lab.log().contains("the IMS core is running") {
        assert!(
            lab.try_wait().is_none() && t0.elapsed() < Duration::from_secs(30),
            "scripts/lab did not come up:\n{}",
            lab.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ue = bin_dir.join("ims-ue").to_string_lossy().into_owned();
    let alice = topo.run(
        "lab",
        &[
            &ue,
            "--pcscf",
            "127.0.0.10:5060",
            "--impi",
            "alice@hims.net",
            "--k",
            "465b5ce8b199b49faa5f0a2ee238a6bc",
            "--op",
            "cdc202d5123e20f62b6d676ac72cb318",
            "--deregister",
            "--verbose",
        ],
    );
    let text = String::from_utf8_lossy(&alice.stdout).into_owned();
    let steps = String::from_utf8_lossy(&alice.stderr).into_owned();
    assert!(alice.status.success(), "{text}\n{steps}");
    assert!(
        text.contains("REGISTER expires=600: 200") && text.contains("REGISTER expires=0: 200"),
        "{text}"
    );
    // --verbose: every step, in order, on stderr.
    let lines: Vec<&str> = steps.lines().collect();
    let expected = [
        "ims-ue: REGISTER sent to 127.0.0.10:5060 (CSeq 1, expires 600)",
        "ims-ue: challenge received: AKAv1-MD5, realm hims.net",
        "ims-ue: AUTN verified (MAC good, SQN fresh)",
        "ims-ue: RES sent",
        "ims-ue: REGISTER sent to 127.0.0.10:5060 (CSeq 2, expires 600)",
        "ims-ue: registered until ",
        "ims-ue: REGISTER sent to 127.0.0.10:5060 (CSeq 3, expires 0)",
        "ims-ue: challenge received: AKAv1-MD5, realm hims.net",
        "ims-ue: AUTN verified (MAC good, SQN fresh)",
        "ims-ue: RES sent",
        "ims-ue: REGISTER sent to 127.0.0.10:5060 (CSeq 4, expires 0)",
        "ims-ue: deregistered",
    ];
    assert_eq!(lines.len(), expected.len(), "{steps}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(want),
            "`{line}` is not `{want}...`:\n{steps}"
        );
    }
    assert!(
        lines[5].ends_with("Z (expires 600)"),
        "registered until an RFC 3339 time: {steps}"
    );

    // A USIM with another OP than the HSS's: it refuses AUTN (MAC failure) and says so with
    // an empty response; the S-CSCF names the cause in one line, the HSS records a failure.
    let wrong_op = topo.run(
        "lab",
        &[
            &ue,
            "--pcscf",
            "127.0.0.10:5060",
            "--impi",
            "alice@hims.net",
            "--k",
            "465b5ce8b199b49faa5f0a2ee238a6bc",
            "--op",
            "00000000000000000000000000000000",
            "--verbose",
        ],
    );
    let steps = String::from_utf8_lossy(&wrong_op.stderr).into_owned();
    assert!(!wrong_op.status.success(), "{steps}");
    for want in [
        "ims-ue: AUTN refused: MAC failure",
        "ims-ue: empty response (challenge deemed invalid) sent",
        "ims-ue: refused: 403",
        "error: network authentication failed",
    ] {
        assert!(steps.contains(want), "`{want}` in:\n{steps}");
    }
    let scscf_log = std::fs::read_to_string(state.join("scscf.log")).unwrap();
    let causes: Vec<&str> = scscf_log
        .lines()
        .filter(|l| l.contains("USIM rejected AUTN (MAC failure)"))
        .collect();
    assert_eq!(causes.len(), 1, "{scscf_log}");
    assert!(
        causes[0].contains("alice@hims.net: UE sent an empty AKA response")
            && causes[0].contains("K or OPc at the HSS differ from the SIM's"),
        "{}",
        causes[0]
    );
    let imsctl = bin_dir.join("imsctl").to_string_lossy().into_owned();
    let shown = topo.run(
        "lab",
        &[
            &imsctl,
            "--url",
            "http://127.0.0.40:8080",
            "subscriber",
            "show",
            "alice@hims.net",
        ],
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let last = &shown["last_authentication"];
    assert_eq!(last["outcome"], "failure", "{shown}");
    assert_eq!(last["scscf"], "sip:scscf1.hims.net:5060", "{shown}");
    assert_eq!(last["failures_in_a_row"], 1, "{shown}");
    let bob = topo.run(
        "lab",
        &[
            &ue,
            "--pcscf",
            "127.0.0.10:5060",
            "--impi",
            "bob@hims.net",
            "--password",
            "bob-secret",
            "--transport",
            "tcp",
        ],
    );
    assert!(
        bob.status.success(),
        "{}",
        String::from_utf8_lossy(&bob.stdout)
    );
    // Who is registered now (alice deregistered, bob stays): the HSS's view joined with the
    // S-CSCF's (its admin API): the S-CSCF, the P-CSCF of bob's Path, until when.
    let regs = topo.run(
        "lab",
        &[
            &imsctl,
            "--url",
            "http://127.0.0.40:8080",
            "registrations",
            "--scscf",
            "http://127.0.0.30:8080",
        ],
    );
    assert!(
        regs.status.success(),
        "{}",
        String::from_utf8_lossy(&regs.stderr)
    );
    let regs: serde_json::Value = serde_json::from_slice(&regs.stdout).unwrap();
    let rows = regs["registrations"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{regs}");
    let bob_row = &rows[0];
    assert_eq!(bob_row["impu"], "sip:bob@hims.net", "{regs}");
    assert_eq!(bob_row["impi"], "bob@hims.net", "{regs}");
    assert_eq!(bob_row["scscf"], "sip:scscf1.hims.net:5060", "{regs}");
    assert_eq!(bob_row["pcscf"], "pcscf1.vims.net:5060", "{regs}");
    assert!(
        bob_row["until"].as_str().is_some_and(|u| u.ends_with('Z')),
        "{regs}"
    );
    assert!(bob_row.get("held_by").is_none(), "{regs}");
    // Without the S-CSCF's view: who and where, the rest unknown.
    let hss_only = topo.run(
        "lab",
        &[&imsctl, "--url", "http://127.0.0.40:8080", "registrations"],
    );
    let hss_only: serde_json::Value = serde_json::from_slice(&hss_only.stdout).unwrap();
    assert_eq!(hss_only["registrations"][0]["impu"], "sip:bob@hims.net");
    assert!(
        hss_only["registrations"][0]["until"].is_null(),
        "{hss_only}"
    );
    // Wrong password: 403, exit code 1.
    let eve = topo.run(
        "lab",
        &[
            &ue,
            "--pcscf",
            "127.0.0.10:5060",
            "--impi",
            "bob@hims.net",
            "--password",
            "nope",
        ],
    );
    assert!(!eve.status.success());
    assert!(String::from_utf8_lossy(&eve.stdout).contains(": 403"));
    // Ctrl-C stops every daemon.
    lab.signal(nix::sys::signal::Signal::SIGINT);
    assert!(
        lab.wait_timeout(Duration::from_secs(10)).is_some(),
        "scripts/lab did not stop"
    );
    assert!(lab.log().contains("ims-lab: stopped"), "{}", lab.log());
    for log in ["hss", "scscf", "icscf", "pcscf", "ims-dns"] {
        assert!(state.join(format!("{log}.log")).is_file(), "{log}.log");
    }
}

/// The soak's short version (issue #20; the full one, `scripts/soak`, runs 100,000 UEs for 10
/// minutes by default, figures in docs/PERFORMANCE.md): 2,000 UEs, each from its own flow,
/// register with Expires 20-30 s, re-register once at half of it and let the registration
/// expire, then register anew, for 90 s (a warm-up of one cycle, ~55 s, then ~35 s of steady
/// state) against the real daemons of `scripts/lab`. The script judges: every daemon's RSS
/// bounded after the warm-up (within 30%), file descriptors and threads not growing, the
/// S-CSCF holding what the UEs hold (an expiry left undone shows as more), and after the load
/// the S-CSCF, the P-CSCF and the HSS holding no registration and no transaction, at most 1%
/// of the registrations failed and at most 25% refused with 503 (overload: a shared machine). In a
/// namespace of its own, so that it never meets a developer's lab on the host's loopback.
#[test]
fn soak_expires_every_registration_and_leaks_nothing() {
    let test = "soak_expires_every_registration_and_leaks_nothing";
    if !ims_testkit::require_root(test) || ims_testkit::require_tool(test, "python3").is_none() {
        return;
    }
    let mut topo = Topology::new("soak");
    topo.add_node("lab", "10.10.9.2/24", "fd00:10:9::2/64");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_hss")).parent().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let state = topo.dir().join("state");
    let json = topo.dir().join("soak.json");
    let mut cmd = Command::new(root.join("scripts/soak"));
    cmd.args([
        "--ues",
        "2000",
        "--minutes",
        "1.5",
        "--expires",
        "20-30",
        "--interval",
        "2",
        // Debug binaries on a machine the other tests share: the P-CSCF's overload control
        // may refuse bursts with 503 (CI saw 402 of 7,012 while a kill-under-load test ran
        // beside it; .config/nextest.toml now keeps those apart). A refused UE lets its
        // registration expire, which is still judged. Any other failure (a timeout, a 4xx
        // or 5xx but 503) counts against 1%.
        "--max-failures",
        "1",
        "--max-refused",
        "25",
        // 35 s of steady state in debug builds: the P-CSCF's RSS was seen to wander by 16%
        // (flat over 10 minutes at full scale); a leak of what 2,000 UEs churn through still
        // shows (and fails 'held' and 'expiry' too).
        "--rss-bound",
        "30",
    ])
    .arg("--bin-dir")
    .arg(bin_dir)
    .arg("--state")
    .arg(&state)
    .arg("--json")
    .arg(&json);
    let mut soak = topo.spawn("lab", &cmd);
    let status = soak.wait_timeout(Duration::from_secs(420));
    let log = soak.log();
    let status = status.unwrap_or_else(|| panic!("the soak did not end within 420 s:\n{log}"));
    eprintln!("{log}");
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json)
            .unwrap_or_else(|e| panic!("the soak wrote no {}: {e}\n{log}", json.display())),
    )
    .unwrap();
    assert!(status.success(), "the soak failed:\n{log}");
    for name in [
        "rss", "fds", "threads", "held", "expiry", "failures", "refused",
    ] {
        assert_eq!(
            j["judgements"][name]["ok"], true,
            "{name}: {}",
            j["judgements"]
        );
    }
    // The notes that point at a failed judgement's cause are in the report.
    for name in ["udp", "disk", "slow"] {
        assert!(j["notes"][name].is_string(), "note {name}: {}", j["notes"]);
    }
    // The expiries happened all along, not only at the end: subscribers registered anew
    // (more first registrations than subscribers) while the S-CSCF never held more than one
    // registration per subscriber.
    let summaries = j["summaries"].as_array().unwrap();
    let registered: u64 = summaries
        .iter()
        .map(|s| s["registered"].as_u64().unwrap())
        .sum();
    assert!(registered > 3000, "{registered} first registrations");
    let samples = j["samples"].as_array().unwrap();
    let held_max = samples
        .iter()
        .map(|s| s["s_regs"].as_i64().unwrap())
        .max()
        .unwrap();
    assert!(
        (1000..=2000).contains(&held_max),
        "S-CSCF held {held_max} at most"
    );
    assert!(samples.len() >= 40, "{} samples", samples.len());
    assert_eq!(j["final"]["s_regs"], 0, "{}", j["final"]);
    assert_eq!(j["final"]["hss"], 0, "{}", j["final"]);
}

//! The README's first command: `scripts/lab` starts the whole IMS core on one host (each
//! daemon on its 127.0.0.x address, SQLite, demo subscribers), and UEs register against it:
//! alice with AKA, bob with SIP Digest over TCP. Run in a namespace of its own so that it
//! never meets a developer's lab on the host's loopback.
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
        ],
    );
    let text = String::from_utf8_lossy(&alice.stdout).into_owned();
    assert!(
        alice.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&alice.stderr)
    );
    assert!(
        text.contains("REGISTER expires=600: 200") && text.contains("REGISTER expires=0: 200"),
        "{text}"
    );
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

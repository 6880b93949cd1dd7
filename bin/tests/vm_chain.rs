//! The whole IMS chain in a kernel that has ESP: `tests/vm/ims-vm` builds the daemons and tools
//! statically (cached in target/vm/cargo), boots Debian's cloud kernel in QEMU (software
//! emulation) with them in its initramfs, and runs `tests/vm/ims-chain.sh` there: the UE in
//! one network namespace, the P-CSCF and the home network in another, joined by a veth pair.
//! The P-CSCF's startup probe must find ESP, UEs register and deregister with AKA and SIP
//! Digest (UDP, TCP, IPv6) without IPsec, a wrong password gets 403, and then with IPsec
//! (TS 33.203) between the UE and the P-CSCF:
//! - a UE whose SAs iproute2 installs (`tests/vm/ue-xfrm-hook.sh`, written from the spec, not
//!   from our code) and `ims-ue` with its own netlink SAs (over UDP, and over TCP from its
//!   protected client port, and over IPv6) register and deregister through their SAs: four SAs and policies on each side while registered, none after, and
//!   ESP packets counted by the kernel on both sides;
//! - a second REGISTER with a Security-Verify or Security-Client other than agreed gets 494,
//!   and the SAs of that attempt go on both sides;
//! - a UE that comes back from new ports leaves exactly the four SAs of its new registration;
//! - a deregistration by the network (the HSS's RTR) removes the UE's SAs at the P-CSCF at
//!   once (the S-CSCF's reg event NOTIFY to the P-CSCF's own subscription);
//! - a capture on the veth holds ESP and no clear SIP on the protected ports;
//! - 50 UEs register at once, each with its four SAs (200 on each side), and are all cleaned
//!   up after deregistering;
//! - a P-CSCF killed with SAs installed leaves them to the next one, which removes them at
//!   start; one stopped with SIGTERM removes its own;
//! - with `ipsec.mode = "required"`, a UE without sec-agree gets 421, a SIP Digest UE 403, an
//!   AKA UE registers through IPsec;
//! - and no xfrm state or policy is left in either namespace at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The name ends in `real_esp_kernel`: .config/nextest.toml gives such tests more time.
#[test]
fn whole_ims_chain_registers_in_a_real_esp_kernel() {
    let test = "whole_ims_chain_registers_in_a_real_esp_kernel";
    if !ims_testkit::require_root(test) {
        return;
    }
    for tool in ["qemu-system-x86_64", "ip", "cpio", "depmod", "readelf"] {
        if ims_testkit::require_tool(test, tool).is_none() {
            return;
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let t0 = Instant::now();
    let out = Command::new(root.join("tests/vm/ims-vm")).output().unwrap();
    // The serial console ends lines with \r\n.
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}\n{console}\nims-vm took {:?}", t0.elapsed());
    assert!(
        console.contains("VM-KERNEL"),
        "the VM did not boot: {stderr}"
    );
    let failed: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("VM-STEP ") && l.contains(": FAIL"))
        .collect();
    assert!(failed.is_empty(), "failed steps in the VM: {failed:#?}");
    let ipsec = console
        .lines()
        .find(|l| l.starts_with("VM-PCSCF-IPSEC:"))
        .expect("the P-CSCF's IPsec line");
    assert!(
        ipsec.contains("IPsec available"),
        "the P-CSCF's probe must find ESP in this kernel: {ipsec}"
    );
    for ue in ["aka", "digest", "digest-tcp", "aka-v6"] {
        for expires in [600, 0] {
            let line = format!("VM-UE-{ue}: REGISTER expires={expires}: 200");
            assert!(console.contains(&line), "missing `{line}`");
        }
    }
    assert!(
        console.contains("VM-UE-wrong-password: REGISTER expires=600: 403"),
        "a wrong password gets 403"
    );
    // IPsec.
    let value = |prefix: &str| -> String {
        console
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line"))
            .trim()
            .to_owned()
    };
    for ue in ["hook", "own", "tcp", "v6", "newport2"] {
        for expires in [600, 0] {
            let line = format!("VM-UE-{ue}: REGISTER expires={expires}: 200 (");
            let got = console
                .lines()
                .find(|l| l.starts_with(&line))
                .unwrap_or_else(|| panic!("missing `{line}`"));
            assert!(got.ends_with(", IPsec)"), "not through IPsec: {got}");
        }
    }
    // The reg event through the P-CSCF: SUBSCRIBE from the UE, the NOTIFY toward it by our
    // Record-Route; with IPsec the NOTIFY crosses SA2 and its 200 SA4, so all four SAs
    // carried packets.
    assert!(
        console.contains(
            "VM-UE-aka: SUBSCRIBE reg (fetch): 200, NOTIFY terminated;reason=timeout, registration active\n"
        ),
        "a reg-event fetch without IPsec"
    );
    assert!(
        console.contains(
            "VM-UE-own: SUBSCRIBE reg (fetch): 200, NOTIFY terminated;reason=timeout, registration active, IPsec\n"
        ),
        "a reg-event fetch through the SAs"
    );
    assert!(
        console.contains(
            "VM-UE-tcp: SUBSCRIBE reg (fetch): 200, NOTIFY terminated;reason=timeout, registration active, IPsec\n"
        ),
        "a reg-event fetch through the SAs over TCP (the NOTIFY on a connection from port_pc)"
    );
    let per_sa = value("VM-ESP-SAS-own:");
    let counts: Vec<u64> = per_sa
        .split_whitespace()
        .map(|kv| kv.split('=').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 4, "{per_sa}");
    assert!(
        counts.iter().all(|&n| n > 0),
        "every SA carried packets: {per_sa}"
    );
    // A refresh through the SAs: not challenged (the P-CSCF vouches, integrity-protected).
    assert!(
        console.contains("VM-UE-own: REGISTER expires=600: 200 (0 challenge(s), IPsec)"),
        "the refresh goes through the SAs unchallenged"
    );
    for label in ["hook", "own", "tcp", "v6", "newport"] {
        assert_eq!(
            value(&format!("VM-SAS-{label}:")),
            "core=4/4 ue=4/4",
            "{label}: exactly four SAs and policies on each side while registered"
        );
        assert_eq!(
            value(&format!("VM-SAS-AFTER-{label}:")),
            "core=0/0 ue=0/0",
            "{label}: nothing left after deregistration"
        );
    }
    for label in ["hook", "own", "tcp", "v6"] {
        let esp = value(&format!("VM-ESP-{label}:"));
        let packets: Vec<u64> = esp
            .split_whitespace()
            .map(|kv| kv.split('=').nth(1).unwrap().parse().unwrap())
            .collect();
        // The second REGISTER and the deregistration in, their 200s out: at least 2 each way.
        assert!(
            packets.iter().all(|&n| n >= 2),
            "{label}: ESP counters: {esp}"
        );
    }
    for (t, code) in [("verify", 494), ("client", 494), ("res", 403)] {
        assert!(
            console.contains(&format!(
                "VM-UE-tamper-{t}: REGISTER expires=600: {code} (1 challenge(s), IPsec)"
            )),
            "a tampered {t} gets {code} through the SAs"
        );
        assert_eq!(
            value(&format!("VM-SAS-AFTER-tamper-{t}:")),
            "core=0/0 ue=0/0",
            "the SAs of a refused attempt go"
        );
    }
    // The 200 OK extended the SAs and policies from reg-await-auth (240 s) to the registration
    // (600 s) plus the margin.
    for label in ["hook", "own"] {
        let lifetimes = value(&format!("VM-LIFETIME-{label}:"));
        let secs: Vec<u64> = lifetimes
            .split_whitespace()
            .filter(|w| *w != "/")
            .map(|w| w.parse().unwrap())
            .collect();
        assert_eq!(secs.len(), 8, "{label}: 4 SAs and 4 policies: {lifetimes}");
        assert!(
            secs.iter().all(|&s| (600..=700).contains(&s)),
            "{label}: hard lifetimes {lifetimes}"
        );
    }
    // A deregistration by the network: the reg event NOTIFY to the P-CSCF's subscription
    // removes the UE's SAs at once.
    assert_eq!(value("VM-SAS-rtr:"), "core=4/4");
    assert_eq!(value("VM-SAS-AFTER-rtr:"), "core=0/0");
    assert!(console.contains("VM-STEP SAs gone when the network deregistered the UE: ok"));
    // Expiry: four SAs while registered for 3 s, none a few seconds later.
    assert_eq!(value("VM-SAS-expiry:"), "core=4/4");
    assert!(console.contains("VM-STEP SAs gone when the registration expired: ok"));
    // Back from the same ports: the old set replaced, not doubled.
    assert!(console.contains("VM-UE-sameport: REGISTER expires=600: 200 (1 challenge(s), IPsec)"));
    assert_eq!(value("VM-SAS-sameport:"), "core=4/4");
    // A clear REGISTER at the protected server port, from a port no SA covers: dropped by the
    // P-CSCF (no answer, one log line), the registered UE's SAs unharmed.
    assert!(
        console.contains("VM-STEP clear REGISTER at the protected port dropped: ok"),
        "the clear REGISTER at the protected port was not shown dropped"
    );
    assert!(console.contains("VM-STEP ue guarded: ok"));
    // Restarts: a killed P-CSCF's SAs stay in the kernel until the next one starts; a stopped
    // one removes its own.
    assert_eq!(value("VM-SAS-before-kill:"), "core=4/4");
    assert_eq!(value("VM-SAS-killed:"), "core=4/4");
    assert_eq!(value("VM-SAS-restarted:"), "core=0/0");
    assert_eq!(value("VM-SAS-before-stop:"), "core=4/4");
    assert_eq!(value("VM-SAS-stopped:"), "core=0/0");
    // ipsec.mode = "required".
    assert!(console.contains("VM-UE-required-plain: REGISTER expires=600: 421"));
    assert!(console.contains("VM-UE-required-digest: REGISTER expires=600: 403"));
    for expires in [600, 0] {
        let line = format!("VM-UE-required-aka: REGISTER expires={expires}: 200 (");
        assert!(
            console
                .lines()
                .any(|l| l.starts_with(&line) && l.ends_with(", IPsec)")),
            "missing `{line}... IPsec)`"
        );
    }
    assert_eq!(value("VM-SAS-AFTER-required:"), "core=0/0 ue=0/0");
    let capture = value("VM-CAPTURE:");
    let field = |name: &str| -> u64 {
        capture
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in `{capture}`"))
            .parse()
            .unwrap()
    };
    // hook, own, newport2: 2 REGISTERs and 2 responses each through ESP; tcp: more (the
    // handshake too); the others at least 2.
    assert!(field("esp") >= 20, "ESP on the veth: {capture}");
    assert_eq!(
        field("clear-protected"),
        0,
        "clear SIP on the protected ports: {capture}"
    );
    assert!(
        field("clear-5060") >= 8,
        "the first REGISTERs and 401s in clear: {capture}"
    );
    assert_eq!(
        value("VM-SAS-50:"),
        "core=200/200 ue=200/200 registered=50",
        "50 UEs at once, four SAs each"
    );
    assert_eq!(value("VM-50-UES:"), "ok=50 deregistered=50");
    assert_eq!(value("VM-SAS-AFTER-50:"), "core=0/0 ue=0/0");
    assert!(
        console.contains("VM-XFRM-LEFT-UE: 0 0\n"),
        "the UE namespace has xfrm states/policies"
    );
    assert!(
        console.contains("VM-XFRM-LEFT-CORE: 0 0\n"),
        "the core namespace has xfrm states/policies left"
    );
    // Pager mode between two IPsec UEs: alice's MESSAGE answered 200 through her SAs,
    // delivered to carol at her protected server port (through her SAs).
    assert!(
        console.contains("VM-UE-imcaller: MESSAGE to sip:carol@hims.net: 200, IPsec\n"),
        "{console}"
    );
    assert!(
        console.contains("VM-UE-imcallee: MESSAGE from sip:alice@hims.net: hello carol, IPsec\n"),
        "{console}"
    );
    assert!(console.contains("VM-RESULT: PASS"));
    assert!(console.contains("\nVM-DONE"), "the scenario did not finish");
    assert!(out.status.success(), "ims-vm failed: {:?}", out.status);
}

//! The whole IMS chain in a kernel that has ESP: `tests/vm/ims-vm` builds the daemons and tools
//! statically (cached in target/vm/cargo), boots Debian's cloud kernel in QEMU (software
//! emulation) with them in its initramfs, and runs `tests/vm/ims-chain.sh` there: the UE in
//! one network namespace, the P-CSCF and the home network in another, joined by a veth pair.
//! The P-CSCF's startup probe must find ESP, UEs register and deregister with AKA and SIP
//! Digest (UDP, TCP, IPv6), a wrong password gets 403, and no xfrm state or policy is left.
//! (No IPsec between UE and P-CSCF yet: this is the harness that will show it.)
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
    assert!(
        console.contains("VM-XFRM-LEFT-UE: 0 0\n"),
        "the UE namespace has xfrm states/policies"
    );
    assert!(
        console.contains("VM-XFRM-LEFT-CORE: 0 0\n"),
        "the core namespace has xfrm states/policies left"
    );
    assert!(console.contains("VM-RESULT: PASS"));
    assert!(console.contains("\nVM-DONE"), "the scenario did not finish");
    assert!(out.status.success(), "ims-vm failed: {:?}", out.status);
}

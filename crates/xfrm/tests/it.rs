//! ims-xfrm against its judges: iproute2's own netlink requests (committed fixtures, and a
//! live capture with strace when root and strace are there), and the host kernel in a
//! throwaway network namespace (policies install, list and delete; an ESP SA is accepted or
//! refused exactly when iproute2's identical request is).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;

use ims_xfrm::msg;
use ims_xfrm::{AuthAlg, Direction, EncAlg, PolicySpec, SaId, SaSpec, XfrmError, XfrmSocket};
use zeroize::Zeroizing;

const IK_SHA1: &str = "f769bcd751044604127672711c6d344100000000";
const CK_AES: &str = "b40ba9a3c58b2a05bbf0d987b21bf8cb";
const MARKER: u32 = 0x1a5e_c0de;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let hex_line = text.lines().find(|l| !l.starts_with('#')).unwrap();
    hex::decode(hex_line.trim()).unwrap()
}

fn sa(src: &str, dst: &str, auth: AuthAlg, ak: &str, enc: EncAlg, ek: &str, marker: u32) -> SaSpec {
    SaSpec {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        spi: 0x1000,
        reqid: 4096,
        auth,
        auth_key: Zeroizing::new(hex::decode(ak).unwrap()),
        enc,
        enc_key: Zeroizing::new(hex::decode(ek).unwrap()),
        marker,
        hard_expires_secs: 0,
        replay_window: 32,
    }
}

fn policy(src: &str, dst: &str, dir: Direction, marker: u32) -> PolicySpec {
    PolicySpec {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        dir,
        priority: 2080,
        reqid: 4096,
        marker,
        hard_expires_secs: 0,
    }
}

/// The payload after the nlmsghdr, with a check of the header's type and flags.
fn payload(req: &[u8], want_type: u16) -> &[u8] {
    assert_eq!(
        u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize,
        req.len()
    );
    assert_eq!(u16::from_ne_bytes(req[4..6].try_into().unwrap()), want_type);
    // NLM_F_REQUEST | NLM_F_ACK, as iproute2 sends.
    assert_eq!(
        u16::from_ne_bytes(req[6..8].try_into().unwrap()),
        0x0001 | 0x0004
    );
    &req[16..]
}

#[test]
fn requests_equal_iproute2_fixtures() {
    let s = sa(
        "10.0.0.1:5062",
        "10.0.0.2:5063",
        AuthAlg::HmacSha1_96,
        IK_SHA1,
        EncAlg::AesCbc,
        CK_AES,
        0,
    );
    assert_eq!(
        payload(&msg::new_sa(&s, 1).unwrap(), 0x10),
        fixture("newsa_v4_sha1_aes")
    );
    let p = policy("10.0.0.1:5062", "10.0.0.2:5063", Direction::Out, 0);
    assert_eq!(
        payload(&msg::new_policy(&p, 1).unwrap(), 0x13),
        fixture("newpolicy_v4_out")
    );
    assert_eq!(
        payload(&msg::delete_policy(&p, 1).unwrap(), 0x14),
        fixture("delpolicy_v4_out")
    );
    let id = SaId {
        src: "10.0.0.1".parse().unwrap(),
        dst: "10.0.0.2".parse().unwrap(),
        spi: 0x1000,
    };
    assert_eq!(
        payload(&msg::delete_sa(&id, 1).unwrap(), 0x11),
        fixture("delsa_v4")
    );
    // The marker is the only change we make to iproute2's bytes: the selector's user field.
    let marked = msg::new_policy(
        &policy("10.0.0.1:5062", "10.0.0.2:5063", Direction::Out, 7),
        1,
    )
    .unwrap();
    let diff: Vec<usize> = payload(&marked, 0x13)
        .iter()
        .zip(fixture("newpolicy_v4_out"))
        .enumerate()
        .filter(|(_, (a, b))| **a != *b)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        diff,
        vec![52],
        "only the selector's user field (offset 52) differs"
    );
}

/// Runs `ip args` under strace and returns the payload of its one netlink request.
fn strace_ip(args: &[&str], tag: &str) -> Vec<u8> {
    let dir = ims_testkit::scratch_dir("xfrm-strace");
    let out = dir.join(format!("{tag}.strace"));
    let st = Command::new("strace")
        .args(["-f", "-e", "trace=sendmsg", "-xx", "-s", "8192", "-o"])
        .arg(&out)
        .arg("ip")
        .args(args)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let start = text
        .find("nlmsg_pid=0}, \"")
        .unwrap_or_else(|| panic!("no netlink request in strace of ip {args:?}: {text} {st:?}"))
        + "nlmsg_pid=0}, \"".len();
    let end = start + text[start..].find('"').unwrap();
    hex::decode(text[start..end].replace("\\x", "")).unwrap()
}

/// Moves this test's thread into a fresh network namespace (children it spawns follow).
fn fresh_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(st.success());
}

fn have_root_and(test: &str, tools: &[&str]) -> bool {
    if !ims_testkit::require_root(test) {
        return false;
    }
    tools
        .iter()
        .all(|t| ims_testkit::require_tool(test, t).is_some())
}

#[test]
fn requests_equal_live_iproute2_v4_and_v6() {
    if !have_root_and("xfrm_live_iproute2", &["strace", "ip"]) {
        return;
    }
    fresh_netns();
    let cases = [
        (
            "10.1.2.3",
            "10.9.8.7",
            AuthAlg::HmacMd5_96,
            &IK_SHA1[..32],
            EncAlg::DesEde3Cbc,
            "b40ba9a3c58b2a05bbf0d987b21bf8cbb40ba9a3c58b2a05",
        ),
        (
            "2001:db8::1",
            "2001:db8::2",
            AuthAlg::HmacSha1_96,
            IK_SHA1,
            EncAlg::AesCbc,
            CK_AES,
        ),
        (
            "2001:db8::1",
            "2001:db8::2",
            AuthAlg::HmacMd5_96,
            &IK_SHA1[..32],
            EncAlg::Null,
            "",
        ),
    ];
    for (i, (a, b, auth, ak, enc, ek)) in cases.into_iter().enumerate() {
        let (src, dst) = if a.contains(':') {
            (format!("[{a}]:5062"), format!("[{b}]:5063"))
        } else {
            (format!("{a}:5062"), format!("{b}:5063"))
        };
        let plen = if a.contains(':') { 128 } else { 32 };
        let enc_key = if ek.is_empty() {
            String::new()
        } else {
            format!("0x{ek}")
        };
        let want_sa = strace_ip(
            &[
                "xfrm",
                "state",
                "add",
                "src",
                a,
                "dst",
                b,
                "proto",
                "esp",
                "spi",
                "0x1000",
                "reqid",
                "4096",
                "mode",
                "transport",
                "replay-window",
                "32",
                "auth-trunc",
                auth.kernel_name(),
                &format!("0x{ak}"),
                "96",
                "enc",
                enc.kernel_name(),
                &enc_key,
                "sel",
                "src",
                &format!("{a}/{plen}"),
                "dst",
                &format!("{b}/{plen}"),
                "sport",
                "5062",
                "dport",
                "5063",
            ],
            &format!("sa{i}"),
        );
        let ours = msg::new_sa(&sa(&src, &dst, auth, ak, enc, ek, 0), 1).unwrap();
        assert_eq!(
            payload(&ours, 0x10),
            want_sa,
            "NEWSA case {i} differs from iproute2"
        );

        for (dir, word) in [(Direction::In, "in"), (Direction::Out, "out")] {
            let want_pol = strace_ip(
                &[
                    "xfrm",
                    "policy",
                    "add",
                    "src",
                    &format!("{a}/{plen}"),
                    "dst",
                    &format!("{b}/{plen}"),
                    "sport",
                    "5062",
                    "dport",
                    "5063",
                    "dir",
                    word,
                    "priority",
                    "2080",
                    "tmpl",
                    "src",
                    a,
                    "dst",
                    b,
                    "proto",
                    "esp",
                    "reqid",
                    "4096",
                    "mode",
                    "transport",
                ],
                &format!("pol{i}{word}"),
            );
            let p = policy(&src, &dst, dir, 0);
            let ours = msg::new_policy(&p, 1).unwrap();
            assert_eq!(
                payload(&ours, 0x13),
                want_pol,
                "NEWPOLICY case {i} {word} differs"
            );
            // `ip xfrm policy update` sends the same body as XFRM_MSG_UPDPOLICY (0x19).
            let mut upd_args = vec!["xfrm", "policy", "update"];
            let sel_src = format!("{a}/{plen}");
            let sel_dst = format!("{b}/{plen}");
            upd_args.extend([
                "src",
                &sel_src,
                "dst",
                &sel_dst,
                "sport",
                "5062",
                "dport",
                "5063",
                "dir",
                word,
                "priority",
                "2080",
                "tmpl",
                "src",
                a,
                "dst",
                b,
                "proto",
                "esp",
                "reqid",
                "4096",
                "mode",
                "transport",
            ]);
            let want_upd = strace_ip(&upd_args, &format!("upd{i}{word}"));
            let ours = msg::update_policy(&p, 1).unwrap();
            assert_eq!(
                payload(&ours, 0x19),
                want_upd,
                "UPDPOLICY case {i} {word} differs"
            );
        }
    }
}

fn ip_xfrm(args: &[&str]) -> std::process::Output {
    Command::new("ip").arg("xfrm").args(args).output().unwrap()
}

#[test]
fn policies_install_list_and_delete_on_the_host_kernel() {
    if !have_root_and("xfrm_host_policies", &["ip"]) {
        return;
    }
    fresh_netns();
    let mut x = XfrmSocket::open().unwrap();
    let ours = [
        policy("10.0.0.1:5062", "10.0.0.2:5063", Direction::Out, MARKER),
        policy("10.0.0.2:5063", "10.0.0.1:5062", Direction::In, MARKER),
        policy(
            "[2001:db8::1]:5062",
            "[2001:db8::2]:5063",
            Direction::Out,
            MARKER,
        ),
        policy(
            "[2001:db8::2]:5063",
            "[2001:db8::1]:5062",
            Direction::In,
            MARKER,
        ),
    ];
    for p in &ours {
        x.add_policy(p).unwrap();
    }
    // The same policy again is EEXIST, mapped.
    assert!(matches!(
        x.add_policy(&ours[0]),
        Err(XfrmError::Exists { .. })
    ));
    // An update replaces it in place: still one policy for that selector, with the new
    // lifetime.
    let longer = PolicySpec {
        hard_expires_secs: 7200,
        ..ours[0].clone()
    };
    x.update_policy(&longer).unwrap();
    let mine: Vec<_> = x
        .list_policies()
        .unwrap()
        .into_iter()
        .filter(|p| p.marker == MARKER)
        .collect();
    assert_eq!(mine.len(), ours.len(), "update added nothing");
    let stats = Command::new("ip")
        .args(["-s", "xfrm", "policy"])
        .output()
        .unwrap();
    let shown = String::from_utf8(stats.stdout).unwrap();
    assert!(shown.contains("hard 7200(sec)"), "{shown}");
    // iproute2 sees ours, with our ports, priority and template.
    let shown = String::from_utf8(ip_xfrm(&["policy"]).stdout).unwrap();
    assert!(
        shown.contains("src 10.0.0.1/32 dst 10.0.0.2/32 sport 5062 dport 5063"),
        "{shown}"
    );
    assert!(shown.contains("dir out priority 2080"), "{shown}");
    assert!(
        shown.contains("src 2001:db8::2/128 dst 2001:db8::1/128 sport 5063 dport 5062"),
        "{shown}"
    );
    assert!(
        shown.contains("proto esp reqid 4096 mode transport"),
        "{shown}"
    );

    // A foreign policy (someone else's, no marker) must survive our cleanup.
    let st = ip_xfrm(&[
        "policy",
        "add",
        "src",
        "10.5.5.5/32",
        "dst",
        "10.6.6.6/32",
        "dir",
        "out",
        "tmpl",
        "src",
        "10.5.5.5",
        "dst",
        "10.6.6.6",
        "proto",
        "esp",
        "mode",
        "transport",
    ]);
    assert!(st.status.success(), "{st:?}");

    let listed = x.list_policies().unwrap();
    assert_eq!(listed.iter().filter(|p| p.marker == MARKER).count(), 4);
    let out4 = listed
        .iter()
        .find(|p| p.marker == MARKER && p.dir == 1 && p.src.is_ipv4())
        .unwrap();
    assert_eq!(
        (out4.sport, out4.dport, out4.priority, out4.reqid),
        (5062, 5063, 2080, Some(4096))
    );

    // Delete one precisely, then the rest by marker.
    x.delete_policy(&ours[0]).unwrap();
    assert!(matches!(
        x.delete_policy(&ours[0]),
        Err(XfrmError::NotFound { .. })
    ));
    assert_eq!(x.remove_marked(MARKER).unwrap(), (0, 3));
    let left = x.list_policies().unwrap();
    assert_eq!(left.len(), 1, "only the foreign policy remains: {left:?}");
    assert_eq!(left[0].marker, 0);

    // Flush (for throwaway namespaces) empties the table, foreign entries included.
    let seq = 4242;
    let reply = send_raw(&ims_xfrm::msg::flush_policy(seq));
    assert!(reply.contains(&ims_xfrm::Reply::Ack { seq }), "{reply:?}");
    assert!(x.list_policies().unwrap().is_empty());
    let reply = send_raw(&ims_xfrm::msg::flush_sa(seq + 1));
    assert!(
        reply.contains(&ims_xfrm::Reply::Ack { seq: seq + 1 }),
        "{reply:?}"
    );
}

/// Sends one request on a fresh raw netlink socket and returns the decoded replies.
fn send_raw(req: &[u8]) -> Vec<ims_xfrm::Reply> {
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_XFRM};
    let mut s = Socket::new(NETLINK_XFRM).unwrap();
    s.bind_auto().unwrap();
    s.connect(&SocketAddr::new(0, 0)).unwrap();
    s.send(req, 0).unwrap();
    let mut buf = Vec::with_capacity(8192);
    s.recv(&mut buf, 0).unwrap();
    ims_xfrm::parse_replies(&buf).unwrap()
}

#[test]
fn esp_sa_verdict_matches_iproute2_on_this_kernel() {
    if !have_root_and("xfrm_host_sa", &["ip"]) {
        return;
    }
    fresh_netns();
    let st = ip_xfrm(&[
        "state",
        "add",
        "src",
        "10.0.0.1",
        "dst",
        "10.0.0.2",
        "proto",
        "esp",
        "spi",
        "0x2000",
        "mode",
        "transport",
        "auth-trunc",
        "hmac(sha1)",
        &format!("0x{IK_SHA1}"),
        "96",
        "enc",
        "cbc(aes)",
        &format!("0x{CK_AES}"),
    ]);
    let kernel_has_esp = st.status.success();
    if kernel_has_esp {
        assert!(ip_xfrm(&["state", "flush"]).status.success());
    } else {
        let err = String::from_utf8_lossy(&st.stderr);
        assert!(
            err.contains("Requested type not found"),
            "unexpected iproute2 error: {err}"
        );
    }
    let mut x = XfrmSocket::open().unwrap();
    let mut spec = sa(
        "10.0.0.1:5062",
        "10.0.0.2:5063",
        AuthAlg::HmacSha1_96,
        IK_SHA1,
        EncAlg::AesCbc,
        CK_AES,
        MARKER,
    );
    spec.hard_expires_secs = 240;
    match x.add_sa(&spec) {
        Ok(()) => {
            assert!(kernel_has_esp, "we installed an SA that iproute2 could not");
            let sas = x.list_sas().unwrap();
            assert_eq!(sas.len(), 1);
            let s = &sas[0];
            assert_eq!(
                (s.id.spi, s.sport, s.dport, s.marker),
                (0x1000, 5062, 5063, MARKER)
            );
            assert_eq!(s.hard_expires_secs, 240);
            assert_eq!(s.auth_alg.as_deref(), Some("hmac(sha1)"));
            assert_eq!(x.remove_marked(MARKER).unwrap(), (1, 0));
            assert!(x.list_sas().unwrap().is_empty());
        }
        Err(e @ XfrmError::EspUnsupported { .. }) => {
            assert!(
                !kernel_has_esp,
                "iproute2 installed an SA that we could not: {e}"
            );
            assert!(e.to_string().contains("without ESP"), "{e}");
            assert!(x.list_sas().unwrap().is_empty(), "nothing half-installed");
        }
        Err(e) => panic!("unexpected error installing an SA: {e}"),
    }
    // Deleting an SA that is not there says so.
    let id = SaId {
        src: "10.0.0.1".parse().unwrap(),
        dst: "10.0.0.2".parse().unwrap(),
        spi: 0x1000,
    };
    assert!(matches!(x.delete_sa(&id), Err(XfrmError::NotFound { .. })));
    let _: SocketAddr = spec.src;
}

/// The real proof that our SAs work: in a kernel with ESP (Debian's cloud kernel in QEMU),
/// the four TS 33.203 SAs installed by ims-xfrm on a UE and a P-CSCF namespace carry UDP and
/// TCP across a veth, over IPv4 and IPv6, and marker cleanup leaves nothing behind.
#[test]
fn esp_sas_carry_traffic_in_a_real_esp_kernel() {
    if !have_root_and(
        "xfrm_esp_vm",
        &["qemu-system-x86_64", "ip", "cpio", "depmod"],
    ) {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = root.join("target/vm/cargo");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(&root)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "ims-xfrm",
            "--example",
            "esp_probe",
        ])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .status()
        .unwrap();
    assert!(st.success(), "static build of the ESP probe failed");
    let probe = target.join("x86_64-unknown-linux-gnu/release/examples/esp_probe");
    let out = Command::new(root.join("tests/vm/esp-vm"))
        .arg(&probe)
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    eprintln!("{console}");
    assert!(
        console.contains("VM-KERNEL"),
        "the VM did not boot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !console.contains("ESP-PROBE FAIL"),
        "ESP probe failed in the VM"
    );
    assert_eq!(
        console.matches("ESP-PROBE PASS").count(),
        2,
        "IPv4 and IPv6 runs both pass"
    );
    // Every SA on each side reported a moving packet counter (the probe fails otherwise), and
    // nothing is left installed afterwards.
    assert_eq!(console.matches(" packets=").count(), 16);
    assert!(
        console.contains("VM-XFRM-LEFT-UE: 0 0"),
        "UE side left SAs/policies behind"
    );
    assert!(
        console.contains("VM-XFRM-LEFT-PCSCF: 0 0"),
        "P-CSCF side left SAs/policies behind"
    );
    assert_eq!(console.matches("lifetime extended to 3600 s").count(), 2);
    assert!(console.contains("VM-DONE"));
}

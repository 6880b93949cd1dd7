//! `ims_testkit::netns`: a four-node topology routes v4 and v6 through its router namespace,
//! carries UDP, captures on a node, and disappears on drop (also on panic, and after a crash
//! through `cleanup_stale`).

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use ims_testkit::netns::{Topology, cleanup_stale, list_namespaces};

fn tools(test: &str, tools: &[&str]) -> bool {
    if !ims_testkit::require_root(test) {
        return false;
    }
    tools
        .iter()
        .all(|t| ims_testkit::require_tool(test, t).is_some())
}

fn host_sysctl(key: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{key}"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn four_nodes_route_through_the_router() {
    if !tools(
        "four_nodes_route_through_the_router",
        &["ip", "bash", "tshark"],
    ) {
        return;
    }
    let host_before = (
        host_sysctl("net/ipv4/ip_forward"),
        host_sysctl("net/ipv6/conf/all/forwarding"),
    );
    let names;
    let sleeper_pid;
    {
        let mut topo = Topology::new("tkfour");
        topo.add_node("ue", "10.10.1.2/24", "fd00:10:1::2/64");
        topo.add_node("visited", "10.10.2.2/24", "fd00:10:2::2/64");
        topo.add_node("dns", "10.10.3.2/24", "fd00:10:3::2/64");
        topo.add_node("home", "10.10.4.2/24", "fd00:10:4::2/64");
        // A second daemon in 'home': one more address in the same subnet, one in a new one.
        topo.add_address("home", "10.10.4.3/24");
        topo.add_address("home", "10.10.5.3/24");
        topo.add_address("home", "fd00:10:4::3/64");
        names = topo.namespaces();
        assert_eq!(names.len(), 5);
        let listed = list_namespaces();
        for n in &names {
            assert!(listed.contains(n), "{n} exists");
        }
        assert_eq!(topo.node("home").v4().to_string(), "10.10.4.2");
        assert_eq!(topo.node("home").v6().to_string(), "fd00:10:4::2");

        let pcap = topo.dir().join("home.pcap");
        let cap = topo.capture("home", "any", &pcap);

        // A UDP listener inside 'home', bound from this test through setns.
        let sock = topo.enter("home", || UdpSocket::bind("10.10.4.2:9999").unwrap());
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let sock6 = topo.enter("home", || UdpSocket::bind("[fd00:10:4::3]:9999").unwrap());
        sock6
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();

        for (from, dst) in [
            ("ue", "10.10.4.2"),
            ("ue", "fd00:10:4::2"),
            ("ue", "10.10.4.3"),
            ("ue", "10.10.5.3"),
            ("ue", "fd00:10:4::3"),
            ("dns", "10.10.2.2"),
            ("home", "fd00:10:1::2"),
        ] {
            let out = topo.ping(from, dst);
            assert!(
                out.status.success(),
                "ping {dst} from {from}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // UDP from 'ue' with bash's /dev/udp (v4) and from a socket made inside 'ue' (v6).
        topo.run_ok(
            "ue",
            &["bash", "-c", "echo -n hello-home > /dev/udp/10.10.4.2/9999"],
        );
        let mut buf = [0u8; 64];
        let (n, from) = sock.recv_from(&mut buf).expect("datagram from ue");
        assert_eq!(&buf[..n], b"hello-home");
        assert_eq!(from.ip().to_string(), "10.10.1.2");
        topo.enter("ue", || {
            let s = UdpSocket::bind("[fd00:10:1::2]:0").unwrap();
            s.send_to(b"hello-v6", "[fd00:10:4::3]:9999").unwrap();
        });
        let (n, from) = sock6.recv_from(&mut buf).expect("v6 datagram from ue");
        assert_eq!(&buf[..n], b"hello-v6");
        assert_eq!(from.ip().to_string(), "fd00:10:1::2");

        // The namespaces are isolated from the host: its routes never lead into them.
        let host_route = Command::new("ip")
            .args(["-o", "route", "get", "10.10.4.2"])
            .output()
            .unwrap();
        let host_route = String::from_utf8_lossy(&host_route.stdout);
        assert!(
            !host_route.contains("r-home") && !host_route.contains("eth0 src 10.10."),
            "the host has no route into the topology: {host_route}"
        );

        // A long-running program in 'dns', left running for Drop to kill.
        let sleeper = topo.spawn("dns", Command::new("sleep").arg("300"));
        sleeper_pid = sleeper.id();
        let pids = String::from_utf8(
            Command::new("ip")
                .args(["netns", "pids", topo.ns("dns")])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert!(pids.lines().any(|l| l.trim() == sleeper_pid.to_string()));
        std::mem::forget(sleeper); // Topology's Drop must kill it by itself.

        let pcap = cap.stop();
        let out = Command::new("tshark")
            .args(["-n", "-r"])
            .arg(&pcap)
            .args([
                "-Y",
                "icmp.type == 8 || icmpv6.type == 128 || udp.port == 9999",
            ])
            .args([
                "-T", "fields", "-e", "ip.src", "-e", "ipv6.src", "-e", "ip.dst", "-e", "ipv6.dst",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for needle in [
            "10.10.1.2\t\t10.10.4.2",
            "\tfd00:10:1::2\t\tfd00:10:4::2",
            "10.10.5.3",
        ] {
            assert!(text.contains(needle), "capture has {needle:?}:\n{text}");
        }
    }
    let listed = list_namespaces();
    for n in &names {
        assert!(!listed.contains(n), "{n} deleted on drop");
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{sleeper_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{sleeper_pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true),
        "the process spawned in 'dns' was killed"
    );
    let host_after = (
        host_sysctl("net/ipv4/ip_forward"),
        host_sysctl("net/ipv6/conf/all/forwarding"),
    );
    assert_eq!(host_before, host_after, "host sysctls untouched");
}

#[test]
fn namespaces_go_away_when_the_test_panics() {
    if !tools("namespaces_go_away_when_the_test_panics", &["ip"]) {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::panic::catch_unwind(move || {
        let mut topo = Topology::new("tkpanic");
        topo.add_node("a", "10.20.1.2/24", "fd00:20:1::2/64");
        tx.send((topo.namespaces(), topo.dir().to_path_buf()))
            .unwrap();
        panic!("test failure inside a topology");
    });
    assert!(r.is_err());
    let (names, dir) = rx.recv().unwrap();
    // A panic keeps the scratch directory for diagnostics; this panic was on purpose.
    let _ = std::fs::remove_dir_all(dir);
    let listed = list_namespaces();
    for n in &names {
        assert!(!listed.contains(n), "{n} deleted while unwinding");
    }
}

#[test]
fn stale_namespaces_of_dead_runs_are_removed() {
    if !tools("stale_namespaces_of_dead_runs_are_removed", &["ip"]) {
        return;
    }
    // A pid that has certainly ended: a child we reaped.
    let mut c = Command::new("true").spawn().unwrap();
    c.wait().unwrap();
    let dead = c.id();
    let stale = format!("tkstale-{dead}-0-x");
    let live = format!("tkstale-{}-9-y", std::process::id());
    for n in [&stale, &live] {
        assert!(
            Command::new("ip")
                .args(["netns", "add", n])
                .status()
                .unwrap()
                .success()
        );
    }
    let removed = cleanup_stale("tkstale");
    let listed = list_namespaces();
    let _ = Command::new("ip").args(["netns", "del", &live]).status();
    assert_eq!(removed, vec![stale.clone()]);
    assert!(!listed.contains(&stale));
    assert!(listed.contains(&live), "a live process's namespace is kept");
}

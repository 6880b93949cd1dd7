//! ESP probe for a kernel with ESP (run inside the QEMU VM by `tests/vm/esp-vm`).
//!
//! Given two network namespaces `ue` and `pcscf` joined by a veth pair, it installs with
//! ims-xfrm the four transport-mode SAs of TS 33.203 (and their policies, `in`/`out` per side)
//! on both sides, exchanges UDP and TCP over each protected port pair, checks every SA's packet
//! counter moved, removes everything by marker, and prints one `ESP-PROBE PASS` or
//! `ESP-PROBE FAIL: ...` line for the harness to judge.
//!
//! Usage: `esp_probe UE_ADDR PCSCF_ADDR` (IPv4 or IPv6 literals on the veth).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use ims_xfrm::{AuthAlg, Direction, EncAlg, PolicySpec, SaSpec, XfrmSocket};
use zeroize::Zeroizing;

const MARKER: u32 = 0x1a5e_c0de;
// TS 35.208 set 1: IK || 0x00000000 for hmac-sha-1-96, CK for aes-cbc.
const IK_SHA1: &str = "f769bcd751044604127672711c6d344100000000";
const CK_AES: &str = "b40ba9a3c58b2a05bbf0d987b21bf8cb";
// Ports and SPIs: UE client/server, P-CSCF client/server.
const PORT_UC: u16 = 31000;
const PORT_US: u16 = 31001;
const PORT_PC: u16 = 5062;
const PORT_PS: u16 = 5063;
const SPI_UC: u32 = 1001;
const SPI_US: u32 = 1002;
const SPI_PC: u32 = 2001;
const SPI_PS: u32 = 2002;

/// Runs `f` on a thread that has entered network namespace `ns`; sockets it opens stay there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

fn hexkey(h: &str) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect(),
    )
}

/// The four SAs: (src, dst, spi), identical on both hosts.
fn sas(ue: IpAddr, p: IpAddr) -> Vec<(SocketAddr, SocketAddr, u32)> {
    let s = |a, port| SocketAddr::new(a, port);
    vec![
        (s(ue, PORT_UC), s(p, PORT_PS), SPI_PS), // SA1: P-CSCF in
        (s(p, PORT_PC), s(ue, PORT_US), SPI_US), // SA2: P-CSCF out
        (s(p, PORT_PS), s(ue, PORT_UC), SPI_UC), // SA3: P-CSCF out
        (s(ue, PORT_US), s(p, PORT_PC), SPI_PC), // SA4: P-CSCF in
    ]
}

fn install(x: &mut XfrmSocket, me: IpAddr, ue: IpAddr, p: IpAddr) {
    for (src, dst, spi) in sas(ue, p) {
        x.add_sa(&SaSpec {
            src,
            dst,
            spi,
            reqid: spi,
            auth: AuthAlg::HmacSha1_96,
            auth_key: hexkey(IK_SHA1),
            enc: EncAlg::AesCbc,
            enc_key: hexkey(CK_AES),
            marker: MARKER,
            hard_expires_secs: 240,
            replay_window: 32,
        })
        .unwrap_or_else(|e| fail(&format!("add SA {src}->{dst} spi {spi}: {e}")));
        let dir = if src.ip() == me {
            Direction::Out
        } else {
            Direction::In
        };
        x.add_policy(&PolicySpec {
            src,
            dst,
            dir,
            priority: 2080,
            reqid: spi,
            marker: MARKER,
            hard_expires_secs: 240,
        })
        .unwrap_or_else(|e| fail(&format!("add policy {src}->{dst}: {e}")));
    }
}

fn fail(why: &str) -> ! {
    println!("ESP-PROBE FAIL: {why}");
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        fail("usage: esp_probe UE_ADDR PCSCF_ADDR");
    }
    let ue: IpAddr = args[1].parse().unwrap_or_else(|_| fail("bad UE address"));
    let p: IpAddr = args[2]
        .parse()
        .unwrap_or_else(|_| fail("bad P-CSCF address"));

    let mut x_ue = in_netns("ue", || XfrmSocket::open().expect("xfrm socket in ue"));
    let mut x_p = in_netns("pcscf", || {
        XfrmSocket::open().expect("xfrm socket in pcscf")
    });
    install(&mut x_ue, ue, ue, p);
    install(&mut x_p, p, ue, p);

    let t = Some(Duration::from_secs(5));
    // UDP over every SA: UE:uc <-> P:ps (SA1/SA3), P:pc <-> UE:us (SA2/SA4).
    let ue_uc = in_netns("ue", move || UdpSocket::bind((ue, PORT_UC)).unwrap());
    let ue_us = in_netns("ue", move || UdpSocket::bind((ue, PORT_US)).unwrap());
    let p_pc = in_netns("pcscf", move || UdpSocket::bind((p, PORT_PC)).unwrap());
    let p_ps = in_netns("pcscf", move || UdpSocket::bind((p, PORT_PS)).unwrap());
    for s in [&ue_uc, &ue_us, &p_pc, &p_ps] {
        s.set_read_timeout(t).unwrap();
    }
    let mut buf = [0u8; 2048];
    let register = b"REGISTER sip:hims.net SIP/2.0\r\nContent-Length: 0\r\n\r\n";
    for (from, to, to_addr) in [
        (&ue_uc, &p_ps, SocketAddr::new(p, PORT_PS)),
        (&p_ps, &ue_uc, SocketAddr::new(ue, PORT_UC)),
        (&p_pc, &ue_us, SocketAddr::new(ue, PORT_US)),
        (&ue_us, &p_pc, SocketAddr::new(p, PORT_PC)),
    ] {
        from.send_to(register, to_addr).unwrap();
        let (n, _) = to
            .recv_from(&mut buf)
            .unwrap_or_else(|e| fail(&format!("UDP to {to_addr} through ESP: {e}")));
        if &buf[..n] != register {
            fail("UDP payload changed in transit");
        }
    }
    drop((ue_uc, p_ps));
    // TCP over SA1/SA3: UE connects from its protected client port to the protected server port.
    let listener = in_netns("pcscf", move || TcpListener::bind((p, PORT_PS)).unwrap());
    let conn = in_netns("ue", move || {
        let s = socket2_bind_connect(ue, PORT_UC, SocketAddr::new(p, PORT_PS));
        s.unwrap_or_else(|e| fail(&format!("TCP connect through ESP: {e}")))
    });
    let (mut srv, _) = listener.accept().unwrap();
    let mut cli = conn;
    cli.set_read_timeout(t).unwrap();
    srv.set_read_timeout(t).unwrap();
    cli.write_all(register).unwrap();
    let mut got = vec![0u8; register.len()];
    srv.read_exact(&mut got)
        .unwrap_or_else(|e| fail(&format!("TCP read: {e}")));
    srv.write_all(b"SIP/2.0 200 OK\r\n\r\n").unwrap();
    let mut ok = [0u8; 18];
    cli.read_exact(&mut ok)
        .unwrap_or_else(|e| fail(&format!("TCP reply: {e}")));

    // Every SA on both sides carried traffic.
    for (side, x) in [("ue", &mut x_ue), ("pcscf", &mut x_p)] {
        let list = x.list_sas().unwrap();
        if list.iter().filter(|s| s.marker == MARKER).count() != 4 {
            fail(&format!("{side}: expected 4 SAs, found {list:?}"));
        }
        for s in &list {
            println!(
                "{side} SA spi={} {}:{} -> {}:{} packets={}",
                s.id.spi, s.id.src, s.sport, s.id.dst, s.dport, s.packets
            );
            if s.packets == 0 {
                fail(&format!("{side}: SA spi {} carried no packet", s.id.spi));
            }
        }
    }
    drop((cli, srv, listener));

    // After a registration's 200 OK the P-CSCF extends the SAs' lifetime: UPDSA in place.
    let (src, dst, spi) = sas(ue, p)[0];
    let mut longer = SaSpec {
        src,
        dst,
        spi,
        reqid: spi,
        auth: AuthAlg::HmacSha1_96,
        auth_key: hexkey(IK_SHA1),
        enc: EncAlg::AesCbc,
        enc_key: hexkey(CK_AES),
        marker: MARKER,
        hard_expires_secs: 3600,
        replay_window: 32,
    };
    x_p.update_sa(&longer)
        .unwrap_or_else(|e| fail(&format!("update SA: {e}")));
    let after = x_p.list_sas().unwrap();
    let updated = after
        .iter()
        .find(|s| s.id.spi == spi)
        .map(|s| s.hard_expires_secs);
    if updated != Some(3600) || after.len() != 4 {
        fail(&format!("UPDSA did not extend the lifetime: {after:?}"));
    }
    println!("pcscf SA spi={spi} lifetime extended to 3600 s");
    // Installing the same SA again is refused (EEXIST), never duplicated.
    longer.hard_expires_secs = 240;
    match x_p.add_sa(&longer) {
        Err(ims_xfrm::XfrmError::Exists { .. }) => {}
        other => fail(&format!("re-adding an SA: expected EEXIST, got {other:?}")),
    }
    for (side, x) in [("ue", &mut x_ue), ("pcscf", &mut x_p)] {
        let (sas, pols) = x.remove_marked(MARKER).unwrap();
        if (sas, pols) != (4, 4)
            || !x.list_sas().unwrap().is_empty()
            || !x.list_policies().unwrap().is_empty()
        {
            fail(&format!(
                "{side}: cleanup removed {sas} SAs and {pols} policies"
            ));
        }
    }
    println!("ESP-PROBE PASS");
}

/// A TCP connection from a fixed local address and port (the UE's protected client port).
fn socket2_bind_connect(ip: IpAddr, port: u16, to: SocketAddr) -> std::io::Result<TcpStream> {
    // std has no bind-before-connect; use nix's socket calls.
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, socket,
    };
    let fam = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(SocketAddr::new(ip, port)),
    )?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(to),
    )?;
    Ok(TcpStream::from(fd))
}

//! Our peer state machine against a real freeDiameterd (Debian package freediameter) over
//! TCP: CER/CEA, DWR/DWA both ways, DPR/DPA, with us as initiator and as responder.
//!
//! freeDiameter traps found on the way (1.2.1 in Debian bookworm):
//! - `TLS_Cred` is mandatory even when no peer uses TLS: the test makes a self-signed pair
//!   with openssl.
//! - An unknown peer connecting without TLS is refused (DIAMETER_NO_COMMON_SECURITY, "please
//!   allow IPsec here") unless the acl_wl extension lists it with the `ALLOW_IPSEC` flag
//!   (`ALLOW_OLD_TLS` is not enough).
//! - `dict_dcca_3gpp.fdx` needs `dict_dcca.fdx` loaded first (not needed here).
//! - `TwTimer` cannot go below 6 s (the parser wants > 5), so waiting for its DWR costs ~6 s.
//! - For a `ConnectPeer` entry the CEA's Origin-Host must equal the entry's name: otherwise
//!   it logs "Received a message with Origin-Host set to ... while expecting ..." and drops
//!   the TCP connection right after our CEA (no DPR).
//! - Without an application extension and without `NoRelay` it advertises the relay
//!   application (0xffffffff) only, so Cx is "common" through relaying; no dictionary needed.
//! - Its log goes to stdout; the test waits for "freeDiameterd daemon initialized" there.

use ims_diameter::dict::DisconnectCause;
use ims_diameter::peer::{DownReason, Event, Peer, PeerConfig, Role, State};
use ims_diameter::{Message, dict};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Fd {
    child: Child,
    log: PathBuf,
}

impl Drop for Fd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Fd {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts freeDiameterd listening on `port`; `connect_to` makes it connect to our responder.
fn start_fd(fd_bin: &Path, port: u16, connect_to: Option<u16>) -> Fd {
    let dir = ims_testkit::scratch_dir("diameter-fd");
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=fd.hims.net", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(
        ok.success(),
        "openssl could not make the TLS pair freeDiameter insists on"
    );
    std::fs::write(dir.join("acl.conf"), "ALLOW_IPSEC *.hims.net\n").unwrap();
    let mut conf = format!(
        "Identity = \"fd.hims.net\";\nRealm = \"hims.net\";\nPort = {port};\nSecPort = {};\n\
         No_SCTP;\nNo_IPv6;\nListenOn = \"127.0.0.1\";\nTcTimer = 2;\nTwTimer = 6;\n\
         TLS_Cred = \"{d}/cert.pem\", \"{d}/key.pem\";\nTLS_CA = \"{d}/cert.pem\";\n\
         LoadExtension = \"/usr/lib/freeDiameter/acl_wl.fdx\" : \"{d}/acl.conf\";\n",
        free_port(),
        d = dir.display()
    );
    if let Some(p) = connect_to {
        conf.push_str(&format!(
            "ConnectPeer = \"icscf1.hims.net\" {{ ConnectTo = \"127.0.0.1\"; Port = {p}; No_TLS; }};\n"
        ));
    }
    std::fs::write(dir.join("fd.conf"), conf).unwrap();
    let log = dir.join("fd.log");
    let child = Command::new(fd_bin)
        .arg("-c")
        .arg(dir.join("fd.conf"))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start freeDiameterd");
    let fd = Fd { child, log };
    let until = Instant::now() + Duration::from_secs(10);
    while !fd.log().contains("freeDiameterd daemon initialized") {
        assert!(
            Instant::now() < until,
            "freeDiameterd did not start:\n{}",
            fd.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    fd
}

/// Drives one connection until `stop` says so or `limit` passes; returns every event.
/// `seen` gets the command code and R bit of each message freeDiameter sent.
fn drive(
    stream: &mut TcpStream,
    peer: &mut Peer,
    limit: Duration,
    seen: &mut Vec<(u32, bool)>,
    mut stop: impl FnMut(&Event, &[(u32, bool)]) -> bool,
) -> Vec<Event> {
    let end = Instant::now() + limit;
    let mut events = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut pending = Vec::new();
    loop {
        while let Some(b) = peer.poll_transmit() {
            stream.write_all(&b).unwrap();
        }
        while let Some(e) = peer.poll_event() {
            let done = stop(&e, seen);
            events.push(e);
            if done {
                return events;
            }
        }
        let now = Instant::now();
        if now >= end {
            return events;
        }
        let wake = peer.poll_timeout().unwrap_or(end).min(end);
        let wait = wake
            .saturating_duration_since(now)
            .max(Duration::from_millis(10));
        stream.set_read_timeout(Some(wait)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => peer.handle_disconnected(Instant::now()),
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                while let Ok(Some(len)) = ims_diameter::frame(&pending, 1 << 20) {
                    let m: Vec<u8> = pending.drain(..len).collect();
                    if let Ok(msg) = Message::parse(&m) {
                        seen.push((msg.command_code(), msg.is_request()));
                    }
                    peer.handle_bytes(Instant::now(), &m);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                peer.handle_timeout(Instant::now());
            }
            Err(e) => panic!("socket: {e}"),
        }
    }
}

fn our_config() -> PeerConfig {
    let mut c = PeerConfig::cx("icscf1.hims.net", "hims.net");
    c.allowed_peers = vec!["fd.hims.net".into()];
    c.watchdog = Duration::from_secs(30);
    c
}

/// After Up: wait for freeDiameter's DWR (its Tw is 6 s) and answer it, send our own DWR
/// (time pushed past our Tw) and get its DWA, then DPR/DPA.
fn watchdog_and_disconnect(stream: &mut TcpStream, peer: &mut Peer, fd: &Fd) {
    let mut seen = Vec::new();
    drive(stream, peer, Duration::from_secs(9), &mut seen, |_, s| {
        s.contains(&(280, true))
    });
    assert!(
        seen.contains(&(280, true)),
        "freeDiameter sent no DWR in 9 s:\n{}",
        fd.log()
    );
    // Our DWA went out in the drive loop; the connection must still be open.
    assert_eq!(peer.state(), State::Open);
    peer.handle_timeout(Instant::now() + Duration::from_secs(31));
    let mut seen = Vec::new();
    drive(stream, peer, Duration::from_secs(3), &mut seen, |_, s| {
        s.contains(&(280, false))
    });
    assert!(
        seen.contains(&(280, false)),
        "no DWA from freeDiameter:\n{}",
        fd.log()
    );
    assert_eq!(peer.state(), State::Open);
    peer.disconnect(Instant::now(), DisconnectCause::Rebooting);
    let mut seen = Vec::new();
    let ev = drive(stream, peer, Duration::from_secs(3), &mut seen, |e, _| {
        *e == Event::Close
    });
    assert!(
        seen.contains(&(282, false)),
        "no DPA from freeDiameter:\n{}",
        fd.log()
    );
    assert!(ev.contains(&Event::Down(DownReason::Disconnected)));
}

#[test]
fn we_connect_to_freediameter() {
    let Some(fd_bin) = ims_testkit::require_tool("diameter_peer_freediameter", "freeDiameterd")
    else {
        return;
    };
    let port = free_port();
    let fd = start_fd(&fd_bin, port, None);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut peer = Peer::new(our_config(), Role::Initiator, 42);
    peer.handle_connecting(Instant::now());
    peer.handle_connected(Instant::now());
    let mut seen = Vec::new();
    let ev = drive(
        &mut stream,
        &mut peer,
        Duration::from_secs(5),
        &mut seen,
        |e, _| matches!(e, Event::Up { .. } | Event::Down(_)),
    );
    assert_eq!(
        ev.last(),
        Some(&Event::Up {
            host: "fd.hims.net".into(),
            realm: "hims.net".into()
        }),
        "freeDiameter log:\n{}",
        fd.log()
    );
    assert!(seen.contains(&(dict::command::CAPABILITIES_EXCHANGE, false)));
    // No Cx extension is loaded: freeDiameter advertises the relay application, which
    // shares every application of ours.
    assert_eq!(peer.common_applications(), &[dict::APP_CX]);
    assert!(
        peer.remote_is_relay(),
        "freeDiameter's CEA names the relay application"
    );
    // freeDiameter logs the state change a moment after it sends the CEA: wait for it.
    let open = |log: &str| {
        log.contains("'STATE_OPEN'\t'icscf1.hims.net'") || log.contains("-> 'STATE_OPEN'")
    };
    let t0 = Instant::now();
    while !open(&fd.log()) && t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(open(&fd.log()), "freeDiameter log:\n{}", fd.log());
    watchdog_and_disconnect(&mut stream, &mut peer, &fd);
    assert!(
        !fd.log().contains("ERROR"),
        "freeDiameter logged an error:\n{}",
        fd.log()
    );
}

#[test]
fn freediameter_connects_to_us() {
    let Some(fd_bin) = ims_testkit::require_tool("diameter_peer_freediameter_in", "freeDiameterd")
    else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ours = listener.local_addr().unwrap().port();
    let fd = start_fd(&fd_bin, free_port(), Some(ours));
    listener.set_nonblocking(false).unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    let mut peer = Peer::new(our_config(), Role::Responder, 43);
    peer.handle_connected(Instant::now());
    let mut seen = Vec::new();
    let ev = drive(
        &mut stream,
        &mut peer,
        Duration::from_secs(5),
        &mut seen,
        |e, _| matches!(e, Event::Up { .. } | Event::Down(_)),
    );
    assert_eq!(
        ev.last(),
        Some(&Event::Up {
            host: "fd.hims.net".into(),
            realm: "hims.net".into()
        }),
        "freeDiameter log:\n{}",
        fd.log()
    );
    assert!(seen.contains(&(dict::command::CAPABILITIES_EXCHANGE, true)));
    assert_eq!(peer.common_applications(), &[dict::APP_CX]);
    watchdog_and_disconnect(&mut stream, &mut peer, &fd);
    assert!(
        !fd.log().contains("ERROR"),
        "freeDiameter logged an error:\n{}",
        fd.log()
    );
}

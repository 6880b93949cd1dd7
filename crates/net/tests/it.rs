//! ims-net against real sockets: RFC 3263 location through our own ims-dns server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use ims_dns::{Config, DnsServer};
use ims_net::dns::{Destination, ResolveError, SipResolver, Target, Transport};

const ZONES: &str = r#"
listen = ["127.0.0.1:0"]
ttl = 60

[[zone]]
origin = "hims.net"
records = [
  { type = "NAPTR", name = "@", order = 20, preference = 50, flags = "s", service = "SIP+D2T", replacement = "_sip._tcp" },
  { type = "NAPTR", name = "@", order = 10, preference = 50, flags = "s", service = "SIP+D2U", replacement = "_sip._udp" },
  { type = "NAPTR", name = "@", order = 5, preference = 50, flags = "s", service = "E2U+sip", replacement = "ignored" },
  { type = "SRV", name = "_sip._udp", priority = 0, weight = 0, port = 5060, target = "icscf1" },
  { type = "SRV", name = "_sip._tcp", priority = 0, weight = 0, port = 5070, target = "icscf1" },
  { type = "A", name = "icscf1", address = "127.0.0.20" },
  { type = "AAAA", name = "icscf1", address = "2001:db8::20" },
  { type = "A", name = "plain", address = "127.0.0.21" },
  # SRV only (no NAPTR), two priorities and weights.
  { type = "SRV", name = "_sip._udp.srvonly", priority = 10, weight = 1, port = 5062, target = "b" },
  { type = "SRV", name = "_sip._udp.srvonly", priority = 0, weight = 5, port = 5061, target = "a" },
  { type = "SRV", name = "_sip._udp.srvonly", priority = 0, weight = 50, port = 5063, target = "c" },
  { type = "A", name = "a", address = "127.0.0.31" },
  { type = "A", name = "b", address = "127.0.0.32" },
  { type = "A", name = "c", address = "127.0.0.33" },
]
"#;

async fn dns() -> (DnsServer, SocketAddr) {
    let cfg: Config = toml::from_str(ZONES).unwrap();
    let server = DnsServer::start(&cfg).await.unwrap();
    let addr = server.local_addrs()[0];
    (server, addr)
}

fn t(addr: &str, transport: Transport) -> Target {
    Target {
        addr: addr.parse().unwrap(),
        transport,
    }
}

fn dest(host: &str) -> Destination<'_> {
    Destination {
        host,
        port: None,
        transport: None,
        sips: false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc3263_location() {
    let (server, addr) = dns().await;
    let stop = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = stop.1.await;
    }));
    let r = SipResolver::new(&[addr]).unwrap();
    use Transport::*;

    // NAPTR in order (10 UDP before 20 TCP; the E2U rule is not SIP and is skipped), each
    // through its SRV to A and AAAA.
    let got = r.resolve(&dest("hims.net")).await.unwrap();
    assert_eq!(
        got,
        vec![
            t("127.0.0.20:5060", Udp),
            t("[2001:db8::20]:5060", Udp),
            t("127.0.0.20:5070", Tcp),
            t("[2001:db8::20]:5070", Tcp),
        ]
    );
    // A transport given: its SRV only.
    let d = Destination {
        transport: Some(Tcp),
        ..dest("hims.net")
    };
    assert_eq!(
        r.resolve(&d).await.unwrap(),
        vec![t("127.0.0.20:5070", Tcp), t("[2001:db8::20]:5070", Tcp)]
    );
    // A port given: A/AAAA, no SRV.
    let d = Destination {
        port: Some(6000),
        ..dest("icscf1.hims.net")
    };
    assert_eq!(
        r.resolve(&d).await.unwrap(),
        vec![t("127.0.0.20:6000", Udp), t("[2001:db8::20]:6000", Udp)]
    );
    // No NAPTR: SRV by priority, then heavier weight first.
    assert_eq!(
        r.resolve(&dest("srvonly.hims.net")).await.unwrap(),
        vec![
            t("127.0.0.33:5063", Udp),
            t("127.0.0.31:5061", Udp),
            t("127.0.0.32:5062", Udp)
        ]
    );
    // Neither NAPTR nor SRV: A on the default port, UDP; TLS on 5061 for sips.
    assert_eq!(
        r.resolve(&dest("plain.hims.net")).await.unwrap(),
        vec![t("127.0.0.21:5060", Udp)]
    );
    let d = Destination {
        sips: true,
        ..dest("plain.hims.net")
    };
    assert_eq!(
        r.resolve(&d).await.unwrap(),
        vec![t("127.0.0.21:5061", Tls)]
    );
    // Numeric hosts need no DNS.
    let d = Destination {
        port: Some(5080),
        transport: Some(Tcp),
        ..dest("[2001:db8::1]")
    };
    assert_eq!(
        r.resolve(&d).await.unwrap(),
        vec![t("[2001:db8::1]:5080", Tcp)]
    );
    assert_eq!(
        r.resolve(&dest("10.1.2.3")).await.unwrap(),
        vec![t("10.1.2.3:5060", Udp)]
    );
    // Unknown names say so.
    let err = r.resolve(&dest("nobody.hims.net")).await.unwrap_err();
    assert!(matches!(err, ResolveError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("nobody.hims.net"), "{err}");
    assert!(matches!(
        r.resolve(&dest("")).await,
        Err(ResolveError::BadName(_))
    ));

    // Answers are cached for their TTL: with the server gone, the same lookup still works.
    stop.0.send(()).unwrap();
    task.await.unwrap().unwrap();
    let again = r.resolve(&dest("hims.net")).await.unwrap();
    assert_eq!(again.len(), 4);
    assert_eq!(again[0], t("127.0.0.20:5060", Udp));

    // A target marked down comes last (RFC 3263 §4.3 failover), the rest in their order;
    // it is still listed.
    r.mark_down("127.0.0.20:5060".parse().unwrap());
    assert_eq!(
        r.resolve(&dest("hims.net")).await.unwrap(),
        vec![
            t("[2001:db8::20]:5060", Udp),
            t("127.0.0.20:5070", Tcp),
            t("[2001:db8::20]:5070", Tcp),
            t("127.0.0.20:5060", Udp),
        ]
    );
}

/// A resolved destination is kept no longer than its records' TTL: the zone changes (another
/// server on the same port) and, within a few TTLs, the new address is what comes back.
#[tokio::test(flavor = "multi_thread")]
async fn resolved_destinations_expire_with_their_records() {
    let zone = |listen: &str, address: &str| -> Config {
        toml::from_str(&format!(
            "listen = [\"{listen}\"]\nttl = 1\n[[zone]]\norigin = \"hims.net\"\n\
             records = [ {{ type = \"A\", name = \"moving\", address = \"{address}\" }} ]\n"
        ))
        .unwrap()
    };
    let serve = |server: DnsServer| {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async move {
            let _ = rx.await;
        }));
        (tx, task)
    };
    let first = DnsServer::start(&zone("127.0.0.1:0", "127.0.0.41"))
        .await
        .unwrap();
    let addr = first.local_addrs()[0];
    let (stop, task) = serve(first);
    let r = SipResolver::new(&[addr]).unwrap();
    let moving = |host| Destination {
        port: Some(5060),
        ..dest(host)
    };
    assert_eq!(
        r.resolve(&moving("moving.hims.net")).await.unwrap(),
        vec![t("127.0.0.41:5060", Transport::Udp)]
    );
    // Kept: the same destination in other case, with the server gone.
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(
        r.resolve(&moving("MOVING.hims.net")).await.unwrap(),
        vec![t("127.0.0.41:5060", Transport::Udp)]
    );
    let second = DnsServer::start(&zone(&addr.to_string(), "127.0.0.42"))
        .await
        .unwrap();
    let (stop, task) = serve(second);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = r.resolve(&moving("moving.hims.net")).await;
        if matches!(&got, Ok(v) if v == &vec![t("127.0.0.42:5060", Transport::Udp)]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {got:?} 10 s after the record (TTL 1 s) changed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------------
// SIP transport: UDP and TCP on one port, Content-Length framing, connection reuse.

mod sip_transport {
    use bytes::Bytes;
    use ims_net::sip::{SipTransport, Transport};
    use ims_sip::Method;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn register(call_id: &str, body: &str) -> String {
        format!(
            "REGISTER sip:hims.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{call_id}\r\n\
             From: <sip:alice@hims.net>;tag=1\r\nTo: <sip:alice@hims.net>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 REGISTER\r\nMax-Forwards: 70\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    async fn next(
        rx: &mut tokio::sync::mpsc::Receiver<ims_net::sip::Incoming>,
    ) -> ims_net::sip::Incoming {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a message within 5 s")
            .expect("channel open")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn udp_round_trip_and_garbage_dropped() {
        let (t, mut rx) = SipTransport::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let ue = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        ue.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        ue.send_to(b"\x00\x01garbage without a start line", t.local_addr())
            .unwrap();
        ue.send_to(register("u1", "").as_bytes(), t.local_addr())
            .unwrap();
        let m = next(&mut rx).await;
        assert_eq!(m.transport, Transport::Udp);
        assert_eq!(m.source, ue.local_addr().unwrap());
        assert_eq!(
            m.message.call_id().unwrap(),
            "u1",
            "the garbage before it was dropped"
        );
        let resp = ims_sip::response_to(&m.message, 200, "OK", Some("s")).unwrap();
        t.send(Transport::Udp, m.source, resp.to_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 2048];
        let n = ue.recv(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"SIP/2.0 200 OK\r\n"));
        assert!(
            t.send(Transport::Tls, m.source, Bytes::new())
                .await
                .is_err()
        );
    }

    /// Counts what it receives.
    struct Count(std::sync::atomic::AtomicUsize);

    impl ims_net::sip::Receiver for Count {
        fn receive(&self, _inc: ims_net::sip::Incoming) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A burst that comes while the daemon is not reading (busy, or descheduled) waits in the
    /// socket's receive buffer: 1,500 REGISTERs sent before reading starts all arrive. The
    /// kernel's default buffer held about a hundred of them.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_burst_waits_in_the_udp_receive_buffer() {
        let test = "sip_transport::a_burst_waits_in_the_udp_receive_buffer";
        let count = std::sync::Arc::new(Count(Default::default()));
        let bound = SipTransport::bind_to("127.0.0.1:0".parse().unwrap(), false, count.clone())
            .await
            .unwrap();
        let t = bound.transport().clone();
        let granted = t.udp_receive_buffer().unwrap() / 2;
        if granted < ims_net::sip::UDP_RECEIVE_BUFFER {
            // Only net.core.rmem_max without CAP_NET_ADMIN: the daemon logs that at start.
            if ims_testkit::require_root(test) {
                panic!("root got a receive buffer of {granted} bytes");
            }
            return;
        }
        let ue = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        const BURST: usize = 1500;
        let msg = register("burst", &"x".repeat(400));
        for _ in 0..BURST {
            ue.send_to(msg.as_bytes(), t.local_addr()).unwrap();
        }
        bound.start();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while count.0.load(std::sync::atomic::Ordering::Relaxed) < BURST
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            count.0.load(std::sync::atomic::Ordering::Relaxed),
            BURST,
            "every datagram of the burst was kept until read"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn tcp_framing_keepalive_and_connection_reuse() {
        let (t, mut rx) = SipTransport::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut ue = std::net::TcpStream::connect(t.local_addr()).unwrap();
        ue.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Two REGISTERs in one segment, the second with a body split over two writes,
        // then a double-CRLF ping.
        let two = format!("{}{}", register("t1", ""), register("t2", "hello"));
        let (a, b) = two.split_at(two.len() - 3);
        ue.write_all(a.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        ue.write_all(b.as_bytes()).unwrap();
        ue.write_all(b"\r\n\r\n").unwrap();
        let m1 = next(&mut rx).await;
        let m2 = next(&mut rx).await;
        assert_eq!(
            (m1.message.call_id().unwrap(), m2.message.call_id().unwrap()),
            ("t1", "t2")
        );
        assert_eq!(m2.message.body(), b"hello");
        assert_eq!(m1.transport, Transport::Tcp);
        assert_eq!(m1.message.method(), Some(Method::Register));
        let mut pong = [0u8; 2];
        ue.read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"\r\n", "RFC 5626 pong");
        // The response goes back on the UE's own connection.
        let resp = ims_sip::response_to(&m1.message, 200, "OK", Some("s")).unwrap();
        t.send(Transport::Tcp, m1.source, resp.to_bytes())
            .await
            .unwrap();
        let mut got = vec![0u8; resp.to_bytes().len()];
        ue.read_exact(&mut got).unwrap();
        assert_eq!(got, resp.to_bytes());
        assert_eq!(t.tcp_connections(), 1);
        // A bad Content-Length cannot be framed: the connection is closed.
        ue.write_all(b"REGISTER sip:x SIP/2.0\r\nContent-Length: -1\r\n\r\n")
            .unwrap();
        let mut rest = Vec::new();
        let n = ue.read_to_end(&mut rest).unwrap();
        assert_eq!(n, 0, "closed without an answer");
    }

    /// A send over TCP only queues the message for its connection's writer task: a program
    /// that ends right after its last send (its runtime dropped, as `ims-ue` answering a
    /// MESSAGE and exiting) must flush first, or the peer never gets what was queued.
    #[test]
    fn flush_writes_what_was_queued_before_the_runtime_ends() {
        let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = peer.local_addr().unwrap();
        let messages: Vec<Bytes> = (0..50)
            .map(|i| Bytes::from(register(&format!("f{i}"), &"x".repeat(1000))))
            .collect();
        let expected: usize = messages.iter().map(Bytes::len).sum();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (t, _rx) = SipTransport::bind("127.0.0.1:0".parse().unwrap())
                    .await
                    .unwrap();
                for m in messages {
                    t.send(Transport::Tcp, to, m).await.unwrap();
                }
                assert!(t.flush(Duration::from_secs(5)).await, "flushed within 5 s");
            });
            // The runtime ends here, and with it the connection's tasks and socket.
        })
        .join()
        .unwrap();
        let (mut conn, _) = peer.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), expected, "every queued message was written");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn outgoing_tcp_connects_once_and_reuses() {
        let (a, _rx_a) = SipTransport::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let (b, mut rx_b) = SipTransport::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        for id in ["o1", "o2", "o3"] {
            a.send(
                Transport::Tcp,
                b.local_addr(),
                Bytes::from(register(id, "")),
            )
            .await
            .unwrap();
            assert_eq!(next(&mut rx_b).await.message.call_id().unwrap(), id);
        }
        assert_eq!(a.tcp_connections(), 1);
        assert_eq!(b.tcp_connections(), 1);
    }

    #[tokio::test]
    async fn tcp_from_our_own_port_while_listening_on_it() {
        // Both ends as with IPsec: each listens on its port and connects from it.
        let (a, mut rx_a) = SipTransport::bind_connecting_from_port("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let (b, mut rx_b) = SipTransport::bind_connecting_from_port("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let (c, mut rx_c) = SipTransport::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        a.send(
            Transport::Tcp,
            b.local_addr(),
            Bytes::from(register("p1", "")),
        )
        .await
        .unwrap();
        let got = next(&mut rx_b).await;
        assert_eq!(
            got.source,
            a.local_addr(),
            "the connection comes from a's own port"
        );
        a.send(
            Transport::Tcp,
            c.local_addr(),
            Bytes::from(register("p2", "")),
        )
        .await
        .unwrap();
        assert_eq!(next(&mut rx_c).await.source, a.local_addr());
        // a still accepts connections on that port.
        c.send(
            Transport::Tcp,
            a.local_addr(),
            Bytes::from(register("p3", "")),
        )
        .await
        .unwrap();
        assert_eq!(next(&mut rx_a).await.message.call_id().unwrap(), "p3");
        // A plain transport connects from an ephemeral port.
        assert_ne!(next_source(&c, &b, &mut rx_b).await, c.local_addr());
    }

    async fn next_source(
        from: &SipTransport,
        to: &SipTransport,
        rx: &mut tokio::sync::mpsc::Receiver<ims_net::sip::Incoming>,
    ) -> std::net::SocketAddr {
        from.send(
            Transport::Tcp,
            to.local_addr(),
            Bytes::from(register("p4", "")),
        )
        .await
        .unwrap();
        next(rx).await.source
    }
}

// ---------------------------------------------------------------------------------------
// Diameter client: against the real HSS (in this process), through a restart.

mod diameter_client {
    use ims_diameter::cx::{RequestBase, Uaa, Uar};
    use ims_diameter::peer::PeerConfig;
    use ims_diameter::{AnswerResult, Message};
    use ims_net::diameter::{DiameterClient, RequestError};
    use std::net::SocketAddr;
    use std::time::Duration;

    async fn hss(listen: SocketAddr) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let dir = ims_testkit::scratch_dir("net-diameter");
        let cfg = ims_hss::Config {
            database: format!("sqlite://{}", dir.join("hss.sqlite").display()),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            admin_token: None,
            home_network: "hims.net".into(),
            log: "info".into(),
            preload: true,
            diameter: ims_hss::DiameterConfig {
                listen,
                allowed_peers: vec!["icscf1.hims.net".into()],
                ..Default::default()
            },
        };
        let h = ims_hss::Hss::start(&cfg).await.unwrap();
        let addr = h.diameter_addr();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(h.run_until(async {
            let _ = rx.await;
        }));
        (addr, stop)
    }

    fn uar(n: u32) -> Vec<u8> {
        let impi = format!("nobody{n}@hims.net");
        let r = Uar {
            base: RequestBase {
                session_id: "icscf1.hims.net;1;1",
                origin_host: "icscf1.hims.net",
                origin_realm: "hims.net",
                destination_realm: "hims.net",
                ..RequestBase::default()
            },
            user_name: &impi,
            public_identity: "sip:nobody@hims.net",
            visited_network_identifier: b"hims.net",
            authorization_type: None,
            uar_flags: None,
        };
        let mut b = Vec::new();
        r.encode(&mut b).unwrap();
        b
    }

    /// A request made as the client starts (a CSCF just restarted under load: SIP is served
    /// while its first CER/CEA is still under way) waits for that first connection and gets
    /// its answer, rather than failing as if the HSS were known down (a 503 or 480 for a UE
    /// whose HSS is fine). With nobody listening, the first attempt fails, and the request
    /// with it, at once.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_request_at_start_waits_for_the_first_connection() {
        let (addr, _stop) = hss("127.0.0.1:0".parse().unwrap()).await;
        let (c, _server_requests) =
            DiameterClient::connect(addr, PeerConfig::cx("icscf1.hims.net", "hims.net"));
        let a = c
            .request(uar(1))
            .await
            .expect("answered once the first CEA came");
        let uaa = Uaa::decode(&Message::parse(&a).unwrap()).unwrap();
        assert_eq!(uaa.base.result, AnswerResult::experimental(5001));

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nobody = closed.local_addr().unwrap();
        drop(closed);
        let (c, _server_requests) =
            DiameterClient::connect(nobody, PeerConfig::cx("icscf1.hims.net", "hims.net"));
        let t = std::time::Instant::now();
        assert_eq!(c.request(uar(2)).await, Err(RequestError::NotOpen(nobody)));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // Known down from then on: at once again.
        let t = std::time::Instant::now();
        assert_eq!(c.request(uar(3)).await, Err(RequestError::NotOpen(nobody)));
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }

    /// Requests made as the connection goes down all end; none waits for the HSS to come
    /// back. Fifty callers start asking, in a loop, at the moment the HSS is told to stop (it
    /// sends DPR and goes for good); each must get its error (NotOpen at once, or NoAnswer
    /// after the 2 s request timeout). A request that saw the link still open and queued
    /// itself just as the connection ended used to wait in the driver's queue through every
    /// reconnect attempt, for as long as the HSS stayed away: the hang of
    /// `many_in_flight_then_reconnect_after_the_hss_restarts` in CI, whose request right after
    /// the stop met the DPR.
    #[tokio::test(flavor = "multi_thread")]
    async fn every_request_ends_when_the_hss_goes_for_good() {
        for round in 0..5u32 {
            let (addr, stop) = hss("127.0.0.1:0".parse().unwrap()).await;
            let mut cfg = PeerConfig::cx("icscf1.hims.net", "hims.net");
            cfg.request_timeout = Duration::from_secs(2);
            let (mut c, _server_requests) = DiameterClient::connect(addr, cfg);
            assert!(
                c.wait_open(Duration::from_secs(5)).await,
                "CER/CEA with the HSS"
            );
            let go = std::sync::Arc::new(tokio::sync::Barrier::new(51));
            let mut callers = Vec::new();
            for n in 0..50u32 {
                let c = c.clone();
                let go = go.clone();
                callers.push(tokio::spawn(async move {
                    go.wait().await;
                    loop {
                        match c.request(uar(1000 + n)).await {
                            Ok(_) => tokio::task::yield_now().await,
                            Err(RequestError::NotOpen(_) | RequestError::NoAnswer(_)) => {
                                return;
                            }
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                }));
            }
            go.wait().await;
            let _ = stop.send(());
            for t in callers {
                // The request timeout is 2 s: anything still waiting after 8 s is stuck.
                tokio::time::timeout(Duration::from_secs(8), t)
                    .await
                    .unwrap_or_else(|_| {
                        panic!("round {round}: a request stuck after the connection went down")
                    })
                    .unwrap();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn many_in_flight_then_reconnect_after_the_hss_restarts() {
        let (addr, stop) = hss("127.0.0.1:0".parse().unwrap()).await;
        let (mut c, _server_requests) =
            DiameterClient::connect(addr, PeerConfig::cx("icscf1.hims.net", "hims.net"));
        assert!(
            c.wait_open(Duration::from_secs(5)).await,
            "CER/CEA with the HSS"
        );
        // 50 UARs at once from 50 tasks: every answer is the right one (5001, unknown user).
        let mut tasks = Vec::new();
        for n in 0..50 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move { c.request(uar(n)).await }));
        }
        for t in tasks {
            let a = t.await.unwrap().unwrap();
            let m = Message::parse(&a).unwrap();
            let uaa = Uaa::decode(&m).unwrap();
            assert_eq!(uaa.base.result, AnswerResult::experimental(5001));
        }
        // The HSS goes away: requests fail fast, then the client reconnects by itself.
        let _ = stop.send(());
        // Until the HSS has really gone it may still answer; then the request fails at once.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let t = tokio::time::Instant::now();
            match c.request(uar(99)).await {
                Err(RequestError::NotOpen(_) | RequestError::NoAnswer(_)) => {
                    assert!(t.elapsed() < Duration::from_secs(2), "failed fast");
                    break;
                }
                Err(e) => panic!("{e:?}"),
                Ok(_) => {
                    assert!(tokio::time::Instant::now() < deadline, "the HSS never went");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let (_, _stop2) = hss(addr).await;
        assert!(
            c.wait_open(Duration::from_secs(10)).await,
            "reconnected after the restart"
        );
        assert!(c.request(uar(100)).await.is_ok());
    }
}

// ---------------------------------------------------------------------------------------
// The transaction layer: retransmissions absorbed, responses routed by Via, proxy checks.

mod endpoint {
    use ims_net::dns::{Target, Transport};
    use ims_net::endpoint::{ClientError, SipEndpoint, pop_own_via};
    use ims_sip::transaction::Timers;
    use ims_sip::{Message, response_to};
    use std::time::Duration;

    fn register(branch: &str, mf: u8) -> String {
        format!(
            "REGISTER sip:hims.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch={branch};rport\r\n\
             From: <sip:alice@hims.net>;tag=1\r\nTo: <sip:alice@hims.net>\r\nCall-ID: {branch}\r\n\
             CSeq: 1 REGISTER\r\nMax-Forwards: {mf}\r\nContent-Length: 0\r\n\r\n"
        )
    }

    fn recv(s: &std::net::UdpSocket) -> Message {
        let mut buf = vec![0u8; 65536];
        let n = s.recv(&mut buf).expect("a datagram within the timeout");
        Message::parse(bytes::Bytes::copy_from_slice(&buf[..n])).unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn uas_absorbs_retransmissions_and_proxy_chain_routes_responses() {
        let timers = Timers::RFC3261.scaled_down(10);
        // A UAS (the "registrar") and a proxy in front of it.
        let (uas, mut uas_rx) =
            SipEndpoint::bind("127.0.0.1:0".parse().unwrap(), "127.0.0.1", timers)
                .await
                .unwrap();
        let (proxy, mut proxy_rx) =
            SipEndpoint::bind("127.0.0.1:0".parse().unwrap(), "127.0.0.1", timers)
                .await
                .unwrap();
        let uas_addr = uas.local_addr();
        tokio::spawn(async move {
            while let Some(req) = uas_rx.recv().await {
                let resp = response_to(&req.message, 200, "OK", Some("t")).unwrap();
                uas.respond(&req, resp).await;
            }
        });
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Some(mut req) = proxy_rx.recv().await {
                let p = p.clone();
                tokio::spawn(async move {
                    if let Err((code, why)) = p.proxy_checks(&mut req.message) {
                        let r = response_to(&req.message, code, why, Some("p")).unwrap();
                        p.respond(&req, r).await;
                        return;
                    }
                    let target = Target {
                        addr: uas_addr,
                        transport: Transport::Udp,
                    };
                    match p.send_request(req.message.clone(), target).await {
                        Ok(mut resp) => {
                            pop_own_via(&mut resp).unwrap();
                            p.respond(&req, resp).await;
                        }
                        Err(e) => panic!("{e}"),
                    }
                });
            }
        });
        let ue = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        ue.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let req = register("z9hG4bKue1", 70);
        ue.send_to(req.as_bytes(), proxy.local_addr()).unwrap();
        let r = recv(&ue);
        assert_eq!(r.status(), Some(200));
        assert_eq!(r.vias().count(), 1, "the proxy's Via is gone");
        let via = r.top_via().unwrap();
        assert_eq!(
            via.rport(),
            Some(Some(ue.local_addr().unwrap().port())),
            "rport filled in"
        );
        // A retransmission of the same request gets the same final response, and the UAS
        // saw the request once.
        ue.send_to(req.as_bytes(), proxy.local_addr()).unwrap();
        let again = recv(&ue);
        assert_eq!(again.to_bytes(), r.to_bytes());
        assert_eq!(
            proxy.transactions().0,
            1,
            "one server transaction at the proxy"
        );
        // Max-Forwards 0: 483 from the proxy.
        ue.send_to(register("z9hG4bKue2", 0).as_bytes(), proxy.local_addr())
            .unwrap();
        let r = recv(&ue);
        assert_eq!(r.status(), Some(483));
        // Timer J: the answered transactions go away (64*T1 = 3.2 s at this scale).
        let t0 = tokio::time::Instant::now();
        while proxy.transactions().0 != 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "Timer J never fired"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            t0.elapsed() > Duration::from_millis(2500),
            "kept for Timer J: {:?}",
            t0.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn loop_detected_and_timeouts_reported() {
        let timers = Timers::RFC3261.scaled_down(50);
        let (ep, _rx) = SipEndpoint::bind("127.0.0.1:0".parse().unwrap(), "127.0.0.1", timers)
            .await
            .unwrap();
        // A request that already carries our Via with our loop hash comes back: 482.
        let mut m = Message::parse(register("z9hG4bKl1", 70).into()).unwrap();
        let branch = ep.branch_for(&m);
        m.prepend_header(
            "Via",
            &format!("SIP/2.0/UDP {};branch={branch}", ep.sent_by()),
        )
        .unwrap();
        let mut looped = Message::parse(m.to_bytes()).unwrap();
        assert_eq!(ep.proxy_checks(&mut looped), Err((482, "Loop Detected")));
        let mut fine = Message::parse(register("z9hG4bKl2", 70).into()).unwrap();
        assert_eq!(ep.proxy_checks(&mut fine), Ok(()));
        assert_eq!(fine.max_forwards().unwrap().unwrap(), 69);
        // Nobody answers on UDP: Timer F (64*T1 = 640 ms here) ends it.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = Target {
            addr: silent.local_addr().unwrap(),
            transport: Transport::Udp,
        };
        let t0 = std::time::Instant::now();
        let r = ep.send_request(fine.clone(), target).await;
        assert!(matches!(r, Err(ClientError::Timeout(_))), "{r:?}");
        assert!(t0.elapsed() >= Duration::from_millis(600));
        // Retransmissions happened (Timer E): more than one copy arrived.
        silent.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        let mut copies = 0;
        while silent.recv(&mut buf).is_ok() {
            copies += 1;
        }
        assert!(copies >= 3, "{copies} copies");
        // Nobody listens on TCP: a transport error at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let r = ep
            .send_request(
                fine,
                Target {
                    addr,
                    transport: Transport::Tcp,
                },
            )
            .await;
        assert!(matches!(r, Err(ClientError::Transport(_))), "{r:?}");
    }

    /// `send_request_or_give_up` (the P-CSCF's I-CSCF failover): a target silent for the
    /// given time is given up long before Timer F, and its transaction goes; a target that
    /// answered anything (100 Trying) is waited for as usual.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_silent_target_is_given_up_early_an_answering_one_is_not() {
        let timers = Timers::RFC3261;
        let (ep, _rx) = SipEndpoint::bind("127.0.0.1:0".parse().unwrap(), "127.0.0.1", timers)
            .await
            .unwrap();
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = Target {
            addr: silent.local_addr().unwrap(),
            transport: Transport::Udp,
        };
        let m = Message::parse(register("z9hG4bKs1", 70).into()).unwrap();
        // Timer F is 32 s here: only the give-up can end it within 10 s.
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            ep.send_request_or_give_up(m, target, Duration::from_millis(300)),
        )
        .await
        .expect("given up before Timer F");
        assert!(matches!(r, Err(ClientError::Timeout(_))), "{r:?}");
        assert_eq!(ep.transactions().1, 0, "the given-up transaction is gone");

        // 100 Trying at once, the 200 after three times the silence: the 200 is the answer.
        let slow = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let target = Target {
            addr: slow.local_addr().unwrap(),
            transport: Transport::Udp,
        };
        let uas = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let (n, from) = slow.recv_from(&mut buf).unwrap();
            let req = Message::parse(bytes::Bytes::copy_from_slice(&buf[..n])).unwrap();
            let trying = response_to(&req, 100, "Trying", None).unwrap();
            slow.send_to(&trying.to_bytes(), from).unwrap();
            std::thread::sleep(Duration::from_millis(900));
            let ok = response_to(&req, 200, "OK", Some("t")).unwrap();
            slow.send_to(&ok.to_bytes(), from).unwrap();
        });
        let m = Message::parse(register("z9hG4bKs2", 70).into()).unwrap();
        let r = ep
            .send_request_or_give_up(m, target, Duration::from_millis(300))
            .await;
        assert_eq!(r.map(|m| m.status()).ok().flatten(), Some(200));
        uas.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn answers_to_the_source_and_sends_from_a_chosen_address() {
        let timers = Timers::RFC3261.scaled_down(10);
        // Two addresses, as the P-CSCF binds its plain and protected ports.
        let (ep, mut rx) = SipEndpoint::bind_all(
            &[
                "127.0.0.1:0".parse().unwrap(),
                "127.0.0.1:0".parse().unwrap(),
            ],
            "127.0.0.1",
            timers,
        )
        .await
        .unwrap();
        let [first, second] = ep.local_addrs()[..] else {
            panic!("two addresses")
        };
        // A request without rport whose Via names another port (a UE's protected server
        // port): respond_to_source sends the answer back to the source all the same.
        let ue = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        ue.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let text = register("z9hG4bKsrc1", 70).replace(";rport", "");
        ue.send_to(text.as_bytes(), second).unwrap();
        let mut req = rx.recv().await.unwrap();
        assert_eq!(req.local, second);
        req.respond_to_source().unwrap();
        let resp = response_to(&req.message, 200, "OK", Some("t")).unwrap();
        ep.respond(&req, resp).await;
        let got = recv(&ue);
        assert_eq!(got.status(), Some(200));
        let via = got.top_via().unwrap();
        assert_eq!(via.rport(), Some(Some(ue.local_addr().unwrap().port())));
        // A request sent from the second address leaves from it and names it in Via.
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let target = Target {
            addr: peer.local_addr().unwrap(),
            transport: Transport::Udp,
        };
        let m = Message::parse(register("z9hG4bKsrc2", 70).into()).unwrap();
        let sending = {
            let ep = ep.clone();
            tokio::spawn(async move { ep.send_request_from(m, target, second).await })
        };
        let mut buf = vec![0u8; 65536];
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(from, second);
        let sent = Message::parse(bytes::Bytes::copy_from_slice(&buf[..n])).unwrap();
        assert_eq!(sent.top_via().unwrap().port, Some(second.port()));
        let answer = response_to(&sent, 200, "OK", Some("p")).unwrap();
        peer.send_to(&answer.to_bytes(), from).unwrap();
        let r = sending.await.unwrap().unwrap();
        assert_eq!(r.status(), Some(200));
        // An address the endpoint does not have is an error, not a send from elsewhere.
        let m = Message::parse(register("z9hG4bKsrc3", 70).into()).unwrap();
        let nowhere: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_ne!(nowhere, first);
        let r = ep.send_request_from(m, target, nowhere).await;
        assert!(matches!(r, Err(ClientError::Transport(_))), "{r:?}");
    }
}

// ---------------------------------------------------------------------------------------
// INVITE through the stateful proxy core: 100 at once, provisionals passed, forking with
// CANCEL, CANCEL from upstream, hop-by-hop ACK, the best answer.

mod invite_proxy {
    use ims_net::dns::{Target, Transport};
    use ims_net::endpoint::SipEndpoint;
    use ims_net::proxy::{ProxyBranch, proxy_invite};
    use ims_sip::transaction::Timers;
    use ims_sip::{Message, Method, response_to};
    use std::net::{SocketAddr, UdpSocket};
    use std::time::Duration;

    fn invite(branch: &str, call: &str) -> String {
        format!(
            "INVITE sip:bob@hims.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch={branch};rport\r\n\
             From: <sip:alice@hims.net>;tag=a1\r\nTo: <sip:bob@hims.net>\r\nCall-ID: {call}\r\n\
             CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContact: <sip:alice@127.0.0.1:5999>\r\n\
             Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
        )
    }

    fn cancel(branch: &str, call: &str) -> String {
        format!(
            "CANCEL sip:bob@hims.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch={branch};rport\r\n\
             From: <sip:alice@hims.net>;tag=a1\r\nTo: <sip:bob@hims.net>\r\nCall-ID: {call}\r\n\
             CSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    }

    fn ack(branch: &str, call: &str, to_tag: &str) -> String {
        format!(
            "ACK sip:bob@hims.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch={branch};rport\r\n\
             From: <sip:alice@hims.net>;tag=a1\r\nTo: <sip:bob@hims.net>;tag={to_tag}\r\nCall-ID: {call}\r\n\
             CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    }

    fn socket() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    }

    /// The next message on `s` that `want` accepts (retransmissions and others skipped).
    fn next(s: &UdpSocket, want: impl Fn(&Message) -> bool) -> (Message, SocketAddr) {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = s
                .recv_from(&mut buf)
                .expect("a datagram within the timeout");
            let m = Message::parse(bytes::Bytes::copy_from_slice(&buf[..n])).unwrap();
            if want(&m) {
                return (m, from);
            }
        }
    }

    fn status(code: u16) -> impl Fn(&Message) -> bool {
        move |m| m.status() == Some(code)
    }

    fn method(want: Method) -> impl Fn(&Message) -> bool {
        move |m| m.method() == Some(want)
    }

    /// A UAS's answer to `req`, sent back to the proxy at `to`.
    fn answer(s: &UdpSocket, req: &Message, code: u16, tag: &str, to: SocketAddr) {
        let r = response_to(req, code, "X", Some(tag)).unwrap();
        s.send_to(&r.to_bytes(), to).unwrap();
    }

    /// Nothing that `want` accepts arrives on `s` within `d`.
    fn quiet(s: &UdpSocket, d: Duration, want: impl Fn(&Message) -> bool) -> bool {
        s.set_read_timeout(Some(d)).unwrap();
        let mut buf = vec![0u8; 65536];
        let mut ok = true;
        while let Ok(n) = s.recv(&mut buf) {
            let m = Message::parse(bytes::Bytes::copy_from_slice(&buf[..n])).unwrap();
            if want(&m) {
                ok = false;
            }
        }
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        ok
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn forks_cancels_and_answers_the_best() {
        let timers = Timers::RFC3261.scaled_down(10);
        let (proxy, mut rx) =
            SipEndpoint::bind("127.0.0.1:0".parse().unwrap(), "127.0.0.1", timers)
                .await
                .unwrap();
        let p_addr = proxy.local_addr();
        let (uas1, uas2, uac) = (socket(), socket(), socket());
        let targets = [uas1.local_addr().unwrap(), uas2.local_addr().unwrap()];
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Some(mut req) = rx.recv().await {
                let p = p.clone();
                tokio::spawn(async move {
                    if !p.admit(&mut req, "px").await {
                        return;
                    }
                    let branches = targets
                        .iter()
                        .map(|&addr| ProxyBranch {
                            message: req.message.clone(),
                            target: Target {
                                addr,
                                transport: Transport::Udp,
                            },
                            local: None,
                            flow: false,
                            unheard: None,
                        })
                        .collect();
                    proxy_invite(&p, &req, branches, "px").await;
                });
            }
        });

        // 1. Two branches; one answers, the other is CANCELled and its 487 ACKed here.
        uac.send_to(invite("z9hG4bKc1", "call1").as_bytes(), p_addr)
            .unwrap();
        let (trying, _) = next(&uac, |m| m.status().is_some());
        assert_eq!(trying.status(), Some(100), "100 Trying at once");
        let (inv1, _) = next(&uas1, method(Method::Invite));
        let (inv2, _) = next(&uas2, method(Method::Invite));
        assert_eq!(inv1.vias().count(), 2, "our Via on top");
        assert_eq!(inv1.body(), b"v=0\n");
        assert_ne!(
            inv1.top_via().unwrap().branch(),
            inv2.top_via().unwrap().branch()
        );
        answer(&uas1, &inv1, 180, "b1", p_addr);
        answer(&uas2, &inv2, 180, "b2", p_addr);
        let (ringing, _) = next(&uac, status(180));
        assert_eq!(ringing.vias().count(), 1, "the proxy's Via popped");
        // The INVITE again: the last provisional again, no second INVITE downstream.
        uac.send_to(invite("z9hG4bKc1", "call1").as_bytes(), p_addr)
            .unwrap();
        let (again, _) = next(&uac, |m| m.status().is_some_and(|s| s < 200));
        assert!(again.status() == Some(180) || again.status() == Some(100));
        answer(&uas1, &inv1, 200, "b1", p_addr);
        let (ok, _) = next(&uac, status(200));
        assert_eq!(ok.to_addr().unwrap().tag(), Some("b1"));
        let (c2, _) = next(&uas2, method(Method::Cancel));
        assert_eq!(
            c2.top_via().unwrap().branch(),
            inv2.top_via().unwrap().branch(),
            "the CANCEL has its INVITE's branch"
        );
        answer(&uas2, &c2, 200, "b2", p_addr);
        answer(&uas2, &inv2, 487, "b2", p_addr);
        let (a2, _) = next(&uas2, method(Method::Ack));
        assert_eq!(
            a2.top_via().unwrap().branch(),
            inv2.top_via().unwrap().branch(),
            "hop-by-hop ACK of the 487"
        );
        assert_eq!(a2.to_addr().unwrap().tag(), Some("b2"));
        assert!(
            quiet(&uac, Duration::from_millis(300), status(487)),
            "the 487 of the losing branch stays here"
        );

        // 2. CANCEL from upstream: 200 to it, CANCEL to both, one 487 up, its ACK absorbed.
        uac.send_to(invite("z9hG4bKc2", "call2").as_bytes(), p_addr)
            .unwrap();
        next(&uac, status(100));
        let (inv1, _) = next(&uas1, method(Method::Invite));
        let (inv2, _) = next(&uas2, method(Method::Invite));
        answer(&uas1, &inv1, 183, "b1", p_addr);
        answer(&uas2, &inv2, 180, "b2", p_addr);
        next(&uac, |m| m.status().is_some_and(|s| s > 100 && s < 200));
        uac.send_to(cancel("z9hG4bKc2", "call2").as_bytes(), p_addr)
            .unwrap();
        let (c200, _) = next(&uac, |m| m.cseq().is_ok_and(|c| c.method == Method::Cancel));
        assert_eq!(c200.status(), Some(200));
        for (uas, inv, tag) in [(&uas1, &inv1, "b1"), (&uas2, &inv2, "b2")] {
            let (c, _) = next(uas, method(Method::Cancel));
            answer(uas, &c, 200, tag, p_addr);
            answer(uas, inv, 487, tag, p_addr);
            next(uas, method(Method::Ack));
        }
        let (terminated, _) = next(&uac, status(487));
        let tag = terminated.to_addr().unwrap().tag().unwrap().to_owned();
        uac.send_to(ack("z9hG4bKc2", "call2", &tag).as_bytes(), p_addr)
            .unwrap();
        assert!(
            quiet(&uac, Duration::from_millis(300), status(487)),
            "no 487 retransmission after our ACK"
        );
        // A CANCEL for nothing: 481.
        uac.send_to(cancel("z9hG4bKnone", "call9").as_bytes(), p_addr)
            .unwrap();
        let (r, _) = next(&uac, |m| m.status().is_some());
        assert_eq!(r.status(), Some(481));

        // 2b. CANCEL while one branch has not answered at all: it counts as 487 at once, so
        // the caller is not held for Timer B (3.2 s here).
        uac.send_to(invite("z9hG4bKc5", "call5").as_bytes(), p_addr)
            .unwrap();
        let (inv1, _) = next(&uas1, method(Method::Invite));
        next(&uas2, method(Method::Invite));
        answer(&uas1, &inv1, 180, "b1", p_addr);
        next(&uac, status(180));
        let t0 = std::time::Instant::now();
        uac.send_to(cancel("z9hG4bKc5", "call5").as_bytes(), p_addr)
            .unwrap();
        let (c, _) = next(&uas1, method(Method::Cancel));
        answer(&uas1, &c, 200, "b1", p_addr);
        answer(&uas1, &inv1, 487, "b1", p_addr);
        let (r, _) = next(&uac, |m| {
            m.status().is_some_and(|s| s >= 200)
                && m.cseq().is_ok_and(|c| c.method == Method::Invite)
        });
        assert_eq!(r.status(), Some(487));
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        let tag = r.to_addr().unwrap().tag().unwrap().to_owned();
        uac.send_to(ack("z9hG4bKc5", "call5", &tag).as_bytes(), p_addr)
            .unwrap();
        // The silent branch answers late: it gets its CANCEL then.
        let (inv2_late, _) = next(&uas2, method(Method::Invite));
        answer(&uas2, &inv2_late, 180, "b2", p_addr);
        let (c2, _) = next(&uas2, method(Method::Cancel));
        answer(&uas2, &c2, 200, "b2", p_addr);
        answer(&uas2, &inv2_late, 487, "b2", p_addr);
        next(&uas2, method(Method::Ack));

        // 3. No 2xx: 486 and 603 -> the 6xx goes up; retransmitted until ACKed.
        uac.send_to(invite("z9hG4bKc3", "call3").as_bytes(), p_addr)
            .unwrap();
        let (inv1, _) = next(&uas1, method(Method::Invite));
        let (inv2, _) = next(&uas2, method(Method::Invite));
        answer(&uas1, &inv1, 486, "b1", p_addr);
        next(&uas1, method(Method::Ack));
        answer(&uas2, &inv2, 603, "b2", p_addr);
        next(&uas2, method(Method::Ack));
        let (decline, _) = next(&uac, |m| m.status().is_some_and(|s| s >= 300));
        assert_eq!(decline.status(), Some(603));
        let (again, _) = next(&uac, status(603));
        assert_eq!(again.to_bytes(), decline.to_bytes(), "Timer G");

        // 4. Nobody answers: Timer B (3.2 s at this scale), 408.
        drop((uas1, uas2));
        uac.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        uac.send_to(invite("z9hG4bKc4", "call4").as_bytes(), p_addr)
            .unwrap();
        let (r, _) = next(&uac, |m| {
            m.status().is_some_and(|s| s >= 200) && m.call_id().ok() == Some("call4")
        });
        assert_eq!(r.status(), Some(408));
    }
}

//! The I-CSCF over real sockets: our HSS answers its UARs over Diameter TCP, and the
//! REGISTER goes to S-CSCF stand-ins of the test (real SIP endpoints): one that never answers,
//! one that answers 503, one that answers 200. The I-CSCF must get past the first two.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ims_net::endpoint::SipEndpoint;
use ims_sip::transaction::Timers;
use ims_sip::{Message, response_to};
use ims_store::{Credentials, NewPublicIdentity, NewSubscriber, Store};

/// A stand-in S-CSCF answering every request with `status`; counts what it got.
async fn scscf(status: u16) -> (SocketAddr, Arc<AtomicUsize>) {
    let (ep, mut rx) =
        SipEndpoint::bind("127.0.0.1:0".parse().unwrap(), "127.0.0.1", Timers::RFC3261)
            .await
            .unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    let addr = ep.local_addr();
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let r = response_to(&req.message, status, "Stand-in", Some("x")).unwrap();
            ep.respond(&req, r).await;
        }
    });
    (addr, n)
}

fn register(me: SocketAddr, call_id: &str, expires: u32) -> String {
    format!(
        "REGISTER sip:hims.net SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@hims.net>;tag=1\r\nTo: <sip:alice@hims.net>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@{me}>\r\nExpires: {expires}\r\n\
         Authorization: Digest username=\"alice@hims.net\", realm=\"hims.net\", uri=\"sip:hims.net\", nonce=\"\", response=\"\"\r\n\
         P-Visited-Network-ID: \"hims.net\"\r\nContent-Length: 0\r\n\r\n"
    )
}

fn recv(s: &UdpSocket) -> Message {
    let mut buf = vec![0u8; 65536];
    let n = s.recv(&mut buf).expect("an answer in time");
    Message::parse(Bytes::copy_from_slice(&buf[..n])).unwrap()
}

/// Our HSS (alice provisioned, `max_waiting` as given, `preferred` the S-CSCF it names in
/// Server-Capabilities) and our I-CSCF over it with `scscfs` configured (Timer F 640 ms).
/// Returns the I-CSCF's SIP address and the HSS's subscribers.
async fn chain(
    max_waiting: usize,
    preferred: &str,
    scscfs: &[String],
) -> (
    SocketAddr,
    std::sync::Arc<ims_hss::subscribers::Subscribers>,
) {
    let (i, subs, _) = chain_admin(max_waiting, preferred, scscfs).await;
    (i, subs)
}

/// As [`chain`], and the address of the I-CSCF's admin API.
async fn chain_admin(
    max_waiting: usize,
    preferred: &str,
    scscfs: &[String],
) -> (
    SocketAddr,
    std::sync::Arc<ims_hss::subscribers::Subscribers>,
    SocketAddr,
) {
    let dir = ims_testkit::scratch_dir("icscf-it");
    let db = format!("sqlite://{}", dir.join("hss.sqlite").display());
    let store = Store::open(&db).await.unwrap();
    store
        .add_subscriber(&NewSubscriber {
            name: "alice".into(),
            impi: "alice@hims.net".into(),
            credentials: Credentials::Digest {
                realm: "hims.net".into(),
                ha1: zeroize::Zeroizing::new("0123456789abcdef0123456789abcdef".into()),
            },
            public_identities: vec![NewPublicIdentity {
                impu: "sip:alice@hims.net".into(),
                barred: false,
                irs: 0,
            }],
            // A service for the unregistered state: unregistered, alice is served by an
            // S-CSCF the I-CSCF chooses (LIA 2003).
            ifc_xml: "<InitialFilterCriteria><Priority>0</Priority><ApplicationServer>\
                      <ServerName>sip:vm.hims.net</ServerName>\
                      <DefaultHandling>0</DefaultHandling></ApplicationServer>\
                      <ProfilePartIndicator>1</ProfilePartIndicator></InitialFilterCriteria>"
                .into(),
            capability_set: None,
            roaming_allowed: vec![],
        })
        .await
        .unwrap();
    // Dave has no service for the unregistered state: unregistered, nothing serves him
    // (LIA 5003).
    store
        .add_subscriber(&NewSubscriber {
            name: "dave".into(),
            impi: "dave@hims.net".into(),
            credentials: Credentials::Digest {
                realm: "hims.net".into(),
                ha1: zeroize::Zeroizing::new("0123456789abcdef0123456789abcdef".into()),
            },
            public_identities: vec![NewPublicIdentity {
                impu: "sip:dave@hims.net".into(),
                barred: false,
                irs: 0,
            }],
            ifc_xml: String::new(),
            capability_set: None,
            roaming_allowed: vec![],
        })
        .await
        .unwrap();
    let hss = ims_hss::Hss::start(&ims_hss::Config {
        database: db,
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: None,
        home_network: "hims.net".into(),
        log: "info".into(),
        preload: true,
        diameter: ims_hss::DiameterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            allowed_peers: vec!["icscf1.hims.net".into()],
            max_waiting,
            // The operator prefers the silent one.
            capabilities: ims_hss::Capabilities {
                server_names: vec![preferred.to_owned()],
                ..Default::default()
            },
            ..Default::default()
        },
    })
    .await
    .unwrap();
    let hss_addr = hss.diameter_addr();
    // The HSS answers from memory: change its subscribers through it, not behind its back.
    let subs = hss.subscribers();
    tokio::spawn(hss.run_until(std::future::pending()));
    let entry = |uri: String| ims_icscf::ScscfEntry {
        uri,
        capabilities: vec![],
    };
    let icscf = ims_icscf::Icscf::start_with_timers(
        ims_icscf::Config {
            sip_listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            via_host: "127.0.0.1".into(),
            home_domain: "hims.net".into(),
            dns: vec!["127.0.0.1:9".parse().unwrap()],
            log: "info".into(),
            diameter: ims_net::diameter::CxClientConfig {
                hss: hss_addr,
                origin_host: "icscf1.hims.net".into(),
                origin_realm: "hims.net".into(),
                destination_realm: "hims.net".into(),
                destination_host: None,
                watchdog_seconds: 30,
                request_timeout_seconds: 5,
                local_address: None,
            },
            scscf: scscfs.iter().cloned().map(entry).collect(),
            // The silent S-CSCF is given up on after 500 ms, long before Timer F (32 s, the
            // P-CSCF's own limit toward us).
            scscf_timeout_ms: 500,
        },
        Timers::RFC3261,
    )
    .await
    .unwrap();
    let i = icscf.sip_addr();
    let admin = icscf.admin_addr().expect("admin_listen is set");
    assert!(
        icscf.wait_diameter(Duration::from_secs(10)).await,
        "CER/CEA with the HSS"
    );
    tokio::spawn(icscf.run_until(std::future::pending()));
    (i, subs, admin)
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_failing_s_cscfs_are_skipped() {
    // Nobody answers here (a bound UDP socket that never reads).
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_uri = format!("sip:{}", silent.local_addr().unwrap());
    let (busy, busy_n) = scscf(503).await;
    let (good, good_n) = scscf(200).await;

    let (i, subs) = chain(
        1000,
        &silent_uri,
        &[format!("sip:{busy}"), format!("sip:{good}")],
    )
    .await;

    let ue = UdpSocket::bind("127.0.0.1:0").unwrap();
    ue.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = ue.local_addr().unwrap();
    // First registration: the HSS gives capabilities with the silent one preferred; it times
    // out, the 503 one is skipped, the third answers.
    ue.send_to(register(me, "f1", 600).as_bytes(), i).unwrap();
    let r = recv(&ue);
    assert_eq!(r.status(), Some(200));
    assert_eq!(
        (busy_n.load(Ordering::SeqCst), good_n.load(Ordering::SeqCst)),
        (1, 1)
    );
    silent.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    assert!(
        silent.recv(&mut buf).is_ok(),
        "the silent S-CSCF was tried first"
    );
    while silent.recv(&mut buf).is_ok() {}

    // Registered at the silent one: the HSS names it (2002); it fails, so the I-CSCF asks
    // again with REGISTRATION_AND_CAPABILITIES and picks another.
    subs.set_scscf(
        "sip:alice@hims.net",
        Some(&ims_store::ScscfAssignment {
            server_name: silent_uri,
            diameter_host: None,
        }),
    )
    .await
    .unwrap();
    subs.set_reg_state("sip:alice@hims.net", ims_store::RegState::Registered)
        .await
        .unwrap();
    ue.send_to(register(me, "f2", 600).as_bytes(), i).unwrap();
    let r = recv(&ue);
    assert_eq!(r.status(), Some(200));
    assert!(
        silent.recv(&mut buf).is_ok(),
        "the named S-CSCF was tried first"
    );
    assert_eq!(good_n.load(Ordering::SeqCst), 2);

    // A deregistration that the named S-CSCF cannot take: nowhere else to go, 504.
    ue.send_to(register(me, "f3", 0).as_bytes(), i).unwrap();
    assert_eq!(recv(&ue).status(), Some(504));

    // A loop: the HSS names the I-CSCF itself as the S-CSCF. The REGISTER comes back with our
    // own Via and loop hash: 482, which is final and goes back to the UE.
    subs.set_scscf(
        "sip:alice@hims.net",
        Some(&ims_store::ScscfAssignment {
            server_name: format!("sip:{i}"),
            diameter_host: None,
        }),
    )
    .await
    .unwrap();
    ue.send_to(register(me, "f4", 600).as_bytes(), i).unwrap();
    assert_eq!(recv(&ue).status(), Some(482));
}

/// Overload: an HSS with no room answers the UAR 3004, and the I-CSCF answers 503 with
/// Retry-After at once; S-CSCFs that all answer 503 give a 503 too, without a second UAR
/// and without a 504.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_hss_or_busy_s_cscfs_are_503_with_retry_after() {
    let ue = UdpSocket::bind("127.0.0.1:0").unwrap();
    ue.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = ue.local_addr().unwrap();
    let retry_after = |r: &Message| -> u32 {
        r.header_str(ims_sip::HeaderName::RetryAfter)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };

    let (busy, busy_n) = scscf(503).await;
    let (i, _) = chain(0, &format!("sip:{busy}"), &[format!("sip:{busy}")]).await;
    ue.send_to(register(me, "b1", 600).as_bytes(), i).unwrap();
    let r = recv(&ue);
    assert_eq!(r.status(), Some(503), "{r}");
    assert!(
        String::from_utf8_lossy(r.reason().unwrap_or(b"")).contains("HSS too busy"),
        "{r}"
    );
    assert!((5..=10).contains(&retry_after(&r)), "{r}");
    assert_eq!(busy_n.load(Ordering::SeqCst), 0, "no S-CSCF asked");

    let (busy2, busy2_n) = scscf(503).await;
    let scscfs = [format!("sip:{busy}"), format!("sip:{busy2}")];
    let (i, _) = chain(1000, &scscfs[0], &scscfs).await;
    ue.send_to(register(me, "b2", 600).as_bytes(), i).unwrap();
    let r = recv(&ue);
    assert_eq!(r.status(), Some(503), "{r}");
    assert!(
        String::from_utf8_lossy(r.reason().unwrap_or(b"")).contains("S-CSCF overloaded"),
        "{r}"
    );
    assert!((5..=10).contains(&retry_after(&r)), "{r}");
    assert_eq!(
        (
            busy_n.load(Ordering::SeqCst),
            busy2_n.load(Ordering::SeqCst)
        ),
        (1, 1),
        "each S-CSCF tried once: no second UAR and round"
    );
}

/// A stand-in S-CSCF answering every request with `status`, keeping what it got.
async fn recording_scscf(status: u16) -> (SocketAddr, Arc<std::sync::Mutex<Vec<Message>>>) {
    let (ep, mut rx) =
        SipEndpoint::bind("127.0.0.1:0".parse().unwrap(), "127.0.0.1", Timers::RFC3261)
            .await
            .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = seen.clone();
    let addr = ep.local_addr();
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            keep.lock().unwrap().push(req.message.clone());
            let r = response_to(&req.message, status, "Stand-in", Some("x")).unwrap();
            ep.respond(&req, r).await;
        }
    });
    (addr, seen)
}

fn request(method: &str, me: SocketAddr, ruri: &str, route: &str, call_id: &str) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id};rport\r\n\
         Max-Forwards: 70\r\nRoute: {route}\r\nFrom: <sip:bob@hims.net>;tag=1\r\nTo: <{ruri}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nContent-Type: text/plain\r\n\
         Content-Length: 2\r\n\r\nhi"
    )
}

/// Terminating requests (TS 24.229 §5.3.2): the LIR decides. No S-CSCF assigned (2003 with
/// capabilities): one is chosen; the Server-Name of the user's S-CSCF: that one, whose
/// answer comes back whatever it is (no failover once an S-CSCF answered); a user the HSS
/// does not know: 404; one not registered and without unregistered-state services (5003):
/// 480, no S-CSCF asked; the I-CSCF stays out of the path. INVITE goes the same way: 100 at
/// once, the S-CSCF's final answer passed back, and the ACK of that failure absorbed. A
/// SUBSCRIBE out of a dialog goes the same way; one inside a dialog, or an UPDATE, gets 501.
#[tokio::test(flavor = "multi_thread")]
async fn terminating_requests_are_routed_by_lir() {
    let (chosen, chosen_seen) = recording_scscf(200).await;
    let (named, named_seen) = recording_scscf(500).await;
    let (i, subs) = chain(1000, &format!("sip:{chosen}"), &[format!("sip:{chosen}")]).await;
    let ue = UdpSocket::bind("127.0.0.1:0").unwrap();
    ue.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = ue.local_addr().unwrap();
    let our_route = format!("<sip:{i};lr>");

    let send = |method: &str, ruri: &str, call_id: &str| {
        ue.send_to(request(method, me, ruri, &our_route, call_id).as_bytes(), i)
            .unwrap();
        recv(&ue)
    };
    let r = send("MESSAGE", "sip:alice@hims.net", "t1");
    assert_eq!(r.status(), Some(200), "{r}");
    {
        let seen = chosen_seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let m = &seen[0];
        assert_eq!(m.request_uri_str(), Some("sip:alice@hims.net"));
        let routes: Vec<&str> = m.values(ims_sip::HeaderName::Route).flatten().collect();
        assert_eq!(
            routes,
            [format!("<sip:{chosen};lr>")],
            "our Route popped: {m}"
        );
        assert!(m.header(ims_sip::HeaderName::RecordRoute).is_none(), "{m}");
        assert_eq!(m.body(), b"hi");
    }

    subs.set_scscf(
        "sip:alice@hims.net",
        Some(&ims_store::ScscfAssignment {
            server_name: format!("sip:{named}"),
            diameter_host: None,
        }),
    )
    .await
    .unwrap();
    let r = send("OPTIONS", "sip:alice@hims.net", "t2");
    assert_eq!(
        r.status(),
        Some(500),
        "the S-CSCF's answer, passed back: {r}"
    );
    assert_eq!(named_seen.lock().unwrap().len(), 1);
    assert_eq!(
        chosen_seen.lock().unwrap().len(),
        1,
        "no failover after an answer"
    );

    let r = send("MESSAGE", "sip:nobody@hims.net", "t3");
    assert_eq!(r.status(), Some(404), "{r}");
    let r = send("MESSAGE", "sip:dave@hims.net", "t3b");
    assert_eq!(r.status(), Some(480), "{r}");
    assert_eq!(
        (
            chosen_seen.lock().unwrap().len(),
            named_seen.lock().unwrap().len()
        ),
        (1, 1),
        "no S-CSCF got dave's MESSAGE"
    );
    let r = send("INVITE", "sip:alice@hims.net", "t4");
    assert_eq!(r.status(), Some(100), "100 Trying at once: {r}");
    let r = recv(&ue);
    assert_eq!(
        r.status(),
        Some(500),
        "the S-CSCF's answer to the INVITE: {r}"
    );
    {
        let seen = named_seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "the named S-CSCF got the INVITE");
        assert!(seen[1].header(ims_sip::HeaderName::RecordRoute).is_none());
    }
    let tag = r.to_addr().unwrap().tag().unwrap().to_owned();
    let ack = request("ACK", me, "sip:alice@hims.net", &our_route, "t4").replace(
        "To: <sip:alice@hims.net>",
        &format!("To: <sip:alice@hims.net>;tag={tag}"),
    );
    ue.send_to(ack.as_bytes(), i).unwrap();
    // Timer G (T1 is 10 ms here) may have re-sent the 500 before the ACK got there; once
    // it did, the retransmissions stop.
    // Without the ACK they would go on until Timer H (640 ms).
    let acked = std::time::Instant::now();
    ue.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut last = None;
    while ue.recv(&mut buf).is_ok() {
        last = Some(acked.elapsed());
    }
    assert!(
        last.is_none_or(|l| l < Duration::from_millis(150)),
        "500 still re-sent {last:?} after the ACK"
    );
    ue.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        named_seen.lock().unwrap().len(),
        2,
        "the ACK stayed at the I-CSCF"
    );
    // A SUBSCRIBE out of a dialog (Kamailio's P-CSCF subscribing to the reg event) goes to
    // the user's S-CSCF too, its answer passed back.
    let r = send("SUBSCRIBE", "sip:alice@hims.net", "t5");
    assert_eq!(r.status(), Some(500), "the S-CSCF's answer: {r}");
    {
        let seen = named_seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "the named S-CSCF got the SUBSCRIBE");
        assert_eq!(seen[2].method(), Some(ims_sip::Method::Subscribe));
        let routes: Vec<&str> = seen[2]
            .values(ims_sip::HeaderName::Route)
            .flatten()
            .collect();
        assert_eq!(routes, [format!("<sip:{named};lr>")], "{}", seen[2]);
    }
    // Inside a dialog (a To tag) it is not the I-CSCF's, nor is a method no I-CSCF routes.
    let in_dialog = request("SUBSCRIBE", me, "sip:alice@hims.net", &our_route, "t6")
        .replace("To: <sip:alice@hims.net>", "To: <sip:alice@hims.net>;tag=9");
    ue.send_to(in_dialog.as_bytes(), i).unwrap();
    let r = recv(&ue);
    assert_eq!(r.status(), Some(501), "{r}");
    let r = send("UPDATE", "sip:alice@hims.net", "t7");
    assert_eq!(r.status(), Some(501), "{r}");
    assert_eq!(named_seen.lock().unwrap().len(), 3);
}

/// The admin API counts what really passed: a registration (UAA 2001, the stand-in S-CSCF's
/// 200 passed back), an unknown user's (UAA 5001, 403), a MESSAGE to a user without an
/// S-CSCF (LIA 2003, chosen one's 200), to an unknown one (LIA 5001, 404) and to one who
/// is not registered and has no unregistered-state services (LIA 5003, 480); non-loopback
/// admin addresses are refused.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_responses_and_cx_answers() {
    let (good, _) = recording_scscf(200).await;
    let (i, _, admin) = chain_admin(1000, &format!("sip:{good}"), &[format!("sip:{good}")]).await;
    let ue = UdpSocket::bind("127.0.0.1:0").unwrap();
    ue.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = ue.local_addr().unwrap();
    let get = move |path: &'static str| {
        tokio::task::spawn_blocking(move || {
            let mut resp = ureq::get(&format!("http://{admin}{path}")).call().unwrap();
            resp.body_mut().read_to_string().unwrap()
        })
    };
    let health = get("/health").await.unwrap();
    assert!(health.contains("\"ok\""), "{health}");

    let started = std::time::Instant::now();
    ue.send_to(register(me, "m1", 600).as_bytes(), i).unwrap();
    assert_eq!(recv(&ue).status(), Some(200));
    ue.send_to(
        register(me, "m2", 600).replace("alice", "bob").as_bytes(),
        i,
    )
    .unwrap();
    assert_eq!(recv(&ue).status(), Some(403));
    let our_route = format!("<sip:{i};lr>");
    for (call, ruri, status) in [
        ("m3", "sip:alice@hims.net", 200),
        ("m4", "sip:nobody@hims.net", 404),
        ("m5", "sip:dave@hims.net", 480),
    ] {
        ue.send_to(request("MESSAGE", me, ruri, &our_route, call).as_bytes(), i)
            .unwrap();
        assert_eq!(recv(&ue).status(), Some(status));
    }

    let want = [
        "ims_icscf_requests_total{method=\"REGISTER\"} 2",
        "ims_icscf_requests_total{method=\"MESSAGE\"} 3",
        "ims_icscf_responses_total{status=\"200\"} 2",
        "ims_icscf_responses_total{status=\"403\"} 1",
        "ims_icscf_responses_total{status=\"404\"} 1",
        "ims_icscf_responses_total{status=\"480\"} 1",
        "ims_icscf_cx_answers_total{command=\"UAR\",result=\"2001\"} 1",
        "ims_icscf_cx_answers_total{command=\"UAR\",result=\"5001\"} 1",
        "ims_icscf_cx_answers_total{command=\"LIR\",result=\"2003\"} 1",
        "ims_icscf_cx_answers_total{command=\"LIR\",result=\"5001\"} 1",
        "ims_icscf_cx_answers_total{command=\"LIR\",result=\"5003\"} 1",
    ];
    // The response is counted as it is sent: by the time the UE has it, it is in.
    let text = get("/metrics").await.unwrap();
    for w in want {
        assert!(text.lines().any(|l| l == w), "no `{w}` in:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("ims_icscf_sip_transactions{side=\"client\"} ")),
        "{text}"
    );
    assert!(!text.contains("result=\"timeout\""), "{text}");
    // Every UAR and LIR sent was answered: each round trip observed once, within the time
    // the whole exchange took.
    let took = started.elapsed().as_secs_f64();
    for (command, sent) in [("UAR", 2.0), ("LIR", 3.0)] {
        let value = |series: String| {
            sample(&text, &series).unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
        };
        let name = "ims_icscf_cx_request_seconds";
        let labels = format!("command=\"{command}\"");
        assert_eq!(value(format!("{name}_count{{{labels}}}")), sent, "{text}");
        let inf = value(format!("{name}_bucket{{{labels},le=\"+Inf\"}}"));
        assert_eq!(inf, sent, "{text}");
        let sum = value(format!("{name}_sum{{{labels}}}"));
        assert!(sum > 0.0 && sum <= took, "{sum} s of {took} s:\n{text}");
    }

    let mut bad: ims_icscf::Config = ims_icscf::Config {
        admin_listen: Some("10.0.0.3:8080".parse().unwrap()),
        ..lab_like_config()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .contains("not a loopback address")
    );
    bad.admin_listen = Some("[::1]:8080".parse().unwrap());
    bad.validate().unwrap();
}

/// The value of the sample `series` (its name and labels, exactly as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A Cx peer of the test's own (our peer state machine over a std socket, as a relay would
/// be): accepts the I-CSCF's connection, exchanges capabilities, sends it `request` (a MAR, as
/// a relay whose routes went wrong would) and returns the answer, `None` when none came in
/// 3 s.
fn peer_sending(listener: std::net::TcpListener, request: Vec<u8>) -> Option<Vec<u8>> {
    use ims_diameter::peer::{Event, Peer, PeerConfig, Role, State};
    use std::io::{Read, Write};
    use std::time::Instant;
    let (mut stream, _) = listener.accept().unwrap();
    let mut cfg = PeerConfig::cx("relay1.hims.net", "hims.net");
    cfg.allowed_peers = vec!["icscf1.hims.net".into()];
    cfg.request_timeout = Duration::from_secs(3);
    let mut peer = Peer::new(cfg, Role::Responder, 3);
    peer.handle_connected(Instant::now());
    let (mut rx, mut buf) = (Vec::new(), vec![0u8; 65536]);
    let mut request = Some(request);
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if peer.state() == State::Open
            && let Some(r) = request.take()
        {
            peer.send_request(Instant::now(), r).unwrap();
        }
        while let Some(b) = peer.poll_transmit() {
            stream.write_all(&b).unwrap();
        }
        while let Some(e) = peer.poll_event() {
            match e {
                Event::Answer { bytes, .. } => return Some(bytes),
                Event::RequestFailed { .. } | Event::Close => return None,
                _ => {}
            }
        }
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => {
                rx.extend_from_slice(&buf[..n]);
                while let Ok(Some(len)) = ims_diameter::frame(&rx, 1 << 20) {
                    let m: Vec<u8> = rx.drain(..len).collect();
                    peer.handle_bytes(Instant::now(), &m);
                }
            }
            Err(_) => peer.handle_timeout(Instant::now()),
        }
    }
    None
}

/// A Cx request that reaches the I-CSCF (a relay between it and the HSS may route one here:
/// freeDiameterd did, with routes that rank the I-CSCF as high as the HSS) is answered at
/// once with 3001 DIAMETER_COMMAND_UNSUPPORTED, E bit set, its Session-Id echoed and our
/// Origin-Host, instead of being left for its sender to time out.
#[tokio::test(flavor = "multi_thread")]
async fn a_cx_request_to_the_icscf_gets_3001() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = lab_like_config();
    cfg.sip_listen = "127.0.0.1:0".parse().unwrap();
    cfg.diameter.hss = listener.local_addr().unwrap();
    cfg.diameter.local_address = None;
    let mar = ims_diameter::cx::Mar {
        base: ims_diameter::cx::RequestBase {
            session_id: "scscf1.hims.net;1;7",
            origin_host: "scscf1.hims.net",
            origin_realm: "hims.net",
            destination_realm: "hims.net",
            ..Default::default()
        },
        user_name: "alice@hims.net",
        public_identity: "sip:alice@hims.net",
        server_name: "sip:scscf1.hims.net:5060",
        number_auth_items: 1,
        auth_data_item: ims_diameter::cx::SipAuthDataItem {
            authentication_scheme: Some("Unknown"),
            ..Default::default()
        },
    };
    let mut request = Vec::new();
    mar.encode(&mut request).unwrap();
    let peer = tokio::task::spawn_blocking(move || peer_sending(listener, request));
    let icscf = ims_icscf::Icscf::start(cfg).await.unwrap();
    tokio::spawn(icscf.run_until(std::future::pending()));
    let answer = peer
        .await
        .unwrap()
        .expect("the I-CSCF answered the MAR (no answer in 3 s)");
    let msg = ims_diameter::Message::parse(&answer).unwrap();
    assert_eq!(
        msg.command_code(),
        ims_diameter::dict::command::MULTIMEDIA_AUTH
    );
    assert!(msg.header().flags & ims_diameter::header::flags::E != 0);
    let text = |def| {
        msg.find(def)
            .unwrap()
            .map(|a| a.as_utf8().unwrap().to_owned())
    };
    let code = msg
        .find(&ims_diameter::dict::RESULT_CODE)
        .unwrap()
        .map(|a| a.as_u32().unwrap());
    assert_eq!(code, Some(3001));
    assert_eq!(
        text(&ims_diameter::dict::SESSION_ID).as_deref(),
        Some("scscf1.hims.net;1;7")
    );
    assert_eq!(
        text(&ims_diameter::dict::ORIGIN_HOST).as_deref(),
        Some("icscf1.hims.net")
    );
}

/// A valid configuration (the lab's shape) for validation checks.
fn lab_like_config() -> ims_icscf::Config {
    ims_icscf::Config {
        sip_listen: "127.0.0.20:5060".parse().unwrap(),
        admin_listen: None,
        via_host: "icscf1.hims.net".into(),
        home_domain: "hims.net".into(),
        dns: vec![],
        log: "info".into(),
        diameter: ims_net::diameter::CxClientConfig {
            hss: "127.0.0.40:3868".parse().unwrap(),
            origin_host: "icscf1.hims.net".into(),
            origin_realm: "hims.net".into(),
            destination_realm: "hims.net".into(),
            destination_host: None,
            watchdog_seconds: 30,
            request_timeout_seconds: 5,
            local_address: None,
        },
        scscf: vec![],
        scscf_timeout_ms: 4000,
    }
}

/// A hostile HSS (a TCP listener of the test answering the CER with our own peer, then
/// writing raw bytes): the HSS has no request for the I-CSCF, so an RTR, even one with an
/// unknown mandatory AVP, is refused 3001 DIAMETER_COMMAND_UNSUPPORTED (E bit) instead of
/// being left unanswered; a bad message length makes the I-CSCF close and reconnect, and a
/// REGISTER meanwhile is answered at once (480 with Retry-After: HSS unreachable).
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_hss_is_refused_and_survived() {
    use ims_diameter::peer::{Peer, PeerConfig, Role, State};
    use ims_diameter::{Header, MessageBuilder, dict, frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The next whole message on `s` (None: closed or 5 s of silence).
    async fn next(s: &mut tokio::net::TcpStream, rx: &mut Vec<u8>) -> Option<Vec<u8>> {
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(Some(len)) = frame(rx, 1 << 24) {
                return Some(rx.drain(..len).collect());
            }
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => rx.extend_from_slice(&buf[..n]),
                _ => return None,
            }
        }
    }
    /// Reads the CER and answers it 2001.
    async fn handshake(s: &mut tokio::net::TcpStream, rx: &mut Vec<u8>) {
        let mut cfg = PeerConfig::cx("hss1.hims.net", "hims.net");
        cfg.allowed_peers = vec!["icscf1.hims.net".into()];
        let mut p = Peer::new(cfg, Role::Responder, 3);
        p.handle_connected(std::time::Instant::now());
        let cer = next(s, rx).await.expect("a CER");
        p.handle_bytes(std::time::Instant::now(), &cer);
        assert_eq!(p.state(), State::Open);
        while let Some(b) = p.poll_transmit() {
            s.write_all(&b).await.unwrap();
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = lab_like_config();
    cfg.sip_listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin_listen = None;
    cfg.dns = vec!["127.0.0.1:9".parse().unwrap()];
    cfg.diameter.hss = listener.local_addr().unwrap();
    cfg.diameter.local_address = None;
    let icscf = ims_icscf::Icscf::start_with_timers(cfg, Timers::RFC3261)
        .await
        .unwrap();
    let i = icscf.sip_addr();
    let (mut s, _) = listener.accept().await.unwrap();
    let mut rx = Vec::new();
    handshake(&mut s, &mut rx).await;
    assert!(icscf.wait_diameter(Duration::from_secs(5)).await);
    tokio::spawn(icscf.run_until(std::future::pending()));

    // An RTR with an unknown mandatory AVP (code 65000): 3001, E bit, same identifiers.
    let hdr = Header::request(
        dict::command::REGISTRATION_TERMINATION,
        dict::APP_CX,
        true,
        0x4242,
        0x4343,
    );
    let mut rtr = Vec::new();
    let mut m = MessageBuilder::new(&mut rtr, &hdr);
    m.utf8(&dict::SESSION_ID, "hss1.hims.net;1;1")
        .utf8(&dict::ORIGIN_HOST, "hss1.hims.net")
        .utf8(&dict::ORIGIN_REALM, "hims.net")
        .utf8(&dict::USER_NAME, "alice@hims.net")
        .raw(65_000, 0x40, None, b"evil");
    m.finish().unwrap();
    s.write_all(&rtr).await.unwrap();
    let a = next(&mut s, &mut rx).await.expect("an answer to the RTR");
    let a = ims_diameter::Message::parse(&a).unwrap();
    let code = a
        .find(&dict::RESULT_CODE)
        .unwrap()
        .and_then(|c| c.as_u32().ok());
    assert_eq!(
        (
            a.command_code(),
            a.is_request(),
            a.header().is_error(),
            a.header().hop_by_hop,
            code
        ),
        (304, false, true, 0x4242, Some(3001))
    );
    assert_eq!(a.session_id().unwrap(), Some("hss1.hims.net;1;1"));

    // A bad length: the I-CSCF closes; a REGISTER then is answered at once; it reconnects.
    s.write_all(&[
        1, 0, 0, 13, 0x80, 0, 1, 0x2c, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1,
    ])
    .await
    .unwrap();
    assert!(next(&mut s, &mut rx).await.is_none(), "closed");
    let ue = UdpSocket::bind("127.0.0.1:0").unwrap();
    ue.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    ue.connect(i).unwrap();
    let t = std::time::Instant::now();
    ue.send(register(ue.local_addr().unwrap(), "hostile-1", 600).as_bytes())
        .unwrap();
    let resp = recv(&ue);
    assert_eq!(resp.status(), Some(480), "{resp}");
    assert!(
        resp.header_str(ims_sip::HeaderName::RetryAfter).is_some(),
        "{resp}"
    );
    assert!(t.elapsed() < Duration::from_millis(500), "at once");
    let (mut s2, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("the I-CSCF reconnects")
        .unwrap();
    let mut rx2 = Vec::new();
    handshake(&mut s2, &mut rx2).await;
}

//! P-CSCF and I-CSCF together over real sockets: a UE (a UDP socket of the test) registers
//! through our P-CSCF and I-CSCF, the I-CSCF asks our HSS (UAR over Diameter TCP), and the
//! REGISTER reaches a registrar peer of the test's own on a real SIP endpoint, which checks
//! what the P-CSCF and I-CSCF added and answers 401 (with ck/ik) then 200. The whole chain
//! with the real S-CSCF and SIPp runs in bin/tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ims_net::endpoint::SipEndpoint;
use ims_sip::transaction::Timers;
use ims_sip::{Auth, HeaderName, Message, response_to};
use ims_store::{Credentials, NewPublicIdentity, NewSubscriber, Store};

const K: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const OPC: &str = "cd63cb71954a9f4e48a5994e37a02baf";

fn subscriber(name: &str, roaming: &[&str]) -> NewSubscriber {
    NewSubscriber {
        name: name.into(),
        impi: format!("{name}@hims.net"),
        credentials: Credentials::Aka {
            k: zeroize::Zeroizing::new(hex(K)),
            opc: zeroize::Zeroizing::new(hex(OPC)),
            amf: [0x80, 0x00],
            sqn: 0,
        },
        public_identities: vec![NewPublicIdentity {
            impu: format!("sip:{name}@hims.net"),
            barred: false,
            irs: 0,
        }],
        ifc_xml: String::new(),
        capability_set: None,
        roaming_allowed: roaming.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The registrar peer: 401 for a REGISTER without a response, 200 otherwise; 200 to
/// anything else. Keeps every request it saw.
async fn registrar(seen: Arc<Mutex<Vec<Message>>>) -> SocketAddr {
    let (ep, mut rx) =
        SipEndpoint::bind("127.0.0.1:0".parse().unwrap(), "127.0.0.1", Timers::RFC3261)
            .await
            .unwrap();
    let me = ep.local_addr();
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let m = &req.message;
            seen.lock().unwrap().push(m.clone());
            let answered = m
                .auth(HeaderName::Authorization)
                .flatten()
                .any(|a| a.response().is_some_and(|r| !r.is_empty()));
            let mut r;
            if m.method_str() == Some("REGISTER") && !answered {
                r = response_to(m, 401, "Unauthorized", Some("s1")).unwrap();
                r.append_header(
                    "WWW-Authenticate",
                    "Digest realm=\"hims.net\", nonce=\"bm9uY2U=\", algorithm=AKAv1-MD5, \
                     qop=\"auth,auth-int\", ck=\"00112233445566778899aabbccddeeff\", \
                     ik=\"ffeeddccbbaa99887766554433221100\"",
                )
                .unwrap();
            } else if m.method_str() == Some("REGISTER") {
                r = registered(m, me, "<sip:alice@hims.net>, <tel:+15551234>");
            } else if m.method_str() == Some("SUBSCRIBE") {
                // The P-CSCF's reg event subscription: granted for 2 s only, so that it
                // must refresh it inside the dialog.
                r = response_to(m, 200, "OK", Some("s2")).unwrap();
                r.append_header("Expires", "2").unwrap();
                r.append_header("Contact", &format!("<sip:{me}>")).unwrap();
            } else {
                r = response_to(m, 200, "OK", Some("s2")).unwrap();
            }
            ep.respond(&req, r).await;
        }
    });
    me
}

/// The S-CSCF's 200 to REGISTER `m`, as the core sends it back: its Path, a Service-Route
/// through `scscf`, the P-Associated-URI `associated`, and its contacts with their expiry.
fn registered(m: &Message, scscf: SocketAddr, associated: &str) -> Message {
    let mut r = response_to(m, 200, "OK", Some("s1")).unwrap();
    for p in m.values(HeaderName::Path).flatten() {
        r.append_header("Path", p).unwrap();
    }
    r.append_header("Service-Route", &format!("<sip:orig@{scscf};lr>"))
        .unwrap();
    r.append_header("P-Associated-URI", associated).unwrap();
    let expires = m.expires().and_then(Result::ok).unwrap_or(600);
    for c in m.values(HeaderName::Contact).flatten() {
        r.append_header("Contact", &format!("{c};expires={expires}"))
            .unwrap();
    }
    r
}

fn register(
    ue: SocketAddr,
    call_id: &str,
    cseq: u32,
    user: &str,
    auth: &str,
    expires: u32,
) -> String {
    format!(
        "REGISTER sip:hims.net SIP/2.0\r\n\
         Via: SIP/2.0/UDP {ue};branch=z9hG4bK{call_id}{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@hims.net>;tag=u{cseq}\r\nTo: <sip:{user}@hims.net>\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{ue}>\r\nExpires: {expires}\r\n\
         Require: sec-agree\r\nSecurity-Client: ipsec-3gpp;alg=hmac-sha-1-96;spi-c=1111;spi-s=2222;port-c=5062;port-s=5063\r\n\
         Authorization: {auth}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// A socket standing for the whole core (the P-CSCF's fixed I-CSCF), a P-CSCF toward it
/// without reg event subscriptions and with `edit` applied to its configuration, and a UE
/// socket; reads time out after 5 s.
async fn core_pcscf_ue(
    edit: impl FnOnce(&mut ims_pcscf::Config),
) -> (UdpSocket, SocketAddr, UdpSocket) {
    let core = UdpSocket::bind("127.0.0.1:0").unwrap();
    core.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut cfg = pcscf_config(core.local_addr().unwrap());
    cfg.reg_event = false;
    edit(&mut cfg);
    let pcscf = ims_pcscf::Pcscf::start(cfg).await.unwrap();
    let p = pcscf.sip_addr();
    tokio::spawn(pcscf.run_until(std::future::pending()));
    let ue = UdpSocket::bind("127.0.0.1:0").unwrap();
    ue.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (core, p, ue)
}

/// A P-CSCF on loopback without IPsec, with a fixed I-CSCF at `icscf`, defaults otherwise.
fn pcscf_config(icscf: SocketAddr) -> ims_pcscf::Config {
    ims_pcscf::Config {
        sip_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: None,
        sip_listen_v6: None,
        via_host: "127.0.0.1".into(),
        visited_network_id: "vims.net".into(),
        dns: vec!["127.0.0.1:9".parse().unwrap()],
        icscf: Some(format!("sip:{icscf}")),
        log: "info".into(),
        ipsec: ims_pcscf::ipsec::IpsecConfig {
            mode: ims_pcscf::ipsec::IpsecMode::Off,
            ..Default::default()
        },
        core_networks: Vec::new(),
        reg_event: true,
        max_registrations_in_flight: 64,
        register_latency_target_ms: 0,
        max_invites_in_flight: 64,
        icscf_failover_seconds: 4,
        database: None,
    }
}

/// alice's Authorization answering a challenge (the core takes it as answered).
const ALICE_ANSWERED: &str = "Digest username=\"alice@hims.net\", realm=\"hims.net\", \
    uri=\"sip:hims.net\", nonce=\"bm9uY2U=\", response=\"0123456789abcdef0123456789abcdef\", \
    algorithm=AKAv1-MD5";

/// alice registers from `ue` through the P-CSCF `p`, the socket `core` standing for the
/// whole core and answering 200 (with a Service-Route back to itself).
fn alice_registered(core: &UdpSocket, p: SocketAddr, ue: &UdpSocket, call: &str) {
    let me = ue.local_addr().unwrap();
    ue.send_to(
        register(me, call, 1, "alice", ALICE_ANSWERED, 600).as_bytes(),
        p,
    )
    .unwrap();
    let m = recv(core);
    assert_eq!(m.call_id().unwrap(), call);
    let ok = registered(&m, core.local_addr().unwrap(), "<sip:alice@hims.net>");
    core.send_to(&ok.to_bytes(), p).unwrap();
    let r = recv(ue);
    assert_eq!(r.status(), Some(200), "{r}");
}

fn recv(s: &UdpSocket) -> Message {
    let mut buf = vec![0u8; 65536];
    let n = s.recv(&mut buf).expect("an answer within 5 s");
    Message::parse(Bytes::copy_from_slice(&buf[..n])).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn ue_registers_through_p_and_i_cscf_and_sends_along_the_service_route() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let scscf = registrar(seen.clone()).await;

    // The HSS, with alice allowed to roam in vims.net and bob not.
    let dir = ims_testkit::scratch_dir("pcscf-it");
    let db = format!("sqlite://{}", dir.join("hss.sqlite").display());
    let store = Store::open(&db).await.unwrap();
    store
        .add_subscriber(&subscriber("alice", &["vims.net"]))
        .await
        .unwrap();
    store.add_subscriber(&subscriber("bob", &[])).await.unwrap();
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
            capabilities: ims_hss::Capabilities {
                server_names: vec![format!("sip:{scscf}")],
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

    let icscf = ims_icscf::Icscf::start(ims_icscf::Config {
        sip_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: None,
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
        scscf: vec![],
        scscf_timeout_ms: 4000,
    })
    .await
    .unwrap();
    let icscf_addr = icscf.sip_addr();
    tokio::spawn(icscf.run_until(std::future::pending()));

    let pcscf = ims_pcscf::Pcscf::start(pcscf_config(icscf_addr))
        .await
        .unwrap();
    let p = pcscf.sip_addr();
    tokio::spawn(pcscf.run_until(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(300)).await; // CER/CEA

    let ue = UdpSocket::bind("127.0.0.1:0").unwrap();
    ue.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = ue.local_addr().unwrap();

    // First REGISTER: 401 without ck/ik.
    let first_auth = "Digest username=\"alice@hims.net\", realm=\"hims.net\", uri=\"sip:hims.net\", \
                      nonce=\"\", response=\"\", integrity-protected=\"yes\"";
    ue.send_to(
        register(me, "c1", 1, "alice", first_auth, 600).as_bytes(),
        p,
    )
    .unwrap();
    let r = recv(&ue);
    assert_eq!(r.status(), Some(401));
    let www = r
        .header_str(HeaderName::WwwAuthenticate)
        .unwrap()
        .to_owned();
    assert!(!www.contains("ck=") && !www.contains("ik="), "{www}");
    assert!(www.contains("nonce=\"bm9uY2U=\""), "{www}");
    assert_eq!(r.vias().count(), 1, "only the UE's Via");
    {
        let seen = seen.lock().unwrap();
        let at_s = &seen[0];
        assert_eq!(at_s.vias().count(), 3, "UE, P-CSCF, I-CSCF");
        let path = at_s.header_str(HeaderName::Path).unwrap();
        assert_eq!(path, format!("<sip:term@127.0.0.1:{};lr>", p.port()));
        assert!(at_s.has_option_tag(HeaderName::Require, "path"));
        assert!(!at_s.has_option_tag(HeaderName::Require, "sec-agree"));
        assert!(at_s.has_option_tag(HeaderName::Supported, "path"));
        assert!(at_s.header(HeaderName::SecurityClient).is_none());
        assert_eq!(
            at_s.visited_network_ids().next().unwrap().unwrap(),
            "vims.net"
        );
        assert!(
            at_s.header_str(HeaderName::PChargingVector)
                .unwrap()
                .contains("icid-value=")
        );
        let auth = at_s.header_str(HeaderName::Authorization).unwrap();
        let a = Auth::parse(auth).unwrap();
        assert_eq!(a.integrity_protected(), Some("no"), "{auth}");
        assert_eq!(at_s.headers_named(HeaderName::Authorization).count(), 1);
        let route = at_s.header_str(HeaderName::Route).unwrap();
        assert_eq!(
            route,
            format!("<sip:{scscf};lr>"),
            "the I-CSCF routes to the S-CSCF"
        );
        assert_eq!(at_s.max_forwards().unwrap().unwrap(), 68);
    }

    // Second REGISTER with a response: 200; the P-CSCF now knows the UE.
    let second = "Digest username=\"alice@hims.net\", realm=\"hims.net\", uri=\"sip:hims.net\", \
                  nonce=\"bm9uY2U=\", response=\"00112233445566778899aabbccddeeff\", \
                  algorithm=AKAv1-MD5, qop=auth, nc=00000001, cnonce=\"x\"";
    ue.send_to(register(me, "c1", 2, "alice", second, 600).as_bytes(), p)
        .unwrap();
    let r = recv(&ue);
    assert_eq!(r.status(), Some(200));
    assert!(r.header_str(HeaderName::ServiceRoute).is_some());
    assert!(r.header_str(HeaderName::PAssociatedUri).is_some());

    // A MESSAGE from the registered UE goes along the Service-Route with the asserted
    // identity; the P-Preferred-Identity it named is one of its own.
    let msg = format!(
        "MESSAGE sip:bob@hims.net SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKm1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@hims.net>;tag=m1\r\nTo: <sip:bob@hims.net>\r\n\
         Call-ID: m1\r\nCSeq: 1 MESSAGE\r\nP-Preferred-Identity: <tel:+15551234>\r\n\
         Route: <sip:127.0.0.1:{};lr>\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
        p.port()
    );
    ue.send_to(msg.as_bytes(), p).unwrap();
    let r = recv(&ue);
    assert_eq!(r.status(), Some(200));
    {
        let seen = seen.lock().unwrap();
        let m = seen
            .iter()
            .rev()
            .find(|m| m.method_str() == Some("MESSAGE"))
            .unwrap();
        assert_eq!(
            m.header_str(HeaderName::PAssertedIdentity),
            Some("<tel:+15551234>")
        );
        assert!(m.header(HeaderName::PPreferredIdentity).is_none());
        assert_eq!(
            m.header_str(HeaderName::Route).unwrap(),
            format!("<sip:orig@{scscf};lr>"),
            "the Service-Route replaced the UE's Route"
        );
    }

    // The P-CSCF subscribed to alice's reg event along her Service-Route, as the entity on her
    // Path; granted 2 s, it refreshes inside the dialog (to the Contact, CSeq up, our To tag).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    {
        let seen = seen.lock().unwrap();
        let subs: Vec<&Message> = seen
            .iter()
            .filter(|m| m.method_str() == Some("SUBSCRIBE"))
            .collect();
        assert!(
            subs.len() >= 2,
            "a SUBSCRIBE and its refresh: {}",
            subs.len()
        );
        let (first, refresh) = (subs[0], subs[1]);
        assert_eq!(first.request_uri_str(), Some("sip:alice@hims.net"));
        assert_eq!(
            first.header_str(HeaderName::Route).unwrap(),
            format!("<sip:orig@{scscf};lr>")
        );
        assert_eq!(
            first.header_str(HeaderName::PAssertedIdentity).unwrap(),
            format!("<sip:127.0.0.1:{}>", p.port())
        );
        assert_eq!(first.header_str(HeaderName::Event), Some("reg"));
        let expires = first.expires().unwrap().unwrap();
        assert!((600..=700).contains(&expires), "{expires}");
        assert_eq!(refresh.call_id(), first.call_id());
        assert_eq!(
            refresh.request_uri_str(),
            Some(format!("sip:{scscf}").as_str())
        );
        assert!(refresh.header(HeaderName::Route).is_none());
        assert_eq!(refresh.to_addr().unwrap().tag(), Some("s2"));
        assert_eq!(refresh.cseq().unwrap().seq, first.cseq().unwrap().seq + 1);
    }

    // The S-CSCF's NOTIFYs to that subscription: a document we cannot read gets 400, none at
    // all 200; one saying the network ended alice's contact (the HSS's RTR: deactivated)
    // ends her registration here, so her MESSAGE gets 403. Then she registers again.
    let (sub_call_id, our_tag) = {
        let seen = seen.lock().unwrap();
        let first = seen
            .iter()
            .find(|m| m.method_str() == Some("SUBSCRIBE"))
            .unwrap();
        (
            first.call_id().unwrap().to_owned(),
            first.from_addr().unwrap().tag().unwrap().to_owned(),
        )
    };
    let notifier = UdpSocket::bind("127.0.0.1:0").unwrap();
    notifier
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let from = notifier.local_addr().unwrap();
    let notify = |cseq: u32, body: &str| {
        format!(
            "NOTIFY sip:{p} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKn{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@hims.net>;tag=s2\r\nTo: <sip:127.0.0.1:{}>;tag={our_tag}\r\n\
             Call-ID: {sub_call_id}\r\nCSeq: {cseq} NOTIFY\r\nEvent: reg\r\n\
             Subscription-State: active;expires=600\r\nContent-Type: application/reginfo+xml\r\n\
             Content-Length: {}\r\n\r\n{body}",
            p.port(),
            body.len()
        )
    };
    notifier
        .send_to(notify(101, "<reginfo><oops></reginfo>").as_bytes(), p)
        .unwrap();
    assert_eq!(recv(&notifier).status(), Some(400));
    notifier.send_to(notify(102, "").as_bytes(), p).unwrap();
    assert_eq!(recv(&notifier).status(), Some(200));
    let deactivated = format!(
        "<?xml version=\"1.0\"?><reginfo xmlns=\"urn:ietf:params:xml:ns:reginfo\" version=\"1\" state=\"full\">\
         <registration aor=\"sip:alice@hims.net\" id=\"a\" state=\"terminated\">\
         <contact id=\"c\" state=\"terminated\" event=\"deactivated\"><uri>sip:alice@{me}</uri></contact>\
         </registration></reginfo>"
    );
    notifier
        .send_to(notify(103, &deactivated).as_bytes(), p)
        .unwrap();
    assert_eq!(recv(&notifier).status(), Some(200));
    // For a grace the UE stays reachable: the S-CSCF's NOTIFY to her own subscription, sent
    // with ours, still reaches her.
    let late = format!(
        "NOTIFY sip:alice@{me} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKlate1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@hims.net>;tag=n1\r\nTo: <sip:alice@hims.net>;tag=u1\r\n\
         Call-ID: late1\r\nCSeq: 1 NOTIFY\r\nRoute: <sip:term@127.0.0.1:{};lr>\r\nEvent: reg\r\n\
         Subscription-State: terminated;reason=noresource\r\nContent-Length: 0\r\n\r\n",
        p.port()
    );
    notifier.send_to(late.as_bytes(), p).unwrap();
    let at_ue = recv(&ue);
    assert_eq!(at_ue.call_id(), Ok("late1"));
    let ok = response_to(&at_ue, 200, "OK", None).unwrap();
    ue.send_to(&ok.to_bytes(), p).unwrap();
    assert_eq!(recv(&notifier).status(), Some(200));
    // After the grace she is gone here.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let after = msg.replace("z9hG4bKm1", "z9hG4bKm0");
    ue.send_to(after.as_bytes(), p).unwrap();
    assert_eq!(
        recv(&ue).status(),
        Some(403),
        "alice is no longer registered here"
    );
    ue.send_to(register(me, "c1", 10, "alice", second, 600).as_bytes(), p)
        .unwrap();
    assert_eq!(recv(&ue).status(), Some(200));

    // Toward alice: our Path entry as Route is no credential. From a host that is neither
    // alice's S-CSCF (her Service-Route resolves to 127.0.0.1) nor in core_networks: 403,
    // and nothing reaches alice.
    let toward = |from: SocketAddr, id: &str| {
        format!(
            "MESSAGE sip:alice@{me} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{id};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@hims.net>;tag={id}\r\nTo: <sip:alice@hims.net>\r\n\
             Call-ID: {id}\r\nCSeq: 1 MESSAGE\r\nRoute: <sip:term@127.0.0.1:{};lr>\r\n\
             P-Asserted-Identity: <sip:bob@hims.net>\r\nContent-Length: 0\r\n\r\n",
            p.port()
        )
    };
    let outsider = UdpSocket::bind("127.0.0.2:0").unwrap();
    outsider
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let from = outsider.local_addr().unwrap();
    outsider
        .send_to(toward(from, "spoof1").as_bytes(), p)
        .unwrap();
    assert_eq!(recv(&outsider).status(), Some(403));
    // From the S-CSCF's address it reaches alice, and her 200 goes back.
    let core = UdpSocket::bind("127.0.0.1:0").unwrap();
    core.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let from = core.local_addr().unwrap();
    core.send_to(toward(from, "core1").as_bytes(), p).unwrap();
    let at_ue = recv(&ue);
    assert_eq!(
        at_ue.call_id(),
        Ok("core1"),
        "the spoofed MESSAGE got through"
    );
    let ok = response_to(&at_ue, 200, "OK", Some("a1")).unwrap();
    ue.send_to(&ok.to_bytes(), p).unwrap();
    assert_eq!(recv(&core).status(), Some(200));

    // Another UE, not registered: 403.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let sm = msg
        .replace(&me.to_string(), &stranger.local_addr().unwrap().to_string())
        .replace("z9hG4bKm1", "z9hG4bKm2");
    stranger.send_to(sm.as_bytes(), p).unwrap();
    assert_eq!(recv(&stranger).status(), Some(403));

    // bob may not roam into vims.net: the HSS says 5004, the I-CSCF 403.
    let bob_auth = "Digest username=\"bob@hims.net\", realm=\"hims.net\", uri=\"sip:hims.net\", nonce=\"\", response=\"\"";
    ue.send_to(register(me, "c2", 1, "bob", bob_auth, 600).as_bytes(), p)
        .unwrap();
    assert_eq!(recv(&ue).status(), Some(403));
    // Unknown user: 403.
    let x_auth = "Digest username=\"nobody@hims.net\", realm=\"hims.net\", uri=\"sip:hims.net\", nonce=\"\", response=\"\"";
    ue.send_to(register(me, "c3", 1, "nobody", x_auth, 600).as_bytes(), p)
        .unwrap();
    assert_eq!(recv(&ue).status(), Some(403));
    // Max-Forwards 0 and a request without Call-ID: 483 and 400; garbage is dropped.
    let mf0 = register(me, "c4", 1, "alice", first_auth, 600)
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    ue.send_to(mf0.as_bytes(), p).unwrap();
    assert_eq!(recv(&ue).status(), Some(483));
    // Proxy-Require with an option we do not support: 420 naming it in Unsupported
    // (sec-agree is ours and passes); a Request-URI scheme we do not serve: 416.
    let ext = register(me, "c6", 1, "alice", first_auth, 600).replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nProxy-Require: sec-agree, x-teleport\r\n",
    );
    ue.send_to(ext.as_bytes(), p).unwrap();
    let bad_ext = recv(&ue);
    assert_eq!(bad_ext.status(), Some(420), "{bad_ext}");
    assert_eq!(
        bad_ext.header_str(HeaderName::Unsupported),
        Some("x-teleport")
    );
    let scheme = msg
        .replace(
            "MESSAGE sip:bob@hims.net SIP/2.0",
            "MESSAGE mailto:bob@hims.net SIP/2.0",
        )
        .replace("z9hG4bKm1", "z9hG4bKm9");
    assert_ne!(
        scheme,
        msg.replace("z9hG4bKm1", "z9hG4bKm9"),
        "the Request-URI changed"
    );
    ue.send_to(scheme.as_bytes(), p).unwrap();
    assert_eq!(recv(&ue).status(), Some(416));
    ue.send_to(b"\x16\x03\x01 not sip at all\r\n\r\n", p)
        .unwrap();
    let no_cid = register(me, "c5", 1, "alice", first_auth, 600).replace("Call-ID: c5\r\n", "");
    ue.send_to(no_cid.as_bytes(), p).unwrap();
    assert_eq!(recv(&ue).status(), Some(400));

    // A deregistration of a user the HSS does not know as registered: the I-CSCF's UAR
    // (DE_REGISTRATION) gets 5003 and the UE 403.
    ue.send_to(register(me, "c1", 3, "alice", second, 0).as_bytes(), p)
        .unwrap();
    assert_eq!(recv(&ue).status(), Some(403));
    // What the S-CSCF's SAR would have stored; then Expires 0 goes through, and the P-CSCF
    // forgets the UE: its MESSAGE gets 403.
    subs.set_scscf(
        "sip:alice@hims.net",
        Some(&ims_store::ScscfAssignment {
            server_name: format!("sip:{scscf}"),
            diameter_host: None,
        }),
    )
    .await
    .unwrap();
    subs.set_reg_state("sip:alice@hims.net", ims_store::RegState::Registered)
        .await
        .unwrap();
    ue.send_to(register(me, "c1", 4, "alice", second, 0).as_bytes(), p)
        .unwrap();
    assert_eq!(recv(&ue).status(), Some(200));
    let again = msg
        .replace("z9hG4bKm1", "z9hG4bKm3")
        .replace("CSeq: 1", "CSeq: 2");
    ue.send_to(again.as_bytes(), p).unwrap();
    assert_eq!(recv(&ue).status(), Some(403));
}

/// Overload at the edge: with `max_registrations_in_flight = 1` and one REGISTER held in the
/// core (an I-CSCF of the test's own that does not answer yet), a new registration is refused
/// at once with 503 and Retry-After and never reaches the core; a REGISTER answering a
/// challenge still goes through; once the core has answered, new registrations are admitted
/// again.
#[tokio::test(flavor = "multi_thread")]
async fn overload_refuses_new_registrations_with_503_at_once() {
    let (core, p, ue) = core_pcscf_ue(|c| c.max_registrations_in_flight = 1).await;
    let me = ue.local_addr().unwrap();
    let initial = "Digest username=\"alice@hims.net\", realm=\"hims.net\", uri=\"sip:hims.net\", \
                   nonce=\"\", response=\"\"";
    let answered = ALICE_ANSWERED;
    let send = |call: &str, auth: &str| {
        ue.send_to(register(me, call, 1, "alice", auth, 600).as_bytes(), p)
            .unwrap();
    };
    // What reaches the core next, skipping the P-CSCF's retransmissions (Timer E).
    let mut seen_by_core: Vec<String> = Vec::new();
    let mut at_core = || loop {
        let m = recv(&core);
        let call = m.call_id().unwrap().to_owned();
        if !seen_by_core.contains(&call) {
            seen_by_core.push(call);
            return m;
        }
    };

    // The first registration goes into the core and stays there.
    send("o1", initial);
    let held = at_core();
    assert_eq!(held.call_id().unwrap(), "o1");
    // A second one: 503 at once, with Retry-After, and the core sees nothing of it.
    let t = std::time::Instant::now();
    send("o2", initial);
    let r = recv(&ue);
    assert_eq!((r.status(), r.call_id().unwrap()), (Some(503), "o2"), "{r}");
    let after: u32 = r
        .header_str(HeaderName::RetryAfter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((5..=10).contains(&after), "{r}");
    assert!(t.elapsed() < Duration::from_secs(1), "refused at once");
    // An answer to a challenge is let through past the limit.
    send("o3", answered);
    let through = at_core();
    assert_eq!(through.call_id().unwrap(), "o3", "not o2: it was refused");
    // The core answers both; then a new registration is admitted again.
    for m in [&held, &through] {
        let resp = response_to(m, 403, "Forbidden", Some("c1")).unwrap();
        core.send_to(&resp.to_bytes(), p).unwrap();
        let r = recv(&ue);
        assert_eq!(r.status(), Some(403), "{r}");
    }
    // The slot is freed once the P-CSCF's handler has sent the 403 on, which may be just
    // after the UE got it: until then a new registration is still refused, so try again.
    ue.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut admitted = None;
    for attempt in 0..20 {
        let call = format!("o4-{attempt}");
        send(&call, initial);
        match ue.recv(&mut buf) {
            Ok(n) => {
                let r = Message::parse(Bytes::copy_from_slice(&buf[..n])).unwrap();
                assert_eq!(r.status(), Some(503), "{r}");
            }
            Err(_) => {
                admitted = Some(call);
                break;
            }
        }
    }
    let admitted = admitted.expect("a new registration admitted once the core answered");
    assert_eq!(at_core().call_id().unwrap(), admitted);
}

/// A registration's place in the in-flight count ends with its final response: the reg-event
/// SUBSCRIBE that follows a 200 (never answered here, as when it is lost) does not hold new
/// registrations out with 503. (Under 10% loss the P-CSCF once counted 64 REGISTERs in
/// flight for 20 UEs: handlers waiting on their SUBSCRIBE's retransmissions.)
#[tokio::test(flavor = "multi_thread")]
async fn the_reg_event_subscribe_after_a_200_is_not_counted_in_flight() {
    let (core, p, ue) = core_pcscf_ue(|c| {
        c.max_registrations_in_flight = 1;
        c.reg_event = true;
    })
    .await;
    alice_registered(&core, p, &ue, "w1");
    // The P-CSCF subscribes to alice's reg event; the core never answers it.
    let sub = loop {
        let m = recv(&core);
        if m.method_str() == Some("SUBSCRIBE") {
            break m;
        }
    };
    assert_eq!(sub.header_str(HeaderName::Event), Some("reg"));
    // Another UE's new registration goes into the core: the slot is free.
    let ue2 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let initial = "Digest username=\"bob@hims.net\", realm=\"hims.net\", uri=\"sip:hims.net\", \
                   nonce=\"\", response=\"\"";
    let me2 = ue2.local_addr().unwrap();
    ue2.send_to(register(me2, "w2", 1, "bob", initial, 600).as_bytes(), p)
        .unwrap();
    let next = loop {
        let m = recv(&core);
        if m.method_str() == Some("REGISTER") {
            break m;
        }
    };
    assert_eq!(next.call_id().unwrap(), "w2", "{next}");
}

/// An S-CSCF that restarted has forgotten our reg-event subscription (it keeps them in
/// memory) and answers its refresh 481: the P-CSCF subscribes anew at once (a new dialog
/// along the UE's Service-Route) instead of staying deaf to network deregistrations until
/// the UE registers again.
#[tokio::test(flavor = "multi_thread")]
async fn a_reg_event_refresh_answered_481_subscribes_anew() {
    let (core, p, ue) = core_pcscf_ue(|c| c.reg_event = true).await;
    let core_addr = core.local_addr().unwrap();
    alice_registered(&core, p, &ue, "f1");
    // The next new SUBSCRIBE (skipping retransmissions of ones already answered).
    let mut answered_cseqs: Vec<(String, u32)> = Vec::new();
    let mut next_subscribe = || loop {
        let m = recv(&core);
        let key = (m.call_id().unwrap().to_owned(), m.cseq().unwrap().seq);
        if m.method_str() == Some("SUBSCRIBE") && !answered_cseqs.contains(&key) {
            answered_cseqs.push(key);
            break m;
        }
    };
    // Granted 2 s, so that the refresh comes after 1 s.
    let first = next_subscribe();
    assert!(first.to_addr().unwrap().tag().is_none(), "{first}");
    let mut ok = response_to(&first, 200, "OK", Some("s2")).unwrap();
    ok.append_header("Expires", "2").unwrap();
    ok.append_header("Contact", &format!("<sip:{core_addr}>"))
        .unwrap();
    core.send_to(&ok.to_bytes(), p).unwrap();
    // The refresh, inside the dialog: the "restarted" S-CSCF does not know it.
    let refresh = next_subscribe();
    assert_eq!(refresh.call_id(), first.call_id());
    assert_eq!(refresh.to_addr().unwrap().tag(), Some("s2"));
    let gone = response_to(&refresh, 481, "Call/Transaction Does Not Exist", Some("s2")).unwrap();
    core.send_to(&gone.to_bytes(), p).unwrap();
    // At once a new subscription: a new dialog, along the Service-Route again.
    let again = next_subscribe();
    assert_ne!(again.call_id(), first.call_id(), "{again}");
    assert!(again.to_addr().unwrap().tag().is_none(), "{again}");
    assert_eq!(again.request_uri_str(), Some("sip:alice@hims.net"));
    assert_eq!(
        again.header_str(HeaderName::Route).unwrap(),
        format!("<sip:orig@{core_addr};lr>")
    );
}

/// An S-CSCF whose shortest reg-event subscription is longer than the registration answers
/// the P-CSCF's SUBSCRIBE 423 with Min-Expires (Kamailio's S-CSCF, or ours with a large
/// `subscribe_min_expires`): the P-CSCF asks again for that much instead of going without
/// a subscription (deaf to network deregistrations).
#[tokio::test(flavor = "multi_thread")]
async fn a_reg_event_subscribe_answered_423_asks_for_min_expires() {
    let (core, p, ue) = core_pcscf_ue(|c| c.reg_event = true).await;
    let core_addr = core.local_addr().unwrap();
    alice_registered(&core, p, &ue, "m1");
    let subscribe = || loop {
        let m = recv(&core);
        if m.method_str() == Some("SUBSCRIBE") {
            break m;
        }
    };
    let first = subscribe();
    let asked = first.expires().unwrap().unwrap();
    assert!((600..=700).contains(&asked), "{first}");
    let mut brief = response_to(&first, 423, "Interval Too Brief", Some("s2")).unwrap();
    brief.append_header("Min-Expires", "7200").unwrap();
    core.send_to(&brief.to_bytes(), p).unwrap();
    // Retransmissions of the first are absorbed by its transaction: the next is the new one.
    let again = loop {
        let m = subscribe();
        if m.cseq().unwrap().seq != first.cseq().unwrap().seq || m.call_id() != first.call_id() {
            break m;
        }
    };
    assert_eq!(again.expires().unwrap().unwrap(), 7200, "{again}");
    assert!(again.to_addr().unwrap().tag().is_none(), "{again}");
    assert_eq!(
        again.header_str(HeaderName::Route).unwrap(),
        format!("<sip:orig@{core_addr};lr>")
    );
}

/// New calls are refused with 503 and Retry-After at once while `max_invites_in_flight`
/// INVITEs wait for the core's first answer (its 100 Trying); as soon as the core answers
/// one, a new call goes through again. How long a callee takes to answer does not count.
#[tokio::test(flavor = "multi_thread")]
async fn overload_refuses_new_calls_while_the_core_is_behind() {
    let (core, p, ue) = core_pcscf_ue(|c| c.max_invites_in_flight = 2).await;
    let (core_addr, me) = (core.local_addr().unwrap(), ue.local_addr().unwrap());

    // Registered: the core (as I-CSCF and S-CSCF) answers 200 with a Service-Route to itself.
    let auth = "Digest username=\"alice@hims.net\", realm=\"hims.net\", uri=\"sip:hims.net\", \
                nonce=\"\", response=\"\"";
    ue.send_to(register(me, "r1", 1, "alice", auth, 600).as_bytes(), p)
        .unwrap();
    let reg = recv(&core);
    let mut ok = response_to(&reg, 200, "OK", Some("s1")).unwrap();
    ok.append_header("Service-Route", &format!("<sip:orig@{core_addr};lr>"))
        .unwrap();
    ok.append_header("P-Associated-URI", "<sip:alice@hims.net>")
        .unwrap();
    ok.append_header("Contact", &format!("<sip:alice@{me}>;expires=600"))
        .unwrap();
    core.send_to(&ok.to_bytes(), p).unwrap();
    assert_eq!(recv(&ue).status(), Some(200));

    let invite = |call: &str| {
        let text = format!(
            "INVITE sip:bob@hims.net SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@hims.net>;tag=a{call}\r\nTo: <sip:bob@hims.net>\r\n\
             Call-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{me}>\r\nContent-Length: 0\r\n\r\n"
        );
        ue.send_to(text.as_bytes(), p).unwrap();
    };
    // The UE's next answer other than 100 Trying.
    let final_at_ue = || loop {
        let m = recv(&ue);
        if m.status() != Some(100) {
            return m;
        }
    };
    // The next INVITE the core sees that it did not see before.
    let mut seen: Vec<String> = Vec::new();
    let mut at_core = || loop {
        let m = recv(&core);
        let call = m.call_id().unwrap().to_owned();
        if m.method_str() == Some("INVITE") && !seen.contains(&call) {
            seen.push(call);
            return m;
        }
    };

    invite("c1");
    let held1 = at_core();
    invite("c2");
    let _held2 = at_core();
    // Two wait for the core: the third call is refused at once and never reaches it.
    let t = std::time::Instant::now();
    invite("c3");
    let r = final_at_ue();
    assert_eq!((r.status(), r.call_id().unwrap()), (Some(503), "c3"), "{r}");
    let after: u32 = r
        .header_str(HeaderName::RetryAfter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((5..=10).contains(&after), "{r}");
    assert!(t.elapsed() < Duration::from_secs(1), "refused at once");
    // The core says 100 Trying to the first: one fewer waits, and a new call goes in (the
    // first still rings: it no longer counts).
    let trying = response_to(&held1, 100, "Trying", None).unwrap();
    core.send_to(&trying.to_bytes(), p).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut n = 4;
    loop {
        let call = format!("c{n}");
        invite(&call);
        // Either the core sees it, or the UE gets 503 (the 100 not yet taken in).
        let mut buf = vec![0u8; 65536];
        core.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let reached = loop {
            match core.recv(&mut buf) {
                Ok(len) => {
                    let m = Message::parse(Bytes::copy_from_slice(&buf[..len])).unwrap();
                    if m.method_str() == Some("INVITE") && m.call_id().unwrap() == call {
                        break true;
                    }
                }
                Err(_) => break false,
            }
        };
        if reached {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new call admitted after the core's 100 Trying"
        );
        n += 1;
    }
}

/// GET `path` on the admin API at `admin` (blocking: call from `spawn_blocking`).
fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut resp = ureq::get(&format!("http://{admin}{path}")).call().unwrap();
    resp.body_mut().read_to_string().unwrap()
}

/// Reads `/metrics` until every line of `want` is in it (the handler counts the REGISTER's
/// latency just after the UE has its response), for at most 5 s; the last text otherwise.
async fn metrics_with(admin: SocketAddr, want: &[&str]) -> Result<String, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = tokio::task::spawn_blocking(move || admin_get(admin, "/metrics"))
            .await
            .unwrap();
        if want.iter().all(|w| text.lines().any(|l| l == *w)) {
            return Ok(text);
        }
        if std::time::Instant::now() > deadline {
            return Err(text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin API counts what really passed: a registration (401 then 200 from a core socket
/// of the test's), a new registration refused by the in-flight limit (503) while another is
/// in the core, and that one's 403; the registration held; no IPsec. Its address must be
/// loopback.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_responses_and_registrations() {
    let core = UdpSocket::bind("127.0.0.1:0").unwrap();
    core.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut cfg = pcscf_config(core.local_addr().unwrap());
    cfg.reg_event = false;
    cfg.max_registrations_in_flight = 1;
    let mut bad = cfg.clone();
    bad.admin_listen = Some("10.0.0.3:8080".parse().unwrap());
    assert!(
        bad.validate()
            .unwrap_err()
            .contains("not a loopback address")
    );
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let pcscf = ims_pcscf::Pcscf::start(cfg).await.unwrap();
    let p = pcscf.sip_addr();
    let admin = pcscf.admin_addr().expect("admin_listen is set");
    tokio::spawn(pcscf.run_until(std::future::pending()));
    let ue = UdpSocket::bind("127.0.0.1:0").unwrap();
    ue.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = ue.local_addr().unwrap();

    let health = tokio::task::spawn_blocking(move || admin_get(admin, "/health"))
        .await
        .unwrap();
    assert!(health.contains("\"ok\""), "{health}");
    let initial = "Digest username=\"alice@hims.net\", realm=\"hims.net\", uri=\"sip:hims.net\", \
                   nonce=\"\", response=\"\"";
    let answered = ALICE_ANSWERED;
    // The core's answer to what reaches it next with Call-ID `call` (retransmissions skipped).
    let at_core = |call: &str| loop {
        let m = recv(&core);
        if m.call_id().unwrap() == call {
            return m;
        }
    };
    // Registered: 401, then 200.
    ue.send_to(register(me, "m1", 1, "alice", initial, 600).as_bytes(), p)
        .unwrap();
    let m = at_core("m1");
    let mut r = response_to(&m, 401, "Unauthorized", Some("c1")).unwrap();
    r.append_header(
        "WWW-Authenticate",
        "Digest realm=\"hims.net\", nonce=\"bm9uY2U=\", algorithm=AKAv1-MD5",
    )
    .unwrap();
    core.send_to(&r.to_bytes(), p).unwrap();
    assert_eq!(recv(&ue).status(), Some(401));
    ue.send_to(register(me, "m2", 2, "alice", answered, 600).as_bytes(), p)
        .unwrap();
    let m = at_core("m2");
    let mut r = response_to(&m, 200, "OK", Some("c1")).unwrap();
    r.append_header("Contact", &format!("<sip:alice@{me}>;expires=600"))
        .unwrap();
    r.append_header("Service-Route", "<sip:orig@127.0.0.1:9;lr>")
        .unwrap();
    r.append_header("P-Associated-URI", "<sip:alice@hims.net>")
        .unwrap();
    core.send_to(&r.to_bytes(), p).unwrap();
    assert_eq!(recv(&ue).status(), Some(200));
    // Bob's first REGISTER is held in the core; Carol's is refused at once.
    ue.send_to(register(me, "m3", 1, "bob", initial, 600).as_bytes(), p)
        .unwrap();
    let held = at_core("m3");
    ue.send_to(register(me, "m4", 1, "carol", initial, 600).as_bytes(), p)
        .unwrap();
    let r = recv(&ue);
    assert_eq!((r.status(), r.call_id().unwrap()), (Some(503), "m4"), "{r}");
    let r = response_to(&held, 403, "Forbidden", Some("c2")).unwrap();
    core.send_to(&r.to_bytes(), p).unwrap();
    assert_eq!(recv(&ue).status(), Some(403));

    let want = [
        "ims_pcscf_requests_total{method=\"REGISTER\"} 4",
        "ims_pcscf_responses_total{status=\"200\"} 1",
        "ims_pcscf_responses_total{status=\"401\"} 1",
        "ims_pcscf_responses_total{status=\"403\"} 1",
        "ims_pcscf_responses_total{status=\"503\"} 1",
        "ims_pcscf_register_seconds_count 4",
        "ims_pcscf_registrations 1",
        "ims_pcscf_ipsec_sa_sets 0",
        "ims_pcscf_overload_refusals_total{what=\"register\"} 1",
        "ims_pcscf_overload_refusals_total{what=\"invite\"} 0",
    ];
    let text = metrics_with(admin, &want)
        .await
        .unwrap_or_else(|t| panic!("not all of {want:?} in:\n{t}"));
    assert!(!text.contains("method=\"INVITE\""), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("ims_pcscf_sip_transactions{side=\"server\"} ")),
        "{text}"
    );
}

/// Reads one SIP message (no body) from a TCP stream.
fn recv_tcp(s: &mut std::net::TcpStream) -> Message {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).expect("an answer within 5 s");
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    Message::parse(Bytes::from(got)).unwrap()
}

/// A MESSAGE from the core toward `contact`, with the P-CSCF's Path entry as Route.
fn message_toward(contact: &str, pcscf: SocketAddr, core: SocketAddr, call: &str) -> String {
    format!(
        "MESSAGE {contact} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {core};branch=z9hG4bK{call};rport\r\n\
         Max-Forwards: 70\r\n\
         Route: <sip:term@{pcscf};lr>\r\n\
         From: <sip:carol@hims.net>;tag=c1\r\nTo: <{contact}>\r\n\
         Call-ID: {call}\r\nCSeq: 1 MESSAGE\r\n\
         Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    )
}

/// Issue #20: a P-CSCF killed (its runtime dropped: no shutdown, nothing flushed after the
/// fact) and started again on the same store and port knows its UEs again. alice registered
/// over UDP gets a MESSAGE from the core at once; bob registered over TCP, whose connection
/// died with the old process, is answered 430 Flow Failed (RFC 5626) instead of being
/// reached on a connection he never opened; the admin API lists both, bob's flow as lost.
#[test]
fn registrations_come_back_after_a_kill_from_the_store() {
    let dir = ims_testkit::scratch_dir("pcscf-restart");
    let core = UdpSocket::bind("127.0.0.1:0").unwrap();
    core.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let core_addr = core.local_addr().unwrap();
    let mut cfg = pcscf_config(core_addr);
    cfg.reg_event = false;
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.database = Some(format!("sqlite://{}", dir.join("pcscf.sqlite").display()));
    let start = |cfg: ims_pcscf::Config| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (p, admin) = rt.block_on(async {
            let pcscf = ims_pcscf::Pcscf::start(cfg).await.unwrap();
            let addrs = (pcscf.sip_addr(), pcscf.admin_addr().unwrap());
            tokio::spawn(pcscf.run_until(std::future::pending()));
            addrs
        });
        (rt, p, admin)
    };
    let (rt, p, first_admin) = start(cfg.clone());

    // alice over UDP, bob over TCP.
    let ue = UdpSocket::bind("127.0.0.1:0").unwrap();
    ue.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    alice_registered(&core, p, &ue, "k1");
    let mut bob = std::net::TcpStream::connect(p).unwrap();
    bob.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let bob_addr = bob.local_addr().unwrap();
    let bob_answered = ALICE_ANSWERED.replace("alice@", "bob@");
    let reg = register(bob_addr, "k2", 1, "bob", &bob_answered, 600)
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP")
        .replace(
            &format!("<sip:bob@{bob_addr}>"),
            &format!("<sip:bob@{bob_addr};transport=tcp>"),
        );
    std::io::Write::write_all(&mut bob, reg.as_bytes()).unwrap();
    let m = loop {
        let m = recv(&core);
        if m.call_id().unwrap() == "k2" {
            break m;
        }
    };
    let ok = registered(&m, core_addr, "<sip:bob@hims.net>");
    core.send_to(&ok.to_bytes(), p).unwrap();
    assert_eq!(recv_tcp(&mut bob).status(), Some(200));
    // Both registrations were written (each 200 went after its commit).
    let metrics = admin_get(first_admin, "/metrics");
    assert!(
        metrics.contains("ims_pcscf_store_writes_total 2\n")
            && metrics.contains("ims_pcscf_store_failed_writes_total 0\n"),
        "{metrics}"
    );

    // kill: the runtime goes with every task and socket; bob's connection dies with it.
    drop(rt);
    drop(bob);
    let mut again = cfg.clone();
    again.sip_listen = p;
    let (_rt, p2, admin) = start(again);
    assert_eq!(p2, p);

    // The admin API lists both, bob's flow lost.
    let listed: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/v1/registrations")).unwrap();
    let regs = listed["registrations"].as_array().unwrap();
    assert_eq!(regs.len(), 2, "{listed}");
    let by_impi = |impi: &str| {
        regs.iter()
            .find(|r| r["impi"] == impi)
            .unwrap_or_else(|| panic!("{impi} listed: {listed}"))
    };
    let alice = by_impi("alice@hims.net");
    assert_eq!(alice["flow"]["transport"], "udp", "{listed}");
    assert_eq!(alice["flow_lost"], false, "{listed}");
    assert_eq!(
        alice["associated_uris"][0], "sip:alice@hims.net",
        "{listed}"
    );
    assert_eq!(
        alice["service_route"][0],
        format!("<sip:orig@{core_addr};lr>"),
        "{listed}"
    );
    assert!(
        alice["contacts"][0]["expires_in"].as_u64().unwrap() > 590,
        "{listed}"
    );
    let bob = by_impi("bob@hims.net");
    assert_eq!(bob["flow"]["transport"], "tcp", "{listed}");
    assert_eq!(bob["flow_lost"], true, "{listed}");

    // The core reaches alice through the new P-CSCF.
    let alice_contact = format!("sip:alice@{}", ue.local_addr().unwrap());
    core.send_to(
        message_toward(&alice_contact, p, core_addr, "k3").as_bytes(),
        p,
    )
    .unwrap();
    let got = recv(&ue);
    assert_eq!(got.method_str(), Some("MESSAGE"), "{got}");
    assert_eq!(got.body(), b"hello");
    let ok = response_to(&got, 200, "OK", Some("a1")).unwrap();
    ue.send_to(&ok.to_bytes(), p).unwrap();
    let answer = loop {
        let m = recv(&core);
        if m.call_id().unwrap() == "k3" && m.status().is_some() {
            break m;
        }
    };
    assert_eq!(answer.status(), Some(200), "{answer}");

    // bob's flow is gone: 430.
    let bob_contact = format!("sip:bob@{bob_addr};transport=tcp");
    core.send_to(
        message_toward(&bob_contact, p, core_addr, "k4").as_bytes(),
        p,
    )
    .unwrap();
    let answer = loop {
        let m = recv(&core);
        if m.call_id().unwrap() == "k4" && m.status().is_some_and(|s| s >= 200) {
            break m;
        }
    };
    assert_eq!(answer.status(), Some(430), "{answer}");
}

/// A store that does not commit (another connection holds the SQLite file's write lock)
/// delays a REGISTER's 200 by at most 2 s (`STORE_WAIT`), with one warning; once the lock
/// goes, the registrations made meanwhile are committed and the next 200 waits no more.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_store_delays_the_200_by_two_seconds_at_most() {
    use sqlx::Connection;
    let dir = ims_testkit::scratch_dir("pcscf-late-store");
    let file = dir.join("pcscf.sqlite");
    let url = format!("sqlite://{}", file.display());
    let (core, p, ue) = core_pcscf_ue(|c| c.database = Some(url.clone())).await;
    alice_registered(&core, p, &ue, "l1");
    let mut lock = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let t = std::time::Instant::now();
    alice_registered(&core, p, &ue, "l2");
    let late = t.elapsed();
    assert!(
        late >= Duration::from_millis(1900) && late < Duration::from_millis(4500),
        "the 200 came after {late:?}"
    );
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    // The stuck batch commits once the lock is gone; then a refresh is answered at once.
    let t = std::time::Instant::now();
    alice_registered(&core, p, &ue, "l3");
    let after = t.elapsed();
    assert!(
        after < Duration::from_millis(1900),
        "the 200 came after {after:?}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pcscf_registration")
        .fetch_one(&mut lock)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

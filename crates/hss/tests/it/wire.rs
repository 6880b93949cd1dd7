//! The HSS over real TCP: the allow-list (3010 and close), Cx answers with many requests in
//! flight on one connection, the HSS's own DWR when idle, RTR and PPR sent to the serving
//! S-CSCF when the admin API asks (through a relay peer when the S-CSCF is behind one), and
//! the Prometheus metrics that count it all.

use crate::admin::{get, post, start_with};
use crate::cxclient::{CxClient, mar, sqn_of};
use ims_diameter::cx::{AnswerBase, Ppa, Ppr, Rta, Rtr};
use ims_diameter::peer::{DownReason, Event};
use ims_diameter::{AnswerResult, Message, dict};
use serde_json::json;
use std::time::Duration;

const K: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const OP: &str = "cdc202d5123e20f62b6d676ac72cb318";
const OPC: &str = "cd63cb71954a9f4e48a5994e37a02baf";
const IMPI: &str = "alice.private@hims.net";
const IMPU: &str = "sip:alice@hims.net";

fn answer_base<'a>(req: &Message<'a>) -> AnswerBase<'a> {
    AnswerBase {
        hop_by_hop: req.header().hop_by_hop,
        end_to_end: req.header().end_to_end,
        session_id: req.session_id().unwrap().unwrap(),
        result: AnswerResult::SUCCESS,
        origin_host: "scscf1.hims.net",
        origin_realm: "hims.net",
        error_message: None,
        failed_avp: None,
        supported_features: vec![],
        extra: vec![],
    }
}

#[test]
fn cx_over_tcp_with_allow_list_watchdog_rtr_ppr_and_metrics() {
    let hss = start_with(ims_hss::DiameterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        origin_host: Some("hss1.hims.net".into()),
        allowed_peers: vec!["scscf1.hims.net".into(), "icscf1.hims.net".into()],
        watchdog_seconds: 1,
        max_auth_items: 3,
        ..Default::default()
    });
    let b = &hss.base;
    let (st, body) = post(
        &format!("{b}/v1/subscribers"),
        json!({"impi": IMPI, "impus": [IMPU], "aka": {"k": K, "op": OP, "amf": "8000"}}),
    );
    assert_eq!(st, 201, "{body}");

    // Not in the allow-list: CEA 3010, and the HSS closes the connection.
    let Err(events) = CxClient::connect(hss.diameter, "evil.example.net") else {
        panic!("an unknown peer got in");
    };
    assert!(
        events.contains(&Event::Down(DownReason::CapabilitiesRefused(3010))),
        "{events:?}"
    );

    let mut c = CxClient::connect(hss.diameter, "scscf1.hims.net").expect("allowed peer");
    // 40 MARs in flight at once: every one answered, no SQN twice, all increasing.
    let answers = c.ask_many(
        (0..40)
            .map(|_| mar(IMPI, IMPU, "scscf1.hims.net"))
            .collect(),
    );
    let mut sqns: Vec<u64> = answers.iter().map(|a| sqn_of(a, K, OPC)).collect();
    let n = sqns.len();
    sqns.sort_unstable();
    sqns.dedup();
    assert_eq!(sqns.len(), n, "an SQN was handed out twice");

    // Idle for a while: the HSS sends DWR (Tw = 1 s), our peer answers, the link stays up.
    c.pump_until(Duration::from_millis(2500), |_| false);
    assert!(
        c.seen.contains(&(280, true)),
        "no DWR from the HSS: {:?}",
        c.seen
    );
    assert_eq!(c.peer.state(), ims_diameter::peer::State::Open);

    // Register (SAR) so that the HSS knows us as the serving S-CSCF.
    let sar = {
        let r = ims_diameter::cx::Sar {
            base: ims_diameter::cx::RequestBase {
                session_id: "scscf1.hims.net;8;8",
                origin_host: "scscf1.hims.net",
                origin_realm: "hims.net",
                destination_realm: "hims.net",
                ..Default::default()
            },
            user_name: Some(IMPI),
            public_identities: vec![IMPU],
            server_name: "sip:scscf1.hims.net:6060",
            assignment_type: dict::ServerAssignmentType::Registration,
            user_data_already_available: dict::UserDataAlreadyAvailable::UserDataNotAvailable,
        };
        let mut v = Vec::new();
        r.encode(&mut v).unwrap();
        v
    };
    let saa = c.ask(sar);
    let saa = ims_diameter::cx::Saa::decode(&Message::parse(&saa).unwrap()).unwrap();
    assert_eq!(saa.base.result, AnswerResult::SUCCESS);
    // The HSS lists the registration: who, and at which S-CSCF.
    let (st, regs) = get(&format!("{b}/v1/registrations"));
    assert_eq!(st, 200, "{regs}");
    let regs: serde_json::Value = serde_json::from_str(&regs).unwrap();
    let listed = &regs["registrations"];
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{regs}");
    assert_eq!(listed[0]["impu"], IMPU);
    assert_eq!(listed[0]["impi"], IMPI);
    assert_eq!(
        listed[0]["scscf"]["server_name"],
        "sip:scscf1.hims.net:6060"
    );
    assert_eq!(listed[0]["scscf"]["diameter_host"], "scscf1.hims.net");

    // Admin deregistration: the HSS sends RTR to us; we answer RTA 2001.
    let base = b.clone();
    let admin = std::thread::spawn(move || {
        post(
            &format!("{base}/v1/subscribers/{IMPI}/deregister"),
            json!({}),
        )
    });
    assert!(c.pump_until(Duration::from_secs(5), |e| matches!(e, Event::Request(_))));
    let rtr_bytes = c.requests.pop().unwrap();
    let rtr_msg = Message::parse(&rtr_bytes).unwrap();
    let rtr = Rtr::decode(&rtr_msg).unwrap();
    assert_eq!(rtr.user_name, IMPI);
    assert_eq!(rtr.public_identities, vec![IMPU]);
    assert_eq!(rtr.base.destination_host, Some("scscf1.hims.net"));
    let mut rta = Vec::new();
    Rta {
        base: answer_base(&rtr_msg),
    }
    .encode(&mut rta)
    .unwrap();
    c.peer.send_answer(rta);
    c.pump_until(Duration::from_millis(300), |_| false);
    let (st, body) = admin.join().unwrap();
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["result_code"], 2001);
    let (_, regs) = get(&format!("{b}/v1/registrations"));
    assert!(
        regs.contains(r#""registrations":[]"#),
        "nobody registered after RTA: {regs}"
    );
    let (_, shown) = get(&format!("{b}/v1/subscribers/{IMPI}"));
    assert!(
        shown.contains(r#""scscf":null"#),
        "the S-CSCF is forgotten after RTA: {shown}"
    );
    // The last authentication stays (MAR, then SAR REGISTRATION): it is history.
    assert!(
        shown.contains(r#""outcome":"success""#),
        "the last authentication is shown: {shown}"
    );

    // Register again, then push the profile: PPR with the IMSSubscription User-Data.
    c.ask({
        let mut m = mar(IMPI, IMPU, "scscf1.hims.net");
        m.truncate(m.len());
        m
    });
    let _ = c.ask({
        let r = ims_diameter::cx::Sar {
            base: ims_diameter::cx::RequestBase {
                session_id: "scscf1.hims.net;9;9",
                origin_host: "scscf1.hims.net",
                origin_realm: "hims.net",
                destination_realm: "hims.net",
                ..Default::default()
            },
            user_name: Some(IMPI),
            public_identities: vec![IMPU],
            server_name: "sip:scscf1.hims.net:6060",
            assignment_type: dict::ServerAssignmentType::Registration,
            user_data_already_available: dict::UserDataAlreadyAvailable::UserDataAlreadyAvailable,
        };
        let mut v = Vec::new();
        r.encode(&mut v).unwrap();
        v
    });
    let base = b.clone();
    let admin = std::thread::spawn(move || {
        post(
            &format!("{base}/v1/subscribers/{IMPI}/push-profile"),
            json!({}),
        )
    });
    assert!(c.pump_until(Duration::from_secs(5), |e| matches!(e, Event::Request(_))));
    let ppr_bytes = c.requests.pop().unwrap();
    let ppr_msg = Message::parse(&ppr_bytes).unwrap();
    let ppr = Ppr::decode(&ppr_msg).unwrap();
    let xml = std::str::from_utf8(ppr.user_data.unwrap()).unwrap();
    assert!(xml.contains("<Identity>sip:alice@hims.net</Identity>"));
    let mut ppa = Vec::new();
    Ppa {
        base: answer_base(&ppr_msg),
    }
    .encode(&mut ppa)
    .unwrap();
    c.peer.send_answer(ppa);
    c.pump_until(Duration::from_millis(300), |_| false);
    let (st, body) = admin.join().unwrap();
    assert_eq!(
        (st, body["result_code"].as_u64()),
        (200, Some(2001)),
        "{body}"
    );

    // Metrics count what happened.
    let (st, m) = get(&format!("{b}/metrics"));
    assert_eq!(st, 200);
    assert!(
        m.contains("ims_hss_cx_requests_total{command=\"MAR\",result=\"2001\"} 41"),
        "{m}"
    );
    assert!(
        m.contains("ims_hss_cx_requests_total{command=\"SAR\",result=\"2001\"} 2"),
        "{m}"
    );
    assert!(m.contains("ims_hss_diameter_peers_up 1"), "{m}");
    assert!(m.contains("ims_hss_cx_answer_seconds_count 43"), "{m}");

    // A peer that answers nothing for RTR: the admin API says 502, not a hang.
    drop(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !get(&format!("{b}/metrics"))
        .1
        .contains("ims_hss_diameter_peers_up 0")
    {
        assert!(std::time::Instant::now() < deadline, "the peer never went");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (st, body) = post(&format!("{b}/v1/subscribers/{IMPI}/deregister"), json!({}));
    assert_eq!(st, 502, "{body}");
    let (_, m) = get(&format!("{b}/metrics"));
    assert!(m.contains("ims_hss_diameter_peers_up 0"), "{m}");
}

/// A SAR from `scscf1.hims.net`, for [`IMPI`], in bytes.
fn sar_from_scscf1(session_id: &str) -> Vec<u8> {
    let r = ims_diameter::cx::Sar {
        base: ims_diameter::cx::RequestBase {
            session_id,
            origin_host: "scscf1.hims.net",
            origin_realm: "hims.net",
            destination_realm: "hims.net",
            ..Default::default()
        },
        user_name: Some(IMPI),
        public_identities: vec![IMPU],
        server_name: "sip:scscf1.hims.net:5060",
        assignment_type: dict::ServerAssignmentType::Registration,
        user_data_already_available: dict::UserDataAlreadyAvailable::UserDataNotAvailable,
    };
    let mut v = Vec::new();
    r.encode(&mut v).unwrap();
    v
}

/// The S-CSCF behind a Diameter relay (freeDiameterd in the interop test): the relay is the
/// HSS's only peer, advertising the Relay Application-Id; the S-CSCF's SAR comes through it.
/// An admin deregistration then sends the RTR for `scscf1.hims.net` (not a peer) to the
/// relay, Destination-Host naming the S-CSCF, and the relay's RTA (from the S-CSCF) ends the
/// registration. A peer that is not a relay (an I-CSCF) never gets a request for another
/// host: with only it connected, the RTR has nowhere to go (502).
#[test]
fn rtr_for_an_scscf_behind_a_relay_goes_to_the_relay() {
    let hss = start_with(ims_hss::DiameterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        origin_host: Some("hss1.hims.net".into()),
        allowed_peers: vec!["relay1.hims.net".into(), "icscf1.hims.net".into()],
        ..Default::default()
    });
    let b = &hss.base;
    let (st, body) = post(
        &format!("{b}/v1/subscribers"),
        json!({"impi": IMPI, "impus": [IMPU], "aka": {"k": K, "op": OP, "amf": "8000"}}),
    );
    assert_eq!(st, 201, "{body}");
    let mut cfg = ims_diameter::peer::PeerConfig::cx("relay1.hims.net", "hims.net");
    // The relay application in the CER (as freeDiameterd sends it); Cx too, so that our
    // test peer finds the HSS's CEA (Cx only) in common.
    cfg.vendor_auth_apps.push((0, dict::APP_RELAY));
    cfg.watchdog = Duration::from_secs(60);
    let mut relay = CxClient::connect_with(hss.diameter, cfg).expect("the relay is allowed");
    let mut icscf = CxClient::connect(hss.diameter, "icscf1.hims.net").expect("allowed peer");
    let saa = relay.ask(sar_from_scscf1("scscf1.hims.net;1;1"));
    let saa = ims_diameter::cx::Saa::decode(&Message::parse(&saa).unwrap()).unwrap();
    assert_eq!(saa.base.result, AnswerResult::SUCCESS);

    let base = b.clone();
    let admin = std::thread::spawn(move || {
        post(
            &format!("{base}/v1/subscribers/{IMPI}/deregister"),
            json!({}),
        )
    });
    assert!(
        relay.pump_until(Duration::from_secs(5), |e| matches!(e, Event::Request(_))),
        "no RTR reached the relay (commands seen: {:?})",
        relay.seen
    );
    let rtr_bytes = relay.requests.pop().unwrap();
    let rtr_msg = Message::parse(&rtr_bytes).unwrap();
    let rtr = Rtr::decode(&rtr_msg).unwrap();
    assert_eq!(rtr.base.destination_host, Some("scscf1.hims.net"));
    assert_eq!(rtr.base.destination_realm, "hims.net");
    assert_eq!(rtr.user_name, IMPI);
    let mut rta = Vec::new();
    Rta {
        base: answer_base(&rtr_msg),
    }
    .encode(&mut rta)
    .unwrap();
    relay.peer.send_answer(rta);
    relay.pump_until(Duration::from_millis(300), |_| false);
    let (st, body) = admin.join().unwrap();
    assert_eq!(
        (st, body["result_code"].as_u64()),
        (200, Some(2001)),
        "{body}"
    );
    assert_eq!(body["scscf"], "scscf1.hims.net");
    icscf.pump_until(Duration::from_millis(100), |_| false);
    assert!(icscf.requests.is_empty(), "the I-CSCF got {:?}", icscf.seen);

    // Registered again through the relay, which then goes: the I-CSCF, no relay, gets
    // nothing, and the admin API says why.
    relay.ask(sar_from_scscf1("scscf1.hims.net;1;2"));
    drop(relay);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !get(&format!("{b}/metrics"))
        .1
        .contains("ims_hss_diameter_peers_up 1")
    {
        assert!(std::time::Instant::now() < deadline, "the relay never went");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (st, body) = post(&format!("{b}/v1/subscribers/{IMPI}/deregister"), json!({}));
    assert_eq!(st, 502, "{body}");
    assert!(
        body.to_string()
            .contains("no open Diameter connection to scscf1.hims.net"),
        "{body}"
    );
    icscf.pump_until(Duration::from_millis(100), |_| false);
    assert!(icscf.requests.is_empty(), "the I-CSCF got {:?}", icscf.seen);
}

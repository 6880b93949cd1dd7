//! Two peers wired to each other in memory, and hand-made bytes for the odd cases.

use super::*;
use crate::cx::{RequestBase, Uar};

const T0: Duration = Duration::ZERO;

fn hss_cfg() -> PeerConfig {
    let mut c = PeerConfig::cx("hss1.hims.net", "hims.net");
    c.allowed_peers = vec!["icscf1.hims.net".into()];
    c.watchdog = Duration::from_secs(6);
    c
}

fn icscf_cfg() -> PeerConfig {
    let mut c = PeerConfig::cx("icscf1.hims.net", "hims.net");
    c.watchdog = Duration::from_secs(6);
    c
}

/// Moves every queued byte both ways until nothing moves.
fn pump(now: Instant, a: &mut Peer, b: &mut Peer) {
    loop {
        let mut moved = false;
        while let Some(x) = a.poll_transmit() {
            b.handle_bytes(now, &x);
            moved = true;
        }
        while let Some(x) = b.poll_transmit() {
            a.handle_bytes(now, &x);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn events(p: &mut Peer) -> Vec<Event> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

fn open_pair(now: Instant) -> (Peer, Peer) {
    let mut c = Peer::new(icscf_cfg(), Role::Initiator, 7);
    let mut s = Peer::new(hss_cfg(), Role::Responder, 9);
    c.handle_connecting(now);
    c.handle_connected(now);
    s.handle_connected(now);
    pump(now, &mut c, &mut s);
    assert_eq!(
        events(&mut c),
        vec![Event::Up {
            host: "hss1.hims.net".into(),
            realm: "hims.net".into()
        }]
    );
    assert_eq!(
        events(&mut s),
        vec![Event::Up {
            host: "icscf1.hims.net".into(),
            realm: "hims.net".into()
        }]
    );
    (c, s)
}

fn uar() -> Vec<u8> {
    let r = Uar {
        base: RequestBase {
            session_id: "icscf1.hims.net;1;1",
            origin_host: "icscf1.hims.net",
            origin_realm: "hims.net",
            destination_realm: "hims.net",
            ..RequestBase::default()
        },
        user_name: "alice.private@hims.net",
        public_identity: "sip:alice@hims.net",
        visited_network_identifier: b"hims.net",
        authorization_type: None,
        uar_flags: None,
    };
    let mut b = Vec::new();
    r.encode(&mut b).unwrap();
    b
}

/// An answer echoing a request's ids.
fn answer_to(req: &[u8]) -> Vec<u8> {
    let m = Message::parse(req).unwrap();
    let hdr = m.header().answer();
    let mut b = Vec::new();
    let mut mb = MessageBuilder::new(&mut b, &hdr);
    mb.utf8(&dict::SESSION_ID, "icscf1.hims.net;1;1")
        .u32(&dict::RESULT_CODE, rc::SUCCESS)
        .utf8(&dict::ORIGIN_HOST, "hss1.hims.net")
        .utf8(&dict::ORIGIN_REALM, "hims.net");
    mb.finish().unwrap();
    b
}

#[test]
fn capabilities_exchange_and_many_requests_answered_out_of_order() {
    let now = Instant::now();
    let (mut c, mut s) = open_pair(now);
    assert_eq!((c.state(), s.state()), (State::Open, State::Open));
    let handles: Vec<u64> = (0..100)
        .map(|_| c.send_request(now, uar()).unwrap())
        .collect();
    assert_eq!(c.pending_requests(), 100);
    // Deliver all requests to the server.
    while let Some(x) = c.poll_transmit() {
        s.handle_bytes(now, &x);
    }
    let reqs: Vec<Vec<u8>> = events(&mut s)
        .into_iter()
        .map(|e| match e {
            Event::Request(b) => b,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(reqs.len(), 100);
    let hops: std::collections::HashSet<u32> = reqs
        .iter()
        .map(|r| Message::parse(r).unwrap().header().hop_by_hop)
        .collect();
    assert_eq!(hops.len(), 100, "hop-by-hop ids unique");
    // Answer in reverse order, all in one TCP segment.
    let mut segment = Vec::new();
    for r in reqs.iter().rev() {
        segment.extend_from_slice(&answer_to(r));
    }
    c.handle_bytes(now, &segment);
    let mut got: Vec<u64> = events(&mut c)
        .into_iter()
        .map(|e| match e {
            Event::Answer { handle, .. } => handle,
            other => panic!("{other:?}"),
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, handles);
    assert_eq!(c.pending_requests(), 0);
}

#[test]
fn bytes_split_anywhere_still_frame() {
    let now = Instant::now();
    let (mut c, mut s) = open_pair(now);
    let _ = c.send_request(now, uar()).unwrap();
    let bytes = c.poll_transmit().unwrap();
    for chunk in bytes.chunks(3) {
        s.handle_bytes(now, chunk);
    }
    assert!(matches!(events(&mut s).as_slice(), [Event::Request(_)]));
}

#[test]
fn watchdog_dwr_after_tw_and_down_without_dwa() {
    let now = Instant::now();
    let (mut c, mut s) = open_pair(now);
    let tw = Duration::from_secs(6);
    assert_eq!(c.poll_timeout(), Some(now + tw));
    // Tw of silence: DWR goes out; the server answers DWA; still Open.
    c.handle_timeout(now + tw);
    let dwr = c.poll_transmit().unwrap();
    assert_eq!(Message::parse(&dwr).unwrap().command_code(), 280);
    s.handle_bytes(now + tw, &dwr);
    let dwa = s.poll_transmit().unwrap();
    let m = Message::parse(&dwa).unwrap();
    assert!(!m.is_request());
    assert_eq!(
        m.find(&dict::RESULT_CODE)
            .unwrap()
            .unwrap()
            .as_u32()
            .unwrap(),
        2001
    );
    c.handle_bytes(now + tw, &dwa);
    assert_eq!(c.state(), State::Open);
    // Again silence, DWR, but this time no DWA: SUSPECT after Tw, down after another Tw,
    // reconnect later.
    c.handle_timeout(now + tw * 2);
    assert!(c.poll_transmit().is_some());
    c.handle_timeout(now + tw * 3);
    assert_eq!(c.watchdog_state(), WatchdogState::Suspect);
    assert_eq!(c.state(), State::Open);
    assert!(events(&mut c).is_empty());
    // Traffic other than a DWA does not clear SUSPECT, nor push the deadline back.
    c.handle_bytes(now + tw * 3 + Duration::from_secs(1), &dwr);
    assert!(c.poll_transmit().is_some(), "a DWR is still answered");
    assert_eq!(c.poll_timeout(), Some(now + tw * 4));
    c.handle_timeout(now + tw * 4);
    let ev = events(&mut c);
    assert!(ev.contains(&Event::Close));
    assert!(ev.contains(&Event::Down(DownReason::WatchdogTimeout)));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.watchdog_state(), WatchdogState::Down);
    let at = c.poll_timeout().unwrap();
    assert_eq!(at, now + tw * 4 + Duration::from_secs(1));
    assert_eq!(c.reconnect_at(), Some(at));
    c.handle_timeout(at);
    assert_eq!(events(&mut c), vec![Event::Reconnect]);
}

#[test]
fn reconnect_backs_off_and_a_connection_dying_young_does_not_reset_it() {
    let now = Instant::now();
    let mut c = Peer::new(icscf_cfg(), Role::Initiator, 1);
    let mut t = now;
    let mut delays = Vec::new();
    for _ in 0..7 {
        c.handle_connecting(t);
        c.handle_disconnected(t);
        let at = c.poll_timeout().unwrap();
        delays.push((at - t).as_secs());
        c.handle_timeout(at);
        assert!(events(&mut c).contains(&Event::Reconnect));
        t = at;
    }
    assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
    // Open after the failures: the back-off starts again; down at once: 1 s.
    let open_at = |c: &mut Peer, t: Instant| {
        let mut s = Peer::new(hss_cfg(), Role::Responder, 2);
        c.handle_connecting(t);
        c.handle_connected(t);
        s.handle_connected(t);
        pump(t, c, &mut s);
        assert_eq!(c.state(), State::Open);
    };
    open_at(&mut c, t);
    c.handle_disconnected(t);
    let at = c.poll_timeout().unwrap();
    assert_eq!((at - t).as_secs(), 1, "back-off reset once open");
    // Open again, down at once again (a peer sending garbage after its CEA): no reset, 2 s.
    c.handle_timeout(at);
    let t = at;
    open_at(&mut c, t);
    c.handle_disconnected(t);
    let at = c.poll_timeout().unwrap();
    assert_eq!(
        (at - t).as_secs(),
        2,
        "no reset after a connection that died within Tw"
    );
    // Open for Tw, then down: back to 1 s.
    c.handle_timeout(at);
    let t = at;
    open_at(&mut c, t);
    let later = t + icscf_cfg().watchdog;
    c.handle_disconnected(later);
    assert_eq!(
        (c.poll_timeout().unwrap() - later).as_secs(),
        1,
        "back-off reset after a connection that lived Tw"
    );
}

#[test]
fn dpr_dpa_closes_both_ends_and_fails_pending_requests() {
    let now = Instant::now();
    let (mut c, mut s) = open_pair(now);
    let h = c.send_request(now, uar()).unwrap();
    let _ = c.poll_transmit();
    c.disconnect(now, DisconnectCause::Rebooting);
    assert_eq!(c.state(), State::Closing);
    pump(now, &mut c, &mut s);
    let se = events(&mut s);
    assert!(se.contains(&Event::Down(DownReason::PeerDisconnected(0))));
    assert!(se.contains(&Event::Close));
    let ce = events(&mut c);
    assert!(ce.contains(&Event::RequestFailed {
        handle: h,
        reason: RequestFailure::ConnectionDown
    }));
    assert!(ce.contains(&Event::Down(DownReason::Disconnected)));
    assert!(ce.contains(&Event::Close));
    assert_eq!(c.poll_timeout(), None, "no reconnect after our own DPR");
}

#[test]
fn unknown_peer_gets_3010_and_is_closed() {
    let now = Instant::now();
    let mut c = Peer::new(
        PeerConfig::cx("evil.example.net", "example.net"),
        Role::Initiator,
        3,
    );
    let mut s = Peer::new(hss_cfg(), Role::Responder, 4);
    c.handle_connected(now);
    s.handle_connected(now);
    let cer = c.poll_transmit().unwrap();
    s.handle_bytes(now, &cer);
    let cea = s.poll_transmit().unwrap();
    let m = Message::parse(&cea).unwrap();
    assert_eq!(
        m.find(&dict::RESULT_CODE)
            .unwrap()
            .unwrap()
            .as_u32()
            .unwrap(),
        3010
    );
    assert_ne!(
        m.header().flags & flags::E,
        0,
        "3xxx answers carry the E bit"
    );
    assert!(events(&mut s).contains(&Event::Close));
    c.handle_bytes(now, &cea);
    assert!(events(&mut c).contains(&Event::Down(DownReason::CapabilitiesRefused(3010))));
}

#[test]
fn allowed_host_from_another_realm_gets_3010() {
    let now = Instant::now();
    let mut cfg = hss_cfg();
    cfg.allowed_realms = vec!["hims.net".into()];
    let mut c = Peer::new(
        PeerConfig::cx("icscf1.hims.net", "evil.net"),
        Role::Initiator,
        3,
    );
    let mut s = Peer::new(cfg, Role::Responder, 4);
    c.handle_connected(now);
    s.handle_connected(now);
    pump(now, &mut c, &mut s);
    assert!(events(&mut s).contains(&Event::Down(DownReason::CapabilitiesRefused(3010))));
}

#[test]
fn no_common_application_gets_5010() {
    let now = Instant::now();
    let mut cfg = icscf_cfg();
    cfg.vendor_auth_apps = vec![(dict::VENDOR_3GPP, 16_777_251)]; // S6a only
    let mut c = Peer::new(cfg, Role::Initiator, 3);
    let mut s = Peer::new(hss_cfg(), Role::Responder, 4);
    c.handle_connected(now);
    s.handle_connected(now);
    pump(now, &mut c, &mut s);
    assert!(events(&mut s).contains(&Event::Down(DownReason::CapabilitiesRefused(5010))));
    assert!(events(&mut c).contains(&Event::Down(DownReason::CapabilitiesRefused(5010))));
}

#[test]
fn responder_times_out_without_cer_and_rejects_early_requests() {
    let now = Instant::now();
    let mut s = Peer::new(hss_cfg(), Role::Responder, 4);
    s.handle_connected(now);
    s.handle_timeout(now + Duration::from_secs(6));
    assert!(events(&mut s).contains(&Event::Down(DownReason::WatchdogTimeout)));
    let mut s = Peer::new(hss_cfg(), Role::Responder, 4);
    s.handle_connected(now);
    s.handle_bytes(now, &uar());
    assert!(events(&mut s).contains(&Event::Close));
    assert!(s.send_request(now, uar()).is_err());
}

#[test]
fn garbage_never_panics_and_framing_errors_close() {
    let now = Instant::now();
    let (_, mut s) = open_pair(now);
    s.handle_bytes(
        now,
        &[
            2, 0, 0, 20, 0x80, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    assert!(
        events(&mut s)
            .iter()
            .any(|e| matches!(e, Event::Down(DownReason::Framing(_))))
    );
    // A well-framed request with a broken AVP gets an error answer, connection kept.
    let (_, mut s) = open_pair(now);
    let mut bad = uar();
    let n = bad.len();
    bad[n - 9] = 0xff; // corrupt the last AVP's length
    s.handle_bytes(now, &bad);
    let ans = s.poll_transmit();
    assert_eq!(s.state(), State::Open);
    if let Some(a) = ans {
        let m = Message::parse(&a).unwrap();
        assert!(!m.is_request());
    }
    // Arbitrary byte soup, any split.
    let mut x: u32 = 12345;
    for round in 0..200 {
        let (_, mut s) = open_pair(now);
        let len = (round * 7) % 300;
        let soup: Vec<u8> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let mut soup = soup;
        if soup.len() >= 4 {
            soup[0] = 1;
        }
        for c in soup.chunks(1 + round % 5) {
            s.handle_bytes(now, c);
        }
        let _ = events(&mut s);
        let _ = s.poll_timeout();
    }
}

#[test]
fn answer_for_nobody_is_dropped_and_requests_time_out() {
    let now = Instant::now();
    let (mut c, _s) = open_pair(now);
    let stray = answer_to(&uar());
    c.handle_bytes(now, &stray);
    assert!(events(&mut c).is_empty());
    let h = c.send_request(now, uar()).unwrap();
    c.handle_timeout(now + Duration::from_secs(10));
    assert!(events(&mut c).contains(&Event::RequestFailed {
        handle: h,
        reason: RequestFailure::Timeout
    }));
}

#[test]
fn end_to_end_ids_follow_freediameter() {
    let mut g = EndToEndIdGenerator::new(0x1234_5abc, 0xfff_ffff);
    let first = g.next_id();
    assert_eq!(first >> 20, 0xabc);
    assert_eq!(first & 0xf_ffff, 0xf_ffff);
    assert_eq!(g.next_id(), first.wrapping_add(1));
    let _ = T0;
}

#[test]
fn suspect_peer_fails_back_on_dwa() {
    let now = Instant::now();
    let (mut c, mut s) = open_pair(now);
    let tw = Duration::from_secs(6);
    c.handle_timeout(now + tw);
    let dwr = c.poll_transmit().unwrap();
    c.handle_timeout(now + tw * 2);
    assert_eq!(c.watchdog_state(), WatchdogState::Suspect);
    // The DWA arrives late: OKAY again, and the watchdog restarts from now.
    s.handle_bytes(now + tw * 2, &dwr);
    let dwa = s.poll_transmit().unwrap();
    c.handle_bytes(now + tw * 2, &dwa);
    assert_eq!(c.watchdog_state(), WatchdogState::Okay);
    assert_eq!(c.poll_timeout(), Some(now + tw * 3));
    c.handle_timeout(now + tw * 3);
    assert_eq!(
        Message::parse(&c.poll_transmit().unwrap())
            .unwrap()
            .command_code(),
        dict::command::DEVICE_WATCHDOG
    );
    assert!(events(&mut c).is_empty());
}

#[test]
fn responder_sends_dwr_and_initiator_answers() {
    let now = Instant::now();
    let (mut c, mut s) = open_pair(now);
    let tw = Duration::from_secs(6);
    s.handle_timeout(now + tw);
    let dwr = s.poll_transmit().unwrap();
    let m = Message::parse(&dwr).unwrap();
    assert!(m.is_request());
    assert_eq!(m.command_code(), dict::command::DEVICE_WATCHDOG);
    assert_eq!(m.header().application_id, dict::APP_COMMON);
    c.handle_bytes(now + tw, &dwr);
    let dwa = c.poll_transmit().unwrap();
    let a = Message::parse(&dwa).unwrap();
    assert_eq!(a.header().hop_by_hop, m.header().hop_by_hop);
    assert_eq!(a.header().end_to_end, m.header().end_to_end);
    s.handle_bytes(now + tw, &dwa);
    assert_eq!(s.watchdog_state(), WatchdogState::Okay);
    assert_eq!(s.poll_timeout(), Some(now + tw * 2));
}

#[test]
fn cer_on_an_open_connection_gets_an_error_and_changes_nothing() {
    let now = Instant::now();
    let (mut c, mut s) = open_pair(now);
    let mut again = Peer::new(icscf_cfg(), Role::Initiator, 11);
    again.handle_connected(now);
    let cer = again.poll_transmit().unwrap();
    s.handle_bytes(now, &cer);
    let cea = s.poll_transmit().unwrap();
    let m = Message::parse(&cea).unwrap();
    assert_eq!(m.command_code(), dict::command::CAPABILITIES_EXCHANGE);
    assert_eq!(find_u32(&m, &dict::RESULT_CODE), Some(rc::UNABLE_TO_COMPLY));
    assert_eq!(s.state(), State::Open);
    assert!(events(&mut s).is_empty());
    // A stray CEA on the open connection is ignored too.
    c.handle_bytes(now, &cea);
    assert_eq!(c.state(), State::Open);
    assert!(events(&mut c).is_empty());
}

#[test]
fn common_applications_are_known_once_open() {
    let now = Instant::now();
    let (c, s) = open_pair(now);
    assert_eq!(c.common_applications(), &[dict::APP_CX]);
    assert_eq!(s.common_applications(), &[dict::APP_CX]);
    assert!(!c.remote_is_relay() && !s.remote_is_relay());
    // A relay peer shares all of ours, and is known as a relay (the HSS sends it requests
    // for S-CSCFs behind it).
    let mut cfg = icscf_cfg();
    cfg.vendor_auth_apps = vec![(0, dict::APP_RELAY)];
    let mut r = Peer::new(cfg, Role::Initiator, 5);
    let mut s = Peer::new(hss_cfg(), Role::Responder, 6);
    r.handle_connected(now);
    s.handle_connected(now);
    pump(now, &mut r, &mut s);
    assert_eq!(s.state(), State::Open);
    assert_eq!(s.common_applications(), &[dict::APP_CX]);
    assert!(s.remote_is_relay(), "the CER named the relay application");
    assert!(!r.remote_is_relay(), "the HSS's CEA names Cx only");
}

#[test]
fn send_request_writes_fresh_ids_and_refuses_bad_bytes() {
    let now = Instant::now();
    let (mut c, _s) = open_pair(now);
    let mut ids = std::collections::HashSet::new();
    for _ in 0..3 {
        c.send_request(now, uar()).unwrap();
        let m = *Message::parse(&c.poll_transmit().unwrap())
            .unwrap()
            .header();
        assert!(ids.insert((m.hop_by_hop, m.end_to_end)));
    }
    let mut short = uar();
    short.pop();
    assert!(matches!(
        c.send_request(now, short),
        Err(PeerError::NotARequest(_))
    ));
    let mut answer = uar();
    answer[4] &= !flags::R;
    assert!(matches!(
        c.send_request(now, answer),
        Err(PeerError::NotARequest(_))
    ));
    assert!(c.send_request(now, vec![1, 0, 0]).is_err());
    assert_eq!(c.pending_requests(), 3);
}

#[test]
fn injected_end_to_end_ids() {
    let cfg = icscf_cfg();
    let mut c = Peer::with_end_to_end(
        cfg,
        Role::Initiator,
        1,
        EndToEndIdGenerator::new(0xabc, 0x12345),
    );
    c.handle_connected(Instant::now());
    let cer = c.poll_transmit().unwrap();
    let m = Message::parse(&cer).unwrap();
    assert_eq!(m.header().end_to_end, 0xabc1_2345);
}

#[test]
fn malformed_answer_still_reaches_its_request() {
    let now = Instant::now();
    let (mut c, _s) = open_pair(now);
    let h = c.send_request(now, uar()).unwrap();
    let req = c.poll_transmit().unwrap();
    let mut bad = answer_to(&req);
    bad[4] |= 0x01; // a reserved command flag: the header check refuses it (3008)
    assert!(Message::parse(&bad).is_err());
    c.handle_bytes(now, &bad);
    assert_eq!(
        events(&mut c),
        vec![Event::Answer {
            handle: h,
            bytes: bad
        }]
    );
    assert_eq!(c.state(), State::Open);
}

#[test]
fn disconnect_before_open_does_not_reconnect() {
    let now = Instant::now();
    let mut c = Peer::new(icscf_cfg(), Role::Initiator, 1);
    c.handle_connecting(now);
    c.handle_connected(now);
    c.disconnect(now, DisconnectCause::Rebooting);
    let ev = events(&mut c);
    assert!(ev.contains(&Event::Close));
    assert_eq!(c.poll_timeout(), None);
    // A peer's DPR with REBOOTING: answered, closed, and the initiator reconnects.
    let (mut c, mut s) = open_pair(now);
    s.disconnect(now, DisconnectCause::Rebooting);
    pump(now, &mut c, &mut s);
    assert!(events(&mut c).contains(&Event::Down(DownReason::PeerDisconnected(0))));
    assert_eq!(c.reconnect_at(), Some(now + Duration::from_secs(1)));
    // DO_NOT_WANT_TO_TALK_TO_YOU: no reconnect.
    let (mut c, mut s) = open_pair(now);
    s.disconnect(now, DisconnectCause::DoNotWantToTalkToYou);
    pump(now, &mut c, &mut s);
    assert!(events(&mut c).contains(&Event::Down(DownReason::PeerDisconnected(2))));
    assert_eq!(c.reconnect_at(), None);
}

#[test]
fn a_request_answered_with_a_result_code_alone() {
    let now = Instant::now();
    let (mut c, mut s) = open_pair(now);
    c.send_request(now, uar()).unwrap();
    pump(now, &mut c, &mut s);
    let Some(Event::Request(req)) = s.poll_event() else {
        panic!("the UAR reaches the server");
    };
    s.answer_with_result(&req, rc::TOO_BUSY);
    // Not a request: nothing goes out.
    s.answer_with_result(&answer_to(&req), rc::TOO_BUSY);
    s.answer_with_result(b"garbage", rc::TOO_BUSY);
    let out: Vec<Vec<u8>> = std::iter::from_fn(|| s.poll_transmit()).collect();
    assert_eq!(out.len(), 1, "one answer");
    let a = Message::parse(&out[0]).unwrap();
    let q = Message::parse(&req).unwrap();
    assert!(!a.is_request());
    assert_ne!(
        a.header().flags & flags::E,
        0,
        "3004 is a protocol error: E bit"
    );
    assert_eq!(
        (
            a.header().hop_by_hop,
            a.header().end_to_end,
            a.header().command_code
        ),
        (
            q.header().hop_by_hop,
            q.header().end_to_end,
            q.header().command_code
        )
    );
    let first = a.avps().next().unwrap().unwrap();
    assert!(first.is(&dict::SESSION_ID), "Session-Id first");
    assert_eq!(a.session_id().unwrap(), Some("icscf1.hims.net;1;1"));
    let result = a.find(&dict::RESULT_CODE).unwrap().unwrap();
    assert_eq!(result.as_u32().unwrap(), rc::TOO_BUSY);
    let origin = a.find(&dict::ORIGIN_HOST).unwrap().unwrap();
    assert_eq!(origin.as_utf8().unwrap(), "hss1.hims.net");
    // The client takes it as the answer to its request.
    c.handle_bytes(now, &out[0]);
    assert!(matches!(c.poll_event(), Some(Event::Answer { .. })));
}

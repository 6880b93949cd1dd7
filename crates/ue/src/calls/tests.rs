use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Alice at .1 calls Bob at .2; each one's "P-CSCF" is the other (no proxy between them).
fn pair() -> (CallAgent, CallAgent, Instant) {
    let t0 = Instant::now();
    let (a, b) = (addr("127.0.0.1:40000"), addr("127.0.0.2:40000"));
    let alice = CallAgent::new(CallConfig::new(a, b, "sip:alice@hims.net", "alice", 1), t0);
    let bob = CallAgent::new(CallConfig::new(b, a, "sip:bob@hims.net", "bob", 2), t0);
    (alice, bob, t0)
}

/// Delivers everything queued on both sides (unless `drop` says no), until quiet; returns the
/// start lines of what was sent, in order.
fn pump(
    alice: &mut CallAgent,
    bob: &mut CallAgent,
    now: Instant,
    mut drop: impl FnMut(&str) -> bool,
) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let a = deliver(alice, bob, now, "A", &mut drop, &mut seen);
        let b = deliver(bob, alice, now, "B", &mut drop, &mut seen);
        if !(a || b) {
            return seen;
        }
    }
}

/// Everything `from` has queued goes to `to` (unless `drop` says no), each start line noted
/// in `seen` after `who`; whether anything was queued.
fn deliver(
    from: &mut CallAgent,
    to: &mut CallAgent,
    now: Instant,
    who: &str,
    drop: &mut impl FnMut(&str) -> bool,
    seen: &mut Vec<String>,
) -> bool {
    let mut moved = false;
    while let Some(t) = from.poll_transmit() {
        moved = true;
        let text = String::from_utf8(t.payload.clone()).unwrap();
        Message::parse(Bytes::from(t.payload.clone())).expect("valid SIP");
        if !drop(&text) {
            to.handle_datagram(now, from.cfg.local, &t.payload);
        }
        seen.push(format!("{who}> {}", text.lines().next().unwrap()));
    }
    moved
}

fn events(agent: &mut CallAgent) -> Vec<CallEvent> {
    std::iter::from_fn(|| agent.poll_event()).collect()
}

#[test]
fn a_call_from_invite_to_bye() {
    let (mut alice, mut bob, t0) = pair();
    alice.call("sip:bob@hims.net", t0);
    let seen = pump(&mut alice, &mut bob, t0, |_| false);
    assert_eq!(
        seen,
        [
            "A> INVITE sip:bob@hims.net SIP/2.0",
            "B> SIP/2.0 180 Ringing",
            "B> SIP/2.0 200 OK",
            "A> ACK sip:bob@127.0.0.2:40000 SIP/2.0",
            "A> BYE sip:bob@127.0.0.2:40000 SIP/2.0",
            "B> SIP/2.0 200 OK",
        ]
    );
    let placed = events(&mut alice);
    let [CallEvent::Placed(r)] = placed.as_slice() else {
        panic!("{placed:?}")
    };
    assert_eq!(r.result, Ok(()));
    assert!(r.ringing.is_some() && r.setup.is_some());
    assert_eq!(r.retransmissions, 0);
    assert_eq!(events(&mut bob), [CallEvent::Answered(Ok(()))]);
    assert_eq!(alice.placed_alive(), 0);
    assert_eq!(alice.calls(), 0);
    // Bob keeps the dialog for a retransmitted BYE, then lets it go.
    assert_eq!(bob.calls(), 1);
    let later = bob.poll_timeout().expect("the dialog's linger timer");
    bob.handle_timeout(later);
    assert_eq!(bob.calls(), 0);
    assert_eq!(bob.poll_timeout(), None);
    assert_eq!(alice.poll_timeout(), None);
}

#[test]
fn the_dialog_follows_the_record_route() {
    let (mut alice, mut bob, t0) = pair();
    alice.call("sip:bob@hims.net", t0);
    let invite = alice.poll_transmit().unwrap();
    // Two proxies record-routed the INVITE.
    let text = String::from_utf8(invite.payload).unwrap().replacen(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 68\r\nRecord-Route: <sip:p2.hims.net;lr>\r\nRecord-Route: <sip:p1.hims.net;lr>\r\n",
        1,
    );
    bob.handle_datagram(t0, alice.cfg.local, text.as_bytes());
    let _ringing = bob.poll_transmit().unwrap();
    let ok = bob.poll_transmit().unwrap();
    let ok = Message::parse(Bytes::from(ok.payload)).unwrap();
    let rr: Vec<_> = ok
        .values(HeaderName::RecordRoute)
        .map(Result::unwrap)
        .collect();
    assert_eq!(rr, ["<sip:p2.hims.net;lr>", "<sip:p1.hims.net;lr>"]);
    assert!(ok.to_addr().unwrap().tag().is_some());
    assert_eq!(
        ok.header_str(HeaderName::ContentType),
        Some("application/sdp")
    );
    alice.handle_datagram(t0, bob.cfg.local, &ok.to_bytes());
    let ack = Message::parse(Bytes::from(alice.poll_transmit().unwrap().payload)).unwrap();
    let bye = Message::parse(Bytes::from(alice.poll_transmit().unwrap().payload)).unwrap();
    for m in [&ack, &bye] {
        let routes: Vec<_> = m.values(HeaderName::Route).map(Result::unwrap).collect();
        assert_eq!(routes, ["<sip:p1.hims.net;lr>", "<sip:p2.hims.net;lr>"]);
        assert_eq!(m.request_uri_str(), Some("sip:bob@127.0.0.2:40000"));
        assert_eq!(
            m.to_addr().unwrap().tag(),
            ok.to_addr().unwrap().tag(),
            "in the dialog"
        );
    }
    assert_eq!(ack.cseq().unwrap().seq, 1);
    assert_eq!(bye.cseq().unwrap().method, Method::Bye);
    assert_ne!(
        ack.top_via().unwrap().branch(),
        bye.top_via().unwrap().branch()
    );
}

#[test]
fn lost_messages_are_sent_again() {
    let (mut alice, mut bob, t0) = pair();
    alice.call("sip:bob@hims.net", t0);
    // The INVITE is lost once: Timer A sends it again after T1.
    let mut first = true;
    let seen = pump(&mut alice, &mut bob, t0, |m| {
        std::mem::take(&mut first) && m.starts_with("INVITE")
    });
    assert_eq!(seen, ["A> INVITE sip:bob@hims.net SIP/2.0"]);
    let t1 = alice.poll_timeout().unwrap();
    assert_eq!(t1 - t0, Duration::from_millis(500));
    alice.handle_timeout(t1);
    // This time the 200 is lost: Bob sends it again until the ACK.
    let mut first = true;
    let seen = pump(&mut alice, &mut bob, t1, |m| {
        m.starts_with("SIP/2.0 200") && std::mem::take(&mut first)
    });
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(events(&mut alice).is_empty());
    let again = bob.poll_timeout().unwrap();
    assert_eq!(again - t1, Duration::from_millis(500));
    bob.handle_timeout(again);
    let seen = pump(&mut alice, &mut bob, again, |_| false);
    assert_eq!(
        seen,
        [
            "B> SIP/2.0 200 OK",
            "A> ACK sip:bob@127.0.0.2:40000 SIP/2.0",
            "A> BYE sip:bob@127.0.0.2:40000 SIP/2.0",
            "B> SIP/2.0 200 OK",
        ]
    );
    let placed = events(&mut alice);
    let [CallEvent::Placed(r)] = placed.as_slice() else {
        panic!("{placed:?}")
    };
    assert_eq!((r.result, r.retransmissions), (Ok(()), 1));
    assert_eq!(r.setup, Some(Duration::from_millis(1000)));
    assert_eq!(events(&mut bob), [CallEvent::Answered(Ok(()))]);
}

#[test]
fn a_refused_call_is_acked_and_reported() {
    let (mut alice, _bob, t0) = pair();
    alice.call("sip:nobody@hims.net", t0);
    let invite = Message::parse(Bytes::from(alice.poll_transmit().unwrap().payload)).unwrap();
    let mut busy = response_to(&invite, 486, "Busy Here", Some("x1")).unwrap();
    busy.append_header("Server", "test").unwrap();
    alice.handle_datagram(t0, addr("127.0.0.2:40000"), &busy.to_bytes());
    let ack = Message::parse(Bytes::from(alice.poll_transmit().unwrap().payload)).unwrap();
    assert_eq!(ack.method(), Some(Method::Ack));
    assert_eq!(ack.request_uri_str(), invite.request_uri_str());
    assert_eq!(
        ack.top_via().unwrap().branch(),
        invite.top_via().unwrap().branch(),
        "the INVITE's transaction"
    );
    assert_eq!(ack.to_addr().unwrap().tag(), Some("x1"));
    let placed = events(&mut alice);
    let [CallEvent::Placed(r)] = placed.as_slice() else {
        panic!("{placed:?}")
    };
    assert_eq!(r.result, Err(CallFailure::Invite(486)));
    assert_eq!(r.setup, None);
    assert_eq!(alice.calls(), 0);
}

#[test]
fn silence_ends_in_a_timeout() {
    let (mut alice, _bob, t0) = pair();
    alice.cfg.timeout = Duration::from_secs(3);
    alice.call("sip:bob@hims.net", t0);
    let mut sends = 0;
    let mut now = t0;
    while alice.placed_alive() > 0 {
        while alice.poll_transmit().is_some() {
            sends += 1;
        }
        now = alice
            .poll_timeout()
            .expect("a timer while the call is alive");
        alice.handle_timeout(now);
    }
    // Sent at 0, 0.5, 1.5 s; given up at 3 s.
    assert_eq!(sends, 3);
    assert_eq!(now - t0, Duration::from_secs(3));
    let placed = events(&mut alice);
    assert!(
        matches!(placed.as_slice(), [CallEvent::Placed(r)] if r.result == Err(CallFailure::InviteTimeout)),
        "{placed:?}"
    );
}

#[test]
fn a_callee_whose_200_is_never_acked_gives_up() {
    let (mut alice, mut bob, t0) = pair();
    alice.call("sip:bob@hims.net", t0);
    let invite = alice.poll_transmit().unwrap();
    bob.handle_datagram(t0, alice.cfg.local, &invite.payload);
    let mut oks = 0;
    let mut now = t0;
    while bob.calls() > 0 {
        while let Some(t) = bob.poll_transmit() {
            oks += usize::from(t.payload.starts_with(b"SIP/2.0 200"));
        }
        now = bob.poll_timeout().unwrap();
        bob.handle_timeout(now);
    }
    // 0, 0.5, 1.5, 3.5, 7.5, 11.5, ... every 4 s up to 32 s.
    assert_eq!(oks, 11);
    assert_eq!(now - t0, Duration::from_secs(32));
    assert_eq!(
        events(&mut bob),
        [CallEvent::Answered(Err(CallFailure::NoAck))]
    );
}

#[test]
fn strays_are_answered_or_ignored() {
    let (mut alice, mut bob, t0) = pair();
    // A BYE for no dialog: 481.
    let bye = "BYE sip:bob@127.0.0.2:40000 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.9:5060;branch=z9hG4bKx\r\n\
               From: <sip:x@hims.net>;tag=1\r\nTo: <sip:bob@hims.net>;tag=2\r\nCall-ID: nothing\r\n\
               CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    bob.handle_datagram(t0, addr("127.0.0.9:5060"), bye.as_bytes());
    let r = bob.poll_transmit().unwrap();
    assert_eq!(r.to, addr("127.0.0.9:5060"));
    assert!(r.payload.starts_with(b"SIP/2.0 481"));
    // Garbage, a response for nothing, an ACK for nothing, an OPTIONS: nothing at all.
    for junk in [
        &b"\x00\x01garbage"[..],
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4\r\nCall-ID: zz\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        b"ACK sip:bob@h SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKa\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: zz\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
    ] {
        alice.handle_datagram(t0, addr("127.0.0.9:5060"), junk);
        bob.handle_datagram(t0, addr("127.0.0.9:5060"), junk);
    }
    assert!(alice.poll_transmit().is_none() && bob.poll_transmit().is_none());
    assert!(events(&mut alice).is_empty() && events(&mut bob).is_empty());
    assert_eq!((alice.calls(), bob.calls()), (0, 0));
}

use super::fake::{FakeCredentials, FakeRegistrar};
use super::*;

const K: [u8; 16] = [0x46; 16];
const OPC: [u8; 16] = [0xcd; 16];

fn pcscf() -> SocketAddr {
    "127.0.0.1:5060".parse().unwrap()
}

fn config(prefix: &str) -> SwarmConfig {
    SwarmConfig::new(
        "hims.net",
        prefix,
        pcscf(),
        "127.0.0.2:40000".parse().unwrap(),
        SwarmCredentials::Aka { k: K, opc: OPC },
        7,
    )
}

fn aka_registrar() -> FakeRegistrar {
    FakeRegistrar::new("hims.net", FakeCredentials::Aka { k: K, opc: OPC })
}

/// Sends everything queued to the registrar and feeds its answers back, until quiet.
fn pump(swarm: &mut Swarm, reg: &mut FakeRegistrar, now: Instant) -> Vec<String> {
    let mut sent = Vec::new();
    while let Some(t) = swarm.poll_transmit() {
        assert_eq!(t.to, pcscf());
        sent.push(String::from_utf8(t.payload.clone()).unwrap());
        if let Some(answer) = reg.handle(&t.payload) {
            swarm.handle_datagram(now, pcscf(), &answer);
        }
    }
    sent
}

fn events(swarm: &mut Swarm) -> Vec<Event> {
    std::iter::from_fn(|| swarm.poll_event()).collect()
}

fn phases(ev: &[Event]) -> Vec<(Phase, Result<(), Failure>)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Phase(p) => Some((p.phase, p.result)),
            Event::Finished { .. } => None,
        })
        .collect()
}

#[test]
fn a_ue_registers_with_aka_through_a_401() {
    let now = Instant::now();
    let mut swarm = Swarm::new(config("load"), now);
    let mut reg = aka_registrar();
    let ue = swarm.start(42, now);
    let sent = pump(&mut swarm, &mut reg, now + Duration::from_millis(3));
    assert_eq!(sent.len(), 2);
    assert!(sent[0].starts_with("REGISTER sip:hims.net SIP/2.0\r\n"));
    assert!(sent[0].contains("From: <sip:load42@hims.net>;tag="));
    assert!(sent[0].contains("Contact: <sip:load42@127.0.0.2:40000>;expires=600"));
    assert!(sent[0].contains("username=\"load42@hims.net\""));
    assert!(sent[0].contains("nonce=\"\""));
    assert!(sent[0].contains("CSeq: 1 REGISTER"));
    assert!(sent[1].contains("CSeq: 2 REGISTER"));
    assert!(sent[1].contains("algorithm=AKAv1-MD5"));
    assert!(sent[1].contains("nc=00000001"));
    assert_eq!((reg.challenges, reg.accepted), (1, 1));
    let ev = events(&mut swarm);
    assert_eq!(ev.len(), 2, "{ev:?}");
    let Event::Phase(p) = ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(p.ue, ue);
    assert_eq!(p.subscriber, 42);
    assert_eq!(p.result, Ok(()));
    assert_eq!(p.challenge, Some(Duration::from_millis(3)));
    assert_eq!(p.auth, Some(Duration::ZERO));
    assert_eq!(p.total, Duration::from_millis(3));
    assert_eq!(
        ev[1],
        Event::Finished {
            ue,
            subscriber: 42,
            ok: true
        }
    );
    assert_eq!(swarm.alive(), 0);
    assert_eq!(swarm.poll_timeout(), None);
    // The stale retransmission timer fires into nothing.
    swarm.handle_timeout(now + Duration::from_secs(60));
    assert!(swarm.poll_transmit().is_none());
    assert!(swarm.poll_event().is_none());
}

#[test]
fn sip_digest_md5_with_a_password() {
    let now = Instant::now();
    let mut cfg = config("md5");
    cfg.credentials = SwarmCredentials::Password("secret".into());
    let mut swarm = Swarm::new(cfg, now);
    let mut reg = FakeRegistrar::new("hims.net", FakeCredentials::Password("secret".into()));
    swarm.start(1, now);
    let sent = pump(&mut swarm, &mut reg, now);
    assert!(sent[1].contains("algorithm=MD5"), "{}", sent[1]);
    assert_eq!(phases(&events(&mut swarm)), [(Phase::Register, Ok(()))]);
    // A wrong password: 403.
    let mut cfg = config("md5");
    cfg.credentials = SwarmCredentials::Password("wrong".into());
    let mut swarm = Swarm::new(cfg, now);
    swarm.start(1, now);
    pump(&mut swarm, &mut reg, now);
    assert_eq!(
        phases(&events(&mut swarm)),
        [(Phase::Register, Err(Failure::Status(403)))]
    );
}

#[test]
fn a_403_is_a_failure_and_frees_the_ue() {
    let now = Instant::now();
    let mut swarm = Swarm::new(config("nobody"), now);
    let mut reg = aka_registrar();
    let ue = swarm.start(0, now);
    pump(&mut swarm, &mut reg, now);
    let ev = events(&mut swarm);
    assert_eq!(phases(&ev), [(Phase::Register, Err(Failure::Status(403)))]);
    assert!(ev.contains(&Event::Finished {
        ue,
        subscriber: 0,
        ok: false
    }));
    assert_eq!(swarm.alive(), 0);
    // The slot is reused, with a new Call-ID.
    assert_eq!(swarm.start(1, now), ue);
    assert_eq!(swarm.capacity(), 1);
}

#[test]
fn another_network_fails_the_mac_check() {
    let now = Instant::now();
    let mut swarm = Swarm::new(config("load"), now);
    let mut reg = FakeRegistrar::new(
        "hims.net",
        FakeCredentials::Aka {
            k: [1; 16],
            opc: OPC,
        },
    );
    swarm.start(0, now);
    let sent = pump(&mut swarm, &mut reg, now);
    assert_eq!(sent.len(), 1, "no answer to a challenge we cannot trust");
    assert_eq!(
        phases(&events(&mut swarm)),
        [(Phase::Register, Err(Failure::MacFailure))]
    );
}

#[test]
fn timer_e_retransmits_and_timer_f_gives_up() {
    let now = Instant::now();
    let mut swarm = Swarm::new(config("load"), now);
    swarm.start(0, now);
    let first = swarm.poll_transmit().unwrap();
    assert!(swarm.poll_transmit().is_none());
    // Sent at 0, 0.5, 1.5, 3.5, 7.5, 11.5 ... 31.5 s (gaps doubling from T1 up to T2).
    let mut at = Duration::ZERO;
    let mut sends = 1;
    for gap in [500, 1000, 2000, 4000, 4000, 4000, 4000, 4000, 4000, 4000] {
        at += Duration::from_millis(gap);
        assert_eq!(swarm.poll_timeout(), Some(now + at));
        // Not yet.
        swarm.handle_timeout(now + at - Duration::from_millis(1));
        assert!(swarm.poll_transmit().is_none());
        swarm.handle_timeout(now + at);
        let again = swarm.poll_transmit().expect("a retransmission");
        assert_eq!(again, first, "the same bytes");
        sends += 1;
    }
    assert_eq!(sends, 11);
    assert!(swarm.poll_event().is_none());
    // Timer F: 64·T1 = 32 s after the first send.
    assert_eq!(swarm.poll_timeout(), Some(now + Duration::from_secs(32)));
    swarm.handle_timeout(now + Duration::from_secs(32));
    assert!(swarm.poll_transmit().is_none());
    let ev = events(&mut swarm);
    let Event::Phase(p) = ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(p.result, Err(Failure::Timeout));
    assert_eq!(p.retransmissions, 10);
    assert_eq!(p.total, Duration::from_secs(32));
    assert_eq!(swarm.alive(), 0);
}

#[test]
fn a_shorter_timeout_gives_up_sooner_and_a_late_answer_still_counts_before_it() {
    let now = Instant::now();
    let mut cfg = config("load");
    cfg.timeout = Duration::from_secs(2);
    let mut swarm = Swarm::new(cfg, now);
    let mut reg = aka_registrar();
    swarm.start(0, now);
    let req = swarm.poll_transmit().unwrap();
    swarm.handle_timeout(now + Duration::from_millis(500));
    assert!(swarm.poll_transmit().is_some());
    // The 401 to the retransmission (the same transaction) is taken.
    let answer = reg.handle(&req.payload).unwrap();
    swarm.handle_datagram(now + Duration::from_millis(700), pcscf(), &answer);
    // The answer to the challenge is lost: it gives up 2 s after sending it.
    let auth = swarm.poll_transmit().unwrap();
    assert!(String::from_utf8_lossy(&auth.payload).contains("CSeq: 2 "));
    swarm.handle_timeout(now + Duration::from_millis(2699));
    assert!(swarm.poll_event().is_none());
    swarm.handle_timeout(now + Duration::from_millis(2700));
    let ev = events(&mut swarm);
    let Event::Phase(p) = ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(p.result, Err(Failure::Timeout));
    assert_eq!(p.challenge, Some(Duration::from_millis(700)));
    // At 0.5 s (the first REGISTER), 1.2 s and 2.2 s (the second).
    assert_eq!(p.retransmissions, 3);
}

#[test]
fn stray_and_garbled_datagrams_are_ignored() {
    let now = Instant::now();
    let mut swarm = Swarm::new(config("load"), now);
    let mut reg = aka_registrar();
    swarm.start(0, now);
    let req = swarm.poll_transmit().unwrap();
    let answer = reg.handle(&req.payload).unwrap();
    let text = String::from_utf8(answer.clone()).unwrap();
    let call_id = text
        .lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .unwrap()
        .to_owned();
    let strays: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\x00\xff\xfe garbage".to_vec(),
        answer[..answer.len() / 2].to_vec(),
        // Another Call-ID, a short one, a slot that does not exist, a wrong salt.
        text.replace(&call_id, "x").into_bytes(),
        text.replace(&call_id, "0000000000000001.1").into_bytes(),
        text.replace(&call_id, &format!("ffffffff{}", &call_id[8..]))
            .into_bytes(),
        text.replace(&call_id, &format!("00000000{}", "zzzzzzzz"))
            .into_bytes(),
        // Another CSeq.
        text.replace("CSeq: 1 REGISTER", "CSeq: 9 REGISTER")
            .into_bytes(),
        text.replace("CSeq: 1 REGISTER", "CSeq: 1 INVITE")
            .into_bytes(),
        // A request.
        req.payload.clone(),
        // A 401 without WWW-Authenticate is for us, but tested below.
    ];
    for s in &strays {
        swarm.handle_datagram(now, pcscf(), s);
    }
    assert!(swarm.poll_transmit().is_none());
    assert!(swarm.poll_event().is_none());
    // A 100 Trying is taken and changes nothing.
    let trying = text.replace("SIP/2.0 401 Unauthorized", "SIP/2.0 100 Trying");
    swarm.handle_datagram(now, pcscf(), trying.as_bytes());
    assert!(swarm.poll_event().is_none());
    // The real answer still works.
    swarm.handle_datagram(now, pcscf(), &answer);
    pump(&mut swarm, &mut reg, now);
    assert_eq!(phases(&events(&mut swarm)), [(Phase::Register, Ok(()))]);
    // A challenge we cannot read is a failure, not a panic.
    swarm.start(1, now);
    let req = swarm.poll_transmit().unwrap();
    let answer = String::from_utf8(reg.handle(&req.payload).unwrap()).unwrap();
    let broken: String = answer
        .lines()
        .map(|l| {
            if l.starts_with("WWW-Authenticate") {
                "WWW-Authenticate: Digest nonce=\"!!!\", algorithm=AKAv1-MD5"
            } else {
                l
            }
        })
        .flat_map(|l| [l, "\r\n"])
        .collect();
    swarm.handle_datagram(now, pcscf(), broken.as_bytes());
    assert_eq!(
        phases(&events(&mut swarm)),
        [(Phase::Register, Err(Failure::BadChallenge))]
    );
}

#[test]
fn reregistration_reuses_the_nonce_and_deregistration_is_challenged() {
    let now = Instant::now();
    let mut cfg = config("load");
    cfg.plan = Plan {
        reregister_every: Some(Duration::from_secs(10)),
        reregisters: 2,
        deregister: true,
    };
    let mut swarm = Swarm::new(cfg, now);
    let mut reg = aka_registrar();
    swarm.start(5, now);
    pump(&mut swarm, &mut reg, now);
    assert_eq!(phases(&events(&mut swarm)), [(Phase::Register, Ok(()))]);
    assert_eq!(swarm.poll_timeout(), Some(now + Duration::from_secs(10)));
    let t = now + Duration::from_secs(10);
    swarm.handle_timeout(t);
    let sent = pump(&mut swarm, &mut reg, t);
    // The same Call-ID, CSeq + 1, the last nonce with nc 2: accepted at once here.
    assert_eq!(sent.len(), 1);
    assert!(sent[0].contains("CSeq: 3 REGISTER"), "{}", sent[0]);
    assert!(sent[0].contains("nc=00000002"), "{}", sent[0]);
    let ev = events(&mut swarm);
    let Event::Phase(p) = ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!((p.phase, p.result), (Phase::Reregister, Ok(())));
    assert_eq!((p.challenge, p.auth), (None, Some(Duration::ZERO)));
    let t = t + Duration::from_secs(10);
    swarm.handle_timeout(t);
    let sent = pump(&mut swarm, &mut reg, t);
    assert!(sent[0].contains("nc=00000003"), "{}", sent[0]);
    // After the second re-registration, the deregistration: challenged, answered.
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(sent[1].contains("Expires: 0") && sent[1].contains("nonce=\"\""));
    assert!(sent[2].contains("Expires: 0") && sent[2].contains("nc=00000001"));
    let ev = events(&mut swarm);
    assert_eq!(
        phases(&ev),
        [(Phase::Reregister, Ok(())), (Phase::Deregister, Ok(()))]
    );
    assert!(matches!(ev.last(), Some(Event::Finished { ok: true, .. })));
    let calls: std::collections::HashSet<&str> = sent
        .iter()
        .filter_map(|s| s.lines().find(|l| l.starts_with("Call-ID")))
        .collect();
    assert_eq!(calls.len(), 1, "one Call-ID for the UE's life");
}

#[test]
fn wind_down_deregisters_the_waiting_ues() {
    let now = Instant::now();
    let mut cfg = config("load");
    cfg.plan = Plan {
        reregister_every: Some(Duration::from_secs(60)),
        reregisters: u32::MAX,
        deregister: true,
    };
    let mut swarm = Swarm::new(cfg, now);
    let mut reg = aka_registrar();
    for n in 0..10 {
        swarm.start(n, now);
    }
    pump(&mut swarm, &mut reg, now);
    assert_eq!(events(&mut swarm).len(), 10, "registered, waiting");
    assert_eq!(swarm.alive(), 10);
    swarm.wind_down(now);
    pump(&mut swarm, &mut reg, now);
    let ev = events(&mut swarm);
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::Finished { ok: true, .. }))
            .count(),
        10
    );
    assert_eq!(swarm.alive(), 0);
}

#[test]
fn many_ues_share_the_swarm() {
    let now = Instant::now();
    let mut swarm = Swarm::new(config("load"), now);
    let mut reg = aka_registrar();
    for n in 0..1000 {
        swarm.start(n, now);
    }
    pump(&mut swarm, &mut reg, now);
    let ok = events(&mut swarm)
        .iter()
        .filter(|e| matches!(e, Event::Finished { ok: true, .. }))
        .count();
    assert_eq!(ok, 1000);
    assert_eq!(reg.accepted, 1000);
}

/// The fixed state per UE the module documentation promises (memory, not time).
#[test]
fn a_ue_is_small() {
    assert!(Swarm::slot_size() <= 80, "{}", Swarm::slot_size());
}

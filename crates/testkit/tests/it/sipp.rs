//! The UE scenarios of `bin/tests/sipp/`, run by `ims_testkit::sipp` against a SIPp stand-in
//! registrar (`uas_register.xml`) on loopback (UDP/TCP, IPv4/IPv6) and across a namespace
//! topology: proof that the templates are valid SIPp and run end to end without our daemons.
//! The registrar's challenges are real AKA nonces (SIPp checks AUTN's MAC); the UE's digest
//! responses are checked here with ims-aka against XRES / the password.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use ims_aka::{DigestParams, Qop};
use ims_testkit::netns::Topology;
use ims_testkit::sipp::{
    self, AkaVerdict, Scenario, Sipp, SippChild, SippOutcome, TEST_AMF, TEST_K, TEST_OP, Transport,
    Ue,
};

const REALM: &str = "hims.net";

fn aka_challenge(nonce: &str) -> String {
    format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=AKAv1-MD5, qop=\"auth\"")
}

fn md5_challenge(nonce: &str) -> String {
    format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"")
}

fn response(status: &str, extra: &str) -> String {
    format!(
        r#"
  <send>
    <![CDATA[
      SIP/2.0 {status}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      {extra}
      Content-Length: 0

    ]]>
  </send>
"#
    )
}

/// The registrar's deregistration part: challenge again, then 200.
fn dereg_challenged(challenge: &str) -> String {
    format!(
        "  <recv request=\"REGISTER\" />\n{}  <recv request=\"REGISTER\" />\n{}",
        response(
            "401 Unauthorized",
            &format!("WWW-Authenticate: {challenge}")
        ),
        response("200 OK", "[last_Contact:]")
    )
}

/// The registrar's deregistration part: 200 at once.
fn dereg_at_once() -> String {
    format!(
        "  <recv request=\"REGISTER\" />\n{}",
        response("200 OK", "[last_Contact:]")
    )
}

fn uas_text(challenge1: &str, final_status: &str, dereg: &str) -> String {
    sipp::fill(
        Scenario::UasRegister.template(),
        &[
            ("REALM", REALM),
            ("CHALLENGE1", challenge1),
            ("FINAL", final_status),
            ("DEREG", dereg),
        ],
    )
    .unwrap()
}

fn free_port(ip: IpAddr, t: Transport) -> u16 {
    match t {
        Transport::Udp => sipp::free_udp_port(ip),
        Transport::Tcp => TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    }
}

fn start_uas(text: String, ip: IpAddr, t: Transport, prefix: &[String]) -> (SippChild, u16) {
    let port = free_port(ip, t);
    let uas = Sipp::new("uas_register", text)
        .local_ip(ip)
        .local_port(port)
        .transport(t)
        .prefix(prefix)
        .timeout(Duration::from_secs(20))
        .spawn();
    // Let the registrar bind before the UE sends (a UDP REGISTER would be retransmitted
    // anyway; a TCP connect would fail).
    std::thread::sleep(Duration::from_millis(300));
    (uas, port)
}

fn assert_ok(what: &str, out: &SippOutcome) {
    assert!(out.success(), "{what} failed\n{}", out.report());
}

/// The Authorization header of the REGISTER with CSeq `cseq` in the registrar's trace.
fn authorization(uas: &SippOutcome, cseq: u32) -> String {
    let (_, msg) = uas
        .trace()
        .into_iter()
        .find(|(rx, m)| *rx && m.contains(&format!("CSeq: {cseq} REGISTER")))
        .unwrap_or_else(|| panic!("REGISTER CSeq {cseq} in\n{}", uas.messages));
    msg.lines()
        .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        .unwrap_or_else(|| panic!("Authorization in {msg}"))
        .to_string()
}

/// Checks the digest `response` of an Authorization header against `password`.
fn check_digest(header: &str, password: &[u8]) -> Result<(), String> {
    let p = |n: &str| sipp::param(header, n).unwrap_or_default();
    let (username, realm, nonce, uri, nc, cnonce) = (
        p("username"),
        p("realm"),
        p("nonce"),
        p("uri"),
        p("nc"),
        p("cnonce"),
    );
    let qop = sipp::param(header, "qop").map(|q| Qop::parse(&q).unwrap());
    let params = DigestParams {
        username: &username,
        realm: &realm,
        nonce: &nonce,
        uri: &uri,
        qop,
        nc: Some(nc.as_str()).filter(|s| !s.is_empty()),
        cnonce: Some(cnonce.as_str()).filter(|s| !s.is_empty()),
        method: "REGISTER",
        body: b"",
    };
    params
        .verify_password(&p("response"), password)
        .map_err(|e| format!("{e}: {header}"))
}

/// reg_aka.xml end to end against the registrar, on `ip` over `t`.
fn reg_aka_against_uas(test: &str, ip: IpAddr, t: Transport, dereg_challenge: bool) {
    if ims_testkit::require_tool(test, "sipp").is_none() {
        return;
    }
    let (nonce1, xres1) = sipp::sipp_safe_challenge(TEST_K, TEST_OP, TEST_AMF, 0x20);
    let (nonce2, xres2) = sipp::sipp_safe_challenge(TEST_K, TEST_OP, TEST_AMF, 0x40);
    let dereg = if dereg_challenge {
        dereg_challenged(&aka_challenge(&nonce2))
    } else {
        dereg_at_once()
    };
    let (uas, port) = start_uas(
        uas_text(&aka_challenge(&nonce1), "200 OK", &dereg),
        ip,
        t,
        &[],
    );
    let remote = SocketAddr::new(ip, port);
    let ue = Ue {
        pcscf: remote.to_string(),
        hold: Duration::from_millis(50),
        ..Ue::default()
    };
    let out = Sipp::ue(Scenario::RegAka, &ue)
        .remote(remote)
        .local_ip(ip)
        .transport(t)
        .run();
    let uas = uas.wait();
    assert_ok("UE", &out);
    assert_ok("registrar", &uas);
    // SIPp's digest uri is sip:<remote ip>:<port>, not the Request-URI, and for IPv6 without
    // brackets (`sip:::1:5060`, not a valid URI): a core must take `uri` as an opaque string.
    assert_eq!(
        sipp::param(&authorization(&uas, 2), "uri").unwrap(),
        format!("sip:{ip}:{port}")
    );
    let expected: &[u16] = if dereg_challenge {
        &[401, 200, 401, 200]
    } else {
        &[401, 200, 200]
    };
    assert_eq!(out.received_statuses(), expected, "{}", out.report());
    assert!(matches!(
        out.aka_verdict(TEST_K, TEST_OP),
        AkaVerdict::Clean { .. }
    ));
    let mut nonces = out.nonces();
    nonces.dedup();
    assert_eq!(nonces[0], nonce1);
    // The UE's responses are right: RES (== XRES) is the digest password.
    check_digest(&authorization(&uas, 2), &xres1).unwrap();
    if dereg_challenge {
        assert_eq!(nonces[1], nonce2);
        check_digest(&authorization(&uas, 4), &xres2).unwrap();
    }
    // The initial REGISTER carries the empty-response Authorization (protocol-facts §3).
    let first = authorization(&uas, 1);
    assert!(
        first.contains("username=\"alice.private@hims.net\""),
        "{first}"
    );
    assert!(first.contains("response=\"\""), "{first}");
    assert!(uas.messages.contains("Supported: path"));
    assert!(uas.messages.contains(&format!("Route: <sip:{remote};lr>")));
}

#[test]
fn reg_aka_udp_v4() {
    reg_aka_against_uas(
        "reg_aka_udp_v4",
        "127.0.0.1".parse().unwrap(),
        Transport::Udp,
        true,
    );
}

#[test]
fn reg_aka_tcp_v4() {
    reg_aka_against_uas(
        "reg_aka_tcp_v4",
        "127.0.0.1".parse().unwrap(),
        Transport::Tcp,
        true,
    );
}

#[test]
fn reg_aka_udp_v6() {
    reg_aka_against_uas(
        "reg_aka_udp_v6",
        "::1".parse().unwrap(),
        Transport::Udp,
        true,
    );
}

#[test]
fn reg_aka_tcp_v6() {
    reg_aka_against_uas(
        "reg_aka_tcp_v6",
        "::1".parse().unwrap(),
        Transport::Tcp,
        true,
    );
}

/// A core that accepts the deregistration without a new challenge.
#[test]
fn reg_aka_dereg_without_challenge() {
    reg_aka_against_uas(
        "reg_aka_dereg_without_challenge",
        "127.0.0.1".parse().unwrap(),
        Transport::Udp,
        false,
    );
}

#[test]
fn reg_aka_wrong_res_expects_403() {
    if ims_testkit::require_tool("reg_aka_wrong_res_expects_403", "sipp").is_none() {
        return;
    }
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let (nonce, xres) = sipp::sipp_safe_challenge(TEST_K, TEST_OP, TEST_AMF, 0x20);
    let (uas, port) = start_uas(
        uas_text(&aka_challenge(&nonce), "403 Forbidden", ""),
        ip,
        Transport::Udp,
        &[],
    );
    let ue = Ue::default();
    let out = Sipp::ue(Scenario::RegAkaWrongRes, &ue)
        .remote(SocketAddr::new(ip, port))
        .run();
    let uas = uas.wait();
    assert_ok("UE", &out);
    assert_ok("registrar", &uas);
    assert_eq!(out.received_statuses(), [401, 403]);
    let auth = authorization(&uas, 2);
    assert_eq!(sipp::param(&auth, "nonce").unwrap(), nonce, "nonce copied");
    assert!(check_digest(&auth, &xres).is_err(), "the response is wrong");
}

#[test]
fn reg_md5_udp_v4() {
    if ims_testkit::require_tool("reg_md5_udp_v4", "sipp").is_none() {
        return;
    }
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let (uas, port) = start_uas(
        uas_text(
            &md5_challenge("8d3c0ab1f2e4"),
            "200 OK",
            &dereg_challenged(&md5_challenge("77aa90c1d3")),
        ),
        ip,
        Transport::Udp,
        &[],
    );
    let ue = Ue::default();
    let out = Sipp::ue(Scenario::RegMd5, &ue)
        .remote(SocketAddr::new(ip, port))
        .run();
    let uas = uas.wait();
    assert_ok("UE", &out);
    assert_ok("registrar", &uas);
    assert_eq!(out.received_statuses(), [401, 200, 401, 200]);
    check_digest(&authorization(&uas, 2), ue.password.as_bytes()).unwrap();
    check_digest(&authorization(&uas, 4), ue.password.as_bytes()).unwrap();
}

/// SIPp's RES bug, reproduced on purpose: with a RAND whose RES has a 0x00 byte SIPp's
/// response is wrong, and `aka_verdict` says so from the UE's trace alone.
#[test]
fn sipp_res_bug_is_told_apart() {
    if ims_testkit::require_tool("sipp_res_bug_is_told_apart", "sipp").is_none() {
        return;
    }
    // Find a RAND whose RES (test keys) contains 0x00 (about 1 in 32).
    let (nonce, xres) = (1u16..)
        .map(|i| {
            let hex = format!("{i:04x}{}", "00".repeat(14));
            sipp::challenge_for_rand(TEST_K, TEST_OP, TEST_AMF, 0x20, &hex)
        })
        .find(|(_, xres)| xres.contains(&0))
        .unwrap();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    // The registrar answers the (wrong) response with 403, as a correct core does.
    let (uas, port) = start_uas(
        uas_text(&aka_challenge(&nonce), "403 Forbidden", ""),
        ip,
        Transport::Udp,
        &[],
    );
    let ue = Ue {
        hold: Duration::ZERO,
        ..Ue::default()
    };
    let out = Sipp::ue(Scenario::RegAka, &ue)
        .remote(SocketAddr::new(ip, port))
        .timeout(Duration::from_secs(5))
        .run();
    let uas = uas.wait();
    assert!(
        !out.success(),
        "reg_aka expects 200, the registrar said 403"
    );
    assert_eq!(out.received_statuses(), [401, 403]);
    let verdict = out.aka_verdict(TEST_K, TEST_OP);
    assert!(verdict.is_sipp_bug(), "{verdict}");
    assert!(verdict.to_string().contains("0x00"), "{verdict}");
    let auth = authorization(&uas, 2);
    assert!(
        check_digest(&auth, &xres).is_err(),
        "SIPp's response with a 0x00 in RES is wrong (if this fails, SIPp was fixed)"
    );
}

/// The registration across a namespace topology: the UE in 'ue', the registrar in 'home',
/// routed by the router namespace, over IPv6 and UDP.
#[test]
fn reg_aka_across_namespaces() {
    let test = "reg_aka_across_namespaces";
    if !ims_testkit::require_root(test)
        || ims_testkit::require_tool(test, "sipp").is_none()
        || ims_testkit::require_tool(test, "ip").is_none()
    {
        return;
    }
    let mut topo = Topology::new("tksipp");
    topo.add_node("ue", "10.30.1.2/24", "fd00:30:1::2/64");
    topo.add_node("home", "10.30.4.2/24", "fd00:30:4::2/64");
    let (nonce, xres) = sipp::sipp_safe_challenge(TEST_K, TEST_OP, TEST_AMF, 0x20);
    for (ue_ip, home_ip, t) in [
        ("fd00:30:1::2", "fd00:30:4::2", Transport::Udp),
        ("10.30.1.2", "10.30.4.2", Transport::Tcp),
    ] {
        let home_ip: IpAddr = home_ip.parse().unwrap();
        let uas = Sipp::new(
            "uas_register",
            uas_text(&aka_challenge(&nonce), "200 OK", &dereg_at_once()),
        )
        .local_ip(home_ip)
        .local_port(5060)
        .transport(t)
        .prefix(&topo.exec_prefix("home"))
        .spawn();
        std::thread::sleep(Duration::from_millis(300));
        let remote = SocketAddr::new(home_ip, 5060);
        let ue = Ue {
            pcscf: remote.to_string(),
            ..Ue::default()
        };
        let out = Sipp::ue(Scenario::RegAka, &ue)
            .remote(remote)
            .local_ip(ue_ip.parse().unwrap())
            .transport(t)
            .prefix(&topo.exec_prefix("ue"))
            .run();
        let uas = uas.wait();
        assert_ok("UE", &out);
        assert_ok("registrar", &uas);
        assert_eq!(out.received_statuses(), [401, 200, 200]);
        check_digest(&authorization(&uas, 2), &xres).unwrap();
        // The registrar saw the UE's own address: routed, not NATed.
        assert!(uas.messages.contains(&format!(
            "Via: SIP/2.0/{} ",
            if t == Transport::Udp { "UDP" } else { "TCP" }
        )));
        assert!(uas.messages.contains(ue_ip), "{}", uas.messages);
    }
}

//! IMS traffic that other Rust SIP stacks failed on (see the crate docs), and the typed views
//! the CSCFs read from a real IMS REGISTER.

use bytes::Bytes;
use ims_sip::{Contact, Frame, HeaderName as H, Host, Message, Method, Uri, frame};

const REGISTER_V6: &[u8] = include_bytes!("../data/ims_register.sip");
const REGISTER_V4: &[u8] = include_bytes!("../data/register_ipv4.sip");

fn parse(b: &[u8]) -> ims_sip::Result<Message> {
    Message::parse(Bytes::copy_from_slice(b))
}

#[test]
fn ims_register_typed_views() {
    let m = parse(REGISTER_V6).unwrap();
    m.check_request().unwrap();
    assert_eq!(m.method(), Some(Method::Register));
    let via = m.top_via().unwrap();
    assert_eq!(via.host, Host::V6("2001:db8:0:1::2".parse().unwrap()));
    assert_eq!(via.port, Some(5062));
    assert_eq!(via.rport(), Some(None));
    let route = m.name_addrs(H::Route).next().unwrap().unwrap();
    assert_eq!(route.uri.as_sip().unwrap().port, Some(5064));
    assert!(route.uri.as_sip().unwrap().lr());
    let c = m.contacts().next().unwrap().unwrap();
    let Contact::Addr(c) = c else { panic!("star") };
    assert_eq!(c.instance(), Some("urn:gsma:imei:35209900-176148-0"));
    assert_eq!(c.expires().unwrap().unwrap(), 600_000);
    let auth = m.auth(H::Authorization).next().unwrap().unwrap();
    assert_eq!(auth.algorithm(), Some("AKAv1-MD5"));
    assert_eq!(auth.response(), Some("402ab8df9f3a4d63a9f47c2f90e02938"));
    assert_eq!(auth.nc(), Some("00000001"));
    let sc = m.security(H::SecurityClient).next().unwrap().unwrap();
    assert_eq!(sc.spi_c().unwrap(), Some(2_620_331_237));
    assert_eq!(sc.port_s().unwrap(), Some(5063));
    let sv = m.security(H::SecurityVerify).next().unwrap().unwrap();
    assert_eq!(sv.q().unwrap(), Some(0.1));
    assert!(m.has_option_tag(H::Require, "sec-agree"));
    assert!(m.has_option_tag(H::Supported, "PATH"));
    let pani = m.access_network_info().unwrap().unwrap();
    assert_eq!(pani.access_type, "3GPP-E-UTRAN-FDD");
    assert_eq!(m.expires().unwrap().unwrap(), 600_000);
    assert_eq!(m.max_forwards().unwrap().unwrap(), 70);
    assert_eq!(m.to_bytes(), REGISTER_V6);
    parse(REGISTER_V4).unwrap().check_request().unwrap();
}

#[test]
fn tel_uris_and_ipv6_request_uri() {
    let raw = "INVITE tel:+4930123456789012345678 SIP/2.0\r\nVia: SIP/2.0/TCP [2001:db8::1];branch=z9hG4bKa\r\nFrom: <tel:+49301234>;tag=1\r\nTo: <tel:7042;phone-context=hims.net>\r\nCall-ID: t\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nP-Associated-URI: <sip:alice@hims.net>, <tel:+49301234>\r\nContent-Length: 0\r\n\r\n";
    let m = parse(raw.as_bytes()).unwrap();
    m.check_request().unwrap();
    assert!(matches!(m.request_uri().unwrap(), Uri::Tel(t) if t.is_global()));
    assert_eq!(
        m.to_addr().unwrap().uri.as_tel().unwrap().phone_context(),
        Some("hims.net")
    );
    let pau: Vec<_> = m
        .name_addrs(H::PAssociatedUri)
        .map(|a| a.unwrap().uri_str)
        .collect();
    assert_eq!(pau, ["sip:alice@hims.net", "tel:+49301234"]);
    let v6 = parse(b"OPTIONS sip:[2001:db8::10]:5060 SIP/2.0\r\nl: 0\r\n\r\n").unwrap();
    assert_eq!(
        v6.request_uri().unwrap().as_sip().unwrap().host,
        Host::V6("2001:db8::10".parse().unwrap())
    );
}

#[test]
fn two_registers_back_to_back_frame_as_two() {
    let mut stream = REGISTER_V4.to_vec();
    stream.extend_from_slice(REGISTER_V4);
    let Frame::Message(n) = frame(&stream, 65535).unwrap() else {
        panic!()
    };
    assert_eq!(n, REGISTER_V4.len());
    let first = parse(&stream[..n]).unwrap();
    let Frame::Message(n2) = frame(&stream[n..], 65535).unwrap() else {
        panic!()
    };
    assert_eq!(first, parse(&stream[n..n + n2]).unwrap());
    // As one datagram, Content-Length: 0 ends the first; the rest is dropped, not merged.
    let dg = parse(&stream).unwrap();
    assert_eq!(dg.body(), b"");
    assert_eq!(dg.to_bytes().len(), REGISTER_V4.len());
}

#[test]
fn truncated_messages_are_rejected() {
    let with_body = "MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\nhello";
    assert!(matches!(
        parse(with_body.as_bytes()),
        Err(ims_sip::Error::BadContentLength(_))
    ));
    assert_eq!(
        parse(b"REGISTER sip:a SIP/2.0\r\nVia: x\r\n"),
        Err(ims_sip::Error::Incomplete)
    );
    assert_eq!(
        frame(&REGISTER_V4[..500], 65535).unwrap(),
        Frame::Incomplete
    );
}

#[test]
fn binary_bodies_survive() {
    let body: Vec<u8> = (0..=255u8).chain(b"\r\n\r\n\0".iter().copied()).collect();
    let mut raw = format!(
        "MESSAGE sip:a@b SIP/2.0\r\nContent-Type: application/vnd.3gpp.sms\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let m = parse(&raw).unwrap();
    assert_eq!(m.body(), &body[..]);
    assert_eq!(m.to_bytes(), raw);
}

#[test]
fn reason_phrases_are_kept() {
    let raw = b"SIP/2.0 494 Security Agreement Required\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nl: 0\r\n\r\n";
    let m = parse(raw).unwrap();
    assert_eq!(m.reason().unwrap(), b"Security Agreement Required");
    assert_eq!(m.to_bytes(), &raw[..]);
    let mut edited = m.clone();
    edited.append_header("Server", "ims-core").unwrap();
    assert!(
        edited
            .to_string()
            .starts_with("SIP/2.0 494 Security Agreement Required\r\n")
    );
}

#[test]
fn bad_lines_are_errors_not_silence() {
    // rsipstack dropped every header after these; we refuse the message and say why.
    let no_colon = b"REGISTER sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nJunkLine\r\nCall-ID: x\r\n\r\n";
    assert_eq!(
        parse(no_colon),
        Err(ims_sip::Error::BadHeaderLine("no colon"))
    );
    // A non-UTF-8 byte is kept, and the headers after it are all there.
    let latin1 =
        b"REGISTER sip:a SIP/2.0\r\nUser-Agent: caf\xe9\r\nCall-ID: x\r\nl: 0\r\n\r\n".to_vec();
    let m = parse(&latin1).unwrap();
    assert_eq!(m.call_id().unwrap(), "x");
    assert!(m.header(H::UserAgent).unwrap().value_str().is_err());
    assert_eq!(m.to_bytes(), latin1);
}

#[test]
fn compact_forms_and_folded_lines() {
    let raw = "REGISTER sip:hims.net SIP/2.0\r\nv: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1\r\nf: <sip:alice@hims.net>\r\n ;tag=a\r\nt: <sip:alice@hims.net>\r\ni: c\r\nCSeq: 1\r\n\tREGISTER\r\nm: <sip:alice@10.0.0.2>\r\nk: path\r\nMax-Forwards: 70\r\nl: 0\r\n\r\n";
    let m = parse(raw.as_bytes()).unwrap();
    m.check_request().unwrap();
    assert_eq!(m.from_addr().unwrap().tag(), Some("a"));
    assert_eq!(m.cseq().unwrap().method, Method::Register);
    assert!(m.has_option_tag(H::Supported, "path"));
    assert_eq!(m.to_bytes(), raw.as_bytes());
}

#[test]
fn response_with_ck_ik_is_stripped_like_a_pcscf_does() {
    let raw = "SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP pcscf;branch=z9hG4bKp\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1\r\nWWW-Authenticate: Digest realm=\"hims.net\", nonce=\"abc=\", algorithm=AKAv1-MD5, qop=\"auth,auth-int\", ck=\"00112233445566778899aabbccddeeff\", ik=\"ffeeddccbbaa99887766554433221100\"\r\nContent-Length: 0\r\n\r\n";
    let mut m = parse(raw.as_bytes()).unwrap();
    m.pop_first_value(H::Via).unwrap();
    let h = m.header(H::WwwAuthenticate).unwrap();
    let index = h.index;
    let a = ims_sip::Auth::parse(h.value_str().unwrap()).unwrap();
    assert_eq!(a.ck(), Some("00112233445566778899aabbccddeeff"));
    let stripped = a.without(&["ck", "ik"]);
    m.replace_value_at(index, &stripped).unwrap();
    let out = m.to_string();
    assert!(!out.contains("ck="));
    assert!(out.contains("algorithm=AKAv1-MD5"));
    let again = parse(out.as_bytes()).unwrap();
    assert_eq!(again.vias().count(), 1);
}

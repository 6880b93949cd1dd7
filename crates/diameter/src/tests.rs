//! Unit tests: byte-exact encodings from protocol-facts §1–§2, a round trip of every Cx
//! command, and every error path mapped to its Result-Code.

use crate::cx::*;
use crate::dict::{self, result_code as rc};
use crate::*;

fn hx(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '|'], "")).unwrap()
}

fn body_of(buf: &[u8]) -> &[u8] {
    &buf[HEADER_LEN..]
}

fn build(f: impl FnOnce(&mut MessageBuilder<'_>)) -> Vec<u8> {
    let mut buf = Vec::new();
    let h = Header::request(300, dict::APP_CX, true, 7, 9);
    let mut b = MessageBuilder::new(&mut buf, &h);
    f(&mut b);
    b.finish().unwrap();
    buf
}

fn req_base() -> cx::RequestBase<'static> {
    cx::RequestBase {
        hop_by_hop: 0x1122_3344,
        end_to_end: 0x5566_7788,
        session_id: "icscf1.hims.net;1700000000;1",
        origin_host: "icscf1.hims.net",
        origin_realm: "hims.net",
        destination_realm: "hims.net",
        destination_host: Some("hss1.hims.net"),
        supported_features: vec![],
        extra: vec![],
    }
}

fn ans_base(result: AnswerResult) -> cx::AnswerBase<'static> {
    req_base().answer(result, "hss1.hims.net", "hims.net")
}

fn uar() -> Uar<'static> {
    Uar {
        base: req_base(),
        user_name: "alice.private@hims.net",
        public_identity: "sip:alice@hims.net",
        visited_network_identifier: b"vims.net",
        authorization_type: Some(dict::UserAuthorizationType::Registration),
        uar_flags: None,
    }
}

#[test]
fn vsai_bytes_match_facts() {
    let buf = build(|b| {
        b.group(&dict::VENDOR_SPECIFIC_APPLICATION_ID, |b| {
            b.u32(&dict::VENDOR_ID, dict::VENDOR_3GPP)
                .u32(&dict::AUTH_APPLICATION_ID, dict::APP_CX);
        });
    });
    assert_eq!(
        body_of(&buf),
        hx("00000104 40 000020 | 0000010a 40 00000c 000028af | 00000102 40 00000c 01000000")
    );
}

#[test]
fn experimental_result_bytes_match_facts() {
    let buf = build(|b| AnswerResult::experimental(2001).encode(b));
    assert_eq!(
        body_of(&buf),
        hx("00000129 40 000020 | 0000010a 40 00000c 000028af | 0000012a 40 00000c 000007d1")
    );
}

#[test]
fn public_identity_header_and_padding() {
    let buf = build(|b| {
        b.utf8(&dict::PUBLIC_IDENTITY, "sip:a@b");
    });
    // 12-byte header + 7 bytes data = length 19, padded to 20.
    assert_eq!(
        body_of(&buf),
        hx("00000259 c0 000013 000028af 7369703a614062 00")
    );
}

#[test]
fn uar_header_bytes() {
    let mut buf = Vec::new();
    let len = uar().encode(&mut buf).unwrap();
    assert_eq!(len, buf.len());
    assert_eq!(buf[0], 1);
    assert_eq!(
        u32::from_be_bytes([0, buf[1], buf[2], buf[3]]) as usize,
        len
    );
    assert_eq!(&buf[4..20], &hx("c0 00012c 01000000 11223344 55667788")[..]);
    // Session-Id comes first.
    assert_eq!(&buf[20..25], &hx("00000107 40")[..]);
}

#[test]
fn answer_flags_and_error_bit() {
    let mut buf = Vec::new();
    Rta {
        base: ans_base(AnswerResult::SUCCESS),
    }
    .encode(&mut buf)
    .unwrap();
    assert_eq!(buf[4], 0x40);
    buf.clear();
    Rta {
        base: ans_base(AnswerResult::ResultCode(rc::UNABLE_TO_DELIVER)),
    }
    .encode(&mut buf)
    .unwrap();
    assert_eq!(buf[4], 0x60);
}

#[test]
fn base_types_round_trip() {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::time::{Duration, UNIX_EPOCH};
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let t2 = UNIX_EPOCH + Duration::from_secs(2_200_000_000); // after the 2036 wrap
    let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    let buf = build(|b| {
        b.address(
            &dict::HOST_IP_ADDRESS,
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        )
        .address(&dict::HOST_IP_ADDRESS, IpAddr::V6(v6))
        .time(&dict::EVENT_TIMESTAMP, t)
        .time(&dict::EVENT_TIMESTAMP, t2)
        .i32(&dict::DISCONNECT_CAUSE, -5)
        .i64(&dict::FRAMED_INTERFACE_ID, -7)
        .u64(&dict::FRAMED_INTERFACE_ID, u64::MAX)
        .f32(&dict::OPTIONAL_CAPABILITY, 1.5)
        .f64(&dict::OPTIONAL_CAPABILITY, -2.25)
        .utf8(&dict::REDIRECT_HOST, "aaa://hss1.hims.net:3868");
    });
    assert_eq!(
        &body_of(&buf)[..16],
        &hx("00000101 40 00000e 0001 7f000001 0000")[..]
    );
    let m = Message::parse(&buf).unwrap();
    let a: Vec<Avp<'_>> = m.avps().map(Result::unwrap).collect();
    assert_eq!(
        a[0].as_ip().unwrap(),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))
    );
    assert_eq!(a[1].as_address().unwrap(), Address::V6(v6));
    assert_eq!(a[2].as_time().unwrap(), t);
    assert_eq!(a[3].as_time().unwrap(), t2);
    assert_eq!(a[4].as_i32().unwrap(), -5);
    assert_eq!(a[5].as_i64().unwrap(), -7);
    assert_eq!(a[6].as_u64().unwrap(), u64::MAX);
    assert_eq!(a[7].as_f32().unwrap(), 1.5);
    assert_eq!(a[8].as_f64().unwrap(), -2.25);
    assert_eq!(a[9].as_uri().unwrap(), "aaa://hss1.hims.net:3868");
    assert_eq!(a.len(), 10);
}

#[test]
fn bytesmut_and_vec_encode_identically() {
    let mut v = Vec::new();
    let mut bm = bytes::BytesMut::new();
    uar().encode(&mut v).unwrap();
    uar().encode(&mut bm).unwrap();
    assert_eq!(&v[..], &bm[..]);
}

#[test]
fn buffer_reuse_appends_messages() {
    let mut buf = Vec::new();
    let l1 = uar().encode(&mut buf).unwrap();
    let l2 = uar().encode(&mut buf).unwrap();
    assert_eq!(buf.len(), l1 + l2);
    assert_eq!(frame(&buf, DEFAULT_MAX_MESSAGE_LEN).unwrap(), Some(l1));
    assert_eq!(
        Uar::decode(&Message::parse(&buf[l1..]).unwrap()).unwrap(),
        uar()
    );
}

fn aka_item() -> SipAuthDataItem<'static> {
    SipAuthDataItem {
        item_number: Some(1),
        authentication_scheme: Some("Digest-AKAv1-MD5"),
        authenticate: Some(&[0xAB; 32]),
        authorization: Some(&[0x5A; 8]),
        confidentiality_key: Some(&[1; 16]),
        integrity_key: Some(&[2; 16]),
        ..Default::default()
    }
}

/// One of every Cx command, as in the tshark test.
pub(crate) fn all_commands() -> Vec<CxMessage<'static>> {
    let caps = ServerCapabilities {
        mandatory: vec![1, 2],
        optional: vec![3],
        server_names: vec!["sip:scscf1.hims.net:6060"],
    };
    let mut rtr_base = req_base();
    rtr_base.supported_features.push(cx::SupportedFeatures {
        vendor_id: dict::VENDOR_3GPP,
        feature_list_id: 1,
        feature_list: 1,
    });
    let mut uaa_base = ans_base(AnswerResult::experimental(2001));
    uaa_base.error_message = Some("ok");
    let mut ppa_base = ans_base(AnswerResult::ResultCode(rc::MISSING_AVP));
    ppa_base.failed_avp = Some(FailedAvp::missing(&dict::AUTH_SESSION_STATE));
    vec![
        CxMessage::Uar(uar()),
        CxMessage::Uaa(Uaa {
            base: uaa_base,
            server_name: Some("sip:scscf1.hims.net:6060"),
            server_capabilities: Some(caps.clone()),
        }),
        CxMessage::Mar(Mar {
            base: req_base(),
            user_name: "alice.private@hims.net",
            public_identity: "sip:alice@hims.net",
            server_name: "sip:scscf1.hims.net:6060",
            number_auth_items: 1,
            auth_data_item: SipAuthDataItem {
                authentication_scheme: Some("Digest-AKAv1-MD5"),
                authorization: Some(&[7; 30]),
                ..Default::default()
            },
        }),
        CxMessage::Maa(Maa {
            base: ans_base(AnswerResult::SUCCESS),
            user_name: Some("alice.private@hims.net"),
            public_identity: Some("sip:alice@hims.net"),
            number_auth_items: Some(2),
            auth_data_items: vec![
                aka_item(),
                SipAuthDataItem {
                    item_number: Some(2),
                    authentication_scheme: Some("SIP Digest"),
                    digest: Some(SipDigestAuthenticate {
                        realm: "hims.net",
                        algorithm: Some("MD5"),
                        qop: "auth",
                        ha1: "da00069eb0de6587da7e09ef503c29db",
                        extra: vec![],
                    }),
                    ..Default::default()
                },
            ],
        }),
        CxMessage::Sar(Sar {
            base: req_base(),
            user_name: Some("alice.private@hims.net"),
            public_identities: vec!["sip:alice@hims.net", "tel:+15550001"],
            server_name: "sip:scscf1.hims.net:6060",
            assignment_type: dict::ServerAssignmentType::Registration,
            user_data_already_available: dict::UserDataAlreadyAvailable::UserDataNotAvailable,
        }),
        CxMessage::Saa(Saa {
            base: ans_base(AnswerResult::SUCCESS),
            user_name: Some("alice.private@hims.net"),
            user_data: Some(b"<?xml version=\"1.0\"?><IMSSubscription/>"),
            server_name: None,
        }),
        CxMessage::Lir(Lir {
            base: req_base(),
            public_identity: "sip:bob@hims.net",
            originating_request: Some(dict::OriginatingRequest::Originating),
            authorization_type: None,
        }),
        CxMessage::Lia(Lia {
            base: ans_base(AnswerResult::experimental(
                dict::experimental_result_code::UNREGISTERED_SERVICE,
            )),
            server_name: None,
            server_capabilities: Some(caps),
        }),
        CxMessage::Rtr(Rtr {
            base: rtr_base,
            user_name: "alice.private@hims.net",
            public_identities: vec!["sip:alice@hims.net"],
            deregistration_reason: DeregistrationReason {
                reason_code: dict::ReasonCode::PermanentTermination,
                reason_info: Some("bye"),
            },
        }),
        CxMessage::Rta(Rta {
            base: ans_base(AnswerResult::SUCCESS),
        }),
        CxMessage::Ppr(Ppr {
            base: req_base(),
            user_name: "alice.private@hims.net",
            user_data: Some(b"<IMSSubscription/>"),
            auth_data_item: None,
        }),
        CxMessage::Ppa(Ppa { base: ppa_base }),
    ]
}

#[test]
fn every_command_round_trips() {
    for cmd in all_commands() {
        let mut buf = Vec::new();
        let len = cmd.encode(&mut buf).unwrap();
        let msg = Message::parse(&buf[..len]).unwrap();
        msg.validate().unwrap();
        let back = CxMessage::decode(&msg).unwrap();
        assert_eq!(back, cmd);
        // and re-encoding is byte-identical
        let mut again = Vec::new();
        back.encode(&mut again).unwrap();
        assert_eq!(again, buf);
    }
}

// ---- error paths ----

#[test]
fn framing_errors() {
    let mut buf = Vec::new();
    let len = uar().encode(&mut buf).unwrap();
    assert_eq!(frame(&buf[..0], 4096), Ok(None));
    assert_eq!(frame(&buf[..3], 4096), Ok(None));
    assert_eq!(frame(&buf[..len - 1], 4096), Ok(None));
    assert_eq!(frame(&buf, 4096), Ok(Some(len)));
    let e = frame(&buf, 64).unwrap_err();
    assert_eq!(e.result_code(), rc::INVALID_MESSAGE_LENGTH);
    assert!(e.is_connection_fatal());
    let e = frame(&[2, 0, 0, 20], 4096).unwrap_err();
    assert_eq!(e.result_code(), rc::UNSUPPORTED_VERSION);
    assert!(e.is_connection_fatal());
    for bad_len in [0u8, 2, 19, 22] {
        let e = frame(&[1, 0, 0, bad_len], 4096).unwrap_err();
        assert_eq!(e.result_code(), rc::INVALID_MESSAGE_LENGTH, "len {bad_len}");
        assert!(e.is_connection_fatal());
    }
}

#[test]
fn header_bit_errors() {
    let mut buf = Vec::new();
    uar().encode(&mut buf).unwrap();
    for bad in [0xA0u8, 0xC1, 0x48] {
        let mut b = buf.clone();
        b[4] = bad;
        let e = Message::parse(&b).unwrap_err();
        assert_eq!(e.result_code(), rc::INVALID_HDR_BITS, "flags {bad:#x}");
        assert!(!e.is_connection_fatal());
        assert!(e.is_protocol_error());
    }
    // declared length disagrees with the bytes
    let e = Message::parse(&buf[..buf.len() - 4]).unwrap_err();
    assert_eq!(e.result_code(), rc::INVALID_MESSAGE_LENGTH);
    let mut b = buf.clone();
    b[0] = 0;
    assert_eq!(
        Message::parse(&b).unwrap_err().result_code(),
        rc::UNSUPPORTED_VERSION
    );
}

#[test]
fn avp_length_errors_carry_failed_avp() {
    // AVP length 4 (< 8)
    let mut m = build(|b| {
        b.u32(&dict::ORIGIN_STATE_ID, 1);
    });
    m[20 + 7] = 4;
    let e = Message::parse(&m)
        .unwrap()
        .avps()
        .next()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.result_code(), rc::INVALID_AVP_LENGTH);
    assert_eq!(e.failed_avp().unwrap().code, 278);
    // AVP length past the end of the message
    m[20 + 7] = 40;
    let e = Message::parse(&m).unwrap().validate().unwrap_err();
    assert_eq!(e.result_code(), rc::INVALID_AVP_LENGTH);
    assert_eq!(e.failed_avp().unwrap().code, 278);
    // Unsigned32 with 5 data bytes (length 13): framing fine, typed read fails with 5014
    let m = build(|b| {
        b.octets(&dict::ORIGIN_STATE_ID, &[0, 0, 0, 1, 2]);
    });
    let a = Message::parse(&m).unwrap().avps().next().unwrap().unwrap();
    let e = a.as_u32().unwrap_err();
    assert_eq!(e.result_code(), rc::INVALID_AVP_LENGTH);
    assert_eq!(e.failed_avp().unwrap().data, vec![0, 0, 0, 1, 2]);
    // a vendor AVP cut inside its Vendor-Id
    let e = Avp::parse(&hx("00000259 c0 00000c 0000")).unwrap_err();
    assert_eq!(e.result_code(), rc::INVALID_AVP_LENGTH);
    // a grouped AVP whose child overruns the group
    let mut m = build(|b| {
        b.group(&dict::VENDOR_SPECIFIC_APPLICATION_ID, |b| {
            b.u32(&dict::VENDOR_ID, 10415);
        });
    });
    m[20 + 8 + 7] = 16;
    let e = Message::parse(&m).unwrap().validate().unwrap_err();
    assert_eq!(e.result_code(), rc::INVALID_AVP_LENGTH);
    assert_eq!(e.failed_avp().unwrap().code, 266);
}

#[test]
fn avp_value_errors() {
    let m = build(|b| {
        b.octets(&dict::USER_NAME, &[0xff, 0xfe])
            .octets(&dict::HOST_IP_ADDRESS, &[0, 1, 1, 2, 3])
            .octets(&dict::ORIGIN_HOST, b"")
            .i32(&dict::USER_AUTHORIZATION_TYPE, 99);
    });
    let msg = Message::parse(&m).unwrap();
    let a: Vec<_> = msg.avps().map(Result::unwrap).collect();
    assert_eq!(
        a[0].as_utf8().unwrap_err().result_code(),
        rc::INVALID_AVP_VALUE
    );
    assert_eq!(
        a[1].as_address().unwrap_err().result_code(),
        rc::INVALID_AVP_VALUE
    );
    assert_eq!(
        a[2].as_identity().unwrap_err().result_code(),
        rc::INVALID_AVP_VALUE
    );
    // an unknown enumerated value inside a typed decode
    let mut u = uar();
    u.authorization_type = None;
    let mut buf = Vec::new();
    u.base.extra = vec![a[3]];
    // extra is re-encoded as-is, so the UAR now carries User-Authorization-Type = 99
    u.encode(&mut buf).unwrap();
    let e = Uar::decode(&Message::parse(&buf).unwrap()).unwrap_err();
    assert_eq!(e.result_code(), rc::INVALID_AVP_VALUE);
    assert_eq!(e.failed_avp().unwrap().code, 623);
}

/// Encodes a UAR, then rewrites it without the AVPs `drop` matches.
fn uar_without(drop: &dict::AvpDef) -> Vec<u8> {
    let mut buf = Vec::new();
    uar().encode(&mut buf).unwrap();
    let msg = Message::parse(&buf).unwrap();
    let mut out = Vec::new();
    let mut b = MessageBuilder::new(&mut out, msg.header());
    for a in msg.avps() {
        let a = a.unwrap();
        if !a.is(drop) {
            b.avp(&a);
        }
    }
    b.finish().unwrap();
    out
}

#[test]
fn missing_avps_name_the_missing_one() {
    for def in [
        &dict::SESSION_ID,
        &dict::VENDOR_SPECIFIC_APPLICATION_ID,
        &dict::AUTH_SESSION_STATE,
        &dict::ORIGIN_HOST,
        &dict::ORIGIN_REALM,
        &dict::DESTINATION_REALM,
        &dict::USER_NAME,
        &dict::PUBLIC_IDENTITY,
        &dict::VISITED_NETWORK_IDENTIFIER,
    ] {
        let buf = uar_without(def);
        let e = Uar::decode(&Message::parse(&buf).unwrap()).unwrap_err();
        assert_eq!(e.result_code(), rc::MISSING_AVP, "{}", def.name);
        let f = e.failed_avp().unwrap();
        assert_eq!(
            (f.code, f.vendor_id),
            (def.code, def.vendor()),
            "{}",
            def.name
        );
        assert!(f.data.iter().all(|&b| b == 0));
    }
    // optional ones may go
    let buf = uar_without(&dict::DESTINATION_HOST);
    assert!(Uar::decode(&Message::parse(&buf).unwrap()).is_ok());
    // RTR needs Destination-Host
    let CxMessage::Rtr(mut rtr) = all_commands().swap_remove(8) else {
        panic!("index 8 is the RTR");
    };
    rtr.base.destination_host = None;
    let mut buf = Vec::new();
    rtr.encode(&mut buf).unwrap();
    let e = Rtr::decode(&Message::parse(&buf).unwrap()).unwrap_err();
    assert_eq!(e.result_code(), rc::MISSING_AVP);
    assert_eq!(e.failed_avp().unwrap().code, dict::DESTINATION_HOST.code);
    // an answer without any result
    let mut buf = Vec::new();
    let h = Header::request(300, dict::APP_CX, true, 1, 1).answer();
    let mut b = MessageBuilder::new(&mut buf, &h);
    b.utf8(&dict::SESSION_ID, "s")
        .utf8(&dict::ORIGIN_HOST, "h")
        .utf8(&dict::ORIGIN_REALM, "r");
    b.finish().unwrap();
    let e = Uaa::decode(&Message::parse(&buf).unwrap()).unwrap_err();
    assert_eq!(e.result_code(), rc::MISSING_AVP);
    assert_eq!(e.failed_avp().unwrap().code, dict::RESULT_CODE.code);
}

fn uar_with_extra(extra: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    uar().encode(&mut buf).unwrap();
    buf.extend_from_slice(extra);
    let l = (buf.len() as u32).to_be_bytes();
    buf[1..4].copy_from_slice(&l[1..]);
    buf
}

#[test]
fn too_many_bits_unsupported_and_contradicting() {
    // a second Public-Identity: 5009, Failed-AVP is the extra one
    let buf = uar_with_extra(&hx("00000259 c0 000010 000028af 73697031"));
    let e = Uar::decode(&Message::parse(&buf).unwrap()).unwrap_err();
    assert_eq!(e.result_code(), rc::AVP_OCCURS_TOO_MANY_TIMES);
    assert_eq!(e.failed_avp().unwrap().data, b"sip1");
    // reserved AVP flag bit: 3009
    let buf = uar_with_extra(&hx("00000116 60 00000c 00000001"));
    let e = Uar::decode(&Message::parse(&buf).unwrap()).unwrap_err();
    assert_eq!(e.result_code(), rc::INVALID_AVP_BITS);
    assert_eq!(e.failed_avp().unwrap().code, 278);
    // unknown AVP with M: 5001
    let buf = uar_with_extra(&hx("0000fff0 40 00000c 00000001"));
    let e = Uar::decode(&Message::parse(&buf).unwrap()).unwrap_err();
    assert_eq!(e.result_code(), rc::AVP_UNSUPPORTED);
    assert_eq!(e.failed_avp().unwrap().code, 0xfff0);
    // unknown vendor AVP without M: kept and re-encoded byte for byte
    let buf = uar_with_extra(&hx("0000fff0 80 00000e 00001234 abcd 0000"));
    let u = Uar::decode(&Message::parse(&buf).unwrap()).unwrap();
    assert_eq!(u.base.extra.len(), 1);
    assert_eq!(u.base.extra[0].vendor_id(), Some(0x1234));
    let mut again = Vec::new();
    u.encode(&mut again).unwrap();
    assert_eq!(again, buf);
    // Result-Code and Experimental-Result together: 5007
    let mut buf = Vec::new();
    Rta {
        base: ans_base(AnswerResult::experimental(2001)),
    }
    .encode(&mut buf)
    .unwrap();
    buf.extend_from_slice(&hx("0000010c 40 00000c 000007d1"));
    let l = (buf.len() as u32).to_be_bytes();
    buf[1..4].copy_from_slice(&l[1..]);
    let e = Rta::decode(&Message::parse(&buf).unwrap()).unwrap_err();
    assert_eq!(e.result_code(), rc::CONTRADICTING_AVPS);
}

#[test]
fn wrong_command_or_application() {
    let mut buf = Vec::new();
    uar().encode(&mut buf).unwrap();
    let msg = Message::parse(&buf).unwrap();
    let e = Mar::decode(&msg).unwrap_err();
    assert_eq!(e.result_code(), rc::COMMAND_UNSUPPORTED);
    let e = Uaa::decode(&msg).unwrap_err();
    assert_eq!(e.result_code(), rc::COMMAND_UNSUPPORTED);
    buf[11] = 5; // application id 16777221
    let e = Uar::decode(&Message::parse(&buf).unwrap()).unwrap_err();
    assert_eq!(e.result_code(), rc::APPLICATION_UNSUPPORTED);
}

#[test]
fn encode_too_large_is_an_error() {
    let big = vec![0u8; MAX_24];
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, &Header::request(300, 0, false, 0, 0));
    b.octets(&dict::USER_DATA, &big);
    let e = b.finish().unwrap_err();
    assert_eq!(e, Error::TooLarge);
    assert_eq!(e.result_code(), rc::UNABLE_TO_COMPLY);
}
const MAX_24: usize = 0x00FF_FFFF;

#[test]
fn result_namespaces_are_kept_apart() {
    let base = AnswerResult::ResultCode(5001);
    let exp = AnswerResult::experimental(5001);
    assert_eq!(base.name(), Some("DIAMETER_AVP_UNSUPPORTED"));
    assert_eq!(exp.name(), Some("DIAMETER_ERROR_USER_UNKNOWN"));
    assert_eq!(
        AnswerResult::experimental(5002).name(),
        Some("DIAMETER_ERROR_IDENTITIES_DONT_MATCH")
    );
    assert_eq!(
        AnswerResult::ResultCode(5002).name(),
        Some("DIAMETER_UNKNOWN_SESSION_ID")
    );
    assert!(!exp.is_success());
    assert!(AnswerResult::experimental(2002).is_success());
    // and decoding keeps them apart too
    for r in [base, exp] {
        let mut buf = Vec::new();
        Rta { base: ans_base(r) }.encode(&mut buf).unwrap();
        let back = Rta::decode(&Message::parse(&buf).unwrap()).unwrap();
        assert_eq!(back.base.result, r);
    }
}

#[test]
fn dictionary_lookup_and_flags() {
    for d in dict::ALL {
        assert_eq!(dict::lookup(d.code, d.vendor_id), Some(d), "{}", d.name);
        assert_eq!(d.flags & avp::flags::RESERVED, 0);
        assert_eq!(d.vendor_id != 0, d.flags & avp::flags::V != 0, "{}", d.name);
    }
    assert_eq!(dict::lookup(601, 0), None);
    assert!(!dict::PRODUCT_NAME.mandatory());
    assert!(!dict::SUPPORTED_FEATURES.mandatory());
    assert!(dict::PUBLIC_IDENTITY.mandatory());
    assert_eq!(dict::command::name(300), Some("User-Authorization"));
    for e in dict::ServerAssignmentType::ALL {
        assert_eq!(
            dict::ServerAssignmentType::from_i32(i32::from(*e)),
            Some(*e)
        );
    }
    assert_eq!(dict::ServerAssignmentType::ALL.len(), 15);
}

#[test]
fn session_ids() {
    let g = SessionIdGenerator::new("scscf1.hims.net", 7);
    assert_eq!(g.next_id(), "scscf1.hims.net;7;0");
    assert_eq!(g.next_with("x"), "scscf1.hims.net;7;1;x");
    assert_eq!(
        session::parse_session_id("scscf1.hims.net;7;1;x"),
        Some(("scscf1.hims.net", 7, 1, Some("x")))
    );
    // the high half comes from the seed
    let g2 = SessionIdGenerator::new("h", 1);
    assert_eq!(g2.next_id(), "h;1;0");
}

#[test]
fn failed_avp_is_encoded_as_received() {
    let f = FailedAvp::missing(&dict::PUBLIC_IDENTITY);
    let buf = build(|b| {
        b.failed_avp(&f);
    });
    assert_eq!(
        body_of(&buf),
        hx("00000117 40 000014 00000259 c0 00000c 000028af")
    );
}

/// Fuzz regression (diameter_cx): a Failed-AVP whose inner AVP came with reserved flag bits
/// decoded with those bits, which no encoding carries, so decode(encode(x)) != x.
#[test]
fn failed_avp_keeps_only_the_flags_an_answer_can_carry() {
    let mut base = ans_base(AnswerResult::SUCCESS);
    base.failed_avp = Some(FailedAvp {
        code: 0x4909_0061,
        flags: 0,
        vendor_id: None,
        data: vec![],
    });
    let mut buf = Vec::new();
    Ppa { base }.encode(&mut buf).unwrap();
    let at = buf
        .windows(4)
        .position(|w| w == 0x4909_0061u32.to_be_bytes())
        .unwrap();
    buf[at + 4] = 0x15; // P and reserved bits on the reported AVP
    let msg = Message::parse(&buf).unwrap();
    let ppa = Ppa::decode(&msg).unwrap();
    assert_eq!(ppa.base.failed_avp.as_ref().unwrap().flags, 0);
    let mut again = Vec::new();
    ppa.encode(&mut again).unwrap();
    assert_eq!(Ppa::decode(&Message::parse(&again).unwrap()).unwrap(), ppa);
}

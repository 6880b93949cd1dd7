//! Sample messages shared by the integration tests: one of every Cx command (with an AKA
//! item, a SIP Digest item, User-Data, Server-Capabilities, Supported-Features, Failed-AVP)
//! and the base peer commands built with the generic builder.

use ims_diameter::cx::*;
use ims_diameter::dict::{self, result_code as rc};
use ims_diameter::*;

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
pub fn all_commands() -> Vec<CxMessage<'static>> {
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

/// CER/CEA/DWR/DWA/DPR/DPA built with the generic builder, as (name, request?, bytes).
pub fn base_commands() -> Vec<(&'static str, Vec<u8>)> {
    use std::net::{IpAddr, Ipv4Addr};
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let mut out = Vec::new();
    let mut msg = |name: &'static str, hdr: Header, f: &dyn Fn(&mut MessageBuilder<'_>)| {
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, &hdr);
        f(&mut b);
        b.finish().unwrap();
        out.push((name, buf));
    };
    let ids = |code| Header::request(code, dict::APP_COMMON, false, 0x10, 0x20);
    let cer = ids(dict::command::CAPABILITIES_EXCHANGE);
    let identity = |b: &mut MessageBuilder<'_>| {
        b.utf8(&dict::ORIGIN_HOST, "icscf1.hims.net")
            .utf8(&dict::ORIGIN_REALM, "hims.net");
    };
    let caps = move |b: &mut MessageBuilder<'_>| {
        b.address(&dict::HOST_IP_ADDRESS, ip)
            .u32(&dict::VENDOR_ID, 0)
            .utf8(&dict::PRODUCT_NAME, "ims-rs")
            .u32(&dict::ORIGIN_STATE_ID, 1)
            .u32(&dict::SUPPORTED_VENDOR_ID, dict::VENDOR_3GPP)
            .group(&dict::VENDOR_SPECIFIC_APPLICATION_ID, |b| {
                b.u32(&dict::VENDOR_ID, dict::VENDOR_3GPP)
                    .u32(&dict::AUTH_APPLICATION_ID, dict::APP_CX);
            })
            .u32(&dict::FIRMWARE_REVISION, 1);
    };
    msg("CER", cer, &|b| {
        identity(b);
        caps(b);
    });
    msg("CEA", cer.answer(), &|b| {
        b.u32(&dict::RESULT_CODE, rc::SUCCESS);
        identity(b);
        caps(b);
    });
    let dwr = ids(dict::command::DEVICE_WATCHDOG);
    msg("DWR", dwr, &|b| {
        identity(b);
        b.u32(&dict::ORIGIN_STATE_ID, 1);
    });
    msg("DWA", dwr.answer(), &|b| {
        b.u32(&dict::RESULT_CODE, rc::SUCCESS);
        identity(b);
    });
    let dpr = ids(dict::command::DISCONNECT_PEER);
    msg("DPR", dpr, &|b| {
        identity(b);
        b.enumerated(
            &dict::DISCONNECT_CAUSE,
            dict::DisconnectCause::DoNotWantToTalkToYou,
        );
    });
    msg("DPA", dpr.answer(), &|b| {
        b.u32(&dict::RESULT_CODE, rc::SUCCESS);
        identity(b);
    });
    out
}

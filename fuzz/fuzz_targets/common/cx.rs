//! Shared by the Diameter targets: minimal valid Cx messages of every command (the AVPs
//! TS 29.229 requires, any of them left out on request), and the check every decoded
//! message goes through: walk the AVPs, decode with the typed Cx decoder the daemons use,
//! and, when that succeeds, re-encode: what we wrote decodes to the same value and encodes
//! to the same bytes.

use ims_diameter::builder::MessageBuilder;
use ims_diameter::cx::CxMessage;
use ims_diameter::dict::{self, AvpDef, command};
use ims_diameter::header::{Header, flags};
use ims_diameter::{AvpIter, Message};

/// Every Cx command: (code, request).
pub const COMMANDS: [(u32, bool); 12] = [
    (command::USER_AUTHORIZATION, true),
    (command::USER_AUTHORIZATION, false),
    (command::MULTIMEDIA_AUTH, true),
    (command::MULTIMEDIA_AUTH, false),
    (command::SERVER_ASSIGNMENT, true),
    (command::SERVER_ASSIGNMENT, false),
    (command::LOCATION_INFO, true),
    (command::LOCATION_INFO, false),
    (command::REGISTRATION_TERMINATION, true),
    (command::REGISTRATION_TERMINATION, false),
    (command::PUSH_PROFILE, true),
    (command::PUSH_PROFILE, false),
];

/// A minimal valid message of `code`/`request` without the AVPs whose codes are in `skip`;
/// `tail` appends more AVPs before it is finished.
pub fn sample(
    code: u32,
    request: bool,
    skip: &[u32],
    tail: impl FnOnce(&mut MessageBuilder<'_, Vec<u8>>),
) -> Vec<u8> {
    let hdr = Header {
        length: 0,
        flags: if request {
            flags::R | flags::P
        } else {
            flags::P
        },
        command_code: code,
        application_id: dict::APP_CX,
        hop_by_hop: 7,
        end_to_end: 9,
    };
    let mut out = Vec::new();
    let mut b = MessageBuilder::new(&mut out, &hdr);
    let keep = |d: &AvpDef| !skip.contains(&d.code);
    let utf8 = |b: &mut MessageBuilder<'_, Vec<u8>>, d: &AvpDef, v: &str| {
        if keep(d) {
            b.utf8(d, v);
        }
    };
    utf8(&mut b, &dict::SESSION_ID, "scscf1.hims.net;1;fz");
    if keep(&dict::VENDOR_SPECIFIC_APPLICATION_ID) {
        b.group(&dict::VENDOR_SPECIFIC_APPLICATION_ID, |b| {
            b.u32(&dict::VENDOR_ID, dict::VENDOR_3GPP)
                .u32(&dict::AUTH_APPLICATION_ID, dict::APP_CX);
        });
    }
    if !request && keep(&dict::RESULT_CODE) {
        b.u32(&dict::RESULT_CODE, 2001);
    }
    if keep(&dict::AUTH_SESSION_STATE) {
        b.enumerated(&dict::AUTH_SESSION_STATE, 1);
    }
    utf8(&mut b, &dict::ORIGIN_HOST, "hss1.hims.net");
    utf8(&mut b, &dict::ORIGIN_REALM, "hims.net");
    if request {
        utf8(&mut b, &dict::DESTINATION_REALM, "hims.net");
        if matches!(
            code,
            command::REGISTRATION_TERMINATION | command::PUSH_PROFILE
        ) {
            utf8(&mut b, &dict::DESTINATION_HOST, "scscf1.hims.net");
        }
        let impi = "alice@hims.net";
        let impu = "sip:alice@hims.net";
        let scscf = "sip:scscf1.hims.net:5060";
        match code {
            command::USER_AUTHORIZATION => {
                utf8(&mut b, &dict::USER_NAME, impi);
                utf8(&mut b, &dict::PUBLIC_IDENTITY, impu);
                utf8(&mut b, &dict::VISITED_NETWORK_IDENTIFIER, "vims.net");
            }
            command::MULTIMEDIA_AUTH => {
                utf8(&mut b, &dict::USER_NAME, impi);
                utf8(&mut b, &dict::PUBLIC_IDENTITY, impu);
                utf8(&mut b, &dict::SERVER_NAME, scscf);
                if keep(&dict::SIP_NUMBER_AUTH_ITEMS) {
                    b.u32(&dict::SIP_NUMBER_AUTH_ITEMS, 1);
                }
                if keep(&dict::SIP_AUTH_DATA_ITEM) {
                    b.group(&dict::SIP_AUTH_DATA_ITEM, |b| {
                        b.utf8(&dict::SIP_AUTHENTICATION_SCHEME, "Digest-AKAv1-MD5");
                    });
                }
            }
            command::SERVER_ASSIGNMENT => {
                utf8(&mut b, &dict::PUBLIC_IDENTITY, impu);
                utf8(&mut b, &dict::SERVER_NAME, scscf);
                if keep(&dict::SERVER_ASSIGNMENT_TYPE) {
                    b.enumerated(&dict::SERVER_ASSIGNMENT_TYPE, 1);
                }
                if keep(&dict::USER_DATA_ALREADY_AVAILABLE) {
                    b.enumerated(&dict::USER_DATA_ALREADY_AVAILABLE, 0);
                }
            }
            command::LOCATION_INFO => utf8(&mut b, &dict::PUBLIC_IDENTITY, impu),
            command::REGISTRATION_TERMINATION => {
                utf8(&mut b, &dict::USER_NAME, impi);
                if keep(&dict::DEREGISTRATION_REASON) {
                    b.group(&dict::DEREGISTRATION_REASON, |b| {
                        b.enumerated(&dict::REASON_CODE, 0);
                    });
                }
            }
            command::PUSH_PROFILE => utf8(&mut b, &dict::USER_NAME, impi),
            _ => {}
        }
    }
    tail(&mut b);
    // Only a message over 16 MiB fails to finish; fuzz inputs are far smaller.
    let _ = b.finish();
    out
}

/// Appends raw bytes to a finished message and fixes its length.
#[allow(dead_code, reason = "diameter_cx uses it, diameter_grouped does not")]
pub fn append_raw(msg: &mut Vec<u8>, bytes: &[u8]) {
    msg.extend_from_slice(bytes);
    let len = (msg.len() as u32).to_be_bytes();
    msg[1..4].copy_from_slice(&len[1..]);
}

fn walk(avps: AvpIter<'_>, depth: u32) {
    for a in avps {
        let Ok(a) = a else { return };
        let _ = (a.as_u32(), a.as_u64(), a.as_i32(), a.as_f32(), a.as_f64());
        let _ = (a.as_utf8(), a.as_identity(), a.as_address(), a.as_time());
        if depth < 16 {
            walk(a.grouped(), depth + 1);
        }
    }
}

/// Decodes `bytes` as the daemons do and checks the round trip; returns whether the typed
/// decode succeeded.
pub fn check(bytes: &[u8]) -> bool {
    let Ok(msg) = Message::parse(bytes) else {
        return false;
    };
    let _ = (
        msg.validate(),
        msg.session_id(),
        msg.find(&dict::RESULT_CODE),
    );
    walk(msg.avps(), 0);
    let Ok(c) = CxMessage::decode(&msg) else {
        return false;
    };
    let mut out = Vec::new();
    let len = c.encode(&mut out).expect("a decoded message encodes");
    assert_eq!(len, out.len());
    let again = Message::parse(&out).expect("our encoding parses");
    let d = CxMessage::decode(&again).expect("our encoding decodes");
    assert_eq!(d, c, "decode(encode(x)) == x");
    let mut out2 = Vec::new();
    d.encode(&mut out2).expect("re-encode");
    assert_eq!(out2, out, "encoding is stable");
    true
}

/// The samples decode (run on the empty input, which libFuzzer always tries first).
pub fn self_check() {
    for (code, request) in COMMANDS {
        let m = sample(code, request, &[], |_| {});
        assert!(check(&m), "sample {code} request={request} decodes");
    }
}

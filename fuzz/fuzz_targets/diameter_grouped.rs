//! Fuzz target for the Grouped AVPs of Cx: the first byte picks a Grouped AVP and a command
//! that carries it (SIP-Auth-Data-Item in MAR, MAA and PPR, SIP-Digest-Authenticate inside
//! an MAA's SIP-Auth-Data-Item, Server-Capabilities in UAA and LIA, Supported-Features,
//! Deregistration-Reason in RTR, Vendor-Specific-Application-Id, Experimental-Result,
//! Failed-AVP); the rest of the input is that AVP's data, in an otherwise valid message.
//! The message is decoded as the daemons do; what decodes must re-encode to the same value
//! and the same bytes.
#![no_main]

#[path = "common/cx.rs"]
mod cx;

use ims_diameter::dict::{self, AvpDef, command};
use libfuzzer_sys::fuzz_target;

/// (Grouped AVP, command, request, AVP codes the sample leaves out, nested in a
/// SIP-Auth-Data-Item).
const CASES: [(&AvpDef, u32, bool, &[u32], bool); 11] = [
    (
        &dict::SIP_AUTH_DATA_ITEM,
        command::MULTIMEDIA_AUTH,
        true,
        &[612],
        false,
    ),
    (
        &dict::SIP_AUTH_DATA_ITEM,
        command::MULTIMEDIA_AUTH,
        false,
        &[],
        false,
    ),
    (
        &dict::SIP_AUTH_DATA_ITEM,
        command::PUSH_PROFILE,
        true,
        &[],
        false,
    ),
    (
        &dict::SIP_DIGEST_AUTHENTICATE,
        command::MULTIMEDIA_AUTH,
        false,
        &[],
        true,
    ),
    (
        &dict::SERVER_CAPABILITIES,
        command::USER_AUTHORIZATION,
        false,
        &[],
        false,
    ),
    (
        &dict::SERVER_CAPABILITIES,
        command::LOCATION_INFO,
        false,
        &[],
        false,
    ),
    (
        &dict::SUPPORTED_FEATURES,
        command::SERVER_ASSIGNMENT,
        true,
        &[],
        false,
    ),
    (
        &dict::DEREGISTRATION_REASON,
        command::REGISTRATION_TERMINATION,
        true,
        &[615],
        false,
    ),
    (
        &dict::VENDOR_SPECIFIC_APPLICATION_ID,
        command::LOCATION_INFO,
        true,
        &[260],
        false,
    ),
    (
        &dict::EXPERIMENTAL_RESULT,
        command::SERVER_ASSIGNMENT,
        false,
        &[268],
        false,
    ),
    (
        &dict::FAILED_AVP,
        command::USER_AUTHORIZATION,
        false,
        &[],
        false,
    ),
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, inner)) = data.split_first() else {
        cx::self_check();
        return;
    };
    let (def, code, request, skip, nested) = CASES[usize::from(sel) % CASES.len()];
    let msg = cx::sample(code, request, skip, |b| {
        if nested {
            b.group(&dict::SIP_AUTH_DATA_ITEM, |b| {
                b.utf8(&dict::SIP_AUTHENTICATION_SCHEME, "SIP Digest");
                b.octets(def, inner);
            });
        } else {
            b.octets(def, inner);
        }
    });
    cx::check(&msg);
});

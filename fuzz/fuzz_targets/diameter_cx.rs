//! Fuzz target for the typed Cx decoders (UAR/UAA, MAR/MAA, SAR/SAA, LIR/LIA, RTR/RTA,
//! PPR/PPA) as the HSS, I-CSCF and S-CSCF use them on a message they received: the first
//! byte picks the command and whether the message starts with a valid Cx base (Session-Id,
//! Vendor-Specific-Application-Id, Auth-Session-State, Origin-*, Destination-Realm or
//! Result-Code and the command's required AVPs); the rest of the input follows as AVP
//! bytes. What decodes must re-encode to the same value and the same bytes.
#![no_main]

#[path = "common/cx.rs"]
mod cx;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        cx::self_check();
        return;
    };
    let (code, request) = cx::COMMANDS[usize::from(sel & 0x0f) % cx::COMMANDS.len()];
    let mut msg = if sel & 0x10 == 0 {
        cx::sample(code, request, &[], |_| {})
    } else {
        // Only the header: the fuzzer writes every AVP.
        cx::sample(code, request, &[0], |_| {})[..20].to_vec()
    };
    cx::append_raw(&mut msg, rest);
    cx::check(&msg);
});

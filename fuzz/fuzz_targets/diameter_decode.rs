//! Fuzz target for the Diameter codec: frame the input as a TCP stream, decode each message,
//! walk every AVP (nested Grouped ones included) with every typed accessor, try every typed
//! Cx decode, and re-encode what decodes (which must decode to the same value again).
#![no_main]

use ims_diameter::cx::{self, CxMessage};
use ims_diameter::{AvpIter, Message, dict, frame};
use libfuzzer_sys::fuzz_target;

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

fn typed(msg: &Message<'_>) {
    let _ = cx::Uar::decode(msg);
    let _ = cx::Uaa::decode(msg);
    let _ = cx::Mar::decode(msg);
    let _ = cx::Maa::decode(msg);
    let _ = cx::Sar::decode(msg);
    let _ = cx::Saa::decode(msg);
    let _ = cx::Lir::decode(msg);
    let _ = cx::Lia::decode(msg);
    let _ = cx::Rtr::decode(msg);
    let _ = cx::Rta::decode(msg);
    let _ = cx::Ppr::decode(msg);
    let _ = cx::Ppa::decode(msg);
    if let Ok(c) = CxMessage::decode(msg) {
        let mut out = Vec::new();
        let len = c.encode(&mut out).expect("re-encode");
        assert_eq!(len, out.len());
        let again = Message::parse(&out).expect("re-parse");
        assert_eq!(CxMessage::decode(&again).expect("re-decode"), c);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // Also treat the input as if its first message came with the Cx application id, so the
    // typed decoders see plenty of inputs that get past the header checks.
    while let Ok(Some(len)) = frame(rest, 1 << 16) {
        let (one, tail) = rest.split_at(len);
        rest = tail;
        let Ok(msg) = Message::parse(one) else {
            continue;
        };
        let _ = msg.validate();
        let _ = msg.session_id();
        let _ = msg.find(&dict::RESULT_CODE);
        walk(msg.avps(), 0);
        typed(&msg);
        let mut patched = one.to_vec();
        patched[8..12].copy_from_slice(&dict::APP_CX.to_be_bytes());
        if let Ok(m) = Message::parse(&patched) {
            typed(&m);
        }
    }
});

//! Fuzz target for the HSS admin API's CSV import (`POST /v1/subscribers/import`): the first
//! eight bytes are the `first_line` query parameter, the rest is the body, read by
//! `ims_hss::admin::parse_import_csv`. Invariants: every subscriber it accepts has a private
//! identity without whitespace and at least one sip:, sips: or tel: public identity.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (first_line, body) = match data.split_first_chunk::<8>() {
        Some((n, body)) => (u64::from_be_bytes(*n), body),
        None => (2, data),
    };
    let Ok(subs) = ims_hss::admin::parse_import_csv(body, first_line) else {
        return;
    };
    for s in &subs {
        assert!(!s.impi.is_empty() && !s.impi.contains(char::is_whitespace));
        assert!(!s.public_identities.is_empty());
        for p in &s.public_identities {
            let l = p.impu.to_ascii_lowercase();
            assert!(l.starts_with("sip:") || l.starts_with("sips:") || l.starts_with("tel:"));
        }
    }
});

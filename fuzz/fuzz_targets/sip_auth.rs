//! Fuzz target for Authorization / Proxy-Authorization / WWW-Authenticate values (RFC 3261,
//! RFC 2617, RFC 3310): parse the input as one value, read every parameter the CSCFs read,
//! and decode what the S-CSCF decodes from it (the AKA nonce, `auts`, `qop`). Invariants:
//! the parameters survive a rebuild (`without(&[])`), the P-CSCF's ck/ik stripping leaves a
//! value without them, `with` sets a parameter, and a decoded nonce or AUTS encodes back to
//! text that decodes to the same.
#![no_main]

use ims_aka::digest_aka::{decode_auts, encode_auts};
use ims_aka::{AkaNonce, Qop};
use ims_sip::Auth;
use libfuzzer_sys::fuzz_target;

fn params(a: &Auth<'_>) -> Vec<(String, Option<String>)> {
    a.params()
        .map(|p| (p.name.to_owned(), p.value.map(str::to_owned)))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(a) = Auth::parse(s) else {
        return;
    };
    let _ = (
        a.is_digest(),
        a.username(),
        a.realm(),
        a.uri(),
        a.response(),
    );
    let _ = (a.algorithm(), a.cnonce(), a.nc(), a.opaque());
    let _ = (a.ck(), a.ik(), a.integrity_protected());
    if let Some(q) = a.qop() {
        for t in q.split(',') {
            let _ = Qop::parse(t.trim());
        }
    }
    if let Some(n) = a.nonce()
        && let Ok(nonce) = AkaNonce::decode(n)
    {
        let text = nonce.encode();
        let again = AkaNonce::decode(&text).expect("our nonce decodes");
        assert_eq!(again.encode(), text);
    }
    if let Some(t) = a.auts()
        && let Ok(auts) = decode_auts(t)
    {
        let text = encode_auts(&auts);
        let again = decode_auts(&text).expect("our auts decodes");
        assert_eq!(again.as_bytes(), auts.as_bytes());
    }

    let rebuilt = a.without(&[]);
    let b = Auth::parse(&rebuilt).unwrap_or_else(|e| panic!("rebuilt {rebuilt:?}: {e}"));
    assert_eq!(b.scheme, a.scheme);
    assert_eq!(params(&b), params(&a), "rebuilt {rebuilt:?}");

    let stripped = a.without(&["ck", "ik"]);
    let c = Auth::parse(&stripped).unwrap_or_else(|e| panic!("stripped {stripped:?}: {e}"));
    assert_eq!((c.ck(), c.ik()), (None, None), "stripped {stripped:?}");

    let edited = a.with("integrity-protected", "no", true);
    let d = Auth::parse(&edited).unwrap_or_else(|e| panic!("edited {edited:?}: {e}"));
    assert_eq!(d.integrity_protected(), Some("no"), "edited {edited:?}");
    assert_eq!(d.username(), a.username(), "edited {edited:?}");
});

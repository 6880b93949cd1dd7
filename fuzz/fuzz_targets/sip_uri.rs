//! Fuzz target for SIP URIs (`sip:`, `sips:`, `tel:`, `urn:` and others): parse the input as
//! a URI and read every view. Invariants: what parses parses again from its own text to the
//! same value (also inside `<...>` as a name-addr), a host prints as text that parses back to
//! it, and the IMS identity of a sip:/tel: URI is itself a URI whose identity is unchanged.
#![no_main]

use ims_sip::{Host, NameAddr, SipUri, Uri};
use libfuzzer_sys::fuzz_target;

fn sip_views(u: &SipUri<'_>) {
    let _ = (u.lr(), u.transport(), u.params_str(), u.user_host());
    let _ = u.params().count();
    let hp = u.host_port_str();
    // host[:port] as written is a URI of its own with the same host and port.
    let bare = format!("sip:{hp}");
    let again = SipUri::parse(&bare).map(|b| (b.host, b.port));
    assert_eq!(again.ok(), Some((u.host, u.port)), "host_port_str {hp:?}");
    let printed = u.host.to_string();
    assert_eq!(Host::parse(&printed).ok(), Some(u.host), "host {printed:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(u) = Uri::parse(s) else {
        let _ = SipUri::parse(s);
        return;
    };
    assert_eq!(u.as_str(), s);
    assert_eq!(Uri::parse(&u.to_string()).ok(), Some(u), "round trip");
    match &u {
        Uri::Sip(sip) => {
            sip_views(sip);
            assert_eq!(SipUri::parse(s).ok().as_ref(), Some(sip));
        }
        Uri::Tel(t) => {
            let _ = (t.is_global(), t.phone_context(), t.params().count());
            let n = t.normalized();
            assert!(n.len() <= t.number.len());
        }
        Uri::Urn(x) => assert!(!x.nid.is_empty() && !x.nss.is_empty()),
        Uri::Other { scheme, .. } => assert!(!scheme.is_empty()),
    }
    if let Some(id) = u.identity() {
        let again = Uri::parse(&id).unwrap_or_else(|e| panic!("identity {id:?} of {s:?}: {e}"));
        assert_eq!(
            again.identity().as_deref(),
            Some(id.as_str()),
            "identity of {s:?}"
        );
    }
    // The same URI in angle brackets reads as the same URI (what every header holds).
    if !s.contains(['<', '>', '"']) {
        let na = format!("<{s}>");
        let a = NameAddr::parse(&na).unwrap_or_else(|e| panic!("{na:?}: {e}"));
        assert_eq!(a.uri, u);
    }
});

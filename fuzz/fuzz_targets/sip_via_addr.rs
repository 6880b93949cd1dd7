//! Fuzz target for Via and name-addr headers (From, To, Contact, Route, Path, ...): the first
//! input byte picks the header kind, the rest is one header value. Every view is read.
//! Invariants, for the edits the CSCFs make on values they received: the endpoint's
//! `received`/`rport` on a Via, the registrar's `expires` and the dialogs' `tag` on an
//! address set the parameter and leave the rest (sent-by, branch, URI) as it was, and
//! removing `expires` removes it.
#![no_main]

use ims_sip::text::{remove_param, set_param};
use ims_sip::{Contact, NameAddr, Via};
use libfuzzer_sys::fuzz_target;

fn via(s: &str) {
    let Ok(v) = Via::parse(s) else {
        return;
    };
    let _ = (
        v.branch(),
        v.received(),
        v.rport(),
        v.maddr(),
        v.is_reliable(),
    );
    let _ = (v.host.ip(), v.params().count());
    let edited = set_param(s, "received", Some("192.0.2.1"));
    let edited = set_param(&edited, "rport", Some("5070"));
    let e = Via::parse(&edited).unwrap_or_else(|err| panic!("{edited:?}: {err}"));
    assert_eq!(e.received(), Some("192.0.2.1"), "{edited:?}");
    assert_eq!(e.rport(), Some(Some(5070)), "{edited:?}");
    assert_eq!((e.host, e.port, e.transport), (v.host, v.port, v.transport));
    assert_eq!(e.branch(), v.branch(), "{edited:?}");
}

fn addr(a: &NameAddr<'_>) {
    let _ = (
        a.tag(),
        a.expires(),
        a.instance(),
        a.q(),
        a.params().count(),
    );
    let _ = (
        a.uri.as_sip().map(|u| (u.lr(), u.user_host())),
        a.uri.identity(),
    );
}

fn name_addr(s: &str, contact: bool) {
    let parsed = if contact {
        match Contact::parse(s) {
            Ok(Contact::Addr(a)) => a,
            _ => return,
        }
    } else {
        match NameAddr::parse(s) {
            Ok(a) => a,
            Err(_) => return,
        }
    };
    addr(&parsed);
    let with = set_param(s, "expires", Some("600"));
    let a = NameAddr::parse(&with).unwrap_or_else(|e| panic!("{with:?}: {e}"));
    assert_eq!(a.expires().and_then(Result::ok), Some(600), "{with:?}");
    assert_eq!((a.uri, a.display_name), (parsed.uri, parsed.display_name));
    let without = remove_param(s, "expires");
    let b = NameAddr::parse(&without).unwrap_or_else(|e| panic!("{without:?}: {e}"));
    assert!(b.expires().is_none(), "{without:?}");
    assert_eq!(b.uri, parsed.uri, "{without:?}");
    let tagged = set_param(s, "tag", Some("fz1"));
    let t = NameAddr::parse(&tagged).unwrap_or_else(|e| panic!("{tagged:?}: {e}"));
    assert_eq!(t.tag(), Some("fz1"), "{tagged:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    match kind % 3 {
        0 => via(s),
        1 => name_addr(s, false),
        _ => name_addr(s, true),
    }
});

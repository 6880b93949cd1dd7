//! Fuzz target for the SIP message layer: frame the input as a TCP stream and parse it as a
//! datagram; read every typed view; edit (push Via and Path, pop Route, strip ck/ik from a
//! challenge, set a body); serialize, and check that what we wrote parses to the same
//! message again.
#![no_main]

use bytes::Bytes;
use ims_sip::{Auth, HeaderName as H, Message, frame};
use libfuzzer_sys::fuzz_target;

fn views(m: &Message) {
    let _ = (
        m.check_request(),
        m.check_response(),
        m.request_uri(),
        m.cseq(),
    );
    let _ = (
        m.from_addr(),
        m.to_addr(),
        m.call_id(),
        m.expires(),
        m.max_forwards(),
    );
    for v in m.vias().flatten() {
        let _ = (v.branch(), v.rport(), v.received(), v.host.ip());
    }
    for c in m.contacts().flatten() {
        if let Some(a) = c.addr() {
            let _ = (a.expires(), a.instance(), a.q(), a.tag());
        }
    }
    for n in [
        H::Route,
        H::RecordRoute,
        H::Path,
        H::ServiceRoute,
        H::PAssociatedUri,
    ] {
        for a in m.name_addrs(n).flatten() {
            let _ = a
                .uri
                .as_sip()
                .map(|u| (u.lr(), u.host_port_str(), u.user_host()));
            let _ = a.uri.as_tel().map(|t| t.normalized());
        }
    }
    for n in [H::SecurityClient, H::SecurityServer, H::SecurityVerify] {
        for s in m.security(n).flatten() {
            let _ = (
                s.spi_c(),
                s.spi_s(),
                s.port_c(),
                s.port_s(),
                s.q(),
                s.same_as(&s),
            );
        }
    }
    let _ = m.charging_vector();
    let _ = m.access_network_info();
    let _ = m.visited_network_ids().count();
    let _ = m.has_option_tag(H::Require, "sec-agree");
}

fn edits(m: &mut Message) {
    let _ = m.prepend_header("Via", "SIP/2.0/UDP pcscf1.vims.net;branch=z9hG4bKfz");
    let _ = m.prepend_header("Path", "<sip:term@pcscf1.vims.net;lr>");
    let _ = m.pop_first_value(H::Route);
    let auth: Vec<(usize, String)> = m
        .headers_named(H::WwwAuthenticate)
        .filter_map(|h| {
            let v = h.value_str().ok()?;
            let a = Auth::parse(v).ok()?;
            Some((h.index, a.without(&["ck", "ik"])))
        })
        .collect();
    for (i, v) in auth {
        let _ = m.replace_value_at(i, &v);
    }
    if m.body().len() % 2 == 1 {
        let _ = m.set_body(Some("text/plain"), Bytes::from_static(b"x"));
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = frame(data, 65_535);
    let Ok(mut m) = Message::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    views(&m);
    let wire = m.to_bytes();
    assert_eq!(
        Message::parse(wire).as_ref().ok(),
        Some(&m),
        "unedited round trip"
    );
    edits(&mut m);
    views(&m);
    let mut out = Vec::new();
    m.write_to(&mut out);
    assert_eq!(out.len(), m.serialized_len());
    let again = Message::parse(Bytes::from(out)).expect("our own output parses");
    assert_eq!(again, m, "edited round trip");
});

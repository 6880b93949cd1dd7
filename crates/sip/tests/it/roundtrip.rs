//! Property tests: generated messages (odd spacing, folded lines, compact and unknown names,
//! binary bodies) parse, serialize byte for byte, and survive edits: parse(serialize(m)) == m.
//! Random bytes and random mutations of a valid message never panic, whatever view is read.

use bytes::Bytes;
use ims_sip::{HeaderName as H, Message};
use proptest::prelude::*;

const URIS: &[&str] = &[
    "sip:hims.net",
    "sip:alice@hims.net:5060;transport=tcp",
    "sips:[2001:db8::1]:5061",
    "tel:+4930123456",
    "tel:7042;phone-context=hims.net",
    "urn:service:sos",
    "sip:+4930;phone-context=hims.net@hims.net;user=phone",
];
const METHODS: &[&str] = &[
    "REGISTER",
    "INVITE",
    "SUBSCRIBE",
    "NOTIFY",
    "OPTIONS",
    "FOO-bar.1",
];
const NAMES: &[&str] = &[
    "Via",
    "v",
    "From",
    "f",
    "To",
    "t",
    "Call-ID",
    "i",
    "CSeq",
    "Contact",
    "m",
    "Path",
    "Service-Route",
    "P-Associated-URI",
    "Security-Client",
    "Authorization",
    "X-Custom",
    "p-charging-vector",
    "Supported",
    "k",
    "WWW-Authenticate",
];

fn value() -> impl Strategy<Value = String> {
    // Printable text (UTF-8 allowed), words separated by spaces, sometimes a fold.
    prop::collection::vec(
        ("[ -~\u{e9}\u{4e2d}]{0,12}", prop::bool::weighted(0.1)),
        0..6,
    )
    .prop_map(|words| {
        let mut v = String::new();
        for (i, (w, fold)) in words.into_iter().enumerate() {
            if i > 0 {
                v.push_str(if fold { "\r\n " } else { " " });
            }
            v.push_str(&w);
        }
        v
    })
}

fn header() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            prop::sample::select(NAMES).prop_map(str::to_owned),
            "[A-Za-z][A-Za-z0-9.!%*_+`'~-]{1,15}"
        ],
        prop::sample::select(&[": ", ":", " : ", "\t:\t"][..]),
        value(),
    )
        .prop_filter("Content-Length is generated apart", |(n, _, _)| {
            H::from_bytes(n.as_bytes()) != H::ContentLength
        })
        .prop_map(|(n, sep, v)| format!("{n}{sep}{v}\r\n"))
}

fn start_line() -> impl Strategy<Value = String> {
    prop_oneof![
        (prop::sample::select(METHODS), prop::sample::select(URIS))
            .prop_map(|(m, u)| format!("{m} {u} SIP/2.0\r\n")),
        (100u16..700, "[ -~\u{e9}]{0,30}").prop_map(|(c, r)| format!("SIP/2.0 {c} {r}\r\n")),
    ]
}

prop_compose! {
    fn message()(
        sl in start_line(),
        headers in prop::collection::vec(header(), 0..20),
        body in prop::collection::vec(any::<u8>(), 0..200),
        with_cl in any::<bool>(),
    ) -> Vec<u8> {
        let mut m = sl.into_bytes();
        for h in headers {
            m.extend_from_slice(h.as_bytes());
        }
        if with_cl || !body.is_empty() {
            m.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        m.extend_from_slice(b"\r\n");
        m.extend_from_slice(&body);
        m
    }
}

/// Reads every view; none may panic, whatever it returns.
fn touch(m: &Message) {
    let _ = m.check_request();
    let _ = m.check_response();
    let _ = m.request_uri();
    let _ = m.cseq();
    let _ = m.from_addr();
    let _ = m.to_addr();
    let _ = m.vias().count();
    let _ = m.contacts().count();
    for n in [H::Route, H::Path, H::ServiceRoute, H::PAssociatedUri] {
        let _ = m.name_addrs(n).count();
    }
    let _ = m.security(H::SecurityClient).count();
    for a in m.auth(H::Authorization).flatten() {
        let _ = a.without(&["ck"]);
    }
    let _ = m.charging_vector();
    let _ = m.access_network_info();
    let _ = m.visited_network_ids().count();
    let _ = m.expires();
    let _ = m.max_forwards();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn generated_messages_round_trip(raw in message()) {
        let m = Message::parse(Bytes::from(raw.clone())).unwrap();
        prop_assert_eq!(&m.to_bytes()[..], &raw[..]);
        let mut out = Vec::new();
        m.write_to(&mut out);
        prop_assert_eq!(&out, &raw);
        let again = Message::parse(Bytes::from(out)).unwrap();
        prop_assert_eq!(&again, &m);
        touch(&m);
    }

    #[test]
    fn edited_messages_round_trip(
        raw in message(),
        ops in prop::collection::vec((0u8..7, header(), any::<prop::sample::Index>()), 0..8),
    ) {
        let mut m = Message::parse(Bytes::from(raw)).unwrap();
        for (op, h, idx) in ops {
            let (name, value) = h.trim_end().split_once(':').unwrap();
            let (name, value) = (name.trim(), value.trim().replace("\r\n ", " "));
            let n = m.header_count().max(1);
            match op {
                0 => m.prepend_header(name, &value).unwrap(),
                1 => m.append_header(name, &value).unwrap(),
                2 => { let _ = m.replace_value_at(idx.index(n), &value); }
                3 => m.remove_at(idx.index(n)),
                4 => { let _ = m.pop_first_value(H::from_bytes(name.as_bytes())); }
                5 => m.set_body(Some("application/octet-stream"), Bytes::from(value.into_bytes())).unwrap(),
                _ => { m.set_header(name, &value).unwrap(); }
            }
        }
        let again = Message::parse(m.to_bytes()).unwrap();
        prop_assert_eq!(&again, &m);
        prop_assert_eq!(again.serialized_len(), m.serialized_len());
        touch(&again);
    }

    #[test]
    fn random_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = Message::parse(Bytes::from(raw.clone())) {
            touch(&m);
        }
        let _ = ims_sip::frame(&raw, 65535);
    }

    #[test]
    fn mutated_messages_never_panic(
        raw in message(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut raw = raw;
        for (i, b) in flips {
            let i = i.index(raw.len());
            raw[i] = b;
        }
        if let Ok(m) = Message::parse(Bytes::from(raw.clone())) {
            touch(&m);
            let _ = Message::parse(m.to_bytes());
        }
        let _ = ims_sip::frame(&raw, 65535);
    }
}

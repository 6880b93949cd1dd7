//! Property tests: random AVP trees and random Cx commands round-trip through the builder and
//! the view; decoding random bytes (raw, or behind a valid header) never panics.

use ims_diameter::cx::*;
use ims_diameter::dict::{self, ServerAssignmentType, UserDataAlreadyAvailable};
use ims_diameter::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Node {
    Leaf {
        code: u32,
        vendor: Option<u32>,
        m: bool,
        data: Vec<u8>,
    },
    Group {
        code: u32,
        vendor: Option<u32>,
        m: bool,
        children: Vec<Node>,
    },
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = (
        any::<u32>(),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(code, vendor, m, data)| Node::Leaf {
            code,
            vendor,
            m,
            data,
        });
    leaf.prop_recursive(4, 48, 6, |inner| {
        (
            any::<u32>(),
            proptest::option::of(any::<u32>()),
            any::<bool>(),
            proptest::collection::vec(inner, 0..6),
        )
            .prop_map(|(code, vendor, m, children)| Node::Group {
                code,
                vendor,
                m,
                children,
            })
    })
}

fn encode(b: &mut MessageBuilder<'_>, n: &Node) {
    let f = |m: bool| if m { avp::flags::M } else { 0 };
    match n {
        Node::Leaf {
            code,
            vendor,
            m,
            data,
        } => {
            b.raw(*code, f(*m), *vendor, data);
        }
        Node::Group {
            code,
            vendor,
            m,
            children,
        } => {
            let g = b.begin_group_raw(*code, f(*m), *vendor);
            for c in children {
                encode(b, c);
            }
            b.end_group(g);
        }
    }
}

fn check(a: &Avp<'_>, n: &Node) {
    let (code, vendor, m) = match n {
        Node::Leaf {
            code, vendor, m, ..
        }
        | Node::Group {
            code, vendor, m, ..
        } => (*code, *vendor, *m),
    };
    assert_eq!(a.code(), code);
    assert_eq!(a.vendor_id(), vendor);
    assert_eq!(a.is_mandatory(), m);
    assert_eq!(a.flags() & avp::flags::RESERVED, 0);
    match n {
        Node::Leaf { data, .. } => assert_eq!(a.data(), &data[..]),
        Node::Group { children, .. } => {
            let got: Vec<Avp<'_>> = a.grouped().map(Result::unwrap).collect();
            assert_eq!(got.len(), children.len());
            for (g, c) in got.iter().zip(children) {
                check(g, c);
            }
        }
    }
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9.:@;+-]{1,30}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn avp_trees_round_trip(tree in proptest::collection::vec(node(), 0..8), hbh: u32, e2e: u32) {
        let mut buf = Vec::new();
        let hdr = Header::request(300, dict::APP_CX, true, hbh, e2e);
        let mut b = MessageBuilder::new(&mut buf, &hdr);
        for n in &tree {
            encode(&mut b, n);
        }
        let len = b.finish().unwrap();
        prop_assert_eq!(frame(&buf, u32::MAX).unwrap(), Some(len));
        let msg = Message::parse(&buf).unwrap();
        prop_assert_eq!(msg.header().hop_by_hop, hbh);
        prop_assert_eq!(msg.header().end_to_end, e2e);
        let got: Vec<Avp<'_>> = msg.avps().map(Result::unwrap).collect();
        prop_assert_eq!(got.len(), tree.len());
        for (a, n) in got.iter().zip(&tree) {
            check(a, n);
        }
    }

    #[test]
    fn random_cx_commands_round_trip(
        sid in text(), host in text(), realm in text(), user in text(), impu in text(),
        impus in proptest::collection::vec(text(), 0..4),
        vni in proptest::collection::vec(any::<u8>(), 0..20),
        dest_host in proptest::option::of(text()),
        sat in 0usize..15, udaa: bool, flags in proptest::option::of(any::<u32>()),
        rand_autn in proptest::collection::vec(any::<u8>(), 32),
        xres in proptest::collection::vec(any::<u8>(), 4..16),
        n_items in 0usize..4, exp: bool, code in 1000u32..6000,
        user_data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        hbh: u32, e2e: u32,
    ) {
        let base = RequestBase {
            hop_by_hop: hbh,
            end_to_end: e2e,
            session_id: &sid,
            origin_host: &host,
            origin_realm: &realm,
            destination_realm: &realm,
            destination_host: dest_host.as_deref(),
            supported_features: vec![],
            extra: vec![],
        };
        let result = if exp { AnswerResult::experimental(code) } else { AnswerResult::ResultCode(code) };
        let item = |i: usize| SipAuthDataItem {
            item_number: Some(i as u32),
            authentication_scheme: Some("Digest-AKAv1-MD5"),
            authenticate: Some(&rand_autn),
            authorization: Some(&xres),
            confidentiality_key: Some(&rand_autn[..16]),
            integrity_key: Some(&rand_autn[16..]),
            ..Default::default()
        };
        let cmds = vec![
            CxMessage::Uar(Uar {
                base: base.clone(),
                user_name: &user,
                public_identity: &impu,
                visited_network_identifier: &vni,
                authorization_type: None,
                uar_flags: flags,
            }),
            CxMessage::Sar(Sar {
                base: base.clone(),
                user_name: Some(&user),
                public_identities: impus.iter().map(String::as_str).collect(),
                server_name: &host,
                assignment_type: ServerAssignmentType::ALL[sat],
                user_data_already_available: if udaa {
                    UserDataAlreadyAvailable::UserDataAlreadyAvailable
                } else {
                    UserDataAlreadyAvailable::UserDataNotAvailable
                },
            }),
            CxMessage::Maa(Maa {
                base: base.answer(result, &host, &realm),
                user_name: Some(&user),
                public_identity: Some(&impu),
                number_auth_items: Some(n_items as u32),
                auth_data_items: (0..n_items).map(item).collect(),
            }),
            CxMessage::Saa(Saa {
                base: base.answer(result, &host, &realm),
                user_name: None,
                user_data: user_data.as_deref(),
                server_name: Some(&impu),
            }),
        ];
        for c in cmds {
            let mut buf = Vec::new();
            c.encode(&mut buf).unwrap();
            let msg = Message::parse(&buf).unwrap();
            let back = CxMessage::decode(&msg).unwrap();
            prop_assert_eq!(&back, &c);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        exercise(&bytes);
    }

    #[test]
    fn random_bodies_behind_a_valid_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        code in prop_oneof![Just(257u32), 300u32..306],
        request: bool,
    ) {
        let mut buf = Vec::new();
        let mut h = Header::request(code, dict::APP_CX, true, 1, 2);
        if !request {
            h = h.answer();
        }
        buf.extend_from_slice(&h.to_bytes());
        buf.extend_from_slice(&body);
        buf.resize(buf.len().div_ceil(4) * 4, 0);
        let l = (buf.len() as u32).to_be_bytes();
        buf[1..4].copy_from_slice(&l[1..]);
        exercise(&buf);
    }
}

fn exercise(bytes: &[u8]) {
    if let Ok(Some(len)) = frame(bytes, 1 << 16)
        && let Ok(msg) = Message::parse(&bytes[..len])
    {
        let _ = msg.validate();
        for a in msg.avps().flatten() {
            let _ = (
                a.as_u32(),
                a.as_utf8(),
                a.as_address(),
                a.as_time(),
                a.as_f64(),
            );
            for g in a.grouped().flatten() {
                let _ = g.as_identity();
            }
        }
        if let Ok(c) = CxMessage::decode(&msg) {
            let mut out = Vec::new();
            c.encode(&mut out).unwrap();
            let again = Message::parse(&out).unwrap();
            assert_eq!(CxMessage::decode(&again).unwrap(), c);
        }
    }
}

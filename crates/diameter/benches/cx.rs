//! Criterion benchmarks of the Cx hot path: UAR encode+decode, and MAA with one
//! Digest-AKAv1-MD5 item encode+decode (diameter-rs 0.7 took ~1 µs for the UAR).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use ims_diameter::cx::*;
use ims_diameter::dict;
use ims_diameter::{AnswerResult, Message};
use std::hint::black_box;

fn base() -> RequestBase<'static> {
    RequestBase {
        hop_by_hop: 1,
        end_to_end: 2,
        session_id: "icscf1.hims.net;1700000000;42",
        origin_host: "icscf1.hims.net",
        origin_realm: "hims.net",
        destination_realm: "hims.net",
        destination_host: None,
        supported_features: vec![],
        extra: vec![],
    }
}

fn bench(c: &mut Criterion) {
    let uar = Uar {
        base: base(),
        user_name: "001010000000001@ims.mnc001.mcc001.3gppnetwork.org",
        public_identity: "sip:001010000000001@ims.mnc001.mcc001.3gppnetwork.org",
        visited_network_identifier: b"vims.net",
        authorization_type: Some(dict::UserAuthorizationType::Registration),
        uar_flags: None,
    };
    let rand_autn = [0x23u8; 32];
    let (xres, ck, ik) = ([0xa5u8; 8], [0xb4u8; 16], [0xf7u8; 16]);
    let maa = Maa {
        base: base().answer(AnswerResult::SUCCESS, "hss1.hims.net", "hims.net"),
        user_name: Some("001010000000001@ims.mnc001.mcc001.3gppnetwork.org"),
        public_identity: Some("sip:001010000000001@ims.mnc001.mcc001.3gppnetwork.org"),
        number_auth_items: Some(1),
        auth_data_items: vec![SipAuthDataItem {
            item_number: Some(1),
            authentication_scheme: Some("Digest-AKAv1-MD5"),
            authenticate: Some(&rand_autn),
            authorization: Some(&xres),
            confidentiality_key: Some(&ck),
            integrity_key: Some(&ik),
            ..Default::default()
        }],
    };
    let mut buf = Vec::with_capacity(1024);
    c.bench_function("uar_encode_decode", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&uar).encode(&mut buf).unwrap();
            let msg = Message::parse(black_box(&buf)).unwrap();
            black_box(Uar::decode(&msg).unwrap());
        })
    });
    buf.clear();
    uar.encode(&mut buf).unwrap();
    let uar_bytes = buf.clone();
    c.bench_function("uar_encode", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&uar).encode(&mut buf).unwrap();
        })
    });
    c.bench_function("uar_decode", |b| {
        b.iter(|| {
            let msg = Message::parse(black_box(&uar_bytes)).unwrap();
            black_box(Uar::decode(&msg).unwrap());
        })
    });
    c.bench_function("maa_aka_encode_decode", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&maa).encode(&mut buf).unwrap();
            let msg = Message::parse(black_box(&buf)).unwrap();
            black_box(Maa::decode(&msg).unwrap());
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Criterion benchmarks of the per-registration crypto: building an authentication vector
//! (f1–f5 and AUTN) as the HSS does for every MAR, the UE's AUTN check, and the S-CSCF's
//! Digest-AKA response check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ims_aka::digest_aka::{self, AkaNonce};
use ims_aka::vector::verify_autn;
use ims_aka::{Amf, AuthVector, DigestParams, Key, Milenage, Op, Qop, Rand, Sqn};

fn keys() -> (Milenage, Rand, Sqn, Amf) {
    let k = Key::from_hex("465b5ce8b199b49faa5f0a2ee238a6bc").unwrap();
    let op = Op::from_hex("cdc202d5123e20f62b6d676ac72cb318").unwrap();
    (
        Milenage::with_op(&k, &op),
        Rand::from_hex("23553cbe9637a89d218ae64dae47bf35").unwrap(),
        Sqn::from_hex("ff9bb4d0b607").unwrap(),
        Amf::from_hex("b9b9").unwrap(),
    )
}

fn bench(c: &mut Criterion) {
    let (m, rand, sqn, amf) = keys();

    c.bench_function("vector_generate (f1-f5 + AUTN)", |b| {
        b.iter(|| AuthVector::generate(black_box(&m), black_box(rand), black_box(sqn), amf))
    });

    c.bench_function("milenage_keying_with_op (OPc + key schedule)", |b| {
        let k = Key::new([0x46; 16]);
        let op = Op::new([0xcd; 16]);
        b.iter(|| Milenage::with_op(black_box(&k), black_box(&op)))
    });

    let av = AuthVector::generate(&m, rand, sqn, amf);
    c.bench_function("ue_verify_autn", |b| {
        b.iter(|| verify_autn(black_box(&m), black_box(&rand), black_box(&av.autn)).unwrap())
    });

    let nonce = AkaNonce::new(av.rand, av.autn).encode();
    let params = DigestParams {
        username: "001010000000001@ims.mnc001.mcc001.3gppnetwork.org",
        realm: "ims.mnc001.mcc001.3gppnetwork.org",
        nonce: &nonce,
        uri: "sip:ims.mnc001.mcc001.3gppnetwork.org",
        qop: Some(Qop::Auth),
        nc: Some("00000001"),
        cnonce: Some("0a4f113b"),
        method: "REGISTER",
        body: b"",
    };
    let response = params
        .response_with_password(digest_aka::password(&av.xres))
        .unwrap();
    c.bench_function("digest_aka_verify_response", |b| {
        b.iter(|| {
            black_box(&params)
                .verify_password(black_box(&response), digest_aka::password(&av.xres))
                .unwrap()
        })
    });

    c.bench_function("nonce_decode", |b| {
        b.iter(|| AkaNonce::decode(black_box(&nonce)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

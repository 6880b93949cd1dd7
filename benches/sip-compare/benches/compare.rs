//! One message, three parsers, one run. Each case parses the bytes into the library's message
//! type and serializes it back to bytes; the output is checked to be a SIP message of the
//! same size class before timing, so no library is timed on a failure path.
//!
//! Messages: `register_ipv4.sip` (944 bytes, an initial IMS REGISTER that all three parse)
//! and `ims_register.sip` (1,481 bytes, IPv6 + AKAv1-MD5 + `+sip.instance`), which rsip and
//! rsipstack are asked to parse too; the ones that fail are reported, not timed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const V4: &[u8] = include_bytes!("../../../crates/sip/tests/data/register_ipv4.sip");
const V6: &[u8] = include_bytes!("../../../crates/sip/tests/data/ims_register.sip");

fn ours(b: &Bytes) -> Vec<u8> {
    let m = ims_sip::Message::parse(b.clone()).unwrap();
    let mut out = Vec::with_capacity(b.len());
    m.write_to(&mut out);
    out
}

fn ours_proxy(b: &Bytes) -> Vec<u8> {
    // What a P-CSCF does to a REGISTER: read the typed views it needs, add Via and Path.
    let mut m = ims_sip::Message::parse(b.clone()).unwrap();
    let _ = black_box(m.top_via().unwrap().branch());
    let _ = black_box(m.call_id().unwrap());
    let _ = black_box(m.cseq().unwrap().seq);
    m.prepend_header("Via", "SIP/2.0/UDP pcscf1.vims.net:5060;branch=z9hG4bKp1")
        .unwrap();
    m.prepend_header("Path", "<sip:term@pcscf1.vims.net;lr>")
        .unwrap();
    let mut out = Vec::with_capacity(b.len() + 128);
    m.write_to(&mut out);
    out
}

fn rsip_round(b: &[u8]) -> Result<Vec<u8>, String> {
    let m = rsip::SipMessage::try_from(b).map_err(|e| e.to_string())?;
    Ok(Vec::<u8>::from(m))
}

fn rsipstack_round(b: &[u8]) -> Result<Vec<u8>, String> {
    let m = rsipstack::sip::SipMessage::try_from(b).map_err(|e| e.to_string())?;
    Ok(m.to_string().into_bytes())
}

fn bench(c: &mut Criterion) {
    for (label, msg) in [("register_ipv4", V4), ("ims_register_v6", V6)] {
        let bytes = Bytes::from_static(msg);
        assert_eq!(ours(&bytes), msg, "ims-sip round trip is byte-identical");
        let mut g = c.benchmark_group(format!("parse_serialize/{label}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("ims-sip", |b| b.iter(|| ours(black_box(&bytes))));
        g.bench_function("ims-sip+proxy-edits", |b| {
            b.iter(|| ours_proxy(black_box(&bytes)))
        });
        match rsip_round(msg) {
            Ok(out) => {
                eprintln!(
                    "{label}: rsip 0.4 round trip {} -> {} bytes",
                    msg.len(),
                    out.len()
                );
                g.bench_function("rsip-0.4", |b| b.iter(|| rsip_round(black_box(msg))));
            }
            Err(e) => eprintln!("{label}: rsip 0.4 FAILS to parse: {e}"),
        }
        match rsipstack_round(msg) {
            Ok(out) => {
                eprintln!(
                    "{label}: rsipstack 0.7 round trip {} -> {} bytes",
                    msg.len(),
                    out.len()
                );
                g.bench_function("rsipstack-0.7", |b| {
                    b.iter(|| rsipstack_round(black_box(msg)))
                });
            }
            Err(e) => eprintln!("{label}: rsipstack 0.7 FAILS to parse: {e}"),
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

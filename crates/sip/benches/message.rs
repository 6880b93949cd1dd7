//! Parse + serialize of IMS REGISTERs (the numbers the sip-compare bench sets against rsip
//! and rsipstack), the P-CSCF's edits, and stream framing.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ims_sip::{HeaderName, Message, frame};
use std::hint::black_box;

const V4: &[u8] = include_bytes!("../tests/data/register_ipv4.sip");
const V6: &[u8] = include_bytes!("../tests/data/ims_register.sip");

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sip");
    g.throughput(Throughput::Elements(1));
    for (label, msg) in [("register_ipv4", V4), ("ims_register_v6", V6)] {
        let bytes = Bytes::from_static(msg);
        let mut out = Vec::with_capacity(2048);
        g.bench_function(format!("parse/{label}"), |b| {
            b.iter(|| Message::parse(black_box(bytes.clone())))
        });
        g.bench_function(format!("parse_serialize/{label}"), |b| {
            b.iter(|| {
                let m = Message::parse(black_box(bytes.clone())).ok();
                out.clear();
                if let Some(m) = m {
                    m.write_to(&mut out);
                }
                out.len()
            })
        });
        g.bench_function(format!("pcscf_edits/{label}"), |b| {
            b.iter(|| {
                let Ok(mut m) = Message::parse(black_box(bytes.clone())) else {
                    return 0;
                };
                let branch_ok = m.top_via().map(|v| v.branch().is_some()).unwrap_or(false);
                let _ = m.prepend_header("Via", "SIP/2.0/UDP pcscf1.vims.net;branch=z9hG4bKp1");
                let _ = m.prepend_header("Path", "<sip:term@pcscf1.vims.net;lr>");
                m.remove_headers(HeaderName::SecurityVerify);
                out.clear();
                m.write_to(&mut out);
                out.len() + usize::from(branch_ok)
            })
        });
        let mut stream = msg.to_vec();
        stream.extend_from_slice(msg);
        g.bench_function(format!("frame/{label}"), |b| {
            b.iter(|| frame(black_box(&stream), 65535))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

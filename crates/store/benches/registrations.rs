//! The S-CSCF's registration writes (`Store::apply_registrations`) into a fresh SQLite file:
//! 512 registrations (one binding each, as a first REGISTER saves them) written in
//! transactions of 1, 8 and 64 changes. The time is per sample of 512 changes, so the groups
//! compare directly: what a change costs alone against inside the group commit the S-CSCF's
//! writer makes when REGISTERs arrive together.
//!
//! Then the P-CSCF's (`Store::apply_pcscf_registrations`): with 50,000 registrations held,
//! one batch deleting 32 of them (what its expiry sweep queues) and one saving them back.
//! The deletion used to scan every row of the P-CSCF per statement (an `OR` of key pairs).
//! Criterion's `--test` mode (CI) runs each once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ims_store::{
    BindingRecord, FlowKey, FlowTransport, PcscfContactRecord, PcscfRegistrationRecord, PcscfWrite,
    RegistrationRecord, RegistrationWrite, Store,
};

const CHANGES: usize = 512;

fn record(i: usize, round: u64) -> RegistrationRecord {
    RegistrationRecord {
        impu: format!("sip:user{i}@hims.net"),
        impi: format!("user{i}.private@hims.net"),
        scscf_name: "sip:scscf1.hims.net:5060".into(),
        user_data: String::new(),
        associated_uris: vec![format!("sip:user{i}@hims.net"), format!("tel:+1555{i:07}")],
        bindings: vec![BindingRecord {
            contact_uri: format!("sip:user{i}@10.1.{}.{}:5060", i / 250, i % 250),
            contact: format!(
                "<sip:user{i}@10.1.{}.{}:5060>;+sip.instance=\"<urn:gsma:imei:1>\"",
                i / 250,
                i % 250
            ),
            path: vec!["<sip:term@pcscf1.vims.net;lr>".into()],
            call_id: format!("reg-{i}"),
            cseq: round as i64,
            expires_at: 1_000_000 + round as i64,
        }],
    }
}

fn registrations(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = ims_testkit::scratch_dir("bench-registrations");
    let url = format!("sqlite://{}", dir.join("scscf.sqlite").display());
    let store = rt.block_on(Store::open(&url)).unwrap();
    let mut g = c.benchmark_group(format!("registration_writes_{CHANGES}"));
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    let mut round = 0u64;
    for batch in [1usize, 8, 64] {
        g.bench_function(format!("batches_of_{batch}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let writes: Vec<RegistrationWrite> = (0..CHANGES)
                        .map(|i| RegistrationWrite::Save(record(i, round)))
                        .collect();
                    let t = Instant::now();
                    for chunk in writes.chunks(batch) {
                        rt.block_on(store.apply_registrations(chunk)).unwrap();
                    }
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

const HELD: usize = 50_000;

fn pcscf_record(i: usize) -> PcscfRegistrationRecord {
    PcscfRegistrationRecord {
        flow: FlowKey {
            transport: FlowTransport::Udp,
            addr: format!("10.{}.{}.{}:5060", i / 62_500, i / 250 % 250, i % 250 + 1)
                .parse()
                .unwrap(),
        },
        impi: format!("user{i}.private@hims.net"),
        contacts: vec![PcscfContactRecord {
            uri: format!("sip:user{i}@10.1.0.1:5060"),
            expires_at: 2_000_000_000_000,
        }],
        associated_uris: vec![format!("sip:user{i}@hims.net")],
        service_route: vec!["<sip:orig@scscf1.hims.net:5060;lr>".into()],
        ipsec_port_us: None,
    }
}

fn pcscf_deletes(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = ims_testkit::scratch_dir("bench-pcscf-registrations");
    let url = format!("sqlite://{}", dir.join("pcscf.sqlite").display());
    let store = rt.block_on(Store::open(&url)).unwrap();
    let name = "pcscf1.vims.net";
    let all: Vec<PcscfWrite> = (0..HELD)
        .map(|i| PcscfWrite::Save(pcscf_record(i)))
        .collect();
    for chunk in all.chunks(1024) {
        rt.block_on(store.apply_pcscf_registrations(name, chunk))
            .unwrap();
    }
    let mut g = c.benchmark_group(format!("pcscf_registrations_{HELD}_held"));
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let mut next = 0usize;
    g.bench_function("delete_32", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let some: Vec<usize> = (0..32).map(|k| (next + k * 1_531) % HELD).collect();
                next += 7;
                let gone: Vec<PcscfWrite> = some
                    .iter()
                    .map(|&i| PcscfWrite::Delete(pcscf_record(i).flow))
                    .collect();
                let t = Instant::now();
                rt.block_on(store.apply_pcscf_registrations(name, &gone))
                    .unwrap();
                total += t.elapsed();
                // Back again, outside the time: the table keeps its size.
                let back: Vec<PcscfWrite> = some
                    .iter()
                    .map(|&i| PcscfWrite::Save(pcscf_record(i)))
                    .collect();
                rt.block_on(store.apply_pcscf_registrations(name, &back))
                    .unwrap();
            }
            total
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, registrations, pcscf_deletes);
criterion_main!(benches);

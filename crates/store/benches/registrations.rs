//! The S-CSCF's registration writes (`Store::apply_registrations`) into a fresh SQLite file:
//! 512 registrations (one binding each, as a first REGISTER saves them) written in
//! transactions of 1, 8 and 64 changes. The time is per sample of 512 changes, so the groups
//! compare directly: what a change costs alone against inside the group commit the S-CSCF's
//! writer makes when REGISTERs arrive together. Criterion's `--test` mode (CI) runs each once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ims_store::{BindingRecord, RegistrationRecord, RegistrationWrite, Store};

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

criterion_group!(benches, registrations);
criterion_main!(benches);

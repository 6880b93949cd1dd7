//! Bulk provisioning: 100,000 AKA subscribers (two public identities each) imported in batches
//! of 1,000 into a fresh SQLite file, and into a throwaway PostgreSQL cluster when PostgreSQL
//! is installed. One import per sample: each sample is seconds long, so few samples.
//! `IMS_BENCH_IMPORT_N` changes the count; criterion's `--test` smoke mode (CI) imports 1,000.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ims_store::{Credentials, NewPublicIdentity, NewSubscriber, Store};
use zeroize::Zeroizing;

fn count() -> usize {
    if std::env::args().any(|a| a == "--test") {
        return 1_000;
    }
    std::env::var("IMS_BENCH_IMPORT_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

fn subscribers(n: usize) -> Vec<NewSubscriber> {
    (0..n)
        .map(|i| NewSubscriber {
            name: format!("00101{i:010}"),
            impi: format!("00101{i:010}@ims.mnc001.mcc001.3gppnetwork.org"),
            credentials: Credentials::Aka {
                k: Zeroizing::new(vec![0x46; 16]),
                opc: Zeroizing::new(vec![0xcd; 16]),
                amf: [0x80, 0],
                sqn: 0,
            },
            public_identities: vec![
                NewPublicIdentity {
                    impu: format!("sip:00101{i:010}@ims.mnc001.mcc001.3gppnetwork.org"),
                    barred: false,
                    irs: 1,
                },
                NewPublicIdentity {
                    impu: format!("tel:+49170{i:010}"),
                    barred: false,
                    irs: 1,
                },
            ],
            ifc_xml: String::new(),
            capability_set: None,
            roaming_allowed: vec![],
        })
        .collect()
}

fn import(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = count();
    let subs = subscribers(n);
    let mut g = c.benchmark_group(format!("import_{n}"));
    g.sample_size(10)
        .measurement_time(Duration::from_secs(30))
        .warm_up_time(Duration::from_millis(1));
    g.bench_function("sqlite", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = ims_testkit::scratch_dir("bench-import");
                let url = format!("sqlite://{}", dir.join("hss.sqlite").display());
                let store = rt.block_on(Store::open(&url)).unwrap();
                let t = Instant::now();
                assert_eq!(
                    rt.block_on(store.import_subscribers(&subs, 1000)).unwrap(),
                    n
                );
                total += t.elapsed();
                let _ = std::fs::remove_dir_all(dir);
            }
            total
        })
    });
    if let Some(pg) = ims_testkit::postgres::Postgres::start("bench_import_postgres") {
        g.bench_function("postgres", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let store = rt.block_on(Store::open(&pg.url())).unwrap();
                    let t = Instant::now();
                    assert_eq!(
                        rt.block_on(store.import_subscribers(&subs, 1000)).unwrap(),
                        n
                    );
                    total += t.elapsed();
                    rt.block_on(store.delete_all_subscribers()).unwrap();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, import);
criterion_main!(benches);

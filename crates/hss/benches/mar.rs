//! MAR → MAA on the HSS's Cx handler (decode, store lookups, one atomic SQN reservation,
//! Milenage, encode) over a store of N AKA subscribers, SQLite and (when installed)
//! PostgreSQL. Subscribers are picked spread over the whole set so the database cannot
//! answer from one hot page. `IMS_BENCH_MAR_SUBS` lists the sizes (default `1000`; the
//! issue's figures use `1000,1000000`); criterion's `--test` smoke mode uses 1,000.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ims_diameter::cx::{Mar, RequestBase, SipAuthDataItem};
use ims_hss::cx::{CxConfig, CxHandler};
use ims_store::{CapabilitySet, Credentials, NewPublicIdentity, NewSubscriber, Store};
use zeroize::Zeroizing;

fn sizes() -> Vec<usize> {
    if std::env::args().any(|a| a == "--test") {
        return vec![1_000];
    }
    std::env::var("IMS_BENCH_MAR_SUBS")
        .unwrap_or_else(|_| "1000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

fn impi(i: usize) -> String {
    format!("00101{i:010}@ims.mnc001.mcc001.3gppnetwork.org")
}

fn impu(i: usize) -> String {
    format!("sip:00101{i:010}@ims.mnc001.mcc001.3gppnetwork.org")
}

async fn fill(store: &Store, n: usize) {
    let batch = 5_000;
    let mut i = 0;
    while i < n {
        let subs: Vec<NewSubscriber> = (i..(i + batch).min(n))
            .map(|i| NewSubscriber {
                name: format!("00101{i:010}"),
                impi: impi(i),
                credentials: Credentials::Aka {
                    k: Zeroizing::new(vec![0x46; 16]),
                    opc: Zeroizing::new(vec![0xcd; 16]),
                    amf: [0x80, 0],
                    sqn: 0,
                },
                public_identities: vec![NewPublicIdentity {
                    impu: impu(i),
                    barred: false,
                    irs: 1,
                }],
                ifc_xml: String::new(),
                capability_set: None,
                roaming_allowed: vec![],
            })
            .collect();
        store.import_subscribers(&subs, 1000).await.unwrap();
        i += batch;
    }
}

fn requests(n: usize, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|k| {
            // Spread over the set: a multiplicative step coprime with most n.
            let i = (k * 7_919 + 13) % n;
            let (impi, impu) = (impi(i), impu(i));
            let mar = Mar {
                base: RequestBase {
                    hop_by_hop: k as u32,
                    end_to_end: k as u32,
                    session_id: "scscf1.hims.net;1;1",
                    origin_host: "scscf1.hims.net",
                    origin_realm: "hims.net",
                    destination_realm: "hims.net",
                    ..RequestBase::default()
                },
                user_name: &impi,
                public_identity: &impu,
                server_name: "sip:scscf1.hims.net:6060",
                number_auth_items: 1,
                auth_data_item: SipAuthDataItem {
                    authentication_scheme: Some("Digest-AKAv1-MD5"),
                    ..SipAuthDataItem::default()
                },
            };
            let mut b = Vec::new();
            mar.encode(&mut b).unwrap();
            b
        })
        .collect()
}

fn handler(store: Store) -> CxHandler {
    CxHandler::new(
        store,
        CxConfig {
            origin_host: "hss1.hims.net".into(),
            origin_realm: "hims.net".into(),
            home_network: "hims.net".into(),
            max_auth_items: 1,
            sqn_ind_bits: 5,
            default_capabilities: CapabilitySet::default(),
        },
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = ims_testkit::postgres::Postgres::start("bench_mar_postgres");
    for n in sizes() {
        let reqs = requests(n, 4096);
        let mut g = c.benchmark_group(format!("mar_{n}_subscribers"));
        g.throughput(Throughput::Elements(1))
            .measurement_time(Duration::from_secs(10));
        let dir = ims_testkit::scratch_dir("bench-mar");
        let sqlite = rt
            .block_on(Store::open(&format!(
                "sqlite://{}",
                dir.join("hss.sqlite").display()
            )))
            .unwrap();
        rt.block_on(fill(&sqlite, n));
        let mut backends = vec![("sqlite", sqlite)];
        if let Some(pg) = &pg {
            let store = rt.block_on(Store::open(&pg.url())).unwrap();
            rt.block_on(store.delete_all_subscribers()).unwrap();
            rt.block_on(fill(&store, n));
            backends.push(("postgres", store));
        }
        for (name, store) in backends {
            let cx = handler(store);
            let mut k = 0usize;
            g.bench_function(name, |b| {
                b.iter(|| {
                    k = (k + 1) % reqs.len();
                    let out = rt.block_on(cx.handle(&reqs[k]));
                    assert_eq!(out.result, 2001);
                    out.answer.len()
                })
            });
        }
        g.finish();
        let _ = std::fs::remove_dir_all(dir);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

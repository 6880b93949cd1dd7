//! Cx load on the HSS: requests per second and p50/p99 latency with many in flight, on SQLite
//! and on PostgreSQL (when installed), with 1,000 and 1,000,000 provisioned subscribers (the
//! bulk import's rate is printed on the way). The Cx handler is driven directly by tokio tasks
//! (64 in flight) on a current-thread runtime: the HSS's own cost on one core, without the TCP
//! hop. Two loads per size: MARs alone, and the registration mix (UAR, MAR, SAR REGISTRATION
//! with User-Data for each subscriber, in that order), the mix the HSS target of #16 names.
//! The HSS is started as the daemon starts it (preload on) and measured once the preload is
//! done; the preload time is printed.
//!
//! `IMS_BENCH_MAR_SUBS` (default `1000,1000000`) and `IMS_BENCH_MAR_COUNT` (MARs per run and
//! registrations per mix run, default 20000) change the sizes; `--test` (CI's smoke run) uses
//! 1,000 subscribers and 500 of each on SQLite only. Output: one line per run, for the
//! closing note and docs/PERFORMANCE.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ims_diameter::cx::{Mar, RequestBase, Sar, SipAuthDataItem, Uar};
use ims_diameter::dict::{ServerAssignmentType, UserAuthorizationType, UserDataAlreadyAvailable};
use ims_hss::cx::{CxConfig, CxHandler};
use ims_store::{CapabilitySet, Credentials, NewPublicIdentity, NewSubscriber, Store};
use zeroize::Zeroizing;

const IN_FLIGHT: usize = 64;

fn impi(i: usize) -> String {
    format!("00101{i:010}@ims.mnc001.mcc001.3gppnetwork.org")
}

fn impu(i: usize) -> String {
    format!("sip:00101{i:010}@ims.mnc001.mcc001.3gppnetwork.org")
}

async fn fill(store: &Store, n: usize) -> Duration {
    let t = Instant::now();
    let batch = 10_000;
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
    t.elapsed()
}

fn mar(i: usize) -> Vec<u8> {
    let (impi, impu) = (impi(i), impu(i));
    let m = Mar {
        base: RequestBase {
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
    m.encode(&mut b).unwrap();
    b
}

fn base() -> RequestBase<'static> {
    RequestBase {
        session_id: "scscf1.hims.net;1;1",
        origin_host: "scscf1.hims.net",
        origin_realm: "hims.net",
        destination_realm: "hims.net",
        ..RequestBase::default()
    }
}

fn uar(i: usize) -> Vec<u8> {
    let (impi, impu) = (impi(i), impu(i));
    let m = Uar {
        base: base(),
        user_name: &impi,
        public_identity: &impu,
        visited_network_identifier: b"hims.net",
        authorization_type: Some(UserAuthorizationType::Registration),
        uar_flags: None,
    };
    let mut b = Vec::new();
    m.encode(&mut b).unwrap();
    b
}

fn sar(i: usize) -> Vec<u8> {
    let (impi, impu) = (impi(i), impu(i));
    let m = Sar {
        base: base(),
        user_name: Some(&impi),
        public_identities: vec![&impu],
        server_name: "sip:scscf1.hims.net:6060",
        assignment_type: ServerAssignmentType::Registration,
        user_data_already_available: UserDataAlreadyAvailable::UserDataNotAvailable,
    };
    let mut b = Vec::new();
    m.encode(&mut b).unwrap();
    b
}

/// What one unit of load is: a MAR, or a registration's UAR, MAR and SAR.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    Mar,
    Registration,
}

/// Runs `count` units over `n_subs` subscribers; (Cx requests per second, p50, p99 of one
/// request).
async fn load(
    cx: CxHandler,
    n_subs: usize,
    count: usize,
    what: Load,
    offset: usize,
) -> (f64, Duration, Duration) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let cx = cx.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= count {
                    return lat;
                }
                // Spread over the whole set, so no hot page answers everything.
                let i = (k * 7_919 + 13 + offset) % n_subs;
                let reqs = match what {
                    Load::Mar => vec![mar(i)],
                    Load::Registration => vec![uar(i), mar(i), sar(i)],
                };
                for req in reqs {
                    let s = Instant::now();
                    let out = cx.handle(&req).await;
                    lat.push(s.elapsed());
                    // UAR: 2001 FIRST_REGISTRATION, or 2002 SUBSEQUENT when the run comes
                    // back to a subscriber it registered.
                    assert!(matches!(out.result, 2001 | 2002), "{}", out.result);
                }
            }
        }));
    }
    let mut all = Vec::with_capacity(count);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = t.elapsed();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
    )
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let sizes: Vec<usize> = if smoke {
        vec![1_000]
    } else {
        std::env::var("IMS_BENCH_MAR_SUBS")
            .unwrap_or_else(|_| "1000,1000000".into())
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    };
    let count: usize = if smoke {
        500
    } else {
        std::env::var("IMS_BENCH_MAR_COUNT")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(20_000)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg = if smoke {
        None
    } else {
        ims_testkit::postgres::Postgres::start("bench_mar_load_postgres")
    };
    println!(
        "backend   subscribers  import/s  preload s  load          Cx/s      p50       p99      (one core, {IN_FLIGHT} in flight, {count} each)"
    );
    for &n in &sizes {
        let dir = ims_testkit::scratch_dir("bench-mar-load");
        let mut backends = vec![(
            "sqlite",
            format!("sqlite://{}", dir.join("hss.sqlite").display()),
        )];
        if let Some(pg) = &pg {
            backends.push(("postgres", pg.url()));
        }
        for (name, url) in backends {
            let store = rt.block_on(Store::open(&url)).unwrap();
            rt.block_on(store.delete_all_subscribers()).unwrap();
            let took = rt.block_on(fill(&store, n));
            let t = Instant::now();
            let subs = {
                let _rt = rt.enter();
                ims_hss::subscribers::Subscribers::start_reserving(store, 32, true, Some(32))
            };
            rt.block_on(async {
                while subs.loaded() < n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            let preload = t.elapsed();
            let cx = CxHandler::new(
                subs,
                CxConfig {
                    origin_host: "hss1.hims.net".into(),
                    origin_realm: "hims.net".into(),
                    home_network: "hims.net".into(),
                    max_auth_items: 1,
                    sqn_ind_bits: 5,
                    default_capabilities: CapabilitySet::default(),
                },
            )
            .unwrap();
            for (what, label, offset) in [
                (Load::Mar, "MAR", 0),
                // Other subscribers than the MARs': a first registration each.
                (Load::Registration, "UAR+MAR+SAR", n / 2),
            ] {
                let (rate, p50, p99) = rt.block_on(load(cx.clone(), n, count, what, offset));
                println!(
                    "{name:<9} {n:>11}  {:>8.0}  {:>9.1}  {label:<12} {rate:>8.0}  {:>7.3}ms  {:>7.3}ms",
                    n as f64 / took.as_secs_f64(),
                    preload.as_secs_f64(),
                    p50.as_secs_f64() * 1e3,
                    p99.as_secs_f64() * 1e3
                );
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

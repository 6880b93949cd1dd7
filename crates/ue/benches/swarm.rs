//! The swarm against an in-memory registrar (`ims_ue::swarm::fake`: a 401 computed with
//! crates/aka, then a 200): whole registrations (two round trips, AKA on both sides, SIP
//! parsing and building on both sides) per second of one core, no sockets.
//! `fake_registrar_alone_1000` times the registrar's share (about two thirds), to subtract.
//!
//! `idle_registered_ues` is not a timing: it registers 1,000,000 UEs (10,000 in criterion's
//! `--test` smoke mode) that then wait to re-register and prints the resident memory they
//! take (Linux), the figure in the module documentation.
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ims_ue::swarm::fake::{FakeCredentials, FakeRegistrar};
use ims_ue::swarm::{Event, Plan, Swarm, SwarmConfig, SwarmCredentials};

const K: [u8; 16] = [0x46; 16];
const OPC: [u8; 16] = [0xcd; 16];

fn config(plan: Plan) -> SwarmConfig {
    let mut cfg = SwarmConfig::new(
        "hims.net",
        "load",
        SocketAddr::from(([127, 0, 0, 1], 5060)),
        SocketAddr::from(([127, 0, 0, 2], 40000)),
        SwarmCredentials::Aka { k: K, opc: OPC },
        1,
    );
    cfg.plan = plan;
    cfg
}

/// Registers `n` UEs, `batch` at a time; returns how many succeeded.
fn register(swarm: &mut Swarm, reg: &mut FakeRegistrar, n: u32, batch: u32, now: Instant) -> u32 {
    let pcscf = SocketAddr::from(([127, 0, 0, 1], 5060));
    let mut ok = 0;
    let mut next = 0;
    while next < n {
        for _ in 0..batch.min(n - next) {
            swarm.start(next, now);
            next += 1;
        }
        while let Some(t) = swarm.poll_transmit() {
            if let Some(answer) = reg.handle(&t.payload) {
                swarm.handle_datagram(now, pcscf, &answer);
            }
        }
        while let Some(ev) = swarm.poll_event() {
            if let Event::Phase(p) = ev {
                ok += u32::from(p.result.is_ok());
            }
        }
    }
    ok
}

fn registrations(c: &mut Criterion) {
    let mut g = c.benchmark_group("swarm");
    const N: u32 = 1000;
    g.throughput(Throughput::Elements(u64::from(N)));
    g.bench_function("register_aka_1000_with_fake_registrar", |b| {
        let now = Instant::now();
        let mut swarm = Swarm::new(config(Plan::default()), now);
        let mut reg = FakeRegistrar::new("hims.net", FakeCredentials::Aka { k: K, opc: OPC });
        b.iter(|| {
            let ok = register(&mut swarm, &mut reg, N, 100, now);
            assert_eq!(ok, N);
            black_box(ok)
        });
    });
    // The fake registrar alone, to subtract: it answers the same REGISTERs.
    g.bench_function("fake_registrar_alone_1000", |b| {
        let now = Instant::now();
        let mut swarm = Swarm::new(config(Plan::default()), now);
        let mut reg = FakeRegistrar::new("hims.net", FakeCredentials::Aka { k: K, opc: OPC });
        let pcscf = SocketAddr::from(([127, 0, 0, 1], 5060));
        let mut requests = Vec::new();
        for n in 0..N {
            swarm.start(n, now);
            while let Some(t) = swarm.poll_transmit() {
                if let Some(answer) = reg.handle(&t.payload) {
                    requests.push(t.payload);
                    swarm.handle_datagram(now, pcscf, &answer);
                }
            }
        }
        b.iter(|| {
            for r in &requests {
                black_box(reg.handle(r));
            }
        });
    });
    g.finish();
}

fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn idle_registered_ues(_: &mut Criterion) {
    // criterion's `--test` smoke mode (the test command, in a debug build): 10,000.
    let n: u32 = if std::env::args().any(|a| a == "--test") {
        10_000
    } else {
        1_000_000
    };
    let now = Instant::now();
    let plan = Plan {
        reregister_every: Some(Duration::from_secs(3600)),
        reregisters: 1,
        deregister: false,
    };
    let mut swarm = Swarm::new(config(plan), now);
    let mut reg = FakeRegistrar::new("hims.net", FakeCredentials::Aka { k: K, opc: OPC });
    let before = rss_kib();
    let t = Instant::now();
    let ok = register(&mut swarm, &mut reg, n, 1000, now);
    let took = t.elapsed();
    let after = rss_kib();
    assert_eq!(swarm.alive(), n as usize);
    if let (Some(a), Some(b)) = (after, before) {
        println!(
            "swarm: {ok} registered UEs waiting to re-register: {} MB resident, {} bytes per UE \
             (slot {} bytes); registered in {took:.2?} with the fake registrar",
            (a - b) / 1024,
            (a - b) * 1024 / u64::from(n),
            Swarm::slot_size(),
        );
    }
    black_box(swarm);
}

criterion_group!(benches, registrations, idle_registered_ues);
criterion_main!(benches);

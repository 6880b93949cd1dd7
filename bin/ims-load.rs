//! `ims-load`: the load generator. Many simulated UEs register with full Digest-AKAv1-MD5 (or
//! SIP Digest with `--password`) through a P-CSCF (REGISTER, 401, REGISTER, 200), over a few
//! UDP sockets (`--sockets`) shared by all of them: one [`ims_ue::swarm::Swarm`] (the sans-io
//! engine) and one tokio task per socket, UEs dealt round robin.
//!
//! - Closed loop (default): `--count` UEs, at most `--concurrency` alive at once.
//! - Open loop (`--rate R --duration S`): R new UEs a second for S seconds, whatever the
//!   answers, then waits for the stragglers (each REGISTER gives up after `--timeout`).
//!
//! Subscribers are `<prefix><n>@<domain>` for n cycling over `--first .. --first + --count`,
//! with one K/OP; `--csv` prints them for `imsctl subscriber import` instead of registering.
//! Each UE registers, re-registers `--reregisters` times every `--reregister-every` seconds
//! (in open loop: until the end of `--duration` unless `--reregisters` is given; the UEs then
//! waiting for one stop there, or with `--whole-plans` carry on) and
//! deregisters with `--deregister`. A progress line goes to stderr every second; the summary
//! to stdout: one line (counts, failures by cause, the rate of registrations per second of wall
//! time, whole-registration latency percentiles, then the REGISTER→401 and REGISTER(auth)→final
//! round trips), or one JSON object with `--json` (with the re- and deregistrations' own
//! latency percentiles when they were asked for). `--timeline` adds to the JSON the first
//! registrations per second of wall time, by the second they started in: completed, refused
//! with 503, failed otherwise, and the completed ones' p50/p99 (`scripts/bench lab --recovery`
//! reads it to see an overload come and go). Exit code 0 when every UE did everything
//! asked, 1 otherwise, 2 for bad arguments.
//!
//! **Calls** (`--calls --rate R --duration S`): `--count` UEs (an even number) register first,
//! each from a UDP socket of its own (`--register-rate` a second), then pair `j` (UE `2j` and
//! UE `2j+1`) carries calls: R calls a second for S seconds, each INVITE → 180 → 200 → ACK →
//! (`--hold`) → BYE → 200 through the core (see `load_calls.rs`). The summary gives calls
//! completed and failed by cause, the rate, and INVITE→180, INVITE→200 (setup) and whole-call
//! percentiles. The registrations are left to expire.
mod load_calls;
mod tool;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::Parser;
use ims_ue::swarm::{Event, Failure, Phase, Plan, Swarm, SwarmConfig, SwarmCredentials};
use tokio::net::UdpSocket;

use tool::key;

#[derive(Parser)]
#[command(about = "Register many UEs through a P-CSCF and report the rate and latency")]
struct Args {
    /// The P-CSCF's address (ip:port).
    #[arg(long, default_value = "127.0.0.10:5060")]
    pcscf: SocketAddr,
    /// How many subscribers (`<prefix><first>` .. `<prefix><first+count-1>`); in closed loop,
    /// how many UEs register.
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// The first subscriber number.
    #[arg(long, default_value_t = 0)]
    first: u32,
    /// Closed loop: how many UEs alive at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Open loop: new registrations per second (with --duration).
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: seconds to start registrations for (with --rate).
    #[arg(long)]
    duration: Option<f64>,
    /// UDP sockets the UEs share.
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// Subscriber name prefix.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// Home domain.
    #[arg(long, default_value = "hims.net")]
    domain: String,
    /// K of every subscriber, 32 hex digits.
    #[arg(long, default_value = "465b5ce8b199b49faa5f0a2ee238a6bc")]
    k: String,
    /// OP of every subscriber, 32 hex digits.
    #[arg(long, default_value = "cdc202d5123e20f62b6d676ac72cb318")]
    op: String,
    /// SIP Digest MD5 with this password instead of AKA.
    #[arg(long)]
    password: Option<String>,
    /// The UEs' local address (the sockets bind ports on it).
    #[arg(long, default_value = "127.0.0.1")]
    local_ip: IpAddr,
    /// udp (the only one: the UEs share a few UDP sockets).
    #[arg(long, default_value = "udp")]
    transport: String,
    /// Seconds to wait for each answer (Timer F: at most 32).
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    /// Registration expiry, seconds.
    #[arg(long, default_value_t = 600)]
    expires: u32,
    /// Re-register this many seconds after each registration.
    #[arg(long)]
    reregister_every: Option<f64>,
    /// How many re-registrations per UE (default with --reregister-every: 1 in closed loop,
    /// until the end of --duration in open loop).
    #[arg(long)]
    reregisters: Option<u32>,
    /// Open loop with --reregisters: every UE does all of them, after --duration if need be
    /// (without it, the UEs still waiting for one at the end stop there: deregister at once
    /// with --deregister, all in the same instant)
    #[arg(long)]
    whole_plans: bool,
    /// Deregister each UE after its last registration.
    #[arg(long)]
    deregister: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// With --json: the first registrations per second of wall time (see above).
    #[arg(long)]
    timeline: bool,
    /// Print the subscribers as CSV for `imsctl subscriber import` and exit.
    #[arg(long)]
    csv: bool,
    /// With --csv: the visited networks they may register from (the P-CSCF's network).
    #[arg(long, default_value = "vims.net")]
    roaming: String,
    /// Call mode: the --count UEs register, then pairs of them call each other at --rate
    /// calls a second for --duration seconds.
    #[arg(long)]
    calls: bool,
    /// Call mode: seconds between a call's ACK and its BYE.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Call mode: registrations a second before the calls.
    #[arg(long, default_value_t = 500.0)]
    register_rate: f64,
}

/// How UEs are started.
#[derive(Clone, Copy)]
enum Mode {
    /// `total` UEs, at most `concurrency` alive.
    Closed { total: u64, concurrency: usize },
    /// `total` UEs, one every `1/rate` seconds.
    Open { total: u64, rate: f64 },
}

/// Shared by the socket tasks and the progress line.
#[derive(Default)]
struct Counters {
    started: AtomicU64,
    sent: AtomicU64,
    registered: AtomicU64,
    failed: AtomicU64,
    finished: AtomicU64,
}

/// What one socket's task measured.
#[derive(Default)]
struct Stats {
    started: u64,
    /// Successful phases.
    ok: BTreeMap<Phase, u64>,
    /// Failed phases by cause.
    failures: BTreeMap<String, u64>,
    /// UEs that did everything asked.
    finished_ok: u64,
    retransmissions: u64,
    /// Successful first registrations, whole (µs).
    register: Vec<u32>,
    /// REGISTER → 401 of every phase (µs).
    challenge: Vec<u32>,
    /// REGISTER(auth) → 2xx of every successful phase (µs).
    auth: Vec<u32>,
    /// Successful re-registrations, whole (µs).
    reregister: Vec<u32>,
    /// Successful deregistrations, whole (µs).
    deregister: Vec<u32>,
    /// `--timeline`.
    timeline: Option<Timeline>,
}

/// `--timeline`: per second since the run's start, the first registrations started in it.
struct Timeline {
    t0: Instant,
    /// `t0` on the wall clock (since the Unix epoch), so two runs' seconds line up.
    t0_unix: Duration,
    seconds: BTreeMap<u64, Second>,
}

impl Timeline {
    fn new(t0: Instant) -> Timeline {
        let t0_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(t0.elapsed());
        Timeline {
            t0,
            t0_unix,
            seconds: BTreeMap::new(),
        }
    }
}

/// One second of `--timeline`.
#[derive(Default)]
struct Second {
    registered: u64,
    refused: u64,
    failed: u64,
    /// The registered ones' whole latency (µs).
    latency: Vec<u32>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.started += o.started;
        for (k, v) in o.ok {
            *self.ok.entry(k).or_default() += v;
        }
        for (k, v) in o.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.finished_ok += o.finished_ok;
        self.retransmissions += o.retransmissions;
        self.register.extend(o.register);
        self.challenge.extend(o.challenge);
        self.auth.extend(o.auth);
        self.reregister.extend(o.reregister);
        self.deregister.extend(o.deregister);
        if let (Some(mine), Some(theirs)) = (&mut self.timeline, o.timeline) {
            for (t, b) in theirs.seconds {
                let m = mine.seconds.entry(t).or_default();
                m.registered += b.registered;
                m.refused += b.refused;
                m.failed += b.failed;
                m.latency.extend(b.latency);
            }
        }
    }

    fn take(&mut self, ev: Event, counters: &Counters) {
        let us = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        match ev {
            Event::Phase(p) => {
                if p.phase == Phase::Register
                    && let Some(timeline) = &mut self.timeline
                {
                    // By the second it started in: what an overload does to a registration
                    // shows where the load that met it was.
                    let t = timeline.t0.elapsed().saturating_sub(p.total).as_secs();
                    let second = timeline.seconds.entry(t).or_default();
                    match p.result {
                        Ok(()) => {
                            second.registered += 1;
                            second.latency.push(us(p.total));
                        }
                        Err(Failure::Status(503)) => second.refused += 1,
                        Err(_) => second.failed += 1,
                    }
                }
                self.retransmissions += u64::from(p.retransmissions);
                if let Some(c) = p.challenge {
                    self.challenge.push(us(c));
                }
                match p.result {
                    Ok(()) => {
                        *self.ok.entry(p.phase).or_default() += 1;
                        if let Some(a) = p.auth {
                            self.auth.push(us(a));
                        }
                        match p.phase {
                            Phase::Register => {
                                self.register.push(us(p.total));
                                counters.registered.fetch_add(1, Relaxed);
                            }
                            Phase::Reregister => self.reregister.push(us(p.total)),
                            Phase::Deregister => self.deregister.push(us(p.total)),
                        }
                    }
                    Err(why) => {
                        counters.failed.fetch_add(1, Relaxed);
                        let cause = match (p.phase, why) {
                            (Phase::Register, w) => w.to_string(),
                            (ph, w) => format!("{} {w}", ph.as_str()),
                        };
                        *self.failures.entry(cause).or_default() += 1;
                    }
                }
            }
            Event::Finished { ok, .. } => {
                counters.finished.fetch_add(1, Relaxed);
                if ok {
                    self.finished_ok += 1;
                }
            }
        }
    }
}

/// One socket's task: its swarm, the UEs `index ≡ shard (mod shards)`.
struct Shard {
    index: u64,
    shards: u64,
    /// Closed loop: this shard's share of the concurrency.
    share: usize,
}

#[allow(clippy::too_many_arguments)]
async fn run_shard(
    shard: Shard,
    socket: Arc<UdpSocket>,
    mut swarm: Swarm,
    mode: Mode,
    first: u32,
    count: u32,
    t0: Instant,
    counters: Arc<Counters>,
    whole_plans: bool,
    timeline: bool,
) -> Stats {
    let mut stats = Stats {
        timeline: timeline.then(|| Timeline::new(t0)),
        ..Stats::default()
    };
    let mut next = shard.index;
    let mut wound_down = false;
    let mut buf = vec![0u8; 65536];
    let total = match mode {
        Mode::Closed { total, .. } | Mode::Open { total, .. } => total,
    };
    loop {
        let now = Instant::now();
        // Start what is due.
        let mut next_start = None;
        while next < total {
            let due = match mode {
                Mode::Closed { .. } => {
                    if swarm.alive() >= shard.share {
                        break;
                    }
                    now
                }
                Mode::Open { rate, .. } => t0 + Duration::from_secs_f64(next as f64 / rate),
            };
            if due > now {
                next_start = Some(due);
                break;
            }
            let subscriber = first.wrapping_add((next % u64::from(count.max(1))) as u32);
            swarm.start(subscriber, now);
            stats.started += 1;
            counters.started.fetch_add(1, Relaxed);
            next += shard.shards;
        }
        // Open loop: the whole schedule's end (--duration), not this shard's last start: with
        // many sockets and a low rate a shard starts its last UE long before, and its UEs
        // must go on re-registering until the end as the other shards' do.
        let schedule_end = match mode {
            Mode::Open { rate, .. } => Some(t0 + Duration::from_secs_f64(total as f64 / rate)),
            Mode::Closed { .. } => None,
        };
        if next >= total && !wound_down {
            match schedule_end {
                // --whole-plans: each UE carries out all its --reregisters, rather than
                // every UE still waiting for one deregistering in the same instant.
                Some(_) if whole_plans => wound_down = true,
                // No more re-registrations (waiting UEs deregister or finish).
                Some(end) if now >= end => {
                    swarm.wind_down(now);
                    wound_down = true;
                }
                Some(end) => next_start = Some(end),
                None => wound_down = true,
            }
        }
        let mut sent = 0;
        while let Some(t) = swarm.poll_transmit() {
            if let Err(e) = socket.send_to(&t.payload, t.to).await {
                // A lost datagram: Timer E retransmits it.
                tracing_free_warn(&e);
            }
            sent += 1;
        }
        counters.sent.fetch_add(sent, Relaxed);
        while let Some(ev) = swarm.poll_event() {
            stats.take(ev, &counters);
        }
        if next >= total && swarm.alive() == 0 {
            break;
        }
        let wake = [swarm.poll_timeout(), next_start]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let now = Instant::now();
                if let Ok((n, from)) = r {
                    swarm.handle_datagram(now, from, &buf[..n]);
                }
                // Take what else is queued before sending.
                for _ in 0..256 {
                    match socket.try_recv_from(&mut buf) {
                        Ok((n, from)) => swarm.handle_datagram(now, from, &buf[..n]),
                        Err(_) => break,
                    }
                }
                swarm.handle_timeout(now);
            }
            () = sleep_until(wake) => swarm.handle_timeout(Instant::now()),
        }
    }
    stats
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Send errors (e.g. ENOBUFS under load) are retried by Timer E; say so once.
fn tracing_free_warn(e: &std::io::Error) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Relaxed) {
        eprintln!("ims-load: a send failed ({e}); retransmissions will cover it");
    }
}

/// The UE's settings every swarm of this run shares; `i` seeds it.
fn swarm_config(
    a: &Args,
    credentials: &SwarmCredentials,
    local: SocketAddr,
    i: usize,
) -> SwarmConfig {
    let mut cfg = SwarmConfig::new(
        a.domain.clone(),
        a.prefix.clone(),
        a.pcscf,
        local,
        credentials.clone(),
        random_seed(i as u64),
    );
    cfg.expires = a.expires;
    cfg.timeout = Duration::from_secs(a.timeout);
    cfg
}

/// One progress line on stderr: rewritten in place on a terminal, else a line each.
fn progress_line(tty: bool, line: &str) {
    if tty {
        eprint!("\r{line}\x1b[K");
    } else {
        eprintln!("{line}");
    }
}

/// p50, p90, p99 and the maximum of sorted µs values.
fn pcts(sorted: &[u32]) -> [Duration; 4] {
    [0.5, 0.9, 0.99, 1.0].map(|p| percentile(sorted, p))
}

/// Those percentiles as the summary's JSON object, ms with µs precision.
fn lat(p: [Duration; 4]) -> serde_json::Value {
    let m = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    serde_json::json!({"p50": m(p[0]), "p90": m(p[1]), "p99": m(p[2]), "max": m(p[3])})
}

fn percentile(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Duration::from_micros(u64::from(sorted[i.min(sorted.len() - 1)]))
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// The process's CPU time (user + system), from /proc (Linux; `None` elsewhere).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at its closing ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line (11 and 12 after the name), in
    // USER_HZ (100 on Linux).
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn bad(why: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {why}");
    ExitCode::from(2)
}

fn random_seed(i: u64) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(i);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn main() -> ExitCode {
    let a = Args::parse();
    let (k, op) = match (key("k", &a.k), key("op", &a.op)) {
        (Ok(k), Ok(op)) => (k, op),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    let last = a.first.saturating_add(a.count);
    if a.csv {
        println!("impi,impus,k,op,amf,roaming");
        for n in a.first..last {
            println!(
                "{p}{n}@{d},sip:{p}{n}@{d},{k},{op},8000,{r}",
                p = a.prefix,
                d = a.domain,
                k = a.k,
                op = a.op,
                r = a.roaming
            );
        }
        return ExitCode::SUCCESS;
    }
    if !a.transport.eq_ignore_ascii_case("udp") {
        return bad(format_args!(
            "--transport {}: ims-load speaks UDP only (ims-ue registers over TCP)",
            a.transport
        ));
    }
    if a.count == 0 {
        return bad("--count must be at least 1");
    }
    if a.sockets == 0 || a.sockets > 1024 {
        return bad("--sockets must be 1 to 1024");
    }
    if a.concurrency == 0 {
        return bad("--concurrency must be at least 1");
    }
    if a.timeout == 0 {
        return bad("--timeout must be at least 1 second");
    }
    let seconds = |name: &str, v: Option<f64>| match v {
        Some(s) if !(s.is_finite() && s > 0.0 && s < 1e7) => {
            Err(format!("--{name} must be a positive number of seconds"))
        }
        v => Ok(v),
    };
    let (rate, duration, every) = match (
        seconds("rate", a.rate),
        seconds("duration", a.duration),
        seconds("reregister-every", a.reregister_every),
    ) {
        (Ok(r), Ok(d), Ok(e)) => (r, d, e),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return bad(e),
    };
    let mode = match (rate, duration) {
        (None, None) => Mode::Closed {
            total: u64::from(a.count),
            concurrency: a.concurrency,
        },
        (Some(rate), Some(d)) => {
            let total = (rate * d).round() as u64;
            if total == 0 {
                return bad("--rate × --duration starts no UE");
            }
            Mode::Open { total, rate }
        }
        _ => return bad("--rate and --duration go together (open loop)"),
    };
    if a.reregisters.is_some() && every.is_none() {
        return bad("--reregisters needs --reregister-every");
    }
    if a.whole_plans && a.reregisters.is_none() {
        return bad("--whole-plans needs --reregisters");
    }
    let plan = Plan {
        reregister_every: every.map(Duration::from_secs_f64),
        reregisters: match (every, a.reregisters, mode) {
            (None, _, _) => 0,
            (Some(_), Some(n), _) => n,
            (Some(_), None, Mode::Closed { .. }) => 1,
            (Some(_), None, Mode::Open { .. }) => u32::MAX,
        },
        deregister: a.deregister,
    };
    let credentials = match &a.password {
        Some(p) => SwarmCredentials::Password(p.clone()),
        None => SwarmCredentials::Aka {
            k,
            opc: *ims_aka::milenage::compute_opc(&ims_aka::Key::new(k), &ims_aka::Op::new(op))
                .expose(),
        },
    };
    // An unspecified local address: the one the kernel routes toward the P-CSCF, so that
    // Via and Contact name a reachable address.
    let mut local_ip = a.local_ip;
    if local_ip.is_unspecified()
        && let Ok(addr) = std::net::UdpSocket::bind(SocketAddr::new(local_ip, 0))
            .and_then(|s| s.connect(a.pcscf).and_then(|()| s.local_addr()))
    {
        local_ip = addr.ip();
    }
    if a.calls {
        let Mode::Open { total, rate } = mode else {
            return bad("--calls needs --rate and --duration (calls a second, seconds)");
        };
        return calls_main(&a, credentials, local_ip, total, rate);
    }
    let shards = match mode {
        Mode::Closed { concurrency, .. } => a.sockets.min(concurrency),
        Mode::Open { .. } => a.sockets,
    };
    let rt = match tool::runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let counters = Arc::new(Counters::default());
    let cpu0 = cpu_time();
    let outcome = rt.block_on(async {
        let mut sockets = Vec::new();
        for _ in 0..shards {
            let at = SocketAddr::new(local_ip, 0);
            match UdpSocket::bind(at).await {
                Ok(s) => sockets.push(Arc::new(s)),
                Err(e) => return Err(format!("cannot bind {at}: {e}")),
            }
        }
        let progress = tokio::spawn(progress(counters.clone(), mode));
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            let local = socket.local_addr().unwrap_or(SocketAddr::new(local_ip, 0));
            let mut cfg = swarm_config(&a, &credentials, local, i);
            cfg.plan = plan;
            let share = match mode {
                Mode::Closed { concurrency, .. } => {
                    concurrency / shards + usize::from(i < concurrency % shards)
                }
                Mode::Open { .. } => usize::MAX,
            };
            let shard = Shard {
                index: i as u64,
                shards: shards as u64,
                share,
            };
            let swarm = Swarm::new(cfg, t0);
            tasks.spawn(run_shard(
                shard,
                socket,
                swarm,
                mode,
                a.first,
                a.count,
                t0,
                counters.clone(),
                a.whole_plans,
                a.timeline,
            ));
        }
        let mut stats = Stats {
            timeline: a.timeline.then(|| Timeline::new(t0)),
            ..Stats::default()
        };
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(s) => stats.merge(s),
                Err(e) => return Err(format!("a socket task failed: {e}")),
            }
        }
        let wall = t0.elapsed();
        progress.abort();
        Ok((stats, wall))
    });
    let (mut stats, wall) = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cpu = cpu_time()
        .zip(cpu0)
        .map(|(b, a)| b.saturating_sub(a))
        .unwrap_or_default();
    let (summary, all_ok) = summarize(&mut stats, wall, cpu, &a, plan, mode, shards);
    println!("{summary}");
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--calls`: the UEs register (one socket each), then call each other in pairs.
fn calls_main(
    a: &Args,
    credentials: SwarmCredentials,
    local_ip: IpAddr,
    calls: u64,
    rate: f64,
) -> ExitCode {
    if a.count < 2 || !a.count.is_multiple_of(2) || a.count > 20_000 {
        return bad("--calls: --count must be an even number of UEs, 2 to 20000");
    }
    if !(a.hold.is_finite() && (0.0..1e6).contains(&a.hold)) {
        return bad("--hold must be a number of seconds, 0 or more");
    }
    if !(a.register_rate.is_finite() && a.register_rate > 0.0) {
        return bad("--register-rate must be positive");
    }
    let rt = match tool::runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let counters = Arc::new(Counters::default());
    let ues = a.count as usize;
    let outcome = rt.block_on(async {
        let mut sockets = Vec::with_capacity(ues);
        for _ in 0..ues {
            let at = SocketAddr::new(local_ip, 0);
            match UdpSocket::bind(at).await {
                Ok(s) => sockets.push(Arc::new(s)),
                Err(e) => return Err(format!("cannot bind {at}: {e}")),
            }
        }
        // Each UE registers from its own socket: shard i starts subscriber first + i. A UE
        // refused (503 when the P-CSCF is busy, say) tries again a second later, three times
        // at most.
        let t0 = Instant::now();
        let mode = Mode::Open {
            total: ues as u64,
            rate: a.register_rate,
        };
        let mut pending: Vec<usize> = (0..ues).collect();
        let mut why = BTreeMap::new();
        for attempt in 0..3 {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let t1 = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for &i in &pending {
                let socket = &sockets[i];
                let local = socket.local_addr().unwrap_or(SocketAddr::new(local_ip, 0));
                let cfg = swarm_config(a, &credentials, local, i);
                let shard = Shard {
                    index: i as u64,
                    shards: ues as u64,
                    share: usize::MAX,
                };
                let run = run_shard(
                    shard,
                    socket.clone(),
                    Swarm::new(cfg, t1),
                    mode,
                    a.first,
                    a.count,
                    t1,
                    counters.clone(),
                    false,
                    false,
                );
                tasks.spawn(async move { (i, run.await) });
            }
            pending.clear();
            why.clear();
            while let Some(r) = tasks.join_next().await {
                match r {
                    Ok((i, s)) if s.ok.get(&Phase::Register).copied().unwrap_or(0) == 0 => {
                        pending.push(i);
                        for (w, n) in s.failures {
                            *why.entry(w).or_insert(0u64) += n;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("a socket task failed: {e}")),
                }
            }
        }
        if !pending.is_empty() {
            let why: Vec<String> = why.iter().map(|(w, n)| format!("{w} x{n}")).collect();
            return Err(format!(
                "{} of {ues} UEs did not register in three tries ({}); no calls placed",
                pending.len(),
                why.join("; ")
            ));
        }
        eprintln!(
            "ims-load: {ues} UEs registered in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        let plan = load_calls::CallPlan {
            rate,
            total: calls,
            hold: Duration::from_secs_f64(a.hold),
            timeout: Duration::from_secs(a.timeout),
            pcscf: a.pcscf,
            prefix: a.prefix.clone(),
            domain: a.domain.clone(),
            first: a.first,
        };
        let cpu0 = cpu_time();
        let stats = load_calls::run(sockets, plan, random_seed(u64::MAX)).await;
        let cpu = cpu_time()
            .zip(cpu0)
            .map(|(b, a)| b.saturating_sub(a))
            .unwrap_or_default();
        Ok((stats, cpu))
    });
    let (mut s, cpu) = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    s.setup.sort_unstable();
    s.ringing.sort_unstable();
    s.call.sort_unstable();
    let failed: u64 = s.failures.values().sum();
    let callee_failed: u64 = s.callee_failures.values().sum();
    let all_ok = s.completed == calls && failed == 0 && callee_failed == 0;
    let wall = s.wall.as_secs_f64().max(1e-9);
    let rate = s.completed as f64 / wall;
    let (setup, ringing, call) = (pcts(&s.setup), pcts(&s.ringing), pcts(&s.call));
    if a.json {
        let o = serde_json::json!({
            "mode": "calls",
            "ues": a.count,
            "started": s.started,
            "completed": s.completed,
            "failed": failed,
            "failures": s.failures,
            "callee_failures": s.callee_failures,
            "rate": (rate * 10.0).round() / 10.0,
            "wall_s": (wall * 1000.0).round() / 1000.0,
            "cpu_s": (cpu.as_secs_f64() * 1000.0).round() / 1000.0,
            "retransmissions": s.retransmissions,
            "latency_ms": {"setup": lat(setup), "ringing": lat(ringing), "call": lat(call)},
            "ok": all_ok,
        });
        println!("{o}");
    } else {
        let why: Vec<String> = s
            .failures
            .iter()
            .chain(&s.callee_failures)
            .map(|(w, n)| format!("{w} x{n}"))
            .collect();
        println!(
            "calls={} completed={} failed={failed}{} rate={rate:.1}/s wall={wall:.2}s \
             setup_p50={} setup_p90={} setup_p99={} setup_max={} \
             ringing_p50={} ringing_p99={} call_p50={} call_p99={} \
             retransmissions={} ues={} cpu={:.2}s",
            s.started,
            s.completed,
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            },
            ms(setup[0]),
            ms(setup[1]),
            ms(setup[2]),
            ms(setup[3]),
            ms(ringing[0]),
            ms(ringing[2]),
            ms(call[0]),
            ms(call[2]),
            s.retransmissions,
            a.count,
            cpu.as_secs_f64(),
        );
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The progress line on stderr, once a second.
async fn progress(c: Arc<Counters>, mode: Mode) {
    let tty = std::io::stderr().is_terminal();
    let total = match mode {
        Mode::Closed { total, .. } | Mode::Open { total, .. } => total,
    };
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    loop {
        tick.tick().await;
        let reg = c.registered.load(Relaxed);
        let line = format!(
            "ims-load: {:>4}s started={}/{total} sent={} registered={reg} failed={} done={} rate={}/s",
            t0.elapsed().as_secs(),
            c.started.load(Relaxed),
            c.sent.load(Relaxed),
            c.failed.load(Relaxed),
            c.finished.load(Relaxed),
            reg - last,
        );
        last = reg;
        progress_line(tty, &line);
    }
}

fn summarize(
    s: &mut Stats,
    wall: Duration,
    cpu: Duration,
    a: &Args,
    plan: Plan,
    mode: Mode,
    sockets: usize,
) -> (String, bool) {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    s.register.sort_unstable();
    s.challenge.sort_unstable();
    s.auth.sort_unstable();
    let ok = |p| s.ok.get(&p).copied().unwrap_or(0);
    let registered = ok(Phase::Register);
    let failed: u64 = s.failures.values().sum();
    let all_ok = s.finished_ok == s.started && failed == 0;
    let rate = registered as f64 / wall.as_secs_f64().max(1e-9);
    let (reg, ch, au) = (pcts(&s.register), pcts(&s.challenge), pcts(&s.auth));
    if a.json {
        let mut o = serde_json::json!({
            "mode": match mode { Mode::Closed { .. } => "closed", Mode::Open { .. } => "open" },
            "sockets": sockets,
            "started": s.started,
            "registered": registered,
            "failed": failed,
            "failures": s.failures,
            "rate": (rate * 10.0).round() / 10.0,
            "wall_s": (wall.as_secs_f64() * 1000.0).round() / 1000.0,
            "cpu_s": (cpu.as_secs_f64() * 1000.0).round() / 1000.0,
            "retransmissions": s.retransmissions,
            "latency_ms": {
                "register": lat(reg),
                "challenge": lat(ch),
                "auth": lat(au),
            },
            "ok": all_ok,
        });
        if plan.reregister_every.is_some() {
            o["reregistered"] = ok(Phase::Reregister).into();
            s.reregister.sort_unstable();
            o["latency_ms"]["reregister"] = lat(pcts(&s.reregister));
        }
        if let Some(timeline) = &mut s.timeline {
            let seconds: Vec<serde_json::Value> = timeline
                .seconds
                .iter_mut()
                .map(|(t, b)| {
                    b.latency.sort_unstable();
                    let p = pcts(&b.latency);
                    let m = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
                    serde_json::json!({
                        "t": t, "registered": b.registered, "refused": b.refused,
                        "failed": b.failed, "p50": m(p[0]), "p99": m(p[2]),
                    })
                })
                .collect();
            o["timeline"] = seconds.into();
            o["t0_unix_s"] = timeline.t0_unix.as_secs_f64().into();
        }
        if a.deregister {
            o["deregistered"] = ok(Phase::Deregister).into();
            s.deregister.sort_unstable();
            o["latency_ms"]["deregister"] = lat(pcts(&s.deregister));
        }
        return (o.to_string(), all_ok);
    }
    let why: Vec<String> = s
        .failures
        .iter()
        .map(|(w, n)| format!("{w} x{n}"))
        .collect();
    let line = format!(
        "registered={registered} failed={failed}{} {}{}rate={rate:.1}/s wall={:.2}s \
         p50={} p90={} p99={} max={} \
         401_p50={} 401_p90={} 401_p99={} 401_max={} \
         auth_p50={} auth_p90={} auth_p99={} auth_max={} \
         retransmissions={} sockets={sockets} cpu={:.2}s",
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({})", why.join("; "))
        },
        if plan.reregister_every.is_some() {
            format!("reregistered={} ", ok(Phase::Reregister))
        } else {
            String::new()
        },
        if a.deregister {
            format!("deregistered={} ", ok(Phase::Deregister))
        } else {
            String::new()
        },
        wall.as_secs_f64(),
        ms(reg[0]),
        ms(reg[1]),
        ms(reg[2]),
        ms(reg[3]),
        ms(ch[0]),
        ms(ch[1]),
        ms(ch[2]),
        ms(ch[3]),
        ms(au[0]),
        ms(au[1]),
        ms(au[2]),
        ms(au[3]),
        s.retransmissions,
        cpu.as_secs_f64(),
    );
    (line, all_ok)
}

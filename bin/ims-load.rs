//! `ims-load`: the load generator. Many simulated UEs (the `ims-ue` library, one socket each)
//! register with full Digest-AKAv1-MD5 through a P-CSCF (REGISTER, 401, REGISTER, 200), with
//! a bounded number in flight, and optionally deregister; it prints one summary line: how
//! many succeeded, the failures by status or error, the rate, and the latency percentiles
//! of a whole registration (both round trips); the rate is registrations per second of wall
//! time (with `--deregister` the wall time includes the deregistrations). Subscribers are `<prefix><n>@<domain>` with
//! one K/OP; `--csv` prints them for `imsctl subscriber import` instead of registering.
//! Exit code 0 when every UE registered (and deregistered, when asked), 1 otherwise.
mod tool;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use ims_ue::{AkaOptions, Credentials, Ue, UeConfig};

use tool::key;

#[derive(Parser)]
#[command(about = "Register many UEs through a P-CSCF and report the rate and latency")]
struct Args {
    /// The P-CSCF's address (ip:port).
    #[arg(long, default_value = "127.0.0.10:5060")]
    pcscf: SocketAddr,
    /// How many UEs (subscribers `<prefix>0` .. `<prefix><count-1>`).
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// The first subscriber number.
    #[arg(long, default_value_t = 0)]
    first: u32,
    /// How many registrations in flight at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
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
    /// The UEs' local address (each binds its own port on it).
    #[arg(long, default_value = "127.0.0.1")]
    local_ip: IpAddr,
    /// udp or tcp.
    #[arg(long, default_value = "udp")]
    transport: String,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    /// Deregister each UE after it registered.
    #[arg(long)]
    deregister: bool,
    /// Print the subscribers as CSV for `imsctl subscriber import` and exit.
    #[arg(long)]
    csv: bool,
    /// With --csv: the visited networks they may register from (the P-CSCF's network).
    #[arg(long, default_value = "vims.net")]
    roaming: String,
}

/// What one UE got.
enum Result1 {
    Ok { reg: Duration, dereg: Option<u16> },
    Failed(String),
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

fn main() -> ExitCode {
    let a = Args::parse();
    let (k, op) = match (key("k", &a.k), key("op", &a.op)) {
        (Ok(k), Ok(op)) => (k, op),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
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
    let transport = match a.transport.to_ascii_lowercase().as_str() {
        "udp" => ims_net::sip::Transport::Udp,
        "tcp" => ims_net::sip::Transport::Tcp,
        t => {
            eprintln!("error: --transport {t}: udp or tcp");
            return ExitCode::from(2);
        }
    };
    let opc =
        *ims_aka::milenage::compute_opc(&ims_aka::Key::new(k), &ims_aka::Op::new(op)).expose();
    let rt = match tool::runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let a = Arc::new(a);
    let (results, wall) = rt.block_on(async {
        let gate = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let t0 = Instant::now();
        for n in a.first..last {
            let Ok(permit) = gate.clone().acquire_owned().await else {
                break;
            };
            let a = a.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let cfg = UeConfig {
                    impi: format!("{}{n}@{}", a.prefix, a.domain),
                    impu: format!("sip:{}{n}@{}", a.prefix, a.domain),
                    domain: a.domain.clone(),
                    pcscf: a.pcscf,
                    transport,
                    local: SocketAddr::new(a.local_ip, 0),
                    credentials: Credentials::Aka {
                        k,
                        opc,
                        sqn_ms: 0,
                        options: AkaOptions::default(),
                    },
                    timeout: Duration::from_secs(a.timeout.max(1)),
                    ipsec: None,
                };
                let mut ue = match Ue::start(cfg).await {
                    Ok(u) => u,
                    Err(e) => return Result1::Failed(e.to_string()),
                };
                let t = Instant::now();
                let reg = match ue.register(600).await {
                    Ok(o) if (200..300).contains(&o.status) => t.elapsed(),
                    Ok(o) => return Result1::Failed(o.status.to_string()),
                    Err(e) => return Result1::Failed(e.to_string()),
                };
                let dereg = if a.deregister {
                    Some(ue.register(0).await.map_or(0, |o| o.status))
                } else {
                    None
                };
                Result1::Ok { reg, dereg }
            });
        }
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            out.push(r.unwrap_or_else(|e| Result1::Failed(format!("task: {e}"))));
        }
        (out, t0.elapsed())
    });
    let mut lat: Vec<Duration> = Vec::new();
    let mut failures: BTreeMap<String, u32> = BTreeMap::new();
    let mut deregistered = 0u32;
    for r in &results {
        match r {
            Result1::Ok { reg, dereg } => {
                lat.push(*reg);
                if dereg.is_some_and(|s| (200..300).contains(&s)) {
                    deregistered += 1;
                }
            }
            Result1::Failed(why) => *failures.entry(why.clone()).or_default() += 1,
        }
    }
    lat.sort_unstable();
    let ok = lat.len() as u32;
    let failed: u32 = failures.values().sum();
    let rate = f64::from(ok) / wall.as_secs_f64().max(1e-9);
    let why: Vec<String> = failures.iter().map(|(w, n)| format!("{w} x{n}")).collect();
    println!(
        "registered={ok} failed={failed}{} {}rate={rate:.1}/s wall={:.2}s p50={} p90={} p99={} max={}",
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({})", why.join("; "))
        },
        if a.deregister {
            format!("deregistered={deregistered} ")
        } else {
            String::new()
        },
        wall.as_secs_f64(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
    let all = ok == a.count && (!a.deregister || deregistered == a.count);
    if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

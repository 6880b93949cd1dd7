//! `ims-load --calls`: the call phase. Every UE has registered from a socket of its own (the
//! P-CSCF knows a UE by its flow); pair `j` is UE `2j` calling UE `2j+1`. Calls start in open
//! loop (`--rate` a second for `--duration` seconds, call `k` from pair `k mod pairs`), each
//! INVITE → 180 → 200 → ACK → (`--hold`) → BYE → 200 through the whole core, one
//! [`ims_ue::calls::CallAgent`] (sans-io) and one task per socket.
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ims_ue::calls::{CallAgent, CallConfig, CallEvent};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Shared by the socket tasks and the progress line.
#[derive(Default)]
pub struct CallCounters {
    started: AtomicU64,
    answered: AtomicU64,
    ended: AtomicU64,
    failed: AtomicU64,
}

/// What the call phase measured.
#[derive(Default)]
pub struct CallStats {
    /// Calls started.
    pub started: u64,
    /// Calls that ended well (answered and hung up).
    pub completed: u64,
    /// Placed calls that failed, by cause.
    pub failures: BTreeMap<String, u64>,
    /// Callee sides that failed (no ACK, no BYE), by cause.
    pub callee_failures: BTreeMap<String, u64>,
    /// INVITE → 200 of answered calls (µs).
    pub setup: Vec<u32>,
    /// INVITE → 180 (µs).
    pub ringing: Vec<u32>,
    /// INVITE → the BYE's 200 of completed calls (µs).
    pub call: Vec<u32>,
    /// Retransmissions of INVITEs and BYEs.
    pub retransmissions: u64,
    /// The call phase's wall time.
    pub wall: Duration,
}

impl CallStats {
    fn merge(&mut self, o: CallStats) {
        self.started += o.started;
        self.completed += o.completed;
        for (k, v) in o.failures {
            *self.failures.entry(k).or_default() += v;
        }
        for (k, v) in o.callee_failures {
            *self.callee_failures.entry(k).or_default() += v;
        }
        self.setup.extend(o.setup);
        self.ringing.extend(o.ringing);
        self.call.extend(o.call);
        self.retransmissions += o.retransmissions;
    }

    fn take(&mut self, ev: CallEvent, c: &CallCounters) {
        let us = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        match ev {
            CallEvent::Placed(r) => {
                self.retransmissions += u64::from(r.retransmissions);
                if let Some(d) = r.ringing {
                    self.ringing.push(us(d));
                }
                if let Some(d) = r.setup {
                    self.setup.push(us(d));
                    c.answered.fetch_add(1, Relaxed);
                }
                match r.result {
                    Ok(()) => {
                        self.completed += 1;
                        self.call.push(us(r.total));
                    }
                    Err(why) => {
                        c.failed.fetch_add(1, Relaxed);
                        *self.failures.entry(why.to_string()).or_default() += 1;
                    }
                }
                c.ended.fetch_add(1, Relaxed);
            }
            CallEvent::Answered(Err(why)) => {
                *self.callee_failures.entry(why.to_string()).or_default() += 1;
            }
            CallEvent::Answered(Ok(())) => {}
        }
    }
}

/// How the call phase runs.
#[derive(Clone)]
pub struct CallPlan {
    /// New calls a second.
    pub rate: f64,
    /// Calls in all.
    pub total: u64,
    /// Between ACK and BYE.
    pub hold: Duration,
    /// Give up on an answer after this.
    pub timeout: Duration,
    /// The P-CSCF.
    pub pcscf: SocketAddr,
    /// `<prefix><n>@<domain>`: UE `i` is subscriber `first + i`.
    pub prefix: String,
    /// The home domain.
    pub domain: String,
    /// The first subscriber.
    pub first: u32,
}

/// Runs the calls over `sockets` (UE `i` registered from `sockets[i]`; an even number).
pub async fn run(sockets: Vec<Arc<UdpSocket>>, plan: CallPlan, seed: u64) -> CallStats {
    let pairs = (sockets.len() / 2) as u64;
    let counters = Arc::new(CallCounters::default());
    let (done_tx, done_rx) = watch::channel(false);
    let progress = tokio::spawn(progress(counters.clone(), plan.total));
    let t0 = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    let mut callees = tokio::task::JoinSet::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let n = plan.first.wrapping_add(i as u32);
        let local = match socket.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let user = format!("{}{n}", plan.prefix);
        let mut cfg = CallConfig::new(
            local,
            plan.pcscf,
            format!("sip:{user}@{}", plan.domain),
            user,
            seed ^ (i as u64).wrapping_mul(0x9e37_79b9),
        );
        cfg.hold = plan.hold;
        cfg.timeout = plan.timeout;
        let agent = CallAgent::new(cfg, t0);
        let pair = (i / 2) as u64;
        let role = if i % 2 == 0 && pair < pairs {
            let callee = plan.first.wrapping_add(i as u32 + 1);
            Role::Caller {
                pair,
                pairs,
                callee: format!("sip:{}{callee}@{}", plan.prefix, plan.domain),
            }
        } else {
            Role::Callee
        };
        let task = run_socket(
            socket,
            agent,
            role,
            plan.clone(),
            t0,
            counters.clone(),
            done_rx.clone(),
        );
        if i % 2 == 0 {
            callers.spawn(task);
        } else {
            callees.spawn(task);
        }
    }
    let mut stats = CallStats::default();
    while let Some(r) = callers.join_next().await {
        if let Ok(s) = r {
            stats.merge(s);
        }
    }
    stats.wall = t0.elapsed();
    let _ = done_tx.send(true);
    while let Some(r) = callees.join_next().await {
        if let Ok(s) = r {
            stats.merge(s);
        }
    }
    progress.abort();
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    stats
}

enum Role {
    /// Places calls `pair`, `pair + pairs`, ... to `callee`.
    Caller {
        pair: u64,
        pairs: u64,
        callee: String,
    },
    /// Answers until told the callers are done.
    Callee,
}

async fn run_socket(
    socket: Arc<UdpSocket>,
    mut agent: CallAgent,
    role: Role,
    plan: CallPlan,
    t0: Instant,
    counters: Arc<CallCounters>,
    mut done: watch::Receiver<bool>,
) -> CallStats {
    let mut stats = CallStats::default();
    let mut buf = vec![0u8; 65536];
    let mut next = match &role {
        Role::Caller { pair, .. } => *pair,
        Role::Callee => plan.total,
    };
    let mut finished = false;
    loop {
        let now = Instant::now();
        let mut next_start = None;
        if let Role::Caller { pairs, callee, .. } = &role {
            while next < plan.total {
                let due = t0 + Duration::from_secs_f64(next as f64 / plan.rate);
                if due > now {
                    next_start = Some(due);
                    break;
                }
                agent.call(callee, now);
                stats.started += 1;
                counters.started.fetch_add(1, Relaxed);
                next += pairs;
            }
        }
        while let Some(t) = agent.poll_transmit() {
            // A lost datagram is retransmitted by the agent's timers.
            let _ = socket.send_to(&t.payload, t.to).await;
        }
        while let Some(ev) = agent.poll_event() {
            stats.take(ev, &counters);
        }
        let callers_done = finished || *done.borrow();
        match role {
            Role::Caller { .. } if next >= plan.total && agent.placed_alive() == 0 => break,
            Role::Callee if callers_done => break,
            _ => {}
        }
        let wake = [agent.poll_timeout(), next_start]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let now = Instant::now();
                if let Ok((n, from)) = r {
                    agent.handle_datagram(now, from, &buf[..n]);
                }
                for _ in 0..256 {
                    match socket.try_recv_from(&mut buf) {
                        Ok((n, from)) => agent.handle_datagram(now, from, &buf[..n]),
                        Err(_) => break,
                    }
                }
                agent.handle_timeout(now);
            }
            () = crate::sleep_until(wake) => agent.handle_timeout(Instant::now()),
            r = done.changed(), if !finished => {
                finished = r.is_err() || *done.borrow();
            }
        }
    }
    stats
}

/// The progress line on stderr, once a second.
async fn progress(c: Arc<CallCounters>, total: u64) {
    let tty = std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    loop {
        tick.tick().await;
        let ended = c.ended.load(Relaxed);
        let line = format!(
            "ims-load: {:>4}s calls started={}/{total} answered={} ended={ended} failed={} rate={}/s",
            t0.elapsed().as_secs(),
            c.started.load(Relaxed),
            c.answered.load(Relaxed),
            c.failed.load(Relaxed),
            ended - last,
        );
        last = ended;
        crate::progress_line(tty, &line);
    }
}

//! The SQN survives `kill -9`: the hss daemon is killed while MARs are in flight (checked:
//! some are never answered), three
//! times, and after every restart the next vector's SQN is above every SQN handed out
//! before, and no SQN was ever handed out twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../crates/hss/tests/it/cxclient.rs"]
mod cxclient;

use cxclient::{CxClient, mar, sqn_of};
use ims_diameter::peer::Event;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HSS: &str = env!("CARGO_BIN_EXE_hss");
const K: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const OP: &str = "cdc202d5123e20f62b6d676ac72cb318";
const OPC: &str = "cd63cb71954a9f4e48a5994e37a02baf";
const IMPI: &str = "alice.private@hims.net";
const IMPU: &str = "sip:alice@hims.net";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(cfg: &std::path::Path, admin: &str) -> Child {
    let child = Command::new(HSS)
        .arg("-c")
        .arg(cfg)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.get(format!("{admin}/health")).call().is_err() {
        assert!(Instant::now() < deadline, "hss did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[test]
fn sqn_strictly_increases_across_kill_9() {
    let dir = ims_testkit::scratch_dir("hss-sqn");
    let (admin_port, cx_port) = (free_port(), free_port());
    let cfg = dir.join("hss.toml");
    std::fs::write(
        &cfg,
        format!(
            "database = \"sqlite://{}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nhome_network = \"hims.net\"\n\
             [diameter]\nlisten = \"127.0.0.1:{cx_port}\"\nallowed_peers = [\"scscf1.hims.net\"]\n",
            dir.join("hss.sqlite").display()
        ),
    )
    .unwrap();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let cx: SocketAddr = format!("127.0.0.1:{cx_port}").parse().unwrap();
    let mut hss = start(&cfg, &admin);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent
        .post(format!("{admin}/v1/subscribers"))
        .send_json(serde_json::json!({"impi": IMPI, "impus": [IMPU], "aka": {"k": K, "op": OP}}))
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    let mut all: Vec<u64> = Vec::new();
    for round in 0..3 {
        let mut c = CxClient::connect(cx, "scscf1.hims.net").expect("connect");
        // The first answer after a restart must be above everything seen before.
        let first = sqn_of(&c.ask(mar(IMPI, IMPU, "scscf1.hims.net")), K, OPC);
        if let Some(max) = all.iter().max() {
            assert!(
                first > *max,
                "round {round}: SQN {first} not above {max}: reused after kill -9"
            );
        }
        all.push(first);
        c.events.clear();
        // Many MARs in flight (a new SQN block is written every 32), and kill -9 after the
        // first few answers.
        const SENT: usize = 1000;
        for _ in 0..SENT {
            c.peer
                .send_request(Instant::now(), mar(IMPI, IMPU, "scscf1.hims.net"))
                .unwrap();
        }
        let mut got = 0;
        c.pump_until(Duration::from_secs(5), |e| {
            if matches!(e, Event::Answer { .. }) {
                got += 1;
            }
            got >= 3
        });
        hss.kill().unwrap(); // SIGKILL
        hss.wait().unwrap();
        c.pump_until(Duration::from_secs(3), |e| matches!(e, Event::Down(_)));
        let mut answered = 0;
        for e in &c.events {
            if let Event::Answer { bytes, .. } = e {
                all.push(sqn_of(bytes, K, OPC));
                answered += 1;
            }
        }
        eprintln!("round {round}: {answered} of {SENT} MARs answered before the kill");
        assert!(
            (3..SENT).contains(&answered),
            "round {round}: {answered} of {SENT} MARs answered: the kill must come while \
             some are still in flight"
        );
        hss = start(&cfg, &admin);
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "an SQN was handed out twice");
    assert!(n >= 3 * 4, "answers seen: {n}");
    let _ = hss.kill();
    let _ = hss.wait();
}

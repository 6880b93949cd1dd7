//! Issue #18: a lab user's mistake is one clear line in the logs and a SIP error at once, not
//! a silent 401 loop or a UE timing out. Each test starts the namespace lab ([`crate::lab`])
//! with one mistake in its configuration, registers our UE, and checks the status the UE got,
//! that it came well within the UE's wait, and that the daemon at fault logged exactly one
//! warning naming the bad value:
//!
//! - a home domain no DNS name serves (the UE's Request-URI): the P-CSCF's `404`.

use std::time::{Duration, Instant};

use ims_net::sip::Transport::Udp;
use ims_testkit::sipp;
use ims_ue::UeConfig;

use crate::lab::{Lab, aka_ue};

/// The longest a refusal may take: well under the UE's 5 s wait (and SIP's 32 s Timer F).
const AT_ONCE: Duration = Duration::from_secs(2);

/// The lines of `daemon`'s log at WARN level that contain `needle`.
fn warnings(lab: &Lab, daemon: &str, needle: &str) -> Vec<String> {
    lab.daemons
        .iter()
        .filter(|(n, _)| n == daemon)
        .flat_map(|(_, c)| {
            c.log()
                .lines()
                .filter(|l| l.contains(" WARN ") && l.contains(needle))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The lab with every CSCF started after `mistake` edited its configs; waits until the HSS
/// has `peers` Diameter peers and the P-CSCF answers.
fn lab_with(tag: &str, log: &str, mistake: impl FnOnce(&Lab), peers: usize) -> Option<Lab> {
    let mut lab = Lab::start_hss(tag, log)?;
    mistake(&lab);
    lab.spawn("home", "scscf");
    lab.spawn("home", "icscf");
    lab.spawn("visited", "pcscf");
    lab.wait_peers(peers);
    lab.wait_pcscf();
    Some(lab)
}

fn bob() -> UeConfig {
    aka_ue(
        "bob.private@hims.net",
        "sip:bob@hims.net",
        sipp::TEST_K,
        0,
        Udp,
    )
}

/// One REGISTER of `cfg`: its outcome and how long it took.
fn register(lab: &Lab, cfg: UeConfig) -> (ims_ue::Outcome, Duration) {
    let t = Instant::now();
    let mut out = lab
        .ue(cfg, &[600])
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    (out.remove(0), t.elapsed())
}

#[test]
fn mistyped_home_domain_gets_404_and_one_warning() {
    let Some(lab) = lab_with("e2ebaddom", "info", |_| {}, 2) else {
        return;
    };
    let cfg = UeConfig {
        domain: "hims.nt".into(),
        ..bob()
    };
    for attempt in 1..=2 {
        let (out, took) = register(&lab, cfg.clone());
        assert_eq!(out.status, 404, "attempt {attempt}\n{}", lab.logs());
        assert_eq!(out.challenges, 0, "never a 401: {}", lab.logs());
        assert!(took < AT_ONCE, "attempt {attempt} took {took:?}");
        // One warning per REGISTER refused, naming the domain; nothing else warns.
        let w = warnings(&lab, "pcscf", "hims.nt");
        assert_eq!(w.len(), attempt, "{w:#?}\n{}", lab.logs());
        assert!(w[0].contains("domain=hims.nt"), "{w:#?}");
        for d in ["icscf", "scscf", "hss"] {
            assert_eq!(warnings(&lab, d, "").len(), 0, "{}", lab.logs());
        }
    }
    // The right domain still registers.
    let (out, _) = register(&lab, bob());
    assert_eq!(out.status, 200, "{}", lab.logs());
    if std::env::var_os("MISCONFIG_DUMP").is_some() {
        eprintln!("{}", lab.logs());
    }
}

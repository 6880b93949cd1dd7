//! Issue #18: a lab user's mistake is one clear line in the logs and a SIP error at once, not
//! a silent 401 loop or a UE timing out. Each test starts the namespace lab ([`crate::lab`])
//! with one mistake in its configuration, registers our UE, and checks the status the UE got,
//! that it came well within the UE's wait, and that the daemon at fault logged exactly one
//! warning naming the bad value:
//!
//! - a home domain no DNS name serves (the UE's Request-URI): the P-CSCF's `404`;
//! - an HSS address where nothing listens, in the S-CSCF's config (`503` with Retry-After)
//!   or in the I-CSCF's (its `480` with Retry-After, TS 24.229 §5.3.1.2's answer for an HSS
//!   it cannot ask), the warning once per link state however often the client retries;
//! - a `destination_realm` the HSS does not serve (3003 DIAMETER_REALM_NOT_SERVED), at the
//!   S-CSCF or the I-CSCF: `500`, the node's own configuration at fault.

use std::time::{Duration, Instant};

use ims_net::sip::Transport::Udp;
use ims_testkit::sipp;
use ims_ue::UeConfig;

use crate::lab::{Lab, aka_ue};

/// The longest a refusal may take: well under the UE's 5 s wait (and SIP's 32 s Timer F).
const AT_ONCE: Duration = Duration::from_secs(2);

/// The HSS's Diameter address in the lab, and one where nothing listens.
const HSS_CX: &str = "10.10.4.4:3868";
const NOBODY: &str = "10.10.4.4:3999";

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

/// Replaces `from` by `to` in the lab's config `file` (the test's one mistake).
fn edit(lab: &Lab, file: &str, from: &str, to: &str) {
    let path = lab.dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "no `{from}` in {file}:\n{text}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
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

/// Waits (up to 20 s) until `daemon`'s log holds `line` `n` times.
fn wait_log_count(lab: &Lab, daemon: &str, line: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let count = || {
        lab.daemons
            .iter()
            .filter(|(d, _)| d == daemon)
            .map(|(_, c)| c.log().matches(line).count())
            .sum::<usize>()
    };
    while count() < n {
        assert!(
            Instant::now() < deadline,
            "not {n} `{line}` in 20 s\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// The S-CSCF's `hss` names a port where nothing listens: each REGISTER gets 503 with
/// Retry-After at once (the S-CSCF's, made the I-CSCF's own as RFC 3261 §16.7 asks), and the
/// S-CSCF's log holds one warning naming that address however many times its client retried.
#[test]
fn scscf_with_unreachable_hss_gets_503_and_one_warning() {
    unreachable_hss("e2enohss", "scscf", 503, "icscf");
}

/// The I-CSCF's `hss` names a port where nothing listens: each REGISTER gets its 480 with
/// Retry-After at once, and its log holds one warning naming that address.
#[test]
fn icscf_with_unreachable_hss_gets_480_and_one_warning() {
    unreachable_hss("e2enohssi", "icscf", 480, "scscf");
}

/// `daemon`'s `hss` set to [`NOBODY`]: two REGISTERs get `status` with Retry-After at once,
/// never a 401, while its client retries (its debug lines counted); its log holds exactly one
/// warning, naming that address; `other` (the other CSCF) warns of nothing.
fn unreachable_hss(tag: &str, daemon: &str, status: u16, other: &str) {
    let Some(lab) = lab_with(
        tag,
        "info,ims_net::diameter::client=debug",
        |lab| edit(lab, &format!("{daemon}.toml"), HSS_CX, NOBODY),
        1,
    ) else {
        return;
    };
    // The client has retried at least twice (back-off 1 s, then 2 s) by the end.
    for attempt in 1..=2 {
        let (out, took) = register(&lab, bob());
        assert_eq!(out.status, status, "attempt {attempt}\n{}", lab.logs());
        assert_eq!(out.challenges, 0, "never a 401: {}", lab.logs());
        assert!(
            out.response
                .header_str(ims_sip::HeaderName::RetryAfter)
                .is_some(),
            "{:?}",
            out.response
        );
        assert!(took < AT_ONCE, "attempt {attempt} took {took:?}");
        wait_log_count(&lab, daemon, "Diameter connect failed again", attempt);
    }
    let w = warnings(&lab, daemon, NOBODY);
    assert_eq!(w.len(), 1, "{w:#?}\n{}", lab.logs());
    assert!(w[0].contains("unreachable"), "{w:#?}");
    assert_eq!(warnings(&lab, daemon, "").len(), 1, "{}", lab.logs());
    assert_eq!(warnings(&lab, other, "").len(), 0, "{}", lab.logs());
}

/// A CSCF whose `destination_realm` is mistyped: the HSS answers 3003
/// DIAMETER_REALM_NOT_SERVED, the UE gets `500` at once (not 403: the user is not at fault;
/// not 480/503: it will not pass), and the CSCF logs one warning naming the realm.
#[test]
fn mistyped_destination_realm_gets_500_and_one_warning() {
    let realm = "destination_realm = \"hims.net\"";
    let typo = "destination_realm = \"hims.nt\"";
    let Some(lab) = lab_with(
        "e2ebadrealm",
        "info",
        |lab| edit(lab, "scscf.toml", realm, typo),
        2,
    ) else {
        return;
    };
    let (out, took) = register(&lab, bob());
    assert_eq!(out.status, 500, "{}", lab.logs());
    assert_eq!(out.challenges, 0, "never a 401: {}", lab.logs());
    let reason = String::from_utf8_lossy(out.response.reason().unwrap_or_default());
    assert!(reason.contains("REALM_NOT_SERVED"), "{reason}");
    assert!(took < AT_ONCE, "took {took:?}");
    let w = warnings(&lab, "scscf", "destination_realm=hims.nt");
    assert_eq!(w.len(), 1, "{w:#?}\n{}", lab.logs());
    assert_eq!(warnings(&lab, "scscf", "").len(), 1, "{}", lab.logs());
    drop(lab);

    // The same at the I-CSCF: its UAR refused, the REGISTER never reaches the S-CSCF.
    let Some(lab) = lab_with(
        "e2ebadrealmi",
        "info",
        |lab| edit(lab, "icscf.toml", realm, typo),
        2,
    ) else {
        return;
    };
    let (out, took) = register(&lab, bob());
    assert_eq!(out.status, 500, "{}", lab.logs());
    assert!(took < AT_ONCE, "took {took:?}");
    let w = warnings(&lab, "icscf", "destination_realm=hims.nt");
    assert_eq!(w.len(), 1, "{w:#?}\n{}", lab.logs());
    assert_eq!(warnings(&lab, "icscf", "").len(), 1, "{}", lab.logs());
}

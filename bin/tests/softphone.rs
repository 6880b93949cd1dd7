//! A real softphone against our chain: linphonec (Debian `linphone-cli` 5.1) registers
//! `sip:carol@hims.net` with SIP Digest MD5 through P-CSCF → I-CSCF → S-CSCF → HSS in the
//! namespace lab of `lab/`, then unregisters; a second linphonec with a wrong password is
//! refused (403) and never registers. Then two linphonecs (carol and dave) call each other
//! through the core, with RTP both ways between them.
//!
//! linphonec runs in the `ue` namespace with its own HOME and config file in the lab's scratch
//! directory, and is driven through its command line on stdin (`status register`, `states
//! proxies`, `unregister`, `quit`); its answers are read from its stdout. Each outcome is
//! checked from three independent places: what linphonec says, what the P-CSCF and S-CSCF log,
//! and what tshark reads in a capture taken in the UE's namespace.
//!
//! Traps of this linphonec:
//! - Without `$HOME/.local/share/linphone/` (where it keeps its SQLite database) the core stays
//!   in `LinphoneGlobalStartup` forever: no SIP socket, no REGISTER, no error on stdout.
//! - The `register <identity> <proxy> <password>` command sends the user part (`carol`) as the
//!   Digest username; IMS wants the IMPI, so the account comes from the config file, with
//!   `[auth_info_0] username=carol` (matched against the From user) and
//!   `userid=carol@hims.net` (the Digest username sent).
//! - linphonec rewrites its config file as it goes (the password becomes `ha1`, `unregister`
//!   stores `reg_sendregister=0`): every run gets a fresh file.
//! - After a 403 to its authenticated REGISTER, liblinphone sometimes (it depends on how the
//!   401 and the 403 fall into its auth batch: "Authentication request not needed" or not)
//!   calls linphonec's auth_info_requested, and linphonec then reads the next stdin line as a
//!   password (`Password for carol on hims.net:`); at EOF that prompt loops forever. So the
//!   wrong-password run is never typed to: its state comes from its log (`moving from state
//!   [..] to [LinphoneRegistrationFailed]`) and it is ended with SIGTERM.
//! - Without `reg_route` (the outbound proxy) it sends a call straight to the first hop of
//!   the Service-Route (`scscf1.hims.net`, which the UE's namespace cannot even resolve)
//!   instead of through the P-CSCF.
//! - Its un-REGISTER reuses the last nonce (nc=00000002); our S-CSCF's nonces are single-use,
//!   so it is challenged again (401) before its 200. The capture check allows that.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use ims_testkit::netns::NsChild;
use lab::{Lab, P};

const TEST: &str = "linphonec_registers_with_digest_md5";

/// One linphonec in the `ue` namespace, driven through stdin.
struct Linphonec {
    child: NsChild,
    stdin: Option<ChildStdin>,
    /// stdout and stderr: the prompt and the answers to our commands.
    out: PathBuf,
    /// Its debug log (`-d 6`), with every SIP message it sent and received.
    log: PathBuf,
    /// Its public identity.
    impu: String,
}

/// Who a linphonec is and how it runs.
struct Account<'a> {
    /// User part of `sip:<user>@hims.net`; the IMPI is `<user>@hims.net`.
    user: &'a str,
    passwd: &'a str,
    /// Its SIP port (UDP only).
    port: u16,
    /// Its RTP port for audio.
    rtp_port: u16,
    /// `-a`: answers incoming calls by itself.
    auto_answer: bool,
}

impl Linphonec {
    /// Writes a fresh HOME and config for `sip:carol@hims.net` with `passwd`, listening on UDP
    /// `port` only, registering through the P-CSCF, and starts linphonec on them.
    fn start(lab: &Lab, exe: &Path, name: &str, port: u16, passwd: &str) -> Linphonec {
        let carol = Account {
            user: "carol",
            passwd,
            port,
            rtp_port: 7078,
            auto_answer: false,
        };
        Self::start_as(lab, exe, name, &carol)
    }

    /// As [`Linphonec::start`], for any account of the lab's domain.
    fn start_as(lab: &Lab, exe: &Path, name: &str, account: &Account<'_>) -> Linphonec {
        let Account {
            user,
            passwd,
            port,
            rtp_port,
            auto_answer,
        } = *account;
        let home = lab.dir.join(name);
        // Without its database directory linphonec's core never starts (see the header).
        std::fs::create_dir_all(home.join(".local/share/linphone")).unwrap();
        let rc = home.join("linphonerc");
        std::fs::write(
            &rc,
            format!(
                "[sip]\n\
                 sip_port={port}\n\
                 sip_tcp_port=0\n\
                 sip_tls_port=0\n\
                 default_proxy=0\n\
                 register_only_when_network_is_up=0\n\
                 [net]\n\
                 firewall_policy=0\n\
                 [rtp]\n\
                 audio_rtp_port={rtp_port}\n\
                 [sound]\n\
                 echocancellation=0\n\
                 [proxy_0]\n\
                 reg_proxy=<sip:{P}:5060;transport=udp>\n\
                 reg_route=<sip:{P}:5060;transport=udp;lr>\n\
                 reg_identity=sip:{user}@hims.net\n\
                 reg_expires=600\n\
                 reg_sendregister=1\n\
                 publish=0\n\
                 [auth_info_0]\n\
                 username={user}\n\
                 userid={user}@hims.net\n\
                 passwd={passwd}\n\
                 realm=hims.net\n\
                 domain=hims.net\n"
            ),
        )
        .unwrap();
        let out = home.join("stdout.txt");
        let log = home.join("linphonec.log");
        let mut cmd = lab.topo.command("ue", exe);
        cmd.arg("-c")
            .arg(&rc)
            .arg("-d")
            .arg("6")
            .arg("-l")
            .arg(&log)
            .args(auto_answer.then_some("-a"))
            .env("HOME", &home)
            .env_remove("DISPLAY")
            .current_dir(&home);
        let file = std::fs::File::create(&out).unwrap();
        cmd.stdin(Stdio::piped())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn linphonec: {e}"));
        let stdin = child.stdin.take();
        Linphonec {
            child: NsChild::new(child, &format!("linphonec ({name})")),
            stdin,
            out,
            log,
            impu: format!("sip:{user}@hims.net"),
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("linphonec's stdin is open");
        writeln!(stdin, "{line}").expect("write to linphonec");
        stdin.flush().unwrap();
    }

    /// Sends `cmd` until what linphonec prints after it contains `want` (`Some` with that
    /// output) or `timeout` has passed (`None`).
    fn ask(&mut self, cmd: &str, want: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let before = self.output().len();
            self.send(cmd);
            let sent = Instant::now();
            while sent.elapsed() < Duration::from_millis(250) {
                let out = self.output();
                let new = out.get(before..).unwrap_or_default();
                if new.contains(want) {
                    return Some(new.to_owned());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// What went wrong, for a failing assertion: its stdout and its log's SIP lines.
    fn report(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let sip: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("belle-sip")
                    || l.contains("Registration")
                    || l.contains("REGISTER")
                    || l.contains("INVITE")
                    || l.contains("BYE")
                    || l.contains("Call")
                    || l.starts_with("SIP/2.0")
            })
            .collect();
        format!(
            "---- linphonec stdout ----\n{}\n---- linphonec log ({}), SIP lines ----\n{}",
            self.output(),
            self.log.display(),
            sip.join("\n")
        )
    }

    /// Waits until its stdout has a line containing `want` (true) or `timeout` has passed,
    /// typing nothing.
    fn wait_output(&self, want: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.output().lines().any(|l| l.contains(want)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits until its account has reached registration state `state` (true) or `timeout`
    /// has passed, typing nothing.
    fn wait_state(&self, state: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.registration_states().iter().any(|s| s == state) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The registration states its account went through, in order, from its log
    /// (`... moving from state [A] to [B] ...`).
    fn registration_states(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(&format!("for identity [{}] moving from state", self.impu)))
            .filter_map(|l| {
                let to = l.split(" to [").nth(1)?;
                Some(to.split(']').next()?.to_owned())
            })
            .collect()
    }

    /// Ends it with SIGTERM (its handler shuts the core down and exits), SIGKILL after 2 s:
    /// for when it may sit in its password prompt, which does not take `quit`.
    fn terminate(&mut self) {
        // stdin stays open until it has gone: at EOF its prompt loops, printing.
        self.child.stop(Duration::from_secs(2));
        drop(self.stdin.take());
    }

    /// `quit`, then waits for it to exit (killed after 5 s).
    fn quit(&mut self) {
        self.send("quit");
        drop(self.stdin.take());
        if self.child.wait_timeout(Duration::from_secs(5)).is_none() {
            self.child.stop(Duration::from_secs(1));
        }
    }
}

/// The SIP messages of a capture, as tshark reads them: one row per message with Call-ID,
/// CSeq method, status code (empty for requests), Expires, and the Digest fields.
#[derive(Debug, Clone)]
struct Sip {
    src: String,
    call_id: String,
    method: String,
    status: String,
    expires: String,
    auth_username: String,
    auth_realm: String,
    auth_algorithm: String,
    auth_qop: String,
    www_authenticate: String,
}

fn sip_messages(tshark: &Path, pcap: &Path) -> Vec<Sip> {
    let fields = [
        "ip.src",
        "sip.Call-ID",
        "sip.CSeq.method",
        "sip.Status-Code",
        "sip.Expires",
        "sip.auth.username",
        "sip.auth.realm",
        "sip.auth.algorithm",
        "sip.auth.qop",
        "sip.WWW-Authenticate",
    ];
    let mut cmd = Command::new(tshark);
    cmd.arg("-r")
        .arg(pcap)
        .args(["-n", "-Y", "sip", "-T", "fields", "-E", "separator=|"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("tshark runs");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<String> = l.split('|').map(str::to_owned).collect();
            assert_eq!(f.len(), fields.len(), "tshark row {l:?}");
            Sip {
                src: f[0].clone(),
                call_id: f[1].clone(),
                method: f[2].clone(),
                status: f[3].clone(),
                expires: f[4].clone(),
                auth_username: f[5].clone(),
                auth_realm: f[6].clone(),
                auth_algorithm: f[7].clone(),
                auth_qop: f[8].clone(),
                www_authenticate: f[9].clone(),
            }
        })
        .collect()
}

/// `text` without ANSI escape sequences (the daemons colour their logs even into a file).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, then one final byte in @..~.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How many lines of `log` contain every one of `parts` (ANSI colours ignored).
fn count(log: &str, parts: &[&str]) -> usize {
    plain(log)
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

/// Waits (up to 5 s) until the lab's logs have a line with all of `parts`.
fn wait_log(lab: &Lab, parts: &[&str]) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if count(&lab.logs(), parts) > 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn linphonec_registers_with_digest_md5() {
    let Some(exe) = ims_testkit::require_tool(TEST, "linphonec") else {
        return;
    };
    let Some(tshark) = ims_testkit::require_tool(TEST, "tshark") else {
        return;
    };
    let Some(mut lab) = Lab::start("e2esoft") else {
        return;
    };
    let pcap = lab.topo.capture("ue", "eth0", &lab.dir.join("ue.pcap"));
    // Whole words: "deregistered" contains "registered".
    let registered = ["ims_pcscf: registered impi=carol@hims.net"];
    let s_registered = ["registrar: registered (200) impi=carol@hims.net"];
    let deregistered = ["ims_pcscf: deregistered impi=carol@hims.net"];
    let s_deregistered = ["registrar: deregistered (200) impi=carol@hims.net"];
    // The S-CSCF's one line naming the cause of a failed authentication.
    let auth_failed = [
        "registrar: carol@hims.net: wrong digest response",
        "cause=\"wrong_password\"",
    ];

    // The right password: linphonec registers, and says so.
    let mut good = Linphonec::start(&lab, &exe, "good", 5070, "carol-secret");
    let status = good.ask(
        "status register",
        "registered, identity=sip:carol@hims.net",
        Duration::from_secs(10),
    );
    assert!(
        status.is_some(),
        "linphonec did not register\n{}\n{}",
        good.report(),
        lab.logs()
    );
    assert!(
        good.ask(
            "states proxies",
            "LinphoneRegistrationOk",
            Duration::from_secs(2)
        )
        .is_some(),
        "{}",
        good.report()
    );
    // The P-CSCF and the S-CSCF saw it through: a 200 for the IMPI, not the user part.
    assert!(
        wait_log(&lab, &registered),
        "no P-CSCF registration\n{}",
        lab.logs()
    );
    let logs = lab.logs();
    assert_eq!(count(&logs, &registered), 1, "{logs}");
    assert_eq!(count(&logs, &s_registered), 1, "{logs}");
    assert_eq!(count(&logs, &auth_failed), 0, "{logs}");

    // Unregister: a REGISTER with Expires 0, which the P-CSCF sees answered.
    good.send("unregister");
    assert!(
        wait_log(&lab, &deregistered),
        "no P-CSCF deregistration\n{}\n{}",
        good.report(),
        lab.logs()
    );
    assert!(
        good.ask(
            "states proxies",
            "LinphoneRegistrationCleared",
            Duration::from_secs(5)
        )
        .is_some(),
        "{}",
        good.report()
    );
    assert!(
        count(&lab.logs(), &s_deregistered) == 1,
        "no S-CSCF deregistration\n{}",
        lab.logs()
    );
    good.quit();

    // A wrong password: challenged, answered, refused (403). Nothing is typed to this one:
    // after the 403 liblinphone may (depending on timing) ask linphonec for a password, and
    // linphonec's password prompt would eat the next command. Its log tells its state.
    let mut bad = Linphonec::start(&lab, &exe, "bad", 5072, "not-carols-secret");
    assert!(
        bad.wait_state("LinphoneRegistrationFailed", Duration::from_secs(10)),
        "linphonec with a wrong password was not refused\n{}\n{}",
        bad.report(),
        lab.logs()
    );
    assert!(
        wait_log(&lab, &auth_failed),
        "the S-CSCF did not refuse the wrong password\n{}",
        lab.logs()
    );
    bad.terminate();
    let states = bad.registration_states();
    assert!(
        states.iter().any(|s| s == "LinphoneRegistrationFailed")
            && !states.iter().any(|s| s == "LinphoneRegistrationOk"),
        "{states:?}\n{}",
        bad.report()
    );
    assert!(
        !good.output().contains("Password for"),
        "the right password was refused\n{}",
        good.report()
    );
    let states = good.registration_states();
    assert!(
        states.iter().any(|s| s == "LinphoneRegistrationOk")
            && states.last().map(String::as_str) == Some("LinphoneRegistrationCleared"),
        "{states:?}\n{}",
        good.report()
    );
    let logs = lab.logs();
    assert_eq!(
        count(&logs, &registered),
        1,
        "the wrong password registered\n{logs}"
    );
    assert_eq!(count(&logs, &s_registered), 1, "{logs}");
    assert_eq!(count(&logs, &auth_failed), 1, "{logs}");

    // The capture at the UE, read by tshark: the challenge was Digest MD5 with qop=auth in
    // realm hims.net, linphonec answered as the IMPI, got 200 OK and then deregistered (one
    // Call-ID), and the wrong password got 403 and never a 200 (another Call-ID).
    let file = pcap.stop();
    let msgs = sip_messages(&tshark, &file);
    let calls: Vec<String> = msgs.iter().fold(Vec::new(), |mut v, m| {
        if !v.contains(&m.call_id) {
            v.push(m.call_id.clone());
        }
        v
    });
    assert_eq!(calls.len(), 2, "two registration dialogs: {msgs:#?}");
    let of = |c: &str| -> Vec<Sip> { msgs.iter().filter(|m| m.call_id == c).cloned().collect() };
    for call in [&calls[0], &calls[1]] {
        let m = of(call);
        assert!(m.iter().all(|m| m.method == "REGISTER"), "{m:#?}");
        // Every request came from the UE, every response from the P-CSCF.
        for x in &m {
            let want = if x.status.is_empty() { "10.10.1.2" } else { P };
            assert_eq!(x.src, want, "{x:?}");
        }
        let challenge = m
            .iter()
            .find(|x| x.status == "401")
            .unwrap_or_else(|| panic!("no 401: {m:#?}"));
        assert!(
            challenge.www_authenticate.starts_with("Digest"),
            "{challenge:?}"
        );
        assert_eq!(challenge.auth_realm, "\"hims.net\"", "{challenge:?}");
        assert_eq!(challenge.auth_algorithm, "MD5", "{challenge:?}");
        assert!(challenge.auth_qop.contains("auth"), "{challenge:?}");
        // Every answer to a challenge names the IMPI.
        for x in m
            .iter()
            .filter(|x| x.status.is_empty() && !x.auth_username.is_empty())
        {
            assert_eq!(x.auth_username, "\"carol@hims.net\"", "{x:?}");
            assert_eq!(x.auth_algorithm, "MD5", "{x:?}");
        }
    }
    let good_msgs = of(&calls[0]);
    let statuses: Vec<&str> = good_msgs
        .iter()
        .filter(|x| !x.status.is_empty())
        .map(|x| x.status.as_str())
        .collect();
    assert_eq!(statuses.first(), Some(&"401"), "{good_msgs:#?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == "200").count(),
        2,
        "register and deregister: {good_msgs:#?}"
    );
    assert_eq!(statuses.last(), Some(&"200"), "{good_msgs:#?}");
    assert!(
        good_msgs
            .iter()
            .any(|x| x.status.is_empty() && x.expires == "0" && !x.auth_username.is_empty()),
        "an authenticated REGISTER with Expires 0: {good_msgs:#?}"
    );
    let bad_msgs = of(&calls[1]);
    let bad_statuses: Vec<&str> = bad_msgs
        .iter()
        .filter(|x| !x.status.is_empty())
        .map(|x| x.status.as_str())
        .collect();
    assert_eq!(bad_statuses, ["401", "403"], "{bad_msgs:#?}");
    assert!(
        bad_msgs
            .iter()
            .any(|x| x.status.is_empty() && x.auth_username == "\"carol@hims.net\""),
        "the wrong password was sent as a Digest answer: {bad_msgs:#?}"
    );
    lab.all_alive();
}

/// Writes 5 s of a 440 Hz tone as a WAV file (8 kHz, 16-bit mono PCM).
fn write_tone(path: &Path) {
    let rate = 8000u32;
    let samples: Vec<u8> = (0..rate * 5)
        .flat_map(|i| {
            let x = (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / f64::from(rate)).sin();
            ((x * 8000.0) as i16).to_le_bytes()
        })
        .collect();
    let mut wav = Vec::with_capacity(44 + samples.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(&samples);
    std::fs::write(path, wav).unwrap();
}

/// Issue #17: two real softphones registered through the core with SIP Digest call each
/// other. carol's linphonec calls `sip:dave@hims.net`; dave's answers by itself (`-a`). The
/// call is established on both sides (each says `connected` and that media streams are up),
/// RTP flows both ways directly between them (the core never touches the SDP: a capture in
/// the UEs' namespace sees packets from each RTP port to the other), the INVITE crossed the
/// P-CSCF, and carol hangs up: both sides say the call ended, and the BYE got its 200.
#[test]
fn two_linphonecs_call_each_other() {
    const CALL: &str = "two_linphonecs_call_each_other";
    let Some(exe) = ims_testkit::require_tool(CALL, "linphonec") else {
        return;
    };
    let Some(tshark) = ims_testkit::require_tool(CALL, "tshark") else {
        return;
    };
    let Some(mut lab) = Lab::start("e2esoftcall") else {
        return;
    };
    lab.imsctl(&[
        "subscriber",
        "add",
        "--impi",
        "dave@hims.net",
        "--impu",
        "sip:dave@hims.net",
        "--realm",
        "hims.net",
        "--password",
        "dave-secret",
        "--roaming",
        "vims.net",
    ]);
    let pcap = lab.topo.capture("ue", "any", &lab.dir.join("call.pcap"));
    let mut carol = Linphonec::start_as(
        &lab,
        &exe,
        "carol",
        &Account {
            user: "carol",
            passwd: "carol-secret",
            port: 5062,
            rtp_port: 7078,
            auto_answer: false,
        },
    );
    let mut dave = Linphonec::start_as(
        &lab,
        &exe,
        "dave",
        &Account {
            user: "dave",
            passwd: "dave-secret",
            port: 5064,
            rtp_port: 7088,
            auto_answer: true,
        },
    );
    for (phone, who) in [(&carol, "carol"), (&dave, "dave")] {
        assert!(
            phone.wait_state("LinphoneRegistrationOk", Duration::from_secs(10)),
            "{who} did not register\n{}\n{}",
            phone.report(),
            lab.logs()
        );
        assert!(
            wait_log(
                &lab,
                &[&format!("ims_pcscf: registered impi={who}@hims.net")]
            ),
            "{}",
            lab.logs()
        );
    }

    // No sound card here: each phone's microphone is a WAV file (linphonec's `soundcard use
    // files`, then `play`), or it would send next to no RTP.
    let tone = lab.dir.join("tone.wav");
    write_tone(&tone);
    carol.send("soundcard use files");
    dave.send("soundcard use files");
    carol.send("call sip:dave@hims.net");
    for (phone, who) in [(&carol, "carol"), (&dave, "dave")] {
        assert!(
            phone.wait_output("connected.", Duration::from_secs(10))
                && phone.wait_output("Media streams established", Duration::from_secs(5)),
            "{who}'s side of the call is not established\n{}\n{}",
            phone.report(),
            lab.logs()
        );
    }
    let play = format!("play {}", tone.display());
    carol.send(&play);
    dave.send(&play);
    // Let media flow for a while: this is the call's length, not a wait for a state.
    std::thread::sleep(Duration::from_secs(2));
    carol.send("terminate");
    for (phone, who) in [(&carol, "carol"), (&dave, "dave")] {
        assert!(
            phone.wait_output("ended", Duration::from_secs(10)),
            "{who}'s side of the call did not end\n{}\n{}",
            phone.report(),
            lab.logs()
        );
    }
    carol.quit();
    dave.quit();
    let file = pcap.stop();

    // RTP both ways, straight between the phones.
    let out = Command::new(&tshark)
        .arg("-r")
        .arg(&file)
        .args([
            "-n",
            "-Y",
            "udp.port == 7078 && udp.port == 7088",
            "-T",
            "fields",
            "-e",
            "udp.srcport",
            "-e",
            "udp.dstport",
        ])
        .output()
        .expect("tshark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let one_way = |from: &str, to: &str| {
        text.lines()
            .filter(|l| l.split('\t').collect::<Vec<_>>() == [from, to])
            .count()
    };
    let (c2d, d2c) = (one_way("7078", "7088"), one_way("7088", "7078"));
    assert!(
        c2d >= 10 && d2c >= 10,
        "RTP carol→dave {c2d} packets, dave→carol {d2c}\n{text}"
    );
    // The signalling went through the P-CSCF: INVITE and BYE from each phone to it and on
    // to the other, each answered.
    let sip = Command::new(&tshark)
        .arg("-r")
        .arg(&file)
        .args([
            "-n",
            "-Y",
            "sip.CSeq.method == \"INVITE\" || sip.CSeq.method == \"BYE\"",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "sip.Method",
            "-e",
            "sip.Status-Code",
        ])
        .output()
        .expect("tshark runs");
    let sip = String::from_utf8_lossy(&sip.stdout);
    for want in [
        "10.10.1.2\t10.10.2.2\tINVITE\t",
        "10.10.2.2\t10.10.1.2\tINVITE\t",
        "10.10.2.2\t10.10.1.2\t\t200",
        "10.10.1.2\t10.10.2.2\tBYE\t",
        "10.10.2.2\t10.10.1.2\tBYE\t",
    ] {
        assert!(sip.lines().any(|l| l == want), "no `{want}` in\n{sip}");
    }
    lab.all_alive();
}

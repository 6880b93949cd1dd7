//! The end-to-end lab the namespace tests share: every daemon from its binary and a config
//! written for the topology below, subscribers provisioned through `imsctl`.
//!
//! ```text
//!   ue 10.10.1.2 ── router ── visited 10.10.2.2 (P-CSCF pcscf1.vims.net, also fd00:10:2::2)
//!                     │ └──── dns 10.10.3.2 (ims-dns, port 53)
//!                     └────── home 10.10.4.2 I-CSCF, .3 S-CSCF, .4 HSS (.5 a second S-CSCF)
//! ```
//!
//! Subscribers: `alice.private@hims.net` (AKA, SIPp's keys), `bob.private@hims.net` (AKA, the
//! same keys), `carol@hims.net` (SIP Digest, password `carol-secret`); all may roam in
//! vims.net.
//!
//! Admin APIs: the HSS's at `10.10.4.4:8080` (token [`ADMIN_TOKEN`], through `imsctl`), the
//! S-CSCF's at [`SCSCF_ADMIN`] (loopback inside the home namespace: [`Lab::scscf_admin`]),
//! the P-CSCF's at [`PCSCF_ADMIN`] (loopback inside the visited namespace:
//! [`Lab::pcscf_admin`]). The P-CSCF keeps its registrations in `pcscf.sqlite` (issue #20: a
//! restarted P-CSCF still reaches its UEs).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ims_testkit::netns::{NsChild, Topology};
use ims_testkit::sipp;
use ims_ue::{AkaOptions, Credentials, Ue, UeConfig};

mod bins;
pub use bins::bin;

pub const P: &str = "10.10.2.2";
pub const I: &str = "10.10.4.2";
pub const S: &str = "10.10.4.3";
/// A second S-CSCF's address (`scscf2.hims.net`), for a test that adds one (the home node
/// does not have it unless the test adds it).
pub const S2: &str = "10.10.4.5";
pub const H: &str = "10.10.4.4";
/// A second I-CSCF's address (`icscf2.hims.net`, config `icscf2.toml`), for a test that adds
/// it (with [`Lab::start_hss_with_dns`] naming it in DNS and [`Lab::spawn_as`]).
pub const I2: &str = "10.10.4.6";
pub const DNS: &str = "10.10.3.2";
/// The S-CSCF's admin API (`/v1/registrations`, `/metrics`): loopback in the home namespace,
/// as the S-CSCF insists (it has no authentication).
pub const SCSCF_ADMIN: &str = "127.0.0.1:8081";
/// The P-CSCF's admin API (`/v1/registrations`, `/metrics`): loopback in the visited
/// namespace.
pub const PCSCF_ADMIN: &str = "127.0.0.1:8082";
/// The HSS admin API's token (it listens beyond loopback).
pub const ADMIN_TOKEN: &str = "lab-admin-token-0123";

pub struct Lab {
    pub topo: Topology,
    pub dir: PathBuf,
    pub daemons: Vec<(String, NsChild)>,
    /// The daemons' log filter (RUST_LOG).
    pub log: String,
}

/// Every secret the lab provisions, in the forms a leak would take (hex in both cases, the
/// plain password): K, OP, OPc, carol's password and HA1, the admin token.
pub fn provisioned_secrets() -> Vec<String> {
    let k: [u8; 16] = hex::decode(sipp::TEST_K).unwrap().try_into().unwrap();
    let op: [u8; 16] = hex::decode(sipp::TEST_OP).unwrap().try_into().unwrap();
    let opc = ims_aka::milenage::compute_opc(&ims_aka::Key::new(k), &ims_aka::Op::new(op));
    let ha1 = ims_aka::Ha1::compute("carol@hims.net", "hims.net", b"carol-secret");
    vec![
        sipp::TEST_K.to_owned(),
        sipp::TEST_OP.to_owned(),
        hex::encode(opc.expose()),
        "carol-secret".to_owned(),
        ha1.to_hex().to_string(),
        ADMIN_TOKEN.to_owned(),
    ]
}

/// The RES, CK and IK of an AKA challenge of the lab's keys, as hex, from its nonce.
pub fn aka_secrets(nonce: &str) -> Vec<String> {
    let n = ims_aka::digest_aka::AkaNonce::decode(nonce).unwrap();
    let k: [u8; 16] = hex::decode(sipp::TEST_K).unwrap().try_into().unwrap();
    let op: [u8; 16] = hex::decode(sipp::TEST_OP).unwrap().try_into().unwrap();
    let m = ims_aka::Milenage::with_op(&ims_aka::Key::new(k), &ims_aka::Op::new(op));
    vec![
        hex::encode(m.f2(&n.rand).expose()),
        m.f3(&n.rand).to_hex().to_string(),
        m.f4(&n.rand).to_hex().to_string(),
    ]
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn configs(dir: &Path, extra_hims_records: &str) {
    write(
        dir,
        "ims-dns.toml",
        &format!(
            r#"listen = ["{DNS}:53"]
ttl = 300
[[zone]]
origin = "hims.net"
records = [
  {{ type = "NAPTR", name = "@", order = 10, preference = 50, flags = "s", service = "SIP+D2U", replacement = "_sip._udp" }},
  {{ type = "NAPTR", name = "@", order = 20, preference = 50, flags = "s", service = "SIP+D2T", replacement = "_sip._tcp" }},
  {{ type = "SRV", name = "_sip._udp", priority = 0, weight = 0, port = 5060, target = "icscf1" }},
  {{ type = "SRV", name = "_sip._tcp", priority = 0, weight = 0, port = 5060, target = "icscf1" }},
  {{ type = "A", name = "icscf1", address = "{I}" }},
  {{ type = "A", name = "scscf1", address = "{S}" }},
  {{ type = "A", name = "scscf2", address = "{S2}" }},
  {{ type = "A", name = "hss1", address = "{H}" }},
{extra_hims_records}]
[[zone]]
origin = "vims.net"
records = [
  {{ type = "A", name = "pcscf1", address = "{P}" }},
  {{ type = "AAAA", name = "pcscf1", address = "fd00:10:2::2" }},
]
"#
        ),
    );
    write(
        dir,
        "hss.toml",
        &format!(
            r#"database = "sqlite://{db}"
admin_listen = "{H}:8080"
admin_token = "{ADMIN_TOKEN}"
home_network = "hims.net"
[diameter]
listen = "{H}:3868"
origin_host = "hss1.hims.net"
origin_realm = "hims.net"
# relay1.hims.net: the freeDiameterd relay of interop.rs
allowed_peers = ["icscf1.hims.net", "icscf2.hims.net", "scscf1.hims.net", "scscf2.hims.net", "relay1.hims.net"]
[diameter.capabilities]
server_names = ["sip:scscf1.hims.net:5060"]
"#,
            db = dir.join("hss.sqlite").display()
        ),
    );
    let cx = |host: &str| {
        format!(
            "[diameter]\nhss = \"{H}:3868\"\norigin_host = \"{host}\"\norigin_realm = \"hims.net\"\n\
             destination_realm = \"hims.net\"\n"
        )
    };
    write(
        dir,
        "scscf.toml",
        &format!(
            "sip_listen = \"{S}:5060\"\nname = \"sip:scscf1.hims.net:5060\"\nrealm = \"hims.net\"\n\
             home_domains = [\"hims.net\"]\ndns = [\"{DNS}:53\"]\ndatabase = \"sqlite://{}\"\n\
             admin_listen = \"{SCSCF_ADMIN}\"\n{}",
            dir.join("scscf.sqlite").display(),
            cx("scscf1.hims.net")
        ),
    );
    write(
        dir,
        "icscf.toml",
        &format!(
            "sip_listen = \"{I}:5060\"\nvia_host = \"icscf1.hims.net\"\nhome_domain = \"hims.net\"\n\
             dns = [\"{DNS}:53\"]\n{}\n[[scscf]]\nuri = \"sip:scscf1.hims.net:5060\"\n",
            cx("icscf1.hims.net")
        ),
    );
    write(
        dir,
        "icscf2.toml",
        &format!(
            "sip_listen = \"{I2}:5060\"\nvia_host = \"icscf2.hims.net\"\nhome_domain = \"hims.net\"\n\
             dns = [\"{DNS}:53\"]\n{}\n[[scscf]]\nuri = \"sip:scscf1.hims.net:5060\"\n",
            cx("icscf2.hims.net")
        ),
    );
    write(
        dir,
        "pcscf.toml",
        &format!(
            "sip_listen = \"{P}:5060\"\nsip_listen_v6 = \"[fd00:10:2::2]:5060\"\nvia_host = \"pcscf1.vims.net\"\nvisited_network_id = \"vims.net\"\n\
             dns = [\"{DNS}:53\"]\nadmin_listen = \"{PCSCF_ADMIN}\"\ndatabase = \"sqlite://{}\"\n",
            dir.join("pcscf.sqlite").display()
        ),
    );
}

impl Lab {
    pub fn start(tag: &str) -> Option<Lab> {
        Lab::start_logging(tag, "info")
    }

    /// As [`Lab::start`], the daemons logging at `log` (a RUST_LOG filter).
    pub fn start_logging(tag: &str, log: &str) -> Option<Lab> {
        let mut lab = Lab::start_hss(tag, log)?;
        lab.spawn("home", "scscf");
        lab.spawn("home", "icscf");
        lab.spawn("visited", "pcscf");
        lab.wait_peers(2);
        Some(lab)
    }

    /// The topology with every config written, and only the DNS server and the HSS running,
    /// its subscribers provisioned: a test then starts the CSCFs it wants (ours with
    /// [`Lab::spawn`], or another implementation at the same addresses).
    pub fn start_hss(tag: &str, log: &str) -> Option<Lab> {
        Lab::start_hss_with_dns(tag, log, "")
    }

    /// As [`Lab::start_hss`], with `extra` records (lines of the TOML array) in the hims.net
    /// zone.
    pub fn start_hss_with_dns(tag: &str, log: &str, extra: &str) -> Option<Lab> {
        if !ims_testkit::require_root(tag) {
            return None;
        }
        for t in ["ip", "sipp"] {
            ims_testkit::require_tool(tag, t)?;
        }
        let mut topo = Topology::new(tag);
        topo.add_node("ue", "10.10.1.2/24", "fd00:10:1::2/64");
        topo.add_node("visited", "10.10.2.2/24", "fd00:10:2::2/64");
        topo.add_node("dns", "10.10.3.2/24", "fd00:10:3::2/64");
        topo.add_node("home", "10.10.4.2/24", "fd00:10:4::2/64");
        topo.add_address("home", "10.10.4.3/24");
        topo.add_address("home", "10.10.4.4/24");
        let dir = topo.dir().to_path_buf();
        configs(&dir, extra);
        let mut lab = Lab {
            topo,
            dir,
            daemons: Vec::new(),
            log: log.into(),
        };
        lab.spawn("dns", "ims-dns");
        lab.spawn("home", "hss");
        // Subscribers, through the admin API (retried until the HSS listens).
        let ue = sipp::Ue::default();
        lab.imsctl(&[
            "subscriber",
            "add",
            "--impi",
            &ue.impi,
            "--impu",
            &ue.impu,
            "--impu",
            "tel:+15551230001",
            "--k",
            &ue.k,
            "--op",
            &ue.op,
            "--amf",
            &ue.amf,
            "--roaming",
            "vims.net",
        ]);
        lab.imsctl(&[
            "subscriber",
            "add",
            "--impi",
            "bob.private@hims.net",
            "--impu",
            "sip:bob@hims.net",
            "--k",
            &ue.k,
            "--op",
            &ue.op,
            "--amf",
            &ue.amf,
            "--roaming",
            "vims.net",
        ]);
        lab.imsctl(&[
            "subscriber",
            "add",
            "--impi",
            "carol@hims.net",
            "--impu",
            "sip:carol@hims.net",
            "--impu",
            "tel:+15551230003",
            "--realm",
            "hims.net",
            "--password",
            "carol-secret",
            "--roaming",
            "vims.net",
        ]);
        Some(lab)
    }

    pub fn spawn(&mut self, node: &str, daemon: &str) {
        self.spawn_as(node, daemon, daemon);
    }

    /// Starts the binary `daemon` with the config `<name>.toml`, known as `name` in
    /// [`Lab::daemons`] (a second I-CSCF: `spawn_as("home", "icscf2", "icscf")`).
    pub fn spawn_as(&mut self, node: &str, name: &str, daemon: &str) {
        let cfg = self.dir.join(format!("{name}.toml"));
        let mut cmd = Command::new(bin(daemon));
        cmd.arg("-c").arg(&cfg).env("RUST_LOG", &self.log);
        let child = self.topo.spawn(node, &cmd);
        self.daemons.push((name.to_owned(), child));
    }

    /// `imsctl` against the HSS admin API from the home node (with the lab's token): its
    /// standard output, whatever its exit status.
    pub fn imsctl_output(&self, args: &[&str]) -> String {
        let url = format!("http://{H}:8080");
        let imsctl = bin("imsctl").to_string_lossy().into_owned();
        let mut all = vec![imsctl.as_str(), "--url", &url, "--token", ADMIN_TOKEN];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&self.topo.run("home", &all).stdout).into_owned()
    }

    pub fn imsctl(&self, args: &[&str]) {
        let url = format!("http://{H}:8080");
        for _ in 0..100 {
            let mut full = vec![
                bin("imsctl").to_string_lossy().into_owned(),
                "--url".into(),
                url.clone(),
                "--token".into(),
                ADMIN_TOKEN.into(),
            ];
            full.extend(args.iter().map(|s| (*s).to_owned()));
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            let out = self.topo.run("home", &refs);
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("imsctl {args:?} never succeeded\n{}", self.logs());
    }

    /// Provisions `count` load subscribers named `prefix…` (ims-load's CSV, imported by
    /// imsctl).
    pub fn import_load(&self, prefix: &str, count: u32) {
        let csv = Command::new(bin("ims-load"))
            .args(["--csv", "--count", &count.to_string(), "--prefix", prefix])
            .output()
            .unwrap();
        assert!(csv.status.success(), "{csv:?}");
        let file = self.dir.join(format!("{prefix}.csv"));
        std::fs::write(&file, &csv.stdout).unwrap();
        self.imsctl(&["subscriber", "import", file.to_str().unwrap()]);
    }

    /// `ims-load` toward the P-CSCF from the UE's address, with `args`: the command line.
    pub fn load_args(args: &[&str]) -> Vec<String> {
        let mut all = vec![
            bin("ims-load").to_string_lossy().into_owned(),
            "--pcscf".into(),
            format!("{P}:5060"),
            "--local-ip".into(),
            "10.10.1.2".into(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        all
    }

    /// Runs `ims-load` ([`Lab::load_args`]) in the UE's namespace to its end.
    pub fn run_load(&self, args: &[&str]) -> std::process::Output {
        let all = Lab::load_args(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.topo.run("ue", &refs)
    }

    /// Waits until the HSS has `n` Diameter peers open (the I-CSCF and the S-CSCF).
    pub fn wait_peers(&self, n: usize) {
        let url = format!("http://{H}:8080");
        let imsctl = bin("imsctl").to_string_lossy().into_owned();
        for _ in 0..100 {
            let out = self.topo.run(
                "home",
                &[&imsctl, "--url", &url, "--token", ADMIN_TOKEN, "metrics"],
            );
            let text = String::from_utf8_lossy(&out.stdout);
            if text.lines().any(|l| {
                l.starts_with("ims_hss_diameter_peers_up ") && l.ends_with(&format!(" {n}"))
            }) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the CSCFs never connected to the HSS\n{}", self.logs());
    }

    /// Panics naming the secret and the daemon when any of `secrets` (or of
    /// [`provisioned_secrets`]) appears in a daemon's log, in either case.
    pub fn assert_no_secret_logged(&self, secrets: &[String]) {
        let mut all = provisioned_secrets();
        all.extend(secrets.iter().cloned());
        for (n, c) in &self.daemons {
            let log = c.log().to_ascii_lowercase();
            for secret in &all {
                assert!(
                    !log.contains(&secret.to_ascii_lowercase()),
                    "{n} logged the secret {secret}"
                );
            }
        }
    }

    pub fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(|(n, c)| format!("---- {n} ----\n{}", c.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn all_alive(&mut self) {
        let logs = self.logs();
        for (n, c) in &mut self.daemons {
            assert!(c.try_wait().is_none(), "{n} died\n{logs}");
        }
    }

    /// Runs our UE inside the `ue` namespace.
    pub fn ue(
        &self,
        cfg: UeConfig,
        steps: &[u32],
    ) -> Result<Vec<ims_ue::Outcome>, ims_ue::UeError> {
        let steps = steps.to_vec();
        self.in_ue_ns(async move {
            let mut ue = Ue::start(cfg).await?;
            let mut out = Vec::new();
            for expires in steps {
                out.push(ue.register(expires).await?);
            }
            Ok(out)
        })
    }

    /// Runs `f` on a fresh runtime inside the `ue` namespace.
    fn in_ue_ns<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        self.topo.enter("ue", move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f)
        })
    }
}

/// Whatever a test did with the lab, no daemon logged a provisioned secret.
impl Drop for Lab {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.assert_no_secret_logged(&[]);
        }
    }
}

impl Lab {
    /// Our UE registers, fetches its registration state (reg event, SUBSCRIBE `Expires: 0`
    /// and the NOTIFY that the P-CSCF routes back by its Record-Route), and deregisters.
    pub fn ue_fetching_reg(
        &self,
        cfg: UeConfig,
    ) -> Result<(ims_ue::Outcome, ims_ue::FetchOutcome, ims_ue::Outcome), ims_ue::UeError> {
        self.in_ue_ns(async move {
            let mut ue = Ue::start(cfg).await?;
            let reg = ue.register(600).await?;
            let fetch = ue.fetch_reg().await?;
            let dereg = ue.register(0).await?;
            Ok((reg, fetch, dereg))
        })
    }
}

impl Lab {
    /// Registers `cfg`; then another socket on the UE's host, not its registered flow, sends
    /// a MESSAGE to the UE's contact with the P-CSCF's Path entry as Route (as only the core
    /// may); then deregisters. Returns the registration, the status that MESSAGE got (0: no
    /// answer within 5 s) and the deregistration.
    pub fn ue_with_spoofed_term(
        &self,
        cfg: UeConfig,
    ) -> Result<(ims_ue::Outcome, u16, ims_ue::Outcome), ims_ue::UeError> {
        let local = SocketAddr::new(cfg.local.ip(), 0);
        self.in_ue_ns(async move {
            let mut ue = Ue::start(cfg).await?;
            let reg = ue.register(600).await?;
            let contact = reg
                .response
                .name_addrs(ims_sip::HeaderName::Contact)
                .flatten()
                .map(|n| n.uri_str.to_owned())
                .next()
                .unwrap_or_default();
            let sock = tokio::net::UdpSocket::bind(local).await.unwrap();
            let me = sock.local_addr().unwrap();
            let msg = format!(
                "MESSAGE {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKspoof1;rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:boss@hims.net>;tag=sp1\r\nTo: <sip:bob@hims.net>\r\n\
                 Call-ID: spoof1\r\nCSeq: 1 MESSAGE\r\nRoute: <sip:term@pcscf1.vims.net:5060;lr>\r\n\
                 P-Asserted-Identity: <sip:boss@hims.net>\r\nContent-Type: text/plain\r\n\
                 Content-Length: 4\r\n\r\npay!"
            );
            sock.send_to(msg.as_bytes(), format!("{P}:5060")).await.unwrap();
            let mut buf = vec![0u8; 65536];
            let status =
                match tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf)).await {
                    Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n])
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0),
                    _ => 0,
                };
            let dereg = ue.register(0).await?;
            Ok((reg, status, dereg))
        })
    }
}

impl Lab {
    /// Registers `cfg` (from a fixed local port) and subscribes to its own reg event; then
    /// the HSS deregisters the subscriber (`imsctl subscriber deregister`: RTR to the
    /// S-CSCF, whose reg event NOTIFYs go to the UE's subscription and to the P-CSCF's); then,
    /// once the P-CSCF logs it, a UE on the same address and port asks for its registration
    /// state without registering. Returns the registration, the UE's NOTIFY after the RTR,
    /// and that last request's status (the P-CSCF's 403 once it has forgotten the flow; the
    /// S-CSCF's 480 if it had not).
    pub fn network_deregisters(
        &self,
        cfg: UeConfig,
        impi: &str,
    ) -> Result<(ims_ue::Outcome, ims_ue::FetchOutcome, u16), ims_ue::UeError> {
        let again = cfg.clone();
        let before = self
            .logs()
            .matches("registration ended by the network")
            .count();
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        let (reg, told) = std::thread::scope(|sc| {
            let ue = sc.spawn(|| {
                self.in_ue_ns(async move {
                    let mut ue = Ue::start(cfg).await?;
                    let reg = ue.register(600).await?;
                    ue.subscribe_reg(600).await?;
                    let _ = ready_tx.send(());
                    let told = ue.next_reg_notify(Duration::from_secs(20)).await?;
                    Ok::<_, ims_ue::UeError>((reg, told))
                })
            });
            if ready.recv_timeout(Duration::from_secs(20)).is_ok() {
                self.imsctl(&["subscriber", "deregister", impi]);
            }
            ue.join().unwrap()
        })?;
        for _ in 0..200 {
            if self
                .logs()
                .matches("registration ended by the network")
                .count()
                > before
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let fetch = self.in_ue_ns(async move {
            let mut ue = Ue::start(again).await?;
            ue.fetch_reg().await
        })?;
        Ok((reg, told, fetch.status))
    }
}

pub fn aka_ue(
    impi: &str,
    impu: &str,
    k: &str,
    sqn_ms: u64,
    transport: ims_net::sip::Transport,
) -> UeConfig {
    let key: [u8; 16] = hex::decode(k).unwrap().try_into().unwrap();
    let op: [u8; 16] = hex::decode(sipp::TEST_OP).unwrap().try_into().unwrap();
    let opc = ims_aka::milenage::compute_opc(&ims_aka::Key::new(key), &ims_aka::Op::new(op));
    UeConfig {
        impi: impi.into(),
        impu: impu.into(),
        domain: "hims.net".into(),
        pcscf: format!("{P}:5060").parse().unwrap(),
        transport,
        local: "10.10.1.2:0".parse().unwrap(),
        credentials: Credentials::Aka {
            k: key,
            opc: *opc.expose(),
            sqn_ms,
            options: AkaOptions::default(),
        },
        timeout: Duration::from_secs(5),
        ipsec: None,
    }
}

/// Whether this kernel can hold an ESP SA: one is added in `node`'s namespace (at `ip`) and
/// removed again.
pub fn kernel_has_esp(topo: &Topology, node: &str, ip: &str) -> bool {
    let spi = "0x1000";
    let added = topo
        .run(
            node,
            &[
                "ip",
                "xfrm",
                "state",
                "add",
                "src",
                ip,
                "dst",
                ip,
                "proto",
                "esp",
                "spi",
                spi,
                "mode",
                "transport",
                "auth",
                "sha1",
                "0x00112233445566778899aabbccddeeff00112233",
            ],
        )
        .status
        .success();
    if added {
        let _ = topo.run(
            node,
            &[
                "ip", "xfrm", "state", "delete", "src", ip, "dst", ip, "proto", "esp", "spi", spi,
            ],
        );
    }
    added
}

/// Waits (up to 20 s) until `child`'s log holds `line`; panics with the log if it exits first.
pub fn wait_for_log(child: &mut NsChild, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !child.log().contains(line) {
        if let Some(st) = child.try_wait() {
            panic!("exited ({st}) before `{line}`: {}", child.log());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{line}` in 20 s: {}",
            child.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Lab {
    /// GET `path` of the S-CSCF's admin API ([`SCSCF_ADMIN`]) from inside the home
    /// namespace: the body, or `None` while nothing answers there (the S-CSCF down or still
    /// starting).
    pub fn scscf_admin(&self, path: &str) -> Option<String> {
        self.admin_get("home", SCSCF_ADMIN, path)
    }

    /// GET `http://{addr}{path}` from inside namespace `node`: the body, or `None` while
    /// nothing answers there.
    fn admin_get(&self, node: &str, addr: &str, path: &str) -> Option<String> {
        let url = format!("http://{addr}{path}");
        self.topo.enter(node, move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .proxy(None)
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .into();
            let mut resp = agent.get(&url).call().ok()?;
            resp.body_mut().read_to_string().ok()
        })
    }

    /// GET `path` of the P-CSCF's admin API ([`PCSCF_ADMIN`]) from inside the visited
    /// namespace: the body, or `None` while nothing answers there.
    pub fn pcscf_admin(&self, path: &str) -> Option<String> {
        self.admin_get("visited", PCSCF_ADMIN, path)
    }

    /// Waits (up to 20 s) until the P-CSCF's admin API answers: it has bound SIP and
    /// restored its registrations by then.
    pub fn wait_pcscf(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.pcscf_admin("/health").is_none() {
            self.all_alive();
            assert!(
                std::time::Instant::now() < deadline,
                "the P-CSCF's admin API does not answer\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The registrations the P-CSCF holds (`/v1/registrations`), by IMPI; `None` while its
    /// admin API does not answer.
    pub fn pcscf_registrations(
        &self,
    ) -> Option<std::collections::BTreeMap<String, serde_json::Value>> {
        let v: serde_json::Value =
            serde_json::from_str(&self.pcscf_admin("/v1/registrations")?).ok()?;
        Some(
            v["registrations"]
                .as_array()?
                .iter()
                .filter_map(|r| Some((r["impi"].as_str()?.to_owned(), r.clone())))
                .collect(),
        )
    }

    /// Our UE registers (`expires`) and sends a MESSAGE to each of `to`; returns the
    /// registration's status and each MESSAGE's final status.
    pub fn ue_sends_messages(
        &self,
        cfg: UeConfig,
        expires: u32,
        to: &[&str],
    ) -> Result<(u16, Vec<u16>), ims_ue::UeError> {
        let to: Vec<String> = to.iter().map(|t| (*t).to_owned()).collect();
        self.in_ue_ns(async move {
            let mut ue = Ue::start(cfg).await?;
            let reg = ue.register(expires).await?;
            let mut out = Vec::new();
            for t in &to {
                out.push(ue.send_message(t, &format!("hello {t}")).await?);
            }
            Ok((reg.status, out))
        })
    }

    /// Runs `task` on a thread of its own inside the UE's namespace, on a current-thread
    /// runtime of its own (so that a test can hold a UE at a step while it acts elsewhere).
    fn on_ue_thread<T, F>(
        &self,
        task: impl FnOnce() -> F + Send + 'static,
    ) -> std::thread::JoinHandle<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = T>,
    {
        let ns = format!("/run/netns/{}", self.topo.ns("ue"));
        std::thread::spawn(move || {
            let file = std::fs::File::open(&ns).expect("the ue namespace");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(task())
        })
    }

    /// Starts our UE on a thread of its own: it registers (`expires`), says so on the
    /// returned receiver (the registration's status), then waits up to `wait` for a MESSAGE
    /// (answered 200, flushed before the thread ends: over TCP a send only queues it), which
    /// the thread returns.
    #[allow(clippy::type_complexity)]
    pub fn ue_awaiting_message(
        &self,
        cfg: UeConfig,
        expires: u32,
        wait: Duration,
    ) -> (
        std::sync::mpsc::Receiver<u16>,
        std::thread::JoinHandle<Result<Option<ims_ue::ReceivedMessage>, ims_ue::UeError>>,
    ) {
        let (registered_tx, registered) = std::sync::mpsc::channel::<u16>();
        let ue = self.on_ue_thread(move || async move {
            let mut ue = Ue::start(cfg).await?;
            let reg = ue.register(expires).await?;
            let _ = registered_tx.send(reg.status);
            if reg.status != 200 {
                return Ok(None);
            }
            let got = ue.next_message(wait).await;
            assert!(
                ue.flush(Duration::from_secs(5)).await,
                "the UE's 200 written"
            );
            got
        });
        (registered, ue)
    }

    /// The S-CSCF's `ims_scscf_registrations` gauge (IMPUs registered there), `None` while
    /// its admin API does not answer.
    pub fn scscf_registrations_held(&self) -> Option<u64> {
        self.scscf_admin("/metrics")?.lines().find_map(|l| {
            l.strip_prefix("ims_scscf_registrations ")?
                .trim()
                .parse()
                .ok()
        })
    }

    /// The registrations the S-CSCF holds (`/v1/registrations`): IMPU → its `until` (when its
    /// latest binding expires, RFC 3339 in whole seconds); `None` while the admin API does
    /// not answer.
    pub fn scscf_registrations(&self) -> Option<std::collections::BTreeMap<String, String>> {
        let v: serde_json::Value =
            serde_json::from_str(&self.scscf_admin("/v1/registrations")?).ok()?;
        Some(
            v["registrations"]
                .as_array()?
                .iter()
                .filter_map(|r| {
                    Some((
                        r["impu"].as_str()?.to_owned(),
                        r["until"].as_str()?.to_owned(),
                    ))
                })
                .collect(),
        )
    }

    /// Starts our UE registering (`expires`) on a thread of its own and holds it between its
    /// first 401 and its answer: the returned receiver gets `()` when that 401 has come; the
    /// UE answers once the returned sender sends (or is dropped). The thread's result is the
    /// registration's outcome (how many challenges it answered, the final status).
    pub fn ue_held_at_challenge(
        &self,
        cfg: UeConfig,
        expires: u32,
    ) -> (
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<Result<ims_ue::Outcome, ims_ue::UeError>>,
    ) {
        let (challenged_tx, challenged) = std::sync::mpsc::channel::<()>();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let ue = self.on_ue_thread(move || async move {
            let mut ue = Ue::start(cfg).await?;
            let mut first = true;
            let go_rx = std::sync::Mutex::new(go_rx);
            // The observer runs inside `register`, between the 401 and the answer: blocking
            // it (this runtime serves this UE alone) holds the UE there.
            ue.on_step(Box::new(move |s| {
                if first && matches!(s, ims_ue::Step::Challenged { .. }) {
                    first = false;
                    let _ = challenged_tx.send(());
                    let _ = go_rx.lock().map(|rx| rx.recv());
                }
            }));
            ue.register(expires).await
        });
        (challenged, go, ue)
    }
}

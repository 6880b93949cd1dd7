//! `ims-ue`: a UE that registers through a P-CSCF with Digest-AKAv1-MD5 (a simulated USIM:
//! `--k` and `--op`/`--opc`) or SIP Digest MD5 (`--password`), then optionally deregisters.
//! Exit code 0 when every step got a 2xx, 1 otherwise (the final status is printed).
//! `--message-to URI` sends a pager-mode MESSAGE once registered; `--await-messages N`
//! answers N MESSAGEs from the network (with `--hold`, before deregistering).
//! `--ipsec` sets up the UE's own IPsec SAs with the P-CSCF (TS 33.203) over netlink;
//! `--ipsec-hook PROGRAM` has a program install them instead (see [`ims_ue::SaInstaller`]).
//! `--verbose` prints each step of each registration on stderr (`ims-ue: REGISTER sent ...`,
//! the challenge, the USIM's verdict on AUTN, the response, the SAs, registered until when):
//! the [`ims_ue::Step`]s.
mod tool;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ims_ue::{AkaOptions, Credentials, SaInstaller, Tamper, Ue, UeConfig, UeIpsec};

use tool::key;

#[derive(Parser)]
#[command(about = "Register a UE with the IMS core")]
struct Args {
    /// The P-CSCF's address (ip:port, [v6]:port).
    #[arg(long)]
    pcscf: SocketAddr,
    /// Private identity.
    #[arg(long)]
    impi: String,
    /// Public identity (default sip:<impi>).
    #[arg(long)]
    impu: Option<String>,
    /// Home domain (default: the IMPI's domain).
    #[arg(long)]
    domain: Option<String>,
    /// K, 32 hex digits (AKA).
    #[arg(long)]
    k: Option<String>,
    /// OP, 32 hex digits (AKA).
    #[arg(long)]
    op: Option<String>,
    /// OPc, 32 hex digits (AKA), instead of OP.
    #[arg(long)]
    opc: Option<String>,
    /// SQN_MS of the USIM (the highest sequence number it has accepted).
    #[arg(long, default_value_t = 0)]
    sqn: u64,
    /// Password (SIP Digest MD5) instead of a USIM.
    #[arg(long)]
    password: Option<String>,
    /// udp or tcp.
    #[arg(long, default_value = "udp")]
    transport: String,
    /// Local address (port 0 picks one).
    #[arg(long, default_value = "0.0.0.0:0")]
    local: SocketAddr,
    /// Registration expiry in seconds.
    #[arg(long, default_value_t = 600)]
    expires: u32,
    /// Deregister after registering.
    #[arg(long)]
    deregister: bool,
    /// Register a second time (a refresh: through the SAs with IPsec) before deregistering.
    #[arg(long)]
    refresh: bool,
    /// Fetch the registration state after registering (reg event, SUBSCRIBE Expires: 0) and
    /// answer its NOTIFY.
    #[arg(long)]
    fetch_reg: bool,
    /// After registering, send a pager-mode MESSAGE to this URI (its final status must be
    /// 2xx).
    #[arg(long, value_name = "URI")]
    message_to: Option<String>,
    /// The text of --message-to.
    #[arg(long, default_value = "hello from ims-ue")]
    message_text: String,
    /// After registering, wait (up to --hold seconds, else --timeout) for this many MESSAGEs
    /// and answer each 200; fewer is a failure.
    #[arg(long, default_value_t = 0)]
    await_messages: u32,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    /// Seconds to stay registered before deregistering (with --deregister).
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Ends the hold early once this file exists (many UEs released at once).
    #[arg(long, value_name = "FILE")]
    release: Option<std::path::PathBuf>,
    /// IPsec with the P-CSCF: the UE installs its four SAs itself (netlink; needs root).
    #[arg(long)]
    ipsec: bool,
    /// IPsec, the SAs installed by this program (`PROGRAM add|del`, values in IMS_* variables).
    #[arg(long, value_name = "PROGRAM")]
    ipsec_hook: Option<std::path::PathBuf>,
    /// The protected server port with IPsec (0 picks one); the protected client port is the
    /// --local port.
    #[arg(long, default_value_t = 0)]
    port_us: u16,
    /// Integrity algorithm offered with IPsec.
    #[arg(long, default_value = "hmac-sha-1-96")]
    alg: String,
    /// Encryption algorithm offered with IPsec (aes-cbc, des-ede3-cbc, null).
    #[arg(long, default_value = "aes-cbc")]
    ealg: String,
    /// Tests: spoil the Security-Verify or the Security-Client of the REGISTERs sent through
    /// the SAs (`verify`, `client`: the P-CSCF must answer 494), or the digest response
    /// (`res`: 403).
    #[arg(long, value_name = "HEADER")]
    ipsec_tamper: Option<String>,
    /// Print each step of each registration on stderr.
    #[arg(long, short = 'v')]
    verbose: bool,
}

/// The xfrm marker of the UE's own SAs (the P-CSCF's default differs).
const UE_MARKER: u32 = 0x01A5_0E0E;

fn config(a: &Args) -> Result<UeConfig, String> {
    let credentials = match (&a.password, &a.k) {
        (Some(p), None) => Credentials::Password(p.clone()),
        (None, Some(k)) => {
            let k = key("k", k)?;
            let opc = match (&a.op, &a.opc) {
                (Some(op), None) => *ims_aka::milenage::compute_opc(
                    &ims_aka::Key::new(k),
                    &ims_aka::Op::new(key("op", op)?),
                )
                .expose(),
                (None, Some(opc)) => key("opc", opc)?,
                _ => return Err("give one of --op and --opc with --k".into()),
            };
            Credentials::Aka {
                k,
                opc,
                sqn_ms: a.sqn,
                options: AkaOptions::default(),
            }
        }
        _ => return Err("give --k (AKA) or --password (SIP Digest), not both".into()),
    };
    let domain = a
        .domain
        .clone()
        .or_else(|| a.impi.split('@').nth(1).map(str::to_owned))
        .ok_or("--domain is needed when the IMPI has no @domain")?;
    let transport = match a.transport.to_ascii_lowercase().as_str() {
        "udp" => ims_net::sip::Transport::Udp,
        "tcp" => ims_net::sip::Transport::Tcp,
        t => return Err(format!("--transport {t}: udp or tcp")),
    };
    let installer = match (a.ipsec, &a.ipsec_hook) {
        (false, None) => None,
        (true, None) => Some(SaInstaller::Netlink { marker: UE_MARKER }),
        (false, Some(p)) => Some(SaInstaller::Hook(p.clone())),
        (true, Some(_)) => return Err("give one of --ipsec and --ipsec-hook".into()),
    };
    let ipsec = match installer {
        Some(installer) => Some(UeIpsec {
            port_us: a.port_us,
            alg: ims_aka::IntegrityAlgorithm::from_name(&a.alg)
                .map_err(|_| format!("--alg {}: hmac-sha-1-96 or hmac-md5-96", a.alg))?,
            ealg: ims_aka::EncryptionAlgorithm::from_name(&a.ealg)
                .map_err(|_| format!("--ealg {}: aes-cbc, des-ede3-cbc or null", a.ealg))?,
            installer,
            tamper: match a.ipsec_tamper.as_deref() {
                None => None,
                Some("verify") => Some(Tamper::Verify),
                Some("client") => Some(Tamper::Client),
                Some("res") => Some(Tamper::Res),
                Some(t) => return Err(format!("--ipsec-tamper {t}: verify, client or res")),
            },
        }),
        None => None,
    };
    Ok(UeConfig {
        impu: a.impu.clone().unwrap_or_else(|| format!("sip:{}", a.impi)),
        impi: a.impi.clone(),
        domain,
        pcscf: a.pcscf,
        transport,
        local: a.local,
        credentials,
        timeout: Duration::from_secs(a.timeout.max(1)),
        ipsec,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tool::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let mut ue = match Ue::start(cfg).await {
            Ok(u) => u,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        if args.verbose {
            ue.on_step(Box::new(|s| eprintln!("ims-ue: {s}")));
        }
        let mut steps = vec![args.expires];
        if args.refresh {
            steps.push(args.expires);
        }
        let mut ok = true;
        for expires in steps {
            ok = register(&mut ue, expires).await;
            if !ok {
                break;
            }
        }
        if ok && args.fetch_reg {
            ok = fetch_reg(&mut ue).await;
        }
        if ok && let Some(to) = &args.message_to {
            ok = message(&mut ue, to, &args.message_text).await;
        }
        if ok && args.await_messages > 0 {
            let wait = Duration::from_secs(if args.hold > 0 {
                args.hold
            } else {
                args.timeout
            });
            ok = await_messages(&mut ue, args.await_messages, wait).await;
        }
        if ok && args.deregister {
            // Until the hold ends, or earlier once the --release file exists.
            let until = tokio::time::Instant::now() + Duration::from_secs(args.hold);
            while tokio::time::Instant::now() < until
                && !args.release.as_ref().is_some_and(|p| p.exists())
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ok = register(&mut ue, 0).await;
        }
        let mut code = if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
        // What went out over TCP last (a MESSAGE's 200) is written before we end.
        if !ue.flush(Duration::from_secs(2)).await {
            eprintln!("warning: not everything sent over TCP was written within 2 s");
        }
        // Never leave SAs behind (after a deregistration there are none left).
        if let Err(e) = ue.close() {
            eprintln!("error: {e}");
            code = ExitCode::FAILURE;
        }
        code
    })
}

/// One REGISTER step, printed; true on a 2xx.
async fn register(ue: &mut Ue, expires: u32) -> bool {
    match ue.register(expires).await {
        Ok(o) => {
            println!(
                "REGISTER expires={expires}: {} ({} challenge(s){}{})",
                o.status,
                o.challenges,
                if o.resynced { ", resynchronised" } else { "" },
                if o.protected { ", IPsec" } else { "" }
            );
            (200..300).contains(&o.status)
        }
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}

/// A MESSAGE sent, printed; true on a 2xx.
async fn message(ue: &mut Ue, to: &str, text: &str) -> bool {
    match ue.send_message(to, text).await {
        Ok(status) => {
            println!(
                "MESSAGE to {to}: {status}{}",
                if ue.ipsec_up() { ", IPsec" } else { "" }
            );
            (200..300).contains(&status)
        }
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}

/// `n` MESSAGEs received within `wait`, each printed and answered; true when all came.
async fn await_messages(ue: &mut Ue, n: u32, wait: Duration) -> bool {
    let until = tokio::time::Instant::now() + wait;
    for _ in 0..n {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match ue.next_message(left).await {
            Ok(Some(m)) => println!(
                "MESSAGE from {}: {}{}",
                m.from,
                m.body,
                if m.protected { ", IPsec" } else { "" }
            ),
            Ok(None) => {
                eprintln!("error: no MESSAGE within {} s", wait.as_secs());
                return false;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return false;
            }
        }
    }
    true
}

/// The reg-event fetch, printed; true on a 2xx with a NOTIFY.
async fn fetch_reg(ue: &mut Ue) -> bool {
    match ue.fetch_reg().await {
        Ok(o) => {
            println!(
                "SUBSCRIBE reg (fetch): {}, NOTIFY {}, registration {}{}",
                o.status,
                o.notify_state.as_deref().unwrap_or("none"),
                o.registration_state.as_deref().unwrap_or("none"),
                if o.protected { ", IPsec" } else { "" }
            );
            (200..300).contains(&o.status) && o.notify_state.is_some()
        }
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}

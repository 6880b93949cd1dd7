//! `ims-ue`: a UE that registers through a P-CSCF with Digest-AKAv1-MD5 (a simulated USIM:
//! `--k` and `--op`/`--opc`) or SIP Digest MD5 (`--password`), then optionally deregisters.
//! Exit code 0 when every step got a 2xx, 1 otherwise (the final status is printed).
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ims_ue::{AkaOptions, Credentials, Ue, UeConfig};

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
}

fn key(name: &str, hex_text: &str) -> Result<[u8; 16], String> {
    hex::decode(hex_text)
        .ok()
        .and_then(|v| <[u8; 16]>::try_from(v).ok())
        .ok_or_else(|| format!("--{name} must be 32 hex digits"))
}

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
    Ok(UeConfig {
        impu: a.impu.clone().unwrap_or_else(|| format!("sip:{}", a.impi)),
        impi: a.impi.clone(),
        domain,
        pcscf: a.pcscf,
        transport,
        local: a.local,
        credentials,
        timeout: Duration::from_secs(5),
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
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let mut ue = match Ue::start(cfg).await {
            Ok(u) => u,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut steps = vec![args.expires];
        if args.deregister {
            steps.push(0);
        }
        for expires in steps {
            match ue.register(expires).await {
                Ok(o) => {
                    println!(
                        "REGISTER expires={expires}: {} ({} challenge(s){})",
                        o.status,
                        o.challenges,
                        if o.resynced { ", resynchronised" } else { "" }
                    );
                    if !(200..300).contains(&o.status) {
                        return ExitCode::FAILURE;
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        ExitCode::SUCCESS
    })
}

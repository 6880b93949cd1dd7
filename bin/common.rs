//! What every daemon's main shares: command-line flags, loading the TOML configuration with
//! `IMS_<DAEMON>__<KEY>` environment overrides (unknown keys rejected by each Config type),
//! `--check-config`, `--health`, and the exit codes (0 ok, 1 runtime failure, 2 bad
//! configuration).
//!
//! An override whose value starts with `[` or `{` is read as a TOML value (an array or an
//! inline table), so that list keys are settable too:
//! `IMS_PCSCF__DNS='["172.22.0.15:53"]'`, `IMS_HSS__DIAMETER__ALLOWED_PEERS='["a", "b"]'`.
//!
//! `--health` is the probe a container health check runs beside the daemon (same
//! configuration, same environment): it connects over TCP to each address the daemon listens
//! on (an unspecified address is probed on loopback) and exits 0 when every one accepts
//! within a second, 1 otherwise (a configuration it cannot read included: Docker reserves
//! exit code 2), saying which did not. Every daemon listens on TCP where it serves (SIP, DNS;
//! the HSS is probed at its admin API, which opens after its Cx listener), so an accepted
//! connection means the daemon is up and past its start (configuration, database, bind).

/// The daemons allocate through mimalloc rather than glibc's malloc: a proxied SIP message is
/// a few dozen small short-lived allocations (parsed views, edited headers, the serialized
/// copy), and glibc's malloc and free were 10-12% of the CSCFs' CPU in the call benchmark
/// (docs/PERFORMANCE.md). Built without the `mimalloc` feature (`--no-default-features`)
/// they use glibc's malloc, which heap profilers (heaptrack) can follow.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde::de::DeserializeOwned;

/// Flags common to every daemon.
#[derive(Debug, Parser)]
pub struct Flags {
    /// Configuration file (TOML).
    #[arg(short, long)]
    pub config: PathBuf,
    /// Validate the configuration, print the result and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Probe the running daemon of this configuration (a TCP connection to each of its
    /// listening addresses) and exit 0 when it answers, 1 when not: a container health check.
    #[arg(long, conflicts_with = "check_config")]
    pub health: bool,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub log_format: ims_telemetry::LogFormat,
}

/// Exit code for a configuration that cannot be used.
pub const EXIT_CONFIG: u8 = 2;

/// Reads `path` as TOML, applies `IMS_<PREFIX>__KEY` environment overrides, deserializes.
pub fn load<T: DeserializeOwned>(path: &std::path::Path, prefix: &str) -> Result<T, String> {
    if !path.is_file() {
        return Err(format!(
            "configuration file {} does not exist",
            path.display()
        ));
    }
    refuse_odd_keys(path)?;
    // TOML values go in as overrides and are kept out of the environment source, which
    // would otherwise add them again as strings (and which of the two won varied).
    let (toml_vars, plain): (Vec<_>, Vec<_>) = std::env::vars().partition(|(_, v)| is_toml(v));
    let mut builder = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(&format!("IMS_{prefix}"))
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(plain.into_iter().collect())),
        );
    for (key, value) in toml_overrides(prefix, toml_vars)? {
        builder = builder
            .set_override(key.as_str(), value)
            .map_err(|e| format!("environment IMS_{prefix}__{key}: {e}"))?;
    }
    builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| format!("configuration {}: {e}", path.display()))
}

/// Refuses a file with a quoted key holding `[`, `]` or `.`: none of ours does, and the
/// `config` crate reads such a key as a path expression (`"a[99999999999]"` made it panic
/// allocating the array, found by the config_toml fuzz target) instead of a name.
fn refuse_odd_keys(path: &std::path::Path) -> Result<(), String> {
    fn walk(t: &toml::Table, at: &str) -> Result<(), String> {
        for (k, v) in t {
            let here = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if k.contains(['[', ']', '.']) {
                return Err(format!(
                    "key `{here}`: no key of ours holds `[`, `]` or `.`"
                ));
            }
            match v {
                toml::Value::Table(t) => walk(t, &here)?,
                toml::Value::Array(a) => {
                    for t in a.iter().filter_map(toml::Value::as_table) {
                        walk(t, &here)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
    // A file that is not TOML at all is left to the loader, which names the problem.
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    match toml::from_str::<toml::Table>(&text) {
        Ok(t) => walk(&t, "").map_err(|e| format!("configuration {}: {e}", path.display())),
        Err(_) => Ok(()),
    }
}

/// Whether an override's value is TOML (an array or an inline table) rather than a scalar.
fn is_toml(value: &str) -> bool {
    value.trim_start().starts_with(['[', '{'])
}

/// The `IMS_<PREFIX>__KEY` variables of `vars` whose value is a TOML array or inline table
/// (it starts with `[` or `{`), as (dotted lower-case key, parsed value): the environment
/// source alone would take them as strings.
pub fn toml_overrides(
    prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, config::Value)>, String> {
    let head = format!("IMS_{prefix}__");
    let mut out = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix(&head) else {
            continue;
        };
        if !is_toml(&value) {
            continue;
        }
        let key = rest.to_ascii_lowercase().replace("__", ".");
        let parsed = config::Config::builder()
            .add_source(config::File::from_str(
                &format!("value = {value}"),
                config::FileFormat::Toml,
            ))
            .build()
            .and_then(|c| c.get::<config::Value>("value"))
            .map_err(|e| {
                // The TOML error spans lines (a caret under the text): keep it to one line.
                let text = e.to_string();
                let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
                let first = lines.next().unwrap_or_default();
                let last = lines.next_back().unwrap_or_default();
                format!("environment {name}: not a TOML value: {first} {last}")
            })?;
        out.push((key, parsed));
    }
    Ok(out)
}

/// Loads the configuration or reports why not; handles `--check-config`.
/// Returns `Err(exit code)` when main should exit now.
pub fn config_or_exit<T: DeserializeOwned>(
    flags: &Flags,
    prefix: &str,
    validate: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, ExitCode> {
    let cfg = load::<T>(&flags.config, prefix).and_then(|c| validate(&c).map(|()| c));
    match (cfg, flags.check_config) {
        (Ok(_), true) => {
            println!("configuration {} is valid", flags.config.display());
            Err(ExitCode::SUCCESS)
        }
        (Ok(c), false) => Ok(c),
        (Err(e), _) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// How long `--health` waits for each connection.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Where to probe a daemon listening on `addr`: loopback of the same family for an
/// unspecified address (`0.0.0.0`, `[::]`), the address itself otherwise.
pub fn probe_address(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// The `--health` probe: a TCP connection to each of `listening`; exit 0 when all accept.
pub fn health(daemon: &str, listening: &[SocketAddr]) -> ExitCode {
    let mut ok = !listening.is_empty();
    for &addr in listening {
        let target = probe_address(addr);
        match TcpStream::connect_timeout(&target, HEALTH_TIMEOUT) {
            Ok(_) => println!("{daemon}: {target} accepts"),
            Err(e) => {
                println!("{daemon}: {target} does not accept: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The whole main of a daemon: flags, configuration (`validate` checks what serde cannot),
/// `--health` (a probe of the addresses `listening(&cfg)` names), logging at `log(&cfg)`,
/// a multi-threaded runtime, then `run(cfg, shutdown)`.
pub fn daemon<C, F, Fut, E>(
    prefix: &str,
    validate: impl FnOnce(&C) -> Result<(), String>,
    log: impl FnOnce(&C) -> String,
    listening: impl FnOnce(&C) -> Vec<SocketAddr>,
    run: F,
) -> ExitCode
where
    C: DeserializeOwned,
    F: FnOnce(C, std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let flags = Flags::parse();
    let cfg: C = match config_or_exit(&flags, prefix, validate) {
        Ok(c) => c,
        Err(_) if flags.health => return ExitCode::FAILURE,
        Err(code) => return code,
    };
    if flags.health {
        return health(prefix, &listening(&cfg));
    }
    if let Err(e) = ims_telemetry::init(flags.log_format, &log(&cfg)) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg, Box::pin(ims_telemetry::shutdown_signal()))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

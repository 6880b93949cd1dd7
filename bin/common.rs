//! What every daemon's main shares: command-line flags, loading the TOML configuration with
//! `IMS_<DAEMON>__<KEY>` environment overrides (unknown keys rejected by each Config type),
//! `--check-config`, and the exit codes (0 ok, 1 runtime failure, 2 bad configuration).

use std::path::PathBuf;
use std::process::ExitCode;

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
    config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(&format!("IMS_{prefix}"))
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| format!("configuration {}: {e}", path.display()))
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

/// The whole main of a daemon: flags, configuration (`validate` checks what serde cannot),
/// logging at `log(&cfg)`, a multi-threaded runtime, then `run(cfg, shutdown)`.
pub fn daemon<C, F, Fut, E>(
    prefix: &str,
    validate: impl FnOnce(&C) -> Result<(), String>,
    log: impl FnOnce(&C) -> String,
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
        Err(code) => return code,
    };
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

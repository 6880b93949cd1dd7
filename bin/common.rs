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

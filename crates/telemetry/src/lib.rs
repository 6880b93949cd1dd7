//! Daemon plumbing shared by every binary (never by the libraries, which only emit `tracing`
//! events): the tracing subscriber, as human text or one JSON object per line, filtered by
//! `RUST_LOG` or the daemon's configured level; and the shutdown signal (SIGINT or SIGTERM).
//!
//! The Prometheus endpoint joins here when the first daemon with metrics (the HSS) lands.

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format `{other}` (text or json)")),
        }
    }
}

/// Installs the global subscriber, logging to stderr. `default_level` applies when `RUST_LOG`
/// is unset (e.g. "info" or "ims_dns=debug,info"). Colours only when stderr is a terminal
/// (a log file or a pipe gets plain text that grep finds). Returns an error if one is
/// installed already.
pub fn init(format: LogFormat, default_level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_level))
        .map_err(|e| format!("bad log filter `{default_level}`: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let res = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    res.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// Resolves when the process receives SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }
        _ => {
            // Without signal handlers, ctrl-c is the best we have.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

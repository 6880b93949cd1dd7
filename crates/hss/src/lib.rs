//! The HSS (home subscriber server) of the IMS core.
//!
//! - [`cx`]: Cx requests (UAR, MAR, SAR, LIR) answered on the subscriber store (crates/store),
//!   vectors from crates/aka. The Diameter transport (TCP listener, peer state machine,
//!   allow-list, RTR/PPR toward the S-CSCF) joins with the Diameter peer crate.
//! - [`metrics`]: Prometheus counters and the answer-latency histogram.
//! - [`admin`]: the JSON HTTP admin API with its OpenAPI document, for provisioning by hand,
//!   by `imsctl`, or by bulk CSV import.

pub mod admin;
pub mod cx;
pub mod metrics;

use std::future::Future;
use std::net::SocketAddr;

use serde::Deserialize;

/// The HSS configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Database URL: `sqlite://path` (created at start) or `postgres://...`.
    pub database: String,
    /// Where the admin API listens (HTTP; keep it on a management network).
    pub admin_listen: SocketAddr,
    /// The home network domain (always allowed as a visited network).
    pub home_network: String,
    /// Log filter when RUST_LOG is unset.
    #[serde(default = "default_log")]
    pub log: String,
}

fn default_log() -> String {
    "info".to_owned()
}

/// Why the HSS stopped.
#[derive(Debug, thiserror::Error)]
pub enum HssError {
    #[error("store: {0}")]
    Store(#[from] ims_store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin API failed: {0}")]
    Serve(std::io::Error),
}

/// A started HSS: store open, admin API bound.
pub struct Hss {
    admin: tokio::net::TcpListener,
    router: axum::Router,
}

impl Hss {
    /// Opens (and migrates) the store and binds the admin API.
    pub async fn start(config: &Config) -> Result<Self, HssError> {
        let store = ims_store::Store::open(&config.database).await?;
        let admin = tokio::net::TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| HssError::Bind {
                addr: config.admin_listen,
                source,
            })?;
        if let Ok(a) = admin.local_addr() {
            tracing::info!(admin = %a, "HSS admin API listening");
        }
        Ok(Self {
            admin,
            router: admin::router(store),
        })
    }

    /// The admin API's bound address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HssError> {
        axum::serve(self.admin, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(HssError::Serve)
    }
}

/// Starts the HSS from `config` and runs it until `shutdown`.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HssError> {
    Hss::start(&config).await?.run_until(shutdown).await
}

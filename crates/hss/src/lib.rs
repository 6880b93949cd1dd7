//! The HSS (home subscriber server) of the IMS core.
//!
//! - [`cx`]: Cx requests (UAR, MAR, SAR, LIR) answered from [`subscribers`], vectors from
//!   crates/aka. The Diameter transport (TCP listener, peer state machine,
//!   allow-list, RTR/PPR toward the S-CSCF) joins with the Diameter peer crate.
//! - [`subscribers`]: the subscribers in memory (loaded once, changes written through in
//!   group commits, SQNs reserved in blocks); Cx and the admin API both go through it.
//! - [`ifc`]: whether a service profile's Initial Filter Criteria hold services related to the
//!   unregistered state (what a LIR for an identity without S-CSCF answers), read with
//!   quick-xml once per profile when its subscription is loaded.
//! - [`metrics`]: Prometheus counters and the answer-latency histogram.
//! - [`admin`]: the JSON HTTP admin API with its OpenAPI document, for provisioning by hand,
//!   by `imsctl`, or by bulk CSV import.

pub mod admin;
pub mod cx;
pub mod ifc;
pub mod metrics;
pub mod server;
pub mod subscribers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

/// The HSS configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Database URL: `sqlite://path` (created at start) or `postgres://...`.
    pub database: String,
    /// Where the admin API listens (HTTP; keep it on a management network). Loopback by
    /// default; any other address needs `admin_token`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// The bearer token the admin API requires (`Authorization: Bearer …`, imsctl's
    /// `IMS_HSS_TOKEN`) on every path but `/health` and `/openapi.json`; at least
    /// [`MIN_TOKEN_LEN`] characters. Required when `admin_listen` is not a loopback address.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// The home network domain (always allowed as a visited network).
    pub home_network: String,
    /// Log filter when RUST_LOG is unset.
    #[serde(default = "default_log")]
    pub log: String,
    /// The Diameter Cx side.
    #[serde(default)]
    pub diameter: DiameterConfig,
    /// Load every subscription into memory at start (in the background, between requests);
    /// otherwise each is loaded on its first request.
    #[serde(default = "yes")]
    pub preload: bool,
}

fn yes() -> bool {
    true
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// The shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

impl Config {
    /// The admin API's token, checked: `Err` names the problem when the API would listen
    /// beyond loopback without one, or the token is too short to be one.
    pub fn checked_admin_token(&self) -> Result<Option<&str>, String> {
        match self.admin_token.as_deref() {
            Some(t) if t.chars().count() < MIN_TOKEN_LEN || t.contains(char::is_whitespace) => Err(
                format!("admin_token: at least {MIN_TOKEN_LEN} characters without spaces"),
            ),
            Some(t) => Ok(Some(t)),
            None if self.admin_listen.ip().is_loopback() => Ok(None),
            None => Err(format!(
                "admin_listen {} is not a loopback address: set admin_token \
                 (IMS_HSS__ADMIN_TOKEN, at least {MIN_TOKEN_LEN} characters) and give it to \
                 imsctl as IMS_HSS_TOKEN, or listen on 127.0.0.1",
                self.admin_listen
            )),
        }
    }
}

/// The Diameter Cx side of the HSS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiameterConfig {
    /// TCP address of the Cx listener.
    pub listen: SocketAddr,
    /// Our Origin-Host (default `hss.<home_network>`).
    pub origin_host: Option<String>,
    /// Our Origin-Realm (default the home network).
    pub origin_realm: Option<String>,
    /// Origin-Host values of the CSCFs allowed to connect (others get 3010 and are closed).
    pub allowed_peers: Vec<String>,
    /// Origin-Realm values allowed to connect (empty: any realm).
    pub allowed_realms: Vec<String>,
    /// Tw: seconds of silence before we send a DWR.
    pub watchdog_seconds: u64,
    /// Most vectors in one MAA.
    pub max_auth_items: u32,
    /// IND bits of the SQN (TS 33.102 Annex C).
    pub sqn_ind_bits: u8,
    /// SQNs reserved in the store at once per IMPI (a crash skips the rest of a block; the UE
    /// accepts that). 1 with several HSS front-ends on one database.
    pub sqn_block: u32,
    /// Most Cx requests waiting on the store at once (a load or a write), across connections;
    /// past it every new request is answered 3004 DIAMETER_TOO_BUSY at once (the CSCFs turn
    /// that into 503) instead of queueing without bound. Requests answered from memory never
    /// wait.
    pub max_waiting: usize,
    /// Server-Capabilities for subscribers without a capability set of their own.
    pub capabilities: Capabilities,
}

/// S-CSCF capabilities answered in UAA/LIA (TS 29.228 Server-Capabilities).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Capabilities {
    /// Mandatory-Capability values.
    pub mandatory: Vec<u32>,
    /// Optional-Capability values.
    pub optional: Vec<u32>,
    /// Preferred S-CSCFs (Server-Name SIP URIs).
    pub server_names: Vec<String>,
}

impl Default for DiameterConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3868)),
            origin_host: None,
            origin_realm: None,
            allowed_peers: Vec::new(),
            allowed_realms: Vec::new(),
            watchdog_seconds: 30,
            max_auth_items: 5,
            sqn_ind_bits: 5,
            sqn_block: 32,
            max_waiting: 1000,
            capabilities: Capabilities::default(),
        }
    }
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
    #[error("configuration: {0}")]
    Config(String),
}

/// A started HSS: store open, admin API and Diameter listener bound.
pub struct Hss {
    subs: Arc<subscribers::Subscribers>,
    admin: tokio::net::TcpListener,
    router: axum::Router,
    diameter: server::Diameter,
    diameter_loop: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Hss {
    /// Opens (and migrates) the store, binds the admin API and the Diameter listener.
    pub async fn start(config: &Config) -> Result<Self, HssError> {
        let admin_token = config.checked_admin_token().map_err(HssError::Config)?;
        let store = ims_store::Store::open(&config.database).await?;
        let d = &config.diameter;
        let origin_host = d
            .origin_host
            .clone()
            .unwrap_or_else(|| format!("hss.{}", config.home_network));
        let origin_realm = d
            .origin_realm
            .clone()
            .unwrap_or_else(|| config.home_network.clone());
        let subs = subscribers::Subscribers::start_reserving(
            store,
            d.sqn_block,
            config.preload,
            Some(1u64 << d.sqn_ind_bits.min(16)),
        );
        let cx = cx::CxHandler::new(
            subs.clone(),
            cx::CxConfig {
                origin_host: origin_host.clone(),
                origin_realm: origin_realm.clone(),
                home_network: config.home_network.clone(),
                max_auth_items: d.max_auth_items,
                sqn_ind_bits: d.sqn_ind_bits,
                default_capabilities: ims_store::CapabilitySet {
                    name: String::new(),
                    mandatory: d.capabilities.mandatory.clone(),
                    optional: d.capabilities.optional.clone(),
                    server_names: d.capabilities.server_names.clone(),
                },
            },
        )
        .map_err(HssError::Config)?;
        let mut peer_cfg = ims_diameter::peer::PeerConfig::cx(&origin_host, &origin_realm);
        peer_cfg.allowed_peers = d.allowed_peers.clone();
        peer_cfg.allowed_realms = d.allowed_realms.clone();
        peer_cfg.watchdog = Duration::from_secs(d.watchdog_seconds.max(1));
        peer_cfg.product_name = "ims-core hss".into();
        peer_cfg.origin_state_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |t| t.as_secs() as u32);
        if !d.listen.ip().is_unspecified() {
            peer_cfg.host_ip_addresses = vec![d.listen.ip()];
        }
        let listener = server::bind(d.listen)
            .await
            .map_err(|source| HssError::Bind {
                addr: d.listen,
                source,
            })?;
        let metrics = Arc::new(metrics::Metrics::default());
        let (diameter, diameter_loop) =
            server::serve(listener, peer_cfg, cx, metrics.clone(), d.max_waiting);
        tracing::info!(listen = %diameter.local_addr(), origin_host = %origin_host, "HSS Cx listening");
        let admin = tokio::net::TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| HssError::Bind {
                addr: config.admin_listen,
                source,
            })?;
        if let Ok(a) = admin.local_addr() {
            tracing::info!(admin = %a, "HSS admin API listening");
        }
        let router = admin::router(admin::AppState {
            store: subs.store().clone(),
            subs: subs.clone(),
            diameter: diameter.clone(),
            metrics,
            origin_host,
            origin_realm,
            token: admin_token.map(Arc::from),
        });
        Ok(Self {
            subs,
            admin,
            router,
            diameter,
            diameter_loop: Box::pin(diameter_loop),
        })
    }

    /// The subscribers the HSS answers from (changes made here are written through).
    pub fn subscribers(&self) -> Arc<subscribers::Subscribers> {
        self.subs.clone()
    }

    /// The admin API's bound address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// The Diameter listener's bound address.
    pub fn diameter_addr(&self) -> SocketAddr {
        self.diameter.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HssError> {
        let admin = axum::serve(self.admin, self.router).with_graceful_shutdown(shutdown);
        let r = tokio::select! {
            r = admin => r.map_err(HssError::Serve),
            () = self.diameter_loop => Ok(()),
        };
        // Tell the CSCFs (DPR REBOOTING) and let them answer before the process goes.
        self.diameter.shutdown(Duration::from_secs(2)).await;
        r
    }
}

/// Starts the HSS from `config` and runs it until `shutdown`.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HssError> {
    Hss::start(&config).await?.run_until(shutdown).await
}

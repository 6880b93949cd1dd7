//! `ims-dns`: the lab's authoritative DNS server for the IMS domains (`hims.net`, `vims.net`,
//! or the 3GPP `ims.mncXXX.mccYYY.3gppnetwork.org` form), serving the A, AAAA, SRV and NAPTR
//! records through which the CSCFs find each other (RFC 3263) over UDP and TCP.
//!
//! Built on hickory-server's in-memory zone handler and catalog: this crate turns the
//! [`Config`] into zones (adding SOA and NS), binds the sockets and runs until shutdown.
//! Queries outside our zones are REFUSED (we are not a resolver); unknown names in our zones
//! get NXDOMAIN with the SOA, as any authoritative server answers. Every answer is counted
//! by query type and response code for Prometheus, on an admin API when `admin_listen` is set
//! (`metrics`).

mod config;
mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{self, NAPTR, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record as RR};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

pub use config::{Config, Record, Zone};

/// Why the DNS server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A name in the configuration is not a valid DNS name.
    #[error("zone {zone}: {what} `{name}` is not a valid DNS name: {reason}")]
    BadName {
        zone: String,
        what: &'static str,
        name: String,
        reason: String,
    },
    /// The zone could not take a record (e.g. a CNAME beside other data).
    #[error("zone {zone}: cannot add {kind} record `{name}`")]
    Rejected {
        zone: String,
        kind: &'static str,
        name: String,
    },
    /// The same zone twice.
    #[error("zone {0} is configured twice")]
    DuplicateZone(String),
    /// No address to listen on.
    #[error("`listen` is empty: give at least one address:port")]
    NoListen,
    /// Binding a socket failed.
    #[error("cannot bind {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The server's tasks failed.
    #[error("DNS server failed: {0}")]
    Server(String),
    /// `admin_listen` is not a loopback address.
    #[error(
        "admin_listen {0} is not a loopback address: the admin API has no authentication, so it listens on loopback only"
    )]
    AdminNotLoopback(SocketAddr),
}

fn parse_name(zone: &str, what: &'static str, raw: &str, origin: &Name) -> Result<Name, DnsError> {
    let bad = |reason: String| DnsError::BadName {
        zone: zone.to_owned(),
        what,
        name: raw.to_owned(),
        reason,
    };
    if raw == "@" {
        return Ok(origin.clone());
    }
    let name = Name::from_ascii(raw).map_err(|e| bad(e.to_string()))?;
    if name.is_fqdn() {
        Ok(name)
    } else {
        name.append_domain(origin).map_err(|e| bad(e.to_string()))
    }
}

/// Builds one zone handler from its configuration.
fn build_zone(z: &Zone, default_ttl: u32) -> Result<(LowerName, InMemoryZoneHandler), DnsError> {
    let zone = z.origin.trim_end_matches('.').to_owned();
    let origin = Name::from_ascii(&zone)
        .and_then(|n| n.append_domain(&Name::root()))
        .map_err(|e| DnsError::BadName {
            zone: zone.clone(),
            what: "origin",
            name: z.origin.clone(),
            reason: e.to_string(),
        })?;
    let ttl = z.ttl.unwrap_or(default_ttl);
    let mut handler =
        InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let ns = parse_name(&zone, "NS", "ns", &origin)?;
    let hostmaster = parse_name(&zone, "SOA rname", "hostmaster", &origin)?;
    let soa = SOA::new(ns.clone(), hostmaster, z.serial, 3600, 600, 86400, ttl);
    let mut add = |name: Name, ttl: u32, data: RData, kind: &'static str| {
        if handler.upsert_mut(RR::from_rdata(name.clone(), ttl, data), z.serial) {
            Ok(())
        } else {
            Err(DnsError::Rejected {
                zone: zone.clone(),
                kind,
                name: name.to_string(),
            })
        }
    };
    add(origin.clone(), ttl, RData::SOA(soa), "SOA")?;
    if !z
        .records
        .iter()
        .any(|r| matches!(r, Record::NS { name, .. } if name == "@"))
    {
        add(origin.clone(), ttl, RData::NS(rdata::NS(ns)), "NS")?;
    }
    for r in &z.records {
        let owner = parse_name(&zone, "record name", r.name(), &origin)?;
        let rttl = r.ttl().unwrap_or(ttl);
        let data = match r {
            Record::A { address, .. } => RData::A(rdata::A(*address)),
            Record::AAAA { address, .. } => RData::AAAA(rdata::AAAA(*address)),
            Record::SRV {
                priority,
                weight,
                port,
                target,
                ..
            } => RData::SRV(SRV::new(
                *priority,
                *weight,
                *port,
                parse_name(&zone, "SRV target", target, &origin)?,
            )),
            Record::NAPTR {
                order,
                preference,
                flags,
                service,
                regexp,
                replacement,
                ..
            } => RData::NAPTR(NAPTR::new(
                *order,
                *preference,
                flags.as_bytes().into(),
                service.as_bytes().into(),
                regexp.as_bytes().into(),
                parse_name(&zone, "NAPTR replacement", replacement, &origin)?,
            )),
            Record::CNAME { target, .. } => RData::CNAME(rdata::CNAME(parse_name(
                &zone,
                "CNAME target",
                target,
                &origin,
            )?)),
            Record::NS { target, .. } => {
                RData::NS(rdata::NS(parse_name(&zone, "NS target", target, &origin)?))
            }
        };
        add(owner, rttl, data, r.kind())?;
    }
    Ok((LowerName::new(&origin), handler))
}

/// Builds the catalog of every configured zone.
pub fn build_catalog(config: &Config) -> Result<Catalog, DnsError> {
    let mut catalog = Catalog::new();
    let mut seen = std::collections::HashSet::new();
    for z in &config.zones {
        let (name, handler) = build_zone(z, config.ttl)?;
        if !seen.insert(name.clone()) {
            return Err(DnsError::DuplicateZone(z.origin.clone()));
        }
        tracing::info!(zone = %name, records = z.records.len(), "zone loaded");
        catalog.upsert(name, vec![Arc::new(handler) as Arc<dyn ZoneHandler>]);
    }
    Ok(catalog)
}

/// A started DNS server: sockets bound, answering.
pub struct DnsServer {
    server: Server<metrics::Counted>,
    addrs: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
}

impl DnsServer {
    /// Validates the configuration, builds the zones and binds every listen address (UDP and
    /// TCP). Port 0 picks a free port, which [`DnsServer::local_addrs`] then tells.
    pub async fn start(config: &Config) -> Result<Self, DnsError> {
        if config.listen.is_empty() {
            return Err(DnsError::NoListen);
        }
        if let Some(a) = config.admin_listen
            && !a.ip().is_loopback()
        {
            return Err(DnsError::AdminNotLoopback(a));
        }
        let counts = Arc::new(metrics::Metrics::new());
        let catalog = build_catalog(config)?;
        let mut server = Server::new(metrics::Counted {
            catalog,
            metrics: counts.clone(),
        });
        let mut addrs = Vec::new();
        for &addr in &config.listen {
            let udp = UdpSocket::bind(addr)
                .await
                .map_err(|source| DnsError::Bind {
                    proto: "UDP",
                    addr,
                    source,
                })?;
            let bound = udp.local_addr().map_err(|source| DnsError::Bind {
                proto: "UDP",
                addr,
                source,
            })?;
            // TCP on the same port as UDP, also when the UDP port was picked by the kernel.
            let tcp = TcpListener::bind(bound)
                .await
                .map_err(|source| DnsError::Bind {
                    proto: "TCP",
                    addr: bound,
                    source,
                })?;
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(config.tcp_timeout_secs), 65535);
            tracing::info!(%bound, "serving DNS on UDP and TCP");
            addrs.push(bound);
        }
        let admin = match config.admin_listen {
            None => None,
            Some(addr) => {
                let bind = |source| DnsError::Bind {
                    proto: "admin TCP",
                    addr,
                    source,
                };
                let listener = TcpListener::bind(addr).await.map_err(bind)?;
                let local = listener.local_addr().map_err(bind)?;
                let app = metrics::router(counts, addrs.clone());
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::warn!(error = %e, "the DNS admin API stopped");
                    }
                });
                tracing::info!(%local, "admin API (/health, /metrics)");
                Some(local)
            }
        };
        Ok(Self {
            server,
            addrs,
            admin,
        })
    }

    /// The admin API's bound address, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The bound addresses, in `listen` order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Serves until `shutdown` resolves, then stops gracefully.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), DnsError> {
        tokio::select! {
            res = self.server.block_until_done() => {
                res.map_err(|e| DnsError::Server(e.to_string()))
            }
            () = shutdown => {
                self.server
                    .shutdown_gracefully()
                    .await
                    .map_err(|e| DnsError::Server(e.to_string()))
            }
        }
    }
}

/// Starts the server from `config` and runs it until `shutdown`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DnsError> {
    DnsServer::start(&config).await?.run_until(shutdown).await
}

//! The DNS daemon's configuration: where to listen and the zones it is authoritative for.
//!
//! ```toml
//! listen = ["127.0.0.53:10053"]   # UDP and TCP on each
//! ttl = 300                        # default for every record
//! admin_listen = "127.0.0.1:8053"  # optional: /health and /metrics (loopback only)
//!
//! [[zone]]
//! origin = "hims.net"
//! records = [
//!   { type = "A", name = "icscf1", address = "127.0.0.20" },
//!   { type = "SRV", name = "_sip._udp", priority = 0, weight = 0, port = 5060, target = "icscf1" },
//!   { type = "NAPTR", name = "@", order = 10, preference = 50, flags = "s", service = "SIP+D2U", replacement = "_sip._udp" },
//! ]
//! ```
//! Names are relative to the zone origin unless they end with a dot; `@` is the origin itself.
//! Each zone gets an SOA and an NS record (`ns.<origin>`) unless it lists its own NS.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Deserialize;

/// Top-level configuration of `ims-dns`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Addresses to serve on, UDP and TCP each.
    pub listen: Vec<SocketAddr>,
    /// Default TTL in seconds.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Idle timeout for TCP clients, seconds.
    #[serde(default = "default_tcp_timeout")]
    pub tcp_timeout_secs: u64,
    /// Log filter when RUST_LOG is unset.
    #[serde(default = "default_log")]
    pub log: String,
    /// The admin HTTP API (`/health`, `/metrics`): none when unset. A loopback address only
    /// (it has no authentication).
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// The zones served.
    #[serde(rename = "zone", default)]
    pub zones: Vec<Zone>,
}

fn default_ttl() -> u32 {
    300
}
fn default_tcp_timeout() -> u64 {
    10
}
fn default_log() -> String {
    "info".to_owned()
}

/// One authoritative zone.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    /// The zone apex, e.g. `hims.net`.
    pub origin: String,
    /// TTL for this zone's records (else the global default).
    pub ttl: Option<u32>,
    /// SOA serial.
    #[serde(default = "default_serial")]
    pub serial: u32,
    #[serde(default)]
    pub records: Vec<Record>,
}

fn default_serial() -> u32 {
    1
}

/// One resource record, by type.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Record {
    A {
        name: String,
        address: Ipv4Addr,
        ttl: Option<u32>,
    },
    AAAA {
        name: String,
        address: Ipv6Addr,
        ttl: Option<u32>,
    },
    /// RFC 2782: `_service._proto.name`.
    SRV {
        name: String,
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
        ttl: Option<u32>,
    },
    /// RFC 3403, as RFC 3263 uses it for SIP (`flags = "s"`, `service = "SIP+D2U"`, ...).
    NAPTR {
        name: String,
        order: u16,
        preference: u16,
        flags: String,
        service: String,
        #[serde(default)]
        regexp: String,
        replacement: String,
        ttl: Option<u32>,
    },
    CNAME {
        name: String,
        target: String,
        ttl: Option<u32>,
    },
    NS {
        name: String,
        target: String,
        ttl: Option<u32>,
    },
}

impl Record {
    /// The owner name as written.
    pub fn name(&self) -> &str {
        match self {
            Record::A { name, .. }
            | Record::AAAA { name, .. }
            | Record::SRV { name, .. }
            | Record::NAPTR { name, .. }
            | Record::CNAME { name, .. }
            | Record::NS { name, .. } => name,
        }
    }

    /// The record's own TTL, if set.
    pub fn ttl(&self) -> Option<u32> {
        match self {
            Record::A { ttl, .. }
            | Record::AAAA { ttl, .. }
            | Record::SRV { ttl, .. }
            | Record::NAPTR { ttl, .. }
            | Record::CNAME { ttl, .. }
            | Record::NS { ttl, .. } => *ttl,
        }
    }

    /// The record type's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::A { .. } => "A",
            Record::AAAA { .. } => "AAAA",
            Record::SRV { .. } => "SRV",
            Record::NAPTR { .. } => "NAPTR",
            Record::CNAME { .. } => "CNAME",
            Record::NS { .. } => "NS",
        }
    }
}

//! Diameter over TCP for the daemons: one connection driver ([`conn`], internal) that pumps
//! the sans-io [`ims_diameter::peer::Peer`], under both roles:
//! - [`client`]: the CSCFs' connection to the HSS (reconnect with back-off, watchdog, many
//!   requests in flight) — [`DiameterClient`];
//! - [`server`]: a listener (the HSS's), its accepted connections answered by a
//!   [`server::Handler`], a registry of open peers through which the server sends its own
//!   requests (RTR, PPR), relay routing and overload (3004).

pub mod client;
mod conn;
pub mod server;

pub use client::{CxClientConfig, DiameterClient, refusal};

use std::net::SocketAddr;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The connection is not open (its first attempt failed, down, reconnecting, or
    /// SUSPECT: our DWR went unanswered for Tw), or it went down with the request waiting.
    #[error("Diameter connection to {0} is not open")]
    NotOpen(SocketAddr),
    /// The answer did not come in time.
    #[error("no Diameter answer from {0}")]
    NoAnswer(SocketAddr),
    /// The client task is gone.
    #[error("the Diameter client has stopped")]
    Stopped,
}

//! The tokio side of the IMS core: everything that touches sockets and timers for the
//! sans-io protocol crates. Today: RFC 3263 SIP server location ([`dns`]) and the SIP
//! transport over UDP and TCP with Content-Length framing and connection reuse ([`sip`]).
//! [`diameter`] is the CSCFs' Diameter client connection (reconnect, watchdog, many requests
//! in flight). The SIP transaction timers join here as the CSCFs land.

pub mod diameter;
pub mod dns;
pub mod sip;

//! The tokio side of the IMS core: everything that touches sockets and timers for the
//! sans-io protocol crates. Today: RFC 3263 SIP server location ([`dns`]) and the SIP
//! transport over UDP and TCP with Content-Length framing and connection reuse ([`sip`]).
//! The transaction timers and the Diameter client connections (reconnect, watchdog) join
//! here as the CSCFs land.

pub mod dns;
pub mod sip;

//! The tokio side of the IMS core: everything that touches sockets and timers for the
//! sans-io protocol crates. Today: RFC 3263 SIP server location ([`dns`]). The SIP transports
//! (UDP, TCP with Content-Length framing and connection reuse, transaction timers) and the
//! Diameter peer connections (TCP, reconnect, watchdog) join here as the daemons land.

pub mod dns;

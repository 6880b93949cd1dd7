//! The tokio side of the IMS core: everything that touches sockets and timers for the
//! sans-io protocol crates. Today: RFC 3263 SIP server location ([`dns`]) and the SIP
//! transport over UDP and TCP with Content-Length framing and connection reuse ([`sip`]).
//! [`diameter`] is Diameter over TCP: one connection driver under the CSCFs' client
//! (reconnect, watchdog, many requests in flight) and the HSS's server (accepted peers, a
//! handler, requests of its own to open peers, 3004 under overload). [`endpoint`] is the CSCFs' transaction layer over the transport (server
//! transactions absorbing retransmissions, client transactions with Timer E/F, stateless
//! forwarding of responses by Via, the proxy checks of RFC 3261 §16.3, INVITE server and
//! client transactions with CANCEL). [`proxy`] is the stateful proxy core for INVITE
//! (forking, CANCEL, the best answer). [`shards`] is the
//! sharded map the daemons keep their per-key state in. [`clock`] prints wall-clock times
//! (RFC 3339) for the admin APIs and tools. [`metrics`] counts the CSCFs' Diameter answers
//! by result for their Prometheus metrics.

pub mod clock;
pub mod diameter;
pub mod dns;
pub mod endpoint;
pub mod metrics;
pub mod proxy;
pub mod shards;
pub mod sip;

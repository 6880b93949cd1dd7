//! The HSS's single integration-test binary. Modules:
//! - `admin`: the admin API over real HTTP.
//! - `cx`: every Cx case of the issue, each request encoded by our codec and answered by the
//!   HSS's Cx handler, the vectors judged by the aka crate (a USIM that must accept them).
//! - `wire`: the HSS over real TCP (allow-list, many in flight, DWR, RTR/PPR, metrics),
//!   spoken to by `cxclient` (our Diameter peer over a std socket).
//! - `hostile`: a hostile Diameter corpus over real TCP, a flood of CERs, and a legitimate
//!   client that must not notice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod cx;
mod cxclient;
mod hostile;
mod wire;

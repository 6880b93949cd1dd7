//! The crate's single integration-test binary. Modules:
//! - `tshark`: every command encoded into a pcap and judged by Wireshark's dissector.
//! - `roundtrip`: proptest round trips of AVP trees and Cx commands; random bytes never panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod peer;
mod roundtrip;
mod samples;
mod tshark;

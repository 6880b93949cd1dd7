//! Integration tests of ims-testkit's helpers that drive outside tools: network-namespace
//! topologies ([`netns`], root + ip/ping/tcpdump/tshark) and the SIPp UE scenarios of
//! `bin/tests/sipp/` ([`sipp`], sipp), run against a SIPp stand-in registrar.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;
mod sipp;

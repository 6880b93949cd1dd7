//! The sip crate's single integration-test binary. Modules:
//! - `ims`: the IMS messages rsip and rsipstack got wrong, and the typed views of a real
//!   IMS REGISTER.
//! - `roundtrip`: proptest: parse(serialize(m)) == m for generated messages, byte-identical
//!   round trip, random bytes and random edits never panic.
//! - `torture`: the RFC 4475 torture messages, byte-exact from the RFC's archive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ims;
mod roundtrip;
mod torture;

//! Diameter for IMS (placeholder header; the codec fills this in).
pub mod peer;

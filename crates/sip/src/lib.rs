//! SIP for IMS (placeholder header; the message layer fills this in).
pub mod transaction;

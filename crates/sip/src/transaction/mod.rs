//! RFC 3261 transactions, sans-io (placeholder).

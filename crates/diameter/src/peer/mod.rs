//! RFC 6733 peer state machine, sans-io (placeholder).

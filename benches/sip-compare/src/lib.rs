//! Only the bench (benches/compare.rs) lives here.

//! Session-Id generation (RFC 6733 §8.8): `<DiameterIdentity>;<high 32 bits>;<low 32 bits>[;<optional>]`.
//!
//! The 64-bit counter starts with the high half set from the caller's seed (typically the
//! boot time in seconds) and increments atomically, carrying into the high half, so ids stay
//! unique across restarts and threads.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Generates Session-Ids for one Diameter identity.
#[derive(Debug)]
pub struct SessionIdGenerator {
    host: String,
    counter: AtomicU64,
}

impl SessionIdGenerator {
    /// `host` is our Origin-Host; `high` seeds the high 32 bits (e.g. the boot time).
    pub fn new(host: impl Into<String>, high: u32) -> Self {
        Self {
            host: host.into(),
            counter: AtomicU64::new(u64::from(high) << 32),
        }
    }

    fn next_pair(&self) -> (u32, u32) {
        let v = self.counter.fetch_add(1, Ordering::Relaxed);
        ((v >> 32) as u32, v as u32)
    }

    /// Appends the next Session-Id to `out` (no allocation when `out` has room).
    pub fn write_next(&self, out: &mut String, optional: Option<&str>) {
        let (hi, lo) = self.next_pair();
        let _ = write!(out, "{};{hi};{lo}", self.host);
        if let Some(o) = optional {
            out.push(';');
            out.push_str(o);
        }
    }

    /// The next Session-Id.
    pub fn next_id(&self) -> String {
        let mut s = String::with_capacity(self.host.len() + 24);
        self.write_next(&mut s, None);
        s
    }

    /// The next Session-Id with an optional trailing part.
    pub fn next_with(&self, optional: &str) -> String {
        let mut s = String::with_capacity(self.host.len() + 25 + optional.len());
        self.write_next(&mut s, Some(optional));
        s
    }
}

/// Splits a Session-Id into `(identity, high, low, optional)` when it has the recommended
/// form (other forms are legal: the Session-Id is opaque to receivers).
pub fn parse_session_id(s: &str) -> Option<(&str, u32, u32, Option<&str>)> {
    let mut it = s.splitn(4, ';');
    let host = it.next()?;
    let hi = it.next()?.parse().ok()?;
    let lo = it.next()?.parse().ok()?;
    Some((host, hi, lo, it.next()))
}

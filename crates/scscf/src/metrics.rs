//! The S-CSCF's Prometheus metrics, in the HSS's way (`ims_hss::metrics`): fixed arrays of
//! atomic counters chosen by index, no lock on the hot path, rendered as the Prometheus text
//! format at `/metrics` on the admin API (`admin_listen`).
//!
//! - `ims_scscf_register_total{status}`: REGISTERs answered, by final status (`other` for a
//!   status outside the known set).
//! - `ims_scscf_register_seconds`: time from a REGISTER handed to the registrar to its final
//!   response (the Cx round trips included).
//! - `ims_scscf_auth_failures_total{cause}`: wrong answers to our challenges, by the likely
//!   cause the log line names (`FailureCause::code`).
//! - `ims_scscf_auth_lockouts_total`: lockouts started.
//! - `ims_scscf_registrations`: registrations held (IMPUs registered here).
//! - `ims_scscf_sip_transactions{side}`: SIP transactions held by the endpoint, `server`
//!   and `client` (a finished one stays for Timer J or K to absorb retransmissions).
//! - `ims_scscf_cx_answers_total{command,result}`: MAA and SAA by Result-Code or
//!   Experimental-Result-Code, or `timeout`, `unreachable`, `invalid`; counted by the Cx
//!   client ([`crate::cx::CxClient`], [`ims_net::metrics::CxAnswers`]) and rendered after
//!   the rest.
//!
//! The P-CSCF and I-CSCF have the same (`ims_pcscf::metrics`, `ims_icscf::metrics`). Still to
//! come (issue #18): the shared part moved to `ims-telemetry`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Statuses with their own series.
const STATUSES: [u16; 12] = [200, 400, 401, 403, 405, 423, 480, 500, 501, 503, 504, 505];

/// Failure causes with their own series (the codes of `FailureCause`).
pub const CAUSES: [&str; 4] = ["autn_rejected", "wrong_res", "wrong_password", "mismatch"];

const BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The S-CSCF's counters.
pub struct Metrics {
    register: [AtomicU64; STATUSES.len() + 1],
    latency: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
    failures: [AtomicU64; CAUSES.len()],
    lockouts: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            register: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_count: AtomicU64::new(0),
            latency_sum_ns: AtomicU64::new(0),
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
            lockouts: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one REGISTER answered with `status` after `took`.
    pub fn register(&self, status: u16, took: Duration) {
        let i = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        self.register[i].fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.latency[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_ns
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Counts a wrong answer of cause `code` (one of [`CAUSES`]; others are not counted).
    pub fn auth_failure(&self, code: &str) {
        if let Some(i) = CAUSES.iter().position(|c| *c == code) {
            self.failures[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts a lockout started.
    pub fn lockout(&self) {
        self.lockouts.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition, with `registrations` held and the endpoint's
    /// `(server, client)` transactions.
    pub fn render(&self, registrations: usize, transactions: (usize, usize)) -> String {
        let mut o = String::with_capacity(2048);
        o.push_str("# HELP ims_scscf_register_total REGISTERs answered, by final status.\n");
        o.push_str("# TYPE ims_scscf_register_total counter\n");
        for (i, c) in self.register.iter().enumerate() {
            let v = c.load(Relaxed);
            if v == 0 {
                continue;
            }
            let status = STATUSES.get(i).map_or("other".to_owned(), u16::to_string);
            let _ = writeln!(o, "ims_scscf_register_total{{status=\"{status}\"}} {v}");
        }
        o.push_str("# HELP ims_scscf_register_seconds Time to answer a REGISTER.\n");
        o.push_str("# TYPE ims_scscf_register_seconds histogram\n");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "ims_scscf_register_seconds_bucket{{le=\"{b}\"}} {}",
                self.latency[i].load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            o,
            "ims_scscf_register_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "ims_scscf_register_seconds_sum {}",
            self.latency_sum_ns.load(Relaxed) as f64 / 1e9
        );
        let _ = writeln!(o, "ims_scscf_register_seconds_count {count}");
        o.push_str(
            "# HELP ims_scscf_auth_failures_total Wrong answers to challenges, by likely cause.\n",
        );
        o.push_str("# TYPE ims_scscf_auth_failures_total counter\n");
        for (i, cause) in CAUSES.iter().enumerate() {
            let _ = writeln!(
                o,
                "ims_scscf_auth_failures_total{{cause=\"{cause}\"}} {}",
                self.failures[i].load(Relaxed)
            );
        }
        o.push_str("# HELP ims_scscf_auth_lockouts_total Lockouts started.\n");
        o.push_str("# TYPE ims_scscf_auth_lockouts_total counter\n");
        let _ = writeln!(
            o,
            "ims_scscf_auth_lockouts_total {}",
            self.lockouts.load(Relaxed)
        );
        o.push_str("# HELP ims_scscf_registrations Registrations held (IMPUs registered here).\n");
        o.push_str("# TYPE ims_scscf_registrations gauge\n");
        let _ = writeln!(o, "ims_scscf_registrations {registrations}");
        o.push_str("# HELP ims_scscf_sip_transactions SIP transactions held, by side.\n");
        o.push_str("# TYPE ims_scscf_sip_transactions gauge\n");
        let (server, client) = transactions;
        let _ = writeln!(o, "ims_scscf_sip_transactions{{side=\"server\"}} {server}");
        let _ = writeln!(o, "ims_scscf_sip_transactions{{side=\"client\"}} {client}");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts() {
        let m = Metrics::default();
        m.register(401, Duration::from_micros(700));
        m.register(200, Duration::from_millis(3));
        m.register(200, Duration::from_millis(30));
        m.register(299, Duration::from_secs(9));
        m.auth_failure("wrong_res");
        m.auth_failure("nonsense");
        m.lockout();
        let t = m.render(7, (3, 1));
        assert!(
            t.contains("ims_scscf_register_total{status=\"200\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("ims_scscf_register_total{status=\"401\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("ims_scscf_register_total{status=\"other\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("ims_scscf_register_seconds_bucket{le=\"0.001\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("ims_scscf_register_seconds_bucket{le=\"0.005\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("ims_scscf_register_seconds_bucket{le=\"+Inf\"} 4"),
            "{t}"
        );
        assert!(
            t.contains("ims_scscf_auth_failures_total{cause=\"wrong_res\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("ims_scscf_auth_failures_total{cause=\"autn_rejected\"} 0"),
            "{t}"
        );
        assert!(t.contains("ims_scscf_auth_lockouts_total 1"), "{t}");
        assert!(t.contains("ims_scscf_registrations 7"), "{t}");
    }
}

//! The S-CSCF's Prometheus metrics, made of the shared pieces of [`ims_net::metrics`] (atomic
//! counters chosen by index, no lock on the hot path), rendered as the Prometheus text format
//! at `/metrics` on the admin API (`admin_listen`).
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
//! - `ims_scscf_cx_request_seconds{command}`: histograms of the MAR and SAR round trips, from
//!   handing the request to the Diameter client to its answer, as the S-CSCF sees the HSS
//!   (the HSS's own `ims_hss_cx_answer_seconds` leaves out the network and both Diameter
//!   stacks); timed by the Cx client too, and rendered with the answers. Only answered
//!   requests are observed: those that got none are the `timeout` and `unreachable` of
//!   `ims_scscf_cx_answers_total` ([`ims_net::metrics::HistogramsBy`]).
//! - `ims_scscf_store_batches_total`, `ims_scscf_store_writes_total`: transactions the store
//!   writer committed (or tried), and the registration changes in them (their ratio is the
//!   group commit's batch size).
//!
//! The P-CSCF and I-CSCF have the same (`ims_pcscf::metrics`, `ims_icscf::metrics`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use ims_net::metrics::{ByLabel, CSCF_BUCKETS, Histogram, counter, gauge, transactions};

/// Statuses with their own series.
static STATUSES: [u16; 12] = [200, 400, 401, 403, 405, 423, 480, 500, 501, 503, 504, 505];

/// Failure causes with their own series (the codes of `FailureCause`).
pub static CAUSES: [&str; 4] = ["autn_rejected", "wrong_res", "wrong_password", "mismatch"];

/// The S-CSCF's counters.
pub struct Metrics {
    register: ByLabel<u16>,
    latency: Histogram,
    failures: ByLabel<&'static str>,
    lockouts: AtomicU64,
    store_batches: AtomicU64,
    store_writes: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            register: ByLabel::new(&STATUSES),
            latency: Histogram::new(&CSCF_BUCKETS),
            failures: ByLabel::new(&CAUSES),
            lockouts: AtomicU64::new(0),
            store_batches: AtomicU64::new(0),
            store_writes: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one REGISTER answered with `status` after `took`.
    pub fn register(&self, status: u16, took: Duration) {
        self.register.count(Some(status));
        self.latency.observe(took);
    }

    /// Counts a wrong answer of cause `code` (one of [`CAUSES`]; others are not counted).
    pub fn auth_failure(&self, code: &str) {
        if let Some(c) = CAUSES.iter().find(|c| **c == code) {
            self.failures.count(Some(*c));
        }
    }

    /// Counts a lockout started.
    pub fn lockout(&self) {
        self.lockouts.fetch_add(1, Relaxed);
    }

    /// Counts one store transaction of `writes` registration changes.
    pub fn store_batch(&self, writes: usize) {
        self.store_batches.fetch_add(1, Relaxed);
        self.store_writes.fetch_add(writes as u64, Relaxed);
    }

    /// The Prometheus text exposition, with `registrations` held and the endpoint's
    /// `(server, client)` transactions.
    pub fn render(&self, registrations: usize, sip_transactions: (usize, usize)) -> String {
        let mut o = String::with_capacity(2048);
        let help = "REGISTERs answered, by final status.";
        self.register
            .render(&mut o, "ims_scscf_register_total", "status", help, true);
        let help = "Time to answer a REGISTER.";
        self.latency
            .render(&mut o, "ims_scscf_register_seconds", help);
        let help = "Wrong answers to challenges, by likely cause.";
        self.failures.render(
            &mut o,
            "ims_scscf_auth_failures_total",
            "cause",
            help,
            false,
        );
        let help = "Lockouts started.";
        let lockouts = self.lockouts.load(Relaxed);
        counter(&mut o, "ims_scscf_auth_lockouts_total", help, lockouts);
        let help = "Store transactions of the registration writer.";
        let batches = self.store_batches.load(Relaxed);
        counter(&mut o, "ims_scscf_store_batches_total", help, batches);
        let help = "Registration changes written to the store.";
        let writes = self.store_writes.load(Relaxed);
        counter(&mut o, "ims_scscf_store_writes_total", help, writes);
        let help = "Registrations held (IMPUs registered here).";
        gauge(&mut o, "ims_scscf_registrations", help, registrations);
        transactions(&mut o, "ims_scscf", sip_transactions);
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
        m.store_batch(3);
        m.store_batch(1);
        let t = m.render(7, (3, 1));
        assert!(t.contains("ims_scscf_store_batches_total 2"), "{t}");
        assert!(t.contains("ims_scscf_store_writes_total 4"), "{t}");
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

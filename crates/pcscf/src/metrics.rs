//! The P-CSCF's Prometheus metrics, in the S-CSCF's way (`ims_scscf::metrics`): fixed arrays
//! of atomic counters chosen by index, no lock on the hot path, rendered as the Prometheus
//! text format at `/metrics` on the admin API (`admin_listen`, [`crate::admin`]).
//!
//! - `ims_pcscf_requests_total{method}`: requests received (from UEs and from the core), one
//!   per new transaction, by method (`other` for a method outside the known set).
//! - `ims_pcscf_responses_total{status}`: final responses sent, ours or forwarded (toward UEs
//!   and, for requests from the core, toward the core), by status (`other` outside the set).
//! - `ims_pcscf_register_seconds`: time from a REGISTER taken in by the SIP endpoint to its
//!   final response handed back to it (the core's round trip, the IPsec SA installation and
//!   our refusals included; the reg event SUBSCRIBE that may follow a 200 is not).
//! - `ims_pcscf_registrations`: registered UE flows held.
//! - `ims_pcscf_ipsec_sa_sets`: IPsec SA sets held (four SAs each, one set per UE flow; 0
//!   when IPsec is off).
//! - `ims_pcscf_overload_refusals_total{what}`: 503s from the in-flight limits,
//!   `register` (`max_registrations_in_flight`) and `invite` (`max_invites_in_flight`).
//! - `ims_pcscf_sip_transactions{side}`: SIP transactions held by the endpoint, `server`
//!   and `client`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use ims_sip::Method;

/// Methods with their own series.
const METHODS: [Method; 14] = [
    Method::Register,
    Method::Invite,
    Method::Ack,
    Method::Bye,
    Method::Cancel,
    Method::Options,
    Method::Subscribe,
    Method::Notify,
    Method::Prack,
    Method::Update,
    Method::Message,
    Method::Refer,
    Method::Info,
    Method::Publish,
];

/// Final statuses with their own series.
const STATUSES: [u16; 20] = [
    200, 202, 400, 401, 403, 404, 408, 420, 421, 480, 481, 483, 486, 487, 494, 500, 501, 503, 504,
    603,
];

const BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// What an overload refusal refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A new registration (`max_registrations_in_flight`).
    Register,
    /// A new call (`max_invites_in_flight`).
    Invite,
}

/// The P-CSCF's counters.
pub struct Metrics {
    requests: [AtomicU64; METHODS.len() + 1],
    responses: [AtomicU64; STATUSES.len() + 1],
    latency: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
    refusals: [AtomicU64; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            responses: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_count: AtomicU64::new(0),
            latency_sum_ns: AtomicU64::new(0),
            refusals: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Metrics {
    /// Counts a request received (`None`: a method we do not know).
    pub fn request(&self, method: Option<Method>) {
        let i = method
            .and_then(|m| METHODS.iter().position(|k| *k == m))
            .unwrap_or(METHODS.len());
        self.requests[i].fetch_add(1, Relaxed);
    }

    /// Counts a final response sent.
    pub fn response(&self, status: u16) {
        let i = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        self.responses[i].fetch_add(1, Relaxed);
    }

    /// Counts a REGISTER answered after `took`.
    pub fn register(&self, took: Duration) {
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

    /// Counts a 503 from an in-flight limit.
    pub fn refused(&self, what: Refused) {
        self.refusals[what as usize].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition, with `registrations` and `ipsec_sets` held and the
    /// endpoint's `(server, client)` transactions.
    pub fn render(
        &self,
        registrations: usize,
        ipsec_sets: usize,
        transactions: (usize, usize),
    ) -> String {
        let mut o = String::with_capacity(4096);
        o.push_str("# HELP ims_pcscf_requests_total Requests received, by method.\n");
        o.push_str("# TYPE ims_pcscf_requests_total counter\n");
        for (i, c) in self.requests.iter().enumerate() {
            let v = c.load(Relaxed);
            if v == 0 {
                continue;
            }
            let method = METHODS.get(i).map_or("other", |m| m.as_str());
            let _ = writeln!(o, "ims_pcscf_requests_total{{method=\"{method}\"}} {v}");
        }
        o.push_str("# HELP ims_pcscf_responses_total Final responses sent, by status.\n");
        o.push_str("# TYPE ims_pcscf_responses_total counter\n");
        for (i, c) in self.responses.iter().enumerate() {
            let v = c.load(Relaxed);
            if v == 0 {
                continue;
            }
            let status = STATUSES.get(i).map_or("other".to_owned(), u16::to_string);
            let _ = writeln!(o, "ims_pcscf_responses_total{{status=\"{status}\"}} {v}");
        }
        o.push_str("# HELP ims_pcscf_register_seconds Time to answer a REGISTER.\n");
        o.push_str("# TYPE ims_pcscf_register_seconds histogram\n");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "ims_pcscf_register_seconds_bucket{{le=\"{b}\"}} {}",
                self.latency[i].load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            o,
            "ims_pcscf_register_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "ims_pcscf_register_seconds_sum {}",
            self.latency_sum_ns.load(Relaxed) as f64 / 1e9
        );
        let _ = writeln!(o, "ims_pcscf_register_seconds_count {count}");
        o.push_str("# HELP ims_pcscf_registrations Registered UE flows held.\n");
        o.push_str("# TYPE ims_pcscf_registrations gauge\n");
        let _ = writeln!(o, "ims_pcscf_registrations {registrations}");
        o.push_str("# HELP ims_pcscf_ipsec_sa_sets IPsec SA sets held (four SAs each).\n");
        o.push_str("# TYPE ims_pcscf_ipsec_sa_sets gauge\n");
        let _ = writeln!(o, "ims_pcscf_ipsec_sa_sets {ipsec_sets}");
        o.push_str(
            "# HELP ims_pcscf_overload_refusals_total 503s from the in-flight limits, by what they refused.\n",
        );
        o.push_str("# TYPE ims_pcscf_overload_refusals_total counter\n");
        for (what, i) in [("register", Refused::Register), ("invite", Refused::Invite)] {
            let _ = writeln!(
                o,
                "ims_pcscf_overload_refusals_total{{what=\"{what}\"}} {}",
                self.refusals[i as usize].load(Relaxed)
            );
        }
        o.push_str("# HELP ims_pcscf_sip_transactions SIP transactions held, by side.\n");
        o.push_str("# TYPE ims_pcscf_sip_transactions gauge\n");
        let (server, client) = transactions;
        let _ = writeln!(o, "ims_pcscf_sip_transactions{{side=\"server\"}} {server}");
        let _ = writeln!(o, "ims_pcscf_sip_transactions{{side=\"client\"}} {client}");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts() {
        let m = Metrics::default();
        m.request(Some(Method::Register));
        m.request(Some(Method::Register));
        m.request(Some(Method::Invite));
        m.request(None);
        m.response(401);
        m.response(200);
        m.response(200);
        m.response(299);
        m.register(Duration::from_micros(700));
        m.register(Duration::from_millis(3));
        m.register(Duration::from_secs(9));
        m.refused(Refused::Register);
        m.refused(Refused::Invite);
        m.refused(Refused::Invite);
        let t = m.render(5, 2, (3, 1));
        for line in [
            "ims_pcscf_requests_total{method=\"REGISTER\"} 2",
            "ims_pcscf_requests_total{method=\"INVITE\"} 1",
            "ims_pcscf_requests_total{method=\"other\"} 1",
            "ims_pcscf_responses_total{status=\"200\"} 2",
            "ims_pcscf_responses_total{status=\"401\"} 1",
            "ims_pcscf_responses_total{status=\"other\"} 1",
            "ims_pcscf_register_seconds_bucket{le=\"0.001\"} 1",
            "ims_pcscf_register_seconds_bucket{le=\"0.005\"} 2",
            "ims_pcscf_register_seconds_bucket{le=\"5\"} 2",
            "ims_pcscf_register_seconds_bucket{le=\"+Inf\"} 3",
            "ims_pcscf_register_seconds_count 3",
            "ims_pcscf_registrations 5",
            "ims_pcscf_ipsec_sa_sets 2",
            "ims_pcscf_overload_refusals_total{what=\"register\"} 1",
            "ims_pcscf_overload_refusals_total{what=\"invite\"} 2",
            "ims_pcscf_sip_transactions{side=\"server\"} 3",
            "ims_pcscf_sip_transactions{side=\"client\"} 1",
        ] {
            assert!(t.contains(line), "no `{line}` in\n{t}");
        }
        assert!(!t.contains("method=\"BYE\""), "{t}");
    }
}

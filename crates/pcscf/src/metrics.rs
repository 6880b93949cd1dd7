//! The P-CSCF's Prometheus metrics, made of the shared pieces of [`ims_net::metrics`] (atomic
//! counters chosen by index, no lock on the hot path), rendered as the Prometheus text
//! format at `/metrics` on the admin API (`admin_listen`, [`crate::admin`]).
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
//! - `ims_pcscf_register_in_flight_limit`: how many REGISTERs may be in the core now
//!   ([`crate::admission`]: `max_registrations_in_flight`, less while the core is slower
//!   than `register_latency_target_ms`).
//! - `ims_pcscf_store_batches_total`, `ims_pcscf_store_writes_total`,
//!   `ims_pcscf_store_failed_writes_total`: transactions the registration store writer
//!   committed or tried (with `database` set, [`crate::persist`]), the registration changes in
//!   them (their ratio is the batching), and the changes the store refused.
//! - `ims_pcscf_sip_transactions{side}`: SIP transactions held by the endpoint, `server`
//!   and `client`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use ims_net::metrics::{ByLabel, CSCF_BUCKETS, Histogram, counter, gauge, transactions};
use ims_sip::Method;

/// Methods with their own series.
static METHODS: [Method; 14] = [
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
static STATUSES: [u16; 21] = [
    200, 202, 400, 401, 403, 404, 408, 420, 421, 430, 480, 481, 483, 486, 487, 494, 500, 501, 503,
    504, 603,
];

/// The labels of the overload refusals.
static REFUSED: [&str; 2] = ["register", "invite"];

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
    requests: ByLabel<Method>,
    responses: ByLabel<u16>,
    register: Histogram,
    refusals: ByLabel<&'static str>,
    store_batches: AtomicU64,
    store_writes: AtomicU64,
    store_failed: AtomicU64,
    in_flight_limit: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: ByLabel::new(&METHODS),
            responses: ByLabel::new(&STATUSES),
            register: Histogram::new(&CSCF_BUCKETS),
            refusals: ByLabel::new(&REFUSED),
            store_batches: AtomicU64::new(0),
            store_writes: AtomicU64::new(0),
            store_failed: AtomicU64::new(0),
            in_flight_limit: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts a request received (`None`: a method we do not know).
    pub fn request(&self, method: Option<Method>) {
        self.requests.count(method);
    }

    /// Counts a final response sent.
    pub fn response(&self, status: u16) {
        self.responses.count(Some(status));
    }

    /// Counts a REGISTER answered after `took`.
    pub fn register(&self, took: Duration) {
        self.register.observe(took);
    }

    /// Counts a 503 from an in-flight limit.
    pub fn refused(&self, what: Refused) {
        self.refusals.count(Some(REFUSED[what as usize]));
    }

    /// Counts one store transaction of `writes` registration changes, `failed` of which the
    /// store refused.
    pub fn store_batch(&self, writes: usize, failed: usize) {
        self.store_batches.fetch_add(1, Relaxed);
        self.store_writes.fetch_add(writes as u64, Relaxed);
        self.store_failed.fetch_add(failed as u64, Relaxed);
    }

    /// The REGISTER in-flight limit moved (or was set at start).
    pub fn in_flight_limit(&self, limit: usize) {
        self.in_flight_limit.store(limit as u64, Relaxed);
    }

    /// The Prometheus text exposition, with `registrations` and `ipsec_sets` held and the
    /// endpoint's `(server, client)` transactions.
    pub fn render(
        &self,
        registrations: usize,
        ipsec_sets: usize,
        sip_transactions: (usize, usize),
    ) -> String {
        let mut o = String::with_capacity(4096);
        let p = "ims_pcscf";
        let help = "Requests received, by method.";
        self.requests
            .render(&mut o, &format!("{p}_requests_total"), "method", help, true);
        let help = "Final responses sent, by status.";
        self.responses.render(
            &mut o,
            &format!("{p}_responses_total"),
            "status",
            help,
            true,
        );
        let help = "Time to answer a REGISTER.";
        self.register
            .render(&mut o, &format!("{p}_register_seconds"), help);
        let help = "Registered UE flows held.";
        gauge(&mut o, &format!("{p}_registrations"), help, registrations);
        let help = "IPsec SA sets held (four SAs each).";
        gauge(&mut o, &format!("{p}_ipsec_sa_sets"), help, ipsec_sets);
        let help = "503s from the in-flight limits, by what they refused.";
        let name = format!("{p}_overload_refusals_total");
        self.refusals.render(&mut o, &name, "what", help, false);
        let help = "REGISTERs that may be in the core now (adapted to its latency).";
        let n = self.in_flight_limit.load(Relaxed);
        gauge(&mut o, &format!("{p}_register_in_flight_limit"), help, n);
        let help = "Store transactions of the registration writer.";
        let n = self.store_batches.load(Relaxed);
        counter(&mut o, &format!("{p}_store_batches_total"), help, n);
        let help = "Registration changes written to the store.";
        let n = self.store_writes.load(Relaxed);
        counter(&mut o, &format!("{p}_store_writes_total"), help, n);
        let help = "Registration changes the store refused (kept in memory).";
        let n = self.store_failed.load(Relaxed);
        counter(&mut o, &format!("{p}_store_failed_writes_total"), help, n);
        transactions(&mut o, p, sip_transactions);
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
        m.response(430);
        m.store_batch(3, 0);
        m.store_batch(2, 1);
        m.in_flight_limit(37);
        let t = m.render(5, 2, (3, 1));
        for line in [
            "ims_pcscf_requests_total{method=\"REGISTER\"} 2",
            "ims_pcscf_register_in_flight_limit 37",
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
            "ims_pcscf_responses_total{status=\"430\"} 1",
            "ims_pcscf_store_batches_total 2",
            "ims_pcscf_store_writes_total 5",
            "ims_pcscf_store_failed_writes_total 1",
        ] {
            assert!(t.contains(line), "no `{line}` in\n{t}");
        }
        assert!(!t.contains("method=\"BYE\""), "{t}");
    }
}

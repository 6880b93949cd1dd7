//! The I-CSCF's Prometheus metrics, in the S-CSCF's way (`ims_scscf::metrics`): fixed arrays
//! of atomic counters chosen by index, no lock on the hot path, rendered as the Prometheus
//! text format at `/metrics` on the admin API (`admin_listen`, [`crate::admin`]).
//!
//! - `ims_icscf_requests_total{method}`: requests received, one per new transaction, by
//!   method (`other` for a method outside the known set).
//! - `ims_icscf_responses_total{status}`: final responses sent, ours or forwarded from an
//!   S-CSCF, by status (`other` outside the known set).
//! - `ims_icscf_cx_answers_total{command,result}`: UAA and LIA by Result-Code or
//!   Experimental-Result-Code, or `timeout`, `unreachable`, `invalid`
//!   ([`ims_net::metrics::CxAnswers`]).
//! - `ims_icscf_sip_transactions{side}`: SIP transactions held by the endpoint, `server`
//!   and `client`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use ims_net::metrics::{CxAnswers, CxOutcome};
use ims_sip::Method;

/// Methods with their own series.
const METHODS: [Method; 8] = [
    Method::Register,
    Method::Invite,
    Method::Ack,
    Method::Cancel,
    Method::Options,
    Method::Subscribe,
    Method::Message,
    Method::Notify,
];

/// Final statuses with their own series.
const STATUSES: [u16; 16] = [
    200, 202, 400, 401, 403, 404, 408, 416, 423, 480, 486, 487, 500, 501, 503, 504,
];

/// The I-CSCF's counters.
pub struct Metrics {
    requests: [AtomicU64; METHODS.len() + 1],
    responses: [AtomicU64; STATUSES.len() + 1],
    cx: CxAnswers<2>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            responses: std::array::from_fn(|_| AtomicU64::new(0)),
            cx: CxAnswers::new(["UAR", "LIR"]),
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

    /// Counts the outcome of a `command` ("UAR" or "LIR").
    pub fn cx(&self, command: &str, outcome: CxOutcome) {
        self.cx.count(command, outcome);
    }

    /// The Prometheus text exposition, with the endpoint's `(server, client)` transactions.
    pub fn render(&self, transactions: (usize, usize)) -> String {
        let mut o = String::with_capacity(2048);
        o.push_str("# HELP ims_icscf_requests_total Requests received, by method.\n");
        o.push_str("# TYPE ims_icscf_requests_total counter\n");
        for (i, c) in self.requests.iter().enumerate() {
            let v = c.load(Relaxed);
            if v == 0 {
                continue;
            }
            let method = METHODS.get(i).map_or("other", |m| m.as_str());
            let _ = writeln!(o, "ims_icscf_requests_total{{method=\"{method}\"}} {v}");
        }
        o.push_str("# HELP ims_icscf_responses_total Final responses sent, by status.\n");
        o.push_str("# TYPE ims_icscf_responses_total counter\n");
        for (i, c) in self.responses.iter().enumerate() {
            let v = c.load(Relaxed);
            if v == 0 {
                continue;
            }
            let status = STATUSES.get(i).map_or("other".to_owned(), u16::to_string);
            let _ = writeln!(o, "ims_icscf_responses_total{{status=\"{status}\"}} {v}");
        }
        self.cx.render(&mut o, "ims_icscf");
        o.push_str("# HELP ims_icscf_sip_transactions SIP transactions held, by side.\n");
        o.push_str("# TYPE ims_icscf_sip_transactions gauge\n");
        let (server, client) = transactions;
        let _ = writeln!(o, "ims_icscf_sip_transactions{{side=\"server\"}} {server}");
        let _ = writeln!(o, "ims_icscf_sip_transactions{{side=\"client\"}} {client}");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ims_diameter::AnswerResult;

    #[test]
    fn renders_counts() {
        let m = Metrics::default();
        m.request(Some(Method::Register));
        m.request(Some(Method::Register));
        m.request(Some(Method::Bye));
        m.response(200);
        m.response(403);
        m.response(299);
        m.cx("UAR", CxOutcome::Answer(AnswerResult::ResultCode(2001)));
        m.cx(
            "LIR",
            CxOutcome::Answer(AnswerResult::Experimental {
                vendor_id: 10415,
                code: 5001,
            }),
        );
        let t = m.render((4, 2));
        for line in [
            "ims_icscf_requests_total{method=\"REGISTER\"} 2",
            "ims_icscf_requests_total{method=\"other\"} 1",
            "ims_icscf_responses_total{status=\"200\"} 1",
            "ims_icscf_responses_total{status=\"403\"} 1",
            "ims_icscf_responses_total{status=\"other\"} 1",
            "ims_icscf_cx_answers_total{command=\"UAR\",result=\"2001\"} 1",
            "ims_icscf_cx_answers_total{command=\"LIR\",result=\"5001\"} 1",
            "ims_icscf_sip_transactions{side=\"server\"} 4",
            "ims_icscf_sip_transactions{side=\"client\"} 2",
        ] {
            assert!(t.lines().any(|l| l == line), "no `{line}` in\n{t}");
        }
    }
}

//! The I-CSCF's Prometheus metrics, made of the shared pieces of [`ims_net::metrics`] (atomic
//! counters chosen by index, no lock on the hot path), rendered as the Prometheus text
//! format at `/metrics` on the admin API (`admin_listen`, [`crate::admin`]).
//!
//! - `ims_icscf_requests_total{method}`: requests received, one per new transaction, by
//!   method (`other` for a method outside the known set).
//! - `ims_icscf_responses_total{status}`: final responses sent, ours or forwarded from an
//!   S-CSCF, by status (`other` outside the known set).
//! - `ims_icscf_cx_answers_total{command,result}`: UAA and LIA by Result-Code or
//!   Experimental-Result-Code, or `timeout`, `unreachable`, `invalid`
//!   ([`ims_net::metrics::CxAnswers`]).
//! - `ims_icscf_cx_request_seconds{command}`: histograms of the UAR and LIR round trips, from
//!   handing the request to the Diameter client to its answer, as the I-CSCF sees the HSS
//!   (the HSS's own `ims_hss_cx_answer_seconds` leaves out the network and both Diameter
//!   stacks). Only answered requests are observed: those that got none are the `timeout` and
//!   `unreachable` of `ims_icscf_cx_answers_total` ([`ims_net::metrics::HistogramsBy`]).
//! - `ims_icscf_sip_transactions{side}`: SIP transactions held by the endpoint, `server`
//!   and `client`.

use std::time::Duration;

use ims_net::metrics::{ByLabel, CX_BUCKETS, CxAnswers, CxOutcome, HistogramsBy, transactions};
use ims_sip::Method;

/// Methods with their own series.
static METHODS: [Method; 8] = [
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
static STATUSES: [u16; 16] = [
    200, 202, 400, 401, 403, 404, 408, 416, 423, 480, 486, 487, 500, 501, 503, 504,
];

/// The I-CSCF's counters.
pub struct Metrics {
    requests: ByLabel<Method>,
    responses: ByLabel<u16>,
    cx: CxAnswers<2>,
    cx_round_trips: HistogramsBy<2>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: ByLabel::new(&METHODS),
            responses: ByLabel::new(&STATUSES),
            cx: CxAnswers::new(["UAR", "LIR"]),
            cx_round_trips: HistogramsBy::new("command", ["UAR", "LIR"], &CX_BUCKETS),
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

    /// Counts the outcome of a `command` ("UAR" or "LIR").
    pub fn cx(&self, command: &str, outcome: CxOutcome) {
        self.cx.count(command, outcome);
    }

    /// Counts an answer to a `command` ("UAR" or "LIR") that came `took` after the request
    /// was handed to the Diameter client.
    pub fn cx_round_trip(&self, command: &str, took: Duration) {
        self.cx_round_trips.observe(command, took);
    }

    /// The Prometheus text exposition, with the endpoint's `(server, client)` transactions.
    pub fn render(&self, sip_transactions: (usize, usize)) -> String {
        let mut o = String::with_capacity(2048);
        let help = "Requests received, by method.";
        self.requests
            .render(&mut o, "ims_icscf_requests_total", "method", help, true);
        let help = "Final responses sent, by status.";
        self.responses
            .render(&mut o, "ims_icscf_responses_total", "status", help, true);
        self.cx.render(&mut o, "ims_icscf");
        let help = "Time from a Cx request sent to its answer, by command.";
        self.cx_round_trips
            .render(&mut o, "ims_icscf_cx_request_seconds", help);
        transactions(&mut o, "ims_icscf", sip_transactions);
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
        m.cx_round_trip("UAR", Duration::from_micros(400));
        m.cx_round_trip("UAR", Duration::from_millis(20));
        let t = m.render((4, 2));
        for line in [
            "ims_icscf_requests_total{method=\"REGISTER\"} 2",
            "ims_icscf_requests_total{method=\"other\"} 1",
            "ims_icscf_responses_total{status=\"200\"} 1",
            "ims_icscf_responses_total{status=\"403\"} 1",
            "ims_icscf_responses_total{status=\"other\"} 1",
            "ims_icscf_cx_answers_total{command=\"UAR\",result=\"2001\"} 1",
            "ims_icscf_cx_answers_total{command=\"LIR\",result=\"5001\"} 1",
            "ims_icscf_cx_request_seconds_bucket{command=\"UAR\",le=\"0.0005\"} 1",
            "ims_icscf_cx_request_seconds_bucket{command=\"UAR\",le=\"0.025\"} 2",
            "ims_icscf_cx_request_seconds_bucket{command=\"UAR\",le=\"+Inf\"} 2",
            "ims_icscf_cx_request_seconds_sum{command=\"UAR\"} 0.0204",
            "ims_icscf_cx_request_seconds_count{command=\"UAR\"} 2",
            "ims_icscf_cx_request_seconds_count{command=\"LIR\"} 0",
            "ims_icscf_sip_transactions{side=\"server\"} 4",
            "ims_icscf_sip_transactions{side=\"client\"} 2",
        ] {
            assert!(t.lines().any(|l| l == line), "no `{line}` in\n{t}");
        }
    }
}

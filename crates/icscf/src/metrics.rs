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
//! - `ims_icscf_sip_transactions{side}`: SIP transactions held by the endpoint, `server`
//!   and `client`.

use ims_net::metrics::{ByLabel, CxAnswers, CxOutcome, transactions};
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: ByLabel::new(&METHODS),
            responses: ByLabel::new(&STATUSES),
            cx: CxAnswers::new(["UAR", "LIR"]),
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

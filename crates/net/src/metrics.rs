//! Counters of Diameter answers for the CSCFs' Prometheus metrics (the I-CSCF's UAR/LIR,
//! the S-CSCF's MAR/SAR), in the daemons' way: a fixed array of atomic counters chosen by
//! index, no lock on the hot path.
//!
//! - `<prefix>_cx_answers_total{command,result}`: answers by command and by Result-Code or
//!   Experimental-Result-Code (`2001`, `2002`, `5001`, `3004`, ...; `other` for a code
//!   outside the known set), and the requests that got none: `timeout` (no answer in time,
//!   or the connection went down meanwhile), `unreachable` (the connection was not open)
//!   and `invalid` (an answer we could not read). Only series that counted something are
//!   rendered.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use ims_diameter::AnswerResult;

use crate::diameter::RequestError;

/// Result codes with their own series: the Cx ones (TS 29.229 §6.2), both namespaces.
const RESULTS: [u32; 15] = [
    2001, 2002, 2003, 2004, 2005, 3002, 3004, 4001, 5001, 5002, 5003, 5004, 5005, 5006, 5012,
];

/// The outcomes that are not a result code, after [`RESULTS`] and `other`.
const NO_ANSWER: [&str; 3] = ["timeout", "unreachable", "invalid"];

const COLUMNS: usize = RESULTS.len() + 1 + NO_ANSWER.len();

/// How a Cx request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CxOutcome {
    /// The answer's result.
    Answer(AnswerResult),
    /// No answer ([`RequestError`]).
    NoAnswer(NoAnswer),
    /// An answer that does not parse or decode.
    Invalid,
}

/// Why a request got no answer, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// No answer in time, or the connection went down while waiting.
    Timeout,
    /// The connection was not open, or the client had stopped.
    Unreachable,
}

impl From<&RequestError> for CxOutcome {
    fn from(e: &RequestError) -> Self {
        CxOutcome::NoAnswer(match e {
            RequestError::NoAnswer(_) => NoAnswer::Timeout,
            RequestError::NotOpen(_) | RequestError::Stopped => NoAnswer::Unreachable,
        })
    }
}

/// Answers to `N` Diameter commands, by result.
pub struct CxAnswers<const N: usize> {
    commands: [&'static str; N],
    counts: [[AtomicU64; COLUMNS]; N],
}

impl<const N: usize> CxAnswers<N> {
    /// Counters for `commands` (their names as labels, e.g. `["UAR", "LIR"]`).
    pub fn new(commands: [&'static str; N]) -> Self {
        Self {
            commands,
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    /// Counts one request of `command` (one of those given to [`CxAnswers::new`]; others are
    /// not counted) ending with `outcome`.
    pub fn count(&self, command: &str, outcome: CxOutcome) {
        let Some(row) = self.commands.iter().position(|c| *c == command) else {
            return;
        };
        let col = match outcome {
            CxOutcome::Answer(r) => RESULTS
                .iter()
                .position(|c| *c == r.code())
                .unwrap_or(RESULTS.len()),
            CxOutcome::NoAnswer(NoAnswer::Timeout) => RESULTS.len() + 1,
            CxOutcome::NoAnswer(NoAnswer::Unreachable) => RESULTS.len() + 2,
            CxOutcome::Invalid => RESULTS.len() + 3,
        };
        self.counts[row][col].fetch_add(1, Relaxed);
    }

    /// Appends `<prefix>_cx_answers_total` in the Prometheus text format to `o`.
    pub fn render(&self, o: &mut String, prefix: &str) {
        let name = format!("{prefix}_cx_answers_total");
        let _ = writeln!(
            o,
            "# HELP {name} Diameter answers by command and result (or why none came)."
        );
        let _ = writeln!(o, "# TYPE {name} counter");
        for (command, row) in self.commands.iter().zip(&self.counts) {
            for (i, c) in row.iter().enumerate() {
                let v = c.load(Relaxed);
                if v == 0 {
                    continue;
                }
                let result = match RESULTS.get(i) {
                    Some(code) => code.to_string(),
                    None if i == RESULTS.len() => "other".to_owned(),
                    None => NO_ANSWER[i - RESULTS.len() - 1].to_owned(),
                };
                let _ = writeln!(o, "{name}{{command=\"{command}\",result=\"{result}\"}} {v}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_answers_by_command_and_result() {
        let a = CxAnswers::new(["UAR", "LIR"]);
        a.count("UAR", CxOutcome::Answer(AnswerResult::ResultCode(2001)));
        a.count("UAR", CxOutcome::Answer(AnswerResult::ResultCode(2001)));
        a.count(
            "UAR",
            CxOutcome::Answer(AnswerResult::Experimental {
                vendor_id: 10415,
                code: 2002,
            }),
        );
        a.count("LIR", CxOutcome::Answer(AnswerResult::ResultCode(3004)));
        a.count("LIR", CxOutcome::Answer(AnswerResult::ResultCode(4999)));
        a.count("LIR", (&RequestError::Stopped).into());
        a.count(
            "UAR",
            (&RequestError::NoAnswer("127.0.0.1:3868".parse().unwrap())).into(),
        );
        a.count("UAR", CxOutcome::Invalid);
        a.count("MAR", CxOutcome::Invalid);
        let mut t = String::new();
        a.render(&mut t, "ims_icscf");
        for line in [
            "ims_icscf_cx_answers_total{command=\"UAR\",result=\"2001\"} 2",
            "ims_icscf_cx_answers_total{command=\"UAR\",result=\"2002\"} 1",
            "ims_icscf_cx_answers_total{command=\"UAR\",result=\"timeout\"} 1",
            "ims_icscf_cx_answers_total{command=\"UAR\",result=\"invalid\"} 1",
            "ims_icscf_cx_answers_total{command=\"LIR\",result=\"3004\"} 1",
            "ims_icscf_cx_answers_total{command=\"LIR\",result=\"other\"} 1",
            "ims_icscf_cx_answers_total{command=\"LIR\",result=\"unreachable\"} 1",
        ] {
            assert!(t.lines().any(|l| l == line), "no `{line}` in\n{t}");
        }
        assert_eq!(
            t.lines().filter(|l| !l.starts_with('#')).count(),
            7,
            "only what counted, MAR not at all:\n{t}"
        );
    }
}

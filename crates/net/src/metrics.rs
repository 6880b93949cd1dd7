//! The pieces every daemon's Prometheus metrics are made of, lock-free on the hot path (a
//! fixed set of atomic counters chosen by index), rendered in the Prometheus text format. Each
//! daemon's `metrics` module lists its series and puts them together from these:
//!
//! - [`ByLabel`]: a counter per value of one label from a fixed set (methods, statuses,
//!   causes), and `other` for the rest.
//! - [`Histogram`]: a latency histogram over fixed buckets.
//! - [`HistogramsBy`]: a [`Histogram`] per value of one label from a fixed set, e.g. the
//!   CSCFs' Cx round trips by command, `<prefix>_cx_request_seconds{command}` over
//!   [`CX_BUCKETS`]: the time from handing a request to the Diameter client to its answer.
//!   Only answered requests are observed (an answer we then cannot read too); those that got
//!   none are the `timeout` and `unreachable` of [`CxAnswers`], so that a histogram of answer
//!   times holds neither the request timeout nor the instant refusals of a connection that
//!   is down.
//! - [`CxAnswers`]: Diameter answers by command and result, for the CSCFs (the I-CSCF's
//!   UAR/LIR, the S-CSCF's MAR/SAR): `<prefix>_cx_answers_total{command,result}`, by
//!   Result-Code or Experimental-Result-Code (`2001`, `2002`, `5001`, `3004`, ...; `other`
//!   for a code outside the known set), and the requests that got none: `timeout` (no answer
//!   in time, or the connection went down meanwhile), `unreachable` (the connection was not
//!   open) and `invalid` (an answer we could not read). Only series that counted something
//!   are rendered.
//! - [`counter`], [`gauge`] and [`transactions`]: series of a line or two.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use ims_diameter::AnswerResult;

use crate::diameter::RequestError;

/// The latency buckets of the CSCFs' histograms, in seconds (0.5 ms to 5 s).
pub const CSCF_BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The buckets of the CSCFs' Cx round trips, in seconds (0.1 ms to 5 s, the default request
/// timeout): an HSS answering from memory takes well under a millisecond on a LAN, below the
/// lowest bucket of [`CSCF_BUCKETS`].
pub const CX_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counters by one label whose values come from a fixed set, and `other` for the rest.
pub struct ByLabel<T: 'static> {
    values: &'static [T],
    counts: Box<[AtomicU64]>,
}

impl<T: PartialEq + std::fmt::Display> ByLabel<T> {
    /// Counters for `values`, and `other`.
    pub fn new(values: &'static [T]) -> Self {
        Self {
            values,
            counts: (0..=values.len()).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts one of `v` (`None`, or a value outside the set: `other`).
    pub fn count(&self, v: Option<T>) {
        let i = v
            .and_then(|v| self.values.iter().position(|k| *k == v))
            .unwrap_or(self.values.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// How many of `v` were counted.
    pub fn get(&self, v: &T) -> u64 {
        self.values
            .iter()
            .position(|k| k == v)
            .and_then(|i| self.counts.get(i))
            .map_or(0, |c| c.load(Relaxed))
    }

    /// Appends the counter `name{label="..."}` to `o`: only the values that counted
    /// something when `only_counted`, else every one.
    pub fn render(&self, o: &mut String, name: &str, label: &str, help: &str, only_counted: bool) {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} counter");
        for (i, c) in self.counts.iter().enumerate() {
            let v = c.load(Relaxed);
            if v == 0 && only_counted {
                continue;
            }
            match self.values.get(i) {
                Some(k) => {
                    let _ = writeln!(o, "{name}{{{label}=\"{k}\"}} {v}");
                }
                None => {
                    let _ = writeln!(o, "{name}{{{label}=\"other\"}} {v}");
                }
            }
        }
    }
}

/// A latency histogram over fixed buckets (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Empty, over `bounds` (ascending, in seconds).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one observation of `took`.
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (b, c) in self.bounds.iter().zip(self.buckets.iter()) {
            if secs <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Appends the histogram `name` (its buckets, `_sum` and `_count`) to `o`.
    pub fn render(&self, o: &mut String, name: &str, help: &str) {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} histogram");
        self.render_series(o, name, "");
    }

    /// Appends the lines of the histogram `name` with `labels` (`key="value"` pairs separated
    /// by commas, or empty) to `o`, without HELP and TYPE.
    fn render_series(&self, o: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(self.buckets.iter()) {
            let _ = writeln!(
                o,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                c.load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        if labels.is_empty() {
            let _ = writeln!(o, "{name}_sum {sum}");
            let _ = writeln!(o, "{name}_count {count}");
        } else {
            let _ = writeln!(o, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(o, "{name}_count{{{labels}}} {count}");
        }
    }
}

/// A [`Histogram`] per value of one label from a fixed set (values outside it are not
/// observed).
pub struct HistogramsBy<const N: usize> {
    label: &'static str,
    values: [&'static str; N],
    histograms: [Histogram; N],
}

impl<const N: usize> HistogramsBy<N> {
    /// Empty histograms over `bounds` for the `values` of `label`, e.g. `("command", ["MAR",
    /// "SAR"])`.
    pub fn new(label: &'static str, values: [&'static str; N], bounds: &'static [f64]) -> Self {
        Self {
            label,
            values,
            histograms: std::array::from_fn(|_| Histogram::new(bounds)),
        }
    }

    /// Counts one observation of `took` for `value` (one of those given to
    /// [`HistogramsBy::new`]; others are not counted).
    pub fn observe(&self, value: &str, took: Duration) {
        if let Some(h) = self
            .values
            .iter()
            .position(|v| *v == value)
            .and_then(|i| self.histograms.get(i))
        {
            h.observe(took);
        }
    }

    /// Appends the histogram `name`, a series for every value (those that observed nothing
    /// too, so that each exists from the start), to `o`.
    pub fn render(&self, o: &mut String, name: &str, help: &str) {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} histogram");
        let label = self.label;
        for (value, h) in self.values.iter().zip(&self.histograms) {
            h.render_series(o, name, &format!("{label}=\"{value}\""));
        }
    }
}

/// Appends the counter `name` (no labels) with `value` to `o`.
pub fn counter(o: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} counter");
    let _ = writeln!(o, "{name} {value}");
}

/// Appends the gauge `name` with `value` to `o`.
pub fn gauge(o: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} gauge");
    let _ = writeln!(o, "{name} {value}");
}

/// Appends `<prefix>_sip_transactions{side}` with the endpoint's `(server, client)`
/// transactions to `o`.
pub fn transactions(o: &mut String, prefix: &str, (server, client): (usize, usize)) {
    let name = format!("{prefix}_sip_transactions");
    let _ = writeln!(o, "# HELP {name} SIP transactions held, by side.");
    let _ = writeln!(o, "# TYPE {name} gauge");
    let _ = writeln!(o, "{name}{{side=\"server\"}} {server}");
    let _ = writeln!(o, "{name}{{side=\"client\"}} {client}");
}

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
    /// No answer in time.
    Timeout,
    /// The connection was not open (or went down while waiting), or the client had stopped.
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
    fn counters_by_label_histograms_and_gauges_render() {
        static CODES: [u16; 2] = [200, 401];
        let by = ByLabel::new(&CODES);
        by.count(Some(200));
        by.count(Some(200));
        by.count(Some(299));
        by.count(None);
        assert_eq!(by.get(&200), 2);
        let h = Histogram::new(&CSCF_BUCKETS);
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(9));
        let mut t = String::new();
        by.render(&mut t, "x_total", "status", "Statuses.", true);
        h.render(&mut t, "x_seconds", "Time.");
        gauge(&mut t, "x_held", "Held.", 7);
        transactions(&mut t, "x", (3, 1));
        for line in [
            "x_total{status=\"200\"} 2",
            "x_total{status=\"other\"} 2",
            "x_seconds_bucket{le=\"0.0005\"} 0",
            "x_seconds_bucket{le=\"0.001\"} 1",
            "x_seconds_bucket{le=\"0.05\"} 2",
            "x_seconds_bucket{le=\"5\"} 2",
            "x_seconds_bucket{le=\"+Inf\"} 3",
            "x_seconds_count 3",
            "x_held 7",
            "x_sip_transactions{side=\"server\"} 3",
            "x_sip_transactions{side=\"client\"} 1",
        ] {
            assert!(t.lines().any(|l| l == line), "no `{line}` in\n{t}");
        }
        assert!(!t.contains("status=\"401\""), "only what counted:\n{t}");
        let mut all = String::new();
        by.render(&mut all, "x_total", "status", "Statuses.", false);
        assert!(all.contains("x_total{status=\"401\"} 0"), "{all}");
    }

    #[test]
    fn histograms_by_label_render_every_value_with_its_label() {
        let h = HistogramsBy::new("command", ["MAR", "SAR"], &CX_BUCKETS);
        h.observe("MAR", Duration::from_micros(80));
        h.observe("MAR", Duration::from_micros(300));
        h.observe("MAR", Duration::from_secs(7));
        h.observe("UAR", Duration::from_millis(1));
        let mut t = String::new();
        h.render(&mut t, "x_cx_request_seconds", "Round trips.");
        for line in [
            "# TYPE x_cx_request_seconds histogram",
            "x_cx_request_seconds_bucket{command=\"MAR\",le=\"0.0001\"} 1",
            "x_cx_request_seconds_bucket{command=\"MAR\",le=\"0.00025\"} 1",
            "x_cx_request_seconds_bucket{command=\"MAR\",le=\"0.0005\"} 2",
            "x_cx_request_seconds_bucket{command=\"MAR\",le=\"5\"} 2",
            "x_cx_request_seconds_bucket{command=\"MAR\",le=\"+Inf\"} 3",
            "x_cx_request_seconds_sum{command=\"MAR\"} 7.00038",
            "x_cx_request_seconds_count{command=\"MAR\"} 3",
            // Nothing observed: there all the same, at zero.
            "x_cx_request_seconds_bucket{command=\"SAR\",le=\"0.0001\"} 0",
            "x_cx_request_seconds_bucket{command=\"SAR\",le=\"+Inf\"} 0",
            "x_cx_request_seconds_sum{command=\"SAR\"} 0",
            "x_cx_request_seconds_count{command=\"SAR\"} 0",
        ] {
            assert!(t.lines().any(|l| l == line), "no `{line}` in\n{t}");
        }
        assert_eq!(t.matches("# TYPE").count(), 1, "{t}");
        assert!(
            !t.contains("UAR"),
            "a value outside the set is not observed:\n{t}"
        );
        // Each series: a line per bucket, +Inf, _sum and _count.
        let lines = t.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(lines, 2 * (CX_BUCKETS.len() + 3), "{t}");
    }

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

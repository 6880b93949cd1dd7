//! The HSS's Prometheus metrics, lock-free on the hot path: every (command, result) pair the
//! HSS can answer has its own atomic counter, chosen by index, and the answer-latency
//! histogram is a fixed array of atomic buckets. Rendered as the Prometheus text format at
//! `/metrics` on the admin port.
//!
//! - `ims_hss_cx_requests_total{command, result}`: Cx requests by command and the Result-Code
//!   or Experimental-Result-Code answered (`other` for codes outside the known set).
//! - `ims_hss_cx_answer_seconds`: time from a whole request read to its answer encoded.
//! - `ims_hss_cx_resync_total`: MARs that resynchronised the SQN from an AUTS.
//! - `ims_hss_diameter_peers_up`: Diameter peers in the Open state.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use ims_net::metrics::{Histogram, counter, gauge};

const COMMANDS: [(u32, &str); 5] = [
    (300, "UAR"),
    (303, "MAR"),
    (301, "SAR"),
    (302, "LIR"),
    (0, "other"),
];

/// Result codes with their own series (base and 3GPP experimental share numbers; the label is
/// the number, as on the wire).
const RESULTS: [u32; 22] = [
    2001, 2002, 2003, 2004, 3001, 3002, 3007, 3008, 3009, 3010, 5001, 5002, 5003, 5004, 5005, 5006,
    5007, 5008, 5009, 5012, 5014, 5015,
];

static BUCKETS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The HSS's counters.
pub struct Metrics {
    requests: Vec<AtomicU64>,
    latency: Histogram,
    resync: AtomicU64,
    peers_up: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: (0..COMMANDS.len() * (RESULTS.len() + 1))
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency: Histogram::new(&BUCKETS),
            resync: AtomicU64::new(0),
            peers_up: AtomicI64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn answered(&self, command: u32, result: u32, took: Duration, resync: bool) {
        let c = COMMANDS
            .iter()
            .position(|(code, _)| *code == command)
            .unwrap_or(COMMANDS.len() - 1);
        let r = RESULTS
            .iter()
            .position(|x| *x == result)
            .unwrap_or(RESULTS.len());
        if let Some(slot) = self.requests.get(c * (RESULTS.len() + 1) + r) {
            slot.fetch_add(1, Relaxed);
        }
        self.latency.observe(took);
        if resync {
            self.resync.fetch_add(1, Relaxed);
        }
    }

    /// A peer reached (`+1`) or left (`-1`) the Open state.
    pub fn peer_up(&self, delta: i64) {
        self.peers_up.fetch_add(delta, Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        o.push_str(
            "# HELP ims_hss_cx_requests_total Cx requests by command and answered result code.\n",
        );
        o.push_str("# TYPE ims_hss_cx_requests_total counter\n");
        for (ci, (_, cname)) in COMMANDS.iter().enumerate() {
            for ri in 0..=RESULTS.len() {
                let v = self.requests[ci * (RESULTS.len() + 1) + ri].load(Relaxed);
                if v == 0 {
                    continue;
                }
                let result = RESULTS.get(ri).map_or("other".to_owned(), u32::to_string);
                let _ = writeln!(
                    o,
                    "ims_hss_cx_requests_total{{command=\"{cname}\",result=\"{result}\"}} {v}"
                );
            }
        }
        let help = "Time to answer a Cx request.";
        self.latency
            .render(&mut o, "ims_hss_cx_answer_seconds", help);
        let help = "MARs that resynchronised the SQN from an AUTS.";
        counter(
            &mut o,
            "ims_hss_cx_resync_total",
            help,
            self.resync.load(Relaxed),
        );
        let help = "Diameter peers in the Open state.";
        let up = self.peers_up.load(Relaxed);
        gauge(&mut o, "ims_hss_diameter_peers_up", help, up);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts() {
        let m = Metrics::default();
        m.answered(303, 2001, Duration::from_micros(300), false);
        m.answered(303, 2001, Duration::from_millis(2), true);
        m.answered(300, 5001, Duration::from_millis(30), false);
        m.answered(999, 4242, Duration::from_secs(2), false);
        m.peer_up(1);
        let t = m.render();
        assert!(t.contains("ims_hss_cx_requests_total{command=\"MAR\",result=\"2001\"} 2"));
        assert!(t.contains("ims_hss_cx_requests_total{command=\"UAR\",result=\"5001\"} 1"));
        assert!(t.contains("ims_hss_cx_requests_total{command=\"other\",result=\"other\"} 1"));
        assert!(t.contains("ims_hss_cx_answer_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(t.contains("ims_hss_cx_answer_seconds_bucket{le=\"0.0025\"} 2"));
        assert!(t.contains("ims_hss_cx_answer_seconds_bucket{le=\"+Inf\"} 4"));
        assert!(t.contains("ims_hss_cx_resync_total 1"));
        assert!(t.contains("ims_hss_diameter_peers_up 1"));
    }
}

//! RFC 3261 timer values (§17, Table 4 of Appendix A) and the ones derived from them.

use std::time::{Duration, Instant};

/// The base timer values of a transaction layer; every other timer is derived from them.
///
/// `Timers::RFC3261` (also `Default`) holds the RFC values. Tests shrink them with
/// [`Timers::scaled_down`] so that the whole timer schedule keeps its shape and runs faster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timers {
    /// RTT estimate, 500 ms.
    pub t1: Duration,
    /// Maximum retransmission interval for non-INVITE requests and INVITE responses, 4 s.
    pub t2: Duration,
    /// Maximum time a message stays in the network, 5 s.
    pub t4: Duration,
    /// How long an INVITE server transaction waits for the TU before it sends a 100 Trying
    /// on its own (§17.2.1: 200 ms), when the caller gave it one to send.
    pub trying_delay: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self::RFC3261
    }
}

impl Timers {
    /// T1 = 500 ms, T2 = 4 s, T4 = 5 s, 100 Trying after 200 ms.
    pub const RFC3261: Timers = Timers {
        t1: Duration::from_millis(500),
        t2: Duration::from_secs(4),
        t4: Duration::from_secs(5),
        trying_delay: Duration::from_millis(200),
    };

    /// Custom T1, T2, T4 (the 100 Trying delay stays at 200 ms).
    pub const fn new(t1: Duration, t2: Duration, t4: Duration) -> Self {
        Timers {
            t1,
            t2,
            t4,
            trying_delay: Duration::from_millis(200),
        }
    }

    /// Every base value divided by `divisor` (for tests: `scaled_down(100)` gives T1 = 5 ms).
    /// A zero divisor leaves the values unchanged.
    pub fn scaled_down(self, divisor: u32) -> Self {
        let f = |d: Duration| d.checked_div(divisor).unwrap_or(d);
        Timers {
            t1: f(self.t1),
            t2: f(self.t2),
            t4: f(self.t4),
            trying_delay: f(self.trying_delay),
        }
    }

    /// 64*T1: Timers B, F, H and J (UDP), and L/M of RFC 6026.
    pub fn t1x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// First interval of Timer E (non-INVITE request retransmission): T1, UDP only.
    pub fn timer_e_initial(&self, reliable: bool) -> Option<Duration> {
        (!reliable).then_some(self.t1)
    }

    /// Next interval of Timer E in the Trying state: the previous one doubled, capped at T2.
    /// (In Proceeding the interval is T2.)
    pub fn timer_e_next(&self, previous: Duration) -> Duration {
        previous.saturating_mul(2).min(self.t2)
    }

    /// Timer F (non-INVITE client transaction timeout): 64*T1.
    pub fn timer_f(&self) -> Duration {
        self.t1x64()
    }

    /// Timer K (NICT wait for response retransmissions): T4 on UDP, 0 on a reliable transport.
    pub fn timer_k(&self, reliable: bool) -> Duration {
        if reliable { Duration::ZERO } else { self.t4 }
    }

    /// Timer J (NIST wait for request retransmissions): 64*T1 on UDP, 0 on a reliable transport.
    pub fn timer_j(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t1x64()
        }
    }

    /// First interval of Timer G (INVITE final non-2xx response retransmission): T1, UDP only.
    pub fn timer_g_initial(&self, reliable: bool) -> Option<Duration> {
        (!reliable).then_some(self.t1)
    }

    /// Next interval of Timer G: the previous one doubled, capped at T2.
    pub fn timer_g_next(&self, previous: Duration) -> Duration {
        previous.saturating_mul(2).min(self.t2)
    }

    /// Timer H (wait for the ACK of a non-2xx final response): 64*T1.
    pub fn timer_h(&self) -> Duration {
        self.t1x64()
    }

    /// Timer I (wait for ACK retransmissions): T4 on UDP, 0 on a reliable transport.
    pub fn timer_i(&self, reliable: bool) -> Duration {
        if reliable { Duration::ZERO } else { self.t4 }
    }
}

/// Smallest retransmission interval a machine will schedule: a zero T1 or T2 (a broken
/// configuration) must not make a timer fire again at the same instant, forever.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// `now + d`, or `None` ("never") when the sum does not fit in an `Instant`.
pub(crate) fn deadline(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// The next deadline of a retransmission timer that was due at `due` and fired at `now`
/// (`now >= due`, possibly much later): `due + interval`, or `now + interval` when the
/// driver was so late that it would be in the past again. A late driver therefore gets one
/// retransmission, not a burst of them.
pub(crate) fn rearm(due: Instant, now: Instant, interval: Duration) -> Option<Instant> {
    let interval = interval.max(MIN_INTERVAL);
    match due.checked_add(interval) {
        Some(next) if next > now => Some(next),
        _ => now.checked_add(interval),
    }
}

/// True when the optional deadline is at or before `now`.
pub(crate) fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| d <= now)
}

/// The earliest of a few optional deadlines.
pub(crate) fn earliest<const N: usize>(deadlines: [Option<Instant>; N]) -> Option<Instant> {
    deadlines.into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn rfc_values() {
        let t = Timers::default();
        assert_eq!(t, Timers::RFC3261);
        assert_eq!(t.timer_e_initial(false), Some(MS(500)));
        assert_eq!(t.timer_e_initial(true), None);
        assert_eq!(t.timer_f(), MS(32_000));
        assert_eq!(t.timer_k(false), MS(5_000));
        assert_eq!(t.timer_k(true), Duration::ZERO);
        assert_eq!(t.timer_j(false), MS(32_000));
        assert_eq!(t.timer_j(true), Duration::ZERO);
        assert_eq!(t.timer_g_initial(false), Some(MS(500)));
        assert_eq!(t.timer_g_initial(true), None);
        assert_eq!(t.timer_h(), MS(32_000));
        assert_eq!(t.timer_i(false), MS(5_000));
        assert_eq!(t.timer_i(true), Duration::ZERO);
        assert_eq!(t.trying_delay, MS(200));
    }

    #[test]
    fn e_and_g_double_up_to_t2() {
        let t = Timers::RFC3261;
        let mut e = MS(500);
        let mut seen = vec![e];
        for _ in 0..5 {
            e = t.timer_e_next(e);
            seen.push(e);
        }
        assert_eq!(seen, [500, 1000, 2000, 4000, 4000, 4000].map(MS));
        let mut g = MS(500);
        let mut seen = vec![g];
        for _ in 0..4 {
            g = t.timer_g_next(g);
            seen.push(g);
        }
        assert_eq!(seen, [500, 1000, 2000, 4000, 4000].map(MS));
    }

    #[test]
    fn scaling_keeps_shape() {
        let t = Timers::RFC3261.scaled_down(100);
        assert_eq!(t.t1, MS(5));
        assert_eq!(t.t2, MS(40));
        assert_eq!(t.t4, MS(50));
        assert_eq!(t.trying_delay, MS(2));
        assert_eq!(t.timer_f(), MS(320));
        assert_eq!(Timers::RFC3261.scaled_down(0), Timers::RFC3261);
    }

    #[test]
    fn rearm_skips_missed_deadlines() {
        let base = Instant::now();
        let at = |ms| base + MS(ms);
        assert_eq!(rearm(at(500), at(500), MS(1000)), Some(at(1500)));
        assert_eq!(rearm(at(500), at(900), MS(1000)), Some(at(1500)));
        // Called very late: one retransmission now, the next one a full interval later.
        assert_eq!(rearm(at(500), at(9000), MS(1000)), Some(at(10_000)));
        // A zero interval never re-fires at the same instant.
        assert!(rearm(at(500), at(500), Duration::ZERO) > Some(at(500)));
    }
}

//! How many REGISTER transactions the P-CSCF lets into the core at once (issue #16, target 5:
//! under overload every admitted registration keeps its latency).
//!
//! A fixed ceiling (`max_registrations_in_flight`) bounds the core's queue but not the wait
//! in it: at capacity the core holds that many transactions and each waits about ceiling /
//! throughput (64 at this machine's ~2,200 REGISTER transactions a second: 30 ms each, twice
//! per registration, on top of the work). So, when `register_latency_target_ms` is set, the
//! limit follows the core's latency instead, as TCP Vegas and the latency-based concurrency
//! limiters do: each window (at least [`WINDOW`] and [`MIN_SAMPLES`] REGISTERs answered by
//! the core), when their mean time in the core (arrival here → the core's final answer) was
//! above the target the limit shrinks by a tenth (down to [`MIN_LIMIT`]); when it was within
//! it and the limit was in use (three quarters of it held at some point), the limit grows by
//! one, up to the ceiling. A core that keeps up never sees the limit move; a machine faster
//! than the target needs is not held back, since the limit only shrinks when the latency
//! says so.
//!
//! Off by default (docs/PERFORMANCE.md, "Overload and recovery..."): on the 2-core build
//! machine a 10 ms target kept the admitted registrations' p99 at three times the offered
//! rate near the clean one (34 against 90 ms and more with the fixed limit) but cost a third
//! of the goodput, and 20 ms refused 28,812 registrations in the 100,000-UE soak, where
//! expiry waves and neighbours make moments of slowness that are not overload. Judging by
//! the quickest REGISTER of a window instead (CoDel's test of a standing queue) was tried
//! and barely moved the limit in an overload.
//!
//! Sans-io: the answered REGISTERs' times, the count in flight and the time come in; the
//! limit comes out.

use std::time::{Duration, Instant};

/// The shortest window.
pub const WINDOW: Duration = Duration::from_millis(100);
/// The fewest samples a window decides on.
pub const MIN_SAMPLES: u32 = 8;
/// The limit never goes below this: a few registrations always get in.
pub const MIN_LIMIT: usize = 4;

/// The adaptive limit.
#[derive(Debug)]
pub struct Admission {
    ceiling: usize,
    target: Duration,
    limit: f64,
    started: Instant,
    samples: u32,
    total: Duration,
    peak: usize,
}

impl Admission {
    /// Starts at `ceiling` (`max_registrations_in_flight`); `target` zero keeps it there.
    pub fn new(ceiling: usize, target: Duration, now: Instant) -> Admission {
        Admission {
            ceiling,
            target,
            limit: ceiling as f64,
            started: now,
            samples: 0,
            total: Duration::ZERO,
            peak: 0,
        }
    }

    /// How many REGISTERs may be in the core now.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// A REGISTER's time in the core (`core_time`), when `in_flight` were in it. Returns the
    /// new limit when this sample closed a window and the limit moved.
    pub fn sample(&mut self, core_time: Duration, in_flight: usize, now: Instant) -> Option<usize> {
        if self.target.is_zero() {
            return None;
        }
        self.samples += 1;
        self.total += core_time;
        self.peak = self.peak.max(in_flight);
        if self.samples < MIN_SAMPLES || now.saturating_duration_since(self.started) < WINDOW {
            return None;
        }
        let mean = self.total / self.samples;
        let before = self.limit();
        if mean > self.target {
            self.limit = (self.limit * 0.9).max(MIN_LIMIT.min(self.ceiling) as f64);
        } else if self.peak as f64 >= self.limit * 0.75 {
            self.limit = (self.limit + 1.0).min(self.ceiling as f64);
        }
        self.started = now;
        self.samples = 0;
        self.total = Duration::ZERO;
        self.peak = 0;
        (self.limit() != before).then_some(self.limit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A limit under `ceiling` and `target`, and the time it started.
    fn start(ceiling: usize, target: Duration) -> (Admission, Instant) {
        let now = Instant::now();
        (Admission::new(ceiling, target, now), now)
    }

    /// Feeds `windows` windows of MIN_SAMPLES samples of `core_time` with `in_flight`.
    fn feed(
        a: &mut Admission,
        now: &mut Instant,
        windows: usize,
        core_time: Duration,
        in_flight: usize,
    ) {
        for _ in 0..windows {
            for _ in 0..MIN_SAMPLES {
                *now += WINDOW / MIN_SAMPLES;
                a.sample(core_time, in_flight, *now);
            }
        }
    }

    #[test]
    fn a_core_within_its_target_keeps_the_ceiling() {
        let (mut a, mut now) = start(64, 20 * MS);
        feed(&mut a, &mut now, 100, 8 * MS, 60);
        assert_eq!(a.limit(), 64);
    }

    #[test]
    fn a_slow_core_shrinks_the_limit_to_the_floor_and_it_grows_back() {
        let (mut a, mut now) = start(64, 20 * MS);
        feed(&mut a, &mut now, 5, 40 * MS, 64);
        // 64 · 0.9⁵ = 37.8
        assert_eq!(a.limit(), 37);
        feed(&mut a, &mut now, 100, 40 * MS, 64);
        assert_eq!(a.limit(), MIN_LIMIT);
        // Back within the target, and the limit in use: one more a window.
        feed(&mut a, &mut now, 10, 5 * MS, MIN_LIMIT + 10);
        assert_eq!(a.limit(), MIN_LIMIT + 10);
        feed(&mut a, &mut now, 200, 5 * MS, 64);
        assert_eq!(a.limit(), 64, "never above the ceiling");
    }

    #[test]
    fn an_idle_limit_does_not_grow() {
        let (mut a, mut now) = start(64, 20 * MS);
        feed(&mut a, &mut now, 10, 40 * MS, 64);
        let low = a.limit();
        // Fast answers, but only a few in flight: nothing says a higher limit is safe.
        feed(&mut a, &mut now, 50, 2 * MS, 2);
        assert_eq!(a.limit(), low);
    }

    #[test]
    fn a_window_needs_its_time_and_its_samples() {
        let (mut a, mut now) = start(64, 20 * MS);
        // Many slow samples within one window's time: one decision at most.
        for _ in 0..1000 {
            now += Duration::from_micros(10);
            a.sample(40 * MS, 64, now);
        }
        assert_eq!(a.limit(), 64);
        now += WINDOW;
        assert_eq!(a.sample(40 * MS, 64, now), Some(57));
        // A long quiet time with fewer samples than a window needs decides nothing.
        now += Duration::from_secs(10);
        for _ in 0..MIN_SAMPLES - 1 {
            assert_eq!(a.sample(40 * MS, 64, now), None);
        }
        assert_eq!(a.limit(), 57);
    }

    #[test]
    fn a_zero_target_is_the_fixed_ceiling() {
        let (mut a, mut now) = start(64, Duration::ZERO);
        feed(&mut a, &mut now, 50, Duration::from_secs(1), 64);
        assert_eq!(a.limit(), 64);
    }

    #[test]
    fn a_ceiling_below_the_floor_is_kept() {
        let (mut a, mut now) = start(2, 20 * MS);
        feed(&mut a, &mut now, 50, 40 * MS, 2);
        assert_eq!(a.limit(), 2);
    }
}

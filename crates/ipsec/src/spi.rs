//! Our SPIs: each registration gets a pair (`spi_pc`, `spi_ps`) — the SPIs of the SAs the
//! P-CSCF *receives* on at its protected client and server ports — unique among all pairs in
//! use, from the configured inclusive range.
//!
//! Allocation is per registration, not per message, so one mutex over a set of the SPIs in
//! use is plenty. A cursor walks the range and wraps around, skipping SPIs in use, so a
//! released SPI comes back only after the rest of the range was handed out (late packets
//! for an old SA never meet a new one with the same SPI soon after).

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

/// Our two SPIs of one UE's SA set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpiPair {
    /// SPI of our inbound SA at the protected client port (`spi-c` of Security-Server; SA4).
    pub spi_pc: u32,
    /// SPI of our inbound SA at the protected server port (`spi-s` of Security-Server; SA1).
    pub spi_ps: u32,
}

/// Every SPI of the range is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no free SPI pair left in [{start}, {end}] ({in_use} SPIs in use)")]
pub struct SpiExhausted {
    /// The range's first SPI.
    pub start: u32,
    /// The range's last SPI.
    pub end: u32,
    /// SPIs in use.
    pub in_use: usize,
}

#[derive(Debug)]
struct State {
    used: HashSet<u32>,
    /// The next SPI to try.
    next: u32,
}

/// Hands out unique SPI pairs from an inclusive range.
#[derive(Debug)]
pub struct SpiAllocator {
    start: u32,
    end: u32,
    state: Mutex<State>,
}

impl SpiAllocator {
    /// An allocator over `[start, end]` (inclusive). A range of fewer than two SPIs (or
    /// `start > end`) never yields a pair; a daemon's configuration check should refuse it first.
    pub fn new(start: u32, end: u32) -> Self {
        Self {
            start,
            end,
            state: Mutex::new(State {
                used: HashSet::new(),
                next: start,
            }),
        }
    }

    /// The range `[start, end]`.
    pub fn range(&self) -> (u32, u32) {
        (self.start, self.end)
    }

    fn size(&self) -> u64 {
        if self.end < self.start {
            0
        } else {
            u64::from(self.end - self.start) + 1
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The set stays consistent whatever panicked while holding it (inserts are atomic).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Two free SPIs, now in use until [`SpiAllocator::release`].
    pub fn allocate(&self) -> Result<SpiPair, SpiExhausted> {
        let mut st = self.state();
        if (st.used.len() as u64) + 2 > self.size() {
            return Err(SpiExhausted {
                start: self.start,
                end: self.end,
                in_use: st.used.len(),
            });
        }
        let spi_pc = self.take_next(&mut st);
        let spi_ps = self.take_next(&mut st);
        Ok(SpiPair { spi_pc, spi_ps })
    }

    /// The next free SPI at or after the cursor (wrapping). Callers checked that one exists,
    /// so the walk ends within `used.len() + 1` steps.
    fn take_next(&self, st: &mut State) -> u32 {
        loop {
            let spi = st.next;
            st.next = if spi >= self.end { self.start } else { spi + 1 };
            if st.used.insert(spi) {
                return spi;
            }
        }
    }

    /// Gives a pair back (SPIs not in use, or outside the range, are ignored).
    pub fn release(&self, pair: SpiPair) {
        let mut st = self.state();
        st.used.remove(&pair.spi_pc);
        st.used.remove(&pair.spi_ps);
    }

    /// True when `spi` is allocated.
    pub fn is_used(&self, spi: u32) -> bool {
        self.state().used.contains(&spi)
    }

    /// How many SPIs are allocated.
    pub fn in_use(&self) -> usize {
        self.state().used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_unique_over_many_allocations() {
        let a = SpiAllocator::new(4096, 65535);
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let p = a.allocate().unwrap();
            assert_ne!(p.spi_pc, p.spi_ps);
            for spi in [p.spi_pc, p.spi_ps] {
                assert!((4096..=65535).contains(&spi));
                assert!(seen.insert(spi), "{spi} handed out twice");
            }
        }
        assert_eq!(a.in_use(), 20_000);
    }

    #[test]
    fn unique_across_threads() {
        let a = std::sync::Arc::new(SpiAllocator::new(256, 100_000));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || {
                    (0..2000).map(|_| a.allocate().unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for h in handles {
            for p in h.join().unwrap() {
                assert!(seen.insert(p.spi_pc) && seen.insert(p.spi_ps));
            }
        }
        assert_eq!(seen.len(), 16_000);
    }

    #[test]
    fn exhaustion_then_release_then_reuse() {
        // Seven SPIs: three pairs, then one left over, which is not a pair.
        let a = SpiAllocator::new(300, 306);
        let pairs: Vec<_> = (0..3).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(
            a.allocate(),
            Err(SpiExhausted {
                start: 300,
                end: 306,
                in_use: 6
            })
        );
        assert!(a.allocate().unwrap_err().to_string().contains("[300, 306]"));
        // Nothing was taken by the failed attempts.
        assert_eq!(a.in_use(), 6);
        a.release(pairs[1]);
        let again = a.allocate().unwrap();
        // 306 (never used) then the cursor wraps and finds the lowest released SPI.
        assert_eq!(again.spi_pc, 306);
        assert!(again.spi_ps == pairs[1].spi_pc || again.spi_ps == pairs[1].spi_ps);
        assert!(a.allocate().is_err());
    }

    #[test]
    fn released_spis_come_back_only_after_release_and_after_the_rest() {
        let a = SpiAllocator::new(1000, 1009);
        let first = a.allocate().unwrap();
        assert_eq!(
            first,
            SpiPair {
                spi_pc: 1000,
                spi_ps: 1001
            }
        );
        // Still in use: never handed out again.
        let mut others = Vec::new();
        for _ in 0..4 {
            let p = a.allocate().unwrap();
            assert!(![p.spi_pc, p.spi_ps].contains(&1000));
            assert!(![p.spi_pc, p.spi_ps].contains(&1001));
            others.push(p);
        }
        assert!(a.allocate().is_err());
        assert!(a.is_used(1000));
        a.release(first);
        assert!(!a.is_used(1000));
        assert_eq!(a.allocate().unwrap(), first);
        // With room to spare, a released pair waits for the cursor to come round.
        let b = SpiAllocator::new(2000, 2099);
        let p = b.allocate().unwrap();
        b.release(p);
        let q = b.allocate().unwrap();
        assert!(q.spi_pc != p.spi_pc && q.spi_pc != p.spi_ps);
        // Releasing what is not in use changes nothing.
        b.release(SpiPair {
            spi_pc: 1,
            spi_ps: 2,
        });
        assert_eq!(b.in_use(), 2);
    }

    #[test]
    fn degenerate_ranges_never_yield() {
        assert!(SpiAllocator::new(500, 500).allocate().is_err());
        assert!(SpiAllocator::new(600, 500).allocate().is_err());
        let full = SpiAllocator::new(u32::MAX - 1, u32::MAX);
        let p = full.allocate().unwrap();
        assert_eq!((p.spi_pc, p.spi_ps), (u32::MAX - 1, u32::MAX));
        assert!(full.allocate().is_err());
        full.release(p);
        assert!(full.allocate().is_ok());
    }
}

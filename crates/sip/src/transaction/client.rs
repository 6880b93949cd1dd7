//! Non-INVITE client transaction (RFC 3261 §17.1.2, Figure 6).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timers::{deadline, due, earliest, rearm};
use super::{Event, Outbox, Timers, impl_transaction};

/// States of a [`NonInviteClient`], in the order they are visited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NictState {
    /// The request was sent; no response yet. Timer E retransmits (UDP).
    Trying,
    /// A provisional response arrived. Timer E keeps retransmitting, at T2 intervals.
    Proceeding,
    /// A final response arrived; Timer K absorbs its retransmissions.
    Completed,
    /// Done.
    Terminated,
}

/// A non-INVITE client transaction: sends a request, retransmits it over UDP (Timer E)
/// until a response arrives, times out after 64*T1 (Timer F) and absorbs retransmitted final
/// responses for T4 (Timer K).
#[derive(Debug)]
pub struct NonInviteClient {
    state: NictState,
    request: Bytes,
    reliable: bool,
    timers: Timers,
    /// Next retransmission (UDP, Trying and Proceeding).
    timer_e: Option<Instant>,
    /// Interval that led to `timer_e`; the next one is derived from it.
    interval_e: Duration,
    /// Transaction timeout (Trying and Proceeding).
    timer_f: Option<Instant>,
    /// End of the Completed state.
    timer_k: Option<Instant>,
    out: Outbox,
}

impl NonInviteClient {
    /// Starts the transaction: `request` is queued for its first transmission, Timer F is
    /// started, and over an unreliable transport Timer E.
    pub fn new(request: Bytes, reliable: bool, now: Instant, timers: Timers) -> Self {
        let interval_e = timers.timer_e_initial(reliable).unwrap_or(Duration::ZERO);
        let mut tx = NonInviteClient {
            state: NictState::Trying,
            request: request.clone(),
            reliable,
            timers,
            timer_e: timers
                .timer_e_initial(reliable)
                .and_then(|e| deadline(now, e)),
            interval_e,
            timer_f: deadline(now, timers.timer_f()),
            timer_k: None,
            out: Outbox::default(),
        };
        tx.out.transmit(request);
        tracing::trace!(reliable, "NICT created, Trying");
        tx
    }

    /// A response matching this transaction arrived, with status code `status`. Returns
    /// whether the response must be passed up to the TU: provisional responses in Trying and
    /// Proceeding, and the first final response; retransmitted finals are absorbed in
    /// Completed, and anything is absorbed once terminated (or with a status outside 100-699).
    pub fn handle_response(&mut self, now: Instant, status: u16) -> bool {
        if !(100..=699).contains(&status) {
            tracing::debug!(status, "NICT: invalid status code, response dropped");
            return false;
        }
        match self.state {
            NictState::Trying | NictState::Proceeding if status < 200 => {
                if self.state == NictState::Trying {
                    tracing::trace!(status, "NICT Trying -> Proceeding");
                    self.state = NictState::Proceeding;
                }
                true
            }
            NictState::Trying | NictState::Proceeding => {
                self.timer_e = None;
                self.timer_f = None;
                let k = self.timers.timer_k(self.reliable);
                if k.is_zero() {
                    tracing::trace!(status, "NICT -> Terminated (final response, reliable)");
                    self.terminate(None);
                } else {
                    tracing::trace!(status, "NICT -> Completed");
                    self.state = NictState::Completed;
                    self.timer_k = deadline(now, k);
                }
                true
            }
            NictState::Completed => {
                tracing::trace!(status, "NICT: response retransmission absorbed");
                false
            }
            NictState::Terminated => false,
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            NictState::Trying | NictState::Proceeding => {
                if due(self.timer_f, now) {
                    tracing::debug!("NICT: Timer F fired, transaction timeout");
                    self.terminate(Some(Event::Timeout));
                    return;
                }
                if let Some(e) = self.timer_e.filter(|&e| e <= now) {
                    self.out.transmit(self.request.clone());
                    self.interval_e = if self.state == NictState::Proceeding {
                        self.timers.t2
                    } else {
                        self.timers.timer_e_next(self.interval_e)
                    };
                    self.timer_e = rearm(e, now, self.interval_e);
                    tracing::trace!(interval = ?self.interval_e, "NICT: Timer E, request retransmitted");
                }
            }
            NictState::Completed => {
                if due(self.timer_k, now) {
                    tracing::trace!("NICT: Timer K fired, Completed -> Terminated");
                    self.terminate(None);
                }
            }
            NictState::Terminated => {}
        }
    }

    /// The transport failed to send the request: the transaction terminates with
    /// [`Event::TransportError`] (the TU treats it as a 503, §8.1.3.1).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != NictState::Terminated {
            tracing::debug!(state = ?self.state, "NICT: transport error");
            self.terminate(Some(Event::TransportError));
        }
    }

    /// The next message to hand to the transport.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.transmits.pop_front()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// The earliest pending timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        earliest([self.timer_e, self.timer_f, self.timer_k])
    }

    /// The current state.
    pub fn state(&self) -> NictState {
        self.state
    }

    /// True once terminated.
    pub fn is_terminated(&self) -> bool {
        self.state == NictState::Terminated
    }

    /// Whether the transport is reliable, as given at creation.
    pub fn is_reliable(&self) -> bool {
        self.reliable
    }

    fn terminate(&mut self, cause: Option<Event>) {
        self.state = NictState::Terminated;
        self.timer_e = None;
        self.timer_f = None;
        self.timer_k = None;
        self.out.terminated(cause);
    }
}

impl_transaction!(NonInviteClient);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{events, ms, run_until, sent};
    use super::*;

    const REQ: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\n\r\n";

    fn nict(reliable: bool, t0: Instant) -> NonInviteClient {
        NonInviteClient::new(Bytes::from_static(REQ), reliable, t0, Timers::RFC3261)
    }

    #[test]
    fn udp_retransmission_schedule_until_timer_f() {
        let t0 = Instant::now();
        let mut tx = nict(false, t0);
        assert_eq!(sent(&mut tx), [Bytes::from_static(REQ)]);
        let at = run_until(&mut tx, t0, t0 + ms(60_000));
        let expected = [
            500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500,
        ]
        .map(ms);
        assert_eq!(at, expected, "10 retransmissions: 11 transmissions in all");
        // Intervals: 500, 1000, 2000, 4000, 4000, ... (E doubles, capped at T2).
        assert_eq!(tx.state(), NictState::Terminated);
        assert_eq!(events(&mut tx), [Event::Timeout, Event::Terminated]);
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn timer_f_fires_at_32s() {
        let t0 = Instant::now();
        let mut tx = nict(false, t0);
        let _ = run_until(&mut tx, t0, t0 + ms(31_999));
        assert_eq!(tx.state(), NictState::Trying);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
        assert!(events(&mut tx).is_empty());
        tx.handle_timeout(t0 + ms(32_000));
        assert_eq!(events(&mut tx), [Event::Timeout, Event::Terminated]);
        assert!(tx.is_terminated());
    }

    #[test]
    fn reliable_no_retransmission_f_at_32s() {
        let t0 = Instant::now();
        let mut tx = nict(true, t0);
        assert_eq!(sent(&mut tx).len(), 1);
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + ms(32_000)),
            "no Timer E over TCP"
        );
        tx.handle_timeout(t0 + ms(31_999));
        assert!(sent(&mut tx).is_empty());
        tx.handle_timeout(t0 + ms(32_000));
        assert!(sent(&mut tx).is_empty());
        assert_eq!(events(&mut tx), [Event::Timeout, Event::Terminated]);
    }

    #[test]
    fn proceeding_retransmits_every_t2() {
        let t0 = Instant::now();
        let mut tx = nict(false, t0);
        sent(&mut tx);
        tx.handle_timeout(t0 + ms(500)); // E: 0.5 s, next at 1.5 s
        assert_eq!(sent(&mut tx).len(), 1);
        assert!(tx.handle_response(t0 + ms(600), 100));
        assert_eq!(tx.state(), NictState::Proceeding);
        let at = run_until(&mut tx, t0, t0 + ms(13_000));
        // The pending E (1.5 s) fires, then every T2.
        assert_eq!(at, [1500, 5500, 9500].map(ms));
        assert!(
            tx.handle_response(t0 + ms(13_000), 180),
            "1xx passes up in Proceeding"
        );
    }

    #[test]
    fn final_response_udp_timer_k_absorbs_retransmissions() {
        let t0 = Instant::now();
        let mut tx = nict(false, t0);
        sent(&mut tx);
        assert!(tx.handle_response(t0 + ms(100), 200));
        assert_eq!(tx.state(), NictState::Completed);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(5_100)), "K = T4");
        assert!(
            !tx.handle_response(t0 + ms(200), 200),
            "retransmission absorbed"
        );
        assert!(!tx.handle_response(t0 + ms(300), 180), "late 1xx absorbed");
        tx.handle_timeout(t0 + ms(5_099));
        assert_eq!(tx.state(), NictState::Completed);
        assert!(sent(&mut tx).is_empty(), "no retransmission in Completed");
        tx.handle_timeout(t0 + ms(5_100));
        assert_eq!(tx.state(), NictState::Terminated);
        assert_eq!(events(&mut tx), [Event::Terminated]);
        assert!(!tx.handle_response(t0 + ms(6_000), 200));
    }

    #[test]
    fn final_response_reliable_terminates_at_once() {
        let t0 = Instant::now();
        let mut tx = nict(true, t0);
        sent(&mut tx);
        assert!(tx.handle_response(t0 + ms(10), 100));
        assert!(tx.handle_response(t0 + ms(20), 404));
        assert!(tx.is_terminated(), "K = 0 over TCP");
        assert_eq!(tx.poll_timeout(), None);
        assert_eq!(events(&mut tx), [Event::Terminated]);
    }

    #[test]
    fn transport_error_terminates() {
        let t0 = Instant::now();
        let mut tx = nict(false, t0);
        tx.handle_transport_error(t0);
        assert!(tx.is_terminated());
        assert!(sent(&mut tx).is_empty(), "unsent request dropped");
        assert_eq!(events(&mut tx), [Event::TransportError, Event::Terminated]);
        tx.handle_transport_error(t0);
        tx.handle_timeout(t0 + ms(40_000));
        assert!(events(&mut tx).is_empty());
        assert!(sent(&mut tx).is_empty());
    }

    #[test]
    fn late_driver_gets_one_retransmission_and_f_wins() {
        let t0 = Instant::now();
        let mut tx = nict(false, t0);
        sent(&mut tx);
        tx.handle_timeout(t0 + ms(10_000));
        assert_eq!(sent(&mut tx).len(), 1, "one retransmission, not a burst");
        assert!(tx.poll_timeout() > Some(t0 + ms(10_000)));
        tx.handle_timeout(t0 + ms(40_000));
        assert!(sent(&mut tx).is_empty(), "F is due: no retransmission");
        assert_eq!(events(&mut tx), [Event::Timeout, Event::Terminated]);
    }

    #[test]
    fn invalid_status_ignored() {
        let t0 = Instant::now();
        let mut tx = nict(false, t0);
        assert!(!tx.handle_response(t0, 99));
        assert!(!tx.handle_response(t0, 700));
        assert_eq!(tx.state(), NictState::Trying);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Response(u16),
        Advance(u64),
        TimeoutAt(i64),
        TransportError,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop_oneof![0u16..=99, 100u16..200, 200u16..700, 700u16..=u16::MAX].prop_map(Op::Response),
            4 => (0u64..8_000).prop_map(Op::Advance),
            3 => (-1_000i64..40_000).prop_map(Op::TimeoutAt),
            1 => Just(Op::TransportError),
        ]
    }

    proptest! {
        #[test]
        fn random_inputs_keep_invariants(reliable: bool, ops in proptest::collection::vec(op(), 0..60)) {
            let t0 = Instant::now() + ms(10_000);
            let mut now = t0;
            let mut tx = NonInviteClient::new(Bytes::from_static(REQ), reliable, now, Timers::RFC3261);
            let mut finals_passed = 0;
            for op in ops {
                let before = tx.state();
                let was_terminated = tx.is_terminated();
                match op {
                    Op::Response(s) => {
                        let up = tx.handle_response(now, s);
                        if up && s >= 200 { finals_passed += 1; }
                        if up { prop_assert!((100..700).contains(&s)); }
                    }
                    Op::Advance(d) => {
                        now += ms(d);
                        tx.handle_timeout(now);
                        prop_assert!(tx.poll_timeout().is_none_or(|t| t > now));
                    }
                    Op::TimeoutAt(off) => {
                        let at = if off < 0 { now - ms(off.unsigned_abs()) } else { now + ms(off as u64) };
                        tx.handle_timeout(at);
                        prop_assert!(tx.poll_timeout().is_none_or(|t| t > at));
                    }
                    Op::TransportError => tx.handle_transport_error(now),
                }
                prop_assert!(tx.state() >= before, "state went back: {:?} -> {:?}", before, tx.state());
                let out = sent(&mut tx);
                if was_terminated {
                    prop_assert!(out.is_empty(), "transmitted after Terminated");
                }
                if tx.is_terminated() {
                    prop_assert_eq!(tx.poll_timeout(), None);
                }
                prop_assert!(finals_passed <= 1);
                for e in events(&mut tx) {
                    if e == Event::Terminated { prop_assert!(tx.is_terminated()); }
                }
            }
        }
    }
}

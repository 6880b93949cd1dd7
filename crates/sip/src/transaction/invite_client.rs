//! INVITE client transaction (RFC 3261 §17.1.1, Figure 5), with a proxy's Timer C (§16.8).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timers::{deadline, due, earliest, rearm};
use super::{Event, Outbox, Timers, impl_transaction};

/// Timer C of a proxy (§16.8): more than three minutes, restarted by each provisional
/// response.
pub const TIMER_C: Duration = Duration::from_secs(181);

/// States of an [`InviteClient`], in the order they are visited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IctState {
    /// The INVITE was sent; no response yet. Timer A retransmits (UDP), Timer B ends it.
    Calling,
    /// A provisional response arrived: no more retransmissions; Timer C (a proxy's) runs.
    Proceeding,
    /// A 300-699 final response arrived and was ACKed; Timer D absorbs its retransmissions
    /// (each ACKed again).
    Completed,
    /// Done (also right after a 2xx: its retransmissions and the ACK are end to end).
    Terminated,
}

/// An INVITE client transaction: sends the INVITE, retransmits it over UDP (Timer A) until
/// a response arrives, gives up after 64·T1 without one (Timer B), ACKs a non-2xx final
/// response hop by hop and re-ACKs its retransmissions for Timer D (32 s over UDP).
///
/// The ACK is built by the caller (it needs the response's To tag) and given with the
/// response. With `timer_c` (a proxy), a branch that stays in Proceeding for that long
/// without a final response reports [`Event::Timeout`]; the proxy then CANCELs it and
/// treats it as a 408 (§16.8), while the transaction goes on waiting for the 487.
#[derive(Debug)]
pub struct InviteClient {
    state: IctState,
    request: Bytes,
    reliable: bool,
    timers: Timers,
    /// The ACK of the non-2xx final response, sent again for each retransmission of it.
    ack: Option<Bytes>,
    timer_a: Option<Instant>,
    interval_a: Duration,
    timer_b: Option<Instant>,
    timer_c_len: Option<Duration>,
    timer_c: Option<Instant>,
    timer_d: Option<Instant>,
    out: Outbox,
}

impl InviteClient {
    /// Starts the transaction: `request` is queued for its first transmission, Timer B is
    /// started, over an unreliable transport Timer A, and Timer C when given.
    pub fn new(
        request: Bytes,
        reliable: bool,
        now: Instant,
        timers: Timers,
        timer_c: Option<Duration>,
    ) -> Self {
        let interval_a = timers.timer_e_initial(reliable).unwrap_or(Duration::ZERO);
        let mut tx = InviteClient {
            state: IctState::Calling,
            request: request.clone(),
            reliable,
            timers,
            ack: None,
            timer_a: timers
                .timer_e_initial(reliable)
                .and_then(|a| deadline(now, a)),
            interval_a,
            timer_b: deadline(now, timers.t1x64()),
            timer_c_len: timer_c,
            timer_c: timer_c.and_then(|c| deadline(now, c)),
            timer_d: None,
            out: Outbox::default(),
        };
        tx.out.transmit(request);
        tracing::trace!(reliable, "ICT created, Calling");
        tx
    }

    /// A response matching this transaction arrived, with status code `status`; `ack` is
    /// the ACK to send for it when it is a 300-699 final response (ignored otherwise).
    /// Returns whether the response must be passed up: provisionals in Calling and
    /// Proceeding, every 2xx while not Completed (RFC 6026: the TU forwards each), the first
    /// non-2xx final. Retransmitted non-2xx finals are ACKed again and absorbed.
    pub fn handle_response(&mut self, now: Instant, status: u16, ack: Option<Bytes>) -> bool {
        if !(100..=699).contains(&status) {
            tracing::debug!(status, "ICT: invalid status code, response dropped");
            return false;
        }
        match (self.state, status) {
            (IctState::Calling | IctState::Proceeding, 100..=199) => {
                self.timer_a = None;
                self.timer_b = None;
                if status > 100 {
                    self.timer_c = self.timer_c_len.and_then(|c| deadline(now, c));
                }
                if self.state == IctState::Calling {
                    tracing::trace!(status, "ICT Calling -> Proceeding");
                    self.state = IctState::Proceeding;
                }
                true
            }
            (IctState::Calling | IctState::Proceeding, 200..=299) => {
                tracing::trace!(status, "ICT -> Terminated (2xx)");
                self.terminate(None);
                true
            }
            (IctState::Terminated, 200..=299) => true,
            (IctState::Calling | IctState::Proceeding, _) => {
                self.timer_a = None;
                self.timer_b = None;
                self.timer_c = None;
                if let Some(a) = &ack {
                    self.out.transmit(a.clone());
                }
                self.ack = ack;
                let d = if self.reliable {
                    Duration::ZERO
                } else {
                    Duration::from_secs(32).max(self.timers.t1x64())
                };
                if d.is_zero() {
                    tracing::trace!(status, "ICT -> Terminated (non-2xx final, reliable)");
                    self.terminate(None);
                } else {
                    tracing::trace!(status, "ICT -> Completed");
                    self.state = IctState::Completed;
                    self.timer_d = deadline(now, d);
                }
                true
            }
            (IctState::Completed, 300..=699) => {
                if let Some(a) = &self.ack {
                    tracing::trace!(status, "ICT: final response retransmission, ACK re-sent");
                    self.out.transmit(a.clone());
                }
                false
            }
            _ => {
                tracing::trace!(status, state = ?self.state, "ICT: response absorbed");
                false
            }
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            IctState::Calling | IctState::Proceeding => {
                if due(self.timer_b, now) {
                    tracing::debug!("ICT: Timer B fired, no response");
                    self.terminate(Some(Event::Timeout));
                    return;
                }
                if due(self.timer_c, now) {
                    tracing::debug!("ICT: Timer C fired, no final response");
                    self.timer_c = None;
                    self.out.events.push_back(Event::Timeout);
                }
                if let Some(a) = self.timer_a.filter(|&a| a <= now) {
                    self.out.transmit(self.request.clone());
                    self.interval_a = self.interval_a.saturating_mul(2);
                    self.timer_a = rearm(a, now, self.interval_a);
                    tracing::trace!(interval = ?self.interval_a, "ICT: Timer A, INVITE retransmitted");
                }
            }
            IctState::Completed => {
                if due(self.timer_d, now) {
                    tracing::trace!("ICT: Timer D fired, Completed -> Terminated");
                    self.terminate(None);
                }
            }
            IctState::Terminated => {}
        }
    }

    /// The transport failed to send: the transaction terminates with
    /// [`Event::TransportError`] (the TU treats it as a 503, §8.1.3.1).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != IctState::Terminated {
            tracing::debug!(state = ?self.state, "ICT: transport error");
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
        earliest([self.timer_a, self.timer_b, self.timer_c, self.timer_d])
    }

    /// The current state.
    pub fn state(&self) -> IctState {
        self.state
    }

    /// True once terminated.
    pub fn is_terminated(&self) -> bool {
        self.state == IctState::Terminated
    }

    /// Whether the transport is reliable, as given at creation.
    pub fn is_reliable(&self) -> bool {
        self.reliable
    }

    fn terminate(&mut self, cause: Option<Event>) {
        self.state = IctState::Terminated;
        self.timer_a = None;
        self.timer_b = None;
        self.timer_c = None;
        self.timer_d = None;
        self.out.terminated(cause);
    }
}

impl_transaction!(InviteClient);

#[cfg(test)]
mod tests {
    use super::super::testutil::{events, ms, run_until, sent};
    use super::*;

    const REQ: &[u8] = b"INVITE sip:a@b SIP/2.0\r\n\r\n";
    const ACK: &[u8] = b"ACK sip:a@b SIP/2.0\r\n\r\n";

    fn ict(reliable: bool, t0: Instant, c: Option<Duration>) -> InviteClient {
        InviteClient::new(Bytes::from_static(REQ), reliable, t0, Timers::RFC3261, c)
    }

    #[test]
    fn udp_retransmits_by_timer_a_until_timer_b() {
        let t0 = Instant::now();
        let mut tx = ict(false, t0, None);
        assert_eq!(sent(&mut tx).len(), 1);
        let at = run_until(&mut tx, t0, t0 + ms(40_000));
        // 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; Timer B at 32 s.
        assert_eq!(at, [500, 1500, 3500, 7500, 15500, 31500].map(ms).to_vec());
        assert_eq!(events(&mut tx), [Event::Timeout, Event::Terminated]);
        assert!(tx.is_terminated());
    }

    #[test]
    fn tcp_sends_once() {
        let t0 = Instant::now();
        let mut tx = ict(true, t0, None);
        assert_eq!(sent(&mut tx).len(), 1);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
    }

    #[test]
    fn provisional_stops_retransmissions_and_2xx_ends_it() {
        let t0 = Instant::now();
        let mut tx = ict(false, t0, None);
        sent(&mut tx);
        assert!(tx.handle_response(t0 + ms(100), 100, None));
        assert_eq!(tx.state(), IctState::Proceeding);
        assert_eq!(tx.poll_timeout(), None);
        assert!(tx.handle_response(t0 + ms(200), 180, None));
        assert!(tx.handle_response(t0 + ms(300), 200, None));
        assert!(tx.is_terminated());
        assert!(sent(&mut tx).is_empty(), "the ACK of a 2xx is not ours");
        // 2xx retransmissions (and other branches' 2xx) still go up.
        assert!(tx.handle_response(t0 + ms(800), 200, None));
    }

    #[test]
    fn non_2xx_final_is_acked_and_its_retransmissions_acked_again() {
        let t0 = Instant::now();
        let mut tx = ict(false, t0, None);
        sent(&mut tx);
        assert!(tx.handle_response(t0 + ms(50), 486, Some(Bytes::from_static(ACK))));
        assert_eq!(sent(&mut tx), vec![Bytes::from_static(ACK)]);
        assert_eq!(tx.state(), IctState::Completed);
        assert!(!tx.handle_response(t0 + ms(550), 486, None));
        assert_eq!(sent(&mut tx), vec![Bytes::from_static(ACK)]);
        tx.handle_timeout(t0 + ms(32_050));
        assert_eq!(events(&mut tx), [Event::Terminated]);
    }

    #[test]
    fn non_2xx_over_tcp_ends_at_once() {
        let t0 = Instant::now();
        let mut tx = ict(true, t0, None);
        sent(&mut tx);
        assert!(tx.handle_response(t0, 487, Some(Bytes::from_static(ACK))));
        assert_eq!(sent(&mut tx).len(), 1);
        assert!(tx.is_terminated());
    }

    #[test]
    fn timer_c_reports_a_timeout_and_is_restarted_by_provisionals() {
        let t0 = Instant::now();
        let mut tx = ict(true, t0, Some(ms(10_000)));
        sent(&mut tx);
        assert!(tx.handle_response(t0 + ms(5_000), 180, None));
        tx.handle_timeout(t0 + ms(10_000));
        assert!(events(&mut tx).is_empty(), "restarted by the 180");
        tx.handle_timeout(t0 + ms(15_000));
        assert_eq!(events(&mut tx), [Event::Timeout]);
        assert_eq!(tx.state(), IctState::Proceeding, "waits for the 487");
        assert!(tx.handle_response(t0 + ms(15_100), 487, Some(Bytes::from_static(ACK))));
        assert!(tx.is_terminated());
    }

    #[test]
    fn garbage_is_absorbed() {
        let t0 = Instant::now();
        let mut tx = ict(false, t0, None);
        assert!(!tx.handle_response(t0, 99, None));
        assert!(!tx.handle_response(t0, 700, None));
        tx.handle_transport_error(t0);
        assert_eq!(events(&mut tx), [Event::TransportError, Event::Terminated]);
        assert!(!tx.handle_response(t0, 404, None));
    }
}

//! Non-INVITE server transaction (RFC 3261 §17.2.2, Figure 8).

use std::time::Instant;

use bytes::Bytes;

use super::timers::{deadline, due};
use super::{Event, Outbox, Timers, TransactionError, check_status, impl_transaction};

/// States of a [`NonInviteServer`], in the order they are visited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NistState {
    /// The request was passed to the TU; no response yet. Retransmissions are absorbed.
    Trying,
    /// A provisional response was sent; request retransmissions re-send it.
    Proceeding,
    /// A final response was sent; request retransmissions re-send it until Timer J.
    Completed,
    /// Done.
    Terminated,
}

/// A non-INVITE server transaction: sends the TU's responses, answers request
/// retransmissions with the last response, and lingers 64*T1 (Timer J, UDP) after the final.
#[derive(Debug)]
pub struct NonInviteServer {
    state: NistState,
    reliable: bool,
    timers: Timers,
    /// The most recent response sent, re-sent on request retransmissions.
    last_response: Option<Bytes>,
    /// End of the Completed state.
    timer_j: Option<Instant>,
    out: Outbox,
}

impl NonInviteServer {
    /// Creates the transaction for a request the caller has just received (and passes to the
    /// TU). It starts in Trying with no timer running.
    pub fn new(reliable: bool, timers: Timers) -> Self {
        tracing::trace!(reliable, "NIST created, Trying");
        NonInviteServer {
            state: NistState::Trying,
            reliable,
            timers,
            last_response: None,
            timer_j: None,
            out: Outbox::default(),
        }
    }

    /// The TU sends a response with status code `status`, serialized as `response`: it is
    /// queued for transmission. 1xx → Proceeding; 200-699 → Completed (Timer J on UDP; at
    /// once Terminated on a reliable transport). Refused after the final response, once
    /// terminated, or with a status outside 100-699; nothing is sent then.
    pub fn send_response(
        &mut self,
        now: Instant,
        status: u16,
        response: Bytes,
    ) -> Result<(), TransactionError> {
        check_status(status)?;
        match self.state {
            NistState::Trying | NistState::Proceeding => {}
            NistState::Completed => return Err(TransactionError::FinalResponseSent),
            NistState::Terminated => return Err(TransactionError::Terminated),
        }
        self.out.transmit(response.clone());
        self.last_response = Some(response);
        if status < 200 {
            if self.state == NistState::Trying {
                tracing::trace!(status, "NIST Trying -> Proceeding");
                self.state = NistState::Proceeding;
            }
            return Ok(());
        }
        let j = self.timers.timer_j(self.reliable);
        if j.is_zero() {
            tracing::trace!(status, "NIST -> Terminated (final response, reliable)");
            self.terminate(None);
        } else {
            tracing::trace!(status, "NIST -> Completed");
            self.state = NistState::Completed;
            self.timer_j = deadline(now, j);
        }
        Ok(())
    }

    /// A retransmission of the request arrived: in Proceeding and Completed the last
    /// response is sent again; in Trying (the TU has not answered) and once terminated it
    /// is absorbed. Never passed to the TU.
    pub fn handle_request_retransmission(&mut self, _now: Instant) {
        match self.state {
            NistState::Proceeding | NistState::Completed => {
                if let Some(response) = &self.last_response {
                    tracing::trace!(state = ?self.state, "NIST: request retransmission, response re-sent");
                    self.out.transmit(response.clone());
                }
            }
            NistState::Trying | NistState::Terminated => {
                tracing::trace!(state = ?self.state, "NIST: request retransmission absorbed");
            }
        }
    }

    /// Fires Timer J if due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == NistState::Completed && due(self.timer_j, now) {
            tracing::trace!("NIST: Timer J fired, Completed -> Terminated");
            self.terminate(None);
        }
    }

    /// The transport failed to send a response: the transaction terminates with
    /// [`Event::TransportError`] (§17.2.4 alternatives are the TU's business).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != NistState::Terminated {
            tracing::debug!(state = ?self.state, "NIST: transport error");
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

    /// The earliest pending timer (only Timer J exists here).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer_j
    }

    /// The current state.
    pub fn state(&self) -> NistState {
        self.state
    }

    /// True once terminated.
    pub fn is_terminated(&self) -> bool {
        self.state == NistState::Terminated
    }

    /// Whether the transport is reliable, as given at creation.
    pub fn is_reliable(&self) -> bool {
        self.reliable
    }

    fn terminate(&mut self, cause: Option<Event>) {
        self.state = NistState::Terminated;
        self.timer_j = None;
        self.last_response = None;
        self.out.terminated(cause);
    }
}

impl_transaction!(NonInviteServer);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{events, ms, sent};
    use super::*;

    fn resp(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn trying_absorbs_then_proceeding_and_completed_resend() {
        let t0 = Instant::now();
        let mut tx = NonInviteServer::new(false, Timers::RFC3261);
        assert_eq!(tx.poll_timeout(), None);
        tx.handle_request_retransmission(t0);
        assert!(sent(&mut tx).is_empty(), "absorbed in Trying");
        tx.send_response(t0, 100, resp("100")).unwrap();
        assert_eq!(tx.state(), NistState::Proceeding);
        assert_eq!(sent(&mut tx), [resp("100")]);
        tx.handle_request_retransmission(t0 + ms(500));
        assert_eq!(sent(&mut tx), [resp("100")]);
        tx.send_response(t0 + ms(600), 200, resp("200")).unwrap();
        assert_eq!(tx.state(), NistState::Completed);
        assert_eq!(sent(&mut tx), [resp("200")]);
        tx.handle_request_retransmission(t0 + ms(1_000));
        assert_eq!(sent(&mut tx), [resp("200")]);
        assert!(events(&mut tx).is_empty());
    }

    #[test]
    fn timer_j_udp_32s() {
        let t0 = Instant::now();
        let mut tx = NonInviteServer::new(false, Timers::RFC3261);
        tx.send_response(t0, 200, resp("200")).unwrap();
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
        tx.handle_timeout(t0 + ms(31_999));
        assert_eq!(tx.state(), NistState::Completed);
        tx.handle_timeout(t0 + ms(32_000));
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
        assert_eq!(events(&mut tx), [Event::Terminated]);
        sent(&mut tx);
        tx.handle_request_retransmission(t0 + ms(33_000));
        assert!(sent(&mut tx).is_empty(), "absorbed once terminated");
    }

    #[test]
    fn timer_j_reliable_zero() {
        let t0 = Instant::now();
        let mut tx = NonInviteServer::new(true, Timers::RFC3261);
        tx.send_response(t0, 486, resp("486")).unwrap();
        assert!(tx.is_terminated());
        assert_eq!(sent(&mut tx), [resp("486")], "the final is still sent");
        assert_eq!(events(&mut tx), [Event::Terminated]);
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn responses_after_final_are_refused() {
        let t0 = Instant::now();
        let mut tx = NonInviteServer::new(false, Timers::RFC3261);
        assert_eq!(
            tx.send_response(t0, 99, resp("x")),
            Err(TransactionError::InvalidStatus(99))
        );
        assert_eq!(
            tx.send_response(t0, 700, resp("x")),
            Err(TransactionError::InvalidStatus(700))
        );
        assert!(sent(&mut tx).is_empty());
        tx.send_response(t0, 404, resp("404")).unwrap();
        assert_eq!(
            tx.send_response(t0, 200, resp("200")),
            Err(TransactionError::FinalResponseSent)
        );
        assert_eq!(
            tx.send_response(t0, 180, resp("180")),
            Err(TransactionError::FinalResponseSent)
        );
        assert_eq!(sent(&mut tx), [resp("404")]);
        tx.handle_timeout(t0 + ms(32_000));
        assert_eq!(
            tx.send_response(t0, 200, resp("200")),
            Err(TransactionError::Terminated)
        );
        assert!(sent(&mut tx).is_empty());
    }

    #[test]
    fn transport_error() {
        let t0 = Instant::now();
        let mut tx = NonInviteServer::new(false, Timers::RFC3261);
        tx.send_response(t0, 100, resp("100")).unwrap();
        tx.handle_transport_error(t0);
        assert!(tx.is_terminated());
        assert!(sent(&mut tx).is_empty());
        assert_eq!(events(&mut tx), [Event::TransportError, Event::Terminated]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send(u16),
        Retransmission,
        Advance(u64),
        TimeoutAt(i64),
        TransportError,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop_oneof![0u16..=99, 100u16..200, 200u16..700, 700u16..=u16::MAX].prop_map(Op::Send),
            3 => Just(Op::Retransmission),
            4 => (0u64..20_000).prop_map(Op::Advance),
            2 => (-1_000i64..40_000).prop_map(Op::TimeoutAt),
            1 => Just(Op::TransportError),
        ]
    }

    proptest! {
        #[test]
        fn random_inputs_keep_invariants(reliable: bool, ops in proptest::collection::vec(op(), 0..60)) {
            let t0 = Instant::now() + ms(10_000);
            let mut now = t0;
            let mut tx = NonInviteServer::new(reliable, Timers::RFC3261);
            let mut finals_sent = 0;
            for op in ops {
                let before = tx.state();
                let was_terminated = tx.is_terminated();
                match op {
                    Op::Send(s) => {
                        let r = tx.send_response(now, s, Bytes::from(s.to_string()));
                        if r.is_ok() && s >= 200 { finals_sent += 1; }
                        if !(100..700).contains(&s) { prop_assert_eq!(r, Err(TransactionError::InvalidStatus(s))); }
                        if was_terminated { prop_assert!(r.is_err()); }
                    }
                    Op::Retransmission => tx.handle_request_retransmission(now),
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
                prop_assert!(tx.state() >= before);
                let out = sent(&mut tx);
                if was_terminated { prop_assert!(out.is_empty()); }
                if tx.is_terminated() { prop_assert_eq!(tx.poll_timeout(), None); }
                prop_assert!(finals_sent <= 1);
                let _ = events(&mut tx);
            }
        }
    }
}

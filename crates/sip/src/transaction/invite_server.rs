//! INVITE server transaction (RFC 3261 §17.2.1, Figure 7).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timers::{deadline, due, earliest, rearm};
use super::{Event, Outbox, Timers, TransactionError, check_status, impl_transaction};

/// States of an [`InviteServer`], in the order they are visited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IstState {
    /// The INVITE was passed to the TU; provisional responses may be sent.
    Proceeding,
    /// A 300-699 final response was sent; it is retransmitted (Timer G, UDP) until the ACK
    /// arrives or Timer H fires.
    Completed,
    /// The ACK arrived; Timer I absorbs its retransmissions.
    Confirmed,
    /// Done (also right after a 2xx: RFC 3261 leaves 2xx retransmission to the TU).
    Terminated,
}

/// An INVITE server transaction.
///
/// A 2xx from the TU is sent and the transaction terminates at once (§17.2.1): the UAS core
/// retransmits the 2xx itself until the ACK comes (§13.3.1.4), and the ACK for a 2xx is a
/// separate transaction. RFC 6026's Accepted state is not implemented.
///
/// The TU should send a 100 Trying at once. If it may not, give the transaction a
/// serialized 100 at creation: it is sent if the TU has not sent a response within 200 ms
/// ([`Timers::trying_delay`]), or as soon as the INVITE is retransmitted.
#[derive(Debug)]
pub struct InviteServer {
    state: IstState,
    reliable: bool,
    timers: Timers,
    /// The most recent response sent, re-sent on INVITE retransmissions (and Timer G).
    last_response: Option<Bytes>,
    /// The 100 Trying to send on the TU's behalf, until the TU answers.
    auto_trying: Option<Bytes>,
    timer_trying: Option<Instant>,
    /// Final response retransmission (UDP, Completed).
    timer_g: Option<Instant>,
    interval_g: Duration,
    /// ACK wait (Completed).
    timer_h: Option<Instant>,
    /// End of the Confirmed state.
    timer_i: Option<Instant>,
    out: Outbox,
}

impl InviteServer {
    /// Creates the transaction for an INVITE the caller has just received (and passes to
    /// the TU), in Proceeding. `auto_trying`: a serialized 100 Trying the transaction sends
    /// after [`Timers::trying_delay`] (200 ms) unless the TU sends a response first; `None`
    /// when the TU sends its own 100 at once.
    pub fn new(reliable: bool, now: Instant, timers: Timers, auto_trying: Option<Bytes>) -> Self {
        let timer_trying = auto_trying
            .as_ref()
            .and_then(|_| deadline(now, timers.trying_delay));
        tracing::trace!(
            reliable,
            auto_trying = auto_trying.is_some(),
            "IST created, Proceeding"
        );
        InviteServer {
            state: IstState::Proceeding,
            reliable,
            timers,
            last_response: None,
            auto_trying,
            timer_trying,
            timer_g: None,
            interval_g: Duration::ZERO,
            timer_h: None,
            timer_i: None,
            out: Outbox::default(),
        }
    }

    /// The TU sends a response with status code `status`, serialized as `response`: it is
    /// queued for transmission. 1xx stays in Proceeding; 2xx → Terminated (the TU
    /// retransmits the 2xx); 300-699 → Completed with Timers G (UDP) and H. Refused after a
    /// final response, once terminated, or with a status outside 100-699; nothing is sent then.
    pub fn send_response(
        &mut self,
        now: Instant,
        status: u16,
        response: Bytes,
    ) -> Result<(), TransactionError> {
        check_status(status)?;
        match self.state {
            IstState::Proceeding => {}
            IstState::Completed | IstState::Confirmed => {
                return Err(TransactionError::FinalResponseSent);
            }
            IstState::Terminated => return Err(TransactionError::Terminated),
        }
        self.auto_trying = None;
        self.timer_trying = None;
        self.out.transmit(response.clone());
        match status {
            100..=199 => {
                tracing::trace!(status, "IST: provisional response sent");
                self.last_response = Some(response);
            }
            200..=299 => {
                tracing::trace!(
                    status,
                    "IST Proceeding -> Terminated (2xx; the TU retransmits it)"
                );
                self.terminate(None);
            }
            _ => {
                tracing::trace!(status, "IST Proceeding -> Completed");
                self.last_response = Some(response);
                self.state = IstState::Completed;
                if let Some(g) = self.timers.timer_g_initial(self.reliable) {
                    self.interval_g = g;
                    self.timer_g = deadline(now, g);
                }
                self.timer_h = deadline(now, self.timers.timer_h());
            }
        }
        Ok(())
    }

    /// A retransmission of the INVITE arrived: in Proceeding the most recent provisional
    /// response is sent again (or the automatic 100 Trying at once, if the TU has sent
    /// nothing yet); in Completed the final response is sent again; otherwise absorbed.
    /// Never passed to the TU.
    pub fn handle_request_retransmission(&mut self, _now: Instant) {
        match self.state {
            IstState::Proceeding => {
                if let Some(response) = &self.last_response {
                    tracing::trace!("IST: INVITE retransmission, provisional re-sent");
                    self.out.transmit(response.clone());
                } else {
                    self.send_auto_trying();
                }
            }
            IstState::Completed => {
                if let Some(response) = &self.last_response {
                    tracing::trace!("IST: INVITE retransmission, final re-sent");
                    self.out.transmit(response.clone());
                }
            }
            IstState::Confirmed | IstState::Terminated => {
                tracing::trace!(state = ?self.state, "IST: INVITE retransmission absorbed");
            }
        }
    }

    /// The ACK for the non-2xx final response arrived (same key as the INVITE, §17.2.3):
    /// Completed → Confirmed, retransmissions stop, Timer I starts (T4 on UDP; at once
    /// Terminated on a reliable transport). Absorbed in any other state. Never passed to
    /// the TU.
    pub fn handle_ack(&mut self, now: Instant) {
        if self.state != IstState::Completed {
            tracing::trace!(state = ?self.state, "IST: ACK absorbed");
            return;
        }
        self.timer_g = None;
        self.timer_h = None;
        let i = self.timers.timer_i(self.reliable);
        if i.is_zero() {
            tracing::trace!("IST Completed -> Terminated (ACK, reliable)");
            self.terminate(None);
        } else {
            tracing::trace!("IST Completed -> Confirmed");
            self.state = IstState::Confirmed;
            self.last_response = None;
            self.timer_i = deadline(now, i);
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            IstState::Proceeding => {
                if due(self.timer_trying, now) {
                    tracing::trace!("IST: the TU did not answer within 200 ms, 100 Trying sent");
                    self.send_auto_trying();
                }
            }
            IstState::Completed => {
                if due(self.timer_h, now) {
                    tracing::debug!("IST: Timer H fired, no ACK");
                    self.terminate(Some(Event::AckTimeout));
                    return;
                }
                if let Some(g) = self.timer_g.filter(|&g| g <= now) {
                    if let Some(response) = &self.last_response {
                        self.out.transmit(response.clone());
                    }
                    self.interval_g = self.timers.timer_g_next(self.interval_g);
                    self.timer_g = rearm(g, now, self.interval_g);
                    tracing::trace!(interval = ?self.interval_g, "IST: Timer G, final response retransmitted");
                }
            }
            IstState::Confirmed => {
                if due(self.timer_i, now) {
                    tracing::trace!("IST: Timer I fired, Confirmed -> Terminated");
                    self.terminate(None);
                }
            }
            IstState::Terminated => {}
        }
    }

    /// The transport failed to send a response: the transaction terminates with
    /// [`Event::TransportError`].
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != IstState::Terminated {
            tracing::debug!(state = ?self.state, "IST: transport error");
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
        earliest([self.timer_trying, self.timer_g, self.timer_h, self.timer_i])
    }

    /// The current state.
    pub fn state(&self) -> IstState {
        self.state
    }

    /// True once terminated.
    pub fn is_terminated(&self) -> bool {
        self.state == IstState::Terminated
    }

    /// Whether the transport is reliable, as given at creation.
    pub fn is_reliable(&self) -> bool {
        self.reliable
    }

    /// Sends the automatic 100 Trying (once), which then counts as the last provisional.
    fn send_auto_trying(&mut self) {
        self.timer_trying = None;
        if let Some(trying) = self.auto_trying.take() {
            self.out.transmit(trying.clone());
            self.last_response = Some(trying);
        }
    }

    fn terminate(&mut self, cause: Option<Event>) {
        self.state = IstState::Terminated;
        self.auto_trying = None;
        self.last_response = None;
        self.timer_trying = None;
        self.timer_g = None;
        self.timer_h = None;
        self.timer_i = None;
        self.out.terminated(cause);
    }
}

impl_transaction!(InviteServer);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::{events, ms, run_until, sent};
    use super::*;

    fn resp(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn ist(reliable: bool, t0: Instant) -> InviteServer {
        InviteServer::new(reliable, t0, Timers::RFC3261, None)
    }

    #[test]
    fn udp_non_2xx_timer_g_doubles_then_h_at_32s() {
        let t0 = Instant::now();
        let mut tx = ist(false, t0);
        tx.send_response(t0, 486, resp("486")).unwrap();
        assert_eq!(tx.state(), IstState::Completed);
        assert_eq!(sent(&mut tx), [resp("486")]);
        let at = run_until(&mut tx, t0, t0 + ms(60_000));
        // G: 500, 1000, 2000, 4000, 4000, ... capped at T2; H at 32 s.
        let expected = [
            500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500,
        ]
        .map(ms);
        assert_eq!(at, expected);
        assert!(tx.is_terminated());
        assert_eq!(events(&mut tx), [Event::AckTimeout, Event::Terminated]);
    }

    #[test]
    fn timer_h_exact() {
        let t0 = Instant::now();
        let mut tx = ist(true, t0);
        tx.send_response(t0, 603, resp("603")).unwrap();
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + ms(32_000)),
            "no G over TCP, only H"
        );
        tx.handle_timeout(t0 + ms(31_999));
        assert_eq!(tx.state(), IstState::Completed);
        assert_eq!(sent(&mut tx), [resp("603")]);
        tx.handle_timeout(t0 + ms(32_000));
        assert!(sent(&mut tx).is_empty());
        assert_eq!(events(&mut tx), [Event::AckTimeout, Event::Terminated]);
    }

    #[test]
    fn ack_udp_confirmed_then_timer_i_5s() {
        let t0 = Instant::now();
        let mut tx = ist(false, t0);
        tx.send_response(t0, 404, resp("404")).unwrap();
        sent(&mut tx);
        tx.handle_timeout(t0 + ms(500));
        assert_eq!(sent(&mut tx), [resp("404")]);
        tx.handle_ack(t0 + ms(700));
        assert_eq!(tx.state(), IstState::Confirmed);
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + ms(5_700)),
            "I = T4, G and H cancelled"
        );
        tx.handle_ack(t0 + ms(800));
        tx.handle_request_retransmission(t0 + ms(900));
        assert!(
            sent(&mut tx).is_empty(),
            "ACK and INVITE absorbed in Confirmed"
        );
        tx.handle_timeout(t0 + ms(5_699));
        assert_eq!(tx.state(), IstState::Confirmed);
        tx.handle_timeout(t0 + ms(5_700));
        assert!(tx.is_terminated());
        assert_eq!(events(&mut tx), [Event::Terminated]);
    }

    #[test]
    fn ack_reliable_terminates_at_once() {
        let t0 = Instant::now();
        let mut tx = ist(true, t0);
        tx.send_response(t0, 404, resp("404")).unwrap();
        tx.handle_ack(t0 + ms(50));
        assert!(tx.is_terminated(), "I = 0 over TCP");
        assert_eq!(tx.poll_timeout(), None);
        assert_eq!(events(&mut tx), [Event::Terminated]);
    }

    #[test]
    fn two_xx_terminates_but_is_sent() {
        for reliable in [false, true] {
            let t0 = Instant::now();
            let mut tx = ist(reliable, t0);
            tx.send_response(t0, 180, resp("180")).unwrap();
            tx.send_response(t0, 200, resp("200")).unwrap();
            assert!(tx.is_terminated());
            assert_eq!(sent(&mut tx), [resp("180"), resp("200")]);
            assert_eq!(events(&mut tx), [Event::Terminated]);
            assert_eq!(
                tx.send_response(t0, 200, resp("200")),
                Err(TransactionError::Terminated)
            );
            tx.handle_request_retransmission(t0);
            tx.handle_ack(t0);
            assert!(sent(&mut tx).is_empty());
        }
    }

    #[test]
    fn invite_retransmissions_resend_last_response() {
        let t0 = Instant::now();
        let mut tx = ist(false, t0);
        tx.handle_request_retransmission(t0);
        assert!(sent(&mut tx).is_empty(), "nothing to re-send yet");
        tx.send_response(t0, 100, resp("100")).unwrap();
        tx.send_response(t0, 183, resp("183")).unwrap();
        sent(&mut tx);
        tx.handle_request_retransmission(t0 + ms(500));
        assert_eq!(sent(&mut tx), [resp("183")]);
        tx.send_response(t0 + ms(600), 480, resp("480")).unwrap();
        sent(&mut tx);
        tx.handle_request_retransmission(t0 + ms(700));
        assert_eq!(sent(&mut tx), [resp("480")]);
        assert_eq!(
            tx.send_response(t0, 500, resp("500")),
            Err(TransactionError::FinalResponseSent)
        );
        assert_eq!(
            tx.send_response(t0, 180, resp("180")),
            Err(TransactionError::FinalResponseSent)
        );
    }

    #[test]
    fn auto_trying_after_200ms() {
        let t0 = Instant::now();
        let mut tx = InviteServer::new(false, t0, Timers::RFC3261, Some(resp("100")));
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(200)));
        tx.handle_timeout(t0 + ms(199));
        assert!(sent(&mut tx).is_empty());
        tx.handle_timeout(t0 + ms(200));
        assert_eq!(sent(&mut tx), [resp("100")]);
        assert_eq!(tx.poll_timeout(), None);
        tx.handle_request_retransmission(t0 + ms(500));
        assert_eq!(
            sent(&mut tx),
            [resp("100")],
            "the automatic 100 is the last provisional"
        );
        tx.handle_timeout(t0 + ms(1_000));
        assert!(sent(&mut tx).is_empty(), "sent once");
    }

    #[test]
    fn auto_trying_cancelled_by_tu_response() {
        let t0 = Instant::now();
        let mut tx = InviteServer::new(false, t0, Timers::RFC3261, Some(resp("100")));
        tx.send_response(t0 + ms(50), 180, resp("180")).unwrap();
        assert_eq!(tx.poll_timeout(), None);
        tx.handle_timeout(t0 + ms(200));
        assert_eq!(sent(&mut tx), [resp("180")]);
    }

    #[test]
    fn auto_trying_sent_early_on_invite_retransmission() {
        let t0 = Instant::now();
        let mut tx = InviteServer::new(false, t0, Timers::RFC3261, Some(resp("100")));
        tx.handle_request_retransmission(t0 + ms(100));
        assert_eq!(sent(&mut tx), [resp("100")]);
        tx.handle_timeout(t0 + ms(200));
        assert!(sent(&mut tx).is_empty());
    }

    #[test]
    fn scaled_timers() {
        let t0 = Instant::now();
        let timers = Timers::RFC3261.scaled_down(100);
        let mut tx = InviteServer::new(false, t0, timers, None);
        tx.send_response(t0, 500, resp("500")).unwrap();
        sent(&mut tx);
        let at = run_until(&mut tx, t0, t0 + ms(1_000));
        assert_eq!(at, [5, 15, 35, 75, 115, 155, 195, 235, 275, 315].map(ms));
        assert_eq!(events(&mut tx), [Event::AckTimeout, Event::Terminated]);
    }

    #[test]
    fn transport_error() {
        let t0 = Instant::now();
        let mut tx = ist(false, t0);
        tx.send_response(t0, 404, resp("404")).unwrap();
        tx.handle_transport_error(t0);
        assert!(tx.is_terminated());
        assert!(sent(&mut tx).is_empty());
        assert_eq!(events(&mut tx), [Event::TransportError, Event::Terminated]);
        assert_eq!(tx.poll_timeout(), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send(u16),
        Retransmission,
        Ack,
        Advance(u64),
        TimeoutAt(i64),
        TransportError,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop_oneof![0u16..=99, 100u16..200, 200u16..300, 300u16..700, 700u16..=u16::MAX].prop_map(Op::Send),
            3 => Just(Op::Retransmission),
            2 => Just(Op::Ack),
            4 => (0u64..10_000).prop_map(Op::Advance),
            2 => (-1_000i64..40_000).prop_map(Op::TimeoutAt),
            1 => Just(Op::TransportError),
        ]
    }

    proptest! {
        #[test]
        fn random_inputs_keep_invariants(
            reliable: bool,
            auto: bool,
            ops in proptest::collection::vec(op(), 0..60),
        ) {
            let t0 = Instant::now() + ms(10_000);
            let mut now = t0;
            let mut tx = InviteServer::new(reliable, now, Timers::RFC3261, auto.then(|| resp("100")));
            let mut terminated_events = 0;
            for op in ops {
                let before = tx.state();
                let was_terminated = tx.is_terminated();
                match op {
                    Op::Send(s) => {
                        let r = tx.send_response(now, s, Bytes::from(s.to_string()));
                        if was_terminated { prop_assert!(r.is_err()); }
                        if r.is_ok() && (200..300).contains(&s) { prop_assert!(tx.is_terminated()); }
                    }
                    Op::Retransmission => tx.handle_request_retransmission(now),
                    Op::Ack => tx.handle_ack(now),
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
                if tx.state() == IstState::Confirmed { prop_assert!(out.is_empty(), "Confirmed sends nothing"); }
                if tx.is_terminated() { prop_assert_eq!(tx.poll_timeout(), None); }
                terminated_events += events(&mut tx).iter().filter(|e| **e == Event::Terminated).count();
                prop_assert!(terminated_events <= 1);
                prop_assert_eq!(terminated_events == 1, tx.is_terminated());
            }
        }
    }
}

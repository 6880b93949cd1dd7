//! RFC 3261 §17 transaction state machines, sans-io.
//!
//! # Design
//!
//! The machines follow the quinn-proto pattern: they never touch a socket or read a clock.
//! The caller (the `net` crate, or a test) feeds them inputs together with the current time
//! (`std::time::Instant`) and then drains their outputs:
//!
//! | inputs | outputs |
//! |---|---|
//! | a received response or request retransmission, the TU's response, an ACK | [`poll_transmit`](Transaction::poll_transmit): serialized messages to hand to the transport, in order |
//! | [`handle_timeout(now)`](Transaction::handle_timeout) | [`poll_event`](Transaction::poll_event): [`Event`]s for the TU (timeout, transport error, ...) |
//! | [`handle_transport_error(now)`](Transaction::handle_transport_error) | [`poll_timeout`](Transaction::poll_timeout): the next instant `handle_timeout` must be called |
//!
//! Messages are opaque [`Bytes`]: the machines do not depend on the message layer. The caller
//! parses, extracts the few facts a machine needs (the status code of a response, whether the
//! transport is reliable, the branch/method/sent-by of the key) and passes the serialized form
//! that is to be (re)transmitted. `Bytes` clones are reference counts, so keeping the last
//! response for retransmission costs no copy.
//!
//! The machines:
//! - [`NonInviteClient`] (§17.1.2, Timers E, F, K),
//! - [`NonInviteServer`] (§17.2.2, Timer J),
//! - [`InviteServer`] (§17.2.1, Timers G, H, I, and the optional automatic 100 Trying).
//!   A 2xx ends it at once, as in RFC 3261: the TU (the UAS core) retransmits the 2xx
//!   until the ACK arrives, and the proxy core forwards 2xx statelessly. RFC 6026's Accepted
//!   state is not implemented.
//!
//! - [`InviteClient`] (§17.1.1, Timers A, B, D, and a proxy's Timer C of §16.8). The ACK
//!   of a non-2xx final response is built by the caller (it needs the response's To tag) and
//!   re-sent by the machine for each retransmission of that response. A 2xx ends it and every
//!   2xx still goes up (RFC 6026: the proxy core forwards each one).
//!
//! - [`ServerSide`]: the server half of a transaction layer over these: which transaction
//!   a received request belongs to, the non-INVITE server transactions, a slot for each
//!   INVITE server transaction that a driver runs (and RFC 6026's Accepted state after its
//!   2xx).
//!
//! Timer values come from [`Timers`] (RFC defaults, scalable for tests). Transactions are
//! found by [`TransactionKey`] (§17.1.3 for responses, §17.2.3 for requests) in a
//! [`TransactionTable`], which also keeps the earliest deadline so a driver can sleep until
//! it and then visit only the expired transactions.
//!
//! # Driving a transaction
//!
//! After every input, drain `poll_transmit` (send each message) and `poll_event` (give each
//! event to the TU), then re-arm the wake-up at `poll_timeout`. A transaction reports
//! [`Event::Terminated`] exactly once; it may still hold messages to transmit at that moment
//! (a 2xx to an INVITE, a final response over TCP), so drain it before dropping it.
//! `handle_timeout` fires everything that is due at `now`; called early it does nothing,
//! called late it fires each overdue timer once (a late driver gets one retransmission, not
//! a burst). Inputs that do not apply to the current state are absorbed or, for the TU's own
//! calls, refused with a [`TransactionError`]; nothing panics, whatever the order.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use ims_sip::transaction::{Event, NonInviteClient, Timers, Transaction};
//!
//! let t0 = Instant::now();
//! let mut tx = NonInviteClient::new(Bytes::from_static(b"OPTIONS ..."), false, t0, Timers::RFC3261);
//! assert!(tx.poll_transmit().is_some()); // the first transmission
//! assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_millis(500))); // Timer E
//! tx.handle_timeout(t0 + Duration::from_millis(500));
//! assert!(tx.poll_transmit().is_some()); // a retransmission
//! assert!(tx.handle_response(t0 + Duration::from_millis(600), 200)); // pass it up
//! tx.handle_timeout(t0 + Duration::from_millis(5600)); // Timer K
//! assert_eq!(tx.poll_event(), Some(Event::Terminated));
//! ```

mod client;
mod invite_client;
mod invite_server;
mod server;
mod server_side;
mod table;
mod timers;

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

pub use client::{NictState, NonInviteClient};
pub use invite_client::{IctState, InviteClient, TIMER_C};
pub use invite_server::{InviteServer, IstState};
pub use server::{NistState, NonInviteServer};
pub use server_side::{Arrival, ServerSide, Slot};
pub use table::{KeyMethod, TransactionKey, TransactionTable, is_rfc3261_branch};
pub use timers::Timers;

/// What a transaction tells its TU, besides the responses it passes up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// Timer F fired in a non-INVITE client transaction: the TU must act as if it had
    /// received a 408 (Request Timeout) (§8.1.3.1).
    Timeout,
    /// The transport reported an error while sending; the TU treats it like a 503 (client)
    /// or gives up on the request (server) (§8.1.3.1, §17.2.4).
    TransportError,
    /// Timer H fired: the ACK for a non-2xx final response never came (§17.2.1).
    AckTimeout,
    /// The transaction reached the Terminated state; it comes after any of the events above.
    /// Drain `poll_transmit` and remove the transaction from its table.
    Terminated,
}

/// A call the TU made that the transaction cannot honour in its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    /// The transaction is terminated; it sends nothing more.
    #[error("the transaction is terminated")]
    Terminated,
    /// A final response was already sent; only its retransmissions may follow.
    #[error("a final response was already sent in this transaction")]
    FinalResponseSent,
    /// A status code outside 100-699.
    #[error("{0} is not a SIP status code (100-699)")]
    InvalidStatus(u16),
    /// The branch lacks the RFC 3261 magic cookie `z9hG4bK`; RFC 2543 matching (§17.2.3,
    /// by Request-URI, tags, Call-ID, CSeq and Via) is not supported.
    #[error("the branch does not start with the RFC 3261 magic cookie z9hG4bK")]
    NotRfc3261Branch,
}

/// The outputs shared by every transaction, so that a [`TransactionTable`] or a driver can
/// handle all of them alike. Each machine also has the same methods inherently.
pub trait Transaction {
    /// The next serialized message to hand to the transport, in order.
    fn poll_transmit(&mut self) -> Option<Bytes>;
    /// The next event for the TU.
    fn poll_event(&mut self) -> Option<Event>;
    /// The earliest pending timer: call [`handle_timeout`](Self::handle_timeout) then.
    /// `None` when nothing is pending (always the case once terminated).
    fn poll_timeout(&self) -> Option<Instant>;
    /// Fires every timer due at `now`. Harmless when called early; when called late each
    /// overdue timer fires once.
    fn handle_timeout(&mut self, now: Instant);
    /// The transport failed to send one of this transaction's messages: the transaction
    /// terminates with [`Event::TransportError`]. Untransmitted messages are dropped.
    fn handle_transport_error(&mut self, now: Instant);
    /// True once the transaction reached the Terminated state.
    fn is_terminated(&self) -> bool;
}

/// Implements [`Transaction`] by calling the type's inherent methods of the same names.
macro_rules! impl_transaction {
    ($ty:ty) => {
        impl $crate::transaction::Transaction for $ty {
            fn poll_transmit(&mut self) -> Option<::bytes::Bytes> {
                <$ty>::poll_transmit(self)
            }
            fn poll_event(&mut self) -> Option<$crate::transaction::Event> {
                <$ty>::poll_event(self)
            }
            fn poll_timeout(&self) -> Option<::std::time::Instant> {
                <$ty>::poll_timeout(self)
            }
            fn handle_timeout(&mut self, now: ::std::time::Instant) {
                <$ty>::handle_timeout(self, now)
            }
            fn handle_transport_error(&mut self, now: ::std::time::Instant) {
                <$ty>::handle_transport_error(self, now)
            }
            fn is_terminated(&self) -> bool {
                <$ty>::is_terminated(self)
            }
        }
    };
}
use impl_transaction;

/// The queued outputs of one transaction. `VecDeque::new` does not allocate, and neither
/// queue holds more than a few entries.
#[derive(Debug, Default)]
struct Outbox {
    transmits: VecDeque<Bytes>,
    events: VecDeque<Event>,
}

impl Outbox {
    fn transmit(&mut self, message: Bytes) {
        self.transmits.push_back(message);
    }

    /// Records the termination: `cause` (if any) then [`Event::Terminated`]. An abnormal end
    /// (a `cause`) also drops messages not yet transmitted: they are stale or unsendable.
    fn terminated(&mut self, cause: Option<Event>) {
        if let Some(cause) = cause {
            self.transmits.clear();
            self.events.push_back(cause);
        }
        self.events.push_back(Event::Terminated);
    }
}

/// Checks that a status code is a SIP status code.
fn check_status(status: u16) -> Result<(), TransactionError> {
    if (100..=699).contains(&status) {
        Ok(())
    } else {
        Err(TransactionError::InvalidStatus(status))
    }
}

#[cfg(test)]
mod testutil {
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::Transaction;

    pub(crate) fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drains the transmit queue.
    pub(crate) fn sent<T: Transaction>(tx: &mut T) -> Vec<Bytes> {
        std::iter::from_fn(|| tx.poll_transmit()).collect()
    }

    /// Drains the event queue.
    pub(crate) fn events<T: Transaction>(tx: &mut T) -> Vec<super::Event> {
        std::iter::from_fn(|| tx.poll_event()).collect()
    }

    /// Runs the transaction's timers up to `until`, firing each at its own deadline, and
    /// returns the offsets from `t0` at which each message was transmitted.
    pub(crate) fn run_until<T: Transaction>(
        tx: &mut T,
        t0: Instant,
        until: Instant,
    ) -> Vec<Duration> {
        let mut at = Vec::new();
        while let Some(d) = tx.poll_timeout() {
            if d > until {
                break;
            }
            tx.handle_timeout(d);
            for _ in sent(tx) {
                at.push(d - t0);
            }
        }
        at
    }
}

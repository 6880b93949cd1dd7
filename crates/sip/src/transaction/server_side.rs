//! The server half of a transaction layer (RFC 3261 §17.2), sans-io: which transaction a
//! received request belongs to (§17.2.3, by [`TransactionKey`]), the non-INVITE server
//! transactions themselves ([`NonInviteServer`]: retransmissions absorbed or answered
//! again, Timer J), and a slot for each INVITE server transaction, whose machine
//! ([`super::InviteServer`]) a driver runs elsewhere with its own timers: the slot holds the
//! driver's handle `I` to it, then RFC 6026's Accepted state after a 2xx.
//!
//! Time comes in as `now`; bytes to send come out; [`ServerSide::next_deadline`] tells when
//! [`ServerSide::handle_timeouts`] is due. Nothing here sends on a timer (a non-INVITE
//! server transaction only forgets, at Timer J), so a driver may call it late, or now and
//! then, at no cost to the protocol: the deadlines are a heap, so a visit touches only the
//! expired transactions.
//!
//! A transaction the application never answers (a request it forwarded statelessly, or a
//! bug) is forgotten after [`ServerSide::STALE`] periods of 64·T1: its retransmissions are
//! absorbed until then.

use std::time::Instant;

use bytes::Bytes;

use super::{
    NistState, NonInviteServer, Timers, TransactionError, TransactionKey, TransactionTable,
};

/// What a server-side key holds.
#[derive(Debug)]
pub enum Slot<I> {
    /// A non-INVITE server transaction.
    NonInvite(NonInviteServer),
    /// An INVITE server transaction, run by the driver: its handle.
    Invite(I),
    /// The INVITE was answered 2xx (RFC 6026 Accepted): its retransmissions are absorbed
    /// until the slot's deadline.
    Accepted,
}

/// What a received request is to its transaction ([`ServerSide::receive`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<I> {
    /// A new transaction: hand the request to the application (a non-INVITE one is now
    /// held; an INVITE gets its slot with [`ServerSide::start_invite`]).
    New,
    /// A retransmission the application has not answered yet: absorbed.
    Absorbed,
    /// A retransmission of an answered request: send this response again.
    Again(Bytes),
    /// A request of a running INVITE server transaction (its retransmission): the handle.
    Invite(I),
    /// A retransmission of an INVITE answered 2xx: absorbed.
    Accepted,
}

/// The server transactions of one endpoint (or of one shard of it).
#[derive(Debug)]
pub struct ServerSide<I> {
    table: TransactionTable<Slot<I>>,
    timers: Timers,
}

impl<I: Clone> ServerSide<I> {
    /// How many 64·T1 periods an unanswered non-INVITE transaction is kept.
    pub const STALE: u32 = 2;

    /// Empty, with these timers.
    pub fn new(timers: Timers) -> Self {
        ServerSide {
            table: TransactionTable::new(),
            timers,
        }
    }

    /// A request with server key `key` arrived over a `reliable` transport or not. An ACK
    /// has the key of its INVITE: look it up with [`ServerSide::invite`] instead (an ACK
    /// never starts a transaction).
    pub fn receive(&mut self, now: Instant, key: &TransactionKey, reliable: bool) -> Arrival<I> {
        let again = match self.table.get_mut(key) {
            Some(Slot::Invite(i)) => return Arrival::Invite(i.clone()),
            Some(Slot::Accepted) => return Arrival::Accepted,
            Some(Slot::NonInvite(t)) => {
                t.handle_request_retransmission(now);
                t.poll_transmit()
            }
            None => {
                if *key.method() != super::KeyMethod::Invite {
                    self.table.insert(
                        key.clone(),
                        Slot::NonInvite(NonInviteServer::new(reliable, self.timers)),
                    );
                    self.table
                        .set_deadline(key, Some(now + self.timers.t1x64() * Self::STALE));
                }
                return Arrival::New;
            }
        };
        match again {
            Some(b) => Arrival::Again(b),
            None => Arrival::Absorbed,
        }
    }

    /// The application's response to the request of `key`: the bytes to send, from its
    /// transaction (kept for retransmissions over UDP until Timer J); `Ok(None)` when no
    /// non-INVITE transaction has the key (forgotten, or never made: send it without one);
    /// an error when the transaction refuses it (a second final response).
    pub fn respond(
        &mut self,
        now: Instant,
        key: &TransactionKey,
        status: u16,
        response: Bytes,
    ) -> Result<Option<Bytes>, TransactionError> {
        let Some(Slot::NonInvite(t)) = self.table.get_mut(key) else {
            return Ok(None);
        };
        t.send_response(now, status, response)?;
        let out = t.poll_transmit();
        while t.poll_event().is_some() {}
        if t.is_terminated() {
            self.table.remove(key);
        } else if status >= 200 {
            let j = t.poll_timeout();
            self.table.set_deadline(key, j);
        }
        Ok(out)
    }

    /// The handle of the running INVITE server transaction of `key` (an ACK's, a CANCEL's
    /// INVITE key).
    pub fn invite(&self, key: &TransactionKey) -> Option<&I> {
        match self.table.get(key) {
            Some(Slot::Invite(i)) => Some(i),
            _ => None,
        }
    }

    /// Whether `key` names an INVITE server transaction, running or Accepted.
    pub fn has_invite(&self, key: &TransactionKey) -> bool {
        matches!(self.table.get(key), Some(Slot::Invite(_) | Slot::Accepted))
    }

    /// Gives a new INVITE ([`Arrival::New`]) its slot: the driver's handle to its machine.
    pub fn start_invite(&mut self, key: TransactionKey, handle: I) {
        self.table.insert(key, Slot::Invite(handle));
    }

    /// The INVITE server transaction of `key` ended: after a 2xx (`accepted`) its key is
    /// kept in the Accepted state for 64·T1, otherwise forgotten.
    pub fn end_invite(&mut self, now: Instant, key: &TransactionKey, accepted: bool) {
        if accepted {
            self.table.insert(key.clone(), Slot::Accepted);
            self.table
                .set_deadline(key, Some(now + self.timers.t1x64()));
        } else {
            self.table.remove(key);
        }
    }

    /// When [`ServerSide::handle_timeouts`] is next due.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.table.next_deadline()
    }

    /// Fires what is due at `now`: transactions past Timer J, Accepted INVITE keys past
    /// 64·T1, and unanswered transactions past [`ServerSide::STALE`] are forgotten, and the
    /// room a burst left is given back ([`TransactionTable::shrink`]). Returns how many
    /// unanswered ones were.
    pub fn handle_timeouts(&mut self, now: Instant) -> usize {
        let mut stale = 0;
        while let Some(key) = self.table.pop_expired(now) {
            let forget = match self.table.get_mut(&key) {
                Some(Slot::NonInvite(t)) => {
                    let unanswered = matches!(t.state(), NistState::Trying | NistState::Proceeding);
                    t.handle_timeout(now);
                    stale += usize::from(unanswered);
                    unanswered || t.is_terminated()
                }
                Some(Slot::Accepted) => true,
                Some(Slot::Invite(_)) | None => false,
            };
            if forget {
                self.table.remove(&key);
            }
        }
        self.table.shrink();
        stale
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::KeyMethod;
    use super::*;

    fn key(branch: &str, method: KeyMethod) -> TransactionKey {
        TransactionKey::server(branch, "ue.example:5060", method).unwrap()
    }

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_register_is_new_then_absorbed_then_answered_again_until_timer_j() {
        let mut s: ServerSide<u32> = ServerSide::new(Timers::RFC3261);
        let now = t0();
        let k = key("z9hG4bK1", KeyMethod::Register);
        assert_eq!(s.receive(now, &k, false), Arrival::New);
        assert_eq!(s.receive(now, &k, false), Arrival::Absorbed);
        let ok = Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n");
        assert_eq!(s.respond(now, &k, 200, ok.clone()), Ok(Some(ok.clone())));
        assert_eq!(s.receive(now, &k, false), Arrival::Again(ok.clone()));
        // A second final response is refused.
        assert_eq!(
            s.respond(now, &k, 500, ok.clone()),
            Err(TransactionError::FinalResponseSent)
        );
        // Timer J (64·T1 over UDP) forgets it; a copy after that is a new request.
        let j = now + Timers::RFC3261.t1x64();
        assert_eq!(s.next_deadline(), Some(j));
        assert_eq!(s.handle_timeouts(j - Duration::from_millis(1)), 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s.handle_timeouts(j), 0);
        assert!(s.is_empty());
        assert_eq!(s.receive(j, &k, false), Arrival::New);
    }

    #[test]
    fn over_tcp_the_answered_transaction_is_forgotten_at_once() {
        let mut s: ServerSide<u32> = ServerSide::new(Timers::RFC3261);
        let now = t0();
        let k = key("z9hG4bK2", KeyMethod::Message);
        assert_eq!(s.receive(now, &k, true), Arrival::New);
        let ok = Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n");
        assert_eq!(s.respond(now, &k, 200, ok.clone()), Ok(Some(ok)));
        assert!(s.is_empty());
    }

    #[test]
    fn a_provisional_response_is_sent_again_and_the_unanswered_are_forgotten() {
        let mut s: ServerSide<u32> = ServerSide::new(Timers::RFC3261);
        let now = t0();
        let k = key("z9hG4bK3", KeyMethod::Subscribe);
        assert_eq!(s.receive(now, &k, false), Arrival::New);
        let trying = Bytes::from_static(b"SIP/2.0 100 Trying\r\n\r\n");
        assert_eq!(
            s.respond(now, &k, 100, trying.clone()),
            Ok(Some(trying.clone()))
        );
        assert_eq!(s.receive(now, &k, false), Arrival::Again(trying));
        let stale = now + Timers::RFC3261.t1x64() * ServerSide::<u32>::STALE;
        assert_eq!(s.handle_timeouts(stale), 1);
        assert!(s.is_empty());
        // Unknown keys: no transaction to answer from.
        assert_eq!(s.respond(stale, &k, 200, Bytes::new()), Ok(None));
    }

    #[test]
    fn an_invite_holds_the_drivers_handle_then_accepted_then_nothing() {
        let mut s: ServerSide<u32> = ServerSide::new(Timers::RFC3261);
        let now = t0();
        let k = key("z9hG4bK4", KeyMethod::Invite);
        assert_eq!(s.receive(now, &k, false), Arrival::New);
        assert!(s.is_empty(), "an INVITE waits for its handle");
        s.start_invite(k.clone(), 7);
        assert_eq!(s.receive(now, &k, false), Arrival::Invite(7));
        assert_eq!(s.invite(&k), Some(&7));
        // A CANCEL has its own key, of its own method.
        assert_eq!(
            s.receive(now, &key("z9hG4bK4", KeyMethod::Cancel), false),
            Arrival::New
        );
        s.end_invite(now, &k, true);
        assert_eq!(s.receive(now, &k, false), Arrival::Accepted);
        assert!(s.has_invite(&k) && s.invite(&k).is_none());
        s.handle_timeouts(now + Timers::RFC3261.t1x64());
        assert!(!s.has_invite(&k));
        s.start_invite(k.clone(), 8);
        s.end_invite(now, &k, false);
        assert!(!s.has_invite(&k));
    }

    #[test]
    fn a_key_from_the_vias_parts_is_the_key_from_its_sent_by() {
        for (host, port, sent_by) in [
            ("UE.Example", Some(5060), "ue.example:5060"),
            ("[2001:DB8::1]", None, "[2001:db8::1]"),
        ] {
            assert_eq!(
                TransactionKey::server_at("z9hG4bK9", host, port, KeyMethod::Register),
                TransactionKey::server("z9hG4bK9", sent_by, KeyMethod::Register)
            );
        }
        assert!(TransactionKey::server_at("z9hG4bK", "h", None, KeyMethod::Bye).is_err());
    }

    /// Issue #16 (memory per registered UE): the room of a burst of transactions is given
    /// back once they are forgotten.
    #[test]
    fn a_burst_leaves_no_room_behind() {
        let mut s: ServerSide<u32> = ServerSide::new(Timers::RFC3261);
        let now = t0();
        let ok = Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n");
        for i in 0..10_000 {
            let k = key(&format!("z9hG4bKburst{i}"), KeyMethod::Register);
            assert_eq!(s.receive(now, &k, false), Arrival::New);
            s.respond(now, &k, 200, ok.clone()).unwrap();
        }
        let (map, heap) = s.table.capacity();
        assert!(map >= 10_000 && heap >= 10_000, "{map} {heap}");
        s.handle_timeouts(now + Timers::RFC3261.t1x64());
        assert!(s.is_empty());
        let (map, heap) = s.table.capacity();
        assert!(map < 1_000 && heap < 1_000, "room kept: {map} {heap}");
    }
}

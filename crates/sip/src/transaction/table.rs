//! Transaction keys (RFC 3261 §17.1.3, §17.2.3) and a table of transactions with a deadline
//! index.
//!
//! # Scaling
//!
//! A table is a plain single-owner structure (no locks). For several cores, shard: keep one
//! table per worker and route each message to the worker `hash(key) % workers`, computed
//! with one `BuildHasher` (e.g. a `RandomState` made at start) shared by every router, so a
//! retransmission, its ACK and the transaction's timers always land on the same shard.
//!
//! The deadline index is a binary heap with lazy deletion: changing a deadline pushes a new
//! entry (O(log n), one key clone) and leaves the old one to be discarded when it reaches the
//! top; the heap is rebuilt when stale entries outnumber live ones. That serves tens of
//! thousands of transactions per shard; a hashed timer wheel (O(1), no clones) is the next
//! step if a profile ever shows the heap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::time::Instant;

use super::{Transaction, TransactionError};

/// The RFC 3261 branch magic cookie (§8.1.1.7).
const MAGIC_COOKIE: &str = "z9hG4bK";

/// True when `branch` starts with the RFC 3261 magic cookie `z9hG4bK` (compared exactly),
/// i.e. when it can be used for RFC 3261 transaction matching.
pub fn is_rfc3261_branch(branch: &str) -> bool {
    // The cookie alone carries no transaction id (RFC 4475 §3.2.1 "badbranch").
    branch.len() > MAGIC_COOKIE.len() && branch.starts_with(MAGIC_COOKIE)
}

/// The method part of a transaction key. Method names are case-sensitive (§7.1).
///
/// `ACK` maps to [`KeyMethod::Invite`]: an ACK for a non-2xx final response matches the
/// INVITE server transaction it acknowledges (§17.2.3). `CANCEL` has its own transaction.
/// Common methods are variants so that building a key for them does not allocate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum KeyMethod {
    /// INVITE, and ACK.
    Invite,
    Cancel,
    Bye,
    Register,
    Options,
    Subscribe,
    Notify,
    Message,
    Publish,
    Info,
    Update,
    Prack,
    Refer,
    /// Any other method, by name.
    Other(Box<str>),
}

impl KeyMethod {
    /// The key method of a request method name (or of a response's CSeq method).
    pub fn from_name(name: &str) -> Self {
        match name {
            "INVITE" | "ACK" => KeyMethod::Invite,
            "CANCEL" => KeyMethod::Cancel,
            "BYE" => KeyMethod::Bye,
            "REGISTER" => KeyMethod::Register,
            "OPTIONS" => KeyMethod::Options,
            "SUBSCRIBE" => KeyMethod::Subscribe,
            "NOTIFY" => KeyMethod::Notify,
            "MESSAGE" => KeyMethod::Message,
            "PUBLISH" => KeyMethod::Publish,
            "INFO" => KeyMethod::Info,
            "UPDATE" => KeyMethod::Update,
            "PRACK" => KeyMethod::Prack,
            "REFER" => KeyMethod::Refer,
            other => KeyMethod::Other(other.into()),
        }
    }

    /// The method name (`"INVITE"` for [`KeyMethod::Invite`]).
    pub fn as_str(&self) -> &str {
        match self {
            KeyMethod::Invite => "INVITE",
            KeyMethod::Cancel => "CANCEL",
            KeyMethod::Bye => "BYE",
            KeyMethod::Register => "REGISTER",
            KeyMethod::Options => "OPTIONS",
            KeyMethod::Subscribe => "SUBSCRIBE",
            KeyMethod::Notify => "NOTIFY",
            KeyMethod::Message => "MESSAGE",
            KeyMethod::Publish => "PUBLISH",
            KeyMethod::Info => "INFO",
            KeyMethod::Update => "UPDATE",
            KeyMethod::Prack => "PRACK",
            KeyMethod::Refer => "REFER",
            KeyMethod::Other(name) => name,
        }
    }
}

/// What identifies a transaction.
///
/// - Client side (§17.1.3): the branch of the top Via of the request the client sent, and
///   the CSeq method; a response matches when its top Via branch and CSeq method are equal.
/// - Server side (§17.2.3): the branch and the sent-by of the request's top Via, and the
///   request method (ACK counting as INVITE).
///
/// Only RFC 3261 branches (magic cookie `z9hG4bK`) are accepted. Branches are compared
/// exactly; sent-by (`host[:port]`, as written in the Via) ignoring ASCII case. A missing
/// port is not equated with 5060: retransmissions and the ACK copy the Via verbatim.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionKey {
    branch: Box<str>,
    method: KeyMethod,
    /// `None` for a client key.
    sent_by: Option<Box<str>>,
}

impl TransactionKey {
    /// A client transaction key (§17.1.3): `branch` of the top Via and the CSeq method.
    pub fn client(branch: &str, method: KeyMethod) -> Result<Self, TransactionError> {
        if !is_rfc3261_branch(branch) {
            return Err(TransactionError::NotRfc3261Branch);
        }
        Ok(TransactionKey {
            branch: branch.into(),
            method,
            sent_by: None,
        })
    }

    /// A server transaction key (§17.2.3): `branch` and `sent_by` (`host[:port]`) of the top
    /// Via, and the request method. A branch without the magic cookie is refused: RFC 2543
    /// matching is not supported.
    pub fn server(
        branch: &str,
        sent_by: &str,
        method: KeyMethod,
    ) -> Result<Self, TransactionError> {
        Self::server_at(branch, sent_by, None, method)
    }

    /// As [`TransactionKey::server`], with the sent-by in its parts (`host`, and `port`
    /// when the Via has one), written once: no `host:port` string is made first.
    pub fn server_at(
        branch: &str,
        host: &str,
        port: Option<u16>,
        method: KeyMethod,
    ) -> Result<Self, TransactionError> {
        use std::fmt::Write as _;
        if !is_rfc3261_branch(branch) {
            return Err(TransactionError::NotRfc3261Branch);
        }
        let mut sent_by = String::with_capacity(host.len() + 6);
        sent_by.push_str(host);
        sent_by.make_ascii_lowercase();
        if let Some(p) = port {
            let _ = write!(sent_by, ":{p}");
        }
        Ok(TransactionKey {
            branch: branch.into(),
            method,
            sent_by: Some(sent_by.into_boxed_str()),
        })
    }

    /// The Via branch.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The method (INVITE for an ACK).
    pub fn method(&self) -> &KeyMethod {
        &self.method
    }

    /// The sent-by of a server key (lowercased), `None` for a client key.
    pub fn sent_by(&self) -> Option<&str> {
        self.sent_by.as_deref()
    }

    /// True for a server key.
    pub fn is_server(&self) -> bool {
        self.sent_by.is_some()
    }
}

#[derive(Debug)]
struct Entry<T> {
    tx: T,
    /// The deadline the heap currently holds a live entry for.
    deadline: Option<Instant>,
}

/// Transactions by key, with an index of their deadlines.
///
/// The table does not watch its transactions: after an input changes a transaction's timers,
/// tell it the new deadline with [`refresh_deadline`](Self::refresh_deadline) (or use
/// [`update`](Self::update), which does so), or [`set_deadline`](Self::set_deadline) for a
/// `T` that is not a [`Transaction`]. A driver sleeps until [`next_deadline`](Self::next_deadline),
/// then calls [`handle_timeouts`](Self::handle_timeouts) (or loops on
/// [`pop_expired`](Self::pop_expired)) and drains the transactions it names, removing the
/// terminated ones. See the module documentation on sharding.
#[derive(Debug)]
pub struct TransactionTable<T> {
    entries: HashMap<TransactionKey, Entry<T>>,
    deadlines: BinaryHeap<Reverse<(Instant, TransactionKey)>>,
}

impl<T> Default for TransactionTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TransactionTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        TransactionTable {
            entries: HashMap::new(),
            deadlines: BinaryHeap::new(),
        }
    }

    /// An empty table with room for `capacity` transactions.
    pub fn with_capacity(capacity: usize) -> Self {
        TransactionTable {
            entries: HashMap::with_capacity(capacity),
            deadlines: BinaryHeap::with_capacity(capacity),
        }
    }

    /// Number of transactions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no transaction.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Inserts a transaction with no deadline, returning the one it replaces.
    pub fn insert(&mut self, key: TransactionKey, tx: T) -> Option<T> {
        self.entries
            .insert(key, Entry { tx, deadline: None })
            .map(|e| e.tx)
    }

    /// The transaction with this key.
    pub fn get(&self, key: &TransactionKey) -> Option<&T> {
        self.entries.get(key).map(|e| &e.tx)
    }

    /// The transaction with this key, to feed it an input. Refresh its deadline afterwards.
    pub fn get_mut(&mut self, key: &TransactionKey) -> Option<&mut T> {
        self.entries.get_mut(key).map(|e| &mut e.tx)
    }

    /// True when a transaction has this key.
    pub fn contains_key(&self, key: &TransactionKey) -> bool {
        self.entries.contains_key(key)
    }

    /// Removes and returns a transaction (its heap entry becomes stale).
    pub fn remove(&mut self, key: &TransactionKey) -> Option<T> {
        self.entries.remove(key).map(|e| e.tx)
    }

    /// All transactions, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&TransactionKey, &T)> {
        self.entries.iter().map(|(k, e)| (k, &e.tx))
    }

    /// Sets the deadline of a transaction (`None`: no timer pending). Returns false when no
    /// transaction has this key.
    pub fn set_deadline(&mut self, key: &TransactionKey, deadline: Option<Instant>) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        if entry.deadline != deadline {
            entry.deadline = deadline;
            if let Some(d) = deadline {
                self.deadlines.push(Reverse((d, key.clone())));
                self.compact_if_needed();
            }
        }
        true
    }

    /// The earliest deadline of any transaction.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.discard_stale();
        self.deadlines.peek().map(|Reverse((d, _))| *d)
    }

    /// The key of a transaction whose deadline is at or before `now`, earliest first; its
    /// deadline is cleared (call `handle_timeout(now)` on it, then refresh the deadline).
    pub fn pop_expired(&mut self, now: Instant) -> Option<TransactionKey> {
        self.discard_stale();
        let due = self
            .deadlines
            .peek()
            .is_some_and(|Reverse((d, _))| *d <= now);
        if !due {
            return None;
        }
        let Reverse((_, key)) = self.deadlines.pop()?;
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.deadline = None;
        }
        Some(key)
    }

    /// Pops heap entries that no longer match their transaction's deadline (removed, or
    /// rescheduled).
    fn discard_stale(&mut self) {
        while let Some(Reverse((d, key))) = self.deadlines.peek() {
            let live = self
                .entries
                .get(key)
                .is_some_and(|e| e.deadline == Some(*d));
            if live {
                break;
            }
            self.deadlines.pop();
        }
    }

    /// Gives back memory after a burst: a map or heap left with under a quarter of the room
    /// it grew to keeps twice what it holds (neither shrinks by itself, so a table would
    /// otherwise hold the room of its busiest second for good). Cheap when there is nothing
    /// to give back; a driver calls it now and then (after its timeouts, say).
    pub fn shrink(&mut self) {
        const MIN_ROOM: usize = 64;
        if self.entries.capacity() > MIN_ROOM && self.entries.len() * 4 < self.entries.capacity() {
            self.entries.shrink_to(self.entries.len() * 2);
        }
        if self.deadlines.capacity() > MIN_ROOM
            && self.deadlines.len() * 4 < self.deadlines.capacity()
        {
            self.deadlines.shrink_to(self.deadlines.len() * 2);
        }
    }

    /// The room the table holds (map entries, heap entries): for tests of [`Self::shrink`].
    pub fn capacity(&self) -> (usize, usize) {
        (self.entries.capacity(), self.deadlines.capacity())
    }

    /// Rebuilds the heap from the live deadlines when stale entries dominate.
    fn compact_if_needed(&mut self) {
        let live = self.entries.len();
        if self.deadlines.len() > 64 && self.deadlines.len() > 4 * live {
            let heap: BinaryHeap<_> = self
                .entries
                .iter()
                .filter_map(|(k, e)| e.deadline.map(|d| Reverse((d, k.clone()))))
                .collect();
            tracing::trace!(
                before = self.deadlines.len(),
                after = heap.len(),
                "transaction deadline heap compacted"
            );
            self.deadlines = heap;
        }
    }
}

impl<T: Transaction> TransactionTable<T> {
    /// Re-reads the transaction's [`poll_timeout`](Transaction::poll_timeout) into the index.
    /// Returns false when no transaction has this key.
    pub fn refresh_deadline(&mut self, key: &TransactionKey) -> bool {
        let deadline = match self.entries.get(key) {
            Some(e) => e.tx.poll_timeout(),
            None => return false,
        };
        self.set_deadline(key, deadline)
    }

    /// Inserts a transaction and indexes its deadline, returning the one it replaces.
    pub fn insert_scheduled(&mut self, key: TransactionKey, tx: T) -> Option<T> {
        let deadline = tx.poll_timeout();
        let old = self.insert(key.clone(), tx);
        self.set_deadline(&key, deadline);
        old
    }

    /// Runs `f` on the transaction with this key, then refreshes its deadline.
    pub fn update<R>(&mut self, key: &TransactionKey, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let r = f(&mut self.entries.get_mut(key)?.tx);
        self.refresh_deadline(key);
        Some(r)
    }

    /// Calls `handle_timeout(now)` on every transaction whose deadline has passed, refreshes
    /// their deadlines, and appends their keys to `fired` so the caller can drain their
    /// outputs and remove the terminated ones.
    pub fn handle_timeouts(&mut self, now: Instant, fired: &mut Vec<TransactionKey>) {
        while let Some(key) = self.pop_expired(now) {
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.tx.handle_timeout(now);
            }
            self.refresh_deadline(&key);
            fired.push(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::testutil::ms;
    use super::super::{Event, NonInviteClient, NonInviteServer, Timers};
    use super::*;

    const BR: &str = "z9hG4bK776asdhds";

    fn server(
        branch: &str,
        sent_by: &str,
        method: &str,
    ) -> Result<TransactionKey, TransactionError> {
        TransactionKey::server(branch, sent_by, KeyMethod::from_name(method))
    }

    #[test]
    fn invite_and_ack_share_the_server_key_cancel_does_not() {
        let invite = server(BR, "pc33.atlanta.com:5060", "INVITE").unwrap();
        let ack = server(BR, "pc33.atlanta.com:5060", "ACK").unwrap();
        let cancel = server(BR, "pc33.atlanta.com:5060", "CANCEL").unwrap();
        assert_eq!(invite, ack);
        assert_ne!(invite, cancel);
        assert_eq!(ack.method(), &KeyMethod::Invite);
        assert_eq!(cancel.method().as_str(), "CANCEL");

        let mut table = TransactionTable::new();
        table.insert(invite, 1);
        table.insert(cancel.clone(), 2);
        assert_eq!(table.get(&ack), Some(&1));
        assert_eq!(table.get(&cancel), Some(&2));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn server_key_includes_sent_by_and_method() {
        let a = server(BR, "pc33.atlanta.com:5060", "INVITE").unwrap();
        assert_ne!(a, server(BR, "pc34.atlanta.com:5060", "INVITE").unwrap());
        assert_ne!(a, server(BR, "pc33.atlanta.com:5070", "INVITE").unwrap());
        assert_ne!(
            a,
            server(BR, "pc33.atlanta.com", "INVITE").unwrap(),
            "no default port"
        );
        assert_eq!(
            a,
            server(BR, "PC33.Atlanta.COM:5060", "INVITE").unwrap(),
            "host case-insensitive"
        );
        assert_ne!(
            a,
            server("z9hG4bK776asdhdt", "pc33.atlanta.com:5060", "INVITE").unwrap()
        );
        assert_ne!(
            a,
            server("z9hG4bK776ASDHDS", "pc33.atlanta.com:5060", "INVITE").unwrap(),
            "branch exact"
        );
        assert_ne!(
            a,
            server(BR, "pc33.atlanta.com:5060", "invite").unwrap(),
            "methods are case-sensitive"
        );
        assert_eq!(a.sent_by(), Some("pc33.atlanta.com:5060"));
        assert!(a.is_server());
        let v6 = server(BR, "[2001:DB8::1]:5060", "REGISTER").unwrap();
        assert_eq!(v6.sent_by(), Some("[2001:db8::1]:5060"));
    }

    #[test]
    fn client_key_is_branch_and_cseq_method() {
        let c = TransactionKey::client(BR, KeyMethod::from_name("REGISTER")).unwrap();
        assert_eq!(c, TransactionKey::client(BR, KeyMethod::Register).unwrap());
        assert_ne!(c, TransactionKey::client(BR, KeyMethod::Options).unwrap());
        assert_ne!(
            c,
            server(BR, "host:5060", "REGISTER").unwrap(),
            "client and server keys differ"
        );
        assert!(!c.is_server());
        assert_eq!(c.sent_by(), None);
        assert_eq!(c.branch(), BR);
        // A response to INVITE and one to the CANCEL of that INVITE share the branch.
        let inv = TransactionKey::client(BR, KeyMethod::Invite).unwrap();
        assert_ne!(inv, TransactionKey::client(BR, KeyMethod::Cancel).unwrap());
    }

    #[test]
    fn non_rfc3261_branch_rejected() {
        assert!(is_rfc3261_branch("z9hG4bK-abc"));
        assert!(!is_rfc3261_branch("abc123"));
        assert!(!is_rfc3261_branch("z9hg4bk-abc"), "cookie is exact");
        assert!(!is_rfc3261_branch(""));
        assert_eq!(
            server("1234", "h:5060", "INVITE"),
            Err(TransactionError::NotRfc3261Branch)
        );
        assert_eq!(
            TransactionKey::client("", KeyMethod::Bye),
            Err(TransactionError::NotRfc3261Branch)
        );
    }

    #[test]
    fn method_names_round_trip() {
        for m in [
            "INVITE",
            "CANCEL",
            "BYE",
            "REGISTER",
            "OPTIONS",
            "SUBSCRIBE",
            "NOTIFY",
            "MESSAGE",
            "PUBLISH",
            "INFO",
            "UPDATE",
            "PRACK",
            "REFER",
            "FOO",
        ] {
            assert_eq!(KeyMethod::from_name(m).as_str(), m);
        }
        assert_eq!(KeyMethod::from_name("ACK").as_str(), "INVITE");
        assert_eq!(KeyMethod::from_name("FOO"), KeyMethod::Other("FOO".into()));
    }

    #[test]
    fn deadlines_with_lazy_deletion() {
        let t0 = Instant::now();
        let key =
            |n: u32| TransactionKey::client(&format!("z9hG4bK{n}"), KeyMethod::Options).unwrap();
        let mut table = TransactionTable::new();
        for n in 0..5 {
            table.insert(key(n), n);
            assert!(table.set_deadline(&key(n), Some(t0 + ms(100 * u64::from(n) + 100))));
        }
        assert!(!table.set_deadline(&key(99), Some(t0)));
        assert_eq!(table.next_deadline(), Some(t0 + ms(100)));
        table.remove(&key(0));
        assert_eq!(
            table.next_deadline(),
            Some(t0 + ms(200)),
            "removed entry is stale"
        );
        table.set_deadline(&key(1), Some(t0 + ms(1_000)));
        table.set_deadline(&key(2), None);
        assert_eq!(table.next_deadline(), Some(t0 + ms(400)));
        assert_eq!(table.pop_expired(t0 + ms(399)), None);
        assert_eq!(table.pop_expired(t0 + ms(600)), Some(key(3)));
        assert_eq!(table.pop_expired(t0 + ms(600)), Some(key(4)));
        assert_eq!(table.pop_expired(t0 + ms(600)), None);
        assert_eq!(table.next_deadline(), Some(t0 + ms(1_000)));
        // Same deadline set again, moved away and back: fires once.
        table.set_deadline(&key(1), Some(t0 + ms(2_000)));
        table.set_deadline(&key(1), Some(t0 + ms(1_000)));
        assert_eq!(table.pop_expired(t0 + ms(5_000)), Some(key(1)));
        assert_eq!(table.pop_expired(t0 + ms(5_000)), None);
        assert_eq!(table.next_deadline(), None);
        // Reinsertion under a removed key does not revive its old deadline.
        table.set_deadline(&key(3), Some(t0));
        table.remove(&key(3));
        table.insert(key(3), 33);
        assert_eq!(table.pop_expired(t0 + ms(5_000)), None);
    }

    #[test]
    fn heap_is_compacted() {
        let t0 = Instant::now();
        let k = TransactionKey::client("z9hG4bKx", KeyMethod::Options).unwrap();
        let mut table = TransactionTable::new();
        table.insert(k.clone(), ());
        for i in 0..10_000u64 {
            table.set_deadline(&k, Some(t0 + ms(i)));
        }
        assert!(table.deadlines.len() <= 65);
        assert_eq!(table.next_deadline(), Some(t0 + ms(9_999)));
    }

    #[test]
    fn drives_real_transactions() {
        let t0 = Instant::now();
        let timers = Timers::RFC3261;
        let mut clients = TransactionTable::new();
        let k1 = TransactionKey::client("z9hG4bK1", KeyMethod::Options).unwrap();
        let k2 = TransactionKey::client("z9hG4bK2", KeyMethod::Register).unwrap();
        clients.insert_scheduled(
            k1.clone(),
            NonInviteClient::new(Bytes::from_static(b"O"), false, t0, timers),
        );
        clients.insert_scheduled(
            k2.clone(),
            NonInviteClient::new(Bytes::from_static(b"R"), true, t0, timers),
        );
        assert_eq!(clients.next_deadline(), Some(t0 + ms(500)));

        let mut fired = Vec::new();
        clients.handle_timeouts(t0 + ms(500), &mut fired);
        assert_eq!(fired, std::slice::from_ref(&k1));
        assert_eq!(clients.next_deadline(), Some(t0 + ms(1_500)));

        // A 200 for k1: Completed, Timer K.
        assert_eq!(
            clients.update(&k1, |tx| tx.handle_response(t0 + ms(600), 200)),
            Some(true)
        );
        assert_eq!(clients.next_deadline(), Some(t0 + ms(5_600)));

        fired.clear();
        clients.handle_timeouts(t0 + ms(40_000), &mut fired);
        fired.sort();
        assert_eq!(fired, [k1.clone(), k2.clone()]);
        let mut ends = Vec::new();
        for k in &fired {
            let tx = clients.get_mut(k).unwrap();
            ends.push(std::iter::from_fn(|| tx.poll_event()).collect::<Vec<_>>());
            assert!(tx.is_terminated());
            clients.remove(k);
        }
        assert_eq!(
            ends,
            [
                vec![Event::Terminated],
                vec![Event::Timeout, Event::Terminated]
            ]
        );
        assert!(clients.is_empty());
        assert_eq!(clients.next_deadline(), None);

        // Server side: a NIST answered over UDP lingers for Timer J.
        let mut servers = TransactionTable::new();
        let ks = server("z9hG4bKs", "10.0.0.1:5060", "MESSAGE").unwrap();
        servers.insert_scheduled(ks.clone(), NonInviteServer::new(false, timers));
        assert_eq!(servers.next_deadline(), None);
        let r = servers.update(&ks, |tx| {
            tx.send_response(t0, 200, Bytes::from_static(b"200"))
        });
        assert_eq!(r, Some(Ok(())));
        assert_eq!(servers.next_deadline(), Some(t0 + ms(32_000)));
        assert_eq!(
            servers.update(
                &server("z9hG4bKs", "10.0.0.2:5060", "MESSAGE").unwrap(),
                |_| ()
            ),
            None
        );
    }
}

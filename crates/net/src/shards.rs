//! [`Shards`]: a map split over a fixed number of mutex-guarded `HashMap`s by the key's hash,
//! the shape every table of per-transaction or per-UE state in the daemons takes (the
//! endpoint's transactions, the P-CSCF's registrations and subscriptions). A caller holds one
//! shard's lock for the length of a closure and never across an await, so requests for
//! different keys rarely wait on each other and nothing can deadlock.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

/// How many shards: a few per core of the machines we aim at, small enough to walk.
pub const SHARDS: usize = 16;

/// Below this many entries of room a shard is not shrunk ([`Shards::retain`]).
const MIN_ROOM: usize = 64;

/// The shard of [`SHARDS`] that `key` belongs to: every sharded table of the daemons picks
/// its shard this way.
pub fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

/// A map of `K` to `V` in [`SHARDS`] locked shards.
pub struct Shards<K, V>([Mutex<HashMap<K, V>>; SHARDS]);

impl<K: Hash + Eq, V> Default for Shards<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq, V> Shards<K, V> {
    /// Empty.
    pub fn new() -> Self {
        Self(std::array::from_fn(|_| Mutex::new(HashMap::new())))
    }

    /// Runs `f` on the shard that holds `key` (any borrowed form of `K` that hashes the
    /// same, e.g. `&str` for `String`); `None` if that shard's lock is poisoned.
    pub fn with<Q: Hash + ?Sized, R>(
        &self,
        key: &Q,
        f: impl FnOnce(&mut HashMap<K, V>) -> R,
    ) -> Option<R> {
        self.0[shard_of(key)].lock().ok().map(|mut m| f(&mut m))
    }

    /// Keeps the entries `keep` says to keep, shard by shard. A shard left with under a
    /// quarter of the room it grew to gives the rest back (it keeps twice what it holds): a
    /// map never shrinks by itself, and the transaction tables would otherwise hold the room
    /// of their busiest second for good (issue #16, memory per registered UE).
    pub fn retain(&self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for s in &self.0 {
            if let Ok(mut m) = s.lock() {
                m.retain(|k, v| keep(k, v));
                if m.capacity() > MIN_ROOM && m.len() * 4 < m.capacity() {
                    let want = m.len() * 2;
                    m.shrink_to(want);
                }
            }
        }
    }

    /// What `f` picks from each entry, shard by shard (a snapshot: no lock is held after).
    pub fn collect<T>(&self, mut f: impl FnMut(&K, &V) -> Option<T>) -> Vec<T> {
        let mut out = Vec::new();
        for s in &self.0 {
            if let Ok(m) = s.lock() {
                out.extend(m.iter().filter_map(|(k, v)| f(k, v)));
            }
        }
        out
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.0
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_keys_find_their_shard() {
        let s: Shards<String, u32> = Shards::new();
        for i in 0..100u32 {
            s.with(&format!("k{i}"), |m| m.insert(format!("k{i}"), i));
        }
        assert_eq!(s.len(), 100);
        for i in 0..100u32 {
            let key = format!("k{i}");
            let got = s.with(key.as_str(), |m| m.get(key.as_str()).copied());
            assert_eq!(got, Some(Some(i)));
        }
        let mut odd = s.collect(|_, v| (v % 2 == 1).then_some(*v));
        odd.sort_unstable();
        assert_eq!(odd.len(), 50);
        assert_eq!(odd[0], 1);
        s.retain(|_, v| *v < 10);
        assert_eq!(s.len(), 10);
        assert!(!s.is_empty());
    }

    #[test]
    fn a_shard_emptied_by_retain_gives_its_room_back() {
        let s: Shards<u32, [u8; 64]> = Shards::new();
        for i in 0..20_000u32 {
            s.with(&i, |m| m.insert(i, [0; 64]));
        }
        let room = |s: &Shards<u32, [u8; 64]>| {
            s.0.iter()
                .map(|m| m.lock().map(|m| m.capacity()).unwrap_or(0))
                .sum::<usize>()
        };
        assert!(room(&s) >= 20_000);
        s.retain(|k, _| *k < 160);
        assert_eq!(s.len(), 160);
        // Each shard keeps about twice what it holds, or the floor.
        assert!(room(&s) <= SHARDS * 2 * MIN_ROOM, "{}", room(&s));
        for i in 0..160u32 {
            assert_eq!(s.with(&i, |m| m.contains_key(&i)), Some(true));
        }
    }
}

//! Sequence numbers (TS 33.102 §6.3.2 and Annex C).
//!
//! SQN is 48 bits, split as SEQ || IND where IND is the low [`SqnScheme::ind_bits`] bits
//! (5 by default, as Annex C.3.2 suggests) and SEQ the rest.
//!
//! - HSS side ([`SqnScheme`]): each fresh vector uses SEQ+1 with IND kept
//!   ([`SqnScheme::next_fresh`], i.e. SQN + 2^IND_bits, what open5gs does after every MAR); after
//!   a resynchronisation the HSS adopts SQN_MS from AUTS and continues from
//!   [`SqnScheme::after_resync`] = SQN_MS + 2^IND_bits + 1 (SEQ+1, IND+1), masked to 48 bits.
//! - UE side ([`UsimSqnState`]): the Annex C.2.2 array of the highest SEQ accepted per IND
//!   value; an SQN is fresh when its SEQ is greater than the entry for its IND, and optionally
//!   not more than Δ ahead of the highest SEQ accepted (C.2.1) and not more than L behind it
//!   (C.2.3). With `ind_bits = 0` this reduces to "SQN must be greater than the highest
//!   accepted".

use crate::AkaError;

/// Mask of the 48 SQN bits.
pub const SQN_MASK: u64 = 0xFFFF_FFFF_FFFF;

/// A 48-bit sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Sqn(u64);

impl Sqn {
    /// The largest SQN, 2^48 - 1.
    pub const MAX: Sqn = Sqn(SQN_MASK);

    /// From an integer; fails above 2^48 - 1.
    pub fn new(value: u64) -> Result<Self, AkaError> {
        if value > SQN_MASK {
            return Err(AkaError::SqnOutOfRange);
        }
        Ok(Self(value))
    }

    /// From 6 big-endian bytes.
    pub fn from_bytes(bytes: [u8; 6]) -> Self {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&bytes);
        Self(u64::from_be_bytes(b))
    }

    /// From a slice of exactly 6 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, AkaError> {
        let arr: [u8; 6] = bytes.try_into().map_err(|_| AkaError::InvalidLength {
            what: "SQN",
            expected: 6,
            got: bytes.len(),
        })?;
        Ok(Self::from_bytes(arr))
    }

    /// From 12 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, AkaError> {
        let mut b = [0u8; 6];
        crate::secret::decode_hex_into(s, &mut b, "SQN")?;
        Ok(Self::from_bytes(b))
    }

    /// The 6 big-endian bytes.
    pub fn to_bytes(self) -> [u8; 6] {
        let b = self.0.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// The value as an integer (< 2^48).
    pub fn value(self) -> u64 {
        self.0
    }
}

impl core::fmt::Display for Sqn {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

/// How SQN splits into SEQ || IND, and the HSS's SQN arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqnScheme {
    ind_bits: u8,
}

impl Default for SqnScheme {
    /// IND of 5 bits (TS 33.102 C.3.2).
    fn default() -> Self {
        Self { ind_bits: 5 }
    }
}

impl SqnScheme {
    /// The largest IND length supported (the UE array has 2^IND_bits entries).
    pub const MAX_IND_BITS: u8 = 10;

    /// A scheme with `ind_bits` bits of IND (0..=10).
    pub fn new(ind_bits: u8) -> Result<Self, AkaError> {
        if ind_bits > Self::MAX_IND_BITS {
            return Err(AkaError::InvalidIndLength(ind_bits));
        }
        Ok(Self { ind_bits })
    }

    /// Length of IND in bits.
    pub fn ind_bits(self) -> u8 {
        self.ind_bits
    }

    /// Number of IND values, 2^IND_bits.
    pub fn ind_count(self) -> usize {
        1usize << self.ind_bits
    }

    fn ind_mask(self) -> u64 {
        (1u64 << self.ind_bits) - 1
    }

    /// SEQ, the high part of SQN.
    pub fn seq(self, sqn: Sqn) -> u64 {
        sqn.0 >> self.ind_bits
    }

    /// IND, the low part of SQN.
    pub fn ind(self, sqn: Sqn) -> u32 {
        // The mask keeps at most 10 bits, so the value fits.
        (sqn.0 & self.ind_mask()) as u32
    }

    /// SQN from SEQ and IND; fails if either does not fit.
    pub fn compose(self, seq: u64, ind: u32) -> Result<Sqn, AkaError> {
        if u64::from(ind) > self.ind_mask() || seq > (SQN_MASK >> self.ind_bits) {
            return Err(AkaError::SqnOutOfRange);
        }
        Ok(Sqn((seq << self.ind_bits) | u64::from(ind)))
    }

    /// The SQN for the next fresh vector after `sqn`: SEQ+1, IND unchanged (wraps at 48 bits).
    pub fn next_fresh(self, sqn: Sqn) -> Sqn {
        Sqn(sqn.0.wrapping_add(1u64 << self.ind_bits) & SQN_MASK)
    }

    /// The HSS's SQN after adopting SQN_MS from an accepted AUTS: SQN_MS + 2^IND_bits + 1
    /// (SEQ+1, IND+1), masked to 48 bits, as open5gs does ("33.102 C.3.4"). When IND is all
    /// ones, the +1 carries into SEQ (SEQ+2, IND 0), which is fresh all the same.
    pub fn after_resync(self, sqn_ms: Sqn) -> Sqn {
        Sqn(sqn_ms.0.wrapping_add(1u64 << self.ind_bits).wrapping_add(1) & SQN_MASK)
    }
}

/// The USIM's record of accepted sequence numbers (TS 33.102 Annex C.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsimSqnState {
    scheme: SqnScheme,
    /// Highest SEQ accepted for each IND value.
    seq_ms: Vec<u64>,
    /// The accepted SQN with the highest SEQ: SQN_MS, sent in AUTS.
    highest: Sqn,
    delta: Option<u64>,
    age_limit: Option<u64>,
}

impl UsimSqnState {
    /// A fresh USIM: nothing accepted yet (every entry 0, so SEQ must be at least 1).
    pub fn new(scheme: SqnScheme) -> Self {
        Self {
            scheme,
            seq_ms: vec![0; scheme.ind_count()],
            highest: Sqn(0),
            delta: None,
            age_limit: None,
        }
    }

    /// A USIM that has already accepted `sqn_ms`: every IND entry is set to its SEQ, so only
    /// SQNs with a greater SEQ are fresh.
    pub fn with_sqn_ms(scheme: SqnScheme, sqn_ms: Sqn) -> Self {
        Self {
            scheme,
            seq_ms: vec![scheme.seq(sqn_ms); scheme.ind_count()],
            highest: sqn_ms,
            delta: None,
            age_limit: None,
        }
    }

    /// Also reject an SQN whose SEQ is more than `delta` above the highest SEQ accepted (C.2.1).
    pub fn with_delta(mut self, delta: u64) -> Self {
        self.delta = Some(delta);
        self
    }

    /// Also reject an SQN whose SEQ is more than `limit` below the highest SEQ accepted
    /// (the age limit L of C.2.3).
    pub fn with_age_limit(mut self, limit: u64) -> Self {
        self.age_limit = Some(limit);
        self
    }

    /// The scheme in use.
    pub fn scheme(&self) -> SqnScheme {
        self.scheme
    }

    /// SQN_MS: the accepted SQN with the highest SEQ (what AUTS carries).
    pub fn sqn_ms(&self) -> Sqn {
        self.highest
    }

    /// Checks freshness; `Err(SyncFailure)` when the UE must answer with AUTS.
    pub fn check(&self, sqn: Sqn) -> Result<(), AkaError> {
        let seq = self.scheme.seq(sqn);
        let ind = self.scheme.ind(sqn) as usize;
        let highest_seq = self.scheme.seq(self.highest);
        let entry = self.seq_ms.get(ind).copied().unwrap_or(u64::MAX);
        if seq <= entry {
            return Err(AkaError::SyncFailure);
        }
        if let Some(delta) = self.delta
            && seq.saturating_sub(highest_seq) > delta
        {
            return Err(AkaError::SyncFailure);
        }
        if let Some(limit) = self.age_limit
            && highest_seq.saturating_sub(seq) > limit
        {
            return Err(AkaError::SyncFailure);
        }
        Ok(())
    }

    /// Records `sqn` as accepted (call after [`Self::check`] passed and the MAC was good).
    pub fn accept(&mut self, sqn: Sqn) {
        let seq = self.scheme.seq(sqn);
        let ind = self.scheme.ind(sqn) as usize;
        if let Some(entry) = self.seq_ms.get_mut(ind) {
            *entry = (*entry).max(seq);
        }
        if seq > self.scheme.seq(self.highest) {
            self.highest = sqn;
        }
    }

    /// [`Self::check`] then [`Self::accept`].
    pub fn check_and_accept(&mut self, sqn: Sqn) -> Result<(), AkaError> {
        self.check(sqn)?;
        self.accept(sqn);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_range() {
        let s = Sqn::from_hex("ff9bb4d0b607").unwrap();
        assert_eq!(s.value(), 0xff9b_b4d0_b607);
        assert_eq!(s.to_bytes(), [0xff, 0x9b, 0xb4, 0xd0, 0xb6, 0x07]);
        assert_eq!(s.to_string(), "ff9bb4d0b607");
        assert_eq!(Sqn::new(1 << 48), Err(AkaError::SqnOutOfRange));
        assert_eq!(Sqn::new(SQN_MASK), Ok(Sqn::MAX));
        assert!(Sqn::from_slice(&[0; 5]).is_err());
        assert!(Sqn::from_hex("ff9bb4d0b6").is_err());
    }

    #[test]
    fn seq_ind_split_default_five_bits() {
        let sch = SqnScheme::default();
        assert_eq!(sch.ind_bits(), 5);
        let s = Sqn::new(0x40 + 3).unwrap(); // SEQ 2, IND 3
        assert_eq!(sch.seq(s), 2);
        assert_eq!(sch.ind(s), 3);
        assert_eq!(sch.compose(2, 3), Ok(s));
        assert!(sch.compose(0, 32).is_err());
        assert!(sch.compose(1 << 43, 0).is_err());
        assert!(SqnScheme::new(11).is_err());
    }

    #[test]
    fn next_fresh_adds_one_to_seq() {
        let sch = SqnScheme::default();
        let s = Sqn::new(0x20).unwrap();
        assert_eq!(sch.next_fresh(s).value(), 0x40);
        // open5gs: SQN + 32 after every vector.
        assert_eq!(sch.next_fresh(Sqn::new(0x41).unwrap()).value(), 0x61);
        assert_eq!(sch.next_fresh(Sqn::MAX).value(), 31);
        let sch0 = SqnScheme::new(0).unwrap();
        assert_eq!(sch0.next_fresh(s).value(), 0x21);
    }

    #[test]
    fn after_resync_is_sqn_ms_plus_33() {
        let sch = SqnScheme::default();
        // Facts file example: SQN_MS = 0x40 -> next = 0x40 + 32 + 1 = 0x61.
        let next = sch.after_resync(Sqn::new(0x40).unwrap());
        assert_eq!(next.value(), 0x61);
        assert_eq!(sch.seq(next), 3);
        assert_eq!(sch.ind(next), 1);
        assert_eq!(sch.after_resync(Sqn::MAX).value(), 32);
    }

    #[test]
    fn usim_rejects_replay_and_old_per_ind() {
        let sch = SqnScheme::default();
        let mut st = UsimSqnState::new(sch);
        assert_eq!(st.check(Sqn::new(0).unwrap()), Err(AkaError::SyncFailure));
        let a = sch.compose(5, 1).unwrap();
        st.check_and_accept(a).unwrap();
        assert_eq!(st.sqn_ms(), a);
        // Replay of the same SQN fails.
        assert_eq!(st.check(a), Err(AkaError::SyncFailure));
        // Same IND, lower SEQ fails.
        assert_eq!(
            st.check(sch.compose(4, 1).unwrap()),
            Err(AkaError::SyncFailure)
        );
        // Another IND with a lower SEQ is still fresh (out-of-order use of vectors, C.2.2).
        let b = sch.compose(3, 2).unwrap();
        st.check_and_accept(b).unwrap();
        assert_eq!(st.sqn_ms(), a, "SQN_MS stays the highest SEQ");
        let c = sch.compose(6, 1).unwrap();
        st.check_and_accept(c).unwrap();
        assert_eq!(st.sqn_ms(), c);
    }

    #[test]
    fn usim_simple_mode_greater_than_highest() {
        let sch = SqnScheme::new(0).unwrap();
        let mut st = UsimSqnState::with_sqn_ms(sch, Sqn::new(100).unwrap());
        assert_eq!(st.check(Sqn::new(100).unwrap()), Err(AkaError::SyncFailure));
        assert_eq!(st.check(Sqn::new(99).unwrap()), Err(AkaError::SyncFailure));
        st.check_and_accept(Sqn::new(101).unwrap()).unwrap();
        assert_eq!(st.sqn_ms().value(), 101);
    }

    #[test]
    fn usim_delta_and_age_limit() {
        let sch = SqnScheme::default();
        let st = UsimSqnState::with_sqn_ms(sch, sch.compose(100, 0).unwrap()).with_delta(10);
        assert!(st.check(sch.compose(110, 4).unwrap()).is_ok());
        assert_eq!(
            st.check(sch.compose(111, 4).unwrap()),
            Err(AkaError::SyncFailure)
        );

        let mut st = UsimSqnState::new(sch).with_age_limit(5);
        st.check_and_accept(sch.compose(100, 0).unwrap()).unwrap();
        assert!(st.check(sch.compose(95, 1).unwrap()).is_ok());
        assert_eq!(
            st.check(sch.compose(94, 1).unwrap()),
            Err(AkaError::SyncFailure)
        );
    }
}

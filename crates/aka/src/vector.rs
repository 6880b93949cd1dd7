//! UMTS AKA tokens and vectors (TS 33.102 §6.3), for both ends.
//!
//! - HSS: [`AuthVector::generate`] builds {RAND, AUTN, XRES, CK, IK} with
//!   AUTN = (SQN xor AK) || AMF || MAC-A; [`check_auts`] verifies a resynchronisation token and
//!   recovers SQN_MS.
//! - UE: [`verify_autn`] checks MAC-A, recovers SQN and computes RES, CK, IK; [`build_auts`]
//!   builds AUTS = (SQN_MS xor AK\*) || MAC-S, where MAC-S = f1\*(SQN_MS, RAND, AMF = 0000)
//!   (TS 33.102 §6.3.3). [`Usim`] adds the SQN freshness check of Annex C and answers a
//!   challenge with either RES/CK/IK or AUTS.
//! - Cx helpers: the 32-byte SIP-Authenticate (RAND || AUTN) and the 30-byte resync
//!   SIP-Authorization (RAND || AUTS).
//!
//! RAND is an input: this crate draws no random numbers.

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::AkaError;
use crate::milenage::Milenage;
use crate::secret::{Ck, Ik, Res};
use crate::sqn::{Sqn, UsimSqnState};

/// Defines a public (non-secret) fixed-length byte string.
macro_rules! public_bytes {
    ($(#[$meta:meta])* $name:ident, $len:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// Wraps raw bytes.
            pub fn new(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// Copies from a slice of exactly [`Self::LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, AkaError> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| AkaError::InvalidLength {
                    what: stringify!($name),
                    expected: $len,
                    got: bytes.len(),
                })?;
                Ok(Self(arr))
            }

            /// Parses exactly `2 * LEN` hex digits (no prefix, either case).
            pub fn from_hex(s: &str) -> Result<Self, AkaError> {
                let mut out = [0u8; $len];
                crate::secret::decode_hex_into(s, &mut out, stringify!($name))?;
                Ok(Self(out))
            }

            /// The bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }
    };
}

public_bytes!(
    /// The random challenge RAND (128 bits), chosen by the caller.
    Rand,
    16
);
public_bytes!(
    /// The authentication management field AMF (16 bits).
    Amf,
    2
);
public_bytes!(
    /// A 64-bit message authentication code (MAC-A or MAC-S). Compared in constant time.
    Mac,
    8
);
public_bytes!(
    /// The authentication token AUTN = (SQN xor AK) || AMF || MAC-A (128 bits).
    Autn,
    16
);
public_bytes!(
    /// The resynchronisation token AUTS = (SQN_MS xor AK\*) || MAC-S (112 bits).
    Auts,
    14
);

impl Amf {
    /// AMF = 0000, used for MAC-S in AUTS.
    pub const RESYNC: Amf = Amf([0, 0]);
}

impl Mac {
    /// Constant-time equality.
    pub fn ct_equals(&self, other: &Mac) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl Autn {
    /// Builds AUTN from its parts.
    pub fn from_parts(sqn_xor_ak: [u8; 6], amf: Amf, mac_a: Mac) -> Self {
        let mut b = [0u8; 16];
        b[0..6].copy_from_slice(&sqn_xor_ak);
        b[6..8].copy_from_slice(&amf.0);
        b[8..16].copy_from_slice(&mac_a.0);
        Self(b)
    }

    /// SQN xor AK.
    pub fn sqn_xor_ak(&self) -> [u8; 6] {
        let mut b = [0u8; 6];
        b.copy_from_slice(&self.0[0..6]);
        b
    }

    /// AMF.
    pub fn amf(&self) -> Amf {
        Amf([self.0[6], self.0[7]])
    }

    /// MAC-A.
    pub fn mac(&self) -> Mac {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[8..16]);
        Mac(b)
    }
}

impl Auts {
    /// SQN_MS xor AK\*.
    pub fn sqn_xor_ak(&self) -> [u8; 6] {
        let mut b = [0u8; 6];
        b.copy_from_slice(&self.0[0..6]);
        b
    }

    /// MAC-S.
    pub fn mac(&self) -> Mac {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[6..14]);
        Mac(b)
    }
}

fn xor6(a: [u8; 6], b: &[u8; 6]) -> [u8; 6] {
    let mut out = a;
    for (x, y) in out.iter_mut().zip(b) {
        *x ^= y;
    }
    out
}

/// An authentication vector (quintet) as the HSS sends it in a MAA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthVector {
    /// RAND.
    pub rand: Rand,
    /// AUTN.
    pub autn: Autn,
    /// XRES, the expected RES.
    pub xres: Res,
    /// CK.
    pub ck: Ck,
    /// IK.
    pub ik: Ik,
}

impl AuthVector {
    /// HSS: builds the vector for `rand` (from the caller's RNG), `sqn` and `amf`.
    pub fn generate(m: &Milenage, rand: Rand, sqn: Sqn, amf: Amf) -> Self {
        let mac_a = m.f1(&rand, sqn, amf);
        let f = m.f2345(&rand);
        let autn = Autn::from_parts(xor6(sqn.to_bytes(), f.ak.expose()), amf, mac_a);
        Self {
            rand,
            autn,
            xres: f.res,
            ck: f.ck,
            ik: f.ik,
        }
    }

    /// The Cx SIP-Authenticate value: RAND || AUTN (32 bytes).
    pub fn sip_authenticate(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(&self.rand.0);
        b[16..].copy_from_slice(&self.autn.0);
        b
    }
}

/// What the UE obtains from a challenge whose MAC-A is good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UeAuthResult {
    /// The SQN recovered from AUTN (not yet checked for freshness).
    pub sqn: Sqn,
    /// The AMF from AUTN.
    pub amf: Amf,
    /// RES.
    pub res: Res,
    /// CK.
    pub ck: Ck,
    /// IK.
    pub ik: Ik,
}

/// UE: recovers SQN = (SQN xor AK) xor f5(RAND), checks MAC-A = f1(SQN, RAND, AMF) in constant
/// time, and computes RES, CK and IK. SQN freshness is not checked here (see [`Usim`]).
pub fn verify_autn(m: &Milenage, rand: &Rand, autn: &Autn) -> Result<UeAuthResult, AkaError> {
    let f = m.f2345(rand);
    let mut sqn_bytes = xor6(autn.sqn_xor_ak(), f.ak.expose());
    let sqn = Sqn::from_bytes(sqn_bytes);
    sqn_bytes.zeroize();
    let amf = autn.amf();
    let xmac = m.f1(rand, sqn, amf);
    if !xmac.ct_equals(&autn.mac()) {
        return Err(AkaError::MacFailure);
    }
    Ok(UeAuthResult {
        sqn,
        amf,
        res: f.res,
        ck: f.ck,
        ik: f.ik,
    })
}

/// UE: AUTS = (SQN_MS xor f5\*(RAND)) || f1\*(SQN_MS, RAND, AMF = 0000).
pub fn build_auts(m: &Milenage, rand: &Rand, sqn_ms: Sqn) -> Auts {
    let ak_star = m.f5_star(rand);
    let mac_s = m.f1_star(rand, sqn_ms, Amf::RESYNC);
    let mut b = [0u8; 14];
    b[0..6].copy_from_slice(&xor6(sqn_ms.to_bytes(), ak_star.expose()));
    b[6..14].copy_from_slice(&mac_s.0);
    Auts(b)
}

/// HSS: recovers SQN_MS = AUTS[0..6] xor f5\*(RAND) and checks MAC-S in constant time.
/// Returns SQN_MS; the HSS then continues from [`crate::SqnScheme::after_resync`].
pub fn check_auts(m: &Milenage, rand: &Rand, auts: &Auts) -> Result<Sqn, AkaError> {
    let ak_star = m.f5_star(rand);
    let sqn_ms = Sqn::from_bytes(xor6(auts.sqn_xor_ak(), ak_star.expose()));
    let xmac_s = m.f1_star(rand, sqn_ms, Amf::RESYNC);
    if !xmac_s.ct_equals(&auts.mac()) {
        return Err(AkaError::AutsMacFailure);
    }
    Ok(sqn_ms)
}

/// The Cx SIP-Authorization of a resynchronisation MAR: RAND || AUTS (30 bytes).
pub fn resync_authorization(rand: &Rand, auts: &Auts) -> [u8; 30] {
    let mut b = [0u8; 30];
    b[..16].copy_from_slice(&rand.0);
    b[16..].copy_from_slice(&auts.0);
    b
}

/// Splits a resync SIP-Authorization (exactly 30 bytes) into RAND and AUTS.
pub fn parse_resync_authorization(bytes: &[u8]) -> Result<(Rand, Auts), AkaError> {
    if bytes.len() != 30 {
        return Err(AkaError::InvalidLength {
            what: "resync SIP-Authorization",
            expected: 30,
            got: bytes.len(),
        });
    }
    Ok((
        Rand::from_slice(&bytes[..16])?,
        Auts::from_slice(&bytes[16..])?,
    ))
}

/// The USIM's answer to a challenge whose MAC-A is good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsimResponse {
    /// SQN was fresh: RES, CK, IK.
    Success(UeAuthResult),
    /// SQN was not fresh: send AUTS (Digest-AKA: `auts=` with an empty password).
    SyncFailure(Auts),
}

/// A simulated USIM: K/OPc plus the Annex C SQN record. For the UE tool and tests.
#[derive(Debug, Clone)]
pub struct Usim {
    milenage: Milenage,
    sqn: UsimSqnState,
}

impl Usim {
    /// A USIM with the given keys and SQN record.
    pub fn new(milenage: Milenage, sqn: UsimSqnState) -> Self {
        Self { milenage, sqn }
    }

    /// The SQN record.
    pub fn sqn_state(&self) -> &UsimSqnState {
        &self.sqn
    }

    /// Runs AKA on a challenge: `Err(MacFailure)` if AUTN is not from our network,
    /// `SyncFailure(AUTS)` if SQN is not fresh, otherwise accepts SQN and returns RES/CK/IK.
    pub fn authenticate(&mut self, rand: &Rand, autn: &Autn) -> Result<UsimResponse, AkaError> {
        let r = verify_autn(&self.milenage, rand, autn)?;
        match self.sqn.check(r.sqn) {
            Ok(()) => {
                self.sqn.accept(r.sqn);
                Ok(UsimResponse::Success(r))
            }
            Err(_) => Ok(UsimResponse::SyncFailure(build_auts(
                &self.milenage,
                rand,
                self.sqn.sqn_ms(),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{Key, Op};
    use crate::sqn::SqnScheme;
    use proptest::prelude::*;

    fn set(k: &str, op: &str, rand: &str, sqn: &str, amf: &str) -> (Milenage, Rand, Sqn, Amf) {
        (
            Milenage::with_op(&Key::from_hex(k).unwrap(), &Op::from_hex(op).unwrap()),
            Rand::from_hex(rand).unwrap(),
            Sqn::from_hex(sqn).unwrap(),
            Amf::from_hex(amf).unwrap(),
        )
    }

    fn set1() -> (Milenage, Rand, Sqn, Amf) {
        set(
            "465b5ce8b199b49faa5f0a2ee238a6bc",
            "cdc202d5123e20f62b6d676ac72cb318",
            "23553cbe9637a89d218ae64dae47bf35",
            "ff9bb4d0b607",
            "b9b9",
        )
    }

    /// AUTN values of protocol-facts.md §5 for sets 1 and 2.
    #[test]
    fn autn_sets_1_and_2() {
        let (m, rand, sqn, amf) = set1();
        let av = AuthVector::generate(&m, rand, sqn, amf);
        assert_eq!(av.autn.to_hex(), "55f328b43577b9b94a9ffac354dfafb3");
        assert_eq!(av.xres.to_hex().as_str(), "a54211d5e3ba50bf");
        assert_eq!(av.ck.to_hex().as_str(), "b40ba9a3c58b2a05bbf0d987b21bf8cb");
        assert_eq!(av.ik.to_hex().as_str(), "f769bcd751044604127672711c6d3441");
        let sa = av.sip_authenticate();
        assert_eq!(&sa[..16], rand.as_bytes());
        assert_eq!(&sa[16..], av.autn.as_bytes());

        let (m, rand, sqn, amf) = set(
            "0396eb317b6d1c36f19c1c84cd6ffd16",
            "ff53bade17df5d4e793073ce9d7579fa",
            "c00d603103dcee52c4478119494202e8",
            "fd8eef40df7d",
            "af17",
        );
        let av = AuthVector::generate(&m, rand, sqn, amf);
        assert_eq!(av.autn.to_hex(), "39f96cd9800faf175df5b31807e258b0");
        let ue = verify_autn(&m, &rand, &av.autn).unwrap();
        assert_eq!(ue.sqn, sqn);
        assert_eq!(ue.amf, amf);
    }

    #[test]
    fn ue_rejects_tampered_autn_and_wrong_key() {
        let (m, rand, sqn, amf) = set1();
        let av = AuthVector::generate(&m, rand, sqn, amf);
        for i in 0..16 {
            let mut b = *av.autn.as_bytes();
            b[i] ^= 0x01;
            assert_eq!(
                verify_autn(&m, &rand, &Autn::new(b)),
                Err(AkaError::MacFailure),
                "flipped byte {i}"
            );
        }
        let other = Milenage::with_op(&Key::new([1; 16]), &Op::new([2; 16]));
        assert_eq!(
            verify_autn(&other, &rand, &av.autn),
            Err(AkaError::MacFailure)
        );
    }

    #[test]
    fn hss_rejects_tampered_auts() {
        let (m, rand, _, _) = set1();
        let auts = build_auts(&m, &rand, Sqn::new(0x40).unwrap());
        for i in 0..14 {
            let mut b = *auts.as_bytes();
            b[i] ^= 0x80;
            assert_eq!(
                check_auts(&m, &rand, &Auts::new(b)),
                Err(AkaError::AutsMacFailure),
                "flipped byte {i}"
            );
        }
    }

    /// A full cycle: a UE behind the HSS answers with AUTS; the HSS resyncs; the next vector is
    /// accepted.
    #[test]
    fn usim_sync_failure_then_resync() {
        let (m, rand, _, amf) = set1();
        let sch = SqnScheme::default();
        let ue_sqn = sch.compose(1000, 7).unwrap();
        let mut usim = Usim::new(m.clone(), UsimSqnState::with_sqn_ms(sch, ue_sqn));
        // HSS lost its state: SQN far behind.
        let hss_sqn = sch.compose(3, 0).unwrap();
        let av = AuthVector::generate(&m, rand, hss_sqn, amf);
        let auts = match usim.authenticate(&av.rand, &av.autn).unwrap() {
            UsimResponse::SyncFailure(auts) => auts,
            UsimResponse::Success(_) => panic!("stale SQN must fail"),
        };
        let sqn_ms = check_auts(&m, &rand, &auts).unwrap();
        assert_eq!(sqn_ms, ue_sqn);
        let next = sch.after_resync(sqn_ms);
        let rand2 = Rand::new([0x5a; 16]);
        let av2 = AuthVector::generate(&m, rand2, next, amf);
        match usim.authenticate(&av2.rand, &av2.autn).unwrap() {
            UsimResponse::Success(r) => {
                assert_eq!(r.res, av2.xres);
                assert_eq!(r.ck, av2.ck);
                assert_eq!(r.ik, av2.ik);
                assert_eq!(r.sqn, next);
            }
            UsimResponse::SyncFailure(_) => panic!("resynced SQN must be fresh"),
        }
        assert_eq!(usim.sqn_state().sqn_ms(), next);
        // Replaying the same challenge is now a sync failure.
        assert!(matches!(
            usim.authenticate(&av2.rand, &av2.autn),
            Ok(UsimResponse::SyncFailure(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// For random K/OP/RAND/SQN/AMF: the UE accepts the HSS's AUTN and RES == XRES, CK and
        /// IK agree; the HSS accepts the UE's AUTS and recovers SQN_MS.
        #[test]
        fn hss_and_ue_agree(
            k in any::<[u8; 16]>(),
            op in any::<[u8; 16]>(),
            rand in any::<[u8; 16]>(),
            sqn in 0u64..=crate::sqn::SQN_MASK,
            sqn_ms in 0u64..=crate::sqn::SQN_MASK,
            amf in any::<[u8; 2]>(),
        ) {
            let hss = Milenage::with_op(&Key::new(k), &Op::new(op));
            let ue = Milenage::new(&Key::new(k), &crate::milenage::compute_opc(&Key::new(k), &Op::new(op)));
            let rand = Rand::new(rand);
            let sqn = Sqn::new(sqn).unwrap();
            let av = AuthVector::generate(&hss, rand, sqn, Amf::new(amf));
            let r = verify_autn(&ue, &rand, &av.autn).unwrap();
            prop_assert_eq!(r.sqn, sqn);
            prop_assert_eq!(r.amf, Amf::new(amf));
            prop_assert!(r.res == av.xres);
            prop_assert!(r.ck == av.ck);
            prop_assert!(r.ik == av.ik);

            let sqn_ms = Sqn::new(sqn_ms).unwrap();
            let auts = build_auts(&ue, &rand, sqn_ms);
            prop_assert_eq!(check_auts(&hss, &rand, &auts), Ok(sqn_ms));
            let (r2, a2) = parse_resync_authorization(&resync_authorization(&rand, &auts)).unwrap();
            prop_assert_eq!(r2, rand);
            prop_assert_eq!(a2, auts);
        }

        /// The nonce and auts decoders never panic, whatever the text, and what they accept
        /// re-encodes to an equal value.
        #[test]
        fn decoders_never_panic(s in "[A-Za-z0-9+/=]{0,60}|.{0,200}") {
            if let Ok(n) = crate::digest_aka::AkaNonce::decode(&s) {
                prop_assert_eq!(crate::digest_aka::AkaNonce::decode(&n.encode()), Ok(n));
            }
            if let Ok(a) = crate::digest_aka::decode_auts(&s) {
                prop_assert_eq!(crate::digest_aka::decode_auts(&crate::digest_aka::encode_auts(&a)), Ok(a));
            }
            let _ = Key::from_hex(&s);
            let _ = Sqn::from_hex(&s);
            let _ = crate::secret::Res::from_hex(&s);
        }
    }
}

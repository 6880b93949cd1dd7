//! # ims-aka: the cryptography of IMS registration, without I/O
//!
//! Everything the HSS, the S-CSCF, the P-CSCF and the UE tool compute to authenticate a
//! registration, as pure functions over bytes:
//!
//! - [`milenage`]: the 3GPP Milenage functions f1, f1\*, f2, f3, f4, f5, f5\* and OPc
//!   (TS 35.205/35.206), over the `aes` crate's AES-128 block.
//! - [`vector`]: UMTS AKA tokens (TS 33.102 §6.3): the HSS builds authentication vectors
//!   (RAND, AUTN, XRES, CK, IK) and checks AUTS; the UE side verifies AUTN, computes RES, CK,
//!   IK and builds AUTS on a synchronisation failure ([`vector::Usim`]).
//! - [`sqn`]: sequence numbers SQN = SEQ || IND (TS 33.102 Annex C): the HSS's "next fresh SQN"
//!   and "after resync", and the UE's freshness check.
//! - [`digest`]: HTTP Digest with MD5 (RFC 2617/7616): HA1, request response for qop `auth`,
//!   `auth-int` and none, `rspauth`, and a constant-time verifier.
//! - [`digest_aka`]: Digest-AKAv1-MD5 (RFC 3310): nonce = base64(RAND || AUTN || server data),
//!   the `auts` parameter, and which bytes are the digest password.
//! - [`esp`]: TS 33.203 Annex I IPsec ESP keys from IK/CK, with the Linux xfrm algorithm names.
//!
//! The crate never draws random numbers (callers pass RAND in), never logs, and never does I/O.
//! Secret values (K, OP, OPc, CK, IK, RES/XRES, HA1, ESP keys) live in types from [`secret`] that
//! are wiped on drop and whose `Debug` shows no byte of them; MAC and response comparisons are
//! constant time. Parsers of untrusted text (nonce, auts, hex, response) return [`AkaError`]
//! and never panic.

#![warn(missing_docs)]

pub mod digest;
pub mod digest_aka;
mod error;
pub mod esp;
pub mod milenage;
pub mod secret;
pub mod sqn;
pub mod vector;

pub use digest::{DigestParams, Ha1, Qop};
pub use digest_aka::AkaNonce;
pub use error::AkaError;
pub use esp::{EncryptionAlgorithm, EspKey, IntegrityAlgorithm};
pub use milenage::Milenage;
pub use secret::{Ak, Ck, Ik, Key, Op, Opc, Res};
pub use sqn::{Sqn, SqnScheme, UsimSqnState};
pub use vector::{Amf, AuthVector, Autn, Auts, Mac, Rand, UeAuthResult, Usim, UsimResponse};

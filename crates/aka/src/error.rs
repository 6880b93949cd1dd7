//! The crate's one error type.
//!
//! Every fallible function of the crate returns [`AkaError`]. Variants carry no secret value:
//! at most a parameter name, a length, or (for an unsupported algorithm or qop) the peer's own
//! text.

/// Errors from parsing, verifying and SQN checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AkaError {
    /// A byte string has the wrong length.
    #[error("{what}: expected {expected} bytes, got {got}")]
    InvalidLength {
        /// What was being read (e.g. "AUTS").
        what: &'static str,
        /// The expected length in bytes.
        expected: usize,
        /// The length found.
        got: usize,
    },
    /// Text that should be hex is not (bad character, odd length or wrong length).
    #[error("{what}: invalid hex")]
    InvalidHex {
        /// What was being read.
        what: &'static str,
    },
    /// Text that should be base64 is not.
    #[error("{what}: invalid base64")]
    InvalidBase64 {
        /// What was being read.
        what: &'static str,
    },
    /// AUTN's MAC-A does not match XMAC: the network does not know K (or the UE's K is wrong).
    #[error("AUTN MAC check failed")]
    MacFailure,
    /// AUTS's MAC-S does not match: the resynchronisation request is not from the USIM.
    #[error("AUTS MAC-S check failed")]
    AutsMacFailure,
    /// The SQN in AUTN is not acceptable to the USIM (TS 33.102 Annex C): a synchronisation
    /// failure, answered with AUTS.
    #[error("SQN is not fresh (synchronisation failure)")]
    SyncFailure,
    /// A value does not fit in the 48 bits of an SQN.
    #[error("SQN value out of the 48-bit range")]
    SqnOutOfRange,
    /// An IND length outside the supported range.
    #[error("IND length of {0} bits is not supported (0..=10)")]
    InvalidIndLength(u8),
    /// A RES/XRES length outside 4..=16 bytes (TS 33.102 §6.3.2).
    #[error("RES length {0} outside 4..=16 bytes")]
    InvalidResLength(usize),
    /// A digest parameter required by the chosen qop is missing.
    #[error("digest: missing parameter `{0}`")]
    MissingParam(&'static str),
    /// A qop value other than `auth` and `auth-int`.
    #[error("digest: unsupported qop {0:?}")]
    UnsupportedQop(String),
    /// The digest response does not match the expected one.
    #[error("digest response mismatch")]
    ResponseMismatch,
    /// An algorithm name this crate does not know.
    #[error("unknown algorithm {0:?}")]
    UnknownAlgorithm(String),
}

//! Codec errors. Every error names the Diameter Result-Code it maps to
//! ([`Error::result_code`]) and, where RFC 6733 asks for one, the Failed-AVP to return
//! ([`Error::failed_avp`]). Header-level framing errors are connection-fatal
//! ([`Error::is_connection_fatal`]): the stream can no longer be trusted, so the peer closes.

use crate::avp::Avp;
use crate::dict::{AvpDef, result_code as rc};
use std::fmt;

/// A copy of the AVP an error is about, as RFC 6733 §7.5 wants it in Failed-AVP.
///
/// For a missing AVP (5005) it names the missing one with empty data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAvp {
    /// AVP code.
    pub code: u32,
    /// AVP flags as received (or the dictionary flags for a missing AVP).
    pub flags: u8,
    /// Vendor-Id, when the AVP is vendor-specific.
    pub vendor_id: Option<u32>,
    /// The AVP data (possibly truncated to what was present), empty for a missing AVP.
    pub data: Vec<u8>,
}

impl FailedAvp {
    /// Copies an AVP view (allocates; only on the error path).
    pub fn from_avp(avp: &Avp<'_>) -> Self {
        Self {
            code: avp.code(),
            flags: avp.flags(),
            vendor_id: avp.vendor_id(),
            data: avp.data().to_vec(),
        }
    }

    /// Names a missing AVP from its dictionary entry. As RFC 6733 §7.1.5 asks, its data is
    /// zeroes of the type's minimum length (4 for 32-bit types, 8 for 64-bit, 6 for an
    /// Address, none for strings and Grouped).
    pub fn missing(def: &AvpDef) -> Self {
        use crate::dict::AvpType as T;
        let len = match def.ty {
            T::Integer32 | T::Unsigned32 | T::Float32 | T::Enumerated | T::Time => 4,
            T::Integer64 | T::Unsigned64 | T::Float64 => 8,
            T::Address => 6,
            _ => 0,
        };
        Self {
            code: def.code,
            flags: def.flags,
            vendor_id: def.vendor(),
            data: vec![0; len],
        }
    }
}

impl fmt::Display for FailedAvp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match crate::dict::lookup(self.code, self.vendor_id.unwrap_or(0)) {
            Some(d) => write!(f, "{} ({})", d.name, self.code)?,
            None => write!(f, "AVP {}", self.code)?,
        }
        if let Some(v) = self.vendor_id {
            write!(f, " vendor {v}")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong decoding (or, rarely, encoding) a Diameter message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Message length < 20, not a multiple of 4, or different from the bytes given (5015).
    #[error("invalid message length {0}")]
    InvalidMessageLength(u32),
    /// Message length above the configured maximum (5015, connection-fatal).
    #[error("message length {len} exceeds the limit {max}")]
    MessageTooLarge {
        /// Declared length.
        len: u32,
        /// Configured limit.
        max: u32,
    },
    /// Version byte is not 1 (5011).
    #[error("unsupported Diameter version {0}")]
    UnsupportedVersion(u8),
    /// Command flags invalid: reserved bits set, or R and E both set (3008).
    #[error("invalid command flags {0:#04x}")]
    InvalidHdrBits(u8),
    /// The command code is not the one expected (3001).
    #[error("unexpected command {code} (request: {request})")]
    CommandUnsupported {
        /// Command code received.
        code: u32,
        /// R bit received.
        request: bool,
    },
    /// The application id is not the one expected (3007).
    #[error("unsupported application {0}")]
    ApplicationUnsupported(u32),
    /// AVP length shorter than its header, past its container, or wrong for its type (5014).
    #[error("invalid AVP length: {0}")]
    InvalidAvpLength(FailedAvp),
    /// AVP data not valid for its type or not an allowed value (5004).
    #[error("invalid AVP value: {0}")]
    InvalidAvpValue(FailedAvp),
    /// A required AVP is absent (5005); Failed-AVP names it with empty data.
    #[error("missing AVP: {0}")]
    MissingAvp(FailedAvp),
    /// A single-valued AVP appeared more than once (5009); Failed-AVP is the extra one.
    #[error("AVP occurs too many times: {0}")]
    AvpOccursTooManyTimes(FailedAvp),
    /// AVP flags reserved bits set, or V bit inconsistent with the AVP's definition (3009).
    #[error("invalid AVP bits: {0}")]
    InvalidAvpBits(FailedAvp),
    /// Unknown AVP with the M bit set (5001).
    #[error("unsupported mandatory AVP: {0}")]
    AvpUnsupported(FailedAvp),
    /// Two AVPs that exclude each other, e.g. Result-Code and Experimental-Result (5007).
    #[error("contradicting AVPs: {0}")]
    ContradictingAvps(FailedAvp),
    /// Encoding: an AVP or the message exceeds the 24-bit length field (5012 if reported).
    #[error("message or AVP too large to encode")]
    TooLarge,
}

impl Error {
    /// The Result-Code this error is answered with.
    pub fn result_code(&self) -> u32 {
        match self {
            Error::InvalidMessageLength(_) | Error::MessageTooLarge { .. } => {
                rc::INVALID_MESSAGE_LENGTH
            }
            Error::UnsupportedVersion(_) => rc::UNSUPPORTED_VERSION,
            Error::InvalidHdrBits(_) => rc::INVALID_HDR_BITS,
            Error::CommandUnsupported { .. } => rc::COMMAND_UNSUPPORTED,
            Error::ApplicationUnsupported(_) => rc::APPLICATION_UNSUPPORTED,
            Error::InvalidAvpLength(_) => rc::INVALID_AVP_LENGTH,
            Error::InvalidAvpValue(_) => rc::INVALID_AVP_VALUE,
            Error::MissingAvp(_) => rc::MISSING_AVP,
            Error::AvpOccursTooManyTimes(_) => rc::AVP_OCCURS_TOO_MANY_TIMES,
            Error::InvalidAvpBits(_) => rc::INVALID_AVP_BITS,
            Error::AvpUnsupported(_) => rc::AVP_UNSUPPORTED,
            Error::ContradictingAvps(_) => rc::CONTRADICTING_AVPS,
            Error::TooLarge => rc::UNABLE_TO_COMPLY,
        }
    }

    /// The AVP to put in the answer's Failed-AVP, when there is one.
    pub fn failed_avp(&self) -> Option<&FailedAvp> {
        match self {
            Error::InvalidAvpLength(f)
            | Error::InvalidAvpValue(f)
            | Error::MissingAvp(f)
            | Error::AvpOccursTooManyTimes(f)
            | Error::InvalidAvpBits(f)
            | Error::AvpUnsupported(f)
            | Error::ContradictingAvps(f) => Some(f),
            _ => None,
        }
    }

    /// True for framing errors after which the byte stream cannot be resynchronised
    /// (RFC 6733 §3: bad version or message length); the peer connection must close.
    pub fn is_connection_fatal(&self) -> bool {
        matches!(
            self,
            Error::InvalidMessageLength(_)
                | Error::MessageTooLarge { .. }
                | Error::UnsupportedVersion(_)
        )
    }

    /// True when the answer must carry the E bit (protocol errors, 3xxx).
    pub fn is_protocol_error(&self) -> bool {
        (3000..4000).contains(&self.result_code())
    }
}

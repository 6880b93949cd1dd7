//! The outcome an answer carries: a base Result-Code (268) or an Experimental-Result (297)
//! {Vendor-Id, Experimental-Result-Code}. The two namespaces overlap (5001 is
//! AVP_UNSUPPORTED as a Result-Code but ERROR_USER_UNKNOWN as a Cx Experimental-Result-Code),
//! so the carrying AVP decides, and [`AnswerResult`] keeps them apart.

use crate::avp::Avp;
use crate::builder::{Buffer, MessageBuilder};
use crate::dict::{self, experimental_result_code, result_code};
use crate::error::{Error, FailedAvp};

/// Result-Code or Experimental-Result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnswerResult {
    /// Result-Code (268), RFC 6733 namespace.
    ResultCode(u32),
    /// Experimental-Result (297) with its Vendor-Id (10415 for Cx).
    Experimental {
        /// Vendor-Id inside Experimental-Result.
        vendor_id: u32,
        /// Experimental-Result-Code.
        code: u32,
    },
}

impl AnswerResult {
    /// Base DIAMETER_SUCCESS.
    pub const SUCCESS: Self = Self::ResultCode(result_code::SUCCESS);

    /// A 3GPP (vendor 10415) Experimental-Result.
    pub const fn experimental(code: u32) -> Self {
        Self::Experimental {
            vendor_id: dict::VENDOR_3GPP,
            code,
        }
    }
    /// The numeric code, whichever AVP carries it.
    pub fn code(&self) -> u32 {
        match *self {
            Self::ResultCode(c) | Self::Experimental { code: c, .. } => c,
        }
    }
    /// 2xxx in either namespace.
    pub fn is_success(&self) -> bool {
        (2000..3000).contains(&self.code())
    }
    /// A base 3xxx protocol error: the answer carries the E bit.
    pub fn is_protocol_error(&self) -> bool {
        matches!(self, Self::ResultCode(c) if (3000..4000).contains(c))
    }
    /// The name in the right namespace (5001 is AVP_UNSUPPORTED or ERROR_USER_UNKNOWN).
    pub fn name(&self) -> Option<&'static str> {
        match *self {
            Self::ResultCode(c) => result_code::name(c),
            Self::Experimental { vendor_id, code } if vendor_id == dict::VENDOR_3GPP => {
                experimental_result_code::name(code)
            }
            Self::Experimental { .. } => None,
        }
    }

    /// Appends Result-Code or Experimental-Result.
    pub fn encode<B: Buffer + ?Sized>(&self, b: &mut MessageBuilder<'_, B>) {
        match *self {
            Self::ResultCode(c) => {
                b.u32(&dict::RESULT_CODE, c);
            }
            Self::Experimental { vendor_id, code } => {
                b.group(&dict::EXPERIMENTAL_RESULT, |b| {
                    b.u32(&dict::VENDOR_ID, vendor_id)
                        .u32(&dict::EXPERIMENTAL_RESULT_CODE, code);
                });
            }
        }
    }

    /// Reads a Result-Code AVP.
    pub fn from_result_code(avp: &Avp<'_>) -> Result<Self, Error> {
        avp.as_u32().map(Self::ResultCode)
    }

    /// Reads an Experimental-Result AVP (both children required: 5005).
    pub fn from_experimental(avp: &Avp<'_>) -> Result<Self, Error> {
        let (mut vendor, mut code) = (None, None);
        for a in avp.grouped() {
            let a = a?;
            if a.is(&dict::VENDOR_ID) {
                vendor = Some(a.as_u32()?);
            } else if a.is(&dict::EXPERIMENTAL_RESULT_CODE) {
                code = Some(a.as_u32()?);
            }
        }
        let vendor_id =
            vendor.ok_or_else(|| Error::MissingAvp(FailedAvp::missing(&dict::VENDOR_ID)))?;
        let code = code.ok_or_else(|| {
            Error::MissingAvp(FailedAvp::missing(&dict::EXPERIMENTAL_RESULT_CODE))
        })?;
        Ok(Self::Experimental { vendor_id, code })
    }
}

//! Zero-copy AVP views (RFC 6733 §4) and the lazy, bounds-checked AVP iterator.
//!
//! An [`Avp`] borrows its bytes from the message buffer. [`AvpIter`] walks a sequence of AVPs
//! (a message body or a Grouped AVP's data) one at a time: each step reads one AVP header,
//! checks its length against the remaining bytes, and yields `Err(5014)` (then stops) on a
//! bad length. Nothing is allocated and nothing panics, whatever the bytes.
//!
//! Typed accessors (`as_u32`, `as_utf8`, `as_address`, …) check the data against the base
//! type: a wrong fixed size is 5014 INVALID_AVP_LENGTH, invalid content (bad UTF-8, unknown
//! address family length) is 5004 INVALID_AVP_VALUE; both carry the AVP as Failed-AVP.

use crate::dict::AvpDef;
use crate::error::{Error, FailedAvp};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// AVP flag bits.
pub mod flags {
    /// Vendor-Specific: a Vendor-Id field follows the length.
    pub const V: u8 = 0x80;
    /// Mandatory.
    pub const M: u8 = 0x40;
    /// Formerly 'P' (RFC 3588 end-to-end protection), reserved by RFC 6733: send 0.
    pub const P: u8 = 0x20;
    /// All reserved bits (including the old P bit).
    pub const RESERVED: u8 = 0x3F;
}

/// AVP header length without Vendor-Id.
pub const AVP_HEADER_LEN: usize = 8;
/// AVP header length with Vendor-Id.
pub const AVP_HEADER_LEN_VENDOR: usize = 12;
/// Largest value of the 24-bit length fields.
pub const MAX_LEN_24: usize = 0x00FF_FFFF;

/// Seconds between 1900-01-01 (NTP era 0) and 1970-01-01.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Rounds up to a multiple of 4.
pub(crate) const fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// One AVP, borrowed from the message bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avp<'a> {
    code: u32,
    flags: u8,
    vendor_id: Option<u32>,
    data: &'a [u8],
    raw: &'a [u8],
}

/// An Address AVP value (RFC 6733 §4.3.1; family numbers from IANA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address<'a> {
    /// Family 1.
    V4(Ipv4Addr),
    /// Family 2.
    V6(Ipv6Addr),
    /// Any other family (e.g. 8 = E.164), value uninterpreted.
    Other {
        /// Address family.
        family: u16,
        /// The address bytes after the family.
        value: &'a [u8],
    },
}

impl<'a> Avp<'a> {
    /// Reads the AVP at the start of `buf`; returns it and the number of bytes it occupies
    /// including padding (padding missing at the very end of `buf` is tolerated).
    pub fn parse(buf: &'a [u8]) -> Result<(Self, usize), Error> {
        let invalid = |code: u32, flags: u8, vendor_id: Option<u32>, data: &[u8]| {
            Error::InvalidAvpLength(FailedAvp {
                code,
                flags,
                vendor_id,
                data: data.to_vec(),
            })
        };
        let Some(h) = buf.get(..AVP_HEADER_LEN) else {
            let code = match buf.get(..4) {
                Some(c) => u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                None => 0,
            };
            return Err(invalid(code, 0, None, &[]));
        };
        let code = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let flags = h[4];
        let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
        let (vendor_id, hdr) = if flags & flags::V != 0 {
            match buf.get(8..12) {
                Some(v) => (
                    Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
                    AVP_HEADER_LEN_VENDOR,
                ),
                None => return Err(invalid(code, flags, None, &[])),
            }
        } else {
            (None, AVP_HEADER_LEN)
        };
        if len < hdr {
            return Err(invalid(code, flags, vendor_id, &[]));
        }
        let Some(raw) = buf.get(..len) else {
            let avail = buf.get(hdr..).unwrap_or(&[]);
            return Err(invalid(code, flags, vendor_id, avail));
        };
        let data = raw.get(hdr..).unwrap_or(&[]);
        let used = pad4(len).min(buf.len());
        Ok((
            Self {
                code,
                flags,
                vendor_id,
                data,
                raw,
            },
            used,
        ))
    }

    /// AVP code.
    pub fn code(&self) -> u32 {
        self.code
    }
    /// Flags byte as received.
    pub fn flags(&self) -> u8 {
        self.flags
    }
    /// Vendor-Id when the V bit is set.
    pub fn vendor_id(&self) -> Option<u32> {
        self.vendor_id
    }
    /// Vendor-Id, or 0 when there is none (the IETF namespace).
    pub fn vendor(&self) -> u32 {
        self.vendor_id.unwrap_or(0)
    }
    /// M bit.
    pub fn is_mandatory(&self) -> bool {
        self.flags & flags::M != 0
    }
    /// The AVP data (without header or padding).
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
    /// Header and data as received, without padding.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
    /// True when this AVP has `def`'s code and vendor.
    pub fn is(&self, def: &AvpDef) -> bool {
        self.code == def.code && self.vendor() == def.vendor_id
    }

    /// The error for this AVP: wrong length for its type.
    pub fn invalid_length(&self) -> Error {
        Error::InvalidAvpLength(FailedAvp::from_avp(self))
    }
    /// The error for this AVP: invalid value.
    pub fn invalid_value(&self) -> Error {
        Error::InvalidAvpValue(FailedAvp::from_avp(self))
    }

    fn fixed<const N: usize>(&self) -> Result<[u8; N], Error> {
        <[u8; N]>::try_from(self.data).map_err(|_| self.invalid_length())
    }

    /// Unsigned32 (and the 32-bit Application-Id / Vendor-Id style values).
    pub fn as_u32(&self) -> Result<u32, Error> {
        self.fixed::<4>().map(u32::from_be_bytes)
    }
    /// Unsigned64.
    pub fn as_u64(&self) -> Result<u64, Error> {
        self.fixed::<8>().map(u64::from_be_bytes)
    }
    /// Integer32.
    pub fn as_i32(&self) -> Result<i32, Error> {
        self.fixed::<4>().map(i32::from_be_bytes)
    }
    /// Integer64.
    pub fn as_i64(&self) -> Result<i64, Error> {
        self.fixed::<8>().map(i64::from_be_bytes)
    }
    /// Float32.
    pub fn as_f32(&self) -> Result<f32, Error> {
        self.fixed::<4>().map(f32::from_be_bytes)
    }
    /// Float64.
    pub fn as_f64(&self) -> Result<f64, Error> {
        self.fixed::<8>().map(f64::from_be_bytes)
    }
    /// Enumerated (an Integer32 on the wire).
    pub fn as_enumerated(&self) -> Result<i32, Error> {
        self.as_i32()
    }
    /// OctetString.
    pub fn as_octets(&self) -> &'a [u8] {
        self.data
    }
    /// UTF8String (5004 on invalid UTF-8).
    pub fn as_utf8(&self) -> Result<&'a str, Error> {
        std::str::from_utf8(self.data).map_err(|_| self.invalid_value())
    }
    /// DiameterIdentity (an FQDN or realm: ASCII; 5004 otherwise or when empty).
    pub fn as_identity(&self) -> Result<&'a str, Error> {
        if self.data.is_empty() || !self.data.is_ascii() {
            return Err(self.invalid_value());
        }
        self.as_utf8()
    }
    /// DiameterURI (`aaa://…`; ASCII, checked only as such).
    pub fn as_uri(&self) -> Result<&'a str, Error> {
        self.as_identity()
    }
    /// Address: 2-byte family, then the address (IPv4 needs 4 bytes, IPv6 16).
    pub fn as_address(&self) -> Result<Address<'a>, Error> {
        let (fam, value) = match self.data {
            [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
            _ => return Err(self.invalid_length()),
        };
        match fam {
            1 => <[u8; 4]>::try_from(value)
                .map(|o| Address::V4(Ipv4Addr::from(o)))
                .map_err(|_| self.invalid_value()),
            2 => <[u8; 16]>::try_from(value)
                .map(|o| Address::V6(Ipv6Addr::from(o)))
                .map_err(|_| self.invalid_value()),
            family => Ok(Address::Other { family, value }),
        }
    }
    /// Address as an IP address (5004 for non-IP families).
    pub fn as_ip(&self) -> Result<IpAddr, Error> {
        match self.as_address()? {
            Address::V4(a) => Ok(IpAddr::V4(a)),
            Address::V6(a) => Ok(IpAddr::V6(a)),
            Address::Other { .. } => Err(self.invalid_value()),
        }
    }
    /// Time: the raw 32-bit NTP seconds.
    pub fn as_ntp_seconds(&self) -> Result<u32, Error> {
        self.as_u32()
    }
    /// Time as a `SystemTime`; values with the top bit clear are read in the NTP era
    /// starting 2036-02-07 (RFC 6733 §4.3.1).
    pub fn as_time(&self) -> Result<SystemTime, Error> {
        Ok(ntp_to_system_time(self.as_u32()?))
    }
    /// Grouped: a lazy iterator over the contained AVPs.
    pub fn grouped(&self) -> AvpIter<'a> {
        AvpIter::new(self.data)
    }
}

/// Converts NTP seconds (RFC 6733 Time) to `SystemTime` (eras 0 and 1).
pub fn ntp_to_system_time(ntp: u32) -> SystemTime {
    let secs = if ntp & 0x8000_0000 != 0 {
        u64::from(ntp)
    } else {
        u64::from(ntp) + (1u64 << 32)
    };
    UNIX_EPOCH + Duration::from_secs(secs.saturating_sub(NTP_UNIX_OFFSET))
}

/// Converts a `SystemTime` to NTP seconds (modulo 2^32, as RFC 6733 Time wraps in 2036).
pub fn system_time_to_ntp(t: SystemTime) -> u32 {
    let unix = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ((unix + NTP_UNIX_OFFSET) & 0xFFFF_FFFF) as u32
}

/// Lazy iterator over consecutive AVPs. After the first error it yields nothing more.
#[derive(Debug, Clone)]
pub struct AvpIter<'a> {
    rest: &'a [u8],
}

impl<'a> AvpIter<'a> {
    /// Iterates the AVPs in `bytes` (a message body or a grouped AVP's data).
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// The first AVP matching `def` (an error if the walk hits a malformed AVP first).
    pub fn find(self, def: &AvpDef) -> Result<Option<Avp<'a>>, Error> {
        for a in self {
            let a = a?;
            if a.is(def) {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }

    /// Checks the framing of every AVP in this sequence, recursing into AVPs that the
    /// dictionary calls Grouped. Returns the first error.
    pub fn validate(self) -> Result<(), Error> {
        for a in self {
            let a = a?;
            if let Some(d) = crate::dict::lookup(a.code(), a.vendor())
                && d.ty == crate::dict::AvpType::Grouped
            {
                a.grouped().validate()?;
            }
        }
        Ok(())
    }
}

impl<'a> Iterator for AvpIter<'a> {
    type Item = Result<Avp<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match Avp::parse(self.rest) {
            Ok((avp, used)) => {
                self.rest = self.rest.get(used..).unwrap_or(&[]);
                Some(Ok(avp))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

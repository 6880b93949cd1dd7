//! The 20-byte Diameter header (RFC 6733 §3) and stream framing.
//!
//! [`frame`] answers "is a whole message in this TCP buffer, and how long is it?" and rejects
//! the connection-fatal cases (version ≠ 1 → 5011; length < 20, not a multiple of 4, or above
//! the configured maximum → 5015). [`Header::parse`] additionally checks the command flags
//! (reserved bits, or R together with E → 3008), which is an answerable error, not a fatal one.

use crate::error::Error;

/// Size of the Diameter header.
pub const HEADER_LEN: usize = 20;

/// The only Diameter version.
pub const VERSION: u8 = 1;

/// Default maximum message size accepted by [`frame`] callers that have no configuration.
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 1 << 20;

/// Command flag bits.
pub mod flags {
    /// Request.
    pub const R: u8 = 0x80;
    /// Proxiable.
    pub const P: u8 = 0x40;
    /// Error (answers carrying a protocol error, 3xxx).
    pub const E: u8 = 0x20;
    /// Potentially retransmitted.
    pub const T: u8 = 0x10;
    /// Reserved bits, must be zero.
    pub const RESERVED: u8 = 0x0F;
}

/// A decoded (or to-be-encoded) Diameter header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message length including the header (set by the builder when encoding).
    pub length: u32,
    /// Command flags (see [`flags`]).
    pub flags: u8,
    /// Command code (24 bits).
    pub command_code: u32,
    /// Application-Id (0 for base peer commands, 16777216 for Cx).
    pub application_id: u32,
    /// Hop-by-Hop identifier.
    pub hop_by_hop: u32,
    /// End-to-End identifier.
    pub end_to_end: u32,
}

impl Header {
    /// A request header (R set; P set when `proxiable`).
    pub fn request(
        command_code: u32,
        application_id: u32,
        proxiable: bool,
        hop_by_hop: u32,
        end_to_end: u32,
    ) -> Self {
        Self {
            length: 0,
            flags: flags::R | if proxiable { flags::P } else { 0 },
            command_code,
            application_id,
            hop_by_hop,
            end_to_end,
        }
    }

    /// The header of an answer to this request: same command, application, P bit and
    /// identifiers; R and T cleared.
    pub fn answer(&self) -> Self {
        Self {
            length: 0,
            flags: self.flags & flags::P,
            ..*self
        }
    }

    /// R bit.
    pub fn is_request(&self) -> bool {
        self.flags & flags::R != 0
    }
    /// P bit.
    pub fn is_proxiable(&self) -> bool {
        self.flags & flags::P != 0
    }
    /// E bit.
    pub fn is_error(&self) -> bool {
        self.flags & flags::E != 0
    }
    /// T bit.
    pub fn is_retransmit(&self) -> bool {
        self.flags & flags::T != 0
    }

    /// Parses and checks the first 20 bytes of `bytes` (version, length rules, flags).
    /// Does not compare the length with `bytes.len()`; [`crate::Message::parse`] does.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let Some(h) = bytes.get(..HEADER_LEN) else {
            return Err(Error::InvalidMessageLength(bytes.len() as u32));
        };
        if h[0] != VERSION {
            return Err(Error::UnsupportedVersion(h[0]));
        }
        let length = u32::from_be_bytes([0, h[1], h[2], h[3]]);
        check_length(length)?;
        let flags = h[4];
        if flags & flags::RESERVED != 0 || (flags & flags::R != 0 && flags & flags::E != 0) {
            return Err(Error::InvalidHdrBits(flags));
        }
        Ok(Self {
            length,
            flags,
            command_code: u32::from_be_bytes([0, h[5], h[6], h[7]]),
            application_id: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
            hop_by_hop: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
            end_to_end: u32::from_be_bytes([h[16], h[17], h[18], h[19]]),
        })
    }

    /// The 20 header bytes (length as stored in `self.length`, truncated to 24 bits).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        let l = self.length.to_be_bytes();
        let c = self.command_code.to_be_bytes();
        h[0] = VERSION;
        h[1..4].copy_from_slice(&l[1..4]);
        h[4] = self.flags;
        h[5..8].copy_from_slice(&c[1..4]);
        h[8..12].copy_from_slice(&self.application_id.to_be_bytes());
        h[12..16].copy_from_slice(&self.hop_by_hop.to_be_bytes());
        h[16..20].copy_from_slice(&self.end_to_end.to_be_bytes());
        h
    }
}

fn check_length(length: u32) -> Result<(), Error> {
    if (length as usize) < HEADER_LEN || !length.is_multiple_of(4) {
        return Err(Error::InvalidMessageLength(length));
    }
    Ok(())
}

/// Stream framing: looks at the start of a TCP receive buffer.
///
/// - `Ok(None)`: not a whole message yet, read more.
/// - `Ok(Some(len))`: `buf[..len]` is one whole message (parse it with
///   [`crate::Message::parse`]) and `len` bytes can be consumed.
/// - `Err(e)`: connection-fatal ([`Error::is_connection_fatal`]): version ≠ 1 (5011),
///   length < 20 or not a multiple of 4 (5015), or length > `max_len` (5015).
///
/// The version is checked as soon as one byte is there, the length as soon as four are.
pub fn frame(buf: &[u8], max_len: u32) -> Result<Option<usize>, Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let Some(l) = buf.get(1..4) else {
        return Ok(None);
    };
    let length = u32::from_be_bytes([0, l[0], l[1], l[2]]);
    check_length(length)?;
    if length > max_len {
        return Err(Error::MessageTooLarge {
            len: length,
            max: max_len,
        });
    }
    let length = length as usize;
    Ok((buf.len() >= length).then_some(length))
}

//! Message encoding: [`MessageBuilder`] appends a header and AVPs to a reusable buffer
//! (`Vec<u8>` or `bytes::BytesMut`, see [`Buffer`]), pads every AVP to 4 bytes, and patches
//! lengths in place: Grouped AVPs by nesting ([`MessageBuilder::group`] or
//! [`MessageBuilder::begin_group`]/[`MessageBuilder::end_group`]), the message length in
//! [`MessageBuilder::finish`]. No allocation per AVP (only the buffer grows).
//!
//! AVP flags come from the dictionary entry ([`AvpDef`]): V is set exactly when there is a
//! Vendor-Id, M as the dictionary says, and the reserved bits (the old P bit) are never sent.

use crate::avp::{AVP_HEADER_LEN, AVP_HEADER_LEN_VENDOR, Avp, MAX_LEN_24, flags, pad4};
use crate::dict::AvpDef;
use crate::error::Error;
use crate::header::{HEADER_LEN, Header};
use std::net::IpAddr;
use std::time::SystemTime;

/// A byte buffer the builder can append to and patch.
pub trait Buffer {
    /// Current length.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Appends bytes.
    fn put(&mut self, data: &[u8]);
    /// Overwrites already written bytes at `at` (silently ignored when out of range, which
    /// the builder never asks for).
    fn patch(&mut self, at: usize, data: &[u8]);
}

impl Buffer for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn put(&mut self, data: &[u8]) {
        self.extend_from_slice(data);
    }
    fn patch(&mut self, at: usize, data: &[u8]) {
        if let Some(dst) = self.get_mut(at..at.saturating_add(data.len())) {
            dst.copy_from_slice(data);
        }
    }
}

impl Buffer for bytes::BytesMut {
    fn len(&self) -> usize {
        bytes::BytesMut::len(self)
    }
    fn put(&mut self, data: &[u8]) {
        self.extend_from_slice(data);
    }
    fn patch(&mut self, at: usize, data: &[u8]) {
        if let Some(dst) = self.get_mut(at..at.saturating_add(data.len())) {
            dst.copy_from_slice(data);
        }
    }
}

/// An open Grouped AVP; close it with [`MessageBuilder::end_group`].
#[must_use = "a group must be closed with end_group"]
#[derive(Debug)]
pub struct Group {
    start: usize,
}

/// Appends one Diameter message to a buffer. See the crate docs for an example.
pub struct MessageBuilder<'b, B: Buffer + ?Sized = Vec<u8>> {
    buf: &'b mut B,
    start: usize,
    too_large: bool,
}

const ZEROS: [u8; 4] = [0; 4];

impl<'b, B: Buffer + ?Sized> MessageBuilder<'b, B> {
    /// Starts a message at the end of `buf` (which the caller may reuse: clear it first, or
    /// append several messages). `header.length` is ignored and patched by `finish`.
    pub fn new(buf: &'b mut B, header: &Header) -> Self {
        let start = buf.len();
        buf.put(&header.to_bytes());
        Self {
            buf,
            start,
            too_large: false,
        }
    }

    fn avp_header(&mut self, code: u32, flag_bits: u8, vendor_id: Option<u32>, data_len: usize) {
        let hdr = if vendor_id.is_some() {
            AVP_HEADER_LEN_VENDOR
        } else {
            AVP_HEADER_LEN
        };
        let len = hdr + data_len;
        if len > MAX_LEN_24 {
            self.too_large = true;
        }
        let f = (flag_bits & flags::M) | if vendor_id.is_some() { flags::V } else { 0 };
        let l = (len as u32).to_be_bytes();
        self.buf.put(&code.to_be_bytes());
        self.buf.put(&[f, l[1], l[2], l[3]]);
        if let Some(v) = vendor_id {
            self.buf.put(&v.to_be_bytes());
        }
    }

    /// Appends an AVP from its parts. `flag_bits` contributes only M: V follows `vendor_id`
    /// and reserved bits are never sent.
    pub fn raw(
        &mut self,
        code: u32,
        flag_bits: u8,
        vendor_id: Option<u32>,
        data: &[u8],
    ) -> &mut Self {
        self.avp_header(code, flag_bits, vendor_id, data.len());
        self.buf.put(data);
        self.buf.put(&ZEROS[..pad4(data.len()) - data.len()]);
        self
    }

    /// Appends an AVP as received (code, flags' M bit, vendor and data of a view): used to
    /// round-trip AVPs this crate does not interpret.
    pub fn avp(&mut self, avp: &Avp<'_>) -> &mut Self {
        self.raw(avp.code(), avp.flags(), avp.vendor_id(), avp.data())
    }

    /// Appends `def` with raw data (OctetString, or already-encoded data of any type).
    pub fn octets(&mut self, def: &AvpDef, data: &[u8]) -> &mut Self {
        self.raw(def.code, def.flags, def.vendor(), data)
    }
    /// UTF8String, DiameterIdentity or DiameterURI.
    pub fn utf8(&mut self, def: &AvpDef, s: &str) -> &mut Self {
        self.octets(def, s.as_bytes())
    }
    /// Unsigned32.
    pub fn u32(&mut self, def: &AvpDef, v: u32) -> &mut Self {
        self.octets(def, &v.to_be_bytes())
    }
    /// Unsigned64.
    pub fn u64(&mut self, def: &AvpDef, v: u64) -> &mut Self {
        self.octets(def, &v.to_be_bytes())
    }
    /// Integer32 (and Enumerated).
    pub fn i32(&mut self, def: &AvpDef, v: i32) -> &mut Self {
        self.octets(def, &v.to_be_bytes())
    }
    /// Integer64.
    pub fn i64(&mut self, def: &AvpDef, v: i64) -> &mut Self {
        self.octets(def, &v.to_be_bytes())
    }
    /// Float32.
    pub fn f32(&mut self, def: &AvpDef, v: f32) -> &mut Self {
        self.octets(def, &v.to_be_bytes())
    }
    /// Float64.
    pub fn f64(&mut self, def: &AvpDef, v: f64) -> &mut Self {
        self.octets(def, &v.to_be_bytes())
    }
    /// Enumerated.
    pub fn enumerated(&mut self, def: &AvpDef, v: impl Into<i32>) -> &mut Self {
        self.i32(def, v.into())
    }
    /// Address with family 1 (IPv4) or 2 (IPv6).
    pub fn address(&mut self, def: &AvpDef, ip: IpAddr) -> &mut Self {
        match ip {
            IpAddr::V4(a) => {
                let o = a.octets();
                self.octets(def, &[0, 1, o[0], o[1], o[2], o[3]])
            }
            IpAddr::V6(a) => {
                let mut d = [0u8; 18];
                d[1] = 2;
                d[2..].copy_from_slice(&a.octets());
                self.octets(def, &d)
            }
        }
    }
    /// Time (NTP seconds, wrapping in 2036 as RFC 6733 says).
    pub fn time(&mut self, def: &AvpDef, t: SystemTime) -> &mut Self {
        self.u32(def, crate::avp::system_time_to_ntp(t))
    }

    /// Opens a Grouped AVP with explicit code, flags and vendor.
    pub fn begin_group_raw(&mut self, code: u32, flag_bits: u8, vendor_id: Option<u32>) -> Group {
        let start = self.buf.len();
        self.avp_header(code, flag_bits, vendor_id, 0);
        Group { start }
    }
    /// Opens a Grouped AVP; everything added until [`Self::end_group`] goes inside it.
    pub fn begin_group(&mut self, def: &AvpDef) -> Group {
        self.begin_group_raw(def.code, def.flags, def.vendor())
    }
    /// Closes a group: patches its length (children are already padded).
    pub fn end_group(&mut self, g: Group) -> &mut Self {
        let len = self.buf.len() - g.start;
        if len > MAX_LEN_24 {
            self.too_large = true;
        }
        let l = (len as u32).to_be_bytes();
        self.buf.patch(g.start + 5, &l[1..4]);
        self
    }
    /// A Grouped AVP whose children `f` adds.
    pub fn group(&mut self, def: &AvpDef, f: impl FnOnce(&mut Self)) -> &mut Self {
        let g = self.begin_group(def);
        f(self);
        self.end_group(g)
    }

    /// Appends a Failed-AVP (279) holding a copy of the offending (or missing) AVP.
    pub fn failed_avp(&mut self, f: &crate::error::FailedAvp) -> &mut Self {
        self.group(&crate::dict::FAILED_AVP, |b| {
            b.raw(f.code, f.flags, f.vendor_id, &f.data);
        })
    }

    /// Bytes written so far for this message.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }
    /// Never true: the header is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Patches the message length and returns it. `Err(TooLarge)` when the message or an
    /// AVP exceeded a 24-bit length (the bytes are then not a valid message).
    pub fn finish(self) -> Result<usize, Error> {
        let len = self.buf.len() - self.start;
        if self.too_large || !(HEADER_LEN..=MAX_LEN_24).contains(&len) {
            return Err(Error::TooLarge);
        }
        let l = (len as u32).to_be_bytes();
        self.buf.patch(self.start + 1, &l[1..4]);
        Ok(len)
    }
}

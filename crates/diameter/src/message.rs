//! The zero-copy message view: [`Message::parse`] checks the header against the bytes and
//! gives lazy access to the AVPs; nothing is copied or allocated.

use crate::avp::{Avp, AvpIter};
use crate::dict::AvpDef;
use crate::error::Error;
use crate::header::{HEADER_LEN, Header};

/// A Diameter message borrowed from a buffer (one whole message, as framed by
/// [`crate::frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    header: Header,
    bytes: &'a [u8],
}

impl<'a> Message<'a> {
    /// Checks the header (version 5011, length 5015, flags 3008) and that the declared
    /// length equals `bytes.len()` (5015). AVPs are checked lazily as they are walked.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let header = Header::parse(bytes)?;
        if header.length as usize != bytes.len() {
            return Err(Error::InvalidMessageLength(header.length));
        }
        Ok(Self { header, bytes })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// Command code.
    pub fn command_code(&self) -> u32 {
        self.header.command_code
    }
    /// Application-Id.
    pub fn application_id(&self) -> u32 {
        self.header.application_id
    }
    /// R bit.
    pub fn is_request(&self) -> bool {
        self.header.is_request()
    }
    /// The whole message.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// The AVP bytes after the header.
    pub fn body(&self) -> &'a [u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or(&[])
    }
    /// Lazy iterator over the top-level AVPs.
    pub fn avps(&self) -> AvpIter<'a> {
        AvpIter::new(self.body())
    }
    /// The first top-level AVP matching `def`.
    pub fn find(&self, def: &AvpDef) -> Result<Option<Avp<'a>>, Error> {
        self.avps().find(def)
    }
    /// Every top-level AVP matching `def`.
    pub fn find_all<'d>(
        &self,
        def: &'d AvpDef,
    ) -> impl Iterator<Item = Result<Avp<'a>, Error>> + use<'a, 'd> {
        self.avps().filter(move |a| match a {
            Ok(a) => a.is(def),
            Err(_) => true,
        })
    }
    /// Session-Id, if present.
    pub fn session_id(&self) -> Result<Option<&'a str>, Error> {
        self.find(&crate::dict::SESSION_ID)?
            .map(|a| a.as_utf8())
            .transpose()
    }
    /// Checks the framing of all AVPs, recursing into known Grouped AVPs (first error).
    pub fn validate(&self) -> Result<(), Error> {
        self.avps().validate()
    }
}

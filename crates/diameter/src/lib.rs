//! Diameter for IMS: the RFC 6733 codec, the base + Cx/Dx dictionary, typed Cx commands
//! (TS 29.229) and (in [`peer`]) the RFC 6733 peer state machine. Sans-io: no sockets, no
//! async runtime; tracing events only.
//!
//! # Why our own codec
//! diameter-rs 0.7 did not fit: its command-code and application-id enums are closed (a Cx
//! UAR fails with "unknown command code: 300", application 16777216 is unknown), its TCP
//! server panics on a message whose length field is 2 bytes, an unknown vendor AVP in a CER
//! closes the connection, its XML dictionary loader panics on bad input, and it has no peer
//! state machine. Its UAR encode+decode took ~1 µs: the floor this crate must beat.
//!
//! # Layers
//! - [`frame`]: is a whole message in this TCP buffer, and how long is it? Version ≠ 1 and
//!   bad lengths are connection-fatal errors ([`Error::is_connection_fatal`]).
//! - [`Message`]: zero-copy view over one message's bytes; [`Message::avps`] walks AVPs
//!   lazily ([`Avp`], [`AvpIter`]), [`Avp::grouped`] walks a Grouped AVP's children. Decoding
//!   never panics; every [`Error`] carries its Result-Code and, where due, the Failed-AVP.
//! - [`MessageBuilder`]: appends a message to a reusable `Vec<u8>` or `BytesMut`; Grouped
//!   AVPs by nesting, lengths patched in place, no allocation per AVP.
//! - [`dict`]: AVP definitions ([`dict::AvpDef`]), command codes, application ids,
//!   Result-Code / Experimental-Result-Code values, enumerations. [`AnswerResult`] keeps the
//!   two result namespaces apart (5001/5002 collide).
//! - [`cx`]: UAR/UAA, MAR/MAA, SAR/SAA, LIR/LIA, RTR/RTA, PPR/PPA as structs with `encode`
//!   and `decode` (requests checked for mandatory AVPs: 5005 + Failed-AVP).
//! - [`SessionIdGenerator`]: Session-Ids of the form `<host>;<hi32>;<lo32>` (optional `;opt`).
//!
//! # Example
//! ```
//! use ims_diameter::{dict, frame, Header, Message, MessageBuilder, DEFAULT_MAX_MESSAGE_LEN};
//!
//! // Build a DWR into a reusable buffer.
//! let mut buf = Vec::new();
//! let hdr = Header::request(dict::command::DEVICE_WATCHDOG, dict::APP_COMMON, false, 1, 2);
//! let mut b = MessageBuilder::new(&mut buf, &hdr);
//! b.utf8(&dict::ORIGIN_HOST, "icscf1.hims.net")
//!     .utf8(&dict::ORIGIN_REALM, "hims.net");
//! // Grouped AVPs nest; the group's length is patched when the closure returns.
//! b.group(&dict::VENDOR_SPECIFIC_APPLICATION_ID, |b| {
//!     b.u32(&dict::VENDOR_ID, dict::VENDOR_3GPP)
//!         .u32(&dict::AUTH_APPLICATION_ID, dict::APP_CX);
//! });
//! let len = b.finish()?;
//!
//! // Frame it from a stream buffer, then walk it without copying.
//! assert_eq!(frame(&buf, DEFAULT_MAX_MESSAGE_LEN)?, Some(len));
//! let msg = Message::parse(&buf[..len])?;
//! assert!(msg.is_request());
//! let host = msg.find(&dict::ORIGIN_HOST)?.map(|a| a.as_identity()).transpose()?;
//! assert_eq!(host, Some("icscf1.hims.net"));
//! for avp in msg.avps() {
//!     let avp = avp?;
//!     if avp.is(&dict::VENDOR_SPECIFIC_APPLICATION_ID) {
//!         for child in avp.grouped() {
//!             let child = child?;
//!             assert!(child.as_u32().is_ok());
//!         }
//!     }
//! }
//! # Ok::<(), ims_diameter::Error>(())
//! ```

pub mod avp;
pub mod builder;
pub mod cx;
pub mod dict;
pub mod error;
pub mod header;
pub mod message;
pub mod peer;
pub mod result;
pub mod session;

pub use avp::{Address, Avp, AvpIter};
pub use builder::{Buffer, Group, MessageBuilder};
pub use error::{Error, FailedAvp};
pub use header::{DEFAULT_MAX_MESSAGE_LEN, HEADER_LEN, Header, frame};
pub use message::Message;
pub use result::AnswerResult;
pub use session::SessionIdGenerator;

#[cfg(test)]
mod tests;

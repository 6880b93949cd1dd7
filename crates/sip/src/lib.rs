//! SIP for IMS: the message layer (zero-copy parse, typed views, edits, serialization),
//! URIs, and RFC 3261 transactions (sans-io). No sockets and no async runtime here: the
//! `net` crate drives it.
//!
//! # Why our own
//! rsip 0.4 fails on IMS traffic: `tel:` URIs ("number too large"), IPv6 hosts in
//! Request-URI, Via and Contact, `+sip.instance="<urn:gsma:imei:...>"`, `algorithm=AKAv1-MD5`;
//! it ignores Content-Length (two REGISTERs back to back parse as one), accepts truncated
//! messages, mangles binary bodies, does not know compact forms or folded lines, and takes
//! about 8 µs to parse and serialize an 870-byte REGISTER. rsipstack 0.7 fixes much of that
//! but rejects AKAv1-MD5, rewrites reason phrases (494 "Security Agreement Required" goes
//! out as "SecurityAgreementRequired"), silently drops every header after a non-UTF-8 byte
//! or a line without a colon, and runs at about 300k messages/s.
//!
//! # Design
//! - [`Message`] indexes the received `Bytes` (start line, one entry per header line, the
//!   body); nothing is copied or allocated per header. Values are bytes; typed views read
//!   them as text on demand, so one bad header never hides the others.
//! - Names: known headers are [`HeaderName`] variants (compact forms included), compared as
//!   integers; others by bytes, case-insensitively.
//! - Edits go to a per-message arena; unedited lines serialize exactly as received, so a
//!   proxy forwards what it did not touch byte for byte (reason phrases, folds, spacing).
//!   Lines: [`Message::prepend_header`] (a new top Via, a first Path),
//!   [`Message::pop_first_value`] (our Via, the first Route), [`Message::replace_value_at`],
//!   [`Message::set_header`], [`Message::remove_headers`], [`Message::set_body`]; parameters
//!   inside a value: [`text::set_param`] / [`text::remove_param`] (Via `received`/`rport`,
//!   `tag`), [`Auth::with`] / [`Auth::without`] (`ck`, `ik`, `integrity-protected`).
//! - [`headers`]: typed views (Via, NameAddr, Contact, CSeq, Auth, SecMechanism, ...).
//! - [`Uri`]: sip/sips/tel/urn/other, borrowing.
//! - [`frame`]: stream framing by Content-Length; [`Message::parse`] for datagrams.
//! - [`transaction`]: RFC 3261 §17 state machines fed with events and the time.
//!
//! # Example
//! ```
//! use ims_sip::{HeaderName, Message};
//! let raw = "REGISTER sip:hims.net SIP/2.0\r\n\
//!     Via: SIP/2.0/UDP [2001:db8::2]:5060;branch=z9hG4bK1;rport\r\n\
//!     From: <sip:alice@hims.net>;tag=a1\r\nTo: <sip:alice@hims.net>\r\n\
//!     Call-ID: c1\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n\
//!     Contact: <sip:alice@[2001:db8::2]:5060>;expires=600\r\nl: 0\r\n\r\n";
//! let mut m = Message::parse(bytes::Bytes::from_static(raw.as_bytes()))?;
//! m.check_request()?;
//! assert_eq!(m.top_via()?.branch(), Some("z9hG4bK1"));
//! assert_eq!(m.from_addr()?.tag(), Some("a1"));
//! // A P-CSCF adds its Via and Path, then forwards.
//! m.prepend_header("Via", "SIP/2.0/UDP pcscf1.vims.net;branch=z9hG4bKp1")?;
//! m.prepend_header("Path", "<sip:term@pcscf1.vims.net;lr>")?;
//! let wire = m.to_bytes();
//! let again = Message::parse(wire)?;
//! assert_eq!(again.vias().count(), 2);
//! assert!(again.header(HeaderName::Path).is_some());
//! # Ok::<(), ims_sip::Error>(())
//! ```

pub mod builder;
pub mod error;
pub mod headers;
pub mod message;
pub mod method;
pub mod name;
pub mod text;
pub mod transaction;
pub mod uri;

pub use builder::{RequestBuilder, ack_for, cancel_for, error_response, response_to};
pub use error::{Error, Result};
pub use headers::{
    AccessNetworkInfo, Auth, CSeq, ChargingVector, Contact, NameAddr, SecMechanism, Via,
};
pub use message::{DEFAULT_MAX_MESSAGE_LEN, Frame, HeaderRef, Message, frame};
pub use method::Method;
pub use name::HeaderName;
pub use uri::{Host, SipUri, TelUri, Uri, UrnUri};

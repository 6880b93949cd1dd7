//! Message-layer errors. Each names the SIP status code a server answers with
//! ([`Error::status`]): a malformed request gets a 400 with a reason phrase that says what was
//! wrong ([`Error::reason`]), an oversized one 513; malformed responses are dropped (RFC 3261
//! §18.1.2), which the caller decides from [`crate::Message::is_request`] never having run.

use std::fmt;

/// Why a message, header or URI could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The bytes end before the message does (datagram: truncated; stream: need more).
    Incomplete,
    /// The start line is not `Method SP Request-URI SP SIP/2.0` nor `SIP/2.0 SP code SP reason`.
    BadStartLine(&'static str),
    /// The protocol version is not SIP/2.0.
    BadVersion,
    /// A header line has no colon, an empty or non-token name, or a stray continuation.
    BadHeaderLine(&'static str),
    /// Content-Length is missing where needed, not a number, repeated with other values, or
    /// larger than the data received.
    BadContentLength(&'static str),
    /// The message exceeds the configured maximum size.
    TooLarge,
    /// A header value does not follow its grammar; names the header.
    BadHeader {
        /// Header name as we know it (canonical form).
        name: &'static str,
        /// What was wrong.
        why: &'static str,
    },
    /// A header the operation needs is not present.
    MissingHeader(&'static str),
    /// A URI does not follow its grammar.
    BadUri(&'static str),
}

impl Error {
    /// The SIP status a server answers a request that failed this way with.
    pub fn status(&self) -> u16 {
        match self {
            Error::TooLarge => 513,
            Error::BadVersion => 505,
            Error::BadUri(_) => 400,
            _ => 400,
        }
    }

    /// A reason phrase for that answer that names the problem (RFC 3261 §21.4.1 allows any).
    pub fn reason(&self) -> String {
        match self {
            Error::TooLarge => "Message Too Large".into(),
            Error::BadVersion => "Version Not Supported".into(),
            other => format!("Bad Request ({other})"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Incomplete => f.write_str("message incomplete"),
            Error::BadStartLine(w) => write!(f, "bad start line: {w}"),
            Error::BadVersion => f.write_str("SIP version is not SIP/2.0"),
            Error::BadHeaderLine(w) => write!(f, "bad header line: {w}"),
            Error::BadContentLength(w) => write!(f, "bad Content-Length: {w}"),
            Error::TooLarge => f.write_str("message too large"),
            Error::BadHeader { name, why } => write!(f, "bad {name} header: {why}"),
            Error::MissingHeader(n) => write!(f, "missing {n} header"),
            Error::BadUri(w) => write!(f, "bad URI: {w}"),
        }
    }
}

impl std::error::Error for Error {}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

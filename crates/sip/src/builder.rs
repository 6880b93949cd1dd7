//! Building messages: requests from parts ([`RequestBuilder`]) and a response to a request
//! ([`response_to`], RFC 3261 §8.2.6). Both write the text once and parse it, so what comes
//! out is an ordinary [`Message`] with the same guarantees as a received one.

use crate::error::{Error, Result};
use crate::message::Message;
use crate::name::HeaderName;
use bytes::Bytes;

/// Builds a request line by line. Content-Length is added by [`RequestBuilder::build`].
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    buf: Vec<u8>,
    body: Vec<u8>,
    error: Option<Error>,
}

impl RequestBuilder {
    /// Starts `METHOD uri SIP/2.0`.
    pub fn new(method: &str, uri: &str) -> RequestBuilder {
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(method.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(uri.as_bytes());
        buf.extend_from_slice(b" SIP/2.0\r\n");
        RequestBuilder {
            buf,
            body: Vec::new(),
            error: None,
        }
    }

    /// Adds a header line (CR/LF in the value is refused at build time).
    pub fn header(mut self, name: &str, value: &str) -> RequestBuilder {
        if value.bytes().any(|b| b == b'\r' || b == b'\n') && self.error.is_none() {
            self.error = Some(Error::BadHeader {
                name: HeaderName::from_bytes(name.as_bytes()).as_str(),
                why: "CR or LF in a value",
            });
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// Sets the body and its Content-Type.
    pub fn body(self, content_type: &str, body: &[u8]) -> RequestBuilder {
        let mut b = self.header("Content-Type", content_type);
        b.body = body.to_vec();
        b
    }

    /// Adds Content-Length and parses the result.
    pub fn build(mut self) -> Result<Message> {
        if let Some(e) = self.error {
            return Err(e);
        }
        self.buf
            .extend_from_slice(format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes());
        self.buf.extend_from_slice(&self.body);
        Message::parse(Bytes::from(self.buf))
    }
}

/// A response to `req`: its Via lines, From, To (with `to_tag` added when To has no tag),
/// Call-ID and CSeq, `Content-Length: 0`. Add other headers with the edit methods. Fails
/// when one of those headers is missing; [`error_response`] answers such requests.
pub fn response_to(
    req: &Message,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
) -> Result<Message> {
    build_response(req, status, reason, to_tag, false)
}

/// Like [`response_to`], for answering a broken request (a 400 to a request without Call-ID,
/// say): the headers that are missing or unreadable are left out instead of failing. It still
/// needs a Via, or there is nowhere to send the response.
pub fn error_response(
    req: &Message,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
) -> Result<Message> {
    build_response(req, status, reason, to_tag, true)
}

fn build_response(
    req: &Message,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
    lenient: bool,
) -> Result<Message> {
    if !req.is_request() {
        return Err(Error::BadStartLine("not a request"));
    }
    if !(100..=699).contains(&status) || reason.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(Error::BadStartLine("bad status or reason"));
    }
    if req.header(HeaderName::Via).is_none() {
        return Err(Error::MissingHeader("Via"));
    }
    let mut out = Vec::with_capacity(req.serialized_len() / 2 + 64);
    out.extend_from_slice(format!("SIP/2.0 {status} {reason}\r\n").as_bytes());
    let mut line = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    for h in req.headers_named(HeaderName::Via) {
        line(b"Via", h.value);
    }
    let missing = |name: &'static str| {
        if lenient {
            Ok(None)
        } else {
            Err(Error::MissingHeader(name))
        }
    };
    let from = match req.header(HeaderName::From) {
        Some(h) => Some(h),
        None => missing("From")?,
    };
    if let Some(from) = from {
        line(b"From", from.value);
    }
    let to = match req.header(HeaderName::To) {
        Some(h) => Some(h),
        None => missing("To")?,
    };
    if let Some(to) = to {
        let untagged = match req.to_addr() {
            Ok(t) => t.tag().is_none(),
            Err(e) if lenient => {
                let _ = e;
                false
            }
            Err(e) => return Err(e),
        };
        match to_tag {
            Some(tag) if untagged => {
                let mut v = to.value.to_vec();
                v.extend_from_slice(b";tag=");
                v.extend_from_slice(tag.as_bytes());
                line(b"To", &v);
            }
            _ => line(b"To", to.value),
        }
    }
    for (name, text) in [(HeaderName::CallId, "Call-ID"), (HeaderName::CSeq, "CSeq")] {
        match req.header(name) {
            Some(h) => line(text.as_bytes(), h.value),
            None => {
                missing(text)?;
            }
        }
    }
    line(b"Content-Length", b"0");
    out.extend_from_slice(b"\r\n");
    Message::parse(Bytes::from(out))
}

/// The ACK a client transaction sends for a 300-699 final response to `invite` (RFC 3261
/// §17.1.1.3): the INVITE's Request-URI, top Via (the one the response matched), From,
/// Call-ID, CSeq number and Route set, with the response's To (its tag).
pub fn ack_for(invite: &Message, response: &Message) -> Result<Message> {
    same_transaction("ACK", invite, header_value(response, HeaderName::To, "To")?)
}

/// The CANCEL for `invite` as it was sent (RFC 3261 §9.1): the same Request-URI, top Via
/// (so the same branch), From, To, Call-ID, CSeq number and Route set.
pub fn cancel_for(invite: &Message) -> Result<Message> {
    same_transaction(
        "CANCEL",
        invite,
        header_value(invite, HeaderName::To, "To")?,
    )
}

/// `method` on the INVITE transaction of `invite`: its Request-URI, top Via, From, Call-ID,
/// CSeq number and Route set, with `to`.
fn same_transaction(method: &str, invite: &Message, to: &str) -> Result<Message> {
    let uri = invite
        .request_uri_str()
        .ok_or(Error::BadStartLine("not a request"))?;
    let via = invite
        .values(HeaderName::Via)
        .next()
        .ok_or(Error::MissingHeader("Via"))??;
    let seq = invite.cseq()?.seq;
    let mut b = RequestBuilder::new(method, uri)
        .header("Via", via)
        .header("Max-Forwards", "70")
        .header("From", header_value(invite, HeaderName::From, "From")?)
        .header("To", to)
        .header(
            "Call-ID",
            header_value(invite, HeaderName::CallId, "Call-ID")?,
        )
        .header("CSeq", &format!("{seq} {method}"));
    for r in invite.headers_named(HeaderName::Route) {
        b = b.header("Route", r.value_str()?);
    }
    b.build()
}

fn header_value<'m>(m: &'m Message, name: HeaderName, label: &'static str) -> Result<&'m str> {
    m.header(name)
        .ok_or(Error::MissingHeader(label))?
        .value_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_answer() {
        let req = RequestBuilder::new("REGISTER", "sip:hims.net")
            .header("Via", "SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1")
            .header("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK0")
            .header("From", "<sip:alice@hims.net>;tag=a")
            .header("To", "<sip:alice@hims.net>")
            .header("Call-ID", "x")
            .header("CSeq", "1 REGISTER")
            .header("Max-Forwards", "70")
            .build()
            .unwrap();
        req.check_request().unwrap();
        let r = response_to(&req, 401, "Unauthorized", Some("s1")).unwrap();
        assert_eq!(r.status(), Some(401));
        assert_eq!(r.vias().count(), 2);
        assert_eq!(r.to_addr().unwrap().tag(), Some("s1"));
        assert_eq!(r.cseq().unwrap().seq, 1);
        r.check_response().unwrap();
        assert!(
            RequestBuilder::new("X", "sip:a")
                .header("A", "b\r\nC: d")
                .build()
                .is_err()
        );
        // A request without Call-ID and CSeq still gets its 400.
        let broken = Message::parse(Bytes::from_static(
            b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:b>;tag=1\r\nTo: <sip:a>\r\n\r\n",
        ))
        .unwrap();
        assert!(response_to(&broken, 400, "Bad Request", None).is_err());
        let r = error_response(&broken, 400, "Bad Request", Some("x")).unwrap();
        assert_eq!(r.status(), Some(400));
        assert_eq!(r.to_addr().unwrap().tag(), Some("x"));
        assert!(r.header(HeaderName::CallId).is_none());
    }
    #[test]
    fn ack_and_cancel_of_an_invite() {
        let invite = RequestBuilder::new("INVITE", "sip:bob@10.0.0.9:5060")
            .header("Via", "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK.x;rport")
            .header("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK0")
            .header("Route", "<sip:p.hims.net;lr>")
            .header("From", "<sip:alice@hims.net>;tag=a")
            .header("To", "<sip:bob@hims.net>")
            .header("Call-ID", "c1")
            .header("CSeq", "7 INVITE")
            .header("Max-Forwards", "69")
            .body("application/sdp", b"v=0\r\n")
            .build()
            .unwrap();
        let busy = response_to(&invite, 486, "Busy Here", Some("b")).unwrap();
        let ack = ack_for(&invite, &busy).unwrap();
        ack.check_request().unwrap();
        assert_eq!(ack.method(), Some(crate::Method::Ack));
        assert_eq!(ack.request_uri_str(), Some("sip:bob@10.0.0.9:5060"));
        assert_eq!(ack.vias().count(), 1);
        assert_eq!(ack.top_via().unwrap().branch(), Some("z9hG4bK.x"));
        assert_eq!(ack.to_addr().unwrap().tag(), Some("b"));
        assert_eq!(ack.cseq().unwrap().seq, 7);
        assert_eq!(ack.values(HeaderName::Route).count(), 1);
        assert!(ack.body().is_empty());
        let cancel = cancel_for(&invite).unwrap();
        cancel.check_request().unwrap();
        assert_eq!(cancel.cseq().unwrap().method, crate::Method::Cancel);
        assert_eq!(cancel.top_via().unwrap().branch(), Some("z9hG4bK.x"));
        assert_eq!(cancel.to_addr().unwrap().tag(), None);
        assert!(ack_for(&busy, &busy).is_err(), "a response is no INVITE");
    }
}

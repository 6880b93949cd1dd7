//! Building the registrar's responses: [`respond`] answers a request with a status, a To tag
//! (RFC 3261 §8.2.6.2) and any extra headers, and never fails: when the request is too
//! broken for [`ims_sip::response_to`] (no From, say) it copies whatever Via, From, To,
//! Call-ID and CSeq lines there are. [`http_date`] writes the `Date` header (RFC 3261
//! §20.17, the RFC 1123 form in GMT).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ims_sip::{HeaderName, Message};

/// A random To tag (64 bits of the system CSPRNG, hex).
pub fn new_tag(rng: &ring::rand::SystemRandom) -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if rng.fill(&mut b).is_err() {
        // The system RNG failing is no reason to leave the response untagged: a tag only has
        // to be unique, and the clock is.
        let n = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = n.to_be_bytes();
    }
    hex::encode(b)
}

/// The response to `req` with `status`/`reason`, a To tag and `headers` appended in order.
pub fn respond(
    req: &Message,
    status: u16,
    reason: &str,
    tag: &str,
    headers: &[(&str, String)],
) -> Message {
    let mut resp = match ims_sip::response_to(req, status, reason, Some(tag)) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, status, "request too broken for a normal response");
            bare(req, status, reason)
        }
    };
    // Above Content-Length, which response_to writes last.
    let mut at = resp
        .header(HeaderName::ContentLength)
        .map_or(usize::MAX, |h| h.index);
    for (name, value) in headers {
        let r = resp.insert_header(at, name, value);
        at = at.saturating_add(1);
        if let Err(e) = r {
            tracing::warn!(header = *name, error = %e, "header left out of the response");
        }
    }
    resp
}

/// A response copying only the lines that exist.
fn bare(req: &Message, status: u16, reason: &str) -> Message {
    let reason: String = reason
        .chars()
        .filter(|c| *c != '\r' && *c != '\n')
        .collect();
    let mut out = format!("SIP/2.0 {status} {reason}\r\n").into_bytes();
    for name in [
        HeaderName::Via,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::CSeq,
    ] {
        for h in req.headers_named(name) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    match Message::parse(Bytes::from(out)) {
        Ok(m) => m,
        Err(_) => last_resort(status),
    }
}

/// A status line and nothing else: what is left when even the copied lines do not parse.
fn last_resort(status: u16) -> Message {
    let text = match status {
        400 => "SIP/2.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        _ => "SIP/2.0 500 Server Internal Error\r\nContent-Length: 0\r\n\r\n",
    };
    #[allow(clippy::expect_used)]
    // A constant status line that parses (unit test `last_resort_parses`); not network input.
    Message::parse(Bytes::from_static(text.as_bytes())).expect("constant response parses")
}

/// `Date` value for `t`: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let (y, mo, d) = ims_net::clock::civil_from_days(days);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(mo - 1) as usize];
    format!("{weekday}, {d:02} {month} {y} {h:02}:{m:02}:{s:02} GMT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn last_resort_parses() {
        assert_eq!(last_resort(400).status(), Some(400));
        assert_eq!(last_resort(500).status(), Some(500));
    }

    #[test]
    fn broken_requests_still_get_an_answer() {
        let req = Message::parse(Bytes::from_static(
            b"REGISTER sip:hims.net SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n",
        ))
        .unwrap();
        let r = respond(&req, 400, "Bad Request (missing From header)", "t", &[]);
        assert_eq!(r.status(), Some(400));
        assert_eq!(r.vias().count(), 1);
        assert_eq!(r.call_id().unwrap(), "x");
    }
}

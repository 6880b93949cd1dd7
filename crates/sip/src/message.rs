//! The SIP message: framing, zero-copy parse, header access, edits and serialization.
//!
//! A [`Message`] keeps the received bytes (`Bytes`, shared, never copied) and an index of
//! spans into them: the start line, one entry per header line (name, whole line, value) and
//! the body. Nothing is allocated per header: the index is one `Vec` per message. Header
//! values are bytes (a non-UTF-8 byte in one header does not hide the others); typed views
//! ([`crate::headers`]) read them as text and fail for that header only.
//!
//! Edits (push a Via, insert a Path, pop a Route, replace a value, set the body) write the new
//! lines into a small per-message arena and re-point the index; untouched lines are never
//! rewritten, so a message that was not edited serializes byte for byte as it came,
//! including folded lines and unusual spacing. Serialization copies slices, no formatting.
//!
//! Framing (RFC 3261 §18.3): on a stream, [`frame`] finds where the first message ends from
//! Content-Length (absent means 0); in a datagram ([`Message::parse`]) Content-Length cuts
//! the body and anything after it is dropped; a Content-Length larger than what arrived is a
//! truncated message and an error. CRLFs before a message are keepalives (RFC 5626 §3.5.1).

use crate::error::{Error, Result};
use crate::method::Method;
use crate::name::HeaderName;
use crate::text;
use bytes::Bytes;
use memchr::memchr;

/// Largest message we accept by default (a stream buffer never grows beyond it).
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 65_535;

/// What [`frame`] found at the start of a stream buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet.
    Incomplete,
    /// `n` bytes of CRLF keepalive to consume (a double CRLF ping wants a CRLF pong).
    Keepalive(usize),
    /// A whole message of this many bytes (head and body).
    Message(usize),
}

/// Finds the first message in a stream buffer. Errors are stream-fatal: the connection
/// cannot be resynchronised after a bad Content-Length or an oversized head.
pub fn frame(buf: &[u8], max_len: usize) -> Result<Frame> {
    let skip = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if skip > 0 {
        return Ok(Frame::Keepalive(skip));
    }
    let mut found: Option<usize> = None;
    let Some(first) = find_crlf(buf, 0) else {
        return incomplete_or_too_large(buf, max_len);
    };
    let mut p = first + 2;
    let body_start = loop {
        let Some(eol) = find_crlf(buf, p) else {
            return incomplete_or_too_large(buf, max_len);
        };
        if eol == p {
            break p + 2;
        }
        let line = &buf[p..eol];
        if let Some(colon) = memchr(b':', line)
            && !matches!(line[0], b' ' | b'\t')
            && HeaderName::from_bytes(trim_ws_end(&line[..colon])) == HeaderName::ContentLength
        {
            // The value may continue on folded lines.
            let mut end = eol;
            while matches!(buf.get(end + 2), Some(b' ' | b'\t')) {
                match find_crlf(buf, end + 2) {
                    Some(e) => end = e,
                    None => return incomplete_or_too_large(buf, max_len),
                }
            }
            let v = parse_content_length(&buf[p + colon + 1..end])?;
            if found.is_some_and(|f| f != v) {
                return Err(Error::BadContentLength("repeated with different values"));
            }
            found = Some(v);
        }
        p = eol + 2;
    };
    let total = body_start
        .checked_add(found.unwrap_or(0))
        .ok_or(Error::TooLarge)?;
    if total > max_len {
        return Err(Error::TooLarge);
    }
    if buf.len() < total {
        return Ok(Frame::Incomplete);
    }
    Ok(Frame::Message(total))
}

fn incomplete_or_too_large(buf: &[u8], max_len: usize) -> Result<Frame> {
    if buf.len() > max_len {
        Err(Error::TooLarge)
    } else {
        Ok(Frame::Incomplete)
    }
}

/// Position of the next CRLF at or after `from` (a bare LF is not a line end).
#[inline]
fn find_crlf(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let lf = find_lf(b, i)?;
        if lf > from && b[lf - 1] == b'\r' {
            return Some(lf - 1);
        }
        i = lf + 1;
    }
}

/// The next LF at or after `from`.
#[inline]
fn find_lf(b: &[u8], from: usize) -> Option<usize> {
    find_byte::<b'\n'>(b, from)
}

/// The next `B` at or after `from`. Header lines are short (tens of bytes), so an inlined
/// word-at-a-time scan beats a call into a SIMD routine per line.
#[inline]
fn find_byte<const B: u8>(b: &[u8], from: usize) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = u64::from(B) * LO;
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w) ^ pattern;
        // Exact for the lowest zero byte: borrows only run upward from a zero byte.
        let t = x.wrapping_sub(LO) & !x & HI;
        if t != 0 {
            return Some(i + (t.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b.get(i..)?.iter().position(|&c| c == B).map(|p| i + p)
}

fn parse_content_length(v: &[u8]) -> Result<usize> {
    let v = trim_lws(v);
    if v.is_empty() || v.len() > 9 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Error::BadContentLength("not a small non-negative number"));
    }
    Ok(v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
}

fn trim_ws_end(b: &[u8]) -> &[u8] {
    let mut e = b.len();
    while e > 0 && matches!(b[e - 1], b' ' | b'\t') {
        e -= 1;
    }
    &b[..e]
}

fn trim_lws(b: &[u8]) -> &[u8] {
    let mut s = 0;
    let mut e = b.len();
    while s < e && text::is_lws(b[s]) {
        s += 1;
    }
    while e > s && text::is_lws(b[e - 1]) {
        e -= 1;
    }
    &b[s..e]
}

/// A span of one of the message's two buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        // Messages are capped far below 4 GiB (frame / parse check the length first).
        Span {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            end: u32::try_from(end).unwrap_or(u32::MAX),
        }
    }
    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// One header line in the index.
#[derive(Debug, Clone, Copy)]
struct Entry {
    name: HeaderName,
    /// The line lives in the edit arena, not in the received bytes.
    arena: bool,
    /// The header's name as written.
    name_span: Span,
    /// The whole line from the name to just before the final CRLF (folds included).
    line: Span,
    /// The value, trimmed of linear whitespace.
    value: Span,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Request {
        method: Method,
        method_span: Span,
        uri: Span,
    },
    Response {
        status: u16,
        reason: Span,
    },
}

#[derive(Debug, Clone)]
enum Body {
    Received(Span),
    Owned(Bytes),
}

/// A SIP request or response. See the module docs.
#[derive(Clone)]
pub struct Message {
    buf: Bytes,
    arena: Vec<u8>,
    start_in_arena: bool,
    /// Any edit since parse (the received bytes are no longer the message).
    edited: bool,
    start_line: Span,
    kind: Kind,
    entries: Vec<Entry>,
    body: Body,
}

/// A header line as read from a message.
#[derive(Debug, Clone, Copy)]
pub struct HeaderRef<'a> {
    /// The name, when known.
    pub name: HeaderName,
    /// The name as written.
    pub name_bytes: &'a [u8],
    /// The value (linear whitespace trimmed at both ends; folds inside are kept).
    pub value: &'a [u8],
    /// Position in the header list (for [`Message::replace_value_at`] and friends).
    pub index: usize,
}

impl<'a> HeaderRef<'a> {
    /// The value as text; names the header when it is not UTF-8.
    pub fn value_str(&self) -> Result<&'a str> {
        std::str::from_utf8(self.value).map_err(|_| Error::BadHeader {
            name: self.name.as_str(),
            why: "not UTF-8",
        })
    }

    /// The name as text (names are tokens, so always ASCII).
    pub fn name_str(&self) -> &'a str {
        std::str::from_utf8(self.name_bytes).unwrap_or("")
    }
}

impl Message {
    /// Parses one message from a datagram (or an already framed stream message).
    pub fn parse(data: Bytes) -> Result<Message> {
        Self::parse_with_limit(data, DEFAULT_MAX_MESSAGE_LEN)
    }

    /// [`Message::parse`] with a size cap of `max_len` bytes.
    pub fn parse_with_limit(data: Bytes, max_len: usize) -> Result<Message> {
        let skip = data
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if data.len() - skip > max_len || data.len() > u32::MAX as usize / 2 {
            return Err(Error::TooLarge);
        }
        let data = if skip > 0 { data.slice(skip..) } else { data };
        let b: &[u8] = &data;

        // Start line.
        let sl_end = find_crlf(b, 0).ok_or(Error::Incomplete)?;
        let start_line = Span::new(0, sl_end);
        let kind = parse_start_line(b, sl_end)?;

        // Header lines, up to the empty line.
        let mut entries: Vec<Entry> = Vec::with_capacity(24);
        let mut p = sl_end + 2;
        let mut content_length: Option<usize> = None;
        let body_start = loop {
            let eol = find_crlf(b, p).ok_or(Error::Incomplete)?;
            if eol == p {
                break p + 2;
            }
            let line = &b[p..eol];
            if matches!(line[0], b' ' | b'\t') {
                let Some(prev) = entries.last_mut() else {
                    return Err(Error::BadHeaderLine(
                        "continuation line before the first header",
                    ));
                };
                prev.line.end = Span::new(0, eol).end;
                prev.value.end = prev.line.end;
            } else {
                if let Some(prev) = entries.last_mut() {
                    finish_value(b, prev);
                }
                // Name: up to the colon, trailing SP/HT allowed. A known name is a token by
                // construction; only unknown ones are checked byte by byte.
                let colon = find_byte::<b':'>(line, 0).ok_or(Error::BadHeaderLine("no colon"))?;
                let name = trim_ws_end(&line[..colon]);
                let hn = HeaderName::from_bytes(name);
                if name.is_empty()
                    || (hn == HeaderName::Other && !name.iter().all(|&c| text::is_token_byte(c)))
                {
                    return Err(Error::BadHeaderLine("header name is not a token"));
                }
                entries.push(Entry {
                    name: hn,
                    arena: false,
                    name_span: Span::new(p, p + name.len()),
                    line: Span::new(p, eol),
                    value: Span::new(p + colon + 1, eol),
                });
            }
            p = eol + 2;
        };
        if let Some(prev) = entries.last_mut() {
            finish_value(b, prev);
        }
        for e in entries
            .iter()
            .filter(|e| e.name == HeaderName::ContentLength)
        {
            let v = parse_content_length(&b[e.value.range()])?;
            if content_length.is_some_and(|c| c != v) {
                return Err(Error::BadContentLength("repeated with different values"));
            }
            content_length = Some(v);
        }
        let body_end = match content_length {
            Some(cl) => {
                let end = body_start
                    .checked_add(cl)
                    .ok_or(Error::BadContentLength("too large"))?;
                if end > b.len() {
                    return Err(Error::BadContentLength("larger than the data received"));
                }
                end
            }
            None => b.len(),
        };
        let data = if body_end < data.len() {
            data.slice(..body_end)
        } else {
            data
        };
        Ok(Message {
            buf: data,
            arena: Vec::new(),
            start_in_arena: false,
            edited: false,
            start_line,
            kind,
            entries,
            body: Body::Received(Span::new(body_start, body_end)),
        })
    }

    fn bytes(&self, arena: bool, s: Span) -> &[u8] {
        let src: &[u8] = if arena { &self.arena } else { &self.buf };
        src.get(s.range()).unwrap_or_default()
    }

    fn str_at(&self, arena: bool, s: Span) -> &str {
        std::str::from_utf8(self.bytes(arena, s)).unwrap_or("")
    }

    // ----- start line -----

    /// True for a request.
    pub fn is_request(&self) -> bool {
        matches!(self.kind, Kind::Request { .. })
    }

    /// The request method (`None` for a response). For [`Method::Other`] see
    /// [`Message::method_str`].
    pub fn method(&self) -> Option<Method> {
        match self.kind {
            Kind::Request { method, .. } => Some(method),
            Kind::Response { .. } => None,
        }
    }

    /// The request method as written.
    pub fn method_str(&self) -> Option<&str> {
        match self.kind {
            Kind::Request { method_span, .. } => {
                Some(self.str_at(self.start_in_arena, method_span))
            }
            Kind::Response { .. } => None,
        }
    }

    /// The Request-URI text (requests only; it is ASCII, checked at parse).
    pub fn request_uri_str(&self) -> Option<&str> {
        match self.kind {
            Kind::Request { uri, .. } => Some(self.str_at(self.start_in_arena, uri)),
            Kind::Response { .. } => None,
        }
    }

    /// The Request-URI, parsed.
    pub fn request_uri(&self) -> Result<crate::Uri<'_>> {
        let s = self
            .request_uri_str()
            .ok_or(Error::BadStartLine("not a request"))?;
        crate::Uri::parse(s)
    }

    /// The status code (responses only).
    pub fn status(&self) -> Option<u16> {
        match self.kind {
            Kind::Response { status, .. } => Some(status),
            Kind::Request { .. } => None,
        }
    }

    /// The reason phrase exactly as received (responses only).
    pub fn reason(&self) -> Option<&[u8]> {
        match self.kind {
            Kind::Response { reason, .. } => Some(self.bytes(self.start_in_arena, reason)),
            Kind::Request { .. } => None,
        }
    }

    /// The start line without its CRLF.
    pub fn start_line(&self) -> &[u8] {
        self.bytes(self.start_in_arena, self.start_line)
    }

    // ----- headers -----

    fn header_ref(&self, index: usize, e: &Entry) -> HeaderRef<'_> {
        HeaderRef {
            name: e.name,
            name_bytes: self.bytes(e.arena, e.name_span),
            value: self.bytes(e.arena, e.value),
            index,
        }
    }

    /// Every header line, in order.
    pub fn headers(&self) -> impl Iterator<Item = HeaderRef<'_>> + '_ {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| self.header_ref(i, e))
    }

    /// Number of header lines.
    pub fn header_count(&self) -> usize {
        self.entries.len()
    }

    /// Every line of a known header, in order.
    pub fn headers_named(&self, name: HeaderName) -> impl Iterator<Item = HeaderRef<'_>> + '_ {
        self.headers().filter(move |h| h.name == name)
    }

    /// The first line of a known header.
    pub fn header(&self, name: HeaderName) -> Option<HeaderRef<'_>> {
        self.headers_named(name).next()
    }

    /// Every line of a header given by name (any spelling; compact forms of known names
    /// match too).
    pub fn headers_by_name<'s>(
        &'s self,
        name: &'s str,
    ) -> impl Iterator<Item = HeaderRef<'s>> + 's {
        let known = HeaderName::from_bytes(name.as_bytes());
        self.headers().filter(move |h| {
            if known != HeaderName::Other {
                h.name == known
            } else {
                h.name == HeaderName::Other && h.name_bytes.eq_ignore_ascii_case(name.as_bytes())
            }
        })
    }

    /// The first value of a header as text (`None` when absent or not UTF-8).
    pub fn header_str(&self, name: HeaderName) -> Option<&str> {
        self.header(name).and_then(|h| h.value_str().ok())
    }

    /// Every comma-separated value of a list header, across all its lines, as text. A line
    /// that is not UTF-8 yields an error item.
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = Result<&str>> + '_ {
        self.headers_named(name).flat_map(|h| {
            let (ok, err) = match h.value_str() {
                Ok(v) => (Some(text::split_commas(v)), None),
                Err(e) => (None, Some(Err(e))),
            };
            ok.into_iter().flatten().map(Ok).chain(err)
        })
    }

    // ----- body -----

    /// The body (exactly Content-Length bytes, or the rest of the datagram).
    pub fn body(&self) -> &[u8] {
        match &self.body {
            Body::Received(s) => self.buf.get(s.range()).unwrap_or_default(),
            Body::Owned(b) => b,
        }
    }

    /// The body as a shared `Bytes` (no copy).
    pub fn body_bytes(&self) -> Bytes {
        match &self.body {
            Body::Received(s) => self.buf.slice(s.range()),
            Body::Owned(b) => b.clone(),
        }
    }

    // ----- edits -----

    fn new_line(&mut self, name: &str, value: &str) -> Result<Entry> {
        if HeaderName::from_bytes(name.as_bytes()) == HeaderName::ContentLength {
            return Err(Error::BadHeader {
                name: "Content-Length",
                why: "set by set_body, not edited directly",
            });
        }
        self.new_line_any(name, value)
    }

    fn new_line_any(&mut self, name: &str, value: &str) -> Result<Entry> {
        check_header_text(name, value)?;
        let start = self.arena.len();
        self.arena.extend_from_slice(name.as_bytes());
        let name_end = self.arena.len();
        self.arena.extend_from_slice(b": ");
        let vstart = self.arena.len();
        self.arena.extend_from_slice(value.as_bytes());
        let end = self.arena.len();
        Ok(Entry {
            name: HeaderName::from_bytes(name.as_bytes()),
            arena: true,
            name_span: Span::new(start, name_end),
            line: Span::new(start, end),
            value: Span::new(vstart, end),
        })
    }

    /// Inserts a header line at position `index` (clamped to the end).
    pub fn insert_header(&mut self, index: usize, name: &str, value: &str) -> Result<()> {
        self.edited = true;
        let e = self.new_line(name, value)?;
        let index = index.min(self.entries.len());
        self.entries.insert(index, e);
        Ok(())
    }

    /// Appends a header line after the others.
    pub fn append_header(&mut self, name: &str, value: &str) -> Result<()> {
        self.edited = true;
        self.insert_header(usize::MAX, name, value)
    }

    /// Inserts a header line above the first line of the same header, or at the top when
    /// there is none: a new topmost Via, a first Path or Record-Route (RFC 3261 §16.6,
    /// RFC 3327 §5.1).
    pub fn prepend_header(&mut self, name: &str, value: &str) -> Result<()> {
        self.edited = true;
        let known = HeaderName::from_bytes(name.as_bytes());
        let index = self
            .entries
            .iter()
            .position(|e| {
                if known == HeaderName::Other {
                    e.name == HeaderName::Other
                        && self
                            .bytes(e.arena, e.name_span)
                            .eq_ignore_ascii_case(name.as_bytes())
                } else {
                    e.name == known
                }
            })
            .unwrap_or(0);
        self.insert_header(index, name, value)
    }

    /// Replaces the value of the header line at `index` (keeps its name as written).
    /// Content-Length cannot be edited: [`Message::set_body`] keeps it true.
    pub fn replace_value_at(&mut self, index: usize, value: &str) -> Result<()> {
        self.edited = true;
        let Some(old) = self.entries.get(index).copied() else {
            return Err(Error::MissingHeader("header index"));
        };
        let name = String::from_utf8_lossy(self.bytes(old.arena, old.name_span)).into_owned();
        let mut e = self.new_line(&name, value)?;
        e.name = old.name;
        self.entries[index] = e;
        Ok(())
    }

    /// Removes the header line at `index`.
    pub fn remove_at(&mut self, index: usize) {
        self.edited = true;
        if index < self.entries.len() {
            self.entries.remove(index);
        }
    }

    /// Removes every line of a known header; returns how many went.
    pub fn remove_headers(&mut self, name: HeaderName) -> usize {
        self.edited = true;
        let before = self.entries.len();
        self.entries.retain(|e| e.name != name);
        before - self.entries.len()
    }

    /// Removes every line of a header given by name (any spelling).
    pub fn remove_headers_by_name(&mut self, name: &str) -> usize {
        self.edited = true;
        let idx: Vec<usize> = self.headers_by_name(name).map(|h| h.index).collect();
        for i in idx.iter().rev() {
            self.entries.remove(*i);
        }
        idx.len()
    }

    /// Sets a header to one value: replaces the first line, removes the others, or appends.
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<()> {
        self.edited = true;
        let idx: Vec<usize> = self.headers_by_name(name).map(|h| h.index).collect();
        match idx.split_first() {
            None => self.append_header(name, value),
            Some((first, rest)) => {
                self.replace_value_at(*first, value)?;
                for i in rest.iter().rev() {
                    self.entries.remove(*i);
                }
                Ok(())
            }
        }
    }

    /// Removes the first value of a list header: the whole first line when it holds one
    /// value, else that value from the line (`Via: a, b` → `Via: b`). Returns the removed
    /// value. Used to pop our own Via from a response or the first Route of a request.
    pub fn pop_first_value(&mut self, name: HeaderName) -> Result<Option<String>> {
        self.edited = true;
        let Some(h) = self.header(name) else {
            return Ok(None);
        };
        let index = h.index;
        let v = h.value_str()?;
        let mut items = text::split_commas(v);
        let first = items.next().map(str::to_owned);
        let rest = match text::find_unquoted(v, b",") {
            Some(i) => text::trim(&v[i + 1..]).to_owned(),
            None => String::new(),
        };
        if rest.is_empty() {
            self.entries.remove(index);
        } else {
            self.replace_value_at(index, &rest)?;
        }
        Ok(first)
    }

    /// Replaces the Request-URI.
    pub fn set_request_uri(&mut self, uri: &str) -> Result<()> {
        self.edited = true;
        let method = self
            .method_str()
            .ok_or(Error::BadStartLine("not a request"))?
            .to_owned();
        if uri.is_empty() || uri.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(Error::BadUri("whitespace or control character"));
        }
        crate::Uri::parse(uri)?;
        let start = self.arena.len();
        self.arena.extend_from_slice(method.as_bytes());
        self.arena.push(b' ');
        let u0 = self.arena.len();
        self.arena.extend_from_slice(uri.as_bytes());
        let u1 = self.arena.len();
        self.arena.extend_from_slice(b" SIP/2.0");
        let end = self.arena.len();
        if let Kind::Request { method: m, .. } = self.kind {
            self.kind = Kind::Request {
                method: m,
                method_span: Span::new(start, start + method.len()),
                uri: Span::new(u0, u1),
            };
        }
        self.start_line = Span::new(start, end);
        self.start_in_arena = true;
        Ok(())
    }

    /// Replaces the status line of a response.
    pub fn set_status(&mut self, status: u16, reason: &str) -> Result<()> {
        self.edited = true;
        if !(100..=699).contains(&status) {
            return Err(Error::BadStartLine("status code out of range"));
        }
        if self.is_request() {
            return Err(Error::BadStartLine("not a response"));
        }
        if reason.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(Error::BadStartLine("CR or LF in reason phrase"));
        }
        let start = self.arena.len();
        self.arena
            .extend_from_slice(format!("SIP/2.0 {status} ").as_bytes());
        let r0 = self.arena.len();
        self.arena.extend_from_slice(reason.as_bytes());
        let end = self.arena.len();
        self.kind = Kind::Response {
            status,
            reason: Span::new(r0, end),
        };
        self.start_line = Span::new(start, end);
        self.start_in_arena = true;
        Ok(())
    }

    /// Replaces the body, sets Content-Length (and Content-Type when given; removes it for
    /// an empty body without one).
    pub fn set_body(&mut self, content_type: Option<&str>, body: Bytes) -> Result<()> {
        self.edited = true;
        match content_type {
            Some(ct) => self.set_header("Content-Type", ct)?,
            None if body.is_empty() => {
                self.remove_headers(HeaderName::ContentType);
            }
            None => {}
        }
        let len = body.len().to_string();
        self.remove_headers(HeaderName::ContentLength);
        let e = self.new_line_any("Content-Length", &len)?;
        self.entries.push(e);
        self.body = Body::Owned(body);
        Ok(())
    }

    // ----- serialization -----

    /// Content-Length is kept true on the way out: a line whose value is not the body's
    /// length is written with the right one, and a message with a body but no
    /// Content-Length (legal in a datagram) gets one, so it can go out on a stream.
    fn content_length_ok(&self, e: &Entry) -> bool {
        parse_content_length(self.bytes(e.arena, e.value)).ok() == Some(self.body().len())
    }

    fn needs_content_length(&self) -> bool {
        !self.body().is_empty()
            && !self
                .entries
                .iter()
                .any(|e| e.name == HeaderName::ContentLength)
    }

    /// Exact size of [`Message::write_to`]'s output.
    pub fn serialized_len(&self) -> usize {
        let body = self.body().len();
        let digits = decimal_digits(body);
        let mut n = self.start_line().len() + 2 + 2 + body;
        for e in &self.entries {
            n += 2 + if e.name == HeaderName::ContentLength && !self.content_length_ok(e) {
                e.name_span.range().len() + 2 + digits
            } else {
                e.line.range().len()
            };
        }
        if self.needs_content_length() {
            n += "Content-Length: ".len() + digits + 2;
        }
        n
    }

    /// Appends the message's bytes to `out`, with Content-Length true to the body (added when
    /// a datagram came without one), so the output is safe on a stream.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // An upper bound is enough for one allocation; the exact size is serialized_len().
        let body_extra = match &self.body {
            Body::Owned(b) => b.len(),
            Body::Received(_) => 0,
        };
        // Not edited and framed by a true Content-Length: the received bytes are the message.
        if !self.edited && body_extra == 0 && !self.needs_content_length() {
            let cl_ok = self
                .entries
                .iter()
                .filter(|e| e.name == HeaderName::ContentLength)
                .all(|e| self.content_length_ok(e));
            if cl_ok {
                out.extend_from_slice(&self.buf);
                return;
            }
        }
        out.reserve(self.buf.len() + self.arena.len() + body_extra + 32);
        out.extend_from_slice(self.start_line());
        out.extend_from_slice(b"\r\n");
        let body = self.body();
        for e in &self.entries {
            if e.name == HeaderName::ContentLength && !self.content_length_ok(e) {
                out.extend_from_slice(self.bytes(e.arena, e.name_span));
                out.extend_from_slice(format!(": {}", body.len()).as_bytes());
            } else {
                out.extend_from_slice(self.bytes(e.arena, e.line));
            }
            out.extend_from_slice(b"\r\n");
        }
        if self.needs_content_length() {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    }

    /// The message's bytes. When nothing was edited this is the received buffer itself (no
    /// copy, byte-identical even for a datagram without Content-Length); otherwise
    /// [`Message::write_to`]'s output.
    pub fn to_bytes(&self) -> Bytes {
        if !self.edited && matches!(self.body, Body::Received(_)) {
            return self.buf.clone();
        }
        let mut v = Vec::new();
        self.write_to(&mut v);
        Bytes::from(v)
    }

    /// Parses the serialized form again: the index then points into one contiguous buffer.
    /// Useful after many edits, before keeping a message for long.
    pub fn compact(&self) -> Result<Message> {
        Message::parse(self.to_bytes())
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("start_line", &String::from_utf8_lossy(self.start_line()))
            .field("headers", &self.entries.len())
            .field("body_len", &self.body().len())
            .finish()
    }
}

/// Two messages are equal when their start lines, header lines (names as written and
/// values, in order) and bodies are equal; the spacing around names and values is not
/// compared, nor Content-Length (framing, kept true by serialization).
impl PartialEq for Message {
    fn eq(&self, other: &Message) -> bool {
        let content = |m: &'_ Message| {
            m.entries
                .iter()
                .filter(|e| e.name != HeaderName::ContentLength)
                .count()
        };
        self.start_line() == other.start_line()
            && content(self) == content(other)
            && self
                .headers()
                .filter(|h| h.name != HeaderName::ContentLength)
                .zip(
                    other
                        .headers()
                        .filter(|h| h.name != HeaderName::ContentLength),
                )
                .all(|(a, b)| a.name_bytes == b.name_bytes && a.value == b.value)
            && self.body() == other.body()
    }
}

impl Eq for Message {}

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v = Vec::new();
        self.write_to(&mut v);
        f.write_str(&String::from_utf8_lossy(&v))
    }
}

fn decimal_digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Trims a finished entry's value of linear whitespace (a value may start on a folded line).
fn finish_value(b: &[u8], e: &mut Entry) {
    let mut s = e.value.start as usize;
    let mut t = e.value.end as usize;
    while s < t && text::is_lws(b[s]) {
        s += 1;
    }
    while t > s && text::is_lws(b[t - 1]) {
        t -= 1;
    }
    e.value = Span::new(s, t);
}

fn check_header_text(name: &str, value: &str) -> Result<()> {
    if !text::is_token(name) {
        return Err(Error::BadHeaderLine("header name is not a token"));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(Error::BadHeader {
            name: HeaderName::from_bytes(name.as_bytes()).as_str(),
            why: "CR, LF or NUL in a value",
        });
    }
    Ok(())
}

fn parse_version(v: &[u8]) -> Result<()> {
    if v.eq_ignore_ascii_case(b"SIP/2.0") {
        return Ok(());
    }
    // "SIP" "/" 1*DIGIT "." 1*DIGIT but not 2.0: well-formed, unsupported (505).
    if v.len() > 4 && v[..4].eq_ignore_ascii_case(b"SIP/") {
        let rest = &v[4..];
        if let Some(dot) = memchr(b'.', rest)
            && dot > 0
            && dot + 1 < rest.len()
            && rest[..dot].iter().all(u8::is_ascii_digit)
            && rest[dot + 1..].iter().all(u8::is_ascii_digit)
        {
            return Err(Error::BadVersion);
        }
    }
    Err(Error::BadStartLine("bad SIP version"))
}

fn parse_start_line(b: &[u8], end: usize) -> Result<Kind> {
    let line = &b[..end];
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        // SIP-Version SP Status-Code SP Reason-Phrase
        let sp = memchr(b' ', line).ok_or(Error::BadStartLine("no status code"))?;
        parse_version(&line[..sp])?;
        let code = &line[sp + 1..];
        if code.len() < 3 || !code[..3].iter().all(u8::is_ascii_digit) {
            return Err(Error::BadStartLine("status code is not three digits"));
        }
        let reason_start = match code.get(3) {
            None => sp + 4,
            Some(b' ') => sp + 5,
            Some(_) => return Err(Error::BadStartLine("status code is not three digits")),
        };
        let status = code[..3]
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        if !(100..=699).contains(&status) {
            return Err(Error::BadStartLine("status code out of range"));
        }
        if line[reason_start.min(end)..]
            .iter()
            .any(|&c| c < b' ' && c != b'\t')
        {
            return Err(Error::BadStartLine("control character in reason phrase"));
        }
        return Ok(Kind::Response {
            status,
            reason: Span::new(reason_start.min(end), end),
        });
    }
    // Method SP Request-URI SP SIP-Version
    let sp1 = memchr(b' ', line).ok_or(Error::BadStartLine("no Request-URI"))?;
    let method = &line[..sp1];
    if method.is_empty() || !method.iter().all(|&c| text::is_token_byte(c)) {
        return Err(Error::BadStartLine("method is not a token"));
    }
    let sp2 = memchr::memrchr(b' ', line).unwrap_or(sp1);
    if sp2 == sp1 {
        return Err(Error::BadStartLine("no SIP version"));
    }
    parse_version(&line[sp2 + 1..])?;
    let uri = &line[sp1 + 1..sp2];
    if uri.is_empty() {
        return Err(Error::BadStartLine("empty Request-URI"));
    }
    if uri.iter().any(|&c| c <= b' ' || c >= 0x7f) {
        return Err(Error::BadStartLine(
            "whitespace or non-ASCII in Request-URI",
        ));
    }
    Ok(Kind::Request {
        method: Method::from_bytes(method),
        method_span: Span::new(0, sp1),
        uri: Span::new(sp1 + 1, sp2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &str = "REGISTER sip:hims.net SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@hims.net>;tag=a1\r\n\
To: <sip:alice@hims.net>\r\n\
Call-ID: c1@10.0.0.2\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:alice@10.0.0.2:5060>;expires=600\r\n\
l: 0\r\n\
\r\n";

    fn parse(s: &str) -> Result<Message> {
        Message::parse(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn parse_and_round_trip() {
        let m = parse(REG).unwrap();
        assert!(m.is_request());
        assert_eq!(m.method(), Some(Method::Register));
        assert_eq!(m.request_uri_str(), Some("sip:hims.net"));
        assert_eq!(m.header_count(), 8);
        assert_eq!(m.header_str(HeaderName::CallId), Some("c1@10.0.0.2"));
        assert_eq!(m.header_str(HeaderName::ContentLength), Some("0"));
        assert_eq!(m.to_bytes(), REG.as_bytes());
        let mut v = Vec::new();
        m.write_to(&mut v);
        assert_eq!(v, REG.as_bytes());
        assert_eq!(m.serialized_len(), REG.len());
    }

    #[test]
    fn edits() {
        let mut m = parse(REG).unwrap();
        m.prepend_header("Via", "SIP/2.0/UDP pcscf.vims.net;branch=z9hG4bKp")
            .unwrap();
        m.prepend_header("Path", "<sip:term@pcscf.vims.net;lr>")
            .unwrap();
        let vias: Vec<String> = m
            .values(HeaderName::Via)
            .map(|v| v.unwrap().to_owned())
            .collect();
        assert_eq!(vias.len(), 2);
        assert!(vias[0].contains("pcscf"));
        assert_eq!(
            m.pop_first_value(HeaderName::Via).unwrap().unwrap(),
            vias[0]
        );
        assert_eq!(m.values(HeaderName::Via).count(), 1);
        m.set_header("Expires", "0").unwrap();
        m.set_body(Some("text/plain"), Bytes::from_static(b"hi"))
            .unwrap();
        let again = parse(&m.to_string()).unwrap();
        assert_eq!(again, m);
        assert_eq!(again.body(), b"hi");
        assert_eq!(again.header_str(HeaderName::ContentLength), Some("2"));
        assert!(m.append_header("X", "a\r\nInjected: 1").is_err());
    }

    #[test]
    fn pop_from_a_multi_value_line() {
        let mut m = parse(&REG.replace(
            "Max-Forwards",
            "Route: <sip:p1;lr>, <sip:p2;lr>\r\nMax-Forwards",
        ))
        .unwrap();
        assert_eq!(
            m.pop_first_value(HeaderName::Route).unwrap().unwrap(),
            "<sip:p1;lr>"
        );
        assert_eq!(m.header_str(HeaderName::Route), Some("<sip:p2;lr>"));
        assert_eq!(
            m.pop_first_value(HeaderName::Route).unwrap().unwrap(),
            "<sip:p2;lr>"
        );
        assert!(m.header(HeaderName::Route).is_none());
    }

    #[test]
    fn find_lf_matches_a_plain_search() {
        let mut data: Vec<u8> = (0..200u8).map(|i| i.wrapping_mul(37) | 0x80).collect();
        for &pos in &[0usize, 7, 8, 9, 63, 64, 150, 199] {
            let mut d = data.clone();
            d[pos] = b'\n';
            for from in [0usize, 1, 5, 8, pos] {
                let want = d[from..].iter().position(|&c| c == b'\n').map(|p| from + p);
                assert_eq!(find_lf(&d, from), want, "pos {pos} from {from}");
            }
        }
        data[3] = 0x0b; // neighbours of LF must not match
        data[4] = 0x09;
        assert_eq!(find_lf(&data, 0), None);
        assert_eq!(find_lf(&data, 500), None);
    }

    #[test]
    fn framing() {
        let two = format!("{REG}{REG}");
        assert_eq!(
            frame(two.as_bytes(), 65535).unwrap(),
            Frame::Message(REG.len())
        );
        assert_eq!(
            frame(&two.as_bytes()[..10], 65535).unwrap(),
            Frame::Incomplete
        );
        assert_eq!(frame(b"\r\n\r\nREG", 65535).unwrap(), Frame::Keepalive(4));
        let body = REG.replace("l: 0", "l: 5");
        assert_eq!(frame(body.as_bytes(), 65535).unwrap(), Frame::Incomplete);
        let full = format!("{body}hello");
        assert_eq!(
            frame(full.as_bytes(), 65535).unwrap(),
            Frame::Message(full.len())
        );
        assert!(frame(REG.replace("l: 0", "l: -1").as_bytes(), 65535).is_err());
        assert_eq!(frame(full.as_bytes(), 100), Err(Error::TooLarge));
        // datagram: body cut by Content-Length, a short body is an error.
        let m = parse(&format!("{full}EXTRA")).unwrap();
        assert_eq!(m.body(), b"hello");
        assert!(matches!(parse(&body), Err(Error::BadContentLength(_))));
    }

    #[test]
    fn folding_compact_and_odd_spacing() {
        let m = parse(
            "INVITE sip:a@b SIP/2.0\r\nTO :\r\n sip:vivekg@example.com ;   tag    = 1918181833n\r\nv: SIP/2.0/UDP h;branch=z9hG4bKx\r\nl: 0\r\n\r\n",
        )
        .unwrap();
        let to = m.header(HeaderName::To).unwrap();
        assert_eq!(to.name_bytes, b"TO");
        assert_eq!(
            to.value_str().unwrap(),
            "sip:vivekg@example.com ;   tag    = 1918181833n"
        );
        assert!(m.header(HeaderName::Via).is_some());
    }

    #[test]
    fn start_line_errors() {
        assert!(matches!(
            parse("INVITE sip:a@b SIP/7.0\r\n\r\n"),
            Err(Error::BadVersion)
        ));
        assert!(parse("INVITE  sip:a@b SIP/2.0\r\n\r\n").is_err());
        assert!(parse("INVITE sip:a@b; lr SIP/2.0\r\n\r\n").is_err());
        assert!(parse("SIP/2.0 4294967301 Big\r\n\r\n").is_err());
        assert!(parse("SIP/2.0 99 Low\r\n\r\n").is_err());
        let r = parse("SIP/2.0 494 Security Agreement Required\r\nl: 0\r\n\r\n").unwrap();
        assert_eq!(r.status(), Some(494));
        assert_eq!(r.reason(), Some(&b"Security Agreement Required"[..]));
        assert!(parse("INVITE sip:a@b SIP/2.0\r\nNoColonHere\r\n\r\n").is_err());
        assert!(parse("INVITE sip:a@b SIP/2.0\r\n folded\r\n\r\n").is_err());
        assert!(parse("INVITE sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n").is_err());
    }

    #[test]
    fn non_utf8_value_hides_nothing_else() {
        let mut raw = REG.replace("Max-Forwards: 70", "X-Bin: \u{1}").into_bytes();
        let i = raw.windows(2).position(|w| w == b"\x01\r").unwrap();
        raw[i] = 0xff;
        let m = Message::parse(Bytes::from(raw.clone())).unwrap();
        assert!(
            m.headers_by_name("x-bin")
                .next()
                .unwrap()
                .value_str()
                .is_err()
        );
        assert_eq!(m.header_str(HeaderName::CallId), Some("c1@10.0.0.2"));
        assert_eq!(m.to_bytes(), raw);
    }
}

//! Scanning helpers shared by the typed header views: linear whitespace, comma lists and
//! parameters that respect quoted strings and `<...>`, unquoting. Everything borrows; nothing
//! allocates except [`unquote`] when a quoted string really holds escapes.

use std::borrow::Cow;

/// SP, HTAB and the CR/LF of a folded line: linear whitespace inside a header value.
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Strips linear whitespace at both ends.
#[inline]
pub fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r' || c == '\n')
}

/// RFC 3261 `token` characters, as a table.
const TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        c += 1;
    }
    t
};

/// RFC 3261 `token` characters.
#[inline]
pub(crate) fn is_token_byte(b: u8) -> bool {
    TOKEN[b as usize]
}

/// True when `s` is a non-empty RFC 3261 token.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// Finds the first byte in `s` equal to one of `stops` that is outside double quotes (with
/// backslash escapes) and outside `<...>`.
pub(crate) fn find_unquoted(s: &str, stops: &[u8]) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut in_quote = false;
    let mut in_angle = false;
    while i < b.len() {
        let c = b[i];
        if in_quote {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_quote = false;
            }
        } else if in_angle {
            if c == b'>' {
                in_angle = false;
            }
        } else if c == b'"' {
            in_quote = true;
        } else if c == b'<' {
            in_angle = true;
        } else if stops.contains(&c) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Iterates the comma-separated values of a header (commas inside quotes or `<...>` do not
/// split). Values are trimmed; empty values (`a,,b`) are skipped.
pub fn split_commas(s: &str) -> Commas<'_> {
    Commas { rest: Some(s) }
}

/// Iterator of [`split_commas`].
#[derive(Debug, Clone)]
pub struct Commas<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Commas<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        loop {
            let s = self.rest?;
            let (item, rest) = match find_unquoted(s, b",") {
                Some(i) => (&s[..i], Some(&s[i + 1..])),
                None => (s, None),
            };
            self.rest = rest;
            let item = trim(item);
            if !item.is_empty() {
                return Some(item);
            }
        }
    }
}

/// One `name[=value]` parameter. A quoted value is given without its quotes, escapes intact
/// (see [`unquote`]); `quoted` says it was quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// Parameter name, as received (compare case-insensitively).
    pub name: &'a str,
    /// Value, when there was an `=`.
    pub value: Option<&'a str>,
    /// The value was a quoted string.
    pub quoted: bool,
}

impl<'a> Param<'a> {
    /// Parses one `name [= value]` item (whitespace around `=` allowed).
    pub fn parse(item: &'a str) -> Param<'a> {
        let item = trim(item);
        match item.find('=') {
            None => Param {
                name: item,
                value: None,
                quoted: false,
            },
            Some(eq) => {
                let name = trim(&item[..eq]);
                let v = trim(&item[eq + 1..]);
                let (value, quoted) = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
                    (&v[1..v.len() - 1], true)
                } else {
                    (v, false)
                };
                Param {
                    name,
                    value: Some(value),
                    quoted,
                }
            }
        }
    }
}

/// Iterates `;`-separated parameters (a leading `;` is optional). Separators inside quoted
/// strings do not split.
pub fn params(s: &str) -> Params<'_> {
    Params {
        inner: Separated {
            rest: Some(s),
            sep: b";",
        },
    }
}

/// Iterator of [`params`].
#[derive(Debug, Clone)]
pub struct Params<'a> {
    inner: Separated<'a>,
}

impl<'a> Params<'a> {
    /// The value of the first parameter with this name (case-insensitive). `Some(None)` is
    /// a parameter present without a value (a flag such as `lr` or `rport`).
    pub fn get(&self, name: &str) -> Option<Option<&'a str>> {
        self.clone()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value)
    }

    /// True when a parameter with this name is present.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = Param<'a>;
    fn next(&mut self) -> Option<Param<'a>> {
        self.inner.next().map(Param::parse)
    }
}

/// Items separated by a byte outside quotes; trimmed, empty ones skipped.
#[derive(Debug, Clone)]
pub(crate) struct Separated<'a> {
    pub(crate) rest: Option<&'a str>,
    pub(crate) sep: &'static [u8],
}

impl<'a> Iterator for Separated<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        loop {
            let s = self.rest?;
            let (item, rest) = match find_quoted_only(s, self.sep) {
                Some(i) => (&s[..i], Some(&s[i + 1..])),
                None => (s, None),
            };
            self.rest = rest;
            let item = trim(item);
            if !item.is_empty() {
                return Some(item);
            }
        }
    }
}

/// Like [`find_unquoted`] but only quotes protect (for parameters after a `>`).
pub(crate) fn find_quoted_only(s: &str, stops: &[u8]) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut in_quote = false;
    while i < b.len() {
        let c = b[i];
        if in_quote {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_quote = false;
            }
        } else if c == b'"' {
            in_quote = true;
        } else if stops.contains(&c) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// A header value with one header parameter set: replaced in place when present (keeping
/// the other parameters as written), appended otherwise. `value` `None` writes a flag
/// (`;rport`, `;lr`). Parameters start at the first `;` outside quotes and `<...>`, so this
/// works for Via (`received`, `rport`), name-addrs (`tag`, `expires`), security mechanisms and
/// P-Charging-Vector alike. The value is written as given (quote it with [`quote`] if needed).
pub fn set_param(header_value: &str, name: &str, value: Option<&str>) -> String {
    let (head, params) = split_params(header_value);
    let mut out = String::with_capacity(header_value.len() + name.len() + 16);
    out.push_str(head);
    let mut done = false;
    for item in params.into_iter().flat_map(|p| Separated {
        rest: Some(p),
        sep: b";",
    }) {
        out.push(';');
        if Param::parse(item).name.eq_ignore_ascii_case(name) && !done {
            push_param(&mut out, name, value);
            done = true;
        } else {
            out.push_str(item);
        }
    }
    if !done {
        out.push(';');
        push_param(&mut out, name, value);
    }
    out
}

/// A header value without the named header parameter (every occurrence).
pub fn remove_param(header_value: &str, name: &str) -> String {
    let (head, params) = split_params(header_value);
    let mut out = String::with_capacity(header_value.len());
    out.push_str(head);
    for item in params.into_iter().flat_map(|p| Separated {
        rest: Some(p),
        sep: b";",
    }) {
        if !Param::parse(item).name.eq_ignore_ascii_case(name) {
            out.push(';');
            out.push_str(item);
        }
    }
    out
}

fn split_params(v: &str) -> (&str, Option<&str>) {
    let v = trim(v);
    match find_unquoted(v, b";") {
        Some(i) => (trim(&v[..i]), Some(&v[i + 1..])),
        None => (v, None),
    }
}

fn push_param(out: &mut String, name: &str, value: Option<&str>) {
    out.push_str(name);
    if let Some(v) = value {
        out.push('=');
        out.push_str(v);
    }
}

/// Removes the backslash escapes of a quoted string's content (without its quotes).
/// Borrows when there is nothing to unescape.
pub fn unquote(s: &str) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Quotes a string for a quoted-string value, escaping `"` and `\`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Whether a parameter is a `generic-param` / `auth-param` (RFC 3261 §25.1, RFC 2617): a
/// token name, then no value, a whole quoted string, or a value without quotes, angle
/// brackets, backslashes, separators or whitespace (tokens, hosts, IPv6 references). With
/// `angle`, a value may also be one `<...>` (`+sip.instance=<urn:...>` as some UAs send it).
/// Edits ([`set_param`], [`remove_param`]) keep such parameters intact; anything else could
/// be torn apart by them, so the typed views refuse it.
pub(crate) fn is_generic_param(p: &Param<'_>, angle: bool) -> bool {
    if !is_token(p.name) {
        return false;
    }
    let Some(v) = p.value else {
        return true;
    };
    let plain = |v: &str| {
        v.bytes().all(|b| {
            b > b' ' && b != 0x7f && !matches!(b, b'"' | b'<' | b'>' | b'\\' | b',' | b';')
        })
    };
    if p.quoted {
        // The content between the quotes: no bare quote, no escape of the closing one.
        let b = v.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\\' if i + 1 < b.len() => i += 2,
                b'\\' | b'"' => return false,
                _ => i += 1,
            }
        }
        return true;
    }
    if angle && let Some(inner) = v.strip_prefix('<').and_then(|v| v.strip_suffix('>')) {
        return plain(inner);
    }
    plain(v)
}

/// Checks that quotes are balanced (a quoted string is closed) and angle brackets too.
pub(crate) fn balanced(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let mut in_quote = false;
    let mut depth = 0i32;
    while i < b.len() {
        let c = b[i];
        if in_quote {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_quote = false;
            }
        } else if c == b'"' {
            in_quote = true;
        } else if c == b'<' {
            depth += 1;
        } else if c == b'>' {
            depth -= 1;
            if depth < 0 {
                return false;
            }
        }
        i += 1;
    }
    !in_quote && depth == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_respect_quotes_and_angles() {
        let v: Vec<_> = split_commas(r#""a, b" <sip:x@y;p=1,2>;q=1 , <sip:z> ,, tel:+1"#).collect();
        assert_eq!(v, [r#""a, b" <sip:x@y;p=1,2>;q=1"#, "<sip:z>", "tel:+1"]);
    }

    #[test]
    fn params_with_spaces_and_quotes() {
        let p: Vec<_> = params(";   tag    = 1918181833n; lr ; x=\"a;b\"").collect();
        assert_eq!(p[0].name, "tag");
        assert_eq!(p[0].value, Some("1918181833n"));
        assert_eq!(p[1].name, "lr");
        assert_eq!(p[1].value, None);
        assert_eq!(p[2].value, Some("a;b"));
        assert!(p[2].quoted);
        assert_eq!(params(";lr;Tag=1").get("tag"), Some(Some("1")));
    }

    #[test]
    fn set_and_remove_params() {
        let via = "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1;rport";
        assert_eq!(
            set_param(
                &set_param(via, "rport", Some("5062")),
                "received",
                Some("192.0.2.9")
            ),
            "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1;rport=5062;received=192.0.2.9"
        );
        let to = "\"A; B\" <sip:a@b;lr>;tag=1";
        assert_eq!(
            set_param(to, "TAG", Some("2")),
            "\"A; B\" <sip:a@b;lr>;TAG=2"
        );
        assert_eq!(remove_param(to, "tag"), "\"A; B\" <sip:a@b;lr>");
        assert_eq!(set_param("<sip:x>", "lr", None), "<sip:x>;lr");
        let sc = "ipsec-3gpp; alg=hmac-sha-1-96; spi-c=1";
        assert_eq!(remove_param(sc, "alg"), "ipsec-3gpp;spi-c=1");
    }

    #[test]
    fn unquote_and_quote() {
        assert_eq!(unquote(r#"J Rosenberg \\\""#), "J Rosenberg \\\"");
        assert_eq!(quote("a\"b"), r#""a\"b""#);
        assert!(balanced(r#""x" <a>"#));
        assert!(!balanced(r#""x <a>"#));
    }
}

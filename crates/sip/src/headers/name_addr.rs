//! `name-addr` / `addr-spec` with header parameters (RFC 3261 §20.10, §25.1): From, To,
//! Contact, Route, Record-Route, Path (RFC 3327), Service-Route (RFC 3608),
//! P-Associated-URI (RFC 7315), P-Asserted-Identity. Without angle brackets every `;param`
//! after the URI is a header parameter, as §20.10 says.

use crate::error::{Error, Result};
use crate::text::{self, Params};
use crate::uri::Uri;

/// One address with its header parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name without quotes (escapes intact; see [`crate::text::unquote`]).
    pub display_name: Option<&'a str>,
    /// The URI text.
    pub uri_str: &'a str,
    /// The URI, parsed.
    pub uri: Uri<'a>,
    /// The URI was in `<...>`.
    pub angle: bool,
    params: &'a str,
}

impl<'a> NameAddr<'a> {
    /// Parses one value (not a comma list: see [`crate::text::split_commas`]).
    pub fn parse(s: &'a str) -> Result<NameAddr<'a>> {
        Self::parse_named(s, "address")
    }

    pub(crate) fn parse_named(s: &'a str, header: &'static str) -> Result<NameAddr<'a>> {
        let bad = |why| Error::BadHeader { name: header, why };
        let s = text::trim(s);
        if !text::balanced(s) {
            return Err(bad("unbalanced quotes or angle brackets"));
        }
        let (display_name, rest) = if let Some(q) = s.strip_prefix('"') {
            let close = closing_quote(q).ok_or(bad("unclosed display name"))?;
            let after = text::trim(&q[close + 1..]);
            if !after.starts_with('<') {
                return Err(bad("quoted display name without <URI>"));
            }
            (Some(&q[..close]), after)
        } else if let Some(lt) = s.find('<') {
            let dn = text::trim(&s[..lt]);
            if !dn.is_empty()
                && !dn
                    .split([' ', '\t', '\r', '\n'])
                    .filter(|w| !w.is_empty())
                    .all(text::is_token)
            {
                return Err(bad("display name is neither tokens nor quoted"));
            }
            (if dn.is_empty() { None } else { Some(dn) }, &s[lt..])
        } else {
            (None, s)
        };
        let (uri_str, params, angle) = if let Some(inner) = rest.strip_prefix('<') {
            let gt = inner.find('>').ok_or(bad("unclosed <"))?;
            let after = text::trim(&inner[gt + 1..]);
            if !after.is_empty() && !after.starts_with(';') {
                return Err(bad("junk after >"));
            }
            let uri = &inner[..gt];
            if uri.starts_with(|c: char| c.is_ascii_whitespace())
                || uri.ends_with(|c: char| c.is_ascii_whitespace())
            {
                return Err(bad("whitespace inside <...>"));
            }
            (uri, after, true)
        } else {
            match rest.find(';') {
                Some(i) => (text::trim(&rest[..i]), &rest[i..], false),
                None => (rest, "", false),
            }
        };
        if !angle && (uri_str.contains('?') || uri_str.contains(',')) {
            return Err(bad("URI with ? or , must be in <...>"));
        }
        let uri = Uri::parse(uri_str).map_err(|_| bad("bad URI"))?;
        if !text::params(params).all(|p| text::is_generic_param(&p, true)) {
            return Err(bad("bad parameter"));
        }
        Ok(NameAddr {
            display_name,
            uri_str,
            uri,
            angle,
            params,
        })
    }

    /// Header parameters (`tag`, `expires`, `q`, `+sip.instance`, `lr` does not belong here).
    pub fn params(&self) -> Params<'a> {
        text::params(self.params)
    }

    /// The raw parameter text after the address (starts with `;` when not empty).
    pub fn params_str(&self) -> &'a str {
        self.params
    }

    /// One header parameter's value (`Some(None)` for a flag).
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        self.params().get(name)
    }

    /// `;tag=`.
    pub fn tag(&self) -> Option<&'a str> {
        self.param("tag").flatten()
    }

    /// `;expires=` as seconds (a value beyond u32 saturates, RFC 3261 §20.19).
    pub fn expires(&self) -> Option<Result<u32>> {
        self.param("expires")
            .flatten()
            .map(|v| parse_delta_seconds(v, "Contact"))
    }

    /// `;+sip.instance="<urn:...>"` (RFC 5626): the URN without quotes and brackets.
    pub fn instance(&self) -> Option<&'a str> {
        let v = self.param("+sip.instance").flatten()?;
        Some(
            v.strip_prefix('<')
                .and_then(|v| v.strip_suffix('>'))
                .unwrap_or(v),
        )
    }

    /// `;q=` (RFC 3261 §20.10), 0.0 to 1.0.
    pub fn q(&self) -> Option<f32> {
        self.param("q")
            .flatten()
            .and_then(|v| v.parse::<f32>().ok())
            .filter(|q| (0.0..=1.0).contains(q))
    }
}

/// A Contact value: an address, or `*` (only with Expires: 0 in a REGISTER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contact<'a> {
    /// `Contact: *`.
    Star,
    /// An address.
    Addr(NameAddr<'a>),
}

impl<'a> Contact<'a> {
    /// Parses one Contact value.
    pub fn parse(s: &'a str) -> Result<Contact<'a>> {
        if text::trim(s) == "*" {
            return Ok(Contact::Star);
        }
        NameAddr::parse_named(s, "Contact").map(Contact::Addr)
    }

    /// The address, unless `*`.
    pub fn addr(&self) -> Option<&NameAddr<'a>> {
        match self {
            Contact::Star => None,
            Contact::Addr(a) => Some(a),
        }
    }
}

/// RFC 3261 delta-seconds: digits; larger than 2^32-1 saturates.
pub(crate) fn parse_delta_seconds(v: &str, header: &'static str) -> Result<u32> {
    let v = text::trim(v);
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::BadHeader {
            name: header,
            why: "not delta-seconds",
        });
    }
    Ok(v.parse::<u64>()
        .map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX)))
}

fn closing_quote(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let a = NameAddr::parse(
            r#""J Rosenberg \\\""       <sip:jdrosen@example.com> ; tag = 98asjd8"#,
        )
        .unwrap();
        assert_eq!(a.display_name, Some(r#"J Rosenberg \\\""#));
        assert_eq!(a.uri_str, "sip:jdrosen@example.com");
        assert_eq!(a.tag(), Some("98asjd8"));
        let b = NameAddr::parse("sip:alice@hims.net;tag=x").unwrap();
        assert!(!b.angle);
        assert_eq!(b.uri_str, "sip:alice@hims.net");
        assert_eq!(b.tag(), Some("x"));
        let c = NameAddr::parse("Alice Smith <tel:+4930123>").unwrap();
        assert_eq!(c.display_name, Some("Alice Smith"));
        assert!(c.uri.as_tel().is_some());
        let im = Contact::parse(
            r#"<sip:alice@[2001:db8::2]:5060>;expires=600;+sip.instance="<urn:gsma:imei:35209900-176148-0>";+g.3gpp.smsip"#,
        )
        .unwrap();
        let im = im.addr().unwrap();
        assert_eq!(im.instance(), Some("urn:gsma:imei:35209900-176148-0"));
        assert_eq!(im.expires().unwrap().unwrap(), 600);
        assert_eq!(im.param("+g.3gpp.smsip"), Some(None));
        assert_eq!(Contact::parse(" * ").unwrap(), Contact::Star);
        assert!(NameAddr::parse("<sip:a@b").is_err());
        assert!(NameAddr::parse("\"unclosed <sip:a@b>").is_err());
        assert!(NameAddr::parse("sip:a@b?x=y").is_err());
        assert_eq!(
            parse_delta_seconds("99999999999", "Expires").unwrap(),
            u32::MAX
        );
    }

    /// Fuzz regression (sip_via_addr): a parameter value with a lone `<` parsed, and setting
    /// a parameter next to it (`set_param`) wrote a value that no longer parsed.
    #[test]
    fn parameters_are_generic_params() {
        assert!(Contact::parse("<s:a>;tag=<;>").is_err());
        assert!(NameAddr::parse(r#"<sip:a@h>;tag=x"y"#).is_err());
        assert!(NameAddr::parse(r#"<sip:a@h>;tag=a\b"#).is_err());
        let a = NameAddr::parse(
            r#"<sip:a@h>;+sip.instance="<urn:gsma:imei:1>";reg-id=1;+g.3gpp.smsip;q=0.5"#,
        )
        .unwrap();
        assert_eq!(a.instance(), Some("urn:gsma:imei:1"));
        let bare = NameAddr::parse("<sip:a@h>;+sip.instance=<urn:uuid:1>").unwrap();
        assert_eq!(bare.instance(), Some("urn:uuid:1"));
        let edited = crate::text::set_param("<sip:a@h>;tag=\"x;y\";q=1", "tag", Some("z"));
        assert_eq!(NameAddr::parse(&edited).unwrap().tag(), Some("z"));
    }
}

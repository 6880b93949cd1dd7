//! URIs the IMS path meets: `sip:`/`sips:` (RFC 3261 §19.1, IPv4, bracketed IPv6 and names,
//! parameters and headers), `tel:` (RFC 3966, global `+…` and local numbers with
//! `phone-context`), `urn:` (RFC 8141, e.g. `urn:gsma:imei:…` in `+sip.instance`), and any
//! other absolute URI kept as scheme + rest. Views borrow the text they were parsed from.

use crate::error::{Error, Result};
use crate::text::{Params, params};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A parsed URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uri<'a> {
    /// `sip:` or `sips:`.
    Sip(SipUri<'a>),
    /// `tel:`.
    Tel(TelUri<'a>),
    /// `urn:`.
    Urn(UrnUri<'a>),
    /// Another absolute URI (`scheme:rest`), kept as text.
    Other {
        /// The scheme as written.
        scheme: &'a str,
        /// The whole URI.
        raw: &'a str,
    },
}

impl<'a> Uri<'a> {
    /// Parses an absolute URI.
    pub fn parse(s: &'a str) -> Result<Uri<'a>> {
        let colon = s.find(':').ok_or(Error::BadUri("no scheme"))?;
        let scheme = &s[..colon];
        if scheme.is_empty()
            || !scheme.as_bytes()[0].is_ascii_alphabetic()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return Err(Error::BadUri("bad scheme"));
        }
        if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(Error::BadUri("whitespace or control character"));
        }
        let rest = &s[colon + 1..];
        if scheme.eq_ignore_ascii_case("sip") {
            SipUri::parse_rest(s, rest, false).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("sips") {
            SipUri::parse_rest(s, rest, true).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("tel") {
            TelUri::parse_rest(s, rest).map(Uri::Tel)
        } else if scheme.eq_ignore_ascii_case("urn") {
            UrnUri::parse_rest(s, rest).map(Uri::Urn)
        } else {
            if rest.is_empty() {
                return Err(Error::BadUri("empty after scheme"));
            }
            Ok(Uri::Other { scheme, raw: s })
        }
    }

    /// The URI as it was written.
    pub fn as_str(&self) -> &'a str {
        match self {
            Uri::Sip(u) => u.raw,
            Uri::Tel(u) => u.raw,
            Uri::Urn(u) => u.raw,
            Uri::Other { raw, .. } => raw,
        }
    }

    /// The SIP URI, when it is one.
    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }

    /// The tel URI, when it is one.
    pub fn as_tel(&self) -> Option<&TelUri<'a>> {
        match self {
            Uri::Tel(u) => Some(u),
            _ => None,
        }
    }

    /// The identity the URI names, as IMS compares public identities: a sip:/sips: URI
    /// without parameters and headers (`sip:user@host[:port]`), a tel: URI without its
    /// parameters; `None` for other schemes.
    pub fn identity(&self) -> Option<String> {
        match self {
            Uri::Sip(u) => {
                let scheme = if u.secure { "sips" } else { "sip" };
                Some(match u.port {
                    Some(p) => format!("{scheme}:{}:{p}", u.user_host()),
                    None => format!("{scheme}:{}", u.user_host()),
                })
            }
            // A local number is only an identity within its phone-context (RFC 3966 §5.1.5),
            // which stays.
            Uri::Tel(t) => Some(match t.phone_context() {
                Some(ctx) if !t.is_global() => format!("tel:{};phone-context={ctx}", t.number),
                _ => format!("tel:{}", t.number),
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Uri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host part of a SIP URI or Via.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    /// A domain name (not validated beyond its characters).
    Name(&'a str),
    /// A dotted IPv4 address.
    V4(Ipv4Addr),
    /// A bracketed IPv6 reference (brackets not included).
    V6(Ipv6Addr),
}

impl<'a> Host<'a> {
    /// Parses a host: `[v6]`, dotted IPv4, or a hostname.
    pub fn parse(s: &'a str) -> Result<Host<'a>> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or(Error::BadUri("unclosed IPv6 reference"))?;
            return inner
                .parse::<Ipv6Addr>()
                .map(Host::V6)
                .map_err(|_| Error::BadUri("bad IPv6 address"));
        }
        if s.is_empty() {
            return Err(Error::BadUri("empty host"));
        }
        if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            if let Ok(a) = s.parse::<Ipv4Addr>() {
                return Ok(Host::V4(a));
            }
            // All digits and dots but not an address: a malformed IPv4 (RFC 3261 §25.1
            // top labels start with a letter).
            return Err(Error::BadUri("bad IPv4 address"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(Error::BadUri("bad host name"));
        }
        Ok(Host::Name(s))
    }

    /// The IP address, when the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::V4(a) => Some(IpAddr::V4(*a)),
            Host::V6(a) => Some(IpAddr::V6(*a)),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// Splits `host[:port]` (host possibly a bracketed IPv6 reference).
pub(crate) fn host_port(s: &str) -> Result<(Host<'_>, &str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let close = s
            .find(']')
            .ok_or(Error::BadUri("unclosed IPv6 reference"))?;
        let after = &s[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(Error::BadUri("junk after IPv6 reference")),
        };
        (&s[..=close], port)
    } else {
        match s.rfind(':') {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::BadUri("bad port"));
            }
            Some(
                p.parse::<u16>()
                    .map_err(|_| Error::BadUri("port out of range"))?,
            )
        }
    };
    Ok((Host::parse(host)?, host, port))
}

/// `sip:` / `sips:` URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipUri<'a> {
    raw: &'a str,
    /// `sips:`.
    pub secure: bool,
    /// User part (escapes intact), when there is an `@`.
    pub user: Option<&'a str>,
    /// Password after `user:` (deprecated, but parsed).
    pub password: Option<&'a str>,
    /// Host.
    pub host: Host<'a>,
    /// Host as written (IPv6 with brackets).
    pub host_str: &'a str,
    /// Port, when given.
    pub port: Option<u16>,
    params: &'a str,
    /// Header part after `?`, when present.
    pub headers: Option<&'a str>,
}

impl<'a> SipUri<'a> {
    fn parse_rest(raw: &'a str, rest: &'a str, secure: bool) -> Result<SipUri<'a>> {
        // The user part may hold '?' and ';' (RFC 3261 user-unreserved), the header part
        // may not hold '@': split at the last '@' first, then look for '?' after it.
        let at = rest.rfind('@');
        let host_from = at.map_or(0, |a| a + 1);
        let (before_q, headers) = match rest[host_from..].find('?') {
            Some(i) => (&rest[..host_from + i], Some(&rest[host_from + i + 1..])),
            None => (rest, None),
        };
        let (user, password, hostpart) = match at {
            Some(at) => {
                let ui = &before_q[..at];
                if ui.is_empty() {
                    return Err(Error::BadUri("empty user part"));
                }
                // user may hold ';' (a tel-like user with params); password after ':'.
                let (u, p) = match ui.find(':') {
                    Some(c) => (&ui[..c], Some(&ui[c + 1..])),
                    None => (ui, None),
                };
                if u.is_empty() {
                    return Err(Error::BadUri("empty user part"));
                }
                (Some(u), p, &before_q[at + 1..])
            }
            None => (None, None, before_q),
        };
        let (hp, params) = match hostpart.find(';') {
            Some(i) => (&hostpart[..i], &hostpart[i + 1..]),
            None => (hostpart, ""),
        };
        let (host, host_str, port) = host_port(hp)?;
        for p in crate::text::params(params) {
            if p.name.is_empty() || !p.name.bytes().all(is_param_char) {
                return Err(Error::BadUri("bad URI parameter"));
            }
            if let Some(v) = p.value
                && (v.is_empty() || !v.bytes().all(is_param_char))
            {
                return Err(Error::BadUri("bad URI parameter value"));
            }
        }
        if let Some(u) = user
            && !u
                .bytes()
                .all(|b| is_param_char(b) || matches!(b, b';' | b'?' | b'/' | b'=' | b',' | b'#'))
        {
            return Err(Error::BadUri("bad user part"));
        }
        Ok(SipUri {
            raw,
            secure,
            user,
            password,
            host,
            host_str,
            port,
            params,
            headers,
        })
    }

    /// Parses a `sip:` or `sips:` URI (anything else is an error).
    pub fn parse(s: &'a str) -> Result<SipUri<'a>> {
        match Uri::parse(s)? {
            Uri::Sip(u) => Ok(u),
            _ => Err(Error::BadUri("not a sip or sips URI")),
        }
    }

    /// The URI as written.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    /// URI parameters (`;lr`, `;transport=tcp`, ...).
    pub fn params(&self) -> Params<'a> {
        params(self.params)
    }

    /// The raw parameter text after the first `;` of the host part.
    pub fn params_str(&self) -> &'a str {
        self.params
    }

    /// `;lr` present (loose routing).
    pub fn lr(&self) -> bool {
        self.params().has("lr")
    }

    /// `;transport=` value.
    pub fn transport(&self) -> Option<&'a str> {
        self.params().get("transport").flatten()
    }

    /// `host[:port]` as written, without user and parameters.
    pub fn host_port_str(&self) -> &'a str {
        let start = self.host_str.as_ptr() as usize - self.raw.as_ptr() as usize;
        let mut end = start + self.host_str.len();
        if self.port.is_some() {
            // The port as written (`:014` has leading zeros), up to the params or headers.
            let after = self.raw.get(end..).unwrap_or("");
            end += after.find([';', '?']).unwrap_or(after.len());
        }
        self.raw.get(start..end).unwrap_or(self.host_str)
    }

    /// `user@host` without port and parameters, e.g. for an address of record.
    pub fn user_host(&self) -> String {
        match self.user {
            Some(u) => format!("{u}@{}", self.host_str),
            None => self.host_str.to_owned(),
        }
    }
}

/// RFC 3261 `paramchar` (+ `%` escapes) loosely: unreserved, escaped, `[]/:&+$`.
fn is_param_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_'
                | b'.'
                | b'!'
                | b'~'
                | b'*'
                | b'\''
                | b'('
                | b')'
                | b'%'
                | b'['
                | b']'
                | b'/'
                | b':'
                | b'&'
                | b'+'
                | b'$'
                | b'"'
        )
}

/// `tel:` URI (RFC 3966).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelUri<'a> {
    raw: &'a str,
    /// The number as written, with `+` when global.
    pub number: &'a str,
    params: &'a str,
}

impl<'a> TelUri<'a> {
    fn parse_rest(raw: &'a str, rest: &'a str) -> Result<TelUri<'a>> {
        let (number, params) = match rest.find(';') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let visual = |b: u8| matches!(b, b'-' | b'.' | b'(' | b')');
        if let Some(digits) = number.strip_prefix('+') {
            if !digits.bytes().any(|b| b.is_ascii_digit())
                || !digits.bytes().all(|b| b.is_ascii_digit() || visual(b))
            {
                return Err(Error::BadUri("bad global telephone number"));
            }
        } else {
            if number.is_empty()
                || !number
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b'*' || b == b'#' || visual(b))
            {
                return Err(Error::BadUri("bad local telephone number"));
            }
            // descriptor = domainname / global-number-digits (RFC 3966 §3): nothing quoted.
            let context = crate::text::params(params).get("phone-context").flatten();
            let descriptor = |c: &str| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'+' | b'(' | b')')
                    })
            };
            if !context.is_some_and(descriptor) {
                return Err(Error::BadUri("local tel number without phone-context"));
            }
        }
        Ok(TelUri {
            raw,
            number,
            params,
        })
    }

    /// The URI as written.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    /// A global number (`+…`).
    pub fn is_global(&self) -> bool {
        self.number.starts_with('+')
    }

    /// Parameters (`phone-context`, `ext`, `isub`, ...).
    pub fn params(&self) -> Params<'a> {
        params(self.params)
    }

    /// The `phone-context` of a local number.
    pub fn phone_context(&self) -> Option<&'a str> {
        self.params().get("phone-context").flatten()
    }

    /// The digits only (visual separators removed), with `+` for a global number.
    pub fn normalized(&self) -> String {
        self.number
            .chars()
            .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
            .collect()
    }
}

/// `urn:` URI (RFC 8141): namespace id and namespace-specific string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrnUri<'a> {
    raw: &'a str,
    /// Namespace identifier (`gsma`, `uuid`, ...).
    pub nid: &'a str,
    /// Namespace-specific string.
    pub nss: &'a str,
}

impl<'a> UrnUri<'a> {
    fn parse_rest(raw: &'a str, rest: &'a str) -> Result<UrnUri<'a>> {
        let colon = rest
            .find(':')
            .ok_or(Error::BadUri("urn without namespace"))?;
        let nid = &rest[..colon];
        let nss = &rest[colon + 1..];
        if nid.is_empty()
            || nid.len() > 32
            || !nid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || nss.is_empty()
        {
            return Err(Error::BadUri("bad urn"));
        }
        Ok(UrnUri { raw, nid, nss })
    }

    /// The URI as written.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uris() {
        let u = SipUri::parse("sip:alice.private@hims.net:5070;transport=tcp;lr?Route=x").unwrap();
        assert_eq!(u.user, Some("alice.private"));
        assert_eq!(u.host, Host::Name("hims.net"));
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport(), Some("tcp"));
        assert!(u.lr());
        assert_eq!(u.headers, Some("Route=x"));
        assert_eq!(u.host_port_str(), "hims.net:5070");
        // Fuzz regression (sip_uri): a port with leading zeros lost its last digits.
        let zeros = SipUri::parse("sip:a@hims.net:014;lr").unwrap();
        assert_eq!(zeros.host_port_str(), "hims.net:014");
        let v6 = SipUri::parse("sip:[2001:db8::10]:5060").unwrap();
        assert_eq!(v6.host, Host::V6("2001:db8::10".parse().unwrap()));
        assert_eq!(v6.host_str, "[2001:db8::10]");
        assert_eq!(v6.host_port_str(), "[2001:db8::10]:5060");
        let v4 = SipUri::parse("sips:10.0.0.1").unwrap();
        assert!(v4.secure);
        assert_eq!(v4.host.ip(), Some("10.0.0.1".parse().unwrap()));
        let tel_user =
            SipUri::parse("sip:+4930123;phone-context=hims.net@hims.net;user=phone").unwrap();
        assert_eq!(tel_user.user, Some("+4930123;phone-context=hims.net"));
        assert_eq!(tel_user.params().get("user"), Some(Some("phone")));
        assert!(SipUri::parse("sip:a@host:99999").is_err());
        assert!(SipUri::parse("sip:a@[::1").is_err());
        assert!(SipUri::parse("sip:a@ho st").is_err());
        assert!(SipUri::parse("sip:@host").is_err());
        // Fuzz regression (sip_uri): an empty user before a password parsed, and its
        // identity `sip:@h` did not.
        assert!(SipUri::parse("sip::al`/=t_;l?pp@h?ms.").is_err());
        assert!(SipUri::parse("sip::pw@host").is_err());
        assert!(SipUri::parse("sip:a@1.2.3.999").is_err());
    }

    #[test]
    fn tel_and_urn() {
        let t = Uri::parse("tel:+49-30-1234567").unwrap();
        let t = t.as_tel().unwrap();
        assert!(t.is_global());
        assert_eq!(t.normalized(), "+49301234567");
        let l = Uri::parse("tel:7042;phone-context=example.com").unwrap();
        assert_eq!(l.as_tel().unwrap().phone_context(), Some("example.com"));
        assert!(Uri::parse("tel:7042").is_err());
        assert!(Uri::parse("tel:7042;phone-context").is_err());
        // Fuzz regression (sip_uri): a quoted phone-context parsed; its identity did not.
        assert!(Uri::parse(r#"tel:043043;phone-context=";=";="_a=x"#).is_err());
        assert!(Uri::parse("tel:7042;phone-context=+49-30").is_ok());
        // Fuzz regression (sip_uri): the identity of a local number dropped its
        // phone-context, leaving `tel:7042`, which is not a URI.
        assert_eq!(
            l.identity().as_deref(),
            Some("tel:7042;phone-context=example.com")
        );
        assert_eq!(
            Uri::parse("tel:+49-30;ext=1")
                .unwrap()
                .identity()
                .as_deref(),
            Some("tel:+49-30")
        );
        // rsip's "number too large": a long global number is just text here.
        assert!(Uri::parse("tel:+123456789012345678901234567890").is_ok());
        let u = Uri::parse("urn:gsma:imei:35209900-176148-0").unwrap();
        match u {
            Uri::Urn(u) => {
                assert_eq!(u.nid, "gsma");
                assert_eq!(u.nss, "imei:35209900-176148-0");
            }
            _ => panic!("not a urn"),
        }
        assert!(matches!(
            Uri::parse("mailto:a@b").unwrap(),
            Uri::Other {
                scheme: "mailto",
                ..
            }
        ));
        assert!(Uri::parse("nocolon").is_err());
    }
}

//! Authorization / Proxy-Authorization credentials and WWW-Authenticate /
//! Proxy-Authenticate challenges (RFC 3261 §20.7, §20.44, RFC 2617, RFC 3310 AKA, TS 24.229
//! `integrity-protected`, the `ck`/`ik` the S-CSCF hands the P-CSCF, `auts` on resync).
//! The value is `scheme` then comma-separated `name=value` parameters; quoted values come
//! back without their quotes. Edits rebuild the value keeping the other parameters as
//! they were written.

use crate::error::{Error, Result};
use crate::text::{self, Param};

/// A challenge or credentials value: scheme and parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth<'a> {
    /// `Digest` (compare case-insensitively).
    pub scheme: &'a str,
    params: &'a str,
}

impl<'a> Auth<'a> {
    /// Parses a header value.
    pub fn parse(s: &'a str) -> Result<Auth<'a>> {
        let s = text::trim(s);
        let end = s.find([' ', '\t', '\r', '\n']).unwrap_or(s.len());
        let scheme = &s[..end];
        if !text::is_token(scheme) {
            return Err(Error::BadHeader {
                name: "Authorization",
                why: "scheme is not a token",
            });
        }
        if !text::balanced(&s[end..]) {
            return Err(Error::BadHeader {
                name: "Authorization",
                why: "unclosed quoted string",
            });
        }
        let params = text::trim(&s[end..]);
        if !text::split_commas(params).all(|i| text::is_generic_param(&Param::parse(i), false)) {
            return Err(Error::BadHeader {
                name: "Authorization",
                why: "a parameter is not name=token or name=\"quoted string\"",
            });
        }
        Ok(Auth { scheme, params })
    }

    /// True for the Digest scheme.
    pub fn is_digest(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("Digest")
    }

    /// The parameters in order.
    pub fn params(&self) -> impl Iterator<Item = Param<'a>> + 'a {
        text::split_commas(self.params).map(Param::parse)
    }

    /// A parameter's value (quotes removed), or `None` when absent.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.params()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value.unwrap_or(""))
    }

    /// `username`.
    pub fn username(&self) -> Option<&'a str> {
        self.get("username")
    }
    /// `realm`.
    pub fn realm(&self) -> Option<&'a str> {
        self.get("realm")
    }
    /// `nonce`.
    pub fn nonce(&self) -> Option<&'a str> {
        self.get("nonce")
    }
    /// `uri` (digest-uri).
    pub fn uri(&self) -> Option<&'a str> {
        self.get("uri")
    }
    /// `response`.
    pub fn response(&self) -> Option<&'a str> {
        self.get("response")
    }
    /// `algorithm` (`MD5`, `AKAv1-MD5`, ...).
    pub fn algorithm(&self) -> Option<&'a str> {
        self.get("algorithm")
    }
    /// `cnonce`.
    pub fn cnonce(&self) -> Option<&'a str> {
        self.get("cnonce")
    }
    /// `nc` (8 hex digits).
    pub fn nc(&self) -> Option<&'a str> {
        self.get("nc")
    }
    /// `qop` (in a challenge, a quoted list such as `auth,auth-int`).
    pub fn qop(&self) -> Option<&'a str> {
        self.get("qop")
    }
    /// `opaque`.
    pub fn opaque(&self) -> Option<&'a str> {
        self.get("opaque")
    }
    /// `auts` (RFC 3310 resynchronisation).
    pub fn auts(&self) -> Option<&'a str> {
        self.get("auts")
    }
    /// `ck` (S-CSCF to P-CSCF, TS 33.203).
    pub fn ck(&self) -> Option<&'a str> {
        self.get("ck")
    }
    /// `ik` (S-CSCF to P-CSCF).
    pub fn ik(&self) -> Option<&'a str> {
        self.get("ik")
    }
    /// `integrity-protected` (TS 24.229: yes, no, tls-pending, tls-yes, ip-assoc-...).
    pub fn integrity_protected(&self) -> Option<&'a str> {
        self.get("integrity-protected")
    }

    /// The value without the named parameters (e.g. the P-CSCF strips `ck` and `ik`).
    pub fn without(&self, names: &[&str]) -> String {
        let mut out = String::with_capacity(self.scheme.len() + 1 + self.params.len());
        out.push_str(self.scheme);
        let mut first = true;
        for item in text::split_commas(self.params) {
            let p = Param::parse(item);
            if names.iter().any(|n| p.name.eq_ignore_ascii_case(n)) {
                continue;
            }
            out.push_str(if first { " " } else { ", " });
            out.push_str(item);
            first = false;
        }
        out
    }

    /// The value with a parameter set (replaced where present, else appended). `quoted`
    /// writes it as a quoted string.
    pub fn with(&self, name: &str, value: &str, quoted: bool) -> String {
        let mut out = self.without(&[name]);
        out.push_str(if out.len() == self.scheme.len() {
            " "
        } else {
            ", "
        });
        out.push_str(name);
        out.push('=');
        if quoted {
            out.push_str(&text::quote(value));
        } else {
            out.push_str(value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aka_challenge_and_edits() {
        let v = r#"Digest realm="hims.net", nonce="I1U8vpY3qJ0hiuZNrke/NVXzKLQ1d7m5Sp/6w1Tfr7M=", algorithm=AKAv1-MD5, qop="auth,auth-int", ck="b40ba9a3c58b2a05bbf0d987b21bf8cb", ik="f769bcd751044604127672711c6d3441""#;
        let a = Auth::parse(v).unwrap();
        assert!(a.is_digest());
        assert_eq!(a.algorithm(), Some("AKAv1-MD5"));
        assert_eq!(a.qop(), Some("auth,auth-int"));
        assert_eq!(a.ck(), Some("b40ba9a3c58b2a05bbf0d987b21bf8cb"));
        let stripped = a.without(&["ck", "ik"]);
        assert_eq!(
            stripped,
            r#"Digest realm="hims.net", nonce="I1U8vpY3qJ0hiuZNrke/NVXzKLQ1d7m5Sp/6w1Tfr7M=", algorithm=AKAv1-MD5, qop="auth,auth-int""#
        );
        let creds = Auth::parse(r#"Digest username="alice.private@hims.net", realm="hims.net", uri="sip:hims.net", nonce="", response="", integrity-protected="yes""#).unwrap();
        assert_eq!(creds.nonce(), Some(""));
        let edited = creds.with("integrity-protected", "no", true);
        let no = Auth::parse(&edited).unwrap();
        assert_eq!(no.integrity_protected(), Some("no"));
        assert_eq!(no.username(), Some("alice.private@hims.net"));
        assert!(Auth::parse(r#"Digest realm="open"#).is_err());
    }

    /// Fuzz regression (sip_auth): a parameter that is not `name=value` (here `<">">`, which
    /// the comma splitting reads as one bracketed item) parsed, and `with` then appended a
    /// parameter that was swallowed by it.
    #[test]
    fn parameters_are_auth_params() {
        assert!(Auth::parse(r#"t <">">"#).is_err());
        assert!(Auth::parse("Digest realm=<x, nonce=\"y>\"").is_err());
        assert!(Auth::parse(r#"Digest realm="a\"#).is_err());
        let ok = Auth::parse(r#"Digest realm="a\"b", uri="sip:h;lr", nc=00000001"#).unwrap();
        assert_eq!(ok.nc(), Some("00000001"));
    }
}

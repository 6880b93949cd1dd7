//! HTTP Digest authentication with MD5 (RFC 2617, RFC 7616's MD5 case), as SIP uses it.
//!
//! ```text
//! HA1 = MD5(username ":" realm ":" password)
//! HA2 = MD5(method ":" uri)                      qop absent or "auth"
//! HA2 = MD5(method ":" uri ":" MD5(body))        qop "auth-int"
//! response = MD5(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)   with qop
//! response = MD5(HA1 ":" nonce ":" HA2)                              without (RFC 2069)
//! rspauth  = the same with method empty (HA2 = MD5(":" uri [":" MD5(response body)]))
//! ```
//!
//! Hex is lowercase. Only the `MD5` algorithm (and `AKAv1-MD5`, which hashes the same way with
//! RES as the password) is supported; `MD5-sess` and SHA-256 are not. [`DigestParams`] holds the
//! Authorization parameters; its `verify*` methods compare the response in constant time.

use md5::{Digest as _, Md5};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::AkaError;
use crate::secret::fixed_secret;

fixed_secret!(
    /// HA1 = MD5(username:realm:password), raw 16 bytes (its lowercase hex enters the hash).
    Ha1,
    16
);

impl Ha1 {
    /// Computes HA1 from the user name, realm and password bytes (for Digest-AKA the password
    /// is the raw RES).
    pub fn compute(username: &str, realm: &str, password: &[u8]) -> Ha1 {
        let mut h = Md5::new();
        h.update(username.as_bytes());
        h.update(b":");
        h.update(realm.as_bytes());
        h.update(b":");
        h.update(password);
        let mut out: [u8; 16] = h.finalize().into();
        let ha1 = Ha1::new(out);
        out.zeroize();
        ha1
    }
}

/// The quality of protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qop {
    /// `auth`: HA2 covers method and URI.
    Auth,
    /// `auth-int`: HA2 also covers MD5(body).
    AuthInt,
}

impl Qop {
    /// Parses `auth` or `auth-int` (case-insensitive, as RFC 7616 tokens are).
    pub fn parse(s: &str) -> Result<Self, AkaError> {
        if s.eq_ignore_ascii_case("auth") {
            Ok(Qop::Auth)
        } else if s.eq_ignore_ascii_case("auth-int") {
            Ok(Qop::AuthInt)
        } else {
            Err(AkaError::UnsupportedQop(s.chars().take(32).collect()))
        }
    }

    /// The token as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
        }
    }
}

fn md5_hex(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let d: [u8; 16] = h.finalize().into();
    let mut out = [0u8; 32];
    // Infallible: 16 bytes always fit in 32 hex characters.
    let _ = hex::encode_to_slice(d, &mut out);
    out
}

/// The parameters of a Digest `Authorization` (or of a response a UE is about to send).
///
/// `nc` and `cnonce` are required when `qop` is present and ignored when it is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestParams<'a> {
    /// `username`.
    pub username: &'a str,
    /// `realm`.
    pub realm: &'a str,
    /// `nonce`, exactly as sent by the server.
    pub nonce: &'a str,
    /// `uri` (the digest-uri parameter, not the request line).
    pub uri: &'a str,
    /// `qop`; `None` for the legacy RFC 2069 form.
    pub qop: Option<Qop>,
    /// `nc`, the nonce count (8 hex digits), as sent.
    pub nc: Option<&'a str>,
    /// `cnonce`, as sent.
    pub cnonce: Option<&'a str>,
    /// The request method (e.g. `REGISTER`).
    pub method: &'a str,
    /// The request body (used only with `auth-int`).
    pub body: &'a [u8],
}

impl DigestParams<'_> {
    fn kd(&self, ha1: &Ha1, ha2: &[u8; 32]) -> Result<[u8; 16], AkaError> {
        let ha1_hex = ha1.to_hex();
        let mut h = Md5::new();
        h.update(ha1_hex.as_bytes());
        h.update(b":");
        h.update(self.nonce.as_bytes());
        h.update(b":");
        if let Some(qop) = self.qop {
            let nc = self.nc.ok_or(AkaError::MissingParam("nc"))?;
            let cnonce = self.cnonce.ok_or(AkaError::MissingParam("cnonce"))?;
            h.update(nc.as_bytes());
            h.update(b":");
            h.update(cnonce.as_bytes());
            h.update(b":");
            h.update(qop.as_str().as_bytes());
            h.update(b":");
        }
        h.update(ha2);
        Ok(h.finalize().into())
    }

    fn ha2(&self, method: &str, body: &[u8]) -> [u8; 32] {
        match self.qop {
            Some(Qop::AuthInt) => {
                let body_hash = md5_hex(&[body]);
                md5_hex(&[
                    method.as_bytes(),
                    b":",
                    self.uri.as_bytes(),
                    b":",
                    &body_hash,
                ])
            }
            _ => md5_hex(&[method.as_bytes(), b":", self.uri.as_bytes()]),
        }
    }

    /// The request-digest (raw 16 bytes) for the given HA1.
    pub fn response_bytes(&self, ha1: &Ha1) -> Result<[u8; 16], AkaError> {
        let ha2 = self.ha2(self.method, self.body);
        self.kd(ha1, &ha2)
    }

    /// The request-digest as the 32 lowercase hex characters of the `response` parameter.
    pub fn response(&self, ha1: &Ha1) -> Result<String, AkaError> {
        Ok(hex::encode(self.response_bytes(ha1)?))
    }

    /// The request-digest for a password (HA1 computed from username, realm and password).
    pub fn response_with_password(&self, password: &[u8]) -> Result<String, AkaError> {
        self.response(&Ha1::compute(self.username, self.realm, password))
    }

    /// Server side: checks `response` (32 hex digits, either case) against HA1, in constant
    /// time. `Err(ResponseMismatch)` when it does not match.
    pub fn verify(&self, response: &str, ha1: &Ha1) -> Result<(), AkaError> {
        let mut given = Zeroizing::new([0u8; 16]);
        crate::secret::decode_hex_into(response, given.as_mut(), "response")?;
        let mut expected = self.response_bytes(ha1)?;
        let ok = bool::from(expected.ct_eq(&*given));
        expected.zeroize();
        if ok {
            Ok(())
        } else {
            Err(AkaError::ResponseMismatch)
        }
    }

    /// Server side: [`Self::verify`] with the expected password bytes (for Digest-AKA, XRES;
    /// for a resync, the empty password).
    pub fn verify_password(&self, response: &str, password: &[u8]) -> Result<(), AkaError> {
        self.verify(response, &Ha1::compute(self.username, self.realm, password))
    }

    /// The `rspauth` of `Authentication-Info` (RFC 2617 §3.2.3): the digest with an empty
    /// method; `response_body` is the body of the 200 OK (used only with `auth-int`).
    pub fn rspauth(&self, ha1: &Ha1, response_body: &[u8]) -> Result<String, AkaError> {
        let ha2 = self.ha2("", response_body);
        Ok(hex::encode(self.kd(ha1, &ha2)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 §3.5 example (qop=auth), a vector independent of this crate.
    fn rfc2617() -> DigestParams<'static> {
        DigestParams {
            username: "Mufasa",
            realm: "testrealm@host.com",
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            uri: "/dir/index.html",
            qop: Some(Qop::Auth),
            nc: Some("00000001"),
            cnonce: Some("0a4f113b"),
            method: "GET",
            body: b"",
        }
    }

    #[test]
    fn rfc2617_example() {
        let p = rfc2617();
        let ha1 = Ha1::compute(p.username, p.realm, b"Circle Of Life");
        assert_eq!(
            p.response(&ha1).unwrap(),
            "6629fae49393a05397450978507c4ef1"
        );
        p.verify("6629fae49393a05397450978507c4ef1", &ha1).unwrap();
        p.verify("6629FAE49393A05397450978507C4EF1", &ha1).unwrap();
        p.verify_password("6629fae49393a05397450978507c4ef1", b"Circle Of Life")
            .unwrap();
        assert_eq!(
            p.verify_password("6629fae49393a05397450978507c4ef1", b"Circle of Life"),
            Err(AkaError::ResponseMismatch)
        );
    }

    #[test]
    fn rfc2069_legacy_without_qop() {
        // RFC 2069 §2.4 example: password "CircleOfLife", response = MD5(HA1:nonce:HA2).
        let p = DigestParams {
            qop: None,
            nc: None,
            cnonce: None,
            ..rfc2617()
        };
        let ha1 = Ha1::compute(p.username, p.realm, b"CircleOfLife");
        let ha2 = md5_hex(&[b"GET:/dir/index.html"]);
        let by_hand = md5_hex(&[
            ha1.to_hex().as_bytes(),
            b":dcd98b7102dd2f0e8b11d0f600bfb0c093:",
            &ha2,
        ]);
        let r = p.response(&ha1).unwrap();
        assert_eq!(r.as_bytes(), &by_hand);
        // The RFC prints e966c932...; that value is a known erratum of RFC 2069.
        assert_eq!(r, "1949323746fe6a43ef61f9606e7febea");
        p.verify(&r, &ha1).unwrap();
    }

    #[test]
    fn auth_int_includes_body_hash() {
        let body = b"v=0\r\n";
        let p = DigestParams {
            qop: Some(Qop::AuthInt),
            body,
            ..rfc2617()
        };
        let ha1 = Ha1::compute(p.username, p.realm, b"Circle Of Life");
        let hbody = md5_hex(&[body]);
        let ha2 = md5_hex(&[b"GET:/dir/index.html:", &hbody]);
        let by_hand = md5_hex(&[
            ha1.to_hex().as_bytes(),
            b":dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth-int:",
            &ha2,
        ]);
        let r = p.response(&ha1).unwrap();
        assert_eq!(r.as_bytes(), &by_hand);
        // A different body changes the response; qop auth ignores the body.
        let other = DigestParams { body: b"x", ..p };
        assert_eq!(other.verify(&r, &ha1), Err(AkaError::ResponseMismatch));
        assert_ne!(r, rfc2617().response(&ha1).unwrap());
    }

    #[test]
    fn rspauth_uses_empty_method() {
        let p = rfc2617();
        let ha1 = Ha1::compute(p.username, p.realm, b"Circle Of Life");
        let ha2 = md5_hex(&[b":/dir/index.html"]);
        let by_hand = md5_hex(&[
            ha1.to_hex().as_bytes(),
            b":dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:",
            &ha2,
        ]);
        assert_eq!(p.rspauth(&ha1, b"").unwrap().as_bytes(), &by_hand);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let p = rfc2617();
        let ha1 = Ha1::compute(p.username, p.realm, b"x");
        assert!(matches!(
            p.verify("", &ha1),
            Err(AkaError::InvalidHex { .. })
        ));
        assert!(matches!(
            p.verify("6629fae49393a05397450978507c4ef", &ha1),
            Err(AkaError::InvalidHex { .. })
        ));
        assert!(matches!(
            p.verify("6629fae49393a05397450978507c4efg", &ha1),
            Err(AkaError::InvalidHex { .. })
        ));
        let no_nc = DigestParams { nc: None, ..p };
        assert_eq!(no_nc.response(&ha1), Err(AkaError::MissingParam("nc")));
        let no_cnonce = DigestParams { cnonce: None, ..p };
        assert_eq!(
            no_cnonce.response(&ha1),
            Err(AkaError::MissingParam("cnonce"))
        );
        assert_eq!(Qop::parse("AUTH-INT"), Ok(Qop::AuthInt));
        assert!(matches!(
            Qop::parse("auth-conf"),
            Err(AkaError::UnsupportedQop(_))
        ));
    }
}

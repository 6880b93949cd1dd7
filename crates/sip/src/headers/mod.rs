//! Typed views of the headers the IMS path reads, as methods on [`Message`]. Each view
//! borrows the message; an error names the header that was wrong, so a server can answer
//! 400 with it ([`crate::Error::reason`]).
//!
//! | header | view |
//! |---|---|
//! | Via | [`Message::vias`], [`Message::top_via`] → [`Via`] |
//! | From, To | [`Message::from_addr`], [`Message::to_addr`] → [`NameAddr`] (`tag()`) |
//! | Call-ID, CSeq | [`Message::call_id`], [`Message::cseq`] → [`CSeq`] |
//! | Contact | [`Message::contacts`] → [`Contact`] (`*`, expires, `+sip.instance`) |
//! | Expires, Max-Forwards | [`Message::expires`], [`Message::max_forwards`] |
//! | Route, Record-Route, Path, Service-Route, P-Associated-URI, P-Asserted-Identity | [`Message::name_addrs`] |
//! | P-Visited-Network-ID | [`Message::visited_network_ids`] |
//! | P-Charging-Vector | [`Message::charging_vector`] → [`ChargingVector`] |
//! | P-Access-Network-Info | [`Message::access_network_info`] → [`AccessNetworkInfo`] |
//! | Security-Client/Server/Verify | [`Message::security`] → [`SecMechanism`] |
//! | Authorization, WWW-Authenticate, ... | [`Message::auth`] → [`Auth`] |
//! | Require, Supported, Proxy-Require | [`Message::option_tags`], [`Message::has_option_tag`] |

mod auth;
mod name_addr;
mod security;
mod via;

pub use auth::Auth;
pub use name_addr::{Contact, NameAddr};
pub use security::SecMechanism;
pub use via::Via;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::method::Method;
use crate::name::HeaderName;
use crate::text::{self, Params};

/// CSeq: sequence number and method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// Sequence number (below 2^31, RFC 3261 §8.1.1.5).
    pub seq: u32,
    /// The method.
    pub method: Method,
    /// The method as written.
    pub method_str: &'a str,
}

impl<'a> CSeq<'a> {
    /// Parses a CSeq value.
    pub fn parse(s: &'a str) -> Result<CSeq<'a>> {
        let bad = |why| Error::BadHeader { name: "CSeq", why };
        let s = text::trim(s);
        let sp = s.find([' ', '\t', '\r', '\n']).ok_or(bad("no method"))?;
        let num = &s[..sp];
        let method_str = text::trim(&s[sp..]);
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("sequence number is not a number"));
        }
        let seq: u64 = num.parse().unwrap_or(u64::MAX);
        if seq >= 1 << 31 {
            return Err(bad("sequence number not below 2**31"));
        }
        if !text::is_token(method_str) {
            return Err(bad("method is not a token"));
        }
        Ok(CSeq {
            seq: u32::try_from(seq).map_err(|_| bad("sequence number too large"))?,
            method: Method::from_bytes(method_str.as_bytes()),
            method_str,
        })
    }
}

/// P-Charging-Vector (RFC 7315 §4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargingVector<'a> {
    /// `icid-value`.
    pub icid: &'a str,
    params: &'a str,
}

impl<'a> ChargingVector<'a> {
    /// Parses a value; `icid-value` is mandatory.
    pub fn parse(s: &'a str) -> Result<ChargingVector<'a>> {
        let params = text::trim(s);
        let icid = text::params(params)
            .get("icid-value")
            .flatten()
            .ok_or(Error::BadHeader {
                name: "P-Charging-Vector",
                why: "no icid-value",
            })?;
        Ok(ChargingVector { icid, params })
    }
    /// Every parameter.
    pub fn params(&self) -> Params<'a> {
        text::params(self.params)
    }
    /// `orig-ioi`.
    pub fn orig_ioi(&self) -> Option<&'a str> {
        self.params().get("orig-ioi").flatten()
    }
    /// `term-ioi`.
    pub fn term_ioi(&self) -> Option<&'a str> {
        self.params().get("term-ioi").flatten()
    }
    /// `icid-generated-at`.
    pub fn generated_at(&self) -> Option<&'a str> {
        self.params().get("icid-generated-at").flatten()
    }
}

/// P-Access-Network-Info (RFC 7315 §4.4): access type and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessNetworkInfo<'a> {
    /// `3GPP-E-UTRAN-FDD`, `IEEE-802.11`, ...
    pub access_type: &'a str,
    params: &'a str,
}

impl<'a> AccessNetworkInfo<'a> {
    /// Parses a value.
    pub fn parse(s: &'a str) -> Result<AccessNetworkInfo<'a>> {
        let s = text::trim(s);
        let (t, params) = match s.find(';') {
            Some(i) => (text::trim(&s[..i]), &s[i..]),
            None => (s, ""),
        };
        if !text::is_token(t) {
            return Err(Error::BadHeader {
                name: "P-Access-Network-Info",
                why: "access type is not a token",
            });
        }
        Ok(AccessNetworkInfo {
            access_type: t,
            params,
        })
    }
    /// Parameters (`utran-cell-id-3gpp`, ...).
    pub fn params(&self) -> Params<'a> {
        text::params(self.params)
    }
}

fn header_text(m: &Message, name: HeaderName) -> Result<&str> {
    m.header(name)
        .ok_or(Error::MissingHeader(name.as_str()))?
        .value_str()
}

impl Message {
    /// Call-ID.
    pub fn call_id(&self) -> Result<&str> {
        let v = header_text(self, HeaderName::CallId)?;
        if v.is_empty() || v.bytes().any(|b| b <= b' ') {
            return Err(Error::BadHeader {
                name: "Call-ID",
                why: "empty or has whitespace",
            });
        }
        Ok(v)
    }

    /// CSeq.
    pub fn cseq(&self) -> Result<CSeq<'_>> {
        CSeq::parse(header_text(self, HeaderName::CSeq)?)
    }

    /// From.
    pub fn from_addr(&self) -> Result<NameAddr<'_>> {
        NameAddr::parse_named(header_text(self, HeaderName::From)?, "From")
    }

    /// To.
    pub fn to_addr(&self) -> Result<NameAddr<'_>> {
        NameAddr::parse_named(header_text(self, HeaderName::To)?, "To")
    }

    /// Every Via value, topmost first.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'_>>> + '_ {
        self.values(HeaderName::Via).map(|v| v.and_then(Via::parse))
    }

    /// The topmost Via.
    pub fn top_via(&self) -> Result<Via<'_>> {
        self.vias().next().ok_or(Error::MissingHeader("Via"))?
    }

    /// Every Contact value.
    pub fn contacts(&self) -> impl Iterator<Item = Result<Contact<'_>>> + '_ {
        self.values(HeaderName::Contact)
            .map(|v| v.and_then(Contact::parse))
    }

    /// Every address of an address-list header (Route, Record-Route, Path, Service-Route,
    /// P-Associated-URI, P-Asserted-Identity, ...), in order across lines.
    pub fn name_addrs(&self, name: HeaderName) -> impl Iterator<Item = Result<NameAddr<'_>>> + '_ {
        let hname = name.as_str();
        self.values(name)
            .map(move |v| v.and_then(|v| NameAddr::parse_named(v, hname)))
    }

    /// Expires header (`None` when absent).
    pub fn expires(&self) -> Option<Result<u32>> {
        self.header(HeaderName::Expires).map(|h| {
            h.value_str()
                .and_then(|v| name_addr::parse_delta_seconds(v, "Expires"))
        })
    }

    /// Max-Forwards (0..=255; `None` when absent).
    pub fn max_forwards(&self) -> Option<Result<u8>> {
        self.header(HeaderName::MaxForwards).map(|h| {
            let v = h.value_str()?;
            let v = text::trim(v);
            if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::BadHeader {
                    name: "Max-Forwards",
                    why: "not a number",
                });
            }
            v.parse::<u64>()
                .ok()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or(Error::BadHeader {
                    name: "Max-Forwards",
                    why: "above 255",
                })
        })
    }

    /// P-Visited-Network-ID values (quotes removed).
    pub fn visited_network_ids(&self) -> impl Iterator<Item = Result<&str>> + '_ {
        self.values(HeaderName::PVisitedNetworkId).map(|v| {
            v.map(|v| {
                let v = v.split(';').next().map_or(v, text::trim);
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
    }

    /// P-Charging-Vector.
    pub fn charging_vector(&self) -> Option<Result<ChargingVector<'_>>> {
        self.header(HeaderName::PChargingVector)
            .map(|h| h.value_str().and_then(ChargingVector::parse))
    }

    /// P-Access-Network-Info (the first one).
    pub fn access_network_info(&self) -> Option<Result<AccessNetworkInfo<'_>>> {
        self.header(HeaderName::PAccessNetworkInfo)
            .map(|h| h.value_str().and_then(AccessNetworkInfo::parse))
    }

    /// Security-Client, Security-Server or Security-Verify mechanisms.
    pub fn security(
        &self,
        name: HeaderName,
    ) -> impl Iterator<Item = Result<SecMechanism<'_>>> + '_ {
        self.values(name).map(|v| v.and_then(SecMechanism::parse))
    }

    /// Authorization-style headers, one per line (Authorization, Proxy-Authorization,
    /// WWW-Authenticate, Proxy-Authenticate).
    pub fn auth(&self, name: HeaderName) -> impl Iterator<Item = Result<Auth<'_>>> + '_ {
        self.headers_named(name)
            .map(|h| h.value_str().and_then(Auth::parse))
    }

    /// Option tags of Require, Supported, Proxy-Require or Unsupported.
    pub fn option_tags(&self, name: HeaderName) -> impl Iterator<Item = &str> + '_ {
        self.values(name).filter_map(|v| v.ok())
    }

    /// True when the header lists this option tag (case-insensitive).
    pub fn has_option_tag(&self, name: HeaderName, tag: &str) -> bool {
        self.option_tags(name).any(|t| t.eq_ignore_ascii_case(tag))
    }

    /// The checks a server makes before handling a request (RFC 3261 §8.2, §16.3): the
    /// mandatory headers are present and well formed, CSeq's method matches the request's,
    /// the Request-URI parses. The error names the culprit; answer with its status.
    pub fn check_request(&self) -> Result<()> {
        let method = self
            .method_str()
            .ok_or(Error::BadStartLine("not a request"))?;
        if let crate::Uri::Sip(u) = self.request_uri()?
            && u.headers.is_some()
        {
            // RFC 3261 §19.1.5: headers in a Request-URI are discarded or rejected.
            return Err(Error::BadUri("Request-URI with headers (?...)"));
        }
        self.call_id()?;
        let cseq = self.cseq()?;
        if cseq.method_str != method {
            return Err(Error::BadHeader {
                name: "CSeq",
                why: "method differs from the request's",
            });
        }
        self.from_addr()?;
        self.to_addr()?;
        for (name, label) in [
            (HeaderName::From, "From"),
            (HeaderName::To, "To"),
            (HeaderName::CallId, "Call-ID"),
            (HeaderName::CSeq, "CSeq"),
        ] {
            if self.headers_named(name).count() > 1 {
                return Err(Error::BadHeader {
                    name: label,
                    why: "more than one",
                });
            }
        }
        let mut vias = 0;
        for v in self.vias() {
            v?;
            vias += 1;
        }
        if vias == 0 {
            return Err(Error::MissingHeader("Via"));
        }
        if let Some(mf) = self.max_forwards() {
            mf?;
        }
        if let Some(e) = self.expires() {
            e?;
        }
        for c in self.contacts() {
            c?;
        }
        Ok(())
    }

    /// The checks a client makes on a response before matching it (RFC 3261 §8.1.3.1,
    /// §18.1.2): one Via, parseable CSeq, Call-ID, From and To.
    pub fn check_response(&self) -> Result<()> {
        if self.is_request() {
            return Err(Error::BadStartLine("not a response"));
        }
        self.top_via()?;
        self.call_id()?;
        self.cseq()?;
        self.from_addr()?;
        self.to_addr()?;
        Ok(())
    }
}

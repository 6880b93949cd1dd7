//! Via (RFC 3261 §20.42, §18.2.1 `received`, RFC 3581 `rport`). Spaces are allowed around
//! the slashes of `SIP / 2.0 / UDP` and before the sent-by.

use crate::error::{Error, Result};
use crate::text::{self, Params};
use crate::uri::{Host, host_port};

/// One Via value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// `SIP`.
    pub protocol: &'a str,
    /// `2.0`.
    pub version: &'a str,
    /// `UDP`, `TCP`, `TLS`, `SCTP`, `WS`, ... as written.
    pub transport: &'a str,
    /// sent-by host.
    pub host: Host<'a>,
    /// sent-by host as written.
    pub host_str: &'a str,
    /// sent-by port.
    pub port: Option<u16>,
    params: &'a str,
}

impl<'a> Via<'a> {
    /// Parses one Via value.
    pub fn parse(s: &'a str) -> Result<Via<'a>> {
        let bad = |why| Error::BadHeader { name: "Via", why };
        let s = text::trim(s);
        let (head, params) = match text::find_quoted_only(s, b";") {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        };
        let mut parts = head.splitn(3, '/');
        let protocol = text::trim(parts.next().ok_or(bad("no protocol"))?);
        let version = text::trim(parts.next().ok_or(bad("no version"))?);
        let rest = text::trim(parts.next().ok_or(bad("no transport"))?);
        let sp = rest
            .find([' ', '\t', '\r', '\n'])
            .ok_or(bad("no sent-by"))?;
        let transport = &rest[..sp];
        let sent_by = text::trim(&rest[sp..]);
        if !text::is_token(protocol) || !text::is_token(version) || !text::is_token(transport) {
            return Err(bad("bad sent-protocol"));
        }
        let (host, host_str, port) = host_port(sent_by).map_err(|_| bad("bad sent-by"))?;
        if !text::params(params).all(|p| text::is_generic_param(&p, false)) {
            return Err(bad("bad parameter"));
        }
        Ok(Via {
            protocol,
            version,
            transport,
            host,
            host_str,
            port,
            params,
        })
    }

    /// Parameters.
    pub fn params(&self) -> Params<'a> {
        text::params(self.params)
    }

    /// `;branch=`.
    pub fn branch(&self) -> Option<&'a str> {
        self.params().get("branch").flatten()
    }

    /// `;received=`.
    pub fn received(&self) -> Option<&'a str> {
        self.params().get("received").flatten()
    }

    /// `;rport` present: `Some(None)` without a value (a request asking for it),
    /// `Some(Some(port))` when filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params()
            .get("rport")
            .map(|v| v.and_then(|v| v.parse::<u16>().ok()))
    }

    /// `;maddr=`.
    pub fn maddr(&self) -> Option<&'a str> {
        self.params().get("maddr").flatten()
    }

    /// The transport upper-cased test: is it a reliable one (TCP, TLS, SCTP, WS, WSS)?
    pub fn is_reliable(&self) -> bool {
        !self.transport.eq_ignore_ascii_case("UDP")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let v = Via::parse("SIP / 2.0 / UDP 192.0.2.2:5060 ; branch = z9hG4bK390skdjuw ;rport")
            .unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, Host::V4("192.0.2.2".parse().unwrap()));
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.branch(), Some("z9hG4bK390skdjuw"));
        assert_eq!(v.rport(), Some(None));
        let v6 = Via::parse(
            "SIP/2.0/TCP [2001:db8::9]:5062;branch=z9hG4bKx;rport=5062;received=2001:db8::9",
        )
        .unwrap();
        assert_eq!(v6.host_str, "[2001:db8::9]");
        assert_eq!(v6.rport(), Some(Some(5062)));
        assert_eq!(v6.received(), Some("2001:db8::9"));
        assert!(v6.is_reliable());
        assert!(Via::parse("SIP/2.0/UDP").is_err());
        assert!(Via::parse("SIP/2.0 host").is_err());
        assert!(Via::parse("SIP/2.0/UDP host:port").is_err());
    }

    #[test]
    fn parameters_are_generic_params() {
        assert!(Via::parse("SIP/2.0/UDP h;branch=z9hG4bK<x").is_err());
        assert!(Via::parse("SIP/2.0/UDP h;received=a\"b").is_err());
        let v = Via::parse("SIP/2.0/UDP h;received=[2001:db8::1];x=\"q;r\"").unwrap();
        assert_eq!(v.received(), Some("[2001:db8::1]"));
    }
}

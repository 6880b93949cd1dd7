//! Security-Client / Security-Server / Security-Verify (RFC 3329) with the `ipsec-3gpp`
//! parameters of TS 33.203 Annex H: alg, ealg, prot, mod, spi-c, spi-s, port-c, port-s, q.

use crate::error::{Error, Result};
use crate::text::{self, Params};

/// One security mechanism offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecMechanism<'a> {
    /// `ipsec-3gpp`, `tls`, `digest`, ...
    pub name: &'a str,
    params: &'a str,
}

impl<'a> SecMechanism<'a> {
    /// Parses one value.
    pub fn parse(s: &'a str) -> Result<SecMechanism<'a>> {
        let s = text::trim(s);
        let (name, params) = match s.find(';') {
            Some(i) => (text::trim(&s[..i]), &s[i..]),
            None => (s, ""),
        };
        if !text::is_token(name) {
            return Err(Error::BadHeader {
                name: "Security-Client",
                why: "mechanism name is not a token",
            });
        }
        Ok(SecMechanism { name, params })
    }

    /// True for `ipsec-3gpp`.
    pub fn is_ipsec_3gpp(&self) -> bool {
        self.name.eq_ignore_ascii_case("ipsec-3gpp")
    }

    /// All parameters.
    pub fn params(&self) -> Params<'a> {
        text::params(self.params)
    }

    /// One parameter's value.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.params().get(name).flatten()
    }

    fn number<T: std::str::FromStr>(&self, name: &'static str) -> Result<Option<T>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.parse::<T>().map(Some).map_err(|_| Error::BadHeader {
                name: "Security-Client",
                why: name,
            }),
        }
    }

    /// `alg` (integrity: `hmac-md5-96`, `hmac-sha-1-96`).
    pub fn alg(&self) -> Option<&'a str> {
        self.get("alg")
    }
    /// `ealg` (`aes-cbc`, `des-ede3-cbc`, `null`; absent means null).
    pub fn ealg(&self) -> Option<&'a str> {
        self.get("ealg")
    }
    /// `prot` (`esp` by default).
    pub fn prot(&self) -> Option<&'a str> {
        self.get("prot")
    }
    /// `mod` (`trans` by default).
    pub fn mode(&self) -> Option<&'a str> {
        self.get("mod")
    }
    /// `spi-c`.
    pub fn spi_c(&self) -> Result<Option<u32>> {
        self.number("spi-c")
    }
    /// `spi-s`.
    pub fn spi_s(&self) -> Result<Option<u32>> {
        self.number("spi-s")
    }
    /// `port-c`.
    pub fn port_c(&self) -> Result<Option<u16>> {
        self.number("port-c")
    }
    /// `port-s`.
    pub fn port_s(&self) -> Result<Option<u16>> {
        self.number("port-s")
    }
    /// `q` (RFC 3329 preference).
    pub fn q(&self) -> Result<Option<f32>> {
        self.number("q")
    }

    /// Same mechanism and the same parameters, in any order and spacing, names compared
    /// case-insensitively (how Security-Verify is checked against Security-Server, and the
    /// second Security-Client against the first).
    pub fn same_as(&self, other: &SecMechanism<'_>) -> bool {
        if !self.name.eq_ignore_ascii_case(other.name) {
            return false;
        }
        // The same parameters as multisets: each of ours pairs off with one of theirs (a
        // parameter written twice must be there twice), so the relation is symmetric.
        let mine: Vec<_> = self.params().collect();
        let theirs: Vec<_> = other.params().collect();
        if mine.len() != theirs.len() {
            return false;
        }
        let mut used = vec![false; theirs.len()];
        mine.iter().all(|p| {
            let hit = theirs.iter().enumerate().position(|(i, o)| {
                !used[i] && o.name.eq_ignore_ascii_case(p.name) && o.value == p.value
            });
            hit.map(|i| used[i] = true).is_some()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipsec_3gpp() {
        let m = SecMechanism::parse(
            "ipsec-3gpp; alg=hmac-sha-1-96; ealg=aes-cbc; spi-c=1111; spi-s=2222; port-c=5062; port-s=5064; prot=esp; mod=trans",
        )
        .unwrap();
        assert!(m.is_ipsec_3gpp());
        assert_eq!(m.alg(), Some("hmac-sha-1-96"));
        assert_eq!(m.spi_c().unwrap(), Some(1111));
        assert_eq!(m.port_s().unwrap(), Some(5064));
        let reordered = SecMechanism::parse(
            "ipsec-3gpp;prot=esp;mod=trans;spi-c=1111;spi-s=2222;port-c=5062;port-s=5064;alg=hmac-sha-1-96;ealg=aes-cbc",
        )
        .unwrap();
        assert!(m.same_as(&reordered));
        let other =
            SecMechanism::parse("ipsec-3gpp;alg=hmac-md5-96;spi-c=1;spi-s=2;port-c=1;port-s=2")
                .unwrap();
        assert!(!m.same_as(&other));
        // Fuzz regression (sip_security): a parameter written twice matched a list with it
        // once and another parameter instead, in one direction only.
        let twice = SecMechanism::parse("ipsec-3gpp;alg=hmac-md5-96;alg=hmac-md5-96").unwrap();
        let other = SecMechanism::parse("ipsec-3gpp;alg=hmac-md5-96;ealg=null").unwrap();
        assert!(!twice.same_as(&other));
        assert!(!other.same_as(&twice));
        assert!(twice.same_as(&twice));
        assert!(
            SecMechanism::parse("ipsec-3gpp;spi-c=99999999999")
                .unwrap()
                .spi_c()
                .is_err()
        );
    }
}

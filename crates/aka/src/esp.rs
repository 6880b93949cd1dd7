//! IPsec ESP keys for the UE–P-CSCF security associations (TS 33.203 Annex I), and the Linux
//! xfrm names of the algorithms, as data for the `xfrm` crate.
//!
//! | sec-agree name | key from | key bits | kernel name (alias) |
//! |---|---|---|---|
//! | `hmac-md5-96` | IK | 128 | `hmac(md5)` (`md5`), ICV 96 of 128 |
//! | `hmac-sha-1-96` | IK \|\| 0x00000000 | 160 | `hmac(sha1)` (`sha1`), ICV 96 of 160 |
//! | `aes-cbc` | CK | 128 | `cbc(aes)` (`aes`) |
//! | `des-ede3-cbc` | CK1 \|\| CK2 \|\| CK1 (CK = CK1 \|\| CK2) | 192 | `cbc(des3_ede)` (`des3_ede`) |
//! | `null` | none | 0 | `ecb(cipher_null)` (`cipher_null`) |
//!
//! The same keys serve all four SAs in both directions.

use core::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::AkaError;
use crate::secret::{Ck, Ik};

/// An ESP key (0 to 192 bits), wiped on drop; `Debug` shows only its length.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct EspKey {
    buf: [u8; 24],
    len: u8,
}

impl EspKey {
    fn from_parts(parts: &[&[u8]]) -> Self {
        let mut buf = [0u8; 24];
        let mut len = 0usize;
        for p in parts {
            let end = (len + p.len()).min(24);
            buf[len..end].copy_from_slice(&p[..end - len]);
            len = end;
        }
        Self {
            buf,
            len: len as u8,
        }
    }

    /// The key bytes (empty for `null`). Do not log them.
    pub fn expose(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Key length in bits (what xfrm's `alg_key_len` wants).
    pub fn bits(&self) -> u32 {
        u32::from(self.len) * 8
    }

    /// Lowercase hex of the key, in a buffer wiped on drop.
    pub fn to_hex(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(hex::encode(self.expose()))
    }
}

impl fmt::Debug for EspKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EspKey({} bits, ..)", self.bits())
    }
}

/// ESP integrity algorithms of 3GPP sec-agree (`alg=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntegrityAlgorithm {
    /// `hmac-md5-96`.
    HmacMd5,
    /// `hmac-sha-1-96`.
    HmacSha1,
}

impl IntegrityAlgorithm {
    /// All values, in order of preference used by this project (strongest first).
    pub const ALL: [IntegrityAlgorithm; 2] = [Self::HmacSha1, Self::HmacMd5];

    /// Parses the Security-Client/Server `alg` value.
    pub fn from_name(name: &str) -> Result<Self, AkaError> {
        match name {
            "hmac-md5-96" => Ok(Self::HmacMd5),
            "hmac-sha-1-96" => Ok(Self::HmacSha1),
            other => Err(AkaError::UnknownAlgorithm(other.chars().take(32).collect())),
        }
    }

    /// The sec-agree name.
    pub fn name(self) -> &'static str {
        match self {
            Self::HmacMd5 => "hmac-md5-96",
            Self::HmacSha1 => "hmac-sha-1-96",
        }
    }

    /// The canonical Linux crypto name for `xfrm_algo.alg_name`.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Self::HmacMd5 => "hmac(md5)",
            Self::HmacSha1 => "hmac(sha1)",
        }
    }

    /// The kernel's compatibility alias (what Kamailio sends).
    pub fn kernel_alias(self) -> &'static str {
        match self {
            Self::HmacMd5 => "md5",
            Self::HmacSha1 => "sha1",
        }
    }

    /// Key length in bits.
    pub fn key_bits(self) -> u32 {
        match self {
            Self::HmacMd5 => 128,
            Self::HmacSha1 => 160,
        }
    }

    /// Truncated ICV length in bits (`alg_trunc_len`): 96 for both.
    pub fn icv_trunc_bits(self) -> u32 {
        96
    }

    /// Full HMAC output length in bits.
    pub fn icv_full_bits(self) -> u32 {
        match self {
            Self::HmacMd5 => 128,
            Self::HmacSha1 => 160,
        }
    }

    /// IK_ESP from IK (TS 33.203 Annex I).
    pub fn derive_key(self, ik: &Ik) -> EspKey {
        match self {
            Self::HmacMd5 => EspKey::from_parts(&[ik.expose()]),
            Self::HmacSha1 => EspKey::from_parts(&[ik.expose(), &[0u8; 4]]),
        }
    }
}

/// ESP encryption algorithms of 3GPP sec-agree (`ealg=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncryptionAlgorithm {
    /// `null`: no encryption (the default when `ealg` is absent).
    Null,
    /// `aes-cbc` with a 128-bit key.
    AesCbc,
    /// `des-ede3-cbc`.
    DesEde3Cbc,
}

impl EncryptionAlgorithm {
    /// All values, in order of preference used by this project (strongest first).
    pub const ALL: [EncryptionAlgorithm; 3] = [Self::AesCbc, Self::DesEde3Cbc, Self::Null];

    /// Parses the Security-Client/Server `ealg` value.
    pub fn from_name(name: &str) -> Result<Self, AkaError> {
        match name {
            "null" => Ok(Self::Null),
            "aes-cbc" => Ok(Self::AesCbc),
            "des-ede3-cbc" => Ok(Self::DesEde3Cbc),
            other => Err(AkaError::UnknownAlgorithm(other.chars().take(32).collect())),
        }
    }

    /// The sec-agree name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::AesCbc => "aes-cbc",
            Self::DesEde3Cbc => "des-ede3-cbc",
        }
    }

    /// The canonical Linux crypto name for `xfrm_algo.alg_name`.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Self::Null => "ecb(cipher_null)",
            Self::AesCbc => "cbc(aes)",
            Self::DesEde3Cbc => "cbc(des3_ede)",
        }
    }

    /// The kernel's compatibility alias (what Kamailio sends).
    pub fn kernel_alias(self) -> &'static str {
        match self {
            Self::Null => "cipher_null",
            Self::AesCbc => "aes",
            Self::DesEde3Cbc => "des3_ede",
        }
    }

    /// Key length in bits.
    pub fn key_bits(self) -> u32 {
        match self {
            Self::Null => 0,
            Self::AesCbc => 128,
            Self::DesEde3Cbc => 192,
        }
    }

    /// CK_ESP from CK (TS 33.203 Annex I).
    pub fn derive_key(self, ck: &Ck) -> EspKey {
        let ck = ck.expose();
        match self {
            Self::Null => EspKey::from_parts(&[]),
            Self::AesCbc => EspKey::from_parts(&[ck]),
            Self::DesEde3Cbc => EspKey::from_parts(&[ck, &ck[..8]]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set1_keys() -> (Ck, Ik) {
        (
            Ck::from_hex("b40ba9a3c58b2a05bbf0d987b21bf8cb").unwrap(),
            Ik::from_hex("f769bcd751044604127672711c6d3441").unwrap(),
        )
    }

    /// protocol-facts.md §4, test set 1 CK/IK.
    #[test]
    fn annex_i_examples() {
        let (ck, ik) = set1_keys();
        let sha = IntegrityAlgorithm::HmacSha1.derive_key(&ik);
        assert_eq!(
            sha.to_hex().as_str(),
            "f769bcd751044604127672711c6d344100000000"
        );
        assert_eq!(sha.bits(), 160);
        let md5 = IntegrityAlgorithm::HmacMd5.derive_key(&ik);
        assert_eq!(md5.to_hex().as_str(), "f769bcd751044604127672711c6d3441");
        let des = EncryptionAlgorithm::DesEde3Cbc.derive_key(&ck);
        assert_eq!(
            des.to_hex().as_str(),
            "b40ba9a3c58b2a05bbf0d987b21bf8cbb40ba9a3c58b2a05"
        );
        let aes = EncryptionAlgorithm::AesCbc.derive_key(&ck);
        assert_eq!(aes.to_hex().as_str(), "b40ba9a3c58b2a05bbf0d987b21bf8cb");
        let null = EncryptionAlgorithm::Null.derive_key(&ck);
        assert!(null.expose().is_empty());
        assert_eq!(null.bits(), 0);
        assert_eq!(format!("{des:?}"), "EspKey(192 bits, ..)");
    }

    #[test]
    fn key_lengths_match_declared_bits() {
        let (ck, ik) = set1_keys();
        for a in IntegrityAlgorithm::ALL {
            assert_eq!(a.derive_key(&ik).bits(), a.key_bits(), "{a:?}");
            assert_eq!(IntegrityAlgorithm::from_name(a.name()), Ok(a));
            assert!(a.icv_trunc_bits() <= a.icv_full_bits());
        }
        for e in EncryptionAlgorithm::ALL {
            assert_eq!(e.derive_key(&ck).bits(), e.key_bits(), "{e:?}");
            assert_eq!(EncryptionAlgorithm::from_name(e.name()), Ok(e));
        }
        assert!(IntegrityAlgorithm::from_name("hmac-sha-256").is_err());
        assert!(EncryptionAlgorithm::from_name("AES-CBC").is_err());
    }

    #[test]
    fn kernel_names() {
        let names: Vec<_> = IntegrityAlgorithm::ALL
            .iter()
            .map(|a| (a.kernel_name(), a.kernel_alias()))
            .chain(
                EncryptionAlgorithm::ALL
                    .iter()
                    .map(|e| (e.kernel_name(), e.kernel_alias())),
            )
            .collect();
        assert_eq!(
            names,
            [
                ("hmac(sha1)", "sha1"),
                ("hmac(md5)", "md5"),
                ("cbc(aes)", "aes"),
                ("cbc(des3_ede)", "des3_ede"),
                ("ecb(cipher_null)", "cipher_null"),
            ]
        );
    }
}

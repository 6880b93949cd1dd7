//! Digest-AKAv1-MD5 (RFC 3310): how AKA rides on HTTP Digest in SIP registration.
//!
//! - The server's `nonce` is base64(RAND || AUTN || optional server data) ([`AkaNonce`]).
//! - The UE's RES, as raw bytes, is the digest password; the server checks the response with
//!   XRES as the password ([`password`]) and computes `rspauth` with XRES too.
//! - On a synchronisation failure the UE computes its response with the **empty** password
//!   ([`RESYNC_PASSWORD`]) and adds `auts="base64(AUTS)"` (14 bytes, 20 characters:
//!   [`encode_auts`] / [`decode_auts`]).
//!
//! The hashing itself is [`crate::digest`]'s MD5 digest; `algorithm=AKAv1-MD5` changes only the
//! password. Decoders accept base64 with or without padding and never panic.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::AkaError;
use crate::digest::Ha1;
use crate::secret::Res;
use crate::vector::{Autn, Auts, Rand};

/// Standard alphabet; encodes with padding, decodes with or without it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The `algorithm` parameter value for Digest-AKA version 1.
pub const ALGORITHM: &str = "AKAv1-MD5";

/// The password of a response that carries `auts` (RFC 3310 §3.4): empty.
pub const RESYNC_PASSWORD: &[u8] = b"";

/// The longest nonce text accepted by [`AkaNonce::decode`] (RAND, AUTN and up to ~1 KiB of
/// server data); longer input is rejected before decoding.
pub const MAX_NONCE_LEN: usize = 1400;

/// The contents of a Digest-AKA nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkaNonce {
    /// RAND.
    pub rand: Rand,
    /// AUTN.
    pub autn: Autn,
    /// Opaque server data after AUTN (often empty).
    pub server_data: Vec<u8>,
}

impl AkaNonce {
    /// A nonce with no server data.
    pub fn new(rand: Rand, autn: Autn) -> Self {
        Self {
            rand,
            autn,
            server_data: Vec::new(),
        }
    }

    /// base64(RAND || AUTN || server data), padded.
    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(32 + self.server_data.len());
        raw.extend_from_slice(self.rand.as_bytes());
        raw.extend_from_slice(self.autn.as_bytes());
        raw.extend_from_slice(&self.server_data);
        B64.encode(raw)
    }

    /// Decodes a nonce: at least 32 bytes after base64 decoding.
    pub fn decode(nonce: &str) -> Result<Self, AkaError> {
        if nonce.len() > MAX_NONCE_LEN {
            return Err(AkaError::InvalidLength {
                what: "nonce",
                expected: MAX_NONCE_LEN,
                got: nonce.len(),
            });
        }
        let raw = B64
            .decode(nonce)
            .map_err(|_| AkaError::InvalidBase64 { what: "nonce" })?;
        if raw.len() < 32 {
            return Err(AkaError::InvalidLength {
                what: "nonce",
                expected: 32,
                got: raw.len(),
            });
        }
        Ok(Self {
            rand: Rand::from_slice(&raw[..16])?,
            autn: Autn::from_slice(&raw[16..32])?,
            server_data: raw[32..].to_vec(),
        })
    }
}

/// base64(AUTS): 20 characters.
pub fn encode_auts(auts: &Auts) -> String {
    B64.encode(auts.as_bytes())
}

/// Decodes the `auts` parameter: exactly 14 bytes after base64 decoding.
pub fn decode_auts(text: &str) -> Result<Auts, AkaError> {
    if text.len() > 24 {
        return Err(AkaError::InvalidLength {
            what: "auts",
            expected: 14,
            got: text.len() * 3 / 4,
        });
    }
    let raw = B64
        .decode(text)
        .map_err(|_| AkaError::InvalidBase64 { what: "auts" })?;
    Auts::from_slice(&raw)
}

/// The digest password for a RES/XRES: its raw bytes.
pub fn password(res: &Res) -> &[u8] {
    res.expose()
}

/// HA1 for Digest-AKA: MD5(username ":" realm ":" RES).
pub fn ha1(username: &str, realm: &str, res: &Res) -> Ha1 {
    Ha1::compute(username, realm, res.expose())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{DigestParams, Qop};
    use crate::milenage::Milenage;
    use crate::secret::{Key, Op};
    use crate::sqn::Sqn;
    use crate::vector::{Amf, AuthVector, build_auts, check_auts};

    const IMPI: &str = "001010000000001@ims.mnc001.mcc001.3gppnetwork.org";
    const REALM: &str = "ims.mnc001.mcc001.3gppnetwork.org";
    const URI: &str = "sip:ims.mnc001.mcc001.3gppnetwork.org";

    fn set1() -> (Milenage, Rand, Sqn, Amf) {
        let k = Key::from_hex("465b5ce8b199b49faa5f0a2ee238a6bc").unwrap();
        let op = Op::from_hex("cdc202d5123e20f62b6d676ac72cb318").unwrap();
        (
            Milenage::with_op(&k, &op),
            Rand::from_hex("23553cbe9637a89d218ae64dae47bf35").unwrap(),
            Sqn::from_hex("ff9bb4d0b607").unwrap(),
            Amf::from_hex("b9b9").unwrap(),
        )
    }

    /// protocol-facts.md §3, worked vector.
    #[test]
    fn worked_vector_nonce_ha1_response() {
        let (m, rand, sqn, amf) = set1();
        let av = AuthVector::generate(&m, rand, sqn, amf);
        assert_eq!(av.autn.to_hex(), "55f328b43577b9b94a9ffac354dfafb3");
        let nonce = AkaNonce::new(av.rand, av.autn).encode();
        assert_eq!(nonce, "I1U8vpY3qJ0hiuZNrke/NVXzKLQ1d7m5Sp/6w1Tfr7M=");
        let h = ha1(IMPI, REALM, &av.xres);
        assert_eq!(h.to_hex().as_str(), "da00069eb0de6587da7e09ef503c29db");
        let p = DigestParams {
            username: IMPI,
            realm: REALM,
            nonce: &nonce,
            uri: URI,
            qop: Some(Qop::Auth),
            nc: Some("00000001"),
            cnonce: Some("0a4f113b"),
            method: "REGISTER",
            body: b"",
        };
        assert_eq!(p.response(&h).unwrap(), "402ab8df9f3a4d63a9f47c2f90e02938");
        p.verify_password("402ab8df9f3a4d63a9f47c2f90e02938", password(&av.xres))
            .unwrap();
        // A response made with the resync (empty) password does not pass as a RES one.
        let empty = p.response_with_password(RESYNC_PASSWORD).unwrap();
        assert_eq!(
            p.verify_password(&empty, password(&av.xres)),
            Err(AkaError::ResponseMismatch)
        );
        p.verify_password(&empty, RESYNC_PASSWORD).unwrap();
    }

    #[test]
    fn nonce_decode_round_trip_and_server_data() {
        let n = AkaNonce::decode("I1U8vpY3qJ0hiuZNrke/NVXzKLQ1d7m5Sp/6w1Tfr7M=").unwrap();
        assert_eq!(n.rand.to_hex(), "23553cbe9637a89d218ae64dae47bf35");
        assert_eq!(n.autn.to_hex(), "55f328b43577b9b94a9ffac354dfafb3");
        assert!(n.server_data.is_empty());
        // Unpadded form is accepted too.
        assert_eq!(
            AkaNonce::decode("I1U8vpY3qJ0hiuZNrke/NVXzKLQ1d7m5Sp/6w1Tfr7M").unwrap(),
            n
        );
        let with_data = AkaNonce {
            server_data: b"srv".to_vec(),
            ..n.clone()
        };
        let enc = with_data.encode();
        assert_eq!(AkaNonce::decode(&enc).unwrap(), with_data);
    }

    #[test]
    fn nonce_decode_rejects_garbage() {
        for bad in [
            "",
            "I1U8",
            "not base64 at all!",
            "I1U8vpY3qJ0hiuZNrke/NVXzKLQ1d7m5Sp/6w1Tfr7",
            "====",
            "é",
        ] {
            assert!(AkaNonce::decode(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(AkaNonce::decode(&"A".repeat(MAX_NONCE_LEN + 4)).is_err());
    }

    /// protocol-facts.md §5: SQN_MS = 000000000040 with set 1 keys and RAND.
    #[test]
    fn auts_example_and_resync_authorization() {
        let (m, rand, _, _) = set1();
        let sqn_ms = Sqn::from_hex("000000000040").unwrap();
        let auts = build_auts(&m, &rand, sqn_ms);
        assert_eq!(auts.to_hex(), "451e8beca47b7c4adabf45e76f4b");
        let text = encode_auts(&auts);
        assert_eq!(text, "RR6L7KR7fErav0Xnb0s=");
        assert_eq!(text.len(), 20);
        let back = decode_auts(&text).unwrap();
        assert_eq!(back, auts);
        assert_eq!(check_auts(&m, &rand, &back), Ok(sqn_ms));
        let sip_auth = crate::vector::resync_authorization(&rand, &back);
        assert_eq!(
            hex::encode(sip_auth),
            "23553cbe9637a89d218ae64dae47bf35451e8beca47b7c4adabf45e76f4b"
        );
        assert_eq!(
            crate::vector::parse_resync_authorization(&sip_auth),
            Ok((rand, auts))
        );
        assert!(crate::vector::parse_resync_authorization(&sip_auth[..29]).is_err());
    }

    #[test]
    fn auts_decode_rejects_wrong_sizes() {
        assert!(decode_auts("").is_err());
        assert!(decode_auts("RR6L7KR7fErav0Xnb0s").is_ok());
        assert!(decode_auts("RR6L7KR7fErav0Xnb0").is_err()); // 13 bytes
        assert!(decode_auts("RR6L7KR7fErav0Xnb0s=AAAA").is_err());
        assert!(decode_auts(&"A".repeat(4000)).is_err());
        assert!(decode_auts("RR6L7KR7fErav0Xn*0s=").is_err());
    }
}

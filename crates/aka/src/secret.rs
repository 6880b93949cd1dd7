//! Secret byte strings: the subscriber key K, OP, OPc, the session keys CK and IK, the anonymity
//! key AK, and RES/XRES.
//!
//! Each type wipes its bytes when dropped (`zeroize`), compares in constant time (`subtle`),
//! and prints as `Name(..)` in `Debug`, so a `{:?}` in a log line never leaks a key. The bytes
//! are reached only through an explicit `expose()` (or `to_hex()` for the 401's `ck`/`ik`
//! parameters, which returns a buffer that is itself wiped on drop).

use core::fmt;

use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::AkaError;

/// Decodes exactly `out.len()` bytes of hex (either case) into `out`.
pub(crate) fn decode_hex_into(s: &str, out: &mut [u8], what: &'static str) -> Result<(), AkaError> {
    if s.len() != out.len() * 2 {
        return Err(AkaError::InvalidHex { what });
    }
    hex::decode_to_slice(s, out).map_err(|_| AkaError::InvalidHex { what })
}

/// Defines a fixed-length secret: zeroized on drop, redacted `Debug`, constant-time `Eq`.
macro_rules! fixed_secret {
    ($(#[$meta:meta])* $name:ident, $len:expr) => {
        $(#[$meta])*
        #[derive(Clone, ::zeroize::Zeroize, ::zeroize::ZeroizeOnDrop)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// Wraps raw bytes.
            pub fn new(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// Copies from a slice of exactly [`Self::LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, $crate::AkaError> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| $crate::AkaError::InvalidLength {
                    what: stringify!($name),
                    expected: $len,
                    got: bytes.len(),
                })?;
                Ok(Self(arr))
            }

            /// Parses exactly `2 * LEN` hex digits (no prefix, either case).
            pub fn from_hex(s: &str) -> Result<Self, $crate::AkaError> {
                let mut out = [0u8; $len];
                $crate::secret::decode_hex_into(s, &mut out, stringify!($name))?;
                Ok(Self(out))
            }

            /// The secret bytes. Do not log them.
            pub fn expose(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex of the secret, in a buffer wiped on drop.
            pub fn to_hex(&self) -> ::zeroize::Zeroizing<String> {
                ::zeroize::Zeroizing::new(hex::encode(self.0))
            }
        }

        impl ::core::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(concat!(stringify!($name), "(..)"))
            }
        }

        impl ::subtle::ConstantTimeEq for $name {
            fn ct_eq(&self, other: &Self) -> ::subtle::Choice {
                self.0.ct_eq(&other.0)
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                bool::from(::subtle::ConstantTimeEq::ct_eq(self, other))
            }
        }

        impl Eq for $name {}
    };
}
pub(crate) use fixed_secret;

fixed_secret!(
    /// The subscriber's permanent key K (128 bits).
    Key,
    16
);
fixed_secret!(
    /// The operator variant algorithm configuration field OP (128 bits).
    Op,
    16
);
fixed_secret!(
    /// OPc = AES_K(OP) xor OP, what the HSS usually stores instead of OP.
    Opc,
    16
);
fixed_secret!(
    /// The cipher key CK (f3 output, 128 bits).
    Ck,
    16
);
fixed_secret!(
    /// The integrity key IK (f4 output, 128 bits).
    Ik,
    16
);
fixed_secret!(
    /// An anonymity key AK or AK\* (f5 / f5\* output, 48 bits) that masks SQN.
    Ak,
    6
);

/// RES (UE) or XRES (HSS): 4 to 16 bytes, 8 with Milenage. In Digest-AKA it is the password.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Res {
    buf: [u8; 16],
    len: u8,
}

impl Res {
    /// Copies a RES of 4..=16 bytes (TS 33.102 §6.3.2: 32 to 128 bits).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, AkaError> {
        if !(4..=16).contains(&bytes.len()) {
            return Err(AkaError::InvalidResLength(bytes.len()));
        }
        let mut buf = [0u8; 16];
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            buf,
            len: bytes.len() as u8,
        })
    }

    /// Parses hex of 8..=32 digits (4..=16 bytes).
    pub fn from_hex(s: &str) -> Result<Self, AkaError> {
        if !s.len().is_multiple_of(2) || !(8..=32).contains(&s.len()) {
            return Err(AkaError::InvalidHex { what: "Res" });
        }
        let mut buf = Zeroizing::new([0u8; 16]);
        let n = s.len() / 2;
        decode_hex_into(s, &mut buf[..n], "Res")?;
        Self::from_slice(&buf[..n])
    }

    /// The RES bytes. Do not log them.
    pub fn expose(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always false (a RES has at least 4 bytes); present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Lowercase hex, in a buffer wiped on drop.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.expose()))
    }
}

impl From<[u8; 8]> for Res {
    /// A 64-bit RES, the length Milenage's f2 produces.
    fn from(bytes: [u8; 8]) -> Self {
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&bytes);
        Self { buf, len: 8 }
    }
}

impl fmt::Debug for Res {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Res(..)")
    }
}

impl ConstantTimeEq for Res {
    fn ct_eq(&self, other: &Self) -> Choice {
        // Lengths are public (always 8 with Milenage); the bytes are compared in constant time.
        self.expose().ct_eq(other.expose())
    }
}

impl PartialEq for Res {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.ct_eq(other))
    }
}

impl Eq for Res {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_secret() {
        let k = Key::from_hex("465b5ce8b199b49faa5f0a2ee238a6bc").unwrap();
        assert_eq!(format!("{k:?}"), "Key(..)");
        let r = Res::from_hex("a54211d5e3ba50bf").unwrap();
        assert_eq!(format!("{r:?}"), "Res(..)");
        assert_eq!(format!("{:?}", Ck::new([0xab; 16])), "Ck(..)");
        assert!(!format!("{:?}", Ik::new([0xab; 16])).contains("ab"));
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        let k = Key::from_hex("465B5CE8B199B49FAA5F0A2EE238A6BC").unwrap();
        assert_eq!(k.to_hex().as_str(), "465b5ce8b199b49faa5f0a2ee238a6bc");
        assert!(Key::from_hex("465b").is_err());
        assert!(Key::from_hex("0x465b5ce8b199b49faa5f0a2ee238a6").is_err());
        assert!(Key::from_hex("zz5b5ce8b199b49faa5f0a2ee238a6bc").is_err());
        assert!(Key::from_hex("é5b5ce8b199b49faa5f0a2ee238a6bc").is_err());
        assert!(Res::from_hex("a542").is_err());
        assert!(Res::from_hex("a54211d5e").is_err());
        assert!(Res::from_slice(&[0; 17]).is_err());
        assert!(Ak::from_slice(&[0; 5]).is_err());
    }

    #[test]
    fn equality_is_by_value() {
        let a = Res::from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let b = Res::from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let c = Res::from_slice(&[1, 2, 3, 4, 5, 6, 7, 9]).unwrap();
        let short = Res::from_slice(&[1, 2, 3, 4]).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, short);
        assert_ne!(Key::new([1; 16]), Key::new([2; 16]));
    }
}

//! A tiny in-memory registrar (P-CSCF and S-CSCF in one) for the swarm's tests and
//! benchmarks: no sockets, no state per UE.
//!
//! A REGISTER with an empty nonce gets a 401: Digest-AKAv1-MD5 with a vector built by
//! crates/aka's Milenage from the one K/OPc (RAND from a counter, SQN from a counter), or MD5
//! with a nonce of its own. A REGISTER with credentials is checked against the nonce it
//! carries (XRES recomputed from its RAND: stateless, so a re-registration reusing a nonce
//! is accepted without a new challenge) and gets a 200, or a 403 when the response is wrong.
//! Users whose name starts with `nobody` get a 403 at once.

use bytes::Bytes;
use ims_aka::digest_aka::{self, AkaNonce};
use ims_aka::{Amf, AuthVector, DigestParams, Milenage, Qop, Rand, Sqn};
use ims_sip::{HeaderName, Message};

/// The registrar's credentials for everybody.
#[derive(Clone)]
pub enum FakeCredentials {
    /// K and OPc.
    Aka {
        /// K.
        k: [u8; 16],
        /// OPc.
        opc: [u8; 16],
    },
    /// The password.
    Password(String),
}

/// The fake registrar.
pub struct FakeRegistrar {
    milenage: Option<Milenage>,
    password: Option<String>,
    realm: String,
    counter: u64,
    /// REGISTERs answered 401.
    pub challenges: u64,
    /// REGISTERs answered 200.
    pub accepted: u64,
    /// REGISTERs answered 403.
    pub refused: u64,
}

impl std::fmt::Debug for FakeRegistrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRegistrar")
            .field("realm", &self.realm)
            .field("challenges", &self.challenges)
            .field("accepted", &self.accepted)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl FakeRegistrar {
    /// A registrar for `realm`.
    pub fn new(realm: &str, credentials: FakeCredentials) -> Self {
        let (milenage, password) = match credentials {
            FakeCredentials::Aka { k, opc } => (
                Some(Milenage::new(
                    &ims_aka::Key::new(k),
                    &ims_aka::Opc::new(opc),
                )),
                None,
            ),
            FakeCredentials::Password(p) => (None, Some(p)),
        };
        Self {
            milenage,
            password,
            realm: realm.to_owned(),
            counter: 0,
            challenges: 0,
            accepted: 0,
            refused: 0,
        }
    }

    /// The answer to a datagram (`None` for anything but a readable REGISTER).
    pub fn handle(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        let req = Message::parse(Bytes::copy_from_slice(data)).ok()?;
        if req.method_str() != Some("REGISTER") {
            return None;
        }
        let auth = req.header_str(HeaderName::Authorization)?;
        let a = ims_sip::Auth::parse(auth).ok()?;
        let username = a.username().unwrap_or("");
        if username.starts_with("nobody") {
            self.refused += 1;
            return Self::answer(&req, 403, "Forbidden", None);
        }
        let nonce = a.nonce().unwrap_or("");
        if nonce.is_empty() {
            self.challenges += 1;
            self.counter += 1;
            let (nonce, algorithm) = match &self.milenage {
                Some(m) => {
                    let mut rand = [0u8; 16];
                    rand[..8].copy_from_slice(&self.counter.to_be_bytes());
                    let sqn = Sqn::new((self.counter << 5) & ((1 << 48) - 1)).ok()?;
                    let v = AuthVector::generate(m, Rand::new(rand), sqn, Amf::new([0x80, 0]));
                    (
                        AkaNonce::new(v.rand, v.autn).encode(),
                        digest_aka::ALGORITHM,
                    )
                }
                None => (format!("{:032x}", self.counter), "MD5"),
            };
            let www = format!(
                "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={algorithm}, qop=\"auth,auth-int\"",
                self.realm
            );
            return Self::answer(&req, 401, "Unauthorized", Some(("WWW-Authenticate", &www)));
        }
        let qop = match a.qop() {
            Some(q) => Some(Qop::parse(q).ok()?),
            None => None,
        };
        let params = DigestParams {
            username,
            realm: a.realm().unwrap_or(""),
            nonce,
            uri: a.uri().unwrap_or(""),
            qop,
            nc: a.nc(),
            cnonce: a.cnonce(),
            method: "REGISTER",
            body: b"",
        };
        let ok = match (&self.milenage, &self.password) {
            (Some(m), _) => {
                let n = AkaNonce::decode(nonce).ok()?;
                let xres = m.f2(&n.rand);
                params
                    .verify_password(a.response().unwrap_or(""), digest_aka::password(&xres))
                    .is_ok()
            }
            (None, Some(p)) => params
                .verify_password(a.response().unwrap_or(""), p.as_bytes())
                .is_ok(),
            (None, None) => false,
        };
        if ok {
            self.accepted += 1;
            Self::answer(&req, 200, "OK", None)
        } else {
            self.refused += 1;
            Self::answer(&req, 403, "Forbidden", None)
        }
    }

    fn answer(
        req: &Message,
        status: u16,
        reason: &str,
        header: Option<(&str, &str)>,
    ) -> Option<Vec<u8>> {
        let mut resp = ims_sip::response_to(req, status, reason, Some("fake")).ok()?;
        if let Some((name, value)) = header {
            resp.append_header(name, value).ok()?;
        }
        let mut out = Vec::with_capacity(resp.serialized_len());
        resp.write_to(&mut out);
        Some(out)
    }
}

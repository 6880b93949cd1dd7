//! The security agreement of RFC 3329 as TS 33.203 (§7.2, Annex H) uses it, without I/O.
//!
//! 1. First REGISTER: [`select_offer`] reads the UE's `Security-Client` values (several
//!    headers and comma lists alike; `digest`, `tls` and other mechanisms are ignored) and
//!    picks the best acceptable `ipsec-3gpp` offer. *Our* preference decides: the integrity
//!    algorithm (`alg`) by [`Preferences::integrity`] first, then the encryption algorithm
//!    (`ealg`, absent = `null`) by [`Preferences::encryption`], then the UE's `q`, then the
//!    order the UE listed them in. `prot` must be `esp` (absent = esp), `mod` must be `trans`
//!    (absent = trans); `spi-c`, `spi-s`, `port-c`, `port-s` are required.
//! 2. The 401 carries our [`security_server`] value (`ipsec-3gpp;q=0.1;prot=esp;mod=trans;
//!    spi-c=..;spi-s=..;port-c=..;port-s=..;alg=..;ealg=..`, Kamailio's shape).
//! 3. Second REGISTER: [`check_verify`] (its `Security-Verify` lists exactly what we sent) and
//!    [`check_client_unchanged`] (its `Security-Client` lists the same offers as the first
//!    REGISTER's). Any failure is answered `494 Security Agreement Required`.
//!
//! [`Agreement`] bundles what the P-CSCF keeps between the two REGISTERs.

use ims_aka::{EncryptionAlgorithm, IntegrityAlgorithm};
use ims_sip::SecMechanism;
use ims_sip::text::split_commas;

use crate::spi::SpiPair;

/// The longest piece of UE text an error repeats.
const ECHO_MAX: usize = 40;

fn echo(s: &str) -> String {
    s.chars().take(ECHO_MAX).collect()
}

/// The algorithms we accept, most preferred first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preferences {
    /// `alg` values.
    pub integrity: Vec<IntegrityAlgorithm>,
    /// `ealg` values (`null` included only when integrity-only SAs are acceptable).
    pub encryption: Vec<EncryptionAlgorithm>,
}

impl Preferences {
    /// Preference lists, most preferred first.
    pub fn new(integrity: Vec<IntegrityAlgorithm>, encryption: Vec<EncryptionAlgorithm>) -> Self {
        Self {
            integrity,
            encryption,
        }
    }
}

impl Default for Preferences {
    fn default() -> Self {
        Self {
            integrity: IntegrityAlgorithm::ALL.to_vec(),
            encryption: EncryptionAlgorithm::ALL.to_vec(),
        }
    }
}

/// The UE's chosen `ipsec-3gpp` offer: its algorithms, its SPIs and its protected ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOffer {
    /// Integrity algorithm (`alg`).
    pub alg: IntegrityAlgorithm,
    /// Encryption algorithm (`ealg`; `null` when the UE gave none).
    pub ealg: EncryptionAlgorithm,
    /// SPI of the UE's inbound SA at its protected client port (`spi_uc`).
    pub spi_c: u32,
    /// SPI of the UE's inbound SA at its protected server port (`spi_us`).
    pub spi_s: u32,
    /// The UE's protected client port (`port_uc`).
    pub port_c: u16,
    /// The UE's protected server port (`port_us`).
    pub port_s: u16,
    /// The mechanism as the UE wrote it (trimmed).
    pub raw: String,
}

/// Why no `ipsec-3gpp` offer was acceptable. With several offers, the error is the first
/// rejected offer's (or [`OfferError::NoIpsecOffer`] when there was none at all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// No `ipsec-3gpp` mechanism in Security-Client (or no Security-Client).
    #[error("Security-Client has no ipsec-3gpp mechanism")]
    NoIpsecOffer,
    /// A Security-Client value that is not `mechanism *(;param)`.
    #[error("Security-Client value is malformed: `{0}`")]
    Malformed(String),
    /// A required parameter is absent.
    #[error("ipsec-3gpp offer without {0}")]
    MissingParam(&'static str),
    /// A parameter with an unusable value (not a number, 0, out of range, spi-c = spi-s ...).
    #[error("ipsec-3gpp offer with an invalid {0}")]
    BadParam(&'static str),
    /// An `alg` we do not accept.
    #[error("integrity algorithm `{0}` is not accepted")]
    UnsupportedAlg(String),
    /// An `ealg` we do not accept (`null` too, when not configured).
    #[error("encryption algorithm `{0}` is not accepted")]
    UnsupportedEalg(String),
    /// `prot` other than `esp`.
    #[error("protocol `{0}` is not supported (only esp)")]
    UnsupportedProt(String),
    /// `mod` other than `trans` (tunnel / UDP-encapsulated modes are for NAT, Annex M).
    #[error("mode `{0}` is not supported (only trans)")]
    UnsupportedMode(String),
}

/// Every mechanism item of some header values (each value may be a comma list).
fn items<'a>(values: impl IntoIterator<Item = &'a str>) -> impl Iterator<Item = &'a str> {
    values.into_iter().flat_map(split_commas)
}

fn required<T>(v: ims_sip::Result<Option<T>>, name: &'static str) -> Result<T, OfferError> {
    match v {
        Ok(Some(x)) => Ok(x),
        Ok(None) => Err(OfferError::MissingParam(name)),
        Err(_) => Err(OfferError::BadParam(name)),
    }
}

/// Checks one `ipsec-3gpp` mechanism against our preferences; returns the offer and its rank
/// (lower is better) among our algorithm lists.
fn evaluate(
    m: &SecMechanism<'_>,
    raw: &str,
    prefs: &Preferences,
) -> Result<(ClientOffer, usize, usize), OfferError> {
    if let Some(p) = m.prot()
        && !p.eq_ignore_ascii_case("esp")
    {
        return Err(OfferError::UnsupportedProt(echo(p)));
    }
    if let Some(md) = m.mode()
        && !md.eq_ignore_ascii_case("trans")
    {
        return Err(OfferError::UnsupportedMode(echo(md)));
    }
    let alg_name = m.alg().ok_or(OfferError::MissingParam("alg"))?;
    let alg = IntegrityAlgorithm::from_name(&alg_name.to_ascii_lowercase())
        .map_err(|_| OfferError::UnsupportedAlg(echo(alg_name)))?;
    let alg_rank = prefs
        .integrity
        .iter()
        .position(|a| *a == alg)
        .ok_or_else(|| OfferError::UnsupportedAlg(echo(alg_name)))?;
    let ealg_name = m.ealg().unwrap_or("null");
    let ealg = EncryptionAlgorithm::from_name(&ealg_name.to_ascii_lowercase())
        .map_err(|_| OfferError::UnsupportedEalg(echo(ealg_name)))?;
    let ealg_rank = prefs
        .encryption
        .iter()
        .position(|e| *e == ealg)
        .ok_or_else(|| OfferError::UnsupportedEalg(echo(ealg_name)))?;
    let spi_c = required(m.spi_c(), "spi-c")?;
    let spi_s = required(m.spi_s(), "spi-s")?;
    let port_c = required(m.port_c(), "port-c")?;
    let port_s = required(m.port_s(), "port-s")?;
    if spi_c == 0 {
        return Err(OfferError::BadParam("spi-c"));
    }
    if spi_s == 0 || spi_s == spi_c {
        // Both UE inbound SAs have the UE's address as destination: equal SPIs collide.
        return Err(OfferError::BadParam("spi-s"));
    }
    if port_c == 0 {
        return Err(OfferError::BadParam("port-c"));
    }
    if port_s == 0 || port_s == port_c {
        return Err(OfferError::BadParam("port-s"));
    }
    Ok((
        ClientOffer {
            alg,
            ealg,
            spi_c,
            spi_s,
            port_c,
            port_s,
            raw: raw.to_owned(),
        },
        alg_rank,
        ealg_rank,
    ))
}

/// Picks the best acceptable `ipsec-3gpp` offer among the Security-Client `values` (the
/// header values as received: several headers, comma lists, other mechanisms all fine).
pub fn select_offer<'a>(
    values: impl IntoIterator<Item = &'a str>,
    prefs: &Preferences,
) -> Result<ClientOffer, OfferError> {
    // (alg rank, ealg rank, -q in thousandths, position) — the smallest wins.
    let mut best: Option<((usize, usize, i64, usize), ClientOffer)> = None;
    let mut first_error: Option<OfferError> = None;
    for (pos, raw) in items(values).enumerate() {
        let outcome = SecMechanism::parse(raw)
            .map_err(|_| OfferError::Malformed(echo(raw)))
            .and_then(|m| {
                if !m.is_ipsec_3gpp() {
                    return Ok(None);
                }
                let q = m.q().map_err(|_| OfferError::BadParam("q"))?.unwrap_or(1.0);
                if !(0.0..=1.0).contains(&q) {
                    return Err(OfferError::BadParam("q"));
                }
                let (offer, a, e) = evaluate(&m, raw, prefs)?;
                Ok(Some(((a, e, -((q * 1000.0).round() as i64), pos), offer)))
            });
        match outcome {
            Ok(None) => {}
            Ok(Some((rank, offer))) => {
                if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                    best = Some((rank, offer));
                }
            }
            Err(e) => {
                tracing::debug!(offer = %echo(raw), error = %e, "Security-Client offer refused");
                first_error.get_or_insert(e);
            }
        }
    }
    match best {
        Some((_, offer)) => Ok(offer),
        None => Err(first_error.unwrap_or(OfferError::NoIpsecOffer)),
    }
}

/// Our `Security-Server` value for the chosen `offer`: our SPIs (`spi-c` = `spi_pc`, `spi-s`
/// = `spi_ps`, the SPIs of *our* inbound SAs) and our protected ports.
pub fn security_server(offer: &ClientOffer, ours: SpiPair, port_pc: u16, port_ps: u16) -> String {
    format!(
        "ipsec-3gpp;q=0.1;prot=esp;mod=trans;spi-c={};spi-s={};port-c={port_pc};port-s={port_ps};alg={};ealg={}",
        ours.spi_pc,
        ours.spi_ps,
        offer.alg.name(),
        offer.ealg.name()
    )
}

/// Why the second REGISTER's security headers do not match the agreement (answer 494).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header is absent (or empty).
    #[error("{header} is missing")]
    Missing {
        /// `Security-Verify` or `Security-Client`.
        header: &'static str,
    },
    /// A value that does not parse.
    #[error("{header} is malformed: `{value}`")]
    Malformed {
        /// `Security-Verify` or `Security-Client`.
        header: &'static str,
        /// The offending value (shortened).
        value: String,
    },
    /// Not the same number of mechanisms.
    #[error("{header} lists {got} mechanisms, expected {want}")]
    Count {
        /// `Security-Verify` or `Security-Client`.
        header: &'static str,
        /// How many were expected.
        want: usize,
        /// How many came.
        got: usize,
    },
    /// A mechanism that was not in the expected list.
    #[error("{header} differs from the agreed one at `{value}`")]
    Differs {
        /// `Security-Verify` or `Security-Client`.
        header: &'static str,
        /// The first unmatched value (shortened).
        value: String,
    },
}

/// True when the two lists hold the same mechanisms with the same parameters
/// ([`SecMechanism::same_as`]: any parameter order and spacing), as multisets. A value that
/// does not parse matches only the same text: a UE whose first Security-Client carried an
/// item we could not read (and ignored when choosing) may echo it unchanged.
fn same_lists<'a, 'b>(
    header: &'static str,
    want: impl IntoIterator<Item = &'a str>,
    got: impl IntoIterator<Item = &'b str>,
) -> Result<(), VerifyError> {
    let got: Vec<(&str, Option<SecMechanism<'_>>)> = items(got)
        .map(|raw| (raw.trim(), SecMechanism::parse(raw).ok()))
        .collect();
    let want: Vec<(&str, Option<SecMechanism<'_>>)> = items(want)
        .map(|raw| (raw.trim(), SecMechanism::parse(raw).ok()))
        .collect();
    if got.is_empty() {
        return Err(VerifyError::Missing { header });
    }
    if got.len() != want.len() {
        return Err(VerifyError::Count {
            header,
            want: want.len(),
            got: got.len(),
        });
    }
    let mut used = vec![false; want.len()];
    for (raw, g) in &got {
        let hit = want.iter().enumerate().position(|(i, (w_raw, w))| {
            !used[i]
                && match (w, g) {
                    (Some(w), Some(g)) => w.same_as(g),
                    (None, None) => w_raw == raw,
                    _ => false,
                }
        });
        match (hit, g) {
            (Some(i), _) => used[i] = true,
            (None, None) => {
                return Err(VerifyError::Malformed {
                    header,
                    value: echo(raw),
                });
            }
            (None, Some(_)) => {
                return Err(VerifyError::Differs {
                    header,
                    value: echo(raw),
                });
            }
        }
    }
    Ok(())
}

/// Checks the second REGISTER's `Security-Verify` values against the `Security-Server` value
/// we sent: the same mechanisms, parameter for parameter (RFC 3329 §2.3.1).
pub fn check_verify<'a>(
    sent_server: &str,
    verify: impl IntoIterator<Item = &'a str>,
) -> Result<(), VerifyError> {
    same_lists("Security-Verify", [sent_server], verify)
}

/// Checks that the second REGISTER's `Security-Client` values list the same offers as the
/// first REGISTER's (TS 33.203 §7.2; a change would be a downgrade attempt).
pub fn check_client_unchanged<'a, 'b>(
    first: impl IntoIterator<Item = &'a str>,
    second: impl IntoIterator<Item = &'b str>,
) -> Result<(), VerifyError> {
    same_lists("Security-Client", first, second)
}

/// What the P-CSCF keeps from the first REGISTER (and its 401) to check the second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    /// The UE's offer we chose.
    pub offer: ClientOffer,
    /// Our SPIs.
    pub spis: SpiPair,
    /// Our protected client port.
    pub port_pc: u16,
    /// Our protected server port.
    pub port_ps: u16,
    /// The first REGISTER's Security-Client values, as received.
    pub client: Vec<String>,
    /// The Security-Server value we sent.
    pub server: String,
}

impl Agreement {
    /// Chooses the UE's offer from the first REGISTER's Security-Client `values` and writes
    /// our Security-Server for it.
    pub fn negotiate<'a>(
        values: impl IntoIterator<Item = &'a str> + Clone,
        prefs: &Preferences,
        spis: SpiPair,
        port_pc: u16,
        port_ps: u16,
    ) -> Result<Self, OfferError> {
        let offer = select_offer(values.clone(), prefs)?;
        let server = security_server(&offer, spis, port_pc, port_ps);
        Ok(Self {
            offer,
            spis,
            port_pc,
            port_ps,
            client: values.into_iter().map(str::to_owned).collect(),
            server,
        })
    }

    /// Both checks of the second REGISTER: `Security-Verify` first, then `Security-Client`.
    pub fn check_second_register<'a, 'b>(
        &self,
        client: impl IntoIterator<Item = &'a str>,
        verify: impl IntoIterator<Item = &'b str>,
    ) -> Result<(), VerifyError> {
        check_verify(&self.server, verify)?;
        check_client_unchanged(self.client.iter().map(String::as_str), client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VoLTE phone's offer as Kamailio's ims_ipsec_pcscf sees it.
    const PHONE: &str = "ipsec-3gpp;alg=hmac-sha-1-96;ealg=null;spi-c=3929102;spi-s=3929103;port-c=32789;port-s=5062";

    fn prefs() -> Preferences {
        Preferences::default()
    }

    #[test]
    fn single_real_world_offer() {
        let o = select_offer([PHONE], &prefs()).unwrap();
        assert_eq!(
            o,
            ClientOffer {
                alg: IntegrityAlgorithm::HmacSha1,
                ealg: EncryptionAlgorithm::Null,
                spi_c: 3_929_102,
                spi_s: 3_929_103,
                port_c: 32789,
                port_s: 5062,
                raw: PHONE.into(),
            }
        );
    }

    #[test]
    fn ealg_absent_means_null_and_defaults_for_prot_and_mod() {
        let v = "ipsec-3gpp; alg=hmac-md5-96; spi-c=1111; spi-s=2222; port-c=5062; port-s=5064";
        let o = select_offer([v], &prefs()).unwrap();
        assert_eq!(o.alg, IntegrityAlgorithm::HmacMd5);
        assert_eq!(o.ealg, EncryptionAlgorithm::Null);
        // Without null in our list, that offer is refused.
        let no_null = Preferences {
            encryption: vec![EncryptionAlgorithm::AesCbc],
            ..prefs()
        };
        assert_eq!(
            select_offer([v], &no_null),
            Err(OfferError::UnsupportedEalg("null".into()))
        );
        let explicit =
            "ipsec-3gpp;prot=ESP;mod=trans;alg=hmac-md5-96;spi-c=1;spi-s=2;port-c=3;port-s=4";
        assert!(select_offer([explicit], &prefs()).is_ok());
    }

    #[test]
    fn several_offers_our_preference_decides() {
        // The shape of a Samsung/Qualcomm REGISTER: four mechanisms in one header, the UE's
        // own favourite (md5) first.
        let header = "ipsec-3gpp;alg=hmac-md5-96;ealg=des-ede3-cbc;spi-c=98765;spi-s=98766;port-c=40000;port-s=40001, \
             ipsec-3gpp;alg=hmac-md5-96;ealg=aes-cbc;spi-c=98765;spi-s=98766;port-c=40000;port-s=40001, \
             ipsec-3gpp;alg=hmac-sha-1-96;ealg=null;spi-c=98765;spi-s=98766;port-c=40000;port-s=40001, \
             ipsec-3gpp;alg=hmac-sha-1-96;ealg=aes-cbc;spi-c=98765;spi-s=98766;port-c=40000;port-s=40001";
        let o = select_offer([header], &prefs()).unwrap();
        assert_eq!(
            (o.alg, o.ealg),
            (IntegrityAlgorithm::HmacSha1, EncryptionAlgorithm::AesCbc)
        );
        assert!(o.raw.ends_with(
            "alg=hmac-sha-1-96;ealg=aes-cbc;spi-c=98765;spi-s=98766;port-c=40000;port-s=40001"
        ));
        // An operator preferring md5 and 3DES gets those.
        let md5_first = Preferences {
            integrity: vec![IntegrityAlgorithm::HmacMd5, IntegrityAlgorithm::HmacSha1],
            encryption: vec![
                EncryptionAlgorithm::DesEde3Cbc,
                EncryptionAlgorithm::AesCbc,
                EncryptionAlgorithm::Null,
            ],
        };
        let o = select_offer([header], &md5_first).unwrap();
        assert_eq!(
            (o.alg, o.ealg),
            (IntegrityAlgorithm::HmacMd5, EncryptionAlgorithm::DesEde3Cbc)
        );
        // Integrity ranks before encryption: sha1/null beats md5/aes.
        let two = [
            "ipsec-3gpp;alg=hmac-md5-96;ealg=aes-cbc;spi-c=1;spi-s=2;port-c=3;port-s=4",
            "ipsec-3gpp;alg=hmac-sha-1-96;ealg=null;spi-c=5;spi-s=6;port-c=7;port-s=8",
        ];
        let o = select_offer(two, &prefs()).unwrap();
        assert_eq!(o.spi_c, 5);
    }

    #[test]
    fn q_then_order_break_ties() {
        let a = "ipsec-3gpp;q=0.5;alg=hmac-sha-1-96;spi-c=1;spi-s=2;port-c=3;port-s=4";
        let b = "ipsec-3gpp;q=0.9;alg=hmac-sha-1-96;spi-c=5;spi-s=6;port-c=7;port-s=8";
        assert_eq!(select_offer([a, b], &prefs()).unwrap().spi_c, 5);
        let c = "ipsec-3gpp;alg=hmac-sha-1-96;spi-c=9;spi-s=10;port-c=11;port-s=12";
        let d = "ipsec-3gpp;alg=hmac-sha-1-96;spi-c=13;spi-s=14;port-c=15;port-s=16";
        assert_eq!(select_offer([c, d], &prefs()).unwrap().spi_c, 9);
    }

    #[test]
    fn other_mechanisms_and_headers_are_ignored() {
        let values = ["digest;d-alg=md5;d-qop=auth", "tls;q=0.2, ipsec-man", PHONE];
        assert_eq!(select_offer(values, &prefs()).unwrap().spi_c, 3_929_102);
        assert_eq!(
            select_offer(["digest;q=0.1", "tls"], &prefs()),
            Err(OfferError::NoIpsecOffer)
        );
        assert_eq!(
            select_offer(std::iter::empty(), &prefs()),
            Err(OfferError::NoIpsecOffer)
        );
        // An acceptable offer wins over a broken one next to it.
        let broken = "ipsec-3gpp;alg=hmac-sha-1-96;spi-c=1";
        assert!(select_offer([broken, PHONE], &prefs()).is_ok());
    }

    #[test]
    fn missing_and_bad_params() {
        let cases: [(&str, OfferError); 14] = [
            (
                "ipsec-3gpp;ealg=null;spi-c=1;spi-s=2;port-c=3;port-s=4",
                OfferError::MissingParam("alg"),
            ),
            (
                "ipsec-3gpp;alg=hmac-sha-1-96;spi-s=2;port-c=3;port-s=4",
                OfferError::MissingParam("spi-c"),
            ),
            (
                "ipsec-3gpp;alg=hmac-sha-1-96;spi-c=1;port-c=3;port-s=4",
                OfferError::MissingParam("spi-s"),
            ),
            (
                "ipsec-3gpp;alg=hmac-sha-1-96;spi-c=1;spi-s=2;port-s=4",
                OfferError::MissingParam("port-c"),
            ),
            (
                "ipsec-3gpp;alg=hmac-sha-1-96;spi-c=1;spi-s=2;port-c=3",
                OfferError::MissingParam("port-s"),
            ),
            (
                "ipsec-3gpp;alg=hmac-sha-1-96;spi-c=x;spi-s=2;port-c=3;port-s=4",
                OfferError::BadParam("spi-c"),
            ),
            (
                "ipsec-3gpp;alg=hmac-sha-1-96;spi-c=1;spi-s=2;port-c=70000;port-s=4",
                OfferError::BadParam("port-c"),
            ),
            (
                "ipsec-3gpp;alg=hmac-sha-1-96;spi-c=0;spi-s=2;port-c=3;port-s=4",
                OfferError::BadParam("spi-c"),
            ),
            (
                "ipsec-3gpp;alg=hmac-sha-1-96;spi-c=7;spi-s=7;port-c=3;port-s=4",
                OfferError::BadParam("spi-s"),
            ),
            (
                "ipsec-3gpp;alg=hmac-sha-1-96;spi-c=1;spi-s=2;port-c=3;port-s=3",
                OfferError::BadParam("port-s"),
            ),
            (
                "ipsec-3gpp;alg=hmac-sha-256-128;spi-c=1;spi-s=2;port-c=3;port-s=4",
                OfferError::UnsupportedAlg("hmac-sha-256-128".into()),
            ),
            (
                "ipsec-3gpp;alg=hmac-sha-1-96;ealg=aes-gcm;spi-c=1;spi-s=2;port-c=3;port-s=4",
                OfferError::UnsupportedEalg("aes-gcm".into()),
            ),
            (
                "ipsec-3gpp;prot=ah;alg=hmac-sha-1-96;spi-c=1;spi-s=2;port-c=3;port-s=4",
                OfferError::UnsupportedProt("ah".into()),
            ),
            (
                "ipsec-3gpp;mod=UDP-enc-tun;alg=hmac-sha-1-96;spi-c=1;spi-s=2;port-c=3;port-s=4",
                OfferError::UnsupportedMode("UDP-enc-tun".into()),
            ),
        ];
        for (v, want) in cases {
            assert_eq!(select_offer([v], &prefs()), Err(want), "{v}");
        }
        // The first refused offer's reason is reported.
        assert_eq!(
            select_offer(
                [
                    "digest",
                    "ipsec-3gpp;alg=hmac-sha-1-96;spi-c=1",
                    "ipsec-3gpp;alg=foo;spi-c=1;spi-s=2;port-c=3;port-s=4"
                ],
                &prefs()
            ),
            Err(OfferError::MissingParam("spi-s"))
        );
        assert!(matches!(
            select_offer(["ipsec 3gpp;alg=x"], &prefs()),
            Err(OfferError::Malformed(_))
        ));
        // Only sha1 configured: an md5-only phone is refused with the algorithm named.
        let sha_only = Preferences {
            integrity: vec![IntegrityAlgorithm::HmacSha1],
            ..prefs()
        };
        assert_eq!(
            select_offer(
                ["ipsec-3gpp;alg=hmac-md5-96;spi-c=1;spi-s=2;port-c=3;port-s=4"],
                &sha_only
            ),
            Err(OfferError::UnsupportedAlg("hmac-md5-96".into()))
        );
        // Long UE text is not echoed whole.
        let long = format!(
            "ipsec-3gpp;alg={};spi-c=1;spi-s=2;port-c=3;port-s=4",
            "x".repeat(500)
        );
        let e = select_offer([long.as_str()], &prefs()).unwrap_err();
        assert!(e.to_string().len() < 100, "{e}");
    }

    #[test]
    fn security_server_text() {
        let o = select_offer([PHONE], &prefs()).unwrap();
        let s = security_server(
            &o,
            SpiPair {
                spi_pc: 4096,
                spi_ps: 4097,
            },
            5062,
            5063,
        );
        assert_eq!(
            s,
            "ipsec-3gpp;q=0.1;prot=esp;mod=trans;spi-c=4096;spi-s=4097;port-c=5062;port-s=5063;alg=hmac-sha-1-96;ealg=null"
        );
        let m = SecMechanism::parse(&s).unwrap();
        assert!(m.is_ipsec_3gpp());
        assert_eq!(m.spi_c().unwrap(), Some(4096));
        assert_eq!(m.port_s().unwrap(), Some(5063));
    }

    fn agreement() -> Agreement {
        Agreement::negotiate(
            ["digest;d-alg=md5", PHONE],
            &prefs(),
            SpiPair {
                spi_pc: 5000,
                spi_ps: 5001,
            },
            5062,
            5063,
        )
        .unwrap()
    }

    #[test]
    fn verify_must_echo_security_server() {
        let a = agreement();
        check_verify(&a.server, [a.server.as_str()]).unwrap();
        // Reordered parameters and spaces are the same mechanism.
        let reordered = "ipsec-3gpp; alg=hmac-sha-1-96; ealg=null; prot=esp; mod=trans; q=0.1; spi-c=5000; spi-s=5001; port-c=5062; port-s=5063";
        check_verify(&a.server, [reordered]).unwrap();
        assert_eq!(
            check_verify(&a.server, std::iter::empty()),
            Err(VerifyError::Missing {
                header: "Security-Verify"
            })
        );
        let wrong_spi = a.server.replace("spi-s=5001", "spi-s=5002");
        assert!(matches!(
            check_verify(&a.server, [wrong_spi.as_str()]),
            Err(VerifyError::Differs { .. })
        ));
        let downgraded = a.server.replace("alg=hmac-sha-1-96", "alg=hmac-md5-96");
        assert!(check_verify(&a.server, [downgraded.as_str()]).is_err());
        let missing_param = a.server.replace(";ealg=null", "");
        assert!(check_verify(&a.server, [missing_param.as_str()]).is_err());
        let extra = format!("{}, digest", a.server);
        assert_eq!(
            check_verify(&a.server, [extra.as_str()]),
            Err(VerifyError::Count {
                header: "Security-Verify",
                want: 1,
                got: 2
            })
        );
        assert!(matches!(
            check_verify(&a.server, ["ipsec 3gpp"]),
            Err(VerifyError::Malformed { .. })
        ));
    }

    #[test]
    fn second_security_client_must_equal_the_first() {
        let a = agreement();
        let v = [a.server.as_str()];
        // The same offers, split differently over headers and commas: fine.
        let joined = format!("{PHONE}, digest;d-alg=md5");
        a.check_second_register([joined.as_str()], v).unwrap();
        a.check_second_register(["digest;d-alg=md5", PHONE], v)
            .unwrap();
        // Dropping an offer, changing one or adding one: 494.
        assert!(matches!(
            a.check_second_register([PHONE], v),
            Err(VerifyError::Count {
                header: "Security-Client",
                ..
            })
        ));
        let changed = PHONE.replace("spi-c=3929102", "spi-c=1");
        assert!(matches!(
            a.check_second_register(["digest;d-alg=md5", changed.as_str()], v),
            Err(VerifyError::Differs {
                header: "Security-Client",
                ..
            })
        ));
        assert!(
            a.check_second_register(["digest;d-alg=md5", PHONE, "tls"], v)
                .is_err()
        );
        assert!(matches!(
            a.check_second_register(std::iter::empty(), v),
            Err(VerifyError::Missing { .. })
        ));
        // Verify is checked first.
        assert!(matches!(
            a.check_second_register(["digest;d-alg=md5", PHONE], ["digest"]),
            Err(VerifyError::Differs {
                header: "Security-Verify",
                ..
            })
        ));
        // An item we could not read in the first Security-Client (and ignored) may come back
        // unchanged, not changed (found by the property test below: the UE was stuck on 494).
        let spis = SpiPair {
            spi_pc: 5000,
            spi_ps: 5001,
        };
        let odd = Agreement::negotiate([";=;", PHONE], &prefs(), spis, 5062, 5063).unwrap();
        let v = [odd.server.as_str()];
        odd.check_second_register([PHONE, " ;=; "], v).unwrap();
        assert!(matches!(
            odd.check_second_register([PHONE, ";=;;"], v),
            Err(VerifyError::Malformed {
                header: "Security-Client",
                ..
            })
        ));
        // Duplicates count: [A, A] is not [A, B].
        check_client_unchanged([PHONE, PHONE], [PHONE, PHONE]).unwrap();
        assert!(check_client_unchanged([PHONE, "digest"], [PHONE, PHONE]).is_err());
    }

    mod props {
        //! Random Security-Client lists (valid and broken offers, other mechanisms, odd
        //! spacing and case): the choice is always an acceptable, best-ranked offer, and the
        //! second REGISTER passes exactly when it echoes what was agreed.
        use proptest::prelude::*;

        use super::*;

        /// One parameter: a good value, a bad one, or left out.
        fn param(name: &'static str, good: BoxedStrategy<String>) -> BoxedStrategy<String> {
            prop_oneof![
                6 => good.prop_map(move |v| format!(";{name}={v}")),
                1 => prop_oneof![
                    Just(String::new()),
                    Just(format!(";{name}=")),
                    Just(format!(";{name}=0")),
                    Just(format!(";{name}=x")),
                    Just(format!(";{name}=99999999999")),
                ],
            ]
            .boxed()
        }

        fn mechanism() -> impl Strategy<Value = String> {
            let alg = prop_oneof![
                Just("hmac-sha-1-96"),
                Just("hmac-md5-96"),
                Just("HMAC-SHA-1-96"),
                Just("hmac-sha-256-128"),
            ]
            .prop_map(str::to_owned)
            .boxed();
            let ealg = prop_oneof![
                Just("null"),
                Just("aes-cbc"),
                Just("des-ede3-cbc"),
                Just("aes-gcm")
            ]
            .prop_map(str::to_owned)
            .boxed();
            let spi = (1u32..8).prop_map(|v| v.to_string()).boxed();
            let port = (5060u16..5066).prop_map(|v| v.to_string()).boxed();
            let q = prop_oneof![Just("0.1"), Just("0.5"), Just("1"), Just("2"), Just("nan")]
                .prop_map(str::to_owned)
                .boxed();
            // Every parameter, each usually good, sometimes broken or left out, in any order.
            let ipsec = (
                prop_oneof![
                    8 => Just("ipsec-3gpp"),
                    1 => Just("IPSEC-3GPP"),
                    1 => Just("ipsec-ike")
                ],
                (
                    param("alg", alg),
                    prop_oneof![Just(String::new()), param("ealg", ealg)],
                    param("spi-c", spi.clone()),
                    param("spi-s", spi),
                    param("port-c", port.clone()),
                    param("port-s", port),
                ),
                (
                    prop_oneof![Just(String::new()), param("q", q)],
                    prop_oneof![
                        4 => Just(String::new()),
                        2 => param("prot", Just("esp".to_owned()).boxed()),
                        1 => Just(";prot=ah".to_owned())
                    ],
                    prop_oneof![
                        4 => Just(String::new()),
                        2 => param("mod", Just("trans".to_owned()).boxed()),
                        1 => Just(";mod=tun".to_owned())
                    ],
                ),
            )
                .prop_flat_map(|(mech, (a, b, c, d, e, f), (g, h, i))| {
                    (
                        Just(mech),
                        Just(vec![a, b, c, d, e, f, g, h, i]).prop_shuffle(),
                    )
                })
                .prop_map(|(mech, params)| format!("{mech}{}", params.concat()));
            prop_oneof![
                8 => ipsec,
                1 => Just("digest;d-alg=md5".to_owned()),
                1 => Just("tls;q=0.2".to_owned()),
                1 => Just(";=;".to_owned()),
            ]
        }

        /// Header values: mechanisms grouped into comma lists.
        fn values() -> impl Strategy<Value = Vec<String>> {
            proptest::collection::vec(proptest::collection::vec(mechanism(), 1..3), 0..4)
                .prop_map(|hs| hs.into_iter().map(|h| h.join(" , ")).collect())
        }

        const SPIS: SpiPair = SpiPair {
            spi_pc: 4096,
            spi_ps: 4097,
        };

        proptest! {
            // About one case in ten has an acceptable offer: enough of both branches.
            #![proptest_config(ProptestConfig::with_cases(1024))]

            #[test]
            fn the_choice_is_acceptable_and_the_echo_verifies(vals in values(), md5_first: bool) {
                let prefs = if md5_first {
                    Preferences::new(
                        vec![IntegrityAlgorithm::HmacMd5, IntegrityAlgorithm::HmacSha1],
                        vec![EncryptionAlgorithm::AesCbc, EncryptionAlgorithm::Null],
                    )
                } else {
                    Preferences::default()
                };
                let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
                let acceptable: Vec<(ClientOffer, usize, usize)> = items(refs.iter().copied())
                    .filter_map(|raw| {
                        let m = SecMechanism::parse(raw).ok()?;
                        if !m.is_ipsec_3gpp() {
                            return None;
                        }
                        let q = m.q().ok()?.unwrap_or(1.0);
                        if !(0.0..=1.0).contains(&q) {
                            return None;
                        }
                        evaluate(&m, raw, &prefs).ok()
                    })
                    .collect();
                match Agreement::negotiate(refs.iter().copied(), &prefs, SPIS, 5062, 5063) {
                    Ok(a) => {
                        let o = &a.offer;
                        prop_assert!(o.spi_c != 0 && o.spi_s != 0 && o.spi_c != o.spi_s);
                        prop_assert!(o.port_c != 0 && o.port_s != 0 && o.port_c != o.port_s);
                        prop_assert!(prefs.integrity.contains(&o.alg));
                        prop_assert!(prefs.encryption.contains(&o.ealg));
                        // The best algorithm ranks among all acceptable offers.
                        let best = acceptable.iter().map(|(_, a, e)| (*a, *e)).min();
                        let mine = acceptable
                            .iter()
                            .find(|(c, _, _)| c == o)
                            .map(|(_, a, e)| (*a, *e));
                        prop_assert!(mine.is_some(), "the chosen offer is one of the acceptable ones");
                        prop_assert_eq!(mine, best);
                        // The echo of the agreement passes, in any order of the offers.
                        let server = a.server.clone();
                        prop_assert!(a.check_second_register(refs.iter().copied(), [server.as_str()]).is_ok());
                        let reversed: Vec<&str> = {
                            let mut v: Vec<&str> = items(refs.iter().copied()).collect();
                            v.reverse();
                            v
                        };
                        prop_assert!(a.check_second_register(reversed.iter().copied(), [server.as_str()]).is_ok());
                        // A changed Security-Verify, a dropped or an added offer: 494.
                        let other_spi = server.replace("spi-s=4097", "spi-s=4098");
                        prop_assert!(a.check_second_register(refs.iter().copied(), [other_spi.as_str()]).is_err());
                        prop_assert!(a
                            .check_second_register(refs.iter().copied(), [server.as_str(), "digest"])
                            .is_err());
                        let fewer = &reversed[1..];
                        prop_assert!(a.check_second_register(fewer.iter().copied(), [server.as_str()]).is_err());
                        let mut more = reversed.clone();
                        more.push(PHONE);
                        prop_assert!(a.check_second_register(more.iter().copied(), [server.as_str()]).is_err());
                    }
                    Err(_) => prop_assert!(acceptable.is_empty(), "an acceptable offer was refused: {vals:?}"),
                }
            }

            #[test]
            fn any_text_is_answered(vals in proptest::collection::vec(".{0,80}", 0..4), verify in ".{0,80}") {
                let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
                let _ = select_offer(refs.iter().copied(), &Preferences::default());
                let _ = check_verify(PHONE, [verify.as_str()]);
                let _ = check_client_unchanged(refs.iter().copied(), [verify.as_str()]);
            }
        }
    }
}

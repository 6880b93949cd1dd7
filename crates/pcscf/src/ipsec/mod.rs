//! IPsec for the UE–P-CSCF hop: the security agreement of RFC 3329 / TS 33.203 (Annex H) and
//! the four ESP transport-mode SAs of TS 33.203 §7, installed in the kernel through
//! [`ims_xfrm`].
//!
//! The pieces:
//! - [`IpsecConfig`]: the `[ipsec]` settings (mode, protected ports, SPI range, algorithm
//!   preferences, the xfrm marker of our entries), with [`IpsecConfig::validate`].
//! - [`secagree`], [`spi`], [`sa`]: the agreement, SPI allocation and the SA sets, from
//!   [`ims_ipsec`] (shared with the UE tool).
//! - [`mod@probe`]: the startup check that the kernel can install an ESP SA at all, and
//!   [`decide`] / [`startup`]: what the configured [`IpsecMode`] makes of its outcome.
//! - [`mod@flows`]: the SA sets of the UEs, from the 401 to their deletion, as the REGISTER
//!   handling drives them.

pub mod flows;
pub mod probe;

pub use ims_ipsec::{
    Agreement, ClientOffer, Installed, OfferError, Preferences, SaEntry, SaManager, SaParams, Side,
    SpiAllocator, SpiExhausted, SpiPair, VerifyError,
};
pub use ims_ipsec::{sa, secagree, spi};
pub use probe::{ProbeOutcome, decide, probe, startup};

use ims_aka::{EncryptionAlgorithm, IntegrityAlgorithm};
use serde::Deserialize;

/// The default xfrm selector marker (`sel.user`) of the P-CSCF's SAs and policies.
pub const DEFAULT_MARKER: u32 = 0x01A5_C0DE;

/// Whether the P-CSCF protects the UE hop with IPsec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpsecMode {
    /// IPsec or nothing: the P-CSCF does not start when the kernel cannot install ESP SAs,
    /// and a UE that offers no acceptable `ipsec-3gpp` mechanism is refused.
    Required,
    /// IPsec when the kernel and the UE can; otherwise plain SIP (one warning at startup).
    #[default]
    Preferred,
    /// Never IPsec (no startup probe).
    Off,
}

/// The `[ipsec]` section of the P-CSCF configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpsecConfig {
    /// `required`, `preferred` (default) or `off`.
    pub mode: IpsecMode,
    /// Our protected client port (`port-c` of Security-Server), default 5062.
    pub port_c: u16,
    /// Our protected server port (`port-s` of Security-Server), default 5063.
    pub port_s: u16,
    /// The inclusive range our SPIs come from, default `[4096, 65535]` (RFC 4303 reserves
    /// 1–255, so the start must be at least 256).
    pub spi_range: [u32; 2],
    /// Integrity algorithms we accept, most preferred first (`hmac-sha-1-96`, `hmac-md5-96`).
    pub algorithms: Vec<String>,
    /// Encryption algorithms we accept, most preferred first (`aes-cbc`, `des-ede3-cbc`,
    /// `null`). Leave `null` out to refuse integrity-only SAs.
    pub encryption: Vec<String>,
    /// The selector `user` value that marks our SAs and policies (never 0).
    pub marker: u32,
    /// How many seconds a registered UE's SAs outlive its registration (default 30, as
    /// Kamailio's ims_ipsec_pcscf), so a re-registration near the end still finds them.
    pub sa_margin_secs: u64,
}

impl Default for IpsecConfig {
    fn default() -> Self {
        Self {
            mode: IpsecMode::default(),
            port_c: 5062,
            port_s: 5063,
            spi_range: [4096, 65535],
            algorithms: vec!["hmac-sha-1-96".into(), "hmac-md5-96".into()],
            encryption: vec!["aes-cbc".into(), "des-ede3-cbc".into(), "null".into()],
            marker: DEFAULT_MARKER,
            sa_margin_secs: 30,
        }
    }
}

impl IpsecConfig {
    /// Checks what serde cannot: ports, SPI range, algorithm names, the marker.
    pub fn validate(&self) -> Result<(), String> {
        if self.port_c == 0 || self.port_s == 0 {
            return Err("ipsec: port_c and port_s must be non-zero".into());
        }
        if self.port_c == self.port_s {
            return Err(format!(
                "ipsec: port_c and port_s must differ (both are {})",
                self.port_c
            ));
        }
        let [start, end] = self.spi_range;
        if start < 256 {
            return Err(format!(
                "ipsec: spi_range starts at {start}; SPIs 0-255 are reserved (RFC 4303), start at 256 or above"
            ));
        }
        if start >= end {
            return Err(format!(
                "ipsec: spi_range [{start}, {end}] is empty or backwards (start must be below end)"
            ));
        }
        if self.marker == 0 {
            return Err(
                "ipsec: marker must not be 0 (0 is every unmarked xfrm entry on the host)".into(),
            );
        }
        self.integrity_preference()?;
        self.encryption_preference()?;
        Ok(())
    }

    /// [`IpsecConfig::algorithms`], parsed, in order; an error names an unknown or repeated
    /// one, or an empty list.
    pub fn integrity_preference(&self) -> Result<Vec<IntegrityAlgorithm>, String> {
        parse_list("algorithms", &self.algorithms, |n| {
            IntegrityAlgorithm::from_name(n).ok()
        })
    }

    /// The algorithm preferences of the security agreement.
    pub fn preferences(&self) -> Result<Preferences, String> {
        Ok(Preferences::new(
            self.integrity_preference()?,
            self.encryption_preference()?,
        ))
    }

    /// [`IpsecConfig::encryption`], parsed, in order.
    pub fn encryption_preference(&self) -> Result<Vec<EncryptionAlgorithm>, String> {
        parse_list("encryption", &self.encryption, |n| {
            EncryptionAlgorithm::from_name(n).ok()
        })
    }
}

fn parse_list<T: PartialEq>(
    what: &str,
    names: &[String],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, String> {
    if names.is_empty() {
        return Err(format!("ipsec: {what} must name at least one algorithm"));
    }
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let a = parse(n).ok_or_else(|| format!("ipsec: {what}: unknown algorithm `{n}`"))?;
        if out.contains(&a) {
            return Err(format!("ipsec: {what}: `{n}` is listed twice"));
        }
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrapper {
        ipsec: IpsecConfig,
    }

    fn parse(toml_text: &str) -> Result<IpsecConfig, String> {
        toml::from_str::<Wrapper>(toml_text)
            .map(|w| w.ipsec)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = IpsecConfig::default();
        assert_eq!(c.mode, IpsecMode::Preferred);
        assert_eq!((c.port_c, c.port_s), (5062, 5063));
        assert_eq!(c.spi_range, [4096, 65535]);
        assert_eq!(c.marker, DEFAULT_MARKER);
        assert_eq!(
            c.integrity_preference().unwrap(),
            [IntegrityAlgorithm::HmacSha1, IntegrityAlgorithm::HmacMd5]
        );
        assert_eq!(
            c.encryption_preference().unwrap(),
            [
                EncryptionAlgorithm::AesCbc,
                EncryptionAlgorithm::DesEde3Cbc,
                EncryptionAlgorithm::Null
            ]
        );
        c.validate().unwrap();
        assert_eq!(parse("[ipsec]\n").unwrap(), c);
    }

    #[test]
    fn serde_shape() {
        let c = parse(
            "[ipsec]\nmode = \"required\"\nport_c = 6100\nspi_range = [300, 400]\n\
             algorithms = [\"hmac-md5-96\"]\nencryption = [\"null\"]\nmarker = 7\n",
        )
        .unwrap();
        assert_eq!(c.mode, IpsecMode::Required);
        assert_eq!((c.port_c, c.port_s), (6100, 5063));
        assert_eq!(c.spi_range, [300, 400]);
        c.validate().unwrap();
        assert_eq!(
            parse("[ipsec]\nmode = \"off\"").unwrap().mode,
            IpsecMode::Off
        );
        assert!(parse("[ipsec]\nmode = \"Required\"").is_err());
        assert!(parse("[ipsec]\nmode = \"always\"").is_err());
        let unknown = parse("[ipsec]\nprot = \"esp\"").unwrap_err();
        assert!(unknown.contains("prot"), "{unknown}");
    }

    #[test]
    fn validation() {
        let ok = IpsecConfig::default();
        let bad = |f: &dyn Fn(&mut IpsecConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(&|c| c.spi_range = [255, 1000]).contains("256"));
        assert!(bad(&|c| c.spi_range = [1000, 1000]).contains("empty"));
        assert!(bad(&|c| c.spi_range = [2000, 1000]).contains("empty"));
        assert!(bad(&|c| c.port_s = c.port_c).contains("differ"));
        assert!(bad(&|c| c.port_c = 0).contains("non-zero"));
        assert!(bad(&|c| c.marker = 0).contains("marker"));
        assert!(bad(&|c| c.algorithms.clear()).contains("at least one"));
        assert!(bad(&|c| c.algorithms.push("hmac-sha-256".into())).contains("hmac-sha-256"));
        assert!(bad(&|c| c.encryption.push("aes-cbc".into())).contains("twice"));
        let mut edge = ok.clone();
        edge.spi_range = [256, 257];
        edge.validate().unwrap();
    }
}

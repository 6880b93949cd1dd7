//! The startup check: can this kernel install an ESP SA at all? And what the configured
//! [`IpsecMode`] makes of the answer.
//!
//! [`probe`] opens an xfrm socket, first removes every entry carrying our marker (what a
//! previous run may have left), then installs a throwaway policy and ESP SA between two
//! loopback ports (`127.0.0.1:port_c` → `127.0.0.1:port_s`, our preferred algorithms, a few
//! seconds of lifetime, our marker), and finally removes everything marked again — whatever
//! happened in between, so no SA or policy is left behind. On a kernel built without ESP the
//! SA is refused with [`XfrmError::EspUnsupported`] (protocol-facts / kernel-ipsec notes).
//!
//! [`decide`] maps (mode, outcome) to "use IPsec or not", or to the one clear error line
//! that stops a P-CSCF configured with `required`; [`startup`] does both and logs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ims_xfrm::{Direction, PolicySpec, SaSpec, XfrmError, XfrmSocket};
use zeroize::Zeroizing;

use super::sa::{POLICY_PRIORITY, REPLAY_WINDOW, auth_alg, enc_alg};
use super::{IpsecConfig, IpsecMode};

/// Lifetime of the probe's SA and policy, should the final cleanup not happen.
pub const PROBE_LIFETIME_SECS: u64 = 5;

/// What [`probe`] found.
#[derive(Debug)]
pub enum ProbeOutcome {
    /// An ESP SA (and its policy) installed and were removed again.
    Available,
    /// The kernel refused (or xfrm could not be used at all).
    Unavailable(XfrmError),
}

/// Checks that the kernel (in the calling thread's network namespace) can install an ESP
/// transport SA with `cfg`'s most preferred algorithms. Blocking; leaves no entry with
/// `cfg.marker` behind in either outcome (and removes stale ones).
pub fn probe(cfg: &IpsecConfig) -> ProbeOutcome {
    let mut sock = match XfrmSocket::open() {
        Ok(s) => s,
        Err(e) => return ProbeOutcome::Unavailable(e),
    };
    match sock.remove_marked(cfg.marker) {
        Ok((0, 0)) => {}
        Ok((sas, policies)) => {
            tracing::info!(
                sas,
                policies,
                marker = cfg.marker,
                "removed IPsec entries left by a previous run"
            )
        }
        Err(e) => return ProbeOutcome::Unavailable(e),
    }
    let attempt = try_install(&mut sock, cfg);
    let cleanup = sock.remove_marked(cfg.marker);
    match (attempt, cleanup) {
        (Err(e), _) => ProbeOutcome::Unavailable(e),
        (Ok(()), Err(e)) => ProbeOutcome::Unavailable(e),
        (Ok(()), Ok(_)) => ProbeOutcome::Available,
    }
}

fn try_install(sock: &mut XfrmSocket, cfg: &IpsecConfig) -> Result<(), XfrmError> {
    let alg = cfg
        .integrity_preference()
        .ok()
        .and_then(|l| l.first().copied())
        .unwrap_or(ims_aka::IntegrityAlgorithm::HmacSha1);
    let ealg = cfg
        .encryption_preference()
        .ok()
        .and_then(|l| l.first().copied())
        .unwrap_or(ims_aka::EncryptionAlgorithm::Null);
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let src = SocketAddr::new(lo, cfg.port_c);
    let dst = SocketAddr::new(lo, cfg.port_s);
    // The top of our range: the SPIs handed out first come from its bottom.
    let spi = cfg.spi_range[1];
    let reqid = spi;
    let policy = PolicySpec {
        src,
        dst,
        dir: Direction::Out,
        priority: POLICY_PRIORITY,
        reqid,
        marker: cfg.marker,
        hard_expires_secs: PROBE_LIFETIME_SECS,
    };
    let (auth, enc) = (auth_alg(alg), enc_alg(ealg));
    let sa = SaSpec {
        src,
        dst,
        spi,
        reqid,
        auth,
        auth_key: Zeroizing::new(vec![0x5a; auth.key_len()]),
        enc,
        enc_key: Zeroizing::new(vec![0xa5; enc.key_len()]),
        marker: cfg.marker,
        hard_expires_secs: PROBE_LIFETIME_SECS,
        replay_window: REPLAY_WINDOW,
    };
    sock.add_policy(&policy)?;
    match sock.add_sa(&sa) {
        // EEXIST comes after the kernel built the state (ESP, algorithms, keys all accepted):
        // someone else's SA holds that SPI on loopback, which says nothing against ESP.
        Ok(()) | Err(XfrmError::Exists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether to use IPsec, from the mode and the probe's outcome: `Ok(true)` when the kernel
/// can; `Ok(false)` for `off`, and for `preferred` on a kernel that cannot (the caller logs
/// one warning); for `required` on a kernel that cannot, the one error line to stop with.
pub fn decide(mode: IpsecMode, outcome: &ProbeOutcome) -> Result<bool, String> {
    match (mode, outcome) {
        (IpsecMode::Off, _) => Ok(false),
        (_, ProbeOutcome::Available) => Ok(true),
        (IpsecMode::Preferred, ProbeOutcome::Unavailable(_)) => Ok(false),
        (IpsecMode::Required, ProbeOutcome::Unavailable(e)) => Err(format!(
            "ipsec.mode = \"required\" but the startup probe failed: the kernel cannot install ESP SAs ({e})"
        )),
    }
}

/// [`probe`] (skipped for `off`) then [`decide`], with the log lines: one warning when
/// `preferred` falls back to plain SIP, one info line when IPsec is on.
pub fn startup(cfg: &IpsecConfig) -> Result<bool, String> {
    if cfg.mode == IpsecMode::Off {
        tracing::info!("IPsec off (ipsec.mode = \"off\")");
        return Ok(false);
    }
    let outcome = probe(cfg);
    let use_ipsec = decide(cfg.mode, &outcome)?;
    match (&outcome, use_ipsec) {
        (ProbeOutcome::Unavailable(e), false) => tracing::warn!(
            error = %e,
            "IPsec unavailable, continuing without it (ipsec.mode = \"preferred\"): the kernel cannot install ESP SAs"
        ),
        _ => tracing::info!(
            port_c = cfg.port_c,
            port_s = cfg.port_s,
            "IPsec available: UE hops are protected by ESP"
        ),
    }
    Ok(use_ipsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> ProbeOutcome {
        ProbeOutcome::Unavailable(XfrmError::EspUnsupported { op: "add SA" })
    }

    #[test]
    fn decisions() {
        use IpsecMode::*;
        assert_eq!(decide(Off, &ProbeOutcome::Available), Ok(false));
        assert_eq!(decide(Off, &unavailable()), Ok(false));
        assert_eq!(decide(Preferred, &ProbeOutcome::Available), Ok(true));
        assert_eq!(decide(Required, &ProbeOutcome::Available), Ok(true));
        assert_eq!(decide(Preferred, &unavailable()), Ok(false));
        let e = decide(Required, &unavailable()).unwrap_err();
        assert!(e.starts_with("ipsec.mode = \"required\" but "), "{e}");
        assert!(e.contains("the kernel cannot install ESP SAs ("), "{e}");
        assert!(e.contains("CONFIG_INET_ESP"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn off_does_not_probe() {
        // No xfrm socket is opened for `off` (this would need CAP_NET_ADMIN otherwise).
        let cfg = IpsecConfig {
            mode: IpsecMode::Off,
            ..IpsecConfig::default()
        };
        assert_eq!(startup(&cfg), Ok(false));
    }
}

//! The UEs' SA sets over their life (TS 33.203 §7, TS 24.229 §5.2.2): what the REGISTER
//! handling of the P-CSCF drives.
//!
//! 1. First (unprotected) REGISTER with an `ipsec-3gpp` Security-Client: [`Flows::negotiate`]
//!    picks the offer and allocates our SPI pair ([`Agreement`]).
//! 2. Its 401 with `ck`/`ik`: [`Flows::install`] puts the four SAs and policies in the kernel
//!    with the reg-await-auth lifetime. A set of the same UE address whose ports overlap the
//!    new one's (the UE came back, from the same or a new port) or an unfinished set of the
//!    same private identity is removed first, so policies never collide (no EEXIST) and
//!    nothing leaks; a registered set of that identity on other ports stays until the new
//!    set completes (§7.4: the old SAs carry traffic until the new ones are used).
//! 3. The second REGISTER arrives at `port_ps` from the UE's `port_uc`: [`Flows::agreement`]
//!    finds the set by that source to check Security-Verify/Client.
//! 4. Its 200: [`Flows::registered`] extends the set to the registration's lifetime and
//!    removes the identity's older sets. A failure of an unfinished set
//!    ([`Flows::failed`]), a deregistration ([`Flows::remove`]) or the time running out
//!    ([`Flows::sweep`]) removes it; the kernel's own hard lifetime is the backstop.
//!
//! Every kernel call is blocking (an xfrm netlink round trip): call these from
//! `spawn_blocking`. The table is one mutex over a map: it is taken per registration step,
//! never across a kernel call.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ims_ipsec::{Agreement, Installed, OfferError, Preferences, SaManager, SaParams, Side};
use ims_ipsec::{SpiAllocator, SpiPair};
use ims_xfrm::XfrmError;

use super::IpsecConfig;

/// The protected client address of a UE (its `port_uc`): where its protected requests come
/// from, and the key of its set.
pub type SetKey = SocketAddr;

/// What the REGISTER handling needs to know of an installed set.
#[derive(Debug, Clone)]
pub struct SetInfo {
    /// The agreement (to check the second REGISTER and answer from the right ports).
    pub agreement: Agreement,
    /// The private identity that set it up.
    pub impi: String,
    /// True once a 200 OK went through it.
    pub registered: bool,
}

struct Set {
    info: SetInfo,
    installed: Installed,
    until: Instant,
}

/// Why a set could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// `ck`/`ik` are not 32 hex digits each.
    #[error("the 401's ck/ik are not 128-bit hex keys")]
    BadKeys,
    /// The kernel refused.
    #[error(transparent)]
    Kernel(#[from] XfrmError),
}

/// The SA sets of all UEs.
pub struct Flows {
    mgr: SaManager,
    spis: SpiAllocator,
    prefs: Preferences,
    marker: u32,
    port_pc: u16,
    port_ps: u16,
    reqid: AtomicU32,
    sets: Mutex<HashMap<SetKey, Set>>,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows")
            .field("sets", &self.len())
            .finish_non_exhaustive()
    }
}

fn key16(hex_text: &str) -> Option<[u8; 16]> {
    let t = hex_text.trim().trim_matches('"');
    if t.len() != 32 || !t.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(t.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Flows {
    /// Opens the xfrm socket (in the calling thread's network namespace).
    pub fn open(cfg: &IpsecConfig) -> Result<Self, String> {
        let mgr = SaManager::open().map_err(|e| format!("IPsec: {e}"))?;
        let [start, end] = cfg.spi_range;
        Ok(Self {
            mgr,
            spis: SpiAllocator::new(start, end),
            prefs: cfg.preferences()?,
            marker: cfg.marker,
            port_pc: cfg.port_c,
            port_ps: cfg.port_s,
            reqid: AtomicU32::new(1),
            sets: Mutex::new(HashMap::new()),
        })
    }

    fn sets(&self) -> std::sync::MutexGuard<'_, HashMap<SetKey, Set>> {
        self.sets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Our protected ports (`port_pc`, `port_ps`).
    pub fn ports(&self) -> (u16, u16) {
        (self.port_pc, self.port_ps)
    }

    /// Sets in the table.
    pub fn len(&self) -> usize {
        self.sets().len()
    }

    /// True when no set is installed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// SPIs in use (allocated, installed or not).
    pub fn spis_in_use(&self) -> usize {
        self.spis.in_use()
    }

    /// Chooses the UE's offer among the Security-Client `values` and allocates our SPIs.
    /// `Ok(None)` when every SPI is in use (logged). Give the agreement back with
    /// [`Flows::release`] when no set is installed for it.
    pub fn negotiate<'a>(
        &self,
        values: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<Option<Agreement>, OfferError> {
        // A refused offer gives its SPIs back at once.
        let spis = match self.spis.allocate() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "no SPI pair left for a new UE");
                return Ok(None);
            }
        };
        match Agreement::negotiate(values, &self.prefs, spis, self.port_pc, self.port_ps) {
            Ok(a) => Ok(Some(a)),
            Err(e) => {
                self.spis.release(spis);
                Err(e)
            }
        }
    }

    /// Gives back the SPIs of an agreement that got no set.
    pub fn release(&self, agreement: &Agreement) {
        self.spis.release(agreement.spis);
    }

    /// Installs the four SAs of `agreement` between `ue_ip` and `pcscf_ip` with the keys of
    /// the 401 (`(ck, ik)` as hex), living `lifetime`. Conflicting older sets go first (see
    /// the module docs). On failure nothing is installed and the SPIs are given back.
    pub fn install(
        &self,
        agreement: Agreement,
        impi: &str,
        ue_ip: IpAddr,
        pcscf_ip: IpAddr,
        (ck, ik): (&str, &str),
        lifetime: Duration,
    ) -> Result<SetKey, InstallError> {
        let (Some(ck), Some(ik)) = (key16(ck), key16(ik)) else {
            self.release(&agreement);
            return Err(InstallError::BadKeys);
        };
        let offer = &agreement.offer;
        let ue_ports = [offer.port_c, offer.port_s];
        let key = SocketAddr::new(ue_ip, offer.port_c);
        let stale: Vec<Set> = {
            let mut sets = self.sets();
            let doomed: Vec<SetKey> = sets
                .iter()
                .filter(|(k, s)| {
                    let o = &s.info.agreement.offer;
                    k.ip() == ue_ip
                        && (ue_ports.contains(&o.port_c)
                            || ue_ports.contains(&o.port_s)
                            || (s.info.impi == impi && !s.info.registered))
                })
                .map(|(k, _)| *k)
                .collect();
            doomed.iter().filter_map(|k| sets.remove(k)).collect()
        };
        for s in stale {
            tracing::info!(ue = %ue_ip, spi_pc = s.info.agreement.spis.spi_pc, "an older IPsec SA set of this UE is replaced");
            self.delete(s);
        }
        let params = SaParams {
            side: Side::Pcscf,
            ue_ip,
            pcscf_ip,
            ue: offer.clone(),
            spi_pc: agreement.spis.spi_pc,
            spi_ps: agreement.spis.spi_ps,
            port_pc: agreement.port_pc,
            port_ps: agreement.port_ps,
            ik,
            ck,
            lifetime_secs: lifetime.as_secs().max(1),
            marker: self.marker,
            // Four reqids a set, distinct between sets; never 0.
            reqid_base: self.reqid.fetch_add(4, Ordering::Relaxed).max(1),
        };
        let installed = match self.mgr.install(&params) {
            Ok(i) => i,
            Err(e) => {
                self.release(&agreement);
                return Err(e.into());
            }
        };
        tracing::info!(
            ue = %key, impi, spi_pc = agreement.spis.spi_pc, spi_ps = agreement.spis.spi_ps,
            spi_uc = offer.spi_c, spi_us = offer.spi_s, alg = offer.alg.name(), ealg = offer.ealg.name(),
            "IPsec SAs installed (awaiting authentication)"
        );
        let set = Set {
            info: SetInfo {
                agreement,
                impi: impi.to_owned(),
                registered: false,
            },
            installed,
            until: Instant::now() + lifetime,
        };
        if let Some(old) = self.sets().insert(key, set) {
            // Cannot happen (removed above), but never leak one.
            self.delete(old);
        }
        Ok(key)
    }

    /// Whether a set protects what `source` sends (its protected client port): the one test
    /// of every request at the protected server port, so no clone of the set's details.
    pub fn covers(&self, source: SocketAddr) -> bool {
        self.sets().contains_key(&source)
    }

    /// The set whose UE sends from `source` (its protected client port).
    pub fn agreement(&self, source: SocketAddr) -> Option<SetInfo> {
        self.sets().get(&source).map(|s| s.info.clone())
    }

    /// The 200 OK of a registration went through the set at `key`: it lives `lifetime` more
    /// (the registration's expiry plus a margin), and the identity's other sets on this UE
    /// address go.
    pub fn registered(&self, key: SetKey, lifetime: Duration) -> Result<(), XfrmError> {
        let (older, extend) = {
            let mut sets = self.sets();
            let Some(s) = sets.get_mut(&key) else {
                return Ok(());
            };
            s.info.registered = true;
            s.until = Instant::now() + lifetime;
            let impi = s.info.impi.clone();
            let doomed: Vec<SetKey> = sets
                .iter()
                .filter(|(k, s)| **k != key && k.ip() == key.ip() && s.info.impi == impi)
                .map(|(k, _)| *k)
                .collect();
            let older: Vec<Set> = doomed.iter().filter_map(|k| sets.remove(k)).collect();
            // The kernel call happens without the table lock: take what it needs.
            let extend = sets.get(&key).map(|s| s.installed.clone());
            (older, extend)
        };
        for s in older {
            tracing::info!(ue = %key.ip(), spi_pc = s.info.agreement.spis.spi_pc, "the UE's previous IPsec SA set is removed");
            self.delete(s);
        }
        if let Some(installed) = extend
            && let Err(e) = self.mgr.extend(&installed, lifetime.as_secs().max(1))
        {
            tracing::warn!(ue = %key, error = %e, "IPsec SAs could not be extended; removing them");
            self.remove(key);
            return Err(e);
        }
        Ok(())
    }

    /// An authentication through the set at `key` failed: an unfinished set goes, a
    /// registered one stays (its registration is still valid).
    pub fn failed(&self, key: SetKey) {
        let doomed = {
            let mut sets = self.sets();
            match sets.get(&key) {
                Some(s) if !s.info.registered => sets.remove(&key),
                _ => None,
            }
        };
        if let Some(s) = doomed {
            tracing::info!(ue = %key, "authentication failed: IPsec SAs removed");
            self.delete(s);
        }
    }

    /// Removes the set at `key` (deregistration).
    pub fn remove(&self, key: SetKey) -> bool {
        let s = self.sets().remove(&key);
        match s {
            Some(s) => {
                self.delete(s);
                true
            }
            None => false,
        }
    }

    /// Removes the sets whose time ran out; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let gone: Vec<Set> = {
            let mut sets = self.sets();
            let keys: Vec<SetKey> = sets
                .iter()
                .filter(|(_, s)| s.until <= now)
                .map(|(k, _)| *k)
                .collect();
            keys.iter().filter_map(|k| sets.remove(k)).collect()
        };
        let n = gone.len();
        for s in gone {
            self.delete(s);
        }
        n
    }

    /// Removes every set (shutdown), and anything else carrying our marker.
    pub fn remove_all(&self) {
        let all: Vec<Set> = self.sets().drain().map(|(_, s)| s).collect();
        for s in all {
            self.spis.release(s.installed.spis());
        }
        match self.mgr.remove_all_marked(self.marker) {
            Ok((sas, policies)) => tracing::info!(sas, policies, "IPsec SAs removed at shutdown"),
            Err(e) => tracing::warn!(error = %e, "IPsec SAs could not be removed at shutdown"),
        }
    }

    fn delete(&self, s: Set) {
        if let Err(e) = self.mgr.remove(&s.installed) {
            tracing::warn!(spi_pc = s.installed.spis().spi_pc, error = %e, "IPsec SAs could not be removed");
        }
        let spis: SpiPair = s.installed.spis();
        self.spis.release(spis);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_32_hex_digits() {
        assert_eq!(
            key16("\"00112233445566778899aabbccddeeff\""),
            Some([
                0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ])
        );
        assert_eq!(key16("0011"), None);
        assert_eq!(key16("zz112233445566778899aabbccddeeff"), None);
        assert_eq!(key16("é0112233445566778899aabbccddeef"), None);
    }
}

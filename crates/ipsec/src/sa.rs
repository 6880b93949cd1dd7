//! The four ESP security associations of one UE (TS 33.203 §7.1; protocol-facts.md §4) and
//! their kernel policies: built as data by [`build`], installed, extended and removed by
//! [`SaManager`] through an [`XfrmSocket`].
//!
//! | # | src → dst | SPI (the receiver's) | P-CSCF policy | UE policy |
//! |---|---|---|---|---|
//! | 1 | UE:port_uc → P:port_ps | spi_ps | in | out |
//! | 2 | P:port_pc → UE:port_us | spi_us | out | in |
//! | 3 | P:port_ps → UE:port_uc | spi_uc | out | in |
//! | 4 | UE:port_us → P:port_pc | spi_pc | in | out |
//!
//! The SAs are the same on both ends; only the policies' directions differ ([`Side`]), so the
//! UE (`ims-ue`) builds its set with the same code as the P-CSCF.
//!
//! Keys (Annex I, [`ims_aka::esp`]): IK_ESP = IK (hmac-md5-96) or IK || 0x00000000
//! (hmac-sha-1-96); CK_ESP = CK (aes-cbc), CK1 || CK2 || CK1 (des-ede3-cbc) or none (null);
//! the same keys for all four SAs. Every SA and policy carries our marker in its selector.
//!
//! [`SaManager::install`] is all or nothing: the four policies go in first (a policy without
//! its SA drops the traffic it selects, it never lets it through in clear), then the four SAs;
//! on any failure everything this call installed is removed again before the error returns.
//!
//! Lifetimes: SAs and policies get the same hard time limit. The kernel counts an SA's limit
//! from when the SA was *added*, also after `XFRM_MSG_UPDSA`, so [`SaManager::extend`] asks
//! for the time already spent plus the new lifetime. Policies are replaced in place
//! (`XFRM_MSG_UPDPOLICY`), so they never go missing while traffic flows.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use ims_aka::{Ck, EncryptionAlgorithm, Ik, IntegrityAlgorithm};
use ims_xfrm::{AuthAlg, Direction, EncAlg, PolicySpec, SaId, SaSpec, XfrmError, XfrmSocket};
use zeroize::{Zeroize, Zeroizing};

use crate::secagree::ClientOffer;

/// The priority of our policies (Kamailio's ims_ipsec_pcscf uses the same).
pub const POLICY_PRIORITY: u32 = 2080;
/// The anti-replay window of our SAs, in packets.
pub const REPLAY_WINDOW: u8 = 32;

/// Which end of the UE–P-CSCF hop installs the set: it decides the policies' directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Side {
    /// The P-CSCF (SA1 and SA4 inbound).
    #[default]
    Pcscf,
    /// The UE (SA2 and SA3 inbound).
    Ue,
}

/// Everything one UE's SA set is made of.
pub struct SaParams {
    /// Whose kernel the set is for.
    pub side: Side,
    /// The UE's address (the source of its REGISTER).
    pub ue_ip: IpAddr,
    /// Our address facing the UE.
    pub pcscf_ip: IpAddr,
    /// The UE's chosen offer: algorithms, `spi_uc`/`spi_us`, `port_uc`/`port_us`.
    pub ue: ClientOffer,
    /// Our SPI at the protected client port (SA4).
    pub spi_pc: u32,
    /// Our SPI at the protected server port (SA1).
    pub spi_ps: u32,
    /// Our protected client port.
    pub port_pc: u16,
    /// Our protected server port.
    pub port_ps: u16,
    /// IK from the 401 (wiped on drop).
    pub ik: [u8; 16],
    /// CK from the 401 (wiped on drop).
    pub ck: [u8; 16],
    /// Hard lifetime in seconds (0: no time limit).
    pub lifetime_secs: u64,
    /// The selector marker of our entries.
    pub marker: u32,
    /// SA *n* (1..=4) and its policy get reqid `reqid_base + n - 1` (wrapping). The kernel
    /// only needs an SA and its policy to agree; distinct values per set help when reading
    /// `ip xfrm` output (e.g. pass 4 × a per-registration counter). Avoid a base that makes
    /// one of them 0: a template reqid of 0 matches any SA.
    pub reqid_base: u32,
}

impl Drop for SaParams {
    fn drop(&mut self) {
        self.ik.zeroize();
        self.ck.zeroize();
    }
}

impl std::fmt::Debug for SaParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaParams")
            .field("side", &self.side)
            .field("ue_ip", &self.ue_ip)
            .field("pcscf_ip", &self.pcscf_ip)
            .field("ue", &self.ue)
            .field("spi_pc", &self.spi_pc)
            .field("spi_ps", &self.spi_ps)
            .field("port_pc", &self.port_pc)
            .field("port_ps", &self.port_ps)
            .field("lifetime_secs", &self.lifetime_secs)
            .field("marker", &self.marker)
            .field("reqid_base", &self.reqid_base)
            .finish_non_exhaustive()
    }
}

/// One SA and the policy that uses it.
#[derive(Debug, Clone)]
pub struct SaEntry {
    /// 1 to 4, as in TS 33.203 and the table above.
    pub number: u8,
    /// The SA (keys inside, wiped on drop, never printed).
    pub sa: SaSpec,
    /// Its policy (same addresses, ports and reqid; `In` for SA1 and SA4).
    pub policy: PolicySpec,
}

impl SaEntry {
    /// The SA's identity for deletion.
    pub fn sa_id(&self) -> SaId {
        SaId {
            src: self.sa.src.ip(),
            dst: self.sa.dst.ip(),
            spi: self.sa.spi,
        }
    }
}

/// The xfrm integrity algorithm for a sec-agree one.
pub fn auth_alg(a: IntegrityAlgorithm) -> AuthAlg {
    match a {
        IntegrityAlgorithm::HmacMd5 => AuthAlg::HmacMd5_96,
        IntegrityAlgorithm::HmacSha1 => AuthAlg::HmacSha1_96,
    }
}

/// The xfrm encryption algorithm for a sec-agree one.
pub fn enc_alg(e: EncryptionAlgorithm) -> EncAlg {
    match e {
        EncryptionAlgorithm::Null => EncAlg::Null,
        EncryptionAlgorithm::AesCbc => EncAlg::AesCbc,
        EncryptionAlgorithm::DesEde3Cbc => EncAlg::DesEde3Cbc,
    }
}

/// The four SAs and policies of `p`, in the order 1, 2, 3, 4 (pure).
pub fn build(p: &SaParams) -> [SaEntry; 4] {
    let ik = Ik::new(p.ik);
    let ck = Ck::new(p.ck);
    let auth_key = p.ue.alg.derive_key(&ik);
    let enc_key = p.ue.ealg.derive_key(&ck);
    let ue = |port| SocketAddr::new(p.ue_ip, port);
    let us = |port| SocketAddr::new(p.pcscf_ip, port);
    let (spi_uc, spi_us) = (p.ue.spi_c, p.ue.spi_s);
    let (port_uc, port_us) = (p.ue.port_c, p.ue.port_s);
    let table = [
        (1u8, ue(port_uc), us(p.port_ps), p.spi_ps, Direction::In),
        (2, us(p.port_pc), ue(port_us), spi_us, Direction::Out),
        (3, us(p.port_ps), ue(port_uc), spi_uc, Direction::Out),
        (4, ue(port_us), us(p.port_pc), p.spi_pc, Direction::In),
    ];
    table.map(|(number, src, dst, spi, dir)| {
        let dir = match (p.side, dir) {
            (Side::Pcscf, d) => d,
            (Side::Ue, Direction::In) => Direction::Out,
            (Side::Ue, _) => Direction::In,
        };
        let reqid = p.reqid_base.wrapping_add(u32::from(number) - 1);
        SaEntry {
            number,
            sa: SaSpec {
                src,
                dst,
                spi,
                reqid,
                auth: auth_alg(p.ue.alg),
                auth_key: Zeroizing::new(auth_key.expose().to_vec()),
                enc: enc_alg(p.ue.ealg),
                enc_key: Zeroizing::new(enc_key.expose().to_vec()),
                marker: p.marker,
                hard_expires_secs: p.lifetime_secs,
                replay_window: REPLAY_WINDOW,
            },
            policy: PolicySpec {
                src,
                dst,
                dir,
                priority: POLICY_PRIORITY,
                reqid,
                marker: p.marker,
                hard_expires_secs: p.lifetime_secs,
            },
        }
    })
}

/// One UE's installed SA set (what [`SaManager::extend`] and [`SaManager::remove`] need).
#[derive(Debug, Clone)]
pub struct Installed {
    /// SA1 to SA4 with their policies, as installed.
    pub entries: [SaEntry; 4],
    /// When the SAs were added (their lifetime counts from here).
    pub installed_at: Instant,
}

impl Installed {
    /// Our SPIs (`spi_pc`, `spi_ps`), e.g. to release them after [`SaManager::remove`].
    pub fn spis(&self) -> crate::SpiPair {
        crate::SpiPair {
            spi_pc: self.entries[3].sa.spi,
            spi_ps: self.entries[0].sa.spi,
        }
    }
}

/// Installs and removes SA sets through one xfrm socket (blocking calls, each answered by the
/// kernel in microseconds; share it in an `Arc` and call it from `spawn_blocking`).
pub struct SaManager {
    sock: Mutex<XfrmSocket>,
}

impl std::fmt::Debug for SaManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaManager").finish_non_exhaustive()
    }
}

/// Ignores "no such entry" (it expired or was removed meanwhile).
fn gone_ok(r: Result<(), XfrmError>) -> Result<(), XfrmError> {
    match r {
        Err(XfrmError::NotFound { .. }) => Ok(()),
        r => r,
    }
}

impl SaManager {
    /// Opens an xfrm socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, XfrmError> {
        Ok(Self::with_socket(XfrmSocket::open()?))
    }

    /// Uses a socket opened elsewhere.
    pub fn with_socket(sock: XfrmSocket) -> Self {
        Self {
            sock: Mutex::new(sock),
        }
    }

    fn sock(&self) -> std::sync::MutexGuard<'_, XfrmSocket> {
        // A panic mid-request leaves nothing half-written in the socket we reuse: each
        // request is one datagram and replies are matched by sequence number.
        self.sock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs the four policies, then the four SAs of `p`. On any failure removes what
    /// this call installed and returns the first error: never a half-installed set.
    pub fn install(&self, p: &SaParams) -> Result<Installed, XfrmError> {
        let entries = build(p);
        let mut sock = self.sock();
        let mut policies_done = 0;
        let mut sas_done = 0;
        let result = (|| {
            for e in &entries {
                sock.add_policy(&e.policy)?;
                policies_done += 1;
            }
            for e in &entries {
                sock.add_sa(&e.sa)?;
                sas_done += 1;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                tracing::debug!(
                    ue = %p.ue_ip, spi_pc = p.spi_pc, spi_ps = p.spi_ps,
                    spi_uc = p.ue.spi_c, spi_us = p.ue.spi_s,
                    alg = p.ue.alg.name(), ealg = p.ue.ealg.name(),
                    "IPsec SAs installed"
                );
                Ok(Installed {
                    entries,
                    installed_at: Instant::now(),
                })
            }
            Err(e) => {
                rollback(&mut sock, &entries[..sas_done], &entries[..policies_done]);
                tracing::debug!(ue = %p.ue_ip, error = %e, policies_done, sas_done, "IPsec SA set not installed; rolled back");
                Err(e)
            }
        }
    }

    /// Gives the set `lifetime_secs` more seconds from now (0: no time limit): each SA is
    /// updated in place, each policy replaced in place. An SA that vanished meanwhile
    /// (expired) fails the call with [`XfrmError::NotFound`]; remove the set then.
    pub fn extend(&self, set: &Installed, lifetime_secs: u64) -> Result<(), XfrmError> {
        let sa_hard = if lifetime_secs == 0 {
            0
        } else {
            // The SA's hard limit counts from its add time; round the time spent up so the
            // SA never lives shorter than asked.
            set.installed_at
                .elapsed()
                .as_secs()
                .saturating_add(1)
                .saturating_add(lifetime_secs)
        };
        let mut sock = self.sock();
        for e in &set.entries {
            let mut sa = e.sa.clone();
            sa.hard_expires_secs = sa_hard;
            sock.update_sa(&sa)?;
        }
        for e in &set.entries {
            let mut pol = e.policy.clone();
            pol.hard_expires_secs = lifetime_secs;
            // Replaced in place (XFRM_MSG_UPDPOLICY): no moment without the policy.
            sock.update_policy(&pol)?;
        }
        tracing::debug!(
            spi_pc = set.spis().spi_pc,
            lifetime_secs,
            "IPsec SAs extended"
        );
        Ok(())
    }

    /// Removes the set's SAs and policies (those already gone are fine). Tries every entry
    /// and returns the first error.
    pub fn remove(&self, set: &Installed) -> Result<(), XfrmError> {
        let mut sock = self.sock();
        let mut first = None;
        for e in &set.entries {
            if let Err(err) = gone_ok(sock.delete_policy(&e.policy)) {
                first.get_or_insert(err);
            }
        }
        for e in &set.entries {
            if let Err(err) = gone_ok(sock.delete_sa(&e.sa_id())) {
                first.get_or_insert(err);
            }
        }
        match first {
            None => {
                tracing::debug!(spi_pc = set.spis().spi_pc, "IPsec SAs removed");
                Ok(())
            }
            Some(e) => Err(e),
        }
    }

    /// Removes every SA and policy carrying `marker` (at startup: what a previous run left;
    /// at shutdown: all of ours). Returns how many SAs and policies went.
    pub fn remove_all_marked(&self, marker: u32) -> Result<(usize, usize), XfrmError> {
        self.sock().remove_marked(marker)
    }
}

/// Deletes, newest first, the SAs and policies an install got through before failing.
fn rollback(sock: &mut XfrmSocket, sas: &[SaEntry], policies: &[SaEntry]) {
    for e in sas.iter().rev() {
        if let Err(err) = gone_ok(sock.delete_sa(&e.sa_id())) {
            tracing::error!(sa = e.number, spi = e.sa.spi, error = %err, "cannot roll back an IPsec SA");
        }
    }
    for e in policies.iter().rev() {
        if let Err(err) = gone_ok(sock.delete_policy(&e.policy)) {
            tracing::error!(sa = e.number, src = %e.policy.src, dst = %e.policy.dst, error = %err, "cannot roll back an IPsec policy");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CK1: [u8; 16] = [
        0xb4, 0x0b, 0xa9, 0xa3, 0xc5, 0x8b, 0x2a, 0x05, 0xbb, 0xf0, 0xd9, 0x87, 0xb2, 0x1b, 0xf8,
        0xcb,
    ];
    const IK1: [u8; 16] = [
        0xf7, 0x69, 0xbc, 0xd7, 0x51, 0x04, 0x46, 0x04, 0x12, 0x76, 0x72, 0x71, 0x1c, 0x6d, 0x34,
        0x41,
    ];

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn params(alg: IntegrityAlgorithm, ealg: EncryptionAlgorithm) -> SaParams {
        SaParams {
            side: Side::Pcscf,
            ue_ip: "10.45.0.7".parse().unwrap(),
            pcscf_ip: "10.10.2.2".parse().unwrap(),
            ue: ClientOffer {
                alg,
                ealg,
                spi_c: 3_929_102,
                spi_s: 3_929_103,
                port_c: 32789,
                port_s: 5062,
                raw: String::new(),
            },
            spi_pc: 4096,
            spi_ps: 4097,
            port_pc: 5062,
            port_ps: 5063,
            ik: IK1,
            ck: CK1,
            lifetime_secs: 240,
            marker: 0x01A5_C0DE,
            reqid_base: 400,
        }
    }

    #[test]
    fn the_four_sas_of_ts_33_203() {
        let p = params(IntegrityAlgorithm::HmacSha1, EncryptionAlgorithm::Null);
        let set = build(&p);
        let got: Vec<_> = set
            .iter()
            .map(|e| {
                (
                    e.number,
                    e.sa.src.to_string(),
                    e.sa.dst.to_string(),
                    e.sa.spi,
                    e.policy.dir,
                )
            })
            .collect();
        let s = |x: &str| x.to_owned();
        assert_eq!(
            got,
            [
                // SA1: UE:port_uc → P:port_ps, spi_ps, in
                (
                    1,
                    s("10.45.0.7:32789"),
                    s("10.10.2.2:5063"),
                    4097,
                    Direction::In
                ),
                // SA2: P:port_pc → UE:port_us, spi_us, out
                (
                    2,
                    s("10.10.2.2:5062"),
                    s("10.45.0.7:5062"),
                    3_929_103,
                    Direction::Out
                ),
                // SA3: P:port_ps → UE:port_uc, spi_uc, out
                (
                    3,
                    s("10.10.2.2:5063"),
                    s("10.45.0.7:32789"),
                    3_929_102,
                    Direction::Out
                ),
                // SA4: UE:port_us → P:port_pc, spi_pc, in
                (
                    4,
                    s("10.45.0.7:5062"),
                    s("10.10.2.2:5062"),
                    4096,
                    Direction::In
                ),
            ]
        );
        for (i, e) in set.iter().enumerate() {
            assert_eq!((e.policy.src, e.policy.dst), (e.sa.src, e.sa.dst));
            assert_eq!(e.sa.reqid, 400 + i as u32);
            assert_eq!(e.policy.reqid, e.sa.reqid);
            assert_eq!(e.sa.marker, 0x01A5_C0DE);
            assert_eq!(e.policy.marker, 0x01A5_C0DE);
            assert_eq!(e.sa.hard_expires_secs, 240);
            assert_eq!(e.policy.hard_expires_secs, 240);
            assert_eq!(e.policy.priority, POLICY_PRIORITY);
            assert_eq!(e.sa.replay_window, REPLAY_WINDOW);
            assert_eq!(e.sa.auth, AuthAlg::HmacSha1_96);
            assert_eq!(e.sa.enc, EncAlg::Null);
        }
        let inst = Installed {
            entries: set,
            installed_at: Instant::now(),
        };
        assert_eq!(
            inst.spis(),
            crate::SpiPair {
                spi_pc: 4096,
                spi_ps: 4097
            }
        );
        assert_eq!(
            inst.entries[0].sa_id(),
            SaId {
                src: p.ue_ip,
                dst: p.pcscf_ip,
                spi: 4097
            }
        );
    }

    /// protocol-facts.md §4, test set 1: IK_ESP(sha1) and the 3DES key.
    #[test]
    fn annex_i_keys_of_test_set_1() {
        let cases = [
            (
                IntegrityAlgorithm::HmacSha1,
                EncryptionAlgorithm::DesEde3Cbc,
                "f769bcd751044604127672711c6d344100000000",
                "b40ba9a3c58b2a05bbf0d987b21bf8cbb40ba9a3c58b2a05",
            ),
            (
                IntegrityAlgorithm::HmacMd5,
                EncryptionAlgorithm::AesCbc,
                "f769bcd751044604127672711c6d3441",
                "b40ba9a3c58b2a05bbf0d987b21bf8cb",
            ),
            (
                IntegrityAlgorithm::HmacSha1,
                EncryptionAlgorithm::Null,
                "f769bcd751044604127672711c6d344100000000",
                "",
            ),
        ];
        for (alg, ealg, ik_esp, ck_esp) in cases {
            let set = build(&params(alg, ealg));
            for e in &set {
                assert_eq!(hex(&e.sa.auth_key), ik_esp, "{alg:?} SA{}", e.number);
                assert_eq!(hex(&e.sa.enc_key), ck_esp, "{ealg:?} SA{}", e.number);
                // The lengths the xfrm crate checks.
                assert_eq!(e.sa.auth_key.len(), e.sa.auth.key_len());
                assert_eq!(e.sa.enc_key.len(), e.sa.enc.key_len());
                // The requests build (key lengths and families are right).
                ims_xfrm::msg::new_sa(&e.sa, 1).unwrap();
                ims_xfrm::msg::new_policy(&e.policy, 1).unwrap();
            }
        }
    }

    #[test]
    fn ipv6_and_reqid_wrap() {
        let mut p = params(IntegrityAlgorithm::HmacMd5, EncryptionAlgorithm::AesCbc);
        p.ue_ip = "2001:db8::7".parse().unwrap();
        p.pcscf_ip = "2001:db8::2".parse().unwrap();
        p.reqid_base = u32::MAX - 1;
        p.lifetime_secs = 0;
        let set = build(&p);
        assert_eq!(set[0].sa.src.to_string(), "[2001:db8::7]:32789");
        assert_eq!(
            set.iter().map(|e| e.sa.reqid).collect::<Vec<_>>(),
            [u32::MAX - 1, u32::MAX, 0, 1]
        );
        assert!(set.iter().all(|e| e.sa.hard_expires_secs == 0));
    }

    #[test]
    fn the_ue_side_has_the_same_sas_and_flipped_policies() {
        let p = params(IntegrityAlgorithm::HmacSha1, EncryptionAlgorithm::AesCbc);
        let mut u = params(IntegrityAlgorithm::HmacSha1, EncryptionAlgorithm::AesCbc);
        u.side = Side::Ue;
        let (pcscf, ue) = (build(&p), build(&u));
        for (a, b) in pcscf.iter().zip(ue.iter()) {
            assert_eq!(
                (a.sa.src, a.sa.dst, a.sa.spi),
                (b.sa.src, b.sa.dst, b.sa.spi)
            );
            assert_eq!(*a.sa.auth_key, *b.sa.auth_key);
            assert_eq!((a.policy.src, a.policy.dst), (b.policy.src, b.policy.dst));
            assert_ne!(a.policy.dir, b.policy.dir, "SA{}", a.number);
        }
        // The UE sends on SA1 and SA4, receives on SA2 and SA3.
        let out: Vec<u8> = ue
            .iter()
            .filter(|e| e.policy.dir == Direction::Out)
            .map(|e| e.number)
            .collect();
        assert_eq!(out, [1, 4]);
    }

    #[test]
    fn keys_never_print() {
        let p = params(IntegrityAlgorithm::HmacSha1, EncryptionAlgorithm::AesCbc);
        let text = format!("{p:?} {:?}", build(&p));
        for secret in [hex(&IK1), hex(&CK1), "f769".into(), "b40b".into()] {
            assert!(!text.contains(&secret), "{secret} in {text}");
        }
        assert!(!text.contains("247, 105"), "IK bytes in {text}");
    }
}

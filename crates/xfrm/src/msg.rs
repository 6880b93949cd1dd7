//! Building xfrm netlink requests and parsing the kernel's replies, without I/O.
//!
//! The request shapes follow what iproute2 sends (`ip xfrm state add ... mode transport
//! auth-trunc ... 96 enc ... sel src .../32 dst .../32 sport P dport P` and
//! `ip xfrm policy add ... dir in|out priority N tmpl ... proto esp reqid R mode transport`),
//! byte for byte; `tests/fixtures` holds captures of iproute2 that the tests compare against.
//! Differences from iproute2 are only what we choose to set: the selector's `user` field
//! carries our marker, and the hard time limit when a lifetime is asked for.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_xfrm::{
    Address, Alg, AlgAuth, IPPROTO_ESP, Id, LifetimeConfig, Selector, UserPolicyId, UserPolicyInfo,
    UserSaId, UserSaInfo, UserTemplate, XFRM_INF, XFRM_MODE_TRANSPORT, XFRM_POLICY_ALLOW,
    XFRM_POLICY_IN, XFRM_POLICY_OUT, XFRM_SHARE_ANY, XfrmAttrs, XfrmMessage,
    policy::{
        DelGetMessage as PolicyDelGet, FlushMessage as PolicyFlush, ModifyMessage as PolicyModify,
    },
    state::{
        DelGetMessage as StateDelGet, FlushMessage as StateFlush, GetDumpMessage,
        ModifyMessage as StateModify,
    },
};
use zeroize::Zeroizing;

use crate::XfrmError;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const NLMSG_HDR_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const USERSA_INFO_LEN: usize = 224;
const USERPOLICY_INFO_LEN: usize = 168;
const XFRM_MSG_NEWSA: u16 = 0x10;
const XFRM_MSG_NEWPOLICY: u16 = 0x13;

/// ESP integrity algorithms of TS 33.203 (always truncated to 96 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthAlg {
    /// `hmac-md5-96`: 128-bit key (IK).
    HmacMd5_96,
    /// `hmac-sha-1-96`: 160-bit key (IK || 0x00000000).
    HmacSha1_96,
}

impl AuthAlg {
    /// The kernel's crypto API name.
    pub fn kernel_name(self) -> &'static str {
        match self {
            AuthAlg::HmacMd5_96 => "hmac(md5)",
            AuthAlg::HmacSha1_96 => "hmac(sha1)",
        }
    }
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            AuthAlg::HmacMd5_96 => 16,
            AuthAlg::HmacSha1_96 => 20,
        }
    }
}

/// ESP encryption algorithms of TS 33.203.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncAlg {
    /// `null`: no confidentiality (the kernel still wants the cipher named).
    Null,
    /// `aes-cbc`: 128-bit key (CK).
    AesCbc,
    /// `des-ede3-cbc`: 192-bit key (CK1 || CK2 || CK1).
    DesEde3Cbc,
}

impl EncAlg {
    /// The kernel's crypto API name.
    pub fn kernel_name(self) -> &'static str {
        match self {
            EncAlg::Null => "ecb(cipher_null)",
            EncAlg::AesCbc => "cbc(aes)",
            EncAlg::DesEde3Cbc => "cbc(des3_ede)",
        }
    }
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            EncAlg::Null => 0,
            EncAlg::AesCbc => 16,
            EncAlg::DesEde3Cbc => 24,
        }
    }
}

/// Policy direction, seen from the host that installs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    fn raw(self) -> u8 {
        match self {
            Direction::In => XFRM_POLICY_IN,
            Direction::Out => XFRM_POLICY_OUT,
        }
    }
}

/// One transport-mode ESP security association between `src` and `dst` (address and port).
/// The keys zeroize on drop and never print.
#[derive(Clone)]
pub struct SaSpec {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The SPI the receiver (`dst`) chose.
    pub spi: u32,
    pub reqid: u32,
    pub auth: AuthAlg,
    pub auth_key: Zeroizing<Vec<u8>>,
    pub enc: EncAlg,
    pub enc_key: Zeroizing<Vec<u8>>,
    /// Written into the selector's `user` field: identifies our entries.
    pub marker: u32,
    /// Hard lifetime in seconds from installation; 0 means no time limit.
    pub hard_expires_secs: u64,
    pub replay_window: u8,
}

impl std::fmt::Debug for SaSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaSpec")
            .field("src", &self.src)
            .field("dst", &self.dst)
            .field("spi", &self.spi)
            .field("reqid", &self.reqid)
            .field("auth", &self.auth)
            .field("enc", &self.enc)
            .field("marker", &self.marker)
            .field("hard_expires_secs", &self.hard_expires_secs)
            .finish_non_exhaustive()
    }
}

/// The policy that sends (`Out`) or requires (`In`) ESP for traffic from `src` to `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub dir: Direction,
    pub priority: u32,
    /// Binds the policy to the SA with the same reqid.
    pub reqid: u32,
    /// Written into the selector's `user` field: identifies our entries.
    pub marker: u32,
    /// Hard lifetime in seconds from installation; 0 means no time limit.
    pub hard_expires_secs: u64,
}

/// Identifies an SA for deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaId {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub spi: u32,
}

/// An SA as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaInfo {
    pub id: SaId,
    pub sport: u16,
    pub dport: u16,
    pub reqid: u32,
    pub marker: u32,
    pub auth_alg: Option<String>,
    pub enc_alg: Option<String>,
    pub hard_expires_secs: u64,
    /// Traffic counters: packets and bytes through this SA so far.
    pub packets: u64,
    pub bytes: u64,
}

/// A policy as the kernel lists it (with its exact selector, as needed to delete it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub dir: u8,
    pub priority: u32,
    pub marker: u32,
    pub reqid: Option<u32>,
    selector: Selector,
}

/// One reply message from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// NLMSG_ERROR with code 0: the request with this sequence number succeeded.
    Ack {
        seq: u32,
    },
    /// NLMSG_ERROR with a (positive) errno.
    Error {
        seq: u32,
        errno: i32,
    },
    /// End of a dump.
    Done {
        seq: u32,
    },
    Sa {
        seq: u32,
        info: SaInfo,
    },
    Policy {
        seq: u32,
        info: PolicyInfo,
    },
    /// Anything else (skipped by the socket).
    Other {
        seq: u32,
        msg_type: u16,
    },
}

fn family(a: IpAddr, b: IpAddr) -> Result<u16, XfrmError> {
    match (a, b) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Ok(AF_INET),
        (IpAddr::V6(_), IpAddr::V6(_)) => Ok(AF_INET6),
        _ => Err(XfrmError::MixedFamilies),
    }
}

fn host_prefix(fam: u16) -> u8 {
    if fam == AF_INET { 32 } else { 128 }
}

/// The exact selector for traffic `src` → `dst`, any upper protocol (UDP and TCP alike).
fn selector(src: SocketAddr, dst: SocketAddr, marker: u32) -> Result<Selector, XfrmError> {
    let fam = family(src.ip(), dst.ip())?;
    Ok(Selector {
        daddr: Address::from_ip(&dst.ip()),
        saddr: Address::from_ip(&src.ip()),
        dport: dst.port(),
        dport_mask: if dst.port() == 0 { 0 } else { 0xffff },
        sport: src.port(),
        sport_mask: if src.port() == 0 { 0 } else { 0xffff },
        family: fam,
        prefixlen_d: host_prefix(fam),
        prefixlen_s: host_prefix(fam),
        proto: 0,
        ifindex: 0,
        user: marker,
    })
}

fn lifetime(hard_expires_secs: u64) -> LifetimeConfig {
    LifetimeConfig {
        soft_byte_limit: XFRM_INF,
        hard_byte_limit: XFRM_INF,
        soft_packet_limit: XFRM_INF,
        hard_packet_limit: XFRM_INF,
        soft_add_expires_seconds: 0,
        hard_add_expires_seconds: hard_expires_secs,
        soft_use_expires_seconds: 0,
        hard_use_expires_seconds: 0,
    }
}

fn name<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N - 1);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

fn check_key(alg: &'static str, key: &[u8], want: usize) -> Result<(), XfrmError> {
    if key.len() == want {
        Ok(())
    } else {
        Err(XfrmError::KeyLength {
            alg,
            got: key.len(),
            want,
        })
    }
}

fn sa_message(spec: &SaSpec) -> Result<StateModify, XfrmError> {
    check_key(spec.auth.kernel_name(), &spec.auth_key, spec.auth.key_len())?;
    check_key(spec.enc.kernel_name(), &spec.enc_key, spec.enc.key_len())?;
    let fam = family(spec.src.ip(), spec.dst.ip())?;
    let info = UserSaInfo {
        selector: selector(spec.src, spec.dst, spec.marker)?,
        id: Id {
            daddr: Address::from_ip(&spec.dst.ip()),
            spi: spec.spi,
            proto: IPPROTO_ESP,
        },
        saddr: Address::from_ip(&spec.src.ip()),
        lifetime_cfg: lifetime(spec.hard_expires_secs),
        reqid: spec.reqid,
        family: fam,
        mode: XFRM_MODE_TRANSPORT,
        replay_window: spec.replay_window,
        ..Default::default()
    };
    let auth = AlgAuth {
        alg_name: name(spec.auth.kernel_name()),
        alg_key_len: (spec.auth_key.len() * 8) as u32,
        alg_trunc_len: 96,
        alg_key: spec.auth_key.to_vec(),
    };
    let enc = Alg {
        alg_name: name(spec.enc.kernel_name()),
        alg_key_len: (spec.enc_key.len() * 8) as u32,
        alg_key: spec.enc_key.to_vec(),
    };
    Ok(StateModify {
        user_sa_info: info,
        nlas: vec![
            XfrmAttrs::AuthenticationAlgTrunc(auth),
            XfrmAttrs::EncryptionAlg(enc),
        ],
    })
}

fn serialize(msg: XfrmMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

/// `XFRM_MSG_NEWSA`: install an SA (EEXIST if its id exists).
pub fn new_sa(spec: &SaSpec, seq: u32) -> Result<Vec<u8>, XfrmError> {
    Ok(serialize(
        XfrmMessage::AddSa(sa_message(spec)?),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    ))
}

/// `XFRM_MSG_UPDSA`: replace an existing SA, e.g. to extend its lifetime.
pub fn update_sa(spec: &SaSpec, seq: u32) -> Result<Vec<u8>, XfrmError> {
    Ok(serialize(
        XfrmMessage::UpdateSa(sa_message(spec)?),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    ))
}

/// `XFRM_MSG_DELSA` for the ESP SA `id`, with the source address attribute.
pub fn delete_sa(id: &SaId, seq: u32) -> Result<Vec<u8>, XfrmError> {
    let fam = family(id.src, id.dst)?;
    let msg = StateDelGet {
        user_sa_id: UserSaId {
            daddr: Address::from_ip(&id.dst),
            spi: id.spi,
            family: fam,
            proto: IPPROTO_ESP,
        },
        nlas: vec![XfrmAttrs::SrcAddr(Address::from_ip(&id.src))],
    };
    Ok(serialize(
        XfrmMessage::DeleteSa(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    ))
}

/// `XFRM_MSG_NEWPOLICY`: ESP in transport mode for `src` → `dst`, bound to `reqid`.
pub fn new_policy(spec: &PolicySpec, seq: u32) -> Result<Vec<u8>, XfrmError> {
    policy_message(spec, seq, false)
}

/// `XFRM_MSG_UPDPOLICY`: the same policy, replacing one with the same selector and direction
/// in place (a new lifetime, say) without a window in which the traffic is unprotected.
pub fn update_policy(spec: &PolicySpec, seq: u32) -> Result<Vec<u8>, XfrmError> {
    policy_message(spec, seq, true)
}

fn policy_message(spec: &PolicySpec, seq: u32, update: bool) -> Result<Vec<u8>, XfrmError> {
    let fam = family(spec.src.ip(), spec.dst.ip())?;
    let info = UserPolicyInfo {
        selector: selector(spec.src, spec.dst, spec.marker)?,
        lifetime_cfg: lifetime(spec.hard_expires_secs),
        priority: spec.priority,
        direction: spec.dir.raw(),
        action: XFRM_POLICY_ALLOW,
        share: XFRM_SHARE_ANY,
        ..Default::default()
    };
    let tmpl = UserTemplate {
        id: Id {
            daddr: Address::from_ip(&spec.dst.ip()),
            spi: 0,
            proto: IPPROTO_ESP,
        },
        family: fam,
        saddr: Address::from_ip(&spec.src.ip()),
        reqid: spec.reqid,
        mode: XFRM_MODE_TRANSPORT,
        share: XFRM_SHARE_ANY,
        optional: 0,
        aalgos: u32::MAX,
        ealgos: u32::MAX,
        calgos: u32::MAX,
    };
    let msg = PolicyModify {
        user_policy_info: info,
        nlas: vec![XfrmAttrs::Template(vec![tmpl])],
    };
    let msg = if update {
        XfrmMessage::UpdatePolicy(msg)
    } else {
        XfrmMessage::AddPolicy(msg)
    };
    Ok(serialize(msg, NLM_F_REQUEST | NLM_F_ACK, seq))
}

fn delete_policy_sel(sel: Selector, dir: u8, seq: u32) -> Vec<u8> {
    let msg = PolicyDelGet {
        user_policy_id: UserPolicyId {
            selector: sel,
            index: 0,
            direction: dir,
        },
        nlas: vec![],
    };
    serialize(
        XfrmMessage::DeletePolicy(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

/// `XFRM_MSG_DELPOLICY` for the policy `spec` installed (the kernel matches the whole
/// selector, marker included).
pub fn delete_policy(spec: &PolicySpec, seq: u32) -> Result<Vec<u8>, XfrmError> {
    Ok(delete_policy_sel(
        selector(spec.src, spec.dst, spec.marker)?,
        spec.dir.raw(),
        seq,
    ))
}

/// `XFRM_MSG_DELPOLICY` for a policy read back from a dump.
pub fn delete_listed_policy(info: &PolicyInfo, seq: u32) -> Vec<u8> {
    delete_policy_sel(info.selector, info.dir, seq)
}

/// `XFRM_MSG_GETSA` dump of every SA.
pub fn dump_sa(seq: u32) -> Vec<u8> {
    serialize(
        XfrmMessage::GetDumpSa(GetDumpMessage { nlas: vec![] }),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// `XFRM_MSG_GETPOLICY` dump of every policy.
pub fn dump_policy(seq: u32) -> Vec<u8> {
    serialize(
        XfrmMessage::GetPolicy(PolicyDelGet::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// `XFRM_MSG_FLUSHSA` of every ESP SA (not only ours: for throwaway namespaces and tests).
pub fn flush_sa(seq: u32) -> Vec<u8> {
    serialize(
        XfrmMessage::FlushSa(StateFlush {
            protocol: IPPROTO_ESP,
        }),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

/// `XFRM_MSG_FLUSHPOLICY` of every policy (not only ours).
pub fn flush_policy(seq: u32) -> Vec<u8> {
    serialize(
        XfrmMessage::FlushPolicy(PolicyFlush { nlas: vec![] }),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

fn ip_of(addr: &Address, fam: u16) -> IpAddr {
    if fam == AF_INET6 {
        IpAddr::V6(addr.to_ipv6())
    } else {
        IpAddr::V4(addr.to_ipv4())
    }
}

fn alg_name(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn sa_info(m: &StateModify) -> SaInfo {
    let i = &m.user_sa_info;
    let mut auth_alg = None;
    let mut enc_alg = None;
    for nla in &m.nlas {
        match nla {
            XfrmAttrs::AuthenticationAlgTrunc(a) => auth_alg = Some(alg_name(&a.alg_name)),
            XfrmAttrs::AuthenticationAlg(a) => auth_alg = Some(alg_name(&a.alg_name)),
            XfrmAttrs::EncryptionAlg(a) => enc_alg = Some(alg_name(&a.alg_name)),
            _ => {}
        }
    }
    SaInfo {
        id: SaId {
            src: ip_of(&i.saddr, i.family),
            dst: ip_of(&i.id.daddr, i.family),
            spi: i.id.spi,
        },
        sport: i.selector.sport,
        dport: i.selector.dport,
        reqid: i.reqid,
        marker: i.selector.user,
        auth_alg,
        enc_alg,
        hard_expires_secs: i.lifetime_cfg.hard_add_expires_seconds,
        packets: i.lifetime_cur.packets,
        bytes: i.lifetime_cur.bytes,
    }
}

fn policy_info(m: &PolicyModify) -> PolicyInfo {
    let i = &m.user_policy_info;
    let reqid = m.nlas.iter().find_map(|n| match n {
        XfrmAttrs::Template(t) => t.first().map(|t| t.reqid),
        _ => None,
    });
    PolicyInfo {
        src: ip_of(&i.selector.saddr, i.selector.family),
        dst: ip_of(&i.selector.daddr, i.selector.family),
        sport: i.selector.sport,
        dport: i.selector.dport,
        dir: i.direction,
        priority: i.priority,
        marker: i.selector.user,
        reqid,
        selector: i.selector,
    }
}

fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
}

fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_ne_bytes)
}

/// Splits a datagram from the kernel into its netlink messages and decodes each. Lengths are
/// checked here before any structure is decoded, so a short or corrupt reply is an error,
/// never a panic.
pub fn parse_replies(buf: &[u8]) -> Result<Vec<Reply>, XfrmError> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let bad = |why: &str| XfrmError::Decode(why.to_owned());
        let len = u32_ne(rest, 0).ok_or_else(|| bad("truncated netlink header"))? as usize;
        if len < NLMSG_HDR_LEN || len > rest.len() {
            return Err(bad("netlink message length out of range"));
        }
        let (msg, tail) = rest.split_at(len);
        rest = tail.get(((len + 3) & !3) - len..).unwrap_or(&[]);
        let msg_type = u16_ne(msg, 4).ok_or_else(|| bad("truncated netlink header"))?;
        let seq = u32_ne(msg, 8).ok_or_else(|| bad("truncated netlink header"))?;
        let payload = &msg[NLMSG_HDR_LEN..];
        let reply = match msg_type {
            NLMSG_ERROR => {
                let code = u32_ne(payload, 0).ok_or_else(|| bad("truncated NLMSG_ERROR"))? as i32;
                if code == 0 {
                    Reply::Ack { seq }
                } else {
                    Reply::Error {
                        seq,
                        errno: code.saturating_neg(),
                    }
                }
            }
            NLMSG_DONE => Reply::Done { seq },
            XFRM_MSG_NEWSA | XFRM_MSG_NEWPOLICY => {
                let min = if msg_type == XFRM_MSG_NEWSA {
                    USERSA_INFO_LEN
                } else {
                    USERPOLICY_INFO_LEN
                };
                if payload.len() < min {
                    return Err(bad("xfrm reply shorter than its fixed structure"));
                }
                let parsed = NetlinkMessage::<XfrmMessage>::deserialize(msg)
                    .map_err(|e| XfrmError::Decode(e.to_string()))?;
                match parsed.payload {
                    NetlinkPayload::InnerMessage(XfrmMessage::AddSa(m)) => Reply::Sa {
                        seq,
                        info: sa_info(&m),
                    },
                    NetlinkPayload::InnerMessage(XfrmMessage::AddPolicy(m)) => Reply::Policy {
                        seq,
                        info: policy_info(&m),
                    },
                    _ => Reply::Other { seq, msg_type },
                }
            }
            _ => Reply::Other { seq, msg_type },
        };
        out.push(reply);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_replies_are_errors_not_panics() {
        for len in 0..64usize {
            let mut b = vec![0xffu8; len];
            if len >= 4 {
                b[..4].copy_from_slice(&(len as u32).to_ne_bytes());
            }
            let _ = parse_replies(&b);
        }
        // A NEWSA reply that claims to be a whole message but is too short for its struct.
        let mut b = vec![0u8; 32];
        b[..4].copy_from_slice(&32u32.to_ne_bytes());
        b[4..6].copy_from_slice(&XFRM_MSG_NEWSA.to_ne_bytes());
        assert!(matches!(parse_replies(&b), Err(XfrmError::Decode(_))));
    }

    #[test]
    fn ack_error_and_done_decode() {
        let mut b = Vec::new();
        for (ty, code, seq) in [
            (NLMSG_ERROR, 0i32, 7u32),
            (NLMSG_ERROR, -93, 8),
            (NLMSG_DONE, 0, 9),
        ] {
            b.extend_from_slice(&36u32.to_ne_bytes());
            b.extend_from_slice(&ty.to_ne_bytes());
            b.extend_from_slice(&0u16.to_ne_bytes());
            b.extend_from_slice(&seq.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(&code.to_ne_bytes());
            b.extend_from_slice(&[0u8; 16]);
        }
        assert_eq!(
            parse_replies(&b).unwrap(),
            vec![
                Reply::Ack { seq: 7 },
                Reply::Error { seq: 8, errno: 93 },
                Reply::Done { seq: 9 }
            ]
        );
    }

    #[test]
    fn wrong_key_length_and_mixed_families_are_refused() {
        let mut spec = SaSpec {
            src: "10.0.0.1:5062".parse().unwrap(),
            dst: "10.0.0.2:5063".parse().unwrap(),
            spi: 0x1000,
            reqid: 0x1000,
            auth: AuthAlg::HmacSha1_96,
            auth_key: Zeroizing::new(vec![0; 16]),
            enc: EncAlg::Null,
            enc_key: Zeroizing::new(vec![]),
            marker: 1,
            hard_expires_secs: 0,
            replay_window: 32,
        };
        assert!(matches!(
            new_sa(&spec, 1),
            Err(XfrmError::KeyLength {
                want: 20,
                got: 16,
                ..
            })
        ));
        spec.auth_key = Zeroizing::new(vec![0; 20]);
        spec.dst = "[::1]:5063".parse().unwrap();
        assert!(matches!(new_sa(&spec, 1), Err(XfrmError::MixedFamilies)));
        assert!(!format!("{spec:?}").contains("auth_key"));
    }
}

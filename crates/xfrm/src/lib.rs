//! Linux xfrm (IPsec SAs and policies) over `NETLINK_XFRM`, shaped for the P-CSCF of
//! TS 33.203: transport-mode ESP between two exact `address:port` pairs, with HMAC-MD5-96 or
//! HMAC-SHA-1-96 integrity and null, AES-CBC or 3DES-CBC encryption.
//!
//! - [`msg`]: pure functions that build the netlink requests (NEWSA, UPDSA, DELSA, NEWPOLICY,
//!   UPDPOLICY, DELPOLICY, GETSA/GETPOLICY dumps, FLUSH*) and parse the kernel's replies. The structure
//!   layouts come from `netlink-packet-xfrm` (rust-netlink, the maintained crate for these
//!   structs); what this crate adds is the IMS-shaped API, the marker, and the proof that the
//!   bytes equal what iproute2's `ip xfrm` sends for the same SA and policy (tests/fixtures).
//! - [`XfrmSocket`]: a small blocking handle on a netlink socket (`netlink-sys`) that sends a
//!   request, waits for the kernel's ACK and maps errno values to [`XfrmError`] — notably
//!   [`XfrmError::EspUnsupported`] on a kernel built without ESP, which says exactly that.
//!
//! Every SA and policy this crate installs carries a *marker* in its selector's `user` field
//! (as Kamailio's ims_ipsec_pcscf does), so the P-CSCF can list and remove only its own
//! entries ([`XfrmSocket::remove_marked`]) and leave everything else on the host alone.
//!
//! Blocking I/O is fine here: xfrm requests are local, answered by the kernel in microseconds;
//! the async daemon calls them from a blocking-task pool.

pub mod msg;
mod socket;

pub use msg::{
    AuthAlg, Direction, EncAlg, PolicyInfo, PolicySpec, Reply, SaId, SaInfo, SaSpec, parse_replies,
};
pub use socket::XfrmSocket;

/// What went wrong talking to the kernel's xfrm layer.
#[derive(Debug, thiserror::Error)]
pub enum XfrmError {
    /// The kernel has xfrm but no ESP (`CONFIG_INET_ESP` / `CONFIG_INET6_ESP` not set).
    #[error(
        "{op}: the kernel cannot install ESP security associations (EPROTONOSUPPORT: built without ESP support, CONFIG_INET_ESP/CONFIG_INET6_ESP)"
    )]
    EspUnsupported { op: &'static str },
    /// The SA or policy exists already (EEXIST).
    #[error("{op}: an entry with the same identity exists already (EEXIST)")]
    Exists { op: &'static str },
    /// No such SA or policy (ESRCH / ENOENT).
    #[error("{op}: no such entry (ESRCH)")]
    NotFound { op: &'static str },
    /// Not allowed (EPERM): xfrm needs CAP_NET_ADMIN.
    #[error("{op}: permission denied (needs CAP_NET_ADMIN)")]
    PermissionDenied { op: &'static str },
    /// The kernel refused an algorithm or key (ENOENT on algorithm lookup, EINVAL).
    #[error("{op}: the kernel rejected the request: {source}")]
    Kernel {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Socket-level failure (open, send, receive).
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// A reply we could not decode.
    #[error("undecodable netlink reply: {0}")]
    Decode(String),
    /// A key of the wrong length for its algorithm.
    #[error("{alg}: key is {got} bytes, expected {want}")]
    KeyLength {
        alg: &'static str,
        got: usize,
        want: usize,
    },
    /// The two ends of an SA or policy are not of the same address family.
    #[error("source and destination are not the same address family")]
    MixedFamilies,
}

impl XfrmError {
    /// Maps a kernel errno for operation `op` to the error a caller can act on.
    pub fn from_errno(op: &'static str, errno: i32) -> Self {
        const EPERM: i32 = 1;
        const ENOENT: i32 = 2;
        const ESRCH: i32 = 3;
        const EEXIST: i32 = 17;
        const EPROTONOSUPPORT: i32 = 93;
        match errno {
            EPROTONOSUPPORT => XfrmError::EspUnsupported { op },
            EEXIST => XfrmError::Exists { op },
            ESRCH => XfrmError::NotFound { op },
            ENOENT if op.starts_with("delete") => XfrmError::NotFound { op },
            EPERM => XfrmError::PermissionDenied { op },
            e => XfrmError::Kernel {
                op,
                source: std::io::Error::from_raw_os_error(e),
            },
        }
    }
}

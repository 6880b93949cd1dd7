//! A blocking handle on a `NETLINK_XFRM` socket: one request at a time, each answered by the
//! kernel's ACK (or an errno, mapped to [`XfrmError`]), dumps read until `NLMSG_DONE`.
//!
//! The socket belongs to the network namespace of the thread that opened it.

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_XFRM};

use crate::XfrmError;
use crate::msg::{self, PolicyInfo, PolicySpec, Reply, SaId, SaInfo, SaSpec};

/// A connected xfrm netlink socket.
pub struct XfrmSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl XfrmSocket {
    /// Opens and connects a socket to the kernel (needs CAP_NET_ADMIN for changes).
    pub fn open() -> Result<Self, XfrmError> {
        let mut sock = Socket::new(NETLINK_XFRM)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Extended acks give the kernel's text in dmesg-free form; errors are fine without.
        let _ = sock.set_ext_ack(true);
        Ok(Self {
            sock,
            seq: 1,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn recv(&mut self) -> Result<Vec<Reply>, XfrmError> {
        self.buf.clear();
        self.sock.recv(&mut self.buf, 0)?;
        msg::parse_replies(&self.buf)
    }

    /// Sends one request and waits for its ACK.
    fn request(&mut self, op: &'static str, req: Vec<u8>, seq: u32) -> Result<(), XfrmError> {
        self.sock.send(&req, 0)?;
        loop {
            for r in self.recv()? {
                match r {
                    Reply::Ack { seq: s } if s == seq => return Ok(()),
                    Reply::Error { seq: s, errno } if s == seq => {
                        return Err(XfrmError::from_errno(op, errno));
                    }
                    _ => {}
                }
            }
        }
    }

    fn dump(&mut self, req: Vec<u8>, seq: u32) -> Result<Vec<Reply>, XfrmError> {
        self.sock.send(&req, 0)?;
        let mut out = Vec::new();
        loop {
            for r in self.recv()? {
                match r {
                    Reply::Done { seq: s } if s == seq => return Ok(out),
                    Reply::Error { seq: s, errno } if s == seq => {
                        return Err(XfrmError::from_errno("dump", errno));
                    }
                    r @ (Reply::Sa { .. } | Reply::Policy { .. }) => out.push(r),
                    _ => {}
                }
            }
        }
    }

    /// Installs an SA.
    pub fn add_sa(&mut self, spec: &SaSpec) -> Result<(), XfrmError> {
        let seq = self.next_seq();
        let req = msg::new_sa(spec, seq)?;
        self.request("add SA", req, seq)
    }

    /// Replaces an SA (same id), e.g. with a longer lifetime.
    pub fn update_sa(&mut self, spec: &SaSpec) -> Result<(), XfrmError> {
        let seq = self.next_seq();
        let req = msg::update_sa(spec, seq)?;
        self.request("update SA", req, seq)
    }

    /// Deletes an SA.
    pub fn delete_sa(&mut self, id: &SaId) -> Result<(), XfrmError> {
        let seq = self.next_seq();
        let req = msg::delete_sa(id, seq)?;
        self.request("delete SA", req, seq)
    }

    /// Installs a policy.
    pub fn add_policy(&mut self, spec: &PolicySpec) -> Result<(), XfrmError> {
        let seq = self.next_seq();
        let req = msg::new_policy(spec, seq)?;
        self.request("add policy", req, seq)
    }

    /// Installs a policy, or replaces the one with the same selector and direction in place.
    pub fn update_policy(&mut self, spec: &PolicySpec) -> Result<(), XfrmError> {
        let seq = self.next_seq();
        let req = msg::update_policy(spec, seq)?;
        self.request("update policy", req, seq)
    }

    /// Deletes a policy we installed.
    pub fn delete_policy(&mut self, spec: &PolicySpec) -> Result<(), XfrmError> {
        let seq = self.next_seq();
        let req = msg::delete_policy(spec, seq)?;
        self.request("delete policy", req, seq)
    }

    /// Every SA in this namespace.
    pub fn list_sas(&mut self) -> Result<Vec<SaInfo>, XfrmError> {
        let seq = self.next_seq();
        let replies = self.dump(msg::dump_sa(seq), seq)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                Reply::Sa { info, .. } => Some(info),
                _ => None,
            })
            .collect())
    }

    /// Every policy in this namespace.
    pub fn list_policies(&mut self) -> Result<Vec<PolicyInfo>, XfrmError> {
        let seq = self.next_seq();
        let replies = self.dump(msg::dump_policy(seq), seq)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                Reply::Policy { info, .. } => Some(info),
                _ => None,
            })
            .collect())
    }

    /// Removes every SA and policy carrying `marker` (and nothing else); returns how many SAs
    /// and policies went. Entries that vanish meanwhile (expired) are not an error.
    pub fn remove_marked(&mut self, marker: u32) -> Result<(usize, usize), XfrmError> {
        let mut sas = 0;
        for sa in self.list_sas()?.into_iter().filter(|s| s.marker == marker) {
            match self.delete_sa(&sa.id) {
                Ok(()) => sas += 1,
                Err(XfrmError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut pols = 0;
        for p in self
            .list_policies()?
            .into_iter()
            .filter(|p| p.marker == marker)
        {
            let seq = self.next_seq();
            match self.request("delete policy", msg::delete_listed_policy(&p, seq), seq) {
                Ok(()) => pols += 1,
                Err(XfrmError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        tracing::debug!(marker, sas, policies = pols, "removed marked xfrm entries");
        Ok((sas, pols))
    }
}

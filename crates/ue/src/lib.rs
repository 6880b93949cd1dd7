//! A UE for the IMS core (`ims-ue`): registers a private identity through a P-CSCF over UDP or
//! TCP, answering the challenge as a phone would.
//!
//! - **Digest-AKAv1-MD5** (RFC 3310, TS 33.203): the USIM is simulated ([`ims_aka::Usim`]:
//!   K, OPc and the TS 33.102 Annex C SQN record). The nonce is `base64(RAND || AUTN)`; AUTN's
//!   MAC is checked; a fresh SQN gives RES, the digest password; a stale one gives AUTS,
//!   sent as `auts=` with an empty password (resynchronisation), after which the network sends
//!   a new challenge. [`AkaOptions::ignore_mac_failure`] makes the UE answer a challenge whose
//!   MAC is wrong anyway (a UE with a wrong K, for testing that the network refuses it).
//! - **SIP Digest MD5** (RFC 2617) with a password, for softphone-like users.
//!
//! Each [`Ue::register`] is one REGISTER transaction chain on one Call-ID (CSeq increasing):
//! REGISTER → 401 → REGISTER with the response → final answer, with at most three challenges
//! answered. No answer within the timeout is an error, never a hang. IPsec (the UE's own SAs)
//! comes with the IPsec issue.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ims_aka::digest_aka::{self, AkaNonce};
use ims_aka::{DigestParams, Milenage, Qop, Sqn, SqnScheme, Usim, UsimResponse, UsimSqnState};
use ims_net::sip::{Incoming, SipTransport, Transport};
use ims_sip::{Auth, HeaderName, Message};
use tokio::sync::mpsc;

/// How the UE proves who it is.
#[derive(Clone)]
pub enum Credentials {
    /// A USIM.
    Aka {
        /// K (16 bytes).
        k: [u8; 16],
        /// OPc (16 bytes).
        opc: [u8; 16],
        /// SQN_MS: the highest sequence number the USIM has accepted.
        sqn_ms: u64,
        /// Options.
        options: AkaOptions,
    },
    /// A password (SIP Digest MD5).
    Password(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Aka { sqn_ms, .. } => write!(f, "Aka {{ sqn_ms: {sqn_ms}, .. }}"),
            Credentials::Password(_) => f.write_str("Password(..)"),
        }
    }
}

/// Options of the simulated USIM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AkaOptions {
    /// Answer a challenge whose AUTN MAC is wrong (a real UE refuses it).
    pub ignore_mac_failure: bool,
}

/// Who registers, where.
#[derive(Debug, Clone)]
pub struct UeConfig {
    /// Private identity (Authorization username).
    pub impi: String,
    /// Public identity (From/To).
    pub impu: String,
    /// Home domain (Request-URI `sip:<domain>`, the realm of the first Authorization).
    pub domain: String,
    /// The P-CSCF.
    pub pcscf: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
    /// Local address to bind (port 0 picks one).
    pub local: SocketAddr,
    /// Credentials.
    pub credentials: Credentials,
    /// How long to wait for each answer.
    pub timeout: Duration,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum UeError {
    #[error("cannot bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("sending to the P-CSCF failed: {0}")]
    Send(#[from] ims_net::sip::SendError),
    #[error("no answer from the P-CSCF within {0:?}")]
    Timeout(Duration),
    #[error("bad challenge: {0}")]
    Challenge(String),
    #[error("network authentication failed: AUTN's MAC is wrong (not our network, or a wrong K)")]
    NetworkAuthFailed,
    #[error("too many challenges ({0})")]
    TooManyChallenges(u32),
    #[error("SQN {0} is not a 48-bit sequence number: {1}")]
    Sqn(u64, String),
    #[error("cannot build the request: {0}")]
    Message(#[from] ims_sip::Error),
}

/// How a registration ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The final status.
    pub status: u16,
    /// The final response.
    pub response: Message,
    /// Challenges answered.
    pub challenges: u32,
    /// A resynchronisation (AUTS) was sent.
    pub resynced: bool,
    /// The last AKA RES (hex) the UE sent, for diagnostics.
    pub last_res: Option<String>,
}

/// A UE.
pub struct Ue {
    cfg: UeConfig,
    sip: SipTransport,
    rx: mpsc::Receiver<Incoming>,
    usim: Option<(Usim, Milenage)>,
    call_id: String,
    cseq: u32,
    tag: String,
    branch: u64,
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    hex::encode(b)
}

impl Ue {
    /// Binds the UE's socket.
    pub async fn start(mut cfg: UeConfig) -> Result<Self, UeError> {
        // An unspecified local address (0.0.0.0): the one the kernel routes toward the
        // P-CSCF, so that Via and Contact name a reachable address.
        if cfg.local.ip().is_unspecified() {
            let probe = std::net::UdpSocket::bind(cfg.local)
                .and_then(|s| s.connect(cfg.pcscf).and_then(|()| s.local_addr()));
            if let Ok(a) = probe {
                cfg.local.set_ip(a.ip());
            }
        }
        let (sip, rx) = SipTransport::bind(cfg.local)
            .await
            .map_err(|e| UeError::Bind(cfg.local, e))?;
        let usim = match &cfg.credentials {
            Credentials::Aka { k, opc, sqn_ms, .. } => {
                let m = Milenage::new(&ims_aka::Key::new(*k), &ims_aka::Opc::new(*opc));
                let state = match *sqn_ms {
                    0 => UsimSqnState::new(SqnScheme::default()),
                    n => {
                        let sqn = Sqn::new(n).map_err(|e| UeError::Sqn(n, e.to_string()))?;
                        UsimSqnState::with_sqn_ms(SqnScheme::default(), sqn)
                    }
                };
                Some((Usim::new(m.clone(), state), m))
            }
            Credentials::Password(_) => None,
        };
        Ok(Self {
            cfg,
            sip,
            rx,
            usim,
            call_id: random_hex(8),
            cseq: 0,
            tag: random_hex(4),
            branch: 0,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.sip.local_addr()
    }

    fn request(&mut self, expires: u32, authorization: &str) -> Result<Message, UeError> {
        self.cseq += 1;
        self.branch += 1;
        let me = self.local_addr();
        let proto = if self.cfg.transport == Transport::Tcp {
            "TCP"
        } else {
            "UDP"
        };
        let tp = if self.cfg.transport == Transport::Tcp {
            ";transport=tcp"
        } else {
            ""
        };
        let user = self
            .cfg
            .impu
            .trim_start_matches("sip:")
            .split('@')
            .next()
            .unwrap_or("ue")
            .to_owned();
        let text = format!(
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/{proto} {me};branch=z9hG4bK{call}.{b};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{impu}>;tag={tag}\r\n\
             To: <{impu}>\r\n\
             Call-ID: {call}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{me}{tp}>;expires={expires}\r\n\
             Expires: {expires}\r\n\
             Supported: path\r\n\
             Authorization: {authorization}\r\n\
             User-Agent: ims-ue\r\n\
             Content-Length: 0\r\n\r\n",
            domain = self.cfg.domain,
            impu = self.cfg.impu,
            tag = self.tag,
            call = self.call_id,
            b = self.branch,
            cseq = self.cseq,
        );
        Ok(Message::parse(Bytes::from(text))?)
    }

    async fn transact(&mut self, req: Message) -> Result<Message, UeError> {
        let cseq = self.cseq;
        self.sip
            .send(self.cfg.transport, self.cfg.pcscf, req.to_bytes())
            .await?;
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .map_err(|_| UeError::Timeout(self.cfg.timeout))?
                .ok_or(UeError::Timeout(self.cfg.timeout))?;
            let r = m.message;
            let ours = r.call_id().ok() == Some(self.call_id.as_str())
                && r.cseq().is_ok_and(|c| c.seq == cseq);
            if !r.is_request() && ours && r.status().unwrap_or(0) >= 200 {
                return Ok(r);
            }
        }
    }

    /// Registers (or refreshes, or with `expires` 0 deregisters) and returns the final answer.
    pub async fn register(&mut self, expires: u32) -> Result<Outcome, UeError> {
        let first = format!(
            "Digest username=\"{}\", realm=\"{}\", uri=\"sip:{}\", nonce=\"\", response=\"\"",
            self.cfg.impi, self.cfg.domain, self.cfg.domain
        );
        let req = self.request(expires, &first)?;
        let mut resp = self.transact(req).await?;
        let mut challenges = 0;
        let mut resynced = false;
        let mut last_res = None;
        while matches!(resp.status(), Some(401 | 407)) {
            challenges += 1;
            if challenges > 3 {
                return Err(UeError::TooManyChallenges(challenges - 1));
            }
            let name = if resp.status() == Some(407) {
                HeaderName::ProxyAuthenticate
            } else {
                HeaderName::WwwAuthenticate
            };
            let www = resp
                .header_str(name)
                .ok_or_else(|| UeError::Challenge("no WWW-Authenticate".into()))?
                .to_owned();
            let (auth, res, resync) = self.answer(&www)?;
            resynced |= resync;
            if res.is_some() {
                last_res = res;
            }
            let req = self.request(expires, &auth)?;
            resp = self.transact(req).await?;
        }
        Ok(Outcome {
            status: resp.status().unwrap_or(0),
            response: resp,
            challenges,
            resynced,
            last_res,
        })
    }

    /// The Authorization value answering a challenge; the RES used (hex), and whether it is a
    /// resynchronisation.
    fn answer(&mut self, www: &str) -> Result<(String, Option<String>, bool), UeError> {
        let a = Auth::parse(www).map_err(|e| UeError::Challenge(e.to_string()))?;
        let nonce = a
            .nonce()
            .map(|n| n.trim_matches('"').to_owned())
            .ok_or_else(|| UeError::Challenge("no nonce".into()))?;
        let realm = a
            .realm()
            .map(|r| r.trim_matches('"').to_owned())
            .unwrap_or_else(|| self.cfg.domain.clone());
        let algorithm = a
            .algorithm()
            .map(|s| s.trim_matches('"').to_owned())
            .unwrap_or_else(|| "MD5".into());
        let offered_qop = a.qop().map(|q| q.trim_matches('"').to_owned());
        let qop = match offered_qop {
            Some(q) if q.split(',').any(|x| x.trim() == "auth") => Some(Qop::Auth),
            Some(q) if q.split(',').any(|x| x.trim() == "auth-int") => Some(Qop::AuthInt),
            _ => None,
        };
        let cnonce = random_hex(8);
        let uri = format!("sip:{}", self.cfg.domain);
        let params = DigestParams {
            username: &self.cfg.impi,
            realm: &realm,
            nonce: &nonce,
            uri: &uri,
            qop,
            nc: Some("00000001"),
            cnonce: Some(&cnonce),
            method: "REGISTER",
            body: b"",
        };
        let mut extra = String::new();
        let mut res_hex = None;
        let mut resync = false;
        let response = if algorithm.eq_ignore_ascii_case("AKAv1-MD5") {
            let Some((usim, m)) = self.usim.as_mut() else {
                return Err(UeError::Challenge(
                    "AKA challenge, but this UE has a password".into(),
                ));
            };
            let ignore = matches!(
                self.cfg.credentials,
                Credentials::Aka {
                    options: AkaOptions {
                        ignore_mac_failure: true
                    },
                    ..
                }
            );
            let n = AkaNonce::decode(&nonce).map_err(|e| UeError::Challenge(e.to_string()))?;
            match usim.authenticate(&n.rand, &n.autn) {
                Ok(UsimResponse::Success(r)) => {
                    res_hex = Some(hex::encode(r.res.expose()));
                    params
                        .response_with_password(digest_aka::password(&r.res))
                        .map_err(|e| UeError::Challenge(e.to_string()))?
                }
                Ok(UsimResponse::SyncFailure(auts)) => {
                    resync = true;
                    extra = format!(", auts=\"{}\"", digest_aka::encode_auts(&auts));
                    params
                        .response_with_password(b"")
                        .map_err(|e| UeError::Challenge(e.to_string()))?
                }
                Err(_) if ignore => {
                    let res = m.f2(&n.rand);
                    res_hex = Some(hex::encode(res.expose()));
                    params
                        .response_with_password(digest_aka::password(&res))
                        .map_err(|e| UeError::Challenge(e.to_string()))?
                }
                Err(_) => return Err(UeError::NetworkAuthFailed),
            }
        } else if algorithm.eq_ignore_ascii_case("MD5") {
            let Credentials::Password(p) = &self.cfg.credentials else {
                return Err(UeError::Challenge(
                    "MD5 challenge, but this UE has a USIM".into(),
                ));
            };
            params
                .response_with_password(p.as_bytes())
                .map_err(|e| UeError::Challenge(e.to_string()))?
        } else {
            return Err(UeError::Challenge(format!(
                "algorithm {algorithm} is not supported"
            )));
        };
        let mut auth = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{}\", algorithm={}",
            self.cfg.impi, realm, nonce, uri, response, algorithm
        );
        if let Some(q) = qop {
            auth.push_str(&format!(
                ", qop={}, nc=00000001, cnonce=\"{cnonce}\"",
                q.as_str()
            ));
        }
        auth.push_str(&extra);
        Ok((auth, res_hex, resync))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_sqn_beyond_48_bits_is_refused_not_reset() {
        let cfg = UeConfig {
            impi: "a@hims.net".into(),
            impu: "sip:a@hims.net".into(),
            domain: "hims.net".into(),
            pcscf: "127.0.0.1:5060".parse().unwrap(),
            transport: Transport::Udp,
            local: "127.0.0.1:0".parse().unwrap(),
            credentials: Credentials::Aka {
                k: [0; 16],
                opc: [0; 16],
                sqn_ms: 1 << 48,
                options: AkaOptions::default(),
            },
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(Ue::start(cfg).await, Err(UeError::Sqn(..))));
    }
}

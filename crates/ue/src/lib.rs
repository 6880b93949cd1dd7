//! A UE for the IMS core (`ims-ue`): registers a private identity through a P-CSCF over UDP or
//! TCP, answering the challenge as a phone would.
//!
//! - **Digest-AKAv1-MD5** (RFC 3310, TS 33.203): the USIM is simulated ([`ims_aka::Usim`]:
//!   K, OPc and the TS 33.102 Annex C SQN record). The nonce is `base64(RAND || AUTN)`; AUTN's
//!   MAC is checked; a fresh SQN gives RES, the digest password; a stale one gives AUTS,
//!   sent as `auts=` with an empty password (resynchronisation), after which the network sends
//!   a new challenge. A wrong MAC (not our network, or K/OPc differ) is refused as TS 24.229
//!   §5.1.1.5.3 says: the UE answers the challenge with an empty `response` and no `auts`,
//!   so that the S-CSCF knows the challenge was deemed invalid, and the registration fails
//!   with [`UeError::NetworkAuthFailed`]. [`AkaOptions::ignore_mac_failure`] makes the UE
//!   answer such a challenge with a RES anyway (a UE with a wrong K, for testing that the
//!   network refuses it).
//! - **SIP Digest MD5** (RFC 2617) with a password, for softphone-like users.
//!
//! Each [`Ue::register`] is one REGISTER transaction chain on one Call-ID (CSeq increasing):
//! REGISTER → 401 → REGISTER with the response → final answer, with at most three challenges
//! answered. Over UDP each request is retransmitted by Timer E (T1 doubling up to T2,
//! RFC 3261 §17.1.2: the sans-io [`NonInviteClient`]) until a response comes, so a lost
//! datagram costs half a second, not the registration. No answer within the timeout is an
//! error, never a hang.
//!
//! **IPsec** ([`UeIpsec`], TS 33.203 §7, TS 24.229 §5.1.1.2): the UE binds its protected
//! client port (`port_uc`, the main socket) and its protected server port (`port_us`), offers
//! one `ipsec-3gpp` mechanism in Security-Client (`Require`/`Proxy-Require: sec-agree`), and
//! on an AKA 401 carrying the P-CSCF's Security-Server sets up its four SAs from CK/IK — its
//! own through [`ims_ipsec::SaManager`] (netlink), or by running a hook program with the
//! values (e.g. a script calling iproute2's `ip xfrm`, an implementation independent of ours).
//! Every following REGISTER goes from `port_uc` to the P-CSCF's `port_ps` through the SAs,
//! with Security-Verify (the Security-Server echoed) and the same Security-Client. The SAs go
//! after a deregistration's 200 OK, a failed authentication, and [`Ue::close`].
//!
//! **Steps** ([`Step`], [`Ue::on_step`]): each step of a registration (REGISTER sent,
//! challenge received, AUTN verified or which check failed, response sent, SAs installed,
//! registered until when, deregistered, refused) is handed, typed, to an observer the caller
//! sets; `ims-ue --verbose` prints them. The library itself prints nothing.
//!
//! **Pager mode** (RFC 3428): once registered, [`Ue::send_message`] sends a MESSAGE through
//! the P-CSCF (through the SAs with IPsec) and returns its final status;
//! [`Ue::next_message`] waits for one from the network (at the protected server port with
//! IPsec) and answers it 200.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ims_aka::digest_aka::{self, AkaNonce};
use ims_aka::{
    Ck, DigestParams, EncryptionAlgorithm, Ik, IntegrityAlgorithm, Milenage, Qop, Sqn, SqnScheme,
    Usim, UsimResponse, UsimSqnState,
};
use ims_ipsec::{ClientOffer, Installed, Preferences, SaManager, SaParams, Side};
use ims_net::sip::{Incoming, SipTransport, Transport};
use ims_sip::transaction::{Event, NonInviteClient, Timers};
use ims_sip::{Auth, HeaderName, Message};
use tokio::sync::mpsc;

pub mod calls;
pub mod swarm;

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

/// How the UE installs its SAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaInstaller {
    /// Itself, over NETLINK_XFRM ([`ims_ipsec::SaManager`]), with this selector marker.
    Netlink {
        /// The marker of its SAs and policies.
        marker: u32,
    },
    /// A program run as `<path> add` after the 401 and `<path> del` when the SAs go, with
    /// the values in the environment: `IMS_UE_IP`, `IMS_PCSCF_IP`, `IMS_PORT_UC`,
    /// `IMS_PORT_US`, `IMS_PORT_PC`, `IMS_PORT_PS`, `IMS_SPI_UC`, `IMS_SPI_US`, `IMS_SPI_PC`,
    /// `IMS_SPI_PS` (decimal), `IMS_ALG`, `IMS_EALG` (sec-agree names), `IMS_CK`, `IMS_IK`
    /// (32 hex digits). It must exit 0.
    Hook(PathBuf),
}

/// A deliberate fault in the second REGISTER's security headers, to test the P-CSCF's checks
/// (it must answer `494 Security Agreement Required`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Security-Verify differs from the Security-Server received (a parameter added).
    Verify,
    /// Security-Client differs from the first REGISTER's (a parameter added).
    Client,
    /// The digest response of the REGISTER answering the challenge is wrong (the network
    /// must answer 403, through the new SAs, and remove them).
    Res,
}

/// The UE's IPsec settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UeIpsec {
    /// The protected server port (`port_us`; 0 picks one). The protected client port is the
    /// port of [`UeConfig::local`].
    pub port_us: u16,
    /// The integrity algorithm offered.
    pub alg: IntegrityAlgorithm,
    /// The encryption algorithm offered.
    pub ealg: EncryptionAlgorithm,
    /// Who installs the SAs.
    pub installer: SaInstaller,
    /// A fault to put in the REGISTERs sent through the SAs (tests).
    pub tamper: Option<Tamper>,
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
    /// IPsec with the P-CSCF (`None`: plain SIP).
    pub ipsec: Option<UeIpsec>,
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
    #[error("IPsec: {0}")]
    Ipsec(String),
    #[error("no reg event subscription (subscribe_reg first)")]
    NoSubscription,
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
    /// The nonce of the last challenge answered (for AKA base64(RAND||AUTN)).
    pub last_nonce: Option<String>,
    /// The final response came through the UE's IPsec SAs.
    pub protected: bool,
}

/// A step of a registration, as [`Ue::on_step`]'s observer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A REGISTER went out.
    RegisterSent {
        /// Its Expires (0: a deregistration).
        expires: u32,
        /// Its CSeq number.
        cseq: u32,
        /// Where to (the P-CSCF, its protected server port once the SAs are up).
        to: SocketAddr,
        /// Through the UE's SAs.
        protected: bool,
    },
    /// A 401 or 407 came.
    Challenged {
        /// The algorithm (`AKAv1-MD5`, `MD5`).
        algorithm: String,
        /// The realm.
        realm: String,
    },
    /// The USIM checked AUTN: the MAC is the network's and SQN is fresh.
    AutnVerified,
    /// The USIM refused AUTN: its MAC is wrong (not our network, or K/OPc differ).
    MacFailure,
    /// The USIM found SQN out of range: AUTS goes back (resynchronisation).
    SqnOutOfRange,
    /// The challenge was answered: RES for AKA (empty for a resync or a refused AUTN), the
    /// digest of the password for MD5.
    ResponseSent {
        /// What the response holds.
        what: &'static str,
    },
    /// The UE's four SAs with the P-CSCF are installed.
    SasInstalled {
        /// The UE's protected client and server ports.
        port_uc: u16,
        /// The UE's protected server port.
        port_us: u16,
        /// The P-CSCF's protected client port.
        port_pc: u16,
        /// The P-CSCF's protected server port.
        port_ps: u16,
        /// The SPIs the UE receives on (client, server).
        spi_uc: u32,
        /// See `spi_uc`.
        spi_us: u32,
        /// The SPIs the P-CSCF receives on (client, server).
        spi_pc: u32,
        /// See `spi_pc`.
        spi_ps: u32,
    },
    /// 2xx for a registration: registered until then.
    Registered {
        /// When our contact's registration ends.
        until: SystemTime,
        /// The interval the registrar granted (seconds).
        expires: u32,
    },
    /// 2xx for a deregistration.
    Deregistered,
    /// A final failure answer.
    Refused {
        /// The status.
        status: u16,
        /// The reason phrase.
        reason: String,
    },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::RegisterSent {
                expires,
                cseq,
                to,
                protected,
            } => write!(
                f,
                "REGISTER sent to {to} (CSeq {cseq}, expires {expires}{})",
                if *protected { ", through the SAs" } else { "" }
            ),
            Step::Challenged { algorithm, realm } => {
                write!(f, "challenge received: {algorithm}, realm {realm}")
            }
            Step::AutnVerified => f.write_str("AUTN verified (MAC good, SQN fresh)"),
            Step::MacFailure => f.write_str(
                "AUTN refused: MAC failure (not our network, or K/OPc differ from the HSS's)",
            ),
            Step::SqnOutOfRange => {
                f.write_str("AUTN refused: SQN out of range (AUTS sent: resynchronisation)")
            }
            Step::ResponseSent { what } => write!(f, "{what} sent"),
            Step::SasInstalled {
                port_uc,
                port_us,
                port_pc,
                port_ps,
                spi_uc,
                spi_us,
                spi_pc,
                spi_ps,
            } => write!(
                f,
                "SAs installed: UE ports {port_uc}/{port_us} (SPIs {spi_uc}/{spi_us}), P-CSCF ports {port_pc}/{port_ps} (SPIs {spi_pc}/{spi_ps})"
            ),
            Step::Registered { until, expires } => write!(
                f,
                "registered until {} (expires {expires})",
                ims_net::clock::rfc3339(*until)
            ),
            Step::Deregistered => f.write_str("deregistered"),
            Step::Refused { status, reason } => write!(f, "refused: {status} {reason}"),
        }
    }
}

/// The observer of [`Step`]s.
pub type StepObserver = Box<dyn FnMut(&Step) + Send + Sync>;

/// How a reg-event fetch ended ([`Ue::fetch_reg`]).
#[derive(Debug, Clone)]
pub struct FetchOutcome {
    /// The SUBSCRIBE's final status.
    pub status: u16,
    /// The NOTIFY's Subscription-State, when one came (and was answered 200).
    pub notify_state: Option<String>,
    /// The NOTIFY's registration state (`state="..."` of the first `<registration>`).
    pub registration_state: Option<String>,
    /// The NOTIFY arrived at the protected server port (through the SAs).
    pub protected: bool,
}

/// A MESSAGE the UE received ([`Ue::next_message`]).
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// Who sent it: the P-Asserted-Identity the network put on it, else From's URI.
    pub from: String,
    /// Its body.
    pub body: String,
    /// It arrived at the protected server port (through the SAs).
    pub protected: bool,
}

/// The UE's side of the security agreement.
struct Sec {
    cfg: UeIpsec,
    /// The server socket at `port_us` (requests from the network arrive there).
    server: SipTransport,
    /// What arrives at it.
    server_rx: mpsc::Receiver<Incoming>,
    /// Our Security-Client value.
    client: String,
    /// Our offer, parsed.
    offer: ClientOffer,
    /// Once the SAs are up: the P-CSCF's Security-Server value, its protected server
    /// address, and our installed SAs.
    up: Option<SecUp>,
}

struct SecUp {
    server_value: String,
    pcscf_ps: SocketAddr,
    sas: InstalledSas,
}

enum InstalledSas {
    Netlink(Box<(SaManager, Installed)>),
    Hook(PathBuf, Vec<(String, String)>),
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
    sec: Option<Sec>,
    /// The Call-ID of our reg event subscription ([`Ue::subscribe_reg`]).
    reg_sub: Option<String>,
    /// Who is told each [`Step`].
    observer: Option<StepObserver>,
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_be_bytes(b)
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
        // With IPsec the main socket is the protected client port: TCP connections to the
        // P-CSCF must leave from it too, for the SA to select them.
        let bound = if cfg.ipsec.is_some() {
            SipTransport::bind_connecting_from_port(cfg.local).await
        } else {
            SipTransport::bind(cfg.local).await
        };
        let (sip, rx) = bound.map_err(|e| UeError::Bind(cfg.local, e))?;
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
        let sec = match cfg.ipsec.clone() {
            Some(ic) => {
                let at = SocketAddr::new(sip.local_addr().ip(), ic.port_us);
                let (server, server_rx) = SipTransport::bind(at)
                    .await
                    .map_err(|e| UeError::Bind(at, e))?;
                // Our inbound SPIs: random, 2^28 and above (the P-CSCF's default range is
                // far below), spi_s = spi_c + 1.
                let spi_c = 0x1000_0000 | (random_u32() & 0x0fff_fffe);
                let client = format!(
                    "ipsec-3gpp;prot=esp;mod=trans;spi-c={spi_c};spi-s={};port-c={};port-s={};alg={};ealg={}",
                    spi_c + 1,
                    sip.local_addr().port(),
                    server.local_addr().port(),
                    ic.alg.name(),
                    ic.ealg.name()
                );
                let prefs = Preferences::new(vec![ic.alg], vec![ic.ealg]);
                let offer = ims_ipsec::secagree::select_offer([client.as_str()], &prefs)
                    .map_err(|e| UeError::Ipsec(format!("our own offer: {e}")))?;
                Some(Sec {
                    cfg: ic,
                    server,
                    server_rx,
                    client,
                    offer,
                    up: None,
                })
            }
            None => None,
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
            sec,
            reg_sub: None,
            observer: None,
        })
    }

    /// Hands every following [`Step`] of a registration to `f` (`ims-ue --verbose`).
    pub fn on_step(&mut self, f: StepObserver) {
        self.observer = Some(f);
    }

    fn step(&mut self, s: Step) {
        if let Some(f) = self.observer.as_mut() {
            f(&s);
        }
    }

    /// The protected server port, with IPsec.
    pub fn protected_server_port(&self) -> Option<u16> {
        self.sec.as_ref().map(|s| s.server.local_addr().port())
    }

    /// Whether the UE's SAs are installed.
    pub fn ipsec_up(&self) -> bool {
        self.sec.as_ref().is_some_and(|s| s.up.is_some())
    }

    /// Waits, at most `limit`, until what the UE sent over TCP is written: a send only
    /// queues it for the connection's task, so a program that ends right after answering
    /// (a MESSAGE's 200) calls this first. False when the limit came first.
    pub async fn flush(&self, limit: Duration) -> bool {
        let server = async {
            match &self.sec {
                Some(sec) => sec.server.flush(limit).await,
                None => true,
            }
        };
        let (plain, protected) = tokio::join!(self.sip.flush(limit), server);
        plain && protected
    }

    /// Removes the UE's SAs, if any (call before dropping the UE).
    pub fn close(&mut self) -> Result<(), UeError> {
        match self.sec.as_mut().and_then(|s| s.up.take()) {
            Some(up) => remove_sas(up.sas),
            None => Ok(()),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.sip.local_addr()
    }

    fn request(&mut self, expires: u32, authorization: &str) -> Result<Message, UeError> {
        self.cseq += 1;
        self.branch += 1;
        let (me, proto, tp) = self.contact();
        let mut security = String::new();
        if let Some(sec) = &self.sec {
            let fault = |t: Tamper| {
                if sec.up.is_some() && sec.cfg.tamper == Some(t) {
                    ";x=1"
                } else {
                    ""
                }
            };
            security = format!(
                "Supported: sec-agree\r\nSecurity-Client: {}{}\r\nRequire: sec-agree\r\nProxy-Require: sec-agree\r\n",
                sec.client,
                fault(Tamper::Client)
            );
            if let Some(up) = &sec.up {
                security.push_str(&format!(
                    "Security-Verify: {}{}\r\n",
                    up.server_value,
                    fault(Tamper::Verify)
                ));
            }
        }
        let user = self.user_part();
        let mut text = String::with_capacity(768);
        write_register(
            &mut text,
            &RegisterText {
                domain: &self.cfg.domain,
                impu: &self.cfg.impu,
                user: &user,
                proto,
                tp,
                me,
                call_id: &self.call_id,
                branch: self.branch,
                tag: &self.tag,
                cseq: self.cseq,
                expires,
                security: &security,
                authorization,
            },
        );
        Ok(Message::parse(Bytes::from(text))?)
    }

    async fn transact(&mut self, req: Message, expires: u32) -> Result<Message, UeError> {
        let cseq = self.cseq;
        let call_id = self.call_id.clone();
        let to = self.pcscf_target();
        let mut nict = self.client_transaction(req.to_bytes());
        self.transmit(&mut nict, to).await?;
        let protected = self.ipsec_up();
        self.step(Step::RegisterSent {
            expires,
            cseq,
            to,
            protected,
        });
        self.final_response(&mut nict, to, &call_id, Some(cseq))
            .await
    }

    /// The non-INVITE client transaction of a request of ours (RFC 3261 §17.1.2): over UDP
    /// it retransmits by Timer E (T1 doubling up to T2) until a response comes, as a phone
    /// does; over TCP it sends once.
    fn client_transaction(&self, bytes: Bytes) -> NonInviteClient {
        let reliable = self.cfg.transport != Transport::Udp;
        NonInviteClient::new(bytes, reliable, std::time::Instant::now(), Timers::RFC3261)
    }

    /// Sends what the transaction has to send.
    async fn transmit(
        &mut self,
        nict: &mut NonInviteClient,
        to: SocketAddr,
    ) -> Result<(), UeError> {
        while let Some(b) = nict.poll_transmit() {
            if let Err(e) = self.sip.send(self.cfg.transport, to, b).await {
                nict.handle_transport_error(std::time::Instant::now());
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Where the UE names itself in Via and Contact, with the Via protocol and the Contact's
    /// transport parameter: with IPsec the protected server port (TS 24.229 §5.1.1.2).
    fn contact(&self) -> (SocketAddr, &'static str, &'static str) {
        let me = self.local_addr();
        let at = match &self.sec {
            Some(sec) => SocketAddr::new(me.ip(), sec.server.local_addr().port()),
            None => me,
        };
        if self.cfg.transport == Transport::Tcp {
            (at, "TCP", ";transport=tcp")
        } else {
            (at, "UDP", "")
        }
    }

    /// Where requests to the P-CSCF go: its protected server port once the SAs are up.
    fn pcscf_target(&self) -> SocketAddr {
        match self.sec.as_ref().and_then(|s| s.up.as_ref()) {
            Some(up) => up.pcscf_ps,
            None => self.cfg.pcscf,
        }
    }

    /// The final response for `call_id` (and CSeq number `cseq`, when given) that comes to
    /// the main socket within the timeout; others are skipped.
    /// The final response of `nict`'s request (sent to `to`), retransmitting it as its
    /// timers say meanwhile; at most the configured timeout (or Timer F, if sooner).
    async fn final_response(
        &mut self,
        nict: &mut NonInviteClient,
        to: SocketAddr,
        call_id: &str,
        cseq: Option<u32>,
    ) -> Result<Message, UeError> {
        let timeout = UeError::Timeout(self.cfg.timeout);
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        loop {
            let wake = nict.poll_timeout().map_or(deadline, |t| {
                deadline.min(tokio::time::Instant::from_std(t))
            });
            let m = match tokio::time::timeout_at(wake, self.rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(timeout),
                Err(_) if wake >= deadline => return Err(timeout),
                Err(_) => {
                    nict.handle_timeout(std::time::Instant::now());
                    while let Some(ev) = nict.poll_event() {
                        if ev == Event::Timeout {
                            return Err(timeout);
                        }
                    }
                    self.transmit(nict, to).await?;
                    continue;
                }
            };
            let r = m.message;
            let ours = r.call_id().ok() == Some(call_id)
                && cseq.is_none_or(|n| r.cseq().is_ok_and(|c| c.seq == n));
            if r.is_request() || !ours {
                continue;
            }
            let status = r.status().unwrap_or(0);
            nict.handle_response(std::time::Instant::now(), status);
            if status >= 200 {
                return Ok(r);
            }
        }
    }

    /// The next message from the network within `deadline`, at the main socket or (with
    /// IPsec) the protected server port (`true`).
    async fn next_incoming(&mut self, deadline: tokio::time::Instant) -> Option<(Incoming, bool)> {
        let next = async {
            match self.sec.as_mut() {
                Some(sec) => tokio::select! {
                    m = self.rx.recv() => m.map(|m| (m, false)),
                    m = sec.server_rx.recv() => m.map(|m| (m, true)),
                },
                None => self.rx.recv().await.map(|m| (m, false)),
            }
        };
        tokio::time::timeout_at(deadline, next).await.ok().flatten()
    }

    /// Answers `req` (which came at the protected server port when `at_server`) with 200.
    async fn answer_ok(&self, inc: &Incoming, at_server: bool) -> Result<(), UeError> {
        let ok = ims_sip::response_to(&inc.message, 200, "OK", Some(&random_hex(4)))?;
        let via = if at_server {
            self.sec.as_ref().map(|s| s.server.clone())
        } else {
            None
        };
        let transport = via.as_ref().unwrap_or(&self.sip);
        transport
            .send(inc.transport, inc.source, ok.to_bytes())
            .await?;
        Ok(())
    }

    /// The user part of our public identity (the Contact's user).
    fn user_part(&self) -> String {
        self.cfg
            .impu
            .trim_start_matches("sip:")
            .split('@')
            .next()
            .unwrap_or("ue")
            .to_owned()
    }

    /// Registers (or refreshes, or with `expires` 0 deregisters) and returns the final answer.
    pub async fn register(&mut self, expires: u32) -> Result<Outcome, UeError> {
        let mut first = String::new();
        write_initial_authorization(&mut first, &self.cfg.impi, &self.cfg.domain);
        let req = self.request(expires, &first)?;
        let mut resp = self.transact(req, expires).await?;
        let mut challenges = 0;
        let mut resynced = false;
        let mut last_res = None;
        let mut last_nonce = None;
        let was_up = self.ipsec_up();
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
            last_nonce = Challenge::parse(&www).ok().map(|c| c.nonce.to_owned());
            let (auth, res, resync, keys) = match self.answer(&www) {
                Err(UeError::NetworkAuthFailed) => {
                    // TS 24.229 §5.1.1.5.3: tell the S-CSCF the challenge was invalid (an
                    // empty response, no auts), then give up.
                    let auth = self.invalid_challenge_answer(&www)?;
                    self.step(Step::ResponseSent {
                        what: "empty response (challenge deemed invalid)",
                    });
                    let req = self.request(expires, &auth)?;
                    if let Ok(r) = self.transact(req, expires).await {
                        self.step(Step::Refused {
                            status: r.status().unwrap_or(0),
                            reason: String::from_utf8_lossy(r.reason().unwrap_or_default())
                                .into_owned(),
                        });
                    }
                    return Err(UeError::NetworkAuthFailed);
                }
                other => other?,
            };
            resynced |= resync;
            let sent_res = res.is_some();
            if res.is_some() {
                last_res = res;
            }
            if let Some((ck, ik)) = keys {
                self.set_up_sas(&resp, &ck, &ik)?;
            }
            let auth = match &self.sec {
                Some(sec) if sec.cfg.tamper == Some(Tamper::Res) => {
                    auth.replacen("response=\"", "response=\"0", 1)
                }
                _ => auth,
            };
            self.step(Step::ResponseSent {
                what: if resync {
                    "empty response with AUTS"
                } else if sent_res {
                    "RES"
                } else {
                    "digest response"
                },
            });
            let req = self.request(expires, &auth)?;
            resp = self.transact(req, expires).await?;
        }
        let status = resp.status().unwrap_or(0);
        let protected = self.ipsec_up();
        let step = match status {
            200..=299 if expires == 0 => Step::Deregistered,
            200..=299 => {
                let granted = self.granted_expires(&resp).unwrap_or(expires);
                Step::Registered {
                    until: SystemTime::now() + Duration::from_secs(u64::from(granted)),
                    expires: granted,
                }
            }
            _ => Step::Refused {
                status,
                reason: String::from_utf8_lossy(resp.reason().unwrap_or_default()).into_owned(),
            },
        };
        self.step(step);
        // The SAs go with a deregistration (its 200 came through them) and with an
        // authentication that failed through new ones.
        if protected
            && ((expires == 0 && (200..300).contains(&status)) || (status >= 300 && !was_up))
        {
            self.close()?;
        }
        Ok(Outcome {
            status,
            response: resp,
            challenges,
            resynced,
            last_res,
            last_nonce,
            protected,
        })
    }

    /// The interval a 2xx grants our contact: its Contact's `expires`, else the Expires header.
    fn granted_expires(&self, resp: &Message) -> Option<u32> {
        let (me, _, _) = self.contact();
        let me = me.to_string();
        let ours = resp
            .contacts()
            .filter_map(Result::ok)
            .find_map(|c| match c {
                ims_sip::Contact::Addr(a) if a.uri_str.contains(&me) => {
                    a.expires().and_then(Result::ok)
                }
                _ => None,
            });
        ours.or_else(|| resp.expires().and_then(Result::ok))
    }

    /// The Authorization telling the network its challenge was invalid (AUTN's MAC failed):
    /// the nonce answered with an empty response and no auts (TS 24.229 §5.1.1.5.3).
    fn invalid_challenge_answer(&self, www: &str) -> Result<String, UeError> {
        let ch = Challenge::parse(www).map_err(UeError::Challenge)?;
        Ok(format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"sip:{}\", response=\"\", algorithm={}",
            self.cfg.impi,
            ch.realm.unwrap_or(&self.cfg.domain),
            ch.nonce,
            self.cfg.domain,
            ch.algorithm
        ))
    }

    /// Fetches its own registration state (RFC 3680 `reg` event, SUBSCRIBE with `Expires: 0`)
    /// through the P-CSCF: waits for the SUBSCRIBE's final response and the NOTIFY, and
    /// answers the NOTIFY 200. With IPsec the SUBSCRIBE goes through the SAs and the NOTIFY
    /// comes to the protected server port through them (SA2, the 200 back on SA4).
    pub async fn fetch_reg(&mut self) -> Result<FetchOutcome, UeError> {
        self.subscribe_reg(0).await
    }

    /// Subscribes to our own reg event for `expires` seconds (0: a fetch), through the
    /// P-CSCF, and waits for the SUBSCRIBE's answer and the first NOTIFY (answered 200).
    /// Later NOTIFYs of the subscription come with [`Ue::next_reg_notify`].
    pub async fn subscribe_reg(&mut self, expires: u32) -> Result<FetchOutcome, UeError> {
        let (contact, proto, tp) = self.contact();
        let call_id = random_hex(8);
        let user = self.user_part();
        let text = format!(
            "SUBSCRIBE {impu} SIP/2.0\r\n\
             Via: SIP/2.0/{proto} {contact};branch=z9hG4bK{call_id}.s;rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{impu}>;tag={tag}\r\n\
             To: <{impu}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 SUBSCRIBE\r\n\
             Contact: <sip:{user}@{contact}{tp}>\r\n\
             Event: reg\r\n\
             Accept: application/reginfo+xml\r\n\
             Expires: {expires}\r\n\
             User-Agent: ims-ue\r\n\
             Content-Length: 0\r\n\r\n",
            impu = self.cfg.impu,
            tag = random_hex(4),
        );
        let req = Message::parse(Bytes::from(text))?;
        self.sip
            .send(self.cfg.transport, self.pcscf_target(), req.to_bytes())
            .await?;
        self.reg_sub = Some(call_id.clone());
        self.reg_notifies(&call_id, false, self.cfg.timeout).await
    }

    /// Sends a pager-mode MESSAGE (RFC 3428) with `text` to `to` through the P-CSCF (from
    /// the protected client port to its protected server port with IPsec) and returns its
    /// final status. Provisional answers are skipped; none within the timeout is an error.
    pub async fn send_message(&mut self, to: &str, text: &str) -> Result<u16, UeError> {
        let (contact, proto, _) = self.contact();
        let call_id = random_hex(8);
        let msg = format!(
            "MESSAGE {to} SIP/2.0\r\n\
             Via: SIP/2.0/{proto} {contact};branch=z9hG4bK{call_id}.m;rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{impu}>;tag={tag}\r\n\
             To: <{to}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 MESSAGE\r\n\
             Content-Type: text/plain\r\n\
             User-Agent: ims-ue\r\n\
             Content-Length: {len}\r\n\r\n{text}",
            impu = self.cfg.impu,
            tag = random_hex(4),
            len = text.len(),
        );
        let req = Message::parse(Bytes::from(msg))?;
        let to = self.pcscf_target();
        let mut nict = self.client_transaction(req.to_bytes());
        self.transmit(&mut nict, to).await?;
        let r = self.final_response(&mut nict, to, &call_id, None).await?;
        Ok(r.status().unwrap_or(0))
    }

    /// Waits up to `wait` for a MESSAGE from the network and answers it 200; `None` when
    /// none came. With IPsec it arrives at the protected server port.
    pub async fn next_message(
        &mut self,
        wait: Duration,
    ) -> Result<Option<ReceivedMessage>, UeError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Some((inc, at_server)) = self.next_incoming(deadline).await else {
                return Ok(None);
            };
            let m = &inc.message;
            if m.method_str() != Some("MESSAGE") {
                continue;
            }
            let from = m
                .name_addrs(HeaderName::PAssertedIdentity)
                .next()
                .and_then(Result::ok)
                .map(|n| n.uri_str.to_owned())
                .or_else(|| m.from_addr().ok().map(|f| f.uri_str.to_owned()))
                .unwrap_or_default();
            let got = ReceivedMessage {
                from,
                body: String::from_utf8_lossy(m.body()).into_owned(),
                protected: at_server && self.ipsec_up(),
            };
            self.answer_ok(&inc, at_server).await?;
            return Ok(Some(got));
        }
    }

    /// Waits up to `wait` for the next NOTIFY of our reg event subscription and answers it
    /// 200 (its `status` is 0: no SUBSCRIBE was answered).
    pub async fn next_reg_notify(&mut self, wait: Duration) -> Result<FetchOutcome, UeError> {
        let Some(call_id) = self.reg_sub.clone() else {
            return Err(UeError::NoSubscription);
        };
        self.reg_notifies(&call_id, true, wait).await
    }

    /// Reads what comes for the subscription `call_id`: the SUBSCRIBE's final answer (unless
    /// `notify_only`) and one NOTIFY, answered 200.
    async fn reg_notifies(
        &mut self,
        call_id: &str,
        notify_only: bool,
        wait: Duration,
    ) -> Result<FetchOutcome, UeError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = FetchOutcome {
            status: if notify_only { 200 } else { 0 },
            notify_state: None,
            registration_state: None,
            protected: false,
        };
        while out.status < 200 || out.notify_state.is_none() {
            let Some((inc, at_server)) = self.next_incoming(deadline).await else {
                // The answer without a NOTIFY (or nothing at all) is what we have.
                if out.status >= 200 {
                    return Ok(out);
                }
                return Err(UeError::Timeout(wait));
            };
            let m = &inc.message;
            if m.call_id().ok() != Some(call_id) {
                continue;
            }
            if !m.is_request() {
                let status = m.status().unwrap_or(0);
                if status >= 200 {
                    out.status = status;
                    if status >= 300 {
                        return Ok(out);
                    }
                }
                continue;
            }
            if m.method_str() != Some("NOTIFY") {
                continue;
            }
            out.notify_state = m
                .header_str(HeaderName::SubscriptionState)
                .map(|v| v.trim().to_owned());
            out.registration_state = registration_state(m.body());
            out.protected = at_server && self.ipsec_up();
            self.answer_ok(&inc, at_server).await?;
        }
        if notify_only {
            out.status = 0;
        }
        Ok(out)
    }

    /// After an AKA 401: the UE's four SAs from CK/IK and the P-CSCF's Security-Server (a 401
    /// without one leaves the UE on plain SIP).
    fn set_up_sas(&mut self, resp: &Message, ck: &Ck, ik: &Ik) -> Result<(), UeError> {
        let ue_ip = self.local_addr().ip();
        let pcscf_ip = self.cfg.pcscf.ip();
        let Some(sec) = self.sec.as_mut() else {
            return Ok(());
        };
        let values: Vec<&str> = resp.values(HeaderName::SecurityServer).flatten().collect();
        if values.is_empty() {
            tracing::info!("the 401 has no Security-Server: no IPsec");
            return Ok(());
        }
        let prefs = Preferences::new(vec![sec.cfg.alg], vec![sec.cfg.ealg]);
        let server = ims_ipsec::secagree::select_offer(values.iter().copied(), &prefs)
            .map_err(|e| UeError::Ipsec(format!("the P-CSCF's Security-Server: {e}")))?;
        // A new challenge replaces the SAs of the previous one.
        if let Some(old) = sec.up.take() {
            remove_sas(old.sas)?;
        }
        let params = SaParams {
            side: Side::Ue,
            ue_ip,
            pcscf_ip,
            ue: sec.offer.clone(),
            spi_pc: server.spi_c,
            spi_ps: server.spi_s,
            port_pc: server.port_c,
            port_ps: server.port_s,
            ik: *ik.expose(),
            ck: *ck.expose(),
            lifetime_secs: 0,
            marker: match &sec.cfg.installer {
                SaInstaller::Netlink { marker } => *marker,
                SaInstaller::Hook(_) => 0,
            },
            // Distinct per UE socket on this host (ports are), never 0.
            reqid_base: 0x0100_0000 + u32::from(sec.offer.port_c) * 4,
        };
        let sas = match &sec.cfg.installer {
            SaInstaller::Netlink { .. } => {
                let mgr = SaManager::open().map_err(|e| UeError::Ipsec(e.to_string()))?;
                let installed = mgr
                    .install(&params)
                    .map_err(|e| UeError::Ipsec(e.to_string()))?;
                InstalledSas::Netlink(Box::new((mgr, installed)))
            }
            SaInstaller::Hook(path) => {
                let env = vec![
                    ("IMS_UE_IP".to_owned(), ue_ip.to_string()),
                    ("IMS_PCSCF_IP".to_owned(), pcscf_ip.to_string()),
                    ("IMS_PORT_UC".to_owned(), sec.offer.port_c.to_string()),
                    ("IMS_PORT_US".to_owned(), sec.offer.port_s.to_string()),
                    ("IMS_PORT_PC".to_owned(), server.port_c.to_string()),
                    ("IMS_PORT_PS".to_owned(), server.port_s.to_string()),
                    ("IMS_SPI_UC".to_owned(), sec.offer.spi_c.to_string()),
                    ("IMS_SPI_US".to_owned(), sec.offer.spi_s.to_string()),
                    ("IMS_SPI_PC".to_owned(), server.spi_c.to_string()),
                    ("IMS_SPI_PS".to_owned(), server.spi_s.to_string()),
                    ("IMS_ALG".to_owned(), server.alg.name().to_owned()),
                    ("IMS_EALG".to_owned(), server.ealg.name().to_owned()),
                    ("IMS_CK".to_owned(), hex::encode(ck.expose())),
                    ("IMS_IK".to_owned(), hex::encode(ik.expose())),
                ];
                run_hook(path, "add", &env)?;
                InstalledSas::Hook(path.clone(), env)
            }
        };
        let pcscf_ps = SocketAddr::new(pcscf_ip, server.port_s);
        tracing::info!(%pcscf_ps, spi_uc = sec.offer.spi_c, spi_ps = server.spi_s, "IPsec SAs up");
        let installed = Step::SasInstalled {
            port_uc: sec.offer.port_c,
            port_us: sec.offer.port_s,
            port_pc: server.port_c,
            port_ps: server.port_s,
            spi_uc: sec.offer.spi_c,
            spi_us: sec.offer.spi_s,
            spi_pc: server.spi_c,
            spi_ps: server.spi_s,
        };
        sec.up = Some(SecUp {
            server_value: server.raw.clone(),
            pcscf_ps,
            sas,
        });
        self.step(installed);
        Ok(())
    }

    /// The Authorization value answering a challenge; the RES used (hex), and whether it is a
    /// resynchronisation.
    #[allow(clippy::type_complexity)]
    fn answer(
        &mut self,
        www: &str,
    ) -> Result<(String, Option<String>, bool, Option<(Ck, Ik)>), UeError> {
        let ch = Challenge::parse(www).map_err(UeError::Challenge)?;
        let realm = ch.realm.unwrap_or(&self.cfg.domain).to_owned();
        let nonce = ch.nonce.to_owned();
        let algorithm = ch.algorithm.to_owned();
        self.step(Step::Challenged {
            algorithm: algorithm.clone(),
            realm: realm.clone(),
        });
        let mut verdict = None;
        let cnonce = random_hex(8);
        let uri = format!("sip:{}", self.cfg.domain);
        let answer = |password: &[u8], extra: &str| {
            let mut auth = String::with_capacity(320);
            write_authorization(
                &mut auth,
                &DigestAnswer {
                    username: &self.cfg.impi,
                    realm: &realm,
                    nonce: &nonce,
                    uri: &uri,
                    algorithm: &algorithm,
                    qop: ch.qop,
                    nc: 1,
                    cnonce: &cnonce,
                    extra,
                },
                password,
            )
            .map(|()| auth)
            .map_err(|e| UeError::Challenge(e.to_string()))
        };
        let mut res_hex = None;
        let mut resync = false;
        let mut keys = None;
        let auth = match ch.kind {
            ChallengeKind::Aka => {
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
                        verdict = Some(Step::AutnVerified);
                        res_hex = Some(hex::encode(r.res.expose()));
                        keys = Some((r.ck.clone(), r.ik.clone()));
                        answer(digest_aka::password(&r.res), "")?
                    }
                    Ok(UsimResponse::SyncFailure(auts)) => {
                        verdict = Some(Step::SqnOutOfRange);
                        resync = true;
                        let extra = format!(", auts=\"{}\"", digest_aka::encode_auts(&auts));
                        answer(digest_aka::RESYNC_PASSWORD, &extra)?
                    }
                    Err(_) if ignore => {
                        verdict = Some(Step::MacFailure);
                        let res = m.f2(&n.rand);
                        res_hex = Some(hex::encode(res.expose()));
                        let (ck, ik) = (m.f3(&n.rand), m.f4(&n.rand));
                        keys = Some((ck, ik));
                        answer(digest_aka::password(&res), "")?
                    }
                    Err(_) => {
                        self.step(Step::MacFailure);
                        return Err(UeError::NetworkAuthFailed);
                    }
                }
            }
            ChallengeKind::Md5 => {
                let Credentials::Password(p) = &self.cfg.credentials else {
                    return Err(UeError::Challenge(
                        "MD5 challenge, but this UE has a USIM".into(),
                    ));
                };
                answer(p.as_bytes(), "")?
            }
        };
        if let Some(v) = verdict {
            self.step(v);
        }
        Ok((auth, res_hex, resync, keys))
    }
}

/// What the UE and the swarm ([`swarm`]) put in a REGISTER.
pub(crate) struct RegisterText<'a> {
    /// Home domain (Request-URI `sip:<domain>`).
    pub domain: &'a str,
    /// Public identity (From/To).
    pub impu: &'a dyn std::fmt::Display,
    /// The Contact's user part.
    pub user: &'a dyn std::fmt::Display,
    /// `UDP` or `TCP` (Via).
    pub proto: &'a str,
    /// `""` or `";transport=tcp"` (Contact).
    pub tp: &'a str,
    /// Via sent-by and Contact host:port.
    pub me: SocketAddr,
    /// Call-ID (also the first part of the branch).
    pub call_id: &'a dyn std::fmt::Display,
    /// The branch's counter: `z9hG4bK<call-id>.<branch>`.
    pub branch: u64,
    /// From tag.
    pub tag: &'a dyn std::fmt::Display,
    /// CSeq number.
    pub cseq: u32,
    /// Expires (and the Contact's `expires`).
    pub expires: u32,
    /// Extra header lines, each ending in CRLF (sec-agree), or empty.
    pub security: &'a str,
    /// The Authorization value.
    pub authorization: &'a str,
}

/// Appends a REGISTER's text to `out`.
pub(crate) fn write_register(out: &mut String, r: &RegisterText<'_>) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(
        out,
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
         {security}\
         Authorization: {authorization}\r\n\
         User-Agent: ims-ue\r\n\
         Content-Length: 0\r\n\r\n",
        domain = r.domain,
        proto = r.proto,
        me = r.me,
        call = r.call_id,
        b = r.branch,
        impu = r.impu,
        tag = r.tag,
        cseq = r.cseq,
        user = r.user,
        tp = r.tp,
        expires = r.expires,
        security = r.security,
        authorization = r.authorization,
    );
}

/// Appends the Authorization of a first REGISTER (TS 24.229 §5.1.1.2.1: the private
/// identity, an empty nonce and response).
pub(crate) fn write_initial_authorization(
    out: &mut String,
    impi: &dyn std::fmt::Display,
    domain: &str,
) {
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "Digest username=\"{impi}\", realm=\"{domain}\", uri=\"sip:{domain}\", nonce=\"\", response=\"\""
    );
}

/// Which password a challenge asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChallengeKind {
    /// `AKAv1-MD5`: RES.
    Aka,
    /// `MD5` (or no algorithm): the user's password.
    Md5,
}

/// A Digest challenge (WWW-Authenticate or Proxy-Authenticate), as a UE reads it.
pub(crate) struct Challenge<'a> {
    pub nonce: &'a str,
    pub realm: Option<&'a str>,
    /// As written (echoed in the answer).
    pub algorithm: &'a str,
    pub kind: ChallengeKind,
    /// `auth` when offered, else `auth-int` when offered, else none.
    pub qop: Option<Qop>,
}

impl<'a> Challenge<'a> {
    /// Reads a challenge; the error names what is wrong.
    pub(crate) fn parse(www: &'a str) -> Result<Self, String> {
        let a = Auth::parse(www).map_err(|e| e.to_string())?;
        let unquote = |v: &'a str| v.trim_matches('"');
        let nonce = a.nonce().map(unquote).ok_or("no nonce")?;
        let realm = a.realm().map(unquote);
        let algorithm = a.algorithm().map_or("MD5", unquote);
        let kind = if algorithm.eq_ignore_ascii_case(digest_aka::ALGORITHM) {
            ChallengeKind::Aka
        } else if algorithm.eq_ignore_ascii_case("MD5") {
            ChallengeKind::Md5
        } else {
            return Err(format!("algorithm {algorithm} is not supported"));
        };
        let offered = |q: &str| {
            a.qop()
                .map(unquote)
                .is_some_and(|v| v.split(',').any(|x| x.trim() == q))
        };
        let qop = if offered("auth") {
            Some(Qop::Auth)
        } else if offered("auth-int") {
            Some(Qop::AuthInt)
        } else {
            None
        };
        Ok(Self {
            nonce,
            realm,
            algorithm,
            kind,
            qop,
        })
    }
}

/// The parameters of an answer to a Digest challenge.
pub(crate) struct DigestAnswer<'a> {
    pub username: &'a dyn std::fmt::Display,
    pub realm: &'a str,
    pub nonce: &'a str,
    pub uri: &'a str,
    pub algorithm: &'a str,
    pub qop: Option<Qop>,
    /// The nonce count (sent as 8 hex digits with a qop).
    pub nc: u32,
    pub cnonce: &'a str,
    /// Parameters appended as they are (`, auts="..."`), or empty.
    pub extra: &'a str,
}

/// Appends the Authorization answering a challenge with `password` (RES for AKA, the empty
/// password for a resynchronisation, the user's password for MD5).
pub(crate) fn write_authorization(
    out: &mut String,
    a: &DigestAnswer<'_>,
    password: &[u8],
) -> Result<(), ims_aka::AkaError> {
    use std::fmt::Write as _;
    let start = out.len();
    // The username as text once (it is hashed and sent).
    let _ = write!(out, "{}", a.username);
    let username = out[start..].to_owned();
    out.truncate(start);
    let mut nc = [0u8; 8];
    let _ = hex::encode_to_slice(a.nc.to_be_bytes(), &mut nc);
    let nc = std::str::from_utf8(&nc).unwrap_or("00000001");
    let params = DigestParams {
        username: &username,
        realm: a.realm,
        nonce: a.nonce,
        uri: a.uri,
        qop: a.qop,
        nc: Some(nc),
        cnonce: Some(a.cnonce),
        method: "REGISTER",
        body: b"",
    };
    let response = params.response_with_password(password)?;
    let _ = write!(
        out,
        "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{response}\", algorithm={}",
        a.realm, a.nonce, a.uri, a.algorithm
    );
    if let Some(q) = a.qop {
        let _ = write!(
            out,
            ", qop={}, nc={nc}, cnonce=\"{}\"",
            q.as_str(),
            a.cnonce
        );
    }
    out.push_str(a.extra);
    Ok(())
}

/// The `state` of the first `<registration>` of a reginfo document (the body of a NOTIFY
/// from the network; `None` when it has none or is not UTF-8).
pub fn registration_state(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let reg = &text[text.find("<registration")?..];
    let end = reg.find('>')?;
    let attrs = &reg[..end];
    let v = &attrs[attrs.find(" state=\"")? + 8..];
    Some(v[..v.find('"')?].to_owned())
}

/// Removes installed SAs (netlink, or the hook's `del`).
fn remove_sas(sas: InstalledSas) -> Result<(), UeError> {
    match sas {
        InstalledSas::Netlink(b) => b.0.remove(&b.1).map_err(|e| UeError::Ipsec(e.to_string())),
        InstalledSas::Hook(path, env) => run_hook(&path, "del", &env),
    }
}

fn run_hook(path: &PathBuf, verb: &str, env: &[(String, String)]) -> Result<(), UeError> {
    let out = std::process::Command::new(path)
        .arg(verb)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .map_err(|e| UeError::Ipsec(format!("cannot run {}: {e}", path.display())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(UeError::Ipsec(format!(
            "{} {verb} failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
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
            ipsec: None,
        };
        assert!(matches!(Ue::start(cfg).await, Err(UeError::Sqn(..))));
    }

    /// Issue #16: over UDP a REGISTER the network never saw is sent again by Timer E (after
    /// T1, 500 ms), byte for byte, and the answer to the copy ends the transaction.
    #[tokio::test]
    async fn a_lost_register_is_retransmitted_by_timer_e() {
        let pcscf = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        pcscf
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let cfg = UeConfig {
            impi: "a@hims.net".into(),
            impu: "sip:a@hims.net".into(),
            domain: "hims.net".into(),
            pcscf: pcscf.local_addr().unwrap(),
            transport: Transport::Udp,
            local: "127.0.0.1:0".parse().unwrap(),
            credentials: Credentials::Password("secret".into()),
            timeout: Duration::from_secs(4),
            ipsec: None,
        };
        let network = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let (n, _) = pcscf.recv_from(&mut buf).unwrap();
            let first = buf[..n].to_vec();
            let at = std::time::Instant::now();
            // Dropped; the copy comes after T1.
            let (n, from) = pcscf.recv_from(&mut buf).unwrap();
            let gap = at.elapsed();
            assert_eq!(
                first,
                buf[..n].to_vec(),
                "the retransmission is the same request"
            );
            let req = Message::parse(Bytes::copy_from_slice(&buf[..n])).unwrap();
            let no = ims_sip::response_to(&req, 403, "Forbidden", Some("t1")).unwrap();
            pcscf.send_to(&no.to_bytes(), from).unwrap();
            gap
        });
        let mut ue = Ue::start(cfg).await.unwrap();
        let r = ue.register(600).await;
        assert!(!matches!(r, Err(UeError::Timeout(_))), "{r:?}");
        let gap = network.join().unwrap();
        assert!(
            gap >= Duration::from_millis(400),
            "retransmitted after {gap:?}"
        );
    }
}

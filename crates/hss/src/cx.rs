//! The HSS side of Cx (TS 29.228 §6, TS 29.229): one request in, one answer out. The
//! transport (TCP, the RFC 6733 peer state machine, the allow-list) lives in [`crate::server`];
//! this module only turns a UAR, MAR, SAR or LIR into its answer, on the subscribers in memory
//! ([`crate::subscribers`]: loaded from the store once, changes written through in batches).
//!
//! - Strict on input: the codec refuses a request without a mandatory AVP (5005 +
//!   Failed-AVP), with a wrong value (5004) or a bad header (3008, E bit), and the answer
//!   says so. An unknown command gets 3001, another application 3007.
//! - A request whose Destination-Realm is not our realm gets 3003 DIAMETER_REALM_NOT_SERVED
//!   (E bit; RFC 6733 §6.1.4: it is not ours to process, and we relay nothing), its
//!   Error-Message naming that realm: a CSCF configured for another network is told so at
//!   once instead of being served as if it were ours.
//! - UAR: 5001 unknown user, 5002 identities don't match, 5003 (base) barred, 5004 roaming not
//!   allowed (the visited network compared without the quotes of a quoted-string, as
//!   Kamailio's I-CSCF sends it); DE_REGISTRATION answers the serving S-CSCF or 5003 (identity not registered);
//!   REGISTRATION answers 2002 SUBSEQUENT with Server-Name or 2001 FIRST with
//!   Server-Capabilities; REGISTRATION_AND_CAPABILITIES always 2001 with capabilities.
//! - MAR: Digest-AKAv1-MD5 vectors (RAND from the system CSPRNG via ring), as many as asked up
//!   to the configured cap; their SQNs come from a block reserved in the store (one atomic
//!   UPDATE per `sqn_block` vectors) before any is handed out, so a crash can never hand out
//!   an SQN twice. A SIP-Authorization of
//!   RAND‖AUTS resynchronises (MAC-S checked, SQN_MS adopted). SIP Digest answers the stored
//!   HA1. "Unknown" means the subscriber's own scheme; any other mismatch is 5006. The asking
//!   S-CSCF is recorded while the user is not registered.
//! - SAR: every Server-Assignment-Type; the S-CSCF name is stored or cleared, the implicit
//!   registration set changes state together, and User-Data is the TS 29.228 IMSSubscription
//!   XML unless User-Data-Already-Available says the S-CSCF has it. Deregistering an identity
//!   that is not registered succeeds (idempotent); so does RE_REGISTRATION of one, taken as a
//!   registration (Kamailio's S-CSCF sends it for a UE that registers again soon after its
//!   deregistration).
//! - LIR (§6.1.4.1): the S-CSCF stored for the identity (registered, unregistered, or kept
//!   after a deregistration or by a MAR) with 2001; with none, 2003 UNREGISTERED_SERVICE with
//!   Server-Capabilities when the identity has services related to the unregistered state
//!   (its profile's iFCs, read once by [`crate::ifc`]) or the LIR carries
//!   Originating-Request, else 5003 DIAMETER_ERROR_IDENTITY_NOT_REGISTERED (the I-CSCF answers
//!   `480`: no S-CSCF is chosen, and no SAR made, for a user nothing can serve).
//! - The last authentication of each IMPI is recorded ([`AuthOutcome`]): a vector handed out
//!   (challenged), a resync (or its refusal), and the S-CSCF's verdict by SAR: REGISTRATION
//!   or RE_REGISTRATION after a challenge (success), AUTHENTICATION_FAILURE,
//!   AUTHENTICATION_TIMEOUT.

use std::sync::Arc;

use ims_aka::{Amf, AuthVector, Milenage, Rand, Sqn, SqnScheme, vector};
use ims_diameter::cx::{
    Lia, Lir, Maa, Mar, Saa, Sar, ServerCapabilities, SipAuthDataItem, SipDigestAuthenticate, Uaa,
    Uar,
};
use ims_diameter::dict::{
    self, ServerAssignmentType as Sat, UserAuthorizationType as Uat, UserDataAlreadyAvailable,
    experimental_result_code as erc, result_code as rc,
};
use ims_diameter::{AnswerResult, Error as CodecError, Header, Message, MessageBuilder};
use ims_store::{CapabilitySet, Credentials, RegState, ScscfAssignment, StoreError};

use crate::subscribers::{self, AuthOutcome, Subscribers};
use ring::rand::{SecureRandom, SystemRandom};

/// Authentication scheme names on Cx (TS 29.229 §6.3.2).
pub const SCHEME_AKA: &str = "Digest-AKAv1-MD5";
/// SIP Digest (MD5) as TS 29.229 names it.
pub const SCHEME_DIGEST: &str = "SIP Digest";
/// "Unknown": the subscriber's own scheme.
pub const SCHEME_UNKNOWN: &str = "Unknown";

/// What the Cx handler needs to know about this HSS.
#[derive(Debug, Clone)]
pub struct CxConfig {
    /// Our Origin-Host.
    pub origin_host: String,
    /// Our Origin-Realm.
    pub origin_realm: String,
    /// The home network (always allowed as a visited network).
    pub home_network: String,
    /// Most vectors handed out in one MAA.
    pub max_auth_items: u32,
    /// IND bits of the SQN (TS 33.102 Annex C; 5 by default).
    pub sqn_ind_bits: u8,
    /// Capabilities answered for subscribers without a capability set of their own.
    pub default_capabilities: CapabilitySet,
}

/// Turns Cx requests into answers on the subscribers.
#[derive(Clone)]
pub struct CxHandler {
    subs: Arc<Subscribers>,
    cfg: Arc<CxConfig>,
    rng: SystemRandom,
    scheme: SqnScheme,
    /// Unit tests only: every vector uses this RAND (TS 35.208 conformance).
    #[cfg(test)]
    fixed_rand: Option<[u8; 16]>,
}

/// What a request came to: the answer and, for metrics and logs, its command and result.
#[derive(Debug)]
pub struct Outcome {
    /// The encoded answer (empty when the request was itself an answer: nothing to send).
    pub answer: Vec<u8>,
    /// Command code of the request.
    pub command: u32,
    /// The answer's Result-Code or Experimental-Result-Code.
    pub result: u32,
    /// A resynchronisation happened (MAR with AUTS).
    pub resync: bool,
}

/// A failure inside the HSS, answered with DIAMETER_UNABLE_TO_COMPLY (5012).
struct Internal(String);

impl From<StoreError> for Internal {
    fn from(e: StoreError) -> Self {
        Internal(format!("store: {e}"))
    }
}

impl From<subscribers::Error> for Internal {
    fn from(e: subscribers::Error) -> Self {
        Internal(e.to_string())
    }
}

type Handled = Result<(Vec<u8>, AnswerResult, bool), Internal>;

impl CxHandler {
    /// A handler on the subscribers in memory.
    pub fn new(subs: Arc<Subscribers>, cfg: CxConfig) -> Result<Self, String> {
        let scheme = SqnScheme::new(cfg.sqn_ind_bits)
            .map_err(|e| format!("sqn_ind_bits {}: {e}", cfg.sqn_ind_bits))?;
        if cfg.max_auth_items == 0 {
            return Err("max_auth_items must be at least 1".into());
        }
        Ok(Self {
            subs,
            cfg: Arc::new(cfg),
            rng: SystemRandom::new(),
            scheme,
            #[cfg(test)]
            fixed_rand: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CxConfig {
        &self.cfg
    }

    /// Handles one whole Cx request (`bytes` is exactly one message).
    pub async fn handle(&self, bytes: &[u8]) -> Outcome {
        let msg = match Message::parse(bytes) {
            Ok(m) => m,
            Err(e) => return self.error_outcome(bytes, &e),
        };
        let command = msg.command_code();
        if !msg.is_request() {
            return Outcome {
                answer: Vec::new(),
                command,
                result: 0,
                resync: false,
            };
        }
        if msg.application_id() != dict::APP_CX {
            let e = CodecError::ApplicationUnsupported(msg.application_id());
            return self.error_outcome(bytes, &e);
        }
        if let Some(refused) = self.realm_not_served(&msg) {
            return refused;
        }
        let handled = match command {
            dict::command::USER_AUTHORIZATION => match Uar::decode(&msg) {
                Ok(r) => self.uar(&r).await,
                Err(e) => return self.error_outcome(bytes, &e),
            },
            dict::command::MULTIMEDIA_AUTH => match Mar::decode(&msg) {
                Ok(r) => self.mar(&r).await,
                Err(e) => return self.error_outcome(bytes, &e),
            },
            dict::command::SERVER_ASSIGNMENT => match Sar::decode(&msg) {
                Ok(r) => self.sar(&r).await,
                Err(e) => return self.error_outcome(bytes, &e),
            },
            dict::command::LOCATION_INFO => match Lir::decode(&msg) {
                Ok(r) => self.lir(&r).await,
                Err(e) => return self.error_outcome(bytes, &e),
            },
            other => {
                let e = CodecError::CommandUnsupported {
                    code: other,
                    request: true,
                };
                return self.error_outcome(bytes, &e);
            }
        };
        match handled {
            Ok((answer, result, resync)) => Outcome {
                answer,
                command,
                result: result.code(),
                resync,
            },
            Err(Internal(why)) => {
                tracing::error!(command, %why, "Cx request failed inside the HSS: answering 5012");
                let answer = self.generic_answer(
                    &msg,
                    AnswerResult::ResultCode(rc::UNABLE_TO_COMPLY),
                    Some("internal error"),
                    None,
                );
                Outcome {
                    answer,
                    command,
                    result: rc::UNABLE_TO_COMPLY,
                    resync: false,
                }
            }
        }
    }

    // ----- UAR -----

    async fn uar(&self, r: &Uar<'_>) -> Handled {
        let base = |res| {
            r.base
                .answer(res, &self.cfg.origin_host, &self.cfg.origin_realm)
        };
        let answer = |res, server_name: Option<&str>, caps: Option<ServerCapabilities<'_>>| {
            let a = Uaa {
                base: base(res),
                server_name,
                server_capabilities: caps,
            };
            encode(|out| a.encode(out)).map(|v| (v, res, false))
        };
        if let Err(res) = self
            .identity_checks(Some(r.user_name), r.public_identity)
            .await?
        {
            tracing::info!(
                impi = r.user_name,
                impu = r.public_identity,
                result = res.code(),
                "UAR refused"
            );
            return answer(res, None, None);
        }
        let vni = visited_network(r.visited_network_identifier);
        if !self
            .subs
            .roaming_allowed(r.public_identity, &vni, &self.cfg.home_network)
            .await?
        {
            tracing::info!(impu = r.public_identity, visited = %vni, "UAR: roaming not allowed");
            return answer(
                AnswerResult::experimental(erc::ERROR_ROAMING_NOT_ALLOWED),
                None,
                None,
            );
        }
        let pi = self.subs.public_identity(r.public_identity).await?;
        let reg_state = pi.map_or(0, |p| p.reg_state);
        let assigned = self.subs.scscf_for(r.public_identity).await?;
        let caps = self.capabilities(r.public_identity).await?;
        match r.authorization_type.unwrap_or(Uat::Registration) {
            Uat::DeRegistration => match assigned {
                Some(a) if reg_state != RegState::NotRegistered as i64 => {
                    answer(AnswerResult::SUCCESS, Some(&a.server_name), None)
                }
                _ => answer(
                    AnswerResult::experimental(erc::ERROR_IDENTITY_NOT_REGISTERED),
                    None,
                    None,
                ),
            },
            Uat::RegistrationAndCapabilities => answer(
                AnswerResult::experimental(erc::FIRST_REGISTRATION),
                None,
                Some(caps_view(&caps)),
            ),
            Uat::Registration => match assigned {
                Some(a) => answer(
                    AnswerResult::experimental(erc::SUBSEQUENT_REGISTRATION),
                    Some(&a.server_name),
                    None,
                ),
                None => answer(
                    AnswerResult::experimental(erc::FIRST_REGISTRATION),
                    None,
                    Some(caps_view(&caps)),
                ),
            },
        }
    }

    /// User unknown (5001), identities don't match (5002), barred (5003 base); on success the
    /// credentials read on the way (when an IMPI was given).
    async fn identity_checks(
        &self,
        impi: Option<&str>,
        impu: &str,
    ) -> Result<Result<Option<Credentials>, AnswerResult>, Internal> {
        let Some(pi) = self.subs.public_identity(impu).await? else {
            return Ok(Err(AnswerResult::experimental(erc::ERROR_USER_UNKNOWN)));
        };
        let mut creds = None;
        if let Some(impi) = impi {
            creds = self.subs.credentials(impi).await?;
            if creds.is_none() {
                return Ok(Err(AnswerResult::experimental(erc::ERROR_USER_UNKNOWN)));
            }
            if !self.subs.impi_has_impu(impi, impu).await? {
                return Ok(Err(AnswerResult::experimental(
                    erc::ERROR_IDENTITIES_DONT_MATCH,
                )));
            }
        }
        if pi.barred {
            return Ok(Err(AnswerResult::ResultCode(rc::AUTHORIZATION_REJECTED)));
        }
        Ok(Ok(creds))
    }

    async fn capabilities(&self, impu: &str) -> Result<CapabilitySet, Internal> {
        Ok(self
            .subs
            .capabilities_for(impu)
            .await?
            .unwrap_or_else(|| self.cfg.default_capabilities.clone()))
    }

    // ----- MAR -----

    async fn mar(&self, r: &Mar<'_>) -> Handled {
        let answer = |res: AnswerResult, items: Vec<SipAuthDataItem<'_>>| {
            let n = u32::try_from(items.len()).unwrap_or(u32::MAX);
            let ok = res.is_success();
            let a = Maa {
                base: r
                    .base
                    .answer(res, &self.cfg.origin_host, &self.cfg.origin_realm),
                user_name: Some(r.user_name),
                public_identity: ok.then_some(r.public_identity),
                number_auth_items: ok.then_some(n),
                auth_data_items: items,
            };
            encode(|out| a.encode(out))
        };
        let creds = match self
            .identity_checks(Some(r.user_name), r.public_identity)
            .await?
        {
            Err(res) => {
                tracing::info!(
                    impi = r.user_name,
                    impu = r.public_identity,
                    result = res.code(),
                    "MAR refused"
                );
                return answer(res, Vec::new()).map(|v| (v, res, false));
            }
            Ok(Some(c)) => c,
            Ok(None) => {
                let res = AnswerResult::experimental(erc::ERROR_USER_UNKNOWN);
                return answer(res, Vec::new()).map(|v| (v, res, false));
            }
        };
        let asked = r
            .auth_data_item
            .authentication_scheme
            .unwrap_or(SCHEME_UNKNOWN);
        let scheme_ok = match &creds {
            Credentials::Aka { .. } => {
                asked.eq_ignore_ascii_case(SCHEME_AKA) || asked.eq_ignore_ascii_case(SCHEME_UNKNOWN)
            }
            Credentials::Digest { .. } => {
                asked.eq_ignore_ascii_case(SCHEME_DIGEST)
                    || asked.eq_ignore_ascii_case("Digest-MD5")
                    || asked.eq_ignore_ascii_case("Digest")
                    || asked.eq_ignore_ascii_case(SCHEME_UNKNOWN)
            }
        };
        if !scheme_ok {
            tracing::info!(
                impi = r.user_name,
                scheme = asked,
                "MAR: authentication scheme not supported for this subscriber"
            );
            let res = AnswerResult::experimental(erc::ERROR_AUTH_SCHEME_NOT_SUPPORTED);
            return answer(res, Vec::new()).map(|v| (v, res, false));
        }
        self.record_scscf(r.public_identity, r.server_name, r.base.origin_host)
            .await?;
        match creds {
            Credentials::Digest { realm, ha1 } => {
                let item = SipAuthDataItem {
                    item_number: Some(1),
                    authentication_scheme: Some(SCHEME_DIGEST),
                    digest: Some(SipDigestAuthenticate {
                        realm: &realm,
                        algorithm: Some("MD5"),
                        qop: "auth",
                        ha1: &ha1,
                        extra: Vec::new(),
                    }),
                    ..SipAuthDataItem::default()
                };
                self.subs.record_authentication(
                    r.user_name,
                    AuthOutcome::Challenged,
                    r.server_name,
                );
                let res = AnswerResult::SUCCESS;
                answer(res, vec![item]).map(|v| (v, res, false))
            }
            Credentials::Aka {
                k,
                opc,
                amf,
                sqn: _,
            } => {
                let milenage = match (ims_aka::Key::from_slice(&k), ims_aka::Opc::from_slice(&opc))
                {
                    (Ok(k), Ok(opc)) => Milenage::new(&k, &opc),
                    _ => {
                        return Err(Internal(format!(
                            "stored K/OPc of {} have the wrong length",
                            r.user_name
                        )));
                    }
                };
                let mut resync = false;
                if let Some(auth) = r.auth_data_item.authorization {
                    let Ok((rand, auts)) = vector::parse_resync_authorization(auth) else {
                        return self.invalid_authorization(
                            r,
                            "SIP-Authorization is not RAND||AUTS (30 bytes)",
                        );
                    };
                    let Ok(sqn_ms) = vector::check_auts(&milenage, &rand, &auts) else {
                        tracing::warn!(impi = r.user_name, "MAR resync: AUTS MAC-S check failed");
                        self.subs.record_authentication(
                            r.user_name,
                            AuthOutcome::ResyncRefused,
                            r.server_name,
                        );
                        return self.invalid_authorization(r, "AUTS MAC-S check failed");
                    };
                    // Adopt SQN_MS: the next fresh vector follows it (TS 33.102 C.3.4).
                    let next = self.scheme.after_resync(sqn_ms);
                    let step = 1u64 << self.scheme.ind_bits();
                    let base =
                        (next.value() + ims_store::SQN_MODULUS - step) % ims_store::SQN_MODULUS;
                    self.subs.set_sqn(r.user_name, base).await?;
                    tracing::info!(
                        impi = r.user_name,
                        sqn_ms = sqn_ms.value(),
                        "MAR: SQN resynchronised from AUTS"
                    );
                    resync = true;
                }
                let n = r.number_auth_items.clamp(1, self.cfg.max_auth_items);
                let step = 1u64 << self.scheme.ind_bits();
                // Reserve the SQNs first (one atomic UPDATE), then build the vectors.
                let last = self
                    .subs
                    .take_sqns(r.user_name, u64::from(n), step)
                    .await?
                    .ok_or_else(|| Internal(format!("{} has no AKA SQN", r.user_name)))?;
                let amf = Amf::new(amf);
                let mut vectors = Vec::with_capacity(n as usize);
                for i in 0..u64::from(n) {
                    let back = step * (u64::from(n) - 1 - i);
                    let value = (last + ims_store::SQN_MODULUS - back) % ims_store::SQN_MODULUS;
                    let sqn = Sqn::new(value).map_err(|e| Internal(format!("SQN: {e}")))?;
                    let rand = self.random_rand()?;
                    vectors.push(AuthVector::generate(&milenage, Rand::new(rand), sqn, amf));
                }
                let auths: Vec<[u8; 32]> =
                    vectors.iter().map(AuthVector::sip_authenticate).collect();
                let items = vectors
                    .iter()
                    .zip(&auths)
                    .enumerate()
                    .map(|(i, (v, a))| SipAuthDataItem {
                        item_number: Some(u32::try_from(i + 1).unwrap_or(u32::MAX)),
                        authentication_scheme: Some(SCHEME_AKA),
                        authenticate: Some(a),
                        authorization: Some(v.xres.expose()),
                        confidentiality_key: Some(v.ck.expose()),
                        integrity_key: Some(v.ik.expose()),
                        ..SipAuthDataItem::default()
                    })
                    .collect();
                tracing::debug!(impi = r.user_name, n, sqn = last, "MAR: vectors handed out");
                let outcome = if resync {
                    AuthOutcome::Resync
                } else {
                    AuthOutcome::Challenged
                };
                self.subs
                    .record_authentication(r.user_name, outcome, r.server_name);
                let res = AnswerResult::SUCCESS;
                answer(res, items).map(|v| (v, res, resync))
            }
        }
    }

    fn random_rand(&self) -> Result<[u8; 16], Internal> {
        #[cfg(test)]
        if let Some(r) = self.fixed_rand {
            return Ok(r);
        }
        let mut rand = [0u8; 16];
        self.rng
            .fill(&mut rand)
            .map_err(|_| Internal("the system RNG failed".into()))?;
        Ok(rand)
    }

    fn invalid_authorization(&self, r: &Mar<'_>, why: &str) -> Handled {
        let res = AnswerResult::ResultCode(rc::INVALID_AVP_VALUE);
        let mut a = Maa {
            base: r
                .base
                .answer(res, &self.cfg.origin_host, &self.cfg.origin_realm),
            user_name: Some(r.user_name),
            public_identity: None,
            number_auth_items: None,
            auth_data_items: Vec::new(),
        };
        a.base.error_message = Some(why);
        a.base.failed_avp = Some(ims_diameter::FailedAvp {
            code: dict::SIP_AUTHORIZATION.code,
            flags: dict::SIP_AUTHORIZATION.flags,
            vendor_id: dict::SIP_AUTHORIZATION.vendor(),
            data: r.auth_data_item.authorization.unwrap_or_default().to_vec(),
        });
        encode(|out| a.encode(out)).map(|v| (v, res, false))
    }

    /// MAR: remember which S-CSCF asked while the user is not registered (TS 29.228 §6.3).
    async fn record_scscf(
        &self,
        impu: &str,
        server_name: &str,
        host: &str,
    ) -> Result<(), Internal> {
        self.subs
            .record_scscf_unless_registered(
                impu,
                &ScscfAssignment {
                    server_name: server_name.to_owned(),
                    diameter_host: Some(host.to_owned()),
                },
            )
            .await?;
        Ok(())
    }

    // ----- SAR -----

    async fn sar(&self, r: &Sar<'_>) -> Handled {
        let answer = |res: AnswerResult, user_data: Option<&[u8]>, server_name: Option<&str>| {
            let a = Saa {
                base: r
                    .base
                    .answer(res, &self.cfg.origin_host, &self.cfg.origin_realm),
                user_name: r.user_name,
                user_data,
                server_name,
            };
            encode(|out| a.encode(out)).map(|v| (v, res, false))
        };
        // The identity the request is about: the first Public-Identity, else any of the IMPI's.
        let impu = match r.public_identities.first() {
            Some(p) => (*p).to_owned(),
            None => {
                let Some(impi) = r.user_name else {
                    let e = CodecError::MissingAvp(ims_diameter::FailedAvp::missing(
                        &dict::PUBLIC_IDENTITY,
                    ));
                    return Ok((
                        self.decode_error_answer_for(r, &e)?,
                        AnswerResult::ResultCode(e.result_code()),
                        false,
                    ));
                };
                match self.subs.first_impu(impi).await? {
                    Some(p) => p,
                    None => {
                        return answer(
                            AnswerResult::experimental(erc::ERROR_USER_UNKNOWN),
                            None,
                            None,
                        );
                    }
                }
            }
        };
        for p in r
            .public_identities
            .iter()
            .copied()
            .chain(std::iter::once(impu.as_str()))
        {
            if let Err(res) = self.identity_checks(r.user_name, p).await? {
                // Barring does not stop a deregistration.
                let dereg = matches!(
                    r.assignment_type,
                    Sat::TimeoutDeregistration
                        | Sat::UserDeregistration
                        | Sat::TimeoutDeregistrationStoreServerName
                        | Sat::UserDeregistrationStoreServerName
                        | Sat::AdministrativeDeregistration
                        | Sat::DeregistrationTooMuchData
                );
                if !(dereg && res == AnswerResult::ResultCode(rc::AUTHORIZATION_REJECTED)) {
                    tracing::info!(impu = p, result = res.code(), "SAR refused");
                    return answer(res, None, None);
                }
            }
        }
        let pi = self.subs.public_identity(&impu).await?;
        let reg_state = pi.map_or(0, |p| p.reg_state);
        let assigned = self.subs.scscf_for(&impu).await?;
        let me = ScscfAssignment {
            server_name: r.server_name.to_owned(),
            diameter_host: Some(r.base.origin_host.to_owned()),
        };
        let impi = match r.user_name {
            Some(i) => Some(i.to_owned()),
            None => self.subs.impi_of(&impu).await?,
        };
        let wants_data =
            r.user_data_already_available == UserDataAlreadyAvailable::UserDataNotAvailable;
        let verdict = match r.assignment_type {
            Sat::Registration | Sat::ReRegistration => Some(AuthOutcome::Success),
            Sat::AuthenticationFailure => Some(AuthOutcome::Failure),
            Sat::AuthenticationTimeout => Some(AuthOutcome::Timeout),
            _ => None,
        };
        if let (Some(outcome), Some(impi)) = (verdict, impi.as_deref()) {
            self.subs
                .record_authentication(impi, outcome, r.server_name);
        }
        match r.assignment_type {
            // RE_REGISTRATION of an identity that is not registered is taken as a
            // registration, as FHoSS and Open5GS's HSS do: Kamailio's S-CSCF (5.6) sends
            // RE_REGISTRATION for a UE that registers again while its usrloc record of the
            // previous registration lingers, and a refusal there fails that REGISTER (500).
            Sat::Registration | Sat::ReRegistration => {
                self.subs.set_scscf(&impu, Some(&me)).await?;
                self.subs.set_reg_state(&impu, RegState::Registered).await?;
                let data = if wants_data {
                    self.user_data(impi.as_deref()).await?
                } else {
                    None
                };
                answer(
                    AnswerResult::SUCCESS,
                    data.as_deref().map(str::as_bytes),
                    None,
                )
            }
            Sat::UnregisteredUser => {
                if let Some(a) = &assigned
                    && reg_state == RegState::Registered as i64
                    && a.server_name != r.server_name
                {
                    return answer(
                        AnswerResult::experimental(erc::ERROR_IDENTITY_ALREADY_REGISTERED),
                        None,
                        Some(&a.server_name),
                    );
                }
                self.subs.set_scscf(&impu, Some(&me)).await?;
                self.subs
                    .set_reg_state(&impu, RegState::Unregistered)
                    .await?;
                let data = if wants_data {
                    self.user_data(impi.as_deref()).await?
                } else {
                    None
                };
                answer(
                    AnswerResult::SUCCESS,
                    data.as_deref().map(str::as_bytes),
                    None,
                )
            }
            Sat::TimeoutDeregistration
            | Sat::UserDeregistration
            | Sat::AdministrativeDeregistration
            | Sat::DeregistrationTooMuchData => {
                self.subs
                    .set_reg_state(&impu, RegState::NotRegistered)
                    .await?;
                self.subs.set_scscf(&impu, None).await?;
                answer(AnswerResult::SUCCESS, None, None)
            }
            Sat::TimeoutDeregistrationStoreServerName | Sat::UserDeregistrationStoreServerName => {
                self.subs
                    .set_reg_state(&impu, RegState::NotRegistered)
                    .await?;
                answer(AnswerResult::SUCCESS, None, None)
            }
            Sat::AuthenticationFailure | Sat::AuthenticationTimeout => {
                // The user never registered: forget the S-CSCF MAR recorded, unless registered.
                if reg_state != RegState::Registered as i64 {
                    self.subs.set_scscf(&impu, None).await?;
                    self.subs
                        .set_reg_state(&impu, RegState::NotRegistered)
                        .await?;
                }
                answer(AnswerResult::SUCCESS, None, None)
            }
            Sat::NoAssignment | Sat::AaaUserDataRequest => {
                if let Some(a) = &assigned
                    && a.server_name != r.server_name
                {
                    return answer(
                        AnswerResult::ResultCode(rc::UNABLE_TO_COMPLY),
                        None,
                        Some(&a.server_name),
                    );
                }
                let data = self.user_data(impi.as_deref()).await?;
                answer(
                    AnswerResult::SUCCESS,
                    data.as_deref().map(str::as_bytes),
                    None,
                )
            }
            Sat::PgwUpdate | Sat::Restoration => {
                let data = if wants_data {
                    self.user_data(impi.as_deref()).await?
                } else {
                    None
                };
                answer(
                    AnswerResult::SUCCESS,
                    data.as_deref().map(str::as_bytes),
                    None,
                )
            }
        }
    }

    /// The TS 29.228 User-Data of the subscription of `impi`.
    async fn user_data(&self, impi: Option<&str>) -> Result<Option<String>, Internal> {
        match impi {
            Some(i) => Ok(self.subs.profile(i).await?.map(|p| user_data_xml(&p))),
            None => Ok(None),
        }
    }

    fn decode_error_answer_for(&self, r: &Sar<'_>, e: &CodecError) -> Result<Vec<u8>, Internal> {
        let res = AnswerResult::ResultCode(e.result_code());
        let mut a = Saa {
            base: r
                .base
                .answer(res, &self.cfg.origin_host, &self.cfg.origin_realm),
            user_name: r.user_name,
            user_data: None,
            server_name: None,
        };
        a.base.failed_avp = e.failed_avp().cloned();
        encode(|out| a.encode(out))
    }

    // ----- LIR -----

    async fn lir(&self, r: &Lir<'_>) -> Handled {
        let answer =
            |res: AnswerResult, server_name: Option<&str>, caps: Option<ServerCapabilities<'_>>| {
                let a = Lia {
                    base: r
                        .base
                        .answer(res, &self.cfg.origin_host, &self.cfg.origin_realm),
                    server_name,
                    server_capabilities: caps,
                };
                encode(|out| a.encode(out)).map(|v| (v, res, false))
            };
        if let Err(res) = self.identity_checks(None, r.public_identity).await? {
            return answer(res, None, None);
        }
        if let Some(a) = self.subs.scscf_for(r.public_identity).await? {
            return answer(AnswerResult::SUCCESS, Some(&a.server_name), None);
        }
        // No S-CSCF: an S-CSCF is to be chosen only to serve the identity unregistered, which
        // needs services for that state, or a request it originates (TS 29.228 §6.1.4.1).
        let originating = r.originating_request.is_some();
        if originating || self.subs.unregistered_services(r.public_identity).await? {
            let caps = self.capabilities(r.public_identity).await?;
            return answer(
                AnswerResult::experimental(erc::UNREGISTERED_SERVICE),
                None,
                Some(caps_view(&caps)),
            );
        }
        tracing::debug!(
            impu = r.public_identity,
            "LIR: not registered, no unregistered-state services: 5003"
        );
        answer(
            AnswerResult::experimental(erc::ERROR_IDENTITY_NOT_REGISTERED),
            None,
            None,
        )
    }

    // ----- errors -----

    /// An answer to a request we could not decode: the codec's Result-Code and Failed-AVP,
    /// the E bit for protocol errors, the request's identifiers and Session-Id.
    /// The answer to a request the HSS has no room for: 3004 DIAMETER_TOO_BUSY (a protocol
    /// error: the E bit, no Cx AVPs), logged at debug level (there may be many).
    pub fn busy(&self, bytes: &[u8]) -> Outcome {
        let command = command_of(bytes);
        tracing::debug!(
            command,
            "Cx request refused: too many waiting on the store (3004)"
        );
        let answer = match Message::parse(bytes) {
            Ok(msg) if msg.is_request() => self.generic_answer(
                &msg,
                AnswerResult::ResultCode(rc::TOO_BUSY),
                Some("too many requests waiting on the store"),
                None,
            ),
            _ => Vec::new(),
        };
        Outcome {
            answer,
            command,
            result: rc::TOO_BUSY,
            resync: false,
        }
    }

    /// 3003 for a request to another realm than ours (see the module docs); `None` when
    /// it is ours, or has no readable Destination-Realm (the decoder refuses that one).
    fn realm_not_served(&self, msg: &Message<'_>) -> Option<Outcome> {
        let realm = msg.find(&dict::DESTINATION_REALM).ok()??.as_utf8().ok()?;
        if realm.eq_ignore_ascii_case(&self.cfg.origin_realm) {
            return None;
        }
        let command = msg.command_code();
        tracing::info!(command, realm, ours = %self.cfg.origin_realm, "Cx request for a realm we do not serve: 3003");
        let why = format!(
            "Destination-Realm {realm} is not served here (this HSS serves {})",
            self.cfg.origin_realm
        );
        Some(Outcome {
            answer: self.generic_answer(
                msg,
                AnswerResult::ResultCode(rc::REALM_NOT_SERVED),
                Some(&why),
                None,
            ),
            command,
            result: rc::REALM_NOT_SERVED,
            resync: false,
        })
    }

    fn error_outcome(&self, bytes: &[u8], e: &CodecError) -> Outcome {
        let command = command_of(bytes);
        tracing::info!(command, result = e.result_code(), error = %e, "Cx request refused");
        let answer = match Message::parse(bytes) {
            Ok(msg) => self.generic_answer(
                &msg,
                AnswerResult::ResultCode(e.result_code()),
                Some(&e.to_string()),
                e.failed_avp(),
            ),
            Err(_) => Vec::new(),
        };
        Outcome {
            answer,
            command,
            result: e.result_code(),
            resync: false,
        }
    }

    fn generic_answer(
        &self,
        msg: &Message<'_>,
        res: AnswerResult,
        error_message: Option<&str>,
        failed: Option<&ims_diameter::FailedAvp>,
    ) -> Vec<u8> {
        let h = msg.header();
        let mut flags = h.flags & ims_diameter::header::flags::P;
        if res.is_protocol_error() {
            flags |= ims_diameter::header::flags::E;
        }
        let hdr = Header {
            length: 0,
            flags,
            command_code: h.command_code,
            application_id: h.application_id,
            hop_by_hop: h.hop_by_hop,
            end_to_end: h.end_to_end,
        };
        let mut out = Vec::with_capacity(256);
        let mut b = MessageBuilder::new(&mut out, &hdr);
        if let Ok(Some(sid)) = msg.session_id() {
            b.utf8(&dict::SESSION_ID, sid);
        }
        res.encode(&mut b);
        b.utf8(&dict::ORIGIN_HOST, &self.cfg.origin_host)
            .utf8(&dict::ORIGIN_REALM, &self.cfg.origin_realm);
        if let Some(m) = error_message {
            b.utf8(&dict::ERROR_MESSAGE, m);
        }
        if let Some(f) = failed {
            b.failed_avp(f);
        }
        match b.finish() {
            Ok(_) => out,
            Err(_) => Vec::new(),
        }
    }
}

fn encode(f: impl FnOnce(&mut Vec<u8>) -> Result<usize, CodecError>) -> Result<Vec<u8>, Internal> {
    let mut out = Vec::with_capacity(512);
    f(&mut out).map_err(|e| Internal(format!("encoding the answer: {e}")))?;
    Ok(out)
}

fn caps_view(c: &CapabilitySet) -> ServerCapabilities<'_> {
    ServerCapabilities {
        mandatory: c.mandatory.clone(),
        optional: c.optional.clone(),
        server_names: c.server_names.iter().map(String::as_str).collect(),
    }
}

/// The TS 29.228 Annex D / TS 29.229 User-Data: an IMSSubscription document.
pub fn user_data_xml(p: &ims_store::SubscriptionProfile) -> String {
    let mut x = String::with_capacity(512);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    x.push_str("<IMSSubscription><PrivateID>");
    x.push_str(&xml_escape(&p.impi));
    x.push_str("</PrivateID>");
    for (ifc, ids) in &p.profiles {
        x.push_str("<ServiceProfile>");
        for id in ids {
            x.push_str("<PublicIdentity>");
            if id.barred {
                x.push_str("<BarringIndication>1</BarringIndication>");
            }
            x.push_str("<Identity>");
            x.push_str(&xml_escape(&id.impu));
            x.push_str("</Identity>");
            // Identities of one implicit registration set share a number (TS 29.228 Extension).
            x.push_str("<Extension><IdentityType>0</IdentityType><Extension><Extension><IRS>");
            x.push_str(&id.irs.to_string());
            x.push_str("</IRS></Extension></Extension></Extension>");
            x.push_str("</PublicIdentity>");
        }
        // iFC XML is provisioned verbatim (already XML elements).
        x.push_str(ifc);
        x.push_str("</ServiceProfile>");
    }
    x.push_str("</IMSSubscription>");
    x
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

/// The command code of a message's header (0 when too short to have one), read without
/// parsing the rest: for logs and metrics of requests that are refused.
fn command_of(bytes: &[u8]) -> u32 {
    match bytes.get(5..8) {
        Some(&[a, b, c]) => u32::from_be_bytes([0, a, b, c]),
        _ => 0,
    }
}

/// The visited network a UAR names, as the roaming check compares it: Kamailio's I-CSCF
/// (ims_icscf 5.6) copies the P-Visited-Network-ID header value verbatim into
/// Visited-Network-Identifier, so a P-CSCF's `"vims.net"` (a quoted-string, as TS 24.229
/// allows and ours sends) arrives with its quotes; the quotes are not part of the name.
fn visited_network(raw: &[u8]) -> std::borrow::Cow<'_, str> {
    let raw = raw.trim_ascii();
    let name = match raw {
        [b'"', inner @ .., b'"'] if !inner.iter().any(|&b| b == b'"' || b == b'\\') => inner,
        _ => raw,
    };
    String::from_utf8_lossy(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ims_diameter::cx::RequestBase;
    use ims_store::{NewPublicIdentity, NewSubscriber};
    use zeroize::Zeroizing;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// Kamailio's I-CSCF sends P-Visited-Network-ID's quoted-string as it is: the quotes
    /// are not part of the network's name (issue #19, tests/interop.rs).
    #[test]
    fn visited_network_drops_the_quotes_of_a_quoted_string() {
        assert_eq!(visited_network(b"\"vims.net\""), "vims.net");
        assert_eq!(visited_network(b" \"vims.net\" "), "vims.net");
        assert_eq!(visited_network(b"vims.net"), "vims.net");
        // Not a plain quoted name: left as it is (and then matches no roaming entry).
        assert_eq!(visited_network(b"\"vims\\\"net\""), "\"vims\\\"net\"");
        assert_eq!(visited_network(b"\""), "\"");
        assert_eq!(visited_network(b"\"\""), "");
    }

    /// A UAR from a roaming subscriber whose Visited-Network-Identifier is the quoted
    /// `"vims.net"` (as Kamailio's I-CSCF sends it) is allowed to roam there: 2001 with the
    /// S-CSCF's capabilities or name, not 5004.
    #[tokio::test]
    async fn uar_with_a_quoted_visited_network_may_roam() {
        let store = ims_store::Store::open("sqlite::memory:").await.unwrap();
        store
            .add_subscriber(&NewSubscriber {
                name: "roamer".into(),
                impi: "roamer@hims.net".into(),
                credentials: Credentials::Aka {
                    k: Zeroizing::new(h("465b5ce8b199b49faa5f0a2ee238a6bc")),
                    opc: Zeroizing::new(h("cd63cb71954a9f4e48a5994e37a02baf")),
                    amf: [0x80, 0x00],
                    sqn: 0,
                },
                public_identities: vec![NewPublicIdentity {
                    impu: "sip:roamer@hims.net".into(),
                    barred: false,
                    irs: 0,
                }],
                ifc_xml: String::new(),
                capability_set: None,
                roaming_allowed: vec!["vims.net".into()],
            })
            .await
            .unwrap();
        let handler = CxHandler::new(
            crate::subscribers::Subscribers::start(store.clone(), 1, false),
            CxConfig {
                origin_host: "hss1.hims.net".into(),
                origin_realm: "hims.net".into(),
                home_network: "hims.net".into(),
                max_auth_items: 1,
                sqn_ind_bits: 5,
                default_capabilities: CapabilitySet::default(),
            },
        )
        .unwrap();
        let mut results = Vec::new();
        for vni in [&b"\"vims.net\""[..], b"vims.net", b"\"other.net\""] {
            let uar = Uar {
                base: RequestBase {
                    hop_by_hop: 1,
                    end_to_end: 2,
                    session_id: "icscf1.hims.net;1;1",
                    origin_host: "icscf1.hims.net",
                    origin_realm: "hims.net",
                    destination_realm: "hims.net",
                    ..RequestBase::default()
                },
                user_name: "roamer@hims.net",
                public_identity: "sip:roamer@hims.net",
                visited_network_identifier: vni,
                authorization_type: None,
                uar_flags: None,
            };
            let mut req = Vec::new();
            uar.encode(&mut req).unwrap();
            results.push(handler.handle(&req).await.result);
        }
        assert_eq!(results[0], results[1], "{results:?}");
        assert_ne!(results[0], erc::ERROR_ROAMING_NOT_ALLOWED, "{results:?}");
        assert_eq!(results[2], erc::ERROR_ROAMING_NOT_ALLOWED, "{results:?}");
    }

    /// TS 35.208 test set 1 through a real MAR: the HSS's vector for K, OPc, RAND, SQN and
    /// AMF of the set carries the set's MAC-A (in AUTN), RES (as XRES), CK and IK.
    #[tokio::test]
    async fn mar_vector_matches_ts_35_208_set_1() {
        let store = ims_store::Store::open("sqlite::memory:").await.unwrap();
        store
            .add_subscriber(&NewSubscriber {
                name: "set1".into(),
                impi: "set1@hims.net".into(),
                credentials: Credentials::Aka {
                    k: Zeroizing::new(h("465b5ce8b199b49faa5f0a2ee238a6bc")),
                    opc: Zeroizing::new(h("cd63cb71954a9f4e48a5994e37a02baf")),
                    amf: [0xb9, 0xb9],
                    sqn: 0,
                },
                public_identities: vec![NewPublicIdentity {
                    impu: "sip:set1@hims.net".into(),
                    barred: false,
                    irs: 0,
                }],
                ifc_xml: String::new(),
                capability_set: None,
                roaming_allowed: vec![],
            })
            .await
            .unwrap();
        let sqn = 0xff9b_b4d0_b607u64;
        // The MAR takes the step after the stored SQN (IND 5 bits): start one step below.
        store.set_sqn("set1@hims.net", sqn - 32).await.unwrap();
        let mut handler = CxHandler::new(
            crate::subscribers::Subscribers::start(store.clone(), 1, false),
            CxConfig {
                origin_host: "hss1.hims.net".into(),
                origin_realm: "hims.net".into(),
                home_network: "hims.net".into(),
                max_auth_items: 1,
                sqn_ind_bits: 5,
                default_capabilities: CapabilitySet::default(),
            },
        )
        .unwrap();
        let mut rand = [0u8; 16];
        rand.copy_from_slice(&h("23553cbe9637a89d218ae64dae47bf35"));
        handler.fixed_rand = Some(rand);
        let mar = Mar {
            base: RequestBase {
                hop_by_hop: 1,
                end_to_end: 2,
                session_id: "scscf1.hims.net;1;1",
                origin_host: "scscf1.hims.net",
                origin_realm: "hims.net",
                destination_realm: "hims.net",
                ..RequestBase::default()
            },
            user_name: "set1@hims.net",
            public_identity: "sip:set1@hims.net",
            server_name: "sip:scscf1.hims.net:6060",
            number_auth_items: 1,
            auth_data_item: SipAuthDataItem {
                authentication_scheme: Some(SCHEME_AKA),
                ..SipAuthDataItem::default()
            },
        };
        let mut req = Vec::new();
        mar.encode(&mut req).unwrap();
        let out = handler.handle(&req).await;
        assert_eq!(out.result, 2001);
        let msg = Message::parse(&out.answer).unwrap();
        let maa = Maa::decode(&msg).unwrap();
        let item = &maa.auth_data_items[0];
        let auth = item.authenticate.unwrap();
        assert_eq!(&auth[..16], &rand);
        // AUTN = SQN^AK || AMF || MAC-A; AK = aa689c648370 for set 1.
        let sqn_xor_ak: Vec<u8> = h("ff9bb4d0b607")
            .iter()
            .zip(h("aa689c648370"))
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(&auth[16..22], &sqn_xor_ak[..]);
        assert_eq!(&auth[22..24], &[0xb9, 0xb9]);
        assert_eq!(&auth[24..], &h("4a9ffac354dfafb3")[..]);
        assert_eq!(item.authorization.unwrap(), &h("a54211d5e3ba50bf")[..]);
        assert_eq!(
            item.confidentiality_key.unwrap(),
            &h("b40ba9a3c58b2a05bbf0d987b21bf8cb")[..]
        );
        assert_eq!(
            item.integrity_key.unwrap(),
            &h("f769bcd751044604127672711c6d3441")[..]
        );
    }
}

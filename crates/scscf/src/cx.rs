//! The S-CSCF side of Cx (TS 29.228 §6.1, TS 29.229): MAR and SAR out to the HSS over the
//! [`DiameterClient`], their answers turned into owned values, and every failure mapped to
//! the SIP answer the registrar gives ([`CxFailure::sip_status`]):
//!
//! | Cx outcome | SIP |
//! |---|---|
//! | Experimental 5001 user unknown, 5002 identities don't match, 5003 not registered, 5004 roaming not allowed, 5006 scheme not supported; base 4001, 5003 (barred), 5004 (a bad AUTS) | 403 Forbidden |
//! | the connection to the HSS is down (known at once: killed, restarting, refused, SUSPECT after an unanswered DWR, or lost with the request waiting) | 503 Service Unavailable, with Retry-After |
//! | no answer in time, the client stopped | 504 Server Time-out |
//! | base 3004 DIAMETER_TOO_BUSY | 503 Service Unavailable, with Retry-After |
//! | base 3003 DIAMETER_REALM_NOT_SERVED (our `destination_realm` is not the HSS's; one warning names it) | 500 Server Internal Error |
//! | any other failure, or an answer we cannot use | 500 Server Internal Error |
//!
//! 504 because RFC 3261 §21.5.5 defines it for exactly this ("did not receive a timely
//! response from an external server it accessed"); a connection known to be down is a
//! temporary inability to serve, which 503 with Retry-After says (§21.5.4), so that UEs
//! come back after the HSS does rather than all at once; TS 24.229 §5.4.1 leaves the code to the
//! implementation for an unreachable HSS, and every Cx *answer* that refuses the user is 403.

use ims_aka::{AkaNonce, Autn, Ha1, Rand, Res};
use ims_diameter::cx::{AnswerBase, Maa, Mar, RequestBase, Saa, Sar, SipAuthDataItem};
use ims_diameter::dict::{
    ServerAssignmentType, UserDataAlreadyAvailable, experimental_result_code as erc,
    result_code as rc,
};
use ims_diameter::{AnswerResult, Message, SessionIdGenerator};
use ims_net::diameter::{CxClientConfig, DiameterClient, RequestError};
use ims_net::metrics::{CX_BUCKETS, CxAnswers, CxOutcome, HistogramsBy};
use zeroize::Zeroizing;

/// SIP-Authentication-Scheme values (TS 29.229 §6.3.2).
pub const SCHEME_AKA: &str = "Digest-AKAv1-MD5";
/// Let the HSS pick the subscriber's scheme.
pub const SCHEME_UNKNOWN: &str = "Unknown";

/// Why a Cx exchange did not give us what we asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CxFailure {
    /// No answer (not connected, timeout, client stopped).
    #[error("HSS unreachable: {0}")]
    Unreachable(#[from] RequestError),
    /// The HSS answered with a failure.
    #[error("HSS answered {code} ({})", name.unwrap_or("?"))]
    Refused {
        /// The result.
        result: AnswerResult,
        /// Its numeric code.
        code: u32,
        /// Its name, when known.
        name: Option<&'static str>,
    },
    /// The answer was not something we can use.
    #[error("unusable answer from the HSS: {0}")]
    BadAnswer(String),
}

impl CxFailure {
    fn refused(result: AnswerResult) -> Self {
        CxFailure::Refused {
            result,
            code: result.code(),
            name: result.name(),
        }
    }

    /// The SIP status and reason phrase this failure is answered with (see the module docs).
    pub fn sip_status(&self) -> (u16, String) {
        match self {
            CxFailure::Unreachable(RequestError::NotOpen(_)) => {
                (503, "Service Unavailable (HSS unreachable)".into())
            }
            CxFailure::Unreachable(_) => (504, "Server Time-out (HSS unreachable)".into()),
            CxFailure::Refused { result, name, .. } => {
                let what = name.map_or_else(|| result.code().to_string(), str::to_owned);
                let forbidden = match *result {
                    AnswerResult::Experimental { code, .. } => matches!(
                        code,
                        erc::ERROR_USER_UNKNOWN
                            | erc::ERROR_IDENTITIES_DONT_MATCH
                            | erc::ERROR_IDENTITY_NOT_REGISTERED
                            | erc::ERROR_ROAMING_NOT_ALLOWED
                            | erc::ERROR_AUTH_SCHEME_NOT_SUPPORTED
                    ),
                    AnswerResult::ResultCode(c) => matches!(
                        c,
                        rc::AUTHENTICATION_REJECTED
                            | rc::AUTHORIZATION_REJECTED
                            | rc::INVALID_AVP_VALUE
                    ),
                };
                if forbidden {
                    (403, format!("Forbidden ({what})"))
                } else if *result == AnswerResult::ResultCode(rc::TOO_BUSY) {
                    (503, "Service Unavailable (HSS too busy)".into())
                } else {
                    (500, format!("Server Internal Error (HSS answered {what})"))
                }
            }
            CxFailure::BadAnswer(_) => (
                500,
                "Server Internal Error (bad answer from the HSS)".into(),
            ),
        }
    }
}

/// An authentication vector from an MAA, in the form the registrar keeps.
pub enum Vector {
    /// Digest-AKAv1-MD5.
    Aka {
        /// RAND.
        rand: Rand,
        /// AUTN.
        autn: Autn,
        /// XRES (the digest password).
        xres: Res,
        /// CK and IK as lowercase hex (for the P-CSCF).
        ck: Zeroizing<String>,
        /// IK.
        ik: Zeroizing<String>,
    },
    /// SIP Digest with the HSS's HA1.
    Digest {
        /// Digest-Realm (HA1 was computed with it).
        realm: String,
        /// HA1.
        ha1: Ha1,
        /// Digest-QoP, as the HSS gave it.
        qop: String,
    },
}

impl std::fmt::Debug for Vector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Vector::Aka { .. } => f.write_str("Vector::Aka(..)"),
            Vector::Digest { realm, .. } => write!(f, "Vector::Digest({realm})"),
        }
    }
}

impl Vector {
    /// The AKA nonce, base64(RAND || AUTN).
    pub fn aka_nonce(rand: &Rand, autn: &Autn) -> String {
        AkaNonce::new(*rand, *autn).encode()
    }
}

/// Sends MAR/SAR with our identity.
pub struct CxClient {
    client: DiameterClient,
    cfg: CxClientConfig,
    server_name: String,
    sessions: SessionIdGenerator,
    /// MAA and SAA by result, for `ims_scscf_cx_answers_total` ([`crate::metrics`]).
    answers: CxAnswers<2>,
    /// MAR and SAR round trips, for `ims_scscf_cx_request_seconds`.
    round_trips: HistogramsBy<2>,
}

impl CxClient {
    /// A Cx client over `client`; `server_name` is our SIP URI.
    pub fn new(client: DiameterClient, cfg: CxClientConfig, server_name: String) -> Self {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        let sessions = SessionIdGenerator::new(cfg.origin_host.clone(), boot);
        Self {
            client,
            cfg,
            server_name,
            sessions,
            answers: CxAnswers::new(["MAR", "SAR"]),
            round_trips: HistogramsBy::new("command", ["MAR", "SAR"], &CX_BUCKETS),
        }
    }

    /// Appends `ims_scscf_cx_answers_total` (MAA and SAA by result) and
    /// `ims_scscf_cx_request_seconds` (the MAR and SAR round trips) to `o`.
    pub fn render_metrics(&self, o: &mut String) {
        self.answers.render(o, "ims_scscf");
        let help = "Time from a Cx request sent to its answer, by command.";
        self.round_trips
            .render(o, "ims_scscf_cx_request_seconds", help);
    }

    /// Sends `command` and returns its answer's bytes, observing the round trip of those
    /// answered and counting the requests that get none.
    async fn request(&self, command: &str, req: Vec<u8>) -> Result<Vec<u8>, CxFailure> {
        let sent = std::time::Instant::now();
        match self.client.request(req).await {
            Ok(answer) => {
                self.round_trips.observe(command, sent.elapsed());
                Ok(answer)
            }
            Err(e) => {
                self.answers.count(command, (&e).into());
                Err(CxFailure::Unreachable(e))
            }
        }
    }

    /// `read` (parsing or decoding `command`'s answer), counted as `invalid` when it failed.
    fn readable<T>(&self, command: &str, read: Result<T, CxFailure>) -> Result<T, CxFailure> {
        if read.is_err() {
            self.answers.count(command, CxOutcome::Invalid);
        }
        read
    }

    /// The failure for `command`'s refusing answer; 3003 DIAMETER_REALM_NOT_SERVED (our
    /// `destination_realm` is not the HSS's) is also the one warning naming that realm.
    fn refused(&self, command: &str, answer: &AnswerBase<'_>) -> CxFailure {
        if answer.result == AnswerResult::ResultCode(rc::REALM_NOT_SERVED) {
            self.cfg
                .warn_realm_not_served(command, answer.error_message);
        }
        CxFailure::refused(answer.result)
    }

    /// The Diameter connection.
    pub fn client(&self) -> &DiameterClient {
        &self.client
    }

    /// Our Origin-Host and Origin-Realm.
    pub fn origin(&self) -> (&str, &str) {
        (&self.cfg.origin_host, &self.cfg.origin_realm)
    }

    fn base<'a>(&'a self, session_id: &'a str) -> RequestBase<'a> {
        RequestBase {
            session_id,
            origin_host: &self.cfg.origin_host,
            origin_realm: &self.cfg.origin_realm,
            destination_realm: &self.cfg.destination_realm,
            destination_host: self.cfg.destination_host.as_deref(),
            ..RequestBase::default()
        }
    }

    /// MAR for one vector. `resync` is RAND||AUTS (30 bytes) on a synchronisation failure.
    pub async fn mar(
        &self,
        impi: &str,
        impu: &str,
        resync: Option<&[u8]>,
    ) -> Result<Vector, CxFailure> {
        let sid = self.sessions.next_id();
        let mar = Mar {
            base: self.base(&sid),
            user_name: impi,
            public_identity: impu,
            server_name: &self.server_name,
            number_auth_items: 1,
            auth_data_item: SipAuthDataItem {
                authentication_scheme: Some(if resync.is_some() {
                    SCHEME_AKA
                } else {
                    SCHEME_UNKNOWN
                }),
                authorization: resync,
                ..SipAuthDataItem::default()
            },
        };
        let mut req = Vec::with_capacity(512);
        mar.encode(&mut req)
            .map_err(|e| CxFailure::BadAnswer(format!("encoding the MAR: {e}")))?;
        let answer = self.request("MAR", req).await?;
        let msg = Message::parse(&answer).map_err(|e| CxFailure::BadAnswer(e.to_string()));
        let msg = self.readable("MAR", msg)?;
        let maa = Maa::decode(&msg).map_err(|e| CxFailure::BadAnswer(format!("MAA: {e}")));
        let maa = self.readable("MAR", maa)?;
        self.answers
            .count("MAR", CxOutcome::Answer(maa.base.result));
        if !maa.base.result.is_success() {
            return Err(self.refused("MAR", &maa.base));
        }
        let item = maa
            .auth_data_items
            .first()
            .ok_or_else(|| CxFailure::BadAnswer("MAA without SIP-Auth-Data-Item".into()))?;
        vector_of(item)
    }

    /// SAR; returns the User-Data of the answer, if any.
    pub async fn sar(
        &self,
        impi: &str,
        impus: &[&str],
        assignment: ServerAssignmentType,
        data_available: bool,
    ) -> Result<Option<String>, CxFailure> {
        self.sar_as(Some(impi), impus, assignment, data_available)
            .await
    }

    /// SAR UNREGISTERED_USER for a callee not registered here (TS 29.228 §6.1.2: no
    /// User-Name; the HSS finds the IMPI), asking for the User-Data.
    pub async fn sar_unregistered(&self, impu: &str) -> Result<(), CxFailure> {
        self.sar_as(None, &[impu], ServerAssignmentType::UnregisteredUser, false)
            .await
            .map(drop)
    }

    async fn sar_as(
        &self,
        impi: Option<&str>,
        impus: &[&str],
        assignment: ServerAssignmentType,
        data_available: bool,
    ) -> Result<Option<String>, CxFailure> {
        let sid = self.sessions.next_id();
        let sar = Sar {
            base: self.base(&sid),
            user_name: impi,
            public_identities: impus.to_vec(),
            server_name: &self.server_name,
            assignment_type: assignment,
            user_data_already_available: if data_available {
                UserDataAlreadyAvailable::UserDataAlreadyAvailable
            } else {
                UserDataAlreadyAvailable::UserDataNotAvailable
            },
        };
        let mut req = Vec::with_capacity(512);
        sar.encode(&mut req)
            .map_err(|e| CxFailure::BadAnswer(format!("encoding the SAR: {e}")))?;
        let answer = self.request("SAR", req).await?;
        let msg = Message::parse(&answer).map_err(|e| CxFailure::BadAnswer(e.to_string()));
        let msg = self.readable("SAR", msg)?;
        let saa = Saa::decode(&msg).map_err(|e| CxFailure::BadAnswer(format!("SAA: {e}")));
        let saa = self.readable("SAR", saa)?;
        self.answers
            .count("SAR", CxOutcome::Answer(saa.base.result));
        if !saa.base.result.is_success() {
            return Err(self.refused("SAR", &saa.base));
        }
        match saa.user_data {
            None => Ok(None),
            Some(d) => String::from_utf8(d.to_vec())
                .map(Some)
                .map_err(|_| CxFailure::BadAnswer("User-Data is not UTF-8".into())),
        }
    }
}

fn vector_of(item: &SipAuthDataItem<'_>) -> Result<Vector, CxFailure> {
    let bad = |why: &str| CxFailure::BadAnswer(why.to_owned());
    if let Some(d) = &item.digest {
        let ha1 = Ha1::from_hex(d.ha1).map_err(|_| bad("Digest-HA1 is not 32 hex digits"))?;
        if let Some(a) = d.algorithm
            && !a.eq_ignore_ascii_case("MD5")
        {
            return Err(bad("Digest-Algorithm other than MD5"));
        }
        return Ok(Vector::Digest {
            realm: d.realm.to_owned(),
            ha1,
            qop: d.qop.to_owned(),
        });
    }
    let scheme = item.authentication_scheme.unwrap_or("");
    if !scheme.eq_ignore_ascii_case(SCHEME_AKA) {
        return Err(CxFailure::BadAnswer(format!(
            "SIP-Authentication-Scheme `{scheme}` is not supported here"
        )));
    }
    let auth = item
        .authenticate
        .filter(|a| a.len() >= 32)
        .ok_or_else(|| bad("SIP-Authenticate is not RAND||AUTN"))?;
    let rand = Rand::from_slice(&auth[..16]).map_err(|_| bad("RAND"))?;
    let autn = Autn::from_slice(&auth[16..32]).map_err(|_| bad("AUTN"))?;
    let xres = item
        .authorization
        .ok_or_else(|| bad("no XRES (SIP-Authorization)"))
        .and_then(|x| Res::from_slice(x).map_err(|_| bad("XRES length")))?;
    let key = |k: Option<&[u8]>, what: &str| {
        k.filter(|k| k.len() == 16)
            .map(|k| Zeroizing::new(hex::encode(k)))
            .ok_or_else(|| bad(what))
    };
    Ok(Vector::Aka {
        rand,
        autn,
        xres,
        ck: key(
            item.confidentiality_key,
            "Confidentiality-Key is not 16 bytes",
        )?,
        ik: key(item.integrity_key, "Integrity-Key is not 16 bytes")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A MAR that gets no answer (nothing listens where the HSS should be) is counted as
    /// `unreachable` and is no round trip: the histogram stays at zero.
    #[tokio::test]
    async fn a_request_without_answer_is_counted_but_not_timed() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let hss = closed.local_addr().unwrap();
        drop(closed);
        let cfg = CxClientConfig {
            hss,
            origin_host: "scscf1.hims.net".into(),
            origin_realm: "hims.net".into(),
            destination_realm: "hims.net".into(),
            destination_host: None,
            watchdog_seconds: 30,
            request_timeout_seconds: 5,
            local_address: None,
        };
        let (client, _) = DiameterClient::connect(hss, cfg.peer_config());
        let cx = CxClient::new(client, cfg, "sip:scscf1.hims.net".into());
        let failure = cx.mar("alice@hims.net", "sip:alice@hims.net", None).await;
        assert!(
            matches!(
                failure,
                Err(CxFailure::Unreachable(RequestError::NotOpen(_)))
            ),
            "{failure:?}"
        );
        let mut t = String::new();
        cx.render_metrics(&mut t);
        for line in [
            "ims_scscf_cx_answers_total{command=\"MAR\",result=\"unreachable\"} 1",
            "ims_scscf_cx_request_seconds_bucket{command=\"MAR\",le=\"+Inf\"} 0",
            "ims_scscf_cx_request_seconds_count{command=\"MAR\"} 0",
            "ims_scscf_cx_request_seconds_count{command=\"SAR\"} 0",
        ] {
            assert!(t.lines().any(|l| l == line), "no `{line}` in\n{t}");
        }
    }
}

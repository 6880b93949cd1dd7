//! Typed Cx commands (TS 29.229 §6.1): UAR/UAA, MAR/MAA, SAR/SAA, LIR/LIA, RTR/RTA, PPR/PPA.
//!
//! Each command is a struct borrowing its strings and bytes from the decoded message (no
//! copies), with `encode` (append to a buffer, returns the message length) and `decode`
//! (from a [`Message`] view). Requests carry a [`RequestBase`]: Session-Id (always encoded
//! first), Vendor-Specific-Application-Id {10415, 16777216}, Auth-Session-State =
//! NO_STATE_MAINTAINED, Origin-Host/Realm, Destination-Realm, optional Destination-Host.
//! Answers carry an [`AnswerBase`] with Result-Code or Experimental-Result ([`AnswerResult`]).
//!
//! Decoding a request checks the AVPs TS 29.229 marks `{required}` and returns 5005 with a
//! Failed-AVP naming the first missing one. Other checks: a single-valued AVP twice → 5009,
//! reserved AVP flag bits → 3009, bad value → 5004, bad length → 5014, an unknown AVP with
//! the M bit → 5001. Known AVPs a struct has no field for, and unknown AVPs without M, are
//! kept in `extra` and re-encoded as received, so messages round-trip.

use crate::avp::{Avp, flags as avp_flags};
use crate::builder::{Buffer, MessageBuilder};
use crate::dict::{
    self, AuthSessionState, AvpDef, ReasonCode, ServerAssignmentType, UserAuthorizationType,
    UserDataAlreadyAvailable, command,
};
use crate::error::{Error, FailedAvp};
use crate::header::{Header, flags};
use crate::message::Message;
use crate::result::AnswerResult;

// ---------------------------------------------------------------------------------------
// helpers

fn missing(def: &AvpDef) -> Error {
    Error::MissingAvp(FailedAvp::missing(def))
}

fn require<T>(v: Option<T>, def: &AvpDef) -> Result<T, Error> {
    v.ok_or_else(|| missing(def))
}

fn once<T>(slot: &mut Option<T>, v: T, avp: &Avp<'_>) -> Result<(), Error> {
    if slot.is_some() {
        return Err(Error::AvpOccursTooManyTimes(FailedAvp::from_avp(avp)));
    }
    *slot = Some(v);
    Ok(())
}

fn check_bits(avp: &Avp<'_>) -> Result<(), Error> {
    if avp.flags() & avp_flags::RESERVED != 0 {
        return Err(Error::InvalidAvpBits(FailedAvp::from_avp(avp)));
    }
    Ok(())
}

/// Keeps an AVP no field takes: known or non-mandatory ones go to `extra`, an unknown
/// mandatory one is 5001.
fn keep<'a>(avp: &Avp<'a>, extra: &mut Vec<Avp<'a>>) -> Result<(), Error> {
    if avp.is_mandatory() && dict::lookup(avp.code(), avp.vendor()).is_none() {
        return Err(Error::AvpUnsupported(FailedAvp::from_avp(avp)));
    }
    extra.push(*avp);
    Ok(())
}

fn enum_value<E>(avp: &Avp<'_>, from: fn(i32) -> Option<E>) -> Result<E, Error> {
    from(avp.as_enumerated()?).ok_or_else(|| avp.invalid_value())
}

fn check_header(msg: &Message<'_>, code: u32, request: bool) -> Result<(), Error> {
    if msg.command_code() != code || msg.is_request() != request {
        return Err(Error::CommandUnsupported {
            code: msg.command_code(),
            request: msg.is_request(),
        });
    }
    if msg.application_id() != dict::APP_CX {
        return Err(Error::ApplicationUnsupported(msg.application_id()));
    }
    Ok(())
}

/// Checks a Vendor-Specific-Application-Id: Vendor-Id and one application id.
fn check_vsai(avp: &Avp<'_>) -> Result<(), Error> {
    let (mut vendor, mut app) = (None, None);
    for a in avp.grouped() {
        let a = a?;
        check_bits(&a)?;
        if a.is(&dict::VENDOR_ID) {
            once(&mut vendor, a.as_u32()?, &a)?;
        } else if a.is(&dict::AUTH_APPLICATION_ID) || a.is(&dict::ACCT_APPLICATION_ID) {
            once(&mut app, a.as_u32()?, &a)?;
        } else {
            keep(&a, &mut Vec::new())?;
        }
    }
    require(vendor, &dict::VENDOR_ID)?;
    require(app, &dict::AUTH_APPLICATION_ID)?;
    Ok(())
}

fn encode_vsai<B: Buffer + ?Sized>(b: &mut MessageBuilder<'_, B>) {
    b.group(&dict::VENDOR_SPECIFIC_APPLICATION_ID, |b| {
        b.u32(&dict::VENDOR_ID, dict::VENDOR_3GPP)
            .u32(&dict::AUTH_APPLICATION_ID, dict::APP_CX);
    });
}

// ---------------------------------------------------------------------------------------
// shared grouped AVPs

/// Supported-Features (628) {Vendor-Id, Feature-List-ID, Feature-List}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupportedFeatures {
    /// Vendor-Id.
    pub vendor_id: u32,
    /// Feature-List-ID.
    pub feature_list_id: u32,
    /// Feature-List bit mask.
    pub feature_list: u32,
}

impl SupportedFeatures {
    fn decode(avp: &Avp<'_>) -> Result<Self, Error> {
        let (mut v, mut id, mut list) = (None, None, None);
        for a in avp.grouped() {
            let a = a?;
            check_bits(&a)?;
            if a.is(&dict::VENDOR_ID) {
                once(&mut v, a.as_u32()?, &a)?;
            } else if a.is(&dict::FEATURE_LIST_ID) {
                once(&mut id, a.as_u32()?, &a)?;
            } else if a.is(&dict::FEATURE_LIST) {
                once(&mut list, a.as_u32()?, &a)?;
            } else {
                keep(&a, &mut Vec::new())?;
            }
        }
        Ok(Self {
            vendor_id: require(v, &dict::VENDOR_ID)?,
            feature_list_id: require(id, &dict::FEATURE_LIST_ID)?,
            feature_list: require(list, &dict::FEATURE_LIST)?,
        })
    }
    fn encode<B: Buffer + ?Sized>(&self, b: &mut MessageBuilder<'_, B>) {
        b.group(&dict::SUPPORTED_FEATURES, |b| {
            b.u32(&dict::VENDOR_ID, self.vendor_id)
                .u32(&dict::FEATURE_LIST_ID, self.feature_list_id)
                .u32(&dict::FEATURE_LIST, self.feature_list);
        });
    }
}

/// Server-Capabilities (603) {*Mandatory-Capability, *Optional-Capability, *Server-Name}.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerCapabilities<'a> {
    /// Mandatory-Capability values.
    pub mandatory: Vec<u32>,
    /// Optional-Capability values.
    pub optional: Vec<u32>,
    /// Server-Name values (SIP URIs of S-CSCFs).
    pub server_names: Vec<&'a str>,
}

impl<'a> ServerCapabilities<'a> {
    fn decode(avp: &Avp<'a>) -> Result<Self, Error> {
        let mut s = Self::default();
        for a in avp.grouped() {
            let a = a?;
            check_bits(&a)?;
            if a.is(&dict::MANDATORY_CAPABILITY) {
                s.mandatory.push(a.as_u32()?);
            } else if a.is(&dict::OPTIONAL_CAPABILITY) {
                s.optional.push(a.as_u32()?);
            } else if a.is(&dict::SERVER_NAME) {
                s.server_names.push(a.as_utf8()?);
            } else {
                keep(&a, &mut Vec::new())?;
            }
        }
        Ok(s)
    }
    fn encode<B: Buffer + ?Sized>(&self, b: &mut MessageBuilder<'_, B>) {
        b.group(&dict::SERVER_CAPABILITIES, |b| {
            for &c in &self.mandatory {
                b.u32(&dict::MANDATORY_CAPABILITY, c);
            }
            for &c in &self.optional {
                b.u32(&dict::OPTIONAL_CAPABILITY, c);
            }
            for n in &self.server_names {
                b.utf8(&dict::SERVER_NAME, n);
            }
        });
    }
}

/// SIP-Digest-Authenticate (635) {Digest-Realm, [Digest-Algorithm], Digest-QoP, Digest-HA1}
/// (TS 29.229 §6.3.36; the Digest-* AVPs are RFC 4740's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SipDigestAuthenticate<'a> {
    /// Digest-Realm.
    pub realm: &'a str,
    /// Digest-Algorithm (e.g. "MD5").
    pub algorithm: Option<&'a str>,
    /// Digest-QoP (e.g. "auth").
    pub qop: &'a str,
    /// Digest-HA1 (lower-case hex).
    pub ha1: &'a str,
    /// Other AVPs, kept as received.
    pub extra: Vec<Avp<'a>>,
}

impl<'a> SipDigestAuthenticate<'a> {
    fn decode(avp: &Avp<'a>) -> Result<Self, Error> {
        let (mut realm, mut alg, mut qop, mut ha1, mut extra) = (None, None, None, None, vec![]);
        for a in avp.grouped() {
            let a = a?;
            check_bits(&a)?;
            if a.is(&dict::DIGEST_REALM) {
                once(&mut realm, a.as_utf8()?, &a)?;
            } else if a.is(&dict::DIGEST_ALGORITHM) {
                once(&mut alg, a.as_utf8()?, &a)?;
            } else if a.is(&dict::DIGEST_QOP) {
                once(&mut qop, a.as_utf8()?, &a)?;
            } else if a.is(&dict::DIGEST_HA1) {
                once(&mut ha1, a.as_utf8()?, &a)?;
            } else {
                keep(&a, &mut extra)?;
            }
        }
        Ok(Self {
            realm: require(realm, &dict::DIGEST_REALM)?,
            algorithm: alg,
            qop: require(qop, &dict::DIGEST_QOP)?,
            ha1: require(ha1, &dict::DIGEST_HA1)?,
            extra,
        })
    }
    fn encode<B: Buffer + ?Sized>(&self, b: &mut MessageBuilder<'_, B>) {
        b.group(&dict::SIP_DIGEST_AUTHENTICATE, |b| {
            b.utf8(&dict::DIGEST_REALM, self.realm);
            if let Some(a) = self.algorithm {
                b.utf8(&dict::DIGEST_ALGORITHM, a);
            }
            b.utf8(&dict::DIGEST_QOP, self.qop)
                .utf8(&dict::DIGEST_HA1, self.ha1);
            for a in &self.extra {
                b.avp(a);
            }
        });
    }
}

/// SIP-Auth-Data-Item (612).
///
/// For Digest-AKAv1-MD5: `authenticate` = RAND‖AUTN (32 bytes), `authorization` = XRES (or,
/// in a resync MAR, RAND‖AUTS, 30 bytes), CK and IK 16 bytes each. For SIP Digest:
/// `digest` holds SIP-Digest-Authenticate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SipAuthDataItem<'a> {
    /// SIP-Item-Number.
    pub item_number: Option<u32>,
    /// SIP-Authentication-Scheme, e.g. "Digest-AKAv1-MD5".
    pub authentication_scheme: Option<&'a str>,
    /// SIP-Authenticate.
    pub authenticate: Option<&'a [u8]>,
    /// SIP-Authorization.
    pub authorization: Option<&'a [u8]>,
    /// SIP-Authentication-Context.
    pub authentication_context: Option<&'a [u8]>,
    /// Confidentiality-Key (CK).
    pub confidentiality_key: Option<&'a [u8]>,
    /// Integrity-Key (IK).
    pub integrity_key: Option<&'a [u8]>,
    /// SIP-Digest-Authenticate.
    pub digest: Option<SipDigestAuthenticate<'a>>,
    /// Other AVPs (Framed-IP-Address, Line-Identifier, …), kept as received.
    pub extra: Vec<Avp<'a>>,
}

impl<'a> SipAuthDataItem<'a> {
    fn decode(avp: &Avp<'a>) -> Result<Self, Error> {
        let mut s = Self::default();
        let mut digest = None;
        for a in avp.grouped() {
            let a = a?;
            check_bits(&a)?;
            if a.is(&dict::SIP_ITEM_NUMBER) {
                once(&mut s.item_number, a.as_u32()?, &a)?;
            } else if a.is(&dict::SIP_AUTHENTICATION_SCHEME) {
                once(&mut s.authentication_scheme, a.as_utf8()?, &a)?;
            } else if a.is(&dict::SIP_AUTHENTICATE) {
                once(&mut s.authenticate, a.data(), &a)?;
            } else if a.is(&dict::SIP_AUTHORIZATION) {
                once(&mut s.authorization, a.data(), &a)?;
            } else if a.is(&dict::SIP_AUTHENTICATION_CONTEXT) {
                once(&mut s.authentication_context, a.data(), &a)?;
            } else if a.is(&dict::CONFIDENTIALITY_KEY) {
                once(&mut s.confidentiality_key, a.data(), &a)?;
            } else if a.is(&dict::INTEGRITY_KEY) {
                once(&mut s.integrity_key, a.data(), &a)?;
            } else if a.is(&dict::SIP_DIGEST_AUTHENTICATE) {
                once(&mut digest, SipDigestAuthenticate::decode(&a)?, &a)?;
            } else {
                keep(&a, &mut s.extra)?;
            }
        }
        s.digest = digest;
        Ok(s)
    }
    fn encode<B: Buffer + ?Sized>(&self, b: &mut MessageBuilder<'_, B>) {
        b.group(&dict::SIP_AUTH_DATA_ITEM, |b| {
            if let Some(n) = self.item_number {
                b.u32(&dict::SIP_ITEM_NUMBER, n);
            }
            if let Some(s) = self.authentication_scheme {
                b.utf8(&dict::SIP_AUTHENTICATION_SCHEME, s);
            }
            let octets = [
                (&dict::SIP_AUTHENTICATE, self.authenticate),
                (&dict::SIP_AUTHORIZATION, self.authorization),
                (
                    &dict::SIP_AUTHENTICATION_CONTEXT,
                    self.authentication_context,
                ),
                (&dict::CONFIDENTIALITY_KEY, self.confidentiality_key),
                (&dict::INTEGRITY_KEY, self.integrity_key),
            ];
            for (def, v) in octets {
                if let Some(v) = v {
                    b.octets(def, v);
                }
            }
            if let Some(d) = &self.digest {
                d.encode(b);
            }
            for a in &self.extra {
                b.avp(a);
            }
        });
    }
}

/// Deregistration-Reason (615) {Reason-Code, [Reason-Info]}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeregistrationReason<'a> {
    /// Reason-Code.
    pub reason_code: ReasonCode,
    /// Reason-Info (text for the user).
    pub reason_info: Option<&'a str>,
}

impl<'a> DeregistrationReason<'a> {
    fn decode(avp: &Avp<'a>) -> Result<Self, Error> {
        let (mut code, mut info) = (None, None);
        for a in avp.grouped() {
            let a = a?;
            check_bits(&a)?;
            if a.is(&dict::REASON_CODE) {
                once(&mut code, enum_value(&a, ReasonCode::from_i32)?, &a)?;
            } else if a.is(&dict::REASON_INFO) {
                once(&mut info, a.as_utf8()?, &a)?;
            } else {
                keep(&a, &mut Vec::new())?;
            }
        }
        Ok(Self {
            reason_code: require(code, &dict::REASON_CODE)?,
            reason_info: info,
        })
    }
    fn encode<B: Buffer + ?Sized>(&self, b: &mut MessageBuilder<'_, B>) {
        b.group(&dict::DEREGISTRATION_REASON, |b| {
            b.enumerated(&dict::REASON_CODE, self.reason_code);
            if let Some(i) = self.reason_info {
                b.utf8(&dict::REASON_INFO, i);
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// request / answer bases

/// What every Cx request carries (besides the fixed VSAI and Auth-Session-State).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestBase<'a> {
    /// Hop-by-Hop identifier.
    pub hop_by_hop: u32,
    /// End-to-End identifier.
    pub end_to_end: u32,
    /// Session-Id (encoded first).
    pub session_id: &'a str,
    /// Origin-Host.
    pub origin_host: &'a str,
    /// Origin-Realm.
    pub origin_realm: &'a str,
    /// Destination-Realm.
    pub destination_realm: &'a str,
    /// Destination-Host (required in RTR and PPR).
    pub destination_host: Option<&'a str>,
    /// Supported-Features.
    pub supported_features: Vec<SupportedFeatures>,
    /// AVPs without a field (Route-Record, Proxy-Info, …), kept as received.
    pub extra: Vec<Avp<'a>>,
}

/// What every Cx answer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerBase<'a> {
    /// Hop-by-Hop identifier (copied from the request).
    pub hop_by_hop: u32,
    /// End-to-End identifier (copied from the request).
    pub end_to_end: u32,
    /// Session-Id (copied from the request).
    pub session_id: &'a str,
    /// Result-Code or Experimental-Result. A base 3xxx code sets the E bit.
    pub result: AnswerResult,
    /// Origin-Host.
    pub origin_host: &'a str,
    /// Origin-Realm.
    pub origin_realm: &'a str,
    /// Error-Message.
    pub error_message: Option<&'a str>,
    /// The AVP inside Failed-AVP.
    pub failed_avp: Option<FailedAvp>,
    /// Supported-Features.
    pub supported_features: Vec<SupportedFeatures>,
    /// AVPs without a field, kept as received.
    pub extra: Vec<Avp<'a>>,
}

impl<'a> RequestBase<'a> {
    /// The answer base for this request: same identifiers and Session-Id.
    pub fn answer(
        &self,
        result: AnswerResult,
        origin_host: &'a str,
        origin_realm: &'a str,
    ) -> AnswerBase<'a> {
        AnswerBase {
            hop_by_hop: self.hop_by_hop,
            end_to_end: self.end_to_end,
            session_id: self.session_id,
            result,
            origin_host,
            origin_realm,
            error_message: None,
            failed_avp: None,
            supported_features: Vec::new(),
            extra: Vec::new(),
        }
    }

    fn encode<B: Buffer + ?Sized>(
        &self,
        out: &mut B,
        code: u32,
        body: impl FnOnce(&mut MessageBuilder<'_, B>),
    ) -> Result<usize, Error> {
        let hdr = Header {
            length: 0,
            flags: flags::R | flags::P,
            command_code: code,
            application_id: dict::APP_CX,
            hop_by_hop: self.hop_by_hop,
            end_to_end: self.end_to_end,
        };
        let mut b = MessageBuilder::new(out, &hdr);
        b.utf8(&dict::SESSION_ID, self.session_id);
        encode_vsai(&mut b);
        b.enumerated(
            &dict::AUTH_SESSION_STATE,
            AuthSessionState::NoStateMaintained,
        )
        .utf8(&dict::ORIGIN_HOST, self.origin_host)
        .utf8(&dict::ORIGIN_REALM, self.origin_realm);
        if let Some(h) = self.destination_host {
            b.utf8(&dict::DESTINATION_HOST, h);
        }
        b.utf8(&dict::DESTINATION_REALM, self.destination_realm);
        body(&mut b);
        for f in &self.supported_features {
            f.encode(&mut b);
        }
        for a in &self.extra {
            b.avp(a);
        }
        b.finish()
    }

    fn decode(
        msg: &Message<'a>,
        code: u32,
        mut field: impl FnMut(&Avp<'a>) -> Result<bool, Error>,
    ) -> Result<Self, Error> {
        check_header(msg, code, true)?;
        let (mut sid, mut oh, mut or, mut dr, mut dh) = (None, None, None, None, None);
        let (mut vsai, mut ass) = (None, None);
        let mut base = RequestBase::default();
        for a in msg.avps() {
            let a = a?;
            check_bits(&a)?;
            if a.is(&dict::SESSION_ID) {
                once(&mut sid, a.as_utf8()?, &a)?;
            } else if a.is(&dict::ORIGIN_HOST) {
                once(&mut oh, a.as_identity()?, &a)?;
            } else if a.is(&dict::ORIGIN_REALM) {
                once(&mut or, a.as_identity()?, &a)?;
            } else if a.is(&dict::DESTINATION_REALM) {
                once(&mut dr, a.as_identity()?, &a)?;
            } else if a.is(&dict::DESTINATION_HOST) {
                once(&mut dh, a.as_identity()?, &a)?;
            } else if a.is(&dict::VENDOR_SPECIFIC_APPLICATION_ID) {
                check_vsai(&a)?;
                once(&mut vsai, (), &a)?;
            } else if a.is(&dict::AUTH_SESSION_STATE) {
                once(&mut ass, enum_value(&a, AuthSessionState::from_i32)?, &a)?;
            } else if a.is(&dict::SUPPORTED_FEATURES) {
                base.supported_features.push(SupportedFeatures::decode(&a)?);
            } else if !field(&a)? {
                keep(&a, &mut base.extra)?;
            }
        }
        base.hop_by_hop = msg.header().hop_by_hop;
        base.end_to_end = msg.header().end_to_end;
        base.session_id = require(sid, &dict::SESSION_ID)?;
        require(vsai, &dict::VENDOR_SPECIFIC_APPLICATION_ID)?;
        require(ass, &dict::AUTH_SESSION_STATE)?;
        base.origin_host = require(oh, &dict::ORIGIN_HOST)?;
        base.origin_realm = require(or, &dict::ORIGIN_REALM)?;
        base.destination_realm = require(dr, &dict::DESTINATION_REALM)?;
        base.destination_host = dh;
        Ok(base)
    }
}

impl<'a> AnswerBase<'a> {
    fn encode<B: Buffer + ?Sized>(
        &self,
        out: &mut B,
        code: u32,
        body: impl FnOnce(&mut MessageBuilder<'_, B>),
    ) -> Result<usize, Error> {
        let e = if self.result.is_protocol_error() {
            flags::E
        } else {
            0
        };
        let hdr = Header {
            length: 0,
            flags: flags::P | e,
            command_code: code,
            application_id: dict::APP_CX,
            hop_by_hop: self.hop_by_hop,
            end_to_end: self.end_to_end,
        };
        let mut b = MessageBuilder::new(out, &hdr);
        b.utf8(&dict::SESSION_ID, self.session_id);
        encode_vsai(&mut b);
        self.result.encode(&mut b);
        b.enumerated(
            &dict::AUTH_SESSION_STATE,
            AuthSessionState::NoStateMaintained,
        )
        .utf8(&dict::ORIGIN_HOST, self.origin_host)
        .utf8(&dict::ORIGIN_REALM, self.origin_realm);
        body(&mut b);
        for f in &self.supported_features {
            f.encode(&mut b);
        }
        if let Some(m) = self.error_message {
            b.utf8(&dict::ERROR_MESSAGE, m);
        }
        if let Some(f) = &self.failed_avp {
            b.failed_avp(f);
        }
        for a in &self.extra {
            b.avp(a);
        }
        b.finish()
    }

    fn decode(
        msg: &Message<'a>,
        code: u32,
        mut field: impl FnMut(&Avp<'a>) -> Result<bool, Error>,
    ) -> Result<Self, Error> {
        check_header(msg, code, false)?;
        let (mut sid, mut oh, mut or, mut rc, mut er) = (None, None, None, None, None);
        let (mut vsai, mut ass, mut em, mut fa) = (None, None, None, None);
        let (mut sf, mut extra) = (Vec::new(), Vec::new());
        for a in msg.avps() {
            let a = a?;
            check_bits(&a)?;
            if a.is(&dict::SESSION_ID) {
                once(&mut sid, a.as_utf8()?, &a)?;
            } else if a.is(&dict::ORIGIN_HOST) {
                once(&mut oh, a.as_identity()?, &a)?;
            } else if a.is(&dict::ORIGIN_REALM) {
                once(&mut or, a.as_identity()?, &a)?;
            } else if a.is(&dict::RESULT_CODE) {
                once(&mut rc, AnswerResult::from_result_code(&a)?, &a)?;
            } else if a.is(&dict::EXPERIMENTAL_RESULT) {
                once(&mut er, AnswerResult::from_experimental(&a)?, &a)?;
            } else if a.is(&dict::VENDOR_SPECIFIC_APPLICATION_ID) {
                check_vsai(&a)?;
                once(&mut vsai, (), &a)?;
            } else if a.is(&dict::AUTH_SESSION_STATE) {
                once(&mut ass, enum_value(&a, AuthSessionState::from_i32)?, &a)?;
            } else if a.is(&dict::ERROR_MESSAGE) {
                once(&mut em, a.as_utf8()?, &a)?;
            } else if a.is(&dict::FAILED_AVP) {
                let inner = match a.grouped().next() {
                    // Only the flags an answer can carry (M, and V with a Vendor-Id): the
                    // reserved and P bits of a reported AVP are never re-sent, so a decoded
                    // answer re-encodes to itself.
                    Some(inner) => {
                        let mut f = FailedAvp::from_avp(&inner?);
                        f.flags &= avp_flags::M | avp_flags::V;
                        f
                    }
                    None => return Err(a.invalid_value()),
                };
                once(&mut fa, inner, &a)?;
            } else if a.is(&dict::SUPPORTED_FEATURES) {
                sf.push(SupportedFeatures::decode(&a)?);
            } else if !field(&a)? {
                keep(&a, &mut extra)?;
            }
        }
        let result = match (rc, er) {
            (Some(r), None) | (None, Some(r)) => r,
            (None, None) => return Err(missing(&dict::RESULT_CODE)),
            (Some(_), Some(_)) => {
                return Err(Error::ContradictingAvps(FailedAvp::missing(
                    &dict::EXPERIMENTAL_RESULT,
                )));
            }
        };
        Ok(Self {
            hop_by_hop: msg.header().hop_by_hop,
            end_to_end: msg.header().end_to_end,
            session_id: require(sid, &dict::SESSION_ID)?,
            result,
            origin_host: require(oh, &dict::ORIGIN_HOST)?,
            origin_realm: require(or, &dict::ORIGIN_REALM)?,
            error_message: em,
            failed_avp: fa,
            supported_features: sf,
            extra,
        })
    }
}

// ---------------------------------------------------------------------------------------
// commands

/// User-Authorization-Request (300, I-CSCF → HSS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uar<'a> {
    /// Common request AVPs.
    pub base: RequestBase<'a>,
    /// User-Name (IMPI).
    pub user_name: &'a str,
    /// Public-Identity (IMPU).
    pub public_identity: &'a str,
    /// Visited-Network-Identifier.
    pub visited_network_identifier: &'a [u8],
    /// User-Authorization-Type.
    pub authorization_type: Option<UserAuthorizationType>,
    /// UAR-Flags (bit 0: emergency).
    pub uar_flags: Option<u32>,
}

impl<'a> Uar<'a> {
    /// Appends the encoded request to `out`; returns its length.
    pub fn encode<B: Buffer + ?Sized>(&self, out: &mut B) -> Result<usize, Error> {
        self.base.encode(out, command::USER_AUTHORIZATION, |b| {
            b.utf8(&dict::USER_NAME, self.user_name)
                .utf8(&dict::PUBLIC_IDENTITY, self.public_identity)
                .octets(
                    &dict::VISITED_NETWORK_IDENTIFIER,
                    self.visited_network_identifier,
                );
            if let Some(t) = self.authorization_type {
                b.enumerated(&dict::USER_AUTHORIZATION_TYPE, t);
            }
            if let Some(f) = self.uar_flags {
                b.u32(&dict::UAR_FLAGS, f);
            }
        })
    }

    /// Decodes and checks a UAR.
    pub fn decode(msg: &Message<'a>) -> Result<Self, Error> {
        let (mut un, mut pi, mut vni, mut uat, mut fl) = (None, None, None, None, None);
        let base = RequestBase::decode(msg, command::USER_AUTHORIZATION, |a| {
            if a.is(&dict::USER_NAME) {
                once(&mut un, a.as_utf8()?, a)?;
            } else if a.is(&dict::PUBLIC_IDENTITY) {
                once(&mut pi, a.as_utf8()?, a)?;
            } else if a.is(&dict::VISITED_NETWORK_IDENTIFIER) {
                once(&mut vni, a.data(), a)?;
            } else if a.is(&dict::USER_AUTHORIZATION_TYPE) {
                once(&mut uat, enum_value(a, UserAuthorizationType::from_i32)?, a)?;
            } else if a.is(&dict::UAR_FLAGS) {
                once(&mut fl, a.as_u32()?, a)?;
            } else {
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(Self {
            base,
            user_name: require(un, &dict::USER_NAME)?,
            public_identity: require(pi, &dict::PUBLIC_IDENTITY)?,
            visited_network_identifier: require(vni, &dict::VISITED_NETWORK_IDENTIFIER)?,
            authorization_type: uat,
            uar_flags: fl,
        })
    }
}

/// User-Authorization-Answer (300).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uaa<'a> {
    /// Common answer AVPs.
    pub base: AnswerBase<'a>,
    /// Server-Name (the assigned S-CSCF).
    pub server_name: Option<&'a str>,
    /// Server-Capabilities (to pick an S-CSCF).
    pub server_capabilities: Option<ServerCapabilities<'a>>,
}

impl<'a> Uaa<'a> {
    /// Appends the encoded answer to `out`; returns its length.
    pub fn encode<B: Buffer + ?Sized>(&self, out: &mut B) -> Result<usize, Error> {
        self.base.encode(out, command::USER_AUTHORIZATION, |b| {
            if let Some(s) = self.server_name {
                b.utf8(&dict::SERVER_NAME, s);
            }
            if let Some(c) = &self.server_capabilities {
                c.encode(b);
            }
        })
    }
    /// Decodes a UAA.
    pub fn decode(msg: &Message<'a>) -> Result<Self, Error> {
        let (mut sn, mut sc) = (None, None);
        let base = AnswerBase::decode(msg, command::USER_AUTHORIZATION, |a| {
            server_name_caps(a, &mut sn, &mut sc)
        })?;
        Ok(Self {
            base,
            server_name: sn,
            server_capabilities: sc,
        })
    }
}

fn server_name_caps<'a>(
    a: &Avp<'a>,
    sn: &mut Option<&'a str>,
    sc: &mut Option<ServerCapabilities<'a>>,
) -> Result<bool, Error> {
    if a.is(&dict::SERVER_NAME) {
        once(sn, a.as_utf8()?, a)?;
    } else if a.is(&dict::SERVER_CAPABILITIES) {
        once(sc, ServerCapabilities::decode(a)?, a)?;
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// Multimedia-Auth-Request (303, S-CSCF → HSS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mar<'a> {
    /// Common request AVPs.
    pub base: RequestBase<'a>,
    /// User-Name (IMPI).
    pub user_name: &'a str,
    /// Public-Identity (IMPU).
    pub public_identity: &'a str,
    /// Server-Name (the requesting S-CSCF).
    pub server_name: &'a str,
    /// SIP-Number-Auth-Items (vectors wanted).
    pub number_auth_items: u32,
    /// SIP-Auth-Data-Item: the scheme, and on resync SIP-Authorization = RAND‖AUTS.
    pub auth_data_item: SipAuthDataItem<'a>,
}

impl<'a> Mar<'a> {
    /// Appends the encoded request to `out`; returns its length.
    pub fn encode<B: Buffer + ?Sized>(&self, out: &mut B) -> Result<usize, Error> {
        self.base.encode(out, command::MULTIMEDIA_AUTH, |b| {
            b.utf8(&dict::USER_NAME, self.user_name)
                .utf8(&dict::PUBLIC_IDENTITY, self.public_identity)
                .u32(&dict::SIP_NUMBER_AUTH_ITEMS, self.number_auth_items);
            self.auth_data_item.encode(b);
            b.utf8(&dict::SERVER_NAME, self.server_name);
        })
    }
    /// Decodes and checks a MAR.
    pub fn decode(msg: &Message<'a>) -> Result<Self, Error> {
        let (mut un, mut pi, mut sn, mut n, mut item) = (None, None, None, None, None);
        let base = RequestBase::decode(msg, command::MULTIMEDIA_AUTH, |a| {
            if a.is(&dict::USER_NAME) {
                once(&mut un, a.as_utf8()?, a)?;
            } else if a.is(&dict::PUBLIC_IDENTITY) {
                once(&mut pi, a.as_utf8()?, a)?;
            } else if a.is(&dict::SERVER_NAME) {
                once(&mut sn, a.as_utf8()?, a)?;
            } else if a.is(&dict::SIP_NUMBER_AUTH_ITEMS) {
                once(&mut n, a.as_u32()?, a)?;
            } else if a.is(&dict::SIP_AUTH_DATA_ITEM) {
                once(&mut item, SipAuthDataItem::decode(a)?, a)?;
            } else {
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(Self {
            base,
            user_name: require(un, &dict::USER_NAME)?,
            public_identity: require(pi, &dict::PUBLIC_IDENTITY)?,
            auth_data_item: require(item, &dict::SIP_AUTH_DATA_ITEM)?,
            number_auth_items: require(n, &dict::SIP_NUMBER_AUTH_ITEMS)?,
            server_name: require(sn, &dict::SERVER_NAME)?,
        })
    }
}

/// Multimedia-Auth-Answer (303).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maa<'a> {
    /// Common answer AVPs.
    pub base: AnswerBase<'a>,
    /// User-Name.
    pub user_name: Option<&'a str>,
    /// Public-Identity.
    pub public_identity: Option<&'a str>,
    /// SIP-Number-Auth-Items.
    pub number_auth_items: Option<u32>,
    /// SIP-Auth-Data-Item*.
    pub auth_data_items: Vec<SipAuthDataItem<'a>>,
}

impl<'a> Maa<'a> {
    /// Appends the encoded answer to `out`; returns its length.
    pub fn encode<B: Buffer + ?Sized>(&self, out: &mut B) -> Result<usize, Error> {
        self.base.encode(out, command::MULTIMEDIA_AUTH, |b| {
            if let Some(u) = self.user_name {
                b.utf8(&dict::USER_NAME, u);
            }
            if let Some(p) = self.public_identity {
                b.utf8(&dict::PUBLIC_IDENTITY, p);
            }
            if let Some(n) = self.number_auth_items {
                b.u32(&dict::SIP_NUMBER_AUTH_ITEMS, n);
            }
            for i in &self.auth_data_items {
                i.encode(b);
            }
        })
    }
    /// Decodes a MAA.
    pub fn decode(msg: &Message<'a>) -> Result<Self, Error> {
        let (mut un, mut pi, mut n, mut items) = (None, None, None, Vec::new());
        let base = AnswerBase::decode(msg, command::MULTIMEDIA_AUTH, |a| {
            if a.is(&dict::USER_NAME) {
                once(&mut un, a.as_utf8()?, a)?;
            } else if a.is(&dict::PUBLIC_IDENTITY) {
                once(&mut pi, a.as_utf8()?, a)?;
            } else if a.is(&dict::SIP_NUMBER_AUTH_ITEMS) {
                once(&mut n, a.as_u32()?, a)?;
            } else if a.is(&dict::SIP_AUTH_DATA_ITEM) {
                items.push(SipAuthDataItem::decode(a)?);
            } else {
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(Self {
            base,
            user_name: un,
            public_identity: pi,
            number_auth_items: n,
            auth_data_items: items,
        })
    }
}

/// Server-Assignment-Request (301, S-CSCF → HSS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sar<'a> {
    /// Common request AVPs.
    pub base: RequestBase<'a>,
    /// User-Name (IMPI).
    pub user_name: Option<&'a str>,
    /// Public-Identity*.
    pub public_identities: Vec<&'a str>,
    /// Server-Name.
    pub server_name: &'a str,
    /// Server-Assignment-Type.
    pub assignment_type: ServerAssignmentType,
    /// User-Data-Already-Available.
    pub user_data_already_available: UserDataAlreadyAvailable,
}

impl<'a> Sar<'a> {
    /// Appends the encoded request to `out`; returns its length.
    pub fn encode<B: Buffer + ?Sized>(&self, out: &mut B) -> Result<usize, Error> {
        self.base.encode(out, command::SERVER_ASSIGNMENT, |b| {
            if let Some(u) = self.user_name {
                b.utf8(&dict::USER_NAME, u);
            }
            for p in &self.public_identities {
                b.utf8(&dict::PUBLIC_IDENTITY, p);
            }
            b.utf8(&dict::SERVER_NAME, self.server_name)
                .enumerated(&dict::SERVER_ASSIGNMENT_TYPE, self.assignment_type)
                .enumerated(
                    &dict::USER_DATA_ALREADY_AVAILABLE,
                    self.user_data_already_available,
                );
        })
    }
    /// Decodes and checks a SAR.
    pub fn decode(msg: &Message<'a>) -> Result<Self, Error> {
        let (mut un, mut pis, mut sn, mut sat, mut udaa) = (None, Vec::new(), None, None, None);
        let base = RequestBase::decode(msg, command::SERVER_ASSIGNMENT, |a| {
            if a.is(&dict::USER_NAME) {
                once(&mut un, a.as_utf8()?, a)?;
            } else if a.is(&dict::PUBLIC_IDENTITY) {
                pis.push(a.as_utf8()?);
            } else if a.is(&dict::SERVER_NAME) {
                once(&mut sn, a.as_utf8()?, a)?;
            } else if a.is(&dict::SERVER_ASSIGNMENT_TYPE) {
                once(&mut sat, enum_value(a, ServerAssignmentType::from_i32)?, a)?;
            } else if a.is(&dict::USER_DATA_ALREADY_AVAILABLE) {
                once(
                    &mut udaa,
                    enum_value(a, UserDataAlreadyAvailable::from_i32)?,
                    a,
                )?;
            } else {
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(Self {
            base,
            user_name: un,
            public_identities: pis,
            server_name: require(sn, &dict::SERVER_NAME)?,
            assignment_type: require(sat, &dict::SERVER_ASSIGNMENT_TYPE)?,
            user_data_already_available: require(udaa, &dict::USER_DATA_ALREADY_AVAILABLE)?,
        })
    }
}

/// Server-Assignment-Answer (301).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saa<'a> {
    /// Common answer AVPs.
    pub base: AnswerBase<'a>,
    /// User-Name.
    pub user_name: Option<&'a str>,
    /// User-Data: the IMSSubscription XML (TS 29.228 annex), raw bytes.
    pub user_data: Option<&'a [u8]>,
    /// Server-Name.
    pub server_name: Option<&'a str>,
}

impl<'a> Saa<'a> {
    /// Appends the encoded answer to `out`; returns its length.
    pub fn encode<B: Buffer + ?Sized>(&self, out: &mut B) -> Result<usize, Error> {
        self.base.encode(out, command::SERVER_ASSIGNMENT, |b| {
            if let Some(u) = self.user_name {
                b.utf8(&dict::USER_NAME, u);
            }
            if let Some(d) = self.user_data {
                b.octets(&dict::USER_DATA, d);
            }
            if let Some(s) = self.server_name {
                b.utf8(&dict::SERVER_NAME, s);
            }
        })
    }
    /// Decodes a SAA.
    pub fn decode(msg: &Message<'a>) -> Result<Self, Error> {
        let (mut un, mut ud, mut sn) = (None, None, None);
        let base = AnswerBase::decode(msg, command::SERVER_ASSIGNMENT, |a| {
            if a.is(&dict::USER_NAME) {
                once(&mut un, a.as_utf8()?, a)?;
            } else if a.is(&dict::USER_DATA) {
                once(&mut ud, a.data(), a)?;
            } else if a.is(&dict::SERVER_NAME) {
                once(&mut sn, a.as_utf8()?, a)?;
            } else {
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(Self {
            base,
            user_name: un,
            user_data: ud,
            server_name: sn,
        })
    }
}

/// Location-Info-Request (302, I-CSCF → HSS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lir<'a> {
    /// Common request AVPs.
    pub base: RequestBase<'a>,
    /// Public-Identity.
    pub public_identity: &'a str,
    /// Originating-Request.
    pub originating_request: Option<dict::OriginatingRequest>,
    /// User-Authorization-Type.
    pub authorization_type: Option<UserAuthorizationType>,
}

impl<'a> Lir<'a> {
    /// Appends the encoded request to `out`; returns its length.
    pub fn encode<B: Buffer + ?Sized>(&self, out: &mut B) -> Result<usize, Error> {
        self.base.encode(out, command::LOCATION_INFO, |b| {
            if let Some(o) = self.originating_request {
                b.enumerated(&dict::ORIGINATING_REQUEST, o);
            }
            b.utf8(&dict::PUBLIC_IDENTITY, self.public_identity);
            if let Some(t) = self.authorization_type {
                b.enumerated(&dict::USER_AUTHORIZATION_TYPE, t);
            }
        })
    }
    /// Decodes and checks a LIR.
    pub fn decode(msg: &Message<'a>) -> Result<Self, Error> {
        let (mut pi, mut or, mut uat) = (None, None, None);
        let base = RequestBase::decode(msg, command::LOCATION_INFO, |a| {
            if a.is(&dict::PUBLIC_IDENTITY) {
                once(&mut pi, a.as_utf8()?, a)?;
            } else if a.is(&dict::ORIGINATING_REQUEST) {
                once(
                    &mut or,
                    enum_value(a, dict::OriginatingRequest::from_i32)?,
                    a,
                )?;
            } else if a.is(&dict::USER_AUTHORIZATION_TYPE) {
                once(&mut uat, enum_value(a, UserAuthorizationType::from_i32)?, a)?;
            } else {
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(Self {
            base,
            public_identity: require(pi, &dict::PUBLIC_IDENTITY)?,
            originating_request: or,
            authorization_type: uat,
        })
    }
}

/// Location-Info-Answer (302).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lia<'a> {
    /// Common answer AVPs.
    pub base: AnswerBase<'a>,
    /// Server-Name.
    pub server_name: Option<&'a str>,
    /// Server-Capabilities.
    pub server_capabilities: Option<ServerCapabilities<'a>>,
}

impl<'a> Lia<'a> {
    /// Appends the encoded answer to `out`; returns its length.
    pub fn encode<B: Buffer + ?Sized>(&self, out: &mut B) -> Result<usize, Error> {
        self.base.encode(out, command::LOCATION_INFO, |b| {
            if let Some(s) = self.server_name {
                b.utf8(&dict::SERVER_NAME, s);
            }
            if let Some(c) = &self.server_capabilities {
                c.encode(b);
            }
        })
    }
    /// Decodes a LIA.
    pub fn decode(msg: &Message<'a>) -> Result<Self, Error> {
        let (mut sn, mut sc) = (None, None);
        let base = AnswerBase::decode(msg, command::LOCATION_INFO, |a| {
            server_name_caps(a, &mut sn, &mut sc)
        })?;
        Ok(Self {
            base,
            server_name: sn,
            server_capabilities: sc,
        })
    }
}

/// Registration-Termination-Request (304, HSS → S-CSCF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtr<'a> {
    /// Common request AVPs (Destination-Host required).
    pub base: RequestBase<'a>,
    /// User-Name (IMPI).
    pub user_name: &'a str,
    /// Public-Identity*.
    pub public_identities: Vec<&'a str>,
    /// Deregistration-Reason.
    pub deregistration_reason: DeregistrationReason<'a>,
}

impl<'a> Rtr<'a> {
    /// Appends the encoded request to `out`; returns its length.
    pub fn encode<B: Buffer + ?Sized>(&self, out: &mut B) -> Result<usize, Error> {
        self.base
            .encode(out, command::REGISTRATION_TERMINATION, |b| {
                b.utf8(&dict::USER_NAME, self.user_name);
                for p in &self.public_identities {
                    b.utf8(&dict::PUBLIC_IDENTITY, p);
                }
                self.deregistration_reason.encode(b);
            })
    }
    /// Decodes and checks an RTR.
    pub fn decode(msg: &Message<'a>) -> Result<Self, Error> {
        let (mut un, mut pis, mut dr) = (None, Vec::new(), None);
        let base = RequestBase::decode(msg, command::REGISTRATION_TERMINATION, |a| {
            if a.is(&dict::USER_NAME) {
                once(&mut un, a.as_utf8()?, a)?;
            } else if a.is(&dict::PUBLIC_IDENTITY) {
                pis.push(a.as_utf8()?);
            } else if a.is(&dict::DEREGISTRATION_REASON) {
                once(&mut dr, DeregistrationReason::decode(a)?, a)?;
            } else {
                return Ok(false);
            }
            Ok(true)
        })?;
        require(base.destination_host, &dict::DESTINATION_HOST)?;
        Ok(Self {
            base,
            user_name: require(un, &dict::USER_NAME)?,
            public_identities: pis,
            deregistration_reason: require(dr, &dict::DEREGISTRATION_REASON)?,
        })
    }
}

/// Registration-Termination-Answer (304).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rta<'a> {
    /// Common answer AVPs (Associated-Identities etc. land in `extra`).
    pub base: AnswerBase<'a>,
}

impl<'a> Rta<'a> {
    /// Appends the encoded answer to `out`; returns its length.
    pub fn encode<B: Buffer + ?Sized>(&self, out: &mut B) -> Result<usize, Error> {
        self.base
            .encode(out, command::REGISTRATION_TERMINATION, |_| {})
    }
    /// Decodes an RTA.
    pub fn decode(msg: &Message<'a>) -> Result<Self, Error> {
        let base = AnswerBase::decode(msg, command::REGISTRATION_TERMINATION, |_| Ok(false))?;
        Ok(Self { base })
    }
}

/// Push-Profile-Request (305, HSS → S-CSCF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ppr<'a> {
    /// Common request AVPs (Destination-Host required).
    pub base: RequestBase<'a>,
    /// User-Name (IMPI).
    pub user_name: &'a str,
    /// User-Data (XML).
    pub user_data: Option<&'a [u8]>,
    /// SIP-Auth-Data-Item (e.g. new digest data).
    pub auth_data_item: Option<SipAuthDataItem<'a>>,
}

impl<'a> Ppr<'a> {
    /// Appends the encoded request to `out`; returns its length.
    pub fn encode<B: Buffer + ?Sized>(&self, out: &mut B) -> Result<usize, Error> {
        self.base.encode(out, command::PUSH_PROFILE, |b| {
            b.utf8(&dict::USER_NAME, self.user_name);
            if let Some(d) = self.user_data {
                b.octets(&dict::USER_DATA, d);
            }
            if let Some(i) = &self.auth_data_item {
                i.encode(b);
            }
        })
    }
    /// Decodes and checks a PPR.
    pub fn decode(msg: &Message<'a>) -> Result<Self, Error> {
        let (mut un, mut ud, mut item) = (None, None, None);
        let base = RequestBase::decode(msg, command::PUSH_PROFILE, |a| {
            if a.is(&dict::USER_NAME) {
                once(&mut un, a.as_utf8()?, a)?;
            } else if a.is(&dict::USER_DATA) {
                once(&mut ud, a.data(), a)?;
            } else if a.is(&dict::SIP_AUTH_DATA_ITEM) {
                once(&mut item, SipAuthDataItem::decode(a)?, a)?;
            } else {
                return Ok(false);
            }
            Ok(true)
        })?;
        require(base.destination_host, &dict::DESTINATION_HOST)?;
        Ok(Self {
            base,
            user_name: require(un, &dict::USER_NAME)?,
            user_data: ud,
            auth_data_item: item,
        })
    }
}

/// Push-Profile-Answer (305).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ppa<'a> {
    /// Common answer AVPs.
    pub base: AnswerBase<'a>,
}

impl<'a> Ppa<'a> {
    /// Appends the encoded answer to `out`; returns its length.
    pub fn encode<B: Buffer + ?Sized>(&self, out: &mut B) -> Result<usize, Error> {
        self.base.encode(out, command::PUSH_PROFILE, |_| {})
    }
    /// Decodes a PPA.
    pub fn decode(msg: &Message<'a>) -> Result<Self, Error> {
        let base = AnswerBase::decode(msg, command::PUSH_PROFILE, |_| Ok(false))?;
        Ok(Self { base })
    }
}

/// Any Cx command, decoded by command code and R bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CxMessage<'a> {
    /// UAR.
    Uar(Uar<'a>),
    /// UAA.
    Uaa(Uaa<'a>),
    /// MAR.
    Mar(Mar<'a>),
    /// MAA.
    Maa(Maa<'a>),
    /// SAR.
    Sar(Sar<'a>),
    /// SAA.
    Saa(Saa<'a>),
    /// LIR.
    Lir(Lir<'a>),
    /// LIA.
    Lia(Lia<'a>),
    /// RTR.
    Rtr(Rtr<'a>),
    /// RTA.
    Rta(Rta<'a>),
    /// PPR.
    Ppr(Ppr<'a>),
    /// PPA.
    Ppa(Ppa<'a>),
}

impl<'a> CxMessage<'a> {
    /// Decodes whichever Cx command `msg` is (3001 for other command codes).
    pub fn decode(msg: &Message<'a>) -> Result<Self, Error> {
        use CxMessage as C;
        Ok(match (msg.command_code(), msg.is_request()) {
            (command::USER_AUTHORIZATION, true) => C::Uar(Uar::decode(msg)?),
            (command::USER_AUTHORIZATION, false) => C::Uaa(Uaa::decode(msg)?),
            (command::MULTIMEDIA_AUTH, true) => C::Mar(Mar::decode(msg)?),
            (command::MULTIMEDIA_AUTH, false) => C::Maa(Maa::decode(msg)?),
            (command::SERVER_ASSIGNMENT, true) => C::Sar(Sar::decode(msg)?),
            (command::SERVER_ASSIGNMENT, false) => C::Saa(Saa::decode(msg)?),
            (command::LOCATION_INFO, true) => C::Lir(Lir::decode(msg)?),
            (command::LOCATION_INFO, false) => C::Lia(Lia::decode(msg)?),
            (command::REGISTRATION_TERMINATION, true) => C::Rtr(Rtr::decode(msg)?),
            (command::REGISTRATION_TERMINATION, false) => C::Rta(Rta::decode(msg)?),
            (command::PUSH_PROFILE, true) => C::Ppr(Ppr::decode(msg)?),
            (command::PUSH_PROFILE, false) => C::Ppa(Ppa::decode(msg)?),
            (code, request) => return Err(Error::CommandUnsupported { code, request }),
        })
    }

    /// Appends the encoded message to `out`; returns its length.
    pub fn encode<B: Buffer + ?Sized>(&self, out: &mut B) -> Result<usize, Error> {
        match self {
            Self::Uar(m) => m.encode(out),
            Self::Uaa(m) => m.encode(out),
            Self::Mar(m) => m.encode(out),
            Self::Maa(m) => m.encode(out),
            Self::Sar(m) => m.encode(out),
            Self::Saa(m) => m.encode(out),
            Self::Lir(m) => m.encode(out),
            Self::Lia(m) => m.encode(out),
            Self::Rtr(m) => m.encode(out),
            Self::Rta(m) => m.encode(out),
            Self::Ppr(m) => m.encode(out),
            Self::Ppa(m) => m.encode(out),
        }
    }
}

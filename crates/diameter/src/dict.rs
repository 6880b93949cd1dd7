//! The dictionary: base AVPs (RFC 6733), Cx/Dx AVPs (TS 29.229, vendor 10415), command
//! codes, application ids, Result-Code and Experimental-Result-Code values, and the
//! enumerations Cx uses.
//!
//! Flags follow TS 29.229 Table 6.3.1: Cx AVPs 600–634 (but Supported-Features 628–630) are
//! V|M; the later ones (SIP-Digest-Authenticate 635, UAR-Flags 637, Path 640, Contact 641, …)
//! are V with M "must not"; 653–655 are V|M again. Supported-Features is sent with V only
//! (M "may"). Product-Name, Firmware-Revision and Error-Message never carry M.

/// 3GPP's IANA enterprise number.
pub const VENDOR_3GPP: u32 = 10415;
/// Application-Id of base peer commands (CER/CEA, DWR/DWA, DPR/DPA).
pub const APP_COMMON: u32 = 0;
/// Cx/Dx Application-Id.
pub const APP_CX: u32 = 16_777_216;
/// Relay Application-Id.
pub const APP_RELAY: u32 = 0xFFFF_FFFF;

/// The base data formats of RFC 6733 §4.2–4.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AvpType {
    /// Raw bytes.
    OctetString,
    /// Signed 32-bit.
    Integer32,
    /// Signed 64-bit.
    Integer64,
    /// Unsigned 32-bit.
    Unsigned32,
    /// Unsigned 64-bit.
    Unsigned64,
    /// IEEE-754 single.
    Float32,
    /// IEEE-754 double.
    Float64,
    /// A sequence of AVPs.
    Grouped,
    /// 2-byte family + address.
    Address,
    /// NTP seconds.
    Time,
    /// UTF-8 text.
    Utf8String,
    /// FQDN or realm.
    DiameterIdentity,
    /// aaa:// URI.
    DiameterUri,
    /// Integer32 with named values.
    Enumerated,
}

/// One dictionary entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AvpDef {
    /// Name as in the defining spec.
    pub name: &'static str,
    /// AVP code.
    pub code: u32,
    /// Vendor-Id, 0 for IETF AVPs (no V bit).
    pub vendor_id: u32,
    /// Flags to send (V|M, V, M or 0).
    pub flags: u8,
    /// Data format.
    pub ty: AvpType,
}

impl AvpDef {
    /// `Some(vendor)` for vendor-specific AVPs.
    pub const fn vendor(&self) -> Option<u32> {
        if self.vendor_id == 0 {
            None
        } else {
            Some(self.vendor_id)
        }
    }
    /// True when the dictionary sends M.
    pub const fn mandatory(&self) -> bool {
        self.flags & crate::avp::flags::M != 0
    }
}

const M: u8 = crate::avp::flags::M;
const V: u8 = crate::avp::flags::V;
const VM: u8 = V | M;
const NO: u8 = 0;

macro_rules! avps {
    ($( $id:ident = ($name:literal, $code:literal, $vendor:literal, $flags:ident, $ty:ident); )*) => {
        $(
            #[doc = concat!($name, " (", stringify!($code), ")")]
            pub const $id: AvpDef = AvpDef {
                name: $name, code: $code, vendor_id: $vendor, flags: $flags, ty: AvpType::$ty,
            };
        )*
        /// Every AVP this dictionary knows.
        pub const ALL: &[AvpDef] = &[$($id),*];

        /// Looks an AVP up by code and vendor (0 = IETF).
        pub fn lookup(code: u32, vendor_id: u32) -> Option<&'static AvpDef> {
            match (vendor_id, code) {
                $( ($vendor, $code) => Some(&$id), )*
                _ => None,
            }
        }
    };
}

avps! {
    // ---- RFC 6733 base, RFC 4005/7155 and RFC 4740 AVPs used by Cx ----
    USER_NAME = ("User-Name", 1, 0, M, Utf8String);
    FRAMED_IP_ADDRESS = ("Framed-IP-Address", 8, 0, M, OctetString);
    SESSION_TIMEOUT = ("Session-Timeout", 27, 0, M, Unsigned32);
    PROXY_STATE = ("Proxy-State", 33, 0, M, OctetString);
    EVENT_TIMESTAMP = ("Event-Timestamp", 55, 0, M, Time);
    FRAMED_INTERFACE_ID = ("Framed-Interface-Id", 96, 0, M, Unsigned64);
    FRAMED_IPV6_PREFIX = ("Framed-IPv6-Prefix", 97, 0, M, OctetString);
    DIGEST_REALM = ("Digest-Realm", 104, 0, M, Utf8String);
    DIGEST_QOP = ("Digest-QoP", 110, 0, M, Utf8String);
    DIGEST_ALGORITHM = ("Digest-Algorithm", 111, 0, M, Utf8String);
    DIGEST_HA1 = ("Digest-HA1", 121, 0, M, Utf8String);
    HOST_IP_ADDRESS = ("Host-IP-Address", 257, 0, M, Address);
    AUTH_APPLICATION_ID = ("Auth-Application-Id", 258, 0, M, Unsigned32);
    ACCT_APPLICATION_ID = ("Acct-Application-Id", 259, 0, M, Unsigned32);
    VENDOR_SPECIFIC_APPLICATION_ID = ("Vendor-Specific-Application-Id", 260, 0, M, Grouped);
    REDIRECT_HOST_USAGE = ("Redirect-Host-Usage", 261, 0, M, Enumerated);
    REDIRECT_MAX_CACHE_TIME = ("Redirect-Max-Cache-Time", 262, 0, M, Unsigned32);
    SESSION_ID = ("Session-Id", 263, 0, M, Utf8String);
    ORIGIN_HOST = ("Origin-Host", 264, 0, M, DiameterIdentity);
    SUPPORTED_VENDOR_ID = ("Supported-Vendor-Id", 265, 0, M, Unsigned32);
    VENDOR_ID = ("Vendor-Id", 266, 0, M, Unsigned32);
    FIRMWARE_REVISION = ("Firmware-Revision", 267, 0, NO, Unsigned32);
    RESULT_CODE = ("Result-Code", 268, 0, M, Unsigned32);
    PRODUCT_NAME = ("Product-Name", 269, 0, NO, Utf8String);
    DISCONNECT_CAUSE = ("Disconnect-Cause", 273, 0, M, Enumerated);
    AUTH_REQUEST_TYPE = ("Auth-Request-Type", 274, 0, M, Enumerated);
    AUTH_GRACE_PERIOD = ("Auth-Grace-Period", 276, 0, M, Unsigned32);
    AUTH_SESSION_STATE = ("Auth-Session-State", 277, 0, M, Enumerated);
    ORIGIN_STATE_ID = ("Origin-State-Id", 278, 0, M, Unsigned32);
    FAILED_AVP = ("Failed-AVP", 279, 0, M, Grouped);
    PROXY_HOST = ("Proxy-Host", 280, 0, M, DiameterIdentity);
    ERROR_MESSAGE = ("Error-Message", 281, 0, NO, Utf8String);
    ROUTE_RECORD = ("Route-Record", 282, 0, M, DiameterIdentity);
    DESTINATION_REALM = ("Destination-Realm", 283, 0, M, DiameterIdentity);
    PROXY_INFO = ("Proxy-Info", 284, 0, M, Grouped);
    REDIRECT_HOST = ("Redirect-Host", 292, 0, M, DiameterUri);
    DESTINATION_HOST = ("Destination-Host", 293, 0, M, DiameterIdentity);
    ERROR_REPORTING_HOST = ("Error-Reporting-Host", 294, 0, NO, DiameterIdentity);
    ORIGIN_REALM = ("Origin-Realm", 296, 0, M, DiameterIdentity);
    EXPERIMENTAL_RESULT = ("Experimental-Result", 297, 0, M, Grouped);
    EXPERIMENTAL_RESULT_CODE = ("Experimental-Result-Code", 298, 0, M, Unsigned32);
    INBAND_SECURITY_ID = ("Inband-Security-Id", 299, 0, M, Unsigned32);
    DRMP = ("DRMP", 301, 0, NO, Enumerated);
    // ---- TS 29.229 Cx/Dx, vendor 10415 ----
    VISITED_NETWORK_IDENTIFIER = ("Visited-Network-Identifier", 600, 10415, VM, OctetString);
    PUBLIC_IDENTITY = ("Public-Identity", 601, 10415, VM, Utf8String);
    SERVER_NAME = ("Server-Name", 602, 10415, VM, Utf8String);
    SERVER_CAPABILITIES = ("Server-Capabilities", 603, 10415, VM, Grouped);
    MANDATORY_CAPABILITY = ("Mandatory-Capability", 604, 10415, VM, Unsigned32);
    OPTIONAL_CAPABILITY = ("Optional-Capability", 605, 10415, VM, Unsigned32);
    USER_DATA = ("User-Data", 606, 10415, VM, OctetString);
    SIP_NUMBER_AUTH_ITEMS = ("SIP-Number-Auth-Items", 607, 10415, VM, Unsigned32);
    SIP_AUTHENTICATION_SCHEME = ("SIP-Authentication-Scheme", 608, 10415, VM, Utf8String);
    SIP_AUTHENTICATE = ("SIP-Authenticate", 609, 10415, VM, OctetString);
    SIP_AUTHORIZATION = ("SIP-Authorization", 610, 10415, VM, OctetString);
    SIP_AUTHENTICATION_CONTEXT = ("SIP-Authentication-Context", 611, 10415, VM, OctetString);
    SIP_AUTH_DATA_ITEM = ("SIP-Auth-Data-Item", 612, 10415, VM, Grouped);
    SIP_ITEM_NUMBER = ("SIP-Item-Number", 613, 10415, VM, Unsigned32);
    SERVER_ASSIGNMENT_TYPE = ("Server-Assignment-Type", 614, 10415, VM, Enumerated);
    DEREGISTRATION_REASON = ("Deregistration-Reason", 615, 10415, VM, Grouped);
    REASON_CODE = ("Reason-Code", 616, 10415, VM, Enumerated);
    REASON_INFO = ("Reason-Info", 617, 10415, VM, Utf8String);
    CHARGING_INFORMATION = ("Charging-Information", 618, 10415, VM, Grouped);
    PRIMARY_EVENT_CHARGING_FUNCTION_NAME = ("Primary-Event-Charging-Function-Name", 619, 10415, VM, DiameterUri);
    SECONDARY_EVENT_CHARGING_FUNCTION_NAME = ("Secondary-Event-Charging-Function-Name", 620, 10415, VM, DiameterUri);
    PRIMARY_CHARGING_COLLECTION_FUNCTION_NAME = ("Primary-Charging-Collection-Function-Name", 621, 10415, VM, DiameterUri);
    SECONDARY_CHARGING_COLLECTION_FUNCTION_NAME = ("Secondary-Charging-Collection-Function-Name", 622, 10415, VM, DiameterUri);
    USER_AUTHORIZATION_TYPE = ("User-Authorization-Type", 623, 10415, VM, Enumerated);
    USER_DATA_ALREADY_AVAILABLE = ("User-Data-Already-Available", 624, 10415, VM, Enumerated);
    CONFIDENTIALITY_KEY = ("Confidentiality-Key", 625, 10415, VM, OctetString);
    INTEGRITY_KEY = ("Integrity-Key", 626, 10415, VM, OctetString);
    SUPPORTED_FEATURES = ("Supported-Features", 628, 10415, V, Grouped);
    FEATURE_LIST_ID = ("Feature-List-ID", 629, 10415, V, Unsigned32);
    FEATURE_LIST = ("Feature-List", 630, 10415, V, Unsigned32);
    SUPPORTED_APPLICATIONS = ("Supported-Applications", 631, 10415, VM, Grouped);
    ASSOCIATED_IDENTITIES = ("Associated-Identities", 632, 10415, VM, Grouped);
    ORIGINATING_REQUEST = ("Originating-Request", 633, 10415, VM, Enumerated);
    WILDCARDED_PUBLIC_IDENTITY = ("Wildcarded-Public-Identity", 634, 10415, VM, Utf8String);
    SIP_DIGEST_AUTHENTICATE = ("SIP-Digest-Authenticate", 635, 10415, V, Grouped);
    WILDCARDED_IMPU = ("Wildcarded-IMPU", 636, 10415, V, Utf8String);
    UAR_FLAGS = ("UAR-Flags", 637, 10415, V, Unsigned32);
    LOOSE_ROUTE_INDICATION = ("Loose-Route-Indication", 638, 10415, V, Enumerated);
    SCSCF_RESTORATION_INFO = ("SCSCF-Restoration-Info", 639, 10415, V, Grouped);
    PATH = ("Path", 640, 10415, V, OctetString);
    CONTACT = ("Contact", 641, 10415, V, OctetString);
    SUBSCRIPTION_INFO = ("Subscription-Info", 642, 10415, V, Grouped);
    CALL_ID_SIP_HEADER = ("Call-ID-SIP-Header", 643, 10415, V, OctetString);
    FROM_SIP_HEADER = ("From-SIP-Header", 644, 10415, V, OctetString);
    TO_SIP_HEADER = ("To-SIP-Header", 645, 10415, V, OctetString);
    RECORD_ROUTE = ("Record-Route", 646, 10415, V, OctetString);
    ASSOCIATED_REGISTERED_IDENTITIES = ("Associated-Registered-Identities", 647, 10415, V, Grouped);
    MULTIPLE_REGISTRATION_INDICATION = ("Multiple-Registration-Indication", 648, 10415, V, Enumerated);
    RESTORATION_INFO = ("Restoration-Info", 649, 10415, V, Grouped);
    SESSION_PRIORITY = ("Session-Priority", 650, 10415, V, Enumerated);
    IDENTITY_WITH_EMERGENCY_REGISTRATION = ("Identity-with-Emergency-Registration", 651, 10415, V, Grouped);
    PRIVILEDGED_SENDER_INDICATION = ("Priviledged-Sender-Indication", 652, 10415, V, Enumerated);
    LIA_FLAGS = ("LIA-Flags", 653, 10415, VM, Unsigned32);
    INITIAL_CSEQ_SEQUENCE_NUMBER = ("Initial-CSeq-Sequence-Number", 654, 10415, VM, Unsigned32);
    SAR_FLAGS = ("SAR-Flags", 655, 10415, VM, Unsigned32);
}

/// Command codes.
pub mod command {
    /// Capabilities-Exchange (CER/CEA).
    pub const CAPABILITIES_EXCHANGE: u32 = 257;
    /// Device-Watchdog (DWR/DWA).
    pub const DEVICE_WATCHDOG: u32 = 280;
    /// Disconnect-Peer (DPR/DPA).
    pub const DISCONNECT_PEER: u32 = 282;
    /// Cx User-Authorization (UAR/UAA).
    pub const USER_AUTHORIZATION: u32 = 300;
    /// Cx Server-Assignment (SAR/SAA).
    pub const SERVER_ASSIGNMENT: u32 = 301;
    /// Cx Location-Info (LIR/LIA).
    pub const LOCATION_INFO: u32 = 302;
    /// Cx Multimedia-Auth (MAR/MAA).
    pub const MULTIMEDIA_AUTH: u32 = 303;
    /// Cx Registration-Termination (RTR/RTA).
    pub const REGISTRATION_TERMINATION: u32 = 304;
    /// Cx Push-Profile (PPR/PPA).
    pub const PUSH_PROFILE: u32 = 305;

    /// The command's name (as Wireshark prints it), if known.
    pub fn name(code: u32) -> Option<&'static str> {
        Some(match code {
            CAPABILITIES_EXCHANGE => "Capabilities-Exchange",
            DEVICE_WATCHDOG => "Device-Watchdog",
            DISCONNECT_PEER => "Disconnect-Peer",
            USER_AUTHORIZATION => "User-Authorization",
            SERVER_ASSIGNMENT => "Server-Assignment",
            LOCATION_INFO => "Location-Info",
            MULTIMEDIA_AUTH => "Multimedia-Auth",
            REGISTRATION_TERMINATION => "Registration-Termination",
            PUSH_PROFILE => "Push-Profile",
            _ => return None,
        })
    }
}

/// Result-Code values (RFC 6733 §7.1), carried in Result-Code (268).
pub mod result_code {
    /// 1001.
    pub const MULTI_ROUND_AUTH: u32 = 1001;
    /// 2001.
    pub const SUCCESS: u32 = 2001;
    /// 2002.
    pub const LIMITED_SUCCESS: u32 = 2002;
    /// 3001.
    pub const COMMAND_UNSUPPORTED: u32 = 3001;
    /// 3002.
    pub const UNABLE_TO_DELIVER: u32 = 3002;
    /// 3003.
    pub const REALM_NOT_SERVED: u32 = 3003;
    /// 3004.
    pub const TOO_BUSY: u32 = 3004;
    /// 3005.
    pub const LOOP_DETECTED: u32 = 3005;
    /// 3006.
    pub const REDIRECT_INDICATION: u32 = 3006;
    /// 3007.
    pub const APPLICATION_UNSUPPORTED: u32 = 3007;
    /// 3008.
    pub const INVALID_HDR_BITS: u32 = 3008;
    /// 3009.
    pub const INVALID_AVP_BITS: u32 = 3009;
    /// 3010.
    pub const UNKNOWN_PEER: u32 = 3010;
    /// 4001.
    pub const AUTHENTICATION_REJECTED: u32 = 4001;
    /// 4002.
    pub const OUT_OF_SPACE: u32 = 4002;
    /// 4003.
    pub const ELECTION_LOST: u32 = 4003;
    /// 5001.
    pub const AVP_UNSUPPORTED: u32 = 5001;
    /// 5002.
    pub const UNKNOWN_SESSION_ID: u32 = 5002;
    /// 5003.
    pub const AUTHORIZATION_REJECTED: u32 = 5003;
    /// 5004.
    pub const INVALID_AVP_VALUE: u32 = 5004;
    /// 5005.
    pub const MISSING_AVP: u32 = 5005;
    /// 5006.
    pub const RESOURCES_EXCEEDED: u32 = 5006;
    /// 5007.
    pub const CONTRADICTING_AVPS: u32 = 5007;
    /// 5008.
    pub const AVP_NOT_ALLOWED: u32 = 5008;
    /// 5009.
    pub const AVP_OCCURS_TOO_MANY_TIMES: u32 = 5009;
    /// 5010.
    pub const NO_COMMON_APPLICATION: u32 = 5010;
    /// 5011.
    pub const UNSUPPORTED_VERSION: u32 = 5011;
    /// 5012.
    pub const UNABLE_TO_COMPLY: u32 = 5012;
    /// 5013.
    pub const INVALID_BIT_IN_HEADER: u32 = 5013;
    /// 5014.
    pub const INVALID_AVP_LENGTH: u32 = 5014;
    /// 5015.
    pub const INVALID_MESSAGE_LENGTH: u32 = 5015;
    /// 5016.
    pub const INVALID_AVP_BIT_COMBO: u32 = 5016;
    /// 5017.
    pub const NO_COMMON_SECURITY: u32 = 5017;

    /// The constant's name, e.g. `DIAMETER_SUCCESS`.
    pub fn name(code: u32) -> Option<&'static str> {
        Some(match code {
            MULTI_ROUND_AUTH => "DIAMETER_MULTI_ROUND_AUTH",
            SUCCESS => "DIAMETER_SUCCESS",
            LIMITED_SUCCESS => "DIAMETER_LIMITED_SUCCESS",
            COMMAND_UNSUPPORTED => "DIAMETER_COMMAND_UNSUPPORTED",
            UNABLE_TO_DELIVER => "DIAMETER_UNABLE_TO_DELIVER",
            REALM_NOT_SERVED => "DIAMETER_REALM_NOT_SERVED",
            TOO_BUSY => "DIAMETER_TOO_BUSY",
            LOOP_DETECTED => "DIAMETER_LOOP_DETECTED",
            REDIRECT_INDICATION => "DIAMETER_REDIRECT_INDICATION",
            APPLICATION_UNSUPPORTED => "DIAMETER_APPLICATION_UNSUPPORTED",
            INVALID_HDR_BITS => "DIAMETER_INVALID_HDR_BITS",
            INVALID_AVP_BITS => "DIAMETER_INVALID_AVP_BITS",
            UNKNOWN_PEER => "DIAMETER_UNKNOWN_PEER",
            AUTHENTICATION_REJECTED => "DIAMETER_AUTHENTICATION_REJECTED",
            OUT_OF_SPACE => "DIAMETER_OUT_OF_SPACE",
            ELECTION_LOST => "ELECTION_LOST",
            AVP_UNSUPPORTED => "DIAMETER_AVP_UNSUPPORTED",
            UNKNOWN_SESSION_ID => "DIAMETER_UNKNOWN_SESSION_ID",
            AUTHORIZATION_REJECTED => "DIAMETER_AUTHORIZATION_REJECTED",
            INVALID_AVP_VALUE => "DIAMETER_INVALID_AVP_VALUE",
            MISSING_AVP => "DIAMETER_MISSING_AVP",
            RESOURCES_EXCEEDED => "DIAMETER_RESOURCES_EXCEEDED",
            CONTRADICTING_AVPS => "DIAMETER_CONTRADICTING_AVPS",
            AVP_NOT_ALLOWED => "DIAMETER_AVP_NOT_ALLOWED",
            AVP_OCCURS_TOO_MANY_TIMES => "DIAMETER_AVP_OCCURS_TOO_MANY_TIMES",
            NO_COMMON_APPLICATION => "DIAMETER_NO_COMMON_APPLICATION",
            UNSUPPORTED_VERSION => "DIAMETER_UNSUPPORTED_VERSION",
            UNABLE_TO_COMPLY => "DIAMETER_UNABLE_TO_COMPLY",
            INVALID_BIT_IN_HEADER => "DIAMETER_INVALID_BIT_IN_HEADER",
            INVALID_AVP_LENGTH => "DIAMETER_INVALID_AVP_LENGTH",
            INVALID_MESSAGE_LENGTH => "DIAMETER_INVALID_MESSAGE_LENGTH",
            INVALID_AVP_BIT_COMBO => "DIAMETER_INVALID_AVP_BIT_COMBO",
            NO_COMMON_SECURITY => "DIAMETER_NO_COMMON_SECURITY",
            _ => return None,
        })
    }
}

/// Cx Experimental-Result-Code values (TS 29.229 §6.2), carried inside Experimental-Result
/// with Vendor-Id 10415. 5001 and 5002 collide with base Result-Codes: which one is meant
/// depends on the AVP that carries it (see [`crate::AnswerResult`]).
pub mod experimental_result_code {
    /// 2001.
    pub const FIRST_REGISTRATION: u32 = 2001;
    /// 2002.
    pub const SUBSEQUENT_REGISTRATION: u32 = 2002;
    /// 2003.
    pub const UNREGISTERED_SERVICE: u32 = 2003;
    /// 2004.
    pub const SUCCESS_SERVER_NAME_NOT_STORED: u32 = 2004;
    /// 2005 (deprecated in Rel-7).
    pub const SERVER_SELECTION: u32 = 2005;
    /// 5001.
    pub const ERROR_USER_UNKNOWN: u32 = 5001;
    /// 5002.
    pub const ERROR_IDENTITIES_DONT_MATCH: u32 = 5002;
    /// 5003.
    pub const ERROR_IDENTITY_NOT_REGISTERED: u32 = 5003;
    /// 5004.
    pub const ERROR_ROAMING_NOT_ALLOWED: u32 = 5004;
    /// 5005.
    pub const ERROR_IDENTITY_ALREADY_REGISTERED: u32 = 5005;
    /// 5006.
    pub const ERROR_AUTH_SCHEME_NOT_SUPPORTED: u32 = 5006;
    /// 5007.
    pub const ERROR_IN_ASSIGNMENT_TYPE: u32 = 5007;
    /// 5008.
    pub const ERROR_TOO_MUCH_DATA: u32 = 5008;
    /// 5009.
    pub const ERROR_NOT_SUPPORTED_USER_DATA: u32 = 5009;
    /// 5010 (Kamailio only).
    pub const MISSING_USER_ID: u32 = 5010;
    /// 5011.
    pub const ERROR_FEATURE_UNSUPPORTED: u32 = 5011;
    /// 5012.
    pub const ERROR_SERVING_NODE_FEATURE_UNSUPPORTED: u32 = 5012;

    /// The constant's name, e.g. `DIAMETER_ERROR_USER_UNKNOWN`.
    pub fn name(code: u32) -> Option<&'static str> {
        Some(match code {
            FIRST_REGISTRATION => "DIAMETER_FIRST_REGISTRATION",
            SUBSEQUENT_REGISTRATION => "DIAMETER_SUBSEQUENT_REGISTRATION",
            UNREGISTERED_SERVICE => "DIAMETER_UNREGISTERED_SERVICE",
            SUCCESS_SERVER_NAME_NOT_STORED => "DIAMETER_SUCCESS_SERVER_NAME_NOT_STORED",
            SERVER_SELECTION => "DIAMETER_SERVER_SELECTION",
            ERROR_USER_UNKNOWN => "DIAMETER_ERROR_USER_UNKNOWN",
            ERROR_IDENTITIES_DONT_MATCH => "DIAMETER_ERROR_IDENTITIES_DONT_MATCH",
            ERROR_IDENTITY_NOT_REGISTERED => "DIAMETER_ERROR_IDENTITY_NOT_REGISTERED",
            ERROR_ROAMING_NOT_ALLOWED => "DIAMETER_ERROR_ROAMING_NOT_ALLOWED",
            ERROR_IDENTITY_ALREADY_REGISTERED => "DIAMETER_ERROR_IDENTITY_ALREADY_REGISTERED",
            ERROR_AUTH_SCHEME_NOT_SUPPORTED => "DIAMETER_ERROR_AUTH_SCHEME_NOT_SUPPORTED",
            ERROR_IN_ASSIGNMENT_TYPE => "DIAMETER_ERROR_IN_ASSIGNMENT_TYPE",
            ERROR_TOO_MUCH_DATA => "DIAMETER_ERROR_TOO_MUCH_DATA",
            ERROR_NOT_SUPPORTED_USER_DATA => "DIAMETER_ERROR_NOT_SUPPORTED_USER_DATA",
            MISSING_USER_ID => "DIAMETER_MISSING_USER_ID",
            ERROR_FEATURE_UNSUPPORTED => "DIAMETER_ERROR_FEATURE_UNSUPPORTED",
            ERROR_SERVING_NODE_FEATURE_UNSUPPORTED => {
                "DIAMETER_ERROR_SERVING_NODE_FEATURE_UNSUPPORTED"
            }
            _ => return None,
        })
    }
}

macro_rules! dia_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $val:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum $name {
            $($(#[$vm])* $var = $val),*
        }
        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$var),*];
            /// The variant for a wire value, `None` when unknown.
            pub fn from_i32(v: i32) -> Option<Self> {
                match v {
                    $($val => Some(Self::$var),)*
                    _ => None,
                }
            }
        }
        impl From<$name> for i32 {
            fn from(v: $name) -> i32 {
                v as i32
            }
        }
    };
}

dia_enum! {
    /// Auth-Session-State (277).
    AuthSessionState { StateMaintained = 0, NoStateMaintained = 1 }
}
dia_enum! {
    /// Disconnect-Cause (273).
    DisconnectCause { Rebooting = 0, Busy = 1, DoNotWantToTalkToYou = 2 }
}
dia_enum! {
    /// User-Authorization-Type (623).
    UserAuthorizationType { Registration = 0, DeRegistration = 1, RegistrationAndCapabilities = 2 }
}
dia_enum! {
    /// Server-Assignment-Type (614).
    ServerAssignmentType {
        NoAssignment = 0, Registration = 1, ReRegistration = 2, UnregisteredUser = 3,
        TimeoutDeregistration = 4, UserDeregistration = 5,
        TimeoutDeregistrationStoreServerName = 6, UserDeregistrationStoreServerName = 7,
        AdministrativeDeregistration = 8, AuthenticationFailure = 9, AuthenticationTimeout = 10,
        DeregistrationTooMuchData = 11, AaaUserDataRequest = 12, PgwUpdate = 13, Restoration = 14,
    }
}
dia_enum! {
    /// User-Data-Already-Available (624).
    UserDataAlreadyAvailable { UserDataNotAvailable = 0, UserDataAlreadyAvailable = 1 }
}
dia_enum! {
    /// Reason-Code (616), inside Deregistration-Reason.
    ReasonCode { PermanentTermination = 0, NewServerAssigned = 1, ServerChange = 2, RemoveScscf = 3 }
}
dia_enum! {
    /// Originating-Request (633).
    OriginatingRequest { Originating = 0 }
}

//! Header names: the ones the IMS path reads are an enum (compared as integers), compact
//! forms (RFC 3261 §7.3.3 and later RFCs) map to their long form, anything else is
//! [`HeaderName::Other`] and compared case-insensitively by its bytes.

macro_rules! header_names {
    ($( $variant:ident => $canon:literal $(, $compact:literal)? ; )*) => {
        /// A header name. Known names compare as integers; [`HeaderName::Other`] marks a name
        /// we do not know (its spelling stays in the message).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum HeaderName {
            $(
                #[doc = $canon]
                $variant,
            )*
            /// Any other header; compare by its bytes.
            Other,
        }

        impl HeaderName {
            /// The canonical spelling (`Other` gives "Other").
            pub fn as_str(self) -> &'static str {
                match self {
                    $( HeaderName::$variant => $canon, )*
                    HeaderName::Other => "Other",
                }
            }

            /// Looks a name up, case-insensitively, long or compact form.
            pub fn from_bytes(name: &[u8]) -> HeaderName {
                if name.len() == 1 {
                    return match name[0].to_ascii_lowercase() {
                        $( $( c if c == $compact => HeaderName::$variant, )? )*
                        _ => HeaderName::Other,
                    };
                }
                if name.len() > MAX_LEN {
                    return HeaderName::Other;
                }
                // Hash (case-folded on the fly), then compare the zero-padded name against
                // the table row word by word: `(name | case_mask) == lower` accepts exactly
                // the two cases of each letter and the other bytes as they are.
                let mut h = hash_folded(name);
                let n_words = name.len().div_ceil(8);
                loop {
                    let i = TABLE[h] as usize;
                    if i == EMPTY as usize {
                        return HeaderName::Other;
                    }
                    let row = &ROWS[i];
                    if row.len == name.len()
                        && (0..n_words).all(|k| word(name, k) | row.mask[k] == row.lower[k])
                    {
                        return ALL[i].1;
                    }
                    h = (h + 1) % SLOTS;
                }
            }

            /// The compact form, when there is one.
            pub fn compact(self) -> Option<char> {
                match self {
                    $( $( HeaderName::$variant => Some($compact as char), )? )*
                    _ => None,
                }
            }
        }

        /// Every known name with its canonical spelling.
        const ALL: &[(&str, HeaderName)] = &[ $( ($canon, HeaderName::$variant), )* ];
    };
}

const SLOTS: usize = 512;
const EMPTY: u8 = u8::MAX;

/// Longest known name we look up (longer ones are `Other`).
const MAX_LEN: usize = 32;

const WORDS: usize = MAX_LEN / 8;

/// One known name as 64-bit words: lower-cased, and a mask with 0x20 where a letter is.
struct Row {
    len: usize,
    lower: [u64; WORDS],
    mask: [u64; WORDS],
}

/// Word `k` of a name, zero-padded past its end (a direct unaligned load when whole).
#[inline]
fn word(name: &[u8], k: usize) -> u64 {
    let s = k * 8;
    if let Some(c) = name.get(s..s + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        return u64::from_le_bytes(w);
    }
    let mut w = 0u64;
    for (j, &b) in name.get(s..).unwrap_or_default().iter().enumerate() {
        w |= u64::from(b) << (8 * j);
    }
    w
}

/// The canonical names as rows, built at compile time.
const ROWS: [Row; ALL.len()] = {
    let mut t = [const {
        Row {
            len: 0,
            lower: [0; WORDS],
            mask: [0; WORDS],
        }
    }; ALL.len()];
    let mut i = 0;
    while i < ALL.len() {
        let b = ALL[i].0.as_bytes();
        assert!(
            b.len() <= MAX_LEN,
            "a known header name is longer than MAX_LEN"
        );
        let mut j = 0;
        while j < b.len() {
            let c = b[j];
            let (lc, m) = if c.is_ascii_alphabetic() {
                (c.to_ascii_lowercase(), 0x20u8)
            } else {
                (c, 0)
            };
            t[i].lower[j / 8] |= (lc as u64) << (8 * (j % 8));
            t[i].mask[j / 8] |= (m as u64) << (8 * (j % 8));
            j += 1;
        }
        t[i].len = b.len();
        i += 1;
    }
    t
};

/// The lower-cased bytes of row `i` (for the compile-time hash).
const fn lower_byte(i: usize, j: usize) -> u8 {
    (ROWS[i].lower[j / 8] >> (8 * (j % 8))) as u8
}

/// The hash of the lower-cased name (length, first, middle and last byte), folding case on
/// the fly; the table above is built with the same function of the canonical names.
#[inline]
fn hash_folded(name: &[u8]) -> usize {
    let n = name.len();
    if n == 0 {
        return 0;
    }
    let l = |b: u8| b.to_ascii_lowercase() as usize;
    (n.wrapping_mul(37)
        ^ l(name[0]).wrapping_mul(11)
        ^ l(name[n - 1]).wrapping_mul(3)
        ^ l(name[n / 2]).wrapping_mul(5))
        % SLOTS
}

/// Slot → index into `ALL`, filled at compile time by linear probing.
const TABLE: [u8; SLOTS] = {
    let mut t = [EMPTY; SLOTS];
    let mut i = 0;
    while i < ALL.len() {
        let n = ROWS[i].len;
        let mut h = (n.wrapping_mul(37)
            ^ (lower_byte(i, 0) as usize).wrapping_mul(11)
            ^ (lower_byte(i, n - 1) as usize).wrapping_mul(3)
            ^ (lower_byte(i, n / 2) as usize).wrapping_mul(5))
            % SLOTS;
        while t[h] != EMPTY {
            h = (h + 1) % SLOTS;
        }
        t[h] = i as u8;
        i += 1;
    }
    t
};

header_names! {
    Via => "Via", b'v';
    From => "From", b'f';
    To => "To", b't';
    CallId => "Call-ID", b'i';
    CSeq => "CSeq";
    Contact => "Contact", b'm';
    Expires => "Expires";
    MaxForwards => "Max-Forwards";
    ContentLength => "Content-Length", b'l';
    ContentType => "Content-Type", b'c';
    ContentEncoding => "Content-Encoding", b'e';
    Route => "Route";
    RecordRoute => "Record-Route";
    Path => "Path";
    ServiceRoute => "Service-Route";
    PAssociatedUri => "P-Associated-URI";
    PVisitedNetworkId => "P-Visited-Network-ID";
    PChargingVector => "P-Charging-Vector";
    PChargingFunctionAddresses => "P-Charging-Function-Addresses";
    PAccessNetworkInfo => "P-Access-Network-Info";
    PAssertedIdentity => "P-Asserted-Identity";
    PPreferredIdentity => "P-Preferred-Identity";
    SecurityClient => "Security-Client";
    SecurityServer => "Security-Server";
    SecurityVerify => "Security-Verify";
    Authorization => "Authorization";
    ProxyAuthorization => "Proxy-Authorization";
    WwwAuthenticate => "WWW-Authenticate";
    ProxyAuthenticate => "Proxy-Authenticate";
    AuthenticationInfo => "Authentication-Info";
    Require => "Require";
    Supported => "Supported", b'k';
    ProxyRequire => "Proxy-Require";
    Unsupported => "Unsupported";
    Allow => "Allow";
    AllowEvents => "Allow-Events", b'u';
    Event => "Event", b'o';
    SubscriptionState => "Subscription-State";
    Accept => "Accept";
    UserAgent => "User-Agent";
    Server => "Server";
    Subject => "Subject", b's';
    ReferTo => "Refer-To", b'r';
    ReferredBy => "Referred-By", b'b';
    SessionExpires => "Session-Expires", b'x';
    AcceptContact => "Accept-Contact", b'a';
    RejectContact => "Reject-Contact", b'j';
    RequestDisposition => "Request-Disposition", b'd';
    Identity => "Identity", b'y';
    IdentityInfo => "Identity-Info", b'n';
    MinExpires => "Min-Expires";
    Date => "Date";
    Warning => "Warning";
    RetryAfter => "Retry-After";
}

impl HeaderName {
    /// Headers whose values RFC 3261 §7.3.1 allows to combine on one line with commas
    /// (the ones we know to be lists). The auth headers are not: their commas separate
    /// parameters.
    pub fn is_list(self) -> bool {
        use HeaderName::*;
        matches!(
            self,
            Via | Contact
                | Route
                | RecordRoute
                | Path
                | ServiceRoute
                | PAssociatedUri
                | PVisitedNetworkId
                | PAssertedIdentity
                | PPreferredIdentity
                | SecurityClient
                | SecurityServer
                | SecurityVerify
                | Require
                | Supported
                | ProxyRequire
                | Unsupported
                | Allow
                | AllowEvents
                | Accept
                | ContentEncoding
                | AcceptContact
                | RejectContact
                | Warning
        )
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderName as H;

    #[test]
    fn long_compact_and_case() {
        assert_eq!(H::from_bytes(b"via"), H::Via);
        assert_eq!(H::from_bytes(b"V"), H::Via);
        assert_eq!(H::from_bytes(b"CALL-id"), H::CallId);
        assert_eq!(H::from_bytes(b"i"), H::CallId);
        assert_eq!(H::from_bytes(b"l"), H::ContentLength);
        assert_eq!(H::from_bytes(b"www-authenticate"), H::WwwAuthenticate);
        assert_eq!(H::from_bytes(b"X-Foo"), H::Other);
        assert_eq!(H::from_bytes(b"q"), H::Other);
        assert_eq!(H::Contact.compact(), Some('m'));
        assert_eq!(H::PAssociatedUri.as_str(), "P-Associated-URI");
        for (canon, hn) in super::ALL {
            assert_eq!(H::from_bytes(canon.as_bytes()), *hn, "{canon}");
            assert_eq!(
                H::from_bytes(canon.to_uppercase().as_bytes()),
                *hn,
                "{canon}"
            );
            assert_eq!(
                H::from_bytes(canon.to_lowercase().as_bytes()),
                *hn,
                "{canon}"
            );
            let mut near = canon.to_lowercase().into_bytes();
            near[0] ^= 1;
            assert_ne!(H::from_bytes(&near), *hn, "{canon}");
        }
        assert_eq!(H::from_bytes(&[b'a'; 40]), H::Other);
        assert_eq!(H::from_bytes(b""), H::Other);
    }
}

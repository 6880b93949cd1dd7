//! Request methods: the RFC 3261 ones and the extensions IMS uses are an enum; anything else
//! is [`Method::Other`] and its spelling stays in the message (methods are case-sensitive).

macro_rules! methods {
    ($( $variant:ident => $s:literal; )*) => {
        /// A SIP request method.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Method {
            $( #[doc = $s] $variant, )*
            /// An extension method (its token is in the message).
            Other,
        }

        impl Method {
            /// Exact, case-sensitive match (RFC 3261 §7.1).
            pub fn from_bytes(b: &[u8]) -> Method {
                match b {
                    $( x if x == $s.as_bytes() => Method::$variant, )*
                    _ => Method::Other,
                }
            }

            /// The method's token ("Other" for an extension).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Method::$variant => $s, )*
                    Method::Other => "Other",
                }
            }
        }
    };
}

methods! {
    Register => "REGISTER";
    Invite => "INVITE";
    Ack => "ACK";
    Bye => "BYE";
    Cancel => "CANCEL";
    Options => "OPTIONS";
    Subscribe => "SUBSCRIBE";
    Notify => "NOTIFY";
    Publish => "PUBLISH";
    Message => "MESSAGE";
    Update => "UPDATE";
    Info => "INFO";
    Prack => "PRACK";
    Refer => "REFER";
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

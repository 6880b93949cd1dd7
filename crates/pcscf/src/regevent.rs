//! The P-CSCF's own subscription to the `reg` event package of each UE it registers
//! (TS 24.229 §5.2.3, RFC 3680), so that a deregistration the network starts (the HSS's RTR
//! at the S-CSCF, an administrative deregistration) also ends the UE's registration here, and
//! with it its IPsec SAs, instead of leaving both until they expire.
//!
//! - After the 200 OK of a UE's initial registration the P-CSCF sends a SUBSCRIBE for the
//!   registered public identity (Request-URI and To) along the UE's Service-Route, From and
//!   P-Asserted-Identity our own URI (`sip:<via_host>:<port>`, which the S-CSCF finds on the
//!   registration's Path), `Event: reg`, `Accept: application/reginfo+xml`, an `Expires`
//!   beyond the registration's, and a numeric Contact (the S-CSCF needs no DNS to reach it).
//!   A re-registration that outlives the subscription refreshes it inside its dialog.
//! - A NOTIFY of one of our subscriptions (matched by its Call-ID, which only the S-CSCF has
//!   seen) is answered 200; its reginfo document ([`terminated_contacts`]) names the contacts
//!   the network ended (`state="terminated"`, or every contact of a terminated `<registration>`,
//!   not those the UE removed itself):
//!   the P-CSCF forgets them (after 3 s, for the S-CSCF's NOTIFY to the UE's own subscription
//!   to reach it), and a UE left without contacts loses its registration and SAs.
//!   A NOTIFY without a document ends no contact; `Subscription-State: terminated` ends our
//!   subscription. A subscription past half of what the S-CSCF granted is refreshed inside
//!   its dialog while the registration outlives it; a refresh answered 481 (an S-CSCF that
//!   restarted keeps no subscription) is followed at once by a new subscription, and a
//!   SUBSCRIBE answered 423 is sent again asking for the Min-Expires.
//!
//! The reginfo reader is quick-xml (no DTD, no external entities); anything it cannot read is
//! a [`RegInfoError`] and the NOTIFY gets 400.

use std::time::{Duration, Instant};

use ims_net::shards::Shards;
use quick_xml::events::Event;
use quick_xml::reader::Reader;

use crate::registrations::{Flow, contact_key};

/// The largest reginfo document read.
pub const MAX_DOC: usize = 256 * 1024;

/// Why a reginfo document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reginfo: {0}")]
pub struct RegInfoError(pub String);

/// The `host:port` keys ([`contact_key`]) of the contacts a reginfo document says the
/// network ended: `<contact state="terminated">`, and every contact of a
/// `<registration state="terminated">`, except those with `event="unregistered"`: the UE
/// removed those itself, and the P-CSCF acts on that REGISTER's 200 when it passes. (The
/// NOTIFY takes one hop from the S-CSCF, the 200 two; acting on the NOTIFY would remove the
/// UE's SAs before its 200 went out through them.) Duplicates (one per identity of an
/// implicit set) are removed.
pub fn terminated_contacts(doc: &[u8]) -> Result<Vec<String>, RegInfoError> {
    if doc.len() > MAX_DOC {
        return Err(RegInfoError(format!("longer than {MAX_DOC} bytes")));
    }
    let text = std::str::from_utf8(doc).map_err(|e| RegInfoError(e.to_string()))?;
    let mut r = Reader::from_str(text);
    r.config_mut().check_end_names = true;
    let mut root = false;
    // The state of the open <registration>, of the open <contact>, and whether we are in
    // its <uri> (collecting text).
    let mut registration_ended = false;
    let mut contact_ended: Option<bool> = None;
    let mut uri: Option<String> = None;
    let mut out: Vec<String> = Vec::new();
    loop {
        let ev = r
            .read_event()
            .map_err(|e| RegInfoError(format!("at byte {}: {e}", r.buffer_position())))?;
        match ev {
            Event::Start(e) | Event::Empty(e) => {
                let name = e.local_name();
                let attr = |name: &str| -> Result<Option<String>, RegInfoError> {
                    for a in e.attributes() {
                        let a = a.map_err(|e| RegInfoError(e.to_string()))?;
                        if a.key.local_name().as_ref() == name {
                            return Ok(Some(a.value.trim().to_ascii_lowercase()));
                        }
                    }
                    Ok(None)
                };
                let state = || attr("state");
                match name.as_ref() {
                    "reginfo" => root = true,
                    "registration" => {
                        registration_ended = state()?.as_deref() == Some("terminated");
                    }
                    "contact" => {
                        let ended = registration_ended || state()?.as_deref() == Some("terminated");
                        let by_ue = attr("event")?.as_deref() == Some("unregistered");
                        contact_ended = Some(ended && !by_ue);
                    }
                    "uri" if contact_ended.is_some() => uri = Some(String::new()),
                    _ => {}
                }
            }
            Event::Text(t) => {
                if let Some(u) = uri.as_mut() {
                    u.push_str(&t.xml10_content());
                }
            }
            Event::CData(t) => {
                if let Some(u) = uri.as_mut() {
                    u.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(g) => {
                if let Some(u) = uri.as_mut() {
                    let c = match g.resolve_char_ref() {
                        Ok(Some(c)) => c,
                        _ => match &*g {
                            "amp" => '&',
                            "lt" => '<',
                            "gt" => '>',
                            "quot" => '"',
                            "apos" => '\'',
                            other => {
                                return Err(RegInfoError(format!("unknown entity &{other};")));
                            }
                        },
                    };
                    u.push(c);
                }
            }
            Event::End(e) => match e.local_name().as_ref() {
                "uri" => {
                    if let (Some(u), Some(true)) = (uri.take(), contact_ended)
                        && let Some(k) = contact_key(u.trim())
                        && !out.contains(&k)
                    {
                        out.push(k);
                    }
                }
                "contact" => contact_ended = None,
                "registration" => registration_ended = false,
                _ => {}
            },
            Event::DocType(_) => return Err(RegInfoError("a DOCTYPE is not accepted".into())),
            Event::Eof => break,
            _ => {}
        }
    }
    if !root {
        return Err(RegInfoError("no <reginfo> element".into()));
    }
    Ok(out)
}

/// One subscription of ours.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The UE flow it watches.
    pub flow: Flow,
    /// The public identity subscribed to (Request-URI and To).
    pub impu: String,
    /// Our From tag.
    pub local_tag: String,
    /// The S-CSCF's To tag, once its 200 came.
    pub remote_tag: Option<String>,
    /// The S-CSCF's Contact (the in-dialog Request-URI), once its 200 came.
    pub remote_target: Option<String>,
    /// Our last CSeq.
    pub cseq: u32,
    /// When it lapses.
    pub expires_at: Instant,
    /// How long the S-CSCF granted it for (refreshed past half of it).
    pub granted: Duration,
    /// A SUBSCRIBE of it is in flight.
    pub pending: bool,
}

/// Our subscriptions by Call-ID, with an index from the UE flow to the Call-ID.
#[derive(Default)]
pub struct Subscriptions {
    by_call: Shards<String, Subscription>,
    by_flow: Shards<Flow, String>,
}

impl Subscriptions {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records (or replaces) the subscription `call_id`.
    pub fn put(&self, call_id: &str, sub: Subscription) {
        let flow = sub.flow;
        self.by_flow
            .with(&flow, |m| m.insert(flow, call_id.to_owned()));
        self.by_call
            .with(call_id, move |m| m.insert(call_id.to_owned(), sub));
    }

    /// The subscription `call_id`.
    pub fn get(&self, call_id: &str) -> Option<Subscription> {
        self.by_call
            .with(call_id, |m| m.get(call_id).cloned())
            .flatten()
    }

    /// The Call-ID of the subscription watching `flow`.
    pub fn for_flow(&self, flow: &Flow) -> Option<String> {
        self.by_flow.with(flow, |m| m.get(flow).cloned()).flatten()
    }

    /// Updates the subscription `call_id` in place; false when there is none.
    pub fn update(&self, call_id: &str, f: impl FnOnce(&mut Subscription)) -> bool {
        self.by_call
            .with(call_id, |m| m.get_mut(call_id).map(f).is_some())
            .unwrap_or(false)
    }

    /// Starts a SUBSCRIBE inside the dialog `call_id`: unless one is in flight already,
    /// marks it pending and returns it with its CSeq advanced.
    pub fn begin(&self, call_id: &str) -> Option<Subscription> {
        self.by_call
            .with(call_id, |m| {
                let s = m.get_mut(call_id)?;
                if s.pending {
                    return None;
                }
                s.pending = true;
                s.cseq = s.cseq.wrapping_add(1);
                Some(s.clone())
            })
            .flatten()
    }

    /// The established subscriptions past half their granted time, none in flight.
    pub fn due(&self, now: Instant) -> Vec<Subscription> {
        self.by_call.collect(|_, s| {
            (!s.pending
                && s.remote_target.is_some()
                && s.expires_at.saturating_duration_since(now) <= s.granted / 2)
                .then(|| s.clone())
        })
    }

    /// Forgets the subscription `call_id`.
    pub fn remove(&self, call_id: &str) -> Option<Subscription> {
        let sub = self
            .by_call
            .with(call_id, |m| m.remove(call_id))
            .flatten()?;
        self.by_flow.with(&sub.flow, |m| {
            if m.get(&sub.flow).map(String::as_str) == Some(call_id) {
                m.remove(&sub.flow);
            }
        });
        Some(sub)
    }

    /// Forgets the lapsed subscriptions; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let gone = self
            .by_call
            .collect(|c, s| (s.expires_at <= now).then(|| c.clone()));
        for c in &gone {
            self.remove(c);
        }
        gone.len()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.by_call.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.by_call.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What our S-CSCF sends after an RTR (trimmed): bob's implicit set, his contact ended.
    const DEACTIVATED: &str = r#"<?xml version="1.0"?>
<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="3" state="full">
  <registration aor="sip:bob@hims.net" id="a1" state="terminated">
    <contact id="c1" state="terminated" event="deactivated" expires="0">
      <uri>sip:bob@10.10.1.2:5170</uri>
    </contact>
  </registration>
  <registration aor="tel:+15550002" id="a2" state="terminated">
    <contact id="c2" state="terminated" event="deactivated"><uri>sip:bob@10.10.1.2:5170</uri></contact>
  </registration>
</reginfo>"#;

    #[test]
    fn ended_contacts_once_each() {
        assert_eq!(
            terminated_contacts(DEACTIVATED.as_bytes()).unwrap(),
            vec!["10.10.1.2:5170".to_owned()]
        );
    }

    #[test]
    fn active_contacts_are_not_ended() {
        let doc = r#"<r:reginfo xmlns:r="urn:ietf:params:xml:ns:reginfo" version="0" state="full">
  <r:registration aor="sip:alice@hims.net" id="a" state="active">
    <r:contact id="1" state="active" event="registered"><r:uri>sip:alice@[fd00::1]:5100</r:uri></r:contact>
    <r:contact id="2" state="terminated" event="expired"><r:uri><![CDATA[sip:alice@10.0.0.1:5200;transport=tcp]]></r:uri></r:contact>
    <r:contact id="3" state="terminated" event="rejected"><r:uri>sip:alice@host&#46;example:5300;a=1&amp;b</r:uri></r:contact>
  </r:registration>
</r:reginfo>"#;
        assert_eq!(
            terminated_contacts(doc.as_bytes()).unwrap(),
            vec!["10.0.0.1:5200".to_owned(), "host.example:5300".to_owned()]
        );
        // The UE's own deregistration is left to its REGISTER's 200.
        let by_ue = DEACTIVATED.replace("deactivated", "unregistered");
        assert!(terminated_contacts(by_ue.as_bytes()).unwrap().is_empty());
    }

    #[test]
    fn bad_documents_are_errors() {
        for (doc, why) in [
            ("", "no <reginfo>"),
            ("<reginfo><registration></reginfo>", "mismatch"),
            ("<!DOCTYPE x [<!ENTITY a \"b\">]><reginfo/>", "DOCTYPE"),
            (
                "<reginfo><registration state=\"terminated\"><contact><uri>&boom;</uri></contact></registration></reginfo>",
                "entity",
            ),
            ("<other/>", "no <reginfo>"),
        ] {
            let e = terminated_contacts(doc.as_bytes()).unwrap_err();
            assert!(!e.0.is_empty(), "{why}: {e}");
        }
        assert!(terminated_contacts(&[0xff, 0xfe]).is_err());
        assert!(terminated_contacts(&vec![b' '; MAX_DOC + 1]).is_err());
    }

    #[test]
    fn subscriptions_by_call_and_flow() {
        let s = Subscriptions::new();
        let flow = Flow {
            addr: "10.0.0.1:5100".parse().unwrap(),
            transport: ims_net::dns::Transport::Udp,
        };
        let now = Instant::now();
        s.put(
            "c1",
            Subscription {
                flow,
                impu: "sip:alice@hims.net".into(),
                local_tag: "t".into(),
                remote_tag: None,
                remote_target: None,
                cseq: 1,
                expires_at: now + Duration::from_secs(60),
                granted: Duration::from_secs(60),
                pending: false,
            },
        );
        assert_eq!(s.for_flow(&flow).as_deref(), Some("c1"));
        assert!(s.update("c1", |x| x.remote_tag = Some("r".into())));
        assert_eq!(s.get("c1").unwrap().remote_tag.as_deref(), Some("r"));
        // Due past half its time, once it has a dialog; one refresh in flight at a time.
        assert!(
            s.due(now + Duration::from_secs(31)).is_empty(),
            "no dialog yet"
        );
        assert!(s.update("c1", |x| x.remote_target = Some("sip:10.0.0.9".into())));
        assert!(s.due(now + Duration::from_secs(29)).is_empty());
        assert_eq!(s.due(now + Duration::from_secs(31)).len(), 1);
        assert_eq!(s.begin("c1").unwrap().cseq, 2);
        assert!(s.begin("c1").is_none(), "pending");
        assert!(s.due(now + Duration::from_secs(31)).is_empty());
        assert!(s.update("c1", |x| x.pending = false));
        assert_eq!(s.expire(now), 0);
        assert_eq!(s.expire(now + Duration::from_secs(61)), 1);
        assert!(s.is_empty() && s.for_flow(&flow).is_none());
    }
}

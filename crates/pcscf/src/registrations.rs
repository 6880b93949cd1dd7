//! What the P-CSCF remembers of each registered UE (TS 24.229 §5.2.2.4): the flow it
//! registered from (source address and transport), its contacts, the public identities the
//! 200 OK listed in P-Associated-URI, the Service-Route to use for its requests, and when it
//! expires. Kept in fixed shards of small maps keyed by the UE's flow, with a second index
//! from contact `host:port` to the flow for requests toward the UE. No lock is held across an
//! await.
//!
//! With a store ([`Registrations::with_journal`], `database` in the config), every change is
//! queued for it ([`crate::persist`]) while the shard holding the flow is locked, so the
//! store sees each flow's changes in the order memory made them.

use std::net::SocketAddr;
use std::time::Instant;

use ims_net::dns::Transport;
use ims_net::shards::Shards;
use ims_store::PcscfWrite;
use tokio::sync::oneshot;

use crate::persist::{Clock, Committed, Journal, flow_key};

/// The UE's flow: where its requests come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Source address of the UE's requests.
    pub addr: SocketAddr,
    /// Transport they come on.
    pub transport: Transport,
}

/// One registered UE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The flow.
    pub flow: Flow,
    /// Contact URIs (as registered) with their expiry.
    pub contacts: Vec<(String, Instant)>,
    /// P-Associated-URI values: the first is the default public identity.
    pub associated: Vec<String>,
    /// Service-Route values, in order.
    pub service_route: Vec<String>,
    /// The private identity that registered.
    pub impi: String,
    /// The UE's protected server port (`port_us`) when it registered through IPsec SAs:
    /// requests toward it go there from our protected client port.
    pub ipsec_port_us: Option<u16>,
    /// The flow is gone: the registration came back from the store after a restart, and it
    /// was made over TCP (the connection died with the old process) or through IPsec SAs
    /// (removed at start). Requests toward the UE get 430 Flow Failed ([`crate::persist`]).
    pub flow_lost: bool,
}

impl Registration {
    /// The latest contact expiry.
    pub fn expires(&self) -> Option<Instant> {
        self.contacts.iter().map(|c| c.1).max()
    }

    /// Whether `uri` (a P-Preferred-Identity, a From) is one of the UE's identities.
    pub fn owns(&self, uri: &str) -> bool {
        self.associated.iter().any(|a| same_uri(a, uri))
    }
}

/// Compares two URIs as the P-CSCF needs (scheme, user and host, case-insensitive host).
pub fn same_uri(a: &str, b: &str) -> bool {
    let strip = |s: &str| {
        let s = s.trim().trim_start_matches('<');
        let s = s.split(['>', ';']).next().unwrap_or(s);
        s.to_ascii_lowercase()
    };
    strip(a) == strip(b)
}

/// The `host:port` of a contact URI, lower-cased, port 5060 when absent.
pub fn contact_key(uri: &str) -> Option<String> {
    let u = ims_sip::Uri::parse(uri).ok()?;
    let s = u.as_sip()?;
    Some(format!(
        "{}:{}",
        s.host_str.to_ascii_lowercase(),
        s.port.unwrap_or(5060)
    ))
}

/// The registered UEs.
#[derive(Default)]
pub struct Registrations {
    by_flow: Shards<Flow, Registration>,
    by_contact: Shards<String, Flow>,
    /// Where changes go to the store, when there is one.
    journal: Option<Journal>,
}

impl Registrations {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty, every change queued for the store through `journal`.
    pub fn with_journal(journal: Journal) -> Self {
        Self {
            journal: Some(journal),
            ..Self::default()
        }
    }

    /// Queues the save of `reg` (`wait`: returns the receiver of its commit).
    fn save(&self, reg: &Registration, wait: bool) -> Option<oneshot::Receiver<Committed>> {
        let j = self.journal.as_ref()?;
        j.queue(PcscfWrite::Save(Clock::now().record(reg)), wait)
    }

    /// Queues the deletion of `flow`'s registration.
    fn delete(&self, flow: &Flow) {
        if let Some(j) = &self.journal {
            j.queue(PcscfWrite::Delete(flow_key(flow)), false);
        }
    }

    /// Puts back registrations read from the store at start, without writing them again.
    pub fn restore(&self, regs: Vec<Registration>) {
        for reg in regs {
            self.index(&reg);
            let flow = reg.flow;
            self.by_flow.with(&flow, move |m| m.insert(flow, reg));
        }
    }

    fn index(&self, reg: &Registration) {
        for (c, _) in &reg.contacts {
            if let Some(k) = contact_key(c) {
                self.by_contact
                    .with(k.as_str(), |m| m.insert(k.clone(), reg.flow));
            }
        }
    }

    /// Forgets `key` in the contact index if it still points at `flow`.
    fn unindex(&self, key: &str, flow: &Flow) {
        self.by_contact.with(key, |m| {
            if m.get(key) == Some(flow) {
                m.remove(key);
            }
        });
    }

    /// Stores (or replaces) the registration of `reg.flow`; with a store, returns the
    /// receiver that tells when the change is committed there.
    pub fn put(&self, reg: Registration) -> Option<oneshot::Receiver<Committed>> {
        self.index(&reg);
        let flow = reg.flow;
        self.by_flow
            .with(&flow, move |m| {
                let committed = self.save(&reg, true);
                m.insert(flow, reg);
                committed
            })
            .flatten()
    }

    /// The registration of a flow, unless expired.
    pub fn get(&self, flow: &Flow, now: Instant) -> Option<Registration> {
        self.by_flow
            .with(flow, |m| {
                m.get(flow)
                    .filter(|r| r.expires().is_some_and(|e| e > now))
                    .cloned()
            })
            .flatten()
    }

    /// The flow that registered a contact `host:port`.
    pub fn flow_for_contact(&self, key: &str) -> Option<Flow> {
        let k = key.to_ascii_lowercase();
        self.by_contact
            .with(k.as_str(), |m| m.get(&k).copied())
            .flatten()
    }

    /// Forgets a flow's registration.
    pub fn remove(&self, flow: &Flow) -> Option<Registration> {
        let reg = self
            .by_flow
            .with(flow, |m| {
                let reg = m.remove(flow)?;
                self.delete(flow);
                Some(reg)
            })
            .flatten()?;
        for (c, _) in &reg.contacts {
            if let Some(k) = contact_key(c) {
                self.unindex(&k, flow);
            }
        }
        Some(reg)
    }

    /// Forgets one contact (`host:port`, [`contact_key`]) of a flow's registration; when it
    /// was the last, the whole registration, which is returned.
    pub fn drop_contact(&self, flow: &Flow, key: &str) -> Option<Registration> {
        self.unindex(key, flow);
        self.by_flow
            .with(flow, |m| {
                let reg = m.get_mut(flow)?;
                let before = reg.contacts.len();
                reg.contacts
                    .retain(|(c, _)| contact_key(c).as_deref() != Some(key));
                if reg.contacts.is_empty() {
                    self.delete(flow);
                    m.remove(flow)
                } else {
                    if reg.contacts.len() < before {
                        self.save(reg, false);
                    }
                    None
                }
            })
            .flatten()
    }

    /// Drops expired registrations; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let gone = self
            .by_flow
            .collect(|flow, r| r.expires().is_none_or(|e| e <= now).then_some(*flow));
        for f in &gone {
            self.remove(f);
        }
        gone.len()
    }

    /// Every registration held (a snapshot, shard by shard), expired ones not yet swept
    /// included.
    pub fn all(&self) -> Vec<Registration> {
        self.by_flow.collect(|_, r| Some(r.clone()))
    }

    /// How many UEs are registered.
    pub fn len(&self) -> usize {
        self.by_flow.len()
    }

    /// True when nobody is registered.
    pub fn is_empty(&self) -> bool {
        self.by_flow.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn contacts_dropped_one_by_one() {
        let r = Registrations::new();
        let later = Instant::now() + Duration::from_secs(60);
        let flow = Flow {
            addr: "10.0.0.2:5060".parse().unwrap(),
            transport: Transport::Udp,
        };
        r.put(Registration {
            flow,
            contacts: vec![
                ("sip:alice@10.0.0.2:5060".into(), later),
                ("sip:alice@10.0.0.2:5070;transport=tcp".into(), later),
            ],
            associated: vec!["sip:alice@hims.net".into()],
            service_route: Vec::new(),
            impi: "alice@hims.net".into(),
            ipsec_port_us: None,
            flow_lost: false,
        });
        assert!(r.drop_contact(&flow, "10.0.0.2:5060").is_none());
        assert!(r.flow_for_contact("10.0.0.2:5060").is_none());
        assert_eq!(r.flow_for_contact("10.0.0.2:5070"), Some(flow));
        assert!(
            r.drop_contact(&flow, "10.0.0.9:5060").is_none(),
            "not one of its contacts"
        );
        let gone = r.drop_contact(&flow, "10.0.0.2:5070").unwrap();
        assert_eq!(gone.impi, "alice@hims.net");
        assert!(r.flow_for_contact("10.0.0.2:5070").is_none());
        assert!(r.is_empty());
    }

    #[test]
    fn put_get_expire() {
        let r = Registrations::new();
        let now = Instant::now();
        let flow = Flow {
            addr: "10.0.0.2:5060".parse().unwrap(),
            transport: Transport::Udp,
        };
        r.put(Registration {
            flow,
            contacts: vec![(
                "sip:alice@10.0.0.2:5060".into(),
                now + Duration::from_secs(60),
            )],
            associated: vec!["sip:alice@hims.net".into(), "tel:+1234".into()],
            service_route: vec!["<sip:orig@scscf1.hims.net:5060;lr>".into()],
            impi: "alice@hims.net".into(),
            ipsec_port_us: None,
            flow_lost: false,
        });
        let got = r.get(&flow, now).unwrap();
        assert!(got.owns("<sip:ALICE@hims.net>"));
        assert!(!got.owns("sip:bob@hims.net"));
        assert_eq!(r.flow_for_contact("10.0.0.2:5060"), Some(flow));
        assert_eq!(
            contact_key("sip:a@[2001:db8::2]"),
            Some("[2001:db8::2]:5060".into())
        );
        assert!(r.get(&flow, now + Duration::from_secs(61)).is_none());
        assert_eq!(r.expire(now + Duration::from_secs(61)), 1);
        assert!(r.is_empty());
        assert_eq!(r.flow_for_contact("10.0.0.2:5060"), None);
    }
}

//! Whether a service profile has *services related to the unregistered state* (TS 29.228
//! §6.1.4.1, the LIR): the HSS answers a Location-Info-Request for an identity that is not
//! registered and has no S-CSCF with DIAMETER_UNREGISTERED_SERVICE (2003, Server-Capabilities:
//! the I-CSCF picks an S-CSCF to serve it unregistered) only when it has such services, and
//! with DIAMETER_ERROR_IDENTITY_NOT_REGISTERED (5003: the I-CSCF answers `480`) otherwise.
//!
//! TS 29.228 does not define the phrase in terms of the profile's data; the services of a
//! profile are its Initial Filter Criteria (Annex B, the XML of Annex E), and two of their
//! fields say when they apply, so this reads them:
//!
//! - **ProfilePartIndicator** (B.2.2): `0` REGISTERED (the iFC applies only while the user is
//!   registered), `1` UNREGISTERED, absent: whatever the state. REGISTERED is never an
//!   unregistered service.
//! - **The trigger point** must be able to match a request to the unregistered user: a LIR is
//!   asked for a terminating request, and TS 29.228 names its session case
//!   TERMINATING_UNREGISTERED (SessionCase `2`). The trigger point is a formula in conjunctive
//!   (ConditionTypeCNF 1) or disjunctive normal form (0) over Service Point Triggers, grouped
//!   by `Group`, each maybe negated (ConditionNegated). With the SessionCase triggers fixed
//!   to the value they take for a terminating-unregistered request and every other trigger
//!   (Request-URI, method, header, SDP) taken as able to match either way, the iFC counts
//!   when the formula can still be true. No trigger point at all matches everything.
//!
//! An iFC whose ProfilePartIndicator is absent but which triggers only on originating or
//! terminating-registered requests is therefore *not* an unregistered service (Open IMS's
//! FHoSS counts it: it looks at ProfilePartIndicator only). An LIR that carries
//! Originating-Request is answered as if the identity had unregistered services, as §6.1.4.1
//! says, without looking here.
//!
//! The answer is computed once per service profile when the subscription is loaded into
//! memory ([`crate::subscribers`]), not per LIR: the LIR is on the call path. An iFC this
//! cannot read (not well-formed XML, a ProfilePartIndicator or SessionCase that is not a
//! number) makes the profile count as having no unregistered services, with a warning at load
//! time. A SharedIFCSetID (iFCs the S-CSCF holds) says nothing here: the HSS cannot see them.

use std::collections::BTreeMap;

use quick_xml::events::Event;
use quick_xml::reader::Reader;

/// SessionCase TERMINATING_UNREGISTERED (TS 29.228 Annex B.2.2, Table B.2.2).
pub const TERMINATING_UNREGISTERED: u8 = 2;

/// ProfilePartIndicator UNREGISTERED (TS 29.228 Annex B.2.2).
const PROFILE_PART_UNREGISTERED: u8 = 1;

/// Why an iFC could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("iFC XML: {0}")]
pub struct IfcError(String);

/// One Service Point Trigger, as far as the session case goes.
#[derive(Debug, Default)]
struct Spt {
    negated: bool,
    groups: Vec<u32>,
    session_case: Option<u8>,
}

/// One TriggerPoint.
#[derive(Debug, Default)]
struct Trigger {
    cnf: bool,
    spts: Vec<Spt>,
}

impl Trigger {
    /// Whether the trigger point can be true for a request of session case `case`, the other
    /// triggers free.
    fn may_match(&self, case: u8) -> bool {
        if self.spts.is_empty() {
            return true;
        }
        // Per group, each trigger's value: known (a SessionCase trigger) or free (None).
        let mut groups: BTreeMap<u32, Vec<Option<bool>>> = BTreeMap::new();
        for s in &self.spts {
            let value = s.session_case.map(|c| (c == case) != s.negated);
            if s.groups.is_empty() {
                groups.entry(0).or_default().push(value);
            }
            for g in &s.groups {
                groups.entry(*g).or_default().push(value);
            }
        }
        let can_be_true = |v: &Option<bool>| *v != Some(false);
        if self.cnf {
            // AND of ORs: every group needs one trigger that can be true.
            groups.values().all(|g| g.iter().any(can_be_true))
        } else {
            // OR of ANDs: one group whose triggers can all be true.
            groups.values().any(|g| g.iter().all(can_be_true))
        }
    }
}

/// One InitialFilterCriteria.
#[derive(Debug, Default)]
struct Ifc {
    profile_part: Option<u8>,
    trigger: Option<Trigger>,
}

impl Ifc {
    fn unregistered_service(&self) -> bool {
        self.profile_part
            .is_none_or(|p| p == PROFILE_PART_UNREGISTERED)
            && self
                .trigger
                .as_ref()
                .is_none_or(|t| t.may_match(TERMINATING_UNREGISTERED))
    }
}

fn number(what: &str, text: &str) -> Result<u8, IfcError> {
    text.trim()
        .parse()
        .map_err(|_| IfcError(format!("{what} `{}` is not a number", text.trim())))
}

/// An xs:boolean.
fn boolean(what: &str, text: &str) -> Result<bool, IfcError> {
    match text.trim() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        other => Err(IfcError(format!("{what} `{other}` is not a boolean"))),
    }
}

/// Whether the service profile whose InitialFilterCriteria elements are `ifc_xml` (as
/// provisioned: the elements themselves, without their ServiceProfile) has a service related
/// to the unregistered state (see the module docs). No iFC: none.
pub fn has_unregistered_services(ifc_xml: &str) -> Result<bool, IfcError> {
    if ifc_xml.trim().is_empty() {
        return Ok(false);
    }
    let mut r = Reader::from_str(ifc_xml);
    r.config_mut().check_end_names = true;
    // The open elements' local names, the text of the innermost one.
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut ifc: Option<Ifc> = None;
    let mut spt: Option<Spt> = None;
    let mut any = false;
    loop {
        let ev = r
            .read_event()
            .map_err(|e| IfcError(format!("at byte {}: {e}", r.buffer_position())))?;
        let (name, empty) = match &ev {
            Event::Start(e) => (e.local_name(), false),
            Event::Empty(e) => (e.local_name(), true),
            Event::Text(t) => {
                text.push_str(&t.xml10_content());
                continue;
            }
            Event::CData(t) => {
                text.push_str(&t.xml10_content());
                continue;
            }
            // Numbers and booleans have no entities: whatever one stands for, it makes
            // the value unreadable.
            Event::GeneralRef(_) => {
                text.push('&');
                continue;
            }
            Event::End(e) => {
                let name: String = AsRef::<str>::as_ref(&e.local_name()).to_owned();
                path.pop();
                end(&name, &path, &text, &mut ifc, &mut spt, &mut any)?;
                text.clear();
                continue;
            }
            Event::DocType(_) => return Err(IfcError("a DOCTYPE is not accepted".into())),
            Event::Eof if path.is_empty() => break,
            Event::Eof => return Err(IfcError(format!("<{}> is not closed", path.join("><")))),
            _ => continue,
        };
        let name: String = AsRef::<str>::as_ref(&name).to_owned();
        text.clear();
        match name.as_str() {
            "InitialFilterCriteria" => ifc = Some(Ifc::default()),
            "TriggerPoint" => {
                if let Some(i) = ifc.as_mut() {
                    i.trigger = Some(Trigger::default());
                }
            }
            "SPT" => spt = Some(Spt::default()),
            _ => {}
        }
        if empty {
            end(&name, &path, "", &mut ifc, &mut spt, &mut any)?;
        } else {
            path.push(name);
        }
    }
    Ok(any)
}

/// The element `name` (inside `path`) ends with `text`.
fn end(
    name: &str,
    path: &[String],
    text: &str,
    ifc: &mut Option<Ifc>,
    spt: &mut Option<Spt>,
    any: &mut bool,
) -> Result<(), IfcError> {
    let parent = path.last().map(String::as_str);
    match (name, parent) {
        ("InitialFilterCriteria", _) => {
            if let Some(i) = ifc.take() {
                *any |= i.unregistered_service();
            }
        }
        ("ProfilePartIndicator", Some("InitialFilterCriteria")) => {
            if let Some(i) = ifc.as_mut() {
                i.profile_part = Some(number(name, text)?);
            }
        }
        ("ConditionTypeCNF", Some("TriggerPoint")) => {
            if let Some(t) = ifc.as_mut().and_then(|i| i.trigger.as_mut()) {
                t.cnf = boolean(name, text)?;
            }
        }
        ("SPT", _) => {
            if let (Some(s), Some(t)) = (spt.take(), ifc.as_mut().and_then(|i| i.trigger.as_mut()))
            {
                t.spts.push(s);
            }
        }
        ("ConditionNegated", Some("SPT")) => {
            if let Some(s) = spt.as_mut() {
                s.negated = boolean(name, text)?;
            }
        }
        ("Group", Some("SPT")) => {
            if let Some(s) = spt.as_mut() {
                let g = text
                    .trim()
                    .parse()
                    .map_err(|_| IfcError(format!("Group `{}` is not a number", text.trim())))?;
                s.groups.push(g);
            }
        }
        ("SessionCase", Some("SPT")) => {
            if let Some(s) = spt.as_mut() {
                s.session_case = Some(number(name, text)?);
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ifc(ppi: Option<u8>, trigger: &str) -> String {
        let ppi = ppi.map_or(String::new(), |p| {
            format!("<ProfilePartIndicator>{p}</ProfilePartIndicator>")
        });
        format!(
            "<InitialFilterCriteria><Priority>0</Priority>{trigger}\
             <ApplicationServer><ServerName>sip:as.hims.net</ServerName>\
             <DefaultHandling>0</DefaultHandling></ApplicationServer>{ppi}\
             </InitialFilterCriteria>"
        )
    }

    fn spt(negated: bool, groups: &[u32], inner: &str) -> String {
        let g: String = groups
            .iter()
            .map(|g| format!("<Group>{g}</Group>"))
            .collect();
        format!(
            "<SPT><ConditionNegated>{}</ConditionNegated>{g}{inner}</SPT>",
            u8::from(negated)
        )
    }

    fn case(c: u8) -> String {
        format!("<SessionCase>{c}</SessionCase>")
    }

    fn tp(cnf: bool, spts: &[String]) -> String {
        format!(
            "<TriggerPoint><ConditionTypeCNF>{}</ConditionTypeCNF>{}</TriggerPoint>",
            u8::from(cnf),
            spts.concat()
        )
    }

    const INVITE: &str = "<Method>INVITE</Method>";

    fn unreg(xml: &str) -> bool {
        has_unregistered_services(xml).unwrap()
    }

    #[test]
    fn no_ifc_is_no_unregistered_service() {
        assert!(!unreg(""));
        assert!(!unreg("  \n"));
        assert!(!unreg("<SharedIFCSetID>7</SharedIFCSetID>"));
    }

    /// ProfilePartIndicator: absent or UNREGISTERED counts, REGISTERED never does.
    #[test]
    fn profile_part_indicator() {
        assert!(unreg(
            "<InitialFilterCriteria><Priority>0</Priority></InitialFilterCriteria>"
        ));
        assert!(unreg("<InitialFilterCriteria/>"));
        assert!(unreg(&ifc(None, "")));
        assert!(unreg(&ifc(Some(1), "")));
        assert!(!unreg(&ifc(Some(0), "")));
        let t = tp(false, &[spt(false, &[0], &case(2))]);
        assert!(unreg(&ifc(Some(1), &t)));
        assert!(!unreg(&ifc(Some(0), &t)));
        // One iFC of several is enough.
        assert!(unreg(&[ifc(Some(0), ""), ifc(Some(1), "")].concat()));
    }

    /// The trigger point must be able to match a terminating request to an unregistered user.
    #[test]
    fn session_case_of_the_trigger_point() {
        for cnf in [false, true] {
            let one = |s: String| ifc(None, &tp(cnf, &[s]));
            assert!(unreg(&one(spt(false, &[0], &case(2)))), "cnf {cnf}");
            assert!(!unreg(&one(spt(false, &[0], &case(1)))), "cnf {cnf}");
            assert!(!unreg(&one(spt(false, &[0], &case(0)))), "cnf {cnf}");
            assert!(!unreg(&one(spt(false, &[0], &case(3)))), "cnf {cnf}");
            assert!(unreg(&one(spt(true, &[0], &case(1)))), "negated, cnf {cnf}");
            assert!(
                !unreg(&one(spt(true, &[0], &case(2)))),
                "negated, cnf {cnf}"
            );
            // A trigger point that does not look at the session case matches it.
            assert!(unreg(&one(spt(false, &[0], INVITE))), "cnf {cnf}");
        }
        // DNF: (INVITE and TERMINATING_REGISTERED) or (INVITE and TERMINATING_UNREGISTERED).
        let dnf = |second: u8| {
            tp(
                false,
                &[
                    spt(false, &[0, 1], INVITE),
                    spt(false, &[0], &case(1)),
                    spt(false, &[1], &case(second)),
                ],
            )
        };
        assert!(unreg(&ifc(None, &dnf(2))));
        assert!(!unreg(&ifc(None, &dnf(0))));
        // CNF: INVITE and (ORIGINATING or TERMINATING_REGISTERED or X).
        let cnf = |x: u8| {
            tp(
                true,
                &[
                    spt(false, &[0], INVITE),
                    spt(false, &[1], &case(0)),
                    spt(false, &[1], &case(1)),
                    spt(false, &[1], &case(x)),
                ],
            )
        };
        assert!(unreg(&ifc(None, &cnf(2))));
        assert!(!unreg(&ifc(None, &cnf(4))));
        // Without Group the triggers make one group.
        let t = format!(
            "<TriggerPoint><ConditionTypeCNF>false</ConditionTypeCNF>\
             <SPT>{INVITE}</SPT><SPT>{}</SPT></TriggerPoint>",
            case(2)
        );
        assert!(unreg(&ifc(None, &t)));
    }

    /// What cannot be read is an error (the caller counts it as no unregistered service).
    #[test]
    fn unreadable_ifc_is_an_error() {
        for bad in [
            "<InitialFilterCriteria>",
            "<InitialFilterCriteria></ServiceProfile>",
            &ifc(Some(1), "").replace(">1<", ">one<"),
            &ifc(
                None,
                &tp(false, &[spt(false, &[0], "<SessionCase>two</SessionCase>")]),
            ),
            &ifc(
                None,
                &tp(
                    false,
                    &[spt(false, &[0], "<SessionCase>&amp;</SessionCase>")],
                ),
            ),
            "<!DOCTYPE x [<!ENTITY a 'b'>]><InitialFilterCriteria/>",
        ] {
            assert!(has_unregistered_services(bad).is_err(), "{bad}");
        }
    }
}

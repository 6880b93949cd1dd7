//! The User-Data of an SAA or PPR: the TS 29.228 Annex E `IMSSubscription` document, read
//! just far enough for registration: the service profiles, and in each its public identities
//! (Identity, BarringIndication, IdentityType and the IRS number of the `Extension`).
//!
//! The reader is a small, strict XML tokenizer rather than a general XML library: it takes
//! elements, attributes (ignored), text, CDATA, comments and processing instructions;
//! namespace prefixes are dropped (`<cx:Identity>` is `Identity`); the five predefined
//! entities and character references are decoded. It refuses DOCTYPE (no entity expansion),
//! mismatched or unclosed tags, nesting deeper than [`MAX_DEPTH`] and documents longer than
//! [`MAX_LEN`], with a [`UserDataError`] naming the problem. It never panics.
//!
//! The implicit registration set of an identity ([`ImsSubscription::implicit_set`]) is the
//! identities sharing its IRS number when the document carries them (our HSS does, in the
//! `Extension`), otherwise those of the service profile that holds it; barred identities are
//! left out, and the identity itself comes first (the P-Associated-URI order).

use std::fmt;

/// The longest User-Data accepted (bytes).
pub const MAX_LEN: usize = 1 << 20;
/// The deepest element nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// Why a User-Data document could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDataError {
    /// Byte offset of the problem.
    pub offset: usize,
    /// What was wrong.
    pub why: String,
}

impl fmt::Display for UserDataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "User-Data XML at byte {}: {}", self.offset, self.why)
    }
}

impl std::error::Error for UserDataError {}

/// One public identity of a service profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicIdentity {
    /// The SIP or tel URI.
    pub identity: String,
    /// BarringIndication = 1.
    pub barred: bool,
    /// IdentityType (0 public user identity, 1 distinct PSI, 2 wildcarded PSI).
    pub identity_type: Option<u32>,
    /// The implicit registration set number (our HSS's `Extension/…/IRS`).
    pub irs: Option<i64>,
}

/// One ServiceProfile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceProfile {
    /// Its public identities, in document order.
    pub public_identities: Vec<PublicIdentity>,
}

/// The parts of an IMSSubscription registration needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImsSubscription {
    /// PrivateID.
    pub private_id: Option<String>,
    /// ServiceProfile elements, in document order.
    pub service_profiles: Vec<ServiceProfile>,
}

impl ImsSubscription {
    /// Parses a User-Data document.
    pub fn parse(xml: &[u8]) -> Result<Self, UserDataError> {
        parse(xml)
    }

    /// The implicit registration set of `impu` (see the module docs), `impu` first; `None`
    /// when the document does not list `impu`.
    pub fn implicit_set(&self, impu: &str) -> Option<Vec<String>> {
        let (pi, profile) = self.service_profiles.iter().find_map(|sp| {
            sp.public_identities
                .iter()
                .find(|p| same_uri(&p.identity, impu))
                .map(|p| (p, sp))
        })?;
        let members: Vec<&PublicIdentity> = match pi.irs {
            Some(irs) => self
                .service_profiles
                .iter()
                .flat_map(|sp| sp.public_identities.iter())
                .filter(|p| p.irs == Some(irs))
                .collect(),
            None => profile.public_identities.iter().collect(),
        };
        let mut out = vec![pi.identity.clone()];
        for p in members {
            if !p.barred && !out.iter().any(|o| same_uri(o, &p.identity)) {
                out.push(p.identity.clone());
            }
        }
        Some(out)
    }
}

/// URI equality good enough for identities: case-insensitive.
pub(crate) fn same_uri(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn err<T>(offset: usize, why: impl Into<String>) -> Result<T, UserDataError> {
    Err(UserDataError {
        offset,
        why: why.into(),
    })
}

/// The element path we care about, from the root.
fn local(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

fn parse(xml: &[u8]) -> Result<ImsSubscription, UserDataError> {
    if xml.len() > MAX_LEN {
        return err(0, format!("longer than {MAX_LEN} bytes"));
    }
    let text = match std::str::from_utf8(xml) {
        Ok(t) => t,
        Err(e) => return err(e.valid_up_to(), "not UTF-8"),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let b = text.as_bytes();
    let mut stack: Vec<String> = Vec::new();
    let mut sub = ImsSubscription::default();
    let mut root_seen = false;
    let mut content = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'<' {
            let end = memchr_lt(b, i);
            let raw = &text[i..end];
            if stack.is_empty() {
                if !raw.trim().is_empty() {
                    return err(i, "text outside the root element");
                }
            } else {
                decode_entities(raw, i, &mut content)?;
            }
            i = end;
            continue;
        }
        let rest = &text[i..];
        if rest.starts_with("<?") {
            let Some(e) = rest.find("?>") else {
                return err(i, "unclosed processing instruction");
            };
            i += e + 2;
        } else if let Some(comment) = rest.strip_prefix("<!--") {
            let Some(e) = comment.find("-->") else {
                return err(i, "unclosed comment");
            };
            i += 4 + e + 3;
        } else if let Some(cdata) = rest.strip_prefix("<![CDATA[") {
            let Some(e) = cdata.find("]]>") else {
                return err(i, "unclosed CDATA section");
            };
            if stack.is_empty() {
                return err(i, "CDATA outside the root element");
            }
            content.push_str(&cdata[..e]);
            i += 9 + e + 3;
        } else if rest.starts_with("<!") {
            return err(i, "DOCTYPE and other declarations are not accepted");
        } else if let Some(close) = rest.strip_prefix("</") {
            let Some(gt) = close.find('>') else {
                return err(i, "unclosed end tag");
            };
            let name = close[..gt].trim();
            match stack.pop() {
                Some(open) if open == name => {}
                Some(open) => {
                    return err(i, format!("</{name}> closes <{open}>"));
                }
                None => return err(i, format!("</{name}> without an open element")),
            }
            end_element(&mut sub, &stack, local(name), &content, i)?;
            content.clear();
            i += 2 + gt + 1;
        } else {
            let Some(gt) = find_tag_end(rest) else {
                return err(i, "unclosed start tag");
            };
            let inner = &rest[1..gt];
            let self_closing = inner.ends_with('/');
            let inner = inner.strip_suffix('/').unwrap_or(inner);
            let name = inner
                .split(|c: char| c.is_ascii_whitespace())
                .next()
                .unwrap_or("");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':'))
            {
                return err(i, format!("bad element name `{name}`"));
            }
            if stack.is_empty() {
                if root_seen {
                    return err(i, "a second root element");
                }
                if local(name) != "IMSSubscription" {
                    return err(i, format!("the root is <{name}>, not <IMSSubscription>"));
                }
                root_seen = true;
            }
            // The values we read are text: an element inside one (or a second
            // IMSSubscription anywhere) would be read into the wrong identity.
            if let Some(p) = parent(&stack)
                && matches!(
                    p,
                    "PrivateID" | "Identity" | "BarringIndication" | "IdentityType" | "IRS"
                )
            {
                return err(i, format!("<{name}> inside <{p}>"));
            }
            // The structure we read from stays where TS 29.228 puts it: a ServiceProfile
            // in the root, a PublicIdentity in a ServiceProfile, no second root inside.
            let misplaced = match local(name) {
                "IMSSubscription" => !stack.is_empty(),
                "ServiceProfile" => stack.len() != 1,
                "PublicIdentity" => stack.len() != 2 || parent(&stack) != Some("ServiceProfile"),
                _ => false,
            };
            if misplaced {
                return err(i, format!("<{name}> out of place"));
            }
            if stack.len() >= MAX_DEPTH {
                return err(i, format!("nested deeper than {MAX_DEPTH}"));
            }
            content.clear();
            start_element(&mut sub, &stack, local(name));
            if self_closing {
                end_element(&mut sub, &stack, local(name), "", i)?;
            } else {
                stack.push(name.to_owned());
            }
            i += gt + 1;
        }
    }
    if let Some(open) = stack.last() {
        return err(b.len(), format!("<{open}> is never closed"));
    }
    if !root_seen {
        return err(0, "no <IMSSubscription> element");
    }
    if sub.service_profiles.is_empty() {
        return err(0, "no <ServiceProfile>");
    }
    Ok(sub)
}

fn memchr_lt(b: &[u8], from: usize) -> usize {
    b[from..]
        .iter()
        .position(|&c| c == b'<')
        .map_or(b.len(), |p| from + p)
}

/// The `>` ending a start tag, skipping quoted attribute values.
fn find_tag_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices().skip(1) {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(i),
            (None, '<') => return None,
            _ => {}
        }
    }
    None
}

fn decode_entities(raw: &str, offset: usize, out: &mut String) -> Result<(), UserDataError> {
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let Some(semi) = after.find(';').filter(|&s| s <= 10) else {
            return err(offset, "an `&` that starts no entity");
        };
        let ent = &after[..semi];
        let c = match ent {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(h) = ent.strip_prefix("#x").or(ent.strip_prefix("#X")) {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = ent.strip_prefix('#') {
                    d.parse().ok()
                } else {
                    None
                };
                match code.and_then(char::from_u32) {
                    Some(c) => c,
                    None => return err(offset, format!("unknown entity `&{ent};`")),
                }
            }
        };
        out.push(c);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Ok(())
}

fn parent(stack: &[String]) -> Option<&str> {
    stack.last().map(|s| local(s))
}

fn inside(stack: &[String], name: &str) -> bool {
    stack.iter().any(|s| local(s) == name)
}

fn start_element(sub: &mut ImsSubscription, stack: &[String], name: &str) {
    match name {
        "ServiceProfile" if parent(stack) == Some("IMSSubscription") => {
            sub.service_profiles.push(ServiceProfile::default());
        }
        "PublicIdentity" if parent(stack) == Some("ServiceProfile") => {
            if let Some(sp) = sub.service_profiles.last_mut() {
                sp.public_identities.push(PublicIdentity {
                    identity: String::new(),
                    barred: false,
                    identity_type: None,
                    irs: None,
                });
            }
        }
        _ => {}
    }
}

fn current_identity<'a>(
    sub: &'a mut ImsSubscription,
    stack: &[String],
) -> Option<&'a mut PublicIdentity> {
    if !inside(stack, "PublicIdentity") || !inside(stack, "ServiceProfile") {
        return None;
    }
    sub.service_profiles
        .last_mut()
        .and_then(|sp| sp.public_identities.last_mut())
}

/// `stack` no longer holds `name` (it is the parent chain).
fn end_element(
    sub: &mut ImsSubscription,
    stack: &[String],
    name: &str,
    content: &str,
    offset: usize,
) -> Result<(), UserDataError> {
    let v = content.trim();
    match name {
        "PrivateID" if parent(stack) == Some("IMSSubscription") => {
            sub.private_id = Some(v.to_owned());
        }
        "Identity" if parent(stack) == Some("PublicIdentity") => {
            if v.is_empty() {
                return err(offset, "empty <Identity>");
            }
            if let Some(p) = current_identity(sub, stack) {
                p.identity = v.to_owned();
            }
        }
        "BarringIndication" if parent(stack) == Some("PublicIdentity") => {
            let barred = match v {
                "1" | "true" => true,
                "0" | "false" => false,
                other => return err(offset, format!("BarringIndication `{other}`")),
            };
            if let Some(p) = current_identity(sub, stack) {
                p.barred = barred;
            }
        }
        "IdentityType" => {
            let Ok(t) = v.parse::<u32>() else {
                return err(offset, format!("IdentityType `{v}` is not a number"));
            };
            if let Some(p) = current_identity(sub, stack) {
                p.identity_type = Some(t);
            }
        }
        "IRS" => {
            let Ok(n) = v.parse::<i64>() else {
                return err(offset, format!("IRS `{v}` is not a number"));
            };
            if let Some(p) = current_identity(sub, stack) {
                p.irs = Some(n);
            }
        }
        "PublicIdentity" if parent(stack) == Some("ServiceProfile") => {
            let empty = sub
                .service_profiles
                .last()
                .and_then(|sp| sp.public_identities.last())
                .is_some_and(|p| p.identity.is_empty());
            if empty {
                return err(offset, "<PublicIdentity> without <Identity>");
            }
        }
        "ServiceProfile" if parent(stack) == Some("IMSSubscription") => {
            let empty = sub
                .service_profiles
                .last()
                .is_some_and(|sp| sp.public_identities.is_empty());
            if empty {
                return err(offset, "<ServiceProfile> without <PublicIdentity>");
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HSS: &str = r#"<?xml version="1.0" encoding="UTF-8"?><IMSSubscription><PrivateID>alice.private@hims.net</PrivateID><ServiceProfile><PublicIdentity><Identity>sip:alice@hims.net</Identity><Extension><IdentityType>0</IdentityType><Extension><Extension><IRS>0</IRS></Extension></Extension></Extension></PublicIdentity><PublicIdentity><BarringIndication>1</BarringIndication><Identity>sip:barred@hims.net</Identity><Extension><IdentityType>0</IdentityType><Extension><Extension><IRS>0</IRS></Extension></Extension></Extension></PublicIdentity><PublicIdentity><Identity>tel:+4930123</Identity><Extension><IdentityType>0</IdentityType><Extension><Extension><IRS>0</IRS></Extension></Extension></Extension></PublicIdentity><PublicIdentity><Identity>sip:work@hims.net</Identity><Extension><IdentityType>0</IdentityType><Extension><Extension><IRS>1</IRS></Extension></Extension></Extension></PublicIdentity><InitialFilterCriteria><Priority>0</Priority></InitialFilterCriteria></ServiceProfile></IMSSubscription>"#;

    #[test]
    fn reads_what_our_hss_sends() {
        let s = ImsSubscription::parse(HSS.as_bytes()).unwrap();
        assert_eq!(s.private_id.as_deref(), Some("alice.private@hims.net"));
        assert_eq!(s.service_profiles.len(), 1);
        let ids = &s.service_profiles[0].public_identities;
        assert_eq!(ids.len(), 4);
        assert!(ids[1].barred);
        assert_eq!(ids[3].irs, Some(1));
        assert_eq!(
            s.implicit_set("tel:+4930123").unwrap(),
            ["tel:+4930123", "sip:alice@hims.net"]
        );
        assert_eq!(
            s.implicit_set("sip:work@hims.net").unwrap(),
            ["sip:work@hims.net"]
        );
        assert_eq!(s.implicit_set("sip:nobody@hims.net"), None);
    }

    #[test]
    fn without_irs_the_service_profile_is_the_set() {
        let x = r#"<cx:IMSSubscription xmlns:cx="urn:x"><!-- c --><PrivateID>a&amp;b</PrivateID>
            <ServiceProfile><PublicIdentity><Identity><![CDATA[sip:a@h]]></Identity></PublicIdentity>
            <PublicIdentity><Identity>sip:b@h</Identity></PublicIdentity></ServiceProfile>
            <ServiceProfile><PublicIdentity><Identity>sip:c@h</Identity></PublicIdentity></ServiceProfile>
            </cx:IMSSubscription>"#;
        let s = ImsSubscription::parse(x.as_bytes()).unwrap();
        assert_eq!(s.private_id.as_deref(), Some("a&b"));
        assert_eq!(s.implicit_set("sip:b@h").unwrap(), ["sip:b@h", "sip:a@h"]);
        assert_eq!(s.implicit_set("SIP:C@H").unwrap(), ["sip:c@h"]);
    }

    #[test]
    fn bad_documents_are_errors_not_panics() {
        for bad in [
            "",
            "<",
            "<IMSSubscription>",
            "<Other/>",
            "<IMSSubscription></Other>",
            "<IMSSubscription><ServiceProfile></ServiceProfile></IMSSubscription>",
            "<IMSSubscription><ServiceProfile><PublicIdentity></PublicIdentity></ServiceProfile></IMSSubscription>",
            "<!DOCTYPE x [<!ENTITY a 'b'>]><IMSSubscription/>",
            "<IMSSubscription>&bogus;</IMSSubscription>",
            "<IMSSubscription/><IMSSubscription/>",
            "text<IMSSubscription/>",
            "<IMSSubscription><!-- open",
            "<IMSSubscription a=\"x>",
            "<IMSSubscription><ServiceProfile><PublicIdentity><Identity>x</Identity><BarringIndication>2</BarringIndication></PublicIdentity></ServiceProfile></IMSSubscription>",
        ] {
            let e = ImsSubscription::parse(bad.as_bytes());
            assert!(e.is_err(), "{bad:?} must be refused");
        }
        let deep = format!(
            "<IMSSubscription>{}{}</IMSSubscription>",
            "<a>".repeat(100),
            "</a>".repeat(100)
        );
        assert!(ImsSubscription::parse(deep.as_bytes()).is_err());
        assert!(ImsSubscription::parse(&[0xff, 0xfe]).is_err());
        // Truncations of a good document never panic.
        for n in 0..HSS.len() {
            let _ = ImsSubscription::parse(&HSS.as_bytes()[..n]);
        }
    }

    /// Fuzz regression (userdata_xml): an IMSSubscription inside an <Identity> started a
    /// service profile of its own and took the outer identity's text, leaving the outer
    /// identity empty; the HSS's document for that did not read back.
    #[test]
    fn elements_inside_values_are_refused() {
        let nested = "<IMSSubscription>ra<ServiceProfile><PublicIdentity><Identity>F-><IMSSubscription>><ServiceProfile><PublicIdentity><Identity>\u{1}</Identity></PublicIdentity></ServiceProfile></IMSSubscription>31</Identity></PublicIdentity></ServiceProfile></IMSSubscription>";
        let e = ImsSubscription::parse(nested.as_bytes()).unwrap_err();
        assert!(e.why.contains("inside <Identity>"), "{e}");
        let inner_root = "<IMSSubscription><ServiceProfile><x><IMSSubscription/></x></ServiceProfile></IMSSubscription>";
        assert!(ImsSubscription::parse(inner_root.as_bytes()).is_err());
        // The same with a ServiceProfile inside a PublicIdentity.
        let inner_profile = "<?><IMSSubscription><ServiceProfile><PublicIdentity>/<ServiceProfile><PublicIdentity><Identity>\u{1}Q</Identity></PublicIdentity></ServiceProfile></PublicIdentity></ServiceProfile>o</IMSSubscription>";
        let e = ImsSubscription::parse(inner_profile.as_bytes()).unwrap_err();
        assert!(e.why.contains("out of place"), "{e}");
    }
}

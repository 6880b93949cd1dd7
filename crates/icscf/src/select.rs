//! S-CSCF selection by capabilities (TS 29.228 §6.7, TS 23.228 §5.4.1): every mandatory
//! capability must be present; among those, the most optional capabilities matched wins;
//! the HSS's preferred Server-Names come first; ties keep the configured order.

use crate::ScscfEntry;

/// What the HSS asked for in Server-Capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Mandatory-Capability values: all must be present.
    pub mandatory: Vec<u32>,
    /// Optional-Capability values: the more the better.
    pub optional: Vec<u32>,
    /// Server-Name values the operator prefers, in order.
    pub preferred: Vec<String>,
}

/// The configured S-CSCFs that can serve, best first, then the HSS's preferred names that
/// are not configured (they are tried first: the operator named them).
pub fn rank(scscfs: &[ScscfEntry], wanted: &Wanted) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in &wanted.preferred {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(p)) {
            out.push(p.clone());
        }
    }
    let mut able: Vec<(usize, usize, &ScscfEntry)> = scscfs
        .iter()
        .enumerate()
        .filter(|(_, s)| wanted.mandatory.iter().all(|m| s.capabilities.contains(m)))
        .map(|(i, s)| {
            let score = wanted
                .optional
                .iter()
                .filter(|o| s.capabilities.contains(o))
                .count();
            (score, i, s)
        })
        .collect();
    able.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, _, s) in able {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(&s.uri)) {
            out.push(s.uri.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(uri: &str, caps: &[u32]) -> ScscfEntry {
        ScscfEntry {
            uri: uri.into(),
            capabilities: caps.to_vec(),
        }
    }

    #[test]
    fn mandatory_filters_optional_ranks_preferred_first() {
        let list = [
            s("sip:a", &[1]),
            s("sip:b", &[1, 2, 3]),
            s("sip:c", &[1, 3]),
            s("sip:d", &[2, 3]),
        ];
        let w = Wanted {
            mandatory: vec![1],
            optional: vec![2, 3],
            preferred: vec![],
        };
        assert_eq!(rank(&list, &w), ["sip:b", "sip:c", "sip:a"]);
        let w = Wanted {
            mandatory: vec![9],
            ..w
        };
        assert!(rank(&list, &w).is_empty(), "nobody has capability 9");
        let w = Wanted {
            preferred: vec!["sip:d".into()],
            ..Wanted::default()
        };
        assert_eq!(rank(&list, &w), ["sip:d", "sip:a", "sip:b", "sip:c"]);
    }
}

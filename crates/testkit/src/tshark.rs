//! Runs tshark over a pcap and hands back what it decoded, for assertions.

use std::path::Path;
use std::process::Command;

/// What tshark made of a capture.
pub struct Decode {
    /// `tshark -V` output: every protocol tree, every field named.
    pub verbose: String,
    /// Expert-info lines at warning or error level (`-z expert,warn`), empty when clean.
    pub expert_warnings: Vec<String>,
}

/// Decodes `pcap` with tshark. `decode_as` adds `-d` rules such as `tcp.port==3868,diameter`.
pub fn decode(tshark: &Path, pcap: &Path, decode_as: &[&str]) -> Decode {
    let mut cmd = Command::new(tshark);
    cmd.arg("-n").arg("-r").arg(pcap).arg("-V");
    for d in decode_as {
        cmd.arg("-d").arg(d);
    }
    let out = cmd.output().expect("run tshark -V");
    assert!(
        out.status.success(),
        "tshark -V failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verbose = String::from_utf8_lossy(&out.stdout).into_owned();

    let mut cmd = Command::new(tshark);
    cmd.arg("-n")
        .arg("-r")
        .arg(pcap)
        .arg("-q")
        .arg("-z")
        .arg("expert,warn");
    for d in decode_as {
        cmd.arg("-d").arg(d);
    }
    let out = cmd.output().expect("run tshark -z expert");
    assert!(
        out.status.success(),
        "tshark -z expert failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expert = String::from_utf8_lossy(&out.stdout);
    let mut expert_warnings = parse_expert_table(&expert);
    // `-z expert` runs without a protocol tree, and some dissectors only raise expert items
    // while building one (e.g. Diameter's "Trailing stray characters"), so also take the
    // Warning/Error items printed in the verbose tree.
    expert_warnings.extend(parse_verbose_expert(&verbose));
    expert_warnings.dedup();
    Decode {
        verbose,
        expert_warnings,
    }
}

/// Parses `tshark -q -z expert,warn` output (tshark 4.x), which looks like:
///
/// ```text
/// Errors (1)
/// =============
///    Frequency      Group           Protocol  Summary
///            1  Malformed           Diameter  Wrong AVP(1073741856) length 266
///
/// Warns (1)
/// =============
///    Frequency      Group           Protocol  Summary
///            1  Undecoded           Diameter  Data is empty
/// ```
///
/// Returns one entry per finding row of the Errors and Warns sections, prefixed by the
/// section ("Errors: 1  Malformed  Diameter  Wrong AVP…"). Any unrecognised non-empty line is
/// kept too, so a format change makes tests fail loudly instead of passing silently.
pub fn parse_expert_table(out: &str) -> Vec<String> {
    let mut section: Option<&str> = None;
    let mut found = Vec::new();
    for line in out.lines().map(str::trim) {
        if line.is_empty() || line.chars().all(|c| c == '=') || line.starts_with("Frequency") {
            continue;
        }
        let heading = ["Errors", "Warns", "Notes", "Chats", "Comments"]
            .into_iter()
            .find(|h| line.starts_with(h) && line[h.len()..].trim_start().starts_with('('));
        if let Some(h) = heading {
            section = Some(h);
            continue;
        }
        match section {
            Some("Errors") | Some("Warns") | None => {
                found.push(format!("{}: {line}", section.unwrap_or("?")))
            }
            Some(_) => {}
        }
    }
    found
}

/// The `[Expert Info (Warning/…)…]` and `[Expert Info (Error/…)…]` lines of a `tshark -V` tree.
pub fn parse_verbose_expert(verbose: &str) -> Vec<String> {
    verbose
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("[Expert Info (Warning/") || l.starts_with("[Expert Info (Error/")
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expert_table_rows_are_found() {
        let out = "\nErrors (1)\n=============\n   Frequency      Group           Protocol  Summary\n           1  Malformed           Diameter  Wrong AVP(1073741856) length 266\n\nWarns (1)\n=============\n   Frequency      Group           Protocol  Summary\n           1  Undecoded           Diameter  Data is empty\n";
        let rows = parse_expert_table(out);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows[0].starts_with("Errors: 1") && rows[0].contains("Wrong AVP"));
        assert!(rows[1].starts_with("Warns: 1") && rows[1].contains("Data is empty"));
        assert!(parse_expert_table("").is_empty());
    }

    #[test]
    fn verbose_expert_lines_are_found() {
        let v = "  Session-Id: x\n      [Expert Info (Warning/Undecoded): Trailing stray characters]\n  [Expert Info (Chat/Sequence): SYN]\n  [Expert Info (Error/Malformed): Wrong AVP]\n";
        let rows = parse_verbose_expert(v);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows[0].contains("Trailing stray"));
    }
}

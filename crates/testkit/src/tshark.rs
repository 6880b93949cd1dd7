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
    // The expert table lists one line per finding under "Warns"/"Errors" headings; each
    // finding line starts with spaces and has a count column. Keep non-heading content lines.
    let expert_warnings = expert
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| {
            !l.starts_with('=') && !l.starts_with("Expert Info") && !l.starts_with("Frequency")
        })
        .filter(|l| !(l.ends_with("(0)") || l.starts_with("Errors (") || l.starts_with("Warns (")))
        .map(str::to_owned)
        .collect();
    Decode {
        verbose,
        expert_warnings,
    }
}

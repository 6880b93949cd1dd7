//! Test support shared by the workspace's test suites (a dev-dependency only, never shipped).
//!
//! - [`require_tool`] / [`require_root`]: the one rule for tests that need something outside
//!   Rust. Under CI (`CI` set and not `false`/`0`) a missing tool is a failure, because CI
//!   installs everything (`scripts/test`); elsewhere the test prints one loud `SKIP` line
//!   naming what is missing and returns early ([`skip`]: also appended to the file
//!   `IMS_SKIP_LOG` names, which `scripts/test` counts and prints at the end of the run,
//!   because nextest shows a skipped test as PASS and hides what it printed).
//! - [`pcap`]: writes classic pcap files with hand-made IPv4/TCP/UDP framing around payloads we
//!   encoded, so that tshark (Wireshark's dissectors) can judge our bytes.
//! - [`tshark`]: runs tshark over such a file and returns its verbose decode and expert info.
//! - [`postgres`]: a throwaway PostgreSQL cluster on a free port.
//! - [`netns`]: network-namespace topologies (a router namespace and nodes around it) for
//!   end-to-end tests, with processes, captures and cleanup (root only).
//! - [`sipp`]: fills the SIPp UE scenarios of `bin/tests/sipp/` and runs SIPp (UDP/TCP, v4/v6,
//!   optionally inside a namespace), returning its exit status and message trace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod netns;
pub mod pcap;
pub mod postgres;
pub mod sipp;
pub mod tshark;

use std::path::PathBuf;

/// True when running under CI, where every tool must be present.
pub fn in_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")),
        Err(_) => false,
    }
}

/// Finds an executable on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Prints the loud `SKIP <test>: <why>` line, and appends it to the file `IMS_SKIP_LOG`
/// names when set (the test command's count of tests that did not run).
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIP {test}: {why}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("IMS_SKIP_LOG") {
        use std::io::Write;
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            eprintln!("cannot note the skip in {}: {e}", path.to_string_lossy());
        }
    }
}

/// Returns the tool's path, or `None` after printing one loud SKIP line (outside CI).
/// Under CI a missing tool panics: CI installs what the tests need, so absence is a defect.
pub fn require_tool(test: &str, tool: &str) -> Option<PathBuf> {
    match which(tool) {
        Some(p) => Some(p),
        None if in_ci() => panic!(
            "{test}: required tool `{tool}` is not installed (CI must install it: scripts/test)"
        ),
        None => {
            skip(
                test,
                &format!("`{tool}` is not installed here; run ./scripts/test to install it"),
            );
            None
        }
    }
}

/// True when the process runs as root (effective uid 0, read from /proc), silently.
pub fn require_root_quiet() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// True when the process runs as root; otherwise prints a SKIP line (or panics under CI).
pub fn require_root(test: &str) -> bool {
    let root = require_root_quiet();
    if !root {
        if in_ci() {
            panic!("{test}: needs root, and CI runs as root");
        }
        skip(test, "needs root (network namespaces / netlink)");
    }
    root
}

/// A fresh scratch directory under the target dir (or /tmp), unique per call.
pub fn scratch_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!(
        "ims-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

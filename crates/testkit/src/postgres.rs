//! A throwaway PostgreSQL cluster for a test: `initdb` into a scratch directory, `pg_ctl start`
//! on a free loopback port, stopped (immediately) and removed on drop. PostgreSQL refuses to
//! run as root, so as root the cluster runs as the `postgres` user the Debian package creates.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running cluster; `url()` connects as the superuser with trust authentication.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

fn pg_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn run(as_postgres: bool, bin: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).output().expect("run a PostgreSQL tool")
}

impl Postgres {
    /// Starts a cluster, or returns `None` after a SKIP line when PostgreSQL is not installed
    /// (outside CI; under CI its absence is a failure).
    pub fn start(test: &str) -> Option<Self> {
        let Some(bin) = pg_bin_dir() else {
            if crate::in_ci() {
                panic!("{test}: PostgreSQL is not installed (CI must install it: scripts/test)");
            }
            crate::skip(
                test,
                "PostgreSQL is not installed here; run ./scripts/test to install it",
            );
            return None;
        };
        let as_postgres = crate::require_root_quiet();
        let dir = crate::scratch_dir("pg");
        if as_postgres {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(st.success(), "chown the scratch dir to postgres");
        }
        let data = dir.join("data");
        let d = data.to_str().unwrap();
        let out = run(
            as_postgres,
            &bin.join("initdb"),
            &[
                "-D",
                d,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            dir.display()
        );
        let log = dir.join("log");
        let out = run(
            as_postgres,
            &bin.join("pg_ctl"),
            &[
                "-D",
                d,
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Some(Self {
            dir,
            bin,
            port,
            as_postgres,
        })
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = run(
            self.as_postgres,
            &self.bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

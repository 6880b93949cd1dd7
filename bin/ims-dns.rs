//! `ims-dns`: the lab's authoritative DNS server (see crates/dns).
use std::process::ExitCode;

mod common;

fn main() -> ExitCode {
    common::daemon(
        "DNS",
        |c: &ims_dns::Config| {
            ims_dns::build_catalog(c)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        |c: &ims_dns::Config| c.log.clone(),
        |c: &ims_dns::Config| c.listen.clone(),
        ims_dns::run,
    )
}

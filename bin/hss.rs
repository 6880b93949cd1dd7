//! `hss`: the home subscriber server (see crates/hss).
use std::process::ExitCode;

mod common;

fn main() -> ExitCode {
    common::daemon(
        "HSS",
        |_: &ims_hss::Config| Ok(()),
        |c: &ims_hss::Config| c.log.clone(),
        ims_hss::run,
    )
}

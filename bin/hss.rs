//! `hss`: the home subscriber server (see crates/hss).
use std::process::ExitCode;

mod common;

fn main() -> ExitCode {
    common::daemon(
        "HSS",
        |c: &ims_hss::Config| c.checked_admin_token().map(|_| ()),
        |c: &ims_hss::Config| c.log.clone(),
        // The admin API opens after the Cx listener, so it answering means both are up;
        // probing the Cx port too would log a peer lost before its CER at every probe.
        |c: &ims_hss::Config| vec![c.admin_listen],
        ims_hss::run,
    )
}

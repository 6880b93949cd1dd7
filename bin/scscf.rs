//! `scscf`: the S-CSCF (see crates/scscf).
use std::process::ExitCode;

mod common;

fn main() -> ExitCode {
    common::daemon(
        "SCSCF",
        ims_scscf::Config::validate,
        |c: &ims_scscf::Config| c.log.clone(),
        |c: &ims_scscf::Config| vec![c.sip_listen],
        ims_scscf::run,
    )
}

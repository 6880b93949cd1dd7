//! `icscf`: the I-CSCF (see crates/icscf).
use std::process::ExitCode;

mod common;

fn main() -> ExitCode {
    common::daemon(
        "ICSCF",
        ims_icscf::Config::validate,
        |c: &ims_icscf::Config| c.log.clone(),
        |c: &ims_icscf::Config| vec![c.sip_listen],
        ims_icscf::run,
    )
}

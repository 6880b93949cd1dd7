//! `pcscf`: the P-CSCF (see crates/pcscf).
use std::process::ExitCode;

mod common;

fn main() -> ExitCode {
    common::daemon(
        "PCSCF",
        ims_pcscf::Config::validate,
        |c: &ims_pcscf::Config| c.log.clone(),
        ims_pcscf::run,
    )
}

//! `pcscf`: the P-CSCF (see crates/pcscf).
use std::process::ExitCode;

mod common;

fn main() -> ExitCode {
    common::daemon(
        "PCSCF",
        ims_pcscf::Config::validate,
        |c: &ims_pcscf::Config| c.log.clone(),
        |c: &ims_pcscf::Config| {
            std::iter::once(c.sip_listen)
                .chain(c.sip_listen_v6)
                .collect()
        },
        ims_pcscf::run,
    )
}

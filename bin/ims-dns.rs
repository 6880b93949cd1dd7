//! `ims-dns`: the lab's authoritative DNS server (see crates/dns).
use std::process::ExitCode;

use clap::Parser;

mod common;

fn main() -> ExitCode {
    let flags = common::Flags::parse();
    let cfg: ims_dns::Config = match common::config_or_exit(&flags, "DNS", |c: &ims_dns::Config| {
        ims_dns::build_catalog(c)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = ims_telemetry::init(flags.log_format, &cfg.log) {
        eprintln!("error: {e}");
        return ExitCode::from(common::EXIT_CONFIG);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(ims_dns::run(cfg, ims_telemetry::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

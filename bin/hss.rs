//! `hss`: the home subscriber server (see crates/hss).
use std::process::ExitCode;

use clap::Parser;

mod common;

fn main() -> ExitCode {
    let flags = common::Flags::parse();
    let cfg: ims_hss::Config =
        match common::config_or_exit(&flags, "HSS", |_: &ims_hss::Config| Ok(())) {
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
    match rt.block_on(ims_hss::run(cfg, ims_telemetry::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

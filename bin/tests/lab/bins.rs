//! The paths of this package's binaries, by name, for the integration tests that run them
//! (the namespace lab and the compose stack).
use std::path::PathBuf;

/// The built binary `name` of this package.
pub fn bin(name: &str) -> PathBuf {
    match name {
        "pcscf" => env!("CARGO_BIN_EXE_pcscf").into(),
        "icscf" => env!("CARGO_BIN_EXE_icscf").into(),
        "scscf" => env!("CARGO_BIN_EXE_scscf").into(),
        "hss" => env!("CARGO_BIN_EXE_hss").into(),
        "ims-dns" => env!("CARGO_BIN_EXE_ims-dns").into(),
        "imsctl" => env!("CARGO_BIN_EXE_imsctl").into(),
        "ims-ue" => env!("CARGO_BIN_EXE_ims-ue").into(),
        "ims-load" => env!("CARGO_BIN_EXE_ims-load").into(),
        other => panic!("no binary named {other} in this package"),
    }
}

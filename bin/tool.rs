//! What the command-line tools (`ims-ue`, `ims-load`) share: their key arguments and their
//! runtime. (The daemons have `common.rs`.)
use std::process::ExitCode;

/// mimalloc, as in the daemons (see `common.rs`): `ims-load` shares the machine it measures.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A 128-bit key argument (`--k`, `--op`, `--opc`) from 32 hex digits.
pub fn key(name: &str, hex_text: &str) -> Result<[u8; 16], String> {
    hex::decode(hex_text)
        .ok()
        .and_then(|v| <[u8; 16]>::try_from(v).ok())
        .ok_or_else(|| format!("--{name} must be 32 hex digits"))
}

/// The tokio runtime (one thread, or one per core), or the exit code after one error line.
pub fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut b = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

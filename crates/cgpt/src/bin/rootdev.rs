//! `rootdev -s PATH`: the partition behind the filesystem mounted at PATH (default `/`),
//! through a device-mapper device (dm-verity) to the partition beneath it.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .map_or_else(|| PathBuf::from("/"), PathBuf::from);
    match cgpt::rootdev(&path) {
        Ok(dev) => {
            let _ = writeln!(std::io::stdout().lock(), "{}", dev.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rootdev: {e}");
            ExitCode::FAILURE
        }
    }
}

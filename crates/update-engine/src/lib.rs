//! update_engine, CoreOS's updater (updates.md §3), rebuilt:
//!
//! - [`conf`]: `update.conf` and the release file, read as CoreOS read them (first file with
//!   the key wins, no trimming), plus Ferrite's `CHECK_INTERVAL` for local clusters.
//! - [`status`]: the status machine's states and `GetStatus`'s report, printed as
//!   `update_engine_client -status` printed it.
//! - [`schedule`]: when to check next — CoreOS's fuzzed schedule, `PollInterval`, doubling
//!   after 500/503, 4 h at most — as pure functions of a random number.
//! - [`prefs`]: persistent state, one file per key (`previous-version`, `aleph-version`,
//!   and Ferrite's `pending-update` and `failed-versions`).
//! - [`attempt`]: one attempt — check, download, verify the payload whole, write the
//!   passive slot and read it back, mark it as CoreOS's postinst did, report every step as
//!   Omaha events — over the [`attempt::Omaha`], [`attempt::Download`] and
//!   [`attempt::Slots`] traits; and the boot's bookkeeping (`after_boot`): an installed
//!   update that did not stay booted is a rollback, reported once (code 44), and its
//!   version is never installed again here.
//!
//! Invariants: the active slot is never written (only [`attempt::Slots::passive`] is); no
//! byte reaches the passive slot before the payload verified whole; a failure reports and
//! returns to idle, leaving the GPT bits as they were.
//!
//! - [`http`]: the update service and downloads over HTTP(S) — resumed with `Range` after a
//!   cut, bounded retries, never more bytes than offered.
//! - [`slots`]: the machine's slots — the active one from the `/usr` mount through sysfs,
//!   the passive one's own partition device, and the new image's `postinst` run from a
//!   read-only mount of it.
//! - `update_engine` (binary): the daemon on the system bus (`com.coreos.update1`), one
//!   event loop (bus commands, attempt reports, the check timer, SIGTERM), attempts on the
//!   blocking pool, `StatusUpdate` on every change and at most every 1 % or 10 s of
//!   progress; a ping instead of a check while a reboot is pending.
//! - `update_engine_client` (binary): `-status`, `-check_for_update`, `-update`,
//!   `-reset_status`, `-watch_for_updates` with CoreOS's outputs.
//!
//! Tested end to end on a QEMU machine (`crates/ferrite/tests/qemu_machines.rs`: the
//! passive slot written through its block device, marked by the new image's postinst,
//! booted) and on an nspawn machine (`tests/releases.rs`: `slots::ImageSlots`, the machine's
//! disk image that the launcher binds in and names in `/run/ferrite/slots`).
//!
//! - [`health`]: the health gate that marks a booted slot good (`ferrite-boot-health`,
//!   after `boot-complete.target`): only a slot on trial, only when the machine is healthy,
//!   never while a reboot into another update is pending; a failed gate reboots into the
//!   old slot. An update on trial is not concluded by `after_boot`, and no attempt is made
//!   on trial.
//! - `ferrite-boot-health` (binary): the gate, over `systemctl` and the services' own
//!   endpoints.
//!
//! Reboots are locksmith's (`crates/locksmith`). Next: a failure injected at each step
//! (download, verify, write, postinst, flip, reboot, mark-good) on a real machine, and
//! update_engine restarted in every state on a real machine.

pub mod attempt;
pub mod conf;
pub mod health;
pub mod http;
pub mod prefs;
pub mod schedule;
pub mod slots;
pub mod status;

use std::path::PathBuf;

/// Command-line arguments with gflags' single-dash long flags (`-status`) written as
/// `--status`, for clap; `--status` and single letters are left as they are.
pub fn gflags_args(args: impl Iterator<Item = String>) -> impl Iterator<Item = String> {
    args.map(|a| match a.strip_prefix('-') {
        Some(rest) if !rest.starts_with('-') && rest.len() > 1 => format!("--{rest}"),
        _ => a,
    })
}

/// Runs `main` on a current-thread runtime; its error (or the runtime's) is printed as
/// `<program>: <error chain>` and exits 1.
pub fn run_main<T>(
    program: &str,
    main: impl std::future::Future<Output = anyhow::Result<T>>,
    code: impl FnOnce(T) -> std::process::ExitCode,
) -> std::process::ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(main));
    match result {
        Ok(v) => code(v),
        Err(e) => {
            eprintln!("{program}: {}", host_command::error_chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An update_engine failure, naming the file or step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Writing a file.
    #[error(transparent)]
    Write(#[from] atomic_file::Error),
}

#[cfg(test)]
mod tests {
    #[test]
    fn gflags_single_dash_long_flags_become_clap_long_flags() {
        let args = [
            "update_engine_client",
            "-status",
            "--update",
            "-x",
            "-",
            "--",
        ];
        let out: Vec<String> = super::gflags_args(args.iter().map(|s| s.to_string())).collect();
        assert_eq!(
            out,
            [
                "update_engine_client",
                "--status",
                "--update",
                "-x",
                "-",
                "--"
            ]
        );
    }
}

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
//! Next (issue 12 goes on): the HTTP implementations of `Omaha` and `Download` (resume,
//! bounded retries), the machine's `Slots` (running the new image's postinst), the daemon
//! on the system bus (`com.coreos.update1`) with its event loop and schedule, and
//! `update_engine_client`.

pub mod attempt;
pub mod conf;
pub mod prefs;
pub mod schedule;
pub mod status;

use std::path::PathBuf;

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

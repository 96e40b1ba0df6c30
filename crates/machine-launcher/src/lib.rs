//! Local clusters of Ferrite machines: what `vagrant` + coreos-vagrant were for CoreOS.
//!
//! A cluster is a directory of state (`<state>/clusters/<name>/cluster.json`) and, while it
//! runs, a set of kernel objects that [`destroy`] can always find again from that state:
//!
//! - a *switch* network namespace with a bridge (`172.20.N.1/24`), so no address or route is
//!   ever added to the host's own namespace;
//! - per machine, a network namespace joined to the bridge by a veth pair, its own address
//!   `172.20.N.(100+i)` (coreos-vagrant's `172.17.8.(100+i)` scheme on a subnet clear of
//!   Docker's `172.17.0.0/16`);
//! - per machine, a disk image with the image's GPT whose ROOT partition is loop-mounted
//!   as the machine's `/`, and the USR partition chosen by GRUB's `gptprio.next` on that
//!   disk loop-mounted read-only and bound on `/usr`. An nspawn machine's disk is *thin*:
//!   a sparse copy of the image without its USR partitions, which stay holes; a USR slot
//!   the machine never wrote is the image's and is mounted from the cached image (once, for
//!   every machine booting it, so binaries' pages are shared too), a slot an update wrote
//!   from the machine's own disk. A machine costs its ROOT's tens of MiB, not the image's
//!   hundreds (a QEMU machine reads its whole disk itself, so its disk is a full sparse
//!   copy);
//! - per machine, its cgroups (one per hierarchy on a cgroup v1 host, one on a v2-only host),
//!   delegated to the machine so Docker can manage its own (see [`cgroup`]);
//! - `systemd-nspawn --boot`, systemd as PID 1, under the machine's supervisor
//!   (`ferrite __nspawn`, [`nspawn`]), which boots it again when it reboots;
//!   or, with the QEMU driver ([`Driver::Qemu`], `qemu.rs`), a virtual machine booting the
//!   kernel its chosen USR carries, on a tap device on the same bridge;
//! - when the user-data names `https://discovery.etcd.io/<token>`, a discovery service (a
//!   Debian etcd with the v2 API, in the switch namespace) and a fresh token on it.
//!
//! First boot does what CoreOS's initramfs and tmpfiles did: the ROOT skeleton, `/etc` and
//! `/var` copied from `/usr/share/factory`, a machine ID, the disk GUID randomized,
//! `/etc/environment` with `COREOS_PUBLIC_IPV4`/`COREOS_PRIVATE_IPV4`, and the user-data
//! where coreos-vagrant put it (`/var/lib/coreos-vagrant/vagrantfile-user-data`), which the
//! image's path unit hands to `coreos-cloudinit` at boot.
//!
//! Invariants: every resource is recorded in the state before it is created (the fake host
//! of the tests checks the state on disk before each creation); every process the launcher
//! starts runs in cgroups recorded before it starts, and processes are stopped only by
//! recorded PID (after checking its command line) or because they are in those cgroups;
//! nothing is configured in the host's network namespace. Every host operation goes through
//! [`Host`].
//!
//! Before anything is made, [`limits`] raises the host limits a cluster of the requested
//! size needs (inotify, PIDs, neighbour tables) or refuses, naming each; `up` then boots the
//! machines in parallel, reports each one booted with the slowest so far, and names the
//! failure a machine's console reports when it stops or hangs while booting.
//!
//! Where to read: [`boot`] (`up`: prepare, then start each machine), [`teardown`], then
//! [`cgroup`] for the two layouts.

pub mod boot;
pub mod cgroup;
pub mod discovery;
#[cfg(test)]
mod fake;
pub mod host;
pub mod limits;
pub mod nspawn;
mod provision;
pub mod qemu;
pub mod registry;
pub mod report;
mod service;
pub mod state;
pub mod teardown;
pub mod updates;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use boot::{enter, exec_in, init_pid, login, up, UpOptions};
pub use discovery::replace_discovery;
pub use host::{Host, RealHost};
pub use report::{memory, status, MachineStatus, MemoryReport};
pub use state::{lock, lock_existing, ClusterState, Discovery, Lock, MachineState};
pub use teardown::{destroy, halt};

/// The cluster key's file name, on the host and in `core`'s `~/.ssh`.
pub const CLUSTER_KEY: &str = "id_ed25519";
/// `core`'s uid and gid.
const CORE_ID: u32 = 500;

/// A launcher failure, naming the cluster, machine, path or command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host tool failed.
    #[error(transparent)]
    Command(#[from] host_command::CommandError),
    /// A process could not be started.
    #[error("starting {command}: {source}")]
    Spawn {
        /// What was being started.
        command: String,
        /// The error.
        source: std::io::Error,
    },
    /// A file written the atomic way failed (the error names the step and the path).
    #[error(transparent)]
    File(#[from] atomic_file::Error),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Cluster state that does not parse.
    #[error("{path}: invalid state: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
    /// The disk image could not be read or written.
    #[error(transparent)]
    Disk(#[from] coreos_disk::Error),
    /// An nspawn machine's ROOT could not be set up for its first boot.
    #[error("setting up {root} for its first boot")]
    FirstBoot {
        /// The mounted ROOT.
        root: PathBuf,
        /// What failed.
        source: first_boot::Error,
    },
    /// No such cluster.
    #[error("no cluster {0:?} (run ferrite up first)")]
    NoCluster(String),
    /// No such machine in the cluster.
    #[error("cluster {cluster:?} has no machine {machine:?} (it has: {known})")]
    NoMachine {
        /// The cluster.
        cluster: String,
        /// The machine asked for.
        machine: String,
        /// The machines it has.
        known: String,
    },
    /// The machine is not running.
    #[error("machine {0} is not running")]
    NotRunning(String),
    /// A command run in a machine did not end in time (it was killed).
    #[error("{command:?} in machine {machine} did not end within {seconds} s")]
    ExecTimeout {
        /// The machine.
        machine: String,
        /// The command's words.
        command: String,
        /// The limit.
        seconds: u64,
    },
    /// The machine did not finish booting in time.
    #[error("machine {machine} did not finish booting within {seconds} s{} (console: {console})", cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    BootTimeout {
        /// The machine.
        machine: String,
        /// The limit.
        seconds: u64,
        /// Its console log.
        console: PathBuf,
        /// The failure its console reports, if it reports one.
        cause: Option<String>,
    },
    /// The machine stopped while booting.
    #[error("machine {machine} stopped while booting{} (console: {console})", cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    BootDied {
        /// The machine.
        machine: String,
        /// Its console log.
        console: PathBuf,
        /// The failure its console reports, if it reports one.
        cause: Option<String>,
    },
    /// Some machines did not boot; the others run.
    #[error("{failed} of {total} machines did not boot (the others run):\n  {}", errors.join("\n  "))]
    Boots {
        failed: usize,
        total: usize,
        errors: Vec<String>,
    },
    /// A setting that cannot work.
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// Host limits too low for the cluster, which cannot be raised from here.
    #[error(
        "this host's limits are too low for the cluster, and cannot be raised from here:\n  {0}"
    )]
    Limits(String),
    /// User-data the validator finds errors in (coreos-cloudinit would refuse it at boot).
    #[error("{path}: the user-data has errors:\n{report}")]
    InvalidUserData {
        /// The file.
        path: PathBuf,
        /// The validator's report.
        report: String,
    },
    /// No free subnet for another cluster.
    #[error("{tool} is not installed ({what}); scripts/install-deps.sh installs it")]
    MissingTool {
        /// The program.
        tool: String,
        /// What needs it.
        what: String,
    },
    #[error("no free 172.20.N.0/24 subnet for another cluster")]
    NoSubnet,
}

/// `op path` errors.
pub fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the launcher keeps state.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Cluster state (`/var/lib/ferrite`).
    pub state: PathBuf,
    /// Shared runtime mounts (`/run/ferrite`).
    pub run: PathBuf,
}

impl Paths {
    /// From `FERRITE_STATE_DIR` and `FERRITE_RUN_DIR`, or the defaults.
    pub fn from_env() -> Self {
        let var =
            |k: &str, d: &str| std::env::var_os(k).map_or_else(|| PathBuf::from(d), PathBuf::from);
        Self {
            state: var("FERRITE_STATE_DIR", "/var/lib/ferrite"),
            run: var("FERRITE_RUN_DIR", "/run/ferrite"),
        }
    }

    /// Where a cluster's state lives: `<state>/clusters/<name>`.
    pub fn cluster_dir(&self, cluster: &str) -> PathBuf {
        self.state.join("clusters").join(cluster)
    }
}

/// The coreos-vagrant settings of a cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Settings {
    /// Number of machines.
    pub instances: u32,
    /// Machine name prefix (`core` → `core-01`).
    pub prefix: String,
    /// Update channel of the image.
    pub channel: String,
    /// Memory limit per machine, MiB (0: none).
    pub memory_mb: u64,
    /// How new machines run.
    #[serde(default)]
    pub driver: Driver,
}

/// How a machine runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// A `systemd-nspawn` container on the host's kernel.
    #[default]
    Nspawn,
    /// A QEMU virtual machine booting the kernel its USR partition carries.
    Qemu,
}

impl std::str::FromStr for Driver {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "nspawn" => Ok(Self::Nspawn),
            "qemu" => Ok(Self::Qemu),
            other => Err(Error::Invalid(format!("driver {other:?} (nspawn or qemu)"))),
        }
    }
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Nspawn => "nspawn",
            Self::Qemu => "qemu",
        })
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            instances: 1,
            prefix: "core".into(),
            channel: "alpha".into(),
            memory_mb: 1024,
            driver: Driver::Nspawn,
        }
    }
}

#[cfg(test)]
mod tests;

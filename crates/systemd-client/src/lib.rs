//! The systemd manager, as Ferrite's daemons and tools use it.
//!
//! [`Systemd`] is the small interface everything else programs against: enable unit files,
//! reload, run a job and wait for its result, start a transient service. Two
//! implementations:
//!
//! - [`DbusSystemd`]: the real thing, `org.freedesktop.systemd1.Manager` over the system bus
//!   (or any bus address, e.g. a machine's `/proc/<pid>/root/run/dbus/system_bus_socket`).
//!   Jobs are waited for through the `JobRemoved` signal, as coreos-cloudinit did, but with
//!   a time limit. It runs [`DbusManager`], the same calls as `async fn`s for daemons
//!   (fleetd), on a current-thread runtime of its own; a daemon uses `DbusManager` on its
//!   own runtime (zbus's tokio integration), so no second executor runs beside it.
//! - [`Recorder`]: performs nothing and records each call, for `coreos-cloudinit -root` plans
//!   and for tests.
//!
//! Invariant: no other Ferrite crate opens a D-Bus connection to systemd; and this crate
//! never touches unit files on disk (writing and masking them is the caller's business).

mod dbus;

use std::fmt;

pub use dbus::{DbusManager, DbusSystemd, UnitStatus, IN_FLIGHT};

/// A failure talking to systemd, naming the unit or call involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting to the bus failed.
    #[error("connecting to systemd at {address}: {source}")]
    Connect {
        /// The bus address, or "system bus".
        address: String,
        /// The D-Bus error.
        source: Box<zbus::Error>,
    },
    /// A manager method failed; for job calls systemd refused to enqueue the job (unit not
    /// found, masked, fails to load …).
    #[error("systemd {call} {target}: {source}")]
    Call {
        /// The D-Bus method, e.g. `StartUnit`.
        call: &'static str,
        /// The unit(s) the call was about.
        target: String,
        /// The D-Bus error.
        source: Box<zbus::Error>,
    },
}

impl Error {
    /// The D-Bus error name systemd answered with, e.g. `org.freedesktop.systemd1.NoSuchUnit`.
    pub fn dbus_name(&self) -> Option<&str> {
        match self {
            Error::Call { source, .. } => match source.as_ref() {
                zbus::Error::MethodError(name, _, _) => Some(name.as_str()),
                zbus::Error::FDO(e) => match e.as_ref() {
                    zbus::fdo::Error::ZBus(zbus::Error::MethodError(name, _, _)) => {
                        Some(name.as_str())
                    }
                    _ => None,
                },
                _ => None,
            },
            Error::Connect { .. } => None,
        }
    }

    /// Whether systemd has no such unit loaded, or could not load it (its file is missing,
    /// refused, or has a bad setting): a unit in that state runs nothing, so stopping it is
    /// already done.
    pub fn is_not_loaded(&self) -> bool {
        matches!(
            self.dbus_name(),
            Some(
                "org.freedesktop.systemd1.NoSuchUnit"
                    | "org.freedesktop.systemd1.LoadFailed"
                    | "org.freedesktop.systemd1.BadUnitSetting"
                    | "org.freedesktop.systemd1.UnitMasked"
            )
        ) || self.to_string().contains("NoSuchUnit")
    }
}

/// The job-queuing manager methods coreos-cloudinit's `command:` values map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// `StartUnit`
    Start,
    /// `StopUnit`
    Stop,
    /// `RestartUnit`
    Restart,
    /// `ReloadUnit`
    Reload,
    /// `TryRestartUnit`
    TryRestart,
    /// `ReloadOrRestartUnit`
    ReloadOrRestart,
    /// `ReloadOrTryRestartUnit`
    ReloadOrTryRestart,
}

impl JobKind {
    /// Every kind.
    pub const ALL: [JobKind; 7] = [
        JobKind::Start,
        JobKind::Stop,
        JobKind::Restart,
        JobKind::Reload,
        JobKind::TryRestart,
        JobKind::ReloadOrRestart,
        JobKind::ReloadOrTryRestart,
    ];

    /// The cloud-config `command:` spelling, e.g. `try-restart`.
    pub fn command(self) -> &'static str {
        match self {
            JobKind::Start => "start",
            JobKind::Stop => "stop",
            JobKind::Restart => "restart",
            JobKind::Reload => "reload",
            JobKind::TryRestart => "try-restart",
            JobKind::ReloadOrRestart => "reload-or-restart",
            JobKind::ReloadOrTryRestart => "reload-or-try-restart",
        }
    }

    /// Parses a cloud-config `command:` value (case-sensitive, as coreos-cloudinit).
    pub fn from_command(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.command() == s)
    }

    /// The manager method name.
    pub fn method(self) -> &'static str {
        match self {
            JobKind::Start => "StartUnit",
            JobKind::Stop => "StopUnit",
            JobKind::Restart => "RestartUnit",
            JobKind::Reload => "ReloadUnit",
            JobKind::TryRestart => "TryRestartUnit",
            JobKind::ReloadOrRestart => "ReloadOrRestartUnit",
            JobKind::ReloadOrTryRestart => "ReloadOrTryRestartUnit",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.command())
    }
}

/// The systemd manager operations Ferrite uses.
pub trait Systemd {
    /// `EnableUnitFiles(names, runtime, force)`: processes `[Install]` like `systemctl enable`.
    fn enable_unit_files(
        &mut self,
        names: &[String],
        runtime: bool,
        force: bool,
    ) -> Result<(), Error>;

    /// `Reload`: the daemon-reload.
    fn reload(&mut self) -> Result<(), Error>;

    /// Queues a job and waits until it finishes; returns systemd's result string (`done`,
    /// `failed`, `timeout`, `canceled`, `dependency`, `skipped`). A job that finishes
    /// `failed` is not an error; a job systemd refuses to queue is.
    fn run_job(&mut self, kind: JobKind, unit: &str, mode: &str) -> Result<String, Error>;

    /// Starts a transient service running `argv` and waits for the start job.
    fn start_transient_service(
        &mut self,
        name: &str,
        description: &str,
        argv: &[String],
    ) -> Result<String, Error>;
}

/// One call made to a [`Recorder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `EnableUnitFiles`
    Enable {
        /// Unit names.
        names: Vec<String>,
        /// Into `/run` instead of `/etc`.
        runtime: bool,
        /// Replace existing links.
        force: bool,
    },
    /// `Reload`
    Reload,
    /// A job.
    Job {
        /// Which method.
        kind: JobKind,
        /// The unit.
        unit: String,
        /// The job mode, e.g. `replace`.
        mode: String,
    },
    /// `StartTransientUnit`
    Transient {
        /// The unit name.
        name: String,
        /// The command line.
        argv: Vec<String>,
    },
}

impl fmt::Display for Call {
    /// The trace form coreos-cloudinit's apply traces use, e.g. `dbus start x.service mode=replace`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Enable {
                names,
                runtime,
                force,
            } => write!(
                f,
                "dbus EnableUnitFiles([{}], runtime={runtime}, force={force})",
                names.join(" ")
            ),
            Call::Reload => f.write_str("dbus Reload (daemon-reload)"),
            Call::Job { kind, unit, mode } => write!(f, "dbus {kind} {unit} mode={mode}"),
            Call::Transient { name, argv } => {
                write!(
                    f,
                    "dbus StartTransientUnit {name} ExecStart={}",
                    argv.join(" ")
                )
            }
        }
    }
}

/// A [`Systemd`] that does nothing and remembers every call; every job "succeeds" as `done`.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    /// The calls, in order.
    pub calls: Vec<Call>,
}

impl Systemd for Recorder {
    fn enable_unit_files(
        &mut self,
        names: &[String],
        runtime: bool,
        force: bool,
    ) -> Result<(), Error> {
        self.calls.push(Call::Enable {
            names: names.to_vec(),
            runtime,
            force,
        });
        Ok(())
    }

    fn reload(&mut self) -> Result<(), Error> {
        self.calls.push(Call::Reload);
        Ok(())
    }

    fn run_job(&mut self, kind: JobKind, unit: &str, mode: &str) -> Result<String, Error> {
        self.calls.push(Call::Job {
            kind,
            unit: unit.to_string(),
            mode: mode.to_string(),
        });
        Ok("done".to_string())
    }

    fn start_transient_service(
        &mut self,
        name: &str,
        _description: &str,
        argv: &[String],
    ) -> Result<String, Error> {
        self.calls.push(Call::Transient {
            name: name.to_string(),
            argv: argv.to_vec(),
        });
        Ok("done".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_map_to_methods() {
        assert_eq!(
            JobKind::from_command("try-restart"),
            Some(JobKind::TryRestart)
        );
        assert_eq!(JobKind::from_command("Start"), None);
        assert_eq!(
            JobKind::ReloadOrTryRestart.method(),
            "ReloadOrTryRestartUnit"
        );
    }

    #[test]
    fn recorder_traces() {
        let mut r = Recorder::default();
        r.enable_unit_files(&["docker-tcp.socket".into()], false, true)
            .unwrap();
        r.reload().unwrap();
        assert_eq!(
            r.run_job(JobKind::Start, "etcd2.service", "replace")
                .unwrap(),
            "done"
        );
        let lines: Vec<String> = r.calls.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "dbus EnableUnitFiles([docker-tcp.socket], runtime=false, force=true)",
                "dbus Reload (daemon-reload)",
                "dbus start etcd2.service mode=replace",
            ]
        );
    }
}

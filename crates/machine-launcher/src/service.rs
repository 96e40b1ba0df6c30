//! A cluster service: a process in the cluster's switch namespace (the update service, the
//! image registry), in cgroups of its own, recorded in the cluster's state before it is
//! started, logging to a file in the cluster's directory, and stopped by its recorded PID
//! (only while that PID still runs the service's program) and cgroups.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::boot::in_cgroups;
use crate::cgroup;
use crate::host::{process_matches, wait_until, Host};
use crate::state::{ClusterState, Service};
use crate::{io_err, Error, Paths};

/// Which of the cluster's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Updates,
    Registry,
}

impl Which {
    fn slot(self, cluster: &mut ClusterState) -> &mut Option<Service> {
        match self {
            Which::Updates => &mut cluster.updates,
            Which::Registry => &mut cluster.registry,
        }
    }

    /// Its log file in the cluster's directory.
    fn log_name(self) -> &'static str {
        match self {
            Which::Updates => "update-server.log",
            Which::Registry => "registry.log",
        }
    }

    /// The suffix of its cgroups' names.
    fn cgroup_name(self) -> &'static str {
        match self {
            Which::Updates => "updates",
            Which::Registry => "registry",
        }
    }
}

/// Whether the service runs: its recorded PID runs a program whose command line has
/// `marker`.
pub(crate) fn running(
    host: &dyn Host,
    cluster: &mut ClusterState,
    which: Which,
    marker: &str,
) -> bool {
    which
        .slot(cluster)
        .as_ref()
        .and_then(|s| s.pid)
        .is_some_and(|p| process_matches(host, p, marker))
}

/// Starts `argv` (its first word the program) in the switch namespace as the service
/// `which`, its output to its log in the cluster's directory, with `env` added.
pub(crate) fn start(
    host: &dyn Host,
    paths: &Paths,
    cluster: &mut ClusterState,
    exe: &Path,
    which: Which,
    argv: &[OsString],
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<(), Error> {
    let dir = paths.cluster_dir(&cluster.name);
    let out =
        std::fs::File::create(dir.join(which.log_name())).map_err(io_err("creating", &dir))?;
    let err = out.try_clone().map_err(io_err("opening", &dir))?;
    // Recorded, then made, then joined before the process becomes the service.
    let layout = cgroup::detect(host);
    let cgroups = cgroup::paths(
        &layout,
        &format!("{}-{}", cluster.object_prefix(), which.cgroup_name()),
    );
    *which.slot(cluster) = Some(Service {
        pid: None,
        cgroups: cgroups.clone(),
    });
    cluster.save(paths)?;
    cgroup::create(host, &layout, &cgroups, cgroup::Limits::default())?;
    // `setsid`, `ferrite __boot` and `ip netns exec` each exec the next: the recorded PID
    // is the service's own.
    let mut cmd = in_cgroups(exe, &cgroups);
    cmd.args(["ip", "netns", "exec", &cluster.switch_ns()])
        .args(argv)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let what = argv
        .first()
        .map_or_else(String::new, |a| a.to_string_lossy().into_owned());
    let pid = host.spawn(&what, &mut cmd)?;
    if let Some(s) = which.slot(cluster).as_mut() {
        s.pid = Some(pid);
    }
    cluster.save(paths)
}

/// Stops the service `which` (by its recorded PID, while it runs `marker`, and cgroups).
pub(crate) fn stop(host: &dyn Host, cluster: &mut ClusterState, which: Which, marker: &str) {
    if let Some(s) = which.slot(cluster).take() {
        if let Some(pid) = s.pid.filter(|p| process_matches(host, *p, marker)) {
            let _ = host.signal(pid, "KILL");
            wait_until(host, Duration::from_secs(5), || {
                !process_matches(host, pid, marker)
            });
        }
        cgroup::kill_all(host, &s.cgroups);
        cgroup::remove(host, &s.cgroups);
    }
}

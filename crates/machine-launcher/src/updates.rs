//! The cluster's update service (`ferrite update-server`, Omaha on the gateway's port 8098
//! in the switch namespace), started by `up` as the discovery service is, and what machines
//! are told of it: `SERVER` and a short `CHECK_INTERVAL` in `/etc/coreos/update.conf`, so a
//! published release reaches a local cluster in seconds.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::boot::in_cgroups;
use crate::cgroup;
use crate::host::{process_matches, wait_until, Host};
use crate::state::{ClusterState, Service};
use crate::{io_err, Error, Paths};

/// The port on the gateway.
pub const PORT: u16 = 8098;
/// Seconds between a local machine's update checks.
pub const CHECK_INTERVAL: u64 = 10;
/// What identifies the service's process.
const MARKER: &str = "update-server";

/// The URL machines send Omaha requests to.
pub fn server_url(cluster: &ClusterState) -> String {
    format!("http://{}:{PORT}/v1/update/", cluster.gateway())
}

/// Starts the cluster's update service unless it runs.
pub(crate) fn ensure_update_service(
    host: &dyn Host,
    paths: &Paths,
    cluster: &mut ClusterState,
    exe: &Path,
) -> Result<(), Error> {
    let running = cluster
        .updates
        .as_ref()
        .and_then(|s| s.pid)
        .is_some_and(|p| process_matches(host, p, MARKER));
    if running {
        return Ok(());
    }
    let dir = paths.cluster_dir(&cluster.name);
    let log =
        std::fs::File::create(dir.join("update-server.log")).map_err(io_err("creating", &dir))?;
    let log2 = log.try_clone().map_err(io_err("opening", &dir))?;
    // Recorded, then made, then joined before the process becomes the service.
    let layout = cgroup::detect(host);
    let cgroups = cgroup::paths(&layout, &format!("{}-updates", cluster.object_prefix()));
    cluster.updates = Some(Service {
        pid: None,
        cgroups: cgroups.clone(),
    });
    cluster.save(paths)?;
    cgroup::create(host, &layout, &cgroups, cgroup::Limits::default())?;
    let mut cmd = in_cgroups(exe, &cgroups);
    cmd.args(["ip", "netns", "exec", &cluster.switch_ns()])
        .arg(exe)
        .args([MARKER, "--cluster", &cluster.name, "--listen"])
        .arg(format!("{}:{PORT}", cluster.gateway()))
        .env("FERRITE_STATE_DIR", &paths.state)
        .env("FERRITE_RUN_DIR", &paths.run)
        // Its decisions (offers, and why not) go to `update-server.log`.
        .env("FERRITE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let pid = host.spawn("ferrite update-server", &mut cmd)?;
    if let Some(s) = cluster.updates.as_mut() {
        s.pid = Some(pid);
    }
    cluster.save(paths)
}

/// Stops the cluster's update service (by its recorded PID and cgroups).
pub(crate) fn stop_update_service(host: &dyn Host, cluster: &mut ClusterState) {
    if let Some(s) = cluster.updates.take() {
        if let Some(pid) = s.pid.filter(|p| process_matches(host, *p, MARKER)) {
            let _ = host.signal(pid, "KILL");
            wait_until(host, Duration::from_secs(5), || {
                !process_matches(host, pid, MARKER)
            });
        }
        cgroup::kill_all(host, &s.cgroups);
        cgroup::remove(host, &s.cgroups);
    }
}

/// `/etc/coreos/update.conf` with the cluster's `SERVER` and `CHECK_INTERVAL` (other keys,
/// such as cloud-config's `GROUP` or `REBOOT_STRATEGY`, kept).
pub(crate) fn point_at_service(root: &Path, cluster: &ClusterState) -> Result<(), Error> {
    let path = root.join("etc/coreos/update.conf");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let section = cloud_config::config::EnvSection {
        vars: vec![
            ("SERVER", server_url(cluster)),
            ("CHECK_INTERVAL", CHECK_INTERVAL.to_string()),
        ],
    };
    let new = cloud_config::files::update_conf(&old, &section);
    if new != old {
        atomic_file::create_dirs(&root.join("etc/coreos"))?;
        atomic_file::write(&path, new.as_bytes(), &atomic_file::Options::mode(0o644))?;
    }
    Ok(())
}

//! The cluster's update service (`ferrite update-server`, Omaha on the gateway's port 8098
//! in the switch namespace), started by `up` as the discovery service is, and what machines
//! are told of it: `SERVER` and a short `CHECK_INTERVAL` in `/etc/coreos/update.conf`, so a
//! published release reaches a local cluster in seconds.

use std::ffi::OsString;
use std::path::Path;

use crate::host::Host;
use crate::service::{self, Which};
use crate::state::ClusterState;
use crate::{Error, Paths};

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
    if service::running(host, cluster, Which::Updates, MARKER) {
        return Ok(());
    }
    let argv: Vec<OsString> = vec![
        exe.into(),
        MARKER.into(),
        "--cluster".into(),
        cluster.name.clone().into(),
        "--listen".into(),
        format!("{}:{PORT}", cluster.gateway()).into(),
    ];
    let env = [
        ("FERRITE_STATE_DIR", paths.state.as_os_str()),
        ("FERRITE_RUN_DIR", paths.run.as_os_str()),
        // Its decisions (offers, and why not) go to `update-server.log`.
        ("FERRITE_LOG", std::ffi::OsStr::new("info")),
    ];
    service::start(host, paths, cluster, exe, Which::Updates, &argv, &env)
}

/// Stops the cluster's update service (by its recorded PID and cgroups).
pub(crate) fn stop_update_service(host: &dyn Host, cluster: &mut ClusterState) {
    service::stop(host, cluster, Which::Updates, MARKER);
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

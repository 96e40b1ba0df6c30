//! The cluster's image registry: Debian's `docker-registry` on the gateway's port 5000 in
//! the switch namespace, started by `up` as the update service is, seeded with
//! `busybox:latest` (by `ferrite __registry-seed`, run in that namespace), and known to every
//! machine as `ferrite-registry:5000`: an `/etc/hosts` line, and Docker told it speaks plain
//! HTTP (`insecure-registries` in `/etc/docker/daemon.json`). Its images live in the
//! cluster's directory and go with `destroy`.

use std::ffi::OsString;
use std::path::Path;

use crate::host::Host;
use crate::service::{self, Which};
use crate::state::ClusterState;
use crate::{Error, Paths};

/// The port on the gateway.
pub const PORT: u16 = 5000;
/// The name machines reach it by.
pub const HOST_NAME: &str = "ferrite-registry";
/// What identifies the registry's process.
const MARKER: &str = "docker-registry";

/// Refuses early (before `up` creates anything) when Debian's `docker-registry` is missing.
pub(crate) fn check_installed(host: &dyn Host) -> Result<(), Error> {
    if host.has_program(MARKER) {
        Ok(())
    } else {
        Err(Error::MissingTool {
            tool: MARKER.into(),
            what: "each cluster's image registry".into(),
        })
    }
}

/// `host:port` of the cluster's registry, as reached inside the cluster's network.
#[must_use]
pub fn address(cluster: &ClusterState) -> String {
    format!("{}:{PORT}", cluster.gateway())
}

/// The registry's configuration: filesystem storage under `data`, deletes allowed, plain
/// HTTP on `addr`.
fn config(data: &Path, addr: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        data.display()
    )
}

/// Starts the cluster's registry unless it runs, then seeds it with `busybox:latest`.
pub(crate) fn ensure_registry(
    host: &dyn Host,
    paths: &Paths,
    cluster: &mut ClusterState,
    exe: &Path,
) -> Result<(), Error> {
    if !service::running(host, cluster, Which::Registry, MARKER) {
        let dir = paths.cluster_dir(&cluster.name).join("registry");
        atomic_file::create_dirs(&dir.join("data"))?;
        let config_path = dir.join("config.yml");
        atomic_file::write(
            &config_path,
            config(&dir.join("data"), &address(cluster)).as_bytes(),
            &atomic_file::Options::mode(0o644),
        )?;
        let argv: Vec<OsString> = vec![MARKER.into(), "serve".into(), config_path.into()];
        service::start(host, paths, cluster, exe, Which::Registry, &argv, &[])?;
    }
    // Seeded every `up` (a blob the registry has is not sent again): a user's `docker rmi`
    // in the registry does not leave the cluster without busybox.
    let mut seed = host_command::command("ip");
    seed.args(["netns", "exec", &cluster.switch_ns()])
        .arg(exe)
        .args(["__registry-seed", "--registry", &address(cluster)]);
    host.run(&mut seed)?;
    Ok(())
}

/// Stops the cluster's registry (by its recorded PID and cgroups).
pub(crate) fn stop_registry(host: &dyn Host, cluster: &mut ClusterState) {
    service::stop(host, cluster, Which::Registry, MARKER);
}

/// A machine's ROOT told of the registry: `ferrite-registry` in `/etc/hosts`, and Docker's
/// `insecure-registries` naming it (a `daemon.json` of the user's is kept and added to; one
/// that is not a JSON object is left alone).
pub(crate) fn point_at_registry(root: &Path, cluster: &ClusterState) -> Result<(), Error> {
    let hosts = root.join("etc/hosts");
    let line = format!("{}\t{HOST_NAME}", cluster.gateway());
    let old = std::fs::read_to_string(&hosts).unwrap_or_else(|_| {
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_string()
    });
    if !old.lines().any(|l| l.trim() == line) {
        let kept: Vec<&str> = old
            .lines()
            .filter(|l| !l.split_whitespace().skip(1).any(|n| n == HOST_NAME))
            .collect();
        let new = format!("{}\n{line}\n", kept.join("\n"));
        atomic_file::create_dirs(&root.join("etc"))?;
        atomic_file::write(&hosts, new.as_bytes(), &atomic_file::Options::mode(0o644))?;
    }
    let daemon = root.join("etc/docker/daemon.json");
    let name = format!("{HOST_NAME}:{PORT}");
    let mut json = match std::fs::read(&daemon) {
        Ok(b) => match serde_json::from_slice::<serde_json::Value>(&b) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => {
                tracing::warn!(
                    "{}: not a JSON object; Docker is not told of {name}",
                    daemon.display()
                );
                return Ok(());
            }
        },
        Err(_) => serde_json::json!({}),
    };
    let list = json.as_object_mut().map(|o| {
        o.entry("insecure-registries")
            .or_insert_with(|| serde_json::json!([]))
    });
    if let Some(serde_json::Value::Array(a)) = list {
        if a.iter().any(|v| v.as_str() == Some(name.as_str())) {
            return Ok(());
        }
        a.push(serde_json::Value::String(name));
    }
    let text = serde_json::to_vec_pretty(&json).unwrap_or_default();
    atomic_file::create_dirs(&root.join("etc/docker"))?;
    atomic_file::write(&daemon, &text, &atomic_file::Options::mode(0o644))?;
    Ok(())
}

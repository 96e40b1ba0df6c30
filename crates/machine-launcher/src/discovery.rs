//! The cluster's etcd discovery service (Debian's etcd with the v2 API, in the switch
//! namespace, standing in for discovery.etcd.io) and the textual replacement of
//! discovery.etcd.io URLs in user-data.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::boot::in_cgroups;
use crate::cgroup;
use crate::host::{process_matches, wait_until, Host};
use crate::state::{random_hex, ClusterState, Discovery};
use crate::{io_err, Error, Paths};

/// Replaces every `https://discovery.etcd.io/<token>` in user-data with `url` (textually,
/// so comments and formatting survive — unlike coreos-vagrant's YAML round trip).
pub fn replace_discovery(user_data: &str, url: &str) -> Option<String> {
    let needle = "https://discovery.etcd.io/";
    if !user_data.contains(needle) && !user_data.contains("http://discovery.etcd.io/") {
        return None;
    }
    let mut out = String::new();
    let mut rest = user_data;
    while let Some(pos) = rest.find("://discovery.etcd.io/") {
        let scheme_start = rest[..pos]
            .rfind(|c: char| !c.is_ascii_alphabetic())
            .map_or(0, |i| i + 1);
        out.push_str(&rest[..scheme_start]);
        let after = &rest[pos + "://discovery.etcd.io/".len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(after.len());
        out.push_str(url);
        rest = &after[end..];
    }
    out.push_str(rest);
    Some(out)
}

/// The cluster's discovery service, started if it does not run, and a token on it: the URL
/// that replaces discovery.etcd.io's in the user-data.
pub(crate) fn ensure_discovery(
    host: &dyn Host,
    paths: &Paths,
    cluster: &mut ClusterState,
    size: u32,
    exe: &Path,
) -> Result<String, Error> {
    let gw = cluster.gateway();
    let endpoint = format!("http://{gw}:2379");
    let running = cluster
        .discovery
        .as_ref()
        .and_then(|d| d.pid)
        .is_some_and(|p| process_matches(host, p, "discovery"));
    if !running {
        let dir = paths.cluster_dir(&cluster.name).join("discovery");
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let log = std::fs::File::create(dir.join("etcd.log")).map_err(io_err("creating", &dir))?;
        let log2 = log.try_clone().map_err(io_err("opening", &dir))?;
        // Recorded, then made, then joined by `__boot` before it becomes etcd: whatever
        // happens next, `destroy` finds the process in the cgroup.
        let layout = cgroup::detect(host);
        let cgroups = cgroup::paths(&layout, &format!("{}-discovery", cluster.object_prefix()));
        cluster.discovery = Some(Discovery {
            pid: None,
            url: String::new(),
            cgroups: cgroups.clone(),
        });
        cluster.save(paths)?;
        cgroup::create(host, &layout, &cgroups, cgroup::Limits::default())?;
        let mut cmd = in_cgroups(exe, &cgroups);
        cmd.args([
            "ip",
            "netns",
            "exec",
            &cluster.switch_ns(),
            "etcd",
            "--name",
            "discovery",
            "--enable-v2",
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
        ])
        .args([
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
        ])
        .args(["--initial-cluster", "discovery=http://127.0.0.1:2380"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
        let pid = host.spawn("etcd (discovery)", &mut cmd)?;
        if let Some(d) = cluster.discovery.as_mut() {
            d.pid = Some(pid);
        }
        cluster.save(paths)?;
    }
    // The cluster keeps its token, as a Vagrantfile's user-data did: a machine added later
    // finds the cluster full and becomes an etcd proxy, as on CoreOS.
    if running {
        if let Some(url) = cluster.discovery.as_ref().map(|d| d.url.clone()) {
            if !url.is_empty() {
                return Ok(url);
            }
        }
    }
    let token = random_hex(16);
    let key = format!("/_etcd/registry/{token}/_config/size");
    let ok = wait_until(host, Duration::from_secs(15), || {
        host.run(
            host_command::command("ip")
                .args([
                    "netns",
                    "exec",
                    &cluster.switch_ns(),
                    "etcdctl",
                    "--endpoints",
                    &endpoint,
                    "set",
                    &key,
                    &size.to_string(),
                ])
                .env("ETCDCTL_API", "2"),
        )
        .is_ok()
    });
    if !ok {
        return Err(Error::Invalid(format!(
            "the discovery service at {endpoint} did not start"
        )));
    }
    let url = format!("{endpoint}/v2/keys/_etcd/registry/{token}");
    if let Some(d) = cluster.discovery.as_mut() {
        d.url = url.clone();
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_urls_are_replaced_in_place() {
        let ud = "#cloud-config\ncoreos:\n  etcd2:\n    # keep me\n    discovery: https://discovery.etcd.io/614a2cd12096d7de6b577f0a95748027\n    name: x\n";
        let out =
            replace_discovery(ud, "http://172.20.0.1:2379/v2/keys/_etcd/registry/abc").unwrap();
        assert_eq!(out, "#cloud-config\ncoreos:\n  etcd2:\n    # keep me\n    discovery: http://172.20.0.1:2379/v2/keys/_etcd/registry/abc\n    name: x\n");
        assert_eq!(replace_discovery("#cloud-config\n", "x"), None);
    }
}

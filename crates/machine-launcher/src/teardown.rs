//! Stopping machines and removing clusters. Only what the launcher started is stopped: the
//! PIDs it recorded (after checking their command line, as a PID may have been reused) and
//! the processes inside the cgroups it recorded before starting anything in them — never a
//! process merely because its command line mentions the cluster (a user's `tail -f` of a
//! console log is not the launcher's).

use std::time::Duration;

use crate::boot::{init_pid, machine_running};
use crate::cgroup;
use crate::host::{process_matches, wait_until, Host};
use crate::qemu;
use crate::state::{lock_existing, run_lock, ClusterState, MachineState};
use crate::{io_err, Driver, Error, Paths};

/// Stops a machine: gracefully (systemd powers off), or `force` at once. Then releases its
/// mounts and cgroups. Its disk, address and network namespace stay.
pub fn halt(
    host: &dyn Host,
    paths: &Paths,
    cluster: &mut ClusterState,
    name: &str,
    force: bool,
) -> Result<(), Error> {
    let idx = cluster.machine_index(name)?;
    let m = cluster.machines[idx].clone();
    if machine_running(host, &m) {
        let pid = m.pid.unwrap_or(0);
        if !force {
            // systemd powers off on SIGRTMIN+4; a virtual machine gets ACPI's power button
            // (and, emulated, takes longer).
            let limit = match m.driver {
                Driver::Nspawn => {
                    if let Some(i) = init_pid(host, &m) {
                        let _ = host.signal(i, "RTMIN+4");
                    }
                    Duration::from_secs(30)
                }
                Driver::Qemu => {
                    if let Err(e) = qemu::powerdown(&cluster.machine_dir(paths, &m.name)) {
                        tracing::warn!(machine = %m.name, "asking for a power-off: {e}");
                    }
                    Duration::from_secs(90)
                }
            };
            wait_until(host, limit, || !machine_running(host, &m));
        }
        if machine_running(host, &m) {
            if let Some(i) = init_pid(host, &m) {
                let _ = host.signal(i, "KILL");
            }
            wait_until(host, Duration::from_secs(5), || !machine_running(host, &m));
            if machine_running(host, &m) {
                let _ = host.signal(pid, "KILL");
                wait_until(host, Duration::from_secs(5), || !machine_running(host, &m));
            }
        }
    }
    release(host, paths, cluster, idx)?;
    cluster.save(paths)
}

/// Releases what a stopped machine held: whatever still runs in its cgroups, its mounts,
/// the shared `/usr` if no other machine uses it, its cgroups.
fn release(
    host: &dyn Host,
    paths: &Paths,
    cluster: &mut ClusterState,
    idx: usize,
) -> Result<(), Error> {
    let root = cluster
        .machine_dir(paths, &cluster.machines[idx].name)
        .join("root");
    cgroup::kill_all(host, &cluster.machines[idx].cgroups);
    host.unmount(&root.join("usr"))?;
    host.unmount(&root)?;
    // A slot of the machine's own (`nspawn::supervise` after a reboot, or a slot that is
    // not the image's).
    let private = cluster
        .machine_dir(paths, &cluster.machines[idx].name)
        .join("usr");
    host.unmount(&private)?;
    let usr = cluster.machines[idx].usr_mount.take();
    cgroup::remove(host, &cluster.machines[idx].cgroups);
    cluster.machines[idx].cgroups.clear();
    cluster.machines[idx].pid = None;
    if let Some(usr) = usr {
        let _usr_lock = run_lock(paths)?;
        let in_use = all_machines(paths).iter().any(|(c, m)| {
            !(c == &cluster.name && m.name == cluster.machines[idx].name)
                && m.usr_mount.as_ref() == Some(&usr)
                && machine_running(host, m)
        });
        if !in_use {
            host.unmount(&usr)?;
            let _ = std::fs::remove_dir(&usr);
        }
    }
    Ok(())
}

fn all_machines(paths: &Paths) -> Vec<(String, MachineState)> {
    ClusterState::list(paths)
        .into_iter()
        .filter_map(|n| ClusterState::load(paths, &n).ok())
        .flat_map(|c| c.machines.into_iter().map(move |m| (c.name.clone(), m)))
        .collect()
}

/// Removes a cluster entirely: machines stopped at once, the update, registry and
/// discovery services stopped, mounts, namespaces, cgroups and files removed. A step that
/// fails (a busy mount, a full disk) does not stop the others: everything that can go goes,
/// the first error is returned, and the directory stays for a later `destroy` to finish.
pub fn destroy(host: &dyn Host, paths: &Paths, name: &str) -> Result<(), Error> {
    let _lock = lock_existing(paths, name)?;
    let mut cluster = ClusterState::load(paths, name)?;
    let dir = paths.cluster_dir(name);
    let mut first: Option<Error> = None;
    let mut note = |r: Result<(), Error>| {
        if let Err(e) = r {
            tracing::warn!("destroy: {e}");
            first.get_or_insert(e);
        }
    };
    let names: Vec<String> = cluster.machines.iter().map(|m| m.name.clone()).collect();
    for n in &names {
        note(halt(host, paths, &mut cluster, n, true));
    }
    crate::updates::stop_update_service(host, &mut cluster);
    crate::registry::stop_registry(host, &mut cluster);
    if let Some(d) = cluster.discovery.take() {
        if let Some(pid) = d.pid.filter(|p| process_matches(host, *p, "discovery")) {
            let _ = host.signal(pid, "KILL");
            wait_until(host, Duration::from_secs(5), || {
                !process_matches(host, pid, "discovery")
            });
        }
        cgroup::kill_all(host, &d.cgroups);
        cgroup::remove(host, &d.cgroups);
    }
    // Every namespace named from the cluster's id, recorded or not.
    let prefix = format!("{}-", cluster.object_prefix());
    for n in host.netns_list() {
        if n.starts_with(&prefix) {
            note(host.netns_del(&n));
        }
    }
    // Mounts under the cluster's directory, deepest first.
    for mount in host.mounts_under(&dir).into_iter().rev() {
        note(host.unmount(&mount));
    }
    if let Some(e) = first {
        // What is recorded as gone is saved (if the disk lets us), for the next destroy.
        let _ = cluster.save(paths);
        return Err(e);
    }
    drop(_lock);
    std::fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))
}

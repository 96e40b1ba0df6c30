//! The cgroups a machine runs in, on both layouts a host can have.
//!
//! - **Legacy** (cgroup v1, alone or "hybrid" with a controller-less v2 hierarchy at
//!   `unified`): one directory per hierarchy, below this process's own cgroup in each, cpuset
//!   settings copied down (a new cpuset cgroup starts empty), the memory limit in
//!   `memory.limit_in_bytes`.
//! - **Unified** (cgroup v2 only, Debian 12's and Ubuntu's default): one directory,
//!   `<root>/ferrite/<leaf>` — like Docker's cgroupfs driver, beside the host's own tree and not
//!   below this process's cgroup, because v2 lets a cgroup hand controllers to its children
//!   only while it holds no process itself. The controllers the root offers are enabled in the
//!   root's and `ferrite`'s `cgroup.subtree_control`, so the machine's directory has them all to
//!   delegate; the memory limit is `memory.max`.
//!
//! Either way the directories are returned for the caller to record before [`create`] makes
//! them; `ferrite __boot` joins them ([`join`]) before it becomes `systemd-nspawn`, which then
//! splits its cgroup into its own `supervisor` and the machine's `payload`, so every process of
//! a machine lives below a recorded directory and [`kill_all`] finds it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::{wait_until, Host};
use crate::Error;

/// The controllers a machine is given on a unified host, when the host offers them.
const DELEGATED: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];

/// How the host's cgroups are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1 hierarchies: (mount directory, this process's path in it).
    Legacy(Vec<(PathBuf, String)>),
    /// cgroup v2 only, mounted here.
    Unified(PathBuf),
}

/// Limits applied to a machine's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory, MiB (0: none).
    pub memory_mb: u64,
}

/// Reads the host's layout.
pub fn detect(host: &dyn Host) -> Layout {
    let root = host.cgroup_root();
    if root.join("cgroup.controllers").exists() {
        return Layout::Unified(root);
    }
    let own = host.own_cgroups();
    let mut out = Vec::new();
    for dir in host.cgroup_children(&root) {
        if !dir.join("cgroup.procs").exists() {
            continue;
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            let matches = match name.as_str() {
                "unified" => ctrls.is_empty(),
                "systemd" => ctrls == "name=systemd",
                n => ctrls.split(',').any(|c| c == n),
            };
            matches.then(|| path.to_string())
        });
        if let Some(p) = path {
            out.push((dir, p));
        }
    }
    out.sort();
    Layout::Legacy(out)
}

/// The directories of the cgroup `leaf` (named from the cluster's id, so unique on the host).
pub fn paths(layout: &Layout, leaf: &str) -> Vec<PathBuf> {
    match layout {
        Layout::Unified(root) => vec![root.join("ferrite").join(leaf)],
        Layout::Legacy(hierarchies) => hierarchies
            .iter()
            .map(|(mount, own)| mount.join(own.trim_start_matches('/')).join(leaf))
            .collect(),
    }
}

/// The directory among `dirs` that holds `controller`'s files (`memory`, `systemd` for the
/// process tree).
pub fn dir_for<'a>(layout: &Layout, dirs: &'a [PathBuf], controller: &str) -> Option<&'a Path> {
    match layout {
        Layout::Unified(_) => dirs.first().map(PathBuf::as_path),
        Layout::Legacy(hierarchies) => {
            let mount = hierarchies
                .iter()
                .map(|(m, _)| m)
                .find(|m| m.file_name().is_some_and(|n| n == controller))?;
            dirs.iter()
                .find(|d| d.starts_with(mount))
                .map(PathBuf::as_path)
        }
    }
}

/// Refuses limits the host cannot enforce (called before anything of a cluster is made).
pub fn check(host: &dyn Host, layout: &Layout, limits: Limits) -> Result<(), Error> {
    if limits.memory_mb == 0 {
        return Ok(());
    }
    let has_memory = match layout {
        Layout::Unified(root) => host
            .cgroup_read(&root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory")),
        Layout::Legacy(hierarchies) => hierarchies
            .iter()
            .any(|(m, _)| m.file_name().is_some_and(|n| n == "memory")),
    };
    if has_memory {
        Ok(())
    } else {
        Err(no_memory_controller(limits))
    }
}

/// Creates the directories and applies the limits; refuses a limit the host cannot enforce.
pub fn create(
    host: &dyn Host,
    layout: &Layout,
    dirs: &[PathBuf],
    limits: Limits,
) -> Result<(), Error> {
    match layout {
        Layout::Unified(root) => create_unified(host, root, dirs, limits),
        Layout::Legacy(_) => create_legacy(host, layout, dirs, limits),
    }
}

fn no_memory_controller(limits: Limits) -> Error {
    Error::Invalid(format!(
        "vm_memory = {} MiB cannot be enforced: this host has no memory cgroup controller \
         (set vm_memory to 0 for machines without a limit)",
        limits.memory_mb
    ))
}

fn create_legacy(
    host: &dyn Host,
    layout: &Layout,
    dirs: &[PathBuf],
    limits: Limits,
) -> Result<(), Error> {
    let cpuset = dir_for(layout, dirs, "cpuset");
    for dir in dirs {
        host.cgroup_mkdir(dir)?;
        if Some(dir.as_path()) == cpuset {
            let parent = dir.parent().unwrap_or(dir);
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = host.cgroup_read(&parent.join(f))?;
                host.cgroup_write(&dir.join(f), v.trim())?;
            }
        }
    }
    if limits.memory_mb > 0 {
        let mem = dir_for(layout, dirs, "memory").ok_or_else(|| no_memory_controller(limits))?;
        host.cgroup_write(
            &mem.join("memory.limit_in_bytes"),
            &(limits.memory_mb * 1024 * 1024).to_string(),
        )?;
    }
    Ok(())
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// Enables `wanted` controllers in `dir`'s `cgroup.subtree_control` (those not yet there).
fn enable(host: &dyn Host, dir: &Path, wanted: &[String]) -> Result<(), Error> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = words(&host.cgroup_read(&file).unwrap_or_default());
    for c in wanted.iter().filter(|c| !enabled.contains(c)) {
        host.cgroup_write(&file, &format!("+{c}"))?;
    }
    Ok(())
}

fn create_unified(
    host: &dyn Host,
    root: &Path,
    dirs: &[PathBuf],
    limits: Limits,
) -> Result<(), Error> {
    let offered = words(&host.cgroup_read(&root.join("cgroup.controllers"))?);
    let wanted: Vec<String> = DELEGATED
        .iter()
        .map(|c| c.to_string())
        .filter(|c| offered.contains(c))
        .collect();
    if limits.memory_mb > 0 && !wanted.iter().any(|c| c == "memory") {
        return Err(no_memory_controller(limits));
    }
    let base = root.join("ferrite");
    // The root may refuse (a cgroup namespace whose root holds processes): that is an error
    // naming the file, not a machine silently without its limits.
    enable(host, root, &wanted)?;
    host.cgroup_mkdir(&base)?;
    enable(host, &base, &wanted)?;
    for dir in dirs {
        host.cgroup_mkdir(dir)?;
        if limits.memory_mb > 0 {
            host.cgroup_write(
                &dir.join("memory.max"),
                &(limits.memory_mb * 1024 * 1024).to_string(),
            )?;
        }
    }
    Ok(())
}

/// The child `name` of each directory.
pub fn children_of(dirs: &[PathBuf], name: &str) -> Vec<PathBuf> {
    dirs.iter().map(|d| d.join(name)).collect()
}

/// Moves process `pid` into each directory.
pub fn join(host: &dyn Host, dirs: &[PathBuf], pid: u32) -> Result<(), Error> {
    for d in dirs {
        host.cgroup_write(&d.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

/// Every process in `dir` and below.
pub fn processes(host: &dyn Host, dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    // Bounded: a cgroup tree is finite, but a machine may keep creating cgroups.
    let mut budget = 10_000;
    while let Some(d) = stack.pop() {
        budget -= 1;
        if budget == 0 {
            break;
        }
        if let Ok(procs) = host.cgroup_read(&d.join("cgroup.procs")) {
            out.extend(
                procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        stack.extend(host.cgroup_children(&d));
    }
    out
}

/// SIGKILLs every process in the directories and below, until none is left (bounded).
/// These are the machine's own cgroups, recorded before anything was started in them, so
/// everything in them was started by the launcher (or by the machine).
pub fn kill_all(host: &dyn Host, dirs: &[PathBuf]) {
    let mut last_error = None;
    for _ in 0..20 {
        let pids: Vec<u32> = dirs.iter().flat_map(|d| processes(host, d)).collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            if let Err(e) = host.signal(pid, "KILL") {
                last_error = Some(e);
            }
        }
        host.pause();
    }
    let left: Vec<u32> = dirs.iter().flat_map(|d| processes(host, d)).collect();
    if !left.is_empty() {
        tracing::warn!(
            ?left,
            error = last_error.map(|e| e.to_string()),
            "processes survived SIGKILL in {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Removes the directories (nested ones, which the machine made, first), retrying while
/// processes drain out.
pub fn remove(host: &dyn Host, dirs: &[PathBuf]) {
    for d in dirs {
        let mut order = Vec::new();
        let mut stack = vec![d.clone()];
        while let Some(dir) = stack.pop() {
            if order.len() >= 10_000 {
                break;
            }
            stack.extend(host.cgroup_children(&dir));
            order.push(dir);
        }
        for dir in order.iter().rev() {
            wait_until(host, Duration::from_secs(5), || {
                host.cgroup_rmdir(dir).is_ok()
                    || host.cgroup_read(&dir.join("cgroup.procs")).is_err()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeHost;

    #[test]
    fn legacy_hierarchies_are_found_with_this_process_path_in_each() {
        let host = FakeHost::legacy();
        let layout = detect(&host);
        let root = host.cgroup_root();
        let Layout::Legacy(h) = &layout else {
            panic!("expected legacy, got {layout:?}")
        };
        assert!(h.contains(&(root.join("memory"), "/payload/x".to_string())));
        assert!(h.contains(&(root.join("systemd"), "/".to_string())));
        assert!(h.contains(&(root.join("unified"), "/".to_string())));
        let dirs = paths(&layout, "ferrite-ab-core-01");
        assert!(dirs.contains(&root.join("memory/payload/x/ferrite-ab-core-01")));
        assert_eq!(
            dir_for(&layout, &dirs, "systemd"),
            Some(root.join("systemd/ferrite-ab-core-01").as_path())
        );
    }

    #[test]
    fn legacy_create_copies_cpuset_and_sets_the_memory_limit() {
        let host = FakeHost::legacy();
        let layout = detect(&host);
        let dirs = paths(&layout, "m");
        create(&host, &layout, &dirs, Limits { memory_mb: 512 }).unwrap();
        let root = host.cgroup_root();
        assert_eq!(
            host.file(&root.join("cpuset/m/cpuset.cpus")).as_deref(),
            Some("0-1")
        );
        assert_eq!(
            host.file(&root.join("memory/payload/x/m/memory.limit_in_bytes"))
                .as_deref(),
            Some("536870912")
        );
    }

    #[test]
    fn unified_machines_get_every_offered_controller_and_memory_max() {
        let host = FakeHost::unified("cpuset cpu io memory hugetlb pids");
        let layout = detect(&host);
        let root = host.cgroup_root();
        assert_eq!(layout, Layout::Unified(root.clone()));
        let dirs = paths(&layout, "ferrite-ab-core-01");
        assert_eq!(dirs, vec![root.join("ferrite/ferrite-ab-core-01")]);
        create(&host, &layout, &dirs, Limits { memory_mb: 64 }).unwrap();
        // Enabled one by one, only what was missing, in the root and in `ferrite`.
        let writes = host.writes_to("cgroup.subtree_control");
        assert_eq!(
            writes,
            vec![
                (root.clone(), "+cpu".to_string()),
                (root.clone(), "+io".to_string()),
                (root.clone(), "+pids".to_string()),
                (root.join("ferrite"), "+cpu".to_string()),
                (root.join("ferrite"), "+cpuset".to_string()),
                (root.join("ferrite"), "+io".to_string()),
                (root.join("ferrite"), "+memory".to_string()),
                (root.join("ferrite"), "+pids".to_string()),
            ]
        );
        assert_eq!(
            host.file(&dirs[0].join("memory.max")).as_deref(),
            Some("67108864")
        );
        assert_eq!(dir_for(&layout, &dirs, "memory"), Some(dirs[0].as_path()));
    }

    #[test]
    fn a_memory_limit_without_a_memory_controller_is_refused_before_anything_is_made() {
        let host = FakeHost::unified("cpu pids");
        let layout = detect(&host);
        let dirs = paths(&layout, "m");
        let err = create(&host, &layout, &dirs, Limits { memory_mb: 64 }).unwrap_err();
        assert!(
            err.to_string().contains("no memory cgroup controller"),
            "{err}"
        );
        assert!(host.created().is_empty(), "{:?}", host.created());
        // Without a limit the machine still gets what there is.
        create(&host, &layout, &dirs, Limits { memory_mb: 0 }).unwrap();
        assert_eq!(
            host.created(),
            vec![dirs[0].parent().unwrap().to_path_buf(), dirs[0].clone()]
        );
    }

    #[test]
    fn limits_are_checked_before_anything_is_made() {
        let limits = Limits { memory_mb: 64 };
        let host = FakeHost::unified("cpu pids");
        let err = check(&host, &detect(&host), limits).unwrap_err();
        assert!(err.to_string().contains("vm_memory = 64 MiB"), "{err}");
        assert!(check(&host, &detect(&host), Limits::default()).is_ok());
        let host = FakeHost::unified("cpu memory");
        assert!(check(&host, &detect(&host), limits).is_ok());
        let host = FakeHost::legacy();
        assert!(check(&host, &detect(&host), limits).is_ok());
        assert!(host.created().is_empty());
    }

    #[test]
    fn a_root_that_refuses_controllers_is_an_error_naming_the_file() {
        let host = FakeHost::unified("memory pids");
        host.refuse_writes_to(&host.cgroup_root().join("cgroup.subtree_control"));
        let layout = detect(&host);
        let err = create(
            &host,
            &layout,
            &paths(&layout, "m"),
            Limits { memory_mb: 64 },
        )
        .unwrap_err();
        assert!(err.to_string().contains("cgroup.subtree_control"), "{err}");
    }

    #[test]
    fn kill_all_signals_every_process_below_and_remove_goes_deepest_first() {
        let host = FakeHost::unified("memory");
        let layout = detect(&host);
        let dirs = paths(&layout, "m");
        create(&host, &layout, &dirs, Limits::default()).unwrap();
        let payload = dirs[0].join("payload");
        host.cgroup_mkdir(&payload).unwrap();
        let a = host.add_process("systemd-nspawn --machine=core-01", Some(&dirs[0]));
        let b = host.add_process("/sbin/init", Some(&payload));
        let outsider = host.add_process("tail -f /var/lib/ferrite/clusters/x/console.log", None);
        kill_all(&host, &dirs);
        assert!(host.cmdline(a).is_none() && host.cmdline(b).is_none());
        assert!(
            host.cmdline(outsider).is_some(),
            "a process outside the cgroup was killed"
        );
        remove(&host, &dirs);
        assert_eq!(host.removed(), vec![payload, dirs[0].clone()]);
    }
}

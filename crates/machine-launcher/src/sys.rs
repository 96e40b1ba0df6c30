//! The host operations the launcher needs, each a small function over one system tool
//! (`ip`, `mount`, `umount`) or a file under `/proc` and `/sys`, with errors that name
//! what was being done.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Error;

/// Runs a host tool.
pub fn run(cmd: &mut Command) -> Result<String, Error> {
    Ok(host_command::run(cmd)?)
}

fn ip(args: &[&str]) -> Result<String, Error> {
    run(Command::new("ip").args(args))
}

/// Whether a named network namespace exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Creates a named network namespace with loopback up (no-op if it exists).
pub fn netns_add(name: &str) -> Result<(), Error> {
    if !netns_exists(name) {
        ip(&["netns", "add", name])?;
    }
    ip(&["-n", name, "link", "set", "lo", "up"]).map(drop)
}

/// Deletes a named network namespace if it exists.
pub fn netns_del(name: &str) -> Result<(), Error> {
    if netns_exists(name) {
        ip(&["netns", "del", name])?;
    }
    Ok(())
}

/// Whether `link` exists in namespace `ns`.
pub fn link_exists(ns: &str, link: &str) -> bool {
    ip(&["-n", ns, "link", "show", link]).is_ok()
}

/// A bridge with an address in namespace `ns`.
pub fn bridge(ns: &str, name: &str, cidr: &str) -> Result<(), Error> {
    if !link_exists(ns, name) {
        ip(&["-n", ns, "link", "add", name, "type", "bridge"])?;
        ip(&["-n", ns, "addr", "add", cidr, "dev", name])?;
    }
    ip(&["-n", ns, "link", "set", name, "up"]).map(drop)
}

/// A veth pair: `outer` in `switch_ns` attached to `bridge`, `eth0` in `machine_ns` with
/// `cidr` and a default route via `gateway`.
pub fn machine_link(
    switch_ns: &str,
    bridge: &str,
    outer: &str,
    machine_ns: &str,
    cidr: &str,
    gateway: &str,
) -> Result<(), Error> {
    if !link_exists(machine_ns, "eth0") {
        if link_exists(switch_ns, outer) {
            ip(&["-n", switch_ns, "link", "del", outer])?;
        }
        ip(&[
            "-n", switch_ns, "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns",
            machine_ns,
        ])?;
        ip(&["-n", machine_ns, "addr", "add", cidr, "dev", "eth0"])?;
    }
    ip(&[
        "-n", switch_ns, "link", "set", outer, "master", bridge, "up",
    ])?;
    ip(&["-n", machine_ns, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n", machine_ns, "route", "replace", "default", "via", gateway,
    ])
    .map(drop)
}

/// Whether `path` is a mount point.
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    let want = canon.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mount(m) == want)
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Mounts part of an image file (a loop device that goes away on unmount).
pub fn mount_partition(
    image: &Path,
    offset: u64,
    bytes: u64,
    dir: &Path,
    read_only: bool,
) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(crate::io_err("creating", dir))?;
    let mode = if read_only { "ro" } else { "rw" };
    run(Command::new("mount")
        .arg("-o")
        .arg(format!("{mode},loop,offset={offset},sizelimit={bytes}"))
        .arg(image)
        .arg(dir))
    .map(drop)
}

/// A read-only bind mount of `src` on `dst`.
pub fn bind_ro(src: &Path, dst: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dst).map_err(crate::io_err("creating", dst))?;
    run(Command::new("mount").arg("--bind").arg(src).arg(dst))?;
    run(Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(dst))
    .map(drop)
}

/// Unmounts `dir` if it is a mount point (lazily if busy).
pub fn unmount(dir: &Path) -> Result<(), Error> {
    // Stacked mounts are unmounted one by one (bounded).
    for _ in 0..16 {
        if !is_mountpoint(dir) {
            return Ok(());
        }
        if run(Command::new("umount").arg(dir)).is_err() {
            run(Command::new("umount").arg("-l").arg(dir))?;
        }
    }
    Ok(())
}

/// The command line of a process, or `None` if it is gone.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Whether `pid` is alive and its command line contains `needle`.
pub fn process_matches(pid: u32, needle: &str) -> bool {
    cmdline(pid).is_some_and(|c| c.contains(needle))
}

/// The children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// Sends a signal to a process with `kill(1)`.
pub fn signal(pid: u32, sig: &str) -> Result<(), Error> {
    run(Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string()))
    .map(drop)
}

/// Waits until `done` holds, polling every 50 ms, for at most `limit`.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The cgroup v1/v2 hierarchies mounted under `/sys/fs/cgroup`, with this process's path in
/// each: (mount directory, path inside the hierarchy).
pub fn cgroup_hierarchies() -> Vec<(PathBuf, String)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let dir = e.path();
        if !dir.join("cgroup.procs").exists() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
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
    out
}

/// The cgroup directory `leaf` under this process's cgroup in every hierarchy.
pub fn cgroup_paths(leaf: &str) -> Vec<PathBuf> {
    cgroup_hierarchies()
        .into_iter()
        .map(|(mount, own)| mount.join(own.trim_start_matches('/')).join(leaf))
        .collect()
}

/// Creates cgroup directories (copying cpuset settings down, as a new cpuset cgroup starts
/// empty).
pub fn make_cgroups(dirs: &[PathBuf]) -> Result<(), Error> {
    for dir in dirs {
        std::fs::create_dir_all(dir).map_err(crate::io_err("creating cgroup", dir))?;
        if dir.to_string_lossy().contains("/cpuset/") {
            let parent = dir.parent().unwrap_or(dir);
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                std::fs::write(dir.join(f), v.trim())
                    .map_err(crate::io_err("writing", &dir.join(f)))?;
            }
        }
    }
    Ok(())
}

/// Mount points at or below `dir`, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let base = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(&base))
        .collect()
}

/// Moves the calling process into each cgroup.
pub fn join_cgroups(dirs: &[PathBuf]) -> Result<(), Error> {
    let me = std::process::id().to_string();
    for d in dirs {
        let procs = d.join("cgroup.procs");
        std::fs::write(&procs, &me).map_err(crate::io_err("joining cgroup", &procs))?;
    }
    Ok(())
}

/// Removes cgroup directories (deepest first), retrying while processes drain out.
pub fn remove_cgroups(dirs: &[PathBuf]) {
    for d in dirs {
        if !d.exists() {
            continue;
        }
        // Nested cgroups the machine created go first.
        let _ = Command::new("find")
            .arg(d)
            .args([
                "-mindepth",
                "1",
                "-depth",
                "-type",
                "d",
                "-exec",
                "rmdir",
                "{}",
                ";",
            ])
            .output();
        wait_until(Duration::from_secs(5), || {
            std::fs::remove_dir(d).is_ok() || !d.exists()
        });
    }
}

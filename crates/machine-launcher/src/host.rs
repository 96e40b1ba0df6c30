//! The seam between the launcher's decisions and the host: every kernel object it creates
//! or removes (network namespaces, links, mounts, cgroup directories and files) and every
//! process it starts or signals goes through [`Host`]. [`RealHost`] does it with the
//! standard tools (`ip`, `mount`, `umount`, `kill`) and files under `/proc` and `/sys`; the
//! tests' recording fake (`fake.rs`) keeps a log instead, so the order of operations
//! (record, then create), teardown and the cgroup logic are tested without root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{io_err, Error};

/// A veth pair joining a machine's namespace to its cluster's bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineLink {
    /// The switch namespace holding the bridge.
    pub switch_ns: String,
    /// The bridge.
    pub bridge: String,
    /// The outer end's name, in the switch namespace.
    pub outer: String,
    /// The machine's namespace; its end is `eth0`.
    pub machine_ns: String,
    /// `eth0`'s address, `a.b.c.d/24`.
    pub cidr: String,
    /// The default route's gateway.
    pub gateway: String,
}

/// The host operations the launcher performs.
pub trait Host: Sync {
    /// Runs a standard tool that changes nothing the launcher records (`cp`, `ssh-keygen`,
    /// `etcdctl`, `chown`), returning its standard output.
    fn run(&self, cmd: &mut Command) -> Result<String, Error>;
    /// Starts a long-lived process (detached by the caller's `setsid`) and returns its PID.
    fn spawn(&self, what: &str, cmd: &mut Command) -> Result<u32, Error>;

    /// The named network namespaces.
    fn netns_list(&self) -> Vec<String>;
    /// Creates a named network namespace with loopback up (nothing if it exists).
    fn netns_add(&self, name: &str) -> Result<(), Error>;
    /// Deletes a named network namespace if it exists.
    fn netns_del(&self, name: &str) -> Result<(), Error>;
    /// A bridge with an address in namespace `ns` (kept if it exists), up.
    fn bridge(&self, ns: &str, name: &str, cidr: &str) -> Result<(), Error>;
    /// The veth pair, `eth0`'s address and the default route of a machine.
    fn machine_link(&self, link: &MachineLink) -> Result<(), Error>;
    /// A tap device for a virtual machine in namespace `ns`, on `bridge`, up.
    fn machine_tap(&self, ns: &str, bridge: &str, tap: &str) -> Result<(), Error>;

    /// Whether `path` is a mount point.
    fn is_mountpoint(&self, path: &Path) -> bool;
    /// Whether a program of that name is on `PATH`.
    fn has_program(&self, name: &str) -> bool;
    /// Mount points at or below `dir`, in mount order.
    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf>;
    /// Mounts part of an image file (a loop device that goes away on unmount).
    fn mount_partition(
        &self,
        image: &Path,
        offset: u64,
        bytes: u64,
        dir: &Path,
        read_only: bool,
    ) -> Result<(), Error>;
    /// A read-only bind mount of `src` on `dst`.
    fn bind_ro(&self, src: &Path, dst: &Path) -> Result<(), Error>;
    /// Unmounts `dir` while it is a mount point (lazily if busy).
    fn unmount(&self, dir: &Path) -> Result<(), Error>;

    /// A process's command line (arguments joined by spaces), or `None` if it is gone.
    fn cmdline(&self, pid: u32) -> Option<String>;
    /// The children of a process.
    fn children(&self, pid: u32) -> Vec<u32>;
    /// Sends a signal (`KILL`, `RTMIN+4`) to a process.
    fn signal(&self, pid: u32, sig: &str) -> Result<(), Error>;

    /// Where the cgroup hierarchies are mounted (`/sys/fs/cgroup`).
    fn cgroup_root(&self) -> PathBuf;
    /// This process's `/proc/self/cgroup`.
    fn own_cgroups(&self) -> String;
    /// Reads a cgroup file.
    fn cgroup_read(&self, file: &Path) -> Result<String, Error>;
    /// Writes a cgroup file (one value, as the kernel takes it).
    fn cgroup_write(&self, file: &Path, value: &str) -> Result<(), Error>;
    /// Creates a cgroup directory and its parents.
    fn cgroup_mkdir(&self, dir: &Path) -> Result<(), Error>;
    /// Removes an empty cgroup directory.
    fn cgroup_rmdir(&self, dir: &Path) -> Result<(), Error>;
    /// The cgroup directories directly below `dir`.
    fn cgroup_children(&self, dir: &Path) -> Vec<PathBuf>;

    /// A kernel limit (`fs.inotify.max_user_instances`), if this kernel has it.
    fn sysctl_read(&self, key: &str) -> Option<u64>;
    /// Whether [`Host::sysctl_write`] can change `key`.
    fn sysctl_writable(&self, key: &str) -> bool;
    /// Sets a kernel limit.
    fn sysctl_write(&self, key: &str, value: u64) -> Result<(), Error>;

    /// Waits a little before polling again.
    fn pause(&self) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/proc/sys/…` of a sysctl name.
fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// Waits until `done` holds, polling, for at most `limit`.
pub fn wait_until(host: &dyn Host, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        host.pause();
    }
}

/// Whether `pid` is alive and its command line contains `needle`.
pub fn process_matches(host: &dyn Host, pid: u32, needle: &str) -> bool {
    host.cmdline(pid).is_some_and(|c| c.contains(needle))
}

/// The host itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealHost;

fn ip(args: &[&str]) -> Result<String, Error> {
    Ok(host_command::run(host_command::command("ip").args(args))?)
}

fn link_exists(ns: &str, link: &str) -> bool {
    ip(&["-n", ns, "link", "show", link]).is_ok()
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .collect()
}

impl Host for RealHost {
    fn run(&self, cmd: &mut Command) -> Result<String, Error> {
        Ok(host_command::run(cmd)?)
    }

    fn spawn(&self, what: &str, cmd: &mut Command) -> Result<u32, Error> {
        cmd.spawn().map(|c| c.id()).map_err(|source| Error::Spawn {
            command: what.to_string(),
            source,
        })
    }

    fn netns_list(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|it| {
                it.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn netns_add(&self, name: &str) -> Result<(), Error> {
        if !Path::new("/run/netns").join(name).exists() {
            ip(&["netns", "add", name])?;
        }
        ip(&["-n", name, "link", "set", "lo", "up"]).map(drop)
    }

    fn netns_del(&self, name: &str) -> Result<(), Error> {
        if Path::new("/run/netns").join(name).exists() {
            ip(&["netns", "del", name])?;
        }
        Ok(())
    }

    fn bridge(&self, ns: &str, name: &str, cidr: &str) -> Result<(), Error> {
        if !link_exists(ns, name) {
            ip(&["-n", ns, "link", "add", name, "type", "bridge"])?;
            ip(&["-n", ns, "addr", "add", cidr, "dev", name])?;
        }
        ip(&["-n", ns, "link", "set", name, "up"]).map(drop)
    }

    fn machine_link(&self, l: &MachineLink) -> Result<(), Error> {
        let (sw, mns) = (l.switch_ns.as_str(), l.machine_ns.as_str());
        if !link_exists(mns, "eth0") {
            if link_exists(sw, &l.outer) {
                ip(&["-n", sw, "link", "del", &l.outer])?;
            }
            ip(&[
                "-n", sw, "link", "add", &l.outer, "type", "veth", "peer", "name", "eth0", "netns",
                mns,
            ])?;
            ip(&["-n", mns, "addr", "add", &l.cidr, "dev", "eth0"])?;
        }
        ip(&["-n", sw, "link", "set", &l.outer, "master", &l.bridge, "up"])?;
        ip(&["-n", mns, "link", "set", "eth0", "up"])?;
        ip(&["-n", mns, "route", "replace", "default", "via", &l.gateway]).map(drop)
    }

    fn machine_tap(&self, ns: &str, bridge: &str, tap: &str) -> Result<(), Error> {
        if !link_exists(ns, tap) {
            ip(&["-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"])?;
        }
        ip(&["-n", ns, "link", "set", tap, "master", bridge, "up"]).map(drop)
    }

    fn has_program(&self, name: &str) -> bool {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()))
    }

    fn is_mountpoint(&self, path: &Path) -> bool {
        let Ok(canon) = path.canonicalize() else {
            return false;
        };
        mount_points().contains(&canon)
    }

    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        let base = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&base))
            .collect()
    }

    fn mount_partition(
        &self,
        image: &Path,
        offset: u64,
        bytes: u64,
        dir: &Path,
        read_only: bool,
    ) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let mode = if read_only { "ro" } else { "rw" };
        self.run(
            host_command::command("mount")
                .arg("-o")
                .arg(format!("{mode},loop,offset={offset},sizelimit={bytes}"))
                .arg(image)
                .arg(dir),
        )
        .map(drop)
    }

    fn bind_ro(&self, src: &Path, dst: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dst).map_err(io_err("creating", dst))?;
        self.run(
            host_command::command("mount")
                .arg("--bind")
                .arg(src)
                .arg(dst),
        )?;
        self.run(
            host_command::command("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(dst),
        )
        .map(drop)
    }

    fn unmount(&self, dir: &Path) -> Result<(), Error> {
        // Stacked mounts are unmounted one by one (bounded).
        for _ in 0..16 {
            if !self.is_mountpoint(dir) {
                return Ok(());
            }
            if self.run(host_command::command("umount").arg(dir)).is_err() {
                self.run(host_command::command("umount").arg("-l").arg(dir))?;
            }
        }
        Ok(())
    }

    fn cmdline(&self, pid: u32) -> Option<String> {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some(
            raw.split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" "),
        )
    }

    fn children(&self, pid: u32) -> Vec<u32> {
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

    fn signal(&self, pid: u32, sig: &str) -> Result<(), Error> {
        self.run(
            host_command::command("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string()),
        )
        .map(drop)
    }

    fn cgroup_root(&self) -> PathBuf {
        PathBuf::from("/sys/fs/cgroup")
    }

    fn own_cgroups(&self) -> String {
        std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default()
    }

    fn cgroup_read(&self, file: &Path) -> Result<String, Error> {
        std::fs::read_to_string(file).map_err(io_err("reading", file))
    }

    fn cgroup_write(&self, file: &Path, value: &str) -> Result<(), Error> {
        // A cgroup file takes one write of one value; it is never a regular file that a
        // partial write could leave half-written.
        #[allow(clippy::disallowed_methods)]
        std::fs::write(file, value).map_err(io_err("writing", file))
    }

    fn cgroup_mkdir(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(io_err("creating cgroup", dir))
    }

    fn cgroup_rmdir(&self, dir: &Path) -> Result<(), Error> {
        std::fs::remove_dir(dir).map_err(io_err("removing cgroup", dir))
    }

    fn cgroup_children(&self, dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|it| {
                it.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn sysctl_read(&self, key: &str) -> Option<u64> {
        std::fs::read_to_string(sysctl_path(key))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    fn sysctl_writable(&self, key: &str) -> bool {
        std::fs::OpenOptions::new()
            .write(true)
            .open(sysctl_path(key))
            .is_ok()
    }

    fn sysctl_write(&self, key: &str, value: u64) -> Result<(), Error> {
        use std::io::Write as _;
        let p = sysctl_path(key);
        // A /proc/sys file takes one write of one value, like a cgroup file.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|mut f| f.write_all(value.to_string().as_bytes()))
            .map_err(io_err("writing", &p))
    }
}

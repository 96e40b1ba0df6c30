//! A recording [`Host`] for tests: kernel objects and processes are entries in memory, cgroup
//! directories and files live in a temporary directory, and every change is logged in order.
//! An optional check runs before each creating operation (the record-before-create tests).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::host::{Host, MachineLink};
use crate::{io_err, Error};

/// One logged operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    NetnsAdd(String),
    NetnsDel(String),
    Bridge(String),
    Link(String),
    Mount(PathBuf),
    Unmount(PathBuf),
    Mkdir(PathBuf),
    Rmdir(PathBuf),
    Write(PathBuf, String),
    Spawn(String),
    Signal(u32, String),
    Run(String),
}

#[derive(Debug, Default)]
struct Proc {
    cmdline: String,
    cgroup: Option<PathBuf>,
    parent: Option<u32>,
}

type Check = Box<dyn Fn(&Op) + Send + Sync>;

#[derive(Default)]
struct Inner {
    log: Vec<Op>,
    netns: Vec<String>,
    mounts: Vec<PathBuf>,
    procs: BTreeMap<u32, Proc>,
    next_pid: u32,
    refused: Vec<PathBuf>,
    /// Unmounts fail (a busy mount).
    busy_mounts: bool,
    sysctls: BTreeMap<String, u64>,
    read_only_sysctls: Vec<String>,
}

/// The fake host.
pub struct FakeHost {
    dir: tempfile::TempDir,
    inner: Mutex<Inner>,
    check: Mutex<Option<Check>>,
    own: String,
}

impl std::fmt::Debug for FakeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHost")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl FakeHost {
    fn new(own: &str) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            inner: Mutex::new(Inner {
                next_pid: 1000,
                ..Inner::default()
            }),
            check: Mutex::new(None),
            own: own.to_string(),
        }
    }

    fn put(&self, rel: &str, text: &str) {
        let p = self.cgroup_root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A hybrid host like Debian 11's: v1 controllers, `systemd` and a controller-less
    /// `unified`; this process in `/payload/x` of the memory hierarchy.
    /// Gives the fake kernel limit `key` the value `value`.
    pub fn set_sysctl(&self, key: &str, value: u64) {
        self.inner
            .lock()
            .unwrap()
            .sysctls
            .insert(key.to_string(), value);
    }

    /// Makes limit `key` read-only (as in a container).
    pub fn set_sysctl_read_only(&self, key: &str) {
        self.inner
            .lock()
            .unwrap()
            .read_only_sysctls
            .push(key.to_string());
    }

    pub fn legacy() -> Self {
        let h = Self::new("12:memory:/payload/x\n11:cpuset:/\n1:name=systemd:/\n0::/\n");
        for c in ["memory", "cpuset", "systemd", "unified"] {
            h.put(&format!("{c}/cgroup.procs"), "");
        }
        h.put("cpuset/cpuset.cpus", "0-1\n");
        h.put("cpuset/cpuset.mems", "0\n");
        h
    }

    /// A cgroup v2 host offering `controllers`, its root already handing down those of
    /// `cpuset` and `memory` it offers (as systemd leaves it).
    pub fn unified(controllers: &str) -> Self {
        let h = Self::new("0::/user.slice/session-1.scope\n");
        h.put("cgroup.controllers", controllers);
        let on: Vec<&str> = controllers
            .split_whitespace()
            .filter(|c| ["cpuset", "memory"].contains(c))
            .collect();
        h.put("cgroup.subtree_control", &on.join(" "));
        h.put("cgroup.procs", "1\n");
        h
    }

    /// A directory for the test's state.
    pub fn state_dir(&self) -> PathBuf {
        let d = self.dir.path().join("state");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Runs `check` before every creating operation.
    pub fn check_before_create(&self, check: impl Fn(&Op) + Send + Sync + 'static) {
        *self.check.lock().unwrap() = Some(Box::new(check));
    }

    fn log(&self, op: Op) {
        let creates = matches!(
            op,
            Op::NetnsAdd(_)
                | Op::Bridge(_)
                | Op::Link(_)
                | Op::Mount(_)
                | Op::Mkdir(_)
                | Op::Spawn(_)
        );
        if creates {
            if let Some(check) = self.check.lock().unwrap().as_ref() {
                check(&op);
            }
        }
        self.inner.lock().unwrap().log.push(op);
    }

    /// Everything done so far.
    pub fn ops(&self) -> Vec<Op> {
        self.inner.lock().unwrap().log.clone()
    }

    /// The cgroup directories created.
    pub fn created(&self) -> Vec<PathBuf> {
        self.ops()
            .into_iter()
            .filter_map(|o| match o {
                Op::Mkdir(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// The cgroup directories removed.
    pub fn removed(&self) -> Vec<PathBuf> {
        self.ops()
            .into_iter()
            .filter_map(|o| match o {
                Op::Rmdir(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// The writes to files called `name`: (directory, value).
    pub fn writes_to(&self, name: &str) -> Vec<(PathBuf, String)> {
        self.ops()
            .into_iter()
            .filter_map(|o| match o {
                Op::Write(p, v) if p.file_name().is_some_and(|n| n == name) => {
                    Some((p.parent()?.to_path_buf(), v))
                }
                _ => None,
            })
            .collect()
    }

    /// A file's content under the cgroup root.
    pub fn file(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    /// Makes writes to `file` fail (as a busy root's `subtree_control` does).
    pub fn refuse_writes_to(&self, file: &Path) {
        self.inner.lock().unwrap().refused.push(file.to_path_buf());
    }

    /// Makes every unmount fail, as a busy mount's does.
    pub fn busy_mounts(&self) {
        self.inner.lock().unwrap().busy_mounts = true;
    }

    /// A running process, in `cgroup` if given; returns its PID.
    pub fn add_process(&self, cmdline: &str, cgroup: Option<&Path>) -> u32 {
        let mut inner = self.inner.lock().unwrap();
        inner.next_pid += 1;
        let pid = inner.next_pid;
        inner.procs.insert(
            pid,
            Proc {
                cmdline: cmdline.to_string(),
                cgroup: cgroup.map(Path::to_path_buf),
                parent: None,
            },
        );
        pid
    }

    /// The namespaces that exist.
    pub fn namespaces(&self) -> Vec<String> {
        self.inner.lock().unwrap().netns.clone()
    }

    /// The mounts that exist.
    pub fn mounts(&self) -> Vec<PathBuf> {
        self.inner.lock().unwrap().mounts.clone()
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Host for FakeHost {
    fn run(&self, cmd: &mut Command) -> Result<String, Error> {
        self.log(Op::Run(describe(cmd)));
        Ok(String::new())
    }

    fn spawn(&self, _what: &str, cmd: &mut Command) -> Result<u32, Error> {
        let line = describe(cmd);
        self.log(Op::Spawn(line.clone()));
        // `ferrite __boot --cgroup A --cgroup B -- prog`: the process joins A and B first.
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let cgroup = args
            .iter()
            .position(|a| a == "--cgroup")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from);
        let pid = self.add_process(&line, cgroup.as_deref());
        // The supervisor starts nspawn, which starts the machine's init.
        if line.contains("__nspawn") {
            let nspawn = self.add_process("systemd-nspawn --boot", cgroup.as_deref());
            let init = self.add_process("/usr/lib/systemd/systemd", cgroup.as_deref());
            let mut inner = self.inner.lock().unwrap();
            if let Some(p) = inner.procs.get_mut(&nspawn) {
                p.parent = Some(pid);
            }
            if let Some(p) = inner.procs.get_mut(&init) {
                p.parent = Some(nspawn);
            }
        }
        Ok(pid)
    }

    fn netns_list(&self) -> Vec<String> {
        self.namespaces()
    }

    fn netns_add(&self, name: &str) -> Result<(), Error> {
        if !self.namespaces().iter().any(|n| n == name) {
            self.log(Op::NetnsAdd(name.to_string()));
            self.inner.lock().unwrap().netns.push(name.to_string());
        }
        Ok(())
    }

    fn netns_del(&self, name: &str) -> Result<(), Error> {
        self.log(Op::NetnsDel(name.to_string()));
        self.inner.lock().unwrap().netns.retain(|n| n != name);
        Ok(())
    }

    fn bridge(&self, ns: &str, name: &str, _cidr: &str) -> Result<(), Error> {
        self.log(Op::Bridge(format!("{ns}/{name}")));
        Ok(())
    }

    fn machine_link(&self, link: &MachineLink) -> Result<(), Error> {
        self.log(Op::Link(format!("{}/{}", link.switch_ns, link.outer)));
        Ok(())
    }

    fn machine_tap(&self, ns: &str, _bridge: &str, tap: &str) -> Result<(), Error> {
        self.log(Op::Link(format!("{ns}/{tap}")));
        Ok(())
    }

    fn has_program(&self, _name: &str) -> bool {
        true
    }

    fn is_mountpoint(&self, path: &Path) -> bool {
        self.mounts().iter().any(|m| m == path)
    }

    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        self.mounts()
            .into_iter()
            .filter(|m| m.starts_with(dir))
            .collect()
    }

    fn mount_partition(
        &self,
        _image: &Path,
        _offset: u64,
        _bytes: u64,
        dir: &Path,
        _read_only: bool,
    ) -> Result<(), Error> {
        self.log(Op::Mount(dir.to_path_buf()));
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        self.inner.lock().unwrap().mounts.push(dir.to_path_buf());
        Ok(())
    }

    fn bind_ro(&self, _src: &Path, dst: &Path) -> Result<(), Error> {
        self.mount_partition(Path::new(""), 0, 0, dst, true)
    }

    fn unmount(&self, dir: &Path) -> Result<(), Error> {
        if self.is_mountpoint(dir) && self.inner.lock().unwrap().busy_mounts {
            return Err(Error::Io {
                op: "unmounting",
                path: dir.to_path_buf(),
                source: std::io::Error::other("target is busy"),
            });
        }
        if self.is_mountpoint(dir) {
            self.log(Op::Unmount(dir.to_path_buf()));
            self.inner.lock().unwrap().mounts.retain(|m| m != dir);
        }
        Ok(())
    }

    fn cmdline(&self, pid: u32) -> Option<String> {
        let inner = self.inner.lock().unwrap();
        inner.procs.get(&pid).map(|p| p.cmdline.clone())
    }

    fn children(&self, pid: u32) -> Vec<u32> {
        let inner = self.inner.lock().unwrap();
        inner
            .procs
            .iter()
            .filter(|(_, p)| p.parent == Some(pid))
            .map(|(k, _)| *k)
            .collect()
    }

    fn signal(&self, pid: u32, sig: &str) -> Result<(), Error> {
        self.log(Op::Signal(pid, sig.to_string()));
        let mut inner = self.inner.lock().unwrap();
        if matches!(sig, "KILL" | "RTMIN+4") {
            // A killed nspawn takes its machine with it; nspawn exits when its machine's
            // init does (powered off or killed).
            // (And the supervisor when its nspawn ends.)
            let mut ancestors = Vec::new();
            let mut at = inner.procs.get(&pid).and_then(|p| p.parent);
            while let Some(a) = at {
                ancestors.push(a);
                at = inner.procs.get(&a).and_then(|p| p.parent);
            }
            inner
                .procs
                .retain(|k, p| *k != pid && p.parent != Some(pid));
            for a in ancestors {
                inner.procs.remove(&a);
            }
        }
        Ok(())
    }

    fn cgroup_root(&self) -> PathBuf {
        self.dir.path().join("cgroup")
    }

    fn own_cgroups(&self) -> String {
        self.own.clone()
    }

    fn cgroup_read(&self, file: &Path) -> Result<String, Error> {
        if file.file_name().is_some_and(|n| n == "cgroup.procs") {
            let dir = file.parent().unwrap_or(file);
            if !dir.is_dir() {
                return Err(io_err("reading", file)(std::io::ErrorKind::NotFound.into()));
            }
            let inner = self.inner.lock().unwrap();
            let pids: Vec<String> = inner
                .procs
                .iter()
                .filter(|(_, p)| p.cgroup.as_deref() == Some(dir))
                .map(|(k, _)| k.to_string())
                .collect();
            return Ok(pids.join("\n"));
        }
        std::fs::read_to_string(file).map_err(io_err("reading", file))
    }

    fn cgroup_write(&self, file: &Path, value: &str) -> Result<(), Error> {
        if self.inner.lock().unwrap().refused.iter().any(|r| r == file) {
            return Err(io_err("writing", file)(std::io::Error::from_raw_os_error(
                16,
            )));
        }
        self.log(Op::Write(file.to_path_buf(), value.to_string()));
        let dir = file.parent().unwrap_or(file);
        if file.file_name().is_some_and(|n| n == "cgroup.procs") {
            let pid: u32 = value.trim().parse().unwrap();
            let mut inner = self.inner.lock().unwrap();
            inner.procs.entry(pid).or_default().cgroup = Some(dir.to_path_buf());
            return Ok(());
        }
        if file
            .file_name()
            .is_some_and(|n| n == "cgroup.subtree_control")
        {
            // The kernel takes "+c" and keeps the set.
            let mut on: Vec<String> = std::fs::read_to_string(file)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
            on.push(value.trim_start_matches('+').to_string());
            return std::fs::write(file, on.join(" ")).map_err(io_err("writing", file));
        }
        std::fs::write(file, value).map_err(io_err("writing", file))
    }

    fn cgroup_mkdir(&self, dir: &Path) -> Result<(), Error> {
        if !dir.is_dir() {
            self.log(Op::Mkdir(dir.to_path_buf()));
        }
        std::fs::create_dir_all(dir).map_err(io_err("creating cgroup", dir))?;
        // A new cgroup has these files; cpuset's start empty, as the kernel's do.
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if dir.to_string_lossy().contains("/cpuset/") && !dir.join(f).exists() {
                std::fs::write(dir.join(f), "").map_err(io_err("writing", dir))?;
            }
        }
        Ok(())
    }

    fn cgroup_rmdir(&self, dir: &Path) -> Result<(), Error> {
        let busy = {
            let inner = self.inner.lock().unwrap();
            inner
                .procs
                .values()
                .any(|p| p.cgroup.as_deref() == Some(dir))
        };
        if busy || !self.cgroup_children(dir).is_empty() {
            return Err(io_err("removing cgroup", dir)(
                std::io::Error::from_raw_os_error(16),
            ));
        }
        self.log(Op::Rmdir(dir.to_path_buf()));
        std::fs::remove_dir_all(dir).map_err(io_err("removing cgroup", dir))
    }

    fn cgroup_children(&self, dir: &Path) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|it| {
                it.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    fn sysctl_read(&self, key: &str) -> Option<u64> {
        self.inner.lock().unwrap().sysctls.get(key).copied()
    }

    fn sysctl_writable(&self, key: &str) -> bool {
        !self
            .inner
            .lock()
            .unwrap()
            .read_only_sysctls
            .iter()
            .any(|k| k == key)
    }

    fn sysctl_write(&self, key: &str, value: u64) -> Result<(), Error> {
        let mut i = self.inner.lock().unwrap();
        i.log.push(Op::Write(PathBuf::from(key), value.to_string()));
        i.sysctls.insert(key.to_string(), value);
        Ok(())
    }

    fn pause(&self) {}
}

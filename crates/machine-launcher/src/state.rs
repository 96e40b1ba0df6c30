//! A cluster's recorded state (`<state>/clusters/<name>/cluster.json`, saved atomically on
//! every change, so it always names what exists), the locks that keep two commands from
//! changing one cluster at once, and the names every kernel object is given.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{io_err, Error, Paths, Settings};

/// A cluster's recorded state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    /// Its name.
    pub name: String,
    /// A random identifier naming its kernel objects (namespaces, cgroups), so clusters of
    /// the same name under different state directories never meet.
    pub id: String,
    /// N in 172.20.N.0/24.
    pub subnet: u8,
    /// The settings it was created with.
    pub settings: Settings,
    /// The image machines are created from.
    pub image: PathBuf,
    /// The discovery service, if the user-data uses one.
    pub discovery: Option<Discovery>,
    /// The update service (absent in state from before it was started).
    #[serde(default)]
    pub updates: Option<Service>,
    /// The image registry (absent in state from before it was started).
    #[serde(default)]
    pub registry: Option<Service>,
    /// The machines.
    pub machines: Vec<MachineState>,
}

/// The cluster's etcd discovery service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Discovery {
    /// The etcd process.
    pub pid: Option<u32>,
    /// The URL machines use: `http://172.20.N.1:2379/v2/keys/_etcd/registry/<token>`.
    pub url: String,
    /// The cgroups it runs in (recorded before it starts; empty in state older than them).
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
}

/// A service process the cluster runs on the host side (the update service).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Service {
    /// Its process.
    pub pid: Option<u32>,
    /// The cgroups it runs in (recorded before it starts).
    pub cgroups: Vec<PathBuf>,
}

/// One machine's recorded state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineState {
    /// `core-01`.
    pub name: String,
    /// Its 1-based index.
    pub index: u32,
    /// Its address.
    pub ip: String,
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// The `ferrite __boot` → `systemd-nspawn` process, while running.
    pub pid: Option<u32>,
    /// The shared `/usr` mount it uses while running.
    pub usr_mount: Option<PathBuf>,
    /// The USR partition it booted (`USR-A`/`USR-B`).
    pub usr_label: Option<String>,
    /// Its cgroups, while running.
    pub cgroups: Vec<PathBuf>,
    /// How it runs.
    #[serde(default)]
    pub driver: crate::Driver,
}

#[cfg(test)]
impl MachineState {
    /// Machine `index` of a test cluster on subnet 7, not running.
    pub(crate) fn example(index: u32, driver: crate::Driver) -> Self {
        Self {
            name: format!("core-{index:02}"),
            index,
            ip: format!("172.20.7.{}", 100 + index),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            pid: None,
            usr_mount: None,
            usr_label: None,
            cgroups: Vec::new(),
            driver,
        }
    }
}

impl ClusterState {
    fn path(paths: &Paths, name: &str) -> PathBuf {
        paths.cluster_dir(name).join("cluster.json")
    }

    /// Loads a cluster's state.
    pub fn load(paths: &Paths, name: &str) -> Result<Self, Error> {
        let p = Self::path(paths, name);
        let data = std::fs::read(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NoCluster(name.to_string()),
            _ => io_err("reading", &p)(e),
        })?;
        serde_json::from_slice(&data).map_err(|e| Error::State {
            path: p,
            reason: e.to_string(),
        })
    }

    /// Saves it atomically.
    pub fn save(&self, paths: &Paths) -> Result<(), Error> {
        let p = Self::path(paths, &self.name);
        let data = serde_json::to_vec_pretty(self).map_err(|e| Error::State {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        Ok(atomic_file::write(
            &p,
            &data,
            &atomic_file::Options::mode(0o600),
        )?)
    }

    /// The names of every cluster.
    pub fn list(paths: &Paths) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(paths.state.join("clusters"))
            .map(|it| {
                it.flatten()
                    .filter(|e| e.path().join("cluster.json").is_file())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The prefix of every namespace and cgroup of this cluster.
    pub fn object_prefix(&self) -> String {
        format!("ferrite-{}", self.id)
    }

    /// The network namespace of the cluster's bridge (its gateway address lives there).
    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.object_prefix())
    }

    /// The address machines reach the host side at: the bridge's, in [`Self::switch_ns`].
    pub fn gateway(&self) -> String {
        format!("172.20.{}.1", self.subnet)
    }

    pub(crate) fn machine_ns(&self, m: &MachineState) -> String {
        format!("{}-{}", self.object_prefix(), m.name)
    }

    pub(crate) fn machine_dir(&self, paths: &Paths, m: &str) -> PathBuf {
        paths.cluster_dir(&self.name).join("machines").join(m)
    }

    /// The machine called `name`.
    pub fn machine(&self, name: &str) -> Result<&MachineState, Error> {
        self.machine_index(name).map(|i| &self.machines[i])
    }

    /// The position of the machine called `name`.
    pub fn machine_index(&self, name: &str) -> Result<usize, Error> {
        self.machines
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| Error::NoMachine {
                cluster: self.name.clone(),
                machine: name.to_string(),
                known: self
                    .machines
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// Holds the cluster lock while alive (the lock is released when the file is closed).
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
}

/// Holds an exclusive `flock` on `path` (created if missing) until dropped.
fn lock_file(path: &Path) -> Result<Lock, Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("opening", path))?;
    f.lock().map_err(io_err("locking", path))?;
    Ok(Lock { _file: f })
}

/// The lock for the shared mounts under the run directory.
pub(crate) fn run_lock(paths: &Paths) -> Result<Lock, Error> {
    lock_file(&paths.run.join(".lock"))
}

/// Takes the exclusive lock of a cluster (so two commands never change it at once),
/// creating its directory: for `up`, which may create the cluster.
pub fn lock(paths: &Paths, cluster: &str) -> Result<Lock, Error> {
    lock_file(&paths.cluster_dir(cluster).join(".lock"))
}

/// Takes the lock of a cluster that exists; for an unknown cluster, `NoCluster`, with
/// nothing created (and a directory holding only a lock file, left by an earlier version,
/// removed).
pub fn lock_existing(paths: &Paths, cluster: &str) -> Result<Lock, Error> {
    let dir = paths.cluster_dir(cluster);
    if dir.join("cluster.json").is_file() {
        return lock(paths, cluster);
    }
    let only_lock = std::fs::read_dir(&dir)
        .map(|entries| entries.flatten().all(|e| e.file_name() == ".lock"))
        .unwrap_or(false);
    if only_lock {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Err(Error::NoCluster(cluster.to_string()))
}

pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

pub(crate) fn random_hex(bytes: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..bytes * 2].to_string()
}

/// The cluster state shared by the boot threads; every change is saved at once, so the
/// state on disk always names what exists.
pub(crate) struct Recorder<'a> {
    pub(crate) paths: &'a Paths,
    pub(crate) state: std::sync::Mutex<ClusterState>,
}

impl Recorder<'_> {
    pub(crate) fn update(
        &self,
        machine: &str,
        f: impl FnOnce(&mut MachineState),
    ) -> Result<(), Error> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| Error::Invalid("cluster state lock poisoned".into()))?;
        if let Some(m) = state.machines.iter_mut().find(|m| m.name == machine) {
            f(m);
        }
        state.save(self.paths)
    }

    pub(crate) fn snapshot(&self) -> Result<ClusterState, Error> {
        self.state
            .lock()
            .map(|s| s.clone())
            .map_err(|_| Error::Invalid("cluster state lock poisoned".into()))
    }
}

pub(crate) fn free_subnet(paths: &Paths, own: &str) -> Result<u8, Error> {
    let used: Vec<u8> = ClusterState::list(paths)
        .iter()
        .filter(|n| *n != own)
        .filter_map(|n| ClusterState::load(paths, n).ok())
        .map(|c| c.subnet)
        .collect();
    (0..=255u8)
        .find(|n| !used.contains(n))
        .ok_or(Error::NoSubnet)
}

//! Local clusters of Ferrite machines: what `vagrant` + coreos-vagrant were for CoreOS.
//!
//! A cluster is a directory of state (`<state>/clusters/<name>/cluster.json`) and, while it
//! runs, a set of kernel objects that [`destroy`] can always find again from that state:
//!
//! - a *switch* network namespace with a bridge (`172.20.N.1/24`), so no address or route is
//!   ever added to the host's own namespace;
//! - per machine, a network namespace joined to the bridge by a veth pair, its own address
//!   `172.20.N.(100+i)` (coreos-vagrant's `172.17.8.(100+i)` scheme on a subnet clear of
//!   Docker's `172.17.0.0/16`);
//! - per machine, a disk image (a copy of the built image, sparse) whose ROOT partition is
//!   loop-mounted as the machine's `/`, and the USR partition chosen by GRUB's
//!   `gptprio.next` on that disk loop-mounted read-only — shared by every machine booting the
//!   same filesystem, so binaries' pages are shared — and bound on `/usr`;
//! - per machine, a cgroup in every hierarchy, delegated to the machine so Docker can manage
//!   its own;
//! - `systemd-nspawn --boot`, systemd as PID 1, started detached through `ferrite __boot`;
//! - when the user-data names `https://discovery.etcd.io/<token>`, a discovery service (a
//!   Debian etcd with the v2 API, in the switch namespace) and a fresh token on it.
//!
//! First boot does what CoreOS's initramfs and tmpfiles did: the ROOT skeleton, `/etc` and
//! `/var` copied from `/usr/share/factory`, a machine ID, the disk GUID randomized,
//! `/etc/environment` with `COREOS_PUBLIC_IPV4`/`COREOS_PRIVATE_IPV4`, and the user-data
//! where coreos-vagrant put it (`/var/lib/coreos-vagrant/vagrantfile-user-data`), which the
//! image's path unit hands to `coreos-cloudinit` at boot.
//!
//! Invariants: every resource is recorded in the state before it is created; processes are
//! stopped only by the PIDs recorded, after checking their command line; nothing is
//! configured in the host's network namespace.

pub mod sys;

/// The cluster key's file name, on the host and in `core`'s `~/.ssh`.
pub const CLUSTER_KEY: &str = "id_ed25519";
/// `core`'s uid and gid.
const CORE_ID: u32 = 500;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coreos_disk::{Disk, PLACEHOLDER_DISK_GUID};
use serde::{Deserialize, Serialize};

/// A launcher failure, naming the cluster, machine, path or command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host tool failed.
    #[error(transparent)]
    Command(#[from] host_command::CommandError),
    /// A process could not be started.
    #[error("starting {command}: {source}")]
    Spawn {
        /// What was being started.
        command: String,
        /// The error.
        source: std::io::Error,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Cluster state that does not parse.
    #[error("{path}: invalid state: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
    /// The disk image could not be read or written.
    #[error(transparent)]
    Disk(#[from] coreos_disk::Error),
    /// No such cluster.
    #[error("no cluster {0:?} (run ferrite up first)")]
    NoCluster(String),
    /// No such machine in the cluster.
    #[error("cluster {cluster:?} has no machine {machine:?} (it has: {known})")]
    NoMachine {
        /// The cluster.
        cluster: String,
        /// The machine asked for.
        machine: String,
        /// The machines it has.
        known: String,
    },
    /// The machine is not running.
    #[error("machine {0} is not running")]
    NotRunning(String),
    /// The machine did not finish booting in time.
    #[error("machine {machine} did not finish booting within {seconds} s (console: {console})")]
    BootTimeout {
        /// The machine.
        machine: String,
        /// The limit.
        seconds: u64,
        /// Its console log.
        console: PathBuf,
    },
    /// A setting that cannot work.
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// User-data the validator finds errors in (coreos-cloudinit would refuse it at boot).
    #[error("{path}: the user-data has errors:\n{report}")]
    InvalidUserData {
        /// The file.
        path: PathBuf,
        /// The validator's report.
        report: String,
    },
    /// No free subnet for another cluster.
    #[error("no free 172.20.N.0/24 subnet for another cluster")]
    NoSubnet,
}

/// `op path` errors.
pub fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the launcher keeps state.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Cluster state (`/var/lib/ferrite`).
    pub state: PathBuf,
    /// Shared runtime mounts (`/run/ferrite`).
    pub run: PathBuf,
}

impl Paths {
    /// From `FERRITE_STATE_DIR` and `FERRITE_RUN_DIR`, or the defaults.
    pub fn from_env() -> Self {
        let var =
            |k: &str, d: &str| std::env::var_os(k).map_or_else(|| PathBuf::from(d), PathBuf::from);
        Self {
            state: var("FERRITE_STATE_DIR", "/var/lib/ferrite"),
            run: var("FERRITE_RUN_DIR", "/run/ferrite"),
        }
    }

    /// Where a cluster's state lives: `<state>/clusters/<name>`.
    pub fn cluster_dir(&self, cluster: &str) -> PathBuf {
        self.state.join("clusters").join(cluster)
    }
}

/// The coreos-vagrant settings of a cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Settings {
    /// Number of machines.
    pub instances: u32,
    /// Machine name prefix (`core` → `core-01`).
    pub prefix: String,
    /// Update channel of the image.
    pub channel: String,
    /// Memory limit per machine, MiB (0: none).
    pub memory_mb: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            instances: 1,
            prefix: "core".into(),
            channel: "alpha".into(),
            memory_mb: 1024,
        }
    }
}

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
            _ => Error::Io {
                op: "reading",
                path: p.clone(),
                source: e,
            },
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
        atomic_file::write(&p, &data, &atomic_file::Options::mode(0o600)).map_err(|e| Error::Io {
            op: "writing",
            path: p.clone(),
            source: e.source,
        })
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

    fn switch_ns(&self) -> String {
        format!("{}-sw", self.object_prefix())
    }

    fn gateway(&self) -> String {
        format!("172.20.{}.1", self.subnet)
    }

    fn machine_ns(&self, m: &MachineState) -> String {
        format!("{}-{}", self.object_prefix(), m.name)
    }

    fn machine_dir(&self, paths: &Paths, m: &str) -> PathBuf {
        paths.cluster_dir(&self.name).join("machines").join(m)
    }

    /// The machine called `name`.
    pub fn machine(&self, name: &str) -> Result<&MachineState, Error> {
        self.machines
            .iter()
            .find(|m| m.name == name)
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
fn run_lock(paths: &Paths) -> Result<Lock, Error> {
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

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

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

fn random_hex(bytes: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..bytes * 2].to_string()
}

/// The cluster state shared by the boot threads; every change is saved at once, so the
/// state on disk always names what exists.
struct Recorder<'a> {
    paths: &'a Paths,
    state: std::sync::Mutex<ClusterState>,
}

impl Recorder<'_> {
    fn update(&self, machine: &str, f: impl FnOnce(&mut MachineState)) -> Result<(), Error> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| Error::Invalid("cluster state lock poisoned".into()))?;
        if let Some(m) = state.machines.iter_mut().find(|m| m.name == machine) {
            f(m);
        }
        state.save(self.paths)
    }

    fn snapshot(&self) -> Result<ClusterState, Error> {
        self.state
            .lock()
            .map(|s| s.clone())
            .map_err(|_| Error::Invalid("cluster state lock poisoned".into()))
    }
}

/// Options for [`up`].
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The cluster name.
    pub cluster: String,
    /// The settings.
    pub settings: Settings,
    /// The user-data file.
    pub user_data: PathBuf,
    /// The disk image to create machines from.
    pub image: PathBuf,
    /// The `ferrite` executable (for `__boot`).
    pub ferrite_exe: PathBuf,
    /// How long to wait for each machine to boot.
    pub boot_timeout: Duration,
}

fn free_subnet(paths: &Paths, own: &str) -> Result<u8, Error> {
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

/// `ferrite up`: creates the cluster (or the machines it lacks) and boots every machine
/// that is not running. Returns the cluster's state.
pub fn up(paths: &Paths, opts: &UpOptions) -> Result<ClusterState, Error> {
    if !valid_name(&opts.cluster) {
        return Err(Error::Invalid(format!(
            "cluster name {:?}: use up to 20 letters, digits and dashes",
            opts.cluster
        )));
    }
    if !valid_name(&opts.settings.prefix) {
        return Err(Error::Invalid(format!(
            "name prefix {:?}",
            opts.settings.prefix
        )));
    }
    if opts.settings.instances == 0 || opts.settings.instances > 99 {
        return Err(Error::Invalid(format!(
            "{} instances (1 to 99)",
            opts.settings.instances
        )));
    }
    let user_data = std::fs::read_to_string(&opts.user_data)
        .map_err(io_err("reading user-data", &opts.user_data))?;
    // Checked before anything is created: coreos-cloudinit would refuse it at boot.
    let report = cloud_config::validate(user_data.as_bytes());
    for e in report.entries() {
        tracing::warn!("{}: {e}", opts.user_data.display());
    }
    if report.has_errors() {
        return Err(Error::InvalidUserData {
            path: opts.user_data.clone(),
            report: report.to_string(),
        });
    }
    let _lock = lock(paths, &opts.cluster)?;
    let mut cluster = match ClusterState::load(paths, &opts.cluster) {
        Ok(c) => c,
        Err(Error::NoCluster(_)) => ClusterState {
            name: opts.cluster.clone(),
            id: random_hex(4),
            subnet: free_subnet(paths, &opts.cluster)?,
            settings: opts.settings.clone(),
            image: opts.image.clone(),
            discovery: None,
            machines: Vec::new(),
        },
        Err(e) => return Err(e),
    };
    cluster.settings.instances = opts.settings.instances.max(cluster.machines.len() as u32);
    cluster.image = opts.image.clone();
    for i in 1..=opts.settings.instances {
        let name = format!("{}-{i:02}", cluster.settings.prefix);
        if cluster.machines.iter().all(|m| m.name != name) {
            cluster.machines.push(MachineState {
                name,
                index: i,
                ip: format!("172.20.{}.{}", cluster.subnet, 100 + i),
                machine_id: uuid::Uuid::new_v4().simple().to_string(),
                pid: None,
                usr_mount: None,
                usr_label: None,
                cgroups: Vec::new(),
            });
        }
    }
    cluster.save(paths)?;
    ensure_cluster_key(&paths.cluster_dir(&cluster.name), &cluster.name)?;

    // The cluster's switch.
    let sw = cluster.switch_ns();
    sys::netns_add(&sw)?;
    sys::bridge(&sw, "br0", &format!("{}/24", cluster.gateway()))?;

    // Discovery: a fresh token on the cluster's own service.
    let mut effective = user_data.clone();
    if user_data.contains("discovery.etcd.io/") {
        let discovery = ensure_discovery(paths, &mut cluster, opts.settings.instances)?;
        if let Some(replaced) = replace_discovery(&user_data, &discovery) {
            effective = replaced;
        }
    }
    let ud_path = paths.cluster_dir(&cluster.name).join("user-data");
    match std::fs::read_to_string(&ud_path) {
        Ok(before) if before != effective => tracing::warn!(
            "cluster {:?} now uses the user-data from {}: machines booted from now on (new ones, \
             and those halted or reloaded) get it; running machines keep theirs until \
             `ferrite reload`",
            cluster.name,
            opts.user_data.display()
        ),
        _ => {}
    }
    atomic_file::write(
        &ud_path,
        effective.as_bytes(),
        &atomic_file::Options::mode(0o600),
    )
    .map_err(|e| Error::Io {
        op: "writing",
        path: ud_path.clone(),
        source: e.source,
    })?;
    cluster.save(paths)?;

    // Create and boot the machines, in parallel.
    let names: Vec<String> = cluster.machines.iter().map(|m| m.name.clone()).collect();
    let snapshot = cluster.clone();
    let recorder = Recorder {
        paths,
        state: std::sync::Mutex::new(cluster),
    };
    let results: Vec<Result<(), Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| {
                let (snapshot, recorder, ud) = (&snapshot, &recorder, &ud_path);
                s.spawn(move || {
                    boot_machine(paths, snapshot, recorder, name, ud, &opts.ferrite_exe)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Invalid("a boot thread panicked".into())))
            })
            .collect()
    });
    let cluster = recorder.snapshot()?;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e);
    }
    for m in &cluster.machines {
        wait_booted(paths, &cluster, m, opts.boot_timeout)?;
    }
    Ok(cluster)
}

fn ensure_discovery(paths: &Paths, cluster: &mut ClusterState, size: u32) -> Result<String, Error> {
    let gw = cluster.gateway();
    let endpoint = format!("http://{gw}:2379");
    let running = cluster
        .discovery
        .as_ref()
        .and_then(|d| d.pid)
        .is_some_and(|p| sys::process_matches(p, "discovery"));
    if !running {
        let dir = paths.cluster_dir(&cluster.name).join("discovery");
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let log = std::fs::File::create(dir.join("etcd.log")).map_err(io_err("creating", &dir))?;
        let log2 = log.try_clone().map_err(io_err("opening", &dir))?;
        let child = Command::new("setsid")
            .args([
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
            .stderr(log2)
            .spawn()
            .map_err(|source| Error::Spawn {
                command: "etcd (discovery)".into(),
                source,
            })?;
        cluster.discovery = Some(Discovery {
            pid: Some(child.id()),
            url: String::new(),
        });
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
    let ok = sys::wait_until(Duration::from_secs(15), || {
        sys::run(
            Command::new("ip")
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

/// Copies the image to a machine's disk (sparse) if it has none.
fn ensure_disk(image: &Path, disk: &Path) -> Result<(), Error> {
    if disk.is_file() {
        return Ok(());
    }
    let tmp = disk.with_extension("img.tmp");
    sys::run(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(image)
            .arg(&tmp),
    )?;
    std::fs::rename(&tmp, disk).map_err(io_err("renaming", disk))
}

fn machine_running(m: &MachineState) -> bool {
    m.pid
        .is_some_and(|p| sys::process_matches(p, &format!("--machine={}", m.name)))
}

/// The machine's init process (PID 1 inside it), while it runs.
pub fn init_pid(m: &MachineState) -> Option<u32> {
    let pid = m.pid.filter(|_| machine_running(m))?;
    sys::children(pid).into_iter().next()
}

fn boot_machine(
    paths: &Paths,
    cluster: &ClusterState,
    record: &Recorder<'_>,
    name: &str,
    user_data: &Path,
    exe: &Path,
) -> Result<(), Error> {
    let m = cluster.machine(name)?.clone();
    if machine_running(&m) {
        return Ok(());
    }
    let dir = cluster.machine_dir(paths, name);
    std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    let disk_path = dir.join("disk.img");
    ensure_disk(&cluster.image, &disk_path)?;
    let disk = Disk::open(&disk_path);
    if disk.disk_guid()? == PLACEHOLDER_DISK_GUID {
        disk.set_disk_guid(uuid::Uuid::new_v4())?;
    }
    // GRUB's choice of /usr, on this machine's own disk.
    let usr = disk.gptprio_next()?;
    let usr_uuid = disk.ext_uuid(&usr)?;
    let usr_mount = paths.run.join("usr").join(usr_uuid.to_string());
    record.update(name, |m| {
        m.usr_mount = Some(usr_mount.clone());
        m.usr_label = Some(usr.label.clone());
    })?;
    {
        // Machines boot in parallel: one mount per filesystem, taken under a lock.
        let _usr_lock = run_lock(paths)?;
        if !sys::is_mountpoint(&usr_mount) {
            sys::mount_partition(&disk_path, usr.offset(), usr.bytes(), &usr_mount, true)?;
        }
    }
    let root = dir.join("root");
    if !sys::is_mountpoint(&root) {
        let p = disk.partition("ROOT")?;
        sys::mount_partition(&disk_path, p.offset(), p.bytes(), &root, false)?;
    }
    first_boot(&root, &usr_mount, &m, user_data)?;
    install_cluster_key(&root, &paths.cluster_dir(&cluster.name))?;
    sys::bind_ro(&usr_mount, &root.join("usr"))?;

    // Network.
    let mns = cluster.machine_ns(&m);
    sys::netns_add(&mns)?;
    sys::machine_link(
        &cluster.switch_ns(),
        "br0",
        &format!("vm{}", m.index),
        &mns,
        &format!("{}/24", m.ip),
        &cluster.gateway(),
    )?;

    // cgroups delegated to the machine: recorded, then created.
    let cgroups = sys::cgroup_paths(&format!("{}-{}", cluster.object_prefix(), m.name));
    record.update(name, |m| m.cgroups = cgroups.clone())?;
    sys::make_cgroups(&cgroups)?;
    if cluster.settings.memory_mb > 0 {
        if let Some(mem) = cgroups
            .iter()
            .find(|d| d.to_string_lossy().contains("/memory/"))
        {
            let f = mem.join("memory.limit_in_bytes");
            std::fs::write(&f, (cluster.settings.memory_mb * 1024 * 1024).to_string())
                .map_err(io_err("writing", &f))?;
        }
    }

    let console =
        std::fs::File::create(dir.join("console.log")).map_err(io_err("creating", &dir))?;
    let console2 = console.try_clone().map_err(io_err("opening", &dir))?;
    let mut cmd = Command::new("setsid");
    cmd.arg(exe).arg("__boot");
    for cg in &cgroups {
        cmd.arg("--cgroup").arg(cg);
    }
    cmd.arg("--")
        .arg("systemd-nspawn")
        .args([
            "--boot",
            "--register=no",
            "--keep-unit",
            "--link-journal=no",
            "--resolv-conf=off",
            "--timezone=off",
        ])
        .arg(format!("--directory={}", root.display()))
        .arg(format!("--machine={}", m.name))
        .arg(format!("--hostname={}", m.name))
        .arg(format!("--uuid={}", m.machine_id))
        .arg(format!("--network-namespace-path=/run/netns/{mns}"))
        .args([
            "--capability=CAP_NET_ADMIN",
            "--system-call-filter=@keyring",
            "--console=read-only",
        ])
        .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network")
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console2);
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        command: "systemd-nspawn".into(),
        source,
    })?;
    record.update(name, |m| m.pid = Some(child.id()))
}

/// The cluster's SSH key pair, `<cluster>/ssh/id_ed25519`: made once, with `ssh-keygen`.
fn ensure_cluster_key(cluster_dir: &Path, name: &str) -> Result<(), Error> {
    let dir = cluster_dir.join("ssh");
    let key = dir.join(CLUSTER_KEY);
    if key.is_file() && key.with_extension("pub").is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    // Made under a temporary name and renamed, so a half-made pair is never used.
    let tmp = dir.join(format!(".{CLUSTER_KEY}.tmp"));
    let tmp_pub = dir.join(format!(".{CLUSTER_KEY}.tmp.pub"));
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_file(&tmp_pub);
    sys::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("ferrite-cluster-{name}"))
            .arg("-f")
            .arg(&tmp),
    )?;
    std::fs::rename(&tmp_pub, key.with_extension("pub")).map_err(io_err("renaming", &tmp_pub))?;
    std::fs::rename(&tmp, &key).map_err(io_err("renaming", &tmp))
}

/// The cluster key as the Vagrant OEM's insecure key was: `core` accepts it on every
/// machine (an `update-ssh-keys` fragment named `ferrite`), and every machine holds it as
/// `core`'s identity, so `fleetctl ssh`/`status`/`journal` reach the other machines.
fn install_cluster_key(root: &Path, cluster_dir: &Path) -> Result<(), Error> {
    let src = cluster_dir.join("ssh").join(CLUSTER_KEY);
    let private = std::fs::read(&src).map_err(io_err("reading", &src))?;
    let public_path = src.with_extension("pub");
    let public = std::fs::read_to_string(&public_path).map_err(io_err("reading", &public_path))?;
    let home = root.join("home/core");
    let ssh = home.join(".ssh");
    let opts = |mode| atomic_file::Options {
        mode,
        uid: Some(CORE_ID),
        gid: Some(CORE_ID),
    };
    for dir in [ssh.clone(), ssh.join("authorized_keys.d")] {
        atomic_file::create_dirs(&dir).map_err(|e| Error::Io {
            op: "creating",
            path: dir.clone(),
            source: e.source,
        })?;
        std::os::unix::fs::chown(&dir, Some(CORE_ID), Some(CORE_ID))
            .map_err(io_err("changing the owner of", &dir))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io_err("setting mode of", &dir))?;
    }
    let mut files = vec![
        (ssh.join(CLUSTER_KEY), private, 0o600),
        (
            ssh.join(format!("{CLUSTER_KEY}.pub")),
            public.clone().into_bytes(),
            0o644,
        ),
    ];
    let fragment = ssh.join("authorized_keys.d").join("ferrite");
    if std::fs::read_to_string(&fragment)
        .ok()
        .as_deref()
        .map(str::trim)
        != Some(public.trim())
    {
        files.extend(
            cloud_config::accounts::ssh_key_files(&home, "ferrite", &[public])
                .into_iter()
                .map(|(p, data)| (p, data, 0o600)),
        );
    }
    for (path, data, mode) in files {
        atomic_file::write(&path, &data, &opts(mode)).map_err(|e| Error::Io {
            op: "writing",
            path: path.clone(),
            source: e.source,
        })?;
    }
    Ok(())
}

/// The initramfs's and tmpfiles' work on a fresh ROOT, and the Vagrant provisioning.
fn first_boot(root: &Path, usr: &Path, m: &MachineState, user_data: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    if !root.join("etc").is_dir() {
        for d in [
            "usr", "var", "home", "root", "tmp", "run", "srv", "opt", "mnt", "media", "proc",
            "sys", "dev", "boot",
        ] {
            std::fs::create_dir_all(root.join(d)).map_err(io_err("creating", &root.join(d)))?;
        }
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .map_err(io_err("setting mode of", &root.join("tmp")))?;
        std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting mode of", &root.join("root")))?;
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            let l = root.join(link);
            if l.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(target, &l).map_err(io_err("linking", &l))?;
            }
        }
        for d in ["etc", "var"] {
            sys::run(
                Command::new("cp")
                    .arg("-a")
                    .arg(usr.join("share/factory").join(d))
                    .arg(root),
            )?;
        }
        std::fs::write(root.join("etc/machine-id"), format!("{}\n", m.machine_id))
            .map_err(io_err("writing", &root.join("etc/machine-id")))?;
        let home = root.join("home/core");
        sys::run(
            Command::new("cp")
                .arg("-a")
                .arg(root.join("etc/skel"))
                .arg(&home),
        )?;
        sys::run(Command::new("chown").args(["-R", "500:500"]).arg(&home))?;
    }
    // coreos-vagrant's provisioning: the addresses, then the user-data.
    let env_path = root.join("etc/environment");
    let old = std::fs::read(&env_path).unwrap_or_default();
    let vars = [
        ("COREOS_PUBLIC_IPV4", m.ip.as_str()),
        ("COREOS_PRIVATE_IPV4", m.ip.as_str()),
    ];
    if let Some(new) = cloud_config::files::merge_environment(&old, &vars) {
        atomic_file::write(&env_path, &new, &atomic_file::Options::mode(0o644)).map_err(|e| {
            Error::Io {
                op: "writing",
                path: env_path.clone(),
                source: e.source,
            }
        })?;
    }
    let dst = root.join("var/lib/coreos-vagrant/vagrantfile-user-data");
    atomic_file::create_dirs(dst.parent().unwrap_or(root)).map_err(|e| Error::Io {
        op: "creating",
        path: dst.clone(),
        source: e.source,
    })?;
    let data = std::fs::read(user_data).map_err(io_err("reading", user_data))?;
    atomic_file::write(&dst, &data, &atomic_file::Options::mode(0o600)).map_err(|e| Error::Io {
        op: "writing",
        path: dst.clone(),
        source: e.source,
    })
}

/// Runs a command inside a running machine as root: (exit code, stdout, stderr).
pub fn exec_in(m: &MachineState, argv: &[&str]) -> Result<(i32, String, String), Error> {
    let pid = init_pid(m).ok_or_else(|| Error::NotRunning(m.name.clone()))?;
    let out = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "-C",
            "--",
        ])
        .args(argv)
        .output()
        .map_err(|source| Error::Spawn {
            command: "nsenter".into(),
            source,
        })?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn wait_booted(
    paths: &Paths,
    cluster: &ClusterState,
    m: &MachineState,
    limit: Duration,
) -> Result<(), Error> {
    let start = Instant::now();
    let ok = sys::wait_until(limit, || {
        init_pid(m).is_some()
            && exec_in(m, &["systemctl", "is-system-running"])
                .is_ok_and(|(_, out, _)| matches!(out.trim(), "running" | "degraded"))
    });
    if !ok {
        return Err(Error::BootTimeout {
            machine: m.name.clone(),
            seconds: limit.as_secs(),
            console: cluster.machine_dir(paths, &m.name).join("console.log"),
        });
    }
    tracing::info!(machine = %m.name, seconds = start.elapsed().as_secs_f64(), "booted");
    Ok(())
}

/// Stops a machine: gracefully (systemd powers off), or `force` at once. Then releases its
/// mounts and cgroups. Its disk, address and network namespace stay.
pub fn halt(
    paths: &Paths,
    cluster: &mut ClusterState,
    name: &str,
    force: bool,
) -> Result<(), Error> {
    let idx = cluster
        .machines
        .iter()
        .position(|m| m.name == name)
        .ok_or_else(|| Error::NoMachine {
            cluster: cluster.name.clone(),
            machine: name.to_string(),
            known: cluster
                .machines
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let m = cluster.machines[idx].clone();
    if machine_running(&m) {
        let pid = m.pid.unwrap_or(0);
        let init = init_pid(&m);
        if !force {
            if let Some(i) = init {
                let _ = sys::signal(i, "RTMIN+4");
            }
            sys::wait_until(Duration::from_secs(30), || !machine_running(&m));
        }
        if machine_running(&m) {
            if let Some(i) = init_pid(&m) {
                let _ = sys::signal(i, "KILL");
            }
            sys::wait_until(Duration::from_secs(5), || !machine_running(&m));
            if machine_running(&m) {
                let _ = sys::signal(pid, "KILL");
                sys::wait_until(Duration::from_secs(5), || !machine_running(&m));
            }
        }
    }
    release(paths, cluster, idx)?;
    cluster.save(paths)
}

/// Releases what a stopped machine held: mounts, shared `/usr` if unused, cgroups.
fn release(paths: &Paths, cluster: &mut ClusterState, idx: usize) -> Result<(), Error> {
    let root = cluster
        .machine_dir(paths, &cluster.machines[idx].name)
        .join("root");
    sys::unmount(&root.join("usr"))?;
    sys::unmount(&root)?;
    let usr = cluster.machines[idx].usr_mount.take();
    sys::remove_cgroups(&cluster.machines[idx].cgroups);
    cluster.machines[idx].cgroups.clear();
    cluster.machines[idx].pid = None;
    if let Some(usr) = usr {
        let _usr_lock = run_lock(paths)?;
        let in_use = all_machines(paths).iter().any(|(c, m)| {
            !(c == &cluster.name && m.name == cluster.machines[idx].name)
                && m.usr_mount.as_ref() == Some(&usr)
                && machine_running(m)
        });
        if !in_use {
            sys::unmount(&usr)?;
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

/// Removes a cluster entirely: machines stopped at once, discovery stopped, mounts,
/// namespaces, cgroups and files removed.
pub fn destroy(paths: &Paths, name: &str) -> Result<(), Error> {
    let _lock = lock_existing(paths, name)?;
    let mut cluster = ClusterState::load(paths, name)?;
    let dir = paths.cluster_dir(name);
    // Whatever a crashed launcher started but did not record: every process whose command
    // line names this cluster's directory (the machines' nspawn, the discovery etcd) is ours.
    sweep_processes(&dir);
    let names: Vec<String> = cluster.machines.iter().map(|m| m.name.clone()).collect();
    for n in &names {
        halt(paths, &mut cluster, n, true)?;
    }
    if let Some(pid) = cluster.discovery.as_ref().and_then(|d| d.pid) {
        if sys::process_matches(pid, "discovery") {
            let _ = sys::signal(pid, "KILL");
            sys::wait_until(Duration::from_secs(5), || {
                !sys::process_matches(pid, "discovery")
            });
        }
    }
    // Every namespace named from the cluster's id, recorded or not.
    let prefix = format!("{}-", cluster.object_prefix());
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                sys::netns_del(&n)?;
            }
        }
    }
    // Mounts under the cluster's directory, deepest first.
    for mount in sys::mounts_under(&dir).into_iter().rev() {
        sys::unmount(&mount)?;
    }
    drop(_lock);
    std::fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))
}

/// Kills (by PID) every process whose command line contains `dir`, children first.
fn sweep_processes(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| *p != std::process::id() && sys::process_matches(*p, &needle))
        .collect();
    for pid in pids {
        for child in sys::children(pid) {
            let _ = sys::signal(child, "KILL");
        }
        let _ = sys::signal(pid, "KILL");
        sys::wait_until(Duration::from_secs(5), || {
            !sys::process_matches(pid, &needle)
        });
    }
}

/// One row of `ferrite status`.
#[derive(Debug, Clone)]
pub struct MachineStatus {
    /// Machine name.
    pub name: String,
    /// `running` or `stopped`.
    pub state: String,
    /// Its address.
    pub ip: String,
    /// The USR partition it runs from.
    pub usr: String,
}

/// The machines of a cluster and whether they run.
pub fn status(cluster: &ClusterState) -> Vec<MachineStatus> {
    cluster
        .machines
        .iter()
        .map(|m| MachineStatus {
            name: m.name.clone(),
            state: if machine_running(m) {
                "running"
            } else {
                "stopped"
            }
            .to_string(),
            ip: m.ip.clone(),
            usr: m.usr_label.clone().unwrap_or_else(|| "-".into()),
        })
        .collect()
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

    #[test]
    fn names() {
        assert!(valid_name("default") && valid_name("c-2"));
        assert!(!valid_name("") && !valid_name("a/b") && !valid_name(&"x".repeat(21)));
    }
}

/// A machine's memory: the PSS of its processes (by systemd unit) and its memory cgroup.
#[derive(Debug, Clone, Default)]
pub struct MemoryReport {
    /// Sum of the processes' proportional set sizes, KiB.
    pub pss_kib: u64,
    /// Sum of their resident set sizes, KiB.
    pub rss_kib: u64,
    /// The memory cgroup's usage, KiB (anonymous memory plus page cache).
    pub cgroup_usage_kib: u64,
    /// The cgroup's anonymous memory, KiB.
    pub cgroup_rss_kib: u64,
    /// The cgroup's page cache, KiB.
    pub cgroup_cache_kib: u64,
    /// PSS per systemd unit inside the machine (the launcher's own `supervisor` included),
    /// largest first.
    pub by_unit: Vec<(String, u64)>,
}

fn kib_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Measures a running machine's memory.
pub fn memory(m: &MachineState) -> Result<MemoryReport, Error> {
    if !machine_running(m) {
        return Err(Error::NotRunning(m.name.clone()));
    }
    let mut report = MemoryReport::default();
    let systemd = m
        .cgroups
        .iter()
        .find(|d| d.to_string_lossy().contains("/systemd/"));
    let mut pids = Vec::new();
    if let Some(root) = systemd {
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(
                    procs
                        .split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
    }
    let mut by_unit: std::collections::BTreeMap<String, u64> = Default::default();
    for pid in pids {
        let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        let pss = kib_field(&smaps, "Pss:");
        report.pss_kib += pss;
        report.rss_kib += kib_field(&smaps, "Rss:");
        let unit = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.contains(":name=systemd:"))
                    .and_then(|l| l.rsplit('/').next().map(str::to_string))
            })
            .unwrap_or_else(|| "?".into());
        *by_unit.entry(unit).or_default() += pss;
    }
    let mut units: Vec<(String, u64)> = by_unit.into_iter().collect();
    units.sort_by_key(|(_, v)| std::cmp::Reverse(*v));
    report.by_unit = units;
    if let Some(mem) = m
        .cgroups
        .iter()
        .find(|d| d.to_string_lossy().contains("/memory/"))
    {
        let read = |f: &str| std::fs::read_to_string(mem.join(f)).unwrap_or_default();
        report.cgroup_usage_kib = read("memory.usage_in_bytes")
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
            / 1024;
        let stat = read("memory.stat");
        let field = |k: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
                / 1024
        };
        report.cgroup_rss_kib = field("total_rss ");
        report.cgroup_cache_kib = field("total_cache ");
    }
    Ok(report)
}

//! `ferrite up`: the cluster's state and switch, then every machine that does not run —
//! its disk prepared (`prepare`), then started (`start`): network, cgroups (recorded,
//! then made), `ferrite __boot` → `systemd-nspawn --boot` — and waited for.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use coreos_disk::{Disk, PLACEHOLDER_DISK_GUID};

use crate::cgroup;
use crate::discovery::{ensure_discovery, replace_discovery};
use crate::host::{process_matches, wait_until, Host, MachineLink};
use crate::provision::{
    ensure_cluster_key, ensure_disk, install_cluster_key, provision, setup_root,
};
use crate::qemu;
use crate::state::{
    free_subnet, lock, random_hex, run_lock, valid_name, ClusterState, MachineState, Recorder,
};
use crate::{io_err, Driver, Error, Paths, Settings};

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
    /// Told each time a machine has booted.
    pub progress: Option<fn(&Progress)>,
}

/// How far `up` is: machines booted of all, and the slowest so far.
#[derive(Debug, Clone)]
pub struct Progress {
    pub booted: usize,
    pub total: usize,
    pub slowest: String,
    pub slowest_seconds: f64,
}

/// Refuses settings and user-data that cannot work, before anything is created.
fn check(opts: &UpOptions) -> Result<String, Error> {
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
    // Addresses are 172.20.N.(100 + i), within the cluster's /24.
    if opts.settings.instances == 0 || opts.settings.instances > MAX_INSTANCES {
        return Err(Error::Invalid(format!(
            "{} instances (1 to {MAX_INSTANCES})",
            opts.settings.instances
        )));
    }
    let user_data = std::fs::read_to_string(&opts.user_data)
        .map_err(io_err("reading user-data", &opts.user_data))?;
    // coreos-cloudinit would refuse it at boot.
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
    Ok(user_data)
}

/// The cluster's state with every machine the settings ask for (new ones recorded).
fn open_cluster(paths: &Paths, opts: &UpOptions) -> Result<ClusterState, Error> {
    let mut cluster = match ClusterState::load(paths, &opts.cluster) {
        Ok(c) => c,
        Err(Error::NoCluster(_)) => ClusterState {
            name: opts.cluster.clone(),
            id: random_hex(4),
            subnet: free_subnet(paths, &opts.cluster)?,
            settings: opts.settings.clone(),
            image: opts.image.clone(),
            discovery: None,
            updates: None,
            registry: None,
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
                driver: opts.settings.driver,
            });
        }
    }
    cluster.save(paths)?;
    Ok(cluster)
}

/// Stores the user-data machines boot with (a fresh discovery URL in place of
/// discovery.etcd.io's), saying so when it replaces a different one.
fn store_user_data(
    paths: &Paths,
    cluster: &ClusterState,
    effective: &str,
    from: &Path,
) -> Result<PathBuf, Error> {
    let ud_path = paths.cluster_dir(&cluster.name).join("user-data");
    match std::fs::read_to_string(&ud_path) {
        Ok(before) if before != effective => tracing::warn!(
            "cluster {:?} now uses the user-data from {}: machines booted from now on (new ones, \
             and those halted or reloaded) get it; running machines keep theirs until \
             `ferrite reload`",
            cluster.name,
            from.display()
        ),
        _ => {}
    }
    atomic_file::write(
        &ud_path,
        effective.as_bytes(),
        &atomic_file::Options::mode(0o600),
    )?;
    Ok(ud_path)
}

/// The most machines a cluster has (their addresses end at `.250`).
pub const MAX_INSTANCES: u32 = 150;

/// The etcd cluster size a discovery token asks for (discovery.etcd.io's default).
pub const DISCOVERY_SIZE: u32 = 3;

/// `ferrite up`: creates the cluster (or the machines it lacks) and boots every machine
/// that is not running. Returns the cluster's state.
pub fn up(host: &dyn Host, paths: &Paths, opts: &UpOptions) -> Result<ClusterState, Error> {
    let user_data = check(opts)?;
    crate::registry::check_installed(host)?;
    // An existing cluster keeps the settings it was made with.
    let limits = cgroup::Limits {
        memory_mb: ClusterState::load(paths, &opts.cluster)
            .map_or(opts.settings.memory_mb, |c| c.settings.memory_mb),
    };
    // Virtual machines' memory is QEMU's `-m`, not a cgroup limit.
    if opts.settings.driver == Driver::Nspawn {
        cgroup::check(host, &cgroup::detect(host), limits)?;
    }
    let _lock = lock(paths, &opts.cluster)?;
    let mut cluster = open_cluster(paths, opts)?;
    ensure_cluster_key(host, &paths.cluster_dir(&cluster.name), &cluster.name)?;

    // The cluster's switch.
    host.netns_add(&cluster.switch_ns())?;
    host.bridge(
        &cluster.switch_ns(),
        "br0",
        &format!("{}/24", cluster.gateway()),
    )?;

    // The cluster's update service, where its machines ask for updates.
    crate::updates::ensure_update_service(host, paths, &mut cluster, &opts.ferrite_exe)?;
    // Its image registry, where machines pull from without the internet.
    crate::registry::ensure_registry(host, paths, &mut cluster, &opts.ferrite_exe)?;

    // Discovery: a fresh token on the cluster's own service.
    let mut effective = user_data.clone();
    if user_data.contains("discovery.etcd.io/") {
        // discovery.etcd.io's size (the book's tokens were made with its default, 3): the
        // first machines form etcd's cluster, every further one runs etcd as a proxy. A
        // member per machine would make a hundred machines a hundred-member raft group.
        let url = ensure_discovery(
            host,
            paths,
            &mut cluster,
            opts.settings.instances.min(DISCOVERY_SIZE),
            &opts.ferrite_exe,
        )?;
        if let Some(replaced) = replace_discovery(&user_data, &url) {
            effective = replaced;
        }
    }
    let ud_path = store_user_data(paths, &cluster, &effective, &opts.user_data)?;
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
                s.spawn(move || boot_machine(host, snapshot, recorder, name, ud, &opts.ferrite_exe))
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
    let start = Instant::now();
    let done = std::sync::Mutex::new((0usize, String::new(), 0f64));
    let waited: Vec<Result<(), Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = cluster
            .machines
            .iter()
            .zip(results)
            .map(|(m, started)| {
                let (cluster, done) = (&cluster, &done);
                s.spawn(move || {
                    started?;
                    wait_booted(host, paths, cluster, m, opts.boot_timeout)?;
                    let secs = start.elapsed().as_secs_f64();
                    let mut d = done
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    d.0 += 1;
                    if secs >= d.2 {
                        d.1.clone_from(&m.name);
                        d.2 = secs;
                    }
                    if let Some(report) = opts.progress {
                        report(&Progress {
                            booted: d.0,
                            total: cluster.machines.len(),
                            slowest: d.1.clone(),
                            slowest_seconds: d.2,
                        });
                    }
                    Ok(())
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
    let errors: Vec<String> = waited
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    match errors.len() {
        0 => Ok(cluster),
        1 => Err(waited
            .into_iter()
            .find_map(Result::err)
            .unwrap_or_else(|| Error::Invalid("a machine did not boot".into()))),
        n => Err(Error::Boots {
            failed: n,
            total: cluster.machines.len(),
            errors,
        }),
    }
}

/// Whether the console's latest boot is late enough to ask the machine: systemd reached
/// `multi-user.target`, or the console's getty is up (systemd stops printing its status
/// lines once a getty has the console, so the target's line may never come).
fn console_late_in_boot(console: &Path) -> bool {
    let Some(text) = console_tail(console, 256 * 1024) else {
        return false;
    };
    // The latest boot's part: after the supervisor's last word.
    let last = text.rsplit("ferrite: booting").next().unwrap_or(&text);
    last.contains("Multi-User System")
        || last.contains(" login: ")
        || last.ends_with(" login:")
        || last.contains("Console Getty")
}

/// The last `bytes` of a machine's console log, as text.
fn console_tail(console: &Path, bytes: u64) -> Option<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = std::fs::File::open(console).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(bytes))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// `text` without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The failure a machine's console reports: its last lines that say something failed
/// (systemd's "Failed to …", a panic, "Too many open files" …), at most three.
#[must_use]
pub fn console_cause(console: &Path) -> Option<String> {
    let text = console_tail(console, 64 * 1024)?;
    // What systemd and the kernel print when a boot cannot go on (not the "Failed to open"
    // noise of units a machine does not have).
    let markers = [
        "[!!!!!!]",
        "Failed to allocate",
        "Failed to create control group",
        "Failed to start",
        "Failed to mount",
        "Too many open files",
        "Freezing execution",
        "Kernel panic",
        "No space left",
        "Cannot allocate memory",
        "ferrite: no USR partition",
    ];
    let text = strip_ansi(&text);
    let hits: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| markers.iter().any(|m| l.contains(m)))
        .collect();
    if hits.is_empty() {
        return None;
    }
    let mut last: Vec<&str> = hits.iter().rev().take(3).copied().collect();
    last.reverse();
    Some(last.join(" | "))
}

pub(crate) fn machine_running(host: &dyn Host, m: &MachineState) -> bool {
    let marker = match m.driver {
        Driver::Nspawn => format!("--machine={}", m.name),
        Driver::Qemu => qemu::marker(m),
    };
    m.pid.is_some_and(|p| process_matches(host, p, &marker))
}

/// The machine's init process (PID 1 inside it), while it runs: nspawn machines only (a
/// virtual machine's processes are not the host's).
pub fn init_pid(host: &dyn Host, m: &MachineState) -> Option<u32> {
    if m.driver != Driver::Nspawn {
        return None;
    }
    let pid = m.pid.filter(|_| machine_running(host, m))?;
    // supervisor (`ferrite __nspawn`) → systemd-nspawn → the machine's init.
    let nspawn = host
        .children(pid)
        .into_iter()
        .find(|c| process_matches(host, *c, "systemd-nspawn"))?;
    host.children(nspawn).into_iter().next()
}

fn boot_machine(
    host: &dyn Host,
    cluster: &ClusterState,
    record: &Recorder<'_>,
    name: &str,
    user_data: &Path,
    exe: &Path,
) -> Result<(), Error> {
    let m = cluster.machine(name)?.clone();
    if machine_running(host, &m) {
        return Ok(());
    }
    match m.driver {
        Driver::Nspawn => {
            let root = prepare(host, cluster, record, &m, user_data)?;
            start(host, cluster, record, &m, &root, exe)
        }
        Driver::Qemu => {
            prepare_qemu(host, cluster, record, &m, user_data)?;
            start_qemu(host, cluster, record, &m, exe)
        }
    }
}

/// Writes a line on a machine's console (`<dir>/console.log`), as a bootloader would: its
/// supervisor's word on each boot.
pub(crate) fn say(dir: &Path, line: &str) {
    use std::io::Write as _;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("console.log"))
    {
        let _ = writeln!(f, "ferrite: {line}");
    }
}

/// `setsid ferrite __boot --cgroup … --`, ready for the command to run: a process that
/// joins `cgroups` before it becomes that command, so it is found there even if its PID
/// is never recorded.
pub(crate) fn in_cgroups(exe: &Path, cgroups: &[PathBuf]) -> std::process::Command {
    let mut cmd = host_command::command("setsid");
    cmd.arg(exe).arg("__boot");
    for cg in cgroups {
        cmd.arg("--cgroup").arg(cg);
    }
    cmd.arg("--");
    cmd
}

/// A machine's cgroups: recorded, then created with `limits`.
fn machine_cgroups(
    host: &dyn Host,
    cluster: &ClusterState,
    record: &Recorder<'_>,
    m: &MachineState,
    limits: cgroup::Limits,
) -> Result<Vec<PathBuf>, Error> {
    let layout = cgroup::detect(host);
    let cgroups = cgroup::paths(&layout, &format!("{}-{}", cluster.object_prefix(), m.name));
    record.update(&m.name, |m| m.cgroups = cgroups.clone())?;
    cgroup::create(host, &layout, &cgroups, limits)?;
    Ok(cgroups)
}

/// ROOT of the machine's disk, mounted on `<dir>/root` (once).
fn mount_root(
    host: &dyn Host,
    dir: &Path,
    disk_path: &Path,
    disk: &Disk,
) -> Result<PathBuf, Error> {
    let root = dir.join("root");
    if !host.is_mountpoint(&root) {
        let p = disk.partition("ROOT")?;
        host.mount_partition(disk_path, p.offset(), p.bytes(), &root, false)?;
    }
    Ok(root)
}

/// The machine's directory and disk (a copy of the image, made once).
fn machine_disk(
    cluster: &ClusterState,
    paths: &Paths,
    m: &MachineState,
) -> Result<(PathBuf, PathBuf, Disk), Error> {
    let dir = cluster.machine_dir(paths, &m.name);
    std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    let disk_path = dir.join("disk.img");
    // A virtual machine reads its whole disk itself: only an nspawn machine's is thin.
    ensure_disk(&cluster.image, &disk_path, m.driver == Driver::Nspawn)?;
    let disk = Disk::open(&disk_path);
    Ok((dir, disk_path, disk))
}

/// The machine's disk, its USR (GRUB's choice) and ROOT mounted, first boot done; returns
/// the root directory.
pub(crate) fn prepare(
    host: &dyn Host,
    cluster: &ClusterState,
    record: &Recorder<'_>,
    m: &MachineState,
    user_data: &Path,
) -> Result<PathBuf, Error> {
    let paths = record.paths;
    let (dir, disk_path, disk) = machine_disk(cluster, paths, m)?;
    // What a QEMU machine's initramfs does on its first boot: a disk GUID of its own.
    if disk.disk_guid()? == PLACEHOLDER_DISK_GUID {
        disk.set_disk_guid(uuid::Uuid::new_v4())?;
    }
    // GRUB's choice of /usr, on this machine's own disk.
    let usr = disk.gptprio_next()?;
    // The image's own USR is shared by every machine that boots it, mounted from the
    // image file, which never changes; any other slot is this machine's alone, mounted from
    // its disk (which its updates write, so it must never back another machine's `/usr`).
    // A thin disk's never-written slot is the image's by construction; a full copy's is
    // when its filesystem is the image's.
    let image = Disk::open(&cluster.image);
    let from_image =
        crate::provision::usr_source(&cluster.image, &disk_path, &usr)? == cluster.image;
    let usr_uuid = if from_image {
        image.ext_uuid(&image.partition(&usr.label)?)?
    } else {
        disk.ext_uuid(&usr)?
    };
    let pristine = image
        .partition(&usr.label)
        .ok()
        .filter(|p| image.ext_uuid(p).is_ok_and(|u| u == usr_uuid));
    let (usr_mount, source, part) = match pristine {
        Some(p) => (
            paths.run.join("usr").join(usr_uuid.to_string()),
            cluster.image.clone(),
            p,
        ),
        None => (dir.join("usr"), disk_path.clone(), usr.clone()),
    };
    record.update(&m.name, |m| {
        m.usr_mount = Some(usr_mount.clone());
        m.usr_label = Some(usr.label.clone());
    })?;
    {
        // Machines boot in parallel: one mount per filesystem, taken under a lock.
        let _usr_lock = run_lock(paths)?;
        if !host.is_mountpoint(&usr_mount) {
            host.mount_partition(&source, part.offset(), part.bytes(), &usr_mount, true)?;
        }
    }
    let root = mount_root(host, &dir, &disk_path, &disk)?;
    // update_engine's way to the slots: the disk image (bound in by `start`) and the slot
    // this boot mounted, as a bootloader would pass it.
    crate::nspawn::write_slots(&dir, &usr.label)?;
    setup_root(&root, &usr_mount, m)?;
    provision(&root, m, user_data)?;
    crate::updates::point_at_service(&root, cluster)?;
    crate::registry::point_at_registry(&root, cluster)?;
    install_cluster_key(&root, &paths.cluster_dir(&cluster.name))?;
    host.bind_ro(&usr_mount, &root.join("usr"))?;
    Ok(root)
}

/// The disk of a virtual machine: ROOT mounted for coreos-vagrant's provisioning, then
/// unmounted. The machine's initramfs sets ROOT up on its first boot (`first_boot`), and
/// its boots choose their slot (`qemu::supervise`): no USR is read here.
fn prepare_qemu(
    host: &dyn Host,
    cluster: &ClusterState,
    record: &Recorder<'_>,
    m: &MachineState,
    user_data: &Path,
) -> Result<(), Error> {
    let paths = record.paths;
    let (dir, disk_path, disk) = machine_disk(cluster, paths, m)?;
    let root = mount_root(host, &dir, &disk_path, &disk)?;
    provision(&root, m, user_data)?;
    crate::updates::point_at_service(&root, cluster)?;
    crate::registry::point_at_registry(&root, cluster)?;
    install_cluster_key(&root, &paths.cluster_dir(&cluster.name))?;
    qemu::provision(&root, cluster, m)?;
    host.unmount(&root)
}

/// A virtual machine: its tap on the bridge, its cgroups, then its supervisor
/// (`ferrite __qemu`, inside the switch namespace), which boots it as often as it reboots.
fn start_qemu(
    host: &dyn Host,
    cluster: &ClusterState,
    record: &Recorder<'_>,
    m: &MachineState,
    exe: &Path,
) -> Result<(), Error> {
    let sw = cluster.switch_ns();
    host.machine_tap(&sw, "br0", &qemu::tap(m))?;
    // The guest's memory is QEMU's `-m`; QEMU itself is not limited.
    let cgroups = machine_cgroups(host, cluster, record, m, cgroup::Limits::default())?;
    let dir = cluster.machine_dir(record.paths, &m.name);
    let spec = qemu::Spec::of(cluster, m, &dir);
    let spec_path = dir.join("qemu.json");
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| Error::State {
        path: spec_path.clone(),
        reason: e.to_string(),
    })?;
    atomic_file::write(&spec_path, &json, &atomic_file::Options::mode(0o644))?;
    // A fresh console for this `up`; each boot appends to it.
    std::fs::File::create(dir.join("console.log")).map_err(io_err("creating", &dir))?;
    let (stdin, stdout, stderr) = qemu::stdio(&dir)?;
    let mut cmd = in_cgroups(exe, &cgroups);
    cmd.args(["ip", "netns", "exec", &sw])
        .arg(exe)
        .args(["__qemu", "--name", &m.name])
        .arg(&spec_path)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    let pid = host.spawn("ferrite __qemu", &mut cmd)?;
    record.update(&m.name, |m| m.pid = Some(pid))
}

/// The machine's network and cgroups, then `systemd-nspawn --boot` on `root`.
pub(crate) fn start(
    host: &dyn Host,
    cluster: &ClusterState,
    record: &Recorder<'_>,
    m: &MachineState,
    root: &Path,
    exe: &Path,
) -> Result<(), Error> {
    let mns = cluster.machine_ns(m);
    host.netns_add(&mns)?;
    host.machine_link(&MachineLink {
        switch_ns: cluster.switch_ns(),
        bridge: "br0".into(),
        outer: format!("vm{}", m.index),
        machine_ns: mns.clone(),
        cidr: format!("{}/24", m.ip),
        gateway: cluster.gateway(),
    })?;

    // cgroups delegated to the machine: recorded, then created.
    let limits = cgroup::Limits {
        memory_mb: cluster.settings.memory_mb,
    };
    let cgroups = machine_cgroups(host, cluster, record, m, limits)?;

    let dir = cluster.machine_dir(record.paths, &m.name);
    let args = vec![
        "--boot".to_string(),
        "--register=no".into(),
        "--keep-unit".into(),
        "--link-journal=no".into(),
        "--resolv-conf=off".into(),
        "--timezone=off".into(),
        format!("--directory={}", root.display()),
        format!("--machine={}", m.name),
        format!("--hostname={}", m.name),
        format!("--uuid={}", m.machine_id),
        format!("--network-namespace-path=/run/netns/{mns}"),
        format!(
            "--bind={}:{}",
            dir.join("disk.img").display(),
            crate::nspawn::IN_MACHINE_DISK
        ),
        format!(
            "--bind-ro={}:/run/ferrite/slots",
            dir.join("slots").display()
        ),
        "--capability=CAP_NET_ADMIN".into(),
        "--system-call-filter=@keyring".into(),
        "--console=read-only".into(),
    ];
    let spec = crate::nspawn::Spec {
        name: m.name.clone(),
        dir: dir.clone(),
        cgroups: cgroups.clone(),
        exe: exe.to_path_buf(),
        args,
        image: Some(cluster.image.clone()),
    };
    let spec_path = dir.join("nspawn.json");
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| Error::State {
        path: spec_path.clone(),
        reason: e.to_string(),
    })?;
    atomic_file::write(&spec_path, &json, &atomic_file::Options::mode(0o644))?;
    // A fresh console for this `up`; each boot appends to it.
    let console =
        std::fs::File::create(dir.join("console.log")).map_err(io_err("creating", &dir))?;
    let console2 = console.try_clone().map_err(io_err("opening", &dir))?;
    // The supervisor (`ferrite __nspawn`) boots the machine as often as it reboots.
    let mut cmd = in_cgroups(exe, &cgroups);
    cmd.arg(exe)
        .arg("__nspawn")
        .arg(format!("--machine={}", m.name))
        .arg(&spec_path)
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console2);
    let pid = host.spawn("ferrite __nspawn", &mut cmd)?;
    record.update(&m.name, |m| m.pid = Some(pid))
}

/// `nsenter` into every namespace of a running machine (its init's), ready for the
/// command's words: what `exec_in` and `ferrite ssh` run.
pub fn enter(host: &dyn Host, m: &MachineState) -> Result<std::process::Command, Error> {
    let pid = init_pid(host, m).ok_or_else(|| Error::NotRunning(m.name.clone()))?;
    let mut cmd = host_command::command("nsenter");
    cmd.args([
        "-t",
        &pid.to_string(),
        "-m",
        "-u",
        "-i",
        "-n",
        "-p",
        "-C",
        "--",
    ]);
    Ok(cmd)
}

/// Waits for `child` (an `nsenter` into a machine, run without a terminal), within `limit`
/// if given: `Ok(None)` when the time is up (the child is left running). A machine that
/// shuts down stops every process in its PID namespace before it signals them (systemd's
/// `SIGSTOP`, then `SIGTERM`, then `SIGCONT`); `nsenter` sees its child stopped and stops
/// itself to pass that on, and nothing inside the machine can continue it, so it would wait
/// forever. Here a stopped `nsenter` is continued at once, and it reaps its child.
pub fn wait_entered(
    host: &dyn Host,
    child: &mut std::process::Child,
    limit: Option<Duration>,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let start = Instant::now();
    let pid = child.id();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            return Ok(None);
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state is the field after the command's closing parenthesis.
        let stopped = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']));
        if stopped {
            let _ = host.signal(pid, "CONT");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A login shell as `core` on a running machine, or `command` run by that shell (as
/// `ssh host CMD` and `vagrant ssh -c CMD` run a command line).
pub fn login(
    host: &dyn Host,
    paths: &Paths,
    cluster: &ClusterState,
    m: &MachineState,
    command: Option<&str>,
) -> Result<std::process::Command, Error> {
    if !machine_running(host, m) {
        return Err(Error::NotRunning(m.name.clone()));
    }
    Ok(match m.driver {
        Driver::Nspawn => {
            let mut cmd = enter(host, m)?;
            cmd.args(["runuser", "-l", "core"]);
            if let Some(c) = command {
                cmd.arg("-c").arg(c);
            }
            cmd
        }
        Driver::Qemu => {
            let mut cmd = qemu::ssh(paths, cluster, m, command.is_none());
            if let Some(c) = command {
                cmd.arg(c);
            }
            cmd
        }
    })
}

/// How long [`exec_in`] lets a command run.
const EXEC_LIMIT: Duration = Duration::from_secs(60);

/// Runs a command inside a running machine as root: (exit code, stdout, stderr), within
/// [`EXEC_LIMIT`].
pub fn exec_in(
    host: &dyn Host,
    paths: &Paths,
    cluster: &ClusterState,
    m: &MachineState,
    argv: &[&str],
) -> Result<(i32, String, String), Error> {
    let mut cmd = match m.driver {
        Driver::Nspawn => {
            let mut cmd = enter(host, m)?;
            cmd.args(argv);
            cmd
        }
        Driver::Qemu => {
            let line: Vec<String> = argv.iter().map(|a| host_command::shell_quote(a)).collect();
            let mut cmd = qemu::ssh(paths, cluster, m, false);
            cmd.arg(format!("sudo {}", line.join(" ")));
            cmd
        }
    };
    // Bounded: a machine that hangs (or is going down) must not hang `up` or `status`.
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = match wait_entered(host, &mut child, Some(EXEC_LIMIT)) {
        Ok(Some(status)) => status,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            if let Err(source) = other {
                return Err(Error::Spawn {
                    command: cmd.get_program().to_string_lossy().into_owned(),
                    source,
                });
            }
            return Err(Error::ExecTimeout {
                machine: m.name.clone(),
                command: argv.join(" "),
                seconds: EXEC_LIMIT.as_secs(),
            });
        }
    };
    let text = |h: std::thread::JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
    };
    Ok((status.code().unwrap_or(-1), text(stdout), text(stderr)))
}

fn wait_booted(
    host: &dyn Host,
    paths: &Paths,
    cluster: &ClusterState,
    m: &MachineState,
    limit: Duration,
) -> Result<(), Error> {
    let start = Instant::now();
    // A virtual machine under emulation boots slower than a container.
    let limit = match m.driver {
        Driver::Nspawn => limit,
        Driver::Qemu => limit.max(Duration::from_secs(300)),
    };
    let console = cluster.machine_dir(paths, &m.name).join("console.log");
    let mut died = false;
    // Since when the machine's supervisor has been seen gone (its exec chain is briefly not
    // yet itself when it starts, so one look is not enough).
    let mut gone_since: Option<Instant> = None;
    let ok = wait_until(host, limit, || {
        if !machine_running(host, m) {
            let since = *gone_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(3) {
                // Stopped for good: no reason to wait out the limit.
                died = true;
                return true;
            }
            return false;
        }
        gone_since = None;
        // Asking the machine costs an nsenter and a systemctl: with many machines booting
        // at once, polling each that way would eat the CPU they boot with. An nspawn
        // machine's console says first when systemd reached multi-user; only then is it
        // asked.
        if m.driver == Driver::Nspawn {
            if !console_late_in_boot(&console) {
                std::thread::sleep(Duration::from_millis(150));
                return false;
            }
            let ready = exec_in(host, paths, cluster, m, &["systemctl", "is-system-running"])
                .is_ok_and(|(_, out, _)| matches!(out.trim(), "running" | "degraded"));
            if !ready {
                // Asked at most about once a second from here on.
                std::thread::sleep(Duration::from_millis(900));
            }
            return ready;
        }
        exec_in(host, paths, cluster, m, &["systemctl", "is-system-running"])
            .is_ok_and(|(_, out, _)| matches!(out.trim(), "running" | "degraded"))
    });
    if died {
        return Err(Error::BootDied {
            machine: m.name.clone(),
            cause: console_cause(&console),
            console,
        });
    }
    if !ok {
        return Err(Error::BootTimeout {
            machine: m.name.clone(),
            seconds: limit.as_secs(),
            cause: console_cause(&console),
            console,
        });
    }
    tracing::info!(machine = %m.name, seconds = start.elapsed().as_secs_f64(), "booted");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // test files written plainly
mod console_tests {
    use super::console_cause;

    #[test]
    fn the_cause_of_a_failed_boot_comes_from_the_console() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        // What a machine's systemd printed when the host ran out of inotify instances.
        std::fs::write(
            &console,
            "ferrite: booting USR-A\nsystemd 252.39-1~deb12u1 running in system mode\nDetected virtualization systemd-nspawn.\nFailed to create control group inotify object: Too many open files\nFailed to allocate manager object: Too many open files\n[!!!!!!] Failed to allocate manager object.\nExiting PID 1...\n",
        )
        .unwrap();
        let cause = console_cause(&console).unwrap();
        assert_eq!(
            cause,
            "Failed to create control group inotify object: Too many open files | Failed to allocate manager object: Too many open files | [!!!!!!] Failed to allocate manager object."
        );
        std::fs::write(&console, "ferrite: booting USR-A\nWelcome to Ferrite!\n").unwrap();
        assert_eq!(console_cause(&console), None);
        // Colours gone, and a missing unit's "Failed to open" is not a cause.
        std::fs::write(
            &console,
            "\u{1b}[0;1;39mdracut-cmdline.service: Failed to open /lib/systemd/system/dracut-cmdline.service: No such file or directory\u{1b}[0m\n[\u{1b}[0;1;31mFAILED\u{1b}[0m] Failed to start \u{1b}[0;1;39metcd2.service\u{1b}[0m - etcd2.\n",
        )
        .unwrap();
        assert_eq!(
            console_cause(&console).unwrap(),
            "[FAILED] Failed to start etcd2.service - etcd2."
        );
        assert_eq!(console_cause(&dir.path().join("none")), None);
    }
}

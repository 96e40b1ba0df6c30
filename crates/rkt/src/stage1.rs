//! Running a pod: what rkt's stage1 does, in three processes of this one binary.
//!
//! 1. `rkt run` (or `run-prepared`) holds the pod's lock for the pod's whole life, sets up
//!    its network ([`crate::net`]), enters new mount, UTS, IPC and PID namespaces (and the
//!    pod's network namespace), mounts each app's root filesystem (an overlay over the
//!    image's tree, `/dev`, `/sys`, volumes, `/etc/hosts`, `/etc/resolv.conf`), all in the
//!    pod's private mount namespace, then starts the pod's init and waits for it, passing
//!    on `SIGTERM`, `SIGINT` and `SIGHUP`.
//! 2. The pod's init (`rkt __stage1-init`) is PID 1 of the pod: it mounts each app's
//!    `/proc`, starts the apps, reaps every process, passes signals to the apps, writes
//!    each app's exit status, and ends with the first app's when all have ended. It dies
//!    with `rkt run` (parent-death signal), and the kernel then ends every process of the
//!    pod: nothing of a pod outlives the process that ran it.
//! 3. Each app starts as `rkt __stage1-app`, which changes root into the app's filesystem
//!    and working directory, cuts its capabilities to appc's set ([`crate::caps`]) and
//!    becomes the app (groups, group, user, environment, arguments).
//!
//! No cgroup is made: the pod stays in the cgroup of whoever ran it (a systemd unit's).
//! The runtime is this crate's own code on the kernel's interfaces (namespaces, overlayfs,
//! `chroot`); see the crate's benchmark for its start-to-exit time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags};

use crate::pod::{self, NetInfo, Pod, PodLock, PodManifest, Pods, RunOptions};
use crate::store::Store;
use crate::Error;

/// Where an app's root filesystem is mounted inside the pod directory.
#[must_use]
pub fn app_root(pod_dir: &Path, app: &str) -> PathBuf {
    pod_dir
        .join("stage1/rootfs/opt/stage2")
        .join(app)
        .join("rootfs")
}

/// Follows `path` inside `root` as a process changed into `root` would (symlinks resolved
/// against `root`, at most 40 of them); the host path of what it names, if it exists.
#[must_use]
pub fn resolve_in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    parts.reverse();
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(p) = parts.pop() {
        match p.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        cur.push(p);
        let host = root.join(cur.join("/"));
        let meta = std::fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(&host).ok()?;
            let t = target.to_string_lossy();
            cur.pop();
            if t.starts_with('/') {
                cur.clear();
            }
            for s in t.split('/').filter(|s| !s.is_empty()).rev() {
                parts.push(s.to_string());
            }
        }
    }
    Some(root.join(cur.join("/")))
}

/// The host path of `path` inside the app root `root`, for something to be created or
/// mounted there: every symlink on the way is followed as the app would see it (inside
/// `root`), and a symlink that leads nowhere is removed (the root is the pod's own copy or
/// overlay), so nothing made here lands outside `root`.
///
/// # Errors
/// [`Error::Io`] when a dangling symlink cannot be removed.
pub fn in_root(root: &Path, path: &str) -> Result<PathBuf, Error> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let mut cur = root.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        if *part == ".." {
            if cur != root {
                cur.pop();
            }
            continue;
        }
        let literal = cur.join(part);
        match std::fs::symlink_metadata(&literal) {
            Ok(m) if m.file_type().is_symlink() => {
                let rel = cur
                    .strip_prefix(root)
                    .map(|p| p.join(part))
                    .unwrap_or_else(|_| PathBuf::from(part));
                match resolve_in_root(root, &rel.to_string_lossy()) {
                    Some(resolved) if resolved.starts_with(root) => cur = resolved,
                    _ => {
                        std::fs::remove_file(&literal).map_err(|e| Error::io(&literal, e))?;
                        cur = literal;
                    }
                }
            }
            Ok(_) => cur = literal,
            Err(_) => {
                // Missing: what follows is made as plain directories and files.
                for rest in &parts[i..] {
                    if *rest != ".." {
                        cur.push(rest);
                    }
                }
                return Ok(cur);
            }
        }
    }
    Ok(cur)
}

/// Looks `name` up in a passwd- or group-style file of the app's root (numbers pass).
fn lookup_id(root: &Path, file: &str, name: &str, app: &str) -> Result<u32, Error> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    if name.is_empty() {
        return Ok(0);
    }
    let text = resolve_in_root(root, file)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[0] == name).then(|| f[2].parse().ok())?
        })
        .next()
        .ok_or_else(|| {
            Error::Usage(format!(
                "app {app}: {name:?} is not a number and not in the image's {file}"
            ))
        })
}

/// Checks what can be checked before a pod starts: each app has an executable that exists
/// in its image, each mount names a volume, each host volume's source exists.
///
/// # Errors
/// [`Error::Usage`] or [`Error::Image`] naming the app and the problem.
pub fn check(store: &Store, m: &PodManifest) -> Result<(), Error> {
    for a in &m.apps {
        let exec = a.app.exec.first().ok_or_else(|| {
            Error::Usage(format!(
                "app {}: the image {} names no executable; give one with --exec",
                a.name, a.image.name
            ))
        })?;
        if !exec.starts_with('/') {
            return Err(Error::Usage(format!(
                "app {}: executable {exec:?} is not an absolute path",
                a.name
            )));
        }
        let tree = store.tree(&a.image.id);
        match resolve_in_root(&tree, exec) {
            Some(p) if p.is_file() => {}
            _ => {
                return Err(Error::image(
                    &a.image.name,
                    format!(
                        "app {}: executable {exec} does not exist in the image",
                        a.name
                    ),
                ))
            }
        }
        lookup_id(&tree, "/etc/passwd", &a.app.user, &a.name)?;
        lookup_id(&tree, "/etc/group", &a.app.group, &a.name)?;
        for mnt in &a.mounts {
            let Some(v) = m.volumes.iter().find(|v| v.name == mnt.volume) else {
                return Err(Error::Usage(format!(
                    "app {}: mount at {} names volume {:?}, which the pod does not have (--volume)",
                    a.name, mnt.path, mnt.volume
                )));
            };
            if !mnt.path.starts_with('/') || mnt.path.split('/').any(|c| c == "..") {
                return Err(Error::Usage(format!(
                    "app {}: mount target {:?} must be an absolute path without ..",
                    a.name, mnt.path
                )));
            }
            if v.kind == "host" && !Path::new(&v.source).exists() {
                return Err(Error::Usage(format!(
                    "volume {}: source {} does not exist",
                    v.name, v.source
                )));
            }
        }
    }
    for v in &m.volumes {
        match v.kind.as_str() {
            "host" if !v.source.starts_with('/') => {
                return Err(Error::Usage(format!(
                    "volume {}: source {:?} must be an absolute path",
                    v.name, v.source
                )))
            }
            "host" | "empty" => {}
            other => {
                return Err(Error::Usage(format!(
                    "volume {}: kind {other:?} must be host or empty",
                    v.name
                )))
            }
        }
    }
    Ok(())
}

/// Writes a prepared pod's files: manifest, options, and the directories its apps need.
///
/// # Errors
/// [`Error::Io`], or a failed copy of an image tree (`--no-overlay`).
pub fn write_pod(store: &Store, pod: &Pod, m: &PodManifest, o: &RunOptions) -> Result<(), Error> {
    // Plain data of strings and numbers: serializing cannot fail.
    pod::write_file(
        &pod.path.join("pod"),
        &serde_json::to_vec_pretty(m).unwrap_or_default(),
    )?;
    pod::write_file(
        &pod.path.join("options.json"),
        &serde_json::to_vec_pretty(o).unwrap_or_default(),
    )?;
    for a in &m.apps {
        let root = app_root(&pod.path, &a.name);
        let dirs = [
            root.clone(),
            pod.path.join("overlay").join(&a.name).join("upper"),
            pod.path.join("overlay").join(&a.name).join("work"),
            pod.path.join("apps").join(&a.name),
        ];
        for d in &dirs {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        if o.no_overlay {
            let tree = store.tree(&a.image.id);
            host_command::run(
                host_command::command("cp")
                    .arg("-a")
                    .arg(format!("{}/.", tree.display()))
                    .arg(&root),
            )?;
        }
        store.touch(&a.image.id);
    }
    for v in &m.volumes {
        if v.kind == "empty" {
            let d = pod.path.join("volumes").join(&v.name);
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
    }
    Ok(())
}

fn mount_err(what: &str, target: &Path, e: rustix::io::Errno) -> Error {
    Error::Io {
        path: target.display().to_string(),
        source: std::io::Error::other(format!("mounting {what}: {e}")),
    }
}

/// Makes `target` (a file or directory, like `like`) exist for a bind mount.
fn ensure_target(target: &Path, dir: bool) -> Result<(), Error> {
    if dir {
        std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        if !target.exists() {
            std::fs::File::create(target).map_err(|e| Error::io(target, e))?;
        }
        Ok(())
    }
}

/// Mounts an app's root filesystem and what it needs inside (not `/proc`: the pod's init
/// mounts it, in the pod's PID namespace).
fn mount_app(
    store: &Store,
    pod: &Pod,
    m: &PodManifest,
    o: &RunOptions,
    a: &pod::PodApp,
) -> Result<(), Error> {
    let root = app_root(&pod.path, &a.name);
    if !o.no_overlay {
        let tree = store.tree(&a.image.id);
        let ov = pod.path.join("overlay").join(&a.name);
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            tree.display(),
            ov.join("upper").display(),
            ov.join("work").display()
        );
        let data = std::ffi::CString::new(data)
            .map_err(|_| Error::pod(&pod.uuid, "a path with a NUL byte"))?;
        rustix::mount::mount("overlay", &root, "overlay", MountFlags::empty(), &*data)
            .map_err(|e| mount_err("the overlay root filesystem", &root, e))?;
    }
    // /dev: a fresh tmpfs with the host's harmless devices.
    let dev = in_root(&root, "/dev")?;
    ensure_target(&dev, true)?;
    rustix::mount::mount(
        "tmpfs",
        &dev,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::STRICTATIME,
        c"mode=755,size=65536k",
    )
    .map_err(|e| mount_err("/dev", &dev, e))?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(node);
        if host.exists() {
            let t = dev.join(node);
            ensure_target(&t, false)?;
            rustix::mount::mount_bind(&host, &t).map_err(|e| mount_err("a device", &t, e))?;
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(link));
    }
    let pts = dev.join("pts");
    ensure_target(&pts, true)?;
    let _ = rustix::mount::mount(
        "devpts",
        &pts,
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        c"newinstance,ptmxmode=0666,mode=0620",
    );
    let shm = dev.join("shm");
    ensure_target(&shm, true)?;
    rustix::mount::mount(
        "shm",
        &shm,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        c"mode=1777",
    )
    .map_err(|e| mount_err("/dev/shm", &shm, e))?;
    // /sys, read-only.
    let sys = in_root(&root, "/sys")?;
    ensure_target(&sys, true)?;
    rustix::mount::mount(
        "sysfs",
        &sys,
        "sysfs",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| mount_err("/sys", &sys, e))?;
    // Name resolution files, shared by the pod's apps.
    for (name, file) in [("hosts", "etc/hosts"), ("resolv.conf", "etc/resolv.conf")] {
        let src = pod.path.join("stage1").join(name);
        if src.exists() {
            let t = in_root(&root, file)?;
            ensure_target(&t, false)?;
            rustix::mount::mount_bind(&src, &t).map_err(|e| mount_err(name, &t, e))?;
        }
    }
    // Volumes.
    for mnt in &a.mounts {
        let Some(v) = m.volumes.iter().find(|v| v.name == mnt.volume) else {
            continue;
        };
        let src = if v.kind == "host" {
            PathBuf::from(&v.source)
        } else {
            pod.path.join("volumes").join(&v.name)
        };
        let t = in_root(&root, &mnt.path)?;
        ensure_target(&t, src.is_dir())?;
        let res = if v.recursive {
            rustix::mount::mount_bind_recursive(&src, &t)
        } else {
            rustix::mount::mount_bind(&src, &t)
        };
        res.map_err(|e| mount_err(&format!("volume {}", v.name), &t, e))?;
        if v.read_only {
            rustix::mount::mount_remount(&t, MountFlags::BIND | MountFlags::RDONLY, c"")
                .map_err(|e| mount_err(&format!("volume {} read-only", v.name), &t, e))?;
        }
    }
    if a.read_only_root_fs {
        rustix::mount::mount_remount(&root, MountFlags::BIND | MountFlags::RDONLY, c"")
            .map_err(|e| mount_err("the root filesystem read-only", &root, e))?;
    }
    Ok(())
}

/// Writes the pod's `/etc/hosts` and `/etc/resolv.conf`.
fn write_name_files(
    pod: &Pod,
    o: &RunOptions,
    hostname: &str,
    nets: &[NetInfo],
) -> Result<(), Error> {
    let dir = pod.path.join("stage1");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let host_hosts = o.hosts_entries.iter().any(|h| h == "host");
    let hosts = if host_hosts {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        let mut s = format!("127.0.0.1\tlocalhost localhost.localdomain localhost4 localhost4.localdomain4\n::1\tlocalhost localhost.localdomain localhost6 localhost6.localdomain6\n127.0.0.1\t{hostname}\n");
        for n in nets {
            s.push_str(&format!("{}\t{hostname}\n", n.ip));
        }
        for e in &o.hosts_entries {
            if let Some((ip, name)) = e.split_once('=') {
                s.push_str(&format!("{ip}\t{name}\n"));
            }
        }
        s
    };
    pod::write_file(&dir.join("hosts"), hosts.as_bytes())?;
    let resolv = if o.dns.iter().any(|d| d == "host") || (o.dns.is_empty() && o.net == "host") {
        std::fs::read_to_string("/etc/resolv.conf").ok()
    } else if o.dns.is_empty() || o.dns.iter().any(|d| d == "none") {
        None
    } else {
        let mut s = String::new();
        if !o.dns_search.is_empty() {
            s.push_str(&format!("search {}\n", o.dns_search.join(" ")));
        }
        for d in &o.dns {
            s.push_str(&format!("nameserver {d}\n"));
        }
        Some(s)
    };
    if let Some(r) = resolv {
        pod::write_file(&dir.join("resolv.conf"), r.as_bytes())?;
    }
    Ok(())
}

/// `rustix::thread::unshare` is safe for the flags used here (never `CLONE_FILES`, whose
/// sharing between threads is what `unshare_unsafe` guards against); the caller is
/// single-threaded at this point anyway.
#[allow(deprecated)]
fn unshare(flags: rustix::thread::UnshareFlags) -> std::io::Result<()> {
    rustix::thread::unshare(flags).map_err(std::io::Error::from)
}

/// Runs a prepared pod (in `prepare/` or `prepared/`, locked by `lock`) to its end; returns
/// the exit status of its first app and the signal that stopped it, if any. The calling process is the pod's stage1: it must be
/// single-threaded, and it stays in the pod's namespaces afterwards.
///
/// # Errors
/// Whatever stops the pod from starting; the pod then reads as exited.
pub fn run(store: &Store, pods: &Pods, pod: &mut Pod, lock: PodLock) -> Result<Ended, Error> {
    let m = pod
        .manifest()?
        .ok_or_else(|| Error::pod(&pod.uuid, "has no pod manifest"))?;
    let o = pod.options()?;
    check(store, &m)?;
    pods.move_to(pod, "run")?;
    let hostname = if o.hostname.is_empty() {
        format!("rkt-{}", pod.uuid)
    } else {
        o.hostname.clone()
    };
    let netns = crate::net::setup(pod, &o, &m)?;
    write_name_files(pod, &o, &hostname, &pod.nets())?;
    // Signals for the pod go to its init, which passes them to the apps. The thread that
    // waits for them starts now: no thread can be made after the PID namespace is.
    let init_pid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let pending = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| Error::io(Path::new("signals"), e))?;
    let (target, early) = (init_pid.clone(), pending.clone());
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                forward(target.load(std::sync::atomic::Ordering::SeqCst), s);
                early.store(s, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .map_err(|e| Error::io(Path::new("signal thread"), e))?;
    use rustix::thread::UnshareFlags as U;
    unshare(U::NEWNS | U::NEWUTS | U::NEWIPC | U::NEWPID).map_err(|e| Error::io(&pod.path, e))?;
    if let Some(ns) = &netns {
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| Error::io(&pod.path.join("netns"), e.into()))?;
    }
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|e| mount_err("/ private", Path::new("/"), e))?;
    rustix::system::sethostname(hostname.as_bytes())
        .map_err(|e| Error::io(Path::new("hostname"), e.into()))?;
    for a in &m.apps {
        mount_app(store, pod, &m, &o, a)?;
    }
    let exe = std::env::current_exe().map_err(|e| Error::io(Path::new("/proc/self/exe"), e))?;
    let mut cmd = host_command::command(&exe);
    cmd.arg("__stage1-init").arg(&pod.path);
    if !o.interactive {
        cmd.stdin(std::process::Stdio::null());
    }
    let mut child = cmd.spawn().map_err(|e| Error::io(&exe, e))?;
    let pid = child.id();
    init_pid.store(
        i32::try_from(pid).unwrap_or(0),
        std::sync::atomic::Ordering::SeqCst,
    );
    // A signal that came before the init existed is passed on now.
    let early = pending.load(std::sync::atomic::Ordering::SeqCst);
    if early != 0 {
        forward(i32::try_from(pid).unwrap_or(0), early);
    }
    pod::write_file(&pod.path.join("pid"), pid.to_string().as_bytes())?;
    let status = child.wait().map_err(|e| Error::io(&exe, e))?;
    drop(lock);
    let signal = pending.load(std::sync::atomic::Ordering::SeqCst);
    Ok(Ended {
        code: exit_code(status),
        signal: (signal != 0).then_some(signal),
    })
}

/// How a pod run by [`run`] ended: its first app's exit status, and the signal (`SIGTERM`,
/// `SIGINT`, `SIGHUP`) that stopped it, if one did. A caller that was stopped by a signal
/// should end by it too (as a shell does), so systemd reads a unit stopped with
/// `systemctl stop` as stopped, not failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub code: i32,
    pub signal: Option<i32>,
}

/// Sends signal `sig` to process `pid` (if both are real).
fn forward(pid: i32, sig: i32) {
    if let (Some(p), Some(s)) = (
        rustix::process::Pid::from_raw(pid),
        rustix::process::Signal::from_named_raw(sig),
    ) {
        let _ = rustix::process::kill_process(p, s);
    }
}

/// An exit status as a shell reports it (128 + signal when killed).
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// The environment an app gets: rkt's defaults, then the app's (the image's merged with
/// the command line's when the pod was prepared).
fn app_env(a: &pod::PodApp) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), "/root".into()),
        ("TERM".into(), "xterm".into()),
        ("AC_APP_NAME".into(), a.name.clone()),
    ];
    let mut set = |k: &str, v: &str| {
        if let Some(e) = env.iter_mut().find(|(ek, _)| ek == k) {
            e.1 = v.to_string();
        } else {
            env.push((k.to_string(), v.to_string()));
        }
    };
    for nv in &a.app.environment {
        set(&nv.name, &nv.value);
    }
    env
}

/// The pod's init: PID 1 of the pod (`rkt __stage1-init POD_DIR`).
///
/// # Errors
/// When an app cannot be started; the apps already started are killed with the pod.
pub fn init(pod_dir: &Path) -> Result<i32, Error> {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let pod = Pod {
        uuid: pod_dir
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default(),
        path: pod_dir.to_path_buf(),
        phase: "run",
    };
    let m = pod
        .manifest()?
        .ok_or_else(|| Error::pod(&pod.uuid, "has no pod manifest"))?;
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGCHLD,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ]);
    let mut signals = signals.map_err(|e| Error::io(Path::new("signals"), e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io(Path::new("/proc/self/exe"), e))?;
    let mut running: HashMap<i32, String> = HashMap::new();
    let mut first_status: Option<i32> = None;
    for a in &m.apps {
        let root = app_root(pod_dir, &a.name);
        let proc_dir = in_root(&root, "/proc")?;
        ensure_target(&proc_dir, true)?;
        rustix::mount::mount(
            "proc",
            &proc_dir,
            "proc",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        )
        .map_err(|e| mount_err("/proc", &proc_dir, e))?;
        let uid = lookup_id(&root, "/etc/passwd", &a.app.user, &a.name)?;
        let gid = lookup_id(&root, "/etc/group", &a.app.group, &a.name)?;
        let wd = if a.app.working_directory.is_empty() {
            "/".to_string()
        } else {
            a.app.working_directory.clone()
        };
        let id = Identity {
            uid,
            gid,
            groups: a.app.supplementary_gids.clone(),
            caps: crate::caps::for_app(&a.app, &a.name)?.bits(),
        };
        let mut cmd = host_command::command(&exe);
        cmd.arg("__stage1-app")
            .arg(&root)
            .arg(&wd)
            .arg(id.to_arg())
            .arg("--")
            .args(&a.app.exec)
            .env_clear()
            .envs(app_env(a));
        let child = cmd
            .spawn()
            .map_err(|e| Error::pod(&pod.uuid, format!("app {}: cannot start: {e}", a.name)))?;
        running.insert(i32::try_from(child.id()).unwrap_or(0), a.name.clone());
        // The child is reaped below through waitpid, not through `child`.
        drop(child);
    }
    let order: Vec<String> = m.apps.iter().map(|a| a.name.clone()).collect();
    let mut statuses: HashMap<String, i32> = HashMap::new();
    while !running.is_empty() {
        for sig in signals.wait() {
            if sig == signal_hook::consts::SIGCHLD {
                continue;
            }
            if let Some(s) = rustix::process::Signal::from_named_raw(sig) {
                for pid in running.keys() {
                    if let Some(p) = rustix::process::Pid::from_raw(*pid) {
                        let _ = rustix::process::kill_process(p, s);
                    }
                }
            }
        }
        // Reap everything that ended: apps and orphans alike.
        while let Ok(Some((pid, status))) =
            rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG)
        {
            if let Some(name) = running.remove(&pid.as_raw_nonzero().get()) {
                let code = status
                    .exit_status()
                    .or_else(|| status.terminating_signal().map(|s| 128 + s))
                    .unwrap_or(0);
                let _ = pod::write_file(
                    &pod_dir.join("apps").join(&name).join("exit"),
                    code.to_string().as_bytes(),
                );
                statuses.insert(name, code);
            }
        }
    }
    for name in &order {
        if let Some(c) = statuses.get(name) {
            first_status = Some(*c);
            break;
        }
    }
    Ok(first_status.unwrap_or(0))
}

/// Who an app runs as and with what privileges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The capabilities it keeps (bits of `rustix::thread::CapabilitySet`).
    pub caps: u64,
}

impl Identity {
    /// As `__stage1-app` takes it: `UID:GID:GROUP,GROUP:CAPS` (CAPS in hex).
    #[must_use]
    pub fn to_arg(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        format!(
            "{}:{}:{}:{:x}",
            self.uid,
            self.gid,
            groups.join(","),
            self.caps
        )
    }

    /// Parses [`Identity::to_arg`]'s form.
    ///
    /// # Errors
    /// [`Error::Usage`] for anything else.
    pub fn from_arg(s: &str) -> Result<Self, Error> {
        let bad = || Error::Usage(format!("identity {s:?}: expected UID:GID:GROUPS:CAPS"));
        let f: Vec<&str> = s.split(':').collect();
        if f.len() != 4 {
            return Err(bad());
        }
        Ok(Identity {
            uid: f[0].parse().map_err(|_| bad())?,
            gid: f[1].parse().map_err(|_| bad())?,
            groups: f[2]
                .split(',')
                .filter(|g| !g.is_empty())
                .map(|g| g.parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?,
            caps: u64::from_str_radix(f[3], 16).map_err(|_| bad())?,
        })
    }
}

/// An app's start (`rkt __stage1-app ROOT WORKDIR IDENTITY -- EXEC...`): changes root and
/// directory, cuts its capabilities, takes its groups, group and user, then becomes the
/// app. Returns only on failure.
///
/// # Errors
/// The step that failed, naming the app's executable.
pub fn exec_app(root: &Path, wd: &str, id: &Identity, argv: &[String]) -> Error {
    use std::os::unix::process::CommandExt as _;
    let Some(prog) = argv.first() else {
        return Error::Usage("no executable".into());
    };
    if let Err(e) = rustix::process::chroot(root) {
        return Error::io(root, std::io::Error::other(format!("chroot: {e}")));
    }
    if let Err(e) = std::env::set_current_dir(wd) {
        return Error::io(Path::new(wd), e);
    }
    let keep = rustix::thread::CapabilitySet::from_bits_retain(id.caps);
    if let Err(e) = crate::caps::restrict_bounding(keep) {
        return e;
    }
    let groups: Vec<rustix::process::Gid> = id
        .groups
        .iter()
        .map(|g| rustix::process::Gid::from_raw(*g))
        .collect();
    // Thread-level calls: this process has one thread.
    let who = rustix::thread::set_thread_groups(&groups)
        .and_then(|()| rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(id.gid)))
        .and_then(|()| rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(id.uid)));
    if let Err(e) = who {
        return Error::Usage(format!(
            "becoming user {} group {} (groups {:?}): {e}",
            id.uid, id.gid, id.groups
        ));
    }
    if let Err(e) = crate::caps::restrict_sets(keep) {
        return e;
    }
    let err = host_command::command(prog).args(&argv[1..]).exec();
    Error::io(Path::new(prog), err)
}

/// Runs `cmd` (default `/bin/sh`) in app `app` of the running pod whose init is `pid`:
/// in the pod's namespaces and the app's root; returns its exit status. The caller must
/// be single-threaded (it joins the pod's mount namespace).
///
/// # Errors
/// A namespace that cannot be joined, or the command that cannot start.
pub fn enter(pod: &Pod, pid: u32, app: &str, cmd: &[String]) -> Result<i32, Error> {
    use rustix::thread::LinkNameSpaceType as T;
    let m = pod
        .manifest()?
        .ok_or_else(|| Error::pod(&pod.uuid, "has no pod manifest"))?;
    let a = m
        .apps
        .iter()
        .find(|a| a.name == app)
        .ok_or_else(|| Error::pod(&pod.uuid, format!("has no app {app:?}")))?;
    let mut fds = Vec::new();
    for (ns, t) in [
        ("ipc", T::InterProcessCommunication),
        ("uts", T::HostNameAndNISDomainName),
        ("net", T::Network),
        ("pid", T::ProcessID),
        ("mnt", T::Mount),
    ] {
        let p = PathBuf::from(format!("/proc/{pid}/ns/{ns}"));
        let f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
        fds.push((p, f, t));
    }
    let exe = std::env::current_exe().map_err(|e| Error::io(Path::new("/proc/self/exe"), e))?;
    for (p, f, t) in &fds {
        rustix::thread::move_into_link_name_space(std::os::fd::AsFd::as_fd(f), Some(*t))
            .map_err(|e| Error::io(p, e.into()))?;
    }
    let argv: Vec<String> = if cmd.is_empty() {
        vec!["/bin/sh".into()]
    } else {
        cmd.to_vec()
    };
    let status = host_command::command(&exe)
        .arg("__stage1-app")
        .arg(app_root(&pod.path, app))
        .arg("/")
        .arg(
            Identity {
                caps: rustix::thread::CapabilitySet::all().bits(),
                ..Identity::default()
            }
            .to_arg(),
        )
        .arg("--")
        .args(&argv)
        .env_clear()
        .envs(app_env(a))
        .status()
        .map_err(|e| Error::io(&exe, e))?;
    Ok(exit_code(status))
}

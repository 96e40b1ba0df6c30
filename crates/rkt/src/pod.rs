//! Pods on disk: rkt's life cycle by directory and advisory lock.
//!
//! Under `<dir>/pods`, a pod's directory moves `embryo → prepare → (prepared →) run →
//! exited-garbage`, or `prepare → garbage` when preparing failed; `rename(2)` moves it, and
//! an exclusive `flock` on the directory says a process is working on it: a locked `run/`
//! pod is running, an unlocked one has exited (so a pod whose `rkt run` was killed reads as
//! exited, and `rkt gc` can take it). Files in a pod's directory:
//! `pod` (the appc pod manifest), `options.json` (how to run it: network, DNS, hostname),
//! `created`, `pid` (the pod's init, as the host sees it; written when it starts),
//! `net.json` (its networks), `apps/<name>/exit` (each app's exit status),
//! `overlay/<name>/{upper,work}` and `stage1/rootfs/opt/stage2/<name>/rootfs`.

use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::aci::{App, NameValue};
use crate::{now_millis, Error};

/// The directories of the life cycle, in the order `rkt list` walks them.
pub const PHASES: [&str; 6] = [
    "embryo",
    "prepare",
    "prepared",
    "run",
    "exited-garbage",
    "garbage",
];

/// An image reference in a pod manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRef {
    pub name: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<NameValue>,
}

/// An app's mount of a pod volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mount {
    pub volume: String,
    pub path: String,
}

/// One app of a pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodApp {
    pub name: String,
    pub image: ImageRef,
    pub app: App,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    #[serde(
        default,
        rename = "readOnlyRootFS",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub read_only_root_fs: bool,
}

/// A pod volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default = "yes")]
    pub recursive: bool,
}

fn yes() -> bool {
    true
}

/// A pod port exposed on the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExposedPort {
    pub name: String,
    pub host_port: u16,
}

/// appc's pod manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodManifest {
    pub ac_version: String,
    pub ac_kind: String,
    pub apps: Vec<PodApp>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub annotations: Vec<NameValue>,
    #[serde(default)]
    pub ports: Vec<ExposedPort>,
}

/// How the pod is run (not part of appc's manifest).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunOptions {
    /// `host`, `none` or `default`.
    pub net: String,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub dns_search: Vec<String>,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub hosts_entries: Vec<String>,
    #[serde(default)]
    pub interactive: bool,
    #[serde(default)]
    pub no_overlay: bool,
}

/// A network a pod is on, for `rkt list` and `rkt status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetInfo {
    pub name: String,
    pub ip: String,
    #[serde(default)]
    pub interface: String,
    #[serde(default)]
    pub host_interface: String,
}

/// The pods under a data directory.
#[derive(Debug, Clone)]
pub struct Pods {
    root: PathBuf,
}

/// A pod found on disk.
#[derive(Debug, Clone)]
pub struct Pod {
    pub uuid: String,
    pub path: PathBuf,
    pub phase: &'static str,
}

/// A held pod lock; released when dropped (or when its process ends).
#[derive(Debug)]
pub struct PodLock {
    file: std::fs::File,
}

impl PodLock {
    /// The locked directory's file, to pass to a child that keeps the pod locked.
    #[must_use]
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }
}

/// Tries to lock `dir` (exclusive or shared, never waiting): `None` if someone holds it.
pub fn try_lock(dir: &Path, exclusive: bool) -> Result<Option<PodLock>, Error> {
    let file = std::fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
    let op = if exclusive {
        rustix::fs::FlockOperation::NonBlockingLockExclusive
    } else {
        rustix::fs::FlockOperation::NonBlockingLockShared
    };
    match rustix::fs::flock(file.as_fd(), op) {
        Ok(()) => Ok(Some(PodLock { file })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(Error::io(dir, e.into())),
    }
}

impl Pods {
    /// The pods under `dir/pods` (directories made as needed).
    ///
    /// # Errors
    /// [`Error::Io`] if they cannot be made.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let root = dir.join("pods");
        for p in PHASES {
            let d = root.join(p);
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        Ok(Pods { root })
    }

    /// A new pod in `prepare/`, locked by the caller.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn create(&self) -> Result<(Pod, PodLock), Error> {
        let uuid = uuid::Uuid::new_v4().to_string();
        let embryo = self.root.join("embryo").join(&uuid);
        std::fs::create_dir(&embryo).map_err(|e| Error::io(&embryo, e))?;
        let lock = try_lock(&embryo, true)?
            .ok_or_else(|| Error::pod(&uuid, "its new directory is locked by another process"))?;
        let created = now_millis().to_string();
        atomic_file::write(
            &embryo.join("created"),
            created.as_bytes(),
            &atomic_file::Options::mode(0o644),
        )
        .map_err(|e| Error::io(&embryo, std::io::Error::other(e)))?;
        let prepare = self.root.join("prepare").join(&uuid);
        std::fs::rename(&embryo, &prepare).map_err(|e| Error::io(&prepare, e))?;
        Ok((
            Pod {
                uuid,
                path: prepare,
                phase: "prepare",
            },
            lock,
        ))
    }

    /// Moves `pod` to phase `to`.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn move_to(&self, pod: &mut Pod, to: &'static str) -> Result<(), Error> {
        let dest = self.root.join(to).join(&pod.uuid);
        std::fs::rename(&pod.path, &dest).map_err(|e| Error::io(&dest, e))?;
        pod.path = dest;
        pod.phase = to;
        Ok(())
    }

    /// Every pod, in phase order, then by UUID.
    ///
    /// # Errors
    /// [`Error::Io`] if a phase directory cannot be read.
    pub fn all(&self) -> Result<Vec<Pod>, Error> {
        let mut out = Vec::new();
        for phase in PHASES {
            let d = self.root.join(phase);
            let mut names: Vec<String> = std::fs::read_dir(&d)
                .map_err(|e| Error::io(&d, e))?
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| uuid::Uuid::parse_str(n).is_ok())
                .collect();
            names.sort();
            out.extend(names.into_iter().map(|uuid| Pod {
                path: d.join(&uuid),
                uuid,
                phase,
            }));
        }
        Ok(out)
    }

    /// The pod whose UUID starts with `prefix`.
    ///
    /// # Errors
    /// [`Error::NoPod`], or [`Error::Usage`] when the prefix matches several pods.
    pub fn find(&self, prefix: &str) -> Result<Pod, Error> {
        let prefix = prefix.trim();
        if prefix.is_empty() {
            return Err(Error::Usage("no pod UUID given".into()));
        }
        let hits: Vec<Pod> = self
            .all()?
            .into_iter()
            .filter(|p| p.uuid.starts_with(prefix))
            .collect();
        match hits.len() {
            0 => Err(Error::NoPod(prefix.to_string())),
            1 => hits
                .into_iter()
                .next()
                .ok_or_else(|| Error::NoPod(prefix.to_string())),
            _ => Err(Error::Usage(format!(
                "UUID prefix {prefix:?} is ambiguous: {}",
                hits.iter()
                    .map(|p| p.uuid.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

impl Pod {
    /// rkt's state name.
    #[must_use]
    pub fn state(&self) -> &'static str {
        let locked = || matches!(try_lock(&self.path, false), Ok(None));
        match self.phase {
            "embryo" => "embryo",
            "prepare" if locked() => "preparing",
            "prepare" => "aborted prepare",
            "prepared" => "prepared",
            "run" if locked() => "running",
            "run" => "exited",
            "exited-garbage" if locked() => "exited deleting",
            "exited-garbage" => "exited garbage",
            "garbage" if locked() => "deleting",
            _ => "garbage",
        }
    }

    /// The pod manifest, if written yet.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file when it exists but cannot be read or parsed.
    pub fn manifest(&self) -> Result<Option<PodManifest>, Error> {
        let p = self.path.join("pod");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::io(&p, std::io::Error::other(e))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&p, e)),
        }
    }

    /// How the pod is run.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn options(&self) -> Result<RunOptions, Error> {
        let p = self.path.join("options.json");
        let b = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_slice(&b).map_err(|e| Error::io(&p, std::io::Error::other(e)))
    }

    /// When it was created (milliseconds).
    #[must_use]
    pub fn created(&self) -> u64 {
        read_number(&self.path.join("created")).unwrap_or_else(|| {
            std::fs::metadata(&self.path)
                .map(|m| u64::try_from(m.mtime()).unwrap_or(0) * 1000)
                .unwrap_or(0)
        })
    }

    /// When its init started (milliseconds), and its PID.
    #[must_use]
    pub fn started(&self) -> Option<(u64, u32)> {
        let p = self.path.join("pid");
        let pid = u32::try_from(read_number(&p)?).ok()?;
        let m = std::fs::metadata(&p).ok()?;
        let ms =
            u64::try_from(m.mtime()).ok()? * 1000 + u64::try_from(m.mtime_nsec()).ok()? / 1_000_000;
        Some((ms, pid))
    }

    /// The networks it is on.
    #[must_use]
    pub fn nets(&self) -> Vec<NetInfo> {
        std::fs::read(self.path.join("net.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// `default:ip4=172.16.28.7`, as `rkt list` shows networks.
    #[must_use]
    pub fn nets_text(&self) -> String {
        self.nets()
            .iter()
            .map(|n| format!("{}:ip4={}", n.name, n.ip))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Each app's exit status, in manifest order (apps that never ran are left out).
    #[must_use]
    pub fn exit_statuses(&self) -> Vec<(String, i32)> {
        let Ok(Some(m)) = self.manifest() else {
            return Vec::new();
        };
        m.apps
            .iter()
            .filter_map(|a| {
                let s = std::fs::read_to_string(self.path.join("apps").join(&a.name).join("exit"))
                    .ok()?;
                Some((a.name.clone(), s.trim().parse().ok()?))
            })
            .collect()
    }

    /// The ctime of its directory (when it last moved), milliseconds.
    #[must_use]
    pub fn moved_at(&self) -> u64 {
        std::fs::symlink_metadata(&self.path)
            .map(|m| u64::try_from(m.ctime()).unwrap_or(0) * 1000)
            .unwrap_or(0)
    }
}

fn read_number(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Writes a small file of a pod atomically.
pub(crate) fn write_file(path: &Path, contents: &[u8]) -> Result<(), Error> {
    atomic_file::write(path, contents, &atomic_file::Options::mode(0o644))
        .map_err(|e| Error::io(path, std::io::Error::other(e)))
}

/// The UUID of a pod that still needs image `id` (preparing, prepared or running).
#[must_use]
pub fn user_of(pods: &Pods, id: &str) -> Option<String> {
    pods.all().ok()?.into_iter().find_map(|p| {
        let live = matches!(p.state(), "preparing" | "prepared" | "running" | "embryo");
        let uses = p
            .manifest()
            .ok()
            .flatten()
            .is_some_and(|m| m.apps.iter().any(|a| a.image.id == id));
        (live && uses).then_some(p.uuid)
    })
}

/// Mount points at or under `dir` in this mount namespace, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

/// Removes a pod that is garbage (or being removed): its network, any mount left under
/// its directory, then the directory. `false` if another process holds the pod.
///
/// # Errors
/// [`Error::Io`] if the directory cannot be removed.
pub fn delete(pod: &Pod) -> Result<bool, Error> {
    let Some(_lock) = try_lock(&pod.path, true)? else {
        return Ok(false);
    };
    crate::net::teardown(pod);
    for m in mounts_under(&pod.path) {
        let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
    }
    std::fs::remove_dir_all(&pod.path).map_err(|e| Error::io(&pod.path, e))?;
    Ok(true)
}

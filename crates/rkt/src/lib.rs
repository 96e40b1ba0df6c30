//! rkt: app containers with no daemon.
//!
//! A pod is one or more apps that share the pod's namespaces (PID, mount, UTS, IPC and
//! network). `rkt run` is the pod: it prepares the pod's directory, takes the pod's lock,
//! enters new namespaces and starts the pod's init ([`stage1`]), which starts each app in
//! its own root filesystem (an overlay over the image's tree in the [`store`]), forwards
//! signals, reaps, records each app's exit status and ends with the first app's. Run from a
//! systemd unit, the pod is the unit's main process and its apps are in the unit's cgroup
//! and write to its journal; `systemctl stop` stops it.
//!
//! Map: [`aci`] (appc image manifests and archives), [`caps`] (an app's capabilities), [`convert`] (Docker and OCI images as
//! ACIs), [`source`] (what `rkt fetch` accepts: `docker://`, ACI, `docker save` and OCI
//! archives, names and IDs in the store), [`store`] (the content-addressed store),
//! [`pod`] (pod directories, their life cycle by directory and lock, listing and status),
//! [`stage1`] (namespaces, mounts, the pod's init and each app's start), [`net`] (host and
//! default networking), [`table`] (rkt's tab-aligned tables and times), [`trust`] (trusted
//! keys and ACI signatures).
//!
//! Invariants: an image is checked whole (digests, paths, manifest) before the store holds
//! any of it; a pod's state is its directory and whether its lock is held (rkt's scheme),
//! so a killed `rkt run` reads as exited; every mount a pod makes is in the pod's own mount
//! namespace and ends with it; nothing of a pod outlives `rkt gc` or `rkt rm`.

pub mod aci;
pub mod args;
pub mod caps;
pub mod convert;
pub mod net;
pub mod pod;
pub mod prepare;
pub mod source;
pub mod stage1;
pub mod store;
pub mod table;
pub mod trust;

use std::path::Path;

/// rkt's version as `rkt version` prints it.
pub const VERSION: &str = "1.30.0";

/// What went wrong, naming the image, pod, path or option involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// An image that is damaged, inconsistent or not what it claims.
    #[error("image {what}: {reason}")]
    Image { what: String, reason: String },
    /// No stored image matches.
    #[error("no image {0:?} in the store")]
    NoImage(String),
    /// More than one stored image matches.
    #[error("{0:?} matches more than one image: {1}")]
    Ambiguous(String, String),
    /// Signature verification would be needed.
    #[error("{0}")]
    Unverified(String),
    /// Fetching from a registry failed.
    #[error(transparent)]
    Registry(#[from] container_image::Error),
    /// No pod matches.
    #[error("no pod {0:?}")]
    NoPod(String),
    /// A pod is not in a state that allows the operation.
    #[error("pod {uuid}: {reason}")]
    Pod { uuid: String, reason: String },
    /// A command-line value that cannot be used.
    #[error("{0}")]
    Usage(String),
    /// A program failed.
    #[error(transparent)]
    Command(#[from] host_command::CommandError),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn image(what: &str, reason: impl Into<String>) -> Self {
        Error::Image {
            what: what.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn pod(uuid: &str, reason: impl Into<String>) -> Self {
        Error::Pod {
            uuid: uuid.to_string(),
            reason: reason.into(),
        }
    }
}

/// Milliseconds since the epoch.
#[must_use]
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

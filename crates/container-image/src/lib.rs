//! Container images for machines that cannot reach the internet.
//!
//! An [`Image`] is what a Docker registry stores: a config blob and gzip-compressed layer
//! blobs, each named by its SHA-256, and a manifest (Docker's schema 2) tying them together.
//! [`busybox`] builds one from the host's `busybox-static` (deterministically: the same
//! busybox gives the same digests); [`archive`] reads one from a `docker save` archive and
//! checks every layer against the config's `diff_ids`; [`push`] uploads one to a registry
//! through its HTTP API v2 (blobs the registry has are not sent again); [`pull`] fetches one
//! back, every blob checked against its digest (the start of rkt's `docker://` fetch).
//!
//! Invariants: an image is checked whole before any byte is pushed; a manifest is pushed
//! only after every blob it names is in the registry. Images are held in memory: fine for
//! the small images a local cluster seeds, not for multi-gigabyte ones.

pub mod archive;
pub mod busybox;
pub mod pull;
pub mod push;

use sha2::{Digest as _, Sha256};

/// Docker's schema 2 manifest media type.
pub const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// An image config's media type.
pub const CONFIG_V1: &str = "application/vnd.docker.container.image.v1+json";
/// A gzip-compressed layer's media type.
pub const LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// What went wrong, naming the file, entry, digest or registry involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// An archive that is not what `docker save` writes, or is damaged.
    #[error("{path}: {reason}")]
    Archive { path: String, reason: String },
    /// A program (busybox) failed.
    #[error(transparent)]
    Command(#[from] host_command::CommandError),
    /// The registry refused or failed a request.
    #[error("registry {registry}: {what}: {reason}")]
    Registry {
        registry: String,
        what: String,
        reason: String,
    },
}

/// A registry request's failure as a message: the HTTP status and the registry's answer, or
/// the transport's error.
pub(crate) fn http_reason(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, r) => {
            format!(
                "HTTP {code}: {}",
                r.into_string().unwrap_or_default().trim()
            )
        }
        other => other.to_string(),
    }
}

/// `sha256:<hex>` of `bytes`.
#[must_use]
pub fn digest(bytes: &[u8]) -> String {
    let h = Sha256::digest(bytes);
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// One layer: its compressed bytes as the registry stores them, and the digest of its
/// uncompressed tar (the config's `diff_id`).
#[derive(Debug, Clone)]
pub struct Layer {
    pub gzip: Vec<u8>,
    pub diff_id: String,
}

/// An image ready to push.
#[derive(Debug, Clone)]
pub struct Image {
    /// The config JSON, byte for byte.
    pub config: Vec<u8>,
    pub layers: Vec<Layer>,
}

impl Image {
    /// The schema 2 manifest naming this image's blobs.
    #[must_use]
    pub fn manifest(&self) -> Vec<u8> {
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "mediaType": LAYER_GZIP,
                    "size": l.gzip.len(),
                    "digest": digest(&l.gzip),
                })
            })
            .collect();
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {
                "mediaType": CONFIG_V1,
                "size": self.config.len(),
                "digest": digest(&self.config),
            },
            "layers": layers,
        });
        // A Value of strings and numbers always serializes.
        serde_json::to_vec_pretty(&m).unwrap_or_default()
    }
}

/// gzip of `tar` at a fixed level (the same input gives the same bytes).
#[must_use]
pub fn gzip(tar: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(tar);
    enc.finish().unwrap_or_default()
}

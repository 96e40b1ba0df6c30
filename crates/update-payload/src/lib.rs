//! Ferrite's update payload (`update.gz`, though it is no gzip file): CoreOS's CrAU
//! container (updates.md §3.7) —
//!
//! ```text
//! "CrAU" | u64 BE format version (1) | u64 BE manifest size | manifest (protobuf)
//!        | data blobs | signature blob (protobuf `Signatures`, the file's last bytes)
//! ```
//!
//! — whose manifest lists operations that write the new USR filesystem onto the passive
//! partition, 1 MiB at a time: `REPLACE_ZSTD` (Ferrite's own, decompressed at disk speed),
//! `REPLACE` when compression does not pay, `ZERO` for all-zero chunks; `REPLACE_BZ` (what
//! CoreOS's full payloads use) is applied too. The signature (version 2, as update_engine
//! verifies) is Ed25519 over the SHA-256 of every byte before the signature blob; the
//! public key is baked into `/usr`.
//!
//! [`generate`] makes a payload from a USR image. [`verify`] checks a downloaded payload
//! whole — the size and SHA-256 the update service offered, the manifest, the signature,
//! and that every operation is one Ferrite applies and stays inside the new partition —
//! **before** anything is written. [`apply`] then writes it (each operation's data checked
//! against its hash first) and reads the partition back against the manifest's hash. Each
//! error carries update_engine's error code ([`Error::code`]).
//!
//! Invariant: nothing writes the target before [`verify`] has passed; nothing here chooses
//! the target (the caller passes the passive partition).

mod apply;
mod generate;
pub mod manifest;

use std::path::PathBuf;

pub use apply::{apply, apply_to, verify, Applied, Expected, Target, Verified};
pub use generate::{generate, generate_range, Generated};

use omaha::codes::ErrorCode;

/// The file's first four bytes.
pub const MAGIC: &[u8; 4] = b"CrAU";
/// The format version written.
pub const FORMAT_VERSION: u64 = 1;
/// Magic, version and manifest size.
pub const HEADER_LEN: u64 = 20;
/// The block size of every operation.
pub const BLOCK_SIZE: u64 = 4096;
/// The bytes one operation covers (256 blocks).
pub const CHUNK: u64 = 1 << 20;
/// The signature version clients verify.
pub const SIGNATURE_VERSION: u32 = 2;
/// The largest manifest read.
pub const MAX_MANIFEST: u64 = 16 << 20;

/// The public key a payload is verified with.
#[derive(Debug, Clone)]
pub enum PublicKey {
    /// Ed25519 (Ferrite's payloads).
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl PublicKey {
    /// Reads a PEM public key (`-----BEGIN PUBLIC KEY-----`, as `openssl pkey -pubout`
    /// writes an Ed25519 key).
    pub fn from_pem(path: &std::path::Path) -> Result<PublicKey, Error> {
        use ed25519_dalek::pkcs8::DecodePublicKey;
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            op: "reading the key",
            path: path.to_path_buf(),
            source,
        })?;
        ed25519_dalek::VerifyingKey::from_public_key_pem(&text)
            .map(PublicKey::Ed25519)
            .map_err(|e| Error::Key {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }
}

/// A signing key: made with [`new_signing_key`], kept as PKCS#8 PEM.
pub type SigningKey = ed25519_dalek::SigningKey;

/// A new Ed25519 signing key from the system's random source.
pub fn new_signing_key() -> Result<SigningKey, Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| Error::Key {
        path: PathBuf::from("(random source)"),
        reason: e.to_string(),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The signing key kept at `path` (PKCS#8 PEM), made there (mode 0600) the first time.
/// Callers racing to make it all get the one key that landed: it is written under a name of
/// its own and linked into place, which fails if another was there first.
pub fn load_or_create_key(path: &std::path::Path) -> Result<SigningKey, Error> {
    use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
    let key_err = |reason: String| Error::Key {
        path: path.to_path_buf(),
        reason,
    };
    let load = || -> Result<SigningKey, Error> {
        let text = std::fs::read_to_string(path).map_err(io_err("reading", path))?;
        SigningKey::from_pkcs8_pem(&text).map_err(|e| key_err(e.to_string()))
    };
    if path.exists() {
        return load();
    }
    let key = new_signing_key()?;
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| key_err(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    }
    let mut nonce = [0u8; 8];
    let _ = getrandom::fill(&mut nonce);
    let tmp = path.with_extension(format!(
        "{}-{:x}.tmp",
        std::process::id(),
        u64::from_le_bytes(nonce)
    ));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        f.write_all(pem.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_err("writing", &tmp))?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load(),
        Err(e) => Err(io_err("linking", path)(e)),
    }
}

/// The public half of `key` as PEM (`-----BEGIN PUBLIC KEY-----`), as `/usr` carries it.
pub fn public_pem(key: &SigningKey) -> Result<String, Error> {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    key.verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| Error::Key {
            path: PathBuf::from("(public key)"),
            reason: e.to_string(),
        })
}

/// A payload that cannot be made, verified or applied; each names the file, and
/// [`Error::code`] is update_engine's code for it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A key that does not load.
    #[error("{path}: not an Ed25519 key in PEM: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Not the size the update service offered.
    #[error("{path}: {actual} bytes, but the update offered {expected}")]
    SizeMismatch {
        /// The payload.
        path: PathBuf,
        /// The offered size.
        expected: u64,
        /// The file's size.
        actual: u64,
    },
    /// Not the SHA-256 the update service offered.
    #[error("{path}: its SHA-256 is not the one the update offered")]
    HashMismatch {
        /// The payload.
        path: PathBuf,
    },
    /// Not a CrAU file.
    #[error("{path}: not an update payload (no CrAU header)")]
    BadMagic {
        /// The payload.
        path: PathBuf,
    },
    /// A manifest that does not parse or does not describe this file.
    #[error("{path}: manifest: {reason}")]
    Manifest {
        /// The payload.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No version-2 signature.
    #[error("{path}: the payload is not signed")]
    Unsigned {
        /// The payload.
        path: PathBuf,
    },
    /// The signature does not verify with the key.
    #[error("{path}: the signature does not verify with the image's key")]
    Signature {
        /// The payload.
        path: PathBuf,
    },
    /// An operation Ferrite does not apply, or one outside the new partition.
    #[error("{path}: operation {index}: {reason}")]
    Operation {
        /// The payload.
        path: PathBuf,
        /// Its index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// An operation's data does not match its hash (or it has none).
    #[error("{path}: operation {index}: its data does not match its hash")]
    OperationHash {
        /// The payload.
        path: PathBuf,
        /// Its index.
        index: usize,
    },
    /// The target partition cannot take the new one.
    #[error("{path}: {reason}")]
    Target {
        /// The partition.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The written partition does not read back as the manifest says.
    #[error("{path}: the written partition does not read back with the manifest's hash")]
    Readback {
        /// The partition.
        path: PathBuf,
    },
}

impl Error {
    /// update_engine's error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Io { .. } | Error::Key { .. } => ErrorCode::Error,
            Error::SizeMismatch { .. } => ErrorCode::PayloadSizeMismatch,
            Error::HashMismatch { .. } => ErrorCode::PayloadHashMismatch,
            Error::BadMagic { .. } => ErrorCode::InvalidMetadataMagicString,
            Error::Manifest { .. } => ErrorCode::ManifestParseError,
            Error::Unsigned { .. } => ErrorCode::SignedDeltaPayloadExpected,
            Error::Signature { .. } => ErrorCode::PayloadPubKeyVerificationError,
            Error::Operation { .. } => ErrorCode::OperationExecutionError,
            Error::OperationHash { .. } => ErrorCode::OperationHashMismatch,
            Error::Target { .. } => ErrorCode::InstallDeviceOpenError,
            Error::Readback { .. } => ErrorCode::NewRootfsVerificationError,
        }
    }
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

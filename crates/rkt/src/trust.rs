//! Trusted keys and image signatures, as rkt keeps and checks them.
//!
//! `rkt trust` stores an OpenPGP public key (armored or binary) under
//! `<config>/trustedkeys/prefix.d/<prefix>/<fingerprint>` (trusted for images whose name
//! starts with the prefix, at a `/` boundary) or `<config>/trustedkeys/root.d/<fingerprint>`
//! (trusted for every image). An ACI's detached signature (`<file>.asc`, armored or binary)
//! is checked over the file's bytes, as given, against the keys of the system
//! (`/usr/lib/rkt`) and local (`/etc/rkt`) configuration that apply to the image's name.
//! The OpenPGP parts come from the `pgp` crate (rPGP: pure Rust).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use pgp::composed::{Deserializable as _, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails as _;

use crate::Error;

/// A key read and checked (its self-signatures valid).
#[derive(Debug)]
pub struct Key {
    pub key: SignedPublicKey,
    /// Upper-case hex.
    pub fingerprint: String,
    pub subkey_fingerprints: Vec<String>,
    pub user_ids: Vec<String>,
}

fn parse_key(bytes: &[u8], what: &str) -> Result<Key, Error> {
    let bad = |e: String| Error::Unverified(format!("{what}: not an OpenPGP public key: {e}"));
    let key = if bytes.starts_with(b"-----BEGIN") {
        SignedPublicKey::from_armor_single(bytes)
            .map(|(k, _)| k)
            .map_err(|e| bad(e.to_string()))?
    } else {
        SignedPublicKey::from_bytes(bytes).map_err(|e| bad(e.to_string()))?
    };
    key.verify_bindings().map_err(|e| {
        Error::Unverified(format!(
            "{what}: the key's self-signatures do not hold: {e}"
        ))
    })?;
    Ok(Key {
        fingerprint: format!("{:X}", key.primary_key.fingerprint()),
        subkey_fingerprints: key
            .public_subkeys
            .iter()
            .map(|s| format!("{:X}", s.key.fingerprint()))
            .collect(),
        user_ids: key
            .details
            .users
            .iter()
            .map(|u| String::from_utf8_lossy(u.id.id()).to_string())
            .collect(),
        key,
    })
}

/// Reads and checks the key file at `path`.
///
/// # Errors
/// [`Error::Io`], or [`Error::Unverified`] when it is not a valid public key.
pub fn read_key(path: &Path) -> Result<Key, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_key(&bytes, &path.display().to_string())
}

/// A fingerprint as rkt prints it: groups of four hex digits.
#[must_use]
pub fn grouped(fp: &str) -> String {
    fp.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a trust prefix: an appc name (`example.com/app`).
///
/// # Errors
/// [`Error::Usage`] naming what is wrong.
pub fn check_prefix(prefix: &str) -> Result<(), Error> {
    crate::aci::check_identifier(prefix)
        .map_err(|r| Error::Usage(format!("--prefix={prefix:?}: {r}")))?;
    if prefix
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Error::Usage(format!(
            "--prefix={prefix:?}: every part between slashes must be a name"
        )));
    }
    Ok(())
}

/// Stores `key` in `config`'s key store, for `prefix` (or every image when `None`);
/// returns where.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn store_key(
    config: &Path,
    prefix: Option<&str>,
    key: &Key,
    bytes: &[u8],
) -> Result<PathBuf, Error> {
    let dir = match prefix {
        Some(p) => {
            check_prefix(p)?;
            config.join("trustedkeys/prefix.d").join(p)
        }
        None => config.join("trustedkeys/root.d"),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join(key.fingerprint.to_lowercase());
    atomic_file::write(&path, bytes, &atomic_file::Options::mode(0o644))
        .map_err(|e| Error::io(&path, std::io::Error::other(e)))?;
    Ok(path)
}

/// The keys in `configs` that apply to image `name`: every `root.d` key, and the keys of
/// every prefix of the name (`a`, `a/b`, … `a/b/c`).
fn keys_for(configs: &[PathBuf], name: &str) -> Vec<(PathBuf, Key)> {
    let mut dirs = Vec::new();
    for c in configs {
        dirs.push(c.join("trustedkeys/root.d"));
        let mut prefix = c.join("trustedkeys/prefix.d");
        for part in name.split('/') {
            prefix.push(part);
            dirs.push(prefix.clone());
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                if let Ok(k) = read_key(&e.path()) {
                    out.push((e.path(), k));
                }
            }
        }
    }
    out
}

/// Checks `signature_path` over `data` (the image file as given) for image `name`; the
/// user IDs of the key that signed it.
///
/// # Errors
/// [`Error::Unverified`] naming the image: no signature file, a damaged one, no trusted
/// key for the name, or no trusted key that made it.
pub fn verify(
    configs: &[PathBuf],
    name: &str,
    data: &[u8],
    signature_path: &Path,
) -> Result<Vec<String>, Error> {
    let mut sig_bytes = Vec::new();
    std::fs::File::open(signature_path)
        .map_err(|e| {
            Error::Unverified(format!(
                "error opening signature file {}: {e} (sign the image, or use --insecure-options=image)",
                signature_path.display()
            ))
        })?
        .take(1 << 20)
        .read_to_end(&mut sig_bytes)
        .map_err(|e| Error::io(signature_path, e))?;
    let sig = if sig_bytes.starts_with(b"-----BEGIN") {
        DetachedSignature::from_armor_single(&sig_bytes[..]).map(|(s, _)| s)
    } else {
        DetachedSignature::from_bytes(&sig_bytes[..])
    }
    .map_err(|e| {
        Error::Unverified(format!(
            "image {name:?} verification failed: {}: not an OpenPGP signature: {e}",
            signature_path.display()
        ))
    })?;
    let keys = keys_for(configs, name);
    if keys.is_empty() {
        return Err(Error::Unverified(format!(
            "image {name:?} verification failed: no key is trusted for it (rkt trust --prefix={name} KEY)"
        )));
    }
    for (_, k) in &keys {
        let primary_ok = sig.verify(&k.key.primary_key, data).is_ok();
        let sub_ok = k
            .key
            .public_subkeys
            .iter()
            .any(|s| sig.verify(&s.key, data).is_ok());
        if primary_ok || sub_ok {
            return Ok(k.user_ids.clone());
        }
    }
    Err(Error::Unverified(format!(
        "image {name:?} verification failed: the signature {} was not made by a key trusted for it, or the image changed",
        signature_path.display()
    )))
}

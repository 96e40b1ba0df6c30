//! The content-addressed image store under `<dir>/cas`.
//!
//! - `blob/<id>`: the uncompressed ACI, named by its ID (`sha512-…`).
//! - `tree/<id>/rootfs`: the image rendered once, the lower layer of every pod that runs it.
//! - `images/<id>.json`: what `rkt image list` shows (manifest, import and last-use times,
//!   the remote it came from).
//! - `lock`: held exclusively while an image is added or removed.
//!
//! Invariants: an image appears (its record written last, atomically) only once its blob
//! and tree are complete; everything is prepared under `tmp/` outside the lock and renamed
//! into place under it, so two fetches of the same image at once store it once and a killed
//! fetch leaves only `tmp/` debris (unlocked), which `rkt image gc` removes.

use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::aci::{Aci, ImageManifest};
use crate::{now_millis, Error};

/// One stored image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub manifest: ImageManifest,
    /// Milliseconds since the epoch.
    pub import_time: u64,
    pub last_used: u64,
    /// Bytes of the ACI.
    pub size: u64,
    /// Where it was fetched from (`docker://…`), if remote.
    #[serde(default)]
    pub remote: Option<String>,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// An exclusive hold on the store; released on drop.
struct Locked {
    _file: std::fs::File,
}

impl Store {
    /// Opens (creating) the store under `dir/cas`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the directory that cannot be made.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let root = dir.join("cas");
        for sub in ["blob", "tree", "images", "tmp"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        let store = Store { root };
        Ok(store)
    }

    fn lock(&self, exclusive: bool) -> Result<Locked, Error> {
        let path = self.root.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let op = if exclusive {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::LockShared
        };
        rustix::fs::flock(file.as_fd(), op).map_err(|e| Error::io(&path, e.into()))?;
        Ok(Locked { _file: file })
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.root.join("images").join(format!("{id}.json"))
    }

    /// The rendered root filesystem of image `id`.
    #[must_use]
    pub fn tree(&self, id: &str) -> PathBuf {
        self.root.join("tree").join(id).join("rootfs")
    }

    /// The stored ACI of image `id`.
    #[must_use]
    pub fn blob(&self, id: &str) -> PathBuf {
        self.root.join("blob").join(id)
    }

    /// Every stored image, oldest import first.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be read; a damaged record is skipped.
    pub fn list(&self) -> Result<Vec<Record>, Error> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let e = e.map_err(|err| Error::io(&dir, err))?;
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                if let Ok(bytes) = std::fs::read(&p) {
                    if let Ok(r) = serde_json::from_slice::<Record>(&bytes) {
                        out.push(r);
                    }
                }
            }
        }
        out.sort_by_key(|r| (r.import_time, r.id.clone()));
        Ok(out)
    }

    /// One image by ID.
    ///
    /// # Errors
    /// [`Error::NoImage`] if it is not stored.
    pub fn get(&self, id: &str) -> Result<Record, Error> {
        let p = self.record_path(id);
        let bytes = std::fs::read(&p).map_err(|_| Error::NoImage(id.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::io(&p, std::io::Error::other(e)))
    }

    /// Finds an image by ID (or an unambiguous ID prefix of at least `sha512-` and 12 hex
    /// digits) or by `name[:version]` (without a version: the newest import of the name).
    ///
    /// # Errors
    /// [`Error::NoImage`] or [`Error::Ambiguous`].
    pub fn find(&self, reference: &str) -> Result<Record, Error> {
        let all = self.list()?;
        if let Some(hex) = reference.strip_prefix("sha512-") {
            if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::NoImage(reference.to_string()));
            }
            let hits: Vec<&Record> = all.iter().filter(|r| r.id.starts_with(reference)).collect();
            return match hits.as_slice() {
                [one] => Ok((*one).clone()),
                [] => Err(Error::NoImage(reference.to_string())),
                many => Err(Error::Ambiguous(
                    reference.to_string(),
                    many.iter()
                        .map(|r| short_id(&r.id))
                        .collect::<Vec<_>>()
                        .join(", "),
                )),
            };
        }
        let (name, version) = split_name(reference);
        all.iter()
            .rev()
            .find(|r| {
                r.manifest.name == name
                    && version.is_none_or(|v| r.manifest.label("version") == Some(v))
            })
            .cloned()
            .ok_or_else(|| Error::NoImage(reference.to_string()))
    }

    /// The newest image fetched from `remote`.
    #[must_use]
    pub fn by_remote(&self, remote: &str) -> Option<Record> {
        self.list()
            .ok()?
            .into_iter()
            .rev()
            .find(|r| r.remote.as_deref() == Some(remote))
    }

    /// Adds an image: its blob and rendered tree are prepared outside the lock, then moved
    /// into place under it. An image already stored is kept as it is (its remote noted).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file, or [`Error::Image`] if the archive cannot be unpacked.
    pub fn add(&self, aci: &Aci, remote: Option<&str>) -> Result<Record, Error> {
        let tmp = tempdir_in(&self.root.join("tmp"))?;
        // Held while this directory is in use, so `image gc` leaves it alone.
        let _busy = lock_dir(&tmp, false)?;
        let blob_tmp = tmp.join("blob");
        atomic_file::write(&blob_tmp, &aci.tar, &atomic_file::Options::mode(0o644))
            .map_err(|e| Error::io(&blob_tmp, std::io::Error::other(e)))?;
        let tree_tmp = tmp.join("tree");
        std::fs::create_dir_all(&tree_tmp).map_err(|e| Error::io(&tree_tmp, e))?;
        let mut ar = tar::Archive::new(&aci.tar[..]);
        ar.set_preserve_permissions(true);
        ar.set_preserve_ownerships(true);
        ar.set_preserve_mtime(true);
        ar.set_unpack_xattrs(false);
        ar.set_overwrite(true);
        let res = ar.unpack(&tree_tmp).map_err(|e| {
            let mut reason = format!("unpacking its root filesystem: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                reason.push_str(&format!(": {s}"));
                src = s.source();
            }
            Error::image(&aci.manifest.name, reason)
        });
        if let Err(e) = res {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let result = (|| {
            let _lock = self.lock(true)?;
            let now = now_millis();
            let record = match self.get(&aci.id) {
                Ok(mut existing) => {
                    if remote.is_some() && existing.remote.as_deref() != remote {
                        existing.remote = remote.map(str::to_string);
                        self.write_record(&existing)?;
                    }
                    existing
                }
                Err(_) => {
                    let blob = self.blob(&aci.id);
                    std::fs::rename(&blob_tmp, &blob).map_err(|e| Error::io(&blob, e))?;
                    let tree = self.root.join("tree").join(&aci.id);
                    if tree.exists() {
                        std::fs::remove_dir_all(&tree).map_err(|e| Error::io(&tree, e))?;
                    }
                    std::fs::rename(&tree_tmp, &tree).map_err(|e| Error::io(&tree, e))?;
                    let record = Record {
                        id: aci.id.clone(),
                        manifest: aci.manifest.clone(),
                        import_time: now,
                        last_used: now,
                        size: aci.tar.len() as u64,
                        remote: remote.map(str::to_string),
                    };
                    self.write_record(&record)?;
                    record
                }
            };
            Ok(record)
        })();
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    fn write_record(&self, r: &Record) -> Result<(), Error> {
        let p = self.record_path(&r.id);
        let bytes =
            serde_json::to_vec_pretty(r).map_err(|e| Error::io(&p, std::io::Error::other(e)))?;
        atomic_file::write(&p, &bytes, &atomic_file::Options::mode(0o644))
            .map_err(|e| Error::io(&p, std::io::Error::other(e)))
    }

    /// Notes that image `id` was just used (best effort: a failure changes only a listing).
    pub fn touch(&self, id: &str) {
        if let Ok(mut r) = self.get(id) {
            r.last_used = now_millis();
            let _ = self.write_record(&r);
        }
    }

    /// Removes image `id`: its record first (so it is gone at once), then blob and tree.
    ///
    /// # Errors
    /// [`Error::NoImage`], or [`Error::Io`].
    pub fn remove(&self, id: &str) -> Result<(), Error> {
        let _lock = self.lock(true)?;
        let rec = self.record_path(id);
        if !rec.exists() {
            return Err(Error::NoImage(id.to_string()));
        }
        std::fs::remove_file(&rec).map_err(|e| Error::io(&rec, e))?;
        let blob = self.blob(id);
        let _ = std::fs::remove_file(&blob);
        let tree = self.root.join("tree").join(id);
        if tree.exists() {
            std::fs::remove_dir_all(&tree).map_err(|e| Error::io(&tree, e))?;
        }
        Ok(())
    }

    /// Removes what killed fetches left under `tmp/` (directories no fetch holds); returns
    /// how many.
    ///
    /// # Errors
    /// [`Error::Io`] if `tmp/` cannot be read.
    pub fn remove_debris(&self) -> Result<usize, Error> {
        let dir = self.root.join("tmp");
        let mut n = 0;
        for e in std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
        {
            let p = e.path();
            if let Ok(Some(_held)) = lock_dir(&p, false) {
                if std::fs::remove_dir_all(&p).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Bytes the tree of `id` takes (apparent sizes of its files).
    #[must_use]
    pub fn tree_size(&self, id: &str) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
                    _ => 0,
                })
                .sum()
        }
        walk(&self.root.join("tree").join(id))
    }
}

/// `sha512-` and the first 12 hex digits, as `rkt image list` shows an ID.
#[must_use]
pub fn short_id(id: &str) -> String {
    id.chars().take(19).collect()
}

/// `name:version` split at the last `:` after the last `/`.
#[must_use]
pub fn split_name(reference: &str) -> (&str, Option<&str>) {
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (&reference[..slash + i], Some(&reference[slash + i + 1..])),
        None => (reference, None),
    }
}

/// Locks directory `dir` exclusively (`wait`: block until it is free); `None` if not
/// waiting and another process holds it.
pub(crate) fn lock_dir(dir: &Path, wait: bool) -> Result<Option<std::fs::File>, Error> {
    let f = std::fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
    let op = if wait {
        rustix::fs::FlockOperation::LockExclusive
    } else {
        rustix::fs::FlockOperation::NonBlockingLockExclusive
    };
    match rustix::fs::flock(f.as_fd(), op) {
        Ok(()) => Ok(Some(f)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(Error::io(dir, e.into())),
    }
}

/// A fresh directory under `parent`.
pub(crate) fn tempdir_in(parent: &Path) -> Result<PathBuf, Error> {
    let p = parent.join(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    Ok(p)
}

//! Atomic file writes: every file Ferrite writes on a host goes through here.
//!
//! A write creates a temporary file beside the target (same directory, so the rename cannot
//! cross filesystems), writes and fsyncs the bytes, sets the mode explicitly (the umask does
//! not apply) and the owner if asked, then renames it over the target and fsyncs the
//! directory. A reader sees the old file or the new one, never a mix.
//!
//! [`stage`] splits this in two so a caller can prepare many files and only then commit
//! them: if preparing any one fails, dropping the [`Staged`] files removes their temporary
//! files and no target has changed.
//!
//! Invariant: this crate never leaves a temporary file behind on an error path, and never
//! writes a target in place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A write that failed, naming the file and the step.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct Error {
    /// The file (or directory) involved.
    pub path: PathBuf,
    /// What was being done, e.g. "creating temporary file for".
    pub op: &'static str,
    /// The underlying error.
    pub source: io::Error,
}

fn err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// How to write a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Permission bits, including setuid/setgid/sticky (e.g. `0o644`).
    pub mode: u32,
    /// Owner user ID, or `None` to keep the writer's.
    pub uid: Option<u32>,
    /// Owner group ID, or `None` to keep the writer's.
    pub gid: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: 0o644,
            uid: None,
            gid: None,
        }
    }
}

impl Options {
    /// Default options with the given mode.
    pub fn mode(mode: u32) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }
}

/// A fully written temporary file waiting to be renamed over its target.
/// Dropping it without [`Staged::commit`] removes the temporary file.
#[derive(Debug)]
pub struct Staged {
    tmp: Option<PathBuf>,
    target: PathBuf,
    mode: u32,
}

impl Staged {
    /// The file this will replace.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Changes the owner of the staged file (the mode is set again afterwards, since a
    /// change of owner clears setuid and setgid bits).
    pub fn chown(&mut self, uid: Option<u32>, gid: Option<u32>) -> Result<(), Error> {
        let Some(tmp) = &self.tmp else {
            return Ok(());
        };
        std::os::unix::fs::chown(tmp, uid, gid).map_err(err(&self.target, "changing owner of"))?;
        fs::set_permissions(tmp, fs::Permissions::from_mode(self.mode))
            .map_err(err(&self.target, "setting mode of"))
    }

    /// Renames the temporary file over the target and fsyncs the directory.
    pub fn commit(mut self) -> Result<(), Error> {
        let Some(tmp) = self.tmp.take() else {
            return Ok(());
        };
        if let Err(e) = fs::rename(&tmp, &self.target) {
            let _ = fs::remove_file(&tmp);
            return Err(err(&self.target, "renaming temporary file over")(e));
        }
        sync_parent(&self.target)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

fn sync_parent(path: &Path) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir, "syncing directory"))
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_name(target: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let base = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(
        ".{base}.tmp-{}-{n}-{nanos:08x}",
        std::process::id()
    ))
}

/// Writes `contents` to a temporary file beside `path` with `opts`, ready to be committed.
/// The parent directory must exist.
pub fn stage(path: &Path, contents: &[u8], opts: &Options) -> Result<Staged, Error> {
    let mut attempts = 0;
    let (file, tmp) = loop {
        let tmp = temp_name(path);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => break (f, tmp),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 16 => attempts += 1,
            Err(e) => return Err(err(path, "creating temporary file for")(e)),
        }
    };
    let staged = Staged {
        tmp: Some(tmp),
        target: path.to_path_buf(),
        mode: opts.mode,
    };
    fill(&file, contents, opts).map_err(|(op, e)| err(path, op)(e))?;
    Ok(staged)
}

fn fill(mut file: &File, contents: &[u8], opts: &Options) -> Result<(), (&'static str, io::Error)> {
    file.write_all(contents).map_err(|e| ("writing", e))?;
    if opts.uid.is_some() || opts.gid.is_some() {
        std::os::unix::fs::fchown(file, opts.uid, opts.gid)
            .map_err(|e| ("changing owner of", e))?;
    }
    // After chown, which may clear setuid/setgid bits.
    file.set_permissions(fs::Permissions::from_mode(opts.mode))
        .map_err(|e| ("setting mode of", e))?;
    file.sync_all().map_err(|e| ("syncing", e))
}

/// Atomically replaces `path` with `contents`. The parent directory must exist.
pub fn write(path: &Path, contents: &[u8], opts: &Options) -> Result<(), Error> {
    stage(path, contents, opts)?.commit()
}

/// Creates `dir` and its missing parents with mode 0755 (umask-proof), root-style as
/// coreos-cloudinit did. Returns the directories it created, outermost first.
/// Fails naming the path if a component exists and is not a directory.
pub fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        match fs::metadata(d) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(Error {
                    path: d.to_path_buf(),
                    op: "creating directory",
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "exists and is not a directory",
                    ),
                })
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                missing.push(d.to_path_buf())
            }
            Err(e) => return Err(err(d, "inspecting")(e)),
        }
        cur = d.parent().filter(|p| !p.as_os_str().is_empty());
    }
    missing.reverse();
    for d in &missing {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => continue,
            Err(e) => return Err(err(d, "creating directory")(e)),
        }
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))
            .map_err(err(d, "setting mode of"))?;
    }
    Ok(missing)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_with_exact_mode_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a");
        write(&p, b"one", &Options::mode(0o420)).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o420);
        let ino = fs::metadata(&p).unwrap().ino();
        write(&p, b"two", &Options::mode(0o4755)).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4755);
        assert_ne!(
            fs::metadata(&p).unwrap().ino(),
            ino,
            "replaced, not rewritten in place"
        );
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn dropped_stage_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("b");
        fs::write(&p, "old").unwrap();
        let s = stage(&p, b"new", &Options::default()).unwrap();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
        drop(s);
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_parent_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nope/c");
        let e = write(&p, b"x", &Options::default()).unwrap_err();
        assert!(e.to_string().contains("nope/c"), "{e}");
    }

    #[test]
    fn create_dirs_reports_and_refuses_files() {
        let d = tempfile::tempdir().unwrap();
        let made = create_dirs(&d.path().join("x/y/z")).unwrap();
        assert_eq!(made.len(), 3);
        assert_eq!(
            fs::metadata(d.path().join("x/y")).unwrap().mode() & 0o777,
            0o755
        );
        assert!(create_dirs(&d.path().join("x/y/z")).unwrap().is_empty());
        fs::write(d.path().join("f"), "").unwrap();
        let e = create_dirs(&d.path().join("f/g")).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}

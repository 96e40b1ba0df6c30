//! Drop-in directories (`NAME.d/*.conf`): which files apply to a unit, and in what order.
//!
//! systemd looks in every directory of the unit search path (highest priority first, e.g.
//! `/etc/systemd/system`, `/run/systemd/system`, `/usr/lib/systemd/system`) for
//! `<unit>.d/`, for an instance also `<template>.d/`, for a dashed name each dashed prefix
//! (`foo-.service.d/` for `foo-bar.service`), and the type-wide `service.d/`. Files are
//! keyed by file name: the one in the highest-priority directory wins, one linked to
//! `/dev/null` or empty masks the name, and the survivors apply in file-name order.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::{UnitFile, UnitName};

/// A drop-in or unit file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DropinError {
    /// Reading a directory or file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The path being read.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file that is not a valid unit file.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: crate::ParseError,
    },
    /// No directory of the search path has the unit (or its template).
    #[error("unit {0} not found in the search path")]
    NotFound(String),
}

/// The names of the drop-in directories for `unit`, most specific first.
pub fn dropin_dir_names(unit: &UnitName) -> Vec<String> {
    let suffix = unit.unit_type().as_str();
    let mut names = vec![format!("{unit}.d")];
    if let Some(t) = unit.template().filter(|_| unit.is_instance()) {
        names.push(format!("{t}.d"));
    }
    let stem = unit.prefix();
    let mut cut = stem.len();
    while let Some(dash) = stem[..cut].rfind('-') {
        names.push(format!("{}-.{suffix}.d", &stem[..dash]));
        cut = dash;
    }
    names.push(format!("{suffix}.d"));
    names
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DropinError> {
    let iter = match std::fs::read_dir(dir) {
        Ok(it) => it,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Vec::new())
        }
        Err(source) => {
            return Err(DropinError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for entry in iter {
        let entry = entry.map_err(|source| DropinError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

fn is_mask(path: &Path) -> bool {
    let dev_null = std::fs::read_link(path).is_ok_and(|t| t == Path::new("/dev/null"));
    dev_null || std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0)
}

/// The drop-in files that apply to `unit`, in the order systemd applies them.
/// `search_path` is ordered from highest to lowest priority.
pub fn find_dropins<P: AsRef<Path>>(
    search_path: &[P],
    unit: &UnitName,
) -> Result<Vec<PathBuf>, DropinError> {
    let mut by_name: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
    let dir_names = dropin_dir_names(unit);
    for base in search_path {
        for dir_name in &dir_names {
            for file in read_dir_sorted(&base.as_ref().join(dir_name))? {
                let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if !name.ends_with(".conf") || by_name.contains_key(name) {
                    continue;
                }
                let keep = (!is_mask(&file)).then_some(file.clone());
                by_name.insert(name.to_string(), keep);
            }
        }
    }
    Ok(by_name.into_values().flatten().collect())
}

fn read_unit(path: &Path) -> Result<UnitFile, DropinError> {
    let text = std::fs::read_to_string(path).map_err(|source| DropinError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    UnitFile::parse(&text).map_err(|source| DropinError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `unit` from the first directory of `search_path` that has it (an instance falls
/// back to its template) and merges its drop-ins.
pub fn load_with_dropins<P: AsRef<Path>>(
    search_path: &[P],
    unit: &UnitName,
) -> Result<UnitFile, DropinError> {
    let mut candidates = vec![unit.to_string()];
    if let Some(t) = unit.template().filter(|_| unit.is_instance()) {
        candidates.push(t.to_string());
    }
    let main = candidates
        .iter()
        .find_map(|name| {
            search_path
                .iter()
                .map(|dir| dir.as_ref().join(name))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| DropinError::NotFound(unit.to_string()))?;
    let base = read_unit(&main)?;
    let dropins = find_dropins(search_path, unit)?
        .iter()
        .map(|p| read_unit(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(base.merged(dropins.iter()))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn dir_names() {
        let u = UnitName::parse("foo-bar@x.service").unwrap();
        assert_eq!(
            dropin_dir_names(&u),
            vec![
                "foo-bar@x.service.d",
                "foo-bar@.service.d",
                "foo-.service.d",
                "service.d"
            ]
        );
    }

    #[test]
    fn priority_masking_and_order() {
        let tmp = tempfile::tempdir().unwrap();
        let etc = tmp.path().join("etc");
        let run = tmp.path().join("run");
        let lib = tmp.path().join("lib");
        for d in [&etc, &run, &lib] {
            fs::create_dir_all(d.join("docker.service.d")).unwrap();
        }
        fs::write(
            lib.join("docker.service"),
            "[Service]\nExecStart=/usr/bin/dockerd\nUser=root\n",
        )
        .unwrap();
        fs::write(
            lib.join("docker.service.d/10-a.conf"),
            "[Service]\nUser=lib\n",
        )
        .unwrap();
        fs::write(
            run.join("docker.service.d/10-a.conf"),
            "[Service]\nUser=run\n",
        )
        .unwrap();
        fs::write(
            run.join("docker.service.d/20-cloudinit.conf"),
            "[Service]\nEnvironment=A=1\n",
        )
        .unwrap();
        fs::write(
            etc.join("docker.service.d/05-z.conf"),
            "[Service]\nUser=etc\n",
        )
        .unwrap();
        fs::write(etc.join("docker.service.d/50-insecure.conf"), "").unwrap();
        fs::write(
            lib.join("docker.service.d/50-insecure.conf"),
            "[Service]\nUser=masked\n",
        )
        .unwrap();
        fs::write(lib.join("docker.service.d/notes.txt"), "ignored").unwrap();
        let u = UnitName::parse("docker.service").unwrap();
        let search = [&etc, &run, &lib];
        let found = find_dropins(&search, &u).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|p| {
                p.strip_prefix(tmp.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(
            names,
            vec![
                "etc/docker.service.d/05-z.conf",
                "run/docker.service.d/10-a.conf",
                "run/docker.service.d/20-cloudinit.conf"
            ]
        );
        let merged = load_with_dropins(&search, &u).unwrap();
        assert_eq!(merged.get("Service", "User"), Some("run"));
        assert_eq!(merged.get("Service", "Environment"), Some("A=1"));
        assert_eq!(merged.get("Service", "ExecStart"), Some("/usr/bin/dockerd"));
    }

    #[test]
    fn instance_uses_template_file_and_dropins() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::create_dir_all(d.join("web@.service.d")).unwrap();
        fs::write(d.join("web@.service"), "[Service]\nExecStart=/bin/web %i\n").unwrap();
        fs::write(d.join("web@.service.d/a.conf"), "[Unit]\nDescription=web\n").unwrap();
        let u = UnitName::parse("web@1.service").unwrap();
        let m = load_with_dropins(&[d], &u).unwrap();
        assert_eq!(m.get("Unit", "Description"), Some("web"));
        let missing = UnitName::parse("nope.service").unwrap();
        assert!(matches!(
            load_with_dropins(&[d], &missing),
            Err(DropinError::NotFound(_))
        ));
    }
}

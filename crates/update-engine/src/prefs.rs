//! Persistent prefs, one file per key under `<state>/prefs/` as CoreOS kept them, written
//! atomically: CoreOS's `previous-version` and `aleph-version`, and Ferrite's
//! `pending-update` (the version and slot an installed update waits to boot) and
//! `failed-versions` (versions that rolled back on this machine: never installed again).

use std::path::{Path, PathBuf};

use crate::Error;

/// The prefs directory.
#[derive(Debug, Clone)]
pub struct Prefs {
    dir: PathBuf,
}

/// The keys.
pub mod key {
    /// The version that ran before the update now running (sent once in the 3/2 event).
    pub const PREVIOUS_VERSION: &str = "previous-version";
    /// The version first installed.
    pub const ALEPH_VERSION: &str = "aleph-version";
    /// `<version> <slot label>` of an update installed and not yet booted.
    pub const PENDING_UPDATE: &str = "pending-update";
    /// Versions that rolled back here, one a line.
    pub const FAILED_VERSIONS: &str = "failed-versions";
}

impl Prefs {
    /// The prefs under `state` (`/var/lib/update_engine`).
    pub fn new(state: &Path) -> Prefs {
        Prefs {
            dir: state.join("prefs"),
        }
    }

    /// The value of `key`, if set (an unreadable file counts as unset).
    pub fn get(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(key)).ok()
    }

    /// Sets `key`.
    pub fn set(&self, key: &str, value: &str) -> Result<(), Error> {
        atomic_file::create_dirs(&self.dir)?;
        atomic_file::write(
            &self.dir.join(key),
            value.as_bytes(),
            &atomic_file::Options::mode(0o644),
        )?;
        Ok(())
    }

    /// Removes `key`.
    pub fn remove(&self, key: &str) -> Result<(), Error> {
        match std::fs::remove_file(self.dir.join(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                op: "removing",
                path: self.dir.join(key),
                source,
            }),
        }
    }

    /// The versions that rolled back on this machine.
    pub fn failed_versions(&self) -> Vec<String> {
        self.get(key::FAILED_VERSIONS)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Adds `version` to the versions never installed again.
    pub fn add_failed_version(&self, version: &str) -> Result<(), Error> {
        let mut all = self.failed_versions();
        if !all.iter().any(|v| v == version) {
            all.push(version.to_string());
        }
        self.set(key::FAILED_VERSIONS, &(all.join("\n") + "\n"))
    }

    /// The pending update: (version, slot label).
    pub fn pending_update(&self) -> Option<(String, String)> {
        let text = self.get(key::PENDING_UPDATE)?;
        let (v, slot) = text.trim().split_once(' ')?;
        Some((v.to_string(), slot.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prefs_persist_one_file_a_key() {
        let t = tempfile::tempdir().unwrap();
        let p = Prefs::new(t.path());
        assert_eq!(p.get(key::PREVIOUS_VERSION), None);
        p.set(key::PREVIOUS_VERSION, "1.0.0").unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("prefs/previous-version")).unwrap(),
            "1.0.0"
        );
        p.add_failed_version("1.1.0").unwrap();
        p.add_failed_version("1.1.0").unwrap();
        p.add_failed_version("1.2.0").unwrap();
        assert_eq!(Prefs::new(t.path()).failed_versions(), ["1.1.0", "1.2.0"]);
        p.set(key::PENDING_UPDATE, "1.3.0 USR-B\n").unwrap();
        assert_eq!(
            p.pending_update(),
            Some(("1.3.0".to_string(), "USR-B".to_string()))
        );
        p.remove(key::PENDING_UPDATE).unwrap();
        p.remove(key::PENDING_UPDATE).unwrap();
        assert_eq!(p.pending_update(), None);
    }
}

//! update_engine's configuration, read as CoreOS read it (updates.md §3.5): a key's value
//! comes from the first of `/etc/coreos/update.conf`, `/usr/share/coreos/update.conf` and
//! `/usr/share/coreos/release` that contains it; each file is lines split at the first `=`,
//! with no trimming, no comments and no quote removal (a later duplicate in a file wins).
//! Re-read at the start of every check.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// CoreOS's public update service (any other `SERVER` sets the test-server flag on error
/// codes).
pub const DEFAULT_SERVER: &str = "https://public.update.core-os.net/v1/update/";
/// CoreOS's application ID.
pub const DEFAULT_APPID: &str = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}";

/// The files a key is looked up in, in order, relative to the root.
const FILES: &[&str] = &[
    "etc/coreos/update.conf",
    "usr/share/coreos/update.conf",
    "usr/share/coreos/release",
];

/// One `KEY=value` file, as `simple_key_value_store` read it.
pub fn parse(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.split('\n') {
        if let Some((k, v)) = line.split_once('=') {
            out.insert(k.to_string(), v.to_string());
        }
    }
    out
}

/// The configuration as read at one moment.
#[derive(Debug, Clone, Default)]
pub struct Config {
    files: Vec<HashMap<String, String>>,
    oem: HashMap<String, String>,
}

impl Config {
    /// Reads the files under `root` (`/` on a machine); a missing file is empty.
    pub fn load(root: &Path) -> Config {
        let read = |rel: &str| {
            std::fs::read_to_string(root.join(rel))
                .map(|t| parse(&t))
                .unwrap_or_default()
        };
        let oem = ["etc/oem-release", "usr/share/oem/oem-release"]
            .iter()
            .map(|f| read(f))
            .find(|m| !m.is_empty())
            .unwrap_or_default();
        Config {
            files: FILES.iter().map(|f| read(f)).collect(),
            oem,
        }
    }

    /// The value of `key`: from the first file that has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.files
            .iter()
            .find_map(|f| f.get(key))
            .map(String::as_str)
    }

    fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// `GROUP` (`track=`): `stable` by default.
    pub fn group(&self) -> &str {
        self.get_or("GROUP", "stable")
    }

    /// `SERVER`: the Omaha URL.
    pub fn server(&self) -> &str {
        self.get_or("SERVER", DEFAULT_SERVER)
    }

    /// Whether `SERVER` is not CoreOS's (the flag on error codes).
    pub fn test_server(&self) -> bool {
        self.server() != DEFAULT_SERVER
    }

    /// `COREOS_RELEASE_VERSION`: the running version.
    pub fn version(&self) -> &str {
        self.get_or("COREOS_RELEASE_VERSION", "0.0.0")
    }

    /// `COREOS_RELEASE_BOARD`.
    pub fn board(&self) -> &str {
        self.get_or("COREOS_RELEASE_BOARD", "amd64-usr")
    }

    /// `COREOS_RELEASE_APPID`.
    pub fn appid(&self) -> &str {
        self.get_or("COREOS_RELEASE_APPID", DEFAULT_APPID)
    }

    /// The OEM's `ID` and `VERSION_ID` (`/etc/oem-release`, else the OEM partition's).
    pub fn oem(&self) -> (&str, &str) {
        (
            self.oem.get("ID").map_or("", String::as_str),
            self.oem.get("VERSION_ID").map_or("", String::as_str),
        )
    }

    /// Ferrite's `CHECK_INTERVAL` (seconds): a fixed time between checks instead of
    /// CoreOS's schedule (`ferrite up` sets it for local clusters). `None` when unset or not
    /// a positive number.
    pub fn check_interval(&self) -> Option<u64> {
        self.get("CHECK_INTERVAL")
            .and_then(|v| v.parse().ok())
            .filter(|s| *s > 0)
    }
}

/// Paths update_engine keeps its state in, under a root (`/` on a machine).
#[derive(Debug, Clone)]
pub struct Paths {
    /// The root the configuration is read under.
    pub root: PathBuf,
    /// `/var/lib/update_engine`: prefs and the downloaded payload.
    pub state: PathBuf,
    /// `/run/update_engine_autoupdate_completed`: the reboot-pending marker (tmpfs: gone
    /// after the reboot).
    pub marker: PathBuf,
}

impl Paths {
    /// The paths on a machine whose root is `root`.
    pub fn under(root: &Path) -> Paths {
        Paths {
            root: root.to_path_buf(),
            state: root.join("var/lib/update_engine"),
            marker: root.join("run/update_engine_autoupdate_completed"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn the_first_file_with_the_key_wins_and_nothing_is_trimmed() {
        let t = tempfile::tempdir().unwrap();
        let put = |rel: &str, text: &str| {
            let p = t.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put(
            "usr/share/coreos/update.conf",
            "GROUP=beta\nSERVER=http://x/\n",
        );
        put(
            "usr/share/coreos/release",
            "COREOS_RELEASE_VERSION=1.2.3\nCOREOS_RELEASE_BOARD=amd64-usr\n",
        );
        put(
            "etc/coreos/update.conf",
            "GROUP=alpha\n# a comment=is a key\nREBOOT_STRATEGY= off \nGROUP=\"stable\"\n",
        );
        put("usr/share/oem/oem-release", "ID=gce\nVERSION_ID=1\n");
        let c = Config::load(t.path());
        // The later duplicate in /etc wins, quotes and all.
        assert_eq!(c.group(), "\"stable\"");
        assert_eq!(c.get("REBOOT_STRATEGY"), Some(" off "));
        assert_eq!(c.get("# a comment"), Some("is a key"));
        assert_eq!(c.server(), "http://x/");
        assert!(c.test_server());
        assert_eq!(c.version(), "1.2.3");
        assert_eq!(c.appid(), DEFAULT_APPID);
        assert_eq!(c.oem(), ("gce", "1"));
        assert_eq!(c.check_interval(), None);
        put("etc/coreos/update.conf", "CHECK_INTERVAL=5\n");
        let c = Config::load(t.path());
        assert_eq!((c.group(), c.check_interval()), ("beta", Some(5)));
        let empty = Config::load(&t.path().join("nowhere"));
        assert_eq!((empty.group(), empty.server()), ("stable", DEFAULT_SERVER));
        assert!(!empty.test_server());
    }
}

//! Shared by the benchmarks that boot real machines: temporary state and run directories, an
//! image cache, `ferrite` run with them, commands in machines, and a guard that destroys
//! every cluster the benchmark made, even when it fails (so the temporary state directory
//! is never removed under running machines).
#![allow(
    dead_code,
    reason = "each benchmark uses the part of the helpers it needs"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "test code starts programs and writes fixtures directly"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const FERRITE: &str = env!("CARGO_BIN_EXE_ferrite");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// These benchmarks boot machines: they need root.
pub fn require_root() {
    let out = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "run as root"
    );
}

/// The image cache `ferrite` uses by default (`FERRITE_CACHE_DIR`).
pub fn default_cache() -> PathBuf {
    std::env::var_os("FERRITE_CACHE_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/ferrite"), PathBuf::from)
}

pub struct Env {
    pub state: tempfile::TempDir,
    pub run: tempfile::TempDir,
    pub cache: PathBuf,
}

impl Env {
    /// Fresh state and run directories, with the image cache at `cache`.
    pub fn new(cache: &Path) -> Self {
        Self {
            state: tempfile::Builder::new()
                .prefix("ferrite-bench")
                .tempdir_in("/var/tmp")
                .unwrap(),
            run: tempfile::Builder::new()
                .prefix("ferrite-bench")
                .tempdir_in("/run")
                .unwrap(),
            cache: cache.to_path_buf(),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(FERRITE);
        c.args(args)
            .env("FERRITE_STATE_DIR", self.state.path())
            .env("FERRITE_RUN_DIR", self.run.path())
            .env("FERRITE_CACHE_DIR", &self.cache)
            .stdin(Stdio::null());
        c
    }

    pub fn ferrite(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs `ferrite`, which must succeed; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.ferrite(args);
        assert!(
            o.status.success(),
            "ferrite {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs a shell script in a machine as root; (exit code, stdout).
    pub fn sh(&self, cluster: &str, machine: &str, script: &str) -> (i32, String) {
        let o = self.ferrite(&[
            "ssh",
            "--cluster",
            cluster,
            machine,
            "--",
            &format!("sudo sh -c {}", host_command::shell_quote(script)),
        ]);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// Polls `script` (every 20 ms, at most `limit`) until its output, trimmed, is `want`.
    pub fn until(&self, c: &str, m: &str, script: &str, want: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < limit {
            last = self.sh(c, m, script).1;
            if last.trim() == want {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{m}: `{script}` never gave {want:?} (last {last:?})");
    }

    pub fn paths(&self) -> machine_launcher::Paths {
        machine_launcher::Paths {
            state: self.state.path().to_path_buf(),
            run: self.run.path().to_path_buf(),
        }
    }
}

/// The init (PID 1) of the machine a bare `systemd-nspawn` with PID `nspawn` runs, once
/// it has one.
#[allow(dead_code)] // not every benchmark boots bare nspawn machines
pub fn nspawn_init(nspawn: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
        .ok()
        .and_then(|c| c.split_whitespace().next().map(str::to_string))
}

/// Whether the bare nspawn machine whose init is `init` says it is up
/// (`systemctl is-system-running`: running or degraded).
#[allow(dead_code)] // not every benchmark boots bare nspawn machines
pub fn nspawn_booted(init: &str) -> bool {
    Command::new("nsenter")
        .args([
            "-t",
            init,
            "-m",
            "-p",
            "--",
            "systemctl",
            "is-system-running",
        ])
        .output()
        .is_ok_and(|o| {
            matches!(
                String::from_utf8_lossy(&o.stdout).trim(),
                "running" | "degraded"
            )
        })
}

/// Destroys every cluster left under the state directory.
impl Drop for Env {
    fn drop(&mut self) {
        let clusters = self.state.path().join("clusters");
        for entry in std::fs::read_dir(clusters).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let _ = self.ferrite(&["destroy", "--cluster", &name]);
        }
    }
}

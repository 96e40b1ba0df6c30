//! The two [`Host`]s: the running system, and a root directory being prepared.

use std::path::PathBuf;
use std::process::Command;

use crate::apply::{ApplyError, Host};

/// The running system: `hostnamectl`, `useradd`, `chpasswd`.
#[derive(Debug, Default)]
pub struct SystemHost;

fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<(), ApplyError> {
    match stdin {
        Some(data) => host_command::run_with_input(cmd, data),
        None => host_command::run(cmd.stdin(std::process::Stdio::null())),
    }
    .map(drop)
    .map_err(|e| ApplyError::Host(e.to_string()))
}

impl Host for SystemHost {
    fn set_hostname(&mut self, name: &str) -> Result<(), ApplyError> {
        run(
            host_command::command("hostnamectl").args(["set-hostname", name]),
            None,
        )
    }

    fn create_user(&mut self, args: &[String]) -> Result<(), ApplyError> {
        run(host_command::command("useradd").args(args), None)
    }

    fn set_password(&mut self, user: &str, hash: &str) -> Result<(), ApplyError> {
        let line = format!("{user}:{hash}\n");
        run(
            host_command::command("chpasswd").arg("-e"),
            Some(line.as_bytes()),
        )
    }
}

/// A root directory: the host name is written to `root/etc/hostname`; user changes are only
/// recorded (they would need `useradd` to run inside the root).
#[derive(Debug)]
pub struct RootHost {
    root: PathBuf,
    /// The user commands that were not performed.
    pub recorded: Vec<String>,
}

impl RootHost {
    /// A host for `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            recorded: Vec::new(),
        }
    }
}

impl Host for RootHost {
    fn set_hostname(&mut self, name: &str) -> Result<(), ApplyError> {
        let etc = self.root.join("etc");
        atomic_file::create_dirs(&etc)?;
        atomic_file::write(
            &etc.join("hostname"),
            format!("{name}\n").as_bytes(),
            &atomic_file::Options::default(),
        )?;
        Ok(())
    }

    fn create_user(&mut self, args: &[String]) -> Result<(), ApplyError> {
        self.recorded.push(format!("useradd {}", args.join(" ")));
        Ok(())
    }

    fn set_password(&mut self, user: &str, _hash: &str) -> Result<(), ApplyError> {
        self.recorded.push(format!("chpasswd -e ({user})"));
        Ok(())
    }
}

/// The host name of the system under `root`: `root/etc/hostname`, or for `/` the kernel's.
pub fn current_hostname(root: &std::path::Path) -> String {
    let from_file = std::fs::read_to_string(root.join("etc/hostname"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let kernel = || {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_string())
    };
    if root == std::path::Path::new("/") {
        kernel()
    } else {
        from_file.unwrap_or_else(|| "localhost".to_string())
    }
}

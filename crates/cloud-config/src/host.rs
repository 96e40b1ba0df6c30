//! The two [`Host`]s: the running system, and a root directory being prepared.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::apply::{ApplyError, Host};

/// The running system: `hostnamectl`, `useradd`, `chpasswd`.
#[derive(Debug, Default)]
pub struct SystemHost;

fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<(), ApplyError> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ApplyError::Host(format!("running {shown}: {e}")))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data)
            .map_err(|e| ApplyError::Host(format!("writing to {shown}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| ApplyError::Host(format!("running {shown}: {e}")))?;
    if !out.status.success() {
        return Err(ApplyError::Host(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl Host for SystemHost {
    fn set_hostname(&mut self, name: &str) -> Result<(), ApplyError> {
        run(
            Command::new("hostnamectl").args(["set-hostname", name]),
            None,
        )
    }

    fn create_user(&mut self, args: &[String]) -> Result<(), ApplyError> {
        run(Command::new("useradd").args(args), None)
    }

    fn set_password(&mut self, user: &str, hash: &str) -> Result<(), ApplyError> {
        let line = format!("{user}:{hash}\n");
        run(Command::new("chpasswd").arg("-e"), Some(line.as_bytes()))
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

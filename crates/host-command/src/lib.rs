//! Running host tools.
//!
//! Ferrite's host side drives a few standard tools (`mount`, `ip`, `mkfs.ext4`,
//! `debootstrap`, `systemd-nspawn` …). [`run`] is the one way it runs them: the command line
//! is logged at debug level, and a failure names the command, its exit status and the end of
//! its standard error.

use std::process::Command;

/// A command that failed or could not be started.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// It ran and exited unsuccessfully.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines of its standard error.
        stderr: String,
    },
    /// It could not be started.
    #[error("running {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The error.
        source: std::io::Error,
    },
}

/// How many lines of standard error an error keeps.
const STDERR_LINES: usize = 15;

/// Runs `cmd` to completion; returns its standard output.
pub fn run(cmd: &mut Command) -> Result<String, CommandError> {
    let command = format!("{cmd:?}");
    tracing::debug!("{command}");
    let out = cmd.output().map_err(|source| CommandError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.trim().lines().collect();
        let tail = lines[lines.len().saturating_sub(STDERR_LINES)..].join("\n");
        return Err(CommandError::Failed {
            command,
            status: out.status.to_string(),
            stderr: tail,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_errors() {
        assert_eq!(run(Command::new("echo").arg("hi")).unwrap(), "hi\n");
        let e = run(Command::new("sh").args(["-c", "echo bad >&2; exit 3"])).unwrap_err();
        assert!(
            e.to_string().contains("exit status: 3") && e.to_string().ends_with("bad"),
            "{e}"
        );
        assert!(matches!(
            run(&mut Command::new("/nonexistent/tool")),
            Err(CommandError::Spawn { .. })
        ));
    }
}

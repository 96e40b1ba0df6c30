//! Running host tools.
//!
//! Ferrite's binaries drive a few standard tools (`mount`, `ip`, `mkfs.ext4`, `debootstrap`,
//! `systemd-nspawn`, `useradd`, `ssh` …). [`command`] is the only place a program to run is
//! named (`clippy.toml` forbids `Command::new` elsewhere), so one search finds every program
//! Ferrite starts. [`run`] (and [`run_with_input`]) is the one way a tool is run to
//! completion: the command line is logged at debug level, and a failure names the command,
//! its exit status and the end of its standard error. [`shell_quote`] writes one argument
//! for a command line a shell will read (`sh -c`, ssh's remote command and `ProxyCommand`). [`error_chain`] is how the host
//! binaries print a failure: every cause once.

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

/// A command for `program`: the one constructor of [`Command`] in Ferrite's code.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    #[allow(clippy::disallowed_methods)] // this is the place the lint points to
    Command::new(program)
}

/// Runs `cmd` to completion; returns its standard output.
pub fn run(cmd: &mut Command) -> Result<String, CommandError> {
    run_inner(cmd, None)
}

/// Runs `cmd` to completion with `input` on its standard input; returns its standard output.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<String, CommandError> {
    run_inner(cmd, Some(input))
}

fn run_inner(cmd: &mut Command, input: Option<&[u8]>) -> Result<String, CommandError> {
    use std::io::Write as _;
    use std::process::Stdio;
    let command = format!("{cmd:?}");
    tracing::debug!("{command}");
    let spawn_err = |source| CommandError::Spawn {
        command: command.clone(),
        source,
    };
    let out = match input {
        None => cmd.output().map_err(spawn_err)?,
        Some(data) => {
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(spawn_err)?;
            if let Some(mut pipe) = child.stdin.take() {
                // A program that exits without reading its input is judged by its status.
                let _ = pipe.write_all(data);
            }
            child.wait_with_output().map_err(spawn_err)?
        }
    };
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

/// `s` as one POSIX shell word: unchanged when it is plain, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// An error and its causes on one line, each said once: a cause whose text already ends
/// the line so far (an error that prints its source in its own message) is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {0}: {1}")]
    struct Reading(&'static str, #[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("starting the cluster")]
    struct Outer(#[source] Reading);

    #[test]
    fn every_cause_is_said_once() {
        let io = std::io::Error::from_raw_os_error(2);
        let e = Outer(Reading("/nonexistent", io));
        assert_eq!(
            error_chain(&e),
            "starting the cluster: reading /nonexistent: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn quoting_survives_the_shell() {
        for word in [
            "plain-word_1.2:/x@y%z+",
            "",
            "two words",
            "it's",
            "$HOME",
            "a'b\"c",
        ] {
            let out =
                run(Command::new("sh").args(["-c", &format!("printf %s {}", shell_quote(word))]))
                    .unwrap();
            assert_eq!(out, word);
        }
        assert_eq!(shell_quote("/usr/bin/ssh"), "/usr/bin/ssh");
    }

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

    #[test]
    fn input_reaches_the_program_and_failures_keep_their_stderr() {
        assert_eq!(
            run_with_input(&mut command("cat"), b"a:b\n").unwrap(),
            "a:b\n"
        );
        let e = run_with_input(
            command("sh").args(["-c", "read l; echo \"refused $l\" >&2; exit 1"]),
            b"bad:name\n",
        )
        .unwrap_err();
        assert!(e.to_string().ends_with("refused bad:name"), "{e}");
        // A program that exits without reading its input is judged by its status.
        assert_eq!(
            run_with_input(&mut command("true"), &[0; 1 << 20]).unwrap(),
            ""
        );
    }
}

//! `status`, `journal` and `ssh`: commands run on the machine that hosts a unit. On this
//! machine (its `/etc/machine-id`) they run directly, as fleet's `status` and `journal` did;
//! on another machine through the OpenSSH client (`ssh`, authenticating as the user's agent
//! and keys allow) as `--ssh-username` at the machine's public IP, honouring `--ssh-port`,
//! `--ssh-timeout`, `--known-hosts-file`, `--strict-host-key-checking` and `-A`. With strict
//! checking (the default) an unknown host is first shown and added to the known-hosts file
//! (`~/.fleetctl/known_hosts` by default) only when the user answers `yes` on standard
//! input, as fleet asked; a changed key makes ssh fail.

use std::collections::BTreeMap;
use std::process::ExitCode;

use fleet_model::name::mangle;
use fleet_model::{JobState, Machine};
use fleet_store::JobRecord;

use crate::cli::{self, on};
use crate::{err, registry, Global};

/// SSH settings from the global flags.
pub struct SshOptions {
    /// `--ssh-username`.
    pub user: String,
    /// `--ssh-timeout`, seconds.
    pub timeout: f64,
    /// `--known-hosts-file` (default `~/.fleetctl/known_hosts`).
    pub known_hosts: Option<String>,
    /// `--strict-host-key-checking`.
    pub strict: bool,
    /// `--tunnel`: the bastion's address and SSH port.
    pub tunnel: Option<(String, u16)>,
    /// [`SshOptions::bastion`]'s answer, worked out (its host key checked) once.
    pub bastion_args: std::sync::OnceLock<Result<Option<Vec<String>>, String>>,
}

impl SshOptions {
    /// ssh's options to reach `ip:port` directly: time limit and host key policy. With strict
    /// checking an unknown host is shown and added first (fleet's question), its key read
    /// through `via` (ssh's arguments to the bastion) when given.
    fn direct(&self, ip: &str, port: u16, via: Option<&[String]>) -> Result<Vec<String>, String> {
        let mut a = vec![
            "-p".to_string(),
            port.to_string(),
            "-o".into(),
            format!("ConnectTimeout={}", self.timeout.max(1.0).ceil() as u64),
        ];
        if self.strict {
            let known = known_hosts_file(self);
            verify_host(&known, ip, port, self.timeout, via)?;
            a.extend([
                "-o".into(),
                "StrictHostKeyChecking=yes".into(),
                "-o".into(),
                format!("UserKnownHostsFile={known}"),
            ]);
        } else {
            // Without strict checking fleet neither read nor wrote the file.
            for o in [
                "StrictHostKeyChecking=no",
                "UserKnownHostsFile=/dev/null",
                "LogLevel=ERROR",
            ] {
                a.extend(["-o".into(), o.into()]);
            }
        }
        Ok(a)
    }

    /// ssh's arguments to the bastion of `--tunnel`, destination last. One connection
    /// serves every request of a command (OpenSSH connection sharing).
    pub fn bastion(&self) -> Result<Option<Vec<String>>, String> {
        self.bastion_args
            .get_or_init(|| self.bastion_once())
            .clone()
    }

    fn bastion_once(&self) -> Result<Option<Vec<String>>, String> {
        let Some((host, port)) = &self.tunnel else {
            return Ok(None);
        };
        let mut a = self.direct(host, *port, None)?;
        if let Some(dir) = fleetctl_dir() {
            a.extend([
                "-o".into(),
                "ControlMaster=auto".into(),
                "-o".into(),
                format!("ControlPath={}/cm-%C", dir.display()),
                "-o".into(),
                "ControlPersist=5".into(),
            ]);
        }
        a.push(format!("{}@{host}", self.user));
        Ok(Some(a))
    }

    /// ssh's arguments to `user@ip` (destination last): directly, or through the bastion.
    fn to(&self, ip: &str, port: u16) -> Result<Vec<String>, String> {
        let mut a = match self.bastion()? {
            None => self.direct(ip, port, None)?,
            Some(b) => {
                let mut a = self.direct(ip, port, Some(&b))?;
                let Some((dest, opts)) = b.split_last() else {
                    return Err("no tunnel destination".into());
                };
                // ssh expands `%` in a ProxyCommand: the bastion's own `%C` stays literal.
                let quoted: Vec<String> = opts
                    .iter()
                    .map(|o| host_command::shell_quote(&o.replace('%', "%%")))
                    .collect();
                a.extend([
                    "-o".into(),
                    format!(
                        "ProxyCommand=ssh {} -W %h:%p {}",
                        quoted.join(" "),
                        host_command::shell_quote(dest)
                    ),
                ]);
                a
            }
        };
        a.push(format!("{}@{ip}", self.user));
        Ok(a)
    }
}

/// `~/.fleetctl`, made if missing.
fn fleetctl_dir() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(&std::env::var("HOME").ok()?).join(".fleetctl");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

fn local_machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn exit_of(code: Option<i32>) -> ExitCode {
    match code {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c & 0xff).unwrap_or(255)),
        None => ExitCode::from(255),
    }
}

/// Runs `cmd` on `machine`: here if it is this machine, else over SSH.
fn run_on(
    g: &Global,
    machine: &Machine,
    port: u16,
    forward_agent: bool,
    cmd: &[String],
) -> ExitCode {
    let status = if machine.id == local_machine_id() {
        if cmd.is_empty() {
            let shell = std::env::var("SHELL").unwrap_or_else(|_| "/bin/bash".into());
            host_command::command(shell).status()
        } else {
            host_command::command("/bin/sh")
                .arg("-c")
                .arg(cmd.join(" "))
                .status()
        }
    } else {
        if machine.public_ip.is_empty() {
            err("Unable to proceed: Could not determine address of machine.");
            return ExitCode::FAILURE;
        }
        let args = match g.ssh.to(&machine.public_ip, port) {
            Ok(a) => a,
            Err(e) => {
                err(e);
                return ExitCode::from(255);
            }
        };
        let Some((dest, opts)) = args.split_last() else {
            return ExitCode::from(255);
        };
        let mut c = host_command::command("ssh");
        c.args(opts);
        if forward_agent {
            c.arg("-A");
        }
        if cmd.is_empty() {
            c.arg("-t");
        }
        c.arg(dest);
        if !cmd.is_empty() {
            c.arg("--").arg(cmd.join(" "));
        }
        c.status()
    };
    match status {
        Ok(s) => exit_of(s.code()),
        Err(e) => {
            err(format!(
                "Unable to run command on machine {}: {e}",
                machine.id
            ));
            ExitCode::from(255)
        }
    }
}

/// `--known-hosts-file`, or fleet's default `~/.fleetctl/known_hosts` (its directory made
/// as fleet made it).
fn known_hosts_file(o: &SshOptions) -> String {
    if let Some(k) = &o.known_hosts {
        return k.clone();
    }
    fleetctl_dir()
        .unwrap_or_else(|| "/".into())
        .join("known_hosts")
        .to_string_lossy()
        .into_owned()
}

/// The name a host has in known_hosts: `ip`, or `[ip]:port` off port 22.
fn known_name(ip: &str, port: u16) -> String {
    if port == 22 {
        ip.to_string()
    } else {
        format!("[{ip}]:{port}")
    }
}

/// fleet's host key check before connecting: a host already in `known` is left to ssh
/// (which refuses a changed key); an unknown host's key is shown and added only when the
/// user answers `yes` on standard input, as fleet asked.
fn verify_host(
    known: &str,
    ip: &str,
    port: u16,
    timeout: f64,
    via: Option<&[String]>,
) -> Result<(), String> {
    let name = known_name(ip, port);
    let listed = host_command::command("ssh-keygen")
        .args(["-F", &name, "-f", known])
        .output()
        .map_err(|e| format!("Unable to run ssh-keygen: {e}"))?;
    if listed.status.success() && !listed.stdout.is_empty() {
        return Ok(());
    }
    // Behind a tunnel the host is asked from the bastion.
    let mut scan = match via {
        Some(bastion) => {
            let mut c = host_command::command("ssh");
            c.args(bastion).arg("ssh-keyscan");
            c
        }
        None => host_command::command("ssh-keyscan"),
    };
    let scan = scan
        .args(["-T", &(timeout.max(1.0).ceil() as u64).to_string()])
        .args(["-p", &port.to_string(), "-t", "ed25519", ip])
        .output()
        .map_err(|e| format!("Unable to run ssh-keyscan: {e}"))?;
    let line = String::from_utf8_lossy(&scan.stdout)
        .lines()
        .find(|l| !l.starts_with('#') && l.split_whitespace().count() >= 3)
        .map(str::to_string)
        .ok_or_else(|| format!("Unable to read the host key of {ip}:{port}"))?;
    let key_type = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let fingerprint = fingerprint_md5(&line)?;
    // fleet asked once, on standard error, and took "yes" or "y".
    {
        use std::io::Write as _;
        let mut e = std::io::stderr().lock();
        let _ = write!(
            e,
            "The authenticity of host '{ip}:{port}' can't be established.\n{key_type} key fingerprint is {fingerprint}.\nAre you sure you want to continue connecting (yes/no)? "
        );
        let _ = e.flush();
    }
    let mut answer = String::new();
    let read = std::io::stdin().read_line(&mut answer);
    if !matches!(read, Ok(n) if n > 0)
        || !matches!(answer.trim().to_lowercase().as_str(), "yes" | "y")
    {
        return Err("Host key verification failed.".into());
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(known)
        .map_err(|e| format!("Failed to add the host to the list of known hosts ({known}): {e}"))?;
    std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes())
        .map_err(|e| format!("Failed to add the host to the list of known hosts ({known}): {e}"))?;
    err(format!(
        "Warning: Permanently added '{ip}:{port}' ({key_type}) to the list of known hosts."
    ));
    Ok(())
}

/// A known_hosts line's key as fleet showed it: MD5, colon-separated.
fn fingerprint_md5(line: &str) -> Result<String, String> {
    use std::io::Write as _;
    let mut child = host_command::command("ssh-keygen")
        .args(["-l", "-E", "md5", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("Unable to run ssh-keygen: {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(format!("{line}\n").as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("Unable to run ssh-keygen: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .map(|f| f.trim_start_matches("MD5:").to_string())
        .ok_or_else(|| "Unable to read the host key's fingerprint".into())
}

/// `--ssh-port` (22 when not given).
fn port_of(given: Option<i64>) -> Result<u16, String> {
    given.map_or(Ok(22), |p| {
        u16::try_from(p).map_err(|_| format!("invalid --ssh-port \"{p}\""))
    })
}

/// The machine a scheduled unit is on (it may have left the cluster).
fn host_of(j: &JobRecord, machines: &BTreeMap<String, Machine>) -> Machine {
    let id = j.target.clone().unwrap_or_default();
    machines.get(&id).cloned().unwrap_or(Machine {
        id,
        public_ip: String::new(),
        metadata: BTreeMap::new(),
        version: String::new(),
    })
}

/// `fleetctl status UNIT...`.
pub async fn status(g: &Global, f: cli::Status) -> crate::Outcome {
    let port = port_of(f.port.ssh_port)?;
    let reg = registry(g).await?;
    let (jobs, states, machines) = reg.snapshot().await?;
    let mut found = Vec::new();
    for u in &f.units {
        let name = mangle(u);
        let Some(j) = jobs.iter().find(|j| j.name == name) else {
            err(format!("Unit {name} does not exist."));
            return Ok(ExitCode::FAILURE);
        };
        if j.global {
            err(format!("Unable to determine status of global unit {name}."));
            return Ok(ExitCode::FAILURE);
        }
        if j.current_state(&states) == JobState::Inactive {
            err(format!("Unit {name} does not appear to be loaded."));
            return Ok(ExitCode::FAILURE);
        }
        found.push(j);
    }
    for (i, j) in found.iter().enumerate() {
        if i > 0 {
            crate::out("");
        }
        let cmd = ["systemctl", "status", "-l", j.name.as_str()].map(String::from);
        let code = run_on(g, &host_of(j, &machines), port, false, &cmd);
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `fleetctl journal [--lines=N] [-f] [--sudo] [--output=MODE] UNIT`.
pub async fn journal(g: &Global, f: cli::Journal) -> crate::Outcome {
    let port = port_of(f.port.ssh_port)?;
    let [unit] = f.units.as_slice() else {
        err("One unit file must be provided.");
        return Ok(ExitCode::FAILURE);
    };
    let lines = match f.lines {
        None => 10,
        Some(n) => u64::try_from(n).map_err(|_| format!("invalid value for --lines: \"{n}\""))?,
    };
    let name = mangle(unit);
    let reg = registry(g).await?;
    let (jobs, states, machines) = reg.snapshot().await?;
    let Some(j) = jobs.iter().find(|j| j.name == name) else {
        err(format!("Unit {name} does not exist."));
        return Ok(ExitCode::FAILURE);
    };
    if j.global {
        err(format!("Unable to retrieve journal of global unit {name}."));
        return Ok(ExitCode::FAILURE);
    }
    if j.current_state(&states) == JobState::Inactive {
        err(format!("Unit {name} does not appear to be running."));
        return Ok(ExitCode::FAILURE);
    }
    let mut cmd: Vec<String> = Vec::new();
    if on(f.sudo) {
        cmd.push("sudo".into());
    }
    cmd.extend(["journalctl", "--unit", &name, "--no-pager", "-n"].map(String::from));
    cmd.push(lines.to_string());
    if on(f.f) || on(f.follow) {
        cmd.push("-f".into());
    }
    // fleet 1.0's --output: journalctl's output mode.
    if let Some(mode) = &f.output {
        cmd.push("--output".into());
        cmd.push(host_command::shell_quote(mode));
    }
    Ok(run_on(g, &host_of(j, &machines), port, false, &cmd))
}

/// `fleetctl ssh [-A] [--machine=ID|--unit=NAME] {MACHINE|UNIT} [--] [CMD...]`.
pub async fn ssh(g: &Global, f: cli::Ssh) -> crate::Outcome {
    let port = port_of(f.port.ssh_port)?;
    let forward = on(f.a) || on(f.forward_agent);
    let rest = &f.rest;
    let fail = |m: &str| {
        err(format!("Unable to proceed: {m}"));
        Ok(ExitCode::FAILURE)
    };
    let (machine_arg, unit_arg) = match (&f.machine, &f.unit) {
        (Some(_), Some(_)) => {
            err("Both machine and unit flags provided, please specify only one.");
            return Ok(ExitCode::FAILURE);
        }
        (Some(m), None) => (Some(m.clone()), None),
        (None, Some(u)) => (None, Some(u.clone())),
        (None, None) => match rest.first() {
            Some(a) => (Some(a.clone()), Some(a.clone())),
            None => {
                err("Provide one machine or unit.");
                return Ok(ExitCode::FAILURE);
            }
        },
    };
    let by_arg = f.machine.is_none() && f.unit.is_none();
    let skip = usize::from(by_arg);
    let cmd: Vec<String> = rest
        .iter()
        .skip(skip)
        .skip_while(|a| *a == "--")
        .cloned()
        .collect();
    let reg = registry(g).await?;
    let (jobs, _, machines) = reg.snapshot().await?;
    let by_machine: Vec<&Machine> = match &machine_arg {
        Some(p) => machines
            .values()
            .filter(|m| m.id.starts_with(p.as_str()))
            .collect(),
        None => Vec::new(),
    };
    let by_unit = unit_arg.as_ref().and_then(|u| {
        let n = mangle(u);
        jobs.iter().find(|j| j.name == n)
    });
    let machine = match (by_machine.as_slice(), by_unit) {
        ([_, ..], Some(_)) if by_arg => {
            let a = machine_arg.unwrap_or_default();
            return fail(&format!(
                "ambiguous argument, both machine and unit found for {a}"
            ));
        }
        ([m], _) => (*m).clone(),
        ([_, _, ..], _) => return fail("found more than one machine"),
        ([], Some(j)) => {
            if j.global {
                return fail("global units unsupported");
            }
            if j.target.is_none() {
                return fail("unit does not exist");
            }
            host_of(j, &machines)
        }
        ([], None) => {
            return fail(match (f.machine.is_some(), f.unit.is_some()) {
                (true, _) => "machine does not exist",
                (_, true) => "unit does not exist",
                _ => "could not find matching unit or machine",
            });
        }
    };
    Ok(run_on(g, &machine, port, forward, &cmd))
}

/// Restarts global units with `systemctl restart` on every machine that reports them
/// (fleet 1.0 meant to; it looked for a machine a global unit never has).
pub async fn restart_globals(
    g: &Global,
    reg: &crate::client::Client,
    names: &[String],
) -> crate::Outcome {
    let (_, states, machines) = reg.snapshot().await?;
    for name in names {
        for s in states.iter().filter(|s| &s.unit == name) {
            let Some(m) = machines.get(&s.machine_id) else {
                continue;
            };
            let cmd = ["sudo", "systemctl", "restart", name].map(String::from);
            if run_on(g, m, 22, false, &cmd) != ExitCode::SUCCESS {
                err(format!(
                    "Error restarting global units [{name}] err:Error running systemctl restart. machine id={}, unit name={name}",
                    m.id
                ));
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

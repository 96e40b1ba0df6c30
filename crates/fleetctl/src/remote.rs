//! `status`, `journal` and `ssh`: commands run on the machine that hosts a unit. On this
//! machine (its `/etc/machine-id`) they run directly, as fleet's `status` and `journal` did;
//! on another machine through the OpenSSH client (`ssh`, authenticating as the user's agent
//! and keys allow) as `--ssh-username` at the machine's public IP, honouring `--ssh-port`,
//! `--ssh-timeout`, `--known-hosts-file`, `--strict-host-key-checking` and `-A`.

use std::collections::BTreeMap;
use std::process::{Command, ExitCode};

use fleet_model::name::mangle;
use fleet_model::{JobState, Machine};
use fleet_store::JobRecord;

use crate::client::Client;
use crate::{err, parse_flags, Global};

/// SSH settings from the global flags.
pub struct SshOptions {
    /// `--ssh-username`.
    pub user: String,
    /// `--ssh-timeout`, seconds.
    pub timeout: f64,
    /// `--known-hosts-file`.
    pub known_hosts: Option<String>,
    /// `--strict-host-key-checking`.
    pub strict: bool,
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
            Command::new(shell).status()
        } else {
            Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd.join(" "))
                .status()
        }
    } else {
        if machine.public_ip.is_empty() {
            err("Unable to proceed: Could not determine address of machine.");
            return ExitCode::FAILURE;
        }
        let o = &g.ssh;
        let mut c = Command::new("ssh");
        c.arg("-p")
            .arg(port.to_string())
            .arg("-o")
            .arg(format!(
                "ConnectTimeout={}",
                o.timeout.max(1.0).ceil() as u64
            ))
            .arg("-o")
            .arg(format!(
                "StrictHostKeyChecking={}",
                if o.strict { "ask" } else { "no" }
            ));
        if let Some(k) = &o.known_hosts {
            c.arg("-o").arg(format!("UserKnownHostsFile={k}"));
        }
        if forward_agent {
            c.arg("-A");
        }
        if cmd.is_empty() {
            c.arg("-t");
        }
        c.arg(format!("{}@{}", o.user, machine.public_ip));
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

fn port_of(flags: &BTreeMap<String, String>) -> Result<u16, String> {
    flags.get("ssh-port").map_or(Ok(22), |p| {
        p.parse().map_err(|_| format!("invalid --ssh-port {p:?}"))
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
pub async fn status(g: &Global, reg: &Client, args: &[String]) -> Result<ExitCode, String> {
    let (flags, units) = parse_flags(args, &["ssh-port"])?;
    let port = port_of(&flags)?;
    let (jobs, states, machines) = reg.snapshot().await?;
    let mut found = Vec::new();
    for u in &units {
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

/// `fleetctl journal [--lines=N] [-f] [--sudo] UNIT`.
pub async fn journal(g: &Global, reg: &Client, args: &[String]) -> Result<ExitCode, String> {
    let (flags, units) = parse_flags(args, &["lines", "ssh-port"])?;
    let port = port_of(&flags)?;
    let [unit] = units.as_slice() else {
        err("One unit file must be provided.");
        return Ok(ExitCode::FAILURE);
    };
    let lines: u64 = match flags.get("lines").map(|l| l.parse()) {
        None => 10,
        Some(Ok(n)) => n,
        Some(Err(_)) => return Err(format!("invalid value for --lines: {:?}", flags["lines"])),
    };
    let name = mangle(unit);
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
    if flags.contains_key("sudo") {
        cmd.push("sudo".into());
    }
    cmd.extend(["journalctl", "--unit", &name, "--no-pager", "-n"].map(String::from));
    cmd.push(lines.to_string());
    if flags.contains_key("f") || flags.contains_key("follow") {
        cmd.push("-f".into());
    }
    Ok(run_on(g, &host_of(j, &machines), port, false, &cmd))
}

/// `fleetctl ssh [-A] [--machine=ID|--unit=NAME] {MACHINE|UNIT} [--] [CMD...]`.
pub async fn ssh(g: &Global, reg: &Client, args: &[String]) -> Result<ExitCode, String> {
    let (flags, rest) = parse_flags(args, &["ssh-port", "machine", "unit"])?;
    let port = port_of(&flags)?;
    let forward = flags.contains_key("A") || flags.contains_key("forward-agent");
    let fail = |m: &str| {
        err(format!("Unable to proceed: {m}"));
        Ok(ExitCode::FAILURE)
    };
    let (machine_arg, unit_arg) = match (flags.get("machine"), flags.get("unit")) {
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
    let by_arg = !flags.contains_key("machine") && !flags.contains_key("unit");
    let skip = usize::from(by_arg);
    let cmd: Vec<String> = rest
        .iter()
        .skip(skip)
        .skip_while(|a| *a == "--")
        .cloned()
        .collect();
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
            return fail(
                match (flags.contains_key("machine"), flags.contains_key("unit")) {
                    (true, _) => "machine does not exist",
                    (_, true) => "unit does not exist",
                    _ => "could not find matching unit or machine",
                },
            );
        }
    };
    Ok(run_on(g, &machine, port, forward, &cmd))
}

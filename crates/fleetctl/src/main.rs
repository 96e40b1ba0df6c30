//! `fleetctl`: fleet's command-line client.
//!
//! Commands, flags, table layouts, messages and exit codes follow fleet v0.11: `list-machines`,
//! `list-units`, `list-unit-files` (`--fields`, `--full`, `-l` where fleet had it,
//! `--no-legend`), `submit`, `load`, `start`, `stop`, `unload` (`--no-block`,
//! `--block-attempts`, and fleet 1.0's `--replace` protocol on submit/load/start), 1.0's
//! `restart`, `destroy`, `cat`, `status`, `journal`, `ssh`, `version`, `help`. Global flags go
//! before the command and can come from `FLEETCTL_*`; each command declares its flags, and
//! any other fails as Go's flag package failed (exit 2).
//!
//! Drivers as fleet's: `--driver=api` (default) speaks fleetd's HTTP API at `--endpoint`
//! (default `unix:///var/run/fleet.sock`); `--driver=etcd` reads fleet's keyspace in etcd
//! (endpoint default `http://127.0.0.1:2379`). See [`client`].
//!
//! `status`, `journal` and `ssh` run on the unit's machine: directly when that is this
//! machine, else through the OpenSSH client (see [`remote`]). `--tunnel=host[:port]` reaches
//! fleetd through an SSH bastion, as fleet's did: the bastion runs `fleetctl fd-forward` to
//! its API socket (or forwards to a TCP endpoint), and `status`/`journal`/`ssh` hop through
//! it. `--ca-file`, `--cert-file` and `--key-file` give the etcd driver TLS (in builds with the
//! `tls` feature). Not yet: `--tunnel` with the etcd driver.
//!
//! Each command is its own function (`cmd_*`, `set_state`, `restart`, and [`remote`]'s);
//! `run` reads the global flags (`global`) and dispatches. Next: parse with clap behind the
//! Go-spelling shim coreos-cloudinit has, and split this file along its seams (commands,
//! waiting, unit lookup).

mod client;
mod remote;
mod table;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use client::{ApiClient, Client, Created};
use fleet_model::name::{mangle, validate_name, NameInfo};
use fleet_model::{JobState, Machine, Requirements};
use fleet_store::JobRecord;

const VERSION: &str = env!("CARGO_PKG_VERSION");

const COMMANDS: &[(&str, &str)] = &[
    ("cat", "Output the contents of a submitted unit"),
    ("destroy", "Destroy one or more units in the cluster"),
    ("fd-forward", "Proxy stdin and stdout to a unix domain socket"),
    ("help", "Show a list of commands or help for one command"),
    ("journal", "Print the journal of a unit in the cluster to stdout"),
    ("list-machines", "Enumerate the current hosts in the cluster"),
    ("list-unit-files", "List the units that exist in the cluster."),
    ("list-units", "List the current state of units in the cluster"),
    ("load", "Schedule one or more units in the cluster, first submitting them if necessary."),
    ("restart", "Instruct systemd to rolling restart one or more units in the cluster."),
    ("ssh", "Open interactive shell on a machine in the cluster"),
    ("start", "Instruct systemd to start one or more units in the cluster, first submitting and loading if necessary."),
    ("status", "Output the status of one or more units in the cluster"),
    ("stop", "Instruct systemd to stop one or more units in the cluster."),
    ("submit", "Upload one or more units to the cluster without starting them"),
    ("unload", "Unschedule one or more units in the cluster."),
    ("verify", "DEPRECATED - No longer works"),
    ("version", "Print the version and exit"),
];

fn out(line: impl Into<String>) {
    let _ = writeln!(std::io::stdout().lock(), "{}", line.into());
}

fn err(line: impl AsRef<str>) {
    let _ = writeln!(std::io::stderr().lock(), "{}", line.as_ref());
}

struct Global {
    ssh: remote::SshOptions,
    /// `--ca-file`, `--cert-file`, `--key-file` (the etcd driver's TLS).
    tls: fleet_store::EtcdTls,
    driver: String,
    endpoint: String,
    prefix: String,
    timeout: f64,
}

/// Splits `--flag=value`, `--flag value`, `-flag`; returns (flags, rest).
/// Why a command failed: a command line Go's flag package would refuse (exit 2, as fleet's
/// fleetctl did), or anything else (exit 1).
#[derive(Debug)]
enum Failure {
    /// A flag the command does not define, or one without its value.
    Usage(String),
    /// Everything else.
    Other(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Self::Other(s)
    }
}

impl From<&str> for Failure {
    fn from(s: &str) -> Self {
        Self::Other(s.to_string())
    }
}

/// A command's result.
type Outcome = Result<ExitCode, Failure>;

/// A command's flags: those taking a value, and switches. Flags come before the first
/// other argument (`--` ends them), with one or two dashes, `=value` or the next argument;
/// one the command does not define is refused with Go's words.
fn parse_flags(
    args: &[String],
    with_value: &[&str],
    switches: &[&str],
) -> Result<(BTreeMap<String, String>, Vec<String>), Failure> {
    let mut flags = BTreeMap::new();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            rest.extend(args[i + 1..].iter().cloned());
            break;
        }
        if a.starts_with('-') && a.len() > 1 && rest.is_empty() {
            let body = a.trim_start_matches('-');
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            let takes_value = with_value.contains(&name.as_str());
            if !takes_value && !switches.contains(&name.as_str()) {
                return Err(Failure::Usage(format!(
                    "flag provided but not defined: -{name}"
                )));
            }
            let value = match value {
                Some(v) => v,
                None if takes_value => {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| Failure::Usage(format!("flag needs an argument: -{name}")))?
                }
                None => "true".to_string(),
            };
            flags.insert(name, value);
        } else {
            rest.push(a.clone());
        }
        i += 1;
    }
    Ok((flags, rest))
}

fn short(id: &str) -> String {
    format!("{}...", id.get(..8).unwrap_or(id))
}

fn machine_cell(id: &str, machines: &BTreeMap<String, Machine>, full: bool) -> String {
    let name = if full { id.to_string() } else { short(id) };
    match machines
        .get(id)
        .map(|m| m.public_ip.as_str())
        .filter(|ip| !ip.is_empty())
    {
        Some(ip) => format!("{name}/{ip}"),
        None => name,
    }
}

fn fields_of(
    flags: &BTreeMap<String, String>,
    default: &str,
    valid: &[&str],
) -> Result<Vec<String>, String> {
    let f = flags
        .get("fields")
        .cloned()
        .unwrap_or_else(|| default.to_string());
    if f.is_empty() {
        return Err("Must define output format".into());
    }
    let fields: Vec<String> = f.split(',').map(str::to_string).collect();
    if let Some(bad) = fields.iter().find(|x| !valid.contains(&x.as_str())) {
        return Err(format!("Invalid key in output format: {bad:?}"));
    }
    Ok(fields)
}

fn print_table(flags: &BTreeMap<String, String>, fields: &[String], rows: Vec<Vec<String>>) {
    let mut all = Vec::new();
    if !flags.contains_key("no-legend") {
        all.push(fields.iter().map(|f| f.to_uppercase()).collect());
    }
    all.extend(rows);
    let _ = std::io::stdout()
        .lock()
        .write_all(table::render(&all).as_bytes());
}

async fn registry(g: &Global) -> Result<Client, String> {
    let timeout = Duration::from_secs_f64(g.timeout.max(0.5));
    match g.ssh.bastion()? {
        None => Client::connect(&g.driver, &g.endpoint, &g.prefix, timeout, &g.tls).await,
        Some(bastion) if g.driver == "api" => Ok(Client::Api(ApiClient::tunneled(
            &g.endpoint,
            timeout,
            bastion,
        )?)),
        Some(_) => Err("--tunnel works with the API driver only".into()),
    }
}

/// The local file `arg` names or, for an instance, its template beside it (the order of
/// fleet's local-differs check); `true` when it is the template.
fn local_unit(arg: &str) -> Result<(String, bool), String> {
    let path = std::path::Path::new(arg);
    if path.exists() {
        return std::fs::read_to_string(path)
            .map(|t| (t, false))
            .map_err(|e| format!("failed getting Unit({arg}) from file: {e}"));
    }
    let base = path.file_name().and_then(|b| b.to_str()).unwrap_or(arg);
    let info = NameInfo::parse(base)
        .ok_or_else(|| format!("error extracting information from unit name {arg}"))?;
    let Some(template) = info.template.as_ref().filter(|_| info.is_instance()) else {
        return Err(format!(
            "error Unit {arg} does not seem to be a template unit"
        ));
    };
    let tpath = path
        .parent()
        .unwrap_or(std::path::Path::new(""))
        .join(template);
    std::fs::read_to_string(&tpath)
        .map(|t| (t, true))
        .map_err(|e| format!("stat {}: {e}", tpath.display()))
}

/// What `ensure_unit` did with an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ensured {
    /// The unit was there (or was created now, see `created`).
    Present,
    /// `--replace` gave the existing unit new content.
    Replaced,
}

/// For a unit that exists: fleet 1.0's local-differs warning, and with `--replace` the
/// replacement of changed content when the unit's desired state allows `command` to.
async fn check_existing(
    reg: &Client,
    arg: &str,
    job: &JobRecord,
    replace: Option<JobState>,
) -> Result<Ensured, String> {
    let different = match local_unit(arg) {
        Ok((text, template)) => {
            let local = systemd_unit::fleet::UnitHash::of_text(&text).ok();
            let differs = local != Some(job.hash);
            if differs && replace.is_none() {
                let what = if template {
                    "local template unit file"
                } else {
                    "local unit file"
                };
                err(format!(
                    "WARNING: Unit {} in registry differs from {what} {arg}. Add --replace to override.",
                    job.name
                ));
            }
            differs.then_some(text)
        }
        Err(e) if replace.is_some() => return Err(e),
        Err(_) => None,
    };
    let Some(command) = replace else {
        return Ok(Ensured::Present);
    };
    let Some(text) = different else {
        out(format!(
            "Found same Unit({}) in Registry, nothing to do",
            job.name
        ));
        return Ok(Ensured::Present);
    };
    // submit replaces only inactive units, load inactive or loaded ones, start any.
    if job.target_state > command {
        err(format!(
            "Warning: can not replace Unit({}) in state '{}', use the appropriate command",
            job.name, job.target_state
        ));
        return Ok(Ensured::Present);
    }
    let options = systemd_unit::fleet::deserialize(&text)
        .map_err(|e| format!("failed getting Unit({arg}) from file: {e}"))?;
    Requirements::from_options(&job.name, &options)
        .validate()
        .map_err(|e| e.to_string())?;
    reg.replace_unit(&job.name, &text, &options)
        .await
        .map_err(|e| format!("failed creating unit {}: {e}", job.name))?;
    Ok(Ensured::Replaced)
}

/// A unit to create, read and validated.
struct NewUnit {
    name: String,
    text: String,
    options: Vec<systemd_unit::fleet::UnitOption>,
    global: bool,
}

/// What a command-line argument names.
enum Found {
    /// A unit in the registry (with what `--replace` did to it).
    Present(String, Ensured),
    /// A unit to create from a local file or template.
    New(NewUnit),
}

/// How many creations or state changes fleetctl has in flight at once.
const IN_FLIGHT: usize = 16;

/// Creates units, [`IN_FLIGHT`] at a time, in order; the names created now (some may have
/// been created meanwhile by someone else) with whether they are global.
async fn create_units(reg: &Client, units: Vec<NewUnit>) -> Result<Vec<(String, bool)>, String> {
    use futures_util::{stream, StreamExt as _};
    let results: Vec<_> = stream::iter(units)
        .map(|u| async move {
            let r = reg
                .create_unit(&u.name, &u.text, &u.options, JobState::Inactive)
                .await;
            (u.name, u.global, r)
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let mut created = Vec::new();
    for (name, global, r) in results {
        match r {
            Ok(Created::New) => created.push((name, global)),
            Ok(Created::Existed) => {}
            Err(e) => return Err(format!("failed creating unit {name}: {e}")),
        }
    }
    Ok(created)
}

/// fleet's lazy creation for `submit`, `load` and `start`: every argument is found in the
/// registry, or read and validated, before any unit is created; then the new ones are
/// created and reported (`Unit <name> inactive`). Returns each argument's unit and what
/// `--replace` did to it, and the units created now with whether they are global.
async fn lazy_create(
    reg: &Client,
    args: &[String],
    jobs: &[JobRecord],
    replace: Option<JobState>,
) -> Result<(Vec<(String, Ensured)>, Vec<(String, bool)>), String> {
    let mut found = Vec::new();
    let mut new = Vec::new();
    for arg in args {
        match find_unit(reg, arg, jobs, replace).await? {
            Found::Present(n, how) => found.push((n, how)),
            Found::New(unit) => {
                found.push((unit.name.clone(), Ensured::Present));
                new.push(unit);
            }
        }
    }
    let created = create_units(reg, new).await?;
    for (n, global) in &created {
        // fleet printed the current state, which a global unit never has.
        if *global {
            out(format!("Unit {n} "));
        } else {
            out(format!("Unit {n} inactive"));
        }
    }
    Ok((found, created))
}

/// Finds the unit a command-line argument names, or reads and validates the one to create
/// (fleet's lazy creation order: registry, local file, template in the registry, template
/// on disk); `replace` is the command's state when `--replace` was given.
async fn find_unit(
    reg: &Client,
    arg: &str,
    jobs: &[JobRecord],
    replace: Option<JobState>,
) -> Result<Found, String> {
    let name = mangle(arg);
    validate_name(&name).map_err(|e| e.to_string())?;
    if let Some(job) = jobs.iter().find(|j| j.name == name) {
        let how = check_existing(reg, arg, job, replace).await?;
        return Ok(Found::Present(name, how));
    }
    let info = NameInfo::parse(&name).ok_or_else(|| format!("invalid unit name {name}"))?;
    let dir = std::path::Path::new(arg)
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let local = if std::path::Path::new(arg).is_file() {
        Some(std::path::PathBuf::from(arg))
    } else {
        None
    };
    let text = if let Some(p) = local {
        std::fs::read_to_string(&p)
            .map_err(|e| format!("failed getting Unit({arg}) from file: {e}"))?
    } else if let Some(tmpl) = info.template.as_ref().filter(|_| info.is_instance()) {
        if let Some(t) = jobs
            .iter()
            .find(|j| &j.name == tmpl)
            .and_then(|j| j.unit.clone())
        {
            t
        } else {
            let p = dir.join(tmpl);
            std::fs::read_to_string(&p).map_err(|_| {
                format!("unable to find Unit({name}) or template Unit({tmpl}) in Registry or on filesystem")
            })?
        }
    } else {
        return Err(format!(
            "unable to find Unit({name}) in Registry or on filesystem"
        ));
    };
    let options = systemd_unit::fleet::deserialize(&text)
        .map_err(|e| format!("failed getting Unit({arg}) from file: {e}"))?;
    let req = Requirements::from_options(&name, &options);
    for k in &req.unknown {
        err(format!(
            "Unit {name}: unrecognized requirement in [X-Fleet] section: {k:?}"
        ));
    }
    req.validate().map_err(|e| e.to_string())?;
    Ok(Found::New(NewUnit {
        name,
        text,
        options,
        global: req.global,
    }))
}

async fn wait_for(
    reg: &Client,
    names: &[String],
    want: JobState,
    attempts: u32,
) -> Result<(), String> {
    if names.is_empty() {
        return Ok(());
    }
    let mut tries = 0u32;
    let mut pending: Vec<String> = names.to_vec();
    loop {
        let (jobs, states, machines) = reg.snapshot().await?;
        pending.retain(|n| {
            let Some(j) = jobs.iter().find(|j| &j.name == n) else {
                return true;
            };
            // A global unit has no current state: fleet waited for its desired state.
            if j.global {
                if j.target_state != want {
                    return true;
                }
                out(format!("Unit {n} "));
                return false;
            }
            if j.current_state(&states) != want {
                return true;
            }
            match (want, &j.target) {
                (JobState::Inactive, _) | (_, None) => out(format!("Unit {n} {want}")),
                (_, Some(t)) => out(format!(
                    "Unit {n} {want} on {}",
                    machine_cell(t, &machines, false)
                )),
            }
            false
        });
        if pending.is_empty() {
            return Ok(());
        }
        tries += 1;
        if attempts > 0 && tries >= attempts {
            return Err(format!(
                "timed out waiting for unit {} to report state {want}",
                pending[0]
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// fleet 1.0's `restart`: a unit that is not running yet is created and started, one that
/// runs is stopped and started again (waiting for each step, one unit after another: a
/// rolling restart); a global unit is restarted by systemd on every machine it runs on.
async fn restart(g: &Global, args: &[String]) -> Outcome {
    let (flags, units) = parse_flags(args, &["block-attempts"], &[])?;
    if units.is_empty() {
        err("No units given");
        return Ok(ExitCode::SUCCESS);
    }
    let reg = registry(g).await?;
    let jobs = reg.jobs().await?;
    let states = reg.states().await?;
    let attempts = block_attempts(&flags);
    // As fleet: the units that exist are looked up before any is created.
    let existing: Vec<JobRecord> = units
        .iter()
        .filter_map(|u| jobs.iter().find(|j| j.name == mangle(u)).cloned())
        .collect();
    if let Err(e) = lazy_create(&reg, &units, &jobs, None).await {
        err(format!("Error creating units: {e}"));
        return Ok(ExitCode::FAILURE);
    }
    let step = |name: String, state: JobState| {
        let reg = &reg;
        async move {
            reg.set_target_state(&name, state)
                .await
                .map_err(|e| format!("Error setting target state for unit {name}: {e}"))?;
            wait_for(reg, std::slice::from_ref(&name), state, attempts)
                .await
                .map_err(|e| format!("Error waiting for unit states, exit status: {e}"))
        }
    };
    let mut globals = Vec::new();
    for j in existing {
        if j.global {
            globals.push(j.name);
            continue;
        }
        let steps: &[JobState] = match j.current_state(&states) {
            JobState::Inactive => {
                err(format!(
                    "Unable to restart unit {} in state inactive",
                    j.name
                ));
                continue;
            }
            JobState::Loaded => &[JobState::Launched],
            JobState::Launched => &[JobState::Loaded, JobState::Launched],
        };
        for s in steps {
            if let Err(e) = step(j.name.clone(), *s).await {
                err(e);
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    if !globals.is_empty() {
        let code = remote::restart_globals(g, &reg, &globals).await?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--block-attempts=N` (0, the default: no limit).
fn block_attempts(flags: &BTreeMap<String, String>) -> u32 {
    flags
        .get("block-attempts")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `load`, `start`, `unload`, and with `stop` true `stop` (desired state `loaded`, with
/// stop's checks and words).
async fn set_state(g: &Global, args: &[String], want: JobState, stop: bool) -> Outcome {
    // stop and unload replace nothing.
    let switches: &[&str] = if stop || want == JobState::Inactive {
        &["no-block"]
    } else {
        &["no-block", "replace"]
    };
    let (flags, units) = parse_flags(args, &["block-attempts"], switches)?;
    let reg = registry(g).await?;
    let jobs = reg.jobs().await?;
    let states = reg.states().await?;
    let verb = match want {
        JobState::Inactive => "unload",
        JobState::Loaded => "load",
        JobState::Launched => "start",
    };
    // As fleet: first every unit is found or created (and new ones reported), then the
    // desired states are set, then the command waits.
    let mut names = Vec::new();
    let mut wait = Vec::new();
    let mut created = Vec::new();
    let mut replaced: Vec<String> = Vec::new();
    if want == JobState::Inactive || stop {
        for u in &units {
            let n = mangle(u);
            // Unknown units are silently skipped.
            if let Some(j) = jobs.iter().find(|j| j.name == n) {
                // A global unit has no current state to check (fleet 1.0).
                if stop && !j.global && j.current_state(&states) == JobState::Inactive {
                    err(format!("Unable to stop unit {n} in state inactive"));
                    return Ok(ExitCode::FAILURE);
                }
                names.push(n);
            }
        }
    } else {
        let replace = flags.contains_key("replace").then_some(want);
        let found = match lazy_create(&reg, &units, &jobs, replace).await {
            Ok((found, made)) => {
                created = made;
                found
            }
            Err(e) => {
                err(format!("Error creating units: {e}"));
                return Ok(ExitCode::FAILURE);
            }
        };
        // fleet 1.0's protocol: a replaced unit is inactive; wait for that (as fleet's
        // lazy creation did), then ask for the wanted state like for any other unit.
        replaced = found
            .iter()
            .filter(|(_, how)| *how == Ensured::Replaced)
            .map(|(n, _)| n.clone())
            .collect();
        let attempts = block_attempts(&flags);
        if let Err(e) = wait_for(&reg, &replaced, JobState::Inactive, attempts).await {
            err(format!("Error waiting on unit creation: {e}"));
            return Ok(ExitCode::FAILURE);
        }
        names.extend(found.into_iter().map(|(n, _)| n));
    }
    let mut changes = Vec::new();
    for name in names {
        let existing = jobs.iter().find(|j| j.name == name);
        // fleet's stop triggers a global unit whatever its state.
        let stop_global = stop && existing.is_some_and(|j| j.global);
        if existing.is_some_and(|j| j.target_state == want)
            && !replaced.contains(&name)
            && !stop_global
        {
            continue;
        }
        let global = existing.is_some_and(|j| j.global)
            || created.iter().any(|(n, global)| *n == name && *global);
        changes.push((name, global));
    }
    let results: Vec<Result<(), String>> = {
        use futures_util::{stream, StreamExt as _};
        let reg = &reg;
        stream::iter(&changes)
            .map(|(name, _)| async move { reg.set_target_state(name, want).await })
            .buffered(IN_FLIGHT)
            .collect()
            .await
    };
    for ((name, global), r) in changes.into_iter().zip(results) {
        r?;
        if global {
            out(format!(
                "Triggered global unit {name} {}",
                if stop { "stop" } else { verb }
            ));
        } else {
            wait.push(name);
        }
    }
    if flags.contains_key("no-block") {
        for n in &wait {
            out(format!(
                "Triggered unit {n} {}",
                if stop { "stop" } else { verb }
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(e) = wait_for(&reg, &wait, want, block_attempts(&flags)).await {
        err(format!("Error waiting for units: {e}"));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The global flags (and their `FLEETCTL_*` variables) as fleet read them.
fn global(gflags: &BTreeMap<String, String>) -> Result<Global, Failure> {
    let env = |k: &str| std::env::var(format!("FLEETCTL_{k}")).ok();
    let endpoint = gflags.get("endpoint").cloned().or_else(|| env("ENDPOINT"));
    // As fleet: an explicit endpoint on etcd's ports means the etcd driver unless a
    // driver is named; `--experimental-api=false` forces it.
    let etcd_port = endpoint.as_deref().is_some_and(|e| {
        let first = e.split(',').next().unwrap_or(e).trim_end_matches('/');
        first.ends_with(":2379") || first.ends_with(":4001")
    });
    let driver = gflags
        .get("driver")
        .cloned()
        .or_else(|| env("DRIVER"))
        .unwrap_or_else(|| {
            let api_off = gflags.get("experimental-api").is_some_and(|v| v == "false");
            if etcd_port || api_off { "etcd" } else { "api" }.into()
        });
    let endpoint = match driver.as_str() {
        // The etcd driver's endpoints are etcd's; fleetd's socket is no default for it.
        "etcd" => endpoint
            .filter(|e| !e.starts_with("unix://"))
            .unwrap_or_else(|| "http://127.0.0.1:2379".into()),
        _ => endpoint.unwrap_or_else(|| "unix:///var/run/fleet.sock".into()),
    };
    let ssh = remote::SshOptions {
        user: gflags
            .get("ssh-username")
            .cloned()
            .or_else(|| env("SSH_USERNAME"))
            .unwrap_or_else(|| "core".into()),
        timeout: gflags
            .get("ssh-timeout")
            .cloned()
            .or_else(|| env("SSH_TIMEOUT"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(10.0),
        known_hosts: gflags
            .get("known-hosts-file")
            .cloned()
            .or_else(|| env("KNOWN_HOSTS_FILE")),
        strict: gflags
            .get("strict-host-key-checking")
            .cloned()
            .or_else(|| env("STRICT_HOST_KEY_CHECKING"))
            .is_none_or(|v| v != "false"),
        tunnel: match gflags
            .get("tunnel")
            .cloned()
            .or_else(|| env("TUNNEL"))
            .filter(|t| !t.is_empty())
        {
            None => None,
            // fleet's form, host[:port]; port 22 when omitted.
            Some(t) => Some(match t.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("invalid --tunnel {t:?}"))?,
                ),
                None => (t, 22),
            }),
        },
        bastion_args: std::sync::OnceLock::new(),
    };
    let file = |flag: &str, var: &str| {
        gflags
            .get(flag)
            .cloned()
            .or_else(|| env(var))
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
    };
    let g = Global {
        ssh,
        tls: fleet_store::EtcdTls {
            ca: file("ca-file", "CA_FILE"),
            cert: file("cert-file", "CERT_FILE"),
            key: file("key-file", "KEY_FILE"),
        },
        driver,
        endpoint,
        prefix: gflags
            .get("etcd-key-prefix")
            .cloned()
            .or_else(|| env("ETCD_KEY_PREFIX"))
            .unwrap_or_else(|| fleet_store::DEFAULT_PREFIX.into()),
        timeout: gflags
            .get("request-timeout")
            .cloned()
            .or_else(|| env("REQUEST_TIMEOUT"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(3.0),
    };
    Ok(g)
}

async fn run(args: Vec<String>) -> Outcome {
    const VALUE_FLAGS: &[&str] = &[
        "endpoint",
        "etcd-key-prefix",
        "request-timeout",
        "driver",
        "tunnel",
        "ssh-username",
        "known-hosts-file",
        "ssh-timeout",
        "key-file",
        "cert-file",
        "ca-file",
    ];
    // Global flags come before the command; a value flag may take the next argument.
    let mut pos = 0;
    while pos < args.len() && args[pos].starts_with('-') {
        let name = args[pos].trim_start_matches('-');
        pos += if !name.contains('=') && VALUE_FLAGS.contains(&name) {
            2
        } else {
            1
        };
    }
    let pos = pos.min(args.len());
    let (gflags, _) = parse_flags(
        &args[..pos],
        VALUE_FLAGS,
        &[
            "version",
            "help",
            "h",
            "debug",
            "experimental-api",
            "strict-host-key-checking",
        ],
    )?;
    let rest = args[pos..].to_vec();
    let g = global(&gflags)?;
    if gflags.contains_key("version") {
        out(format!("fleetctl version {VERSION}"));
        return Ok(ExitCode::SUCCESS);
    }
    let Some((cmd, args)) = rest.split_first() else {
        help();
        return Ok(ExitCode::SUCCESS);
    };
    match cmd.as_str() {
        "help" => cmd_help(args),
        "version" => {
            out(format!("fleetctl version {VERSION}"));
            Ok(ExitCode::SUCCESS)
        }
        "verify" => {
            err("WARNING: The signed/verified units feature is DEPRECATED and cannot be used.");
            Ok(ExitCode::from(2))
        }
        "fd-forward" => {
            let [socket] = args else {
                err("Provide a single argument");
                return Ok(ExitCode::FAILURE);
            };
            Ok(fd_forward(socket).await?)
        }
        "list-machines" => cmd_list_machines(&g, args).await,
        "list-units" | "list-unit-files" => cmd_list_units(&g, cmd, args).await,
        "submit" => cmd_submit(&g, args).await,
        "load" => set_state(&g, args, JobState::Loaded, false).await,
        "start" => set_state(&g, args, JobState::Launched, false).await,
        "unload" => set_state(&g, args, JobState::Inactive, false).await,
        "stop" => set_state(&g, args, JobState::Loaded, true).await,
        "restart" => restart(&g, args).await,
        "destroy" => cmd_destroy(&g, args).await,
        "status" => remote::status(&g, &registry(&g).await?, args).await,
        "journal" => remote::journal(&g, &registry(&g).await?, args).await,
        "ssh" => remote::ssh(&g, &registry(&g).await?, args).await,
        "cat" => cmd_cat(&g, args).await,
        other => {
            err(format!("fleetctl: unknown subcommand: {other:?}"));
            err("Run 'fleetctl help' for usage.");
            Ok(ExitCode::from(2))
        }
    }
}

/// `fleetctl help [COMMAND]`.
fn cmd_help(args: &[String]) -> Outcome {
    match args.first() {
        None => help(),
        Some(c) if COMMANDS.iter().any(|(n, _)| n == c) => {
            let d = COMMANDS
                .iter()
                .find(|(n, _)| n == c)
                .map(|(_, d)| *d)
                .unwrap_or("");
            out(format!("NAME:\n\tfleetctl {c} - {d}"));
        }
        Some(c) => {
            err(format!("Unrecognized command: {c}"));
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `fleetctl list-machines`.
async fn cmd_list_machines(g: &Global, args: &[String]) -> Outcome {
    let (flags, _) = parse_flags(args, &["fields"], &["full", "l", "no-legend"])?;
    let fields = match fields_of(
        &flags,
        "machine,ip,metadata",
        &["machine", "ip", "metadata"],
    ) {
        Ok(f) => f,
        Err(e) => {
            err(e);
            return Ok(ExitCode::FAILURE);
        }
    };
    let full = flags.contains_key("full") || flags.contains_key("l");
    let reg = registry(g).await?;
    let mut machines = match reg.machines().await {
        Ok(m) => m,
        Err(e) => {
            err(format!("Error retrieving list of active machines: {e}"));
            return Ok(ExitCode::FAILURE);
        }
    };
    machines.sort_by(|a, b| a.id.cmp(&b.id));
    let rows = machines
        .iter()
        .map(|m| {
            fields
                .iter()
                .map(|f| match f.as_str() {
                    "machine" if full => m.id.clone(),
                    "machine" => short(&m.id),
                    "ip" if m.public_ip.is_empty() => "-".into(),
                    "ip" => m.public_ip.clone(),
                    _ if m.metadata.is_empty() => "-".into(),
                    _ => m
                        .metadata
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                })
                .collect()
        })
        .collect();
    print_table(&flags, &fields, rows);
    Ok(ExitCode::SUCCESS)
}

/// `fleetctl list-units` and `list-unit-files`.
async fn cmd_list_units(g: &Global, cmd: &str, args: &[String]) -> Outcome {
    let files = cmd == "list-unit-files";
    // fleet's list-unit-files has no -l.
    let switches: &[&str] = if files {
        &["full", "no-legend"]
    } else {
        &["full", "l", "no-legend"]
    };
    let (flags, _) = parse_flags(args, &["fields"], switches)?;
    let (default, valid): (&str, &[&str]) = if files {
        (
            "unit,hash,dstate,state,target",
            &[
                "unit", "hash", "desc", "dstate", "state", "target", "tmachine", "global",
            ],
        )
    } else {
        (
            "unit,machine,active,sub",
            &["unit", "load", "active", "sub", "machine", "hash"],
        )
    };
    let fields = match fields_of(&flags, default, valid) {
        Ok(f) => f,
        Err(e) => {
            err(e);
            return Ok(ExitCode::FAILURE);
        }
    };
    if fields.iter().any(|f| f == "tmachine") {
        err("WARNING: The \"tmachine\" field is deprecated. Use \"target\" instead");
    }
    let full = flags.contains_key("full") || (!files && flags.contains_key("l"));
    let reg = registry(g).await?;
    let (jobs, states, machines) = match reg.snapshot().await {
        Ok(x) => x,
        Err(e) => {
            err(format!(
                "Error retrieving list of units from repository: {e}"
            ));
            return Ok(ExitCode::FAILURE);
        }
    };
    let hash = |h: &str| {
        if full {
            h.to_string()
        } else {
            h.get(..7).unwrap_or(h).to_string()
        }
    };
    let rows: Vec<Vec<String>> = if files {
        jobs.iter()
            .map(|j| {
                fields
                    .iter()
                    .map(|f| match f.as_str() {
                        "unit" => j.name.clone(),
                        "hash" => hash(&j.hash.to_string()),
                        "desc" => j
                            .unit
                            .as_deref()
                            .and_then(|t| systemd_unit::fleet::deserialize(t).ok())
                            .and_then(|o| {
                                o.into_iter()
                                    .find(|o| o.section == "Unit" && o.name == "Description")
                                    .map(|o| o.value)
                            })
                            .unwrap_or_else(|| "-".into()),
                        "dstate" => j.target_state.to_string(),
                        "state" if j.global => "-".into(),
                        "state" => j.current_state(&states).to_string(),
                        "global" => j.global.to_string(),
                        _ if j.global => "global".into(),
                        _ => j
                            .target
                            .as_deref()
                            .map_or_else(|| "-".into(), |t| machine_cell(t, &machines, full)),
                    })
                    .collect()
            })
            .collect()
    } else {
        let mut st = states.clone();
        st.sort_by(|a, b| {
            (a.unit.as_str(), a.machine_id.as_str()).cmp(&(b.unit.as_str(), b.machine_id.as_str()))
        });
        st.iter()
            .map(|s| {
                fields
                    .iter()
                    .map(|f| match f.as_str() {
                        "unit" => s.unit.clone(),
                        "load" => s.load_state.clone(),
                        "active" => s.active_state.clone(),
                        "sub" => s.sub_state.clone(),
                        "hash" => hash(&s.hash),
                        _ => machine_cell(&s.machine_id, &machines, full),
                    })
                    .collect()
            })
            .collect()
    };
    print_table(&flags, &fields, rows);
    Ok(ExitCode::SUCCESS)
}

/// `fleetctl submit [--replace] UNIT...`.
async fn cmd_submit(g: &Global, args: &[String]) -> Outcome {
    let (flags, units) = parse_flags(args, &[], &["replace"])?;
    let reg = registry(g).await?;
    let jobs = reg.jobs().await?;
    let replace = flags.contains_key("replace").then_some(JobState::Inactive);
    if let Err(e) = lazy_create(&reg, &units, &jobs, replace).await {
        err(format!("Error creating units: {e}"));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `fleetctl destroy UNIT...`.
async fn cmd_destroy(g: &Global, args: &[String]) -> Outcome {
    let (_, units) = parse_flags(args, &[], &[])?;
    let reg = registry(g).await?;
    let mut code = ExitCode::SUCCESS;
    for u in &units {
        let name = mangle(u);
        match reg.destroy_unit(&name).await {
            Ok(true) => out(format!("Destroyed {name}")),
            Ok(false) => {
                err("Error destroying units: unit does not exist");
                code = ExitCode::FAILURE;
            }
            Err(e) => {
                err(format!("Error destroying units: {e}"));
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

/// `fleetctl cat UNIT`.
async fn cmd_cat(g: &Global, args: &[String]) -> Outcome {
    let (_, units) = parse_flags(args, &[], &[])?;
    if units.len() != 1 {
        err("One unit file must be provided");
        return Ok(ExitCode::FAILURE);
    }
    let name = mangle(&units[0]);
    let reg = registry(g).await?;
    let jobs = match reg.jobs().await {
        Ok(j) => j,
        Err(e) => {
            err(format!("Error retrieving Unit {name}: {e}"));
            return Ok(ExitCode::FAILURE);
        }
    };
    match jobs
        .iter()
        .find(|j| j.name == name)
        .and_then(|j| j.unit.clone())
    {
        Some(t) => {
            let _ = std::io::stdout().lock().write_all(t.as_bytes());
            Ok(ExitCode::SUCCESS)
        }
        None => {
            err(format!("Unit {name} not found"));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Copies stdin to a unix socket and the socket to stdout (what `--tunnel` runs remotely).
async fn fd_forward(socket: &str) -> Result<ExitCode, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("Unable to connect to {socket}: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    let up = async {
        tokio::io::copy(&mut tokio::io::stdin(), &mut wr).await?;
        tokio::io::AsyncWriteExt::shutdown(&mut wr).await
    };
    let mut stdout = tokio::io::stdout();
    let down = tokio::io::copy(&mut rd, &mut stdout);
    let (a, b) = tokio::join!(up, down);
    a.and(b.map(|_| ()))
        .map(|()| ExitCode::SUCCESS)
        .map_err(|e| format!("Unable to forward to {socket}: {e}"))
}

fn help() {
    out(format!("NAME:\n\tfleetctl - fleetctl is a command-line interface to fleet, the cluster-wide CoreOS init system.\n\nUSAGE:\n\tfleetctl [global options] <command> [command options] [arguments...]\n\nVERSION:\n\t{VERSION}\n\nCOMMANDS:"));
    for (n, d) in COMMANDS {
        out(format!("\t{n}\t{d}"));
    }
    out("\nGlobal options can also be configured via upper-case environment variables prefixed by \"FLEETCTL_\"\nFor example, \"some-flag\" => \"FLEETCTL_SOME_FLAG\"\n\nRun \"fleetctl help <command>\" for more details on a specific command.");
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            err(format!("fleetctl: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(c) => c,
        Err(Failure::Usage(e)) => {
            err(e);
            err("Run 'fleetctl help' for usage.");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            err(e);
            ExitCode::FAILURE
        }
    }
}

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
//! The parts: [`cli`] reads the command line (Go's flag syntax, through clap: a struct per
//! flag set); `run` reads the global flags into [`Global`] and dispatches to the command's
//! function — [`listing`] (`list-*`, `cat`), [`scheduling`] (`submit`, `load`, `start`,
//! `stop`, `unload`, `restart`, `destroy`, and waiting for states), [`creation`] (fleet's
//! lazy creation of units from files and templates, `--replace`), [`remote`] (`status`,
//! `journal`, `ssh`); [`client`] is the two drivers, [`table`] Go's tabwriter.

mod cli;
mod client;
mod creation;
mod listing;
mod remote;
mod scheduling;
mod table;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use cli::on;
use client::{ApiClient, Client};
use fleet_model::JobState;

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

/// The client the global flags ask for.
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

/// The global flags (flag, else `FLEETCTL_*` variable) as fleet read them.
fn global(f: &cli::GlobalFlags) -> Result<Global, Failure> {
    // As fleet: an explicit endpoint on etcd's ports means the etcd driver unless a
    // driver is named; `--experimental-api=false` forces it.
    let etcd_port = f.endpoint.as_deref().is_some_and(|e| {
        let first = e.split(',').next().unwrap_or(e).trim_end_matches('/');
        first.ends_with(":2379") || first.ends_with(":4001")
    });
    let driver = f.driver.clone().unwrap_or_else(|| {
        let api_off = f.experimental_api == Some(false);
        if etcd_port || api_off { "etcd" } else { "api" }.into()
    });
    let endpoint = match driver.as_str() {
        // The etcd driver's endpoints are etcd's; fleetd's socket is no default for it.
        "etcd" => f
            .endpoint
            .clone()
            .filter(|e| !e.starts_with("unix://"))
            .unwrap_or_else(|| "http://127.0.0.1:2379".into()),
        _ => f
            .endpoint
            .clone()
            .unwrap_or_else(|| "unix:///var/run/fleet.sock".into()),
    };
    let tunnel = match f.tunnel.clone().filter(|t| !t.is_empty()) {
        None => None,
        // fleet's form, host[:port]; port 22 when omitted.
        Some(t) => Some(match t.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("invalid --tunnel {t:?}"))?,
            ),
            None => (t, 22),
        }),
    };
    let ssh = remote::SshOptions {
        user: f.ssh_username.clone().unwrap_or_else(|| "core".into()),
        timeout: f.ssh_timeout.unwrap_or(10.0),
        known_hosts: f.known_hosts_file.clone(),
        strict: f.strict_host_key_checking != Some(false),
        tunnel,
        bastion_args: std::sync::OnceLock::new(),
    };
    let file = |v: &Option<String>| {
        v.clone()
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
    };
    Ok(Global {
        ssh,
        tls: fleet_store::EtcdTls {
            ca: file(&f.ca_file),
            cert: file(&f.cert_file),
            key: file(&f.key_file),
        },
        driver,
        endpoint,
        prefix: f
            .etcd_key_prefix
            .clone()
            .unwrap_or_else(|| fleet_store::DEFAULT_PREFIX.into()),
        timeout: f.request_timeout.unwrap_or(3.0),
    })
}

async fn run(args: Vec<String>) -> Outcome {
    let flags: cli::GlobalFlags = cli::parse(&args)?;
    let g = global(&flags)?;
    if on(flags.version) {
        out(format!("fleetctl version {VERSION}"));
        return Ok(ExitCode::SUCCESS);
    }
    let Some((cmd, args)) = flags.rest.split_first() else {
        help();
        return Ok(ExitCode::SUCCESS);
    };
    if on(flags.help) || on(flags.h) {
        help();
        return Ok(ExitCode::SUCCESS);
    }
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
        "list-machines" => listing::list_machines(&g, cli::parse(args)?).await,
        "list-units" => listing::list_units(&g, cli::parse(args)?).await,
        "list-unit-files" => listing::list_unit_files(&g, cli::parse(args)?).await,
        "cat" => listing::cat(&g, cli::parse(args)?).await,
        "submit" => scheduling::submit(&g, cli::parse(args)?).await,
        "load" => scheduling::schedule(&g, cli::parse(args)?, JobState::Loaded).await,
        "start" => scheduling::schedule(&g, cli::parse(args)?, JobState::Launched).await,
        "unload" => scheduling::unschedule(&g, cli::parse(args)?, false).await,
        "stop" => scheduling::unschedule(&g, cli::parse(args)?, true).await,
        "restart" => scheduling::restart(&g, cli::parse(args)?).await,
        "destroy" => scheduling::destroy(&g, cli::parse(args)?).await,
        "status" => remote::status(&g, cli::parse(args)?).await,
        "journal" => remote::journal(&g, cli::parse(args)?).await,
        "ssh" => remote::ssh(&g, cli::parse(args)?).await,
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

//! `locksmithctl`: the cluster-wide reboot lock by hand, with locksmith's commands and
//! outputs. Global flags in Go's forms (`-endpoint`, `--endpoint`), also read from
//! `LOCKSMITHCTL_ENDPOINT` and `LOCKSMITHCTL_GROUP`.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use locksmith::etcd::LockClient;

#[derive(Debug, Parser)]
#[command(
    name = "locksmithctl",
    about = "Manage the cluster wide reboot lock.",
    disable_help_subcommand = true
)]
struct Cli {
    /// Print out debug information to stderr.
    #[arg(long)]
    debug: bool,
    /// etcd endpoint for locksmith. Specify multiple times to use multiple endpoints.
    #[arg(long, env = "LOCKSMITHCTL_ENDPOINT", value_delimiter = ',')]
    endpoint: Vec<String>,
    /// etcd key file authentication (not supported yet).
    #[arg(
        long = "etcd-keyfile",
        env = "LOCKSMITHCTL_ETCD_KEYFILE",
        default_value = ""
    )]
    etcd_keyfile: String,
    /// etcd cert file authentication (not supported yet).
    #[arg(
        long = "etcd-certfile",
        env = "LOCKSMITHCTL_ETCD_CERTFILE",
        default_value = ""
    )]
    etcd_certfile: String,
    /// etcd CA file authentication (not supported yet).
    #[arg(
        long = "etcd-cafile",
        env = "LOCKSMITHCTL_ETCD_CAFILE",
        default_value = ""
    )]
    etcd_cafile: String,
    /// locksmith group.
    #[arg(long, env = "LOCKSMITHCTL_GROUP", default_value = "")]
    group: String,
    /// Print the version and exit.
    #[arg(long)]
    version: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

const COMMANDS: &str = "\
COMMANDS:
	help		Show a list of commands or help for one command
	lock		Lock this machine or a given machine-id for reboot.
	reboot		Reboot honoring reboot locks.
	send-need-reboot	Send a 'need reboot' signal over dbus.
	set-max		Set the maximum number of lock holders
	status		Get the status of the cluster wide reboot lock.
	unlock		Unlock this machine or a given machine-id for reboot.
";

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn machine_id() -> Option<String> {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

async fn client(cli: &Cli) -> Result<LockClient, u8> {
    if !(cli.etcd_keyfile.is_empty() && cli.etcd_certfile.is_empty() && cli.etcd_cafile.is_empty())
    {
        eprintln!("Error initializing etcd client: TLS to etcd is not supported yet");
        return Err(1);
    }
    let endpoints = locksmith::config::endpoints(Some(&cli.endpoint.join(",")));
    LockClient::connect(&endpoints, &cli.group, Duration::from_secs(5))
        .await
        .map_err(|e| {
            eprintln!("Error initializing etcd client: {e}");
            1
        })
}

/// `lock` and `unlock`: the given machine ID, else this machine's.
fn id_arg(args: &[String]) -> Result<String, u8> {
    match args.first() {
        Some(id) => Ok(id.clone()),
        None => machine_id().ok_or_else(|| {
            eprintln!("Cannot read machine-id");
            1
        }),
    }
}

async fn run(cli: Cli) -> u8 {
    if cli.version {
        say(&format!(
            "locksmithctl version {}\n",
            env!("CARGO_PKG_VERSION")
        ));
        return 0;
    }
    let Some((cmd, args)) = cli.args.split_first() else {
        say(&format!("NAME:\n\tlocksmithctl - Manage the cluster wide reboot lock.\n\nUSAGE:\n\tlocksmithctl [global options] <command> [command options] [arguments...]\n\n{COMMANDS}"));
        return 0;
    };
    if cli.debug {
        eprintln!(
            "locksmithctl: endpoints {:?}, group {:?}",
            cli.endpoint, cli.group
        );
    }
    match cmd.as_str() {
        "help" => {
            say(&format!(
                "NAME:\n\tlocksmithctl - Manage the cluster wide reboot lock.\n\n{COMMANDS}"
            ));
            0
        }
        "status" => {
            let mut c = match client(&cli).await {
                Ok(c) => c,
                Err(code) => return code,
            };
            match c.get().await {
                Ok((sem, _)) => {
                    let mut text = format!("Available: {}\nMax: {}\n", sem.semaphore, sem.max);
                    if !sem.holders().is_empty() {
                        text.push_str("\nMACHINE ID\n");
                        for h in sem.holders() {
                            text.push_str(h);
                            text.push('\n');
                        }
                    }
                    say(&text);
                    0
                }
                Err(e) => {
                    eprintln!("Error setting value: {e}");
                    1
                }
            }
        }
        "lock" | "unlock" => {
            let id = match id_arg(args) {
                Ok(id) => id,
                Err(code) => return code,
            };
            let mut c = match client(&cli).await {
                Ok(c) => c,
                Err(code) => return code,
            };
            let (result, what) = if cmd == "lock" {
                (c.lock(&id).await, "locking")
            } else {
                (c.unlock(&id).await, "unlocking")
            };
            match result {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("Error {what}: {e}");
                    1
                }
            }
        }
        "set-max" => {
            let Some(n) = args.first() else {
                eprintln!("New maximum value must be set.");
                return 1;
            };
            let Ok(max) = n.parse::<i64>() else {
                eprintln!("Invalid maximum value: {n}");
                return 1;
            };
            let mut c = match client(&cli).await {
                Ok(c) => c,
                Err(code) => return code,
            };
            match c.set_max(max).await {
                Ok((old, sem)) => {
                    say(&format!("Old-Max: {old}\nMax: {}\n", sem.max));
                    0
                }
                Err(e) => {
                    eprintln!("Error setting value: {e}");
                    1
                }
            }
        }
        "reboot" => reboot(&cli).await,
        "send-need-reboot" => match send_need_reboot().await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("Error sending the signal: {e}");
                1
            }
        },
        other => {
            eprintln!(
                "locksmithctl: unknown subcommand: {other:?}\nRun 'locksmithctl help' for usage."
            );
            2
        }
    }
}

/// Takes this machine's slot, then asks logind to reboot (the slot is given back by
/// locksmithd after the boot).
async fn reboot(cli: &Cli) -> u8 {
    if !is_root() {
        eprintln!("Must be root to initiate reboot.");
        return 1;
    }
    let Some(id) = machine_id() else {
        eprintln!("Cannot read machine-id");
        return 1;
    };
    let mut c = match client(cli).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = c.lock(&id).await {
        eprintln!("Error locking: {e}");
        return 1;
    }
    match locksmith::logind_reboot().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error initializing login connection: {e}");
            1
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// A fake `StatusUpdate` saying a reboot is needed, as locksmith's tests send it.
async fn send_need_reboot() -> zbus::Result<()> {
    let conn = zbus::Connection::system().await?;
    conn.emit_signal(
        None::<()>,
        "/com/coreos/update1",
        "com.coreos.update1.Manager",
        "StatusUpdate",
        &(0i64, 0f64, "UPDATE_STATUS_UPDATED_NEED_REBOOT", "", 0i64),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(update_engine::gflags_args(std::env::args()));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("locksmithctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    ExitCode::from(runtime.block_on(run(cli)))
}

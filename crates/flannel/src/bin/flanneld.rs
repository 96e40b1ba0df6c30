//! flanneld: leases this machine's subnet of the overlay network from etcd, routes the
//! other machines' subnets, and writes `/run/flannel/subnet.env` for docker. Flags as
//! flannel 0.5's; each one not given is read from `FLANNELD_<FLAG>` (what cloud-config's
//! `coreos.flannel` writes to `/run/flannel/options.env`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "flanneld",
    version,
    about = "The overlay network: a subnet per machine, leased from etcd"
)]
struct Cli {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "FLANNELD_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379"
    )]
    etcd_endpoints: String,
    /// The key prefix of the network config and leases.
    #[arg(
        long,
        env = "FLANNELD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    etcd_prefix: String,
    /// TLS to etcd: refused (accepted as a flag so a CoreOS options file is read).
    #[arg(long, env = "FLANNELD_ETCD_KEYFILE", default_value = "", hide = true)]
    etcd_keyfile: String,
    #[arg(long, env = "FLANNELD_ETCD_CERTFILE", default_value = "", hide = true)]
    etcd_certfile: String,
    #[arg(long, env = "FLANNELD_ETCD_CAFILE", default_value = "", hide = true)]
    etcd_cafile: String,
    /// The interface (name or address) to send over; empty: the default route's.
    #[arg(long, env = "FLANNELD_IFACE", default_value = "")]
    iface: String,
    /// The address other machines reach this one at; empty: the interface's.
    #[arg(long, env = "FLANNELD_PUBLIC_IP", default_value = "")]
    public_ip: String,
    /// Where to write the subnet's settings for docker.
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    subnet_file: PathBuf,
    /// Masquerade traffic leaving the overlay.
    #[arg(long, env = "FLANNELD_IP_MASQ", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    ip_masq: String,
    /// The lease's TTL in seconds (flannel: 86400).
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_TTL", default_value_t = 86400)]
    subnet_lease_ttl: u64,
    /// Log verbosity (flannel's glog -v; 1 or more logs debug).
    #[arg(short = 'v', default_value_t = 0)]
    verbosity: u8,
}

/// Go's strconv.ParseBool, as flannel reads boolean flags.
fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let level = if cli.verbosity > 0 { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRITE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flanneld: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if !(cli.etcd_keyfile.is_empty() && cli.etcd_certfile.is_empty() && cli.etcd_cafile.is_empty())
    {
        anyhow::bail!("TLS to etcd (--etcd-keyfile, --etcd-certfile, --etcd-cafile) is not supported by this flanneld");
    }
    let ip_masq = go_bool(&cli.ip_masq)
        .with_context(|| format!("--ip-masq={:?} is not a boolean", cli.ip_masq))?;
    let public_ip =
        if cli.public_ip.is_empty() {
            None
        } else {
            Some(cli.public_ip.parse::<Ipv4Addr>().with_context(|| {
                format!("--public-ip={:?} is not an IPv4 address", cli.public_ip)
            })?)
        };
    if cli.subnet_lease_ttl < 10 {
        anyhow::bail!(
            "--subnet-lease-ttl={} is under 10 seconds",
            cli.subnet_lease_ttl
        );
    }
    let opts = flannel::daemon::Options {
        etcd_endpoints: cli.etcd_endpoints,
        etcd_prefix: cli.etcd_prefix,
        iface: cli.iface,
        public_ip,
        subnet_file: cli.subnet_file,
        ip_masq,
        lease_ttl: Duration::from_secs(cli.subnet_lease_ttl),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(flannel::daemon::run(opts))?;
    Ok(())
}

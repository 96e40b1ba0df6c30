//! `coreos-cloudinit`: validates and applies CoreOS user-data, with coreos-cloudinit's flags
//! (Go style: `-from-file PATH`, `--from-file=PATH` and `-validate=true` all work).
//!
//! Beyond the original: `-root DIR` applies the whole config under DIR (addresses read from
//! `DIR/etc/environment`), records user and systemd actions instead of performing them and
//! prints the ordered plan; a config with validation errors is refused before anything is
//! written; `-datasource-timeout` bounds the wait for a datasource (default 300 s).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use cloud_config::apply::{self, Context, Host};
use cloud_config::datasource::{self, Datasource, HttpPolicy};
use cloud_config::host::{current_hostname, RootHost, SystemHost};
use cloud_config::userdata::{self, Kind};
use cloud_config::{substitute, validate, Addresses, CloudConfig};
use systemd_client::{DbusSystemd, JobKind, Recorder, Systemd};

const VERSION: &str = env!("CARGO_PKG_VERSION");

const OEMS: &[&str] = &[
    "digitalocean",
    "ec2-compat",
    "gce",
    "rackspace-onmetal",
    "azure",
    "cloudsigma",
    "packet",
    "vmware",
];

#[derive(Debug, Parser)]
#[command(
    name = "coreos-cloudinit",
    disable_version_flag = true,
    about = "Validate and apply CoreOS cloud-config user-data"
)]
struct Flags {
    /// Read user-data from this file.
    #[arg(long, value_name = "PATH")]
    from_file: Option<PathBuf>,
    /// Download user-data from this URL.
    #[arg(long, value_name = "URL")]
    from_url: Option<String>,
    /// Read user-data and metadata from an OpenStack-style config drive mounted here.
    #[arg(long, value_name = "DIR")]
    from_configdrive: Option<PathBuf>,
    /// Read user-data and metadata from an EC2 metadata service rooted at this URL.
    #[arg(long, value_name = "URL")]
    from_ec2_metadata: Option<String>,
    /// Deprecated: -from-ec2-metadata http://169.254.169.254/
    #[arg(long)]
    from_metadata_service: bool,
    /// Read user-data and metadata from a DigitalOcean metadata service at this URL.
    #[arg(long, value_name = "URL")]
    from_digitalocean_metadata: Option<String>,
    /// Read user-data and metadata from Google Compute Engine's metadata service at this URL.
    #[arg(long, value_name = "URL")]
    from_gce_metadata: Option<String>,
    /// Download user-data from the cloud-config-url= on the kernel command line.
    #[arg(long)]
    from_proc_cmdline: bool,
    /// Not supported by Ferrite.
    #[arg(long, hide = true)]
    from_cloudsigma_metadata: bool,
    /// Not supported by Ferrite.
    #[arg(long, hide = true, value_name = "URL")]
    from_packet_metadata: Option<String>,
    /// Not supported by Ferrite.
    #[arg(long, hide = true, value_name = "DIR")]
    from_waagent: Option<String>,
    /// Not supported by Ferrite.
    #[arg(long, hide = true)]
    from_vmware_guestinfo: bool,
    /// A preset of datasource flags for a provider.
    #[arg(long, value_name = "NAME")]
    oem: Option<String>,
    /// Not supported by Ferrite (provider network configuration).
    #[arg(long, value_name = "FMT")]
    convert_netconf: Option<String>,
    /// Where scripts are kept.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/coreos-cloudinit")]
    workspace: String,
    /// The name keys are registered under with update-ssh-keys.
    #[arg(long, value_name = "NAME", default_value = "coreos-cloudinit")]
    ssh_key_name: String,
    /// Validate the user-data and exit: status 1 if anything was reported.
    #[arg(long)]
    validate: bool,
    /// Exit 0 even if user-data could not be fetched or parsed.
    #[arg(long)]
    ignore_failure: bool,
    /// Print the version and exit.
    #[arg(long)]
    version: bool,
    /// Apply under this root directory; user and systemd actions are recorded, not performed,
    /// and the plan is printed.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// The kernel command line to read for -from-proc-cmdline.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/proc/cmdline",
        hide = true
    )]
    proc_cmdline: PathBuf,
    /// How long to wait for a datasource, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    datasource_timeout: u64,
}

const BOOL_FLAGS: &[&str] = &[
    "from-metadata-service",
    "from-proc-cmdline",
    "from-cloudsigma-metadata",
    "from-vmware-guestinfo",
    "validate",
    "ignore-failure",
    "version",
];

/// Go's flag syntax to clap's: `-name` → `--name`, underscores to dashes in names,
/// `-bool=true` → `--bool`, `-bool=false` → nothing.
fn go_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in args.into_iter().enumerate() {
        if i == 0
            || !a.starts_with('-')
            || a == "-"
            || a == "--"
            || a.starts_with("-h") && a.len() == 2
        {
            out.push(a);
            continue;
        }
        let body = a.trim_start_matches('-');
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.replace('_', "-"), Some(v.to_string())),
            None => (body.replace('_', "-"), None),
        };
        if BOOL_FLAGS.contains(&name.as_str()) {
            match value.as_deref() {
                Some("false" | "0" | "f" | "F" | "FALSE" | "False") => {}
                _ => out.push(format!("--{name}")),
            }
            continue;
        }
        match value {
            Some(v) => out.push(format!("--{name}={v}")),
            None => out.push(format!("--{name}")),
        }
    }
    out
}

/// A systemd connection made on first use, so configs that need no systemd call work
/// without a bus.
#[derive(Default)]
struct LazyDbus(Option<DbusSystemd>);

impl LazyDbus {
    fn get(&mut self) -> Result<&mut DbusSystemd, systemd_client::Error> {
        match &mut self.0 {
            Some(d) => Ok(d),
            slot @ None => Ok(slot.insert(DbusSystemd::system()?)),
        }
    }
}

impl Systemd for LazyDbus {
    fn enable_unit_files(
        &mut self,
        n: &[String],
        r: bool,
        f: bool,
    ) -> Result<(), systemd_client::Error> {
        self.get()?.enable_unit_files(n, r, f)
    }
    fn reload(&mut self) -> Result<(), systemd_client::Error> {
        self.get()?.reload()
    }
    fn run_job(&mut self, k: JobKind, u: &str, m: &str) -> Result<String, systemd_client::Error> {
        self.get()?.run_job(k, u, m)
    }
    fn start_transient_service(
        &mut self,
        n: &str,
        d: &str,
        a: &[String],
    ) -> Result<String, systemd_client::Error> {
        self.get()?.start_transient_service(n, d, a)
    }
}

fn datasources(flags: &Flags) -> Result<Vec<Datasource>> {
    let unsupported = [
        (flags.from_cloudsigma_metadata, "-from-cloudsigma-metadata"),
        (
            flags.from_packet_metadata.is_some(),
            "-from-packet-metadata",
        ),
        (flags.from_waagent.is_some(), "-from-waagent"),
        (flags.from_vmware_guestinfo, "-from-vmware-guestinfo"),
    ];
    if let Some((_, name)) = unsupported.iter().find(|(set, _)| *set) {
        anyhow::bail!("{name} is not supported by this coreos-cloudinit");
    }
    let mut out = Vec::new();
    if let Some(p) = &flags.from_file {
        out.push(Datasource::File(p.clone()));
    }
    if let Some(u) = &flags.from_url {
        out.push(Datasource::Url(u.clone()));
    }
    if let Some(d) = &flags.from_configdrive {
        out.push(Datasource::ConfigDrive(d.clone()));
    }
    if let Some(u) = &flags.from_ec2_metadata {
        out.push(Datasource::Ec2(u.clone()));
    }
    if flags.from_metadata_service {
        out.push(Datasource::Ec2("http://169.254.169.254/".into()));
    }
    if let Some(u) = &flags.from_digitalocean_metadata {
        out.push(Datasource::DigitalOcean(u.clone()));
    }
    if let Some(u) = &flags.from_gce_metadata {
        out.push(Datasource::Gce(u.clone()));
    }
    if flags.from_proc_cmdline {
        out.push(Datasource::ProcCmdline(flags.proc_cmdline.clone()));
    }
    match flags.oem.as_deref() {
        None => {}
        Some("ec2-compat") => {
            out.push(Datasource::Ec2("http://169.254.169.254/".into()));
            out.push(Datasource::ConfigDrive("/media/configdrive".into()));
        }
        Some("gce") => out.push(Datasource::Gce("http://metadata.google.internal/".into())),
        Some("digitalocean") => {
            anyhow::bail!("-oem digitalocean needs -convert-netconf, which is not supported")
        }
        Some(other) => anyhow::bail!("-oem {other} is not supported by this coreos-cloudinit"),
    }
    Ok(out)
}

/// Addresses: metadata first, then `ROOT/etc/environment`, then this process's environment.
fn addresses(meta: &Addresses, root: &Path) -> Addresses {
    let mut a = meta.clone();
    let env_file = std::fs::read_to_string(root.join("etc/environment")).unwrap_or_default();
    a.fill_from(|name| {
        env_file.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == name && !v.trim().is_empty())
                .then(|| v.trim().trim_matches('"').to_string())
        })
    });
    a.fill_from(|name| std::env::var(name).ok().filter(|v| !v.is_empty()));
    a
}

fn random_name() -> String {
    let mut bytes = [0u8; 8];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !ok {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = (nanos as u64 ^ u64::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_lines(lines: &[String]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for l in lines {
        writeln!(out, "{l}")?;
    }
    Ok(())
}

/// The config (or script) in user-data after substitution; `None` for an Ignition config,
/// which is not ours to apply. A format or YAML error is logged and sets `failure`; the
/// apply goes on with an empty config, as the original did.
fn decode(data: &[u8], failure: &mut bool) -> Option<(CloudConfig, Option<Vec<u8>>)> {
    Some(match userdata::classify(data) {
        Kind::Ignition => return None,
        Kind::Empty => (CloudConfig::default(), None),
        Kind::Script => (CloudConfig::default(), Some(data.to_vec())),
        Kind::Unknown => {
            tracing::error!(
                "Failed to parse user-data: Unrecognized user-data format. Continuing..."
            );
            *failure = true;
            (CloudConfig::default(), None)
        }
        Kind::CloudConfig => {
            let body = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
            match cloud_config::yaml::parse(body) {
                Ok(root_node) => (CloudConfig::from_node(root_node.as_ref()), None),
                Err(e) => {
                    tracing::error!("Failed to parse user-data: {e}. Continuing...");
                    *failure = true;
                    (CloudConfig::default(), None)
                }
            }
        }
    })
}

/// Carries the plan out: on the system, or under `-root` (user and systemd actions recorded).
fn execute(plan: &apply::Plan, ctx: &Context, dry_run: bool) -> Result<Vec<String>> {
    let mut root_host;
    let mut system_host;
    let host: &mut dyn Host = if dry_run {
        root_host = RootHost::new(&ctx.root);
        &mut root_host
    } else {
        system_host = SystemHost;
        &mut system_host
    };
    let mut recorder;
    let mut dbus;
    let systemd: &mut dyn Systemd = if dry_run {
        recorder = Recorder::default();
        &mut recorder
    } else {
        dbus = LazyDbus::default();
        &mut dbus
    };
    apply::execute(plan, ctx, host, systemd).context("Failed to apply cloud-config")
}

fn run(flags: Flags) -> Result<ExitCode> {
    if flags.version {
        print_lines(&[format!("coreos-cloudinit {VERSION}")])?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(oem) = &flags.oem {
        if !OEMS.contains(&oem.as_str()) {
            eprintln!("Invalid option to -oem: {oem:?}. Supported options: {OEMS:?}");
            return Ok(ExitCode::from(2));
        }
    }
    if flags.convert_netconf.is_some() {
        anyhow::bail!("-convert-netconf is not supported by this coreos-cloudinit");
    }
    let sources = datasources(&flags)?;
    if sources.is_empty() {
        eprintln!("Provide at least one of --from-file, --from-configdrive, --from-ec2-metadata, --from-gce-metadata, --from-digitalocean-metadata, --from-url or --from-proc-cmdline");
        return Ok(ExitCode::from(2));
    }
    let http = HttpPolicy::default();
    let limit = Duration::from_secs(flags.datasource_timeout);
    let Some(ds) = datasource::wait_for_any(&sources, &http, limit) else {
        tracing::error!("No datasources available in time");
        return Ok(ExitCode::FAILURE);
    };
    tracing::info!("Fetching user-data from datasource of type {:?}", ds.name());
    let mut failure = false;
    let raw = match ds.fetch_userdata(&http) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("Failed fetching user-data from datasource: {e}. Continuing...");
            failure = true;
            Vec::new()
        }
    };
    // Compressed user-data that does not decompress (truncated, corrupt, over the cap) is
    // an error of the user-data: validation reports it and nothing is applied (applying an
    // empty config in its place would pass for success).
    let data = userdata::maybe_gunzip(&raw).unwrap_or(raw);

    let report = validate(&data);
    if flags.validate {
        let lines: Vec<String> = report.entries().iter().map(ToString::to_string).collect();
        print_lines(&lines)?;
        return Ok(if report.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    for e in report.entries() {
        tracing::warn!("{e}");
    }
    if report.has_errors() {
        tracing::error!("Refusing to apply user-data with validation errors; nothing was changed");
        return Ok(ExitCode::FAILURE);
    }

    let meta = ds
        .fetch_metadata(&http)
        .context("Failed fetching meta-data from datasource")?;
    let root = flags.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let mut ctx = Context::new(&root);
    ctx.addresses = addresses(&meta.addresses, &root);
    ctx.ssh_key_name = flags.ssh_key_name.clone();
    ctx.metadata_keys = meta.ssh_keys.clone();
    ctx.current_hostname = current_hostname(&root);
    ctx.workspace = flags.workspace.clone();

    let data = match std::str::from_utf8(&data) {
        Ok(text) => substitute(text, &ctx.addresses).into_bytes(),
        Err(_) => data,
    };
    let Some((mut config, script)) = decode(&data, &mut failure) else {
        tracing::info!("Detected an Ignition config. Exiting...");
        return Ok(ExitCode::SUCCESS);
    };
    if config.hostname.is_empty() {
        config.hostname = meta.hostname.clone();
    } else if !meta.hostname.is_empty() {
        tracing::info!(
            "Warning: user-data hostname ({}) overrides metadata hostname ({})",
            config.hostname,
            meta.hostname
        );
    }

    let mut plan = apply::plan(&config, &ctx).context("Failed to apply cloud-config")?;
    if let Some(script) = &script {
        plan.steps
            .extend(apply::plan_script(script, &ctx, &random_name()).steps);
    }
    let dry_run = flags.root.is_some();
    let trace = execute(&plan, &ctx, dry_run)?;
    if dry_run {
        print_lines(&trace)?;
    }
    if failure && !flags.ignore_failure {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COREOS_CLOUDINIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let flags = match Flags::try_parse_from(go_args(std::env::args())) {
        Ok(f) => f,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    match run(flags) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "coreos-cloudinit: {}",
                host_command::error_chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_flags() {
        let a = go_args(
            [
                "coreos-cloudinit",
                "-from-file",
                "/x",
                "--validate=true",
                "-ignore_failure=false",
                "-root=/tmp/r",
            ]
            .map(String::from),
        );
        assert_eq!(
            a,
            vec![
                "coreos-cloudinit",
                "--from-file",
                "/x",
                "--validate",
                "--root=/tmp/r"
            ]
        );
    }
}

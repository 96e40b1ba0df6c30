//! `ferrite`: what `vagrant` and coreos-vagrant were for CoreOS.
//!
//! ```text
//! ferrite image build [--channel C] [--format raw|qcow2 [-o FILE]]
//! ferrite up [--cluster NAME] [--instances N] [--user-data FILE] [--channel C] [--memory MB]
//! ferrite ssh [--cluster NAME] MACHINE [-- CMD ...]
//! ferrite status [--cluster NAME]
//! ferrite halt [--cluster NAME] [--force] MACHINE
//! ferrite reload [--cluster NAME] MACHINE
//! ferrite destroy [--cluster NAME]
//! ferrite release build --version X.Y.Z [--channel C]
//! ferrite release publish X.Y.Z --channel C [--cluster NAME]
//! ferrite update-server [--cluster NAME] [--listen ADDR] [--base-url URL]
//! ```
//!
//! Settings come from flags, else from a config file (`--config FILE`, `$FERRITE_CONFIG`, or
//! `./ferrite.toml`) with coreos-vagrant's names (`num_instances`, `instance_name_prefix`,
//! `update_channel`, `vm_memory`, `user_data`, and Ferrite's `driver`), else
//! coreos-vagrant's defaults. The default user-data is `./user-data` if there is one, else
//! the chapter's.

mod release;

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use machine_image::{BuildSpec, Channel};
use machine_launcher::{ClusterState, Paths, RealHost, Settings, UpOptions};

/// The chapter's user-data (CoreOS Essentials, chapter 1), the default.
const CHAPTER_USER_DATA: &str = include_str!("../../../examples/user-data");

#[derive(Debug, Parser)]
#[command(
    name = "ferrite",
    version,
    about = "Build Ferrite images and run local clusters of Ferrite machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Args)]
struct ClusterArg {
    /// The cluster (several can exist side by side).
    #[arg(long, default_value = "default")]
    cluster: String,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build (or find cached) the machine image.
    Image {
        #[command(subcommand)]
        command: ImageCmd,
    },
    /// Create and boot the cluster's machines.
    Up {
        #[command(flatten)]
        cluster: ClusterArg,
        /// Number of machines.
        #[arg(long)]
        instances: Option<u32>,
        /// The cloud-config (or script) every machine gets.
        #[arg(long)]
        user_data: Option<PathBuf>,
        /// Update channel: alpha, beta or stable.
        #[arg(long)]
        channel: Option<String>,
        /// Memory per machine, MiB.
        #[arg(long)]
        memory: Option<u64>,
        /// Machine name prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// How new machines run: nspawn (containers on this kernel) or qemu (virtual
        /// machines booting the image's own kernel).
        #[arg(long)]
        driver: Option<String>,
        /// A config file with coreos-vagrant's settings.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// A login shell as core on a machine, or one command.
    Ssh {
        #[command(flatten)]
        cluster: ClusterArg,
        /// The machine, e.g. core-01.
        machine: String,
        /// A command line to run instead of a shell: the words are joined with spaces and
        /// run by core's login shell, as `ssh host CMD` and `vagrant ssh -c CMD` do.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// The cluster's machines and their state.
    Status {
        #[command(flatten)]
        cluster: ClusterArg,
    },
    /// Stop a machine (gracefully, or with --force at once).
    Halt {
        #[command(flatten)]
        cluster: ClusterArg,
        /// Cut the power.
        #[arg(long)]
        force: bool,
        /// The machine.
        machine: String,
    },
    /// Restart a machine.
    Reload {
        #[command(flatten)]
        cluster: ClusterArg,
        /// The machine.
        machine: String,
    },
    /// Remove the cluster and everything it used.
    Destroy {
        #[command(flatten)]
        cluster: ClusterArg,
    },
    /// Build a new Ferrite version, or offer one on a channel.
    Release {
        #[command(subcommand)]
        command: ReleaseCmd,
    },
    /// Run a cluster's update service (Omaha) in the foreground.
    UpdateServer {
        #[command(flatten)]
        cluster: ClusterArg,
        /// The address to listen on (default: the cluster's gateway, port 8098, in the
        /// cluster's network, where its machines reach it).
        #[arg(long)]
        listen: Option<String>,
        /// The URL machines download payloads from (default: http://<listen>).
        #[arg(long)]
        base_url: Option<String>,
    },
    /// Internal: a QEMU machine's power and firmware (boots it as often as it reboots).
    #[command(name = "__qemu", hide = true)]
    Qemu {
        /// The machine (also marks the process as its own).
        #[arg(long)]
        name: String,
        /// Its `qemu.json`.
        spec: PathBuf,
    },
    /// Internal: a container machine's power and bootloader (boots it as often as it
    /// reboots).
    #[command(name = "__nspawn", hide = true)]
    Nspawn {
        /// The machine (also marks the process as its own).
        #[arg(long)]
        machine: String,
        /// Its `nspawn.json`.
        spec: PathBuf,
    },
    /// Internal: push busybox:latest (from the host's busybox-static) to a registry.
    #[command(name = "__registry-seed", hide = true)]
    RegistrySeed {
        /// The registry, host:port.
        #[arg(long)]
        registry: String,
    },
    /// Internal: push a `docker save` archive to a registry as NAME:TAG.
    #[command(name = "__registry-push", hide = true)]
    RegistryPush {
        #[arg(long)]
        registry: String,
        #[arg(long)]
        tag: String,
        archive: PathBuf,
    },
    /// Internal: join the machine's cgroups and exec systemd-nspawn.
    #[command(name = "__boot", hide = true)]
    Boot {
        #[arg(long = "cgroup")]
        cgroups: Vec<PathBuf>,
        #[arg(last = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCmd {
    /// Build the image (cached by a hash of its inputs); with --format, write a copy of it
    /// for real machines and VMs.
    Build {
        /// Update channel: alpha, beta or stable.
        #[arg(long, default_value = "alpha")]
        channel: String,
        /// Write the image out as `raw` (a sparse disk image) or `qcow2`.
        #[arg(long, value_parser = ["raw", "qcow2"])]
        format: Option<String>,
        /// Where to write it (default: ferrite_production_image.bin for raw,
        /// ferrite_production_qemu_image.img for qcow2, as CoreOS named them).
        #[arg(long, short, requires = "format")]
        output: Option<PathBuf>,
    },
    /// Push a container image (a `docker save` archive) to the cluster's registry, where
    /// every machine pulls it as ferrite-registry:5000/NAME:TAG.
    Push {
        /// The archive (`docker save -o FILE IMAGE`).
        archive: PathBuf,
        /// NAME:TAG in the registry (default: the archive's first tag).
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        cluster: ClusterArg,
    },
}

#[derive(Debug, Subcommand)]
enum ReleaseCmd {
    /// Build version X.Y.Z: its image and the signed payload of its /usr.
    Build {
        /// The version, X.Y.Z.
        #[arg(long)]
        version: String,
        /// Update channel: alpha, beta or stable.
        #[arg(long, default_value = "alpha")]
        channel: String,
        /// Bake in a boot check that always fails: a release whose health gate fails, to
        /// rehearse a rollback with.
        #[arg(long)]
        failing_health_check: bool,
    },
    /// Offer a built release on a channel in a cluster's update service.
    Publish {
        /// The version.
        version: String,
        /// The channel: alpha, beta or stable.
        #[arg(long)]
        channel: String,
        #[command(flatten)]
        cluster: ClusterArg,
    },
}

/// coreos-vagrant's `config.rb` settings, as a TOML file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    num_instances: Option<u32>,
    instance_name_prefix: Option<String>,
    update_channel: Option<String>,
    vm_memory: Option<u64>,
    user_data: Option<PathBuf>,
    driver: Option<String>,
}

fn load_config(explicit: Option<&Path>) -> Result<(ConfigFile, PathBuf)> {
    let path = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("FERRITE_CONFIG").map(PathBuf::from))
        .or_else(|| Some(PathBuf::from("ferrite.toml")).filter(|p| p.is_file()));
    let Some(path) = path else {
        return Ok((ConfigFile::default(), PathBuf::from(".")));
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: ConfigFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok((cfg, base))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("FERRITE_CACHE_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/ferrite"), PathBuf::from)
}

/// The key release payloads are signed with, kept beside the image cache it belongs to (the
/// images built there carry its public half): made the first time.
fn payload_key() -> Result<update_payload::SigningKey> {
    let path = cache_dir().join("keys/update-payload-key.pem");
    update_payload::load_or_create_key(&path)
        .with_context(|| format!("the release signing key {}", path.display()))
}

fn build_image(channel: Channel) -> Result<machine_image::BuiltImage> {
    build_image_version(channel, env!("CARGO_PKG_VERSION"), false)
}

/// The image of release `version` (cached like any other).
fn build_image_version(
    channel: Channel,
    version: &str,
    failing_check: bool,
) -> Result<machine_image::BuiltImage> {
    let exe = std::env::current_exe().context("finding the ferrite executable")?;
    let dir = exe
        .parent()
        .context("the ferrite executable has no directory")?;
    let spec = BuildSpec {
        cache_dir: cache_dir(),
        channel,
        version: version.to_string(),
        binaries: [
            "coreos-cloudinit",
            "fleetd",
            "fleetctl",
            "cgpt",
            "rootdev",
            "ferrite-boot-select",
            "ferrite-first-boot",
            "update_engine",
            "update_engine_client",
            "ferrite-boot-health",
            "locksmithd",
            "locksmithctl",
            "flanneld",
            "mk-docker-opts",
            "rkt",
        ]
        .iter()
        .map(|b| (b.to_string(), dir.join(b)))
        .collect(),
        mirror: std::env::var("FERRITE_DEBIAN_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian".into()),
        payload_key: update_payload::public_pem(&payload_key()?)?,
        failing_check,
    };
    Ok(machine_image::build(&spec)?)
}

/// Writes the cached image out as `format` (`raw`: a sparse copy; `qcow2`: `qemu-img
/// convert`) at `output` or CoreOS's file name, through a temporary file renamed into place.
fn write_image(image: &Path, format: &str, output: Option<PathBuf>) -> Result<PathBuf> {
    let out_path = output.unwrap_or_else(|| {
        PathBuf::from(if format == "qcow2" {
            "ferrite_production_qemu_image.img"
        } else {
            "ferrite_production_image.bin"
        })
    });
    let name = out_path
        .file_name()
        .with_context(|| format!("{}: not a file name", out_path.display()))?;
    let tmp = out_path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let mut cmd = if format == "qcow2" {
        let mut c = host_command::command("qemu-img");
        c.args(["convert", "-f", "raw", "-O", "qcow2"]);
        c
    } else {
        let mut c = host_command::command("cp");
        c.arg("--sparse=always");
        c
    };
    cmd.arg(image).arg(&tmp);
    if let Err(e) = host_command::run(&mut cmd) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", out_path.display()));
    }
    std::fs::rename(&tmp, &out_path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out_path.display()))?;
    Ok(out_path)
}

fn parse_channel(s: &str) -> Result<Channel> {
    Channel::parse(s).with_context(|| format!("unknown channel {s:?} (alpha, beta or stable)"))
}

fn out(line: impl AsRef<str>) -> Result<()> {
    writeln!(std::io::stdout().lock(), "{}", line.as_ref())?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn cmd_up(
    cluster: String,
    instances: Option<u32>,
    user_data: Option<PathBuf>,
    channel: Option<String>,
    memory: Option<u64>,
    prefix: Option<String>,
    driver: Option<String>,
    config: Option<PathBuf>,
) -> Result<ExitCode> {
    let start = Instant::now();
    let (cfg, base) = load_config(config.as_deref())?;
    let d = Settings::default();
    let settings = Settings {
        instances: instances.or(cfg.num_instances).unwrap_or(d.instances),
        prefix: prefix.or(cfg.instance_name_prefix).unwrap_or(d.prefix),
        channel: channel.or(cfg.update_channel).unwrap_or(d.channel),
        memory_mb: memory.or(cfg.vm_memory).unwrap_or(d.memory_mb),
        driver: match driver.or(cfg.driver) {
            Some(d) => d.parse()?,
            None => d.driver,
        },
    };
    let channel = parse_channel(&settings.channel)?;
    let paths = Paths::from_env();
    // An existing cluster keeps the user-data it was made with unless one is given (the
    // `vagrant up` habit of bringing a halted machine back must not change its config).
    let kept = paths.cluster_dir(&cluster).join("user-data");
    let exists = paths.cluster_dir(&cluster).join("cluster.json").is_file();
    let user_data = match user_data.or_else(|| cfg.user_data.map(|p| base.join(p))) {
        Some(p) => p,
        None if exists && kept.is_file() => kept,
        None if Path::new("user-data").is_file() => PathBuf::from("user-data"),
        None => {
            let p = paths.state.join("chapter-user-data");
            std::fs::create_dir_all(&paths.state)
                .with_context(|| format!("creating {}", paths.state.display()))?;
            atomic_file::write(
                &p,
                CHAPTER_USER_DATA.as_bytes(),
                &atomic_file::Options::mode(0o644),
            )?;
            p
        }
    };
    // The host's limits for this many machines, raised (or refused) before anything is made.
    if settings.driver == machine_launcher::Driver::Nspawn {
        for r in machine_launcher::limits::ensure(&RealHost, u64::from(settings.instances))? {
            eprintln!("ferrite: {r} for {} machines", settings.instances);
        }
    }
    let image = build_image(channel)?;
    tracing::info!(image = %image.path.display(), cached = image.cached, seconds = image.seconds, "image ready");
    let exe = std::env::current_exe().context("finding the ferrite executable")?;
    let instances_for_timeout = settings.instances;
    let state = machine_launcher::up(
        &RealHost,
        &paths,
        &UpOptions {
            cluster,
            settings,
            user_data,
            image: image.path,
            ferrite_exe: exe,
            // Machines boot at once and share the host's CPUs: a bigger cluster takes longer.
            boot_timeout: Duration::from_secs(120 + u64::from(instances_for_timeout)),
            progress: Some(boot_progress),
        },
    )?;
    for m in &state.machines {
        out(format!("{}: running at {}", m.name, m.ip))?;
    }
    out(format!(
        "cluster {:?} up in {:.1} s",
        state.name,
        start.elapsed().as_secs_f64()
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// `up`'s progress on standard error, a line per machine booted.
fn boot_progress(p: &machine_launcher::boot::Progress) {
    eprintln!(
        "booted {}/{} (slowest so far: {}, {:.1} s)",
        p.booted, p.total, p.slowest, p.slowest_seconds
    );
}

/// `ferrite image build`: the image (cached), written out as `format` if asked.
fn image_build(channel: &str, format: Option<&str>, output: Option<PathBuf>) -> Result<ExitCode> {
    let image = build_image(parse_channel(channel)?)?;
    if let Some(format) = format {
        let out_path = write_image(&image.path, format, output)?;
        out(format!("{} ({format})", out_path.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let size = std::fs::metadata(&image.path).map(|m| m.len()).unwrap_or(0);
    out(format!(
        "{} ({} MiB, key {}, {} in {:.1} s)",
        image.path.display(),
        size / (1024 * 1024),
        image.key,
        if image.cached { "cached" } else { "built" },
        image.seconds
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// `__registry-seed`: busybox:latest, built from the host's busybox-static.
fn registry_seed(registry: &str) -> Result<ExitCode> {
    container_image::push::wait_ready(registry, Duration::from_secs(30))?;
    let image = container_image::busybox::image(Path::new("/bin/busybox"))
        .context("building busybox:latest (busybox-static)")?;
    container_image::push::push(&image, registry, "busybox", "latest")?;
    Ok(ExitCode::SUCCESS)
}

/// `__registry-push`: an archive, checked whole, then pushed as `tag`.
fn registry_push(registry: &str, tag: &str, archive: &Path) -> Result<ExitCode> {
    let saved = container_image::archive::read(archive)?;
    let (repo, tag) = split_tag(tag)?;
    container_image::push::wait_ready(registry, Duration::from_secs(30))?;
    let digest = container_image::push::push(&saved.image, registry, repo, tag)?;
    out(format!("{repo}:{tag}: digest: {digest}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `NAME:TAG` split at its last colon (a registry host's port is not a tag); `latest` when
/// there is no tag.
fn split_tag(name: &str) -> Result<(&str, &str)> {
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (name, "latest"),
    };
    let ok_repo = !repo.is_empty()
        && repo.split('/').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    let ok_tag = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok_repo || !ok_tag {
        bail!("{name:?} is not an image name NAME[:TAG] (lowercase name parts; a tag of letters, digits, '.', '_', '-')");
    }
    Ok((repo, tag))
}

/// `ferrite image push`: the archive checked here, then pushed from inside the cluster's
/// network (where the registry listens).
fn image_push(archive: &Path, tag: Option<&str>, cluster: &str) -> Result<ExitCode> {
    let saved = container_image::archive::read(archive)?;
    let name = match tag {
        Some(t) => t.to_string(),
        None => saved.tags.first().cloned().with_context(|| {
            format!(
                "{} has no tag: give one with --tag NAME:TAG",
                archive.display()
            )
        })?,
    };
    // A name saved from a registry (`ferrite-registry:5000/x:1`) is pushed as `x:1`.
    let name = name
        .strip_prefix(&format!(
            "{}:{}/",
            machine_launcher::registry::HOST_NAME,
            machine_launcher::registry::PORT
        ))
        .map_or(name.clone(), str::to_string);
    split_tag(&name)?;
    let paths = Paths::from_env();
    let state = ClusterState::load(&paths, cluster)?;
    let exe = std::env::current_exe().context("finding the ferrite executable")?;
    let archive =
        std::fs::canonicalize(archive).with_context(|| format!("{}", archive.display()))?;
    let status = host_command::command("ip")
        .args(["netns", "exec", &state.switch_ns()])
        .arg(exe)
        .args([
            "__registry-push",
            "--registry",
            &machine_launcher::registry::address(&state),
            "--tag",
            &name,
        ])
        .arg(&archive)
        .status()
        .context("running the push in the cluster's network")?;
    if !status.success() {
        bail!(
            "pushing {} to cluster {cluster:?}'s registry failed",
            archive.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_ssh(cluster: &str, machine: &str, command: &[String]) -> Result<ExitCode> {
    let paths = Paths::from_env();
    let state = ClusterState::load(&paths, cluster)?;
    let m = state.machine(machine)?;
    // As `ssh host CMD` and `vagrant ssh -c CMD`: the words are joined with spaces into one
    // command line, which core's login shell runs (so `-- 'a; b'` runs two commands).
    let line = (!command.is_empty()).then(|| command.join(" "));
    let mut cmd = machine_launcher::login(&RealHost, &paths, &state, m, line.as_deref())?;
    let status = if line.is_some() && m.driver == machine_launcher::Driver::Nspawn {
        // A command, not a terminal session: no job control to pass on, so a machine going
        // down cannot leave nsenter stopped (see `wait_entered`).
        let mut child = cmd.spawn().context("entering the machine")?;
        machine_launcher::boot::wait_entered(&RealHost, &mut child, None)
            .context("waiting for the command in the machine")?
            .context("the command in the machine did not end")?
    } else {
        cmd.status().context("entering the machine")?
    };
    Ok(ExitCode::from(
        status.code().unwrap_or(255).clamp(0, 255) as u8
    ))
}

fn cmd_status(cluster: &str) -> Result<ExitCode> {
    let paths = Paths::from_env();
    let state = ClusterState::load(&paths, cluster)?;
    out(format!(
        "{:<12} {:<9} {:<16} {:<6} {}",
        "NAME", "STATE", "ADDRESS", "USR", "VERSION"
    ))?;
    for s in machine_launcher::status(&RealHost, &paths, &state) {
        out(format!(
            "{:<12} {:<9} {:<16} {:<6} {}",
            s.name, s.state, s.ip, s.usr, s.version
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_halt(cluster: &str, machine: &str, force: bool) -> Result<ExitCode> {
    let paths = Paths::from_env();
    let _lock = machine_launcher::lock_existing(&paths, cluster)?;
    let mut state = ClusterState::load(&paths, cluster)?;
    machine_launcher::halt(&RealHost, &paths, &mut state, machine, force)?;
    out(format!("{machine}: stopped"))?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_reload(cluster: &str, machine: &str) -> Result<ExitCode> {
    let paths = Paths::from_env();
    let state = {
        let _lock = machine_launcher::lock_existing(&paths, cluster)?;
        let mut state = ClusterState::load(&paths, cluster)?;
        machine_launcher::halt(&RealHost, &paths, &mut state, machine, false)?;
        state
    };
    let channel = parse_channel(&state.settings.channel)?;
    let image = build_image(channel)?;
    let ud = paths.state.join("clusters").join(cluster).join("user-data");
    machine_launcher::up(
        &RealHost,
        &paths,
        &UpOptions {
            cluster: cluster.to_string(),
            settings: state.settings.clone(),
            user_data: ud,
            image: image.path,
            ferrite_exe: std::env::current_exe()?,
            boot_timeout: Duration::from_secs(120),
            progress: None,
        },
    )?;
    out(format!("{machine}: reloaded"))?;
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Image {
            command:
                ImageCmd::Build {
                    channel,
                    format,
                    output,
                },
        } => image_build(&channel, format.as_deref(), output),
        Cmd::Up {
            cluster,
            instances,
            user_data,
            channel,
            memory,
            prefix,
            driver,
            config,
        } => cmd_up(
            cluster.cluster,
            instances,
            user_data,
            channel,
            memory,
            prefix,
            driver,
            config,
        ),
        Cmd::Ssh {
            cluster,
            machine,
            command,
        } => cmd_ssh(&cluster.cluster, &machine, &command),
        Cmd::Status { cluster } => cmd_status(&cluster.cluster),
        Cmd::Halt {
            cluster,
            force,
            machine,
        } => cmd_halt(&cluster.cluster, &machine, force),
        Cmd::Reload { cluster, machine } => cmd_reload(&cluster.cluster, &machine),
        Cmd::Destroy { cluster } => {
            machine_launcher::destroy(&RealHost, &Paths::from_env(), &cluster.cluster)?;
            out(format!("cluster {:?} destroyed", cluster.cluster))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Release {
            command:
                ReleaseCmd::Build {
                    version,
                    channel,
                    failing_health_check,
                },
        } => {
            out(release::build(
                &version,
                parse_channel(&channel)?,
                failing_health_check,
            )?)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Release {
            command:
                ReleaseCmd::Publish {
                    version,
                    channel,
                    cluster,
                },
        } => {
            parse_channel(&channel)?;
            out(release::publish(&version, &channel, &cluster.cluster)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::UpdateServer {
            cluster,
            listen,
            base_url,
        } => {
            release::serve(&cluster.cluster, listen.as_deref(), base_url.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Qemu { name: _, spec } => {
            machine_launcher::qemu::supervise(&spec)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Nspawn { machine: _, spec } => {
            machine_launcher::nspawn::supervise(&spec)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Image {
            command:
                ImageCmd::Push {
                    archive,
                    tag,
                    cluster,
                },
        } => image_push(&archive, tag.as_deref(), &cluster.cluster),
        Cmd::RegistrySeed { registry } => registry_seed(&registry),
        Cmd::RegistryPush {
            registry,
            tag,
            archive,
        } => registry_push(&registry, &tag, &archive),
        Cmd::Boot { cgroups, command } => {
            machine_launcher::cgroup::join(&RealHost, &cgroups, std::process::id())?;
            let Some((prog, args)) = command.split_first() else {
                bail!("__boot needs a command");
            };
            let err = host_command::command(prog).args(args).exec();
            Err(err).with_context(|| format!("executing {prog}"))
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRITE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferrite: {}", host_command::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

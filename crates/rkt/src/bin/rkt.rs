//! `rkt`: rkt 1.x's command line. See the `rkt` crate's documentation for how a pod runs.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

use rkt::pod::{Pod, Pods};
use rkt::source::{Options, PullPolicy};
use rkt::store::{short_id, Store};
use rkt::table;

/// rkt's exit status for its own failures.
const FAILED: u8 = 254;

#[derive(Parser, Debug)]
#[command(
    name = "rkt",
    about = "rkt, the app container runtime",
    disable_version_flag = true
)]
struct Cli {
    /// rkt data directory.
    #[arg(long, global = true, default_value = "/var/lib/rkt")]
    dir: PathBuf,
    /// Comma-separated list of security features to disable (image, …).
    #[arg(long = "insecure-options", global = true, default_value = "none")]
    insecure_options: String,
    /// Print out more debug information to stderr.
    #[arg(long, global = true)]
    debug: bool,
    /// Local configuration directory.
    #[arg(long = "local-config", global = true, default_value = "/etc/rkt")]
    local_config: PathBuf,
    /// System configuration directory.
    #[arg(long = "system-config", global = true, default_value = "/usr/lib/rkt")]
    system_config: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run image(s) in a pod.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Prepare a pod to run later (prints its UUID).
    Prepare {
        /// Suppress everything but the UUID.
        #[arg(long)]
        quiet: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a prepared pod.
    #[command(name = "run-prepared")]
    RunPrepared {
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        interactive: Option<String>,
        uuid: String,
    },
    /// List pods.
    List {
        #[arg(long)]
        full: bool,
        #[arg(long = "no-legend")]
        no_legend: bool,
    },
    /// Check the status of a pod.
    Status {
        /// Wait for the pod to exit (true, or a duration like 10s).
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        wait: Option<String>,
        #[arg(long = "uuid-file")]
        uuid_file: Option<PathBuf>,
        uuid: Option<String>,
    },
    /// Enter the namespaces of an app of a running pod.
    Enter {
        #[arg(long)]
        app: Option<String>,
        uuid: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Stop running pods.
    Stop {
        #[arg(long)]
        force: bool,
        #[arg(long = "uuid-file")]
        uuid_file: Option<PathBuf>,
        uuids: Vec<String>,
    },
    /// Remove pods and all their resources.
    Rm {
        #[arg(long = "uuid-file")]
        uuid_file: Option<PathBuf>,
        uuids: Vec<String>,
    },
    /// Garbage collect pods that have exited.
    Gc {
        #[arg(long = "grace-period", default_value = "30m0s")]
        grace_period: String,
        #[arg(long = "expire-prepared", default_value = "24h0m0s")]
        expire_prepared: String,
        #[arg(long = "mark-only")]
        mark_only: bool,
    },
    /// Print the pod manifest of a pod.
    #[command(name = "cat-manifest")]
    CatManifest {
        #[arg(long = "pretty-print", default_value = "true", action = clap::ArgAction::Set)]
        pretty_print: bool,
        uuid: String,
    },
    /// Operate on images in the local store.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Fetch image(s) and store them locally.
    Fetch {
        #[arg(long)]
        full: bool,
        #[arg(long = "pull-policy", default_value = "new")]
        pull_policy: String,
        #[arg(long)]
        signature: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Trust a key for image verification.
    Trust {
        /// Image name prefix the key is trusted for.
        #[arg(long)]
        prefix: Option<String>,
        /// Trust the key for all images.
        #[arg(long)]
        root: bool,
        /// Accept the key without asking.
        #[arg(long = "skip-fingerprint-review")]
        skip_fingerprint_review: bool,
        /// Key files (no discovery: these machines reach no key server).
        keys: Vec<PathBuf>,
    },
    /// Print the version and exit.
    Version,
    #[command(name = "__stage1-init", hide = true)]
    Stage1Init { pod_dir: PathBuf },
    #[command(name = "__stage1-app", hide = true)]
    Stage1App {
        root: PathBuf,
        wd: String,
        identity: String,
        #[arg(last = true)]
        argv: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// List images in the local store.
    List {
        #[arg(long)]
        full: bool,
        #[arg(long = "no-legend")]
        no_legend: bool,
    },
    /// Remove one or more images from the local store.
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Export a stored image to an ACI file.
    Export {
        #[arg(long)]
        overwrite: bool,
        image: String,
        output: PathBuf,
    },
    /// Extract a stored image to a directory.
    #[command(alias = "render")]
    Extract {
        #[arg(long)]
        overwrite: bool,
        #[arg(long = "rootfs-only")]
        rootfs_only: bool,
        image: String,
        output: PathBuf,
    },
    /// Print the manifest of an image.
    #[command(name = "cat-manifest")]
    CatManifest {
        #[arg(long = "pretty-print", default_value = "true", action = clap::ArgAction::Set)]
        pretty_print: bool,
        image: String,
    },
    /// Remove unused images and debris of killed fetches.
    Gc {
        #[arg(long = "grace-period", default_value = "24h0m0s")]
        grace_period: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("rkt: {}", host_command::error_chain(e.as_ref()));
            ExitCode::from(FAILED)
        }
    }
}

fn out(text: &str) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())?;
    o.flush()?;
    Ok(())
}

/// Go's duration syntax as rkt's flags take it: `30m0s`, `24h`, `10s`, `1h30m`, `0`.
fn duration(s: &str) -> anyhow::Result<u64> {
    if s == "0" {
        return Ok(0);
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if (c == 'm' || c == 'u' || c == 'n') && chars.peek() == Some(&'s') {
            unit.push('s');
            chars.next();
        }
        let n: f64 = num
            .parse()
            .with_context(|| format!("{s:?} is not a duration (e.g. 30m0s, 10s)"))?;
        num.clear();
        let ms = match unit.as_str() {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "us" | "ns" => 0.0,
            _ => bail!("{s:?} is not a duration (e.g. 30m0s, 10s)"),
        };
        total += n * ms;
        any = true;
    }
    if !num.is_empty() || !any {
        bail!("{s:?} is not a duration (e.g. 30m0s, 10s)");
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // non-negative, bounded
    Ok(total as u64)
}

fn insecure_image(opts: &str) -> anyhow::Result<bool> {
    let mut image = false;
    for o in opts.split(',').map(str::trim) {
        match o {
            "image" | "all" | "all-fetch" | "all-run" => image = true,
            "none" | "" | "tls" | "ondisk" | "http" | "pubkey" | "capabilities" | "paths"
            | "seccomp" => {}
            other => bail!("--insecure-options: unknown option {other:?}"),
        }
    }
    Ok(image)
}

fn uuids_from(uuid_file: Option<&Path>, uuids: &[String]) -> anyhow::Result<Vec<String>> {
    let mut v = uuids.to_vec();
    if let Some(f) = uuid_file {
        let s = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        v.push(s.trim().to_string());
    }
    if v.is_empty() {
        bail!("no pod UUID given");
    }
    Ok(v)
}

#[allow(clippy::too_many_lines)] // one arm per command, each short
fn run(cli: Cli) -> anyhow::Result<u8> {
    let dir = cli.dir.clone();
    let cli_configs = (cli.system_config.clone(), cli.local_config.clone());
    let insecure = insecure_image(&cli.insecure_options)?;
    match cli.cmd {
        Cmd::Run { args } => run_pod(&dir, &cli_configs, &args, insecure, None),
        Cmd::Prepare { args, quiet: _ } => {
            let (uuid, mut pod, lock, _) = prepare(&dir, &cli_configs, &args, insecure)?;
            // Prepared: moved while still locked, then left unlocked for run-prepared.
            Pods::open(&dir)?.move_to(&mut pod, "prepared")?;
            drop(lock);
            out(&format!("{uuid}\n"))?;
            Ok(0)
        }
        Cmd::RunPrepared { uuid, interactive } => run_pod(
            &dir,
            &cli_configs,
            &[],
            insecure,
            Some((uuid, interactive.is_some_and(|v| v == "true"))),
        ),
        Cmd::List { full, no_legend } => {
            out(&list(&dir, full, no_legend)?)?;
            Ok(0)
        }
        Cmd::Status {
            wait,
            uuid_file,
            uuid,
        } => {
            let uuids = uuids_from(uuid_file.as_deref(), &uuid.into_iter().collect::<Vec<_>>())?;
            let pods = Pods::open(&dir)?;
            let mut pod = pods.find(&uuids[0])?;
            if let Some(w) = wait {
                let limit = if w == "true" {
                    None
                } else if w == "false" {
                    Some(0)
                } else {
                    Some(duration(&w)?)
                };
                let start = rkt::now_millis();
                while pod.state() == "running"
                    || pod.state() == "preparing"
                    || pod.state() == "prepared"
                {
                    if limit.is_some_and(|l| rkt::now_millis() - start >= l) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    pod = pods.find(&pod.uuid)?;
                }
            }
            out(&status(&pod))?;
            Ok(0)
        }
        Cmd::Enter { app, uuid, cmd } => enter(&dir, &uuid, app.as_deref(), &cmd),
        Cmd::Stop {
            force,
            uuid_file,
            uuids,
        } => {
            let pods = Pods::open(&dir)?;
            let mut failed = false;
            for u in uuids_from(uuid_file.as_deref(), &uuids)? {
                match stop(&pods, &u, force) {
                    Ok(full) => out(&format!("{full:?}\n"))?,
                    Err(e) => {
                        eprintln!("rkt: error stopping {u:?}: {e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { FAILED } else { 0 })
        }
        Cmd::Rm { uuid_file, uuids } => {
            let pods = Pods::open(&dir)?;
            let mut failed = false;
            for u in uuids_from(uuid_file.as_deref(), &uuids)? {
                if let Err(e) = remove_pod(&pods, &u) {
                    eprintln!("rkt: cannot remove {u:?}: {e}");
                    failed = true;
                }
            }
            Ok(if failed { FAILED } else { 0 })
        }
        Cmd::Gc {
            grace_period,
            expire_prepared,
            mark_only,
        } => {
            gc(
                &dir,
                duration(&grace_period)?,
                duration(&expire_prepared)?,
                mark_only,
            )?;
            Ok(0)
        }
        Cmd::CatManifest { pretty_print, uuid } => {
            let pod = Pods::open(&dir)?.find(&uuid)?;
            let m = pod
                .manifest()?
                .with_context(|| format!("pod {} has no manifest yet", pod.uuid))?;
            out(&(json(&m, pretty_print)? + "\n"))?;
            Ok(0)
        }
        Cmd::Image { cmd } => image(&dir, cmd),
        Cmd::Fetch {
            full,
            pull_policy,
            signature,
            images,
        } => {
            let store = Store::open(&dir)?;
            let opts = Options {
                insecure_image: insecure,
                pull_policy: pull_policy.parse()?,
                signature,
                trust_configs: trust_configs(&cli_configs),
            };
            for i in &images {
                let r = rkt::source::fetch(&store, i, &opts)
                    .with_context(|| format!("unable to fetch image from {i:?}"))?;
                let id = if full {
                    r.id.clone()
                } else {
                    r.id.chars().take(39).collect()
                };
                out(&format!("{id}\n"))?;
            }
            Ok(0)
        }
        Cmd::Trust {
            prefix,
            root,
            skip_fingerprint_review,
            keys,
        } => {
            trust(
                &cli.local_config,
                prefix.as_deref(),
                root,
                skip_fingerprint_review,
                &keys,
            )?;
            Ok(0)
        }
        Cmd::Version => {
            out(&format!(
                "rkt Version: {}\nappc Version: {}\nGo Version: none (Rust)\nGo OS/Arch: linux/amd64\nFeatures: -TPM +SDJOURNAL\n",
                rkt::VERSION,
                rkt::aci::AC_VERSION
            ))?;
            Ok(0)
        }
        Cmd::Stage1Init { pod_dir } => {
            let code = rkt::stage1::init(&pod_dir)?;
            Ok(u8::try_from(code & 0xff).unwrap_or(FAILED))
        }
        Cmd::Stage1App {
            root,
            wd,
            identity,
            argv,
        } => {
            let id = rkt::stage1::Identity::from_arg(&identity)?;
            let e = rkt::stage1::exec_app(&root, &wd, &id, &argv);
            eprintln!(
                "rkt: cannot run {}: {e}",
                argv.first().map_or("", String::as_str)
            );
            Ok(FAILED)
        }
    }
}

fn trust(
    config: &Path,
    prefix: Option<&str>,
    root: bool,
    skip_review: bool,
    keys: &[PathBuf],
) -> anyhow::Result<()> {
    match (prefix, root) {
        (Some(_), true) => bail!("--root and --prefix exclude each other"),
        (None, false) => bail!("--root or --prefix=NAME is needed"),
        _ => {}
    }
    if let Some(p) = prefix {
        rkt::trust::check_prefix(p)?;
    }
    if keys.is_empty() {
        bail!("give the key files: keys cannot be discovered from these machines");
    }
    for path in keys {
        let key = rkt::trust::read_key(path)?;
        let mut text = String::new();
        match prefix {
            Some(p) => text.push_str(&format!("Prefix: {p:?}\n")),
            None => text.push_str("Root: \"true\"\n"),
        }
        text.push_str(&format!(
            "Key: {:?}\nGPG key fingerprint is: {}\n",
            path.display().to_string(),
            rkt::trust::grouped(&key.fingerprint)
        ));
        for s in &key.subkey_fingerprints {
            text.push_str(&format!(
                "\tSubkey fingerprint: {}\n",
                rkt::trust::grouped(s)
            ));
        }
        for u in &key.user_ids {
            text.push_str(&format!("\t{u}\n"));
        }
        out(&text)?;
        let who = prefix.map_or_else(|| "all images".to_string(), |p| format!("prefix {p:?}"));
        if skip_review {
            out(&format!(
                "Trusting {:?} for {who}, without fingerprint review.\n",
                path.display().to_string()
            ))?;
        } else {
            out("Are you sure you want to trust this key (yes/no)?\n")?;
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if answer.trim() != "yes" {
                bail!("not trusting {}", path.display());
            }
            out(&format!(
                "Trusting {:?} for {who} after fingerprint review.\n",
                path.display().to_string()
            ))?;
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let stored = rkt::trust::store_key(config, prefix, &key, &bytes)?;
        match prefix {
            Some(p) => out(&format!(
                "Added key for prefix {p:?} at {:?}\n",
                stored.display().to_string()
            ))?,
            None => out(&format!(
                "Added root key at {:?}\n",
                stored.display().to_string()
            ))?,
        }
    }
    Ok(())
}

fn json<T: serde::Serialize>(v: &T, pretty: bool) -> anyhow::Result<String> {
    Ok(if pretty {
        serde_json::to_string_pretty(v)?
    } else {
        serde_json::to_string(v)?
    })
}

fn trust_configs(c: &(PathBuf, PathBuf)) -> Vec<PathBuf> {
    vec![c.0.clone(), c.1.clone()]
}

fn prepare(
    dir: &Path,
    configs: &(PathBuf, PathBuf),
    args: &[String],
    insecure: bool,
) -> anyhow::Result<(String, Pod, rkt::pod::PodLock, Option<String>)> {
    let a = rkt::args::parse(args)?;
    let insecure = insecure
        || a.insecure_options
            .as_deref()
            .map(insecure_image)
            .transpose()?
            .unwrap_or(false);
    let store = Store::open(dir)?;
    let pods = Pods::open(dir)?;
    let opts = Options {
        insecure_image: insecure,
        pull_policy: a
            .pull_policy
            .as_deref()
            .map(str::parse::<PullPolicy>)
            .transpose()?
            .unwrap_or_default(),
        signature: None,
        trust_configs: trust_configs(configs),
    };
    let (m, o) = rkt::prepare::build(&store, &a, &opts)?;
    let (pod, lock) = pods.create()?;
    rkt::stage1::write_pod(&store, &pod, &m, &o)?;
    if let Some(f) = &a.uuid_file_save {
        atomic_file::write(
            Path::new(f),
            pod.uuid.as_bytes(),
            &atomic_file::Options::mode(0o644),
        )
        .with_context(|| format!("--uuid-file-save={f}"))?;
    }
    Ok((pod.uuid.clone(), pod, lock, a.uuid_file_save))
}

fn run_pod(
    dir: &Path,
    configs: &(PathBuf, PathBuf),
    args: &[String],
    insecure: bool,
    prepared: Option<(String, bool)>,
) -> anyhow::Result<u8> {
    let store = Store::open(dir)?;
    let pods = Pods::open(dir)?;
    let (mut pod, lock) = match prepared {
        None => {
            let (_, pod, lock, _) = prepare(dir, configs, args, insecure)?;
            (pod, lock)
        }
        Some((uuid, interactive)) => {
            let pod = pods.find(&uuid)?;
            if pod.phase != "prepared" {
                bail!("pod {} is {}, not prepared", pod.uuid, pod.state());
            }
            let lock = rkt::pod::try_lock(&pod.path, true)?
                .with_context(|| format!("pod {} is being run by another process", pod.uuid))?;
            if interactive {
                let mut o = pod.options()?;
                o.interactive = true;
                atomic_file::write(
                    &pod.path.join("options.json"),
                    &serde_json::to_vec_pretty(&o)?,
                    &atomic_file::Options::mode(0o644),
                )?;
            }
            (pod, lock)
        }
    };
    let ended = rkt::stage1::run(&store, &pods, &mut pod, lock)?;
    if let Some(sig) = ended.signal {
        // Stopped by a signal: end by it (a unit stopped by systemd reads as stopped).
        let _ = std::io::stdout().flush();
        let _ = signal_hook::low_level::emulate_default_handler(sig);
    }
    Ok(u8::try_from(ended.code & 0xff).unwrap_or(FAILED))
}

fn list(dir: &Path, full: bool, no_legend: bool) -> anyhow::Result<String> {
    let pods = Pods::open(dir)?;
    let store = Store::open(dir)?;
    let now = rkt::now_millis();
    let mut rows: Vec<Vec<String>> = Vec::new();
    if !no_legend {
        let mut h = vec!["UUID", "APP", "IMAGE NAME"];
        if full {
            h.push("IMAGE ID");
        }
        h.extend(["STATE", "CREATED", "STARTED", "NETWORKS"]);
        rows.push(h.into_iter().map(str::to_string).collect());
    }
    for p in pods.all()? {
        let t = |ms: u64| {
            if full {
                table::full_time(ms)
            } else {
                table::ago(ms, now)
            }
        };
        let mut uuid = if full {
            p.uuid.clone()
        } else {
            p.uuid[..8].to_string()
        };
        let mut state = p.state().to_string();
        let mut created = t(p.created());
        let mut started = p.started().map(|(ms, _)| t(ms)).unwrap_or_default();
        let mut nets = p.nets_text();
        let apps = p
            .manifest()
            .ok()
            .flatten()
            .map(|m| m.apps)
            .unwrap_or_default();
        if apps.is_empty() {
            let mut r = vec![uuid.clone(), "-".into(), "-".into()];
            if full {
                r.push("-".into());
            }
            r.extend([
                state.clone(),
                created.clone(),
                started.clone(),
                nets.clone(),
            ]);
            rows.push(r);
        }
        for a in apps {
            let img = store
                .get(&a.image.id)
                .map(|r| r.manifest.display_name())
                .unwrap_or_else(
                    |_| match a.image.labels.iter().find(|l| l.name == "version") {
                        Some(v) => format!("{}:{}", a.image.name, v.value),
                        None => a.image.name.clone(),
                    },
                );
            let mut r = vec![uuid.clone(), a.name.clone(), img];
            if full {
                r.push(short_id(&a.image.id));
            }
            r.extend([
                state.clone(),
                created.clone(),
                started.clone(),
                nets.clone(),
            ]);
            rows.push(r);
            uuid.clear();
            state.clear();
            created.clear();
            started.clear();
            nets.clear();
        }
    }
    Ok(table::render(&rows))
}

fn status(pod: &Pod) -> String {
    let state = pod.state();
    let mut s = format!(
        "state={state}\ncreated={}\n",
        table::full_time(pod.created())
    );
    let started = pod.started();
    if let Some((ms, _)) = started {
        s.push_str(&format!("started={}\n", table::full_time(ms)));
    }
    if state == "running" || state == "exited" {
        s.push_str(&format!("networks={}\n", pod.nets_text()));
    }
    if !matches!(
        state,
        "running" | "deleting" | "exited deleting" | "exited" | "exited garbage"
    ) {
        return s;
    }
    if let Some((_, pid)) = started {
        s.push_str(&format!("pid={pid}\n"));
    }
    let exited = state == "exited" || state == "exited garbage";
    s.push_str(&format!("exited={exited}\n"));
    if state != "running" {
        for (app, code) in pod.exit_statuses() {
            s.push_str(&format!("app-{app}={code}\n"));
        }
    }
    s
}

fn stop(pods: &Pods, uuid: &str, force: bool) -> anyhow::Result<String> {
    let pod = pods.find(uuid)?;
    if pod.state() != "running" {
        bail!("pod is not running");
    }
    let (_, pid) = pod.started().context("pod has no init process yet")?;
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid)?).context("bad pid file")?;
    let sig = if force {
        rustix::process::Signal::KILL
    } else {
        rustix::process::Signal::TERM
    };
    rustix::process::kill_process(pid, sig).context("signalling the pod")?;
    Ok(pod.uuid)
}

fn remove_pod(pods: &Pods, uuid: &str) -> anyhow::Result<()> {
    let mut pod = pods.find(uuid)?;
    match pod.state() {
        "running" | "preparing" | "deleting" | "exited deleting" => {
            bail!("pod is {}; stop it first", pod.state())
        }
        "exited" => pods.move_to(&mut pod, "exited-garbage")?,
        "prepared" | "aborted prepare" | "embryo" => pods.move_to(&mut pod, "garbage")?,
        _ => {}
    }
    rkt::pod::delete(&pod)?;
    out(&format!("{:?}\n", pod.uuid))?;
    Ok(())
}

fn gc(dir: &Path, grace: u64, expire_prepared: u64, mark_only: bool) -> anyhow::Result<()> {
    let pods = Pods::open(dir)?;
    let now = rkt::now_millis();
    for mut p in pods.all()? {
        match p.state() {
            "exited" => {
                eprintln!("rkt: moving pod {:?} to garbage", p.uuid);
                pods.move_to(&mut p, "exited-garbage")?;
            }
            "aborted prepare" => {
                eprintln!("rkt: moving failed prepare {:?} to garbage", p.uuid);
                pods.move_to(&mut p, "garbage")?;
            }
            _ => {}
        }
    }
    if mark_only {
        return Ok(());
    }
    for mut p in pods.all()? {
        if p.phase == "prepared" && now.saturating_sub(p.moved_at()) >= expire_prepared {
            eprintln!("rkt: moving expired prepared pod {:?} to garbage", p.uuid);
            pods.move_to(&mut p, "garbage")?;
        }
    }
    for p in pods.all()? {
        let due = match p.phase {
            "exited-garbage" => now.saturating_sub(p.moved_at()) >= grace,
            "garbage" => true,
            _ => continue,
        };
        if !due {
            eprintln!(
                "rkt: pod {:?} not removed: still within grace period ({})",
                p.uuid,
                fmt_duration(grace)
            );
            continue;
        }
        match rkt::pod::delete(&p) {
            Ok(true) => out(&format!("Garbage collecting pod {:?}\n", p.uuid))?,
            Ok(false) => {}
            Err(e) => eprintln!("rkt: removing pod {:?}: {e}", p.uuid),
        }
    }
    Ok(())
}

fn fmt_duration(ms: u64) -> String {
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

fn enter(dir: &Path, uuid: &str, app: Option<&str>, cmd: &[String]) -> anyhow::Result<u8> {
    let pod = Pods::open(dir)?.find(uuid)?;
    if pod.state() != "running" {
        bail!("pod {} is not running", pod.uuid);
    }
    let m = pod.manifest()?.context("pod has no manifest")?;
    let app = match app {
        Some(a) => m
            .apps
            .iter()
            .find(|x| x.name == a)
            .with_context(|| format!("pod {} has no app {a:?}", pod.uuid))?,
        None if m.apps.len() == 1 => &m.apps[0],
        None => bail!(
            "pod {} has several apps ({}): choose one with --app",
            pod.uuid,
            m.apps
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let (_, pid) = pod.started().context("pod has no init process yet")?;
    let code = rkt::stage1::enter(&pod, pid, &app.name, cmd)?;
    Ok(u8::try_from(code & 0xff).unwrap_or(FAILED))
}

fn image_list(store: &Store, full: bool, no_legend: bool) -> anyhow::Result<u8> {
    let now = rkt::now_millis();
    let mut rows = Vec::new();
    if !no_legend {
        rows.push(
            ["ID", "NAME", "SIZE", "IMPORT TIME", "LAST USED"]
                .map(str::to_string)
                .to_vec(),
        );
    }
    for r in store.list()? {
        let size = r.size + store.tree_size(&r.id);
        rows.push(if full {
            vec![
                r.id.clone(),
                r.manifest.display_name(),
                size.to_string(),
                table::full_time(r.import_time),
                table::full_time(r.last_used),
            ]
        } else {
            vec![
                short_id(&r.id),
                r.manifest.display_name(),
                table::ibytes(size),
                table::ago(r.import_time, now),
                table::ago(r.last_used, now),
            ]
        });
    }
    out(&table::render(&rows))?;
    Ok(0)
}

fn image_rm(dir: &Path, store: &Store, images: &[String]) -> anyhow::Result<u8> {
    let pods = Pods::open(dir)?;
    let mut removed = 0;
    let mut failed = false;
    for i in images {
        let res = store.find(i).map_err(anyhow::Error::from).and_then(|r| {
            if let Some(p) = rkt::pod::user_of(&pods, &r.id) {
                bail!("image is used by pod {p} (rkt rm it first)");
            }
            store.remove(&r.id)?;
            Ok(r)
        });
        match res {
            Ok(r) => {
                eprintln!("rkt: successfully removed image with ID: {:?}", r.id);
                removed += 1;
            }
            Err(e) => {
                eprintln!("rkt: {i:?}: {e:#}");
                failed = true;
            }
        }
    }
    if removed > 0 {
        eprintln!("rkt: {removed} image(s) successfully removed");
    }
    Ok(if failed { FAILED } else { 0 })
}

fn image_gc(dir: &Path, store: &Store, grace_period: &str) -> anyhow::Result<u8> {
    let grace = duration(grace_period)?;
    let pods = Pods::open(dir)?;
    let now = rkt::now_millis();
    let debris = store.remove_debris()?;
    if debris > 0 {
        eprintln!("rkt: removed {debris} unfinished fetch(es)");
    }
    let mut removed = 0;
    for r in store.list()? {
        if now.saturating_sub(r.last_used) < grace || rkt::pod::user_of(&pods, &r.id).is_some() {
            continue;
        }
        store.remove(&r.id)?;
        eprintln!(
            "rkt: successfully removed aci for image: {:?} ({:?})",
            r.id, r.manifest.name
        );
        removed += 1;
    }
    eprintln!("rkt: {removed} image(s) successfully removed");
    Ok(0)
}

fn image(dir: &Path, cmd: ImageCmd) -> anyhow::Result<u8> {
    let store = Store::open(dir)?;
    match cmd {
        ImageCmd::List { full, no_legend } => image_list(&store, full, no_legend),
        ImageCmd::Rm { images } => image_rm(dir, &store, &images),
        ImageCmd::Export {
            overwrite,
            image,
            output,
        } => {
            let r = store.find(&image)?;
            if output.exists() && !overwrite {
                bail!("{} exists (--overwrite to replace it)", output.display());
            }
            let bytes = std::fs::read(store.blob(&r.id))
                .with_context(|| format!("reading the stored ACI of {}", r.id))?;
            atomic_file::write(&output, &bytes, &atomic_file::Options::mode(0o644))?;
            Ok(0)
        }
        ImageCmd::Extract {
            overwrite,
            rootfs_only,
            image,
            output,
        } => {
            let r = store.find(&image)?;
            if output.exists() {
                if !overwrite {
                    bail!("{} exists (--overwrite to replace it)", output.display());
                }
                std::fs::remove_dir_all(&output)
                    .with_context(|| format!("removing {}", output.display()))?;
            }
            let tree = store.tree(&r.id);
            if rootfs_only {
                std::fs::create_dir_all(&output)?;
                host_command::run(
                    host_command::command("cp")
                        .arg("-a")
                        .arg(format!("{}/.", tree.display()))
                        .arg(&output),
                )?;
            } else {
                std::fs::create_dir_all(output.join("rootfs"))?;
                host_command::run(
                    host_command::command("cp")
                        .arg("-a")
                        .arg(format!("{}/.", tree.display()))
                        .arg(output.join("rootfs")),
                )?;
                atomic_file::write(
                    &output.join("manifest"),
                    &serde_json::to_vec_pretty(&r.manifest)?,
                    &atomic_file::Options::mode(0o644),
                )?;
            }
            Ok(0)
        }
        ImageCmd::CatManifest {
            pretty_print,
            image,
        } => {
            let r = store.find(&image)?;
            out(&(json(&r.manifest, pretty_print)? + "\n"))?;
            Ok(0)
        }
        ImageCmd::Gc { grace_period } => image_gc(dir, &store, &grace_period),
    }
}

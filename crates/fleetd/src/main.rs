//! `fleetd`: fleet's daemon — the agent of this machine and, unless disabled, an engine that
//! schedules when it holds the leader lease. Configured as fleet was: `/etc/fleet/fleet.conf`
//! and `FLEET_*` variables (`--config` names another file). Identified by `/etc/machine-id`.
//! When the local etcd is a v2 proxy, fleetd uses the cluster's members directly.
//! SIGTERM or SIGINT stops it gracefully: its units are unloaded and the machine leaves the
//! cluster at once, as fleet did. SIGHUP reads the configuration again, as fleet did: the
//! machine's public IP, metadata and fencing default change in place and the engine
//! restarts with its new settings, while units keep running; etcd's address, the key
//! prefix and the agent TTL take effect only at the next start (a warning says so).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use fleet_model::Machine;
use fleet_store::{EtcdStore, KvStore, Registry, StoreError};
use fleetd::agent::{run_reconfigurable_agent, AgentConfig, Reconfig};
use fleetd::config::Config;
use fleetd::engine::{run_engine, EngineConfig};
use fleetd::systemd::SystemdManager;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const API_SOCKET: &str = "/var/run/fleet.sock";

/// `public_ip` as configured, else detected.
fn public_ip_of(cfg: &Config) -> String {
    if cfg.public_ip.is_empty() {
        detect_public_ip()
    } else {
        cfg.public_ip.clone()
    }
}

/// The address this machine's default route leaves from: the source address the kernel
/// picks for a UDP socket "connected" to a documentation address (nothing is sent, and
/// nothing blocks fleetd's only thread, unlike running `ip route get`).
fn detect_public_ip() -> String {
    let probe = || -> std::io::Result<std::net::SocketAddr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect("192.0.2.1:9")?;
        s.local_addr()
    };
    match probe() {
        Ok(a) if !a.ip().is_unspecified() => a.ip().to_string(),
        _ => String::new(),
    }
}

/// Waits for etcd; only a TLS setting that cannot work is fatal. When the local etcd is a
/// v2 proxy (a machine that found its discovery cluster full), fleetd talks to the
/// cluster's members directly: the proxy does not carry etcd's v3 API.
async fn connect(cfg: &Config) -> Result<EtcdStore, StoreError> {
    let timeout = Duration::from_secs_f64(cfg.etcd_request_timeout.max(0.5));
    let mut delay = Duration::from_millis(100);
    loop {
        match EtcdStore::connect_tls(&cfg.etcd_servers, timeout, &cfg.etcd_tls).await {
            Ok(s) if s.get("/").await.is_ok() => return Ok(s),
            Ok(_) => {
                if let Some(s) = through_proxy(cfg, timeout).await {
                    return Ok(s);
                }
                tracing::info!("etcd at {:?} not answering yet", cfg.etcd_servers);
            }
            Err(
                e @ (StoreError::TlsFile { .. } | StoreError::TlsPair | StoreError::TlsUnsupported),
            ) => return Err(e),
            Err(e) => tracing::info!("waiting for etcd: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// How often fleetd asks etcd for its members.
const MEMBERS_PERIOD: Duration = Duration::from_secs(60);

/// Teaches the store every member of the etcd cluster, not only the configured endpoints
/// (usually the machine's own member), so that it can fail over to them: stopping one
/// member then moves nothing. A failure is logged and tried again at the next period.
async fn learn_members(store: &EtcdStore) {
    match store.add_members().await {
        Ok(added) if !added.is_empty() => {
            tracing::info!("etcd members: using {:?}", store.endpoints());
        }
        Ok(_) => {}
        Err(e) => tracing::debug!("listing etcd members: {e}"),
    }
}

/// The cluster's members, when a configured etcd is a v2 proxy in front of them.
async fn through_proxy(cfg: &Config, timeout: Duration) -> Option<EtcdStore> {
    for server in &cfg.etcd_servers {
        let Ok(Some(members)) = fleet_store::proxied_members(server, timeout).await else {
            continue;
        };
        if members.is_empty() {
            continue;
        }
        let Ok(s) = EtcdStore::connect_tls(&members, timeout, &cfg.etcd_tls).await else {
            continue;
        };
        if s.get("/").await.is_ok() {
            tracing::info!("etcd at {server} is a proxy: using the cluster's members {members:?}");
            return Some(s);
        }
    }
    None
}

async fn run(config: PathBuf) -> Result<()> {
    let cfg = Config::load(&config, std::env::vars()).context("reading fleet configuration")?;
    for k in &cfg.unknown {
        tracing::warn!("ignoring unknown configuration key {k:?}");
    }
    let id = std::fs::read_to_string("/etc/machine-id")
        .unwrap_or_default()
        .trim()
        .to_string();
    if id.is_empty() {
        bail!("unable to determine local machine ID");
    }
    let public_ip = public_ip_of(&cfg);
    let machine = Machine {
        id: id.clone(),
        public_ip,
        metadata: cfg.metadata.clone(),
        version: VERSION.into(),
    };
    tracing::info!(machine = %id, ip = %machine.public_ip, "starting fleetd {VERSION}");

    let store = connect(&cfg).await.context("connecting to etcd")?;
    learn_members(&store).await;
    let reg = Arc::new(Registry::new(store.clone(), &cfg.etcd_key_prefix));
    let (stop_tx, stop_rx) = watch::channel(false);
    let bind_to = own_unit().map(|u| (u, PathBuf::from("/run/systemd/system")));
    let manager = SystemdManager::connect(PathBuf::from("/run/fleet/units"), bind_to)
        .await
        .context("connecting to systemd")?;
    let agent_cfg = AgentConfig {
        machine,
        ttl: cfg.agent_ttl,
        resync: Duration::from_secs(60),
        fencing: cfg.fencing,
    };
    let (ready_tx, ready_rx) = watch::channel(false);
    let listeners = api_listeners().context("opening the fleet API sockets")?;
    let api = Arc::new(fleetd::api::Api {
        reg: reg.clone(),
        ready: ready_rx,
        server: concat!("fleetd/", env!("CARGO_PKG_VERSION")),
    });
    let api_tasks = serve_api(&api, listeners, &stop_rx);
    let (reconfig_tx, reconfig_rx) =
        watch::channel(reconfig_of(&cfg, &agent_cfg.machine.public_ip));
    let mut agent = tokio::spawn(run_reconfigurable_agent(
        reg.clone(),
        agent_cfg,
        manager,
        stop_rx.clone(),
        Some(ready_tx),
        Some(reconfig_rx),
    ));
    let mut engine = Engine::start(&reg, &cfg, &id);

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut cfg = cfg;
    // Members join and leave: ask again now and then.
    let mut members = tokio::time::interval(MEMBERS_PERIOD);
    members.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let engine_done = async {
            match engine.as_mut() {
                Some(e) => (&mut e.task).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping, unloading units");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping, unloading units");
                break;
            }
            _ = hup.recv() => {
                // fleet's reload: the configuration file is read again; units keep running.
                if let Some(new) = reload(&config, &cfg, &reconfig_tx) {
                    if new.disable_engine != cfg.disable_engine
                        || new.engine_reconcile_interval != cfg.engine_reconcile_interval
                    {
                        if let Some(e) = engine.take() {
                            e.stop().await;
                        }
                        engine = Engine::start(&reg, &new, &id);
                    }
                    cfg = new;
                }
            }
            _ = members.tick() => learn_members(&store).await,
            r = &mut agent => bail!("agent stopped: {:?}", r),
            r = engine_done => bail!("engine stopped: {:?}", r),
        }
    }
    stop_tx.send(true).ok();
    match tokio::time::timeout(Duration::from_secs(30), &mut agent).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("agent: {e}"),
        Ok(Err(e)) => tracing::warn!("agent task: {e}"),
        Err(_) => tracing::warn!("agent did not stop in 30 s"),
    }
    if let Some(e) = engine {
        e.stop().await;
    }
    for t in api_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let _ = store.requests();
    Ok(())
}

/// Serves the fleet API on every listener until `stop` says so.
fn serve_api(
    api: &Arc<fleetd::api::Api<fleet_store::EtcdStore>>,
    listeners: Vec<Listener>,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut api_tasks = Vec::new();
    for listener in listeners {
        let mut api_stop = stop.clone();
        let router = fleetd::api::router(api.clone());
        let shutdown = async move {
            let _ = api_stop.wait_for(|s| *s).await;
        };
        api_tasks.push(tokio::spawn(async move {
            let served = match listener {
                Listener::Unix(l) => {
                    axum::serve(l, router)
                        .with_graceful_shutdown(shutdown)
                        .await
                }
                Listener::Tcp(l) => {
                    axum::serve(l, router)
                        .with_graceful_shutdown(shutdown)
                        .await
                }
            };
            if let Err(e) = served {
                tracing::warn!("fleet API server: {e}");
            }
        }));
    }
    api_tasks
}

/// SIGHUP: the configuration read again and handed to the agent; `None` (the old one
/// kept) when it does not read. Settings that only a restart can change are named.
fn reload(
    path: &std::path::Path,
    cfg: &Config,
    reconfig: &watch::Sender<Reconfig>,
) -> Option<Config> {
    tracing::info!("Reloading configuration from {}", path.display());
    let new = match Config::load(path, std::env::vars()) {
        Ok(new) => new,
        Err(e) => {
            tracing::warn!("Failed to reload configuration, keeping the old: {e:#}");
            return None;
        }
    };
    for (key, changed) in [
        ("etcd_servers", new.etcd_servers != cfg.etcd_servers),
        (
            "etcd_key_prefix",
            new.etcd_key_prefix != cfg.etcd_key_prefix,
        ),
        ("agent_ttl", new.agent_ttl != cfg.agent_ttl),
        ("etcd TLS files", new.etcd_tls != cfg.etcd_tls),
    ] {
        if changed {
            tracing::warn!("{key} changed: it takes effect when fleetd restarts");
        }
    }
    reconfig.send_replace(reconfig_of(&new, &public_ip_of(&new)));
    Some(new)
}

/// What the agent takes from a configuration.
fn reconfig_of(cfg: &Config, public_ip: &str) -> Reconfig {
    Reconfig {
        public_ip: public_ip.to_string(),
        metadata: cfg.metadata.clone(),
        fencing: cfg.fencing,
    }
}

/// The systemd service fleetd runs as (`fleet.service`), read from its own cgroup; `None`
/// when it is not a service (run by hand).
fn own_unit() -> Option<String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroups
        .lines()
        .flat_map(|l| l.rsplit('/'))
        .find(|part| part.ends_with(".service"))
        .map(str::to_string)
}

/// The engine role, when enabled, with its own stop switch so a reload can restart it.
struct Engine {
    task: tokio::task::JoinHandle<Result<fleetd::engine::EngineStats, fleetd::Error>>,
    stop: watch::Sender<bool>,
}

impl Engine {
    fn start(reg: &Arc<Registry<EtcdStore>>, cfg: &Config, id: &str) -> Option<Self> {
        if cfg.disable_engine {
            return None;
        }
        let ecfg = EngineConfig {
            machine_id: id.to_string(),
            // A dead leader is replaced within this: as short as etcd allows by default.
            lease_ttl: (cfg.engine_reconcile_interval.ceil() as i64).max(2),
            resync: Duration::from_secs_f64(cfg.engine_reconcile_interval.max(1.0) * 15.0),
        };
        let (stop, stop_rx) = watch::channel(false);
        Some(Self {
            task: tokio::spawn(run_engine(reg.clone(), ecfg, stop_rx)),
            stop,
        })
    }

    async fn stop(self) {
        self.stop.send(true).ok();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// A socket fleet's API is served on.
enum Listener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// Where fleet's API listens: every socket systemd passes (`fleet.socket` with
/// `ListenStream=/var/run/fleet.sock`, and TCP ports such as fleet's functional tests'
/// `ListenStream=54728`), else `/var/run/fleet.sock` bound here.
fn api_listeners() -> Result<Vec<Listener>> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Vec::new();
    for i in 0..fds.len() {
        if let Ok(Some(l)) = fds.take_unix_listener(i) {
            l.set_nonblocking(true)?;
            out.push(Listener::Unix(tokio::net::UnixListener::from_std(l)?));
        } else if let Some(l) = fds
            .take_tcp_listener(i)
            .with_context(|| format!("taking socket {i} passed by systemd"))?
        {
            l.set_nonblocking(true)?;
            out.push(Listener::Tcp(tokio::net::TcpListener::from_std(l)?));
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    let path = std::path::Path::new(API_SOCKET);
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt as _;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).with_context(|| format!("removing stale {API_SOCKET}"))?;
        }
    }
    let l =
        tokio::net::UnixListener::bind(path).with_context(|| format!("binding {API_SOCKET}"))?;
    Ok(vec![Listener::Unix(l)])
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEETD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let mut config = PathBuf::from("/etc/fleet/fleet.conf");
    while let Some(a) = args.next() {
        match a.trim_start_matches('-') {
            "version" => {
                println_version();
                return ExitCode::SUCCESS;
            }
            "config" => config = args.next().map(PathBuf::from).unwrap_or(config),
            other if other.starts_with("config=") => {
                config = PathBuf::from(&other["config=".len()..])
            }
            other => {
                eprintln!("fleetd: unknown argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    // One thread for the engine, the agent and the API (none of them is CPU-bound), and
    // few blocking threads (D-Bus calls): fleetd stays small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetd: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
fn println_version() {
    println!("fleetd version {VERSION}");
}

//! `update_engine`: the daemon on the system bus (`com.coreos.update1`, object
//! `/com/coreos/update1`, interface `com.coreos.update1.Manager`: `AttemptUpdate`,
//! `ResetStatus`, `GetStatus`, the `StatusUpdate` signal), checking on CoreOS's schedule
//! (or `CHECK_INTERVAL`) and running each attempt (`update_engine::attempt`) on the
//! blocking pool. One event loop: D-Bus commands, the attempt's reports, the check timer
//! and SIGTERM are the only things that move it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use omaha::InstallSource;
use tokio::sync::mpsc;
use update_engine::attempt::{after_boot, Boot, Identity, Outcome, Updater};
use update_engine::conf::{Config, Paths};
use update_engine::http::{HttpDownload, HttpOmaha};
use update_engine::schedule::{self, LastCheck};
use update_engine::slots::machine_slots;
use update_engine::status::{Report, Status};
use zbus::object_server::SignalEmitter;

const PATH: &str = "/com/coreos/update1";
const NAME: &str = "com.coreos.update1";
/// Where the payload's public key is baked into `/usr`.
const KEY: &str = "usr/share/update_engine/update-payload-key.pub.pem";

#[derive(Debug, Parser)]
#[command(name = "update_engine", about = "Ferrite's updater on the system bus")]
struct Cli {
    /// Accepted for CoreOS's unit (the daemon always runs in the foreground).
    #[arg(long = "foreground")]
    _foreground: bool,
    /// Accepted for CoreOS's unit (logs always go to standard error).
    #[arg(long = "logtostderr")]
    _logtostderr: bool,
    /// The root the configuration and state are read under (tests).
    #[arg(long, default_value = "/", hide = true)]
    root: PathBuf,
}

/// What the bus asks of the loop.
#[derive(Debug)]
enum Command {
    Attempt,
}

/// The bus object.
struct Manager {
    report: Arc<Mutex<Report>>,
    requested: Arc<AtomicBool>,
    marker: PathBuf,
    tx: mpsc::UnboundedSender<Command>,
}

fn snapshot(report: &Mutex<Report>) -> Report {
    report.lock().map(|r| r.clone()).unwrap_or_default()
}

#[zbus::interface(name = "com.coreos.update1.Manager")]
impl Manager {
    /// An interactive check: now when idle, after the attempt that is running otherwise;
    /// nothing while a reboot is pending.
    async fn attempt_update(&self) {
        if snapshot(&self.report).status != Status::UpdatedNeedReboot {
            // Set before the reply: from here on, the end of an attempt already running is
            // not announced as idle (the requested one follows it), so a client that
            // waits for idle waits for the attempt it asked for.
            self.requested.store(true, Ordering::SeqCst);
            let _ = self.tx.send(Command::Attempt);
        }
    }

    /// From a pending reboot back to idle (the GPT is not reverted); true when idle after.
    async fn reset_status(&self) -> bool {
        let Ok(mut r) = self.report.lock() else {
            return false;
        };
        match r.status {
            Status::Idle => true,
            Status::UpdatedNeedReboot => {
                let _ = std::fs::remove_file(&self.marker);
                r.status = Status::Idle;
                true
            }
            _ => false,
        }
    }

    /// (last checked time, progress, current operation, new version, new size).
    async fn get_status(&self) -> (i64, f64, String, String, i64) {
        let r = snapshot(&self.report);
        (
            r.last_checked_time,
            r.progress,
            r.status.name().to_string(),
            r.new_version,
            r.new_size,
        )
    }

    #[zbus(signal)]
    async fn status_update(
        emitter: &SignalEmitter<'_>,
        last_checked_time: i64,
        progress: f64,
        current_operation: &str,
        new_version: &str,
        new_size: i64,
    ) -> zbus::Result<()>;
}

fn identity(root: &std::path::Path) -> Result<Identity> {
    let read = |rel: &str| {
        std::fs::read_to_string(root.join(rel))
            .map(|s| s.trim().to_string())
            .with_context(|| format!("reading {}", root.join(rel).display()))
    };
    let key_path = root.join(KEY);
    Ok(Identity {
        machine_id: read("etc/machine-id")?,
        boot_id: format!(
            "{{{}}}",
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .unwrap_or_default()
                .trim()
        ),
        arch: std::env::consts::ARCH.to_string(),
        key: update_payload::PublicKey::from_pem(&key_path)?,
    })
}

/// A random number for the schedule's fuzz.
fn rand() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Runs `f` with an updater of the machine (HTTP, its slots) on the blocking pool; the
/// updater's reports go to `reports` as they happen, when given.
fn spawn_with_updater<T: Send + 'static>(
    paths: &Paths,
    identity: &Arc<Identity>,
    reports: Option<mpsc::UnboundedSender<Report>>,
    f: impl FnOnce(&mut Updater<'_>) -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    let (paths, identity) = (paths.clone(), identity.clone());
    tokio::task::spawn_blocking(move || {
        let mut omaha = HttpOmaha::default();
        let mut download = HttpDownload::default();
        let slots = machine_slots(&paths.root);
        let mut on_report = |r: &Report| {
            if let Some(tx) = &reports {
                let _ = tx.send(r.clone());
            }
        };
        f(&mut Updater {
            paths: &paths,
            identity: &identity,
            omaha: &mut omaha,
            download: &mut download,
            slots: slots.as_ref(),
            on_report: &mut on_report,
        })
    })
}

async fn emit(conn: &zbus::Connection, r: &Report) {
    if let Ok(iface) = conn.object_server().interface::<_, Manager>(PATH).await {
        let _ = Manager::status_update(
            iface.signal_emitter(),
            r.last_checked_time,
            r.progress,
            r.status.name(),
            &r.new_version,
            r.new_size,
        )
        .await;
    }
}

/// The daemon's state between events.
struct Daemon {
    paths: Paths,
    identity: Arc<Identity>,
    report: Arc<Mutex<Report>>,
    conn: zbus::Connection,
    running: Option<tokio::task::JoinHandle<Outcome>>,
    next_check: Instant,
    last_delay: Duration,
    last_emitted: (Status, f64, Instant),
    /// A user asked for an update that has not started yet.
    requested: Arc<AtomicBool>,
}

impl Daemon {
    fn set_report(&self, r: &Report) {
        if let Ok(mut shared) = self.report.lock() {
            *shared = r.clone();
        }
    }

    /// A status change is always signalled; progress at most every 1 % or 10 s. The end
    /// of an attempt is not, while a user's request waits to run after it.
    async fn on_report(&mut self, r: Report) {
        if r.status == Status::Idle && self.requested.load(Ordering::SeqCst) {
            return;
        }
        self.set_report(&r);
        let (status, progress, at) = self.last_emitted;
        if r.status != status
            || r.progress - progress >= 0.01
            || at.elapsed() >= Duration::from_secs(10)
        {
            emit(&self.conn, &r).await;
            self.last_emitted = (r.status, r.progress, Instant::now());
        }
    }

    fn start(&mut self, source: InstallSource, reports: &mpsc::UnboundedSender<Report>) {
        if self.running.is_some() {
            // A user's request during an attempt runs when that one ends (it may have
            // started before what the user is waiting for).
            return;
        }
        if source == InstallSource::OnDemand {
            self.requested.store(false, Ordering::SeqCst);
        }
        let current = snapshot(&self.report);
        if current.status == Status::UpdatedNeedReboot {
            // A reboot is pending: a ping instead of a check.
            spawn_with_updater(&self.paths, &self.identity, None, |u| u.ping());
            return;
        }
        self.running = Some(spawn_with_updater(
            &self.paths,
            &self.identity,
            Some(reports.clone()),
            move |u| {
                let mut report = current;
                u.attempt(source, &mut report, now())
            },
        ));
    }

    fn finished(&mut self, outcome: Outcome) {
        let conf = Config::load(&self.paths.root);
        let last = match &outcome {
            Outcome::NoUpdate { poll_interval } => LastCheck {
                poll_interval: *poll_interval,
                server_busy: false,
            },
            Outcome::Failed { server_busy, .. } => LastCheck {
                poll_interval: None,
                server_busy: *server_busy,
            },
            _ => LastCheck::default(),
        };
        match &outcome {
            Outcome::Failed { code, reason, .. } => {
                eprintln!("update_engine: the attempt failed (code {code}): {reason}");
            }
            Outcome::Updated { version, slot } => {
                eprintln!("update_engine: {version} installed on {slot}; a reboot is needed");
            }
            Outcome::Ignored { version } => {
                eprintln!("update_engine: {version} rolled back here before; not installed");
            }
            Outcome::OnTrial => {
                eprintln!("update_engine: the running /usr is on trial; no check until the health gate marks it good");
            }
            Outcome::NoUpdate { .. } => {}
        }
        let delay = schedule::next_check(conf.check_interval(), self.last_delay, last, rand());
        self.last_delay = delay;
        self.next_check = Instant::now() + delay;
    }
}

async fn run(cli: Cli) -> Result<()> {
    let paths = Paths::under(&cli.root);
    let identity = Arc::new(identity(&cli.root)?);
    let slots = machine_slots(&paths.root);
    let mut report = Report::default();
    match after_boot(&paths, slots.as_ref())? {
        Boot::RebootPending => report.status = Status::UpdatedNeedReboot,
        Boot::RolledBack { version } => {
            eprintln!("update_engine: {version} did not stay booted: rolled back; it will not be installed again");
        }
        Boot::Booted { version } => eprintln!("update_engine: now running {version}"),
        Boot::OnTrial { version } => eprintln!(
            "update_engine: now running {version} on trial, until the health gate marks it good"
        ),
        Boot::Nothing => {}
    }
    let shared = Arc::new(Mutex::new(report.clone()));
    let (tx, mut commands) = mpsc::unbounded_channel();
    let requested = Arc::new(AtomicBool::new(false));
    let manager = Manager {
        report: shared.clone(),
        requested: requested.clone(),
        marker: paths.marker.clone(),
        tx,
    };
    let conn = zbus::connection::Builder::system()?
        .serve_at(PATH, manager)?
        .name(NAME)?
        .build()
        .await
        .context("taking com.coreos.update1 on the system bus")?;
    let conf = Config::load(&paths.root);
    let first = schedule::first_check(conf.check_interval(), rand());
    let mut d = Daemon {
        paths,
        identity,
        report: shared,
        conn,
        running: None,
        next_check: Instant::now() + first,
        last_delay: first,
        last_emitted: (report.status, 0.0, Instant::now()),
        requested,
    };
    emit(&d.conn, &report).await;
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let running = async {
            match d.running.as_mut() {
                Some(h) => h.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => return Ok(()),
            Some(Command::Attempt) = commands.recv() => d.start(InstallSource::OnDemand, &report_tx),
            Some(r) = reports.recv() => d.on_report(r).await,
            done = running => {
                d.running = None;
                // Reports sent before the end are handled first.
                while let Ok(r) = reports.try_recv() {
                    d.on_report(r).await;
                }
                match done {
                    Ok(outcome) => d.finished(outcome),
                    Err(e) => {
                        eprintln!("update_engine: the attempt stopped: {e}");
                        d.finished(Outcome::Failed { code: 1, reason: e.to_string(), server_busy: false });
                    }
                }
                if d.requested.load(Ordering::SeqCst) {
                    d.start(InstallSource::OnDemand, &report_tx);
                }
            }
            () = tokio::time::sleep_until(d.next_check.into()) => {
                d.next_check = Instant::now() + d.last_delay;
                d.start(InstallSource::Scheduler, &report_tx);
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(update_engine::gflags_args(std::env::args()));
    update_engine::run_main("update_engine", run(cli), |()| {
        std::process::ExitCode::SUCCESS
    })
}

//! `locksmithd`: reboots the machine once update_engine has installed an update — in the
//! reboot window, and under `etcd-lock` only while holding a slot of the cluster's reboot
//! semaphore — and gives its slot back after the boot, once the running `/usr` is marked
//! good. One event loop (tokio, one thread) moving through explicit phases: steady
//! (waiting for `UPDATE_STATUS_UPDATED_NEED_REBOOT`, giving back an old slot), the window,
//! the lock, the reboot. Settings from the environment (`locksmith::config`); FleetLock
//! is served too when `LOCKSMITHD_FLEETLOCK_LISTEN` names an address.

use std::time::Duration;

use futures_util::StreamExt;
use locksmith::config::{Config, Strategy};
use locksmith::etcd::{Error, LockClient};
use locksmith::semaphore::Refused;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{sleep, Instant};

const NEED_REBOOT: &str = "UPDATE_STATUS_UPDATED_NEED_REBOOT";
const INITIAL: Duration = Duration::from_secs(5);
const MAX: Duration = Duration::from_secs(300);
const LOGINS_DELAY: Duration = Duration::from_secs(300);
const TIMEOUT: Duration = Duration::from_secs(5);

fn log(msg: &str) {
    eprintln!("{msg}");
}

/// Go's `time.Duration` text for whole seconds (`5s`, `1m20s`, `1h0m0s`).
fn go(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec}s"),
        (h, m, sec) => format!("{h}h{m}m{sec}s"),
    }
}

fn backoff(d: Duration) -> Duration {
    (d * 2).min(MAX)
}

fn machine_id() -> Option<String> {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// best-effort's question, at each decision: does this machine run etcd? (`failed` counts,
/// as in CoreOS.)
fn runs_etcd() -> bool {
    let mut cmd = host_command::command("systemctl");
    cmd.args([
        "show",
        "-p",
        "ActiveState",
        "--value",
        "etcd.service",
        "etcd2.service",
    ]);
    host_command::run(&mut cmd)
        .map(|out| {
            out.lines()
                .any(|l| !l.trim().is_empty() && l.trim() != "inactive")
        })
        .unwrap_or(false)
}

fn uses_lock(strategy: Strategy) -> bool {
    match strategy {
        Strategy::EtcdLock => true,
        Strategy::BestEffort => runs_etcd(),
        Strategy::Reboot | Strategy::Off => false,
    }
}

/// update_engine's status, as its signal or `GetStatus` gives it.
async fn get_status(conn: &zbus::Connection) -> zbus::Result<String> {
    let reply = conn
        .call_method(
            Some("com.coreos.update1"),
            "/com/coreos/update1",
            Some("com.coreos.update1.Manager"),
            "GetStatus",
            &(),
        )
        .await?;
    let (_, _, op, _, _): (i64, f64, String, String, i64) = reply.body().deserialize()?;
    Ok(op)
}

/// Gives this machine's slot back if it holds one; Ok when it is not held (any more).
async fn unlock_if_held(c: &mut LockClient, id: &str) -> Result<(), Error> {
    match c.unlock(id).await {
        Ok(()) => {
            log("Unlocked existing lock for this machine");
            Ok(())
        }
        Err(Error::Refused(Refused::HolderNotExist)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `msg` to every logged-in terminal (`/run/utmp`'s user processes), as
/// locksmith's broadcast did; returns how many it reached.
fn broadcast(msg: &str) -> usize {
    use std::io::Write as _;
    // glibc's x86_64 `struct utmp`: 384 bytes; ut_type (short) at 0, ut_line[32] at 8.
    const SIZE: usize = 384;
    const USER_PROCESS: i16 = 7;
    let Ok(data) = std::fs::read("/run/utmp") else {
        return 0;
    };
    let mut reached = 0;
    for rec in data.chunks_exact(SIZE) {
        if i16::from_ne_bytes([rec[0], rec[1]]) != USER_PROCESS {
            continue;
        }
        let line: String = rec[8..40]
            .iter()
            .take_while(|b| **b != 0)
            .map(|b| char::from(*b))
            .collect();
        if line.is_empty() || line.contains('/') && !line.starts_with("pts/") || line.contains("..")
        {
            continue;
        }
        if let Ok(mut tty) = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/dev/{line}"))
        {
            reached += 1;
            let _ = write!(
                tty,
                "\r{:79}\r\n{:<79.79}\x07\x07\r\n{:<79.79}\r\n\r{:79}\r\n",
                " ", "Broadcast message from locksmithd:", msg, " "
            );
        }
    }
    reached
}

#[allow(
    clippy::too_many_lines,
    reason = "the daemon's phases, in order, as one loop"
)]
async fn run() -> anyhow::Result<u8> {
    let cfg = match Config::from(|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            log(&format!("locksmithd: {e}"));
            return Ok(1);
        }
    };
    if cfg.strategy == Strategy::Off {
        log("Reboot strategy is \"off\" - locksmithd is exiting.");
        return Ok(0);
    }
    let Some(id) = machine_id() else {
        log("Cannot read machine-id");
        return Ok(1);
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    if let Ok(addr) = std::env::var("LOCKSMITHD_FLEETLOCK_LISTEN") {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        log(&format!("serving FleetLock on {addr}"));
        let app = locksmith::fleetlock::router(locksmith::fleetlock::Service {
            endpoints: cfg.endpoints.clone(),
            timeout: TIMEOUT,
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    let conn = zbus::Connection::system().await?;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("com.coreos.update1.Manager")?
        .member("StatusUpdate")?
        .path("/com/coreos/update1")?
        .build();
    let mut signals = zbus::MessageStream::for_match_rule(rule, &conn, Some(16)).await?;
    let mut status = get_status(&conn).await.unwrap_or_default();
    log(&format!(
        "locksmithd starting currentOperation={status:?} strategy={:?}",
        cfg.strategy.name()
    ));

    // Steady: wait for a reboot to be needed; meanwhile give back a slot an earlier boot
    // took — once this /usr is marked good (a /usr on trial keeps the slot, so the next
    // machine waits until this one proved the release).
    let mut unlock_pending = uses_lock(cfg.strategy);
    let mut interval = INITIAL;
    let mut next_unlock = Instant::now();
    let mut said_trial = false;
    while status != NEED_REBOOT {
        tokio::select! {
            _ = term.recv() => return Ok(0),
            _ = int.recv() => return Ok(0),
            msg = signals.next() => {
                let Some(Ok(msg)) = msg else {
                    anyhow::bail!("the system bus closed the signal stream");
                };
                if let Ok((t, p, op, v, n)) = msg.body().deserialize::<(i64, f64, String, String, i64)>() {
                    log(&format!("{{{t} {p} {op} {v} {n}}}"));
                    status = op;
                }
            }
            () = tokio::time::sleep_until(next_unlock), if unlock_pending => {
                if !locksmith::running_usr_good() {
                    if !said_trial {
                        log("This /usr is on trial: keeping the reboot lock until it is marked good.");
                        said_trial = true;
                    }
                    // Reading the partition table: cheap, so often.
                    next_unlock = Instant::now() + Duration::from_secs(1);
                    continue;
                }
                let unlocked = match LockClient::connect(&cfg.endpoints, &cfg.group, TIMEOUT).await {
                    Ok(mut c) => unlock_if_held(&mut c, &id).await,
                    Err(e) => Err(e),
                };
                match unlocked {
                    Ok(()) => unlock_pending = false,
                    Err(e) => {
                        interval = backoff(interval);
                        log(&format!("Unlocking old locks failed: {e}. Retrying in {}.", go(interval)));
                        next_unlock = Instant::now() + interval;
                    }
                }
            }
        }
    }

    // The window, then the lock; the window is looked at again after every failed try,
    // so a long wait for the lock does not end in a reboot outside it.
    let mut first = true;
    let mut interval = INITIAL;
    let mut client: Option<LockClient> = None;
    loop {
        if let Some(w) = cfg.window {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
            let wait = w.duration_to_start(now);
            if wait > 0 {
                let d = Duration::from_secs(wait.unsigned_abs());
                log(&format!("Waiting for {} to reboot.", go(d)));
                tokio::select! {
                    _ = term.recv() => return Ok(0),
                    _ = int.recv() => return Ok(0),
                    () = sleep(d) => {}
                }
            }
        } else if first {
            log("No configured reboot window");
        }
        if !uses_lock(cfg.strategy) {
            break;
        }
        let attempt = async {
            let c = match client.as_mut() {
                Some(c) => c,
                None => {
                    client.insert(LockClient::connect(&cfg.endpoints, &cfg.group, TIMEOUT).await?)
                }
            };
            if first {
                unlock_if_held(c, &id).await?;
            }
            match c.lock(&id).await {
                Ok(()) | Err(Error::Refused(Refused::HolderExists)) => Ok(()),
                Err(e) => Err(e),
            }
        };
        match attempt.await {
            Ok(()) => break,
            Err(e) => {
                if !matches!(e, Error::Refused(_)) {
                    client = None;
                }
                first = false;
                log(&format!(
                    "Failed to acquire lock: {e}. Retrying in {}.",
                    go(interval)
                ));
                // Sooner when the semaphore changes (a slot given back); the wait grows
                // only when it ran out.
                let changed = tokio::select! {
                    _ = term.recv() => return Ok(0),
                    _ = int.recv() => return Ok(0),
                    changed = async {
                        match client.as_mut() {
                            Some(c) => c.wait_change(interval).await,
                            None => {
                                sleep(interval).await;
                                false
                            }
                        }
                    } => changed,
                };
                if !changed {
                    interval = backoff(interval);
                }
            }
        }
    }

    // The reboot.
    if broadcast("System reboot in 5 minutes!") > 0 {
        log("Logins detected, delaying reboot for 5 minutes.");
        tokio::select! {
            _ = term.recv() => return Ok(0),
            _ = int.recv() => return Ok(0),
            () = sleep(LOGINS_DELAY) => {}
        }
    }
    locksmith::logind_reboot().await?;
    log("Reboot sent. Going to sleep.");
    tokio::select! {
        _ = term.recv() => Ok(0),
        _ = int.recv() => Ok(0),
        () = sleep(Duration::from_secs(7 * 86_400)) => Ok(0),
    }
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("locksmithd: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("locksmithd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

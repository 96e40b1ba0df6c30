//! `update_engine_client`: CoreOS's client of `com.coreos.update1` (updates.md §3.4), its
//! flags in gflags' forms (`-status` and `--status`) and its outputs: `-status` prints the
//! five `KEY=value` lines; `-check_for_update` asks for a check and returns; `-update` asks
//! and follows the status (its signals, and a poll every 5 s) until `UPDATED_NEED_REBOOT`
//! ("Update succeeded -- reboot needed.", 0) or idle again ("Update failed.", 1); `-reset_status`; `-watch_for_updates` prints every
//! `StatusUpdate` until stopped.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use update_engine::status::{Report, Status};

#[zbus::proxy(
    interface = "com.coreos.update1.Manager",
    default_service = "com.coreos.update1",
    default_path = "/com/coreos/update1"
)]
trait Manager {
    fn attempt_update(&self) -> zbus::Result<()>;
    fn reset_status(&self) -> zbus::Result<bool>;
    fn get_status(&self) -> zbus::Result<(i64, f64, String, String, i64)>;
    #[zbus(signal)]
    fn status_update(
        &self,
        last_checked_time: i64,
        progress: f64,
        current_operation: String,
        new_version: String,
        new_size: i64,
    ) -> zbus::Result<()>;
}

#[derive(Debug, Parser)]
#[command(
    name = "update_engine_client",
    about = "Ask update_engine for its status or an update"
)]
struct Cli {
    /// Print the current status.
    #[arg(long)]
    status: bool,
    /// Ask for an update check and return.
    #[arg(long = "check_for_update")]
    check_for_update: bool,
    /// Ask for an update and wait until it is installed or fails.
    #[arg(long)]
    update: bool,
    /// From a pending reboot back to idle.
    #[arg(long = "reset_status")]
    reset_status: bool,
    /// Print every status change until stopped.
    #[arg(long = "watch_for_updates")]
    watch_for_updates: bool,
}

fn report(
    (last_checked_time, progress, op, new_version, new_size): (i64, f64, String, String, i64),
) -> Report {
    Report {
        last_checked_time,
        progress,
        status: Status::from_name(&op).unwrap_or(Status::Idle),
        new_version,
        new_size,
    }
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

async fn run(cli: Cli) -> Result<u8> {
    let conn = zbus::Connection::system()
        .await
        .context("connecting to the system bus")?;
    let m = ManagerProxy::new(&conn)
        .await
        .context("reaching com.coreos.update1")?;
    if cli.reset_status {
        let ok = m.reset_status().await?;
        if !ok {
            bail!("ResetStatus failed: update_engine is neither idle nor waiting for a reboot");
        }
        eprintln!("Status reset. (The partition table is left as it is: the other slot still boots next unless you prioritize this one with cgpt.)");
        return Ok(0);
    }
    if cli.watch_for_updates {
        let mut signals = m.receive_status_update().await?;
        eprintln!("Watching for status updates.");
        while let Some(s) = signals.next().await {
            let a = s.args()?;
            print(
                &Report {
                    last_checked_time: a.last_checked_time,
                    progress: a.progress,
                    status: Status::from_name(&a.current_operation).unwrap_or(Status::Idle),
                    new_version: a.new_version.clone(),
                    new_size: a.new_size,
                }
                .lines(),
            )?;
        }
        return Ok(0);
    }
    // Subscribed before asking, so no status the attempt passes through is missed.
    let mut signals = if cli.update {
        Some(m.receive_status_update().await?)
    } else {
        None
    };
    if cli.check_for_update || cli.update {
        eprintln!("Initiating update check and install.");
        m.attempt_update().await?;
    }
    if let Some(signals) = signals.as_mut() {
        // Signals sent before the daemon took the request (delivered before its reply)
        // tell of an earlier attempt.
        while let Some(Some(_)) = futures_util::FutureExt::now_or_never(signals.next()) {}
        // The check starts on the daemon's loop (after one already running): it is over
        // when the daemon is idle again having left idle (seen in a signal or a poll), or —
        // should a signal be lost — after a minute idle.
        let mut left_idle = false;
        let asked = std::time::Instant::now();
        loop {
            let r = tokio::select! {
                Some(s) = signals.next() => {
                    let a = s.args()?;
                    report((a.last_checked_time, a.progress, a.current_operation.clone(), a.new_version.clone(), a.new_size))
                }
                () = tokio::time::sleep(Duration::from_secs(5)) => report(m.get_status().await?),
            };
            eprintln!("{}", r.lines().replace('\n', " ").trim());
            match r.status {
                Status::UpdatedNeedReboot => {
                    print("Update succeeded -- reboot needed.\n")?;
                    return Ok(0);
                }
                Status::Idle if left_idle || asked.elapsed() > Duration::from_secs(60) => {
                    print("Update failed.\n")?;
                    return Ok(1);
                }
                Status::Idle => {}
                _ => left_idle = true,
            }
        }
    }
    if cli.status || !(cli.check_for_update || cli.update) {
        print(&report(m.get_status().await?).lines())?;
    }
    Ok(0)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(update_engine::gflags_args(std::env::args()));
    update_engine::run_main(
        "update_engine_client",
        run(cli),
        std::process::ExitCode::from,
    )
}

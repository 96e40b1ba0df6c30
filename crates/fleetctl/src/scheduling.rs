//! Commands that change what the cluster runs — `submit`, `load`, `start`, `stop`,
//! `unload`, `restart`, `destroy` — with fleet's order (find or create every unit, then set
//! the desired states, then wait), messages and waiting.

use std::process::ExitCode;
use std::time::Duration;

use fleet_model::name::mangle;
use fleet_model::JobState;
use fleet_store::JobRecord;

use crate::cli::{self, on};
use crate::client::Client;
use crate::creation::{lazy_create, Ensured, IN_FLIGHT};
use crate::listing::machine_cell;
use crate::{err, out, registry, remote, Global, Outcome};

/// Waits until each of `names` reports `want` (fleet's messages as each does), looking
/// every half second, at most `attempts` times (0: no limit).
async fn wait_for(
    reg: &Client,
    names: &[String],
    want: JobState,
    attempts: u32,
) -> Result<(), String> {
    if names.is_empty() {
        return Ok(());
    }
    let mut tries = 0u32;
    let mut pending: Vec<String> = names.to_vec();
    loop {
        let (jobs, states, machines) = reg.snapshot().await?;
        pending.retain(|n| {
            let Some(j) = jobs.iter().find(|j| &j.name == n) else {
                return true;
            };
            // A global unit has no current state: fleet waited for its desired state.
            if j.global {
                if j.target_state != want {
                    return true;
                }
                out(format!("Unit {n} "));
                return false;
            }
            if j.current_state(&states) != want {
                return true;
            }
            match (want, &j.target) {
                (JobState::Inactive, _) | (_, None) => out(format!("Unit {n} {want}")),
                (_, Some(t)) => out(format!(
                    "Unit {n} {want} on {}",
                    machine_cell(t, &machines, false)
                )),
            }
            false
        });
        if pending.is_empty() {
            return Ok(());
        }
        tries += 1;
        if attempts > 0 && tries >= attempts {
            return Err(format!(
                "timed out waiting for unit {} to report state {want}",
                pending[0]
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// fleet 1.0's `restart`: a unit that is not running yet is created and started, one that
/// runs is stopped and started again (waiting for each step, one unit after another: a
/// rolling restart); a global unit is restarted by systemd on every machine it runs on.
pub async fn restart(g: &Global, f: cli::Restart) -> Outcome {
    let units = f.units;
    if units.is_empty() {
        err("No units given");
        return Ok(ExitCode::SUCCESS);
    }
    let reg = registry(g).await?;
    let jobs = reg.jobs().await?;
    let states = reg.states().await?;
    let attempts = block_attempts(f.block_attempts);
    // As fleet: the units that exist are looked up before any is created.
    let existing: Vec<JobRecord> = units
        .iter()
        .filter_map(|u| jobs.iter().find(|j| j.name == mangle(u)).cloned())
        .collect();
    if let Err(e) = lazy_create(&reg, &units, &jobs, None).await {
        err(format!("Error creating units: {e}"));
        return Ok(ExitCode::FAILURE);
    }
    let step = |name: String, state: JobState| {
        let reg = &reg;
        async move {
            reg.set_target_state(&name, state)
                .await
                .map_err(|e| format!("Error setting target state for unit {name}: {e}"))?;
            wait_for(reg, std::slice::from_ref(&name), state, attempts)
                .await
                .map_err(|e| format!("Error waiting for unit states, exit status: {e}"))
        }
    };
    let mut globals = Vec::new();
    for j in existing {
        if j.global {
            globals.push(j.name);
            continue;
        }
        let steps: &[JobState] = match j.current_state(&states) {
            JobState::Inactive => {
                err(format!(
                    "Unable to restart unit {} in state inactive",
                    j.name
                ));
                continue;
            }
            JobState::Loaded => &[JobState::Launched],
            JobState::Launched => &[JobState::Loaded, JobState::Launched],
        };
        for s in steps {
            if let Err(e) = step(j.name.clone(), *s).await {
                err(e);
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    if !globals.is_empty() {
        let code = remote::restart_globals(g, &reg, &globals).await?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--block-attempts=N` (0, the default, or less: no limit).
fn block_attempts(given: Option<i64>) -> u32 {
    given.map_or(0, |n| {
        u32::try_from(n).unwrap_or(if n < 0 { 0 } else { u32::MAX })
    })
}

/// `load` and `start` (`want`): fleet's lazy creation (with `--replace`), then the
/// desired states.
pub async fn schedule(g: &Global, f: cli::Schedule, want: JobState) -> Outcome {
    let replace = on(f.replace).then_some(want);
    let how = How {
        no_block: on(f.blocking.no_block),
        attempts: block_attempts(f.blocking.block_attempts),
        stop: false,
    };
    set_state(g, &f.units, want, replace, how).await
}

/// `unload`, and with `stop` true `stop` (desired state `loaded`, with stop's checks and
/// words); unknown units are skipped.
pub async fn unschedule(g: &Global, f: cli::Unschedule, stop: bool) -> Outcome {
    let want = if stop {
        JobState::Loaded
    } else {
        JobState::Inactive
    };
    let how = How {
        no_block: on(f.blocking.no_block),
        attempts: block_attempts(f.blocking.block_attempts),
        stop,
    };
    set_state(g, &f.units, want, None, how).await
}

/// How a state change goes.
#[derive(Debug, Clone, Copy)]
struct How {
    /// `--no-block`: say what was triggered, do not wait.
    no_block: bool,
    /// `--block-attempts` (0: no limit).
    attempts: u32,
    /// `stop`'s checks and words.
    stop: bool,
}

/// Sets the desired state of `units` to `want` as fleet's commands did: first every unit
/// is found or created (and new ones reported), then the desired states are set, then the
/// command waits.
async fn set_state(
    g: &Global,
    units: &[String],
    want: JobState,
    replace: Option<JobState>,
    how: How,
) -> Outcome {
    let stop = how.stop;
    let reg = registry(g).await?;
    let jobs = reg.jobs().await?;
    let states = reg.states().await?;
    let verb = match want {
        JobState::Inactive => "unload",
        JobState::Loaded => "load",
        JobState::Launched => "start",
    };
    // As fleet: first every unit is found or created (and new ones reported), then the
    // desired states are set, then the command waits.
    let mut names = Vec::new();
    let mut wait = Vec::new();
    let mut created = Vec::new();
    let mut replaced: Vec<String> = Vec::new();
    if want == JobState::Inactive || stop {
        for u in units {
            let n = mangle(u);
            // Unknown units are silently skipped.
            if let Some(j) = jobs.iter().find(|j| j.name == n) {
                // A global unit has no current state to check (fleet 1.0).
                if stop && !j.global && j.current_state(&states) == JobState::Inactive {
                    err(format!("Unable to stop unit {n} in state inactive"));
                    return Ok(ExitCode::FAILURE);
                }
                names.push(n);
            }
        }
    } else {
        let found = match lazy_create(&reg, units, &jobs, replace).await {
            Ok((found, made)) => {
                created = made;
                found
            }
            Err(e) => {
                err(format!("Error creating units: {e}"));
                return Ok(ExitCode::FAILURE);
            }
        };
        // fleet 1.0's protocol: a replaced unit is inactive; wait for that (as fleet's
        // lazy creation did), then ask for the wanted state like for any other unit.
        replaced = found
            .iter()
            .filter(|(_, how)| *how == Ensured::Replaced)
            .map(|(n, _)| n.clone())
            .collect();
        if let Err(e) = wait_for(&reg, &replaced, JobState::Inactive, how.attempts).await {
            err(format!("Error waiting on unit creation: {e}"));
            return Ok(ExitCode::FAILURE);
        }
        names.extend(found.into_iter().map(|(n, _)| n));
    }
    let mut changes = Vec::new();
    for name in names {
        let existing = jobs.iter().find(|j| j.name == name);
        // fleet's stop triggers a global unit whatever its state.
        let stop_global = stop && existing.is_some_and(|j| j.global);
        if existing.is_some_and(|j| j.target_state == want)
            && !replaced.contains(&name)
            && !stop_global
        {
            continue;
        }
        let global = existing.is_some_and(|j| j.global)
            || created.iter().any(|(n, global)| *n == name && *global);
        changes.push((name, global));
    }
    let results: Vec<Result<(), String>> = {
        use futures_util::{stream, StreamExt as _};
        let reg = &reg;
        stream::iter(&changes)
            .map(|(name, _)| async move { reg.set_target_state(name, want).await })
            .buffered(IN_FLIGHT)
            .collect()
            .await
    };
    for ((name, global), r) in changes.into_iter().zip(results) {
        r?;
        if global {
            out(format!(
                "Triggered global unit {name} {}",
                if stop { "stop" } else { verb }
            ));
        } else {
            wait.push(name);
        }
    }
    if how.no_block {
        for n in &wait {
            out(format!(
                "Triggered unit {n} {}",
                if stop { "stop" } else { verb }
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(e) = wait_for(&reg, &wait, want, how.attempts).await {
        err(format!("Error waiting for units: {e}"));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `fleetctl submit [--replace] UNIT...`.
pub async fn submit(g: &Global, f: cli::Submit) -> Outcome {
    let reg = registry(g).await?;
    let jobs = reg.jobs().await?;
    let replace = on(f.replace).then_some(JobState::Inactive);
    if let Err(e) = lazy_create(&reg, &f.units, &jobs, replace).await {
        err(format!("Error creating units: {e}"));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `fleetctl destroy UNIT...`.
pub async fn destroy(g: &Global, f: cli::Units) -> Outcome {
    let reg = registry(g).await?;
    let mut code = ExitCode::SUCCESS;
    for u in &f.units {
        let name = mangle(u);
        match reg.destroy_unit(&name).await {
            Ok(true) => out(format!("Destroyed {name}")),
            Ok(false) => {
                err("Error destroying units: unit does not exist");
                code = ExitCode::FAILURE;
            }
            Err(e) => {
                err(format!("Error destroying units: {e}"));
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

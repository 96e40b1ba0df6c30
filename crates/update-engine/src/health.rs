//! The health gate: what marks a newly booted `/usr` good. CoreOS's update_engine marked
//! the booted slot successful 45 s after it started, healthy or not; Ferrite marks it only
//! once the machine is healthy (greenboot's pattern, on systemd's `boot-complete.target`):
//!
//! - every unit a user made `RequiredBy=boot-complete.target` succeeded (the target is
//!   active; systemd's own convention for boot checks), and
//! - each of etcd2, fleet and docker that this boot started (active, starting or failed)
//!   is active and answers: etcd's `/health`, fleet's API, docker's `/_ping`.
//!
//! A slot is judged only while it is on trial (booted from a try, not yet successful): a
//! slot already good is left alone however the machine is, so a sick machine is not
//! rebooted in a loop. While a reboot into a newer update is pending (update_engine's
//! marker), nothing is marked (CoreOS bug #1625 lost updates to a mark made then). A slot
//! that stays unhealthy past the deadline fails the gate: the binary exits 1 and its unit's
//! `FailureAction=reboot` reboots; the slot's try is spent, so the old slot boots, and
//! update_engine reports the rollback.
//!
//! [`decide`] is the rule as a pure function; [`Probe`] is the machine, asked through
//! `systemctl` and the services' own endpoints by `ferrite-boot-health`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coreos_disk::Disk;

/// The state systemd reports for a unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    /// `LoadState` (`loaded`, `not-found`, …).
    pub load: String,
    /// `ActiveState` (`active`, `activating`, `failed`, `inactive`, …).
    pub active: String,
}

impl UnitState {
    /// This boot started the unit (it runs, starts, or failed). A unit that is merely
    /// enabled but was not started — docker waiting on its socket — is not judged.
    pub fn configured(&self) -> bool {
        self.load == "loaded"
            && matches!(
                self.active.as_str(),
                "active" | "activating" | "reloading" | "failed" | "deactivating"
            )
    }
}

/// The machine, as the gate asks it.
pub trait Probe {
    /// The state of `unit`.
    fn unit(&self, unit: &str) -> UnitState;
    /// Whether the service `unit` runs answers its health endpoint (`Err`: why not).
    fn answers(&self, unit: &str) -> Result<(), String>;
}

/// The services whose health the gate checks when the boot runs them.
pub const SERVICES: [&str; 3] = ["etcd2.service", "fleet.service", "docker.service"];

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// `None` when healthy, else why not.
    pub problem: Option<String>,
}

/// Every check the gate makes, once.
pub fn checks(probe: &dyn Probe) -> Vec<Check> {
    let mut out = Vec::new();
    let target = probe.unit("boot-complete.target");
    out.push(Check {
        name: "boot-complete.target".into(),
        problem: (target.active != "active").then(|| {
            format!(
                "is {} (a unit required by it failed)",
                if target.active.is_empty() {
                    "unknown"
                } else {
                    &target.active
                }
            )
        }),
    });
    for unit in SERVICES {
        let state = probe.unit(unit);
        if !state.configured() {
            continue;
        }
        let problem = if state.active != "active" {
            Some(format!("is {}", state.active))
        } else {
            probe.answers(unit).err()
        };
        out.push(Check {
            name: unit.to_string(),
            problem,
        });
    }
    out
}

/// Whether a failed check can still come right by waiting (a service still starting),
/// or is final (a required unit failed, a service failed).
pub fn is_final(check: &Check) -> bool {
    check.name == "boot-complete.target"
        || check.problem.as_deref().is_some_and(|p| p == "is failed")
}

/// The booted slot's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Marked successful already.
    Good,
    /// Booted from a try, not yet successful.
    OnTrial,
}

/// What the gate does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing to judge (the slot is good, or a reboot into another update is pending).
    Leave,
    /// Healthy: mark the slot successful.
    MarkGood,
    /// Not yet healthy: look again.
    Wait,
    /// Unhealthy for good, or past the deadline: fail (and reboot).
    Fail,
}

/// The gate's rule.
pub fn decide(
    standing: Standing,
    reboot_pending: bool,
    checks: &[Check],
    deadline_passed: bool,
) -> Action {
    if standing == Standing::Good || reboot_pending {
        return Action::Leave;
    }
    if checks.iter().all(|c| c.problem.is_none()) {
        return Action::MarkGood;
    }
    if deadline_passed || checks.iter().any(|c| c.problem.is_some() && is_final(c)) {
        return Action::Fail;
    }
    Action::Wait
}

/// How long a slot on trial may take to become healthy: `HEALTH_TIMEOUT` (seconds) in
/// `update.conf`, else 5 minutes.
pub fn deadline(conf: &crate::conf::Config) -> Duration {
    conf.get("HEALTH_TIMEOUT")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs)
}

/// The disk and partition of the booted slot: those `/run/ferrite/slots` names under
/// `root` (an nspawn machine), else the partition `/usr` is mounted from.
pub fn booted(root: &Path) -> Result<(PathBuf, String), String> {
    match crate::slots::ImageSlots::from_file(&root.join("run/ferrite/slots")) {
        Some(s) => Ok((s.disk, s.active)),
        None => crate::slots::MachineSlots::default().active(),
    }
}

/// The booted slot's standing on its disk.
pub fn standing(disk: &Path, label: &str) -> Result<Standing, String> {
    let p = Disk::open(disk)
        .partition(label)
        .map_err(|e| e.to_string())?;
    Ok(if p.prio.successful() {
        Standing::Good
    } else {
        Standing::OnTrial
    })
}

/// Marks the booted slot successful (its priority and tries as they are).
pub fn mark_good(disk: &Path, label: &str) -> Result<(), String> {
    let d = Disk::open(disk);
    let p = d.partition(label).map_err(|e| e.to_string())?;
    d.set_gptprio(p.number, p.prio.with_successful(true))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Machine(Vec<(&'static str, UnitState, Result<(), String>)>);

    fn unit(load: &str, active: &str) -> UnitState {
        UnitState {
            load: load.into(),
            active: active.into(),
        }
    }

    impl Probe for Machine {
        fn unit(&self, name: &str) -> UnitState {
            self.0
                .iter()
                .find(|(n, _, _)| *n == name)
                .map(|(_, s, _)| s.clone())
                .unwrap_or_else(|| unit("not-found", "inactive"))
        }
        fn answers(&self, name: &str) -> Result<(), String> {
            self.0
                .iter()
                .find(|(n, _, _)| *n == name)
                .map_or(Ok(()), |(_, _, r)| r.clone())
        }
    }

    fn complete() -> (&'static str, UnitState, Result<(), String>) {
        ("boot-complete.target", unit("loaded", "active"), Ok(()))
    }

    #[test]
    fn services_the_boot_does_not_run_are_not_checked() {
        let m = Machine(vec![
            complete(),
            ("etcd2.service", unit("loaded", "inactive"), Ok(())),
            ("docker.service", unit("loaded", "inactive"), Ok(())),
            ("fleet.service", unit("loaded", "failed"), Ok(())),
        ]);
        let c = checks(&m);
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["boot-complete.target", "fleet.service"]);
        assert_eq!(c[1].problem.as_deref(), Some("is failed"));
        assert_eq!(
            decide(Standing::OnTrial, false, &c, false),
            Action::Fail,
            "a service that failed fails the gate at once"
        );
    }

    #[test]
    fn a_starting_service_is_waited_for_until_the_deadline() {
        let m = Machine(vec![
            complete(),
            ("etcd2.service", unit("loaded", "activating"), Ok(())),
        ]);
        let c = checks(&m);
        assert_eq!(decide(Standing::OnTrial, false, &c, false), Action::Wait);
        assert_eq!(decide(Standing::OnTrial, false, &c, true), Action::Fail);
        let m = Machine(vec![
            complete(),
            (
                "etcd2.service",
                unit("loaded", "active"),
                Err("no leader".into()),
            ),
        ]);
        let c = checks(&m);
        assert_eq!(c[1].problem.as_deref(), Some("no leader"));
        assert_eq!(decide(Standing::OnTrial, false, &c, false), Action::Wait);
    }

    #[test]
    fn a_failed_boot_check_fails_the_gate_at_once() {
        let m = Machine(vec![(
            "boot-complete.target",
            unit("loaded", "inactive"),
            Ok(()),
        )]);
        let c = checks(&m);
        assert!(c[0]
            .problem
            .as_deref()
            .unwrap()
            .contains("required by it failed"));
        assert_eq!(decide(Standing::OnTrial, false, &c, false), Action::Fail);
    }

    #[test]
    fn only_a_slot_on_trial_is_judged_and_never_while_a_reboot_is_pending() {
        let healthy = checks(&Machine(vec![complete()]));
        let sick = checks(&Machine(vec![]));
        assert_eq!(
            decide(Standing::OnTrial, false, &healthy, false),
            Action::MarkGood
        );
        assert_eq!(decide(Standing::Good, false, &sick, true), Action::Leave);
        assert_eq!(
            decide(Standing::OnTrial, true, &healthy, false),
            Action::Leave
        );
        assert_eq!(decide(Standing::OnTrial, true, &sick, true), Action::Leave);
    }

    #[test]
    fn marking_good_keeps_priority_and_tries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let disk = Disk::create(&path, &coreos_disk::Layout::coreos(8192, 8192)).unwrap();
        let b = disk.partition("USR-B").unwrap();
        disk.set_gptprio(b.number, coreos_disk::GptPrio::new(2, 0, false))
            .unwrap();
        assert_eq!(standing(&path, "USR-B").unwrap(), Standing::OnTrial);
        mark_good(&path, "USR-B").unwrap();
        let p = disk.partition("USR-B").unwrap().prio;
        assert_eq!((p.priority(), p.tries(), p.successful()), (2, 0, true));
        assert_eq!(standing(&path, "USR-B").unwrap(), Standing::Good);
        assert!(standing(&path, "NOPE").is_err());
    }
}

//! fleet's engine: which unit runs where, decided from a snapshot with no I/O.
//!
//! [`reconcile`] is one engine pass over a [`Snapshot`] (jobs with their requirements,
//! desired state and current target; live machines). It returns the [`Decision`]s the
//! leader then writes to the store:
//!
//! 1. **Unschedule** every scheduled job whose desired state is `inactive`, whose machine is
//!    gone, or which can no longer run there (a `MachineOf` peer moved, a conflict appeared).
//!    Repeated until nothing changes, so a follower leaves in the same pass as its peer.
//! 2. **Schedule** every unscheduled job that is not `inactive` on the least-loaded machine
//!    (units in its view: scheduled non-inactive jobs plus matching global units; ties to
//!    the lowest machine ID) where it can run: `MachineID` (full or short), then
//!    `MachineMetadata`, then `MachineOf`, then `Conflicts` in both directions. Jobs whose
//!    peers are still unplaced wait for them within the same pass. A job that `Replaces` a
//!    unit on its chosen machine pushes that unit to the least-loaded other machine.
//!
//! Global units are never scheduled here; each agent runs the ones whose metadata its
//! machine matches ([`desired_units`]). Nothing is ever moved to balance load.
//!
//! Invariant: pure function of the snapshot; deterministic (jobs in name order).

use std::collections::{BTreeMap, BTreeSet};

use fleet_model::{JobState, Machine, Requirements};

/// A unit as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The unit name.
    pub name: String,
    /// Its `[X-Fleet]` requirements.
    pub requirements: Requirements,
    /// Its desired state.
    pub target_state: JobState,
    /// The machine it is scheduled to, if any.
    pub target: Option<String>,
}

/// Everything one engine pass needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every job.
    pub jobs: Vec<Job>,
    /// Every live machine.
    pub machines: Vec<Machine>,
}

/// Why a job is taken off its machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Its desired state is `inactive`.
    TargetStateInactive,
    /// Its machine is no longer in the cluster.
    MachineGone,
    /// It can no longer run there (the text says why).
    CannotRun(String),
    /// Another unit that `Replaces` it took the machine.
    Replaced(String),
}

/// One change to the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Delete `job`'s target (it was `machine`).
    Unschedule {
        /// The job.
        job: String,
        /// The machine it leaves.
        machine: String,
        /// Why.
        reason: Reason,
    },
    /// Set `job`'s target to `machine`.
    Schedule {
        /// The job.
        job: String,
        /// The machine.
        machine: String,
    },
}

enum Able {
    Yes,
    No(String),
    /// Yes, pushing these units off the machine.
    Replace(Vec<String>),
}

/// The cluster as the pass goes: each machine's unit set.
struct Cluster<'a> {
    jobs: BTreeMap<&'a str, &'a Job>,
    machines: BTreeMap<&'a str, &'a Machine>,
    units: BTreeMap<&'a str, BTreeSet<&'a str>>,
    /// Each machine's units that conflict with or replace others: the only ones a unit
    /// without such rules of its own has to be checked against (a machine of a thousand
    /// plain units costs nothing per placement).
    constrained: BTreeMap<&'a str, BTreeSet<&'a str>>,
    /// (load, machine id), for least-loaded order.
    by_load: BTreeSet<(usize, &'a str)>,
    target: BTreeMap<&'a str, &'a str>,
}

impl<'a> Cluster<'a> {
    fn new(s: &'a Snapshot) -> Self {
        let jobs: BTreeMap<&str, &Job> = s.jobs.iter().map(|j| (j.name.as_str(), j)).collect();
        let machines: BTreeMap<&str, &Machine> =
            s.machines.iter().map(|m| (m.id.as_str(), m)).collect();
        let mut units: BTreeMap<&str, BTreeSet<&str>> =
            machines.keys().map(|m| (*m, BTreeSet::new())).collect();
        let mut target = BTreeMap::new();
        for j in jobs.values() {
            if j.requirements.global {
                for (id, m) in &machines {
                    if j.requirements.metadata_matches(&m.metadata) {
                        units.entry(id).or_default().insert(&j.name);
                    }
                }
            } else if let Some(t) = j.target.as_deref() {
                target.insert(j.name.as_str(), t);
                if j.target_state != JobState::Inactive {
                    if let Some(set) = units.get_mut(t) {
                        set.insert(&j.name);
                    }
                }
            }
        }
        let by_load = units.iter().map(|(m, u)| (u.len(), *m)).collect();
        let constrained = units
            .iter()
            .map(|(m, set)| {
                let c = set
                    .iter()
                    .copied()
                    .filter(|u| jobs.get(u).is_some_and(|j| constrains(j)))
                    .collect();
                (*m, c)
            })
            .collect();
        Self {
            jobs,
            machines,
            units,
            constrained,
            by_load,
            target,
        }
    }

    fn add(&mut self, machine: &'a str, job: &'a str) {
        if let Some(set) = self.units.get_mut(machine) {
            let before = set.len();
            if set.insert(job) {
                self.by_load.remove(&(before, machine));
                self.by_load.insert((before + 1, machine));
            }
        }
        if self.jobs.get(job).is_some_and(|j| constrains(j)) {
            self.constrained.entry(machine).or_default().insert(job);
        }
    }

    fn remove(&mut self, machine: &'a str, job: &'a str) {
        if let Some(set) = self.units.get_mut(machine) {
            let before = set.len();
            if set.remove(job) {
                self.by_load.remove(&(before, machine));
                self.by_load.insert((before - 1, machine));
            }
        }
        if let Some(set) = self.constrained.get_mut(machine) {
            set.remove(job);
        }
    }

    /// fleet's `AbleToRun`, for `job` on `machine` (ignoring `job` itself if already there).
    fn able_to_run(&self, job: &Job, machine: &str) -> Able {
        let Some(m) = self.machines.get(machine) else {
            return Able::No(format!("machine {machine} is gone"));
        };
        let req = &job.requirements;
        if let Some(id) = &req.machine_id {
            if !m.matches_id(id) {
                return Able::No(format!("unit requires machine {id}"));
            }
        }
        if !req.metadata_matches(&m.metadata) {
            return Able::No("machine metadata does not match".into());
        }
        let here = self.units.get(machine);
        let present = |u: &str| here.is_some_and(|s| s.contains(u));
        if let Some(p) = req.machine_of.iter().find(|p| !present(p)) {
            return Able::No(format!("peer {p} is not on this machine"));
        }
        let mut replaced = Vec::new();
        // A unit that neither conflicts with nor replaces anything can only be kept off the
        // machine by units that do: only those are checked.
        let others = if constrains(job) {
            here
        } else {
            self.constrained.get(machine)
        };
        for other in others.into_iter().flatten() {
            if *other == job.name {
                continue;
            }
            let other_req = self.jobs.get(other).map(|j| &j.requirements);
            if req.conflicts_with(other) || other_req.is_some_and(|r| r.conflicts_with(&job.name)) {
                return Able::No(format!("conflicts with {other}"));
            }
            let circular = other_req.is_some_and(|r| r.replaces_unit(&job.name));
            if req.replaces_unit(other) && !circular {
                replaced.push(other.to_string());
            }
        }
        if replaced.is_empty() {
            Able::Yes
        } else {
            Able::Replace(replaced)
        }
    }
}

/// Whether a job's rules concern other units on its machine (`Conflicts`, `Replaces`).
fn constrains(j: &Job) -> bool {
    !j.requirements.conflicts.is_empty() || !j.requirements.replaces.is_empty()
}

/// One engine pass: the decisions that bring the schedule in line with the snapshot.
pub fn reconcile(s: &Snapshot) -> Vec<Decision> {
    let mut c = Cluster::new(s);
    let mut out = Vec::new();
    let names: Vec<&str> = c
        .jobs
        .values()
        .filter(|j| !j.requirements.global)
        .map(|j| j.name.as_str())
        .collect();

    // Pass 1: unschedule, until nothing changes (followers leave with their peers).
    loop {
        let mut changed = false;
        for name in &names {
            let Some(machine) = c.target.get(name).copied() else {
                continue;
            };
            let job = c.jobs[name];
            let reason = if job.target_state == JobState::Inactive {
                Some(Reason::TargetStateInactive)
            } else if !c.machines.contains_key(machine) {
                Some(Reason::MachineGone)
            } else {
                match c.able_to_run(job, machine) {
                    Able::No(why) => Some(Reason::CannotRun(why)),
                    Able::Yes | Able::Replace(_) => None,
                }
            };
            if let Some(reason) = reason {
                c.remove(machine, name);
                c.target.remove(name);
                out.push(Decision::Unschedule {
                    job: name.to_string(),
                    machine: machine.to_string(),
                    reason,
                });
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }

    // Pass 2: schedule, until nothing more can be placed (peers before followers).
    loop {
        let mut changed = false;
        for name in &names {
            let job = c.jobs[name];
            if c.target.contains_key(name) || job.target_state == JobState::Inactive {
                continue;
            }
            // The least-loaded machine it can run on (lowest ID first among equals).
            let choice = c
                .by_load
                .iter()
                .find_map(|(_, m)| match c.able_to_run(job, m) {
                    Able::No(_) => None,
                    able => Some((*m, able)),
                });
            let Some((machine, able)) = choice else {
                continue;
            };
            schedule(&mut c, &mut out, name, machine);
            if let Able::Replace(victims) = able {
                for v in victims {
                    let Some((vname, _)) = c.jobs.get_key_value(v.as_str()) else {
                        continue;
                    };
                    let vname = *vname;
                    c.remove(machine, vname);
                    c.target.remove(vname);
                    out.push(Decision::Unschedule {
                        job: v.clone(),
                        machine: machine.to_string(),
                        reason: Reason::Replaced(name.to_string()),
                    });
                    // fleet's DecideReschedule: least loaded elsewhere, unchecked.
                    let other = c.by_load.iter().map(|(_, m)| *m).find(|m| *m != machine);
                    if let Some(other) = other {
                        schedule(&mut c, &mut out, vname, other);
                    }
                }
            }
            changed = true;
        }
        if !changed {
            break;
        }
    }
    out
}

fn schedule<'a>(c: &mut Cluster<'a>, out: &mut Vec<Decision>, job: &'a str, machine: &'a str) {
    c.add(machine, job);
    c.target.insert(job, machine);
    out.push(Decision::Schedule {
        job: job.to_string(),
        machine: machine.to_string(),
    });
}

/// What an agent on `machine` should run, sorted by name: the non-global jobs targeted at
/// it, then — fleet 1.0 — the global jobs its metadata matches, by name, each skipped if it
/// conflicts (either way) with a job already chosen; with their desired states (`inactive`
/// ones left out). The agent acts on exactly this.
pub fn desired_units<'a>(
    jobs: impl IntoIterator<Item = &'a Job>,
    machine: &Machine,
) -> Vec<(String, JobState)> {
    let mut placed: Vec<&Job> = Vec::new();
    let mut globals: Vec<&Job> = Vec::new();
    for j in jobs {
        if j.target_state == JobState::Inactive {
            continue;
        }
        if j.requirements.global {
            if j.requirements.metadata_matches(&machine.metadata) {
                globals.push(j);
            }
        } else if j.target.as_deref() == Some(machine.id.as_str()) {
            placed.push(j);
        }
    }
    globals.sort_by(|a, b| a.name.cmp(&b.name));
    for g in globals {
        let conflict = placed.iter().any(|p| {
            p.name != g.name
                && (g.requirements.conflicts_with(&p.name)
                    || p.requirements.conflicts_with(&g.name))
        });
        if conflict {
            continue;
        }
        placed.push(g);
    }
    let mut out: Vec<(String, JobState)> = placed
        .into_iter()
        .map(|j| (j.name.clone(), j.target_state))
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// Applies decisions to a snapshot (what the store holds after the leader writes them).
pub fn apply(s: &mut Snapshot, decisions: &[Decision]) {
    for d in decisions {
        match d {
            Decision::Unschedule { job, .. } => {
                if let Some(j) = s.jobs.iter_mut().find(|j| &j.name == job) {
                    j.target = None;
                }
            }
            Decision::Schedule { job, machine } => {
                if let Some(j) = s.jobs.iter_mut().find(|j| &j.name == job) {
                    j.target = Some(machine.clone());
                }
            }
        }
    }
}

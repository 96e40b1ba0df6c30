//! One pass of the agent: the tasks that make this machine's units match the schedule, in
//! fleet's order, each unit's failing on its own.

use std::collections::{BTreeMap, BTreeSet};

use fleet_model::{JobState, Machine};
use fleet_store::{ClusterCache, KvStore, UnitState};
use systemd_unit::fleet::UnitHash;

use super::{requirements, Agent, Desired, Local, UnitManager, START_CHUNK};
use crate::Error;

/// The tasks of one pass, in fleet's order: unload, load, reload, stop, start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tasks {
    /// Units to unload.
    pub unload: Vec<String>,
    /// Units to load (name, text).
    pub load: Vec<(String, String)>,
    /// Units to stop.
    pub stop: Vec<String>,
    /// Units to start.
    pub start: Vec<String>,
}

/// How `desired` wants `name` now (a failure stands only while this is unchanged).
fn wanted(desired: &Desired, name: &str) -> Option<(JobState, UnitHash)> {
    desired.get(name).map(|(s, h, _)| (*s, *h))
}

/// When each phase of a pass ended, for the debug log.
struct Took {
    began: tokio::time::Instant,
    steps: Vec<(&'static str, usize, std::time::Duration)>,
}

impl Took {
    fn new() -> Self {
        Self {
            began: tokio::time::Instant::now(),
            steps: Vec::new(),
        }
    }

    fn mark(&mut self, what: &'static str, n: usize) {
        self.steps.push((what, n, self.began.elapsed()));
    }

    fn log(&self) {
        if !self.steps.is_empty() && tracing::enabled!(tracing::Level::DEBUG) {
            let steps: Vec<String> = self
                .steps
                .iter()
                .map(|(what, n, at)| format!("{what} {n} by {} ms", at.as_millis()))
                .collect();
            tracing::debug!("pass: {}", steps.join(", "));
        }
    }
}

/// fleet's `calculateTasksForUnit`, for every unit at once.
fn tasks(desired: &Desired, current: &BTreeMap<String, Local>) -> Tasks {
    let mut t = Tasks::default();
    for (name, cur) in current {
        match desired.get(name) {
            None => t.unload.push(name.clone()),
            Some((_, hash, _)) if *hash != cur.hash => t.unload.push(name.clone()),
            _ => {}
        }
    }
    for (name, (state, hash, text)) in desired {
        let cur = current.get(name).filter(|c| c.hash == *hash);
        match (cur.map(|c| c.state), state) {
            (None | Some(JobState::Inactive), _) => {
                t.load.push((name.clone(), text.clone()));
                if *state == JobState::Launched {
                    t.start.push(name.clone());
                }
            }
            (Some(JobState::Loaded), JobState::Launched) => t.start.push(name.clone()),
            (Some(JobState::Launched), JobState::Loaded) => t.stop.push(name.clone()),
            _ => {}
        }
    }
    t
}

impl<S: KvStore, M: UnitManager> Agent<S, M> {
    /// One pass: make this machine's units match the schedule, in fleet's task order —
    /// unload, load (then bind and maybe daemon-reload), stop, start — then publish what
    /// changed. Each phase is its own method; a unit whose step fails skips its later steps.
    pub(super) async fn pass(&mut self, cache: &ClusterCache<S>) -> Result<(), Error> {
        // A lapse noticed now arms the hold before any unload is decided.
        self.tend().await?;
        let desired = self.desired(cache).await?;
        let rebound = self.refence(&desired).await;
        let (mut t, tried) = self.plan_tasks(cache, &desired);
        // Units a step failed for in this pass: their later steps are skipped.
        let mut failed = BTreeSet::new();
        // systemd reads a new unit file when the unit is first started (it notices the
        // changed unit directory), so a daemon-reload — 1.5 s with a thousand units — is
        // needed only when a name it may still hold in memory gets new content.
        let reload = rebound
            || t.load
                .iter()
                .any(|(n, _)| self.current.contains_key(n) || self.stale.contains(n));
        let mut took = Took::new();
        self.unload_all(cache, &desired, &t.unload, &mut failed)
            .await?;
        t.load.retain(|(n, _)| !failed.contains(n));
        self.load_all(&desired, &t.load, &mut failed).await?;
        took.mark("load", t.load.len());
        if reload {
            self.stale.clear();
            self.manager
                .reload()
                .await
                .map_err(|e| Error::Unit("daemon-reload".into(), e))?;
        }
        self.stop_all(&desired, &t.stop, &mut failed).await?;
        t.start.retain(|n| !failed.contains(n));
        self.start_all(&desired, &t.start, &mut failed, &mut took)
            .await?;
        for name in &tried {
            if !failed.contains(name) {
                self.failures.remove(name);
            }
        }
        self.publish_pass(&t, &failed, &mut took).await?;
        took.log();
        Ok(())
    }

    /// The units meant to run here, by fleet-engine's rule (`desired_units`) fed this
    /// machine's view: name → (state, hash, text).
    async fn desired(&mut self, cache: &ClusterCache<S>) -> Result<Desired, Error> {
        let me = self.me.id.clone();
        let records = cache
            .jobs(|r| r.global || r.target.as_deref() == Some(me.as_str()))
            .await?;
        let mut jobs = Vec::with_capacity(records.len());
        let mut content = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for r in records {
            let Some(text) = r.unit else { continue };
            seen.insert((r.name.clone(), r.hash));
            let requirements = requirements(&mut self.reqs, &r.name, r.hash, &text).clone();
            jobs.push(fleet_engine::Job {
                name: r.name.clone(),
                requirements,
                target_state: r.target_state,
                target: r.target,
            });
            content.insert(r.name, (r.hash, text));
        }
        self.reqs.retain(|k, _| seen.contains(k));
        let here = Machine {
            metadata: self.metadata.clone(),
            ..self.me.clone()
        };
        let mut desired = BTreeMap::new();
        for (name, state) in fleet_engine::desired_units(&jobs, &here) {
            if let Some((hash, text)) = content.remove(&name) {
                desired.insert(name, (state, hash, text));
            }
        }
        Ok(desired)
    }

    /// After a change of the fencing default: binds or unbinds loaded units whose fencing
    /// changed. Returns whether any did (systemd must then reload).
    async fn refence(&mut self, desired: &Desired) -> bool {
        if !std::mem::take(&mut self.refence) {
            return false;
        }
        let mut binds = Vec::new();
        for (name, (_, hash, text)) in desired {
            let fenced = self.fenced(name, *hash, text);
            if let Some(l) = self.current.get_mut(name) {
                if l.fenced != fenced {
                    binds.push((name.clone(), fenced));
                }
                l.fenced = fenced;
            }
        }
        for (name, e) in self.manager.bind(&binds).await {
            tracing::warn!(unit = %name, "binding to fleetd: {e}");
        }
        !binds.is_empty()
    }

    /// The tasks of this pass, less held units, fenced starts past the fencing moment and
    /// units waiting for a retry; and every unit a task is tried for.
    fn plan_tasks(
        &mut self,
        cache: &ClusterCache<S>,
        desired: &Desired,
    ) -> (Tasks, BTreeSet<String>) {
        let mut t = tasks(desired, &self.current);
        t.unload.retain(|n| !self.held(cache, desired, n));
        // Past the fencing moment, fenced units stay stopped until the lease is renewed.
        if tokio::time::Instant::now() >= self.presence.fence_at() {
            t.start.retain(|n| {
                !desired
                    .get(n)
                    .is_some_and(|(_, hash, text)| self.fenced(n, *hash, text))
            });
        }
        // Units whose last task failed wait for their retry time; the rest go on.
        // A failure stands only while the unit is still wanted as it was when it failed:
        // destroyed, stopped or given new content, it is tried at once.
        self.failures.retain(|n, f| {
            f.want == wanted(desired, n)
                && (desired.contains_key(n) || self.current.contains_key(n))
        });
        let now = tokio::time::Instant::now();
        t.unload.retain(|n| !self.waiting(n, now));
        t.load.retain(|(n, _)| !self.waiting(n, now));
        t.stop.retain(|n| !self.waiting(n, now));
        t.start.retain(|n| !self.waiting(n, now));
        let tried = t
            .unload
            .iter()
            .chain(t.load.iter().map(|(n, _)| n))
            .chain(&t.stop)
            .chain(&t.start)
            .cloned()
            .collect();
        (t, tried)
    }

    async fn unload_all(
        &mut self,
        cache: &ClusterCache<S>,
        desired: &Desired,
        names: &[String],
        failed: &mut BTreeSet<String>,
    ) -> Result<(), Error> {
        let me = self.me.id.clone();
        for name in names {
            self.tend().await?;
            // A renewal just now may have found the lease lapsed and armed the hold.
            if self.held(cache, desired, name) {
                continue;
            }
            if let Err(e) = self.manager.unload(name).await {
                self.failed(name, "unloading", &e, None, wanted(desired, name));
                failed.insert(name.clone());
                continue;
            }
            self.current.remove(name);
            self.stale.insert(name.clone());
            self.reg.clear_own_job_state(name, &me).await?;
            self.reg.remove_state(name, &me).await?;
        }
        Ok(())
    }

    async fn load_all(
        &mut self,
        desired: &Desired,
        load: &[(String, String)],
        failed: &mut BTreeSet<String>,
    ) -> Result<(), Error> {
        if !load.is_empty() {
            self.tend().await?;
            for (name, e) in self.manager.load_many(load).await {
                let hash = desired.get(&name).map(|(_, h, _)| *h);
                self.failed(&name, "loading", &e, hash, wanted(desired, &name));
                failed.insert(name);
            }
            // A fenced unit never starts unbound: a failed binding fails its load.
            let binds: Vec<(String, bool)> = load
                .iter()
                .filter(|(n, _)| !failed.contains(n))
                .filter_map(|(n, text)| {
                    let (_, hash, _) = desired.get(n)?;
                    Some((n.clone(), self.fenced(n, *hash, text)))
                })
                .collect();
            for (name, e) in self.manager.bind(&binds).await {
                let hash = desired.get(&name).map(|(_, h, _)| *h);
                self.failed(&name, "binding to fleetd", &e, hash, wanted(desired, &name));
                failed.insert(name);
            }
        }
        for (name, text) in load {
            if failed.contains(name) {
                continue;
            }
            if let Some((_, hash, _)) = desired.get(name) {
                let fenced = self.fenced(name, *hash, text);
                self.current.insert(
                    name.clone(),
                    Local {
                        state: JobState::Loaded,
                        hash: *hash,
                        fenced,
                    },
                );
            }
        }
        Ok(())
    }

    async fn stop_all(
        &mut self,
        desired: &Desired,
        names: &[String],
        failed: &mut BTreeSet<String>,
    ) -> Result<(), Error> {
        let me = self.me.id.clone();
        for name in names {
            self.tend().await?;
            self.reg.clear_own_job_state(name, &me).await?;
            if let Err(e) = self.manager.stop(name).await {
                self.failed(name, "stopping", &e, None, wanted(desired, name));
                failed.insert(name.clone());
                continue;
            }
            if let Some(c) = self.current.get_mut(name) {
                c.state = JobState::Loaded;
            }
        }
        Ok(())
    }

    /// "Launched here" for the whole batch first (one request per hundred units), then the
    /// starts, pipelined in chunks with the lease renewed between them, as fleet's order
    /// has it.
    async fn start_all(
        &mut self,
        desired: &Desired,
        names: &[String],
        failed: &mut BTreeSet<String>,
        took: &mut Took,
    ) -> Result<(), Error> {
        if names.is_empty() {
            return Ok(());
        }
        self.tend().await?;
        for name in names {
            if let Some(c) = self.current.get_mut(name) {
                c.state = JobState::Launched;
            }
        }
        self.reg
            .set_job_states(names, &self.me.id, self.presence.lease)
            .await?;
        took.mark("mark launched", names.len());
        for chunk in names.chunks(START_CHUNK) {
            self.tend().await?;
            for (name, e) in self.manager.start_many(chunk).await {
                self.failed(&name, "starting", &e, None, wanted(desired, &name));
                // Still "launched" (a start was requested, as fleet's job state says);
                // the retry starts it again.
                if let Some(c) = self.current.get_mut(&name) {
                    c.state = JobState::Loaded;
                }
                failed.insert(name);
            }
        }
        took.mark("start", names.len());
        Ok(())
    }

    /// Publishes the pass's outcome: units that could not be loaded as failed (with the
    /// content that failed), and the systemd states of the units it touched (all of them
    /// after registering anew).
    async fn publish_pass(
        &mut self,
        t: &Tasks,
        failed: &BTreeSet<String>,
        took: &mut Took,
    ) -> Result<(), Error> {
        let me = self.me.id.clone();
        let refused: Vec<UnitState> = failed
            .iter()
            .filter(|n| !self.current.contains_key(*n))
            .filter_map(|n| {
                let hash = self.failures.get(n)?.hash?;
                Some(UnitState {
                    unit: n.clone(),
                    machine_id: me.clone(),
                    load_state: "error".into(),
                    active_state: "failed".into(),
                    sub_state: "failed".into(),
                    hash: hash.to_string(),
                })
            })
            .collect();
        if !refused.is_empty() {
            self.reg
                .publish_states(&refused, &self.me, self.presence.lease)
                .await?;
        }
        let touched: Vec<String> = if self.republish {
            let launched: Vec<String> = self
                .current
                .iter()
                .filter(|(_, c)| c.state == JobState::Launched)
                .map(|(n, _)| n.clone())
                .collect();
            self.reg
                .set_job_states(&launched, &me, self.presence.lease)
                .await?;
            self.republish = false;
            self.current.keys().cloned().collect()
        } else {
            t.load
                .iter()
                .map(|(n, _)| n)
                .chain(&t.stop)
                .chain(&t.start)
                .cloned()
                .collect()
        };
        // Their states: one question to systemd, one write per hundred units.
        let touched: Vec<String> = touched
            .into_iter()
            .filter(|n| self.current.contains_key(n))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !touched.is_empty() {
            self.tend().await?;
            self.publish(&touched, true).await?;
            took.mark("publish", touched.len());
        }
        Ok(())
    }

    /// Reads the systemd states of `names` and publishes them — all of them, or with
    /// `all == false` only those that changed since last published.
    async fn publish(&mut self, names: &[String], all: bool) -> Result<(), Error> {
        let systemd = self.manager.states(names).await;
        let mut states = Vec::new();
        for (name, now) in names.iter().zip(systemd) {
            let Some(hash) = self.current.get(name).map(|c| c.hash) else {
                continue;
            };
            if !all && self.published.get(name) == Some(&now) {
                continue;
            }
            let (load, active, sub) = now;
            states.push(UnitState {
                unit: name.clone(),
                machine_id: self.me.id.clone(),
                load_state: load,
                active_state: active,
                sub_state: sub,
                hash: hash.to_string(),
            });
        }
        if !states.is_empty() {
            self.reg
                .publish_states(&states, &self.me, self.presence.lease)
                .await?;
            // Remembered only once written, so a failed write is tried again.
            for s in states {
                self.published
                    .insert(s.unit, (s.load_state, s.active_state, s.sub_state));
            }
        }
        Ok(())
    }

    /// fleet's unit-state publisher: once a second, the states of this machine's units that
    /// changed (a crash, a stop from outside) are published.
    pub(super) async fn refresh_states(&mut self) -> Result<(), Error> {
        self.published.retain(|n, _| self.current.contains_key(n));
        let names: Vec<String> = self.current.keys().cloned().collect();
        if names.is_empty() {
            return Ok(());
        }
        self.publish(&names, false).await
    }

    /// Stops the fenced units now: the lease has not been renewed for half its TTL. Only
    /// systemd is touched; etcd is not reachable.
    pub(super) async fn fence(&mut self) {
        let names: Vec<String> = self
            .current
            .iter()
            .filter(|(_, l)| l.fenced && l.state == JobState::Launched)
            .map(|(n, _)| n.clone())
            .collect();
        tracing::warn!(
            machine = %self.me.id,
            "fencing: presence not renewed for {} ms; stopping {}",
            self.presence.ttl * 500,
            names.join(" ")
        );
        for name in &names {
            if let Err(e) = self.manager.stop(name).await {
                tracing::warn!(unit = %name, "fencing: stop failed: {e}");
            }
            if let Some(l) = self.current.get_mut(name) {
                l.state = JobState::Loaded;
            }
        }
    }

    /// Graceful stop, as fleet's: unload every unit, then remove this machine's records.
    pub(super) async fn purge(&mut self) -> Result<(), Error> {
        for name in self.current.keys() {
            if let Err(e) = self.manager.unload(name).await {
                tracing::warn!(unit = %name, "unloading on shutdown: {e}");
            }
        }
        for name in self.current.keys() {
            self.reg.clear_own_job_state(name, &self.me.id).await?;
            self.reg.remove_state(name, &self.me.id).await?;
        }
        self.reg.unregister_machine(&self.me.id).await?;
        self.reg.store().revoke(self.presence.lease).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> UnitHash {
        UnitHash([n; 20])
    }

    #[test]
    fn task_calculation_follows_fleet() {
        let mut desired = BTreeMap::new();
        desired.insert(
            "new.service".to_string(),
            (JobState::Launched, h(1), "t".to_string()),
        );
        desired.insert(
            "start.service".to_string(),
            (JobState::Launched, h(2), "t".to_string()),
        );
        desired.insert(
            "stop.service".to_string(),
            (JobState::Loaded, h(3), "t".to_string()),
        );
        desired.insert(
            "changed.service".to_string(),
            (JobState::Launched, h(9), "t".to_string()),
        );
        let mut current = BTreeMap::new();
        current.insert(
            "start.service".to_string(),
            Local {
                state: JobState::Loaded,
                hash: h(2),
                fenced: false,
            },
        );
        current.insert(
            "stop.service".to_string(),
            Local {
                state: JobState::Launched,
                hash: h(3),
                fenced: false,
            },
        );
        current.insert(
            "changed.service".to_string(),
            Local {
                state: JobState::Launched,
                hash: h(4),
                fenced: false,
            },
        );
        current.insert(
            "gone.service".to_string(),
            Local {
                state: JobState::Launched,
                hash: h(5),
                fenced: false,
            },
        );
        let t = tasks(&desired, &current);
        assert_eq!(t.unload, vec!["changed.service", "gone.service"]);
        assert_eq!(
            t.load.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            vec!["changed.service", "new.service"]
        );
        assert_eq!(t.stop, vec!["stop.service"]);
        assert_eq!(
            t.start,
            vec!["changed.service", "new.service", "start.service"]
        );
    }
}

//! The agent role: keep this machine registered, and make its units match the schedule —
//! the non-global units targeted here and the global units its metadata matches — through a
//! [`UnitManager`] (systemd over D-Bus in a machine; a simulation in tests and benchmarks).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fleet_model::{JobState, Machine, Requirements};
use fleet_store::{Change, ClusterCache, KvStore, Registry, UnitState};
use systemd_unit::fleet::UnitHash;
use tokio::sync::watch;

use crate::Error;

/// What the agent needs from the machine's init system.
pub trait UnitManager: Send {
    /// Writes the unit and links it in (no daemon-reload yet).
    fn load(&mut self, name: &str, text: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// Stops, unlinks and removes the unit.
    fn unload(&mut self, name: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// daemon-reload, once after loads and unloads.
    fn reload(&mut self) -> impl Future<Output = Result<(), String>> + Send;
    /// Starts the unit (not waiting for it to be active).
    fn start(&mut self, name: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// Stops the unit.
    fn stop(&mut self, name: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// The unit's systemd (load, active, sub) state.
    fn state(&mut self, name: &str) -> impl Future<Output = (String, String, String)> + Send;
    /// Units left loaded by a previous run (name, text), so the agent can take them over
    /// or unload them.
    fn existing(&mut self) -> impl Future<Output = Vec<(String, String)>> + Send;
}

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This machine.
    pub machine: Machine,
    /// Presence lease TTL, seconds: how soon a dead machine's units move elsewhere.
    pub ttl: i64,
    /// A full pass at least this often, even without events.
    pub resync: Duration,
}

/// One unit as this agent has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Local {
    state: JobState,
    hash: UnitHash,
}

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

/// fleet's `calculateTasksForUnit`, for every unit at once.
fn tasks(
    desired: &BTreeMap<String, (JobState, UnitHash, String)>,
    current: &BTreeMap<String, Local>,
) -> Tasks {
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

/// Runs the agent until `stop` turns true. `purge` on the way out unloads every unit and
/// removes the machine, as fleet did on a graceful stop; without it the units keep running
/// (the cut-off case).
/// How long a burst of unit changes may settle before the agent acts on it.
const SETTLE: Duration = Duration::from_millis(30);

/// This machine's presence: its lease, renewed every third of the TTL. Long passes call
/// [`Presence::tend`] between units, so a busy agent never lets its lease lapse.
struct Presence {
    lease: i64,
    ttl: i64,
    period: Duration,
    next: tokio::time::Instant,
}

impl Presence {
    /// Renews the lease if due; after a lapse registers again. True if it re-registered.
    async fn tend<S: KvStore>(&mut self, reg: &Registry<S>, me: &Machine) -> Result<bool, Error> {
        if tokio::time::Instant::now() < self.next {
            return Ok(false);
        }
        self.next = tokio::time::Instant::now() + self.period;
        if reg.store().keep_alive(self.lease).await? {
            return Ok(false);
        }
        self.regain(reg, me).await?;
        Ok(true)
    }

    /// A new lease and presence record, after the old lease lapsed.
    async fn regain<S: KvStore>(&mut self, reg: &Registry<S>, me: &Machine) -> Result<(), Error> {
        tracing::warn!(machine = %me.id, "presence lease lost; registering again");
        self.lease = reg.store().grant_lease(self.ttl).await?;
        reg.register_machine(me, self.lease).await?;
        self.next = tokio::time::Instant::now() + self.period;
        Ok(())
    }
}

pub async fn run_agent<S: KvStore, M: UnitManager>(
    reg: Arc<Registry<S>>,
    cfg: AgentConfig,
    mut manager: M,
    mut stop: watch::Receiver<bool>,
    ready: Option<watch::Sender<bool>>,
) -> Result<(), Error> {
    let store = reg.store().clone();
    let me = cfg.machine.clone();
    let lease = store.grant_lease(cfg.ttl).await?;
    // A previous run that crashed may still hold the presence key until its lease lapses.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.ttl.max(1) as u64 + 2);
    while !reg.register_machine(&me, lease).await? {
        if tokio::time::Instant::now() >= deadline {
            store.revoke(lease).await?;
            return Err(Error::DuplicateMachine(me.id.clone()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(r) = &ready {
        let _ = r.send(true);
    }
    let period = Duration::from_millis((cfg.ttl.max(1) as u64 * 1000) / 3);
    let mut presence = Presence {
        lease,
        ttl: cfg.ttl,
        period,
        next: tokio::time::Instant::now() + period,
    };
    let mut cache = ClusterCache::start(reg.clone()).await?;
    // Units a previous run left behind count as loaded-but-unknown (fleet's "inactive" cache
    // state): desired ones are loaded again (a no-op for running units), others unloaded.
    let mut current: BTreeMap<String, Local> = manager
        .existing()
        .await
        .into_iter()
        .filter_map(|(name, text)| {
            let hash = UnitHash::of_text(&text).ok()?;
            Some((
                name,
                Local {
                    state: JobState::Inactive,
                    hash,
                },
            ))
        })
        .collect();
    let mut globals: BTreeMap<(String, UnitHash), Requirements> = BTreeMap::new();
    // The metadata global units are matched against: the configured metadata with fleet
    // 1.0's dynamic metadata (the API's PATCH) laid over it.
    let mut metadata = cache
        .metadata_of(&me.id)
        .unwrap_or_else(|| me.metadata.clone());
    let mut dirty = true;
    let mut settle: Option<tokio::time::Instant> = None;
    let mut republish = false;
    let mut resync = tokio::time::interval(cfg.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A burst of changes (a `fleetctl start` of many units) settles for a moment first,
        // so one pass and one daemon-reload serve the whole burst.
        let settling = settle.is_some_and(|t| tokio::time::Instant::now() < t);
        if dirty && !settling {
            dirty = false;
            settle = None;
            let pass = async {
                let records = cache
                    .jobs(|r| r.global || r.target.as_deref() == Some(me.id.as_str()))
                    .await?;
                let mut desired = BTreeMap::new();
                for r in records {
                    if r.target_state == JobState::Inactive {
                        continue;
                    }
                    let Some(text) = r.unit else { continue };
                    let mine = if r.global {
                        let req = globals.entry((r.name.clone(), r.hash)).or_insert_with(|| {
                            let opts = systemd_unit::fleet::deserialize(&text).unwrap_or_default();
                            Requirements::from_options(&r.name, &opts)
                        });
                        req.metadata_matches(&metadata)
                    } else {
                        r.target.as_deref() == Some(me.id.as_str())
                    };
                    if mine {
                        desired.insert(r.name, (r.target_state, r.hash, text));
                    }
                }
                let t = tasks(&desired, &current);
                let changed_files = !t.unload.is_empty() || !t.load.is_empty();
                for name in &t.unload {
                    republish |= presence.tend(&reg, &me).await?;
                    manager
                        .unload(name)
                        .await
                        .map_err(|e| Error::Unit(name.clone(), e))?;
                    reg.clear_job_state(name).await?;
                    reg.remove_state(name, &me.id).await?;
                    current.remove(name);
                }
                for (name, text) in &t.load {
                    republish |= presence.tend(&reg, &me).await?;
                    manager
                        .load(name, text)
                        .await
                        .map_err(|e| Error::Unit(name.clone(), e))?;
                    if let Some((_, hash, _)) = desired.get(name) {
                        current.insert(
                            name.clone(),
                            Local {
                                state: JobState::Loaded,
                                hash: *hash,
                            },
                        );
                    }
                }
                if changed_files {
                    manager
                        .reload()
                        .await
                        .map_err(|e| Error::Unit("daemon-reload".into(), e))?;
                }
                for name in &t.stop {
                    republish |= presence.tend(&reg, &me).await?;
                    reg.clear_job_state(name).await?;
                    manager
                        .stop(name)
                        .await
                        .map_err(|e| Error::Unit(name.clone(), e))?;
                    if let Some(c) = current.get_mut(name) {
                        c.state = JobState::Loaded;
                    }
                }
                for name in &t.start {
                    republish |= presence.tend(&reg, &me).await?;
                    if let Some(c) = current.get_mut(name) {
                        c.state = JobState::Launched;
                    }
                    reg.set_job_state(name, &me.id, presence.lease).await?;
                    manager
                        .start(name)
                        .await
                        .map_err(|e| Error::Unit(name.clone(), e))?;
                }
                let touched: Vec<String> = if std::mem::take(&mut republish) {
                    for (name, c) in &current {
                        if c.state == JobState::Launched {
                            reg.set_job_state(name, &me.id, presence.lease).await?;
                        }
                    }
                    current.keys().cloned().collect()
                } else {
                    t.load
                        .iter()
                        .map(|(n, _)| n)
                        .chain(&t.stop)
                        .chain(&t.start)
                        .cloned()
                        .collect()
                };
                for name in &touched {
                    republish |= presence.tend(&reg, &me).await?;
                    if let Some(c) = current.get(name.as_str()) {
                        let (load, active, sub) = manager.state(name).await;
                        let st = UnitState {
                            unit: name.clone(),
                            machine_id: me.id.clone(),
                            load_state: load,
                            active_state: active,
                            sub_state: sub,
                            hash: c.hash.to_string(),
                        };
                        reg.publish_state(&st, &me, presence.lease).await?;
                    }
                }
                Ok::<(), Error>(())
            };
            match pass.await {
                Ok(()) => {}
                Err(e) if e.is_lease_lost() => {
                    // Cut off past the TTL mid-pass: register again and republish everything.
                    presence.regain(&reg, &me).await?;
                    republish = true;
                    dirty = true;
                }
                Err(e) => return Err(e),
            }
            // Re-registered during the pass: the next pass republishes what this one did not.
            dirty |= republish;
        }
        tokio::select! {
            _ = stop.changed() => break,
            change = cache.next() => match change {
                Change::Closed => {
                    cache = ClusterCache::start(reg.clone()).await?;
                    dirty = true;
                }
                // A machine change may carry job changes read in the same batch, so both
                // look at the changed units. Only units that are here or are meant to be
                // here matter.
                change @ (Change::Machines | Change::Jobs) => {
                    let mine = cache.take_changed().iter().any(|u| {
                        current.contains_key(u)
                            || cache.target_of(u).as_deref() == Some(me.id.as_str())
                            || cache.is_global(u)
                    });
                    // While this machine is briefly absent (a lapsed lease) its metadata stands.
                    let now = cache.metadata_of(&me.id).unwrap_or_else(|| metadata.clone());
                    let mine = mine || (change == Change::Machines && now != metadata);
                    metadata = now;
                    if mine && !dirty {
                        dirty = true;
                        settle = Some(tokio::time::Instant::now() + SETTLE);
                    }
                }
            },
            _ = tokio::time::sleep_until(presence.next) => {
                if presence.tend(&reg, &me).await? {
                    // Cut off for longer than the TTL: republish everything.
                    republish = true;
                    dirty = true;
                }
            },
            _ = resync.tick() => dirty = true,
            _ = tokio::time::sleep_until(settle.unwrap_or_else(tokio::time::Instant::now)), if settle.is_some() => {}
        }
    }
    if *stop.borrow() {
        // Graceful stop: purge, as fleet did.
        for name in current.keys() {
            let _ = manager.unload(name).await;
            reg.clear_job_state(name).await?;
            reg.remove_state(name, &me.id).await?;
        }
        reg.unregister_machine(&me.id).await?;
        store.revoke(presence.lease).await?;
    }
    Ok(())
}

/// A unit manager that only remembers: for tests and simulated clusters.
#[derive(Debug, Default, Clone)]
pub struct SimManager {
    /// name → (loaded, running).
    pub units: BTreeMap<String, (bool, bool)>,
}

impl UnitManager for SimManager {
    async fn load(&mut self, name: &str, _text: &str) -> Result<(), String> {
        self.units.insert(name.to_string(), (true, false));
        Ok(())
    }

    async fn unload(&mut self, name: &str) -> Result<(), String> {
        self.units.remove(name);
        Ok(())
    }

    async fn reload(&mut self) -> Result<(), String> {
        Ok(())
    }

    async fn start(&mut self, name: &str) -> Result<(), String> {
        match self.units.get_mut(name) {
            Some(u) => {
                u.1 = true;
                Ok(())
            }
            None => Err(format!("{name} is not loaded")),
        }
    }

    async fn stop(&mut self, name: &str) -> Result<(), String> {
        if let Some(u) = self.units.get_mut(name) {
            u.1 = false;
        }
        Ok(())
    }

    async fn existing(&mut self) -> Vec<(String, String)> {
        Vec::new()
    }

    async fn state(&mut self, name: &str) -> (String, String, String) {
        match self.units.get(name) {
            Some((_, true)) => ("loaded".into(), "active".into(), "running".into()),
            Some((_, false)) => ("loaded".into(), "inactive".into(), "dead".into()),
            None => ("not-found".into(), "inactive".into(), "dead".into()),
        }
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
            },
        );
        current.insert(
            "stop.service".to_string(),
            Local {
                state: JobState::Launched,
                hash: h(3),
            },
        );
        current.insert(
            "changed.service".to_string(),
            Local {
                state: JobState::Launched,
                hash: h(4),
            },
        );
        current.insert(
            "gone.service".to_string(),
            Local {
                state: JobState::Launched,
                hash: h(5),
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

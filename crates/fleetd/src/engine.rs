//! The engine role: hold the leader lease, and while holding it, turn every change of the
//! cluster into a `fleet-engine` pass and write its decisions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_engine::{reconcile, Decision, Job, Snapshot};
use fleet_model::Requirements;
use fleet_store::{Change, ClusterCache, Event, KvStore, Registry};
use systemd_unit::fleet::UnitHash;
use tokio::sync::watch;

use crate::Error;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This machine's ID (the leader lease names it).
    pub machine_id: String,
    /// Leader lease TTL, seconds: how long a dead leader keeps the others waiting.
    pub lease_ttl: i64,
    /// A full pass at least this often, even without events.
    pub resync: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            machine_id: String::new(),
            lease_ttl: 2,
            resync: Duration::from_secs(30),
        }
    }
}

/// What an engine did, for tests and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Passes run while leader.
    pub passes: u64,
    /// Decisions written.
    pub decisions: u64,
}

/// Parsed requirements, by unit name and content.
type ReqCache = HashMap<(String, UnitHash), Requirements>;

async fn pass<S: KvStore>(
    reg: &Registry<S>,
    cache: &ClusterCache<S>,
    reqs: &mut ReqCache,
) -> Result<u64, Error> {
    let records = cache.jobs(|_| true).await?;
    let mut jobs = Vec::with_capacity(records.len());
    for r in records {
        let key = (r.name.clone(), r.hash);
        if !reqs.contains_key(&key) {
            let options = r
                .unit
                .as_deref()
                .and_then(|t| systemd_unit::fleet::deserialize(t).ok())
                .unwrap_or_default();
            reqs.insert(key.clone(), Requirements::from_options(&r.name, &options));
        }
        let requirements = reqs.get(&key).cloned().unwrap_or_default();
        jobs.push(Job {
            name: r.name,
            requirements,
            target_state: r.target_state,
            target: r.target,
        });
    }
    let snapshot = Snapshot {
        jobs,
        machines: cache.machines(),
    };
    let decisions = reconcile(&snapshot);
    // Unschedules first, each a compare-and-delete, as the decisions order them; then the
    // placements, batched (a pass that places a thousand new units is a few requests).
    let mut placements = Vec::new();
    for d in &decisions {
        match d {
            Decision::Schedule { job, machine } => placements.push((job.clone(), machine.clone())),
            Decision::Unschedule {
                job,
                machine,
                reason,
            } => {
                if reg.unschedule(job, machine).await? {
                    tracing::info!("Unscheduled Unit({job}) from Machine({machine}): {reason:?}");
                }
            }
        }
    }
    let placed = reg.schedule_many(&placements).await?;
    for ((job, machine), done) in placements.iter().zip(placed) {
        if done {
            tracing::info!("Scheduled Unit({job}) to Machine({machine})");
        }
    }
    Ok(decisions.len() as u64)
}

/// Runs the engine until `stop` turns true: tries to lead whenever there is no leader
/// (the leader key's deletion is watched, so a dead leader is replaced as soon as its lease
/// lapses), and while leading reconciles on every change.
///
/// etcd failures end only the current session: it starts again after a backoff (up to 5 s),
/// so a machine cut off from etcd keeps its engine and rejoins when etcd is back. A leader
/// cut off stops leading when its lease lapses; another engine takes over.
pub async fn run_engine<S: KvStore>(
    reg: Arc<Registry<S>>,
    cfg: EngineConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<EngineStats, Error> {
    let mut stats = EngineStats::default();
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = tokio::time::Instant::now();
        match session(&reg, &cfg, &mut stop, &mut stats).await {
            Ok(()) => return Ok(stats),
            Err(e) if *stop.borrow() => {
                tracing::warn!("engine stopping: {e}");
                return Ok(stats);
            }
            Err(e) => {
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(100);
                }
                tracing::warn!("engine: {e}; starting again in {backoff:?}");
                tokio::select! {
                    _ = stop.changed() => return Ok(stats),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One engine session, from reading the cluster to `stop` or the first etcd failure.
async fn session<S: KvStore>(
    reg: &Arc<Registry<S>>,
    cfg: &EngineConfig,
    stop: &mut watch::Receiver<bool>,
    stats: &mut EngineStats,
) -> Result<(), Error> {
    let store = reg.store().clone();
    let mut cache = ClusterCache::start(reg.clone()).await?;
    let leader_key = reg.leader_key();
    let (_, rev) = store.get_prefix(&leader_key).await?;
    let mut leader_events = store.watch_prefix(&leader_key, rev).await?;
    let mut reqs = ReqCache::new();
    let mut lease: Option<i64> = None;
    let mut leading = false;
    let mut want_lead = true;
    let mut dirty = true;
    let renew_every = Duration::from_millis((cfg.lease_ttl.max(1) as u64 * 1000) / 2);
    let mut renew = tokio::time::interval(renew_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync = tokio::time::interval(cfg.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if want_lead && !leading {
            want_lead = false;
            let l = match lease {
                Some(l) if store.keep_alive(l).await? => l,
                _ => store.grant_lease(cfg.lease_ttl).await?,
            };
            lease = Some(l);
            leading = reg.try_lead(&cfg.machine_id, l).await?;
            if leading {
                tracing::info!(machine = %cfg.machine_id, "engine leadership acquired");
                dirty = true;
            } else if let Some(l) = lease.take() {
                // Someone else leads: no lease to keep alive until it is our turn.
                store.revoke(l).await?;
            }
        }
        if leading && dirty {
            stats.decisions += pass(reg, &cache, &mut reqs).await?;
            stats.passes += 1;
            dirty = false;
        }
        tokio::select! {
            _ = stop.changed() => break,
            change = cache.next() => match change {
                Change::Closed => {
                    cache = ClusterCache::start(reg.clone()).await?;
                    dirty = true;
                }
                Change::Jobs | Change::Machines => dirty = true,
            },
            ev = leader_events.recv() => match ev {
                Some(Event::Delete { .. }) => want_lead = true,
                Some(Event::Put(_)) => {}
                None => {
                    let (_, rev) = store.get_prefix(&leader_key).await?;
                    leader_events = store.watch_prefix(&leader_key, rev).await?;
                    want_lead = true;
                }
            },
            _ = renew.tick(), if leading => {
                let alive = match lease {
                    Some(l) => store.keep_alive(l).await?,
                    None => false,
                };
                if !alive {
                    tracing::warn!("Engine leadership lost, renewal failed");
                    leading = false;
                    lease = None;
                    want_lead = true;
                }
            },
            _ = resync.tick() => {
                dirty = true;
                // A safety net for a missed deletion event: look once per resync.
                if !leading && reg.leader().await?.is_none() {
                    want_lead = true;
                }
            },
        }
    }
    if leading {
        reg.resign(&cfg.machine_id).await?;
    }
    if let Some(l) = lease {
        store.revoke(l).await?;
    }
    Ok(())
}

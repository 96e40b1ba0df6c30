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

/// The engine's leadership, an explicit state moved only by [`Leadership::on`].
///
/// An engine leads only while the leader key is held under its own lease and no longer than
/// that lease is sure to last: the TTL after the last renewal was *sent* (etcd keeps a lease
/// at least that long after it answers a renewal, so a successor, who can take the key only
/// once etcd has deleted it, never overlaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// Another engine leads, or none does.
    Follower,
    /// This engine holds the leader key under `lease`, sure of it until `until`.
    Leader {
        /// The lease the key is held under.
        lease: i64,
        /// The last renewal's send time plus the TTL.
        until: tokio::time::Instant,
    },
}

/// What moves [`Leadership`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderEvent {
    /// The leader key was deleted (a leader resigned, or its lease expired).
    KeyDeleted,
    /// The leader key was written under `lease`.
    KeyWritten {
        /// The lease it is held under.
        lease: i64,
    },
    /// [`Registry::try_lead`] took the key under `lease`.
    Acquired {
        /// The lease.
        lease: i64,
        /// Its send time plus the TTL.
        until: tokio::time::Instant,
    },
    /// A renewal of the leader's lease succeeded.
    Renewed {
        /// Its send time plus the TTL.
        until: tokio::time::Instant,
    },
    /// A renewal failed or found the lease gone, or the lease's time ran out.
    Lapsed,
}

/// What the engine does after a [`LeaderEvent`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaderSteps {
    /// Revoke this lease: it no longer holds the key (or might, and must stop doing so).
    pub release: Option<i64>,
    /// Try to take the leader key now: it is free.
    pub try_lead: bool,
}

impl Leadership {
    /// Whether this engine leads.
    pub fn leading(&self) -> bool {
        matches!(self, Self::Leader { .. })
    }

    /// The state after `ev`, and what to do about it.
    pub fn on(self, ev: LeaderEvent) -> (Self, LeaderSteps) {
        use LeaderEvent as E;
        let none = LeaderSteps::default();
        match (self, ev) {
            (Self::Follower, E::KeyDeleted) => (
                Self::Follower,
                LeaderSteps {
                    try_lead: true,
                    ..none
                },
            ),
            (Self::Leader { lease, .. }, E::KeyDeleted) => (
                Self::Follower,
                LeaderSteps {
                    release: Some(lease),
                    try_lead: true,
                },
            ),
            (Self::Leader { lease, until }, E::KeyWritten { lease: held }) if held == lease => {
                (Self::Leader { lease, until }, none)
            }
            (Self::Leader { lease, .. }, E::KeyWritten { .. } | E::Lapsed) => (
                Self::Follower,
                LeaderSteps {
                    release: Some(lease),
                    ..none
                },
            ),
            (Self::Follower, E::Acquired { lease, until }) => (Self::Leader { lease, until }, none),
            (Self::Leader { lease: old, .. }, E::Acquired { lease, until }) => (
                Self::Leader { lease, until },
                LeaderSteps {
                    release: (old != lease).then_some(old),
                    ..none
                },
            ),
            (Self::Leader { lease, .. }, E::Renewed { until }) => {
                (Self::Leader { lease, until }, none)
            }
            (Self::Follower, E::KeyWritten { .. } | E::Renewed { .. } | E::Lapsed) => {
                (Self::Follower, none)
            }
        }
    }
}

/// Runs the engine until `stop` turns true: tries to lead whenever there is no leader
/// (the leader key's deletion is watched, so a dead leader is replaced as soon as its lease
/// lapses), and while leading reconciles on every change.
///
/// etcd failures end only the current session: it starts again after a backoff (up to 2 s),
/// so a machine cut off from etcd keeps its engine and rejoins when etcd is back. A leader
/// cut off stops leading when its lease's time runs out; another engine takes over. A new
/// session first revokes the lease an earlier one may have held the key under.
pub async fn run_engine<S: KvStore>(
    reg: Arc<Registry<S>>,
    cfg: EngineConfig,
    stop: watch::Receiver<bool>,
) -> Result<EngineStats, Error> {
    run_observed_engine(reg, cfg, stop, None).await
}

/// [`run_engine`], telling `leading` whenever this engine starts or stops leading.
pub async fn run_observed_engine<S: KvStore>(
    reg: Arc<Registry<S>>,
    cfg: EngineConfig,
    mut stop: watch::Receiver<bool>,
    leading: Option<watch::Sender<bool>>,
) -> Result<EngineStats, Error> {
    let mut e = Session {
        reg,
        cfg,
        stats: EngineStats::default(),
        state: Leadership::Follower,
        held: None,
        leading,
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = tokio::time::Instant::now();
        let result = e.run(&mut stop).await;
        // Whatever the session held ends with it; a later session starts as a follower.
        e.set(Leadership::Follower);
        match result {
            Ok(()) => return Ok(e.stats),
            Err(err) if *stop.borrow() => {
                tracing::warn!("engine stopping: {err}");
                return Ok(e.stats);
            }
            Err(err) => {
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(100);
                }
                tracing::warn!("engine: {err}; starting again in {backoff:?}");
                tokio::select! {
                    _ = stop.changed() => return Ok(e.stats),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The engine between sessions: its settings, counters, leadership and the lease that may
/// still hold the leader key.
struct Session<S: KvStore> {
    reg: Arc<Registry<S>>,
    cfg: EngineConfig,
    stats: EngineStats,
    state: Leadership,
    /// A lease this engine was granted and has not revoked (it may hold the leader key).
    held: Option<i64>,
    leading: Option<watch::Sender<bool>>,
}

impl<S: KvStore> Session<S> {
    fn ttl(&self) -> Duration {
        Duration::from_secs(self.cfg.lease_ttl.max(1) as u64)
    }

    /// Moves to `next`, telling the observer and the log when leadership changes.
    fn set(&mut self, next: Leadership) {
        if self.state.leading() != next.leading() {
            if next.leading() {
                tracing::info!(machine = %self.cfg.machine_id, "engine leadership acquired");
            } else {
                tracing::warn!(machine = %self.cfg.machine_id, "engine leadership lost");
            }
            if let Some(tx) = &self.leading {
                let _ = tx.send(next.leading());
            }
        }
        self.state = next;
    }

    /// Applies `ev`; gives whether to try to lead now.
    async fn on(&mut self, ev: LeaderEvent) -> bool {
        let (next, steps) = self.state.on(ev);
        self.set(next);
        if let Some(lease) = steps.release {
            self.release(lease).await;
        }
        steps.try_lead
    }

    /// Revokes `lease`, best effort: if etcd cannot be reached it lapses on its own.
    /// A lease that could not be revoked stays `held`, for the next session to revoke.
    async fn release(&mut self, lease: i64) {
        match self.reg.store().revoke(lease).await {
            Ok(()) => {
                if self.held == Some(lease) {
                    self.held = None;
                }
            }
            Err(e) => tracing::debug!("revoking engine lease {lease}: {e}"),
        }
    }

    /// Takes the leader key if it is free.
    async fn try_lead(&mut self) -> Result<(), Error> {
        let store = self.reg.store().clone();
        if let Some(old) = self.held {
            self.release(old).await;
        }
        let sent = tokio::time::Instant::now();
        let lease = store.grant_lease(self.cfg.lease_ttl).await?;
        self.held = Some(lease);
        if self.reg.try_lead(&self.cfg.machine_id, lease).await? {
            let until = sent + self.ttl();
            self.on(LeaderEvent::Acquired { lease, until }).await;
        } else {
            // Someone else leads: no lease to keep alive until it is our turn.
            self.release(lease).await;
        }
        Ok(())
    }

    /// Renews the leader's lease: the event it comes to.
    async fn renew(store: &S, lease: i64, ttl: Duration) -> LeaderEvent {
        let sent = tokio::time::Instant::now();
        match store.keep_alive(lease).await {
            Ok(true) => LeaderEvent::Renewed { until: sent + ttl },
            Ok(false) => {
                tracing::warn!("engine lease {lease} has expired");
                LeaderEvent::Lapsed
            }
            Err(e) => {
                tracing::warn!("renewing engine lease {lease}: {e}");
                LeaderEvent::Lapsed
            }
        }
    }

    /// One pass while leading, renewing the lease meanwhile; stops leading if the lease's
    /// time runs out first. Gives whether the pass finished.
    async fn lead_pass(
        &mut self,
        cache: &ClusterCache<S>,
        reqs: &mut ReqCache,
        renew: &mut tokio::time::Interval,
    ) -> Result<bool, Error> {
        let reg = self.reg.clone();
        let store = reg.store().clone();
        let ttl = self.ttl();
        let work = pass(&reg, cache, reqs);
        tokio::pin!(work);
        loop {
            let Leadership::Leader { lease, until } = self.state else {
                return Ok(false);
            };
            tokio::select! {
                done = &mut work => {
                    self.stats.decisions += done?;
                    self.stats.passes += 1;
                    return Ok(true);
                }
                _ = renew.tick() => {
                    let ev = Self::renew(&store, lease, ttl).await;
                    self.on(ev).await;
                }
                _ = tokio::time::sleep_until(until) => {
                    self.on(LeaderEvent::Lapsed).await;
                }
            }
        }
    }

    /// One session, from reading the cluster to `stop` or the first etcd failure.
    async fn run(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), Error> {
        let reg = self.reg.clone();
        let store = reg.store().clone();
        // An earlier session's lease may still hold the key, and nobody renews it now.
        if let Some(old) = self.held.take() {
            self.release(old).await;
        }
        let mut cache = ClusterCache::start(reg.clone()).await?;
        let leader_key = reg.leader_key();
        let (_, rev) = store.get_prefix(&leader_key).await?;
        let mut leader_events = store.watch_prefix(&leader_key, rev).await?;
        let mut reqs = ReqCache::new();
        let mut want_lead = true;
        let mut dirty = true;
        let ttl = self.ttl();
        let mut renew = tokio::time::interval(ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync = tokio::time::interval(self.cfg.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if std::mem::take(&mut want_lead) && !self.state.leading() {
                self.try_lead().await?;
                dirty |= self.state.leading();
            }
            if self.state.leading() && dirty {
                dirty = !self.lead_pass(&cache, &mut reqs, &mut renew).await?;
            }
            let (leading, until) = match self.state {
                Leadership::Leader { until, .. } => (true, until),
                Leadership::Follower => (false, tokio::time::Instant::now()),
            };
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
                    Some(Event::Delete { .. }) => want_lead = self.on(LeaderEvent::KeyDeleted).await,
                    Some(Event::Put(kv)) => {
                        want_lead = self.on(LeaderEvent::KeyWritten { lease: kv.lease }).await;
                    }
                    None => {
                        let (kvs, rev) = store.get_prefix(&leader_key).await?;
                        leader_events = store.watch_prefix(&leader_key, rev).await?;
                        let ev = match kvs.first() {
                            Some(kv) => LeaderEvent::KeyWritten { lease: kv.lease },
                            None => LeaderEvent::KeyDeleted,
                        };
                        want_lead = self.on(ev).await;
                    }
                },
                _ = renew.tick(), if leading => {
                    if let Leadership::Leader { lease, .. } = self.state {
                        let ev = Self::renew(&store, lease, ttl).await;
                        self.on(ev).await;
                    }
                },
                _ = tokio::time::sleep_until(until), if leading => {
                    self.on(LeaderEvent::Lapsed).await;
                },
                _ = resync.tick() => {
                    dirty = true;
                    if self.state.leading() {
                        // Content blobs no unit names (left by --replace and destroy).
                        match reg.collect_unit_garbage().await {
                            Ok(0) => {}
                            Ok(n) => tracing::debug!("removed {n} unit blobs no unit names"),
                            Err(e) => tracing::warn!("collecting unit blobs: {e}"),
                        }
                    }
                    // A safety net for a missed deletion event: look once per resync.
                    if !self.state.leading() && reg.leader().await?.is_none() {
                        want_lead = true;
                    }
                },
            }
        }
        if let Leadership::Leader { lease, .. } = self.state {
            // Revoking the lease deletes the key: the others take over at once.
            self.set(Leadership::Follower);
            self.release(lease).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_transitions() {
        use LeaderEvent as E;
        use Leadership as L;
        let t0 = tokio::time::Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let leader = L::Leader {
            lease: 7,
            until: t0,
        };
        let steps = |release, try_lead| LeaderSteps { release, try_lead };
        let table = [
            // A free key: try; a taken one: wait.
            (L::Follower, E::KeyDeleted, L::Follower, steps(None, true)),
            (
                L::Follower,
                E::KeyWritten { lease: 9 },
                L::Follower,
                steps(None, false),
            ),
            (
                L::Follower,
                E::Acquired {
                    lease: 7,
                    until: t0,
                },
                leader,
                steps(None, false),
            ),
            // Our own write, and renewals, keep leadership.
            (
                leader,
                E::KeyWritten { lease: 7 },
                leader,
                steps(None, false),
            ),
            (
                leader,
                E::Renewed { until: t1 },
                L::Leader {
                    lease: 7,
                    until: t1,
                },
                steps(None, false),
            ),
            // The key gone, taken under another lease, or our lease's time out: no longer.
            (leader, E::KeyDeleted, L::Follower, steps(Some(7), true)),
            (
                leader,
                E::KeyWritten { lease: 9 },
                L::Follower,
                steps(Some(7), false),
            ),
            (leader, E::Lapsed, L::Follower, steps(Some(7), false)),
            // Nothing a follower hears of leases makes it lead.
            (
                L::Follower,
                E::Renewed { until: t1 },
                L::Follower,
                steps(None, false),
            ),
            (L::Follower, E::Lapsed, L::Follower, steps(None, false)),
        ];
        for (from, ev, to, want) in table {
            assert_eq!(from.on(ev), (to, want), "{from:?} on {ev:?}");
        }
    }
}

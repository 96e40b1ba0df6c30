//! The agent's loop: one closed [`Event`] at a time, explicit state between them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_model::{JobState, Machine};
use fleet_store::{Change, ClusterCache, KvStore, Registry};
use systemd_unit::fleet::UnitHash;
use tokio::sync::watch;

use super::presence::{unless_fenced, Presence, Tended};
use super::{
    Agent, AgentConfig, Local, Reconfig, UnitManager, MAX_BACKOFF, RESTART_LIMIT, SETTLE,
    STATE_PERIOD,
};
use crate::Error;
use tokio::time::Instant;

/// Runs the agent until `stop` turns true; then purges, as fleet did on a graceful stop:
/// unloads every unit and removes the machine. `ready` turns true once the machine is
/// registered.
///
/// etcd failures after registration are never fatal: a failed pass is retried with
/// backoff, and units keep running through an outage (fleet's behaviour) — except fenced
/// units (`[X-Fleet] Fencing=true`, or every unit with the cluster's `fencing`), which are
/// stopped half a TTL after the last renewal when none succeeds, so they are down before
/// etcd may expire the lease and another machine start them.
pub async fn run_agent<S: KvStore, M: UnitManager>(
    reg: Arc<Registry<S>>,
    cfg: AgentConfig,
    manager: M,
    stop: watch::Receiver<bool>,
    ready: Option<watch::Sender<bool>>,
) -> Result<(), Error> {
    run_reconfigurable_agent(reg, cfg, manager, stop, ready, None).await
}

/// When the next pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PassState {
    /// Nothing to do until an event says otherwise.
    Idle,
    /// A pass runs at this moment: now, after a burst of changes has settled, or after a
    /// backoff.
    Due(Instant),
}

impl PassState {
    /// A pass as soon as it may run (a settle or backoff already under way stands).
    fn soon(&mut self) {
        if *self == PassState::Idle {
            *self = PassState::Due(Instant::now());
        }
    }

    /// A change worth a pass: it runs after a short settle (a `fleetctl start` of many
    /// units arrives as a burst; one pass and one daemon-reload serve it all), unless one
    /// is already due.
    fn changed(&mut self) {
        if *self == PassState::Idle {
            *self = PassState::Due(Instant::now() + SETTLE);
        }
    }

    /// A pass that could not finish runs again after `backoff`.
    fn retry(&mut self, backoff: Duration) {
        *self = PassState::Due(Instant::now() + backoff);
    }

    /// When the pass is due, if one is.
    fn at(self) -> Option<Instant> {
        match self {
            PassState::Idle => None,
            PassState::Due(t) => Some(t),
        }
    }
}

/// The registry's watches, which feed the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Up: changes arrive.
    Up,
    /// Ended (etcd failed them): set up again at this moment — a timer of its own, so no
    /// pass ever leaves the agent deaf.
    Down { retry_at: Instant },
}

/// Everything that moves the agent, one at a time.
#[derive(Debug)]
enum Event {
    /// fleetd is stopping.
    Stop,
    /// fleetd read its configuration again (SIGHUP).
    Reconfigured(Reconfig),
    /// The registry's watches saw a change (or ended).
    Registry(Change),
    /// The presence lease is due for renewal.
    RenewalDue,
    /// Half a TTL has passed since the last renewal sent, with fenced units running.
    FenceDue,
    /// The periodic full pass (`AgentConfig::resync`).
    Resync,
    /// A unit whose task failed is due to be tried again.
    RetryDue,
    /// Time to compare the units' systemd states with what was published.
    StatesDue,
    /// The hold after registering is over: look at the held units again.
    HoldOver,
    /// The pass's moment has come.
    PassDue,
    /// Time to set up the registry's watches again.
    RewatchDue,
}

/// Sleeps until `at`, or forever when there is no moment.
async fn until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A running agent: the agent's own state, the registry cache, and the loop's state.
struct Runner<S: KvStore, M> {
    agent: Agent<S, M>,
    cache: ClusterCache<S>,
    pass: PassState,
    watch: Watch,
    /// The wait before the next retry after etcd failed; grows to [`MAX_BACKOFF`].
    backoff: Duration,
    states: tokio::time::Interval,
    resync: tokio::time::Interval,
    /// Whether the API may answer (see [`Runner::sync_ready`]).
    ready: Option<watch::Sender<bool>>,
}

/// Registers the machine under a fresh lease: (lease, when it was asked for), or `None`
/// when told to stop first. A previous run that crashed may still hold the presence key
/// until its lease lapses; past that, another machine has this ID: fleet 1.0 kept running,
/// unregistered (its API answering that it cannot reach etcd), and kept trying, so a fixed
/// ID lets it in.
async fn register<S: KvStore>(
    reg: &Registry<S>,
    me: &Machine,
    ttl: i64,
    stop: &mut watch::Receiver<bool>,
) -> Option<(i64, tokio::time::Instant)> {
    let store = reg.store();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(ttl.max(1) as u64 + 2);
    let (mut warned, mut failing) = (false, false);
    loop {
        let sent = tokio::time::Instant::now();
        let attempt = async {
            let lease = store.grant_lease(ttl).await?;
            if reg.register_machine(me, lease).await? {
                return Ok::<_, Error>(Some(lease));
            }
            store.revoke(lease).await?;
            Ok(None)
        };
        let wait = match attempt.await {
            Ok(Some(lease)) => return Some((lease, sent)),
            Ok(None) => {
                let late = tokio::time::Instant::now() >= deadline;
                if late && !warned {
                    tracing::error!("{}; retrying", Error::DuplicateMachine(me.id.clone()));
                    warned = true;
                }
                Duration::from_millis(if late { 2000 } else { 200 })
            }
            // etcd cannot be reached yet: keep trying, as after registering.
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(machine = %me.id, "registering: {e}; retrying");
                }
                MAX_BACKOFF
            }
        };
        tokio::select! {
            _ = stop.changed() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The first copy of the registry, once registered: tried again (the lease renewed
/// meanwhile, as far as etcd answers) until it comes, or `None` when told to stop. An
/// agent that could register but not yet read must not end: its machine would look alive
/// with nobody tending its units.
async fn first_cache<S: KvStore>(
    reg: &Arc<Registry<S>>,
    lease: i64,
    stop: &mut watch::Receiver<bool>,
) -> Option<ClusterCache<S>> {
    let mut wait = SETTLE;
    loop {
        match tokio::time::timeout(RESTART_LIMIT, ClusterCache::start(reg.clone())).await {
            Ok(Ok(c)) => return Some(c),
            Ok(Err(e)) => tracing::warn!("reading the registry: {e}; retrying in {wait:?}"),
            Err(_) => tracing::warn!("reading the registry: no answer in {RESTART_LIMIT:?}"),
        }
        let _ = reg.store().keep_alive(lease).await;
        tokio::select! {
            _ = stop.changed() => {
                // Never tended: leave no presence behind.
                let _ = reg.store().revoke(lease).await;
                return None;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 4).min(MAX_BACKOFF);
    }
}

/// [`run_agent`], taking new settings from `reconfig` while it runs (fleetd's SIGHUP).
pub async fn run_reconfigurable_agent<S: KvStore, M: UnitManager>(
    reg: Arc<Registry<S>>,
    cfg: AgentConfig,
    manager: M,
    mut stop: watch::Receiver<bool>,
    ready: Option<watch::Sender<bool>>,
    mut reconfig: Option<watch::Receiver<Reconfig>>,
) -> Result<(), Error> {
    let Some((lease, sent)) = register(&reg, &cfg.machine, cfg.ttl, &mut stop).await else {
        return Ok(());
    };
    if let Some(r) = &ready {
        let _ = r.send(true);
    }
    let Some(cache) = first_cache(&reg, lease, &mut stop).await else {
        return Ok(());
    };
    let agent = Agent::adopt(reg.clone(), &cfg, manager, &cache, lease, sent).await;
    let interval = |period| {
        let mut i = tokio::time::interval(period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    };
    let mut run = Runner {
        agent,
        cache,
        pass: PassState::Due(Instant::now()),
        watch: Watch::Up,
        backoff: SETTLE,
        states: interval(STATE_PERIOD),
        resync: interval(cfg.resync),
        ready,
    };
    loop {
        if run.pass.at().is_some_and(|t| Instant::now() >= t) {
            run.run_pass().await;
            run.sync_ready();
        }
        match run.next_event(&mut stop, &mut reconfig).await {
            Event::Stop => break,
            event => run.handle(event).await,
        }
    }
    if *stop.borrow() {
        run.agent.purge().await?;
    }
    Ok(())
}

/// The next reconfiguration, or never once fleetd no longer reloads.
async fn reconfigured(reconfig: &mut Option<watch::Receiver<Reconfig>>) -> Reconfig {
    let Some(r) = reconfig.as_mut() else {
        return std::future::pending().await;
    };
    match r.changed().await {
        Ok(()) => r.borrow_and_update().clone(),
        Err(_) => std::future::pending().await,
    }
}

impl<S: KvStore, M: UnitManager> Runner<S, M> {
    /// Waits for the next event. Nothing here does work: each branch only says what
    /// happened.
    async fn next_event(
        &mut self,
        stop: &mut watch::Receiver<bool>,
        reconfig: &mut Option<watch::Receiver<Reconfig>>,
    ) -> Event {
        let a = &self.agent;
        let fence_at = a.fence_armed().then(|| a.presence.fence_at());
        let idle = self.pass == PassState::Idle;
        let retry_at = a.next_retry().filter(|_| idle);
        let states_due = idle && !a.current.is_empty();
        let renewal_at = a.presence.next;
        let hold_ends = a.presence.hold_ends();
        let (pass_at, watching) = (self.pass.at(), self.watch == Watch::Up);
        let rewatch_at = match self.watch {
            Watch::Up => None,
            Watch::Down { retry_at } => Some(retry_at),
        };
        tokio::select! {
            _ = stop.changed() => Event::Stop,
            r = reconfigured(reconfig) => Event::Reconfigured(r),
            change = self.cache.next(), if watching => Event::Registry(change),
            _ = tokio::time::sleep_until(renewal_at) => Event::RenewalDue,
            _ = until(fence_at) => Event::FenceDue,
            _ = self.resync.tick() => Event::Resync,
            _ = until(retry_at) => Event::RetryDue,
            _ = self.states.tick(), if states_due => Event::StatesDue,
            _ = until(hold_ends) => Event::HoldOver,
            _ = until(pass_at) => Event::PassDue,
            _ = until(rewatch_at) => Event::RewatchDue,
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Stop | Event::PassDue => {}
            Event::Reconfigured(r) => {
                if let Err(e) = self.agent.reconfigure(r).await {
                    tracing::warn!("applying the new configuration: {e}");
                }
                self.pass.changed();
            }
            Event::Registry(change) => self.on_change(change),
            Event::RenewalDue => self.on_renewal_due().await,
            Event::FenceDue => self.agent.fence().await,
            Event::Resync | Event::RetryDue => self.pass.soon(),
            Event::StatesDue => {
                let clock = self.agent.fence_clock();
                match unless_fenced(self.agent.refresh_states(), clock).await {
                    Some(Ok(())) => {}
                    Some(Err(e)) => tracing::debug!("publishing unit states: {e}"),
                    None => self.agent.fence().await,
                }
            }
            Event::HoldOver => {
                self.agent.presence.end_hold();
                self.pass.soon();
            }
            Event::RewatchDue => self.rewatch().await,
        }
    }

    fn back_off(&mut self) {
        self.backoff = (self.backoff * 4).min(MAX_BACKOFF);
    }

    /// Runs the due pass and decides when the next one runs. A pass stuck on an
    /// unreachable etcd must not delay fencing.
    async fn run_pass(&mut self) {
        self.pass = PassState::Idle;
        let a = &mut self.agent;
        let clock = a.fence_clock();
        match unless_fenced(a.pass(&self.cache), clock).await {
            Some(Ok(())) => self.backoff = SETTLE,
            None => {
                a.fence().await;
                self.pass.retry(self.backoff);
            }
            Some(Err(e)) if e.is_lease_lost() => {
                // Cut off past the TTL mid-pass: register again and republish everything.
                let (reg, me) = (a.reg.clone(), a.me.clone());
                match a.presence.regain(&reg, &me).await {
                    Ok(()) => a.regained(),
                    Err(e) => tracing::warn!("registering again: {e}"),
                }
                self.pass.retry(self.backoff);
            }
            Some(Err(e)) => {
                tracing::warn!("agent pass failed, retrying in {:?}: {e}", self.backoff);
                self.pass.retry(self.backoff);
                self.back_off();
            }
        }
        // Re-registered during the pass: the next pass republishes what this one did not.
        if self.agent.republish {
            self.pass.soon();
        }
    }

    /// A change from the registry's watch. A machine change may carry job changes read in
    /// the same batch, so both look at the changed units; only units that are here or are
    /// meant to be here matter. Metadata changes only with machines; while this machine is
    /// briefly absent (a lapsed lease) its metadata stands.
    fn on_change(&mut self, change: Change) {
        let (a, cache) = (&mut self.agent, &mut self.cache);
        match change {
            Change::Closed => {
                self.watch = Watch::Down {
                    retry_at: Instant::now() + self.backoff,
                };
            }
            change @ (Change::Machines | Change::Jobs) => {
                let me = a.me.id.as_str();
                let mut mine = cache.take_changed().iter().any(|u| {
                    a.current.contains_key(u)
                        || cache.target_of(u).as_deref() == Some(me)
                        || cache.is_global(u)
                });
                if change == Change::Machines {
                    if let Some(now) = cache.metadata_of(me) {
                        mine |= now != a.metadata;
                        a.metadata = now;
                    }
                }
                if mine {
                    self.pass.changed();
                }
            }
        }
    }

    /// The presence lease is due for renewal.
    async fn on_renewal_due(&mut self) {
        let a = &mut self.agent;
        let clock = a.fence_clock();
        let (reg, me) = (a.reg.clone(), a.me.clone());
        let Some(tended) = unless_fenced(a.presence.tend(&reg, &me), clock).await else {
            a.fence().await;
            return;
        };
        match tended {
            // Cut off for longer than the TTL: republish everything.
            Ok(Tended::Regained) => {
                a.regained();
                self.pass.soon();
            }
            // Back before the lease lapsed: fenced units may start again.
            Ok(Tended::Recovered) => self.pass.soon(),
            Ok(Tended::Quiet | Tended::Failed) => {}
            Err(e) => tracing::warn!("registering again: {e}"),
        }
        self.sync_ready();
    }

    /// The API answers 503 while etcd cannot be reached, as fleet's did: `ready` follows
    /// the presence after every renewal and every pass (a pass may register again).
    fn sync_ready(&self) {
        if let Some(r) = &self.ready {
            r.send_if_modified(|up| {
                let now = self.agent.presence.reachable();
                std::mem::replace(up, now) != now
            });
        }
    }

    /// Sets up the registry's watches again, or tries again later.
    async fn rewatch(&mut self) {
        let a = &mut self.agent;
        let clock = a.fence_clock();
        let restart = tokio::time::timeout(RESTART_LIMIT, ClusterCache::start(a.reg.clone()));
        match unless_fenced(restart, clock).await {
            Some(Ok(Ok(c))) => {
                self.cache = c;
                self.watch = Watch::Up;
                self.pass.soon();
            }
            None => {
                a.fence().await;
                self.watch = Watch::Down {
                    retry_at: Instant::now(),
                };
            }
            Some(failed) => {
                if let Ok(Err(e)) = failed {
                    tracing::debug!("watching the registry again: {e}");
                }
                self.watch = Watch::Down {
                    retry_at: Instant::now() + self.backoff,
                };
                self.back_off();
            }
        }
    }
}

impl<S: KvStore, M: UnitManager> Agent<S, M> {
    /// The agent of a freshly registered machine. Units a previous run left behind count
    /// as loaded-but-unknown (fleet's "inactive" cache state): desired ones are loaded again
    /// (a no-op for running units), others unloaded — but not before the hold is over: they
    /// may have been unscheduled while no fleetd ran (its lease lapsed), and the engine has
    /// not seen this machine again yet, so a pinned unit keeps running through a restart.
    async fn adopt(
        reg: Arc<Registry<S>>,
        cfg: &AgentConfig,
        mut manager: M,
        cache: &ClusterCache<S>,
        lease: i64,
        sent: tokio::time::Instant,
    ) -> Self {
        let me = cfg.machine.clone();
        let metadata = cache
            .metadata_of(&me.id)
            .unwrap_or_else(|| me.metadata.clone());
        let existing = manager.existing().await;
        let mut agent = Agent {
            reg,
            me,
            manager,
            fencing: cfg.fencing,
            presence: Presence::new(lease, cfg.ttl, sent),
            current: BTreeMap::new(),
            reqs: BTreeMap::new(),
            metadata,
            republish: false,
            published: BTreeMap::new(),
            stale: Default::default(),
            refence: false,
            failures: BTreeMap::new(),
        };
        for (name, text) in existing {
            let Ok(hash) = UnitHash::of_text(&text) else {
                continue;
            };
            let fenced = agent.fenced(&name, hash, &text);
            agent.current.insert(
                name,
                Local {
                    state: JobState::Inactive,
                    hash,
                    fenced,
                },
            );
        }
        if !agent.current.is_empty() {
            agent.presence.hold();
        }
        agent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::SimManager;
    use fleet_store::MemoryStore;

    const PLAIN: &str = "[Service]\nExecStart=/bin/sleep 1000\n";
    const FENCED: &str = "[Service]\nExecStart=/bin/sleep 1000\n\n[X-Fleet]\nFencing=true\n";

    /// Samples what runs every 10 ms until `done` says so or `limit` passes; gives the
    /// moment (from `origin`) it did.
    async fn when(
        units: &SimManager,
        origin: Instant,
        limit: Duration,
        done: impl Fn(&[String]) -> bool,
    ) -> Option<Duration> {
        while origin.elapsed() < limit {
            if done(&units.running()) {
                return Some(origin.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// An agent for machine `m1` on `view` (its store handle), with its simulated units.
    fn spawn_agent(
        view: &MemoryStore,
        ttl: i64,
    ) -> (
        SimManager,
        watch::Sender<bool>,
        tokio::task::JoinHandle<Result<(), Error>>,
    ) {
        let reg = Arc::new(Registry::new(view.clone(), "/p/"));
        let units = SimManager::default();
        let (stop_tx, stop) = watch::channel(false);
        let cfg = AgentConfig {
            machine: Machine {
                id: "m1".into(),
                public_ip: String::new(),
                metadata: Default::default(),
                version: "test".into(),
            },
            ttl,
            resync: Duration::from_secs(60),
            fencing: false,
        };
        let task = tokio::spawn(super::run_agent(reg, cfg, units.clone(), stop, None));
        (units, stop_tx, task)
    }

    /// Schedules a unit on m1 by hand (there is no engine).
    async fn schedule(store: &MemoryStore, name: &str, text: &str) {
        let admin = Registry::new(store.clone(), "/p/");
        admin
            .create_unit(name, text, JobState::Launched)
            .await
            .unwrap();
        assert!(admin.schedule(name, "m1").await.unwrap());
    }

    /// Schedules a plain unit `name`, waits (at most 10 s) until the agent runs it, then
    /// stops the agent, which must end cleanly.
    async fn runs_then_stops(
        store: &MemoryStore,
        name: &str,
        units: &SimManager,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<Result<(), Error>>,
    ) {
        schedule(store, name, PLAIN).await;
        let runs = |r: &[String]| r == [name];
        assert!(when(units, Instant::now(), Duration::from_secs(10), runs)
            .await
            .is_some());
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
    }

    /// An agent started while etcd cannot be reached waits for it and registers then (it
    /// used to end at once with the error).
    #[tokio::test(start_paused = true)]
    async fn an_agent_started_while_etcd_is_away_registers_when_it_comes() {
        let store = MemoryStore::new();
        let view = store.view();
        view.set_reachable(false);
        let (units, stop, task) = spawn_agent(&view, 4);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!task.is_finished(), "the agent gave up");
        view.set_reachable(true);
        runs_then_stops(&store, "late.service", &units, stop, task).await;
    }

    /// Registered, but the first read of the registry fails (a cut at that very moment):
    /// the agent keeps trying, and its machine's units start once it reads (it used to end,
    /// leaving its machine registered with nobody tending it).
    #[tokio::test(start_paused = true)]
    async fn an_agent_whose_first_read_fails_keeps_trying() {
        let store = MemoryStore::new();
        let view = store.view();
        view.fail_prefix_reads(3);
        let (units, stop, task) = spawn_agent(&view, 4);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!task.is_finished(), "the agent gave up");
        runs_then_stops(&store, "after.service", &units, stop, task).await;
    }

    /// One agent (no engine: its units are scheduled by hand) on a store view it can be
    /// cut off by, on paused time: a fenced unit stops half a TTL after the last renewal
    /// was sent, a plain one keeps running, and both run again once a renewal succeeds,
    /// under the same lease.
    #[tokio::test(start_paused = true)]
    async fn fenced_units_stop_at_half_the_ttl_and_start_again_on_recovery() {
        let store = MemoryStore::new();
        let view = store.view();
        let (units, stop_tx, agent) = spawn_agent(&view, 4);
        schedule(&store, "plain.service", PLAIN).await;
        schedule(&store, "fenced.service", FENCED).await;
        let start = Instant::now();
        let both = |r: &[String]| r == ["fenced.service", "plain.service"];
        assert!(when(&units, start, Duration::from_secs(5), both)
            .await
            .is_some());
        let lease = || async {
            let kv = store.get("/p/machines/m1/object").await.unwrap();
            kv.map(|kv| kv.lease)
        };
        let before = lease().await;

        // Cut off just after a renewal was sent: renewals go every 4/3 s.
        let cut = Instant::now();
        view.set_reachable(false);
        let plain_only = |r: &[String]| r == ["plain.service"];
        let fenced = when(&units, cut, Duration::from_secs(5), plain_only)
            .await
            .expect("the fenced unit never stopped");
        // Half the TTL (2 s) after the last renewal sent, which was at most one period
        // (1.33 s) before the cut.
        assert!(
            fenced > Duration::from_millis(600) && fenced <= Duration::from_millis(2050),
            "fenced {fenced:?} after the cut"
        );
        // Nothing else happens while cut off (and short of the TTL's lapse).
        let cut_for = Duration::from_millis(2500);
        tokio::time::sleep_until(cut + cut_for).await;
        assert_eq!(units.running(), vec!["plain.service"]);
        assert_eq!(units.starts("plain.service"), 1);

        view.set_reachable(true);
        let healed = Instant::now();
        let back = when(&units, healed, Duration::from_secs(5), both)
            .await
            .expect("the fenced unit never started again");
        assert!(
            back <= Duration::from_millis(1400),
            "back {back:?} after the heal"
        );
        assert_eq!(lease().await, before, "the presence lease lapsed");
        assert_eq!(units.starts("fenced.service"), 2);
        assert_eq!(units.starts("plain.service"), 1);
        stop_tx.send(true).unwrap();
        agent.await.unwrap().unwrap();
        assert!(units.running().is_empty(), "a graceful stop purges");
    }
}

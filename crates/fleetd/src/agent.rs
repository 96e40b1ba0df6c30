//! The agent role: keep this machine registered, and make its units match the schedule —
//! the non-global units targeted here and the global units its metadata matches — through a
//! [`UnitManager`] (systemd over D-Bus in a machine; a simulation in tests and benchmarks).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Writes and links many units (one request where the manager can); gives the units
    /// that failed, each with its reason — the others are loaded.
    fn load_many(
        &mut self,
        units: &[(String, String)],
    ) -> impl Future<Output = Vec<(String, String)>> + Send {
        async move {
            let mut failed = Vec::new();
            for (name, text) in units {
                if let Err(e) = self.load(name, text).await {
                    failed.push((name.clone(), e));
                }
            }
            failed
        }
    }
    /// Binds each unit that is fenced to the fleetd that guards it (and unbinds the others),
    /// so that fenced units stop the moment that fleetd dies, before its lease can lapse;
    /// takes effect at the unit's next load by systemd. Gives the units that failed.
    fn bind(
        &mut self,
        units: &[(String, bool)],
    ) -> impl Future<Output = Vec<(String, String)>> + Send {
        let _ = units;
        async { Vec::new() }
    }
    /// Stops, unlinks and removes the unit.
    fn unload(&mut self, name: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// daemon-reload, once after loads and unloads.
    fn reload(&mut self) -> impl Future<Output = Result<(), String>> + Send;
    /// Starts the unit (not waiting for it to be active).
    fn start(&mut self, name: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// Starts many units (requests pipelined where the manager can); gives the units that
    /// failed, each with its reason.
    fn start_many(
        &mut self,
        names: &[String],
    ) -> impl Future<Output = Vec<(String, String)>> + Send {
        async move {
            let mut failed = Vec::new();
            for n in names {
                if let Err(e) = self.start(n).await {
                    failed.push((n.clone(), e));
                }
            }
            failed
        }
    }
    /// Stops the unit.
    fn stop(&mut self, name: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// The unit's systemd (load, active, sub) state.
    fn state(&mut self, name: &str) -> impl Future<Output = (String, String, String)> + Send;
    /// The states of many units, in order (one request where the manager can).
    fn states(
        &mut self,
        names: &[String],
    ) -> impl Future<Output = Vec<(String, String, String)>> + Send {
        async move {
            let mut out = Vec::with_capacity(names.len());
            for n in names {
                out.push(self.state(n).await);
            }
            out
        }
    }
    /// Units left loaded by a previous run (name, text), so the agent can take them over
    /// or unload them.
    fn existing(&mut self) -> impl Future<Output = Vec<(String, String)>> + Send;
}

/// What a running agent takes from a configuration reload (fleetd's SIGHUP): how the
/// machine presents itself and the default for fencing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconfig {
    /// The public IP published for this machine.
    pub public_ip: String,
    /// The configured metadata (dynamic metadata set through the API stays laid over it).
    pub metadata: BTreeMap<String, String>,
    /// Fence every unit that does not say otherwise.
    pub fencing: bool,
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
    /// Fence every unit that does not say otherwise (`fencing` in fleet.conf).
    pub fencing: bool,
}

/// One unit as this agent has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Local {
    state: JobState,
    hash: UnitHash,
    /// Stopped when the presence lease cannot be renewed (see [`run_agent`]).
    fenced: bool,
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

/// The units meant to run on this machine: name → (state, hash, text).
type Desired = BTreeMap<String, (JobState, UnitHash, String)>;

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

/// How long a burst of unit changes may settle before the agent acts on it.
const SETTLE: Duration = Duration::from_millis(30);

/// After registering anew, how long units the engine unscheduled while this machine was
/// away keep running here, waiting to be scheduled back (pinned units would otherwise be
/// stopped and started again on every reconnection). The engine places them back as soon
/// as it sees the machine — which, after an etcd election, can take its session a few
/// seconds — and a unit it places elsewhere is not held; so the hold is generous.
const HOLD: Duration = Duration::from_secs(15);

/// How often the systemd states of this machine's units are compared with what was
/// published (fleet's unit-state publisher polled systemd every second too).
const STATE_PERIOD: Duration = Duration::from_secs(1);

/// How many starts go to the unit manager at once (between lease renewals).
const START_CHUNK: usize = 128;

/// The longest a restart of the registry watches may take before it is tried again.
const RESTART_LIMIT: Duration = Duration::from_secs(5);

/// The longest wait before retrying after etcd failed.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What renewing the presence lease came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tended {
    /// Renewed (or not due), as before.
    Quiet,
    /// Renewed after failures: etcd is reachable again with the lease intact.
    Recovered,
    /// The lease had lapsed: this machine registered again under a new lease.
    Regained,
    /// etcd could not be reached; the lease stands until it expires.
    Failed,
}

/// This machine's presence: its lease, renewed every third of the TTL. Long passes call
/// [`Presence::tend`] between units, so a busy agent never lets its lease lapse.
struct Presence {
    lease: i64,
    ttl: i64,
    period: Duration,
    next: tokio::time::Instant,
    /// When the last successful renewal or registration was sent, in milliseconds since
    /// `epoch`: etcd keeps the lease at least until then + TTL. Shared with the fencing
    /// timer, which watches it while a pass runs.
    renewed: Arc<AtomicU64>,
    epoch: tokio::time::Instant,
    failing: bool,
    /// Whether this outage has lasted a whole TTL and been reported (fleet's server monitor).
    monitor_fired: bool,
}

impl Presence {
    fn new(lease: i64, ttl: i64, sent: tokio::time::Instant) -> Self {
        let period = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
        Self {
            lease,
            ttl,
            period,
            next: sent + period,
            renewed: Arc::new(AtomicU64::new(0)),
            epoch: sent,
            failing: false,
            monitor_fired: false,
        }
    }

    fn mark(&self, sent: tokio::time::Instant) {
        let ms = sent.saturating_duration_since(self.epoch).as_millis() as u64;
        self.renewed.fetch_max(ms, Ordering::SeqCst);
    }

    /// Renews the lease if due, waiting at most one renewal period; after a lapse registers
    /// again.
    async fn tend<S: KvStore>(&mut self, reg: &Registry<S>, me: &Machine) -> Result<Tended, Error> {
        let now = tokio::time::Instant::now();
        if now < self.next {
            return Ok(Tended::Quiet);
        }
        self.next = now + self.period;
        match tokio::time::timeout(self.period, reg.store().keep_alive(self.lease)).await {
            Ok(Ok(true)) => {
                self.mark(now);
                self.monitor_fired = false;
                if std::mem::take(&mut self.failing) {
                    tracing::info!(machine = %me.id, "etcd reachable again; presence renewed");
                    return Ok(Tended::Recovered);
                }
                Ok(Tended::Quiet)
            }
            Ok(Ok(false)) => {
                self.regain(reg, me).await?;
                Ok(Tended::Regained)
            }
            Ok(Err(e)) if e.is_lease_lost() => {
                self.regain(reg, me).await?;
                Ok(Tended::Regained)
            }
            failure => {
                if !self.failing {
                    let why = match failure {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", self.period),
                    };
                    tracing::warn!(machine = %me.id, "cannot renew presence: {why}");
                }
                self.failing = true;
                // fleet's server monitor fired when no heartbeat succeeded for a whole TTL
                // (and restarted the server); here the agent simply keeps trying.
                let last = self.epoch + Duration::from_millis(self.renewed.load(Ordering::SeqCst));
                if !self.monitor_fired
                    && now.saturating_duration_since(last)
                        >= Duration::from_secs(self.ttl.max(1) as u64)
                {
                    self.monitor_fired = true;
                    tracing::warn!(
                        "Server monitor triggered: Monitor timed out before successful heartbeat"
                    );
                }
                Ok(Tended::Failed)
            }
        }
    }

    /// A new lease and presence record, after the old lease lapsed.
    async fn regain<S: KvStore>(&mut self, reg: &Registry<S>, me: &Machine) -> Result<(), Error> {
        tracing::warn!(machine = %me.id, "presence lease lost; registering again");
        let sent = tokio::time::Instant::now();
        let lease = reg.store().grant_lease(self.ttl).await?;
        reg.register_machine(me, lease).await?;
        self.lease = lease;
        self.mark(sent);
        self.failing = false;
        self.monitor_fired = false;
        self.next = tokio::time::Instant::now() + self.period;
        Ok(())
    }

    /// When fenced units must stop if no renewal succeeds first: half the TTL after the
    /// last renewal was sent, which leaves the other half for them to stop before etcd
    /// may expire the lease and the engine place them elsewhere.
    fn fence_at(&self) -> tokio::time::Instant {
        fence_at(&self.renewed, self.epoch, self.ttl)
    }
}

fn fence_at(renewed: &AtomicU64, epoch: tokio::time::Instant, ttl: i64) -> tokio::time::Instant {
    epoch
        + Duration::from_millis(renewed.load(Ordering::SeqCst))
        + Duration::from_millis(ttl.max(1) as u64 * 500)
}

/// Resolves once the fencing moment passes with no renewal in between.
async fn fence_due(renewed: Arc<AtomicU64>, epoch: tokio::time::Instant, ttl: i64) {
    loop {
        let at = fence_at(&renewed, epoch, ttl);
        if tokio::time::Instant::now() >= at {
            return;
        }
        tokio::time::sleep_until(at).await;
    }
}

/// What the fencing timer watches: the last renewal (shared with [`Presence`]), its epoch,
/// and the TTL.
type FenceClock = (Arc<AtomicU64>, tokio::time::Instant, i64);

/// Runs `fut` unless the fencing moment passes first: then it is dropped and `None` says
/// to fence now. Every await of the agent's loop that can hang on etcd goes through this.
async fn unless_fenced<T>(fut: impl Future<Output = T>, clock: Option<FenceClock>) -> Option<T> {
    match clock {
        None => Some(fut.await),
        Some((renewed, epoch, ttl)) => tokio::select! {
            r = fut => Some(r),
            _ = fence_due(renewed, epoch, ttl) => None,
        },
    }
}

/// The agent's own state between passes.
struct Agent<S, M> {
    reg: Arc<Registry<S>>,
    me: Machine,
    manager: M,
    /// Fence units that do not say otherwise (the cluster's `fencing` setting).
    fencing: bool,
    presence: Presence,
    current: BTreeMap<String, Local>,
    /// Requirements of units, by content: of global units, and of the units here when a
    /// global unit has to be checked against them.
    reqs: BTreeMap<(String, UnitHash), Requirements>,
    /// The metadata global units are matched against: the configured metadata with fleet
    /// 1.0's dynamic metadata (the API's PATCH) laid over it.
    metadata: BTreeMap<String, String>,
    /// Everything must be published again (after registering anew).
    republish: bool,
    /// Until when unscheduled units are held after registering anew (see [`HOLD`]).
    hold_until: Option<tokio::time::Instant>,
    /// The systemd states last published, by unit.
    published: BTreeMap<String, (String, String, String)>,
    /// Units unloaded since the last daemon-reload: systemd may still hold their old
    /// definitions.
    stale: std::collections::BTreeSet<String>,
    /// The fencing default changed: the next pass decides anew which units are fenced.
    refence: bool,
    /// Units whose last task failed, waiting to be tried again (see [`Failure`]).
    failures: BTreeMap<String, Failure>,
}

/// A unit whose last task (unload, load, stop, start) failed: it is tried again after a
/// backoff, and meanwhile the other units' tasks go on — one unit never stops a machine's
/// agent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    /// Failures in a row.
    attempts: u32,
    /// Not before then.
    retry_at: tokio::time::Instant,
    /// The content that failed, when it was a load (its state is published as failed).
    hash: Option<UnitHash>,
    /// What the unit was wanted as (desired state and content; none: gone) when it failed.
    want: Option<(JobState, UnitHash)>,
}

/// The first retry of a failed unit task; it doubles with each failure in a row.
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest wait between retries of a failed unit task.
const RETRY_MAX: Duration = Duration::from_secs(30);

impl<S: KvStore, M: UnitManager> Agent<S, M> {
    /// Records that `step` failed for `name`, and when to try again.
    fn failed(
        &mut self,
        name: &str,
        step: &str,
        error: &str,
        hash: Option<UnitHash>,
        want: Option<(JobState, UnitHash)>,
    ) {
        let attempts = self.failures.get(name).map_or(0, |f| f.attempts) + 1;
        let wait = RETRY_FIRST
            .saturating_mul(1 << (attempts - 1).min(10))
            .min(RETRY_MAX);
        tracing::warn!(
            unit = name,
            "{step} of {name} failed (attempt {attempts}), retrying in {wait:?}: {error}"
        );
        self.failures.insert(
            name.to_string(),
            Failure {
                attempts,
                retry_at: tokio::time::Instant::now() + wait,
                hash,
                want,
            },
        );
    }

    /// Whether `name` failed and waits for its retry time.
    fn waiting(&self, name: &str, now: tokio::time::Instant) -> bool {
        self.failures.get(name).is_some_and(|f| f.retry_at > now)
    }

    /// When the next failed unit is due to be tried again.
    fn next_retry(&self) -> Option<tokio::time::Instant> {
        self.failures.values().map(|f| f.retry_at).min()
    }

    /// Whether the unit with this content is fenced: its own `Fencing=`, else the cluster's
    /// setting. Its requirements are read from the pass's cache when they are there (a pass
    /// parses every unit's once), else from the text.
    fn fenced(&self, name: &str, hash: UnitHash, text: &str) -> bool {
        let own = match self.reqs.get(&(name.to_string(), hash)) {
            Some(r) => r.fencing,
            None => {
                let opts = systemd_unit::fleet::deserialize(text).unwrap_or_default();
                Requirements::from_options(name, &opts).fencing
            }
        };
        own.unwrap_or(self.fencing)
    }

    /// Whether fenced units are running (so the fencing timer matters).
    fn fence_armed(&self) -> bool {
        self.current
            .values()
            .any(|l| l.fenced && l.state == JobState::Launched)
    }

    /// The fencing timer's clock, when fenced units are running.
    fn fence_clock(&self) -> Option<FenceClock> {
        self.fence_armed().then(|| {
            (
                self.presence.renewed.clone(),
                self.presence.epoch,
                self.presence.ttl,
            )
        })
    }

    async fn tend(&mut self) -> Result<(), Error> {
        if self.presence.tend(&self.reg, &self.me).await? == Tended::Regained {
            self.regained();
        }
        Ok(())
    }

    /// A configuration reload: publish the machine's new address and metadata under the
    /// current lease, and decide fencing anew at the next pass.
    async fn reconfigure(&mut self, r: Reconfig) -> Result<(), Error> {
        if r.fencing != self.fencing {
            self.fencing = r.fencing;
            self.refence = true;
        }
        if r.public_ip != self.me.public_ip || r.metadata != self.me.metadata {
            self.me.public_ip = r.public_ip;
            self.me.metadata = r.metadata;
            self.reg
                .update_machine(&self.me, self.presence.lease)
                .await?;
        }
        Ok(())
    }

    /// Registered anew after the lease lapsed: republish everything, and hold units that
    /// lost their placement meanwhile until the engine has had its say.
    fn regained(&mut self) {
        self.republish = true;
        self.hold_until = Some(tokio::time::Instant::now() + HOLD);
    }

    /// Whether `name`, here but not meant to be, is held rather than unloaded: while this
    /// machine's renewals fail (its lease may have lapsed without a renewal having said so
    /// yet — the engine then unschedules its units) and during the hold after
    /// (re)registering, a unit that is merely unscheduled (not moved elsewhere, not
    /// destroyed, not meant to be inactive) stays; the engine is about to place it, likely
    /// here again (a pinned unit always).
    fn held(
        &self,
        cache: &ClusterCache<S>,
        desired: &BTreeMap<String, (JobState, UnitHash, String)>,
        name: &str,
    ) -> bool {
        let holding = self.presence.failing
            || self
                .hold_until
                .is_some_and(|h| tokio::time::Instant::now() < h);
        holding
            && !desired.contains_key(name)
            && cache.target_of(name).is_none()
            && cache
                .target_state_of(name)
                .is_some_and(|s| s != JobState::Inactive)
    }

    /// One pass: make this machine's units match the schedule, in fleet's task order —
    /// unload, load (then bind and maybe daemon-reload), stop, start — then publish what
    /// changed. Each phase is its own method; a unit whose step fails skips its later steps.
    async fn pass(&mut self, cache: &ClusterCache<S>) -> Result<(), Error> {
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
    async fn refresh_states(&mut self) -> Result<(), Error> {
        self.published.retain(|n, _| self.current.contains_key(n));
        let names: Vec<String> = self.current.keys().cloned().collect();
        if names.is_empty() {
            return Ok(());
        }
        self.publish(&names, false).await
    }

    /// Stops the fenced units now: the lease has not been renewed for half its TTL. Only
    /// systemd is touched; etcd is not reachable.
    async fn fence(&mut self) {
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
    async fn purge(&mut self) -> Result<(), Error> {
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

/// A unit's `[X-Fleet]` requirements from `cache`, parsed once per content.
fn requirements<'a>(
    cache: &'a mut BTreeMap<(String, UnitHash), Requirements>,
    name: &str,
    hash: UnitHash,
    text: &str,
) -> &'a Requirements {
    cache.entry((name.to_string(), hash)).or_insert_with(|| {
        let opts = systemd_unit::fleet::deserialize(text).unwrap_or_default();
        Requirements::from_options(name, &opts)
    })
}

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

/// When the agent's next pass runs: a pass is due (`dirty`) once a burst has settled
/// (`settle`); failures back off (`backoff`); while the registry's watches are down,
/// `rewatch_at` says when to set them up again — its own timer, not the settle timer's, so
/// a pass (which clears that one) never leaves the agent deaf.
#[derive(Debug)]
struct Pacing {
    dirty: bool,
    settle: Option<tokio::time::Instant>,
    backoff: Duration,
    rewatch_at: Option<tokio::time::Instant>,
}

impl Pacing {
    /// A change worth a pass: it runs after a short settle, unless one is already due.
    fn changed(&mut self) {
        if !self.dirty {
            self.dirty = true;
            self.settle = Some(tokio::time::Instant::now() + SETTLE);
        }
    }

    /// A pass that could not finish runs again after the backoff.
    fn retry(&mut self) {
        self.dirty = true;
        self.settle = Some(tokio::time::Instant::now() + self.backoff);
    }

    /// Whether the pass runs now (a burst of changes — a `fleetctl start` of many units —
    /// settles for a moment first, so one pass and one daemon-reload serve the whole burst).
    fn due(&self) -> bool {
        self.dirty && self.settle.is_none_or(|t| tokio::time::Instant::now() >= t)
    }

    fn back_off(&mut self) {
        self.backoff = (self.backoff * 4).min(MAX_BACKOFF);
    }
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
) -> Result<Option<(i64, tokio::time::Instant)>, Error> {
    let store = reg.store();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(ttl.max(1) as u64 + 2);
    let mut warned = false;
    loop {
        let sent = tokio::time::Instant::now();
        let lease = store.grant_lease(ttl).await?;
        if reg.register_machine(me, lease).await? {
            return Ok(Some((lease, sent)));
        }
        store.revoke(lease).await?;
        let late = tokio::time::Instant::now() >= deadline;
        if late && !warned {
            tracing::error!("{}; retrying", Error::DuplicateMachine(me.id.clone()));
            warned = true;
        }
        let wait = Duration::from_millis(if late { 2000 } else { 200 });
        tokio::select! {
            _ = stop.changed() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
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
    let Some((lease, sent)) = register(&reg, &cfg.machine, cfg.ttl, &mut stop).await? else {
        return Ok(());
    };
    if let Some(r) = &ready {
        let _ = r.send(true);
    }
    let mut cache = ClusterCache::start(reg.clone()).await?;
    let mut agent = Agent::adopt(reg.clone(), &cfg, manager, &cache, lease, sent).await;
    let mut pacing = Pacing {
        dirty: true,
        settle: None,
        backoff: SETTLE,
        rewatch_at: None,
    };
    let mut watch_states = tokio::time::interval(STATE_PERIOD);
    watch_states.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync = tokio::time::interval(cfg.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if pacing.due() {
            agent.run_pass(&cache, &mut pacing).await;
            agent.sync_ready(ready.as_ref());
        }
        let armed = agent.fence_armed();
        let fence_at = agent.presence.fence_at();
        let reconfigured = async {
            let Some(r) = reconfig.as_mut() else {
                return std::future::pending().await;
            };
            match r.changed().await {
                Ok(()) => Some(r.borrow_and_update().clone()),
                // fleetd no longer reloads: nothing more will come.
                Err(_) => std::future::pending().await,
            }
        };
        let dirty = pacing.dirty;
        tokio::select! {
            _ = stop.changed() => break,
            Some(r) = reconfigured => {
                if let Err(e) = agent.reconfigure(r).await {
                    tracing::warn!("applying the new configuration: {e}");
                }
                pacing.changed();
            }
            change = cache.next(), if pacing.rewatch_at.is_none() => {
                agent.on_change(&mut cache, change, &mut pacing);
            }
            _ = tokio::time::sleep_until(agent.presence.next) => {
                agent.on_renewal_due(&mut pacing, ready.as_ref()).await;
            },
            _ = tokio::time::sleep_until(fence_at), if armed => {
                agent.fence().await;
            },
            _ = resync.tick() => pacing.dirty = true,
            // A unit whose task failed is due to be tried again.
            _ = tokio::time::sleep_until(agent.next_retry().unwrap_or_else(tokio::time::Instant::now)), if agent.next_retry().is_some() && !dirty => {
                pacing.dirty = true;
            }
            _ = watch_states.tick(), if !agent.current.is_empty() && !dirty => {
                let clock = agent.fence_clock();
                match unless_fenced(agent.refresh_states(), clock).await {
                    Some(Ok(())) => {}
                    Some(Err(e)) => tracing::debug!("publishing unit states: {e}"),
                    None => agent.fence().await,
                }
            }
            // The hold after registering anew is over: look at the held units again.
            _ = tokio::time::sleep_until(agent.hold_until.unwrap_or_else(tokio::time::Instant::now)), if agent.hold_until.is_some() => {
                agent.hold_until = None;
                pacing.dirty = true;
            }
            // A burst has settled: the pass runs at the top of the loop.
            _ = tokio::time::sleep_until(pacing.settle.unwrap_or_else(tokio::time::Instant::now)), if pacing.settle.is_some() => {
                if !pacing.dirty {
                    pacing.settle = None;
                }
            }
            _ = tokio::time::sleep_until(pacing.rewatch_at.unwrap_or_else(tokio::time::Instant::now)), if pacing.rewatch_at.is_some() => {
                if let Some(c) = agent.rewatch(&mut pacing).await {
                    cache = c;
                }
            }
        }
    }
    if *stop.borrow() {
        agent.purge().await?;
    }
    Ok(())
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
            hold_until: None,
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
            agent.hold_until = Some(tokio::time::Instant::now() + HOLD);
        }
        agent
    }

    /// Runs the due pass and decides when the next one runs. A pass stuck on an
    /// unreachable etcd must not delay fencing.
    async fn run_pass(&mut self, cache: &ClusterCache<S>, pacing: &mut Pacing) {
        pacing.dirty = false;
        pacing.settle = None;
        let clock = self.fence_clock();
        match unless_fenced(self.pass(cache), clock).await {
            Some(Ok(())) => pacing.backoff = SETTLE,
            None => {
                self.fence().await;
                pacing.retry();
            }
            Some(Err(e)) if e.is_lease_lost() => {
                // Cut off past the TTL mid-pass: register again and republish everything.
                let (reg, me) = (self.reg.clone(), self.me.clone());
                match self.presence.regain(&reg, &me).await {
                    Ok(()) => self.regained(),
                    Err(e) => tracing::warn!("registering again: {e}"),
                }
                pacing.retry();
            }
            Some(Err(e)) => {
                tracing::warn!("agent pass failed, retrying in {:?}: {e}", pacing.backoff);
                pacing.retry();
                pacing.back_off();
            }
        }
        // Re-registered during the pass: the next pass republishes what this one did not.
        pacing.dirty |= self.republish;
    }

    /// A change from the registry's watch. A machine change may carry job changes read in
    /// the same batch, so both look at the changed units; only units that are here or are
    /// meant to be here matter. Metadata changes only with machines; while this machine is
    /// briefly absent (a lapsed lease) its metadata stands.
    fn on_change(&mut self, cache: &mut ClusterCache<S>, change: Change, pacing: &mut Pacing) {
        match change {
            Change::Closed => {
                pacing.rewatch_at = Some(tokio::time::Instant::now() + pacing.backoff);
            }
            change @ (Change::Machines | Change::Jobs) => {
                let me = self.me.id.as_str();
                let mut mine = cache.take_changed().iter().any(|u| {
                    self.current.contains_key(u)
                        || cache.target_of(u).as_deref() == Some(me)
                        || cache.is_global(u)
                });
                if change == Change::Machines {
                    if let Some(now) = cache.metadata_of(me) {
                        mine |= now != self.metadata;
                        self.metadata = now;
                    }
                }
                if mine {
                    pacing.changed();
                }
            }
        }
    }

    /// The presence lease is due for renewal.
    async fn on_renewal_due(&mut self, pacing: &mut Pacing, ready: Option<&watch::Sender<bool>>) {
        let clock = self.fence_clock();
        let (reg, me) = (self.reg.clone(), self.me.clone());
        let Some(tended) = unless_fenced(self.presence.tend(&reg, &me), clock).await else {
            self.fence().await;
            return;
        };
        match tended {
            // Cut off for longer than the TTL: republish everything.
            Ok(Tended::Regained) => {
                self.regained();
                pacing.dirty = true;
            }
            // Back before the lease lapsed: fenced units may start again.
            Ok(Tended::Recovered) => pacing.dirty = true,
            Ok(Tended::Quiet | Tended::Failed) => {}
            Err(e) => tracing::warn!("registering again: {e}"),
        }
        self.sync_ready(ready);
    }

    /// The API answers 503 while etcd cannot be reached, as fleet's did: `ready` follows
    /// the presence after every renewal and every pass (a pass may register again).
    fn sync_ready(&self, ready: Option<&watch::Sender<bool>>) {
        if let Some(r) = ready {
            r.send_if_modified(|up| {
                let now = !self.presence.failing;
                std::mem::replace(up, now) != now
            });
        }
    }

    /// Sets up the registry's watches again: the new cache, or `None` (tried again later).
    async fn rewatch(&mut self, pacing: &mut Pacing) -> Option<ClusterCache<S>> {
        let clock = self.fence_clock();
        let restart = tokio::time::timeout(RESTART_LIMIT, ClusterCache::start(self.reg.clone()));
        match unless_fenced(restart, clock).await {
            Some(Ok(Ok(c))) => {
                pacing.rewatch_at = None;
                pacing.dirty = true;
                Some(c)
            }
            None => {
                self.fence().await;
                pacing.rewatch_at = Some(tokio::time::Instant::now());
                None
            }
            Some(failed) => {
                if let Ok(Err(e)) = failed {
                    tracing::debug!("watching the registry again: {e}");
                }
                pacing.rewatch_at = Some(tokio::time::Instant::now() + pacing.backoff);
                pacing.back_off();
                None
            }
        }
    }
}

/// A unit manager that only remembers: for tests and simulated clusters. Its clones share
/// what it remembers, so a test can watch the units of an agent it started, and make steps
/// fail for chosen units ([`SimManager::refuse`]), as systemd refuses a bad unit.
#[derive(Debug, Default, Clone)]
pub struct SimManager {
    /// The loaded units, by name.
    units: Arc<std::sync::Mutex<BTreeMap<String, SimUnit>>>,
    /// (unit, step) pairs that fail: step is `load`, `start`, `stop` or `unload`.
    refused: Arc<std::sync::Mutex<std::collections::BTreeSet<(String, String)>>>,
}

/// Runs `f` on what `m` guards, also after a panic elsewhere poisoned it.
fn locked<T, U>(m: &std::sync::Mutex<T>, f: impl FnOnce(&mut T) -> U) -> U {
    match m.lock() {
        Ok(mut g) => f(&mut g),
        Err(poisoned) => f(&mut poisoned.into_inner()),
    }
}

/// One unit a [`SimManager`] has loaded.
#[derive(Debug, Default, Clone)]
struct SimUnit {
    text: String,
    running: bool,
    /// How many times it was started from stopped.
    starts: u32,
}

impl SimManager {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, SimUnit>) -> T) -> T {
        locked(&self.units, f)
    }

    fn refusals<T>(
        &self,
        f: impl FnOnce(&mut std::collections::BTreeSet<(String, String)>) -> T,
    ) -> T {
        locked(&self.refused, f)
    }

    /// Makes `step` (`load`, `start`, `stop` or `unload`) fail for `unit` from now on.
    pub fn refuse(&self, unit: &str, step: &str) {
        self.refusals(|r| r.insert((unit.to_string(), step.to_string())));
    }

    /// Lets `step` succeed for `unit` again.
    pub fn allow(&self, unit: &str, step: &str) {
        self.refusals(|r| r.remove(&(unit.to_string(), step.to_string())));
    }

    fn check(&self, unit: &str, step: &str) -> Result<(), String> {
        let refused = self.refusals(|r| r.contains(&(unit.to_string(), step.to_string())));
        if refused {
            Err(format!("simulated: {step} of {unit} refused"))
        } else {
            Ok(())
        }
    }

    /// Stops a unit behind the agent's back, as a crash would.
    pub fn crash(&self, name: &str) {
        self.with(|u| {
            if let Some(u) = u.get_mut(name) {
                u.running = false;
            }
        });
    }

    /// The units running now.
    pub fn running(&self) -> Vec<String> {
        self.with(|u| {
            u.iter()
                .filter(|(_, s)| s.running)
                .map(|(n, _)| n.clone())
                .collect()
        })
    }

    /// How many times `name` went from stopped to running since it was loaded.
    pub fn starts(&self, name: &str) -> u32 {
        self.with(|u| u.get(name).map_or(0, |s| s.starts))
    }

    /// The units loaded now (running or not).
    pub fn loaded(&self) -> Vec<String> {
        self.with(|u| u.keys().cloned().collect())
    }
}

impl UnitManager for SimManager {
    async fn load(&mut self, name: &str, text: &str) -> Result<(), String> {
        self.check(name, "load")?;
        // Loading the same content again leaves a running unit running, as linking the same
        // file again does in systemd.
        self.with(|u| {
            let unit = u.entry(name.to_string()).or_default();
            if unit.text != text {
                *unit = SimUnit {
                    text: text.to_string(),
                    ..SimUnit::default()
                };
            }
        });
        Ok(())
    }

    async fn unload(&mut self, name: &str) -> Result<(), String> {
        self.check(name, "unload")?;
        self.with(|u| u.remove(name));
        Ok(())
    }

    async fn reload(&mut self) -> Result<(), String> {
        Ok(())
    }

    async fn start(&mut self, name: &str) -> Result<(), String> {
        self.check(name, "start")?;
        self.with(|u| match u.get_mut(name) {
            Some(u) => {
                if !u.running {
                    u.running = true;
                    u.starts += 1;
                }
                Ok(())
            }
            None => Err(format!("{name} is not loaded")),
        })
    }

    async fn stop(&mut self, name: &str) -> Result<(), String> {
        self.check(name, "stop")?;
        self.with(|u| {
            if let Some(u) = u.get_mut(name) {
                u.running = false;
            }
        });
        Ok(())
    }

    /// The units still loaded, as a fleetd that restarts finds its unit files.
    async fn existing(&mut self) -> Vec<(String, String)> {
        self.with(|u| u.iter().map(|(n, s)| (n.clone(), s.text.clone())).collect())
    }

    async fn state(&mut self, name: &str) -> (String, String, String) {
        match self.with(|u| u.get(name).map(|s| s.running)) {
            Some(true) => ("loaded".into(), "active".into(), "running".into()),
            Some(false) => ("loaded".into(), "inactive".into(), "dead".into()),
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

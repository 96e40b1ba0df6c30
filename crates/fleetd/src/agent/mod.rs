//! The agent role: keep this machine registered, and make its units match the schedule —
//! the non-global units targeted here and the global units its metadata matches — through a
//! [`UnitManager`] (systemd over D-Bus in a machine; `SimManager`, with the `test-support`
//! feature, in tests and benchmarks).
//!
//! The parts, in reading order:
//! - `run`: [`run_agent`]'s loop. Everything that can happen arrives as one closed `Event`
//!   (a registry change, a renewal due, the fencing moment, a timer); the loop's own state is
//!   explicit — when the next pass runs (`PassState`), whether the registry's watches are up
//!   (`Watch`).
//! - `presence`: the machine's lease — renewals, the link to etcd (`Link`: up, or failing
//!   since a renewal was last sent), the fencing moment half a TTL after that, and the hold
//!   after registering anew. Its timing is tested on paused time.
//! - `pass`: one pass in fleet's task order (unload, load, reload, stop, start, publish),
//!   each unit's tasks failing on their own.
//! - `sim`: the simulated unit manager (`test-support`).

mod pass;
mod presence;
mod run;
#[cfg(any(test, feature = "test-support"))]
mod sim;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fleet_model::{JobState, Machine, Requirements};
use fleet_store::{ClusterCache, KvStore, Registry};
use systemd_unit::fleet::UnitHash;

use crate::Error;
pub use pass::Tasks;
use presence::{FenceClock, Presence, Tended};
pub use run::{run_agent, run_reconfigurable_agent};
#[cfg(any(test, feature = "test-support"))]
pub use sim::SimManager;

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

/// The units meant to run on this machine: name → (state, hash, text).
type Desired = BTreeMap<String, (JobState, UnitHash, String)>;

/// One unit as this agent has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Local {
    state: JobState,
    hash: UnitHash,
    /// Stopped when the presence lease cannot be renewed (see [`run_agent`]).
    fenced: bool,
}

/// How long a burst of unit changes may settle before the agent acts on it.
const SETTLE: Duration = Duration::from_millis(30);

/// How often the systemd states of this machine's units are compared with what was
/// published (fleet's unit-state publisher polled systemd every second too).
const STATE_PERIOD: Duration = Duration::from_secs(1);

/// How many starts go to the unit manager at once (between lease renewals).
const START_CHUNK: usize = 128;

/// The longest a restart of the registry watches may take before it is tried again.
const RESTART_LIMIT: Duration = Duration::from_secs(5);

/// The longest wait before retrying after etcd failed.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

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
        self.fence_armed().then(|| self.presence.fence_clock())
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

    /// Registered anew after the lease lapsed (the presence holds units that lost their
    /// placement meanwhile until the engine has had its say): republish everything.
    fn regained(&mut self) {
        self.republish = true;
    }

    /// Whether `name`, here but not meant to be, is held rather than unloaded: while this
    /// machine's renewals fail (its lease may have lapsed without a renewal having said so
    /// yet — the engine then unschedules its units) and during the hold after
    /// (re)registering, a unit that is merely unscheduled (not moved elsewhere, not
    /// destroyed, not meant to be inactive) stays; the engine is about to place it, likely
    /// here again (a pinned unit always).
    fn held(&self, cache: &ClusterCache<S>, desired: &Desired, name: &str) -> bool {
        let holding = self.presence.holding();
        holding
            && !desired.contains_key(name)
            && cache.target_of(name).is_none()
            && cache
                .target_state_of(name)
                .is_some_and(|s| s != JobState::Inactive)
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

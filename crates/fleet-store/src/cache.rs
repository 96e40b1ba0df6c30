//! A watch-driven copy of the cluster's jobs and machines: one read at start, then only the
//! changes, so an engine or agent reacting to every event does not re-read the keyspace.

use std::collections::BTreeSet;
use std::sync::Arc;

use fleet_model::Machine;
use tokio::sync::mpsc;

use crate::kv::{Event, KvStore};
use crate::registry::{JobFields, JobRecord, MachineFields, Registry, RegistryError};

/// The cluster as last seen.
#[derive(Debug)]
pub struct ClusterCache<S> {
    reg: Arc<Registry<S>>,
    jobs: JobFields,
    machines: MachineFields,
    /// Units touched by job events since [`ClusterCache::take_changed`].
    changed: BTreeSet<String>,
    job_events: mpsc::Receiver<Event>,
    machine_events: mpsc::Receiver<Event>,
}

/// What [`ClusterCache::next`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Jobs changed (targets, desired states, job-states, units).
    Jobs,
    /// Machines joined or left, or their metadata changed.
    Machines,
    /// A watch ended (the store went away); the cache must be restarted.
    Closed,
}

impl<S: KvStore> ClusterCache<S> {
    /// Reads jobs and machines and starts watching both.
    pub async fn start(reg: Arc<Registry<S>>) -> Result<Self, RegistryError> {
        let jp = reg.jobs_prefix();
        let mp = reg.machines_prefix();
        let (kvs, jrev) = reg.store().get_prefix(&jp).await?;
        let mut jobs = JobFields::default();
        for kv in kvs {
            jobs.set(&kv.key[jp.len()..], kv.value);
        }
        let (kvs, mrev) = reg.store().get_prefix(&mp).await?;
        let mut machines = MachineFields::default();
        for kv in kvs {
            machines.set(&kv.key[mp.len()..], &kv.value);
        }
        let job_events = reg.watch_jobs(jrev).await?;
        let machine_events = reg.watch_machines(mrev).await?;
        Ok(Self {
            reg,
            jobs,
            machines,
            changed: BTreeSet::new(),
            job_events,
            machine_events,
        })
    }

    fn apply_job(&mut self, e: Event) {
        let jp = self.reg.jobs_prefix();
        if let Some(name) = e.key().strip_prefix(&jp).and_then(|r| r.split('/').next()) {
            self.changed.insert(name.to_string());
        }
        match e {
            Event::Put(kv) => {
                if let Some(rel) = kv.key.strip_prefix(&jp) {
                    self.jobs.set(rel, kv.value);
                }
            }
            Event::Delete { key, .. } => {
                if let Some(rel) = key.strip_prefix(&jp) {
                    self.jobs.remove(rel);
                }
            }
        }
    }

    fn apply_machine(&mut self, e: Event) {
        let mp = self.reg.machines_prefix();
        match e {
            Event::Put(kv) => {
                if let Some(rel) = kv.key.strip_prefix(&mp) {
                    self.machines.set(rel, &kv.value);
                }
            }
            Event::Delete { key, .. } => {
                if let Some(rel) = key.strip_prefix(&mp) {
                    self.machines.remove(rel);
                }
            }
        }
    }

    /// Waits for the next change, applies it and everything already queued behind it.
    pub async fn next(&mut self) -> Change {
        let change = tokio::select! {
            e = self.job_events.recv() => match e {
                Some(e) => { self.apply_job(e); Change::Jobs }
                None => return Change::Closed,
            },
            e = self.machine_events.recv() => match e {
                Some(e) => { self.apply_machine(e); Change::Machines }
                None => return Change::Closed,
            },
        };
        while let Ok(e) = self.job_events.try_recv() {
            self.apply_job(e);
        }
        while let Ok(e) = self.machine_events.try_recv() {
            self.apply_machine(e);
        }
        change
    }

    /// The units whose records changed since the last call.
    pub fn take_changed(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.changed)
    }

    /// A unit's current target, from the cache.
    pub fn target_of(&self, unit: &str) -> Option<String> {
        self.jobs
            .0
            .get(unit)
            .and_then(|f| f.get("target"))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// A unit's desired state, from the cache.
    pub fn target_state_of(&self, unit: &str) -> Option<fleet_model::JobState> {
        self.jobs
            .0
            .get(unit)
            .and_then(|f| f.get("target-state"))
            .and_then(|v| fleet_model::JobState::parse(&String::from_utf8_lossy(v)))
    }

    /// Whether a unit is global (from its job record's flag).
    pub fn is_global(&self, unit: &str) -> bool {
        self.jobs
            .0
            .get(unit)
            .and_then(|f| f.get("object"))
            .is_some_and(|o| crate::registry::object_is_global(o))
    }

    /// One live machine's metadata with its dynamic metadata applied.
    pub fn metadata_of(&self, id: &str) -> Option<std::collections::BTreeMap<String, String>> {
        self.machines
            .machines()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.metadata)
    }

    /// The live machines, with their dynamic metadata applied.
    pub fn machines(&self) -> Vec<Machine> {
        self.machines.machines()
    }

    /// The jobs, with the unit texts of those `want_text` selects (each new content is
    /// fetched once).
    pub async fn jobs(
        &self,
        want_text: impl Fn(&JobRecord) -> bool,
    ) -> Result<Vec<JobRecord>, RegistryError> {
        let records = self.reg.job_records(&self.jobs, want_text).await?;
        // The cache holds every job: texts of replaced or destroyed units can go.
        self.reg.keep_texts_of(&self.jobs);
        Ok(records)
    }
}

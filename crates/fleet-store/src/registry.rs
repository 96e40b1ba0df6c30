//! fleet's keyspace on a [`KvStore`], with fleet's key names and JSON values:
//!
//! | key (under the prefix, default `/_coreos.com/fleet/`) | value | lifetime |
//! |---|---|---|
//! | `machines/<id>/object` | `{"ID","PublicIP","Metadata","Version"}` | the machine's lease |
//! | `machines/<id>/metadata/<key>` | dynamic metadata value (`""` hides the key) | until changed |
//! | `job/<unit>/object` | `{"Name","UnitHash":[20 numbers]}` | until destroyed |
//! | `job/<unit>/target-state` | `inactive` / `loaded` / `launched` | until destroyed |
//! | `job/<unit>/target` | machine ID (created only if absent, deleted only if unchanged) | engine |
//! | `job/<unit>/job-state` | machine ID ("launched here") | the agent's lease |
//! | `unit/<sha1>` | `{"Raw":"<canonical unit>"}` | content-addressed, immutable |
//! | `states/<unit>/<machine>` | fleet's unit-state JSON | the agent's lease |
//! | `lease/engine-leader` | `{"MachineID","Version"}` | the leader's lease |
//!
//! Where fleet's etcd v2 code used TTLs refreshed by writes, this uses v3 leases kept alive
//! by the owner; where it used compare-and-swap, transactions. Removing a unit's state
//! removes only this machine's row (fleet wiped every machine's rows of that unit).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use fleet_model::api::MetadataOp;
use fleet_model::{JobState, Machine};
use serde::{Deserialize, Serialize};
use systemd_unit::fleet::{self, UnitHash};
use tokio::sync::mpsc;

use crate::kv::{Event, KvStore, StoreError};

/// A key and the value to put there.
type KeyValuePut = (String, Vec<u8>);

/// fleet's default key prefix.
pub const DEFAULT_PREFIX: &str = "/_coreos.com/fleet/";

/// A registry operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Creating a unit that exists.
    #[error("job already exists")]
    JobExists(String),
    /// Acting on a unit that does not exist.
    #[error("unable to find unit {0}")]
    NoSuchUnit(String),
    /// Unit text fleet's reader rejects.
    #[error("unit {name}: {source}")]
    BadUnit {
        /// The unit.
        name: String,
        /// The parse error.
        source: fleet::FleetParseError,
    },
}

type R<T> = Result<T, RegistryError>;

#[derive(Serialize, Deserialize)]
#[allow(non_snake_case)]
struct MachineJson {
    ID: String,
    PublicIP: String,
    Metadata: Option<BTreeMap<String, String>>,
    Version: String,
}

#[derive(Serialize, Deserialize)]
#[allow(non_snake_case)]
struct JobJson {
    Name: String,
    UnitHash: [u8; 20],
    /// Ferrite's addition: agents learn which units are global without reading every unit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    Global: bool,
}

#[derive(Serialize, Deserialize)]
#[allow(non_snake_case)]
struct UnitJson {
    Raw: String,
}

#[derive(Serialize, Deserialize)]
#[allow(non_snake_case)]
struct LeaderJson {
    MachineID: String,
    Version: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateJson {
    load_state: String,
    active_state: String,
    sub_state: String,
    machine_state: MachineJson,
    unit_hash: String,
}

/// A unit in the registry, joined with its desired and current placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    /// The unit name.
    pub name: String,
    /// Its content hash.
    pub hash: UnitHash,
    /// Its canonical text (when asked for).
    pub unit: Option<String>,
    /// Whether it is a global unit.
    pub global: bool,
    /// Desired state.
    pub target_state: JobState,
    /// The machine the engine placed it on.
    pub target: Option<String>,
    /// The machine that reports it launched.
    pub job_state: Option<String>,
}

impl JobRecord {
    /// fleet's derived current state: no target or no report from it → inactive; job-state
    /// equal to the target → launched; else loaded.
    pub fn current_state(&self, states: &[UnitState]) -> JobState {
        let Some(t) = &self.target else {
            return JobState::Inactive;
        };
        if !states
            .iter()
            .any(|s| s.unit == self.name && &s.machine_id == t)
        {
            return JobState::Inactive;
        }
        if self.job_state.as_deref() == Some(t.as_str()) {
            JobState::Launched
        } else {
            JobState::Loaded
        }
    }
}

/// One machine's report of one unit's systemd state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    /// The unit.
    pub unit: String,
    /// The reporting machine.
    pub machine_id: String,
    /// systemd's LoadState.
    pub load_state: String,
    /// systemd's ActiveState.
    pub active_state: String,
    /// systemd's SubState.
    pub sub_state: String,
    /// The hash of the unit the agent loaded.
    pub hash: String,
}

/// The raw fields of every job: unit name → field (`object`, `target`, …) → value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFields(pub BTreeMap<String, HashMap<String, Vec<u8>>>);

impl JobFields {
    /// Sets a field from a key relative to the jobs prefix (`<unit>/<field>`).
    pub fn set(&mut self, rel: &str, value: Vec<u8>) {
        if let Some((name, field)) = rel.split_once('/') {
            self.0
                .entry(name.to_string())
                .or_default()
                .insert(field.to_string(), value);
        }
    }

    /// Removes a field; a unit whose fields are all gone is forgotten.
    pub fn remove(&mut self, rel: &str) {
        if let Some((name, field)) = rel.split_once('/') {
            if let Some(f) = self.0.get_mut(name) {
                f.remove(field);
                if f.is_empty() {
                    self.0.remove(name);
                }
            }
        }
    }
}

/// Whether a job object carries the `Global` flag.
pub fn object_is_global(object: &[u8]) -> bool {
    serde_json::from_slice::<JobJson>(object).is_ok_and(|j| j.Global)
}

/// Parses a machine record.
pub fn parse_machine(value: &[u8]) -> Option<Machine> {
    serde_json::from_slice::<MachineJson>(value)
        .ok()
        .map(|m| Machine {
            id: m.ID,
            public_ip: m.PublicIP,
            metadata: m.Metadata.unwrap_or_default(),
            version: m.Version,
        })
}

/// The raw machine keys: presence records and fleet 1.0's dynamic metadata, which outlives
/// the presence (it may be set for a machine that is not registered).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineFields {
    objects: BTreeMap<String, Machine>,
    dynamic: BTreeMap<String, BTreeMap<String, String>>,
}

impl MachineFields {
    /// Sets a key relative to the machines prefix (`<id>/object` or `<id>/metadata/<key>`);
    /// unreadable records are logged and ignored.
    pub fn set(&mut self, rel: &str, value: &[u8]) {
        if let Some(id) = rel.strip_suffix("/object") {
            match parse_machine(value) {
                Some(m) => {
                    self.objects.insert(id.to_string(), m);
                }
                None => tracing::warn!(machine = %id, "ignoring an unreadable machine record"),
            }
        } else if let Some((id, key)) = rel.split_once("/metadata/") {
            self.dynamic
                .entry(id.to_string())
                .or_default()
                .insert(key.to_string(), String::from_utf8_lossy(value).into_owned());
        }
    }

    /// Removes a key relative to the machines prefix.
    pub fn remove(&mut self, rel: &str) {
        if let Some(id) = rel.strip_suffix("/object") {
            self.objects.remove(id);
        } else if let Some((id, key)) = rel.split_once("/metadata/") {
            if let Some(d) = self.dynamic.get_mut(id) {
                d.remove(key);
                if d.is_empty() {
                    self.dynamic.remove(id);
                }
            }
        }
    }

    /// The live machines, by ID, with dynamic metadata laid over the configured metadata:
    /// a value replaces the configured one, an empty value hides it.
    pub fn machines(&self) -> Vec<Machine> {
        self.objects
            .keys()
            .filter_map(|id| self.machine(id))
            .collect()
    }

    /// One live machine, with its dynamic metadata applied.
    pub fn machine(&self, id: &str) -> Option<Machine> {
        let mut m = self.objects.get(id)?.clone();
        for (k, v) in self.dynamic.get(id).into_iter().flatten() {
            if v.is_empty() {
                m.metadata.remove(k);
            } else {
                m.metadata.insert(k.clone(), v.clone());
            }
        }
        Some(m)
    }
}

/// fleet's registry on a store.
#[derive(Debug)]
pub struct Registry<S> {
    store: S,
    prefix: String,
    /// Unit texts by hash (immutable, so cached forever).
    units: Mutex<HashMap<UnitHash, String>>,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl<S: KvStore> Registry<S> {
    /// A registry under `prefix` (with a trailing `/`).
    pub fn new(store: S, prefix: &str) -> Self {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self {
            store,
            prefix,
            units: Mutex::new(HashMap::new()),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    // --- machines ---------------------------------------------------------------------

    /// Registers a machine under its lease; `false` if another holder of the same ID is
    /// registered (fleet 1.0: a duplicate machine ID never registers).
    pub async fn register_machine(&self, m: &Machine, lease: i64) -> R<bool> {
        let (key, value) = self.machine_object(m);
        Ok(self.store.create(&key, value, Some(lease)).await?)
    }

    /// A machine's presence key and value.
    fn machine_object(&self, m: &Machine) -> (String, Vec<u8>) {
        let key = self.key(&format!("machines/{}/object", m.id));
        let value = json(&MachineJson {
            ID: m.id.clone(),
            PublicIP: m.public_ip.clone(),
            Metadata: Some(m.metadata.clone()),
            Version: m.version.clone(),
        });
        (key, value)
    }

    /// Publishes a registered machine's new address or metadata under its lease.
    pub async fn update_machine(&self, m: &Machine, lease: i64) -> R<()> {
        let (key, value) = self.machine_object(m);
        Ok(self.store.put(&key, value, Some(lease)).await?)
    }

    /// Removes a machine's presence (graceful shutdown).
    pub async fn unregister_machine(&self, id: &str) -> R<()> {
        Ok(self
            .store
            .delete(&self.key(&format!("machines/{id}/object")))
            .await?)
    }

    /// Every live machine, sorted by ID, with its dynamic metadata applied.
    pub async fn machines(&self) -> R<Vec<Machine>> {
        let mp = self.machines_prefix();
        let (kvs, _) = self.store.get_prefix(&mp).await?;
        let mut fields = MachineFields::default();
        for kv in kvs {
            fields.set(&kv.key[mp.len()..], &kv.value);
        }
        Ok(fields.machines())
    }

    /// Applies validated metadata operations (fleet 1.0's PATCH), each a plain write: a
    /// removal writes `""`, which hides the configured value.
    pub async fn set_machine_metadata(&self, ops: &[MetadataOp]) -> R<()> {
        for op in ops {
            let key = self.key(&format!("machines/{}/metadata/{}", op.machine, op.key));
            let value = op.value.clone().unwrap_or_default().into_bytes();
            self.store.put(&key, value, None).await?;
        }
        Ok(())
    }

    // --- units and jobs ---------------------------------------------------------------

    /// A unit's content blob (content-addressed: identical units share it) and the job
    /// object that names it: (hash, object, the blob's key and value). Nothing is written:
    /// the caller writes the blob in the same transaction as the job, so the garbage
    /// collection ([`Registry::collect_unit_garbage`]) never sees a job without its blob.
    fn unit_records(&self, name: &str, text: &str) -> R<(UnitHash, Vec<u8>, KeyValuePut)> {
        let options = fleet::deserialize(text).map_err(|source| RegistryError::BadUnit {
            name: name.to_string(),
            source,
        })?;
        let canonical = fleet::serialize(&options);
        let hash = UnitHash::of_options(&options);
        let blob = (
            self.key(&format!("unit/{hash}")),
            json(&UnitJson {
                Raw: canonical.clone(),
            }),
        );
        if let Ok(mut cache) = self.units.lock() {
            cache.insert(hash, canonical);
        }
        let global = fleet_model::Requirements::from_options(name, &options).global;
        let object = json(&JobJson {
            Name: name.to_string(),
            UnitHash: hash.0,
            Global: global,
        });
        Ok((hash, object, blob))
    }

    /// Creates a unit from its text with a desired state; fails if the unit exists.
    pub async fn create_unit(&self, name: &str, text: &str, state: JobState) -> R<UnitHash> {
        let (hash, object, blob) = self.unit_records(name, text)?;
        if !self
            .store
            .create_with(&self.key(&format!("job/{name}/object")), object, vec![blob])
            .await?
        {
            return Err(RegistryError::JobExists(name.to_string()));
        }
        self.store
            .put(
                &self.key(&format!("job/{name}/target-state")),
                state.as_str().as_bytes().to_vec(),
                None,
            )
            .await?;
        Ok(hash)
    }

    /// Gives an existing unit new content (fleet 1.0's replace), keeping its desired state
    /// and placement: the agent that runs it reloads it, and the engine moves it if its
    /// machine no longer fits the new requirements.
    pub async fn replace_unit(&self, name: &str, text: &str) -> R<UnitHash> {
        let (hash, object, blob) = self.unit_records(name, text)?;
        let key = self.key(&format!("job/{name}/object"));
        if !self
            .store
            .put_many_if_exists(&key, vec![(key.clone(), object), blob])
            .await?
        {
            return Err(RegistryError::NoSuchUnit(name.to_string()));
        }
        Ok(hash)
    }

    /// Removes the content blobs no unit refers to — left by `--replace`, by destroyed
    /// units, by a client that stopped between writes — and gives how many went. A blob
    /// written after the jobs were read, or rewritten since this looked at it (a unit
    /// created with that content meanwhile), stays: each delete is conditional on the
    /// revision seen. Run by the engine's leader.
    pub async fn collect_unit_garbage(&self) -> R<usize> {
        let (jobs, jobs_rev) = self.store.get_prefix(&self.key("job/")).await?;
        let mut referenced = std::collections::HashSet::new();
        for kv in jobs.iter().filter(|kv| kv.key.ends_with("/object")) {
            if let Ok(j) = serde_json::from_slice::<JobJson>(&kv.value) {
                referenced.insert(UnitHash(j.UnitHash));
            }
        }
        let prefix = self.key("unit/");
        let (blobs, _) = self.store.get_prefix(&prefix).await?;
        let mut removed = 0;
        for kv in blobs {
            if kv.mod_revision > jobs_rev {
                continue;
            }
            let Some(hash) = kv.key.strip_prefix(&prefix).and_then(UnitHash::from_hex) else {
                continue;
            };
            if !referenced.contains(&hash)
                && self
                    .store
                    .delete_if_revision(&kv.key, kv.mod_revision)
                    .await?
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Sets a unit's desired state.
    pub async fn set_target_state(&self, name: &str, state: JobState) -> R<()> {
        let guard = self.key(&format!("job/{name}/object"));
        let key = self.key(&format!("job/{name}/target-state"));
        if !self
            .store
            .put_if_exists(&guard, &key, state.as_str().as_bytes().to_vec())
            .await?
        {
            return Err(RegistryError::NoSuchUnit(name.to_string()));
        }
        Ok(())
    }

    /// Removes a unit (its content blob stays, maybe shared by identical units, until
    /// [`Registry::collect_unit_garbage`]).
    pub async fn destroy_unit(&self, name: &str) -> R<bool> {
        let exists = self
            .store
            .get(&self.key(&format!("job/{name}/object")))
            .await?
            .is_some();
        self.store
            .delete_prefix(&self.key(&format!("job/{name}/")))
            .await?;
        Ok(exists)
    }

    async fn unit_text(&self, hash: UnitHash) -> R<Option<String>> {
        if let Some(t) = self.units.lock().ok().and_then(|c| c.get(&hash).cloned()) {
            return Ok(Some(t));
        }
        let Some(kv) = self.store.get(&self.key(&format!("unit/{hash}"))).await? else {
            return Ok(None);
        };
        let Ok(u) = serde_json::from_slice::<UnitJson>(&kv.value) else {
            tracing::warn!(key = %kv.key, "ignoring a corrupt unit blob");
            return Ok(None);
        };
        if let Ok(mut cache) = self.units.lock() {
            cache.insert(hash, u.Raw.clone());
        }
        Ok(Some(u.Raw))
    }

    /// Every unit with its placement, and the store revision the snapshot is from.
    pub async fn jobs(&self) -> R<(Vec<JobRecord>, i64)> {
        let base = self.key("job/");
        let (kvs, revision) = self.store.get_prefix(&base).await?;
        let mut parts = JobFields::default();
        for kv in kvs {
            parts.set(&kv.key[base.len()..], kv.value);
        }
        let records = self.job_records(&parts, |_| true).await?;
        self.keep_texts_of(&parts);
        Ok((records, revision))
    }

    /// Forgets cached unit texts no job in `all` (every job of the cluster) refers to any
    /// more: replaced and destroyed units' texts do not pile up in memory.
    pub fn keep_texts_of(&self, all: &JobFields) {
        // No more texts than jobs: nothing can be stale enough to matter (and nothing is
        // parsed on the common path).
        if self.cached_texts() <= all.0.len() {
            return;
        }
        let live: std::collections::HashSet<UnitHash> = all
            .0
            .values()
            .filter_map(|f| f.get("object"))
            .filter_map(|o| serde_json::from_slice::<JobJson>(o).ok())
            .map(|j| UnitHash(j.UnitHash))
            .collect();
        if let Ok(mut cache) = self.units.lock() {
            cache.retain(|h, _| live.contains(h));
        }
    }

    /// How many unit texts are cached (for tests and measurements).
    pub fn cached_texts(&self) -> usize {
        self.units.lock().map_or(0, |c| c.len())
    }

    /// One unit with its placement and text, if it exists.
    pub async fn job(&self, name: &str) -> R<Option<JobRecord>> {
        let base = self.key("job/");
        let (kvs, _) = self.store.get_prefix(&format!("{base}{name}/")).await?;
        let mut parts = JobFields::default();
        for kv in kvs {
            parts.set(&kv.key[base.len()..], kv.value);
        }
        Ok(self.job_records(&parts, |_| true).await?.into_iter().next())
    }

    /// Joins raw job fields with their unit texts — for the jobs `want_text` selects — and
    /// fetches each new content once.
    pub async fn job_records(
        &self,
        parts: &JobFields,
        want_text: impl Fn(&JobRecord) -> bool,
    ) -> R<Vec<JobRecord>> {
        let mut out = Vec::new();
        for (name, fields) in &parts.0 {
            let Some(object) = fields.get("object") else {
                continue;
            };
            let Ok(job) = serde_json::from_slice::<JobJson>(object) else {
                tracing::warn!(unit = %name, "ignoring a corrupt job record");
                continue;
            };
            let hash = UnitHash(job.UnitHash);
            let text = |f: &str| {
                fields
                    .get(f)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            let mut record = JobRecord {
                name: name.clone(),
                hash,
                unit: None,
                global: job.Global,
                target_state: text("target-state")
                    .and_then(|s| JobState::parse(&s))
                    .unwrap_or_default(),
                target: text("target"),
                job_state: text("job-state"),
            };
            if want_text(&record) {
                record.unit = self.unit_text(hash).await?;
                if record.unit.is_none() {
                    tracing::warn!(unit = %name, %hash, "unit content missing");
                    continue;
                }
            }
            out.push(record);
        }
        Ok(out)
    }

    /// The key prefix of jobs, for interpreting watch events.
    pub fn jobs_prefix(&self) -> String {
        self.key("job/")
    }

    /// The key prefix of machines, for interpreting watch events.
    pub fn machines_prefix(&self) -> String {
        self.key("machines/")
    }

    /// Places a job; `false` if it already has a target.
    pub async fn schedule(&self, name: &str, machine: &str) -> R<bool> {
        Ok(self
            .store
            .create(
                &self.key(&format!("job/{name}/target")),
                machine.as_bytes().to_vec(),
                None,
            )
            .await?)
    }

    /// Places many jobs at once (see [`KvStore::create_many`]); gives, in order, whether
    /// each was placed (`false`: another engine placed it first).
    pub async fn schedule_many(&self, placements: &[(String, String)]) -> R<Vec<bool>> {
        let kvs = placements
            .iter()
            .map(|(name, machine)| {
                (
                    self.key(&format!("job/{name}/target")),
                    machine.as_bytes().to_vec(),
                )
            })
            .collect();
        Ok(self.store.create_many(kvs).await?)
    }

    /// Takes a job off `machine`; `false` if its target was something else.
    pub async fn unschedule(&self, name: &str, machine: &str) -> R<bool> {
        Ok(self
            .store
            .delete_if_value(&self.key(&format!("job/{name}/target")), machine.as_bytes())
            .await?)
    }

    /// The agent's "launched here" mark, under its lease.
    pub async fn set_job_state(&self, name: &str, machine: &str, lease: i64) -> R<()> {
        self.set_job_states(&[name.to_string()], machine, lease)
            .await
    }

    /// Marks many units launched on `machine`, batched.
    pub async fn set_job_states(&self, names: &[String], machine: &str, lease: i64) -> R<()> {
        let kvs = names
            .iter()
            .map(|n| {
                (
                    self.key(&format!("job/{n}/job-state")),
                    machine.as_bytes().to_vec(),
                )
            })
            .collect();
        Ok(self.store.put_many(kvs, Some(lease)).await?)
    }

    /// Clears the "launched" mark if, and only if, `machine` set it (a compare-and-delete:
    /// a unit the engine moved meanwhile keeps the mark its new machine set); `false` if
    /// the mark was another machine's or absent.
    pub async fn clear_own_job_state(&self, name: &str, machine: &str) -> R<bool> {
        Ok(self
            .store
            .delete_if_value(
                &self.key(&format!("job/{name}/job-state")),
                machine.as_bytes(),
            )
            .await?)
    }

    // --- unit states -----------------------------------------------------------------------

    /// Publishes this machine's view of a unit, under the agent's lease.
    pub async fn publish_state(&self, s: &UnitState, machine: &Machine, lease: i64) -> R<()> {
        self.publish_states(std::slice::from_ref(s), machine, lease)
            .await
    }

    /// Publishes many units' states of one machine, batched ([`crate::kv::PUT_BATCH`] per
    /// request).
    pub async fn publish_states(
        &self,
        states: &[UnitState],
        machine: &Machine,
        lease: i64,
    ) -> R<()> {
        let kvs = states
            .iter()
            .map(|s| {
                (
                    self.key(&format!("states/{}/{}", s.unit, s.machine_id)),
                    self.state_value(s, machine),
                )
            })
            .collect();
        Ok(self.store.put_many(kvs, Some(lease)).await?)
    }

    fn state_value(&self, s: &UnitState, machine: &Machine) -> Vec<u8> {
        json(&StateJson {
            load_state: s.load_state.clone(),
            active_state: s.active_state.clone(),
            sub_state: s.sub_state.clone(),
            machine_state: MachineJson {
                ID: machine.id.clone(),
                PublicIP: machine.public_ip.clone(),
                Metadata: None,
                Version: String::new(),
            },
            unit_hash: s.hash.clone(),
        })
    }

    /// Removes this machine's row for a unit.
    pub async fn remove_state(&self, unit: &str, machine: &str) -> R<()> {
        Ok(self
            .store
            .delete(&self.key(&format!("states/{unit}/{machine}")))
            .await?)
    }

    /// Every published unit state.
    pub async fn states(&self) -> R<Vec<UnitState>> {
        self.states_under("").await
    }

    /// The states machines publish for one unit (one prefix read).
    pub async fn states_of(&self, unit: &str) -> R<Vec<UnitState>> {
        self.states_under(&format!("{unit}/")).await
    }

    async fn states_under(&self, below: &str) -> R<Vec<UnitState>> {
        let base = self.key("states/");
        let (kvs, _) = self.store.get_prefix(&format!("{base}{below}")).await?;
        let mut out = Vec::new();
        for kv in kvs {
            let Some((unit, machine)) = kv.key[base.len()..].split_once('/') else {
                continue;
            };
            let Ok(s) = serde_json::from_slice::<StateJson>(&kv.value) else {
                tracing::warn!(key = %kv.key, "ignoring a corrupt unit state");
                continue;
            };
            out.push(UnitState {
                unit: unit.to_string(),
                machine_id: machine.to_string(),
                load_state: s.load_state,
                active_state: s.active_state,
                sub_state: s.sub_state,
                hash: s.unit_hash,
            });
        }
        Ok(out)
    }

    // --- engine leadership ------------------------------------------------------------------

    /// Tries to become the engine leader under `lease`; `true` only if the leader key is
    /// held under that very lease now (created by this call, or by an earlier call with the
    /// same lease whose answer was lost). The key naming this machine under another lease —
    /// a lease of an earlier session that nobody renews any more — is not leadership: it
    /// lapses, and another engine may take the key then.
    pub async fn try_lead(&self, machine: &str, lease: i64) -> R<bool> {
        let key = self.key("lease/engine-leader");
        let value = json(&LeaderJson {
            MachineID: machine.to_string(),
            Version: 1,
        });
        if self.store.create(&key, value, Some(lease)).await? {
            return Ok(true);
        }
        Ok(self
            .store
            .get(&key)
            .await?
            .is_some_and(|kv| kv.lease == lease))
    }

    /// The key of the engine leader lease.
    pub fn leader_key(&self) -> String {
        self.key("lease/engine-leader")
    }

    /// The current engine leader.
    pub async fn leader(&self) -> R<Option<String>> {
        let Some(kv) = self.store.get(&self.key("lease/engine-leader")).await? else {
            return Ok(None);
        };
        // A bare machine ID (fleet before versioned leases) is accepted too.
        Ok(Some(
            match serde_json::from_slice::<LeaderJson>(&kv.value) {
                Ok(l) => l.MachineID,
                Err(_) => String::from_utf8_lossy(&kv.value).into_owned(),
            },
        ))
    }

    // --- watches ----------------------------------------------------------------------------

    /// Changes to jobs (targets, desired states …) after `revision`.
    pub async fn watch_jobs(&self, revision: i64) -> R<mpsc::Receiver<Event>> {
        Ok(self.store.watch_prefix(&self.key("job/"), revision).await?)
    }

    /// Machines joining and leaving after `revision`.
    pub async fn watch_machines(&self, revision: i64) -> R<mpsc::Receiver<Event>> {
        Ok(self
            .store
            .watch_prefix(&self.key("machines/"), revision)
            .await?)
    }
}

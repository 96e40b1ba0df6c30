//! The agent's [`UnitManager`] on a real machine: unit files under `/run/fleet/units/`,
//! linked into `/run/systemd/system` with `LinkUnitFiles(runtime)` (or enabled with
//! `EnableUnitFiles(runtime)` when they have an `[Install]` section, as fleet 1.0), jobs queued over D-Bus
//! without waiting (fleet's "launched" means "start requested"), states from
//! `ListUnitsByNames`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use systemd_client::{DbusSystemd, JobKind, Systemd};

use crate::agent::UnitManager;

/// systemd over D-Bus, with the unit files in `dir`.
#[derive(Debug, Clone)]
pub struct SystemdManager {
    dbus: Arc<Mutex<DbusSystemd>>,
    dir: PathBuf,
    /// The unit fenced units are bound to (fleetd's own, `fleet.service`), and where their
    /// drop-ins go (`/run/systemd/system`).
    bind_to: Option<(String, PathBuf)>,
}

/// The drop-in that binds a fenced unit to fleetd.
const FENCE_DROPIN: &str = "50-fleet-fence.conf";

impl SystemdManager {
    /// Connects to the system bus; unit files go to `dir` (fleet: `/run/fleet/units`).
    /// Fenced units are bound to `bind_to`'s unit — fleetd's own — with a drop-in under
    /// its directory (`/run/systemd/system`), so systemd stops them when fleetd dies.
    pub fn connect(
        dir: PathBuf,
        bind_to: Option<(String, PathBuf)>,
    ) -> Result<Self, systemd_client::Error> {
        Ok(Self {
            dbus: Arc::new(Mutex::new(DbusSystemd::system()?)),
            dir,
            bind_to,
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DbusSystemd) -> Result<T, systemd_client::Error> + Send + 'static,
    ) -> Result<T, String> {
        let dbus = self.dbus.clone();
        tokio::task::spawn_blocking(move || {
            let mut d = dbus
                .lock()
                .map_err(|_| "systemd connection poisoned".to_string())?;
            f(&mut d).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// Writes the units' files into `dir` and links them in, one call per batch (systemd
/// rescans its search paths per call). fleet 1.0: a unit with an `[Install]` section is
/// enabled (runtime, forced) instead, so its `WantedBy=` and friends take effect. Gives the
/// units that failed, each with its reason: a batch systemd refuses is tried again one unit
/// at a time, so one unit it rejects never keeps the others from loading.
fn write_and_link(
    d: &mut DbusSystemd,
    dir: &std::path::Path,
    units: &[(String, String)],
) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    if let Err(e) = atomic_file::create_dirs(dir) {
        return units
            .iter()
            .map(|(n, _)| (n.clone(), e.to_string()))
            .collect();
    }
    let (mut linked, mut enabled) = (Vec::with_capacity(units.len()), Vec::new());
    for (name, text) in units {
        let path = dir.join(name);
        if let Err(e) =
            atomic_file::write(&path, text.as_bytes(), &atomic_file::Options::mode(0o644))
        {
            failed.push((name.clone(), e.to_string()));
            continue;
        }
        let entry = (name.clone(), path.display().to_string());
        if has_install_section(text) {
            enabled.push(entry);
        } else {
            linked.push(entry);
        }
    }
    link_in(d, &linked, false, &mut failed);
    link_in(d, &enabled, true, &mut failed);
    failed
}

/// Links (or with `enable`, enables) the unit files `entries` (name, path), a batch per
/// call; a batch systemd refuses is tried one unit at a time and each refusal recorded.
fn link_in(
    d: &mut DbusSystemd,
    entries: &[(String, String)],
    enable: bool,
    failed: &mut Vec<(String, String)>,
) {
    let call = |d: &mut DbusSystemd, paths: &[String]| {
        if enable {
            d.enable_unit_files(paths, true, true)
        } else {
            d.link_unit_files(paths, true, true)
        }
    };
    for chunk in entries.chunks(LINK_BATCH) {
        let paths: Vec<String> = chunk.iter().map(|(_, p)| p.clone()).collect();
        if call(d, &paths).is_ok() {
            continue;
        }
        for (name, path) in chunk {
            if let Err(e) = call(d, std::slice::from_ref(path)) {
                failed.push((name.clone(), e.to_string()));
            }
        }
    }
}

/// Where the drop-in that binds `unit` to fleetd goes, under `root`.
fn dropin_path(root: &std::path::Path, unit: &str) -> PathBuf {
    root.join(format!("{unit}.d")).join(FENCE_DROPIN)
}

/// Writes (`bound`) or removes the drop-in at `path` that binds a unit to `bind`:
/// `BindsTo=` stops the unit when `bind` stops or fails — also when systemd restarts it
/// after a crash — and `After=` orders its stop before `bind`'s.
fn write_binding(path: &std::path::Path, bound: bool, bind: &str) -> Result<(), String> {
    if bound {
        if let Some(dir) = path.parent() {
            atomic_file::create_dirs(dir).map_err(|e| e.to_string())?;
        }
        let text = format!(
            "# Written by fleetd: a fenced unit stops when fleetd does.\n[Unit]\nBindsTo={bind}\nAfter={bind}\n"
        );
        atomic_file::write(path, text.as_bytes(), &atomic_file::Options::mode(0o644))
            .map_err(|e| e.to_string())
    } else {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("removing {}: {e}", path.display()))
            }
            _ => {
                if let Some(dir) = path.parent() {
                    // Only if empty: the user's own drop-ins stay.
                    let _ = std::fs::remove_dir(dir);
                }
                Ok(())
            }
        }
    }
}

/// Queues a stop; a unit systemd has not loaded (or could not load: a refused file) runs
/// nothing, so there is nothing to stop.
fn stop_if_loaded(d: &mut DbusSystemd, name: &str) -> Result<(), systemd_client::Error> {
    match d.enqueue(JobKind::Stop, name) {
        Err(e) if e.is_not_loaded() => {
            tracing::debug!(unit = name, "not loaded, nothing to stop: {e}");
            Ok(())
        }
        other => other,
    }
}

/// Whether a unit file has an `[Install]` section.
fn has_install_section(text: &str) -> bool {
    text.lines().any(|l| l.trim() == "[Install]")
}

/// How many unit files one `LinkUnitFiles` call links.
const LINK_BATCH: usize = 256;

impl UnitManager for SystemdManager {
    async fn load(&mut self, name: &str, text: &str) -> Result<(), String> {
        match self
            .load_many(&[(name.to_string(), text.to_string())])
            .await
            .pop()
        {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    async fn load_many(&mut self, units: &[(String, String)]) -> Vec<(String, String)> {
        let (dir, todo) = (self.dir.clone(), units.to_vec());
        // Files and links on the blocking pool: the runtime thread keeps serving the API.
        match self.with(move |d| Ok(write_and_link(d, &dir, &todo))).await {
            Ok(failed) => failed,
            Err(e) => units.iter().map(|(n, _)| (n.clone(), e.clone())).collect(),
        }
    }

    async fn bind(&mut self, units: &[(String, bool)]) -> Vec<(String, String)> {
        let Some((bind, root)) = self.bind_to.clone() else {
            for (name, _) in units.iter().filter(|(_, fenced)| *fenced) {
                tracing::warn!(
                    unit = %name,
                    "fleetd does not run as a systemd service: this fenced unit is not \
                     bound to it and would outlive a crash of fleetd"
                );
            }
            return Vec::new();
        };
        let todo = units.to_vec();
        // Files on the blocking pool, as the loads: the runtime thread keeps serving.
        let written = tokio::task::spawn_blocking(move || {
            todo.into_iter()
                .filter_map(|(name, fenced)| {
                    let e = write_binding(&dropin_path(&root, &name), fenced, &bind).err()?;
                    Some((name, e))
                })
                .collect::<Vec<_>>()
        })
        .await;
        match written {
            Ok(failed) => failed,
            Err(e) => units
                .iter()
                .map(|(n, _)| (n.clone(), e.to_string()))
                .collect(),
        }
    }

    async fn unload(&mut self, name: &str) -> Result<(), String> {
        let n = name.to_string();
        self.with(move |d| {
            stop_if_loaded(d, &n)?;
            d.disable_unit_files(std::slice::from_ref(&n), true)?;
            d.reset_failed(&n)
        })
        .await?;
        if let Some((bind, root)) = &self.bind_to {
            write_binding(&dropin_path(root, name), false, bind)?;
        }
        match std::fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        }
    }

    async fn reload(&mut self) -> Result<(), String> {
        self.with(|d| d.reload()).await
    }

    async fn start(&mut self, name: &str) -> Result<(), String> {
        let n = name.to_string();
        self.with(move |d| d.enqueue(JobKind::Start, &n)).await
    }

    async fn start_many(&mut self, names: &[String]) -> Vec<(String, String)> {
        let want = names.to_vec();
        match self
            .with(move |d| Ok(d.enqueue_many(JobKind::Start, &want)))
            .await
        {
            Ok(results) => names
                .iter()
                .zip(results)
                .filter_map(|(name, r)| r.err().map(|e| (name.clone(), e.to_string())))
                .collect(),
            Err(e) => names.iter().map(|n| (n.clone(), e.clone())).collect(),
        }
    }

    async fn stop(&mut self, name: &str) -> Result<(), String> {
        let n = name.to_string();
        self.with(move |d| stop_if_loaded(d, &n)).await
    }

    async fn states(&mut self, names: &[String]) -> Vec<(String, String, String)> {
        let want = names.to_vec();
        match self.with(move |d| d.unit_statuses(&want)).await {
            Ok(v) => {
                let by_name: std::collections::HashMap<String, (String, String, String)> = v
                    .into_iter()
                    .map(|s| (s.name, (s.load, s.active, s.sub)))
                    .collect();
                names
                    .iter()
                    .map(|n| {
                        by_name.get(n).cloned().unwrap_or_else(|| {
                            ("not-found".into(), "inactive".into(), "dead".into())
                        })
                    })
                    .collect()
            }
            // One name systemd refuses fails the whole question: ask unit by unit, so the
            // others' states are still read.
            Err(e) if names.len() > 1 => {
                tracing::debug!("reading unit states together: {e}; one at a time");
                let mut out = Vec::with_capacity(names.len());
                for n in names {
                    out.push(self.state(n).await);
                }
                out
            }
            Err(e) => {
                tracing::warn!("reading unit states: {e}");
                names
                    .iter()
                    .map(|_| ("error".into(), "unknown".into(), "unknown".into()))
                    .collect()
            }
        }
    }

    async fn state(&mut self, name: &str) -> (String, String, String) {
        let n = name.to_string();
        match self.with(move |d| d.unit_statuses(&[n])).await {
            Ok(v) => v
                .into_iter()
                .next()
                .map(|s| (s.load, s.active, s.sub))
                .unwrap_or_else(|| ("not-found".into(), "inactive".into(), "dead".into())),
            Err(e) => {
                tracing::warn!(unit = name, "reading state: {e}");
                ("error".into(), "unknown".into(), "unknown".into())
            }
        }
    }

    async fn existing(&mut self) -> Vec<(String, String)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let known = fleet_model::name::RECOGNIZED_TYPES
                    .iter()
                    .any(|t| name.ends_with(&format!(".{t}")));
                if !known || systemd_unit::UnitName::parse(&name).is_err() {
                    tracing::warn!(file = %name, "ignoring a file in the unit directory");
                    return None;
                }
                Some((name, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect()
    }
}

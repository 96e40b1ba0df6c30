//! The agent's [`UnitManager`] on a real machine: unit files under `/run/fleet/units/`,
//! linked into `/run/systemd/system` with `LinkUnitFiles(runtime)` (or enabled with
//! `EnableUnitFiles(runtime)` when they have an `[Install]` section, as fleet 1.0), jobs queued over D-Bus
//! without waiting (fleet's "launched" means "start requested"), states from
//! `ListUnitsByNames`.

use std::path::PathBuf;

use systemd_client::{DbusManager, JobKind};

use crate::agent::UnitManager;

/// systemd over D-Bus on fleetd's own runtime, with the unit files in `dir`.
#[derive(Debug)]
pub struct SystemdManager {
    dbus: DbusManager,
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
    pub async fn connect(
        dir: PathBuf,
        bind_to: Option<(String, PathBuf)>,
    ) -> Result<Self, systemd_client::Error> {
        Ok(Self {
            dbus: DbusManager::system().await?,
            dir,
            bind_to,
        })
    }
}

/// Unit files written, by how they are linked in: (name, path) pairs.
#[derive(Debug, Default)]
struct Written {
    /// Linked (`LinkUnitFiles`).
    linked: Vec<(String, String)>,
    /// With an `[Install]` section: enabled (`EnableUnitFiles`).
    enabled: Vec<(String, String)>,
    /// The units whose files could not be written, with the reason.
    failed: Vec<(String, String)>,
}

/// Writes the units' files into `dir`. Runs on the blocking pool.
fn write_files(dir: &std::path::Path, units: &[(String, String)]) -> Written {
    let mut w = Written::default();
    if let Err(e) = atomic_file::create_dirs(dir) {
        w.failed = units
            .iter()
            .map(|(n, _)| (n.clone(), e.to_string()))
            .collect();
        return w;
    }
    for (name, text) in units {
        let path = dir.join(name);
        match atomic_file::write(&path, text.as_bytes(), &atomic_file::Options::mode(0o644)) {
            Ok(()) => {
                let entry = (name.clone(), path.display().to_string());
                if has_install_section(text) {
                    w.enabled.push(entry);
                } else {
                    w.linked.push(entry);
                }
            }
            Err(e) => w.failed.push((name.clone(), e.to_string())),
        }
    }
    w
}

/// Links (or with `enable`, enables) the unit files `entries` (name, path), a batch per
/// call (systemd rescans its search paths per call); a batch systemd refuses is tried one
/// unit at a time and each refusal recorded, so one unit it rejects never keeps the others
/// from loading.
async fn link_in(
    d: &DbusManager,
    entries: &[(String, String)],
    enable: bool,
    failed: &mut Vec<(String, String)>,
) {
    let call = |paths: Vec<String>| async move {
        if enable {
            d.enable_unit_files(&paths, true, true).await
        } else {
            d.link_unit_files(&paths, true, true).await
        }
    };
    for chunk in entries.chunks(LINK_BATCH) {
        let paths: Vec<String> = chunk.iter().map(|(_, p)| p.clone()).collect();
        if call(paths).await.is_ok() {
            continue;
        }
        for (name, path) in chunk {
            if let Err(e) = call(vec![path.clone()]).await {
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
async fn stop_if_loaded(d: &DbusManager, name: &str) -> Result<(), systemd_client::Error> {
    match d.enqueue(JobKind::Stop, name).await {
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

    /// fleet 1.0: a unit with an `[Install]` section is enabled (runtime, forced) instead
    /// of linked, so its `WantedBy=` and friends take effect.
    async fn load_many(&mut self, units: &[(String, String)]) -> Vec<(String, String)> {
        let (dir, todo) = (self.dir.clone(), units.to_vec());
        // Files on the blocking pool: the runtime thread keeps serving the API.
        let mut w = match tokio::task::spawn_blocking(move || write_files(&dir, &todo)).await {
            Ok(w) => w,
            Err(e) => {
                return units
                    .iter()
                    .map(|(n, _)| (n.clone(), e.to_string()))
                    .collect()
            }
        };
        link_in(&self.dbus, &w.linked, false, &mut w.failed).await;
        link_in(&self.dbus, &w.enabled, true, &mut w.failed).await;
        w.failed
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
        let d = &self.dbus;
        let unit = [name.to_string()];
        let done = async {
            stop_if_loaded(d, name).await?;
            d.disable_unit_files(&unit, true).await?;
            d.reset_failed(name).await
        };
        done.await.map_err(|e| e.to_string())?;
        if let Some((bind, root)) = &self.bind_to {
            write_binding(&dropin_path(root, name), false, bind)?;
        }
        match std::fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        }
    }

    async fn reload(&mut self) -> Result<(), String> {
        self.dbus.reload().await.map_err(|e| e.to_string())
    }

    async fn start(&mut self, name: &str) -> Result<(), String> {
        self.dbus
            .enqueue(JobKind::Start, name)
            .await
            .map_err(|e| e.to_string())
    }

    async fn start_many(&mut self, names: &[String]) -> Vec<(String, String)> {
        let results = self.dbus.enqueue_many(JobKind::Start, names).await;
        names
            .iter()
            .zip(results)
            .filter_map(|(name, r)| r.err().map(|e| (name.clone(), e.to_string())))
            .collect()
    }

    async fn stop(&mut self, name: &str) -> Result<(), String> {
        stop_if_loaded(&self.dbus, name)
            .await
            .map_err(|e| e.to_string())
    }

    async fn states(&mut self, names: &[String]) -> Vec<(String, String, String)> {
        match self.dbus.unit_statuses(names).await {
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
        match self.dbus.unit_statuses(&[name.to_string()]).await {
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

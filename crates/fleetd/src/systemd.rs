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
}

impl SystemdManager {
    /// Connects to the system bus; unit files go to `dir` (fleet: `/run/fleet/units`).
    pub fn connect(dir: PathBuf) -> Result<Self, systemd_client::Error> {
        Ok(Self {
            dbus: Arc::new(Mutex::new(DbusSystemd::system()?)),
            dir,
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
/// enabled (runtime, forced) instead, so its `WantedBy=` and friends take effect. A failure
/// names its unit (the batch's first, for a failed call).
fn write_and_link(
    d: &mut DbusSystemd,
    dir: &std::path::Path,
    units: &[(String, String)],
) -> Result<(), (String, String)> {
    let first = units.first().map(|(n, _)| n.clone()).unwrap_or_default();
    atomic_file::create_dirs(dir).map_err(|e| (first.clone(), e.to_string()))?;
    let (mut linked, mut enabled) = (Vec::with_capacity(units.len()), Vec::new());
    for (name, text) in units {
        let path = dir.join(name);
        atomic_file::write(&path, text.as_bytes(), &atomic_file::Options::mode(0o644))
            .map_err(|e| (name.clone(), e.to_string()))?;
        let p = path.display().to_string();
        if has_install_section(text) {
            enabled.push(p);
        } else {
            linked.push(p);
        }
    }
    for chunk in linked.chunks(LINK_BATCH) {
        d.link_unit_files(chunk, true, true)
            .map_err(|e| (first.clone(), e.to_string()))?;
    }
    for chunk in enabled.chunks(LINK_BATCH) {
        d.enable_unit_files(chunk, true, true)
            .map_err(|e| (first.clone(), e.to_string()))?;
    }
    Ok(())
}

/// Whether a unit file has an `[Install]` section.
fn has_install_section(text: &str) -> bool {
    text.lines().any(|l| l.trim() == "[Install]")
}

/// How many unit files one `LinkUnitFiles` call links.
const LINK_BATCH: usize = 256;

impl UnitManager for SystemdManager {
    async fn load(&mut self, name: &str, text: &str) -> Result<(), String> {
        self.load_many(&[(name.to_string(), text.to_string())])
            .await
            .map_err(|(_, e)| e)
    }

    async fn load_many(&mut self, units: &[(String, String)]) -> Result<(), (String, String)> {
        let first = units.first().map(|(n, _)| n.clone()).unwrap_or_default();
        let (dir, units) = (self.dir.clone(), units.to_vec());
        // Files and links on the blocking pool: the runtime thread keeps serving the API.
        self.with(move |d| Ok(write_and_link(d, &dir, &units)))
            .await
            .map_err(|e| (first, e))?
    }

    async fn unload(&mut self, name: &str) -> Result<(), String> {
        let n = name.to_string();
        self.with(move |d| {
            d.enqueue(JobKind::Stop, &n)?;
            d.disable_unit_files(std::slice::from_ref(&n), true)?;
            d.reset_failed(&n)
        })
        .await?;
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

    async fn start_many(&mut self, names: &[String]) -> Result<(), (String, String)> {
        let want = names.to_vec();
        let first = want.first().cloned().unwrap_or_default();
        let results = self
            .with(move |d| Ok(d.enqueue_many(JobKind::Start, &want)))
            .await
            .map_err(|e| (first, e))?;
        for (name, r) in names.iter().zip(results) {
            r.map_err(|e| (name.clone(), e.to_string()))?;
        }
        Ok(())
    }

    async fn stop(&mut self, name: &str) -> Result<(), String> {
        let n = name.to_string();
        self.with(move |d| d.enqueue(JobKind::Stop, &n)).await
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
                if !known {
                    tracing::warn!(file = %name, "ignoring a file in the unit directory");
                    return None;
                }
                Some((name, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect()
    }
}

//! A unit manager that only remembers, for tests and simulated clusters.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::UnitManager;

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

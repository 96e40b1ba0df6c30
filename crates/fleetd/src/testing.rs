//! Test support (feature `test-support`): one machine's fleetd in memory — the API on a
//! Unix socket, then its agent (with the simulated unit manager) and engine — for the API
//! tests here and fleetctl's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_model::Machine;
use fleet_store::{MemoryStore, Registry};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::{run_agent, AgentConfig, SimManager};
use crate::api::{router, Api};
use crate::engine::{run_engine, EngineConfig, EngineStats};
use crate::Error;

/// The agent's and the engine's tasks.
type Roles = (
    JoinHandle<Result<(), Error>>,
    JoinHandle<Result<EngineStats, Error>>,
);

/// A fleetd on an in-memory registry.
#[derive(Debug)]
pub struct InMemoryFleetd {
    /// Its registry.
    pub reg: Arc<Registry<MemoryStore>>,
    ready: Option<watch::Sender<bool>>,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    roles: Option<Roles>,
}

impl InMemoryFleetd {
    /// Serves the API on `sock`; it answers 503 until [`InMemoryFleetd::join`].
    pub fn serve(sock: &Path) -> std::io::Result<Self> {
        let reg = Arc::new(Registry::new(MemoryStore::new(), "/_coreos.com/fleet/"));
        let (ready, ready_rx) = watch::channel(false);
        let api = Arc::new(Api {
            reg: reg.clone(),
            ready: ready_rx,
            server: "fleetd/0.1.0",
        });
        let listener = tokio::net::UnixListener::bind(sock)?;
        let server = tokio::spawn(async move { axum::serve(listener, router(api)).await });
        Ok(Self {
            reg,
            ready: Some(ready),
            stop: watch::channel(false).0,
            server,
            roles: None,
        })
    }

    /// Starts the machine's agent (TTL 5 s) and engine.
    pub fn join(&mut self, machine: Machine) {
        let (stop, stop_rx) = watch::channel(false);
        self.stop = stop;
        let id = machine.id.clone();
        let agent = tokio::spawn(run_agent(
            self.reg.clone(),
            AgentConfig {
                machine,
                ttl: 5,
                resync: Duration::from_secs(30),
                fencing: false,
            },
            SimManager::default(),
            stop_rx.clone(),
            self.ready.take(),
        ));
        let engine = tokio::spawn(run_engine(
            self.reg.clone(),
            EngineConfig {
                machine_id: id,
                lease_ttl: 5,
                resync: Duration::from_secs(30),
            },
            stop_rx,
        ));
        self.roles = Some((agent, engine));
    }

    /// Stops the roles gracefully (the agent purges) and the API; the roles' results.
    pub async fn stop(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        let mut result = Ok(());
        if let Some((agent, engine)) = self.roles {
            if let Ok(r) = agent.await {
                result = result.and(r);
            }
            if let Ok(r) = engine.await {
                result = result.and(r.map(drop));
            }
        }
        self.server.abort();
        result
    }
}

//! A cluster of simulated agents in one process against a real etcd on 127.0.0.1: how long
//! 5,000 units take to be launched across 500 machines, how many etcd requests that costs,
//! and the request rate at rest. Three machines run engines (the rest have the engine
//! disabled, as fleet's `disable_engine`). Sizes: `SIM_MACHINES`, `SIM_UNITS`.
//!
//! Baseline in the same run: the requests the same units cost to create (3 each), the floor
//! any scheduler pays before placing anything.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::disallowed_methods
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_model::{JobState, Machine};
use fleet_store::testing::LocalEtcd;
use fleet_store::{EtcdStore, EtcdTls, KvStore, Registry};
use fleetd::agent::{run_agent, AgentConfig, SimManager};
use fleetd::engine::{run_engine, EngineConfig};
use tokio::sync::watch;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let machines = env("SIM_MACHINES", 500);
    let units = env("SIM_UNITS", 5000);
    // etcd's data on tmpfs: this measures fleet's traffic, not this machine's disk.
    let etcd = LocalEtcd::start(
        std::path::Path::new("/dev/shm"),
        "http",
        &["--quota-backend-bytes".into(), "4294967296".into()],
    )
    .expect("etcd must be installed");
    let store = etcd
        .store(Duration::from_secs(10), &EtcdTls::default(), 100)
        .await
        .expect("etcd did not start");
    let reg = Arc::new(Registry::new(store.clone(), "/_coreos.com/fleet/"));
    let (stop_tx, stop_rx) = watch::channel(false);
    let _ = &stop_tx;

    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..machines {
        let m = Machine {
            id: format!("{i:032x}"),
            public_ip: format!("172.20.{}.{}", i / 200, i % 200 + 2),
            metadata: Default::default(),
            version: "0.1.0".into(),
        };
        let (agent_reg, rx) = (reg.clone(), stop_rx.clone());
        let id = m.id.clone();
        tasks.push(tokio::spawn(async move {
            let cfg = AgentConfig {
                machine: m,
                ttl: 10,
                resync: Duration::from_secs(600),
                fencing: false,
            };
            run_agent(agent_reg, cfg, SimManager::default(), rx, None)
                .await
                .unwrap();
        }));
        if i < 3 {
            let (reg, rx) = (reg.clone(), stop_rx.clone());
            tasks.push(tokio::spawn(async move {
                let cfg = EngineConfig {
                    machine_id: id,
                    lease_ttl: 10,
                    resync: Duration::from_secs(600),
                };
                run_engine(reg, cfg, rx).await.unwrap();
            }));
        }
    }
    while reg.machines().await.unwrap().len() < machines {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{machines} simulated machines registered in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The client creating units has its own connection (and request counter).
    let client = EtcdStore::connect(
        std::slice::from_ref(&etcd.endpoint),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let creator = Registry::new(client.clone(), "/_coreos.com/fleet/");
    let before = store.requests();
    let t = Instant::now();
    for n in 0..units {
        let text =
            format!("[Unit]\nDescription=unit {n}\n\n[Service]\nExecStart=/bin/sleep 1000\n");
        creator
            .create_unit(&format!("sim.{n}.service"), &text, JobState::Launched)
            .await
            .unwrap();
    }
    let created = t.elapsed();
    let create_requests = client.requests();
    loop {
        let (jobs, _) = creator.jobs().await.unwrap();
        let done = jobs
            .iter()
            .filter(|j| j.target.is_some() && j.job_state == j.target)
            .count();
        if done == units {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "did not converge: {done}/{units}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let converged = t.elapsed();
    let total = store.requests() - before;
    println!("{units} units created in {:.1} s by one client ({create_requests} requests, {:.1} per unit: the baseline)", created.as_secs_f64(), create_requests as f64 / units as f64);
    println!(
        "all launched {:.1} s after the first was created",
        converged.as_secs_f64()
    );
    println!("etcd requests by engines and agents until converged: {total} ({:.1} per unit, {:.2}x the creation baseline)", total as f64 / units as f64, total as f64 / create_requests as f64);

    let r0 = store.requests();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rest = (store.requests() - r0) as f64 / 10.0;
    println!("at rest: {rest:.1} etcd requests/s for {machines} machines ({:.2} per machine per second; lease keep-alives, TTL 10 s)", rest / machines as f64);

    // Simulated machines just vanish (a graceful purge of 500 machines at once is a
    // different benchmark).
    drop(stop_tx);
    for t in &tasks {
        t.abort();
    }
    drop(etcd);
}

//! fleetd's roles together: engines and agents of several machines on one store, with the
//! simulated unit manager. Placement, failover when a machine dies (its lease lapses, no
//! purge), graceful stop (purge, immediate), engine leader failover, and a machine cut off
//! from the store (plain units kept, fenced units stopped before they move, recovery).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_model::{JobState, Machine};
use fleet_store::{KvStore, MemoryStore, Registry};
use fleetd::agent::{run_agent, run_reconfigurable_agent, AgentConfig, Reconfig, SimManager};
use fleetd::engine::{run_engine, EngineConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Kills a role as a SIGKILL would, and waits until it is gone: `abort` only asks, and a
/// task running on another worker thread goes on until its next await (an aborted engine
/// once scheduled a unit after the test thought it dead).
async fn kill(task: &mut JoinHandle<()>) {
    task.abort();
    let _ = task.await;
}

/// The roles' logs (debug and up), captured with the test's output: printed when it fails.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "fleetd=debug,fleet_store=debug,fleet_engine=debug",
        ))
        .try_init();
}

struct Node {
    id: String,
    stop: watch::Sender<bool>,
    agent: JoinHandle<()>,
    engine: JoinHandle<()>,
}

fn start_node<S: KvStore>(reg: &Arc<Registry<S>>, id: &str, ttl: i64) -> Node {
    let (tx, rx) = watch::channel(false);
    let machine = Machine {
        id: id.into(),
        public_ip: format!("172.20.0.{}", 100 + id.len()),
        metadata: Default::default(),
        version: "0.1.0".into(),
    };
    let agent = tokio::spawn({
        let (reg, rx) = (reg.clone(), rx.clone());
        async move {
            let cfg = AgentConfig {
                machine,
                ttl,
                resync: Duration::from_secs(30),
                fencing: false,
            };
            run_agent(reg, cfg, SimManager::default(), rx, None)
                .await
                .unwrap();
        }
    });
    let engine = tokio::spawn({
        let (reg, id) = (reg.clone(), id.to_string());
        async move {
            let cfg = EngineConfig {
                machine_id: id,
                lease_ttl: ttl,
                resync: Duration::from_secs(30),
            };
            run_engine(reg, cfg, rx).await.unwrap();
        }
    });
    Node {
        id: id.into(),
        stop: tx,
        agent,
        engine,
    }
}

/// Polls `check` every 5 ms until it gives `Ok` (for at most `limit`) and returns how long
/// that took; otherwise panics naming `what` and the last state `check` described.
async fn until(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) -> Duration {
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(()) => return start.elapsed(),
            Err(state) => state,
        };
        assert!(start.elapsed() < limit, "never: {what}: {last}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `Ok` when `done`, else the state to report.
fn ok_if(done: bool, state: impl FnOnce() -> String) -> Result<(), String> {
    if done {
        Ok(())
    } else {
        Err(state())
    }
}

/// Until the jobs satisfy `f` (at most 30 s).
async fn eventually<S: KvStore>(
    reg: &Registry<S>,
    what: &str,
    f: impl Fn(&[fleet_store::JobRecord]) -> bool,
) -> Duration {
    until(what, Duration::from_secs(30), async || {
        let (jobs, _) = reg.jobs().await.unwrap();
        ok_if(f(&jobs), || format!("{jobs:?}"))
    })
    .await
}

/// Until `n` machines are registered (at most 10 s).
async fn machines<S: KvStore>(reg: &Registry<S>, n: usize) {
    until(
        &format!("{n} machines"),
        Duration::from_secs(10),
        async || {
            let m = reg.machines().await.unwrap();
            ok_if(m.len() == n, || format!("{m:?}"))
        },
    )
    .await;
}

fn launched_everywhere(jobs: &[fleet_store::JobRecord], n: usize) -> bool {
    jobs.len() == n
        && jobs
            .iter()
            .all(|j| j.target.is_some() && j.job_state == j.target)
}

const UNIT: &str = "[Service]\nExecStart=/bin/sleep 1000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_are_placed_and_move_when_a_machine_dies() {
    logs();
    let store = MemoryStore::new();
    let reg = Arc::new(Registry::new(store.clone(), "/_coreos.com/fleet/"));
    let mut nodes: Vec<Node> = ["m1", "m2", "m3"]
        .iter()
        .map(|id| start_node(&reg, id, 1))
        .collect();
    machines(&reg, 3).await;
    for n in 0..3 {
        reg.create_unit(&format!("hello.{n}.service"), UNIT, JobState::Launched)
            .await
            .unwrap();
    }
    let t = eventually(&reg, "3 units launched", |j| launched_everywhere(j, 3)).await;
    eprintln!("3 units launched in {:.0} ms", t.as_secs_f64() * 1e3);
    let (jobs, _) = reg.jobs().await.unwrap();
    let targets: std::collections::BTreeSet<_> =
        jobs.iter().map(|j| j.target.clone().unwrap()).collect();
    assert_eq!(targets.len(), 3, "least loaded: one unit per machine");
    // States are published after the starts, which follow "launched" (fleet's order).
    until("3 states running", Duration::from_secs(10), async || {
        let states = reg.states().await.unwrap();
        ok_if(
            states.len() == 3
                && states
                    .iter()
                    .all(|s| s.active_state == "active" && s.sub_state == "running"),
            || format!("{states:?}"),
        )
    })
    .await;

    // The machine of hello.0 dies: no purge, its lease lapses, the unit moves.
    let victim = jobs
        .iter()
        .find(|j| j.name == "hello.0.service")
        .unwrap()
        .target
        .clone()
        .unwrap();
    let node = nodes.iter_mut().find(|n| n.id == victim).unwrap();
    kill(&mut node.agent).await;
    kill(&mut node.engine).await;
    let t = eventually(&reg, "hello.0 relaunched elsewhere", |jobs| {
        jobs.iter().any(|j| {
            j.name == "hello.0.service"
                && j.target.as_deref().is_some_and(|t| t != victim)
                && j.job_state == j.target
        })
    })
    .await;
    eprintln!(
        "failover after a machine died (TTL 1 s): {:.0} ms",
        t.as_secs_f64() * 1e3
    );
    assert_eq!(reg.machines().await.unwrap().len(), 2);
    // No rebalancing: the other two units stayed.
    let (after, _) = reg.jobs().await.unwrap();
    for j in jobs.iter().filter(|j| j.name != "hello.0.service") {
        assert_eq!(
            after.iter().find(|a| a.name == j.name).unwrap().target,
            j.target
        );
    }

    // A graceful stop purges at once: machine gone, its units unloaded and moved.
    let survivor = nodes.iter().find(|n| n.id != victim).unwrap();
    let moved: Vec<String> = after
        .iter()
        .filter(|j| j.target.as_deref() == Some(survivor.id.as_str()))
        .map(|j| j.name.clone())
        .collect();
    survivor.stop.send(true).unwrap();
    machines(&reg, 1).await;
    eventually(&reg, "purged units launched on the last machine", |jobs| {
        moved.iter().all(|m| {
            jobs.iter().any(|j| {
                &j.name == m
                    && j.job_state.is_some()
                    && j.target.as_deref() != Some(survivor.id.as_str())
            })
        })
    })
    .await;
    for n in &nodes {
        let _ = n.stop.send(true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_when_the_engine_leader_dies() {
    logs();
    let store = MemoryStore::new();
    let reg = Arc::new(Registry::new(store.clone(), "/p/"));
    let mut nodes: Vec<Node> = ["a", "b"]
        .iter()
        .map(|id| start_node(&reg, id, 1))
        .collect();
    reg.create_unit("one.service", UNIT, JobState::Launched)
        .await
        .unwrap();
    eventually(&reg, "one launched", |j| launched_everywhere(j, 1)).await;
    let leader = reg.leader().await.unwrap().unwrap();
    let node = nodes.iter_mut().find(|n| n.id == leader).unwrap();
    kill(&mut node.engine).await;
    // The dead engine's lease lapses; the other engine schedules new work.
    reg.create_unit("two.service", UNIT, JobState::Launched)
        .await
        .unwrap();
    let t = eventually(&reg, "two launched under the new leader", |j| {
        launched_everywhere(j, 2)
    })
    .await;
    eprintln!(
        "engine leader failover (TTL 1 s): {:.0} ms",
        t.as_secs_f64() * 1e3
    );
    assert_ne!(
        reg.leader().await.unwrap().as_deref(),
        Some(leader.as_str())
    );
    // Desired-state changes propagate: unload takes the unit off its machine.
    reg.set_target_state("two.service", JobState::Inactive)
        .await
        .unwrap();
    eventually(&reg, "two unscheduled", |jobs| {
        jobs.iter()
            .any(|j| j.name == "two.service" && j.target.is_none() && j.job_state.is_none())
    })
    .await;
    for n in &nodes {
        let _ = n.stop.send(true);
    }
}

/// A machine of its own store view and unit manager, so a test can cut it off and watch
/// what it runs.
struct Member {
    id: String,
    view: MemoryStore,
    units: SimManager,
    stop: watch::Sender<bool>,
    /// New settings for its agent, as fleetd's SIGHUP gives them.
    reload: watch::Sender<Reconfig>,
}

fn start_member(store: &MemoryStore, id: &str, ttl: i64, fencing: bool) -> Member {
    let view = store.view();
    let reg = Arc::new(Registry::new(view.clone(), "/p/"));
    let units = SimManager::default();
    let (tx, rx) = watch::channel(false);
    let machine = Machine {
        id: id.into(),
        public_ip: String::new(),
        metadata: Default::default(),
        version: "0.1.0".into(),
    };
    let (reload, reload_rx) = watch::channel(Reconfig {
        public_ip: machine.public_ip.clone(),
        metadata: machine.metadata.clone(),
        fencing,
    });
    let cfg = AgentConfig {
        machine,
        ttl,
        resync: Duration::from_secs(30),
        fencing,
    };
    tokio::spawn(run_reconfigurable_agent(
        reg.clone(),
        cfg,
        units.clone(),
        rx.clone(),
        None,
        Some(reload_rx),
    ));
    let ecfg = EngineConfig {
        machine_id: id.into(),
        lease_ttl: ttl,
        resync: Duration::from_secs(30),
    };
    tokio::spawn(run_engine(reg, ecfg, rx));
    Member {
        id: id.into(),
        view,
        units,
        stop: tx,
        reload,
    }
}

/// What the cut-off machine and the others ran, sampled every 5 ms from the cut.
#[derive(Debug, Default)]
struct Timeline {
    /// When `fenced.service` stopped on the cut-off machine.
    fenced_stopped: Option<Duration>,
    /// When `fenced.service` first ran elsewhere.
    fenced_elsewhere: Option<Duration>,
    /// When `plain.service` first ran elsewhere.
    plain_elsewhere: Option<Duration>,
    /// Whether `plain.service` ran on the cut-off machine at every sample.
    plain_kept: bool,
}

async fn watch_partition(cut: &Member, others: &[&Member], until: Duration) -> Timeline {
    let start = Instant::now();
    let mut t = Timeline {
        plain_kept: true,
        ..Timeline::default()
    };
    while start.elapsed() < until {
        let now = start.elapsed();
        let here = cut.units.running();
        let there: Vec<String> = others.iter().flat_map(|m| m.units.running()).collect();
        if !here.iter().any(|u| u == "fenced.service") && t.fenced_stopped.is_none() {
            t.fenced_stopped = Some(now);
        }
        t.plain_kept &= here.iter().any(|u| u == "plain.service");
        if there.iter().any(|u| u == "fenced.service") && t.fenced_elsewhere.is_none() {
            t.fenced_elsewhere = Some(now);
        }
        if there.iter().any(|u| u == "plain.service") && t.plain_elsewhere.is_none() {
            t.plain_elsewhere = Some(now);
        }
        if t.fenced_elsewhere.is_some() && t.plain_elsewhere.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_machine_keeps_its_units_but_stops_fenced_ones_before_they_move() {
    logs();
    let store = MemoryStore::new();
    let reg = Registry::new(store.clone(), "/p/");
    let ttl = 2;
    let members: Vec<Member> = ["m1", "m2", "m3"]
        .iter()
        .map(|id| start_member(&store, id, ttl, false))
        .collect();
    machines(&reg, 3).await;
    reg.create_unit("plain.service", UNIT, JobState::Launched)
        .await
        .unwrap();
    reg.create_unit(
        "fenced.service",
        "[Service]\nExecStart=/bin/sleep 1000\n\n[X-Fleet]\nMachineOf=plain.service\nFencing=true\n",
        JobState::Launched,
    )
    .await
    .unwrap();
    eventually(&reg, "both launched", |j| launched_everywhere(j, 2)).await;
    let (jobs, _) = reg.jobs().await.unwrap();
    let target = jobs[0].target.clone().unwrap();
    let cut = members.iter().find(|m| m.id == target).unwrap();
    let others: Vec<&Member> = members.iter().filter(|m| m.id != target).collect();
    // "launched" is written before the starts (fleet's order): wait for them.
    until("both running", Duration::from_secs(10), async || {
        let now = cut.units.running();
        ok_if(now == ["fenced.service", "plain.service"], || {
            format!("{now:?}")
        })
    })
    .await;
    // A unit pinned to the machine cannot move: it waits for the machine to come back.
    reg.create_unit(
        "stay.service",
        &format!("{UNIT}\n[X-Fleet]\nMachineID={target}\n"),
        JobState::Launched,
    )
    .await
    .unwrap();
    eventually(&reg, "stay launched", |j| launched_everywhere(j, 3)).await;

    // The partition: the machine's requests fail and its watches end.
    cut.view.set_reachable(false);
    let t = watch_partition(cut, &others, Duration::from_secs(30)).await;
    eprintln!("partition timeline (TTL {ttl} s): {t:?}");
    // Fleet's behaviour for plain units: kept running through the outage, so for a while
    // the moved unit runs twice.
    assert!(t.plain_kept, "plain.service stopped on the cut-off machine");
    assert!(t.plain_elsewhere.is_some(), "plain.service never moved");
    // Fencing: stopped on the cut-off machine before it started anywhere else, so at
    // most one copy ran at any moment.
    let stopped = t.fenced_stopped.expect("fenced.service never stopped");
    let elsewhere = t.fenced_elsewhere.expect("fenced.service never moved");
    assert!(stopped < elsewhere, "{t:?}");

    // The link comes back: the machine registers again and stops the moved units; the
    // pinned one, unscheduled meanwhile, is scheduled back and never stopped.
    cut.view.set_reachable(true);
    until(
        "back after the partition",
        Duration::from_secs(30),
        async || {
            let machines = reg.machines().await.unwrap().len();
            let here = cut.units.running();
            assert!(
                here.iter().any(|u| u == "stay.service"),
                "stay.service was stopped"
            );
            let placed = reg.job("stay.service").await.unwrap().unwrap().target;
            ok_if(
                machines == 3
                    && here == ["stay.service"]
                    && placed.as_deref() == Some(target.as_str()),
                || format!("{machines} machines, {here:?} still running on {}", cut.id),
            )
        },
    )
    .await;
    // Past the hold too: it stays.
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(cut.units.running(), vec!["stay.service"]);
    let (jobs, _) = reg.jobs().await.unwrap();
    assert!(jobs
        .iter()
        .filter(|j| j.name != "stay.service")
        .all(|j| j.target.as_deref() != Some(target.as_str())));
    for m in &members {
        m.stop.send(true).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_outage_restarts_fenced_units_where_they_were() {
    logs();
    // Cluster-wide fencing, a cut shorter than the TTL but longer than half of it: the
    // unit stops, the lease survives (the same lease before and after), and it starts
    // again on the same machine — never on the other machine, which could take it.
    let store = MemoryStore::new();
    let reg = Registry::new(store.clone(), "/p/");
    let m = start_member(&store, "solo", 4, true);
    reg.create_unit("plain.service", UNIT, JobState::Launched)
        .await
        .unwrap();
    until("running on solo", Duration::from_secs(10), async || {
        let now = m.units.running();
        ok_if(now == ["plain.service"], || format!("{now:?}"))
    })
    .await;
    let other = start_member(&store, "other", 4, true);
    machines(&reg, 2).await;
    let lease_of = |id: &'static str| {
        let store = store.clone();
        async move {
            let kv = store
                .get(&format!("/p/machines/{id}/object"))
                .await
                .unwrap();
            kv.map(|kv| kv.lease)
        }
    };
    let lease = lease_of("solo").await.expect("solo registered");
    m.view.set_reachable(false);
    let running = |want: bool| {
        let (units, elsewhere) = (m.units.clone(), other.units.clone());
        async move || {
            let now = units.running();
            assert!(
                elsewhere.running().is_empty(),
                "the unit ran on the other machine"
            );
            ok_if((now == ["plain.service"]) == want, || format!("{now:?}"))
        }
    };
    let fenced_after = until("fenced", Duration::from_secs(30), running(false)).await;
    m.view.set_reachable(true);
    let restarted_after = until("restarted", Duration::from_secs(30), running(true)).await;
    eprintln!(
        "fenced {:.0} ms after the cut (TTL 4 s), running again {:.0} ms after it healed",
        fenced_after.as_secs_f64() * 1e3,
        restarted_after.as_secs_f64() * 1e3
    );
    assert_eq!(
        lease_of("solo").await,
        Some(lease),
        "the presence lease lapsed"
    );
    let (jobs, _) = reg.jobs().await.unwrap();
    assert_eq!(jobs[0].target.as_deref(), Some("solo"));
    assert!(other.units.running().is_empty());
    m.stop.send(true).unwrap();
    other.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_that_stops_on_its_own_is_reported() {
    logs();
    // fleet's unit-state publisher: what systemd says about a unit reaches the registry
    // without any change in the cluster.
    let store = MemoryStore::new();
    let reg = Registry::new(store.clone(), "/p/");
    let m = start_member(&store, "solo", 2, false);
    reg.create_unit("crashy.service", UNIT, JobState::Launched)
        .await
        .unwrap();
    eventually(&reg, "launched", |j| launched_everywhere(j, 1)).await;
    // "Launched" is written before the start: wait for the start to be reported, or the
    // crash below may come first and the start undo it.
    until("running", Duration::from_secs(20), async || {
        let states = reg.states().await.unwrap();
        ok_if(
            states
                .iter()
                .any(|s| s.unit == "crashy.service" && s.active_state == "active"),
            || format!("{states:?}"),
        )
    })
    .await;
    m.units.crash("crashy.service");
    until("reported", Duration::from_secs(20), async || {
        let states = reg.states().await.unwrap();
        ok_if(
            states
                .iter()
                .any(|s| s.unit == "crashy.service" && s.active_state == "inactive"),
            || format!("{states:?}"),
        )
    })
    .await;
    m.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_metadata_and_address_in_place() {
    logs();
    // fleetd's SIGHUP: the machine's new address and metadata are published under the
    // same lease; its units keep running and a global unit follows the new metadata.
    let store = MemoryStore::new();
    let reg = Registry::new(store.clone(), "/p/");
    let m = start_member(&store, "solo", 2, false);
    reg.create_unit("plain.service", UNIT, JobState::Launched)
        .await
        .unwrap();
    let global = format!("{UNIT}\n[X-Fleet]\nGlobal=true\nMachineMetadata=role=db\n");
    reg.create_unit("db.service", &global, JobState::Launched)
        .await
        .unwrap();
    eventually(&reg, "plain launched", |j| {
        j.iter()
            .any(|j| j.name == "plain.service" && j.target.is_some() && j.job_state == j.target)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(m.units.running(), vec!["plain.service"]);

    m.reload.send_replace(Reconfig {
        public_ip: "172.20.0.201".into(),
        metadata: [("role".to_string(), "db".to_string())].into(),
        fencing: false,
    });
    until("reconfigured", Duration::from_secs(20), async || {
        let machines = reg.machines().await.unwrap();
        ok_if(
            machines.len() == 1
                && machines[0].public_ip == "172.20.0.201"
                && machines[0].metadata.get("role").map(String::as_str) == Some("db")
                && m.units.running().len() == 2,
            || format!("{machines:?}, running {:?}", m.units.running()),
        )
    })
    .await;
    assert_eq!(m.units.running(), vec!["db.service", "plain.service"]);
    m.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_machine_id_waits_unregistered_until_the_id_is_free() {
    logs();
    // fleet's TestDetectMachineId: a second fleetd with the same machine ID keeps running
    // without registering (its API would answer 503), and gets in once the ID is free.
    let store = MemoryStore::new();
    let reg = Arc::new(Registry::new(store.clone(), "/p/"));
    let first = start_member(&store, "twin", 2, false);
    machines(&reg, 1).await;
    let (stop, stop_rx) = watch::channel(false);
    let (ready, mut ready_rx) = watch::channel(false);
    let cfg = AgentConfig {
        machine: Machine {
            id: "twin".into(),
            public_ip: "172.20.0.202".into(),
            metadata: Default::default(),
            version: "0.1.0".into(),
        },
        ttl: 2,
        resync: Duration::from_secs(30),
        fencing: false,
    };
    let second = tokio::spawn(run_agent(
        reg.clone(),
        cfg,
        SimManager::default(),
        stop_rx,
        Some(ready),
    ));
    // Past the wait for a crashed predecessor's lease (TTL + 2 s), still running, not in.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!second.is_finished(), "the duplicate gave up");
    assert!(!*ready_rx.borrow());
    let m = reg.machines().await.unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].public_ip, "", "the first machine's record stands");
    // The first leaves: the second registers.
    first.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), ready_rx.wait_for(|r| *r))
        .await
        .expect("the second never registered")
        .unwrap();
    let m = reg.machines().await.unwrap();
    assert_eq!(m[0].public_ip, "172.20.0.202");
    stop.send(true).unwrap();
    second.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_unit_that_conflicts_with_a_unit_here_is_skipped() {
    logs();
    // fleet 1.0's TestScheduleGlobalConflicts on one machine.
    let store = MemoryStore::new();
    let reg = Registry::new(store.clone(), "/p/");
    let m = start_member(&store, "solo", 2, false);
    let global = |n: &str| format!("{UNIT}\n[X-Fleet]\nGlobal=true\nConflicts={n}\n");
    reg.create_unit(
        "conflict-global.0.service",
        &global("conflict-global.*"),
        JobState::Launched,
    )
    .await
    .unwrap();
    until(
        "conflict-global.0 running",
        Duration::from_secs(10),
        async || ok_if(!m.units.running().is_empty(), String::new),
    )
    .await;
    reg.create_unit(
        "conflict-global.1.service",
        &global("conflict-global.*"),
        JobState::Launched,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(m.units.running(), vec!["conflict-global.0.service"]);
    m.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_the_machine_refuses_never_stops_the_others() {
    logs();
    // One unit systemd refuses to load, one it refuses to start, and one it cannot stop:
    // each fails on its own, is reported and retried, and every other unit goes on.
    let store = MemoryStore::new();
    let reg = Registry::new(store.clone(), "/p/");
    let m = start_member(&store, "solo", 2, false);
    m.units.refuse("bad-load.service", "load");
    m.units.refuse("bad-start.service", "start");
    for name in ["bad-load.service", "bad-start.service", "good.service"] {
        reg.create_unit(name, UNIT, JobState::Launched)
            .await
            .unwrap();
    }
    let running = |want: &'static [&'static str]| {
        let units = m.units.clone();
        async move || {
            let now = units.running();
            ok_if(now == want, || format!("{now:?}"))
        }
    };
    until(
        "good runs",
        Duration::from_secs(10),
        running(&["good.service"]),
    )
    .await;
    // The refused load is published as failed, with the content that failed.
    until("refusal reported", Duration::from_secs(10), async || {
        let states = reg.states().await.unwrap();
        ok_if(
            states.iter().any(|s| {
                s.unit == "bad-load.service"
                    && s.load_state == "error"
                    && s.active_state == "failed"
            }),
            || format!("{states:?}"),
        )
    })
    .await;
    // Later work goes on while the bad units are retried.
    reg.create_unit("later.service", UNIT, JobState::Launched)
        .await
        .unwrap();
    until(
        "later runs",
        Duration::from_secs(10),
        running(&["good.service", "later.service"]),
    )
    .await;
    // Once systemd accepts them, the retries bring them up (the backoff is short at first).
    m.units.allow("bad-load.service", "load");
    m.units.allow("bad-start.service", "start");
    until(
        "all run",
        Duration::from_secs(20),
        running(&[
            "bad-load.service",
            "bad-start.service",
            "good.service",
            "later.service",
        ]),
    )
    .await;
    // A unit that cannot be unloaded does not keep others from stopping or starting.
    m.units.refuse("good.service", "unload");
    reg.destroy_unit("good.service").await.unwrap();
    reg.set_target_state("later.service", JobState::Loaded)
        .await
        .unwrap();
    reg.create_unit("last.service", UNIT, JobState::Launched)
        .await
        .unwrap();
    until(
        "last runs, later stopped",
        Duration::from_secs(10),
        running(&[
            "bad-load.service",
            "bad-start.service",
            "good.service",
            "last.service",
        ]),
    )
    .await;
    m.units.allow("good.service", "unload");
    until("good unloaded", Duration::from_secs(20), async || {
        let loaded = m.units.loaded();
        ok_if(!loaded.contains(&"good.service".to_string()), || {
            format!("{loaded:?}")
        })
    })
    .await;
    m.stop.send(true).unwrap();
}

/// Only an agent, on its own store view, driving `units` (a fleetd whose engine is off).
fn spawn_agent(
    store: &MemoryStore,
    id: &str,
    metadata: &str,
    ttl: i64,
    units: SimManager,
) -> JoinHandle<()> {
    let reg = Arc::new(Registry::new(store.view(), "/p/"));
    let cfg = AgentConfig {
        machine: Machine {
            id: id.into(),
            public_ip: String::new(),
            metadata: fleet_model::machine::parse_metadata(metadata),
            version: "0.1.0".into(),
        },
        ttl,
        resync: Duration::from_secs(30),
        fencing: false,
    };
    // The sender is leaked on purpose: these agents end by abort (a SIGKILL), never by stop.
    let (tx, rx) = watch::channel(false);
    std::mem::forget(tx);
    tokio::spawn(async move {
        run_agent(reg, cfg, units, rx, None).await.unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_unit_keeps_running_through_a_fleetd_restart() {
    logs();
    // fleetd killed (no purge) long enough for its lease to lapse and the engine to
    // unschedule its pinned unit; the restarted fleetd finds the unit running and keeps it
    // while the engine places it back: never stopped, never started again.
    let store = MemoryStore::new();
    let reg = Registry::new(store.clone(), "/p/");
    let other = start_member(&store, "other", 1, false);
    let units = SimManager::default();
    let mut first = spawn_agent(&store, "pinnedhost", "", 1, units.clone());
    let pinned = format!("{UNIT}\n[X-Fleet]\nMachineID=pinnedhost\n");
    reg.create_unit("pinned.service", &pinned, JobState::Launched)
        .await
        .unwrap();
    eventually(&reg, "launched", |j| launched_everywhere(j, 1)).await;
    kill(&mut first).await;
    eventually(&reg, "unscheduled after the lapse", |j| {
        j[0].target.is_none()
    })
    .await;
    let second = spawn_agent(&store, "pinnedhost", "", 1, units.clone());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(17) {
        assert_eq!(
            units.running(),
            ["pinned.service"],
            "after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually(&reg, "placed back and launched", |j| {
        launched_everywhere(j, 1) && j[0].target.as_deref() == Some("pinnedhost")
    })
    .await;
    assert_eq!(units.starts("pinned.service"), 1, "started once only");
    second.abort();
    other.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_never_clears_another_machines_job_state() {
    logs();
    // m1 is killed; its unit moves to m2, which launches it. m1 comes back, finds the unit
    // left in its unit directory, and unloads it: the job-state m2 set must stay.
    let store = MemoryStore::new();
    let reg = Registry::new(store.clone(), "/p/");
    let m2 = start_member(&store, "m2", 1, false);
    let units = SimManager::default();
    let mut m1 = spawn_agent(&store, "m1", "role=web", 1, units.clone());
    let on_web = format!("{UNIT}\n[X-Fleet]\nMachineMetadata=role=web\n");
    reg.create_unit("moving.service", &on_web, JobState::Launched)
        .await
        .unwrap();
    eventually(&reg, "launched on m1", |j| {
        launched_everywhere(j, 1) && j[0].target.as_deref() == Some("m1")
    })
    .await;
    // Now m2 may take it too.
    m2.reload
        .send(Reconfig {
            public_ip: String::new(),
            metadata: fleet_model::machine::parse_metadata("role=web"),
            fencing: false,
        })
        .unwrap();
    kill(&mut m1).await;
    eventually(&reg, "moved to m2 and launched", |j| {
        launched_everywhere(j, 1) && j[0].target.as_deref() == Some("m2")
    })
    .await;
    let again = spawn_agent(&store, "m1", "role=web", 1, units.clone());
    until(
        "m1 unloaded its copy",
        Duration::from_secs(15),
        async || {
            let loaded = units.loaded();
            ok_if(loaded.is_empty(), || format!("{loaded:?}"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (jobs, _) = reg.jobs().await.unwrap();
    assert_eq!(jobs[0].job_state.as_deref(), Some("m2"), "{jobs:?}");
    again.abort();
    m2.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_watches_again_after_short_cuts() {
    logs();
    // Short cuts (under the TTL) end the registry's watches; renewals fail and recover.
    // Through all of them the agent must set its watches up again: a unit created
    // afterwards still starts (an agent once went deaf when a pass ran in between).
    let store = MemoryStore::new();
    let reg = Registry::new(store.clone(), "/p/");
    let m = start_member(&store, "solo", 4, false);
    machines(&reg, 1).await;
    for (i, ms) in [700u64, 1400, 300, 1900, 1000, 2300]
        .into_iter()
        .enumerate()
    {
        m.view.set_reachable(false);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        m.view.set_reachable(true);
        tokio::time::sleep(Duration::from_millis(300 + 250 * i as u64)).await;
    }
    reg.create_unit("after.service", UNIT, JobState::Launched)
        .await
        .unwrap();
    until("after.service runs", Duration::from_secs(15), async || {
        let now = m.units.running();
        ok_if(now == ["after.service"], || format!("{now:?}"))
    })
    .await;
    m.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_unit_that_is_destroyed_goes_at_once() {
    logs();
    // Its start fails again and again, so its retries are far apart; destroying it is a
    // new task for the unit and does not wait for the next retry.
    let store = MemoryStore::new();
    let reg = Registry::new(store.clone(), "/p/");
    let m = start_member(&store, "solo", 2, false);
    m.units.refuse("stuck.service", "start");
    reg.create_unit("stuck.service", UNIT, JobState::Launched)
        .await
        .unwrap();
    // Attempts after 0, 1, 3 and 7 s: the next one would come 8 s later.
    tokio::time::sleep(Duration::from_millis(7500)).await;
    assert_eq!(m.units.loaded(), ["stuck.service"]);
    reg.destroy_unit("stuck.service").await.unwrap();
    let took = until("unloaded", Duration::from_secs(20), async || {
        let loaded = m.units.loaded();
        ok_if(loaded.is_empty(), || format!("{loaded:?}"))
    })
    .await;
    assert!(
        took < Duration::from_secs(3),
        "unloaded only after {took:?}"
    );
    m.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_removes_unit_blobs_no_unit_names() {
    logs();
    // `--replace` churn leaves a blob per content; the leading engine's resync removes
    // those no unit names, so etcd does not grow without bound.
    let store = MemoryStore::new();
    let reg = Arc::new(Registry::new(store.clone(), "/p/"));
    let (stop, rx) = watch::channel(false);
    let cfg = EngineConfig {
        machine_id: "m1".into(),
        lease_ttl: 2,
        resync: Duration::from_millis(200),
    };
    reg.create_unit("churn.service", UNIT, JobState::Inactive)
        .await
        .unwrap();
    for n in 0..50 {
        reg.replace_unit(
            "churn.service",
            &format!("[Service]\nExecStart=/bin/sleep {n}\n"),
        )
        .await
        .unwrap();
    }
    let blobs = || async {
        let (kvs, _) = store.get_prefix("/p/unit/").await.unwrap();
        kvs.len()
    };
    assert_eq!(blobs().await, 51);
    let engine = tokio::spawn(run_engine(reg.clone(), cfg, rx));
    until("blobs collected", Duration::from_secs(10), async || {
        let n = blobs().await;
        ok_if(n == 1, || format!("{n} blobs"))
    })
    .await;
    let job = reg.job("churn.service").await.unwrap().unwrap();
    assert_eq!(
        job.unit.as_deref(),
        Some("[Service]\nExecStart=/bin/sleep 49\n")
    );
    stop.send(true).unwrap();
    engine.await.unwrap().unwrap();
}

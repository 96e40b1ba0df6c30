//! The launcher against the recording fake host: record before create, and teardown that
//! stops only what the launcher started.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::fake::{FakeHost, Op};
use crate::host::Host;
use crate::state::{valid_name, ClusterState, MachineState, Recorder};
use crate::{Paths, Settings};

fn cluster(paths: &Paths) -> ClusterState {
    let c = ClusterState {
        name: "demo".into(),
        id: "abcd1234".into(),
        subnet: 7,
        settings: Settings::default(),
        image: PathBuf::from("/nonexistent.img"),
        discovery: None,
        updates: None,
        registry: None,
        machines: vec![MachineState::example(1, crate::Driver::Nspawn)],
    };
    std::fs::create_dir_all(paths.cluster_dir("demo")).unwrap();
    c.save(paths).unwrap();
    c
}

fn paths(host: &FakeHost) -> Paths {
    Paths {
        state: host.state_dir(),
        run: host.state_dir().join("run"),
    }
}

/// Fails the test (from inside the fake) when something is created that the state on disk
/// does not yet name.
type Violations = std::sync::Arc<Mutex<Vec<String>>>;

fn require_recorded(host: &FakeHost, paths: &Paths, shared_base: Option<PathBuf>) -> Violations {
    let paths = paths.clone();
    let violations = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
    let v = violations.clone();
    host.check_before_create(move |op| {
        let state = ClusterState::load(&paths, "demo").unwrap();
        let cgroups: Vec<&PathBuf> = state
            .machines
            .iter()
            .flat_map(|m| &m.cgroups)
            .chain(state.discovery.iter().flat_map(|d| &d.cgroups))
            .collect();
        let ok = match op {
            Op::NetnsAdd(n) | Op::Bridge(n) | Op::Link(n) => {
                n.starts_with(&format!("{}-", state.object_prefix()))
            }
            Op::Mkdir(p) => cgroups.contains(&p) || Some(p) == shared_base.as_ref(),
            Op::Spawn(line) => cgroups
                .iter()
                .any(|c| line.contains(&format!("--cgroup {}", c.display()))),
            Op::Mount(p) => p.starts_with(paths.cluster_dir("demo")),
            _ => true,
        };
        if !ok {
            v.lock()
                .unwrap()
                .push(format!("{op:?} before it was recorded"));
        }
    });
    violations
}

fn assert_none(v: &Violations) {
    let v = v.lock().unwrap();
    assert!(v.is_empty(), "{v:#?}");
}

fn start_one(host: &FakeHost, paths: &Paths) -> ClusterState {
    let c = cluster(paths);
    let recorder = Recorder {
        paths,
        state: Mutex::new(c.clone()),
    };
    let root = c.machine_dir(paths, "core-01").join("root");
    std::fs::create_dir_all(c.machine_dir(paths, "core-01")).unwrap();
    crate::boot::start(
        host,
        &c,
        &recorder,
        &c.machines[0],
        &root,
        Path::new("/usr/bin/ferrite"),
    )
    .unwrap();
    recorder.snapshot().unwrap()
}

#[test]
fn a_machine_s_namespace_cgroups_and_process_are_recorded_before_they_exist() {
    for host in [FakeHost::legacy(), FakeHost::unified("cpu memory pids")] {
        let paths = paths(&host);
        let base = (host.cgroup_root().join("cgroup.controllers").exists())
            .then(|| host.cgroup_root().join("ferrite"));
        let violations = require_recorded(&host, &paths, base);
        let state = start_one(&host, &paths);
        assert_none(&violations);
        let m = &state.machines[0];
        let pid = m.pid.expect("the pid is recorded");
        assert!(host.cmdline(pid).unwrap().contains("--machine=core-01"));
        assert!(!m.cgroups.is_empty());
        // The state on disk says the same.
        let saved = ClusterState::load(&paths, "demo").unwrap();
        assert_eq!(saved.machines[0].pid, Some(pid));
        assert_eq!(saved.machines[0].cgroups, m.cgroups);
        assert_eq!(
            host.namespaces(),
            vec!["ferrite-abcd1234-core-01".to_string()]
        );
    }
}

#[test]
fn destroy_stops_everything_it_can_even_when_a_step_fails() {
    let host = FakeHost::unified("cpu memory pids");
    let paths = paths(&host);
    let mut state = start_one(&host, &paths);
    let exe = Path::new("/usr/bin/ferrite");
    crate::updates::ensure_update_service(&host, &paths, &mut state, exe).unwrap();
    crate::registry::ensure_registry(&host, &paths, &mut state, exe).unwrap();
    let services: Vec<u32> = [&state.updates, &state.registry]
        .iter()
        .filter_map(|s| s.as_ref()?.pid)
        .collect();
    assert_eq!(services.len(), 2, "the update service and the registry");
    let cluster_dir = paths.cluster_dir("demo");
    let root = cluster_dir.join("machines/core-01/root");
    host.mount_partition(Path::new("x"), 0, 0, &root, false)
        .unwrap();
    host.busy_mounts();
    let e = crate::destroy(&host, &paths, "demo").unwrap_err();
    assert!(e.to_string().contains("target is busy"), "{e}");
    // The machine, the services and the namespaces are gone all the same; the directory
    // stays with the mount that could not go (a later destroy finishes).
    assert!(host.cmdline(state.machines[0].pid.unwrap()).is_none());
    for pid in services {
        assert!(host.cmdline(pid).is_none(), "service {pid} survived");
    }
    assert!(host.namespaces().is_empty());
    assert!(cluster_dir.exists());
}

#[test]
fn destroy_stops_what_the_launcher_started_and_nothing_else() {
    let host = FakeHost::unified("cpu memory pids");
    let paths = paths(&host);
    let state = start_one(&host, &paths);
    let m = &state.machines[0];
    let cluster_dir = paths.cluster_dir("demo");
    // A user's `tail -f` of the console log, and a process the machine started in its own
    // cgroup after the launcher crashed (not recorded by PID).
    let tail = host.add_process(
        &format!(
            "tail -f {}/machines/core-01/console.log",
            cluster_dir.display()
        ),
        None,
    );
    let payload = m.cgroups[0].join("payload");
    host.cgroup_mkdir(&payload).unwrap();
    let stray = host.add_process("dockerd", Some(&payload));
    host.mount_partition(
        Path::new("x"),
        0,
        0,
        &cluster_dir.join("machines/core-01/root"),
        false,
    )
    .unwrap();

    crate::destroy(&host, &paths, "demo").unwrap();

    assert!(
        host.cmdline(tail).is_some(),
        "the user's process was killed"
    );
    assert!(host.cmdline(m.pid.unwrap()).is_none());
    assert!(
        host.cmdline(stray).is_none(),
        "a process in the machine's cgroup survived"
    );
    assert!(host.namespaces().is_empty());
    assert!(host.mounts().is_empty());
    assert_eq!(host.removed(), vec![payload, m.cgroups[0].clone()]);
    assert!(!cluster_dir.exists());
    // Only recorded PIDs and cgroup members were signalled.
    let signalled: Vec<u32> = host
        .ops()
        .into_iter()
        .filter_map(|o| match o {
            Op::Signal(p, _) => Some(p),
            _ => None,
        })
        .collect();
    assert!(!signalled.contains(&tail));
}

#[test]
fn destroy_after_a_crash_before_the_pid_was_recorded_still_stops_the_machine() {
    let host = FakeHost::legacy();
    let paths = paths(&host);
    let mut state = start_one(&host, &paths);
    let pid = state.machines[0].pid.take().unwrap();
    state.save(&paths).unwrap();
    crate::destroy(&host, &paths, "demo").unwrap();
    assert!(
        host.cmdline(pid).is_none(),
        "the unrecorded nspawn survived destroy"
    );
}

#[test]
fn discovery_runs_in_cgroups_recorded_before_it_starts() {
    let host = FakeHost::unified("memory pids");
    let paths = paths(&host);
    let mut c = cluster(&paths);
    let violations = require_recorded(&host, &paths, Some(host.cgroup_root().join("ferrite")));
    let url = crate::discovery::ensure_discovery(&host, &paths, &mut c, 3, Path::new("/ferrite"))
        .unwrap();
    assert_none(&violations);
    assert!(
        url.starts_with("http://172.20.7.1:2379/v2/keys/_etcd/registry/"),
        "{url}"
    );
    c.save(&paths).unwrap();
    let d = c.discovery.clone().unwrap();
    let pid = d.pid.unwrap();
    assert!(host.cmdline(pid).unwrap().contains("--name discovery"));
    crate::destroy(&host, &paths, "demo").unwrap();
    assert!(host.cmdline(pid).is_none());
    assert!(host.removed().contains(&d.cgroups[0]));
}

#[test]
fn halt_powers_off_then_releases() {
    let host = FakeHost::legacy();
    let paths = paths(&host);
    let mut state = start_one(&host, &paths);
    let init = crate::init_pid(&host, &state.machines[0]).unwrap();
    crate::halt(&host, &paths, &mut state, "core-01", false).unwrap();
    // systemd was asked to power off (SIGRTMIN+4), nothing was killed.
    let signals: Vec<(u32, String)> = host
        .ops()
        .into_iter()
        .filter_map(|o| match o {
            Op::Signal(p, s) => Some((p, s)),
            _ => None,
        })
        .collect();
    assert_eq!(signals, vec![(init, "RTMIN+4".to_string())]);
    assert!(state.machines[0].pid.is_none() && state.machines[0].cgroups.is_empty());
    let err = crate::halt(&host, &paths, &mut state, "core-09", false).unwrap_err();
    assert!(
        err.to_string()
            .contains("has no machine \"core-09\" (it has: core-01)"),
        "{err}"
    );
}

#[test]
fn names() {
    assert!(valid_name("default") && valid_name("c-2"));
    assert!(!valid_name("") && !valid_name("a/b") && !valid_name(&"x".repeat(21)));
}

//! Shared by the tests that boot real machines: a cluster in its own state and run
//! directories under a unique name, destroyed by a guard even when an assertion fails, and
//! commands run in its machines.
#![allow(
    dead_code,
    reason = "each test file uses the part of the helpers it needs"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "test code starts programs and writes fixtures directly"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const FERRITE: &str = env!("CARGO_BIN_EXE_ferrite");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub struct Cluster {
    /// The cluster's name.
    pub name: String,
    /// Its state directory (`FERRITE_STATE_DIR`).
    pub state: tempfile::TempDir,
    /// Its run directory (`FERRITE_RUN_DIR`).
    pub run: tempfile::TempDir,
    destroyed: bool,
    /// Dropped with the cluster: ends its watchdog.
    _watchdog: mpsc::Sender<()>,
}

/// How long a test may keep a cluster before its watchdog tears it down: `default`
/// seconds, far above what the test takes on a cold cache, so only a hang reaches it;
/// `FERRITE_TEST_LIMIT` (seconds) overrides it for every test.
fn test_limit(default: u64) -> Duration {
    let secs = std::env::var("FERRITE_TEST_LIMIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs)
}

/// A test that hangs must fail, not hold the suite until CI's own limit: past `limit` the
/// watchdog prints what the cluster was doing and destroys it (which ends every command
/// run in its machines, so the test fails where it waited); if the test has still not
/// ended two minutes later, the test process exits.
fn watchdog(name: String, state: PathBuf, run: PathBuf, limit: Duration) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if rx.recv_timeout(limit) != Err(mpsc::RecvTimeoutError::Timeout) {
            return;
        }
        let ferrite = |args: &[&str]| {
            Command::new(FERRITE)
                .args(args)
                .args(["--cluster", &name])
                .env("FERRITE_STATE_DIR", &state)
                .env("FERRITE_RUN_DIR", &run)
                .stdin(Stdio::null())
                .output()
        };
        let mut report = format!(
            "watchdog: cluster {name} still up after {} s: the test hangs; its state:\n",
            limit.as_secs()
        );
        if let Ok(o) = ferrite(&["status"]) {
            report.push_str(&String::from_utf8_lossy(&o.stdout));
            report.push_str(&String::from_utf8_lossy(&o.stderr));
        }
        let machines = state.join("clusters").join(&name).join("machines");
        for e in std::fs::read_dir(&machines).into_iter().flatten().flatten() {
            let log = std::fs::read_to_string(e.path().join("console.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            report.push_str(&format!(
                "--- {} console (last {} lines)\n",
                e.file_name().to_string_lossy(),
                tail.len()
            ));
            for l in tail.iter().rev() {
                report.push_str(l);
                report.push('\n');
            }
        }
        eprintln!("{report}");
        let _ = ferrite(&["destroy"]);
        if rx.recv_timeout(Duration::from_secs(120)) == Err(mpsc::RecvTimeoutError::Timeout) {
            eprintln!("watchdog: the test did not end after its cluster {name} was destroyed");
            std::process::exit(124);
        }
    });
    tx
}

impl Cluster {
    /// A cluster whose test may run 15 minutes before its watchdog ends it.
    pub fn new(tag: &str) -> Self {
        Self::with_limit(tag, 900)
    }

    /// A cluster whose test may run `limit` seconds before its watchdog ends it.
    pub fn with_limit(tag: &str, limit: u64) -> Self {
        let out = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0",
            "these tests boot real machines and need root (run scripts/test.sh as root)"
        );
        assert!(
            Path::new(FERRITE)
                .with_file_name("coreos-cloudinit")
                .is_file(),
            "coreos-cloudinit must be built beside ferrite (cargo build --workspace)"
        );
        let name = format!("t{tag}{}", std::process::id() % 100_000);
        let state = tempfile::Builder::new()
            .prefix("ferrite-state")
            .tempdir_in("/var/tmp")
            .unwrap();
        let run = tempfile::Builder::new()
            .prefix("ferrite-run")
            .tempdir_in("/run")
            .unwrap();
        let watchdog = watchdog(
            name.clone(),
            state.path().to_path_buf(),
            run.path().to_path_buf(),
            test_limit(limit),
        );
        Self {
            name,
            state,
            run,
            destroyed: false,
            _watchdog: watchdog,
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(FERRITE);
        c.args(args)
            .env("FERRITE_STATE_DIR", self.state.path())
            .env("FERRITE_RUN_DIR", self.run.path());
        c
    }

    pub fn ferrite(&self, args: &[&str]) -> Output {
        let mut a = vec![args[0], "--cluster", &self.name];
        a.extend_from_slice(&args[1..]);
        self.cmd(&a).stdin(Stdio::null()).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.ferrite(args);
        assert!(
            o.status.success(),
            "ferrite {args:?} failed ({}):\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `ferrite up` of `instances` machines with the repository's user-data `fixture`.
    pub fn up_with(&self, instances: u32, fixture: &str) -> String {
        let ud = repo().join(fixture);
        self.ok(&[
            "up",
            "--instances",
            &instances.to_string(),
            "--user-data",
            ud.to_str().unwrap(),
        ])
    }

    /// `ferrite ssh MACHINE -- SCRIPT` (one command line for core's shell): (exit code,
    /// stdout).
    pub fn sh(&self, machine: &str, script: &str) -> (i32, String) {
        let o = self.ferrite(&["ssh", machine, "--", script]);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// Retries `script` until its output contains `want` (bounded: `tries` × 1 s).
    pub fn sh_until(&self, machine: &str, script: &str, want: &str, tries: u32) -> String {
        let mut last = String::new();
        for _ in 0..tries {
            let (_, out) = self.sh(machine, script);
            if out.contains(want) {
                return out;
            }
            last = out;
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("{machine}: {script:?} never printed {want:?}; last output:\n{last}");
    }

    pub fn machine_dir(&self, m: &str) -> PathBuf {
        self.state
            .path()
            .join("clusters")
            .join(&self.name)
            .join("machines")
            .join(m)
    }

    /// The cluster's update database.
    pub fn updates_db(&self) -> PathBuf {
        self.state
            .path()
            .join("clusters")
            .join(&self.name)
            .join("updates.db")
    }

    pub fn cluster_json(&self) -> serde_json::Value {
        let p = self
            .state
            .path()
            .join("clusters")
            .join(&self.name)
            .join("cluster.json");
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    pub fn destroy_and_check(&mut self) {
        let json = self.cluster_json();
        // A user's `tail -F` of a console log is not the launcher's to stop (`-F`: it keeps
        // running while the file does not exist yet).
        let console = self
            .state
            .path()
            .join("clusters")
            .join(&self.name)
            .join("machines")
            .join(json["machines"][0]["name"].as_str().unwrap_or("core-01"))
            .join("console.log");
        let mut bystander = Command::new("tail")
            .arg("-F")
            .arg(&console)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.ok(&["destroy"]);
        self.destroyed = true;
        let survived = bystander.try_wait().unwrap().is_none();
        let _ = bystander.kill();
        let _ = bystander.wait();
        assert!(
            survived,
            "destroy killed a user's `tail -F {}`",
            console.display()
        );
        // Nothing left: processes, namespaces, mounts, cgroups, files.
        for m in json["machines"].as_array().unwrap() {
            if let Some(pid) = m["pid"].as_u64() {
                let alive = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("nspawn"));
                assert!(!alive, "machine process {pid} survived destroy");
            }
            for cg in m["cgroups"].as_array().unwrap() {
                assert!(
                    !Path::new(cg.as_str().unwrap()).exists(),
                    "cgroup {cg} survived destroy"
                );
            }
        }
        let netns: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            !netns
                .iter()
                .any(|n| n.starts_with(&format!("ferrite-{}-", self.name))),
            "namespaces survived destroy: {netns:?}"
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for dir in [self.state.path(), self.run.path()] {
            assert!(
                !mounts.contains(&dir.display().to_string()),
                "mounts under {} survived destroy",
                dir.display()
            );
        }
        assert!(!self.state.path().join("clusters").join(&self.name).exists());
        let needle = self.state.path().display().to_string();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                assert!(
                    !c.contains(&needle) || c.contains("cargo") || c.contains("machines-"),
                    "process survived destroy: {c}"
                );
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.destroyed {
            let _ = self.ferrite(&["destroy"]);
        }
    }
}

pub fn ip_of(status: &str, machine: &str) -> String {
    status
        .lines()
        .find(|l| l.starts_with(machine))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap()
        .to_string()
}

/// Runs `ferrite` with `args` (no `--cluster` added), which must succeed.
pub fn ferrite_ok(c: &Cluster, args: &[&str]) {
    let o = c.cmd(args).stdin(Stdio::null()).output().unwrap();
    assert!(
        o.status.success(),
        "ferrite {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `ferrite release publish` of a built `version` on `channel` in the cluster.
pub fn publish(c: &Cluster, version: &str, channel: &str) {
    ferrite_ok(
        c,
        &[
            "release",
            "publish",
            version,
            "--channel",
            channel,
            "--cluster",
            &c.name,
        ],
    );
}

/// `ferrite release build` of `version` for `channel` (with `extra` arguments), then
/// [`publish`] of it on that channel in the cluster.
pub fn build_and_publish(c: &Cluster, version: &str, channel: &str, extra: &[&str]) {
    let mut build = vec![
        "release",
        "build",
        "--version",
        version,
        "--channel",
        channel,
    ];
    build.extend_from_slice(extra);
    ferrite_ok(c, &build);
    publish(c, version, channel);
}

/// The cluster's channel and the machine ID of its machine `index` (from 0).
pub fn channel_and_id(c: &Cluster, index: usize) -> (String, String) {
    let json = c.cluster_json();
    let s = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    (
        s(&json["settings"]["channel"]),
        s(&json["machines"][index]["machine_id"]),
    )
}

/// Updates: `update_engine_client -update` run as core on `machine` (the bus policy lets
/// core ask); it must end with the update installed and a reboot needed.
pub fn take_update(c: &Cluster, machine: &str) {
    let (code, out) = c.sh(
        machine,
        "update_engine_client -update 2>/tmp/take-update.log",
    );
    if (code, out.as_str()) != (0, "Update succeeded -- reboot needed.\n") {
        let journal = c
            .sh(
                machine,
                "cat /tmp/take-update.log; journalctl -u update-engine --no-pager -o cat | tail -n 30",
            )
            .1;
        let db = c.updates_db();
        let store = update_server::Store::open(&db).unwrap();
        let service = format!(
            "{:#?}\n{:#?}",
            store.instances().unwrap(),
            ["alpha", "beta", "stable"].map(|g| store.group(g).unwrap())
        );
        let log = std::fs::read_to_string(
            c.state
                .path()
                .join("clusters")
                .join(&c.name)
                .join("update-server.log"),
        )
        .unwrap_or_default();
        panic!("{machine} did not take the update ({code}: {out}); update_engine:\n{journal}\nservice:\n{service}\nupdate-server.log:\n{log}");
    }
}

/// Waits until the cluster's update service records `machine_id` complete on `version`
/// (the first check after the reboot says so); returns its events other than check-ins.
pub fn wait_complete(c: &Cluster, machine_id: &str, version: &str) -> Vec<(u32, u32)> {
    let db = c.updates_db();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let store = update_server::Store::open(&db).unwrap();
        let i = store.instance(machine_id).unwrap();
        if i.as_ref()
            .is_some_and(|i| i.status == "Complete" && i.version == version)
        {
            return store
                .events(machine_id)
                .unwrap()
                .iter()
                .map(|e| (e.kind, e.result))
                .filter(|k| *k != (3, 2))
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the service never saw {machine_id} complete on {version}: {i:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A tiny busybox image (`busybox:local`: the applets tests use, and `extra` files as
/// (path in the image, contents)), imported into `machine`'s Docker: no registry is
/// reachable.
pub fn import_busybox(c: &Cluster, machine: &str, extra: &[(&str, &[u8])]) {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.path().join("bin/busybox")).unwrap();
    for a in ["sh", "echo", "cat", "ping", "nc", "httpd", "sleep", "ip"] {
        std::os::unix::fs::symlink("busybox", dir.path().join("bin").join(a)).unwrap();
    }
    for (path, data) in extra {
        let p = dir.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let tar = Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let mut import = c.cmd(&[
        "ssh",
        "--cluster",
        &c.name,
        machine,
        "--",
        "docker",
        "import",
        "-",
        "busybox:local",
    ]);
    let mut child = import
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "docker import on {machine}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

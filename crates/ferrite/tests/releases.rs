//! `ferrite release build`, `release publish` and `update-server`: a new version's image
//! and payload, signed with the key whose public half the cache's images carry, offered on
//! a channel and served over Omaha; then taken by an nspawn machine of a running cluster and
//! booted with `ferrite reload`. Needs root and the workspace built.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, FERRITE};

/// The update service, stopped by PID when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn check(base: &str, version: &str, track: &str) -> String {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<request protocol=\"3.0\" installsource=\"scheduler\"><app appid=\"{{e96281a6-d1af-4bde-9a0a-97b76e56dc57}}\" version=\"{version}\" track=\"{track}\" machineid=\"0123456789abcdef0123456789abcdef\"><updatecheck></updatecheck></app></request>\n"
    );
    match ureq::post(&format!("{base}/v1/update/")).send_string(&body) {
        Ok(r) => r.into_string().unwrap(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_release_is_built_published_offered_and_taken() {
    let c = Cluster::new("rel");
    let run = |args: &[&str]| {
        let o = c.cmd(args).stdin(Stdio::null()).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    // Nothing to publish yet, and versions are X.Y.Z.
    let (ok, text) = run(&[
        "release",
        "publish",
        "9.8.7",
        "--channel",
        "beta",
        "--cluster",
        &c.name,
    ]);
    assert!(
        !ok && text.contains("ferrite release build --version 9.8.7"),
        "{text}"
    );
    let (ok, text) = run(&["release", "build", "--version", "nine", "--channel", "beta"]);
    assert!(!ok && text.contains("not X.Y.Z"), "{text}");
    let t = Instant::now();
    let (ok, text) = run(&[
        "release",
        "build",
        "--version",
        "9.8.7",
        "--channel",
        "beta",
    ]);
    assert!(ok, "{text}");
    eprintln!("{} ({:.1} s)", text.trim(), t.elapsed().as_secs_f64());
    let dir = c.state.path().join("releases/9.8.7");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("release.json")).unwrap()).unwrap();
    let payload = dir.join("update.gz");
    assert_eq!(
        info["size"].as_u64(),
        Some(std::fs::metadata(&payload).unwrap().len())
    );
    // Signed with the key whose public half the images carry.
    let cache = std::env::var_os("FERRITE_CACHE_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/ferrite"), PathBuf::from);
    let key =
        update_payload::load_or_create_key(&cache.join("keys/update-payload-key.pem")).unwrap();
    use base64::Engine;
    let sha256: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(info["sha256"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let v = update_payload::verify(
        &payload,
        &update_payload::Expected {
            size: info["size"].as_u64().unwrap(),
            sha256,
        },
        &update_payload::PublicKey::Ed25519(key.verifying_key()),
    )
    .unwrap();
    assert_eq!(v.new_size(), 1 << 30, "the whole USR-A partition");
    // Published in a cluster (a cluster directory is all it needs), served over Omaha.
    let (ok, text) = run(&[
        "release",
        "publish",
        "9.8.7",
        "--channel",
        "beta",
        "--cluster",
        "nowhere",
    ]);
    assert!(!ok && text.contains("no cluster \"nowhere\""), "{text}");
    std::fs::create_dir_all(c.state.path().join("clusters").join(&c.name)).unwrap();
    let (ok, text) = run(&[
        "release",
        "publish",
        "9.8.7",
        "--channel",
        "beta",
        "--cluster",
        &c.name,
    ]);
    assert!(ok, "{text}");
    offered_over_omaha(&c, &payload);
    an_nspawn_machine_takes_it(c);
}

/// The release, published in a running cluster of one nspawn machine: its update_engine
/// writes USR-B inside the machine's disk image (handed to it by the launcher) and marks
/// it; a `reboot` in the machine boots it (the launcher's supervisor chooses the slot
/// again), and the health gate marks it good. Then a release whose health gate fails is
/// taken, booted, and rolled back: the machine is on the good release again, the service
/// records the rollback, and the bad release is not installed again.
fn an_nspawn_machine_takes_it(mut c: Cluster) {
    c.ok(&["up"]);
    // This test reboots the machine itself, at the moments it checks: locksmithd (which
    // would reboot at once, the default strategy) is masked, as cloud-config's `off` does.
    let (code, out) = c.sh("core-01", "sudo systemctl mask --now locksmithd 2>&1");
    assert_eq!(code, 0, "{out}");
    let (channel, machine_id) = common::channel_and_id(&c, 0);
    common::publish(&c, "9.8.7", &channel);
    let t = Instant::now();
    common::take_update(&c, "core-01");
    eprintln!("nspawn machine updated: {:.1} s", t.elapsed().as_secs_f64());
    let disk = coreos_disk::Disk::open(&c.machine_dir("core-01").join("disk.img"));
    let b = disk.partition("USR-B").unwrap().prio;
    assert_eq!((b.priority(), b.tries(), b.successful()), (2, 1, false));
    let t = Instant::now();
    reboot(&c, "core-01");
    c.sh_until(
        "core-01",
        "grep VERSION= /usr/share/coreos/release",
        "COREOS_RELEASE_VERSION=9.8.7",
        60,
    );
    // The health gate marks the new slot good once the machine is healthy.
    c.sh_until(
        "core-01",
        "journalctl -u ferrite-boot-health --no-pager -o cat",
        "USR-B is healthy",
        60,
    );
    eprintln!(
        "rebooted into 9.8.7 and marked good: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let b = disk.partition("USR-B").unwrap().prio;
    assert_eq!(
        (b.priority(), b.tries(), b.successful()),
        (2, 0, true),
        "the boot spent B's try and the gate marked it good"
    );
    let status = c.ok(&["status"]);
    assert!(status.contains("USR-B  9.8.7"), "{status}");
    // The first check after the reboot tells the service it is complete.
    let events = common::wait_complete(&c, &machine_id, "9.8.7");
    assert_eq!(
        events,
        [(13, 1), (14, 1), (3, 1)],
        "the events of the update"
    );
    // 9.8.7 was built for beta: the machine now follows beta (its /usr's update.conf).
    a_failing_release_rolls_back(&c, "beta", &machine_id, &disk);
    c.destroy_and_check();
}

/// `reboot` inside the machine (as a user, or locksmithd, would), and waits until the
/// launcher booted it again and it is up.
fn reboot(c: &Cluster, machine: &str) {
    let boots = || {
        let log = std::fs::read(c.machine_dir(machine).join("console.log")).unwrap();
        String::from_utf8_lossy(&log)
            .matches("ferrite: booting ")
            .count()
    };
    let before = boots();
    // The shell may be cut off by the reboot itself.
    let _ = c.sh(machine, "sudo systemctl reboot");
    let deadline = Instant::now() + Duration::from_secs(120);
    while boots() == before
        || !matches!(
            c.sh(machine, "systemctl is-system-running").1.trim(),
            "running" | "degraded"
        )
    {
        assert!(Instant::now() < deadline, "{machine} did not come back");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A release built with `--failing-health-check`: taken into USR-A, booted on trial, its
/// gate fails, the machine reboots into USR-B (9.8.7) by the GPT bits alone, update_engine
/// reports the rollback (event 3/0, error 44), and the release is not installed again.
fn a_failing_release_rolls_back(
    c: &Cluster,
    channel: &str,
    machine_id: &str,
    disk: &coreos_disk::Disk,
) {
    common::build_and_publish(c, "9.9.0", channel, &["--failing-health-check"]);
    common::take_update(c, "core-01");
    let a = disk.partition("USR-A").unwrap().prio;
    assert_eq!((a.priority(), a.tries(), a.successful()), (2, 1, false));
    let t = Instant::now();
    let _ = c.sh("core-01", "sudo systemctl reboot");
    // Booted 9.9.0 on trial, failed its gate, rebooted into 9.8.7.
    let console = c.machine_dir("core-01").join("console.log");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let log = String::from_utf8_lossy(&std::fs::read(&console).unwrap()).into_owned();
        if log.matches("ferrite: booting ").count() >= 3 && log.ends_with("login: ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rollback; console:\n{}",
            &log[log.len().saturating_sub(3000)..]
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    c.sh_until(
        "core-01",
        "grep VERSION= /usr/share/coreos/release",
        "COREOS_RELEASE_VERSION=9.8.7",
        60,
    );
    eprintln!(
        "9.9.0 failed its gate and rolled back to 9.8.7: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let log = String::from_utf8_lossy(&std::fs::read(&console).unwrap()).into_owned();
    let booted: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("ferrite: booting "))
        .collect();
    assert_eq!(booted, ["USR-B", "USR-A", "USR-B"], "{log}");
    let a = disk.partition("USR-A").unwrap().prio;
    assert_eq!(
        (a.tries(), a.successful()),
        (0, false),
        "A's try was spent and it was never marked good"
    );
    let status = c.ok(&["status"]);
    assert!(status.contains("USR-B  9.8.7"), "{status}");
    // The rollback reaches the service (3/0 with error 44) …
    let db = c.updates_db();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let store = update_server::Store::open(&db).unwrap();
        let i = store.instance(machine_id).unwrap().unwrap();
        let events = store.events(machine_id).unwrap();
        if i.rollbacks == 1 {
            assert!(
                events
                    .iter()
                    .any(|e| (e.kind, e.result, e.code) == (3, 0, Some(44))),
                "{events:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no rollback reported: {i:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
    // … and shows on its dashboard …
    let (server, base) = serve_on_loopback(c);
    let page = ureq::get(&format!("{base}/dashboard"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let row = page
        .lines()
        .find(|l| l.contains(machine_id))
        .unwrap_or_else(|| panic!("{machine_id} not on the dashboard:\n{page}"));
    assert!(
        row.starts_with("<tr class=\"bad\">") && row.contains("<td>1</td><td>1</td>"),
        "one failure, one rollback: {row}"
    );
    let history = ureq::get(&format!("{base}/dashboard/instances/{machine_id}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(history.contains("rolled back (error code 44)"), "{history}");
    drop(server);
    // … which pauses the group (safe mode) …
    let store = update_server::Store::open(&db).unwrap();
    assert!(store.group("beta").unwrap().unwrap().paused, "safe mode");
    // … and once resumed, 9.9.0 is offered again but not installed again.
    assert!(store.set_paused("beta", false).unwrap());
    drop(store);
    let _ = c.sh("core-01", "update_engine_client -check_for_update");
    c.sh_until(
        "core-01",
        "journalctl -u update-engine --no-pager -o cat",
        "9.9.0 rolled back here before; not installed",
        60,
    );
    let (_, out) = c.sh("core-01", "update_engine_client -status 2>/dev/null");
    assert!(out.contains("CURRENT_OP=UPDATE_STATUS_IDLE"), "{out}");
}

/// `ferrite update-server` for the cluster's database on a loopback port of the host:
/// the server and its URL.
fn serve_on_loopback(c: &Cluster) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server(
        Command::new(FERRITE)
            .args(["update-server", "--cluster", &c.name, "--listen", &listen])
            .env("FERRITE_STATE_DIR", c.state.path())
            .env("FERRITE_RUN_DIR", c.run.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "the update service did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, format!("http://{listen}"))
}

/// `ferrite update-server` offers the published release and serves its payload.
fn offered_over_omaha(c: &Cluster, payload: &std::path::Path) {
    let (_server, base) = serve_on_loopback(c);
    let answer = check(&base, "1.0.0", "beta");
    assert!(answer.contains("<manifest version=\"9.8.7\">"), "{answer}");
    assert!(
        answer.contains(&format!("codebase=\"{base}/files/9.8.7/\"")),
        "{answer}"
    );
    assert!(check(&base, "1.0.0", "stable").contains("status=\"noupdate\""));
    let mut served = Vec::new();
    ureq::get(&format!("{base}/files/9.8.7/update.gz"))
        .call()
        .unwrap()
        .into_reader()
        .read_to_end(&mut served)
        .unwrap();
    assert_eq!(served, std::fs::read(payload).unwrap());
}

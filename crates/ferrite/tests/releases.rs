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
/// writes USR-B inside the machine's disk image (handed to it by the launcher), marks it,
/// and `ferrite reload` boots it.
fn an_nspawn_machine_takes_it(mut c: Cluster) {
    c.ok(&["up"]);
    let json = c.cluster_json();
    let channel = json["settings"]["channel"].as_str().unwrap().to_string();
    let machine_id = json["machines"][0]["machine_id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = c
        .cmd(&[
            "release",
            "publish",
            "9.8.7",
            "--channel",
            &channel,
            "--cluster",
            &c.name,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = Instant::now();
    common::take_update(&c, "core-01");
    eprintln!("nspawn machine updated: {:.1} s", t.elapsed().as_secs_f64());
    let disk = coreos_disk::Disk::open(&c.machine_dir("core-01").join("disk.img"));
    let b = disk.partition("USR-B").unwrap().prio;
    assert_eq!((b.priority(), b.tries(), b.successful()), (2, 1, false));
    c.ok(&["reload", "core-01"]);
    c.sh_until(
        "core-01",
        "grep VERSION= /usr/share/coreos/release",
        "COREOS_RELEASE_VERSION=9.8.7",
        30,
    );
    assert!(c.ok(&["status"]).contains("USR-B"));
    let b = disk.partition("USR-B").unwrap().prio;
    assert_eq!(b.tries(), 0, "the boot spent B's try");
    // The first check after the reboot tells the service it is complete.
    let events = common::wait_complete(&c, &machine_id, "9.8.7");
    assert_eq!(
        events,
        [(13, 1), (14, 1), (3, 1)],
        "the events of the update"
    );
    c.destroy_and_check();
}

/// `ferrite update-server` offers the published release and serves its payload.
fn offered_over_omaha(c: &Cluster, payload: &std::path::Path) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let _server = Server(
        Command::new(FERRITE)
            .args(["update-server", "--cluster", &c.name, "--listen", &listen])
            .env("FERRITE_STATE_DIR", c.state.path())
            .env("FERRITE_RUN_DIR", c.run.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "the update service did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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

//! `update_engine` and `update_engine_client` on a private system bus (a `dbus-daemon` the
//! test starts), against an update service on loopback: the status, an on-demand check,
//! an update that cannot be installed on this host (its `/usr` is no Ferrite slot) reported
//! as a failure with nothing written, `-watch_for_updates`, `-reset_status`, and a daemon
//! killed mid-download that starts again idle. Needs `dbus-daemon`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{serve, Reply};
use ed25519_dalek::pkcs8::EncodePublicKey;
use omaha::{AppAnswer, Offer, Package, Request, Response, UpdateCheck};

/// A process killed by PID when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private bus with an open policy, listening on a socket in `dir`.
fn bus(dir: &Path) -> (Proc, String) {
    let socket = dir.join("bus");
    let conf = dir.join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
             <busconfig><type>system</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
             <policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/><allow send_destination=\"*\"/><allow receive_sender=\"*\"/></policy></busconfig>\n",
            socket.display()
        ),
    )
    .unwrap();
    let child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--nopidfile"])
        .stdout(Stdio::null())
        .spawn()
        .expect("dbus-daemon (scripts/install-deps.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    (Proc(child), format!("unix:path={}", socket.display()))
}

/// The update service: an offer (or none), the payload at `/files/update.gz`.
struct Service {
    offer: Arc<Mutex<Option<Offer>>>,
    server: common::Server,
}

fn service(payload: Vec<u8>, slow: bool) -> Service {
    let offer: Arc<Mutex<Option<Offer>>> = Arc::default();
    let current = offer.clone();
    let server = serve(Box::new(move |hit| {
        if hit.method == "GET" {
            if slow {
                std::thread::sleep(Duration::from_secs(30));
            }
            return Reply::ok(payload.clone());
        }
        let Ok(req) = Request::parse(&hit.body) else {
            return Reply::status("400 Bad Request", "");
        };
        let app = &req.apps[0];
        let answer = AppAnswer::Ok {
            check: app
                .update_check
                .then(|| match current.lock().unwrap().clone() {
                    Some(o) => UpdateCheck::Update(o),
                    None => UpdateCheck::NoUpdate,
                }),
            poll_interval: None,
            events: app.events.len(),
            ping: app.ping,
        };
        Reply::ok(
            Response {
                server: "test".into(),
                apps: vec![(app.appid.clone(), answer)],
            }
            .to_xml(),
        )
    }));
    Service { offer, server }
}

impl Service {
    /// Every event sent (not the checks): (type, result, code).
    fn events(&self) -> Vec<(u32, u32, Option<u32>)> {
        self.server
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.method == "POST")
            .filter_map(|h| Request::parse(&h.body).ok())
            .filter(|r| !r.apps[0].update_check)
            .flat_map(|r| r.apps[0].events.clone())
            .map(|e| (e.kind.code(), e.result.code(), e.error_code))
            .collect()
    }
}

/// A machine's root for the daemon: release, update.conf pointing at `server`, machine ID,
/// and the payload key.
fn root(dir: &Path, server: &str, key: &update_payload::SigningKey) -> PathBuf {
    let root = dir.join("root");
    let put = |rel: &str, text: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put("usr/share/coreos/release", "COREOS_RELEASE_VERSION=1.0.0\n");
    put(
        "etc/coreos/update.conf",
        &format!("SERVER={server}/v1/update/\nCHECK_INTERVAL=3600\n"),
    );
    put("etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    put(
        "usr/share/update_engine/update-payload-key.pub.pem",
        &key.verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap(),
    );
    root
}

fn daemon(root: &Path, bus: &str) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_update_engine"))
            .args(["-foreground", "-logtostderr", "--root"])
            .arg(root)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
            .spawn()
            .unwrap(),
    )
}

fn client(bus: &str, flag: &str) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_update_engine_client"))
        .arg(flag)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Polls `-status` until it contains `want`.
fn status_until(bus: &str, want: &str, secs: u64) -> String {
    status_until_fn(bus, want, secs, |out| out.contains(want))
}

/// Polls `-status` until `ok` holds for its output.
fn status_until_fn(bus: &str, what: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (code, out, err) = client(bus, "-status");
        if code == 0 && ok(&out) {
            return out;
        }
        assert!(Instant::now() < deadline, "no {what}: {out}{err}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct World {
    _dir: tempfile::TempDir,
    _bus: Proc,
    bus: String,
    root: PathBuf,
    service: Service,
}

fn world(slow: bool) -> World {
    let dir = tempfile::tempdir().unwrap();
    let (bus_proc, bus) = bus(dir.path());
    let key = update_payload::new_signing_key().unwrap();
    let usr = dir.path().join("usr.img");
    std::fs::write(&usr, vec![9u8; 1 << 20]).unwrap();
    let payload = dir.path().join("update.gz");
    let g = update_payload::generate(&usr, &payload, &key).unwrap();
    let service = service(std::fs::read(&payload).unwrap(), slow);
    *service.offer.lock().unwrap() = Some(Offer {
        urls: vec![format!("{}/files/", service.server.base)],
        version: "1.1.0".into(),
        package: Package {
            name: "update.gz".into(),
            size: g.size,
            sha1_base64: String::new(),
        },
        sha256_base64: base64::engine::general_purpose::STANDARD.encode(g.sha256),
        disable_payload_backoff: true,
    });
    let root = root(dir.path(), &service.server.base, &key);
    World {
        _dir: dir,
        _bus: bus_proc,
        bus,
        root,
        service,
    }
}

#[test]
fn the_client_drives_the_daemon_over_the_bus() {
    let w = world(false);
    let offer = w.service.offer.lock().unwrap().take();
    let _d = daemon(&w.root, &w.bus);
    let out = status_until(&w.bus, "CURRENT_OP=UPDATE_STATUS_IDLE", 20);
    assert!(
        out.starts_with("LAST_CHECKED_TIME=0\nPROGRESS=0.000000\n"),
        "{out}"
    );
    assert!(out.ends_with("NEW_VERSION=0.0.0\nNEW_SIZE=0\n"), "{out}");
    // A watcher sees the check happen.
    let mut watch = Proc(
        Command::new(env!("CARGO_BIN_EXE_update_engine_client"))
            .arg("--watch_for_updates")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &w.bus)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    // No update: the check is recorded, nothing else happens.
    let (code, _, err) = client(&w.bus, "-check_for_update");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("Initiating update check and install."),
        "{err}"
    );
    // The check is recorded, and the daemon is idle again.
    status_until_fn(&w.bus, "a recorded check", 20, |out| {
        !out.starts_with("LAST_CHECKED_TIME=0\n") && out.contains("UPDATE_STATUS_IDLE")
    });
    let mut lines = BufReader::new(watch.0.stdout.take().unwrap()).lines();
    let seen: Vec<String> = (&mut lines).take(5).map(Result::unwrap).collect();
    assert_eq!(
        seen[2], "CURRENT_OP=UPDATE_STATUS_CHECKING_FOR_UPDATE",
        "{seen:?}"
    );
    drop(watch);
    // An update this host cannot take (its /usr is no Ferrite slot): refused before any
    // download, reported, idle again.
    *w.service.offer.lock().unwrap() = offer;
    let (code, out, err) = client(&w.bus, "-update");
    assert_eq!((code, out.as_str()), (1, "Update failed.\n"), "{err}");
    let flag = omaha::codes::FLAG_TEST_OMAHA_URL;
    assert_eq!(w.service.events(), [(3, 0, Some(7 | flag))]);
    assert!(
        !w.service
            .server
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.method == "GET"),
        "nothing downloaded"
    );
    assert!(!w
        .root
        .join("run/update_engine_autoupdate_completed")
        .exists());
    // Idle: -reset_status has nothing to undo and says it is fine.
    let (code, _, err) = client(&w.bus, "-reset_status");
    assert_eq!(code, 0, "{err}");
    // A flag it does not know.
    let (code, _, err) = client(&w.bus, "-frobnicate");
    assert_ne!(code, 0);
    assert!(err.contains("frobnicate"), "{err}");
}

/// Slots in a disk image, as an nspawn machine's launcher names them; the image.
fn image_slots(w: &World) -> PathBuf {
    let disk = w.root.join("disk.img");
    coreos_disk::Disk::create(&disk, &coreos_disk::Layout::coreos(8192, 8192)).unwrap();
    std::fs::create_dir_all(w.root.join("run/ferrite")).unwrap();
    std::fs::write(
        w.root.join("run/ferrite/slots"),
        format!("DISK={}\nACTIVE=USR-A\n", disk.display()),
    )
    .unwrap();
    disk
}

#[test]
fn a_daemon_killed_mid_download_starts_again_idle() {
    let w = world(true);
    image_slots(&w);
    let d = daemon(&w.root, &w.bus);
    status_until(&w.bus, "UPDATE_STATUS_IDLE", 20);
    client(&w.bus, "-check_for_update");
    status_until(&w.bus, "UPDATE_STATUS_DOWNLOADING", 20);
    let pid = d.0.id();
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    drop(d);
    let _d = daemon(&w.root, &w.bus);
    let out = status_until(&w.bus, "UPDATE_STATUS_IDLE", 20);
    assert!(out.contains("NEW_SIZE=0"), "{out}");
    assert!(!w
        .root
        .join("run/update_engine_autoupdate_completed")
        .exists());
}

#[test]
fn a_pending_reboot_survives_the_daemon_killed_and_nothing_is_downloaded_again() {
    let w = world(false);
    let disk = image_slots(&w);
    let d = daemon(&w.root, &w.bus);
    status_until(&w.bus, "UPDATE_STATUS_IDLE", 20);
    let (code, out, err) = client(&w.bus, "-update");
    assert_eq!(
        (code, out.as_str()),
        (0, "Update succeeded -- reboot needed.\n"),
        "{err}"
    );
    let gets = || {
        w.service
            .server
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.method == "GET")
            .count()
    };
    assert_eq!(gets(), 1);
    Command::new("kill")
        .args(["-KILL", &d.0.id().to_string()])
        .status()
        .unwrap();
    drop(d);
    let _d = daemon(&w.root, &w.bus);
    let out = status_until(&w.bus, "UPDATE_STATUS_UPDATED_NEED_REBOOT", 20);
    assert!(
        out.contains("CURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT"),
        "{out}"
    );
    // Asked again: the update is there already.
    let (code, out, err) = client(&w.bus, "-update");
    assert_eq!(
        (code, out.as_str()),
        (0, "Update succeeded -- reboot needed.\n"),
        "{err}"
    );
    assert_eq!(gets(), 1, "downloaded once");
    let b = coreos_disk::Disk::open(&disk)
        .partition("USR-B")
        .unwrap()
        .prio;
    assert_eq!((b.priority(), b.tries(), b.successful()), (2, 1, false));
}

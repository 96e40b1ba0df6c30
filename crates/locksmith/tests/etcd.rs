//! The semaphore, `locksmithctl` and FleetLock against a real etcd on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::process::Command;
use std::time::Duration;

use fleet_store::testing::LocalEtcd;
use locksmith::etcd::{key, Error, LockClient};
use locksmith::semaphore::Refused;

const T: Duration = Duration::from_secs(5);

fn etcd() -> (tempfile::TempDir, LocalEtcd) {
    let dir = tempfile::tempdir().unwrap();
    let e = LocalEtcd::start(dir.path(), "http", &[]).unwrap();
    (dir, e)
}

async fn client(e: &LocalEtcd, group: &str) -> LockClient {
    for _ in 0..100 {
        if let Ok(c) = LockClient::connect(std::slice::from_ref(&e.endpoint), group, T).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd at {} never answered", e.endpoint);
}

fn ctl(e: &LocalEtcd, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_locksmithctl"))
        .arg(format!("-endpoint={}", e.endpoint))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_machines_racing_for_one_slot_get_it_one_at_a_time() {
    let (_d, e) = etcd();
    let mut c = client(&e, "").await;
    let (sem, _) = c.get().await.unwrap();
    assert_eq!(sem.to_json(), r#"{"semaphore":1,"max":1,"holders":null}"#);
    // Twenty clients at once: exactly one holds it.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let endpoint = e.endpoint.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = LockClient::connect(&[endpoint], "", T).await.unwrap();
            c.lock(&format!("machine-{i:02}")).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(Error::Refused(Refused::Full(0))) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(won, 1);
    let (sem, _) = c.get().await.unwrap();
    assert_eq!((sem.semaphore, sem.holders().len()), (0, 1));
    // Its history never had two holders with one slot.
    let history = c.history().await.unwrap();
    assert!(history.len() >= 2, "{history:?}");
    assert!(history
        .iter()
        .all(|(_, s)| s.holders().len() as i64 <= s.max));
    let holder = sem.holders()[0].clone();
    c.unlock(&holder).await.unwrap();
    assert!(matches!(
        c.unlock(&holder).await,
        Err(Error::Refused(Refused::HolderNotExist))
    ));
}

#[tokio::test]
async fn locksmithctl_speaks_as_locksmith_did() {
    let (_d, e) = etcd();
    drop(client(&e, "").await);
    let status = |e| ctl(e, &["status"]);
    assert_eq!(
        status(&e),
        (0, "Available: 1\nMax: 1\n".into(), String::new())
    );
    assert_eq!(ctl(&e, &["lock", "abc"]).0, 0);
    assert_eq!(status(&e).1, "Available: 0\nMax: 1\n\nMACHINE ID\nabc\n");
    let (code, _, err) = ctl(&e, &["lock", "def"]);
    assert_eq!(
        (code, err.as_str()),
        (1, "Error locking: semaphore is at 0\n")
    );
    assert_eq!(
        ctl(&e, &["set-max", "2"]),
        (0, "Old-Max: 1\nMax: 2\n".into(), String::new())
    );
    assert_eq!(ctl(&e, &["lock", "def"]).0, 0);
    assert_eq!(
        status(&e).1,
        "Available: 0\nMax: 2\n\nMACHINE ID\nabc\ndef\n"
    );
    let (code, _, err) = ctl(&e, &["unlock", "xyz"]);
    assert_eq!(
        (code, err.as_str()),
        (1, "Error unlocking: holder does not exist\n")
    );
    assert_eq!(ctl(&e, &["unlock", "abc"]).0, 0);
    let (code, _, err) = ctl(&e, &["set-max", "two"]);
    assert_eq!((code, err.as_str()), (1, "Invalid maximum value: two\n"));
    let (code, _, err) = ctl(&e, &["frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown subcommand: \"frobnicate\""), "{err}");
    // Groups have their own semaphore.
    assert_eq!(ctl(&e, &["-group=lb", "lock", "abc"]).0, 0);
    assert_eq!(
        ctl(&e, &["--group", "lb", "status"]).1,
        "Available: 0\nMax: 1\n\nMACHINE ID\nabc\n"
    );
    // Nothing answers: a clear error.
    let o = Command::new(env!("CARGO_BIN_EXE_locksmithctl"))
        .args(["-endpoint=http://127.0.0.1:1", "status"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("Error initializing etcd client: no etcd endpoint answered"));
}

#[tokio::test]
async fn a_value_that_is_not_a_semaphore_is_named() {
    let (_d, e) = etcd();
    drop(client(&e, "").await);
    let mut raw = etcd_client::Client::connect([e.endpoint.as_str()], None)
        .await
        .unwrap();
    raw.put(key(""), "{not json", None).await.unwrap();
    let mut c = client(&e, "").await;
    let err = c.lock("abc").await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("coreos.com/updateengine/rebootlock/semaphore: not a reboot semaphore"),
        "{err}"
    );
    let (code, _, stderr) = ctl(&e, &["status"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not a reboot semaphore"), "{stderr}");
}

#[tokio::test]
async fn fleetlock_shares_the_semaphore_with_locksmith() {
    let (_d, e) = etcd();
    let mut c = client(&e, "").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = locksmith::fleetlock::router(locksmith::fleetlock::Service {
        endpoints: vec![e.endpoint.clone()],
        timeout: T,
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let post = |path: &'static str, body: String, header: bool| async move {
        tokio::task::spawn_blocking(move || {
            let mut req = ureq::post(&format!("http://{addr}{path}"));
            if header {
                req = req.set("fleet-lock-protocol", "true");
            }
            match req.send_string(&body) {
                Ok(r) => (r.status(), r.into_string().unwrap()),
                Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
                Err(e) => panic!("{e}"),
            }
        })
        .await
        .unwrap()
    };
    let params =
        |id: &str, group: &str| format!(r#"{{"client_params":{{"id":"{id}","group":"{group}"}}}}"#);
    assert_eq!(
        post("/v1/pre-reboot", params("node-a", "default"), true)
            .await
            .0,
        200
    );
    assert_eq!(
        post("/v1/pre-reboot", params("node-a", "default"), true)
            .await
            .0,
        200,
        "a holder asking again"
    );
    // locksmith sees FleetLock's holder, and FleetLock locksmith's.
    let (sem, _) = c.get().await.unwrap();
    assert_eq!(sem.holders(), ["node-a"]);
    let (code, body) = post("/v1/pre-reboot", params("node-b", "default"), true).await;
    assert_eq!(code, 409);
    assert!(body.contains("failed_lock_semaphore_full"), "{body}");
    assert_eq!(
        post("/v1/steady-state", params("node-a", "default"), true)
            .await
            .0,
        200
    );
    assert_eq!(
        post("/v1/steady-state", params("node-a", "default"), true)
            .await
            .0,
        200,
        "not held: fine"
    );
    c.lock("locksmith-machine").await.unwrap();
    assert_eq!(
        post("/v1/pre-reboot", params("node-b", "default"), true)
            .await
            .0,
        409
    );
    // Bad requests.
    let (code, body) = post("/v1/pre-reboot", params("node-b", "default"), false).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = post("/v1/pre-reboot", params("", "default"), true).await;
    assert!(
        code == 400 && body.contains("invalid_client_identity"),
        "{body}"
    );
    let (code, body) = post("/v1/pre-reboot", params("x", "no/slash"), true).await;
    assert!(
        code == 400 && body.contains("invalid_client_group"),
        "{body}"
    );
    let (code, body) = post("/v1/pre-reboot", "{\"client_params\":".into(), true).await;
    assert!(
        code == 400 && body.contains("invalid_client_parameters"),
        "{body}"
    );
    // Other groups are locksmith's groups.
    assert_eq!(
        post("/v1/pre-reboot", params("node-b", "workers"), true)
            .await
            .0,
        200
    );
    let mut w = client(&e, "workers").await;
    assert_eq!(w.get().await.unwrap().0.holders(), ["node-b"]);
}

#[tokio::test]
async fn a_waiter_wakes_when_a_slot_is_given_back_not_before() {
    let (_d, e) = etcd();
    let mut c = client(&e, "").await;
    c.lock("a").await.unwrap();
    // Nothing changes: the wait runs out (the watch's own creation is not a change).
    let t = std::time::Instant::now();
    assert!(!c.wait_change(Duration::from_millis(800)).await);
    assert!(t.elapsed() >= Duration::from_millis(700));
    let endpoint = e.endpoint.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut other = LockClient::connect(&[endpoint], "", T).await.unwrap();
        other.unlock("a").await.unwrap();
    });
    let t = std::time::Instant::now();
    assert!(c.wait_change(Duration::from_secs(20)).await);
    assert!(t.elapsed() < Duration::from_secs(10));
    c.lock("b").await.unwrap();
}

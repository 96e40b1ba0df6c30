//! A store that learns the cluster's members keeps working when the member it was given
//! stops (fleetd is configured with its machine's own member only); one that does not,
//! stops working; and another member stopping costs the store nothing (it does not spread
//! requests over members that may be down). A real five-member etcd on loopback ports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::{Duration, Instant};

use fleet_store::testing::LocalCluster;
use fleet_store::{EtcdStore, Event, KvStore};

/// The tests here start many etcd members on ports picked by binding and releasing them;
/// one at a time, two clusters cannot be handed the same port.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn store_on(endpoint: &str) -> EtcdStore {
    let start = Instant::now();
    loop {
        if let Ok(s) = EtcdStore::connect(&[endpoint.to_string()], Duration::from_secs(1)).await {
            if s.get("/probe").await.is_ok() {
                return s;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "etcd never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Retries `op` for at most 15 s; whether it ever succeeded.
async fn eventually<F, Fut, T>(mut op: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, fleet_store::StoreError>>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if op().await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_knows_the_members_survives_its_member_stopping() {
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(tmp.path(), 5).unwrap();
    let first = cluster.endpoint(0).unwrap();
    let aware = store_on(&first).await;
    let blind = store_on(&first).await;
    // Members publish their client URLs once they serve: ask until all four are known.
    let mut added = Vec::new();
    let start = Instant::now();
    while added.len() < 4 && start.elapsed() < Duration::from_secs(30) {
        added.extend(aware.add_members().await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(added.len(), 4, "{added:?}");
    assert_eq!(aware.endpoints().len(), 5);
    assert!(
        aware.add_members().await.unwrap().is_empty(),
        "no duplicates"
    );

    // A member the store does not use stops: not one request fails. (Not the raft leader:
    // losing it stalls every member's writes until a new one is elected, as etcd does.)
    let mut probe = etcd_client::Client::connect([first.as_str()], None)
        .await
        .unwrap();
    let status = probe.status().await.unwrap();
    let leader = status.leader();
    let mut idle = None;
    for i in 1..5 {
        let ep = cluster.endpoint(i).unwrap();
        let mut c = etcd_client::Client::connect([ep.as_str()], None)
            .await
            .unwrap();
        let st = c.status().await.unwrap();
        if st.header().map(|h| h.member_id()) != Some(leader) {
            idle = Some(i);
            break;
        }
    }
    cluster.stop(idle.expect("a member that is not the leader"));
    for i in 0..50 {
        aware
            .put("/k", format!("{i}").into_bytes(), None)
            .await
            .unwrap();
        aware.get("/k").await.unwrap();
    }

    aware.put("/k", b"1".to_vec(), None).await.unwrap();
    let lease = aware.grant_lease(5).await.unwrap();
    let (_, rev) = aware.get_prefix("/w/").await.unwrap();

    cluster.stop(0);
    // Requests and renewals go on through the other members.
    assert!(
        eventually(|| aware.get("/k")).await,
        "get after the member stopped"
    );
    assert!(
        eventually(|| aware.keep_alive(lease)).await,
        "lease renewal after the member stopped"
    );
    assert!(eventually(|| aware.put("/k", b"2".to_vec(), None)).await);
    // A watch set up again after its member went away sees new changes.
    let start = Instant::now();
    let mut watch = loop {
        if let Ok(w) = aware.watch_prefix("/w/", rev).await {
            break w;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no watch");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(eventually(|| aware.put("/w/x", b"x".to_vec(), None)).await);
    let ev = tokio::time::timeout(Duration::from_secs(10), watch.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ev, Event::Put(kv) if kv.key == "/w/x"));

    // The store given one member and nothing more has nowhere else to go.
    assert!(blind.get("/k").await.is_err());
}

/// Sends `signal` to `pid` (a member this test started).
fn signal(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_member_that_goes_silent_ends() {
    let _serial = SERIAL.lock().await;
    // A member whose machine is cut off neither answers nor closes its connections: the
    // store's pings find it, the watch ends, and a new one on another member sees changes.
    let tmp = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(tmp.path(), 3).unwrap();
    let first = cluster.endpoint(0).unwrap();
    let store = store_on(&first).await;
    store.add_members().await.unwrap();
    let (_, rev) = store.get_prefix("/w/").await.unwrap();
    let mut watch = store.watch_prefix("/w/", rev).await.unwrap();
    let pid = cluster.pid(0).unwrap();
    signal(pid, "STOP");
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while watch.recv().await.is_some() {}
    })
    .await;
    let took = start.elapsed();
    signal(pid, "CONT");
    assert!(ended.is_ok(), "the watch on the silent member never ended");
    eprintln!(
        "watch on a silent member ended after {:.1} s",
        took.as_secs_f64()
    );
}

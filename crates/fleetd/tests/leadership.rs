//! Engine leadership against a real etcd: one leader at every moment, also when a leader's
//! session fails inside its lease's TTL (a renewal that errors, the session starting again
//! ~100 ms later while the leader key still names this machine under the old lease).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_store::testing::LocalEtcd;
use fleet_store::{EtcdStore, EtcdTls, Event, KeyValue, KvStore, Registry, StoreError};
use fleetd::engine::{run_observed_engine, EngineConfig};
use tokio::sync::{mpsc, watch};

/// A store whose next `fail_renewals` lease renewals fail, as a keep-alive timing out does,
/// and that can be cut off for a while (`outage`): every request fails, every watch ends.
#[derive(Clone)]
struct Faulty {
    inner: EtcdStore,
    fail_renewals: Arc<AtomicU32>,
    down: Arc<AtomicBool>,
    /// Bumped at each outage: open watches end.
    cuts: watch::Sender<u32>,
}

type R<T> = Result<T, StoreError>;

impl Faulty {
    fn check(&self, op: &'static str) -> R<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::TimedOut {
                op,
                key: String::new(),
            });
        }
        Ok(())
    }

    async fn outage(&self, length: Duration) {
        self.down.store(true, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
        tokio::time::sleep(length).await;
        self.down.store(false, Ordering::SeqCst);
    }
}

impl KvStore for Faulty {
    async fn get(&self, key: &str) -> R<Option<KeyValue>> {
        self.check("get")?;
        self.inner.get(key).await
    }
    async fn get_prefix(&self, prefix: &str) -> R<(Vec<KeyValue>, i64)> {
        self.check("get")?;
        self.inner.get_prefix(prefix).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> R<()> {
        self.inner.put(key, value, lease).await
    }
    async fn put_many(&self, kvs: Vec<(String, Vec<u8>)>, lease: Option<i64>) -> R<()> {
        self.inner.put_many(kvs, lease).await
    }
    async fn create(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> R<bool> {
        self.inner.create(key, value, lease).await
    }
    async fn create_many(&self, kvs: Vec<(String, Vec<u8>)>) -> R<Vec<bool>> {
        self.inner.create_many(kvs).await
    }
    async fn create_with(
        &self,
        key: &str,
        value: Vec<u8>,
        also: Vec<(String, Vec<u8>)>,
    ) -> R<bool> {
        self.inner.create_with(key, value, also).await
    }
    async fn put_many_if_exists(&self, guard: &str, kvs: Vec<(String, Vec<u8>)>) -> R<bool> {
        self.inner.put_many_if_exists(guard, kvs).await
    }
    async fn delete_if_revision(&self, key: &str, mod_revision: i64) -> R<bool> {
        self.inner.delete_if_revision(key, mod_revision).await
    }
    async fn delete(&self, key: &str) -> R<()> {
        self.inner.delete(key).await
    }
    async fn delete_if_value(&self, key: &str, expected: &[u8]) -> R<bool> {
        self.inner.delete_if_value(key, expected).await
    }
    async fn delete_prefix(&self, prefix: &str) -> R<()> {
        self.inner.delete_prefix(prefix).await
    }
    async fn grant_lease(&self, ttl: i64) -> R<i64> {
        self.check("lease grant")?;
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: i64) -> R<bool> {
        self.check("lease keep-alive")?;
        let failing = self
            .fail_renewals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(StoreError::TimedOut {
                op: "lease keep-alive",
                key: lease.to_string(),
            });
        }
        self.inner.keep_alive(lease).await
    }
    async fn revoke(&self, lease: i64) -> R<()> {
        self.check("lease revoke")?;
        self.inner.revoke(lease).await
    }
    async fn watch_prefix(&self, prefix: &str, revision: i64) -> R<mpsc::Receiver<Event>> {
        self.check("watch")?;
        let mut inner = self.inner.watch_prefix(prefix, revision).await?;
        let mut cuts = self.cuts.subscribe();
        cuts.borrow_and_update();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = inner.recv() => {
                        let Some(ev) = ev else { return };
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                    _ = cuts.changed() => return,
                }
            }
        });
        Ok(rx)
    }
    fn requests(&self) -> u64 {
        self.inner.requests()
    }
}

struct Engine {
    leading: watch::Receiver<bool>,
    store: Faulty,
}

fn start(store: &EtcdStore, id: &str, stop: &watch::Receiver<bool>) -> Engine {
    let faulty = Faulty {
        inner: store.clone(),
        fail_renewals: Arc::new(AtomicU32::new(0)),
        down: Arc::new(AtomicBool::new(false)),
        cuts: watch::channel(0).0,
    };
    let reg = Arc::new(Registry::new(faulty.clone(), "/_coreos.com/fleet/"));
    let (tx, leading) = watch::channel(false);
    let cfg = EngineConfig {
        machine_id: id.into(),
        lease_ttl: 2,
        resync: Duration::from_secs(30),
    };
    tokio::spawn(run_observed_engine(reg, cfg, stop.clone(), Some(tx)));
    Engine {
        leading,
        store: faulty,
    }
}

/// Watches both engines for `limit`: panics if both lead at once; gives how many times
/// leadership changed hands and who leads at the end.
async fn one_leader_throughout(
    a: &mut Engine,
    b: &mut Engine,
    limit: Duration,
) -> (u32, [bool; 2]) {
    let end = tokio::time::Instant::now() + limit;
    let mut changes = 0;
    loop {
        let now = [
            *a.leading.borrow_and_update(),
            *b.leading.borrow_and_update(),
        ];
        assert!(!(now[0] && now[1]), "two engines lead at once");
        tokio::select! {
            _ = a.leading.changed() => changes += 1,
            _ = b.leading.changed() => changes += 1,
            _ = tokio::time::sleep_until(end) => return (changes, now),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_session_fails_never_leads_beside_another() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = LocalEtcd::start(tmp.path(), "http", &[]).unwrap();
    let store = etcd
        .store(Duration::from_secs(2), &EtcdTls::default(), 100)
        .await
        .expect("etcd answers");
    let (stop_tx, stop) = watch::channel(false);
    let mut a = start(&store, "a", &stop);
    // a leads first.
    tokio::time::timeout(Duration::from_secs(5), a.leading.wait_for(|l| *l))
        .await
        .expect("a leads")
        .unwrap();
    let mut b = start(&store, "b", &stop);
    let (_, now) = one_leader_throughout(&mut a, &mut b, Duration::from_millis(500)).await;
    assert_eq!(now, [true, false]);

    // Three times: the leader's next renewal fails; its session starts again within the
    // TTL. Through each, and until the old lease has surely expired, never two leaders.
    for round in 0..3 {
        let leader = if *a.leading.borrow() { &a } else { &b };
        leader.store.fail_renewals.store(1, Ordering::SeqCst);
        let (changes, now) = one_leader_throughout(&mut a, &mut b, Duration::from_secs(5)).await;
        assert!(
            changes >= 1,
            "round {round}: the failed renewal ended leadership"
        );
        assert!(now[0] || now[1], "round {round}: somebody leads again");
    }

    // Three times: the leader is cut off from etcd for 400 ms — its watches end and its
    // session fails and starts again while its old lease still holds the key.
    for round in 0..3 {
        let leader = if *a.leading.borrow() { &a } else { &b };
        let cut = leader.store.clone();
        tokio::spawn(async move { cut.outage(Duration::from_millis(400)).await });
        let (changes, now) = one_leader_throughout(&mut a, &mut b, Duration::from_secs(6)).await;
        assert!(changes >= 1, "round {round}: the outage ended leadership");
        assert!(now[0] || now[1], "round {round}: somebody leads again");
    }

    // Engines stopping gracefully revoke their lease: the key goes at once.
    stop_tx.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reg = Registry::new(store.clone(), "/_coreos.com/fleet/");
    assert_eq!(
        reg.leader().await.unwrap(),
        None,
        "the leader key went with its lease"
    );
}

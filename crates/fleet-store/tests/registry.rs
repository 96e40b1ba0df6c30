//! The registry on both stores: in memory, and a real etcd started on loopback ports.
#![allow(
    clippy::too_many_lines,
    reason = "a scenario reads top to bottom, as a user would run it"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::Duration;

use fleet_model::{machine::parse_metadata, JobState, Machine};
use fleet_store::testing::LocalEtcd;
use fleet_store::{EtcdTls, Event, KvStore, MemoryStore, Registry, UnitState};

const HELLO: &str = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/bash -c \"while true; do echo \\\"Hello, world\\\"; sleep 1; done\"\n";

fn machine(id: &str) -> Machine {
    Machine {
        id: id.into(),
        public_ip: "172.20.0.101".into(),
        metadata: parse_metadata("role=web"),
        version: "0.1.0".into(),
    }
}

async fn registry_flows<S: KvStore>(store: S) {
    let reg = Registry::new(store.clone(), "/_coreos.com/fleet/");

    // Units: content-addressed, create-only.
    let hash = reg
        .create_unit("hello.service", HELLO, JobState::Inactive)
        .await
        .unwrap();
    assert_eq!(hash.to_string(), "e55c0aeb44ba0b68004ceb8a200e685194448b45");
    assert!(matches!(
        reg.create_unit("hello.service", HELLO, JobState::Launched)
            .await,
        Err(fleet_store::RegistryError::JobExists(_))
    ));
    // Replacing content keeps the unit and its desired state; only existing units.
    let other = reg
        .replace_unit("hello.service", "[Service]\nExecStart=/bin/true\n")
        .await
        .unwrap();
    assert_ne!(other, hash);
    assert_eq!(reg.job("hello.service").await.unwrap().unwrap().hash, other);
    assert!(matches!(
        reg.replace_unit("nope.service", HELLO).await,
        Err(fleet_store::RegistryError::NoSuchUnit(_))
    ));
    assert_eq!(
        reg.replace_unit("hello.service", HELLO).await.unwrap(),
        hash
    );
    reg.set_target_state("hello.service", JobState::Launched)
        .await
        .unwrap();
    assert!(matches!(
        reg.set_target_state("nope.service", JobState::Launched)
            .await,
        Err(fleet_store::RegistryError::NoSuchUnit(_))
    ));
    let raw = store
        .get("/_coreos.com/fleet/job/hello.service/object")
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&raw.value).unwrap();
    assert_eq!(v["Name"], "hello.service");
    assert_eq!(
        v["UnitHash"].as_array().unwrap().len(),
        20,
        "UnitHash is an array of 20 numbers, as in fleet"
    );

    // Machines live on leases.
    let lease = store.grant_lease(2).await.unwrap();
    assert!(reg.register_machine(&machine("m1"), lease).await.unwrap());
    assert!(
        !reg.register_machine(&machine("m1"), lease).await.unwrap(),
        "a duplicate ID does not register"
    );
    let ms = reg.machines().await.unwrap();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].metadata.get("role").map(String::as_str), Some("web"));
    // Dynamic metadata (fleet 1.0's PATCH) lies over the configured metadata; "" hides a
    // key; keys of unregistered machines wait for them.
    let op = |machine: &str, key: &str, value: Option<&str>| fleet_model::api::MetadataOp {
        machine: machine.into(),
        key: key.into(),
        value: value.map(Into::into),
    };
    reg.set_machine_metadata(&[
        op("m1", "role", None),
        op("m1", "disk", Some("ssd")),
        op("m9", "x", Some("y")),
    ])
    .await
    .unwrap();
    let ms = reg.machines().await.unwrap();
    assert_eq!(ms.len(), 1);
    assert_eq!(
        ms[0].metadata,
        [("disk".to_string(), "ssd".to_string())].into()
    );
    reg.set_machine_metadata(&[op("m1", "role", Some("web"))])
        .await
        .unwrap();
    let ms = reg.machines().await.unwrap();
    assert_eq!(ms[0].metadata.get("role").map(String::as_str), Some("web"));

    // Scheduling: create-only target, compare-and-delete unschedule.
    let (_, rev) = reg.jobs().await.unwrap();
    let mut watch = reg.watch_jobs(rev).await.unwrap();
    assert!(reg.schedule("hello.service", "m1").await.unwrap());
    assert!(!reg.schedule("hello.service", "m2").await.unwrap());
    let ev = tokio::time::timeout(Duration::from_secs(5), watch.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.key(), "/_coreos.com/fleet/job/hello.service/target");
    reg.set_job_state("hello.service", "m1", lease)
        .await
        .unwrap();
    let (jobs, _) = reg.jobs().await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].target.as_deref(), Some("m1"));
    assert_eq!(jobs[0].job_state.as_deref(), Some("m1"));
    assert_eq!(jobs[0].target_state, JobState::Launched);
    assert!(jobs[0]
        .unit
        .as_deref()
        .unwrap()
        .starts_with("[Unit]\nDescription=Hello World\n"));
    assert!(!jobs[0].global);
    // Only the machine that set the job-state clears it (a transaction).
    assert!(!reg
        .clear_own_job_state("hello.service", "m2")
        .await
        .unwrap());
    assert_eq!(
        reg.jobs().await.unwrap().0[0].job_state.as_deref(),
        Some("m1")
    );
    assert!(reg
        .clear_own_job_state("hello.service", "m1")
        .await
        .unwrap());
    assert_eq!(reg.jobs().await.unwrap().0[0].job_state, None);
    reg.set_job_state("hello.service", "m1", lease)
        .await
        .unwrap();
    assert!(!reg.unschedule("hello.service", "m2").await.unwrap());
    assert!(reg.unschedule("hello.service", "m1").await.unwrap());

    // Batched placement: all at once when none is placed; one at a time when one is.
    let batch: Vec<(String, String)> = (0..150)
        .map(|i| (format!("batch{i}.service"), format!("m{}", i % 3)))
        .collect();
    let placed = reg.schedule_many(&batch[..120]).await.unwrap();
    assert_eq!(placed, vec![true; 120]);
    let placed = reg.schedule_many(&batch[110..]).await.unwrap();
    let mut want = vec![false; 10];
    want.extend(vec![true; 30]);
    assert_eq!(placed, want);
    for (name, machine) in &batch {
        assert!(reg.unschedule(name, machine).await.unwrap(), "{name}");
    }

    // Unit states.
    let st = UnitState {
        unit: "hello.service".into(),
        machine_id: "m1".into(),
        load_state: "loaded".into(),
        active_state: "active".into(),
        sub_state: "running".into(),
        hash: hash.to_string(),
    };
    reg.publish_state(&st, &machine("m1"), lease).await.unwrap();
    assert_eq!(reg.states().await.unwrap(), vec![st]);

    // Leadership.
    let lease2 = store.grant_lease(2).await.unwrap();
    assert!(reg.try_lead("m1", lease).await.unwrap());
    assert!(!reg.try_lead("m2", lease2).await.unwrap());
    assert_eq!(reg.leader().await.unwrap().as_deref(), Some("m1"));
    // The key names m1, but under another lease: that is not m1's leadership (an engine
    // that restarted its session must not lead on a lease nobody renews).
    let lease3 = store.grant_lease(2).await.unwrap();
    assert!(!reg.try_lead("m1", lease3).await.unwrap());
    assert!(reg.try_lead("m1", lease).await.unwrap(), "asking again");
    // Giving up another lease leaves m1's leadership alone.
    store.revoke(lease3).await.unwrap();
    assert_eq!(reg.leader().await.unwrap().as_deref(), Some("m1"));

    // The lease lapses: machine, job-state, state and leadership go with it.
    let mut machines_watch = reg.watch_machines(0).await.unwrap();
    let mut gone = false;
    for _ in 0..80 {
        assert!(store.keep_alive(lease2).await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
        if reg.machines().await.unwrap().is_empty() {
            gone = true;
            break;
        }
    }
    assert!(gone, "machine record did not expire with its lease");
    assert!(!store.keep_alive(lease).await.unwrap());
    let mut saw_delete = false;
    while let Ok(Some(ev)) =
        tokio::time::timeout(Duration::from_secs(2), machines_watch.recv()).await
    {
        if matches!(ev, Event::Delete { .. }) {
            saw_delete = true;
            break;
        }
    }
    assert!(saw_delete);
    assert!(reg.states().await.unwrap().is_empty());
    let (jobs, _) = reg.jobs().await.unwrap();
    assert_eq!(jobs[0].job_state, None);
    assert!(
        reg.try_lead("m2", lease2).await.unwrap(),
        "m2 takes over the lapsed leadership"
    );
    // Resigning is revoking the lease: the key goes with it.
    store.revoke(lease2).await.unwrap();
    assert_eq!(reg.leader().await.unwrap(), None);

    // Texts of replaced content are not kept once no job refers to them.
    for n in 0..10 {
        reg.replace_unit(
            "hello.service",
            &format!("[Service]\nExecStart=/bin/echo {n}\n"),
        )
        .await
        .unwrap();
        reg.jobs().await.unwrap();
    }
    assert!(
        reg.cached_texts() <= 1,
        "{} texts cached",
        reg.cached_texts()
    );

    // The blobs of replaced content go with the garbage collection; the one in use and
    // one shared by another unit stay.
    let blobs = |store: S| async move {
        let (kvs, _) = store.get_prefix("/_coreos.com/fleet/unit/").await.unwrap();
        kvs.len()
    };
    reg.create_unit(
        "twin.service",
        "[Service]\nExecStart=/bin/echo 9\n",
        JobState::Inactive,
    )
    .await
    .unwrap();
    let before = blobs(store.clone()).await;
    assert!(before >= 11, "{before} blobs before collecting");
    let removed = reg.collect_unit_garbage().await.unwrap();
    assert_eq!(blobs(store.clone()).await, 1, "{removed} removed");
    assert_eq!(removed, before - 1);
    assert_eq!(reg.collect_unit_garbage().await.unwrap(), 0, "idempotent");
    let job = reg.job("hello.service").await.unwrap().unwrap();
    assert_eq!(
        job.unit.as_deref(),
        Some("[Service]\nExecStart=/bin/echo 9\n")
    );
    // An orphan blob (content no unit names) goes too.
    store
        .put(
            "/_coreos.com/fleet/unit/0000000000000000000000000000000000000000",
            b"{}".to_vec(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(reg.collect_unit_garbage().await.unwrap(), 1);

    // Destroy.
    assert!(reg.destroy_unit("hello.service").await.unwrap());
    assert!(!reg.destroy_unit("hello.service").await.unwrap());
    assert_eq!(
        reg.collect_unit_garbage().await.unwrap(),
        0,
        "twin shares it"
    );
    assert!(reg.destroy_unit("twin.service").await.unwrap());
    assert_eq!(reg.collect_unit_garbage().await.unwrap(), 1);
    assert_eq!(blobs(store.clone()).await, 0);
    assert!(reg.jobs().await.unwrap().0.is_empty());
    assert!(store.requests() > 20);
}

#[tokio::test]
async fn registry_in_memory() {
    registry_flows(MemoryStore::new()).await;
}

#[tokio::test]
async fn registry_on_etcd() {
    let etcd = LocalEtcd::start(&std::env::temp_dir(), "http", &[])
        .expect("etcd (Debian etcd-server) must be installed: scripts/install-deps.sh");
    let store = etcd
        .store(Duration::from_secs(2), &EtcdTls::default(), 100)
        .await
        .unwrap_or_else(|| panic!("etcd at {} did not come up", etcd.endpoint));
    // A member is no proxy.
    let members = fleet_store::proxied_members(&etcd.endpoint, Duration::from_secs(2)).await;
    assert_eq!(members.unwrap(), None);
    assert!(
        fleet_store::proxied_members("unix:///x", Duration::from_secs(2))
            .await
            .is_err()
    );
    registry_flows(store).await;
}

#[tokio::test]
async fn corrupt_records_are_skipped_not_fatal() {
    let store = MemoryStore::new();
    let reg = Registry::new(store.clone(), "/p");
    store
        .put("/p/machines/x/object", b"{not json".to_vec(), None)
        .await
        .unwrap();
    store
        .put("/p/job/bad.service/object", b"[]".to_vec(), None)
        .await
        .unwrap();
    store
        .put("/p/states/u/m", b"nope".to_vec(), None)
        .await
        .unwrap();
    reg.create_unit(
        "ok.service",
        "[Service]\nExecStart=/bin/true\n",
        JobState::Loaded,
    )
    .await
    .unwrap();
    assert!(reg.machines().await.unwrap().is_empty());
    let (jobs, _) = reg.jobs().await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
        vec!["ok.service"]
    );
    assert!(reg.states().await.unwrap().is_empty());
    assert!(matches!(
        reg.create_unit("bad.unit", "[Service\n", JobState::Loaded)
            .await,
        Err(fleet_store::RegistryError::BadUnit { .. })
    ));
}

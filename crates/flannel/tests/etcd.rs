//! flanneld's keys against a real etcd serving the v2 API on a loopback port this test
//! picks: the first endpoint dead (the next one answers), leases created once, renewed,
//! listed with a damaged one set apart, and the watch's events — added, deleted, expired,
//! quiet, and a history etcd has cleared. Needs etcd (scripts/install-deps.sh).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::net::Ipv4Addr;
use std::time::Duration;

use flannel::registry::{Event, Registry, Watched};
use flannel::subnet::LeaseAttrs;
use fleet_store::testing::{free_port, LocalEtcd};

fn put(endpoint: &str, key: &str, value: &str, ttl: Option<u64>) {
    let mut req = ureq::put(&format!("{endpoint}/v2/keys{key}")).query("value", value);
    if let Some(t) = ttl {
        req = req.query("ttl", &t.to_string());
    }
    req.call().unwrap();
}

fn attrs(last: u8) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: Ipv4Addr::new(172, 29, 0, last),
        backend_type: "vxlan".into(),
        backend_data: Some(serde_json::json!({ "VtepMAC": format!("02:00:00:00:00:{last:02x}") })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_their_watch_on_a_real_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = LocalEtcd::start(dir.path(), "http", &["--enable-v2".to_string()]).unwrap();
    let endpoint = etcd.endpoint.clone();
    for _ in 0..100 {
        if ureq::get(&format!("{endpoint}/v2/keys/")).call().is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = format!("http://127.0.0.1:{}", free_port().unwrap());
    let r = Registry::new(
        &format!("{dead},{endpoint}"),
        "/coreos.com/network",
        Duration::from_secs(5),
    )
    .unwrap();

    assert_eq!(r.config().await.unwrap(), None);
    put(
        &endpoint,
        "/coreos.com/network/config",
        r#"{"Network":"172.30.0.0/16"}"#,
        None,
    );
    assert_eq!(
        r.config().await.unwrap().as_deref(),
        Some(r#"{"Network":"172.30.0.0/16"}"#)
    );

    let (leases, bad, index) = r.leases().await.unwrap();
    assert!(leases.is_empty() && bad.is_empty());
    let a = "172.30.5.0/24".parse().unwrap();
    let ttl = Duration::from_secs(60);
    assert!(r.create(a, &attrs(11), ttl).await.unwrap());
    assert!(
        !r.create(a, &attrs(12), ttl).await.unwrap(),
        "a held subnet is not taken again"
    );
    // The watch from before the creation sees it.
    match r.watch(index, Duration::from_secs(5)).await.unwrap() {
        Watched::Event(Some(Event::Added(l)), _) => assert_eq!((l.subnet, l.attrs), (a, attrs(11))),
        other => panic!("{other:?}"),
    }
    // A damaged lease is set apart, not fatal.
    put(
        &endpoint,
        "/coreos.com/network/subnets/172.30.6.0-24",
        "{not json",
        None,
    );
    put(&endpoint, "/coreos.com/network/subnets/junk", "{}", None);
    let (leases, bad, index) = r.leases().await.unwrap();
    assert_eq!(leases.len(), 1);
    let mut bad_keys: Vec<String> = bad.into_iter().map(|(k, _)| k).collect();
    bad_keys.sort();
    assert_eq!(
        bad_keys,
        [
            "/coreos.com/network/subnets/172.30.6.0-24",
            "/coreos.com/network/subnets/junk"
        ]
    );
    // Nothing new: quiet.
    assert!(matches!(
        r.watch(index, Duration::from_millis(500)).await.unwrap(),
        Watched::Quiet
    ));
    // Renewed: an add; deleted: a remove.
    r.renew(a, &attrs(11), ttl).await.unwrap();
    let Watched::Event(Some(Event::Added(_)), index) =
        r.watch(index, Duration::from_secs(5)).await.unwrap()
    else {
        panic!("no event for the renewal")
    };
    r.delete(a).await.unwrap();
    r.delete(a).await.unwrap();
    let Watched::Event(Some(Event::Removed(s)), index) =
        r.watch(index, Duration::from_secs(5)).await.unwrap()
    else {
        panic!("no event for the delete")
    };
    assert_eq!(s, a);
    // Expired: a remove, as flannel maps etcd's `expire`.
    let b = "172.30.7.0/24".parse().unwrap();
    assert!(r
        .create(b, &attrs(13), Duration::from_secs(1))
        .await
        .unwrap());
    let Watched::Event(Some(Event::Added(_)), index) =
        r.watch(index, Duration::from_secs(5)).await.unwrap()
    else {
        panic!("no event for the create")
    };
    let Watched::Event(Some(Event::Removed(s)), _) =
        r.watch(index, Duration::from_secs(10)).await.unwrap()
    else {
        panic!("no event for the expiry")
    };
    assert_eq!(s, b);
    // More than etcd's 1,000 remembered events later, an old index is cleared: list again.
    for i in 0..1010 {
        put(&endpoint, "/elsewhere/k", &i.to_string(), None);
    }
    assert!(matches!(
        r.watch(index, Duration::from_secs(5)).await.unwrap(),
        Watched::Cleared
    ));
    drop(etcd);
    // etcd gone: a clear error naming the endpoints.
    let e = r.leases().await.unwrap_err().to_string();
    assert!(e.contains(&endpoint) && e.contains(&dead), "{e}");
}

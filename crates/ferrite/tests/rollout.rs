//! A rolling update of the book's chapter 4 cluster (three nspawn machines, etcd2 by
//! discovery, fleet) with `reboot-strategy: etcd-lock`: a release published once reaches
//! every machine, each reboots into it only while holding the cluster's reboot lock (the
//! semaphore's history in etcd shows one holder at a time), gives the lock back once its
//! health gate marked the new `/usr` good, and a global fleet unit keeps at least two
//! copies running throughout. Needs root and the workspace built.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Cluster;

const MACHINES: [&str; 3] = ["core-01", "core-02", "core-03"];
const KEY: &str = "coreos.com/updateengine/rebootlock/semaphore";

/// A global unit: one copy on every machine.
const UNIT: &str = "[Unit]\nDescription=A copy on every machine\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nGlobal=true\n";

/// The semaphore's history, oldest first, read through etcd's v3 API in `machine`:
/// (revision, holders, max).
fn history(c: &Cluster, machine: &str) -> Vec<(i64, Vec<String>, i64)> {
    let get = |rev: Option<i64>| -> serde_json::Value {
        let rev = rev.map(|r| format!(" --rev={r}")).unwrap_or_default();
        let (code, out) = c.sh(
            machine,
            &format!("ETCDCTL_API=3 etcdctl get {KEY} -w json{rev}"),
        );
        assert_eq!(code, 0, "{out}");
        serde_json::from_str(&out).unwrap()
    };
    let now = get(None);
    let create = now["kvs"][0]["create_revision"].as_i64().unwrap();
    let mut rev = now["kvs"][0]["mod_revision"].as_i64().unwrap();
    let mut out = Vec::new();
    // Each value, then the one before its modification (bounded).
    for _ in 0..200 {
        let v = get(Some(rev));
        let kv = &v["kvs"][0];
        let modified = kv["mod_revision"].as_i64().unwrap();
        use base64::Engine;
        let value = base64::engine::general_purpose::STANDARD
            .decode(kv["value"].as_str().unwrap())
            .unwrap();
        let sem: serde_json::Value = serde_json::from_slice(&value).unwrap();
        let holders: Vec<String> = sem["holders"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| h.as_str().unwrap().to_string())
            .collect();
        out.push((modified, holders, sem["max"].as_i64().unwrap()));
        if modified <= create {
            break;
        }
        rev = modified - 1;
    }
    out.reverse();
    out
}

#[test]
fn a_release_rolls_through_the_cluster_one_machine_at_a_time() {
    let mut c = Cluster::new("roll");
    c.up_with(3, "fixtures/updates/ch4-etcd-lock-user-data.yaml");
    let json = c.cluster_json();
    let channel = json["settings"]["channel"].as_str().unwrap().to_string();
    let ids: BTreeSet<String> = json["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["machine_id"].as_str().unwrap().to_string())
        .collect();
    for m in MACHINES {
        c.sh_until(m, "systemctl is-active locksmithd", "active", 60);
    }
    c.sh_until(
        "core-01",
        "journalctl -u locksmithd -o cat --no-pager",
        "strategy=\"etcd-lock\"",
        30,
    );
    start_global_unit(&c);
    assert_eq!(
        c.sh("core-01", "locksmithctl status").1,
        "Available: 1\nMax: 1\n"
    );

    common::ferrite_ok(
        &c,
        &[
            "release",
            "build",
            "--version",
            "2.0.0",
            "--channel",
            &channel,
        ],
    );
    let published = Instant::now();
    common::publish(&c, "2.0.0", &channel);
    // Until every machine runs 2.0.0, marked good, and the lock is free again: the copies of
    // the global unit are counted all along.
    let copies = || copies(&c);
    let mut fewest = 3;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        fewest = fewest.min(copies());
        let status = c.ok(&["status"]);
        let updated = MACHINES
            .iter()
            .filter(|m| {
                status
                    .lines()
                    .any(|l| l.starts_with(*m) && l.contains(" 2.0.0"))
            })
            .count();
        if updated == 3 {
            let good = MACHINES.iter().all(|m| {
                c.sh(m, "journalctl -u ferrite-boot-health -b -o cat --no-pager")
                    .1
                    .contains("is healthy")
            });
            if good && c.sh("core-01", "locksmithctl status").1 == "Available: 1\nMax: 1\n" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the release did not reach every machine:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = published.elapsed();
    eprintln!(
        "published → all three on 2.0.0, marked good, lock free: {:.1} s; fewest copies of the global unit: {fewest}",
        took.as_secs_f64()
    );
    fewest = fewest.min(copies());
    assert!(fewest >= 2, "the global unit fell to {fewest} copies");

    one_holder_at_a_time(&c, &ids);
    // Every machine on USR-B.
    let status = c.ok(&["status"]);
    for m in MACHINES {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(m) && l.contains("USR-B  2.0.0")),
            "{status}"
        );
    }
    c.destroy_and_check();
}

/// The semaphore's history: one holder at a time, and every machine held it once.
fn one_holder_at_a_time(c: &Cluster, ids: &BTreeSet<String>) {
    let h = history(c, "core-02");
    eprintln!("semaphore history: {h:?}");
    assert!(
        h.iter()
            .all(|(_, holders, max)| *max == 1 && holders.len() <= 1),
        "two holders at once: {h:?}"
    );
    let held: Vec<&String> = h.iter().flat_map(|(_, holders, _)| holders).collect();
    let mut distinct: Vec<&String> = held.clone();
    distinct.dedup();
    assert_eq!(
        distinct
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        *ids,
        "every machine took the lock: {h:?}"
    );
    assert_eq!(distinct.len(), 3, "each machine took it once: {h:?}");
}

/// How many machines run the global unit now.
fn copies(c: &Cluster) -> usize {
    MACHINES
        .iter()
        .filter(|m| c.sh(m, "systemctl is-active sleeper.service").1.trim() == "active")
        .count()
}

/// The global unit, started with fleetctl, running on all three.
fn start_global_unit(c: &Cluster) {
    let (code, out) = c.sh(
        "core-01",
        &format!(
            "printf '{}' > sleeper.service && fleetctl start sleeper.service",
            UNIT.replace('\n', "\\n")
        ),
    );
    assert_eq!(code, 0, "{out}");
    let t = Instant::now();
    while copies(c) < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the global unit never ran on all three"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

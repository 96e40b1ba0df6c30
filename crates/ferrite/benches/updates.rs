//! Updates, measured: the payload written onto a slot (verified, written, synced and read
//! back against its hash) beside a plain sequential write of the same bytes to the same
//! file, synced, in the same run; update_engine's and locksmithd's memory at rest in a
//! machine; and the time from `ferrite release publish` to every machine running the
//! release, marked good, with the reboot lock free — one machine, then the book's three
//! with `reboot-strategy: etcd-lock` (one reboot at a time).
//!
//! Run as root: `scripts/bench.sh` (builds the release binaries first).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::disallowed_methods
)]

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use common::{default_cache, repo, secs, Env};

const CHUNK: usize = 1 << 20;

/// The payload of release `version` written onto a slot-sized file, against writing the
/// partition's bytes there plainly.
fn payload_throughput(e: &Env) {
    e.ok(&["release", "build", "--version", "50.0.0"]);
    let dir = e.state.path().join("releases/50.0.0");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("release.json")).unwrap()).unwrap();
    let payload = dir.join("update.gz");
    let key =
        update_payload::load_or_create_key(&e.cache.join("keys/update-payload-key.pem")).unwrap();
    use base64::Engine;
    let sha256: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(info["sha256"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let started = Instant::now();
    let v = update_payload::verify(
        &payload,
        &update_payload::Expected {
            size: info["size"].as_u64().unwrap(),
            sha256,
        },
        &update_payload::PublicKey::Ed25519(key.verifying_key()),
    )
    .unwrap();
    let verified = started.elapsed();
    let size = v.new_size();
    let target = e.state.path().join("slot.img");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(size)
        .unwrap();
    let started = Instant::now();
    update_payload::apply(&v, &target).unwrap();
    let applied = started.elapsed();

    // The same bytes, plainly: read from the image's USR-A, written and synced.
    let image = std::fs::read_dir(e.cache.join("images"))
        .unwrap()
        .flatten()
        .map(|d| d.path().join("ferrite.img"))
        .filter(|p| p.exists())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap();
    let usr = coreos_disk::Disk::open(&image).partition("USR-A").unwrap();
    let mut src = std::fs::File::open(&image).unwrap();
    src.seek(SeekFrom::Start(usr.offset())).unwrap();
    let mut bytes = vec![0u8; usize::try_from(size).unwrap()];
    src.read_exact(&mut bytes).unwrap();
    let started = Instant::now();
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap();
    for chunk in bytes.chunks(CHUNK) {
        out.write_all(chunk).unwrap();
    }
    out.sync_all().unwrap();
    let plain = started.elapsed();
    let mib = size as f64 / f64::from(1 << 20);
    println!(
        "payload: {} MiB compressed, {:.0} MiB partition; verified whole in {}",
        info["size"].as_u64().unwrap() >> 20,
        mib,
        secs(verified)
    );
    println!(
        "  written onto the slot (decompress, write, sync, read back against its hash): {} ({:.0} MiB/s)",
        secs(applied),
        mib / applied.as_secs_f64()
    );
    println!(
        "  baseline, the same bytes written plainly and synced: {} ({:.0} MiB/s); ratio {:.2}",
        secs(plain),
        mib / plain.as_secs_f64(),
        plain.as_secs_f64() / applied.as_secs_f64()
    );
}

/// A process's RSS and PSS in a machine, KiB.
fn memory(e: &Env, c: &str, m: &str, unit: &str) -> (u64, u64) {
    let out = e
        .sh(
            c,
            m,
            &format!(
                "p=$(systemctl show -p MainPID --value {unit}); \
                 grep -E '^(Rss|Pss):' /proc/$p/smaps_rollup | tr -s ' ' | cut -d' ' -f2"
            ),
        )
        .1;
    let mut w = out.split_whitespace().map(|w| w.parse::<u64>().unwrap());
    (w.next().unwrap(), w.next().unwrap())
}

/// Publishes `version` and waits until every machine runs it, marked good, lock free.
fn rollout(e: &Env, c: &str, machines: &[&str], version: &str) -> Duration {
    e.ok(&["release", "build", "--version", version]);
    let started = Instant::now();
    e.ok(&[
        "release",
        "publish",
        version,
        "--channel",
        "alpha",
        "--cluster",
        c,
    ]);
    loop {
        let status = e.ok(&["status", "--cluster", c]);
        let on = machines
            .iter()
            .filter(|m| {
                status
                    .lines()
                    .any(|l| l.starts_with(*m) && l.contains(&format!(" {version}")))
            })
            .count();
        if on == machines.len()
            && machines.iter().all(|m| {
                e.sh(
                    c,
                    m,
                    "journalctl -u ferrite-boot-health -b -o cat --no-pager",
                )
                .1
                .contains("is healthy")
            })
            && e.sh(c, machines[0], "locksmithctl status").1 == "Available: 1\nMax: 1\n"
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{version} did not reach every machine:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn main() {
    common::require_root();
    let e = Env::new(&default_cache());
    let ud = repo().join("fixtures/updates/ch4-etcd-lock-user-data.yaml");
    let ud = ud.to_str().unwrap();
    payload_throughput(&e);
    // `cargo bench --bench updates -- payload`: that part alone.
    if std::env::args().any(|a| a == "payload") {
        return;
    }

    e.ok(&[
        "up",
        "--cluster",
        "one",
        "--instances",
        "1",
        "--user-data",
        ud,
    ]);
    e.until(
        "one",
        "core-01",
        "systemctl is-active locksmithd",
        "active",
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_secs(15));
    for unit in ["update-engine", "locksmithd", "fleet"] {
        let (rss, pss) = memory(&e, "one", "core-01", unit);
        println!(
            "{unit} at rest: RSS {:.1} MiB, PSS {:.1} MiB",
            rss as f64 / 1024.0,
            pss as f64 / 1024.0
        );
    }
    let one = rollout(&e, "one", &["core-01"], "51.0.0");
    println!(
        "publish → 1 machine on the release, marked good: {}",
        secs(one)
    );
    e.ok(&["destroy", "--cluster", "one"]);

    e.ok(&[
        "up",
        "--cluster",
        "three",
        "--instances",
        "3",
        "--user-data",
        ud,
    ]);
    for m in ["core-01", "core-02", "core-03"] {
        e.until(
            "three",
            m,
            "systemctl is-active locksmithd",
            "active",
            Duration::from_secs(60),
        );
    }
    let three = rollout(&e, "three", &["core-01", "core-02", "core-03"], "52.0.0");
    println!(
        "publish → 3 machines on the release one at a time (etcd-lock), marked good, lock free: {} ({:.2} × one machine)",
        secs(three),
        three.as_secs_f64() / one.as_secs_f64()
    );
}

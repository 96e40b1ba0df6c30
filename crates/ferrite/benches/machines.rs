//! Ferrite machines, measured: image build time (cold and cached), time from `ferrite up` to
//! every machine's etcd2 healthy for 1 and 3 machines, and each machine's memory by service,
//! at rest (docker socket-activated) and with dockerd running. The baseline, measured in the
//! same run, is the same Debian tree booted by a bare `systemd-nspawn --boot` (no Ferrite
//! image, disk, network or cloud-config) until `systemctl is-system-running` says running.
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

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{repo, secs, Env};
use machine_launcher::ClusterState;

/// `ferrite up`, then polls every machine until `etcdctl endpoint health` succeeds.
fn up_until_healthy(
    e: &Env,
    cluster: &str,
    instances: u32,
    user_data: &Path,
) -> (Duration, Duration) {
    let start = Instant::now();
    e.ok(&[
        "up",
        "--cluster",
        cluster,
        "--instances",
        &instances.to_string(),
        "--user-data",
        user_data.to_str().unwrap(),
    ]);
    let up = start.elapsed();
    for i in 1..=instances {
        let m = format!("core-{i:02}");
        let mut healthy = false;
        for _ in 0..600 {
            let o = e
                .cmd(&[
                    "ssh",
                    "--cluster",
                    cluster,
                    &m,
                    "--",
                    "ETCDCTL_API=3",
                    "etcdctl",
                    "--dial-timeout=1s",
                    "endpoint",
                    "health",
                ])
                .output()
                .unwrap();
            if o.status.success() {
                healthy = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(healthy, "{m}: etcd2 never became healthy");
    }
    (up, start.elapsed())
}

fn print_memory(e: &Env, cluster: &str, label: &str) {
    let state = ClusterState::load(&e.paths(), cluster).unwrap();
    for m in &state.machines {
        let r = machine_launcher::memory(&machine_launcher::RealHost, m).unwrap();
        println!(
            "  {label} {}: PSS {:.1} MiB (RSS {:.1} MiB); memory cgroup {:.1} MiB (anon {:.1}, cache {:.1})",
            m.name,
            r.pss_kib as f64 / 1024.0,
            r.rss_kib as f64 / 1024.0,
            r.cgroup_usage_kib as f64 / 1024.0,
            r.cgroup_rss_kib as f64 / 1024.0,
            r.cgroup_cache_kib as f64 / 1024.0
        );
        let top: Vec<String> = r
            .by_unit
            .iter()
            .take(8)
            .map(|(u, k)| format!("{u} {:.1}", *k as f64 / 1024.0))
            .collect();
        println!("      by unit (PSS MiB): {}", top.join(", "));
    }
}

/// The baseline: the pristine Debian tree, `systemd-nspawn --boot --volatile=overlay`.
fn baseline_boot(cache: &Path) -> Option<Duration> {
    let rootfs = std::fs::read_dir(cache.join("rootfs"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("usr/bin/systemctl").exists())?;
    let name = format!("bench-base-{}", std::process::id());
    let start = Instant::now();
    let mut child = Command::new("systemd-nspawn")
        .args([
            "--boot",
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
            "--private-network",
            "--link-journal=no",
            "--console=read-only",
        ])
        .arg(format!("--directory={}", rootfs.display()))
        .arg(format!("--machine={name}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = child.id();
    let mut booted = None;
    for _ in 0..600 {
        if let Some(init) = common::nspawn_init(pid) {
            if common::nspawn_booted(&init) {
                booted = Some(start.elapsed());
                let _ = Command::new("kill").args(["-RTMIN+4", &init]).status();
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
    booted
}

fn main() {
    common::require_root();
    let shared_cache = common::default_cache();

    println!("== image build");
    let cold_cache = tempfile::Builder::new()
        .prefix("ferrite-cold-cache")
        .tempdir_in("/var/tmp")
        .unwrap();
    let cold = Env::new(cold_cache.path());
    let t = Instant::now();
    let built = cold.ok(&["image", "build"]);
    let cold_time = t.elapsed();
    let t = Instant::now();
    cold.ok(&["image", "build"]);
    let cached_time = t.elapsed();
    let image = PathBuf::from(built.split_whitespace().next().unwrap());
    let meta = std::fs::metadata(&image).unwrap();
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    println!("  cold (debootstrap + image): {}", secs(cold_time));
    println!(
        "  cached: {} ({:.0}x faster)",
        secs(cached_time),
        cold_time.as_secs_f64() / cached_time.as_secs_f64()
    );
    println!(
        "  image: {} MiB apparent, {} MiB allocated",
        meta.len() >> 20,
        allocated >> 20
    );
    drop(cold);

    println!("== boot (cached image)");
    let base = baseline_boot(cold_cache.path());
    if let Some(b) = base {
        println!(
            "  baseline: bare systemd-nspawn --boot of the Debian tree to running: {}",
            secs(b)
        );
    }
    let e = Env::new(&shared_cache);
    e.ok(&["image", "build"]);
    let chapter = repo().join("examples/user-data");
    let (up1, healthy1) = up_until_healthy(&e, "bench1", 1, &chapter);
    println!(
        "  1 machine (chapter user-data): ferrite up returned in {}, etcd2 healthy after {}",
        secs(up1),
        secs(healthy1)
    );
    if let Some(b) = base {
        // Like with like: `ferrite up` returns once the machine is booted (running).
        println!(
            "    ratio to baseline, both to running: {:.2}",
            up1.as_secs_f64() / b.as_secs_f64()
        );
    }
    let book = repo().join("fixtures/cloud-config/book-ch4-user-data.yaml");
    let (up3, healthy3) = up_until_healthy(&e, "bench3", 3, &book);
    println!("  3 machines (book cluster, discovery): ferrite up returned in {}, all etcd2 healthy after {}", secs(up3), secs(healthy3));
    if let Some(b) = base {
        println!(
            "    ratio to baseline, all three to running: {:.2}",
            up3.as_secs_f64() / b.as_secs_f64()
        );
    }

    println!("== memory (10 s after boot)");
    std::thread::sleep(Duration::from_secs(10));
    print_memory(&e, "bench1", "at rest");
    print_memory(&e, "bench3", "at rest");
    e.ok(&[
        "ssh",
        "--cluster",
        "bench1",
        "core-01",
        "--",
        "docker",
        "version",
    ]);
    std::thread::sleep(Duration::from_secs(3));
    print_memory(&e, "bench1", "dockerd running");

    e.ok(&["destroy", "--cluster", "bench1"]);
    e.ok(&["destroy", "--cluster", "bench3"]);
}

//! Clusters of 10, 50 and 100 machines (the book's chapter 4 user-data, from a cached
//! image): the time from `ferrite up` to every machine listed by `fleetctl list-machines`,
//! each machine's disk (allocated) and memory (PSS) at rest, and a fleet global unit
//! active on all; beside, measured in the same run, the bare `systemd-nspawn --boot` of as
//! many Debian trees at once (overlays of one tree, no Ferrite disk, network or
//! cloud-config) until all say running.
//!
//! Run as root: `scripts/bench.sh`, or `cargo bench -p ferrite --bench scale`
//! (`FERRITE_SCALE=10,50` for other sizes). The host's limits are raised by `ferrite up`
//! as a cluster of the size needs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::disallowed_methods,
    clippy::cast_precision_loss
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{default_cache, repo, require_root, secs, Env};
use machine_launcher::ClusterState;

/// A global unit: one copy on every machine.
const GLOBAL: &str = "[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nGlobal=true\n";

fn sizes() -> Vec<u32> {
    std::env::var("FERRITE_SCALE")
        .unwrap_or_else(|_| "10,50,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Polls `script` on core-01 until its output (a count) reaches `n`; the time it took.
fn until_count(e: &Env, cluster: &str, script: &str, n: u32, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        last = e.sh(cluster, "core-01", script).1;
        if last.trim().parse::<u32>().is_ok_and(|c| c >= n) {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{cluster}: `{script}` never reached {n} (last {last:?})");
}

fn one_size(n: u32) {
    let e = Env::new(&default_cache());
    let cluster = format!("scale{n}");
    let ud = repo().join("fixtures/cloud-config/book-ch4-user-data.yaml");
    let start = Instant::now();
    e.ok(&[
        "up",
        "--cluster",
        &cluster,
        "--instances",
        &n.to_string(),
        "--user-data",
        ud.to_str().unwrap(),
    ]);
    let up = start.elapsed();
    let listed = until_count(
        &e,
        &cluster,
        "fleetctl list-machines --no-legend | wc -l",
        n,
        Duration::from_secs(600),
    );
    let all_listed = start.elapsed();
    println!(
        "{n} machines: ferrite up returned in {}, all {n} in fleetctl list-machines after {} (listed {} after up)",
        secs(up),
        secs(all_listed),
        secs(listed)
    );
    // Disk and memory per machine.
    let state = ClusterState::load(&e.paths(), &cluster).unwrap();
    let mut disk = Vec::new();
    let mut pss = Vec::new();
    let machine_dir = |m: &str| {
        e.paths()
            .state
            .join("clusters")
            .join(&cluster)
            .join("machines")
            .join(m)
    };
    for m in &state.machines {
        let p = machine_dir(&m.name).join("disk.img");
        let meta = std::fs::metadata(p).unwrap();
        disk.push(std::os::unix::fs::MetadataExt::blocks(&meta) * 512);
        if let Ok(r) = machine_launcher::memory(&machine_launcher::RealHost, m) {
            pss.push(r.pss_kib);
        }
    }
    let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    println!(
        "  disk per machine: {:.1} MiB allocated (max {:.1}); memory per machine at rest: {:.1} MiB PSS (max {:.1}), {:.2} GiB for all",
        avg(&disk) / 1_048_576.0,
        *disk.iter().max().unwrap_or(&0) as f64 / 1_048_576.0,
        avg(&pss) / 1024.0,
        *pss.iter().max().unwrap_or(&0) as f64 / 1024.0,
        pss.iter().sum::<u64>() as f64 / 1_048_576.0
    );
    // A global unit on every machine.
    let unit = machine_dir("core-01").join("root/home/core/everywhere.service");
    std::fs::write(&unit, GLOBAL).unwrap();
    let t = Instant::now();
    let (code, out) = e.sh(
        &cluster,
        "core-01",
        "cd /home/core && fleetctl start everywhere.service",
    );
    assert_eq!(code, 0, "{out}");
    until_count(
        &e,
        &cluster,
        "fleetctl list-units --no-legend | grep -c 'active.*running' || true",
        n,
        Duration::from_secs(600),
    );
    println!(
        "  global unit active on all {n}: {} after fleetctl start",
        secs(t.elapsed())
    );
    // Commands stay quick at this size.
    for (what, args) in [
        ("ferrite status", vec!["status", "--cluster", &cluster]),
        (
            "ferrite ssh (true)",
            vec!["ssh", "--cluster", &cluster, "core-01", "--", "true"],
        ),
    ] {
        let t = Instant::now();
        e.ok(&args);
        println!("  {what}: {}", secs(t.elapsed()));
    }
    let t = Instant::now();
    e.sh(&cluster, "core-01", "fleetctl list-machines >/dev/null");
    println!(
        "  fleetctl list-machines (through ferrite ssh): {}",
        secs(t.elapsed())
    );
    let t = Instant::now();
    e.ok(&["destroy", "--cluster", &cluster]);
    println!("  destroy: {}", secs(t.elapsed()));
}

/// `n` bare nspawn boots of the image build's Debian tree at once (each an overlay, each
/// in cgroups of its own); the time until every one says running.
fn baseline(cache: &Path, n: u32) -> Option<Duration> {
    let rootfs: PathBuf = std::fs::read_dir(cache.join("rootfs"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("usr/bin/systemctl").exists())?;
    let cg_roots = ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"];
    let tag = format!("bench-scale-{}", std::process::id());
    let start = Instant::now();
    let mut kids: Vec<(Child, Vec<PathBuf>)> = Vec::new();
    for i in 0..n {
        let name = format!("{tag}-{i}");
        let cgs: Vec<PathBuf> = cg_roots
            .iter()
            .map(Path::new)
            .filter(|r| r.is_dir())
            .map(|r| r.join(&name))
            .collect();
        let mut join = String::new();
        for cg in &cgs {
            std::fs::create_dir_all(cg).unwrap();
            join.push_str(&format!("echo $$ > {}/cgroup.procs; ", cg.display()));
        }
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{join}exec systemd-nspawn --boot --register=no --keep-unit --volatile=overlay --private-network --link-journal=no --console=read-only --directory={} --machine={name}",
                rootfs.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        kids.push((child, cgs));
    }
    let mut running = vec![false; kids.len()];
    while start.elapsed() < Duration::from_secs(300) && running.iter().any(|r| !r) {
        for (i, (child, _)) in kids.iter().enumerate() {
            if running[i] {
                continue;
            }
            let pid = child.id();
            if let Some(init) = common::nspawn_init(pid) {
                if common::nspawn_booted(&init) {
                    running[i] = true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = start.elapsed();
    let all = running.iter().all(|r| *r);
    for (child, _) in &kids {
        let pid = child.id();
        if let Some(init) = common::nspawn_init(pid) {
            let _ = Command::new("kill").args(["-RTMIN+4", &init]).status();
        }
    }
    for (mut child, cgs) in kids {
        let t = Instant::now();
        while child.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        for cg in cgs {
            // nspawn's own subgroups first.
            let _ = Command::new("find")
                .arg(&cg)
                .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                .status();
        }
    }
    all.then_some(took)
}

fn main() {
    require_root();
    // The image, built once before anything is timed.
    let warm = Env::new(&default_cache());
    warm.ok(&["image", "build"]);
    drop(warm);
    for n in sizes() {
        println!("== {n} machines");
        // The baseline boots as many machines: the same host limits as the cluster.
        for r in
            machine_launcher::limits::ensure(&machine_launcher::RealHost, u64::from(n)).unwrap()
        {
            println!("  {r}");
        }
        match baseline(&default_cache(), n) {
            Some(b) => println!(
                "  baseline: {n} bare systemd-nspawn --boot of the Debian tree, all running after {}",
                secs(b)
            ),
            None => println!("  baseline: {n} bare nspawn boots did not all reach running"),
        }
        one_size(n);
    }
}

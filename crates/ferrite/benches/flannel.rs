//! The cluster network, measured on two nspawn machines with flanneld (vxlan): TCP
//! throughput container-to-container across the machines over the overlay, beside the same
//! two machines over the underlay (host networking), in the same run and with the same
//! iperf3; and the time from flanneld's start to subnet.env written (flanneld's own count,
//! first start and restarts), with the whole `systemctl restart flanneld` (its etcdctl
//! drop-in and mk-docker-opts included).
//!
//! Run as root: `scripts/bench.sh` (builds the release binaries first), or
//! `cargo bench -p ferrite --bench flannel`. iperf3 comes from the host (install-deps):
//! it and its libraries go into a container image, as no registry is reachable.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::disallowed_methods
)]

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{default_cache, repo, require_root, Env};

const CLUSTER: &str = "flbench";
const RUNS: usize = 3;
const SECONDS: u32 = 5;

/// A container image with busybox, iperf3 and the libraries iperf3 loads.
fn iperf_tar() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    // iperf3 makes a temporary file per stream.
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let iperf = Command::new("sh")
        .args(["-c", "command -v iperf3"])
        .output()
        .unwrap();
    let iperf = String::from_utf8_lossy(&iperf.stdout).trim().to_string();
    assert!(
        !iperf.is_empty(),
        "iperf3 is not installed (scripts/install-deps.sh)"
    );
    std::fs::copy(&iperf, root.join("bin/iperf3")).unwrap();
    let ldd = Command::new("ldd").arg(&iperf).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(str::to_string);
        if let Some(p) = path {
            let real = std::fs::canonicalize(&p).unwrap();
            let dst = root.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(real, dst).unwrap();
        }
    }
    let tar = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    tar.stdout
}

fn import(e: &Env, machine: &str, tar: &[u8]) {
    let mut child = e
        .cmd(&[
            "ssh",
            "--cluster",
            CLUSTER,
            machine,
            "--",
            "docker",
            "import",
            "-",
            "iperf:local",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(tar).unwrap();
    assert!(
        child.wait().unwrap().success(),
        "docker import on {machine}"
    );
}

/// One iperf3 client run in a container on core-01 (`net`: docker's `--net` value): the
/// received throughput in Gbit/s.
fn iperf(e: &Env, net: &str, server: &str, port: u16) -> f64 {
    let (code, out) = e.sh(
        CLUSTER,
        "core-01",
        &format!(
            "docker run --rm --pull=never --net={net} iperf:local iperf3 -c {server} -p {port} -t {SECONDS} -J"
        ),
    );
    assert_eq!(code, 0, "iperf3 to {server}:{port}: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64();
    bps.unwrap_or_else(|| panic!("iperf3 to {server}:{port} ({net}): {out}")) / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// flanneld's own count of its last start: "wrote … (N ms after start)".
fn last_ready_ms(e: &Env, machine: &str) -> u64 {
    let (_, log) = e.sh(CLUSTER, machine, "journalctl -u flanneld -o cat --no-pager");
    log.lines()
        .rev()
        .find_map(|l| {
            let rest = l.split("wrote /run/flannel/subnet.env (").nth(1)?;
            rest.split(" ms").next()?.parse().ok()
        })
        .unwrap()
}

fn main() {
    require_root();
    let e = Env::new(&default_cache());
    let ud = repo().join("fixtures/flannel/ch4-flannel-user-data.yaml");
    e.ok(&[
        "up",
        "--cluster",
        CLUSTER,
        "--instances",
        "2",
        "--user-data",
        ud.to_str().unwrap(),
    ]);
    for m in ["core-01", "core-02"] {
        e.until(
            CLUSTER,
            m,
            "systemctl is-active flanneld",
            "active",
            Duration::from_secs(120),
        );
    }
    println!("flanneld start → subnet.env written (flanneld's count):");
    for m in ["core-01", "core-02"] {
        println!("  {m}, first start: {} ms", last_ready_ms(&e, m));
    }
    let mut restarts = Vec::new();
    let mut walls = Vec::new();
    for _ in 0..5 {
        // systemd refuses a sixth start within 10 s (StartLimitBurst=5).
        std::thread::sleep(Duration::from_secs(2));
        let t = Instant::now();
        let (code, out) = e.sh(CLUSTER, "core-01", "systemctl restart flanneld");
        assert_eq!(code, 0, "{out}");
        walls.push(t.elapsed().as_secs_f64() * 1000.0);
        restarts.push(last_ready_ms(&e, "core-01") as f64);
    }
    println!(
        "  core-01, restarts (median of 5): {:.0} ms; whole `systemctl restart flanneld` (etcdctl drop-in, mk-docker-opts): {:.0} ms",
        median(restarts),
        median(walls)
    );

    let tar = iperf_tar();
    for m in ["core-01", "core-02"] {
        import(&e, m, &tar);
    }
    let (code, out) = e.sh(
        CLUSTER,
        "core-02",
        "docker run -d --pull=never --name overlay iperf:local iperf3 -s -p 5201 >/dev/null && docker run -d --pull=never --net=host --name underlay iperf:local iperf3 -s -p 5202 >/dev/null && docker inspect -f '{{.NetworkSettings.IPAddress}}' overlay",
    );
    assert_eq!(code, 0, "{out}");
    let container = out.trim().to_string();
    let status = e.ok(&["status", "--cluster", CLUSTER]);
    let host = status
        .lines()
        .find(|l| l.starts_with("core-02"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(500));
    let (mut over, mut under) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        over.push(iperf(&e, "bridge", &container, 5201));
        under.push(iperf(&e, "host", &host, 5202));
    }
    let (o, u) = (median(over.clone()), median(under.clone()));
    println!("TCP throughput core-01 → core-02, iperf3 -t {SECONDS}, median of {RUNS}:");
    println!("  container → container over flannel (vxlan, MTU 1450): {o:.2} Gbit/s {over:.2?}");
    println!(
        "  host → host over the underlay (veth + bridge, MTU 1500): {u:.2} Gbit/s {under:.2?}"
    );
    println!("  overlay / underlay: {:.2}", o / u);
}

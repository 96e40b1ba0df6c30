//! rkt against Docker in one nspawn machine (the book's chapter 4 user-data), same image
//! (the cluster registry's busybox), same run: start to exit of `rkt run --net=host … true`
//! beside `docker run --rm --network=host … true`, timed inside the machine; and the memory
//! (PSS) a running pod costs beyond its app (rkt's own two processes) beside what Docker keeps
//! for a running container (its shim per container, and its daemons).
//!
//! Run as root: `scripts/bench.sh`, or `cargo bench -p ferrite --bench rkt`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::disallowed_methods
)]

mod common;

use std::time::Duration;

use common::{default_cache, repo, require_root, Env};

const CLUSTER: &str = "rktbench";
const RUNS: usize = 30;
const IMAGE: &str = "ferrite-registry:5000/busybox:latest";

/// Milliseconds of each of `RUNS` runs of `command`, timed in the machine.
fn times(e: &Env, command: &str) -> Vec<f64> {
    let script = format!(
        "for i in $(seq {RUNS}); do s=$(date +%s%N); {command} >/dev/null 2>&1 || echo failed; t=$(date +%s%N); echo $(( (t - s) / 1000 )); done"
    );
    let (code, out) = e.sh(CLUSTER, "core-01", &script);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("failed"), "{command}: {out}");
    out.lines()
        .map(|l| l.trim().parse::<f64>().unwrap() / 1000.0)
        .collect()
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() * 9 / 10])
}

/// Proportional set size (KiB) of a process in the machine: its resident memory, pages
/// shared with other processes counted in proportion (rkt's two processes share their
/// binary's pages).
fn rss(e: &Env, pid: &str) -> u64 {
    let (_, s) = e.sh(
        CLUSTER,
        "core-01",
        &format!("grep '^Pss:' /proc/{pid}/smaps_rollup"),
    );
    s.split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0)
}

fn pids(e: &Env, pattern: &str) -> Vec<String> {
    let (_, out) = e.sh(CLUSTER, "core-01", &format!("pgrep -f '{pattern}' || true"));
    out.lines().map(str::to_string).collect()
}

fn main() {
    require_root();
    let e = Env::new(&default_cache());
    let ud = repo().join("fixtures/cloud-config/book-ch4-user-data.yaml");
    e.ok(&[
        "up",
        "--cluster",
        CLUSTER,
        "--instances",
        "1",
        "--user-data",
        ud.to_str().unwrap(),
    ]);
    let (code, out) = e.sh(
        CLUSTER,
        "core-01",
        &format!("docker pull -q {IMAGE} && rkt --insecure-options=image fetch docker://{IMAGE} 2>/dev/null"),
    );
    assert_eq!(code, 0, "{out}");
    let rkt =
        format!("rkt --insecure-options=image run --net=host docker://{IMAGE} --exec=/bin/true");
    let docker = format!("docker run --rm --network=host {IMAGE} true");
    // Warm both (page cache, Docker's first container).
    times(&e, &rkt);
    times(&e, &docker);
    let (r, d) = (times(&e, &rkt), times(&e, &docker));
    let (rmin, rmed, r90) = stats(r);
    let (dmin, dmed, d90) = stats(d);
    println!("start → exit of busybox `true`, host network, {RUNS} runs each in one machine:");
    println!("  rkt run:           median {rmed:.1} ms (min {rmin:.1}, p90 {r90:.1})");
    println!("  docker run --rm:   median {dmed:.1} ms (min {dmin:.1}, p90 {d90:.1})");
    println!("  rkt / docker: {:.2}", rmed / dmed);
    e.sh(
        CLUSTER,
        "core-01",
        "rkt gc --grace-period=0s >/dev/null 2>&1",
    );

    // A running pod and a running container, each `sleep`.
    let (code, out) = e.sh(
        CLUSTER,
        "core-01",
        &format!("systemd-run --unit=pod.service {rkt_sleep} && docker run -d --network=host {IMAGE} sleep 1001 >/dev/null", rkt_sleep = rkt.replace("--exec=/bin/true", "--exec=/bin/sleep -- 1000")),
    );
    assert_eq!(code, 0, "{out}");
    e.until(
        CLUSTER,
        "core-01",
        "pgrep -f '^/bin/sleep 1000$' >/dev/null && pgrep -f '^sleep 1001$' >/dev/null && echo up",
        "up",
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(1));
    let main = e
        .sh(
            CLUSTER,
            "core-01",
            "systemctl show -p MainPID --value pod.service",
        )
        .1;
    let stage0 = rss(&e, main.trim());
    let init: u64 = pids(&e, "__stage1-init").iter().map(|p| rss(&e, p)).sum();
    let app = rss(&e, &pids(&e, "^/bin/sleep 1000$")[0]);
    let shim: u64 = pids(&e, "containerd-shim").iter().map(|p| rss(&e, p)).sum();
    let dockerd: u64 = pids(&e, "^/usr/sbin/dockerd")
        .iter()
        .map(|p| rss(&e, p))
        .sum();
    let containerd: u64 = pids(&e, "^/usr/bin/containerd( |$)")
        .iter()
        .map(|p| rss(&e, p))
        .sum();
    let dapp = rss(&e, &pids(&e, "^sleep 1001$")[0]);
    println!("memory of a running `sleep` (PSS, KiB):");
    println!(
        "  rkt pod: app {app}; beyond it {} (rkt run {stage0}, the pod's init {init}); no daemon",
        stage0 + init
    );
    println!(
        "  docker:  app {dapp}; beyond it {} (containerd-shim {shim}) + daemons {} (dockerd {dockerd}, containerd {containerd})",
        shim,
        dockerd + containerd
    );
}

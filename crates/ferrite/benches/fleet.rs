//! fleet on real Ferrite machines, measured: `fleetctl start` to the unit active (1, 100 and
//! 1,000 units on one machine), fleetd's RSS idle and with 1,000 units, its CPU and etcd's
//! request rate at rest, and failover time on three machines after one is killed. The
//! baseline, measured in the same run on the same machine, is `systemd-run` of the same
//! command straight to systemd (no fleet), polled the same way.
//!
//! Run as root: `scripts/bench.sh` (builds the release binaries first).
#![allow(
    clippy::too_many_lines,
    reason = "a scenario reads top to bottom, as a user would run it"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::disallowed_methods
)]

mod common;

use std::time::{Duration, Instant};

use common::{default_cache, repo, secs, Env};

const UNIT: &str = "[Service]\nExecStart=/bin/sleep infinity\n";

/// fleetd's RSS (KiB) and CPU ticks (utime + stime).
fn fleetd_usage(e: &Env, c: &str, m: &str) -> (Memory, u64) {
    let out = e
        .sh(
            c,
            m,
            "p=$(systemctl show -p MainPID --value fleet); \
             grep -E '^(Rss|Pss):' /proc/$p/smaps_rollup | tr -s ' ' | cut -d' ' -f2; \
             cut -d' ' -f14,15 /proc/$p/stat",
        )
        .1;
    let mut words = out.split_whitespace().map(|w| w.parse::<u64>().unwrap());
    let rss = words.next().unwrap();
    let pss = words.next().unwrap();
    (
        Memory { rss, pss },
        words.next().unwrap() + words.next().unwrap(),
    )
}

/// A process's resident memory, KiB: all its pages, and its proportional share (pages
/// shared with other processes, such as libc's, divided among them).
struct Memory {
    rss: u64,
    pss: u64,
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB, PSS {:.1} MiB",
            self.rss as f64 / 1024.0,
            self.pss as f64 / 1024.0
        )
    }
}

/// Messages etcd's gRPC server has received (requests and stream messages).
fn etcd_messages(e: &Env, c: &str, m: &str) -> u64 {
    let script = "exec 3<>/dev/tcp/127.0.0.1/2379; \
                  printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3";
    let out = e.sh(c, m, &format!("bash -c \"{script}\"")).1;
    out.lines()
        .filter(|l| l.starts_with("grpc_server_msg_received_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn main() {
    common::require_root();
    let e = Env::new(&default_cache());
    e.ok(&["image", "build"]);
    let chapter = repo().join("examples/user-data");
    let ticks = 100.0; // USER_HZ

    println!("== fleet on one machine (chapter user-data)");
    e.ok(&[
        "up",
        "--cluster",
        "fleet1",
        "--user-data",
        chapter.to_str().unwrap(),
    ]);
    let (c, m) = ("fleet1", "core-01");
    e.until(
        c,
        m,
        "fleetctl list-machines --no-legend | wc -l",
        "1",
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_secs(5));

    let (rss0, cpu0) = fleetd_usage(&e, c, m);
    let msgs0 = etcd_messages(&e, c, m);
    std::thread::sleep(Duration::from_secs(10));
    let (_, cpu1) = fleetd_usage(&e, c, m);
    let msgs1 = etcd_messages(&e, c, m);
    println!("  fleetd idle: {rss0}");
    println!(
        "  at rest, no units: fleetd CPU {:.2}% of a core, etcd {:.1} requests/s",
        (cpu1 - cpu0) as f64 / ticks / 10.0 * 100.0,
        (msgs1 - msgs0) as f64 / 10.0
    );

    // Baseline: the same service straight to systemd.
    let t = Instant::now();
    e.sh(c, m, "systemd-run --unit=baseline /bin/sleep infinity");
    let base = e.until(
        c,
        m,
        "systemctl is-active baseline",
        "active",
        Duration::from_secs(30),
    );
    let base = base.max(t.elapsed());
    println!("  baseline: systemd-run to active: {}", secs(base));

    e.sh(
        c,
        m,
        &format!(
            "printf '{}' > /home/core/bench@.service",
            UNIT.replace('\n', "\\n")
        ),
    );
    let t = Instant::now();
    e.sh(
        c,
        m,
        "cd /home/core && fleetctl start --no-block bench@0.service",
    );
    e.until(
        c,
        m,
        "systemctl is-active bench@0.service",
        "active",
        Duration::from_secs(60),
    );
    let one = t.elapsed();
    println!(
        "  fleetctl start to active, 1 unit: {} (ratio to baseline {:.1})",
        secs(one),
        one.as_secs_f64() / base.as_secs_f64()
    );

    // Baselines for the batches: the same template's instances started straight through
    // systemd (`systemctl start --no-block` of all of them), then stopped again.
    e.sh(
        c,
        m,
        &format!(
            "printf '{}' > /run/systemd/system/base@.service && systemctl daemon-reload",
            UNIT.replace('\n', "\\n")
        ),
    );
    let mut baselines = Vec::new();
    for (from, to) in [(1, 100), (101, 1000)] {
        let t = Instant::now();
        e.sh(
            c,
            m,
            &format!("systemctl start --no-block $(seq -f 'base@%g.service' {from} {to})"),
        );
        e.until(
            c,
            m,
            "systemctl list-units --no-legend --state=active 'base@*' | wc -l",
            &to.to_string(),
            Duration::from_secs(300),
        );
        let took = t.elapsed();
        println!(
            "  baseline: systemctl start of {} more units ({} in all) to active: {}",
            to - from + 1,
            to,
            secs(took)
        );
        baselines.push(took);
    }
    e.sh(c, m, "systemctl stop 'base@*'");

    for ((from, to), base) in [(1, 100), (101, 1000)].into_iter().zip(baselines) {
        let t = Instant::now();
        e.sh(
            c,
            m,
            &format!(
                "cd /home/core && fleetctl start --no-block $(seq -f 'bench@%g.service' {from} {to}) >/dev/null"
            ),
        );
        let returned = t.elapsed();
        e.until(
            c,
            m,
            "systemctl list-units --no-legend --state=active 'bench@*' | wc -l",
            &(to + 1).to_string(),
            Duration::from_secs(300),
        );
        println!(
            "  fleetctl start to active, {} more units ({} in all): {} (ratio to baseline {:.1}; fleetctl returned after {})",
            to - from + 1,
            to + 1,
            secs(t.elapsed()),
            t.elapsed().as_secs_f64() / base.as_secs_f64(),
            secs(returned)
        );
    }
    std::thread::sleep(Duration::from_secs(5));
    let (rss1, cpu0) = fleetd_usage(&e, c, m);
    let msgs0 = etcd_messages(&e, c, m);
    std::thread::sleep(Duration::from_secs(10));
    let (_, cpu1) = fleetd_usage(&e, c, m);
    let msgs1 = etcd_messages(&e, c, m);
    println!("  fleetd with 1,001 units: {rss1}");
    println!(
        "  at rest, 1,001 units: fleetd CPU {:.2}% of a core, etcd {:.1} requests/s",
        (cpu1 - cpu0) as f64 / ticks / 10.0 * 100.0,
        (msgs1 - msgs0) as f64 / 10.0
    );
    e.ok(&["destroy", "--cluster", c]);

    println!("== failover on three machines (book user-data)");
    let book = repo().join("fixtures/cloud-config/book-ch4-user-data.yaml");
    e.ok(&[
        "up",
        "--cluster",
        "fleet3",
        "--instances",
        "3",
        "--user-data",
        book.to_str().unwrap(),
    ]);
    let c = "fleet3";
    e.until(
        c,
        "core-01",
        "fleetctl list-machines --no-legend | wc -l",
        "3",
        Duration::from_secs(120),
    );
    e.sh(
        c,
        "core-01",
        &format!(
            "printf '{}' > /tmp/ha.service && fleetctl start /tmp/ha.service",
            UNIT.replace('\n', "\\n")
        ),
    );
    // Twice: the unit's machine is killed, then brought back, then the unit's new machine.
    for round in 0..2 {
        let host = e
            .sh(
                c,
                "core-01",
                "fleetctl list-units --no-legend --fields=machine --full",
            )
            .1;
        let host_ip = host.trim().split('/').nth(1).unwrap().to_string();
        let mut victim = None;
        for m in ["core-01", "core-02", "core-03"] {
            if e.sh(c, m, "systemctl is-active ha.service").1.trim() == "active" {
                victim = Some(m);
            }
        }
        let victim = victim.unwrap();
        let witness = ["core-01", "core-02", "core-03"]
            .into_iter()
            .find(|m| *m != victim)
            .unwrap();
        // What else dies with it: etcd's raft leader (a new one is elected, and it renews
        // every lease), fleet's engine leader (its lease must lapse too).
        let etcd_leader = e
            .sh(
                c,
                victim,
                "ETCDCTL_API=3 etcdctl endpoint status | cut -d, -f5",
            )
            .1
            .trim()
            == "true";
        let engine_leader = e
            .sh(
                c,
                victim,
                "ETCDCTL_API=3 etcdctl get --print-value-only /_coreos.com/fleet/lease/engine-leader | grep -c $(cat /etc/machine-id)",
            )
            .1
            .trim()
            == "1";
        let t = Instant::now();
        e.ok(&["halt", "--cluster", c, "--force", victim]);
        let script = format!(
            "fleetctl list-units --no-legend --fields=machine,active --full | grep -v {host_ip} | grep -c active"
        );
        e.until(c, witness, &script, "1", Duration::from_secs(120));
        println!(
            "  {victim} killed (halt --force; etcd leader: {etcd_leader}, engine leader: {engine_leader}): ha.service active elsewhere after {}",
            secs(t.elapsed())
        );
        if round == 0 {
            e.ok(&[
                "up",
                "--cluster",
                c,
                "--instances",
                "3",
                "--user-data",
                book.to_str().unwrap(),
            ]);
            e.until(
                c,
                witness,
                "fleetctl list-machines --no-legend | wc -l",
                "3",
                Duration::from_secs(120),
            );
        }
    }
    e.ok(&["destroy", "--cluster", c]);
}

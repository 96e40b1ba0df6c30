//! rkt on real machines: three nspawn machines with the book's chapter 4 user-data and
//! flannel (`fixtures/flannel/`). In a machine, `rkt run` of the cluster registry's busybox
//! prints its output, `rkt list` shows the pod exited and `rkt gc` removes it with its
//! network; a pod on the default network gets an address in the upper half of the
//! machine's flannel subnet and reaches a pod on another machine over the overlay; a fleet
//! unit running `rkt run` is scheduled, its pod is the unit's main process (cgroup and
//! journal), it moves to another machine when its machine is halted with `--force`, and
//! `fleetctl stop` stops it cleanly (the unit inactive, not failed, nothing left running).
//! Needs root and the workspace built.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::too_many_lines
)]

mod common;

use common::Cluster;

const MACHINES: [&str; 3] = ["core-01", "core-02", "core-03"];
const BUSYBOX: &str = "docker://ferrite-registry:5000/busybox:latest";

/// `KEY=value` from an env file's text.
fn value(env: &str, key: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
        .to_string()
}

/// The fleet unit: a pod printing a line a second, on the machine's network.
const UNIT: &str = "[Unit]
Description=Hello from rkt

[Service]
ExecStart=/usr/bin/rkt --insecure-options=image run --net=host docker://ferrite-registry:5000/busybox:latest --exec=/bin/sh -- -c \"while true; do echo Hello from rkt; sleep 1; done\"
";

#[test]
fn pods_run_in_machines_on_the_overlay_and_under_fleet() {
    let mut c = Cluster::new("rkt");
    c.up_with(3, "fixtures/flannel/ch4-flannel-user-data.yaml");
    // The cluster registry's busybox, run once: its output, then exited, then collected.
    let (code, out) = c.sh(
        "core-01",
        &format!("sudo rkt --insecure-options=image run {BUSYBOX} --exec=/bin/echo -- hello from rkt 2>/dev/null"),
    );
    assert_eq!((code, out.as_str()), (0, "hello from rkt\n"));
    let list = c.sh("core-01", "sudo rkt list --no-legend").1;
    assert!(
        list.contains("\tbusybox\tferrite-registry-5000/busybox:latest\texited\t"),
        "{list}"
    );
    let images = c.sh("core-01", "sudo rkt image list --no-legend").1;
    assert!(
        images.contains("ferrite-registry-5000/busybox:latest"),
        "{images}"
    );
    let gc = c
        .sh("core-01", "sudo rkt gc --grace-period=0s 2>/dev/null")
        .1;
    assert!(gc.starts_with("Garbage collecting pod \""), "{gc}");
    assert_eq!(c.sh("core-01", "sudo rkt list --no-legend").1, "");
    // The default network: an address of the machine's flannel subnet's upper half, and a
    // pod on core-02 reached from a pod on core-01 over the overlay.
    for m in ["core-01", "core-02"] {
        c.sh_until(m, "cat /run/flannel/subnet.env", "FLANNEL_SUBNET=", 90);
    }
    let subnet2 = value(
        &c.sh("core-02", "cat /run/flannel/subnet.env").1,
        "FLANNEL_SUBNET",
    );
    let prefix2 = subnet2.rsplit_once('.').unwrap().0.to_string();
    let (code, _) = c.sh(
        "core-02",
        &format!("sudo systemd-run --unit=server.service rkt --insecure-options=image run {BUSYBOX} --exec=/bin/httpd -- -f -p 8000 -h /etc"),
    );
    assert_eq!(code, 0);
    let listed = c.sh_until("core-02", "sudo rkt list --no-legend", "default:ip4=", 60);
    let server_ip = listed
        .split("default:ip4=")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        server_ip.starts_with(&format!("{prefix2}.")),
        "{server_ip} in {subnet2}"
    );
    let last: u32 = server_ip.rsplit('.').next().unwrap().parse().unwrap();
    assert!(last > 128, "{server_ip}: the upper half of {subnet2}");
    // The server's unit is the pod: its main process is rkt, its cgroup holds the app.
    let cgroup = c
        .sh(
            "core-02",
            "systemctl show -p MainPID --value server.service",
        )
        .1;
    let main_pid = cgroup.trim().to_string();
    let comm = c.sh("core-02", &format!("cat /proc/{main_pid}/comm")).1;
    assert_eq!(comm.trim(), "rkt");
    let procs = c
        .sh("core-02", "systemctl status server.service --no-pager -l")
        .1;
    assert!(procs.contains("/bin/httpd -f -p 8000"), "{procs}");
    let fetched = c.sh_until(
        "core-01",
        &format!("sudo rkt --insecure-options=image run {BUSYBOX} --exec=/bin/sh -- -c 'ip -4 -o addr show eth0; ping -c1 -W3 {server_ip}; printf \"GET /group HTTP/1.0\\r\\n\\r\\n\" | nc -w 3 {server_ip} 8000' 2>&1"),
        "root:x:0:",
        20,
    );
    let subnet1 = value(
        &c.sh("core-01", "cat /run/flannel/subnet.env").1,
        "FLANNEL_SUBNET",
    );
    let prefix1 = subnet1.rsplit_once('.').unwrap().0.to_string();
    assert!(fetched.contains(&format!("inet {prefix1}.")), "{fetched}");
    assert_eq!(c.sh("core-02", "sudo systemctl stop server.service").0, 0);
    assert_eq!(
        c.sh("core-02", "systemctl is-failed server.service")
            .1
            .trim(),
        "inactive"
    );
    // Collected: no pod, no veth, no namespace file, no address left.
    let gc = c
        .sh("core-02", "sudo rkt gc --grace-period=0s 2>/dev/null")
        .1;
    assert!(gc.contains("Garbage collecting pod"), "{gc}");
    let links = c.sh("core-02", "ip -o link show").1;
    assert!(!links.contains("veth"), "{links}");
    assert_eq!(
        c.sh("core-02", "sudo ls /var/lib/rkt/networks/default").1,
        ""
    );
    assert_eq!(
        c.sh("core-02", "grep -c /var/lib/rkt /proc/self/mountinfo")
            .1
            .trim(),
        "0"
    );
    // A pod on the default network on every machine, to be lost with its machine below.
    for m in MACHINES {
        let (code, out) = c.sh(
            m,
            &format!("sudo systemd-run --unit=bg.service rkt --insecure-options=image run {BUSYBOX} --exec=/bin/sleep -- 100000"),
        );
        assert_eq!(code, 0, "{out}");
        c.sh_until(m, "sudo rkt list --no-legend", "default:ip4=", 30);
    }
    // A fleet unit running rkt: scheduled, a pod under its unit, moved when its machine
    // is lost, stopped cleanly.
    std::fs::write(
        c.machine_dir("core-01")
            .join("root/home/core/rkt-hello.service"),
        UNIT,
    )
    .unwrap();
    let (code, started) = c.sh("core-01", "fleetctl start /home/core/rkt-hello.service");
    assert_eq!(code, 0, "{started}");
    let units = c.sh_until(
        "core-01",
        "fleetctl list-units --no-legend",
        "active\trunning",
        90,
    );
    let ips: Vec<String> = MACHINES
        .iter()
        .map(|m| common::ip_of(&c.ok(&["status"]), m))
        .collect();
    let host_ip = units
        .split_whitespace()
        .nth(1)
        .and_then(|m| m.split('/').nth(1))
        .unwrap()
        .to_string();
    let victim = MACHINES[ips.iter().position(|i| *i == host_ip).unwrap()];
    let witness = MACHINES.iter().find(|m| **m != victim).unwrap();
    let journal = c.sh_until(
        victim,
        "fleetctl journal --lines=3 rkt-hello.service",
        "Hello from rkt",
        30,
    );
    assert!(journal.contains("Hello from rkt"), "{journal}");
    c.sh_until(victim, "sudo rkt list --no-legend", "\trunning\t", 10);
    c.ok(&["halt", "--force", victim]);
    let mut moved = String::new();
    for _ in 0..120 {
        moved = c.sh(witness, "fleetctl list-units --no-legend").1;
        if moved.contains("active\trunning") && !moved.contains(&host_ip) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    assert!(
        moved.contains("active\trunning") && !moved.contains(&host_ip),
        "rkt-hello.service never moved off {victim}: {moved}"
    );
    let new_ip = moved
        .split_whitespace()
        .nth(1)
        .and_then(|m| m.split('/').nth(1))
        .unwrap()
        .to_string();
    let new_host = MACHINES[ips.iter().position(|i| *i == new_ip).unwrap()];
    c.sh_until(
        new_host,
        "fleetctl journal --lines=3 rkt-hello.service",
        "Hello from rkt",
        30,
    );
    let (code, out) = c.sh(witness, "fleetctl stop rkt-hello.service");
    assert_eq!(code, 0, "{out}");
    c.sh_until(
        new_host,
        "systemctl is-failed rkt-hello.service",
        "inactive",
        30,
    );
    let list = c.sh(new_host, "sudo rkt list --no-legend").1;
    // The unit's pod (host network) exited; only the machine's bg pod runs.
    assert!(list.contains("\texited\t"), "{list}");
    assert!(
        list.lines()
            .filter(|l| l.contains("\trunning\t"))
            .all(|l| l.contains("default:ip4=")),
        "{list}"
    );
    let (_, sleeping) = c.sh(new_host, "pgrep -f 'Hello [f]rom rkt' || true");
    assert_eq!(sleeping.trim(), "", "a pod process outlived its unit");
    // The lost machine back: its pods read as exited (or already marked by rkt-gc.timer at
    // boot), and gc leaves no pod, address, veth or mount of them.
    c.ok(&["up", "--instances", "3"]);
    let list = c.sh_until(victim, "sudo rkt list --no-legend", "exited", 60);
    let why = c
        .sh(
            victim,
            "sudo rkt list --full; systemctl list-units --all --no-pager | grep -i -e rkt -e bg -e hello; sudo journalctl -b --no-pager | grep -i -e rkt -e fleet | tail -30",
        )
        .1;
    assert!(!list.contains("\trunning\t"), "{list}\n{why}");
    let gc = c.sh(victim, "sudo rkt gc --grace-period=0s 2>/dev/null").1;
    assert!(gc.contains("Garbage collecting pod"), "{gc}");
    assert_eq!(c.sh(victim, "sudo rkt list --no-legend").1, "");
    assert_eq!(c.sh(victim, "sudo ls /var/lib/rkt/networks/default").1, "");
    assert!(!c.sh(victim, "ip -o link show").1.contains("veth"));
    assert_eq!(
        c.sh(victim, "grep -c /var/lib/rkt /proc/self/mountinfo")
            .1
            .trim(),
        "0"
    );
    c.destroy_and_check();
}

//! The cluster network on real machines: three nspawn machines with the book's chapter 4
//! user-data plus `flanneld.service` and the docs' drop-in that sets the network config with
//! `etcdctl set` (a 172.x network; tests never use 10/8). Each machine's docker0 lies in its
//! flannel subnet with the vxlan MTU; a container on core-01 reaches containers on core-02
//! and core-03 by their overlay addresses (ping and TCP); flanneld restarted keeps its
//! subnet and its containers stay reachable; a machine halted with `--force` leaves the
//! others' routes once its lease (TTL 20 s here) expires. Needs root and the workspace built.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::too_many_lines
)]

mod common;

use std::time::{Duration, Instant};

use common::{import_busybox, Cluster};

const MACHINES: [&str; 3] = ["core-01", "core-02", "core-03"];

/// `KEY=value` from an env file's text.
fn value(env: &str, key: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
        .to_string()
}

/// Runs `script` in a fresh busybox container on `machine`: (exit code, output).
fn in_container(c: &Cluster, machine: &str, script: &str) -> (i32, String) {
    c.sh(
        machine,
        &format!(
            "docker run --rm --pull=never busybox:local sh -c {} 2>&1",
            host_quote(script)
        ),
    )
}

fn host_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn containers_reach_each_other_across_machines() {
    let mut c = Cluster::new("flannel");
    c.up_with(3, "fixtures/flannel/ch4-flannel-user-data.yaml");
    // flanneld on every machine, each with its own subnet of 172.30.0.0/16.
    let mut subnets = Vec::new();
    for m in MACHINES {
        c.sh_until(m, "systemctl is-active flanneld", "active", 90);
        let env = c.sh_until(m, "cat /run/flannel/subnet.env", "FLANNEL_SUBNET=", 10);
        assert_eq!(
            value(&env, "FLANNEL_NETWORK"),
            "172.30.0.0/16",
            "{m}: {env}"
        );
        assert_eq!(value(&env, "FLANNEL_MTU"), "1450", "{m}: {env}");
        assert_eq!(value(&env, "FLANNEL_IPMASQ"), "true", "{m}: {env}");
        let opts = c.sh(m, "cat /run/flannel_docker_opts.env").1;
        let subnet = value(&env, "FLANNEL_SUBNET");
        assert_eq!(
            opts,
            format!(
                "DOCKER_OPT_BIP=\"--bip={subnet}\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n"
            ),
            "{m}"
        );
        // cloud-config's `flannel: interface: $public_ipv4`, through options.env.
        let options = c.sh(m, "cat /run/flannel/options.env").1;
        assert!(
            options.starts_with("FLANNELD_IFACE=172.20."),
            "{m}: {options}"
        );
        subnets.push(subnet);
    }
    let mut distinct = subnets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{subnets:?}");
    // The book's etcdctl sees what flanneld reads and writes (etcd's v2 keyspace).
    let (_, config) = c.sh("core-02", "etcdctl get /coreos.com/network/config");
    assert_eq!(config.trim(), r#"{ "Network": "172.30.0.0/16" }"#);
    let (_, leases) = c.sh("core-02", "etcdctl ls /coreos.com/network/subnets");
    assert_eq!(leases.lines().count(), 3, "{leases}");

    // Containers: a server on core-02 and core-03, a client on core-01.
    let page: &[u8] = b"hello over the overlay\n";
    for m in MACHINES {
        import_busybox(&c, m, &[("www/index.html", page)]);
    }
    let mut servers = Vec::new();
    for (i, m) in MACHINES.iter().enumerate().skip(1) {
        let (code, out) = c.sh(
            m,
            "docker run -d --pull=never --name srv busybox:local httpd -f -p 8080 -h /www >/dev/null && docker inspect -f '{{.NetworkSettings.IPAddress}}' srv",
        );
        assert_eq!(code, 0, "{m}: {out}");
        let ip = out.trim().to_string();
        let prefix = subnets[i].rsplit_once('.').unwrap().0.to_string();
        assert!(
            ip.starts_with(&format!("{prefix}.")),
            "{m}: container {ip} outside {}",
            subnets[i]
        );
        let (_, bridge) = c.sh(m, "ip -4 -o addr show docker0");
        assert!(bridge.contains(&subnets[i]), "{m}: docker0 {bridge}");
        servers.push(ip);
    }
    let get =
        |ip: &str| format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} 8080");
    for ip in &servers {
        let (code, out) = in_container(
            &c,
            "core-01",
            &format!(
                "cat /sys/class/net/eth0/mtu; ping -c 1 -W 5 {ip} && {}",
                get(ip)
            ),
        );
        assert_eq!(code, 0, "core-01 → {ip}: {out}");
        assert!(out.starts_with("1450\n"), "the container's MTU: {out}");
        assert!(
            out.contains("hello over the overlay"),
            "core-01 → {ip}: {out}"
        );
    }

    // flanneld restarted: the same subnet, the containers still reachable.
    let before = c.sh("core-02", "cat /run/flannel/subnet.env").1;
    assert_eq!(c.sh("core-02", "sudo systemctl restart flanneld").0, 0);
    c.sh_until("core-02", "systemctl is-active flanneld", "active", 30);
    assert_eq!(c.sh("core-02", "cat /run/flannel/subnet.env").1, before);
    let (code, out) = in_container(&c, "core-01", &get(&servers[0]));
    assert!(
        code == 0 && out.contains("hello over the overlay"),
        "after the restart: {out}"
    );

    // core-03 halted with --force: its lease expires (TTL 20 s) and core-01 drops its route.
    let gone = subnets[2].replace(".1/24", ".0/24");
    assert!(c.sh("core-01", "ip route").1.contains(&gone));
    c.ok(&["halt", "--force", "core-03"]);
    let halted = Instant::now();
    loop {
        let routes = c.sh("core-01", "ip route").1;
        if !routes.contains(&gone) {
            break;
        }
        assert!(
            halted.elapsed() < Duration::from_secs(90),
            "core-03's subnet {gone} still routed on core-01: {routes}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "core-03 halted → its route gone from core-01: {:.1} s (lease TTL 20 s)",
        halted.elapsed().as_secs_f64()
    );
    let fdb = c.sh("core-01", "/usr/sbin/bridge fdb show dev flannel.1").1;
    assert_eq!(
        fdb.lines().filter(|l| l.contains(" dst ")).count(),
        1,
        "{fdb}"
    );
    // core-02 is still reachable.
    let (code, out) = in_container(&c, "core-01", &get(&servers[0]));
    assert!(code == 0 && out.contains("hello over the overlay"), "{out}");
    c.destroy_and_check();
}

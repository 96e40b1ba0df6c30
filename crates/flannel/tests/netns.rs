//! flanneld on three "hosts" (network namespaces this test makes, on a bridge in a fourth),
//! with a real etcd serving the v2 API in the bridge's namespace: leases, subnet.env, the
//! vxlan data path (ping between the hosts' overlay addresses), a flanneld killed and
//! restarted keeping its subnet and its traffic, a host lost and its lease expiring out of
//! the others' routes, and bad configs refused until fixed. Needs root, `ip` and etcd.
//! Addresses: underlay 172.29.<n>.0/24, overlay 172.30.0.0/16 (never 10/8).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FLANNELD: &str = env!("CARGO_BIN_EXE_flanneld");

fn sh(cmd: &str) -> (bool, String) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn ok(cmd: &str) -> String {
    let (good, out) = sh(cmd);
    assert!(good, "{cmd}: {out}");
    out
}

/// The namespaces and processes of one test, removed when dropped.
struct Lab {
    tag: String,
    /// 172.29.<net>.0/24.
    net: u8,
    dir: tempfile::TempDir,
    etcd: Option<Child>,
    flannelds: Vec<(String, Child)>,
}

impl Lab {
    fn new(hosts: usize) -> Self {
        let uid = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "needs root"
        );
        // Two labs may run at once in this process: each gets its own tag and network.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("fl{}{k}", pid % 100_000);
        let net = u8::try_from((pid + k * 101) % 200 + 20).unwrap();
        let mut lab = Self {
            tag,
            net,
            dir: tempfile::tempdir().unwrap(),
            etcd: None,
            flannelds: Vec::new(),
        };
        let (t, n) = (lab.tag.clone(), lab.net);
        ok(&format!(
            "ip netns add {t}-sw && ip -n {t}-sw link set lo up && ip -n {t}-sw link add br0 type bridge && ip -n {t}-sw addr add 172.29.{n}.1/24 dev br0 && ip -n {t}-sw link set br0 up"
        ));
        for h in 1..=hosts {
            ok(&format!(
                "ip netns add {t}-h{h} && ip -n {t}-h{h} link set lo up && ip link add {t}h{h} netns {t}-sw type veth peer name eth0 netns {t}-h{h} && ip -n {t}-sw link set {t}h{h} master br0 up && ip -n {t}-h{h} addr add 172.29.{n}.{}/24 dev eth0 && ip -n {t}-h{h} link set eth0 up && ip -n {t}-h{h} route add default via 172.29.{n}.1",
                10 + h
            ));
        }
        let data = lab.dir.path().join("etcd");
        let url = format!("http://172.29.{n}.1:2379");
        let etcd = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{t}-sw"),
                "etcd",
                "--enable-v2",
                "--data-dir",
            ])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        lab.etcd = Some(etcd);
        let t0 = Instant::now();
        while !lab.etcdctl("ls /").0 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "etcd never answered"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        lab
    }

    fn endpoint(&self) -> String {
        format!("http://172.29.{}.1:2379", self.net)
    }

    /// etcdctl (v2) in the switch namespace.
    fn etcdctl(&self, args: &str) -> (bool, String) {
        sh(&format!(
            "ETCDCTL_API=2 ip netns exec {}-sw etcdctl --endpoints {} {args}",
            self.tag,
            self.endpoint()
        ))
    }

    fn in_host(&self, h: usize, cmd: &str) -> (bool, String) {
        sh(&format!("ip netns exec {}-h{h} {cmd}", self.tag))
    }

    fn env_file(&self, h: usize, name: &str) -> PathBuf {
        self.dir.path().join(format!("h{h}-{name}.env"))
    }

    fn log(&self, h: usize, name: &str) -> PathBuf {
        self.dir.path().join(format!("h{h}-{name}.log"))
    }

    /// Starts flanneld on host `h` as `name` with `extra` flags; its log goes to a file.
    fn flanneld(&mut self, h: usize, name: &str, extra: &[&str]) {
        self.flanneld_env(h, name, extra, &[]);
    }

    /// [`Lab::flanneld`] with `FLANNELD_*` variables (what options.env sets).
    fn flanneld_env(&mut self, h: usize, name: &str, extra: &[&str], env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(h, name))
            .unwrap();
        let iface: &[&str] = if env.iter().any(|(k, _)| *k == "FLANNELD_IFACE") {
            &[]
        } else {
            &["--iface", "eth0"]
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-h{h}", self.tag), FLANNELD])
            .args(["--etcd-endpoints", &self.endpoint()])
            .args(iface)
            .arg("--subnet-file")
            .arg(self.env_file(h, name))
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.flannelds.push((format!("h{h}-{name}"), child));
    }

    fn kill(&mut self, h: usize, name: &str) {
        let id = format!("h{h}-{name}");
        let i = self.flannelds.iter().position(|(n, _)| *n == id).unwrap();
        let (_, mut c) = self.flannelds.remove(i);
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    eprintln!("--- {}\n{text}", e.path().display());
                }
            }
        }
        for (_, c) in &mut self.flannelds {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(c) = &mut self.etcd {
            let _ = c.kill();
            let _ = c.wait();
        }
        let (_, list) = sh("ip netns list");
        for l in list.lines() {
            let name = l.split_whitespace().next().unwrap_or_default();
            if name.starts_with(&format!("{}-", self.tag)) {
                let _ = sh(&format!("ip netns del {name}"));
            }
        }
    }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> Option<String>) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what} (after {secs} s)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read_env(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn value<'a>(env: &'a str, key: &str) -> &'a str {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
}

#[test]
fn three_hosts_over_vxlan() {
    let mut lab = Lab::new(4);
    assert!(
        lab.etcdctl(r#"set /coreos.com/network/config '{"Network":"172.30.0.0/16"}'"#)
            .0
    );
    let t0 = Instant::now();
    for h in 1..=3 {
        let ttl: &[&str] = if h == 3 {
            &["--subnet-lease-ttl", "12"]
        } else {
            &[]
        };
        let mut args = vec!["--ip-masq"];
        args.extend_from_slice(ttl);
        lab.flanneld(h, "main", &args);
    }
    let mut envs = Vec::new();
    for h in 1..=3 {
        let p = lab.env_file(h, "main");
        envs.push(wait_for(&format!("h{h}'s subnet.env"), 30, || read_env(&p)));
    }
    eprintln!(
        "three flanneld to subnet.env: {} ms",
        t0.elapsed().as_millis()
    );
    let subnets: Vec<String> = envs
        .iter()
        .map(|e| value(e, "FLANNEL_SUBNET").to_string())
        .collect();
    for e in &envs {
        assert_eq!(value(e, "FLANNEL_NETWORK"), "172.30.0.0/16", "{e}");
        assert_eq!(value(e, "FLANNEL_MTU"), "1450", "{e}");
        assert_eq!(value(e, "FLANNEL_IPMASQ"), "true", "{e}");
        assert!(
            value(e, "FLANNEL_SUBNET").starts_with("172.30.")
                && value(e, "FLANNEL_SUBNET").ends_with(".1/24"),
            "{e}"
        );
    }
    assert!(
        subnets[0] != subnets[1] && subnets[1] != subnets[2] && subnets[0] != subnets[2],
        "{subnets:?}"
    );
    // The leases, as flannel writes them.
    let (_, ls) = lab.etcdctl("ls /coreos.com/network/subnets");
    assert_eq!(ls.lines().count(), 3, "{ls}");
    let key = ls.lines().next().unwrap().trim().to_string();
    let (_, v) = lab.etcdctl(&format!("get {key}"));
    assert!(
        v.contains("\"BackendType\":\"vxlan\"") && v.contains("\"VtepMAC\":\""),
        "{v}"
    );
    // A bridge with the FLANNEL_SUBNET address on each host stands in for docker0.
    for h in 1..=3 {
        let s = &subnets[h - 1];
        assert!(lab.in_host(h, &format!("sh -c 'ip link add docker0 type bridge && ip addr add {s} dev docker0 && ip link set docker0 up'")).0);
    }
    let addr = |h: usize| subnets[h - 1].trim_end_matches("/24").to_string();
    // Every host reaches the others' overlay addresses.
    for (from, to) in [(1, 2), (1, 3), (2, 3), (3, 1)] {
        let target = addr(to);
        wait_for(&format!("h{from} pings h{to} ({target})"), 20, || {
            lab.in_host(from, &format!("ping -c 1 -W 1 {target}"))
                .0
                .then_some(String::new())
        });
    }
    // The kernel state as flannel's vxlan backend leaves it.
    let (_, link) = lab.in_host(1, "ip -d link show flannel.1");
    assert!(
        link.contains("vxlan id 1") && link.contains("mtu 1450") && link.contains("nolearning"),
        "{link}"
    );
    let (_, routes) = lab.in_host(1, "ip route");
    for h in [2, 3] {
        let net = subnets[h - 1].replace(".1/24", ".0/24");
        assert!(
            routes.contains(&format!(
                "{net} via {} dev flannel.1 onlink",
                net.trim_end_matches("/24")
            )),
            "{routes}"
        );
    }
    let (_, nat) = lab.in_host(1, "iptables -t nat -S");
    assert!(
        nat.contains("-A POSTROUTING -s 172.30.0.0/16 -j FLANNEL")
            && nat.contains("-A FLANNEL -d 172.30.0.0/16 -j ACCEPT"),
        "{nat}"
    );

    // flanneld killed (SIGKILL) and started again: same subnet, traffic never cut.
    lab.kill(2, "main");
    assert!(
        lab.in_host(1, &format!("ping -c 1 -W 1 {}", addr(2))).0,
        "traffic cut while flanneld is down"
    );
    std::fs::remove_file(lab.env_file(2, "main")).unwrap();
    lab.flanneld(2, "main", &["--ip-masq"]);
    let p = lab.env_file(2, "main");
    let again = wait_for("h2's subnet.env after restart", 30, || read_env(&p));
    assert_eq!(
        value(&again, "FLANNEL_SUBNET"),
        subnets[1],
        "a restart changed the subnet"
    );
    assert!(lab.in_host(1, &format!("ping -c 1 -W 1 {}", addr(2))).0);

    // h3 lost (flanneld killed, no renewal): its lease expires (TTL 12 s) and the others
    // drop its route.
    lab.kill(3, "main");
    let h3net = subnets[2].replace(".1/24", ".0/24");
    wait_for(
        "h3's route gone from h1 after its lease expired",
        40,
        || {
            let (_, r) = lab.in_host(1, "ip route");
            (!r.contains(&h3net)).then_some(r)
        },
    );
    let (_, fdb) = lab.in_host(1, "bridge fdb show dev flannel.1");
    assert_eq!(
        fdb.lines().filter(|l| l.contains("dst")).count(),
        1,
        "{fdb}"
    );
    let log = std::fs::read_to_string(lab.log(1, "main")).unwrap();
    assert!(log.contains(&format!("subnet {h3net} of")), "{log}");

    bad_configs_are_refused_until_fixed(&mut lab);
}

/// On host 4, under its own prefix: nothing is set up while the config is missing,
/// malformed or overlapping the host's network; each problem is logged once with the key;
/// a fixed config is taken without a restart.
fn bad_configs_are_refused_until_fixed(lab: &mut Lab) {
    let key = "/bad/network/config";
    assert!(
        lab.etcdctl(&format!("set {key} '{{\"Network\": \"172.31.0.0/16\"'"))
            .0
    );
    // The prefix as cloud-config's `etcd_prefix` gives it: through the environment.
    lab.flanneld_env(4, "bad", &[], &[("FLANNELD_ETCD_PREFIX", "/bad/network")]);
    let log = lab.log(4, "bad");
    wait_for("the malformed config logged", 10, || {
        read_env(&log).filter(|l| l.contains(&format!("network config at {key}: not valid JSON")))
    });
    let n = lab.net;
    assert!(
        lab.etcdctl(&format!(
            "set {key} '{{\"Network\": \"172.29.{n}.0/25\",\"Backend\":{{\"VNI\":7}}}}'"
        ))
        .0
    );
    wait_for("the overlap logged", 10, || {
        read_env(&log)
            .filter(|l| l.contains("overlaps this machine's network") && l.contains("on eth0"))
    });
    assert!(
        lab.etcdctl(&format!(
            "set {key} '{{\"Network\": \"172.31.0.0/16\",\"Backend\":{{\"Type\":\"ipip\"}}}}'"
        ))
        .0
    );
    wait_for("the unknown backend logged", 10, || {
        read_env(&log).filter(|l| l.contains("unknown Type \"ipip\""))
    });
    // Nothing done meanwhile: no device, no file, no lease.
    assert!(!lab.in_host(4, "ip link show flannel.7").0);
    assert!(!lab.env_file(4, "bad").exists());
    assert!(!lab.etcdctl("ls /bad/network/subnets").1.contains("172.31"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("not valid JSON").count(),
        1,
        "logged once: {text}"
    );
    assert!(
        lab.etcdctl(&format!(
            "set {key} '{{\"Network\": \"172.31.0.0/16\",\"Backend\":{{\"VNI\":7}}}}'"
        ))
        .0
    );
    let p = lab.env_file(4, "bad");
    let env = wait_for("subnet.env once the config is fixed", 10, || read_env(&p));
    assert!(
        value(&env, "FLANNEL_SUBNET").starts_with("172.31."),
        "{env}"
    );
    assert!(lab.in_host(4, "ip link show flannel.7").0);

    // A network too small for the machines: its one subnet leased by another machine.
    let key = "/small/network/config";
    assert!(lab.etcdctl(&format!("set {key} '{{\"Network\":\"172.27.0.0/29\",\"SubnetLen\":30,\"Backend\":{{\"VNI\":9}}}}'")).0);
    assert!(lab.etcdctl(r#"set /small/network/subnets/172.27.0.4-30 '{"PublicIP":"172.16.99.1","BackendType":"vxlan","BackendData":{"VtepMAC":"02:00:00:00:00:01"}}'"#).0);
    lab.flanneld_env(
        4,
        "small",
        &[],
        &[("FLANNELD_ETCD_PREFIX", "/small/network")],
    );
    let log = lab.log(4, "small");
    wait_for("the full network logged", 10, || {
        read_env(&log).filter(|l| l.contains(&format!("network config at {key}: no free subnet left (1 between SubnetMin and SubnetMax, all leased)")))
    });
    assert!(!lab.env_file(4, "small").exists());
    // The other machine's lease gone: this one takes the subnet.
    assert!(lab.etcdctl("rm /small/network/subnets/172.27.0.4-30").0);
    let p = lab.env_file(4, "small");
    let env = wait_for("subnet.env once a subnet is free", 10, || read_env(&p));
    assert_eq!(value(&env, "FLANNEL_SUBNET"), "172.27.0.5/30", "{env}");
}

/// host-gw: a route per remote subnet via the remote host's address on the shared link,
/// re-added by the 10 s recheck when something deletes it.
#[test]
fn two_hosts_over_host_gw() {
    let mut lab = Lab::new(2);
    assert!(lab
        .etcdctl(r#"set /coreos.com/network/config '{"Network":"172.28.0.0/16","Backend":{"Type":"host-gw"}}'"#)
        .0);
    lab.flanneld(1, "gw", &[]);
    // The interface as cloud-config's `interface: $public_ipv4` gives it: an address, in
    // the environment.
    let ip = format!("172.29.{}.12", lab.net);
    lab.flanneld_env(2, "gw", &[], &[("FLANNELD_IFACE", &ip)]);
    let mut subnets = Vec::new();
    for h in 1..=2 {
        let p = lab.env_file(h, "gw");
        let env = wait_for(&format!("h{h}'s subnet.env"), 30, || read_env(&p));
        assert_eq!(value(&env, "FLANNEL_MTU"), "1500", "{env}");
        assert_eq!(value(&env, "FLANNEL_IPMASQ"), "false", "{env}");
        subnets.push(value(&env, "FLANNEL_SUBNET").to_string());
    }
    let (_, lease) = lab.etcdctl(&format!(
        "get /coreos.com/network/subnets/{}",
        subnets[1].replace(".1/24", ".0-24")
    ));
    assert_eq!(
        lease.trim(),
        format!(
            r#"{{"PublicIP":"172.29.{}.12","BackendType":"host-gw"}}"#,
            lab.net
        )
    );
    for h in 1..=2 {
        let s = &subnets[h - 1];
        assert!(lab.in_host(h, &format!("sh -c 'ip link add docker0 type bridge && ip addr add {s} dev docker0 && ip link set docker0 up'")).0);
    }
    let remote = subnets[1].replace(".1/24", ".0/24");
    let route = format!("{remote} via 172.29.{}.12 dev eth0", lab.net);
    wait_for("h1's route to h2's subnet", 10, || {
        lab.in_host(1, "ip route")
            .1
            .contains(&route)
            .then_some(String::new())
    });
    let target = subnets[1].trim_end_matches("/24").to_string();
    assert!(lab.in_host(1, &format!("ping -c 1 -W 2 {target}")).0);
    assert!(
        !lab.in_host(1, "ip link show flannel.1").0,
        "host-gw made a vxlan device"
    );
    // Deleted by hand: back within the recheck.
    assert!(lab.in_host(1, &format!("ip route del {remote}")).0);
    wait_for("the deleted route re-added", 20, || {
        lab.in_host(1, "ip route")
            .1
            .contains(&route)
            .then_some(String::new())
    });
    assert!(lab.in_host(1, &format!("ping -c 1 -W 2 {target}")).0);
}

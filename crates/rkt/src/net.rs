//! Pod networking: `host` (the pod shares the machine's network), `none` (only loopback),
//! and `default`: a network namespace of the pod's own, joined by a veth pair to the bridge
//! `rkt0`, an address from the network's range, a default route through the bridge, and
//! masquerading of traffic leaving the range.
//!
//! The default network's range is rkt's `172.16.28.0/24`, except on a machine where
//! flannel runs (`/run/flannel/subnet.env`): there it is the upper half of the machine's
//! flannel subnet (e.g. `172.30.5.128/25` of `172.30.5.0/24`), so pods are reachable from
//! every machine of the overlay, while Docker's bridge keeps the lower addresses (Docker
//! allocates from the bottom of its subnet; a machine with more than 126 Docker containers
//! would reach into the pods' half). Flannel's own masquerading covers that range.
//!
//! The namespace is a file in the pod's directory (`netns`, a bind mount of the namespace),
//! so it outlives no one: [`teardown`] unmounts it (the veth pair goes with it) and frees
//! the address. Addresses are files `<dir>/networks/default/<ip>` holding the pod's UUID,
//! created with `O_EXCL`: two pods never get the same one.
//!
//! Netlink through the `rtnetlink` crate, on a single-threaded runtime in a thread of its
//! own (a netlink socket works in the namespace of the thread that opens it).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::pod::{self, NetInfo, Pod, RunOptions};
use crate::Error;

/// The bridge of the default network.
pub const BRIDGE: &str = "rkt0";
/// rkt's default network range.
pub const DEFAULT_RANGE: &str = "172.16.28.0/24";
/// Where flanneld writes the machine's subnet.
pub const FLANNEL_ENV: &str = "/run/flannel/subnet.env";

/// The default network's range and MTU on this machine, and whether flannel provides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub net: Ipv4Net,
    pub mtu: u32,
    pub flannel: bool,
}

/// The range from a flannel `subnet.env`, or rkt's default.
#[must_use]
pub fn range_from(flannel_env: Option<&str>) -> Range {
    if let Some(text) = flannel_env {
        let var = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::trim)
        };
        if let Some(subnet) = var("FLANNEL_SUBNET").and_then(|s| s.parse::<Ipv4Net>().ok()) {
            let net = subnet.trunc();
            if let Some(upper) = net
                .subnets(net.prefix_len() + 1)
                .ok()
                .and_then(|mut s| s.nth(1))
            {
                let mtu = var("FLANNEL_MTU")
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(1500);
                return Range {
                    net: upper,
                    mtu,
                    flannel: true,
                };
            }
        }
    }
    Range {
        net: DEFAULT_RANGE.parse().unwrap_or_default(),
        mtu: 1500,
        flannel: false,
    }
}

fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> Error + '_ {
    move |e| Error::Io {
        path: format!("netlink: {what}"),
        source: std::io::Error::other(e.to_string()),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

const EEXIST: i32 = 17;

/// Runs `f` on a fresh single-threaded runtime in a new thread, in network namespace
/// `ns` if given (else the caller's).
fn in_thread<T: Send + 'static>(
    ns: Option<std::fs::File>,
    f: impl FnOnce(
            rtnetlink::Handle,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Error>>>>
        + Send
        + 'static,
) -> Result<T, Error> {
    let t = std::thread::Builder::new().spawn(move || -> Result<T, Error> {
        if let Some(ns) = &ns {
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| Error::io(Path::new("setns"), e.into()))?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| Error::io(Path::new("runtime"), e))?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection()
                .map_err(|e| Error::io(Path::new("netlink socket"), e))?;
            tokio::spawn(conn);
            f(handle).await
        })
    });
    t.map_err(|e| Error::io(Path::new("netlink thread"), e))?
        .join()
        .map_err(|_| Error::io(Path::new("netlink"), std::io::Error::other("thread failed")))?
}

/// Makes a new network namespace and binds it at `file`.
fn new_netns(file: &Path) -> Result<(), Error> {
    let f = file.to_path_buf();
    let t = std::thread::Builder::new().spawn(move || -> Result<(), Error> {
        #[allow(deprecated)] // NEWNET only: see stage1::unshare
        rustix::thread::unshare(rustix::thread::UnshareFlags::NEWNET)
            .map_err(|e| Error::io(&f, std::io::Error::other(format!("unshare: {e}"))))?;
        std::fs::File::create(&f).map_err(|e| Error::io(&f, e))?;
        rustix::mount::mount_bind("/proc/thread-self/ns/net", &f)
            .map_err(|e| Error::io(&f, std::io::Error::other(format!("bind mount: {e}"))))
    });
    t.map_err(|e| Error::io(file, e))?
        .join()
        .map_err(|_| Error::io(file, std::io::Error::other("thread failed")))?
}

/// Sets up the pod's network as `o.net` says; returns the namespace to enter (none for
/// `host`), and records the networks in `net.json`.
///
/// # Errors
/// [`Error::Usage`] for an unknown network, or what failed while wiring it.
pub fn setup(
    pod: &Pod,
    o: &RunOptions,
    m: &crate::pod::PodManifest,
) -> Result<Option<std::fs::File>, Error> {
    let kind = o.net.as_str();
    if kind == "host" {
        return Ok(None);
    }
    if kind != "none" && kind != "default" {
        return Err(Error::Usage(format!(
            "--net={kind}: this rkt has the networks host, none and default"
        )));
    }
    let file = pod.path.join("netns");
    new_netns(&file)?;
    let ns = || std::fs::File::open(&file).map_err(|e| Error::io(&file, e));
    in_thread(Some(ns()?), |h| {
        Box::pin(async move {
            let lo = link_index(&h, "lo").await?;
            h.link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .map_err(nl("lo up"))
        })
    })?;
    if kind == "none" {
        return Ok(Some(ns()?));
    }
    let flannel = std::fs::read_to_string(FLANNEL_ENV).ok();
    let range = range_from(flannel.as_deref());
    let dir = data_dir_of(pod).join("networks/default");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let ip = allocate(&dir, &range.net, &pod.uuid)?;
    let gateway = range
        .net
        .hosts()
        .next()
        .ok_or_else(|| Error::Usage(format!("network range {} is too small", range.net)))?;
    let host_if = format!("veth{}", &uuid_hex(&pod.uuid)[..11]);
    let peer = format!("rkt{}", &uuid_hex(&pod.uuid)[..11]);
    let net = range.net;
    let mtu = range.mtu;
    let wire = Wire {
        host_if: host_if.clone(),
        peer,
        gateway,
        ip,
        net,
        mtu,
    };
    wire.connect(ns()?, ns()?)?;
    enable_forwarding();
    if !range.flannel {
        masquerade(&range.net)?;
    }
    forward_ports(pod, m, ip)?;
    let info = vec![NetInfo {
        name: "default".into(),
        ip: ip.to_string(),
        interface: "eth0".into(),
        host_interface: host_if,
    }];
    pod::write_file(
        &pod.path.join("net.json"),
        &serde_json::to_vec_pretty(&info).unwrap_or_default(),
    )?;
    Ok(Some(ns()?))
}

/// A pod's veth pair to make: its host end on the bridge, its other end `eth0` in the pod.
struct Wire {
    host_if: String,
    peer: String,
    gateway: Ipv4Addr,
    ip: Ipv4Addr,
    net: Ipv4Net,
    mtu: u32,
}

impl Wire {
    /// Makes the pair (bridge made if missing) and moves one end into namespace `nsfd`,
    /// then configures that end from inside (`inside`: the same namespace).
    fn connect(&self, nsfd: std::fs::File, inside: std::fs::File) -> Result<(), Error> {
        let (hi, pe, gateway, net, mtu) = (
            self.host_if.clone(),
            self.peer.clone(),
            self.gateway,
            self.net,
            self.mtu,
        );
        in_thread(None, move |h| {
            Box::pin(async move {
                let br = bridge(&h, gateway, net.prefix_len(), mtu).await?;
                h.link()
                    .add(LinkVeth::new(&hi, &pe).mtu(mtu).build())
                    .execute()
                    .await
                    .map_err(nl("adding the veth pair"))?;
                let host_idx = link_index(&h, &hi).await?;
                h.link()
                    .set(
                        LinkUnspec::new_with_index(host_idx)
                            .controller(br)
                            .up()
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(nl("attaching the veth to the bridge"))?;
                let peer_idx = link_index(&h, &pe).await?;
                h.link()
                    .set(
                        LinkUnspec::new_with_index(peer_idx)
                            .setns_by_fd(nsfd.as_raw_fd())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(nl("moving the veth into the pod"))?;
                Ok(())
            })
        })?;
        let (pe, ip, gateway, net) = (self.peer.clone(), self.ip, self.gateway, self.net);
        in_thread(Some(inside), move |h| {
            Box::pin(async move {
                let idx = link_index(&h, &pe).await?;
                h.link()
                    .set(
                        LinkUnspec::new_with_index(idx)
                            .name("eth0".to_string())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(nl("renaming eth0"))?;
                h.address()
                    .add(idx, std::net::IpAddr::V4(ip), net.prefix_len())
                    .execute()
                    .await
                    .map_err(nl("adding the pod's address"))?;
                h.link()
                    .set(LinkUnspec::new_with_index(idx).up().build())
                    .execute()
                    .await
                    .map_err(nl("eth0 up"))?;
                h.route()
                    .add(
                        RouteMessageBuilder::<Ipv4Addr>::new()
                            .gateway(gateway)
                            .output_interface(idx)
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(nl("the default route"))
            })
        })?;
        Ok(())
    }
}

fn uuid_hex(uuid: &str) -> String {
    let h: String = uuid.chars().filter(char::is_ascii_hexdigit).collect();
    format!("{h:0<32}")
}

/// The data directory a pod lives under (`<dir>/pods/<phase>/<uuid>`).
fn data_dir_of(pod: &Pod) -> PathBuf {
    pod.path
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

async fn link_index(h: &rtnetlink::Handle, name: &str) -> Result<u32, Error> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(l.header.index),
        Ok(None) | Err(_) => Err(Error::Io {
            path: format!("netlink: link {name}"),
            source: std::io::Error::other("no such link"),
        }),
    }
}

/// The bridge, made (with the gateway address) if missing; its index.
async fn bridge(h: &rtnetlink::Handle, gw: Ipv4Addr, len: u8, mtu: u32) -> Result<u32, Error> {
    if let Ok(i) = link_index(h, BRIDGE).await {
        return Ok(i);
    }
    match h
        .link()
        .add(LinkBridge::new(BRIDGE).mtu(mtu).up().build())
        .execute()
        .await
    {
        Err(e) if errno(&e) == Some(EEXIST) => return link_index(h, BRIDGE).await,
        other => other.map_err(nl("adding the bridge"))?,
    }
    let i = link_index(h, BRIDGE).await?;
    match h
        .address()
        .add(i, std::net::IpAddr::V4(gw), len)
        .execute()
        .await
    {
        Err(e) if errno(&e) == Some(EEXIST) => {}
        other => other.map_err(nl("the bridge's address"))?,
    }
    h.link()
        .set(LinkUnspec::new_with_index(i).up().build())
        .execute()
        .await
        .map_err(nl("bridge up"))?;
    Ok(i)
}

/// Takes the first free address of `net` (after the gateway) for `uuid`.
fn allocate(dir: &Path, net: &Ipv4Net, uuid: &str) -> Result<Ipv4Addr, Error> {
    for ip in net.hosts().skip(1) {
        let f = dir.join(ip.to_string());
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&f)
        {
            Ok(mut file) => {
                use std::io::Write as _;
                file.write_all(uuid.as_bytes())
                    .map_err(|e| Error::io(&f, e))?;
                return Ok(ip);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(&f, e)),
        }
    }
    Err(Error::pod(
        uuid,
        format!("no free address left in {net} (rkt gc frees those of exited pods)"),
    ))
}

fn enable_forwarding() {
    let p = Path::new("/proc/sys/net/ipv4/ip_forward");
    if std::fs::read_to_string(p).is_ok_and(|s| s.trim() != "1") {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"1"));
    }
}

/// Masquerades traffic from `net` to elsewhere (once: the rule is checked first).
fn masquerade(net: &Ipv4Net) -> Result<(), Error> {
    let rule = |op: &str| {
        let mut c = host_command::command("iptables");
        c.args(["-w", "-t", "nat", op, "POSTROUTING", "-s"])
            .arg(net.to_string())
            .args(["!", "-d"])
            .arg(net.to_string())
            .args([
                "-m",
                "comment",
                "--comment",
                "rkt default network",
                "-j",
                "MASQUERADE",
            ]);
        c
    };
    if host_command::run(&mut rule("-C")).is_err() {
        host_command::run(&mut rule("-A"))?;
    }
    Ok(())
}

/// The comment that marks a pod's iptables rules.
fn rule_tag(pod: &Pod) -> String {
    format!("rkt:{}", pod.uuid)
}

/// DNAT rules for the pod's `--port`s: traffic to the machine's host port (from outside,
/// and from the machine itself to one of its own addresses other than loopback) goes to
/// the app's port at the pod's address.
fn forward_ports(pod: &Pod, m: &crate::pod::PodManifest, ip: Ipv4Addr) -> Result<(), Error> {
    for p in &m.ports {
        let Some(decl) = m
            .apps
            .iter()
            .flat_map(|a| a.app.ports.iter())
            .find(|x| x.name == p.name)
        else {
            continue;
        };
        for chain in ["PREROUTING", "OUTPUT"] {
            let mut c = host_command::command("iptables");
            c.args([
                "-w",
                "-t",
                "nat",
                "-A",
                chain,
                "-p",
                &decl.protocol,
                "--dport",
            ])
            .arg(p.host_port.to_string());
            if chain == "OUTPUT" {
                c.args(["-m", "addrtype", "--dst-type", "LOCAL"]);
            }
            c.args(["-m", "comment", "--comment", &rule_tag(pod), "-j", "DNAT"])
                .arg("--to-destination")
                .arg(format!("{ip}:{}", decl.port));
            host_command::run(&mut c)?;
        }
    }
    Ok(())
}

/// Removes the pod's DNAT rules (best effort: a machine without iptables has none).
fn remove_port_rules(pod: &Pod) {
    let tag = rule_tag(pod);
    let Ok(rules) =
        host_command::run(host_command::command("iptables").args(["-w", "-t", "nat", "-S"]))
    else {
        return;
    };
    for line in rules.lines().filter(|l| l.contains(&tag)) {
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let mut args = vec!["-w".to_string(), "-t".into(), "nat".into(), "-D".into()];
        args.extend(split_rule(rest));
        let _ = host_command::run(host_command::command("iptables").args(&args));
    }
}

/// Splits an `iptables -S` rule into arguments (double-quoted parts kept whole).
fn split_rule(rule: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in rule.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Undoes a pod's network: unmounts its namespace (the veth pair goes with it) and frees
/// its addresses. Safe to repeat.
pub fn teardown(pod: &Pod) {
    let file = pod.path.join("netns");
    if pod
        .manifest()
        .ok()
        .flatten()
        .is_some_and(|m| !m.ports.is_empty())
    {
        remove_port_rules(pod);
    }
    if file.exists() {
        let _ = rustix::mount::unmount(&file, rustix::mount::UnmountFlags::DETACH);
    }
    let dir = data_dir_of(pod).join("networks/default");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            if std::fs::read_to_string(e.path()).is_ok_and(|u| u.trim() == pod.uuid) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_subnet_gives_its_upper_half() {
        let r = range_from(Some("FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"));
        assert_eq!(r.net.to_string(), "172.30.5.128/25");
        assert_eq!(r.mtu, 1450);
        assert!(r.flannel);
        let d = range_from(None);
        assert_eq!(d.net.to_string(), "172.16.28.0/24");
        assert!(!d.flannel);
        assert_eq!(
            range_from(Some("garbage")).net.to_string(),
            "172.16.28.0/24"
        );
    }
}

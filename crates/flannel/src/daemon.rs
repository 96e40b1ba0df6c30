//! flanneld: startup, then one event loop.
//!
//! Startup, retried every second until it succeeds (each distinct failure logged once):
//! read and check the network config, find the external interface, make the backend's
//! device, acquire the lease, address the device, install the masquerade rules, write
//! subnet.env and tell systemd READY=1. Nothing is written to the kernel or to subnet.env
//! before the config has passed every check, so a bad config leaves nothing half done.
//!
//! The loop: the watch of the other leases (applied to routes/neighbours/FDB), the lease's
//! renewal, a recheck of the routes every 10 s (re-added if something removed them, as
//! flannel's host-gw does), and SIGTERM/SIGINT. flanneld keeps its lease when it stops, so
//! a restart gets the same subnet and the kernel state stays in place meanwhile.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::time::Instant;

use crate::config::{Backend, NetworkConfig};
use crate::net::Netlink;
use crate::registry::{Event, Registry, Watched};
use crate::subnet::{self, Choice, Lease, LeaseAttrs};
use crate::{env, iptables, notify, Error};

/// flanneld's settings (its flags and `FLANNELD_*` variables).
#[derive(Debug, Clone)]
pub struct Options {
    pub etcd_endpoints: String,
    pub etcd_prefix: String,
    /// Interface name or address; empty: the default route's.
    pub iface: String,
    /// The address published in the lease; `None`: the interface's.
    pub public_ip: Option<Ipv4Addr>,
    pub subnet_file: PathBuf,
    pub ip_masq: bool,
    /// The lease's TTL (flannel: 24 h).
    pub lease_ttl: Duration,
}

/// How long one watch poll waits before asking again.
const WATCH_POLL: Duration = Duration::from_secs(60);
/// How often routes are checked.
const RECHECK: Duration = Duration::from_secs(10);
/// How long one etcd request may take.
const REQUEST: Duration = Duration::from_secs(5);

/// The running network: what startup set up.
#[derive(Debug)]
struct Running {
    config: NetworkConfig,
    /// The vxlan device's index, or the external interface's (host-gw).
    dev: u32,
    /// The MTU containers get: the vxlan device's as the kernel set it (lower − 50), or
    /// the external interface's (host-gw).
    mtu: u32,
    lease: Ipv4Net,
    attrs: LeaseAttrs,
    /// Remote leases applied to the kernel.
    remotes: BTreeMap<Ipv4Net, LeaseAttrs>,
    expires: Instant,
}

/// Runs flanneld until SIGTERM or SIGINT.
///
/// # Errors
/// Only what cannot be retried: bad options, no netlink socket, no signal handlers.
pub async fn run(opts: Options) -> Result<(), Error> {
    let registry = Arc::new(Registry::new(
        &opts.etcd_endpoints,
        &opts.etcd_prefix,
        REQUEST,
    )?);
    let netlink = Netlink::connect()?;
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let started = std::time::Instant::now();
    let mut last_error = String::new();
    let mut net = loop {
        let attempt = startup(&opts, &registry, &netlink);
        tokio::select! {
            r = attempt => match r {
                Ok(n) => break n,
                Err(e) => {
                    let msg = host_command::error_chain(&e);
                    if msg != last_error {
                        tracing::error!("{msg} (retrying every second)");
                        last_error = msg;
                    }
                }
            },
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let text = env::subnet_env(net.config.network, net.lease, net.mtu, opts.ip_masq);
    env::write(&opts.subnet_file, &text)?;
    tracing::info!(
        "wrote {} ({} ms after start)",
        opts.subnet_file.display(),
        started.elapsed().as_millis()
    );
    if let Err(e) = notify::notify("READY=1") {
        tracing::warn!("telling systemd READY=1: {e}");
    }
    event_loop(&opts, &registry, &netlink, &mut net, &mut term, &mut int).await;
    tracing::info!("stopping; the lease {} stays until its TTL", net.lease);
    Ok(())
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, Error> {
    tokio::signal::unix::signal(kind).map_err(|source| Error::Io {
        path: "signal handler".into(),
        source,
    })
}

/// One startup attempt.
async fn startup(opts: &Options, registry: &Registry, netlink: &Netlink) -> Result<Running, Error> {
    let key = registry.config_key();
    let text = registry.config().await?.ok_or_else(|| Error::Config {
        key: key.clone(),
        reason: "not set (waiting for it: etcdctl set …)".into(),
    })?;
    let config = NetworkConfig::parse(&key, &text)?;
    let ext = netlink.external(&opts.iface).await?;
    if config.network.contains(&ext.net.network()) || ext.net.contains(&config.network.network()) {
        return Err(Error::Config {
            key,
            reason: format!(
                "Network {} overlaps this machine's network {} on {}",
                config.network, ext.net, ext.name
            ),
        });
    }
    let public_ip = opts.public_ip.unwrap_or(ext.addr);
    // Before the device and the lease: a failure here leaves neither behind.
    let (network, masq) = (config.network, opts.ip_masq);
    tokio::task::spawn_blocking(move || iptables::install(network, masq))
        .await
        .map_err(|e| Error::Io {
            path: "iptables".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
    let (dev, mtu, attrs) = match config.backend {
        Backend::Vxlan { vni, port } => {
            let (dev, mac, mtu) = netlink.vxlan(vni, port, &ext).await?;
            let data = serde_json::json!({ "VtepMAC": subnet::format_mac(mac) });
            let attrs = LeaseAttrs {
                public_ip,
                backend_type: "vxlan".into(),
                backend_data: Some(data),
            };
            (dev, mtu, attrs)
        }
        Backend::HostGw => {
            if public_ip != ext.addr {
                return Err(Error::Interface {
                    reason: format!(
                        "host-gw needs the public IP {public_ip} to be {}'s address {} (no NAT between machines)",
                        ext.name, ext.addr
                    ),
                });
            }
            let attrs = LeaseAttrs {
                public_ip,
                backend_type: "host-gw".into(),
                backend_data: None,
            };
            (ext.index, ext.mtu, attrs)
        }
    };
    let lease = acquire(registry, &config, &attrs, opts.lease_ttl).await?;
    tracing::info!(
        "lease {lease} for {public_ip} ({})",
        config.backend.type_name()
    );
    if matches!(config.backend, Backend::Vxlan { .. }) {
        netlink.address_and_up(dev, lease.network(), 32).await?;
    }
    Ok(Running {
        config,
        dev,
        mtu,
        lease,
        attrs,
        remotes: BTreeMap::new(),
        expires: Instant::now() + opts.lease_ttl,
    })
}

/// flannel's acquisition: keep this address's lease, else create a free one; a lost race
/// tries again (10 times).
async fn acquire(
    registry: &Registry,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    ttl: Duration,
) -> Result<Ipv4Net, Error> {
    for _ in 0..10 {
        let (leases, bad, _) = registry.leases().await?;
        for (k, why) in bad {
            tracing::warn!("ignoring {k}: {why}");
        }
        let mut pick = |n: usize| random_below(n);
        match subnet::choose(config, attrs.public_ip, &leases, &mut pick) {
            Choice::Keep(s) => {
                registry.renew(s, attrs, ttl).await?;
                return Ok(s);
            }
            Choice::Stale(s) => {
                tracing::info!("lease {s} no longer fits the config: deleting it");
                registry.delete(s).await?;
            }
            Choice::Fresh(s) => {
                if registry.create(s, attrs, ttl).await? {
                    return Ok(s);
                }
            }
            Choice::Full => {
                return Err(Error::Full {
                    key: registry.config_key(),
                    capacity: config.capacity(),
                })
            }
        }
    }
    Err(Error::EtcdReply {
        key: registry.config_key(),
        reason: "lost the race for a free subnet 10 times".into(),
    })
}

fn random_below(n: usize) -> usize {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0;
    }
    usize::try_from(u64::from_le_bytes(b) % (n.max(1) as u64)).unwrap_or(0)
}

type WatchFuture = Pin<Box<dyn std::future::Future<Output = Result<Watched, Error>> + Send>>;

fn watch_after(registry: &Arc<Registry>, index: u64, delay: Duration) -> WatchFuture {
    let r = Arc::clone(registry);
    Box::pin(async move {
        tokio::time::sleep(delay).await;
        r.watch(index, WATCH_POLL).await
    })
}

/// When to renew: an hour before expiry (flannel), or halfway for a TTL under two hours.
fn renew_margin(ttl: Duration) -> Duration {
    Duration::from_secs(3600).min(ttl / 2)
}

async fn event_loop(
    opts: &Options,
    registry: &Arc<Registry>,
    netlink: &Netlink,
    net: &mut Running,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    let mut index = resync(registry, netlink, net).await.unwrap_or(0);
    let mut watch = watch_after(registry, index, Duration::ZERO);
    let mut renew_at = net.expires - renew_margin(opts.lease_ttl);
    let mut recheck = tokio::time::interval(RECHECK);
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            w = &mut watch => {
                let delay = match w {
                    Ok(Watched::Event(event, at)) => {
                        index = at;
                        if let Some(e) = event {
                            apply(registry, netlink, net, opts, e).await;
                        }
                        Duration::ZERO
                    }
                    Ok(Watched::Quiet) => Duration::ZERO,
                    Ok(Watched::Cleared) => match resync(registry, netlink, net).await {
                        Ok(i) => { index = i; Duration::ZERO }
                        Err(_) => Duration::from_secs(1),
                    },
                    Err(e) => {
                        tracing::warn!("watching leases: {}", host_command::error_chain(&e));
                        Duration::from_secs(1)
                    }
                };
                watch = watch_after(registry, index, delay);
            }
            () = tokio::time::sleep_until(renew_at) => {
                match registry.renew(net.lease, &net.attrs, opts.lease_ttl).await {
                    Ok(()) => {
                        net.expires = Instant::now() + opts.lease_ttl;
                        renew_at = net.expires - renew_margin(opts.lease_ttl);
                        tracing::info!("renewed lease {}", net.lease);
                    }
                    Err(e) => {
                        tracing::warn!("renewing lease {}: {} (again in a minute)", net.lease, host_command::error_chain(&e));
                        renew_at = Instant::now() + Duration::from_secs(60).min(opts.lease_ttl / 4);
                    }
                }
            }
            _ = recheck.tick() => {
                if let Err(e) = reconcile(netlink, net).await {
                    tracing::warn!("checking routes: {}", host_command::error_chain(&e));
                }
            }
        }
    }
}

/// Lists the leases again and makes the kernel match them; the index to watch after.
async fn resync(registry: &Registry, netlink: &Netlink, net: &mut Running) -> Result<u64, Error> {
    let (leases, bad, index) = match registry.leases().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("listing leases: {}", host_command::error_chain(&e));
            return Err(e);
        }
    };
    for (k, why) in bad {
        tracing::warn!("ignoring {k}: {why}");
    }
    let wanted: BTreeMap<Ipv4Net, LeaseAttrs> = leases
        .into_iter()
        .filter(|l| l.subnet != net.lease && usable(net, l))
        .map(|l| (l.subnet, l.attrs))
        .collect();
    let gone: Vec<Ipv4Net> = net
        .remotes
        .keys()
        .filter(|s| !wanted.contains_key(s))
        .copied()
        .collect();
    for s in gone {
        remove(netlink, net, s).await;
    }
    for (s, attrs) in wanted {
        add(netlink, net, Lease { subnet: s, attrs }).await;
    }
    if let Err(e) = reconcile(netlink, net).await {
        tracing::warn!("checking routes: {}", host_command::error_chain(&e));
    }
    Ok(index)
}

/// Whether `l` is a lease this backend can route to (same type; vxlan needs a MAC).
fn usable(net: &Running, l: &Lease) -> bool {
    let ok = l.attrs.backend_type == net.config.backend.type_name()
        && (!matches!(net.config.backend, Backend::Vxlan { .. }) || l.attrs.vtep_mac().is_some())
        && net.config.network.contains(&l.subnet);
    if !ok {
        tracing::warn!(
            "ignoring lease {} of {}: backend {:?}, this machine runs {}",
            l.subnet,
            l.attrs.public_ip,
            l.attrs.backend_type,
            net.config.backend.type_name()
        );
    }
    ok
}

async fn apply(
    registry: &Registry,
    netlink: &Netlink,
    net: &mut Running,
    opts: &Options,
    e: Event,
) {
    match e {
        Event::Added(l) if l.subnet == net.lease => {
            if l.attrs.public_ip != net.attrs.public_ip {
                tracing::error!(
                    "lease {} was taken by {}: this machine's containers are unreachable until flanneld restarts",
                    l.subnet,
                    l.attrs.public_ip
                );
            }
        }
        Event::Added(l) => {
            if usable(net, &l) {
                add(netlink, net, l).await;
            }
        }
        Event::Removed(s) if s == net.lease => {
            tracing::warn!("lease {s} vanished from etcd: writing it again");
            if let Err(e) = registry.renew(net.lease, &net.attrs, opts.lease_ttl).await {
                tracing::warn!("renewing lease {s}: {}", host_command::error_chain(&e));
            }
        }
        Event::Removed(s) => remove(netlink, net, s).await,
    }
}

async fn add(netlink: &Netlink, net: &mut Running, l: Lease) {
    if net.remotes.get(&l.subnet) == Some(&l.attrs) {
        return;
    }
    // A lease whose machine changed (new VTEP MAC or address): its old entries go first.
    if net.remotes.contains_key(&l.subnet) {
        remove(netlink, net, l.subnet).await;
    }
    let r = match net.config.backend {
        Backend::Vxlan { .. } => match l.attrs.vtep_mac() {
            Some(mac) => {
                netlink
                    .vxlan_add_remote(net.dev, l.subnet, mac, l.attrs.public_ip)
                    .await
            }
            None => return,
        },
        Backend::HostGw => {
            netlink
                .gateway_route(net.dev, l.subnet, l.attrs.public_ip)
                .await
        }
    };
    match r {
        Ok(()) => {
            tracing::info!("subnet {} via {} added", l.subnet, l.attrs.public_ip);
            net.remotes.insert(l.subnet, l.attrs);
        }
        Err(e) => tracing::warn!(
            "adding subnet {}: {}",
            l.subnet,
            host_command::error_chain(&e)
        ),
    }
}

async fn remove(netlink: &Netlink, net: &mut Running, s: Ipv4Net) {
    let Some(attrs) = net.remotes.remove(&s) else {
        return;
    };
    let r = match net.config.backend {
        Backend::Vxlan { .. } => {
            netlink
                .vxlan_remove_remote(net.dev, s, attrs.vtep_mac(), attrs.public_ip)
                .await
        }
        Backend::HostGw => netlink.remove_route(net.dev, s).await,
    };
    match r {
        Ok(()) => tracing::info!("subnet {s} of {} removed", attrs.public_ip),
        Err(e) => tracing::warn!("removing subnet {s}: {}", host_command::error_chain(&e)),
    }
}

/// Routes in the overlay that no lease explains are removed; remote leases whose route
/// vanished are added again.
async fn reconcile(netlink: &Netlink, net: &mut Running) -> Result<(), Error> {
    let routed = netlink.routed(net.dev, net.config.network).await?;
    let stale: Vec<Ipv4Net> = routed
        .iter()
        .filter(|s| !net.remotes.contains_key(s) && **s != net.lease)
        .copied()
        .collect();
    if !stale.is_empty() {
        tracing::info!("removing routes no lease explains: {stale:?}");
        netlink.remove_routes(net.dev, &stale).await?;
    }
    let missing: Vec<(Ipv4Net, LeaseAttrs)> = net
        .remotes
        .iter()
        .filter(|(s, _)| !routed.contains(s))
        .map(|(s, a)| (*s, a.clone()))
        .collect();
    for (s, attrs) in missing {
        tracing::info!("route to {s} vanished: adding it again");
        net.remotes.remove(&s);
        add(netlink, net, Lease { subnet: s, attrs }).await;
    }
    Ok(())
}

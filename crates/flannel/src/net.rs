//! The kernel's side, through rtnetlink: the machine's external interface, the VXLAN
//! device `flannel.<VNI>`, and the routes, neighbour and FDB entries per remote subnet.
//!
//! The vxlan data path is the kernel-only one of later flannel versions: the device has
//! the lease's network address as a /32 and learning off, and each remote lease gets a
//! route `subnet via subnet.0 dev flannel.N onlink`, a permanent neighbour entry
//! `subnet.0 → remote VTEP MAC` and an FDB entry `remote VTEP MAC → remote public IP`.
//! No miss handling runs in user space, so a flanneld restart never cuts traffic.
//! Every change here is idempotent (replace, or delete of what may be gone).

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::Error;

/// The machine's interface flannel sends over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    pub index: u32,
    pub name: String,
    /// Its first IPv4 address, and that address's network.
    pub addr: Ipv4Addr,
    pub net: Ipv4Net,
    pub mtu: u32,
}

/// A netlink connection (its task runs on the current runtime).
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

/// The errno of a netlink error reply, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
/// The kernel's main routing table (`RT_TABLE_MAIN`).
const MAIN_TABLE: u8 = 254;

/// Ok for a delete of something already gone.
fn gone_ok(r: Result<(), rtnetlink::Error>, what: &str) -> Result<(), Error> {
    match r {
        Err(e) if matches!(errno(&e), Some(ENOENT | ESRCH | ENODEV)) => Ok(()),
        other => other.map_err(nl(what)),
    }
}

impl Netlink {
    /// Opens a netlink socket.
    ///
    /// # Errors
    /// The socket cannot be opened.
    pub fn connect() -> Result<Self, Error> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| Error::Io {
            path: "netlink socket".into(),
            source: e,
        })?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    async fn links(&self) -> Result<Vec<LinkMessage>, Error> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing links"))
    }

    /// The external interface: `spec` names it or one of its addresses; empty means the
    /// interface of the default route.
    ///
    /// # Errors
    /// [`Error::Interface`] when no interface matches, or it has no IPv4 address.
    pub async fn external(&self, spec: &str) -> Result<External, Error> {
        let links = self.links().await?;
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))?;
        let v4 = |index: u32| -> Vec<(Ipv4Addr, u8)> {
            addrs
                .iter()
                .filter(|a| a.header.index == index)
                .filter_map(|a| {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                        _ => None,
                    })
                })
                .collect()
        };
        let index = if spec.is_empty() {
            self.default_route_interface().await?
        } else if let Ok(ip) = spec.parse::<Ipv4Addr>() {
            links
                .iter()
                .map(|l| l.header.index)
                .find(|i| v4(*i).iter().any(|(a, _)| *a == ip))
                .ok_or_else(|| Error::Interface {
                    reason: format!("no interface has the address {ip} (--iface)"),
                })?
        } else {
            links
                .iter()
                .find(|l| link_name(l) == Some(spec))
                .map(|l| l.header.index)
                .ok_or_else(|| Error::Interface {
                    reason: format!("no interface named {spec:?} (--iface)"),
                })?
        };
        let link = links
            .iter()
            .find(|l| l.header.index == index)
            .ok_or_else(|| Error::Interface {
                reason: format!("interface {index} vanished"),
            })?;
        let name = link_name(link).unwrap_or_default().to_string();
        let wanted = spec.parse::<Ipv4Addr>().ok();
        let list = v4(index);
        let (addr, len) = list
            .iter()
            .find(|(a, _)| wanted.is_none_or(|w| w == *a))
            .copied()
            .ok_or_else(|| Error::Interface {
                reason: format!("interface {name} has no IPv4 address"),
            })?;
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(1500);
        let net = Ipv4Net::new(addr, len)
            .map_err(|e| Error::Interface {
                reason: format!("{name}: {e}"),
            })?
            .trunc();
        Ok(External {
            index,
            name,
            addr,
            net,
            mtu,
        })
    }

    async fn default_route_interface(&self) -> Result<u32, Error> {
        let routes = self.routes().await?;
        routes
            .iter()
            .filter(|r| r.header.destination_prefix_length == 0)
            .find_map(oif)
            .ok_or_else(|| Error::Interface {
                reason: "no default route to pick an interface by; name one (--iface)".into(),
            })
    }

    async fn routes(&self) -> Result<Vec<RouteMessage>, Error> {
        self.handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing routes"))
    }

    /// `flannel.<vni>` over `ext`, reused if it has these settings, else made anew: its
    /// index, MAC and MTU.
    ///
    /// # Errors
    /// A netlink request fails.
    pub async fn vxlan(
        &self,
        vni: u32,
        port: u16,
        ext: &External,
    ) -> Result<(u32, [u8; 6], u32), Error> {
        let name = format!("flannel.{vni}");
        let port = if port == 0 { 8472 } else { port };
        let existing = self
            .links()
            .await?
            .into_iter()
            .find(|l| link_name(l) == Some(&name));
        if let Some(link) = existing {
            let info = vxlan_info(&link);
            let fits = info.contains(&InfoVxlan::Id(vni))
                && info.contains(&InfoVxlan::Local(ext.addr))
                && info.contains(&InfoVxlan::Link(ext.index))
                && info.contains(&InfoVxlan::Port(port));
            if fits {
                return self.describe(&name).await;
            }
            tracing::info!("{name} exists with other settings: deleting it");
            gone_ok(
                self.handle.link().del(link.header.index).execute().await,
                &format!("deleting {name}"),
            )?;
        }
        let msg = LinkVxlan::new(&name, vni)
            .dev(ext.index)
            .local(ext.addr)
            .port(port)
            .learning(false)
            .build();
        match self.handle.link().add(msg).execute().await {
            Err(e) if errno(&e) == Some(EEXIST) => {}
            other => other.map_err(nl(format!("creating {name}")))?,
        }
        self.describe(&name).await
    }

    async fn describe(&self, name: &str) -> Result<(u32, [u8; 6], u32), Error> {
        let link = self
            .links()
            .await?
            .into_iter()
            .find(|l| link_name(l) == Some(name))
            .ok_or_else(|| Error::Interface {
                reason: format!("{name} vanished after it was made"),
            })?;
        let mut mac = [0u8; 6];
        let mut mtu = 1450;
        for a in &link.attributes {
            match a {
                LinkAttribute::Address(m) if m.len() == 6 => mac.copy_from_slice(m),
                LinkAttribute::Mtu(m) => mtu = *m,
                _ => {}
            }
        }
        Ok((link.header.index, mac, mtu))
    }

    /// `index` has exactly `addr/len` as its IPv4 address, and is up.
    ///
    /// # Errors
    /// A netlink request fails.
    pub async fn address_and_up(&self, index: u32, addr: Ipv4Addr, len: u8) -> Result<(), Error> {
        let existing: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))?;
        let mut have = false;
        for a in existing {
            let local = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            match local {
                Some(ip) if ip == addr && a.header.prefix_len == len => have = true,
                Some(_) => gone_ok(
                    self.handle.address().del(a).execute().await,
                    "removing an old address",
                )?,
                None => {}
            }
        }
        if !have {
            match self
                .handle
                .address()
                .add(index, IpAddr::V4(addr), len)
                .execute()
                .await
            {
                Err(e) if errno(&e) == Some(EEXIST) => {}
                other => other.map_err(nl(format!("adding {addr}/{len}")))?,
            }
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl("setting the link up"))
    }

    /// Route, neighbour and FDB entry for a remote vxlan lease.
    ///
    /// # Errors
    /// A netlink request fails.
    pub async fn vxlan_add_remote(
        &self,
        dev: u32,
        subnet: Ipv4Net,
        mac: [u8; 6],
        public_ip: Ipv4Addr,
    ) -> Result<(), Error> {
        let gw = subnet.network();
        self.handle
            .neighbours()
            .add_bridge(dev, &mac)
            .flags(NeighbourFlags::Own)
            .destination(IpAddr::V4(public_ip))
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding the FDB entry for {subnet}")))?;
        self.handle
            .neighbours()
            .add(dev, IpAddr::V4(gw))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding the neighbour entry for {subnet}")))?;
        self.replace_route(dev, subnet, gw, true).await
    }

    /// Removes what [`Netlink::vxlan_add_remote`] added (what is already gone is fine).
    ///
    /// # Errors
    /// A netlink request fails otherwise.
    pub async fn vxlan_remove_remote(
        &self,
        dev: u32,
        subnet: Ipv4Net,
        mac: Option<[u8; 6]>,
        public_ip: Ipv4Addr,
    ) -> Result<(), Error> {
        self.remove_route(dev, subnet).await?;
        let mut neigh = NeighbourMessage::default();
        neigh.header.family = AddressFamily::Inet;
        neigh.header.ifindex = dev;
        neigh
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                subnet.network(),
            )));
        gone_ok(
            self.handle.neighbours().del(neigh).execute().await,
            &format!("removing the neighbour entry of {subnet}"),
        )?;
        if let Some(mac) = mac {
            let mut fdb = NeighbourMessage::default();
            fdb.header.family = AddressFamily::Bridge;
            fdb.header.ifindex = dev;
            fdb.header.flags = NeighbourFlags::Own;
            fdb.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            fdb.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    public_ip,
                )));
            gone_ok(
                self.handle.neighbours().del(fdb).execute().await,
                &format!("removing the FDB entry of {subnet}"),
            )?;
        }
        Ok(())
    }

    /// `subnet via public_ip dev ext` (host-gw).
    ///
    /// # Errors
    /// A netlink request fails.
    pub async fn gateway_route(
        &self,
        ext: u32,
        subnet: Ipv4Net,
        via: Ipv4Addr,
    ) -> Result<(), Error> {
        self.replace_route(ext, subnet, via, false).await
    }

    /// `subnet via gw dev dev [onlink]`, replacing any route to `subnet` (protocol `boot`,
    /// as `ip route add` makes it).
    async fn replace_route(
        &self,
        dev: u32,
        subnet: Ipv4Net,
        gw: Ipv4Addr,
        onlink: bool,
    ) -> Result<(), Error> {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .gateway(gw)
            .output_interface(dev)
            .protocol(RouteProtocol::Boot);
        if onlink {
            route = route.onlink();
        }
        self.handle
            .route()
            .add(route.build())
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding the route to {subnet} via {gw}")))
    }

    /// The subnets inside `network` routed now through `dev` (a vxlan device, or the
    /// external interface for host-gw).
    ///
    /// # Errors
    /// Listing routes fails.
    pub async fn routed(&self, dev: u32, network: Ipv4Net) -> Result<Vec<Ipv4Net>, Error> {
        Ok(self
            .routes()
            .await?
            .iter()
            .filter(|r| r.header.table == MAIN_TABLE && oif(r) == Some(dev))
            .filter_map(dest)
            .filter(|d| network.contains(d) && *d != network)
            .collect())
    }

    /// Deletes the main table's routes to `subnet` through `dev`.
    ///
    /// # Errors
    /// A netlink request fails.
    pub async fn remove_route(&self, dev: u32, subnet: Ipv4Net) -> Result<(), Error> {
        self.remove_routes(dev, &[subnet]).await
    }

    /// Deletes the main table's routes through `dev` to any of `subnets` (one listing).
    ///
    /// # Errors
    /// A netlink request fails.
    pub async fn remove_routes(&self, dev: u32, subnets: &[Ipv4Net]) -> Result<(), Error> {
        for r in self.routes().await? {
            let to = dest(&r);
            if r.header.table == MAIN_TABLE
                && oif(&r) == Some(dev)
                && to.is_some_and(|d| subnets.contains(&d))
            {
                let what = format!("removing the route to {to:?}");
                gone_ok(self.handle.route().del(r).execute().await, &what)?;
            }
        }
        Ok(())
    }
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn vxlan_info(l: &LinkMessage) -> Vec<InfoVxlan> {
    let mut is_vxlan = false;
    let mut out = Vec::new();
    for a in &l.attributes {
        if let LinkAttribute::LinkInfo(infos) = a {
            for i in infos {
                match i {
                    LinkInfo::Kind(InfoKind::Vxlan) => is_vxlan = true,
                    LinkInfo::Data(InfoData::Vxlan(v)) => out.clone_from(v),
                    _ => {}
                }
            }
        }
    }
    if is_vxlan {
        out
    } else {
        Vec::new()
    }
}

fn oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn dest(r: &RouteMessage) -> Option<Ipv4Net> {
    let len = r.header.destination_prefix_length;
    let addr = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    });
    match addr {
        Some(a) => Ipv4Net::new(a, len).ok(),
        None if len == 0 => Some(Ipv4Net::default()),
        None => None,
    }
}

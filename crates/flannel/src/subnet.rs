//! Leases: a machine's subnet as an etcd key (`<prefix>/subnets/A.B.C.D-LEN`), what the
//! lease says about the machine (`LeaseAttrs`), and flannel's allocation rule — keep the
//! lease this machine's address already holds, else pick at random among the first 100
//! free subnets.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::config::NetworkConfig;

/// At most this many free subnets are collected before one is picked (flannel's rule).
pub const CANDIDATES: usize = 100;

/// A lease key's last part for `net`: `172.30.15.0-24`.
#[must_use]
pub fn key_name(net: Ipv4Net) -> String {
    format!("{}-{}", net.network(), net.prefix_len())
}

/// The subnet a lease key names, from its last path part (`A.B.C.D-LEN`, flannel's
/// pattern); `None` for anything else.
#[must_use]
pub fn parse_key(key: &str) -> Option<Ipv4Net> {
    let name = key.rsplit('/').next()?;
    let (addr, len) = name.split_once('-')?;
    if addr.split('.').count() != 4 || !addr.split('.').all(is_digits) || !is_digits(len) {
        return None;
    }
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let net = Ipv4Net::new(addr, len).ok()?;
    (net.network() == addr).then_some(net)
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit())
}

/// What a lease says about its machine (flannel's JSON field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<serde_json::Value>,
}

impl LeaseAttrs {
    /// The VTEP MAC a vxlan lease carries (`BackendData.VtepMAC`).
    #[must_use]
    pub fn vtep_mac(&self) -> Option<[u8; 6]> {
        let s = self.backend_data.as_ref()?.get("VtepMAC")?.as_str()?;
        parse_mac(s)
    }
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
#[must_use]
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Bytes as `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One machine's lease as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Net,
    pub attrs: LeaseAttrs,
}

/// What allocation decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// This machine's address already holds `subnet`, which fits the config: renew it.
    Keep(Ipv4Net),
    /// A lease of this machine's address that no longer fits the config: delete it first,
    /// then allocate again.
    Stale(Ipv4Net),
    /// A free subnet to create (with `prevExist=false`; a lost race allocates again).
    Fresh(Ipv4Net),
    /// No free subnet between SubnetMin and SubnetMax.
    Full,
}

/// flannel's allocation rule over the current `leases`; `pick(n)` chooses an index below
/// `n` (at random in the daemon).
pub fn choose(
    config: &NetworkConfig,
    public_ip: Ipv4Addr,
    leases: &[Lease],
    pick: &mut dyn FnMut(usize) -> usize,
) -> Choice {
    if let Some(own) = leases.iter().find(|l| l.attrs.public_ip == public_ip) {
        let fits = own.subnet.prefix_len() == config.subnet_len
            && config.network.contains(&own.subnet)
            && (u32::from(config.subnet_min)..=u32::from(config.subnet_max))
                .contains(&u32::from(own.subnet.network()));
        return if fits {
            Choice::Keep(own.subnet)
        } else {
            Choice::Stale(own.subnet)
        };
    }
    let size = 1u64 << (32 - u32::from(config.subnet_len));
    let mut at = u64::from(u32::from(config.subnet_min));
    let end = u64::from(u32::from(config.subnet_max));
    let mut free = Vec::new();
    while at <= end && free.len() < CANDIDATES {
        let Ok(addr) = u32::try_from(at) else { break };
        if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(addr), config.subnet_len) {
            let taken = leases
                .iter()
                .any(|l| l.subnet.contains(&net.network()) || net.contains(&l.subnet.network()));
            if !taken {
                free.push(net);
            }
        }
        at += size;
    }
    if free.is_empty() {
        return Choice::Full;
    }
    let i = pick(free.len()).min(free.len() - 1);
    Choice::Fresh(free[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> NetworkConfig {
        NetworkConfig::parse("/k", text).unwrap()
    }

    fn lease(net: &str, ip: [u8; 4]) -> Lease {
        Lease {
            subnet: net.parse().unwrap(),
            attrs: LeaseAttrs {
                public_ip: Ipv4Addr::from(ip),
                backend_type: "vxlan".into(),
                backend_data: None,
            },
        }
    }

    #[test]
    fn keys_as_flannel_writes_and_reads_them() {
        let net: Ipv4Net = "172.30.15.0/24".parse().unwrap();
        assert_eq!(key_name(net), "172.30.15.0-24");
        assert_eq!(
            parse_key("/coreos.com/network/subnets/172.30.15.0-24"),
            Some(net)
        );
        for bad in [
            "172.30.15.0_24",
            "172.30.15.0-",
            "172.30.15-24",
            "172.30.15.1-24",
            "a.b.c.d-24",
            "172.30.15.0-33",
            "1172.30.15.0-24",
            "x",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn lease_json_as_flannel_writes_it() {
        let a = LeaseAttrs {
            public_ip: Ipv4Addr::new(172, 20, 7, 101),
            backend_type: String::new(),
            backend_data: None,
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"PublicIP":"172.20.7.101"}"#
        );
        let v: LeaseAttrs = serde_json::from_str(
            r#"{"PublicIP":"172.20.7.101","BackendType":"vxlan","BackendData":{"VtepMAC":"6e:01:02:03:04:0a"}}"#,
        )
        .unwrap();
        assert_eq!(v.vtep_mac(), Some([0x6e, 1, 2, 3, 4, 0x0a]));
        assert_eq!(format_mac([0x6e, 1, 2, 3, 4, 0x0a]), "6e:01:02:03:04:0a");
        for bad in [
            "6e:01:02:03:04",
            "6e:01:02:03:04:0a:0b",
            "6e:1:02:03:04:0a",
            "zz:01:02:03:04:0a",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_machine_keeps_its_lease_and_a_stale_one_is_replaced() {
        let c = config(r#"{"Network":"172.30.0.0/16"}"#);
        let leases = [
            lease("172.30.7.0/24", [172, 20, 7, 101]),
            lease("172.30.9.0/24", [172, 20, 7, 102]),
        ];
        let mut never = |_| -> usize { unreachable!() };
        assert_eq!(
            choose(&c, Ipv4Addr::new(172, 20, 7, 102), &leases, &mut never),
            Choice::Keep("172.30.9.0/24".parse().unwrap())
        );
        // After the config changed to a longer SubnetLen, the old lease no longer fits.
        let c2 = config(r#"{"Network":"172.30.0.0/16","SubnetLen":26}"#);
        assert_eq!(
            choose(&c2, Ipv4Addr::new(172, 20, 7, 102), &leases, &mut never),
            Choice::Stale("172.30.9.0/24".parse().unwrap())
        );
    }

    #[test]
    fn fresh_subnets_skip_the_first_and_the_taken_and_stop_at_100() {
        let c = config(r#"{"Network":"172.30.0.0/16"}"#);
        let leases = [
            lease("172.30.1.0/24", [1, 1, 1, 1]),
            lease("172.30.3.0/24", [1, 1, 1, 2]),
        ];
        let mut seen = 0;
        let got = choose(&c, Ipv4Addr::new(9, 9, 9, 9), &leases, &mut |n| {
            seen = n;
            0
        });
        assert_eq!(got, Choice::Fresh("172.30.2.0/24".parse().unwrap()));
        assert_eq!(seen, CANDIDATES);
        let last = choose(&c, Ipv4Addr::new(9, 9, 9, 9), &leases, &mut |n| n - 1);
        assert_eq!(last, Choice::Fresh("172.30.102.0/24".parse().unwrap()));
    }

    #[test]
    fn a_full_network_says_so() {
        // /29 in /30s: one subnet between min and max (the first is never handed out).
        let c = config(r#"{"Network":"172.30.0.0/29","SubnetLen":30}"#);
        assert_eq!(c.capacity(), 1);
        let leases = [lease("172.30.0.4/30", [1, 1, 1, 1])];
        assert_eq!(
            choose(&c, Ipv4Addr::new(2, 2, 2, 2), &leases, &mut |_| 0),
            Choice::Full
        );
        // A lease overlapping from a wider prefix also takes the subnet.
        let wide = [lease("172.30.0.0/29", [1, 1, 1, 1])];
        assert_eq!(
            choose(&c, Ipv4Addr::new(2, 2, 2, 2), &wide, &mut |_| 0),
            Choice::Full
        );
    }
}

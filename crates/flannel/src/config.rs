//! The network configuration at `<prefix>/config`: flannel's JSON, its defaults and its
//! checks (reference: flannel 0.5's `subnet/config.go`).
//!
//! Field names match case-insensitively and unknown fields are ignored, as Go's
//! `encoding/json` decodes them. Every error names the key and the field.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Map, Value};

use crate::Error;

/// The default VXLAN network identifier.
pub const DEFAULT_VNI: u32 = 1;

/// The data path between machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A kernel VXLAN device `flannel.<vni>`; `port` 0 is the kernel's default (8472).
    Vxlan { vni: u32, port: u16 },
    /// A route per remote subnet via the remote machine's address (same L2 segment).
    HostGw,
}

impl Backend {
    /// The name leases carry as `BackendType`.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan { .. } => "vxlan",
            Backend::HostGw => "host-gw",
        }
    }
}

/// A checked network configuration with flannel's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The overlay's whole range.
    pub network: Ipv4Net,
    /// The prefix length of one machine's subnet.
    pub subnet_len: u8,
    /// The lowest subnet handed out (its network address).
    pub subnet_min: Ipv4Addr,
    /// The highest subnet handed out (its network address).
    pub subnet_max: Ipv4Addr,
    pub backend: Backend,
}

impl NetworkConfig {
    /// Parses and checks the value of `key`.
    ///
    /// # Errors
    /// [`Error::Config`] naming `key` and what is wrong.
    pub fn parse(key: &str, text: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::Config {
            key: key.to_string(),
            reason,
        };
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(bad("not a JSON object".into()));
        };
        let network = match field(&map, "Network") {
            None | Some(Value::Null) => return Err(bad("Network is missing".into())),
            Some(Value::String(s)) => parse_net(s).map_err(|r| bad(format!("Network: {r}")))?,
            Some(other) => return Err(bad(format!("Network: {other} is not a string"))),
        };
        let subnet_len = match field(&map, "SubnetLen") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| bad(format!("SubnetLen: {v} is not a prefix length")))?,
        };
        let subnet_len = match subnet_len {
            0 if network.prefix_len() < 24 => 24,
            0 => network.prefix_len() + 1,
            n => n,
        };
        if subnet_len < network.prefix_len() {
            return Err(bad(format!(
                "SubnetLen {subnet_len} is larger a network than Network {network}"
            )));
        }
        if subnet_len > 30 {
            return Err(bad(format!(
                "SubnetLen {subnet_len} leaves no addresses for containers (at most 30)"
            )));
        }
        let size = 1u32 << (32 - u32::from(subnet_len));
        let first = u32::from(network.network());
        let last = u32::from(network.broadcast()) - (size - 1);
        let min = address(&map, "SubnetMin", key)?.unwrap_or_else(|| {
            // The network's first subnet is never handed out (flannel: a bridge on .0.1 of
            // the whole network confused ping); a network of one subnet has only it.
            Ipv4Addr::from(first.saturating_add(size).min(last))
        });
        let max = address(&map, "SubnetMax", key)?.unwrap_or(Ipv4Addr::from(last));
        for (name, a) in [("SubnetMin", min), ("SubnetMax", max)] {
            if !network.contains(&a) {
                return Err(bad(format!("{name} {a} is not in Network {network}")));
            }
        }
        if u32::from(min) > u32::from(max) {
            return Err(bad(format!("SubnetMin {min} is above SubnetMax {max}")));
        }
        let backend = backend(&map).map_err(|r| bad(format!("Backend: {r}")))?;
        Ok(Self {
            network,
            subnet_len,
            subnet_min: min,
            subnet_max: max,
            backend,
        })
    }

    /// How many subnets lie between `subnet_min` and `subnet_max`.
    #[must_use]
    pub fn capacity(&self) -> u64 {
        let size = 1u64 << (32 - u32::from(self.subnet_len));
        let span = u64::from(u32::from(self.subnet_max)) - u64::from(u32::from(self.subnet_min));
        span / size + 1
    }
}

/// A field by Go's rule: an exact match first, else the first case-insensitive one.
fn field<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn parse_net(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 network (a.b.c.d/len)"))?;
    Ok(net.trunc())
}

fn address(map: &Map<String, Value>, name: &str, key: &str) -> Result<Option<Ipv4Addr>, Error> {
    match field(map, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| Error::Config {
            key: key.to_string(),
            reason: format!("{name}: {s:?} is not an IPv4 address"),
        }),
        Some(other) => Err(Error::Config {
            key: key.to_string(),
            reason: format!("{name}: {other} is not a string"),
        }),
    }
}

fn backend(map: &Map<String, Value>) -> Result<Backend, String> {
    let b = match field(map, "Backend") {
        None | Some(Value::Null) => {
            return Ok(Backend::Vxlan {
                vni: DEFAULT_VNI,
                port: 0,
            })
        }
        Some(Value::Object(b)) => b,
        Some(other) => return Err(format!("{other} is not an object")),
    };
    let kind = match field(b, "Type") {
        None | Some(Value::Null) => "vxlan".to_string(),
        Some(Value::String(s)) => s.to_ascii_lowercase(),
        Some(other) => return Err(format!("Type {other} is not a string")),
    };
    let number = |name: &str, max: u64, default: u64| -> Result<u64, String> {
        match field(b, name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{name} {v} is not a number from 0 to {max}")),
        }
    };
    match kind.as_str() {
        "vxlan" => {
            let vni = number("VNI", (1 << 24) - 1, u64::from(DEFAULT_VNI))?;
            let port = number("Port", u64::from(u16::MAX), 0)?;
            Ok(Backend::Vxlan {
                vni: u32::try_from(vni).map_err(|e| e.to_string())?,
                port: u16::try_from(port).map_err(|e| e.to_string())?,
            })
        }
        "host-gw" => Ok(Backend::HostGw),
        "udp" => Err(
            "Type \"udp\" (flannel's user-space data path) is not carried by this flanneld: use \"vxlan\" or \"host-gw\""
                .into(),
        ),
        other => Err(format!(
            "unknown Type {other:?}: this flanneld knows \"vxlan\" and \"host-gw\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "/coreos.com/network/config";

    fn parse(s: &str) -> Result<NetworkConfig, String> {
        NetworkConfig::parse(KEY, s).map_err(|e| e.to_string())
    }

    #[test]
    fn the_books_config_and_flannels_defaults() {
        let c = parse(r#"{ "Network": "10.1.0.0/16" }"#).unwrap();
        assert_eq!(c.network.to_string(), "10.1.0.0/16");
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 1, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 1, 255, 0));
        assert_eq!(c.capacity(), 255);
        assert_eq!(c.backend, Backend::Vxlan { vni: 1, port: 0 });
        // A network of /24 or longer is split in half.
        let c = parse(r#"{"Network":"172.30.5.0/24"}"#).unwrap();
        assert_eq!(c.subnet_len, 25);
        assert_eq!(c.subnet_min, Ipv4Addr::new(172, 30, 5, 128));
        assert_eq!(c.subnet_max, Ipv4Addr::new(172, 30, 5, 128));
    }

    #[test]
    fn fields_match_case_insensitively_and_unknown_ones_are_ignored() {
        let c = parse(
            r#"{"network":"172.30.0.0/16","subnetlen":26,"SubnetMin":"172.30.0.64","backend":{"type":"VXLAN","vni":42,"port":4789},"Extra":1}"#,
        )
        .unwrap();
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.subnet_min, Ipv4Addr::new(172, 30, 0, 64));
        assert_eq!(c.subnet_max, Ipv4Addr::new(172, 30, 255, 192));
        assert_eq!(
            c.backend,
            Backend::Vxlan {
                vni: 42,
                port: 4789
            }
        );
        let c = parse(r#"{"Network":"172.30.0.0/16","Backend":{"Type":"host-gw"}}"#).unwrap();
        assert_eq!(c.backend, Backend::HostGw);
    }

    #[test]
    fn bad_configs_name_the_key_and_the_field() {
        for (text, want) in [
            ("{ \"Network\": \"10.1.0.0/16\"", "not valid JSON"),
            ("[1]", "not a JSON object"),
            ("{}", "Network is missing"),
            (
                r#"{"Network":"10.1.0.0"}"#,
                "Network: \"10.1.0.0\" is not an IPv4 network",
            ),
            (r#"{"Network":5}"#, "Network: 5 is not a string"),
            (
                r#"{"Network":"172.30.0.0/16","SubnetLen":8}"#,
                "SubnetLen 8 is larger a network",
            ),
            (
                r#"{"Network":"172.30.0.0/16","SubnetLen":31}"#,
                "leaves no addresses",
            ),
            (
                r#"{"Network":"172.30.0.0/16","SubnetLen":-1}"#,
                "SubnetLen: -1 is not a prefix",
            ),
            (
                r#"{"Network":"172.30.0.0/16","SubnetMin":"172.31.0.0"}"#,
                "SubnetMin 172.31.0.0 is not in Network",
            ),
            (
                r#"{"Network":"172.30.0.0/16","SubnetMax":"x"}"#,
                "SubnetMax: \"x\" is not an IPv4 address",
            ),
            (
                r#"{"Network":"172.30.0.0/16","SubnetMin":"172.30.9.0","SubnetMax":"172.30.3.0"}"#,
                "above SubnetMax",
            ),
            (
                r#"{"Network":"172.30.0.0/16","Backend":{"Type":"udp"}}"#,
                "Type \"udp\"",
            ),
            (
                r#"{"Network":"172.30.0.0/16","Backend":{"Type":"aws-vpc"}}"#,
                "unknown Type \"aws-vpc\"",
            ),
            (
                r#"{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
                "VNI 16777216",
            ),
            (
                r#"{"Network":"172.30.0.0/16","Backend":"vxlan"}"#,
                "Backend: \"vxlan\" is not an object",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(KEY) && e.contains(want), "{text}: {e}");
        }
    }
}

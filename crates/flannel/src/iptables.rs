//! flanneld's iptables rules. In the filter table, the overlay's traffic is forwarded
//! (`FORWARD -s/-d <Network> -j ACCEPT`, as flannel does since 0.10: docker since 1.13 sets
//! the FORWARD policy to DROP, which would drop every packet arriving for a container from
//! another machine). With `--ip-masq`, flannel 0.5's four rules in the nat table: no NAT
//! inside the overlay, NAT for the overlay's traffic to anywhere else but multicast, and NAT
//! for the host's own traffic into the overlay.
//!
//! iptables has no netlink interface a crate drives well, so this runs the `iptables`
//! program (docker needs it on the machine anyway). Each rule is checked (`-C`) before it
//! is appended, so running this again adds nothing.

use ipnet::Ipv4Net;

use crate::Error;

/// One rule: (table, chain, rule words).
pub type Rule = (&'static str, &'static str, Vec<String>);

/// The rules for `network`, with the masquerade ones when `masq`.
#[must_use]
pub fn rules(network: Ipv4Net, masq: bool) -> Vec<Rule> {
    let n = network.to_string();
    let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    let mut out = vec![
        ("filter", "FORWARD", words(&format!("-s {n} -j ACCEPT"))),
        ("filter", "FORWARD", words(&format!("-d {n} -j ACCEPT"))),
    ];
    if masq {
        out.extend([
            ("nat", "FLANNEL", words(&format!("-d {n} -j ACCEPT"))),
            ("nat", "FLANNEL", words("! -d 224.0.0.0/4 -j MASQUERADE")),
            ("nat", "POSTROUTING", words(&format!("-s {n} -j FLANNEL"))),
            (
                "nat",
                "POSTROUTING",
                words(&format!("! -s {n} -d {n} -j MASQUERADE")),
            ),
        ]);
    }
    out
}

fn iptables(table: &str, args: &[&str]) -> Result<String, host_command::CommandError> {
    let mut cmd = host_command::command("iptables");
    cmd.args(["-w", "5", "-t", table]).args(args);
    host_command::run(&mut cmd)
}

/// Installs [`rules`] for `network`: with `masq`, the nat table's `FLANNEL` chain made (or
/// emptied) first.
///
/// # Errors
/// [`Error::Command`] when iptables fails.
pub fn install(network: Ipv4Net, masq: bool) -> Result<(), Error> {
    if masq && iptables("nat", &["-N", "FLANNEL"]).is_err() {
        iptables("nat", &["-F", "FLANNEL"]).map_err(Error::Command)?;
    }
    for (table, chain, rule) in rules(network, masq) {
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        let mut check = vec!["-C", chain];
        check.extend(&rule);
        if iptables(table, &check).is_ok() {
            continue;
        }
        let mut append = vec!["-A", chain];
        append.extend(&rule);
        iptables(table, &append).map_err(Error::Command)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_rules_and_flannels_four_masquerade_rules() {
        let lines = |masq| -> Vec<String> {
            rules("172.30.0.0/16".parse().unwrap(), masq)
                .iter()
                .map(|(t, c, w)| format!("{t} {c} {}", w.join(" ")))
                .collect()
        };
        assert_eq!(
            lines(true),
            [
                "filter FORWARD -s 172.30.0.0/16 -j ACCEPT",
                "filter FORWARD -d 172.30.0.0/16 -j ACCEPT",
                "nat FLANNEL -d 172.30.0.0/16 -j ACCEPT",
                "nat FLANNEL ! -d 224.0.0.0/4 -j MASQUERADE",
                "nat POSTROUTING -s 172.30.0.0/16 -j FLANNEL",
                "nat POSTROUTING ! -s 172.30.0.0/16 -d 172.30.0.0/16 -j MASQUERADE",
            ]
        );
        assert_eq!(lines(false).len(), 2);
    }
}

//! IP masquerade for traffic leaving the overlay (`--ip-masq`, flannel 0.5's four rules in
//! the nat table): no NAT inside the overlay, NAT for the overlay's traffic to anywhere
//! else but multicast, and NAT for the host's own traffic into the overlay.
//!
//! iptables has no netlink interface a crate drives well, so this runs the `iptables`
//! program (docker needs it on the machine anyway). Each rule is checked (`-C`) before it
//! is appended, so running this again adds nothing.

use ipnet::Ipv4Net;

use crate::Error;

/// The rules for `network`: (chain, rule words).
#[must_use]
pub fn rules(network: Ipv4Net) -> Vec<(&'static str, Vec<String>)> {
    let n = network.to_string();
    let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    vec![
        ("FLANNEL", words(&format!("-d {n} -j ACCEPT"))),
        ("FLANNEL", words("! -d 224.0.0.0/4 -j MASQUERADE")),
        ("POSTROUTING", words(&format!("-s {n} -j FLANNEL"))),
        (
            "POSTROUTING",
            words(&format!("! -s {n} -d {n} -j MASQUERADE")),
        ),
    ]
}

fn iptables(args: &[&str]) -> Result<String, host_command::CommandError> {
    let mut cmd = host_command::command("iptables");
    cmd.args(["-w", "5", "-t", "nat"]).args(args);
    host_command::run(&mut cmd)
}

/// Installs [`rules`] for `network`: the `FLANNEL` chain made (or emptied) first.
///
/// # Errors
/// [`Error::Command`] when iptables fails.
pub fn install(network: Ipv4Net) -> Result<(), Error> {
    if iptables(&["-N", "FLANNEL"]).is_err() {
        iptables(&["-F", "FLANNEL"]).map_err(Error::Command)?;
    }
    for (chain, rule) in rules(network) {
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        let mut check = vec!["-C", chain];
        check.extend(&rule);
        if iptables(&check).is_ok() {
            continue;
        }
        let mut append = vec!["-A", chain];
        append.extend(&rule);
        iptables(&append).map_err(Error::Command)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannels_four_rules() {
        let r = rules("172.30.0.0/16".parse().unwrap());
        let lines: Vec<String> = r
            .iter()
            .map(|(c, w)| format!("{c} {}", w.join(" ")))
            .collect();
        assert_eq!(
            lines,
            [
                "FLANNEL -d 172.30.0.0/16 -j ACCEPT",
                "FLANNEL ! -d 224.0.0.0/4 -j MASQUERADE",
                "POSTROUTING -s 172.30.0.0/16 -j FLANNEL",
                "POSTROUTING ! -s 172.30.0.0/16 -d 172.30.0.0/16 -j MASQUERADE",
            ]
        );
    }
}

//! The files flannel hands to docker: `/run/flannel/subnet.env` (flanneld) and the docker
//! options derived from it (`mk-docker-opts`, as flannel's `mk-docker-opts.sh`).

use std::collections::BTreeMap;
use std::path::Path;

use ipnet::Ipv4Net;

use crate::Error;

/// subnet.env's text: FLANNEL_NETWORK, FLANNEL_SUBNET (the lease's first address with its
/// prefix length, for `docker --bip`), FLANNEL_MTU and FLANNEL_IPMASQ, in flannel's order.
#[must_use]
pub fn subnet_env(network: Ipv4Net, lease: Ipv4Net, mtu: u32, ip_masq: bool) -> String {
    let first = std::net::Ipv4Addr::from(u32::from(lease.network()).saturating_add(1));
    format!(
        "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={first}/{}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ip_masq}\n",
        lease.prefix_len()
    )
}

/// Writes `text` to `path` atomically (a temporary file renamed into place), making the
/// directory (0755) first.
///
/// # Errors
/// [`Error::Io`] or [`Error::Write`] naming the path.
pub fn write(path: &Path, text: &str) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    atomic_file::write(path, text.as_bytes(), &atomic_file::Options::mode(0o644))
        .map_err(Error::Write)
}

/// Reads `KEY=value` lines (a shell-style env file without quoting or expansions; what
/// flanneld writes). Blank lines and `#` comments are skipped; other lines are errors.
///
/// # Errors
/// [`Error::EnvFile`] naming the file and the line.
pub fn parse_env(path: &str, text: &str) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| Error::EnvFile {
            path: path.to_string(),
            reason: format!("line {}: {line:?} is not KEY=value", n + 1),
        })?;
        let v = v.trim_matches('"');
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

/// How `mk-docker-opts` writes its options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DockerOptsStyle {
    /// One variable per option (`-i`).
    pub individual: bool,
    /// One combined variable (`-c`).
    pub combined: bool,
    /// Leave out the ip-masq option (`-m`).
    pub no_masq: bool,
}

/// The docker options file for `env` (subnet.env's variables): `DOCKER_OPT_BIP`,
/// `DOCKER_OPT_IPMASQ`, `DOCKER_OPT_MTU` (alphabetical, as the script's `compgen -v`) and/or
/// `<key>="<current> --bip=… --ip-masq=… --mtu=… "`.
///
/// # Errors
/// [`Error::EnvFile`] when FLANNEL_IPMASQ is neither true nor false.
pub fn docker_opts(
    path: &str,
    env: &BTreeMap<String, String>,
    style: DockerOptsStyle,
    key: &str,
    current: &str,
) -> Result<String, Error> {
    let mut opts: BTreeMap<&str, String> = BTreeMap::new();
    if let Some(s) = env.get("FLANNEL_SUBNET").filter(|s| !s.is_empty()) {
        opts.insert("DOCKER_OPT_BIP", format!("--bip={s}"));
    }
    if let Some(m) = env.get("FLANNEL_MTU").filter(|s| !s.is_empty()) {
        opts.insert("DOCKER_OPT_MTU", format!("--mtu={m}"));
    }
    if !style.no_masq {
        match env.get("FLANNEL_IPMASQ").map(String::as_str) {
            None | Some("") => {}
            Some("true") => {
                opts.insert("DOCKER_OPT_IPMASQ", "--ip-masq=false".into());
            }
            Some("false") => {
                opts.insert("DOCKER_OPT_IPMASQ", "--ip-masq=true".into());
            }
            Some(other) => {
                return Err(Error::EnvFile {
                    path: path.to_string(),
                    reason: format!("FLANNEL_IPMASQ={other:?} is neither true nor false"),
                })
            }
        }
    }
    let mut out = String::new();
    let both = !style.individual && !style.combined;
    if style.individual || both {
        for (k, v) in &opts {
            out.push_str(&format!("{k}=\"{v}\"\n"));
        }
    }
    if style.combined || both {
        let mut line = format!("{key}=\"{current} ");
        for v in opts.values() {
            line.push_str(v);
            line.push(' ');
        }
        line.push_str("\"\n");
        out.push_str(&line);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_env_as_flannel_writes_it() {
        assert_eq!(
            subnet_env("172.30.0.0/16".parse().unwrap(), "172.30.15.0/24".parse().unwrap(), 1450, true),
            "FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.15.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn docker_opts_as_mk_docker_opts_writes_them() {
        let env = parse_env("f", "FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.15.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
        let i = DockerOptsStyle {
            individual: true,
            combined: false,
            no_masq: false,
        };
        assert_eq!(
            docker_opts("f", &env, i, "DOCKER_OPTS", "").unwrap(),
            "DOCKER_OPT_BIP=\"--bip=172.30.15.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n"
        );
        let c = DockerOptsStyle {
            individual: false,
            combined: true,
            no_masq: true,
        };
        assert_eq!(
            docker_opts("f", &env, c, "DOCKER_OPTS", "--debug").unwrap(),
            "DOCKER_OPTS=\"--debug --bip=172.30.15.1/24 --mtu=1450 \"\n"
        );
        let mut bad = env.clone();
        bad.insert("FLANNEL_IPMASQ".into(), "yes".into());
        assert!(docker_opts("f", &bad, i, "DOCKER_OPTS", "")
            .unwrap_err()
            .to_string()
            .contains("FLANNEL_IPMASQ"));
        assert!(parse_env("f", "junk")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }
}

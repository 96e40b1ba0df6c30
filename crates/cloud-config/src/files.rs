//! The generated files whose content depends on what is already on disk or on the config:
//! `/etc/environment`, `/etc/coreos/update.conf`, `/etc/oem-release`, `/etc/hosts`,
//! `/run/flannel/options.env`.

use crate::config::{EnvSection, Oem};

/// Merges `vars` into the text of an environment file: the first `KEY=` line of each key is
/// rewritten, other lines kept (CRLF becomes LF), missing keys appended in the given order.
/// Returns `None` when the result equals `old` byte for byte.
pub fn merge_environment(old: &[u8], vars: &[(&str, &str)]) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(old);
    let mut pending: Vec<(&str, &str)> = vars.to_vec();
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let line = line.trim_end_matches('\n').trim_end_matches('\r');
        let key = line.split_once('=').map(|(k, _)| k);
        let pos = key.and_then(|k| pending.iter().position(|(pk, _)| *pk == k));
        match pos {
            Some(i) => {
                let (k, v) = pending.remove(i);
                out.push_str(&format!("{k}={v}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (k, v) in pending {
        out.push_str(&format!("{k}={v}\n"));
    }
    (out.as_bytes() != old).then(|| out.into_bytes())
}

/// Regenerates `update.conf` from `base` (the existing `/etc/coreos/update.conf`, else
/// `/usr/share/coreos/update.conf`): for each set key the first line *starting with* the key
/// name is replaced, the others appended alphabetically; every line ends with `\n`.
pub fn update_conf(base: &str, update: &EnvSection) -> String {
    let mut pending: Vec<(&str, &str)> =
        update.vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut out = String::new();
    for line in base.lines() {
        match pending.iter().position(|(k, _)| line.starts_with(k)) {
            Some(i) => {
                let (k, v) = pending.remove(i);
                out.push_str(&format!("{k}={v}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    pending.sort();
    for (k, v) in pending {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}

/// Go's `%q` for the quoted fields of `/etc/oem-release`.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `/etc/oem-release`.
pub fn oem_release(oem: &Oem) -> String {
    format!(
        "ID={}\nVERSION_ID={}\nNAME={}\nHOME_URL={}\nBUG_REPORT_URL={}\n",
        oem.id,
        oem.version_id,
        go_quote(&oem.name),
        go_quote(&oem.home_url),
        go_quote(&oem.bug_report_url)
    )
}

/// `/etc/hosts` for `manage_etc_hosts: localhost`.
pub fn etc_hosts(hostname: &str) -> String {
    format!("127.0.0.1 {hostname}\n")
}

/// `/run/flannel/options.env`: `KEY=value` lines joined by `\n`, no trailing newline.
pub fn flannel_options(flannel: &EnvSection) -> String {
    flannel
        .vars
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(vars: &[(&'static str, &str)]) -> EnvSection {
        EnvSection {
            vars: vars.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }

    #[test]
    fn update_conf_examples() {
        let s = section(&[("REBOOT_STRATEGY", "etcd-lock")]);
        assert_eq!(
            update_conf(
                "SERVER=https://example.com\nGROUP=thegroupc\nREBOOT_STRATEGY=awesome",
                &s
            ),
            "SERVER=https://example.com\nGROUP=thegroupc\nREBOOT_STRATEGY=etcd-lock\n"
        );
        let s = section(&[("REBOOT_STRATEGY", "off")]);
        assert_eq!(
            update_conf("GROUP=stable\n", &s),
            "GROUP=stable\nREBOOT_STRATEGY=off\n"
        );
        let s = section(&[("SERVER", "x"), ("GROUP", "beta")]);
        assert_eq!(update_conf("", &s), "GROUP=beta\nSERVER=x\n");
        let s = section(&[("GROUP", "beta")]);
        assert_eq!(
            update_conf("GROUPS=a\nGROUP=b\n", &s),
            "GROUP=beta\nGROUP=b\n"
        );
    }

    #[test]
    fn environment_merge() {
        let vars = [
            ("COREOS_PRIVATE_IPV4", "10.1.1.1"),
            ("COREOS_PUBLIC_IPV4", "1.2.3.4"),
        ];
        assert_eq!(
            merge_environment(b"# c\r\nFOO=bar\nCOREOS_PUBLIC_IPV4=old\nCOREOS_PUBLIC_IPV4=dup", &vars).unwrap(),
            b"# c\nFOO=bar\nCOREOS_PUBLIC_IPV4=1.2.3.4\nCOREOS_PUBLIC_IPV4=dup\nCOREOS_PRIVATE_IPV4=10.1.1.1\n"
        );
        let same = b"COREOS_PRIVATE_IPV4=10.1.1.1\nCOREOS_PUBLIC_IPV4=1.2.3.4\n";
        assert_eq!(merge_environment(same, &vars), None);
        assert_eq!(merge_environment(b"", &vars).unwrap(), same);
    }

    #[test]
    fn oem_release_quotes() {
        let oem = Oem {
            id: "vmware".into(),
            name: "VMWare".into(),
            version_id: "@@OEM_VERSION_ID@@".into(),
            home_url: String::new(),
            bug_report_url: "https://github.com/coreos/bugs/issues".into(),
        };
        assert_eq!(
            oem_release(&oem),
            "ID=vmware\nVERSION_ID=@@OEM_VERSION_ID@@\nNAME=\"VMWare\"\nHOME_URL=\"\"\nBUG_REPORT_URL=\"https://github.com/coreos/bugs/issues\"\n"
        );
    }
}

//! Linux capabilities of an app, by appc's rules (as rkt's stage1 applies them): the
//! default set, replaced by an `os/linux/capabilities-retain-set` isolator or reduced by an
//! `os/linux/capabilities-remove-set` one (`--caps-retain`, `--caps-remove`; not both).
//! The app's bounding set is cut to the result before it starts, so not even a root app gets
//! back what is left out (`CAP_SYS_ADMIN`, `CAP_NET_ADMIN`, `CAP_SYS_PTRACE` …).

use rustix::thread::CapabilitySet as C;

use crate::aci::App;
use crate::Error;

/// appc's default set (rkt's `appDefaultCapabilities`).
pub const DEFAULT: C = C::AUDIT_WRITE
    .union(C::CHOWN)
    .union(C::DAC_OVERRIDE)
    .union(C::FSETID)
    .union(C::FOWNER)
    .union(C::KILL)
    .union(C::MKNOD)
    .union(C::NET_RAW)
    .union(C::NET_BIND_SERVICE)
    .union(C::SETUID)
    .union(C::SETGID)
    .union(C::SETPCAP)
    .union(C::SETFCAP)
    .union(C::SYS_CHROOT);

/// The isolator names.
pub const RETAIN: &str = "os/linux/capabilities-retain-set";
pub const REMOVE: &str = "os/linux/capabilities-remove-set";

const NAMES: &[(&str, C)] = &[
    ("CAP_CHOWN", C::CHOWN),
    ("CAP_DAC_OVERRIDE", C::DAC_OVERRIDE),
    ("CAP_DAC_READ_SEARCH", C::DAC_READ_SEARCH),
    ("CAP_FOWNER", C::FOWNER),
    ("CAP_FSETID", C::FSETID),
    ("CAP_KILL", C::KILL),
    ("CAP_SETGID", C::SETGID),
    ("CAP_SETUID", C::SETUID),
    ("CAP_SETPCAP", C::SETPCAP),
    ("CAP_LINUX_IMMUTABLE", C::LINUX_IMMUTABLE),
    ("CAP_NET_BIND_SERVICE", C::NET_BIND_SERVICE),
    ("CAP_NET_BROADCAST", C::NET_BROADCAST),
    ("CAP_NET_ADMIN", C::NET_ADMIN),
    ("CAP_NET_RAW", C::NET_RAW),
    ("CAP_IPC_LOCK", C::IPC_LOCK),
    ("CAP_IPC_OWNER", C::IPC_OWNER),
    ("CAP_SYS_MODULE", C::SYS_MODULE),
    ("CAP_SYS_RAWIO", C::SYS_RAWIO),
    ("CAP_SYS_CHROOT", C::SYS_CHROOT),
    ("CAP_SYS_PTRACE", C::SYS_PTRACE),
    ("CAP_SYS_PACCT", C::SYS_PACCT),
    ("CAP_SYS_ADMIN", C::SYS_ADMIN),
    ("CAP_SYS_BOOT", C::SYS_BOOT),
    ("CAP_SYS_NICE", C::SYS_NICE),
    ("CAP_SYS_RESOURCE", C::SYS_RESOURCE),
    ("CAP_SYS_TIME", C::SYS_TIME),
    ("CAP_SYS_TTY_CONFIG", C::SYS_TTY_CONFIG),
    ("CAP_MKNOD", C::MKNOD),
    ("CAP_LEASE", C::LEASE),
    ("CAP_AUDIT_WRITE", C::AUDIT_WRITE),
    ("CAP_AUDIT_CONTROL", C::AUDIT_CONTROL),
    ("CAP_SETFCAP", C::SETFCAP),
    ("CAP_MAC_OVERRIDE", C::MAC_OVERRIDE),
    ("CAP_MAC_ADMIN", C::MAC_ADMIN),
    ("CAP_SYSLOG", C::SYSLOG),
    ("CAP_WAKE_ALARM", C::WAKE_ALARM),
    ("CAP_BLOCK_SUSPEND", C::BLOCK_SUSPEND),
    ("CAP_AUDIT_READ", C::AUDIT_READ),
    ("CAP_PERFMON", C::PERFMON),
    ("CAP_BPF", C::BPF),
    ("CAP_CHECKPOINT_RESTORE", C::CHECKPOINT_RESTORE),
];

/// Parses `CAP_NET_ADMIN,CAP_CHOWN` (case-insensitive, `CAP_` optional), checked.
///
/// # Errors
/// [`Error::Usage`] naming the unknown capability.
pub fn parse_list(list: &str, flag: &str) -> Result<Vec<String>, Error> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let up = s.to_ascii_uppercase();
            let name = if up.starts_with("CAP_") {
                up
            } else {
                format!("CAP_{up}")
            };
            if NAMES.iter().any(|(n, _)| *n == name) {
                Ok(name)
            } else {
                Err(Error::Usage(format!("--{flag}: unknown capability {s:?}")))
            }
        })
        .collect()
}

fn set_of(names: &[String]) -> C {
    names
        .iter()
        .filter_map(|n| NAMES.iter().find(|(k, _)| k == n).map(|(_, c)| *c))
        .fold(C::empty(), C::union)
}

/// The isolator of an app's `other` fields holding `name`'s set, if any.
fn isolator_set(app: &App, name: &str) -> Option<Vec<String>> {
    app.other
        .get("isolators")?
        .as_array()?
        .iter()
        .find_map(|i| {
            (i["name"] == name).then(|| {
                i["value"]["set"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(serde_json::Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default()
            })
        })
}

/// Makes `name` (retain or remove) the app's only capability isolator, with `caps`.
pub fn set_only(app: &mut App, name: &str, caps: &[String]) {
    let entry = serde_json::json!({"name": name, "value": {"set": caps}});
    let list = app
        .other
        .entry("isolators".to_string())
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if let Some(a) = list.as_array_mut() {
        a.retain(|i| i["name"] != RETAIN && i["name"] != REMOVE);
        a.push(entry);
    } else {
        *list = serde_json::Value::Array(vec![entry]);
    }
}

/// The capabilities `app` runs with.
///
/// # Errors
/// [`Error::Usage`] when both a retain and a remove set are given.
pub fn for_app(app: &App, name: &str) -> Result<C, Error> {
    match (isolator_set(app, RETAIN), isolator_set(app, REMOVE)) {
        (Some(_), Some(_)) => Err(Error::Usage(format!(
            "app {name}: a retain set and a remove set of capabilities exclude each other"
        ))),
        (Some(keep), None) => Ok(set_of(&keep)),
        (None, Some(drop)) => Ok(DEFAULT.difference(set_of(&drop))),
        (None, None) => Ok(DEFAULT),
    }
}

/// Cuts this process's bounding set to `keep` (needs `CAP_SETPCAP`: call it while still
/// root, before the user changes).
///
/// # Errors
/// The capability that could not be dropped.
pub fn restrict_bounding(keep: C) -> Result<(), Error> {
    for (name, c) in NAMES {
        if !keep.contains(*c) {
            match rustix::thread::remove_capability_from_bounding_set(*c) {
                // A capability this kernel does not know is not there to drop.
                Ok(()) | Err(rustix::io::Errno::INVAL) => {}
                Err(e) => {
                    return Err(Error::Usage(format!("dropping {name}: {e}")));
                }
            }
        }
    }
    Ok(())
}

/// Cuts this process's effective, permitted and inheritable sets to `keep` (after the
/// user changed: a non-root user has none left anyway).
///
/// # Errors
/// When the sets cannot be read or set.
pub fn restrict_sets(keep: C) -> Result<(), Error> {
    let now = rustix::thread::capabilities(None)
        .map_err(|e| Error::Usage(format!("reading capabilities: {e}")))?;
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: now.effective & keep,
            permitted: now.permitted & keep,
            inheritable: now.inheritable & keep,
        },
    )
    .map_err(|e| Error::Usage(format!("setting capabilities: {e}")))
}

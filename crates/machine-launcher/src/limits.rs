//! The host limits a cluster of a given size needs, raised before anything is made.
//!
//! Every nspawn machine runs its own systemd, journald, udev, D-Bus and daemons as the
//! host's root: their inotify instances and watches, processes and threads all count
//! against the host's per-user and system-wide limits, and the cluster's switch holds a
//! neighbour entry per machine. Debian's defaults (`fs.inotify.max_user_instances=128`)
//! stop a cluster at about 20 machines, whose systemd then fails with "Failed to allocate
//! manager object" (each machine holds about six instances). As kind and similar tools
//! tell their users to, [`ensure`] raises what is
//! too low for the cluster (never lowering anything), and says so; where it cannot (not
//! root, a read-only `/proc/sys` in a container) it refuses before the cluster is touched,
//! naming each limit and the command that raises it.

use crate::host::Host;
use crate::Error;

/// One limit a cluster needs: the sysctl, and the least value for `machines` machines.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    pub key: &'static str,
    /// Base value plus per-machine share plus a share per pair of machines.
    pub base: u64,
    pub per_machine: u64,
    pub per_pair: u64,
    /// Why it matters, for the message.
    pub why: &'static str,
}

impl Need {
    /// The least value for `machines` machines.
    #[must_use]
    pub fn value(&self, machines: u64) -> u64 {
        self.base + self.per_machine * machines + self.per_pair * machines * machines
    }
}

/// What a cluster needs of the host: a headroom for the host's own use, and a share per
/// machine measured on booted machines of the book's user-data (inotify instances, watches
/// and tasks counted in `/proc`) with margin. Small clusters fit Debian's defaults, so
/// nothing is changed for them.
pub const NEEDS: &[Need] = &[
    Need {
        key: "fs.inotify.max_user_instances",
        base: 64,
        per_machine: 8,
        per_pair: 0,
        why: "each machine's systemd, journald and udev watch files",
    },
    Need {
        key: "fs.inotify.max_user_watches",
        base: 16_384,
        per_machine: 2_048,
        per_pair: 0,
        why: "the inotify watches those instances hold",
    },
    Need {
        key: "kernel.pid_max",
        base: 4_096,
        per_machine: 256,
        per_pair: 0,
        why: "every machine's processes and threads are the host's",
    },
    Need {
        key: "kernel.threads-max",
        base: 4_096,
        per_machine: 256,
        per_pair: 0,
        why: "every machine's threads are the host's",
    },
    // The kernel's ARP table is one for all network namespaces: every machine keeps an
    // entry for every machine it talks to (etcd and fleet reach all of them), so a cluster
    // fills it with about N² entries. Past gc_thresh3 the kernel drops packets
    // ("No buffer space available") and machines lose each other.
    Need {
        key: "net.ipv4.neigh.default.gc_thresh1",
        base: 28,
        per_machine: 0,
        per_pair: 1,
        why: "the kernel's one ARP table holds an entry per pair of machines",
    },
    Need {
        key: "net.ipv4.neigh.default.gc_thresh2",
        base: 112,
        per_machine: 0,
        per_pair: 4,
        why: "the kernel's one ARP table holds an entry per pair of machines",
    },
    Need {
        key: "net.ipv4.neigh.default.gc_thresh3",
        base: 224,
        per_machine: 0,
        per_pair: 8,
        why: "the kernel's one ARP table holds an entry per pair of machines",
    },
];

/// A limit raised for the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raised {
    pub key: String,
    pub from: u64,
    pub to: u64,
}

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "raised {} from {} to {}", self.key, self.from, self.to)
    }
}

/// Raises every limit in [`NEEDS`] that is below what `machines` machines need; returns
/// what it raised. Checks all first: if any cannot be raised, none is, and the error names
/// each with the command that raises it.
///
/// # Errors
/// [`Error::Limits`] listing what is too low and how to raise it.
pub fn ensure(host: &dyn Host, machines: u64) -> Result<Vec<Raised>, Error> {
    let mut low = Vec::new();
    for n in NEEDS {
        let want = n.value(machines);
        match host.sysctl_read(n.key) {
            Some(have) if have >= want => {}
            // A limit this kernel does not have is no limit.
            None => {}
            Some(have) => low.push((n, have, want)),
        }
    }
    if low.is_empty() {
        return Ok(Vec::new());
    }
    let writable = low.iter().all(|(n, _, _)| host.sysctl_writable(n.key));
    if !writable {
        let lines: Vec<String> = low
            .iter()
            .map(|(n, have, want)| {
                format!(
                    "{} is {have}, {machines} machines need {want} ({}): sudo sysctl -w {}={want}",
                    n.key, n.why, n.key
                )
            })
            .collect();
        return Err(Error::Limits(lines.join("\n  ")));
    }
    let mut raised = Vec::new();
    for (n, have, want) in low {
        host.sysctl_write(n.key, want)?;
        raised.push(Raised {
            key: n.key.to_string(),
            from: have,
            to: want,
        });
    }
    Ok(raised)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeHost;

    #[test]
    fn low_limits_are_raised_and_high_ones_left_alone() {
        let host = FakeHost::legacy();
        host.set_sysctl("fs.inotify.max_user_instances", 128);
        host.set_sysctl("fs.inotify.max_user_watches", 10_000_000);
        host.set_sysctl("kernel.pid_max", 4_194_304);
        let raised = ensure(&host, 100).unwrap();
        assert_eq!(
            raised[0],
            Raised {
                key: "fs.inotify.max_user_instances".into(),
                from: 128,
                to: 64 + 8 * 100
            }
        );
        assert_eq!(host.sysctl_read("fs.inotify.max_user_instances"), Some(864));
        // Never lowered; unknown limits are not invented.
        assert_eq!(
            host.sysctl_read("fs.inotify.max_user_watches"),
            Some(10_000_000)
        );
        assert_eq!(host.sysctl_read("kernel.pid_max"), Some(4_194_304));
        assert_eq!(host.sysctl_read("kernel.threads-max"), None);
        // A second time, nothing to do; a book-sized cluster needs nothing raised.
        assert!(ensure(&host, 100).unwrap().is_empty());
        let small = FakeHost::legacy();
        for (k, v) in [
            ("fs.inotify.max_user_instances", 128),
            ("fs.inotify.max_user_watches", 192_540),
            ("kernel.pid_max", 32_768),
            ("kernel.threads-max", 192_735),
            ("net.ipv4.neigh.default.gc_thresh1", 128),
            ("net.ipv4.neigh.default.gc_thresh2", 512),
            ("net.ipv4.neigh.default.gc_thresh3", 1_024),
        ] {
            small.set_sysctl(k, v);
        }
        assert!(ensure(&small, 3).unwrap().is_empty());
    }

    #[test]
    fn limits_that_cannot_be_raised_are_named_and_none_is_changed() {
        let host = FakeHost::legacy();
        host.set_sysctl("fs.inotify.max_user_instances", 128);
        host.set_sysctl("net.ipv4.neigh.default.gc_thresh3", 1_024);
        host.set_sysctl_read_only("net.ipv4.neigh.default.gc_thresh3");
        let e = ensure(&host, 200).unwrap_err().to_string();
        assert!(
            e.contains("fs.inotify.max_user_instances is 128, 200 machines need 1664"),
            "{e}"
        );
        assert!(
            e.contains("sudo sysctl -w net.ipv4.neigh.default.gc_thresh3=320224"),
            "{e}"
        );
        assert_eq!(host.sysctl_read("fs.inotify.max_user_instances"), Some(128));
    }
}

//! What `ferrite status` and the benchmarks read: whether machines run, and how much
//! memory a machine uses (its processes' PSS by systemd unit, and its memory cgroup).

use crate::boot::machine_running;
use crate::cgroup::{self, Layout};
use crate::host::Host;
use crate::state::{ClusterState, MachineState};
use crate::{Driver, Error, Paths};

/// One row of `ferrite status`.
#[derive(Debug, Clone)]
pub struct MachineStatus {
    /// Machine name.
    pub name: String,
    /// `running` or `stopped`.
    pub state: String,
    /// Its address.
    pub ip: String,
    /// The USR partition it runs from.
    pub usr: String,
    /// The Ferrite version that USR carries (`-` when it cannot be read).
    pub version: String,
}

/// The machines of a cluster and whether they run. A container's USR is the slot its last
/// boot chose (the `slots` file the launcher writes at every boot) and its version is read
/// from that `/usr`; a virtual machine is asked — the partition its kernel mounted on
/// `/usr` (`rootdev -s /usr`), named from the disk's GPT, and the version in
/// `/usr/share/coreos/release` — or, when it cannot be (still booting, stopped), its USR is
/// the slot its last boot chose (`qemu::supervise` writes it down at every boot).
pub fn status(host: &dyn Host, paths: &Paths, cluster: &ClusterState) -> Vec<MachineStatus> {
    cluster
        .machines
        .iter()
        .map(|m| {
            let running = machine_running(host, m);
            let dir = cluster.machine_dir(paths, &m.name);
            let (usr, version) = match m.driver {
                Driver::Nspawn => (
                    crate::nspawn::booted_slot(&dir).or_else(|| m.usr_label.clone()),
                    running
                        .then(|| {
                            std::fs::read_to_string(dir.join("root/usr/share/coreos/release")).ok()
                        })
                        .flatten()
                        .and_then(|t| release_version(&t)),
                ),
                Driver::Qemu => {
                    let asked = running
                        .then(|| usr_in_machine(host, paths, cluster, m))
                        .flatten();
                    match asked {
                        Some((usr, version)) => (Some(usr), version),
                        None => (
                            std::fs::read_to_string(dir.join("booted"))
                                .ok()
                                .map(|s| s.trim().to_string()),
                            None,
                        ),
                    }
                }
            };
            MachineStatus {
                usr: usr.unwrap_or_else(|| "-".into()),
                version: version.unwrap_or_else(|| "-".into()),
                name: m.name.clone(),
                state: if running { "running" } else { "stopped" }.to_string(),
                ip: m.ip.clone(),
            }
        })
        .collect()
}

/// `COREOS_RELEASE_VERSION` of a `/usr/share/coreos/release`.
fn release_version(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("COREOS_RELEASE_VERSION="))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The label of the partition a running virtual machine has on `/usr`, and the version
/// that USR carries, asked of the machine itself.
fn usr_in_machine(
    host: &dyn Host,
    paths: &Paths,
    cluster: &ClusterState,
    m: &MachineState,
) -> Option<(String, Option<String>)> {
    let (code, out, _) = crate::boot::exec_in(
        host,
        paths,
        cluster,
        m,
        &[
            "sh",
            "-c",
            "rootdev -s /usr && cat /usr/share/coreos/release",
        ],
    )
    .ok()?;
    if code != 0 {
        return None;
    }
    // /dev/vda3 → 3 (the kernel's names: a `p` before the number when the disk's name
    // ends in a digit).
    let dev = out.lines().next()?.trim();
    let digits = dev.len() - dev.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let number: u32 = dev[dev.len() - digits..].parse().ok()?;
    let disk = coreos_disk::Disk::open(&cluster.machine_dir(paths, &m.name).join("disk.img"));
    let label = disk
        .partitions()
        .ok()?
        .into_iter()
        .find(|p| p.number == number)
        .map(|p| p.label)?;
    Some((label, release_version(&out)))
}

/// A machine's memory: the PSS of its processes (by systemd unit) and its memory cgroup.
#[derive(Debug, Clone, Default)]
pub struct MemoryReport {
    /// Sum of the processes' proportional set sizes, KiB.
    pub pss_kib: u64,
    /// Sum of their resident set sizes, KiB.
    pub rss_kib: u64,
    /// The memory cgroup's usage, KiB (anonymous memory plus page cache).
    pub cgroup_usage_kib: u64,
    /// The cgroup's anonymous memory, KiB.
    pub cgroup_rss_kib: u64,
    /// The cgroup's page cache, KiB.
    pub cgroup_cache_kib: u64,
    /// PSS per systemd unit inside the machine (the launcher's own `supervisor` included),
    /// largest first.
    pub by_unit: Vec<(String, u64)>,
}

fn kib_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The last component of a process's cgroup in the hierarchy systemd names units in.
fn unit_of(pid: u32, unified: bool) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| {
                    if unified {
                        l.starts_with("0::")
                    } else {
                        l.contains(":name=systemd:")
                    }
                })
                .and_then(|l| l.rsplit('/').next().map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}

/// Measures a running machine's memory.
pub fn memory(host: &dyn Host, m: &MachineState) -> Result<MemoryReport, Error> {
    if !machine_running(host, m) {
        return Err(Error::NotRunning(m.name.clone()));
    }
    let layout = cgroup::detect(host);
    let unified = matches!(layout, Layout::Unified(_));
    let mut report = MemoryReport::default();
    let pids = cgroup::dir_for(&layout, &m.cgroups, "systemd")
        .map(|root| cgroup::processes(host, root))
        .unwrap_or_default();
    let mut by_unit: std::collections::BTreeMap<String, u64> = Default::default();
    for pid in pids {
        let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        let pss = kib_field(&smaps, "Pss:");
        report.pss_kib += pss;
        report.rss_kib += kib_field(&smaps, "Rss:");
        *by_unit.entry(unit_of(pid, unified)).or_default() += pss;
    }
    let mut units: Vec<(String, u64)> = by_unit.into_iter().collect();
    units.sort_by_key(|(_, v)| std::cmp::Reverse(*v));
    report.by_unit = units;
    if let Some(mem) = cgroup::dir_for(&layout, &m.cgroups, "memory") {
        let read = |f: &str| host.cgroup_read(&mem.join(f)).unwrap_or_default();
        let (usage, anon, cache) = if unified {
            ("memory.current", "anon ", "file ")
        } else {
            ("memory.usage_in_bytes", "total_rss ", "total_cache ")
        };
        report.cgroup_usage_kib = read(usage).trim().parse::<u64>().unwrap_or(0) / 1024;
        let stat = read("memory.stat");
        let field = |k: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
                / 1024
        };
        report.cgroup_rss_kib = field(anon);
        report.cgroup_cache_kib = field(cache);
    }
    Ok(report)
}

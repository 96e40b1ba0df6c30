//! The nspawn driver's supervisor, `ferrite __nspawn` ([`supervise`]): a container's power
//! and bootloader, as `ferrite __qemu` is a virtual machine's. It runs `systemd-nspawn
//! --boot` until the machine powers off or is killed (the end) or reboots — nspawn exits
//! with 133 — and then boots it again the way GRUB would: `gptprio.next` on the machine's
//! own disk (spending a try), that USR mounted read-only and bound on the machine's `/usr`,
//! `/run/ferrite/slots` naming it. So `reboot` in a machine that took an update boots the
//! new slot, and a slot whose try was spent without being marked good falls back.
//!
//! Mounts: the first boot (`boot::prepare`, from `ferrite up`) shares the image's own USR
//! among machines (the cached image file never changes); any other slot, and every slot
//! after a reboot, is mounted privately at `<machine dir>/usr` from the machine's disk,
//! because a machine's disk is written by its updates and must never back another
//! machine's running `/usr`.
//!
//! cgroups: the supervisor moves itself into `<machine cgroup>/ferrite` and starts each
//! boot's nspawn (through `ferrite __boot`) in the machine's cgroup itself, which nspawn
//! splits into its `supervisor` and the machine's `payload`; after a boot the supervisor
//! kills what is left of those and removes them (and, on cgroup v2, disables the controllers
//! nspawn enabled, so the next nspawn may join), so every boot starts as the first did.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use coreos_disk::Disk;
use serde::{Deserialize, Serialize};

use crate::boot::say;
use crate::cgroup::{self, Layout};
use crate::host::Host;
use crate::{io_err, Error};

/// The exit status of `systemd-nspawn` when its machine rebooted.
const REBOOTED: i32 = 133;

/// What the supervisor needs, written by `ferrite up` beside the machine's disk
/// (`nspawn.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// The machine's name.
    pub name: String,
    /// The machine's directory: `disk.img`, `root`, `slots`, `console.log`.
    pub dir: PathBuf,
    /// The machine's cgroups (recorded in the cluster's state before they were made).
    pub cgroups: Vec<PathBuf>,
    /// The `ferrite` executable (for `__boot`).
    pub exe: PathBuf,
    /// `systemd-nspawn`'s arguments.
    pub args: Vec<String>,
    /// The image the machine's disk was made from: a USR partition its thin disk never
    /// wrote is read from here.
    #[serde(default)]
    pub image: Option<PathBuf>,
}

/// The `slots` file a boot leaves for update_engine: the disk image as the machine sees it
/// and the slot this boot chose, as a bootloader would pass it.
pub(crate) fn slots_file(in_machine_disk: &str, label: &str) -> String {
    format!("DISK={in_machine_disk}\nACTIVE={label}\n")
}

/// The disk image's path inside the machine (bound there by nspawn's arguments).
pub(crate) const IN_MACHINE_DISK: &str = "/run/ferrite/disk.img";

/// The slot a machine's last boot chose, as its `slots` file says (`-` when none).
pub fn booted_slot(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("slots")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("ACTIVE="))
        .map(|s| s.trim().to_string())
}

/// `ferrite __nspawn`: boots the machine as often as it reboots.
pub fn supervise(spec_path: &Path) -> Result<(), Error> {
    let data = std::fs::read(spec_path).map_err(io_err("reading", spec_path))?;
    let spec: Spec = serde_json::from_slice(&data).map_err(|e| Error::State {
        path: spec_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let host = crate::RealHost;
    let layout = cgroup::detect(&host);
    // Out of the machine's cgroup, so nspawn may have it to itself (on cgroup v2 a cgroup
    // that holds a process cannot hand controllers down).
    let own = cgroup::children_of(&spec.cgroups, "ferrite");
    cgroup::create(&host, &layout, &own, cgroup::Limits::default())?;
    cgroup::join(&host, &own, std::process::id())?;
    // Bounded: a machine that keeps rebooting within seconds stops instead of spinning.
    let mut quick = 0;
    loop {
        let started = Instant::now();
        let code = boot_once(&spec)?;
        clear_boot(&host, &layout, &spec.cgroups);
        if code != Some(REBOOTED) {
            say(&spec.dir, "the machine stopped");
            return Ok(());
        }
        say(&spec.dir, "the machine rebooted");
        quick = if started.elapsed() < Duration::from_secs(5) {
            quick + 1
        } else {
            0
        };
        if quick >= 10 {
            say(
                &spec.dir,
                "ten boots ended within seconds each: powering off",
            );
            return Ok(());
        }
        let label = choose_slot(&host, &spec.dir, spec.image.as_deref()).inspect_err(|e| {
            say(&spec.dir, &format!("no USR partition can boot: {e}"));
        })?;
        say(&spec.dir, &format!("booting {label}"));
    }
}

/// One boot: `systemd-nspawn` in the machine's cgroups until it exits; its exit code.
fn boot_once(spec: &Spec) -> Result<Option<i32>, Error> {
    let console = spec.dir.join("console.log");
    let open = || {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&console)
            .map_err(io_err("opening", &console))
    };
    let mut cmd = crate::boot::in_cgroups(&spec.exe, &spec.cgroups);
    cmd.arg("systemd-nspawn")
        .args(&spec.args)
        .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network")
        .stdin(Stdio::null())
        .stdout(open()?)
        .stderr(open()?);
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        command: "systemd-nspawn".into(),
        source,
    })?;
    let status = child.wait().map_err(|source| Error::Spawn {
        command: "systemd-nspawn".into(),
        source,
    })?;
    Ok(status.code())
}

/// What a finished boot left in the machine's cgroups — nspawn's `supervisor` and
/// `payload` — killed and removed, and on cgroup v2 the controllers nspawn enabled
/// disabled again, so the next boot's nspawn can join the machine's cgroup.
fn clear_boot(host: &dyn Host, layout: &Layout, dirs: &[PathBuf]) {
    for dir in dirs {
        let left: Vec<PathBuf> = host
            .cgroup_children(dir)
            .into_iter()
            .filter(|c| c.file_name().is_none_or(|n| n != "ferrite"))
            .collect();
        cgroup::kill_all(host, &left);
        cgroup::remove(host, &left);
        if matches!(layout, Layout::Unified(_)) {
            let file = dir.join("cgroup.subtree_control");
            let enabled = host.cgroup_read(&file).unwrap_or_default();
            for c in enabled.split_whitespace() {
                if let Err(e) = host.cgroup_write(&file, &format!("-{c}")) {
                    tracing::warn!("{e}");
                }
            }
        }
    }
}

/// GRUB's step between boots: `gptprio.next` on the machine's disk, that slot mounted
/// privately and bound on the machine's `/usr`, the `slots` file rewritten; returns the
/// slot's label.
fn choose_slot(host: &dyn Host, dir: &Path, image: Option<&Path>) -> Result<String, Error> {
    let root = dir.join("root");
    host.unmount(&root.join("usr"))?;
    let private = dir.join("usr");
    host.unmount(&private)?;
    let disk_path = dir.join("disk.img");
    let disk = Disk::open(&disk_path);
    let usr = disk.gptprio_next()?;
    // A slot the thin disk never wrote is the image's (same place in both).
    let source = match image {
        Some(img) => crate::provision::usr_source(img, &disk_path, &usr)?,
        None => disk_path.clone(),
    };
    host.mount_partition(&source, usr.offset(), usr.bytes(), &private, true)?;
    write_slots(dir, &usr.label)?;
    host.bind_ro(&private, &root.join("usr"))?;
    Ok(usr.label)
}

/// Writes the machine's `slots` file for a boot of `label`.
pub(crate) fn write_slots(dir: &Path, label: &str) -> Result<(), Error> {
    atomic_file::write(
        &dir.join("slots"),
        slots_file(IN_MACHINE_DISK, label).as_bytes(),
        &atomic_file::Options::mode(0o644),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slots_file_names_the_disk_and_the_booted_slot() {
        let dir = tempfile::tempdir().unwrap();
        write_slots(dir.path(), "USR-B").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("slots")).unwrap(),
            "DISK=/run/ferrite/disk.img\nACTIVE=USR-B\n"
        );
        assert_eq!(booted_slot(dir.path()).as_deref(), Some("USR-B"));
        assert_eq!(booted_slot(&dir.path().join("none")), None);
    }
}

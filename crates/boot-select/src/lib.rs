//! The disk's own boot path: how a Ferrite disk boots from its firmware.
//!
//! CoreOS's GRUB chose the USR partition with its `gptprio.next` command, reading and
//! writing the partitions' GPT attribute bits (priority, tries, successful), then loaded the
//! kernel from that USR. Debian's GRUB has no such command, so a Ferrite disk boots this
//! way instead:
//!
//! ```text
//! UEFI firmware ─► EFI-SYSTEM: systemd-boot (BOOTX64.EFI), one entry, no menu
//!   ─► the selector: a fixed kernel (the image's) + a small initramfs whose init is
//!      `ferrite-boot-select`
//!        ─► loads the disk drivers, finds the disk with USR-A and USR-B
//!        ─► gptprio.next on the GPT (coreos-disk: spend a try, write both GPT copies)
//!        ─► mounts that USR read-only, kexecs the kernel and initramfs it carries with
//!           [`kernel_cmdline`] (`mount.usr=PARTUUID=<slot>`)
//! ```
//!
//! The GPT attributes are the only record of the choice: the selector keeps no state of
//! its own, and the QEMU driver's supervisor (which boots `-kernel` directly, for speed)
//! runs the same `gptprio_next` and the same [`kernel_cmdline`], so both paths agree on
//! every step of the update lifecycle by construction (and a test boots both). Recovery
//! entries in the boot menu (`coreos-a`, `coreos-b`, as CoreOS had) pass
//! `ferrite.slot=USR-A|USR-B`: that slot boots and no bit changes.
//!
//! What it does not cover: legacy BIOS boot (BIOS-BOOT stays empty); Secure Boot (the
//! selector kernel and systemd-boot are Debian's, but the chain is not enrolled); disks
//! whose drivers are not among the selector's modules (virtio, SATA/AHCI, NVMe, SCSI).

use std::path::{Path, PathBuf};

use coreos_disk::{Disk, Partition, USR_TYPE};
use uuid::Uuid;

/// The selector's command-line parameter naming a slot to boot (a recovery entry).
pub const SLOT_PARAM: &str = "ferrite.slot";

/// A boot-path failure, naming the device, slot or parameter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `ferrite.slot=` names no USR slot.
    #[error("{SLOT_PARAM}={0}: not a USR partition (USR-A or USR-B)")]
    BadSlot(String),
    /// The disk could not be read or written.
    #[error(transparent)]
    Disk(#[from] coreos_disk::Error),
    /// A USR partition carries no kernel.
    #[error("{0} carries no kernel (no lib/modules/<version>/vmlinuz)")]
    NoKernel(PathBuf),
    /// No disk with a Ferrite GPT appeared.
    #[error("no disk with USR-A and USR-B appeared within {0} s (is its driver among the selector's modules?)")]
    NoDisk(u64),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What the selector's command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// GRUB's `gptprio.next`: the highest-priority bootable slot, spending a try.
    Next,
    /// A recovery entry: this slot (its label), whatever the bits say; nothing written.
    Slot(String),
}

/// Reads [`SLOT_PARAM`] from a kernel command line.
pub fn choice(cmdline: &str) -> Result<Choice, Error> {
    let prefix = format!("{SLOT_PARAM}=");
    match cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(&prefix))
        .next_back()
    {
        None => Ok(Choice::Next),
        Some(label @ ("USR-A" | "USR-B")) => Ok(Choice::Slot(label.to_string())),
        Some(other) => Err(Error::BadSlot(other.to_string())),
    }
}

/// The slot to boot on `disk`.
pub fn choose(disk: &Disk, choice: &Choice) -> Result<Partition, Error> {
    match choice {
        Choice::Next => Ok(disk.gptprio_next()?),
        Choice::Slot(label) => {
            let p = disk.partition(label)?;
            if p.type_guid != USR_TYPE {
                return Err(Error::BadSlot(label.clone()));
            }
            Ok(p)
        }
    }
}

/// The kernel command line a USR's own kernel boots with: its initramfs mounts that USR
/// read-only on `/usr` and ROOT on `/`; a panic or an initramfs that cannot mount `/usr`
/// reboots after 10 s (so a failing slot's try is spent and the other boots).
pub fn kernel_cmdline(usr: Uuid) -> String {
    format!(
        "console=ttyS0 root=LABEL=ROOT rootflags=rw mount.usr=PARTUUID={usr} \
         mount.usrflags=ro net.ifnames=0 panic=10 rd.emergency=reboot rd.shell=0"
    )
}

/// The kernel and initramfs a mounted USR carries: `lib/modules/<version>/vmlinuz` and
/// `initramfs.img`.
pub fn kernel_in(usr: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let modules = usr.join("lib/modules");
    let version = std::fs::read_dir(&modules)
        .map_err(|source| Error::Io {
            op: "reading",
            path: modules.clone(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("vmlinuz").is_file())
        .ok_or_else(|| Error::NoKernel(modules.clone()))?;
    Ok((version.join("vmlinuz"), version.join("initramfs.img")))
}

/// Among the whole disks under `sys_block` (`/sys/block`), the first whose device (under
/// `dev`) has a Ferrite GPT: USR-A and USR-B.
pub fn find_disk(sys_block: &Path, dev: &Path) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| {
            !["loop", "ram", "sr", "fd", "zram"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect();
    names.sort();
    names.into_iter().map(|n| dev.join(n)).find(|path| {
        // One read of the GPT per disk.
        Disk::open(path).partitions().is_ok_and(|parts| {
            ["USR-A", "USR-B"]
                .iter()
                .all(|l| parts.iter().any(|p| p.label == *l))
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::disallowed_methods)]
mod tests {
    use super::*;
    use coreos_disk::{GptPrio, Layout};

    fn disk(dir: &Path) -> Disk {
        Disk::create(&dir.join("disk.img"), &Layout::coreos(8192, 8192)).unwrap()
    }

    #[test]
    fn the_command_line_names_a_recovery_slot_or_nothing() {
        assert_eq!(choice("console=ttyS0 quiet").unwrap(), Choice::Next);
        assert_eq!(
            choice("quiet ferrite.slot=USR-B").unwrap(),
            Choice::Slot("USR-B".into())
        );
        assert!(matches!(
            choice("ferrite.slot=ROOT"),
            Err(Error::BadSlot(s)) if s == "ROOT"
        ));
    }

    /// The update lifecycle (updates.md §2.5), each boot chosen here and by the QEMU
    /// driver's supervisor alike: both call `gptprio_next` on the same bits.
    #[test]
    fn the_lifecycle_by_the_bits() {
        let dir = tempfile::tempdir().unwrap();
        let d = disk(dir.path());
        let boot = |d: &Disk| choose(d, &Choice::Next).unwrap().label;
        // A fresh disk boots A.
        assert_eq!(boot(&d), "USR-A");
        // An update to B (postinst: highest priority, one try, not successful).
        let b = d.partition("USR-B").unwrap();
        d.set_gptprio(b.number, GptPrio::new(2, 1, false)).unwrap();
        assert_eq!(boot(&d), "USR-B");
        assert_eq!(d.partition("USR-B").unwrap().prio.tries(), 0, "try spent");
        // B failed before it was marked good: the next boot is A again.
        assert_eq!(boot(&d), "USR-A");
        assert_eq!(boot(&d), "USR-A");
        // B marked good after a healthy boot: B from then on.
        d.set_gptprio(b.number, GptPrio::new(2, 0, true)).unwrap();
        assert_eq!(boot(&d), "USR-B");
        assert_eq!(boot(&d), "USR-B");
        // A recovery entry boots A and changes nothing.
        let before = d.partitions().unwrap();
        let a = choose(&d, &Choice::Slot("USR-A".into())).unwrap();
        assert_eq!(a.label, "USR-A");
        assert_eq!(d.partitions().unwrap(), before);
        // Neither slot bootable: said plainly.
        let a = d.partition("USR-A").unwrap();
        d.set_gptprio(a.number, GptPrio::new(0, 0, false)).unwrap();
        d.set_gptprio(b.number, GptPrio::new(1, 0, false)).unwrap();
        assert!(matches!(
            choose(&d, &Choice::Next),
            Err(Error::Disk(coreos_disk::Error::NoBootableUsr(_)))
        ));
    }

    #[test]
    fn a_usr_without_a_kernel_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lib/modules/6.1.0")).unwrap();
        assert!(matches!(kernel_in(dir.path()), Err(Error::NoKernel(_))));
        std::fs::write(dir.path().join("lib/modules/6.1.0/vmlinuz"), b"k").unwrap();
        let (k, i) = kernel_in(dir.path()).unwrap();
        assert!(k.ends_with("6.1.0/vmlinuz") && i.ends_with("6.1.0/initramfs.img"));
    }

    #[test]
    fn the_disk_is_the_one_with_usr_slots() {
        let dir = tempfile::tempdir().unwrap();
        let (sys, dev) = (dir.path().join("sys"), dir.path().join("dev"));
        for n in ["loop0", "vda", "vdb"] {
            std::fs::create_dir_all(sys.join(n)).unwrap();
        }
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vda"), vec![0u8; 1 << 20]).unwrap();
        let d = disk(dir.path());
        std::fs::rename(d.path(), dev.join("vdb")).unwrap();
        assert_eq!(find_disk(&sys, &dev), Some(dev.join("vdb")));
    }
}

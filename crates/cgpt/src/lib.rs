//! CoreOS's `cgpt` (seismograph) and `rootdev`, for what the update system and users need,
//! on `coreos-disk`: `show` (the output format of CoreOS's docs), `add` (priority, tries,
//! successful, legacy-BIOS-bootable), `prioritize`, `find -t coreos-usr`, `repair`, `next`
//! (GRUB's `gptprio.next`), and `rootdev -s PATH` (the partition behind a mount).
//!
//! A drive is a disk image or a whole-disk device; a partition device (`/dev/vda4`) stands
//! for its disk and number, as seismograph resolves it, so `cgpt add -S1 /dev/vda4` works
//! as CoreOS's scripts wrote it. Everything that changes attributes goes through
//! `coreos-disk`, which rewrites both GPT copies with fresh CRCs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use coreos_disk::{Disk, GptPrio, Partition};
use uuid::Uuid;

/// A cgpt failure, naming the drive or the argument.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

impl From<coreos_disk::Error> for Error {
    fn from(e: coreos_disk::Error) -> Self {
        Self(e.to_string())
    }
}

/// cgpt's type aliases (the first that matches names a type in `show`).
const TYPES: &[(&str, Uuid, &str)] = &[
    ("efi", coreos_disk::EFI_TYPE, "EFI System Partition"),
    ("bios", coreos_disk::BIOS_TYPE, "BIOS Boot Partition"),
    (
        "coreos-rootfs",
        coreos_disk::USR_TYPE,
        "Alias for coreos-rootfs",
    ),
    (
        "coreos-usr",
        coreos_disk::USR_TYPE,
        "Alias for coreos-rootfs",
    ),
    ("data", coreos_disk::DATA_TYPE, "Alias for linux-data"),
    ("linux-data", coreos_disk::DATA_TYPE, "Alias for linux-data"),
    (
        "coreos-reserved",
        coreos_disk::RESERVED_TYPE,
        "CoreOS reserved",
    ),
    (
        "coreos-resize",
        coreos_disk::RESIZE_TYPE,
        "CoreOS auto-resize",
    ),
];

/// A type named by alias or GUID.
pub fn parse_type(s: &str) -> Result<Uuid, Error> {
    TYPES
        .iter()
        .find(|(alias, _, _)| *alias == s)
        .map(|(_, t, _)| *t)
        .or_else(|| Uuid::parse_str(s).ok())
        .ok_or_else(|| Error(format!("Unknown partition type: {s}")))
}

fn type_name(t: Uuid) -> String {
    TYPES
        .iter()
        .find(|(_, g, _)| *g == t)
        .map_or_else(|| t.to_string().to_uppercase(), |(_, _, n)| n.to_string())
}

fn row(start: &str, size: &str, part: &str, contents: &str) -> String {
    format!("{start:>12}{size:>12}{part:>8}  {contents}\n")
}

/// `cgpt show [-q]`.
pub fn show(disk: &Disk, quick: bool) -> Result<String, Error> {
    let parts = disk.partitions()?;
    let mut out = String::new();
    if quick {
        for p in &parts {
            let _ = writeln!(
                out,
                "{:>12}{:>12}{:>8}  {}",
                p.start, p.sectors, p.number, p.label
            );
        }
        return Ok(out);
    }
    let total = disk.sectors()?;
    let indent = " ".repeat(34);
    out += &row("start", "size", "part", "contents");
    out += &row("0", "1", "", "PMBR");
    out += &row("1", "1", "", "Pri GPT header");
    out += &row("2", "32", "", "Pri GPT table");
    for p in &parts {
        out += &row(
            &p.start.to_string(),
            &p.sectors.to_string(),
            &p.number.to_string(),
            &format!("Label: \"{}\"", p.label),
        );
        let _ = writeln!(out, "{indent}Type: {}", type_name(p.type_guid));
        let _ = writeln!(out, "{indent}UUID: {}", p.guid.to_string().to_uppercase());
        let prio = p.prio;
        if prio.0 & (0x1ff << 48) != 0 {
            let _ = writeln!(
                out,
                "{indent}Attr: priority={} tries={} successful={}",
                prio.priority(),
                prio.tries(),
                u8::from(prio.successful())
            );
        } else if prio.0 & 4 != 0 {
            let _ = writeln!(out, "{indent}Attr: Legacy BIOS Bootable");
        }
    }
    out += &row(&(total - 33).to_string(), "32", "", "Sec GPT table");
    out += &row(&(total - 1).to_string(), "1", "", "Sec GPT header");
    Ok(out)
}

/// What `cgpt add` changes; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Add {
    /// `-P`.
    pub priority: Option<u8>,
    /// `-T`.
    pub tries: Option<u8>,
    /// `-S`.
    pub successful: Option<bool>,
    /// `-B`.
    pub legacy_boot: Option<bool>,
}

/// `cgpt add -i N [-P p] [-T t] [-S s] [-B b]`.
pub fn add(disk: &Disk, number: u32, a: Add) -> Result<(), Error> {
    let p = partition(disk, number)?;
    for (v, max, flag) in [(a.priority, 15, "-P"), (a.tries, 15, "-T")] {
        if v.is_some_and(|v| v > max) {
            return Err(Error(format!("{flag} must be 0 to {max}")));
        }
    }
    let mut prio = p.prio;
    if let Some(v) = a.priority {
        prio = prio.with_priority(v);
    }
    if let Some(v) = a.tries {
        prio = prio.with_tries(v);
    }
    if let Some(v) = a.successful {
        prio = prio.with_successful(v);
    }
    if prio != p.prio {
        disk.set_gptprio(number, prio)?;
    }
    if let Some(b) = a.legacy_boot {
        disk.set_legacy_bootable(number, b)?;
    }
    Ok(())
}

fn partition(disk: &Disk, number: u32) -> Result<Partition, Error> {
    disk.partitions()?
        .into_iter()
        .find(|p| p.number == number)
        .ok_or_else(|| Error(format!("{}: no partition {number}", disk.path().display())))
}

/// `cgpt find -t TYPE`: the device names (`<drive><N>`, with `p` after a drive ending in a
/// digit, as the kernel names partitions) of the partitions of that type.
pub fn find(drive: &Path, disk: &Disk, type_guid: Uuid) -> Result<Vec<String>, Error> {
    Ok(disk
        .partitions()?
        .into_iter()
        .filter(|p| p.type_guid == type_guid)
        .map(|p| partition_device(drive, p.number).display().to_string())
        .collect())
}

/// The device of partition `number` of `drive`, as the kernel names it: `<drive><N>`, with
/// `p` between when the drive's name ends in a digit (`/dev/vda3`, `/dev/nvme0n1p3`).
pub fn partition_device(drive: &Path, number: u32) -> PathBuf {
    let name = drive.display().to_string();
    let sep = if name.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    PathBuf::from(format!("{name}{sep}{number}"))
}

/// A drive argument: a whole disk (or image), or a partition device standing for its disk
/// and number (from `/sys/class/block/<name>/partition`).
pub fn resolve(drive: &Path) -> (PathBuf, Option<u32>) {
    let Some(name) = drive.file_name().and_then(|n| n.to_str()) else {
        return (drive.to_path_buf(), None);
    };
    let sys = Path::new("/sys/class/block").join(name);
    let number = std::fs::read_to_string(sys.join("partition"))
        .ok()
        .and_then(|n| n.trim().parse().ok());
    match number {
        Some(n) => {
            let parent = std::fs::canonicalize(&sys)
                .ok()
                .and_then(|p| p.parent().and_then(|d| d.file_name()).map(|d| d.to_owned()));
            match parent {
                Some(disk) => (Path::new("/dev").join(disk), Some(n)),
                None => (drive.to_path_buf(), None),
            }
        }
        None => (drive.to_path_buf(), None),
    }
}

/// The block device behind the filesystem mounted at `path` (`rootdev -s`): the device of
/// its `st_dev`, or for a device-mapper device (dm-verity) the partition beneath it.
pub fn rootdev(path: &Path) -> Result<PathBuf, Error> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path)
        .map_err(|e| Error(format!("{}: {e}", path.display())))?
        .dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let name_of = |dir: &Path| -> Option<String> {
        std::fs::read_to_string(dir.join("uevent"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))
    };
    // A mapped device (dm-verity): the one device beneath it.
    let slave = std::fs::read_dir(sys.join("slaves"))
        .ok()
        .and_then(|mut it| it.next())
        .and_then(|e| e.ok())
        .map(|e| e.path());
    let dir = slave.unwrap_or(sys);
    name_of(&dir)
        .map(|n| Path::new("/dev").join(n))
        .ok_or_else(|| {
            Error(format!(
                "{}: no block device ({major}:{minor})",
                path.display()
            ))
        })
}

/// GRUB's choice of USR partition, spending a try (`cgpt next`, with gptprio.next's rules).
pub fn next(disk: &Disk) -> Result<Partition, Error> {
    Ok(disk.gptprio_next()?)
}

/// The priority, tries and successful bits of a partition.
pub fn prio_of(disk: &Disk, number: u32) -> Result<GptPrio, Error> {
    Ok(partition(disk, number)?.prio)
}

#[cfg(test)]
mod tests;

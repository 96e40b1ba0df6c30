//! What a Ferrite disk does for itself when it boots, as CoreOS's initramfs and
//! `coreos-init` did:
//!
//! - **First boot** ([`setup_root`], from the initramfs, before the switch to ROOT): an empty
//!   ROOT gets the directories and links a merged-`/usr` system needs (`/bin` → `usr/bin` …),
//!   the defaults of `/etc` and `/var` from `/usr/share/factory` (a file already there wins:
//!   whatever provisioning wrote before the first boot stays), `core`'s home from
//!   `/etc/skel`, and last a machine ID (the VM's SMBIOS system UUID when it has one, as
//!   systemd takes it, else a random one). First boot is systemd's own definition
//!   ([`is_first_boot`]: no machine ID yet), so an interrupted setup is done again, and
//!   `rm -rf /` on ROOT is a factory reset as CoreOS documented.
//! - **The disk's own GUID**: an image carries the placeholder disk GUID
//!   `00000000-0000-0000-0000-000000000001`; the first boot replaces it with a random one
//!   (CoreOS's `disk-uuid.service`), after ROOT is set up.
//! - **ROOT grown to the end of the disk** ([`extend`], on every boot of the real system, as
//!   CoreOS's `extend-filesystems.service`): when `/` is a writable partition of type
//!   `coreos-resize` and the disk has grown, the backup GPT moves to the new end, the
//!   partition grows (`coreos_disk::Disk::grow_to_end`), the kernel is told (`partx`) and
//!   the ext4 filesystem grows online (`resize2fs`). A filesystem smaller than its partition
//!   (a boot cut between the two steps) is grown on the next boot.
//!
//! `ferrite-first-boot initrd` and `ferrite-first-boot extend-filesystems` are the two
//! entry points (units in `dist/`); the launcher's nspawn machines, which have no initramfs,
//! get [`setup_root`] from the host.
//!
//! Invariant: nothing here overwrites a file that exists on ROOT, and nothing writes the USR
//! partitions or their GPT attributes.

mod root;

use std::path::{Path, PathBuf};

pub use coreos_disk::BlockDevice;
pub use root::{
    copy_merge, is_first_boot, machine_id_from_product_uuid, setup_root, Setup, CORE_ID,
};

/// Something first boot or growing ROOT could not do, naming the path or device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// The partition table or a filesystem superblock.
    #[error(transparent)]
    Disk(#[from] coreos_disk::Error),
    /// A host tool (`partx`, `resize2fs`).
    #[error(transparent)]
    Command(#[from] host_command::CommandError),
    /// A mount point whose filesystem is not on a partition of a disk.
    #[error("{path} is not on a disk partition")]
    NotAPartition {
        /// The mount point.
        path: PathBuf,
    },
    /// A machine ID that is not 32 lowercase hexadecimal digits.
    #[error("machine ID {0:?} is not 32 lowercase hexadecimal digits")]
    BadMachineId(String),
    /// Writing a file.
    #[error(transparent)]
    Write(#[from] atomic_file::Error),
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What [`extend`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extended {
    /// The filesystem is mounted read-only: left alone.
    ReadOnly,
    /// The partition is not of type `coreos-resize`: left alone.
    NotResizable(BlockDevice),
    /// Nothing to gain.
    Unchanged(BlockDevice),
    /// The partition (when `partition_sectors` says so) and its filesystem grew.
    Grown {
        /// The partition.
        device: BlockDevice,
        /// The partition's new size, when it grew this time.
        partition_sectors: Option<u64>,
        /// The filesystem's size before and after, bytes.
        filesystem: (u64, u64),
    },
}

/// The partition the filesystem mounted on `mount` lives on.
pub fn block_device_of(mount: &Path) -> Result<BlockDevice, Error> {
    coreos_disk::block_device_of(mount)
        .map_err(io_err("reading", mount))?
        .ok_or_else(|| Error::NotAPartition {
            path: mount.to_path_buf(),
        })
}

/// A filesystem at least this much smaller than its partition is grown.
const SLACK: u64 = 1 << 20;

/// CoreOS's `extend-filesystems` for the filesystem mounted on `mount`: see the crate doc.
pub fn extend(mount: &Path) -> Result<Extended, Error> {
    let vfs = rustix::fs::statvfs(mount).map_err(|e| Error::Io {
        op: "reading the filesystem of",
        path: mount.to_path_buf(),
        source: e.into(),
    })?;
    if vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        return Ok(Extended::ReadOnly);
    }
    let device = block_device_of(mount)?;
    let disk = coreos_disk::Disk::open(&device.disk);
    let part = |disk: &coreos_disk::Disk| -> Result<coreos_disk::Partition, Error> {
        disk.partitions()?
            .into_iter()
            .find(|p| p.number == device.number)
            .ok_or_else(|| {
                Error::Disk(coreos_disk::Error::NoPartition {
                    path: device.disk.clone(),
                    what: device.number.to_string(),
                })
            })
    };
    if part(&disk)?.type_guid != coreos_disk::RESIZE_TYPE {
        return Ok(Extended::NotResizable(device));
    }
    let grown = disk.grow_to_end(device.number)?;
    if grown.is_some() {
        // BLKPG_RESIZE_PARTITION: the kernel learns the partition's new end.
        host_command::run(
            host_command::command("partx")
                .args(["--update", "--nr", &device.number.to_string()])
                .arg(&device.disk),
        )?;
    }
    let bytes = part(&disk)?.bytes();
    // The filesystem's own device: its superblock as the mounted filesystem last wrote it.
    let before = coreos_disk::ext_bytes_at(&device.partition, 0)?;
    if before + SLACK > bytes {
        return Ok(Extended::Unchanged(device));
    }
    host_command::run(host_command::command("resize2fs").arg(&device.partition))?;
    let after = coreos_disk::ext_bytes_at(&device.partition, 0)?;
    Ok(Extended::Grown {
        device,
        partition_sectors: grown,
        filesystem: (before, after),
    })
}

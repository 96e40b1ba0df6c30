//! The CoreOS disk layout on raw image files.
//!
//! A Ferrite disk has CoreOS's GPT: `EFI-SYSTEM`, `BIOS-BOOT`, `USR-A` and `USR-B` (the
//! CoreOS `/usr` type, fixed unique GUIDs), `OEM`, `OEM-CONFIG` and `ROOT`, every start
//! aligned to 4096 sectors and the disk rounded up to 258048 sectors, with the placeholder
//! disk GUID `00000000-0000-0000-0000-000000000001` until first boot randomizes it.
//!
//! The active/passive scheme lives in the partition attributes ([`GptPrio`]: priority in bits
//! 48–51, tries in 52–55, successful in 56). [`Disk::gptprio_next`] is GRUB's `gptprio.next`
//! (pick the eligible USR partition with the highest priority, spend a try before booting);
//! [`Disk::prioritize`] is `cgpt prioritize`. Everything works on plain files, so it is tested
//! on sparse images.
//!
//! Invariant: the partition attributes are written only through [`Disk::set_gptprio`],
//! [`Disk::prioritize`] and [`Disk::gptprio_next`], and every write rewrites both GPT copies
//! with fresh CRCs.

mod device;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use gptman::{GPTPartitionEntry, GPT};
use uuid::Uuid;

pub use device::{block_device, block_device_of, partition_device, BlockDevice};

/// Bytes per sector.
pub const SECTOR: u64 = 512;
/// Partition starts are aligned to this many sectors (2 MiB).
pub const ALIGN: u64 = 4096;
/// Disk sizes are rounded up to a multiple of this many sectors.
pub const DISK_ROUND: u64 = 258_048;

/// The CoreOS `/usr` partition type (`coreos-rootfs`).
pub const USR_TYPE: Uuid = Uuid::from_u128(0x5dfbf5f4_2848_4bac_aa5e_0d9a20b745a6);
/// EFI system partition.
pub const EFI_TYPE: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);
/// BIOS boot partition.
pub const BIOS_TYPE: Uuid = Uuid::from_u128(0x21686148_6449_6e6f_744e_656564454649);
/// Linux data (the OEM partition).
pub const DATA_TYPE: Uuid = Uuid::from_u128(0x0fc63daf_8483_4772_8e79_3d69d8477de4);
/// CoreOS reserved (OEM-CONFIG).
pub const RESERVED_TYPE: Uuid = Uuid::from_u128(0xc95dc21a_df0e_4340_8d7b_26cbfa9a03e0);
/// CoreOS auto-resize (ROOT).
pub const RESIZE_TYPE: Uuid = Uuid::from_u128(0x3884dd41_8582_4404_b9a8_e9b84f2df50e);
/// USR-A's fixed unique GUID.
pub const USR_A_GUID: Uuid = Uuid::from_u128(0x7130c94a_213a_4e5a_8e26_6cce9662f132);
/// USR-B's fixed unique GUID.
pub const USR_B_GUID: Uuid = Uuid::from_u128(0xe03dd35c_7c2d_4a47_b3fe_27f15780a57c);
/// The disk GUID an image is built with; first boot replaces it with a random one.
pub const PLACEHOLDER_DISK_GUID: Uuid = Uuid::from_u128(1);

/// A disk operation that failed, naming the image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the image file failed.
    #[error("{path}: {source}")]
    Io {
        /// The image.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The partition table could not be read or written.
    #[error("{path}: partition table: {source}")]
    Gpt {
        /// The image.
        path: PathBuf,
        /// The error.
        source: gptman::Error,
    },
    /// No USR partition is bootable (no tries left and none marked successful).
    #[error("{0}: no bootable USR partition (none has tries left or is marked successful)")]
    NoBootableUsr(PathBuf),
    /// A partition the caller named does not exist.
    #[error("{path}: no partition {what}")]
    NoPartition {
        /// The image.
        path: PathBuf,
        /// The label or number asked for.
        what: String,
    },
    /// A partition that was expected to hold an ext2/3/4 filesystem does not.
    #[error("{path}: partition {number} holds no ext filesystem")]
    NotExt {
        /// The image.
        path: PathBuf,
        /// The partition number.
        number: u32,
    },
    /// A layout that does not fit.
    #[error("invalid layout: {0}")]
    Layout(String),
}

/// The gptprio attribute bits of a partition entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GptPrio(pub u64);

impl GptPrio {
    const PRIO_SHIFT: u32 = 48;
    const TRIES_SHIFT: u32 = 52;
    const SUCCESS_SHIFT: u32 = 56;

    /// Attributes with these fields (other bits clear).
    pub fn new(priority: u8, tries: u8, successful: bool) -> Self {
        Self(0)
            .with_priority(priority)
            .with_tries(tries)
            .with_successful(successful)
    }

    /// Priority, 0–15 (0 never boots).
    pub fn priority(self) -> u8 {
        ((self.0 >> Self::PRIO_SHIFT) & 0xf) as u8
    }

    /// Tries remaining, 0–15.
    pub fn tries(self) -> u8 {
        ((self.0 >> Self::TRIES_SHIFT) & 0xf) as u8
    }

    /// Whether the slot has booted successfully.
    pub fn successful(self) -> bool {
        (self.0 >> Self::SUCCESS_SHIFT) & 1 == 1
    }

    /// With another priority (masked to 4 bits).
    pub fn with_priority(self, p: u8) -> Self {
        Self((self.0 & !(0xf << Self::PRIO_SHIFT)) | (u64::from(p & 0xf) << Self::PRIO_SHIFT))
    }

    /// With another tries count (masked to 4 bits).
    pub fn with_tries(self, t: u8) -> Self {
        Self((self.0 & !(0xf << Self::TRIES_SHIFT)) | (u64::from(t & 0xf) << Self::TRIES_SHIFT))
    }

    /// With the successful bit set or cleared.
    pub fn with_successful(self, s: bool) -> Self {
        Self((self.0 & !(1 << Self::SUCCESS_SHIFT)) | (u64::from(s) << Self::SUCCESS_SHIFT))
    }

    /// GRUB's eligibility rule: tries left, or marked successful.
    pub fn bootable(self) -> bool {
        self.tries() > 0 || self.successful()
    }
}

/// One partition of the layout to create.
#[derive(Debug, Clone)]
pub struct PartitionSpec {
    /// Partition number (1-based; CoreOS leaves 5 and 8 empty).
    pub number: u32,
    /// GPT label.
    pub label: &'static str,
    /// Type GUID.
    pub type_guid: Uuid,
    /// Unique GUID; `None` for a random one.
    pub guid: Option<Uuid>,
    /// Size in sectors.
    pub sectors: u64,
    /// Attribute bits.
    pub attributes: u64,
}

/// The sizes of a Ferrite disk, in sectors. Defaults follow CoreOS's base layout except
/// that USR partitions are 2 GiB (CoreOS's later "devel" size), room for Debian's /usr.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The partitions, in number order.
    pub partitions: Vec<PartitionSpec>,
}

impl Layout {
    /// CoreOS's layout with these USR and ROOT sizes (sectors).
    pub fn coreos(usr_sectors: u64, root_sectors: u64) -> Self {
        let p = |number, label, type_guid, guid, sectors, attributes| PartitionSpec {
            number,
            label,
            type_guid,
            guid,
            sectors,
            attributes,
        };
        Self {
            partitions: vec![
                p(1, "EFI-SYSTEM", EFI_TYPE, None, 262_144, 1 << 2),
                p(2, "BIOS-BOOT", BIOS_TYPE, None, 4096, 0),
                p(
                    3,
                    "USR-A",
                    USR_TYPE,
                    Some(USR_A_GUID),
                    usr_sectors,
                    GptPrio::new(1, 0, true).0,
                ),
                p(4, "USR-B", USR_TYPE, Some(USR_B_GUID), usr_sectors, 0),
                p(6, "OEM", DATA_TYPE, None, 262_144, 0),
                p(7, "OEM-CONFIG", RESERVED_TYPE, None, 131_072, 0),
                p(9, "ROOT", RESIZE_TYPE, None, root_sectors, 0),
            ],
        }
    }

    /// Start sectors of each partition, in order: each aligned to [`ALIGN`].
    pub fn starts(&self) -> Vec<u64> {
        let mut next = ALIGN;
        self.partitions
            .iter()
            .map(|p| {
                let start = next;
                next = (start + p.sectors).div_ceil(ALIGN) * ALIGN;
                start
            })
            .collect()
    }

    /// Total disk size in sectors: past the last partition and the backup GPT, rounded up.
    pub fn total_sectors(&self) -> u64 {
        let starts = self.starts();
        let end = match (starts.last(), self.partitions.last()) {
            (Some(s), Some(p)) => s + p.sectors,
            _ => ALIGN,
        };
        (end + 34).div_ceil(DISK_ROUND) * DISK_ROUND
    }
}

/// A partition as read from a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Partition number (1-based).
    pub number: u32,
    /// GPT label.
    pub label: String,
    /// Type GUID.
    pub type_guid: Uuid,
    /// Unique GUID.
    pub guid: Uuid,
    /// First sector.
    pub start: u64,
    /// Size in sectors.
    pub sectors: u64,
    /// gptprio and other attribute bits.
    pub prio: GptPrio,
}

impl Partition {
    /// Byte offset of the partition in the image.
    pub fn offset(&self) -> u64 {
        self.start * SECTOR
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.sectors * SECTOR
    }
}

/// A disk image file.
#[derive(Debug, Clone)]
pub struct Disk {
    path: PathBuf,
}

fn guid_to_disk(u: Uuid) -> [u8; 16] {
    u.to_bytes_le()
}

fn guid_from_disk(b: [u8; 16]) -> Uuid {
    Uuid::from_bytes_le(b)
}

impl Disk {
    /// Creates (or truncates) `path` as a sparse image with `layout` and the placeholder disk
    /// GUID. Partition contents are left empty (zero).
    pub fn create(path: &Path, layout: &Layout) -> Result<Disk, Error> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io)?;
        f.set_len(layout.total_sectors() * SECTOR).map_err(io)?;
        let gpt_err = |source| Error::Gpt {
            path: path.to_path_buf(),
            source,
        };
        let mut gpt =
            GPT::new_from(&mut f, SECTOR, guid_to_disk(PLACEHOLDER_DISK_GUID)).map_err(gpt_err)?;
        for (spec, start) in layout.partitions.iter().zip(layout.starts()) {
            if spec.number == 0 || spec.number > gpt.header.number_of_partition_entries {
                return Err(Error::Layout(format!("partition number {}", spec.number)));
            }
            gpt[spec.number] = GPTPartitionEntry {
                partition_type_guid: guid_to_disk(spec.type_guid),
                unique_partition_guid: guid_to_disk(spec.guid.unwrap_or_else(Uuid::new_v4)),
                starting_lba: start,
                ending_lba: start + spec.sectors - 1,
                attribute_bits: spec.attributes,
                partition_name: spec.label.into(),
            };
        }
        gpt.write_into(&mut f).map_err(gpt_err)?;
        GPT::write_protective_mbr_into(&mut f, SECTOR).map_err(gpt_err)?;
        f.sync_all().map_err(io)?;
        Ok(Disk {
            path: path.to_path_buf(),
        })
    }

    /// An existing image.
    pub fn open(path: &Path) -> Disk {
        Disk {
            path: path.to_path_buf(),
        }
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> Error + '_ {
        |source| Error::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn gpt_err(&self) -> impl FnOnce(gptman::Error) -> Error + '_ {
        |source| Error::Gpt {
            path: self.path.clone(),
            source,
        }
    }

    fn read_gpt(&self, write: bool) -> Result<(File, GPT), Error> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&self.path)
            .map_err(self.io())?;
        let gpt = GPT::read_from(&mut f, SECTOR).map_err(self.gpt_err())?;
        Ok((f, gpt))
    }

    fn write_gpt(&self, f: &mut File, gpt: &mut GPT) -> Result<(), Error> {
        gpt.write_into(f).map_err(self.gpt_err())?;
        f.sync_all().map_err(self.io())
    }

    /// The disk GUID.
    pub fn disk_guid(&self) -> Result<Uuid, Error> {
        Ok(guid_from_disk(self.read_gpt(false)?.1.header.disk_guid))
    }

    /// Replaces the disk GUID (first boot randomizes the placeholder).
    pub fn set_disk_guid(&self, guid: Uuid) -> Result<(), Error> {
        let (mut f, mut gpt) = self.read_gpt(true)?;
        gpt.header.disk_guid = guid_to_disk(guid);
        self.write_gpt(&mut f, &mut gpt)
    }

    /// Every used partition, by number.
    pub fn partitions(&self) -> Result<Vec<Partition>, Error> {
        let (_, gpt) = self.read_gpt(false)?;
        Ok(partitions_of(&gpt))
    }

    /// The partition labelled `label`.
    pub fn partition(&self, label: &str) -> Result<Partition, Error> {
        self.partitions()?
            .into_iter()
            .find(|p| p.label == label)
            .ok_or_else(|| Error::NoPartition {
                path: self.path.clone(),
                what: label.to_string(),
            })
    }

    /// Sets the gptprio bits of partition `number` (other attribute bits kept).
    pub fn set_gptprio(&self, number: u32, prio: GptPrio) -> Result<(), Error> {
        let (mut f, mut gpt) = self.read_gpt(true)?;
        let entry = entry_mut(&mut gpt, number).ok_or_else(|| Error::NoPartition {
            path: self.path.clone(),
            what: number.to_string(),
        })?;
        let keep = entry.attribute_bits & !(0x1ff << 48);
        entry.attribute_bits = keep | (prio.0 & (0x1ff << 48));
        self.write_gpt(&mut f, &mut gpt)
    }

    /// Sets partition `number`'s legacy-BIOS-bootable attribute (bit 2), as `cgpt add -B`.
    pub fn set_legacy_bootable(&self, number: u32, on: bool) -> Result<(), Error> {
        let (mut f, mut gpt) = self.read_gpt(true)?;
        let entry = entry_mut(&mut gpt, number).ok_or_else(|| Error::NoPartition {
            path: self.path.clone(),
            what: number.to_string(),
        })?;
        entry.attribute_bits = (entry.attribute_bits & !4) | if on { 4 } else { 0 };
        self.write_gpt(&mut f, &mut gpt)
    }

    /// `cgpt repair`: reads the table (the backup when the primary is damaged) and writes
    /// both copies anew, with fresh CRCs.
    pub fn repair(&self) -> Result<(), Error> {
        let (mut f, mut gpt) = self.read_gpt(true)?;
        self.write_gpt(&mut f, &mut gpt)
    }

    /// The disk's size in sectors (of a file or a block device).
    pub fn sectors(&self) -> Result<u64, Error> {
        let mut f = File::open(&self.path).map_err(self.io())?;
        Ok(f.seek(SeekFrom::End(0)).map_err(self.io())? / SECTOR)
    }

    /// GRUB's `gptprio.next`: the USR partition to boot. Spends one try (written to both GPT
    /// copies) when the chosen partition has tries left; touches nothing otherwise.
    pub fn gptprio_next(&self) -> Result<Partition, Error> {
        let (mut f, mut gpt) = self.read_gpt(true)?;
        let mut best = self.choose(&gpt)?;
        if best.prio.tries() > 0 {
            best.prio = best.prio.with_tries(best.prio.tries() - 1);
            if let Some(e) = entry_mut(&mut gpt, best.number) {
                e.attribute_bits = best.prio.0 | (e.attribute_bits & !(0x1ff << 48));
            }
            self.write_gpt(&mut f, &mut gpt)?;
        }
        Ok(best)
    }

    /// The partition `gptprio_next` would choose now, without spending its try.
    pub fn gptprio_peek(&self) -> Result<Partition, Error> {
        let (_, gpt) = self.read_gpt(false)?;
        self.choose(&gpt)
    }

    fn choose(&self, gpt: &GPT) -> Result<Partition, Error> {
        let mut best: Option<Partition> = None;
        for p in partitions_of(gpt)
            .into_iter()
            .filter(|p| p.type_guid == USR_TYPE)
        {
            let best_prio = best.as_ref().map_or(0, |b| b.prio.priority());
            if p.prio.bootable() && p.prio.priority() > best_prio {
                best = Some(p);
            }
        }
        best.ok_or_else(|| Error::NoBootableUsr(self.path.clone()))
    }

    /// `cgpt prioritize`: makes partition `number` the highest-priority USR partition,
    /// compressing the others' priorities below it (priority 0 stays 0).
    pub fn prioritize(&self, number: u32, max: Option<u8>) -> Result<(), Error> {
        let (mut f, mut gpt) = self.read_gpt(true)?;
        let usr: Vec<Partition> = partitions_of(&gpt)
            .into_iter()
            .filter(|p| p.type_guid == USR_TYPE)
            .collect();
        if !usr.iter().any(|p| p.number == number) {
            return Err(Error::NoPartition {
                path: self.path.clone(),
                what: number.to_string(),
            });
        }
        // Group by priority; the target alone in a group of priority 99.
        let mut groups: Vec<(u32, Vec<u32>)> = Vec::new();
        for p in &usr {
            let prio = if p.number == number {
                99
            } else {
                u32::from(p.prio.priority())
            };
            match groups.iter_mut().find(|(g, _)| *g == prio) {
                Some((_, members)) => members.push(p.number),
                None => groups.push((prio, vec![p.number])),
            }
        }
        groups.sort_by_key(|g| std::cmp::Reverse(g.0));
        if groups.last().is_some_and(|(g, _)| *g == 0) {
            groups.pop();
        }
        let top = max.map_or_else(|| groups.len().min(15) as u32, u32::from);
        for (i, (_, members)) in groups.iter().enumerate() {
            let prio = top.saturating_sub(i as u32).max(1) as u8;
            for n in members {
                if let Some(e) = entry_mut(&mut gpt, *n) {
                    e.attribute_bits = GptPrio(e.attribute_bits).with_priority(prio).0;
                }
            }
        }
        self.write_gpt(&mut f, &mut gpt)
    }

    /// CoreOS's `cgpt resize` (what `extend-filesystems` runs on ROOT): moves the backup GPT
    /// to the end of a disk that has grown, then grows partition `number` to the last usable
    /// sector if at least 2 MiB would be gained. Returns the partition's new size in
    /// sectors when it grew; `None` when it was left as it was (the backup header may still
    /// have moved).
    pub fn grow_to_end(&self, number: u32) -> Result<Option<u64>, Error> {
        const MIN_GAIN: u64 = (2 << 20) / SECTOR;
        let (mut f, mut gpt) = self.read_gpt(true)?;
        let moved = {
            let before = (gpt.header.backup_lba, gpt.header.last_usable_lba);
            gpt.header
                .update_from(&mut f, SECTOR)
                .map_err(self.gpt_err())?;
            before != (gpt.header.backup_lba, gpt.header.last_usable_lba)
        };
        let last = gpt.header.last_usable_lba;
        let used_after = |start: u64| {
            gpt.iter()
                .filter(|(_, e)| e.is_used() && e.starting_lba > start)
                .map(|(_, e)| e.starting_lba)
                .min()
        };
        let entry = gpt
            .iter()
            .find(|(n, e)| *n == number && e.is_used())
            .map(|(_, e)| (e.starting_lba, e.ending_lba))
            .ok_or_else(|| Error::NoPartition {
                path: self.path.clone(),
                what: number.to_string(),
            })?;
        // A partition followed by another cannot grow over it.
        let end = used_after(entry.0).map_or(last, |next| next - 1).min(last);
        let grown = if end >= entry.1 + MIN_GAIN {
            if let Some(e) = entry_mut(&mut gpt, number) {
                e.ending_lba = end;
            }
            Some(end + 1 - entry.0)
        } else {
            None
        };
        if moved || grown.is_some() {
            self.write_gpt(&mut f, &mut gpt)?;
            GPT::write_protective_mbr_into(&mut f, SECTOR).map_err(self.gpt_err())?;
            f.sync_all().map_err(self.io())?;
        }
        Ok(grown)
    }

    /// The size in bytes of the ext2/3/4 filesystem in partition `p` (its superblock's
    /// block count times its block size).
    pub fn ext_bytes(&self, p: &Partition) -> Result<u64, Error> {
        ext_bytes_at(&self.path, p.offset()).map_err(|e| match e {
            Error::NotExt { path, .. } => Error::NotExt {
                path,
                number: p.number,
            },
            e => e,
        })
    }

    fn ext_superblock(&self, p: &Partition) -> Result<[u8; 0x158], Error> {
        ext_superblock_at(&self.path, p.offset()).map_err(|e| match e {
            Error::NotExt { path, .. } => Error::NotExt {
                path,
                number: p.number,
            },
            e => e,
        })
    }

    /// The UUID of the ext2/3/4 filesystem in partition `p` (identifies a `/usr` build).
    pub fn ext_uuid(&self, p: &Partition) -> Result<Uuid, Error> {
        let sb = self.ext_superblock(p)?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&sb[0x68..0x78]);
        Ok(Uuid::from_bytes(id))
    }
}

/// Copies the image `src` to `dst` (created or truncated), keeping its holes: only the
/// data extents (`SEEK_DATA`/`SEEK_HOLE`) are copied, with `copy_file_range` where the
/// filesystem allows it. It runs in the calling process, so a caller that is killed takes
/// the copy with it. Returns the bytes of data copied.
pub fn copy_sparse(src: &Path, dst: &Path) -> Result<u64, Error> {
    copy_sparse_except(src, dst, &[])
}

/// Whether `path` holds any data in bytes `start..end` (a range never written is a hole).
pub fn has_data(path: &Path, start: u64, end: u64) -> Result<bool, Error> {
    let io = |source: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(io)?;
    match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(start)) {
        Ok(p) => Ok(p < end),
        Err(rustix::io::Errno::NXIO) => Ok(false),
        Err(e) => Err(io(e.into())),
    }
}

/// [`copy_sparse`], leaving the byte ranges `skip` as holes in `dst` (a thin copy whose
/// skipped parts are read from `src` instead, by whoever knows to).
pub fn copy_sparse_except(src: &Path, dst: &Path, skip: &[(u64, u64)]) -> Result<u64, Error> {
    use rustix::fs::SeekFrom as Seek;
    let src_err = |source: std::io::Error| Error::Io {
        path: src.to_path_buf(),
        source,
    };
    let dst_err = |source: std::io::Error| Error::Io {
        path: dst.to_path_buf(),
        source,
    };
    let from = File::open(src).map_err(src_err)?;
    let len = from.metadata().map_err(src_err)?.len();
    let to = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)
        .map_err(dst_err)?;
    to.set_len(len).map_err(dst_err)?;
    let mut copied = 0;
    let mut at = 0;
    while at < len {
        let start = match rustix::fs::seek(&from, Seek::Data(at)) {
            Ok(p) => p,
            // No data after `at`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(src_err(e.into())),
        };
        let end = rustix::fs::seek(&from, Seek::Hole(start)).map_err(|e| src_err(e.into()))?;
        // The extent minus the skipped ranges.
        let mut pieces = vec![(start, end)];
        for &(a, b) in skip {
            pieces = pieces
                .into_iter()
                .flat_map(|(s, e)| {
                    if b <= s || a >= e {
                        vec![(s, e)]
                    } else {
                        [(s, a.max(s)), (b.min(e), e)]
                            .into_iter()
                            .filter(|(x, y)| x < y)
                            .collect()
                    }
                })
                .collect();
        }
        for (s, e) in pieces {
            copy_range(&from, &to, s, e).map_err(|e| match e {
                (true, e) => src_err(e),
                (false, e) => dst_err(e),
            })?;
            copied += e - s;
        }
        at = end;
    }
    to.sync_all().map_err(dst_err)?;
    Ok(copied)
}

/// Copies bytes `start..end` of `from` to the same offsets of `to`; an error says whether
/// it was the source's (`true`) or the destination's.
fn copy_range(from: &File, to: &File, start: u64, end: u64) -> Result<(), (bool, std::io::Error)> {
    use std::os::unix::fs::FileExt;
    let (mut pos_in, mut pos_out) = (start, start);
    while pos_in < end {
        let want = usize::try_from((end - pos_in).min(1 << 30)).unwrap_or(1 << 30);
        match rustix::fs::copy_file_range(from, Some(&mut pos_in), to, Some(&mut pos_out), want) {
            Ok(0) => break,
            Ok(_) => {}
            // Across filesystems on old kernels, or where the filesystem will not: by hand.
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::INVAL,
            ) => {
                let mut buf = vec![0u8; 1 << 20];
                while pos_in < end {
                    let n =
                        usize::try_from((end - pos_in).min(buf.len() as u64)).unwrap_or(buf.len());
                    from.read_exact_at(&mut buf[..n], pos_in)
                        .map_err(|e| (true, e))?;
                    to.write_all_at(&buf[..n], pos_in).map_err(|e| (false, e))?;
                    pos_in += n as u64;
                }
                return Ok(());
            }
            Err(e) => return Err((false, e.into())),
        }
    }
    Ok(())
}

/// The size in bytes of the ext2/3/4 filesystem at byte `offset` of `path` (a disk, or 0 on
/// a partition's own device): its superblock's block count times its block size.
pub fn ext_bytes_at(path: &Path, offset: u64) -> Result<u64, Error> {
    let sb = ext_superblock_at(path, offset)?;
    let u32_at = |o: usize| u64::from(u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]));
    // INCOMPAT_64BIT: the block count has a high half.
    let blocks_hi = if u32_at(0x60) & 0x80 != 0 {
        u32_at(0x150)
    } else {
        0
    };
    let blocks = (blocks_hi << 32) | u32_at(0x04);
    Ok(blocks << (10 + u32_at(0x18).min(6)))
}

fn ext_superblock_at(path: &Path, offset: u64) -> Result<[u8; 0x158], Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut sb = [0u8; 0x158];
    f.seek(SeekFrom::Start(offset + 1024)).map_err(io)?;
    f.read_exact(&mut sb).map_err(io)?;
    if sb[0x38..0x3a] != [0x53, 0xef] {
        return Err(Error::NotExt {
            path: path.to_path_buf(),
            number: 0,
        });
    }
    Ok(sb)
}

fn entry_mut(gpt: &mut GPT, number: u32) -> Option<&mut GPTPartitionEntry> {
    if number == 0 || number > gpt.header.number_of_partition_entries {
        return None;
    }
    Some(&mut gpt[number])
}

fn partitions_of(gpt: &GPT) -> Vec<Partition> {
    gpt.iter()
        .filter(|(_, e)| e.is_used())
        .map(|(n, e)| Partition {
            number: n,
            label: e.partition_name.as_str().to_string(),
            type_guid: guid_from_disk(e.partition_type_guid),
            guid: guid_from_disk(e.unique_partition_guid),
            start: e.starting_lba,
            sectors: e.ending_lba + 1 - e.starting_lba,
            prio: GptPrio(e.attribute_bits),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn attribute_vectors() {
        for (p, t, s, raw) in [
            (1, 0, true, 0x0101_0000_0000_0000u64),
            (2, 1, false, 0x0012_0000_0000_0000),
            (2, 0, true, 0x0102_0000_0000_0000),
            (1, 0, false, 0x0001_0000_0000_0000),
            (3, 2, true, 0x0123_0000_0000_0000),
            (15, 15, true, 0x01ff_0000_0000_0000),
        ] {
            assert_eq!(GptPrio::new(p, t, s).0, raw);
            let g = GptPrio(raw);
            assert_eq!((g.priority(), g.tries(), g.successful()), (p, t, s));
        }
    }

    #[test]
    fn coreos_base_layout_geometry() {
        let l = Layout::coreos(2_097_152, 4_427_776);
        assert_eq!(
            l.starts(),
            vec![4096, 266_240, 270_336, 2_367_488, 4_464_640, 4_726_784, 4_857_856]
        );
        assert_eq!(l.total_sectors(), 9_289_728);
    }

    fn disk() -> (tempfile::TempDir, Disk) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("disk.img");
        let disk = Disk::create(&path, &Layout::coreos(8192, 8192)).unwrap();
        (d, disk)
    }

    #[test]
    fn create_and_read_back() {
        let (_d, disk) = disk();
        let parts = disk.partitions().unwrap();
        let labels: Vec<(u32, &str)> = parts.iter().map(|p| (p.number, p.label.as_str())).collect();
        assert_eq!(
            labels,
            vec![
                (1, "EFI-SYSTEM"),
                (2, "BIOS-BOOT"),
                (3, "USR-A"),
                (4, "USR-B"),
                (6, "OEM"),
                (7, "OEM-CONFIG"),
                (9, "ROOT")
            ]
        );
        let a = disk.partition("USR-A").unwrap();
        assert_eq!(a.guid, USR_A_GUID);
        assert_eq!(a.type_guid, USR_TYPE);
        assert_eq!(
            (a.prio.priority(), a.prio.tries(), a.prio.successful()),
            (1, 0, true)
        );
        assert_eq!(disk.partition("USR-B").unwrap().prio, GptPrio(0));
        assert_eq!(disk.disk_guid().unwrap(), PLACEHOLDER_DISK_GUID);
        let g = Uuid::new_v4();
        disk.set_disk_guid(g).unwrap();
        assert_eq!(disk.disk_guid().unwrap(), g);
        assert!(parts.iter().all(|p| p.start % ALIGN == 0));
    }

    /// A disk that grew (a bigger cloud volume, `qemu-img resize`): the backup GPT moves to
    /// the new end and ROOT, the last partition, grows to it; a second call changes nothing;
    /// a partition with another after it never grows.
    #[test]
    fn grow_to_end_moves_the_backup_and_grows_the_last_partition() {
        let (_d, disk) = disk();
        let n = disk.partition("ROOT").unwrap().number;
        // The image is rounded up to a whole number of cylinders: ROOT takes the slack.
        assert!(disk.grow_to_end(n).unwrap().is_some());
        let root = disk.partition("ROOT").unwrap();
        assert_eq!(disk.grow_to_end(n).unwrap(), None, "nothing to gain");
        let before = disk.sectors().unwrap();
        let f = OpenOptions::new().write(true).open(disk.path()).unwrap();
        f.set_len((before + 65_536) * SECTOR).unwrap();
        drop(f);
        // A few sectors more than the GPT needs is not worth a resize (CoreOS: 2 MiB).
        let usr = disk.partition("USR-A").unwrap();
        assert_eq!(
            disk.grow_to_end(usr.number).unwrap(),
            None,
            "USR-A has ROOT after it"
        );
        let grown = disk.grow_to_end(root.number).unwrap().unwrap();
        assert_eq!(grown, root.sectors + 65_536);
        let after = disk.partition("ROOT").unwrap();
        assert_eq!(after.start, root.start);
        assert_eq!(
            after.start + after.sectors,
            before + 65_536 - 33,
            "to the last usable sector"
        );
        assert_eq!(disk.grow_to_end(root.number).unwrap(), None);
        // The backup header is at the new last sector, and the table reads from it alone.
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk.path())
            .unwrap();
        let mut sig = [0u8; 8];
        f.seek(SeekFrom::Start((before + 65_536 - 1) * SECTOR))
            .unwrap();
        f.read_exact(&mut sig).unwrap();
        assert_eq!(&sig, b"EFI PART");
        f.seek(SeekFrom::Start(SECTOR)).unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 512]).unwrap();
        drop(f);
        assert_eq!(disk.partition("ROOT").unwrap().sectors, grown);
        assert!(disk.grow_to_end(99).is_err());
    }

    /// The copy has the image's bytes and its holes: a disk of a few MiB of data in a much
    /// bigger file stays small.
    #[test]
    fn sparse_copies_keep_data_and_holes() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let (d, disk) = disk();
        let f = OpenOptions::new().write(true).open(disk.path()).unwrap();
        f.set_len(1 << 30).unwrap();
        f.write_all_at(b"middle", 300 << 20).unwrap();
        f.write_all_at(b"end", (1 << 30) - 3).unwrap();
        drop(f);
        let copy = d.path().join("copy.img");
        std::fs::write(&copy, vec![7u8; 1 << 20]).unwrap();
        let copied = copy_sparse(disk.path(), &copy).unwrap();
        assert!(copied < 8 << 20, "{copied} bytes copied");
        assert_eq!(
            std::fs::read(&copy).unwrap(),
            std::fs::read(disk.path()).unwrap()
        );
        let m = std::fs::metadata(&copy).unwrap();
        assert_eq!(m.len(), 1 << 30);
        assert!(
            m.blocks() * 512 < 16 << 20,
            "holes kept: {} blocks",
            m.blocks()
        );
        assert!(matches!(
            copy_sparse(&d.path().join("nope"), &copy),
            Err(Error::Io { path, .. }) if path.ends_with("nope")
        ));
    }

    /// A thin copy leaves the skipped ranges as holes and copies the rest; `has_data` tells
    /// a range never written from one that was.
    #[test]
    fn thin_copies_skip_ranges_and_holes_are_seen() {
        use std::os::unix::fs::FileExt;
        let (d, disk) = disk();
        let f = OpenOptions::new().write(true).open(disk.path()).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&vec![1u8; 8 << 20], 8 << 20).unwrap();
        drop(f);
        let copy = d.path().join("thin.img");
        // Skip the middle of the written extent.
        let copied = copy_sparse_except(disk.path(), &copy, &[(10 << 20, 12 << 20)]).unwrap();
        let data = std::fs::read(&copy).unwrap();
        assert_eq!(data[(9 << 20)..(10 << 20)], vec![1u8; 1 << 20][..]);
        assert_eq!(data[(10 << 20)..(12 << 20)], vec![0u8; 2 << 20][..]);
        assert_eq!(data[(12 << 20)..(16 << 20)], vec![1u8; 4 << 20][..]);
        assert!(copied <= (6 << 20) + (1 << 20), "{copied}");
        assert!(!has_data(&copy, 10 << 20, 12 << 20).unwrap());
        assert!(has_data(&copy, 9 << 20, 12 << 20).unwrap());
        assert!(!has_data(&copy, 32 << 20, 64 << 20).unwrap());
        // Written later, a skipped range has data.
        let f = OpenOptions::new().write(true).open(&copy).unwrap();
        f.write_all_at(b"update", 11 << 20).unwrap();
        drop(f);
        assert!(has_data(&copy, 10 << 20, 12 << 20).unwrap());
    }

    /// The filesystem's size and UUID as `mkfs.ext4` made them, read from its superblock.
    #[test]
    fn ext_superblock_reads_size_and_uuid() {
        let (_d, disk) = disk();
        let root = disk.partition("ROOT").unwrap();
        assert!(matches!(
            disk.ext_bytes(&root),
            Err(Error::NotExt { number, .. }) if number == root.number
        ));
        let id = Uuid::new_v4();
        let kib = root.bytes() / 1024 / 2;
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-F", "-q", "-b", "4096", "-U", &id.to_string(), "-E"])
            .arg(format!("offset={}", root.offset()))
            .arg(disk.path())
            .arg(format!("{kib}k"))
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(disk.ext_bytes(&root).unwrap(), kib * 1024);
        assert_eq!(disk.ext_uuid(&root).unwrap(), id);
    }

    /// coreos/grub's gptprio test, vector 1 (partitions 3 and 4 here).
    #[test]
    fn gptprio_next_spends_tries_then_falls_back() {
        let (_d, disk) = disk();
        disk.set_gptprio(3, GptPrio::new(1, 0, true)).unwrap();
        disk.set_gptprio(4, GptPrio::new(2, 2, false)).unwrap();
        let state = |d: &Disk| {
            let p = d.partitions().unwrap();
            let f = |n: u32| p.iter().find(|x| x.number == n).unwrap().prio;
            (f(3), f(4))
        };
        let chosen = disk.gptprio_next().unwrap();
        assert_eq!(chosen.number, 4);
        assert_eq!(state(&disk).1, GptPrio::new(2, 1, false));
        assert_eq!(disk.gptprio_next().unwrap().number, 4);
        assert_eq!(state(&disk).1, GptPrio::new(2, 0, false));
        // B spent its tries without being marked good: rollback to A, which is not written.
        assert_eq!(disk.gptprio_next().unwrap().number, 3);
        assert_eq!(disk.gptprio_next().unwrap().number, 3);
        assert_eq!(
            state(&disk),
            (GptPrio::new(1, 0, true), GptPrio::new(2, 0, false))
        );
        // Both copies of the table stay valid (a read of the backup works too).
        let mut f = File::open(disk.path()).unwrap();
        let len = f.seek(SeekFrom::End(0)).unwrap();
        f.seek(SeekFrom::Start(len - SECTOR)).unwrap();
        let backup = gptman::GPTHeader::read_from(&mut f).unwrap();
        assert!(backup.is_backup());
    }

    #[test]
    fn nothing_bootable() {
        let (_d, disk) = disk();
        disk.set_gptprio(3, GptPrio::new(1, 0, false)).unwrap();
        assert!(matches!(disk.gptprio_next(), Err(Error::NoBootableUsr(_))));
    }

    /// The lifecycle walk-through of the update reference.
    #[test]
    fn prioritize_like_cgpt() {
        let (_d, disk) = disk();
        let prios = |d: &Disk| {
            let p = d.partitions().unwrap();
            let f = |n: u32| p.iter().find(|x| x.number == n).unwrap().prio.priority();
            (f(3), f(4))
        };
        disk.prioritize(3, None).unwrap();
        assert_eq!(prios(&disk), (1, 0));
        disk.set_gptprio(4, GptPrio::new(0, 1, false)).unwrap();
        disk.prioritize(4, None).unwrap();
        assert_eq!(prios(&disk), (1, 2));
        disk.prioritize(3, None).unwrap();
        assert_eq!(prios(&disk), (2, 1));
    }
}

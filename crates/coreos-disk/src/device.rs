//! The partition a filesystem is mounted from, and its disk, found through sysfs
//! (`/sys/dev/block/<major>:<minor>`), not by guessing names.

use std::path::{Path, PathBuf};

/// A partition of a whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// The partition's device, e.g. `/dev/vda9`.
    pub partition: PathBuf,
    /// The whole disk's device, e.g. `/dev/vda`.
    pub disk: PathBuf,
    /// The partition's number on the disk.
    pub number: u32,
}

/// The partition the filesystem mounted on `mount` lives on: `Ok(None)` when it is on no
/// partition of a disk (a loop file, an overlay, a container's root).
pub fn block_device_of(mount: &Path) -> std::io::Result<Option<BlockDevice>> {
    let st = rustix::fs::stat(mount)?;
    let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    Ok(block_device(
        Path::new("/sys"),
        Path::new("/dev"),
        major,
        minor,
    ))
}

/// The device node of partition `number` of the whole disk `disk` (`/dev/vda`), looked
/// up under `sys` (`/sys`): `/dev/vda4`, `/dev/nvme0n1p4`, `/dev/loop0p4`.
pub fn partition_device(sys: &Path, disk: &Path, number: u32) -> Option<PathBuf> {
    let name = disk.file_name()?.to_str()?;
    let dir = sys.join("class/block").join(name);
    let real = std::fs::canonicalize(&dir).ok()?;
    std::fs::read_dir(&real).ok()?.flatten().find_map(|e| {
        let n: u32 = std::fs::read_to_string(e.path().join("partition"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if n != number {
            return None;
        }
        Some(disk.with_file_name(devname(&e.path())?))
    })
}

/// The partition with device number `major:minor`, looked up under `sys` (`/sys`), its
/// device nodes named under `dev` (`/dev`). `None` when it is not a partition of a disk.
pub fn block_device(sys: &Path, dev: &Path, major: u32, minor: u32) -> Option<BlockDevice> {
    let link = sys.join(format!("dev/block/{major}:{minor}"));
    let number = std::fs::read_to_string(link.join("partition"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // `.../block/vda/vda9`: the partition's directory sits in its disk's.
    let real = std::fs::canonicalize(&link).ok()?;
    let name = devname(&real)?;
    let disk = devname(real.parent()?)?;
    Some(BlockDevice {
        partition: dev.join(name),
        disk: dev.join(disk),
        number,
    })
}

/// A block device's node name: `DEVNAME` in its `uevent`, else its directory's name.
fn devname(dir: &Path) -> Option<String> {
    let from_uevent = std::fs::read_to_string(dir.join("uevent"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("DEVNAME="))
                .map(str::to_string)
        });
    from_uevent.or_else(|| Some(dir.file_name()?.to_str()?.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::disallowed_methods)]
mod tests {
    use super::*;

    /// A sysfs as the kernel lays it out for a virtio disk with partition 9, and a
    /// device that is no partition (a loop device, a whole disk).
    #[test]
    fn a_partition_is_found_with_its_disk_and_number() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        let vda = sys.join("devices/pci0000:00/0000:00:04.0/virtio2/block/vda");
        let vda9 = vda.join("vda9");
        std::fs::create_dir_all(&vda9).unwrap();
        std::fs::write(
            vda.join("uevent"),
            "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
        )
        .unwrap();
        std::fs::write(vda9.join("uevent"), "MAJOR=254\nMINOR=9\nDEVNAME=vda9\n").unwrap();
        std::fs::write(vda9.join("partition"), "9\n").unwrap();
        let block = sys.join("dev/block");
        std::fs::create_dir_all(&block).unwrap();
        std::os::unix::fs::symlink(&vda9, block.join("254:9")).unwrap();
        std::os::unix::fs::symlink(&vda, block.join("254:0")).unwrap();
        let dev = Path::new("/dev");
        assert_eq!(
            block_device(&sys, dev, 254, 9),
            Some(BlockDevice {
                partition: "/dev/vda9".into(),
                disk: "/dev/vda".into(),
                number: 9,
            })
        );
        assert_eq!(block_device(&sys, dev, 254, 0), None, "a whole disk");
        assert_eq!(block_device(&sys, dev, 7, 0), None, "no such device");
        let class = sys.join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&vda, class.join("vda")).unwrap();
        assert_eq!(
            partition_device(&sys, Path::new("/dev/vda"), 9),
            Some(PathBuf::from("/dev/vda9"))
        );
        assert_eq!(partition_device(&sys, Path::new("/dev/vda"), 4), None);
    }
}

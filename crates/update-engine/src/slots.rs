//! The machine's USR slots: the active one is the partition `/usr` is mounted from (found
//! through sysfs, as `rootdev -s /usr`), the passive one its partner on the same disk
//! (USR-A ↔ USR-B), written through its own partition device. Postinst is the **new**
//! image's `postinst` at the root of the written slot, run from a read-only mount of it, as
//! CoreOS ran `/usr/postinst <device>`.

use std::path::{Path, PathBuf};

use coreos_disk::Disk;
use rustix::mount::{MountFlags, UnmountFlags};

use crate::attempt::{Slot, Slots};

/// The slots of the disk `/usr` is on.
#[derive(Debug, Clone)]
pub struct MachineSlots {
    /// Where the running USR is mounted (`/usr`).
    pub usr: PathBuf,
    /// `/sys`.
    pub sys: PathBuf,
    /// Where the passive slot is mounted for its postinst (`/run/update_engine`).
    pub run: PathBuf,
}

impl Default for MachineSlots {
    fn default() -> Self {
        MachineSlots {
            usr: PathBuf::from("/usr"),
            sys: PathBuf::from("/sys"),
            run: PathBuf::from("/run/update_engine"),
        }
    }
}

fn other(label: &str) -> Option<&'static str> {
    match label {
        "USR-A" => Some("USR-B"),
        "USR-B" => Some("USR-A"),
        _ => None,
    }
}

impl MachineSlots {
    /// The disk and the label of the active slot.
    pub fn active(&self) -> Result<(PathBuf, String), String> {
        let dev = coreos_disk::block_device_of(&self.usr)
            .map_err(|e| format!("{}: {e}", self.usr.display()))?
            .ok_or_else(|| format!("{} is not on a disk partition", self.usr.display()))?;
        let label = Disk::open(&dev.disk)
            .partitions()
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|p| p.number == dev.number)
            .map(|p| p.label)
            .ok_or_else(|| format!("{}: no partition {}", dev.disk.display(), dev.number))?;
        if other(&label).is_none() {
            return Err(format!(
                "{} is mounted from {label}, not USR-A or USR-B",
                self.usr.display()
            ));
        }
        Ok((dev.disk, label))
    }
}

impl Slots for MachineSlots {
    fn active_label(&self) -> Result<String, String> {
        self.active().map(|(_, label)| label)
    }

    fn passive(&self) -> Result<Slot, String> {
        let (disk, active) = self.active()?;
        let label = other(&active).unwrap_or("USR-B");
        let p = Disk::open(&disk)
            .partition(label)
            .map_err(|e| e.to_string())?;
        let path = coreos_disk::partition_device(&self.sys, &disk, p.number)
            .ok_or_else(|| format!("{}: no device for partition {}", disk.display(), p.number))?;
        Ok(Slot {
            label: label.to_string(),
            path,
            offset: 0,
            len: p.bytes(),
        })
    }

    fn active_good(&self) -> Result<bool, String> {
        let (disk, label) = self.active()?;
        successful(&disk, &label)
    }

    fn postinst(&self, slot: &Slot) -> Result<(), String> {
        let mnt = self.run.join(format!("postinst.{}", std::process::id()));
        std::fs::create_dir_all(&mnt).map_err(|e| format!("{}: {e}", mnt.display()))?;
        let result = run_postinst(&slot.path, &mnt);
        let _ = std::fs::remove_dir(&mnt);
        result
    }
}

fn run_postinst(device: &Path, mnt: &Path) -> Result<(), String> {
    rustix::mount::mount(
        device,
        mnt,
        "ext4",
        MountFlags::RDONLY | MountFlags::NODEV,
        None,
    )
    .map_err(|e| format!("mounting {} on {}: {e}", device.display(), mnt.display()))?;
    let script = mnt.join("postinst");
    let ran = host_command::run(host_command::command(&script).arg(device));
    let _ = rustix::mount::unmount(mnt, UnmountFlags::DETACH);
    ran.map(drop).map_err(|e| e.to_string())
}

/// Slots inside a disk image file rather than on block devices: an nspawn machine's (the
/// launcher says which file and which slot it booted, in `/run/ferrite/slots`). The
/// passive slot is written at its byte range; its postinst cannot be mounted from a file
/// without a loop device, so the same bits are set directly: highest priority, one try,
/// not successful.
#[derive(Debug, Clone)]
pub struct ImageSlots {
    /// The disk image.
    pub disk: PathBuf,
    /// The slot the machine booted.
    pub active: String,
}

impl ImageSlots {
    /// The slots a `KEY=value` file names (`DISK=`, `ACTIVE=`), if it is there.
    pub fn from_file(path: &Path) -> Option<ImageSlots> {
        let text = std::fs::read_to_string(path).ok()?;
        let kv = crate::conf::parse(&text);
        Some(ImageSlots {
            disk: PathBuf::from(kv.get("DISK")?),
            active: kv.get("ACTIVE")?.clone(),
        })
    }
}

impl Slots for ImageSlots {
    fn active_label(&self) -> Result<String, String> {
        Ok(self.active.clone())
    }

    fn passive(&self) -> Result<Slot, String> {
        let label = other(&self.active)
            .ok_or_else(|| format!("the booted slot {:?} is not USR-A or USR-B", self.active))?;
        let p = Disk::open(&self.disk)
            .partition(label)
            .map_err(|e| e.to_string())?;
        Ok(Slot {
            label: label.to_string(),
            path: self.disk.clone(),
            offset: p.offset(),
            len: p.bytes(),
        })
    }

    fn active_good(&self) -> Result<bool, String> {
        successful(&self.disk, &self.active)
    }

    fn postinst(&self, slot: &Slot) -> Result<(), String> {
        let d = Disk::open(&self.disk);
        let p = d.partition(&slot.label).map_err(|e| e.to_string())?;
        d.set_gptprio(p.number, p.prio.with_tries(1).with_successful(false))
            .map_err(|e| e.to_string())?;
        d.prioritize(p.number, None).map_err(|e| e.to_string())
    }
}

/// Whether partition `label` of `disk` is marked successful.
fn successful(disk: &Path, label: &str) -> Result<bool, String> {
    Disk::open(disk)
        .partition(label)
        .map(|p| p.prio.successful())
        .map_err(|e| format!("{}: {e}", disk.display()))
}

/// The machine's slots: those `/run/ferrite/slots` names under `root` (an nspawn machine),
/// else the block devices `/usr` is on.
pub fn machine_slots(root: &Path) -> Box<dyn Slots + Send + Sync> {
    match ImageSlots::from_file(&root.join("run/ferrite/slots")) {
        Some(s) => Box::new(s),
        None => Box::new(MachineSlots::default()),
    }
}

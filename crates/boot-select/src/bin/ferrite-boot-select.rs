//! `ferrite-boot-select`: the init of the selector's initramfs (see the `boot_select` crate
//! doc). It mounts `/proc`, `/sys` and `/dev`, loads the disk drivers listed in
//! `/lib/modules/modules.list`, finds the Ferrite disk, chooses the USR partition by the GPT
//! bits (or the recovery slot the command line names), mounts it read-only and kexecs the
//! kernel it carries. It says what it does on the console. When no slot can boot it says so
//! and halts; any other failure reboots after 10 s (the firmware comes back here, and a
//! slot whose try was spent is not chosen again).

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use boot_select::{choice, choose, find_disk, kernel_cmdline, kernel_in, Choice, Error};
use coreos_disk::Disk;
use rustix::mount::{MountFlags, UnmountFlags};
use rustix::system::RebootCommand;

/// Where the chosen USR is mounted.
const USR: &str = "/usr-slot";
/// The modules to load, in order (written when the image is built).
const MODULES: &str = "/lib/modules/modules.list";
/// How long to wait for the disk to appear.
const DISK_WAIT: u64 = 30;

/// A line on the console.
fn say(line: &str) {
    if let Ok(mut c) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(c, "ferrite-boot-select: {line}");
    }
}

/// Mounts the kernel's own filesystems (an existing mount is fine).
fn mount_early() {
    for (fs, dir) in [("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")] {
        let _ = std::fs::create_dir_all(dir);
        let _ = rustix::mount::mount(fs, dir, fs, MountFlags::empty(), None);
    }
}

/// Loads the listed modules; one already there, or built in, is fine.
fn load_modules() {
    let Ok(list) = std::fs::read_to_string(MODULES) else {
        return;
    };
    for rel in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = Path::new("/").join(rel);
        let loaded = std::fs::File::open(&path)
            .and_then(|f| rustix::system::finit_module(&f, c"", 0).map_err(std::io::Error::from));
        match loaded {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) => {}
            Err(e) => say(&format!("loading {}: {e}", path.display())),
        }
    }
}

/// Waits for the Ferrite disk to appear.
fn wait_for_disk() -> Result<std::path::PathBuf, Error> {
    let deadline = Instant::now() + Duration::from_secs(DISK_WAIT);
    loop {
        if let Some(d) = find_disk(Path::new("/sys/block"), Path::new("/dev")) {
            return Ok(d);
        }
        if Instant::now() >= deadline {
            return Err(Error::NoDisk(DISK_WAIT));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run() -> Result<(), Error> {
    mount_early();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let wanted = choice(&cmdline)?;
    load_modules();
    let drive = wait_for_disk()?;
    let disk = Disk::open(&drive);
    let slot = choose(&disk, &wanted)?;
    let how = match &wanted {
        Choice::Next => format!(
            "by gptprio.next: priority {}, tries left {}, successful {}",
            slot.prio.priority(),
            slot.prio.tries(),
            u8::from(slot.prio.successful())
        ),
        Choice::Slot(_) => "as the recovery entry asks".to_string(),
    };
    say(&format!(
        "booting {} (PARTUUID {}) on {}, {how}",
        slot.label,
        slot.guid,
        drive.display()
    ));
    let dev = cgpt::partition_device(&drive, slot.number);
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |e: rustix::io::Errno| Error::Io {
            op,
            path,
            source: e.into(),
        }
    };
    std::fs::create_dir_all(USR).map_err(|source| Error::Io {
        op: "creating",
        path: USR.into(),
        source,
    })?;
    rustix::mount::mount(&dev, USR, "ext4", MountFlags::RDONLY, None)
        .map_err(io("mounting", &dev))?;
    let loaded = kernel_in(Path::new(USR)).and_then(|(kernel, initrd)| {
        let req = kexec_loader::KexecRequest {
            kernel: kernel.clone(),
            initrd: Some(initrd),
            cmdline: kernel_cmdline(slot.guid),
        };
        kexec_loader::load_dry(&req).map_err(|e| Error::Io {
            op: "loading with kexec",
            path: kernel,
            source: std::io::Error::other(e.to_string()),
        })
    });
    let _ = rustix::mount::unmount(USR, UnmountFlags::empty());
    loaded?;
    rustix::fs::sync();
    rustix::system::reboot(RebootCommand::Kexec).map_err(io("kexec into", &dev))
}

fn main() {
    let failure = match run() {
        Ok(()) => return,
        Err(e) => e,
    };
    if let Error::Disk(coreos_disk::Error::NoBootableUsr(_)) = failure {
        say("no USR partition can boot: neither USR-A nor USR-B has a priority with tries left or marked successful");
        say("halted; boot a recovery entry (USR-A or USR-B) from the boot menu, or mark a slot with cgpt");
        let _ = rustix::system::reboot(RebootCommand::Halt);
    } else {
        say(&format!("{failure}"));
        say("rebooting in 10 s");
        std::thread::sleep(Duration::from_secs(10));
        rustix::fs::sync();
        let _ = rustix::system::reboot(RebootCommand::Restart);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

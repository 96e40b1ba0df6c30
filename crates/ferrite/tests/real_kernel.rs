//! The Ferrite disk boots as an operating system: QEMU (TCG here, no KVM) starts the kernel
//! and initramfs that USR-A carries (`/usr/lib/modules/<version>/`), the initramfs mounts
//! USR-A read-only on `/usr` (`mount.usr=PARTUUID=…`) and ROOT on `/`, and systemd boots the
//! machine. A probe unit added to ROOT prints what the machine sees on the serial console,
//! then powers it off. Needs root, QEMU and the packages `scripts/install-deps.sh` installs.
//!
//! The disk is one a `ferrite up` machine was made and booted from (first boot done on the
//! host, as the launcher does today); the QEMU driver that boots machines this way is next.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Cluster;
use coreos_disk::Disk;

const PROBE: &str = "[Unit]
Description=Ferrite boot probe
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo \"PROBE kernel=$(uname -r) usr=$(findmnt -no SOURCE /usr) root=$(findmnt -no SOURCE /) ro=$(findmnt -no OPTIONS /usr | cut -d, -f1) multi_user=$(systemctl is-active multi-user.target)\" > /dev/console; systemctl poweroff --no-block'

[Install]
WantedBy=multi-user.target
";

/// Mounts a partition of `disk` on `dir` until dropped.
struct Mounted(PathBuf);

impl Mounted {
    fn new(disk: &Path, label: &str, dir: &Path, opts: &str) -> Self {
        let p = Disk::open(disk).partition(label).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .arg("-o")
            .arg(format!(
                "{opts},loop,offset={},sizelimit={}",
                p.offset(),
                p.bytes()
            ))
            .arg(disk)
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting {label}");
        Self(dir.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// QEMU, killed by PID when the test ends however it ends.
struct Vm(std::process::Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_disk_boots_its_own_kernel_with_usr_from_usr_a() {
    let mut c = Cluster::new("kernel");
    c.ok(&["up"]);
    c.ok(&["halt", "core-01"]);
    let json = c.cluster_json();
    let image = PathBuf::from(json["image"].as_str().unwrap());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.with_file_name("image.json")).unwrap())
            .unwrap();
    let kernel = meta["kernel"].as_str().unwrap().to_string();

    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let disk = work.path().join("disk.img");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(c.machine_dir("core-01").join("disk.img"))
        .arg(&disk)
        .status()
        .unwrap();
    assert!(st.success());
    c.destroy_and_check();

    // The kernel and initramfs USR-A carries; the probe on ROOT.
    let (vmlinuz, initrd) = (
        work.path().join("vmlinuz"),
        work.path().join("initramfs.img"),
    );
    {
        let usr = Mounted::new(&disk, "USR-A", &work.path().join("usr"), "ro");
        let dir = usr.0.join("lib/modules").join(&kernel);
        std::fs::copy(dir.join("vmlinuz"), &vmlinuz).unwrap();
        std::fs::copy(dir.join("initramfs.img"), &initrd).unwrap();
        assert!(
            !usr.0.join("bin/dracut").exists(),
            "the initramfs builder stayed in /usr"
        );
    }
    {
        let root = Mounted::new(&disk, "ROOT", &work.path().join("root"), "rw");
        let units = root.0.join("etc/systemd/system");
        std::fs::write(units.join("ferrite-probe.service"), PROBE).unwrap();
        let wants = units.join("multi-user.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::os::unix::fs::symlink(
            "../ferrite-probe.service",
            wants.join("ferrite-probe.service"),
        )
        .unwrap();
    }

    let console = work.path().join("console.log");
    let start = Instant::now();
    let mut vm = Vm(Command::new("qemu-system-x86_64")
        .args([
            "-machine", "q35", "-accel", "tcg", "-m", "1024", "-smp", "2",
        ])
        .args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .args([
            "-append",
            &format!(
                "console=ttyS0 root=LABEL=ROOT rootflags=rw mount.usr=PARTUUID={} \
                 mount.usrflags=ro panic=10 rd.emergency=reboot rd.shell=0",
                coreos_disk::USR_A_GUID
            ),
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting qemu-system-x86_64"));
    let deadline = start + Duration::from_secs(300);
    let powered_off = loop {
        if vm.0.try_wait().unwrap().is_some() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let log = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
    let probe = log
        .lines()
        .find(|l| l.contains("PROBE kernel="))
        .map(str::trim);
    eprintln!(
        "QEMU ran {:.1} s; probe: {probe:?}",
        start.elapsed().as_secs_f64()
    );
    let Some(probe) = probe else {
        panic!("no probe line (powered off: {powered_off}); console:\n{log}");
    };
    assert!(powered_off, "the machine did not power off within 300 s");
    assert!(
        probe.contains(&format!("kernel={kernel} ")),
        "not the image's kernel: {probe}"
    );
    assert!(
        probe.contains("usr=/dev/vda3 "),
        "USR-A is partition 3: {probe}"
    );
    assert!(
        probe.contains("root=/dev/vda9 "),
        "ROOT is partition 9: {probe}"
    );
    assert!(probe.contains("ro=ro "), "/usr is read-only: {probe}");
    // The machine has no network here (`-nic none`), so etcd2 keeps retrying; the system
    // itself is up.
    assert!(probe.ends_with("multi_user=active"), "{probe}");
}

//! Ferrite on a real kernel, measured under QEMU (TCG here; `FERRITE_QEMU_ACCEL=kvm` where
//! it works): the image written out for other machines (raw and qcow2: time and size), and
//! `ferrite up --driver qemu` with the chapter's user-data until etcd2 is healthy. The
//! baseline, measured in the same run on the same disk, is a bare boot of the same kernel
//! and initramfs (`-kernel`, no supervisor, no network) until systemd reaches
//! multi-user.target; the disk's own firmware path (OVMF, systemd-boot, the selector, kexec)
//! is timed to the same point.
//!
//! Run as root: `scripts/bench.sh` (builds the release binaries first).
#![allow(
    clippy::too_many_lines,
    reason = "a scenario reads top to bottom, as a user would run it"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::disallowed_methods
)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{repo, secs, Env};
use coreos_disk::Disk;
use machine_launcher::{Host as _, RealHost};

/// A unit on ROOT that says when the machine reached multi-user.target, then powers off.
const PROBE: &str = "[Unit]\nDescription=Ferrite bench probe\nAfter=multi-user.target\n\n\
[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo BENCH-UP > /dev/console; systemctl poweroff --no-block'\n\n\
[Install]\nWantedBy=multi-user.target\n";

/// Allocated size of a file, MiB.
fn allocated_mib(p: &Path) -> u64 {
    let m = std::fs::metadata(p).unwrap();
    (std::os::unix::fs::MetadataExt::blocks(&m) * 512) >> 20
}

/// Mounts partition `label` of `disk` on `dir` (the launcher's own way).
fn mount(disk: &Path, label: &str, dir: &Path, read_only: bool) {
    let p = Disk::open(disk).partition(label).unwrap();
    RealHost
        .mount_partition(disk, p.offset(), p.bytes(), dir, read_only)
        .unwrap_or_else(|e| panic!("mounting {label}: {e}"));
}

fn umount(dir: &Path) {
    let _ = RealHost.unmount(dir);
}

/// Boots QEMU with `args` added, until the console shows `BENCH-UP` (or 600 s pass);
/// kills it by PID either way. The time to the line.
fn boot_until_up(console: &Path, disk: &Path, args: &[String]) -> Option<Duration> {
    let _ = std::fs::remove_file(console);
    let accel = std::env::var("FERRITE_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine", "q35", "-accel", &accel, "-m", "1024", "-smp", "2",
        ])
        .args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-nic",
            "none",
        ])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = None;
    while start.elapsed() < Duration::from_secs(600) {
        let log = std::fs::read(console).unwrap_or_default();
        if String::from_utf8_lossy(&log).contains("BENCH-UP") {
            up = Some(start.elapsed());
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    up
}

fn main() {
    common::require_root();
    let e = Env::new(&common::default_cache());
    let work = tempfile::tempdir_in("/var/tmp").unwrap();

    println!("== the image for other machines");
    e.ok(&["image", "build"]);
    for (format, file) in [("raw", "ferrite.bin"), ("qcow2", "ferrite.qcow2")] {
        let out = work.path().join(file);
        let t = Instant::now();
        e.ok(&[
            "image",
            "build",
            "--format",
            format,
            "-o",
            out.to_str().unwrap(),
        ]);
        println!(
            "  {format}: written in {}, {} MiB on disk",
            secs(t.elapsed()),
            allocated_mib(&out)
        );
        std::fs::remove_file(&out).unwrap();
    }

    println!("== a QEMU machine (chapter user-data)");
    let chapter = repo().join("examples/user-data");
    let start = Instant::now();
    e.ok(&[
        "up",
        "--cluster",
        "benchq",
        "--driver",
        "qemu",
        "--user-data",
        chapter.to_str().unwrap(),
    ]);
    let up = start.elapsed();
    let mut healthy = None;
    while start.elapsed() < Duration::from_secs(900) {
        let o = e
            .cmd(&[
                "ssh",
                "--cluster",
                "benchq",
                "core-01",
                "--",
                "ETCDCTL_API=3 etcdctl --dial-timeout=1s endpoint health",
            ])
            .output()
            .unwrap();
        if o.status.success() {
            healthy = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let healthy = healthy.expect("etcd2 never became healthy on the QEMU machine");
    println!(
        "  ferrite up --driver qemu returned in {}, etcd2 healthy after {}",
        secs(up),
        secs(healthy)
    );
    e.ok(&["halt", "--cluster", "benchq", "core-01"]);
    let src = e
        .state
        .path()
        .join("clusters/benchq/machines/core-01/disk.img");
    let disk = work.path().join("disk.img");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(&src)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(st.success(), "copying {}", src.display());
    e.ok(&["destroy", "--cluster", "benchq"]);

    // The baseline's kernel and initramfs (USR-A's), and the probe on ROOT.
    let usr = work.path().join("usr");
    mount(&disk, "USR-A", &usr, true);
    let version = std::fs::read_dir(usr.join("lib/modules"))
        .unwrap()
        .flatten()
        .map(|d| d.path())
        .find(|p| p.join("vmlinuz").is_file())
        .unwrap();
    let (vmlinuz, initrd) = (
        work.path().join("vmlinuz"),
        work.path().join("initramfs.img"),
    );
    std::fs::copy(version.join("vmlinuz"), &vmlinuz).unwrap();
    std::fs::copy(version.join("initramfs.img"), &initrd).unwrap();
    umount(&usr);
    let root = work.path().join("root");
    mount(&disk, "ROOT", &root, false);
    let units = root.join("etc/systemd/system");
    std::fs::write(units.join("ferrite-bench-probe.service"), PROBE).unwrap();
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    let _ = std::os::unix::fs::symlink(
        "../ferrite-bench-probe.service",
        wants.join("ferrite-bench-probe.service"),
    );
    umount(&root);

    let console = work.path().join("console.log");
    let bare = boot_until_up(
        &console,
        &disk,
        &[
            "-kernel".into(),
            vmlinuz.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            boot_select::kernel_cmdline(coreos_disk::USR_A_GUID),
        ],
    );
    let vars = work.path().join("OVMF_VARS.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
    let firmware = boot_until_up(
        &console,
        &disk,
        &[
            "-drive".into(),
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            "-drive".into(),
            format!("if=pflash,format=raw,file={}", vars.display()),
        ],
    );
    match bare {
        Some(b) => {
            println!(
                "  baseline: the same kernel and initramfs booted bare (-kernel) to multi-user: {}",
                secs(b)
            );
            println!(
                "    ratio, ferrite up to etcd2 healthy / bare boot: {:.2}",
                healthy.as_secs_f64() / b.as_secs_f64()
            );
            if let Some(f) = firmware {
                println!(
                    "  firmware path (OVMF, systemd-boot, selector, kexec) to multi-user: {} (ratio to the bare boot {:.2})",
                    secs(f),
                    f.as_secs_f64() / b.as_secs_f64()
                );
            }
        }
        None => println!("  baseline: the bare boot did not reach multi-user in 600 s"),
    }
    if firmware.is_none() {
        println!("  firmware path: did not reach multi-user in 600 s");
    }
}

//! The launcher's cgroup v2 path on a real unified hierarchy: a QEMU machine (TCG) boots a
//! Debian kernel with a small initramfs whose init mounts cgroup2 on `/sys/fs/cgroup` and
//! runs `examples/cgroup_probe.rs`, which creates a machine's cgroup as `ferrite up` does,
//! proves `memory.max` is enforced (the OOM killer ends a process over it) and delegation
//! works, then stops and removes it as `ferrite destroy` does.
//!
//! Needs `qemu-system-x86_64`, busybox-static and the kernel that `scripts/install-deps.sh`
//! unpacks into `$FERRITE_CACHE_DIR/kernel` (default `/var/cache/ferrite/kernel`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A `newc` cpio archive, as the kernel unpacks an initramfs.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino as usize,
            mode as usize,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, src: &Path) {
        let data = std::fs::read(src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        self.entry(name, 0o100755, &data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// The shared libraries a dynamically linked program needs (from `ldd`).
fn libraries(exe: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(exe).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

const INIT: &str = "#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo \"controllers: $(/bin/busybox cat /sys/fs/cgroup/cgroup.controllers)\"
/probe
echo \"probe exited: $?\"
/bin/busybox poweroff -f
";

fn initramfs(probe: &Path) -> Vec<u8> {
    let mut c = Cpio::default();
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        c.dir(d);
    }
    c.entry("init", 0o100755, INIT.as_bytes());
    c.file("bin/busybox", Path::new("/bin/busybox"));
    // The launcher signals processes with kill(1), as on a host.
    c.entry("bin/kill", 0o120777, b"busybox");
    c.file("probe", probe);
    let mut dirs = std::collections::BTreeSet::new();
    for lib in libraries(probe) {
        let rel = lib.strip_prefix("/").unwrap();
        let mut parent = PathBuf::new();
        for part in rel.parent().unwrap().components() {
            parent.push(part);
            if dirs.insert(parent.clone()) {
                c.dir(parent.to_str().unwrap());
            }
        }
        // The real file behind a symlink, under the name the loader looks for.
        c.file(rel.to_str().unwrap(), &lib.canonicalize().unwrap());
    }
    c.finish()
}

fn kernel() -> PathBuf {
    let cache = std::env::var_os("FERRITE_CACHE_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/ferrite"), PathBuf::from);
    cache.join("kernel/vmlinuz")
}

/// Kills QEMU by PID when the test ends, however it ends.
struct Vm(std::process::Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn machine_cgroups_on_a_unified_hierarchy_enforce_memory_and_are_removed() {
    let kernel = kernel();
    assert!(
        kernel.is_file(),
        "{} is missing: run scripts/install-deps.sh",
        kernel.display()
    );
    // The probe is built with the tests (cargo builds examples for `cargo test`).
    let exe = std::env::current_exe().unwrap();
    let probe = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/cgroup_probe");
    assert!(
        probe.is_file(),
        "{} is missing (cargo test builds it; alone: cargo build -p machine-launcher --examples)",
        probe.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    std::fs::write(&initrd, initramfs(&probe)).unwrap();
    let console = dir.path().join("console.log");
    let start = Instant::now();
    let mut vm = Vm(Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-accel", "tcg", "-m", "512", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 rdinit=/init panic=-1 quiet"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting qemu-system-x86_64"));
    // Bounded: the machine powers itself off when the probe ends.
    let deadline = start + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = vm.0.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    eprintln!(
        "QEMU ran {:.1} s; console:\n{log}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        status.is_some(),
        "the machine did not power off within 240 s"
    );
    assert!(
        log.contains("cgroup-v2 probe: ok") && log.contains("probe exited: 0"),
        "the probe failed (console above)"
    );
}

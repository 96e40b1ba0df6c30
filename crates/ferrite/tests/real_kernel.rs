//! The Ferrite disk boots as an operating system: QEMU (TCG here, no KVM) starts the kernel
//! and initramfs that USR-A carries (`/usr/lib/modules/<version>/`), the initramfs mounts
//! USR-A read-only on `/usr` (`mount.usr=PARTUUID=…`) and ROOT on `/`, and systemd boots the
//! machine. A probe unit added to ROOT prints what the machine sees on the serial console,
//! then powers it off. Needs root, QEMU and the packages `scripts/install-deps.sh` installs.
//!
//! The disk is one a `ferrite up` machine was made and booted from (an nspawn machine: first
//! boot done from the host). The same disk then boots through its own firmware path — OVMF
//! (UEFI), systemd-boot on EFI-SYSTEM, the selector choosing the USR by the GPT bits and
//! kexecing its kernel — and the selector's choices are checked, step by step of the update
//! lifecycle, against `gptprio_next` (what the QEMU driver's supervisor runs). Before that,
//! the raw image `ferrite image build` writes boots standalone through the same path, on a
//! bigger disk, its first boot entirely its own.
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
ExecStart=/bin/sh -c 'if [ -e /dev/disk/by-label/config-2 ]; then for i in $$(seq 120); do [ -e /etc/ferrite-configdrive ] && break; sleep 1; done; fi; echo \"PROBE kernel=$(uname -r) usr=$(findmnt -no SOURCE /usr) root=$(findmnt -no SOURCE /) ro=$(findmnt -no OPTIONS /usr | cut -d, -f1) configdrive=$(cat /etc/ferrite-configdrive 2>/dev/null || echo -) multi_user=$(systemctl is-active multi-user.target)\" > /dev/console; systemctl poweroff --no-block'

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

impl Vm {
    /// Waits up to `secs` for QEMU to end; whether it did.
    fn wait_timeout_secs(&mut self, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.0.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An nspawn machine's disk is thin: a USR slot it never wrote is the image's. To boot it on
/// its own, those slots are filled from the image.
fn fill_usr_from_image(disk: &Path, image: &Path) {
    let img = coreos_disk::Disk::open(image);
    for label in ["USR-A", "USR-B"] {
        let p = img.partition(label).unwrap();
        if !coreos_disk::has_data(disk, p.offset(), p.offset() + p.bytes()).unwrap() {
            let st = Command::new("dd")
                .arg(format!("if={}", image.display()))
                .arg(format!("of={}", disk.display()))
                .args([
                    "bs=1M",
                    "iflag=skip_bytes,count_bytes",
                    "oflag=seek_bytes",
                    "conv=notrunc,sparse",
                    "status=none",
                ])
                .arg(format!("skip={}", p.offset()))
                .arg(format!("seek={}", p.offset()))
                .arg(format!("count={}", p.bytes()))
                .status()
                .unwrap();
            assert!(st.success());
        }
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
    let raw = images_for_real_machines(&c, work.path(), &meta);
    let disk = work.path().join("disk.img");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(c.machine_dir("core-01").join("disk.img"))
        .arg(&disk)
        .status()
        .unwrap();
    assert!(st.success());
    fill_usr_from_image(&disk, &image);
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
    let mut vm = Vm(qemu(&disk, &console)
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            &format!(
                "console=ttyS0 root=LABEL=ROOT rootflags=rw mount.usr=PARTUUID={} \
                 mount.usrflags=ro panic=10 rd.emergency=reboot rd.shell=0",
                coreos_disk::USR_A_GUID
            ),
        ])
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

    firmware_boot(work.path(), &raw, &kernel);
    std::fs::remove_file(&raw).unwrap();
    lifecycle_by_firmware(work.path(), &disk);
    corrupted_gpt_by_firmware(work.path(), &disk);
}

/// A disk whose primary GPT header is destroyed still boots (from the backup header), and
/// `cgpt repair` leaves both copies whole.
fn corrupted_gpt_by_firmware(work: &Path, disk: &Path) {
    let d = Disk::open(disk);
    let a = d.partition("USR-A").unwrap().number;
    d.set_gptprio(a, coreos_disk::GptPrio::new(1, 0, true))
        .unwrap();
    let header = |disk: &Path| {
        let mut f = std::fs::File::open(disk).unwrap();
        let mut sig = [0u8; 8];
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(512)).unwrap();
        std::io::Read::read_exact(&mut f, &mut sig).unwrap();
        sig
    };
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(512)).unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 512]).unwrap();
    }
    assert_ne!(&header(disk), b"EFI PART");
    let console = work.join("uefi-corrupt.log");
    let mut vm = uefi_vm(work, disk, &console);
    let line = wait_console(&mut vm, &console, "ferrite-boot-select: ", 300);
    drop(vm);
    let line = line.unwrap_or_else(|| {
        panic!(
            "no boot with a corrupted primary GPT; console:\n{}",
            console_text(&console)
        )
    });
    eprintln!("corrupted primary GPT: {line}");
    assert!(line.contains("booting USR-A "), "{line}");
    let cgpt = Path::new(common::FERRITE).with_file_name("cgpt");
    let st = Command::new(&cgpt)
        .arg("repair")
        .arg(disk)
        .status()
        .unwrap();
    assert!(st.success(), "cgpt repair");
    assert_eq!(
        &header(disk),
        b"EFI PART",
        "the primary header is whole again"
    );
    assert_eq!(Disk::open(disk).partition("USR-A").unwrap().number, a);
}

/// `ferrite image build --format raw|qcow2`: the cached image written out, whole.
/// Returns the raw image, for the standalone boot.
fn images_for_real_machines(c: &Cluster, work: &Path, meta: &serde_json::Value) -> PathBuf {
    let bytes = meta["disk_bytes"].as_u64().unwrap();
    let raw = work.join("ferrite.bin");
    // `image` is no cluster command: run without `--cluster`.
    let image = |format: &str, out: &Path| {
        let o = c
            .cmd(&[
                "image",
                "build",
                "--format",
                format,
                "-o",
                out.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success() && text.contains(&format!("({format})")),
            "{text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    image("raw", &raw);
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), bytes);
    let esp = Disk::open(&raw).partition("EFI-SYSTEM").unwrap();
    let mut boot = [0u8; 512];
    let mut f = std::fs::File::open(&raw).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(esp.offset())).unwrap();
    std::io::Read::read_exact(&mut f, &mut boot).unwrap();
    assert_eq!(&boot[82..90], b"FAT32   ", "EFI-SYSTEM is FAT32");
    let qcow = work.join("ferrite.qcow2");
    image("qcow2", &qcow);
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&qcow)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"].as_u64(), Some(bytes));
    std::fs::remove_file(&qcow).unwrap();
    raw
}

/// QEMU (TCG) with `disk` on virtio, the serial console to `console`, no network; a reset
/// ends it.
fn qemu(disk: &Path, console: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
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
    .arg("-drive")
    .arg(format!("file={},if=virtio,format=raw", disk.display()))
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

/// QEMU booting `disk` with UEFI firmware only (no `-kernel`): OVMF finds EFI-SYSTEM.
fn uefi_vm(work: &Path, disk: &Path, console: &Path) -> Vm {
    uefi_vm_with(work, disk, console, None)
}

/// [`uefi_vm`], with a second disk (a config drive) when given.
fn uefi_vm_with(work: &Path, disk: &Path, console: &Path, extra: Option<&Path>) -> Vm {
    let vars = work.join("OVMF_VARS.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
        .expect("OVMF (scripts/install-deps.sh installs it)");
    let _ = std::fs::remove_file(console);
    Vm(qemu(disk, console)
        .args([
            "-drive",
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        ])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .args(
            extra
                .map(|d| {
                    [
                        "-drive".to_string(),
                        format!("file={},if=virtio,format=raw,readonly=on", d.display()),
                    ]
                })
                .into_iter()
                .flatten(),
        )
        .spawn()
        .expect("starting qemu-system-x86_64"))
}

/// The console's lines, as far as written.
fn console_text(console: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).into_owned()
}

/// Waits until a console line contains `want` (that line) or QEMU ends or `secs` pass.
fn wait_console(vm: &mut Vm, console: &Path, want: &str, secs: u64) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(l) = console_text(console).lines().find(|l| l.contains(want)) {
            return Some(l.trim().to_string());
        }
        if vm.0.try_wait().unwrap().is_some() || Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A config drive as OpenStack made them (and CoreOS read them): a FAT filesystem labelled
/// `config-2` with `openstack/latest/user_data`.
fn config_drive(path: &Path, user_data: &str) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(8 << 20).unwrap();
    let mut f = f;
    fatfs::format_volume(
        &mut f,
        fatfs::FormatVolumeOptions::new().volume_label(*b"config-2   "),
    )
    .unwrap();
    let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
    let dir = fs.root_dir().create_dir("openstack").unwrap();
    let dir = dir.create_dir("latest").unwrap();
    let mut ud = dir.create_file("user_data").unwrap();
    std::io::Write::write_all(&mut ud, user_data.as_bytes()).unwrap();
}

/// What the standalone machine's probe prints (from the config drive's user-data).
const STANDALONE_PROBE: &str = r#"#!/bin/sh
root=$(findmnt -no SOURCE /)
echo "PROBE kernel=$(uname -r) usr=$(findmnt -no SOURCE /usr) root=$root ro=$(findmnt -no OPTIONS /usr | cut -d, -f1) configdrive=$(cat /etc/ferrite-configdrive) machine_id=$(cat /etc/machine-id) home=$(stat -c %U /home/core) part_bytes=$(lsblk -bdno SIZE $root) fs_bytes=$(df -B1 --output=size / | tail -1 | tr -d ' ') end" > /dev/console
systemctl poweroff --no-block
"#;

/// The raw image of `ferrite image build` booted as a machine of one's own would boot it:
/// grown by 1 GiB (a bigger volume), OVMF, systemd-boot, the selector (USR-A by the bits),
/// its kexec into USR-A's kernel, and a first boot with nothing done from outside — the
/// initramfs sets ROOT up, gives the disk its own GUID, and ROOT grows to the disk's end.
/// The user-data comes from a config drive (CoreOS's `user-configdrive.service`); it writes
/// a file and starts the probe.
fn firmware_boot(work: &Path, disk: &Path, kernel: &str) {
    const GROWTH: u64 = 1 << 30;
    let d = Disk::open(disk);
    assert_eq!(d.disk_guid().unwrap(), coreos_disk::PLACEHOLDER_DISK_GUID);
    let root_before = d.partition("ROOT").unwrap();
    let len = std::fs::metadata(disk).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .unwrap()
        .set_len(len + GROWTH)
        .unwrap();
    let console = work.join("uefi-console.log");
    let drive = work.join("configdrive.img");
    let indented: String = STANDALONE_PROBE
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    config_drive(
        &drive,
        &format!(
            "#cloud-config\nwrite_files:\n  - path: /etc/ferrite-configdrive\n    content: from-the-config-drive\n  - path: /opt/probe\n    permissions: '0755'\n    content: |\n{indented}coreos:\n  units:\n    - name: ferrite-probe.service\n      command: start\n      content: |\n        [Service]\n        Type=oneshot\n        ExecStart=/opt/probe\n"
        ),
    );
    let start = Instant::now();
    let mut vm = uefi_vm_with(work, disk, &console, Some(&drive));
    let chose = wait_console(&mut vm, &console, "ferrite-boot-select: booting", 300);
    let chose_at = start.elapsed();
    let probe = wait_console(&mut vm, &console, "PROBE kernel=", 300);
    eprintln!(
        "standalone firmware boot: selector chose after {:.1} s, probe after {:.1} s",
        chose_at.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    // The probe powers the machine off; the disk is read once QEMU is gone.
    let off = vm.wait_timeout_secs(60);
    let log = console_text(&console);
    let chose = chose.unwrap_or_else(|| panic!("the selector never chose; console:\n{log}"));
    assert!(chose.contains("booting USR-A"), "{chose}");
    let probe = probe.unwrap_or_else(|| panic!("no probe line; console:\n{log}"));
    eprintln!("{probe}");
    let field = |name: &str| -> String {
        probe
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {probe}"))
            .to_string()
    };
    assert_eq!(field("kernel"), kernel, "not the image's kernel");
    assert_eq!(field("usr"), "/dev/vda3");
    assert_eq!(field("root"), "/dev/vda9");
    assert_eq!(field("ro"), "ro");
    assert_eq!(
        field("configdrive"),
        "from-the-config-drive",
        "the config drive's user-data was not applied"
    );
    let id = field("machine_id");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{probe}"
    );
    assert_eq!(
        field("home"),
        "core",
        "core's home from /etc/skel, owned by core"
    );
    let part: u64 = field("part_bytes").parse().unwrap();
    let fs: u64 = field("fs_bytes").parse().unwrap();
    assert!(
        part >= root_before.bytes() + GROWTH - (4 << 20),
        "ROOT did not grow to the disk's end: {part} bytes, was {}",
        root_before.bytes()
    );
    assert!(
        fs > part / 10 * 9,
        "the filesystem did not grow with ROOT: {probe}"
    );
    assert!(off, "the probe's poweroff did not end QEMU");
    assert!(
        log.contains("ROOT set up from /usr/share/factory"),
        "the initramfs did not set ROOT up; console:\n{log}"
    );
    let d = Disk::open(disk);
    assert_ne!(d.disk_guid().unwrap(), coreos_disk::PLACEHOLDER_DISK_GUID);
    let root = d.partition("ROOT").unwrap();
    assert_eq!(root.bytes(), part);
    assert_eq!(
        root.start + root.sectors,
        (len + GROWTH) / 512 - 33,
        "ROOT ends at the last usable sector"
    );
}

/// New attribute bits for a partition: (number, priority, tries, successful).
type Bits = (u32, u8, u8, bool);

/// Each step of the update lifecycle (updates.md §2.5) booted through the firmware up to
/// the selector's choice; the choice and the bits it leaves must be what `gptprio_next`
/// gives on a copy of the same disk (the QEMU driver's supervisor runs that).
fn lifecycle_by_firmware(work: &Path, disk: &Path) {
    let d = Disk::open(disk);
    let b = d.partition("USR-B").unwrap().number;
    let a = d.partition("USR-A").unwrap().number;
    let set = |n: u32, p: u8, t: u8, s: bool| {
        d.set_gptprio(n, coreos_disk::GptPrio::new(p, t, s))
            .unwrap();
    };
    let steps: [(&str, Option<Bits>, &str); 4] = [
        // An update written to B (postinst: highest priority, one try).
        ("new update on B", Some((b, 2, 1, false)), "USR-B"),
        // B failed before it was marked good (here: it has no filesystem): back to A.
        ("B failed", None, "USR-A"),
        // B marked good after a healthy boot.
        ("B marked good", Some((b, 2, 0, true)), "USR-B"),
        // Neither slot may boot.
        ("nothing bootable", Some((a, 0, 0, false)), ""),
    ];
    let console = work.join("uefi-step.log");
    for (what, change, want) in steps {
        if let Some((n, p, t, s)) = change {
            set(n, p, t, s);
        }
        if what == "nothing bootable" {
            set(b, 1, 0, false);
        }
        // The supervisor's answer, on a copy.
        let copy = work.join("supervisor.img");
        let st = Command::new("cp")
            .args(["--sparse=always"])
            .arg(disk)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(st.success());
        let supervisor = Disk::open(&copy);
        let expected = supervisor.gptprio_next().map(|p| p.label);
        let start = Instant::now();
        let mut vm = uefi_vm(work, disk, &console);
        let line = wait_console(&mut vm, &console, "ferrite-boot-select: ", 300);
        // Let the line that follows (the halt message) come too, then stop the machine.
        std::thread::sleep(Duration::from_millis(500));
        drop(vm);
        let log = console_text(&console);
        let line =
            line.unwrap_or_else(|| panic!("{what}: the selector said nothing; console:\n{log}"));
        eprintln!("{what}: {line} ({:.1} s)", start.elapsed().as_secs_f64());
        match expected {
            Ok(label) => {
                assert_eq!(want, label, "{what}: the supervisor's choice");
                assert!(line.contains(&format!("booting {want} ")), "{what}: {line}");
            }
            Err(_) => {
                assert!(want.is_empty(), "{what}");
                assert!(line.contains("no USR partition can boot"), "{what}: {line}");
            }
        }
        assert_eq!(
            Disk::open(disk).partitions().unwrap(),
            supervisor.partitions().unwrap(),
            "{what}: the bits after the boot differ from gptprio_next's"
        );
        std::fs::remove_file(&copy).unwrap();
    }
}

//! `ferrite up --driver qemu`: the chapter's walkthrough on a virtual machine that boots the
//! kernel its USR partition carries (QEMU, TCG here), on the same kind of cluster bridge as
//! the nspawn machines, and its lifecycle: graceful `halt` (ACPI power button), `up` again
//! (its second boot finds its state: the rollback's),
//! `cgpt` and `rootdev` inside, a rollback (a broken USR-B marked as CoreOS's postinst marks
//! a new slot boots once, fails, and the machine comes back on USR-A by itself with B's try
//! spent), a good update (USR-B boots and is marked good from inside), a real update (a
//! release built, published, taken by update_engine, rebooted into by locksmithd, marked
//! good by the health gate). A release failing its health gate rolls back in
//! `releases.rs`, on an nspawn machine: the gate's logic is the same, and the real reboot
//! it takes is the one tested here.
//! an nspawn machine added to the same cluster (one bridge; each reaches the other's
//! etcd), `halt --force` (the power cut), `destroy` leaving nothing behind. Needs root,
//! QEMU and the packages `scripts/install-deps.sh` installs. One machine serves every step (a boot
//! under emulation takes a minute or two).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Cluster;

#[test]
fn the_chapter_on_a_virtual_machine_and_its_lifecycle() {
    // Ten boots under emulation: its own, longer watchdog limit.
    let mut c = Cluster::with_limit("qemu", 2400);
    let start = Instant::now();
    c.ok(&["up", "--driver", "qemu"]);
    eprintln!("up: {:.1} s", start.elapsed().as_secs_f64());
    let json = c.cluster_json();
    assert_eq!(json["machines"][0]["driver"], "qemu");
    let image = PathBuf::from(json["image"].as_str().unwrap());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.with_file_name("image.json")).unwrap())
            .unwrap();
    let kernel = meta["kernel"].as_str().unwrap();

    // The image's kernel, not the host's; /usr is USR-A, read-only.
    let (code, out) = c.sh(
        "core-01",
        "uname -r; hostname; findmnt -no SOURCE,OPTIONS /usr",
    );
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], kernel, "{out}");
    assert_ne!(
        lines[0],
        String::from_utf8_lossy(
            &std::process::Command::new("uname")
                .arg("-r")
                .output()
                .unwrap()
                .stdout
        )
        .trim(),
        "the machine runs the host's kernel"
    );
    assert_eq!(lines[1], "core-01");
    assert!(lines[2].starts_with("/dev/vda3 ro"), "{out}");
    // First boot was the machine's own (its initramfs): the launcher only provisioned
    // ROOT, yet `/etc` has the factory defaults, the machine ID is the one the launcher
    // gave as the system UUID, core owns its home, and the disk has a GUID of its own.
    let (code, out) = c.sh(
        "core-01",
        "cat /etc/machine-id; stat -c %U /home/core; test -s /etc/passwd && echo passwd; \
         readlink /var/lib/dbus/machine-id; journalctl -b -o cat -t ferrite-first-boot | head -3",
    );
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        json["machines"][0]["machine_id"].as_str().unwrap(),
        "{out}"
    );
    assert_eq!(&lines[1..4], ["core", "passwd", "/etc/machine-id"], "{out}");
    assert!(
        out.contains("ROOT set up from /usr/share/factory") && out.contains("own disk GUID"),
        "the initramfs's first boot is not in the journal: {out}"
    );
    assert_ne!(
        coreos_disk::Disk::open(&c.machine_dir("core-01").join("disk.img"))
            .disk_guid()
            .unwrap(),
        coreos_disk::PLACEHOLDER_DISK_GUID
    );
    // The chapter: etcd2, fleet, docker with its TCP socket.
    c.sh_until(
        "core-01",
        "systemctl is-active etcd2 fleet docker-tcp.socket",
        "active\nactive\nactive",
        120,
    );
    c.sh_until(
        "core-01",
        "ETCDCTL_API=3 etcdctl endpoint health 2>&1",
        "is healthy",
        60,
    );
    c.sh_until(
        "core-01",
        "docker version --format '{{.Server.Version}}'",
        ".",
        60,
    );
    c.sh_until(
        "core-01",
        "fleetctl list-machines --no-legend",
        "172.20.",
        60,
    );
    let status = c.ok(&["status"]);
    assert!(
        status.contains("core-01      running   ") && status.contains("USR-A"),
        "{status}"
    );

    rollback(&c, kernel);
    good_update(&c);
    real_update(&c);
    both_drivers(&c);

    // halt --force: the power cut.
    c.ok(&["halt", "--force", "core-01"]);
    assert!(c.ok(&["status"]).contains("core-01      stopped"));
    c.destroy_and_check();
}

/// Gives USR-B a filesystem holding only USR-A's kernel and initramfs: it boots as far as
/// the initramfs, which mounts it on `/usr` and finds no system to start.
fn break_usr_b(disk: &Path, kernel: &str) {
    let d = coreos_disk::Disk::open(disk);
    let (a, b) = (d.partition("USR-A").unwrap(), d.partition("USR-B").unwrap());
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("a");
    let tree = work.path().join("b").join("lib/modules").join(kernel);
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&tree).unwrap();
    let run = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    run(Command::new("mount")
        .arg("-o")
        .arg(format!(
            "ro,loop,offset={},sizelimit={}",
            a.offset(),
            a.bytes()
        ))
        .arg(disk)
        .arg(&mnt));
    let from = mnt.join("lib/modules").join(kernel);
    let copied = ["vmlinuz", "initramfs.img"]
        .iter()
        .all(|f| std::fs::copy(from.join(f), tree.join(f)).is_ok());
    run(Command::new("umount").arg(&mnt));
    assert!(copied, "USR-A's kernel");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "USR-B", "-d"])
        .arg(work.path().join("b"))
        .arg("-E")
        .arg(format!("offset={}", b.offset()))
        .arg(disk)
        .arg(format!("{}k", b.bytes() / 1024)));
}

/// Copies USR-A's partition, byte for byte, over USR-B (both 1 GiB, MiB-aligned).
fn copy_usr_a_to_b(disk: &Path) {
    let d = coreos_disk::Disk::open(disk);
    let (a, b) = (d.partition("USR-A").unwrap(), d.partition("USR-B").unwrap());
    assert_eq!(a.bytes(), b.bytes());
    let mib = 1024 * 1024;
    let st = Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", disk.display()))
        .arg("bs=1M")
        .arg(format!("skip={}", a.offset() / mib))
        .arg(format!("seek={}", b.offset() / mib))
        .arg(format!("count={}", a.bytes() / mib))
        .args(["conv=notrunc,sparse", "status=none"])
        .status()
        .unwrap();
    assert!(st.success(), "copying USR-A over USR-B");
}

/// Rollback on a real kernel (see the file's doc).
fn rollback(c: &Cluster, kernel: &str) {
    // Rollback on a real kernel: USR-B is given a kernel but no system, and marked as
    // CoreOS's postinst marks a new slot (cgpt add -S0 -T1, prioritize). The next boot
    // tries B once (its initramfs cannot start a system and the machine reboots), then A.
    let (_, inside) = c.sh(
        "core-01",
        "rootdev -s /usr; sudo cgpt show -q /dev/vda | grep USR",
    );
    assert!(
        inside.starts_with("/dev/vda3\n"),
        "rootdev in the machine: {inside}"
    );
    assert!(inside.contains("USR-B"), "cgpt in the machine: {inside}");
    // halt: the power button, systemd shuts down, QEMU exits.
    let t = Instant::now();
    c.ok(&["halt", "core-01"]);
    eprintln!("halt: {:.1} s", t.elapsed().as_secs_f64());
    let console = std::fs::read_to_string(c.machine_dir("core-01").join("console.log")).unwrap();
    assert!(
        console.contains("reboot: Power down"),
        "no clean power-off on the console"
    );
    assert!(c.ok(&["status"]).contains("core-01      stopped"));
    let disk = c.machine_dir("core-01").join("disk.img");
    break_usr_b(&disk, kernel);
    let cgpt = Path::new(common::FERRITE).with_file_name("cgpt");
    for args in [
        &["add", "-i", "4", "-S0", "-T1"][..],
        &["prioritize", "-i", "4"],
    ] {
        let st = Command::new(&cgpt).args(args).arg(&disk).status().unwrap();
        assert!(st.success(), "cgpt {args:?}");
    }
    let t = Instant::now();
    c.ok(&["up"]);
    eprintln!(
        "up through a failing USR-B: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let console = std::fs::read_to_string(c.machine_dir("core-01").join("console.log")).unwrap();
    let boots: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("ferrite: "))
        .collect();
    assert_eq!(
        boots,
        [
            format!("ferrite: booting USR-B ({})", coreos_disk::USR_B_GUID),
            "ferrite: the machine rebooted".to_string(),
            format!("ferrite: booting USR-A ({})", coreos_disk::USR_A_GUID),
        ],
        "{console}"
    );
    let show = Command::new(&cgpt).arg("show").arg(&disk).output().unwrap();
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(
        show.contains("Attr: priority=2 tries=0 successful=0"),
        "B's try spent:\n{show}"
    );
    assert!(c.ok(&["status"]).contains("USR-A"));
    c.sh_until("core-01", "findmnt -no SOURCE /usr", "/dev/vda3", 30);
    // This second boot of the machine found its state: etcd's member is still there.
    c.sh_until("core-01", "etcdctl member list", "core-01", 120);
}

/// A good update (see the file's doc).
fn good_update(c: &Cluster) {
    let disk = c.machine_dir("core-01").join("disk.img");
    let cgpt = Path::new(common::FERRITE).with_file_name("cgpt");
    // A good update: USR-B gets USR-A's bytes (a working /usr), is marked as a new slot,
    // boots, is marked good from inside as CoreOS's setgoodroot did (`cgpt add -S1 -T0` on
    // the partition `rootdev` names, then `prioritize`). (That a slot marked good stays the
    // boot slot is `gptprio_next`'s, unit-tested in coreos-disk; the real update below
    // reboots from it.)
    c.ok(&["halt", "core-01"]);
    copy_usr_a_to_b(&disk);
    for args in [
        &["add", "-i", "4", "-S0", "-T1"][..],
        &["prioritize", "-i", "4"],
    ] {
        let st = Command::new(&cgpt).args(args).arg(&disk).status().unwrap();
        assert!(st.success(), "cgpt {args:?}");
    }
    c.ok(&["up"]);
    c.sh_until("core-01", "rootdev -s /usr", "/dev/vda4", 30);
    let (code, out) = c.sh(
        "core-01",
        "dev=$(rootdev -s /usr) && sudo cgpt add -S1 -T0 $dev && sudo cgpt prioritize $dev && sudo cgpt show /dev/vda | grep -A3 USR-B",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Attr: priority=2 tries=0 successful=1"),
        "{out}"
    );
    assert!(c.ok(&["status"]).contains("USR-B"));
    // `status` asks the machine which partition is on /usr; the supervisor's note of the
    // slot it chose is only the fallback.
    std::fs::write(c.machine_dir("core-01").join("booted"), "USR-A").unwrap();
    let status = c.ok(&["status"]);
    assert!(status.contains("USR-B"), "{status}");
}

/// A real update: a new release built and published in the cluster's update service; the
/// machine's update_engine downloads it, verifies it, writes its passive slot (USR-A, as the
/// machine runs USR-B now) and runs the new image's postinst; locksmithd reboots it for real
/// into the new slot; the health gate marks it good; the service records it complete.
fn real_update(c: &Cluster) {
    let (channel, machine_id) = common::channel_and_id(c, 0);
    let t = Instant::now();
    common::build_and_publish(c, "99.0.0", &channel, &[]);
    eprintln!(
        "release 99.0.0 built and published: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let before = boots(c).len();
    common::take_update(c, "core-01");
    eprintln!(
        "update installed by the machine: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // locksmithd reboots it (the chapter's user-data leaves the strategy at `reboot`): a
    // real reboot, into the new slot.
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(300);
    while boots(c).len() == before {
        assert!(
            Instant::now() < deadline,
            "locksmithd did not reboot the machine"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(boots(c)[before..], ["USR-A"]);
    c.sh_until("core-01", "rootdev -s /usr", "/dev/vda3", 300);
    eprintln!(
        "rebooted by locksmithd into the update: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    c.sh_until(
        "core-01",
        "grep VERSION= /usr/share/coreos/release",
        "COREOS_RELEASE_VERSION=99.0.0",
        10,
    );
    assert!(c.ok(&["status"]).contains("USR-A"));
    // The health gate marks it good once the machine is healthy; until then it is on
    // trial and update_engine does not check.
    c.sh_until(
        "core-01",
        "journalctl -u ferrite-boot-health --no-pager -o cat",
        "USR-A is healthy",
        120,
    );
    let (_, show) = c.sh("core-01", "sudo cgpt show /dev/vda | grep -A3 USR-A");
    assert!(
        show.contains("Attr: priority=2 tries=0 successful=1"),
        "marked good:\n{show}"
    );
    // The first check after that tells the service it is complete.
    let events = common::wait_complete(c, &machine_id, "99.0.0");
    assert_eq!(
        events,
        [(13, 1), (14, 1), (3, 1)],
        "the events of the update"
    );
}

/// The slots the machine's supervisor booted, in order (from its console).
fn boots(c: &Cluster) -> Vec<String> {
    std::fs::read_to_string(c.machine_dir("core-01").join("console.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("ferrite: booting "))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

/// An nspawn machine joins the virtual machine's cluster: the same bridge, and each
/// reaches the other's services (the chapter's user-data makes each machine an etcd of its
/// own, so core-01 asks core-02's).
fn both_drivers(c: &Cluster) {
    let t = Instant::now();
    c.ok(&["up", "--driver", "nspawn", "--instances", "2"]);
    eprintln!(
        "an nspawn machine added: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let json = c.cluster_json();
    assert_eq!(json["machines"][0]["driver"], "qemu");
    assert_eq!(json["machines"][1]["driver"], "nspawn");
    let ip = |i: usize| json["machines"][i]["ip"].as_str().unwrap().to_string();
    c.sh_until(
        "core-02",
        &format!("ping -c1 -W2 {}", ip(0)),
        " 0% packet loss",
        30,
    );
    c.sh_until(
        "core-01",
        &format!("ping -c1 -W2 {}", ip(1)),
        " 0% packet loss",
        30,
    );
    c.sh_until(
        "core-01",
        &format!("curl -s http://{}:2379/version", ip(1)),
        "etcdserver",
        60,
    );
    c.sh_until(
        "core-02",
        &format!("curl -s http://{}:2379/version", ip(0)),
        "etcdserver",
        60,
    );
    let status = c.ok(&["status"]);
    assert!(
        status.contains("core-01      running") && status.contains("core-02      running"),
        "{status}"
    );
}

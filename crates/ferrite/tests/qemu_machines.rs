//! `ferrite up --driver qemu`: the chapter's walkthrough on a virtual machine that boots the
//! kernel its USR partition carries (QEMU, TCG here), on the same kind of cluster bridge as
//! the nspawn machines, and its lifecycle: graceful `halt` (ACPI power button), `up` again,
//! `halt --force` (the power cut), `destroy` leaving nothing behind. Needs root, QEMU and
//! the packages `scripts/install-deps.sh` installs. One machine serves every step (a boot
//! under emulation takes a minute or two).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::Cluster;

#[test]
fn the_chapter_on_a_virtual_machine_and_its_lifecycle() {
    let mut c = Cluster::new("qemu");
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
    // The chapter: etcd2, fleet, docker with its TCP socket.
    c.sh_until(
        "core-01",
        "systemctl is-active etcd2 fleet docker-tcp.socket",
        "active\nactive\nactive",
        120,
    );
    c.sh_until("core-01", "etcdctl endpoint health 2>&1", "is healthy", 60);
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

    // up again: the second boot finds its state.
    let t = Instant::now();
    c.ok(&["up"]);
    eprintln!("second up: {:.1} s", t.elapsed().as_secs_f64());
    c.sh_until("core-01", "etcdctl member list", "core-01", 120);

    // halt --force: the power cut.
    c.ok(&["halt", "--force", "core-01"]);
    assert!(c.ok(&["status"]).contains("core-01      stopped"));
    c.destroy_and_check();
}

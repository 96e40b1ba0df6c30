//! The QEMU driver: a machine is a virtual machine booting the kernel and initramfs that
//! its chosen USR partition carries (`/usr/lib/modules/<version>/`), loaded directly
//! (`-kernel`/`-initrd`, the slot chosen by `gptprio_next` on each start, as GRUB did), with
//! `mount.usr=PARTUUID=<slot>` so the initramfs mounts that slot read-only on `/usr`.
//!
//! Its network is a tap device in the cluster's switch namespace on the same bridge as the
//! nspawn machines (QEMU runs in that namespace; nothing is added to the host's), its
//! address set by systemd-networkd from a file first boot writes. Commands reach it over
//! SSH with the cluster's key (sshd is socket-activated on every machine). `halt` asks
//! ACPI to power off through QEMU's monitor socket; `--force` kills QEMU. `-no-reboot`
//! makes a reboot end QEMU, so every boot goes through the slot choice again.
//!
//! Acceleration: TCG unless `FERRITE_QEMU_ACCEL` names another (`kvm` where `/dev/kvm`
//! works); the guest's memory is `vm_memory`.
//!
//! Next (the real-boot issue): a boot path on the disk itself (EFI-SYSTEM with a selector
//! that reads the gptprio bits, booted by OVMF) and a test that it agrees with this direct
//! load on every step of the update lifecycle; first-boot duties in the initramfs (disk
//! GUID, growing ROOT, machine ID) instead of on the host; `status` reading the USR from
//! the machine (`rootdev -s /usr`); the rollback, good-update and corrupted-GPT tests on a
//! QEMU machine; `ferrite image build --format raw|qcow2`; QEMU numbers in the benchmark.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::state::{ClusterState, MachineState};
use crate::{io_err, Error, Paths, CLUSTER_KEY};

/// What QEMU's command line carries to find the machine's process again.
pub(crate) fn marker(m: &MachineState) -> String {
    format!("-name guest={}", m.name)
}

/// The tap device of machine `index` in the switch namespace.
pub(crate) fn tap(m: &MachineState) -> String {
    format!("vm{}", m.index)
}

/// First boot's share for a virtual machine (nspawn gives these from outside): the host
/// name, and the address on `eth0` through systemd-networkd, enabled.
pub(crate) fn provision(
    root: &Path,
    cluster: &ClusterState,
    m: &MachineState,
) -> Result<(), Error> {
    let file = |rel: &str, data: String| -> Result<(), Error> {
        let p = root.join(rel);
        if let Some(dir) = p.parent() {
            atomic_file::create_dirs(dir)?;
        }
        Ok(atomic_file::write(
            &p,
            data.as_bytes(),
            &atomic_file::Options::mode(0o644),
        )?)
    };
    file("etc/hostname", format!("{}\n", m.name))?;
    file(
        "etc/systemd/network/50-ferrite.network",
        format!(
            "[Match]\nName=eth0\n\n[Network]\nAddress={}/24\nGateway={}\n",
            m.ip,
            cluster.gateway()
        ),
    )?;
    for (wants, unit) in [
        ("multi-user.target.wants", "systemd-networkd.service"),
        ("sockets.target.wants", "systemd-networkd.socket"),
    ] {
        let dir = root.join("etc/systemd/system").join(wants);
        atomic_file::create_dirs(&dir)?;
        let link = dir.join(unit);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("/usr/lib/systemd/system/{unit}"), &link)
                .map_err(io_err("linking", &link))?;
        }
    }
    Ok(())
}

/// The kernel and initramfs a mounted USR carries.
pub(crate) fn kernel(usr: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let modules = usr.join("lib/modules");
    let version = std::fs::read_dir(&modules)
        .map_err(io_err("reading", &modules))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("vmlinuz").is_file())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{} carries no kernel (an image from before kernels were added: rebuild it)",
                modules.display()
            ))
        })?;
    Ok((version.join("vmlinuz"), version.join("initramfs.img")))
}

/// The QEMU command line of a machine (to run inside the switch namespace).
pub(crate) fn command(
    cluster: &ClusterState,
    m: &MachineState,
    dir: &Path,
    usr: &Path,
    slot: uuid::Uuid,
) -> Result<Command, Error> {
    let (vmlinuz, initrd) = kernel(usr)?;
    let accel = std::env::var("FERRITE_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
    let memory = cluster.settings.memory_mb.max(512);
    let mut cmd = host_command::command("qemu-system-x86_64");
    cmd.args(["-name", &format!("guest={}", m.name)])
        .args(["-machine", "q35", "-accel", &accel, "-smp", "2"])
        .args(["-m", &memory.to_string()])
        .args(["-nodefaults", "-no-reboot", "-display", "none"])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 root=LABEL=ROOT rootflags=rw mount.usr=PARTUUID={slot} \
             mount.usrflags=ro net.ifnames=0 panic=10 rd.emergency=reboot rd.shell=0"
        ))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,cache=unsafe",
            dir.join("disk.img").display()
        ))
        .arg("-netdev")
        .arg(format!(
            "tap,id=n0,ifname={},script=no,downscript=no",
            tap(m)
        ))
        .arg("-device")
        .arg(format!(
            "virtio-net-pci,netdev=n0,mac=52:54:00:14:{:02x}:{:02x}",
            cluster.subnet, m.index
        ))
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .arg("-monitor")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.join("monitor.sock").display()
        ));
    Ok(cmd)
}

/// SSH to the machine as `core` with the cluster's key, from the switch namespace.
pub(crate) fn ssh(paths: &Paths, cluster: &ClusterState, m: &MachineState, tty: bool) -> Command {
    let key = paths
        .cluster_dir(&cluster.name)
        .join("ssh")
        .join(CLUSTER_KEY);
    let mut cmd = host_command::command("ip");
    cmd.args(["netns", "exec", &cluster.switch_ns(), "ssh"])
        .arg(if tty { "-t" } else { "-T" })
        .arg("-i")
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
        ])
        .arg(format!("core@{}", m.ip));
    cmd
}

/// Asks the machine to power off (ACPI, through QEMU's monitor).
pub(crate) fn powerdown(dir: &Path) -> Result<(), Error> {
    let sock = dir.join("monitor.sock");
    let mut s =
        std::os::unix::net::UnixStream::connect(&sock).map_err(io_err("connecting to", &sock))?;
    s.write_all(b"system_powerdown\n")
        .map_err(io_err("writing to", &sock))
}

/// Standard input, output and error for QEMU: its own output goes to a log beside the
/// console.
pub(crate) fn stdio(dir: &Path) -> Result<(Stdio, Stdio, Stdio), Error> {
    let log = dir.join("qemu.log");
    let f = std::fs::File::create(&log).map_err(io_err("creating", &log))?;
    let f2 = f.try_clone().map_err(io_err("opening", &log))?;
    Ok((Stdio::null(), f.into(), f2.into()))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::{Driver, Settings};

    fn cluster() -> (ClusterState, MachineState) {
        let m = MachineState {
            name: "core-02".into(),
            index: 2,
            ip: "172.20.7.102".into(),
            machine_id: "0".repeat(32),
            pid: None,
            usr_mount: None,
            usr_label: None,
            cgroups: Vec::new(),
            driver: Driver::Qemu,
        };
        let c = ClusterState {
            name: "demo".into(),
            id: "abcd1234".into(),
            subnet: 7,
            settings: Settings {
                memory_mb: 1536,
                ..Settings::default()
            },
            image: PathBuf::from("/x.img"),
            discovery: None,
            machines: vec![m.clone()],
        };
        (c, m)
    }

    #[test]
    fn the_command_boots_the_chosen_slot_on_the_cluster_bridge() {
        let (c, m) = cluster();
        let usr = tempfile::tempdir().unwrap();
        let k = usr.path().join("lib/modules/6.1.0-50-cloud-amd64");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("vmlinuz"), "k").unwrap();
        std::fs::write(k.join("initramfs.img"), "i").unwrap();
        let slot = coreos_disk::USR_B_GUID;
        let cmd = command(&c, &m, Path::new("/m"), usr.path(), slot).unwrap();
        let line: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = line.join(" ");
        assert!(line.contains(&marker(&m)), "{line}");
        assert!(line.contains(&format!("mount.usr=PARTUUID={slot} mount.usrflags=ro")));
        assert!(
            line.contains("-no-reboot") && line.contains("-m 1536"),
            "{line}"
        );
        assert!(line.contains(&format!("-kernel {}", k.join("vmlinuz").display())));
        assert!(line.contains("tap,id=n0,ifname=vm2,script=no"), "{line}");
        assert!(line.contains("mac=52:54:00:14:07:02"), "{line}");
        assert!(line.contains("file=/m/disk.img,if=virtio"), "{line}");
        // A USR without a kernel (an image from before kernels) is refused clearly.
        let empty = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(empty.path().join("lib/modules")).unwrap();
        let err = command(&c, &m, Path::new("/m"), empty.path(), slot).unwrap_err();
        assert!(err.to_string().contains("carries no kernel"), "{err}");
    }

    #[test]
    fn first_boot_gives_the_host_name_and_a_static_address() {
        let (c, m) = cluster();
        let root = tempfile::tempdir().unwrap();
        provision(root.path(), &c, &m).unwrap();
        // Twice: a second boot finds everything in place.
        provision(root.path(), &c, &m).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("etc/hostname"), "core-02\n");
        assert_eq!(
            read("etc/systemd/network/50-ferrite.network"),
            "[Match]\nName=eth0\n\n[Network]\nAddress=172.20.7.102/24\nGateway=172.20.7.1\n"
        );
        let link = root
            .path()
            .join("etc/systemd/system/multi-user.target.wants/systemd-networkd.service");
        assert_eq!(
            std::fs::read_link(link).unwrap(),
            Path::new("/usr/lib/systemd/system/systemd-networkd.service")
        );
    }
}

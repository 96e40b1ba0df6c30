//! The QEMU driver: a machine is a virtual machine booting the kernel and initramfs that
//! the USR partition chosen for that boot carries (`/usr/lib/modules/<version>/`), with
//! `mount.usr=PARTUUID=<slot>` so the initramfs mounts that slot read-only on `/usr`. Its
//! supervisor, `ferrite __qemu` ([`supervise`]), is the machine's firmware and bootloader:
//! each boot runs GRUB's `gptprio.next` on the disk (spending a try), loads that slot's
//! kernel, and runs QEMU with `-no-reboot` until the guest powers off (the end) or resets
//! (QMP's `SHUTDOWN` event says which: boot again) — so a failing slot spends its try and
//! the next boot takes the other, as CoreOS rolled back. The GPT bits stay the only record
//! of the choice; the supervisor writes down only which slot it booted, for `status`.
//!
//! Its network is a tap device in the cluster's switch namespace on the same bridge as the
//! nspawn machines (QEMU runs in that namespace; nothing is added to the host's), its
//! address set by systemd-networkd from a file first boot writes. Commands reach it over
//! SSH with the cluster's key (sshd is socket-activated on every machine). `halt` asks
//! ACPI to power off through QEMU's monitor socket; `--force` kills the supervisor and,
//! through the machine's cgroups, QEMU.
//!
//! Acceleration: TCG unless `FERRITE_QEMU_ACCEL` names another (`kvm` where `/dev/kvm`
//! works); the guest's memory is `vm_memory`.
//!
//! The disk also boots without this supervisor, through its own EFI-SYSTEM (the
//! `boot-select` crate): its selector runs the same `gptprio_next` and gives the kernel the
//! same command line (`boot_select::kernel_cmdline`), and `tests/real_kernel.rs` checks the
//! two agree on each step of the update lifecycle.
//!
//! A corrupted partition table is tested through the firmware path
//! (`tests/real_kernel.rs`), not yet through this supervisor.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use coreos_disk::{Disk, Partition};

use crate::boot::say;
use crate::host::Host;
use crate::state::{ClusterState, MachineState};
use crate::{io_err, Error, Paths, CLUSTER_KEY};

/// What QEMU's command line carries to find the machine's process again.
pub(crate) fn marker(m: &MachineState) -> String {
    format!("__qemu --name {} ", m.name)
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
    boot_select::kernel_in(usr).map_err(|e| {
        Error::Invalid(format!(
            "{e} (an image from before kernels were added: rebuild it)"
        ))
    })
}

/// What the supervisor needs to boot a machine again and again: written by the launcher
/// to `<machine dir>/qemu.json`, read by `ferrite __qemu`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    /// The machine's name.
    pub name: String,
    /// Its directory (disk, console, sockets).
    pub dir: PathBuf,
    /// Guest memory, MiB.
    pub memory_mb: u64,
    /// The tap device in the switch namespace.
    pub tap: String,
    /// Its MAC address.
    pub mac: String,
    /// Its machine ID, given as the SMBIOS system UUID (`-uuid`), which the machine's first
    /// boot takes as its `/etc/machine-id` (as systemd does in a VM). Absent in specs
    /// written before it was: the machine then makes up its own.
    #[serde(default)]
    pub machine_id: Option<String>,
}

impl Spec {
    /// The spec of machine `m` of `cluster`.
    pub(crate) fn of(cluster: &ClusterState, m: &MachineState, dir: &Path) -> Self {
        Self {
            name: m.name.clone(),
            dir: dir.to_path_buf(),
            memory_mb: cluster.settings.memory_mb.max(512),
            tap: tap(m),
            mac: format!("52:54:00:14:{:02x}:{:02x}", cluster.subnet, m.index),
            machine_id: Some(m.machine_id.clone()),
        }
    }
}

/// The QEMU command line of one boot of `slot` (its kernel and initramfs already copied
/// out of it).
pub(crate) fn command(spec: &Spec, vmlinuz: &Path, initrd: &Path, slot: uuid::Uuid) -> Command {
    let accel = std::env::var("FERRITE_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
    let dir = &spec.dir;
    let mut cmd = host_command::command("qemu-system-x86_64");
    cmd.args(["-name", &format!("guest={}", spec.name)])
        .args(["-machine", "q35", "-accel", &accel, "-smp", "2"])
        .args(["-m", &spec.memory_mb.to_string()])
        .args(["-nodefaults", "-no-reboot", "-display", "none"])
        .args(
            spec.machine_id
                .as_deref()
                .and_then(|id| uuid::Uuid::try_parse(id).ok())
                .map(|id| ["-uuid".to_string(), id.hyphenated().to_string()])
                .into_iter()
                .flatten(),
        )
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(boot_select::kernel_cmdline(slot))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,cache=unsafe",
            dir.join("disk.img").display()
        ))
        .arg("-netdev")
        .arg(format!(
            "tap,id=n0,ifname={},script=no,downscript=no",
            spec.tap
        ))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={}", spec.mac))
        .arg("-chardev")
        .arg(format!(
            "file,id=console,path={},append=on",
            dir.join("console.log").display()
        ))
        .args(["-serial", "chardev:console"])
        .arg("-monitor")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.join("monitor.sock").display()
        ))
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.join("qmp.sock").display()
        ));
    cmd
}

/// How one boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The guest rebooted (or panicked and rebooted): boot again, choosing the slot anew.
    Reboot,
    /// The guest powered off, or QEMU was stopped.
    Off,
}

/// Copies `vmlinuz` and `initramfs.img` out of the slot (a private
/// read-only mount of its partition) into `<dir>/boot/`.
fn kernel_of_slot(
    host: &dyn Host,
    spec: &Spec,
    slot: &Partition,
) -> Result<(PathBuf, PathBuf), Error> {
    let mnt = spec.dir.join("usr-boot");
    host.mount_partition(
        &spec.dir.join("disk.img"),
        slot.offset(),
        slot.bytes(),
        &mnt,
        true,
    )?;
    let copied = (|| {
        let (vmlinuz, initrd) = kernel(&mnt)?;
        let boot = spec.dir.join("boot");
        std::fs::create_dir_all(&boot).map_err(io_err("creating", &boot))?;
        let (k, i) = (boot.join("vmlinuz"), boot.join("initramfs.img"));
        std::fs::copy(&vmlinuz, &k).map_err(io_err("copying", &vmlinuz))?;
        std::fs::copy(&initrd, &i).map_err(io_err("copying", &initrd))?;
        Ok((k, i))
    })();
    host.unmount(&mnt)?;
    let _ = std::fs::remove_dir(&mnt);
    copied
}

/// `ferrite __qemu`: the machine's power and firmware. Each boot chooses the slot as GRUB's
/// `gptprio.next` does (spending a try), loads that slot's kernel, and runs QEMU until the
/// guest powers off (the end) or reboots (boot again): so a slot that fails — a kernel
/// panic, an initramfs that cannot mount `/usr` (they reboot), a slot without a kernel —
/// spends its try and the next boot takes the other slot, as on CoreOS.
pub fn supervise(spec_path: &Path) -> Result<(), Error> {
    let data = std::fs::read(spec_path).map_err(io_err("reading", spec_path))?;
    let spec: Spec = serde_json::from_slice(&data).map_err(|e| Error::State {
        path: spec_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let host = crate::RealHost;
    let disk = Disk::open(&spec.dir.join("disk.img"));
    // Bounded: a machine that keeps failing within seconds stops instead of spinning.
    let mut quick_failures = 0;
    loop {
        let slot = disk.gptprio_next().inspect_err(|e| {
            say(&spec.dir, &format!("no USR partition can boot: {e}"));
        })?;
        say(
            &spec.dir,
            &format!("booting {} ({})", slot.label, slot.guid),
        );
        let _ = atomic_file::write(
            &spec.dir.join("booted"),
            slot.label.as_bytes(),
            &atomic_file::Options::mode(0o644),
        );
        let started = std::time::Instant::now();
        let ended = match kernel_of_slot(&host, &spec, &slot) {
            Ok((vmlinuz, initrd)) => run_once(&spec, command(&spec, &vmlinuz, &initrd, slot.guid))?,
            Err(e) => {
                say(&spec.dir, &format!("{} cannot be booted: {e}", slot.label));
                Ended::Reboot
            }
        };
        if ended == Ended::Off {
            return Ok(());
        }
        quick_failures = if started.elapsed() < std::time::Duration::from_secs(20) {
            quick_failures + 1
        } else {
            0
        };
        if quick_failures >= 10 {
            say(
                &spec.dir,
                "ten boots failed within seconds each: powering off",
            );
            return Ok(());
        }
    }
}

/// Runs QEMU once and tells how the guest ended, from QMP's `SHUTDOWN` event (a reset,
/// which `-no-reboot` turns into QEMU's exit, or a panic: reboot; anything else: off).
fn run_once(spec: &Spec, mut cmd: Command) -> Result<Ended, Error> {
    use std::io::BufRead as _;
    let qmp = spec.dir.join("qmp.sock");
    let _ = std::fs::remove_file(&qmp);
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: "qemu-system-x86_64".into(),
            source,
        })?;
    let mut reason = None;
    let mut stream = None;
    for _ in 0..200 {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&qmp) {
            stream = Some(s);
            break;
        }
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if let Some(mut s) = stream {
        let _ = s.write_all(b"{\"execute\": \"qmp_capabilities\"}\n");
        let reader = std::io::BufReader::new(s);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["event"] == "SHUTDOWN" {
                reason = v["data"]["reason"].as_str().map(str::to_string);
                break;
            }
        }
    }
    let status = child.wait().map_err(|source| Error::Spawn {
        command: "qemu-system-x86_64".into(),
        source,
    })?;
    Ok(match reason.as_deref() {
        Some("guest-reset" | "guest-panic") => {
            say(&spec.dir, "the machine rebooted");
            Ended::Reboot
        }
        Some(r) => {
            say(&spec.dir, &format!("the machine stopped ({r})"));
            Ended::Off
        }
        None => {
            say(&spec.dir, &format!("QEMU ended ({status})"));
            Ended::Off
        }
    })
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
        let m = MachineState::example(2, Driver::Qemu);
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
            updates: None,
            registry: None,
            machines: vec![m.clone()],
        };
        (c, m)
    }

    #[test]
    fn the_command_boots_the_chosen_slot_on_the_cluster_bridge() {
        let (c, m) = cluster();
        let spec = Spec::of(&c, &m, Path::new("/m"));
        assert_eq!(spec.mac, "52:54:00:14:07:02");
        let slot = coreos_disk::USR_B_GUID;
        let cmd = command(
            &spec,
            Path::new("/m/boot/vmlinuz"),
            Path::new("/m/boot/i"),
            slot,
        );
        let line: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = line.join(" ");
        assert!(line.contains(&format!("mount.usr=PARTUUID={slot} mount.usrflags=ro")));
        assert!(
            line.contains("-no-reboot") && line.contains("-m 1536"),
            "{line}"
        );
        assert!(
            line.contains("-kernel /m/boot/vmlinuz -initrd /m/boot/i"),
            "{line}"
        );
        assert!(line.contains("tap,id=n0,ifname=vm2,script=no"), "{line}");
        assert!(line.contains("mac=52:54:00:14:07:02"), "{line}");
        assert!(line.contains("file=/m/disk.img,if=virtio"), "{line}");
        assert!(line.contains("-qmp unix:/m/qmp.sock"), "{line}");
        assert!(
            line.contains("-uuid 01234567-89ab-cdef-0123-456789abcdef"),
            "the machine ID as the system UUID: {line}"
        );
    }

    #[test]
    fn a_usr_without_a_kernel_is_refused_clearly() {
        let usr = tempfile::tempdir().unwrap();
        let k = usr.path().join("lib/modules/6.1.0-50-cloud-amd64");
        std::fs::create_dir_all(&k).unwrap();
        let err = kernel(usr.path()).unwrap_err();
        assert!(err.to_string().contains("carries no kernel"), "{err}");
        std::fs::write(k.join("vmlinuz"), "k").unwrap();
        let (v, i) = kernel(usr.path()).unwrap();
        assert_eq!((v, i), (k.join("vmlinuz"), k.join("initramfs.img")));
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

//! `ferrite image build`: a bootable Ferrite disk image with CoreOS's partition layout.
//!
//! Two cached stages, each keyed by a hash of its inputs:
//!
//! 1. **rootfs**: `debootstrap --variant=minbase` of Debian bookworm (merged `/usr`) with
//!    systemd, dbus, etcd, docker.io and the rest of [`PACKAGES`]; kept pristine in
//!    `<cache>/rootfs/<key>/`.
//! 2. **image**: a copy of the rootfs made into a Ferrite `/usr` — Ferrite's binaries and
//!    units (from `dist/`), the `core` user (uid and gid 500), `etcd2.service`,
//!    CoreOS's socket-activated sshd (no host keys: each machine makes its own at first
//!    boot), release files carrying the
//!    version and channel, no package manager, `/etc` and `/var` defaults moved to
//!    `/usr/share/factory` — then written as an ext4 filesystem straight into USR-A of a
//!    sparse GPT disk (`coreos-disk`), with an empty OEM and ROOT. The result is
//!    `<cache>/images/<key>/ferrite.img` plus `image.json`.
//!
//! A rebuild with nothing changed finds both keys and takes milliseconds. Stages are built
//! in a temporary directory and renamed into place, so an interrupted build leaves no
//! half-made cache entry. A new build removes the entries it supersedes once they are an
//! hour old, so the cache does not grow by an image per rebuild.
//!
//! Invariant: nothing here runs inside a machine or touches a machine's disk; it only
//! produces images.
//!
//! Each USR carries its own kernel (Debian's `linux-image-cloud-amd64`: virtio and ext4
//! for VMs, a small module tree) and a generic dracut initramfs, both in
//! `/usr/lib/modules/<version>/` (`vmlinuz`, `initramfs.img`); dracut itself is removed
//! from the image once it has built the initramfs (at the rootfs stage, so cached).
//! dracut's systemd initramfs honours `mount.usr=`/`mount.usrflags=` as CoreOS's bootengine
//! did: `root=LABEL=ROOT mount.usr=PARTUUID=<USR-A's GUID> mount.usrflags=ro` boots the disk.
//!
//! EFI-SYSTEM holds the disk's own boot path (`esp.rs`): systemd-boot starts a selector
//! (the image's kernel and a small initramfs) that chooses the USR by the GPT attributes and
//! kexecs the kernel that USR carries — so the disk boots with UEFI firmware alone.
//!
//! The slot's initramfs is dracut's with Ferrite's archive appended (`initramfs.rs`):
//! `ferrite-first-boot` and its unit, which set up a fresh ROOT and give the disk its own
//! GUID on the first boot (the `first_boot` crate).
//!
//! Current limitations: BIOS-BOOT is left empty (no legacy BIOS boot); no dm-verity.

mod esp;
mod initramfs;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use coreos_disk::{Disk, Layout, SECTOR};
use sha1::{Digest, Sha1};

/// Debian packages in every image (besides minbase).
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "iputils-ping",
    "curl",
    "openssh-server",
    "openssh-client",
    "etcd-server",
    "etcd-client",
    "docker.io",
    "sudo",
    "procps",
    "less",
    "ca-certificates",
    "util-linux",
    "libnss-myhostname",
];

/// The kernel each USR carries, the initramfs builder (used at build time only: its
/// files are removed from the image), and the UEFI loader EFI-SYSTEM starts
/// (systemd-boot, see `esp.rs`). Installed with apt after debootstrap, whose resolver
/// would pick initramfs-tools for the kernel and then fail on dracut.
pub const KERNEL_PACKAGES: &[&str] = &["linux-image-cloud-amd64", "dracut", "systemd-boot-efi"];

/// Packages that only build the image (the initramfs) and are removed from its `/usr`.
const BUILD_ONLY: &[&str] = &[
    "dracut",
    "dracut-core",
    "initramfs-tools",
    "initramfs-tools-core",
];

/// The Debian suite.
pub const SUITE: &str = "bookworm";

/// Bumped whenever the rootfs recipe changes in a way its inputs do not show.
const ROOTFS_RECIPE: &str = "ferrite-rootfs-2";
/// Bumped whenever the image recipe changes in a way its inputs do not show.
const RECIPE: &str = "ferrite-image-recipe-9";

/// USR partition size: CoreOS's 1 GiB.
pub const USR_SECTORS: u64 = 2_097_152;
/// ROOT partition size: CoreOS's "vagrant" layout (about 16 GiB, sparse).
pub const ROOT_SECTORS: u64 = 33_845_248;

/// The update channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// alpha
    Alpha,
    /// beta
    Beta,
    /// stable
    Stable,
}

impl Channel {
    /// The channel's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Alpha => "alpha",
            Channel::Beta => "beta",
            Channel::Stable => "stable",
        }
    }

    /// Parses `alpha`, `beta` or `stable`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "alpha" => Some(Channel::Alpha),
            "beta" => Some(Channel::Beta),
            "stable" => Some(Channel::Stable),
            _ => None,
        }
    }
}

/// A build failure, naming the command or path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A build tool failed.
    #[error(transparent)]
    Command(#[from] host_command::CommandError),
    /// A file written the atomic way failed (the error names the step and the path).
    #[error(transparent)]
    File(#[from] atomic_file::Error),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The disk layout could not be written.
    #[error(transparent)]
    Disk(#[from] coreos_disk::Error),
    /// A Ferrite binary to include is missing.
    #[error("Ferrite binary {0} not found (build the workspace first)")]
    MissingBinary(PathBuf),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn run(cmd: &mut Command) -> Result<String, Error> {
    Ok(host_command::run(cmd)?)
}

/// A file Ferrite adds to the image: (path in the image, content, mode).
type DistFile = (&'static str, &'static [u8], u32);

/// The files of `dist/` and where they go.
pub fn dist_files() -> Vec<DistFile> {
    macro_rules! unit {
        ($name:literal) => {
            (
                concat!("usr/lib/systemd/system/", $name),
                include_bytes!(concat!("../../../dist/systemd/", $name)).as_slice(),
                0o644,
            )
        };
    }
    vec![
        unit!("etcd2.service"),
        unit!("fleet.service"),
        unit!("fleet.socket"),
        unit!("system-config.target"),
        unit!("user-config.target"),
        unit!("system-cloudinit@.service"),
        unit!("user-cloudinit@.service"),
        unit!("user-cloudinit@.path"),
        unit!("user-cloudinit-proc-cmdline.service"),
        unit!("media-configdrive.mount"),
        unit!("user-configdrive.service"),
        (
            "usr/lib/udev/rules.d/90-configdrive.rules",
            include_bytes!("../../../dist/udev/90-configdrive.rules"),
            0o644,
        ),
        unit!("ferrite-cgroup-rw.service"),
        unit!("extend-filesystems.service"),
        unit!("update-engine.service"),
        unit!("ferrite-boot-health.service"),
        unit!("locksmithd.service"),
        unit!("flanneld.service"),
        unit!("rkt-gc.service"),
        unit!("rkt-gc.timer"),
        unit!("docker.service.d/50-flannel.conf"),
        (
            "usr/share/dbus-1/system.d/com.coreos.update1.conf",
            include_bytes!("../../../dist/dbus/com.coreos.update1.conf"),
            0o644,
        ),
        unit!("sshd.socket"),
        unit!("sshd@.service"),
        unit!("sshd-keygen.service"),
        (
            "etc/ssh/sshd_config.d/ferrite.conf",
            include_bytes!("../../../dist/etc/sshd-ferrite.conf"),
            0o644,
        ),
        (
            "usr/postinst",
            include_bytes!("../../../dist/usr/postinst"),
            0o755,
        ),
        (
            "usr/bin/etcdctl",
            include_bytes!("../../../dist/usr/bin/etcdctl"),
            0o755,
        ),
        (
            "usr/lib/ferrite/cgroup-rw",
            include_bytes!("../../../dist/lib/cgroup-rw"),
            0o755,
        ),
        (
            "usr/lib/tmpfiles.d/ferrite.conf",
            include_bytes!("../../../dist/lib/tmpfiles.conf"),
            0o644,
        ),
        (
            "etc/profile.d/ferrite-motd.sh",
            include_bytes!("../../../dist/etc/profile-motd.sh"),
            0o644,
        ),
        (
            "etc/bash.bashrc",
            include_bytes!("../../../dist/etc/bashrc"),
            0o644,
        ),
        (
            "etc/skel/.bashrc",
            include_bytes!("../../../dist/etc/bashrc"),
            0o644,
        ),
        (
            "etc/sudoers.d/core",
            include_bytes!("../../../dist/etc/sudoers-core"),
            0o440,
        ),
    ]
}

/// Units enabled by links in `/usr/lib/systemd/system/<target>.wants/`, CoreOS style.
const ENABLED: &[(&str, &str)] = &[
    ("multi-user.target", "system-config.target"),
    ("multi-user.target", "user-config.target"),
    ("sysinit.target", "ferrite-cgroup-rw.service"),
    ("sysinit.target", "extend-filesystems.service"),
    ("multi-user.target", "update-engine.service"),
    ("multi-user.target", "ferrite-boot-health.service"),
    ("multi-user.target", "locksmithd.service"),
    ("timers.target", "rkt-gc.timer"),
    ("sockets.target", "sshd.socket"),
];

/// Links Debian enables in `/etc` that a Ferrite machine does not want.
const DISABLED: &[&str] = &[
    "etcd2.service",
    "multi-user.target.wants/etcd.service",
    "multi-user.target.wants/docker.service",
    "multi-user.target.wants/containerd.service",
    "multi-user.target.wants/e2scrub_reap.service",
    "timers.target.wants/apt-daily.timer",
    "timers.target.wants/apt-daily-upgrade.timer",
    "timers.target.wants/dpkg-db-backup.timer",
    "timers.target.wants/e2scrub_all.timer",
    "timers.target.wants/fstrim.timer",
    "getty.target.wants/getty@tty1.service",
    // Debian's always-running sshd; Ferrite's is socket-activated (sshd.socket), as CoreOS's.
    "sshd.service",
    "multi-user.target.wants/ssh.service",
];

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// The image cache directory.
    pub cache_dir: PathBuf,
    /// The update channel baked in.
    pub channel: Channel,
    /// The release version.
    pub version: String,
    /// Ferrite binaries to install in `/usr/bin`: (name, built file).
    pub binaries: Vec<(String, PathBuf)>,
    /// The Debian mirror.
    pub mirror: String,
    /// The public key update payloads must be signed with (PEM), baked into `/usr` where
    /// update_engine reads it.
    pub payload_key: String,
    /// Bake in a boot check that always fails (`ferrite-failing-check.service`, required
    /// by `boot-complete.target`): a release to rehearse a rollback with.
    pub failing_check: bool,
}

/// The boot check [`BuildSpec::failing_check`] bakes in.
const FAILING_CHECK: &str = "\
# A boot check that always fails: this release was built to rehearse a rollback
# (`ferrite release build --failing-health-check`). The health gate sees
# boot-complete.target fail, does not mark this /usr good and reboots into the previous one.
[Unit]
Description=A boot check that always fails (rollback rehearsal)
Before=boot-complete.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo \"this release fails its health check on purpose\"; exit 1'

[Install]
RequiredBy=boot-complete.target
";

/// A built (or cached) image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The disk image.
    pub path: PathBuf,
    /// The cache key.
    pub key: String,
    /// Whether it came from the cache.
    pub cached: bool,
    /// Seconds the build took (0 for a cache hit of both stages).
    pub seconds: f64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn rootfs_key(spec: &BuildSpec) -> String {
    let mut h = Sha1::new();
    h.update(ROOTFS_RECIPE);
    h.update(SUITE);
    h.update(&spec.mirror);
    for p in PACKAGES.iter().chain(KERNEL_PACKAGES) {
        h.update(p);
        h.update([0]);
    }
    hex(&h.finalize())[..16].to_string()
}

fn image_key(spec: &BuildSpec, rootfs: &str) -> Result<String, Error> {
    let mut h = Sha1::new();
    h.update(RECIPE);
    h.update(rootfs);
    h.update(spec.channel.as_str());
    h.update(&spec.version);
    for (name, path) in &spec.binaries {
        h.update(name);
        let data = std::fs::read(path).map_err(|_| Error::MissingBinary(path.clone()))?;
        h.update(&data);
    }
    h.update(&spec.payload_key);
    if spec.failing_check {
        h.update(FAILING_CHECK);
    }
    for (path, data, mode) in dist_files() {
        h.update(path);
        h.update(data);
        h.update(mode.to_le_bytes());
    }
    Ok(hex(&h.finalize())[..16].to_string())
}

/// Builds the image for `spec`, or returns the cached one.
pub fn build(spec: &BuildSpec) -> Result<BuiltImage, Error> {
    let start = Instant::now();
    let rkey = rootfs_key(spec);
    let ikey = image_key(spec, &rkey)?;
    let image_dir = spec.cache_dir.join("images").join(&ikey);
    let image = image_dir.join("ferrite.img");
    if image.is_file() && image_dir.join("image.json").is_file() {
        return Ok(BuiltImage {
            path: image,
            key: ikey,
            cached: true,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    // One build at a time per cache (concurrent `ferrite up`s wait for each other).
    std::fs::create_dir_all(&spec.cache_dir).map_err(io_err("creating", &spec.cache_dir))?;
    let lock_path = spec.cache_dir.join(".build.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err("opening", &lock_path))?;
    lock.lock().map_err(io_err("locking", &lock_path))?;
    if image.is_file() && image_dir.join("image.json").is_file() {
        return Ok(BuiltImage {
            path: image,
            key: ikey,
            cached: true,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let rootfs = ensure_rootfs(spec, &rkey)?;
    let tmp = spec.cache_dir.join("images").join(format!(".{ikey}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err("creating", &tmp))?;
    let result = build_image(spec, &rootfs, &tmp, &ikey);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&image_dir);
    std::fs::rename(&tmp, &image_dir).map_err(io_err("renaming into", &image_dir))?;
    prune(&spec.cache_dir.join("images"), &ikey);
    prune(&spec.cache_dir.join("rootfs"), &rkey);
    Ok(BuiltImage {
        path: image,
        key: ikey,
        cached: false,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// How long a superseded cache entry is kept: another build (another checkout, a test
/// run) may still be booting machines from it.
const KEEP_SUPERSEDED: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the entries of a cache stage other than `current` that were made more than
/// [`KEEP_SUPERSEDED`] ago: every rebuild makes a new image (~600 MB), and a machine needs
/// its image only while it is being created (it boots from its own copy). Runs under the
/// build lock; what cannot be removed stays.
fn prune(stage: &Path, current: &str) {
    let Ok(entries) = std::fs::read_dir(stage) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Unfinished builds (`.<key>.tmp`) too: one an hour old was interrupted.
        if name == current {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > KEEP_SUPERSEDED);
        if old {
            tracing::info!("removing superseded {}", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The kernel version installed in a tree (its one `usr/lib/modules/<version>`).
pub fn kernel_version(tree: &Path) -> Result<String, Error> {
    let dir = tree.join("usr/lib/modules");
    let mut versions: Vec<String> = std::fs::read_dir(&dir)
        .map_err(io_err("reading", &dir))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    match versions.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Error::Io {
            op: "finding the one kernel in",
            path: dir,
            source: std::io::Error::other(format!("found {versions:?}")),
        }),
    }
}

/// dracut's settings for the one initramfs every machine boots with.
const DRACUT_CONF: &str = "# Ferrite: one generic initramfs for every machine.\n\
hostonly=\"no\"\n\
hostonly_cmdline=\"no\"\n\
add_drivers+=\" virtio_blk virtio_pci virtio_scsi virtio_net ext4 \"\n";

/// Installs the kernel with its initramfs (dracut's, made by the kernel's own install hook
/// under [`DRACUT_CONF`]: generic, its systemd honouring `mount.usr=` and `mount.usrflags=`
/// as CoreOS's bootengine did), then puts both where the USR partition carries them,
/// `/usr/lib/modules/<version>/{vmlinuz,initramfs.img}`, so each slot boots its own kernel.
/// `/boot` is emptied.
fn install_kernel(tree: &Path) -> Result<(), Error> {
    let conf = tree.join("etc/dracut.conf.d/90-ferrite.conf");
    write_file(
        tree,
        "etc/dracut.conf.d/90-ferrite.conf",
        DRACUT_CONF.as_bytes(),
        0o644,
    )?;
    // apt inside the tree resolves names with the host's resolver configuration.
    let resolv = tree.join("etc/resolv.conf");
    let saved = std::fs::read(&resolv).ok();
    if let Ok(host) = std::fs::read("/etc/resolv.conf") {
        write_file(tree, "etc/resolv.conf", &host, 0o644)?;
    }
    let apt = |args: &[&str]| {
        run(host_command::command("chroot")
            .arg(tree)
            .arg("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    let installed = apt(&["update", "-qq"]).and_then(|_| {
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(KERNEL_PACKAGES);
        apt(&args)
    });
    match saved {
        Some(data) => write_file(tree, "etc/resolv.conf", &data, 0o644)?,
        None => {
            let _ = std::fs::remove_file(&resolv);
        }
    }
    installed?;
    let _ = apt(&["clean"]);
    let _ = std::fs::remove_file(&conf);
    let version = kernel_version(tree)?;
    let dir = tree.join("usr/lib/modules").join(&version);
    let boot = tree.join("boot");
    for (from, to) in [
        (format!("vmlinuz-{version}"), "vmlinuz"),
        (format!("initrd.img-{version}"), "initramfs.img"),
    ] {
        let src = boot.join(&from);
        std::fs::copy(&src, dir.join(to)).map_err(io_err("copying", &src))?;
    }
    for e in std::fs::read_dir(&boot)
        .map_err(io_err("reading", &boot))?
        .flatten()
    {
        let _ = std::fs::remove_file(e.path());
    }
    for link in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        let _ = std::fs::remove_file(tree.join(link));
    }
    Ok(())
}

/// Removes the files of the packages that only build the image (their dpkg file lists).
fn remove_build_tools(tree: &Path) {
    for pkg in BUILD_ONLY {
        let list = tree.join(format!("var/lib/dpkg/info/{pkg}.list"));
        let Ok(text) = std::fs::read_to_string(&list) else {
            continue;
        };
        for line in text.lines() {
            let p = tree.join(line.trim_start_matches('/'));
            if p.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                let _ = std::fs::remove_file(&p);
            }
        }
        // Then the directories they leave empty, deepest first.
        for line in text.lines().rev() {
            let _ = std::fs::remove_dir(tree.join(line.trim_start_matches('/')));
        }
    }
}

fn ensure_rootfs(spec: &BuildSpec, key: &str) -> Result<PathBuf, Error> {
    let dir = spec.cache_dir.join("rootfs").join(key);
    if dir.join("usr/bin/systemctl").exists() {
        return Ok(dir);
    }
    let tmp = spec.cache_dir.join("rootfs").join(format!(".{key}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err("creating", &tmp))?;
    tracing::info!("debootstrap {SUITE} into {}", tmp.display());
    let r = run(host_command::command("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&tmp)
        .arg(&spec.mirror));
    if let Err(e) = r {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // The package cache is not part of the image.
    let _ = run(host_command::command("find")
        .arg(tmp.join("var/cache/apt"))
        .args(["-name", "*.deb", "-delete"]));
    if let Err(e) = install_kernel(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(io_err("renaming into", &dir))?;
    Ok(dir)
}

fn write_file(root: &Path, rel: &str, data: &[u8], mode: u32) -> Result<(), Error> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
    }
    Ok(atomic_file::write(
        &path,
        data,
        &atomic_file::Options::mode(mode),
    )?)
}

fn remove(root: &Path, rel: &str) {
    let p = root.join(rel);
    if p.is_dir() && !p.is_symlink() {
        let _ = std::fs::remove_dir_all(&p);
    } else {
        let _ = std::fs::remove_file(&p);
    }
}

/// What the image leaves out of Debian's tree: no package manager, no documentation, no
/// per-machine identity (host name, machine ID, SSH host keys: every machine makes its own
/// at first boot).
const STRIPPED: &[&str] = &[
    "usr/bin/apt",
    "usr/bin/apt-get",
    "usr/bin/apt-cache",
    "usr/bin/apt-config",
    "usr/bin/apt-mark",
    "usr/bin/apt-cdrom",
    "usr/bin/apt-key",
    "usr/lib/apt",
    "usr/bin/dpkg",
    "usr/bin/dpkg-deb",
    "usr/bin/dpkg-query",
    "usr/bin/dpkg-split",
    "usr/bin/dpkg-divert",
    "usr/bin/dpkg-statoverride",
    "usr/bin/dpkg-trigger",
    "usr/bin/dpkg-maintscript-helper",
    "usr/bin/dpkg-realpath",
    "usr/share/dpkg",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "etc/apt",
    "etc/dpkg",
    "var/lib/apt",
    "var/lib/dpkg",
    "var/cache/apt",
    "var/cache/debconf",
    "var/log/apt",
    "etc/hostname",
    "etc/machine-id",
    // Debian's D-Bus keeps a copy; each machine links it to its own (first boot).
    "var/lib/dbus/machine-id",
    "home/core",
    // Every machine makes its own host keys at first boot (sshd-keygen.service).
    "etc/ssh/ssh_host_rsa_key",
    "etc/ssh/ssh_host_rsa_key.pub",
    "etc/ssh/ssh_host_ecdsa_key",
    "etc/ssh/ssh_host_ecdsa_key.pub",
    "etc/ssh/ssh_host_ed25519_key",
    "etc/ssh/ssh_host_ed25519_key.pub",
];

/// Release files: version and channel, as CoreOS had them.
fn write_release(spec: &BuildSpec, tree: &Path, key: &str) -> Result<(), Error> {
    let v = &spec.version;
    let ch = spec.channel.as_str();
    remove(tree, "etc/os-release");
    write_file(
        tree,
        "usr/lib/os-release",
        format!(
            "NAME=\"Ferrite\"\nID=ferrite\nID_LIKE=coreos\nVERSION={v}\nVERSION_ID={v}\nBUILD_ID={key}\nPRETTY_NAME=\"Ferrite {ch} ({v})\"\nHOME_URL=\"https://example.invalid/ferrite\"\n"
        )
        .as_bytes(),
        0o644,
    )?;
    std::os::unix::fs::symlink("../usr/lib/os-release", tree.join("etc/os-release"))
        .map_err(io_err("linking", &tree.join("etc/os-release")))?;
    write_file(
        tree,
        "usr/share/coreos/release",
        format!("COREOS_RELEASE_VERSION={v}\nCOREOS_RELEASE_BOARD=amd64-usr\nCOREOS_RELEASE_APPID={{e96281a6-d1af-4bde-9a0a-97b76e56dc57}}\n").as_bytes(),
        0o644,
    )?;
    write_file(
        tree,
        "usr/share/coreos/update.conf",
        format!("GROUP={ch}\n").as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// Turns a copy of the Debian rootfs into a Ferrite tree.
fn customize(spec: &BuildSpec, tree: &Path, key: &str) -> Result<(), Error> {
    // The core user: uid/gid 500, in sudo, docker and systemd-journal, like CoreOS's.
    run(host_command::command("chroot")
        .arg(tree)
        .args(["groupadd", "-g", "500", "core"]))?;
    run(host_command::command("chroot").arg(tree).args([
        "useradd",
        "-u",
        "500",
        "-g",
        "500",
        "-M",
        "-d",
        "/home/core",
        "-s",
        "/bin/bash",
        "-c",
        "CoreOS Admin",
        "-G",
        "sudo,docker,systemd-journal",
        "core",
    ]))?;
    // Debian's etcdctl moves aside for the wrapper that gives the book's v2 commands.
    let etcdctl = tree.join("usr/bin/etcdctl");
    let aside = tree.join("usr/lib/etcd/etcdctl");
    if etcdctl.is_file() && !etcdctl.is_symlink() && !aside.exists() {
        std::fs::create_dir_all(tree.join("usr/lib/etcd")).map_err(io_err("creating", &aside))?;
        std::fs::rename(&etcdctl, &aside).map_err(io_err("moving", &etcdctl))?;
    }
    for (rel, data, mode) in dist_files() {
        write_file(tree, rel, data, mode)?;
    }
    write_file(
        tree,
        "usr/share/update_engine/update-payload-key.pub.pem",
        spec.payload_key.as_bytes(),
        0o644,
    )?;
    for (name, src) in &spec.binaries {
        let dst = tree.join("usr/bin").join(name);
        std::fs::copy(src, &dst).map_err(io_err("copying", src))?;
        // Debug information is not needed in the image.
        let _ = run(host_command::command("strip")
            .arg("--strip-debug")
            .arg(&dst));
    }
    for (target, unit) in ENABLED {
        let dir = tree.join(format!("usr/lib/systemd/system/{target}.wants"));
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let link = dir.join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("../{unit}"), &link)
            .map_err(io_err("linking", &link))?;
    }
    if spec.failing_check {
        let unit = "ferrite-failing-check.service";
        write_file(
            tree,
            &format!("usr/lib/systemd/system/{unit}"),
            FAILING_CHECK.as_bytes(),
            0o644,
        )?;
        let dir = tree.join("usr/lib/systemd/system/boot-complete.target.requires");
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let link = dir.join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("../{unit}"), &link)
            .map_err(io_err("linking", &link))?;
    }
    for rel in DISABLED {
        remove(tree, &format!("etc/systemd/system/{rel}"));
    }
    write_release(spec, tree, key)?;
    remove_build_tools(tree);
    for rel in STRIPPED {
        remove(tree, rel);
    }
    // Defaults for the stateful /etc and /var live in /usr; first boot copies them.
    let factory = tree.join("usr/share/factory");
    std::fs::create_dir_all(&factory).map_err(io_err("creating", &factory))?;
    for d in ["etc", "var"] {
        run(host_command::command("cp")
            .arg("-a")
            .arg(tree.join(d))
            .arg(factory.join(d)))?;
    }
    Ok(())
}

fn mkfs(
    label: &str,
    image: &Path,
    offset: u64,
    bytes: u64,
    content: Option<&Path>,
    extra: &[&str],
) -> Result<String, Error> {
    let uuid = uuid::Uuid::new_v4().to_string();
    let mut cmd = host_command::command("mkfs.ext4");
    cmd.args(["-F", "-q", "-L", label, "-U", &uuid, "-b", "4096"])
        .args(extra)
        .arg("-E")
        .arg(format!("offset={offset},root_owner=0:0"));
    if let Some(dir) = content {
        cmd.arg("-d").arg(dir);
    }
    cmd.arg(image).arg(format!("{}k", bytes / 1024));
    run(&mut cmd)?;
    Ok(uuid)
}

/// Marks an ext filesystem so the kernel refuses to mount it read-write (CoreOS's USR trick:
/// an unknown read-only-compatible feature bit).
fn make_read_only(image: &Path, offset: u64) -> Result<(), Error> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(io_err("opening", image))?;
    f.seek(SeekFrom::Start(offset + 0x464 + 3))
        .and_then(|_| f.write_all(&[0xff]))
        .and_then(|_| f.sync_all())
        .map_err(io_err("writing", image))
}

fn build_image(spec: &BuildSpec, rootfs: &Path, tmp: &Path, key: &str) -> Result<(), Error> {
    let tree = tmp.join("tree");
    run(host_command::command("cp").arg("-a").arg(rootfs).arg(&tree))?;
    customize(spec, &tree, key)?;
    let image = tmp.join("ferrite.img");
    let disk = Disk::create(&image, &Layout::coreos(USR_SECTORS, ROOT_SECTORS))?;
    let version = kernel_version(&tree)?;
    initramfs::add_first_boot(&tree, &version)?;
    let usr = disk.partition("USR-A")?;
    let usr_uuid = mkfs(
        "USR-A",
        &image,
        usr.offset(),
        usr.bytes(),
        Some(&tree.join("usr")),
        &["-O", "^has_journal,^metadata_csum", "-m", "0"],
    )?;
    make_read_only(&image, usr.offset())?;
    let efi = disk.partition("EFI-SYSTEM")?;
    esp::write(&image, efi.offset(), efi.bytes(), &tree, &version)?;
    let oem = disk.partition("OEM")?;
    let oem_dir = tmp.join("oem");
    write_file(
        &oem_dir,
        "oem-release",
        b"ID=ferrite-nspawn\nVERSION_ID=1\nNAME=\"Ferrite local machines\"\n",
        0o644,
    )?;
    mkfs(
        "OEM",
        &image,
        oem.offset(),
        oem.bytes(),
        Some(&oem_dir),
        &[],
    )?;
    let root = disk.partition("ROOT")?;
    mkfs(
        "ROOT",
        &image,
        root.offset(),
        root.bytes(),
        None,
        &["-E", "lazy_itable_init=1,lazy_journal_init=1"],
    )?;
    let meta = serde_json::json!({
        "version": spec.version,
        "channel": spec.channel.as_str(),
        "key": key,
        "usr_uuid": usr_uuid,
        "kernel": version,
        "boot": "uefi",
        "disk_bytes": std::fs::metadata(&image).map_err(io_err("reading", &image))?.len(),
        "sector": SECTOR,
    });
    atomic_file::write(
        &tmp.join("image.json"),
        format!("{meta:#}\n").as_bytes(),
        &atomic_file::Options::mode(0o644),
    )?;
    std::fs::remove_dir_all(&tree).map_err(io_err("removing", &tree))?;
    std::fs::remove_dir_all(&oem_dir).map_err(io_err("removing", &oem_dir))?;
    Ok(())
}

/// The `image.json` of a built image.
pub fn image_info(image: &Path) -> Option<serde_json::Value> {
    let dir = image.parent()?;
    serde_json::from_slice(&std::fs::read(dir.join("image.json")).ok()?).ok()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_current_and_recent_entries() {
        let d = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - KEEP_SUPERSEDED * 2;
        for name in ["current", "old", "recent", ".old.tmp"] {
            std::fs::create_dir(d.path().join(name)).unwrap();
            std::fs::write(d.path().join(name).join("ferrite.img"), "x").unwrap();
            if name != "recent" {
                std::fs::File::open(d.path().join(name))
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
        }
        prune(d.path(), "current");
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["current", "recent"]);
    }

    #[test]
    fn keys_change_with_inputs() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("b");
        std::fs::write(&bin, "one").unwrap();
        let spec = BuildSpec {
            cache_dir: d.path().into(),
            channel: Channel::Alpha,
            version: "1".into(),
            binaries: vec![("b".into(), bin.clone())],
            mirror: "http://deb.debian.org/debian".into(),
            payload_key: "key one".into(),
            failing_check: false,
        };
        let r = rootfs_key(&spec);
        let a = image_key(&spec, &r).unwrap();
        assert_eq!(a, image_key(&spec, &r).unwrap());
        std::fs::write(&bin, "two").unwrap();
        assert_ne!(a, image_key(&spec, &r).unwrap());
        let beta = BuildSpec {
            channel: Channel::Beta,
            ..spec.clone()
        };
        assert_ne!(image_key(&beta, &r).unwrap(), image_key(&spec, &r).unwrap());
        let other_key = BuildSpec {
            payload_key: "key two".into(),
            ..spec.clone()
        };
        assert_ne!(
            image_key(&other_key, &r).unwrap(),
            image_key(&spec, &r).unwrap()
        );
        let failing = BuildSpec {
            failing_check: true,
            ..spec.clone()
        };
        assert_ne!(
            image_key(&failing, &r).unwrap(),
            image_key(&spec, &r).unwrap()
        );
        let missing = BuildSpec {
            binaries: vec![("x".into(), d.path().join("nope"))],
            ..spec
        };
        assert!(matches!(
            image_key(&missing, &r),
            Err(Error::MissingBinary(_))
        ));
    }

    #[test]
    fn dist_files_are_embedded() {
        let files = dist_files();
        assert!(files
            .iter()
            .any(|(p, d, _)| *p == "usr/lib/systemd/system/etcd2.service" && !d.is_empty()));
        for (p, d, _) in &files {
            if [".service", ".target", ".path", ".mount"]
                .iter()
                .any(|s| p.ends_with(s))
            {
                systemd_unit::UnitFile::parse(std::str::from_utf8(d).unwrap())
                    .unwrap_or_else(|e| panic!("{p}: {e}"));
            }
        }
    }
}

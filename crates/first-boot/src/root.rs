//! ROOT's first boot: the skeleton, the factory defaults of `/etc` and `/var`, `core`'s home
//! and the machine ID.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::{io_err, Error};

/// The `core` user's uid and gid (CoreOS's baselayout).
pub const CORE_ID: u32 = 500;

/// Directories every ROOT has, with their modes.
const SKELETON: &[(&str, u32)] = &[
    ("usr", 0o755),
    ("etc", 0o755),
    ("var", 0o755),
    ("home", 0o755),
    ("root", 0o700),
    ("tmp", 0o1777),
    ("run", 0o755),
    ("srv", 0o755),
    ("opt", 0o755),
    ("mnt", 0o755),
    ("media", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("boot", 0o755),
];

/// The merged-`/usr` links at the top of ROOT.
const LINKS: &[(&str, &str)] = &[
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];

/// systemd's definition of a first boot: ROOT has no machine ID yet (missing, empty or
/// `uninitialized`).
pub fn is_first_boot(root: &Path) -> bool {
    std::fs::read_to_string(root.join("etc/machine-id")).map_or(true, |s| {
        let id = s.trim();
        id.is_empty() || id == "uninitialized"
    })
}

/// The machine ID a virtual machine's SMBIOS system UUID gives (`product_uuid` in
/// `/sys/class/dmi/id`: QEMU's `-uuid`, a cloud instance's ID), as systemd takes it in a
/// VM; `None` for text that is no UUID or a placeholder (all zeros, all ones).
pub fn machine_id_from_product_uuid(text: &str) -> Option<String> {
    let id = uuid::Uuid::try_parse(text.trim()).ok()?;
    (!id.is_nil() && !id.is_max()).then(|| id.simple().to_string())
}

/// What [`setup_root`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// Files, links and directories copied from the factory defaults and `/etc/skel`.
    pub copied: usize,
}

/// Sets up ROOT (mounted on `root`) from the USR mounted on `usr`: see the crate doc.
/// Idempotent, and nothing that exists is replaced; the machine ID is written last, so a
/// setup cut short is a first boot again.
pub fn setup_root(root: &Path, usr: &Path, machine_id: &str) -> Result<Setup, Error> {
    if machine_id.len() != 32
        || !machine_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Error::BadMachineId(machine_id.to_string()));
    }
    for (dir, mode) in SKELETON {
        let path = root.join(dir);
        if path.symlink_metadata().is_err() {
            std::fs::create_dir_all(&path).map_err(io_err("creating", &path))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
                .map_err(io_err("setting the mode of", &path))?;
        }
    }
    for (link, target) in LINKS {
        let path = root.join(link);
        if path.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(target, &path).map_err(io_err("linking", &path))?;
        }
    }
    let factory = usr.join("share/factory");
    let mut copied = 0;
    for d in ["etc", "var"] {
        copied += copy_merge(&factory.join(d), &root.join(d), &|rel| {
            // Each machine's own, written below.
            rel == Path::new("machine-id")
        })?;
    }
    // D-Bus reads its machine ID here first; Debian links it to systemd's.
    let dbus = root.join("var/lib/dbus");
    if dbus.is_dir() && dbus.join("machine-id").symlink_metadata().is_err() {
        std::os::unix::fs::symlink("/etc/machine-id", dbus.join("machine-id"))
            .map_err(io_err("linking", &dbus))?;
    }
    let home = root.join("home/core");
    copied += copy_merge(&root.join("etc/skel"), &home, &|_| false)?;
    if home.is_dir() {
        chown_tree(&home, CORE_ID)?;
    }
    atomic_file::write(
        &root.join("etc/machine-id"),
        format!("{machine_id}\n").as_bytes(),
        &atomic_file::Options::mode(0o444),
    )?;
    Ok(Setup { copied })
}

/// Copies the tree `src` into `dst`, merging directories: an entry that exists at the
/// destination is kept as it is (and not descended into unless both are directories).
/// Modes, owners and symbolic links are kept; device nodes, sockets and FIFOs are skipped.
/// `skip` names paths (relative to `src`) not to copy. Returns how many entries it created.
pub fn copy_merge(src: &Path, dst: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<usize, Error> {
    merge(src, dst, Path::new(""), skip)
}

fn merge(src: &Path, dst: &Path, rel: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<usize, Error> {
    if skip(rel) {
        return Ok(0);
    }
    let meta = match src.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel.as_os_str().is_empty() => {
            return Ok(0)
        }
        Err(e) => return Err(io_err("reading", src)(e)),
    };
    let existing = dst.symlink_metadata().ok();
    let ft = meta.file_type();
    let mut created = 0;
    match existing {
        Some(d) if ft.is_dir() && d.is_dir() => {}
        Some(_) => return Ok(0),
        None if ft.is_dir() => {
            std::fs::create_dir(dst).map_err(io_err("creating", dst))?;
            own(dst, &meta)?;
            created += 1;
        }
        None if ft.is_file() => {
            std::fs::copy(src, dst).map_err(io_err("copying to", dst))?;
            own(dst, &meta)?;
            return Ok(1);
        }
        None if ft.is_symlink() => {
            let target = std::fs::read_link(src).map_err(io_err("reading", src))?;
            std::os::unix::fs::symlink(&target, dst).map_err(io_err("linking", dst))?;
            std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
                .map_err(io_err("changing the owner of", dst))?;
            return Ok(1);
        }
        None => return Ok(0),
    }
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .map_err(io_err("reading", src))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err("reading", src))?;
    entries.sort();
    for name in entries {
        created += merge(&src.join(&name), &dst.join(&name), &rel.join(&name), skip)?;
    }
    Ok(created)
}

/// Gives `path` the owner and mode of `meta` (the mode after the owner: a change of owner
/// clears set-id bits).
fn own(path: &Path, meta: &std::fs::Metadata) -> Result<(), Error> {
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
        .map_err(io_err("changing the owner of", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err("setting the mode of", path))
}

/// `chown -R id:id`, links themselves rather than their targets.
fn chown_tree(path: &Path, id: u32) -> Result<(), Error> {
    let meta = path.symlink_metadata().map_err(io_err("reading", path))?;
    if meta.uid() != id || meta.gid() != id {
        std::os::unix::fs::lchown(path, Some(id), Some(id))
            .map_err(io_err("changing the owner of", path))?;
    }
    if meta.is_dir() {
        for e in std::fs::read_dir(path).map_err(io_err("reading", path))? {
            let e = e.map_err(io_err("reading", path))?;
            chown_tree(&e.path(), id)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn is_root(dir: &Path) -> bool {
        dir.metadata().unwrap().uid() == 0
    }

    /// A USR with factory defaults, and a ROOT on which provisioning already wrote a file
    /// of `/etc` and `core`'s SSH directory (as `ferrite up` does before the first boot).
    fn fixture() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let usr = t.path().join("usr");
        let f = usr.join("share/factory");
        for d in ["etc/skel", "etc/ssh", "var/lib/dbus", "var/log"] {
            std::fs::create_dir_all(f.join(d)).unwrap();
        }
        std::fs::write(f.join("etc/hostname"), "factory\n").unwrap();
        std::fs::write(f.join("etc/environment"), "").unwrap();
        std::fs::write(
            f.join("etc/machine-id"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        std::fs::write(f.join("etc/ssh/sshd_config"), "Port 22\n").unwrap();
        std::fs::set_permissions(
            f.join("etc/ssh/sshd_config"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("../run/resolv.conf", f.join("etc/resolv.conf")).unwrap();
        std::fs::write(f.join("etc/skel/.bashrc"), "# skel\n").unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/environment"),
            "COREOS_PUBLIC_IPV4=10.1.1.1\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("home/core/.ssh")).unwrap();
        (t, usr, root)
    }

    #[test]
    fn a_fresh_root_gets_the_factory_defaults_and_keeps_what_is_there() {
        let (_t, usr, root) = fixture();
        if !is_root(&root) {
            eprintln!("skipped: giving files to core needs root");
            return;
        }
        assert!(is_first_boot(&root));
        let id = "fedcba9876543210fedcba9876543210";
        let setup = setup_root(&root, &usr, id).unwrap();
        assert!(!is_first_boot(&root));
        assert_eq!(
            std::fs::read_to_string(root.join("etc/machine-id")).unwrap(),
            format!("{id}\n"),
            "the machine's own ID, not the factory's"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/environment")).unwrap(),
            "COREOS_PUBLIC_IPV4=10.1.1.1\n",
            "what provisioning wrote wins"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "factory\n"
        );
        let cfg = root.join("etc/ssh/sshd_config").metadata().unwrap();
        assert_eq!(cfg.mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_link(root.join("etc/resolv.conf")).unwrap(),
            Path::new("../run/resolv.conf")
        );
        assert_eq!(
            std::fs::read_link(root.join("var/lib/dbus/machine-id")).unwrap(),
            Path::new("/etc/machine-id")
        );
        assert_eq!(
            std::fs::read_link(root.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert_eq!(root.join("tmp").metadata().unwrap().mode() & 0o7777, 0o1777);
        assert_eq!(
            std::fs::read_to_string(root.join("home/core/.bashrc")).unwrap(),
            "# skel\n"
        );
        let home = root.join("home/core/.ssh").metadata().unwrap();
        assert_eq!((home.uid(), home.gid()), (CORE_ID, CORE_ID));
        // Again (a boot cut short before the machine ID): nothing new, nothing replaced.
        std::fs::remove_file(root.join("etc/machine-id")).unwrap();
        std::fs::write(root.join("etc/hostname"), "mine\n").unwrap();
        let again = setup_root(&root, &usr, id).unwrap();
        assert_eq!(again.copied, 0, "first run copied {}", setup.copied);
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "mine\n"
        );
    }

    #[test]
    fn bad_machine_ids_are_refused_before_anything_is_written() {
        let (_t, usr, root) = fixture();
        for bad in [
            "",
            "uninitialized",
            "FEDCBA9876543210FEDCBA9876543210",
            "0123",
        ] {
            assert!(matches!(
                setup_root(&root, &usr, bad),
                Err(Error::BadMachineId(b)) if b == bad
            ));
        }
        assert!(!root.join("bin").exists());
    }

    #[test]
    fn the_system_uuid_gives_the_machine_id_unless_it_is_a_placeholder() {
        assert_eq!(
            machine_id_from_product_uuid("01234567-89AB-cdef-0123-456789abcdef\n").as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        for bad in [
            "",
            "Not Settable",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
        ] {
            assert_eq!(machine_id_from_product_uuid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn first_boot_is_a_missing_empty_or_uninitialized_machine_id() {
        let t = tempfile::tempdir().unwrap();
        assert!(is_first_boot(t.path()));
        std::fs::create_dir(t.path().join("etc")).unwrap();
        for (text, first) in [
            ("", true),
            ("uninitialized\n", true),
            ("fedcba9876543210fedcba9876543210\n", false),
        ] {
            std::fs::write(t.path().join("etc/machine-id"), text).unwrap();
            assert_eq!(is_first_boot(t.path()), first, "{text:?}");
        }
    }
}

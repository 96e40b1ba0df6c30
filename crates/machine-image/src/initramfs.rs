//! Initramfs archives (newc cpio, uncompressed): the selector's whole initramfs (`esp.rs`)
//! and Ferrite's part of the slot's own initramfs — `ferrite-first-boot` and its unit,
//! appended to the one dracut made. The kernel unpacks concatenated archives in order, each
//! starting on a four-byte boundary, so dracut's archive stays as dracut made it.

use std::collections::BTreeSet;
use std::io::{Cursor, Write as _};
use std::path::{Path, PathBuf};

use crate::{io_err, Error};

/// Reads `rel` inside `tree`, following symbolic links within the tree (an absolute link
/// target is the tree's, not the host's).
pub(crate) fn read_in_tree(tree: &Path, rel: &str) -> Result<Vec<u8>, Error> {
    let mut path = PathBuf::from(rel.trim_start_matches('/'));
    for _ in 0..16 {
        let full = tree.join(&path);
        match std::fs::read_link(&full) {
            Ok(target) => {
                path = if target.is_absolute() {
                    target.strip_prefix("/").unwrap_or(&target).to_path_buf()
                } else {
                    path.parent().unwrap_or(Path::new("")).join(target)
                };
            }
            Err(_) => return std::fs::read(&full).map_err(io_err("reading", &full)),
        }
    }
    let full = tree.join(rel);
    Err(Error::Io {
        op: "following links of",
        path: full,
        source: std::io::Error::other("too many levels of symbolic links"),
    })
}

/// One entry of an archive; the directories above an entry are added before it.
#[derive(Debug)]
pub(crate) enum Item {
    Dir(String),
    File(String, Vec<u8>, u32),
    /// A character device: path, major, minor.
    Char(String, u32, u32),
    /// A symbolic link: path, target.
    Link(String, String),
}

impl Item {
    fn path(&self) -> &str {
        match self {
            Item::Dir(p) | Item::File(p, ..) | Item::Char(p, ..) | Item::Link(p, _) => p,
        }
    }
}

/// `items` as a newc archive; `what` names it in errors.
pub(crate) fn newc(items: &[Item], what: &str) -> Result<Vec<u8>, Error> {
    let cpio_err = |source| Error::Io {
        op: "writing the initramfs",
        path: PathBuf::from(what),
        source,
    };
    let mut out = Cursor::new(Vec::new());
    let mut ino = 1u32;
    let mut put = |name: &str, mode: u32, rdev: (u32, u32), data: &[u8]| -> std::io::Result<()> {
        let mut w = cpio::newc::Builder::new(name)
            .ino(ino)
            .mode(mode)
            .nlink(1)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(&mut out, u32::try_from(data.len()).unwrap_or(u32::MAX));
        ino += 1;
        w.write_all(data)?;
        w.finish().map(drop)
    };
    let mut dirs = BTreeSet::new();
    for item in items {
        let mut above: Vec<&Path> = Path::new(item.path())
            .ancestors()
            .skip(1)
            .filter(|d| !d.as_os_str().is_empty())
            .collect();
        above.reverse();
        for d in above {
            let d = d.display().to_string();
            if dirs.insert(d.clone()) {
                put(&d, 0o40755, (0, 0), &[]).map_err(cpio_err)?;
            }
        }
        match item {
            Item::Dir(d) if dirs.insert(d.clone()) => put(d, 0o40755, (0, 0), &[]),
            Item::Dir(_) => Ok(()),
            Item::Char(p, major, minor) => put(p, 0o20600, (*major, *minor), &[]),
            Item::File(p, data, mode) => put(p, 0o100000 | mode, (0, 0), data),
            Item::Link(p, target) => put(p, 0o120777, (0, 0), target.as_bytes()),
        }
        .map_err(cpio_err)?;
    }
    let out = cpio::newc::trailer(out).map_err(cpio_err)?;
    Ok(out.into_inner())
}

/// The unit that runs `ferrite-first-boot initrd` in the slot's initramfs.
const FIRST_BOOT_UNIT: &[u8] = include_bytes!("../../../dist/initrd/ferrite-first-boot.service");

/// The C library files a Ferrite binary links with (dracut's archive has them too; the
/// tree's own copies make sure).
const LIBS: &[&str] = &["libc.so.6", "libgcc_s.so.1", "libm.so.6"];

/// Ferrite's part of the slot's initramfs: `ferrite-first-boot` (the tree's), its unit,
/// enabled for `initrd.target`.
pub(crate) fn first_boot_archive(tree: &Path) -> Result<Vec<u8>, Error> {
    let mut items = vec![
        Item::File(
            "usr/bin/ferrite-first-boot".into(),
            read_in_tree(tree, "usr/bin/ferrite-first-boot")?,
            0o755,
        ),
        Item::File(
            "usr/lib/systemd/system/ferrite-first-boot.service".into(),
            FIRST_BOOT_UNIT.to_vec(),
            0o644,
        ),
        Item::Link(
            "usr/lib/systemd/system/initrd.target.wants/ferrite-first-boot.service".into(),
            "../ferrite-first-boot.service".into(),
        ),
    ];
    for lib in LIBS {
        let rel = format!("usr/lib/x86_64-linux-gnu/{lib}");
        items.push(Item::File(rel.clone(), read_in_tree(tree, &rel)?, 0o755));
    }
    newc(&items, "ferrite-first-boot.cpio")
}

/// Appends [`first_boot_archive`] to the initramfs of kernel `version` in the tree.
pub(crate) fn add_first_boot(tree: &Path, version: &str) -> Result<(), Error> {
    let path = tree.join(format!("usr/lib/modules/{version}/initramfs.img"));
    let mut data = std::fs::read(&path).map_err(io_err("reading", &path))?;
    // The next archive starts on a four-byte boundary; the kernel skips the zeros.
    data.resize(data.len().next_multiple_of(4), 0);
    data.extend(first_boot_archive(tree)?);
    atomic_file::write(&path, &data, &atomic_file::Options::mode(0o644))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::disallowed_methods)]
pub(crate) mod tests {
    use super::*;

    /// Every entry's name in a newc archive, with its mode (what the kernel unpacks).
    pub(crate) fn entries(mut data: &[u8]) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        loop {
            let r = cpio::newc::Reader::new(data).unwrap();
            let (name, mode) = (r.entry().name().to_string(), r.entry().mode());
            if r.entry().is_trailer() {
                return out;
            }
            out.push((name, mode));
            data = r.finish().unwrap();
        }
    }

    #[test]
    fn directories_come_before_what_they_hold() {
        let items = [
            Item::File("usr/bin/tool".into(), b"x".to_vec(), 0o755),
            Item::Link("usr/lib/a.wants/b".into(), "../b".into()),
            Item::Dir("usr".into()),
            Item::Char("dev/console".into(), 5, 1),
        ];
        let names: Vec<String> = entries(&newc(&items, "t").unwrap())
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "usr",
                "usr/bin",
                "usr/bin/tool",
                "usr/lib",
                "usr/lib/a.wants",
                "usr/lib/a.wants/b",
                "dev",
                "dev/console"
            ]
        );
    }

    #[test]
    fn the_first_boot_archive_follows_dracuts_on_a_four_byte_boundary() {
        let tree = tempfile::tempdir().unwrap();
        let t = tree.path();
        std::fs::create_dir_all(t.join("usr/bin")).unwrap();
        std::fs::write(t.join("usr/bin/ferrite-first-boot"), b"\x7fELF").unwrap();
        std::fs::create_dir_all(t.join("usr/lib/x86_64-linux-gnu")).unwrap();
        for lib in LIBS {
            std::fs::write(t.join("usr/lib/x86_64-linux-gnu").join(lib), b"lib").unwrap();
        }
        let dir = t.join("usr/lib/modules/6.1.0");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("initramfs.img"), b"dracut's, 19 bytes.").unwrap();
        add_first_boot(t, "6.1.0").unwrap();
        let data = std::fs::read(dir.join("initramfs.img")).unwrap();
        assert_eq!(&data[..20], b"dracut's, 19 bytes.\0");
        let names = entries(&data[20..]);
        assert!(names.contains(&("usr/bin/ferrite-first-boot".into(), 0o100755)));
        assert!(names.contains(&(
            "usr/lib/systemd/system/initrd.target.wants/ferrite-first-boot.service".into(),
            0o120777
        )));
    }
}

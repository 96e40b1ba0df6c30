//! EFI-SYSTEM: the disk's own boot path (see the `boot_select` crate for the design).
//!
//! A FAT filesystem written straight into the partition (the `fatfs` crate: no mount, no
//! host tools) holding systemd-boot as the removable-media loader (`EFI/BOOT/BOOTX64.EFI`),
//! its entries — `ferrite` (the default: the selector chooses by the GPT bits) and the
//! recovery entries `coreos-a`/`coreos-b` (that slot, bits untouched) — and the selector:
//! the image's kernel and an initramfs whose init is `ferrite-boot-select`, with the C
//! library it needs and the disk drivers' modules in load order.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::initramfs::{newc, read_in_tree, Item};
use crate::{io_err, Error};

/// Where systemd-boot-efi puts the loader in the tree.
const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The selector's binary in the tree (installed with the other Ferrite binaries).
const SELECTOR: &str = "usr/bin/ferrite-boot-select";

/// The drivers the selector loads to see a disk (virtio, SCSI, SATA, NVMe), with their
/// dependencies; those built into the kernel are skipped.
const DRIVERS: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "nvme",
];

/// The C library files the selector's binary links with, from the tree's
/// `usr/lib/x86_64-linux-gnu`.
const LIBS: &[&str] = &["libc.so.6", "libgcc_s.so.1", "libm.so.6"];

/// The selector kernel's command line (its own: the kernel it starts gets
/// `boot_select::kernel_cmdline`).
const SELECTOR_CMDLINE: &str = "console=ttyS0 panic=10 quiet";

/// The module files (relative to the tree's `usr/`) to load for [`DRIVERS`], dependencies
/// first, from `modules.dep`.
fn modules_in_order(tree: &Path, version: &str) -> Result<Vec<String>, Error> {
    let dep_file = tree.join(format!("usr/lib/modules/{version}/modules.dep"));
    let text = std::fs::read_to_string(&dep_file).map_err(io_err("reading", &dep_file))?;
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        let name = Path::new(module)
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.split('.').next().unwrap_or(n).replace('-', "_"))
            .unwrap_or_default();
        by_name.insert(name, module.to_string());
        deps.insert(
            module.to_string(),
            rest.split_whitespace().map(str::to_string).collect(),
        );
    }
    fn visit(
        m: &str,
        deps: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(m.to_string()) {
            return;
        }
        // modprobe loads the last dependency listed first.
        for d in deps.get(m).into_iter().flatten().rev() {
            visit(d, deps, seen, out);
        }
        out.push(m.to_string());
    }
    let (mut seen, mut out) = (BTreeSet::new(), Vec::new());
    for driver in DRIVERS {
        if let Some(m) = by_name.get(*driver) {
            visit(m, &deps, &mut seen, &mut out);
        }
    }
    if let Some(compressed) = out.iter().find(|m| !m.ends_with(".ko")) {
        return Err(Error::Io {
            op: "adding to the selector",
            path: PathBuf::from(compressed),
            source: std::io::Error::other("compressed modules are not supported"),
        });
    }
    Ok(out)
}

/// The selector's initramfs: an uncompressed newc cpio archive.
pub(crate) fn selector_initramfs(tree: &Path, version: &str) -> Result<Vec<u8>, Error> {
    let mut items = vec![
        Item::Char("dev/console".into(), 5, 1),
        Item::Dir("proc".into()),
        Item::Dir("sys".into()),
        Item::Dir("usr-slot".into()),
        Item::File("init".into(), read_in_tree(tree, SELECTOR)?, 0o755),
        Item::File(
            "lib64/ld-linux-x86-64.so.2".into(),
            read_in_tree(tree, "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")?,
            0o755,
        ),
    ];
    for lib in LIBS {
        items.push(Item::File(
            format!("lib/x86_64-linux-gnu/{lib}"),
            read_in_tree(tree, &format!("usr/lib/x86_64-linux-gnu/{lib}"))?,
            0o755,
        ));
    }
    let mut list = String::new();
    for m in modules_in_order(tree, version)? {
        let rel = format!("lib/modules/{version}/{m}");
        let data = read_in_tree(tree, &format!("usr/{rel}"))?;
        list.push_str(&rel);
        list.push('\n');
        items.push(Item::File(rel, data, 0o644));
    }
    items.push(Item::File(
        "lib/modules/modules.list".into(),
        list.into_bytes(),
        0o644,
    ));
    newc(&items, "select.img")
}

/// systemd-boot's settings and entries: (path on the ESP, text).
fn loader_files() -> Vec<(&'static str, String)> {
    let entry = |title: &str, extra: &str| {
        format!(
            "title {title}\nlinux /ferrite/vmlinuz\ninitrd /ferrite/select.img\noptions {SELECTOR_CMDLINE}{extra}\n"
        )
    };
    vec![
        (
            "loader/loader.conf",
            "default ferrite.conf\ntimeout 0\neditor no\nauto-entries no\nauto-firmware no\n"
                .to_string(),
        ),
        (
            "loader/entries/ferrite.conf",
            entry("Ferrite (USR chosen by the GPT attributes)", ""),
        ),
        (
            "loader/entries/coreos-a.conf",
            entry("Ferrite USR-A (recovery)", " ferrite.slot=USR-A"),
        ),
        (
            "loader/entries/coreos-b.conf",
            entry("Ferrite USR-B (recovery)", " ferrite.slot=USR-B"),
        ),
    ]
}

/// Formats partition `part` of `image` (its byte range) as FAT and writes the boot path
/// into it: systemd-boot, its entries, the selector kernel (the tree's `version`) and
/// initramfs.
pub(crate) fn write(
    image: &Path,
    start: u64,
    bytes: u64,
    tree: &Path,
    version: &str,
) -> Result<(), Error> {
    let loader = read_in_tree(tree, SYSTEMD_BOOT)?;
    let kernel = read_in_tree(tree, &format!("usr/lib/modules/{version}/vmlinuz"))?;
    let initramfs = selector_initramfs(tree, version)?;
    let fat_err = |source| Error::Io {
        op: "writing EFI-SYSTEM in",
        path: image.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(io_err("opening", image))?;
    let mut part = fscommon::StreamSlice::new(file, start, start + bytes).map_err(fat_err)?;
    fatfs::format_volume(
        &mut part,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .volume_label(*b"EFI-SYSTEM "),
    )
    .map_err(fat_err)?;
    let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new()).map_err(fat_err)?;
    let mut files: Vec<(&str, &[u8])> = vec![
        ("EFI/BOOT/BOOTX64.EFI", &loader),
        ("ferrite/vmlinuz", &kernel),
        ("ferrite/select.img", &initramfs),
    ];
    let texts = loader_files();
    files.extend(texts.iter().map(|(p, t)| (*p, t.as_bytes())));
    let root = fs.root_dir();
    for (path, data) in files {
        let mut dir = root.clone();
        let mut parts: Vec<&str> = path.split('/').collect();
        let name = parts.pop().unwrap_or(path);
        for p in parts {
            dir = match dir.open_dir(p) {
                Ok(d) => d,
                Err(_) => dir.create_dir(p).map_err(fat_err)?,
            };
        }
        let mut f = dir.create_file(name).map_err(fat_err)?;
        f.truncate().map_err(fat_err)?;
        f.write_all(data).map_err(fat_err)?;
        f.flush().map_err(fat_err)?;
    }
    drop(root);
    fs.unmount().map_err(fat_err)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn modules_come_after_their_dependencies() {
        let tree = tempfile::tempdir().unwrap();
        let dir = tree.path().join("usr/lib/modules/6.1.0");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("modules.dep"),
            "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
             kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n\
             kernel/drivers/virtio/virtio.ko:\n\
             kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
             kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n",
        )
        .unwrap();
        let order = modules_in_order(tree.path(), "6.1.0").unwrap();
        assert_eq!(
            order,
            vec![
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/block/virtio_blk.ko",
            ]
        );
    }

    #[test]
    fn links_resolve_inside_the_tree() {
        let tree = tempfile::tempdir().unwrap();
        let lib = tree.path().join("usr/lib/x86_64-linux-gnu");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::create_dir_all(tree.path().join("usr/lib64")).unwrap();
        std::fs::write(lib.join("ld.so"), b"tree's").unwrap();
        std::os::unix::fs::symlink(
            "/usr/lib/x86_64-linux-gnu/ld.so",
            tree.path().join("usr/lib64/ld.so"),
        )
        .unwrap();
        std::os::unix::fs::symlink("ld.so", lib.join("ld-link.so")).unwrap();
        assert_eq!(
            read_in_tree(tree.path(), "usr/lib64/ld.so").unwrap(),
            b"tree's"
        );
        assert_eq!(
            read_in_tree(tree.path(), "usr/lib/x86_64-linux-gnu/ld-link.so").unwrap(),
            b"tree's"
        );
    }

    #[test]
    fn the_esp_holds_the_loader_its_entries_and_the_selector() {
        let tree = tempfile::tempdir().unwrap();
        let t = tree.path();
        let put = |rel: &str, data: &[u8]| {
            let p = t.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        };
        put(SYSTEMD_BOOT, b"MZ loader");
        put(SELECTOR, b"\x7fELF selector");
        put("usr/lib/modules/6.1.0/vmlinuz", b"kernel");
        put(
            "usr/lib/modules/6.1.0/modules.dep",
            b"kernel/drivers/block/virtio_blk.ko:\n",
        );
        put(
            "usr/lib/modules/6.1.0/kernel/drivers/block/virtio_blk.ko",
            b"module",
        );
        put("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", b"ld");
        for l in LIBS {
            put(&format!("usr/lib/x86_64-linux-gnu/{l}"), b"lib");
        }
        let img = t.join("esp.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(40 << 20).unwrap();
        drop(f);
        write(&img, 1 << 20, 36 << 20, t, "6.1.0").unwrap();
        let f = std::fs::File::open(&img).unwrap();
        let part = fscommon::StreamSlice::new(f, 1 << 20, 37 << 20).unwrap();
        let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        let read = |p: &str| {
            let mut s = Vec::new();
            std::io::Read::read_to_end(&mut fs.root_dir().open_file(p).unwrap(), &mut s).unwrap();
            s
        };
        assert_eq!(read("EFI/BOOT/BOOTX64.EFI"), b"MZ loader");
        assert_eq!(read("ferrite/vmlinuz"), b"kernel");
        let entry = String::from_utf8(read("loader/entries/coreos-b.conf")).unwrap();
        assert!(entry.contains("options console=ttyS0 panic=10 quiet ferrite.slot=USR-B"));
        let cpio = read("ferrite/select.img");
        let names: Vec<String> = crate::initramfs::tests::entries(&cpio)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for want in [
            "init",
            "dev/console",
            "lib64/ld-linux-x86-64.so.2",
            "lib/x86_64-linux-gnu/libc.so.6",
            "lib/modules/6.1.0/kernel/drivers/block/virtio_blk.ko",
            "lib/modules/modules.list",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
    }
}

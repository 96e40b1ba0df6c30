use super::*;
use coreos_disk::Layout;

fn disk() -> (tempfile::TempDir, Disk) {
    let dir = tempfile::tempdir().unwrap();
    let d = Disk::create(&dir.path().join("disk.img"), &Layout::coreos(4096, 4096)).unwrap();
    (dir, d)
}

#[test]
fn show_prints_cgpt_s_columns_types_uuids_and_attributes() {
    let (_dir, d) = disk();
    let text = show(&d, false).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "       start        size    part  contents");
    assert_eq!(lines[1], "           0           1          PMBR");
    assert_eq!(lines[2], "           1           1          Pri GPT header");
    let usr_a = d.partition("USR-A").unwrap();
    let at = lines
        .iter()
        .position(|l| l.ends_with("Label: \"USR-A\""))
        .unwrap();
    assert_eq!(
        lines[at],
        format!(
            "{:>12}{:>12}       3  Label: \"USR-A\"",
            usr_a.start, usr_a.sectors
        )
    );
    assert_eq!(
        lines[at + 1],
        format!("{}Type: Alias for coreos-rootfs", " ".repeat(34))
    );
    assert_eq!(
        lines[at + 2],
        format!(
            "{}UUID: 7130C94A-213A-4E5A-8E26-6CCE9662F132",
            " ".repeat(34)
        )
    );
    assert_eq!(
        lines[at + 3],
        format!("{}Attr: priority=1 tries=0 successful=1", " ".repeat(34))
    );
    assert!(text.contains("Type: CoreOS auto-resize"), "{text}");
    assert!(
        text.contains("Attr: Legacy BIOS Bootable"),
        "EFI-SYSTEM's bit 2: {text}"
    );
    let total = d.sectors().unwrap();
    assert_eq!(
        lines[lines.len() - 1],
        format!("{:>12}           1          Sec GPT header", total - 1)
    );
    let quick = show(&d, true).unwrap();
    assert!(quick
        .lines()
        .any(|l| l == format!("{:>12}{:>12}       3  USR-A", usr_a.start, usr_a.sectors)));
}

#[test]
fn the_update_lifecycle_in_cgpt_commands() {
    // updates.md §2.5: postinst marks B, GRUB spends its try, then either mark-good or
    // rollback.
    let (_dir, d) = disk();
    let state = |d: &Disk| {
        let p = |n| prio_of(d, n).unwrap();
        let f = |g: GptPrio| (g.priority(), g.tries(), g.successful());
        (f(p(3)), f(p(4)))
    };
    assert_eq!(state(&d), ((1, 0, true), (0, 0, false)));
    // postinst: add -S0 -T1 B; prioritize B.
    add(
        &d,
        4,
        Add {
            successful: Some(false),
            tries: Some(1),
            ..Add::default()
        },
    )
    .unwrap();
    d.prioritize(4, None).unwrap();
    assert_eq!(state(&d), ((1, 0, true), (2, 1, false)));
    // Reboot: B is chosen, its try spent before the kernel runs.
    assert_eq!(next(&d).unwrap().label, "USR-B");
    assert_eq!(state(&d), ((1, 0, true), (2, 0, false)));
    // Failure branch: B never marked good; the next boot takes A.
    assert_eq!(next(&d).unwrap().label, "USR-A");
    // ...then setgoodroot(A): add -S1 -T0 A; prioritize A.
    add(
        &d,
        3,
        Add {
            successful: Some(true),
            tries: Some(0),
            ..Add::default()
        },
    )
    .unwrap();
    d.prioritize(3, None).unwrap();
    assert_eq!(state(&d), ((2, 0, true), (1, 0, false)));
    assert!(add(
        &d,
        3,
        Add {
            priority: Some(16),
            ..Add::default()
        }
    )
    .is_err());
}

#[test]
fn find_names_partitions_as_the_kernel_does() {
    let (dir, d) = disk();
    let usr = find(Path::new("/dev/vda"), &d, parse_type("coreos-usr").unwrap()).unwrap();
    assert_eq!(usr, vec!["/dev/vda3", "/dev/vda4"]);
    let nvme = find(
        Path::new("/dev/nvme0n1"),
        &d,
        parse_type("coreos-resize").unwrap(),
    )
    .unwrap();
    assert_eq!(nvme, vec!["/dev/nvme0n1p9"]);
    assert!(parse_type("nonsense").is_err());
    drop(dir);
}

#[test]
fn repair_mends_a_damaged_primary_header_from_the_backup() {
    use std::io::{Seek, SeekFrom, Write};
    let (_dir, d) = disk();
    let before = show(&d, false).unwrap();
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.path())
            .unwrap();
        f.seek(SeekFrom::Start(512)).unwrap();
        f.write_all(&[0u8; 92]).unwrap();
    }
    // Read from the backup meanwhile, then written back whole.
    assert_eq!(show(&d, false).unwrap(), before);
    d.repair().unwrap();
    let mut f = std::fs::File::open(d.path()).unwrap();
    let mut sig = [0u8; 8];
    f.seek(SeekFrom::Start(512)).unwrap();
    std::io::Read::read_exact(&mut f, &mut sig).unwrap();
    assert_eq!(&sig, b"EFI PART", "the primary header was not rewritten");
    assert_eq!(show(&d, false).unwrap(), before);
}

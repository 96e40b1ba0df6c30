//! `cgpt`: CoreOS's GPT tool for what its update system and users run (see the library).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use coreos_disk::Disk;

#[derive(Debug, Parser)]
#[command(name = "cgpt", about = "GPT partition attributes, as CoreOS's cgpt")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show the partition table.
    Show {
        /// One line per partition: start, size, number, label.
        #[arg(short)]
        q: bool,
        /// Only this partition's line (with -q).
        #[arg(short)]
        i: Option<u32>,
        drive: PathBuf,
    },
    /// Change a partition's attributes.
    Add {
        /// The partition number (default: the one a partition device names).
        #[arg(short)]
        i: Option<u32>,
        /// Priority, 0 to 15.
        #[arg(short = 'P')]
        priority: Option<u8>,
        /// Tries, 0 to 15.
        #[arg(short = 'T')]
        tries: Option<u8>,
        /// Successful, 0 or 1.
        #[arg(short = 'S')]
        successful: Option<u8>,
        /// Legacy BIOS bootable, 0 or 1.
        #[arg(short = 'B')]
        legacy_boot: Option<u8>,
        drive: PathBuf,
    },
    /// Make a USR partition the highest priority, the others below it.
    Prioritize {
        #[arg(short)]
        i: Option<u32>,
        /// The highest priority to give.
        #[arg(short = 'P')]
        max: Option<u8>,
        drive: PathBuf,
    },
    /// List the partitions of a type (coreos-usr, coreos-rootfs, a GUID …).
    Find {
        #[arg(short)]
        t: String,
        drive: PathBuf,
    },
    /// Rewrite both GPT copies from the valid one.
    Repair { drive: PathBuf },
    /// GRUB's gptprio.next: the USR partition to boot (spends a try).
    Next { drive: PathBuf },
}

fn bit(v: Option<u8>, flag: &str) -> Result<Option<bool>> {
    match v {
        None => Ok(None),
        Some(0) => Ok(Some(false)),
        Some(1) => Ok(Some(true)),
        Some(x) => bail!("{flag} must be 0 or 1, not {x}"),
    }
}

/// The disk and partition number a drive argument and `-i` name.
fn target(drive: &Path, i: Option<u32>) -> Result<(Disk, u32)> {
    let (disk, from_node) = cgpt::resolve(drive);
    let number = i
        .or(from_node)
        .with_context(|| format!("{}: which partition? (-i N)", drive.display()))?;
    Ok((Disk::open(&disk), number))
}

fn run(cli: Cli) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match cli.cmd {
        Cmd::Show { q, i, drive } => {
            let (disk, _) = cgpt::resolve(&drive);
            let text = cgpt::show(&Disk::open(&disk), q)?;
            match i {
                Some(n) if q => {
                    for l in text.lines() {
                        if l.split_whitespace().nth(2) == Some(&n.to_string()) {
                            writeln!(out, "{l}")?;
                        }
                    }
                }
                _ => out.write_all(text.as_bytes())?,
            }
        }
        Cmd::Add {
            i,
            priority,
            tries,
            successful,
            legacy_boot,
            drive,
        } => {
            let (disk, n) = target(&drive, i)?;
            let a = cgpt::Add {
                priority,
                tries,
                successful: bit(successful, "-S")?,
                legacy_boot: bit(legacy_boot, "-B")?,
            };
            cgpt::add(&disk, n, a)?;
        }
        Cmd::Prioritize { i, max, drive } => {
            let (disk, n) = target(&drive, i)?;
            if max.is_some_and(|m| m == 0 || m > 15) {
                bail!("-P must be 1 to 15");
            }
            disk.prioritize(n, max)?;
        }
        Cmd::Find { t, drive } => {
            let (disk, _) = cgpt::resolve(&drive);
            for d in cgpt::find(&disk, &Disk::open(&disk), cgpt::parse_type(&t)?)? {
                writeln!(out, "{d}")?;
            }
        }
        Cmd::Repair { drive } => {
            let (disk, _) = cgpt::resolve(&drive);
            Disk::open(&disk).repair()?;
        }
        Cmd::Next { drive } => {
            let (disk, _) = cgpt::resolve(&drive);
            let p = cgpt::next(&Disk::open(&disk))?;
            writeln!(out, "{}", p.guid)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `ferrite-first-boot`: what a Ferrite disk does for itself when it boots (see the
//! `first_boot` crate doc).
//!
//! - `initrd [--sysroot DIR]`: in the initramfs (`ferrite-first-boot.service`), once ROOT
//!   and USR are mounted under `/sysroot`: on a first boot, ROOT set up and a machine ID;
//!   while the disk carries the placeholder GUID, a random one.
//! - `extend-filesystems [MOUNT]`: in the real system on every boot
//!   (`extend-filesystems.service`): ROOT grown to the end of a disk that grew.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use coreos_disk::{Disk, PLACEHOLDER_DISK_GUID};
use first_boot::Extended;

#[derive(Debug, Parser)]
#[command(
    name = "ferrite-first-boot",
    about = "First boot and ROOT growth of a Ferrite disk"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// In the initramfs: set up a fresh ROOT and give the disk its own GUID.
    Initrd {
        /// Where ROOT is mounted, with USR on its `usr`.
        #[arg(long, default_value = "/sysroot")]
        sysroot: PathBuf,
    },
    /// Grow the filesystem mounted on MOUNT, and its partition, to the end of the disk.
    ExtendFilesystems {
        /// The mount point.
        #[arg(default_value = "/")]
        mount: PathBuf,
    },
}

fn initrd(sysroot: &std::path::Path) -> Result<()> {
    let device = first_boot::block_device_of(sysroot)?;
    let disk = Disk::open(&device.disk);
    let placeholder = disk.disk_guid()? == PLACEHOLDER_DISK_GUID;
    if first_boot::is_first_boot(sysroot) {
        let id = std::fs::read_to_string("/sys/class/dmi/id/product_uuid")
            .ok()
            .and_then(|t| first_boot::machine_id_from_product_uuid(&t))
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let setup = first_boot::setup_root(sysroot, &sysroot.join("usr"), &id)
            .with_context(|| format!("setting up ROOT on {}", device.partition.display()))?;
        eprintln!(
            "ferrite-first-boot: ROOT set up from /usr/share/factory ({} entries copied), machine ID {id}",
            setup.copied
        );
    }
    if placeholder {
        let guid = uuid::Uuid::new_v4();
        disk.set_disk_guid(guid)?;
        eprintln!(
            "ferrite-first-boot: {} has its own disk GUID {guid}",
            device.disk.display()
        );
    }
    Ok(())
}

fn extend(mount: &std::path::Path) -> Result<()> {
    match first_boot::extend(mount)? {
        Extended::ReadOnly => eprintln!("{}: read-only, left as it is", mount.display()),
        Extended::NotResizable(d) => eprintln!(
            "{}: {} is not a coreos-resize partition, left as it is",
            mount.display(),
            d.partition.display()
        ),
        Extended::Unchanged(d) => {
            eprintln!(
                "{}: {} fills its disk",
                mount.display(),
                d.partition.display()
            );
        }
        Extended::Grown {
            device,
            partition_sectors,
            filesystem: (before, after),
        } => {
            if let Some(s) = partition_sectors {
                eprintln!(
                    "{}: partition {} grown to {s} sectors",
                    device.disk.display(),
                    device.number
                );
            }
            eprintln!(
                "{}: filesystem on {} grown from {} to {} MiB",
                mount.display(),
                device.partition.display(),
                before >> 20,
                after >> 20
            );
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Initrd { sysroot } => initrd(sysroot),
        Command::ExtendFilesystems { mount } => extend(mount),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "ferrite-first-boot: {}",
                host_command::error_chain(e.as_ref())
            );
            std::process::ExitCode::FAILURE
        }
    }
}

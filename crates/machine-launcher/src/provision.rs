//! What a machine's disk gets before its first boot: the disk itself (a sparse copy of the
//! image), for nspawn machines what a QEMU machine's initramfs does itself on a fresh ROOT
//! (`first_boot::setup_root`), coreos-vagrant's provisioning (the addresses in
//! `/etc/environment`, the user-data), and the cluster's SSH key.

use std::path::Path;

use crate::host::Host;
use crate::state::MachineState;
use crate::{io_err, Error, CLUSTER_KEY, CORE_ID};

/// Copies the image to a machine's disk (sparse) if it has none, in this process (a copy
/// by a child process would outlive a launcher killed part-way and write on after
/// `destroy`). A `thin` disk (nspawn machines) leaves its USR partitions as holes: a USR
/// partition never written is the image's, read from the image file (see
/// [`usr_source`]), so a machine costs its ROOT's megabytes, not the image's hundreds,
/// until an update writes a slot of its own.
pub(crate) fn ensure_disk(image: &Path, disk: &Path, thin: bool) -> Result<(), Error> {
    if disk.is_file() {
        return Ok(());
    }
    let tmp = disk.with_extension("img.tmp");
    let skip: Vec<(u64, u64)> = if thin {
        coreos_disk::Disk::open(image)
            .partitions()?
            .iter()
            .filter(|p| p.label.starts_with("USR-"))
            .map(|p| (p.offset(), p.offset() + p.bytes()))
            .collect()
    } else {
        Vec::new()
    };
    coreos_disk::copy_sparse_except(image, &tmp, &skip)?;
    std::fs::rename(&tmp, disk).map_err(io_err("renaming", disk))
}

/// Where a machine's USR partition `p` is read from: the image file while the machine's
/// own disk never wrote that partition (a thin disk's hole), else the machine's disk.
pub(crate) fn usr_source(
    image: &Path,
    disk: &Path,
    p: &coreos_disk::Partition,
) -> Result<std::path::PathBuf, Error> {
    let written = coreos_disk::has_data(disk, p.offset(), p.offset() + p.bytes())?;
    Ok(if written {
        disk.to_path_buf()
    } else {
        image.to_path_buf()
    })
}

/// The cluster's SSH key pair, `<cluster>/ssh/id_ed25519`: made once, with `ssh-keygen`.
pub(crate) fn ensure_cluster_key(
    host: &dyn Host,
    cluster_dir: &Path,
    name: &str,
) -> Result<(), Error> {
    let dir = cluster_dir.join("ssh");
    let key = dir.join(CLUSTER_KEY);
    if key.is_file() && key.with_extension("pub").is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    // Made under a temporary name and renamed, so a half-made pair is never used.
    let tmp = dir.join(format!(".{CLUSTER_KEY}.tmp"));
    let tmp_pub = dir.join(format!(".{CLUSTER_KEY}.tmp.pub"));
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_file(&tmp_pub);
    host.run(
        host_command::command("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("ferrite-cluster-{name}"))
            .arg("-f")
            .arg(&tmp),
    )?;
    std::fs::rename(&tmp_pub, key.with_extension("pub")).map_err(io_err("renaming", &tmp_pub))?;
    std::fs::rename(&tmp, &key).map_err(io_err("renaming", &tmp))
}

/// The cluster key as the Vagrant OEM's insecure key was: `core` accepts it on every
/// machine (an `update-ssh-keys` fragment named `ferrite`), and every machine holds it as
/// `core`'s identity, so `fleetctl ssh`/`status`/`journal` reach the other machines.
pub(crate) fn install_cluster_key(root: &Path, cluster_dir: &Path) -> Result<(), Error> {
    let src = cluster_dir.join("ssh").join(CLUSTER_KEY);
    let private = std::fs::read(&src).map_err(io_err("reading", &src))?;
    let public_path = src.with_extension("pub");
    let public = std::fs::read_to_string(&public_path).map_err(io_err("reading", &public_path))?;
    let home = root.join("home/core");
    let ssh = home.join(".ssh");
    let opts = |mode| atomic_file::Options {
        mode,
        uid: Some(CORE_ID),
        gid: Some(CORE_ID),
    };
    for dir in [ssh.clone(), ssh.join("authorized_keys.d")] {
        atomic_file::create_dirs(&dir)?;
        std::os::unix::fs::chown(&dir, Some(CORE_ID), Some(CORE_ID))
            .map_err(io_err("changing the owner of", &dir))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io_err("setting mode of", &dir))?;
    }
    let mut files = vec![
        (ssh.join(CLUSTER_KEY), private, 0o600),
        (
            ssh.join(format!("{CLUSTER_KEY}.pub")),
            public.clone().into_bytes(),
            0o644,
        ),
    ];
    let fragment = ssh.join("authorized_keys.d").join("ferrite");
    if std::fs::read_to_string(&fragment)
        .ok()
        .as_deref()
        .map(str::trim)
        != Some(public.trim())
    {
        files.extend(
            cloud_config::accounts::ssh_key_files(&home, "ferrite", &[public])
                .into_iter()
                .map(|(p, data)| (p, data, 0o600)),
        );
    }
    for (path, data, mode) in files {
        atomic_file::write(&path, &data, &opts(mode))?;
    }
    Ok(())
}

/// What a QEMU machine's initramfs does on its first boot (`first_boot::setup_root`), done
/// from the host for an nspawn machine, which boots without one: the skeleton, `/etc` and
/// `/var` from the USR's factory defaults, `core`'s home, the launcher's machine ID.
pub(crate) fn setup_root(root: &Path, usr: &Path, m: &MachineState) -> Result<(), Error> {
    if first_boot::is_first_boot(root) {
        first_boot::setup_root(root, usr, &m.machine_id).map_err(|e| Error::FirstBoot {
            root: root.to_path_buf(),
            source: e,
        })?;
    }
    Ok(())
}

/// coreos-vagrant's provisioning, before the machine boots: its addresses in
/// `/etc/environment` and the user-data where `user-cloudinit@.path` looks for it. On a
/// ROOT that has not booted yet these are the first files; the first boot keeps them.
pub(crate) fn provision(root: &Path, m: &MachineState, user_data: &Path) -> Result<(), Error> {
    // coreos-vagrant's provisioning: the addresses, then the user-data.
    let env_path = root.join("etc/environment");
    let old = std::fs::read(&env_path).unwrap_or_default();
    let vars = [
        ("COREOS_PUBLIC_IPV4", m.ip.as_str()),
        ("COREOS_PRIVATE_IPV4", m.ip.as_str()),
    ];
    if let Some(new) = cloud_config::files::merge_environment(&old, &vars) {
        // A QEMU machine's ROOT has no `/etc` before its first boot.
        atomic_file::create_dirs(&root.join("etc"))?;
        atomic_file::write(&env_path, &new, &atomic_file::Options::mode(0o644))?;
    }
    let dst = root.join("var/lib/coreos-vagrant/vagrantfile-user-data");
    atomic_file::create_dirs(dst.parent().unwrap_or(root))?;
    let data = std::fs::read(user_data).map_err(io_err("reading", user_data))?;
    Ok(atomic_file::write(
        &dst,
        &data,
        &atomic_file::Options::mode(0o600),
    )?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::disallowed_methods)]
mod tests {
    use super::*;

    /// A QEMU machine's ROOT is empty when the launcher provisions it: the provisioning
    /// makes the directories it writes into.
    #[test]
    fn provisioning_an_empty_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let user_data = t.path().join("user-data");
        std::fs::write(&user_data, "#cloud-config\n").unwrap();
        let m = MachineState::example(1, crate::Driver::Qemu);
        provision(&root, &m, &user_data).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/environment")).unwrap(),
            "COREOS_PUBLIC_IPV4=172.20.7.101\nCOREOS_PRIVATE_IPV4=172.20.7.101\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("var/lib/coreos-vagrant/vagrantfile-user-data"))
                .unwrap(),
            "#cloud-config\n"
        );
        // Again (`up` after `halt`): the same files.
        provision(&root, &m, &user_data).unwrap();
    }
}

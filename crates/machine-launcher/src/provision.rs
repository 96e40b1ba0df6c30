//! What a machine's disk gets before its first boot: the disk itself (a sparse copy of the
//! image), what CoreOS's initramfs and tmpfiles did on a fresh ROOT (skeleton, `/etc` and
//! `/var` from `/usr/share/factory`, machine ID), coreos-vagrant's provisioning (the
//! addresses in `/etc/environment`, the user-data), and the cluster's SSH key.

use std::path::Path;

use crate::host::Host;
use crate::state::MachineState;
use crate::{io_err, Error, CLUSTER_KEY, CORE_ID};

/// Copies the image to a machine's disk (sparse) if it has none.
pub(crate) fn ensure_disk(host: &dyn Host, image: &Path, disk: &Path) -> Result<(), Error> {
    if disk.is_file() {
        return Ok(());
    }
    let tmp = disk.with_extension("img.tmp");
    host.run(
        host_command::command("cp")
            .arg("--sparse=always")
            .arg(image)
            .arg(&tmp),
    )?;
    std::fs::rename(&tmp, disk).map_err(io_err("renaming", disk))
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

/// The initramfs's and tmpfiles' work on a fresh ROOT, and the Vagrant provisioning.
pub(crate) fn first_boot(
    host: &dyn Host,
    root: &Path,
    usr: &Path,
    m: &MachineState,
    user_data: &Path,
) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    if !root.join("etc").is_dir() {
        for d in [
            "usr", "var", "home", "root", "tmp", "run", "srv", "opt", "mnt", "media", "proc",
            "sys", "dev", "boot",
        ] {
            std::fs::create_dir_all(root.join(d)).map_err(io_err("creating", &root.join(d)))?;
        }
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .map_err(io_err("setting mode of", &root.join("tmp")))?;
        std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting mode of", &root.join("root")))?;
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            let l = root.join(link);
            if l.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(target, &l).map_err(io_err("linking", &l))?;
            }
        }
        for d in ["etc", "var"] {
            host.run(
                host_command::command("cp")
                    .arg("-a")
                    .arg(usr.join("share/factory").join(d))
                    .arg(root),
            )?;
        }
        atomic_file::write(
            &root.join("etc/machine-id"),
            format!("{}\n", m.machine_id).as_bytes(),
            &atomic_file::Options::mode(0o444),
        )?;
        let home = root.join("home/core");
        host.run(
            host_command::command("cp")
                .arg("-a")
                .arg(root.join("etc/skel"))
                .arg(&home),
        )?;
        host.run(
            host_command::command("chown")
                .args(["-R", "500:500"])
                .arg(&home),
        )?;
    }
    // coreos-vagrant's provisioning: the addresses, then the user-data.
    let env_path = root.join("etc/environment");
    let old = std::fs::read(&env_path).unwrap_or_default();
    let vars = [
        ("COREOS_PUBLIC_IPV4", m.ip.as_str()),
        ("COREOS_PRIVATE_IPV4", m.ip.as_str()),
    ];
    if let Some(new) = cloud_config::files::merge_environment(&old, &vars) {
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

//! Users, groups and SSH keys under a root directory: `/etc/passwd` and `/etc/group`
//! lookups, `chown`-style owner strings, `useradd` arguments, and `update-ssh-keys`.

use std::path::{Path, PathBuf};

use crate::config::User;

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    /// Login name.
    pub name: String,
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// The accounts database of a root directory.
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    users: Vec<Passwd>,
    groups: Vec<(String, u32)>,
}

impl Accounts {
    /// Reads `root/etc/passwd` and `root/etc/group` (missing files are empty).
    pub fn load(root: &Path) -> Self {
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
        let users = read("etc/passwd")
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some(Passwd {
                    name: f.first()?.to_string(),
                    uid: f.get(2)?.parse().ok()?,
                    gid: f.get(3)?.parse().ok()?,
                    home: f.get(5).unwrap_or(&"").to_string(),
                })
            })
            .collect();
        let groups = read("etc/group")
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
            })
            .collect();
        Self { users, groups }
    }

    /// The entry for `name`.
    pub fn user(&self, name: &str) -> Option<&Passwd> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The ID of group `name`.
    pub fn group(&self, name: &str) -> Option<u32> {
        self.groups.iter().find(|(n, _)| n == name).map(|(_, g)| *g)
    }

    /// Resolves a `chown` owner string (`user`, `user:group`, `user:`, `:group`, numeric
    /// IDs) to (uid, gid); `None` where that part is not given.
    pub fn resolve_owner(&self, owner: &str) -> Result<(Option<u32>, Option<u32>), String> {
        let (user, group) = match owner.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (owner, None),
        };
        let uid = match user {
            "" => None,
            u => Some(match u.parse::<u32>() {
                Ok(n) => n,
                Err(_) => self
                    .user(u)
                    .map(|p| p.uid)
                    .ok_or_else(|| format!("no user {u:?}"))?,
            }),
        };
        let gid = match group {
            None => None,
            // `user:` means the user's login group.
            Some("") => match user {
                "" => None,
                u => Some(
                    self.user(u)
                        .map(|p| p.gid)
                        .ok_or_else(|| format!("no user {u:?}"))?,
                ),
            },
            Some(g) => Some(match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => self.group(g).ok_or_else(|| format!("no group {g:?}"))?,
            }),
        };
        Ok((uid, gid))
    }

    /// Whether `owner` names only users and groups that exist or that `users` will create.
    pub fn owner_is_known(&self, owner: &str, users: &[User]) -> Result<(), String> {
        let (user, group) = owner.split_once(':').unwrap_or((owner, ""));
        let will_create = |n: &str| users.iter().any(|u| u.name == n);
        let user_ok = user.is_empty()
            || user.parse::<u32>().is_ok()
            || self.user(user).is_some()
            || will_create(user);
        if !user_ok {
            return Err(format!("no user {user:?}"));
        }
        let group_ok = group.is_empty()
            || group.parse::<u32>().is_ok()
            || self.group(group).is_some()
            || users.iter().any(|u| {
                (u.name == group && !u.no_user_group) || u.groups.iter().any(|g| g == group)
            });
        if !group_ok {
            return Err(format!("no group {group:?}"));
        }
        Ok(())
    }
}

/// The `useradd` arguments for a new user, in coreos-cloudinit's order (the name last).
/// Unlike coreos-cloudinit, the GECOS comment is passed as it is, not wrapped in quotes.
pub fn useradd_args(u: &User) -> Vec<String> {
    let mut a = Vec::new();
    a.push("--password".to_string());
    a.push(if u.passwd.is_empty() {
        "*".to_string()
    } else {
        u.passwd.clone()
    });
    if !u.gecos.is_empty() {
        a.extend(["--comment".to_string(), u.gecos.clone()]);
    }
    if !u.homedir.is_empty() {
        a.extend(["--home-dir".to_string(), u.homedir.clone()]);
    }
    a.push(
        if u.no_create_home {
            "--no-create-home"
        } else {
            "--create-home"
        }
        .to_string(),
    );
    if !u.primary_group.is_empty() {
        a.extend(["--gid".to_string(), u.primary_group.clone()]);
    }
    if !u.groups.is_empty() {
        a.extend(["--groups".to_string(), u.groups.join(",")]);
    }
    if u.no_user_group {
        a.push("--no-user-group".to_string());
    }
    if u.system {
        a.push("--system".to_string());
    }
    if u.no_log_init {
        a.push("--no-log-init".to_string());
    }
    if !u.shell.is_empty() {
        a.extend(["--shell".to_string(), u.shell.clone()]);
    }
    a.push(u.name.clone());
    a
}

/// The files `update-ssh-keys -u USER -a NAME` leaves: `(path, content)` pairs under
/// `root`, given the current state of the user's `.ssh` directory.
///
/// `~/.ssh/authorized_keys.d/NAME` gets the keys (trimmed, one per line); on first use an
/// existing `~/.ssh/authorized_keys` is kept as `authorized_keys.d/old_authorized_keys`; then
/// `~/.ssh/authorized_keys` is regenerated from every file in `authorized_keys.d`, by name.
pub fn ssh_key_files(home: &Path, name: &str, keys: &[String]) -> Vec<(PathBuf, Vec<u8>)> {
    let ssh = home.join(".ssh");
    let dir = ssh.join("authorized_keys.d");
    let mut sets: Vec<(String, Vec<u8>)> = Vec::new();
    let mut out = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let fname = e.file_name().to_string_lossy().into_owned();
                if fname.starts_with('.') {
                    continue;
                }
                if let Ok(data) = std::fs::read(e.path()) {
                    sets.push((fname, data));
                }
            }
        }
        Err(_) => {
            if let Ok(old) = std::fs::read(ssh.join("authorized_keys")) {
                out.push((dir.join("old_authorized_keys"), old.clone()));
                sets.push(("old_authorized_keys".to_string(), old));
            }
        }
    }
    let mut mine: String = keys
        .iter()
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    mine.push('\n');
    sets.retain(|(n, _)| n != name);
    sets.push((name.to_string(), mine.clone().into_bytes()));
    sets.sort();
    out.push((dir.join(name), mine.into_bytes()));
    let mut combined = b"# auto-generated by update-ssh-keys\n".to_vec();
    for (_, data) in &sets {
        combined.extend_from_slice(data);
        if !data.ends_with(b"\n") {
            combined.push(b'\n');
        }
    }
    out.push((ssh.join("authorized_keys"), combined));
    out
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("etc")).unwrap();
        std::fs::write(
            tmp.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\ncore:x:500:500:CoreOS Admin:/home/core:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(
            tmp.path().join("etc/group"),
            "root:x:0:\ncore:x:500:\ndocker:x:233:core\n",
        )
        .unwrap();
        let a = Accounts::load(tmp.path());
        assert_eq!(a.resolve_owner("core"), Ok((Some(500), None)));
        assert_eq!(a.resolve_owner("core:docker"), Ok((Some(500), Some(233))));
        assert_eq!(a.resolve_owner("core:"), Ok((Some(500), Some(500))));
        assert_eq!(a.resolve_owner(":docker"), Ok((None, Some(233))));
        assert_eq!(a.resolve_owner("1000:1000"), Ok((Some(1000), Some(1000))));
        assert!(a.resolve_owner("nobody").is_err());
        let new = User {
            name: "web".into(),
            ..Default::default()
        };
        assert!(a
            .owner_is_known("web:web", std::slice::from_ref(&new))
            .is_ok());
        assert!(a.owner_is_known("web:nogroup", &[new]).is_err());
    }

    #[test]
    fn useradd_order() {
        let u = User {
            name: "elroy".into(),
            passwd: "$6$5s2u6/jR$un0AvWnqilcgaNB3Mkxd5yYv6mTlWfOoCYHZmfi3LDKVltj.E8XNKEcwWm".into(),
            gecos: "Elroy Jetson".into(),
            groups: vec!["sudo".into(), "docker".into()],
            ..Default::default()
        };
        assert_eq!(
            useradd_args(&u),
            vec![
                "--password",
                &u.passwd,
                "--comment",
                "Elroy Jetson",
                "--create-home",
                "--groups",
                "sudo,docker",
                "elroy"
            ]
        );
    }

    #[test]
    fn ssh_keys_first_use_keeps_old() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path();
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::write(home.join(".ssh/authorized_keys"), "ssh-rsa OLD\n").unwrap();
        let files = ssh_key_files(
            home,
            "coreos-cloudinit",
            &[" ssh-rsa AAA ".into(), "ssh-ed25519 BBB".into()],
        );
        let get = |p: &str| {
            files
                .iter()
                .find(|(f, _)| f.ends_with(p))
                .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        };
        assert_eq!(
            get("authorized_keys.d/old_authorized_keys").unwrap(),
            "ssh-rsa OLD\n"
        );
        assert_eq!(
            get("authorized_keys.d/coreos-cloudinit").unwrap(),
            "ssh-rsa AAA\nssh-ed25519 BBB\n"
        );
        assert_eq!(
            get(".ssh/authorized_keys").unwrap(),
            "# auto-generated by update-ssh-keys\nssh-rsa AAA\nssh-ed25519 BBB\nssh-rsa OLD\n"
        );
    }
}

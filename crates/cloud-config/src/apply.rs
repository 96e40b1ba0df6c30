//! Applying a cloud-config: first a [`Plan`] (pure: reads what is on disk, writes nothing),
//! then [`execute`], which stages every file before changing anything.
//!
//! The plan follows coreos-cloudinit v1.8.1's order exactly: hostname, users and their keys,
//! `core`'s keys, `write_files` then the generated files (`/etc/oem-release`,
//! `/etc/coreos/update.conf`, `/etc/hosts`, `/run/flannel/options.env`), the
//! `/etc/environment` merge, then the units — the config's own, then the generated ones for
//! etcd, etcd2, fleet and locksmithd, then those implied by `coreos.update` — each unit file,
//! drop-ins, mask or unmask and enable in turn, one daemon-reload if a file was written, the
//! networkd restart if a network unit was listed, and the jobs in list order.
//!
//! All or nothing: everything that can be wrong with the input (bad permissions, content
//! that does not decode, an invalid reboot strategy, `manage_etc_hosts` other than
//! `localhost`, an unknown unit command, an owner that does not exist) is found while
//! planning, before anything is touched; then every file is written to a temporary file
//! beside its target, and only when all of them are ready are they renamed into place.
//! Execution itself is not transactional: host name, users, SSH keys, masks and jobs are
//! applied in order, and a failure there leaves the earlier ones applied (see
//! docs/cloud-config.md).

use std::fmt;
use std::path::{Path, PathBuf};

use systemd_client::{JobKind, Systemd};

use crate::accounts::{self, Accounts};
use crate::config::{CloudConfig, DropIn, Unit};
use crate::files;
use crate::schema;
use crate::substitute::Addresses;
use crate::validate::{decode_content, value_is_valid};

/// Why a config cannot be applied. Each names the file, unit or key involved.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// `manage_etc_hosts` other than `localhost`.
    #[error("Invalid option to manage_etc_hosts: {0:?} (only \"localhost\" is supported)")]
    ManageEtcHosts(String),
    /// An invalid `coreos.update` value.
    #[error("invalid value {value:?} for option {option:?} (valid options: {pattern:?})")]
    UpdateOption {
        /// `RebootStrategy`
        option: &'static str,
        /// The value given.
        value: String,
        /// The allowed values.
        pattern: &'static str,
    },
    /// Permissions that are not an octal mode.
    #[error("{path}: Unable to parse file permissions {value:?} as integer")]
    Permissions {
        /// The file.
        path: String,
        /// The value given.
        value: String,
    },
    /// Content that does not decode with its encoding.
    #[error("Unable to decode {path} ({reason})")]
    Decode {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// A unit `command` that is not a job.
    #[error("Unsupported systemd command {command:?} for unit {unit}")]
    Command {
        /// The unit.
        unit: String,
        /// The command given.
        command: String,
    },
    /// An owner that names no existing (or to-be-created) user or group.
    #[error("owner {owner:?} of {path}: {reason}")]
    Owner {
        /// The file.
        path: String,
        /// The owner string.
        owner: String,
        /// What is missing.
        reason: String,
    },
    /// A file operation failed.
    #[error(transparent)]
    File(#[from] atomic_file::Error),
    /// Another filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A write whose path goes through a symbolic link that leads out of the root.
    #[error("{path}: {} is a symbolic link that leads outside the root", link.display())]
    OutsideRoot {
        /// The path on the target.
        path: String,
        /// The link, on the host.
        link: PathBuf,
    },
    /// A host command (hostnamectl, useradd, chpasswd) failed.
    #[error("{0}")]
    Host(String),
    /// systemd refused a call.
    #[error(transparent)]
    Systemd(#[from] systemd_client::Error),
    /// systemd refused several unit jobs (the others ran).
    #[error("systemd refused {0} unit jobs: {1}")]
    Jobs(usize, String),
}

/// What a file write is, for the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// A `write_files` entry or a generated file.
    File,
    /// A unit file.
    Unit,
    /// A unit drop-in.
    DropIn,
    /// An SSH key file.
    Key,
}

/// One step of applying a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `hostnamectl set-hostname NAME`.
    Hostname(String),
    /// `useradd ARGS` (the name is the last argument).
    CreateUser(Vec<String>),
    /// `chpasswd -e` for a user.
    SetPassword {
        /// The user.
        user: String,
        /// The password hash.
        hash: String,
    },
    /// `update-ssh-keys -u USER -a NAME` with the keys on stdin (performed natively).
    AuthorizeKeys {
        /// The user.
        user: String,
        /// The key set name.
        name: String,
        /// The keys.
        keys: Vec<String>,
    },
    /// Write a file atomically.
    Write {
        /// What it is.
        kind: WriteKind,
        /// Absolute path on the target system.
        path: String,
        /// The bytes.
        content: Vec<u8>,
        /// The mode.
        mode: u32,
        /// A `chown` owner string, or empty.
        owner: String,
    },
    /// Merge `COREOS_*` into `/etc/environment`; `None` when it already has them.
    MergeEnvironment(Option<Vec<u8>>),
    /// Link a unit path to `/dev/null`.
    Mask(String),
    /// Remove a runtime mask (an empty file or a link to a character device).
    EnsureUnmasked(String),
    /// `EnableUnitFiles`.
    Enable {
        /// The unit.
        unit: String,
        /// Into `/run`.
        runtime: bool,
    },
    /// daemon-reload.
    Reload,
    /// A job, waited for.
    Job {
        /// Which.
        kind: JobKind,
        /// The unit.
        unit: String,
    },
    /// Run a `#!` script as a transient service.
    RunScript {
        /// The transient unit's name.
        unit: String,
        /// The script's absolute path on the target.
        path: String,
    },
}

impl fmt::Display for Step {
    /// The trace line, in the form of coreos-cloudinit's apply traces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Hostname(h) => write!(f, "hostnamectl set-hostname {h}"),
            Step::CreateUser(args) => write!(f, "useradd {}", args.join(" ")),
            Step::SetPassword { user, .. } => write!(f, "chpasswd -e ({user})"),
            Step::AuthorizeKeys { user, name, keys } => write!(
                f,
                "update-ssh-keys -u {user} -a {name}  ({} keys on stdin)",
                keys.len()
            ),
            Step::Write {
                kind, path, owner, ..
            } => {
                let verb = match kind {
                    WriteKind::File => "write",
                    WriteKind::Unit => "place-unit",
                    WriteKind::DropIn => "place-dropin",
                    WriteKind::Key => "write-key",
                };
                write!(f, "{verb} {path}")?;
                if !owner.is_empty() {
                    write!(f, " (owner {owner})")?;
                }
                Ok(())
            }
            Step::MergeEnvironment(_) => f.write_str("merge /etc/environment"),
            Step::Mask(p) => write!(f, "mask {p} -> /dev/null"),
            Step::EnsureUnmasked(p) => write!(f, "ensure-unmasked {p}"),
            Step::Enable { unit, runtime } => write!(
                f,
                "dbus EnableUnitFiles([{unit}], runtime={runtime}, force=true)"
            ),
            Step::Reload => f.write_str("dbus Reload (daemon-reload)"),
            Step::Job { kind, unit } => write!(f, "dbus {kind} {unit} mode=replace"),
            Step::RunScript { unit, path } => {
                write!(
                    f,
                    "dbus StartTransientUnit {unit} ExecStart=/bin/bash {path}"
                )
            }
        }
    }
}

/// The steps of one apply, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The steps.
    pub steps: Vec<Step>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            writeln!(f, "{s}")?;
        }
        Ok(())
    }
}

/// What planning needs to know about the target system.
#[derive(Debug, Clone)]
pub struct Context {
    /// The target's root directory (`/` on a real machine).
    pub root: PathBuf,
    /// Substitution values, also merged into `/etc/environment`.
    pub addresses: Addresses,
    /// The key set name for `update-ssh-keys` (`coreos-cloudinit`).
    pub ssh_key_name: String,
    /// Extra keys for `core` (from the datasource's metadata).
    pub metadata_keys: Vec<String>,
    /// The host name the machine has now (used for `/etc/hosts` if the config sets none).
    pub current_hostname: String,
    /// coreos-cloudinit's workspace (`/var/lib/coreos-cloudinit`), for scripts.
    pub workspace: String,
}

impl Context {
    /// Defaults for `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            addresses: Addresses::default(),
            ssh_key_name: "coreos-cloudinit".to_string(),
            metadata_keys: Vec::new(),
            current_hostname: String::new(),
            workspace: "/var/lib/coreos-cloudinit".to_string(),
        }
    }

    /// `path` (absolute on the target) under the root.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// `path` under the root, for a write: refused if a symbolic link on the way leads out
    /// of the root (with `-root DIR`, a link inside DIR must not let a write land outside).
    pub fn write_path(&self, path: &str) -> Result<PathBuf, ApplyError> {
        let target = self.host_path(path);
        let Ok(root) = std::fs::canonicalize(&self.root) else {
            return Ok(target);
        };
        let mut at = self.root.clone();
        for part in std::path::Path::new(path.trim_start_matches('/')).components() {
            at.push(part);
            let is_link = std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink());
            if !is_link {
                continue;
            }
            // A dangling link would be created through: refuse it as well.
            let inside = std::fs::canonicalize(&at).is_ok_and(|real| real.starts_with(&root));
            if !inside {
                return Err(ApplyError::OutsideRoot {
                    path: path.to_string(),
                    link: at,
                });
            }
        }
        Ok(target)
    }
}

/// The file mode a `permissions` value gives: empty → 0644, else base-8.
pub fn parse_permissions(path: &str, value: &str) -> Result<u32, ApplyError> {
    if value.is_empty() {
        return Ok(0o644);
    }
    u32::from_str_radix(value, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| ApplyError::Permissions {
            path: path.to_string(),
            value: value.to_string(),
        })
}

fn is_network_unit(name: &str) -> bool {
    matches!(name.rsplit('.').next(), Some("network" | "netdev" | "link"))
}

fn unit_dir(name: &str, runtime: bool) -> String {
    let base = if runtime { "/run" } else { "/etc" };
    let kind = if is_network_unit(name) {
        "network"
    } else {
        "system"
    };
    format!("{base}/systemd/{kind}")
}

fn write(kind: WriteKind, path: String, content: impl Into<Vec<u8>>) -> Step {
    Step::Write {
        kind,
        path,
        content: content.into(),
        mode: 0o644,
        owner: String::new(),
    }
}

/// Plans a cloud-config. Reads the target (accounts, `update.conf`, `/etc/environment`),
/// writes nothing. Every error in the input is reported here.
pub fn plan(config: &CloudConfig, ctx: &Context) -> Result<Plan, ApplyError> {
    let accounts = Accounts::load(&ctx.root);
    let mut steps = Vec::new();
    plan_accounts(config, ctx, &accounts, &mut steps);
    // The host name after the accounts (coreos-cloudinit set it first): a `useradd` that
    // fails then leaves the host as it was.
    if !config.hostname.is_empty() {
        steps.push(Step::Hostname(config.hostname.clone()));
    }

    plan_files(config, ctx, &accounts, &mut steps)?;
    plan_units(&unit_list(config), &mut steps)?;
    Ok(Plan { steps })
}

/// Users (created, or their password set), then their keys and `core`'s.
fn plan_accounts(config: &CloudConfig, ctx: &Context, accounts: &Accounts, steps: &mut Vec<Step>) {
    for user in &config.users {
        if user.name.is_empty() {
            tracing::warn!("skipping a user with no name");
            continue;
        }
        if accounts.user(&user.name).is_some() {
            if !user.passwd.is_empty() {
                steps.push(Step::SetPassword {
                    user: user.name.clone(),
                    hash: user.passwd.clone(),
                });
            }
        } else {
            steps.push(Step::CreateUser(accounts::useradd_args(user)));
        }
        if !user.ssh_authorized_keys.is_empty() {
            steps.push(Step::AuthorizeKeys {
                user: user.name.clone(),
                name: ctx.ssh_key_name.clone(),
                keys: user.ssh_authorized_keys.clone(),
            });
        }
        if !user.coreos_ssh_import_github.is_empty()
            || !user.coreos_ssh_import_github_users.is_empty()
            || !user.coreos_ssh_import_url.is_empty()
        {
            tracing::warn!(user = %user.name, "remote SSH key imports are deprecated and not supported; skipped");
        }
    }

    let mut core_keys = config.ssh_authorized_keys.clone();
    core_keys.extend(ctx.metadata_keys.iter().cloned());
    if !core_keys.is_empty() {
        steps.push(Step::AuthorizeKeys {
            user: "core".to_string(),
            name: ctx.ssh_key_name.clone(),
            keys: core_keys,
        });
    }
}

/// `write_files`, then the generated files in the original's order, then the
/// `/etc/environment` merge.
fn plan_files(
    config: &CloudConfig,
    ctx: &Context,
    accounts: &Accounts,
    steps: &mut Vec<Step>,
) -> Result<(), ApplyError> {
    // Files: write_files, then the generated ones.
    let mut wrote_environment = false;
    for wf in &config.write_files {
        let path = validate_path(&wf.path);
        let content =
            decode_content(&wf.content, &wf.encoding).map_err(|reason| ApplyError::Decode {
                path: path.clone(),
                reason,
            })?;
        let mode = parse_permissions(&path, &wf.permissions)?;
        if !wf.owner.is_empty() {
            accounts
                .owner_is_known(&wf.owner, &config.users)
                .map_err(|reason| ApplyError::Owner {
                    path: path.clone(),
                    owner: wf.owner.clone(),
                    reason,
                })?;
        }
        if crate::validate::clean_path(&path) == "/etc/environment" {
            wrote_environment = true;
        }
        steps.push(Step::Write {
            kind: WriteKind::File,
            path,
            content,
            mode,
            owner: wf.owner.clone(),
        });
    }
    let coreos = &config.coreos;
    if !coreos.oem.id.is_empty() {
        steps.push(write(
            WriteKind::File,
            "/etc/oem-release".into(),
            files::oem_release(&coreos.oem),
        ));
    }
    if !coreos.update.is_empty() {
        if let Some(strategy) = coreos.update.get("REBOOT_STRATEGY") {
            let field = schema::field(schema::UPDATE, "reboot_strategy");
            if !field.is_some_and(|f| value_is_valid(f, strategy)) {
                return Err(ApplyError::UpdateOption {
                    option: "RebootStrategy",
                    value: strategy.to_string(),
                    pattern: schema::REBOOT_STRATEGY_RE,
                });
            }
        }
        let existing = std::fs::read_to_string(ctx.host_path("/etc/coreos/update.conf"))
            .or_else(|_| std::fs::read_to_string(ctx.host_path("/usr/share/coreos/update.conf")))
            .unwrap_or_default();
        steps.push(write(
            WriteKind::File,
            "/etc/coreos/update.conf".into(),
            files::update_conf(&existing, &coreos.update),
        ));
    }
    match config.manage_etc_hosts.as_str() {
        "" => {}
        "localhost" => {
            let hostname = if config.hostname.is_empty() {
                &ctx.current_hostname
            } else {
                &config.hostname
            };
            steps.push(write(
                WriteKind::File,
                "/etc/hosts".into(),
                files::etc_hosts(hostname),
            ));
        }
        other => return Err(ApplyError::ManageEtcHosts(other.to_string())),
    }
    if !coreos.flannel.is_empty() {
        steps.push(write(
            WriteKind::File,
            "/run/flannel/options.env".into(),
            files::flannel_options(&coreos.flannel),
        ));
    }

    let env = ctx.addresses.environment();
    if !wrote_environment && !env.is_empty() {
        let old = std::fs::read(ctx.host_path("/etc/environment")).unwrap_or_default();
        steps.push(Step::MergeEnvironment(files::merge_environment(&old, &env)));
    }
    Ok(())
}

/// A `write_files` path as coreos-cloudinit used it: joined onto `/`.
fn validate_path(p: &str) -> String {
    crate::validate::clean_path(&format!("/{p}"))
}

/// The config's units, then the generated ones.
fn unit_list(config: &CloudConfig) -> Vec<Unit> {
    let coreos = &config.coreos;
    let mut units = coreos.units.clone();
    for (name, section) in [
        ("etcd.service", &coreos.etcd),
        ("etcd2.service", &coreos.etcd2),
        ("fleet.service", &coreos.fleet),
        ("locksmithd.service", &coreos.locksmith),
    ] {
        units.push(Unit {
            name: name.to_string(),
            runtime: true,
            drop_ins: vec![DropIn {
                name: "20-cloudinit.conf".to_string(),
                content: section.dropin(),
            }],
            ..Unit::default()
        });
    }
    if let Some(strategy) = coreos.update.get("REBOOT_STRATEGY") {
        let off = strategy == "off";
        units.push(Unit {
            name: "locksmithd.service".to_string(),
            runtime: true,
            mask: off,
            command: if off { "stop" } else { "restart" }.to_string(),
            ..Unit::default()
        });
    }
    if coreos.update.get("GROUP").is_some() || coreos.update.get("SERVER").is_some() {
        units.push(Unit {
            name: "update-engine.service".to_string(),
            command: "restart".to_string(),
            ..Unit::default()
        });
    }
    units
}

fn plan_units(units: &[Unit], steps: &mut Vec<Step>) -> Result<(), ApplyError> {
    let mut reload = false;
    let mut restart_networkd = false;
    let mut jobs = Vec::new();
    for unit in units {
        if unit.name.is_empty() {
            tracing::warn!("skipping a unit with no name");
            continue;
        }
        let dir = unit_dir(&unit.name, unit.runtime);
        let path = format!("{dir}/{}", unit.name);
        if !unit.content.is_empty() {
            steps.push(write(
                WriteKind::Unit,
                path.clone(),
                unit.content.as_bytes(),
            ));
            reload = true;
        }
        for d in &unit.drop_ins {
            if d.name.is_empty() || d.content.is_empty() {
                continue;
            }
            let p = format!("{dir}/{}.d/{}", unit.name, d.name);
            steps.push(write(WriteKind::DropIn, p, d.content.as_bytes()));
            reload = true;
        }
        if unit.mask {
            steps.push(Step::Mask(path));
        } else if unit.runtime {
            steps.push(Step::EnsureUnmasked(path));
        }
        let network = is_network_unit(&unit.name);
        if unit.enable {
            if network {
                tracing::info!(unit = %unit.name, "skipping enable for network-like unit");
            } else {
                steps.push(Step::Enable {
                    unit: unit.name.clone(),
                    runtime: unit.runtime,
                });
            }
        }
        if network {
            restart_networkd = true;
        } else if !unit.command.is_empty() {
            let kind = JobKind::from_command(&unit.command).ok_or_else(|| ApplyError::Command {
                unit: unit.name.clone(),
                command: unit.command.clone(),
            })?;
            jobs.push(Step::Job {
                kind,
                unit: unit.name.clone(),
            });
        }
    }
    if reload {
        steps.push(Step::Reload);
    }
    if restart_networkd {
        steps.push(Step::Job {
            kind: JobKind::Restart,
            unit: "systemd-networkd.service".to_string(),
        });
    }
    steps.extend(jobs);
    Ok(())
}

/// Plans a `#!` script: written to `<workspace>/scripts/<name>` (mode 0744) and run with
/// bash in the transient unit `coreos-cloudinit-<name>.service`, whose name is recorded in
/// `<workspace>/scripts/unit-name`.
pub fn plan_script(script: &[u8], ctx: &Context, name: &str) -> Plan {
    let dir = format!("{}/scripts", ctx.workspace.trim_end_matches('/'));
    let path = format!("{dir}/{name}");
    let unit = format!("coreos-cloudinit-{name}.service");
    Plan {
        steps: vec![
            Step::Write {
                kind: WriteKind::File,
                path: path.clone(),
                content: script.to_vec(),
                mode: 0o744,
                owner: String::new(),
            },
            write(WriteKind::File, format!("{dir}/unit-name"), unit.as_bytes()),
            Step::RunScript { unit, path },
        ],
    }
}

/// The operations on the host that are not file writes.
pub trait Host {
    /// Sets the static host name.
    fn set_hostname(&mut self, name: &str) -> Result<(), ApplyError>;
    /// Runs `useradd` with these arguments.
    fn create_user(&mut self, args: &[String]) -> Result<(), ApplyError>;
    /// Sets a password hash (`chpasswd -e`).
    fn set_password(&mut self, user: &str, hash: &str) -> Result<(), ApplyError>;
}

/// What was staged for one step that writes files.
enum Prepared {
    /// A `Write`'s file (none when there is nothing to write), or the key files of an
    /// `AuthorizeKeys` for a user that exists.
    Staged(Vec<atomic_file::Staged>),
    /// The keys of a user this apply creates: staged right after its `useradd`, before
    /// anything else changes.
    KeysAfterUseradd,
}

impl Prepared {
    fn files(self) -> Vec<atomic_file::Staged> {
        match self {
            Self::Staged(files) => files,
            Self::KeysAfterUseradd => Vec::new(),
        }
    }
}

/// Executes a plan under `ctx.root`: stages every file first — `write_files`, units,
/// drop-ins, `/etc/environment`, and the SSH keys of users that exist — so a failure there
/// changes nothing, then carries the steps out in order, committing each staged file at its
/// step. The plan puts the accounts first (a `useradd` that fails leaves the host name and
/// every file as they were), then the host name, the files and the units. Returns the trace
/// of what was done.
///
/// A unit job systemd refuses to queue (unit not found, masked …) is reported at the end
/// but does not stop the jobs after it (coreos-cloudinit stopped at the first).
pub fn execute(
    plan: &Plan,
    ctx: &Context,
    host: &mut dyn Host,
    systemd: &mut dyn Systemd,
) -> Result<Vec<String>, ApplyError> {
    let mut created_dirs: Vec<PathBuf> = Vec::new();
    let prepared = match stage_all(plan, ctx, &mut created_dirs) {
        Ok(p) => p,
        Err(e) => {
            for d in created_dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            return Err(e);
        }
    };
    let (trace, mut refused) = match carry_out(plan, ctx, host, systemd, prepared) {
        Ok(done) => done,
        Err(e) => {
            // The files not yet committed were dropped (their temporary files with them);
            // the directories made for them go too, unless something was committed there.
            for d in created_dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            return Err(e);
        }
    };
    match refused.len() {
        0 => Ok(trace),
        1 => Err(ApplyError::Systemd(refused.remove(0))),
        n => Err(ApplyError::Jobs(
            n,
            refused
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}

/// The steps in order, each staged file committed at its step: (trace, refused jobs).
fn carry_out(
    plan: &Plan,
    ctx: &Context,
    host: &mut dyn Host,
    systemd: &mut dyn Systemd,
    prepared: Vec<Prepared>,
) -> Result<(Vec<String>, Vec<systemd_client::Error>), ApplyError> {
    let mut prepared = prepared.into_iter();
    let mut trace = Vec::new();
    let mut refused: Vec<systemd_client::Error> = Vec::new();
    for step in &plan.steps {
        trace.push(step.to_string());
        tracing::info!("{step}");
        match step {
            Step::Hostname(h) => host.set_hostname(h)?,
            Step::CreateUser(args) => host.create_user(args)?,
            Step::SetPassword { user, hash } => host.set_password(user, hash)?,
            Step::AuthorizeKeys { user, name, keys } => {
                let staged = match prepared.next() {
                    Some(Prepared::Staged(files)) => files,
                    _ => stage_keys(ctx, user, name, keys, &mut Vec::new())?,
                };
                for s in staged {
                    s.commit()?;
                }
            }
            Step::Write { path, owner, .. } => {
                let staged = prepared.next().and_then(|p| p.files().into_iter().next());
                if let Some(mut staged) = staged {
                    if !owner.is_empty() {
                        let (uid, gid) =
                            Accounts::load(&ctx.root)
                                .resolve_owner(owner)
                                .map_err(|reason| ApplyError::Owner {
                                    path: path.clone(),
                                    owner: owner.clone(),
                                    reason,
                                })?;
                        staged.chown(uid, gid)?;
                    }
                    staged.commit()?;
                }
            }
            Step::MergeEnvironment(_) => {
                for staged in prepared.next().map(Prepared::files).unwrap_or_default() {
                    staged.commit()?;
                }
            }
            Step::Mask(p) => mask(&ctx.write_path(p)?)?,
            Step::EnsureUnmasked(p) => ensure_unmasked(&ctx.write_path(p)?)?,
            Step::Enable { unit, runtime } => {
                systemd.enable_unit_files(std::slice::from_ref(unit), *runtime, true)?
            }
            Step::Reload => systemd.reload()?,
            Step::Job { kind, unit } => match systemd.run_job(*kind, unit, "replace") {
                Ok(result) => tracing::info!(%unit, %result, "job {kind} finished"),
                // A unit systemd refuses (not found, masked …) does not stop the others.
                Err(e) => {
                    tracing::error!("{e}");
                    refused.push(e);
                }
            },
            Step::RunScript { unit, path } => {
                let argv = vec!["/bin/bash".to_string(), path.clone()];
                let result = systemd.start_transient_service(
                    unit,
                    "Unit generated and executed by coreos-cloudinit on behalf of user",
                    &argv,
                )?;
                tracing::info!(%unit, %result, "script started");
            }
        }
    }
    Ok((trace, refused))
}

fn stage_all(
    plan: &Plan,
    ctx: &Context,
    created_dirs: &mut Vec<PathBuf>,
) -> Result<Vec<Prepared>, ApplyError> {
    let mut out = Vec::new();
    let accounts = Accounts::load(&ctx.root);
    for step in &plan.steps {
        let (path, content, mode) = match step {
            Step::Write {
                path,
                content,
                mode,
                ..
            } => (path.as_str(), Some(content), *mode),
            Step::MergeEnvironment(content) => ("/etc/environment", content.as_ref(), 0o644),
            Step::AuthorizeKeys { user, name, keys } => {
                out.push(if accounts.user(user).is_some() {
                    Prepared::Staged(stage_keys(ctx, user, name, keys, created_dirs)?)
                } else {
                    Prepared::KeysAfterUseradd
                });
                continue;
            }
            _ => continue,
        };
        let Some(content) = content else {
            out.push(Prepared::Staged(Vec::new()));
            continue;
        };
        let target = ctx.write_path(path)?;
        if let Some(parent) = target.parent() {
            created_dirs.extend(atomic_file::create_dirs(parent)?);
        }
        let staged = atomic_file::stage(&target, content, &atomic_file::Options::mode(mode))?;
        out.push(Prepared::Staged(vec![staged]));
    }
    Ok(out)
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ApplyError + 'a {
    move |source| ApplyError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn mask(path: &Path) -> Result<(), ApplyError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(ApplyError::Io {
                op: "masking",
                path: path.to_path_buf(),
                source: std::io::Error::other("is a directory"),
            })
        }
        Ok(_) => std::fs::remove_file(path).map_err(io_err("removing", path))?,
        Err(_) => {}
    }
    if let Some(parent) = path.parent() {
        atomic_file::create_dirs(parent)?;
    }
    std::os::unix::fs::symlink("/dev/null", path).map_err(io_err("masking", path))
}

fn ensure_unmasked(path: &Path) -> Result<(), ApplyError> {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let masked = std::fs::metadata(path)
        .is_ok_and(|m| m.file_type().is_char_device() || (m.is_file() && m.len() == 0));
    if masked {
        std::fs::remove_file(path).map_err(io_err("unmasking", path))?;
    } else {
        tracing::info!(path = %path.display(), "is not null or empty, refusing to unmask");
    }
    Ok(())
}

/// Stages `update-ssh-keys -u USER -a NAME`'s files: the key set and the regenerated
/// `authorized_keys`, making (and recording in `created_dirs`) the `.ssh` directories.
fn stage_keys(
    ctx: &Context,
    user: &str,
    name: &str,
    keys: &[String],
    created_dirs: &mut Vec<PathBuf>,
) -> Result<Vec<atomic_file::Staged>, ApplyError> {
    let accounts = Accounts::load(&ctx.root);
    let entry = accounts.user(user);
    let home = entry
        .map(|p| p.home.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("/home/{user}"));
    let (uid, gid) = (entry.map(|p| p.uid), entry.map(|p| p.gid));
    // The deepest directory written: every link on the way to it is checked.
    ctx.write_path(&format!("{home}/.ssh/authorized_keys.d/"))?;
    let host_home = ctx.host_path(&home);
    let ssh = host_home.join(".ssh");
    for dir in [ssh.clone(), ssh.join("authorized_keys.d")] {
        let made = atomic_file::create_dirs(&dir)?;
        created_dirs.extend(made.iter().cloned());
        for d in made {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err("setting mode of", &d))?;
            if uid.is_some() {
                std::os::unix::fs::chown(&d, uid, gid).map_err(io_err("changing owner of", &d))?;
            }
        }
    }
    let opts = atomic_file::Options {
        mode: 0o600,
        uid,
        gid,
    };
    Ok(accounts::ssh_key_files(&host_home, name, keys)
        .into_iter()
        .map(|(p, data)| atomic_file::stage(&p, &data, &opts))
        .collect::<Result<Vec<_>, _>>()?)
}

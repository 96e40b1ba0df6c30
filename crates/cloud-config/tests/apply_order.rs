//! What a failure part-way through an apply leaves behind: the accounts come first and every
//! file — SSH keys included — is staged before anything changes, so a failing `useradd` or an
//! unwritable `~core/.ssh` leaves the host name and every file as they were.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::path::Path;

use cloud_config::apply::{self, ApplyError, Context, Host};
use cloud_config::CloudConfig;
use systemd_client::Recorder;

/// A host whose `useradd` fails, recording every call.
#[derive(Default)]
struct Host_ {
    calls: Vec<String>,
    useradd_fails: bool,
}

impl Host for Host_ {
    fn set_hostname(&mut self, name: &str) -> Result<(), ApplyError> {
        self.calls.push(format!("hostname {name}"));
        Ok(())
    }
    fn create_user(&mut self, args: &[String]) -> Result<(), ApplyError> {
        self.calls.push(format!("useradd {}", args.join(" ")));
        if self.useradd_fails {
            return Err(ApplyError::Host(
                "useradd: group 'web' already exists".into(),
            ));
        }
        Ok(())
    }
    fn set_password(&mut self, user: &str, _hash: &str) -> Result<(), ApplyError> {
        self.calls.push(format!("chpasswd {user}"));
        Ok(())
    }
}

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx0xmQc0XAm3Fd8vPq5Fi0LxF7Lk2cHkXbRIxe0A1hC me";

fn root_with_core() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/bash\ncore:x:500:500:CoreOS Admin:/home/core:/bin/bash\n",
    )
    .unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\ncore:x:500:\n").unwrap();
    std::fs::create_dir_all(root.path().join("home/core")).unwrap();
    root
}

fn config(text: &str) -> CloudConfig {
    let node = cloud_config::yaml::parse(text.as_bytes()).unwrap();
    CloudConfig::from_node(node.as_ref())
}

fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(root).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

fn run(root: &Path, text: &str, host: &mut Host_) -> Result<Vec<String>, ApplyError> {
    let ctx = Context::new(root);
    let plan = apply::plan(&config(text), &ctx).unwrap();
    apply::execute(&plan, &ctx, host, &mut Recorder::default())
}

const CONFIG: &str = "#cloud-config
hostname: renamed
users:
  - name: web
    groups: [docker]
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx0xmQc0XAm3Fd8vPq5Fi0LxF7Lk2cHkXbRIxe0A1hC me
write_files:
  - path: /etc/motd.d/site
    content: hello
";

#[test]
fn a_failing_useradd_changes_neither_the_host_name_nor_any_file() {
    let root = root_with_core();
    let before = files_under(root.path());
    let mut host = Host_ {
        useradd_fails: true,
        ..Host_::default()
    };
    let err = run(root.path(), CONFIG, &mut host).unwrap_err();
    assert!(
        err.to_string().contains("group 'web' already exists"),
        "{err}"
    );
    assert_eq!(host.calls.len(), 1, "{:?}", host.calls);
    assert!(host.calls[0].starts_with("useradd"), "{:?}", host.calls);
    assert_eq!(files_under(root.path()), before, "files changed");
}

#[test]
fn keys_that_cannot_be_staged_stop_the_apply_before_any_change() {
    let root = root_with_core();
    // `~core/.ssh` is a file: the keys cannot be written there.
    std::fs::write(root.path().join("home/core/.ssh"), "not a directory").unwrap();
    let before = files_under(root.path());
    let mut host = Host_::default();
    let err = run(root.path(), CONFIG, &mut host).unwrap_err();
    assert!(err.to_string().contains(".ssh"), "{err}");
    assert!(host.calls.is_empty(), "the host changed: {:?}", host.calls);
    assert_eq!(files_under(root.path()), before, "files changed");
}

#[test]
fn a_successful_apply_writes_the_keys_with_the_files() {
    let root = root_with_core();
    let mut host = Host_::default();
    let trace = run(root.path(), CONFIG, &mut host).unwrap();
    assert_eq!(
        host.calls,
        vec![
            "useradd --password * --create-home --groups docker web".to_string(),
            "hostname renamed".to_string()
        ]
    );
    let keys = std::fs::read_to_string(root.path().join("home/core/.ssh/authorized_keys")).unwrap();
    assert!(keys.contains(KEY), "{keys}");
    assert!(root.path().join("etc/motd.d/site").is_file());
    assert!(trace[0].starts_with("useradd"), "{trace:?}");
}

//! `coreos-cloudinit -from-file F -root DIR` against every case of
//! `fixtures/cloud-config/apply-golden.md`: the same actions in the same order, and the same
//! resulting files byte for byte (content and mode).
//!
//! Documented differences: a config the original applied part-way before failing
//! (`unit-command-invalid`) is refused before anything is written; the plan marks a file's
//! owner on its `write` line rather than on a line of its own; SSH keys are installed by
//! coreos-cloudinit itself (the original ran `update-ssh-keys`), so their files are checked
//! separately.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/cloud-config")
}

#[derive(Debug)]
struct Case {
    name: String,
    input: String,
    public: String,
    private: String,
    actions: Vec<String>,
    error: Option<String>,
    files: BTreeMap<String, (String, String)>, // path -> (mode or "symlink", content/target)
}

fn parse_golden() -> Vec<Case> {
    let doc = std::fs::read_to_string(fixtures().join("apply-golden.md")).unwrap();
    let mut cases = Vec::new();
    for chunk in doc.split("\n### ").skip(1) {
        let header = chunk.lines().next().unwrap();
        let name = header.split('`').nth(1).unwrap().to_string();
        let (public, private) = match header.split_once("(public_ipv4=") {
            Some((_, rest)) => {
                let (p, rest) = rest.split_once(", private_ipv4=").unwrap();
                (p.to_string(), rest.trim_end_matches(')').to_string())
            }
            None => ("203.0.113.29".to_string(), "192.0.2.13".to_string()),
        };
        let input = if header.starts_with("probe") {
            let y = chunk.split("```yaml\n").nth(1).unwrap();
            y.split("```").next().unwrap().to_string()
        } else {
            std::fs::read_to_string(fixtures().join(&name)).unwrap()
        };
        let text = chunk
            .split("```text\n")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        let (actions_part, files_part) = text.split_once("== resulting files").unwrap();
        let mut actions = Vec::new();
        let mut error = None;
        let mut pending_owner: Option<String> = None;
        for line in actions_part.lines().skip(1) {
            let l = line.trim();
            if l.is_empty() {
                continue;
            }
            if let Some(rest) = l.strip_prefix("(chown ") {
                pending_owner = Some(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if l.starts_with("ERROR") {
                error = Some(l.split(": ").skip(1).collect::<Vec<_>>().join(": "));
                continue;
            }
            if l.starts_with("processUnits error") {
                continue;
            }
            match pending_owner.take() {
                Some(o) => actions.push(format!("{l} (owner {o})")),
                None => actions.push(l.to_string()),
            }
        }
        let mut files = BTreeMap::new();
        for block in files_part.split("\n--- ").skip(1) {
            let mut lines = block.lines();
            let head = lines.next().unwrap();
            if let Some((path, target)) = head
                .strip_suffix(" (symlink)")
                .and_then(|h| h.split_once(" -> "))
            {
                files.insert(
                    path.to_string(),
                    ("symlink".to_string(), target.to_string()),
                );
                continue;
            }
            let (path, mode) = head.split_once(" (mode ").unwrap();
            let body: Vec<&str> = lines.collect();
            let mut content = body.join("\n");
            if !body.is_empty() {
                content.push('\n');
            }
            if let Some(c) = content.strip_suffix("\\ (no newline at end of file)\n") {
                content = c.to_string();
            }
            files.insert(
                path.to_string(),
                (mode.trim_end_matches(')').to_string(), content),
            );
        }
        cases.push(Case {
            name,
            input,
            public,
            private,
            actions,
            error,
            files,
        });
    }
    cases
}

/// A scratch root with the files every CoreOS root has.
fn scratch_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let me = std::fs::metadata("/proc/self").unwrap();
    let (uid, gid) = (me.uid(), me.gid());
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::create_dir_all(root.path().join("usr/share/coreos")).unwrap();
    std::fs::write(
        root.path().join("etc/passwd"),
        format!("root:x:{uid}:{gid}:root:/root:/bin/bash\ncore:x:{uid}:{gid}:CoreOS Admin:/home/core:/bin/bash\n"),
    )
    .unwrap();
    std::fs::write(
        root.path().join("etc/group"),
        format!("root:x:{gid}:\ncore:x:{gid}:\n"),
    )
    .unwrap();
    std::fs::write(
        root.path().join("usr/share/coreos/update.conf"),
        "GROUP=stable\n",
    )
    .unwrap();
    root
}

const SEEDED: &[&str] = &["/etc/passwd", "/etc/group", "/usr/share/coreos/update.conf"];

fn files_under(root: &Path) -> BTreeMap<String, (String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(rel, ("symlink".into(), t.display().to_string()));
            } else if meta.is_dir() {
                walk(root, &p, out);
            } else {
                let mode = format!("{:04o}", meta.permissions().mode() & 0o7777);
                out.insert(
                    rel,
                    (mode, String::from_utf8(std::fs::read(&p).unwrap()).unwrap()),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out.retain(|k, _| !SEEDED.contains(&k.as_str()) && !k.contains("/.ssh/"));
    out
}

fn run(case: &Case, root: &Path) -> (i32, String, String) {
    let input = root.parent().unwrap().join(format!(
        "{}-user-data",
        root.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&input, &case.input).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coreos-cloudinit"))
        .arg("-from-file")
        .arg(&input)
        .arg("-root")
        .arg(root)
        .env("COREOS_PUBLIC_IPV4", &case.public)
        .env("COREOS_PRIVATE_IPV4", &case.private)
        .env_remove("COREOS_PUBLIC_IPV6")
        .env_remove("COREOS_PRIVATE_IPV6")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&input);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn apply_golden_cases() {
    let cases = parse_golden();
    assert!(cases.len() >= 20, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let root = scratch_root();
        let (code, stdout, stderr) = run(case, root.path());
        let got_files = files_under(root.path());
        let mut problems = Vec::new();
        // Applying a config that errors: nothing at all is written (the original wrote
        // /etc/environment before failing on unit-command-invalid).
        if let Some(err) = &case.error {
            if code != 1 {
                problems.push(format!("exit {code}, want 1 ({err})"));
            }
            if !got_files.is_empty() {
                problems.push(format!(
                    "files written despite the error: {:?}",
                    got_files.keys()
                ));
            }
            if !stdout.trim().is_empty() {
                problems.push(format!("actions performed despite the error: {stdout}"));
            }
        } else {
            if code != 0 {
                problems.push(format!("exit {code}: {stderr}"));
            }
            let got_actions: Vec<&str> = stdout.lines().collect();
            if got_actions != case.actions {
                problems.push(format!(
                    "actions\n want: {:#?}\n got: {:#?}",
                    case.actions, got_actions
                ));
            }
            if got_files != case.files {
                problems.push(format!(
                    "files\n want: {:#?}\n got: {:#?}",
                    case.files, got_files
                ));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("== {}\n{}", case.name, problems.join("\n")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn ssh_keys_are_installed_for_core() {
    let case = parse_golden()
        .into_iter()
        .find(|c| c.name == "book-ch5-staging1.yaml")
        .unwrap();
    let root = scratch_root();
    let (code, _, stderr) = run(&case, root.path());
    assert_eq!(code, 0, "{stderr}");
    let keys = std::fs::read_to_string(
        root.path()
            .join("home/core/.ssh/authorized_keys.d/coreos-cloudinit"),
    )
    .unwrap();
    assert!(keys.starts_with("ssh-rsa "), "{keys}");
    assert_eq!(keys.lines().count(), 1);
    let all = std::fs::read_to_string(root.path().join("home/core/.ssh/authorized_keys")).unwrap();
    assert!(all.contains(keys.trim()));
    let mode = std::fs::metadata(root.path().join("home/core/.ssh/authorized_keys"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

//! The launcher's cgroup code on a real cgroup v2 (unified) hierarchy: run inside a QEMU
//! machine by `tests/unified_cgroups.rs`, as that machine's only program (a kernel booted
//! without systemd, `/sys/fs/cgroup` a cgroup2 mount with every controller). It makes a
//! machine's cgroup as `ferrite up` does, proves the memory limit is enforced and the
//! cgroup can be delegated as `systemd-nspawn` needs, then stops and removes it as
//! `ferrite destroy` does. Prints `cgroup-v2 probe: ok` when everything held.
//!
//! `cgroup_probe join DIR -- CMD...` joins DIR and becomes CMD, as `ferrite __boot` does.
#![allow(clippy::disallowed_methods)]

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use machine_launcher::cgroup::{self, Layout, Limits};
use machine_launcher::host::{Host, RealHost};

fn check(what: &str, ok: bool, detail: impl std::fmt::Display) -> Result<(), String> {
    if ok {
        eprintln!("ok: {what}");
        Ok(())
    } else {
        Err(format!("{what}: {detail}"))
    }
}

fn join_and_exec(args: &[String]) -> Result<(), String> {
    let (dir, cmd) = match args {
        [dir, sep, cmd @ ..] if sep == "--" && !cmd.is_empty() => (dir, cmd),
        _ => return Err("usage: cgroup_probe join DIR -- CMD...".into()),
    };
    cgroup::join(&RealHost, &[PathBuf::from(dir)], std::process::id())
        .map_err(|e| e.to_string())?;
    Err(Command::new(&cmd[0]).args(&cmd[1..]).exec().to_string())
}

fn in_cgroup(dir: &Path, cmd: &[&str]) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap_or_else(|_| "/probe".into()));
    c.arg("join").arg(dir).arg("--").args(cmd);
    c
}

fn probe() -> Result<(), String> {
    let host = RealHost;
    let layout = cgroup::detect(&host);
    check(
        "the hierarchy is unified",
        matches!(layout, Layout::Unified(_)),
        format!("{layout:?}"),
    )?;
    let dirs = cgroup::paths(&layout, "ferrite-probe-core-01");
    let m = dirs[0].clone();
    cgroup::create(&host, &layout, &dirs, Limits { memory_mb: 32 }).map_err(|e| e.to_string())?;
    let read = |p: &Path| host.cgroup_read(p).unwrap_or_default();
    check(
        "memory.max is the limit",
        read(&m.join("memory.max")).trim() == "33554432",
        read(&m.join("memory.max")),
    )?;
    let offered = read(&m.join("cgroup.controllers"));
    check(
        "the machine's cgroup has memory, pids and cpu to delegate",
        ["memory", "pids", "cpu"]
            .iter()
            .all(|c| offered.split_whitespace().any(|o| o == *c)),
        &offered,
    )?;

    // 64 MB in a 32 MB cgroup without swap: the kernel's OOM killer ends it.
    let status = in_cgroup(
        &m,
        &[
            "/bin/busybox",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=64M",
            "count=1",
        ],
    )
    .status()
    .map_err(|e| e.to_string())?;
    check(
        "a process over the limit is killed",
        status.signal() == Some(9),
        format!("{status:?}"),
    )?;
    let events = read(&m.join("memory.events"));
    check(
        "memory.events counts the OOM kill",
        events
            .lines()
            .any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0"),
        &events,
    )?;
    // Within the limit the same program runs.
    let status = in_cgroup(
        &m,
        &[
            "/bin/busybox",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=8M",
            "count=1",
        ],
    )
    .status()
    .map_err(|e| e.to_string())?;
    check(
        "a process within the limit runs",
        status.success(),
        format!("{status:?}"),
    )?;

    // Delegation as systemd-nspawn does it: the empty machine cgroup hands controllers on.
    let payload = m.join("payload");
    host.cgroup_mkdir(&payload).map_err(|e| e.to_string())?;
    for c in ["+memory", "+pids"] {
        host.cgroup_write(&m.join("cgroup.subtree_control"), c)
            .map_err(|e| e.to_string())?;
    }
    check(
        "the payload cgroup gets memory and pids",
        read(&payload.join("cgroup.controllers")).contains("memory"),
        read(&payload.join("cgroup.controllers")),
    )?;

    // `ferrite destroy`: whatever runs below the machine's cgroup is stopped, then removed.
    let mut sleeper = in_cgroup(&payload, &["/bin/busybox", "sleep", "1000"])
        .spawn()
        .map_err(|e| e.to_string())?;
    let joined = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        !cgroup::processes(&host, &m).is_empty()
    });
    check(
        "the sleeper joined the payload cgroup",
        joined,
        "no process in it",
    )?;
    cgroup::kill_all(&host, &dirs);
    let status = sleeper.wait().map_err(|e| e.to_string())?;
    check(
        "kill_all stopped it",
        status.signal() == Some(9),
        format!("{status:?}"),
    )?;
    cgroup::remove(&host, &dirs);
    check("remove left nothing", !m.exists(), m.display())?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("join") {
        if let Err(e) = join_and_exec(&args[1..]) {
            eprintln!("cgroup_probe join: {e}");
        }
        return ExitCode::FAILURE;
    }
    match probe() {
        Ok(()) => {
            eprintln!("cgroup-v2 probe: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cgroup-v2 probe: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

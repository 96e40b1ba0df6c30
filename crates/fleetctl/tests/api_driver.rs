//! The fleetctl binary against fleetd's API on a Unix socket in a temp dir (its default
//! driver), with a live agent and engine on an in-memory store: submit, start, list-units,
//! list-unit-files, list-machines, cat, stop, destroy, and errors when no fleetd answers.
#![allow(
    clippy::too_many_lines,
    reason = "a scenario reads top to bottom, as a user would run it"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::path::Path;
use std::time::Duration;

use fleet_model::Machine;
use fleetd::testing::InMemoryFleetd;

const ID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

async fn fleetctl(sock: &Path, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .arg(format!("--endpoint=unix://{}", sock.display()))
        .args(args)
        .env_remove("FLEETCTL_ENDPOINT")
        .env_remove("FLEETCTL_DRIVER")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_over_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fleet.sock");

    // Nobody listening: a clear error and a failing exit.
    let (code, _, err) = fleetctl(&sock, &["list-machines"]).await;
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!(
            "Error retrieving list of active machines: Get \"http://domain-sock/fleet/v1/machines?alt=json\": dial unix {}: connect: no such file or directory\n",
            sock.display()
        )
    );
    // On TCP, with Go's words for a refused connection.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, _, err) = fleetctl(
        &sock,
        &[
            &format!("--endpoint=http://127.0.0.1:{port}"),
            "list-machines",
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!("Error retrieving list of active machines: Get \"http://127.0.0.1:{port}/fleet/v1/machines?alt=json\": dial tcp 127.0.0.1:{port}: connect: connection refused\n")
    );

    for args in [&["--help"][..], &["-h"], &["help"], &[]] {
        let (code, out, _) = fleetctl(&sock, args).await;
        assert_eq!(code, 0, "{args:?}");
        assert!(out.contains("COMMANDS:"), "{args:?}: {out}");
    }
    let (code, _, err) = fleetctl(&sock, &["--bogus", "list-units"]).await;
    assert_eq!(code, 2);
    assert!(
        err.starts_with("flag provided but not defined: -bogus\n"),
        "{err}"
    );
    let (code, _, err) = fleetctl(&sock, &["cat", "hello.service"]).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("Error retrieving Unit hello.service: Get \""),
        "{err}"
    );

    let mut fleetd = InMemoryFleetd::serve(&sock).unwrap();
    let reg = fleetd.reg.clone();

    // Before registration fleetd answers 503 and fleetctl says why.
    let (code, _, err) = fleetctl(&sock, &["list-units"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("googleapi: Error 503: fleet server unable to communicate with etcd"),
        "{err}"
    );

    fleetd.join(Machine {
        id: ID.into(),
        public_ip: "172.20.0.21".into(),
        metadata: [("role".to_string(), "web".to_string())].into(),
        version: "0.1.0".into(),
    });

    let mut machines = String::new();
    for _ in 0..500 {
        let (code, out, _) = fleetctl(&sock, &["list-machines", "--no-legend"]).await;
        if code == 0 {
            machines = out;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(machines, "0f1e2d3c...\t172.20.0.21\trole=web\n");

    let unit = dir.path().join("hello.service");
    std::fs::write(
        &unit,
        "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sh -c 'while true; do echo hi; sleep 1; done'\n",
    )
    .unwrap();
    let unit = unit.to_str().unwrap();
    let (code, out, err) = fleetctl(&sock, &["submit", unit]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "Unit hello.service inactive\n"),
        "{err}"
    );
    let (code, out, err) = fleetctl(&sock, &["start", unit]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "Unit hello.service launched on 0f1e2d3c.../172.20.0.21\n"
    );

    let (_, out, _) = fleetctl(&sock, &["list-units"]).await;
    assert_eq!(
        out,
        "UNIT\t\tMACHINE\t\t\tACTIVE\tSUB\nhello.service\t0f1e2d3c.../172.20.0.21\tactive\trunning\n"
    );
    let (_, out, _) = fleetctl(
        &sock,
        &["list-unit-files", "--fields=unit,desc,dstate,state"],
    )
    .await;
    assert_eq!(
        out,
        "UNIT\t\tDESC\tDSTATE\t\tSTATE\nhello.service\tHello\tlaunched\tlaunched\n"
    );
    // An instance made from a local template: '@' travels in the URL path.
    std::fs::write(
        dir.path().join("tick@.service"),
        "[Service]\nExecStart=/bin/sleep %i\n",
    )
    .unwrap();
    let inst = dir.path().join("tick@60.service");
    let (code, out, err) = fleetctl(&sock, &["start", inst.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "Unit tick@60.service inactive\nUnit tick@60.service launched on 0f1e2d3c.../172.20.0.21\n"
    );
    let (code, out, _) = fleetctl(&sock, &["destroy", "tick@60.service"]).await;
    assert_eq!((code, out.as_str()), (0, "Destroyed tick@60.service\n"));
    let (_, cat, _) = fleetctl(&sock, &["cat", "hello.service"]).await;
    assert!(cat.contains("Description=Hello"), "{cat}");

    // A changed local file: a warning without --replace; with it, new content, as far as
    // the unit's desired state allows the command (fleet 0.13/1.0).
    std::fs::write(
        unit,
        "[Unit]\nDescription=Hello again\n\n[Service]\nExecStart=/bin/sh -c 'while true; do echo hi; sleep 2; done'\n",
    )
    .unwrap();
    let (code, _, err) = fleetctl(&sock, &["start", unit]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        format!("WARNING: Unit hello.service in registry differs from local unit file {unit}. Add --replace to override.\n")
    );
    let (code, _, err) = fleetctl(&sock, &["submit", "--replace", unit]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        "Warning: can not replace Unit(hello.service) in state 'launched', use the appropriate command\n"
    );
    let (_, cat, _) = fleetctl(&sock, &["cat", "hello.service"]).await;
    assert!(cat.contains("Description=Hello\n"), "{cat}");
    // fleet 1.0's protocol: the replaced unit goes inactive first, then is started.
    let (code, out, err) = fleetctl(&sock, &["start", "--replace", unit]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "Unit hello.service inactive\nUnit hello.service launched on 0f1e2d3c.../172.20.0.21\n"
    );
    let (_, cat, _) = fleetctl(&sock, &["cat", "hello.service"]).await;
    assert!(cat.contains("Description=Hello again"), "{cat}");
    // The machine runs the new version: its reported hash follows.
    let hash = reg
        .job("hello.service")
        .await
        .unwrap()
        .unwrap()
        .hash
        .to_string();
    let start = std::time::Instant::now();
    while !reg
        .states()
        .await
        .unwrap()
        .iter()
        .any(|s| s.unit == "hello.service" && s.hash == hash)
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "old version still reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, out, err) = fleetctl(&sock, &["start", "--replace", unit]).await;
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "Found same Unit(hello.service) in Registry, nothing to do\n"
    );
    let (code, _, err) = fleetctl(&sock, &["start", "--replace", "hello.service"]).await;
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "Error creating units: error Unit hello.service does not seem to be a template unit\n"
    );

    // fleet 1.0's restart: stop, wait, start, wait.
    let (code, out, err) = fleetctl(&sock, &["restart", "hello.service"]).await;
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "Unit hello.service loaded on 0f1e2d3c.../172.20.0.21\nUnit hello.service launched on 0f1e2d3c.../172.20.0.21\n"
        ),
        "{err}"
    );
    // Flags a command does not define fail as Go's flag package failed them.
    for args in [
        &["list-units", "--feilds=unit"][..],
        &["list-unit-files", "-l"],
        &["stop", "--replace", "hello.service"],
        &["destroy", "--force", "hello.service"],
    ] {
        let (code, out, err) = fleetctl(&sock, args).await;
        let flag = args[1].split('=').next().unwrap().trim_start_matches('-');
        assert_eq!((code, out.as_str()), (2, ""), "{args:?}");
        assert!(
            err.starts_with(&format!("flag provided but not defined: -{flag}\n")),
            "{args:?}: {err}"
        );
    }
    let (code, out, err) = fleetctl(&sock, &["stop", "hello.service"]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "Unit hello.service loaded on 0f1e2d3c.../172.20.0.21\n"),
        "{err}"
    );
    let (code, out, err) = fleetctl(&sock, &["unload", "hello.service"]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "Unit hello.service inactive\n"),
        "{err}"
    );
    let (code, out, _) = fleetctl(&sock, &["destroy", "hello.service"]).await;
    assert_eq!((code, out.as_str()), (0, "Destroyed hello.service\n"));

    // Global units, with fleet's words: no current state to print or to refuse a stop on.
    let global = dir.path().join("everywhere.service");
    std::fs::write(
        &global,
        "[Service]\nExecStart=/bin/sleep 1000\n\n[X-Fleet]\nGlobal=true\n",
    )
    .unwrap();
    let global = global.to_str().unwrap();
    let (code, out, err) = fleetctl(&sock, &["start", global]).await;
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "Unit everywhere.service \nTriggered global unit everywhere.service start\n"
        ),
        "{err}"
    );
    for _ in 0..2 {
        let (code, out, err) = fleetctl(&sock, &["stop", "everywhere.service"]).await;
        assert_eq!(
            (code, out.as_str()),
            (0, "Triggered global unit everywhere.service stop\n"),
            "{err}"
        );
    }
    let (code, _, _) = fleetctl(&sock, &["destroy", "everywhere.service"]).await;
    assert_eq!(code, 0);
    let (code, _, err) = fleetctl(&sock, &["destroy", "hello.service"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("unit does not exist"), "{err}");
    let (code, _, err) = fleetctl(&sock, &["--endpoint=tcp://x", "list-units"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("unix:///path or http://host:port"), "{err}");
    let (code, _, err) = fleetctl(
        &sock,
        &["--endpoint=unix://var/run/fleet.sock", "list-units"],
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("unable to connect to host \"var\" with scheme \"unix\""),
        "{err}"
    );

    fleetd.stop().await.unwrap();
}

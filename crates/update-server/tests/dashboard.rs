//! The dashboard in a real headless browser (Debian's chromium): a rollout in progress —
//! instances on the old version, one downloading, some done, one rolled back — rendered
//! with its groups, versions, chart and instances; pause and resume from its buttons' URLs;
//! hostile values escaped.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use omaha::codes::{EventResult, EventType};
use omaha::{App, Event, InstallSource, Os, Request};
use update_server::{Release, Service, Store};

fn send(svc: &Service, machine: &str, version: &str, events: Vec<Event>, at: i64) {
    let body = Request {
        updater: "test".into(),
        install_source: InstallSource::Scheduler,
        os: Os::default(),
        apps: vec![App {
            appid: "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}".into(),
            version: version.into(),
            track: "stable".into(),
            machine_id: machine.into(),
            ping: true,
            update_check: true,
            events,
            ..App::default()
        }],
    }
    .to_xml();
    let (status, answer) = svc.answer(&body, at);
    assert_eq!(status, 200, "{answer}");
}

fn ev(kind: EventType, result: EventResult, code: Option<u32>) -> Event {
    Event {
        error_code: code,
        ..Event::new(kind, result)
    }
}

/// Five instances on 1.0.0; 2.0.0 published: a and b took it, c is downloading, d rolled
/// back (which paused the group: safe mode), and one whose ID is markup.
fn rollout_in_progress(svc: &Service, now: i64) {
    svc.with_store(|s| {
        s.publish(
            &Release {
                version: "2.0.0".into(),
                channel: "stable".into(),
                size: 1,
                sha256: "x".into(),
                sha1: "x".into(),
                file: PathBuf::from("/nonexistent"),
            },
            now - 300,
        )
        .unwrap();
    });
    let t0 = now - 600;
    for m in [
        "machine-a",
        "machine-b",
        "machine-c",
        "machine-d",
        "<script>x</script>",
    ] {
        send(svc, m, "1.0.0", vec![], t0);
    }
    // a and b took it; c is downloading; d rolled back.
    for (m, at) in [("machine-a", now - 200), ("machine-b", now - 100)] {
        send(
            svc,
            m,
            "1.0.0",
            vec![ev(EventType::DownloadStarted, EventResult::Success, None)],
            at - 20,
        );
        send(
            svc,
            m,
            "1.0.0",
            vec![ev(EventType::UpdateComplete, EventResult::Success, None)],
            at - 10,
        );
        send(
            svc,
            m,
            "2.0.0",
            vec![ev(
                EventType::UpdateComplete,
                EventResult::SuccessReboot,
                None,
            )],
            at,
        );
    }
    send(
        svc,
        "machine-c",
        "1.0.0",
        vec![ev(EventType::DownloadStarted, EventResult::Success, None)],
        now - 30,
    );
    send(
        svc,
        "machine-d",
        "1.0.0",
        vec![ev(EventType::UpdateComplete, EventResult::Error, Some(44))],
        now - 20,
    );
    // Safe mode paused the group on d's failure; resumed by hand here.
    assert!(
        svc.with_store(|s| s.group("stable"))
            .unwrap()
            .unwrap()
            .paused
    );
}

/// The page as chromium renders it (`--dump-dom`).
fn render(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .output()
        .expect("chromium (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_dashboard_shows_a_rollout_in_progress_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Arc::new(Service::new(
        Store::open(&dir.path().join("db")).unwrap(),
        "http://127.0.0.1:1",
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    rollout_in_progress(&svc, now);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = update_server::router(svc.clone());
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dom = render(&format!("{base}/"));
    // Groups, with the newest release and the paused state and its button.
    assert!(dom.contains("<h1>Ferrite updates</h1>"), "{dom}");
    let groups = &dom[dom.find("id=\"groups\"").unwrap()..];
    assert!(
        groups.contains(
            "<td>stable</td><td>stable</td><td>2.0.0</td><td><span class=\"bad\">paused</span>"
        ),
        "{groups}"
    );
    assert!(
        groups.contains("action=\"/dashboard/groups/stable/resume\""),
        "{groups}"
    );
    // The version breakdown.
    let versions = &dom[dom.find("id=\"versions\"").unwrap()..];
    assert!(
        versions.contains("<td>stable</td><td>1.0.0</td><td>3</td>"),
        "{versions}"
    );
    assert!(
        versions.contains("<td>stable</td><td>2.0.0</td><td>2</td>"),
        "{versions}"
    );
    // The rollout: 2 of 5 so far, drawn.
    assert!(dom.contains("<svg class=\"rollout\""), "{dom}");
    assert!(dom.contains("2 of 5 instances run it."), "{dom}");
    // The instances, the rolled-back one marked, the hostile ID escaped (not a script).
    let instances = &dom[dom.find("id=\"instances\"").unwrap()..];
    for m in ["machine-a", "machine-b", "machine-c", "machine-d"] {
        assert!(instances.contains(m), "{m}: {instances}");
    }
    assert!(instances.contains("Downloading"), "{instances}");
    assert!(
        instances.contains("<tr class=\"bad\"><td><a href=\"/dashboard/instances/machine-d\">"),
        "{instances}"
    );
    assert!(
        instances.contains("&lt;script&gt;x&lt;/script&gt;"),
        "{instances}"
    );
    assert!(!dom.contains("<script>x</script>"));
    // One instance's history.
    let d = render(&format!("{base}/dashboard/instances/machine-d"));
    assert!(d.contains("rolled back (error code 44)"), "{d}");
    // Resume and pause, as the buttons post.
    let post = |path: &str| match ureq::post(&format!("{base}{path}")).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(post("/dashboard/groups/stable/resume"), 200);
    assert!(
        !svc.with_store(|s| s.group("stable"))
            .unwrap()
            .unwrap()
            .paused
    );
    assert!(render(&format!("{base}/dashboard")).contains("<span class=\"ok\">on</span>"));
    assert_eq!(post("/dashboard/groups/stable/pause"), 200);
    assert!(
        svc.with_store(|s| s.group("stable"))
            .unwrap()
            .unwrap()
            .paused
    );
    assert_eq!(post("/dashboard/groups/nosuch/pause"), 404);
    assert!(matches!(
        ureq::get(&format!("{base}/dashboard/instances/nobody")).call(),
        Err(ureq::Error::Status(404, _))
    ));
}

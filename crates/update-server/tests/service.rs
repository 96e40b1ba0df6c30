//! The update service: what it offers to whom (channels, groups, pause, safe mode, the
//! rate limit), what events do to an instance, what survives a restart, and the whole
//! exchange with update_engine's own client over HTTP on loopback, payload included.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use coreos_disk::{Disk, Layout};
use omaha::codes::{EventResult, EventType};
use omaha::{App, CheckResponse, Event, InstallSource, Os, Request, UpdateCheck};
use update_server::{Group, Release, Service, Store};

fn request(machine: &str, version: &str, track: &str, check: bool, events: Vec<Event>) -> String {
    Request {
        updater: "test".into(),
        install_source: InstallSource::Scheduler,
        os: Os::default(),
        apps: vec![App {
            appid: "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}".into(),
            version: version.into(),
            track: track.into(),
            machine_id: machine.into(),
            ping: true,
            update_check: check,
            events,
            ..App::default()
        }],
    }
    .to_xml()
}

fn check(svc: &Service, machine: &str, version: &str, track: &str) -> UpdateCheck {
    let (status, body) = svc.answer(&request(machine, version, track, true, Vec::new()), 1000);
    assert_eq!(status, 200, "{body}");
    CheckResponse::parse(&body).unwrap().check
}

fn release(version: &str, channel: &str) -> Release {
    Release {
        version: version.into(),
        channel: channel.into(),
        size: 1234,
        sha256: "c2hhMjU2".into(),
        sha1: "c2hhMQ==".into(),
        file: PathBuf::from(format!("/nonexistent/{version}")),
    }
}

fn event(kind: EventType, result: EventResult, code: Option<u32>, prev: Option<&str>) -> Event {
    Event {
        error_code: code,
        previous_version: prev.map(str::to_string),
        ..Event::new(kind, result)
    }
}

#[test]
fn offers_follow_channels_groups_and_the_rollout_policy() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::new(Store::open(&dir.path().join("db")).unwrap(), "http://u:1/");
    assert_eq!(check(&svc, "m1", "1.0.0", "stable"), UpdateCheck::NoUpdate);
    svc.with_store(|s| {
        s.publish(&release("1.1.0", "stable"), 10).unwrap();
        s.publish(&release("1.2.0", "beta"), 10).unwrap();
        s.publish(&release("1.0.5", "stable"), 10).unwrap();
        assert!(s.publish(&release("one", "stable"), 10).is_err());
    });
    // The newest of the group's channel, newer than what runs.
    let UpdateCheck::Update(o) = check(&svc, "m1", "1.0.0", "stable") else {
        panic!("no offer")
    };
    assert_eq!(
        (o.version.as_str(), o.urls[0].as_str()),
        ("1.1.0", "http://u:1/files/1.1.0/")
    );
    assert_eq!(o.package.size, 1234);
    assert_eq!(
        check(&svc, "m2", "1.1.0", "stable"),
        UpdateCheck::NoUpdate,
        "up to date"
    );
    assert_eq!(
        check(&svc, "m3", "2.0.0", "stable"),
        UpdateCheck::NoUpdate,
        "never a downgrade"
    );
    // Flatcar-era clients send the group's UUID.
    assert!(matches!(
        check(&svc, "m4", "1.0.0", "3fe10490-dd73-4b49-b72a-28ac19acfcdc"),
        UpdateCheck::Update(o) if o.version == "1.2.0"
    ));
    assert_eq!(
        check(&svc, "m5", "1.0.0", "nightly"),
        UpdateCheck::NoUpdate,
        "no such group"
    );
    // At most one update an hour: the next instance waits; the granted one is offered again.
    svc.with_store(|s| {
        s.set_group(&Group {
            name: "stable".into(),
            channel: "stable".into(),
            updates_enabled: true,
            paused: false,
            safe_mode: true,
            max_updates: 1,
            period_secs: 3600,
            update_timeout_secs: 3600,
        })
        .unwrap()
    });
    assert_eq!(
        check(&svc, "m6", "1.0.0", "stable"),
        UpdateCheck::NoUpdate,
        "rate-limited"
    );
    assert!(matches!(
        check(&svc, "m1", "1.0.0", "stable"),
        UpdateCheck::Update(_)
    ));
    // Paused: nothing.
    svc.with_store(|s| assert!(s.set_paused("stable", true).unwrap()));
    assert_eq!(check(&svc, "m1", "1.0.0", "stable"), UpdateCheck::NoUpdate);
    // Unknown applications and garbage.
    let other = request("m1", "1.0.0", "stable", true, Vec::new()).replace("e96281a6", "00000000");
    let (status, body) = svc.answer(&other, 1000);
    assert_eq!(status, 200);
    assert!(
        body.contains("status=\"error-unknownApplication\""),
        "{body}"
    );
    let before = svc.with_store(|s| s.instances().unwrap());
    for bad in [
        "",
        "<request protocol=\"3.0\"><app/></request>",
        "<request protocol=\"2.0\"></request>",
        "\u{0}\u{1}<<<",
    ] {
        assert_eq!(svc.answer(bad, 1000).0, 400, "{bad:?}");
    }
    assert_eq!(
        svc.with_store(|s| s.instances().unwrap()),
        before,
        "nothing recorded"
    );
}

#[test]
fn events_move_the_instance_and_a_failure_pauses_a_safe_group() {
    let path = tempfile::tempdir().unwrap();
    let db = path.path().join("db");
    let svc = Service::new(Store::open(&db).unwrap(), "http://u:1");
    svc.with_store(|s| s.publish(&release("1.1.0", "stable"), 10).unwrap());
    let status =
        |svc: &Service, m: &str| svc.with_store(|s| s.instance(m).unwrap().unwrap().status);
    check(&svc, "m1", "1.0.0", "stable");
    assert_eq!(status(&svc, "m1"), "UpdateGranted");
    for (e, want) in [
        (
            event(EventType::DownloadStarted, EventResult::Success, None, None),
            "Downloading",
        ),
        (
            event(
                EventType::DownloadFinished,
                EventResult::Success,
                None,
                None,
            ),
            "Downloaded",
        ),
        (
            event(EventType::UpdateComplete, EventResult::Success, None, None),
            "Installed",
        ),
    ] {
        svc.answer(&request("m1", "1.0.0", "stable", false, vec![e]), 1001);
        assert_eq!(status(&svc, "m1"), want);
    }
    // The first check after the reboot: 3/2 with the old version.
    let first = request(
        "m1",
        "1.1.0",
        "stable",
        true,
        vec![event(
            EventType::UpdateComplete,
            EventResult::SuccessReboot,
            None,
            Some("1.0.0"),
        )],
    );
    svc.answer(&first, 1002);
    let m1 = svc.with_store(|s| s.instance("m1").unwrap().unwrap());
    assert_eq!(
        (m1.status.as_str(), m1.version.as_str()),
        ("Complete", "1.1.0")
    );
    // Another machine rolls back: counted, and the safe group stops.
    check(&svc, "m2", "1.0.0", "stable");
    svc.answer(
        &request(
            "m2",
            "1.0.0",
            "stable",
            false,
            vec![event(
                EventType::UpdateComplete,
                EventResult::Error,
                Some(44),
                None,
            )],
        ),
        1003,
    );
    let m2 = svc.with_store(|s| s.instance("m2").unwrap().unwrap());
    assert_eq!(
        (m2.status.as_str(), m2.failures, m2.rollbacks),
        ("RolledBack", 1, 1)
    );
    assert!(svc.with_store(|s| s.group("stable").unwrap().unwrap().paused));
    assert_eq!(check(&svc, "m3", "1.0.0", "stable"), UpdateCheck::NoUpdate);
    // A restart loses nothing.
    drop(svc);
    let store = Store::open(&db).unwrap();
    assert_eq!(store.instances().unwrap().len(), 3);
    let history = store.events("m1").unwrap();
    assert_eq!(
        history
            .iter()
            .map(|e| (e.kind, e.result))
            .collect::<Vec<_>>(),
        [(13, 1), (14, 1), (3, 1), (3, 2)]
    );
    assert!(store.group("stable").unwrap().unwrap().paused);
}

#[test]
fn routine_check_ins_are_kept_only_when_the_version_changes() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::new(Store::open(&dir.path().join("db")).unwrap(), "http://u:1/");
    let checkin = |version: &str, at: i64| {
        let e = event(
            EventType::UpdateComplete,
            EventResult::SuccessReboot,
            None,
            Some(""),
        );
        let (status, body) = svc.answer(&request("m1", version, "stable", true, vec![e]), at);
        assert_eq!(status, 200, "{body}");
    };
    for at in 0..5 {
        checkin("1.0.0", at);
    }
    checkin("1.1.0", 10);
    checkin("1.1.0", 11);
    let history: Vec<(u32, String)> = svc.with_store(|s| {
        s.events("m1")
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.version))
            .collect()
    });
    assert_eq!(history, [(3, "1.0.0".into()), (3, "1.1.0".into())]);
    let last = svc.with_store(|s| s.instance("m1").unwrap().unwrap().last_check);
    assert_eq!(last, 11, "every check still counts as a check");
}

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn update_engine_takes_a_release_from_the_service_over_http() {
    let dir = tempfile::tempdir().unwrap();
    // A release: a 2 MiB /usr, signed.
    let key = update_payload::new_signing_key().unwrap();
    let usr = dir.path().join("usr.img");
    let image: Vec<u8> = (0..2u32 << 20).map(|i| (i / 4096 % 241) as u8).collect();
    std::fs::write(&usr, &image).unwrap();
    let payload = dir.path().join("update.gz");
    let g = update_payload::generate(&usr, &payload, &key).unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    // The service on loopback.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let svc = Arc::new(Service::new(
        Store::open(&dir.path().join("db")).unwrap(),
        &base,
    ));
    svc.with_store(|s| {
        s.publish(
            &Release {
                version: "1.1.0".into(),
                channel: "stable".into(),
                size: g.size,
                sha256: b64(&g.sha256),
                sha1: b64(&g.sha1),
                file: payload.clone(),
            },
            1,
        )
        .unwrap()
    });
    let router = update_server::router(svc.clone());
    rt.spawn(async move { axum::serve(listener, router).await });
    // A machine on 1.0.0 pointed at it.
    let root = dir.path().join("root");
    put(
        &root,
        "usr/share/coreos/release",
        "COREOS_RELEASE_VERSION=1.0.0\n",
    );
    put(
        &root,
        "etc/coreos/update.conf",
        &format!("SERVER={base}/v1/update/\n"),
    );
    let disk = dir.path().join("disk.img");
    Disk::create(&disk, &Layout::coreos(8192, 8192)).unwrap();
    let paths = update_engine::conf::Paths::under(&root);
    let identity = update_engine::attempt::Identity {
        machine_id: "0123456789abcdef0123456789abcdef".into(),
        boot_id: "{b}".into(),
        arch: "x86_64".into(),
        key: update_payload::PublicKey::Ed25519(key.verifying_key()),
    };
    let mut omaha = update_engine::http::HttpOmaha::default();
    let mut download =
        update_engine::http::HttpDownload::with_retries(2, std::time::Duration::from_millis(50));
    // USR-A active, USR-B passive, on a disk image.
    let slots = update_engine::slots::ImageSlots {
        disk: disk.clone(),
        active: "USR-A".into(),
    };
    let mut quiet = |_: &update_engine::status::Report| {};
    let mut u = update_engine::attempt::Updater {
        paths: &paths,
        identity: &identity,
        omaha: &mut omaha,
        download: &mut download,
        slots: &slots,
        on_report: &mut quiet,
    };
    let mut report = update_engine::status::Report::default();
    let out = u.attempt(InstallSource::OnDemand, &mut report, 1);
    assert_eq!(
        out,
        update_engine::attempt::Outcome::Updated {
            version: "1.1.0".into(),
            slot: "USR-B".into()
        }
    );
    let b = Disk::open(&disk).partition("USR-B").unwrap();
    let data = std::fs::read(&disk).unwrap();
    assert_eq!(
        &data[b.offset() as usize..b.offset() as usize + image.len()],
        image.as_slice()
    );
    let m = svc.with_store(|s| {
        s.instance("0123456789abcdef0123456789abcdef")
            .unwrap()
            .unwrap()
    });
    assert_eq!(
        (m.status.as_str(), m.offered.as_deref()),
        ("Installed", Some("1.1.0"))
    );
    // A resumed download gets the rest of the file.
    let resp = ureq_get_range(&format!("{base}/files/1.1.0/update.gz"), g.size - 10);
    assert_eq!(
        resp,
        (
            206,
            std::fs::read(&payload).unwrap()[(g.size - 10) as usize..].to_vec()
        )
    );
    assert_eq!(
        ureq_get_range(&format!("{base}/files/9.9.9/update.gz"), 0).0,
        404
    );
}

fn ureq_get_range(url: &str, from: u64) -> (u16, Vec<u8>) {
    use std::io::Read;
    let r = match ureq::get(url)
        .set("Range", &format!("bytes={from}-"))
        .call()
    {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = r.status();
    let mut body = Vec::new();
    r.into_reader().read_to_end(&mut body).unwrap();
    (status, body)
}

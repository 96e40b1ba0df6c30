//! One update attempt end to end, with the update service and the downloads played by the
//! test and a real disk image's USR-B as the passive slot: what is sent, in what order,
//! what is written, which GPT bits change — and what is not touched when anything fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::path::{Path, PathBuf};

use base64::Engine;
use coreos_disk::{Disk, GptPrio, Layout};
use omaha::codes::{EventResult, EventType, FLAG_TEST_OMAHA_URL};
use omaha::{AppAnswer, InstallSource, Offer, Package, Request, Response, UpdateCheck};
use update_engine::attempt::{
    after_boot, Boot, Download, Identity, Omaha, Outcome, Slot, Slots, Updater,
};
use update_engine::conf::Paths;
use update_engine::slots::ImageSlots;
use update_engine::status::{Report, Status};

/// The update service: answers checks with `offer` (or no update), records every request.
struct Service {
    offer: Option<Offer>,
    http_status: u16,
    requests: Vec<Request>,
}

impl Omaha for Service {
    fn post(&mut self, url: &str, body: &str) -> Result<(u16, String), String> {
        assert_eq!(url, "http://127.0.0.1:1/v1/update/");
        let req = Request::parse(body).unwrap();
        let app = &req.apps[0];
        let answer = AppAnswer::Ok {
            check: app.update_check.then(|| match &self.offer {
                Some(o) => UpdateCheck::Update(o.clone()),
                None => UpdateCheck::NoUpdate,
            }),
            poll_interval: None,
            events: app.events.len(),
            ping: app.ping,
        };
        let body = Response {
            server: "test".into(),
            apps: vec![(app.appid.clone(), answer)],
        }
        .to_xml();
        let status = if app.update_check {
            self.http_status
        } else {
            200
        };
        self.requests.push(req);
        Ok((status, body))
    }
}

impl Service {
    /// A service that answers checks with `offer` (or no update), HTTP 200.
    fn new(offer: Option<Offer>) -> Self {
        Service {
            offer,
            http_status: 200,
            requests: Vec::new(),
        }
    }

    /// Every event sent, in order: (type, result, error code).
    fn events(&self) -> Vec<(u32, u32, Option<u32>)> {
        self.requests
            .iter()
            .filter(|r| !r.apps[0].update_check)
            .flat_map(|r| r.apps[0].events.iter())
            .map(|e| (e.kind.code(), e.result.code(), e.error_code))
            .collect()
    }
}

/// Downloads: the payload file, served as it is (or as the test changed it).
struct Files(PathBuf);

impl Download for Files {
    fn fetch(
        &mut self,
        url: &str,
        dest: &Path,
        size: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), String> {
        assert!(url.ends_with("/update.gz"), "{url}");
        let data = std::fs::read(&self.0).map_err(|e| e.to_string())?;
        if data.len() as u64 > size {
            return Err("larger than offered".into());
        }
        std::fs::write(dest, &data).map_err(|e| e.to_string())?;
        progress(data.len() as u64);
        Ok(())
    }
}

struct World {
    dir: tempfile::TempDir,
    paths: Paths,
    identity: Identity,
    image: Vec<u8>,
    payload: PathBuf,
    offer: Offer,
    disk: PathBuf,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let put = |rel: &str, text: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put(
        "usr/share/coreos/release",
        "COREOS_RELEASE_VERSION=1.0.0\nCOREOS_RELEASE_BOARD=amd64-usr\n",
    );
    put("usr/share/coreos/update.conf", "GROUP=stable\n");
    put(
        "etc/coreos/update.conf",
        "SERVER=http://127.0.0.1:1/v1/update/\n",
    );
    let paths = Paths::under(&root);
    // A 3 MiB /usr, and the disk whose USR-B takes it.
    let image: Vec<u8> = (0..3u32 << 20).map(|i| (i / 4096 % 251) as u8).collect();
    let usr = dir.path().join("usr.img");
    std::fs::write(&usr, &image).unwrap();
    let key = update_payload::new_signing_key().unwrap();
    let payload = dir.path().join("update.gz");
    let g = update_payload::generate(&usr, &payload, &key).unwrap();
    let disk = dir.path().join("disk.img");
    Disk::create(&disk, &Layout::coreos(8192, 8192)).unwrap();
    let offer = Offer {
        urls: vec!["http://127.0.0.1:1/files/1.1.0/".into()],
        version: "1.1.0".into(),
        package: Package {
            name: "update.gz".into(),
            size: g.size,
            sha1_base64: String::new(),
        },
        sha256_base64: base64::engine::general_purpose::STANDARD.encode(g.sha256),
        disable_payload_backoff: true,
    };
    World {
        identity: Identity {
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            boot_id: "{6e1b4f0a-2c8e-4f0e-9a55-0f4c2b2f6c11}".into(),
            arch: "x86_64".into(),
            key: update_payload::PublicKey::Ed25519(key.verifying_key()),
        },
        dir,
        paths,
        image,
        payload,
        offer,
        disk,
    }
}

/// Runs one attempt; returns the outcome and every status reported.
fn attempt(
    w: &World,
    service: &mut Service,
    payload: &Path,
    active: &'static str,
) -> (Outcome, Vec<Status>) {
    let slots = ImageSlots {
        disk: w.disk.clone(),
        active: active.into(),
    };
    attempt_on(w, service, payload, &slots)
}

/// [`attempt`] on given slots.
fn attempt_on(
    w: &World,
    service: &mut Service,
    payload: &Path,
    slots: &dyn Slots,
) -> (Outcome, Vec<Status>) {
    let mut seen = Vec::new();
    let mut on_report = |r: &Report| {
        if seen.last() != Some(&r.status) {
            seen.push(r.status);
        }
    };
    let mut files = Files(payload.to_path_buf());
    let mut u = Updater {
        paths: &w.paths,
        identity: &w.identity,
        omaha: service,
        download: &mut files,
        slots,
        on_report: &mut on_report,
    };
    let mut report = Report::default();
    let out = u.attempt(InstallSource::Scheduler, &mut report, 1_700_000_000);
    (out, seen)
}

fn usr_b(w: &World) -> Vec<u8> {
    let p = Disk::open(&w.disk).partition("USR-B").unwrap();
    let data = std::fs::read(&w.disk).unwrap();
    data[p.offset() as usize..(p.offset() + w.image.len() as u64) as usize].to_vec()
}

fn bits(w: &World, label: &str) -> (u8, u8, bool) {
    let p = Disk::open(&w.disk).partition(label).unwrap().prio;
    (p.priority(), p.tries(), p.successful())
}

#[test]
fn no_update_is_a_check_and_nothing_more() {
    let w = world();
    let mut s = Service::new(None);
    let (out, seen) = attempt(&w, &mut s, &w.payload, "USR-A");
    assert_eq!(
        out,
        Outcome::NoUpdate {
            poll_interval: None
        }
    );
    assert_eq!(seen, [Status::CheckingForUpdate, Status::Idle]);
    let check = &s.requests[0];
    let app = &check.apps[0];
    assert!(app.ping && app.update_check);
    assert_eq!(
        (
            app.version.as_str(),
            app.track.as_str(),
            check.os.sp.as_str()
        ),
        ("1.0.0", "stable", "1.0.0_x86_64")
    );
    // A new install has never completed an update: 0.0.0.0, then "".
    assert_eq!(app.events[0].previous_version.as_deref(), Some("0.0.0.0"));
    attempt(&w, &mut s, &w.payload, "USR-A");
    assert_eq!(
        s.requests[1].apps[0].events[0].previous_version.as_deref(),
        Some("")
    );
    assert_eq!(s.requests.len(), 2, "no events besides the checks");
}

#[test]
fn an_offer_is_downloaded_verified_written_and_marked() {
    let w = world();
    let mut s = Service::new(Some(w.offer.clone()));
    let (out, seen) = attempt(&w, &mut s, &w.payload, "USR-A");
    assert_eq!(
        out,
        Outcome::Updated {
            version: "1.1.0".into(),
            slot: "USR-B".into()
        }
    );
    assert_eq!(
        seen,
        [
            Status::CheckingForUpdate,
            Status::UpdateAvailable,
            Status::Downloading,
            Status::Finalizing,
            Status::UpdatedNeedReboot
        ]
    );
    assert_eq!(s.events(), [(13, 1, None), (14, 1, None), (3, 1, None)]);
    assert_eq!(usr_b(&w), w.image);
    // CoreOS's postinst: B first, one try, not yet good; A untouched.
    assert_eq!(bits(&w, "USR-B"), (2, 1, false));
    assert_eq!(bits(&w, "USR-A"), (1, 0, true));
    assert!(w.paths.marker.exists());
    assert!(
        !w.paths.state.join("payload").exists(),
        "the payload is removed once written"
    );
    assert_eq!(
        after_boot(
            &w.paths,
            &ImageSlots {
                disk: w.disk.clone(),
                active: "USR-A".into()
            }
        )
        .unwrap(),
        Boot::RebootPending
    );
}

#[test]
fn a_damaged_payload_touches_nothing_and_is_reported() {
    let w = world();
    let mut bad = std::fs::read(&w.payload).unwrap();
    let n = bad.len();
    bad[n / 2] ^= 0x55;
    let damaged = w.dir.path().join("damaged.gz");
    std::fs::write(&damaged, &bad).unwrap();
    let mut s = Service::new(Some(w.offer.clone()));
    let (out, seen) = attempt(&w, &mut s, &damaged, "USR-A");
    let code = 10 | FLAG_TEST_OMAHA_URL;
    assert!(
        matches!(&out, Outcome::Failed { code: c, .. } if *c == code),
        "{out:?}"
    );
    assert_eq!(seen.last(), Some(&Status::Idle));
    assert!(seen.contains(&Status::ReportingErrorEvent));
    assert_eq!(s.events(), [(13, 1, None), (3, 0, Some(code))]);
    assert!(usr_b(&w).iter().all(|b| *b == 0), "USR-B was written");
    assert_eq!(bits(&w, "USR-B"), (0, 0, false));
    assert!(!w.paths.marker.exists());
    assert!(
        !w.paths.state.join("payload").exists(),
        "a payload that fails is not resumed"
    );
    // A busy server: reported with HTTP's code, and said to be busy.
    let mut s = Service {
        http_status: 503,
        ..Service::new(None)
    };
    let (out, _) = attempt(&w, &mut s, &w.payload, "USR-A");
    assert!(
        matches!(out, Outcome::Failed { code, server_busy: true, .. } if code == 2503 | FLAG_TEST_OMAHA_URL),
        "{out:?}"
    );
}

#[test]
fn a_rollback_is_reported_once_and_that_version_never_installed_again() {
    let w = world();
    let mut s = Service::new(Some(w.offer.clone()));
    attempt(&w, &mut s, &w.payload, "USR-A");
    // The reboot: the marker is on tmpfs, gone. B failed, the machine came back on A.
    std::fs::remove_file(&w.paths.marker).unwrap();
    let on_a = ImageSlots {
        disk: w.disk.clone(),
        active: "USR-A".into(),
    };
    assert_eq!(
        after_boot(&w.paths, &on_a).unwrap(),
        Boot::RolledBack {
            version: "1.1.0".into()
        }
    );
    assert_eq!(
        after_boot(&w.paths, &on_a).unwrap(),
        Boot::Nothing,
        "found once"
    );
    // Mark B as spent, as the boot left it, and overwrite it to see it is not rewritten.
    let d = Disk::open(&w.disk);
    d.set_gptprio(4, GptPrio::new(2, 0, false)).unwrap();
    let mut s = Service::new(Some(w.offer.clone()));
    let (out, _) = attempt(&w, &mut s, &w.payload, "USR-A");
    assert_eq!(
        out,
        Outcome::Ignored {
            version: "1.1.0".into()
        }
    );
    assert_eq!(
        s.events(),
        [(3, 0, Some(44)), (3, 9, Some(35 | FLAG_TEST_OMAHA_URL))]
    );
    // The check after a rollback does not claim a completed update.
    let check = s.requests.iter().find(|r| r.apps[0].update_check).unwrap();
    assert_eq!(
        check.apps[0].events[0].previous_version.as_deref(),
        Some("")
    );
    assert_eq!(check.apps[0].events[0].kind, EventType::UpdateComplete);
    assert_eq!(check.apps[0].events[0].result, EventResult::SuccessReboot);
    assert_eq!(bits(&w, "USR-B"), (2, 0, false));
    // Reported once.
    let mut s2 = Service::new(None);
    attempt(&w, &mut s2, &w.payload, "USR-A");
    assert!(s2.events().is_empty());
}

#[test]
fn an_update_that_booted_completes_on_the_next_check() {
    let w = world();
    let mut s = Service::new(Some(w.offer.clone()));
    attempt(&w, &mut s, &w.payload, "USR-A");
    std::fs::remove_file(&w.paths.marker).unwrap();
    // Booted B (its try spent), now running 1.1.0 on trial: nothing is concluded, and no
    // check is made — an update now would overwrite A, the slot a failed trial falls back to.
    let on_b = ImageSlots {
        disk: w.disk.clone(),
        active: "USR-B".into(),
    };
    let d = Disk::open(&w.disk);
    d.set_gptprio(4, GptPrio::new(2, 0, false)).unwrap();
    let on_trial = Boot::OnTrial {
        version: "1.1.0".into(),
    };
    assert_eq!(after_boot(&w.paths, &on_b).unwrap(), on_trial);
    assert_eq!(after_boot(&w.paths, &on_b).unwrap(), on_trial, "still");
    std::fs::write(
        w.paths.root.join("usr/share/coreos/release"),
        "COREOS_RELEASE_VERSION=1.1.0\n",
    )
    .unwrap();
    let mut s = Service::new(Some(w.offer.clone()));
    let (out, _) = attempt(&w, &mut s, &w.payload, "USR-B");
    assert_eq!(out, Outcome::OnTrial);
    assert!(s.requests.is_empty(), "no check on trial");
    // The health gate marks it good: the update booted, and the next check completes it.
    d.set_gptprio(4, GptPrio::new(2, 0, true)).unwrap();
    assert_eq!(
        after_boot(&w.paths, &on_b).unwrap(),
        Boot::Booted {
            version: "1.1.0".into()
        }
    );
    let mut s = Service::new(None);
    attempt(&w, &mut s, &w.payload, "USR-B");
    let ev = &s.requests[0].apps[0].events[0];
    assert_eq!(
        ev.previous_version.as_deref(),
        Some("1.0.0"),
        "the server marks it Complete"
    );
    assert_eq!(s.requests[0].apps[0].version, "1.1.0");
}

/// Slots that fail at one step: the passive slot cannot be written, or postinst fails.
struct Faulty {
    inner: ImageSlots,
    unwritable: bool,
    postinst_fails: bool,
}

impl Slots for Faulty {
    fn passive(&self) -> Result<Slot, String> {
        let mut slot = self.inner.passive()?;
        if self.unwritable {
            // A directory where the slot should be: opening it for writing fails.
            slot.path = slot.path.parent().unwrap().to_path_buf();
        }
        Ok(slot)
    }
    fn active_label(&self) -> Result<String, String> {
        self.inner.active_label()
    }
    fn postinst(&self, slot: &Slot) -> Result<(), String> {
        if self.postinst_fails {
            return Err("postinst: exit status 1".into());
        }
        self.inner.postinst(slot)
    }
    fn active_good(&self) -> Result<bool, String> {
        self.inner.active_good()
    }
}

#[test]
fn a_failure_at_any_step_leaves_the_boot_as_it_was_and_the_next_attempt_succeeds() {
    let w = world();
    let before = (bits(&w, "USR-A"), bits(&w, "USR-B"));
    let slots = |unwritable, postinst_fails| Faulty {
        inner: ImageSlots {
            disk: w.disk.clone(),
            active: "USR-A".into(),
        },
        unwritable,
        postinst_fails,
    };
    let missing = w.dir.path().join("gone.gz");
    // (what fails, the payload served, the slots)
    let steps: [(&str, &Path, Faulty); 3] = [
        ("download", &missing, slots(false, false)),
        ("write", &w.payload, slots(true, false)),
        ("postinst", &w.payload, slots(false, true)),
    ];
    for (step, payload, faulty) in steps {
        let mut s = Service::new(Some(w.offer.clone()));
        let (out, seen) = attempt_on(&w, &mut s, payload, &faulty);
        assert!(matches!(out, Outcome::Failed { .. }), "{step}: {out:?}");
        assert_eq!(seen.last(), Some(&Status::Idle), "{step}");
        // Reported as a failed update (3/0 with the code).
        let events = s.events();
        assert!(
            events
                .last()
                .is_some_and(|e| (e.0, e.1) == (3, 0) && e.2.is_some()),
            "{step}: {events:?}"
        );
        // The boot is as it was: same bits, no reboot pending, no update pending.
        assert_eq!((bits(&w, "USR-A"), bits(&w, "USR-B")), before, "{step}");
        assert!(!w.paths.marker.exists(), "{step}");
        let on_a = ImageSlots {
            disk: w.disk.clone(),
            active: "USR-A".into(),
        };
        assert_eq!(
            after_boot(&w.paths, &on_a).unwrap(),
            Boot::Nothing,
            "{step}"
        );
    }
    // The next attempt, with nothing failing, takes the update cleanly.
    let mut s = Service::new(Some(w.offer.clone()));
    let (out, _) = attempt(&w, &mut s, &w.payload, "USR-A");
    assert!(matches!(out, Outcome::Updated { .. }), "{out:?}");
    assert_eq!(usr_b(&w), w.image);
    assert_eq!(bits(&w, "USR-B"), (2, 1, false));
}

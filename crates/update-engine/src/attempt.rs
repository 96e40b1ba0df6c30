//! One update attempt, CoreOS's action pipeline (updates.md §3.3) with Ferrite's order of
//! checks: ask the update service; on an offer, download the payload whole (resuming a
//! partial one), **verify it whole** (size, SHA-256, signature, manifest), only then write
//! it to the passive slot and read it back, mark that slot as CoreOS's postinst did
//! (highest priority, one try, not successful), and report each step as Omaha events. The
//! world is reached through [`Omaha`], [`Download`] and [`Slots`], so tests drive it with a
//! server on loopback and a disk image.
//!
//! Boot bookkeeping ([`after_boot`]): an update that was installed and then not booted (the
//! slot fell back) is a rollback — reported (event 3/0, code 44) and that version is never
//! installed again on this machine.

use std::path::{Path, PathBuf};

use omaha::codes::{ErrorCode, EventResult, EventType, FLAG_TEST_OMAHA_URL};
use omaha::{App, CheckResponse, Event, InstallSource, Offer, Os, Request, UpdateCheck};

use crate::conf::{Config, Paths};
use crate::prefs::{key, Prefs};
use crate::status::{Report, Status};

/// The code reported after a rollback: the new version was installed and did not stay
/// booted (Flatcar reports 44).
pub const ROLLED_BACK: u32 = 44;

/// The update service.
pub trait Omaha {
    /// POSTs `body` to `url`: the HTTP status and body, or why there was none.
    fn post(&mut self, url: &str, body: &str) -> Result<(u16, String), String>;
}

/// Payload downloads.
pub trait Download {
    /// GETs `url` into `dest`, resuming from what `dest` already holds, calling `progress`
    /// with the bytes so far; at most `size` bytes are accepted.
    fn fetch(
        &mut self,
        url: &str,
        dest: &Path,
        size: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), String>;
}

/// A USR slot to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// `USR-A` or `USR-B`.
    pub label: String,
    /// The device (or disk image) it is written through.
    pub path: PathBuf,
    /// Where it starts in `path`, bytes.
    pub offset: u64,
    /// Its length, bytes.
    pub len: u64,
}

/// The machine's USR slots.
pub trait Slots {
    /// The slot `/usr` is not mounted from.
    fn passive(&self) -> Result<Slot, String>;
    /// The slot `/usr` is mounted from, by label.
    fn active_label(&self) -> Result<String, String>;
    /// CoreOS's postinst for `slot`: highest priority, one try, not successful.
    fn postinst(&self, slot: &Slot) -> Result<(), String>;
    /// Whether the slot `/usr` is mounted from is marked successful (false: it is on trial,
    /// booted from a try; the health gate has not marked it good yet).
    fn active_good(&self) -> Result<bool, String>;
}

/// The machine's identity in requests.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// `{<boot id>}`.
    pub boot_id: String,
    /// `uname -m`.
    pub arch: String,
    /// The key payloads must be signed with.
    pub key: update_payload::PublicKey,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No update offered.
    NoUpdate {
        /// The server's `PollInterval`.
        poll_interval: Option<u64>,
    },
    /// Installed on the passive slot; a reboot is pending.
    Updated {
        /// The version.
        version: String,
        /// The slot.
        slot: String,
    },
    /// Offered a version that rolled back here before: not installed.
    Ignored {
        /// The version.
        version: String,
    },
    /// The running `/usr` is on trial: no check until the health gate marks it good (an
    /// update now would overwrite the slot a failed trial falls back to).
    OnTrial,
    /// Failed with update_engine's code (flags included).
    Failed {
        /// The code.
        code: u32,
        /// What happened.
        reason: String,
        /// The server answered 500 or 503.
        server_busy: bool,
    },
}

/// Everything one attempt uses.
pub struct Updater<'a> {
    /// Where state lives.
    pub paths: &'a Paths,
    /// Who asks.
    pub identity: &'a Identity,
    /// The update service.
    pub omaha: &'a mut dyn Omaha,
    /// Downloads.
    pub download: &'a mut dyn Download,
    /// The slots.
    pub slots: &'a dyn Slots,
    /// Told every status change and download progress.
    pub on_report: &'a mut dyn FnMut(&Report),
}

impl std::fmt::Debug for Updater<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

/// A failure inside the pipeline: its code and why.
struct Failure(ErrorCode, String);

impl From<update_payload::Error> for Failure {
    fn from(e: update_payload::Error) -> Self {
        Failure(e.code(), e.to_string())
    }
}

impl Updater<'_> {
    fn request(&self, conf: &Config, source: InstallSource, app: App) -> Request {
        Request {
            updater: format!("ferrite-update_engine-{}", env!("CARGO_PKG_VERSION")),
            install_source: source,
            os: Os {
                version: "Chateau".into(),
                platform: "CoreOS".into(),
                sp: format!("{}_{}", conf.version(), self.identity.arch),
            },
            apps: vec![app],
        }
    }

    fn app(&self, conf: &Config, prefs: &Prefs) -> App {
        let (oem, oem_version) = conf.oem();
        App {
            appid: conf.appid().to_string(),
            version: conf.version().to_string(),
            track: conf.group().to_string(),
            bootid: self.identity.boot_id.clone(),
            oem: oem.to_string(),
            oem_version: oem_version.to_string(),
            aleph_version: prefs
                .get(key::ALEPH_VERSION)
                .unwrap_or_else(|| conf.version().to_string()),
            machine_id: self.identity.machine_id.clone(),
            lang: "en-US".into(),
            board: conf.board().to_string(),
            ..App::default()
        }
    }

    /// Sends one event; its answer is ignored, as update_engine ignored it.
    fn event(&mut self, conf: &Config, prefs: &Prefs, event: Event) {
        let mut app = self.app(conf, prefs);
        app.events = vec![event];
        let body = self.request(conf, InstallSource::Scheduler, app).to_xml();
        let _ = self.omaha.post(conf.server(), &body);
    }

    /// Sends a ping (what a machine with a reboot pending sends instead of a check).
    pub fn ping(&mut self) {
        let conf = Config::load(&self.paths.root);
        let prefs = Prefs::new(&self.paths.state);
        let mut app = self.app(&conf, &prefs);
        app.ping = true;
        let body = self.request(&conf, InstallSource::Scheduler, app).to_xml();
        let _ = self.omaha.post(conf.server(), &body);
    }

    fn report(&mut self, r: &mut Report, status: Status) {
        r.status = status;
        (self.on_report)(r);
    }

    /// One attempt: check, and on an offer download, verify, write, mark and report.
    /// `report` is the status to update (its last check time and offer are kept).
    pub fn attempt(&mut self, source: InstallSource, report: &mut Report, now: i64) -> Outcome {
        let conf = Config::load(&self.paths.root);
        let prefs = Prefs::new(&self.paths.state);
        if prefs.get(key::ALEPH_VERSION).is_none() {
            let _ = prefs.set(key::ALEPH_VERSION, conf.version());
        }
        self.report_rollback(&conf, &prefs);
        if self.slots.active_good() == Ok(false) {
            return Outcome::OnTrial;
        }
        self.report(report, Status::CheckingForUpdate);
        let mut app = self.app(&conf, &prefs);
        app.ping = true;
        app.update_check = true;
        app.events = vec![Event {
            previous_version: Some(
                prefs
                    .get(key::PREVIOUS_VERSION)
                    .unwrap_or_else(|| "0.0.0.0".into()),
            ),
            ..Event::new(EventType::UpdateComplete, EventResult::SuccessReboot)
        }];
        let body = self.request(&conf, source, app).to_xml();
        let answer = self.omaha.post(conf.server(), &body);
        // Sent once: later checks say "".
        let _ = prefs.set(key::PREVIOUS_VERSION, "");
        let flags = if conf.test_server() {
            FLAG_TEST_OMAHA_URL
        } else {
            0
        };
        let offer = match answer {
            Err(e) => {
                return self.fail(
                    &conf,
                    &prefs,
                    report,
                    ErrorCode::OmahaRequestError as u32 | flags,
                    e,
                    false,
                )
            }
            Ok((status, _)) if status != 200 => {
                let code = omaha::codes::http_error_code(status) | flags;
                let busy = status == 500 || status == 503;
                return self.fail(&conf, &prefs, report, code, format!("HTTP {status}"), busy);
            }
            Ok((_, text)) => match CheckResponse::parse(&text) {
                Err(e) => {
                    let code = e.code().code() | flags;
                    return self.fail(&conf, &prefs, report, code, e.to_string(), false);
                }
                Ok(CheckResponse {
                    check: UpdateCheck::NoUpdate,
                    poll_interval,
                }) => {
                    report.last_checked_time = now;
                    self.report(report, Status::Idle);
                    return Outcome::NoUpdate { poll_interval };
                }
                Ok(CheckResponse {
                    check: UpdateCheck::Update(offer),
                    ..
                }) => offer,
            },
        };
        report.last_checked_time = now;
        if prefs.failed_versions().contains(&offer.version) {
            self.event(
                &conf,
                &prefs,
                Event {
                    error_code: Some(ErrorCode::UpdateIgnoredPerPolicy.code() | flags),
                    ..Event::new(EventType::UpdateComplete, EventResult::Deferred)
                },
            );
            self.report(report, Status::Idle);
            return Outcome::Ignored {
                version: offer.version,
            };
        }
        report.new_version = offer.version.clone();
        report.new_size = i64::try_from(offer.package.size).unwrap_or(i64::MAX);
        self.report(report, Status::UpdateAvailable);
        match self.install(&conf, &prefs, &offer, report) {
            Ok(slot) => {
                self.event(
                    &conf,
                    &prefs,
                    Event::new(EventType::UpdateComplete, EventResult::Success),
                );
                self.report(report, Status::UpdatedNeedReboot);
                Outcome::Updated {
                    version: offer.version,
                    slot: slot.label,
                }
            }
            Err(Failure(code, reason)) => {
                self.fail(&conf, &prefs, report, code.code() | flags, reason, false)
            }
        }
    }

    fn fail(
        &mut self,
        conf: &Config,
        prefs: &Prefs,
        report: &mut Report,
        code: u32,
        reason: String,
        server_busy: bool,
    ) -> Outcome {
        self.report(report, Status::ReportingErrorEvent);
        self.event(
            conf,
            prefs,
            Event {
                error_code: Some(code),
                ..Event::new(EventType::UpdateComplete, EventResult::Error)
            },
        );
        report.progress = 0.0;
        self.report(report, Status::Idle);
        Outcome::Failed {
            code,
            reason,
            server_busy,
        }
    }

    /// Download, verify, write, read back, mark; the pending update and marker recorded.
    fn install(
        &mut self,
        conf: &Config,
        prefs: &Prefs,
        offer: &Offer,
        report: &mut Report,
    ) -> Result<Slot, Failure> {
        let expected = update_payload::Expected {
            size: offer.package.size,
            sha256: decode_sha256(&offer.sha256_base64).ok_or_else(|| {
                Failure(
                    ErrorCode::OmahaResponseInvalid,
                    format!("sha256 {:?} is not base64 of 32 bytes", offer.sha256_base64),
                )
            })?,
        };
        // Where it will go, before a byte is downloaded (CoreOS's install plan).
        let slot = self
            .slots
            .passive()
            .map_err(|e| Failure(ErrorCode::InstallDeviceOpenError, e))?;
        let payload = self.paths.state.join("payload");
        atomic_file::create_dirs(&self.paths.state)
            .map_err(|e| Failure(ErrorCode::DownloadWriteError, e.to_string()))?;
        self.event(
            conf,
            prefs,
            Event::new(EventType::DownloadStarted, EventResult::Success),
        );
        self.report(report, Status::Downloading);
        let size = offer.package.size;
        let mut last = None;
        for url in offer.payload_urls() {
            let on_report = &mut *self.on_report;
            let mut progress = |got: u64| {
                report.progress = got as f64 / size.max(1) as f64;
                on_report(report);
            };
            match self.download.fetch(&url, &payload, size, &mut progress) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(format!("{url}: {e}")),
            }
        }
        if let Some(e) = last {
            return Err(Failure(ErrorCode::DownloadTransferError, e));
        }
        self.report(report, Status::Finalizing);
        let verified = update_payload::verify(&payload, &expected, &self.identity.key)
            .inspect_err(|_| {
                // A payload that does not verify is not resumed.
                let _ = std::fs::remove_file(&payload);
            })?;
        self.event(
            conf,
            prefs,
            Event::new(EventType::DownloadFinished, EventResult::Success),
        );
        update_payload::apply_to(
            &verified,
            update_payload::Target {
                path: &slot.path,
                offset: slot.offset,
                len: Some(slot.len),
            },
        )?;
        self.slots
            .postinst(&slot)
            .map_err(|e| Failure(ErrorCode::PostinstallRunnerError, e))?;
        let _ = std::fs::remove_file(&payload);
        let record = || -> Result<(), crate::Error> {
            prefs.set(key::PREVIOUS_VERSION, conf.version())?;
            prefs.set(
                key::PENDING_UPDATE,
                &format!("{} {}\n", offer.version, slot.label),
            )?;
            if let Some(dir) = self.paths.marker.parent() {
                atomic_file::create_dirs(dir)?;
            }
            atomic_file::write(&self.paths.marker, b"", &atomic_file::Options::mode(0o644))?;
            Ok(())
        };
        record().map_err(|e| Failure(ErrorCode::Error, e.to_string()))?;
        Ok(slot)
    }

    /// A rollback found at boot is reported with the next check (and only once).
    fn report_rollback(&mut self, conf: &Config, prefs: &Prefs) {
        if prefs.get(ROLLBACK_TO_REPORT).is_some() {
            self.event(
                conf,
                prefs,
                Event {
                    error_code: Some(ROLLED_BACK),
                    ..Event::new(EventType::UpdateComplete, EventResult::Error)
                },
            );
            let _ = prefs.remove(ROLLBACK_TO_REPORT);
        }
    }
}

/// The pref that holds a rollback's version until it is reported.
const ROLLBACK_TO_REPORT: &str = "rollback-to-report";

/// What the boot tells about the last installed update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// No update was pending.
    Nothing,
    /// The reboot into the installed update has not happened (the marker is there).
    RebootPending,
    /// The update booted and is on trial (the health gate has not marked it good yet).
    OnTrial {
        /// Its version.
        version: String,
    },
    /// The update booted and was marked good.
    Booted {
        /// Its version.
        version: String,
    },
    /// The update was installed, and the machine runs the other slot: it rolled back.
    RolledBack {
        /// Its version.
        version: String,
    },
}

/// At start: is a reboot pending, did the last update boot, or did it roll back (then the
/// version is never installed again, and the rollback is reported with the next check).
pub fn after_boot(paths: &Paths, slots: &dyn Slots) -> Result<Boot, crate::Error> {
    if paths.marker.exists() {
        return Ok(Boot::RebootPending);
    }
    let prefs = Prefs::new(&paths.state);
    let Some((version, slot)) = prefs.pending_update() else {
        return Ok(Boot::Nothing);
    };
    let Ok(active) = slots.active_label() else {
        return Ok(Boot::Nothing);
    };
    if active == slot {
        // On trial, it is not over: a failed health gate boots the other slot, and the
        // next start finds the rollback.
        if slots.active_good() == Ok(false) {
            return Ok(Boot::OnTrial { version });
        }
        prefs.remove(key::PENDING_UPDATE)?;
        return Ok(Boot::Booted { version });
    }
    prefs.remove(key::PENDING_UPDATE)?;
    prefs.add_failed_version(&version)?;
    // Nothing completed: the running version is the one that was running before.
    prefs.set(key::PREVIOUS_VERSION, "")?;
    prefs.set(ROLLBACK_TO_REPORT, &version)?;
    Ok(Boot::RolledBack { version })
}

/// Base64 of a SHA-256.
fn decode_sha256(b64: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?
        .try_into()
        .ok()
}

//! The update service (CoreUpdate's and Nebraska's role, updates.md §4.5): Omaha v3 on
//! `/v1/update` and `/v1/update/`, payloads on `/files/<version>/update.gz` (with `Range`,
//! for resumed downloads), and every instance with its event history in SQLite (`store`).
//!
//! An update check is offered the newest release of the channel its group follows when it
//! is newer than what the instance runs, the group's updates are on and it is not paused,
//! and the group has granted fewer than its `max_updates` in the current period (a
//! rate-limited check gets `noupdate`, so machines simply retry). Events move the instance:
//! 13/1 Downloading, 14/1 Downloaded, 3/1 Installed, 3/2 with a real previous version
//! Complete, x/0 Error (code 44: RolledBack); a failure pauses a group in safe mode.
//!
//! Invariants: a malformed request gets 400 and changes nothing; the answer to a request is
//! computed from one consistent read of the store, and its records written before it is
//! sent.

pub mod dashboard;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use omaha::{AppAnswer, Offer, Package, Request, UpdateCheck};

pub use store::{EventRecord, Group, Instance, Release, Store};

/// CoreOS's application ID, the one application served.
pub const APPID: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";

/// The group UUIDs some clients send as `track` (Flatcar's era), and their channels.
const GROUP_UUIDS: &[(&str, &str)] = &[
    ("5b810680-e36a-4879-b98a-4f989e80b899", "alpha"),
    ("3fe10490-dd73-4b49-b72a-28ac19acfcdc", "beta"),
    ("9a2deb70-37be-4026-853f-bfdd6b347bbe", "stable"),
];

/// A failure of the service, naming the database or value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database.
    #[error("{path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// A release version that is not a semantic version.
    #[error("release version {0:?} is not X.Y.Z")]
    BadVersion(String),
}

impl Error {
    fn db(path: &Path, source: rusqlite::Error) -> Error {
        Error::Db {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The service: the store and the URL machines download payloads from.
#[derive(Debug)]
pub struct Service {
    store: Mutex<Store>,
    /// `http://host:port`, as machines reach this service.
    pub base_url: String,
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The instance status an event leads to (`None`: unchanged).
fn status_after(e: &omaha::Event) -> Option<&'static str> {
    match (e.kind.code(), e.result.code()) {
        (13, 1) => Some("Downloading"),
        (14, 1) => Some("Downloaded"),
        (3, 1) => Some("Installed"),
        (3, 2) => match e.previous_version.as_deref() {
            Some("" | "0.0.0.0") | None => None,
            Some(_) => Some("Complete"),
        },
        (_, 0) if e.error_code == Some(44) => Some("RolledBack"),
        (_, 0) => Some("Error"),
        _ => None,
    }
}

impl Service {
    /// A service on `store`, its payloads reached at `base_url`.
    pub fn new(store: Store, base_url: &str) -> Service {
        Service {
            store: Mutex::new(store),
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// Runs `f` on the store.
    pub fn with_store<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        let guard = match self.store.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&guard)
    }

    /// The answer to an Omaha request body: (HTTP status, body).
    pub fn answer(&self, body: &str, now: i64) -> (u16, String) {
        let req = match Request::parse(body) {
            Ok(r) => r,
            Err(e) => return (400, format!("{e}\n")),
        };
        let mut apps = Vec::new();
        for app in &req.apps {
            let answer = self.with_store(|s| self.app(s, app, now));
            match answer {
                Ok(a) => apps.push((app.appid.clone(), a)),
                Err(e) => return (500, format!("{e}\n")),
            }
        }
        (
            200,
            omaha::Response {
                server: "ferrite".into(),
                apps,
            }
            .to_xml(),
        )
    }

    fn app(&self, s: &Store, app: &omaha::App, now: i64) -> Result<AppAnswer, Error> {
        let appid = app.appid.trim_matches(|c| c == '{' || c == '}');
        if !appid.eq_ignore_ascii_case(APPID) || app.machine_id.trim().is_empty() {
            return Ok(AppAnswer::Unknown);
        }
        let group = GROUP_UUIDS
            .iter()
            .find(|(uuid, _)| uuid.eq_ignore_ascii_case(&app.track))
            .map_or(app.track.as_str(), |(_, ch)| ch);
        let id = app.machine_id.trim();
        let changed = s.instance(id)?.map(|i| i.version) != Some(app.version.clone());
        s.check_in(id, appid, group, &app.version, now)?;
        for e in &app.events {
            // A routine check-in (3/2 naming no previous version, sent with every check) is
            // kept only when the version it reports is new: the history keeps every change,
            // and does not grow by a row per check.
            let routine = (e.kind.code(), e.result.code()) == (3, 2)
                && matches!(e.previous_version.as_deref(), None | Some("" | "0.0.0.0"));
            if routine && !changed {
                continue;
            }
            s.event(
                id,
                &EventRecord {
                    at: now,
                    kind: e.kind.code(),
                    result: e.result.code(),
                    code: e.error_code,
                    version: app.version.clone(),
                },
                status_after(e),
            )?;
        }
        let check = if app.update_check {
            Some(self.decide(s, id, group, &app.version, now)?)
        } else {
            None
        };
        Ok(AppAnswer::Ok {
            check,
            poll_interval: None,
            events: app.events.len(),
            ping: app.ping,
        })
    }

    /// Offer or not, by the group's policy; an offer is recorded as granted.
    fn decide(
        &self,
        s: &Store,
        id: &str,
        group: &str,
        version: &str,
        now: i64,
    ) -> Result<UpdateCheck, Error> {
        let none = |why: &str| {
            tracing::info!(instance = id, group, version, "no update: {why}");
            Ok(UpdateCheck::NoUpdate)
        };
        let Some(g) = s.group(group)? else {
            return none("no such group");
        };
        if !g.updates_enabled || g.paused {
            return none("the group's updates are off or paused");
        }
        let Some(r) = s.latest(&g.channel)? else {
            return none("no release on the group's channel");
        };
        if !store::newer(&r.version, version) {
            return none(&format!("{} is the newest on {}", r.version, g.channel));
        }
        let already = s.instance(id)?.and_then(|i| i.offered) == Some(r.version.clone());
        if !already && g.max_updates > 0 {
            let since = now - i64::try_from(g.period_secs).unwrap_or(i64::MAX);
            if s.granted_since(&g.name, since)? >= g.max_updates {
                return none("the group's rollout limit for this period is reached");
            }
        }
        if !already {
            s.grant(id, &r.version, now)?;
        }
        tracing::info!(instance = id, group, version, "offering {}", r.version);
        Ok(UpdateCheck::Update(Offer {
            urls: vec![format!("{}/files/{}/", self.base_url, r.version)],
            version: r.version.clone(),
            package: Package {
                name: "update.gz".into(),
                size: r.size,
                sha1_base64: r.sha1.clone(),
            },
            sha256_base64: r.sha256.clone(),
            disable_payload_backoff: true,
        }))
    }
}

async fn omaha(State(svc): State<Arc<Service>>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body);
    let (status, answer) = svc.answer(&text, now());
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "text/xml")],
        answer,
    )
        .into_response()
}

/// The byte the request's `Range: bytes=N-` starts at.
fn range_start(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

async fn file(
    State(svc): State<Arc<Service>>,
    UrlPath((version, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let release = svc.with_store(|s| s.release(&version));
    let Ok(Some(r)) = release else {
        return (StatusCode::NOT_FOUND, "no such release\n").into_response();
    };
    if name != "update.gz" {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    }
    let Ok(mut f) = tokio::fs::File::open(&r.file).await else {
        return (StatusCode::NOT_FOUND, "the payload is gone\n").into_response();
    };
    let start = range_start(&headers).filter(|s| *s < r.size);
    if let Some(s) = start {
        use tokio::io::AsyncSeekExt;
        if f.seek(std::io::SeekFrom::Start(s)).await.is_err() {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    let from = start.unwrap_or(0);
    let stream = futures_util::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, (r.size - from).into());
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if start.is_some() {
        if let Ok(v) = format!("bytes {from}-{}/{}", r.size - 1, r.size).parse() {
            h.insert(header::CONTENT_RANGE, v);
        }
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    resp
}

/// The service's routes.
pub fn router(svc: Arc<Service>) -> axum::Router {
    axum::Router::new()
        .route("/v1/update", axum::routing::post(omaha))
        .route("/v1/update/", axum::routing::post(omaha))
        .route("/files/{version}/{name}", axum::routing::get(file))
        .merge(dashboard::routes())
        .layer(DefaultBodyLimit::max(omaha::MAX_DOCUMENT))
        .with_state(svc)
}

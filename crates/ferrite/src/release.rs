//! `ferrite release build`, `ferrite release publish` and `ferrite update-server`: a new
//! Ferrite version as an image and its signed payload, offered on a channel by a cluster's
//! update service.
//!
//! A release lives in `<state>/releases/<version>/`: `update.gz` (the payload that writes
//! the version's USR-A onto a machine's passive slot, signed with the key of the image
//! cache, `<cache>/keys/update-payload-key.pem`, whose public half every image of that cache
//! carries) and `release.json`. Publishing records it in the cluster's update database
//! (`<state>/clusters/<name>/updates.db`), which `ferrite update-server` serves.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use base64::Engine;
use machine_launcher::Paths;

/// What `release.json` records.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ReleaseFile {
    version: String,
    channel: String,
    size: u64,
    sha256: String,
    sha1: String,
    image_key: String,
}

fn releases_dir(paths: &Paths) -> PathBuf {
    paths.state.join("releases")
}

/// The database of `cluster`'s update service.
pub fn updates_db(paths: &Paths, cluster: &str) -> PathBuf {
    paths.cluster_dir(cluster).join("updates.db")
}

/// Builds version `version` for `channel`: its image (cached like any other) and the
/// payload of its USR-A (with a boot check that always fails when `failing_check`, to
/// rehearse a rollback). Returns a line for the user.
pub fn build(
    version: &str,
    channel: machine_image::Channel,
    failing_check: bool,
) -> Result<String> {
    if semver::Version::parse(version).is_err() {
        bail!("release version {version:?} is not X.Y.Z");
    }
    let image = crate::build_image_version(channel, version, failing_check)?;
    let paths = Paths::from_env();
    let dir = releases_dir(&paths).join(version);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let usr = coreos_disk::Disk::open(&image.path).partition("USR-A")?;
    let key = crate::payload_key()?;
    let payload = dir.join("update.gz");
    let started = std::time::Instant::now();
    let g = update_payload::generate_range(&image.path, usr.offset(), usr.bytes(), &payload, &key)?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let info = ReleaseFile {
        version: version.to_string(),
        channel: channel.as_str().to_string(),
        size: g.size,
        sha256: b64(&g.sha256),
        sha1: b64(&g.sha1),
        image_key: image.key.clone(),
    };
    let json = serde_json::to_vec_pretty(&info)?;
    atomic_file::write(
        &dir.join("release.json"),
        &json,
        &atomic_file::Options::mode(0o644),
    )?;
    Ok(format!(
        "release {version} ({}): {} ({} MiB, {} operations, payload in {:.1} s)",
        channel.as_str(),
        payload.display(),
        g.size >> 20,
        g.operations,
        started.elapsed().as_secs_f64()
    ))
}

/// Offers release `version` on `channel` in `cluster`'s update service.
pub fn publish(version: &str, channel: &str, cluster: &str) -> Result<String> {
    let paths = Paths::from_env();
    let dir = releases_dir(&paths).join(version);
    let json = dir.join("release.json");
    let text = std::fs::read(&json).with_context(|| {
        format!("no release {version} (build it with `ferrite release build --version {version}`)")
    })?;
    let info: ReleaseFile =
        serde_json::from_slice(&text).with_context(|| format!("reading {}", json.display()))?;
    if !paths.cluster_dir(cluster).is_dir() {
        bail!("no cluster {cluster:?} (run ferrite up first)");
    }
    let store = update_server::Store::open(&updates_db(&paths, cluster))?;
    store.publish(
        &update_server::Release {
            version: info.version.clone(),
            channel: channel.to_string(),
            size: info.size,
            sha256: info.sha256,
            sha1: info.sha1,
            file: dir.join("update.gz"),
        },
        now(),
    )?;
    Ok(format!(
        "release {version} published on {channel} in cluster {cluster:?}"
    ))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The port a cluster's update service listens on by default, on its gateway.
pub const PORT: u16 = 8098;

/// Serves `cluster`'s update service until stopped: on `listen`, or by default on the
/// cluster's gateway address inside its switch namespace (where its machines reach it, as
/// `http://<gateway>:8098/v1/update/`), re-run there through `ip netns exec`. Payload URLs
/// use `base_url` (default: `http://<listen>`).
pub fn serve(cluster: &str, listen: Option<&str>, base_url: Option<&str>) -> Result<()> {
    let paths = Paths::from_env();
    let Some(listen) = listen else {
        let state = machine_launcher::ClusterState::load(&paths, cluster)?;
        let exe = std::env::current_exe()?;
        let err = std::os::unix::process::CommandExt::exec(
            host_command::command("ip")
                .args(["netns", "exec", &state.switch_ns()])
                .arg(exe)
                .args(["update-server", "--cluster", cluster, "--listen"])
                .arg(format!("{}:{PORT}", state.gateway())),
        );
        return Err(err).context("running the update service in the cluster's network");
    };
    let db = updates_db(&paths, cluster);
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = update_server::Store::open(&db)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        let base = base_url.map_or_else(|| format!("http://{addr}"), str::to_string);
        let svc = Arc::new(update_server::Service::new(store, &base));
        eprintln!(
            "update service of cluster {cluster:?} on {addr} ({}), payloads from {base}",
            display(&db)
        );
        axum::serve(listener, update_server::router(svc))
            .await
            .context("serving")
    })
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

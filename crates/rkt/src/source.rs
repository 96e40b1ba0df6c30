//! What `rkt fetch` and `rkt run` accept as an image, and getting it into the store.
//!
//! - `docker://[host[:port]/]repo[:tag]`: pulled from the registry (HTTP: the cluster's own
//!   registry) and converted; Docker images carry no signature, so this needs
//!   `--insecure-options=image`, as in rkt.
//! - A file: an ACI (plain, gzip or bzip2), a `docker save` archive, or an OCI image layout
//!   (a tar archive or a directory). An ACI's OpenPGP signature (`<file>.asc`, or
//!   `--signature`) is checked against the keys `rkt trust` added for its name ([`crate::trust`])
//!   unless `--insecure-options=image`; Docker and OCI archives carry no signature, so they
//!   need that option.
//! - `sha512-…` or `name[:version]`: an image already in the store (there is no discovery:
//!   these machines reach no image server but the cluster's registry).
//!
//! Pull policy (`--pull-policy`): `new` fetches a remote image only if the store has none
//! from that remote; `update` always fetches; `never` uses the store only.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::aci;
use crate::convert::{self, Origin};
use crate::store::{Record, Store};
use crate::Error;

/// How images are fetched.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--insecure-options=image`: no signature check.
    pub insecure_image: bool,
    pub pull_policy: PullPolicy,
    /// `--signature`: the detached signature of the (single) ACI file.
    pub signature: Option<PathBuf>,
    /// The configuration directories whose `trustedkeys` are trusted (system, local).
    pub trust_configs: Vec<PathBuf>,
}

/// `--pull-policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    Never,
    #[default]
    New,
    Update,
}

impl std::str::FromStr for PullPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "never" => Ok(PullPolicy::Never),
            "new" => Ok(PullPolicy::New),
            "update" => Ok(PullPolicy::Update),
            other => Err(Error::Usage(format!(
                "--pull-policy={other:?}: must be never, new or update"
            ))),
        }
    }
}

/// A parsed `docker://` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRef {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

/// The registry images without a host come from.
pub const DOCKER_HUB: &str = "registry-1.docker.io";

/// Parses what follows `docker://`: the first component is a registry when it has a `.` or
/// a `:` or is `localhost` (Docker's rule); the Hub's single names get `library/`.
///
/// # Errors
/// [`Error::Usage`] for an empty name or one with characters Docker refuses.
pub fn parse_docker(rest: &str) -> Result<DockerRef, Error> {
    let bad = |why: &str| Error::Usage(format!("docker://{rest}: {why}"));
    if rest.is_empty() {
        return Err(bad("no image name"));
    }
    if rest.contains('@') {
        return Err(bad("references by digest are not supported; use a tag"));
    }
    let (registry, path) = match rest.split_once('/') {
        Some((first, more))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), more.to_string())
        }
        _ => (DOCKER_HUB.to_string(), rest.to_string()),
    };
    let (repo, tag) = match path.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
        _ => (path.clone(), "latest".to_string()),
    };
    let repository = if registry == DOCKER_HUB && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo
    };
    let ok = |s: &str, extra: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
    };
    if !ok(&repository, "._-/") || repository.starts_with('/') || repository.ends_with('/') {
        return Err(bad("a repository name has only a-z, 0-9 and ._-/"));
    }
    if !tag
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        || tag.is_empty()
        || tag.len() > 128
    {
        return Err(bad("a tag has only letters, digits and ._- (at most 128)"));
    }
    Ok(DockerRef {
        registry,
        repository,
        tag,
    })
}

/// Gets `image` into the store, printing progress on standard error as rkt does.
///
/// # Errors
/// Whatever stops it: a bad reference, an unverifiable image, a registry's failure, a
/// damaged archive. Nothing is stored then.
pub fn fetch(store: &Store, image: &str, opts: &Options) -> Result<Record, Error> {
    if let Some(rest) = image.strip_prefix("docker://") {
        let r = parse_docker(rest)?;
        if !opts.insecure_image {
            return Err(Error::Unverified(
                "signature verification for docker images is not supported (try --insecure-options=image)"
                    .into(),
            ));
        }
        if opts.pull_policy != PullPolicy::Update {
            if let Some(found) = store.by_remote(image) {
                return Ok(found);
            }
        }
        if opts.pull_policy == PullPolicy::Never {
            return Err(Error::NoImage(image.to_string()));
        }
        eprintln!("rkt: fetching image from {image}");
        eprintln!("rkt: warning: image signature verification has been disabled");
        let pulled = container_image::pull::pull(&r.registry, &r.repository, &r.tag)?;
        for l in &pulled.layers {
            eprintln!(
                "Downloading layer: {}",
                l.diff_id.trim_start_matches("sha256:")
            );
        }
        let origin = Origin {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            tag: r.tag.clone(),
            original: rest.to_string(),
        };
        let aci = convert::to_aci(&pulled, &origin)?;
        return store.add(&aci, Some(image));
    }
    if image.starts_with("http://") || image.starts_with("https://") {
        return Err(Error::Usage(format!(
            "{image}: fetching ACIs over HTTP is not supported; fetch it with docker:// from the cluster's registry, or copy the file here"
        )));
    }
    let path = Path::new(image);
    if path.exists() || image.contains('/') && !looks_like_name(image) {
        return fetch_file(store, path, opts);
    }
    match store.find(image) {
        Ok(r) => Ok(r),
        Err(Error::NoImage(_)) if !image.starts_with("sha512-") => Err(Error::NoImage(format!(
            "{image} (not in the store, and image discovery is not available: use docker:// or a file)"
        ))),
        Err(e) => Err(e),
    }
}

/// A name like `example.com/app:1.0` rather than a path (no leading `.` or `/`).
fn looks_like_name(s: &str) -> bool {
    !(s.starts_with('/') || s.starts_with('.'))
}

/// Reads a local image: ACI, `docker save` archive, or OCI layout (archive or directory).
fn fetch_file(store: &Store, path: &Path, opts: &Options) -> Result<Record, Error> {
    let what = path.display().to_string();
    if path.is_dir() {
        if !opts.insecure_image {
            return Err(unsigned_archive(&what, "an OCI image layout"));
        }
        let image = oci_from_dir(path)?;
        return store_converted(store, &image, path, opts);
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(|e| Error::io(path, e))?
        .take(aci::MAX_ACI + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let original = (!opts.insecure_image).then(|| bytes.clone());
    let tar = aci::decompress(bytes, &what, aci::MAX_ACI)?;
    let names = top_level_files(&tar, &what)?;
    if names.iter().any(|n| n == "manifest") {
        let aci = aci::read(tar, &what)?;
        match original {
            Some(file) => {
                let asc = opts
                    .signature
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(format!("{what}.asc")));
                let who =
                    crate::trust::verify(&opts.trust_configs, &aci.manifest.name, &file, &asc)?;
                eprintln!("rkt: signature verified:");
                for w in who {
                    eprintln!("  {w}");
                }
            }
            None => eprintln!("rkt: warning: image signature verification has been disabled"),
        }
        return store.add(&aci, None);
    }
    if !opts.insecure_image {
        return Err(unsigned_archive(&what, "a Docker or OCI archive"));
    }
    if names.iter().any(|n| n == "manifest.json") {
        let saved = container_image::archive::read(path)?;
        let tag = saved.tags.first().cloned().unwrap_or_default();
        let (repo, tag) = match tag.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
            _ if tag.is_empty() => (file_stem(path), "latest".to_string()),
            _ => (tag.clone(), "latest".to_string()),
        };
        let origin = Origin {
            registry: String::new(),
            repository: repo,
            tag,
            original: what.clone(),
        };
        eprintln!("rkt: warning: image signature verification has been disabled");
        let aci = convert::to_aci(&saved.image, &origin)?;
        return store.add(&aci, None);
    }
    if names.iter().any(|n| n == "oci-layout") {
        let image = oci_from_tar(&tar, &what)?;
        return store_converted(store, &image, path, opts);
    }
    Err(Error::image(
        &what,
        "neither an ACI (manifest, rootfs/), a docker save archive (manifest.json) nor an OCI image layout (oci-layout)",
    ))
}

fn unsigned_archive(what: &str, kind: &str) -> Error {
    Error::Unverified(format!(
        "{what}: signature verification for {kind} is not supported (try --insecure-options=image)"
    ))
}

fn file_stem(path: &Path) -> String {
    let s = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let s = s.split('.').next().unwrap_or_default().to_string();
    if s.is_empty() {
        "image".to_string()
    } else {
        s
    }
}

fn store_converted(
    store: &Store,
    image: &(container_image::Image, String),
    path: &Path,
    _opts: &Options,
) -> Result<Record, Error> {
    let (image, reference) = image;
    // `org.opencontainers.image.ref.name` is a full name (`busybox:1.0`) or, as skopeo
    // writes it, a tag alone (the image is then named after the file or directory).
    let (repo, tag) = match reference.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') && !r.is_empty() => (r.to_string(), t.to_string()),
        _ if reference.contains('/') => (reference.clone(), "latest".to_string()),
        _ if !reference.is_empty() => (file_stem(path), reference.clone()),
        _ => (file_stem(path), "latest".to_string()),
    };
    let origin = Origin {
        registry: String::new(),
        repository: repo,
        tag,
        original: path.display().to_string(),
    };
    eprintln!("rkt: warning: image signature verification has been disabled");
    let aci = convert::to_aci(image, &origin)?;
    store.add(&aci, None)
}

/// The names at the top of a tar (first path component), to tell the archive kinds apart.
fn top_level_files(tar: &[u8], what: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(tar);
    let entries = ar
        .entries()
        .map_err(|e| Error::image(what, format!("not a tar archive: {e}")))?;
    for e in entries {
        let e = e.map_err(|e| Error::image(what, format!("damaged or truncated tar: {e}")))?;
        let p = e
            .path()
            .map_err(|e| Error::image(what, format!("entry with a bad path: {e}")))?;
        let s = p.to_string_lossy();
        let s = s.trim_start_matches("./");
        if !s.contains('/') && !s.is_empty() {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

/// Reads blobs of an OCI layout from a tar held in memory.
fn oci_from_tar(tar: &[u8], what: &str) -> Result<(container_image::Image, String), Error> {
    let mut files = std::collections::HashMap::new();
    let mut ar = tar::Archive::new(tar);
    let entries = ar
        .entries()
        .map_err(|e| Error::image(what, format!("not a tar archive: {e}")))?;
    for e in entries {
        let mut e = e.map_err(|e| Error::image(what, format!("damaged or truncated tar: {e}")))?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let p = e
            .path()
            .map_err(|e| Error::image(what, format!("entry with a bad path: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data)
            .map_err(|err| Error::image(what, format!("{p}: truncated: {err}")))?;
        files.insert(p, data);
    }
    oci_image(what, &|name: &str| files.get(name).cloned())
}

/// Reads an OCI layout directory.
fn oci_from_dir(dir: &Path) -> Result<(container_image::Image, String), Error> {
    let what = dir.display().to_string();
    oci_image(&what, &|name: &str| {
        let p = dir.join(name);
        // Blob names come from the layout's own JSON: keep them inside it.
        if !aci::safe_path(Path::new(name)) {
            return None;
        }
        std::fs::read(p).ok()
    })
}

/// An OCI image layout's first image (`index.json` → manifest → config and layers), every
/// blob checked against its digest; and its `org.opencontainers.image.ref.name`.
fn oci_image(
    what: &str,
    read: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<(container_image::Image, String), Error> {
    let bad = |r: String| Error::image(what, r);
    let json = |name: &str| -> Result<serde_json::Value, Error> {
        let bytes = read(name).ok_or_else(|| bad(format!("{name}: missing")))?;
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("{name}: not JSON: {e}")))
    };
    let blob = |d: &serde_json::Value, whose: &str| -> Result<Vec<u8>, Error> {
        let digest = d["digest"]
            .as_str()
            .ok_or_else(|| bad(format!("{whose}: no digest")))?;
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| bad(format!("{whose}: unsupported digest {digest:?}")))?;
        let bytes = read(&format!("blobs/sha256/{hex}"))
            .ok_or_else(|| bad(format!("{whose}: blob {digest} missing")))?;
        let got = container_image::digest(&bytes);
        if got != digest {
            return Err(bad(format!(
                "{whose}: blob's digest is {got}, not {digest}"
            )));
        }
        Ok(bytes)
    };
    let index = json("index.json")?;
    let first = index["manifests"]
        .get(0)
        .ok_or_else(|| bad("index.json names no manifest".into()))?;
    let reference = first["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let manifest: serde_json::Value = serde_json::from_slice(&blob(first, "index.json")?)
        .map_err(|e| bad(format!("manifest: not JSON: {e}")))?;
    let config = blob(&manifest["config"], "manifest's config")?;
    let mut layers = Vec::new();
    let cfg: serde_json::Value =
        serde_json::from_slice(&config).map_err(|e| bad(format!("config: not JSON: {e}")))?;
    let diff_ids = cfg["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, l) in manifest["layers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let bytes = blob(l, &format!("layer {i}"))?;
        layers.push(container_image::Layer {
            gzip: bytes,
            diff_id: diff_ids
                .get(i)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string(),
        });
    }
    Ok((container_image::Image { config, layers }, reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_references() {
        let r = parse_docker("ferrite-registry:5000/busybox:latest").unwrap();
        assert_eq!(r.registry, "ferrite-registry:5000");
        assert_eq!(r.repository, "busybox");
        assert_eq!(r.tag, "latest");
        let r = parse_docker("busybox").unwrap();
        assert_eq!(r.registry, DOCKER_HUB);
        assert_eq!(r.repository, "library/busybox");
        let r = parse_docker("localhost/a/b:1.2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("localhost", "a/b", "1.2")
        );
        assert!(parse_docker("").is_err());
        assert!(parse_docker("Busy Box").is_err());
        assert!(parse_docker("busybox@sha256:00").is_err());
        assert!(parse_docker("busybox:").is_err());
    }
}

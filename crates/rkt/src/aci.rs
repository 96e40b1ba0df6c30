//! App Container images (appc's ACI): the image manifest, and archives read and checked.
//!
//! An ACI is a tar archive holding a file `manifest` (the JSON [`ImageManifest`]) and a
//! directory `rootfs/`, nothing else; it may be compressed with gzip or bzip2. Its ID is
//! `sha512-` and the SHA-512 of the *uncompressed* tar, so the same image has one ID however
//! it travelled. [`read`] checks an archive whole before anything is stored: the manifest's
//! kind and name, every path inside `rootfs/` with no `..`, no absolute link targets that
//! climb out, and a size limit.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha512};

use crate::Error;

/// The appc spec version images written here declare.
pub const AC_VERSION: &str = "0.8.11";
/// The largest uncompressed ACI accepted (an image is held in memory while it is checked).
pub const MAX_ACI: u64 = 2 << 30;

/// A name/value pair, as appc writes labels, annotations and environment variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

/// A mount point an app declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountPoint {
    pub name: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// A port an app declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    pub name: String,
    pub protocol: String,
    pub port: u16,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub socket_activated: bool,
}

fn one() -> u32 {
    1
}

/// What runs: appc's `app` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<String>,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub group: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supplementary_gids: Vec<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_directory: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_points: Vec<MountPoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Fields this implementation does not interpret (isolators, event handlers …), kept.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// appc's image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub ac_kind: String,
    pub ac_version: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<App>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<NameValue>,
    /// Dependencies and anything else, kept as written.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl ImageManifest {
    /// A label's value.
    #[must_use]
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.as_str())
    }

    /// An annotation's value.
    #[must_use]
    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.as_str())
    }

    /// `name:version` as `rkt image list` shows it (the name alone without a version label).
    #[must_use]
    pub fn display_name(&self) -> String {
        match self.label("version") {
            Some(v) => format!("{}:{v}", self.name),
            None => self.name.clone(),
        }
    }

    /// Parses and checks a manifest.
    ///
    /// # Errors
    /// [`Error::Image`] naming `what` when it is not JSON, not an image manifest, or its
    /// name is not an appc identifier.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self, Error> {
        let m: ImageManifest = serde_json::from_slice(bytes).map_err(|e| {
            Error::image(what, format!("manifest is not an appc image manifest: {e}"))
        })?;
        if m.ac_kind != "ImageManifest" {
            return Err(Error::image(
                what,
                format!(
                    "manifest's acKind is {:?}, not \"ImageManifest\"",
                    m.ac_kind
                ),
            ));
        }
        check_identifier(&m.name).map_err(|r| Error::image(what, format!("image name: {r}")))?;
        if let Some(app) = &m.app {
            if let Some(first) = app.exec.first() {
                if !first.starts_with('/') {
                    return Err(Error::image(
                        what,
                        format!("app's exec {first:?} is not an absolute path"),
                    ));
                }
            }
        }
        Ok(m)
    }
}

/// Checks an appc identifier (`AC Identifier`): lower-case letters, digits and `-._~/`,
/// starting and ending with a letter or digit.
///
/// # Errors
/// What is wrong with it.
pub fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > 512 {
        return Err(format!("{} characters (at most 512)", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-._~/".contains(*c)))
    {
        return Err(format!(
            "{name:?} has {c:?}: an appc name has only a-z, 0-9 and -._~/"
        ));
    }
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !ends_ok(name.chars().next()) || !ends_ok(name.chars().last()) {
        return Err(format!(
            "{name:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// Makes an appc identifier of a Docker name (`host:port/repo`): lower case, other
/// characters replaced by `-`, as docker2aci does.
#[must_use]
pub fn sanitize_identifier(name: &str) -> String {
    let s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._~/".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// An ACI read and checked: its uncompressed bytes, ID and manifest.
#[derive(Debug)]
pub struct Aci {
    pub tar: Vec<u8>,
    pub id: String,
    pub manifest: ImageManifest,
}

/// `sha512-<hex>` of `bytes`.
#[must_use]
pub fn id_of(bytes: &[u8]) -> String {
    let h = Sha512::digest(bytes);
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha512-{hex}")
}

/// Uncompresses `bytes` if they are gzip or bzip2 (by their magic numbers). The size is
/// counted first without keeping the data, so a small archive that inflates beyond `limit`
/// (a decompression bomb) is refused without the memory it asks for.
///
/// # Errors
/// [`Error::Image`] for damaged compressed data, an xz archive, or more than `limit` bytes.
pub fn decompress(bytes: Vec<u8>, what: &str, limit: u64) -> Result<Vec<u8>, Error> {
    fn reader<'a>(bytes: &'a [u8]) -> Option<Box<dyn Read + 'a>> {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            Some(Box::new(flate2::read::GzDecoder::new(bytes)))
        } else if bytes.starts_with(b"BZh") {
            Some(Box::new(bzip2::read::BzDecoder::new(bytes)))
        } else {
            None
        }
    }
    if bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(Error::image(
            what,
            "xz-compressed: uncompress it first (unxz)",
        ));
    }
    let damaged = |e: std::io::Error| Error::image(what, format!("damaged compressed data: {e}"));
    let Some(r) = reader(&bytes) else {
        if bytes.len() as u64 > limit {
            return Err(Error::image(
                what,
                format!("larger than {} GiB", limit >> 30),
            ));
        }
        return Ok(bytes);
    };
    let size = std::io::copy(&mut r.take(limit + 1), &mut std::io::sink()).map_err(damaged)?;
    if size > limit {
        return Err(Error::image(
            what,
            format!("larger than {} GiB uncompressed", limit >> 30),
        ));
    }
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    if let Some(r) = reader(&bytes) {
        r.take(limit).read_to_end(&mut out).map_err(damaged)?;
    }
    Ok(out)
}

/// Checks that a path inside an archive stays inside it: relative, no `..`.
pub(crate) fn safe_path(p: &std::path::Path) -> bool {
    use std::path::Component;
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Reads and checks an ACI (`bytes` as found: compressed or not).
///
/// # Errors
/// [`Error::Image`] naming `what` and the problem: not a tar, no manifest, an entry outside
/// `rootfs/`, a path with `..`, a truncated entry.
pub fn read(bytes: Vec<u8>, what: &str) -> Result<Aci, Error> {
    let tar = decompress(bytes, what, MAX_ACI)?;
    let mut manifest = None;
    let mut rootfs = false;
    let mut archive = tar::Archive::new(&tar[..]);
    let entries = archive
        .entries()
        .map_err(|e| Error::image(what, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| Error::image(what, format!("damaged or truncated tar: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| Error::image(what, format!("entry with a bad path: {e}")))?
            .into_owned();
        if !safe_path(&path) {
            return Err(Error::image(
                what,
                format!("entry {} leaves the image", path.display()),
            ));
        }
        let mut comps = path
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir));
        match comps.next().and_then(|c| c.as_os_str().to_str()) {
            Some("manifest") if comps.next().is_none() => {
                let mut m = Vec::new();
                entry
                    .by_ref()
                    .take(1 << 20)
                    .read_to_end(&mut m)
                    .map_err(|e| Error::image(what, format!("reading manifest: {e}")))?;
                manifest = Some(ImageManifest::parse(&m, what)?);
            }
            Some("rootfs") => {
                rootfs = true;
                // Reading the whole entry proves it is not truncated.
                std::io::copy(&mut entry, &mut std::io::sink()).map_err(|e| {
                    Error::image(what, format!("{}: truncated: {e}", path.display()))
                })?;
            }
            _ => {
                return Err(Error::image(
                    what,
                    format!(
                        "entry {} is neither the manifest nor inside rootfs/",
                        path.display()
                    ),
                ))
            }
        }
    }
    let manifest = manifest.ok_or_else(|| Error::image(what, "no manifest: not an ACI"))?;
    if !rootfs {
        return Err(Error::image(what, "no rootfs/ directory: not an ACI"));
    }
    let id = id_of(&tar);
    Ok(Aci { tar, id, manifest })
}

/// Writes an ACI: `manifest`, then `rootfs/` and the given entries (paths relative to the
/// rootfs, in order: a directory before what is in it).
pub(crate) struct Writer {
    builder: tar::Builder<Vec<u8>>,
}

impl Writer {
    pub(crate) fn new(manifest: &ImageManifest) -> std::io::Result<Self> {
        let mut builder = tar::Builder::new(Vec::new());
        let m = serde_json::to_vec_pretty(manifest).map_err(std::io::Error::other)?;
        let mut h = tar::Header::new_gnu();
        h.set_size(m.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        builder.append_data(&mut h, "manifest", &m[..])?;
        let mut d = tar::Header::new_gnu();
        d.set_size(0);
        d.set_mode(0o755);
        d.set_entry_type(tar::EntryType::Directory);
        d.set_mtime(0);
        d.set_uid(0);
        d.set_gid(0);
        builder.append_data(&mut d, "rootfs", std::io::empty())?;
        Ok(Writer { builder })
    }

    /// Adds one entry at `rootfs/<path>`; link targets of hard links are rewritten the same
    /// way.
    pub(crate) fn add(
        &mut self,
        path: &str,
        header: &tar::Header,
        data: &[u8],
    ) -> std::io::Result<()> {
        let mut h = header.clone();
        let full = format!("rootfs/{}", path.trim_start_matches("./"));
        if h.entry_type() == tar::EntryType::Link {
            let target = h
                .link_name()?
                .map(|t| t.to_string_lossy().trim_start_matches("./").to_string())
                .unwrap_or_default();
            self.builder
                .append_link(&mut h, &full, format!("rootfs/{target}"))
        } else if h.entry_type() == tar::EntryType::Symlink {
            let target = h
                .link_name()?
                .map(std::borrow::Cow::into_owned)
                .unwrap_or_default();
            self.builder.append_link(&mut h, &full, target)
        } else {
            h.set_size(data.len() as u64);
            self.builder.append_data(&mut h, &full, data)
        }
    }

    pub(crate) fn finish(self) -> std::io::Result<Vec<u8>> {
        self.builder.into_inner()
    }
}

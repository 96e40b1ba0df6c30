//! `docker save` archives: `manifest.json` names the config and the layers of each image in
//! the archive; every layer is checked against the config's `rootfs.diff_ids` before the
//! image is returned, so a damaged archive is refused whole.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;

use crate::{digest, gzip, Error, Image, Layer};

/// The largest archive read (its files are held in memory).
pub const MAX_BYTES: u64 = 4 << 30;

/// An image read from an archive, with the names it was saved under (`RepoTags`).
#[derive(Debug, Clone)]
pub struct Saved {
    pub image: Image,
    pub tags: Vec<String>,
}

/// Reads the first image of the `docker save` archive at `path`.
///
/// # Errors
/// [`Error::Archive`] naming what is missing, damaged or inconsistent.
pub fn read(path: &Path) -> Result<Saved, Error> {
    let name = path.display().to_string();
    let bad = |reason: String| Error::Archive {
        path: name.clone(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: name.clone(),
        source,
    })?;
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut total = 0u64;
    let mut ar = tar::Archive::new(file);
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("damaged or truncated: {e}")))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let p = entry
            .path()
            .map_err(|e| bad(format!("an entry's name: {e}")))?
            .display()
            .to_string();
        total += entry.size();
        if total > MAX_BYTES {
            return Err(bad(format!("larger than {} GiB", MAX_BYTES >> 30)));
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| bad(format!("{p}: damaged or truncated: {e}")))?;
        files.insert(p.trim_start_matches("./").to_string(), data);
    }
    let manifest = files
        .get("manifest.json")
        .ok_or_else(|| bad("no manifest.json (not a `docker save` archive)".into()))?;
    let manifest: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| bad(format!("manifest.json: {e}")))?;
    let first = manifest
        .get(0)
        .ok_or_else(|| bad("manifest.json names no image".into()))?;
    let config_name = first["Config"]
        .as_str()
        .ok_or_else(|| bad("manifest.json: no Config".into()))?;
    let config = files
        .get(config_name)
        .ok_or_else(|| {
            bad(format!(
                "{config_name}: named by manifest.json, not in the archive"
            ))
        })?
        .clone();
    let parsed: serde_json::Value =
        serde_json::from_slice(&config).map_err(|e| bad(format!("{config_name}: {e}")))?;
    let diff_ids: Vec<&str> = parsed["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    let layer_names: Vec<&str> = first["Layers"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    if layer_names.len() != diff_ids.len() {
        return Err(bad(format!(
            "manifest.json names {} layers, {config_name} {}",
            layer_names.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (i, (lname, want)) in layer_names.iter().zip(&diff_ids).enumerate() {
        let bytes = files
            .get(*lname)
            .ok_or_else(|| bad(format!("layer {i} ({lname}): not in the archive")))?;
        let (tar, compressed) = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("layer {i} ({lname}): damaged gzip: {e}")))?;
            (out, Some(bytes.clone()))
        } else {
            (bytes.clone(), None)
        };
        let got = digest(&tar);
        if got != *want {
            return Err(bad(format!(
                "layer {i} ({lname}): its digest is {got}, {config_name} says {want}"
            )));
        }
        layers.push(Layer {
            gzip: compressed.unwrap_or_else(|| gzip(&tar)),
            diff_id: got,
        });
    }
    let tags = first["RepoTags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(serde_json::Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(Saved {
        image: Image { config, layers },
        tags,
    })
}

/// Writes `image` as a `docker save` archive tagged `tag` (what `docker load` reads).
///
/// # Errors
/// The tar cannot be written (only on an I/O error of `out`).
pub fn write(image: &Image, tag: &str, out: impl std::io::Write) -> std::io::Result<()> {
    let mut b = tar::Builder::new(out);
    let add = |b: &mut tar::Builder<_>, path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, path, data)
    };
    let config_name = format!(
        "{}.json",
        digest(&image.config).trim_start_matches("sha256:")
    );
    add(&mut b, &config_name, &image.config)?;
    let mut names = Vec::new();
    for l in &image.layers {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&l.gzip[..]).read_to_end(&mut tar)?;
        let name = format!("{}/layer.tar", l.diff_id.trim_start_matches("sha256:"));
        add(&mut b, &name, &tar)?;
        names.push(name);
    }
    let manifest =
        serde_json::json!([{ "Config": config_name, "RepoTags": [tag], "Layers": names }]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap_or_default(),
    )?;
    b.into_inner().map(|_| ())
}

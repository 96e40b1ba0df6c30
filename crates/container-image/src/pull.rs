//! Pulling an image from a Docker registry over its HTTP API v2 (plain HTTP: the cluster's
//! registry): the manifest (Docker's schema 2, or an OCI image manifest), then the config and
//! each layer, every blob checked against the digest the manifest names before it is kept.

use std::io::Read as _;
use std::time::Duration;

use crate::{digest, Error, Image, Layer, MANIFEST_V2};

/// An OCI image manifest's media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The largest blob pulled (held in memory).
pub const MAX_BLOB: u64 = 2 << 30;

/// Pulls `repo:tag` from `registry` (`host:port`).
///
/// # Errors
/// [`Error::Registry`] naming the request and the answer, or a digest that does not match.
pub fn pull(registry: &str, repo: &str, tag: &str) -> Result<Image, Error> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .redirects(2)
        .build();
    let base = format!("http://{registry}/v2/{repo}");
    let err = |what: String, reason: String| Error::Registry {
        registry: registry.to_string(),
        what,
        reason,
    };
    let get = |url: &str, accept: &str, what: String| -> Result<Vec<u8>, Error> {
        let r = agent
            .get(url)
            .set("Accept", accept)
            .call()
            .map_err(|e| err(what.clone(), crate::http_reason(e)))?;
        let mut out = Vec::new();
        r.into_reader()
            .take(MAX_BLOB + 1)
            .read_to_end(&mut out)
            .map_err(|e| err(what.clone(), e.to_string()))?;
        if out.len() as u64 > MAX_BLOB {
            return Err(err(what, format!("larger than {} GiB", MAX_BLOB >> 30)));
        }
        Ok(out)
    };
    let manifest = get(
        &format!("{base}/manifests/{tag}"),
        &format!("{MANIFEST_V2}, {OCI_MANIFEST}"),
        format!("GET manifest {repo}:{tag}"),
    )?;
    let m: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| err(format!("manifest {repo}:{tag}"), format!("not JSON: {e}")))?;
    if m["schemaVersion"].as_u64() != Some(2) {
        return Err(err(
            format!("manifest {repo}:{tag}"),
            "not a schema 2 image manifest (a manifest list or schema 1 is not supported)".into(),
        ));
    }
    let blob = |d: &serde_json::Value, what: &str| -> Result<Vec<u8>, Error> {
        let want = d["digest"].as_str().ok_or_else(|| {
            err(
                format!("manifest {repo}:{tag}"),
                format!("{what} has no digest"),
            )
        })?;
        if !want.starts_with("sha256:")
            || want.len() != 71
            || !want[7..].bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(err(
                format!("manifest {repo}:{tag}"),
                format!("{what}: bad digest {want:?}"),
            ));
        }
        let bytes = get(
            &format!("{base}/blobs/{want}"),
            "*/*",
            format!("GET {what} {want}"),
        )?;
        let got = digest(&bytes);
        if got != want {
            return Err(err(
                format!("GET {what} {want}"),
                format!("the bytes' digest is {got}"),
            ));
        }
        Ok(bytes)
    };
    let config = blob(&m["config"], "config")?;
    let cfg: serde_json::Value = serde_json::from_slice(&config)
        .map_err(|e| err(format!("config of {repo}:{tag}"), format!("not JSON: {e}")))?;
    let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let layers_json = m["layers"].as_array().cloned().unwrap_or_default();
    if layers_json.len() != diff_ids.len() {
        return Err(err(
            format!("manifest {repo}:{tag}"),
            format!(
                "{} layers, its config has {} diff_ids",
                layers_json.len(),
                diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::new();
    for (i, (l, diff_id)) in layers_json.iter().zip(diff_ids).enumerate() {
        let gzip = blob(l, &format!("layer {i}"))?;
        layers.push(Layer { gzip, diff_id });
    }
    Ok(Image { config, layers })
}

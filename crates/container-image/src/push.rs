//! Pushing an [`Image`] to a Docker registry over its HTTP API v2: each blob is asked for
//! first (`HEAD`) and uploaded only when missing (`POST` then a monolithic `PUT` with its
//! digest, which the registry checks); the manifest goes last, under its tag.

use std::time::Duration;

use crate::{digest, Error, Image, MANIFEST_V2};

/// Pushes `image` to `registry` (`host:port`, plain HTTP) as `repo:tag`; returns the
/// manifest's digest.
///
/// # Errors
/// [`Error::Registry`] naming the request that failed and the registry's answer.
pub fn push(image: &Image, registry: &str, repo: &str, tag: &str) -> Result<String, Error> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .redirects(0)
        .build();
    let base = format!("http://{registry}/v2/{repo}");
    let fail = |what: String, e: ureq::Error| Error::Registry {
        registry: registry.to_string(),
        what,
        reason: crate::http_reason(e),
    };
    let mut blobs: Vec<&[u8]> = vec![&image.config];
    blobs.extend(image.layers.iter().map(|l| l.gzip.as_slice()));
    for blob in blobs {
        let d = digest(blob);
        match agent.head(&format!("{base}/blobs/{d}")).call() {
            Ok(_) => continue,
            Err(ureq::Error::Status(404, _)) => {}
            Err(e) => return Err(fail(format!("HEAD blob {d}"), e)),
        }
        let started = agent
            .post(&format!("{base}/blobs/uploads/"))
            .send_bytes(&[])
            .map_err(|e| fail(format!("starting the upload of {d}"), e))?;
        let location = started.header("Location").unwrap_or_default().to_string();
        if location.is_empty() {
            return Err(Error::Registry {
                registry: registry.to_string(),
                what: format!("starting the upload of {d}"),
                reason: "no Location in the answer".into(),
            });
        }
        let url = if location.starts_with("http") {
            location
        } else {
            format!("http://{registry}{location}")
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        agent
            .put(&format!("{url}{sep}digest={d}"))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(blob)
            .map_err(|e| fail(format!("uploading {d}"), e))?;
    }
    let manifest = image.manifest();
    agent
        .put(&format!("{base}/manifests/{tag}"))
        .set("Content-Type", MANIFEST_V2)
        .send_bytes(&manifest)
        .map_err(|e| fail(format!("PUT manifest {repo}:{tag}"), e))?;
    Ok(digest(&manifest))
}

/// Waits up to `limit` for the registry to answer `GET /v2/`.
///
/// # Errors
/// [`Error::Registry`] when it never did.
pub fn wait_ready(registry: &str, limit: Duration) -> Result<(), Error> {
    let start = std::time::Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match ureq::get(&format!("http://{registry}/v2/"))
            .timeout(Duration::from_secs(2))
            .call()
        {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::Registry {
        registry: registry.to_string(),
        what: "GET /v2/".into(),
        reason: format!("no answer within {} s: {last}", limit.as_secs()),
    })
}

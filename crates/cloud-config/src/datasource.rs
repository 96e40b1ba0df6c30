//! Where user-data and metadata come from: a file, a URL, the kernel command line, a config
//! drive, an EC2-style or DigitalOcean metadata service.
//!
//! HTTP follows coreos-cloudinit: 10 s per request; fetches "with retry" try at most 15 times
//! with back-off from 50 ms doubling to 5 s; a 4xx answer means "not found" and is not
//! retried (a metadata service's missing user-data is then empty); 5xx and network errors
//! are retried; only `http` and `https` URLs are accepted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::substitute::Addresses;

/// A datasource failure, naming the source and the URL or path.
#[derive(Debug, thiserror::Error)]
pub enum DatasourceError {
    /// A URL with a scheme other than http(s).
    #[error("{0}: only http and https URLs are supported")]
    Scheme(String),
    /// A 4xx answer.
    #[error("{url}: not found (HTTP {status})")]
    NotFound {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// Retries exhausted on 5xx or network errors.
    #[error("{url}: {reason} (after {attempts} attempts)")]
    Unreachable {
        /// The URL.
        url: String,
        /// The last error.
        reason: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Metadata that is not the expected JSON.
    #[error("{what}: invalid JSON: {reason}")]
    Json {
        /// Which document.
        what: String,
        /// The parse error.
        reason: String,
    },
    /// No `cloud-config-url=` on the kernel command line.
    #[error("no cloud-config-url= on the kernel command line ({0})")]
    NoCmdlineUrl(PathBuf),
}

/// What a datasource knows about the machine besides user-data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The addresses for `$public_ipv4` and friends.
    pub addresses: Addresses,
    /// The host name, if the source has one.
    pub hostname: String,
    /// SSH keys for `core`.
    pub ssh_keys: Vec<String>,
}

/// HTTP behaviour; tests shorten the back-off.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    /// Per-request time limit.
    pub timeout: Duration,
    /// Attempts for fetches with retry.
    pub attempts: u32,
    /// First back-off delay.
    pub initial_backoff: Duration,
    /// Largest back-off delay.
    pub max_backoff: Duration,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            attempts: 15,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

enum Fetch {
    Body(Vec<u8>),
    NotFound(u16),
    Retry(String),
}

/// A request header a metadata service requires (GCE's `Metadata-Flavor: Google`).
type Header = Option<(&'static str, &'static str)>;

impl HttpPolicy {
    fn once(&self, url: &str, header: Header) -> Fetch {
        let agent = ureq::AgentBuilder::new().timeout(self.timeout).build();
        let mut req = agent.get(url);
        if let Some((name, value)) = header {
            req = req.set(name, value);
        }
        match req.call() {
            Ok(resp) => {
                let mut body = Vec::new();
                match std::io::Read::read_to_end(
                    &mut std::io::Read::take(resp.into_reader(), 64 * 1024 * 1024),
                    &mut body,
                ) {
                    Ok(_) => Fetch::Body(body),
                    Err(e) => Fetch::Retry(e.to_string()),
                }
            }
            Err(ureq::Error::Status(code, _)) if (400..500).contains(&code) => {
                Fetch::NotFound(code)
            }
            Err(ureq::Error::Status(code, _)) => Fetch::Retry(format!("HTTP {code}")),
            Err(e) => Fetch::Retry(e.to_string()),
        }
    }

    /// One GET: 2xx gives the body.
    pub fn get(&self, url: &str) -> Result<Vec<u8>, DatasourceError> {
        self.fetch(url, 1, None)
    }

    /// A GET retried on 5xx and network errors.
    pub fn get_retry(&self, url: &str) -> Result<Vec<u8>, DatasourceError> {
        self.fetch(url, self.attempts.max(1), None)
    }

    fn fetch(&self, url: &str, attempts: u32, header: Header) -> Result<Vec<u8>, DatasourceError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(DatasourceError::Scheme(url.to_string()));
        }
        let mut delay = self.initial_backoff;
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.once(url, header) {
                Fetch::Body(b) => return Ok(b),
                Fetch::NotFound(status) => {
                    return Err(DatasourceError::NotFound {
                        url: url.to_string(),
                        status,
                    })
                }
                Fetch::Retry(reason) => last = reason,
            }
            if attempt < attempts {
                std::thread::sleep(delay);
                delay = (delay * 2).min(self.max_backoff);
            }
        }
        Err(DatasourceError::Unreachable {
            url: url.to_string(),
            reason: last,
            attempts,
        })
    }

    /// Like [`HttpPolicy::get_retry`], but "not found" is empty.
    fn get_optional(&self, url: &str) -> Result<Vec<u8>, DatasourceError> {
        self.get_optional_with(url, None)
    }

    /// [`HttpPolicy::get_optional`] with a request header.
    fn get_optional_with(&self, url: &str, header: Header) -> Result<Vec<u8>, DatasourceError> {
        match self.fetch(url, self.attempts.max(1), header) {
            Err(DatasourceError::NotFound { .. }) => Ok(Vec::new()),
            other => other,
        }
    }
}

/// One configured source of user-data.
#[derive(Debug, Clone)]
pub enum Datasource {
    /// `-from-file PATH`
    File(PathBuf),
    /// `-from-url URL`
    Url(String),
    /// `-from-proc-cmdline`: the `cloud-config-url=` of this file (normally `/proc/cmdline`).
    ProcCmdline(PathBuf),
    /// `-from-configdrive DIR`
    ConfigDrive(PathBuf),
    /// `-from-ec2-metadata URL` (ending in `/`)
    Ec2(String),
    /// `-from-digitalocean-metadata URL` (ending in `/`)
    DigitalOcean(String),
    /// `-from-gce-metadata URL` (Google Compute Engine's metadata server)
    Gce(String),
}

const EC2_VERSION: &str = "2009-04-04/";

/// GCE's metadata API, under the service's root.
const GCE_API: &str = "computeMetadata/v1/";

/// The header GCE's metadata server requires on every request.
const GCE_HEADER: Header = Some(("Metadata-Flavor", "Google"));

fn with_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).trim().to_string()
}

fn read_file(path: &Path) -> Result<Vec<u8>, DatasourceError> {
    std::fs::read(path).map_err(|source| DatasourceError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The `cloud-config-url` value of a kernel command line (`cloud_config_url` also counts;
/// the last occurrence with a value wins).
pub fn cmdline_url(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .filter_map(|arg| arg.split_once('='))
        .filter(|(k, v)| k.replace('_', "-") == "cloud-config-url" && !v.is_empty())
        .map(|(_, v)| v.to_string())
        .next_back()
}

impl Datasource {
    /// A short name for logs.
    pub fn name(&self) -> String {
        match self {
            Datasource::File(p) => format!("file {}", p.display()),
            Datasource::Url(u) => format!("url {u}"),
            Datasource::ProcCmdline(p) => format!("kernel command line {}", p.display()),
            Datasource::ConfigDrive(p) => format!("config drive {}", p.display()),
            Datasource::Ec2(u) => format!("EC2 metadata service {u}"),
            Datasource::DigitalOcean(u) => format!("DigitalOcean metadata service {u}"),
            Datasource::Gce(u) => format!("GCE metadata service {u}"),
        }
    }

    /// Whether availability can change over time (a missing file may appear, a metadata
    /// service may come up); the kernel command line is checked once.
    pub fn can_become_available(&self) -> bool {
        !matches!(self, Datasource::ProcCmdline(_))
    }

    /// Whether the source is there now.
    pub fn is_available(&self, http: &HttpPolicy) -> bool {
        match self {
            Datasource::File(p) => p.exists(),
            Datasource::ConfigDrive(p) => p.is_dir(),
            Datasource::Url(u) => http.get(u).is_ok(),
            Datasource::ProcCmdline(p) => std::fs::read_to_string(p)
                .ok()
                .and_then(|c| cmdline_url(&c))
                .is_some(),
            Datasource::Ec2(u) => http.get(&format!("{}{EC2_VERSION}", with_slash(u))).is_ok(),
            Datasource::DigitalOcean(u) => {
                http.get(&format!("{}metadata/v1", with_slash(u))).is_ok()
            }
            Datasource::Gce(u) => http
                .fetch(&format!("{}{GCE_API}", with_slash(u)), 1, GCE_HEADER)
                .is_ok(),
        }
    }

    /// The user-data.
    pub fn fetch_userdata(&self, http: &HttpPolicy) -> Result<Vec<u8>, DatasourceError> {
        match self {
            Datasource::File(p) => read_file(p),
            Datasource::Url(u) => http.get_retry(u),
            Datasource::ProcCmdline(p) => {
                let cmdline = String::from_utf8_lossy(&read_file(p)?).into_owned();
                let url = cmdline_url(&cmdline)
                    .ok_or_else(|| DatasourceError::NoCmdlineUrl(p.clone()))?;
                http.get_retry(&url)
            }
            Datasource::ConfigDrive(d) => {
                let p = d.join("openstack/latest/user_data");
                match std::fs::read(&p) {
                    Ok(b) => Ok(b),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                    Err(source) => Err(DatasourceError::Io { path: p, source }),
                }
            }
            Datasource::Ec2(u) => {
                http.get_optional(&format!("{}{EC2_VERSION}user-data", with_slash(u)))
            }
            Datasource::DigitalOcean(u) => {
                http.get_optional(&format!("{}metadata/v1/user-data", with_slash(u)))
            }
            Datasource::Gce(u) => http.get_optional_with(
                &format!("{}{GCE_API}instance/attributes/user-data", with_slash(u)),
                GCE_HEADER,
            ),
        }
    }

    /// The metadata (empty for file, URL and kernel command line sources).
    pub fn fetch_metadata(&self, http: &HttpPolicy) -> Result<Metadata, DatasourceError> {
        match self {
            Datasource::File(_) | Datasource::Url(_) | Datasource::ProcCmdline(_) => {
                Ok(Metadata::default())
            }
            Datasource::ConfigDrive(d) => configdrive_metadata(d),
            Datasource::Ec2(u) => ec2_metadata(&with_slash(u), http),
            Datasource::DigitalOcean(u) => digitalocean_metadata(&with_slash(u), http),
            Datasource::Gce(u) => gce_metadata(&with_slash(u), http),
        }
    }
}

fn json(what: &str, bytes: &[u8]) -> Result<serde_json::Value, DatasourceError> {
    serde_json::from_slice(bytes).map_err(|e| DatasourceError::Json {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

fn configdrive_metadata(dir: &Path) -> Result<Metadata, DatasourceError> {
    let p = dir.join("openstack/latest/meta_data.json");
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Metadata::default()),
        Err(source) => return Err(DatasourceError::Io { path: p, source }),
    };
    let v = json(&p.display().to_string(), &bytes)?;
    let mut keys: Vec<(String, String)> = v
        .get("public_keys")
        .and_then(|k| k.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(n, k)| Some((n.clone(), k.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    Ok(Metadata {
        addresses: Addresses::default(),
        hostname: v
            .get("hostname")
            .and_then(|h| h.as_str())
            .unwrap_or_default()
            .to_string(),
        ssh_keys: keys.into_iter().map(|(_, k)| k).collect(),
    })
}

fn ec2_metadata(root: &str, http: &HttpPolicy) -> Result<Metadata, DatasourceError> {
    let base = format!("{root}{EC2_VERSION}meta-data/");
    let get = |path: &str| http.get_optional(&format!("{base}{path}")).map(text);
    let mut keys = Vec::new();
    for line in get("public-keys")?.lines() {
        if let Some((id, _name)) = line.split_once('=') {
            let key = get(&format!("public-keys/{id}/openssh-key"))?;
            if !key.is_empty() {
                keys.push(key);
            }
        }
    }
    Ok(Metadata {
        addresses: Addresses {
            public_ipv4: get("public-ipv4")?,
            private_ipv4: get("local-ipv4")?,
            ..Addresses::default()
        },
        hostname: get("hostname")?
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
        ssh_keys: keys,
    })
}

/// GCE's metadata as coreos-cloudinit read it: the first interface's external and
/// internal addresses (each must be an IP address, or empty) and the host name.
fn gce_metadata(root: &str, http: &HttpPolicy) -> Result<Metadata, DatasourceError> {
    let base = format!("{root}{GCE_API}instance/");
    let get = |path: &str| {
        http.get_optional_with(&format!("{base}{path}"), GCE_HEADER)
            .map(text)
    };
    let ip = |path: &str| -> Result<String, DatasourceError> {
        let v = get(path)?;
        if v.is_empty() || v.parse::<std::net::IpAddr>().is_ok() {
            Ok(v)
        } else {
            Err(DatasourceError::Json {
                what: format!("{base}{path}"),
                reason: format!("couldn't parse {v:?} as IP address"),
            })
        }
    };
    Ok(Metadata {
        addresses: Addresses {
            public_ipv4: ip("network-interfaces/0/access-configs/0/external-ip")?,
            private_ipv4: ip("network-interfaces/0/ip")?,
            ..Addresses::default()
        },
        hostname: get("hostname")?,
        ssh_keys: Vec::new(),
    })
}

fn digitalocean_metadata(root: &str, http: &HttpPolicy) -> Result<Metadata, DatasourceError> {
    let url = format!("{root}metadata/v1.json");
    let v = json(&url, &http.get_retry(&url)?)?;
    let addr = |kind: &str, family: &str| {
        v.pointer(&format!("/interfaces/{kind}/0/{family}/ip_address"))
            .and_then(|a| a.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Ok(Metadata {
        addresses: Addresses {
            public_ipv4: addr("public", "ipv4"),
            private_ipv4: addr("private", "ipv4"),
            public_ipv6: addr("public", "ipv6"),
            private_ipv6: addr("private", "ipv6"),
        },
        hostname: v
            .get("hostname")
            .and_then(|h| h.as_str())
            .unwrap_or_default()
            .to_string(),
        ssh_keys: v
            .get("public_keys")
            .and_then(|k| k.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|k| Some(k.as_str()?.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Waits until one of `sources` is available: each is polled in turn, with back-off from
/// 100 ms doubling to 30 s, until `limit` has passed.
pub fn wait_for_any(
    sources: &[Datasource],
    http: &HttpPolicy,
    limit: Duration,
) -> Option<Datasource> {
    let start = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    let mut checked_once = vec![false; sources.len()];
    loop {
        for (i, s) in sources.iter().enumerate() {
            if checked_once[i] && !s.can_become_available() {
                continue;
            }
            checked_once[i] = true;
            if s.is_available(http) {
                return Some(s.clone());
            }
        }
        let pollable = sources.iter().any(Datasource::can_become_available);
        if !pollable || start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(delay.min(limit.saturating_sub(start.elapsed())));
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn cmdline() {
        assert_eq!(
            cmdline_url(
                "root=/dev/sda cloud-config-url=http://a/x cloud_config_url=http://b/y quiet"
            ),
            Some("http://b/y".to_string())
        );
        assert_eq!(cmdline_url("cloud-config-url= quiet"), None);
        assert_eq!(cmdline_url("quiet"), None);
    }

    #[test]
    fn only_http() {
        let e = HttpPolicy::default().get("file:///etc/passwd").unwrap_err();
        assert!(matches!(e, DatasourceError::Scheme(_)));
    }

    #[test]
    fn configdrive() {
        let d = tempfile::tempdir().unwrap();
        let o = d.path().join("openstack/latest");
        std::fs::create_dir_all(&o).unwrap();
        std::fs::write(o.join("user_data"), "#cloud-config\n").unwrap();
        std::fs::write(
            o.join("meta_data.json"),
            r#"{"hostname":"node1","public_keys":{"b":"ssh-rsa B","a":"ssh-rsa A"}}"#,
        )
        .unwrap();
        let ds = Datasource::ConfigDrive(d.path().to_path_buf());
        let http = HttpPolicy::default();
        assert!(ds.is_available(&http));
        assert_eq!(ds.fetch_userdata(&http).unwrap(), b"#cloud-config\n");
        let m = ds.fetch_metadata(&http).unwrap();
        assert_eq!(m.hostname, "node1");
        assert_eq!(m.ssh_keys, vec!["ssh-rsa A", "ssh-rsa B"]);
    }
}

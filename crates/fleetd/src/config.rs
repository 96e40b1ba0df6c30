//! fleetd's configuration: `/etc/fleet/fleet.conf` (`key = value`), overridden by `FLEET_*`
//! environment variables (what cloud-config's `coreos.fleet` writes into the
//! `20-cloudinit.conf` drop-in), with fleet's key names.

use std::collections::BTreeMap;
use std::path::Path;

use fleet_model::machine::parse_metadata;

/// fleetd settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `etcd_servers`: etcd client URLs.
    pub etcd_servers: Vec<String>,
    /// `etcd_key_prefix`.
    pub etcd_key_prefix: String,
    /// `public_ip` (empty: detected).
    pub public_ip: String,
    /// `metadata`.
    pub metadata: BTreeMap<String, String>,
    /// `agent_ttl`, whole seconds (etcd leases have a 2 s minimum).
    pub agent_ttl: i64,
    /// `engine_reconcile_interval`, seconds: its leader lease lasts this, rounded up (at
    /// least 2 s, etcd's minimum), and a full pass runs every 15 times this even without
    /// changes.
    pub engine_reconcile_interval: f64,
    /// `disable_engine`.
    pub disable_engine: bool,
    /// `etcd_request_timeout`, seconds.
    pub etcd_request_timeout: f64,
    /// `fencing` (Ferrite's addition): stop every unit that does not say otherwise when
    /// this machine cannot renew its presence, before another machine may take it over.
    pub fencing: bool,
    /// `etcd_cafile`, `etcd_certfile`, `etcd_keyfile`: TLS to etcd (`https://` servers).
    pub etcd_tls: fleet_store::EtcdTls,
    /// Keys that were not understood.
    pub unknown: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            etcd_servers: vec![
                "http://127.0.0.1:2379".into(),
                "http://127.0.0.1:4001".into(),
            ],
            etcd_key_prefix: "/_coreos.com/fleet/".into(),
            public_ip: String::new(),
            metadata: BTreeMap::new(),
            agent_ttl: 2,
            engine_reconcile_interval: 2.0,
            disable_engine: false,
            etcd_request_timeout: 1.0,
            fencing: false,
            etcd_tls: fleet_store::EtcdTls::default(),
            unknown: Vec::new(),
        }
    }
}

/// A value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{key}: invalid value {value:?}: {why}")]
pub struct ConfigError {
    key: String,
    value: String,
    why: &'static str,
}

/// Go's `time.ParseDuration` for the forms fleet users write (`30s`, `1m30s`, `500ms`, `1.5h`),
/// plus a bare number of seconds; in seconds.
pub fn parse_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return Some(n);
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * factor;
        rest = &rest[unit_end..];
    }
    Some(total)
}

fn truthy(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "true" | "1" | "t" | "yes" | "on"
    )
}

impl Config {
    /// Applies one `key = value` setting.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let bad = |why| ConfigError {
            key: key.into(),
            value: value.into(),
            why,
        };
        let v = value.trim().trim_matches('"');
        match key {
            "etcd_servers" => {
                self.etcd_servers = v
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
            }
            "etcd_key_prefix" => self.etcd_key_prefix = v.to_string(),
            "public_ip" => self.public_ip = v.to_string(),
            "metadata" => self.metadata = parse_metadata(v),
            "agent_ttl" => {
                let secs = parse_duration(v).ok_or_else(|| bad("not a duration"))?;
                self.agent_ttl = (secs.ceil() as i64).max(2);
            }
            "engine_reconcile_interval" => {
                self.engine_reconcile_interval =
                    parse_duration(v).ok_or_else(|| bad("not a number"))?;
            }
            "etcd_request_timeout" => {
                self.etcd_request_timeout = parse_duration(v).ok_or_else(|| bad("not a number"))?;
            }
            "disable_engine" => self.disable_engine = truthy(v),
            "fencing" => self.fencing = truthy(v),
            "etcd_cafile" => self.etcd_tls.ca = path(v),
            "etcd_certfile" => self.etcd_tls.cert = path(v),
            "etcd_keyfile" => self.etcd_tls.key = path(v),
            "verbosity" | "authorized_keys_file" | "token_limit" | "verify_units" => {}
            other => self.unknown.push(other.to_string()),
        }
        Ok(())
    }

    /// The file's settings (if it exists), then `FLEET_*` from `env`.
    ///
    /// An empty `etcd_cafile` (or cert or key) means none, as fleet read it.
    pub fn load(
        file: &Path,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut c = Config::default();
        if let Ok(text) = std::fs::read_to_string(file) {
            for line in text.lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if let Some((k, v)) = line.split_once('=') {
                    c.set(k.trim(), v)?;
                }
            }
        }
        for (k, v) in env {
            if let Some(key) = k.strip_prefix("FLEET_") {
                c.set(&key.to_ascii_lowercase(), &v)?;
            }
        }
        Ok(c)
    }
}

/// A file setting: an empty value is none.
fn path(v: &str) -> Option<std::path::PathBuf> {
    let v = v.trim().trim_matches('"');
    (!v.is_empty()).then(|| v.into())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(30.0));
        assert_eq!(parse_duration("1m30s"), Some(90.0));
        assert_eq!(parse_duration("500ms"), Some(0.5));
        assert_eq!(parse_duration("2"), Some(2.0));
        assert_eq!(parse_duration("1.5h"), Some(5400.0));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn file_then_environment() {
        let dir = std::env::temp_dir().join(format!("fleetconf-{}", std::process::id()));
        std::fs::write(&dir, "# fleet\nmetadata=\"role=web,region=eu\"\nagent_ttl = 10s\netcd_servers=http://a:2379\nbogus=1\n").unwrap();
        let env = vec![
            ("FLEET_PUBLIC_IP".to_string(), "172.20.0.101".to_string()),
            ("FLEET_AGENT_TTL".to_string(), "5s".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let c = Config::load(&dir, env.into_iter()).unwrap();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(c.metadata.get("role").map(String::as_str), Some("web"));
        assert_eq!(c.agent_ttl, 5);
        assert_eq!(c.public_ip, "172.20.0.101");
        assert_eq!(c.etcd_servers, vec!["http://a:2379"]);
        assert_eq!(c.unknown, vec!["bogus"]);
        assert!(!c.etcd_tls.is_set());
        let c = Config::load(
            Path::new("/nonexistent"),
            vec![
                (
                    "FLEET_ETCD_CAFILE".to_string(),
                    "/etc/ssl/etcd/ca.pem".to_string(),
                ),
                (
                    "FLEET_ETCD_CERTFILE".to_string(),
                    "/etc/ssl/etcd/c.pem".to_string(),
                ),
                ("FLEET_ETCD_KEYFILE".to_string(), String::new()),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(
            c.etcd_tls.ca.as_deref(),
            Some(Path::new("/etc/ssl/etcd/ca.pem"))
        );
        assert_eq!(
            c.etcd_tls.cert.as_deref(),
            Some(Path::new("/etc/ssl/etcd/c.pem"))
        );
        assert_eq!(c.etcd_tls.key, None);
        assert!(Config::load(
            Path::new("/nonexistent"),
            vec![("FLEET_AGENT_TTL".to_string(), "x".to_string())].into_iter()
        )
        .is_err());
    }
}

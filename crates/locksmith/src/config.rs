//! locksmithd's settings, from the environment as CoreOS's unit gave them:
//! `REBOOT_STRATEGY` (from `update.conf`), `LOCKSMITHD_ENDPOINT`, `LOCKSMITHD_GROUP`,
//! `LOCKSMITHD_REBOOT_WINDOW_START`/`_LENGTH` (or the older `REBOOT_WINDOW_START`/
//! `_LENGTH`, which cloud-config's `coreos.locksmith.window_*` write).

use crate::window::Window;

/// What locksmithd does once update_engine needs a reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Reboot at once (in the window).
    Reboot,
    /// Take a slot of the cluster's semaphore first; give it back after the reboot.
    EtcdLock,
    /// etcd-lock when this machine runs etcd, else reboot (CoreOS's old default).
    BestEffort,
    /// Never reboot: locksmithd exits.
    Off,
}

impl Strategy {
    /// Parses `REBOOT_STRATEGY` (empty: `reboot`, today's default).
    pub fn parse(s: &str) -> Result<Strategy, String> {
        match s.trim() {
            "" | "reboot" => Ok(Strategy::Reboot),
            "etcd-lock" => Ok(Strategy::EtcdLock),
            "best-effort" => Ok(Strategy::BestEffort),
            "off" => Ok(Strategy::Off),
            other => Err(format!(
                "unknown reboot strategy {other:?} (reboot, etcd-lock, best-effort or off)"
            )),
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Reboot => "reboot",
            Strategy::EtcdLock => "etcd-lock",
            Strategy::BestEffort => "best-effort",
            Strategy::Off => "off",
        }
    }
}

/// The daemon's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The strategy.
    pub strategy: Strategy,
    /// etcd's client URLs.
    pub endpoints: Vec<String>,
    /// The reboot group ("" is the default semaphore).
    pub group: String,
    /// The reboot window, if one is set.
    pub window: Option<Window>,
}

/// Comma-separated endpoints (locksmith's `-endpoint`), or the defaults.
pub fn endpoints(value: Option<&str>) -> Vec<String> {
    let list: Vec<String> = value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if list.is_empty() {
        crate::etcd::DEFAULT_ENDPOINTS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        list
    }
}

impl Config {
    /// Reads the settings through `get` (the environment, in the daemon).
    pub fn from(get: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let strategy = Strategy::parse(&get("REBOOT_STRATEGY").unwrap_or_default())?;
        let either = |a: &str, b: &str| {
            get(a)
                .filter(|v| !v.is_empty())
                .or_else(|| get(b))
                .filter(|v| !v.is_empty())
        };
        let start = either("LOCKSMITHD_REBOOT_WINDOW_START", "REBOOT_WINDOW_START");
        let length = either("LOCKSMITHD_REBOOT_WINDOW_LENGTH", "REBOOT_WINDOW_LENGTH");
        let window = match (start, length) {
            (None, None) => None,
            (Some(s), Some(l)) => Some(Window::parse(&s, &l)?),
            _ => return Err(
                "Either both or neither $REBOOT_WINDOW_START and $REBOOT_WINDOW_LENGTH must be set"
                    .into(),
            ),
        };
        for k in [
            "LOCKSMITHD_ETCD_CAFILE",
            "LOCKSMITHD_ETCD_CERTFILE",
            "LOCKSMITHD_ETCD_KEYFILE",
        ] {
            if get(k).is_some_and(|v| !v.is_empty()) {
                return Err(format!("{k} is set, but TLS to etcd is not supported yet"));
            }
        }
        Ok(Config {
            strategy,
            endpoints: endpoints(get("LOCKSMITHD_ENDPOINT").as_deref()),
            group: get("LOCKSMITHD_GROUP").unwrap_or_default(),
            window,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_and_settings() {
        let c = Config::from(env(&[])).unwrap();
        assert_eq!(c.strategy, Strategy::Reboot);
        assert_eq!(c.endpoints, DEFAULT);
        assert_eq!((c.group.as_str(), c.window), ("", None));
        let c = Config::from(env(&[
            ("REBOOT_STRATEGY", "etcd-lock"),
            (
                "LOCKSMITHD_ENDPOINT",
                "http://10.1.1.1:2379, http://10.1.1.2:2379",
            ),
            ("LOCKSMITHD_GROUP", "lb"),
            ("REBOOT_WINDOW_START", "Thu 04:00"),
            ("REBOOT_WINDOW_LENGTH", "1h"),
        ]))
        .unwrap();
        assert_eq!(c.strategy, Strategy::EtcdLock);
        assert_eq!(
            c.endpoints,
            ["http://10.1.1.1:2379", "http://10.1.1.2:2379"]
        );
        assert_eq!(c.group, "lb");
        assert!(c.window.is_some());
    }

    const DEFAULT: [&str; 2] = ["http://127.0.0.1:2379", "http://127.0.0.1:4001"];

    #[test]
    fn bad_settings_are_refused_with_their_reason() {
        assert!(Config::from(env(&[("REBOOT_STRATEGY", "sometimes")]))
            .unwrap_err()
            .contains("unknown reboot strategy \"sometimes\""));
        assert!(Config::from(env(&[("REBOOT_WINDOW_START", "04:00")]))
            .unwrap_err()
            .contains("Either both or neither"));
        assert!(Config::from(env(&[
            ("LOCKSMITHD_REBOOT_WINDOW_START", "25:00"),
            ("LOCKSMITHD_REBOOT_WINDOW_LENGTH", "1h"),
        ]))
        .unwrap_err()
        .contains("hour must be"));
        assert!(
            Config::from(env(&[("LOCKSMITHD_ETCD_CAFILE", "/etc/ca.pem")]))
                .unwrap_err()
                .contains("LOCKSMITHD_ETCD_CAFILE is set, but TLS to etcd is not supported yet")
        );
    }
}

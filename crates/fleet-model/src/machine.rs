//! Machines as fleet sees them: identity, public IP, metadata.

use std::collections::BTreeMap;

/// A machine's presence record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    /// `/etc/machine-id`, trimmed.
    pub id: String,
    /// The public IP, or empty.
    pub public_ip: String,
    /// Metadata from `FLEET_METADATA` / `metadata`.
    pub metadata: BTreeMap<String, String>,
    /// fleetd's version.
    pub version: String,
}

impl Machine {
    /// The 8-character short ID `fleetctl` shows.
    pub fn short_id(&self) -> &str {
        self.id.get(..8).unwrap_or(&self.id)
    }

    /// fleet's `MatchID`: the full ID or the short ID.
    pub fn matches_id(&self, id: &str) -> bool {
        self.id == id || self.short_id() == id
    }
}

/// Parses fleet's `metadata` setting: comma-separated `k=v`, whitespace trimmed, items
/// without `=` ignored, a repeated key keeping its last value.
pub fn parse_metadata(s: &str) -> BTreeMap<String, String> {
    s.split(',')
        .filter_map(|item| {
            let (k, v) = item.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_ids() {
        let m = parse_metadata(" region = us-east-1 ,bogus, disk=ssd,region=eu");
        assert_eq!(m.get("region").map(String::as_str), Some("eu"));
        assert_eq!(m.get("disk").map(String::as_str), Some("ssd"));
        assert_eq!(m.len(), 2);
        let mach = Machine {
            id: "113f16a7d4f14b1e95ec8dc8df2db9c4".into(),
            ..Default::default()
        };
        assert_eq!(mach.short_id(), "113f16a7");
        assert!(
            mach.matches_id("113f16a7")
                && mach.matches_id(&mach.id.clone())
                && !mach.matches_id("113f16a")
        );
    }
}

//! `[X-Fleet]` requirements, parsed with fleet's quirks, and their validation.

use std::collections::BTreeMap;

use systemd_unit::fleet::UnitOption;

use crate::name::NameInfo;

/// What a unit asks of the machine it runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// `MachineID`: the first value only; a full machine ID or its 8-character short form.
    pub machine_id: Option<String>,
    /// `MachineOf`: peer units that must be on the same machine.
    pub machine_of: Vec<String>,
    /// `MachineMetadata`: key → accepted values (OR within a key, AND across keys).
    pub metadata: BTreeMap<String, Vec<String>>,
    /// `Conflicts`: globs of units that may not share the machine (checked both ways).
    pub conflicts: Vec<String>,
    /// `Replaces`: globs of units this one pushes off its machine.
    pub replaces: Vec<String>,
    /// `Global`: runs on every machine whose metadata matches.
    pub global: bool,
    /// `Fencing` (Ferrite's addition): stop this unit when its machine cannot renew its
    /// presence, before another machine may start it; unset follows the cluster's setting.
    pub fencing: Option<bool>,
    /// Keys fleet does not know (fleetctl warns and accepts the unit).
    pub unknown: Vec<String>,
}

/// A combination of requirements fleet refuses; the messages are fleet's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementsError {
    /// MachineID with MachineOf.
    #[error("MachineID cannot be used with Peers")]
    MachineIdWithPeers,
    /// MachineID with Conflicts.
    #[error("MachineID cannot be used with Conflicts")]
    MachineIdWithConflicts,
    /// MachineID with Global.
    #[error("MachineID cannot be used with Global")]
    MachineIdWithGlobal,
    /// MachineID with Replaces.
    #[error("MachineID cannot be used with Replaces")]
    MachineIdWithReplaces,
    /// Global with MachineOf.
    #[error("Global cannot be used with Peers")]
    GlobalWithPeers,
    /// Global with Replaces.
    #[error("Global cannot be used with Replaces")]
    GlobalWithReplaces,
    /// Conflicts with Replaces.
    #[error("Conflicts cannot be used with Replaces")]
    ConflictsWithReplaces,
    /// A peer the unit also conflicts with.
    #[error("unresolvable requirements: peer {peer:?} matches conflict {conflict:?}")]
    PeerConflict {
        /// The peer.
        peer: String,
        /// The glob.
        conflict: String,
    },
    /// A peer the unit also replaces.
    #[error("unresolvable requirements: peer {peer:?} matches replace {replace:?}")]
    PeerReplace {
        /// The peer.
        peer: String,
        /// The glob.
        replace: String,
    },
}

/// fleet's `parseMultivalueLine`: only a value that starts and ends with `"` is split, at
/// spaces outside quotes, with the quotes removed.
pub fn multivalue(line: &str) -> Vec<String> {
    if !(line.len() >= 2 && line.starts_with('"') && line.ends_with('"')) {
        return vec![line.to_string()];
    }
    let mut values = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => values.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    values.push(cur);
    values
}

/// fleet's `unitPrintf`: `%n %N %p %i`, replaced in that order.
pub fn expand_specifiers(value: &str, name: &NameInfo) -> String {
    value
        .replace("%n", &name.full)
        .replace("%N", &name.name)
        .replace("%p", &name.prefix)
        .replace("%i", name.instance.as_deref().unwrap_or(""))
}

/// The canonical key for the deprecated `X-Condition…`/`X-…` spellings.
fn canonical_key(key: &str) -> &str {
    let k = key.strip_prefix("X-").unwrap_or(key);
    k.strip_prefix("Condition").unwrap_or(k)
}

fn truthy(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "true" | "yes" | "1" | "on" | "t"
    )
}

impl Requirements {
    /// Reads the `[X-Fleet]` options of unit `name`, expanding fleet's specifiers.
    pub fn from_options(name: &str, options: &[UnitOption]) -> Self {
        let info = NameInfo::parse(name).unwrap_or(NameInfo {
            full: name.to_string(),
            name: name.to_string(),
            prefix: name.to_string(),
            template: None,
            instance: None,
        });
        let mut r = Requirements::default();
        let mut machine_ids = Vec::new();
        let mut boot_ids = Vec::new();
        for opt in options.iter().filter(|o| o.section == "X-Fleet") {
            let values: Vec<String> = multivalue(&opt.value)
                .iter()
                .map(|v| expand_specifiers(v, &info))
                .collect();
            match canonical_key(&opt.name) {
                "MachineID" => machine_ids.extend(values),
                "MachineBootID" => boot_ids.extend(values),
                "MachineOf" => r.machine_of.extend(values),
                "MachineMetadata" => {
                    for v in values {
                        let parts: Vec<&str> = v.split('=').collect();
                        if let [k, val] = parts[..] {
                            if !k.is_empty() && !val.is_empty() {
                                r.metadata
                                    .entry(k.to_string())
                                    .or_default()
                                    .push(val.to_string());
                            }
                        }
                    }
                }
                // fleet 1.0's reading: an unquoted list is split on whitespace too.
                "Conflicts" => r.conflicts.extend(
                    values
                        .iter()
                        .flat_map(|v| v.split_whitespace().map(str::to_string)),
                ),
                "Replaces" => r.replaces.extend(
                    values
                        .iter()
                        .flat_map(|v| v.split_whitespace().map(str::to_string)),
                ),
                "Global" => {
                    if let Some(v) = values.last() {
                        r.global = truthy(v);
                    }
                }
                "Fencing" => {
                    if let Some(v) = values.last() {
                        r.fencing = Some(truthy(v));
                    }
                }
                _ => r.unknown.push(opt.name.clone()),
            }
        }
        r.machine_id = machine_ids
            .into_iter()
            .next()
            .or_else(|| boot_ids.into_iter().next());
        r
    }

    /// fleet's `ValidateOptions` (with fleet 1.0's acceptance of Global with Conflicts).
    pub fn validate(&self) -> Result<(), RequirementsError> {
        if self.machine_id.is_some() {
            if !self.machine_of.is_empty() {
                return Err(RequirementsError::MachineIdWithPeers);
            }
            if !self.conflicts.is_empty() {
                return Err(RequirementsError::MachineIdWithConflicts);
            }
            if self.global {
                return Err(RequirementsError::MachineIdWithGlobal);
            }
            if !self.replaces.is_empty() {
                return Err(RequirementsError::MachineIdWithReplaces);
            }
        }
        if self.global {
            if !self.machine_of.is_empty() {
                return Err(RequirementsError::GlobalWithPeers);
            }
            if !self.replaces.is_empty() {
                return Err(RequirementsError::GlobalWithReplaces);
            }
        }
        if !self.conflicts.is_empty() && !self.replaces.is_empty() {
            return Err(RequirementsError::ConflictsWithReplaces);
        }
        for peer in &self.machine_of {
            if let Some(c) = self
                .conflicts
                .iter()
                .find(|c| crate::glob::matches(c, peer))
            {
                return Err(RequirementsError::PeerConflict {
                    peer: peer.clone(),
                    conflict: c.clone(),
                });
            }
            if let Some(r) = self.replaces.iter().find(|r| crate::glob::matches(r, peer)) {
                return Err(RequirementsError::PeerReplace {
                    peer: peer.clone(),
                    replace: r.clone(),
                });
            }
        }
        Ok(())
    }

    /// Whether a machine's metadata satisfies `MachineMetadata`.
    pub fn metadata_matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        self.metadata
            .iter()
            .all(|(k, allowed)| metadata.get(k).is_some_and(|v| allowed.contains(v)))
    }

    /// Whether this unit conflicts with unit `other` (this unit's globs only).
    pub fn conflicts_with(&self, other: &str) -> bool {
        self.conflicts
            .iter()
            .any(|g| crate::glob::matches(g, other))
    }

    /// Whether this unit replaces unit `other`.
    pub fn replaces_unit(&self, other: &str) -> bool {
        self.replaces.iter().any(|g| crate::glob::matches(g, other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use systemd_unit::fleet::deserialize;

    fn req(name: &str, xfleet: &str) -> Requirements {
        let text = format!("[Service]\nExecStart=/bin/true\n\n[X-Fleet]\n{xfleet}\n");
        Requirements::from_options(name, &deserialize(&text).unwrap())
    }

    #[test]
    fn multivalue_parsing() {
        assert_eq!(
            multivalue("\"foo=bar\" \"baz=qux\""),
            vec!["foo=bar", "baz=qux"]
        );
        assert_eq!(multivalue("foo=bar baz=qux"), vec!["foo=bar baz=qux"]);
        assert_eq!(multivalue("\"a b\""), vec!["a b"]);
    }

    #[test]
    fn metadata_or_within_and_across() {
        let r = req(
            "web.service",
            "MachineMetadata=\"region=us-east-1\" \"diskType=SSD\"",
        );
        assert_eq!(r.metadata.len(), 2);
        let r = req(
            "web.service",
            "MachineMetadata=region=us-east-1\nMachineMetadata=region=us-west-1",
        );
        assert_eq!(r.metadata["region"], vec!["us-east-1", "us-west-1"]);
        let m = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(r.metadata_matches(&m(&[("region", "us-west-1")])));
        assert!(!r.metadata_matches(&m(&[("region", "eu")])));
        assert!(!r.metadata_matches(&m(&[])));
        // The trap: unquoted, two '=' signs: ignored, no constraint at all.
        let r = req(
            "web.service",
            "MachineMetadata=region=us-east-1 diskType=SSD",
        );
        assert!(r.metadata.is_empty());
        assert!(r.metadata_matches(&m(&[])));
    }

    #[test]
    fn specifiers_and_deprecated_keys() {
        let r = req(
            "pong@3.service",
            "X-ConditionMachineOf=ping@%i.service\nMachineID=%i",
        );
        assert_eq!(r.machine_of, vec!["ping@3.service"]);
        assert_eq!(r.machine_id.as_deref(), Some("3"));
        let r = req("metadata@smoke1.service", "MachineMetadata=hostname=%i");
        assert_eq!(r.metadata["hostname"], vec!["smoke1"]);
        let r = req(
            "a.service",
            "X-Conflicts=b.service\nBogus=1\nGlobal=false\nGlobal=TRUE",
        );
        assert_eq!(r.conflicts, vec!["b.service"]);
        assert_eq!(r.unknown, vec!["Bogus"]);
        assert!(r.global);
        assert_eq!(r.fencing, None);
        assert_eq!(req("f.service", "Fencing=true").fencing, Some(true));
        assert_eq!(
            req("f.service", "Fencing=yes\nFencing=no").fencing,
            Some(false)
        );
        let r = req("a.service", "MachineID=first\nMachineID=second");
        assert_eq!(r.machine_id.as_deref(), Some("first"));
        let r = req(
            "c.service",
            "Conflicts=conflict.multiple.0.service conflict.multiple.1.service",
        );
        assert_eq!(r.conflicts.len(), 2);
    }

    #[test]
    fn validation_messages() {
        let e = |x: &str| req("a.service", x).validate().unwrap_err().to_string();
        assert_eq!(
            e("MachineID=x\nMachineOf=b.service"),
            "MachineID cannot be used with Peers"
        );
        assert_eq!(
            e("MachineID=x\nConflicts=b.service"),
            "MachineID cannot be used with Conflicts"
        );
        assert_eq!(
            e("MachineID=x\nGlobal=true"),
            "MachineID cannot be used with Global"
        );
        assert_eq!(
            e("Global=true\nMachineOf=b.service"),
            "Global cannot be used with Peers"
        );
        assert_eq!(
            e("MachineOf=b.service\nConflicts=b.*"),
            "unresolvable requirements: peer \"b.service\" matches conflict \"b.*\""
        );
        assert_eq!(
            e("Conflicts=x\nReplaces=y"),
            "Conflicts cannot be used with Replaces"
        );
        assert!(req("a.service", "Global=true\nConflicts=b.*")
            .validate()
            .is_ok());
        assert!(req("a.service", "MachineMetadata=a=b").validate().is_ok());
    }
}

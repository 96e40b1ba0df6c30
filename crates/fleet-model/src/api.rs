//! fleet's HTTP API v1 wire format: the JSON objects of `/fleet/v1`, with fleet's field
//! names and `omitempty` behaviour, shared by fleetd (which serves them) and fleetctl
//! (which reads them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One unit-file option.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct UnitOption {
    /// The key.
    pub name: String,
    /// The section, without brackets.
    pub section: String,
    /// The value.
    pub value: String,
}

impl From<systemd_unit::fleet::UnitOption> for UnitOption {
    fn from(o: systemd_unit::fleet::UnitOption) -> Self {
        Self {
            name: o.name,
            section: o.section,
            value: o.value,
        }
    }
}

impl From<UnitOption> for systemd_unit::fleet::UnitOption {
    fn from(o: UnitOption) -> Self {
        Self {
            section: o.section,
            name: o.name,
            value: o.value,
        }
    }
}

/// A unit (`/units`, `/units/<name>`): its options and states.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Unit {
    /// `inactive`, `loaded` or `launched`; empty for global units.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_state: String,
    /// The state the user asked for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub desired_state: String,
    /// The machine it is scheduled to; empty for unscheduled and global units.
    #[serde(
        default,
        rename = "machineID",
        skip_serializing_if = "String::is_empty"
    )]
    pub machine_id: String,
    /// The unit's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The unit file, as options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<UnitOption>,
}

/// A machine (`/machines`).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// The machine ID.
    pub id: String,
    /// Its metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Its public IP.
    #[serde(
        default,
        rename = "primaryIP",
        skip_serializing_if = "String::is_empty"
    )]
    pub primary_ip: String,
}

/// One machine's report of one unit (`/state`).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UnitState {
    /// The hash of the unit the agent loaded.
    #[serde(default)]
    pub hash: String,
    /// The reporting machine.
    #[serde(default, rename = "machineID")]
    pub machine_id: String,
    /// The unit.
    #[serde(default)]
    pub name: String,
    /// systemd's ActiveState.
    #[serde(default)]
    pub systemd_active_state: String,
    /// systemd's LoadState.
    #[serde(default)]
    pub systemd_load_state: String,
    /// systemd's SubState.
    #[serde(default)]
    pub systemd_sub_state: String,
}

/// A page of `/machines`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MachinePage {
    /// The machines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<Machine>,
    /// The next page's token, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// A page of `/units`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UnitPage {
    /// The next page's token, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    /// The units.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<Unit>,
}

/// A page of `/state`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatePage {
    /// The next page's token, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    /// The states.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<UnitState>,
}

/// An error reply: `{"error":{"code":…,"message":…}}`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// The error.
    pub error: ErrorBody,
}

/// The body of an [`ErrorReply`].
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    /// The HTTP status.
    pub code: u16,
    /// What went wrong.
    #[serde(default)]
    pub message: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn omitempty_like_fleet() {
        assert_eq!(serde_json::to_string(&UnitPage::default()).unwrap(), "{}");
        let u = Unit {
            name: "a.service".into(),
            desired_state: "launched".into(),
            ..Unit::default()
        };
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"desiredState":"launched","name":"a.service"}"#
        );
        let m: Machine = serde_json::from_str(r#"{"id":"x","primaryIP":"1.2.3.4"}"#).unwrap();
        assert_eq!(m.primary_ip, "1.2.3.4");
    }
}

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

/// One operation of fleet 1.0's machine-metadata PATCH, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataOp {
    /// The machine (it need not be registered).
    pub machine: String,
    /// The metadata key.
    pub key: String,
    /// The new value; `None` removes the key (hiding a configured one).
    pub value: Option<String>,
}

/// Why a metadata PATCH body was refused (each gives 400; the texts are fleet's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The body is not a JSON array of operation objects.
    #[error("unable to decode body: {0}")]
    Decode(String),
    /// An `op` other than add, remove or replace.
    #[error("invalid op: expect add, remove, or replace")]
    Op,
    /// A path not of the form `/<machineID>/metadata/<key>`.
    #[error("machine metadata path invalid")]
    Path,
    /// add or replace without a value.
    #[error("invalid value: add and replace require a value")]
    Value,
}

/// The last field of a JSON object whose name equals `name` ignoring ASCII case (Go's
/// decoder matches field names that way).
fn field<'a>(
    obj: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Option<&'a serde_json::Value> {
    obj.iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .next_back()
}

fn string_field(
    obj: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<String, PatchError> {
    match field(obj, name) {
        None | Some(serde_json::Value::Null) => Ok(String::new()),
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(PatchError::Decode(format!(
            "field {name:?}: expected a string, got {other}"
        ))),
    }
}

/// `^/([^/]+)/metadata/([A-Za-z0-9_.-]+)$`, fleet's path rule.
fn metadata_path(path: &str) -> Option<(&str, &str)> {
    let (machine, key) = path.strip_prefix('/')?.split_once("/metadata/")?;
    let key_ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    (!machine.is_empty() && !machine.contains('/') && key_ok).then_some((machine, key))
}

/// Reads a PATCH body as fleet 1.0 did — an array of `{"op","path","value":{"value":…}}`,
/// field names in any case — and validates every operation before any is applied.
pub fn parse_metadata_patch(body: &[u8]) -> Result<Vec<MetadataOp>, PatchError> {
    let ops: Vec<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| PatchError::Decode(e.to_string()))?;
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let obj = op.as_object().ok_or_else(|| {
            PatchError::Decode(format!("operation {}: expected an object, got {op}", i + 1))
        })?;
        let kind = string_field(obj, "op")?;
        let path = string_field(obj, "path")?;
        let value = match field(obj, "value") {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::Object(v)) => string_field(v, "value")?,
            Some(other) => {
                return Err(PatchError::Decode(format!(
                    "field \"value\": expected an object {{\"value\": …}}, got {other}"
                )))
            }
        };
        let remove = match kind.as_str() {
            "add" | "replace" => false,
            "remove" => true,
            _ => return Err(PatchError::Op),
        };
        let (machine, key) = metadata_path(&path).ok_or(PatchError::Path)?;
        if !remove && value.is_empty() {
            return Err(PatchError::Value);
        }
        out.push(MetadataOp {
            machine: machine.to_string(),
            key: key.to_string(),
            value: (!remove).then_some(value),
        });
    }
    Ok(out)
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
    #[test]
    fn metadata_patch_as_fleet_reads_it() {
        let ops = parse_metadata_patch(
            br#"[{"op":"add","path":"/m0/metadata/foo","Value":{"value":"bar"}},
                 {"OP":"replace","Path":"/m1/metadata/ping","value":{"Value":"splat"}},
                 {"op":"remove","path":"/m1/metadata/a.b-c_9"}]"#,
        )
        .unwrap();
        assert_eq!(
            ops,
            vec![
                MetadataOp {
                    machine: "m0".into(),
                    key: "foo".into(),
                    value: Some("bar".into())
                },
                MetadataOp {
                    machine: "m1".into(),
                    key: "ping".into(),
                    value: Some("splat".into())
                },
                MetadataOp {
                    machine: "m1".into(),
                    key: "a.b-c_9".into(),
                    value: None
                },
            ]
        );
        assert_eq!(parse_metadata_patch(b"[]").unwrap(), vec![]);
    }

    #[test]
    fn metadata_patch_refusals() {
        let err = |b: &str| parse_metadata_patch(b.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            err(r#"[{"op":"noop","path":"/m/metadata/foo","value":{"value":"x"}}]"#),
            "invalid op: expect add, remove, or replace"
        );
        for path in [
            "/m/foo",
            "m/metadata/foo",
            "/m/metadata/",
            "/a/b/metadata/k",
            "/m/metadata/k/x",
            "/m/metadata/k!",
        ] {
            let body = format!(r#"[{{"op":"add","path":"{path}","value":{{"value":"x"}}}}]"#);
            assert_eq!(err(&body), "machine metadata path invalid", "{path}");
        }
        assert_eq!(
            err(r#"[{"op":"add","path":"/m/metadata/foo","value":{"value":""}}]"#),
            "invalid value: add and replace require a value"
        );
        assert_eq!(
            err(r#"[{"op":"replace","path":"/m/metadata/foo"}]"#),
            "invalid value: add and replace require a value"
        );
        // The documented plain-string value does not decode, as in fleet.
        assert!(
            err(r#"[{"op":"add","path":"/m/metadata/foo","value":"bar"}]"#)
                .starts_with("unable to decode body: ")
        );
        assert!(err("{}").starts_with("unable to decode body: "));
        assert!(err("[1]").starts_with("unable to decode body: "));
        // A good operation before a bad one is not applied: validation covers them all.
        assert_eq!(
            err(
                r#"[{"op":"add","path":"/m/metadata/a","value":{"value":"1"}},{"op":"x","path":"/m/metadata/b"}]"#
            ),
            "invalid op: expect add, remove, or replace"
        );
    }
}

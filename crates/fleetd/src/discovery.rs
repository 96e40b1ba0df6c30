//! The discovery document of fleet's API v1 (`GET /fleet/v1/discovery`), in Google's API
//! discovery format as fleet published it: the schemas of the JSON objects and every
//! method with its HTTP verb, path and parameters. The method ids (`fleet.Unit.List` …)
//! and schema names are the protocol's, so clients generated from fleet's document work.

use serde_json::{json, Value};

/// A string parameter at `location` (`query` or `path`).
fn param(location: &str) -> Value {
    if location == "path" {
        json!({"type": "string", "location": "path", "required": true})
    } else {
        json!({"type": "string", "location": location})
    }
}

/// One method: its id, description, verb and path; `unit` for `units/{unitName}` style
/// paths; the request and response schemas.
fn method(
    id: &str,
    description: &str,
    verb: &str,
    path: &str,
    query: &[&str],
    request: Option<&str>,
    response: Option<&str>,
) -> Value {
    let mut params = serde_json::Map::new();
    for q in query {
        params.insert((*q).into(), param("query"));
    }
    let mut m = json!({"id": id, "description": description, "httpMethod": verb, "path": path});
    if path.contains("{unitName}") {
        params.insert("unitName".into(), param("path"));
        m["parameterOrder"] = json!(["unitName"]);
    }
    m["parameters"] = Value::Object(params);
    if let Some(r) = request {
        m["request"] = json!({"$ref": r});
    }
    if let Some(r) = response {
        m["response"] = json!({"$ref": r});
    }
    m
}

/// An object schema named `id` with string `fields` (name, description) and extra
/// properties.
fn object(id: &str, fields: &[(&str, &str)], extra: Value) -> Value {
    let mut props = serde_json::Map::new();
    for (name, description) in fields {
        props.insert(
            (*name).into(),
            json!({"type": "string", "description": description}),
        );
    }
    if let Value::Object(e) = extra {
        props.extend(e);
    }
    json!({"id": id, "type": "object", "properties": props})
}

/// A page of `item`s under `field`, with the token of the next page.
fn page(id: &str, field: &str, item: &str) -> Value {
    object(
        id,
        &[(
            "nextPageToken",
            "Where the next page starts; absent on the last page.",
        )],
        json!({field: {"type": "array", "items": {"$ref": item}}}),
    )
}

/// The whole document.
pub fn document() -> Value {
    let schemas = json!({
        "Machine": object(
            "Machine",
            &[("id", "The machine's ID (its /etc/machine-id)."), ("primaryIP", "The address other machines reach it on.")],
            json!({"metadata": {"type": "object", "description": "Key-value pairs units can require.", "additionalProperties": {"type": "string"}}}),
        ),
        "MachinePage": page("MachinePage", "machines", "Machine"),
        "UnitOption": object(
            "UnitOption",
            &[("section", "The unit file section."), ("name", "The option name."), ("value", "The option value.")],
            json!({}),
        ),
        "Unit": object(
            "Unit",
            &[
                ("name", "The unit's name, e.g. hello.service."),
                ("desiredState", "inactive, loaded or launched: what the user asked for."),
                ("currentState", "inactive, loaded or launched: what the cluster has done."),
                ("machineID", "The machine the unit is scheduled to, if any."),
            ],
            json!({"options": {"type": "array", "items": {"$ref": "UnitOption"}}}),
        ),
        "UnitPage": page("UnitPage", "units", "Unit"),
        "UnitState": object(
            "UnitState",
            &[
                ("name", "The unit's name."),
                ("hash", "The SHA-1 of the unit's canonical content."),
                ("machineID", "The machine reporting this state."),
                ("systemdLoadState", "systemd's load state of the unit there."),
                ("systemdActiveState", "systemd's active state of the unit there."),
                ("systemdSubState", "systemd's sub-state of the unit there."),
            ],
            json!({}),
        ),
        "UnitStatePage": page("UnitStatePage", "states", "UnitState"),
    });
    let resources = json!({
        "Machines": {"methods": {
            "List": method("fleet.Machine.List", "A page of the machines in the cluster.", "GET", "machines", &["nextPageToken"], None, Some("MachinePage")),
            "Patch": method("fleet.Machine.Patch", "Adds, replaces or removes machines' dynamic metadata (a JSON Patch list).", "PATCH", "machines", &[], None, None),
        }},
        "Units": {"methods": {
            "List": method("fleet.Unit.List", "A page of the units in the cluster.", "GET", "units", &["nextPageToken"], None, Some("UnitPage")),
            "Get": method("fleet.Unit.Get", "One unit.", "GET", "units/{unitName}", &[], None, Some("Unit")),
            "Delete": method("fleet.Unit.Delete", "Destroys a unit.", "DELETE", "units/{unitName}", &[], None, None),
            "Set": method("fleet.Unit.Set", "Creates a unit, replaces its options, or sets its desired state.", "PUT", "units/{unitName}", &[], Some("Unit"), None),
        }},
        "UnitState": {"methods": {
            "Get": method("fleet.UnitState.Get", "The state one machine reports for a unit.", "GET", "state/{unitName}", &[], None, Some("UnitState")),
            "List": method("fleet.UnitState.List", "A page of unit states, filtered by unit or machine.", "GET", "state", &["nextPageToken", "unitName", "machineID"], None, Some("UnitStatePage")),
        }},
    });
    json!({
        "kind": "discovery#restDescription",
        "discoveryVersion": "v1",
        "id": "fleet:v1",
        "name": "schema",
        "version": "v1",
        "title": "fleet API",
        "description": "fleet's cluster API, served by Ferrite's fleetd.",
        "documentationLink": "https://github.com/coreos/fleet",
        "protocol": "rest",
        "icons": {"x16": "", "x32": ""},
        "labels": [],
        "baseUrl": "$ENDPOINT/fleet/v1/",
        "basePath": "/fleet/v1/",
        "rootUrl": "$ENDPOINT/",
        "servicePath": "fleet/v1/",
        "batchPath": "batch",
        "parameters": {},
        "auth": {},
        "schemas": schemas,
        "resources": resources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        let d = document();
        let mut routes = Vec::new();
        for (_, r) in d["resources"].as_object().unwrap() {
            for (_, m) in r["methods"].as_object().unwrap() {
                routes.push(format!(
                    "{} {}",
                    m["httpMethod"].as_str().unwrap(),
                    m["path"].as_str().unwrap()
                ));
                if let Some(r) = m["response"]["$ref"].as_str() {
                    assert!(d["schemas"][r].is_object(), "{r}");
                }
            }
        }
        routes.sort();
        assert_eq!(
            routes,
            [
                "DELETE units/{unitName}",
                "GET machines",
                "GET state",
                "GET state/{unitName}",
                "GET units",
                "GET units/{unitName}",
                "PATCH machines",
                "PUT units/{unitName}",
            ]
        );
    }
}

//! fleet's HTTP API served on a Unix socket in a temp dir, over a store shared with a
//! running agent and engine: 503 until the machine registers, then fleet's JSON shapes,
//! status codes and errors for machines, units (create, start, fetch, delete) and states.
#![allow(
    clippy::too_many_lines,
    reason = "a scenario reads top to bottom, as a user would run it"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::{Duration, Instant};

use fleet_model::Machine;
use fleetd::testing::InMemoryFleetd;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

async fn request(sock: &std::path::Path, method: &str, path: &str, body: Option<&str>) -> Reply {
    let mut s = UnixStream::connect(sock).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// GETs `path` every 20 ms, for at most 20 s, until `done` holds for the reply.
async fn get_until(
    sock: &std::path::Path,
    path: &str,
    what: &str,
    done: impl Fn(&Reply) -> bool,
) -> Reply {
    let start = Instant::now();
    loop {
        let r = request(sock, "GET", path, None).await;
        if done(&r) {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never {what}: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_serves_fleet_v1() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fleet.sock");
    let mut fleetd = InMemoryFleetd::serve(&sock).unwrap();

    // Before the machine registers, fleet answered 503.
    let r = request(&sock, "GET", "/fleet/v1/machines", None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.headers.contains("server: fleetd/0.1.0"), "{}", r.headers);
    assert_eq!(
        r.json()["error"]["message"],
        "fleet server unable to communicate with etcd"
    );

    fleetd.join(Machine {
        id: "a1b2c3d4e5f60718293a4b5c6d7e8f90".into(),
        public_ip: "172.20.0.11".into(),
        metadata: [("role".to_string(), "web".to_string())].into(),
        version: "0.1.0".into(),
    });

    let machines = get_until(&sock, "/fleet/v1/machines", "ready", |r| r.status == 200)
        .await
        .json();
    assert_eq!(
        machines,
        serde_json::json!({"machines": [{
            "id": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
            "metadata": {"role": "web"},
            "primaryIP": "172.20.0.11",
        }]})
    );
    // fleet 1.0's metadata PATCH: a unit that asks for metadata no machine has waits,
    // and is placed once the metadata is added.
    let wants = r#"{"desiredState":"launched","options":[
        {"section":"Service","name":"ExecStart","value":"/bin/true"},
        {"section":"X-Fleet","name":"MachineMetadata","value":"foo=bar"}]}"#;
    let r = request(
        &sock,
        "PUT",
        "/fleet/v1/units/wants-foo.service",
        Some(wants),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let global = r#"{"desiredState":"launched","options":[
        {"section":"Service","name":"ExecStart","value":"/bin/true"},
        {"section":"X-Fleet","name":"Global","value":"true"},
        {"section":"X-Fleet","name":"MachineMetadata","value":"foo=bar"}]}"#;
    let r = request(
        &sock,
        "PUT",
        "/fleet/v1/units/global-foo.service",
        Some(global),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = request(&sock, "GET", "/fleet/v1/state", None).await;
    assert_eq!(r.body.trim(), "{}");
    let r = request(&sock, "GET", "/fleet/v1/units/wants-foo.service", None).await;
    assert_eq!(r.json().get("machineID"), None, "{}", r.body);
    // Every operation is validated before any is applied (TestMachinesPatchBad).
    let id = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    for (body, message) in [
        (
            format!(
                r#"[{{"op":"add","path":"/{id}/metadata/foo","value":{{"value":"bar"}}}},{{"op":"noop","path":"/{id}/metadata/x","value":{{"value":"y"}}}}]"#
            ),
            "invalid op: expect add, remove, or replace",
        ),
        (
            format!(r#"[{{"op":"add","path":"/{id}/foo","value":{{"value":"bar"}}}}]"#),
            "machine metadata path invalid",
        ),
        (
            format!(r#"[{{"op":"add","path":"/{id}/metadata/foo","value":{{"value":""}}}}]"#),
            "invalid value: add and replace require a value",
        ),
    ] {
        let r = request(&sock, "PATCH", "/fleet/v1/machines", Some(&body)).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.headers.contains("content-type: application/json"),
            "{}",
            r.headers
        );
        assert_eq!(r.json()["error"]["message"], message);
    }
    let r = request(&sock, "GET", "/fleet/v1/machines", None).await;
    assert_eq!(
        r.json()["machines"][0]["metadata"],
        serde_json::json!({"role": "web"})
    );
    // TestMachinesPatchAddModify: add, replace, and a machine that is not registered.
    let body = format!(
        r#"[{{"op":"add","path":"/{id}/metadata/foo","Value":{{"value":"bar"}}}},
            {{"op":"replace","path":"/{id}/metadata/role","value":{{"value":"db"}}}},
            {{"op":"add","path":"/elsewhere/metadata/ping","value":{{"value":"splat"}}}}]"#
    );
    let r = request(&sock, "PATCH", "/fleet/v1/machines", Some(&body)).await;
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    let r = request(&sock, "GET", "/fleet/v1/machines", None).await;
    assert_eq!(
        r.json()["machines"],
        serde_json::json!([{"id": id, "metadata": {"foo": "bar", "role": "db"}, "primaryIP": "172.20.0.11"}])
    );
    get_until(&sock, "/fleet/v1/units/wants-foo.service", "placed", |r| {
        r.json()["machineID"] == id
    })
    .await;
    // Global units follow the dynamic metadata too (the agent matches them).
    get_until(
        &sock,
        "/fleet/v1/state?unitName=global-foo.service",
        "global running",
        |r| r.json()["states"][0]["machineID"] == id,
    )
    .await;
    // TestMachinesPatchDelete: removal hides the configured key too.
    let body = format!(
        r#"[{{"op":"remove","path":"/{id}/metadata/foo"}},{{"op":"remove","path":"/{id}/metadata/role"}}]"#
    );
    let r = request(&sock, "PATCH", "/fleet/v1/machines", Some(&body)).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = request(&sock, "GET", "/fleet/v1/machines", None).await;
    assert_eq!(
        r.json()["machines"],
        serde_json::json!([{"id": id, "primaryIP": "172.20.0.11"}])
    );
    get_until(
        &sock,
        "/fleet/v1/state?unitName=global-foo.service",
        "global stopped",
        |r| r.body.trim() == "{}",
    )
    .await;
    for unit in ["wants-foo.service", "global-foo.service"] {
        let r = request(&sock, "DELETE", &format!("/fleet/v1/units/{unit}"), None).await;
        assert_eq!(r.status, 204, "{}", r.body);
    }

    // The legacy prefix answers too; no units is an empty object (omitempty).
    let r = request(&sock, "GET", "/v1-alpha/units", None).await;
    assert_eq!((r.status, r.body.trim()), (200, "{}"));

    // Create a unit already launched, as `fleetctl start` did through the API.
    let unit = r#"{"name":"hello.service","desiredState":"launched","options":[
        {"section":"Service","name":"ExecStart","value":"/bin/sh -c 'while true; do echo hi; sleep 1; done'"}]}"#;
    let r = request(&sock, "PUT", "/fleet/v1/units/hello.service", Some(unit)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    // A second create with options is an update of the desired state only.
    let r = request(&sock, "PUT", "/fleet/v1/units/hello.service", Some(unit)).await;
    assert_eq!(r.status, 204, "{}", r.body);

    let got = get_until(&sock, "/fleet/v1/units/hello.service", "launched", |r| {
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["currentState"] == "launched"
    })
    .await
    .json();
    assert_eq!(got["desiredState"], "launched");
    assert_eq!(got["machineID"], "a1b2c3d4e5f60718293a4b5c6d7e8f90");
    assert_eq!(got["options"][0]["section"], "Service");
    assert_eq!(got["options"][0]["name"], "ExecStart");

    let states = get_until(
        &sock,
        "/fleet/v1/state?unitName=hello.service",
        "running",
        |r| r.json()["states"][0]["systemdSubState"] == "running",
    )
    .await
    .json();
    let st = &states["states"][0];
    assert_eq!(st["systemdActiveState"], "active");
    assert_eq!(st["systemdLoadState"], "loaded");
    assert_eq!(st["hash"].as_str().unwrap().len(), 40);

    // fleet 1.0's single state.
    let r = request(&sock, "GET", "/fleet/v1/state/hello.service", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["name"], "hello.service");
    assert_eq!(r.json()["systemdSubState"], "running");
    let r = request(&sock, "GET", "/fleet/v1/state/nope.service", None).await;
    assert_eq!(
        (r.status, r.json()["error"]["message"].as_str()),
        (404, Some("unit state does not exist"))
    );
    let r = request(&sock, "DELETE", "/fleet/v1/state/hello.service", None).await;
    assert_eq!(r.status, 405);
    // The discovery document describes every route.
    let r = request(&sock, "GET", "/fleet/v1/discovery", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["resources"]["UnitState"]["methods"]["Get"]["path"],
        "state/{unitName}"
    );

    // fleet 1.0's replace: new options without a desired state make the unit inactive
    // (its clients wait for that, then load or start the new content).
    let replaced = r#"{"name":"hello.service","options":[
        {"section":"Service","name":"ExecStart","value":"/bin/sh -c 'while true; do echo new; sleep 1; done'"}]}"#;
    let r = request(
        &sock,
        "PUT",
        "/fleet/v1/units/hello.service",
        Some(replaced),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    get_until(
        &sock,
        "/fleet/v1/units/hello.service",
        "inactive after replace",
        |r| r.json()["desiredState"] == "inactive" && r.json()["currentState"] == "inactive",
    )
    .await;
    let r = request(
        &sock,
        "PUT",
        "/fleet/v1/units/hello.service",
        Some(r#"{"desiredState":"launched"}"#),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    get_until(
        &sock,
        "/fleet/v1/units/hello.service",
        "launched with the new content",
        |r| {
            r.json()["currentState"] == "launched"
                && r.json()["options"][0]["value"]
                    .as_str()
                    .is_some_and(|v| v.contains("echo new"))
        },
    )
    .await;

    // Names are percent-decoded from the path.
    let inst = r#"{"name":"tick@1.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#;
    let r = request(&sock, "PUT", "/fleet/v1/units/tick%401.service", Some(inst)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = request(&sock, "DELETE", "/fleet/v1/units/tick@1.service", None).await;
    assert_eq!(r.status, 204, "{}", r.body);

    // Errors, as fleet wrote them.
    let bad = r#"{"desiredState":"launched","options":[{"section":"X-Fleet","name":"MachineOf","value":"a.service"},{"section":"X-Fleet","name":"Global","value":"true"}]}"#;
    let r = request(&sock, "PUT", "/fleet/v1/units/bad.service", Some(bad)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = request(&sock, "PUT", "/fleet/v1/units/empty.service", Some("{}")).await;
    assert_eq!(r.status, 409);
    assert_eq!(
        r.json()["error"]["message"],
        "unit does not exist and options field empty"
    );
    let r = request(&sock, "PUT", "/fleet/v1/units/hello.service", Some("{")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], 400);
    let r = request(
        &sock,
        "PUT",
        "/fleet/v1/units/x.service",
        Some(r#"{"name":"y.service"}"#),
    )
    .await;
    assert_eq!(r.status, 400);
    // Names systemd refuses, and options that would not read back as sent, are refused
    // with a 400 and a message (fleet stored them; its agents then failed on them).
    let ok_opts = r#"{"options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#;
    for (name, message) in [
        (".service", "unit name \".service\" has an empty prefix"),
        (
            "x.busname",
            "unit name \"x.busname\" has an unknown type \"busname\"",
        ),
        ("x@1.mount", "invalid unit type for template: \"mount\""),
    ] {
        let r = request(
            &sock,
            "PUT",
            &format!("/fleet/v1/units/{name}"),
            Some(ok_opts),
        )
        .await;
        assert_eq!(
            (r.status, r.json()["error"]["message"].as_str()),
            (400, Some(message))
        );
    }
    for (opts, message) in [
        (
            r#"{"section":"Ser]vice","name":"ExecStart","value":"/bin/true"}"#,
            "unit option \"ExecStart\" in section \"Ser]vice\" cannot be stored: the section name contains a bracket",
        ),
        (
            r#"{"section":"Service","name":"ExecStart","value":"/bin/true\n[Service]\nExecStartPre=/bin/evil"}"#,
            "unit option \"ExecStart\" in section \"Service\" cannot be stored: the value contains a line break",
        ),
        (
            r#"{"section":"Service","name":"Exec=Start","value":"/bin/true"}"#,
            "unit option \"Exec=Start\" in section \"Service\" cannot be stored: the option name contains \"=\"",
        ),
    ] {
        let body = format!(r#"{{"options":[{opts}]}}"#);
        let r = request(&sock, "PUT", "/fleet/v1/units/odd.service", Some(&body)).await;
        assert_eq!((r.status, r.json()["error"]["message"].as_str()), (400, Some(message)));
    }
    let r = request(&sock, "GET", "/fleet/v1/units/odd.service", None).await;
    assert_eq!(r.status, 404, "nothing was stored");
    let r = request(&sock, "GET", "/fleet/v1/units/nope.service", None).await;
    assert_eq!(r.status, 404);
    let r = request(&sock, "GET", "/fleet/v1/units?nextPageToken=EwBMLg==", None).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "token limit must be 100");
    let r = request(&sock, "POST", "/fleet/v1/machines", Some("{}")).await;
    assert_eq!(r.status, 405);
    assert_eq!(
        r.json()["error"]["message"],
        "only GET and PATCH supported against this resource"
    );

    // Delete: gone from units and, once the agent unloads it, from states.
    let r = request(&sock, "DELETE", "/fleet/v1/units/hello.service", None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = request(&sock, "DELETE", "/fleet/v1/units/hello.service", None).await;
    assert_eq!(r.status, 404);
    get_until(&sock, "/fleet/v1/state", "states gone", |r| {
        r.body.trim() == "{}"
    })
    .await;

    fleetd.stop().await.unwrap();
}

//! fleet's functional scenarios on a real three-machine Ferrite cluster (`ferrite up`), each
//! asserting what fleet's own test asserted (adapted where the harness differs, and said
//! so): fleetctl's help, version and environment; the API on its Unix socket and on TCP;
//! the API's machine list, page tokens and metadata PATCH; unit actions (submit, load, start, stop, unload, destroy, cat, status,
//! journal, `--replace`, list-unit-files order); MachineOf with a member leaving (and its
//! purge); Conflicts one- and two-way; MachineID; global units; metadata with specifiers;
//! a member's reboot; and a network partition (the machine's link cut inside its
//! namespace): plain units keep running, fenced units stop before they run elsewhere.
//!
//! Units come from `fixtures/fleet-units`; fleetctl runs inside the machines over fleetd's
//! API socket. Needs root, like `machines.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{repo, Cluster};

const MACHINES: [&str; 3] = ["core-01", "core-02", "core-03"];

/// A row of `list-units --no-legend --full --fields unit,active,machine`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UnitRow {
    unit: String,
    active: String,
    /// The machine ID (the column up to its `/`).
    machine: String,
}

struct Fleet {
    c: Cluster,
    user_data: String,
    /// Machine name → machine ID.
    ids: BTreeMap<String, String>,
}

impl Fleet {
    /// `fleetctl ARGS` on `m`, in `/home/core/units`: (exit code, stdout and stderr).
    fn ctl_on(&self, m: &str, args: &str) -> (i32, String) {
        self.c.sh(
            m,
            &format!("cd /home/core/units 2>/dev/null; fleetctl {args} 2>&1"),
        )
    }

    fn ctl(&self, args: &str) -> (i32, String) {
        self.ctl_on("core-01", args)
    }

    fn ok(&self, args: &str) -> String {
        let (code, out) = self.ctl(args);
        assert_eq!(code, 0, "fleetctl {args}:\n{out}");
        out
    }

    fn units_on(&self, m: &str) -> Vec<UnitRow> {
        let (_, out) = self.ctl_on(
            m,
            "list-units --no-legend --full --fields unit,active,machine",
        );
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3).then(|| UnitRow {
                    unit: f[0].into(),
                    active: f[1].into(),
                    machine: f[2].split('/').next().unwrap_or("").into(),
                })
            })
            .collect()
    }

    fn active_on(&self, m: &str) -> Vec<UnitRow> {
        self.units_on(m)
            .into_iter()
            .filter(|u| u.active == "active")
            .collect()
    }

    fn unit_files(&self) -> Vec<String> {
        let (_, out) = self.ctl("list-unit-files --no-legend --full --fields unit");
        out.lines().map(str::to_string).collect()
    }

    fn machine_ids_on(&self, m: &str) -> Vec<String> {
        let (_, out) = self.ctl_on(m, "list-machines --no-legend --full --fields machine");
        out.lines().map(str::to_string).collect()
    }

    fn name_of(&self, id: &str) -> &str {
        self.ids
            .iter()
            .find(|(_, i)| *i == id)
            .map(|(n, _)| n.as_str())
            .unwrap_or_else(|| panic!("no machine has ID {id}"))
    }

    /// Polls `f` every 250 ms until it gives a value (at most `secs` seconds).
    fn wait<T>(&self, what: &str, secs: u64, f: impl Fn(&Self) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if start.elapsed() > Duration::from_secs(secs) {
                panic!(
                    "never: {what}; units now: {:?}",
                    self.units_on(self.witness(""))
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits for exactly `n` active units (as seen from `m`) and returns them.
    fn wait_active_on(&self, m: &str, n: usize) -> Vec<UnitRow> {
        self.wait(&format!("{n} active units"), 30, |f| {
            let a = f.active_on(m);
            (a.len() == n).then_some(a)
        })
    }

    /// A machine other than `not` to run fleetctl on.
    fn witness(&self, not: &str) -> &'static str {
        MACHINES
            .into_iter()
            .find(|m| *m != not)
            .unwrap_or("core-01")
    }

    fn destroy(&self, units: &[&str]) {
        let out = self.ok(&format!("destroy {}", units.join(" ")));
        for u in units {
            assert!(out.contains(&format!("Destroyed {u}")), "{out}");
        }
    }

    /// Writes a file into core-01's /home/core/units.
    fn put(&self, name: &str, text: &str) {
        let p = self.units_dir().join(name);
        std::fs::write(p, text).unwrap();
    }

    fn units_dir(&self) -> std::path::PathBuf {
        self.c.machine_dir("core-01").join("root/home/core/units")
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn boot() -> Fleet {
    let c = Cluster::new("fleet");
    let ud = repo().join("fixtures/fleet-units/cluster-user-data.yaml");
    let user_data = ud.to_str().unwrap().to_string();
    c.ok(&["up", "--instances", "3", "--user-data", &user_data]);
    copy_dir(
        &repo().join("fixtures/fleet-units"),
        &c.machine_dir("core-01").join("root/home/core/units"),
    );
    let mut f = Fleet {
        c,
        user_data,
        ids: BTreeMap::new(),
    };
    // Three machines, each with the hostname metadata (%H expanded by systemd).
    let rows = f.wait("3 machines with metadata", 90, |f| {
        let (_, out) = f.ctl("list-machines --no-legend --full --fields machine,metadata");
        let rows: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        (rows.len() == 3 && rows.iter().all(|(_, md)| md.contains("hostname=core-0")))
            .then_some(rows)
    });
    for (id, md) in rows {
        let host = md
            .split(',')
            .find_map(|kv| kv.strip_prefix("hostname="))
            .unwrap()
            .to_string();
        assert!(md.contains("cluster=vagrant"), "{md}");
        f.ids.insert(host, id);
    }
    assert_eq!(
        f.ids.keys().collect::<Vec<_>>(),
        MACHINES.iter().collect::<Vec<_>>()
    );
    f
}

#[test]
fn fleet_scenarios_on_three_machines() {
    let start = Instant::now();
    let mut f = boot();
    eprintln!(
        "cluster up, 3 machines in fleet: {:.1} s",
        start.elapsed().as_secs_f64()
    );

    client(&f);
    api(&f);
    unit_actions(&f);
    machine_of_and_member_leaving(&f);
    conflicts(&f);
    machine_id_global_and_metadata(&f);
    member_reboot(&f);
    partition(&f);

    eprintln!("all scenarios: {:.1} s", start.elapsed().as_secs_f64());
    f.c.destroy_and_check();
}

/// TestClientVersionFlag, TestClientVersionHelpOutput, TestClientHelpFlag,
/// TestFleetctlWithEnv.
fn client(f: &Fleet) {
    let (code, out) = f.ctl("version");
    assert_eq!((code, out.as_str()), (0, "fleetctl version 0.1.0\n"));
    let (code, out) = f.ctl("help");
    assert_eq!(code, 0);
    assert!(out.contains("0.1.0"), "{out}");
    for args in ["--help", "-h", "help", ""] {
        let (code, out) = f.ctl(args);
        assert_eq!(code, 0, "fleetctl {args}");
        assert!(out.contains("COMMANDS:"), "fleetctl {args}: {out}");
    }
    let (code, out) = f.c.sh(
        "core-01",
        "FLEETCTL_ENDPOINT=unix:///var/run/fleet.sock fleetctl list-machines --no-legend 2>&1",
    );
    assert_eq!((code, out.lines().count()), (0, 3), "{out}");
    // The API on TCP (fleet-tcp.socket, port 54728), from another machine.
    let ip = common::ip_of(&f.c.ok(&["status"]), "core-01");
    let (code, out) = f.c.sh(
        "core-02",
        &format!("fleetctl --endpoint=http://{ip}:54728 list-machines --no-legend 2>&1"),
    );
    assert_eq!((code, out.lines().count()), (0, 3), "{out}");
}

/// TestMachinesList, TestMachinesListBadNextPageToken, TestMachinesPatchAddModify,
/// TestMachinesPatchDelete, TestMachinesPatchBad — through curl on the API socket.
fn api(f: &Fleet) {
    let curl = |args: &str| -> (u16, String, String) {
        let (_, out) = f.c.sh(
            "core-01",
            &format!(
                "cd /home/core/units && curl -s -w '\\n%{{http_code}} %{{content_type}}' --unix-socket /var/run/fleet.sock {args}"
            ),
        );
        let (body, tail) = out.rsplit_once('\n').unwrap();
        let (code, ctype) = tail.split_once(' ').unwrap();
        (code.parse().unwrap(), ctype.to_string(), body.to_string())
    };
    let (code, ctype, body) = curl("http://fleet/fleet/v1/machines");
    assert_eq!((code, ctype.as_str()), (200, "application/json"), "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["machines"].as_array().unwrap().len(), 3, "{body}");
    let (code, ctype, _) = curl("'http://fleet/fleet/v1/machines?nextPageToken=EwBMLg=='");
    assert_eq!((code, ctype.as_str()), (400, "application/json"));

    let (m0, m1) = (&f.ids["core-01"], &f.ids["core-02"]);
    let patch = |name: &str, body: String| -> (u16, String, String) {
        std::fs::write(f.units_dir().join(name), body).unwrap();
        curl(&format!(
            "-X PATCH -H 'Content-Type: application/json' --data-binary @{name} http://fleet/fleet/v1/machines"
        ))
    };
    let (code, _, body) = patch(
        "patch-add.json",
        format!(
            r#"[{{"op":"add","path":"/{m0}/metadata/foo","Value":{{"value":"bar"}}}},
               {{"op":"replace","path":"/{m1}/metadata/ping","Value":{{"value":"splat"}}}}]"#
        ),
    );
    assert_eq!(code, 204, "{body}");
    let metadata = |id: &str| -> serde_json::Value {
        let (_, _, body) = curl("http://fleet/fleet/v1/machines");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        page["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()["metadata"]
            .clone()
    };
    assert_eq!(
        metadata(m0),
        serde_json::json!({"cluster": "vagrant", "foo": "bar", "hostname": "core-01"})
    );
    assert_eq!(
        metadata(m1),
        serde_json::json!({"cluster": "vagrant", "hostname": "core-02", "ping": "splat"})
    );
    let (code, _, body) = patch(
        "patch-remove.json",
        format!(
            r#"[{{"op":"remove","path":"/{m0}/metadata/foo"}},{{"op":"remove","path":"/{m1}/metadata/ping"}}]"#
        ),
    );
    assert_eq!(code, 204, "{body}");
    assert_eq!(
        metadata(m0),
        serde_json::json!({"cluster": "vagrant", "hostname": "core-01"})
    );
    assert_eq!(
        metadata(m1),
        serde_json::json!({"cluster": "vagrant", "hostname": "core-02"})
    );
    for (name, body) in [
        (
            "patch-op.json",
            format!(r#"[{{"op":"noop","path":"/{m0}/metadata/foo","value":{{"value":"x"}}}}]"#),
        ),
        (
            "patch-path.json",
            format!(r#"[{{"op":"add","path":"/{m0}/foo","value":{{"value":"x"}}}}]"#),
        ),
        (
            "patch-value.json",
            format!(r#"[{{"op":"add","path":"/{m0}/metadata/foo","value":{{"value":""}}}}]"#),
        ),
    ] {
        let (code, ctype, out) = patch(name, body);
        assert_eq!(
            (code, ctype.as_str()),
            (400, "application/json"),
            "{name}: {out}"
        );
    }
}

/// TestUnitSubmit, TestUnitLoad, TestUnitStart (0.13 forms, with template instances),
/// TestUnitStartReplace, TestUnitCat, TestUnitStatus, TestUnitSSHActions (status and
/// journal on the unit's machine), TestListUnitFilesOrder.
fn unit_actions(f: &Fleet) {
    let inst = |n: std::ops::RangeInclusive<u32>| -> Vec<String> {
        n.map(|i| format!("hello@{i}.service")).collect()
    };
    let nine = inst(1..=9);
    for _ in 0..2 {
        f.ok(&format!("submit {}", nine.join(" ")));
        assert_eq!(f.unit_files(), nine);
        // Submitting again does not fail.
        f.ok("submit hello@1.service");
        for u in &nine {
            f.ok(&format!("destroy {u}"));
        }
        assert!(f.unit_files().is_empty());
    }

    let six = inst(1..=6);
    f.ok(&format!("load {}", six.join(" ")));
    let rows = f.wait("6 loaded units", 30, |f| {
        let u = f.units_on("core-01");
        (u.len() == 6).then_some(u)
    });
    assert_eq!(rows.iter().map(|r| r.unit.clone()).collect::<Vec<_>>(), six);
    f.ok(&format!("unload {}", six.join(" ")));
    f.wait("no units listed after unload", 30, |f| {
        f.units_on("core-01").is_empty().then_some(())
    });
    f.destroy(&six.iter().map(String::as_str).collect::<Vec<_>>());

    let three = inst(1..=3);
    f.ok(&format!("start {}", three.join(" ")));
    f.wait_active_on("core-01", 3);
    // --replace: a changed template gives the running instances new content.
    let before = f.ok("cat hello@1.service");
    let tmpl = std::fs::read_to_string(f.units_dir().join("hello@.service")).unwrap();
    f.put("hello@.service", &tmpl.replace("sleep 1", "sleep 2"));
    for u in &three {
        f.ok(&format!("start --replace {u}"));
    }
    let after = f.ok("cat hello@1.service");
    assert_ne!(before, after);
    assert!(after.contains("sleep 2"), "{after}");
    f.wait_active_on("core-01", 3);
    f.put("hello@.service", &tmpl);
    f.ok(&format!("stop {}", three.join(" ")));
    f.wait_active_on("core-01", 0);
    f.destroy(&three.iter().map(String::as_str).collect::<Vec<_>>());

    // cat gives the unit as submitted; status after load says it is loaded.
    f.ok("submit hello.service");
    let fixture = std::fs::read_to_string(f.units_dir().join("hello.service")).unwrap();
    assert_eq!(f.ok("cat hello.service").trim(), fixture.trim());
    f.ok("load hello.service");
    let row = f.wait("hello.service loaded", 30, |f| {
        f.units_on("core-01")
            .into_iter()
            .find(|u| u.unit == "hello.service")
    });
    let host = f.name_of(&row.machine).to_string();
    // systemctl's own exit status comes back: 3 for a unit that is not running.
    let (code, status) = f.ctl_on(&host, "status hello.service");
    assert_eq!(code, 3, "{status}");
    assert!(status.contains("Loaded: loaded"), "{status}");
    let out = f.ok("start --no-block hello.service");
    assert_eq!(out, "Triggered unit hello.service start\n");
    f.wait_active_on("core-01", 1);
    let (_, status) = f.ctl_on(&host, "status hello.service");
    assert!(status.contains("Active: active"), "{status}");
    let journal = f.wait("Hello, World! in the journal", 30, |f| {
        let (_, j) = f.ctl_on(&host, "journal --sudo hello.service");
        j.contains("Hello, World!").then_some(j)
    });
    assert!(journal.contains("Hello, World!"));
    let (code, echoed) = f.ctl_on(&host, "ssh hello.service echo foo");
    assert_eq!((code, echoed.trim()), (0, "foo"));
    f.destroy(&["hello.service"]);

    // list-unit-files is sorted by name, whatever the submission order.
    let mut names: Vec<String> = (1..=20).map(|i| format!("hello@{i:02}.service")).collect();
    names.reverse();
    f.c.sh(
        "core-01",
        &format!(
            "cd /home/core/units && for u in {}; do fleetctl submit $u >/dev/null || exit 1; done",
            names.join(" ")
        ),
    );
    names.reverse();
    assert_eq!(f.unit_files(), names);
    f.ok(&format!("destroy {}", names.join(" ")));
}

/// TestScheduleMachineOf, with TestNodeShutdown's purge check on the member that leaves.
fn machine_of_and_member_leaving(f: &Fleet) {
    let units = [
        "ping.0.service",
        "ping.1.service",
        "ping.2.service",
        "pong.0.service",
        "pong.1.service",
        "pong.2.service",
    ];
    f.ok(&format!("start --no-block {}", units.join(" ")));
    assert_eq!(f.unit_files().len(), 6);
    let rows = f.wait_active_on("core-01", 6);
    let at = |rows: &[UnitRow], u: &str| -> String {
        rows.iter().find(|r| r.unit == u).unwrap().machine.clone()
    };
    for n in 0..3 {
        assert_eq!(
            at(&rows, &format!("ping.{n}.service")),
            at(&rows, &format!("pong.{n}.service"))
        );
    }
    // fleet stops on ping.1's machine: the others see two machines and the pair moves.
    let old = at(&rows, "ping.1.service");
    let leaving = f.name_of(&old).to_string();
    let witness = f.witness(&leaving);
    let (code, out) = f.c.sh(
        &leaving,
        "sudo systemctl stop fleet.socket fleet.service 2>&1",
    );
    assert_eq!(code, 0, "{out}");
    f.wait("2 machines", 10, |f| {
        (f.machine_ids_on(witness).len() == 2).then_some(())
    });
    let rows = f.wait("6 active again, ping.1 moved", 30, |f| {
        let a = f.active_on(witness);
        (a.len() == 6 && at(&a, "ping.1.service") != old).then_some(a)
    });
    assert_eq!(at(&rows, "pong.1.service"), at(&rows, "ping.1.service"));
    // The purge stopped the units on the machine that left.
    let (_, state) = f.c.sh(
        &leaving,
        "systemctl is-active ping.1.service pong.1.service",
    );
    for s in state.lines() {
        assert!(s == "inactive" || s == "unknown", "{state}");
    }
    let (code, out) = f.c.sh(
        &leaving,
        "sudo systemctl start fleet.socket fleet.service 2>&1",
    );
    assert_eq!(code, 0, "{out}");
    f.wait("3 machines again", 30, |f| {
        (f.machine_ids_on(witness).len() == 3).then_some(())
    });
    f.destroy(&units);
}

/// TestScheduleConflicts, TestScheduleMultipleConflicts, TestScheduleOneWayConflict (its
/// one node made by metadata: both units may run only on core-01).
fn conflicts(f: &Fleet) {
    let five: Vec<String> = (0..5).map(|n| format!("conflict.{n}.service")).collect();
    f.ok(&format!("start --no-block {}", five.join(" ")));
    assert_eq!(f.unit_files().len(), 5);
    let rows = f.wait_active_on("core-01", 3);
    let machines: std::collections::BTreeSet<_> = rows.iter().map(|r| r.machine.clone()).collect();
    assert_eq!(machines.len(), 3, "{rows:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(f.active_on("core-01").len(), 3, "no more than 3 ever run");
    f.destroy(&five.iter().map(String::as_str).collect::<Vec<_>>());

    let multiple: Vec<String> = (0..3)
        .map(|n| format!("conflict.multiple.{n}.service"))
        .collect();
    f.ok(&format!("start --no-block {}", multiple.join(" ")));
    let rows = f.wait_active_on("core-01", 3);
    let machines: std::collections::BTreeSet<_> = rows.iter().map(|r| r.machine.clone()).collect();
    assert_eq!(machines.len(), 3, "{rows:?}");
    f.destroy(&multiple.iter().map(String::as_str).collect::<Vec<_>>());

    f.ok("start oneway/conflicts-with-hello.service");
    f.wait_active_on("core-01", 1);
    f.ok("start --no-block oneway/hello.service");
    assert_eq!(f.unit_files().len(), 2);
    std::thread::sleep(Duration::from_secs(1));
    let active = f.active_on("core-01");
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0].unit, "conflicts-with-hello.service");
    f.destroy(&["conflicts-with-hello.service"]);
    let rows = f.wait("hello.service the single active unit", 30, |f| {
        let a = f.active_on("core-01");
        (a.len() == 1 && a[0].unit == "hello.service").then_some(a)
    });
    assert_eq!(rows[0].machine, f.ids["core-01"]);
    f.destroy(&["hello.service"]);
}

/// TestScheduleConditionMachineID, TestScheduleGlobalUnits,
/// TestTemplatesWithSpecifiersInMetadata.
fn machine_id_global_and_metadata(f: &Fleet) {
    let pinned: Vec<String> = f
        .ids
        .values()
        .map(|id| format!("pin@{id}.service"))
        .collect();
    f.ok(&format!("start {}", pinned.join(" ")));
    let rows = f.wait_active_on("core-01", 3);
    for id in f.ids.values() {
        let row = rows
            .iter()
            .find(|r| r.unit == format!("pin@{id}.service"))
            .unwrap();
        assert_eq!(&row.machine, id);
    }
    f.destroy(&pinned.iter().map(String::as_str).collect::<Vec<_>>());

    f.ok("start hello.service goodbye.service");
    f.wait_active_on("core-01", 2);
    let out = f.ok("start global.service");
    assert_eq!(
        out,
        "Unit global.service inactive\nTriggered global unit global.service start\n"
    );
    let rows = f.wait_active_on("core-01", 5);
    let on: std::collections::BTreeSet<_> = rows
        .iter()
        .filter(|r| r.unit == "global.service")
        .map(|r| r.machine.clone())
        .collect();
    assert_eq!(on.len(), 3, "{rows:?}");
    f.destroy(&["hello.service", "goodbye.service", "global.service"]);
    f.wait_active_on("core-01", 0);

    f.ok("submit metadata@.service");
    let names: Vec<String> = MACHINES
        .iter()
        .rev()
        .map(|m| format!("metadata@{m}.service"))
        .collect();
    for n in &names {
        f.ok(&format!("start {n}"));
    }
    let rows = f.wait_active_on("core-01", 3);
    for m in MACHINES {
        let row = rows
            .iter()
            .find(|r| r.unit == format!("metadata@{m}.service"))
            .unwrap();
        assert_eq!(row.machine, f.ids[m], "{rows:?}");
    }
    let (code, out) = f.ctl("start --block-attempts=6 metadata@invalid.service");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("timed out waiting for unit metadata@invalid.service"),
        "{out}"
    );
    let mut all = names.clone();
    all.push("metadata@invalid.service".into());
    all.push("metadata@.service".into());
    f.destroy(&all.iter().map(String::as_str).collect::<Vec<_>>());
}

/// TestDynamicClusterMemberReboot, with a reboot that keeps the machine ID (as a real
/// reboot does; fleet's harness made a new member): the unit of the member that went
/// away waits (it conflicts with the units on the others) and returns to it, and the
/// others never move.
fn member_reboot(f: &Fleet) {
    let three: Vec<String> = (0..3).map(|n| format!("conflict.{n}.service")).collect();
    f.ok(&format!("start {}", three.join(" ")));
    let before = f.wait_active_on("core-01", 3);
    let t = Instant::now();
    f.c.ok(&["halt", "--force", "core-02"]);
    f.wait("2 machines", 30, |f| {
        (f.machine_ids_on("core-01").len() == 2).then_some(())
    });
    let during = f.wait_active_on("core-01", 2);
    f.c.ok(&["up", "--instances", "3", "--user-data", &f.user_data]);
    let after = f.wait("3 active after the reboot", 90, |f| {
        let a = f.active_on("core-01");
        (a.len() == 3).then_some(a)
    });
    eprintln!(
        "member reboot: back with its unit in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for r in &during {
        assert!(
            before.contains(r),
            "a unit moved while core-02 was away: {r:?}"
        );
    }
    assert_eq!(before, after);
    f.destroy(&three.iter().map(String::as_str).collect::<Vec<_>>());
}

/// The machine's link cut inside its network namespace (TestSingleNodeConnectivityLoss's
/// assertions for units that cannot move, plus fencing): `plain.service` keeps running on
/// the cut-off machine while it is started elsewhere (fleet's behaviour); `fenced.service`
/// (Fencing=true) stops there before it starts elsewhere, by the kernel's monotonic clock
/// that all machines share; `stay@<id>` (pinned there) runs on, and is never stopped.
fn partition(f: &Fleet) {
    f.ok("start partition/plain.service");
    f.ok("start partition/fenced.service");
    let rows = f.wait_active_on("core-01", 2);
    let id = rows[0].machine.clone();
    assert!(rows.iter().all(|r| r.machine == id), "{rows:?}");
    let cut = f.name_of(&id).to_string();
    let witness = f.witness(&cut);
    f.ok(&format!("start partition/stay@{id}.service"));
    f.wait_active_on("core-01", 3);

    let json = f.c.cluster_json();
    let netns = format!("ferrite-{}-{cut}", json["id"].as_str().unwrap());
    let ip = |args: &[&str]| -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&netns)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {netns} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let routes = ip(&["route", "show"]);
    let t = Instant::now();
    ip(&["link", "set", "eth0", "down"]);

    // When systemd logged `what` for the unit last, by the kernel's monotonic clock (the
    // same in every machine; systemd forgets an inactive unit's own timestamps).
    let logged = |m: &str, unit: &str, what: &str| -> f64 {
        let (_, out) = f.c.sh(
            m,
            &format!("sudo journalctl -u {unit} -o short-monotonic --no-pager"),
        );
        out.lines()
            .filter(|l| l.contains(&format!("systemd[1]: {what} {unit}")))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.trim().parse().ok())
            .next_back()
            .unwrap_or_else(|| panic!("{m}: no {what:?} for {unit}:\n{out}"))
    };
    let stopped = f.wait("fenced.service stopped on the cut-off machine", 30, |f| {
        let (_, s) = f.c.sh(&cut, "systemctl is-active fenced.service");
        (s.trim() != "active").then(|| t.elapsed())
    });
    let moved = f.wait("plain and fenced running elsewhere", 60, |f| {
        let a = f.active_on(witness);
        let elsewhere = |u: &str| a.iter().any(|r| r.unit == u && r.machine != id);
        (elsewhere("plain.service") && elsewhere("fenced.service")).then(|| (t.elapsed(), a))
    });
    eprintln!(
        "partition: fenced.service stopped {:.2} s after the cut, both units running elsewhere after {:.2} s",
        stopped.as_secs_f64(),
        moved.0.as_secs_f64()
    );
    let new_home = f
        .name_of(
            &moved
                .1
                .iter()
                .find(|r| r.unit == "fenced.service")
                .unwrap()
                .machine,
        )
        .to_string();
    let stop_at = logged(&cut, "fenced.service", "Stopped");
    let start_at = logged(&new_home, "fenced.service", "Started");
    assert!(
        stop_at < start_at,
        "fenced.service started on {new_home} ({start_at} s) before it stopped on {cut} ({stop_at} s)"
    );
    eprintln!(
        "partition: fenced.service stopped on {cut} {:.2} s before it started on {new_home}",
        start_at - stop_at
    );
    // Not fenced: still running on the cut-off machine, so for now it runs twice.
    for unit in ["plain.service", &format!("stay@{id}.service")] {
        let (_, s) = f.c.sh(&cut, &format!("systemctl is-active {unit}"));
        assert_eq!(s.trim(), "active", "{unit} on {cut}");
    }

    // The link comes back: the machine rejoins, stops the unit that moved, keeps the
    // pinned one (never stopped), and does not start the fenced one again.
    ip(&["link", "set", "eth0", "up"]);
    for r in routes.lines().filter(|r| r.starts_with("default")) {
        let args: Vec<&str> = r.split_whitespace().collect();
        let mut a = vec!["route", "replace"];
        a.extend(args);
        ip(&a);
    }
    f.wait("3 machines after the partition", 60, |f| {
        (f.machine_ids_on(witness).len() == 3).then_some(())
    });
    f.wait(
        "plain.service stopped on the machine that was cut off",
        60,
        |f| {
            let (_, s) = f.c.sh(&cut, "systemctl is-active plain.service");
            (s.trim() != "active").then_some(())
        },
    );
    let (_, s) = f.c.sh(
        &cut,
        &format!("systemctl is-active stay@{id}.service fenced.service"),
    );
    assert_eq!(s, "active\ninactive\n", "on {cut}");
    let (_, journal) = f.c.sh(&cut, "sudo journalctl -b --no-pager -o cat _PID=1");
    assert!(
        !journal.contains(&format!("Stopping stay@{id}")),
        "the pinned unit was stopped"
    );
    let rows = f.wait_active_on(witness, 3);
    assert!(rows
        .iter()
        .any(|r| r.unit == format!("stay@{id}.service") && r.machine == id));
    f.destroy(&[
        "plain.service",
        "fenced.service",
        &format!("stay@{id}.service"),
    ]);
}

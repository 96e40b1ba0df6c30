//! fleet's functional scenarios on a real three-machine Ferrite cluster (`ferrite up`), each
//! asserting what fleet's own test asserted (adapted where the harness differs, and said
//! so): fleetctl's help, version and environment; the API on its Unix socket and on TCP;
//! the API's machine list, page tokens and metadata PATCH; unit actions (submit, load,
//! start, stop, unload, destroy, cat, status, journal, `--replace`, list-unit-files order);
//! MachineOf with a member leaving (and its purge); Conflicts one- and two-way; MachineID;
//! global units and their conflicts; metadata with specifiers; SSH to other machines,
//! known-hosts checking and `--tunnel`; `[Install]` units; SIGHUP reload; a duplicate
//! machine ID; Replaces; a new member taking a moved unit; a member's reboot; a network
//! partition (the machine's link cut inside its namespace: plain units keep running,
//! fenced units stop before they run elsewhere) and a clean stop while cut off; and a
//! fourth machine whose etcd is a proxy.
//!
//! Units come from `fixtures/fleet-units`; fleetctl runs inside the machines over fleetd's
//! API socket. Needs root, like `machines.rs`.
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

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{repo, Cluster};

const MACHINES: [&str; 3] = ["core-01", "core-02", "core-03"];

/// fleet's functional tests ran fleetctl without host key checking, except the one that
/// tests it.
const NO_STRICT: &str = "--strict-host-key-checking=false";

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

    /// When systemd on `m` last logged `what` (`Started`, `Stopped`) for `unit`, by the
    /// kernel's monotonic clock (the same in every machine; systemd forgets an inactive
    /// unit's own timestamps).
    fn logged(&self, m: &str, unit: &str, what: &str) -> f64 {
        let (_, out) = self.c.sh(
            m,
            &format!("sudo journalctl -u {unit} -o short-monotonic --no-pager"),
        );
        out.lines()
            .filter(|l| l.contains(&format!("systemd[1]: {what} {unit}")))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.trim().parse().ok())
            .next_back()
            .unwrap_or_else(|| panic!("{m}: no {what:?} for {unit}:\n{out}"))
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
    ssh_and_known_hosts(&f);
    tunnel(&f);
    install_unit(&f);
    reconfigure_server(&f);
    detect_machine_id(&f);
    machine_of_and_member_leaving(&f);
    conflicts(&f);
    replace_and_new_member(&f);
    machine_id_global_and_metadata(&f);
    member_reboot(&f);
    fleetd_faults(&f);
    etcd_member_stopped(&f);
    partition(&f);
    etcd_proxy_member(&f);

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
    // TestUnitSSHActions, on the unit's machine and from another one (over SSH).
    for from in [host.as_str(), f.witness(&host)] {
        let (_, status) = f.ctl_on(from, &format!("{NO_STRICT} status hello.service"));
        assert!(status.contains("Active: active"), "from {from}: {status}");
        let journal = f.wait("Hello, World! in the journal", 30, |f| {
            let (_, j) = f.ctl_on(from, &format!("{NO_STRICT} journal --sudo hello.service"));
            j.contains("Hello, World!").then_some(j)
        });
        assert!(journal.contains("Hello, World!"));
        let (code, echoed) = f.ctl_on(from, &format!("{NO_STRICT} ssh hello.service echo foo"));
        assert_eq!((code, echoed.trim()), (0, "foo"), "from {from}");
    }
    // The remote command's exit status comes back.
    let (code, _) = f.ctl_on(
        f.witness(&host),
        &format!("{NO_STRICT} ssh hello.service exit 7"),
    );
    assert_eq!(code, 7);
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

/// TestTunnelScheduleBatchUnits: fleetctl on core-01 through an SSH tunnel to core-02
/// (strict host key checking, a fresh known_hosts, the question answered `yes`): start
/// hello.service, then hello@1..10 in one call, with no error; 11 active. Then `ssh` to
/// core-03 through the same bastion.
fn tunnel(f: &Fleet) {
    let (_, out) = f.ctl("list-machines --no-legend --full --fields machine,ip");
    let ip_of = |m: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{}\t", f.ids[m])))
            .unwrap_or_else(|| panic!("no IP for {m} in {out}"))
            .to_string()
    };
    let bastion = ip_of("core-02");
    let tunneled = format!("--tunnel={bastion} --known-hosts-file=/tmp/kht");
    // fleetctl through the tunnel, answering `yes` to any question.
    let yes = |args: &str| {
        f.c.sh(
            "core-01",
            &format!("cd /home/core/units; echo yes | fleetctl {tunneled} {args} 2>&1"),
        )
    };
    f.c.sh("core-01", "rm -f /tmp/kht");
    let (code, out) = yes("start hello.service");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("can't be established"), "{out}");
    assert!(out.contains("Unit hello.service launched"), "{out}");
    let ten: Vec<String> = (1..=10).map(|i| format!("hello@{i}.service")).collect();
    let (code, out) = f.ctl(&format!("{tunneled} start {} </dev/null", ten.join(" ")));
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("Error"), "{out}");
    f.wait_active_on("core-01", 11);
    let (code, out) = yes(&format!("ssh {} hostname", f.ids["core-03"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("core-03\n"), "{out}");
    let mut all = ten;
    all.push("hello.service".into());
    let (code, out) = f.ctl(&format!("{tunneled} destroy {} </dev/null", all.join(" ")));
    assert_eq!(code, 0, "{out}");
    f.wait_active_on("core-01", 0);
}

/// TestInstallUnit: a unit with an `[Install]` section is enabled, so systemd starts it
/// with the unit that wants it and stops it with that unit (`BindsTo=`), while fleet only
/// loaded it.
fn install_unit(f: &Fleet) {
    f.ok("load hello.service install/discovery.service");
    let state = |f: &Fleet, u: &str| -> Option<String> {
        f.units_on("core-01")
            .into_iter()
            .find(|r| r.unit == u)
            .map(|r| r.active)
    };
    f.wait("both loaded", 30, |f| {
        (f.units_on("core-01").len() == 2).then_some(())
    });
    assert_eq!(state(f, "discovery.service").as_deref(), Some("inactive"));
    f.ok("start hello.service");
    f.wait("discovery active with hello", 30, |f| {
        (state(f, "discovery.service").as_deref() == Some("active")).then_some(())
    });
    f.ok("stop hello.service");
    f.wait("discovery inactive without hello", 30, |f| {
        (state(f, "discovery.service").as_deref() == Some("inactive")).then_some(())
    });
    f.destroy(&["hello.service", "discovery.service"]);
}

/// TestReconfigureServer: after SIGHUP fleetd says it reloads its configuration, keeps
/// serving the API (no `Failed serving HTTP on listener:`) and stays active; the unit it
/// runs keeps running.
fn reconfigure_server(f: &Fleet) {
    f.ok("start hello.service");
    let row = f.wait_active_on("core-01", 1).remove(0);
    let host = f.name_of(&row.machine).to_string();
    let pid = |f: &Fleet| {
        f.c.sh(&host, "systemctl show -p MainPID --value hello.service")
            .1
    };
    let before = pid(f);
    let (code, out) =
        f.c.sh(&host, "sudo systemctl kill -s HUP fleet.service 2>&1");
    assert_eq!(code, 0, "{out}");
    let journal = "journalctl -u fleet.service --no-pager -o cat";
    f.c.sh_until(&host, journal, "Reloading configuration", 30);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pid(f), before, "the unit kept running through the reload");
    f.ok("unload hello.service");
    f.wait("hello unloaded", 30, |f| {
        f.units_on(&host).is_empty().then_some(())
    });
    let (_, log) = f.c.sh(&host, journal);
    assert!(!log.contains("Failed serving HTTP on listener:"), "{log}");
    let (_, show) = f.c.sh(
        &host,
        "systemctl show -p ActiveState -p Result fleet.service",
    );
    assert!(show.contains("ActiveState=active\n"), "{show}");
    assert!(show.contains("Result=success\n"), "{show}");
    assert_ne!(before.trim(), "0");
    f.destroy(&["hello.service"]);
}

/// TestDetectMachineId: core-03 given core-01's machine ID keeps fleetd active (Result
/// success) but unregistered, so its `list-machines` fails with fleet's message; with its
/// own ID back and fleet restarted, it is a member again.
fn detect_machine_id(f: &Fleet) {
    let restart = "sudo systemctl restart fleet.service 2>&1";
    let (code, out) = f.c.sh(
        "core-03",
        &format!(
            "sudo cp /etc/machine-id /tmp/machine-id && echo {} | sudo tee /etc/machine-id >/dev/null && {restart}",
            f.ids["core-01"]
        ),
    );
    assert_eq!(code, 0, "{out}");
    std::thread::sleep(Duration::from_secs(6));
    let (code, out) = f.ctl_on("core-03", "list-machines");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("fleet server unable to communicate with etcd"),
        "{out}"
    );
    let (_, show) = f.c.sh(
        "core-03",
        "systemctl show -p ActiveState -p Result fleet.service",
    );
    assert!(show.contains("ActiveState=active\n"), "{show}");
    assert!(show.contains("Result=success\n"), "{show}");
    let (code, out) = f.c.sh(
        "core-03",
        &format!("sudo cp /tmp/machine-id /etc/machine-id && {restart}"),
    );
    assert_eq!(code, 0, "{out}");
    f.wait("core-03 a member again", 30, |f| {
        (f.machine_ids_on("core-03").len() == 3).then_some(())
    });
}

/// TestScheduleMachineOf's `ssh <machine> uptime` on each member, and
/// TestKnownHostsVerification: with strict checking and an empty known_hosts, answering
/// `yes` adds the host and SSH works; after the member's host key changes (as a replaced
/// member's would) SSH fails; emptying the file makes it work again.
fn ssh_and_known_hosts(f: &Fleet) {
    for (m, id) in &f.ids {
        let (code, out) = f.ctl(&format!("{NO_STRICT} ssh {id} uptime"));
        assert_eq!(code, 0, "ssh {m}: {out}");
        assert!(out.contains("load average"), "ssh {m}: {out}");
    }
    let id = &f.ids["core-02"];
    // fleetctl on core-01 with the known_hosts file under test, standard input `input`.
    let ssh = |known: &str, input: &str| {
        f.c.sh(
            "core-01",
            &format!(
                "printf '{input}' | fleetctl --known-hosts-file={known} ssh {id} echo verified 2>&1"
            ),
        )
    };
    f.c.sh("core-01", "rm -f /tmp/kh /tmp/kh2");
    let (code, out) = ssh("/tmp/kh", "");
    assert_eq!(code, 255, "no answer, no connection: {out}");
    // The question and the notice go to standard error, as fleet's did; the command's
    // output alone to standard output.
    let (code, out) = f.c.sh(
        "core-01",
        &format!(
            "cd /home/core/units; printf 'yes\\n' | fleetctl --known-hosts-file=/tmp/kh ssh {} echo verified 2>/tmp/kh.err; cat /tmp/kh.err >&2",
            f.ids["core-02"]
        ),
    );
    assert_eq!((code, out.as_str()), (0, "verified\n"));
    let (_, question) = f.c.sh("core-01", "cat /tmp/kh.err");
    assert!(question.contains("can't be established"), "{question}");
    assert!(
        question.contains("Are you sure you want to continue connecting (yes/no)? "),
        "{question}"
    );
    assert!(
        question.contains("Warning: Permanently added '")
            && question.contains("to the list of known hosts."),
        "{question}"
    );
    // Known now: no question.
    let (code, out) = ssh("/tmp/kh", "");
    assert_eq!((code, out.as_str()), (0, "verified\n"));
    let (code, out) = f.c.sh(
        "core-02",
        "sudo sh -c 'rm /etc/ssh/ssh_host_*; ssh-keygen -A' 2>&1",
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = ssh("/tmp/kh", "yes\\n");
    assert_eq!(code, 255, "{out}");
    assert!(
        out.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{out}"
    );
    assert!(!out.contains("verified"), "{out}");
    // Answering no refuses.
    let (code, out) = ssh("/tmp/kh2", "no\\n");
    assert_eq!(code, 255, "{out}");
    assert!(!out.contains("verified"), "{out}");
    f.c.sh("core-01", ": > /tmp/kh");
    let (code, out) = ssh("/tmp/kh", "yes\\n");
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("verified\n"), "{out}");
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

/// TestScheduleReplace on two members (fleet stopped on core-03, as fleet's test had two
/// machines), then TestDynamicClusterNewMemberUnitMigration with core-03 as the new
/// member: it joins and takes nothing; when fleet stops on a conflicting unit's machine,
/// that unit moves to the new member and the other does not move.
fn replace_and_new_member(f: &Fleet) {
    let fleet = |m: &str, verb: &str| {
        let (code, out) = f.c.sh(
            m,
            &format!("sudo systemctl {verb} fleet.socket fleet.service 2>&1"),
        );
        assert_eq!(code, 0, "{verb} fleet on {m}: {out}");
    };
    let machines_seen = |from: &str, n: usize| {
        f.wait(&format!("{n} machines"), 30, |f| {
            (f.machine_ids_on(from).len() == n).then_some(())
        });
    };
    let at = |rows: &[UnitRow], u: &str| -> String {
        rows.iter()
            .find(|r| r.unit == u)
            .map(|r| r.machine.clone())
            .unwrap_or_default()
    };
    fleet("core-03", "stop");
    machines_seen("core-01", 2);
    f.ok("start replace.0.service");
    let old = f.wait_active_on("core-01", 1)[0].machine.clone();
    f.ok("start replace.1.service replace.2.service");
    let rows = f.wait_active_on("core-01", 3);
    assert_ne!(at(&rows, "replace.1.service"), old, "{rows:?}");
    assert_eq!(
        at(&rows, "replace.2.service"),
        at(&rows, "replace.1.service")
    );
    // kick0 lands on the less loaded machine, replace.0's, and pushes replace.0 off it.
    f.ok("start replace-kick0.service");
    let rows = f.wait("kick0 in replace.0's place", 30, |f| {
        let a = f.active_on("core-01");
        (a.len() == 4
            && at(&a, "replace-kick0.service") == old
            && at(&a, "replace.0.service") != old)
            .then_some(a)
    });
    eprintln!("replace: {rows:?}");
    f.destroy(&[
        "replace.0.service",
        "replace.1.service",
        "replace.2.service",
        "replace-kick0.service",
    ]);
    f.wait_active_on("core-01", 0);

    let two = ["conflict.0.service", "conflict.1.service"];
    f.ok(&format!("start {}", two.join(" ")));
    let before = f.wait_active_on("core-01", 2);
    fleet("core-03", "start");
    machines_seen("core-01", 3);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(f.active_on("core-01"), before, "a new member takes nothing");
    let host = f.name_of(&at(&before, "conflict.1.service")).to_string();
    let witness = f.witness(&host);
    fleet(&host, "stop");
    machines_seen(witness, 2);
    let after = f.wait("conflict.1 on the new member", 30, |f| {
        let a = f.active_on(witness);
        (a.len() == 2 && at(&a, "conflict.1.service") == f.ids["core-03"]).then_some(a)
    });
    assert_eq!(
        at(&after, "conflict.0.service"),
        at(&before, "conflict.0.service"),
        "the other unit did not move"
    );
    fleet(&host, "start");
    machines_seen(witness, 3);
    f.destroy(&two);
}

/// TestScheduleConditionMachineID, TestScheduleGlobalUnits, TestScheduleGlobalConflicts,
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
    // fleet printed the current state, which a global unit never has.
    let out = f.ok("start global.service");
    assert_eq!(
        out,
        "Unit global.service \nTriggered global unit global.service start\n"
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

    // TestScheduleGlobalConflicts: a second global unit that conflicts with the first
    // runs nowhere.
    f.ok("start conflict-global.0.service");
    f.wait_active_on("core-01", 3);
    f.ok("start conflict-global.1.service");
    std::thread::sleep(Duration::from_secs(2));
    let rows = f.active_on("core-01");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter().all(|r| r.unit == "conflict-global.0.service"),
        "{rows:?}"
    );
    f.destroy(&["conflict-global.0.service", "conflict-global.1.service"]);
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
    let token = f.c.cluster_json()["discovery"]["url"].clone();
    f.c.ok(&["up", "--instances", "3", "--user-data", &f.user_data]);
    // The cluster keeps its discovery token, as a Vagrantfile's user-data did.
    assert_eq!(f.c.cluster_json()["discovery"]["url"], token);
    assert!(
        token
            .as_str()
            .is_some_and(|t| t.contains("/_etcd/registry/")),
        "{token}"
    );
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

/// kola's coreos.fleet.etcdproxy on a fourth machine: the discovery cluster is full, so its
/// etcd is a v2 proxy (as on CoreOS); fleet there still joins (it talks to the members
/// directly), and a looping unit started on it reaches `active` there.
fn etcd_proxy_member(f: &Fleet) {
    f.c.ok(&["up", "--instances", "4", "--user-data", &f.user_data]);
    f.c.sh_until(
        "core-04",
        "journalctl -u etcd2 --no-pager -o cat",
        "v2 proxy started",
        60,
    );
    f.wait("4 machines, seen from the proxy", 60, |f| {
        (f.machine_ids_on("core-04").len() == 4).then_some(())
    });
    let (code, out) = f.c.sh(
        "core-04",
        "printf '[Service]\\nExecStart=/bin/bash -c \"while true; do echo proxied; sleep 1; done\"\\n[X-Fleet]\\nMachineID=%s\\n' $(cat /etc/machine-id) > /tmp/proxied.service && cd /tmp && fleetctl start proxied.service 2>&1",
    );
    assert_eq!(code, 0, "{out}");
    let row = f.wait("proxied.service active", 30, |f| {
        f.units_on("core-04")
            .into_iter()
            .find(|u| u.unit == "proxied.service" && u.active == "active")
    });
    let (_, id) = f.c.sh("core-04", "cat /etc/machine-id");
    assert_eq!(row.machine, id.trim());
    f.destroy(&["proxied.service"]);
}

/// The machine's link cut inside its network namespace (TestSingleNodeConnectivityLoss's
/// assertions for units that cannot move, plus fencing): `plain.service` keeps running on
/// the cut-off machine while it is started elsewhere (fleet's behaviour); `fenced.service`
/// (Fencing=true) stops there before it starts elsewhere, by the kernel's monotonic clock
/// that all machines share; `stay@<id>` (pinned there) runs on, and is never stopped.
/// Then TestShutdownVsMonitor: fleet's monitor line while cut off, and a clean stop.
/// fleetd's own faults: a unit systemd refuses (an `Execstart=` typo) is started and
/// destroyed without holding up any other unit; a pinned unit survives a SIGKILL of fleetd
/// with its PID unchanged; a SIGKILL of fleetd stops its fenced units at once (they are
/// bound to fleet.service) and never runs one on two machines.
fn fleetd_faults(f: &Fleet) {
    f.ok("start --no-block crash/typo.service");
    f.ok("start hello.service");
    f.wait("hello active", 30, |f| {
        f.active_on("core-01")
            .iter()
            .any(|r| r.unit == "hello.service")
            .then_some(())
    });
    f.destroy(&["typo.service"]);
    f.ok("start goodbye.service");
    f.wait("goodbye active", 30, |f| {
        f.active_on("core-01")
            .iter()
            .any(|r| r.unit == "goodbye.service")
            .then_some(())
    });
    for m in MACHINES {
        let (_, journal) = f.c.sh(m, "journalctl -u fleet.service --no-pager -o cat");
        assert!(!journal.contains("agent pass failed"), "{m}:\n{journal}");
        f.wait(&format!("typo.service gone from {m}"), 20, |f| {
            let (_, left) = f.c.sh(m, "ls /run/fleet/units");
            (!left.contains("typo")).then_some(())
        });
    }
    f.destroy(&["hello.service", "goodbye.service"]);

    // A pinned unit and a SIGKILL of its machine's fleetd.
    let host = "core-02";
    let id = f.ids[host].clone();
    // (pin@, not the partition scenario's stay@: that one checks its journal for stops.)
    let stay = format!("pin@{id}.service");
    f.ok(&format!("start {stay}"));
    f.wait_active_on("core-01", 1);
    let pid_of = |unit: &str| {
        f.c.sh(host, &format!("systemctl show -p MainPID --value {unit}"))
            .1
    };
    let pid = pid_of(&stay);
    let (_, before) = f.c.sh(
        host,
        "journalctl -u fleet.service --no-pager -o cat | wc -l",
    );
    f.c.sh(host, "sudo systemctl kill -s KILL fleet.service");
    // Back (restarted by systemd), registered again, and past its 15 s hold.
    f.c.sh_until(
        host,
        &format!(
            "journalctl -u fleet.service --no-pager -o cat | tail -n +{}",
            before.trim().parse::<u64>().unwrap_or(0) + 1
        ),
        "starting fleetd",
        30,
    );
    f.wait("the machine back in fleet", 30, |f| {
        (f.machine_ids_on("core-01").len() == 3).then_some(())
    });
    std::thread::sleep(Duration::from_secs(16));
    let rows = f.wait_active_on("core-01", 1);
    assert_eq!(
        (rows[0].unit.as_str(), rows[0].machine.as_str()),
        (stay.as_str(), id.as_str())
    );
    assert_eq!(pid_of(&stay), pid, "{stay} was restarted");
    let (_, journal) = f.c.sh(host, "sudo journalctl -b --no-pager -o cat _PID=1");
    assert!(
        !journal.contains(&format!("Stopping {stay}")),
        "{stay} was stopped"
    );
    f.destroy(&[&stay]);

    // Fenced units and a SIGKILL of fleetd.
    f.ok("start partition/plain.service");
    f.ok("start partition/fenced.service");
    let rows = f.wait_active_on("core-01", 2);
    let home = f.name_of(&rows[0].machine).to_string();
    let (_, bound) =
        f.c.sh(&home, "systemctl show -p BindsTo --value fenced.service");
    assert!(
        bound.contains("fleet.service"),
        "fenced.service binds to: {bound:?}"
    );
    let t = Instant::now();
    f.c.sh(&home, "sudo systemctl kill -s KILL fleet.service");
    let stopped = f.wait("fenced.service stopped with fleetd", 30, |f| {
        let (_, s) = f.c.sh(&home, "systemctl is-active fenced.service");
        (s.trim() != "active").then(|| t.elapsed())
    });
    // Running again where systemd says so (the registry's states of the killed fleetd
    // stay until its lease lapses).
    let now_on = f.wait("fenced.service running again", 60, |f| {
        MACHINES
            .into_iter()
            .find(|m| f.c.sh(m, "systemctl is-active fenced.service").1.trim() == "active")
    });
    if now_on != home {
        let stop_at = f.logged(&home, "fenced.service", "Stopped");
        let start_at = f.logged(now_on, "fenced.service", "Started");
        assert!(
            stop_at < start_at,
            "fenced.service started on {now_on} ({start_at} s) before it stopped on {home} ({stop_at} s)"
        );
    }
    eprintln!(
        "fleetd SIGKILL: fenced.service stopped {:.2} s after the kill; running again on {} ({}) after {:.2} s",
        stopped.as_secs_f64(),
        now_on,
        if now_on == home { "the same machine" } else { "another machine" },
        t.elapsed().as_secs_f64()
    );
    f.destroy(&["plain.service", "fenced.service"]);
}

/// One etcd member stopped, quorum intact: fleetd on that machine goes on through the
/// other members (it learns them from etcd), so nothing moves and nothing runs twice.
fn etcd_member_stopped(f: &Fleet) {
    let three: Vec<String> = (0..3).map(|n| format!("conflict.{n}.service")).collect();
    f.ok(&format!("start --no-block {}", three.join(" ")));
    let before = f.wait_active_on("core-01", 3);
    let (_, journal) =
        f.c.sh("core-03", "journalctl -u fleet.service --no-pager -o cat");
    assert!(journal.contains("etcd members: using"), "{journal}");
    let (_, lines) = f.c.sh(
        "core-03",
        "journalctl -u fleet.service --no-pager -o cat | wc -l",
    );
    f.c.sh("core-03", "sudo systemctl stop etcd2.service");
    std::thread::sleep(Duration::from_secs(12));
    let after = f.active_on("core-01");
    assert_eq!(after, before, "units moved while one etcd member was down");
    assert_eq!(f.machine_ids_on("core-01").len(), 3);
    let (_, since) = f.c.sh(
        "core-03",
        &format!(
            "journalctl -u fleet.service --no-pager -o cat | tail -n +{}",
            lines.trim().parse::<u64>().unwrap_or(0) + 1
        ),
    );
    assert!(!since.contains("presence lease lost"), "{since}");
    f.c.sh("core-03", "sudo systemctl start etcd2.service");
    f.destroy(&three.iter().map(String::as_str).collect::<Vec<_>>());
}

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
    let stop_at = f.logged(&cut, "fenced.service", "Stopped");
    let start_at = f.logged(&new_home, "fenced.service", "Started");
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

    // fleet's server monitor: no heartbeat for a whole TTL is reported.
    f.c.sh_until(
        &cut,
        "journalctl -u fleet.service --no-pager -o cat",
        "Server monitor triggered: Monitor timed out before successful heartbeat",
        30,
    );

    // The link comes back: the machine rejoins, stops the unit that moved, keeps the
    // pinned one (never stopped), and does not start the fenced one again.
    let restore = || {
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
    };
    restore();
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
    if journal.contains(&format!("Stopping stay@{id}")) {
        let (_, fleet) = f.c.sh(
            &cut,
            "sudo journalctl -b --no-pager -o short-monotonic -u fleet.service -u 'stay@*' | tail -80",
        );
        panic!("the pinned unit was stopped on {cut}:\n{fleet}");
    }
    if f.active_on(witness).len() != 3 {
        std::thread::sleep(Duration::from_secs(20));
        if f.active_on(witness).len() != 3 {
            let (_, j) = f.c.sh(
                &cut,
                "journalctl -u fleet.service --no-pager -o short-monotonic | tail -60",
            );
            eprintln!("fleet journal of {cut}:\n{j}");
        }
    }
    let rows = f.wait("3 active units after the partition", 30, |f| {
        let a = f.active_on(witness);
        (a.len() == 3).then_some(a)
    });
    assert!(rows
        .iter()
        .any(|r| r.unit == format!("stay@{id}.service") && r.machine == id));
    f.destroy(&[
        "plain.service",
        "fenced.service",
        &format!("stay@{id}.service"),
    ]);

    // TestShutdownVsMonitor: cut off again until the monitor fires, then stop fleet: it
    // still shuts down cleanly.
    let (_, before) = f.c.sh(
        &cut,
        "journalctl -u fleet.service --no-pager -o cat | wc -l",
    );
    ip(&["link", "set", "eth0", "down"]);
    f.c.sh_until(
        &cut,
        &format!(
            "journalctl -u fleet.service --no-pager -o cat | tail -n +{}",
            before.trim().parse::<u64>().unwrap_or(0) + 1
        ),
        "Server monitor triggered",
        30,
    );
    let t = Instant::now();
    let (code, out) =
        f.c.sh(&cut, "sudo systemctl stop fleet.socket fleet.service 2>&1");
    assert_eq!(code, 0, "{out}");
    eprintln!(
        "shutdown while cut off from etcd: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (_, show) = f.c.sh(
        &cut,
        "systemctl show -p ActiveState -p Result fleet.service",
    );
    assert!(show.contains("ActiveState=inactive\n"), "{show}");
    assert!(show.contains("Result=success\n"), "{show}");
    let (code, out) =
        f.c.sh(&cut, "sudo systemctl start fleet.socket fleet.service 2>&1");
    assert_eq!(code, 0, "{out}");
    restore();
}

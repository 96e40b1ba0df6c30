//! Engine decisions, table-driven from fleet's scheduling rules (reference §1.2–1.3,
//! §2.6–2.7, §9) and the scheduling scenarios of fleet's functional tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::collections::BTreeMap;

use fleet_engine::{apply, desired_units, reconcile, Decision, Job, Reason, Snapshot};
use fleet_model::{machine::parse_metadata, JobState, Machine, Requirements};
use systemd_unit::fleet::deserialize;

fn job(name: &str, xfleet: &str, state: JobState, target: Option<&str>) -> Job {
    let text = format!("[Service]\nExecStart=/bin/true\n\n[X-Fleet]\n{xfleet}\n");
    Job {
        name: name.into(),
        requirements: Requirements::from_options(name, &deserialize(&text).unwrap()),
        target_state: state,
        target: target.map(str::to_string),
    }
}

fn launched(name: &str, xfleet: &str) -> Job {
    job(name, xfleet, JobState::Launched, None)
}

fn machine(id: &str, metadata: &str) -> Machine {
    Machine {
        id: id.into(),
        public_ip: String::new(),
        metadata: parse_metadata(metadata),
        version: "0.1.0".into(),
    }
}

fn machines(ids: &[&str]) -> Vec<Machine> {
    ids.iter().map(|i| machine(i, "")).collect()
}

/// Runs passes until the schedule is stable; returns job → machine.
fn settle(s: &mut Snapshot) -> BTreeMap<String, String> {
    for _ in 0..10 {
        let d = reconcile(s);
        if d.is_empty() {
            break;
        }
        apply(s, &d);
    }
    assert!(reconcile(s).is_empty(), "schedule does not settle");
    s.jobs
        .iter()
        .filter_map(|j| Some((j.name.clone(), j.target.clone()?)))
        .collect()
}

#[test]
fn least_loaded_with_lowest_id_tie_break() {
    let mut s = Snapshot {
        jobs: vec![
            launched("a.service", ""),
            launched("b.service", ""),
            launched("c.service", ""),
        ],
        machines: machines(&["m2", "m1", "m3"]),
    };
    let placed = settle(&mut s);
    assert_eq!(placed["a.service"], "m1");
    assert_eq!(placed["b.service"], "m2");
    assert_eq!(placed["c.service"], "m3");
    // A fourth goes to the lowest ID again, all being equally loaded.
    s.jobs.push(launched("d.service", ""));
    assert_eq!(settle(&mut s)["d.service"], "m1");
}

#[test]
fn inactive_jobs_are_not_scheduled_and_are_unscheduled() {
    let mut s = Snapshot {
        jobs: vec![
            job("a.service", "", JobState::Inactive, None),
            job("b.service", "", JobState::Inactive, Some("m1")),
        ],
        machines: machines(&["m1"]),
    };
    let d = reconcile(&s);
    assert_eq!(
        d,
        vec![Decision::Unschedule {
            job: "b.service".into(),
            machine: "m1".into(),
            reason: Reason::TargetStateInactive
        }]
    );
    assert!(settle(&mut s).is_empty());
    // Loaded jobs are scheduled like launched ones.
    s.jobs.push(job("c.service", "", JobState::Loaded, None));
    assert_eq!(settle(&mut s)["c.service"], "m1");
}

#[test]
fn machine_id_full_or_short_and_unknown_ids_never_schedule() {
    let ids = [
        "113f16a7d4f14b1e95ec8dc8df2db9c4",
        "2b4e0e3c1fe64a7a9a2a63e4a0f0c6f1",
        "3c9c4b5d2e1f4a6b8c7d9e0f1a2b3c4d",
    ];
    let mut s = Snapshot {
        jobs: vec![
            launched("full.service", &format!("MachineID={}", ids[2])),
            launched("short.service", "MachineID=2b4e0e3c"),
            launched("nowhere.service", "MachineID=ffffffff"),
        ],
        machines: machines(&ids),
    };
    let placed = settle(&mut s);
    assert_eq!(placed["full.service"], ids[2]);
    assert_eq!(placed["short.service"], ids[1]);
    assert!(!placed.contains_key("nowhere.service"));
}

#[test]
fn metadata_or_within_a_key_and_across_keys() {
    let mut s = Snapshot {
        jobs: vec![
            launched("east.service", "MachineMetadata=region=us-east"),
            launched(
                "either.service",
                "MachineMetadata=region=us-east\nMachineMetadata=region=us-west",
            ),
            launched(
                "east-ssd.service",
                "MachineMetadata=\"region=us-east\" \"disk=ssd\"",
            ),
            launched("missing-key.service", "MachineMetadata=rack=1"),
            launched("trap.service", "MachineMetadata=region=eu disk=ssd"),
        ],
        machines: vec![
            machine("m1", "region=us-west"),
            machine("m2", "region=us-east,disk=hdd"),
            machine("m3", "region=us-east,disk=ssd"),
        ],
    };
    let placed = settle(&mut s);
    assert!(["m2", "m3"].contains(&placed["east.service"].as_str()));
    assert!(placed.contains_key("either.service"));
    assert_eq!(placed["east-ssd.service"], "m3");
    assert!(!placed.contains_key("missing-key.service"));
    // Unquoted two-'=' value: ignored, so no constraint at all.
    assert!(placed.contains_key("trap.service"));
}

#[test]
fn machine_of_followers_go_with_their_peers_and_move_with_them() {
    // TestScheduleMachineOf: ping.N + pong.N, 3 machines.
    let mut jobs = Vec::new();
    for n in 0..3 {
        jobs.push(launched(
            &format!("pong.{n}.service"),
            &format!("MachineOf=ping.{n}.service"),
        ));
        jobs.push(launched(&format!("ping.{n}.service"), ""));
    }
    let mut s = Snapshot {
        jobs,
        machines: machines(&["m1", "m2", "m3"]),
    };
    let placed = settle(&mut s);
    assert_eq!(placed.len(), 6);
    for n in 0..3 {
        assert_eq!(
            placed[&format!("pong.{n}.service")],
            placed[&format!("ping.{n}.service")]
        );
    }
    // ping.1's machine dies: ping.1 moves and pong.1 follows it, in one pass.
    let dead = placed["ping.1.service"].clone();
    s.machines.retain(|m| m.id != dead);
    let d = reconcile(&s);
    assert!(d.contains(&Decision::Unschedule {
        job: "ping.1.service".into(),
        machine: dead.clone(),
        reason: Reason::MachineGone
    }));
    apply(&mut s, &d);
    let after = settle(&mut s);
    assert_eq!(after.len(), 6);
    assert_ne!(after["ping.1.service"], dead);
    assert_eq!(after["pong.1.service"], after["ping.1.service"]);
    // Bidirectional MachineOf never schedules.
    let mut s = Snapshot {
        jobs: vec![
            launched("x.service", "MachineOf=y.service"),
            launched("y.service", "MachineOf=x.service"),
        ],
        machines: machines(&["m1"]),
    };
    assert!(settle(&mut s).is_empty());
}

#[test]
fn conflicts_spread_units_and_leave_the_rest_unscheduled() {
    // TestScheduleConflicts: 5 mutually conflicting units, 3 machines.
    let jobs = (0..5)
        .map(|n| {
            launched(
                &format!("conflict.{n}.service"),
                "Conflicts=conflict.*.service",
            )
        })
        .collect();
    let mut s = Snapshot {
        jobs,
        machines: machines(&["m1", "m2", "m3"]),
    };
    let placed = settle(&mut s);
    assert_eq!(placed.len(), 3);
    let used: std::collections::BTreeSet<&String> = placed.values().collect();
    assert_eq!(used.len(), 3);
}

#[test]
fn conflicts_are_checked_both_ways() {
    // TestScheduleOneWayConflict: one machine.
    let mut s = Snapshot {
        jobs: vec![launched(
            "conflicts-with-hello.service",
            "Conflicts=hello.service",
        )],
        machines: machines(&["m1"]),
    };
    settle(&mut s);
    s.jobs.push(launched("hello.service", ""));
    let placed = settle(&mut s);
    assert!(placed.contains_key("conflicts-with-hello.service"));
    assert!(
        !placed.contains_key("hello.service"),
        "hello may not join a unit that conflicts with it"
    );
    // Destroy conflicts-with-hello: hello is placed.
    s.jobs.retain(|j| j.name != "conflicts-with-hello.service");
    assert_eq!(settle(&mut s)["hello.service"], "m1");
    // Multiple conflicts listed on one line (fleet 1.0): 3 units on 3 distinct machines.
    let jobs = (0..3)
        .map(|n| launched(&format!("conflict.multiple.{n}.service"), "Conflicts=conflict.multiple.0.service conflict.multiple.1.service conflict.multiple.2.service"))
        .collect();
    let mut s = Snapshot {
        jobs,
        machines: machines(&["m1", "m2", "m3"]),
    };
    let placed = settle(&mut s);
    assert_eq!(placed.len(), 3);
    assert_eq!(
        placed
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3
    );
}

#[test]
fn global_units_run_everywhere_they_match_and_count_as_load() {
    let mut s = Snapshot {
        jobs: vec![
            launched("global.service", "Global=true"),
            launched(
                "web-global.service",
                "Global=true\nMachineMetadata=role=web",
            ),
            launched("hello.service", ""),
            launched("follower.service", "MachineOf=web-global.service"),
        ],
        machines: vec![machine("m1", "role=web"), machine("m2", "role=db")],
    };
    let placed = settle(&mut s);
    assert!(
        !placed.contains_key("global.service"),
        "the engine never targets global units"
    );
    // m1 carries two globals, m2 one: hello goes to the less loaded m2.
    assert_eq!(placed["hello.service"], "m2");
    // A global unit serves as a MachineOf peer.
    assert_eq!(placed["follower.service"], "m1");
    let on = |s: &Snapshot, i: usize| {
        desired_units(&s.jobs, &s.machines[i])
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        on(&s, 0),
        vec!["follower.service", "global.service", "web-global.service"]
    );
    assert_eq!(on(&s, 1), vec!["global.service", "hello.service"]);
    // TestScheduleGlobalUnits: a new machine gets the global units, nothing else moves.
    s.machines.push(machine("m3", "role=web"));
    assert!(reconcile(&s).is_empty());
    assert_eq!(on(&s, 2), vec!["global.service", "web-global.service"]);
}

#[test]
fn no_rebalancing_when_a_member_leaves_or_joins() {
    // TestDynamicClusterNewMemberUnitMigration: 4 machines, 3 conflicting units.
    let jobs = (0..3)
        .map(|n| {
            launched(
                &format!("conflict.{n}.service"),
                "Conflicts=conflict.*.service",
            )
        })
        .collect();
    let mut s = Snapshot {
        jobs,
        machines: machines(&["m1", "m2", "m3", "m4"]),
    };
    let before = settle(&mut s);
    let dead = before["conflict.1.service"].clone();
    s.machines.retain(|m| m.id != dead);
    let after = settle(&mut s);
    assert_eq!(after["conflict.0.service"], before["conflict.0.service"]);
    assert_eq!(after["conflict.2.service"], before["conflict.2.service"]);
    assert_eq!(
        after["conflict.1.service"], "m4",
        "moved to the previously empty machine"
    );
    // A new machine joining moves nothing.
    s.machines.push(machine("m0", ""));
    assert!(reconcile(&s).is_empty());
}

#[test]
fn replaces_pushes_the_replaced_unit_elsewhere() {
    // TestScheduleReplace: replace.0 on m0, replace.1 + replace.2 (MachineOf) on m1.
    let mut s = Snapshot {
        jobs: vec![
            job("replace.0.service", "", JobState::Launched, Some("m0")),
            job("replace.1.service", "", JobState::Launched, Some("m1")),
            job(
                "replace.2.service",
                "MachineOf=replace.1.service",
                JobState::Launched,
                Some("m1"),
            ),
        ],
        machines: machines(&["m0", "m1"]),
    };
    assert!(reconcile(&s).is_empty());
    s.jobs.push(launched(
        "replace-kick0.service",
        "Replaces=replace.0.service",
    ));
    let d = reconcile(&s);
    assert!(d.contains(&Decision::Schedule {
        job: "replace-kick0.service".into(),
        machine: "m0".into()
    }));
    assert!(d.contains(&Decision::Unschedule {
        job: "replace.0.service".into(),
        machine: "m0".into(),
        reason: Reason::Replaced("replace-kick0.service".into())
    }));
    let placed = settle(&mut s);
    assert_eq!(placed["replace-kick0.service"], "m0");
    assert_eq!(placed["replace.0.service"], "m1");
    assert_eq!(placed.len(), 4);
}

#[test]
fn a_machine_that_lost_its_peer_or_gained_a_conflict_unschedules() {
    // The peer was unloaded (inactive): the follower is unscheduled in the same pass.
    let mut s = Snapshot {
        jobs: vec![
            job("ping.service", "", JobState::Inactive, Some("m1")),
            job(
                "pong.service",
                "MachineOf=ping.service",
                JobState::Launched,
                Some("m1"),
            ),
        ],
        machines: machines(&["m1"]),
    };
    let d = reconcile(&s);
    assert_eq!(d.len(), 2, "{d:?}");
    apply(&mut s, &d);
    assert!(settle(&mut s).is_empty());
}

#[test]
fn global_units_skip_conflicts_on_each_machine() {
    // fleet 1.0 (TestScheduleGlobalConflicts): a global unit is not run where it conflicts,
    // either way, with a unit placed there or with a global unit earlier by name.
    let jobs = vec![
        job(
            "placed.service",
            "Conflicts=g-b.service",
            JobState::Launched,
            Some("m1"),
        ),
        launched("g-a.service", "Global=true\nConflicts=g-c.service"),
        launched("g-b.service", "Global=true"),
        launched("g-c.service", "Global=true"),
        job("g-off.service", "Global=true", JobState::Inactive, None),
    ];
    let names = |m: &Machine| {
        desired_units(&jobs, m)
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&machine("m1", "")),
        vec!["g-a.service", "placed.service"]
    );
    assert_eq!(
        names(&machine("m2", "")),
        vec!["g-a.service", "g-b.service"]
    );
}

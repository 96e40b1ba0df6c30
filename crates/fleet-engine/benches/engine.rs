//! One engine pass over 10,000 units and 1,000 machines from an empty schedule, against a
//! baseline measured in the same run: the steady-state pass that follows (the same
//! snapshot, every unit already placed: the cost of reading the cluster with nothing to
//! decide). Then the passes of a thousand plain units arriving on one machine, against the
//! steady pass that follows them.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::disallowed_methods)]

use std::time::Instant;

use fleet_engine::{apply, reconcile, Job, Snapshot};
use fleet_model::{machine::parse_metadata, JobState, Machine, Requirements};
use systemd_unit::fleet::deserialize;

fn job(name: String, xfleet: &str) -> Job {
    let text = format!("[Service]\nExecStart=/bin/true\n[X-Fleet]\n{xfleet}\n");
    Job {
        requirements: Requirements::from_options(&name, &deserialize(&text).unwrap()),
        name,
        target_state: JobState::Launched,
        target: None,
    }
}

fn main() {
    let machines: Vec<Machine> = (0..1000)
        .map(|i| Machine {
            id: format!("{i:032x}"),
            public_ip: String::new(),
            metadata: parse_metadata(&format!(
                "rack={},role={}",
                i % 20,
                if i % 2 == 0 { "web" } else { "db" }
            )),
            version: String::new(),
        })
        .collect();
    let mut jobs = Vec::new();
    for n in 0..10_000 {
        let x = match n % 10 {
            0 => "MachineMetadata=role=web".to_string(),
            1 => format!("MachineOf=app.{}.service", n - 1),
            2 => "Conflicts=spread.*.service".to_string(),
            3 => format!("MachineMetadata=\"rack={}\" \"role=db\"", n % 20),
            _ => String::new(),
        };
        let name = match n % 10 {
            2 => format!("spread.{n}.service"),
            0 => format!("app.{}.service", n),
            _ => format!("app.{n}.service"),
        };
        jobs.push(job(name, &x));
    }
    let mut s = Snapshot { jobs, machines };
    let t = Instant::now();
    let d = reconcile(&s);
    let first = t.elapsed();
    let scheduled = d.len();
    apply(&mut s, &d);
    let t = Instant::now();
    let again = reconcile(&s);
    let steady = t.elapsed();
    println!("engine pass, 10,000 units x 1,000 machines:");
    println!(
        "  from an empty schedule: {:.1} ms ({scheduled} decisions)",
        first.as_secs_f64() * 1e3
    );
    println!(
        "  steady state (nothing to do): {:.1} ms ({} decisions)",
        steady.as_secs_f64() * 1e3,
        again.len()
    );
    println!(
        "  ratio first/steady: {:.1}",
        first.as_secs_f64() / steady.as_secs_f64()
    );

    // The shape of `fleetctl start` of a thousand plain units on one machine: the units
    // arrive a few at a time, and each pass places the newest against all those there.
    let one = vec![Machine {
        id: format!("{:032x}", 1),
        public_ip: String::new(),
        metadata: parse_metadata(""),
        version: String::new(),
    }];
    let mut s = Snapshot {
        jobs: Vec::new(),
        machines: one,
    };
    let t = Instant::now();
    for n in 0..1000 {
        s.jobs.push(job(format!("bench@{n}.service"), ""));
        if n % 10 == 9 {
            let d = reconcile(&s);
            apply(&mut s, &d);
        }
    }
    let burst = t.elapsed();
    let t = Instant::now();
    let again = reconcile(&s);
    let steady = t.elapsed();
    println!("engine passes, 1,000 plain units arriving ten at a time on one machine:");
    println!(
        "  100 passes: {:.1} ms; one more with nothing to do: {:.2} ms ({} decisions)",
        burst.as_secs_f64() * 1e3,
        steady.as_secs_f64() * 1e3,
        again.len()
    );
    println!(
        "  ratio burst/steady: {:.0}",
        burst.as_secs_f64() / steady.as_secs_f64()
    );
}

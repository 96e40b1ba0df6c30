//! `list-machines`, `list-units`, `list-unit-files` and `cat`: fleet's tables and texts.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;

use fleet_model::name::mangle;
use fleet_model::Machine;

use crate::cli::{self, on};
use crate::{err, registry, table, Global, Outcome};

/// A machine ID as fleetctl shortened it.
fn short(id: &str) -> String {
    format!("{}...", id.get(..8).unwrap_or(id))
}

/// A machine's table cell: its (short) ID and its IP.
pub(crate) fn machine_cell(id: &str, machines: &BTreeMap<String, Machine>, full: bool) -> String {
    let name = if full { id.to_string() } else { short(id) };
    match machines
        .get(id)
        .map(|m| m.public_ip.as_str())
        .filter(|ip| !ip.is_empty())
    {
        Some(ip) => format!("{name}/{ip}"),
        None => name,
    }
}

/// `--fields`, checked against the columns the command has.
fn fields_of(given: Option<&str>, default: &str, valid: &[&str]) -> Result<Vec<String>, String> {
    let f = given.unwrap_or(default).to_string();
    if f.is_empty() {
        return Err("Must define output format".into());
    }
    let fields: Vec<String> = f.split(',').map(str::to_string).collect();
    if let Some(bad) = fields.iter().find(|x| !valid.contains(&x.as_str())) {
        return Err(format!("Invalid key in output format: {bad:?}"));
    }
    Ok(fields)
}

/// The rows under a header of the fields' names (unless `no_legend`), laid out as Go's
/// tabwriter did.
fn print_table(no_legend: bool, fields: &[String], rows: Vec<Vec<String>>) {
    let mut all = Vec::new();
    if !no_legend {
        all.push(fields.iter().map(|f| f.to_uppercase()).collect());
    }
    all.extend(rows);
    let _ = std::io::stdout()
        .lock()
        .write_all(table::render(&all).as_bytes());
}

/// `fleetctl list-machines`.
pub async fn list_machines(g: &Global, f: cli::Listing) -> Outcome {
    let fields = match fields_of(
        f.table.fields.as_deref(),
        "machine,ip,metadata",
        &["machine", "ip", "metadata"],
    ) {
        Ok(f) => f,
        Err(e) => {
            err(e);
            return Ok(ExitCode::FAILURE);
        }
    };
    let full = on(f.table.full) || on(f.l);
    let reg = registry(g).await?;
    let mut machines = match reg.machines().await {
        Ok(m) => m,
        Err(e) => {
            err(format!("Error retrieving list of active machines: {e}"));
            return Ok(ExitCode::FAILURE);
        }
    };
    machines.sort_by(|a, b| a.id.cmp(&b.id));
    let rows = machines
        .iter()
        .map(|m| {
            fields
                .iter()
                .map(|f| match f.as_str() {
                    "machine" if full => m.id.clone(),
                    "machine" => short(&m.id),
                    "ip" if m.public_ip.is_empty() => "-".into(),
                    "ip" => m.public_ip.clone(),
                    _ if m.metadata.is_empty() => "-".into(),
                    _ => m
                        .metadata
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                })
                .collect()
        })
        .collect();
    print_table(on(f.table.no_legend), &fields, rows);
    Ok(ExitCode::SUCCESS)
}

/// `fleetctl list-units`.
pub async fn list_units(g: &Global, f: cli::Listing) -> Outcome {
    let full = on(f.table.full) || on(f.l);
    units_table(g, false, &f.table, full).await
}

/// `fleetctl list-unit-files` (fleet gave it no `-l`).
pub async fn list_unit_files(g: &Global, f: cli::ListUnitFiles) -> Outcome {
    units_table(g, true, &f.table, on(f.table.full)).await
}

/// The units' table: their files (`files`) or their states on machines.
async fn units_table(g: &Global, files: bool, t: &cli::Table, full: bool) -> Outcome {
    let (default, valid): (&str, &[&str]) = if files {
        (
            "unit,hash,dstate,state,target",
            &[
                "unit", "hash", "desc", "dstate", "state", "target", "tmachine", "global",
            ],
        )
    } else {
        (
            "unit,machine,active,sub",
            &["unit", "load", "active", "sub", "machine", "hash"],
        )
    };
    let fields = match fields_of(t.fields.as_deref(), default, valid) {
        Ok(f) => f,
        Err(e) => {
            err(e);
            return Ok(ExitCode::FAILURE);
        }
    };
    if fields.iter().any(|f| f == "tmachine") {
        err("WARNING: The \"tmachine\" field is deprecated. Use \"target\" instead");
    }
    let reg = registry(g).await?;
    let (jobs, states, machines) = match reg.snapshot().await {
        Ok(x) => x,
        Err(e) => {
            err(format!(
                "Error retrieving list of units from repository: {e}"
            ));
            return Ok(ExitCode::FAILURE);
        }
    };
    let hash = |h: &str| {
        if full {
            h.to_string()
        } else {
            h.get(..7).unwrap_or(h).to_string()
        }
    };
    let rows: Vec<Vec<String>> = if files {
        jobs.iter()
            .map(|j| {
                fields
                    .iter()
                    .map(|f| match f.as_str() {
                        "unit" => j.name.clone(),
                        "hash" => hash(&j.hash.to_string()),
                        "desc" => j
                            .unit
                            .as_deref()
                            .and_then(|t| systemd_unit::fleet::deserialize(t).ok())
                            .and_then(|o| {
                                o.into_iter()
                                    .find(|o| o.section == "Unit" && o.name == "Description")
                                    .map(|o| o.value)
                            })
                            .unwrap_or_else(|| "-".into()),
                        "dstate" => j.target_state.to_string(),
                        "state" if j.global => "-".into(),
                        "state" => j.current_state(&states).to_string(),
                        "global" => j.global.to_string(),
                        _ if j.global => "global".into(),
                        _ => j
                            .target
                            .as_deref()
                            .map_or_else(|| "-".into(), |t| machine_cell(t, &machines, full)),
                    })
                    .collect()
            })
            .collect()
    } else {
        let mut st = states.clone();
        st.sort_by(|a, b| {
            (a.unit.as_str(), a.machine_id.as_str()).cmp(&(b.unit.as_str(), b.machine_id.as_str()))
        });
        st.iter()
            .map(|s| {
                fields
                    .iter()
                    .map(|f| match f.as_str() {
                        "unit" => s.unit.clone(),
                        "load" => s.load_state.clone(),
                        "active" => s.active_state.clone(),
                        "sub" => s.sub_state.clone(),
                        "hash" => hash(&s.hash),
                        _ => machine_cell(&s.machine_id, &machines, full),
                    })
                    .collect()
            })
            .collect()
    };
    print_table(on(t.no_legend), &fields, rows);
    Ok(ExitCode::SUCCESS)
}

/// `fleetctl cat UNIT`.
pub async fn cat(g: &Global, f: cli::Units) -> Outcome {
    let units = f.units;
    if units.len() != 1 {
        err("One unit file must be provided");
        return Ok(ExitCode::FAILURE);
    }
    let name = mangle(&units[0]);
    let reg = registry(g).await?;
    let jobs = match reg.jobs().await {
        Ok(j) => j,
        Err(e) => {
            err(format!("Error retrieving Unit {name}: {e}"));
            return Ok(ExitCode::FAILURE);
        }
    };
    match jobs
        .iter()
        .find(|j| j.name == name)
        .and_then(|j| j.unit.clone())
    {
        Some(t) => {
            let _ = std::io::stdout().lock().write_all(t.as_bytes());
            Ok(ExitCode::SUCCESS)
        }
        None => {
            err(format!("Unit {name} not found"));
            Ok(ExitCode::FAILURE)
        }
    }
}

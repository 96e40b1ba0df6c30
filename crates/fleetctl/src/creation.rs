//! fleet's lazy creation: the units `submit`, `load`, `start` and `restart` name are found
//! in the registry, or read from local files and templates and validated, before any is
//! created; `--replace` gives changed content to units that exist (fleet 1.0).

use fleet_model::name::{mangle, validate_name, NameInfo};
use fleet_model::{JobState, Requirements};
use fleet_store::JobRecord;

use crate::client::{Client, Created};
use crate::{err, out};

/// The local file `arg` names or, for an instance, its template beside it (the order of
/// fleet's local-differs check); `true` when it is the template.
fn local_unit(arg: &str) -> Result<(String, bool), String> {
    let path = std::path::Path::new(arg);
    if path.exists() {
        return std::fs::read_to_string(path)
            .map(|t| (t, false))
            .map_err(|e| format!("failed getting Unit({arg}) from file: {e}"));
    }
    let base = path.file_name().and_then(|b| b.to_str()).unwrap_or(arg);
    let info = NameInfo::parse(base)
        .ok_or_else(|| format!("error extracting information from unit name {arg}"))?;
    let Some(template) = info.template.as_ref().filter(|_| info.is_instance()) else {
        return Err(format!(
            "error Unit {arg} does not seem to be a template unit"
        ));
    };
    let tpath = path
        .parent()
        .unwrap_or(std::path::Path::new(""))
        .join(template);
    std::fs::read_to_string(&tpath)
        .map(|t| (t, true))
        .map_err(|e| format!("stat {}: {e}", tpath.display()))
}

/// What `ensure_unit` did with an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The unit was there (or was created now, see `created`).
    Present,
    /// `--replace` gave the existing unit new content.
    Replaced,
}

/// For a unit that exists: fleet 1.0's local-differs warning, and with `--replace` the
/// replacement of changed content when the unit's desired state allows `command` to.
async fn check_existing(
    reg: &Client,
    arg: &str,
    job: &JobRecord,
    replace: Option<JobState>,
) -> Result<Ensured, String> {
    let different = match local_unit(arg) {
        Ok((text, template)) => {
            let local = systemd_unit::fleet::UnitHash::of_text(&text).ok();
            let differs = local != Some(job.hash);
            if differs && replace.is_none() {
                let what = if template {
                    "local template unit file"
                } else {
                    "local unit file"
                };
                err(format!(
                    "WARNING: Unit {} in registry differs from {what} {arg}. Add --replace to override.",
                    job.name
                ));
            }
            differs.then_some(text)
        }
        Err(e) if replace.is_some() => return Err(e),
        Err(_) => None,
    };
    let Some(command) = replace else {
        return Ok(Ensured::Present);
    };
    let Some(text) = different else {
        out(format!(
            "Found same Unit({}) in Registry, nothing to do",
            job.name
        ));
        return Ok(Ensured::Present);
    };
    // submit replaces only inactive units, load inactive or loaded ones, start any.
    if job.target_state > command {
        err(format!(
            "Warning: can not replace Unit({}) in state '{}', use the appropriate command",
            job.name, job.target_state
        ));
        return Ok(Ensured::Present);
    }
    let options = systemd_unit::fleet::deserialize(&text)
        .map_err(|e| format!("failed getting Unit({arg}) from file: {e}"))?;
    Requirements::from_options(&job.name, &options)
        .validate()
        .map_err(|e| e.to_string())?;
    reg.replace_unit(&job.name, &text, &options)
        .await
        .map_err(|e| format!("failed creating unit {}: {e}", job.name))?;
    Ok(Ensured::Replaced)
}

/// A unit to create, read and validated.
struct NewUnit {
    name: String,
    text: String,
    options: Vec<systemd_unit::fleet::UnitOption>,
    global: bool,
}

/// What a command-line argument names.
enum Found {
    /// A unit in the registry (with what `--replace` did to it).
    Present(String, Ensured),
    /// A unit to create from a local file or template.
    New(NewUnit),
}

/// How many creations or state changes fleetctl has in flight at once.
pub const IN_FLIGHT: usize = 16;

/// Creates units, [`IN_FLIGHT`] at a time, in order; the names created now (some may have
/// been created meanwhile by someone else) with whether they are global.
async fn create_units(reg: &Client, units: Vec<NewUnit>) -> Result<Vec<(String, bool)>, String> {
    use futures_util::{stream, StreamExt as _};
    let results: Vec<_> = stream::iter(units)
        .map(|u| async move {
            let r = reg
                .create_unit(&u.name, &u.text, &u.options, JobState::Inactive)
                .await;
            (u.name, u.global, r)
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let mut created = Vec::new();
    for (name, global, r) in results {
        match r {
            Ok(Created::New) => created.push((name, global)),
            Ok(Created::Existed) => {}
            Err(e) => return Err(format!("failed creating unit {name}: {e}")),
        }
    }
    Ok(created)
}

/// fleet's lazy creation for `submit`, `load` and `start`: every argument is found in the
/// registry, or read and validated, before any unit is created; then the new ones are
/// created and reported (`Unit <name> inactive`). Returns each argument's unit and what
/// `--replace` did to it, and the units created now with whether they are global.
pub async fn lazy_create(
    reg: &Client,
    args: &[String],
    jobs: &[JobRecord],
    replace: Option<JobState>,
) -> Result<(Vec<(String, Ensured)>, Vec<(String, bool)>), String> {
    let mut found = Vec::new();
    let mut new = Vec::new();
    for arg in args {
        match find_unit(reg, arg, jobs, replace).await? {
            Found::Present(n, how) => found.push((n, how)),
            Found::New(unit) => {
                found.push((unit.name.clone(), Ensured::Present));
                new.push(unit);
            }
        }
    }
    let created = create_units(reg, new).await?;
    for (n, global) in &created {
        // fleet printed the current state, which a global unit never has.
        if *global {
            out(format!("Unit {n} "));
        } else {
            out(format!("Unit {n} inactive"));
        }
    }
    Ok((found, created))
}

/// Finds the unit a command-line argument names, or reads and validates the one to create
/// (fleet's lazy creation order: registry, local file, template in the registry, template
/// on disk); `replace` is the command's state when `--replace` was given.
async fn find_unit(
    reg: &Client,
    arg: &str,
    jobs: &[JobRecord],
    replace: Option<JobState>,
) -> Result<Found, String> {
    let name = mangle(arg);
    validate_name(&name).map_err(|e| e.to_string())?;
    if let Some(job) = jobs.iter().find(|j| j.name == name) {
        let how = check_existing(reg, arg, job, replace).await?;
        return Ok(Found::Present(name, how));
    }
    let info = NameInfo::parse(&name).ok_or_else(|| format!("invalid unit name {name}"))?;
    let dir = std::path::Path::new(arg)
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let local = if std::path::Path::new(arg).is_file() {
        Some(std::path::PathBuf::from(arg))
    } else {
        None
    };
    let text = if let Some(p) = local {
        std::fs::read_to_string(&p)
            .map_err(|e| format!("failed getting Unit({arg}) from file: {e}"))?
    } else if let Some(tmpl) = info.template.as_ref().filter(|_| info.is_instance()) {
        if let Some(t) = jobs
            .iter()
            .find(|j| &j.name == tmpl)
            .and_then(|j| j.unit.clone())
        {
            t
        } else {
            let p = dir.join(tmpl);
            std::fs::read_to_string(&p).map_err(|_| {
                format!("unable to find Unit({name}) or template Unit({tmpl}) in Registry or on filesystem")
            })?
        }
    } else {
        return Err(format!(
            "unable to find Unit({name}) in Registry or on filesystem"
        ));
    };
    let options = systemd_unit::fleet::deserialize(&text)
        .map_err(|e| format!("failed getting Unit({arg}) from file: {e}"))?;
    let req = Requirements::from_options(&name, &options);
    for k in &req.unknown {
        err(format!(
            "Unit {name}: unrecognized requirement in [X-Fleet] section: {k:?}"
        ));
    }
    req.validate().map_err(|e| e.to_string())?;
    Ok(Found::New(NewUnit {
        name,
        text,
        options,
        global: req.global,
    }))
}

//! From a command line to a prepared pod: images fetched, apps named and merged with the
//! command line's overrides (rkt's rules: `--exec` replaces the command, `-- ARGS` are
//! appended, environment from lowest to highest priority: inherited, `--set-env-file`,
//! `--set-env`, the app's `--environment`), mount points bound to volumes, and the pod
//! checked whole before its directory is written.

use crate::aci::NameValue;
use crate::args::RunArgs;
use crate::pod::{ExposedPort, ImageRef, Mount, PodApp, PodManifest, RunOptions, Volume};
use crate::source::{self, Options};
use crate::store::Store;
use crate::Error;

/// rkt's app name for an image: the last part of its name, made an appc app name.
#[must_use]
pub fn app_name_of(image_name: &str) -> String {
    let last = image_name.rsplit('/').next().unwrap_or(image_name);
    let s: String = last
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        "app".to_string()
    } else {
        s
    }
}

fn set_env(env: &mut Vec<NameValue>, k: &str, v: &str, replace: bool) {
    match env.iter_mut().find(|e| e.name == k) {
        Some(e) if replace => e.value = v.to_string(),
        Some(_) => {}
        None => env.push(NameValue {
            name: k.to_string(),
            value: v.to_string(),
        }),
    }
}

fn env_file(path: &str) -> Result<Vec<(String, String)>, Error> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io(std::path::Path::new(path), e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

/// One app of the pod: its image fetched, its runtime app merged from the image's and the
/// command line's; empty volumes added to `volumes` for the image's unbound mount points.
fn runtime_app(
    store: &Store,
    a: &RunArgs,
    app: &crate::args::AppArgs,
    fetch: &Options,
    from_files: &[(String, String)],
    volumes: &mut Vec<Volume>,
    apps: &[PodApp],
) -> Result<PodApp, Error> {
    let mut opts = fetch.clone();
    if let Some(sig) = &app.signature {
        opts.signature = Some(sig.into());
    }
    let rec = source::fetch(store, &app.image, &opts)?;
    let name = app
        .name
        .clone()
        .unwrap_or_else(|| app_name_of(&rec.manifest.name));
    crate::aci::check_identifier(&name)
        .map_err(|r| Error::Usage(format!("app name {name:?}: {r}")))?;
    if apps.iter().any(|p| p.name == name) {
        return Err(Error::Usage(format!(
            "two apps named {name:?}: give one of them --name"
        )));
    }
    let mut ra = rec.manifest.app.clone().unwrap_or_default();
    if rec.manifest.app.is_none() && app.exec.is_none() {
        return Err(Error::Usage(format!(
            "image {} has no app section and --exec is not given",
            app.image
        )));
    }
    if let Some(e) = &app.exec {
        ra.exec = vec![e.clone()];
    }
    if let Some(args) = &app.args {
        ra.exec.extend(args.iter().cloned());
    }
    if let Some(u) = &app.user {
        ra.user.clone_from(u);
    }
    if let Some(g) = &app.group {
        ra.group.clone_from(g);
    }
    if let Some(w) = &app.working_dir {
        ra.working_directory.clone_from(w);
    }
    if !app.supplementary_gids.is_empty() {
        ra.supplementary_gids.clone_from(&app.supplementary_gids);
    }
    match (&app.caps_retain, &app.caps_remove) {
        (Some(_), Some(_)) => {
            return Err(Error::Usage(format!(
                "app {name}: --caps-retain and --caps-remove exclude each other"
            )))
        }
        // The command line's set replaces whichever set the image has.
        (Some(keep), None) => crate::caps::set_only(&mut ra, crate::caps::RETAIN, keep),
        (None, Some(drop)) => crate::caps::set_only(&mut ra, crate::caps::REMOVE, drop),
        (None, None) => {}
    }
    crate::caps::for_app(&ra, &name)?;
    if a.inherit_env {
        for (k, v) in std::env::vars() {
            set_env(&mut ra.environment, &k, &v, false);
        }
    }
    for (k, v) in from_files.iter().chain(&a.set_env).chain(&app.environment) {
        set_env(&mut ra.environment, k, v, true);
    }
    let mut mounts: Vec<Mount> = app
        .mounts
        .iter()
        .map(|(v, t)| Mount {
            volume: v.clone(),
            path: t.clone(),
        })
        .collect();
    // The image's mount points: a volume of the same name, or an empty one of the pod's.
    for mp in &ra.mount_points {
        if mounts.iter().any(|m| m.path == mp.path) {
            continue;
        }
        let vol = if volumes.iter().any(|v| v.name == mp.name) {
            mp.name.clone()
        } else {
            let auto = format!("rkt-auto-{name}-{}", mp.name);
            volumes.push(Volume {
                name: auto.clone(),
                kind: "empty".into(),
                source: String::new(),
                read_only: mp.read_only,
                recursive: true,
            });
            auto
        };
        mounts.push(Mount {
            volume: vol,
            path: mp.path.clone(),
        });
    }
    Ok(PodApp {
        name,
        image: ImageRef {
            name: rec.manifest.name.clone(),
            id: rec.id.clone(),
            labels: rec.manifest.labels.clone(),
        },
        app: ra,
        mounts,
        read_only_root_fs: app.readonly_rootfs,
    })
}

/// Fetches the images and builds the pod's manifest and run options.
///
/// # Errors
/// The first problem found: an image that cannot be fetched, two apps of one name, an app
/// with no executable, a mount of a missing volume, a missing host path.
pub fn build(
    store: &Store,
    a: &RunArgs,
    fetch: &Options,
) -> Result<(PodManifest, RunOptions), Error> {
    let mut from_files = Vec::new();
    for f in &a.set_env_files {
        from_files.extend(env_file(f)?);
    }
    let mut volumes: Vec<Volume> = a.volumes.clone();
    for (i, v) in volumes.iter().enumerate() {
        if volumes[..i].iter().any(|o| o.name == v.name) {
            return Err(Error::Usage(format!("volume {:?} given twice", v.name)));
        }
    }
    let mut apps: Vec<PodApp> = Vec::new();
    for app in &a.apps {
        let ra = runtime_app(store, a, app, fetch, &from_files, &mut volumes, &apps)?;
        apps.push(ra);
    }
    let mut ports = Vec::new();
    for (pname, host_port) in &a.ports {
        if !apps
            .iter()
            .any(|p| p.app.ports.iter().any(|x| &x.name == pname))
        {
            return Err(Error::Usage(format!(
                "--port={pname}:{host_port}: no app of the pod declares a port named {pname:?}"
            )));
        }
        ports.push(ExposedPort {
            name: pname.clone(),
            host_port: *host_port,
        });
    }
    let net = a.net.clone().unwrap_or_else(|| "default".into());
    if !matches!(net.as_str(), "host" | "none" | "default") {
        return Err(Error::Usage(format!(
            "--net={net}: this rkt has the networks host, none and default"
        )));
    }
    if !ports.is_empty() && net != "default" {
        return Err(Error::Usage(format!(
            "--port needs the pod's own network (--net=default), not --net={net}"
        )));
    }
    let m = PodManifest {
        ac_version: crate::VERSION.into(),
        ac_kind: "PodManifest".into(),
        apps,
        volumes,
        annotations: Vec::new(),
        ports,
    };
    crate::stage1::check(store, &m)?;
    let o = RunOptions {
        net,
        dns: a.dns.clone(),
        dns_search: a.dns_search.clone(),
        hostname: a.hostname.clone().unwrap_or_default(),
        hosts_entries: a.hosts_entries.clone(),
        interactive: a.interactive,
        no_overlay: a.no_overlay,
    };
    Ok((m, o))
}

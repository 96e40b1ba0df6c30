//! `rkt run` and `rkt prepare` arguments: pod flags anywhere, app flags after the image
//! they belong to, `-- ARGS ---` for an app's arguments (rkt's syntax, which a generic
//! argument parser cannot express).

use crate::Error;

/// One image to run and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppArgs {
    pub image: String,
    pub name: Option<String>,
    pub exec: Option<String>,
    pub args: Option<Vec<String>>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub working_dir: Option<String>,
    pub environment: Vec<(String, String)>,
    /// `volume=NAME,target=PATH`.
    pub mounts: Vec<(String, String)>,
    pub readonly_rootfs: bool,
    pub supplementary_gids: Vec<u32>,
    pub signature: Option<String>,
    /// `--caps-retain` / `--caps-remove`: capability names.
    pub caps_retain: Option<Vec<String>>,
    pub caps_remove: Option<Vec<String>>,
}

/// The whole command line of `rkt run` / `rkt prepare`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunArgs {
    pub apps: Vec<AppArgs>,
    pub net: Option<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub hostname: Option<String>,
    pub hosts_entries: Vec<String>,
    /// `NAME,kind=host|empty,source=PATH,readOnly=BOOL,recursive=BOOL`, parsed.
    pub volumes: Vec<crate::pod::Volume>,
    pub ports: Vec<(String, u16)>,
    pub set_env: Vec<(String, String)>,
    pub set_env_files: Vec<String>,
    pub inherit_env: bool,
    pub interactive: bool,
    pub uuid_file_save: Option<String>,
    pub no_overlay: bool,
    pub pull_policy: Option<String>,
    pub insecure_options: Option<String>,
}

const APP_FLAGS: &[&str] = &[
    "name",
    "exec",
    "user",
    "group",
    "working-dir",
    "environment",
    "mount",
    "readonly-rootfs",
    "supplementary-gids",
    "signature",
    "user-label",
    "user-annotation",
    "caps-retain",
    "caps-remove",
];
const BOOL_FLAGS: &[&str] = &[
    "interactive",
    "inherit-env",
    "no-overlay",
    "readonly-rootfs",
];
const POD_FLAGS: &[&str] = &[
    "net",
    "dns",
    "dns-search",
    "dns-opt",
    "dns-domain",
    "hostname",
    "hosts-entry",
    "volume",
    "port",
    "set-env",
    "set-env-file",
    "inherit-env",
    "interactive",
    "uuid-file-save",
    "no-overlay",
    "pull-policy",
    "insecure-options",
];
/// Flags rkt has that this one refuses, with the reason.
const REFUSED: &[(&str, &str)] = &[
    ("cpu", "resource limits belong to the systemd unit that runs the pod (CPUQuota=, CPUShares=): the pod stays in its cgroup"),
    ("memory", "resource limits belong to the systemd unit that runs the pod (MemoryLimit=): the pod stays in its cgroup"),
    ("private-users", "user namespaces are not supported"),
    ("mds-register", "there is no metadata service"),
    ("stage1-path", "there is one stage1, built in"),
    ("stage1-url", "there is one stage1, built in"),
    ("stage1-name", "there is one stage1, built in"),
    ("stage1-hash", "there is one stage1, built in"),
    ("stage1-from-dir", "there is one stage1, built in"),
    ("pod-manifest", "run from images, not from a pod manifest"),
];

fn parse_bool(flag: &str, v: &str) -> Result<bool, Error> {
    match v {
        "true" | "1" | "t" | "T" | "TRUE" | "True" => Ok(true),
        "false" | "0" | "f" | "F" | "FALSE" | "False" => Ok(false),
        _ => Err(Error::Usage(format!("--{flag}={v:?}: not a boolean"))),
    }
}

fn kv(flag: &str, v: &str) -> Result<(String, String), Error> {
    v.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| Error::Usage(format!("--{flag}={v:?}: expected NAME=VALUE")))
}

/// Parses `--volume NAME,kind=host,source=/x,readOnly=true`.
///
/// # Errors
/// [`Error::Usage`] naming the bad part.
pub fn parse_volume(v: &str) -> Result<crate::pod::Volume, Error> {
    let mut parts = v.split(',');
    let name = parts.next().unwrap_or_default().to_string();
    crate::aci::check_identifier(&name)
        .map_err(|r| Error::Usage(format!("--volume={v:?}: volume name: {r}")))?;
    let mut vol = crate::pod::Volume {
        name,
        kind: String::new(),
        source: String::new(),
        read_only: false,
        recursive: true,
    };
    for p in parts {
        let (k, val) = kv("volume", p)?;
        match k.as_str() {
            "kind" => vol.kind = val,
            "source" => vol.source = val,
            "readOnly" => vol.read_only = parse_bool("volume readOnly", &val)?,
            "recursive" => vol.recursive = parse_bool("volume recursive", &val)?,
            other => {
                return Err(Error::Usage(format!(
                    "--volume={v:?}: unknown key {other:?} (kind, source, readOnly, recursive)"
                )))
            }
        }
    }
    match vol.kind.as_str() {
        "host" if vol.source.is_empty() => Err(Error::Usage(format!(
            "--volume={v:?}: a host volume needs source=PATH"
        ))),
        "host" | "empty" => Ok(vol),
        "" => Err(Error::Usage(format!(
            "--volume={v:?}: no kind= (host or empty)"
        ))),
        other => Err(Error::Usage(format!(
            "--volume={v:?}: kind {other:?} must be host or empty"
        ))),
    }
}

/// Sets app flag `name` of `app`.
fn app_flag_value(app: &mut AppArgs, name: &str, value: String) -> Result<(), Error> {
    match name {
        "name" => app.name = Some(value),
        "exec" => app.exec = Some(value),
        "user" => app.user = Some(value),
        "group" => app.group = Some(value),
        "working-dir" => app.working_dir = Some(value),
        "environment" => app.environment.push(kv(name, &value)?),
        "mount" => {
            let mut vol = None;
            let mut target = None;
            for p in value.split(',') {
                match kv("mount", p)? {
                    (k, v) if k == "volume" => vol = Some(v),
                    (k, v) if k == "target" => target = Some(v),
                    (k, _) => {
                        return Err(Error::Usage(format!(
                            "--mount={value:?}: unknown key {k:?} (volume, target)"
                        )))
                    }
                }
            }
            match (vol, target) {
                (Some(v), Some(t)) => app.mounts.push((v, t)),
                _ => {
                    return Err(Error::Usage(format!(
                        "--mount={value:?}: expected volume=NAME,target=PATH"
                    )))
                }
            }
        }
        "readonly-rootfs" => app.readonly_rootfs = parse_bool(name, &value)?,
        "supplementary-gids" => {
            app.supplementary_gids = value
                .split(',')
                .map(|g| {
                    g.parse().map_err(|_| {
                        Error::Usage(format!("--supplementary-gids: {g:?} is not a number"))
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        "signature" => app.signature = Some(value),
        "caps-retain" => app.caps_retain = Some(crate::caps::parse_list(&value, name)?),
        "caps-remove" => app.caps_remove = Some(crate::caps::parse_list(&value, name)?),
        // Labels and annotations for users: accepted, checked, not used.
        _ => {
            kv(name, &value)?;
        }
    }
    Ok(())
}

/// Sets pod flag `name`.
fn pod_flag_value(out: &mut RunArgs, name: &str, value: String) -> Result<(), Error> {
    match name {
        "net" => out.net = Some(value),
        "dns" => out.dns.extend(value.split(',').map(str::to_string)),
        "dns-search" => out.dns_search.push(value),
        "dns-opt" | "dns-domain" => {}
        "hostname" => out.hostname = Some(value),
        "hosts-entry" => out.hosts_entries.push(value),
        "volume" => out.volumes.push(parse_volume(&value)?),
        "port" => {
            let (n, p) = value
                .rsplit_once(':')
                .ok_or_else(|| Error::Usage(format!("--port={value:?}: expected NAME:HOSTPORT")))?;
            let p: u16 = p.parse().map_err(|_| {
                Error::Usage(format!("--port={value:?}: {p:?} is not a port number"))
            })?;
            out.ports.push((n.to_string(), p));
        }
        "set-env" => out.set_env.push(kv(name, &value)?),
        "set-env-file" => out.set_env_files.push(value),
        "inherit-env" => out.inherit_env = parse_bool(name, &value)?,
        "interactive" => out.interactive = parse_bool(name, &value)?,
        "uuid-file-save" => out.uuid_file_save = Some(value),
        "no-overlay" => out.no_overlay = parse_bool(name, &value)?,
        "pull-policy" => out.pull_policy = Some(value),
        _ => out.insecure_options = Some(value),
    }
    Ok(())
}

/// Parses the arguments after `run` / `prepare`.
///
/// # Errors
/// [`Error::Usage`] naming the flag or value that is wrong.
pub fn parse(args: &[String]) -> Result<RunArgs, Error> {
    let mut out = RunArgs::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            let app = out
                .apps
                .last_mut()
                .ok_or_else(|| Error::Usage("\"--\" before any image".into()))?;
            let mut rest = Vec::new();
            while i < args.len() && args[i] != "---" {
                rest.push(args[i].clone());
                i += 1;
            }
            i += 1; // the "---", if any
            app.args = Some(rest);
            continue;
        }
        let Some(flag) = a.strip_prefix("--") else {
            out.apps.push(AppArgs {
                image: a.clone(),
                ..AppArgs::default()
            });
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.to_string(), None),
        };
        if let Some((_, why)) = REFUSED.iter().find(|(f, _)| *f == name) {
            return Err(Error::Usage(format!("--{name}: {why}")));
        }
        let app_flag = APP_FLAGS.contains(&name.as_str())
            && !(name == "readonly-rootfs" && out.apps.is_empty());
        if !app_flag && !POD_FLAGS.contains(&name.as_str()) {
            return Err(Error::Usage(format!("unknown flag --{name}")));
        }
        let value = if BOOL_FLAGS.contains(&name.as_str()) {
            inline.unwrap_or_else(|| "true".into())
        } else if let Some(v) = inline {
            v
        } else {
            let v = args
                .get(i)
                .ok_or_else(|| Error::Usage(format!("--{name} needs a value")))?
                .clone();
            i += 1;
            v
        };
        if app_flag {
            let app = out.apps.last_mut().ok_or_else(|| {
                Error::Usage(format!(
                    "--{name} applies to the image before it: give the image first"
                ))
            })?;
            app_flag_value(app, &name, value)?;
            continue;
        }
        pod_flag_value(&mut out, &name, value)?;
    }
    if out.apps.is_empty() {
        return Err(Error::Usage("no image given".into()));
    }
    if out.interactive && out.apps.len() > 1 {
        return Err(Error::Usage("--interactive runs one image only".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_string()).collect()
    }

    #[test]
    fn app_flags_follow_their_image_and_args_end_with_three_dashes() {
        let r = parse(&s(&[
            "--insecure-options=image",
            "docker://busybox",
            "--name=one",
            "--exec",
            "/bin/echo",
            "--",
            "hi",
            "--there",
            "---",
            "docker://busybox",
            "--name=two",
            "--net=host",
        ]))
        .unwrap();
        assert_eq!(r.apps.len(), 2);
        assert_eq!(r.apps[0].name.as_deref(), Some("one"));
        assert_eq!(r.apps[0].exec.as_deref(), Some("/bin/echo"));
        assert_eq!(r.apps[0].args, Some(s(&["hi", "--there"])));
        assert_eq!(r.apps[1].name.as_deref(), Some("two"));
        assert_eq!(r.net.as_deref(), Some("host"));
        assert_eq!(r.insecure_options.as_deref(), Some("image"));
    }

    #[test]
    fn mistakes_are_named() {
        for (args, needle) in [
            (vec!["--exec=/bin/sh"], "give the image first"),
            (vec!["img", "--bogus"], "unknown flag --bogus"),
            (vec!["img", "--memory=5M"], "cgroup"),
            (vec!["img", "--volume=data,kind=host"], "source=PATH"),
            (
                vec!["img", "--volume=data,kind=nfs,source=/x"],
                "host or empty",
            ),
            (vec!["img", "--mount=volume=x"], "volume=NAME,target=PATH"),
            (vec!["img", "--port=80-tcp:http"], "not a port number"),
            (vec!["img", "--set-env=NOVALUE"], "NAME=VALUE"),
            (vec!["--interactive", "a", "b"], "one image"),
            (vec![], "no image"),
            (vec!["img", "--net"], "needs a value"),
        ] {
            let e = parse(&s(&args)).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}

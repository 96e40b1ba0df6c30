//! Docker and OCI images as ACIs, the way rkt's docker2aci does it by default: the layers
//! squashed into one root filesystem (whiteouts applied), and the image config turned into
//! an appc app (exec from entrypoint and cmd, user and group, environment, working
//! directory, volumes as mount points, exposed ports as ports, `appc.io/docker/*`
//! annotations).
//!
//! Every layer is checked against the config's `rootfs.diff_ids` before it is used, so a
//! wrong or damaged layer is refused whole.

use std::collections::BTreeMap;
use std::io::Read as _;

use crate::aci::{self, ImageManifest, MountPoint, NameValue, Port};
use crate::Error;

/// Where a Docker image came from, for its appc name and annotations.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `host:port` of the registry, empty for an archive.
    pub registry: String,
    /// The repository (`busybox`, `library/nginx`).
    pub repository: String,
    pub tag: String,
    /// The name as the user wrote it.
    pub original: String,
}

impl Origin {
    /// The appc name: `<registry>/<repository>` made an appc identifier (`:` becomes `-`).
    #[must_use]
    pub fn aci_name(&self) -> String {
        if self.registry.is_empty() {
            aci::sanitize_identifier(&self.repository)
        } else {
            aci::sanitize_identifier(&format!("{}/{}", self.registry, self.repository))
        }
    }
}

/// One entry of the squashed tree.
struct Entry {
    header: tar::Header,
    data: Vec<u8>,
}

/// Normalizes an entry path: no `./`, no trailing `/`.
fn norm(p: &str) -> String {
    p.trim_start_matches("./").trim_end_matches('/').to_string()
}

/// Removes `path` and everything under it.
fn remove_tree(tree: &mut BTreeMap<String, Entry>, path: &str) {
    tree.remove(path);
    let prefix = format!("{path}/");
    let doomed: Vec<String> = tree
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        tree.remove(&k);
    }
}

/// Applies one layer (an uncompressed tar) onto `tree`.
fn apply_layer(tree: &mut BTreeMap<String, Entry>, layer: &[u8], what: &str) -> Result<(), Error> {
    let mut ar = tar::Archive::new(layer);
    let entries = ar
        .entries()
        .map_err(|e| Error::image(what, format!("not a tar: {e}")))?;
    let mut added: Vec<(String, Entry)> = Vec::new();
    for entry in entries {
        let mut entry =
            entry.map_err(|e| Error::image(what, format!("damaged or truncated: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| Error::image(what, format!("entry with a bad path: {e}")))?
            .into_owned();
        if !aci::safe_path(&path) {
            return Err(Error::image(
                what,
                format!("entry {} leaves the image", path.display()),
            ));
        }
        let p = norm(&path.to_string_lossy());
        let (dir, base) = match p.rsplit_once('/') {
            Some((d, b)) => (d.to_string(), b.to_string()),
            None => (String::new(), p.clone()),
        };
        // Whiteouts hide what lower layers have; they apply before this layer's own files.
        if base == ".wh..wh..opq" {
            let doomed: Vec<String> = tree
                .keys()
                .filter(|k| {
                    if dir.is_empty() {
                        true
                    } else {
                        k.starts_with(&format!("{dir}/"))
                    }
                })
                .cloned()
                .collect();
            for k in doomed {
                tree.remove(&k);
            }
            continue;
        }
        if let Some(hidden) = base.strip_prefix(".wh.") {
            let target = if dir.is_empty() {
                hidden.to_string()
            } else {
                format!("{dir}/{hidden}")
            };
            remove_tree(tree, &target);
            continue;
        }
        if p.is_empty() {
            continue;
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| Error::image(what, format!("{p}: truncated: {e}")))?;
        let mut header = entry.header().clone();
        if let Ok(Some(target)) = entry.link_name() {
            // The header may hold a shortened name; the full one is set when written.
            let _ = header.set_link_name(&target);
        }
        added.push((p, Entry { header, data }));
    }
    for (p, e) in added {
        // A file replacing a directory (or the reverse) replaces what was under it.
        let is_dir = e.header.entry_type() == tar::EntryType::Directory;
        let was_dir = tree
            .get(&p)
            .is_some_and(|old| old.header.entry_type() == tar::EntryType::Directory);
        if was_dir && !is_dir {
            remove_tree(tree, &p);
        }
        tree.insert(p, e);
    }
    Ok(())
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(serde_json::Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The app a Docker image config describes.
fn app_of(config: &serde_json::Value) -> aci::App {
    let c = &config["config"];
    let entrypoint = strings(&c["Entrypoint"]);
    let cmd = strings(&c["Cmd"]);
    let mut exec: Vec<String> = entrypoint.iter().chain(&cmd).cloned().collect();
    // appc wants an absolute path; Docker resolves a bare name in $PATH.
    if let Some(first) = exec.first_mut() {
        if !first.starts_with('/') {
            *first = format!("/bin/{first}");
        }
    }
    let user_spec = c["User"].as_str().unwrap_or_default();
    let (user, group) = match user_spec.split_once(':') {
        Some((u, g)) => (u.to_string(), g.to_string()),
        None if user_spec.is_empty() => ("0".to_string(), "0".to_string()),
        None => (user_spec.to_string(), "0".to_string()),
    };
    let environment = strings(&c["Env"])
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=').map(|(k, v)| NameValue {
                name: k.to_string(),
                value: v.to_string(),
            })
        })
        .collect();
    let mount_points = c["Volumes"]
        .as_object()
        .map(|o| {
            o.keys()
                .map(|path| MountPoint {
                    name: aci::sanitize_identifier(&format!("volume-{path}")).replace('/', "-"),
                    path: path.clone(),
                    read_only: false,
                })
                .collect()
        })
        .unwrap_or_default();
    let ports = c["ExposedPorts"]
        .as_object()
        .map(|o| {
            o.keys()
                .filter_map(|spec| {
                    let (port, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
                    let port: u16 = port.parse().ok()?;
                    Some(Port {
                        name: format!("{port}-{proto}"),
                        protocol: proto.to_string(),
                        port,
                        count: 1,
                        socket_activated: false,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    aci::App {
        exec,
        user,
        group,
        working_directory: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
        environment,
        mount_points,
        ports,
        ..aci::App::default()
    }
}

/// Converts a Docker or OCI image (config and layers) into an ACI.
///
/// # Errors
/// [`Error::Image`] naming the layer that does not match its `diff_id`, is damaged, or
/// whose paths leave the image.
pub fn to_aci(image: &container_image::Image, origin: &Origin) -> Result<aci::Aci, Error> {
    let what = origin.original.as_str();
    let config: serde_json::Value = serde_json::from_slice(&image.config)
        .map_err(|e| Error::image(what, format!("image config is not JSON: {e}")))?;
    let diff_ids = strings(&config["rootfs"]["diff_ids"]);
    if diff_ids.len() != image.layers.len() {
        return Err(Error::image(
            what,
            format!(
                "the config names {} layers, the image has {}",
                diff_ids.len(),
                image.layers.len()
            ),
        ));
    }
    let mut tree = BTreeMap::new();
    let mut total = 0u64;
    for (i, (layer, want)) in image.layers.iter().zip(&diff_ids).enumerate() {
        let lwhat = format!("{what}: layer {i}");
        let tar = aci::decompress(layer.gzip.clone(), &lwhat, aci::MAX_ACI - total)?;
        total += tar.len() as u64;
        let got = container_image::digest(&tar);
        if got != *want {
            return Err(Error::image(
                &lwhat,
                format!("its digest is {got}, the config says {want}"),
            ));
        }
        apply_layer(&mut tree, &tar, &lwhat)?;
    }
    let arch = match config["architecture"].as_str().unwrap_or("amd64") {
        "" => "amd64".to_string(),
        a => a.to_string(),
    };
    let os = config["os"].as_str().unwrap_or("linux").to_string();
    let mut annotations = vec![
        NameValue {
            name: "appc.io/docker/originalname".into(),
            value: origin.original.clone(),
        },
        NameValue {
            name: "appc.io/docker/registryurl".into(),
            value: origin.registry.clone(),
        },
        NameValue {
            name: "appc.io/docker/repository".into(),
            value: origin.repository.clone(),
        },
        NameValue {
            name: "appc.io/docker/imageid".into(),
            value: container_image::digest(&image.config),
        },
    ];
    if let Some(created) = config["created"].as_str() {
        annotations.push(NameValue {
            name: "created".into(),
            value: created.to_string(),
        });
    }
    let c = &config["config"];
    if !strings(&c["Entrypoint"]).is_empty() {
        annotations.push(NameValue {
            name: "appc.io/docker/entrypoint".into(),
            value: serde_json::to_string(&strings(&c["Entrypoint"])).unwrap_or_default(),
        });
    }
    if !strings(&c["Cmd"]).is_empty() {
        annotations.push(NameValue {
            name: "appc.io/docker/cmd".into(),
            value: serde_json::to_string(&strings(&c["Cmd"])).unwrap_or_default(),
        });
    }
    let name = origin.aci_name();
    aci::check_identifier(&name).map_err(|r| Error::image(what, format!("image name: {r}")))?;
    let manifest = ImageManifest {
        ac_kind: "ImageManifest".into(),
        ac_version: aci::AC_VERSION.into(),
        name,
        labels: vec![
            NameValue {
                name: "version".into(),
                value: origin.tag.clone(),
            },
            NameValue {
                name: "os".into(),
                value: os,
            },
            NameValue {
                name: "arch".into(),
                value: arch,
            },
        ],
        app: Some(app_of(&config)),
        annotations,
        other: BTreeMap::new(),
    };
    let io = |e: std::io::Error| Error::image(what, format!("writing the ACI: {e}"));
    let mut w = aci::Writer::new(&manifest).map_err(io)?;
    // Hard links after everything else, so their targets exist when they are unpacked.
    let (links, files): (Vec<_>, Vec<_>) = tree
        .iter()
        .partition(|(_, e)| e.header.entry_type() == tar::EntryType::Link);
    for (p, e) in files {
        w.add(p, &e.header, &e.data).map_err(io)?;
    }
    for (p, e) in links {
        let target = e
            .header
            .link_name()
            .ok()
            .flatten()
            .map(|t| norm(&t.to_string_lossy()));
        if target.is_some_and(|t| tree.contains_key(&t)) {
            w.add(p, &e.header, &e.data).map_err(io)?;
        }
    }
    let tar = w.finish().map_err(io)?;
    let id = aci::id_of(&tar);
    Ok(aci::Aci { tar, id, manifest })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(d.len() as u64);
                    b.append_data(&mut h, path, d.as_bytes()).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, path, std::io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_hide_what_lower_layers_have() {
        let l1 = layer(&[
            ("etc", None),
            ("etc/keep", Some("1")),
            ("etc/gone", Some("2")),
            ("var", None),
            ("var/cache", None),
            ("var/cache/a", Some("3")),
            ("var/cache/b", Some("4")),
            ("opt", None),
            ("opt/x", Some("5")),
        ]);
        let l2 = layer(&[
            ("etc/.wh.gone", Some("")),
            ("var/cache/.wh..wh..opq", Some("")),
            ("var/cache/new", Some("6")),
            (".wh.opt", Some("")),
            ("etc/keep", Some("changed")),
        ]);
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["sh"], "Cmd": ["-c", "true"], "User": "nobody:nogroup",
                       "ExposedPorts": {"80/tcp": {}}, "Volumes": {"/data": {}}, "WorkingDir": "/srv"},
            "rootfs": {"type": "layers", "diff_ids": [container_image::digest(&l1), container_image::digest(&l2)]},
        });
        let image = container_image::Image {
            config: serde_json::to_vec(&config).unwrap(),
            layers: vec![
                container_image::Layer {
                    gzip: container_image::gzip(&l1),
                    diff_id: String::new(),
                },
                container_image::Layer {
                    gzip: l2.clone(),
                    diff_id: String::new(),
                },
            ],
        };
        let origin = Origin {
            registry: "ferrite-registry:5000".into(),
            repository: "tools/app".into(),
            tag: "2".into(),
            original: "ferrite-registry:5000/tools/app:2".into(),
        };
        let aci = to_aci(&image, &origin).unwrap();
        assert_eq!(aci.manifest.name, "ferrite-registry-5000/tools/app");
        assert_eq!(aci.manifest.label("version"), Some("2"));
        let app = aci.manifest.app.clone().unwrap();
        assert_eq!(app.exec, ["/bin/sh", "-c", "true"]);
        assert_eq!(
            (app.user.as_str(), app.group.as_str()),
            ("nobody", "nogroup")
        );
        assert_eq!(app.ports[0].name, "80-tcp");
        assert_eq!(app.mount_points[0].path, "/data");
        assert_eq!(app.working_directory, "/srv");
        let mut files = std::collections::BTreeMap::new();
        let mut ar = tar::Archive::new(&aci.tar[..]);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().to_string();
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            files.insert(p, s);
        }
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "manifest",
                "rootfs",
                "rootfs/etc",
                "rootfs/etc/keep",
                "rootfs/var",
                "rootfs/var/cache",
                "rootfs/var/cache/new"
            ]
        );
        assert_eq!(files["rootfs/etc/keep"], "changed");
        // The same image converts to the same ACI (its ID is stable).
        assert_eq!(to_aci(&image, &origin).unwrap().id, aci.id);
        // A layer that is not what the config says is refused.
        let mut bad = image.clone();
        bad.layers.swap(0, 1);
        let e = to_aci(&bad, &origin).unwrap_err().to_string();
        assert!(e.contains("layer 0") && e.contains("digest"), "{e}");
    }
}

//! `busybox:latest` from the host's `busybox-static`: one layer with busybox, a symlink per
//! applet in `/bin`, `/etc/passwd` and `/etc/group` for root and nobody, and `/tmp`; no
//! timestamps, so the same busybox always gives the same digests.

use std::path::Path;

use crate::{digest, gzip, Error, Image, Layer};

/// The busybox image from the static binary at `busybox` (Debian: `/bin/busybox`).
///
/// # Errors
/// The binary cannot be read or does not list its applets.
pub fn image(busybox: &Path) -> Result<Image, Error> {
    let bin = std::fs::read(busybox).map_err(|source| Error::Io {
        path: busybox.display().to_string(),
        source,
    })?;
    let list = host_command::run(host_command::command(busybox).arg("--list"))?;
    let mut applets: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .collect();
    applets.sort_unstable();
    applets.dedup();
    let tar = layer_tar(&bin, &applets).map_err(|source| Error::Io {
        path: "the busybox layer".into(),
        source,
    })?;
    let layer = Layer {
        gzip: gzip(&tar),
        diff_id: digest(&tar),
    };
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
        },
        "rootfs": { "type": "layers", "diff_ids": [layer.diff_id] },
        "history": [{
            "created": "1970-01-01T00:00:00Z",
            "created_by": "ferrite: the host's busybox-static, one symlink per applet",
        }],
    });
    Ok(Image {
        config: serde_json::to_vec(&config).unwrap_or_default(),
        layers: vec![layer],
    })
}

fn layer_tar(busybox: &[u8], applets: &[&str]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, path: &str, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        (h, path.to_string())
    };
    for (dir, mode) in [
        ("bin/", 0o755),
        ("dev/", 0o755),
        ("etc/", 0o755),
        ("home/", 0o755),
        ("proc/", 0o755),
        ("root/", 0o700),
        ("sys/", 0o755),
        ("tmp/", 0o1777),
        ("usr/", 0o755),
        ("var/", 0o755),
    ] {
        let (mut h, p) = header(tar::EntryType::Directory, dir, mode, 0);
        b.append_data(&mut h, p, std::io::empty())?;
    }
    let (mut h, p) = header(
        tar::EntryType::Regular,
        "bin/busybox",
        0o755,
        busybox.len() as u64,
    );
    b.append_data(&mut h, p, busybox)?;
    for a in applets {
        let (mut h, p) = header(tar::EntryType::Symlink, &format!("bin/{a}"), 0o777, 0);
        b.append_link(&mut h, p, "busybox")?;
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n";
    let group = b"root:x:0:\nnobody:x:65534:\n";
    for (path, data) in [("etc/passwd", &passwd[..]), ("etc/group", &group[..])] {
        let (mut h, p) = header(tar::EntryType::Regular, path, 0o644, data.len() as u64);
        b.append_data(&mut h, p, data)?;
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_busybox_gives_the_same_digests() {
        let bb = Path::new("/bin/busybox");
        if !bb.exists() {
            return;
        }
        let a = image(bb).unwrap();
        let b = image(bb).unwrap();
        assert_eq!(a.manifest(), b.manifest());
        let cfg: serde_json::Value = serde_json::from_slice(&a.config).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"][0], a.layers[0].diff_id.as_str());
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&a.layers[0].gzip[..]));
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        for want in ["bin/busybox", "bin/sh", "bin/httpd", "etc/passwd", "tmp/"] {
            assert!(
                names
                    .iter()
                    .any(|n| n == want || n == want.trim_end_matches('/')),
                "{want} in {names:?}"
            );
        }
    }
}

//! Against Debian's docker-registry on a loopback port this test picks: busybox pushed,
//! served back byte for byte, pushed again without re-uploading; `docker save` archives
//! written and read back, and damaged ones refused whole. Needs `docker-registry` and
//! busybox-static (scripts/install-deps.sh).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use container_image::{archive, busybox, digest, push};

struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        push::wait_ready(&addr, Duration::from_secs(20)).unwrap();
        Self {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(url: &str, accept: &str) -> Vec<u8> {
    let r = ureq::get(url).set("Accept", accept).call().unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut out).unwrap();
    out
}

#[test]
fn busybox_pushed_served_and_archives_checked() {
    let reg = Registry::start();
    let image = busybox::image(Path::new("/bin/busybox")).unwrap();
    let d = push::push(&image, &reg.addr, "busybox", "latest").unwrap();
    let manifest = get(
        &format!("http://{}/v2/busybox/manifests/latest", reg.addr),
        container_image::MANIFEST_V2,
    );
    assert_eq!(digest(&manifest), d);
    assert_eq!(manifest, image.manifest());
    let layer = get(
        &format!(
            "http://{}/v2/busybox/blobs/{}",
            reg.addr,
            digest(&image.layers[0].gzip)
        ),
        "*/*",
    );
    assert_eq!(layer, image.layers[0].gzip);
    // Pulled back: the same blobs; a tag that is not there names the request.
    let pulled = container_image::pull::pull(&reg.addr, "busybox", "latest").unwrap();
    assert_eq!(pulled.manifest(), image.manifest());
    assert_eq!(pulled.layers[0].diff_id, image.layers[0].diff_id);
    let e = container_image::pull::pull(&reg.addr, "busybox", "nope")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("GET manifest busybox:nope") && e.contains("HTTP 404"),
        "{e}"
    );
    // Again, and under another name: the same digest, nothing sent twice would still work.
    assert_eq!(
        push::push(&image, &reg.addr, "busybox", "latest").unwrap(),
        d
    );
    assert_eq!(push::push(&image, &reg.addr, "mine/box", "v1").unwrap(), d);

    // `docker save` archives: written, read back the same.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busybox.tar");
    archive::write(
        &image,
        "busybox:latest",
        std::fs::File::create(&path).unwrap(),
    )
    .unwrap();
    let saved = archive::read(&path).unwrap();
    assert_eq!(saved.tags, ["busybox:latest"]);
    assert_eq!(saved.image.manifest(), image.manifest());

    // Truncated: refused, naming the file.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = archive::read(&cut).unwrap_err().to_string();
    assert!(
        e.contains("cut.tar") && (e.contains("truncated") || e.contains("manifest.json")),
        "{e}"
    );
    // A layer whose bytes do not match the config's digest: refused.
    let mut other = image.clone();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    tar.append_data(&mut h, "evil", &b"bad"[..]).unwrap();
    other.layers[0].gzip = container_image::gzip(&tar.into_inner().unwrap());
    let wrong = dir.path().join("wrong.tar");
    archive::write(&other, "x:y", std::fs::File::create(&wrong).unwrap()).unwrap();
    let e = archive::read(&wrong).unwrap_err().to_string();
    assert!(e.contains("layer 0") && e.contains("its digest is"), "{e}");
    // Not an archive at all.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"hello").unwrap();
    assert!(archive::read(&junk).is_err());
}

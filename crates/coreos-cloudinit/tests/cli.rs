//! The `coreos-cloudinit` command end to end: flags, exit statuses, datasources (a metadata
//! service on loopback, the kernel command line, a config drive, the Vagrant convention),
//! scripts, gzip, Ignition, and all-or-nothing application.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_coreos-cloudinit");

fn cloudinit(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("COREOS_PUBLIC_IPV4")
        .env_remove("COREOS_PRIVATE_IPV4")
        .env_remove("COREOS_PUBLIC_IPV6")
        .env_remove("COREOS_PRIVATE_IPV6")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A tiny HTTP server on 127.0.0.1 serving fixed paths; stops when dropped.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(routes: HashMap<String, (u16, Vec<u8>)>) -> Self {
        Self::start_requiring(routes, None)
    }

    /// A server that answers 403 to any request without the header line `required` (as
    /// GCE's metadata server does without `Metadata-Flavor: Google`).
    fn start_requiring(
        routes: HashMap<String, (u16, Vec<u8>)>,
        required: Option<&'static str>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (stop.clone(), hits.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most 10,000 polls of 10 ms (100 s), or until stopped.
            for _ in 0..10_000 {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                h.fetch_add(1, Ordering::Relaxed);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                let mut headers = Vec::new();
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                        break;
                    }
                    headers.push(l.trim().to_ascii_lowercase());
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                let allowed =
                    required.is_none_or(|h| headers.iter().any(|l| l == &h.to_ascii_lowercase()));
                let (status, body) = if allowed {
                    routes
                        .get(&path)
                        .cloned()
                        .unwrap_or((404, b"not found".to_vec()))
                } else {
                    (403, b"missing Metadata-Flavor".to_vec())
                };
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
            }
        });
        Self {
            port,
            stop,
            hits,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn routes(items: &[(&str, u16, &str)]) -> HashMap<String, (u16, Vec<u8>)> {
    items
        .iter()
        .map(|(p, s, b)| (p.to_string(), (*s, b.as_bytes().to_vec())))
        .collect()
}

const ETCD2_CONFIG: &str = "#cloud-config\nhostname: meta-host-ignored\ncoreos:\n  etcd2:\n    advertise-client-urls: http://$public_ipv4:2379\n    listen-peer-urls: http://$private_ipv4:2380\n  units:\n    - name: etcd2.service\n      command: start\n";

fn read(root: &Path, p: &str) -> String {
    std::fs::read_to_string(root.join(p.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn version_usage_and_bad_flags() {
    let o = cloudinit(&["-version"]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("coreos-cloudinit "));
    let o = cloudinit(&[]);
    assert_eq!(o.status.code(), Some(2), "no datasource is a usage error");
    let o = cloudinit(&["-oem", "nosuch"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ec2-compat"));
    let o = cloudinit(&["-no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn validate_exit_status_and_output() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good");
    std::fs::write(&good, "#cloud-config\nhostname: a\n").unwrap();
    let o = cloudinit(&["-validate", "-from-file", good.to_str().unwrap()]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "");
    let bad = d.path().join("bad");
    std::fs::write(&bad, "#cloud-config\nhostname: foo\nunknown: bar\n").unwrap();
    let o = cloudinit(&["--validate=true", &format!("--from-file={}", bad.display())]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "line 3: warning: unrecognized key \"unknown\"\n"
    );
    let json = d.path().join("json");
    std::fs::write(&json, "{}").unwrap();
    let o = cloudinit(&["-validate", "-from-file", json.to_str().unwrap()]);
    assert_eq!(
        stdout(&o),
        "line 1: error: must be \"#cloud-config\" or begin with \"#!\"\n"
    );
}

#[test]
fn ec2_metadata_service_on_loopback() {
    let server = Server::start(routes(&[
        ("/2009-04-04/", 200, "meta-data\nuser-data"),
        ("/2009-04-04/user-data", 200, ETCD2_CONFIG),
        ("/2009-04-04/meta-data/public-ipv4", 200, "203.0.113.29"),
        ("/2009-04-04/meta-data/local-ipv4", 200, "192.0.2.13"),
        (
            "/2009-04-04/meta-data/hostname",
            200,
            "ip-192-0-2-13.example internal",
        ),
        ("/2009-04-04/meta-data/public-keys", 200, "0=my-key"),
        (
            "/2009-04-04/meta-data/public-keys/0/openssh-key",
            200,
            "ssh-rsa AAAAmeta me@host\n",
        ),
    ]));
    let root = tempfile::tempdir().unwrap();
    let o = cloudinit(&[
        "-from-ec2-metadata",
        &server.url("/"),
        "-root",
        root.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dropin = read(
        root.path(),
        "/run/systemd/system/etcd2.service.d/20-cloudinit.conf",
    );
    assert_eq!(
        dropin,
        "[Service]\nEnvironment=\"ETCD_ADVERTISE_CLIENT_URLS=http://203.0.113.29:2379\"\nEnvironment=\"ETCD_LISTEN_PEER_URLS=http://192.0.2.13:2380\"\n"
    );
    assert_eq!(
        read(root.path(), "/etc/environment"),
        "COREOS_PRIVATE_IPV4=192.0.2.13\nCOREOS_PUBLIC_IPV4=203.0.113.29\n"
    );
    // user-data's hostname wins over the metadata's.
    assert_eq!(read(root.path(), "/etc/hostname"), "meta-host-ignored\n");
    assert!(read(
        root.path(),
        "/home/core/.ssh/authorized_keys.d/coreos-cloudinit"
    )
    .contains("ssh-rsa AAAAmeta"));
    assert!(stdout(&o).contains("dbus start etcd2.service mode=replace"));
    assert!(server.hits.load(Ordering::Relaxed) >= 7);
}

#[test]
fn gce_metadata_service_on_loopback() {
    // GCE's metadata server refuses requests without `Metadata-Flavor: Google`.
    let server = Server::start_requiring(
        routes(&[
            ("/computeMetadata/v1/", 200, "instance/\nproject/\n"),
            (
                "/computeMetadata/v1/instance/attributes/user-data",
                200,
                ETCD2_CONFIG,
            ),
            (
                "/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip",
                200,
                "203.0.113.40",
            ),
            (
                "/computeMetadata/v1/instance/network-interfaces/0/ip",
                200,
                "10.240.0.2",
            ),
            (
                "/computeMetadata/v1/instance/hostname",
                200,
                "core-1.c.project.internal",
            ),
        ]),
        Some("metadata-flavor: google"),
    );
    let root = tempfile::tempdir().unwrap();
    let o = cloudinit(&[
        "-from-gce-metadata",
        &server.url("/"),
        "-root",
        root.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        read(
            root.path(),
            "/run/systemd/system/etcd2.service.d/20-cloudinit.conf"
        ),
        "[Service]\nEnvironment=\"ETCD_ADVERTISE_CLIENT_URLS=http://203.0.113.40:2379\"\nEnvironment=\"ETCD_LISTEN_PEER_URLS=http://10.240.0.2:2380\"\n"
    );
    assert_eq!(
        read(root.path(), "/etc/environment"),
        "COREOS_PRIVATE_IPV4=10.240.0.2\nCOREOS_PUBLIC_IPV4=203.0.113.40\n"
    );

    // A service answering garbage for an address is refused, naming what it read.
    let bad = Server::start_requiring(
        routes(&[
            ("/computeMetadata/v1/", 200, ""),
            (
                "/computeMetadata/v1/instance/network-interfaces/0/ip",
                200,
                "not-an-ip",
            ),
        ]),
        Some("metadata-flavor: google"),
    );
    let o = cloudinit(&[
        "-from-gce-metadata",
        &bad.url("/"),
        "-root",
        root.path().to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("couldn't parse \"not-an-ip\" as IP address"),
        "{err}"
    );
}

#[test]
fn ec2_metadata_without_user_data_is_empty() {
    let server = Server::start(routes(&[
        ("/2009-04-04/", 200, "meta-data"),
        ("/2009-04-04/meta-data/hostname", 200, "node7"),
        ("/2009-04-04/meta-data/public-ipv4", 200, "203.0.113.7"),
    ]));
    let root = tempfile::tempdir().unwrap();
    let o = cloudinit(&[
        "-from-ec2-metadata",
        &server.url("/"),
        "-root",
        root.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read(root.path(), "/etc/hostname"), "node7\n");
    assert_eq!(
        read(root.path(), "/etc/environment"),
        "COREOS_PUBLIC_IPV4=203.0.113.7\n"
    );
}

#[test]
fn url_and_proc_cmdline() {
    let server = Server::start(routes(&[
        ("/ud", 200, "#cloud-config\nhostname: from-url\n"),
        ("/gone", 404, ""),
    ]));
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let o = cloudinit(&[
        "-from-url",
        &server.url("/ud"),
        "-root",
        root.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read(&root, "/etc/hostname"), "from-url\n");

    let cmdline = d.path().join("cmdline");
    std::fs::write(
        &cmdline,
        format!(
            "root=LABEL=ROOT cloud-config-url={} quiet\n",
            server.url("/ud")
        ),
    )
    .unwrap();
    let root2 = d.path().join("root2");
    std::fs::create_dir(&root2).unwrap();
    let o = cloudinit(&[
        "-from-proc-cmdline",
        "-proc-cmdline",
        cmdline.to_str().unwrap(),
        "-root",
        root2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read(&root2, "/etc/hostname"), "from-url\n");

    // No cloud-config-url: the source is checked once and never becomes available.
    std::fs::write(&cmdline, "quiet\n").unwrap();
    let o = cloudinit(&[
        "-from-proc-cmdline",
        "-proc-cmdline",
        cmdline.to_str().unwrap(),
        "-root",
        root2.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("No datasources available in time"));

    // A URL that is not found: a failure, exit 1 (0 with -ignore-failure).
    let o = cloudinit(&[
        "-from-url",
        &server.url("/gone"),
        "-root",
        root.to_str().unwrap(),
        "-datasource-timeout",
        "1",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn configdrive_and_vagrant_convention() {
    let d = tempfile::tempdir().unwrap();
    let drive = d.path().join("configdrive");
    std::fs::create_dir_all(drive.join("openstack/latest")).unwrap();
    std::fs::write(drive.join("openstack/latest/user_data"), ETCD2_CONFIG).unwrap();
    std::fs::write(
        drive.join("openstack/latest/meta_data.json"),
        r#"{"hostname":"drive","public_keys":{"k":"ssh-ed25519 AAAAdrive"}}"#,
    )
    .unwrap();
    // The Vagrant convention: the addresses are in the root's /etc/environment.
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/environment"),
        "# set by the launcher\nCOREOS_PUBLIC_IPV4=172.18.0.11\nCOREOS_PRIVATE_IPV4=172.18.0.11\n",
    )
    .unwrap();
    let o = cloudinit(&[
        "-from-configdrive",
        drive.to_str().unwrap(),
        "-root",
        root.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(read(
        &root,
        "/run/systemd/system/etcd2.service.d/20-cloudinit.conf"
    )
    .contains("http://172.18.0.11:2379"));
    // Already present: the environment file keeps its comment and order.
    assert_eq!(
        read(&root, "/etc/environment"),
        "# set by the launcher\nCOREOS_PUBLIC_IPV4=172.18.0.11\nCOREOS_PRIVATE_IPV4=172.18.0.11\n"
    );
    assert!(read(&root, "/home/core/.ssh/authorized_keys").contains("AAAAdrive"));
}

#[test]
fn chapter_user_data_applies() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/environment"),
        "COREOS_PUBLIC_IPV4=172.17.8.101\nCOREOS_PRIVATE_IPV4=172.17.8.101\n",
    )
    .unwrap();
    let user_data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/user-data");
    let o = cloudinit(&["-validate", "-from-file", user_data.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "the chapter's user-data validates: {}",
        stdout(&o)
    );
    let o = cloudinit(&[
        "-from-file",
        user_data.to_str().unwrap(),
        "-root",
        root.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plan = stdout(&o);
    let jobs: Vec<&str> = plan
        .lines()
        .filter(|l| l.starts_with("dbus start"))
        .collect();
    assert_eq!(
        jobs,
        vec![
            "dbus start etcd2.service mode=replace",
            "dbus start fleet.service mode=replace",
            "dbus start docker-tcp.socket mode=replace"
        ]
    );
    assert!(read(
        &root,
        "/run/systemd/system/etcd2.service.d/20-cloudinit.conf"
    )
    .contains("Environment=\"ETCD_INITIAL_CLUSTER=core-01=http://172.17.8.101:2380\""));
}

#[test]
fn scripts_gzip_and_ignition() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let script = d.path().join("script");
    std::fs::write(&script, "#!/bin/sh\necho $private_ipv4 > /tmp/x\n").unwrap();
    let o = Command::new(BIN)
        .args([
            "-from-file",
            script.to_str().unwrap(),
            "-root",
            root.to_str().unwrap(),
        ])
        .env("COREOS_PRIVATE_IPV4", "192.0.2.5")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plan = stdout(&o);
    let run = plan
        .lines()
        .find(|l| l.starts_with("dbus StartTransientUnit coreos-cloudinit-"))
        .unwrap();
    let path = run.rsplit(' ').next().unwrap();
    assert!(path.starts_with("/var/lib/coreos-cloudinit/scripts/"));
    assert_eq!(read(&root, path), "#!/bin/sh\necho 192.0.2.5 > /tmp/x\n");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(root.join(path.trim_start_matches('/')))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o744);
    assert!(
        read(&root, "/var/lib/coreos-cloudinit/scripts/unit-name").starts_with("coreos-cloudinit-")
    );

    // gzip-compressed user-data is detected.
    let gz = d.path().join("gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(b"#cloud-config\nhostname: zipped\n").unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let o = cloudinit(&[
        "-from-file",
        gz.to_str().unwrap(),
        "-root",
        root.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read(&root, "/etc/hostname"), "zipped\n");

    // Truncated gzip is an error of the user-data: -validate says so and fails, and the
    // apply refuses it instead of applying an empty config.
    let full = std::fs::read(&gz).unwrap();
    let cut = d.path().join("cut.gz");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    let o = cloudinit(&["-validate", "-from-file", cut.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("user-data is gzip-compressed but does not decompress"),
        "{}",
        stdout(&o)
    );
    let untouched = d.path().join("untouched");
    std::fs::create_dir(&untouched).unwrap();
    let o = cloudinit(&[
        "-from-file",
        cut.to_str().unwrap(),
        "-root",
        untouched.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read_dir(&untouched).unwrap().count(), 0);

    // Ignition is not for coreos-cloudinit: exit 0, nothing done.
    let ign = d.path().join("ign");
    std::fs::write(&ign, r#"{"ignitionVersion": 1}"#).unwrap();
    let empty = d.path().join("empty-root");
    std::fs::create_dir(&empty).unwrap();
    let o = cloudinit(&[
        "-from-file",
        ign.to_str().unwrap(),
        "-root",
        empty.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn nothing_is_written_when_any_file_cannot_be() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    // /etc/blocked is a file, so /etc/blocked/x cannot be written.
    std::fs::write(root.join("etc/blocked"), "").unwrap();
    let (code, err) = apply_under(
        &root,
        "#cloud-config\nwrite_files:\n  - path: /etc/first\n    content: one\n  - path: /etc/blocked/x\n    content: two\ncoreos:\n  units:\n    - name: a.service\n      content: \"[Service]\\nExecStart=/bin/true\\n\"\n",
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("/etc/blocked"), "{err}");
    let mut left: Vec<String> = walk(&root);
    left.sort();
    assert_eq!(left, vec!["etc", "etc/blocked"], "nothing else was created");

    // An owner that does not exist is found while planning, before any write.
    let (code, err) = apply_under(&root, "#cloud-config\nwrite_files:\n  - path: /etc/first\n    content: one\n  - path: /etc/second\n    owner: nosuchuser\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("nosuchuser"), "{err}");
    assert!(!root.join("etc/first").exists());
}

/// Applies `user_data` under `root` (the user-data file beside it): exit code and stderr.
fn apply_under(root: &Path, user_data: &str) -> (Option<i32>, String) {
    let ud = root.with_extension("user-data");
    std::fs::write(&ud, user_data).unwrap();
    let o = cloudinit(&[
        "-from-file",
        ud.to_str().unwrap(),
        "-root",
        root.to_str().unwrap(),
    ]);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        out.push(name.clone());
        if p.is_dir() {
            out.extend(walk(&p).into_iter().map(|c| format!("{name}/{c}")));
        }
    }
    out
}

#[test]
fn writes_never_leave_the_root_through_a_link() {
    // -root DIR with DIR/etc a link to a directory outside DIR: the write is refused, and
    // nothing lands outside (nor inside: nothing is written at all).
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let outside = d.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
    let (code, err) = apply_under(
        &root,
        "#cloud-config\nwrite_files:\n  - path: /etc/escaped\n    content: x\n",
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("is a symbolic link that leads outside the root"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

//! rkt on this host, as root, each test with its own data directory: images fetched from
//! `docker save` archives, ACIs and a real Docker registry (Debian's `docker-registry` on a
//! loopback port), pods run, listed, stopped, killed, entered and collected, the default
//! network inside a network namespace the test creates, and bad images refused with nothing
//! left in the store. Needs root, busybox-static and docker-registry
//! (scripts/install-deps.sh).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::print_stdout
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const RKT: &str = env!("CARGO_BIN_EXE_rkt");

struct Rkt {
    dir: tempfile::TempDir,
}

impl Rkt {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(RKT);
        c.arg(format!("--dir={}", self.path().join("rkt").display()));
        c.args(args);
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "rkt {args:?}: {:?}\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.status.success(), "rkt {args:?} succeeded");
        String::from_utf8_lossy(&o.stderr).to_string()
    }

    /// A busybox `docker save` archive.
    fn busybox(&self) -> PathBuf {
        let p = self.path().join("busybox.tar");
        if !p.exists() {
            let img = container_image::busybox::image(Path::new("/bin/busybox")).unwrap();
            let f = std::fs::File::create(&p).unwrap();
            container_image::archive::write(&img, "busybox:latest", f).unwrap();
        }
        p
    }

    fn images_stored(&self) -> usize {
        std::fs::read_dir(self.path().join("rkt/cas/images"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn debris(&self) -> usize {
        std::fs::read_dir(self.path().join("rkt/cas/tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Mounts of this data directory visible on the host.
    fn host_mounts(&self) -> Vec<String> {
        let root = self.path().display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&root))
            .map(str::to_string)
            .collect()
    }

    fn wait_state(&self, uuid: &str, want: &str) {
        let start = Instant::now();
        loop {
            let s = self.ok(&["status", uuid]);
            if s.contains(&format!("state={want}\n")) && (want != "running" || s.contains("pid=")) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "pod {uuid}: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rkt {
    fn drop(&mut self) {
        // Whatever a failed test left: stop pods, collect them, so no mount stays.
        let _ = Command::new(RKT)
            .arg(format!("--dir={}", self.path().join("rkt").display()))
            .args(["gc", "--grace-period=0s"])
            .output();
        for m in self.host_mounts() {
            if let Some(p) = m.split(' ').nth(4) {
                let _ = Command::new("umount").args(["-l", p]).status();
            }
        }
    }
}

fn one_uuid(list: &str) -> String {
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{list}");
    rows[0].split('\t').next().unwrap().to_string()
}

#[test]
fn an_archive_is_fetched_once_and_listed_as_rkt_lists_it() {
    let r = Rkt::new();
    let bb = r.busybox();
    let bb = bb.to_str().unwrap();
    let e = r.fails(&["fetch", bb]);
    assert!(
        e.contains("signature verification") && e.contains("--insecure-options=image"),
        "{e}"
    );
    assert_eq!(r.images_stored(), 0);
    let id = r.ok(&["--insecure-options=image", "fetch", bb]);
    assert!(id.starts_with("sha512-") && id.trim().len() == 39, "{id}");
    let again = r.ok(&["--insecure-options=image", "fetch", bb]);
    assert_eq!(id, again);
    assert_eq!(r.images_stored(), 1);
    let list = r.ok(&["image", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines[0].starts_with("ID\t"), "{list}");
    assert!(lines[1].starts_with(&id.trim()[..19]), "{list}");
    assert!(lines[1].contains("\tbusybox:latest\t"), "{list}");
    let m = r.ok(&["image", "cat-manifest", "busybox:latest"]);
    let m: serde_json::Value = serde_json::from_str(&m).unwrap();
    assert_eq!(m["acKind"], "ImageManifest");
    assert_eq!(m["app"]["exec"][0], "/bin/sh");
    // Export, then the exported ACI comes back as the same image.
    let aci = r.path().join("bb.aci");
    r.ok(&["image", "export", "busybox", aci.to_str().unwrap()]);
    r.fails(&["image", "export", "busybox", aci.to_str().unwrap()]);
    let e = r.fails(&["fetch", aci.to_str().unwrap()]);
    assert!(e.contains("bb.aci.asc"), "{e}");
    r.ok(&["image", "rm", id.trim()]);
    assert_eq!(r.images_stored(), 0);
    let id2 = r.ok(&["--insecure-options=image", "fetch", aci.to_str().unwrap()]);
    assert_eq!(id, id2);
    // Extract.
    let out = r.path().join("extracted");
    r.ok(&[
        "image",
        "extract",
        "--rootfs-only",
        "busybox",
        out.to_str().unwrap(),
    ]);
    assert!(out.join("bin/busybox").is_file());
    assert_eq!(r.debris(), 0);
}

#[test]
fn a_pod_prints_its_output_exits_with_its_status_and_is_collected() {
    let r = Rkt::new();
    let bb = r.busybox();
    let bb = bb.to_str().unwrap();
    let o = r.run(&[
        "--insecure-options=image",
        "run",
        "--net=host",
        bb,
        "--exec=/bin/echo",
        "--",
        "hello",
        "from",
        "rkt",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello from rkt\n");
    let list = r.ok(&["list"]);
    assert!(
        list.starts_with("UUID\t\tAPP\tIMAGE NAME\tSTATE\tCREATED\t\tSTARTED\t\tNETWORKS\n")
            || list.starts_with("UUID\t"),
        "{list}"
    );
    assert!(
        list.contains("\tbusybox\tbusybox:latest\texited\t"),
        "{list}"
    );
    let uuid = one_uuid(&list);
    let st = r.ok(&["status", &uuid]);
    assert!(
        st.contains("state=exited\n")
            && st.contains("exited=true\n")
            && st.contains("app-busybox=0\n"),
        "{st}"
    );
    // --interactive: the app reads rkt's standard input.
    let mut child = r
        .cmd(&[
            "--insecure-options=image",
            "run",
            "--interactive",
            "--net=host",
            bb,
            "--exec=/bin/cat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"typed in\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "typed in\n");
    // A failing app's status is the pod's.
    let o = r.run(&[
        "--insecure-options=image",
        "run",
        "--net=host",
        bb,
        "--exec=/bin/sh",
        "--",
        "-c",
        "exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7));
    assert!(r.host_mounts().is_empty(), "{:?}", r.host_mounts());
    let gc = r.ok(&["gc", "--grace-period=0s"]);
    assert_eq!(gc.matches("Garbage collecting pod").count(), 3, "{gc}");
    assert_eq!(r.ok(&["list", "--no-legend"]), "");
    assert!(r.host_mounts().is_empty());
}

#[test]
fn environment_user_volumes_and_hostname_reach_the_app() {
    let r = Rkt::new();
    let bb = r.busybox();
    let data = r.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Writable by the app's user (nobody).
    Command::new("chmod")
        .arg("777")
        .arg(&data)
        .status()
        .unwrap();
    std::fs::write(data.join("greeting"), "hi from the host\n").unwrap();
    let vol = format!("data,kind=host,source={}", data.display());
    let out = r.ok(&[
        "--insecure-options=image",
        "run",
        "--net=host",
        "--set-env=GREETING=hello",
        "--volume",
        &vol,
        "--hostname=podhost",
        bb.to_str().unwrap(),
        "--user=nobody",
        "--mount=volume=data,target=/data",
        "--exec=/bin/sh",
        "--",
        "-c",
        "echo $GREETING; id -u; hostname; cat /data/greeting; touch /data/new && echo writable",
    ]);
    assert_eq!(
        out, "hello\n65534\npodhost\nhi from the host\nwritable\n",
        "{out}"
    );
    assert!(data.join("new").exists());
    // Read-only volume: writing fails.
    let vol_ro = format!("data,kind=host,source={},readOnly=true", data.display());
    let o = r.run(&[
        "--insecure-options=image",
        "run",
        "--net=host",
        "--volume",
        &vol_ro,
        bb.to_str().unwrap(),
        "--mount=volume=data,target=/data",
        "--exec=/bin/touch",
        "--",
        "/data/x",
    ]);
    assert!(!o.status.success());
    assert!(!data.join("x").exists());
}

#[test]
fn stop_sigkill_and_enter_behave_and_leave_nothing() {
    let r = Rkt::new();
    let bb = r.busybox();
    let bb = bb.to_str().unwrap();
    r.ok(&["--insecure-options=image", "fetch", bb]);
    // A long pod, stopped with rkt stop.
    let mut child = r
        .cmd(&[
            "run",
            "--net=host",
            "busybox",
            "--exec=/bin/sleep",
            "--",
            "1000",
        ])
        .spawn()
        .unwrap();
    let uuid = {
        let start = Instant::now();
        loop {
            let l = r.ok(&["list", "--no-legend", "--full"]);
            if let Some(u) = l.split('\t').next().filter(|u| u.len() == 36) {
                break u.to_string();
            }
            assert!(start.elapsed() < Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    r.wait_state(&uuid, "running");
    let host = r.ok(&["enter", &uuid, "/bin/hostname"]);
    assert_eq!(host.trim(), format!("rkt-{uuid}"));
    let ps = r.ok(&["enter", &uuid, "/bin/ps"]);
    assert!(ps.contains("sleep 1000"), "{ps}");
    let stopped = r.ok(&["stop", &uuid[..8]]);
    assert_eq!(stopped.trim(), format!("{uuid:?}"));
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(143), "SIGTERM's status");
    r.wait_state(&uuid, "exited");
    assert!(r.ok(&["status", &uuid]).contains("app-busybox=143\n"));
    // SIGTERM to rkt itself (what `systemctl stop` sends): the apps get it, and rkt ends
    // by the signal, as a stopped process does.
    let child = r
        .cmd(&[
            "run",
            "--net=host",
            "busybox",
            "--exec=/bin/sleep",
            "--",
            "1003",
        ])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !Command::new("pgrep")
        .args(["-f", "^/bin/sleep 1003$"])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let st = child.wait_with_output().unwrap().status;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(15),
        "{st:?}"
    );
    // A pod whose rkt is killed: its apps end with it, and it reads as exited.
    let mut child = r
        .cmd(&[
            "run",
            "--net=host",
            "busybox",
            "--exec=/bin/sleep",
            "--",
            "1001",
        ])
        .spawn()
        .unwrap();
    let start = Instant::now();
    let pid_of_app = loop {
        let ps = Command::new("pgrep")
            .args(["-f", "^/bin/sleep 1001$"])
            .output()
            .unwrap();
        if let Some(p) = String::from_utf8_lossy(&ps.stdout).lines().next() {
            break p.to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid_of_app}")).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the app outlived its rkt"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let list = r.ok(&["list", "--no-legend"]);
    assert_eq!(list.matches("\texited\t").count(), 3, "{list}");
    r.ok(&["gc", "--grace-period=0s"]);
    assert_eq!(r.ok(&["list", "--no-legend"]), "");
    assert!(r.host_mounts().is_empty());
}

#[test]
fn bad_images_are_refused_and_nothing_is_stored() {
    let r = Rkt::new();
    let bb = r.busybox();
    let bytes = std::fs::read(&bb).unwrap();
    // Truncated.
    let t = r.path().join("truncated.tar");
    std::fs::write(&t, &bytes[..bytes.len() / 2]).unwrap();
    let e = r.fails(&["--insecure-options=image", "fetch", t.to_str().unwrap()]);
    assert!(e.contains("truncated") || e.contains("damaged"), "{e}");
    // A layer that is not what the config says.
    let img = container_image::busybox::image(Path::new("/bin/busybox")).unwrap();
    let mut bad = img.clone();
    let mut tar = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&bad.layers[0].gzip[..]),
        &mut tar,
    )
    .unwrap();
    let n = tar.len();
    tar[n / 2] ^= 0xff;
    bad.layers[0].gzip = container_image::gzip(&tar);
    bad.layers[0].diff_id = container_image::digest(&tar);
    // archive::write names layers by the diff_id; the config keeps the old one.
    let p = r.path().join("wrong-digest.tar");
    container_image::archive::write(&bad, "busybox:latest", std::fs::File::create(&p).unwrap())
        .unwrap();
    let e = r.fails(&["--insecure-options=image", "fetch", p.to_str().unwrap()]);
    assert!(e.contains("digest"), "{e}");
    // An ACI whose entry climbs out.
    let evil = r.path().join("evil.aci");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&evil).unwrap());
        let m = br#"{"acKind":"ImageManifest","acVersion":"0.8.11","name":"evil"}"#;
        let mut h = tar::Header::new_gnu();
        h.set_size(m.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "manifest", &m[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        let name = b"rootfs/../../../etc/evil";
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"bad"[..]).unwrap();
        b.finish().unwrap();
    }
    let e = r.fails(&["--insecure-options=image", "fetch", evil.to_str().unwrap()]);
    assert!(e.contains("leaves the image"), "{e}");
    // Not an image at all, and a file that is not there.
    let junk = r.path().join("junk");
    std::fs::write(&junk, b"this is not an image").unwrap();
    let e = r.fails(&["--insecure-options=image", "fetch", junk.to_str().unwrap()]);
    assert!(e.contains("junk"), "{e}");
    let e = r.fails(&["fetch", "/nonexistent/image.aci"]);
    assert!(e.contains("/nonexistent/image.aci"), "{e}");
    assert_eq!(r.images_stored(), 0);
    assert_eq!(r.debris(), 0);
    // A missing executable and an impossible mount are refused before any pod runs.
    r.ok(&["--insecure-options=image", "fetch", bb.to_str().unwrap()]);
    let e = r.fails(&["run", "--net=host", "busybox", "--exec=/bin/nothere"]);
    assert!(
        e.contains("/bin/nothere") && e.contains("does not exist"),
        "{e}"
    );
    let e = r.fails(&[
        "run",
        "--net=host",
        "busybox",
        "--mount=volume=nope,target=/x",
    ]);
    assert!(e.contains("nope"), "{e}");
    let e = r.fails(&[
        "run",
        "--net=host",
        "--volume=v,kind=host,source=/nonexistent/dir",
        "busybox",
        "--mount=volume=v,target=/x",
    ]);
    assert!(e.contains("/nonexistent/dir"), "{e}");
    let e = r.fails(&["run", "busybox", "--memory=5M"]);
    assert!(e.contains("MemoryLimit"), "{e}");
    assert_eq!(r.ok(&["list", "--no-legend"]), "");
}

/// A network namespace of the test's own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("rkt-{tag}-{}", std::process::id());
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        Netns(name)
    }

    /// rkt in this namespace (through nsenter, which becomes rkt: killing the child kills
    /// rkt itself).
    fn exec(&self, r: &Rkt, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.0)).arg(RKT);
        c.arg(format!("--dir={}", r.path().join("rkt").display()));
        c.args(args);
        c.stdin(Stdio::null());
        c
    }

    fn links(&self) -> String {
        let o = Command::new("ip")
            .args(["-n", &self.0, "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn the_default_network_gives_each_pod_an_address_on_the_bridge_and_gc_frees_it() {
    let r = Rkt::new();
    let ns = Netns::new("net");
    let bb = r.busybox();
    r.ok(&["--insecure-options=image", "fetch", bb.to_str().unwrap()]);
    // A pod that stays, and one that reaches it and the gateway.
    let mut server = ns
        .exec(&r, &["run", "busybox", "--exec=/bin/sleep", "--", "1002"])
        .spawn()
        .unwrap();
    let start = Instant::now();
    let first_ip = loop {
        let l = r.ok(&["list", "--no-legend"]);
        if let Some(ip) = l.split("default:ip4=").nth(1) {
            break ip.trim().to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{l}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(first_ip, "172.16.28.2");
    let o = ns
        .exec(&r, &[
            "run",
            "busybox",
            "--exec=/bin/sh",
            "--",
            "-c",
            &format!("ip -4 -o addr show eth0; ip route; ping -c1 -W5 172.16.28.1 >/dev/null && echo gateway; ping -c1 -W5 {first_ip} >/dev/null && echo neighbour"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("inet 172.16.28.3/24"), "{text}");
    assert!(text.contains("default via 172.16.28.1 dev eth0"), "{text}");
    assert!(text.contains("gateway\nneighbour\n"), "{text}");
    let list = r.ok(&["list"]);
    assert!(list.contains("default:ip4=172.16.28.3"), "{list}");
    server.kill().unwrap();
    server.wait().unwrap();
    let nets = r.path().join("rkt/networks/default");
    assert_eq!(std::fs::read_dir(&nets).unwrap().count(), 2);
    assert_eq!(ns.links().matches("veth").count(), 2, "{}", ns.links());
    r.ok(&["gc", "--grace-period=0s"]);
    assert_eq!(std::fs::read_dir(&nets).unwrap().count(), 0);
    // The veth pairs went with the pods' namespaces; the bridge stays for the next pod.
    let start = Instant::now();
    while ns.links().contains("veth") {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", ns.links());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ns.links().contains("rkt0"));
    assert!(r.host_mounts().is_empty(), "{:?}", r.host_mounts());
    // --net=none: only loopback.
    let o = ns
        .exec(
            &r,
            &[
                "run",
                "--net=none",
                "busybox",
                "--exec=/bin/ip",
                "--",
                "-o",
                "link",
            ],
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("lo:"), "{text}");
}

/// Debian's docker-registry on a loopback port, stopped on drop.
struct Registry {
    child: std::process::Child,
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
        container_image::push::wait_ready(&addr, Duration::from_secs(20)).unwrap();
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

#[test]
fn docker_images_come_from_a_registry_once_even_when_fetched_twice_at_once() {
    let reg = Registry::start();
    let img = container_image::busybox::image(Path::new("/bin/busybox")).unwrap();
    container_image::push::push(&img, &reg.addr, "busybox", "latest").unwrap();
    let r = Rkt::new();
    let url = format!("docker://{}/busybox:latest", reg.addr);
    let e = r.fails(&["fetch", &url]);
    assert!(
        e.contains("signature verification for docker images is not supported"),
        "{e}"
    );
    let fetches: Vec<_> = (0..2)
        .map(|_| {
            r.cmd(&["--insecure-options=image", "fetch", &url])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let ids: Vec<String> = fetches
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8(o.stdout).unwrap()
        })
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(r.images_stored(), 1);
    assert_eq!(r.debris(), 0);
    let list = r.ok(&["image", "list"]);
    let name = format!(
        "127.0.0.1-{}/busybox:latest",
        reg.addr.rsplit(':').next().unwrap()
    );
    assert!(list.contains(&name), "{list}");
    // The registry gone, the stored image still runs (pull policy "new").
    drop(reg);
    let out = r.ok(&[
        "--insecure-options=image",
        "run",
        "--net=host",
        &url,
        "--exec=/bin/echo",
        "--",
        "from the registry",
    ]);
    assert_eq!(out, "from the registry\n");
    let e = r.fails(&[
        "--insecure-options=image",
        "fetch",
        "--pull-policy=update",
        &url,
    ]);
    assert!(e.contains("127.0.0.1"), "{e}");
    let e = r.fails(&["--insecure-options=image", "fetch", "docker://Not A Name"]);
    assert!(e.contains("repository name"), "{e}");
}

#[test]
fn a_port_reaches_the_app_and_its_rules_go_with_the_pod() {
    let r = Rkt::new();
    let ns = Netns::new("port");
    // busybox with port 80 declared, as a Dockerfile's EXPOSE does.
    let mut img = container_image::busybox::image(Path::new("/bin/busybox")).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&img.config).unwrap();
    config["config"]["ExposedPorts"] = serde_json::json!({"80/tcp": {}});
    img.config = serde_json::to_vec(&config).unwrap();
    let archive = r.path().join("web.tar");
    container_image::archive::write(&img, "web:1", std::fs::File::create(&archive).unwrap())
        .unwrap();
    let mut pod = ns
        .exec(
            &r,
            &[
                "--insecure-options=image",
                "run",
                "--port=80-tcp:8080",
                archive.to_str().unwrap(),
                "--exec=/bin/httpd",
                "--",
                "-f",
                "-p",
                "80",
                "-h",
                "/etc",
            ],
        )
        .spawn()
        .unwrap();
    let start = Instant::now();
    let body = loop {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "curl",
                "-sS",
                "-m",
                "2",
                "http://172.16.28.1:8080/group",
            ])
            .output()
            .unwrap();
        if o.status.success() {
            break String::from_utf8_lossy(&o.stdout).to_string();
        }
        if start.elapsed() > Duration::from_secs(20) {
            let diag = Command::new("ip")
                .args(["netns", "exec", &ns.0, "sh", "-c", "iptables -t nat -S; ip addr; ip route; curl -sS -m 2 http://172.16.28.2:80/group"])
                .output()
                .unwrap();
            let _ = pod.kill();
            panic!(
                "{}\n{}{}",
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&diag.stdout),
                String::from_utf8_lossy(&diag.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains("root:x:0:"), "{body}");
    let rules = |ns: &Netns| {
        let o = Command::new("ip")
            .args(["netns", "exec", &ns.0, "iptables", "-w", "-t", "nat", "-S"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).matches("rkt:").count()
    };
    assert_eq!(rules(&ns), 2);
    let e = r.fails(&["run", "--port=http:80", "web:1"]);
    assert!(
        e.contains("no app of the pod declares a port named \"http\""),
        "{e}"
    );
    pod.kill().unwrap();
    pod.wait().unwrap();
    let o = ns.exec(&r, &["gc", "--grace-period=0s"]).output().unwrap();
    assert!(o.status.success());
    assert_eq!(rules(&ns), 0);
}

/// A GnuPG home of the test's own with one signing key of `algo`; (home, armored public key
/// file).
fn gpg_key(dir: &Path, name: &str, algo: &str) -> (PathBuf, PathBuf) {
    let home = dir.join(format!("gnupg-{name}"));
    std::fs::create_dir_all(&home).unwrap();
    Command::new("chmod")
        .arg("700")
        .arg(&home)
        .status()
        .unwrap();
    let gpg = |args: &[&str]| {
        let o = Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    };
    gpg(&[
        "--quick-gen-key",
        &format!("{name} <{name}@example.invalid>"),
        algo,
        "sign",
        "never",
    ]);
    let public = dir.join(format!("{name}.asc"));
    std::fs::write(&public, gpg(&["--armor", "--export"])).unwrap();
    (home, public)
}

fn gpg_sign(home: &Path, file: &Path, sig: &Path) {
    let o = Command::new("gpg")
        .arg("--homedir")
        .arg(home)
        .args([
            "--batch",
            "--yes",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--armor",
            "--detach-sign",
            "--output",
        ])
        .arg(sig)
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn signed_acis_are_taken_only_with_a_trusted_key_and_an_intact_file() {
    let r = Rkt::new();
    let config = r.path().join("etc-rkt");
    let local = format!("--local-config={}", config.display());
    let system = format!("--system-config={}", r.path().join("usr-lib-rkt").display());
    let bb = r.busybox();
    r.ok(&["--insecure-options=image", "fetch", bb.to_str().unwrap()]);
    let aci = r.path().join("busybox.aci");
    r.ok(&["image", "export", "busybox", aci.to_str().unwrap()]);
    r.ok(&["image", "rm", "busybox"]);
    let (alice, alice_pub) = gpg_key(r.path(), "alice", "rsa2048");
    let (_mallory_home, mallory_pub) = gpg_key(r.path(), "mallory", "ed25519");
    let asc = r.path().join("busybox.aci.asc");
    gpg_sign(&alice, &aci, &asc);
    let aci_s = aci.to_str().unwrap();
    // Signed, but no key trusted yet.
    let e = r.fails(&[&local, &system, "fetch", aci_s]);
    assert!(e.contains("no key is trusted"), "{e}");
    // Mallory's key trusted for busybox: the signature is not hers.
    r.ok(&[
        &local,
        "trust",
        "--prefix=busybox",
        "--skip-fingerprint-review",
        mallory_pub.to_str().unwrap(),
    ]);
    let e = r.fails(&[&local, &system, "fetch", aci_s]);
    assert!(e.contains("was not made by a key trusted"), "{e}");
    // Alice trusted for another prefix only: still refused.
    r.ok(&[
        &local,
        "trust",
        "--prefix=example.com/other",
        "--skip-fingerprint-review",
        alice_pub.to_str().unwrap(),
    ]);
    assert!(r
        .fails(&[&local, &system, "fetch", aci_s])
        .contains("verification failed"));
    assert_eq!(r.images_stored(), 0);
    // Alice trusted for busybox: fetched, and rkt says whose signature it was.
    let out = r.ok(&[
        &local,
        "trust",
        "--prefix=busybox",
        "--skip-fingerprint-review",
        alice_pub.to_str().unwrap(),
    ]);
    assert!(
        out.contains("GPG key fingerprint is: ") && out.contains("alice <alice@example.invalid>"),
        "{out}"
    );
    assert!(
        out.contains("Added key for prefix \"busybox\" at "),
        "{out}"
    );
    let o = r.run(&[&local, &system, "fetch", aci_s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("signature verified:\n  alice <alice@example.invalid>"),
        "{err}"
    );
    assert_eq!(r.images_stored(), 1);
    r.ok(&["image", "rm", "busybox"]);
    // The same signature over a changed file: refused.
    let mut bytes = std::fs::read(&aci).unwrap();
    bytes.extend_from_slice(&[0u8; 1024]);
    let changed = r.path().join("changed.aci");
    std::fs::write(&changed, &bytes).unwrap();
    let sig = format!("--signature={}", asc.display());
    let e = r.fails(&[&local, &system, "fetch", &sig, changed.to_str().unwrap()]);
    assert!(e.contains("verification failed"), "{e}");
    // No signature at all; a signature file that is not one; a key file that is not one.
    std::fs::remove_file(&asc).unwrap();
    assert!(r
        .fails(&[&local, &system, "fetch", aci_s])
        .contains("busybox.aci.asc"));
    std::fs::write(&asc, "not a signature").unwrap();
    assert!(r
        .fails(&[&local, &system, "fetch", aci_s])
        .contains("not an OpenPGP signature"));
    let e = r.fails(&[
        &local,
        "trust",
        "--root",
        "--skip-fingerprint-review",
        bb.to_str().unwrap(),
    ]);
    assert!(e.contains("not an OpenPGP public key"), "{e}");
    let e = r.fails(&[
        &local,
        "trust",
        "--prefix=../etc",
        "--skip-fingerprint-review",
        alice_pub.to_str().unwrap(),
    ]);
    assert!(e.contains("--prefix"), "{e}");
    assert_eq!(r.images_stored(), 0);
    // Trusted as a root key: good for every image.
    gpg_sign(&alice, &aci, &asc);
    let other = tempfile::tempdir().unwrap();
    let local2 = format!("--local-config={}", other.path().display());
    r.ok(&[
        &local2,
        "trust",
        "--root",
        "--skip-fingerprint-review",
        alice_pub.to_str().unwrap(),
    ]);
    r.ok(&[&local2, &system, "fetch", aci_s]);
    assert_eq!(r.images_stored(), 1);
}

/// Writes busybox as an OCI image layout in `dir` (`ref_name` in the index).
fn oci_layout(dir: &Path, ref_name: &str) {
    let img = container_image::busybox::image(Path::new("/bin/busybox")).unwrap();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = container_image::digest(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
        d
    };
    let config = put(&img.config);
    let layers: Vec<serde_json::Value> = img
        .layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put(&l.gzip),
                "size": l.gzip.len(),
            })
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": img.config.len()},
        "layers": layers,
    }))
    .unwrap();
    let m = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": m,
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": ref_name},
            }],
        }))
        .unwrap(),
    )
    .unwrap();
}

#[test]
fn oci_layouts_as_directories_and_archives_run() {
    let r = Rkt::new();
    let dir = r.path().join("bb-oci");
    oci_layout(&dir, "1.0");
    let e = r.fails(&["fetch", dir.to_str().unwrap()]);
    assert!(e.contains("--insecure-options=image"), "{e}");
    r.ok(&["--insecure-options=image", "fetch", dir.to_str().unwrap()]);
    assert!(r.ok(&["image", "list"]).contains("\tbb-oci:1.0\t"));
    let tar = r.path().join("named.tar");
    let named = r.path().join("named");
    oci_layout(&named, "example.com/tools/bb:2");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&named)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let out = r.ok(&[
        "--insecure-options=image",
        "run",
        "--net=host",
        tar.to_str().unwrap(),
        "--exec=/bin/echo",
        "--",
        "from an OCI archive",
    ]);
    assert_eq!(out, "from an OCI archive\n");
    let list = r.ok(&["image", "list"]);
    assert!(list.contains("\texample.com/tools/bb:2\t"), "{list}");
    // A blob that is not what the index says: refused whole.
    let blobs = named.join("blobs/sha256");
    let victim = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let e = r.fails(&["--insecure-options=image", "fetch", named.to_str().unwrap()]);
    assert!(e.contains("digest"), "{e}");
    assert_eq!(r.images_stored(), 2);
    assert_eq!(r.debris(), 0);
}

#[test]
fn prepared_pods_run_later_and_misuse_is_named() {
    let r = Rkt::new();
    let bb = r.busybox();
    r.ok(&["--insecure-options=image", "fetch", bb.to_str().unwrap()]);
    let uuid_file = r.path().join("uuid");
    let uuid = r.ok(&[
        "prepare",
        "--net=host",
        &format!("--uuid-file-save={}", uuid_file.display()),
        "busybox",
        "--name=first",
        "--exec=/bin/sh",
        "--",
        "-c",
        "exit 3",
        "---",
        "busybox",
        "--name=second",
        "--exec=/bin/true",
    ]);
    let uuid = uuid.trim().to_string();
    assert_eq!(std::fs::read_to_string(&uuid_file).unwrap(), uuid);
    assert!(r.ok(&["list", "--no-legend"]).contains("\tprepared\t"));
    let m: serde_json::Value = serde_json::from_str(&r.ok(&["cat-manifest", &uuid])).unwrap();
    assert_eq!(m["acKind"], "PodManifest");
    assert_eq!(m["apps"][0]["name"], "first");
    assert_eq!(m["apps"][1]["name"], "second");
    let o = r.run(&["run-prepared", &uuid[..8]]);
    assert_eq!(o.status.code(), Some(3), "the first app's status");
    let st = r.ok(&[
        "status",
        "--wait=5s",
        &format!("--uuid-file={}", uuid_file.display()),
    ]);
    assert!(st.contains("app-first=3\napp-second=0\n"), "{st}");
    // A prepared pod runs once.
    let e = r.fails(&["run-prepared", &uuid]);
    assert!(e.contains("not prepared"), "{e}");
    // rm: the pod and its directory are gone.
    assert_eq!(r.ok(&["rm", &uuid]).trim(), format!("{uuid:?}"));
    assert_eq!(r.ok(&["list", "--no-legend"]), "");
    let e = r.fails(&["status", &uuid]);
    assert!(e.contains("no pod"), "{e}");
    // Misuse, named.
    for (args, needle) in [
        (
            vec!["run", "busybox", "busybox"],
            "two apps named \"busybox\"",
        ),
        (vec!["run", "nothere:1.0"], "nothere:1.0"),
        (vec!["run", "sha512-0000"], "sha512-0000"),
        (vec!["stop", "00000000"], "no pod"),
        (vec!["enter", "00000000"], "no pod"),
        (vec!["gc", "--grace-period=soon"], "not a duration"),
        (vec!["run", "--net=weird", "busybox"], "--net=weird"),
        (
            vec!["--insecure-options=everything", "fetch", "busybox"],
            "unknown option",
        ),
        (vec!["trust", "--root"], "key files"),
        (vec!["image", "rm", "nothere"], "nothere"),
    ] {
        let e = r.fails(&args);
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    // Refused before any pod was made.
    assert_eq!(r.ok(&["list", "--no-legend"]), "");
    assert!(r.host_mounts().is_empty(), "{:?}", r.host_mounts());
}

/// An ACI of busybox whose rootfs also has `extra` entries (path, symlink target).
fn aci_with_links(path: &Path, links: &[(&str, &str)], files: &[(&str, &[u8])]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |p: &str, kind: tar::EntryType, data: &[u8], target: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        match target {
            Some(t) => b.append_link(&mut h, p, t).unwrap(),
            None => b.append_data(&mut h, p, data).unwrap(),
        }
    };
    let m = br#"{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/links","app":{"exec":["/bin/sh","-c","true"],"user":"0","group":"0"}}"#;
    add("manifest", tar::EntryType::Regular, m, None);
    add("rootfs", tar::EntryType::Directory, b"", None);
    add("rootfs/bin", tar::EntryType::Directory, b"", None);
    add(
        "rootfs/bin/busybox",
        tar::EntryType::Regular,
        &std::fs::read("/bin/busybox").unwrap(),
        None,
    );
    for a in ["sh", "true", "cat", "echo"] {
        add(
            &format!("rootfs/bin/{a}"),
            tar::EntryType::Symlink,
            b"",
            Some("busybox"),
        );
    }
    for (p, t) in links {
        add(
            &format!("rootfs/{p}"),
            tar::EntryType::Symlink,
            b"",
            Some(t),
        );
    }
    for (p, d) in files {
        add(&format!("rootfs/{p}"), tar::EntryType::Regular, d, None);
    }
    b.finish().unwrap();
}

#[test]
fn an_image_symlinks_cannot_reach_the_host() {
    let r = Rkt::new();
    let outside = r.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let o = outside.display().to_string();
    // A file written through a symlink the same archive made.
    let evil = r.path().join("through-link.aci");
    aci_with_links(&evil, &[("link", &o)], &[("link/pwned", b"x")]);
    let e = r.fails(&["--insecure-options=image", "fetch", evil.to_str().unwrap()]);
    assert!(e.contains("example.com/links"), "{e}");
    assert!(!outside.join("pwned").exists());
    assert_eq!(r.images_stored(), 0);
    // Mount targets that are symlinks out of the image: /etc, /etc/resolv.conf's directory,
    // /dev, a volume's target. The pod's mounts land inside its own root, never on the host.
    let hosts_dir = format!("{o}/etc");
    let dev_dir = format!("{o}/dev");
    let data_dir = format!("{o}/data");
    let links = r.path().join("links.aci");
    aci_with_links(
        &links,
        &[
            ("etc", &hosts_dir),
            ("dev", &dev_dir),
            ("data", &data_dir),
            ("sys", "../../../../../../sys-escape"),
        ],
        &[],
    );
    r.ok(&["--insecure-options=image", "fetch", links.to_str().unwrap()]);
    let vol_src = r.path().join("vol");
    std::fs::create_dir(&vol_src).unwrap();
    std::fs::write(vol_src.join("f"), "volume").unwrap();
    let out = r.ok(&[
        "run",
        "--net=host",
        &format!("--volume=v,kind=host,source={}", vol_src.display()),
        "example.com/links",
        "--mount=volume=v,target=/data",
        "--exec=/bin/sh",
        "--",
        "-c",
        "cat /data/f; echo; cat /etc/hosts | head -1",
    ]);
    assert!(out.starts_with("volume\n127.0.0.1"), "{out}");
    let left: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert!(left.is_empty(), "the pod wrote outside its root: {left:?}");
    assert!(!Path::new("/sys-escape").exists());
    assert!(r.host_mounts().is_empty(), "{:?}", r.host_mounts());
}

#[test]
fn a_decompression_bomb_is_refused_without_its_memory() {
    let r = Rkt::new();
    // 3 GiB of zeros in a few dozen MiB of gzip.
    let bomb = r.path().join("bomb.aci");
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 3G /dev/zero | gzip -1 > {}",
            bomb.display()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    assert!(std::fs::metadata(&bomb).unwrap().len() < 64 << 20);
    let o = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("maxrss=%M")
        .arg(RKT)
        .arg(format!("--dir={}", r.path().join("rkt").display()))
        .args(["--insecure-options=image", "fetch"])
        .arg(&bomb)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("larger than 2 GiB uncompressed"), "{err}");
    let kib: u64 = err.split("maxrss=").nth(1).unwrap().trim().parse().unwrap();
    assert!(kib < 256 * 1024, "rkt held {kib} KiB for a refused bomb");
    assert_eq!(r.images_stored(), 0);
}

/// The bounding set an app of busybox reports, with `flags` after the image.
fn bounding(r: &Rkt, flags: &[&str], script: &str) -> String {
    let mut args = vec!["run", "--net=host", "busybox"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--exec=/bin/sh", "--", "-c", script]);
    r.ok(&args)
}

#[test]
fn apps_get_appcs_capabilities_and_their_groups() {
    let r = Rkt::new();
    let bb = r.busybox();
    r.ok(&["--insecure-options=image", "fetch", bb.to_str().unwrap()]);
    let caps = |out: &str, key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:\t")))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap()
    };
    // appc's default set: 14 capabilities, not CAP_SYS_ADMIN (21) or CAP_NET_ADMIN (12).
    let out = bounding(&r, &[], "cat /proc/self/status");
    let bnd = caps(&out, "CapBnd");
    assert_eq!(bnd.count_ones(), 14, "{bnd:x}");
    assert_eq!(bnd & (1 << 21), 0);
    assert_eq!(bnd & (1 << 12), 0);
    assert_eq!(caps(&out, "CapEff"), bnd);
    // So even root cannot, say, add an address.
    let o = r.run(&[
        "run",
        "--net=host",
        "busybox",
        "--exec=/bin/ip",
        "--",
        "link",
        "add",
        "dummy9",
        "type",
        "dummy",
    ]);
    assert!(!o.status.success());
    // A retain set replaces it; a remove set cuts from it.
    let out = bounding(
        &r,
        &["--caps-retain=CAP_NET_ADMIN,sys_chroot"],
        "cat /proc/self/status",
    );
    assert_eq!(caps(&out, "CapBnd"), (1 << 12) | (1 << 18));
    let o = r.run(&[
        "run",
        "--net=host",
        "busybox",
        "--caps-remove=CAP_CHOWN",
        "--exec=/bin/chown",
        "--",
        "nobody",
        "/tmp",
    ]);
    assert!(!o.status.success(), "chown without CAP_CHOWN");
    let e = r.fails(&["run", "busybox", "--caps-retain=CAP_NOPE"]);
    assert!(e.contains("unknown capability \"CAP_NOPE\""), "{e}");
    let e = r.fails(&[
        "run",
        "busybox",
        "--caps-retain=CAP_KILL",
        "--caps-remove=CAP_KILL",
    ]);
    assert!(e.contains("exclude each other"), "{e}");
    // A user's app has none effective; its supplementary groups are its own.
    let out = bounding(
        &r,
        &[
            "--user=65534",
            "--group=65534",
            "--supplementary-gids=10,20",
        ],
        "cat /proc/self/status; id -G",
    );
    assert_eq!(caps(&out, "CapEff"), 0);
    assert!(out.trim_end().ends_with("65534 10 20"), "{out}");
}

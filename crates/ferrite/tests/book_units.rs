//! The book's fleet units that run containers, on three machines, against the cluster's
//! registry (`fixtures/book-units/`): hello (chapter 3), hello-cluster (chapter 4), nginx
//! (chapter 5) and the registry (chapter 6), with only their image names changed — checked
//! line by line against the originals — and the nginx and registry stand-in images built
//! and pushed to the cluster's registry first. Each runs where fleet puts it and does its
//! job (its journal, a page served on port 80, a registry answering on port 5000), and
//! `fleetctl stop` leaves no container. Needs root and the workspace built.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::too_many_lines
)]

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{repo, Cluster};

const MACHINES: [&str; 3] = ["core-01", "core-02", "core-03"];
/// (fixture, the unit's name in the cluster).
const UNITS: [(&str, &str); 4] = [
    ("ch3-hello.service", "hello.service"),
    ("ch4-hello-cluster.service", "hello-cluster.service"),
    ("ch5-nginx.service", "nginx.service"),
    ("ch6-registry.service", "registry.service"),
];

fn fixture(p: &str) -> String {
    std::fs::read_to_string(repo().join("fixtures/book-units").join(p)).unwrap()
}

#[test]
fn adapted_units_differ_from_the_books_only_in_image_names() {
    for (f, _) in UNITS {
        let (orig, adapted) = (fixture(&format!("original/{f}")), fixture(f));
        let (o, a): (Vec<&str>, Vec<&str>) = (orig.lines().collect(), adapted.lines().collect());
        assert_eq!(o.len(), a.len(), "{f}");
        for (ol, al) in o.iter().zip(&a) {
            assert_eq!(al.replace("ferrite-registry:5000/", ""), *ol, "{f}");
        }
    }
}

/// The registry stand-in's root: Debian's docker-registry, its libraries, its config.
fn registry_tar() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bin = Path::new("/usr/bin/docker-registry");
    assert!(
        bin.is_file(),
        "docker-registry is not installed (scripts/install-deps.sh)"
    );
    let put = |src: &Path, dst: &str| {
        let to = root.join(dst.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(std::fs::canonicalize(src).unwrap(), to).unwrap();
    };
    put(bin, "/usr/bin/docker-registry");
    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        if let Some(p) = line.split_whitespace().find(|w| w.starts_with('/')) {
            put(Path::new(p), p);
        }
    }
    put(
        &repo().join("fixtures/book-units/images/registry/config.yml"),
        "/etc/docker/registry/config.yml",
    );
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let tar = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    tar.stdout
}

/// Whose address is `ip`.
fn machine_of(ips: &[String], ip: &str) -> &'static str {
    MACHINES[ips.iter().position(|i| i == ip).unwrap()]
}

#[test]
fn the_books_container_units_run_under_fleet() {
    let mut c = Cluster::new("book");
    c.up_with(3, "fixtures/book-units/cluster-user-data.yaml");
    let status = c.ok(&["status"]);
    let ips: Vec<String> = MACHINES.iter().map(|m| common::ip_of(&status, m)).collect();
    let home = |m: &str| c.machine_dir(m).join("root/home/core");
    // The stand-ins: nginx built in core-01 from the registry's busybox, registry imported.
    std::fs::create_dir_all(home("core-01").join("nginx-image")).unwrap();
    std::fs::write(
        home("core-01").join("nginx-image/Dockerfile"),
        fixture("images/nginx/Dockerfile"),
    )
    .unwrap();
    let (code, out) = c.sh(
        "core-01",
        "docker build -q -t ferrite-registry:5000/nginx:latest /home/core/nginx-image >/dev/null && docker push -q ferrite-registry:5000/nginx:latest 2>&1",
    );
    assert_eq!(code, 0, "{out}");
    let mut import = c
        .cmd(&[
            "ssh",
            "--cluster",
            &c.name,
            "core-01",
            "--",
            "docker import --change 'CMD [\"/usr/bin/docker-registry\", \"serve\", \"/etc/docker/registry/config.yml\"]' --change 'EXPOSE 5000' - ferrite-registry:5000/registry:latest >/dev/null && docker push -q ferrite-registry:5000/registry:latest",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    import
        .stdin
        .take()
        .unwrap()
        .write_all(&registry_tar())
        .unwrap();
    let o = import.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // What the book's Vagrant machines shared: the nginx page, on every machine.
    for m in MACHINES {
        let html = home(m).join("share/nginx/html");
        std::fs::create_dir_all(&html).unwrap();
        std::fs::write(html.join("index.html"), format!("<h1>nginx on {m}</h1>\n")).unwrap();
    }
    for (f, name) in UNITS {
        std::fs::write(home("core-01").join(name), fixture(f)).unwrap();
    }
    let (code, out) = c.sh(
        "core-01",
        "cd /home/core && fleetctl start hello.service hello-cluster.service nginx.service registry.service",
    );
    assert_eq!(code, 0, "{out}");
    let mut units = String::new();
    for _ in 0..120 {
        units = c.sh("core-01", "fleetctl list-units --no-legend").1;
        if units.matches("active\trunning").count() == 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    assert_eq!(units.matches("active\trunning").count(), 4, "{units}");
    let host = |unit: &str| {
        let line = units
            .lines()
            .find(|l| l.starts_with(&format!("{unit}\t")))
            .unwrap_or_else(|| panic!("{unit} not in {units:?}"));
        let ip = line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .split('/')
            .nth(1)
            .unwrap();
        (machine_of(&ips, ip), ip.to_string())
    };
    for (unit, line) in [
        ("hello.service", "Hello World"),
        ("hello-cluster.service", "Hello Cluster"),
    ] {
        let (m, _) = host(unit);
        c.sh_until(m, &format!("fleetctl journal --lines=5 {unit}"), line, 60);
    }
    let (m, ip) = host("nginx.service");
    let page = c.sh_until("core-01", &format!("curl -s http://{ip}/"), "<h1>", 60);
    assert_eq!(page, format!("<h1>nginx on {m}</h1>\n"));
    let (_, ip) = host("registry.service");
    let catalog = c.sh_until(
        "core-01",
        &format!("curl -s http://{ip}:5000/v2/_catalog"),
        "repositories",
        60,
    );
    assert_eq!(catalog.trim(), "{\"repositories\":[]}");
    // Stopped: no container left anywhere.
    let (code, out) = c.sh(
        "core-01",
        "fleetctl stop hello.service hello-cluster.service nginx.service registry.service",
    );
    assert_eq!(code, 0, "{out}");
    for m in MACHINES {
        c.sh_until(m, "docker ps -q | wc -l", "0", 60);
    }
    let left = c.sh("core-01", "fleetctl list-units --no-legend").1;
    assert!(!left.contains("\tactive\t"), "{left}");
    c.destroy_and_check();
}

//! Real Ferrite machines: `ferrite up` boots systemd-nspawn machines from the built image,
//! with the chapter's user-data and with the book's three-machine cluster, and `destroy`
//! leaves nothing behind. Needs root (CI runs as root) and the packages
//! `scripts/install-deps.sh` installs.
//!
//! Each test uses its own state and run directories and a unique cluster name; the image
//! cache is shared (`FERRITE_CACHE_DIR`, default `/var/cache/ferrite`). A guard destroys the
//! cluster even when an assertion fails.
#![allow(
    clippy::too_many_lines,
    reason = "a scenario reads top to bottom, as a user would run it"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{ip_of, repo, Cluster, FERRITE};

/// What a machine going down does to a command run in it (systemd stops every process in
/// its PID namespace, signals them, then continues them): nsenter passes the stop on to
/// itself, and nothing in the machine continues it. `ferrite ssh MACHINE -- CMD` must still
/// end when the command is killed (it hung forever; found in CI's rolling-update test).
fn ssh_ends_when_the_machine_stops_and_kills_its_command(c: &Cluster) {
    let mut ssh = c
        .cmd(&["ssh", "--cluster", &c.name, "core-01", "--", "sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let command = loop {
        use machine_launcher::host::Host as _;
        let host = machine_launcher::host::RealHost;
        let inner: Vec<u32> = host
            .children(ssh.id())
            .into_iter()
            .flat_map(|p| host.children(p))
            .collect();
        if let Some(p) = inner.first() {
            break *p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no command in the machine"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let kill = |sig: &str| {
        Command::new("kill")
            .args([sig, &command.to_string()])
            .status()
            .unwrap();
    };
    kill("-STOP");
    std::thread::sleep(Duration::from_millis(500));
    kill("-KILL");
    let t = Instant::now();
    while ssh.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(15) {
            let _ = ssh.kill();
            panic!("ferrite ssh never ended after its command was stopped and killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cluster's registry: busybox is there at `up`; a machine pulls and runs it, pushes
/// an image of its own; `ferrite image push` adds a `docker save` archive from the host
/// and refuses a truncated one.
fn the_clusters_registry(c: &Cluster) {
    let (code, out) = c.sh(
        "core-01",
        "docker run --rm ferrite-registry:5000/busybox echo hello from the registry 2>/dev/null",
    );
    assert_eq!((code, out.as_str()), (0, "hello from the registry\n"));
    let (code, out) = c.sh(
        "core-01",
        "docker tag ferrite-registry:5000/busybox ferrite-registry:5000/mine:1 && docker push ferrite-registry:5000/mine:1 >/dev/null && docker rmi ferrite-registry:5000/mine:1 >/dev/null && docker pull -q ferrite-registry:5000/mine:1",
    );
    assert_eq!((code, out.trim()), (0, "ferrite-registry:5000/mine:1"));
    let saved = c
        .ferrite(&[
            "ssh",
            "core-01",
            "--",
            "docker save ferrite-registry:5000/busybox",
        ])
        .stdout;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    std::fs::write(&archive, &saved).unwrap();
    let push = |path: &std::path::Path, tag: &str| {
        c.cmd(&[
            "image",
            "push",
            path.to_str().unwrap(),
            "--tag",
            tag,
            "--cluster",
            &c.name,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap()
    };
    let o = push(&archive, "tools/bb:2");
    let pushed = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && pushed.starts_with("tools/bb:2: digest: sha256:"),
        "{pushed}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (code, out) = c.sh(
        "core-01",
        "docker run --rm ferrite-registry:5000/tools/bb:2 echo pushed from the host 2>/dev/null",
    );
    assert_eq!((code, out.as_str()), (0, "pushed from the host\n"));
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &saved[..saved.len() / 3]).unwrap();
    let o = push(&cut, "x:1");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("cut.tar"), "{err}");
}

/// The book's etcd commands, unchanged: etcdctl's v2 commands and the v2 keys API with
/// curl; etcd 3's commands with `ETCDCTL_API=3`, on a store of their own.
fn the_books_etcd_commands(c: &Cluster) {
    let run = |script: &str| c.sh("core-01", script);
    assert_eq!(run("etcdctl set /message hello"), (0, "hello\n".into()));
    assert_eq!(run("etcdctl get /message"), (0, "hello\n".into()));
    let (_, ls) = run("etcdctl ls /");
    assert!(ls.lines().any(|l| l == "/message"), "{ls}");
    let (_, json) = run("curl -sL http://127.0.0.1:2379/v2/keys/message");
    assert!(
        json.starts_with("{\"action\":\"get\",\"node\":{\"key\":\"/message\",\"value\":\"hello\""),
        "{json}"
    );
    let (code, out) = run("etcdctl mk /message again 2>&1");
    assert!(code != 0 && out.contains("Key already exists"), "{out}");
    assert_eq!(run("etcdctl update /message world"), (0, "world\n".into()));
    assert_eq!(
        run("etcdctl set /message again --swap-with-value world"),
        (0, "again\n".into())
    );
    let (code, out) = run("etcdctl set /message x --swap-with-value nope 2>&1");
    assert!(code != 0 && out.contains("Compare failed"), "{out}");
    assert_eq!(run("etcdctl mkdir /dir").0, 0);
    assert_eq!(run("etcdctl set /dir/a 1"), (0, "1\n".into()));
    let (_, ls) = run("etcdctl ls --recursive /");
    assert!(ls.lines().any(|l| l == "/dir/a"), "{ls}");
    assert_eq!(run("etcdctl rm /dir/a").0, 0);
    assert_eq!(run("etcdctl rmdir /dir").0, 0);
    assert_eq!(run("etcdctl set /ttl v --ttl 100"), (0, "v\n".into()));
    let (_, json) = run("curl -sL http://127.0.0.1:2379/v2/keys/ttl");
    assert!(json.contains("\"ttl\":"), "{json}");
    let (_, watched) =
        run("(sleep 2; etcdctl set /w changed >/dev/null) & timeout 20 etcdctl watch /w; wait");
    assert_eq!(watched, "changed\n");
    // CoreOS's documented form: a directory, --recursive.
    let (_, executed) = run(
        "(sleep 2; etcdctl set /svc/one seen >/dev/null) & \
         timeout 6 etcdctl exec-watch --recursive /svc -- sh -c 'echo got $ETCD_WATCH_KEY $ETCD_WATCH_VALUE'; wait",
    );
    assert!(executed.contains("got /svc/one seen"), "{executed}");
    let (_, health) = run("etcdctl cluster-health");
    assert!(
        health.contains("is healthy") && health.ends_with("cluster is healthy\n"),
        "{health}"
    );
    let (_, members) = run("etcdctl member list");
    assert!(members.contains("name=core-01"), "{members}");
    // etcd 3's commands, and its keys apart from the book's.
    assert_eq!(
        run("ETCDCTL_API=3 etcdctl put /v3only x"),
        (0, "OK\n".into())
    );
    let (code, out) = run("etcdctl get /v3only 2>&1");
    assert!(code != 0 && out.contains("Key not found"), "{out}");
}

#[test]
fn chapter_user_data_on_one_machine() {
    let mut c = Cluster::new("one");
    let ud = repo().join("examples/user-data");
    let start = Instant::now();
    c.ok(&["up", "--user-data", ud.to_str().unwrap()]);
    eprintln!(
        "ferrite up (1 machine): {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let status = c.ok(&["status"]);
    assert!(
        status.contains("core-01") && status.contains("running"),
        "{status}"
    );
    let ip = ip_of(&status, "core-01");

    // The chapter's checks.
    let (_, etcd2) = c.sh("core-01", "systemctl status etcd2 --no-pager");
    assert!(etcd2.contains("Active: active (running)"), "{etcd2}");
    // fleet: active, and it knows this machine by its public IP; nothing failed at boot.
    let (_, fleet) = c.sh("core-01", "systemctl status fleet --no-pager");
    assert!(fleet.contains("Active: active (running)"), "{fleet}");
    let machines = c.sh_until("core-01", "fleetctl list-machines", &ip, 30);
    assert!(
        machines.starts_with("MACHINE\t\tIP\t\tMETADATA\n"),
        "{machines:?}"
    );
    c.sh_until("core-01", "systemctl is-system-running", "running", 30);
    c.sh_until(
        "core-01",
        &format!("ETCDCTL_API=3 etcdctl --endpoints http://{ip}:2379 endpoint health 2>&1"),
        "is healthy",
        30,
    );
    the_books_etcd_commands(&c);
    the_clusters_registry(&c);
    ssh_ends_when_the_machine_stops_and_kills_its_command(&c);
    let (code, docker) = c.sh("core-01", "docker version --format '{{.Server.Version}}'");
    assert_eq!(code, 0, "docker version: {docker}");
    assert!(!docker.trim().is_empty());
    let (_, sock) = c.sh("core-01", "systemctl is-active docker-tcp.socket; ss -ltnH");
    assert!(sock.starts_with("active"), "{sock}");
    assert!(sock.contains(":2375"), "{sock}");
    // update_engine runs (the launcher hands the machine its disk image), core may ask it
    // (its bus policy), and the cluster's update service answers where update.conf points.
    c.sh_until(
        "core-01",
        "update_engine_client -status",
        "CURRENT_OP=UPDATE_STATUS_IDLE\n",
        30,
    );
    let (code, ue) = c.sh(
        "core-01",
        "cat /run/ferrite/slots; . /etc/coreos/update.conf; echo $SERVER; \
         curl -s --data '<request protocol=\"3.0\"><app appid=\"{e96281a6-d1af-4bde-9a0a-97b76e56dc57}\" version=\"0.0.1\" track=\"alpha\" machineid=\"m\"><updatecheck/></app></request>' $SERVER",
    );
    assert_eq!(code, 0, "{ue}");
    assert!(
        ue.contains("DISK=/run/ferrite/disk.img\nACTIVE=USR-A\n"),
        "{ue}"
    );
    let gw = ip
        .rsplit_once('.')
        .map(|(net, _)| format!("{net}.1"))
        .unwrap();
    assert!(
        ue.contains(&format!("\nhttp://{gw}:8098/v1/update/\n")),
        "{ue}"
    );
    assert!(ue.contains("<updatecheck status=\"noupdate\">"), "{ue}");
    let (_, key) = c.sh(
        "core-01",
        "head -1 /usr/share/update_engine/update-payload-key.pub.pem",
    );
    assert_eq!(key.trim(), "-----BEGIN PUBLIC KEY-----");

    // The user-data was applied by coreos-cloudinit at boot.
    let (_, dropin) = c.sh(
        "core-01",
        "cat /run/systemd/system/etcd2.service.d/20-cloudinit.conf",
    );
    assert!(
        dropin.contains(&format!("ETCD_ADVERTISE_CLIENT_URLS=http://{ip}:2379")),
        "{dropin}"
    );
    let (_, env) = c.sh("core-01", "cat /etc/environment");
    assert!(env.contains(&format!("COREOS_PUBLIC_IPV4={ip}")), "{env}");

    // docker run of a locally imported image.
    common::import_busybox(&c, "core-01", &[]);
    let (code, hello) = c.sh(
        "core-01",
        "docker run --rm --pull=never busybox:local echo hello from docker",
    );
    assert_eq!((code, hello.trim()), (0, "hello from docker"));

    // ssh: exit status, and the login banner and prompt.
    assert_eq!(
        c.ferrite(&["ssh", "core-01", "--", "false"]).status.code(),
        Some(1)
    );
    assert_eq!(c.sh("core-01", "exit 7").0, 7);
    // A command line, as `ssh host CMD` and `vagrant ssh -c CMD` run it.
    let o = c.ferrite(&["ssh", "core-01", "--", "echo a; echo", "b"]);
    assert_eq!(
        (o.status.code(), String::from_utf8_lossy(&o.stdout).as_ref()),
        (Some(0), "a\nb\n")
    );
    let shell = format!(
        "FERRITE_STATE_DIR={} FERRITE_RUN_DIR={} {FERRITE} ssh --cluster {} core-01",
        c.state.path().display(),
        c.run.path().display(),
        c.name
    );
    let mut tty = Command::new("script")
        .args(["-qc", &shell, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = tty.stdin.take().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        stdin.write_all(b"exit\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    let login = String::from_utf8_lossy(&tty.wait_with_output().unwrap().stdout).into_owned();
    assert!(login.contains("Ferrite alpha ("), "banner: {login:?}");
    assert!(
        login.contains("core@core-01") && login.contains(" ~ $"),
        "prompt: {login:?}"
    );

    // The machine runs the image's /usr, read-only, from USR-A.
    let (_, usr) = c.sh("core-01", "findmnt -no OPTIONS /usr; cat /usr/share/coreos/update.conf; test -e /usr/bin/apt || echo no-apt");
    assert!(usr.starts_with("ro"), "{usr}");
    assert!(
        usr.contains("GROUP=alpha") && usr.contains("no-apt"),
        "{usr}"
    );
    assert!(status.contains("USR-A"), "{status}");

    // halt, then up again: state on ROOT survives.
    c.sh("core-01", "echo kept > /home/core/note");
    c.ok(&["halt", "core-01"]);
    assert!(c.ok(&["status"]).contains("stopped"));
    assert!(
        !c.machine_dir("core-01").join("root/usr/bin").exists(),
        "ROOT unmounted after halt"
    );
    c.ok(&["up", "--user-data", ud.to_str().unwrap()]);
    assert_eq!(c.sh("core-01", "cat /home/core/note").1.trim(), "kept");

    c.destroy_and_check();
}

#[test]
fn book_cluster_of_three() {
    let mut c = Cluster::new("three");
    let ud = repo().join("fixtures/cloud-config/book-ch4-user-data.yaml");
    let start = Instant::now();
    c.ok(&[
        "up",
        "--instances",
        "3",
        "--channel",
        "beta",
        "--memory",
        "512",
        "--user-data",
        ud.to_str().unwrap(),
    ]);
    eprintln!(
        "ferrite up (3 machines): {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // Thin disks: each machine's disk holds its ROOT, not the image's USR (read from the
    // image while the machine never wrote it).
    for m in ["core-01", "core-02", "core-03"] {
        let meta = std::fs::metadata(c.machine_dir(m).join("disk.img")).unwrap();
        let used = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
        eprintln!("{m}: disk {} MiB allocated", used >> 20);
        assert!(used < 100 << 20, "{m}'s disk takes {} MiB", used >> 20);
    }
    // The channel is the image's: update.conf and os-release say beta.
    let (_, release) = c.sh(
        "core-02",
        "cat /usr/share/coreos/update.conf /usr/lib/os-release",
    );
    assert!(
        release.contains("GROUP=beta") && release.contains("PRETTY_NAME=\"Ferrite beta ("),
        "{release}"
    );
    // The memory setting is each machine's cgroup limit.
    let json = c.cluster_json();
    let mem = json["machines"][0]["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| PathBuf::from(v.as_str().unwrap()))
        .find(|p| p.to_string_lossy().contains("/memory/"))
        .unwrap();
    let limit = std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), (512u64 << 20).to_string());
    let status = c.ok(&["status"]);
    let ips: Vec<String> = ["core-01", "core-02", "core-03"]
        .iter()
        .map(|m| ip_of(&status, m))
        .collect();

    // The discovery URL was replaced by the cluster's own service.
    let (_, dropin) = c.sh(
        "core-01",
        "cat /run/systemd/system/etcd2.service.d/20-cloudinit.conf",
    );
    assert!(dropin.contains("ETCD_DISCOVERY=http://172.20."), "{dropin}");
    assert!(!dropin.contains("discovery.etcd.io"), "{dropin}");

    for m in ["core-01", "core-02", "core-03"] {
        let health = c.sh_until(
            m,
            "ETCDCTL_API=3 etcdctl endpoint health --cluster 2>&1",
            "is healthy",
            60,
        );
        let healthy = c.sh_until(
            m,
            "ETCDCTL_API=3 etcdctl endpoint health --cluster 2>&1 | grep -c 'is healthy'",
            "3",
            60,
        );
        assert_eq!(healthy.trim(), "3", "{health}");
    }
    let (_, members) = c.sh("core-01", "etcdctl member list");
    assert_eq!(members.lines().count(), 3, "{members}");
    for ip in &ips {
        assert!(members.contains(&format!("http://{ip}:2379")), "{members}");
    }

    // docker-tcp.socket on 2375 answers from another machine.
    let script = format!(
        "exec 3<>/dev/tcp/{}/2375 && printf 'GET /version HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
        ips[1]
    );
    let (_, api) = c.sh("core-01", &format!("bash -c \"{script}\""));
    assert!(api.contains("Api-Version"), "{api}");

    // fleet: three machines with the config's metadata; a unit started with fleetctl runs.
    let machines = c.sh_until(
        "core-01",
        "fleetctl list-machines | grep -c cluster=vagrant",
        "3",
        30,
    );
    assert_eq!(machines.trim(), "3");
    let hello = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/bash -c \"while true; do echo \\\"Hello, world\\\"; sleep 1; done\"\n";
    // Written from the host: a shell's printf would interpret the backslashes.
    std::fs::write(
        c.machine_dir("core-01")
            .join("root/home/core/hello.service"),
        hello,
    )
    .unwrap();
    let (code, started) = c.sh("core-01", "fleetctl start /home/core/hello.service");
    assert_eq!(code, 0, "{started}");
    assert!(
        started.contains("Unit hello.service launched on "),
        "{started}"
    );
    let units = c.sh_until(
        "core-01",
        "fleetctl list-units --no-legend",
        "active\trunning",
        30,
    );
    assert!(units.starts_with("hello.service\t"), "{units:?}");
    let files = c.sh("core-01", "fleetctl list-unit-files --no-legend").1;
    assert!(
        files.starts_with("hello.service\te55c0ae\tlaunched\tlaunched\t"),
        "{files:?}"
    );
    // fleetctl spoke fleetd's API on the socket; the etcd driver sees the same cluster.
    let (_, sock) = c.sh("core-01", "systemctl is-active fleet.socket");
    assert_eq!(sock.trim(), "active");
    let etcd_view = c
        .sh(
            "core-01",
            "fleetctl --driver=etcd list-unit-files --no-legend",
        )
        .1;
    assert_eq!(etcd_view, files);
    // Its machine loses power: hello.service runs elsewhere, nothing else moves.
    let host_ip = units
        .split('\t')
        .nth(1)
        .and_then(|m| m.split('/').nth(1))
        .unwrap()
        .to_string();
    let victim = ["core-01", "core-02", "core-03"][ips.iter().position(|i| *i == host_ip).unwrap()];
    let witness = ["core-01", "core-02", "core-03"]
        .into_iter()
        .find(|m| *m != victim)
        .unwrap();
    // status, journal and ssh run on the unit's machine: directly there; from another
    // machine through ssh, which the image does not ship, so that fails plainly.
    let (code, status) = c.sh(victim, "fleetctl status hello.service");
    assert_eq!(code, 0, "{status}");
    assert!(status.contains("Active: active (running)"), "{status}");
    let journal = c.sh_until(
        victim,
        "fleetctl journal --lines=3 hello.service",
        "Hello, world",
        30,
    );
    assert!(journal.contains("Hello, world"), "{journal}");
    let (code, echoed) = c.sh(victim, "fleetctl ssh hello.service echo foo");
    assert_eq!((code, echoed.trim()), (0, "foo"));
    let (code, _) = c.sh(witness, "fleetctl status hello.service");
    assert_eq!(code, 255);
    let (code, missing) = c.sh(witness, "fleetctl status nope.service 2>&1");
    assert_eq!(
        (code, missing.trim()),
        (1, "Unit nope.service does not exist.")
    );
    let t = Instant::now();
    c.ok(&["halt", "--force", victim]);
    let mut moved = String::new();
    for _ in 0..120 {
        moved = c.sh(witness, "fleetctl list-units --no-legend").1;
        if moved.contains("active\trunning") && !moved.contains(&host_ip) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        moved.contains("active\trunning") && !moved.contains(&host_ip),
        "hello.service did not move off {host_ip}: {moved}"
    );
    eprintln!(
        "fleet failover after halt --force: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // The `vagrant up` habit: no flags. The machine comes back with the cluster's own
    // user-data (not the one-machine default): its fleet metadata, its etcd membership.
    c.ok(&["up"]);
    let machines = c.sh_until(
        witness,
        "fleetctl list-machines | grep -c cluster=vagrant",
        "3",
        60,
    );
    assert_eq!(machines.trim(), "3");
    let (_, members) = c.sh(witness, "etcdctl member list");
    assert_eq!(members.lines().count(), 3, "{members}");

    // Cut the power of one machine: the other two keep serving.
    let t = Instant::now();
    c.ok(&["halt", "--force", "core-02"]);
    eprintln!("halt --force: {:.2} s", t.elapsed().as_secs_f64());
    assert!(c
        .ok(&["status"])
        .lines()
        .any(|l| l.starts_with("core-02") && l.contains("stopped")));
    c.sh_until(
        "core-01",
        "ETCDCTL_API=3 etcdctl --command-timeout=2s put after-halt yes 2>&1",
        "OK",
        30,
    );
    c.sh_until(
        "core-03",
        "ETCDCTL_API=3 etcdctl --command-timeout=2s get after-halt 2>&1",
        "yes",
        30,
    );

    c.destroy_and_check();
}

#[test]
fn destroy_cleans_up_after_a_launcher_crash() {
    let mut c = Cluster::new("crash");
    let ud = repo().join("examples/user-data");
    let mut up = c
        .cmd(&[
            "up",
            "--cluster",
            &c.name,
            "--instances",
            "2",
            "--user-data",
            ud.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the launcher part-way through bringing the machines up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let booting = std::fs::read_dir(
            c.state
                .path()
                .join("clusters")
                .join(&c.name)
                .join("machines"),
        )
        .map(|d| d.count() >= 1)
        .unwrap_or(false);
        if booting {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(700));
    up.kill().unwrap();
    up.wait().unwrap();
    c.destroy_and_check();
}

#[test]
fn invalid_user_data_is_refused_before_anything_is_created() {
    let c = Cluster::new("bad");
    let ud = c.state.path().join("bad-user-data");
    std::fs::write(
        &ud,
        "#cloud-config\ncoreos:\n  units:\n    - name: etcd2.service\n      command: begin\n",
    )
    .unwrap();
    let o = c.ferrite(&["up", "--user-data", ud.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 5: error: invalid value begin"), "{err}");
    assert!(
        !c.state.path().join("clusters").join(&c.name).exists(),
        "nothing was created"
    );
    // Commands on a cluster that does not exist say so and leave nothing behind.
    for args in [
        &["halt", "core-01"][..],
        &["reload", "core-01"],
        &["destroy"],
    ] {
        let o = c.ferrite(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&c.name), "{args:?}: {err}");
        assert!(
            !c.state.path().join("clusters").join(&c.name).exists(),
            "{args:?} left the cluster's directory"
        );
    }
}

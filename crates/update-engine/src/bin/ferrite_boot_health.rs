//! `ferrite-boot-health`: the health gate (`update_engine::health`), run once a boot by
//! `ferrite-boot-health.service` after `boot-complete.target`. A slot on trial is marked
//! good once the machine is healthy; one that is not healthy by the deadline makes this
//! exit 1, and the unit's `FailureAction=reboot` boots the previous `/usr`.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use update_engine::conf::{Config, Paths};
use update_engine::health::{self, Action, Probe, UnitState};

/// The machine, asked through `systemctl` and the services' own endpoints.
struct Machine;

fn systemctl_show(unit: &str, props: &[&str]) -> Vec<(String, String)> {
    let mut cmd = host_command::command("systemctl");
    cmd.arg("show");
    for p in props {
        cmd.arg("-p").arg(p);
    }
    cmd.arg(unit);
    host_command::run(&mut cmd)
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// One `GET` over a Unix socket; the status code.
fn unix_get(socket: &Path, path: &str) -> Result<u16, String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let limit = Some(Duration::from_secs(5));
    let _ = s.set_read_timeout(limit);
    let _ = s.set_write_timeout(limit);
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut head = [0u8; 64];
    let n = s
        .read(&mut head)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    String::from_utf8_lossy(&head[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{}: no HTTP status in the reply", socket.display()))
}

/// The first client URL etcd listens on, as an address on this machine.
fn etcd_url() -> String {
    let env = systemctl_show("etcd2.service", &["Environment"]);
    let urls = env
        .iter()
        .flat_map(|(_, v)| v.split_whitespace())
        .find_map(|kv| kv.strip_prefix("ETCD_LISTEN_CLIENT_URLS="))
        .unwrap_or("http://127.0.0.1:2379");
    let first = urls
        .split(',')
        .find(|u| u.starts_with("http://"))
        .unwrap_or("http://127.0.0.1:2379");
    first
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]")
}

impl Probe for Machine {
    fn unit(&self, unit: &str) -> UnitState {
        let props = systemctl_show(unit, &["LoadState", "ActiveState"]);
        let get = |k: &str| {
            props
                .iter()
                .find(|(p, _)| p == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        UnitState {
            load: get("LoadState"),
            active: get("ActiveState"),
        }
    }

    fn answers(&self, unit: &str) -> Result<(), String> {
        let expect_ok = |what: String, code: u16| {
            if code == 200 {
                Ok(())
            } else {
                Err(format!("{what} answered {code}"))
            }
        };
        match unit {
            "etcd2.service" => {
                let url = format!("{}/health", etcd_url());
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(5))
                    .build();
                let body = agent
                    .get(&url)
                    .call()
                    .map_err(|e| format!("{url}: {e}"))?
                    .into_string()
                    .map_err(|e| format!("{url}: {e}"))?;
                if body.replace(' ', "").contains("\"health\":\"true\"") {
                    Ok(())
                } else {
                    Err(format!("{url}: {}", body.trim()))
                }
            }
            "fleet.service" => {
                let sock = Path::new("/var/run/fleet.sock");
                expect_ok(
                    format!("{}'s API", sock.display()),
                    unix_get(sock, "/fleet/v1/machines")?,
                )
            }
            "docker.service" => {
                let sock = Path::new("/var/run/docker.sock");
                expect_ok(format!("{}", sock.display()), unix_get(sock, "/_ping")?)
            }
            _ => Ok(()),
        }
    }
}

fn main() -> ExitCode {
    let root = Path::new("/");
    let (disk, label) = match health::booted(root) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ferrite-boot-health: cannot tell which /usr booted: {e}");
            return ExitCode::SUCCESS;
        }
    };
    let standing = match health::standing(&disk, &label) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferrite-boot-health: {}: {e}", disk.display());
            return ExitCode::SUCCESS;
        }
    };
    let paths = Paths::under(root);
    let limit = health::deadline(&Config::load(root));
    let start = Instant::now();
    let mut last_waiting = String::new();
    loop {
        let checks = health::checks(&Machine);
        let action = health::decide(
            standing,
            paths.marker.exists(),
            &checks,
            start.elapsed() > limit,
        );
        let problems: Vec<String> = checks
            .iter()
            .filter_map(|c| Some(format!("{} {}", c.name, c.problem.as_ref()?)))
            .collect();
        match action {
            Action::Leave => {
                if paths.marker.exists() {
                    eprintln!("{label}: a reboot into an update is pending; not marking it");
                } else {
                    eprintln!("{label} is marked good already");
                }
                return ExitCode::SUCCESS;
            }
            Action::MarkGood => {
                let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
                if let Err(e) = health::mark_good(&disk, &label) {
                    eprintln!("ferrite-boot-health: marking {label} good: {e}");
                    return ExitCode::FAILURE;
                }
                eprintln!(
                    "{label} is healthy ({}) after {:.1} s: marked good",
                    names.join(", "),
                    start.elapsed().as_secs_f64()
                );
                return ExitCode::SUCCESS;
            }
            Action::Wait => {
                let now = problems.join("; ");
                if now != last_waiting {
                    eprintln!("waiting: {now}");
                    last_waiting = now;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
            Action::Fail => {
                eprintln!(
                    "{label} failed its health check after {:.1} s: {}; rebooting into the previous /usr",
                    start.elapsed().as_secs_f64(),
                    problems.join("; ")
                );
                return ExitCode::FAILURE;
            }
        }
    }
}

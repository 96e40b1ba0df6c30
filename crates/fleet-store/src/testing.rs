//! Test support (feature `test-support`): a real etcd on free loopback ports, for the
//! store's own tests, the TLS test and fleetd's simulated-cluster benchmark. Debian's
//! `etcd` must be installed (`scripts/install-deps.sh`).

#![allow(clippy::disallowed_methods)] // test support, like the tests that use it

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{EtcdStore, EtcdTls, KvStore};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One etcd member on 127.0.0.1, stopped (by its PID) and its data removed when dropped.
#[derive(Debug)]
pub struct LocalEtcd {
    child: Child,
    /// Its client URL.
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl LocalEtcd {
    /// Starts etcd with its data under `parent` (a temporary directory there) and
    /// clients served on `scheme` (`http` or `https`), plus `extra` arguments.
    pub fn start(parent: &Path, scheme: &str, extra: &[String]) -> std::io::Result<Self> {
        let (client, peer) = (free_port()?, free_port()?);
        let initial = format!("local=http://127.0.0.1:{peer}");
        Self::member(parent, "local", scheme, (client, peer), &initial, extra)
    }

    /// One member named `name`, clients on `scheme` at `ports.0`, peers at `ports.1`, in
    /// the cluster `initial` (etcd's `--initial-cluster`).
    fn member(
        parent: &Path,
        name: &str,
        scheme: &str,
        ports: (u16, u16),
        initial: &str,
        extra: &[String],
    ) -> std::io::Result<Self> {
        let dir = tempfile::tempdir_in(parent)?;
        let endpoint = format!("{scheme}://127.0.0.1:{}", ports.0);
        let peer = format!("http://127.0.0.1:{}", ports.1);
        let child = Command::new("etcd")
            .args(["--name", name, "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", initial])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self {
            child,
            endpoint,
            _dir: dir,
        })
    }

    /// A store on it once it answers (at most `tries` × 100 ms).
    pub async fn store(&self, timeout: Duration, tls: &EtcdTls, tries: u32) -> Option<EtcdStore> {
        for _ in 0..tries {
            let endpoints = std::slice::from_ref(&self.endpoint);
            if let Ok(s) = EtcdStore::connect_tls(endpoints, timeout, tls).await {
                if s.get("/probe").await.is_ok() {
                    return Some(s);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

/// A cluster of etcd members on 127.0.0.1, each stopped by its PID when dropped (or
/// earlier, by [`LocalCluster::stop`]).
#[derive(Debug)]
pub struct LocalCluster {
    /// The members; `None` once stopped.
    pub members: Vec<Option<LocalEtcd>>,
}

impl LocalCluster {
    /// Starts `n` members with their data under `parent`.
    pub fn start(parent: &Path, n: usize) -> std::io::Result<Self> {
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<std::io::Result<_>>()?;
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let new = ["--initial-cluster-state".to_string(), "new".to_string()];
        let mut members = Vec::new();
        for (i, ports) in ports.iter().enumerate() {
            let name = format!("m{i}");
            members.push(Some(LocalEtcd::member(
                parent, &name, "http", *ports, &initial, &new,
            )?));
        }
        Ok(Self { members })
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> Option<String> {
        self.members.get(i)?.as_ref().map(|m| m.endpoint.clone())
    }

    /// The PID of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members.get(i)?.as_ref().map(|m| m.child.id())
    }

    /// Stops member `i` with SIGKILL (by its PID).
    pub fn stop(&mut self, i: usize) {
        if let Some(m) = self.members.get_mut(i) {
            m.take();
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

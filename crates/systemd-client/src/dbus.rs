//! The systemd manager over D-Bus.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use zbus::blocking::{Connection, Proxy};
use zbus::zvariant::{OwnedObjectPath, Value};

use crate::{Error, JobKind, Systemd};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How many job requests `enqueue_many` keeps outstanding at once.
pub const IN_FLIGHT: usize = 32;

/// systemd's manager on a D-Bus connection.
#[derive(Debug)]
pub struct DbusSystemd {
    conn: Connection,
    /// Job results, fed by one `JobRemoved` subscription for the connection's lifetime.
    jobs: Option<JobWatcher>,
    /// How long to wait for a job to finish before reporting `timeout`.
    pub job_timeout: Duration,
}

/// Every `JobRemoved` signal of the connection, forwarded by one thread.
#[derive(Debug)]
struct JobWatcher {
    rx: mpsc::Receiver<(OwnedObjectPath, String)>,
    /// Results that arrived before their job was asked for (bounded).
    early: HashMap<OwnedObjectPath, String>,
}

const EARLY_RESULTS_MAX: usize = 4096;

impl DbusSystemd {
    /// Connects to the system bus.
    pub fn system() -> Result<Self, Error> {
        let conn = Connection::system().map_err(|source| Error::Connect {
            address: "system bus".into(),
            source: Box::new(source),
        })?;
        Ok(Self::on(conn))
    }

    /// Connects to the bus at `address`, e.g. `unix:path=/proc/42/root/run/dbus/system_bus_socket`.
    pub fn at(address: &str) -> Result<Self, Error> {
        let connect = || -> zbus::Result<Connection> {
            zbus::blocking::connection::Builder::address(address)?.build()
        };
        let conn = connect().map_err(|source| Error::Connect {
            address: address.to_string(),
            source: Box::new(source),
        })?;
        Ok(Self::on(conn))
    }

    fn on(conn: Connection) -> Self {
        Self {
            conn,
            jobs: None,
            job_timeout: Duration::from_secs(300),
        }
    }

    fn manager(&self, call: &'static str, target: &str) -> Result<Proxy<'static>, Error> {
        let build = || -> zbus::Result<Proxy<'static>> {
            zbus::blocking::proxy::Builder::<Proxy<'static>>::new(&self.conn)
                .destination(DEST)?
                .path(PATH)?
                .interface(MANAGER)?
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
        };
        build().map_err(|source| Error::Call {
            call,
            target: target.to_string(),
            source: Box::new(source),
        })
    }

    /// Subscribes to the manager's signals and starts forwarding `JobRemoved`, once.
    fn watcher(&mut self, call: &'static str, unit: &str) -> Result<&mut JobWatcher, Error> {
        if self.jobs.is_none() {
            let fail = |source| Error::Call {
                call,
                target: unit.to_string(),
                source: Box::new(source),
            };
            let proxy = self.manager(call, unit)?;
            let signals = proxy.receive_signal("JobRemoved").map_err(fail)?;
            proxy.call_method("Subscribe", &()).map_err(fail)?;
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for msg in signals {
                    let Ok((_id, path, _unit, result)) =
                        msg.body()
                            .deserialize::<(u32, OwnedObjectPath, String, String)>()
                    else {
                        continue;
                    };
                    if tx.send((path, result)).is_err() {
                        return;
                    }
                }
            });
            self.jobs = Some(JobWatcher {
                rx,
                early: HashMap::new(),
            });
        }
        self.jobs.as_mut().ok_or_else(|| Error::Call {
            call,
            target: unit.to_string(),
            source: Box::new(zbus::Error::Failure("no job watcher".into())),
        })
    }

    /// Queues a job with `enqueue` and waits for its `JobRemoved` signal.
    fn wait_job(
        &mut self,
        call: &'static str,
        unit: &str,
        enqueue: impl FnOnce(&Proxy<'static>) -> zbus::Result<OwnedObjectPath>,
    ) -> Result<String, Error> {
        let timeout = self.job_timeout;
        self.watcher(call, unit)?;
        let proxy = self.manager(call, unit)?;
        let job = enqueue(&proxy).map_err(|source| Error::Call {
            call,
            target: unit.to_string(),
            source: Box::new(source),
        })?;
        let watcher = self.watcher(call, unit)?;
        let deadline = Instant::now() + timeout;
        let result = loop {
            if let Some(r) = watcher.early.remove(&job) {
                break r;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match watcher.rx.recv_timeout(left) {
                Ok((path, result)) if path == job => break result,
                Ok((path, result)) => {
                    if watcher.early.len() >= EARLY_RESULTS_MAX {
                        watcher.early.clear();
                    }
                    watcher.early.insert(path, result);
                }
                Err(_) => break "timeout".to_string(),
            }
        };
        tracing::debug!(unit, job = %job.as_str(), result, "job finished");
        Ok(result)
    }
}

/// A unit's state as `ListUnitsByNames` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStatus {
    /// The unit name.
    pub name: String,
    /// LoadState (`loaded`, `not-found`, …).
    pub load: String,
    /// ActiveState (`active`, `inactive`, `failed`, …).
    pub active: String,
    /// SubState (`running`, `dead`, …).
    pub sub: String,
}

impl DbusSystemd {
    fn call_unit(
        &self,
        method: &'static str,
        target: &str,
        body: &(impl serde::Serialize + zbus::zvariant::DynamicType),
    ) -> Result<(), Error> {
        let proxy = self.manager(method, target)?;
        proxy
            .call_method(method, body)
            .map(drop)
            .map_err(|source| Error::Call {
                call: method,
                target: target.to_string(),
                source: Box::new(source),
            })
    }

    /// `LinkUnitFiles(paths, runtime, force)`: links unit files from outside the search path.
    pub fn link_unit_files(
        &mut self,
        paths: &[String],
        runtime: bool,
        force: bool,
    ) -> Result<(), Error> {
        self.call_unit("LinkUnitFiles", &paths.join(" "), &(paths, runtime, force))
    }

    /// `DisableUnitFiles(names, runtime)`.
    pub fn disable_unit_files(&mut self, names: &[String], runtime: bool) -> Result<(), Error> {
        self.call_unit("DisableUnitFiles", &names.join(" "), &(names, runtime))
    }

    /// `ResetFailedUnit(name)`; a unit systemd does not know is not an error.
    pub fn reset_failed(&mut self, name: &str) -> Result<(), Error> {
        match self.call_unit("ResetFailedUnit", name, &(name,)) {
            Err(Error::Call { source, .. }) if source.to_string().contains("NoSuchUnit") => Ok(()),
            other => other,
        }
    }

    /// Queues a job without waiting for it (fleet's asynchronous start and stop).
    pub fn enqueue(&mut self, kind: JobKind, unit: &str) -> Result<(), Error> {
        self.call_unit(kind.method(), unit, &(unit, "replace"))
    }

    /// Queues a job for each unit without waiting for them, with up to [`IN_FLIGHT`]
    /// requests outstanding on the connection: systemd answers them back to back instead
    /// of one round trip at a time. Gives each unit's result, in order.
    pub fn enqueue_many(&mut self, kind: JobKind, units: &[String]) -> Vec<Result<(), Error>> {
        use futures_util::stream::{self, StreamExt as _};
        let conn = self.conn.inner().clone();
        let method = kind.method();
        zbus::block_on(
            stream::iter(units.iter().cloned())
                .map(|unit| {
                    let conn = conn.clone();
                    async move {
                        conn.call_method(
                            Some(DEST),
                            PATH,
                            Some(MANAGER),
                            method,
                            &(&unit, "replace"),
                        )
                        .await
                        .map(drop)
                        .map_err(|source| Error::Call {
                            call: method,
                            target: unit,
                            source: Box::new(source),
                        })
                    }
                })
                .buffered(IN_FLIGHT)
                .collect(),
        )
    }

    /// The states of the named units (`ListUnitsByNames`; unknown units come back
    /// `not-found`).
    pub fn unit_statuses(&mut self, names: &[String]) -> Result<Vec<UnitStatus>, Error> {
        type Row = (
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        );
        let target = names.join(" ");
        let proxy = self.manager("ListUnitsByNames", &target)?;
        let rows: Vec<Row> = proxy
            .call("ListUnitsByNames", &(names,))
            .map_err(|source| Error::Call {
                call: "ListUnitsByNames",
                target,
                source: Box::new(source),
            })?;
        Ok(rows
            .into_iter()
            .map(|r| UnitStatus {
                name: r.0,
                load: r.2,
                active: r.3,
                sub: r.4,
            })
            .collect())
    }
}

impl Systemd for DbusSystemd {
    fn enable_unit_files(
        &mut self,
        names: &[String],
        runtime: bool,
        force: bool,
    ) -> Result<(), Error> {
        let target = names.join(" ");
        let proxy = self.manager("EnableUnitFiles", &target)?;
        proxy
            .call_method("EnableUnitFiles", &(names, runtime, force))
            .map(drop)
            .map_err(|source| Error::Call {
                call: "EnableUnitFiles",
                target,
                source: Box::new(source),
            })
    }

    fn reload(&mut self) -> Result<(), Error> {
        let proxy = self.manager("Reload", "")?;
        proxy
            .call_method("Reload", &())
            .map(drop)
            .map_err(|source| Error::Call {
                call: "Reload",
                target: String::new(),
                source: Box::new(source),
            })
    }

    fn run_job(&mut self, kind: JobKind, unit: &str, mode: &str) -> Result<String, Error> {
        self.wait_job(kind.method(), unit, |p| {
            p.call::<_, _, OwnedObjectPath>(kind.method(), &(unit, mode))
        })
    }

    fn start_transient_service(
        &mut self,
        name: &str,
        description: &str,
        argv: &[String],
    ) -> Result<String, Error> {
        let path = argv.first().cloned().unwrap_or_default();
        let exec: Vec<(String, Vec<String>, bool)> = vec![(path, argv.to_vec(), false)];
        let props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(description)),
            ("ExecStart", Value::from(exec)),
        ];
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        self.wait_job("StartTransientUnit", name, |p| {
            p.call::<_, _, OwnedObjectPath>("StartTransientUnit", &(name, "replace", props, aux))
        })
    }
}

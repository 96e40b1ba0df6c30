//! The systemd manager over D-Bus: [`DbusManager`] on the caller's tokio runtime, and
//! [`DbusSystemd`], the same calls for synchronous callers on a runtime of its own.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use zbus::proxy::SignalStream;
use zbus::zvariant::{DynamicType, OwnedObjectPath, Value};
use zbus::{Connection, Proxy};

use crate::{Error, JobKind, Systemd};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How many job requests `enqueue_many` keeps outstanding at once.
pub const IN_FLIGHT: usize = 32;

/// Results that arrived before their job was asked for, kept at most.
const EARLY_RESULTS_MAX: usize = 4096;

/// systemd's manager on a D-Bus connection, driven by the caller's tokio runtime (zbus's
/// tokio integration: no executor or thread of its own).
pub struct DbusManager {
    conn: Connection,
    proxy: Proxy<'static>,
    /// `JobRemoved` signals, subscribed to on the first job waited for.
    jobs: Option<SignalStream<'static>>,
    /// Job results that arrived before their job was asked for (bounded).
    early: HashMap<OwnedObjectPath, String>,
    /// How long to wait for a job to finish before reporting `timeout`.
    pub job_timeout: Duration,
}

impl std::fmt::Debug for DbusManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbusManager")
            .field("conn", &self.conn)
            .field("job_timeout", &self.job_timeout)
            .finish_non_exhaustive()
    }
}

/// A failed call on `target`.
fn call_error(call: &'static str, target: &str) -> impl FnOnce(zbus::Error) -> Error {
    let target = target.to_string();
    move |source| Error::Call {
        call,
        target,
        source: Box::new(source),
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

impl DbusManager {
    /// Connects to the system bus.
    pub async fn system() -> Result<Self, Error> {
        let conn = Connection::system().await;
        Self::on(conn, "system bus").await
    }

    /// Connects to the bus at `address`, e.g. `unix:path=/proc/42/root/run/dbus/system_bus_socket`.
    pub async fn at(address: &str) -> Result<Self, Error> {
        let conn = match zbus::connection::Builder::address(address) {
            Ok(b) => b.build().await,
            Err(e) => Err(e),
        };
        Self::on(conn, address).await
    }

    async fn on(conn: zbus::Result<Connection>, address: &str) -> Result<Self, Error> {
        let connect_error = |source| Error::Connect {
            address: address.to_string(),
            source: Box::new(source),
        };
        let conn = conn.map_err(connect_error)?;
        let proxy = zbus::proxy::Builder::<Proxy<'static>>::new(&conn)
            .destination(DEST)
            .and_then(|b| b.path(PATH))
            .and_then(|b| b.interface(MANAGER))
            .map(|b| b.cache_properties(zbus::proxy::CacheProperties::No));
        let proxy = match proxy {
            Ok(b) => b.build().await.map_err(connect_error)?,
            Err(e) => return Err(connect_error(e)),
        };
        Ok(Self {
            conn,
            proxy,
            jobs: None,
            early: HashMap::new(),
            job_timeout: Duration::from_secs(300),
        })
    }

    async fn call_unit(
        &self,
        method: &'static str,
        target: &str,
        body: &(impl serde::Serialize + DynamicType),
    ) -> Result<(), Error> {
        self.proxy
            .call_method(method, body)
            .await
            .map(drop)
            .map_err(call_error(method, target))
    }

    /// `EnableUnitFiles(names, runtime, force)`: processes `[Install]` like `systemctl enable`.
    pub async fn enable_unit_files(
        &self,
        names: &[String],
        runtime: bool,
        force: bool,
    ) -> Result<(), Error> {
        let target = names.join(" ");
        self.call_unit("EnableUnitFiles", &target, &(names, runtime, force))
            .await
    }

    /// `LinkUnitFiles(paths, runtime, force)`: links unit files from outside the search path.
    pub async fn link_unit_files(
        &self,
        paths: &[String],
        runtime: bool,
        force: bool,
    ) -> Result<(), Error> {
        let target = paths.join(" ");
        self.call_unit("LinkUnitFiles", &target, &(paths, runtime, force))
            .await
    }

    /// `DisableUnitFiles(names, runtime)`.
    pub async fn disable_unit_files(&self, names: &[String], runtime: bool) -> Result<(), Error> {
        let target = names.join(" ");
        self.call_unit("DisableUnitFiles", &target, &(names, runtime))
            .await
    }

    /// `ResetFailedUnit(name)`; a unit systemd does not know is not an error.
    pub async fn reset_failed(&self, name: &str) -> Result<(), Error> {
        match self.call_unit("ResetFailedUnit", name, &(name,)).await {
            Err(e) if e.is_not_loaded() => Ok(()),
            other => other,
        }
    }

    /// `Reload`: the daemon-reload.
    pub async fn reload(&self) -> Result<(), Error> {
        self.call_unit("Reload", "", &()).await
    }

    /// Queues a job without waiting for it (fleet's asynchronous start and stop).
    pub async fn enqueue(&self, kind: JobKind, unit: &str) -> Result<(), Error> {
        self.call_unit(kind.method(), unit, &(unit, "replace"))
            .await
    }

    /// Queues a job for each unit without waiting for them, with up to [`IN_FLIGHT`]
    /// requests outstanding on the connection: systemd answers them back to back instead
    /// of one round trip at a time. Gives each unit's result, in order.
    pub async fn enqueue_many(&self, kind: JobKind, units: &[String]) -> Vec<Result<(), Error>> {
        // The futures made first: a closure in the stream's type would keep the caller's
        // future from being `Send`.
        let calls: Vec<_> = units.iter().map(|u| self.enqueue(kind, u)).collect();
        futures_util::stream::iter(calls)
            .buffered(IN_FLIGHT)
            .collect()
            .await
    }

    /// The states of the named units (`ListUnitsByNames`; unknown units come back
    /// `not-found`).
    pub async fn unit_statuses(&self, names: &[String]) -> Result<Vec<UnitStatus>, Error> {
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
        let rows: Vec<Row> = self
            .proxy
            .call("ListUnitsByNames", &(names,))
            .await
            .map_err(call_error("ListUnitsByNames", &target))?;
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

    /// Queues a job and waits until it finishes; returns systemd's result string (see
    /// [`Systemd::run_job`]).
    pub async fn run_job(
        &mut self,
        kind: JobKind,
        unit: &str,
        mode: &str,
    ) -> Result<String, Error> {
        let call = kind.method();
        self.subscribe(call, unit).await?;
        let job: OwnedObjectPath = self
            .proxy
            .call(call, &(unit, mode))
            .await
            .map_err(call_error(call, unit))?;
        self.wait_job(call, unit, job).await
    }

    /// Starts a transient service running `argv` and waits for the start job.
    pub async fn start_transient_service(
        &mut self,
        name: &str,
        description: &str,
        argv: &[String],
    ) -> Result<String, Error> {
        let call = "StartTransientUnit";
        let path = argv.first().cloned().unwrap_or_default();
        let exec: Vec<(String, Vec<String>, bool)> = vec![(path, argv.to_vec(), false)];
        let props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(description)),
            ("ExecStart", Value::from(exec)),
        ];
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        self.subscribe(call, name).await?;
        let job: OwnedObjectPath = self
            .proxy
            .call(call, &(name, "replace", props, aux))
            .await
            .map_err(call_error(call, name))?;
        self.wait_job(call, name, job).await
    }

    /// Subscribes to the manager's `JobRemoved` signals, once per connection.
    async fn subscribe(&mut self, call: &'static str, unit: &str) -> Result<(), Error> {
        if self.jobs.is_none() {
            let signals = self
                .proxy
                .receive_signal("JobRemoved")
                .await
                .map_err(call_error(call, unit))?;
            self.call_unit("Subscribe", unit, &()).await?;
            self.jobs = Some(signals);
        }
        Ok(())
    }

    /// Waits for `job`'s `JobRemoved` signal, at most [`Self::job_timeout`].
    async fn wait_job(
        &mut self,
        call: &'static str,
        unit: &str,
        job: OwnedObjectPath,
    ) -> Result<String, Error> {
        let deadline = tokio::time::Instant::now() + self.job_timeout;
        let result = loop {
            if let Some(r) = self.early.remove(&job) {
                break r;
            }
            let Some(signals) = self.jobs.as_mut() else {
                return Err(call_error(call, unit)(zbus::Error::Failure(
                    "not subscribed to job results".into(),
                )));
            };
            let msg = match tokio::time::timeout_at(deadline, signals.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    self.jobs = None;
                    return Err(call_error(call, unit)(zbus::Error::Failure(
                        "the bus closed while waiting for the job".into(),
                    )));
                }
                Err(_) => break "timeout".to_string(),
            };
            let Ok((_id, path, _unit, result)) = msg
                .body()
                .deserialize::<(u32, OwnedObjectPath, String, String)>()
            else {
                continue;
            };
            if path == job {
                break result;
            }
            if self.early.len() >= EARLY_RESULTS_MAX {
                self.early.clear();
            }
            self.early.insert(path, result);
        };
        tracing::debug!(unit, job = %job.as_str(), result, "job finished");
        Ok(result)
    }
}

/// [`DbusManager`] for synchronous callers (coreos-cloudinit): each call runs to completion
/// on a current-thread tokio runtime this value owns.
#[derive(Debug)]
pub struct DbusSystemd {
    rt: tokio::runtime::Runtime,
    /// Always `Some` until dropped: the connection is dropped inside the runtime's context
    /// (zbus spawns its clean-up there), never after the runtime.
    manager: Option<DbusManager>,
}

impl Drop for DbusSystemd {
    fn drop(&mut self) {
        let _inside = self.rt.enter();
        drop(self.manager.take());
    }
}

impl DbusSystemd {
    fn runtime(address: &str) -> Result<tokio::runtime::Runtime, Error> {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Error::Connect {
                address: address.to_string(),
                source: Box::new(zbus::Error::InputOutput(std::sync::Arc::new(e))),
            })
    }

    /// Connects to the system bus.
    pub fn system() -> Result<Self, Error> {
        let rt = Self::runtime("system bus")?;
        let manager = Some(rt.block_on(DbusManager::system())?);
        Ok(Self { rt, manager })
    }

    /// Connects to the bus at `address`, e.g. `unix:path=/proc/42/root/run/dbus/system_bus_socket`.
    pub fn at(address: &str) -> Result<Self, Error> {
        let rt = Self::runtime(address)?;
        let manager = Some(rt.block_on(DbusManager::at(address))?);
        Ok(Self { rt, manager })
    }

    /// How long a job is waited for before it counts as `timeout`.
    pub fn set_job_timeout(&mut self, timeout: Duration) {
        if let Some(m) = self.manager.as_mut() {
            m.job_timeout = timeout;
        }
    }

    /// Runs one manager call to completion on this value's runtime.
    fn call<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut DbusManager) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let Some(m) = self.manager.as_mut() else {
            return Err(Error::Connect {
                address: "system bus".into(),
                source: Box::new(zbus::Error::Failure("connection closed".into())),
            });
        };
        self.rt.block_on(f(m))
    }
}

impl Systemd for DbusSystemd {
    fn enable_unit_files(
        &mut self,
        names: &[String],
        runtime: bool,
        force: bool,
    ) -> Result<(), Error> {
        self.call(async |m| m.enable_unit_files(names, runtime, force).await)
    }

    fn reload(&mut self) -> Result<(), Error> {
        self.call(async |m| m.reload().await)
    }

    fn run_job(&mut self, kind: JobKind, unit: &str, mode: &str) -> Result<String, Error> {
        self.call(async |m| m.run_job(kind, unit, mode).await)
    }

    fn start_transient_service(
        &mut self,
        name: &str,
        description: &str,
        argv: &[String],
    ) -> Result<String, Error> {
        self.call(async |m| m.start_transient_service(name, description, argv).await)
    }
}

//! The systemd manager over D-Bus.

use std::sync::mpsc;
use std::time::Duration;

use zbus::blocking::{Connection, Proxy};
use zbus::zvariant::{OwnedObjectPath, Value};

use crate::{Error, JobKind, Systemd};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// systemd's manager on a D-Bus connection.
#[derive(Debug)]
pub struct DbusSystemd {
    conn: Connection,
    /// How long to wait for a job to finish before reporting `timeout`.
    pub job_timeout: Duration,
}

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
            job_timeout: Duration::from_secs(300),
        }
    }

    fn manager(&self, call: &'static str, target: &str) -> Result<Proxy<'static>, Error> {
        Proxy::new(&self.conn, DEST, PATH, MANAGER).map_err(|source| Error::Call {
            call,
            target: target.to_string(),
            source: Box::new(source),
        })
    }

    /// Queues a job with `enqueue` and waits for its `JobRemoved` signal.
    fn wait_job(
        &self,
        call: &'static str,
        unit: &str,
        enqueue: impl FnOnce(&Proxy<'static>) -> zbus::Result<OwnedObjectPath>,
    ) -> Result<String, Error> {
        let fail = |source| Error::Call {
            call,
            target: unit.to_string(),
            source: Box::new(source),
        };
        let proxy = self.manager(call, unit)?;
        // Subscribe before queueing so the signal cannot be missed.
        proxy.call_method("Subscribe", &()).map_err(fail)?;
        let signals = proxy.receive_signal("JobRemoved").map_err(fail)?;
        let job = enqueue(&proxy).map_err(fail)?;
        let (tx, rx) = mpsc::channel();
        let wanted = job.clone();
        std::thread::spawn(move || {
            for msg in signals {
                let Ok((_id, path, _unit, result)) =
                    msg.body()
                        .deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                if path == wanted {
                    let _ = tx.send(result);
                    return;
                }
            }
        });
        let result = rx
            .recv_timeout(self.job_timeout)
            .unwrap_or_else(|_| "timeout".to_string());
        tracing::debug!(unit, job = %job.as_str(), result, "job finished");
        Ok(result)
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

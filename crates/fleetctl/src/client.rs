//! How fleetctl reaches the cluster, as fleet's `--driver` chose: `api` (the default) speaks
//! fleetd's HTTP API on `unix:///var/run/fleet.sock` or an `http://host:port` endpoint;
//! `etcd` reads and writes fleet's etcd keyspace directly (over TLS with `--ca-file`,
//! `--cert-file` and `--key-file`). Both give the same records, so every command works the
//! same over either.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_model::{api, JobState, Machine, Requirements};
use fleet_store::{EtcdStore, EtcdTls, JobRecord, Registry, RegistryError, UnitState};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use systemd_unit::fleet::{UnitHash, UnitOption};

/// A cluster connection.
pub enum Client {
    /// fleet's keyspace in etcd.
    Etcd(Box<Registry<EtcdStore>>),
    /// fleetd's HTTP API.
    Api(ApiClient),
}

/// Whether `create_unit` made the unit or found it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// It was made now.
    New,
    /// It already existed.
    Existed,
}

impl Client {
    /// Connects with the driver and endpoint given (`endpoint` may list several, comma
    /// separated, for etcd).
    pub async fn connect(
        driver: &str,
        endpoint: &str,
        prefix: &str,
        timeout: Duration,
        tls: &EtcdTls,
    ) -> Result<Self, String> {
        match driver {
            "etcd" => {
                let endpoints: Vec<String> = endpoint.split(',').map(str::to_string).collect();
                let store = EtcdStore::connect_tls(&endpoints, timeout, tls)
                    .await
                    .map_err(|e| format!("Unable to initialize client: {e}"))?;
                Ok(Self::Etcd(Box::new(Registry::new(store, prefix))))
            }
            "api" => Ok(Self::Api(ApiClient::new(endpoint, timeout)?)),
            other => Err(format!("unrecognized driver {other:?}")),
        }
    }

    /// The machines of the cluster.
    pub async fn machines(&self) -> Result<Vec<Machine>, String> {
        match self {
            Self::Etcd(r) => r.machines().await.map_err(|e| e.to_string()),
            Self::Api(a) => Ok(a
                .get_all("machines", |p: api::MachinePage| {
                    (p.machines, p.next_page_token)
                })
                .await?
                .into_iter()
                .map(|m| Machine {
                    id: m.id,
                    public_ip: m.primary_ip,
                    metadata: m.metadata,
                    version: String::new(),
                })
                .collect()),
        }
    }

    /// Every unit, with its text.
    pub async fn jobs(&self) -> Result<Vec<JobRecord>, String> {
        match self {
            Self::Etcd(r) => r.jobs().await.map(|(j, _)| j).map_err(|e| e.to_string()),
            Self::Api(a) => Ok(a
                .get_all("units", |p: api::UnitPage| (p.units, p.next_page_token))
                .await?
                .into_iter()
                .map(job_of)
                .collect()),
        }
    }

    /// Every machine's report of every unit.
    pub async fn states(&self) -> Result<Vec<UnitState>, String> {
        match self {
            Self::Etcd(r) => r.states().await.map_err(|e| e.to_string()),
            Self::Api(a) => Ok(a
                .get_all("state", |p: api::StatePage| (p.states, p.next_page_token))
                .await?
                .into_iter()
                .map(|s| UnitState {
                    unit: s.name,
                    machine_id: s.machine_id,
                    load_state: s.systemd_load_state,
                    active_state: s.systemd_active_state,
                    sub_state: s.systemd_sub_state,
                    hash: s.hash,
                })
                .collect()),
        }
    }

    /// Units, states and machines (by ID), read in that order.
    pub async fn snapshot(
        &self,
    ) -> Result<(Vec<JobRecord>, Vec<UnitState>, BTreeMap<String, Machine>), String> {
        let jobs = self.jobs().await?;
        let states = self.states().await?;
        let machines = self
            .machines()
            .await?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        Ok((jobs, states, machines))
    }

    /// Submits a unit in `state`.
    pub async fn create_unit(
        &self,
        name: &str,
        text: &str,
        options: &[UnitOption],
        state: JobState,
    ) -> Result<Created, String> {
        match self {
            Self::Etcd(r) => match r.create_unit(name, text, state).await {
                Ok(_) => Ok(Created::New),
                Err(RegistryError::JobExists(_)) => Ok(Created::Existed),
                Err(e) => Err(e.to_string()),
            },
            Self::Api(a) => {
                // fleetctl sends options alone for an inactive unit: on an existing unit a
                // desired state would override whatever state it is in.
                let desired_state = if state == JobState::Inactive {
                    String::new()
                } else {
                    state.to_string()
                };
                let body = api::Unit {
                    name: name.into(),
                    desired_state,
                    options: options.iter().cloned().map(Into::into).collect(),
                    ..api::Unit::default()
                };
                match a.put(name, &body).await? {
                    StatusCode::CREATED => Ok(Created::New),
                    _ => Ok(Created::Existed),
                }
            }
        }
    }

    /// Gives an existing unit new content (fleet 1.0's replace): as fleet's registry did,
    /// the unit is then inactive, and the caller waits for that before asking for the
    /// state it wants.
    pub async fn replace_unit(
        &self,
        name: &str,
        text: &str,
        options: &[UnitOption],
    ) -> Result<(), String> {
        match self {
            Self::Etcd(r) => {
                r.replace_unit(name, text)
                    .await
                    .map_err(|e| e.to_string())?;
                r.set_target_state(name, JobState::Inactive)
                    .await
                    .map_err(|e| e.to_string())
            }
            Self::Api(a) => {
                let body = api::Unit {
                    name: name.into(),
                    options: options.iter().cloned().map(Into::into).collect(),
                    ..api::Unit::default()
                };
                a.put(name, &body).await.map(|_| ())
            }
        }
    }

    /// Sets a unit's desired state.
    pub async fn set_target_state(&self, name: &str, state: JobState) -> Result<(), String> {
        match self {
            Self::Etcd(r) => r
                .set_target_state(name, state)
                .await
                .map_err(|e| e.to_string()),
            Self::Api(a) => {
                let body = api::Unit {
                    name: name.into(),
                    desired_state: state.to_string(),
                    ..api::Unit::default()
                };
                a.put(name, &body).await.map(|_| ())
            }
        }
    }

    /// Removes a unit from the cluster; false if there was none.
    pub async fn destroy_unit(&self, name: &str) -> Result<bool, String> {
        match self {
            Self::Etcd(r) => r.destroy_unit(name).await.map_err(|e| e.to_string()),
            Self::Api(a) => {
                let (status, body) = a.send(Method::DELETE, &unit_path(name), None).await?;
                match status {
                    StatusCode::NO_CONTENT => Ok(true),
                    StatusCode::NOT_FOUND => Ok(false),
                    s => Err(api_error(s, &body)),
                }
            }
        }
    }
}

/// At most this many pages of 100 are read (100,000 items).
const MAX_PAGES: usize = 1000;

/// What a path segment must escape (Go's `url.PathEscape` leaves `@`, `:` and the like).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'?')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}');

fn unit_path(name: &str) -> String {
    let enc = percent_encoding::utf8_percent_encode(name, SEGMENT);
    format!("/fleet/v1/units/{enc}?alt=json")
}

fn job_of(u: api::Unit) -> JobRecord {
    let options: Vec<UnitOption> = u.options.into_iter().map(Into::into).collect();
    let global = Requirements::from_options(&u.name, &options).global;
    let target = Some(u.machine_id).filter(|m| !m.is_empty());
    JobRecord {
        hash: UnitHash::of_options(&options),
        unit: Some(systemd_unit::fleet::serialize(&options)),
        global,
        target_state: JobState::parse(&u.desired_state).unwrap_or(JobState::Inactive),
        job_state: target.clone().filter(|_| u.current_state == "launched"),
        target,
        name: u.name,
    }
}

/// fleet's client wording: `googleapi: Error <code>: <message>`.
fn api_error(status: StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<api::ErrorReply>(body) {
        Ok(r) if !r.error.message.is_empty() => {
            format!("googleapi: Error {}: {}", r.error.code, r.error.message)
        }
        _ => format!(
            "googleapi: got HTTP response code {} with body: {}",
            status.as_u16(),
            String::from_utf8_lossy(body)
        ),
    }
}

/// fleetd's API at one endpoint; a connection per request.
pub struct ApiClient {
    target: Target,
    timeout: Duration,
    /// `--tunnel`: ssh's arguments to the bastion (destination last).
    tunnel: Option<Vec<String>>,
}

enum Target {
    Unix(std::path::PathBuf),
    Tcp(String),
}

impl ApiClient {
    /// `endpoint` is `unix:///path` or `http://host:port`.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, String> {
        let mut all = endpoint.split(',');
        let first = all.next().unwrap_or(endpoint);
        if all.next().is_some() {
            eprintln!("Multiple endpoints are not supported by the API driver; using {first}");
        }
        let target = if let Some(p) = first
            .strip_prefix("unix://")
            .or_else(|| first.strip_prefix("file://"))
        {
            if !p.starts_with('/') {
                let (host, scheme) = (p.split('/').next().unwrap_or(p), &first[..4]);
                return Err(format!(
                    "unable to connect to host {host:?} with scheme {scheme:?}"
                ));
            }
            Target::Unix(p.into())
        } else if let Some(h) = first.strip_prefix("http://") {
            Target::Tcp(h.trim_end_matches('/').to_string())
        } else {
            return Err(format!(
                "unable to use endpoint {first:?}: want unix:///path or http://host:port"
            ));
        };
        Ok(Self {
            target,
            timeout,
            tunnel: None,
        })
    }

    /// Through an SSH bastion, as fleet's `--tunnel`: for a Unix endpoint the bastion runs
    /// `fleetctl fd-forward <socket>`; for a TCP endpoint ssh forwards to it (`-W`).
    pub fn tunneled(
        endpoint: &str,
        timeout: Duration,
        bastion: Vec<String>,
    ) -> Result<Self, String> {
        let mut c = Self::new(endpoint, timeout)?;
        c.tunnel = Some(bastion);
        Ok(c)
    }

    /// One connection to fleetd through the bastion: an ssh process whose standard input
    /// and output carry the HTTP exchange.
    fn tunnel_io(&self, bastion: &[String]) -> Result<Io, String> {
        let (dest, opts) = bastion
            .split_last()
            .ok_or_else(|| "no tunnel destination".to_string())?;
        let mut c = tokio::process::Command::new("ssh");
        c.args(opts);
        match &self.target {
            Target::Unix(p) => {
                c.arg(dest).args(["fleetctl", "fd-forward"]).arg(p);
            }
            Target::Tcp(h) => {
                c.arg("-W").arg(h).arg(dest);
            }
        }
        let mut child = c
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("Unable to run ssh for the tunnel: {e}"))?;
        let (Some(out), Some(inp)) = (child.stdout.take(), child.stdin.take()) else {
            return Err("ssh for the tunnel has no pipes".into());
        };
        Ok(Io::Tunnel(
            TokioIo::new(tokio::io::join(out, inp)),
            Box::new(child),
        ))
    }

    /// Every item of a collection, following `nextPageToken` (at most [`MAX_PAGES`] pages).
    async fn get_all<P: serde::de::DeserializeOwned, T>(
        &self,
        collection: &str,
        split: impl Fn(P) -> (Vec<T>, Option<String>),
    ) -> Result<Vec<T>, String> {
        let mut out = Vec::new();
        let mut token = None;
        for _ in 0..MAX_PAGES {
            let (items, next) = split(self.get_page(collection, token.as_deref()).await?);
            out.extend(items);
            token = next;
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }

    async fn get_page<T: serde::de::DeserializeOwned>(
        &self,
        collection: &str,
        token: Option<&str>,
    ) -> Result<T, String> {
        let mut path = format!("/fleet/v1/{collection}?alt=json");
        if let Some(t) = token {
            let enc: String = form_urlencoded::byte_serialize(t.as_bytes()).collect();
            path.push_str(&format!("&nextPageToken={enc}"));
        }
        let (status, body) = self.send(Method::GET, &path, None).await?;
        if status != StatusCode::OK {
            return Err(api_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| format!("unable to decode {path}: {e}"))
    }

    async fn put(&self, name: &str, unit: &api::Unit) -> Result<StatusCode, String> {
        let body = serde_json::to_vec(unit).map_err(|e| e.to_string())?;
        let (status, reply) = self.send(Method::PUT, &unit_path(name), Some(body)).await?;
        match status {
            StatusCode::CREATED | StatusCode::NO_CONTENT => Ok(status),
            s => Err(api_error(s, &reply)),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), String> {
        let exchange = async {
            let (host, io) = match (&self.target, &self.tunnel) {
                (Target::Unix(_), Some(b)) => ("fleet".to_string(), self.tunnel_io(b)?),
                (Target::Tcp(h), Some(b)) => (h.clone(), self.tunnel_io(b)?),
                (Target::Unix(p), None) => {
                    let s = tokio::net::UnixStream::connect(p).await.map_err(|e| {
                        go_url_error(
                            &method,
                            "domain-sock",
                            path,
                            &format!("dial unix {}", p.display()),
                            &e,
                        )
                    })?;
                    ("fleet".to_string(), Io::Unix(TokioIo::new(s)))
                }
                (Target::Tcp(h), None) => {
                    let s = tokio::net::TcpStream::connect(h.as_str())
                        .await
                        .map_err(|e| {
                            go_url_error(&method, h, path, &format!("dial tcp {h}"), &e)
                        })?;
                    (h.clone(), Io::Tcp(TokioIo::new(s)))
                }
            };
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, host)
                .header(
                    hyper::header::USER_AGENT,
                    concat!("fleetctl/", env!("CARGO_PKG_VERSION")),
                );
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| e.to_string())?;
            let resp = match io {
                Io::Unix(io) => exchange_on(io, req).await?,
                Io::Tcp(io) => exchange_on(io, req).await?,
                Io::Tunnel(io, _ssh) => exchange_on(io, req).await?,
            };
            Ok::<_, String>(resp)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("fleet API request {path} timed out"))?
    }
}

/// A failed connection as Go's HTTP client worded it, which fleetctl printed:
/// `Get "http://127.0.0.1:49153/fleet/v1/machines?alt=json": dial tcp 127.0.0.1:49153:
/// connect: connection refused`.
fn go_url_error(method: &Method, host: &str, path: &str, dial: &str, e: &std::io::Error) -> String {
    let verb = method.as_str();
    let verb = format!("{}{}", &verb[..1], verb[1..].to_ascii_lowercase());
    format!(
        "{verb} \"http://{host}{path}\": {dial}: connect: {}",
        go_errno(e)
    )
}

/// An OS error as Go's `syscall.Errno` prints it: the C library's text, lower case, with
/// no "(os error N)".
fn go_errno(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match e.raw_os_error() {
        Some(n) => text
            .strip_suffix(&format!(" (os error {n})"))
            .unwrap_or(&text)
            .to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

enum Io {
    Unix(TokioIo<tokio::net::UnixStream>),
    Tcp(TokioIo<tokio::net::TcpStream>),
    /// The ssh process is killed when the exchange is over.
    Tunnel(
        TokioIo<tokio::io::Join<tokio::process::ChildStdout, tokio::process::ChildStdin>>,
        Box<tokio::process::Child>,
    ),
}

async fn exchange_on<I>(io: I, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    http_exchange::exchange(io, req)
        .await
        .map_err(|(stage, e)| format!("fleet API {stage}: {e}"))
}

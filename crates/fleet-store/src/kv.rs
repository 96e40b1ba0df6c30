//! The key-value interface fleet needs, and its two implementations: etcd's v3 API and an
//! in-memory store with the same semantics (revisions, leases that expire, prefix watches,
//! create-only and compare-and-swap writes) for unit tests and simulations.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use http_body_util::Full;
use hyper::body::Bytes;
use tokio::sync::mpsc;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd answered with an error or could not be reached.
    #[error("etcd {op} {key}: {source}")]
    Etcd {
        /// The operation.
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// The client error.
        source: Box<etcd_client::Error>,
    },
    /// The in-memory store's lock was poisoned by a panic elsewhere.
    #[error("in-memory store is poisoned")]
    Poisoned,
    /// etcd did not answer in time.
    #[error("etcd {op} {key}: no answer in time")]
    TimedOut {
        /// The operation.
        op: &'static str,
        /// The key or lease.
        key: String,
    },
    /// This view of the in-memory store is cut off (a simulated partition).
    #[error("in-memory store: cut off")]
    CutOff,
    /// A TLS file for etcd could not be read.
    #[error("etcd TLS: reading {path}: {source}")]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("etcd TLS: a client certificate needs its key, and a key its certificate")]
    TlsPair,
    /// An etcd v2 proxy could not tell its cluster's members.
    #[error("etcd proxy at {endpoint}: {reason}")]
    Proxy {
        /// The proxy's client URL.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// TLS settings given to a build without TLS.
    #[error("etcd TLS: this build has no TLS support (build with --features tls)")]
    TlsUnsupported,
}

/// TLS for etcd, as fleet's `etcd_cafile`, `etcd_certfile` and `etcd_keyfile` (and
/// fleetctl's `--ca-file`, `--cert-file`, `--key-file`): PEM files; endpoints use `https://`.
/// Used only in builds with the `tls` feature (others refuse TLS settings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed etcd's certificate (else the system's roots are not used: give it).
    pub ca: Option<std::path::PathBuf>,
    /// This client's certificate, for etcd's `--client-cert-auth`.
    pub cert: Option<std::path::PathBuf>,
    /// The certificate's private key.
    pub key: Option<std::path::PathBuf>,
}

impl EtcdTls {
    /// Whether any TLS setting is given.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    #[cfg(feature = "tls")]
    fn options(&self) -> R<etcd_client::TlsOptions> {
        let read = |p: &std::path::PathBuf| {
            std::fs::read(p).map_err(|source| StoreError::TlsFile {
                path: p.clone(),
                source,
            })
        };
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
            }
            (None, None) => {}
            _ => return Err(StoreError::TlsPair),
        }
        Ok(tls)
    }
}

impl StoreError {
    /// Whether etcd refused a write because its lease had expired (the writer was cut off
    /// for longer than the lease's TTL).
    pub fn is_lease_lost(&self) -> bool {
        match self {
            Self::Etcd { source, .. } => match source.as_ref() {
                etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
                etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
                _ => false,
            },
            Self::Poisoned
            | Self::CutOff
            | Self::TimedOut { .. }
            | Self::TlsFile { .. }
            | Self::TlsPair
            | Self::TlsUnsupported
            | Self::Proxy { .. } => false,
        }
    }
}

/// A stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision of its last change.
    pub mod_revision: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Created or changed.
    Put(KeyValue),
    /// Deleted (or expired with its lease).
    Delete {
        /// The key.
        key: String,
        /// The revision of the deletion.
        revision: i64,
    },
}

impl Event {
    /// The key concerned.
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
}

type R<T> = Result<T, StoreError>;

/// The most keys [`KvStore::put_many`] writes in one request (etcd's default limit of
/// operations per transaction is 128).
pub const PUT_BATCH: usize = 100;

/// What fleet asks of its store. Every method is one request (counted by [`KvStore::requests`]).
pub trait KvStore: Clone + Send + Sync + 'static {
    /// One key.
    fn get(&self, key: &str) -> impl Future<Output = R<Option<KeyValue>>> + Send;
    /// Every key under `prefix`, and the store's revision at that moment.
    fn get_prefix(&self, prefix: &str) -> impl Future<Output = R<(Vec<KeyValue>, i64)>> + Send;
    /// Sets a key (attached to `lease` if given).
    fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<i64>,
    ) -> impl Future<Output = R<()>> + Send;
    /// Sets many keys, all on `lease` if given: one request per [`PUT_BATCH`] keys (an
    /// etcd transaction without conditions).
    fn put_many(
        &self,
        kvs: Vec<(String, Vec<u8>)>,
        lease: Option<i64>,
    ) -> impl Future<Output = R<()>> + Send;
    /// Sets a key only if it does not exist; returns whether it did so.
    fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<i64>,
    ) -> impl Future<Output = R<bool>> + Send;
    /// Sets each key that does not exist yet, without a lease; gives, in order, whether
    /// each was set. One request per [`PUT_BATCH`] keys when none exists (the common case),
    /// then one per key for a batch where some did.
    fn create_many(
        &self,
        kvs: Vec<(String, Vec<u8>)>,
    ) -> impl Future<Output = R<Vec<bool>>> + Send {
        async move {
            let mut out = Vec::with_capacity(kvs.len());
            for (k, v) in kvs {
                out.push(self.create(&k, v, None).await?);
            }
            Ok(out)
        }
    }
    /// Sets a key only if `guard` exists; returns whether it did so.
    fn put_if_exists(
        &self,
        guard: &str,
        key: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = R<bool>> + Send;
    /// Deletes a key.
    fn delete(&self, key: &str) -> impl Future<Output = R<()>> + Send;
    /// Deletes a key only if its value is `expected`; returns whether it did so.
    fn delete_if_value(&self, key: &str, expected: &[u8]) -> impl Future<Output = R<bool>> + Send;
    /// Deletes every key under `prefix`.
    fn delete_prefix(&self, prefix: &str) -> impl Future<Output = R<()>> + Send;
    /// A new lease of `ttl` seconds.
    fn grant_lease(&self, ttl: i64) -> impl Future<Output = R<i64>> + Send;
    /// Renews a lease; `false` if it has already expired.
    fn keep_alive(&self, lease: i64) -> impl Future<Output = R<bool>> + Send;
    /// Ends a lease, deleting its keys.
    fn revoke(&self, lease: i64) -> impl Future<Output = R<()>> + Send;
    /// Changes under `prefix` after `revision`, until the receiver is dropped.
    fn watch_prefix(
        &self,
        prefix: &str,
        revision: i64,
    ) -> impl Future<Output = R<mpsc::Receiver<Event>>> + Send;
    /// How many requests this store (and its clones) has made.
    fn requests(&self) -> u64;
}

// --- etcd -------------------------------------------------------------------------------

/// etcd through its v3 API. Requests go to one member at a time — first the configured
/// endpoints (usually the machine's own member) — and fail over to the next member when
/// one cannot be reached or has lost its leader; [`EtcdStore::add_members`] teaches it the
/// cluster's other members. (Balancing every request over all members instead made every
/// member's outage everyone's: requests routed to it failed.)
#[derive(Clone)]
pub struct EtcdStore {
    members: Arc<Members>,
    /// The client of the configured endpoints (also the first of `members`).
    first: Client,
    requests: Arc<AtomicU64>,
    /// Each request's limit (also applied to lease keep-alives, which etcd's client does
    /// not bound).
    timeout: Duration,
}

/// How often an idle connection to etcd is pinged, and how long a ping may go unanswered
/// before the connection (and every watch on it) fails.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// See [`KEEPALIVE_INTERVAL`].
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an [`EtcdStore`] stays on another member before it tries the configured one
/// (the machine's own) again.
const RETURN_AFTER: Duration = Duration::from_secs(10);

/// The members an [`EtcdStore`] can use, each with its own client, and the one in use.
struct Members {
    list: Mutex<Vec<(String, Client)>>,
    current: AtomicU64,
    /// When the store last failed over away from the configured endpoints.
    left_first: Mutex<Option<Instant>>,
    opts: etcd_client::ConnectOptions,
}

impl Members {
    fn with<T>(&self, f: impl FnOnce(&mut Vec<(String, Client)>) -> T) -> T {
        match self.list.lock() {
            Ok(mut l) => f(&mut l),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

/// Whether an error means the member could not serve (unreachable, no leader, cut
/// off), so the next request should go to another member.
fn member_unavailable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        // gRPC's codes: 1 cancelled, 2 unknown (a broken connection), 4 deadline exceeded,
        // 14 unavailable.
        E::GRpcStatus(s) => {
            matches!(s.code() as i32, 1 | 2 | 4 | 14) || s.message().contains("no leader")
        }
        E::TransportError(_) | E::IoError(_) => true,
        _ => false,
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

fn etcd_err<'a>(
    op: &'static str,
    key: &'a str,
) -> impl FnOnce(etcd_client::Error) -> StoreError + 'a {
    move |e| StoreError::Etcd {
        op,
        key: key.to_string(),
        source: Box::new(e),
    }
}

fn kv_of(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

/// One request on a fresh HTTP/1.1 connection over `io`: the reply's status and body, or
/// the stage that failed (`handshake`, `request`, `reply`) and hyper's error.
pub async fn http1_exchange<I>(
    io: I,
    req: hyper::Request<Full<Bytes>>,
) -> Result<(hyper::StatusCode, Bytes), (&'static str, hyper::Error)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use http_body_util::BodyExt as _;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ("handshake", e))?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| ("request", e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ("reply", e))?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}

/// One HTTP/1.1 request to etcd's HTTP side (`http://host:port` only): (status, body).
async fn http(endpoint: &str, method: &str, path: &str, timeout: Duration) -> R<(u16, Vec<u8>)> {
    let fail = |reason: String| StoreError::Proxy {
        endpoint: endpoint.to_string(),
        reason,
    };
    let host = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| fail("not an http:// endpoint".into()))?
        .trim_end_matches('/')
        .to_string();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&host)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &host)
            .body(Full::new(Bytes::from_static(b"{}")))
            .map_err(|e| fail(e.to_string()))?;
        let (status, body) = http1_exchange(hyper_util::rt::TokioIo::new(tcp), req)
            .await
            .map_err(|(stage, e)| fail(format!("{stage}: {e}")))?;
        Ok((status.as_u16(), body.to_vec()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| fail("no answer in time".into()))?
}

/// When `endpoint` is etcd's v2 proxy — what a machine that found its discovery cluster
/// full runs, as on CoreOS — the client URLs of the cluster's members; `None` for a real
/// member. The proxy does not carry the v3 gRPC API, but it forwards the JSON gateway, so
/// the member list comes through it.
pub async fn proxied_members(endpoint: &str, timeout: Duration) -> R<Option<Vec<String>>> {
    let (status, _) = http(endpoint, "GET", "/v2/config/local/proxy", timeout).await?;
    if status != 200 {
        return Ok(None);
    }
    let (status, body) = http(endpoint, "POST", "/v3/cluster/member/list", timeout).await?;
    let bad = |reason: String| StoreError::Proxy {
        endpoint: endpoint.to_string(),
        reason,
    };
    if status != 200 {
        return Err(bad(format!("member list: HTTP {status}")));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("member list: {e}")))?;
    let urls: Vec<String> = v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| m["clientURLs"].as_array().into_iter().flatten())
        .filter_map(|u| u.as_str().map(str::to_string))
        .collect();
    Ok(Some(urls))
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (e.g. `http://127.0.0.1:2379`).
    pub async fn connect(endpoints: &[String], timeout: Duration) -> R<Self> {
        Self::connect_tls(endpoints, timeout, &EtcdTls::default()).await
    }

    /// Connects to etcd at `endpoints`, over TLS when `tls` sets anything (then the
    /// endpoints are `https://`).
    pub async fn connect_tls(endpoints: &[String], timeout: Duration, tls: &EtcdTls) -> R<Self> {
        // A member that has lost its leader (cut off from the majority) refuses requests
        // instead of answering from stale state, so they go to the others.
        // HTTP/2 pings find a connection to a member that went silent (cut off, its
        // machine gone): otherwise a watch on it would hang without an error, forever.
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_require_leader(true)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true);
        #[cfg(feature = "tls")]
        let opts = if tls.is_set() {
            opts.with_tls(tls.options()?)
        } else {
            opts
        };
        #[cfg(not(feature = "tls"))]
        if tls.is_set() {
            return Err(StoreError::TlsUnsupported);
        }
        let client = Client::connect(endpoints, Some(opts.clone()))
            .await
            .map_err(etcd_err("connect", &endpoints.join(",")))?;
        Ok(Self {
            first: client.clone(),
            members: Arc::new(Members {
                list: Mutex::new(vec![(endpoints.join(","), client)]),
                current: AtomicU64::new(0),
                left_first: Mutex::new(None),
                opts,
            }),
            requests: Arc::new(AtomicU64::new(0)),
            timeout,
        })
    }

    /// Every member's endpoints this store may use, the one in use first.
    pub fn endpoints(&self) -> Vec<String> {
        let at = self.members.current.load(Ordering::Relaxed) as usize;
        self.members.with(|l| {
            let n = l.len().max(1);
            (0..l.len()).map(|i| l[(at + i) % n].0.clone()).collect()
        })
    }

    /// Asks the cluster for its members and adds those it does not know yet, to fail over
    /// to (fleet's `etcd_servers` usually names only the machine's own member). Gives the
    /// client URLs added.
    pub async fn add_members(&self) -> R<Vec<String>> {
        let (at, mut client) = self.pick();
        let list = tokio::time::timeout(self.timeout, client.member_list())
            .await
            .map_err(|_| self.timed_out_at(at, "member list", ""))?
            .map_err(self.err_at(at, "member list", ""))?;
        // Asked through the configured endpoints, the member that answers is the one they
        // name (the machine's own, often under another address): not a second entry.
        let configured = (at == 0)
            .then(|| list.header().map(|h| h.member_id()))
            .flatten();
        let known: Vec<String> = self
            .endpoints()
            .iter()
            .flat_map(|e| e.split(',').map(|u| u.trim_end_matches('/').to_string()))
            .collect();
        let mut added = Vec::new();
        for url in list
            .members()
            .iter()
            .filter(|m| !m.is_learner() && Some(m.id()) != configured)
            .filter_map(|m| m.client_urls().first())
        {
            if known.iter().any(|k| k == url.trim_end_matches('/')) {
                continue;
            }
            let c = Client::connect([url.as_str()], Some(self.members.opts.clone()))
                .await
                .map_err(etcd_err("connect", url))?;
            self.members.with(|l| l.push((url.clone(), c)));
            added.push(url.clone());
        }
        Ok(added)
    }

    /// The member to use now and its client (counted as a request).
    fn pick(&self) -> (usize, Client) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.maybe_return();
        let at = self.members.current.load(Ordering::Relaxed) as usize;
        // Never empty: the configured endpoints are the first entry.
        let client = self
            .members
            .with(|l| l.get(at % l.len().max(1)).map(|(_, c)| c.clone()))
            .unwrap_or_else(|| self.first.clone());
        (at, client)
    }

    /// Back to the configured endpoints (the machine's own member) once the store has been
    /// elsewhere for [`RETURN_AFTER`]: a remote member may be cut off next, and the local
    /// one is the one that shares this machine's fate. If it still cannot serve, the next
    /// failure moves on again.
    fn maybe_return(&self) {
        let mut left = match self.members.left_first.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        if left.is_some_and(|t| t.elapsed() >= RETURN_AFTER) {
            *left = None;
            self.members.current.store(0, Ordering::Relaxed);
            tracing::debug!(
                "etcd: back to {}",
                self.endpoints().first().cloned().unwrap_or_default()
            );
        }
    }

    /// After a failure that says member `at` cannot serve: if it is still the one in use,
    /// use the next one (a late failure of a member already left changes nothing).
    fn fail_over(&self, at: usize) {
        let n = self.members.with(|l| l.len()) as u64;
        if n < 2 {
            return;
        }
        let at = at as u64;
        let next = (at + 1) % n;
        if self
            .members
            .current
            .compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            if let Ok(mut left) = self.members.left_first.lock() {
                *left = (next != 0).then(Instant::now);
            }
            let names = self.endpoints();
            tracing::info!(
                "etcd member {} cannot serve; trying {}",
                names.last().cloned().unwrap_or_default(),
                names.first().cloned().unwrap_or_default()
            );
        }
    }

    /// Maps a client error of a request to member `at`, failing over first if the member
    /// could not serve.
    fn err_at<'a>(
        &'a self,
        at: usize,
        op: &'static str,
        key: &'a str,
    ) -> impl FnOnce(etcd_client::Error) -> StoreError + 'a {
        move |e| {
            if member_unavailable(&e) {
                self.fail_over(at);
            }
            etcd_err(op, key)(e)
        }
    }

    /// A request to member `at` without an answer in time: that member is failed over
    /// from too.
    fn timed_out_at(&self, at: usize, op: &'static str, key: &str) -> StoreError {
        self.fail_over(at);
        StoreError::TimedOut {
            op,
            key: key.to_string(),
        }
    }
}

impl KvStore for EtcdStore {
    async fn get(&self, key: &str) -> R<Option<KeyValue>> {
        let (at, mut client) = self.pick();
        let r = client
            .get(key, None)
            .await
            .map_err(self.err_at(at, "get", key))?;
        Ok(r.kvs().first().map(kv_of))
    }

    async fn get_prefix(&self, prefix: &str) -> R<(Vec<KeyValue>, i64)> {
        let (at, mut client) = self.pick();
        let r = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(self.err_at(at, "get", prefix))?;
        let rev = r.header().map_or(0, |h| h.revision());
        Ok((r.kvs().iter().map(kv_of).collect(), rev))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> R<()> {
        let (at, mut client) = self.pick();
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        client
            .put(key, value, opts)
            .await
            .map_err(self.err_at(at, "put", key))?;
        Ok(())
    }

    async fn put_many(&self, kvs: Vec<(String, Vec<u8>)>, lease: Option<i64>) -> R<()> {
        let (at, mut client) = self.pick();
        // etcd refuses a transaction that names a key twice: the last value wins, as it
        // would with one put after another.
        let kvs: Vec<(String, Vec<u8>)> = kvs
            .into_iter()
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        for chunk in kvs.chunks(PUT_BATCH) {
            let opts = lease.map(|l| PutOptions::new().with_lease(l));
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), opts.clone()))
                .collect();
            let first = chunk.first().map(|(k, _)| k.as_str()).unwrap_or("");
            client
                .txn(Txn::new().and_then(ops))
                .await
                .map_err(self.err_at(at, "put", first))?;
        }
        Ok(())
    }

    async fn create(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> R<bool> {
        let (at, mut client) = self.pick();
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, opts)]);
        let r = client
            .txn(txn)
            .await
            .map_err(self.err_at(at, "create", key))?;
        Ok(r.succeeded())
    }

    async fn create_many(&self, kvs: Vec<(String, Vec<u8>)>) -> R<Vec<bool>> {
        let (at, mut client) = self.pick();
        let mut out = Vec::with_capacity(kvs.len());
        for chunk in kvs.chunks(PUT_BATCH) {
            let compares: Vec<Compare> = chunk
                .iter()
                .map(|(k, _)| Compare::create_revision(k.as_str(), CompareOp::Equal, 0))
                .collect();
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), None))
                .collect();
            let first = chunk.first().map(|(k, _)| k.as_str()).unwrap_or("");
            let all = client
                .txn(Txn::new().when(compares).and_then(ops))
                .await
                .map_err(self.err_at(at, "create", first))?;
            if all.succeeded() {
                out.extend(std::iter::repeat_n(true, chunk.len()));
            } else {
                // Some key exists (or a key is named twice): one at a time.
                for (k, v) in chunk {
                    out.push(self.create(k, v.clone(), None).await?);
                }
            }
        }
        Ok(out)
    }

    async fn put_if_exists(&self, guard: &str, key: &str, value: Vec<u8>) -> R<bool> {
        let (at, mut client) = self.pick();
        let txn = Txn::new()
            .when([Compare::create_revision(guard, CompareOp::Greater, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let r = client.txn(txn).await.map_err(self.err_at(at, "put", key))?;
        Ok(r.succeeded())
    }

    async fn delete(&self, key: &str) -> R<()> {
        let (at, mut client) = self.pick();
        client
            .delete(key, None)
            .await
            .map_err(self.err_at(at, "delete", key))?;
        Ok(())
    }

    async fn delete_if_value(&self, key: &str, expected: &[u8]) -> R<bool> {
        let (at, mut client) = self.pick();
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, expected.to_vec())])
            .and_then([TxnOp::delete(key, None)]);
        let r = client
            .txn(txn)
            .await
            .map_err(self.err_at(at, "delete", key))?;
        Ok(r.succeeded())
    }

    async fn delete_prefix(&self, prefix: &str) -> R<()> {
        let (at, mut client) = self.pick();
        client
            .delete(prefix, Some(DeleteOptions::new().with_prefix()))
            .await
            .map_err(self.err_at(at, "delete", prefix))?;
        Ok(())
    }

    async fn grant_lease(&self, ttl: i64) -> R<i64> {
        let (at, mut client) = self.pick();
        let r = client
            .lease_grant(ttl, None)
            .await
            .map_err(self.err_at(at, "lease grant", ""))?;
        Ok(r.id())
    }

    async fn keep_alive(&self, lease: i64) -> R<bool> {
        let (at, mut client) = self.pick();
        // Opening a keep-alive stream sends a renewal and checks its answer (a TTL of 0
        // is "lease not found"): that one message is the renewal. The stream is closed at
        // once, so nothing stays open per lease.
        match tokio::time::timeout(self.timeout, client.lease_keep_alive(lease)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => {
                Ok(false)
            }
            Ok(Err(e)) => Err(self.err_at(at, "lease keep-alive", &lease.to_string())(e)),
            Err(_) => Err(self.timed_out_at(at, "lease keep-alive", &lease.to_string())),
        }
    }

    async fn revoke(&self, lease: i64) -> R<()> {
        let (at, mut client) = self.pick();
        client.lease_revoke(lease).await.map_err(self.err_at(
            at,
            "lease revoke",
            &lease.to_string(),
        ))?;
        Ok(())
    }

    async fn watch_prefix(&self, prefix: &str, revision: i64) -> R<mpsc::Receiver<Event>> {
        let (at, mut client) = self.pick();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = client
            .watch(prefix, Some(opts))
            .await
            .map_err(self.err_at(at, "watch", prefix))?;
        let (tx, rx) = mpsc::channel(1024);
        let prefix = prefix.to_string();
        let store = self.clone();
        let member = at;
        tokio::spawn(async move {
            loop {
                let msg = match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(%prefix, "watch ended: {e}");
                        // The watcher sets up again, on another member if this one failed.
                        if member_unavailable(&e) {
                            store.fail_over(member);
                        }
                        return;
                    }
                };
                for ev in msg.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let event = match ev.event_type() {
                        etcd_client::EventType::Put => Event::Put(kv_of(kv)),
                        etcd_client::EventType::Delete => Event::Delete {
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            revision: kv.mod_revision(),
                        },
                    };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

// --- in memory --------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Inner {
    data: BTreeMap<String, KeyValue>,
    revision: i64,
    next_lease: i64,
    leases: HashMap<i64, (Duration, Instant)>,
    watchers: Vec<(String, mpsc::UnboundedSender<Event>)>,
}

impl Inner {
    fn notify(&mut self, event: Event) {
        self.watchers.retain(|(prefix, tx)| {
            !event.key().starts_with(prefix.as_str()) || tx.send(event.clone()).is_ok()
        });
    }

    fn set(&mut self, key: &str, value: Vec<u8>, lease: i64) {
        self.revision += 1;
        let kv = KeyValue {
            key: key.to_string(),
            value,
            mod_revision: self.revision,
            lease,
        };
        self.data.insert(key.to_string(), kv.clone());
        self.notify(Event::Put(kv));
    }

    fn remove(&mut self, key: &str) {
        if self.data.remove(key).is_some() {
            self.revision += 1;
            let revision = self.revision;
            self.notify(Event::Delete {
                key: key.to_string(),
                revision,
            });
        }
    }

    fn expire(&mut self, now: Instant) {
        let dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: i64) {
        self.leases.remove(&id);
        let keys: Vec<String> = self
            .data
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key.clone())
            .collect();
        for k in keys {
            self.remove(&k);
        }
    }
}

/// An in-memory store with etcd's semantics, shared by its clones. Leases expire on a
/// 50 ms tick (a Tokio task that ends when the last clone is dropped).
///
/// [`MemoryStore::view`] gives a handle that can be cut off from the data
/// ([`MemoryStore::set_reachable`]), as a machine is by a network partition: its requests
/// fail and its watches end, while other handles carry on.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    requests: Arc<AtomicU64>,
    reachable: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store. Needs a Tokio runtime for lease expiry.
    pub fn new() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let weak = Arc::downgrade(&inner);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let Some(inner) = weak.upgrade() else { return };
                    if let Ok(mut i) = inner.lock() {
                        i.expire(Instant::now());
                    };
                }
            });
        }
        Self {
            inner,
            requests: Arc::new(AtomicU64::new(0)),
            reachable: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// Another handle on the same data that can be cut off on its own.
    pub fn view(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            requests: self.requests.clone(),
            reachable: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// Cuts this handle (and its clones) off, or joins it again. Cut off, every request
    /// fails and every watch opened through it ends.
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::SeqCst);
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> R<T> {
        if !self.reachable.load(Ordering::SeqCst) {
            return Err(StoreError::CutOff);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        inner.expire(Instant::now());
        Ok(f(&mut inner))
    }
}

impl KvStore for MemoryStore {
    async fn get(&self, key: &str) -> R<Option<KeyValue>> {
        self.with(|i| i.data.get(key).cloned())
    }

    async fn get_prefix(&self, prefix: &str) -> R<(Vec<KeyValue>, i64)> {
        self.with(|i| {
            let kvs = i
                .data
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect();
            (kvs, i.revision)
        })
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> R<()> {
        self.with(|i| i.set(key, value, lease.unwrap_or(0)))
    }

    async fn put_many(&self, kvs: Vec<(String, Vec<u8>)>, lease: Option<i64>) -> R<()> {
        for chunk in kvs.chunks(PUT_BATCH) {
            self.with(|i| {
                for (k, v) in chunk {
                    i.set(k, v.clone(), lease.unwrap_or(0));
                }
            })?;
        }
        Ok(())
    }

    async fn create(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> R<bool> {
        self.with(|i| {
            if i.data.contains_key(key) {
                return false;
            }
            i.set(key, value, lease.unwrap_or(0));
            true
        })
    }

    async fn put_if_exists(&self, guard: &str, key: &str, value: Vec<u8>) -> R<bool> {
        self.with(|i| {
            if !i.data.contains_key(guard) {
                return false;
            }
            i.set(key, value, 0);
            true
        })
    }

    async fn delete(&self, key: &str) -> R<()> {
        self.with(|i| i.remove(key))
    }

    async fn delete_if_value(&self, key: &str, expected: &[u8]) -> R<bool> {
        self.with(|i| {
            if i.data.get(key).is_some_and(|kv| kv.value == expected) {
                i.remove(key);
                true
            } else {
                false
            }
        })
    }

    async fn delete_prefix(&self, prefix: &str) -> R<()> {
        self.with(|i| {
            let keys: Vec<String> = i
                .data
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect();
            for k in keys {
                i.remove(&k);
            }
        })
    }

    async fn grant_lease(&self, ttl: i64) -> R<i64> {
        self.with(|i| {
            i.next_lease += 1;
            let ttl = Duration::from_secs(ttl.max(1) as u64);
            i.leases.insert(i.next_lease, (ttl, Instant::now() + ttl));
            i.next_lease
        })
    }

    async fn keep_alive(&self, lease: i64) -> R<bool> {
        self.with(|i| match i.leases.get_mut(&lease) {
            Some((ttl, deadline)) => {
                *deadline = Instant::now() + *ttl;
                true
            }
            None => false,
        })
    }

    async fn revoke(&self, lease: i64) -> R<()> {
        self.with(|i| i.drop_lease(lease))
    }

    async fn watch_prefix(&self, prefix: &str, revision: i64) -> R<mpsc::Receiver<Event>> {
        let (utx, mut urx) = mpsc::unbounded_channel();
        self.with(|i| {
            // Changes after `revision` that are still visible are replayed as puts.
            for kv in i
                .data
                .values()
                .filter(|kv| kv.key.starts_with(prefix) && kv.mod_revision > revision)
            {
                let _ = utx.send(Event::Put(kv.clone()));
            }
            i.watchers.push((prefix.to_string(), utx));
        })?;
        let (tx, rx) = mpsc::channel(1024);
        let reachable = self.reachable.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    e = urx.recv() => match e {
                        Some(e) if reachable.load(Ordering::SeqCst) => {
                            if tx.send(e).await.is_err() {
                                return;
                            }
                        }
                        _ => return,
                    },
                    _ = tick.tick() => if !reachable.load(Ordering::SeqCst) {
                        return;
                    },
                }
            }
        });
        Ok(rx)
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

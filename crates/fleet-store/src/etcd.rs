//! [`EtcdStore`]: fleet's [`KvStore`] on etcd's v3 API (`etcd-client`), failing over
//! between members; TLS settings; the member list through an etcd v2 proxy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use hyper::body::Bytes;
use tokio::sync::mpsc;

use crate::kv::{Event, KeyValue, KvStore, StoreError, PUT_BATCH, R};

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

/// One HTTP/1.1 request to etcd's HTTP side (`http://host:port` only): (status, body).
async fn http(endpoint: &str, method: &str, path: &str, timeout: Duration) -> R<(u16, Vec<u8>)> {
    let fail = |reason: String| StoreError::Proxy {
        endpoint: endpoint.to_string(),
        reason,
    };
    let host = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| fail("not an http:// endpoint".into()))?
        .trim_end_matches('/');
    let body = http_exchange::request_tcp(host, method, path, Bytes::from_static(b"{}"), timeout)
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok((body.0.as_u16(), body.1.to_vec()))
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

    /// One transaction: `ops` if `guard` holds; whether it did. A failure names `op` and
    /// `key`.
    async fn guarded(
        &self,
        op: &'static str,
        key: &str,
        guard: Compare,
        ops: Vec<TxnOp>,
    ) -> R<bool> {
        let (at, mut client) = self.pick();
        let r = client
            .txn(Txn::new().when([guard]).and_then(ops))
            .await
            .map_err(self.err_at(at, op, key))?;
        Ok(r.succeeded())
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
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let guard = Compare::create_revision(key, CompareOp::Equal, 0);
        self.guarded("create", key, guard, vec![TxnOp::put(key, value, opts)])
            .await
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

    async fn create_with(
        &self,
        key: &str,
        value: Vec<u8>,
        also: Vec<(String, Vec<u8>)>,
    ) -> R<bool> {
        let mut ops = vec![TxnOp::put(key, value, None)];
        ops.extend(also.into_iter().map(|(k, v)| TxnOp::put(k, v, None)));
        let guard = Compare::create_revision(key, CompareOp::Equal, 0);
        self.guarded("create", key, guard, ops).await
    }

    async fn put_many_if_exists(&self, guard: &str, kvs: Vec<(String, Vec<u8>)>) -> R<bool> {
        let key = kvs.first().map_or(guard, |(k, _)| k.as_str()).to_string();
        let ops = kvs
            .into_iter()
            .map(|(k, v)| TxnOp::put(k, v, None))
            .collect();
        let exists = Compare::create_revision(guard, CompareOp::Greater, 0);
        self.guarded("put", &key, exists, ops).await
    }

    async fn delete_if_revision(&self, key: &str, mod_revision: i64) -> R<bool> {
        let guard = Compare::mod_revision(key, CompareOp::Equal, mod_revision);
        self.guarded("delete", key, guard, vec![TxnOp::delete(key, None)])
            .await
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
        let guard = Compare::value(key, CompareOp::Equal, expected.to_vec());
        self.guarded("delete", key, guard, vec![TxnOp::delete(key, None)])
            .await
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

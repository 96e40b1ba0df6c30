//! The key-value interface fleet needs ([`KvStore`]), its records and errors. Its
//! implementations: [`crate::etcd::EtcdStore`] (etcd's v3 API) and, with `test-support`,
//! `crate::memory::MemoryStore` (the same semantics in memory: revisions, leases that
//! expire, prefix watches, create-only and compare-and-swap writes) for unit tests and
//! simulations.

use std::future::Future;

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

pub(crate) type R<T> = Result<T, StoreError>;

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
    /// Sets `key` only if it does not exist, and with it (in the same transaction) every
    /// key in `also`; returns whether it did so.
    fn create_with(
        &self,
        key: &str,
        value: Vec<u8>,
        also: Vec<(String, Vec<u8>)>,
    ) -> impl Future<Output = R<bool>> + Send;
    /// Sets every key in `kvs` (one transaction) only if `guard` exists; returns whether it
    /// did so.
    fn put_many_if_exists(
        &self,
        guard: &str,
        kvs: Vec<(String, Vec<u8>)>,
    ) -> impl Future<Output = R<bool>> + Send;
    /// Deletes a key only if it was last written at `mod_revision`; returns whether it did.
    fn delete_if_revision(
        &self,
        key: &str,
        mod_revision: i64,
    ) -> impl Future<Output = R<bool>> + Send;
    /// Sets a key only if `guard` exists; returns whether it did so.
    fn put_if_exists(
        &self,
        guard: &str,
        key: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = R<bool>> + Send {
        self.put_many_if_exists(guard, vec![(key.to_string(), value)])
    }
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

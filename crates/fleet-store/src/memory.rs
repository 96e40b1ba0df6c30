//! [`MemoryStore`]: fleet's [`KvStore`] in memory, with etcd's semantics, for unit tests
//! and simulated clusters; a handle can be cut off as a partition cuts a machine off.
//! Time is Tokio's, so tests on paused time see leases expire when they advance it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::kv::{Event, KeyValue, KvStore, StoreError, PUT_BATCH, R};

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
    /// Prefix reads through this handle still to fail (see [`MemoryStore::fail_prefix_reads`]).
    failing_reads: Arc<AtomicU64>,
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
            failing_reads: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Another handle on the same data that can be cut off on its own.
    pub fn view(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            requests: self.requests.clone(),
            reachable: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            failing_reads: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Cuts this handle (and its clones) off, or joins it again. Cut off, every request
    /// fails and every watch opened through it ends.
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::SeqCst);
    }

    /// Makes the next `n` prefix reads through this handle (and its clones) fail as a cut
    /// would, everything else going through: a failure at one exact step.
    pub fn fail_prefix_reads(&self, n: u64) {
        self.failing_reads.store(n, Ordering::SeqCst);
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
        let fail = self
            .failing_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if fail.is_ok() {
            return Err(StoreError::CutOff);
        }
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

    async fn create_with(
        &self,
        key: &str,
        value: Vec<u8>,
        also: Vec<(String, Vec<u8>)>,
    ) -> R<bool> {
        self.with(|i| {
            if i.data.contains_key(key) {
                return false;
            }
            i.set(key, value, 0);
            for (k, v) in also {
                i.set(&k, v, 0);
            }
            true
        })
    }

    async fn put_many_if_exists(&self, guard: &str, kvs: Vec<(String, Vec<u8>)>) -> R<bool> {
        self.with(|i| {
            if !i.data.contains_key(guard) {
                return false;
            }
            for (k, v) in kvs {
                i.set(&k, v, 0);
            }
            true
        })
    }

    async fn delete_if_revision(&self, key: &str, mod_revision: i64) -> R<bool> {
        self.with(|i| {
            if i.data
                .get(key)
                .is_some_and(|kv| kv.mod_revision == mod_revision)
            {
                i.remove(key);
                true
            } else {
                false
            }
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

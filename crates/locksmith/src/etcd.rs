//! The reboot semaphore in etcd's v3 keyspace, where Flatcar's locksmith keeps it today:
//! key `coreos.com/updateengine/rebootlock/semaphore` (a group's:
//! `coreos.com/updateengine/rebootlock/groups/<group, query-escaped>/semaphore`), created
//! when missing by a transaction on version 0, changed only by a transaction that compares
//! the version it read (compare-and-swap). A swap lost to another writer is read and tried
//! again (bounded); the semaphore's own refusals are returned as they are.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions,
};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::semaphore::{Refused, Semaphore};

/// Where the semaphores live.
pub const KEY_PREFIX: &str = "coreos.com/updateengine/rebootlock";

/// locksmith's default endpoints.
pub const DEFAULT_ENDPOINTS: [&str; 2] = ["http://127.0.0.1:2379", "http://127.0.0.1:4001"];

/// How many lost compare-and-swaps an operation retries.
const SWAP_TRIES: u32 = 16;

/// A semaphore operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// etcd could not be reached or refused the request.
    #[error("etcd at {endpoints}: {op}: {source}")]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: etcd_client::Error,
    },
    /// No endpoint answered.
    #[error("no etcd endpoint answered ({endpoints}): {reason}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last failure.
        reason: String,
    },
    /// The key holds something that is not a semaphore.
    #[error("{key}: not a reboot semaphore: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The key is missing (deleted since it was created).
    #[error("{key}: no semaphore")]
    Missing {
        /// The key.
        key: String,
    },
    /// Other writers kept changing the semaphore.
    #[error("{key}: the semaphore kept changing under {SWAP_TRIES} attempts")]
    Contended {
        /// The key.
        key: String,
    },
    /// The semaphore refused.
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// Go's `url.QueryEscape` (a space is `+`).
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The key of `group`'s semaphore ("" is the default one).
pub fn key(group: &str) -> String {
    if group.is_empty() {
        format!("{KEY_PREFIX}/semaphore")
    } else {
        let escaped = utf8_percent_encode(group, QUERY)
            .to_string()
            .replace("%20", "+");
        format!("{KEY_PREFIX}/groups/{escaped}/semaphore")
    }
}

/// A connection to one group's semaphore.
pub struct LockClient {
    client: Client,
    key: String,
    endpoints: String,
}

impl std::fmt::Debug for LockClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockClient")
            .field("key", &self.key)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// `host:port` endpoints get `http://`, as etcd's Go client took them.
fn with_scheme(e: &str) -> String {
    if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

impl LockClient {
    /// Connects to the first of `endpoints` that answers (through an etcd v2 proxy, to
    /// the members behind it) and creates the semaphore if it is missing.
    pub async fn connect(
        endpoints: &[String],
        group: &str,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let all = endpoints
            .iter()
            .map(|e| with_scheme(e))
            .collect::<Vec<_>>()
            .join(",");
        let mut last = String::from("no endpoints");
        for endpoint in endpoints.iter().map(|e| with_scheme(e)) {
            let targets = match fleet_store::proxied_members(&endpoint, timeout).await {
                Ok(Some(members)) if !members.is_empty() => members,
                _ => vec![endpoint.clone()],
            };
            let opts = ConnectOptions::new()
                .with_connect_timeout(timeout)
                .with_timeout(timeout)
                .with_require_leader(true);
            match Client::connect(&targets, Some(opts)).await {
                Ok(mut client) => match client.status().await {
                    Ok(_) => {
                        let mut c = LockClient {
                            client,
                            key: key(group),
                            endpoints: targets.join(","),
                        };
                        c.init().await?;
                        return Ok(c);
                    }
                    Err(e) => last = format!("{endpoint}: {e}"),
                },
                Err(e) => last = format!("{endpoint}: {e}"),
            }
        }
        Err(Error::Unreachable {
            endpoints: all,
            reason: last,
        })
    }

    fn etcd(&self, op: &'static str) -> impl FnOnce(etcd_client::Error) -> Error + '_ {
        move |source| Error::Etcd {
            endpoints: self.endpoints.clone(),
            op,
            source,
        }
    }

    /// The key this client works on.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Creates the semaphore (one slot, no holders) unless it exists.
    pub async fn init(&mut self) -> Result<(), Error> {
        let txn = Txn::new()
            .when([Compare::version(self.key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                self.key.as_str(),
                Semaphore::default().to_json(),
                None,
            )]);
        let mut kv = self.client.kv_client();
        kv.txn(txn)
            .await
            .map_err(self.etcd("creating the semaphore"))?;
        Ok(())
    }

    /// The semaphore and the version of its key.
    pub async fn get(&mut self) -> Result<(Semaphore, i64), Error> {
        let mut kv = self.client.kv_client();
        let resp = kv
            .get(self.key.as_str(), None)
            .await
            .map_err(self.etcd("reading the semaphore"))?;
        let Some(kv) = resp.kvs().first() else {
            return Err(Error::Missing {
                key: self.key.clone(),
            });
        };
        let sem = serde_json::from_slice(kv.value()).map_err(|e| Error::Corrupt {
            key: self.key.clone(),
            reason: e.to_string(),
        })?;
        Ok((sem, kv.version()))
    }

    /// Reads, changes with `f`, writes back if nobody wrote in between; again if someone
    /// did. Returns what `f` returned.
    async fn update<T>(
        &mut self,
        mut f: impl FnMut(&mut Semaphore) -> Result<T, Refused>,
    ) -> Result<(T, Semaphore), Error> {
        for _ in 0..SWAP_TRIES {
            let (mut sem, version) = self.get().await?;
            let out = f(&mut sem)?;
            let txn = Txn::new()
                .when([Compare::version(
                    self.key.as_str(),
                    CompareOp::Equal,
                    version,
                )])
                .and_then([TxnOp::put(self.key.as_str(), sem.to_json(), None)]);
            let mut kv = self.client.kv_client();
            let resp = kv
                .txn(txn)
                .await
                .map_err(self.etcd("writing the semaphore"))?;
            if resp.succeeded() {
                return Ok((out, sem));
            }
        }
        Err(Error::Contended {
            key: self.key.clone(),
        })
    }

    /// Takes a slot for `id`.
    pub async fn lock(&mut self, id: &str) -> Result<(), Error> {
        self.update(|s| s.lock(id)).await.map(drop)
    }

    /// Gives `id`'s slot back.
    pub async fn unlock(&mut self, id: &str) -> Result<(), Error> {
        self.update(|s| s.unlock(id)).await.map(drop)
    }

    /// Sets the number of slots: (old maximum, the semaphore after).
    pub async fn set_max(&mut self, max: i64) -> Result<(i64, Semaphore), Error> {
        self.update(|s| Ok(s.set_max(max))).await
    }

    /// Waits until the semaphore's key changes (true) or `limit` passes (false).
    pub async fn wait_change(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let Ok(mut stream) = self
            .client
            .watch(self.key.as_str(), Some(WatchOptions::new()))
            .await
        else {
            tokio::time::sleep_until(deadline).await;
            return false;
        };
        // The first answer only says the watch was created.
        loop {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(resp))) if !resp.events().is_empty() => return true,
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None) | Err(_)) => {
                    tokio::time::sleep_until(deadline).await;
                    return false;
                }
                Err(_) => return false,
            }
        }
    }

    /// Every value the key held that etcd still keeps, oldest first (its history until
    /// the last compaction): (revision, semaphore).
    pub async fn history(&mut self) -> Result<Vec<(i64, Semaphore)>, Error> {
        let mut kv = self.client.kv_client();
        let resp = kv
            .get(self.key.as_str(), None)
            .await
            .map_err(self.etcd("reading the semaphore"))?;
        let Some(first) = resp.kvs().first() else {
            return Ok(Vec::new());
        };
        let (create, last) = (first.create_revision(), first.mod_revision());
        let mut out = Vec::new();
        let mut rev = last;
        // Walk back through the key's modifications (bounded).
        for _ in 0..10_000 {
            let resp = kv
                .get(
                    self.key.as_str(),
                    Some(GetOptions::new().with_revision(rev)),
                )
                .await
                .map_err(self.etcd("reading the semaphore's history"))?;
            let Some(v) = resp.kvs().first() else { break };
            let sem = serde_json::from_slice(v.value()).map_err(|e| Error::Corrupt {
                key: self.key.clone(),
                reason: e.to_string(),
            })?;
            out.push((v.mod_revision(), sem));
            if v.mod_revision() <= create {
                break;
            }
            rev = v.mod_revision() - 1;
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_locksmiths() {
        assert_eq!(key(""), "coreos.com/updateengine/rebootlock/semaphore");
        assert_eq!(
            key("lb"),
            "coreos.com/updateengine/rebootlock/groups/lb/semaphore"
        );
        assert_eq!(
            key("a b/c"),
            "coreos.com/updateengine/rebootlock/groups/a+b%2Fc/semaphore"
        );
    }
}

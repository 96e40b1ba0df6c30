//! flannel's keys in etcd's v2 keyspace, over the v2 keys HTTP API: the network config,
//! the leases under `<prefix>/subnets/`, and a long-poll watch of them.
//!
//! The v2 keyspace is where the book's `etcdctl set /coreos.com/network/config …` writes
//! (etcd 3 keeps v2 and v3 keys apart). Every request goes to one endpoint at a time,
//! starting with the one that answered last, and is bounded in time.

use std::time::Duration;

use hyper::body::Bytes;
use ipnet::Ipv4Net;
use serde_json::Value;

use crate::subnet::{self, Lease, LeaseAttrs};
use crate::Error;

/// etcd's "Key not found".
const NOT_FOUND: u64 = 100;
/// etcd's "Key already exists".
const EXISTS: u64 = 105;
/// etcd's "The event in requested index is outdated and cleared".
const CLEARED: u64 = 401;

/// flanneld's etcd, at `endpoints`, under `prefix`.
#[derive(Debug)]
pub struct Registry {
    /// `host:port` of each endpoint, in the order given.
    hosts: Vec<String>,
    /// The endpoints as given, for messages.
    endpoints: String,
    /// The key prefix, `/coreos.com/network` by default, without a trailing slash.
    prefix: String,
    /// Which host answered last.
    current: std::sync::atomic::AtomicUsize,
    /// The time limit of one request (a watch has its own).
    timeout: Duration,
}

/// An etcd v2 reply: the JSON body and the store's index (`X-Etcd-Index`).
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
    index: Option<u64>,
}

/// A change to the leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A lease created or renewed (etcd's create, set, update, compareAndSwap).
    Added(Lease),
    /// A lease deleted or expired.
    Removed(Ipv4Net),
}

/// What one watch poll brought.
#[derive(Debug)]
pub enum Watched {
    /// An event at `index`; `None` when it was not a lease flanneld can read (a bad
    /// key or value, logged).
    Event(Option<Event>, u64),
    /// Nothing within the poll's time.
    Quiet,
    /// etcd no longer has the history from the asked index: list again.
    Cleared,
}

impl Registry {
    /// A registry at `endpoints` (comma-separated `http://host:port` URLs).
    ///
    /// # Errors
    /// [`Error::Endpoint`] for an endpoint that is not `http://host:port`.
    pub fn new(endpoints: &str, prefix: &str, timeout: Duration) -> Result<Self, Error> {
        let hosts = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let rest = e.strip_prefix("http://").ok_or_else(|| Error::Endpoint {
                    endpoint: e.to_string(),
                    reason: if e.starts_with("https://") {
                        "TLS to etcd is not supported by this flanneld".into()
                    } else {
                        "not an http:// URL".into()
                    },
                })?;
                let host = rest.trim_end_matches('/');
                if host.is_empty() || host.contains('/') {
                    return Err(Error::Endpoint {
                        endpoint: e.to_string(),
                        reason: "expected http://host:port".into(),
                    });
                }
                Ok(if host.contains(':') {
                    host.to_string()
                } else {
                    format!("{host}:80")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if hosts.is_empty() {
            return Err(Error::Endpoint {
                endpoint: endpoints.to_string(),
                reason: "no endpoint given".into(),
            });
        }
        Ok(Self {
            hosts,
            endpoints: endpoints.to_string(),
            prefix: format!("/{}", prefix.trim_matches('/')),
            current: std::sync::atomic::AtomicUsize::new(0),
            timeout,
        })
    }

    /// The config key: `<prefix>/config`.
    #[must_use]
    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    fn subnets_key(&self) -> String {
        format!("{}/subnets", self.prefix)
    }

    /// The key of `subnet`'s lease.
    #[must_use]
    pub fn lease_key(&self, subnet: Ipv4Net) -> String {
        format!("{}/{}", self.subnets_key(), subnet::key_name(subnet))
    }

    /// One request, to each endpoint in turn until one answers. For a `long_poll`, an
    /// endpoint that connected but stayed silent for `timeout` has answered: nothing
    /// happened ([`Error::TimedOut`]); the other endpoints are not asked.
    async fn call(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        timeout: Duration,
        long_poll: bool,
    ) -> Result<Reply, Error> {
        let mut path = format!("/v2/keys{}", encode_key(key));
        if !query.is_empty() {
            let q = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query)
                .finish();
            path.push('?');
            path.push_str(&q);
        }
        let n = self.hosts.len();
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..n {
            let at = (start + i) % n;
            let host = &self.hosts[at];
            match http_exchange::request_tcp_response(host, method, &path, Bytes::new(), timeout)
                .await
            {
                Ok(resp) => {
                    self.current.store(at, std::sync::atomic::Ordering::Relaxed);
                    let index = resp
                        .headers()
                        .get("x-etcd-index")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    let status = resp.status().as_u16();
                    let body =
                        serde_json::from_slice(resp.body()).map_err(|e| Error::EtcdReply {
                            key: key.to_string(),
                            reason: format!("HTTP {status} with a body that is not JSON: {e}"),
                        })?;
                    return Ok(Reply {
                        status,
                        body,
                        index,
                    });
                }
                Err(http_exchange::Failure::TimedOut) if long_poll || n == 1 => {
                    return Err(Error::TimedOut {
                        key: key.to_string(),
                    })
                }
                Err(e) => failures.push(format!("{host}: {}", host_command::error_chain(&e))),
            }
        }
        Err(Error::Etcd {
            endpoints: self.endpoints.clone(),
            reason: failures.join("; "),
        })
    }

    /// The network config's text; `None` when the key does not exist.
    ///
    /// # Errors
    /// etcd unreachable or answering with an error other than "Key not found".
    pub async fn config(&self) -> Result<Option<String>, Error> {
        let key = self.config_key();
        let r = self.call("GET", &key, &[], self.timeout, false).await?;
        if error_code(&r.body) == Some(NOT_FOUND) {
            return Ok(None);
        }
        check(&key, &r)?;
        match r.body.pointer("/node/value") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::Config {
                key,
                reason: "a directory, not a value".into(),
            }),
        }
    }

    /// Every lease, and the index to watch after. Keys and values flanneld cannot read
    /// are returned apart (key, why), to be logged.
    ///
    /// # Errors
    /// etcd unreachable or answering with an error.
    pub async fn leases(&self) -> Result<(Vec<Lease>, Vec<(String, String)>, u64), Error> {
        let key = self.subnets_key();
        let r = self
            .call("GET", &key, &[("recursive", "true")], self.timeout, false)
            .await?;
        if error_code(&r.body) == Some(NOT_FOUND) {
            let index = r
                .body
                .get("index")
                .and_then(Value::as_u64)
                .or(r.index)
                .unwrap_or(0);
            return Ok((Vec::new(), Vec::new(), index));
        }
        check(&key, &r)?;
        let index = r.index.ok_or_else(|| Error::EtcdReply {
            key: key.clone(),
            reason: "no X-Etcd-Index header".into(),
        })?;
        let mut leases = Vec::new();
        let mut bad = Vec::new();
        let nodes = r
            .body
            .pointer("/node/nodes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for node in &nodes {
            let k = node.get("key").and_then(Value::as_str).unwrap_or_default();
            match lease_of(node) {
                Ok(l) => leases.push(l),
                Err(why) => bad.push((k.to_string(), why)),
            }
        }
        Ok((leases, bad, index))
    }

    /// Creates `subnet`'s lease only if no one holds it (`prevExist=false`): `false` when
    /// someone does.
    ///
    /// # Errors
    /// etcd unreachable or answering with another error.
    pub async fn create(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool, Error> {
        let (key, r) = self
            .put(subnet, attrs, ttl, &[("prevExist", "false")])
            .await?;
        if error_code(&r.body) == Some(EXISTS) {
            return Ok(false);
        }
        check(&key, &r).map(|()| true)
    }

    /// Writes `subnet`'s lease again with a fresh TTL.
    ///
    /// # Errors
    /// etcd unreachable or answering with an error.
    pub async fn renew(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<(), Error> {
        let (key, r) = self.put(subnet, attrs, ttl, &[]).await?;
        check(&key, &r)
    }

    /// `PUT` of `subnet`'s lease with `ttl` and `extra` conditions: the key and etcd's reply.
    async fn put(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        ttl: Duration,
        extra: &[(&str, &str)],
    ) -> Result<(String, Reply), Error> {
        let key = self.lease_key(subnet);
        let value = lease_value(attrs);
        let ttl = ttl.as_secs().to_string();
        let mut query = vec![("value", value.as_str()), ("ttl", ttl.as_str())];
        query.extend_from_slice(extra);
        let r = self.call("PUT", &key, &query, self.timeout, false).await?;
        Ok((key, r))
    }

    /// Deletes `subnet`'s lease (gone already is fine).
    ///
    /// # Errors
    /// etcd unreachable or answering with another error.
    pub async fn delete(&self, subnet: Ipv4Net) -> Result<(), Error> {
        let key = self.lease_key(subnet);
        let r = self.call("DELETE", &key, &[], self.timeout, false).await?;
        if error_code(&r.body) == Some(NOT_FOUND) {
            return Ok(());
        }
        check(&key, &r)
    }

    /// Waits up to `poll` for the first change of the leases after `after` (an etcd index).
    ///
    /// # Errors
    /// etcd unreachable or answering with an error other than a cleared history.
    pub async fn watch(&self, after: u64, poll: Duration) -> Result<Watched, Error> {
        let key = self.subnets_key();
        let wait = (after + 1).to_string();
        let r = match self
            .call(
                "GET",
                &key,
                &[
                    ("wait", "true"),
                    ("recursive", "true"),
                    ("waitIndex", &wait),
                ],
                poll,
                true,
            )
            .await
        {
            Err(Error::TimedOut { .. }) => return Ok(Watched::Quiet),
            other => other?,
        };
        if error_code(&r.body) == Some(CLEARED) {
            return Ok(Watched::Cleared);
        }
        check(&key, &r)?;
        let action = r
            .body
            .get("action")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let node = r.body.get("node").cloned().unwrap_or(Value::Null);
        let index = node
            .get("modifiedIndex")
            .and_then(Value::as_u64)
            .unwrap_or(after + 1);
        let k = node.get("key").and_then(Value::as_str).unwrap_or_default();
        let event = match action {
            "delete" | "expire" | "compareAndDelete" => subnet::parse_key(k).map(Event::Removed),
            _ => lease_of(&node).ok().map(Event::Added),
        };
        Ok(Watched::Event(event, index))
    }
}

/// The lease a v2 node holds, or why it is not one.
fn lease_of(node: &Value) -> Result<Lease, String> {
    let k = node.get("key").and_then(Value::as_str).unwrap_or_default();
    let subnet = subnet::parse_key(k).ok_or("not a lease key (A.B.C.D-LEN)")?;
    let value = node
        .get("value")
        .and_then(Value::as_str)
        .ok_or("a directory, not a lease")?;
    let attrs: LeaseAttrs =
        serde_json::from_str(value).map_err(|e| format!("not a lease's JSON: {e}"))?;
    Ok(Lease { subnet, attrs })
}

fn lease_value(attrs: &LeaseAttrs) -> String {
    // LeaseAttrs holds only strings, an address and JSON: serializing cannot fail.
    serde_json::to_string(attrs).unwrap_or_default()
}

fn error_code(body: &Value) -> Option<u64> {
    body.get("errorCode").and_then(Value::as_u64)
}

fn check(key: &str, r: &Reply) -> Result<(), Error> {
    if let Some(code) = error_code(&r.body) {
        let message = r.body.get("message").and_then(Value::as_str).unwrap_or("");
        let cause = r.body.get("cause").and_then(Value::as_str).unwrap_or("");
        return Err(Error::EtcdReply {
            key: key.to_string(),
            reason: format!("etcd error {code}: {message} ({cause})"),
        });
    }
    if !(200..300).contains(&r.status) {
        return Err(Error::EtcdReply {
            key: key.to_string(),
            reason: format!("HTTP {}", r.status),
        });
    }
    Ok(())
}

/// A key as a URL path: each segment percent-encoded.
fn encode_key(key: &str) -> String {
    key.split('/')
        .map(|seg| {
            form_urlencoded::byte_serialize(seg.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_keys() {
        let r = Registry::new(
            "http://127.0.0.1:4001, http://127.0.0.1:2379/,http://etcd",
            "/coreos.com/network/",
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(r.hosts, ["127.0.0.1:4001", "127.0.0.1:2379", "etcd:80"]);
        assert_eq!(r.config_key(), "/coreos.com/network/config");
        assert_eq!(
            r.lease_key("172.30.4.0/24".parse().unwrap()),
            "/coreos.com/network/subnets/172.30.4.0-24"
        );
        for bad in [
            "https://127.0.0.1:2379",
            "127.0.0.1:2379",
            "http://",
            "http://a/b",
            "",
        ] {
            assert!(
                Registry::new(bad, "/x", Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
        assert_eq!(encode_key("/a b/c?d"), "/a%20b/c%3Fd");
    }
}

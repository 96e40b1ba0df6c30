//! flannel as CoreOS shipped it (0.5), in Rust: each machine leases a subnet of the
//! cluster's overlay network from etcd and routes the other machines' subnets to them, so
//! docker containers on different machines reach each other by their own addresses.
//!
//! - [`config`]: the network config at `<prefix>/config` (flannel's JSON and defaults).
//! - [`subnet`]: lease keys and values, and the allocation rule.
//! - [`registry`]: those keys in etcd's v2 keyspace (where the book's `etcdctl set` writes).
//! - [`net`]: the kernel side through rtnetlink — the VXLAN device, and the routes,
//!   neighbour and FDB entries per remote lease (vxlan) or a route per remote (host-gw).
//! - [`iptables`]: forwarding for the overlay, and masquerade for traffic leaving it
//!   (`--ip-masq`).
//! - [`env`]: `/run/flannel/subnet.env` and `mk-docker-opts`' docker options.
//! - [`daemon`]: flanneld's startup and its one event loop (watch, renew, recheck, signals).
//!
//! Where this differs from flannel 0.5, on purpose: no `udp` backend (a config without a
//! Backend gets vxlan, where flannel picked udp); the vxlan data path is the kernel-only
//! one of later flannel versions (routes + permanent neighbours + FDB, no miss handling);
//! a lease's TTL can be shortened (`--subnet-lease-ttl`); TLS to etcd is refused.

pub mod config;
pub mod daemon;
pub mod env;
pub mod iptables;
pub mod net;
pub mod notify;
pub mod registry;
pub mod subnet;

/// What went wrong, naming the key, interface, file or command involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The network config is missing a field or has a bad one.
    #[error("network config at {key}: {reason}")]
    Config { key: String, reason: String },
    /// An etcd endpoint flanneld cannot use.
    #[error("etcd endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    /// No endpoint answered.
    #[error("etcd at {endpoints}: {reason}")]
    Etcd { endpoints: String, reason: String },
    /// The single endpoint did not answer in time.
    #[error("etcd did not answer in time about {key}")]
    TimedOut { key: String },
    /// etcd answered with an error.
    #[error("etcd about {key}: {reason}")]
    EtcdReply { key: String, reason: String },
    /// Every subnet is leased.
    #[error("network config at {key}: no free subnet left ({capacity} between SubnetMin and SubnetMax, all leased)")]
    Full { key: String, capacity: u64 },
    /// The external interface cannot be found or used.
    #[error("interface: {reason}")]
    Interface { reason: String },
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// A file or socket.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Writing a file atomically.
    #[error(transparent)]
    Write(atomic_file::Error),
    /// An env file that is not what flanneld writes.
    #[error("{path}: {reason}")]
    EnvFile { path: String, reason: String },
    /// A program (iptables) failed.
    #[error(transparent)]
    Command(host_command::CommandError),
}

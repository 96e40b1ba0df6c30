//! fleet's cluster state.
//!
//! [`kv::KvStore`] is the small interface fleet needs from etcd — gets, prefix reads,
//! create-only and compare-and-delete writes as transactions, leases, prefix watches — with
//! two implementations: [`kv::EtcdStore`] (etcd's v3 API through `etcd-client`) and
//! [`kv::MemoryStore`] (the same semantics in memory, for unit tests and simulated
//! clusters). [`registry::Registry`] lays fleet's keyspace on top of either, and
//! [`cache::ClusterCache`] keeps a watch-driven copy of jobs and machines.
//!
//! Invariant: this is the only crate in Ferrite that talks to etcd for fleet; everything
//! else goes through `Registry`.

pub mod cache;
pub mod kv;
pub mod registry;

#[cfg(feature = "test-support")]
pub mod testing;

pub use cache::{Change, ClusterCache};
pub use kv::{
    http1_exchange, proxied_members, EtcdStore, EtcdTls, Event, KeyValue, KvStore, MemoryStore,
    StoreError,
};
pub use registry::{
    JobFields, JobRecord, MachineFields, Registry, RegistryError, UnitState, DEFAULT_PREFIX,
};

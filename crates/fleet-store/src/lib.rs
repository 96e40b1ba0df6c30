//! fleet's cluster state.
//!
//! [`kv::KvStore`] is the small interface fleet needs from etcd — gets, prefix reads,
//! create-only and compare-and-delete writes as transactions, leases, prefix watches — with
//! two implementations: [`etcd::EtcdStore`] (etcd's v3 API through `etcd-client`, failing
//! over between members) and, with the `test-support` feature, `memory::MemoryStore` (the
//! same semantics in memory, for unit tests and simulated clusters).
//! [`registry::Registry`] lays fleet's keyspace on top of either, and
//! [`cache::ClusterCache`] keeps a watch-driven copy of jobs and machines. With
//! `test-support`, `testing` runs real etcd members on loopback ports for tests.
//!
//! Invariant: this is the only crate in Ferrite that talks to etcd for fleet; everything
//! else goes through `Registry`.

pub mod cache;
pub mod etcd;
pub mod kv;
#[cfg(feature = "test-support")]
pub mod memory;
pub mod registry;

#[cfg(feature = "test-support")]
pub mod testing;

pub use cache::{Change, ClusterCache};
pub use etcd::{proxied_members, EtcdStore, EtcdTls};
pub use kv::{Event, KeyValue, KvStore, StoreError};
#[cfg(feature = "test-support")]
pub use memory::MemoryStore;
pub use registry::{
    JobFields, JobRecord, MachineFields, Registry, RegistryError, UnitState, DEFAULT_PREFIX,
};

//! CoreOS cloud-config, as coreos-cloudinit v1.8.1 understood it.
//!
//! The pipeline, and where each step lives:
//!
//! 1. [`userdata`]: decompress gzip, classify (`#cloud-config`, `#!` script, Ignition, empty).
//! 2. [`validate`](mod@validate): the `-validate` rules with the original's messages (on the raw text).
//! 3. [`substitute`](mod@substitute): `$public_ipv4` and friends on the raw text, quirks included.
//! 4. [`yaml`] then [`config`]: parse with positions and YAML 1.1 scalars, decode into the
//!    typed [`CloudConfig`] with the original's silent-drop semantics, following [`schema`].
//! 5. [`apply`]: a [`apply::Plan`] in the original's order, then an all-or-nothing execution
//!    against a root directory, a [`apply::Host`] and a [`systemd_client::Systemd`].
//!
//! [`datasource`] fetches user-data and metadata; [`files`] renders the generated files;
//! [`accounts`] handles users, owners and SSH keys under a root.
//!
//! Invariants: validation and planning never write; every file written goes through
//! `atomic-file`; nothing here talks to systemd except through the `Systemd` trait.
//!
//! Current limitations: no `-convert-netconf` (provider network configs), no Azure, Packet,
//! CloudSigma, VMware or GCE datasources, no remote SSH key imports (all deprecated or
//! provider-specific).

pub mod accounts;
pub mod apply;
pub mod config;
pub mod datasource;
pub mod files;
pub mod host;
pub mod schema;
pub mod substitute;
pub mod userdata;
pub mod validate;
pub mod yaml;

pub use config::CloudConfig;
pub use substitute::{substitute, Addresses};
pub use validate::{validate, Report};

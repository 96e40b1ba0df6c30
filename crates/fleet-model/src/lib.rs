//! fleet's model of units and machines, shared by the engine, the agent, the API and
//! `fleetctl`.
//!
//! - [`name`]: the API's name validation (with fleet's messages) and fleetctl's mangling.
//! - [`requirements`]: `[X-Fleet]` options — `MachineID`, `MachineOf`, `MachineMetadata`,
//!   `Conflicts`, `Global`, `Replaces` and their deprecated `X-Condition…` spellings — with
//!   fleet's multi-value parsing, specifier expansion and validation messages.
//! - [`machine`]: identity, short IDs, metadata parsing.
//! - [`glob`]: Go's `path.Match`, used for `Conflicts` and `Replaces`.
//! - [`JobState`]: `inactive`, `loaded`, `launched`.
//!
//! Where fleet 0.11 and 1.0 differ, this follows 1.0 when 1.0 fixed a trap: unquoted
//! space-separated `Conflicts` are split, `Global` accepts yes/1/on/t, and `Global` may be
//! combined with `Conflicts`.
//!
//! Invariant: pure data and parsing; no I/O.

pub mod api;
pub mod glob;
pub mod machine;
pub mod name;
pub mod requirements;

pub use machine::Machine;
pub use requirements::Requirements;

use std::fmt;

/// A unit's desired (`target-state`) or current state in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum JobState {
    /// Known to fleet, not on any machine.
    #[default]
    Inactive,
    /// Loaded into systemd on a machine, not started.
    Loaded,
    /// Started (or start requested).
    Launched,
}

impl JobState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Inactive => "inactive",
            JobState::Loaded => "loaded",
            JobState::Launched => "launched",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "inactive" => Some(JobState::Inactive),
            "loaded" => Some(JobState::Loaded),
            "launched" => Some(JobState::Launched),
            _ => None,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

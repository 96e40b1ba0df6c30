//! systemd unit files, as systemd reads them.
//!
//! This crate is the one place in Ferrite that knows the unit-file format. Everything that
//! writes, reads, names or hashes a unit goes through it:
//!
//! - [`UnitFile`]: a lossless parser and writer. `UnitFile::parse(text)?.to_string() == text`
//!   for every file systemd accepts; the semantic view (sections, `Key=Value` entries with
//!   line continuations joined, `Key=` resetting a list) follows systemd's `conf-parser.c`.
//! - [`UnitName`]: validation of `name@instance.type`, templates and instances.
//! - [`escape`]: `systemd-escape` and `systemd-escape --path`, both directions.
//! - [`Specifiers`]: `%n %N %p %P %i %I %f %H %m %b %%` expansion, strict (systemd) or
//!   fleet-style (only `%n %N %p %i`, the rest left verbatim).
//! - [`dropin`]: `NAME.d/*.conf` discovery in systemd's priority and name order, and merging.
//! - [`fleet`]: fleet's canonical serialization and SHA-1 unit hash, identical to what fleet
//!   computed, so unit identity matches across a cluster.
//! - [`split_words`]/[`quote_word`]: systemd's word splitting with quotes and C escapes.
//!
//! Invariant: nothing in this crate does I/O except [`dropin::find_dropins`] and
//! [`dropin::load_with_dropins`], which only read.
//!
//! Current limitations: specifiers that need the running system beyond host name, machine
//! and boot ID (`%u %U %h %s %t %v %o %w …`) are reported as unknown.

pub mod dropin;
pub mod escape;
pub mod fleet;
mod name;
mod quote;
mod specifier;
mod unit_file;

pub use name::{UnitName, UnitNameError, UnitType, UNIT_NAME_MAX};
pub use quote::{quote_word, split_words, QuoteError};
pub use specifier::{SpecifierError, Specifiers};
pub use unit_file::{EditError, Entry, Line, ParseError, ParseProblem, UnitFile};

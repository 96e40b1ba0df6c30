//! fleet's view of a unit file: its option list, canonical form and SHA-1 hash.
//!
//! fleet identifies unit content by the SHA-1 of a *re-serialized* unit, not of the file's
//! bytes: comments and formatting vanish, continuations are joined with one space, option
//! order and repeats are kept, and a section header is written each time the section changes.
//! `fleetctl cat` prints that canonical text. This module reproduces fleet's (go-systemd's)
//! reader and writer exactly, so the same content gives the same hash on every machine.

use std::fmt;

use sha1::{Digest, Sha1};

/// One `Name=Value` option of a section, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitOption {
    /// The section name.
    pub section: String,
    /// The option name, trimmed.
    pub name: String,
    /// The value, continuations joined, trimmed.
    pub value: String,
}

/// Unit text that fleet's reader rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetParseError {
    /// `[Section` with no closing bracket.
    #[error("unable to find end of section")]
    UnterminatedSection,
    /// Text after `]` on a section line.
    #[error("found garbage after section name {0}")]
    GarbageAfterSection(String),
    /// A line break before the `=` of an option.
    #[error("unexpected newline encountered while parsing option name")]
    NewlineInName,
    /// The file ends in the middle of an option name.
    #[error("unexpected end of file while parsing option name")]
    EofInName,
}

/// Reads unit text into fleet's option list.
pub fn deserialize(text: &str) -> Result<Vec<UnitOption>, FleetParseError> {
    let mut opts = Vec::new();
    let mut rest = text;
    let mut section: Option<String> = None;
    loop {
        let mut chars = rest.chars();
        let Some(c) = chars.next() else {
            return Ok(opts);
        };
        let after = chars.as_str();
        if c == '[' {
            let end = after
                .find(']')
                .ok_or(FleetParseError::UnterminatedSection)?;
            let name = after[..end].to_string();
            let (line, tail) = split_eol(&after[end + 1..]);
            if !line.trim().is_empty() {
                return Err(FleetParseError::GarbageAfterSection(name));
            }
            section = Some(name);
            rest = tail;
        } else if c == '#' || c == ';' {
            rest = skip_comment(after);
        } else if section.is_none() || c.is_whitespace() {
            rest = after;
        } else {
            let eq = rest.find('=').ok_or(FleetParseError::EofInName)?;
            let name = &rest[..eq];
            if name.contains(['\n', '\r']) {
                return Err(FleetParseError::NewlineInName);
            }
            let mut value = String::new();
            let mut tail = &rest[eq + 1..];
            loop {
                let (line, next) = split_eol(tail);
                tail = next;
                match line.strip_suffix('\\') {
                    Some(cont) => {
                        value.push_str(cont);
                        value.push(' ');
                    }
                    None => {
                        value.push_str(line);
                        break;
                    }
                }
            }
            opts.push(UnitOption {
                section: section.clone().unwrap_or_default(),
                name: name.trim().to_string(),
                value: value.trim().to_string(),
            });
            rest = tail;
        }
    }
}

/// Splits off one line: (line without `\n`/`\r\n`, rest after the `\n`).
fn split_eol(s: &str) -> (&str, &str) {
    let (line, rest) = match s.find('\n') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    (line.strip_suffix('\r').unwrap_or(line), rest)
}

/// Skips a comment line; a comment ending in `\` continues onto the next line.
fn skip_comment(mut s: &str) -> &str {
    loop {
        let (line, rest) = split_eol(s);
        s = rest;
        if !line.trim_end_matches(' ').ends_with('\\') || rest.is_empty() {
            return s;
        }
    }
}

/// fleet's canonical text for an option list.
pub fn serialize(opts: &[UnitOption]) -> String {
    let mut out = String::new();
    let mut current: Option<&str> = None;
    for opt in opts {
        if current != Some(opt.section.as_str()) {
            if current.is_some() {
                out.push('\n');
            }
            out.push('[');
            out.push_str(&opt.section);
            out.push_str("]\n");
            current = Some(&opt.section);
        }
        out.push_str(&opt.name);
        out.push('=');
        out.push_str(&opt.value);
        out.push('\n');
    }
    out
}

/// An option that fleet's canonical text cannot carry: stored, it would read back as
/// something else (another option, another section) or not at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unit option {name:?} in section {section:?} cannot be stored: {reason}")]
pub struct OptionError {
    /// The section.
    pub section: String,
    /// The option name.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks that `opts` read back from their canonical text exactly as given: what a unit's
/// options must satisfy before they are stored.
pub fn check_round_trip(opts: &[UnitOption]) -> Result<(), OptionError> {
    for o in opts {
        let reason = if o.section.is_empty() {
            Some("the section name is empty")
        } else if o.section.contains(['[', ']']) {
            Some("the section name contains a bracket")
        } else if o.section.contains(['\n', '\r']) {
            Some("the section name contains a line break")
        } else if o.name.trim().is_empty() {
            Some("the option name is empty")
        } else if o.name.contains('=') {
            Some("the option name contains \"=\"")
        } else if o.name.contains(['\n', '\r']) {
            Some("the option name contains a line break")
        } else if o.name.starts_with(['[', '#', ';']) {
            Some("the option name starts with a character that begins a section or comment")
        } else if o.value.contains(['\n', '\r']) {
            Some("the value contains a line break")
        } else if o.name.trim() != o.name || o.value.trim() != o.value {
            Some("the name or value has leading or trailing white space")
        } else if o.value.ends_with('\\') {
            Some("the value ends with a backslash (a line continuation)")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(OptionError {
                section: o.section.clone(),
                name: o.name.clone(),
                reason,
            });
        }
    }
    // The rules above are what the reader needs; confirm with the reader itself.
    let back = deserialize(&serialize(opts)).unwrap_or_default();
    match opts.iter().zip(&back).position(|(a, b)| a != b) {
        None if back.len() == opts.len() => Ok(()),
        at => {
            let o = &opts[at.unwrap_or(back.len().min(opts.len().saturating_sub(1)))];
            Err(OptionError {
                section: o.section.clone(),
                name: o.name.clone(),
                reason: "it does not read back as given",
            })
        }
    }
}

/// A fleet unit hash: SHA-1 of the canonical text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitHash(pub [u8; 20]);

impl UnitHash {
    /// Hashes an option list.
    pub fn of_options(opts: &[UnitOption]) -> Self {
        Self(Sha1::digest(serialize(opts).as_bytes()).into())
    }

    /// Reads unit text and hashes it.
    pub fn of_text(text: &str) -> Result<Self, FleetParseError> {
        Ok(Self::of_options(&deserialize(text)?))
    }

    /// The 7-character short form `fleetctl` shows.
    pub fn short(&self) -> String {
        self.to_string()[..7].to_string()
    }

    /// Parses the 40-character hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 40 {
            return None;
        }
        let mut out = [0u8; 20];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for UnitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for UnitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnitHash({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/bash -c \"while true; do echo \\\"Hello, world\\\"; sleep 1; done\"\n";

    #[test]
    fn hello_service_hash_matches_fleet() {
        let h = UnitHash::of_text(HELLO).unwrap();
        assert_eq!(h.to_string(), "e55c0aeb44ba0b68004ceb8a200e685194448b45");
        assert_eq!(h.short(), "e55c0ae");
        assert_eq!(UnitHash::from_hex(&h.to_string()), Some(h));
        // Formatting and comments do not change the hash.
        let noisy = "# hello\n[Unit]\n  Description = Hello World  \n; x\n\n\n[Service]\nExecStart=/bin/bash -c \"while true; do echo \\\"Hello, world\\\"; \\\nsleep 1; done\"\n";
        let opts = deserialize(noisy).unwrap();
        assert_eq!(
            opts[1].value,
            "/bin/bash -c \"while true; do echo \\\"Hello, world\\\";  sleep 1; done\""
        );
    }

    #[test]
    fn options_that_cannot_round_trip_are_refused() {
        let o = |section: &str, name: &str, value: &str| UnitOption {
            section: section.into(),
            name: name.into(),
            value: value.into(),
        };
        assert_eq!(
            check_round_trip(&[o("Service", "ExecStart", "/bin/true")]),
            Ok(())
        );
        let refused = [
            o("Serv]ice", "ExecStart", "x"),
            o("Service", "Exec=Start", "x"),
            o("Service", "[Unit", "x"),
            o(
                "Service",
                "ExecStart",
                "x\n[Service]\nExecStartPre=/bin/evil",
            ),
            o("Service", "ExecStart", "x\\"),
            o("Service", "ExecStart", " x"),
        ];
        for bad in refused {
            let e = check_round_trip(std::slice::from_ref(&bad)).unwrap_err();
            assert_eq!(
                (e.section.as_str(), e.name.as_str()),
                (bad.section.as_str(), bad.name.as_str())
            );
            // Each of them really would come back as something else.
            let back = deserialize(&serialize(std::slice::from_ref(&bad)));
            assert_ne!(back, Ok(vec![bad.clone()]), "{bad:?}");
        }
        // fleet's reader would keep this one, but no systemd unit file can hold it.
        assert!(check_round_trip(&[o("Service\n", "ExecStart", "x")]).is_err());
        assert!(check_round_trip(&[o("", "ExecStart", "x")]).is_err());
        assert!(check_round_trip(&[o("Service", "", "x")]).is_err());
        assert_eq!(
            check_round_trip(&[o("Service", "ExecStart", "a\nb")]).unwrap_err().to_string(),
            "unit option \"ExecStart\" in section \"Service\" cannot be stored: the value contains a line break"
        );
    }

    #[test]
    fn canonical_form_repeats_sections() {
        let opts = deserialize("[A]\nx=1\n[B]\ny=2\n[A]\nz=3\nx=4").unwrap();
        assert_eq!(serialize(&opts), "[A]\nx=1\n\n[B]\ny=2\n\n[A]\nz=3\nx=4\n");
        assert_eq!(serialize(&[]), "");
    }

    #[test]
    fn reader_errors() {
        assert_eq!(
            deserialize("[Unit"),
            Err(FleetParseError::UnterminatedSection)
        );
        assert!(matches!(
            deserialize("[Unit] x\n"),
            Err(FleetParseError::GarbageAfterSection(_))
        ));
        assert_eq!(
            deserialize("[Unit]\nfoo\nbar=1"),
            Err(FleetParseError::NewlineInName)
        );
        assert_eq!(deserialize("[Unit]\nfoo"), Err(FleetParseError::EofInName));
    }
}

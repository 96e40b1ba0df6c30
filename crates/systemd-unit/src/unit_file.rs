//! The lossless unit-file model: every physical line is kept, so writing back gives the input.

use std::fmt;

/// One logical line of a unit file, with the exact text it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// An empty or whitespace-only line.
    Blank {
        /// The original text, line terminator included.
        raw: String,
    },
    /// A `#` or `;` comment line.
    Comment {
        /// The original text, line terminator included.
        raw: String,
    },
    /// A `[Section]` header.
    Section {
        /// The section name, between the brackets.
        name: String,
        /// The original text, line terminator included.
        raw: String,
    },
    /// A `Key=Value` assignment, possibly continued over several physical lines.
    Entry(Entry),
}

impl Line {
    /// The exact text of this line as it was read (or as it will be written).
    pub fn raw(&self) -> &str {
        match self {
            Line::Blank { raw } | Line::Comment { raw } | Line::Section { raw, .. } => raw,
            Line::Entry(e) => &e.raw,
        }
    }
}

/// A `Key=Value` assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, with surrounding whitespace removed.
    pub key: String,
    /// The value as systemd sees it: continuations joined (the backslash becomes a space),
    /// comment lines inside a continuation dropped, surrounding whitespace removed.
    pub value: String,
    /// The original text of all physical lines of the assignment.
    pub raw: String,
}

/// A unit file that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    /// 1-based line number of the offending (first physical) line.
    pub line: usize,
    /// What is wrong.
    pub problem: ParseProblem,
}

/// What is wrong with a unit-file line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseProblem {
    /// `[Section` without the closing bracket, or with text after it.
    #[error("invalid section header {0:?}")]
    InvalidSectionHeader(String),
    /// A line that is neither a comment, a section header nor an assignment.
    #[error("missing '=' in {0:?}")]
    MissingEquals(String),
    /// An assignment before the first section header.
    #[error("assignment {0:?} outside of any section")]
    OutsideSection(String),
    /// `=` with nothing before it.
    #[error("empty key in {0:?}")]
    EmptyKey(String),
    /// A line with a NUL byte.
    #[error("NUL byte in line")]
    Nul,
}

/// An edit that would produce a file systemd reads differently than intended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// Section names may not contain brackets or line breaks.
    #[error("invalid section name {0:?}")]
    InvalidSection(String),
    /// Keys must be non-empty, without `=`, whitespace or line breaks.
    #[error("invalid key {0:?}")]
    InvalidKey(String),
    /// Values may not contain line breaks nor end in a lone backslash (a continuation).
    #[error("invalid value for {key}: {value:?} contains a line break or ends in a backslash")]
    InvalidValue {
        /// The key being assigned.
        key: String,
        /// The rejected value.
        value: String,
    },
}

/// A systemd unit file (or drop-in), parsed losslessly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitFile {
    lines: Vec<Line>,
}

const WHITESPACE: &[char] = &[' ', '\t', '\n', '\r'];

fn is_comment_start(s: &str) -> bool {
    matches!(
        s.trim_start_matches(WHITESPACE).chars().next(),
        Some('#' | ';')
    )
}

/// True when `s` ends with a backslash that is not itself escaped.
fn ends_with_continuation(s: &str) -> bool {
    let mut escaped = false;
    for c in s.chars() {
        escaped = if escaped { false } else { c == '\\' };
    }
    escaped
}

/// Splits text into physical lines, each keeping its `\n`.
fn physical_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n')
}

fn strip_eol(raw: &str) -> &str {
    raw.strip_suffix('\n').unwrap_or(raw)
}

impl UnitFile {
    /// An empty unit file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses unit-file text the way systemd's `conf-parser` does.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut lines = Vec::new();
        let mut in_section = false;
        // (joined logical text, raw text, first line number)
        let mut pending: Option<(String, String, usize)> = None;
        for (idx, raw_line) in physical_lines(text).enumerate() {
            let lineno = idx + 1;
            let mut content = strip_eol(raw_line);
            if idx == 0 {
                content = content.strip_prefix('\u{feff}').unwrap_or(content);
            }
            if content.contains('\0') {
                return Err(ParseError {
                    line: lineno,
                    problem: ParseProblem::Nul,
                });
            }
            if is_comment_start(content) {
                match pending.as_mut() {
                    // A comment inside a continuation is skipped but kept in the raw text.
                    Some((_, raw, _)) => raw.push_str(raw_line),
                    None => lines.push(Line::Comment {
                        raw: raw_line.to_string(),
                    }),
                }
                continue;
            }
            let (mut joined, mut raw, first) = pending
                .take()
                .unwrap_or_else(|| (String::new(), String::new(), lineno));
            joined.push_str(content);
            raw.push_str(raw_line);
            if ends_with_continuation(&joined) {
                joined.pop();
                joined.push(' ');
                pending = Some((joined, raw, first));
                continue;
            }
            lines.push(Self::logical_line(&joined, raw, first, &mut in_section)?);
        }
        if let Some((joined, raw, first)) = pending {
            lines.push(Self::logical_line(&joined, raw, first, &mut in_section)?);
        }
        Ok(Self { lines })
    }

    fn logical_line(
        joined: &str,
        raw: String,
        lineno: usize,
        in_section: &mut bool,
    ) -> Result<Line, ParseError> {
        let err = |problem| ParseError {
            line: lineno,
            problem,
        };
        let l = joined.trim_matches(WHITESPACE);
        if l.is_empty() {
            return Ok(Line::Blank { raw });
        }
        if let Some(rest) = l.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| err(ParseProblem::InvalidSectionHeader(l.to_string())))?;
            *in_section = true;
            return Ok(Line::Section {
                name: name.to_string(),
                raw,
            });
        }
        let (key, value) = l
            .split_once('=')
            .ok_or_else(|| err(ParseProblem::MissingEquals(l.to_string())))?;
        let key = key.trim_matches(WHITESPACE);
        if key.is_empty() {
            return Err(err(ParseProblem::EmptyKey(l.to_string())));
        }
        if !*in_section {
            return Err(err(ParseProblem::OutsideSection(l.to_string())));
        }
        Ok(Line::Entry(Entry {
            key: key.to_string(),
            value: value.trim_matches(WHITESPACE).to_string(),
            raw,
        }))
    }

    /// All lines, in file order.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// Every assignment with the section it belongs to, in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        let mut section = "";
        self.lines.iter().filter_map(move |line| match line {
            Line::Section { name, .. } => {
                section = name;
                None
            }
            Line::Entry(e) => Some((section, e)),
            _ => None,
        })
    }

    /// Section names in order of first appearance (a section may be split in several blocks).
    pub fn sections(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for line in &self.lines {
            if let Line::Section { name, .. } = line {
                if !out.contains(&name.as_str()) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// The last value assigned to `key` in `section`, as systemd uses for single-valued keys.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.entries()
            .filter(|(s, e)| *s == section && e.key == key)
            .map(|(_, e)| e.value.as_str())
            .last()
    }

    /// All values assigned to a list-valued `key` in `section`; an empty assignment
    /// (`Key=`) clears what came before it, as systemd does.
    pub fn get_all(&self, section: &str, key: &str) -> Vec<&str> {
        let mut out = Vec::new();
        for (s, e) in self.entries() {
            if s == section && e.key == key {
                if e.value.is_empty() {
                    out.clear();
                } else {
                    out.push(e.value.as_str());
                }
            }
        }
        out
    }

    /// Appends `key=value` at the end of the last block of `section`, creating the section
    /// at the end of the file if it does not exist.
    pub fn push_entry(&mut self, section: &str, key: &str, value: &str) -> Result<(), EditError> {
        check_section(section)?;
        check_key(key)?;
        check_value(key, value)?;
        let entry = Line::Entry(Entry {
            key: key.to_string(),
            value: value.trim_matches(WHITESPACE).to_string(),
            raw: format!("{key}={value}\n"),
        });
        match self.section_insert_point(section) {
            Some(at) => {
                self.terminate_line_before(at);
                self.lines.insert(at, entry);
            }
            None => {
                self.terminate_last_line();
                if !self.lines.is_empty() && !matches!(self.lines.last(), Some(Line::Blank { .. }))
                {
                    self.lines.push(Line::Blank { raw: "\n".into() });
                }
                self.lines.push(Line::Section {
                    name: section.to_string(),
                    raw: format!("[{section}]\n"),
                });
                self.lines.push(entry);
            }
        }
        Ok(())
    }

    /// Replaces every assignment of `key` in `section` by a single `key=value`, kept at the
    /// position of the last one.
    pub fn set(&mut self, section: &str, key: &str, value: &str) -> Result<(), EditError> {
        let positions = self.entry_positions(section, key);
        match positions.split_last() {
            None => self.push_entry(section, key, value),
            Some((&last, earlier)) => {
                check_key(key)?;
                check_value(key, value)?;
                self.lines[last] = Line::Entry(Entry {
                    key: key.to_string(),
                    value: value.trim_matches(WHITESPACE).to_string(),
                    raw: format!("{key}={value}\n"),
                });
                for &i in earlier.iter().rev() {
                    self.lines.remove(i);
                }
                Ok(())
            }
        }
    }

    /// Removes every assignment of `key` in `section`; returns how many were removed.
    pub fn remove(&mut self, section: &str, key: &str) -> usize {
        let positions = self.entry_positions(section, key);
        for &i in positions.iter().rev() {
            self.lines.remove(i);
        }
        positions.len()
    }

    /// This file followed by each drop-in, as systemd reads a unit and its drop-ins: the
    /// assignments of later files come after (and so override or extend) earlier ones.
    pub fn merged<'a>(&self, dropins: impl IntoIterator<Item = &'a UnitFile>) -> UnitFile {
        let mut out = self.clone();
        for d in dropins {
            out.terminate_last_line();
            out.lines.extend(d.lines.iter().cloned());
        }
        out
    }

    fn entry_positions(&self, section: &str, key: &str) -> Vec<usize> {
        let mut current = None::<&str>;
        let mut out = Vec::new();
        for (i, line) in self.lines.iter().enumerate() {
            match line {
                Line::Section { name, .. } => current = Some(name),
                Line::Entry(e) if current == Some(section) && e.key == key => out.push(i),
                _ => {}
            }
        }
        out
    }

    /// Index just after the last entry or header of the last block of `section`.
    fn section_insert_point(&self, section: &str) -> Option<usize> {
        let mut current = None::<&str>;
        let mut point = None;
        for (i, line) in self.lines.iter().enumerate() {
            match line {
                Line::Section { name, .. } => {
                    current = Some(name);
                    if name == section {
                        point = Some(i + 1);
                    }
                }
                Line::Entry(_) if current == Some(section) => point = Some(i + 1),
                _ => {}
            }
        }
        point
    }

    fn terminate_line_before(&mut self, at: usize) {
        if let Some(prev) = at.checked_sub(1).and_then(|i| self.lines.get_mut(i)) {
            terminate(prev);
        }
    }

    fn terminate_last_line(&mut self) {
        if let Some(last) = self.lines.last_mut() {
            terminate(last);
        }
    }
}

fn terminate(line: &mut Line) {
    let raw = match line {
        Line::Blank { raw } | Line::Comment { raw } | Line::Section { raw, .. } => raw,
        Line::Entry(e) => &mut e.raw,
    };
    if !raw.ends_with('\n') {
        raw.push('\n');
    }
}

fn check_section(section: &str) -> Result<(), EditError> {
    if section.is_empty() || section.contains(['[', ']', '\n', '\r']) {
        return Err(EditError::InvalidSection(section.to_string()));
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), EditError> {
    if value.contains(['\n', '\r']) || ends_with_continuation(value) {
        return Err(EditError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), EditError> {
    if key.is_empty() || key.contains(['=', ' ', '\t', '\n', '\r']) || is_comment_start(key) {
        return Err(EditError::InvalidKey(key.to_string()));
    }
    Ok(())
}

impl fmt::Display for UnitFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            f.write_str(line.raw())?;
        }
        Ok(())
    }
}

impl std::str::FromStr for UnitFile {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_TCP: &str = "[Unit]\nDescription=Docker Socket for the API\n\n[Socket]\nListenStream=2375\nService=docker.service\nBindIPv6Only=both\n\n[Install]\nWantedBy=sockets.target\n";

    #[test]
    fn round_trips_and_reads_entries() {
        let u = UnitFile::parse(DOCKER_TCP).unwrap();
        assert_eq!(u.to_string(), DOCKER_TCP);
        assert_eq!(u.get("Socket", "ListenStream"), Some("2375"));
        assert_eq!(u.get("Install", "WantedBy"), Some("sockets.target"));
        assert_eq!(u.sections(), vec!["Unit", "Socket", "Install"]);
    }

    #[test]
    fn continuation_joins_with_a_space_and_skips_comments() {
        let text = "[Service]\nExecStart=/bin/echo a \\\n# a comment\n  b\\\n c\nUser=core";
        let u = UnitFile::parse(text).unwrap();
        assert_eq!(u.to_string(), text);
        assert_eq!(u.get("Service", "ExecStart"), Some("/bin/echo a    b  c"));
        assert_eq!(u.get("Service", "User"), Some("core"));
    }

    #[test]
    fn escaped_backslash_is_not_a_continuation() {
        let u = UnitFile::parse("[S]\nA=x\\\\\nB=y\n").unwrap();
        assert_eq!(u.get("S", "A"), Some("x\\\\"));
        assert_eq!(u.get("S", "B"), Some("y"));
    }

    #[test]
    fn comment_lines_do_not_continue() {
        let u = UnitFile::parse("[S]\n# note \\\nA=1\n").unwrap();
        assert_eq!(u.get("S", "A"), Some("1"));
    }

    #[test]
    fn empty_assignment_resets_a_list() {
        let u =
            UnitFile::parse("[Service]\nExecStart=/a\nExecStart=\nExecStart=/b\nExecStart=/c\n")
                .unwrap();
        assert_eq!(u.get_all("Service", "ExecStart"), vec!["/b", "/c"]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = UnitFile::parse("[Unit]\nDescription=x\nbogus line\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.to_string(), "line 3: missing '=' in \"bogus line\"");
        let e = UnitFile::parse("A=b\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1: assignment \"A=b\" outside of any section"
        );
        let e = UnitFile::parse("[Unit\n").unwrap_err();
        assert!(matches!(e.problem, ParseProblem::InvalidSectionHeader(_)));
    }

    #[test]
    fn crlf_and_bom_are_tolerated() {
        let text = "\u{feff}[Unit]\r\nDescription=x \r\n";
        let u = UnitFile::parse(text).unwrap();
        assert_eq!(u.get("Unit", "Description"), Some("x"));
        assert_eq!(u.to_string(), text);
    }

    #[test]
    fn edits() {
        let mut u = UnitFile::parse("[Unit]\nDescription=x\n\n[Service]\nExecStart=/a").unwrap();
        u.push_entry("Unit", "After", "network.target").unwrap();
        u.push_entry("Service", "Restart", "always").unwrap();
        u.push_entry("Install", "WantedBy", "multi-user.target")
            .unwrap();
        assert_eq!(
            u.to_string(),
            "[Unit]\nDescription=x\nAfter=network.target\n\n[Service]\nExecStart=/a\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n"
        );
        u.set("Service", "ExecStart", "/b").unwrap();
        assert_eq!(u.get_all("Service", "ExecStart"), vec!["/b"]);
        assert_eq!(u.remove("Unit", "After"), 1);
        assert!(u.push_entry("Unit", "Bad Key", "x").is_err());
        assert!(u.push_entry("Unit", "K", "a\nb").is_err());
        assert!(u.push_entry("Unit", "K", "a\\").is_err());
        u.push_entry("Unit", "K", "a\\\\").unwrap();
        assert!(u.push_entry("Un]it", "K", "a").is_err());
        let reparsed = UnitFile::parse(&u.to_string()).unwrap();
        assert_eq!(reparsed, u);
    }

    #[test]
    fn merged_dropins_override() {
        let base = UnitFile::parse("[Service]\nExecStart=/a\nUser=core").unwrap();
        let d = UnitFile::parse("[Service]\nUser=root\nExecStart=\nExecStart=/b\n").unwrap();
        let m = base.merged([&d]);
        assert_eq!(m.get("Service", "User"), Some("root"));
        assert_eq!(m.get_all("Service", "ExecStart"), vec!["/b"]);
    }
}

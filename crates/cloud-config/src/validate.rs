//! The `coreos-cloudinit -validate` rules, with the original's messages and kinds.
//!
//! Rules run in the original's order (discovery URL, write_files encoding, structure,
//! value validity, write_files paths, write_files under coreos) followed by Ferrite's own
//! checks. Deliberate differences from coreos-cloudinit v1.8.1, each tested:
//!
//! - Line numbers come from the YAML parser's own positions, not from a textual search, so
//!   keys after a PEM block or inside flow collections get their real line, and YAML syntax
//!   errors are reported on their 1-based line (an unclosed quote or bracket on the line
//!   where it opened).
//! - A YAML error gives one entry, without the original's spurious
//!   `line 0: warning: incorrect type for "" (want struct)`.
//! - Entries come sorted by line, then by rule, so the output is deterministic.
//! - An empty, null or non-scalar value for a field with allowed values (`command`,
//!   `permissions`, `reboot-strategy`, …) is an ordinary error entry, where the original
//!   validator crashed and dropped every other entry.
//! - New entries: `etcd2.discovery` is checked like `etcd.discovery`; duplicate keys (the
//!   last one wins silently in the original); `manage_etc_hosts` other than `localhost`
//!   (the original apply aborts on it); permissions that look like an octal mode written in
//!   decimal (`420` for `0644`, the YAML round-trip trap); `etcd2`/`etcd`/`fleet` configured
//!   but their service never started; invalid unit names and units without a name;
//!   `#!cloud-config`, which the original runs as a shell script.

use std::fmt;
use std::io::Read;
use std::sync::OnceLock;

use base64::Engine as _;
use regex::Regex;

use crate::schema::{self, Field, Ty};
use crate::userdata::{self, Kind as DataKind};
use crate::yaml::{self, Node, NodeKind, Resolved};

/// How serious an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The config is wrong.
    Error,
    /// The config is suspicious.
    Warning,
    /// A note.
    Info,
}

impl Kind {
    /// `error`, `warning` or `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Error => "error",
            Kind::Warning => "warning",
            Kind::Info => "info",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Severity.
    pub kind: Kind,
    /// 1-based line.
    pub line: usize,
    /// The message, e.g. `unrecognized key "fqdn"`.
    pub message: String,
    rule: Rule,
}

impl fmt::Display for Entry {
    /// `line N: kind: message`, as coreos-cloudinit prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.kind, self.message)
    }
}

impl Entry {
    /// The web validator's JSON form: `{"kind":"…","line":N,"message":"…"}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({"kind": self.kind.as_str(), "line": self.line, "message": self.message})
            .to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rule {
    Header,
    Yaml,
    Discovery,
    Encoding,
    Structure,
    Validity,
    WriteFilesPath,
    WriteFilesUnderCoreos,
    Ferrite,
}

/// The result of validating user-data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    entries: Vec<Entry>,
}

impl Report {
    /// The entries, sorted by line and rule.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// True when nothing was found (`-validate` exits 0).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when some entry is an error.
    pub fn has_errors(&self) -> bool {
        self.entries.iter().any(|e| e.kind == Kind::Error)
    }

    fn push(&mut self, rule: Rule, kind: Kind, line: usize, message: impl Into<String>) {
        self.entries.push(Entry {
            kind,
            line,
            message: message.into(),
            rule,
        });
    }

    fn finish(mut self) -> Self {
        self.entries.sort_by_key(|e| (e.line, e.rule));
        self.entries.dedup();
        self
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entries {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Validates user-data bytes (gzip-compressed data is decompressed first).
pub fn validate(data: &[u8]) -> Report {
    let mut r = Report::default();
    let data = match userdata::maybe_gunzip(data) {
        Ok(d) => d,
        Err(e) => {
            r.push(Rule::Header, Kind::Error, 1, e.to_string());
            return r;
        }
    };
    match userdata::classify(&data) {
        DataKind::Empty | DataKind::Ignition => {}
        DataKind::Script => {
            if userdata::first_line(&data).trim_ascii_end() == b"#!cloud-config" {
                r.push(
                    Rule::Header,
                    Kind::Warning,
                    1,
                    "\"#!cloud-config\" is run as a shell script; a cloud-config starts with \"#cloud-config\"",
                );
            }
        }
        DataKind::Unknown => r.push(
            Rule::Header,
            Kind::Error,
            1,
            "must be \"#cloud-config\" or begin with \"#!\"",
        ),
        DataKind::CloudConfig => validate_cloud_config(&data, &mut r),
    }
    r.finish()
}

fn validate_cloud_config(data: &[u8], r: &mut Report) {
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
    let root = match yaml::parse(data) {
        Ok(Some(root)) => root,
        Ok(None) => return,
        Err(e) => {
            r.push(Rule::Yaml, Kind::Error, e.line, e.message);
            return;
        }
    };
    check_discovery(&root, r);
    check_encoding(&root, r);
    check_structure(&root, root.line, &root_field(), "", r);
    check_validity(&root, &root_field(), r);
    check_write_files_paths(&root, r);
    check_write_files_under_coreos(&root, r);
    check_duplicates(&root, r);
    check_traps(&root, r);
}

fn root_field() -> Field {
    Field {
        key: "",
        ty: Ty::Struct(schema::CLOUD_CONFIG),
        env: None,
        deprecated: None,
        valid: None,
    }
}

/// The (key node, value node) for normalised `key` in a mapping; the last duplicate wins.
fn child<'a>(node: &'a Node, key: &str) -> Option<(&'a Node, &'a Node)> {
    node.mapping()?
        .iter()
        .rev()
        .find(|(k, _)| {
            k.key_text()
                .is_some_and(|t| schema::normalize_key(t) == key)
        })
        .map(|(k, v)| (k, v))
}

fn path<'a>(node: &'a Node, keys: &[&str]) -> Option<(&'a Node, &'a Node)> {
    let mut cur = (node, node);
    for k in keys {
        cur = child(cur.1, k)?;
    }
    Some(cur)
}

fn write_files_items(root: &Node) -> impl Iterator<Item = &Node> {
    child(root, "write_files")
        .and_then(|(_, v)| v.sequence())
        .into_iter()
        .flatten()
        .filter(|n| n.mapping().is_some())
}

fn scalar_text(node: &Node) -> Option<String> {
    let s = node.scalar()?;
    (s.resolved != Resolved::Null).then(|| s.string())
}

// --- discovery --------------------------------------------------------------------------

/// Go's `url.ParseRequestURI` acceptance, for the forms a discovery URL takes.
fn is_request_uri(s: &str) -> bool {
    if s.starts_with('/') {
        return true;
    }
    let Some(colon) = s.find(':') else {
        return false;
    };
    let scheme = &s[..colon];
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok || s.chars().any(|c| c.is_ascii_control()) {
        return false;
    }
    let rest = &s[colon + 1..];
    match rest.strip_prefix("//") {
        Some(after) => {
            let authority = after.split(['/', '?', '#']).next().unwrap_or("");
            let host = authority.rsplit('@').next().unwrap_or("");
            !host.contains([' ', '<', '>', '"', '{', '}', '|', '\\', '^', '`'])
        }
        None => true,
    }
}

fn check_discovery(root: &Node, r: &mut Report) {
    // coreos-cloudinit checked only the etcd 0.4 key; Ferrite checks etcd2's too.
    for section in ["etcd", "etcd2"] {
        if let Some((k, v)) = path(root, &["coreos", section, "discovery"]) {
            if let Some(url) = scalar_text(v) {
                if !url.is_empty() && !is_request_uri(&url) {
                    let rule = if section == "etcd" {
                        Rule::Discovery
                    } else {
                        Rule::Ferrite
                    };
                    r.push(rule, Kind::Warning, k.line, "discovery URL is not valid");
                }
            }
        }
    }
}

// --- encoding ---------------------------------------------------------------------------

/// Decodes `write_files` content as coreos-cloudinit does.
pub fn decode_content(content: &[u8], encoding: &str) -> Result<Vec<u8>, String> {
    let b64 = |data: &[u8]| -> Result<Vec<u8>, String> {
        let cleaned: Vec<u8> = data
            .iter()
            .copied()
            .filter(|&b| b != b'\n' && b != b'\r')
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(cleaned)
            .map_err(|e| format!("Unable to decode base64: {e}"))
    };
    let gunzip = |data: &[u8]| -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .take(userdata::MAX_DECOMPRESSED + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("Unable to decode gzip: {e}"))?;
        if out.len() as u64 > userdata::MAX_DECOMPRESSED {
            return Err("Unable to decode gzip: content too large".to_string());
        }
        Ok(out)
    };
    match encoding {
        "" => Ok(content.to_vec()),
        "b64" | "base64" => b64(content),
        "gz" | "gzip" => gunzip(content),
        "gz+base64" | "gzip+base64" | "gz+b64" | "gzip+b64" => gunzip(&b64(content)?),
        other => Err(format!("Unsupported encoding {other:?}")),
    }
}

fn check_encoding(root: &Node, r: &mut Report) {
    for item in write_files_items(root) {
        let Some((ek, ev)) = child(item, "encoding") else {
            continue;
        };
        let Some(encoding) = scalar_text(ev).filter(|e| !e.is_empty()) else {
            continue;
        };
        let (line, content) = match child(item, "content") {
            Some((ck, cv)) => (ck.line, cv.scalar().map(|s| s.bytes()).unwrap_or_default()),
            None => (ek.line, Vec::new()),
        };
        if decode_content(&content, &encoding).is_err() {
            r.push(
                Rule::Encoding,
                Kind::Error,
                line,
                format!("content cannot be decoded as {encoding:?}"),
            );
        }
    }
}

// --- structure --------------------------------------------------------------------------

fn compatible(node: &Node, ty: Ty) -> bool {
    match (&node.kind, ty) {
        (NodeKind::Scalar(s), Ty::Str) => s.resolved != Resolved::Null,
        (NodeKind::Scalar(s), Ty::Int) => matches!(s.resolved, Resolved::Int(_)),
        (NodeKind::Scalar(s), Ty::Float) => {
            matches!(s.resolved, Resolved::Int(_) | Resolved::Float(_))
        }
        (NodeKind::Scalar(s), Ty::Bool) => matches!(s.resolved, Resolved::Bool(_)),
        (NodeKind::Mapping(_), Ty::Struct(_)) => true,
        (NodeKind::Sequence(_), Ty::StrList | Ty::StructList(_)) => true,
        _ => false,
    }
}

/// Checks `node` against `field`; findings about the node itself are reported on `line`
/// (its key's line for mapping values, like the original).
fn check_structure(node: &Node, line: usize, field: &Field, name: &str, r: &mut Report) {
    if !compatible(node, field.ty) {
        r.push(
            Rule::Structure,
            Kind::Warning,
            line,
            format!("incorrect type for {name:?} (want {})", field.ty.name()),
        );
        return;
    }
    match field.ty {
        Ty::Struct(fields) => {
            for (k, v) in node.mapping().unwrap_or_default() {
                let Some(text) = k.key_text() else { continue };
                let key = schema::normalize_key(text);
                match schema::field(fields, &key) {
                    Some(f) => {
                        if let Some(note) = f.deprecated {
                            r.push(
                                Rule::Structure,
                                Kind::Warning,
                                k.line,
                                format!("deprecated key {key:?} ({note})"),
                            );
                        }
                        check_structure(v, k.line, f, &key, r);
                    }
                    None => r.push(
                        Rule::Structure,
                        Kind::Warning,
                        k.line,
                        format!("unrecognized key {key:?}"),
                    ),
                }
            }
        }
        Ty::StrList | Ty::StructList(_) => {
            let elem = match field.ty {
                Ty::StructList(fields) => Ty::Struct(fields),
                _ => Ty::Str,
            };
            for (i, item) in node.sequence().unwrap_or_default().iter().enumerate() {
                let f = Field { ty: elem, ..*field };
                check_structure(item, item.line, &f, &format!("{name}[{i}]"), r);
            }
        }
        Ty::Str | Ty::Int | Ty::Float | Ty::Bool => {}
    }
}

// --- validity ---------------------------------------------------------------------------

fn regex_for(pattern: &'static str) -> Option<&'static Regex> {
    static CACHE: OnceLock<Vec<(&'static str, Regex)>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        [
            "^(on|off|readonly)$",
            schema::REBOOT_STRATEGY_RE,
            schema::COMMAND_RE,
            schema::ENCODING_RE,
            schema::PERMISSIONS_RE,
        ]
        .into_iter()
        .chain(schema::LOCKSMITH.iter().filter_map(|f| f.valid))
        .filter_map(|p| Regex::new(p).ok().map(|re| (p, re)))
        .collect()
    });
    all.iter().find(|(p, _)| *p == pattern).map(|(_, re)| re)
}

/// Whether `value` is allowed by the field's pattern (`true` for fields without one).
pub fn value_is_valid(field: &Field, value: &str) -> bool {
    match field.valid {
        None => true,
        Some(p) => regex_for(p).is_some_and(|re| re.is_match(value)),
    }
}

fn check_validity(node: &Node, field: &Field, r: &mut Report) {
    match field.ty {
        Ty::Struct(fields) => {
            for (k, v) in node.mapping().unwrap_or_default() {
                let Some(text) = k.key_text() else { continue };
                let key = schema::normalize_key(text);
                let Some(f) = schema::field(fields, &key) else {
                    continue;
                };
                if f.valid.is_some() {
                    match &v.kind {
                        NodeKind::Scalar(s) if s.resolved == Resolved::Null => r.push(
                            Rule::Validity,
                            Kind::Error,
                            k.line,
                            format!("missing value for {key:?}"),
                        ),
                        NodeKind::Scalar(s) => {
                            let value = s.string();
                            if !value.is_empty() && !value_is_valid(f, &value) {
                                r.push(
                                    Rule::Validity,
                                    Kind::Error,
                                    k.line,
                                    format!("invalid value {value}"),
                                );
                            }
                        }
                        _ => r.push(
                            Rule::Validity,
                            Kind::Error,
                            k.line,
                            format!("invalid value for {key:?}: want a single value"),
                        ),
                    }
                }
                if matches!(v.kind, NodeKind::Mapping(_) | NodeKind::Sequence(_)) {
                    check_validity(v, f, r);
                }
            }
        }
        Ty::StructList(fields) => {
            let elem = Field {
                ty: Ty::Struct(fields),
                ..*field
            };
            for item in node.sequence().unwrap_or_default() {
                check_validity(item, &elem, r);
            }
        }
        _ => {}
    }
}

// --- write_files ------------------------------------------------------------------------

/// Go's `path.Clean`.
pub fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Go's `path.Dir`.
fn dir_of(p: &str) -> String {
    match p.rfind('/') {
        Some(i) => clean_path(&p[..=i]),
        None => ".".to_string(),
    }
}

fn check_write_files_paths(root: &Node, r: &mut Report) {
    for item in write_files_items(root) {
        if let Some((k, v)) = child(item, "path") {
            if let Some(p) = scalar_text(v) {
                if dir_of(&clean_path(&p)).starts_with("/usr") {
                    r.push(
                        Rule::WriteFilesPath,
                        Kind::Error,
                        k.line,
                        "file cannot be written to a read-only filesystem",
                    );
                }
            }
        }
    }
}

fn check_write_files_under_coreos(root: &Node, r: &mut Report) {
    if let Some((k, _)) = path(root, &["coreos", "write_files"]) {
        r.push(
            Rule::WriteFilesUnderCoreos,
            Kind::Info,
            k.line,
            "write_files doesn't belong under coreos",
        );
    }
}

// --- Ferrite's own checks ---------------------------------------------------------------

fn check_duplicates(node: &Node, r: &mut Report) {
    match &node.kind {
        NodeKind::Mapping(entries) => {
            let mut seen: Vec<(String, usize)> = Vec::new();
            for (k, v) in entries {
                if let Some(text) = k.key_text() {
                    let key = schema::normalize_key(text);
                    if let Some((_, first)) = seen.iter().find(|(s, _)| *s == key) {
                        r.push(
                            Rule::Ferrite,
                            Kind::Warning,
                            k.line,
                            format!("duplicate key {key:?}: this value replaces the one on line {first}"),
                        );
                    } else {
                        seen.push((key, k.line));
                    }
                }
                check_duplicates(v, r);
            }
        }
        NodeKind::Sequence(items) => items.iter().for_each(|i| check_duplicates(i, r)),
        NodeKind::Scalar(_) => {}
    }
}

/// True for modes people write: every digit 0 or 4–7, group ≤ owner, other ≤ group.
fn is_usual_mode(digits: &str) -> bool {
    let d: Vec<u32> = digits.chars().filter_map(|c| c.to_digit(10)).collect();
    if d.len() != digits.len() || !(3..=4).contains(&d.len()) {
        return false;
    }
    let d = &d[d.len() - 3..];
    d.iter().all(|x| matches!(x, 0 | 4..=7)) && d[0] >= 4 && d[1] <= d[0] && d[2] <= d[1]
}

fn check_traps(root: &Node, r: &mut Report) {
    if let Some((k, v)) = child(root, "manage_etc_hosts") {
        if let Some(value) = scalar_text(v).filter(|t| !t.is_empty() && t != "localhost") {
            r.push(
                Rule::Ferrite,
                Kind::Error,
                k.line,
                format!("manage_etc_hosts must be \"localhost\"; {value:?} makes coreos-cloudinit fail at boot"),
            );
        }
    }
    for item in write_files_items(root) {
        let Some((k, v)) = child(item, "permissions") else {
            continue;
        };
        let Some(s) = v.scalar() else { continue };
        if let Resolved::Int(n) = s.resolved {
            let decimal = s.text.chars().all(|c| c.is_ascii_digit()) && !s.text.starts_with('0');
            let octal = format!("{n:o}");
            if decimal && is_usual_mode(&octal) && !is_usual_mode(&s.text) {
                r.push(
                    Rule::Ferrite,
                    Kind::Warning,
                    k.line,
                    format!(
                        "permissions {} is 0{octal} written in decimal (a YAML round trip?); it is read as octal: quote the mode, e.g. permissions: '0{octal}'",
                        s.text
                    ),
                );
            }
        }
    }
    let units: Vec<&Node> = path(root, &["coreos", "units"])
        .and_then(|(_, v)| v.sequence())
        .unwrap_or_default()
        .iter()
        .filter(|n| n.mapping().is_some())
        .collect();
    let started = |service: &str| {
        units.iter().any(|u| {
            let named = child(u, "name")
                .and_then(|(_, v)| scalar_text(v))
                .as_deref()
                == Some(service);
            let command = child(u, "command")
                .and_then(|(_, v)| scalar_text(v))
                .unwrap_or_default();
            let enabled = child(u, "enable")
                .and_then(|(_, v)| v.scalar())
                .is_some_and(|s| s.resolved == Resolved::Bool(true));
            named
                && (enabled
                    || matches!(command.as_str(), "start" | "restart" | "reload-or-restart"))
        })
    };
    for (section, service) in [
        ("etcd", "etcd.service"),
        ("etcd2", "etcd2.service"),
        ("fleet", "fleet.service"),
    ] {
        if let Some((k, v)) = path(root, &["coreos", section]) {
            let configured = v.mapping().is_some_and(|m| !m.is_empty());
            if configured && !started(service) {
                r.push(
                    Rule::Ferrite,
                    Kind::Warning,
                    k.line,
                    format!("{section} is configured but {service} is never started (add a unit \"{service}\" with \"command: start\")"),
                );
            }
        }
    }
    check_names_and_paths(root, r);
    for u in &units {
        match child(u, "name").and_then(|(k, v)| Some((k, scalar_text(v)?))) {
            None => r.push(
                Rule::Ferrite,
                Kind::Warning,
                u.line,
                "unit has no name and is ignored",
            ),
            Some((k, name)) => {
                let network = name.ends_with(".network")
                    || name.ends_with(".netdev")
                    || name.ends_with(".link");
                if !network {
                    if let Err(e) = systemd_unit::UnitName::parse(&name) {
                        r.push(Rule::Ferrite, Kind::Error, k.line, e.to_string());
                    }
                }
            }
        }
    }
}

/// Whether Debian's `useradd` accepts `name`: letters, digits, `.`, `_` and `-`, not
/// starting with `-`, an optional trailing `$`, not all digits, not `.` or `..`, at most 32
/// characters (the utmp field).
pub fn useradd_accepts(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    let mut chars = body.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    first_ok
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 32
        && !body.chars().all(|c| c.is_ascii_digit())
        && body != "."
        && body != ".."
}

/// Ferrite's checks of what would fail only at apply time: user names `useradd` refuses,
/// and `write_files` paths that name no file.
fn check_names_and_paths(root: &Node, r: &mut Report) {
    let users = child(root, "users")
        .and_then(|(_, v)| v.sequence())
        .unwrap_or_default();
    for u in users {
        if let Some((k, name)) = child(u, "name").and_then(|(k, v)| Some((k, scalar_text(v)?))) {
            if !useradd_accepts(&name) {
                r.push(
                    Rule::Ferrite,
                    Kind::Error,
                    k.line,
                    format!(
                        "user name {name:?} is not one useradd accepts (letters, digits, '.', '_' and '-', not starting with '-', at most 32 characters)"
                    ),
                );
            }
        }
    }
    for item in write_files_items(root) {
        let Some((k, v)) = child(item, "path") else {
            continue;
        };
        let p = scalar_text(v).unwrap_or_default();
        let clean = clean_path(&p);
        if p.trim().is_empty() || clean == "/" || clean == "." || p.ends_with('/') {
            r.push(
                Rule::Ferrite,
                Kind::Error,
                k.line,
                format!("write_files path {p:?} names no file"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_useradd_accepts() {
        for ok in ["core", "web-1", "_svc", "a.b", "Admin", "m$", "0x"] {
            assert!(useradd_accepts(ok), "{ok}");
        }
        for bad in [
            "bad:name",
            "-x",
            "",
            "123",
            ".",
            "..",
            "a b",
            "a/b",
            &"a".repeat(33),
        ] {
            assert!(!useradd_accepts(bad), "{bad}");
        }
    }

    fn lines(s: &str) -> Vec<String> {
        validate(s.as_bytes())
            .entries()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn paths_like_go() {
        assert_eq!(clean_path("/tmp/../usr/foo"), "/usr/foo");
        assert_eq!(dir_of("/usr"), "/");
        assert_eq!(dir_of("etc/foo"), "etc");
        assert_eq!(clean_path("a/../../b"), "../b");
        assert_eq!(clean_path("/../x"), "/x");
    }

    #[test]
    fn request_uris() {
        assert!(is_request_uri(
            "https://discovery.etcd.io/00000000000000000000000000000000"
        ));
        assert!(is_request_uri("http://custom.domain/mytoken"));
        assert!(!is_request_uri("disco"));
        assert!(!is_request_uri("fire in the disco"));
        assert!(is_request_uri("/path"));
    }

    #[test]
    fn usual_modes() {
        assert!(is_usual_mode("644") && is_usual_mode("0755") && is_usual_mode("600"));
        assert!(!is_usual_mode("420") && !is_usual_mode("384") && !is_usual_mode("511"));
    }

    #[test]
    fn ferrite_checks() {
        assert_eq!(
            lines("#cloud-config\nwrite_files:\n  - path: /etc/a\n    permissions: 420\n"),
            vec!["line 4: warning: permissions 420 is 0644 written in decimal (a YAML round trip?); it is read as octal: quote the mode, e.g. permissions: '0644'"]
        );
        assert_eq!(
            lines("#cloud-config\ncoreos:\n  units:\n    - name: a.service\n      command:\n"),
            vec![
                "line 5: warning: incorrect type for \"command\" (want string)",
                "line 5: error: missing value for \"command\"",
            ]
        );
        assert_eq!(
            lines("#cloud-config\nhostname: a\nhostname: b\n"),
            vec!["line 3: warning: duplicate key \"hostname\": this value replaces the one on line 2"]
        );
        assert_eq!(
            lines("#cloud-config\ncoreos:\n  units:\n    - name: foo\n    - command: start\n"),
            vec![
                "line 4: error: unit name \"foo\" has no type suffix (like .service)",
                "line 5: warning: unit has no name and is ignored",
            ]
        );
        assert_eq!(lines("#!cloud-config\n").len(), 1);
    }
}

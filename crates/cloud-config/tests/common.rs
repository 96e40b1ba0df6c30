//! Shared helpers for the fixture-driven tests.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods
)]

use std::path::PathBuf;

/// The repository's `fixtures/cloud-config` directory.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/cloud-config")
}

/// Reads a fixture file as text.
pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap()
}

/// Undoes the escaping of an input cell of `cases.md`: `\n`, `\t`, `\r`, `\"`, `\|`, `\\`.
pub fn unescape(cell: &str) -> String {
    let mut out = String::new();
    let mut chars = cell.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// The cells of a Markdown table row (split on `|` not preceded by `\`).
pub fn cells(row: &str) -> Vec<String> {
    let row = row.trim().trim_start_matches('|');
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev = ' ';
    for c in row.chars() {
        if c == '|' && prev != '\\' {
            out.push(cur.trim().to_string());
            cur.clear();
        } else {
            cur.push(c);
        }
        prev = c;
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// The text between the first pair of backticks.
pub fn code(cell: &str) -> Option<String> {
    let start = cell.find('`')?;
    let end = cell[start + 1..].find('`')? + start + 1;
    Some(cell[start + 1..end].to_string())
}

/// The entries of an expectation cell: each `` `line …` `` item, none for *(no entries)*.
pub fn entries(cell: &str) -> Vec<String> {
    cell.split("<br>")
        .filter_map(|part| {
            let part = part.trim();
            part.starts_with('`').then(|| code(part)).flatten()
        })
        .collect()
}

//! Hostile YAML: alias bombs of long strings are refused before they expand, with an error
//! naming the limit (the host parses user-data with the same code as the machines).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::Instant;

use cloud_config::yaml::{parse, MAX_ALIAS_BYTES};

/// A `len`-character anchored string, then `levels` levels of nine aliases each.
fn bomb(len: usize, levels: usize) -> String {
    let mut doc = format!("#cloud-config\nl0: &l0 \"{}\"\n", "x".repeat(len));
    for l in 1..=levels {
        let items = vec![format!("*l{}", l - 1); 9].join(", ");
        doc.push_str(&format!("l{l}: &l{l} [{items}]\n"));
    }
    doc
}

#[test]
fn alias_bombs_of_long_strings_are_refused_before_they_expand() {
    for len in [100_000, 1_000_000] {
        let doc = bomb(len, 5);
        let start = Instant::now();
        let e = parse(doc.as_bytes()).unwrap_err();
        eprintln!(
            "{} KB alias bomb refused in {:.1} ms: {e}",
            doc.len() / 1000,
            start.elapsed().as_secs_f64() * 1e3
        );
        assert!(
            e.message.contains(&MAX_ALIAS_BYTES.to_string()) && e.message.contains("limit"),
            "{e}"
        );
        // validate reports it as an error of the document, not a panic or an abort.
        let report = cloud_config::validate(doc.as_bytes());
        assert!(report.has_errors(), "{report}");
    }
}

#[test]
fn modest_aliases_still_work() {
    // Real configs reuse blocks with anchors: well under the limit, they parse.
    let doc = bomb(1_000, 2);
    assert!(parse(doc.as_bytes()).unwrap().is_some());
}

#[test]
fn what_apply_would_fail_on_is_a_validation_error() {
    for (doc, want) in [
        (
            "#cloud-config\nusers:\n  - name: bad:name\n",
            "line 3: error: user name \"bad:name\" is not one useradd accepts",
        ),
        (
            "#cloud-config\nwrite_files:\n  - path: \"\"\n    content: x\n",
            "line 3: error: write_files path \"\" names no file",
        ),
        (
            "#cloud-config\nwrite_files:\n  - path: /\n    content: x\n",
            "line 3: error: write_files path \"/\" names no file",
        ),
    ] {
        let report = cloud_config::validate(doc.as_bytes()).to_string();
        assert!(report.contains(want), "{doc}: {report}");
    }
}

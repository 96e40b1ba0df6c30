//! Every validator vector of `fixtures/cloud-config/cases.md` (sections A, B and C) and every
//! fixture file, checked against coreos-cloudinit v1.8.1's result, up to Ferrite's documented
//! improvements (see `validate.rs` and `docs/cloud-config.md`), each listed below with why.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use common::{cells, code, entries, fixture, fixtures, unescape};

/// Where Ferrite deliberately differs, the whole expected report. Keyed by the case's input
/// (section A), probe name (B) or file name (C).
const DIFFERENCES: &[(&str, &[&str], &str)] = &[
    // YAML errors: 1-based lines, and no spurious `line 0` entry.
    ("\t", &["line 2: error: found character that cannot start any token"], "1-based YAML error line"),
    ("a:\na", &["line 3: error: could not find expected ':'"], "the unfinished key's line"),
    ("#hello\na:\na", &["line 4: error: could not find expected ':'"], "the unfinished key's line"),
    ("yaml-tab", &["line 3: error: found character that cannot start any token"], "the tab's line"),
    ("yaml-bad-indent", &["line 4: error: did not find expected '-' indicator"], "the misindented line"),
    ("yaml-unclosed-quote", &["line 2: error: found unexpected end of stream"], "where the quote opened"),
    ("yaml-percent", &["line 2: error: found character that cannot start any token"], "the % line"),
    ("yaml-at", &["line 4: error: found character that cannot start any token"], "the @ line"),
    (
        "flannel-template-braces",
        &["line 4: error: invalid map key: map[interface {}]interface {}{\"ETCD_ENDPOINTS\":interface {}(nil)}"],
        "the key's real line instead of 1",
    ),
    ("oem-vagrant-cloud-config.yml", &["line 22: error: found character that cannot start any token"], "the @@ line"),
    // Real positions instead of the textual search.
    ("line-heuristic-content", &["line 6: error: invalid value 0999"], "the real permissions key"),
    // New checks.
    (
        "coreos:\n  units:\n    - command: start\n    - name: stop",
        &["line 4: warning: unit has no name and is ignored", "line 5: error: unit name \"stop\" has no type suffix (like .service)"],
        "units without a name, invalid unit names",
    ),
    (
        "coreos:\n  units:\n    - command: lol",
        &["line 4: error: invalid value lol", "line 4: warning: unit has no name and is ignored"],
        "units without a name",
    ),
    (
        "coreos:\n  units:\n    - enable: true",
        &["line 4: warning: unit has no name and is ignored"],
        "units without a name",
    ),
    ("coreos:\n  units:\n    - enable: 4", &["line 4: warning: incorrect type for \"enable\" (want bool)", "line 4: warning: unit has no name and is ignored"], "units without a name"),
    ("coreos:\n  units:\n    - enable: bad", &["line 4: warning: incorrect type for \"enable\" (want bool)", "line 4: warning: unit has no name and is ignored"], "units without a name"),
    ("coreos:\n  units:\n    - enable:\n        bad:", &["line 4: warning: incorrect type for \"enable\" (want bool)", "line 4: warning: unit has no name and is ignored"], "units without a name"),
    ("coreos:\n  units:\n    - enable:\n      - bad", &["line 4: warning: incorrect type for \"enable\" (want bool)", "line 4: warning: unit has no name and is ignored"], "units without a name"),
    (
        "perm-420",
        &["line 4: warning: permissions 420 is 0644 written in decimal (a YAML round trip?); it is read as octal: quote the mode, e.g. permissions: '0644'"],
        "the YAML round-trip trap",
    ),
    (
        "perm-384",
        &["line 4: error: invalid value 384", "line 4: warning: permissions 384 is 0600 written in decimal (a YAML round trip?); it is read as octal: quote the mode, e.g. permissions: '0600'"],
        "the YAML round-trip trap",
    ),
    (
        "null-path",
        &["line 3: warning: incorrect type for \"path\" (want string)", "line 3: error: write_files path \"\" names no file"],
        "apply would fail: a file needs a path",
    ),
    ("manage-etc-hosts-true", &["line 2: error: manage_etc_hosts must be \"localhost\"; \"true\" makes coreos-cloudinit fail at boot"], "apply would fail"),
    ("manage-etc-hosts-foo", &["line 2: error: manage_etc_hosts must be \"localhost\"; \"foo\" makes coreos-cloudinit fail at boot"], "apply would fail"),
    (
        "docs-exoscale-fqdn.yaml",
        &["line 3: error: manage_etc_hosts must be \"localhost\"; \"true\" makes coreos-cloudinit fail at boot", "line 4: warning: unrecognized key \"fqdn\""],
        "apply would fail",
    ),
    ("etcd2-discovery-invalid", &["line 4: warning: discovery URL is not valid", "line 3: warning: etcd2 is configured but etcd2.service is never started (add a unit \"etcd2.service\" with \"command: start\")"], "etcd2.discovery is checked; etcd2 never started"),
    ("duplicate-keys", &["line 3: warning: duplicate key \"hostname\": this value replaces the one on line 2"], "duplicate keys"),
    (
        "coreos-vagrant-user-data.sample-2015.yaml",
        &["line 11: warning: etcd2 is configured but etcd2.service is never started (add a unit \"etcd2.service\" with \"command: start\")"],
        "the sample configures etcd2 but starts etcd",
    ),
    (
        "null-unit-bool",
        &["line 4: error: unit name \"a\" has no type suffix (like .service)", "line 5: warning: incorrect type for \"enable\" (want bool)"],
        "invalid unit names",
    ),
];

/// Sections whose services are configured without being started only because the probe is a
/// fragment: the new "never started" warning is expected on top of the original's entries.
const NEVER_STARTED: &[(&str, &str)] = &[
    ("etcd", "etcd.service"),
    ("etcd2", "etcd2.service"),
    ("fleet", "fleet.service"),
];

fn ferrite_report(input: &str) -> Vec<String> {
    cloud_config::validate(input.as_bytes())
        .entries()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The original's expectation with the documented automatic differences applied: the
/// `line 0` artefact is dropped, and the "never started" warning added for fragments that
/// configure etcd, etcd2 or fleet without starting them.
fn expected(input: &str, original: Vec<String>) -> Vec<String> {
    let mut want: Vec<String> = original
        .into_iter()
        .filter(|e| e != "line 0: warning: incorrect type for \"\" (want struct)")
        .collect();
    for (section, service) in NEVER_STARTED {
        let needle = format!("\n  {section}:\n    ");
        if let Some(pos) = input.find(&needle) {
            if !input.contains(&format!("name: {service}")) {
                let line = input[..pos].matches('\n').count() + 2;
                want.push(format!(
                    "line {line}: warning: {section} is configured but {service} is never started (add a unit \"{service}\" with \"command: start\")"
                ));
            }
        }
    }
    want
}

fn check(id: &str, input: &str, original: Vec<String>, failures: &mut Vec<String>) {
    let got = ferrite_report(input);
    let want: Vec<String> = match DIFFERENCES.iter().find(|(k, _, _)| *k == id) {
        Some((_, w, _)) => w.iter().map(|s| s.to_string()).collect(),
        None => expected(input, original),
    };
    let mut g = got.clone();
    let mut w = want.clone();
    g.sort();
    w.sort();
    if g != w {
        failures.push(format!(
            "{id:?}\n  input: {input:?}\n  want: {want:#?}\n  got:  {got:#?}"
        ));
    }
    // Deterministic order: by line.
    let lines: Vec<usize> = got
        .iter()
        .map(|e| {
            e["line ".len()..]
                .split(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        lines.windows(2).all(|p| p[0] <= p[1]),
        "{id}: not sorted: {got:?}"
    );
}

fn section<'a>(doc: &'a str, start: &str, end: &str) -> &'a str {
    let s = doc.find(start).unwrap();
    let e = doc[s..].find(end).map_or(doc.len(), |e| s + e);
    &doc[s..e]
}

#[test]
fn section_a_upstream_unit_tests() {
    let doc = fixture("cases.md");
    let a = section(&doc, "## A.", "## B.");
    let mut failures = Vec::new();
    let mut n = 0;
    for row in a.lines().filter(|l| l.starts_with("| Test")) {
        let c = cells(row);
        let input = unescape(&code(&c[1]).unwrap());
        let full = if c[0] == "TestValidate" {
            input.clone()
        } else {
            format!("#cloud-config\n{input}")
        };
        check(&input, &full, entries(&c[3]), &mut failures);
        n += 1;
    }
    assert!(n >= 70, "only {n} rows read");
    assert!(
        failures.is_empty(),
        "{} of {n} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn section_b_probes() {
    let doc = fixture("cases.md");
    let b = section(&doc, "## B.", "## C.");
    let mut failures = Vec::new();
    let mut n = 0;
    for row in b
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| probe"))
    {
        let c = cells(row);
        if c.len() < 3 || c[0].starts_with("---") {
            continue;
        }
        let input = unescape(&code(&c[1]).unwrap_or_default());
        check(&c[0], &input, entries(&c[2]), &mut failures);
        n += 1;
    }
    assert!(n >= 80, "only {n} probes read");
    assert!(
        failures.is_empty(),
        "{} of {n} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn section_c_fixture_files() {
    let doc = fixture("cases.md");
    let c_sec = section(&doc, "## C.", "Observations from section C");
    let mut failures = Vec::new();
    let mut seen = Vec::new();
    for row in c_sec.lines().filter(|l| l.starts_with("| `")) {
        let c = cells(row);
        let file = code(&c[0]).unwrap();
        let input = fixture(&file);
        check(&file, &input, entries(&c[3]), &mut failures);
        seen.push(file);
    }
    // Every fixture file in the folder is covered by the table.
    for e in std::fs::read_dir(fixtures()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".sh") {
            assert!(
                seen.contains(&name),
                "{name} has no expectation in cases.md"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_documented_difference_is_used() {
    let doc = fixture("cases.md");
    for (id, _, why) in DIFFERENCES {
        let escaped = id.replace('\n', "\\n").replace('\t', "\\t");
        assert!(
            doc.contains(&format!("| {id} |"))
                || doc.contains(&format!("`{escaped}`"))
                || doc.contains(&format!("`{id}`")),
            "difference {id:?} ({why}) matches no case"
        );
    }
}

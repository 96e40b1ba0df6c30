//! Property tests: the parsers never panic and round-trip what they accept.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use proptest::prelude::*;
use systemd_unit::{escape, fleet, quote_word, split_words, UnitFile, UnitName};

fn unitish() -> impl Strategy<Value = String> {
    // Text built from the characters that matter to the grammar, plus anything.
    let atoms = prop_oneof![
        Just("[".to_string()),
        Just("]".to_string()),
        Just("=".to_string()),
        Just("\\".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("#".to_string()),
        Just(";".to_string()),
        Just(" ".to_string()),
        Just("\t".to_string()),
        Just("\"".to_string()),
        Just("[Service]\n".to_string()),
        Just("ExecStart=".to_string()),
        "[a-zA-Z0-9]{1,6}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(atoms, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn parser_never_panics_and_round_trips(text in unitish()) {
        if let Ok(u) = UnitFile::parse(&text) {
            prop_assert_eq!(u.to_string(), text.clone());
            // Re-parsing the output gives the same model.
            prop_assert_eq!(UnitFile::parse(&u.to_string()).unwrap(), u);
        }
        let _ = fleet::deserialize(&text);
        let _ = split_words(&text);
        let _ = UnitName::parse(&text);
    }

    #[test]
    fn options_accepted_as_storable_read_back(
        opts in prop::collection::vec(("[ -~\n]{0,6}", "[ -~\n\r]{0,6}", "[ -~\n\\\\]{0,8}"), 0..5)
    ) {
        let opts: Vec<fleet::UnitOption> = opts
            .into_iter()
            .map(|(section, name, value)| fleet::UnitOption { section, name, value })
            .collect();
        if fleet::check_round_trip(&opts).is_ok() {
            prop_assert_eq!(fleet::deserialize(&fleet::serialize(&opts)).unwrap(), opts);
        }
    }

    #[test]
    fn arbitrary_strings_do_not_panic(text in any::<String>()) {
        let _ = UnitFile::parse(&text);
        let _ = fleet::deserialize(&text);
        let _ = escape::unescape(&text);
        let _ = escape::escape_path(&text);
    }

    #[test]
    fn generated_units_read_back(
        sections in prop::collection::vec(
            ("[A-Z][A-Za-z-]{0,8}", prop::collection::vec(("[A-Za-z][A-Za-z0-9]{0,8}", "[ -~]{0,20}"), 0..6)),
            1..5,
        )
    ) {
        let mut u = UnitFile::new();
        for (name, entries) in &sections {
            for (k, v) in entries {
                if u.push_entry(name, k, v).is_err() {
                    // Only a value ending in a lone backslash is refused.
                    prop_assert!(v.ends_with('\\'));
                    return Ok(());
                }
            }
        }
        let text = u.to_string();
        let back = UnitFile::parse(&text).unwrap();
        prop_assert_eq!(back.to_string(), text);
        for (name, entries) in &sections {
            for (k, _) in entries {
                let want = entries.iter().rev().find(|(k2, _)| k2 == k).map(|(_, v)| v.trim());
                // A later block of the same section may reassign; compare with the model.
                prop_assert!(back.get(name, k).is_some());
                if sections.iter().filter(|(n, _)| n == name).count() == 1 {
                    prop_assert_eq!(back.get(name, k), want);
                }
            }
        }
    }

    #[test]
    fn escape_round_trips(s in any::<String>()) {
        prop_assert_eq!(escape::unescape(&escape::escape(&s)).unwrap(), s.clone());
        prop_assert_eq!(split_words(&quote_word(&s)).unwrap(), vec![s]);
    }
}

#[test]
fn fixture_units_round_trip() {
    // Every unit and drop-in in the cloud-config fixtures.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/cloud-config");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for block in extract_unit_blocks(&text) {
            let u = UnitFile::parse(&block)
                .unwrap_or_else(|e| panic!("{}: {e}\n{block}", path.display()));
            assert_eq!(u.to_string(), block);
            fleet::deserialize(&block).unwrap();
            count += 1;
        }
    }
    assert!(count >= 15, "only {count} unit blocks found");
}

/// The `content: |` blocks of the fixtures that hold unit text.
fn extract_unit_blocks(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.trim_start()
            .trim_start_matches("- ")
            .starts_with("content: |")
        {
            let indent_of = |s: &str| s.len() - s.trim_start().len();
            let key_indent = indent_of(l);
            let mut block = Vec::new();
            let mut j = i + 1;
            while j < lines.len()
                && (lines[j].trim().is_empty() || indent_of(lines[j]) > key_indent)
            {
                block.push(lines[j]);
                j += 1;
            }
            while block.last().is_some_and(|b| b.trim().is_empty()) {
                block.pop();
            }
            let ind = block
                .iter()
                .filter(|b| !b.trim().is_empty())
                .map(|b| indent_of(b))
                .min()
                .unwrap_or(0);
            let body: String = block
                .iter()
                .map(|b| format!("{}\n", b.get(ind..).unwrap_or("")))
                .collect();
            if body.trim_start().starts_with('[') {
                out.push(body);
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

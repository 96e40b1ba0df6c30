//! Property tests: no input makes the validator, the decoder or the planner panic.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use cloud_config::apply::{plan, Context};
use cloud_config::{substitute, validate, Addresses, CloudConfig};
use proptest::prelude::*;

fn yamlish() -> impl Strategy<Value = String> {
    let atoms = prop_oneof![
        Just("\n".to_string()),
        Just("  ".to_string()),
        Just("- ".to_string()),
        Just(": ".to_string()),
        Just("coreos:".to_string()),
        Just("units:".to_string()),
        Just("write_files:".to_string()),
        Just("name: a.service".to_string()),
        Just("command: start".to_string()),
        Just("permissions: ".to_string()),
        Just("encoding: gzip+base64".to_string()),
        Just("content: ".to_string()),
        Just("!!binary ".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("{".to_string()),
        Just("[".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("|".to_string()),
        Just("\t".to_string()),
        Just("$public_ipv4".to_string()),
        "[a-z0-9_-]{1,8}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(atoms, 0..80).prop_map(|v| format!("#cloud-config\n{}", v.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn nothing_panics(text in yamlish()) {
        let report = validate(text.as_bytes());
        for e in report.entries() {
            prop_assert!(e.line >= 1);
        }
        let addrs = Addresses { public_ipv4: "203.0.113.1".into(), ..Default::default() };
        let text = substitute(&text, &addrs);
        if let Ok(root) = cloud_config::yaml::parse(text.as_bytes()) {
            let config = CloudConfig::from_node(root.as_ref());
            let dir = tempfile::tempdir().unwrap();
            let _ = plan(&config, &Context::new(dir.path()));
        }
    }

    #[test]
    fn arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = validate(&data);
        let mut with_header = b"#cloud-config\n".to_vec();
        with_header.extend_from_slice(&data);
        let _ = validate(&with_header);
    }
}

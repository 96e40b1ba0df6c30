//! The fleetctl binary's command line as Go's flag package read fleet's: flags before the
//! first other argument, Go's spellings of booleans and numbers, Go's words and exit status 2
//! for what it refuses. No server is needed: each line fails (or prints) before any request,
//! or after one to a socket that does not exist.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::process::Command;

fn fleetctl(line: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(line.split_whitespace())
        .env_remove("FLEETCTL_DRIVER")
        .env_remove("FLEETCTL_REQUEST_TIMEOUT")
        .env("FLEETCTL_ENDPOINT", "unix:///nonexistent/fleet.sock")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Lines Go's flag package refuses: exit 2, its words, then fleet's hint.
#[test]
fn refused_as_go_refused() {
    let cases = [
        ("--bogus list-units", "flag provided but not defined: -bogus"),
        ("-bogus list-units", "flag provided but not defined: -bogus"),
        ("--endpoint", "flag needs an argument: -endpoint"),
        ("list-units --feilds=unit", "flag provided but not defined: -feilds"),
        ("list-units -feilds unit", "flag provided but not defined: -feilds"),
        ("list-unit-files -l", "flag provided but not defined: -l"),
        ("list-units --fields", "flag needs an argument: -fields"),
        ("start --no-blok x.service", "flag provided but not defined: -no-blok"),
        ("stop --replace x.service", "flag provided but not defined: -replace"),
        ("destroy --force x.service", "flag provided but not defined: -force"),
        ("list-units -h", "flag provided but not defined: -h"),
        (
            "start --block-attempts=abc x.service",
            "invalid value \"abc\" for flag -block-attempts: strconv.ParseInt: parsing \"abc\": invalid syntax",
        ),
        (
            "journal --lines=many x.service",
            "invalid value \"many\" for flag -lines: strconv.ParseInt: parsing \"many\": invalid syntax",
        ),
        (
            "--request-timeout=soon list-units",
            "invalid value \"soon\" for flag -request-timeout: strconv.ParseFloat: parsing \"soon\": invalid syntax",
        ),
        (
            "--strict-host-key-checking=nope list-units",
            "invalid boolean value \"nope\" for -strict-host-key-checking: strconv.ParseBool: parsing \"nope\": invalid syntax",
        ),
    ];
    for (line, want) in cases {
        let (code, out, err) = fleetctl(line);
        assert_eq!(code, 2, "{line}: {err}");
        assert_eq!(out, "", "{line}");
        assert_eq!(
            err,
            format!("{want}\nRun 'fleetctl help' for usage.\n"),
            "{line}"
        );
    }
}

/// Lines Go's flag package accepts, read as it read them.
#[test]
fn read_as_go_read() {
    // A flag after the first argument is an argument: here a unit name, so the command
    // gets as far as asking fleetd.
    let (code, _, err) = fleetctl("start x.service --no-blok");
    assert_eq!(code, 1);
    assert!(err.contains("dial unix /nonexistent/fleet.sock"), "{err}");
    // -version=false is no request for the version: without a command, the usage.
    let (code, out, _) = fleetctl("--version=false");
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME:\n\tfleetctl - "), "{out}");
    let (code, out, _) = fleetctl("-version");
    let version = format!("fleetctl version {}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!((code, out), (0, version));
    // A value may be the next argument, even one that starts with a dash.
    let (code, _, err) = fleetctl("list-units -fields -x");
    assert_eq!(code, 1);
    assert_eq!(err, "Invalid key in output format: \"-x\"\n");
    // The last of a repeated flag wins; booleans take Go's spellings.
    let (code, _, err) = fleetctl("list-units --fields=bogus --fields=unit --no-legend=F");
    assert_eq!(code, 1);
    assert!(err.starts_with("Error retrieving list of units"), "{err}");
    let (code, _, err) = fleetctl("fleet-unknown");
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "fleetctl: unknown subcommand: \"fleet-unknown\"\nRun 'fleetctl help' for usage.\n"
    );
}

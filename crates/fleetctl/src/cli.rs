//! fleetctl's command line: Go's flag syntax, read by clap.
//!
//! fleet parsed its flags with Go's `flag` package: one flag set before the command (the
//! global flags), one per command after it. A flag is `-name` or `--name`, a value follows
//! as `-name=value` or as the next argument, a boolean takes a value only as
//! `-name=false`; flags end at the first other argument or at `--`, and everything after
//! that is an argument even if it starts with `-`. The last of a repeated flag wins.
//!
//! [`parse`] turns one flag set's part of the command line into clap's form (the shim: one
//! dash to two, the end of the flags marked) and reads it into that set's struct; clap's
//! errors come back in the words of Go's `flag` package ([`Failure::Usage`]: exit 2).

use clap::error::{ContextKind, ContextValue, ErrorKind};

use crate::Failure;

/// Go's `strconv.ParseBool`.
fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("strconv.ParseBool: parsing {s:?}: invalid syntax")),
    }
}

/// Go's `strconv.ParseInt` for an `int` flag.
fn go_int(s: &str) -> Result<i64, String> {
    s.parse::<i64>().map_err(|e| {
        let why = match e.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                "value out of range"
            }
            _ => "invalid syntax",
        };
        format!("strconv.ParseInt: parsing {s:?}: {why}")
    })
}

/// Go's `strconv.ParseFloat` for a `float64` flag.
fn go_float(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .map_err(|_| format!("strconv.ParseFloat: parsing {s:?}: invalid syntax"))
}

/// The global flags (before the command), each also read from `FLEETCTL_<NAME>`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "fleetctl",
    no_binary_name = true,
    disable_help_flag = true,
    disable_version_flag = true,
    args_override_self = true
)]
pub struct GlobalFlags {
    /// fleet API endpoint (or etcd endpoints with `--driver=etcd`).
    #[arg(long, env = "FLEETCTL_ENDPOINT", allow_hyphen_values = true)]
    pub endpoint: Option<String>,
    /// Keyspace prefix of fleet's data in etcd.
    #[arg(long, env = "FLEETCTL_ETCD_KEY_PREFIX", allow_hyphen_values = true)]
    pub etcd_key_prefix: Option<String>,
    /// Seconds to wait for an answer from fleet or etcd.
    #[arg(long, env = "FLEETCTL_REQUEST_TIMEOUT", value_parser = go_float)]
    pub request_timeout: Option<f64>,
    /// `api` or `etcd`.
    #[arg(long, env = "FLEETCTL_DRIVER", allow_hyphen_values = true)]
    pub driver: Option<String>,
    /// `host[:port]` of an SSH bastion to reach fleet through.
    #[arg(long, env = "FLEETCTL_TUNNEL", allow_hyphen_values = true)]
    pub tunnel: Option<String>,
    /// The user fleetctl connects to machines as.
    #[arg(long, env = "FLEETCTL_SSH_USERNAME", allow_hyphen_values = true)]
    pub ssh_username: Option<String>,
    /// Where known host keys are kept.
    #[arg(long, env = "FLEETCTL_KNOWN_HOSTS_FILE", allow_hyphen_values = true)]
    pub known_hosts_file: Option<String>,
    /// Seconds to wait for an SSH connection.
    #[arg(long, env = "FLEETCTL_SSH_TIMEOUT", value_parser = go_float)]
    pub ssh_timeout: Option<f64>,
    /// etcd client key (TLS).
    #[arg(long, env = "FLEETCTL_KEY_FILE", allow_hyphen_values = true)]
    pub key_file: Option<String>,
    /// etcd client certificate (TLS).
    #[arg(long, env = "FLEETCTL_CERT_FILE", allow_hyphen_values = true)]
    pub cert_file: Option<String>,
    /// etcd CA (TLS).
    #[arg(long, env = "FLEETCTL_CA_FILE", allow_hyphen_values = true)]
    pub ca_file: Option<String>,
    /// Print the version and exit.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub version: Option<bool>,
    /// Print usage and exit.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub help: Option<bool>,
    /// Print usage and exit.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub h: Option<bool>,
    /// Accepted, as fleet's.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub debug: Option<bool>,
    /// `false`: the etcd driver.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub experimental_api: Option<bool>,
    /// Check machines' host keys (default true).
    #[arg(long, env = "FLEETCTL_STRICT_HOST_KEY_CHECKING", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub strict_host_key_checking: Option<bool>,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true)]
    pub rest: Vec<String>,
}

/// A command's flag set: a clap struct read without a program name, with no `--help` of
/// clap's (fleet had none per command), the last of a repeated flag winning.
macro_rules! flag_set {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        #[derive(Debug, clap::Parser)]
        #[command(no_binary_name = true, disable_help_flag = true, args_override_self = true)]
        pub struct $name { $($body)* }
    };
}

/// The flags every table has.
#[derive(Debug, clap::Args)]
pub struct Table {
    /// Columns, comma-separated.
    #[arg(long, allow_hyphen_values = true)]
    pub fields: Option<String>,
    /// Do not shorten IDs and hashes.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub full: Option<bool>,
    /// Leave out the header.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub no_legend: Option<bool>,
}

flag_set! {
    /// `list-machines` and `list-units`.
    pub struct Listing {
        #[command(flatten)]
        pub table: Table,
        /// Shorthand for --full.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
        pub l: Option<bool>,
        /// Ignored, as fleet did.
        #[arg(trailing_var_arg = true)]
        pub rest: Vec<String>,
    }
}

flag_set! {
    /// `list-unit-files` (fleet gave it no `-l`).
    pub struct ListUnitFiles {
        #[command(flatten)]
        pub table: Table,
        /// Ignored, as fleet did.
        #[arg(trailing_var_arg = true)]
        pub rest: Vec<String>,
    }
}

flag_set! {
    /// `submit`.
    pub struct Submit {
        /// Replace units whose content changed (fleet 1.0).
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
        pub replace: Option<bool>,
        /// Unit files or names.
        #[arg(trailing_var_arg = true)]
        pub units: Vec<String>,
    }
}

/// How a state change waits.
#[derive(Debug, clap::Args)]
pub struct Blocking {
    /// How many times to look before giving up waiting (0: no limit).
    #[arg(long, value_parser = go_int, allow_hyphen_values = true)]
    pub block_attempts: Option<i64>,
    /// Do not wait for the units.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub no_block: Option<bool>,
}

flag_set! {
    /// `load` and `start`.
    pub struct Schedule {
        #[command(flatten)]
        pub blocking: Blocking,
        /// Replace units whose content changed (fleet 1.0).
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
        pub replace: Option<bool>,
        /// Unit files or names.
        #[arg(trailing_var_arg = true)]
        pub units: Vec<String>,
    }
}

flag_set! {
    /// `stop` and `unload`.
    pub struct Unschedule {
        #[command(flatten)]
        pub blocking: Blocking,
        /// Unit names.
        #[arg(trailing_var_arg = true)]
        pub units: Vec<String>,
    }
}

flag_set! {
    /// `restart` (fleet 1.0).
    pub struct Restart {
        /// How many times to look before giving up waiting (0: no limit).
        #[arg(long, value_parser = go_int, allow_hyphen_values = true)]
        pub block_attempts: Option<i64>,
        /// Unit files or names.
        #[arg(trailing_var_arg = true)]
        pub units: Vec<String>,
    }
}

flag_set! {
    /// `destroy` and `cat`: unit names, no flags.
    pub struct Units {
        /// Unit names.
        #[arg(trailing_var_arg = true)]
        pub units: Vec<String>,
    }
}

/// `--ssh-port`, for the commands that reach a machine.
#[derive(Debug, clap::Args)]
pub struct Port {
    /// The machines' SSH port.
    #[arg(long, value_parser = go_int, allow_hyphen_values = true)]
    pub ssh_port: Option<i64>,
}

flag_set! {
    /// `status`.
    pub struct Status {
        #[command(flatten)]
        pub port: Port,
        /// Unit names.
        #[arg(trailing_var_arg = true)]
        pub units: Vec<String>,
    }
}

flag_set! {
    /// `journal`.
    pub struct Journal {
        #[command(flatten)]
        pub port: Port,
        /// How many lines to show.
        #[arg(long, value_parser = go_int, allow_hyphen_values = true)]
        pub lines: Option<i64>,
        /// journalctl's output mode (fleet 1.0).
        #[arg(long, allow_hyphen_values = true)]
        pub output: Option<String>,
        /// Run journalctl with sudo.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
        pub sudo: Option<bool>,
        /// Follow the journal.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
        pub follow: Option<bool>,
        /// Shorthand for --follow.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
        pub f: Option<bool>,
        /// The unit.
        #[arg(trailing_var_arg = true)]
        pub units: Vec<String>,
    }
}

flag_set! {
    /// `ssh`.
    pub struct Ssh {
        #[command(flatten)]
        pub port: Port,
        /// A machine ID (or its prefix).
        #[arg(long, allow_hyphen_values = true)]
        pub machine: Option<String>,
        /// The unit whose machine to reach.
        #[arg(long, allow_hyphen_values = true)]
        pub unit: Option<String>,
        /// Forward the SSH agent.
        #[arg(long = "A", num_args = 0..=1, require_equals = true, default_missing_value = "true",
              value_parser = go_bool)]
        pub a: Option<bool>,
        /// Forward the SSH agent.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
        pub forward_agent: Option<bool>,
        /// The machine or unit (without --machine or --unit), then the command to run.
        #[arg(trailing_var_arg = true)]
        pub rest: Vec<String>,
    }
}

/// Whether a switch was given true.
pub fn on(v: Option<bool>) -> bool {
    v == Some(true)
}

/// The shim: one flag set's part of the command line in clap's form. Up to the first
/// argument that is not a flag, `-name[=v]` becomes `--name[=v]` (a value flag's value,
/// when it is the next argument, is passed on as it is); then `--` marks the end of the
/// flags, so clap takes everything after as arguments, as Go did. A `--` the user gave
/// ends the flags too (and is dropped, as Go dropped it).
fn go_args(cmd: &clap::Command, args: &[String]) -> Vec<String> {
    let takes_next = |name: &str| {
        cmd.get_arguments().any(|a| {
            a.get_long() == Some(name)
                && a.get_action().takes_values()
                && !a.is_require_equals_set()
        })
    };
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        let body = a.strip_prefix("--").unwrap_or(&a[1..]);
        out.push(format!("--{body}"));
        if !body.contains('=') && takes_next(body) {
            if let Some(v) = args.get(i + 1) {
                out.push(v.clone());
                i += 1;
            }
        }
        i += 1;
    }
    if i < args.len() {
        out.push("--".into());
        out.extend(args[i..].iter().cloned());
    }
    out
}

/// Reads one flag set's part of the command line into `T`, failing as Go's flag package
/// did.
pub fn parse<T: clap::Parser>(args: &[String]) -> Result<T, Failure> {
    let cmd = T::command();
    let args = go_args(&cmd, args);
    let matches = cmd.try_get_matches_from(args).map_err(go_error)?;
    T::from_arg_matches(&matches).map_err(go_error)
}

/// A context string of a clap error.
fn context(e: &clap::Error, kind: ContextKind) -> Option<String> {
    match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => v.first().cloned(),
        _ => None,
    }
}

/// clap's error in the words of Go's flag package.
fn go_error(e: clap::Error) -> Failure {
    // "--name <NAME>" or "--name=value" → "name".
    let name = context(&e, ContextKind::InvalidArg)
        .map(|a| {
            let a = a.split([' ', '=', '[']).next().unwrap_or(&a).to_string();
            a.trim_start_matches('-').to_string()
        })
        .unwrap_or_default();
    let value = context(&e, ContextKind::InvalidValue).unwrap_or_default();
    let why = std::error::Error::source(&e).map(ToString::to_string);
    let text = match e.kind() {
        ErrorKind::UnknownArgument => format!("flag provided but not defined: -{name}"),
        ErrorKind::InvalidValue if value.is_empty() => {
            format!("flag needs an argument: -{name}")
        }
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => match why {
            Some(w) if w.starts_with("strconv.ParseBool") => {
                format!("invalid boolean value {value:?} for -{name}: {w}")
            }
            Some(w) => format!("invalid value {value:?} for flag -{name}: {w}"),
            None => format!("invalid value {value:?} for flag -{name}"),
        },
        _ => e.to_string().trim().to_string(),
    };
    Failure::Usage(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn usage<T: clap::Parser + std::fmt::Debug>(s: &str) -> String {
        match parse::<T>(&args(s)) {
            Err(Failure::Usage(m)) => m,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn go_spellings_of_flags() {
        let l: Listing = parse(&args("-fields unit --no-legend=false -l")).unwrap();
        assert_eq!(l.table.fields.as_deref(), Some("unit"));
        assert_eq!(l.table.no_legend, Some(false));
        assert!(on(l.l));
        let l: Listing = parse(&args("--fields=-x --fields=unit,hash")).unwrap();
        assert_eq!(
            l.table.fields.as_deref(),
            Some("unit,hash"),
            "the last one wins"
        );
        let l: Listing = parse(&args("--fields -unit")).unwrap();
        assert_eq!(
            l.table.fields.as_deref(),
            Some("-unit"),
            "a value may start with -"
        );
    }

    #[test]
    fn flags_end_at_the_first_argument() {
        let s: Schedule = parse(&args("--no-block a.service --replace -x")).unwrap();
        assert!(on(s.blocking.no_block));
        assert_eq!(s.replace, None);
        assert_eq!(s.units, args("a.service --replace -x"));
        let s: Submit = parse(&args("-- -x.service")).unwrap();
        assert_eq!(s.units, args("-x.service"));
        let s: Ssh = parse(&args("-A m -- ls -l")).unwrap();
        assert!(on(s.a));
        assert_eq!(s.rest, args("m -- ls -l"));
        let g: GlobalFlags =
            parse(&args("-endpoint http://x:1 --driver etcd list-units -l")).unwrap();
        assert_eq!(g.endpoint.as_deref(), Some("http://x:1"));
        assert_eq!(g.driver.as_deref(), Some("etcd"));
        assert_eq!(g.rest, args("list-units -l"));
    }

    #[test]
    fn errors_in_go_words() {
        assert_eq!(
            usage::<Listing>("--feilds=unit"),
            "flag provided but not defined: -feilds"
        );
        assert_eq!(
            usage::<ListUnitFiles>("-l"),
            "flag provided but not defined: -l"
        );
        assert_eq!(
            usage::<Listing>("--fields"),
            "flag needs an argument: -fields"
        );
        assert_eq!(
            usage::<Schedule>("--block-attempts=abc x"),
            "invalid value \"abc\" for flag -block-attempts: strconv.ParseInt: parsing \"abc\": invalid syntax"
        );
        assert_eq!(
            usage::<Journal>("--lines=99999999999999999999 x"),
            "invalid value \"99999999999999999999\" for flag -lines: strconv.ParseInt: parsing \"99999999999999999999\": value out of range"
        );
        assert_eq!(
            usage::<Schedule>("--no-block=maybe x"),
            "invalid boolean value \"maybe\" for -no-block: strconv.ParseBool: parsing \"maybe\": invalid syntax"
        );
        assert_eq!(
            usage::<Unschedule>("--replace x"),
            "flag provided but not defined: -replace"
        );
        assert_eq!(usage::<Units>("-h"), "flag provided but not defined: -h");
    }
}

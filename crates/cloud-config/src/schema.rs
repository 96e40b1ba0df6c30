//! The cloud-config schema of coreos-cloudinit v1.8.1: every key, its type, deprecation note,
//! allowed values and (for the sections that become environment variables) the variable name,
//! in the declaration order the generated drop-ins follow.

/// A field's type, as the validator names it.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    /// `string`: any scalar is accepted and its literal text used.
    Str,
    /// `int`
    Int,
    /// `float64`
    Float,
    /// `bool`
    Bool,
    /// `struct`: a mapping with these fields.
    Struct(&'static [Field]),
    /// `[]string`
    StrList,
    /// `[]struct`
    StructList(&'static [Field]),
}

impl Ty {
    /// The name the validator prints in `(want …)`.
    pub fn name(self) -> &'static str {
        match self {
            Ty::Str => "string",
            Ty::Int => "int",
            Ty::Float => "float64",
            Ty::Bool => "bool",
            Ty::Struct(_) => "struct",
            Ty::StrList => "[]string",
            Ty::StructList(_) => "[]struct",
        }
    }
}

/// One key of a mapping.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The key, with `_` (input keys have `-` replaced by `_` before matching).
    pub key: &'static str,
    /// Its type.
    pub ty: Ty,
    /// The environment variable (or file key) it becomes, for generated configuration.
    pub env: Option<&'static str>,
    /// The deprecation note, if the validator warns about the key.
    pub deprecated: Option<&'static str>,
    /// A regular expression non-empty values must match.
    pub valid: Option<&'static str>,
}

const fn f(key: &'static str, ty: Ty) -> Field {
    Field {
        key,
        ty,
        env: None,
        deprecated: None,
        valid: None,
    }
}

const fn e(key: &'static str, ty: Ty, env: &'static str) -> Field {
    Field {
        key,
        ty,
        env: Some(env),
        deprecated: None,
        valid: None,
    }
}

const fn dep(field: Field, note: &'static str) -> Field {
    Field {
        deprecated: Some(note),
        ..field
    }
}

const fn valid(field: Field, re: &'static str) -> Field {
    Field {
        valid: Some(re),
        ..field
    }
}

use Ty::{Bool, Float, Int, Str, StrList};

const ETCD2_NOTE: &str = "etcd2 options no longer work for etcd";
const REMOTE_NOTE: &str =
    "trying to fetch from a remote endpoint introduces too many intermittent errors";

/// `coreos.etcd` (etcd 0.4, `etcd.service`).
pub const ETCD: &[Field] = &[
    e("addr", Str, "ETCD_ADDR"),
    dep(
        e("advertise_client_urls", Str, "ETCD_ADVERTISE_CLIENT_URLS"),
        ETCD2_NOTE,
    ),
    e("bind_addr", Str, "ETCD_BIND_ADDR"),
    e("ca_file", Str, "ETCD_CA_FILE"),
    e("cert_file", Str, "ETCD_CERT_FILE"),
    e("cluster_active_size", Int, "ETCD_CLUSTER_ACTIVE_SIZE"),
    e("cluster_remove_delay", Float, "ETCD_CLUSTER_REMOVE_DELAY"),
    e("cluster_sync_interval", Float, "ETCD_CLUSTER_SYNC_INTERVAL"),
    e("cors", Str, "ETCD_CORS"),
    e("data_dir", Str, "ETCD_DATA_DIR"),
    e("discovery", Str, "ETCD_DISCOVERY"),
    dep(
        e("discovery_fallback", Str, "ETCD_DISCOVERY_FALLBACK"),
        ETCD2_NOTE,
    ),
    dep(e("discovery_srv", Str, "ETCD_DISCOVERY_SRV"), ETCD2_NOTE),
    dep(
        e("discovery_proxy", Str, "ETCD_DISCOVERY_PROXY"),
        ETCD2_NOTE,
    ),
    dep(
        e("election_timeout", Int, "ETCD_ELECTION_TIMEOUT"),
        ETCD2_NOTE,
    ),
    dep(
        e("force_new_cluster", Bool, "ETCD_FORCE_NEW_CLUSTER"),
        ETCD2_NOTE,
    ),
    e("graphite_host", Str, "ETCD_GRAPHITE_HOST"),
    dep(
        e("heartbeat_interval", Int, "ETCD_HEARTBEAT_INTERVAL"),
        ETCD2_NOTE,
    ),
    e("http_read_timeout", Float, "ETCD_HTTP_READ_TIMEOUT"),
    e("http_write_timeout", Float, "ETCD_HTTP_WRITE_TIMEOUT"),
    dep(
        e(
            "initial_advertise_peer_urls",
            Str,
            "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        ),
        ETCD2_NOTE,
    ),
    dep(
        e("initial_cluster", Str, "ETCD_INITIAL_CLUSTER"),
        ETCD2_NOTE,
    ),
    dep(
        e("initial_cluster_state", Str, "ETCD_INITIAL_CLUSTER_STATE"),
        ETCD2_NOTE,
    ),
    dep(
        e("initial_cluster_token", Str, "ETCD_INITIAL_CLUSTER_TOKEN"),
        ETCD2_NOTE,
    ),
    e("key_file", Str, "ETCD_KEY_FILE"),
    dep(
        e("listen_client_urls", Str, "ETCD_LISTEN_CLIENT_URLS"),
        ETCD2_NOTE,
    ),
    dep(
        e("listen_peer_urls", Str, "ETCD_LISTEN_PEER_URLS"),
        ETCD2_NOTE,
    ),
    e("max_result_buffer", Int, "ETCD_MAX_RESULT_BUFFER"),
    e("max_retry_attempts", Int, "ETCD_MAX_RETRY_ATTEMPTS"),
    dep(e("max_snapshots", Int, "ETCD_MAX_SNAPSHOTS"), ETCD2_NOTE),
    dep(e("max_wals", Int, "ETCD_MAX_WALS"), ETCD2_NOTE),
    e("name", Str, "ETCD_NAME"),
    e("peer_addr", Str, "ETCD_PEER_ADDR"),
    e("peer_bind_addr", Str, "ETCD_PEER_BIND_ADDR"),
    e("peer_ca_file", Str, "ETCD_PEER_CA_FILE"),
    e("peer_cert_file", Str, "ETCD_PEER_CERT_FILE"),
    e("peer_election_timeout", Int, "ETCD_PEER_ELECTION_TIMEOUT"),
    e(
        "peer_heartbeat_interval",
        Int,
        "ETCD_PEER_HEARTBEAT_INTERVAL",
    ),
    e("peer_key_file", Str, "ETCD_PEER_KEY_FILE"),
    e("peers", Str, "ETCD_PEERS"),
    e("peers_file", Str, "ETCD_PEERS_FILE"),
    dep(e("proxy", Str, "ETCD_PROXY"), ETCD2_NOTE),
    e("retry_interval", Float, "ETCD_RETRY_INTERVAL"),
    e("snapshot", Bool, "ETCD_SNAPSHOT"),
    e("snapshot_count", Int, "ETCD_SNAPSHOTCOUNT"),
    e("trace", Str, "ETCD_TRACE"),
    e("verbose", Bool, "ETCD_VERBOSE"),
    e("very_verbose", Bool, "ETCD_VERY_VERBOSE"),
    e("very_very_verbose", Bool, "ETCD_VERY_VERY_VERBOSE"),
];

/// `coreos.etcd2` (`etcd2.service`).
pub const ETCD2: &[Field] = &[
    e("advertise_client_urls", Str, "ETCD_ADVERTISE_CLIENT_URLS"),
    dep(
        e("ca_file", Str, "ETCD_CA_FILE"),
        "ca_file obsoleted by trusted_ca_file and client_cert_auth",
    ),
    e("cert_file", Str, "ETCD_CERT_FILE"),
    e("client_cert_auth", Bool, "ETCD_CLIENT_CERT_AUTH"),
    e("cors", Str, "ETCD_CORS"),
    e("data_dir", Str, "ETCD_DATA_DIR"),
    e("debug", Bool, "ETCD_DEBUG"),
    e("discovery", Str, "ETCD_DISCOVERY"),
    e("discovery_fallback", Str, "ETCD_DISCOVERY_FALLBACK"),
    e("discovery_srv", Str, "ETCD_DISCOVERY_SRV"),
    e("discovery_proxy", Str, "ETCD_DISCOVERY_PROXY"),
    e("election_timeout", Int, "ETCD_ELECTION_TIMEOUT"),
    e("enable_pprof", Bool, "ETCD_ENABLE_PPROF"),
    e("force_new_cluster", Bool, "ETCD_FORCE_NEW_CLUSTER"),
    e("heartbeat_interval", Int, "ETCD_HEARTBEAT_INTERVAL"),
    e(
        "initial_advertise_peer_urls",
        Str,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS",
    ),
    e("initial_cluster", Str, "ETCD_INITIAL_CLUSTER"),
    e("initial_cluster_state", Str, "ETCD_INITIAL_CLUSTER_STATE"),
    e("initial_cluster_token", Str, "ETCD_INITIAL_CLUSTER_TOKEN"),
    e("key_file", Str, "ETCD_KEY_FILE"),
    e("listen_client_urls", Str, "ETCD_LISTEN_CLIENT_URLS"),
    e("listen_peer_urls", Str, "ETCD_LISTEN_PEER_URLS"),
    e("log_package_levels", Str, "ETCD_LOG_PACKAGE_LEVELS"),
    e("max_snapshots", Int, "ETCD_MAX_SNAPSHOTS"),
    e("max_wals", Int, "ETCD_MAX_WALS"),
    e("name", Str, "ETCD_NAME"),
    dep(
        e("peer_ca_file", Str, "ETCD_PEER_CA_FILE"),
        "peer_ca_file obsoleted peer_trusted_ca_file and peer_client_cert_auth",
    ),
    e("peer_cert_file", Str, "ETCD_PEER_CERT_FILE"),
    e("peer_key_file", Str, "ETCD_PEER_KEY_FILE"),
    e("peer_client_cert_auth", Bool, "ETCD_PEER_CLIENT_CERT_AUTH"),
    e("peer_trusted_ca_file", Str, "ETCD_PEER_TRUSTED_CA_FILE"),
    valid(e("proxy", Str, "ETCD_PROXY"), "^(on|off|readonly)$"),
    e("proxy_dial_timeout", Int, "ETCD_PROXY_DIAL_TIMEOUT"),
    e("proxy_failure_wait", Int, "ETCD_PROXY_FAILURE_WAIT"),
    e("proxy_read_timeout", Int, "ETCD_PROXY_READ_TIMEOUT"),
    e("proxy_refresh_interval", Int, "ETCD_PROXY_REFRESH_INTERVAL"),
    e("proxy_write_timeout", Int, "ETCD_PROXY_WRITE_TIMEOUT"),
    e("snapshot_count", Int, "ETCD_SNAPSHOT_COUNT"),
    e("strict_reconfig_check", Bool, "ETCD_STRICT_RECONFIG_CHECK"),
    e("trusted_ca_file", Str, "ETCD_TRUSTED_CA_FILE"),
    e("wal_dir", Str, "ETCD_WAL_DIR"),
];

/// `coreos.fleet` (`fleet.service`).
pub const FLEET: &[Field] = &[
    e("agent_ttl", Str, "FLEET_AGENT_TTL"),
    e("authorized_keys_file", Str, "FLEET_AUTHORIZED_KEYS_FILE"),
    e("disable_engine", Bool, "FLEET_DISABLE_ENGINE"),
    e(
        "engine_reconcile_interval",
        Float,
        "FLEET_ENGINE_RECONCILE_INTERVAL",
    ),
    e("etcd_cafile", Str, "FLEET_ETCD_CAFILE"),
    e("etcd_certfile", Str, "FLEET_ETCD_CERTFILE"),
    e("etcd_keyfile", Str, "FLEET_ETCD_KEYFILE"),
    e("etcd_key_prefix", Str, "FLEET_ETCD_KEY_PREFIX"),
    e("etcd_request_timeout", Float, "FLEET_ETCD_REQUEST_TIMEOUT"),
    e("etcd_servers", Str, "FLEET_ETCD_SERVERS"),
    // Ferrite's addition: stop units when the machine is cut off from etcd.
    e("fencing", Bool, "FLEET_FENCING"),
    e("metadata", Str, "FLEET_METADATA"),
    e("public_ip", Str, "FLEET_PUBLIC_IP"),
    e("token_limit", Int, "FLEET_TOKEN_LIMIT"),
    e("verbosity", Int, "FLEET_VERBOSITY"),
    e("verify_units", Bool, "FLEET_VERIFY_UNITS"),
];

/// `coreos.flannel` (`/run/flannel/options.env`).
pub const FLANNEL: &[Field] = &[
    e("etcd_endpoints", Str, "FLANNELD_ETCD_ENDPOINTS"),
    e("etcd_cafile", Str, "FLANNELD_ETCD_CAFILE"),
    e("etcd_certfile", Str, "FLANNELD_ETCD_CERTFILE"),
    e("etcd_keyfile", Str, "FLANNELD_ETCD_KEYFILE"),
    e("etcd_prefix", Str, "FLANNELD_ETCD_PREFIX"),
    e("ip_masq", Str, "FLANNELD_IP_MASQ"),
    e("subnet_file", Str, "FLANNELD_SUBNET_FILE"),
    e("interface", Str, "FLANNELD_IFACE"),
    e("public_ip", Str, "FLANNELD_PUBLIC_IP"),
];

/// `coreos.locksmith` (`locksmithd.service`).
pub const LOCKSMITH: &[Field] = &[
    e("endpoint", Str, "LOCKSMITHD_ENDPOINT"),
    e("etcd_cafile", Str, "LOCKSMITHD_ETCD_CAFILE"),
    e("etcd_certfile", Str, "LOCKSMITHD_ETCD_CERTFILE"),
    e("etcd_keyfile", Str, "LOCKSMITHD_ETCD_KEYFILE"),
    e("group", Str, "LOCKSMITHD_GROUP"),
    valid(
        e("window_start", Str, "REBOOT_WINDOW_START"),
        "^((?i:sun|mon|tue|wed|thu|fri|sat|sun) )?0*([0-9]|1[0-9]|2[0-3]):0*([0-9]|[1-5][0-9])$",
    ),
    valid(
        e("window_length", Str, "REBOOT_WINDOW_LENGTH"),
        "^[-+]?([0-9]*(\\.[0-9]*)?[a-z]+)+$",
    ),
];

/// The allowed `reboot-strategy` values.
pub const REBOOT_STRATEGY_RE: &str = "^(best-effort|etcd-lock|reboot|off)$";

/// `coreos.update` (`/etc/coreos/update.conf`).
pub const UPDATE: &[Field] = &[
    valid(
        e("reboot_strategy", Str, "REBOOT_STRATEGY"),
        REBOOT_STRATEGY_RE,
    ),
    e("group", Str, "GROUP"),
    e("server", Str, "SERVER"),
];

/// `coreos.oem` (`/etc/oem-release`).
pub const OEM: &[Field] = &[
    f("id", Str),
    f("name", Str),
    f("version_id", Str),
    f("home_url", Str),
    f("bug_report_url", Str),
];

/// `coreos.units[].drop_ins[]`.
pub const DROP_IN: &[Field] = &[f("name", Str), f("content", Str)];

/// The allowed unit `command` values.
pub const COMMAND_RE: &str =
    "^(start|stop|restart|reload|try-restart|reload-or-restart|reload-or-try-restart)$";

/// `coreos.units[]`.
pub const UNIT: &[Field] = &[
    f("name", Str),
    f("mask", Bool),
    f("enable", Bool),
    f("runtime", Bool),
    f("content", Str),
    valid(f("command", Str), COMMAND_RE),
    f("drop_ins", Ty::StructList(DROP_IN)),
];

/// `coreos`.
pub const COREOS: &[Field] = &[
    f("etcd", Ty::Struct(ETCD)),
    f("etcd2", Ty::Struct(ETCD2)),
    f("flannel", Ty::Struct(FLANNEL)),
    f("fleet", Ty::Struct(FLEET)),
    f("locksmith", Ty::Struct(LOCKSMITH)),
    f("oem", Ty::Struct(OEM)),
    f("update", Ty::Struct(UPDATE)),
    f("units", Ty::StructList(UNIT)),
];

/// The allowed `write_files[].encoding` values.
pub const ENCODING_RE: &str =
    "^(base64|b64|gz|gzip|gz\\+base64|gzip\\+base64|gz\\+b64|gzip\\+b64)$";

/// The allowed `write_files[].permissions` values.
pub const PERMISSIONS_RE: &str = "^0?[0-7]{3,4}$";

/// `write_files[]`.
pub const WRITE_FILE: &[Field] = &[
    valid(f("encoding", Str), ENCODING_RE),
    f("content", Str),
    f("owner", Str),
    f("path", Str),
    valid(f("permissions", Str), PERMISSIONS_RE),
];

/// `users[]`.
pub const USER: &[Field] = &[
    f("name", Str),
    f("passwd", Str),
    f("gecos", Str),
    f("homedir", Str),
    f("no_create_home", Bool),
    f("primary_group", Str),
    f("groups", StrList),
    f("no_user_group", Bool),
    f("ssh_authorized_keys", StrList),
    dep(f("coreos_ssh_import_github", Str), REMOTE_NOTE),
    dep(f("coreos_ssh_import_github_users", StrList), REMOTE_NOTE),
    dep(f("coreos_ssh_import_url", Str), REMOTE_NOTE),
    f("system", Bool),
    f("no_log_init", Bool),
    f("shell", Str),
];

/// The top level.
pub const CLOUD_CONFIG: &[Field] = &[
    f("coreos", Ty::Struct(COREOS)),
    f("ssh_authorized_keys", StrList),
    f("hostname", Str),
    f("users", Ty::StructList(USER)),
    f("write_files", Ty::StructList(WRITE_FILE)),
    f("manage_etc_hosts", Str),
];

/// The field named `key` (normalised) in `fields`.
pub fn field(fields: &'static [Field], key: &str) -> Option<&'static Field> {
    fields.iter().find(|f| f.key == key)
}

/// coreos-cloudinit's key normalisation: every `-` becomes `_`.
pub fn normalize_key(key: &str) -> String {
    key.replace('-', "_")
}

//! The typed cloud-config, decoded the way coreos-cloudinit's runtime decoded it: keys
//! normalised (`-` → `_`), unknown keys ignored, values of the wrong type silently left at
//! their zero value, string fields taking a scalar's literal text.

use crate::schema::{self, Field, Ty};
use crate::yaml::{Node, NodeKind, Resolved, Scalar};

/// A decoded `#cloud-config`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CloudConfig {
    /// Keys for user `core`.
    pub ssh_authorized_keys: Vec<String>,
    /// The system host name.
    pub hostname: String,
    /// Users to create or update.
    pub users: Vec<User>,
    /// Files to write.
    pub write_files: Vec<WriteFile>,
    /// Only `localhost` is meaningful.
    pub manage_etc_hosts: String,
    /// The `coreos` section.
    pub coreos: CoreOs,
}

/// The `coreos` section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoreOs {
    /// `etcd` → `etcd.service` drop-in.
    pub etcd: EnvSection,
    /// `etcd2` → `etcd2.service` drop-in.
    pub etcd2: EnvSection,
    /// `fleet` → `fleet.service` drop-in.
    pub fleet: EnvSection,
    /// `flannel` → `/run/flannel/options.env`.
    pub flannel: EnvSection,
    /// `locksmith` → `locksmithd.service` drop-in.
    pub locksmith: EnvSection,
    /// `update` → `/etc/coreos/update.conf`.
    pub update: EnvSection,
    /// `oem` → `/etc/oem-release`.
    pub oem: Oem,
    /// `units`.
    pub units: Vec<Unit>,
}

/// A section that becomes `KEY=value` pairs: the non-zero fields, in declaration order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvSection {
    /// (variable name, rendered value).
    pub vars: Vec<(&'static str, String)>,
}

impl EnvSection {
    /// The value of a variable, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The `20-cloudinit.conf` drop-in text; empty when nothing is set.
    pub fn dropin(&self) -> String {
        if self.vars.is_empty() {
            return String::new();
        }
        let mut out = String::from("[Service]\n");
        for (k, v) in &self.vars {
            out.push_str(&format!("Environment=\"{k}={v}\"\n"));
        }
        out
    }
}

/// `coreos.oem`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Oem {
    /// `ID`
    pub id: String,
    /// `NAME`
    pub name: String,
    /// `VERSION_ID`
    pub version_id: String,
    /// `HOME_URL`
    pub home_url: String,
    /// `BUG_REPORT_URL`
    pub bug_report_url: String,
}

/// `coreos.units[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unit {
    /// File name including the type suffix.
    pub name: String,
    /// Link the unit to `/dev/null`.
    pub mask: bool,
    /// Process `[Install]`.
    pub enable: bool,
    /// Write under `/run` instead of `/etc`.
    pub runtime: bool,
    /// Unit file text; empty means no file is written.
    pub content: String,
    /// Job to run (`start`, `restart`, …).
    pub command: String,
    /// Drop-ins.
    pub drop_ins: Vec<DropIn>,
}

/// `coreos.units[].drop_ins[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropIn {
    /// File name in `<unit>.d/`.
    pub name: String,
    /// File content.
    pub content: String,
}

/// `write_files[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteFile {
    /// Encoding of `content`.
    pub encoding: String,
    /// Content bytes (a `!!binary` scalar is already decoded).
    pub content: Vec<u8>,
    /// `chown` argument.
    pub owner: String,
    /// Target path.
    pub path: String,
    /// Octal mode text.
    pub permissions: String,
}

/// `users[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password hash.
    pub passwd: String,
    /// GECOS comment.
    pub gecos: String,
    /// Home directory.
    pub homedir: String,
    /// `--no-create-home`
    pub no_create_home: bool,
    /// `--gid`
    pub primary_group: String,
    /// `--groups`
    pub groups: Vec<String>,
    /// `--no-user-group`
    pub no_user_group: bool,
    /// Keys for this user.
    pub ssh_authorized_keys: Vec<String>,
    /// Deprecated GitHub key import.
    pub coreos_ssh_import_github: String,
    /// Deprecated GitHub key import.
    pub coreos_ssh_import_github_users: Vec<String>,
    /// Deprecated URL key import.
    pub coreos_ssh_import_url: String,
    /// `--system`
    pub system: bool,
    /// `--no-log-init`
    pub no_log_init: bool,
    /// `--shell`
    pub shell: String,
}

/// A mapping's fields by normalised key; the last duplicate wins, as in go-yaml.
struct Fields<'a> {
    entries: Vec<(String, &'a Node)>,
}

impl<'a> Fields<'a> {
    fn of(node: Option<&'a Node>) -> Self {
        let entries = node
            .and_then(Node::mapping)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((schema::normalize_key(k.key_text()?), v)))
                    .collect()
            })
            .unwrap_or_default();
        Self { entries }
    }

    fn node(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }

    fn scalar(&self, key: &str) -> Option<&'a Scalar> {
        self.node(key).and_then(Node::scalar)
    }

    fn string(&self, key: &str) -> String {
        self.scalar(key).map(Scalar::string).unwrap_or_default()
    }

    fn bytes(&self, key: &str) -> Vec<u8> {
        self.scalar(key).map(Scalar::bytes).unwrap_or_default()
    }

    fn bool(&self, key: &str) -> bool {
        matches!(
            self.scalar(key).map(|s| &s.resolved),
            Some(Resolved::Bool(true))
        )
    }

    fn strings(&self, key: &str) -> Vec<String> {
        self.node(key)
            .and_then(Node::sequence)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|n| n.scalar().map(Scalar::string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn structs<T>(&self, key: &str, decode: impl Fn(Fields<'a>) -> T) -> Vec<T> {
        self.node(key)
            .and_then(Node::sequence)
            .map(|items| {
                items
                    .iter()
                    .filter(|n| n.mapping().is_some() || n.is_null())
                    .map(|n| decode(Fields::of(Some(n))))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn env(&self, key: &str, schema: &'static [Field]) -> EnvSection {
        let section = Fields::of(self.node(key));
        let vars = schema
            .iter()
            .filter_map(|f| {
                let env = f.env?;
                let s = section.scalar(f.key)?;
                let value = render(f.ty, s)?;
                Some((env, value))
            })
            .collect();
        EnvSection { vars }
    }
}

/// A scalar as the generated configuration writes it, or `None` for a zero value or a value
/// of the wrong type.
fn render(ty: Ty, s: &Scalar) -> Option<String> {
    match (ty, &s.resolved) {
        (Ty::Str, _) => Some(s.string()).filter(|v| !v.is_empty()),
        (Ty::Int, Resolved::Int(i)) => (*i != 0).then(|| i.to_string()),
        (Ty::Float, Resolved::Int(i)) => (*i != 0).then(|| go_float(*i as f64)),
        (Ty::Float, Resolved::Float(x)) => (*x != 0.0).then(|| go_float(*x)),
        (Ty::Bool, Resolved::Bool(true)) => Some("true".to_string()),
        _ => None,
    }
}

/// Go's `%v` for a float64 (`strconv` 'g', shortest): exponent form below 1e-4 or from 1e6 on.
pub fn go_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if x == 0.0 {
        return "0".into();
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{x}")
    }
}

impl CloudConfig {
    /// Decodes a parsed document (the root node) with runtime semantics.
    pub fn from_node(root: Option<&Node>) -> Self {
        let top = Fields::of(root);
        let coreos = Fields::of(top.node("coreos"));
        let oem = Fields::of(coreos.node("oem"));
        CloudConfig {
            ssh_authorized_keys: top.strings("ssh_authorized_keys"),
            hostname: top.string("hostname"),
            users: top.structs("users", |u| User {
                name: u.string("name"),
                passwd: u.string("passwd"),
                gecos: u.string("gecos"),
                homedir: u.string("homedir"),
                no_create_home: u.bool("no_create_home"),
                primary_group: u.string("primary_group"),
                groups: u.strings("groups"),
                no_user_group: u.bool("no_user_group"),
                ssh_authorized_keys: u.strings("ssh_authorized_keys"),
                coreos_ssh_import_github: u.string("coreos_ssh_import_github"),
                coreos_ssh_import_github_users: u.strings("coreos_ssh_import_github_users"),
                coreos_ssh_import_url: u.string("coreos_ssh_import_url"),
                system: u.bool("system"),
                no_log_init: u.bool("no_log_init"),
                shell: u.string("shell"),
            }),
            write_files: top.structs("write_files", |w| WriteFile {
                encoding: w.string("encoding"),
                content: w.bytes("content"),
                owner: w.string("owner"),
                path: w.string("path"),
                permissions: w.string("permissions"),
            }),
            manage_etc_hosts: top.string("manage_etc_hosts"),
            coreos: CoreOs {
                etcd: coreos.env("etcd", schema::ETCD),
                etcd2: coreos.env("etcd2", schema::ETCD2),
                fleet: coreos.env("fleet", schema::FLEET),
                flannel: coreos.env("flannel", schema::FLANNEL),
                locksmith: coreos.env("locksmith", schema::LOCKSMITH),
                update: coreos.env("update", schema::UPDATE),
                oem: Oem {
                    id: oem.string("id"),
                    name: oem.string("name"),
                    version_id: oem.string("version_id"),
                    home_url: oem.string("home_url"),
                    bug_report_url: oem.string("bug_report_url"),
                },
                units: coreos.structs("units", |u| Unit {
                    name: u.string("name"),
                    mask: u.bool("mask"),
                    enable: u.bool("enable"),
                    runtime: u.bool("runtime"),
                    content: u.string("content"),
                    command: u.string("command"),
                    drop_ins: u.structs("drop_ins", |d| DropIn {
                        name: d.string("name"),
                        content: d.string("content"),
                    }),
                }),
            },
        }
    }
}

/// Node kinds, for callers that inspect raw nodes.
pub fn is_mapping(node: &Node) -> bool {
    matches!(node.kind, NodeKind::Mapping(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> CloudConfig {
        CloudConfig::from_node(crate::yaml::parse(text.as_bytes()).unwrap().as_ref())
    }

    #[test]
    fn literal_text_and_silent_drops() {
        let c = decode("#cloud-config\nhostname: [a]\nwrite-files:\n  - path: /etc/a\n    permissions: 0644\ncoreos:\n  update:\n    reboot-strategy: off\n  units:\n    - name: a.service\n      enable: \"yes\"\n    - name: b.service\n      enable: yes\n      drop-ins:\n        - name: x.conf\n          content: y\n  fleet:\n    metadata:\n      role: x\n    verbosity: 2\n    engine_reconcile_interval: 0.5\n    disable_engine: true\n");
        assert_eq!(c.hostname, "");
        assert_eq!(c.write_files[0].permissions, "0644");
        assert_eq!(c.coreos.update.get("REBOOT_STRATEGY"), Some("off"));
        assert!(!c.coreos.units[0].enable);
        assert!(c.coreos.units[1].enable);
        assert_eq!(c.coreos.units[1].drop_ins[0].name, "x.conf");
        assert_eq!(
            c.coreos.fleet.dropin(),
            "[Service]\nEnvironment=\"FLEET_DISABLE_ENGINE=true\"\nEnvironment=\"FLEET_ENGINE_RECONCILE_INTERVAL=0.5\"\nEnvironment=\"FLEET_VERBOSITY=2\"\n"
        );
    }

    #[test]
    fn go_floats() {
        assert_eq!(go_float(0.5), "0.5");
        assert_eq!(go_float(1.0), "1");
        assert_eq!(go_float(1e-6), "1e-06");
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(123456789.0), "1.23456789e+08");
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(2.5e-5), "2.5e-05");
    }
}

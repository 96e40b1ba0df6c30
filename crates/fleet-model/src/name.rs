//! fleet's unit names: the API's `ValidateName` and fleetctl's name mangling.

/// The unit types fleet's API accepts.
pub const VALID_TYPES: &[&str] = &[
    "service",
    "socket",
    "busname",
    "target",
    "snapshot",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// The types fleetctl recognises when mangling a name (anything else gets `.service`).
pub const RECOGNIZED_TYPES: &[&str] = &[
    "service",
    "socket",
    "timer",
    "path",
    "device",
    "mount",
    "automount",
];

/// The longest unit name fleet accepts.
pub const MAX_NAME_LEN: usize = 256;

/// Why fleet rejects a unit name; the messages are fleet's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty.
    #[error("unit name cannot be empty")]
    Empty,
    /// Over 256 bytes.
    #[error("unit name exceeds maximum length ({MAX_NAME_LEN})")]
    TooLong,
    /// No dot.
    #[error("unit name must contain \".\"")]
    NoDot,
    /// Ends with a dot.
    #[error("unit name cannot end in \".\"")]
    EndsInDot,
    /// An unknown suffix.
    #[error("invalid unit type: {0:?}")]
    InvalidType(String),
    /// A character outside letters, digits and `:-_.\@`.
    #[error("invalid character '{0}' in unit name")]
    InvalidChar(char),
    /// Starts with `@`.
    #[error("unit name cannot start in \"@\"")]
    StartsWithAt,
    /// A template or instance of a type that cannot be one (fleet 1.0).
    #[error("invalid unit type for template: {0:?}")]
    InvalidTemplateType(String),
    /// A name fleet accepted but the machines' systemd refuses (`.service`, a 256-byte
    /// name, a type systemd no longer has): refused here so that no agent is handed it.
    #[error("{0}")]
    NotForSystemd(#[from] systemd_unit::UnitNameError),
}

/// The types fleet 1.0 accepts for templates and their instances.
pub const VALID_TEMPLATE_TYPES: &[&str] = &["path", "service", "socket", "target", "timer"];

/// fleet 1.0's `ValidateName`, with its messages, and then systemd's `unit_name_is_valid`
/// (fleet passed names systemd refuses, such as `.service`, to its agents).
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    let Some(dot) = name.rfind('.') else {
        return Err(NameError::NoDot);
    };
    if dot == name.len() - 1 {
        return Err(NameError::EndsInDot);
    }
    let suffix = &name[dot + 1..];
    if !VALID_TYPES.contains(&suffix) {
        return Err(NameError::InvalidType(suffix.to_string()));
    }
    if name.contains('@') && !VALID_TEMPLATE_TYPES.contains(&suffix) {
        return Err(NameError::InvalidTemplateType(suffix.to_string()));
    }
    if let Some(c) = name[..dot]
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@')))
    {
        return Err(NameError::InvalidChar(c));
    }
    if name.starts_with('@') {
        return Err(NameError::StartsWithAt);
    }
    systemd_unit::UnitName::parse(name)?;
    Ok(())
}

/// fleetctl's mangling of a command-line argument: its base name, with `.service` appended
/// unless it ends in one of the seven recognised types (so `x.target` becomes
/// `x.target.service`, as fleetctl did).
pub fn mangle(arg: &str) -> String {
    let base = arg.rsplit('/').find(|s| !s.is_empty()).unwrap_or(arg);
    let recognised = RECOGNIZED_TYPES
        .iter()
        .any(|t| base.ends_with(&format!(".{t}")));
    if recognised {
        base.to_string()
    } else {
        format!("{base}.service")
    }
}

/// The parts of a unit name: `foo@bar.service` is prefix `foo`, instance `bar`, template
/// `foo@.service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameInfo {
    /// The whole name.
    pub full: String,
    /// Without the suffix.
    pub name: String,
    /// Before the `@` (or the whole name without suffix).
    pub prefix: String,
    /// The template name, for templates and instances.
    pub template: Option<String>,
    /// The instance (everything after the first `@`, before the last `.`).
    pub instance: Option<String>,
}

impl NameInfo {
    /// Splits a name; `None` without a dot.
    pub fn parse(full: &str) -> Option<Self> {
        let dot = full.rfind('.')?;
        let (name, suffix) = (&full[..dot], &full[dot..]);
        let (prefix, template, instance) = match name.find('@') {
            None => (name.to_string(), None, None),
            Some(a) => (
                name[..a].to_string(),
                Some(format!("{}@{suffix}", &name[..a])),
                Some(name[a + 1..].to_string()),
            ),
        };
        Some(Self {
            full: full.to_string(),
            name: name.to_string(),
            prefix,
            template,
            instance: instance.filter(|i| !i.is_empty()),
        })
    }

    /// `foo@bar.service`.
    pub fn is_instance(&self) -> bool {
        self.instance.is_some()
    }

    /// `foo@.service`.
    pub fn is_template(&self) -> bool {
        self.template.is_some() && self.instance.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_name("hello.service"), Ok(()));
        assert_eq!(validate_name("hello@1.service"), Ok(()));
        // Types fleet knew and systemd 252 no longer has are refused with systemd's word.
        assert_eq!(
            validate_name("a.busname").map_err(|e| e.to_string()),
            Err("unit name \"a.busname\" has an unknown type \"busname\"".into())
        );
        // fleet accepted these; systemd refuses them (and an agent handed one failed).
        assert!(matches!(
            validate_name(".service"),
            Err(NameError::NotForSystemd(_))
        ));
        assert!(matches!(
            validate_name(&format!("{}.service", "a".repeat(248))),
            Err(NameError::NotForSystemd(_))
        ));
        assert_eq!(
            validate_name("x@1.mount"),
            Err(NameError::InvalidTemplateType("mount".into()))
        );
        assert_eq!(
            NameError::InvalidTemplateType("mount".into()).to_string(),
            "invalid unit type for template: \"mount\""
        );
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(
            validate_name(&format!("{}.service", "a".repeat(250))),
            Err(NameError::TooLong)
        );
        assert_eq!(validate_name("hello"), Err(NameError::NoDot));
        assert_eq!(validate_name("hello."), Err(NameError::EndsInDot));
        assert_eq!(
            validate_name("hello.txt"),
            Err(NameError::InvalidType("txt".into()))
        );
        assert_eq!(
            validate_name("he llo.service"),
            Err(NameError::InvalidChar(' '))
        );
        assert_eq!(validate_name("@x.service"), Err(NameError::StartsWithAt));
        assert_eq!(
            NameError::InvalidType("txt".into()).to_string(),
            "invalid unit type: \"txt\""
        );
        assert_eq!(
            NameError::InvalidChar('!').to_string(),
            "invalid character '!' in unit name"
        );
    }

    #[test]
    fn mangling() {
        assert_eq!(mangle("foo"), "foo.service");
        assert_eq!(mangle("units/hello.service"), "hello.service");
        assert_eq!(mangle("x.socket"), "x.socket");
        assert_eq!(mangle("x.target"), "x.target.service");
        assert_eq!(mangle("./dir/web@1"), "web@1.service");
    }

    #[test]
    fn name_info() {
        let i = NameInfo::parse("foo@bar.service").unwrap();
        assert_eq!(
            (
                i.prefix.as_str(),
                i.instance.as_deref(),
                i.template.as_deref()
            ),
            ("foo", Some("bar"), Some("foo@.service"))
        );
        assert!(i.is_instance());
        let t = NameInfo::parse("foo@.service").unwrap();
        assert!(t.is_template() && !t.is_instance());
        let p = NameInfo::parse("plain.service").unwrap();
        assert_eq!((p.prefix.as_str(), p.template.as_deref()), ("plain", None));
    }
}

//! Unit names: `prefix.type`, templates `prefix@.type` and instances `prefix@instance.type`.

use std::fmt;
use std::str::FromStr;

/// Unit names must be shorter than this many bytes (systemd's `UNIT_NAME_MAX`).
pub const UNIT_NAME_MAX: usize = 256;

/// The unit types systemd knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnitType {
    /// `.service`
    Service,
    /// `.socket`
    Socket,
    /// `.target`
    Target,
    /// `.device`
    Device,
    /// `.mount`
    Mount,
    /// `.automount`
    Automount,
    /// `.swap`
    Swap,
    /// `.timer`
    Timer,
    /// `.path`
    Path,
    /// `.slice`
    Slice,
    /// `.scope`
    Scope,
}

impl UnitType {
    /// Every type, in systemd's order.
    pub const ALL: [UnitType; 11] = [
        UnitType::Service,
        UnitType::Mount,
        UnitType::Swap,
        UnitType::Socket,
        UnitType::Target,
        UnitType::Device,
        UnitType::Automount,
        UnitType::Timer,
        UnitType::Path,
        UnitType::Slice,
        UnitType::Scope,
    ];

    /// The suffix without the dot, e.g. `service`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitType::Service => "service",
            UnitType::Socket => "socket",
            UnitType::Target => "target",
            UnitType::Device => "device",
            UnitType::Mount => "mount",
            UnitType::Automount => "automount",
            UnitType::Swap => "swap",
            UnitType::Timer => "timer",
            UnitType::Path => "path",
            UnitType::Slice => "slice",
            UnitType::Scope => "scope",
        }
    }

    /// Parses a suffix without the dot.
    pub fn from_suffix(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for UnitType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a unit name is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitNameError {
    /// The empty string.
    #[error("unit name cannot be empty")]
    Empty,
    /// `UNIT_NAME_MAX` bytes or longer.
    #[error("unit name {0:?} is too long (the limit is {max} bytes)", max = UNIT_NAME_MAX - 1)]
    TooLong(String),
    /// No `.type` suffix.
    #[error("unit name {0:?} has no type suffix (like .service)")]
    NoSuffix(String),
    /// A suffix that is not a unit type.
    #[error("unit name {name:?} has an unknown type {suffix:?}")]
    UnknownType {
        /// The whole name.
        name: String,
        /// The text after the last dot.
        suffix: String,
    },
    /// A character outside `[A-Za-z0-9:_.\\@-]`.
    #[error("unit name {name:?} contains the invalid character {ch:?}")]
    InvalidChar {
        /// The whole name.
        name: String,
        /// The first offending character.
        ch: char,
    },
    /// Nothing before the `.type` suffix or before the `@`.
    #[error("unit name {0:?} has an empty prefix")]
    EmptyPrefix(String),
}

/// A valid unit name, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitName {
    full: String,
    /// Byte index of the first `@`, if any.
    at: Option<usize>,
    /// Byte index of the last `.`.
    dot: usize,
    unit_type: UnitType,
}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@')
}

impl UnitName {
    /// Validates `name` as systemd's `unit_name_is_valid` does.
    pub fn parse(name: &str) -> Result<Self, UnitNameError> {
        if name.is_empty() {
            return Err(UnitNameError::Empty);
        }
        if name.len() >= UNIT_NAME_MAX {
            return Err(UnitNameError::TooLong(name.to_string()));
        }
        let dot = name
            .rfind('.')
            .ok_or_else(|| UnitNameError::NoSuffix(name.to_string()))?;
        let suffix = &name[dot + 1..];
        let unit_type =
            UnitType::from_suffix(suffix).ok_or_else(|| UnitNameError::UnknownType {
                name: name.to_string(),
                suffix: suffix.to_string(),
            })?;
        if let Some(ch) = name[..dot].chars().find(|c| !valid_char(*c)) {
            return Err(UnitNameError::InvalidChar {
                name: name.to_string(),
                ch,
            });
        }
        let at = name[..dot].find('@');
        if dot == 0 || at == Some(0) {
            return Err(UnitNameError::EmptyPrefix(name.to_string()));
        }
        Ok(Self {
            full: name.to_string(),
            at,
            dot,
            unit_type,
        })
    }

    /// The whole name, e.g. `foo@bar.service`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The name without the type suffix, e.g. `foo@bar` (systemd's and fleet's `%N`).
    pub fn without_suffix(&self) -> &str {
        &self.full[..self.dot]
    }

    /// The part before the `@`, or the whole name without suffix (`%p`).
    pub fn prefix(&self) -> &str {
        &self.full[..self.at.unwrap_or(self.dot)]
    }

    /// The instance of an instance unit (`%i`); `None` for plain units and templates.
    pub fn instance(&self) -> Option<&str> {
        let at = self.at?;
        let inst = &self.full[at + 1..self.dot];
        (!inst.is_empty()).then_some(inst)
    }

    /// The unit type.
    pub fn unit_type(&self) -> UnitType {
        self.unit_type
    }

    /// `foo@.service`: a template, with no instance.
    pub fn is_template(&self) -> bool {
        self.at.is_some() && self.instance().is_none()
    }

    /// `foo@bar.service`: an instance of a template.
    pub fn is_instance(&self) -> bool {
        self.instance().is_some()
    }

    /// The template this unit is an instance of (or itself, for a template).
    pub fn template(&self) -> Option<UnitName> {
        self.at?;
        let name = format!("{}@.{}", self.prefix(), self.unit_type);
        UnitName::parse(&name).ok()
    }

    /// The instance `instance` of this template (or of this instance's template).
    pub fn with_instance(&self, instance: &str) -> Result<UnitName, UnitNameError> {
        UnitName::parse(&format!(
            "{}@{}.{}",
            self.prefix(),
            instance,
            self.unit_type
        ))
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl FromStr for UnitName {
    type Err = UnitNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for UnitName {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_template_instance() {
        let u = UnitName::parse("etcd2.service").unwrap();
        assert_eq!(u.prefix(), "etcd2");
        assert_eq!(u.instance(), None);
        assert!(!u.is_template() && !u.is_instance());
        assert_eq!(u.unit_type(), UnitType::Service);

        let t = UnitName::parse("user-cloudinit@.path").unwrap();
        assert!(t.is_template());
        assert_eq!(t.prefix(), "user-cloudinit");
        let i = t
            .with_instance("var-lib-coreos\\x2dvagrant-vagrantfile\\x2duser\\x2ddata")
            .unwrap();
        assert!(i.is_instance());
        assert_eq!(
            i.instance(),
            Some("var-lib-coreos\\x2dvagrant-vagrantfile\\x2duser\\x2ddata")
        );
        assert_eq!(i.template().unwrap().as_str(), "user-cloudinit@.path");
        assert_eq!(
            i.without_suffix(),
            "user-cloudinit@var-lib-coreos\\x2dvagrant-vagrantfile\\x2duser\\x2ddata"
        );

        let multi = UnitName::parse("a@b@c.socket").unwrap();
        assert_eq!(multi.instance(), Some("b@c"));
        assert_eq!(UnitName::parse("x.y.timer").unwrap().prefix(), "x.y");
    }

    #[test]
    fn invalid_names() {
        assert_eq!(UnitName::parse(""), Err(UnitNameError::Empty));
        assert!(matches!(
            UnitName::parse("foo"),
            Err(UnitNameError::NoSuffix(_))
        ));
        assert!(matches!(
            UnitName::parse("foo.bar"),
            Err(UnitNameError::UnknownType { .. })
        ));
        assert!(matches!(
            UnitName::parse("foo."),
            Err(UnitNameError::UnknownType { .. })
        ));
        assert!(matches!(
            UnitName::parse("fo o.service"),
            Err(UnitNameError::InvalidChar { ch: ' ', .. })
        ));
        assert!(matches!(
            UnitName::parse("@a.service"),
            Err(UnitNameError::EmptyPrefix(_))
        ));
        assert!(matches!(
            UnitName::parse(".service"),
            Err(UnitNameError::EmptyPrefix(_))
        ));
        let long = format!("{}.service", "a".repeat(250));
        assert!(matches!(
            UnitName::parse(&long),
            Err(UnitNameError::TooLong(_))
        ));
        assert_eq!(
            UnitName::parse("fo/o.service").unwrap_err().to_string(),
            "unit name \"fo/o.service\" contains the invalid character '/'"
        );
    }
}

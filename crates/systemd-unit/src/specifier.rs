//! `%` specifiers in unit files.

use crate::escape::{unescape, unescape_path, EscapeError};
use crate::UnitName;

/// A specifier that cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecifierError {
    /// `%x` for a letter this expander does not know.
    #[error("unknown specifier %{spec} in {text:?}")]
    Unknown {
        /// The letter after `%`.
        spec: char,
        /// The text being expanded.
        text: String,
    },
    /// A `%` at the very end.
    #[error("lone % at the end of {0:?}")]
    Trailing(String),
    /// `%H`, `%m` or `%b` without the value being known.
    #[error("specifier %{spec} in {text:?} needs a value that is not known here")]
    Missing {
        /// The letter after `%`.
        spec: char,
        /// The text being expanded.
        text: String,
    },
    /// `%I`, `%P` or `%f` of a name that does not unescape.
    #[error(transparent)]
    Unescape(#[from] EscapeError),
}

/// The values `%` specifiers expand to, for one unit on one machine.
#[derive(Debug, Clone)]
pub struct Specifiers<'a> {
    /// The unit whose file is being read.
    pub unit: &'a UnitName,
    /// `%H`: the host name.
    pub hostname: Option<&'a str>,
    /// `%m`: the machine ID.
    pub machine_id: Option<&'a str>,
    /// `%b`: the boot ID.
    pub boot_id: Option<&'a str>,
}

impl<'a> Specifiers<'a> {
    /// Specifiers for `unit` with no machine values known.
    pub fn for_unit(unit: &'a UnitName) -> Self {
        Self {
            unit,
            hostname: None,
            machine_id: None,
            boot_id: None,
        }
    }

    /// Expands as systemd does: `%n %N %p %P %i %I %f %H %m %b %%`; anything else is an error.
    pub fn expand(&self, text: &str) -> Result<String, SpecifierError> {
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let spec = chars
                .next()
                .ok_or_else(|| SpecifierError::Trailing(text.to_string()))?;
            let missing = |v: Option<&str>| {
                v.map(str::to_string)
                    .ok_or_else(|| SpecifierError::Missing {
                        spec,
                        text: text.to_string(),
                    })
            };
            let u = self.unit;
            let value = match spec {
                '%' => "%".to_string(),
                'n' => u.as_str().to_string(),
                'N' => u.without_suffix().to_string(),
                'p' => u.prefix().to_string(),
                'P' => unescape(u.prefix())?,
                'i' => u.instance().unwrap_or("").to_string(),
                'I' => unescape(u.instance().unwrap_or(""))?,
                'f' => unescape_path(u.instance().unwrap_or(u.prefix()))?,
                'H' => missing(self.hostname)?,
                'm' => missing(self.machine_id)?,
                'b' => missing(self.boot_id)?,
                _ => {
                    return Err(SpecifierError::Unknown {
                        spec,
                        text: text.to_string(),
                    })
                }
            };
            out.push_str(&value);
        }
        Ok(out)
    }

    /// Expands as fleet does inside `[X-Fleet]`: only `%n %N %p %i`; every other `%` sequence
    /// is left as it is.
    pub fn expand_fleet(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let u = self.unit;
            let value = match chars.peek() {
                Some('n') => u.as_str(),
                Some('N') => u.without_suffix(),
                Some('p') => u.prefix(),
                Some('i') => u.instance().unwrap_or(""),
                _ => {
                    out.push('%');
                    continue;
                }
            };
            chars.next();
            out.push_str(value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_specifiers() {
        let unit =
            UnitName::parse("user-cloudinit@var-lib-coreos\\x2dinstall-user_data.service").unwrap();
        let s = Specifiers {
            unit: &unit,
            hostname: Some("core-01"),
            machine_id: Some("0123456789abcdef0123456789abcdef"),
            boot_id: None,
        };
        assert_eq!(
            s.expand("--from-file=%f").unwrap(),
            "--from-file=/var/lib/coreos-install/user_data"
        );
        assert_eq!(s.expand("%p|%i|%I|%N").unwrap(), "user-cloudinit|var-lib-coreos\\x2dinstall-user_data|var/lib/coreos-install/user_data|user-cloudinit@var-lib-coreos\\x2dinstall-user_data");
        assert_eq!(
            s.expand("%H %m 100%%").unwrap(),
            "core-01 0123456789abcdef0123456789abcdef 100%"
        );
        assert!(matches!(
            s.expand("%b"),
            Err(SpecifierError::Missing { spec: 'b', .. })
        ));
        assert!(matches!(
            s.expand("%Z"),
            Err(SpecifierError::Unknown { spec: 'Z', .. })
        ));
        assert!(matches!(s.expand("50%"), Err(SpecifierError::Trailing(_))));
    }

    #[test]
    fn fleet_specifiers_leave_the_rest() {
        let unit = UnitName::parse("hello@1.service").unwrap();
        let s = Specifiers::for_unit(&unit);
        assert_eq!(
            s.expand_fleet("MachineOf=%p@%i.service %n %N %H %% 5%"),
            "MachineOf=hello@1.service hello@1.service hello@1 %H %% 5%"
        );
        let plain = UnitName::parse("web.service").unwrap();
        assert_eq!(Specifiers::for_unit(&plain).expand_fleet("%p-%i"), "web-");
    }
}

//! `systemd-escape`: turning strings and paths into unit-name parts and back.
//!
//! `escape("coreos-vagrant")` is `coreos\x2dvagrant`; `escape_path("/var/lib/coreos-vagrant/x")`
//! is `var-lib-coreos\x2dvagrant-x`, as in `user-cloudinit@var-lib-coreos\x2dvagrant-….path`.

use std::fmt::Write as _;

/// A string that cannot be escaped or unescaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscapeError {
    /// `escape_path` of a path with `.` or `..` components.
    #[error("path {0:?} is not normalized (it has . or .. components)")]
    NotNormalized(String),
    /// `escape_path` of a relative path.
    #[error("path {0:?} is not absolute")]
    NotAbsolute(String),
    /// A `\` not followed by `xNN`.
    #[error("invalid escape sequence in {0:?}")]
    InvalidEscape(String),
    /// The unescaped bytes are not UTF-8.
    #[error("{0:?} does not unescape to UTF-8 text")]
    NotUtf8(String),
}

fn keep(b: u8, first: bool) -> bool {
    b.is_ascii_alphanumeric() || b == b':' || b == b'_' || (b == b'.' && !first)
}

/// `systemd-escape STRING`: `/` becomes `-`, everything but `[A-Za-z0-9:_.]` (and a leading
/// `.`) becomes `\xNN`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if b == b'/' {
            out.push('-');
        } else if keep(b, i == 0) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// `systemd-escape --path PATH`: the path is simplified (repeated and trailing slashes
/// dropped), its leading slash removed, then escaped; `/` itself becomes `-`.
pub fn escape_path(path: &str) -> Result<String, EscapeError> {
    if !path.starts_with('/') {
        return Err(EscapeError::NotAbsolute(path.to_string()));
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(EscapeError::NotNormalized(path.to_string()));
    }
    if parts.is_empty() {
        return Ok("-".to_string());
    }
    Ok(escape(&parts.join("/")))
}

/// `systemd-escape --unescape`: `-` becomes `/`, `\xNN` becomes the byte NN.
pub fn unescape(s: &str) -> Result<String, EscapeError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'-' => {
                out.push(b'/');
                i += 1;
            }
            b'\\' => {
                let hex = bytes
                    .get(i + 1..i + 4)
                    .filter(|h| h[0] == b'x')
                    .and_then(|h| std::str::from_utf8(&h[1..]).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| EscapeError::InvalidEscape(s.to_string()))?;
                out.push(hex);
                i += 4;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| EscapeError::NotUtf8(s.to_string()))
}

/// `systemd-escape --unescape --path`: the inverse of [`escape_path`].
pub fn unescape_path(s: &str) -> Result<String, EscapeError> {
    if s == "-" || s.is_empty() {
        return Ok("/".to_string());
    }
    Ok(format!("/{}", unescape(s)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_escape_examples() {
        assert_eq!(
            escape_path("/var/lib/coreos-vagrant/vagrantfile-user-data").unwrap(),
            "var-lib-coreos\\x2dvagrant-vagrantfile\\x2duser\\x2ddata"
        );
        assert_eq!(
            escape_path("/usr/share/oem/cloud-config.yml").unwrap(),
            "usr-share-oem-cloud\\x2dconfig.yml"
        );
        assert_eq!(escape_path("/").unwrap(), "-");
        assert_eq!(escape_path("//var//tmp/").unwrap(), "var-tmp");
        assert_eq!(
            escape("Hallöchen, Meister"),
            "Hall\\xc3\\xb6chen\\x2c\\x20Meister"
        );
        assert_eq!(escape(".hidden"), "\\x2ehidden");
        assert_eq!(escape("a.b"), "a.b");
        assert!(escape_path("/a/../b").is_err());
        assert!(escape_path("a/b").is_err());
    }

    #[test]
    fn unescape_inverts() {
        for s in ["/var/lib/coreos-vagrant/x", "/", "/a b/c\\d", "/ü/.x"] {
            assert_eq!(unescape_path(&escape_path(s).unwrap()).unwrap(), s);
        }
        assert_eq!(unescape("foo\\x2dbar-baz").unwrap(), "foo-bar/baz");
        assert!(unescape("foo\\x2").is_err());
        assert!(unescape("foo\\y20").is_err());
        assert!(unescape("\\xff").is_err());
    }
}

//! What kind of user-data a blob is, the way coreos-cloudinit decided it.

use std::io::Read;

/// The kinds of user-data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Nothing at all.
    Empty,
    /// A `#!` script, run with bash in a transient unit.
    Script,
    /// An Ignition config (JSON with an integer `ignitionVersion`): not for coreos-cloudinit.
    Ignition,
    /// A `#cloud-config` document.
    CloudConfig,
    /// Anything else.
    Unknown,
}

/// The most gzip-compressed user-data may expand to.
pub const MAX_DECOMPRESSED: u64 = 64 * 1024 * 1024;

/// User-data that is gzip-compressed but does not decompress.
#[derive(Debug, thiserror::Error)]
#[error("user-data is gzip-compressed but does not decompress: {0}")]
pub struct GunzipError(String);

/// Decompresses gzip user-data (magic `1f 8b`); other data is returned as it is.
pub fn maybe_gunzip(data: &[u8]) -> Result<Vec<u8>, GunzipError> {
    if !data.starts_with(&[0x1f, 0x8b]) {
        return Ok(data.to_vec());
    }
    let mut out = Vec::new();
    let mut reader = flate2::read::GzDecoder::new(data).take(MAX_DECOMPRESSED + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|e| GunzipError(e.to_string()))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(GunzipError(format!(
            "it expands to more than {MAX_DECOMPRESSED} bytes"
        )));
    }
    Ok(out)
}

/// The first line: up to the first line break (`\n`, or a lone `\r` for old Mac files),
/// after a UTF-8 byte-order mark.
pub fn first_line(data: &[u8]) -> &[u8] {
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
    let end = data
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .unwrap_or(data.len());
    &data[..end]
}

fn is_ignition(data: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(data).is_ok_and(|v| {
        v.get("ignitionVersion")
            .is_some_and(|n| n.is_i64() || n.is_u64())
    })
}

/// Classifies (already decompressed) user-data: empty, `#!` script, Ignition,
/// `#cloud-config` (trailing whitespace after the header allowed), or unknown.
///
/// Compared to coreos-cloudinit, a UTF-8 byte-order mark before the header and old-Mac `\r`
/// line ends are accepted rather than reported as a bad header.
pub fn classify(data: &[u8]) -> Kind {
    if data.is_empty() {
        return Kind::Empty;
    }
    let first = first_line(data);
    if first.starts_with(b"#!") {
        return Kind::Script;
    }
    if is_ignition(data) {
        return Kind::Ignition;
    }
    if first.trim_ascii_end() == b"#cloud-config" {
        return Kind::CloudConfig;
    }
    Kind::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn kinds() {
        assert_eq!(classify(b""), Kind::Empty);
        assert_eq!(classify(b"#!/bin/bash\necho hi\n"), Kind::Script);
        assert_eq!(classify(b"#!cloud-config\n"), Kind::Script);
        assert_eq!(classify(b"{\"ignitionVersion\": 1}"), Kind::Ignition);
        assert_eq!(classify(b"{\"ignitionVersion\":0}"), Kind::Ignition);
        assert_eq!(
            classify(b"{\"ignition\": {\"version\": \"2.0.0\"}}"),
            Kind::Unknown
        );
        assert_eq!(classify(b"{}"), Kind::Unknown);
        assert_eq!(classify(b"#cloud-config"), Kind::CloudConfig);
        assert_eq!(
            classify(b"#cloud-config   \nhostname: x\n"),
            Kind::CloudConfig
        );
        assert_eq!(
            classify(b"#cloud-config\r\nhostname: x\r\n"),
            Kind::CloudConfig
        );
        assert_eq!(classify(b"\xef\xbb\xbf#cloud-config\n"), Kind::CloudConfig);
        assert_eq!(classify(b"#cloud-config\rhostname: x\r"), Kind::CloudConfig);
        assert_eq!(classify(b" #cloud-config\n"), Kind::Unknown);
        assert_eq!(classify(b"# cloud-config\n"), Kind::Unknown);
        assert_eq!(classify(b"#cloud-config:\n"), Kind::Unknown);
        assert_eq!(classify(b"\n#cloud-config\n"), Kind::Unknown);
    }

    #[test]
    fn gzip() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"#cloud-config\nhostname: x\n").unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(maybe_gunzip(&gz).unwrap(), b"#cloud-config\nhostname: x\n");
        assert_eq!(maybe_gunzip(b"plain").unwrap(), b"plain");
        assert!(maybe_gunzip(&gz[..10]).is_err());
    }
}

//! User data formats, detected by content:
//!
//! * a native node config: YAML mapping, parsed strictly by [`NodeConfig::parse_untrusted`] (errors
//!   carry line and column);
//! * an Ignition config v3.0.0–v3.6.0 (JSON with `ignition.version`); the node config then
//!   travels inside it as the file
//!   [`nodeimage_core::config::NODE_CONFIG_IGNITION_PATH`].
//!
//! gzip-compressed user data (as Terraform and some clouds send it) is decompressed first.
//! Anything else (cloud-init `#cloud-config`, scripts, MIME multipart, other JSON) is an
//! error naming the source and what was expected.

use std::io::Read;

use nodeimage_core::config::NodeConfig;

use super::SourceError;

const MAX_USER_DATA: u64 = 64 << 20;

const EXPECTED: &str =
    "expected a native node config (YAML with `version: 1`) or an Ignition v3 config (JSON with `ignition.version`)";

/// What a user-data document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserDataKind {
    NodeConfig,
    Ignition,
    CloudConfig,
    Script,
    Multipart,
    Unknown,
}

fn strip(data: &[u8]) -> &[u8] {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let start = data
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(data.len());
    &data[start..]
}

/// Classify a (decompressed) user-data document by its first bytes.
pub fn detect(data: &[u8]) -> UserDataKind {
    let d = strip(data);
    if d.starts_with(b"{") {
        UserDataKind::Ignition
    } else if d.starts_with(b"#cloud-config")
        || d.starts_with(b"#include")
        || d.starts_with(b"#cloud-boothook")
    {
        UserDataKind::CloudConfig
    } else if d.starts_with(b"#!") {
        UserDataKind::Script
    } else if d.len() >= 13 && d[..13].eq_ignore_ascii_case(b"content-type:")
        || d.starts_with(b"MIME-Version:")
    {
        UserDataKind::Multipart
    } else if std::str::from_utf8(d).is_ok() && !d.is_empty() {
        UserDataKind::NodeConfig
    } else {
        UserDataKind::Unknown
    }
}

/// Decompress gzip user data; pass anything else through.
pub fn decompress(source_name: &str, data: &[u8]) -> Result<Vec<u8>, SourceError> {
    if !data.starts_with(&[0x1f, 0x8b]) {
        return Ok(data.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(MAX_USER_DATA + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            SourceError::format(
                source_name,
                format!("user data looks gzip-compressed but does not decompress: {e}"),
            )
        })?;
    if out.len() as u64 > MAX_USER_DATA {
        return Err(SourceError::format(
            source_name,
            "decompressed user data is larger than 64 MiB",
        ));
    }
    Ok(out)
}

/// What a user-data document carries.
#[derive(Debug)]
pub enum UserData {
    /// A native node config, parsed.
    NodeConfig(Box<NodeConfig>),
    /// An Ignition config (decompressed, not parsed yet): staging it fetches and
    /// validates it ([`crate::ignition::stage`]).
    Ignition(Vec<u8>),
}

/// Classify raw user data: a native node config (parsed here) or an Ignition config;
/// anything else is refused, naming the source.
pub fn classify(source_name: &str, data: &[u8]) -> Result<UserData, SourceError> {
    let data = decompress(source_name, data)?;
    match detect(&data) {
        UserDataKind::NodeConfig => {
            let text = std::str::from_utf8(strip(&data)).expect("checked by detect");
            // A YAML document that is not a mapping (plain text, a list) is not ours at all.
            match yaml_serde::from_str::<yaml_serde::Value>(text) {
                Ok(yaml_serde::Value::Mapping(_)) | Err(_) => {}
                Ok(_) => return Err(SourceError::format(source_name, format!("user data is not a YAML mapping; {EXPECTED}"))),
            }
            Ok(UserData::NodeConfig(Box::new(NodeConfig::parse_untrusted(
                source_name,
                text,
            )?)))
        }
        UserDataKind::Ignition => Ok(UserData::Ignition(data)),
        UserDataKind::CloudConfig => Err(SourceError::format(
            source_name,
            format!("user data is a cloud-init document (#cloud-config); firstboot does not run cloud-init: {EXPECTED}"),
        )),
        UserDataKind::Script => Err(SourceError::format(source_name, format!("user data is a script (#!); {EXPECTED}"))),
        UserDataKind::Multipart => {
            Err(SourceError::format(source_name, format!("user data is a MIME multipart document; {EXPECTED}")))
        }
        UserDataKind::Unknown => Err(SourceError::format(source_name, format!("user data is empty or not text; {EXPECTED}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_kinds() {
        assert_eq!(
            detect(b"\xEF\xBB\xBF  {\"ignition\":{}}"),
            UserDataKind::Ignition
        );
        assert_eq!(
            detect(b"#cloud-config\nusers: []"),
            UserDataKind::CloudConfig
        );
        assert_eq!(detect(b"#!/bin/sh\necho"), UserDataKind::Script);
        assert_eq!(
            detect(b"Content-Type: multipart/mixed"),
            UserDataKind::Multipart
        );
        assert_eq!(detect(b"version: 1\n"), UserDataKind::NodeConfig);
        assert_eq!(detect(b"\xff\xfe"), UserDataKind::Unknown);
        assert_eq!(detect(b""), UserDataKind::Unknown);
    }

    #[test]
    fn cloud_config_is_refused_with_the_source_named() {
        let e = classify("ec2", b"#cloud-config\n").unwrap_err().to_string();
        assert!(
            e.starts_with("ec2: ") && e.contains("#cloud-config") && e.contains("Ignition"),
            "{e}"
        );
        let e = classify("ec2", b"just some words").unwrap_err().to_string();
        assert!(e.contains("not a YAML mapping"), "{e}");
    }

    #[test]
    fn gzip_is_decompressed() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"hello").unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(decompress("x", &gz).unwrap(), b"hello");
    }
}

//! `nodeimage write-config`: validate a node config and write it into a finished raw
//! image's NODECONFIG partition without mounting anything (no root, no loop devices).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nodeimage_core::config::{NodeConfig, NODE_CONFIG_FILE_NAME};
use nodeimage_core::fat::{self, FatOptions, FileChanges};
use serde_json::Value;

use super::volumes::{find_nodeconfig, IGNITION_CONFIG_FILE_NAME, NODECONFIG_LABEL};
use super::{read_layout, DiskError, PartitionInfo};

/// Put a node config into a disk image's NODECONFIG partition.
#[derive(Debug, Clone, clap::Args)]
pub struct WriteConfigArgs {
    /// The raw disk image (`.raw`; convert other formats first).
    pub image: PathBuf,
    /// A native node config (`node.yaml`) or an Ignition config (JSON with
    /// `ignition.version`). Validated before the image is touched.
    pub config: PathBuf,
}

/// A config document, classified and validated.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigKind {
    /// A native node config (stored as `node.yaml`).
    Native(Box<NodeConfig>),
    /// An Ignition config (stored as `config.ign`).
    Ignition(Value),
}

impl ConfigKind {
    /// The file name this config has on NODECONFIG.
    pub fn file_name(&self) -> &'static str {
        match self {
            ConfigKind::Native(_) => NODE_CONFIG_FILE_NAME,
            ConfigKind::Ignition(_) => IGNITION_CONFIG_FILE_NAME,
        }
    }

    /// The other config file, removed so exactly one config is on the partition.
    fn other_file_name(&self) -> &'static str {
        match self {
            ConfigKind::Native(_) => IGNITION_CONFIG_FILE_NAME,
            ConfigKind::Ignition(_) => NODE_CONFIG_FILE_NAME,
        }
    }
}

/// Decide what `text` is and validate it: JSON with a top-level `ignition` key is an
/// Ignition config and needs a string `ignition.version`; everything else must be a
/// valid native node config (YAML, or JSON in the same schema).
pub fn classify_config(source_name: &str, text: &[u8]) -> Result<ConfigKind, DiskError> {
    let text = std::str::from_utf8(text).map_err(|e| DiskError::Ignition {
        source_name: source_name.to_string(),
        message: format!("expected UTF-8 text: {e}"),
    })?;
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        if let Some(ign) = v.get("ignition") {
            return match ign.get("version").and_then(Value::as_str) {
                Some(ver) if !ver.is_empty() => Ok(ConfigKind::Ignition(v)),
                _ => Err(DiskError::Ignition {
                    source_name: source_name.to_string(),
                    message: "ignition.version: expected a version string like \"3.4.0\"".into(),
                }),
            };
        }
    }
    Ok(ConfigKind::Native(Box::new(NodeConfig::parse(
        source_name,
        text,
    )?)))
}

/// Validate `text` and write it into the NODECONFIG partition of `image` (as
/// `node.yaml` or `config.ign`, removing the other), keeping the FAT volume's geometry,
/// label and serial. A NODECONFIG partition that was never formatted (its first 4 KiB
/// are zero) is formatted first. Nothing is written when the config is invalid. Returns the
/// partition written and the config's kind.
pub fn write_node_config(
    image: &Path,
    source_name: &str,
    text: &[u8],
    timestamp: i64,
) -> Result<(PartitionInfo, ConfigKind), DiskError> {
    let kind = classify_config(source_name, text)?;
    let layout = read_layout(image)?;
    let part = find_nodeconfig(image, &layout)?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|source| DiskError::Io {
            op: "opening",
            path: image.to_path_buf(),
            source,
        })?;
    let fat_err = |source| DiskError::Fat {
        image: image.to_path_buf(),
        partition: part.name.clone(),
        source,
    };
    if partition_is_blank(&mut f, &part).map_err(|source| DiskError::Io {
        op: "reading",
        path: image.to_path_buf(),
        source,
    })? {
        // A NODECONFIG partition left empty by the build: format it now, with a serial
        // derived from the partition GUID so the result is still reproducible.
        let mut files = BTreeMap::new();
        files.insert(kind.file_name().to_string(), text.to_vec());
        let g = part.part_guid.as_bytes();
        let opts = FatOptions {
            size_bytes: part.size_bytes,
            label: NODECONFIG_LABEL.to_string(),
            volume_id: u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            timestamp,
            fat_type: None,
        };
        let volume = fat::build(&files, &opts).map_err(fat_err)?;
        f.seek(SeekFrom::Start(part.start_bytes))
            .and_then(|_| f.write_all(&volume))
            .map_err(|source| DiskError::Io {
                op: "writing",
                path: image.to_path_buf(),
                source,
            })?;
    } else {
        let mut changes = FileChanges::new();
        changes.insert(kind.file_name().to_string(), Some(text.to_vec()));
        changes.insert(kind.other_file_name().to_string(), None);
        fat::replace_files(
            &mut f,
            part.start_bytes,
            part.size_bytes,
            &changes,
            timestamp,
        )
        .map_err(fat_err)?;
    }
    f.sync_all().map_err(|source| DiskError::Io {
        op: "syncing",
        path: image.to_path_buf(),
        source,
    })?;
    Ok((part, kind))
}

/// Whether the partition's first 4 KiB are all zero (never formatted).
fn partition_is_blank(f: &mut std::fs::File, p: &PartitionInfo) -> std::io::Result<bool> {
    let mut head = vec![0u8; p.size_bytes.min(4096) as usize];
    f.seek(SeekFrom::Start(p.start_bytes))?;
    f.read_exact(&mut head)?;
    Ok(head.iter().all(|b| *b == 0))
}

/// `SOURCE_DATE_EPOCH` when set (reproducible rewrites), else now.
fn timestamp_now() -> i64 {
    if let Some(t) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
    {
        return t;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `nodeimage write-config IMAGE CONFIG`.
pub fn write_config(args: &WriteConfigArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = std::fs::read(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let source_name = args.config.display().to_string();
    let (part, kind) = write_node_config(&args.image, &source_name, &text, timestamp_now())?;
    // The image now holds the node's secrets (a bootstrap token, a master's CA keys): an
    // image file (not a device) readable by others becomes 0600.
    let meta =
        std::fs::metadata(&args.image).with_context(|| format!("stat {}", args.image.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&args.image, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod 0600 {}", args.image.display()))?;
            eprintln!(
                "{}: mode set to 0600: it now holds the node's secrets",
                args.image.display()
            );
        }
    }
    tracing::info!(
        image = %args.image.display(),
        partition = %part.name,
        partition_number = part.number,
        file = kind.file_name(),
        bytes = text.len(),
        "node config written"
    );
    println!(
        "{}: wrote {} ({} bytes) to partition {} `{}`",
        args.image.display(),
        kind.file_name(),
        text.len(),
        part.number,
        part.name
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "version: 1\nrole: worker\nhostname: node-1\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1:6443\nsecrets:\n  bootstrap_token: abcdef.0123456789abcdef\n";

    #[test]
    fn classify() {
        assert!(matches!(
            classify_config("n", MINIMAL.as_bytes()).unwrap(),
            ConfigKind::Native(_)
        ));
        let ign = br#"{"ignition":{"version":"3.4.0"}}"#;
        assert!(matches!(
            classify_config("c.ign", ign).unwrap(),
            ConfigKind::Ignition(_)
        ));
        let e = classify_config("c.ign", br#"{"ignition":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.ign: ignition.version"), "{e}");
        let e = classify_config("n.yaml", b"version: 1\nrole: worker\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("n.yaml:"), "{e}");
        assert!(classify_config("bin", &[0xff, 0xfe]).is_err());
    }
}

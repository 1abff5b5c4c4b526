//! The raw GPT disk image: partition layout, deterministic GUIDs, writing and reading
//! the table, and the two commands that work on a finished image (`write-config`,
//! `inspect`).
//!
//! Layout rules: 512-byte logical sectors; the protective MBR in LBA 0, the primary GPT
//! header in LBA 1 and 128 entries in LBAs 2–33; every partition starts on a 1 MiB
//! boundary; the disk ends 1 MiB after the last partition (rounded up to a MiB), which
//! holds the backup table and keeps the image size a whole number of MiB (VHD for
//! Azure needs that). The same specs give the same bytes: the disk and partition GUIDs
//! are inputs (see [`derive_guid`]), and nothing else varies.

mod inspect;
mod redact;
mod render;
mod volumes;
mod write_config;

pub use inspect::{inspect, inspect_image, ConfigReport, ImageReport, InspectArgs};
pub use redact::{redact_ignition, redact_native};
pub use render::render_text;
pub use volumes::{ESP_MANIFEST_PATH, IGNITION_CONFIG_FILE_NAME, NODECONFIG_LABEL};
pub use write_config::{
    classify_config, write_config, write_node_config, ConfigKind, WriteConfigArgs,
};

mod layout;
mod table;
pub mod vhd;

pub use layout::{
    attribute, derive_guid, plan_layout, type_guid, DiskLayout, PartitionContent, PartitionInfo,
    PartitionSpec, ALIGNMENT, GPT_ENTRIES, MAX_PARTITIONS, SECTOR_SIZE,
};
pub use table::{pad_disk, read_layout, write_disk};

use std::path::{Path, PathBuf};

/// A disk could not be laid out, written or read.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("partition {index} `{name}`: {reason}")]
    BadSpec {
        index: usize,
        name: String,
        reason: String,
    },
    #[error("partition `{name}`: its content ({content}) is {content_bytes} bytes, larger than the partition ({size_bytes} bytes)")]
    ContentTooLarge {
        name: String,
        content: String,
        content_bytes: u64,
        size_bytes: u64,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid GPT disk image: {message}")]
    Gpt { path: PathBuf, message: String },
    #[error("{image}: no partition named {wanted} and no FAT volume labelled {wanted}; partitions: {partitions}")]
    PartitionNotFound {
        image: PathBuf,
        wanted: String,
        partitions: String,
    },
    #[error("{image}: partition `{partition}`: {source}")]
    Fat {
        image: PathBuf,
        partition: String,
        #[source]
        source: nodeimage_core::fat::FatError,
    },
    #[error(transparent)]
    Config(#[from] nodeimage_core::config::ConfigError),
    #[error("{source_name}: {message}")]
    Ignition {
        source_name: String,
        message: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

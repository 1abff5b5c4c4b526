//! FAT12/16/32 filesystems as whole images: build one from an in-memory tree, read one
//! back, rewrite one with some files changed.
//!
//! The builder writes the ESP and the NODECONFIG partition with [`build`]; `nodeimage
//! write-config` changes NODECONFIG with [`rebuild`]; firstboot and the tests read them
//! with [`FatImage`].
//!
//! The filesystem code underneath is `hadris-fat` (pinned): it formats and fills a
//! volume deterministically (fixed serial, fixed timestamps, no clock), writes VFAT long
//! names with `~N` short aliases, proper `.`/`..` entries, FSInfo and the backup boot
//! sector on FAT32, and reads any FAT volume (including ones made by `mkfs.fat` and
//! mtools). This module keeps that crate behind a small API of our own so it can be
//! swapped without touching callers, and owns the policy: which FAT type for which
//! size, how timestamps are clamped, which paths are acceptable, how a rewrite keeps the
//! geometry, label and serial of the volume it replaces.
//!
//! Rewriting a whole volume instead of editing it in place is deliberate: NODECONFIG is
//! small, the result is the same bytes a fresh build would give, and there is no
//! half-edited directory to recover from.
//!
//! Modules: `bpb` (the boot sector, also the "is this FAT" probe), `build` (a volume from
//! an in-memory tree), `read` ([`FatImage`], a volume opened read-only), `rebuild` (a
//! volume rewritten with some files changed).

mod bpb;
mod build;
mod read;
mod rebuild;

pub use bpb::BootSector;
pub use build::build;
pub use read::{FatFile, FatImage, Stat};
pub use rebuild::{rebuild, replace_files, FileChanges};

use hadris_fat::FatKind;

/// Logical sector size of every volume this module writes ([`FatImage`] reads any size
/// FAT allows: 512 to 4096 bytes).
pub const SECTOR_SIZE: u64 = 512;

/// From this size on, [`FatOptions::fat_type`] `None` means FAT32 (the UEFI spec's
/// recommendation for an ESP, and what `mkfs.fat` does at this size).
pub const FAT32_AUTO_MIN_BYTES: u64 = 260 * 1024 * 1024;

/// DOS dates start on 1980-01-01T00:00:00Z; earlier timestamps (e.g.
/// `SOURCE_DATE_EPOCH=0`) are clamped to it.
pub const DOS_EPOCH_UNIX: i64 = 315_532_800;
/// The last representable DOS timestamp, 2107-12-31T23:59:58Z.
pub const DOS_MAX_UNIX: i64 = 4_354_819_198;

/// The FAT variant of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl std::fmt::Display for FatType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        })
    }
}

impl FatType {
    pub(super) fn kind(self) -> FatKind {
        match self {
            FatType::Fat12 => FatKind::Fat12,
            FatType::Fat16 => FatKind::Fat16,
            FatType::Fat32 => FatKind::Fat32,
        }
    }
}

/// How [`build`] lays out a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatOptions {
    /// Size of the volume in bytes; a multiple of 512 (the partition size).
    pub size_bytes: u64,
    /// Volume label, at most 11 ASCII characters (`ESP`, `NODECONFIG`); stored upper
    /// case. Empty: no label.
    pub label: String,
    /// Volume serial number (derive it from the build inputs for reproducibility).
    pub volume_id: u32,
    /// Unix seconds (UTC) stamped on every entry; clamped to the DOS range.
    pub timestamp: i64,
    /// `None`: FAT32 from [`FAT32_AUTO_MIN_BYTES`], else FAT12 or FAT16 as the cluster
    /// count requires (Microsoft's fatgen103 rules).
    pub fat_type: Option<FatType>,
}

/// Layout details that a rebuild keeps from the volume it replaces (all from the boot
/// sector). Not part of [`FatOptions`] because a fresh build chooses them itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Geometry {
    pub(super) cluster_size: Option<u32>,
    pub(super) reserved_sectors: Option<u16>,
    pub(super) fat_count: Option<u8>,
    pub(super) root_entries: Option<u16>,
    pub(super) media: Option<u8>,
    pub(super) hidden_sectors: u32,
}

/// A FAT image could not be built, read or rewritten.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("FAT volume label `{label}`: expected at most 11 ASCII characters without any of \"*+,./:;<=>?[\\]|")]
    BadLabel { label: String },
    #[error("FAT volume size {size} bytes: expected a non-zero multiple of 512")]
    BadSize { size: u64 },
    #[error("path `{path}` in the FAT image: {reason}")]
    BadPath { path: String, reason: String },
    #[error("{what}: {message}")]
    Filesystem { what: String, message: String },
    #[error("not a FAT volume: {0}")]
    NotFat(String),
    #[error("no file `{path}` in the FAT volume")]
    NotFound { path: String },
    #[error("the FAT volume is {volume} bytes but its partition is {partition} bytes")]
    SizeMismatch { volume: u64, partition: u64 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Fill `buf` from byte `offset` of `image`; an I/O error says it was `what`.
pub(super) fn read_exact_at(
    image: &mut (impl std::io::Read + std::io::Seek),
    offset: u64,
    buf: &mut [u8],
    what: impl FnOnce() -> String,
) -> Result<(), FatError> {
    image
        .seek(std::io::SeekFrom::Start(offset))
        .and_then(|_| image.read_exact(buf))
        .map_err(|source| FatError::Io {
            what: what(),
            source,
        })
}

pub(super) fn fs_err<E: std::fmt::Display>(
    what: impl Into<String>,
    e: hadris_io::Error<E>,
) -> FatError {
    let message = match e.device_error() {
        Some(dev) => format!("{e} ({dev})"),
        None => format!("{e} ({:?})", e.kind()),
    };
    FatError::Filesystem {
        what: what.into(),
        message,
    }
}

#[cfg(test)]
mod tests;

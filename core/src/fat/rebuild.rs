//! A FAT volume rewritten with some files changed, keeping its geometry, label and serial.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};

use super::build::{build_with, check_path};
use super::read::FatImage;
use super::{read_exact_at, FatError, FatOptions, FatType, Geometry, SECTOR_SIZE};

/// A change for [`rebuild`]: `Some(bytes)` creates or replaces the file, `None` removes it
/// (removing a file that is not there is not an error).
pub type FileChanges = BTreeMap<String, Option<Vec<u8>>>;

/// Rebuild the FAT volume in `volume` (a whole partition's bytes) with `changes`
/// applied: every other file is carried over, and the result has the same size, FAT
/// type, cluster size, reserved sectors, FAT count, root entries, media byte, hidden
/// sectors, label and volume serial. Every entry is stamped with `timestamp`.
///
/// Paths in `changes` match existing files case-insensitively (the existing file is
/// replaced, under the new spelling).
pub fn rebuild(volume: &[u8], changes: &FileChanges, timestamp: i64) -> Result<Vec<u8>, FatError> {
    let len = volume.len() as u64;
    let mut img = FatImage::open(std::io::Cursor::new(volume), 0, len)?;
    let boot = img.boot_sector().clone();
    if u64::from(boot.bytes_per_sector) != SECTOR_SIZE {
        return Err(FatError::Filesystem {
            what: "rebuilding the FAT volume".into(),
            message: format!(
                "it has {}-byte sectors; only 512-byte sectors are written",
                boot.bytes_per_sector
            ),
        });
    }
    let label = img.label().map(str::to_string);
    let mut files = img.read_all()?;
    for (path, change) in changes {
        check_path(path)?;
        let upper = path.to_uppercase();
        files.retain(|k, _| k.to_uppercase() != upper);
        if let Some(data) = change {
            files.insert(path.clone(), data.clone());
        }
    }
    let geo = Geometry {
        cluster_size: Some(u32::from(boot.sectors_per_cluster) * u32::from(boot.bytes_per_sector)),
        reserved_sectors: Some(boot.reserved_sectors),
        fat_count: Some(boot.fat_count),
        root_entries: (boot.fat_type != FatType::Fat32).then_some(boot.root_entries),
        media: Some(boot.media),
        hidden_sectors: boot.hidden_sectors,
    };
    let opts = FatOptions {
        // The volume may be shorter than its partition; keep its own size.
        size_bytes: boot.volume_bytes(),
        label: label.unwrap_or_default(),
        volume_id: boot.volume_id,
        timestamp,
        fat_type: Some(boot.fat_type),
    };
    let mut out = build_with(&files, &opts, geo)?;
    // Whatever followed the volume inside the partition is kept as it was.
    out.extend_from_slice(&volume[out.len()..]);
    Ok(out)
}

/// Rewrite the FAT volume of `len` bytes at `offset` of `image` with `changes` applied
/// (see [`rebuild`]): the partition is read into memory, rebuilt, checked by reading it
/// back, and only then written over the old one. The caller syncs the file.
pub fn replace_files<F: Read + Write + Seek>(
    image: &mut F,
    offset: u64,
    len: u64,
    changes: &FileChanges,
    timestamp: i64,
) -> Result<(), FatError> {
    let size = usize::try_from(len).map_err(|_| FatError::BadSize { size: len })?;
    let mut old = vec![0u8; size];
    read_exact_at(image, offset, &mut old, || {
        format!("reading {len} bytes at byte {offset}")
    })?;
    let new = rebuild(&old, changes, timestamp)?;
    // Read the result back before touching the image: a bad rebuild must not replace a
    // good volume.
    let mut check = FatImage::open(std::io::Cursor::new(&new[..]), 0, len)?;
    for (path, change) in changes {
        match change {
            Some(data) if check.read_file(path)? != *data => {
                return Err(FatError::Filesystem {
                    what: format!("checking the rebuilt volume's `{path}`"),
                    message: "contents differ from what was written".into(),
                })
            }
            None if check.exists(path)? => {
                return Err(FatError::Filesystem {
                    what: format!("checking the rebuilt volume's `{path}`"),
                    message: "still present after removal".into(),
                })
            }
            _ => {}
        }
    }
    image
        .seek(SeekFrom::Start(offset))
        .and_then(|_| image.write_all(&new))
        .and_then(|_| image.flush())
        .map_err(|source| FatError::Io {
            what: format!("writing {len} bytes at byte {offset}"),
            source,
        })?;
    Ok(())
}

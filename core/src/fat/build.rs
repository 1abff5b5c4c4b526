//! A FAT volume built from an in-memory tree, deterministically.

use std::collections::BTreeMap;

use hadris_fat::VolumeLabel;
use hadris_fs::DateTime;

use super::{
    FatError, FatOptions, FatType, Geometry, DOS_EPOCH_UNIX, DOS_MAX_UNIX, FAT32_AUTO_MIN_BYTES,
    SECTOR_SIZE,
};

/// Build a complete FAT volume of `opts.size_bytes` bytes holding `files`
/// (`"EFI/BOOT/BOOTX64.EFI"` → contents; directories are implied by the paths).
/// The same inputs give the same bytes.
pub fn build(files: &BTreeMap<String, Vec<u8>>, opts: &FatOptions) -> Result<Vec<u8>, FatError> {
    build_with(files, opts, Geometry::default())
}

pub(super) fn build_with(
    files: &BTreeMap<String, Vec<u8>>,
    opts: &FatOptions,
    geo: Geometry,
) -> Result<Vec<u8>, FatError> {
    if opts.size_bytes == 0 || !opts.size_bytes.is_multiple_of(SECTOR_SIZE) {
        return Err(FatError::BadSize {
            size: opts.size_bytes,
        });
    }
    // An empty label means no label at all (no root label entry, "NO NAME" in the BPB).
    let label = if opts.label.is_empty() {
        None
    } else {
        Some(
            VolumeLabel::new(&opts.label).map_err(|_| FatError::BadLabel {
                label: opts.label.clone(),
            })?,
        )
    };
    let time = dos_time(opts.timestamp);
    let fat_type = opts
        .fat_type
        .or((opts.size_bytes >= FAT32_AUTO_MIN_BYTES).then_some(FatType::Fat32));

    let mut tree = hadris_fs::Tree::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (path, data) in files {
        check_path(path)?;
        // FAT names are case-insensitive: two paths differing only in case are one file.
        if let Some(other) = seen.insert(path.to_uppercase(), path.clone()) {
            return Err(FatError::BadPath {
                path: path.clone(),
                reason: format!("same name as `{other}` on a case-insensitive filesystem"),
            });
        }
        let node = hadris_fs::Node::file(hadris_fs::Content::bytes(data.clone()));
        tree.insert(path.as_str(), node)
            .map_err(|e| FatError::BadPath {
                path: path.clone(),
                reason: e.to_string(),
            })?;
    }

    let mut o = hadris_fat::FatOptions::new()
        .with_size(opts.size_bytes)
        .with_serial(opts.volume_id)
        .with_time(time)
        .with_oem_name(*b"NODEIMG ")
        .with_partition_offset(u64::from(geo.hidden_sectors) * SECTOR_SIZE);
    if let Some(l) = label {
        o = o.with_label(l);
    }
    if let Some(t) = fat_type {
        o = o.with_kind(t.kind());
    }
    if let Some(c) = geo.cluster_size {
        o = o.with_cluster_size(c);
    }
    if let Some(r) = geo.reserved_sectors {
        o = o.with_reserved_sectors(r);
    }
    if let Some(n) = geo.fat_count {
        o = o.with_fat_count(n);
    }
    if let Some(n) = geo.root_entries {
        o = o.with_root_entries(n);
    }
    if let Some(m) = geo.media {
        o = o.with_media(m);
    }
    let mut image: Vec<u8> =
        Vec::with_capacity(usize::try_from(opts.size_bytes).unwrap_or(0).min(64 << 20));
    let what = match fat_type {
        Some(t) => format!(
            "building a {t} volume of {} bytes labelled {}",
            opts.size_bytes, opts.label
        ),
        None => format!(
            "building a FAT volume of {} bytes labelled {}",
            opts.size_bytes, opts.label
        ),
    };
    hadris_fat::sync::write(&mut image, &tree, &o).map_err(|e| FatError::Filesystem {
        what: what.clone(),
        message: e.to_string(),
    })?;
    // The writer stops at the last block it wrote; the volume is the whole partition.
    let size = usize::try_from(opts.size_bytes).map_err(|_| FatError::BadSize {
        size: opts.size_bytes,
    })?;
    if image.len() > size {
        return Err(FatError::Filesystem {
            what,
            message: format!("the writer produced {} bytes", image.len()),
        });
    }
    image.resize(size, 0);
    Ok(image)
}

fn dos_time(unix: i64) -> DateTime {
    let clamped = unix.clamp(DOS_EPOCH_UNIX, DOS_MAX_UNIX);
    // In range by construction; fall back to the DOS epoch rather than panic.
    DateTime::from_unix_seconds(clamped).unwrap_or(DateTime::UNIX_EPOCH)
}

pub(super) fn check_path(path: &str) -> Result<(), FatError> {
    let bad = |reason: &str| FatError::BadPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if path.is_empty() || path.starts_with('/') || path.ends_with('/') {
        return Err(bad("expected a relative path like `EFI/BOOT/BOOTX64.EFI`"));
    }
    for comp in path.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." {
            return Err(bad("expected no empty, `.` or `..` components"));
        }
        if comp.len() > 255 {
            return Err(bad("a name is longer than 255 characters"));
        }
        if comp.ends_with('.') || comp.ends_with(' ') {
            return Err(bad("a name ends with `.` or a space"));
        }
        if comp
            .chars()
            .any(|c| c.is_control() || "\"*:<>?\\|".contains(c))
        {
            return Err(bad("a name holds a control character or one of \"*:<>?\\|"));
        }
    }
    Ok(())
}

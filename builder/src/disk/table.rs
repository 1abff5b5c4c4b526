//! Writing a raw GPT disk image (sparse, synced, renamed into place) and reading the
//! table of one back.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::layout::{
    plan_layout, type_guid, DiskLayout, PartitionContent, PartitionInfo, PartitionSpec, SECTOR_SIZE,
};
use super::{io_err, DiskError};

/// Write a raw GPT disk image to `out`: the protective MBR, both GPT tables and every
/// partition's content. Written to `out.tmp` (sparse: zero blocks are seeked over, so
/// a 2 GiB image with little data is quick and small on disk), synced, then renamed.
pub fn write_disk(
    out: &Path,
    disk_guid: Uuid,
    parts: &[PartitionSpec],
) -> Result<DiskLayout, DiskError> {
    let layout = plan_layout(disk_guid, parts)?;
    for p in parts {
        if let PartitionContent::File(path) = &p.content {
            let len = fs::metadata(path)
                .map_err(io_err("reading the size of", path))?
                .len();
            if len > p.size_bytes {
                return Err(DiskError::ContentTooLarge {
                    name: p.name.clone(),
                    content: path.display().to_string(),
                    content_bytes: len,
                    size_bytes: p.size_bytes,
                });
            }
        }
    }
    replace_file(out, |tmp, f| write_disk_to(tmp, f, &layout, parts))?;
    Ok(layout)
}

fn write_disk_to(
    path: &Path,
    mut f: File,
    layout: &DiskLayout,
    parts: &[PartitionSpec],
) -> Result<(), DiskError> {
    f.set_len(layout.size_bytes)
        .map_err(io_err("sizing", path))?;

    for (spec, info) in parts.iter().zip(&layout.partitions) {
        match &spec.content {
            PartitionContent::Zero => {}
            PartitionContent::Bytes(b) => {
                write_sparse(&mut f, path, info.start_bytes, &mut &b[..])?
            }
            PartitionContent::File(src) => {
                let mut r = File::open(src).map_err(io_err("opening", src))?;
                write_sparse(&mut f, path, info.start_bytes, &mut r)?;
            }
        }
    }

    write_table(f, path, layout)
}

/// Write the protective MBR and both GPTs of `layout` into `f`, whose length is the
/// disk's (the backup header goes into its last sector), then sync it.
fn write_table(f: File, path: &Path, layout: &DiskLayout) -> Result<(), DiskError> {
    let mut f = f;
    let total_lba = layout.size_bytes / SECTOR_SIZE;
    let mbr =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(total_lba - 1).unwrap_or(u32::MAX));
    let gpt_err = |message: String| DiskError::Gpt {
        path: path.to_path_buf(),
        message,
    };
    mbr.overwrite_lba0(&mut f)
        .map_err(|e| gpt_err(format!("writing the protective MBR: {e}")))?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(f, Some(layout.disk_guid))
        .map_err(|e| gpt_err(format!("creating the table: {e}")))?;
    let mut table = std::collections::BTreeMap::new();
    for p in &layout.partitions {
        table.insert(
            p.number,
            gpt::partition::Partition {
                part_type_guid: gpt::partition_types::Type {
                    guid: p.type_guid,
                    os: gpt::partition_types::OperatingSystem::None,
                },
                part_guid: p.part_guid,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                flags: p.attributes,
                name: p.name.clone(),
            },
        );
    }
    disk.update_partitions(table)
        .map_err(|e| gpt_err(format!("setting the partitions: {e}")))?;
    let header = disk.primary_header().map_err(|e| gpt_err(format!("{e}")))?;
    if let (Some(first), Some(last)) = (layout.partitions.first(), layout.partitions.last()) {
        if first.first_lba < header.first_usable || last.last_lba > header.last_usable {
            return Err(gpt_err(format!(
                "partitions span LBA {}..={} outside the usable {}..={}",
                first.first_lba, last.last_lba, header.first_usable, header.last_usable
            )));
        }
    }
    let f = disk
        .write()
        .map_err(|e| gpt_err(format!("writing the table: {e}")))?;
    f.sync_all().map_err(io_err("syncing", path))?;
    Ok(())
}

/// A copy of the disk image `src` (whose table is `layout`) grown to `size` bytes, for a
/// format that needs a larger disk (a GCE image is a whole number of GiB): the
/// partitions stay where they are, the old backup table is cleared, and both tables are
/// written for the new size, so the backup header is in the copy's last sector. Written
/// sparsely to `dst.tmp`, synced, renamed. Returns the copy's layout.
pub fn pad_disk(
    src: &Path,
    layout: &DiskLayout,
    size: u64,
    dst: &Path,
) -> Result<DiskLayout, DiskError> {
    let actual = fs::metadata(src).map_err(io_err("reading", src))?.len();
    if actual != layout.size_bytes || size < layout.size_bytes || !size.is_multiple_of(SECTOR_SIZE)
    {
        return Err(DiskError::Gpt {
            path: src.to_path_buf(),
            message: format!(
                "cannot grow a {actual}-byte disk laid out for {} bytes to {size} bytes",
                layout.size_bytes
            ),
        });
    }
    let mut grown = layout.clone();
    grown.size_bytes = size;
    replace_file(dst, |tmp, mut f| {
        f.set_len(size).map_err(io_err("sizing", tmp))?;
        // Everything up to the end of the last partition; the old backup table after it
        // is left behind (the copy reads zeros there).
        let data_end = layout
            .partitions
            .iter()
            .map(|p| p.start_bytes + p.size_bytes)
            .max()
            .unwrap_or(0);
        let r = File::open(src).map_err(io_err("opening", src))?;
        write_sparse(&mut f, tmp, 0, &mut r.take(data_end))?;
        write_table(f, tmp, &grown)
    })?;
    Ok(grown)
}

/// Make `dst` all at once: `write` fills (and syncs) a new `dst.tmp`, which is then
/// renamed over `dst`; on any error the temporary file is removed and `dst` is as it was.
pub(super) fn replace_file(
    dst: &Path,
    write: impl FnOnce(&Path, File) -> Result<(), DiskError>,
) -> Result<(), DiskError> {
    let mut tmp_name = dst.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let result = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("creating", &tmp))
        .and_then(|f| write(&tmp, f))
        .and_then(|_| fs::rename(&tmp, dst).map_err(io_err("renaming into", dst)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Copy `r` to `f` at `offset`, seeking over all-zero 64 KiB blocks (the file was
/// created empty, so they already read as zeros).
pub(super) fn write_sparse(
    f: &mut File,
    path: &Path,
    offset: u64,
    r: &mut dyn Read,
) -> Result<(), DiskError> {
    const BLOCK: usize = 64 * 1024;
    let mut buf = vec![0u8; BLOCK];
    let mut pos = offset;
    loop {
        let mut n = 0;
        while n < BLOCK {
            let k = r
                .read(&mut buf[n..])
                .map_err(io_err("reading content for", path))?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|b| *b != 0) {
            f.seek(SeekFrom::Start(pos))
                .map_err(io_err("seeking in", path))?;
            f.write_all(&buf[..n]).map_err(io_err("writing", path))?;
        }
        pos += n as u64;
        if n < BLOCK {
            return Ok(());
        }
    }
}

/// Read the partition table of a raw disk image (both headers' CRCs are checked by
/// the `gpt` crate; a valid backup is accepted when the primary is damaged).
pub fn read_layout(image: &Path) -> Result<DiskLayout, DiskError> {
    let size_bytes = fs::metadata(image).map_err(io_err("reading", image))?.len();
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open(image)
        .map_err(|e| DiskError::Gpt {
            path: image.to_path_buf(),
            message: e.to_string(),
        })?;
    let mut partitions = Vec::new();
    for (number, p) in disk.partitions() {
        if !p.is_used() {
            continue;
        }
        let bad = || DiskError::Gpt {
            path: image.to_path_buf(),
            message: format!("partition {number} has end before start"),
        };
        let sectors = p
            .last_lba
            .checked_add(1)
            .and_then(|e| e.checked_sub(p.first_lba))
            .ok_or_else(bad)?;
        partitions.push(PartitionInfo {
            number: *number,
            name: p.name.clone(),
            type_guid: p.part_type_guid.guid,
            type_name: type_guid::name(&p.part_type_guid.guid).to_string(),
            part_guid: p.part_guid,
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            start_bytes: p.first_lba * SECTOR_SIZE,
            size_bytes: sectors * SECTOR_SIZE,
            attributes: p.flags,
        });
    }
    partitions.sort_by_key(|p| p.number);
    Ok(DiskLayout {
        disk_guid: *disk.guid(),
        size_bytes,
        sector_size: SECTOR_SIZE,
        partitions,
    })
}

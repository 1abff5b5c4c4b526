//! The FAT volumes of a finished image, found by GPT name or label and opened in place.

use std::path::Path;

use nodeimage_core::fat::{self, FatImage};

use super::{DiskError, DiskLayout, PartitionInfo};

/// GPT name and FAT label of the config partition.
pub const NODECONFIG_LABEL: &str = "NODECONFIG";
/// File name of an Ignition config on NODECONFIG.
pub const IGNITION_CONFIG_FILE_NAME: &str = "config.ign";
/// Where the build manifest lives on the ESP.
pub const ESP_MANIFEST_PATH: &str = "nodeimage/manifest.json";

/// The NODECONFIG partition: by GPT name, else the first FAT volume labelled NODECONFIG.
pub(super) fn find_nodeconfig(
    image: &Path,
    layout: &DiskLayout,
) -> Result<PartitionInfo, DiskError> {
    if let Some(p) = layout.find_partition_by_name(NODECONFIG_LABEL) {
        return Ok(p.clone());
    }
    for p in &layout.partitions {
        if let Ok(Some(label)) = fat_label(image, p) {
            if label.eq_ignore_ascii_case(NODECONFIG_LABEL) {
                return Ok(p.clone());
            }
        }
    }
    Err(DiskError::PartitionNotFound {
        image: image.to_path_buf(),
        wanted: NODECONFIG_LABEL.into(),
        partitions: layout.names(),
    })
}

pub(super) fn open_fat(
    image: &Path,
    p: &PartitionInfo,
) -> Result<FatImage<std::fs::File>, DiskError> {
    let f = std::fs::File::open(image).map_err(|source| DiskError::Io {
        op: "opening",
        path: image.to_path_buf(),
        source,
    })?;
    FatImage::open(f, p.start_bytes, p.size_bytes).map_err(|source| DiskError::Fat {
        image: image.to_path_buf(),
        partition: p.name.clone(),
        source,
    })
}

fn fat_label(image: &Path, p: &PartitionInfo) -> Result<Option<String>, DiskError> {
    Ok(open_fat(image, p)?.label().map(str::to_string))
}

/// The file at `path` on the FAT volume `p`, or None when it is not there.
pub(super) fn read_optional(
    image: &Path,
    p: &PartitionInfo,
    path: &str,
) -> Result<Option<Vec<u8>>, DiskError> {
    let mut fs = open_fat(image, p)?;
    match fs.read_file(path) {
        Ok(b) => Ok(Some(b)),
        Err(fat::FatError::NotFound { .. }) => Ok(None),
        Err(source) => Err(DiskError::Fat {
            image: image.to_path_buf(),
            partition: p.name.clone(),
            source,
        }),
    }
}

//! The GPT disk from the filesystems: ESP, read-only root, NODECONFIG.

use std::fs;
use std::path::PathBuf;

use anyhow::Result;

use super::filesystems::Filesystems;
use super::identity::{root_partition_kind, Identity};
use super::Build;
use crate::disk::{self, type_guid, DiskLayout, PartitionContent, PartitionSpec};
use crate::manifest::PartitionRecord;

/// The raw disk image in the output directory and its partition table.
#[derive(Debug, Clone)]
pub struct DiskImage {
    pub raw: PathBuf,
    pub disk_guid: uuid::Uuid,
    pub layout: DiskLayout,
}

impl DiskImage {
    /// The partitions as `manifest.json` records them.
    pub fn partition_records(&self) -> Vec<PartitionRecord> {
        self.layout
            .partitions
            .iter()
            .map(|part| PartitionRecord {
                number: part.number,
                name: part.name.clone(),
                type_guid: part.type_guid.to_string(),
                part_guid: part.part_guid.to_string(),
                first_lba: part.first_lba,
                last_lba: part.last_lba,
                size_bytes: part.size_bytes,
                filesystem: if part.name.starts_with("root-") {
                    "erofs"
                } else {
                    "vfat"
                }
                .into(),
            })
            .collect()
    }
}

/// The partitions, in table order: ESP, root (read-only, sized to the erofs image
/// rounded up to a MiB), NODECONFIG.
pub fn partition_specs(b: &Build, fs: &Filesystems, id: &Identity) -> Result<Vec<PartitionSpec>> {
    let p = &b.lp.profile;
    let root_size = fs::metadata(&fs.root)?.len().div_ceil(1 << 20) << 20;
    let (root_name, root_type) = root_partition_kind(p.arch);
    Ok(vec![
        PartitionSpec::new(
            "ESP",
            type_guid::ESP,
            id.guid("esp-partition"),
            p.disk.esp_size_mib << 20,
            PartitionContent::File(fs.esp.clone()),
        ),
        PartitionSpec {
            // The root is read-only: say so to anything that auto-discovers partitions.
            attributes: disk::attribute::READ_ONLY,
            ..PartitionSpec::new(
                root_name,
                root_type,
                id.root_partition(),
                root_size,
                PartitionContent::File(fs.root.clone()),
            )
        },
        PartitionSpec::new(
            "NODECONFIG",
            type_guid::MICROSOFT_BASIC_DATA,
            id.guid("nodeconfig-partition"),
            p.disk.config_size_mib << 20,
            PartitionContent::File(fs.nodeconfig.clone()),
        ),
    ])
}

/// Stage 5: write `<out>/<name>.raw`.
pub fn assemble_disk(b: &Build, fs: &Filesystems, id: &Identity) -> Result<DiskImage> {
    let parts = partition_specs(b, fs, id)?;
    std::fs::create_dir_all(&b.out_dir)?;
    let raw = b.out_dir.join(format!("{}.raw", b.lp.profile.name));
    let disk_guid = id.guid("disk");
    let layout = disk::write_disk(&raw, disk_guid, &parts)?;
    Ok(DiskImage {
        raw,
        disk_guid,
        layout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_has_esp_read_only_root_and_nodeconfig() {
        let d = tempfile::tempdir().unwrap();
        let b = crate::build::tests::test_build(d.path(), crate::build::tests::PROFILE, true);
        let fs = Filesystems {
            root: d.path().join("root.erofs"),
            esp: d.path().join("esp.fat"),
            nodeconfig: d.path().join("nodeconfig.fat"),
        };
        std::fs::write(&fs.root, vec![7u8; 3 << 20 | 5]).unwrap();
        std::fs::write(&fs.esp, vec![1u8; 4096]).unwrap();
        std::fs::write(&fs.nodeconfig, vec![2u8; 4096]).unwrap();
        let id = Identity {
            inputs: "0".repeat(64),
        };
        let disk = assemble_disk(&b, &fs, &id).unwrap();
        assert_eq!(disk.raw, b.out_dir.join("t.raw"));
        let back = disk::read_layout(&disk.raw).unwrap();
        assert_eq!(back.disk_guid, id.guid("disk"));
        let recs = disk.partition_records();
        let names: Vec<_> = recs
            .iter()
            .map(|r| (r.name.as_str(), r.filesystem.as_str(), r.size_bytes))
            .collect();
        assert_eq!(
            names,
            [
                ("ESP", "vfat", 128 << 20),
                ("root-x86-64", "erofs", 4 << 20),
                ("NODECONFIG", "vfat", 16 << 20)
            ]
        );
        let root = back.find_partition_by_name("root-x86-64").unwrap();
        assert_eq!(root.part_guid, id.root_partition());
        assert_eq!(root.attributes, disk::attribute::READ_ONLY);
        assert!(id
            .cmdline(&b)
            .starts_with(&format!("root=PARTUUID={} ro", id.root_partition())));
    }
}

//! The GPT disk from the filesystems: ESP, read-only root, NODECONFIG.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::filesystems::Filesystems;
use super::identity::{root_partition_type, verity_partition_type, Identity};
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
                filesystem: if part.name.starts_with("verity-") {
                    "dm-verity"
                } else if part.name.starts_with("root-") {
                    "erofs"
                } else {
                    "vfat"
                }
                .into(),
            })
            .collect()
    }
}

/// The partitions, in table order: ESP; slot A's root (this image's erofs) and its
/// dm-verity tree; slot B's two, empty until an update writes them; NODECONFIG. Both
/// slots are the same size (`disk.root_slot_mib`, by default 1.5 times this root rounded
/// up to 64 MiB), each verity partition large enough for a tree over a full slot.
pub fn partition_specs(b: &Build, fs: &Filesystems, id: &Identity) -> Result<Vec<PartitionSpec>> {
    let p = &b.lp.profile;
    let root_bytes = fs::metadata(&fs.root)?.len();
    let slot = slot_size(root_bytes, p.disk.root_slot_mib)
        .with_context(|| format!("{}: disk.root_slot_mib", b.profile_path.display()))?;
    let verity = verity_slot_size(slot);
    let (root_type, verity_type) = (root_partition_type(p.arch), verity_partition_type(p.arch));
    let (b_root, b_verity) = id.slot_b_partitions();
    // The roots and trees are read-only: say so to anything that auto-discovers
    // partitions. Slot B's are not to be auto-discovered at all until written.
    let part = |name: &str, ty, guid, size, content, attributes| PartitionSpec {
        attributes,
        ..PartitionSpec::new(name, ty, guid, size, content)
    };
    let ro = disk::attribute::READ_ONLY;
    let no_auto = ro | disk::attribute::NO_AUTO;
    Ok(vec![
        PartitionSpec::new(
            "ESP",
            type_guid::ESP,
            id.guid("esp-partition"),
            p.disk.esp_size_mib << 20,
            PartitionContent::File(fs.esp.clone()),
        ),
        part(
            "root-a",
            root_type,
            id.root_partition(),
            slot,
            PartitionContent::File(fs.root.clone()),
            ro,
        ),
        part(
            "verity-a",
            verity_type,
            id.verity_partition(),
            verity,
            PartitionContent::File(fs.verity.clone()),
            ro,
        ),
        part(
            "root-b",
            root_type,
            b_root,
            slot,
            PartitionContent::Zero,
            no_auto,
        ),
        part(
            "verity-b",
            verity_type,
            b_verity,
            verity,
            PartitionContent::Zero,
            no_auto,
        ),
        PartitionSpec::new(
            "NODECONFIG",
            type_guid::MICROSOFT_BASIC_DATA,
            id.guid("nodeconfig-partition"),
            p.disk.config_size_mib << 20,
            PartitionContent::File(fs.nodeconfig.clone()),
        ),
    ])
}

/// Each root slot's size: the profile's, which must hold this root, or 1.5 times the
/// root rounded up to 64 MiB.
pub fn slot_size(root_bytes: u64, profile_mib: Option<u64>) -> Result<u64> {
    let root_mib = root_bytes.div_ceil(1 << 20);
    match profile_mib {
        Some(mib) if mib < root_mib => anyhow::bail!(
            "{mib} MiB is smaller than this image's root file system ({root_mib} MiB): \
             raise it, or leave it out for the default of 1.5 times the root"
        ),
        Some(mib) => Ok(mib << 20),
        None => Ok((root_mib * 3 / 2).max(1).next_multiple_of(64) << 20),
    }
}

/// A verity partition that holds the tree over a full slot of `slot` bytes (4 KiB
/// blocks), rounded up to a MiB.
pub fn verity_slot_size(slot: u64) -> u64 {
    let p = nodeimage_core::verity::Params::new(vec![0; 32], [0; 16]);
    nodeimage_core::verity::hash_area_size(slot / 4096, &p).div_ceil(1 << 20) << 20
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
    fn slots_hold_the_root_with_room_and_their_trees() {
        assert_eq!(slot_size(237 << 20, None).unwrap(), 384 << 20);
        assert_eq!(slot_size(1, None).unwrap(), 64 << 20);
        assert_eq!(slot_size(237 << 20, Some(237)).unwrap(), 237 << 20);
        let e = slot_size(237 << 20, Some(200)).unwrap_err().to_string();
        assert!(
            e.contains("200 MiB is smaller than this image's root file system (237 MiB)"),
            "{e}"
        );
        // 384 MiB = 98304 blocks: 768 + 6 + 1 tree blocks and the superblock's: 3.03 MiB.
        assert_eq!(verity_slot_size(384 << 20), 4 << 20);
        assert_eq!(verity_slot_size(64 << 20), 1 << 20);
    }

    #[test]
    fn disk_has_esp_read_only_root_and_nodeconfig() {
        let d = tempfile::tempdir().unwrap();
        let b = crate::build::tests::test_build(d.path(), crate::build::tests::PROFILE, true);
        let fs = Filesystems {
            root: d.path().join("root.erofs"),
            verity: d.path().join("root.verity"),
            esp: d.path().join("esp.fat"),
            nodeconfig: d.path().join("nodeconfig.fat"),
        };
        std::fs::write(&fs.root, vec![7u8; 3 << 20 | 5]).unwrap();
        std::fs::write(&fs.verity, vec![9u8; 8192]).unwrap();
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
                ("root-a", "erofs", 64 << 20),
                ("verity-a", "dm-verity", 1 << 20),
                ("root-b", "erofs", 64 << 20),
                ("verity-b", "dm-verity", 1 << 20),
                ("NODECONFIG", "vfat", 16 << 20)
            ]
        );
        let root = back.find_partition_by_name("root-a").unwrap();
        assert_eq!(root.part_guid, id.root_partition());
        assert_eq!(root.attributes, disk::attribute::READ_ONLY);
        let verity = back.find_partition_by_name("verity-a").unwrap();
        assert_eq!(verity.part_guid, id.verity_partition());
        assert_eq!(verity.type_guid, type_guid::ROOT_X86_64_VERITY);
        let b_root = back.find_partition_by_name("root-b").unwrap();
        assert_eq!(b_root.part_guid, id.slot_b_partitions().0);
        assert_eq!(b_root.type_guid, type_guid::ROOT_X86_64);
        assert_eq!(
            b_root.attributes,
            disk::attribute::READ_ONLY | disk::attribute::NO_AUTO
        );
        assert_eq!(
            back.find_partition_by_name("verity-b").unwrap().part_guid,
            id.slot_b_partitions().1
        );
        let cmdline = id.cmdline(&b, &crate::build::tests::test_root());
        assert!(
            cmdline.starts_with(&format!(
                "root=PARTUUID={} ro rootfstype=erofs nodeimage.verity={} nodeimage.verity_hash=PARTUUID={} ",
                id.root_partition(),
                "ab".repeat(32),
                id.verity_partition()
            )),
            "{cmdline}"
        );
    }
}

//! Partition layout: the sizes and alignment rules, the partition types and attribute
//! bits, deterministic GUIDs, and [`plan_layout`], a pure function from specs to a table.

use std::path::PathBuf;

use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::DiskError;

/// Logical sector size of the images we write.
pub const SECTOR_SIZE: u64 = 512;
/// Partition start alignment.
pub const ALIGNMENT: u64 = 1024 * 1024;
/// Entries in the GPT partition array (the usual 128, 32 sectors).
pub const GPT_ENTRIES: u64 = 128;
/// The most partitions a spec may list.
pub const MAX_PARTITIONS: usize = GPT_ENTRIES as usize;

/// Well-known GPT partition type GUIDs.
///
/// Sources: the UAPI Group's Discoverable Partitions Specification
/// (uapi-group/specifications, `specs/discoverable_partitions_specification.md`) for
/// the ESP, root, var and generic Linux data types; the UEFI spec for the ESP;
/// Microsoft's basic data type as listed by the `gpt` crate (`partition_types::BASIC`)
/// and in every partitioning tool.
pub mod type_guid {
    use uuid::Uuid;

    /// EFI System Partition (`SD_GPT_ESP`).
    pub const ESP: Uuid = Uuid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);
    /// Root partition, amd64/x86_64 (`SD_GPT_ROOT_X86_64`).
    pub const ROOT_X86_64: Uuid = Uuid::from_u128(0x4F68BCE3_E8CD_4DB1_96E7_FBCAF984B709);
    /// Root partition, 64-bit ARM/AArch64 (`SD_GPT_ROOT_ARM64`).
    pub const ROOT_ARM64: Uuid = Uuid::from_u128(0xB921B045_1DF0_41C3_AF44_4C6F280D3FAE);
    /// dm-verity hash tree of the x86_64 root (`SD_GPT_ROOT_X86_64_VERITY`).
    pub const ROOT_X86_64_VERITY: Uuid = Uuid::from_u128(0x2C7357ED_EBD2_46D9_AEC1_23D437EC2BF5);
    /// dm-verity hash tree of the AArch64 root (`SD_GPT_ROOT_ARM64_VERITY`).
    pub const ROOT_ARM64_VERITY: Uuid = Uuid::from_u128(0xDF3300CE_D69F_4C92_978C_9BFB0F38D820);
    /// Generic Linux data (`SD_GPT_LINUX_GENERIC`): never auto-mounted.
    pub const LINUX_DATA: Uuid = Uuid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4);
    /// Variable data, `/var` (`SD_GPT_VAR`). systemd-gpt-auto-generator mounts it only
    /// when its partition GUID is the first 128 bits of
    /// `HMAC-SHA256(key = machine-id, data = this type UUID)`.
    pub const VAR: Uuid = Uuid::from_u128(0x4D21B016_B534_45C2_A9FB_5C16E091FD2D);
    /// Microsoft basic data: what NODECONFIG uses so any laptop shows the FAT volume.
    pub const MICROSOFT_BASIC_DATA: Uuid = Uuid::from_u128(0xEBD0A0A2_B9E5_4433_87C0_68B6B72699C7);

    /// A human name for a type GUID (for `inspect`).
    pub fn name(guid: &Uuid) -> &'static str {
        match *guid {
            ESP => "EFI System",
            ROOT_X86_64 => "Linux root (x86-64)",
            ROOT_ARM64 => "Linux root (arm64)",
            ROOT_X86_64_VERITY => "Linux root verity (x86-64)",
            ROOT_ARM64_VERITY => "Linux root verity (arm64)",
            LINUX_DATA => "Linux data",
            VAR => "Linux /var",
            MICROSOFT_BASIC_DATA => "Microsoft basic data",
            _ => "unknown",
        }
    }
}

/// GPT attribute bits (UEFI and the Discoverable Partitions Specification).
pub mod attribute {
    /// UEFI: the platform needs this partition to function.
    pub const REQUIRED_PARTITION: u64 = 1 << 0;
    /// DPS: mount read-only (bit 60).
    pub const READ_ONLY: u64 = 1 << 60;
    /// DPS: do not auto-discover (bit 63).
    pub const NO_AUTO: u64 = 1 << 63;
    /// DPS: grow the filesystem to the partition on mount (bit 59).
    pub const GROW_FS: u64 = 1 << 59;
}

/// What goes into a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionContent {
    /// A filesystem image file (erofs root, a FAT image written to disk); zero blocks
    /// are skipped, so sparse inputs stay sparse.
    File(PathBuf),
    /// Bytes in memory (a FAT volume from `nodeimage_core::fat::build`).
    Bytes(Vec<u8>),
    /// Nothing: the partition reads as zeros.
    Zero,
}

/// One partition of the disk, in table order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    /// GPT partition name (at most 36 UTF-16 code units), e.g. `ESP`, `NODECONFIG`.
    pub name: String,
    pub type_guid: Uuid,
    /// The partition's own GUID (derive it; see [`derive_guid`]).
    pub part_guid: Uuid,
    /// Partition size; a non-zero multiple of 512. The next partition starts on the
    /// next MiB boundary.
    pub size_bytes: u64,
    pub content: PartitionContent,
    /// GPT attribute bits (see [`attribute`]); 0 for none.
    pub attributes: u64,
}

impl PartitionSpec {
    pub fn new(
        name: &str,
        type_guid: Uuid,
        part_guid: Uuid,
        size_bytes: u64,
        content: PartitionContent,
    ) -> Self {
        PartitionSpec {
            name: name.to_string(),
            type_guid,
            part_guid,
            size_bytes,
            content,
            attributes: 0,
        }
    }
}

/// One partition as laid out (or as read back from a table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionInfo {
    /// 1-based partition number (`/dev/sda1`, `p1`).
    pub number: u32,
    pub name: String,
    pub type_guid: Uuid,
    pub type_name: String,
    pub part_guid: Uuid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub start_bytes: u64,
    pub size_bytes: u64,
    pub attributes: u64,
}

/// A whole disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskLayout {
    pub disk_guid: Uuid,
    pub size_bytes: u64,
    pub sector_size: u64,
    pub partitions: Vec<PartitionInfo>,
}

impl DiskLayout {
    /// The first partition whose GPT name is `name` (exact match).
    pub fn find_partition_by_name(&self, name: &str) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| p.name == name)
    }

    /// The first partition of type `type_guid`.
    pub fn find_partition_by_type(&self, type_guid: &Uuid) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| p.type_guid == *type_guid)
    }

    /// The partition with this partition GUID.
    pub fn find_partition_by_guid(&self, part_guid: &Uuid) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| p.part_guid == *part_guid)
    }

    /// `ESP (1), root (2), ...` for error messages.
    pub fn names(&self) -> String {
        let v: Vec<String> = self
            .partitions
            .iter()
            .map(|p| format!("{} ({})", p.name, p.number))
            .collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }
}

/// A deterministic GUID from `namespace` and `inputs`: the first 16 bytes of
/// `SHA-256(namespace || 0x00 || inputs)` with the RFC 9562 version set to 8 (custom)
/// and the RFC 4122 variant bits (`10`). Version 8 says honestly what it is: a
/// vendor-defined hash, not a random v4 and not SHA-1 v5.
pub fn derive_guid(namespace: &str, inputs: &[u8]) -> Uuid {
    let mut h = Sha256::new();
    h.update(namespace.as_bytes());
    h.update([0u8]);
    h.update(inputs);
    let digest = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0F) | 0x80;
    b[8] = (b[8] & 0x3F) | 0x80;
    Uuid::from_bytes(b)
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Place the partitions: a pure function of the specs (no I/O except the size of
/// `File` contents, which [`write_disk`] checks separately).
pub fn plan_layout(disk_guid: Uuid, parts: &[PartitionSpec]) -> Result<DiskLayout, DiskError> {
    if parts.len() > MAX_PARTITIONS {
        return Err(DiskError::BadSpec {
            index: MAX_PARTITIONS + 1,
            name: parts[MAX_PARTITIONS].name.clone(),
            reason: format!("at most {MAX_PARTITIONS} partitions fit the table"),
        });
    }
    let mut next = ALIGNMENT; // LBA 2048: past the MBR, header and entries, MiB-aligned.
    let mut out = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        let bad = |reason: String| DiskError::BadSpec {
            index: i + 1,
            name: p.name.clone(),
            reason,
        };
        if p.name.is_empty() || p.name.encode_utf16().count() > 36 {
            return Err(bad(
                "expected a GPT name of 1 to 36 UTF-16 characters".into()
            ));
        }
        if p.name.chars().any(|c| c == '\0') {
            return Err(bad("the name holds a NUL".into()));
        }
        if p.size_bytes == 0 || p.size_bytes % SECTOR_SIZE != 0 {
            return Err(bad(format!(
                "size {} bytes: expected a non-zero multiple of 512",
                p.size_bytes
            )));
        }
        if p.type_guid.is_nil() {
            return Err(bad(
                "the type GUID is nil (that marks an unused entry)".into()
            ));
        }
        if p.part_guid.is_nil() {
            return Err(bad("the partition GUID is nil".into()));
        }
        if let Some(j) = parts[..i].iter().position(|q| q.part_guid == p.part_guid) {
            return Err(bad(format!(
                "same partition GUID as partition {} `{}`",
                j + 1,
                parts[j].name
            )));
        }
        if let PartitionContent::Bytes(b) = &p.content {
            if b.len() as u64 > p.size_bytes {
                return Err(DiskError::ContentTooLarge {
                    name: p.name.clone(),
                    content: "bytes".into(),
                    content_bytes: b.len() as u64,
                    size_bytes: p.size_bytes,
                });
            }
        }
        let start = next;
        let end = start
            .checked_add(p.size_bytes)
            .ok_or_else(|| bad("the disk would exceed 2^64 bytes".into()))?;
        out.push(PartitionInfo {
            number: (i + 1) as u32,
            name: p.name.clone(),
            type_guid: p.type_guid,
            type_name: type_guid::name(&p.type_guid).to_string(),
            part_guid: p.part_guid,
            first_lba: start / SECTOR_SIZE,
            last_lba: end / SECTOR_SIZE - 1,
            start_bytes: start,
            size_bytes: p.size_bytes,
            attributes: p.attributes,
        });
        next = align_up(end, ALIGNMENT);
    }
    // One more MiB at the end holds the backup entries and header (33 sectors).
    let size_bytes = next + ALIGNMENT;
    Ok(DiskLayout {
        disk_guid,
        size_bytes,
        sector_size: SECTOR_SIZE,
        partitions: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_guid_is_stable_and_v8() {
        let a = derive_guid("nodeimage/disk", b"profile=x");
        assert_eq!(a, derive_guid("nodeimage/disk", b"profile=x"));
        assert_ne!(a, derive_guid("nodeimage/esp", b"profile=x"));
        assert_ne!(a, derive_guid("nodeimage/disk", b"profile=y"));
        assert_eq!(a.get_version_num(), 8);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        // Pinned so an accidental change of the derivation shows up.
        assert_eq!(derive_guid("ns", b"").to_string().len(), 36);
    }

    #[test]
    fn plan_aligns_and_sizes() {
        let parts = vec![
            PartitionSpec::new(
                "ESP",
                type_guid::ESP,
                derive_guid("t", b"1"),
                100 * 1024 * 1024 + 512,
                PartitionContent::Zero,
            ),
            PartitionSpec::new(
                "root",
                type_guid::ROOT_X86_64,
                derive_guid("t", b"2"),
                4096,
                PartitionContent::Zero,
            ),
        ];
        let l = plan_layout(derive_guid("t", b"d"), &parts).unwrap();
        assert_eq!(l.partitions[0].first_lba, 2048);
        assert_eq!(l.partitions[0].last_lba, 2048 + 204800);
        assert_eq!(l.partitions[1].start_bytes, 102 * 1024 * 1024);
        assert_eq!(l.size_bytes, 104 * 1024 * 1024);
        assert_eq!(l.find_partition_by_name("root").unwrap().number, 2);
        assert_eq!(
            l.find_partition_by_type(&type_guid::ESP).unwrap().name,
            "ESP"
        );
    }

    #[test]
    fn plan_rejects_bad_specs() {
        let g = |s: &[u8]| derive_guid("t", s);
        let ok = PartitionSpec::new(
            "a",
            type_guid::LINUX_DATA,
            g(b"1"),
            4096,
            PartitionContent::Zero,
        );
        let cases = [
            (
                PartitionSpec {
                    size_bytes: 1000,
                    ..ok.clone()
                },
                "multiple of 512",
            ),
            (
                PartitionSpec {
                    name: "x".repeat(37),
                    ..ok.clone()
                },
                "36",
            ),
            (
                PartitionSpec {
                    type_guid: Uuid::nil(),
                    ..ok.clone()
                },
                "nil",
            ),
            (
                PartitionSpec {
                    content: PartitionContent::Bytes(vec![1; 5000]),
                    ..ok.clone()
                },
                "larger than the partition",
            ),
        ];
        for (spec, want) in cases {
            let e = plan_layout(g(b"d"), &[spec]).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let e = plan_layout(g(b"d"), &[ok.clone(), ok])
            .unwrap_err()
            .to_string();
        assert!(e.contains("same partition GUID"), "{e}");
    }
}

//! The boot sector: BIOS parameter block parsing, the probe for a FAT volume.

use super::{FatError, FatType};

/// What the boot sector of a volume says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootSector {
    pub fat_type: FatType,
    pub bytes_per_sector: u16,
    pub sectors_per_cluster: u8,
    pub reserved_sectors: u16,
    pub fat_count: u8,
    pub root_entries: u16,
    pub total_sectors: u32,
    pub sectors_per_fat: u32,
    pub media: u8,
    pub hidden_sectors: u32,
    pub volume_id: u32,
    /// The label copy in the boot sector, trailing spaces removed; empty when the boot
    /// sector has no extended boot signature `0x29` (which is what makes the field
    /// valid). The root directory's label entry is the one that counts; see
    /// [`FatImage::label`].
    pub boot_label: String,
    pub cluster_count: u32,
}

impl BootSector {
    /// Parse the first sector of a FAT volume.
    ///
    /// This is also the probe for "is there a FAT volume here": it checks the `0x55AA`
    /// signature and that the BIOS parameter block is sane (sector and cluster sizes FAT
    /// allows, reserved sectors, one or more FATs of non-zero size, a legal media byte,
    /// a data region inside the volume). The jump instruction at byte 0 (`0xEB xx 0x90`
    /// or `0xE9 xx xx`) is not required: some writers leave it zero, and Linux and
    /// blkid do not insist on it either.
    ///
    /// The FAT type follows the cluster count (fatgen103), except that a FAT32 layout
    /// (no fixed root directory, no 16-bit FAT size) is FAT32 whatever its cluster
    /// count, as Linux and the filesystem code underneath read it: `mkfs.fat -F 32`
    /// makes such small volumes.
    pub fn parse(sector: &[u8]) -> Result<Self, FatError> {
        let bad = |what: &str| FatError::NotFat(what.to_string());
        if sector.len() < 512 {
            return Err(bad("shorter than one sector"));
        }
        let u16_at = |o: usize| u16::from_le_bytes([sector[o], sector[o + 1]]);
        let u32_at =
            |o: usize| u32::from_le_bytes([sector[o], sector[o + 1], sector[o + 2], sector[o + 3]]);
        if sector[510] != 0x55 || sector[511] != 0xAA {
            return Err(bad("no 0x55AA boot signature"));
        }
        let bytes_per_sector = u16_at(11);
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
            return Err(bad(&format!("bytes per sector is {bytes_per_sector}")));
        }
        let sectors_per_cluster = sector[13];
        if sectors_per_cluster == 0 || !sectors_per_cluster.is_power_of_two() {
            return Err(bad(&format!(
                "sectors per cluster is {sectors_per_cluster}"
            )));
        }
        let reserved_sectors = u16_at(14);
        let fat_count = sector[16];
        let root_entries = u16_at(17);
        let total16 = u16_at(19);
        let media = sector[21];
        let fat16 = u16_at(22);
        let hidden_sectors = u32_at(28);
        let total32 = u32_at(32);
        if reserved_sectors == 0 || fat_count == 0 {
            return Err(bad("no reserved sectors or no FATs"));
        }
        // fatgen103: 0xF0 or 0xF8..=0xFF; every formatter writes one of those. Checking it
        // keeps a master boot record (which also ends in 0x55AA) from passing as FAT.
        if media != 0xF0 && media < 0xF8 {
            return Err(bad(&format!("media byte is {media:#04x}")));
        }
        let total_sectors = if total16 != 0 {
            u32::from(total16)
        } else {
            total32
        };
        let sectors_per_fat = if fat16 != 0 {
            u32::from(fat16)
        } else {
            u32_at(36)
        };
        if sectors_per_fat == 0 {
            return Err(bad("sectors per FAT is 0"));
        }
        let fat32_layout = root_entries == 0 && fat16 == 0;
        let bps = u64::from(bytes_per_sector);
        let root_sectors = (u64::from(root_entries) * 32).div_ceil(bps);
        let meta = u64::from(reserved_sectors)
            + u64::from(fat_count) * u64::from(sectors_per_fat)
            + root_sectors;
        let data = u64::from(total_sectors)
            .checked_sub(meta)
            .ok_or_else(|| bad("metadata larger than the volume"))?;
        let cluster_count =
            u32::try_from(data / u64::from(sectors_per_cluster)).unwrap_or(u32::MAX);
        // fatgen103: the type is decided by the cluster count, except for a FAT32 layout
        // (see above).
        let fat_type = if fat32_layout || cluster_count >= 65525 {
            FatType::Fat32
        } else if cluster_count < 4085 {
            FatType::Fat12
        } else {
            FatType::Fat16
        };
        let (sig_at, id_at, label_at) = if fat_type == FatType::Fat32 {
            (66, 67, 71)
        } else {
            (38, 39, 43)
        };
        // The label field exists only with the extended boot signature 0x29 (0x28 has
        // the serial but no label).
        let label = if sector[sig_at] == 0x29 {
            String::from_utf8_lossy(&sector[label_at..label_at + 11])
                .trim_end_matches([' ', '\0'])
                .to_string()
        } else {
            String::new()
        };
        Ok(BootSector {
            fat_type,
            bytes_per_sector,
            sectors_per_cluster,
            reserved_sectors,
            fat_count,
            root_entries,
            total_sectors,
            sectors_per_fat,
            media,
            hidden_sectors,
            volume_id: u32_at(id_at),
            boot_label: label,
            cluster_count,
        })
    }

    /// Size of the volume in bytes.
    pub fn volume_bytes(&self) -> u64 {
        u64::from(self.total_sectors) * u64::from(self.bytes_per_sector)
    }
}

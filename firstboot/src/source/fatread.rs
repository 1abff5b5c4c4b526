//! A minimal read-only FAT12/16/32 reader: boot sector, FAT cluster chains, the root
//! directory and subdirectories, VFAT long file names and the volume label.
//!
//! It reads from a device node or an image file with positioned reads; nothing is
//! mounted. It is enough to read `node.yaml`, `user-data` or `openstack/latest/user_data`
//! from a small configuration partition, and refuses anything that does not look like FAT.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::blockdev::FilesystemReader;

/// Largest file this reader returns (configuration data is small).
const MAX_FILE_SIZE: u64 = 64 << 20;
/// Largest FAT this reader loads into memory.
const MAX_FAT_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

/// An opened FAT filesystem.
pub struct FatFs {
    file: File,
    /// Byte offset of the filesystem inside `file` (0 for a partition device).
    base: u64,
    fat_type: FatType,
    cluster_size: u64,
    /// Byte offset of cluster 2.
    data_start: u64,
    /// FAT12/16: byte offset and entry count of the fixed root directory.
    root_dir: (u64, u64),
    /// FAT32: first cluster of the root directory.
    root_cluster: u32,
    cluster_count: u32,
    fat: Vec<u8>,
    label: Option<String>,
}

/// One directory entry, long name resolved.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub short_name: String,
    pub is_dir: bool,
    pub first_cluster: u32,
    pub size: u32,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn le16(b: &[u8], o: usize) -> u64 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u64
}
fn le32(b: &[u8], o: usize) -> u64 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as u64
}

fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Whether a boot sector looks like FAT (cheap check used by the prober). The jump
/// instruction is not required (some writers leave it zero); the boot signature, the
/// media byte and a sane geometry are.
pub fn looks_like_fat(bs: &[u8]) -> bool {
    if bs.len() < 512 || bs[510] != 0x55 || bs[511] != 0xAA {
        return false;
    }
    let bps = le16(bs, 11);
    let spc = bs[13] as u64;
    let reserved = le16(bs, 14);
    let nfats = bs[16];
    let media = bs[21];
    matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && reserved > 0
        && (1..=4).contains(&nfats)
        && (media == 0xF0 || media >= 0xF8)
        && (le16(bs, 22) != 0 || le32(bs, 36) != 0)
        && (le16(bs, 19) != 0 || le32(bs, 32) != 0)
}

impl FatFs {
    /// Open the FAT filesystem starting at byte `base` of `file`.
    pub fn open(file: File, base: u64) -> io::Result<Self> {
        let bs = read_at(&file, base, 512)?;
        if !looks_like_fat(&bs) {
            return Err(invalid("not a FAT filesystem"));
        }
        let bps = le16(&bs, 11);
        let spc = bs[13] as u64;
        let reserved = le16(&bs, 14);
        let nfats = bs[16] as u64;
        let root_entries = le16(&bs, 17);
        let total = if le16(&bs, 19) != 0 {
            le16(&bs, 19)
        } else {
            le32(&bs, 32)
        };
        let fat_size = if le16(&bs, 22) != 0 {
            le16(&bs, 22)
        } else {
            le32(&bs, 36)
        };
        let root_dir_sectors = (root_entries * 32).div_ceil(bps);
        let first_data_sector = reserved + nfats * fat_size + root_dir_sectors;
        if first_data_sector >= total {
            return Err(invalid("FAT geometry: data region outside the filesystem"));
        }
        let clusters = (total - first_data_sector) / spc;
        let fat_type = if clusters < 4085 {
            FatType::Fat12
        } else if clusters < 65525 {
            FatType::Fat16
        } else {
            FatType::Fat32
        };
        if fat_type == FatType::Fat32 && root_entries != 0 {
            return Err(invalid("FAT32 with a fixed root directory"));
        }
        let fat_bytes = fat_size * bps;
        if fat_bytes > MAX_FAT_BYTES {
            return Err(invalid("FAT too large for this reader"));
        }
        let fat = read_at(&file, base + reserved * bps, fat_bytes as usize)?;
        // The label in the boot sector is valid when the extended boot signature is present.
        let (sig_off, label_off) = if fat_type == FatType::Fat32 {
            (66, 71)
        } else {
            (38, 43)
        };
        let bpb_label = if bs[sig_off] == 0x29 {
            clean_label(&bs[label_off..label_off + 11])
        } else {
            None
        };
        let mut fs = FatFs {
            file,
            base,
            fat_type,
            cluster_size: bps * spc,
            data_start: base + first_data_sector * bps,
            root_dir: (base + (reserved + nfats * fat_size) * bps, root_entries),
            root_cluster: if fat_type == FatType::Fat32 {
                le32(&bs, 44) as u32
            } else {
                0
            },
            cluster_count: clusters as u32,
            fat,
            label: None,
        };
        // Like blkid: the volume-label entry in the root directory wins over the boot sector.
        let root = fs.read_root_raw()?;
        let dir_label = root
            .chunks_exact(32)
            .take_while(|e| e[0] != 0)
            .find(|e| e[0] != 0xE5 && e[11] & 0x3F != 0x0F && e[11] & 0x08 != 0)
            .and_then(|e| clean_label(&e[..11]));
        fs.label = dir_label.or(bpb_label);
        Ok(fs)
    }

    pub fn fat_type(&self) -> FatType {
        self.fat_type
    }

    /// Offset of the filesystem inside its file.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn fat_entry(&self, cluster: u32) -> io::Result<u32> {
        let n = cluster as usize;
        let v = match self.fat_type {
            FatType::Fat12 => {
                let o = n + n / 2;
                let raw = *self
                    .fat
                    .get(o)
                    .ok_or_else(|| invalid("cluster beyond the FAT"))?
                    as u32
                    | (*self
                        .fat
                        .get(o + 1)
                        .ok_or_else(|| invalid("cluster beyond the FAT"))?
                        as u32)
                        << 8;
                if n % 2 == 1 {
                    raw >> 4
                } else {
                    raw & 0xFFF
                }
            }
            FatType::Fat16 => {
                let o = n * 2;
                let b = self
                    .fat
                    .get(o..o + 2)
                    .ok_or_else(|| invalid("cluster beyond the FAT"))?;
                u16::from_le_bytes([b[0], b[1]]) as u32
            }
            FatType::Fat32 => {
                let o = n * 4;
                let b = self
                    .fat
                    .get(o..o + 4)
                    .ok_or_else(|| invalid("cluster beyond the FAT"))?;
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x0FFF_FFFF
            }
        };
        Ok(v)
    }

    fn is_end(&self, v: u32) -> bool {
        match self.fat_type {
            FatType::Fat12 => v >= 0xFF8,
            FatType::Fat16 => v >= 0xFFF8,
            FatType::Fat32 => v >= 0x0FFF_FFF8,
        }
    }

    /// The clusters of a chain starting at `first`, with loop and range checks.
    fn chain(&self, first: u32) -> io::Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut c = first;
        if c == 0 {
            return Ok(out);
        }
        loop {
            if c < 2 || c >= self.cluster_count + 2 {
                return Err(invalid(format!("cluster {c} out of range")));
            }
            out.push(c);
            if out.len() > self.cluster_count as usize {
                return Err(invalid("cluster chain loops"));
            }
            let next = self.fat_entry(c)?;
            if self.is_end(next) {
                return Ok(out);
            }
            c = next;
        }
    }

    fn read_chain(&self, first: u32, limit: Option<u64>) -> io::Result<Vec<u8>> {
        let clusters = self.chain(first)?;
        let mut data = Vec::with_capacity(clusters.len() * self.cluster_size as usize);
        for c in clusters {
            if let Some(l) = limit {
                if data.len() as u64 >= l {
                    break;
                }
            }
            let off = self.data_start + (c as u64 - 2) * self.cluster_size;
            data.extend_from_slice(&read_at(&self.file, off, self.cluster_size as usize)?);
        }
        if let Some(l) = limit {
            if (data.len() as u64) < l {
                return Err(invalid("file shorter than its directory entry says"));
            }
            data.truncate(l as usize);
        }
        Ok(data)
    }

    fn read_root_raw(&self) -> io::Result<Vec<u8>> {
        if self.fat_type == FatType::Fat32 {
            self.read_chain(self.root_cluster, None)
        } else {
            let (off, entries) = self.root_dir;
            read_at(&self.file, off, (entries * 32) as usize)
        }
    }

    /// Entries of the root directory.
    pub fn root(&self) -> io::Result<Vec<DirEntry>> {
        Ok(parse_dir(&self.read_root_raw()?))
    }

    /// Entries of a subdirectory.
    pub fn dir(&self, entry: &DirEntry) -> io::Result<Vec<DirEntry>> {
        if !entry.is_dir {
            return Err(invalid(format!("{} is not a directory", entry.name)));
        }
        if entry.first_cluster == 0 {
            // ".." pointing at the root.
            return self.root();
        }
        Ok(parse_dir(&self.read_chain(entry.first_cluster, None)?))
    }

    /// Find an entry by a `/`-separated path, case-insensitively (as FAT is).
    pub fn lookup(&self, path: &str) -> io::Result<Option<DirEntry>> {
        let mut entries = self.root()?;
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let Some(e) = entries
                .iter()
                .find(|e| {
                    e.name.eq_ignore_ascii_case(part) || e.short_name.eq_ignore_ascii_case(part)
                })
                .cloned()
            else {
                return Ok(None);
            };
            if i + 1 == parts.len() {
                return Ok(Some(e));
            }
            if !e.is_dir {
                return Ok(None);
            }
            entries = self.dir(&e)?;
        }
        Ok(None)
    }
}

impl FilesystemReader for FatFs {
    fn label(&self) -> Option<String> {
        self.label.clone()
    }

    fn read_file(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        match self.lookup(path)? {
            None => Ok(None),
            Some(e) if e.is_dir => Err(invalid(format!("{path} is a directory"))),
            Some(e) if e.size as u64 > MAX_FILE_SIZE => {
                Err(invalid(format!("{path} is too large")))
            }
            Some(e) if e.size == 0 => Ok(Some(Vec::new())),
            Some(e) => self
                .read_chain(e.first_cluster, Some(e.size as u64))
                .map(Some),
        }
    }

    fn kind(&self) -> &'static str {
        match self.fat_type {
            FatType::Fat12 => "fat12",
            FatType::Fat16 => "fat16",
            FatType::Fat32 => "fat32",
        }
    }
}

fn clean_label(raw: &[u8]) -> Option<String> {
    let s: String = raw
        .iter()
        .map(|&b| if b.is_ascii() { b as char } else { '?' })
        .collect();
    let s = s.trim_end_matches([' ', '\0']).to_string();
    (!s.is_empty() && s != "NO NAME").then_some(s)
}

/// Checksum of an 8.3 name, as stored in its long-name entries.
fn lfn_checksum(short: &[u8]) -> u8 {
    short.iter().fold(0u8, |sum, &b| {
        ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(b)
    })
}

fn short_name(e: &[u8]) -> String {
    let lower_base = e[12] & 0x08 != 0;
    let lower_ext = e[12] & 0x10 != 0;
    let conv = |b: &[u8], lower: bool| -> String {
        let mut s: String = b
            .iter()
            .map(|&c| c as char)
            .collect::<String>()
            .trim_end()
            .to_string();
        if lower {
            s = s.to_ascii_lowercase();
        }
        s
    };
    let mut base = e[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xE5;
    }
    let base = conv(&base, lower_base);
    let ext = conv(&e[8..11], lower_ext);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// Parse raw directory entries, joining VFAT long-name entries onto their 8.3 entry.
fn parse_dir(raw: &[u8]) -> Vec<DirEntry> {
    let mut out = Vec::new();
    // Long-name pieces: (ordinal, 13 UCS-2 units), plus the checksum they carry.
    let mut lfn: Vec<(u8, Vec<u16>)> = Vec::new();
    let mut lfn_sum: Option<u8> = None;
    for e in raw.chunks_exact(32) {
        if e[0] == 0 {
            break;
        }
        if e[0] == 0xE5 {
            lfn.clear();
            continue;
        }
        let attr = e[11];
        if attr & 0x3F == 0x0F {
            let ord = e[0];
            if ord & 0x40 != 0 {
                lfn.clear();
                lfn_sum = Some(e[13]);
            }
            let mut units = Vec::with_capacity(13);
            for range in [1..11, 14..26, 28..32] {
                for pair in e[range].chunks_exact(2) {
                    units.push(u16::from_le_bytes([pair[0], pair[1]]));
                }
            }
            lfn.push((ord & 0x1F, units));
            continue;
        }
        if attr & 0x08 != 0 {
            // Volume label.
            lfn.clear();
            continue;
        }
        let short = short_name(e);
        let mut name = short.clone();
        if !lfn.is_empty() && lfn_sum == Some(lfn_checksum(&e[..11])) {
            lfn.sort_by_key(|(o, _)| *o);
            let units: Vec<u16> = lfn
                .iter()
                .flat_map(|(_, u)| u.iter().copied())
                .take_while(|&u| u != 0)
                .filter(|&u| u != 0xFFFF)
                .collect();
            name = String::from_utf16_lossy(&units);
        }
        lfn.clear();
        lfn_sum = None;
        if short == "." || short == ".." {
            continue;
        }
        let first_cluster = ((le16(e, 20) << 16) | le16(e, 26)) as u32;
        out.push(DirEntry {
            name,
            short_name: short,
            is_dir: attr & 0x10 != 0,
            first_cluster,
            size: le32(e, 28) as u32,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_honour_case_flags() {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(b"NODE    YAM");
        assert_eq!(short_name(&e), "NODE.YAM");
        e[12] = 0x18;
        assert_eq!(short_name(&e), "node.yam");
    }

    #[test]
    fn rejects_non_fat() {
        assert!(!looks_like_fat(&[0u8; 512]));
    }
}

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

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};

use hadris_fat::sync::FatFs;
use hadris_fat::{FatKind, VolumeLabel};
use hadris_fs::{DateTime, DirCursor, FileType, MountOptions, Name, NodeId, OpenMode};
use hadris_storage::{BlockIndex, BlockSize};

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
    fn kind(self) -> FatKind {
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
struct Geometry {
    cluster_size: Option<u32>,
    reserved_sectors: Option<u16>,
    fat_count: Option<u8>,
    root_entries: Option<u16>,
    media: Option<u8>,
    hidden_sectors: u32,
}

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

fn fs_err<E: std::fmt::Display>(what: impl Into<String>, e: hadris_io::Error<E>) -> FatError {
    let message = match e.device_error() {
        Some(dev) => format!("{e} ({dev})"),
        None => format!("{e} ({:?})", e.kind()),
    };
    FatError::Filesystem {
        what: what.into(),
        message,
    }
}

/// Build a complete FAT volume of `opts.size_bytes` bytes holding `files`
/// (`"EFI/BOOT/BOOTX64.EFI"` → contents; directories are implied by the paths).
/// The same inputs give the same bytes.
pub fn build(files: &BTreeMap<String, Vec<u8>>, opts: &FatOptions) -> Result<Vec<u8>, FatError> {
    build_with(files, opts, Geometry::default())
}

fn build_with(
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

fn check_path(path: &str) -> Result<(), FatError> {
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

const SECTOR: BlockSize = match BlockSize::new(SECTOR_SIZE as u32) {
    Some(s) => s,
    None => panic!("512 is a valid block size"),
};

/// A window of `len` bytes at `offset` of a seekable stream, as a 512-byte block device.
struct Window<R> {
    inner: R,
    offset: u64,
    len: u64,
}

impl<R> hadris_io::ErrorType for Window<R> {
    type Error = std::io::Error;
}

impl<R: Read + Seek> hadris_storage::sync::BlockDevice for Window<R> {
    fn block_size(&self) -> BlockSize {
        SECTOR
    }

    fn block_count(&self) -> u64 {
        self.len / SECTOR_SIZE
    }

    fn read_blocks(
        &mut self,
        first: BlockIndex,
        buf: &mut [u8],
    ) -> Result<(), hadris_io::Error<Self::Error>> {
        let start = first.get().saturating_mul(SECTOR_SIZE);
        if start.saturating_add(buf.len() as u64) > self.len {
            return Err(hadris_io::Error::new(
                hadris_io::ErrorKind::InvalidInput,
                "read past the end of the volume",
            ));
        }
        let r = self
            .inner
            .seek(SeekFrom::Start(self.offset + start))
            .and_then(|_| self.inner.read_exact(buf));
        r.map_err(|e| hadris_io::Error::device(e, "reading the FAT volume"))
    }
}

/// What [`FatImage::walk`] calls for each regular file: path, node, size, filesystem.
type Visitor<'a, R> =
    dyn FnMut(String, NodeId, u64, &mut FatFs<Window<R>>) -> Result<(), FatError> + 'a;

/// A file found by [`FatImage::list_files`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FatFile {
    /// Path from the root with `/` separators and the long names (`EFI/BOOT/BOOTX64.EFI`).
    pub path: String,
    pub size: u64,
}

/// What [`FatImage::stat`] finds at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    File { size: u64 },
    Dir,
}

/// A volume label as tools show it: trailing spaces (and NULs, which some writers pad
/// with) removed; `None` when that leaves nothing or `NO NAME`, the placeholder for "no
/// label" (as blkid and mtools treat it).
fn clean_label(raw: &str) -> Option<String> {
    let l = raw.trim_end_matches([' ', '\0']);
    (!l.is_empty() && l != "NO NAME").then(|| l.to_string())
}

/// A FAT volume opened read-only from a window of a seekable stream (a partition of a
/// disk image or a block device, or a whole image file).
///
/// Only what is asked for is read: the boot sector and FAT metadata at [`open`], then
/// directories and file data on demand. A block device opened as a `File` works; its
/// size is what seeking to its end reports (its metadata says 0).
///
/// [`open`]: FatImage::open
pub struct FatImage<R: Read + Seek> {
    fs: FatFs<Window<R>>,
    boot: BootSector,
    label: Option<String>,
}

impl<R: Read + Seek> std::fmt::Debug for FatImage<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FatImage")
            .field("boot", &self.boot)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl<R: Read + Seek> FatImage<R> {
    /// Open the volume of `len` bytes at byte `offset` of `reader`.
    pub fn open(mut reader: R, offset: u64, len: u64) -> Result<Self, FatError> {
        let mut sector = [0u8; 512];
        reader
            .seek(SeekFrom::Start(offset))
            .and_then(|_| reader.read_exact(&mut sector))
            .map_err(|source| FatError::Io {
                what: format!("reading the boot sector at byte {offset}"),
                source,
            })?;
        let boot = BootSector::parse(&sector)?;
        // Any sector size FAT allows is read (the filesystem code addresses bytes);
        // [`rebuild`] writes 512-byte sectors only and refuses other volumes.
        if boot.volume_bytes() > len {
            return Err(FatError::SizeMismatch {
                volume: boot.volume_bytes(),
                partition: len,
            });
        }
        let dev = Window {
            inner: reader,
            offset,
            len,
        };
        let mut fs = FatFs::mount(dev, MountOptions::new().read_only()).map_err(|e| {
            FatError::Filesystem {
                what: "mounting the FAT volume".into(),
                message: e.to_string(),
            }
        })?;
        let mut buf = [0u8; 64];
        // The first label entry of the root directory (deleted and long-name entries
        // skipped), decoded like a short name. When there is one, it is the label, even
        // a blank one; the boot sector's copy counts only when there is none.
        let label = match fs
            .label(&mut buf)
            .map_err(|e| fs_err("reading the volume label", e))?
        {
            Some(entry) => clean_label(entry),
            None => clean_label(&boot.boot_label),
        };
        Ok(FatImage { fs, boot, label })
    }

    /// The volume label. The root directory's label entry is the label, as Windows,
    /// mtools, `fatlabel` and blkid read it (Windows does not update the boot sector
    /// when it relabels a volume); a blank entry means no label. Only when the root
    /// directory has no label entry at all does the boot sector's copy count (older
    /// blkid did that, and so did the data sources' former reader), and only with the
    /// extended boot signature `0x29`. `NO NAME` is no label.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    pub fn volume_id(&self) -> u32 {
        self.boot.volume_id
    }

    pub fn fat_type(&self) -> FatType {
        self.boot.fat_type
    }

    pub fn boot_sector(&self) -> &BootSector {
        &self.boot
    }

    /// Every regular file, recursively, with its long-name path, sorted by path.
    pub fn list_files(&mut self) -> Result<Vec<FatFile>, FatError> {
        let mut out = Vec::new();
        let root = self.fs.root();
        self.walk(root, String::new(), 0, &mut |path, _node, size, _fs| {
            out.push(FatFile { path, size });
            Ok(())
        })?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Every regular file with its contents (what [`rebuild`] carries over).
    pub fn read_all(&mut self) -> Result<BTreeMap<String, Vec<u8>>, FatError> {
        let mut out = BTreeMap::new();
        let root = self.fs.root();
        self.walk(root, String::new(), 0, &mut |path, node, size, fs| {
            let data = read_node(fs, node, size, &path)?;
            out.insert(path, data);
            Ok(())
        })?;
        Ok(out)
    }

    /// Whether a regular file exists at `path` (case-insensitive, long or short names;
    /// a directory is not a file). Nothing is read but directories.
    pub fn exists(&mut self, path: &str) -> Result<bool, FatError> {
        Ok(matches!(self.stat(path)?, Some(Stat::File { .. })))
    }

    /// What is at `path`: a file and its size, a directory (the root is `""` or `/`),
    /// or nothing (`None`, also when a component on the way is a file).
    pub fn stat(&mut self, path: &str) -> Result<Option<Stat>, FatError> {
        self.with_entry(path, |_, _, ft, size| {
            Ok(match ft {
                FileType::File => Some(Stat::File { size }),
                FileType::Dir => Some(Stat::Dir),
                _ => None,
            })
        })
        .map(Option::flatten)
    }

    /// The contents of the file at `path` (`EFI/BOOT/BOOTX64.EFI`; a leading `/` is
    /// accepted). Names match case-insensitively, by long or 8.3 name. A directory is
    /// [`FatError::NotFound`] (use [`stat`](Self::stat) to tell the two apart).
    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>, FatError> {
        let not_found = || FatError::NotFound {
            path: path.to_string(),
        };
        self.with_entry(path, |fs, node, ft, size| match (node, ft) {
            (Some(node), FileType::File) => read_node(fs, node, size, path).map(Some),
            _ => Ok(None),
        })?
        .flatten()
        .ok_or_else(not_found)
    }

    /// Walk `path` from the root and call `found` with the entry's node (`None` for the
    /// root), type and size; `Ok(None)` when there is nothing at `path`. The nodes
    /// pinned on the way are released afterwards.
    fn with_entry<T, F>(&mut self, path: &str, found: F) -> Result<Option<T>, FatError>
    where
        F: FnOnce(&mut FatFs<Window<R>>, Option<NodeId>, FileType, u64) -> Result<T, FatError>,
    {
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        if comps.is_empty() {
            return found(&mut self.fs, None, FileType::Dir, 0).map(Some);
        }
        let mut dir = self.fs.root();
        let mut pinned: Vec<NodeId> = Vec::new();
        let result = (|| {
            for (i, comp) in comps.iter().enumerate() {
                let node = match self.fs.lookup(dir, Name::new(comp)) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            hadris_io::ErrorKind::NotFound | hadris_io::ErrorKind::NotADirectory
                        ) =>
                    {
                        return Ok(None)
                    }
                    Err(e) => return Err(fs_err(format!("looking up `{path}`"), e)),
                };
                pinned.push(node);
                let meta = self
                    .fs
                    .stat(node)
                    .map_err(|e| fs_err(format!("reading `{path}`"), e))?;
                if i + 1 == comps.len() {
                    return found(&mut self.fs, Some(node), meta.file_type(), meta.len()).map(Some);
                }
                match meta.file_type() {
                    FileType::Dir => dir = node,
                    _ => return Ok(None),
                }
            }
            Ok(None)
        })();
        for n in pinned {
            self.fs.forget(n, 1);
        }
        result
    }

    fn walk(
        &mut self,
        dir: NodeId,
        prefix: String,
        depth: usize,
        visit: &mut Visitor<'_, R>,
    ) -> Result<(), FatError> {
        if depth > 64 {
            return Err(FatError::Filesystem {
                what: format!("listing `{prefix}`"),
                message: "directories nested deeper than 64 levels (a loop?)".into(),
            });
        }
        // Collect the names first: lookups between readdir calls are fine, but keeping
        // the two phases apart keeps the cursor logic obvious.
        let mut entries: Vec<(String, FileType)> = Vec::new();
        let mut cursor = DirCursor::START;
        while let Some(entry) = self
            .fs
            .readdir(dir, cursor)
            .map_err(|e| fs_err(format!("listing `/{prefix}`"), e))?
        {
            cursor = entry.next_cursor();
            let name = entry.name().to_str().map_err(|_| FatError::Filesystem {
                what: format!("listing `/{prefix}`"),
                message: "a name is not valid UTF-8".into(),
            })?;
            entries.push((name.to_string(), entry.file_type()));
        }
        for (name, ft) in entries {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let node = self
                .fs
                .lookup(dir, Name::new(&name))
                .map_err(|e| fs_err(format!("looking up `{path}`"), e))?;
            let r = match ft {
                FileType::Dir => self.walk(node, path, depth + 1, visit),
                FileType::File => match self.fs.stat(node) {
                    Ok(meta) => visit(path, node, meta.len(), &mut self.fs),
                    Err(e) => Err(fs_err(format!("reading `{path}`"), e)),
                },
                _ => Ok(()),
            };
            self.fs.forget(node, 1);
            r?;
        }
        Ok(())
    }
}

fn read_node<R: Read + Seek>(
    fs: &mut FatFs<Window<R>>,
    node: NodeId,
    size: u64,
    path: &str,
) -> Result<Vec<u8>, FatError> {
    let what = || format!("reading `{path}`");
    fs.open(node, OpenMode::Read)
        .map_err(|e| fs_err(what(), e))?;
    let mut data = vec![0u8; usize::try_from(size).unwrap_or(0)];
    let mut done = 0usize;
    let r = (|| {
        while done < data.len() {
            let n = fs
                .read(node, done as u64, &mut data[done..])
                .map_err(|e| fs_err(what(), e))?;
            if n == 0 {
                return Err(FatError::Filesystem {
                    what: what(),
                    message: format!("ends after {done} of {size} bytes"),
                });
            }
            done += n;
        }
        Ok(())
    })();
    let c = fs.close(node).map_err(|e| fs_err(what(), e));
    r?;
    c?;
    Ok(data)
}

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
    let boot = img.boot.clone();
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
    image
        .seek(SeekFrom::Start(offset))
        .and_then(|_| image.read_exact(&mut old))
        .map_err(|source| FatError::Io {
            what: format!("reading {len} bytes at byte {offset}"),
            source,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(size: u64) -> FatOptions {
        FatOptions {
            size_bytes: size,
            label: "NODECONFIG".into(),
            volume_id: 0x1234_5678,
            timestamp: 1_700_000_000,
            fat_type: None,
        }
    }

    #[test]
    fn auto_type_by_size() {
        let files = BTreeMap::new();
        let img = build(&files, &opts(4 << 20)).unwrap();
        assert_eq!(BootSector::parse(&img).unwrap().fat_type, FatType::Fat12);
        let img = build(&files, &opts(64 << 20)).unwrap();
        assert_eq!(BootSector::parse(&img).unwrap().fat_type, FatType::Fat16);
        let img = build(&files, &opts(260 << 20)).unwrap();
        let b = BootSector::parse(&img).unwrap();
        assert_eq!(b.fat_type, FatType::Fat32);
        assert_eq!(b.volume_id, 0x1234_5678);
        assert_eq!(img.len(), 260 << 20);
    }

    #[test]
    fn roundtrip_and_case_insensitive_lookup() {
        let mut files = BTreeMap::new();
        files.insert("node.yaml".to_string(), b"version: 1\n".to_vec());
        files.insert("EFI/BOOT/BOOTX64.EFI".to_string(), vec![1u8; 5000]);
        let img = build(&files, &opts(8 << 20)).unwrap();
        let mut r = FatImage::open(std::io::Cursor::new(&img), 0, img.len() as u64).unwrap();
        assert_eq!(r.label(), Some("NODECONFIG"));
        assert_eq!(r.volume_id(), 0x1234_5678);
        assert_eq!(r.read_all().unwrap(), files);
        assert_eq!(
            r.read_file("/efi/boot/bootx64.efi").unwrap(),
            vec![1u8; 5000]
        );
        assert_eq!(r.read_file("NODE~1.YAM").unwrap(), b"version: 1\n");
        assert!(matches!(
            r.read_file("EFI/BOOT"),
            Err(FatError::NotFound { .. })
        ));
        assert!(matches!(
            r.read_file("nope/x"),
            Err(FatError::NotFound { .. })
        ));
        assert!(matches!(
            r.read_file("node.yaml/x"),
            Err(FatError::NotFound { .. })
        ));
    }

    #[test]
    fn bad_inputs_are_named() {
        let mut files = BTreeMap::new();
        files.insert("a/../b".to_string(), vec![]);
        assert!(matches!(
            build(&files, &opts(4 << 20)),
            Err(FatError::BadPath { .. })
        ));
        let mut files = BTreeMap::new();
        files.insert("A.txt".to_string(), vec![]);
        files.insert("a.TXT".to_string(), vec![]);
        let e = build(&files, &opts(4 << 20)).unwrap_err();
        assert!(e.to_string().contains("case-insensitive"), "{e}");
        let mut o = opts(4 << 20);
        o.label = "node.config".into();
        assert!(matches!(
            build(&BTreeMap::new(), &o),
            Err(FatError::BadLabel { .. })
        ));
        assert!(matches!(
            build(&BTreeMap::new(), &opts(1000)),
            Err(FatError::BadSize { .. })
        ));
        let mut o = opts(4 << 20);
        o.fat_type = Some(FatType::Fat32);
        assert!(build(&BTreeMap::new(), &o).is_err());
        let mut files = BTreeMap::new();
        files.insert("big".to_string(), vec![0u8; 5 << 20]);
        let e = build(&files, &opts(4 << 20)).unwrap_err();
        assert!(matches!(e, FatError::Filesystem { .. }), "{e}");
        assert!(FatImage::open(std::io::Cursor::new(vec![0u8; 4096]), 0, 4096).is_err());
    }

    #[test]
    fn rebuild_keeps_identity_and_applies_changes() {
        let mut files = BTreeMap::new();
        files.insert("config.ign".to_string(), b"{}".to_vec());
        files.insert("keep/me.txt".to_string(), b"kept".to_vec());
        let img = build(&files, &opts(16 << 20)).unwrap();
        let mut changes = FileChanges::new();
        changes.insert("node.yaml".into(), Some(b"version: 1\n".to_vec()));
        changes.insert("CONFIG.IGN".into(), None);
        let new = rebuild(&img, &changes, 1_700_000_000).unwrap();
        assert_eq!(new.len(), img.len());
        assert_eq!(new[..90], img[..90], "boot sector parameters differ");
        let mut r = FatImage::open(std::io::Cursor::new(&new), 0, new.len() as u64).unwrap();
        let all = r.read_all().unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["keep/me.txt", "node.yaml"]);
        assert_eq!(r.label(), Some("NODECONFIG"));
        // Building the same end state from scratch gives the same bytes.
        let direct = build(&all, &opts(16 << 20)).unwrap();
        assert_eq!(direct, new);
    }

    #[test]
    fn timestamps_clamp() {
        let mut o = opts(4 << 20);
        o.timestamp = 0;
        let a = build(&BTreeMap::new(), &o).unwrap();
        o.timestamp = DOS_EPOCH_UNIX;
        let b = build(&BTreeMap::new(), &o).unwrap();
        assert_eq!(a, b);
        o.timestamp = i64::MAX;
        build(&BTreeMap::new(), &o).unwrap();
    }

    /// Byte offset of the fixed root directory of a FAT12/16 volume.
    fn root_dir_offset(img: &[u8]) -> usize {
        let b = BootSector::parse(img).unwrap();
        (usize::from(b.reserved_sectors) + usize::from(b.fat_count) * b.sectors_per_fat as usize)
            * usize::from(b.bytes_per_sector)
    }

    #[test]
    fn probe_accepts_a_zero_jump_and_rejects_what_is_not_fat() {
        let mut files = BTreeMap::new();
        files.insert("node.yaml".to_string(), b"version: 1\n".to_vec());
        let img = build(&files, &opts(4 << 20)).unwrap();
        assert_eq!(img[0], 0xEB);
        // Some writers leave the jump instruction zero; Linux mounts such volumes.
        let mut nojump = img.clone();
        nojump[..3].fill(0);
        let b = BootSector::parse(&nojump).unwrap();
        assert_eq!(b.fat_type, FatType::Fat12);
        let mut r = FatImage::open(std::io::Cursor::new(&nojump), 0, nojump.len() as u64).unwrap();
        assert_eq!(r.label(), Some("NODECONFIG"));
        assert_eq!(r.read_file("node.yaml").unwrap(), b"version: 1\n");

        assert!(BootSector::parse(&[0u8; 512]).is_err());
        assert!(BootSector::parse(&img[..511]).is_err());
        let broken = |at: usize, value: &[u8]| {
            let mut s = img[..512].to_vec();
            s[at..at + value.len()].copy_from_slice(value);
            BootSector::parse(&s)
        };
        assert!(broken(510, &[0, 0]).is_err(), "no 0x55AA");
        assert!(
            broken(11, &300u16.to_le_bytes()).is_err(),
            "bytes per sector"
        );
        assert!(broken(13, &[3]).is_err(), "sectors per cluster");
        assert!(broken(14, &[0, 0]).is_err(), "reserved sectors");
        assert!(broken(16, &[0]).is_err(), "FAT count");
        assert!(broken(21, &[0x12]).is_err(), "media byte");
        assert!(broken(21, &[0xF0]).is_ok(), "media byte 0xF0");
        assert!(broken(22, &[0, 0]).is_err(), "sectors per FAT");
        // A master boot record also ends in 0x55AA; its code bytes are no BPB.
        let mut mbr = vec![0u8; 512];
        mbr[..16].copy_from_slice(&[
            0xFA, 0x33, 0xC0, 0x8E, 0xD0, 0xBC, 0x00, 0x7C, 0x8B, 0xF4, 0x50, 0x07, 0x50, 0x1F,
            0xFB, 0xFC,
        ]);
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert!(BootSector::parse(&mbr).is_err());
    }

    #[test]
    fn stat_tells_files_directories_and_nothing_apart() {
        let mut files = BTreeMap::new();
        files.insert("node.yaml".to_string(), b"version: 1\n".to_vec());
        files.insert("EFI/BOOT/BOOTX64.EFI".to_string(), vec![1u8; 5000]);
        let img = build(&files, &opts(8 << 20)).unwrap();
        let mut r = FatImage::open(std::io::Cursor::new(&img), 0, img.len() as u64).unwrap();
        assert_eq!(r.stat("").unwrap(), Some(Stat::Dir));
        assert_eq!(r.stat("/").unwrap(), Some(Stat::Dir));
        assert_eq!(r.stat("efi/boot").unwrap(), Some(Stat::Dir));
        assert_eq!(
            r.stat("/EFI/BOOT/bootx64.efi").unwrap(),
            Some(Stat::File { size: 5000 })
        );
        assert_eq!(r.stat("NODE~1.YAM").unwrap(), Some(Stat::File { size: 11 }));
        assert_eq!(r.stat("nope").unwrap(), None);
        assert_eq!(r.stat("node.yaml/x").unwrap(), None);
        assert!(r.exists("node.yaml").unwrap());
        assert!(!r.exists("EFI/BOOT").unwrap());
        assert!(!r.exists("").unwrap());
        assert!(matches!(r.read_file("/"), Err(FatError::NotFound { .. })));
    }

    #[test]
    fn root_label_entry_wins_over_the_boot_sector_label() {
        let img = build(&BTreeMap::new(), &opts(4 << 20)).unwrap();
        let open = |img: &[u8]| {
            FatImage::open(std::io::Cursor::new(img.to_vec()), 0, img.len() as u64).unwrap()
        };
        assert_eq!(img[38], 0x29);
        assert_eq!(&img[43..54], b"NODECONFIG ");
        let root = root_dir_offset(&img);
        assert_eq!(&img[root..root + 11], b"NODECONFIG ");
        assert_eq!(img[root + 11] & 0x08, 0x08);

        // A relabel that did not touch the boot sector: the root entry counts.
        let mut a = img.clone();
        a[43..54].copy_from_slice(b"STALE      ");
        assert_eq!(open(&a).label(), Some("NODECONFIG"));
        assert_eq!(open(&a).boot_sector().boot_label, "STALE");

        // Deleted entries before the label are skipped.
        let mut b = img.clone();
        b.copy_within(root..root + 32, root + 32);
        b[root..root + 11].copy_from_slice(b"\xE5LD        ");
        b[root + 11] = 0x08;
        b[43..54].copy_from_slice(b"STALE      ");
        assert_eq!(open(&b).label(), Some("NODECONFIG"));

        // A blank or `NO NAME` root entry is no label; the boot sector is not consulted.
        for entry in [b"           ", b"NO NAME    "] {
            let mut c = a.clone();
            c[root..root + 11].copy_from_slice(entry);
            assert_eq!(open(&c).label(), None, "{entry:?}");
        }

        // No root entry at all: the boot sector's copy...
        let mut c = a.clone();
        c[root..root + 32].fill(0);
        assert_eq!(open(&c).label(), Some("STALE"));
        // ... which is only valid with the extended boot signature 0x29,
        c[38] = 0x28;
        assert_eq!(open(&c).label(), None);
        // ... and is no label when it says `NO NAME`.
        c[38] = 0x29;
        c[43..54].copy_from_slice(b"NO NAME    ");
        assert_eq!(open(&c).label(), None);
    }

    #[test]
    fn empty_label_means_none() {
        let mut o = opts(4 << 20);
        o.label = String::new();
        let img = build(&BTreeMap::new(), &o).unwrap();
        let r = FatImage::open(std::io::Cursor::new(&img), 0, img.len() as u64).unwrap();
        assert_eq!(r.label(), None);
        let again = rebuild(&img, &FileChanges::new(), 1_700_000_000).unwrap();
        assert_eq!(again, img);
    }
}

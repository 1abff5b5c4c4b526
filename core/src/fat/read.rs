//! [`FatImage`]: a FAT volume opened read-only from a window of a seekable stream.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

use hadris_fat::sync::FatFs;
use hadris_fs::{DirCursor, FileType, MountOptions, Name, NodeId, OpenMode};
use hadris_storage::{BlockIndex, BlockSize};

use super::bpb::BootSector;
use super::{fs_err, read_exact_at, FatError, FatType, SECTOR_SIZE};

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
        read_exact_at(&mut reader, offset, &mut sector, || {
            format!("reading the boot sector at byte {offset}")
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
        let volume = self.boot.volume_bytes();
        self.walk(root, String::new(), 0, &mut |path, node, size, fs| {
            let data = read_node(fs, node, size, volume, &path)?;
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
        let volume = self.boot.volume_bytes();
        self.with_entry(path, |fs, node, ft, size| match (node, ft) {
            (Some(node), FileType::File) => read_node(fs, node, size, volume, path).map(Some),
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

/// The `size` bytes of a file, `size` as its directory entry says; `volume` is the
/// volume's size in bytes, which no file's data can exceed.
fn read_node<R: Read + Seek>(
    fs: &mut FatFs<Window<R>>,
    node: NodeId,
    size: u64,
    volume: u64,
    path: &str,
) -> Result<Vec<u8>, FatError> {
    let what = || format!("reading `{path}`");
    // The size is the directory entry's word (up to 4 GiB): refuse one the volume cannot
    // hold before allocating for it.
    if size > volume {
        return Err(FatError::Filesystem {
            what: what(),
            message: format!(
                "its directory entry says {size} bytes, more than the {volume}-byte volume holds"
            ),
        });
    }
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

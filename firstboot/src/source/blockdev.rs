//! Block-device discovery for the label-based sources (NODECONFIG, cidata, config-2,
//! the Azure provisioning ISO).
//!
//! On a node, candidates are the entries of `<root>/sys/class/block` (whole disks and
//! partitions, sorted by name; `loop*`, `ram*` and `zram*` are skipped), opened as
//! `<root>/dev/<name>`. Each is probed by reading superblocks: a FAT boot sector at offset
//! 0 (read with [`nodeimage_core::fat`], the same FAT code the image builder uses), an ISO9660
//! volume descriptor at 32 KiB. Nothing is mounted and blkid is not needed.
//! Tests list image files instead ([`DeviceSet::files`]).

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::fs::FilesystemReader;
use super::iso9660::{self, IsoFs};
use nodeimage_core::fat::{BootSector, FatError, FatImage, FatType, Stat};

/// Largest file read from a FAT volume (configuration data is small).
const MAX_FAT_FILE: u64 = 64 << 20;

/// A FAT volume on a device or image file, read through [`nodeimage_core::fat::FatImage`].
struct FatVolume {
    image: Mutex<FatImage<File>>,
    label: Option<String>,
    fat_type: FatType,
}

impl FatVolume {
    /// Open the FAT volume that fills `file` (a partition device or an image file).
    fn open(mut file: File) -> io::Result<Self> {
        // A block device's metadata says 0 bytes; seeking to its end gives its size.
        let len = file.seek(SeekFrom::End(0))?;
        let image = FatImage::open(file, 0, len).map_err(fat_io)?;
        Ok(FatVolume {
            label: image.label().map(str::to_string),
            fat_type: image.fat_type(),
            image: Mutex::new(image),
        })
    }
}

fn fat_io(e: FatError) -> io::Error {
    match e {
        FatError::Io { source, .. } => source,
        e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    }
}

impl FilesystemReader for FatVolume {
    fn label(&self) -> Option<String> {
        self.label.clone()
    }

    fn read_file(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        // A panic while holding the lock leaves nothing half-done: reads only.
        let mut image = self.image.lock().unwrap_or_else(|p| p.into_inner());
        match image.stat(path).map_err(fat_io)? {
            None => Ok(None),
            Some(Stat::Dir) => Err(invalid(format!("{path} is a directory"))),
            Some(Stat::File { size }) if size > MAX_FAT_FILE => {
                Err(invalid(format!("{path} is too large ({size} bytes)")))
            }
            Some(Stat::File { .. }) => image.read_file(path).map(Some).map_err(fat_io),
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

/// The set of devices the label-based sources look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSet {
    /// Scan `<root>/sys/class/block` and open `<root>/dev/<name>`.
    System { root: PathBuf, include_loop: bool },
    /// Exactly these files (image files in tests, or device nodes).
    Files(Vec<PathBuf>),
    /// These files, of which `boot` play the boot disk's partitions (tests).
    FilesWithBootDisk {
        files: Vec<PathBuf>,
        boot: Vec<PathBuf>,
    },
}

/// The disk the node booted from: its name and the device paths of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootDisk {
    pub name: String,
    pub devices: Vec<PathBuf>,
}

/// A probed filesystem with its label.
pub struct Volume {
    /// The device node or image file.
    pub path: PathBuf,
    pub label: Option<String>,
    pub fs: Box<dyn FilesystemReader>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("path", &self.path)
            .field("label", &self.label)
            .field("kind", &self.fs.kind())
            .finish()
    }
}

impl DeviceSet {
    /// The node's block devices under `root` (loop and ram devices skipped).
    pub fn system(root: &Path) -> Self {
        DeviceSet::System {
            root: root.to_path_buf(),
            include_loop: false,
        }
    }

    /// Exactly these device nodes or image files (tests).
    pub fn files<P: Into<PathBuf>>(paths: impl IntoIterator<Item = P>) -> Self {
        DeviceSet::Files(paths.into_iter().map(Into::into).collect())
    }

    /// The disk holding the running root filesystem, on a live node (`root` is `/`);
    /// `None` in a `--root` tree, or when `/` is not on a disk partition (netboot).
    pub fn boot_disk(&self) -> Option<BootDisk> {
        match self {
            DeviceSet::Files(_) => None,
            DeviceSet::FilesWithBootDisk { boot, .. } => Some(BootDisk {
                name: "(test boot disk)".into(),
                devices: boot.clone(),
            }),
            DeviceSet::System { root, .. } => {
                if root != Path::new("/") {
                    return None;
                }
                let (_, name) = crate::state::disk_of_mount(Path::new("/")).ok()?;
                let mut devices = vec![PathBuf::from("/dev").join(&name)];
                let dir = Path::new("/sys/block").join(&name);
                for e in std::fs::read_dir(&dir).ok()?.flatten() {
                    if e.path().join("partition").exists() {
                        devices.push(PathBuf::from("/dev").join(e.file_name()));
                    }
                }
                Some(BootDisk { name, devices })
            }
        }
    }

    /// Candidate device paths, in a stable order.
    pub fn candidates(&self) -> Vec<PathBuf> {
        match self {
            DeviceSet::Files(v) => v.clone(),
            DeviceSet::FilesWithBootDisk { files, .. } => files.clone(),
            DeviceSet::System { root, include_loop } => {
                let dir = nodeimage_core::files::rooted(root, "/sys/class/block");
                let Ok(rd) = std::fs::read_dir(&dir) else {
                    return Vec::new();
                };
                let mut names: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| {
                        *include_loop
                            || !(n.starts_with("loop")
                                || n.starts_with("ram")
                                || n.starts_with("zram"))
                    })
                    .collect();
                names.sort();
                names
                    .into_iter()
                    .map(|n| nodeimage_core::files::rooted(root, &format!("/dev/{n}")))
                    .collect()
            }
        }
    }

    /// Every volume whose label equals one of `labels` (ASCII case-insensitively),
    /// in candidate order. Devices that cannot be opened or hold no known filesystem are
    /// skipped (at debug level): a missing medium is "not here", not an error.
    pub fn find_by_label(&self, labels: &[&str]) -> Vec<Volume> {
        self.volumes()
            .into_iter()
            .filter(|v| {
                v.label
                    .as_deref()
                    .is_some_and(|l| labels.iter().any(|w| w.eq_ignore_ascii_case(l)))
            })
            .collect()
    }

    /// Every candidate that holds a filesystem this module can read.
    pub fn volumes(&self) -> Vec<Volume> {
        let mut out = Vec::new();
        for path in self.candidates() {
            match probe(&path) {
                Ok(Some(v)) => {
                    tracing::debug!(device = %path.display(), label = ?v.label, kind = v.fs.kind(), "probed");
                    out.push(v)
                }
                Ok(None) => tracing::trace!(device = %path.display(), "no known filesystem"),
                Err(e) => tracing::debug!(device = %path.display(), error = %e, "cannot probe"),
            }
        }
        out
    }
}

/// Probe one device or image for FAT or ISO9660.
pub fn probe(path: &Path) -> io::Result<Option<Volume>> {
    let file = File::open(path)?;
    let mut boot = [0u8; 512];
    use std::os::unix::fs::FileExt;
    match file.read_exact_at(&mut boot, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if BootSector::parse(&boot).is_ok() {
        let fs = FatVolume::open(file)?;
        return Ok(Some(Volume {
            path: path.to_path_buf(),
            label: fs.label.clone(),
            fs: Box::new(fs),
        }));
    }
    if iso9660::has_iso_signature(&file)? {
        let fs = IsoFs::open(file)?;
        return Ok(Some(Volume {
            path: path.to_path_buf(),
            label: fs.label(),
            fs: Box::new(fs),
        }));
    }
    Ok(None)
}

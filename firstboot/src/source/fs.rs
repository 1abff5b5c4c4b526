//! What the label-based sources read a filesystem through, whatever its kind (FAT in
//! [`super::blockdev`], ISO9660 in [`super::iso9660`]).

use std::io;

/// Read-only access to files on a filesystem that is not mounted.
pub trait FilesystemReader: Send + Sync {
    /// The volume label (FAT: root-directory label or boot-sector label; ISO9660: volume id).
    fn label(&self) -> Option<String>;
    /// The contents of the file at a `/`-separated path, `None` when it does not exist.
    fn read_file(&self, path: &str) -> io::Result<Option<Vec<u8>>>;
    /// A short filesystem type name ("fat16", "iso9660").
    fn kind(&self) -> &'static str;
}

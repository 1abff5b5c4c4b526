//! Small filesystem helpers used everywhere: atomic writes and root-prefixed paths.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Join an absolute node path (`/etc/hostname`) onto a root prefix (`/` on the node,
/// a directory tree in tests).
pub fn rooted(root: &Path, node_path: &str) -> PathBuf {
    root.join(node_path.trim_start_matches('/'))
}

/// [`atomic_write`] unless `path` already holds `data` with `mode` (so that a second
/// run changes nothing, not even a modification time). True when it wrote.
pub fn write_if_changed(path: &Path, data: &[u8], mode: u32) -> std::io::Result<bool> {
    if let (Ok(old), Ok(meta)) = (fs::read(path), fs::metadata(path)) {
        if old == data && meta.permissions().mode() & 0o7777 == mode {
            return Ok(false);
        }
    }
    atomic_write(path, data, mode)?;
    Ok(true)
}

/// Write `data` to `path` atomically: a temporary file in the same directory, fsync,
/// chmod, rename. Parent directories are created (0755). Nothing is left half-written.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile_in(dir, path)?;
    let result = (|| {
        tmp.1.set_permissions(fs::Permissions::from_mode(mode))?;
        tmp.1.write_all(data)?;
        tmp.1.sync_all()?;
        fs::rename(&tmp.0, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp.0);
    }
    result
}

/// Write a secret (key, token, password): mode 0600, atomically.
pub fn write_secret(path: &Path, data: &[u8]) -> std::io::Result<()> {
    atomic_write(path, data, 0o600)
}

fn tempfile_in(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, fs::File)> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for i in 0..1000u32 {
        let p = dir.join(format!(".{name}.tmp.{}.{i}", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_0600()
            .open(&p)
        {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("could not create a temporary file"))
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}
impl Mode0600 for fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/key.pem");
        write_secret(&p, b"secret").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"secret");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let entries: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn rooted_joins() {
        assert_eq!(
            rooted(Path::new("/tmp/r"), "/etc/hostname"),
            PathBuf::from("/tmp/r/etc/hostname")
        );
    }
}

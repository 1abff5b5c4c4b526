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

/// Write `data` to `path` atomically and durably: a temporary file in the same
/// directory, chmod, write, fsync, rename, then fsync of the directory, so that after a
/// power cut `path` holds either the old content or the new one, never a part of it and
/// never neither (a rename lives in the directory, which a file's fsync does not flush).
/// Missing parent directories are created (0755) durably too ([`create_dir_all_durable`]).
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_dir_all_durable(dir)?;
    let mut tmp = tempfile_in(dir, path)?;
    let result = (|| {
        tmp.1.set_permissions(fs::Permissions::from_mode(mode))?;
        tmp.1.write_all(data)?;
        tmp.1.sync_all()?;
        fs::rename(&tmp.0, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp.0);
    }
    result
}

/// fsync a directory: makes the creation, removal and renaming of its entries durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// `create_dir_all`, durably: every directory it creates is fsynced into its parent, so
/// a file later written (and fsynced) inside cannot be lost with its directory.
pub fn create_dir_all_durable(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d);
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p,
            _ => break,
        }
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
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
    fn atomic_write_replaces_and_creates_parents() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("new/dirs/status.json");
        atomic_write(&p, b"one", 0o644).unwrap();
        atomic_write(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        // A relative path in the current directory has "" as its parent.
        create_dir_all_durable(d.path()).unwrap();
    }

    #[test]
    fn atomic_write_into_a_missing_directory_that_cannot_be_made_fails_cleanly() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("file"), b"").unwrap();
        assert!(atomic_write(&d.path().join("file/sub/x"), b"x", 0o644).is_err());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1, "nothing left behind");
    }

    #[test]
    fn rooted_joins() {
        assert_eq!(
            rooted(Path::new("/tmp/r"), "/etc/hostname"),
            PathBuf::from("/tmp/r/etc/hostname")
        );
    }
}

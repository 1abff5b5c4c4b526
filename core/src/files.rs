//! Small filesystem helpers used everywhere: atomic writes and root-prefixed paths.
//!
//! # Paths under a root
//!
//! firstboot works on a root prefix: `/` on the node, a directory tree with `--root DIR`
//! (tests, image inspection). Under a tree, a node path is resolved the way the node's
//! kernel will resolve it, never the way the host's would: [`rooted`] walks the path one
//! component at a time with `lstat`/`readlink` (the semantics of `openat2(2)` with
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`): `..` stops at the root, an absolute
//! symlink (Debian's `var/run -> /run`) restarts at the root, a relative one is resolved
//! against its directory, at most 40 links. The path it returns names a real directory
//! chain inside the root, so whatever the caller then does with it (read, write, create
//! parents, rename over it) stays inside. [`rooted_nofollow`] does the same but keeps
//! the last component as it is, for operations on a directory entry itself (`lstat`,
//! `readlink`, replacing or removing a link). On `/` the kernel's own resolution already
//! is "inside the root", so the path is joined as it is.
//!
//! The walk is path-based: it is exact as long as nothing else changes the tree while
//! firstboot writes it (the tree is the node's own image, not shared with anyone).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution (the kernel's limit, `MAXSYMLINKS`).
const MAX_SYMLINKS: u32 = 40;

/// `ELOOP` on Linux.
const ELOOP: i32 = 40;

/// The node path `node_path` (`/etc/hostname`) under `root`, every symlink on the way
/// (the last component included) resolved inside `root` (see the module docs). Never
/// leaves `root`. Should the resolution fail (a symlink loop), the path returned cannot
/// be opened at all, so nothing is read or written outside `root` either.
pub fn rooted(root: &Path, node_path: &str) -> PathBuf {
    rooted_or_poisoned(root, node_path, true)
}

/// Like [`rooted`], but the last component is not followed when it is a symlink: the
/// path names that directory entry itself (for `lstat`, `readlink`, a rename over it,
/// removing it).
pub fn rooted_nofollow(root: &Path, node_path: &str) -> PathBuf {
    rooted_or_poisoned(root, node_path, false)
}

fn rooted_or_poisoned(root: &Path, node_path: &str, follow_last: bool) -> PathBuf {
    match resolve_in_root(root, node_path, follow_last) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(root = %root.display(), path = node_path, error = %e, "cannot resolve the path inside the root");
            // A NUL byte: every system call refuses this path.
            root.join("\0unresolvable symlinks")
                .join(node_path.trim_start_matches('/'))
        }
    }
}

enum Part {
    Up,
    Name(OsString),
}

fn parts(p: &Path) -> impl Iterator<Item = Part> + '_ {
    p.components().filter_map(|c| match c {
        Component::Normal(n) => Some(Part::Name(n.to_os_string())),
        Component::ParentDir => Some(Part::Up),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// Resolve `node_path` inside `root` (see the module docs); `follow_last` follows a
/// symlink in the last component too. Fails only on a symlink loop (`ELOOP`) or when a
/// link cannot be read.
pub fn resolve_in_root(
    root: &Path,
    node_path: &str,
    follow_last: bool,
) -> std::io::Result<PathBuf> {
    if root == Path::new("/") {
        return Ok(root.join(node_path.trim_start_matches('/')));
    }
    let mut pending: VecDeque<Part> = parts(Path::new(node_path)).collect();
    let mut done = PathBuf::new();
    let mut links = 0u32;
    while let Some(part) = pending.pop_front() {
        let name = match part {
            Part::Up => {
                done.pop();
                continue;
            }
            Part::Name(n) => n,
        };
        if pending.is_empty() && !follow_last {
            done.push(name);
            break;
        }
        let here = root.join(&done).join(&name);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(std::io::Error::from_raw_os_error(ELOOP));
                }
                let target = fs::read_link(&here)?;
                if target.is_absolute() {
                    done = PathBuf::new();
                }
                let mut next: VecDeque<Part> = parts(&target).collect();
                next.extend(pending.drain(..));
                pending = next;
            }
            // A directory, a file, or nothing yet: the rest cannot pass a link here.
            _ => done.push(name),
        }
    }
    Ok(root.join(done))
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
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "nothing left behind"
        );
    }

    #[test]
    fn rooted_joins() {
        assert_eq!(
            rooted(Path::new("/tmp/r"), "/etc/hostname"),
            PathBuf::from("/tmp/r/etc/hostname")
        );
        assert_eq!(rooted(Path::new("/"), "/etc/x"), PathBuf::from("/etc/x"));
    }

    /// Links and `..` in the tree resolve inside the root, as on the node.
    #[test]
    fn links_and_dotdot_stay_inside_the_root() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        fs::create_dir_all(root.join("var")).unwrap();
        fs::create_dir_all(root.join("run")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/run", root.join("var/run")).unwrap();
        symlink(&outside, root.join("etc/abs")).unwrap();
        symlink("../../../../../..", root.join("etc/up")).unwrap();
        symlink("sub/../../etc", root.join("var/rel")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("/loop1", root.join("loop2")).unwrap();
        symlink("/etc/passwd", root.join("etc/last")).unwrap();
        let inside = |p: &str| root.join(p);
        assert_eq!(rooted(&root, "/var/run/x"), inside("run/x"));
        assert_eq!(rooted(&root, "/var/run"), inside("run"));
        assert_eq!(rooted_nofollow(&root, "/var/run"), inside("var/run"));
        assert_eq!(
            rooted(&root, "/etc/abs/x"),
            root.join(outside.strip_prefix("/").unwrap()).join("x")
        );
        assert_eq!(rooted(&root, "/etc/up/outside/x"), inside("outside/x"));
        assert_eq!(rooted(&root, "/../../outside"), inside("outside"));
        assert_eq!(rooted(&root, "/var/rel/y"), inside("etc/y"));
        assert_eq!(rooted(&root, "/etc/last"), inside("etc/passwd"));
        assert_eq!(rooted_nofollow(&root, "/etc/last"), inside("etc/last"));
        assert_eq!(rooted(&root, "/missing/../etc"), inside("etc"));
        // A loop fails; the path `rooted` gives then cannot be opened.
        let e = resolve_in_root(&root, "/loop1/x", true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(ELOOP));
        let poisoned = rooted(&root, "/loop1/x");
        assert!(poisoned.starts_with(&root));
        assert!(atomic_write(&poisoned, b"x", 0o644).is_err());
        assert!(!outside.exists());
    }

    /// Writing through `rooted` never writes outside the root.
    #[test]
    fn atomic_writes_through_links_stay_inside() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink(&outside, root.join("etc/abs")).unwrap();
        symlink(outside.join("file"), root.join("etc/file")).unwrap();
        atomic_write(&rooted(&root, "/etc/abs/new/x"), b"1", 0o644).unwrap();
        atomic_write(&rooted(&root, "/etc/file"), b"2", 0o644).unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        let mirror = root.join(outside.strip_prefix("/").unwrap());
        assert_eq!(fs::read(mirror.join("new/x")).unwrap(), b"1");
        assert_eq!(fs::read(mirror.join("file")).unwrap(), b"2");
    }
}

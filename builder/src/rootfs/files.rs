//! Writing into an image root as root without ever touching the build machine: files
//! installed through links resolved inside the root, overlay trees copied over it, and
//! trees removed only after what is mounted in them is unmounted.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::Install;

/// Put `i.source` at `i.dest` inside `root` without writing outside it, whatever links
/// the image holds (we run as root, and the base's links are absolute: alternatives,
/// `/var/run -> /run`): the parent directories are resolved inside `root` (see
/// [`resolve_in_root`]) and a symlink at the destination is replaced by the file, never
/// written through.
pub(super) fn install_file(root: &Path, i: &Install) -> Result<()> {
    let rel = i.dest.trim_start_matches('/');
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    };
    if name.is_empty() || name == "." || name == ".." {
        bail!("`{}` does not name a file", i.dest);
    }
    let dir = resolve_in_root(root, Path::new(parent))?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dest = dir.join(name);
    match fs::symlink_metadata(&dest) {
        Ok(m) if m.file_type().is_symlink() => fs::remove_file(&dest)
            .with_context(|| format!("replacing the link {}", dest.display()))?,
        Ok(m) if m.is_dir() => bail!("{} is a directory in the image", i.dest),
        _ => {}
    }
    fs::copy(&i.source, &dest)?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(i.mode))?;
    Ok(())
}

/// The host path of `path` (relative to the image root) with every symlink in it
/// followed the way it would be inside the image: an absolute target starts again at
/// `root`, `..` never climbs above it. Components that do not exist yet are kept as
/// they are (the caller creates them as directories).
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    use std::collections::VecDeque;
    use std::path::Component;
    // The names and `..`s of a path (`/` and `.` say nothing inside the root).
    let steps = |p: &Path| -> VecDeque<std::ffi::OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    };
    let mut todo = steps(path);
    let mut done: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            done.pop();
            continue;
        }
        let here: PathBuf = root.join(done.iter().collect::<PathBuf>()).join(&c);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    bail!("too many levels of symbolic links at {}", here.display());
                }
                let target = fs::read_link(&here)?;
                if target.is_absolute() {
                    done.clear();
                }
                let mut next = steps(&target);
                next.extend(todo);
                todo = next;
            }
            Ok(m) if !m.is_dir() => bail!("{} is not a directory", here.display()),
            _ => done.push(c),
        }
    }
    Ok(root.join(done.iter().collect::<PathBuf>()))
}

/// Remove a file or directory tree, first unmounting anything mounted below it (a build
/// killed during the initramfs step leaves /proc, /sys and a bind mount of the host's
/// /dev in its root tree; removing through them would delete the host's device nodes).
/// A missing path is not an error.
pub fn remove_tree(path: &Path) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.is_dir() {
        return fs::remove_file(path).with_context(|| format!("removing {}", path.display()));
    }
    let canon = fs::canonicalize(path)?;
    let mounted = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .map(|m| PathBuf::from(unescape_mount_path(m)))
            .filter(|m| m.starts_with(&canon))
            .collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        v
    };
    for m in mounted() {
        tracing::warn!(mount = %m.display(), "unmounting a leftover mount before removing the tree");
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    if let Some(m) = mounted().first() {
        bail!(
            "{} is still mounted; not removing {}",
            m.display(),
            path.display()
        );
    }
    fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
}

/// `/proc/self/mounts` writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Copy a directory tree over another, preserving modes and symlinks; files end up owned by root.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(src)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let s = e.path();
        let d = dst.join(e.file_name());
        let meta = fs::symlink_metadata(&s)?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&s)?;
            if fs::symlink_metadata(&d).is_ok() {
                if d.is_dir() && !d.is_symlink() {
                    fs::remove_dir_all(&d)?;
                } else {
                    fs::remove_file(&d)?;
                }
            }
            std::os::unix::fs::symlink(&target, &d)?;
        } else if meta.is_dir() {
            if fs::symlink_metadata(&d)
                .map(|m| !m.is_dir())
                .unwrap_or(false)
            {
                fs::remove_file(&d)?;
            }
            fs::create_dir_all(&d)?;
            fs::set_permissions(
                &d,
                fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
            )?;
            copy_tree(&s, &d)?;
        } else {
            if fs::symlink_metadata(&d)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false)
            {
                fs::remove_file(&d)?;
            }
            fs::copy(&s, &d)?;
            fs::set_permissions(
                &d,
                fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
            )?;
            std::os::unix::fs::lchown(&d, Some(0), Some(0)).ok();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_preserves_modes_and_symlinks() {
        let s = tempfile::tempdir().unwrap();
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(s.path().join("etc/x")).unwrap();
        fs::write(s.path().join("etc/x/run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            s.path().join("etc/x/run.sh"),
            fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::os::unix::fs::symlink("/run/foo", s.path().join("etc/link")).unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/link"), "old").unwrap();
        copy_tree(s.path(), d.path()).unwrap();
        assert_eq!(
            fs::metadata(d.path().join("etc/x/run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o750
        );
        assert_eq!(
            fs::read_link(d.path().join("etc/link")).unwrap(),
            PathBuf::from("/run/foo")
        );
    }

    /// Installing as root into an image root must never write through the image's links
    /// onto the build machine: absolute links are resolved inside the root, and a link at
    /// the destination is replaced by the file.

    #[test]
    fn installs_do_not_follow_links_out_of_the_root() {
        let host = tempfile::tempdir().unwrap();
        let victim = host.path().join("victim");
        fs::write(&victim, "host file").unwrap();
        fs::create_dir_all(host.path().join("run")).unwrap();
        let root_dir = tempfile::tempdir().unwrap();
        let root = root_dir.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("var")).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("usr/bin/awk")).unwrap();
        std::os::unix::fs::symlink(host.path().join("run"), root.join("var/run")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        let src = root_dir.path().join("payload");
        fs::write(&src, "payload").unwrap();
        for dest in ["/usr/bin/awk", "/var/run/app/sock", "/bin/tool"] {
            install_file(
                root,
                &Install {
                    source: src.clone(),
                    dest: dest.into(),
                    mode: 0o755,
                },
            )
            .unwrap();
        }
        assert_eq!(fs::read_to_string(&victim).unwrap(), "host file");
        assert_eq!(fs::read_dir(host.path().join("run")).unwrap().count(), 0);
        let awk = root.join("usr/bin/awk");
        assert!(!fs::symlink_metadata(&awk).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(&awk).unwrap(), "payload");
        // `/var/run -> <host>/run` means `<root><host>/run` inside the image.
        let inside = root
            .join(host.path().strip_prefix("/").unwrap())
            .join("run/app/sock");
        assert_eq!(fs::read_to_string(inside).unwrap(), "payload");
        assert_eq!(
            fs::read_to_string(root.join("usr/bin/tool")).unwrap(),
            "payload"
        );
        assert_eq!(
            fs::metadata(root.join("usr/bin/tool"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o755
        );
    }

    #[test]
    fn resolve_in_root_never_climbs_above_the_root() {
        let r = tempfile::tempdir().unwrap();
        let root = r.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("a/b/up")).unwrap();
        std::os::unix::fs::symlink("/a", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("a/b/up/etc")).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("abs/b/new")).unwrap(),
            root.join("a/b/new")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("../../x")).unwrap(),
            root.join("x")
        );
        assert!(resolve_in_root(root, Path::new("loop/x")).is_err());
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn remove_tree_removes_files_dirs_and_missing_paths() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("t/x/y")).unwrap();
        fs::write(d.path().join("t/x/y/f"), "1").unwrap();
        fs::write(d.path().join("f"), "1").unwrap();
        remove_tree(&d.path().join("t")).unwrap();
        remove_tree(&d.path().join("f")).unwrap();
        remove_tree(&d.path().join("missing")).unwrap();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }
}

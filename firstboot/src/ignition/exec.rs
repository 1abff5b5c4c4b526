//! Running a [`Plan`] in two phases, all or nothing (see [`super::apply`]).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::apply::Plan;
use super::plan::{ApplyReport, Ownership, PlannedOp};
use super::IgnitionError;
use nodeimage_core::files::rooted_nofollow;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// One operation being executed.
struct Step {
    full: PathBuf,
    temp: Option<PathBuf>,
    backup: Option<PathBuf>,
    /// Mkdir: the directory was created by this step / its mode before.
    created_dir: bool,
    old_mode: Option<u32>,
    committed: bool,
}

fn side_name(full: &Path, tag: &str, i: usize) -> PathBuf {
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    full.with_file_name(format!(".{name}.{tag}.{}.{i}", std::process::id()))
}

impl Plan {
    /// Run the plan; see the module documentation for the guarantees.
    pub fn execute(self) -> Result<ApplyReport, IgnitionError> {
        let mut report = self.report.clone();
        let chown = is_root();
        let mut created_dirs: Vec<PathBuf> = Vec::new();
        let mut steps: Vec<Step> = Vec::new();
        let temps_of: BTreeMap<String, usize> = BTreeMap::new();
        let mut temps_of = temps_of;

        let fail = |path: &str, error: std::io::Error| IgnitionError::Apply {
            path: path.to_string(),
            error,
        };

        // Phase 1: prepare.
        let prepared: Result<(), IgnitionError> = (|| {
            for (i, op) in self.ops.iter().enumerate() {
                let full = rooted_nofollow(&self.root, op.path());
                if let Some(parent) = full.parent() {
                    create_parents(parent, &mut created_dirs).map_err(|e| fail(op.path(), e))?;
                }
                let mut step = Step {
                    full: full.clone(),
                    temp: None,
                    backup: None,
                    created_dir: false,
                    old_mode: None,
                    committed: false,
                };
                let temp = side_name(&full, "fbtmp", i);
                match op {
                    PlannedOp::Write {
                        data,
                        mode,
                        owner,
                        path,
                    } => {
                        step.temp = Some(temp.clone());
                        steps.push(step);
                        write_temp(&temp, data, *mode).map_err(|e| fail(path, e))?;
                        set_owner(&temp, owner, path, chown, Follow::Yes, &mut report)
                            .map_err(|e| fail(path, e))?;
                        temps_of.insert(path.clone(), i);
                        continue;
                    }
                    PlannedOp::Symlink {
                        target,
                        owner,
                        path,
                    } => {
                        step.temp = Some(temp.clone());
                        steps.push(step);
                        std::os::unix::fs::symlink(target, &temp).map_err(|e| fail(path, e))?;
                        set_owner(&temp, owner, path, chown, Follow::No, &mut report)
                            .map_err(|e| fail(path, e))?;
                        continue;
                    }
                    PlannedOp::HardLink { target, path } => {
                        step.temp = Some(temp.clone());
                        steps.push(step);
                        let src = match temps_of.get(target) {
                            Some(&j) => steps[j].temp.clone().expect("write step has a temp"),
                            None => rooted_nofollow(&self.root, target),
                        };
                        fs::hard_link(&src, &temp).map_err(|e| fail(path, e))?;
                        continue;
                    }
                    PlannedOp::Mkdir { .. } | PlannedOp::Remove { .. } => {}
                }
                steps.push(step);
            }
            Ok(())
        })();
        if let Err(e) = prepared {
            cleanup(&steps, &created_dirs);
            return Err(e);
        }

        // Phase 2: commit.
        let mut failure: Option<IgnitionError> = None;
        for (i, op) in self.ops.iter().enumerate() {
            let r = commit(op, &mut steps[i], i, chown, &mut report);
            if let Err(e) = r {
                failure = Some(fail(op.path(), e));
                break;
            }
        }
        if let Some(e) = failure {
            rollback(&self.ops, &mut steps);
            cleanup(&steps, &created_dirs);
            return Err(e);
        }
        for s in &steps {
            if let Some(b) = &s.backup {
                let _ = match fs::symlink_metadata(b) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(b),
                    _ => fs::remove_file(b),
                };
            }
        }
        for op in &self.ops {
            let p = op.path().to_string();
            match op {
                PlannedOp::Write { .. } => report.written.push(p),
                PlannedOp::Mkdir { .. } => report.directories.push(p),
                PlannedOp::Symlink { .. } | PlannedOp::HardLink { .. } => report.links.push(p),
                PlannedOp::Remove { .. } => report.removed.push(p),
            }
        }
        Ok(report)
    }
}

/// Whether [`set_owner`] changes a symlink itself or what it points to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Follow {
    Yes,
    No,
}

/// Give `file` (node path `path`) the requested owner when running as root (`chown`);
/// otherwise record that it was not applied, unless this process already owns it so.
fn set_owner(
    file: &Path,
    owner: &Option<Ownership>,
    path: &str,
    chown: bool,
    follow: Follow,
    report: &mut ApplyReport,
) -> std::io::Result<()> {
    let Some((u, g)) = *owner else {
        return Ok(());
    };
    if chown {
        match follow {
            Follow::Yes => std::os::unix::fs::chown(file, u, g),
            Follow::No => std::os::unix::fs::lchown(file, u, g),
        }
    } else {
        if !owned_by_us(&(u, g)) {
            report.ownership_skipped.push(path.to_string());
        }
        Ok(())
    }
}

/// Whether an ownership request is already satisfied by files this process creates.
fn owned_by_us(owner: &Ownership) -> bool {
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    owner.0.is_none_or(|u| u == uid) && owner.1.is_none_or(|g| g == gid)
}

fn create_parents(dir: &Path, created: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        match fs::symlink_metadata(d) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push(d.to_path_buf());
                cur = d.parent();
            }
            Err(e) => return Err(e),
        }
    }
    for d in missing.into_iter().rev() {
        fs::create_dir(&d)?;
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
        created.push(d);
    }
    Ok(())
}

fn write_temp(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.sync_all()
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

#[cfg(test)]
thread_local! {
    /// Tests inject a commit failure at this op index to exercise the rollback.
    static FAIL_COMMIT_AT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

fn commit(
    op: &PlannedOp,
    step: &mut Step,
    i: usize,
    chown: bool,
    report: &mut ApplyReport,
) -> std::io::Result<()> {
    #[cfg(test)]
    if FAIL_COMMIT_AT.with(|f| f.get()) == Some(i) {
        return Err(std::io::Error::other("injected failure"));
    }
    match op {
        PlannedOp::Write { .. } | PlannedOp::Symlink { .. } | PlannedOp::HardLink { .. } => {
            if exists(&step.full) {
                let b = side_name(&step.full, "fbbak", i);
                fs::rename(&step.full, &b)?;
                step.backup = Some(b);
            }
            fs::rename(step.temp.as_ref().expect("temp"), &step.full)?;
            step.committed = true;
        }
        PlannedOp::Mkdir { mode, owner, path } => {
            match fs::symlink_metadata(&step.full) {
                Ok(m) if m.is_dir() => step.old_mode = Some(m.mode() & 0o7777),
                Ok(_) => {
                    let b = side_name(&step.full, "fbbak", i);
                    fs::rename(&step.full, &b)?;
                    step.backup = Some(b);
                    fs::create_dir(&step.full)?;
                    step.created_dir = true;
                }
                Err(_) => {
                    fs::create_dir(&step.full)?;
                    step.created_dir = true;
                }
            }
            step.committed = true;
            fs::set_permissions(&step.full, fs::Permissions::from_mode(*mode))?;
            set_owner(&step.full, owner, path, chown, Follow::Yes, report)?;
        }
        PlannedOp::Remove { .. } => {
            if exists(&step.full) {
                let b = side_name(&step.full, "fbbak", i);
                fs::rename(&step.full, &b)?;
                step.backup = Some(b);
            }
            step.committed = true;
        }
    }
    Ok(())
}

fn rollback(ops: &[PlannedOp], steps: &mut [Step]) {
    for (op, s) in ops.iter().zip(steps.iter_mut()).rev() {
        if !s.committed {
            continue;
        }
        match op {
            PlannedOp::Write { .. } | PlannedOp::Symlink { .. } | PlannedOp::HardLink { .. } => {
                let _ = fs::remove_file(&s.full);
            }
            PlannedOp::Mkdir { .. } => {
                if s.created_dir {
                    let _ = fs::remove_dir(&s.full);
                } else if let Some(m) = s.old_mode {
                    let _ = fs::set_permissions(&s.full, fs::Permissions::from_mode(m));
                }
            }
            PlannedOp::Remove { .. } => {}
        }
        if let Some(b) = s.backup.take() {
            let _ = fs::rename(&b, &s.full);
        }
        s.committed = false;
    }
}

fn cleanup(steps: &[Step], created_dirs: &[PathBuf]) {
    for s in steps {
        if let Some(t) = &s.temp {
            if !s.committed {
                let _ = fs::remove_file(t);
            }
        }
    }
    for d in created_dirs.iter().rev() {
        let _ = fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(root: &Path) -> Vec<(String, Vec<u8>, u32)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let m = fs::symlink_metadata(e.path()).unwrap();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                if m.is_dir() {
                    stack.push(e.path());
                    out.push((rel, Vec::new(), m.mode()));
                } else {
                    out.push((rel, fs::read(e.path()).unwrap_or_default(), m.mode()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_failed_commit_rolls_everything_back() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("etc/keep")).unwrap();
        fs::write(root.join("etc/a"), "old a").unwrap();
        fs::write(root.join("etc/gone.link.target"), "t").unwrap();
        std::os::unix::fs::symlink("/etc/gone.link.target", root.join("etc/l")).unwrap();
        let before = snapshot(root);
        let ops = vec![
            PlannedOp::Mkdir {
                path: "/new".into(),
                mode: 0o700,
                owner: None,
            },
            PlannedOp::Mkdir {
                path: "/etc/keep".into(),
                mode: 0o700,
                owner: None,
            },
            PlannedOp::Write {
                path: "/etc/a".into(),
                data: b"new a".to_vec(),
                mode: 0o600,
                owner: None,
            },
            PlannedOp::Write {
                path: "/new/deep/b".into(),
                data: b"b".to_vec(),
                mode: 0o644,
                owner: None,
            },
            PlannedOp::Symlink {
                path: "/etc/l".into(),
                target: "/elsewhere".into(),
                owner: None,
            },
            PlannedOp::Remove {
                path: "/etc/gone.link.target".into(),
            },
            PlannedOp::HardLink {
                path: "/etc/hard".into(),
                target: "/new/deep/b".into(),
            },
            PlannedOp::Write {
                path: "/etc/last".into(),
                data: b"x".to_vec(),
                mode: 0o644,
                owner: None,
            },
        ];
        for fail_at in 0..ops.len() {
            let plan = Plan {
                root: root.to_path_buf(),
                ops: ops.clone(),
                report: ApplyReport::default(),
            };
            FAIL_COMMIT_AT.with(|f| f.set(Some(fail_at)));
            let e = plan.execute().unwrap_err();
            FAIL_COMMIT_AT.with(|f| f.set(None));
            assert!(
                e.to_string().contains("injected failure") && e.to_string().contains("rolled back"),
                "{e}"
            );
            assert_eq!(snapshot(root), before, "fail at {fail_at}");
        }
        // Without a failure everything lands, and the hard link shares the new file.
        let plan = Plan {
            root: root.to_path_buf(),
            ops,
            report: ApplyReport::default(),
        };
        let r = plan.execute().unwrap();
        assert_eq!(fs::read(root.join("etc/a")).unwrap(), b"new a");
        assert_eq!(
            fs::metadata(root.join("etc/hard")).unwrap().ino(),
            fs::metadata(root.join("new/deep/b")).unwrap().ino()
        );
        assert_eq!(
            fs::read_link(root.join("etc/l")).unwrap(),
            Path::new("/elsewhere")
        );
        assert!(!root.join("etc/gone.link.target").exists());
        assert_eq!(
            fs::metadata(root.join("new")).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(r.removed, ["/etc/gone.link.target"]);
        let names: Vec<String> = snapshot(root)
            .into_iter()
            .map(|e| e.0)
            .filter(|n| n.contains("fbtmp") || n.contains("fbbak"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn a_failed_prepare_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/file"), "f").unwrap();
        let before = snapshot(root);
        let ops = vec![
            PlannedOp::Write {
                path: "/var/lib/x/y".into(),
                data: b"y".to_vec(),
                mode: 0o644,
                owner: None,
            },
            // The parent is a regular file: ENOTDIR while preparing.
            PlannedOp::Write {
                path: "/etc/file/z".into(),
                data: b"z".to_vec(),
                mode: 0o644,
                owner: None,
            },
        ];
        let e = Plan {
            root: root.to_path_buf(),
            ops,
            report: ApplyReport::default(),
        }
        .execute()
        .unwrap_err();
        assert!(e.to_string().contains("/etc/file/z"), "{e}");
        assert_eq!(snapshot(root), before);
    }
}

//! Applying a staged Ignition config under a root prefix, all or nothing.
//!
//! [`plan`] compares the staged config with the tree and produces the complete list of
//! operations in memory; any conflict (a file exists and `overwrite` is false, an unknown
//! owner, a unit that cannot be enabled) fails here, before anything is written.
//! [`Plan::execute`] then works in two phases:
//!
//! 1. prepare: every file, symlink and hard link is created under a temporary name in its
//!    target directory (missing parent directories are created and remembered);
//! 2. commit: each temporary is renamed over its target, an existing target first being
//!    renamed to a backup name; directories are created or re-moded; removals are renames
//!    to a backup.
//!
//! If anything fails, the committed operations are undone in reverse order (backups
//! renamed back), the temporaries and the directories created are removed. On success the
//! backups are deleted. Ownership is changed only when running as root (the node);
//! otherwise the report lists the paths whose ownership was not applied.
//!
//! The pieces: [`super::plan`] (operations and the planner's helpers),
//! [`super::accounts`] (users and groups), [`super::units`] (systemd units), this module
//! (storage, and [`plan`] putting them together), [`super::exec`] (the two phases).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::accounts::{self, Accounts};
use super::plan::{conflict, io_conflict, ApplyReport, PlannedOp, Planner};
use super::units;
use super::{IgnitionError, StagedIgnition};

/// The complete, validated set of writes for one tree.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(super) root: PathBuf,
    pub(super) ops: Vec<PlannedOp>,
    pub(super) report: ApplyReport,
}

impl Plan {
    pub fn ops(&self) -> &[PlannedOp] {
        &self.ops
    }
}

/// Compute the operations that bring the tree under `root` to the staged config.
pub(crate) fn plan(st: &StagedIgnition, root: &Path) -> Result<Plan, IgnitionError> {
    let mut accounts = Accounts::load(root).map_err(|e| io_conflict("/etc/passwd", e))?;
    let mut p = Planner::new(root);
    accounts::plan_accounts(st, &mut p, &mut accounts)?;
    plan_storage(st, &mut p, &accounts)?;
    units::plan_units(st, &mut p)?;
    no_writes_through_replaced_entries(&p.ops)?;
    // Directories first (parents before children), then everything else in config order.
    let mut ops = std::mem::take(&mut p.ops);
    ops.sort_by_key(|o| match o {
        PlannedOp::Mkdir { path, .. } => (0, path.matches('/').count()),
        PlannedOp::HardLink { .. } => (2, 0),
        _ => (1, 0),
    });
    Ok(Plan {
        root: root.to_path_buf(),
        ops,
        report: p.report,
    })
}

/// Every op's parent directories are resolved before anything is written; a path
/// below an entry this config replaces (a link, a file, a removal) would instead be
/// written through whatever that entry becomes. Refused: a config writes into a
/// directory, never through its own links.
fn no_writes_through_replaced_entries(ops: &[PlannedOp]) -> Result<(), IgnitionError> {
    let paths: BTreeSet<&str> = ops.iter().map(PlannedOp::path).collect();
    for op in ops {
        if matches!(op, PlannedOp::Mkdir { .. }) {
            continue;
        }
        let prefix = format!("{}/", op.path());
        if let Some(below) = paths
            .range(prefix.as_str()..)
            .next()
            .filter(|p| p.starts_with(&prefix))
        {
            return Err(conflict(
                below,
                format!(
                    "is below {}, which this config replaces with a link or a file",
                    op.path()
                ),
            ));
        }
    }
    Ok(())
}

fn plan_storage(
    st: &StagedIgnition,
    p: &mut Planner,
    accounts: &Accounts,
) -> Result<(), IgnitionError> {
    for d in &st.directories {
        let owner = accounts.ownership(&d.user, &d.group, &d.path)?;
        match p.meta(&d.path)? {
            Some(m) if !m.is_dir() && !d.overwrite => {
                return Err(conflict(
                    &d.path,
                    "exists, is not a directory, and overwrite is false",
                ))
            }
            Some(m) if m.is_dir() => {
                p.mkdir(&d.path, d.mode.unwrap_or(m.mode() & 0o7777), owner)?
            }
            _ => p.mkdir(&d.path, d.mode.unwrap_or(0o755), owner)?,
        }
    }
    for f in &st.files {
        let owner = accounts.ownership(&f.user, &f.group, &f.path)?;
        let existing = p.meta(&f.path)?;
        let data = match (&f.contents, &existing) {
            (Some(c), Some(m)) if !f.overwrite => {
                // Re-running is fine: the same contents are not a conflict.
                let mut want = c.clone();
                f.append.iter().for_each(|a| want.extend_from_slice(a));
                if !(m.is_file() && p.read(&f.path)? == want) {
                    return Err(conflict(&f.path, "exists and overwrite is false"));
                }
                want
            }
            (Some(c), _) => {
                let mut want = c.clone();
                f.append.iter().for_each(|a| want.extend_from_slice(a));
                want
            }
            (None, Some(m)) if m.is_file() => {
                let mut have = p.read(&f.path)?;
                f.append.iter().for_each(|a| have.extend_from_slice(a));
                have
            }
            (None, Some(_)) => return Err(conflict(&f.path, "exists and is not a regular file")),
            (None, None) => f.append.concat(),
        };
        let mode = f.mode.unwrap_or_else(|| {
            existing
                .as_ref()
                .filter(|m| m.is_file())
                .map(|m| m.mode() & 0o7777)
                .unwrap_or(0o644)
        });
        p.write(&f.path, data, mode, owner)?;
    }
    let written: BTreeSet<String> = p
        .ops
        .iter()
        .filter(|o| matches!(o, PlannedOp::Write { .. }))
        .map(|o| o.path().to_string())
        .collect();
    for l in &st.links {
        let owner = accounts.ownership(&l.user, &l.group, &l.path)?;
        if l.hard {
            let target_meta = p.meta(&l.target)?;
            if !written.contains(&l.target) && !target_meta.as_ref().is_some_and(|m| m.is_file()) {
                return Err(conflict(
                    &l.path,
                    format!("hard link target {} does not exist", l.target),
                ));
            }
            match p.meta(&l.path)? {
                Some(m)
                    if !written.contains(&l.target)
                        && target_meta
                            .as_ref()
                            .is_some_and(|t| t.ino() == m.ino() && t.dev() == m.dev()) =>
                {
                    p.report.unchanged.push(l.path.clone())
                }
                Some(_) if !l.overwrite => {
                    return Err(conflict(&l.path, "exists and overwrite is false"))
                }
                _ => p.push(PlannedOp::HardLink {
                    path: l.path.clone(),
                    target: l.target.clone(),
                })?,
            }
        } else {
            p.symlink(&l.path, &l.target, l.overwrite)?;
            if let (Some(PlannedOp::Symlink { owner: o, .. }), Some(own)) =
                (p.ops.last_mut(), owner)
            {
                *o = Some(own);
            }
        }
    }
    Ok(())
}

//! The planner's vocabulary: the operations a [`super::apply::Plan`] is made of, what an
//! apply reports, and [`Planner`], which compares each wanted node (file, directory,
//! link) with the tree and records an operation only where they differ.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::IgnitionError;
use nodeimage_core::files::rooted_nofollow;

/// `(uid, gid)` to set; `None` leaves that id as created.
pub(crate) type Ownership = (Option<u32>, Option<u32>);

/// One write in a [`super::apply::Plan`]; paths are node paths (`/etc/foo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedOp {
    Write {
        path: String,
        data: Vec<u8>,
        mode: u32,
        owner: Option<Ownership>,
    },
    Mkdir {
        path: String,
        mode: u32,
        owner: Option<Ownership>,
    },
    Symlink {
        path: String,
        target: String,
        owner: Option<Ownership>,
    },
    HardLink {
        path: String,
        target: String,
    },
    Remove {
        path: String,
    },
}

impl PlannedOp {
    pub fn path(&self) -> &str {
        match self {
            PlannedOp::Write { path, .. }
            | PlannedOp::Mkdir { path, .. }
            | PlannedOp::Symlink { path, .. }
            | PlannedOp::HardLink { path, .. }
            | PlannedOp::Remove { path } => path,
        }
    }
}

/// What an apply did (node paths and names).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplyReport {
    pub written: Vec<String>,
    pub directories: Vec<String>,
    pub links: Vec<String>,
    pub removed: Vec<String>,
    /// Already as the config wants them.
    pub unchanged: Vec<String>,
    pub units_enabled: Vec<String>,
    pub units_disabled: Vec<String>,
    pub units_masked: Vec<String>,
    pub units_unmasked: Vec<String>,
    pub users_created: Vec<String>,
    pub users_updated: Vec<String>,
    /// Users and groups not created because the tree has no `/etc/passwd` / `/etc/group`.
    pub users_recorded: Vec<String>,
    pub groups_created: Vec<String>,
    pub groups_recorded: Vec<String>,
    /// Paths whose requested ownership was not applied (not running as root).
    pub ownership_skipped: Vec<String>,
}

pub(super) fn conflict(path: &str, message: impl Into<String>) -> IgnitionError {
    IgnitionError::Conflict {
        path: path.into(),
        message: message.into(),
    }
}

pub(super) fn io_conflict(path: &str, e: std::io::Error) -> IgnitionError {
    conflict(path, format!("reading the tree: {e}"))
}

/// Compares what the config wants with the tree and collects the operations that
/// differ. Paths are node paths, resolved inside the root without following their last
/// component (an op acts on the directory entry itself); the tree is read, never
/// written.
pub(super) struct Planner<'a> {
    pub root: &'a Path,
    pub ops: Vec<PlannedOp>,
    pub report: ApplyReport,
    /// Node paths already claimed by an op.
    pub claimed: BTreeMap<String, usize>,
}

impl<'a> Planner<'a> {
    pub fn new(root: &'a Path) -> Self {
        Planner {
            root,
            ops: Vec::new(),
            report: ApplyReport::default(),
            claimed: BTreeMap::new(),
        }
    }

    pub fn push(&mut self, op: PlannedOp) -> Result<(), IgnitionError> {
        let p = op.path().to_string();
        if let Some(&i) = self.claimed.get(&p) {
            if self.ops[i] == op {
                return Ok(());
            }
            return Err(conflict(
                &p,
                "written twice by this config (e.g. a storage entry and a systemd unit)",
            ));
        }
        self.claimed.insert(p, self.ops.len());
        self.ops.push(op);
        Ok(())
    }

    pub fn meta(&self, node_path: &str) -> Result<Option<fs::Metadata>, IgnitionError> {
        match fs::symlink_metadata(rooted_nofollow(self.root, node_path)) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_conflict(node_path, e)),
        }
    }

    /// The contents of a regular file (a symlink there is an error, never followed).
    pub fn read(&self, node_path: &str) -> Result<Vec<u8>, IgnitionError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut data = Vec::new();
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(rooted_nofollow(self.root, node_path))
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| io_conflict(node_path, e))?;
        Ok(data)
    }

    pub fn read_link(&self, node_path: &str) -> Option<String> {
        fs::read_link(rooted_nofollow(self.root, node_path))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    pub fn owner_matches(m: &fs::Metadata, owner: &Option<Ownership>) -> bool {
        match owner {
            None => true,
            Some((u, g)) => u.is_none_or(|u| u == m.uid()) && g.is_none_or(|g| g == m.gid()),
        }
    }

    /// Write `data` unless the file already holds it with that mode and owner.
    pub fn write(
        &mut self,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        owner: Option<Ownership>,
    ) -> Result<(), IgnitionError> {
        if let Some(m) = self.meta(path)? {
            if m.file_type().is_file()
                && m.mode() & 0o7777 == mode
                && Self::owner_matches(&m, &owner)
                && self.read(path)? == data
            {
                self.report.unchanged.push(path.into());
                return Ok(());
            }
        }
        self.push(PlannedOp::Write {
            path: path.into(),
            data,
            mode,
            owner,
        })
    }

    pub fn symlink(
        &mut self,
        path: &str,
        target: &str,
        replace: bool,
    ) -> Result<(), IgnitionError> {
        match self.meta(path)? {
            Some(m)
                if m.file_type().is_symlink()
                    && self.read_link(path).as_deref() == Some(target) =>
            {
                self.report.unchanged.push(path.into());
                Ok(())
            }
            Some(_) if !replace => Err(conflict(path, "exists and overwrite is false")),
            _ => self.push(PlannedOp::Symlink {
                path: path.into(),
                target: target.into(),
                owner: None,
            }),
        }
    }

    pub fn mkdir(
        &mut self,
        path: &str,
        mode: u32,
        owner: Option<Ownership>,
    ) -> Result<(), IgnitionError> {
        if let Some(m) = self.meta(path)? {
            if m.is_dir() && m.mode() & 0o7777 == mode && Self::owner_matches(&m, &owner) {
                self.report.unchanged.push(path.into());
                return Ok(());
            }
        }
        self.push(PlannedOp::Mkdir {
            path: path.into(),
            mode,
            owner,
        })
    }
}

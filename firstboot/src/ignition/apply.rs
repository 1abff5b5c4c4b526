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
//! Accounts: groups and users are created by rewriting `<root>/etc/passwd`, `group`,
//! `shadow`, `gshadow` (only those present in the tree; lines firstboot does not touch
//! are kept verbatim, modes and owners preserved). New users get the lowest free uid from
//! 1000 (system users the highest free below 1000), a user group of the same name and id
//! (unless `noUserGroup`/`primaryGroup`), `/home/<name>` (0700, unless `noCreateHome`),
//! shell `/bin/bash`, a locked password unless `passwordHash`. `/etc/skel` is not copied.
//! For an existing user, `passwordHash`, supplementary `groups` and keys are applied;
//! asking to change its uid, home, shell, gecos or primary group is refused. Without
//! `/etc/passwd` in the tree users and groups are only recorded in the report.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::accounts::{days_since_epoch, Accounts};
use super::{IgnitionError, Owner, StagedIgnition};
use nodeimage_core::files::rooted;

const UNIT_DIR: &str = "/etc/systemd/system";
const UNIT_SEARCH: [&str; 3] = [
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// `(uid, gid)` to set; `None` leaves that id as created.
type Ownership = (Option<u32>, Option<u32>);

/// One write in a [`Plan`]; paths are node paths (`/etc/foo`).
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

/// The complete, validated set of writes for one tree.
#[derive(Debug, Clone)]
pub struct Plan {
    root: PathBuf,
    ops: Vec<PlannedOp>,
    report: ApplyReport,
}

fn conflict(path: &str, message: impl Into<String>) -> IgnitionError {
    IgnitionError::Conflict {
        path: path.into(),
        message: message.into(),
    }
}

fn io_conflict(path: &str, e: std::io::Error) -> IgnitionError {
    conflict(path, format!("reading the tree: {e}"))
}

struct Planner<'a> {
    root: &'a Path,
    ops: Vec<PlannedOp>,
    report: ApplyReport,
    accounts: Accounts,
    /// Node paths already claimed by an op.
    claimed: BTreeMap<String, usize>,
}

impl Planner<'_> {
    fn push(&mut self, op: PlannedOp) -> Result<(), IgnitionError> {
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

    fn meta(&self, node_path: &str) -> Result<Option<fs::Metadata>, IgnitionError> {
        match fs::symlink_metadata(rooted(self.root, node_path)) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_conflict(node_path, e)),
        }
    }

    fn read(&self, node_path: &str) -> Result<Vec<u8>, IgnitionError> {
        fs::read(rooted(self.root, node_path)).map_err(|e| io_conflict(node_path, e))
    }

    fn read_link(&self, node_path: &str) -> Option<String> {
        fs::read_link(rooted(self.root, node_path))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    fn resolve_user(&self, o: &Option<Owner>, what: &str) -> Result<Option<u32>, IgnitionError> {
        match o {
            None => Ok(None),
            Some(Owner::Id(i)) => Ok(Some(*i)),
            Some(Owner::Name(n)) => self.accounts.uid_of(n).map(Some).ok_or_else(|| {
                conflict(
                    what,
                    format!("unknown user `{n}` (not in /etc/passwd of the tree)"),
                )
            }),
        }
    }

    fn resolve_group(&self, o: &Option<Owner>, what: &str) -> Result<Option<u32>, IgnitionError> {
        match o {
            None => Ok(None),
            Some(Owner::Id(i)) => Ok(Some(*i)),
            Some(Owner::Name(n)) => self.accounts.gid_of(n).map(Some).ok_or_else(|| {
                conflict(
                    what,
                    format!("unknown group `{n}` (not in /etc/group of the tree)"),
                )
            }),
        }
    }

    fn ownership(
        &self,
        user: &Option<Owner>,
        group: &Option<Owner>,
        what: &str,
    ) -> Result<Option<Ownership>, IgnitionError> {
        let u = self.resolve_user(user, what)?;
        let g = self.resolve_group(group, what)?;
        Ok((u.is_some() || g.is_some()).then_some((u, g)))
    }

    fn owner_matches(m: &fs::Metadata, owner: &Option<Ownership>) -> bool {
        match owner {
            None => true,
            Some((u, g)) => u.is_none_or(|u| u == m.uid()) && g.is_none_or(|g| g == m.gid()),
        }
    }

    /// Write `data` unless the file already holds it with that mode and owner.
    fn write(
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

    fn symlink(&mut self, path: &str, target: &str, replace: bool) -> Result<(), IgnitionError> {
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

    fn mkdir(
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

/// Compute the operations that bring the tree under `root` to the staged config.
pub(crate) fn plan(st: &StagedIgnition, root: &Path) -> Result<Plan, IgnitionError> {
    let accounts = Accounts::load(root).map_err(|e| io_conflict("/etc/passwd", e))?;
    let mut p = Planner {
        root,
        ops: Vec::new(),
        report: ApplyReport::default(),
        accounts,
        claimed: BTreeMap::new(),
    };
    plan_accounts(st, &mut p)?;
    plan_storage(st, &mut p)?;
    plan_units(st, &mut p)?;
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

fn plan_accounts(st: &StagedIgnition, p: &mut Planner) -> Result<(), IgnitionError> {
    let sn = &st.source_name;
    let mut new_ids: Vec<u32> = Vec::new();
    for g in &st.groups {
        let what = format!("passwd.groups[{}]", g.name);
        let Some(table) = p.accounts.group.as_ref() else {
            p.report.groups_recorded.push(g.name.clone());
            continue;
        };
        if let Some(line) = table.find(&g.name) {
            if let Some(gid) = g.gid {
                if line.get(2).map(String::as_str) != Some(gid.to_string().as_str()) {
                    return Err(conflict(
                        &what,
                        format!("group exists with another gid than {gid}"),
                    ));
                }
            }
        } else {
            let gid = match g.gid {
                Some(id) => {
                    let id = u32::try_from(id)
                        .map_err(|_| super::invalid(sn, format!("{what}.gid"), "bad gid"))?;
                    if table.ids(2).contains(&id) {
                        return Err(conflict(&what, format!("gid {id} is taken")));
                    }
                    id
                }
                None => p
                    .accounts
                    .free_id(g.system == Some(true), &new_ids)
                    .ok_or_else(|| conflict(&what, "no free gid"))?,
            };
            new_ids.push(gid);
            p.accounts.group.as_mut().unwrap().lines.push(vec![
                g.name.clone(),
                "x".into(),
                gid.to_string(),
                String::new(),
            ]);
            p.report.groups_created.push(g.name.clone());
        }
        if let Some(gs) = p.accounts.gshadow.as_mut() {
            let hash = g.password_hash.clone();
            match gs.find_mut(&g.name) {
                Some(line) => {
                    if let Some(h) = hash {
                        line.resize(line.len().max(4), String::new());
                        line[1] = h;
                    }
                }
                None => gs.lines.push(vec![
                    g.name.clone(),
                    hash.unwrap_or_else(|| "!".into()),
                    String::new(),
                    String::new(),
                ]),
            }
        }
    }

    for u in &st.users {
        let what = format!("passwd.users[{}]", u.name);
        let exists = p
            .accounts
            .passwd
            .as_ref()
            .and_then(|t| t.find(&u.name))
            .cloned();
        match (&exists, p.accounts.passwd.is_some()) {
            (_, false) => p.report.users_recorded.push(u.name.clone()),
            (Some(line), true) => {
                let field = |i: usize| line.get(i).cloned().unwrap_or_default();
                for (name, want, col) in [
                    ("uid", u.uid.map(|v| v.to_string()), 2),
                    ("homeDir", u.home_dir.clone(), 5),
                    ("shell", u.shell.clone(), 6),
                    ("gecos", u.gecos.clone(), 4),
                ] {
                    if let Some(w) = want {
                        if w != field(col) {
                            return Err(conflict(&what, format!("changing {name} of an existing user is not supported (is `{}`)", field(col))));
                        }
                    }
                }
                if let Some(pg) = &u.primary_group {
                    if p.accounts.gid_of(pg).map(|g| g.to_string()) != Some(field(3)) {
                        return Err(conflict(
                            &what,
                            "changing the primary group of an existing user is not supported",
                        ));
                    }
                }
                let mut updated = false;
                if let Some(h) = &u.password_hash {
                    let sh = p.accounts.shadow.as_mut().ok_or_else(|| {
                        conflict(&what, "passwordHash needs /etc/shadow in the tree")
                    })?;
                    let l = sh
                        .find_mut(&u.name)
                        .ok_or_else(|| conflict(&what, "user has no /etc/shadow entry"))?;
                    if l[1] != *h {
                        l[1] = h.clone();
                        updated = true;
                    }
                }
                updated |=
                    add_to_groups(p, &u.name, u.groups.as_deref().unwrap_or_default(), &what)?;
                if updated {
                    p.report.users_updated.push(u.name.clone());
                }
            }
            (None, true) => {
                let system = u.system == Some(true);
                let uid = match u.uid {
                    Some(id) => {
                        let id = u32::try_from(id)
                            .map_err(|_| super::invalid(sn, format!("{what}.uid"), "bad uid"))?;
                        if p.accounts.passwd.as_ref().unwrap().ids(2).contains(&id) {
                            return Err(conflict(&what, format!("uid {id} is taken")));
                        }
                        id
                    }
                    None => p
                        .accounts
                        .free_id(system, &new_ids)
                        .ok_or_else(|| conflict(&what, "no free uid"))?,
                };
                new_ids.push(uid);
                let gid = if let Some(pg) = &u.primary_group {
                    p.accounts.gid_of(pg).ok_or_else(|| {
                        conflict(&what, format!("primary group `{pg}` does not exist"))
                    })?
                } else if u.no_user_group == Some(true) {
                    p.accounts.gid_of("users").unwrap_or(100)
                } else {
                    let taken = p
                        .accounts
                        .group
                        .as_ref()
                        .map(|t| t.ids(2))
                        .unwrap_or_default();
                    let gid = if taken.contains(&uid) {
                        p.accounts
                            .free_id(system, &new_ids)
                            .ok_or_else(|| conflict(&what, "no free gid"))?
                    } else {
                        uid
                    };
                    new_ids.push(gid);
                    if let Some(gt) = p.accounts.group.as_mut() {
                        if gt.find(&u.name).is_some() {
                            return Err(conflict(
                                &what,
                                "a group of that name exists; set primaryGroup or noUserGroup",
                            ));
                        }
                        gt.lines.push(vec![
                            u.name.clone(),
                            "x".into(),
                            gid.to_string(),
                            String::new(),
                        ]);
                    }
                    if let Some(gs) = p.accounts.gshadow.as_mut() {
                        gs.lines.push(vec![
                            u.name.clone(),
                            "!".into(),
                            String::new(),
                            String::new(),
                        ]);
                    }
                    gid
                };
                let home = u.home_dir.clone().unwrap_or_else(|| default_home(&u.name));
                p.accounts.passwd.as_mut().unwrap().lines.push(vec![
                    u.name.clone(),
                    "x".into(),
                    uid.to_string(),
                    gid.to_string(),
                    u.gecos.clone().unwrap_or_default(),
                    home.clone(),
                    u.shell.clone().unwrap_or_else(|| "/bin/bash".into()),
                ]);
                if let Some(sh) = p.accounts.shadow.as_mut() {
                    let hash = u.password_hash.clone().unwrap_or_else(|| "!".into());
                    sh.lines.push(
                        [
                            u.name.as_str(),
                            &hash,
                            &days_since_epoch().to_string(),
                            "0",
                            "99999",
                            "7",
                            "",
                            "",
                            "",
                        ]
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                    );
                } else if u.password_hash.is_some() {
                    return Err(conflict(
                        &what,
                        "passwordHash needs /etc/shadow in the tree",
                    ));
                }
                add_to_groups(p, &u.name, u.groups.as_deref().unwrap_or_default(), &what)?;
                if u.no_create_home != Some(true) {
                    p.mkdir(&home, 0o700, Some((Some(uid), Some(gid))))?;
                }
                p.report.users_created.push(u.name.clone());
            }
        }
        if p.report.users_recorded.contains(&u.name) && nonempty_groups(u) {
            p.report
                .groups_recorded
                .extend(u.groups.iter().flatten().map(|g| format!("{}:{g}", u.name)));
        }
        // Keys.
        let keys: Vec<&str> = u
            .ssh_authorized_keys
            .iter()
            .flatten()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .collect();
        if !keys.is_empty() {
            let home = p
                .accounts
                .home_of(&u.name)
                .or_else(|| u.home_dir.clone())
                .unwrap_or_else(|| default_home(&u.name));
            let owner = p
                .accounts
                .uid_of(&u.name)
                .map(|uid| (Some(uid), p.accounts.gid_of_user(&u.name)));
            let ssh = format!("{}/.ssh", home.trim_end_matches('/'));
            let file = format!("{ssh}/authorized_keys");
            let existing = match p.meta(&file)? {
                Some(m) if m.is_file() => String::from_utf8_lossy(&p.read(&file)?).into_owned(),
                Some(_) => return Err(conflict(&file, "exists and is not a file")),
                None => String::new(),
            };
            let mut text = existing.clone();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            for k in keys {
                if !existing.lines().any(|l| l.trim() == k) && !text.lines().any(|l| l.trim() == k)
                {
                    text.push_str(k);
                    text.push('\n');
                }
            }
            if p.meta(&home)?.is_none() && !p.claimed.contains_key(&home) {
                p.mkdir(&home, 0o700, owner)?;
            }
            p.mkdir(&ssh, 0o700, owner)?;
            p.write(&file, text.into_bytes(), 0o600, owner)?;
        }
    }
    let changed: Vec<PlannedOp> = p
        .accounts
        .changed()
        .iter()
        .map(|t| PlannedOp::Write {
            path: t.node_path.to_string(),
            data: t.render().into_bytes(),
            mode: t.mode,
            owner: Some((Some(t.owner.0), Some(t.owner.1))),
        })
        .collect();
    for op in changed {
        p.push(op)?;
    }
    Ok(())
}

fn nonempty_groups(u: &ignition_config::v3_6::User) -> bool {
    u.groups.as_ref().is_some_and(|g| !g.is_empty())
}

fn default_home(name: &str) -> String {
    if name == "root" {
        "/root".into()
    } else {
        format!("/home/{name}")
    }
}

/// Add `user` to the member lists of `groups` (group and gshadow). Returns whether
/// anything changed.
fn add_to_groups(
    p: &mut Planner,
    user: &str,
    groups: &[String],
    what: &str,
) -> Result<bool, IgnitionError> {
    let mut changed = false;
    for g in groups {
        let Some(table) = p.accounts.group.as_mut() else {
            continue;
        };
        let line = table
            .find_mut(g)
            .ok_or_else(|| conflict(what, format!("group `{g}` does not exist")))?;
        line.resize(line.len().max(4), String::new());
        let mut members: Vec<String> = line[3]
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if !members.iter().any(|m| m == user) {
            members.push(user.to_string());
            line[3] = members.join(",");
            changed = true;
            if let Some(gs) = p.accounts.gshadow.as_mut() {
                if let Some(l) = gs.find_mut(g) {
                    l.resize(l.len().max(4), String::new());
                    let mut m: Vec<String> = l[3]
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                    m.push(user.to_string());
                    l[3] = m.join(",");
                }
            }
        }
    }
    Ok(changed)
}

fn plan_storage(st: &StagedIgnition, p: &mut Planner) -> Result<(), IgnitionError> {
    for d in &st.directories {
        let owner = p.ownership(&d.user, &d.group, &d.path)?;
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
        let owner = p.ownership(&f.user, &f.group, &f.path)?;
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
        let owner = p.ownership(&l.user, &l.group, &l.path)?;
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

/// `[Install]` directives of a unit file.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Install {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    pub alias: Vec<String>,
    pub default_instance: Option<String>,
}

pub(crate) fn parse_install(unit: &str) -> Install {
    let mut inst = Install::default();
    let mut in_install = false;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let values = v.split_whitespace().map(str::to_string);
        match k.trim() {
            "WantedBy" => inst.wanted_by.extend(values),
            "RequiredBy" => inst.required_by.extend(values),
            "Alias" => inst.alias.extend(values),
            "DefaultInstance" => inst.default_instance = Some(v.trim().to_string()),
            _ => {}
        }
    }
    inst
}

fn plan_units(st: &StagedIgnition, p: &mut Planner) -> Result<(), IgnitionError> {
    for u in &st.units {
        let unit_path = format!("{UNIT_DIR}/{}", u.name);
        if let Some(c) = &u.contents {
            p.write(&unit_path, c.clone().into_bytes(), 0o644, None)?;
        }
        for (name, contents) in &u.dropins {
            p.write(
                &format!("{UNIT_DIR}/{}.d/{name}", u.name),
                contents.clone().into_bytes(),
                0o644,
                None,
            )?;
        }
        match u.mask {
            Some(true) => {
                p.symlink(&unit_path, "/dev/null", true)?;
                p.report.units_masked.push(u.name.clone());
            }
            Some(false) if p.read_link(&unit_path).as_deref() == Some("/dev/null") => {
                p.push(PlannedOp::Remove {
                    path: unit_path.clone(),
                })?;
                p.report.units_unmasked.push(u.name.clone());
            }
            _ => {}
        }
        let Some(enable) = u.enabled else { continue };
        // The unit text: our contents, or the unit (or its template) already in the tree.
        let template = u
            .name
            .split_once('@')
            .map(|(a, b)| format!("{a}@{}", &b[b.find('.').unwrap_or(b.len())..]));
        let found: Option<(String, String)> = match &u.contents {
            Some(c) => Some((unit_path.clone(), c.clone())),
            None => UNIT_SEARCH
                .iter()
                .flat_map(|d| {
                    std::iter::once(format!("{d}/{}", u.name))
                        .chain(template.iter().map(move |t| format!("{d}/{t}")))
                })
                .find_map(|np| {
                    let full = rooted(p.root, &np);
                    let text = fs::read_to_string(&full).ok()?;
                    Some((np, text))
                }),
        };
        let Some((link_target, text)) = found else {
            if enable {
                return Err(conflict(
                    &unit_path,
                    format!(
                        "cannot enable {}: no unit file in {}",
                        u.name,
                        UNIT_SEARCH.join(", ")
                    ),
                ));
            }
            continue;
        };
        let install = parse_install(&text);
        let mut link_name = u.name.clone();
        if u.name.contains("@.") {
            match &install.default_instance {
                Some(i) => link_name = u.name.replacen("@.", &format!("@{i}."), 1),
                None if enable => {
                    return Err(conflict(
                        &unit_path,
                        format!(
                            "cannot enable template {} without an instance or DefaultInstance=",
                            u.name
                        ),
                    ))
                }
                None => {}
            }
        }
        let mut links: Vec<String> = Vec::new();
        links.extend(
            install
                .wanted_by
                .iter()
                .map(|t| format!("{UNIT_DIR}/{t}.wants/{link_name}")),
        );
        links.extend(
            install
                .required_by
                .iter()
                .map(|t| format!("{UNIT_DIR}/{t}.requires/{link_name}")),
        );
        links.extend(install.alias.iter().map(|a| format!("{UNIT_DIR}/{a}")));
        if enable {
            if install.wanted_by.is_empty()
                && install.required_by.is_empty()
                && install.alias.is_empty()
            {
                return Err(conflict(&link_target, format!("cannot enable {}: its [Install] section has no WantedBy=, RequiredBy= or Alias=", u.name)));
            }
            for l in &links {
                p.symlink(l, &link_target, true)?;
            }
            p.report.units_enabled.push(u.name.clone());
        } else {
            let mut any = false;
            for l in &links {
                if p.meta(l)?.is_some_and(|m| m.file_type().is_symlink()) {
                    p.push(PlannedOp::Remove { path: l.clone() })?;
                    any = true;
                }
            }
            if any {
                p.report.units_disabled.push(u.name.clone());
            }
        }
    }
    Ok(())
}

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
    pub fn ops(&self) -> &[PlannedOp] {
        &self.ops
    }

    /// Run the plan; see the module documentation for the guarantees.
    pub fn execute(self) -> Result<ApplyReport, IgnitionError> {
        let mut report = self.report.clone();
        let chown = is_root();
        let mut created_dirs: Vec<PathBuf> = Vec::new();
        let mut steps: Vec<Step> = Vec::new();
        let temps_of: BTreeMap<String, usize> = BTreeMap::new();
        let mut temps_of = temps_of;

        let fail = |path: &str, e: std::io::Error| IgnitionError::Apply {
            path: path.to_string(),
            message: e.to_string(),
        };

        // Phase 1: prepare.
        let prepared: Result<(), IgnitionError> = (|| {
            for (i, op) in self.ops.iter().enumerate() {
                let full = rooted(&self.root, op.path());
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
                        if let Some((u, g)) = owner {
                            if chown {
                                std::os::unix::fs::chown(&temp, *u, *g)
                                    .map_err(|e| fail(path, e))?;
                            } else if !owned_by_us(&(*u, *g)) {
                                report.ownership_skipped.push(path.clone());
                            }
                        }
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
                        if let Some((u, g)) = owner {
                            if chown {
                                std::os::unix::fs::lchown(&temp, *u, *g)
                                    .map_err(|e| fail(path, e))?;
                            } else if !owned_by_us(&(*u, *g)) {
                                report.ownership_skipped.push(path.clone());
                            }
                        }
                        continue;
                    }
                    PlannedOp::HardLink { target, path } => {
                        step.temp = Some(temp.clone());
                        steps.push(step);
                        let src = match temps_of.get(target) {
                            Some(&j) => steps[j].temp.clone().expect("write step has a temp"),
                            None => rooted(&self.root, target),
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
            if let Some((u, g)) = owner {
                if chown {
                    std::os::unix::fs::chown(&step.full, *u, *g)?;
                } else if !owned_by_us(&(*u, *g)) {
                    report.ownership_skipped.push(path.clone());
                }
            }
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

    #[test]
    fn install_section() {
        let i = parse_install(
            "[Unit]\nWantedBy=wrong.target\n[Install]\n# c\nWantedBy=multi-user.target  other.target\nRequiredBy=a.target\nAlias=x.service\n",
        );
        assert_eq!(i.wanted_by, ["multi-user.target", "other.target"]);
        assert_eq!(i.required_by, ["a.target"]);
        assert_eq!(i.alias, ["x.service"]);
    }
}

//! The account files of a tree (`/etc/passwd`, `group`, `shadow`, `gshadow`), read,
//! changed in memory and rendered back, and the planning of `passwd.users` /
//! `passwd.groups` onto them. Lines firstboot does not touch are kept verbatim (modes
//! and owners preserved). A file that does not exist in the tree stays absent (no
//! account is created in it; users and groups are only recorded in the report).
//!
//! New users get the lowest free uid from 1000 (system users the highest free below
//! 1000), a user group of the same name and id (unless `noUserGroup`/`primaryGroup`),
//! `/home/<name>` (0700, unless `noCreateHome`; an existing directory is used as it is,
//! never chowned or chmodded), shell `/bin/bash`, a locked password
//! unless `passwordHash`. `/etc/skel` is not copied. For an existing user,
//! `passwordHash`, supplementary `groups` and keys are applied; asking to change its uid,
//! home, shell, gecos or primary group is refused.

use std::path::Path;

use super::plan::{conflict, Ownership, PlannedOp, Planner};
use super::{IgnitionError, Owner, StagedIgnition};

/// A POSIX-portable account name, as useradd accepts by default.
pub(crate) fn valid_account_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && !n.starts_with('-')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
        && !n.chars().all(|c| c.is_ascii_digit())
}

/// One colon-separated account file.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub node_path: &'static str,
    /// Every line split on `:` (comments and blank lines kept as one field).
    pub lines: Vec<Vec<String>>,
    pub original: String,
    pub mode: u32,
    pub owner: (u32, u32),
}

impl Table {
    fn load(root: &Path, node_path: &'static str) -> std::io::Result<Option<Table>> {
        use std::os::unix::fs::MetadataExt;
        let p = nodeimage_core::files::rooted(root, node_path);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let md = std::fs::metadata(&p)?;
        Ok(Some(Table {
            node_path,
            lines: text
                .lines()
                .map(|l| l.split(':').map(str::to_string).collect())
                .collect(),
            original: text,
            mode: md.mode() & 0o7777,
            owner: (md.uid(), md.gid()),
        }))
    }

    pub fn find(&self, name: &str) -> Option<&Vec<String>> {
        self.lines
            .iter()
            .find(|l| l.first().map(String::as_str) == Some(name) && l.len() > 1)
    }

    pub fn find_mut(&mut self, name: &str) -> Option<&mut Vec<String>> {
        self.lines
            .iter_mut()
            .find(|l| l.first().map(String::as_str) == Some(name) && l.len() > 1)
    }

    /// Numeric ids in column `col`.
    pub fn ids(&self, col: usize) -> Vec<u32> {
        self.lines
            .iter()
            .filter_map(|l| l.get(col)?.parse().ok())
            .collect()
    }

    pub fn render(&self) -> String {
        let mut s: String = self
            .lines
            .iter()
            .map(|l| l.join(":"))
            .collect::<Vec<_>>()
            .join("\n");
        if !s.is_empty() {
            s.push('\n');
        }
        s
    }

    pub fn changed(&self) -> bool {
        self.render() != self.original
    }
}

/// The account database of a tree.
#[derive(Debug, Clone)]
pub(crate) struct Accounts {
    pub passwd: Option<Table>,
    pub group: Option<Table>,
    pub shadow: Option<Table>,
    pub gshadow: Option<Table>,
}

impl Accounts {
    pub fn load(root: &Path) -> std::io::Result<Self> {
        Ok(Accounts {
            passwd: Table::load(root, "/etc/passwd")?,
            group: Table::load(root, "/etc/group")?,
            shadow: Table::load(root, "/etc/shadow")?,
            gshadow: Table::load(root, "/etc/gshadow")?,
        })
    }

    pub fn uid_of(&self, name: &str) -> Option<u32> {
        self.passwd.as_ref()?.find(name)?.get(2)?.parse().ok()
    }

    pub fn gid_of_user(&self, name: &str) -> Option<u32> {
        self.passwd.as_ref()?.find(name)?.get(3)?.parse().ok()
    }

    pub fn home_of(&self, name: &str) -> Option<String> {
        self.passwd.as_ref()?.find(name)?.get(5).cloned()
    }

    pub fn gid_of(&self, name: &str) -> Option<u32> {
        self.group.as_ref()?.find(name)?.get(2)?.parse().ok()
    }

    /// A free id: the lowest free one from 1000 for regular accounts, the highest free one
    /// below 1000 for system accounts (as useradd does).
    pub fn free_id(&self, system: bool, also_taken: &[u32]) -> Option<u32> {
        let mut taken: Vec<u32> = also_taken.to_vec();
        if let Some(p) = &self.passwd {
            taken.extend(p.ids(2));
        }
        if let Some(g) = &self.group {
            taken.extend(g.ids(2));
        }
        if system {
            (100..1000).rev().find(|i| !taken.contains(i))
        } else {
            (1000..60000).find(|i| !taken.contains(i))
        }
    }

    /// The changed tables.
    pub fn changed(&self) -> Vec<&Table> {
        [&self.passwd, &self.group, &self.shadow, &self.gshadow]
            .into_iter()
            .flatten()
            .filter(|t| t.changed())
            .collect()
    }
}

impl Accounts {
    /// The id an owner names: a number as it is, a name through `lookup` (the tree's
    /// `file`).
    fn resolve(
        o: &Option<Owner>,
        what: &str,
        kind: &str,
        file: &str,
        lookup: impl Fn(&str) -> Option<u32>,
    ) -> Result<Option<u32>, IgnitionError> {
        match o {
            None => Ok(None),
            Some(Owner::Id(i)) => Ok(Some(*i)),
            Some(Owner::Name(n)) => lookup(n).map(Some).ok_or_else(|| {
                conflict(
                    what,
                    format!("unknown {kind} `{n}` (not in {file} of the tree)"),
                )
            }),
        }
    }

    /// The `(uid, gid)` a node's `user`/`group` ask for; `None` when neither is set.
    pub fn ownership(
        &self,
        user: &Option<Owner>,
        group: &Option<Owner>,
        what: &str,
    ) -> Result<Option<Ownership>, IgnitionError> {
        let u = Self::resolve(user, what, "user", "/etc/passwd", |n| self.uid_of(n))?;
        let g = Self::resolve(group, what, "group", "/etc/group", |n| self.gid_of(n))?;
        Ok((u.is_some() || g.is_some()).then_some((u, g)))
    }
}

/// Days since 1970-01-01 (the shadow "last change" field).
pub(crate) fn days_since_epoch() -> u64 {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    secs / 86400
}

/// Plan the account files' changes (groups, users, their homes and SSH keys) into `p`,
/// updating `a` so that later steps resolve the names this config creates.
pub(super) fn plan_accounts(
    st: &StagedIgnition,
    p: &mut Planner,
    a: &mut Accounts,
) -> Result<(), IgnitionError> {
    let sn = &st.source_name;
    let mut new_ids: Vec<u32> = Vec::new();
    for g in &st.groups {
        let what = format!("passwd.groups[{}]", g.name);
        let Some(table) = a.group.as_ref() else {
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
                None => a
                    .free_id(g.system == Some(true), &new_ids)
                    .ok_or_else(|| conflict(&what, "no free gid"))?,
            };
            new_ids.push(gid);
            a.group.as_mut().unwrap().lines.push(vec![
                g.name.clone(),
                "x".into(),
                gid.to_string(),
                String::new(),
            ]);
            p.report.groups_created.push(g.name.clone());
        }
        if let Some(gs) = a.gshadow.as_mut() {
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
        let exists = a.passwd.as_ref().and_then(|t| t.find(&u.name)).cloned();
        match (&exists, a.passwd.is_some()) {
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
                    if a.gid_of(pg).map(|g| g.to_string()) != Some(field(3)) {
                        return Err(conflict(
                            &what,
                            "changing the primary group of an existing user is not supported",
                        ));
                    }
                }
                let mut updated = false;
                if let Some(h) = &u.password_hash {
                    let sh = a.shadow.as_mut().ok_or_else(|| {
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
                    add_to_groups(a, &u.name, u.groups.as_deref().unwrap_or_default(), &what)?;
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
                        if a.passwd.as_ref().unwrap().ids(2).contains(&id) {
                            return Err(conflict(&what, format!("uid {id} is taken")));
                        }
                        id
                    }
                    None => a
                        .free_id(system, &new_ids)
                        .ok_or_else(|| conflict(&what, "no free uid"))?,
                };
                new_ids.push(uid);
                let gid = if let Some(pg) = &u.primary_group {
                    a.gid_of(pg).ok_or_else(|| {
                        conflict(&what, format!("primary group `{pg}` does not exist"))
                    })?
                } else if u.no_user_group == Some(true) {
                    a.gid_of("users").unwrap_or(100)
                } else {
                    let taken = a.group.as_ref().map(|t| t.ids(2)).unwrap_or_default();
                    let gid = if taken.contains(&uid) {
                        a.free_id(system, &new_ids)
                            .ok_or_else(|| conflict(&what, "no free gid"))?
                    } else {
                        uid
                    };
                    new_ids.push(gid);
                    if let Some(gt) = a.group.as_mut() {
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
                    if let Some(gs) = a.gshadow.as_mut() {
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
                a.passwd.as_mut().unwrap().lines.push(vec![
                    u.name.clone(),
                    "x".into(),
                    uid.to_string(),
                    gid.to_string(),
                    u.gecos.clone().unwrap_or_default(),
                    home.clone(),
                    u.shell.clone().unwrap_or_else(|| "/bin/bash".into()),
                ]);
                if let Some(sh) = a.shadow.as_mut() {
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
                add_to_groups(a, &u.name, u.groups.as_deref().unwrap_or_default(), &what)?;
                // A home that exists already (`/`, `/etc`, another user's) is left as it
                // is: useradd never chowns or chmods an existing directory either.
                match p.meta(&home)? {
                    _ if u.no_create_home == Some(true) => {}
                    None => p.mkdir(&home, 0o700, Some((Some(uid), Some(gid))))?,
                    Some(m) if m.is_dir() || m.file_type().is_symlink() => {}
                    Some(_) => {
                        return Err(conflict(
                            &what,
                            format!("homeDir {home} exists and is not a directory"),
                        ))
                    }
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
            let home = a
                .home_of(&u.name)
                .or_else(|| u.home_dir.clone())
                .unwrap_or_else(|| default_home(&u.name));
            let owner = a
                .uid_of(&u.name)
                .map(|uid| (Some(uid), a.gid_of_user(&u.name)));
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
    let changed: Vec<PlannedOp> = a
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

/// The member list (fourth field) of a group or gshadow line, which is padded to four
/// fields.
fn members_of(line: &mut Vec<String>) -> Vec<String> {
    line.resize(line.len().max(4), String::new());
    line[3]
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Add `user` to the member lists of `groups` (group and gshadow). Returns whether
/// anything changed.
fn add_to_groups(
    a: &mut Accounts,
    user: &str,
    groups: &[String],
    what: &str,
) -> Result<bool, IgnitionError> {
    let mut changed = false;
    for g in groups {
        let Some(table) = a.group.as_mut() else {
            continue;
        };
        let line = table
            .find_mut(g)
            .ok_or_else(|| conflict(what, format!("group `{g}` does not exist")))?;
        let mut members = members_of(line);
        if !members.iter().any(|m| m == user) {
            members.push(user.to_string());
            line[3] = members.join(",");
            changed = true;
            if let Some(l) = a.gshadow.as_mut().and_then(|gs| gs.find_mut(g)) {
                let mut m = members_of(l);
                m.push(user.to_string());
                l[3] = m.join(",");
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(
            valid_account_name("core")
                && valid_account_name("svc-1")
                && valid_account_name("a_b.c")
        );
        assert!(
            !valid_account_name("")
                && !valid_account_name("-x")
                && !valid_account_name("a:b")
                && !valid_account_name("123")
        );
    }

    #[test]
    fn tables_round_trip_and_find_free_ids() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\n# comment\nu:x:1000:1000::/home/u:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nu:x:1000:\nsys:x:999:\n",
        )
        .unwrap();
        let a = Accounts::load(d.path()).unwrap();
        assert!(a.shadow.is_none());
        let p = a.passwd.as_ref().unwrap();
        assert!(!p.changed());
        assert_eq!(a.uid_of("u"), Some(1000));
        assert_eq!(a.home_of("root").as_deref(), Some("/root"));
        assert_eq!(a.free_id(false, &[]), Some(1001));
        assert_eq!(a.free_id(true, &[]), Some(998));
        assert_eq!(a.free_id(false, &[1001]), Some(1002));
    }
}

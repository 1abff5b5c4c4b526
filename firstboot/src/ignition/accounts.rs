//! The account files of a tree (`/etc/passwd`, `group`, `shadow`, `gshadow`), read,
//! changed in memory and rendered back. Lines firstboot does not touch are kept verbatim.
//! A file that does not exist in the tree stays absent (no account is created in it).

use std::path::Path;

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

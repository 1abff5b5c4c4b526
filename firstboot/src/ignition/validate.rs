//! Validating a merged config: refusing what firstboot does not implement, checking
//! paths, modes, owners, unit and account names, and fetching every content (the node
//! config carried at [`NODE_CONFIG_IGNITION_PATH`] is taken out of the file list).

use ignition_config::v3_6;

use super::fetch::Fetcher;
use super::{
    accounts, invalid, unsupported, IgnitionError, Owner, StagedDir, StagedFile, StagedIgnition,
    StagedLink, StagedUnit,
};
use nodeimage_core::config::NODE_CONFIG_IGNITION_PATH;

fn valid_node_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && !p.split('/').any(|c| c == ".." || c == ".")
        && !p.contains("//")
        && !p.ends_with('/')
}

fn mode_bits(source_name: &str, field: &str, m: Option<i64>) -> Result<Option<u32>, IgnitionError> {
    match m {
        None => Ok(None),
        Some(m) if (0..=0o7777).contains(&m) => Ok(Some(m as u32)),
        Some(m) => Err(invalid(
            source_name,
            field,
            format!("mode {m} is outside 0..=0o7777 (modes are decimal in JSON: 0644 is 420)"),
        )),
    }
}

/// A node's `user` or `group`: `(id, name)` when the entry has one.
fn owner(
    source_name: &str,
    field: &str,
    entry: Option<(Option<i64>, Option<&String>)>,
) -> Result<Option<Owner>, IgnitionError> {
    let (id, name) = entry.unwrap_or((None, None));
    match (id, name) {
        (Some(_), Some(_)) => Err(invalid(
            source_name,
            field,
            "give an id or a name, not both",
        )),
        (Some(i), None) => u32::try_from(i)
            .map(|i| Some(Owner::Id(i)))
            .map_err(|_| invalid(source_name, field, format!("bad id {i}"))),
        (None, Some(n)) => Ok(Some(Owner::Name(n.clone()))),
        (None, None) => Ok(None),
    }
}

/// The `user` and `group` of a storage entry (`field`, e.g. `storage.files[/etc/x]`).
fn owner_of(
    sn: &str,
    field: &str,
    user: &Option<v3_6::NodeUser>,
    group: &Option<v3_6::NodeGroup>,
) -> Result<(Option<Owner>, Option<Owner>), IgnitionError> {
    let user = user.as_ref().map(|u| (u.id, u.name.as_ref()));
    let group = group.as_ref().map(|g| (g.id, g.name.as_ref()));
    Ok((
        owner(sn, &format!("{field}.user"), user)?,
        owner(sn, &format!("{field}.group"), group)?,
    ))
}

fn nonempty<T>(v: &Option<Vec<T>>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_empty())
}

/// Refuse what is not implemented, validate the rest and fetch every content.
pub(super) fn validate_and_fetch(
    sn: &str,
    c: &v3_6::Config,
    fetcher: &Fetcher,
) -> Result<StagedIgnition, IgnitionError> {
    if let Some(p) = &c.ignition.proxy {
        if p.http_proxy.is_some() || p.https_proxy.is_some() || nonempty(&p.no_proxy) {
            return Err(unsupported(sn, "ignition.proxy", ""));
        }
    }
    if let Some(tls) = c.ignition.security.as_ref().and_then(|s| s.tls.as_ref()) {
        if nonempty(&tls.certificate_authorities) {
            return Err(unsupported(
                sn,
                "ignition.security.tls.certificateAuthorities",
                "",
            ));
        }
    }
    if let Some(k) = &c.kernel_arguments {
        if nonempty(&k.should_exist) || nonempty(&k.should_not_exist) {
            return Err(unsupported(
                sn,
                "kernelArguments",
                "kernel arguments are part of the image",
            ));
        }
    }
    let storage = c.storage.clone().unwrap_or_default();
    for (section, present) in [
        ("storage.disks", nonempty(&storage.disks)),
        ("storage.raid", nonempty(&storage.raid)),
        ("storage.luks", nonempty(&storage.luks)),
        ("storage.filesystems", nonempty(&storage.filesystems)),
    ] {
        if present {
            return Err(unsupported(
                sn,
                section,
                "the image's partitions are fixed by nodeimage",
            ));
        }
    }

    let mut seen = std::collections::BTreeSet::new();
    let mut check_path = |kind: &str, p: &str| -> Result<(), IgnitionError> {
        if !valid_node_path(p) {
            return Err(invalid(
                sn,
                format!("storage.{kind}[{p}].path"),
                "expected an absolute path without `.`, `..` or `//`",
            ));
        }
        if !seen.insert(p.to_string()) {
            return Err(invalid(
                sn,
                format!("storage.{kind}[{p}]"),
                "the path appears more than once in storage",
            ));
        }
        Ok(())
    };

    let mut files = Vec::new();
    let mut node_config = None;
    for f in storage.files.iter().flatten() {
        check_path("files", &f.path)?;
        let field = format!("storage.files[{}]", f.path);
        let overwrite = f.overwrite.unwrap_or(false);
        let has_source = f.contents.as_ref().is_some_and(|r| r.source.is_some());
        if overwrite && !has_source {
            return Err(invalid(
                sn,
                format!("{field}.overwrite"),
                "overwrite needs contents.source",
            ));
        }
        let contents = match &f.contents {
            Some(r) if r.source.is_some() => Some(fetcher.fetch(&format!("{field}.contents"), r)?),
            _ => None,
        };
        let mut append = Vec::new();
        for (i, r) in f.append.iter().flatten().enumerate() {
            append.push(fetcher.fetch(&format!("{field}.append[{i}]"), r)?);
        }
        let mode = mode_bits(sn, &format!("{field}.mode"), f.mode)?;
        let (user, group) = owner_of(sn, &field, &f.user, &f.group)?;
        let staged = StagedFile {
            path: f.path.clone(),
            contents,
            append,
            mode,
            overwrite,
            user,
            group,
        };
        if f.path == NODE_CONFIG_IGNITION_PATH {
            let mut data = staged.contents.clone().unwrap_or_default();
            for a in &staged.append {
                data.extend_from_slice(a);
            }
            node_config = Some(data);
        } else {
            files.push(staged);
        }
    }
    let mut directories = Vec::new();
    for d in storage.directories.iter().flatten() {
        check_path("directories", &d.path)?;
        let field = format!("storage.directories[{}]", d.path);
        let mode = mode_bits(sn, &format!("{field}.mode"), d.mode)?;
        let (user, group) = owner_of(sn, &field, &d.user, &d.group)?;
        directories.push(StagedDir {
            path: d.path.clone(),
            mode,
            overwrite: d.overwrite.unwrap_or(false),
            user,
            group,
        });
    }
    let mut links = Vec::new();
    for l in storage.links.iter().flatten() {
        check_path("links", &l.path)?;
        let field = format!("storage.links[{}]", l.path);
        let target = l
            .target
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid(sn, format!("{field}.target"), "expected a target"))?;
        let hard = l.hard.unwrap_or(false);
        if hard && !valid_node_path(&target) {
            return Err(invalid(
                sn,
                format!("{field}.target"),
                "a hard link needs an absolute target",
            ));
        }
        let (user, group) = owner_of(sn, &field, &l.user, &l.group)?;
        links.push(StagedLink {
            path: l.path.clone(),
            target,
            hard,
            overwrite: l.overwrite.unwrap_or(false),
            user,
            group,
        });
    }

    let mut units = Vec::new();
    let mut unit_names = std::collections::BTreeSet::new();
    for u in c
        .systemd
        .as_ref()
        .and_then(|s| s.units.as_ref())
        .into_iter()
        .flatten()
    {
        let field = format!("systemd.units[{}]", u.name);
        if !valid_unit_name(&u.name) {
            return Err(invalid(
                sn,
                &field,
                "expected a unit name like `foo.service`",
            ));
        }
        if !unit_names.insert(u.name.clone()) {
            return Err(invalid(sn, &field, "the unit appears more than once"));
        }
        if u.mask == Some(true) && (u.contents.is_some() || u.enabled == Some(true)) {
            return Err(invalid(
                sn,
                &field,
                "a masked unit cannot also have contents or be enabled",
            ));
        }
        let mut dropins = Vec::new();
        for d in u.dropins.iter().flatten() {
            if !d.name.ends_with(".conf") || d.name.contains('/') {
                return Err(invalid(
                    sn,
                    format!("{field}.dropins[{}]", d.name),
                    "expected a name like `10-foo.conf`",
                ));
            }
            if let Some(c) = &d.contents {
                dropins.push((d.name.clone(), c.clone()));
            }
        }
        units.push(StagedUnit {
            name: u.name.clone(),
            contents: u.contents.clone(),
            enabled: u.enabled,
            mask: u.mask,
            dropins,
        });
    }

    let passwd = c.passwd.clone().unwrap_or_default();
    let users = passwd.users.unwrap_or_default();
    let groups = passwd.groups.unwrap_or_default();
    for u in &users {
        check_account(sn, "passwd.users", "user", &u.name, u.should_exist)?;
        check_user_fields(sn, u)?;
    }
    for g in &groups {
        check_account(sn, "passwd.groups", "group", &g.name, g.should_exist)?;
        if let Some(h) = &g.password_hash {
            account_field(sn, &format!("passwd.groups[{}].passwordHash", g.name), h)?;
        }
    }

    Ok(StagedIgnition {
        source_name: sn.into(),
        version: String::new(),
        referenced: Vec::new(),
        files,
        directories,
        links,
        units,
        users,
        groups,
        node_config,
    })
}

/// A user or group (`noun`) of `section`: created or updated, never deleted, with a
/// POSIX name.
fn check_account(
    sn: &str,
    section: &str,
    noun: &str,
    name: &str,
    should_exist: Option<bool>,
) -> Result<(), IgnitionError> {
    if should_exist == Some(false) {
        return Err(unsupported(
            sn,
            &format!("{section}[{name}].shouldExist"),
            format!("deleting {noun}s"),
        ));
    }
    if !accounts::valid_account_name(name) {
        return Err(invalid(
            sn,
            format!("{section}[{name}].name"),
            format!("expected a POSIX {noun} name"),
        ));
    }
    Ok(())
}

/// A value written as one field of a colon-separated account file (`/etc/passwd`,
/// `shadow`, `group`, `gshadow`): a `:` would shift the fields, a newline add a line (a
/// second uid-0 account). The error names the field, never the value.
fn account_field(sn: &str, field: &str, value: &str) -> Result<(), IgnitionError> {
    match value
        .chars()
        .find(|c| matches!(c, ':' | '\n' | '\r' | '\0'))
    {
        None => Ok(()),
        Some(c) => Err(invalid(
            sn,
            field,
            format!(
                "must not contain {} (it would change the account files' other fields or lines)",
                match c {
                    ':' => "`:`",
                    '\n' => "a newline",
                    '\r' => "a carriage return",
                    _ => "a NUL byte",
                }
            ),
        )),
    }
}

/// The fields of a user that end up in the account files, and its keys (one line each
/// in `authorized_keys`).
fn check_user_fields(sn: &str, u: &v3_6::User) -> Result<(), IgnitionError> {
    let field = |f: &str| format!("passwd.users[{}].{f}", u.name);
    for (name, value) in [
        ("gecos", &u.gecos),
        ("passwordHash", &u.password_hash),
        ("homeDir", &u.home_dir),
        ("shell", &u.shell),
    ] {
        if let Some(v) = value {
            account_field(sn, &field(name), v)?;
        }
    }
    for (name, value) in [("homeDir", &u.home_dir), ("shell", &u.shell)] {
        if let Some(v) = value {
            if !valid_node_path(v) {
                return Err(invalid(
                    sn,
                    field(name),
                    "expected an absolute path without `.`, `..` or `//`",
                ));
            }
        }
    }
    for (i, k) in u.ssh_authorized_keys.iter().flatten().enumerate() {
        if k.trim().contains(['\n', '\r', '\0']) {
            return Err(invalid(
                sn,
                field(&format!("sshAuthorizedKeys[{i}]")),
                "must be one line (no newline, carriage return or NUL)",
            ));
        }
    }
    Ok(())
}

pub(super) fn valid_unit_name(n: &str) -> bool {
    const SUFFIXES: [&str; 11] = [
        ".service",
        ".socket",
        ".target",
        ".timer",
        ".mount",
        ".automount",
        ".path",
        ".slice",
        ".scope",
        ".swap",
        ".device",
    ];
    !n.is_empty()
        && !n.contains('/')
        && n != "."
        && n != ".."
        && SUFFIXES.iter().any(|s| n.ends_with(s) && n.len() > s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_paths_and_units() {
        assert!(valid_node_path("/etc/x"));
        for bad in ["etc/x", "/", "/etc/../x", "/etc//x", "/etc/x/", "/./x"] {
            assert!(!valid_node_path(bad), "{bad}");
        }
        assert!(valid_unit_name("foo.service") && valid_unit_name("getty@tty1.service"));
        assert!(
            !valid_unit_name(".service")
                && !valid_unit_name("a/b.service")
                && !valid_unit_name("foo")
        );
    }
}

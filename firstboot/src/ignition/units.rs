//! `systemd.units`: unit files and drop-ins under `/etc/systemd/system`, masks, and
//! enabling through the `[Install]` section (`WantedBy=`, `RequiredBy=`, `Alias=`) of the
//! unit's contents or of the unit file already in the tree.

use std::fs;

use super::plan::{conflict, PlannedOp, Planner};
use super::{IgnitionError, StagedIgnition};
use nodeimage_core::files::rooted;

const UNIT_DIR: &str = "/etc/systemd/system";
const UNIT_SEARCH: [&str; 3] = [
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

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

/// Every `[Install]` value becomes part of a path under [`UNIT_DIR`]: `WantedBy=`,
/// `RequiredBy=` and `Alias=` must be plain unit names, `DefaultInstance=` a plain
/// instance name (no `/`, so no `..` either), whatever the unit text says.
fn check_install(unit: &str, unit_path: &str, install: &Install) -> Result<(), IgnitionError> {
    let bad = |key: &str, value: &str, what: &str| {
        conflict(
            unit_path,
            format!("unit {unit}: [Install] {key}={value} is not {what}"),
        )
    };
    for (key, values) in [
        ("WantedBy", &install.wanted_by),
        ("RequiredBy", &install.required_by),
        ("Alias", &install.alias),
    ] {
        if let Some(v) = values.iter().find(|v| !super::validate::valid_unit_name(v)) {
            return Err(bad(key, v, "a unit name like `multi-user.target`"));
        }
    }
    if let Some(i) = &install.default_instance {
        let ok = !i.is_empty()
            && i.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@')
            });
        if !ok {
            return Err(bad("DefaultInstance", i, "an instance name like `tty1`"));
        }
    }
    Ok(())
}

pub(super) fn plan_units(st: &StagedIgnition, p: &mut Planner) -> Result<(), IgnitionError> {
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
        check_install(&u.name, &link_target, &install)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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

//! The kernel: the modules the container runtime and the pod network need, the sysctls
//! that must be 1, and [`ensure`], which loads and sets what software can fix.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::report::{read, Check, CheckResult};
use nodeimage_core::files::rooted;

/// Kernel modules the container runtime and the pod network need.
pub const REQUIRED_MODULES: &[&str] = &["br_netfilter", "overlay"];
/// Sysctls that must be 1.
pub const REQUIRED_SYSCTLS: &[&str] =
    &["net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"];

/// How a kernel module is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleState {
    Loaded,
    BuiltIn,
    /// Not loaded, but `modprobe` can load it.
    Loadable,
    Missing,
}

fn kernel_release(root: &Path) -> Option<String> {
    read(root, "/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Find a module in `/proc/modules`, as built in, or in `modules.dep`.
pub fn module_state(root: &Path, name: &str) -> ModuleState {
    if let Ok(mods) = read(root, "/proc/modules") {
        if mods
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name))
        {
            return ModuleState::Loaded;
        }
    }
    // Built-in modules show up in /sys/module only when they have parameters, so also
    // look for what the module provides.
    let evidence = match name {
        "br_netfilter" => rooted(root, "/proc/sys/net/bridge/bridge-nf-call-iptables").exists(),
        "overlay" => read(root, "/proc/filesystems")
            .map(|f| {
                f.lines()
                    .any(|l| l.split_whitespace().last() == Some("overlay"))
            })
            .unwrap_or(false),
        _ => false,
    };
    if evidence || rooted(root, &format!("/sys/module/{name}")).exists() {
        return ModuleState::BuiltIn;
    }
    let Some(release) = kernel_release(root) else {
        return ModuleState::Missing;
    };
    let lists = |file: &str| {
        read(root, &format!("/lib/modules/{release}/{file}"))
            .map(|t| {
                t.lines().any(|l| {
                    let path = l.split(':').next().unwrap_or("");
                    let base = path.rsplit('/').next().unwrap_or("");
                    let stem = base.split(".ko").next().unwrap_or("");
                    base.contains(".ko") && stem.replace('-', "_") == name
                })
            })
            .unwrap_or(false)
    };
    if lists("modules.builtin") {
        ModuleState::BuiltIn
    } else if lists("modules.dep") {
        ModuleState::Loadable
    } else {
        ModuleState::Missing
    }
}

pub(super) fn module(root: &Path, name: &str) -> CheckResult {
    let r = CheckResult::new(
        Check::KernelModules,
        Some(name),
        format!("kernel module {name} loaded, built in or loadable"),
    );
    match module_state(root, name) {
        ModuleState::Loaded => r.pass("loaded"),
        ModuleState::BuiltIn => r.pass("built in"),
        ModuleState::Loadable => r.pass("not loaded, loadable (the ensure step loads it)"),
        ModuleState::Missing => {
            let release = kernel_release(root).unwrap_or_else(|| "?".into());
            r.fail(
                format!("not loaded, not built in, not in /lib/modules/{release}/modules.dep"),
                format!(
                    "use a kernel with {name} (CONFIG_{}) and its modules in the image",
                    kconfig(name)
                ),
            )
        }
    }
}

fn kconfig(module: &str) -> &'static str {
    match module {
        "br_netfilter" => "BRIDGE_NETFILTER",
        "overlay" => "OVERLAY_FS",
        _ => "?",
    }
}

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

pub(super) fn sysctl(root: &Path, name: &str) -> CheckResult {
    let r = CheckResult::new(Check::Sysctls, Some(name), format!("{name} = 1"));
    let fix = if name.starts_with("net.bridge.") {
        format!("load br_netfilter and set {name}=1 (the ensure step does both; a sysctl.d file must not reset it)")
    } else {
        format!("set {name}=1 (the ensure step does; a sysctl.d file must not reset it)")
    };
    match read(root, &sysctl_path(name)) {
        Ok(v) if v.trim() == "1" => r.pass("1"),
        Ok(v) => r.fail(v.trim().to_string(), fix),
        Err(_) if name.starts_with("net.bridge.") => {
            r.fail("absent (br_netfilter is not loaded)", fix)
        }
        Err(e) => r.fail(e, fix),
    }
}

/// The ensure step failed.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{modprobe}: not found; install the kmod package")]
    ModprobeMissing { modprobe: PathBuf },
    #[error("modprobe {module} failed ({status}): {stderr}")]
    Modprobe {
        module: String,
        status: String,
        stderr: String,
    },
    #[error("setting {sysctl}: writing {path}: {source}")]
    Sysctl {
        sysctl: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Make the kernel meet the requirements that software can fix: load missing modules
/// with `modprobe` and set the required sysctls to 1 (live values; persisting them is
/// the sysctl step's job). Returns what was done, one line per action.
pub fn ensure(root: &Path, modprobe: &Path) -> Result<Vec<String>, PreflightError> {
    let mut done = Vec::new();
    for m in REQUIRED_MODULES {
        if module_state(root, m) == ModuleState::Loadable {
            let out = Command::new(modprobe)
                .arg(m)
                .output()
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => PreflightError::ModprobeMissing {
                        modprobe: modprobe.to_path_buf(),
                    },
                    _ => PreflightError::Modprobe {
                        module: m.to_string(),
                        status: e.to_string(),
                        stderr: String::new(),
                    },
                })?;
            if !out.status.success() {
                return Err(PreflightError::Modprobe {
                    module: m.to_string(),
                    status: out.status.to_string(),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            tracing::info!(module = m, "loaded kernel module");
            done.push(format!("loaded {m}"));
        }
    }
    for s in REQUIRED_SYSCTLS {
        let path = rooted(root, &sysctl_path(s));
        let current = fs::read_to_string(&path).map(|v| v.trim().to_string());
        match current {
            Ok(v) if v == "1" => {}
            Ok(_) => {
                fs::write(&path, "1\n").map_err(|source| PreflightError::Sysctl {
                    sysctl: s.to_string(),
                    path: path.clone(),
                    source,
                })?;
                tracing::info!(sysctl = s, "set to 1");
                done.push(format!("set {s}=1"));
            }
            // Absent (bridge sysctls without br_netfilter): the check reports it.
            Err(_) => {}
        }
    }
    Ok(done)
}

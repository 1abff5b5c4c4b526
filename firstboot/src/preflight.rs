//! Preflight: does this machine meet the host requirements, before anything changes?
//!
//! The seeds ask for 2 GB of memory and 40 GB of disk per node, x86-64 or ARM64, and
//! the Kubernetes networking model needs `br_netfilter`, `overlay`, IP forwarding and
//! bridged traffic through netfilter. The ports of this node's role (from the port table)
//! must be free, or the components that own them will fail later with a much less
//! obvious error.
//!
//! Every check reads files under a root prefix (`/` on the node, a fake tree in tests):
//! `proc/meminfo`, `proc/sys/...`, `proc/modules`, `proc/net/{tcp,tcp6,udp,udp6}`,
//! `proc/<pid>/fd` and `lib/modules/<release>/modules.{dep,builtin}`. Only the disk
//! check asks the kernel (statvfs of the filesystem holding `<root>/var`).
//!
//! A failed check yields one line naming the requirement, what was found and the fix.
//! The report is serialisable so status.json can carry it. [`ensure`] is the one step
//! that changes something (loads modules, sets the sysctls); it is separate so the
//! check can run first and report the machine as it was.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use nodeimage_core::config::PreflightSettings;
use nodeimage_core::files::rooted;
use nodeimage_core::ports::{PortPolicy, Protocol, Service};

/// Architectures the image is built for (Pharos 001: x86-64 and ARM64).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["x86_64", "aarch64"];
/// Kernel modules the container runtime and the pod network need.
pub const REQUIRED_MODULES: &[&str] = &["br_netfilter", "overlay"];
/// Sysctls that must be 1.
pub const REQUIRED_SYSCTLS: &[&str] =
    &["net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"];

/// The checks, by the names `preflight.skip` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    Memory,
    Disk,
    Architecture,
    KernelModules,
    Sysctls,
    Ports,
    /// The preflight settings themselves (an unknown name in `skip`).
    Settings,
}

impl Check {
    /// The checks that `preflight.skip` may name.
    pub const ALL: [Check; 6] = [
        Check::Memory,
        Check::Disk,
        Check::Architecture,
        Check::KernelModules,
        Check::Sysctls,
        Check::Ports,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::Memory => "memory",
            Check::Disk => "disk",
            Check::Architecture => "architecture",
            Check::KernelModules => "kernel-modules",
            Check::Sysctls => "sysctls",
            Check::Ports => "ports",
            Check::Settings => "settings",
        }
    }

    pub fn from_name(s: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.name() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skipped,
}

/// The outcome of one check (or one item of a check: a module, a sysctl).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub check: Check,
    /// The module or sysctl this result is about, when a check has several items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    pub status: Status,
    pub requirement: String,
    pub found: String,
    /// How to fix a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl CheckResult {
    fn new(check: Check, item: Option<&str>, requirement: String) -> Self {
        CheckResult {
            check,
            item: item.map(str::to_string),
            status: Status::Pass,
            requirement,
            found: String::new(),
            fix: None,
        }
    }
    fn pass(mut self, found: impl Into<String>) -> Self {
        self.status = Status::Pass;
        self.found = found.into();
        self
    }
    fn fail(mut self, found: impl Into<String>, fix: impl Into<String>) -> Self {
        self.status = Status::Fail;
        self.found = found.into();
        self.fix = Some(fix.into());
        self
    }

    /// One console/journal line.
    pub fn line(&self) -> String {
        let name = match &self.item {
            Some(i) => format!("{} {i}", self.check.name()),
            None => self.check.name().to_string(),
        };
        match self.status {
            Status::Pass => format!(
                "preflight {name}: ok: {} (requirement: {})",
                self.found, self.requirement
            ),
            Status::Skipped => format!("preflight {name}: skipped ({})", self.found),
            Status::Fail => format!(
                "preflight {name}: FAILED: requirement: {}; found: {}; fix: {}",
                self.requirement,
                self.found,
                self.fix.as_deref().unwrap_or("-")
            ),
        }
    }
}

/// All results, in check order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreflightReport {
    pub passed: bool,
    pub checks: Vec<CheckResult>,
}

impl PreflightReport {
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }
    pub fn lines(&self) -> Vec<String> {
        self.checks.iter().map(CheckResult::line).collect()
    }
}

/// Run every check (except the skipped ones) against the tree at `root`.
pub fn run(root: &Path, settings: &PreflightSettings, policy: &PortPolicy) -> PreflightReport {
    let mut checks = Vec::new();
    let mut skipped = Vec::new();
    for name in &settings.skip {
        match Check::from_name(name) {
            Some(c) => skipped.push(c),
            None => checks.push(
                CheckResult::new(
                    Check::Settings,
                    None,
                    "preflight.skip names known checks".to_string(),
                )
                .fail(
                    format!("unknown check `{name}`"),
                    format!(
                        "use one of: {}",
                        Check::ALL
                            .iter()
                            .map(|c| c.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            ),
        }
    }
    for check in Check::ALL {
        if skipped.contains(&check) {
            let mut r = CheckResult::new(check, None, String::new());
            r.status = Status::Skipped;
            r.found = "listed in preflight.skip".into();
            checks.push(r);
            continue;
        }
        match check {
            Check::Memory => checks.push(memory(root, settings.min_memory_mib)),
            Check::Disk => checks.push(disk(root, settings.min_disk_gib)),
            Check::Architecture => checks.push(architecture(root)),
            Check::KernelModules => checks.extend(REQUIRED_MODULES.iter().map(|m| module(root, m))),
            Check::Sysctls => checks.extend(REQUIRED_SYSCTLS.iter().map(|s| sysctl(root, s))),
            Check::Ports => checks.push(ports(root, policy)),
            Check::Settings => {}
        }
    }
    let passed = !checks.iter().any(|c| c.status == Status::Fail);
    for c in &checks {
        match c.status {
            Status::Fail => {
                tracing::warn!(check = c.check.name(), item = ?c.item, found = %c.found, "preflight failed")
            }
            _ => {
                tracing::debug!(check = c.check.name(), item = ?c.item, status = ?c.status, "preflight")
            }
        }
    }
    PreflightReport { passed, checks }
}

fn read(root: &Path, node_path: &str) -> Result<String, String> {
    let p = rooted(root, node_path);
    fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

fn memory(root: &Path, min_mib: u64) -> CheckResult {
    let r = CheckResult::new(
        Check::Memory,
        None,
        format!("at least {min_mib} MiB of memory (MemTotal)"),
    );
    let total_kib = read(root, "/proc/meminfo").and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or_else(|| "no MemTotal line in /proc/meminfo".to_string())
    });
    match total_kib {
        Err(e) => r.fail(e, "run on Linux with /proc mounted"),
        Ok(kib) if kib / 1024 >= min_mib => r.pass(format!("{} MiB", kib / 1024)),
        Ok(kib) => r.fail(
            format!("{} MiB", kib / 1024),
            "give the machine at least 2 GB of memory (the seeds' minimum), or lower preflight.min_memory_mib for a test machine",
        ),
    }
}

/// Free bytes for unprivileged users on the filesystem holding `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: all-zero is a valid statvfs; c is a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

fn disk(root: &Path, min_gib: u64) -> CheckResult {
    let r = CheckResult::new(
        Check::Disk,
        None,
        format!("at least {min_gib} GiB free for /var"),
    );
    // /var may not exist yet in a fresh tree: measure the filesystem that will hold it.
    let var = rooted(root, "/var");
    let Some(existing) = var.ancestors().find(|p| p.exists()).map(Path::to_path_buf) else {
        return r.fail(
            format!("{} does not exist", var.display()),
            "mount the state partition on /var",
        );
    };
    match free_bytes(&existing) {
        Err(e) => r.fail(
            format!("statvfs {}: {e}", existing.display()),
            "mount the state partition on /var",
        ),
        Ok(bytes) => {
            let gib = bytes as f64 / (1u64 << 30) as f64;
            let found = format!(
                "{gib:.1} GiB free on the filesystem of {}",
                existing.display()
            );
            if bytes >= min_gib.saturating_mul(1 << 30) {
                r.pass(found)
            } else {
                r.fail(
                    found,
                    "grow the disk (the state partition grows to fill it), or lower preflight.min_disk_gib for a test machine; production nodes need 40 GB",
                )
            }
        }
    }
}

fn uname_machine() -> Option<String> {
    // SAFETY: all-zero is a valid utsname; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = u
        .machine
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}

fn architecture(root: &Path) -> CheckResult {
    let r = CheckResult::new(
        Check::Architecture,
        None,
        format!("one of {}", SUPPORTED_ARCHITECTURES.join(", ")),
    );
    // proc/sys/kernel/arch exists since Linux 5.x; uname covers older kernels.
    let arch = read(root, "/proc/sys/kernel/arch")
        .map(|s| s.trim().to_string())
        .ok()
        .or_else(uname_machine);
    match arch {
        Some(a) if SUPPORTED_ARCHITECTURES.contains(&a.as_str()) => r.pass(a),
        Some(a) => r.fail(
            a,
            "use an x86_64 or aarch64 machine and the image built for it",
        ),
        None => r.fail("unknown", "run on Linux with /proc mounted"),
    }
}

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

fn module(root: &Path, name: &str) -> CheckResult {
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

fn sysctl(root: &Path, name: &str) -> CheckResult {
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

/// A socket bound to a local port, from `/proc/net/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundSocket {
    pub protocol: Protocol,
    pub port: u16,
    pub inode: u64,
}

/// Listening TCP sockets and bound UDP sockets of `<root>/proc/net/{tcp,tcp6,udp,udp6}`.
pub fn bound_sockets(root: &Path) -> Vec<BoundSocket> {
    let mut out = Vec::new();
    for (file, protocol) in [
        ("tcp", Protocol::Tcp),
        ("tcp6", Protocol::Tcp),
        ("udp", Protocol::Udp),
        ("udp6", Protocol::Udp),
    ] {
        let Ok(text) = read(root, &format!("/proc/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            // TCP: only LISTEN (0A) holds a port for a server; UDP: every bound socket.
            if protocol == Protocol::Tcp && *state != "0A" {
                continue;
            }
            let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            out.push(BoundSocket {
                protocol,
                port,
                inode: inode.parse().unwrap_or(0),
            });
        }
    }
    out
}

/// Socket inode → "comm (pid N)", from `<root>/proc/<pid>/fd/*` links `socket:[inode]`.
fn socket_owners(root: &Path) -> BTreeMap<u64, String> {
    let mut owners = BTreeMap::new();
    let Ok(procs) = fs::read_dir(rooted(root, "/proc")) else {
        return owners;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.chars().all(|c| c.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let comm = fs::read_to_string(p.path().join("comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                if let Ok(inode) = inode.parse() {
                    owners.insert(inode, format!("{comm} (pid {pid})"));
                }
            }
        }
    }
    owners
}

/// The process a service's port is meant for when the OS already runs it.
fn expected_owner(service: Service) -> Option<&'static str> {
    match service {
        Service::Ssh => Some("sshd"),
        _ => None,
    }
}

fn ports(root: &Path, policy: &PortPolicy) -> CheckResult {
    let r = CheckResult::new(
        Check::Ports,
        None,
        format!(
            "no other process bound to the ports of a {} node",
            policy.role
        ),
    );
    let sockets = bound_sockets(root);
    let owners = socket_owners(root);
    let mut conflicts: Vec<String> = Vec::new();
    for s in &sockets {
        let Some((rule, _)) = policy
            .listening()
            .find(|(rule, range)| rule.row.protocol == s.protocol && range.contains(s.port))
        else {
            continue;
        };
        let owner = owners.get(&s.inode).cloned();
        let comm = owner.as_deref().and_then(|o| o.split(" (pid").next());
        if let (Some(expected), Some(comm)) = (expected_owner(rule.row.service), comm) {
            if comm == expected {
                continue;
            }
        }
        let holder = owner.unwrap_or_else(|| format!("socket inode {}", s.inode));
        let c = format!(
            "{}/{} ({}) held by {holder}",
            s.port, s.protocol, rule.row.service
        );
        if !conflicts.contains(&c) {
            conflicts.push(c);
        }
    }
    if conflicts.is_empty() {
        let n = policy.listening().count();
        r.pass(format!("the {n} ports of the table are free"))
    } else {
        r.fail(
            conflicts.join(", "),
            "stop or remove the process holding the port; these ports belong to the node's Kubernetes and Weave components",
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use nodeimage_core::config::Role;
    use nodeimage_core::ports::NodeFacts;

    /// A fake root that passes every check (with small limits).
    fn good_tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let path = rooted(d.path(), p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, s).unwrap();
        };
        w(
            "/proc/meminfo",
            "MemTotal:        4039680 kB\nMemFree:          123 kB\n",
        );
        w("/proc/sys/kernel/arch", "x86_64\n");
        w("/proc/sys/kernel/osrelease", "6.1.0-18-amd64\n");
        w(
            "/proc/modules",
            "overlay 151552 0 - Live 0x0000000000000000\nbr_netfilter 32768 0 - Live 0x0\n",
        );
        w("/proc/sys/net/ipv4/ip_forward", "1\n");
        w("/proc/sys/net/bridge/bridge-nf-call-iptables", "1\n");
        let hdr = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        // sshd on 22 (expected owner), a client connection from port 10250 (not LISTEN).
        w(
            "/proc/net/tcp",
            &format!("{hdr}   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1\n   1: 0A000001:2802 0A000002:01BB 01 00000000:00000000 00:00000000 00000000     0        0 112 1\n"),
        );
        w("/proc/net/tcp6", hdr);
        w("/proc/net/udp", &format!("{hdr}  5: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 113 2\n"));
        w("/proc/net/udp6", hdr);
        w("/proc/77/comm", "sshd\n");
        fs::create_dir_all(rooted(d.path(), "/proc/77/fd")).unwrap();
        std::os::unix::fs::symlink("socket:[111]", rooted(d.path(), "/proc/77/fd/3")).unwrap();
        fs::create_dir_all(rooted(d.path(), "/var")).unwrap();
        d
    }

    fn write(root: &Path, p: &str, s: &str) {
        let path = rooted(root, p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, s).unwrap();
    }

    fn settings() -> PreflightSettings {
        PreflightSettings {
            min_memory_mib: 1800,
            min_disk_gib: 0,
            skip: Vec::new(),
        }
    }

    fn policy(role: Role) -> PortPolicy {
        PortPolicy::new(NodeFacts::defaults(role)).unwrap()
    }

    fn failed(r: &PreflightReport, check: Check) -> Vec<&CheckResult> {
        r.failures().filter(|c| c.check == check).collect()
    }

    #[test]
    fn good_tree_passes() {
        let d = good_tree();
        let r = run(d.path(), &settings(), &policy(Role::Master));
        assert!(r.passed, "{:#?}", r.lines());
        assert_eq!(
            r.checks.len(),
            8,
            "memory, disk, arch, 2 modules, 2 sysctls, ports"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["passed"], true);
        assert_eq!(json["checks"][0]["check"], "memory");
        assert_eq!(json["checks"][0]["found"], "3945 MiB");
    }

    #[test]
    fn low_memory_names_requirement_found_and_fix() {
        let d = good_tree();
        write(d.path(), "/proc/meminfo", "MemTotal:        1048576 kB\n");
        let r = run(d.path(), &settings(), &policy(Role::Worker));
        assert!(!r.passed);
        let line = failed(&r, Check::Memory)[0].line();
        assert_eq!(
            line,
            "preflight memory: FAILED: requirement: at least 1800 MiB of memory (MemTotal); found: 1024 MiB; \
             fix: give the machine at least 2 GB of memory (the seeds' minimum), or lower preflight.min_memory_mib for a test machine"
        );
    }

    #[test]
    fn disk_fails_with_an_impossible_minimum() {
        let d = good_tree();
        let mut s = settings();
        s.min_disk_gib = 1 << 40;
        let r = run(d.path(), &s, &policy(Role::Worker));
        let f = failed(&r, Check::Disk);
        let line = f[0].line();
        assert!(line.starts_with("preflight disk: FAILED: requirement: at least 1099511627776 GiB free for /var; found: "), "{line}");
        assert!(
            line.contains("GiB free on the filesystem of") && line.contains("fix: grow the disk"),
            "{line}"
        );
    }

    #[test]
    fn unsupported_architecture() {
        let d = good_tree();
        write(d.path(), "/proc/sys/kernel/arch", "riscv64\n");
        let r = run(d.path(), &settings(), &policy(Role::Worker));
        let line = failed(&r, Check::Architecture)[0].line();
        assert!(line.contains("requirement: one of x86_64, aarch64; found: riscv64; fix: use an x86_64 or aarch64 machine"), "{line}");
    }

    #[test]
    fn modules_loaded_builtin_loadable_missing() {
        let d = good_tree();
        let root = d.path();
        assert_eq!(module_state(root, "overlay"), ModuleState::Loaded);
        write(root, "/proc/modules", "");
        // Built in: the bridge sysctl exists / overlay in /proc/filesystems.
        assert_eq!(module_state(root, "br_netfilter"), ModuleState::BuiltIn);
        write(root, "/proc/filesystems", "nodev\tsysfs\nnodev\toverlay\n");
        assert_eq!(module_state(root, "overlay"), ModuleState::BuiltIn);
        write(root, "/proc/filesystems", "nodev\tsysfs\n");
        write(
            root,
            "/lib/modules/6.1.0-18-amd64/modules.dep",
            "kernel/fs/overlayfs/overlay.ko.xz: \nkernel/net/bridge/br_netfilter.ko.xz: kernel/net/bridge/bridge.ko.xz\n",
        );
        assert_eq!(module_state(root, "overlay"), ModuleState::Loadable);
        write(
            root,
            "/lib/modules/6.1.0-18-amd64/modules.dep",
            "kernel/net/bridge/bridge.ko.xz:\n",
        );
        let r = run(root, &settings(), &policy(Role::Worker));
        let f = failed(&r, Check::KernelModules);
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].line(),
            "preflight kernel-modules overlay: FAILED: requirement: kernel module overlay loaded, built in or loadable; \
             found: not loaded, not built in, not in /lib/modules/6.1.0-18-amd64/modules.dep; \
             fix: use a kernel with overlay (CONFIG_OVERLAY_FS) and its modules in the image"
        );
    }

    #[test]
    fn sysctls_fail_then_ensure_fixes_them() {
        let d = good_tree();
        let root = d.path();
        write(root, "/proc/sys/net/ipv4/ip_forward", "0\n");
        fs::remove_file(rooted(root, "/proc/sys/net/bridge/bridge-nf-call-iptables")).unwrap();
        let r = run(root, &settings(), &policy(Role::Worker));
        let f = failed(&r, Check::Sysctls);
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[0].line(),
            "preflight sysctls net.ipv4.ip_forward: FAILED: requirement: net.ipv4.ip_forward = 1; found: 0; \
             fix: set net.ipv4.ip_forward=1 (the ensure step does; a sysctl.d file must not reset it)"
        );
        assert!(
            f[1].line()
                .contains("found: absent (br_netfilter is not loaded)"),
            "{}",
            f[1].line()
        );

        write(root, "/proc/sys/net/bridge/bridge-nf-call-iptables", "0\n");
        let done = ensure(root, Path::new("/bin/true")).unwrap();
        assert_eq!(
            done,
            vec![
                "set net.ipv4.ip_forward=1",
                "set net.bridge.bridge-nf-call-iptables=1"
            ]
        );
        assert!(run(root, &settings(), &policy(Role::Worker)).passed);
        assert!(
            ensure(root, Path::new("/bin/true")).unwrap().is_empty(),
            "idempotent"
        );
    }

    #[test]
    fn ensure_loads_loadable_modules_and_names_missing_modprobe() {
        let d = good_tree();
        let root = d.path();
        write(root, "/proc/modules", "br_netfilter 1 0 - Live 0x0\n");
        write(
            root,
            "/lib/modules/6.1.0-18-amd64/modules.dep",
            "kernel/fs/overlayfs/overlay.ko.zst:\n",
        );
        assert_eq!(
            ensure(root, Path::new("/bin/true")).unwrap(),
            vec!["loaded overlay"]
        );
        let e = ensure(root, Path::new("/nonexistent/modprobe")).unwrap_err();
        assert!(e.to_string().contains("install the kmod package"), "{e}");
        let e = ensure(root, Path::new("/bin/false")).unwrap_err();
        assert!(e.to_string().starts_with("modprobe overlay failed"), "{e}");
    }

    #[test]
    fn busy_ports_are_named_with_their_process() {
        let d = good_tree();
        let root = d.path();
        let hdr = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        // 10250 (kubelet) listening on tcp6 by "python3", 6783/udp bound by an unknown inode,
        // 22 held by something that is not sshd.
        write(
            root,
            "/proc/net/tcp6",
            &format!("{hdr}   0: 00000000000000000000000000000000:280A 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 200 1\n"),
        );
        write(root, "/proc/net/udp", &format!("{hdr}  1: 0100007F:1A7F 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 201 2\n"));
        write(root, "/proc/9/comm", "python3\n");
        fs::create_dir_all(rooted(root, "/proc/9/fd")).unwrap();
        std::os::unix::fs::symlink("socket:[200]", rooted(root, "/proc/9/fd/5")).unwrap();
        write(root, "/proc/77/comm", "nc\n");
        let r = run(root, &settings(), &policy(Role::Worker));
        let f = failed(&r, Check::Ports);
        assert_eq!(
            f[0].line(),
            "preflight ports: FAILED: requirement: no other process bound to the ports of a worker node; \
             found: 22/tcp (ssh) held by nc (pid 77), 10250/tcp (kubelet) held by python3 (pid 9), 6783/udp (weave-sleeve) held by socket inode 201; \
             fix: stop or remove the process holding the port; these ports belong to the node's Kubernetes and Weave components"
        );
    }

    #[test]
    fn skipped_checks_are_reported_and_unknown_names_fail() {
        let d = good_tree();
        write(d.path(), "/proc/meminfo", "MemTotal: 1 kB\n");
        let mut s = settings();
        s.skip = vec!["memory".into(), "dsik".into()];
        let r = run(d.path(), &s, &policy(Role::Worker));
        let mem: Vec<_> = r
            .checks
            .iter()
            .filter(|c| c.check == Check::Memory)
            .collect();
        assert_eq!(mem[0].status, Status::Skipped);
        assert_eq!(
            mem[0].line(),
            "preflight memory: skipped (listed in preflight.skip)"
        );
        let f = failed(&r, Check::Settings);
        assert!(f[0].line().contains("found: unknown check `dsik`; fix: use one of: memory, disk, architecture, kernel-modules, sysctls, ports"), "{}", f[0].line());
    }

    #[test]
    fn this_machine_smoke() {
        // The real /proc: no assertion on the machine, only that every check answers.
        let r = run(Path::new("/"), &settings(), &policy(Role::Worker));
        for l in r.lines() {
            println!("{l}");
        }
        assert_eq!(r.checks.len(), 8);
        assert!(r.checks.iter().all(|c| !c.found.is_empty()));
    }
}

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

mod host;
mod kernel;
mod ports;
mod report;

pub(crate) use host::free_bytes;
pub use host::SUPPORTED_ARCHITECTURES;
pub use kernel::{
    ensure, module_state, ModuleState, PreflightError, REQUIRED_MODULES, REQUIRED_SYSCTLS,
};
pub use ports::{bound_sockets, BoundSocket};
pub use report::{Check, CheckResult, PreflightReport, Status};

use std::path::Path;

use nodeimage_core::config::PreflightSettings;
use nodeimage_core::ports::PortPolicy;

use host::{architecture, disk, memory};
use kernel::{module, sysctl};
use ports::ports;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    use nodeimage_core::config::Role;
    use nodeimage_core::files::rooted;
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
        test_support::assert_contains(
            &line,
            &["GiB free on the filesystem of", "fix: grow the disk"],
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

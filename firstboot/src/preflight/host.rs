//! The machine: memory, disk space for `/var`, architecture.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::report::{read, Check, CheckResult};
use nodeimage_core::files::rooted;

/// Architectures the image is built for (Pharos 001: x86-64 and ARM64).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["x86_64", "aarch64"];

pub(super) fn memory(root: &Path, min_mib: u64) -> CheckResult {
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
pub(crate) fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: all-zero is a valid statvfs; c is a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

pub(super) fn disk(root: &Path, min_gib: u64) -> CheckResult {
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

pub(super) fn architecture(root: &Path) -> CheckResult {
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

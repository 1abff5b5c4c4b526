//! Power cuts on demand, for the power-cut test: `firstboot.fault=<point>` on the kernel
//! command line makes `firstboot` (and `firstboot state-setup` in the initramfs) cut the
//! power at that point, exactly as a power failure would: `reboot(RB_POWER_OFF)` with no
//! sync, so whatever sits in the page cache and was not made durable is lost.
//!
//! The hook is always compiled in and harmless: it only ever powers the machine off, and
//! the kernel command line is fixed in the image's boot loader entry (whose editor is
//! off), so whoever can set it can already do anything to the node.
//!
//! The points, in the order a first boot passes them:
//!
//! | point | where |
//! |---|---|
//! | `gpt-backup` | state setup: the new backup GPT is written and synced, the primary not yet |
//! | `gpt-primary-array` | the primary partition array is written, its header not yet (torn) |
//! | `gpt-written` | the GPT is as planned (written and synced, or already so), nothing formatted |
//! | `mkfs` | while `mkfs.ext4` runs (after it has written 1 MiB, before it exits) |
//! | `var-copy` | in the middle of copying the image's `/var` (after 100 entries) |
//! | `state-ready` | the state file system is complete and mounted, `/etc` overlaid |
//! | `after-step:<name>` | firstboot: step `<name>` is done and journaled |
//! | `after-status` | firstboot: `status.json` is written, the `done` marker not yet |

use std::sync::OnceLock;

/// The point named on this boot's kernel command line, if any.
fn armed() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| {
            let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
            point_of(&cmdline)
        })
        .as_deref()
}

/// The `firstboot.fault=` value of a kernel command line.
pub fn point_of(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("firstboot.fault="))
        .next_back()
        .map(str::to_string)
}

/// True when this boot is to be cut at `point`.
pub fn is_armed(point: &str) -> bool {
    armed() == Some(point)
}

/// Cut the power now if this boot is to be cut at `point`; otherwise do nothing.
pub fn cut(point: &str) {
    if is_armed(point) {
        cut_now(point);
    }
}

/// Cut the power now: say so on the console, then power off without syncing.
pub fn cut_now(point: &str) -> ! {
    let line = format!("firstboot: fault point {point}: cutting the power (no sync)");
    eprintln!("{line}");
    if let Ok(mut k) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        use std::io::Write;
        let _ = writeln!(k, "{line}");
    }
    // Give the serial console a moment to print the line; nothing is synced meanwhile.
    std::thread::sleep(std::time::Duration::from_millis(200));
    // SAFETY: reboot(2) with a valid command; it does not return on success.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    panic!(
        "fault point {point}: reboot(RB_POWER_OFF) failed: {}",
        std::io::Error::last_os_error()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_point_comes_from_the_last_fault_argument() {
        assert_eq!(point_of("ro quiet"), None);
        assert_eq!(
            point_of("root=x firstboot.fault=mkfs ro").as_deref(),
            Some("mkfs")
        );
        assert_eq!(
            point_of("firstboot.fault=a firstboot.fault=after-step:files").as_deref(),
            Some("after-step:files")
        );
        assert_eq!(point_of("firstboot.faults=x"), None);
    }
}

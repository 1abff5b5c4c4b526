//! Which kernel modules an image keeps.
//!
//! Debian's kernel package carries a module for nearly every device there is; a node
//! needs those of servers, virtual machines and the supported boards, and none of the
//! desktop's. The rule: every module is kept except those under [`DROPPED`], the device
//! classes no Kubernetes node uses (graphics, sound, video capture and TV, wireless LAN
//! and Bluetooth, NFC, staging drivers, industrial sensors and lab cards, ISDN, game and
//! touch input); a dropped module that a kept one needs (modules.dep lists each module's
//! dependencies in full) is kept after all. Storage, NICs, virtual devices (virtio,
//! Hyper-V, Xen), netfilter, overlay, erofs, VXLAN, IPsec, WireGuard, InfiniBand, USB,
//! MMC, the SoC drivers of boards: all stay.
//!
//! `depmod` then rewrites the module index for what is left, before the initramfs is
//! made from it.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

/// Directories (relative to `/lib/modules/<version>/`) whose modules an image drops, and
/// why a node has no use for them.
pub const DROPPED: &[(&str, &str)] = &[
    ("kernel/drivers/gpu/", "graphics"),
    ("kernel/drivers/media/", "video capture, TV, cameras"),
    ("kernel/sound/", "sound"),
    ("kernel/drivers/net/wireless/", "wireless LAN"),
    ("kernel/net/wireless/", "wireless LAN"),
    ("kernel/net/mac80211/", "wireless LAN"),
    ("kernel/drivers/bluetooth/", "Bluetooth"),
    ("kernel/net/bluetooth/", "Bluetooth"),
    ("kernel/drivers/nfc/", "NFC"),
    ("kernel/net/nfc/", "NFC"),
    ("kernel/drivers/staging/", "staging (unfinished) drivers"),
    ("kernel/drivers/iio/", "industrial sensors"),
    (
        "kernel/drivers/comedi/",
        "laboratory data acquisition cards",
    ),
    ("kernel/drivers/isdn/", "ISDN"),
    ("kernel/drivers/input/joystick/", "game controllers"),
    ("kernel/drivers/input/touchscreen/", "touchscreens"),
    ("kernel/drivers/input/tablet/", "graphics tablets"),
];

/// What [`prune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub kept: usize,
    pub dropped: usize,
    /// Dropped by the rule but kept because a kept module needs them.
    pub kept_as_dependency: usize,
    pub bytes_dropped: u64,
}

/// Which modules of a modules.dep to keep: (kept, kept only as a dependency).
pub fn select(modules_dep: &str) -> (BTreeSet<String>, usize) {
    let mut deps: Vec<(String, Vec<String>)> = Vec::new();
    for line in modules_dep.lines() {
        let Some((m, d)) = line.split_once(':') else {
            continue;
        };
        deps.push((
            m.trim().to_string(),
            d.split_whitespace().map(str::to_string).collect(),
        ));
    }
    let dropped = |m: &str| DROPPED.iter().any(|(dir, _)| m.starts_with(dir));
    let mut keep: BTreeSet<String> = deps
        .iter()
        .filter(|(m, _)| !dropped(m))
        .map(|(m, _)| m.clone())
        .collect();
    // depmod lists every module's dependencies in full; go on to a fixed point anyway,
    // so a list that is not closed cannot leave a kept module without one.
    let mut needed = 0;
    loop {
        let before = needed;
        for (m, d) in &deps {
            if keep.contains(m) {
                for dep in d {
                    if keep.insert(dep.clone()) {
                        needed += 1;
                    }
                }
            }
        }
        if needed == before {
            return (keep, needed);
        }
    }
}

/// Remove the modules of `<root>/lib/modules/<version>` that [`select`] does not keep.
/// The caller runs `depmod` afterwards.
pub fn prune(root: &Path, version: &str) -> Result<Pruned> {
    let dir = root.join("lib/modules").join(version);
    let dep_file = dir.join("modules.dep");
    let text =
        fs::read_to_string(&dep_file).with_context(|| format!("reading {}", dep_file.display()))?;
    let all: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(':').map(|(m, _)| m.trim()))
        .collect();
    let (keep, kept_as_dependency) = select(&text);
    let mut dropped = 0;
    let mut bytes_dropped = 0;
    for m in all.iter().filter(|m| !keep.contains(**m)) {
        let path = dir.join(m);
        match fs::symlink_metadata(&path) {
            Ok(meta) => {
                bytes_dropped += meta.len();
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                dropped += 1;
            }
            // modules.dep names a module the package did not ship: nothing to drop.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    for (d, _) in DROPPED {
        remove_empty_dirs(&dir.join(d))?;
    }
    Ok(Pruned {
        kept: keep.len(),
        dropped,
        kept_as_dependency,
        bytes_dropped,
    })
}

/// Remove `dir` and the directories below it that hold no file any more.
fn remove_empty_dirs(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_type()?.is_dir() {
            remove_empty_dirs(&e.path())?;
        }
    }
    if fs::read_dir(dir)?.next().is_none() {
        fs::remove_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/erofs/erofs.ko:
kernel/drivers/gpu/drm/drm.ko:
kernel/drivers/gpu/drm/virtio/virtio-gpu.ko: kernel/drivers/gpu/drm/drm.ko
kernel/drivers/hid/hid-sensor-hub.ko: kernel/drivers/iio/industrialio.ko
kernel/drivers/iio/industrialio.ko:
kernel/sound/core/snd.ko:
kernel/drivers/net/vxlan/vxlan.ko: kernel/net/ipv4/udp_tunnel.ko
kernel/net/ipv4/udp_tunnel.ko:
";

    #[test]
    fn drops_the_desktop_classes_but_not_what_a_kept_module_needs() {
        let (keep, needed) = select(DEP);
        assert_eq!(
            keep.into_iter().collect::<Vec<_>>(),
            [
                "kernel/drivers/hid/hid-sensor-hub.ko",
                "kernel/drivers/iio/industrialio.ko",
                "kernel/drivers/net/vxlan/vxlan.ko",
                "kernel/fs/erofs/erofs.ko",
                "kernel/net/ipv4/udp_tunnel.ko",
            ]
        );
        assert_eq!(needed, 1, "industrialio stays for hid-sensor-hub");
    }

    #[test]
    fn prune_removes_files_and_empty_directories() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("lib/modules/6.1.0-test");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("modules.dep"), DEP).unwrap();
        for line in DEP.lines() {
            let m = dir.join(line.split_once(':').unwrap().0);
            fs::create_dir_all(m.parent().unwrap()).unwrap();
            fs::write(&m, b"\x7fELF module").unwrap();
        }
        let p = prune(d.path(), "6.1.0-test").unwrap();
        assert_eq!(
            p,
            Pruned {
                kept: 5,
                dropped: 3,
                kept_as_dependency: 1,
                bytes_dropped: 3 * 11
            }
        );
        assert!(!dir.join("kernel/drivers/gpu").exists());
        assert!(!dir.join("kernel/sound").exists());
        assert!(dir.join("kernel/drivers/iio/industrialio.ko").exists());
        assert!(dir.join("kernel/fs/erofs/erofs.ko").exists());
    }
}

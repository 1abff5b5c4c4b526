//! The boot loader's side of A/B updates, on the ESP (`layout::esp`): one systemd-boot
//! entry per installed image, the newest generation booted first, an update's entry
//! with a boot counter that systemd-boot counts down, and the blessing that removes the
//! counter once a boot is healthy. Functions take the ESP's directory (mounted with
//! [`EspMount`] on a node, a temporary directory in tests).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nodeimage_core::layout::esp;

/// Where the ESP is mounted while entries change.
pub const MOUNT_POINT: &str = "/run/nodeimage/esp";

/// The entries on the ESP: (file name, generation, slot, counted).
pub fn entries(esp_dir: &Path) -> Result<Vec<(String, u32, String, bool)>> {
    let dir = esp_dir.join("loader/entries");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some((g, s, c)) = esp::parse_entry(&name) {
            out.push((name, g, s, c));
        }
    }
    out.sort();
    Ok(out)
}

/// Remove every entry that boots `slot` and its kernel and initrd (before the slot is
/// overwritten: nothing may boot a half-written slot).
pub fn remove_slot(esp_dir: &Path, slot: &str) -> Result<()> {
    for (name, _, s, _) in entries(esp_dir)? {
        if s == slot {
            let p = esp_dir.join("loader/entries").join(&name);
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    for f in [esp::kernel(slot), esp::initrd(slot)] {
        let _ = fs::remove_file(esp_dir.join(f));
    }
    sync(esp_dir)
}

/// The generation the next image gets: one more than the newest entry's.
pub fn next_generation(esp_dir: &Path) -> Result<u32> {
    Ok(entries(esp_dir)?.iter().map(|e| e.1).max().unwrap_or(0) + 1)
}

/// Copy `src` to `dst` on the ESP through a temporary name, synced.
fn put(src: &Path, dst: &Path) -> Result<()> {
    if let Some(d) = dst.parent() {
        fs::create_dir_all(d)?;
    }
    let tmp = dst.with_extension("tmp");
    fs::copy(src, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, dst).with_context(|| format!("renaming {} into place", dst.display()))?;
    Ok(())
}

/// Install `slot`'s kernel and initrd and its entry of `generation`, with
/// [`esp::UPDATE_TRIES`] tries: systemd-boot boots it next. Returns the entry's path.
pub fn install(
    esp_dir: &Path,
    generation: u32,
    slot: &str,
    kernel: &Path,
    initrd: &Path,
    title: &str,
    cmdline: &str,
) -> Result<PathBuf> {
    put(kernel, &esp_dir.join(esp::kernel(slot)))?;
    put(initrd, &esp_dir.join(esp::initrd(slot)))?;
    let entry = esp_dir.join(esp::entry(generation, slot, Some(esp::UPDATE_TRIES)));
    let tmp = esp_dir.join("loader/entry.tmp");
    fs::write(&tmp, esp::entry_text(title, slot, cmdline))?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, &entry)?;
    sync(esp_dir)?;
    Ok(entry)
}

/// Once a boot of `slot` is healthy: drop the boot counter from its entry (systemd's
/// `systemd-bless-boot` does the same), so it is never given up. Returns the entry
/// blessed, if one had a counter.
pub fn bless(esp_dir: &Path, slot: &str) -> Result<Option<String>> {
    let newest = entries(esp_dir)?
        .into_iter()
        .filter(|e| e.2 == slot)
        .max_by_key(|e| e.1);
    match newest {
        Some((name, generation, _, true)) => {
            let dir = esp_dir.join("loader/entries");
            let to = esp::entry(generation, slot, None);
            let to = esp_dir.join(to);
            fs::rename(dir.join(&name), &to)
                .with_context(|| format!("renaming {name} to {}", to.display()))?;
            sync(esp_dir)?;
            Ok(Some(name))
        }
        _ => Ok(None),
    }
}

/// Sync the ESP: a FAT file system syncs as a whole (`syncfs`).
fn sync(dir: &Path) -> Result<()> {
    let f = fs::File::open(dir)?;
    // SAFETY: syncfs on an open descriptor.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } != 0 {
        anyhow::bail!(
            "syncing {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The ESP of `disk`, mounted at [`MOUNT_POINT`] until dropped.
pub struct EspMount {
    pub dir: PathBuf,
}

impl EspMount {
    /// Mount the ESP (the partition of the ESP type) of the disk `disk_name`.
    pub fn mount(disk: &Path, disk_name: &str) -> Result<EspMount> {
        let table = crate::state::gpt::read(disk)?;
        let e = table
            .entries()
            .into_iter()
            .find(|e| e.type_guid == crate::state::gpt::ESP)
            .with_context(|| format!("{} has no EFI system partition", disk.display()))?;
        let node = crate::state::partition_node(disk_name, e.number)
            .with_context(|| format!("the ESP (partition {}) has no device node", e.number))?;
        let dir = PathBuf::from(MOUNT_POINT);
        fs::create_dir_all(&dir)?;
        let _ = std::process::Command::new("modprobe")
            .args(["-q", "vfat"])
            .status();
        crate::state::mount(&node.display().to_string(), &dir, "vfat", 0, "")?;
        Ok(EspMount { dir })
    }
}

impl Drop for EspMount {
    fn drop(&mut self) {
        let _ = crate::state::umount(&self.dir, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp_with_slot_a(d: &Path) {
        fs::create_dir_all(d.join("loader/entries")).unwrap();
        fs::create_dir_all(d.join("nodeimage/a")).unwrap();
        fs::write(d.join(esp::entry(1, "a", None)), "title t\n").unwrap();
        fs::write(d.join(esp::kernel("a")), "kernel a").unwrap();
        fs::write(d.join(esp::initrd("a")), "initrd a").unwrap();
    }

    #[test]
    fn an_update_adds_a_counted_newer_entry_then_blessing_keeps_it() {
        let d = tempfile::tempdir().unwrap();
        let esp_dir = d.path().join("esp");
        esp_with_slot_a(&esp_dir);
        let k = d.path().join("k");
        let i = d.path().join("i");
        fs::write(&k, "kernel b").unwrap();
        fs::write(&i, "initrd b").unwrap();
        assert_eq!(next_generation(&esp_dir).unwrap(), 2);
        remove_slot(&esp_dir, "b").unwrap();
        let e = install(&esp_dir, 2, "b", &k, &i, "t 2", "root=PARTUUID=x ro").unwrap();
        assert!(
            e.ends_with("loader/entries/nodeimage-2-b+3.conf"),
            "{}",
            e.display()
        );
        assert_eq!(
            fs::read_to_string(&e).unwrap(),
            "title t 2\nlinux /nodeimage/b/vmlinuz\ninitrd /nodeimage/b/initrd.img\noptions root=PARTUUID=x ro\n"
        );
        assert_eq!(
            fs::read_to_string(esp_dir.join("nodeimage/b/vmlinuz")).unwrap(),
            "kernel b"
        );
        // systemd-boot counted one try down; then the boot was healthy.
        fs::rename(&e, esp_dir.join("loader/entries/nodeimage-2-b+2-1.conf")).unwrap();
        assert_eq!(
            bless(&esp_dir, "b").unwrap().as_deref(),
            Some("nodeimage-2-b+2-1.conf")
        );
        let names: Vec<_> = entries(&esp_dir)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(names, ["nodeimage-1-a.conf", "nodeimage-2-b.conf"]);
        assert_eq!(bless(&esp_dir, "b").unwrap(), None, "nothing left to bless");
        // The next update goes to slot a: its old entry and kernel leave first.
        remove_slot(&esp_dir, "a").unwrap();
        let names: Vec<_> = entries(&esp_dir)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(names, ["nodeimage-2-b.conf"]);
        assert!(!esp_dir.join("nodeimage/a/vmlinuz").exists());
        assert_eq!(next_generation(&esp_dir).unwrap(), 3);
    }
}

//! The writable state partition, set up from the initramfs before `/sbin/init` runs.
//!
//! The image's root filesystem is read-only erofs. On first boot this module appends a
//! partition named [`STATE_PARTITION_NAME`] filling the rest of the disk, formats it
//! ext4 and copies the image's `/var` into it; on every boot it grows the partition when
//! the disk has grown, mounts it on `/var` and mounts an overlay over `/etc` whose upper
//! layer lives on it. So `/etc` is writable (hostname, kubernetes configs, units from
//! Ignition) and everything written survives reboots, while the image stays immutable.

use std::ffi::CString;
use std::fs;
use std::io::Seek;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use nodeimage_core::retry::{wait_until, Backoff, Deadline, Poll, TimedOut};

/// GPT partition name of the state partition.
pub const STATE_PARTITION_NAME: &str = "nodeimage-state";
/// ext4 label of the state filesystem.
pub const STATE_FS_LABEL: &str = "nodeimage-state";
/// Where, under `/var`, the upper and work directories of the `/etc` overlay live.
pub const ETC_OVERLAY_DIR: &str = "lib/nodeimage/etc";

const SECTOR: u64 = 512;
const ALIGN_SECTORS: u64 = 2048; // 1 MiB

/// What [`plan`] decided for the state partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatePlan {
    /// Append a new partition with this number covering `first..=last` (LBAs).
    Create { number: u32, first: u64, last: u64 },
    /// The partition exists; grow its end from `old_last` to `last`.
    Grow {
        number: u32,
        first: u64,
        old_last: u64,
        last: u64,
    },
    /// The partition exists and already fills the disk.
    Keep { number: u32, first: u64, last: u64 },
}

/// Decide what to do, from the existing partitions and the disk's last usable LBA
/// (after the backup GPT has been moved to the disk's end). Pure, for tests.
pub fn plan(partitions: &[(u32, String, u64, u64)], last_usable: u64) -> Result<StatePlan> {
    // Keep the end aligned, as partitioning tools do.
    let aligned_last = (last_usable + 1) / ALIGN_SECTORS * ALIGN_SECTORS - 1;
    if let Some((n, _, first, last)) = partitions.iter().find(|p| p.1 == STATE_PARTITION_NAME) {
        if aligned_last > *last && partitions.iter().all(|p| p.2 <= *first || p.0 == *n) {
            return Ok(StatePlan::Grow {
                number: *n,
                first: *first,
                old_last: *last,
                last: aligned_last,
            });
        }
        return Ok(StatePlan::Keep {
            number: *n,
            first: *first,
            last: *last,
        });
    }
    let end_of_last = partitions.iter().map(|p| p.3).max().unwrap_or(2047);
    let first = (end_of_last + 1).div_ceil(ALIGN_SECTORS) * ALIGN_SECTORS;
    let number = partitions.iter().map(|p| p.0).max().unwrap_or(0) + 1;
    // At least 64 MiB, or there is no point.
    if aligned_last < first + 64 * 2048 {
        bail!(
            "the disk has no room for the state partition: {} MiB free after the image's partitions; grow the disk (at least 1 GiB is sensible)",
            (last_usable.saturating_sub(first) + 1) * SECTOR / (1 << 20)
        );
    }
    Ok(StatePlan::Create {
        number,
        first,
        last: aligned_last,
    })
}

/// Rewrite the GPT of `disk` (a block device or an image file) so that its backup header
/// sits at the end of the disk and the state partition is created or grown per [`plan`].
/// Returns the plan that was applied.
pub fn apply_gpt(disk: &Path) -> Result<StatePlan> {
    let lb = gpt::disk::LogicalBlockSize::Lb512;
    let old = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(lb)
        .open(disk)
        .with_context(|| format!("reading the GPT of {}", disk.display()))?;
    let disk_guid = *old.guid();
    let mut parts = old.partitions().clone();
    drop(old);

    let file = fs::OpenOptions::new().read(true).write(true).open(disk)?;
    // A new header set computed from the device's current size: this moves the backup
    // header to the end when the disk has grown.
    let mut new = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .create_from_device(file, Some(disk_guid))
        .context("computing the GPT headers for the grown disk")?;
    let last_usable = new.header().last_usable;
    let summary: Vec<(u32, String, u64, u64)> = parts
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, p)| (*n, p.name.clone(), p.first_lba, p.last_lba))
        .collect();
    let decided = plan(&summary, last_usable)?;
    match &decided {
        StatePlan::Create {
            number,
            first,
            last,
        } => {
            parts.insert(
                *number,
                gpt::partition::Partition {
                    part_type_guid: gpt::partition_types::LINUX_FS,
                    part_guid: uuid::Uuid::new_v4(),
                    first_lba: *first,
                    last_lba: *last,
                    flags: 0,
                    name: STATE_PARTITION_NAME.to_string(),
                },
            );
        }
        StatePlan::Grow { number, last, .. } => {
            parts
                .get_mut(number)
                .expect("planned from this table")
                .last_lba = *last;
        }
        StatePlan::Keep { .. } => {}
    }
    new.update_partitions(parts)
        .context("updating the partition table")?;
    new.write_inplace()
        .with_context(|| format!("writing the GPT of {}", disk.display()))?;
    write_protective_mbr(disk)?;
    Ok(decided)
}

/// (Re)write the protective MBR so that it covers the whole (possibly grown) disk.
pub fn write_protective_mbr(disk: &Path) -> Result<()> {
    let mut f = fs::OpenOptions::new().read(true).write(true).open(disk)?;
    let sectors = f.seek(std::io::SeekFrom::End(0))? / SECTOR;
    let size = u32::try_from(sectors.saturating_sub(1)).unwrap_or(u32::MAX);
    gpt::mbr::ProtectiveMBR::with_lb_size(size)
        .overwrite_lba0(&mut f)
        .with_context(|| format!("writing the protective MBR of {}", disk.display()))?;
    f.sync_all()?;
    Ok(())
}

/// The whole-disk device holding the filesystem mounted at `mountpoint`.
pub fn disk_of_mount(mountpoint: &Path) -> Result<(PathBuf, String)> {
    let dev = fs::metadata(mountpoint)
        .with_context(|| format!("stat {}", mountpoint.display()))?
        .dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let real = fs::canonicalize(&sys).with_context(|| format!("resolving {}", sys.display()))?;
    if !real.join("partition").exists() {
        bail!(
            "{} ({major}:{minor}) is not a partition of a disk",
            mountpoint.display()
        );
    }
    let disk = real.parent().context("partition without parent")?;
    let name = disk.file_name().unwrap().to_string_lossy().into_owned();
    Ok((PathBuf::from("/dev").join(&name), name))
}

/// Name of partition `number` of `disk` (vda4, nvme0n1p4, mmcblk0p4), from sysfs.
fn partition_name(disk_name: &str, number: u32) -> Option<String> {
    let dir = Path::new("/sys/block").join(disk_name);
    fs::read_dir(&dir).ok()?.flatten().find_map(|e| {
        let n = fs::read_to_string(e.path().join("partition")).ok()?;
        (n.trim() == number.to_string()).then(|| e.file_name().to_string_lossy().into_owned())
    })
}

#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: libc::c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_ADD_PARTITION: libc::c_int = 1;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

/// Tell the kernel about a new or resized partition without re-reading the whole table
/// (which fails while the root partition of the same disk is mounted).
fn blkpg(disk: &Path, op: libc::c_int, number: u32, first: u64, last: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    let mut part = BlkpgPartition {
        start: (first * SECTOR) as i64,
        length: ((last - first + 1) * SECTOR) as i64,
        pno: number as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: &mut part as *mut _ as *mut libc::c_void,
    };
    // SAFETY: BLKPG takes a pointer to a blkpg_ioctl_arg whose data points to a
    // blkpg_partition; both are laid out as in <linux/blkpg.h> and outlive the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKPG as _, &mut arg) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("BLKPG on {} for partition {number}: {err}", disk.display());
    }
    Ok(())
}

/// Wait until the partition's device node exists (udev creates it); create it from
/// sysfs ourselves if udev is slow or absent.
fn wait_for_node(disk_name: &str, number: u32) -> Result<PathBuf> {
    let waited = wait_until(
        &Deadline::after(Duration::from_secs(10)),
        &mut Backoff::constant(Duration::from_millis(50)),
        |_| match partition_name(disk_name, number) {
            Some(name) => {
                let node = PathBuf::from("/dev").join(&name);
                if node.exists() {
                    Poll::Ready(node)
                } else {
                    Poll::Pending(Some(name))
                }
            }
            None => Poll::Pending(None),
        },
    );
    let name = match waited {
        Ok(node) => return Ok(node),
        Err(TimedOut {
            last: Some(name), ..
        }) => name,
        Err(_) => bail!("partition {number} of {disk_name} did not appear in sysfs"),
    };
    let node = PathBuf::from("/dev").join(&name);
    let devnum = fs::read_to_string(format!("/sys/class/block/{name}/dev"))?;
    let (ma, mi) = devnum.trim().split_once(':').context("bad dev file")?;
    let dev = libc::makedev(ma.parse()?, mi.parse()?);
    let c = CString::new(node.as_os_str().as_encoded_bytes())?;
    // SAFETY: plain mknod(2) on a NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, dev) } != 0 {
        bail!(
            "creating {}: {}",
            node.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(node)
}

fn mount(src: &str, target: &Path, fstype: &str, flags: libc::c_ulong, data: &str) -> Result<()> {
    let c = |s: &str| CString::new(s).expect("no NUL");
    let t = CString::new(target.as_os_str().as_encoded_bytes())?;
    let (s, f, d) = (c(src), c(fstype), c(data));
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            d.as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        bail!(
            "mounting {src} ({fstype}) on {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn umount(target: &Path) -> Result<()> {
    let t = CString::new(target.as_os_str().as_encoded_bytes())?;
    // SAFETY: umount(2) on a NUL-terminated path.
    if unsafe { libc::umount(t.as_ptr()) } != 0 {
        bail!(
            "unmounting {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Copy a tree preserving owners, modes, symlinks and modification times.
pub fn copy_preserving(src: &Path, dst: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else if ft.is_dir() {
        fs::create_dir_all(dst)?;
        let mut entries: Vec<_> = fs::read_dir(src)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            copy_preserving(&e.path(), &dst.join(e.file_name()))?;
        }
    } else if ft.is_file() {
        fs::copy(src, dst)?;
    } else {
        // Sockets, fifos, devices have no place in an image's /var; skip them.
        return Ok(());
    }
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    if !ft.is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        let times = [
            libc::timespec {
                tv_sec: meta.atime(),
                tv_nsec: meta.atime_nsec(),
            },
            libc::timespec {
                tv_sec: meta.mtime(),
                tv_nsec: meta.mtime_nsec(),
            },
        ];
        let c = CString::new(dst.as_os_str().as_encoded_bytes())?;
        // SAFETY: utimensat(2) with a valid path and two timespecs.
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    }
    Ok(())
}

/// Initramfs entry point: create or grow the state partition of the disk holding the
/// root mounted at `rootmnt`, mount it on `<rootmnt>/var` and overlay `<rootmnt>/etc`.
pub fn setup(rootmnt: &Path) -> Result<()> {
    let started = Instant::now();
    let _ = Command::new("modprobe")
        .args(["-a", "ext4", "overlay"])
        .status();
    let (disk, disk_name) = disk_of_mount(rootmnt)?;
    let decided = apply_gpt(&disk)?;
    let (number, created) = match decided {
        StatePlan::Create {
            number,
            first,
            last,
        } => {
            blkpg(&disk, BLKPG_ADD_PARTITION, number, first, last)?;
            (number, true)
        }
        StatePlan::Grow {
            number,
            first,
            last,
            ..
        } => {
            blkpg(&disk, BLKPG_RESIZE_PARTITION, number, first, last)?;
            (number, false)
        }
        StatePlan::Keep { number, .. } => (number, false),
    };
    let node = wait_for_node(&disk_name, number)?;
    let var = rootmnt.join("var");
    if created {
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", STATE_FS_LABEL])
            .arg(&node))
        .context("formatting the state partition")?;
        let staging = PathBuf::from("/run/nodeimage-state");
        fs::create_dir_all(&staging)?;
        mount(&node.to_string_lossy(), &staging, "ext4", 0, "")?;
        // The image's /var becomes the starting content of the state partition.
        let mut entries: Vec<_> = fs::read_dir(&var)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            copy_preserving(&e.path(), &staging.join(e.file_name()))?;
        }
        umount(&staging)?;
    }
    mount(&node.to_string_lossy(), &var, "ext4", 0, "")?;
    if matches!(decided, StatePlan::Grow { .. }) {
        // Online grow of the mounted filesystem.
        run(Command::new("resize2fs").arg(&node)).context("growing the state filesystem")?;
    }
    let upper = var.join(ETC_OVERLAY_DIR).join("upper");
    let work = var.join(ETC_OVERLAY_DIR).join("work");
    fs::create_dir_all(&upper)?;
    fs::create_dir_all(&work)?;
    let etc = rootmnt.join("etc");
    mount(
        "overlay",
        &etc,
        "overlay",
        0,
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            etc.display(),
            upper.display(),
            work.display()
        ),
    )?;
    eprintln!(
        "nodeimage: state partition {} {} and mounted on /var, /etc overlaid ({} ms)",
        node.display(),
        match decided {
            StatePlan::Create { .. } => "created",
            StatePlan::Grow { .. } => "grown",
            StatePlan::Keep { .. } => "found",
        },
        started.elapsed().as_millis()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_parts() -> Vec<(u32, String, u64, u64)> {
        vec![
            (1, "ESP".into(), 2048, 2048 + 256 * 2048 - 1),
            (2, "root-x86-64".into(), 526336, 526336 + 600 * 2048 - 1),
            (3, "NODECONFIG".into(), 1755136, 1755136 + 16 * 2048 - 1),
        ]
    }

    #[test]
    fn creates_after_last_partition_aligned_to_the_end() {
        let last_usable = 8 * 1024 * 2048 - 34; // 8 GiB disk
        match plan(&image_parts(), last_usable).unwrap() {
            StatePlan::Create {
                number,
                first,
                last,
            } => {
                assert_eq!(number, 4);
                assert_eq!(first, 1755136 + 16 * 2048);
                assert_eq!(first % 2048, 0);
                assert_eq!((last + 1) % 2048, 0);
                assert!(last <= last_usable);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn grows_when_the_disk_grew_and_keeps_otherwise() {
        let mut parts = image_parts();
        parts.push((4, STATE_PARTITION_NAME.into(), 1787904, 4 * 1024 * 2048 - 1));
        assert!(matches!(
            plan(&parts, 4 * 1024 * 2048 + 100).unwrap(),
            StatePlan::Keep { number: 4, .. }
        ));
        match plan(&parts, 8 * 1024 * 2048 - 34).unwrap() {
            StatePlan::Grow {
                number: 4,
                old_last,
                last,
                ..
            } => assert!(last > old_last),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn too_small_disk_is_a_clear_error() {
        let e = plan(&image_parts(), 1755136 + 16 * 2048 + 1000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no room for the state partition"), "{e}");
    }

    #[test]
    fn apply_gpt_on_a_grown_image_file_moves_backup_and_adds_state() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        // A 64 MiB image with one partition, as the builder writes it.
        {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&img)
                .unwrap();
            f.set_len(64 << 20).unwrap();
            let mut d = gpt::GptConfig::new()
                .writable(true)
                .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
                .create_from_device(f, Some(uuid::Uuid::nil()))
                .unwrap();
            d.add_partition_at("ESP", 1, 2048, 32 * 2048, gpt::partition_types::EFI, 0)
                .unwrap();
            d.write().unwrap();
        }
        write_protective_mbr(&img).unwrap();
        // The user grows the disk to 512 MiB.
        fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        let planned = apply_gpt(&img).unwrap();
        assert!(
            matches!(planned, StatePlan::Create { number: 2, .. }),
            "{planned:?}"
        );
        // sfdisk (util-linux) must accept the result without complaints about the backup header.
        let out = Command::new("sfdisk")
            .arg("--json")
            .arg(&img)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("backup"),
            "{stderr}"
        );
        let json = String::from_utf8_lossy(&out.stdout);
        assert!(json.contains(STATE_PARTITION_NAME), "{json}");
        // Running again keeps it.
        assert!(matches!(
            apply_gpt(&img).unwrap(),
            StatePlan::Keep { number: 2, .. }
        ));
    }
}

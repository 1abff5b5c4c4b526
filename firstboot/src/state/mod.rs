//! The writable state partition, set up from the initramfs before `/sbin/init` runs.
//!
//! The image's root filesystem is read-only erofs. On first boot this module appends a
//! partition named [`STATE_PARTITION_NAME`] filling the rest of the disk, formats it
//! ext4 and copies the image's `/var` into it; on every boot it grows the partition when
//! the disk has grown, mounts it on `/var` and mounts an overlay over `/etc` whose upper
//! layer lives on it. So `/etc` is writable (hostname, kubernetes configs, units from
//! Ignition) and everything written survives reboots, while the image stays immutable.
//!
//! A power cut at any moment leaves a disk the next boot completes:
//!
//! * the GPT is read with both copies checked and written backup first, each phase
//!   synced ([`gpt`]); it is not written at all when nothing changes;
//! * the state partition is the entry of type Linux filesystem whose unique GUID is
//!   [`state_partition_guid`] of the disk's GUID, not whatever carries its name; an entry
//!   with the name but another type or GUID is refused, never formatted;
//! * the file system is made with the label [`STATE_FS_LABEL_INCOMPLETE`] and gets
//!   [`STATE_FS_LABEL`] only once the copy of `/var` is synced and the file system is
//!   unmounted cleanly: a partition without the complete label is formatted and filled
//!   again, and one with it is never formatted, even when its table entry was lost;
//! * a grow that was cut between the table and `resize2fs` is finished on the next boot.

pub mod ext4;
pub mod gpt;

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::fault;
use gpt::Entry;
use nodeimage_core::retry::{wait_until, Backoff, Deadline, Poll, TimedOut};

/// GPT partition name of the state partition.
pub const STATE_PARTITION_NAME: &str = nodeimage_core::layout::STATE_PARTITION_NAME;
/// ext4 label of the complete state filesystem.
pub const STATE_FS_LABEL: &str = nodeimage_core::layout::STATE_FS_LABEL;
/// ext4 label of a state filesystem being made: formatted, `/var` not yet copied in full.
pub const STATE_FS_LABEL_INCOMPLETE: &str = "nodeimage-init";
/// Where, under `/var`, the upper and work directories of the `/etc` overlay live.
pub const ETC_OVERLAY_DIR: &str = "lib/nodeimage/etc";

const SECTOR: u64 = gpt::SECTOR;
const ALIGN_SECTORS: u64 = 2048; // 1 MiB

/// The unique GUID of the state partition of the disk whose GUID is `disk`: derived, so
/// every boot knows which entry is the state partition without trusting its name.
pub fn state_partition_guid(disk: &Uuid) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"nodeimage/state-partition\0");
    h.update(disk.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0F) | 0x80;
    b[8] = (b[8] & 0x3F) | 0x80;
    Uuid::from_bytes(b)
}

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

impl StatePlan {
    pub fn number(&self) -> u32 {
        match self {
            StatePlan::Create { number, .. }
            | StatePlan::Grow { number, .. }
            | StatePlan::Keep { number, .. } => *number,
        }
    }
    /// The partition's first and last LBA after the plan.
    pub fn extent(&self) -> (u64, u64) {
        match self {
            StatePlan::Create { first, last, .. }
            | StatePlan::Grow { first, last, .. }
            | StatePlan::Keep { first, last, .. } => (*first, *last),
        }
    }
}

/// Decide what to do, from the existing partitions, the disk's last usable LBA (with the
/// backup GPT at the disk's end) and the state partition's GUID. Pure, for tests.
pub fn plan(partitions: &[Entry], last_usable: u64, state_guid: &Uuid) -> Result<StatePlan> {
    // Keep the end aligned, as partitioning tools do. A disk with less than one aligned
    // MiB usable has no aligned end: 0, so nothing is grown and nothing fits.
    let aligned_last =
        (last_usable.saturating_add(1) / ALIGN_SECTORS * ALIGN_SECTORS).saturating_sub(1);
    for p in partitions {
        let ours = p.type_guid == gpt::LINUX_FS && p.part_guid == *state_guid;
        if p.name == STATE_PARTITION_NAME && !ours {
            bail!(
                "partition {} is named {STATE_PARTITION_NAME} but is not this disk's state partition \
                 (type {}, GUID {}; expected type {} and GUID {}): refusing to touch it; \
                 rename or remove it, or restore the entry's type and GUID",
                p.number,
                p.type_guid,
                p.part_guid,
                gpt::LINUX_FS,
                state_guid
            );
        }
    }
    let ours = partitions
        .iter()
        .find(|p| p.type_guid == gpt::LINUX_FS && p.part_guid == *state_guid);
    if let Some(p) = ours {
        if p.first > p.last {
            bail!(
                "partition {} (the state partition) starts at LBA {} after its end at LBA {}: \
                 the partition table is damaged; refusing to grow or reuse it",
                p.number,
                p.first,
                p.last
            );
        }
        if aligned_last > p.last
            && partitions
                .iter()
                .all(|o| o.first <= p.first || o.number == p.number)
        {
            return Ok(StatePlan::Grow {
                number: p.number,
                first: p.first,
                old_last: p.last,
                last: aligned_last,
            });
        }
        return Ok(StatePlan::Keep {
            number: p.number,
            first: p.first,
            last: p.last,
        });
    }
    let end_of_last = partitions.iter().map(|p| p.last).max().unwrap_or(2047);
    // An entry may end anywhere (up to u64::MAX): past the aligned end there is no room.
    let first = end_of_last
        .checked_add(1)
        .and_then(|e| e.checked_next_multiple_of(ALIGN_SECTORS))
        .unwrap_or(u64::MAX);
    let number = partitions.iter().map(|p| p.number).max().unwrap_or(0) + 1;
    // At least 64 MiB, or there is no point.
    if aligned_last < first.saturating_add(64 * 2048) {
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

/// Bring the GPT of `disk` (a block device or an image file) up to date: its backup at
/// the end of the disk, the state partition created or grown per [`plan`], a damaged
/// copy repaired. Written in the crash-safe order of [`gpt::write`], and not at all when
/// nothing changes. Before creating, the target region is probed: a complete state file
/// system found there (its table entry lost) is refused, never formatted over.
/// Returns the plan that was applied and the state partition's GUID.
pub fn apply_gpt(disk: &Path) -> Result<(StatePlan, Uuid)> {
    let mut table = gpt::read(disk)?;
    if table.source == gpt::Copy::Backup {
        eprintln!(
            "nodeimage: the primary GPT of {} is damaged; using the backup and rewriting the primary",
            disk.display()
        );
    }
    let state_guid = state_partition_guid(&table.disk_guid);
    let decided = plan(&table.entries(), table.last_usable(), &state_guid)?;
    match &decided {
        StatePlan::Create {
            number,
            first,
            last,
        } => {
            if let Some(sb) = ext4::probe(disk, first * SECTOR)? {
                if sb.label == STATE_FS_LABEL {
                    bail!(
                        "refusing to create the state partition: LBA {first} of {} already holds a complete \
                         state file system (ext4 `{STATE_FS_LABEL}`, UUID {}, {} MiB) whose partition entry \
                         is missing. To keep it, restore the entry: partition {number}, LBAs {first}..{}, \
                         type {}, GUID {state_guid}, name {STATE_PARTITION_NAME}. To discard it (an earlier \
                         install on this disk), zero its first MiB: dd if=/dev/zero of={} bs=512 seek={first} count=2048 conv=notrunc",
                        disk.display(),
                        sb.uuid,
                        sb.bytes >> 20,
                        first + sb.bytes / SECTOR - 1,
                        gpt::LINUX_FS,
                        disk.display()
                    );
                }
            }
            table.set(&Entry {
                number: *number,
                type_guid: gpt::LINUX_FS,
                part_guid: state_guid,
                first: *first,
                last: *last,
                attrs: 0,
                name: STATE_PARTITION_NAME.to_string(),
            })?;
        }
        StatePlan::Grow { number, last, .. } => {
            let mut e = table
                .entries()
                .into_iter()
                .find(|e| e.number == *number)
                .expect("planned from this table");
            e.last = *last;
            table.set(&e)?;
        }
        StatePlan::Keep { .. } => {}
    }
    gpt::write(disk, &table, gpt::Stop::Complete, &|phase| match phase {
        gpt::Stop::AfterBackup => fault::cut("gpt-backup"),
        gpt::Stop::AfterPrimaryArray => fault::cut("gpt-primary-array"),
        gpt::Stop::Complete => {}
    })?;
    // The table is as planned (written now, or already): nothing formatted yet.
    fault::cut("gpt-written");
    Ok((decided, state_guid))
}

/// The whole-disk device holding the filesystem mounted at `mountpoint`: the disk of its
/// partition, or, for a device-mapper device (the dm-verity root), the one disk all of
/// its underlying partitions are on.
pub fn disk_of_mount(mountpoint: &Path) -> Result<(PathBuf, String)> {
    let dev = fs::metadata(mountpoint)
        .with_context(|| format!("stat {}", mountpoint.display()))?
        .dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let real = fs::canonicalize(&sys).with_context(|| format!("resolving {}", sys.display()))?;
    disk_of_sysfs_device(&real)
        .with_context(|| format!("{} ({major}:{minor})", mountpoint.display()))
}

/// The disk of the partition at sysfs path `real`, looking through stacked devices.
fn disk_of_sysfs_device(real: &Path) -> Result<(PathBuf, String)> {
    if real.join("partition").exists() {
        let disk = real.parent().context("partition without parent")?;
        let name = disk.file_name().unwrap().to_string_lossy().into_owned();
        return Ok((PathBuf::from("/dev").join(&name), name));
    }
    let slaves: Vec<PathBuf> = fs::read_dir(real.join("slaves"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if slaves.is_empty() {
        bail!("{} is not a partition of a disk", real.display());
    }
    let mut disks = Vec::new();
    for s in slaves {
        let s = fs::canonicalize(&s).with_context(|| format!("resolving {}", s.display()))?;
        let d = disk_of_sysfs_device(&s)?;
        if !disks.contains(&d) {
            disks.push(d);
        }
    }
    if disks.len() > 1 {
        let names: Vec<_> = disks.iter().map(|d| d.1.as_str()).collect();
        bail!(
            "{} spans several disks ({}): no one disk for the state partition",
            real.display(),
            names.join(", ")
        );
    }
    Ok(disks.remove(0))
}

/// The device node of partition `number` of the disk `disk_name` (from sysfs).
pub fn partition_node(disk_name: &str, number: u32) -> Option<PathBuf> {
    partition_name(disk_name, number).map(|n| PathBuf::from("/dev").join(n))
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

pub(crate) fn mount(
    src: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<()> {
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

/// umount2(2) of `target` with `flags` (0, or `MNT_DETACH`).
pub(crate) fn umount(target: &Path, flags: libc::c_int) -> Result<()> {
    let t = CString::new(target.as_os_str().as_encoded_bytes())?;
    // SAFETY: umount2(2) on a NUL-terminated path.
    if unsafe { libc::umount2(t.as_ptr(), flags) } != 0 {
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

/// Copy a tree preserving owners, modes, symlinks and modification times, calling
/// `each` after every entry copied.
pub fn copy_preserving(src: &Path, dst: &Path, each: &mut dyn FnMut()) -> Result<()> {
    let meta = fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else if ft.is_dir() {
        fs::create_dir_all(dst)?;
        let mut entries: Vec<_> = fs::read_dir(src)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            copy_preserving(&e.path(), &dst.join(e.file_name()), each)?;
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
    each();
    Ok(())
}

/// Run `mkfs.ext4`; with the `mkfs` fault point armed, cut the power while it runs.
fn mkfs(node: &Path, uuid: &Uuid) -> Result<()> {
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-L", STATE_FS_LABEL_INCOMPLETE, "-U"])
        .arg(uuid.to_string())
        .arg(node);
    if !fault::is_armed("mkfs") {
        return run(&mut cmd).context("formatting the state partition");
    }
    let mut child = cmd.spawn().context("running mkfs.ext4")?;
    let io = PathBuf::from(format!("/proc/{}/io", child.id()));
    loop {
        let written = fs::read_to_string(&io)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("wchar:").map(|v| v.trim().parse::<u64>()))
            })
            .and_then(|r| r.ok())
            .unwrap_or(0);
        if written >= 1 << 20 {
            fault::cut_now("mkfs");
        }
        if let Some(status) = child.try_wait()? {
            eprintln!("nodeimage: fault point mkfs: mkfs.ext4 exited ({status}) before writing 1 MiB; cutting now");
            fault::cut_now("mkfs");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Format the state partition and fill it with the image's `/var`, then mark it
/// complete: the label changes from [`STATE_FS_LABEL_INCOMPLETE`] to [`STATE_FS_LABEL`]
/// only after the copy is synced, and the unmount writes the label in place.
fn make_state_fs(node: &Path, uuid: &Uuid, var: &Path) -> Result<usize> {
    mkfs(node, uuid)?;
    let staging = PathBuf::from("/run/nodeimage-state");
    fs::create_dir_all(&staging)?;
    mount(&node.to_string_lossy(), &staging, "ext4", 0, "")?;
    // The image's /var becomes the starting content of the state partition.
    let mut seen = 0usize;
    let cut_copy = fault::is_armed("var-copy");
    let copied = copy_var(var, &staging, &mut || {
        seen += 1;
        if cut_copy && seen == 100 {
            fault::cut_now("var-copy");
        }
    })
    .context("filling the state partition")?;
    ext4::syncfs(&staging)?;
    ext4::set_label(&staging, STATE_FS_LABEL)?;
    ext4::syncfs(&staging)?;
    umount(&staging, 0)?;
    Ok(copied)
}

/// Mount an overlay over `<rootmnt>/etc` whose upper and work directories live under
/// `var` ([`ETC_OVERLAY_DIR`]).
fn overlay_etc(rootmnt: &Path, var: &Path) -> Result<()> {
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
    )
}

/// Copy the entries of the image's `var` into `dst`, in name order; `each` runs after
/// every entry copied. Returns how many were copied.
fn copy_var(var: &Path, dst: &Path, each: &mut dyn FnMut()) -> Result<usize> {
    let mut copied = 0usize;
    let mut count = || {
        copied += 1;
        each();
    };
    let mut entries: Vec<_> = fs::read_dir(var)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        copy_preserving(&e.path(), &dst.join(e.file_name()), &mut count)
            .with_context(|| format!("copying {} to {}", e.path().display(), dst.display()))?;
    }
    Ok(copied)
}

/// The state of a network-booted node, in RAM (see [`crate::netroot`]): a tmpfs filled
/// at `staging` with the image's `<rootmnt>/var` and then moved onto it, and the `/etc`
/// overlay with its upper layer in that tmpfs. Nothing survives a reboot.
pub fn setup_ram(rootmnt: &Path, staging: &Path) -> Result<()> {
    let started = Instant::now();
    let _ = Command::new("modprobe").args(["-q", "overlay"]).status();
    let var = rootmnt.join("var");
    fs::create_dir_all(staging)?;
    mount("tmpfs", staging, "tmpfs", libc::MS_NODEV, "mode=0755")
        .context("mounting the tmpfs for /var")?;
    let copied = copy_var(&var, staging, &mut || {})?;
    mount(&staging.to_string_lossy(), &var, "", libc::MS_MOVE, "")
        .context("moving the /var tmpfs into place")?;
    overlay_etc(rootmnt, &var)?;
    eprintln!(
        "nodeimage: /var in RAM ({copied} entries of the image's /var), /etc overlaid ({} ms)",
        started.elapsed().as_millis()
    );
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
    let (decided, guid) = apply_gpt(&disk)?;
    let number = decided.number();
    let (first, last) = decided.extent();
    match decided {
        StatePlan::Create { .. } if partition_name(&disk_name, number).is_none() => {
            blkpg(&disk, BLKPG_ADD_PARTITION, number, first, last)?
        }
        StatePlan::Grow { .. } => blkpg(&disk, BLKPG_RESIZE_PARTITION, number, first, last)?,
        _ => {}
    }
    let node = wait_for_node(&disk_name, number)?;
    let var = rootmnt.join("var");
    let part_bytes = (last - first + 1) * SECTOR;
    let found = ext4::probe(&node, 0)?;
    let mut made = None;
    match &found {
        Some(sb) if sb.label == STATE_FS_LABEL => {}
        None => made = Some(make_state_fs(&node, &guid, &var)?),
        Some(sb) if sb.label == STATE_FS_LABEL_INCOMPLETE => {
            eprintln!("nodeimage: the state file system on {} was never completed (an earlier boot stopped while making it); making it again", node.display());
            made = Some(make_state_fs(&node, &guid, &var)?);
        }
        Some(sb) => bail!(
            "{} (partition {number}, the state partition) holds an ext4 file system labelled `{}`, \
             not `{STATE_FS_LABEL}` or `{STATE_FS_LABEL_INCOMPLETE}`: refusing to format it",
            node.display(),
            sb.label
        ),
    }
    mount(&node.to_string_lossy(), &var, "ext4", 0, "")?;
    // Grow the file system to the partition: after a Grow, and after a grow an earlier
    // boot cut between the table and resize2fs.
    let fs_bytes = ext4::probe(&node, 0)?
        .map(|sb| sb.bytes)
        .unwrap_or(part_bytes);
    let grown = fs_bytes + (1 << 20) <= part_bytes;
    if grown {
        run(Command::new("resize2fs").arg(&node)).context("growing the state filesystem")?;
    }
    overlay_etc(rootmnt, &var)?;
    eprintln!(
        "nodeimage: state partition {} {}{}{} and mounted on /var, /etc overlaid ({} ms)",
        node.display(),
        match decided {
            StatePlan::Create { .. } => "created",
            StatePlan::Grow { .. } => "grown",
            StatePlan::Keep { .. } => "found",
        },
        match made {
            Some(n) => format!(", formatted with {n} entries of /var"),
            None => String::new(),
        },
        if grown { ", file system grown" } else { "" },
        started.elapsed().as_millis()
    );
    fault::cut("state-ready");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUID: Uuid = uuid::uuid!("aaaaaaaa-bbbb-8ccc-8ddd-eeeeeeeeeeee");

    /// sysfs as the kernel lays it out: partitions under their disk, a dm device's
    /// underlying devices linked from its `slaves/`.
    #[test]
    fn the_disk_of_a_dm_verity_root_is_the_disk_of_its_partitions() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path();
        for p in [
            "pci0/block/vda/vda2",
            "pci0/block/vda/vda3",
            "pci1/block/vdb/vdb1",
        ] {
            fs::create_dir_all(sys.join(p)).unwrap();
            fs::write(sys.join(p).join("partition"), "2\n").unwrap();
        }
        let dm = |name: &str, slaves: &[&str]| {
            let dir = sys.join("virtual/block").join(name);
            fs::create_dir_all(dir.join("slaves")).unwrap();
            for s in slaves {
                let target = sys.join(s);
                std::os::unix::fs::symlink(
                    &target,
                    dir.join("slaves").join(target.file_name().unwrap()),
                )
                .unwrap();
            }
            dir
        };
        let root = dm("dm-0", &["pci0/block/vda/vda2", "pci0/block/vda/vda3"]);
        assert_eq!(
            disk_of_sysfs_device(&root).unwrap(),
            (PathBuf::from("/dev/vda"), "vda".to_string())
        );
        assert_eq!(
            disk_of_sysfs_device(&sys.join("pci0/block/vda/vda2"))
                .unwrap()
                .1,
            "vda"
        );
        let stacked = dm("dm-1", &["virtual/block/dm-0"]);
        assert_eq!(disk_of_sysfs_device(&stacked).unwrap().1, "vda");
        let split = dm("dm-2", &["pci0/block/vda/vda2", "pci1/block/vdb/vdb1"]);
        let e = format!("{:#}", disk_of_sysfs_device(&split).unwrap_err());
        assert!(
            e.contains("spans several disks (vda, vdb)")
                || e.contains("spans several disks (vdb, vda)"),
            "{e}"
        );
        let whole = sys.join("pci0/block/vda");
        let e = format!("{:#}", disk_of_sysfs_device(&whole).unwrap_err());
        assert!(e.contains("is not a partition of a disk"), "{e}");
    }

    fn part(number: u32, name: &str, first: u64, last: u64) -> Entry {
        Entry {
            number,
            type_guid: uuid::uuid!("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            part_guid: Uuid::from_u128(u128::from(number)),
            first,
            last,
            attrs: 0,
            name: name.into(),
        }
    }

    fn state(number: u32, first: u64, last: u64) -> Entry {
        Entry {
            type_guid: gpt::LINUX_FS,
            part_guid: GUID,
            ..part(number, STATE_PARTITION_NAME, first, last)
        }
    }

    fn image_parts() -> Vec<Entry> {
        vec![
            part(1, "ESP", 2048, 2048 + 256 * 2048 - 1),
            part(2, "root-x86-64", 526336, 526336 + 600 * 2048 - 1),
            part(3, "NODECONFIG", 1755136, 1755136 + 16 * 2048 - 1),
        ]
    }

    #[test]
    fn creates_after_last_partition_aligned_to_the_end() {
        let last_usable = 8 * 1024 * 2048 - 34; // 8 GiB disk
        match plan(&image_parts(), last_usable, &GUID).unwrap() {
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
        parts.push(state(4, 1787904, 4 * 1024 * 2048 - 1));
        assert!(matches!(
            plan(&parts, 4 * 1024 * 2048 + 100, &GUID).unwrap(),
            StatePlan::Keep { number: 4, .. }
        ));
        match plan(&parts, 8 * 1024 * 2048 - 34, &GUID).unwrap() {
            StatePlan::Grow {
                number: 4,
                old_last,
                last,
                ..
            } => assert!(last > old_last),
            other => panic!("{other:?}"),
        }
    }

    /// The state partition is known by its type and GUID: the name alone is not enough,
    /// and a stranger with the name is refused rather than formatted or grown.
    #[test]
    fn the_state_partition_is_known_by_type_and_guid_not_name() {
        let last_usable = 8 * 1024 * 2048 - 34;
        let mut parts = image_parts();
        parts.push(Entry {
            part_guid: uuid::uuid!("00000000-0000-4000-8000-000000000001"),
            ..state(4, 1787904, 4 * 1024 * 2048 - 1)
        });
        let e = plan(&parts, last_usable, &GUID).unwrap_err().to_string();
        assert!(
            e.contains(
                "partition 4 is named nodeimage-state but is not this disk's state partition"
            ) && e.contains(&GUID.to_string()),
            "{e}"
        );
        // Ours under another name (renamed by some tool) is still ours.
        let mut parts = image_parts();
        parts.push(Entry {
            name: "data".into(),
            ..state(4, 1787904, last_usable / 2048 * 2048 - 1)
        });
        assert!(matches!(
            plan(&parts, last_usable, &GUID).unwrap(),
            StatePlan::Keep { number: 4, .. }
        ));
        // The GUID is derived from the disk's and differs between disks.
        let a = state_partition_guid(&uuid::uuid!("11111111-2222-3333-4444-555555555555"));
        assert_eq!(
            a,
            state_partition_guid(&uuid::uuid!("11111111-2222-3333-4444-555555555555"))
        );
        assert_ne!(a, state_partition_guid(&Uuid::nil()));
        assert_eq!(a.get_version_num(), 8);
    }

    #[test]
    fn too_small_disk_is_a_clear_error() {
        let e = plan(&image_parts(), 1755136 + 16 * 2048 + 1000, &GUID)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no room for the state partition"), "{e}");
    }

    #[test]
    fn apply_gpt_on_a_grown_image_file_moves_backup_and_adds_state() {
        let dir = tempfile::tempdir().unwrap();
        // A 64 MiB image with one partition, as the builder writes it, grown to 512 MiB.
        let img = gpt::tests::image(dir.path(), 512);
        let (planned, guid) = apply_gpt(&img).unwrap();
        assert!(
            matches!(planned, StatePlan::Create { number: 2, .. }),
            "{planned:?}"
        );
        // sfdisk (util-linux) must accept the result without complaints about the backup header.
        let json = gpt::tests::sfdisk_ok(&img);
        assert!(json.contains(STATE_PARTITION_NAME), "{json}");
        assert!(
            json.to_lowercase().contains(&guid.to_string()),
            "the derived GUID: {json}"
        );
        assert!(
            json.contains("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
            "{json}"
        );
        // Running again keeps it, and writes nothing.
        let before = std::fs::read(&img).unwrap();
        assert!(matches!(
            apply_gpt(&img).unwrap().0,
            StatePlan::Keep { number: 2, .. }
        ));
        assert!(
            std::fs::read(&img).unwrap() == before,
            "a Keep rewrote the disk"
        );
    }

    /// A complete state file system in the region whose table entry was lost is never
    /// formatted over: the error says how to restore the entry or discard the data.
    #[test]
    fn a_lost_entry_over_a_complete_state_fs_is_refused() {
        if !test_support::Needs::new("state partition: lost entry")
            .tool("mkfs.ext4", "e2fsprogs")
            .met()
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = gpt::tests::image(dir.path(), 512);
        let (planned, guid) = apply_gpt(&img).unwrap();
        let (first, last) = planned.extent();
        // Format the region as state setup does, then mark it complete.
        let part = dir.path().join("part.img");
        std::fs::File::create(&part)
            .unwrap()
            .set_len((last - first + 1) * SECTOR)
            .unwrap();
        for label in [STATE_FS_LABEL_INCOMPLETE, STATE_FS_LABEL] {
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", label, "-U"])
                .arg(guid.to_string())
                .arg(&part))
            .unwrap();
            let mut disk = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
            std::io::Seek::seek(&mut disk, std::io::SeekFrom::Start(first * SECTOR)).unwrap();
            std::io::copy(&mut std::fs::File::open(&part).unwrap(), &mut disk).unwrap();
            drop(disk);
            // The entry is lost: the image's own table is written back over it.
            let fresh_dir = dir.path().join("fresh");
            std::fs::create_dir_all(&fresh_dir).unwrap();
            let fresh = gpt::tests::image(&fresh_dir, 512);
            let t = gpt::read(&fresh).unwrap();
            gpt::write(&img, &t, gpt::Stop::Complete, &|_| {}).unwrap();
            let r = apply_gpt(&img);
            if label == STATE_FS_LABEL {
                let e = format!("{:#}", r.unwrap_err());
                assert!(
                    e.contains("refusing to create the state partition")
                        && e.contains(&guid.to_string())
                        && e.contains("dd if=/dev/zero"),
                    "{e}"
                );
            } else {
                // An incomplete one is ours to make again.
                assert!(matches!(r.unwrap().0, StatePlan::Create { .. }));
            }
        }
    }

    /// Found by fuzzing (fuzz/corpus/gpt/no-backup-40k.img): with less than an aligned
    /// MiB usable the aligned end underflowed, and a release build planned a partition
    /// ending at LBA 2^64-1.
    #[test]
    fn a_disk_under_one_mib_gets_nothing_past_its_end() {
        let e = plan(&[part(1, "ESP", 34, 63)], 46, &GUID).unwrap_err();
        assert!(e.to_string().contains("no room"), "{e}");
        assert_eq!(
            plan(&[state(3, 80, 94)], 94, &GUID).unwrap(),
            StatePlan::Keep {
                number: 3,
                first: 80,
                last: 94
            }
        );
    }

    /// Found by fuzzing: an entry ending at LBA 2^64-1 overflowed the start of the
    /// partition to create (0 in a release build: over the GPT itself).
    #[test]
    fn an_entry_ending_at_the_last_possible_lba_leaves_no_room() {
        let last_usable = 8 * 1024 * 2048 - 34;
        let e = plan(&[part(1, "ESP", 2048, u64::MAX)], last_usable, &GUID).unwrap_err();
        assert!(e.to_string().contains("no room"), "{e}");
    }

    /// Found by fuzzing: a state entry that starts after its end was "grown".
    #[test]
    fn a_state_entry_starting_after_its_end_is_refused() {
        let e = plan(&[state(3, 1 << 40, 94)], 16350, &GUID).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
    }

    #[test]
    fn copy_counts_every_entry() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("lib/dpkg")).unwrap();
        std::fs::write(src.join("lib/dpkg/status"), "x").unwrap();
        std::os::unix::fs::symlink("../run", src.join("lock")).unwrap();
        let mut n = 0;
        copy_preserving(&src, &d.path().join("dst"), &mut || n += 1).unwrap();
        assert_eq!(n, 5, "src, lib, lib/dpkg, lib/dpkg/status, lock");
        assert_eq!(
            std::fs::read_link(d.path().join("dst/lock")).unwrap(),
            Path::new("../run")
        );
    }
}

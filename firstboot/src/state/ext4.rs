//! What the state partition holds, read from the ext4 superblock without mounting, and
//! the label that marks the state file system complete.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context, Result};
use uuid::Uuid;

const MAGIC: u16 = 0xEF53;
const INCOMPAT_64BIT: u32 = 0x80;

/// The parts of an ext2/3/4 superblock this module needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub label: String,
    pub uuid: Uuid,
    /// The file system's size in bytes.
    pub bytes: u64,
}

/// The ext4 superblock of the file system starting at byte `offset` of `dev`, if there is
/// one (a disk, a partition or an image file).
pub fn probe(dev: &Path, offset: u64) -> Result<Option<Superblock>> {
    let mut f = File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(offset + 1024))
        .and_then(|_| f.read_exact(&mut sb))
        .with_context(|| {
            format!(
                "reading the superblock at byte {offset} of {}",
                dev.display()
            )
        })?;
    Ok(parse(&sb))
}

/// Parse a 1024-byte superblock; None when it is not ext2/3/4.
pub fn parse(sb: &[u8; 1024]) -> Option<Superblock> {
    let u32_at = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().unwrap());
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != MAGIC {
        return None;
    }
    let log = u32_at(0x18);
    if log > 6 {
        return None;
    }
    let mut blocks = u64::from(u32_at(0x04));
    if u32_at(0x60) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(u32_at(0x150)) << 32;
    }
    let name = &sb[0x78..0x88];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(Superblock {
        label: String::from_utf8_lossy(&name[..end]).into_owned(),
        uuid: Uuid::from_bytes(sb[0x68..0x78].try_into().unwrap()),
        bytes: blocks * (1024u64 << log),
    })
}

/// `FS_IOC_SETFSLABEL` (`_IOW(0x94, 50, char[256])`, Linux ≥ 5.17 for ext4).
const FS_IOC_SETFSLABEL: libc::c_ulong = 0x4100_9432;

/// Set the label of the file system mounted at `mountpoint` (through the kernel, so the
/// change goes through ext4's journal and its checksums).
pub fn set_label(mountpoint: &Path, label: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    if label.len() >= 16 {
        bail!("ext4 label `{label}` is longer than 15 bytes");
    }
    let dir =
        File::open(mountpoint).with_context(|| format!("opening {}", mountpoint.display()))?;
    let mut buf = [0u8; 256];
    buf[..label.len()].copy_from_slice(label.as_bytes());
    // SAFETY: FS_IOC_SETFSLABEL reads a char[256] from the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FS_IOC_SETFSLABEL as _, buf.as_ptr()) };
    if rc != 0 {
        bail!(
            "setting the label of {} to {label}: {}",
            mountpoint.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// syncfs(2): everything written to the file system mounted at `mountpoint`, data and
/// metadata, reaches the disk.
pub fn syncfs(mountpoint: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir =
        File::open(mountpoint).with_context(|| format!("opening {}", mountpoint.display()))?;
    // SAFETY: syncfs on an open descriptor.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        bail!(
            "syncing {}: {}",
            mountpoint.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// A path as a C string.
pub fn c_path(p: &Path) -> Result<CString> {
    Ok(CString::new(p.as_os_str().as_encoded_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn reads_label_uuid_and_size_that_mke2fs_wrote() {
        if !test_support::Needs::new("ext4 superblock probe")
            .tool("mkfs.ext4", "e2fsprogs")
            .met()
        {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("fs.img");
        // The file system at byte 1 MiB of the file, as a partition sits in a disk.
        std::fs::File::create(&img)
            .unwrap()
            .set_len(65 << 20)
            .unwrap();
        assert_eq!(probe(&img, 1 << 20).unwrap(), None);
        let part = d.path().join("part.img");
        std::fs::File::create(&part)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "nodeimage-init", "-U"])
            .arg("0b0e5c5e-2d7b-4a0e-8e0b-6d3b2a1c0f00")
            .arg(&part)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut disk = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        disk.seek(SeekFrom::Start(1 << 20)).unwrap();
        std::io::copy(&mut File::open(&part).unwrap(), &mut disk).unwrap();
        let sb = probe(&img, 1 << 20).unwrap().expect("an ext4 superblock");
        assert_eq!(sb.label, "nodeimage-init");
        assert_eq!(sb.uuid, uuid::uuid!("0b0e5c5e-2d7b-4a0e-8e0b-6d3b2a1c0f00"));
        assert_eq!(sb.bytes, 64 << 20);
    }
}

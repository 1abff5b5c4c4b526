//! The kernel's device-mapper ioctl interface (`linux/dm-ioctl.h`), the little of it a
//! verified root needs: create a device, load a table, resume it, read its status,
//! remove it. dmsetup and libdevmapper do the same through the same ioctls; the
//! initramfs has firstboot already, so it carries no second tool for four calls.
//!
//! Every call passes one buffer: a `struct dm_ioctl` header (312 bytes) followed, for
//! a table load, by one `struct dm_target_spec` (40 bytes) and its NUL-terminated
//! parameter string, padded to 8 bytes. The header is written and read field by field
//! at its C offsets (native byte order), which the tests pin.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

/// `/dev/mapper/control`, the misc device dm-mod registers.
pub const CONTROL: &str = "/dev/mapper/control";

/// `sizeof(struct dm_ioctl)`.
const HEADER: usize = 312;
/// `sizeof(struct dm_target_spec)`.
const TARGET_SPEC: usize = 40;
/// Field offsets in `struct dm_ioctl`.
const DATA_SIZE: usize = 12;
const DATA_START: usize = 16;
const TARGET_COUNT: usize = 20;
const FLAGS: usize = 28;
const DEV: usize = 40;
const NAME: usize = 48;
const NAME_LEN: usize = 128;
const UUID: usize = NAME + NAME_LEN;
const UUID_LEN: usize = 129;

/// The interface version we speak: 4.0.0; any 4.x kernel accepts it.
const VERSION: [u32; 3] = [4, 0, 0];

const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;

/// Command numbers (the enum in dm-ioctl.h).
const DEV_CREATE: u8 = 3;
const DEV_REMOVE: u8 = 4;
const DEV_SUSPEND: u8 = 6;
const TABLE_LOAD: u8 = 9;
const TABLE_STATUS: u8 = 12;

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
const fn request(nr: u8) -> libc::c_ulong {
    (3 << 30) | ((HEADER as libc::c_ulong) << 16) | (0xfd << 8) | nr as libc::c_ulong
}

/// Why a device-mapper call failed.
#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("opening {CONTROL}: {0} (is the dm-mod module loaded?)")]
    Control(std::io::Error),
    #[error("device-mapper {op} {name}: {source}")]
    Ioctl {
        op: &'static str,
        name: String,
        source: std::io::Error,
    },
    #[error("device-mapper name {0:?}: 1 to 127 bytes, no '/', expected")]
    Name(String),
}

/// One target of a table: `length` sectors of `target_type` configured by `params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub sectors: u64,
    pub target_type: String,
    pub params: String,
}

/// An open `/dev/mapper/control`.
pub struct Control {
    file: File,
}

impl Control {
    pub fn open() -> Result<Control, DmError> {
        Self::open_at(Path::new(CONTROL))
    }

    pub fn open_at(path: &Path) -> Result<Control, DmError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(DmError::Control)?;
        Ok(Control { file })
    }

    /// Create the (empty, suspended) device `name`; returns its device number.
    pub fn create(&self, name: &str, uuid: &str) -> Result<libc::dev_t, DmError> {
        let mut buf = header(name, uuid, 0, HEADER)?;
        self.call(DEV_CREATE, "create", name, &mut buf)?;
        Ok(read_u64(&buf, DEV) as libc::dev_t)
    }

    /// Load `target` as the device's inactive table (read-only).
    pub fn load(&self, name: &str, target: &Target) -> Result<(), DmError> {
        let mut buf = table_load(name, target)?;
        self.call(TABLE_LOAD, "table load", name, &mut buf)
    }

    /// Resume: the inactive table (if any) becomes the live one, and I/O flows.
    pub fn resume(&self, name: &str) -> Result<(), DmError> {
        let mut buf = header(name, "", 0, HEADER)?;
        self.call(DEV_SUSPEND, "resume", name, &mut buf)
    }

    /// Remove the device (it must not be open).
    pub fn remove(&self, name: &str) -> Result<(), DmError> {
        let mut buf = header(name, "", 0, HEADER)?;
        self.call(DEV_REMOVE, "remove", name, &mut buf)
    }

    /// The live table's status line (`table`: its table line instead), e.g. `V` for a
    /// verity target that has found no corruption, `C` once it has.
    pub fn status(&self, name: &str, table: bool) -> Result<String, DmError> {
        let flags = if table { DM_STATUS_TABLE_FLAG } else { 0 };
        let mut size = 16 << 10;
        loop {
            let mut buf = header(name, "", flags, size)?;
            self.call(TABLE_STATUS, "status", name, &mut buf)?;
            if read_u32(&buf, FLAGS) & DM_BUFFER_FULL_FLAG != 0 && size < 1 << 20 {
                size *= 4;
                continue;
            }
            return Ok(parse_status(&buf));
        }
    }

    fn call(&self, nr: u8, op: &'static str, name: &str, buf: &mut [u8]) -> Result<(), DmError> {
        // SAFETY: every dm ioctl reads `data_size` bytes of `buf` (its length, set by
        // `header`) and writes at most as many back; `buf` outlives the call.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request(nr) as _, buf.as_mut_ptr()) };
        if rc < 0 {
            return Err(DmError::Ioctl {
                op,
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap())
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(buf[at..at + 8].try_into().unwrap())
}

/// A `struct dm_ioctl` of `size` bytes in all (header plus data area).
fn header(name: &str, uuid: &str, flags: u32, size: usize) -> Result<Vec<u8>, DmError> {
    if name.is_empty() || name.len() >= NAME_LEN || name.contains('/') {
        return Err(DmError::Name(name.to_string()));
    }
    let mut buf = vec![0u8; size.max(HEADER)];
    for (i, v) in VERSION.iter().enumerate() {
        buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    let size = buf.len() as u32;
    buf[DATA_SIZE..DATA_SIZE + 4].copy_from_slice(&size.to_ne_bytes());
    buf[DATA_START..DATA_START + 4].copy_from_slice(&(HEADER as u32).to_ne_bytes());
    buf[FLAGS..FLAGS + 4].copy_from_slice(&flags.to_ne_bytes());
    buf[NAME..NAME + name.len()].copy_from_slice(name.as_bytes());
    let uuid = &uuid.as_bytes()[..uuid.len().min(UUID_LEN - 1)];
    buf[UUID..UUID + uuid.len()].copy_from_slice(uuid);
    Ok(buf)
}

/// The buffer of a read-only table load with one target.
fn table_load(name: &str, t: &Target) -> Result<Vec<u8>, DmError> {
    let params_len = (t.params.len() + 1).next_multiple_of(8);
    let spec_len = TARGET_SPEC + params_len;
    let mut buf = header(name, "", DM_READONLY_FLAG, HEADER + spec_len)?;
    buf[TARGET_COUNT..TARGET_COUNT + 4].copy_from_slice(&1u32.to_ne_bytes());
    let s = HEADER;
    buf[s + 8..s + 16].copy_from_slice(&t.sectors.to_ne_bytes()); // length; start is 0
    buf[s + 20..s + 24].copy_from_slice(&(spec_len as u32).to_ne_bytes()); // next
    let ty = &t.target_type.as_bytes()[..t.target_type.len().min(15)];
    buf[s + 24..s + 24 + ty.len()].copy_from_slice(ty);
    buf[s + TARGET_SPEC..s + TARGET_SPEC + t.params.len()].copy_from_slice(t.params.as_bytes());
    Ok(buf)
}

/// The first target's status string of a TABLE_STATUS answer ("" for no target).
fn parse_status(buf: &[u8]) -> String {
    if read_u32(buf, TARGET_COUNT) == 0 {
        return String::new();
    }
    let start = read_u32(buf, DATA_START) as usize;
    let end = (read_u32(buf, DATA_SIZE) as usize).min(buf.len());
    let Some(params) = buf.get(start + TARGET_SPEC..end) else {
        return String::new();
    };
    let n = params.iter().position(|b| *b == 0).unwrap_or(params.len());
    String::from_utf8_lossy(&params[..n]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_are_dm_ioctl_h() {
        // _IOWR(0xfd, 3, struct dm_ioctl) with sizeof == 312, as dmsetup issues it.
        assert_eq!(request(DEV_CREATE), 0xc138fd03);
        assert_eq!(request(TABLE_LOAD), 0xc138fd09);
        assert_eq!(request(TABLE_STATUS), 0xc138fd0c);
    }

    #[test]
    fn a_table_load_is_header_spec_and_padded_params() {
        let t = Target {
            sectors: 2048,
            target_type: "verity".into(),
            params: "1 8:2 8:3 4096 4096 256 1 sha256 ab cd".into(),
        };
        let buf = table_load("nodeimage-root", &t).unwrap();
        assert_eq!(buf.len(), 312 + 40 + 40); // 38 bytes + NUL → 40
        assert_eq!(read_u32(&buf, 0), 4);
        assert_eq!(read_u32(&buf, DATA_SIZE) as usize, buf.len());
        assert_eq!(read_u32(&buf, DATA_START), 312);
        assert_eq!(read_u32(&buf, TARGET_COUNT), 1);
        assert_eq!(read_u32(&buf, FLAGS), DM_READONLY_FLAG);
        assert_eq!(&buf[NAME..NAME + 15], b"nodeimage-root\0");
        assert_eq!(read_u64(&buf, 312), 0);
        assert_eq!(read_u64(&buf, 320), 2048);
        assert_eq!(read_u32(&buf, 332), 80);
        assert_eq!(&buf[336..343], b"verity\0");
        assert_eq!(&buf[352..352 + t.params.len()], t.params.as_bytes());
        assert!(buf[352 + t.params.len()..].iter().all(|b| *b == 0));
        // What the kernel writes back for TABLE_STATUS reads with the same layout.
        assert_eq!(parse_status(&buf), t.params);
    }

    #[test]
    fn bad_names_are_refused_before_any_call() {
        for n in ["", "a/b", &"x".repeat(128)] {
            assert!(
                matches!(header(n, "", 0, 312), Err(DmError::Name(_))),
                "{n:?}"
            );
        }
        assert!(header(&"x".repeat(127), &"u".repeat(200), 0, 312).is_ok());
    }
}

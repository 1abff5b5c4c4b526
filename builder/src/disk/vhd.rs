//! Fixed VHD (Azure's disk format): the raw disk followed by a 512-byte footer, as in
//! Microsoft's "Virtual Hard Disk Image Format Specification" (the hard disk footer).
//! Azure takes fixed VHDs whose virtual size is a whole number of MiB; our raw images are
//! (see the layout rules in [`super`]).
//!
//! The CHS geometry is the largest one (65535/16/255), as `qemu-img convert -O vpc -o
//! subformat=fixed,force_size` writes it: the specification's geometry for most sizes
//! covers fewer sectors than the disk has, and a reader that sizes the disk from it
//! (Virtual PC, qemu for some creators) would cut the end off, backup GPT included; the
//! largest geometry tells readers to take the footer's exact current size.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use uuid::Uuid;

use super::{io_err, DiskError};

/// Seconds from the Unix epoch to the VHD epoch, 2000-01-01T00:00:00Z.
const VHD_EPOCH: i64 = 946_684_800;
pub const FOOTER_SIZE: usize = 512;

/// The footer of a fixed VHD of `size` bytes: `timestamp` is a Unix time (the build's
/// SOURCE_DATE_EPOCH, so the file is reproducible), `id` its unique id.
pub fn fixed_footer(size: u64, timestamp: i64, id: Uuid) -> [u8; FOOTER_SIZE] {
    let mut f = [0u8; FOOTER_SIZE];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit, always set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed disk)
    let stamp = (timestamp - VHD_EPOCH).clamp(0, u32::MAX as i64) as u32;
    f[24..28].copy_from_slice(&stamp.to_be_bytes());
    f[28..32].copy_from_slice(b"nimg"); // creator application
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // creator version
    f[36..40].copy_from_slice(b"Wi2k"); // creator host OS, as qemu-img writes
    f[40..48].copy_from_slice(&size.to_be_bytes()); // original size
    f[48..56].copy_from_slice(&size.to_be_bytes()); // current size
    f[56..58].copy_from_slice(&65535u16.to_be_bytes());
    f[58] = 16;
    f[59] = 255;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    f[68..84].copy_from_slice(id.as_bytes());
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The footer checksum: the one's complement of the sum of every byte but the
/// checksum's own four.
pub fn checksum(footer: &[u8; FOOTER_SIZE]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |a, (_, b)| a.wrapping_add(u32::from(*b)));
    !sum
}

/// Write `raw` (a whole number of MiB) as a fixed VHD to `dst`: a sparse copy, then the
/// footer; written to `dst.tmp`, synced, renamed.
pub fn write_fixed(raw: &Path, dst: &Path, timestamp: i64, id: Uuid) -> Result<(), DiskError> {
    let size = fs::metadata(raw).map_err(io_err("reading", raw))?.len();
    if size == 0 || !size.is_multiple_of(1 << 20) {
        return Err(DiskError::Gpt {
            path: raw.to_path_buf(),
            message: format!("a VHD for Azure needs a whole number of MiB, not {size} bytes"),
        });
    }
    super::table::replace_file(dst, |tmp, mut f| {
        let mut r = File::open(raw).map_err(io_err("opening", raw))?;
        super::table::write_sparse(&mut f, tmp, 0, &mut r)?;
        f.set_len(size).map_err(io_err("sizing", tmp))?;
        f.seek(SeekFrom::Start(size))
            .map_err(io_err("seeking in", tmp))?;
        f.write_all(&fixed_footer(size, timestamp, id))
            .map_err(io_err("writing", tmp))?;
        f.sync_all().map_err(io_err("syncing", tmp))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_fields_and_checksum() {
        let f = fixed_footer(466 << 20, 1_764_547_200, Uuid::from_u128(7));
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), 466 << 20);
        assert_eq!(u32::from_be_bytes(f[60..64].try_into().unwrap()), 2);
        // 2025-12-01T00:00:00Z is 817 862 400 s after 2000-01-01.
        assert_eq!(
            u32::from_be_bytes(f[24..28].try_into().unwrap()),
            817_862_400
        );
        assert_eq!(
            u32::from_be_bytes(f[64..68].try_into().unwrap()),
            checksum(&f)
        );
        let mut g = f;
        g[100] = 1;
        assert_ne!(
            checksum(&g),
            checksum(&f),
            "the checksum covers the reserved bytes"
        );
    }
}

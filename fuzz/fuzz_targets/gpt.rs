//! The GUID partition table of the boot disk, read by firstboot's initramfs step
//! (`firstboot::state::gpt::read`) before it grows the state partition. The disk is
//! untrusted as far as its bytes go (a cloud image, a disk someone else wrote).
//!
//! Each input is read as it is, then with the CRCs of the headers at LBA 1 and at the
//! last LBA (and of the arrays they name) recomputed, so that inputs get past the CRC
//! checks to the code behind them (the fuzzer cannot guess a CRC32), and then that
//! again at the start of a sparse 8 MiB disk: a disk grown since its table was written,
//! the case firstboot is there for (room for the state partition), which inputs of a
//! few KiB cannot reach otherwise.
//!
//! Property: the state partition firstboot would create or grow lies inside the usable
//! LBAs, and one it would create overlaps no existing partition.
#![no_main]

use firstboot::state::{self, gpt, StatePlan};
use libfuzzer_sys::fuzz_target;

const SECTOR: usize = 512;
/// The size of the grown disk the input is also read at the start of.
const GROWN_DISK: u64 = 8 << 20;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Recompute the array CRC and the header CRC of a header at sector `lba`, when it has
/// the signature and a header size and array the reader would accept the bounds of.
fn fix_crcs(disk: &mut [u8], lba: usize) {
    let at = lba * SECTOR;
    if disk.len() < at + SECTOR || &disk[at..at + 8] != b"EFI PART" {
        return;
    }
    let size = le32(disk, at + 12) as usize;
    if !(92..=SECTOR).contains(&size) {
        return;
    }
    let entries_lba = le64(disk, at + 72);
    let bytes = u64::from(le32(disk, at + 80)) * u64::from(le32(disk, at + 84));
    if let Some(start) = entries_lba.checked_mul(SECTOR as u64) {
        if let Some(end) = start.checked_add(bytes) {
            if end <= disk.len() as u64 && bytes <= 1 << 20 {
                let crc = crc32fast::hash(&disk[start as usize..end as usize]);
                disk[at + 88..at + 92].copy_from_slice(&crc.to_le_bytes());
            }
        }
    }
    disk[at + 16..at + 20].fill(0);
    let crc = crc32fast::hash(&disk[at..at + size]);
    disk[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
}

/// What firstboot's initramfs step does before it writes anything
/// (`firstboot::state::apply_gpt`): read the table, then decide on the state partition.
fn read(path: &std::path::Path) {
    let Ok(table) = gpt::read(path) else {
        return;
    };
    let entries = table.entries();
    let last_usable = table.last_usable();
    let guid = state::state_partition_guid(&table.disk_guid);
    let Ok(plan) = state::plan(&entries, last_usable, &guid) else {
        return;
    };
    // Property: a partition created or grown stays inside the usable part of the disk,
    // and one created overlaps no existing partition.
    let (first, last) = plan.extent();
    if !matches!(plan, StatePlan::Keep { .. }) {
        assert!(
            first <= last && last <= last_usable,
            "{plan:?} outside the usable LBAs (last usable {last_usable})"
        );
    }
    if let StatePlan::Create { .. } = plan {
        for e in &entries {
            assert!(
                last < e.first || first > e.last,
                "{plan:?} overlaps partition {e:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    nodeimage_fuzz::with_scratch_file(data, |path, _| read(path));
    let sectors = data.len() / SECTOR;
    if sectors >= 2 {
        let mut fixed = data.to_vec();
        // The backup's array may lie in the primary's range: fix the backup first so
        // that the primary's array CRC covers it as the reader will see it.
        fix_crcs(&mut fixed, sectors - 1);
        fix_crcs(&mut fixed, 1);
        if fixed != data {
            nodeimage_fuzz::with_scratch_file(&fixed, |path, _| read(path));
        }
        if (fixed.len() as u64) < GROWN_DISK {
            nodeimage_fuzz::with_scratch_file_len(&fixed, GROWN_DISK, |path, _| read(path));
        }
    }
});

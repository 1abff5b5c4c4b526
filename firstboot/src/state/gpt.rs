//! The GUID partition table of the boot disk, read and written with a crash in mind.
//!
//! Reading checks both copies completely (header CRC, the header's own LBA, the CRC of
//! the partition array it describes) and takes the primary when it is valid, else the
//! backup: at the disk's last LBA, else where the primary header says (a disk grown since
//! the image was written still has its backup at the old end). The gpt crate does
//! neither: it trusts a header whose own CRC is valid and then fails on its array.
//!
//! Writing goes in two fsynced phases: the backup array and header at the disk's end
//! first, then the primary array and header. A power cut in phase 1 leaves the old
//! primary valid; a cut in phase 2 leaves the new backup valid (the UEFI firmware restores
//! the primary from it before the kernel reads the table, and [`read`] falls back to it
//! and the next write rewrites the primary). The protective MBR follows.
//! Nothing is written when nothing changes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use uuid::Uuid;

pub const SECTOR: u64 = 512;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const HEADER_SIZE: usize = 92;
const REVISION: u32 = 0x0001_0000;
/// More entries than any sane table holds (the usual is 128): refuse, not allocate.
const MAX_ENTRIES_BYTES: u64 = 1 << 20;

/// The Linux filesystem data partition type (the state partition's).
/// The EFI system partition's type.
pub const ESP: Uuid = uuid::uuid!("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
pub const LINUX_FS: Uuid = uuid::uuid!("0FC63DAF-8483-4772-8E79-3D69D8477DE4");

/// One used entry of the partition array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Partition number (1-based index into the array).
    pub number: u32,
    pub type_guid: Uuid,
    pub part_guid: Uuid,
    pub first: u64,
    pub last: u64,
    pub attrs: u64,
    pub name: String,
}

/// Which copy a table was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    Primary,
    Backup,
}

/// A header as read (after validation).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    my_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Uuid,
    entries_lba: u64,
    entry_count: u32,
    entry_size: u32,
    entries_crc: u32,
}

/// A partition table read from a disk.
#[derive(Debug, Clone)]
pub struct Table {
    pub disk_guid: Uuid,
    /// The disk's size in sectors when it was read.
    pub disk_sectors: u64,
    pub first_usable: u64,
    entry_count: u32,
    entry_size: u32,
    /// The raw partition array (entries this code does not touch stay byte-identical).
    array: Vec<u8>,
    /// The copy the table came from.
    pub source: Copy,
    /// Both copies valid, identical, the backup at the disk's last LBA, the primary
    /// pointing at it: a write would change nothing.
    pub consistent: bool,
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn guid(b: &[u8], at: usize) -> Uuid {
    Uuid::from_bytes_le(b[at..at + 16].try_into().unwrap())
}

fn read_at(f: &mut File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn write_at(f: &mut File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(data)
}

/// The size of `f` in bytes (a block device or an image file).
pub fn size(f: &mut File) -> std::io::Result<u64> {
    f.seek(SeekFrom::End(0))
}

/// The size of `f` in sectors (a block device or an image file).
pub fn sectors(f: &mut File) -> std::io::Result<u64> {
    Ok(size(f)? / SECTOR)
}

/// The header at `lba` and its array, when both are valid; else why not.
fn read_copy(
    f: &mut File,
    lba: u64,
    disk_sectors: u64,
) -> std::result::Result<(Header, Vec<u8>), String> {
    if lba == 0 || lba >= disk_sectors {
        return Err(format!("LBA {lba} is outside the disk"));
    }
    let s = read_at(f, lba * SECTOR, SECTOR as usize).map_err(|e| e.to_string())?;
    if &s[..8] != SIGNATURE {
        return Err(format!("no GPT header at LBA {lba}"));
    }
    let size = le32(&s, 12) as usize;
    if !(HEADER_SIZE..=SECTOR as usize).contains(&size) {
        return Err(format!("header at LBA {lba}: bad header size {size}"));
    }
    let mut h = s[..size].to_vec();
    h[16..20].fill(0);
    if crc32fast::hash(&h) != le32(&s, 16) {
        return Err(format!("header at LBA {lba}: CRC mismatch"));
    }
    let hdr = Header {
        my_lba: le64(&s, 24),
        alternate_lba: le64(&s, 32),
        first_usable: le64(&s, 40),
        last_usable: le64(&s, 48),
        disk_guid: guid(&s, 56),
        entries_lba: le64(&s, 72),
        entry_count: le32(&s, 80),
        entry_size: le32(&s, 84),
        entries_crc: le32(&s, 88),
    };
    if hdr.my_lba != lba {
        return Err(format!(
            "header at LBA {lba} says it is at LBA {}",
            hdr.my_lba
        ));
    }
    let bytes = u64::from(hdr.entry_count) * u64::from(hdr.entry_size);
    if hdr.entry_size < 128
        || !hdr.entry_size.is_multiple_of(8)
        || bytes == 0
        || bytes > MAX_ENTRIES_BYTES
    {
        return Err(format!(
            "header at LBA {lba}: {} entries of {} bytes",
            hdr.entry_count, hdr.entry_size
        ));
    }
    if hdr.entries_lba >= disk_sectors || hdr.entries_lba + bytes.div_ceil(SECTOR) > disk_sectors {
        return Err(format!(
            "header at LBA {lba}: partition array at LBA {} is outside the disk",
            hdr.entries_lba
        ));
    }
    // An array over the protective MBR or over its own header is not a table (and would
    // leave no usable LBAs: see `last_usable`).
    if hdr.entries_lba == 0
        || (hdr.entries_lba..hdr.entries_lba + bytes.div_ceil(SECTOR)).contains(&lba)
    {
        return Err(format!(
            "header at LBA {lba}: partition array at LBA {} overlaps the MBR or the header",
            hdr.entries_lba
        ));
    }
    let array = read_at(f, hdr.entries_lba * SECTOR, bytes as usize).map_err(|e| e.to_string())?;
    if crc32fast::hash(&array) != hdr.entries_crc {
        return Err(format!(
            "partition array of the header at LBA {lba}: CRC mismatch"
        ));
    }
    Ok((hdr, array))
}

/// Read the table of `disk`: the primary when valid, else the backup. Fails only when
/// neither copy is valid, naming what is wrong with each.
pub fn read(disk: &Path) -> Result<Table> {
    let mut f = File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    read_file(&mut f).with_context(|| format!("reading the GPT of {}", disk.display()))
}

fn read_file(f: &mut File) -> Result<Table> {
    let n = sectors(f)?;
    if n < 68 {
        bail!("{n} sectors are too small for a GPT disk");
    }
    let primary = read_copy(f, 1, n);
    let backup_end = read_copy(f, n - 1, n);
    let (hdr, array, source) = match (&primary, &backup_end) {
        (Ok((h, a)), _) => (h.clone(), a.clone(), Copy::Primary),
        (Err(_), Ok((h, a))) => (h.clone(), a.clone(), Copy::Backup),
        (Err(pe), Err(be)) => {
            // A grown disk: the backup is still where the image ended. Its location is in
            // the primary header, which may have a valid CRC even when its array does not.
            let alt = read_at(f, SECTOR, SECTOR as usize)
                .ok()
                .filter(|s| &s[..8] == SIGNATURE)
                .map(|s| le64(&s, 32))
                .filter(|&a| a != n - 1);
            match alt.map(|a| read_copy(f, a, n)) {
                Some(Ok((h, a))) => (h, a, Copy::Backup),
                Some(Err(ae)) => bail!("no valid GPT: primary: {pe}; backup at the end: {be}; backup the primary names: {ae}"),
                None => bail!("no valid GPT: primary: {pe}; backup: {be}"),
            }
        }
    };
    let consistent = match (&primary, &backup_end) {
        (Ok((p, pa)), Ok((b, ba))) => {
            pa == ba
                && p.alternate_lba == n - 1
                && b.alternate_lba == 1
                && p.disk_guid == b.disk_guid
                && p.last_usable == b.last_usable
                && p.first_usable == b.first_usable
                && p.last_usable == last_usable(n, p.entry_count, p.entry_size)
        }
        _ => false,
    };
    Ok(Table {
        disk_guid: hdr.disk_guid,
        disk_sectors: n,
        first_usable: hdr.first_usable,
        entry_count: hdr.entry_count,
        entry_size: hdr.entry_size,
        array,
        source,
        consistent,
    })
}

fn array_sectors(count: u32, size: u32) -> u64 {
    (u64::from(count) * u64::from(size)).div_ceil(SECTOR)
}

/// The last usable LBA of a disk of `n` sectors: before the backup array and header
/// (0 when they would not even fit; [`read`] accepts no such table).
fn last_usable(n: u64, count: u32, size: u32) -> u64 {
    n.saturating_sub(2 + array_sectors(count, size))
}

impl Table {
    /// The last usable LBA on the disk as it is now (with the backup at its end).
    pub fn last_usable(&self) -> u64 {
        last_usable(self.disk_sectors, self.entry_count, self.entry_size)
    }

    fn slot(&self, number: u32) -> Option<&[u8]> {
        let size = self.entry_size as usize;
        let i = number.checked_sub(1)? as usize;
        self.array.get(i * size..i * size + size)
    }

    /// The used entries, in array order.
    pub fn entries(&self) -> Vec<Entry> {
        (1..=self.entry_count)
            .filter_map(|n| {
                let e = self.slot(n)?;
                let type_guid = guid(e, 0);
                if type_guid.is_nil() {
                    return None;
                }
                let name: Vec<u16> = e[56..128]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|&c| c != 0)
                    .collect();
                Some(Entry {
                    number: n,
                    type_guid,
                    part_guid: guid(e, 16),
                    first: le64(e, 32),
                    last: le64(e, 40),
                    attrs: le64(e, 48),
                    name: String::from_utf16_lossy(&name),
                })
            })
            .collect()
    }

    /// Put `e` into slot `e.number` (replacing what was there).
    pub fn set(&mut self, e: &Entry) -> Result<()> {
        if e.number == 0 || e.number > self.entry_count {
            bail!(
                "partition number {} is outside the table's {} entries",
                e.number,
                self.entry_count
            );
        }
        let name: Vec<u16> = e.name.encode_utf16().collect();
        if name.len() > 36 {
            bail!("partition name `{}` is longer than 36 UTF-16 units", e.name);
        }
        let size = self.entry_size as usize;
        let at = (e.number as usize - 1) * size;
        let slot = &mut self.array[at..at + size];
        slot.fill(0);
        slot[0..16].copy_from_slice(&e.type_guid.to_bytes_le());
        slot[16..32].copy_from_slice(&e.part_guid.to_bytes_le());
        slot[32..40].copy_from_slice(&e.first.to_le_bytes());
        slot[40..48].copy_from_slice(&e.last.to_le_bytes());
        slot[48..56].copy_from_slice(&e.attrs.to_le_bytes());
        for (i, c) in name.iter().enumerate() {
            slot[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
        }
        self.consistent = false;
        Ok(())
    }

    fn header(&self, my_lba: u64, alternate_lba: u64, entries_lba: u64) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&REVISION.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable().to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.to_bytes_le());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&self.entry_count.to_le_bytes());
        h[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&self.array).to_le_bytes());
        let crc = crc32fast::hash(&h[..HEADER_SIZE]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// How far [`write`] gets: everything, or (for tests of a power cut) a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// After the backup array and header (phase 1) are synced.
    AfterBackup,
    /// After the primary array, before the primary header: the torn state of phase 2.
    AfterPrimaryArray,
    /// All of it, the protective MBR too.
    Complete,
}

/// Write `table` to `disk` in the crash-safe order (see the module doc), up to `stop`,
/// with `hook` called after each fsynced phase (the fault-injection points).
/// Returns false, writing nothing, when the disk already holds exactly this table.
pub fn write(disk: &Path, table: &Table, stop: Stop, hook: &dyn Fn(Stop)) -> Result<bool> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {} for writing", disk.display()))?;
    let n = sectors(&mut f)?;
    if n != table.disk_sectors {
        bail!(
            "{} changed size from {} to {n} sectors while its GPT was being updated",
            disk.display(),
            table.disk_sectors
        );
    }
    let mbr_ok = protective_mbr_ok(&mut f, n)?;
    if table.consistent && mbr_ok {
        return Ok(false);
    }
    let ctx = || format!("writing the GPT of {}", disk.display());
    let array_len = array_sectors(table.entry_count, table.entry_size);
    let backup_array = n - 1 - array_len;
    if table.last_usable() < table.first_usable {
        bail!("{} is too small for its partition array", disk.display());
    }
    let mut array = table.array.clone();
    array.resize((array_len * SECTOR) as usize, 0);
    // Phase 1: the backup, at the end of the disk as it is now.
    write_at(&mut f, backup_array * SECTOR, &array).with_context(ctx)?;
    write_at(
        &mut f,
        (n - 1) * SECTOR,
        &table.header(n - 1, 1, backup_array),
    )
    .with_context(ctx)?;
    f.sync_all().with_context(ctx)?;
    hook(Stop::AfterBackup);
    if stop == Stop::AfterBackup {
        return Ok(true);
    }
    // Phase 2: the primary.
    write_at(&mut f, 2 * SECTOR, &array).with_context(ctx)?;
    f.sync_all().with_context(ctx)?;
    hook(Stop::AfterPrimaryArray);
    if stop == Stop::AfterPrimaryArray {
        return Ok(true);
    }
    write_at(&mut f, SECTOR, &table.header(1, n - 1, 2)).with_context(ctx)?;
    f.sync_all().with_context(ctx)?;
    if !mbr_ok {
        write_protective_mbr(&mut f, n).with_context(ctx)?;
        f.sync_all().with_context(ctx)?;
    }
    hook(Stop::Complete);
    Ok(true)
}

/// The protective MBR's one partition record for a disk of `n` sectors.
fn protective_record(n: u64) -> [u8; 16] {
    let size = u32::try_from(n - 1).unwrap_or(u32::MAX);
    let mut r = [0u8; 16];
    r[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    r[4] = 0xEE;
    r[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    r[8..12].copy_from_slice(&1u32.to_le_bytes());
    r[12..16].copy_from_slice(&size.to_le_bytes());
    r
}

fn protective_mbr_ok(f: &mut File, n: u64) -> Result<bool> {
    let s = read_at(f, 0, SECTOR as usize)?;
    Ok(s[446..462] == protective_record(n)
        && s[462..510].iter().all(|&b| b == 0)
        && s[510..512] == [0x55, 0xAA])
}

/// (Re)write the protective MBR so it covers the whole disk, keeping the boot code.
fn write_protective_mbr(f: &mut File, n: u64) -> std::io::Result<()> {
    let mut s = read_at(f, 0, SECTOR as usize)?;
    s[446..462].copy_from_slice(&protective_record(n));
    s[462..510].fill(0);
    s[510..512].copy_from_slice(&[0x55, 0xAA]);
    write_at(f, 0, &s)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// A 64 MiB image with an ESP, written by the gpt crate as the builder does, then
    /// grown to `grown_mib`.
    pub(crate) fn image(dir: &Path, grown_mib: u64) -> std::path::PathBuf {
        let img = dir.join("disk.raw");
        let f = std::fs::OpenOptions::new()
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
            .create_from_device(f, Some(uuid::uuid!("11111111-2222-3333-4444-555555555555")))
            .unwrap();
        d.add_partition_at("ESP", 1, 2048, 32 * 2048, gpt::partition_types::EFI, 0)
            .unwrap();
        d.write().unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        write_protective_mbr(&mut f, 64 << 11).unwrap();
        f.set_len(grown_mib << 20).unwrap();
        img
    }

    /// `sfdisk --verify` and `sgdisk -v`-free check: sfdisk's JSON, no complaints.
    pub(crate) fn sfdisk_ok(img: &Path) -> String {
        let out = Command::new("sfdisk")
            .arg("--json")
            .arg(img)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "sfdisk: {stderr}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn state_entry(t: &Table) -> Entry {
        Entry {
            number: 2,
            type_guid: LINUX_FS,
            part_guid: uuid::uuid!("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
            first: 34816,
            last: t.last_usable() / 2048 * 2048 - 1,
            attrs: 0,
            name: "nodeimage-state".into(),
        }
    }

    #[test]
    fn reads_what_the_gpt_crate_wrote_and_a_grown_disk_is_inconsistent() {
        let d = tempfile::tempdir().unwrap();
        let img = image(d.path(), 64);
        let t = read(&img).unwrap();
        assert!(t.consistent, "a fresh image needs no write");
        assert_eq!(t.source, Copy::Primary);
        let e = t.entries();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].number, e[0].name.as_str()), (1, "ESP"));
        assert_eq!((e[0].first, e[0].last), (2048, 2048 + 32 * 2048 - 1));
        assert!(
            !write(&img, &t, Stop::Complete, &|_| {}).unwrap(),
            "nothing to write"
        );
        let img = image(d.path(), 128);
        let t = read(&img).unwrap();
        assert!(
            !t.consistent,
            "the backup is not at the end of a grown disk"
        );
        assert_eq!(t.last_usable(), (128 << 11) - 34);
    }

    #[test]
    fn every_prefix_of_a_write_reads_back_as_old_or_new() {
        let d = tempfile::tempdir().unwrap();
        for stop in [Stop::AfterBackup, Stop::AfterPrimaryArray, Stop::Complete] {
            let img = image(d.path(), 256);
            let mut t = read(&img).unwrap();
            let new = state_entry(&t);
            t.set(&new).unwrap();
            let phases = std::cell::RefCell::new(Vec::new());
            assert!(write(&img, &t, stop, &|p| phases.borrow_mut().push(p)).unwrap());
            assert_eq!(*phases.borrow().last().unwrap(), stop);
            let back = read(&img).unwrap();
            let has_new = back.entries().contains(&new);
            match stop {
                // The old primary is intact and still names the old backup.
                Stop::AfterBackup => {
                    assert_eq!(back.source, Copy::Primary);
                    assert!(!has_new);
                }
                // The primary's array no longer matches its header: the backup wins.
                Stop::AfterPrimaryArray => {
                    assert_eq!(back.source, Copy::Backup);
                    assert!(has_new);
                }
                Stop::Complete => {
                    assert_eq!(back.source, Copy::Primary);
                    assert!(has_new && back.consistent);
                }
            }
            // Finishing the write from what was read repairs the disk either way.
            let mut again = back.clone();
            again.set(&new).unwrap();
            write(&img, &again, Stop::Complete, &|_| {}).unwrap();
            let fin = read(&img).unwrap();
            assert!(fin.consistent, "{stop:?}");
            assert!(fin.entries().contains(&new));
            let json = sfdisk_ok(&img);
            assert!(json.contains("nodeimage-state"), "{json}");
        }
    }

    /// Found by fuzzing (fuzz/corpus/gpt/regress-backup-array-over-mbr-40k.img): a
    /// backup header whose array runs from LBA 0 up to it has valid CRCs, and left
    /// `last_usable` below zero.
    #[test]
    fn an_array_over_the_mbr_is_not_a_table() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("disk.raw");
        let n: u64 = 80;
        let mut disk = vec![0u8; (n * SECTOR) as usize];
        let count = (n as u32 - 1) * 4;
        let at = ((n - 1) * SECTOR) as usize;
        let crc = crc32fast::hash(&disk[..at]);
        let h = &mut disk[at..];
        h[..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&REVISION.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        h[24..32].copy_from_slice(&(n - 1).to_le_bytes());
        h[32..40].copy_from_slice(&1u64.to_le_bytes());
        h[80..84].copy_from_slice(&count.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc.to_le_bytes());
        let hcrc = crc32fast::hash(&h[..HEADER_SIZE]);
        h[16..20].copy_from_slice(&hcrc.to_le_bytes());
        std::fs::write(&img, &disk).unwrap();
        let e = format!("{:#}", read(&img).unwrap_err());
        assert!(e.contains("overlaps the MBR"), "{e}");
    }

    #[test]
    fn a_damaged_primary_falls_back_to_the_backup_and_is_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let img = image(d.path(), 64);
        // Flip a byte of the primary array: its header's CRC stays valid.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        write_at(&mut f, 2 * SECTOR + 60, b"X").unwrap();
        // The gpt crate gives up on such a disk.
        assert!(gpt::GptConfig::new().writable(false).open(&img).is_err());
        let t = read(&img).unwrap();
        assert_eq!(t.source, Copy::Backup);
        assert!(!t.consistent);
        assert_eq!(t.entries()[0].name, "ESP");
        assert!(write(&img, &t, Stop::Complete, &|_| {}).unwrap());
        let t = read(&img).unwrap();
        assert!(t.consistent && t.source == Copy::Primary);
        sfdisk_ok(&img);
        // Both copies damaged: a clear error naming both.
        write_at(&mut f, 2 * SECTOR + 60, b"X").unwrap();
        write_at(&mut f, ((64 << 11) - 33) * SECTOR + 60, b"X").unwrap();
        let e = format!("{:#}", read(&img).unwrap_err());
        assert!(e.contains("primary") && e.contains("backup"), "{e}");
    }
}

use std::collections::BTreeMap;

use super::*;

fn opts(size: u64) -> FatOptions {
    FatOptions {
        size_bytes: size,
        label: "NODECONFIG".into(),
        volume_id: 0x1234_5678,
        timestamp: 1_700_000_000,
        fat_type: None,
    }
}

#[test]
fn auto_type_by_size() {
    let files = BTreeMap::new();
    let img = build(&files, &opts(4 << 20)).unwrap();
    assert_eq!(BootSector::parse(&img).unwrap().fat_type, FatType::Fat12);
    let img = build(&files, &opts(64 << 20)).unwrap();
    assert_eq!(BootSector::parse(&img).unwrap().fat_type, FatType::Fat16);
    let img = build(&files, &opts(260 << 20)).unwrap();
    let b = BootSector::parse(&img).unwrap();
    assert_eq!(b.fat_type, FatType::Fat32);
    assert_eq!(b.volume_id, 0x1234_5678);
    assert_eq!(img.len(), 260 << 20);
}

/// `node.yaml` and `EFI/BOOT/BOOTX64.EFI` (5000 bytes of 1).
fn two_files() -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    files.insert("node.yaml".to_string(), b"version: 1\n".to_vec());
    files.insert("EFI/BOOT/BOOTX64.EFI".to_string(), vec![1u8; 5000]);
    files
}

#[test]
fn roundtrip_and_case_insensitive_lookup() {
    let files = two_files();
    let img = build(&files, &opts(8 << 20)).unwrap();
    let mut r = FatImage::open(std::io::Cursor::new(&img), 0, img.len() as u64).unwrap();
    assert_eq!(r.label(), Some("NODECONFIG"));
    assert_eq!(r.volume_id(), 0x1234_5678);
    assert_eq!(r.read_all().unwrap(), files);
    assert_eq!(
        r.read_file("/efi/boot/bootx64.efi").unwrap(),
        vec![1u8; 5000]
    );
    assert_eq!(r.read_file("NODE~1.YAM").unwrap(), b"version: 1\n");
    assert!(matches!(
        r.read_file("EFI/BOOT"),
        Err(FatError::NotFound { .. })
    ));
    assert!(matches!(
        r.read_file("nope/x"),
        Err(FatError::NotFound { .. })
    ));
    assert!(matches!(
        r.read_file("node.yaml/x"),
        Err(FatError::NotFound { .. })
    ));
}

#[test]
fn bad_inputs_are_named() {
    let mut files = BTreeMap::new();
    files.insert("a/../b".to_string(), vec![]);
    assert!(matches!(
        build(&files, &opts(4 << 20)),
        Err(FatError::BadPath { .. })
    ));
    let mut files = BTreeMap::new();
    files.insert("A.txt".to_string(), vec![]);
    files.insert("a.TXT".to_string(), vec![]);
    let e = build(&files, &opts(4 << 20)).unwrap_err();
    assert!(e.to_string().contains("case-insensitive"), "{e}");
    let mut o = opts(4 << 20);
    o.label = "node.config".into();
    assert!(matches!(
        build(&BTreeMap::new(), &o),
        Err(FatError::BadLabel { .. })
    ));
    assert!(matches!(
        build(&BTreeMap::new(), &opts(1000)),
        Err(FatError::BadSize { .. })
    ));
    let mut o = opts(4 << 20);
    o.fat_type = Some(FatType::Fat32);
    assert!(build(&BTreeMap::new(), &o).is_err());
    let mut files = BTreeMap::new();
    files.insert("big".to_string(), vec![0u8; 5 << 20]);
    let e = build(&files, &opts(4 << 20)).unwrap_err();
    assert!(matches!(e, FatError::Filesystem { .. }), "{e}");
    assert!(FatImage::open(std::io::Cursor::new(vec![0u8; 4096]), 0, 4096).is_err());
}

#[test]
fn rebuild_keeps_identity_and_applies_changes() {
    let mut files = BTreeMap::new();
    files.insert("config.ign".to_string(), b"{}".to_vec());
    files.insert("keep/me.txt".to_string(), b"kept".to_vec());
    let img = build(&files, &opts(16 << 20)).unwrap();
    let mut changes = FileChanges::new();
    changes.insert("node.yaml".into(), Some(b"version: 1\n".to_vec()));
    changes.insert("CONFIG.IGN".into(), None);
    let new = rebuild(&img, &changes, 1_700_000_000).unwrap();
    assert_eq!(new.len(), img.len());
    assert_eq!(new[..90], img[..90], "boot sector parameters differ");
    let mut r = FatImage::open(std::io::Cursor::new(&new), 0, new.len() as u64).unwrap();
    let all = r.read_all().unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["keep/me.txt", "node.yaml"]);
    assert_eq!(r.label(), Some("NODECONFIG"));
    // Building the same end state from scratch gives the same bytes.
    let direct = build(&all, &opts(16 << 20)).unwrap();
    assert_eq!(direct, new);
}

#[test]
fn timestamps_clamp() {
    let mut o = opts(4 << 20);
    o.timestamp = 0;
    let a = build(&BTreeMap::new(), &o).unwrap();
    o.timestamp = DOS_EPOCH_UNIX;
    let b = build(&BTreeMap::new(), &o).unwrap();
    assert_eq!(a, b);
    o.timestamp = i64::MAX;
    build(&BTreeMap::new(), &o).unwrap();
}

/// Byte offset of the fixed root directory of a FAT12/16 volume.
fn root_dir_offset(img: &[u8]) -> usize {
    let b = BootSector::parse(img).unwrap();
    (usize::from(b.reserved_sectors) + usize::from(b.fat_count) * b.sectors_per_fat as usize)
        * usize::from(b.bytes_per_sector)
}

#[test]
fn probe_accepts_a_zero_jump_and_rejects_what_is_not_fat() {
    let mut files = BTreeMap::new();
    files.insert("node.yaml".to_string(), b"version: 1\n".to_vec());
    let img = build(&files, &opts(4 << 20)).unwrap();
    assert_eq!(img[0], 0xEB);
    // Some writers leave the jump instruction zero; Linux mounts such volumes.
    let mut nojump = img.clone();
    nojump[..3].fill(0);
    let b = BootSector::parse(&nojump).unwrap();
    assert_eq!(b.fat_type, FatType::Fat12);
    let mut r = FatImage::open(std::io::Cursor::new(&nojump), 0, nojump.len() as u64).unwrap();
    assert_eq!(r.label(), Some("NODECONFIG"));
    assert_eq!(r.read_file("node.yaml").unwrap(), b"version: 1\n");

    assert!(BootSector::parse(&[0u8; 512]).is_err());
    assert!(BootSector::parse(&img[..511]).is_err());
    let broken = |at: usize, value: &[u8]| {
        let mut s = img[..512].to_vec();
        s[at..at + value.len()].copy_from_slice(value);
        BootSector::parse(&s)
    };
    assert!(broken(510, &[0, 0]).is_err(), "no 0x55AA");
    assert!(
        broken(11, &300u16.to_le_bytes()).is_err(),
        "bytes per sector"
    );
    assert!(broken(13, &[3]).is_err(), "sectors per cluster");
    assert!(broken(14, &[0, 0]).is_err(), "reserved sectors");
    assert!(broken(16, &[0]).is_err(), "FAT count");
    assert!(broken(21, &[0x12]).is_err(), "media byte");
    assert!(broken(21, &[0xF0]).is_ok(), "media byte 0xF0");
    assert!(broken(22, &[0, 0]).is_err(), "sectors per FAT");
    // A master boot record also ends in 0x55AA; its code bytes are no BPB.
    let mut mbr = vec![0u8; 512];
    mbr[..16].copy_from_slice(&[
        0xFA, 0x33, 0xC0, 0x8E, 0xD0, 0xBC, 0x00, 0x7C, 0x8B, 0xF4, 0x50, 0x07, 0x50, 0x1F, 0xFB,
        0xFC,
    ]);
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    assert!(BootSector::parse(&mbr).is_err());
}

#[test]
fn stat_tells_files_directories_and_nothing_apart() {
    let img = build(&two_files(), &opts(8 << 20)).unwrap();
    let mut r = FatImage::open(std::io::Cursor::new(&img), 0, img.len() as u64).unwrap();
    assert_eq!(r.stat("").unwrap(), Some(Stat::Dir));
    assert_eq!(r.stat("/").unwrap(), Some(Stat::Dir));
    assert_eq!(r.stat("efi/boot").unwrap(), Some(Stat::Dir));
    assert_eq!(
        r.stat("/EFI/BOOT/bootx64.efi").unwrap(),
        Some(Stat::File { size: 5000 })
    );
    assert_eq!(r.stat("NODE~1.YAM").unwrap(), Some(Stat::File { size: 11 }));
    assert_eq!(r.stat("nope").unwrap(), None);
    assert_eq!(r.stat("node.yaml/x").unwrap(), None);
    assert!(r.exists("node.yaml").unwrap());
    assert!(!r.exists("EFI/BOOT").unwrap());
    assert!(!r.exists("").unwrap());
    assert!(matches!(r.read_file("/"), Err(FatError::NotFound { .. })));
}

#[test]
fn root_label_entry_wins_over_the_boot_sector_label() {
    let img = build(&BTreeMap::new(), &opts(4 << 20)).unwrap();
    let open = |img: &[u8]| {
        FatImage::open(std::io::Cursor::new(img.to_vec()), 0, img.len() as u64).unwrap()
    };
    assert_eq!(img[38], 0x29);
    assert_eq!(&img[43..54], b"NODECONFIG ");
    let root = root_dir_offset(&img);
    assert_eq!(&img[root..root + 11], b"NODECONFIG ");
    assert_eq!(img[root + 11] & 0x08, 0x08);

    // A relabel that did not touch the boot sector: the root entry counts.
    let mut a = img.clone();
    a[43..54].copy_from_slice(b"STALE      ");
    assert_eq!(open(&a).label(), Some("NODECONFIG"));
    assert_eq!(open(&a).boot_sector().boot_label, "STALE");

    // Deleted entries before the label are skipped.
    let mut b = img.clone();
    b.copy_within(root..root + 32, root + 32);
    b[root..root + 11].copy_from_slice(b"\xE5LD        ");
    b[root + 11] = 0x08;
    b[43..54].copy_from_slice(b"STALE      ");
    assert_eq!(open(&b).label(), Some("NODECONFIG"));

    // A blank or `NO NAME` root entry is no label; the boot sector is not consulted.
    for entry in [b"           ", b"NO NAME    "] {
        let mut c = a.clone();
        c[root..root + 11].copy_from_slice(entry);
        assert_eq!(open(&c).label(), None, "{entry:?}");
    }

    // No root entry at all: the boot sector's copy...
    let mut c = a.clone();
    c[root..root + 32].fill(0);
    assert_eq!(open(&c).label(), Some("STALE"));
    // ... which is only valid with the extended boot signature 0x29,
    c[38] = 0x28;
    assert_eq!(open(&c).label(), None);
    // ... and is no label when it says `NO NAME`.
    c[38] = 0x29;
    c[43..54].copy_from_slice(b"NO NAME    ");
    assert_eq!(open(&c).label(), None);
}

#[test]
fn empty_label_means_none() {
    let mut o = opts(4 << 20);
    o.label = String::new();
    let img = build(&BTreeMap::new(), &o).unwrap();
    let r = FatImage::open(std::io::Cursor::new(&img), 0, img.len() as u64).unwrap();
    assert_eq!(r.label(), None);
    let again = rebuild(&img, &FileChanges::new(), 1_700_000_000).unwrap();
    assert_eq!(again, img);
}

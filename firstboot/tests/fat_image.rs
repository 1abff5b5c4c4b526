//! FAT images from `nodeimage_core::fat` checked by the real tools: `fsck.fat` (dosfstools)
//! must find nothing, mtools must read back the same bytes, and images made by
//! `mkfs.fat` + `mcopy` must be readable by our reader.

use std::collections::BTreeMap;
use std::path::Path;

use nodeimage_core::fat::{self, BootSector, FatImage, FatOptions, FatType, FileChanges};
use test_support::cmd::{stdout_ok, tool};
use test_support::images::{fsck_fat, mkfs_fat};

/// `fsck.fat -n -v` must exit 0 and report nothing to fix.
fn fsck(path: &Path) {
    fsck_fat(
        path,
        &["-v"],
        &[
            "differ", "wrong", "invalid", "corrupt", "fix", "lost", "bad ", "mismatch", "unable",
            "contains", "reclaim", "truncat", "dirty", "orphan", "marked",
        ],
    );
}

fn mtype(img: &Path, path: &str) -> Vec<u8> {
    stdout_ok(
        &format!("mtype {path}"),
        tool("mtype", "mtools")
            .arg("-i")
            .arg(img)
            .arg(format!("::/{path}")),
    )
}

/// Files (not directories) mtools lists, as paths without the `::/` prefix.
fn mdir_files(img: &Path) -> Vec<String> {
    let out = tool("mdir", "mtools")
        .args(["-/", "-b", "-a", "-i"])
        .arg(img)
        .arg("::")
        .output()
        .unwrap();
    // `mdir -b` exits 1 with "File \"::\" not found" on an empty root (mkfs.fat's too).
    if !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("not found")
        && out.stdout.is_empty()
    {
        let plain = tool("mdir", "mtools")
            .arg("-i")
            .arg(img)
            .arg("::")
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&plain.stdout).contains("No files"),
            "mdir: {plain:?}"
        );
        return Vec::new();
    }
    assert!(
        out.status.success(),
        "mdir: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.ends_with('/'))
        .filter_map(|l| l.strip_prefix("::/"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

fn options(size: u64, fat_type: Option<FatType>) -> FatOptions {
    FatOptions {
        size_bytes: size,
        label: "ESP".into(),
        volume_id: 0xC0FF_EE01,
        timestamp: 1_700_000_000,
        fat_type,
    }
}

/// Build, write to a temp file, fsck, and compare our reader and mtools with the input.
fn check_layout(files: &BTreeMap<String, Vec<u8>>, opts: &FatOptions, expect: FatType) -> Vec<u8> {
    let img = fat::build(files, opts).unwrap();
    assert_eq!(img.len() as u64, opts.size_bytes);
    let boot = BootSector::parse(&img).unwrap();
    assert_eq!(boot.fat_type, expect);
    assert_eq!(boot.volume_id, opts.volume_id);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fat.img");
    std::fs::write(&path, &img).unwrap();
    fsck(&path);

    let mut r = FatImage::open(std::fs::File::open(&path).unwrap(), 0, img.len() as u64).unwrap();
    assert_eq!(r.label(), Some(opts.label.as_str()));
    assert_eq!(r.fat_type(), expect);
    assert_eq!(&r.read_all().unwrap(), files);
    let listed: Vec<String> = r
        .list_files()
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    let mut want: Vec<String> = files.keys().cloned().collect();
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(mdir_files(&path), want, "mtools sees other files");
    for (p, data) in files {
        assert!(mtype(&path, p) == *data, "mtype {p}: contents differ");
    }
    let label = tool("mlabel", "mtools")
        .args(["-s", "-i"])
        .arg(&path)
        .arg("::")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&label.stdout).contains(&format!("Volume label is {}", opts.label))
    );
    img
}

fn mixed_layout(cluster_hint: usize) -> BTreeMap<String, Vec<u8>> {
    let mut f = BTreeMap::new();
    f.insert("EFI/BOOT/BOOTX64.EFI".to_string(), pattern(150_000, 1));
    f.insert(
        "EFI/systemd/systemd-bootx64.efi".to_string(),
        pattern(90_001, 2),
    );
    f.insert(
        "loader/loader.conf".to_string(),
        b"timeout 0\ndefault nodeimage.conf\n".to_vec(),
    );
    f.insert(
        "loader/entries/nodeimage-1.2.3+build.4.conf".to_string(),
        b"title nodeimage\n".to_vec(),
    );
    f.insert(
        "a/b/c/d/e/f/g/h/deeply nested directory with a really long name that needs several LFN entries/x.txt".to_string(),
        b"deep".to_vec(),
    );
    f.insert(
        "A Very Long File Name With Spaces And Mixed Case.TXT".to_string(),
        pattern(3, 3),
    );
    f.insert("lower.txt".to_string(), b"lower".to_vec());
    f.insert("Mixed.Txt".to_string(), b"mixed".to_vec());
    f.insert("two.dots.in.name".to_string(), b"dots".to_vec());
    f.insert("empty".to_string(), Vec::new());
    f.insert("sub/empty.bin".to_string(), Vec::new());
    f.insert("one-cluster.bin".to_string(), pattern(cluster_hint, 4));
    f.insert(
        "one-cluster-plus-one.bin".to_string(),
        pattern(cluster_hint + 1, 5),
    );
    // Many names that share a short-name stem: ~1 .. ~N tails.
    for i in 0..12 {
        f.insert(
            format!("collision/longname-{i:02}.yaml"),
            format!("{i}").into_bytes(),
        );
    }
    f
}

#[test]
fn fat12_small_volume() {
    let opts = options(4 << 20, None);
    let img = check_layout(&mixed_layout(2048), &opts, FatType::Fat12);
    let b = BootSector::parse(&img).unwrap();
    // The "one cluster" file really is one cluster long.
    let cluster = usize::from(b.sectors_per_cluster) * 512;
    let mut f = mixed_layout(cluster);
    f.insert("exact.bin".into(), pattern(cluster, 9));
    check_layout(&f, &opts, FatType::Fat12);
}

#[test]
fn fat16_volume_with_20mb_file() {
    let mut f = mixed_layout(2048);
    f.insert("big/payload.bin".to_string(), pattern(20 * 1024 * 1024, 7));
    check_layout(&f, &options(64 << 20, None), FatType::Fat16);
}

#[test]
fn fat32_volume_auto_and_forced() {
    let img = check_layout(
        &mixed_layout(4096),
        &options(300 << 20, None),
        FatType::Fat32,
    );
    let b = BootSector::parse(&img).unwrap();
    // Backup boot sector at sector 6.
    assert_eq!(img[..512], img[6 * 512..7 * 512]);
    assert_eq!(b.fat_count, 2);
    // FAT32 forced on a smaller volume (cluster count permitting).
    check_layout(
        &mixed_layout(512),
        &options(64 << 20, Some(FatType::Fat32)),
        FatType::Fat32,
    );
}

#[test]
fn empty_volumes_of_each_type() {
    let none = BTreeMap::new();
    check_layout(&none, &options(2 << 20, None), FatType::Fat12);
    check_layout(
        &none,
        &options(32 << 20, Some(FatType::Fat16)),
        FatType::Fat16,
    );
    check_layout(&none, &options(260 << 20, None), FatType::Fat32);
}

#[test]
fn builds_are_byte_identical_and_depend_on_inputs() {
    let f = mixed_layout(2048);
    let a = fat::build(&f, &options(16 << 20, None)).unwrap();
    let b = fat::build(&f, &options(16 << 20, None)).unwrap();
    assert!(a == b, "two builds differ");
    let mut o = options(16 << 20, None);
    o.timestamp += 3600;
    assert!(fat::build(&f, &o).unwrap() != a, "timestamp has no effect");
    let mut o = options(16 << 20, None);
    o.volume_id ^= 1;
    assert!(fat::build(&f, &o).unwrap() != a, "volume id has no effect");
}

#[test]
fn reads_and_rebuilds_a_volume_made_by_mkfs_fat_and_mcopy() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("mk.img");
    stdout_ok(
        "mkfs.fat",
        tool("mkfs.fat", "dosfstools")
            .args(["-C", "-F", "16", "-n", "NODECONFIG", "-i", "DEADBEEF"])
            .arg(&img)
            .arg("16384"),
    );
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("Some Directory")).unwrap();
    std::fs::write(src.join("Some Directory/a long file name.yaml"), b"long").unwrap();
    std::fs::write(
        src.join("config.ign"),
        b"{\"ignition\":{\"version\":\"3.4.0\"}}",
    )
    .unwrap();
    stdout_ok(
        "mcopy",
        tool("mcopy", "mtools")
            .arg("-s")
            .arg("-i")
            .arg(&img)
            .arg(src.join("Some Directory"))
            .arg(src.join("config.ign"))
            .arg("::/"),
    );
    let bytes = std::fs::read(&img).unwrap();
    let mut r = FatImage::open(std::io::Cursor::new(&bytes), 0, bytes.len() as u64).unwrap();
    assert_eq!(r.label(), Some("NODECONFIG"));
    assert_eq!(r.volume_id(), 0xDEAD_BEEF);
    let all = r.read_all().unwrap();
    assert_eq!(all.len(), 2, "{:?}", all.keys());
    assert_eq!(all["Some Directory/a long file name.yaml"], b"long");
    assert_eq!(
        r.read_file("SOME DIRECTORY/A LONG FILE NAME.YAML").unwrap(),
        b"long"
    );

    // Rebuild it with node.yaml added and config.ign removed: same identity, fsck-clean.
    let mut changes = FileChanges::new();
    changes.insert("node.yaml".into(), Some(b"version: 1\n".to_vec()));
    changes.insert("config.ign".into(), None);
    let new = fat::rebuild(&bytes, &changes, 1_700_000_000).unwrap();
    assert_eq!(new.len(), bytes.len());
    let out_path = dir.path().join("rebuilt.img");
    std::fs::write(&out_path, &new).unwrap();
    fsck(&out_path);
    let (b0, b1) = (
        BootSector::parse(&bytes).unwrap(),
        BootSector::parse(&new).unwrap(),
    );
    assert_eq!(
        (
            b0.fat_type,
            b0.sectors_per_cluster,
            b0.reserved_sectors,
            b0.root_entries,
            b0.volume_id,
            b0.total_sectors
        ),
        (
            b1.fat_type,
            b1.sectors_per_cluster,
            b1.reserved_sectors,
            b1.root_entries,
            b1.volume_id,
            b1.total_sectors
        )
    );
    assert_eq!(mtype(&out_path, "node.yaml"), b"version: 1\n");
    assert_eq!(
        mdir_files(&out_path),
        ["Some Directory/a long file name.yaml", "node.yaml"]
    );
}

/// `mkfs.fat -F 32` makes FAT32 volumes with fewer than 65525 clusters (with a warning);
/// they are FAT32 by layout, as Linux reads them, not FAT16 by cluster count.
#[test]
fn small_fat32_from_mkfs_fat_is_fat32() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs_fat(
        dir.path(),
        "small32.img",
        &["-F", "32", "-s", "8", "-n", "CONFIG-2"],
        34_000,
        // mtools reads such a volume as FAT16 ("No directory slots"): no files.
        &[],
    );
    let bytes = std::fs::read(&img).unwrap();
    let boot = BootSector::parse(&bytes).unwrap();
    assert!(boot.cluster_count < 65525, "{}", boot.cluster_count);
    assert_eq!(boot.fat_type, FatType::Fat32);
    assert_eq!(boot.boot_label, "CONFIG-2");
    let mut r = FatImage::open(std::io::Cursor::new(&bytes), 0, bytes.len() as u64).unwrap();
    // The label entry sits in the FAT32 root directory's cluster chain.
    assert_eq!(r.label(), Some("CONFIG-2"));
    assert_eq!(r.stat("/").unwrap(), Some(fat::Stat::Dir));
    assert!(r.list_files().unwrap().is_empty());
}

/// Volumes with 4096-byte logical sectors (`mkfs.fat -S 4096`, what 4Kn disks get) are
/// read; [`fat::rebuild`] writes 512-byte sectors only and refuses them.
#[test]
fn volumes_with_4k_sectors_are_read_but_not_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs_fat(
        dir.path(),
        "4k.img",
        &["-S", "4096", "-n", "CIDATA"],
        8192,
        &[("meta-data", b"instance-id: x\n")],
    );
    let bytes = std::fs::read(&img).unwrap();
    let mut r = FatImage::open(std::io::Cursor::new(&bytes), 0, bytes.len() as u64).unwrap();
    assert_eq!(r.boot_sector().bytes_per_sector, 4096);
    assert_eq!(r.label(), Some("CIDATA"));
    assert_eq!(r.read_file("meta-data").unwrap(), b"instance-id: x\n");
    let e = fat::rebuild(&bytes, &FileChanges::new(), 1_700_000_000).unwrap_err();
    assert!(e.to_string().contains("4096-byte sectors"), "{e}");
}

/// The label is the root directory's label entry, as blkid (`LABEL`), `fatlabel` and
/// mtools read it, also when the boot sector's copy says something else; the boot
/// sector's copy (blkid's `LABEL_FATBOOT`) counts only when the root has no label entry.
#[test]
fn labels_of_mkfs_fat_volumes_are_read_like_blkid() {
    let dir = tempfile::tempdir().unwrap();
    for (fat, kib) in [("12", 1440u32), ("16", 16384), ("32", 40000)] {
        let img = mkfs_fat(
            dir.path(),
            &format!("label{fat}.img"),
            &["-F", fat, "-n", "NODECONFIG"],
            kib,
            &[("node.yaml", b"version: 1\n")],
        );
        let base = std::fs::read(&img).unwrap();
        let boot = BootSector::parse(&base).unwrap();
        let label_at = if boot.fat_type == FatType::Fat32 {
            71
        } else {
            43
        };
        // Right after the FATs: the fixed root of FAT12/16, and cluster 2, where
        // mkfs.fat puts the FAT32 root directory.
        let root = (usize::from(boot.reserved_sectors)
            + usize::from(boot.fat_count) * boot.sectors_per_fat as usize)
            * usize::from(boot.bytes_per_sector);
        assert_eq!(
            &base[root..root + 11],
            b"NODECONFIG ",
            "FAT{fat} root entry"
        );

        let mut stale = base.clone();
        stale[label_at..label_at + 11].copy_from_slice(b"STALE      ");
        let mut blank = stale.clone();
        blank[root..root + 11].copy_from_slice(b"           ");
        let mut none = stale.clone();
        // The label entry becomes a deleted entry: no label entry is left.
        none[root] = 0xE5;
        let cases: [(&str, &[u8], Option<&str>); 4] = [
            ("as made", &base, Some("NODECONFIG")),
            ("stale boot label", &stale, Some("NODECONFIG")),
            ("blank root entry", &blank, None),
            ("no root entry", &none, Some("STALE")),
        ];
        for (what, bytes, want) in cases {
            let path = dir.path().join("case.img");
            std::fs::write(&path, bytes).unwrap();
            let mut r = FatImage::open(std::io::Cursor::new(bytes), 0, bytes.len() as u64).unwrap();
            assert_eq!(r.label(), want, "FAT{fat} {what}");
            assert_eq!(r.read_file("node.yaml").unwrap(), b"version: 1\n");
            let out = tool("blkid", "util-linux")
                .args(["-p", "-o", "export"])
                .arg(&path)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let blkid = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key}=")))
                    .map(str::to_string)
            };
            if what == "no root entry" {
                assert_eq!(blkid("LABEL_FATBOOT").as_deref(), want, "FAT{fat}: {text}");
            } else {
                assert_eq!(blkid("LABEL").as_deref(), want, "FAT{fat} {what}: {text}");
            }
        }
    }
}

#[test]
fn replace_files_at_an_offset_leaves_the_rest_alone() {
    let mut files = BTreeMap::new();
    files.insert("node.yaml".to_string(), b"old".to_vec());
    let vol = fat::build(&files, &options(8 << 20, None)).unwrap();
    let offset = 1 << 20;
    let mut disk = vec![0xAAu8; offset];
    disk.extend_from_slice(&vol);
    disk.extend(std::iter::repeat_n(0x55u8, 4096));
    let mut cur = std::io::Cursor::new(disk);
    let mut changes = FileChanges::new();
    changes.insert("node.yaml".into(), Some(b"new".to_vec()));
    fat::replace_files(
        &mut cur,
        offset as u64,
        vol.len() as u64,
        &changes,
        1_700_000_000,
    )
    .unwrap();
    let disk = cur.into_inner();
    assert!(disk[..offset].iter().all(|b| *b == 0xAA));
    assert!(disk[offset + vol.len()..].iter().all(|b| *b == 0x55));
    let mut r =
        FatImage::open(std::io::Cursor::new(&disk), offset as u64, vol.len() as u64).unwrap();
    assert_eq!(r.read_file("node.yaml").unwrap(), b"new");
}

/// `fsck.fat -n` exits 0 on "FATs differ but appear to be intact"; the helper must
/// still fail on it.
#[test]
#[should_panic(expected = "differ")]
fn fsck_helper_catches_differing_fats() {
    let mut files = BTreeMap::new();
    files.insert("a.txt".to_string(), b"a".to_vec());
    let mut img = fat::build(&files, &options(16 << 20, None)).unwrap();
    let b = BootSector::parse(&img).unwrap();
    let second_fat = (usize::from(b.reserved_sectors) + b.sectors_per_fat as usize) * 512;
    img[second_fat + 200] ^= 0xFF;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.img");
    std::fs::write(&path, &img).unwrap();
    fsck(&path);
}

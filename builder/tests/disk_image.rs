//! Raw GPT images from `nodeimage::disk`, checked by the real tools (sfdisk, sgdisk,
//! qemu-img, fsck.fat, mtools), plus `write-config` and `inspect` on them.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nodeimage::disk::{
    self, attribute, derive_guid, type_guid, DiskError, DiskLayout, PartitionContent, PartitionSpec,
};
use nodeimage_core::fat::{self, BootSector, FatImage, FatOptions};
use sha2::{Digest, Sha256};
use test_support::cmd::{run_ok, tool};
use test_support::images::fsck_fat;

const MIB: u64 = 1024 * 1024;
const NATIVE: &str = "version: 1\nrole: worker\nhostname: node-1\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1:6443\nsecrets:\n  ca_certificate: \"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n\"\n  bootstrap_token: abcdef.0123456789abcdef\n";

/// Byte-compare two (large, sparse) files in 1 MiB chunks.
fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

fn read_range(p: &Path, start: u64, len: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(p).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut v = vec![0u8; len as usize];
    f.read_exact(&mut v).unwrap();
    v
}

fn fat_volume(label: &str, id: u32, size: u64, files: &[(&str, &[u8])]) -> Vec<u8> {
    let files: BTreeMap<String, Vec<u8>> = files
        .iter()
        .map(|(p, d)| (p.to_string(), d.to_vec()))
        .collect();
    fat::build(
        &files,
        &FatOptions {
            size_bytes: size,
            label: label.into(),
            volume_id: id,
            timestamp: 1_700_000_000,
            fat_type: None,
        },
    )
    .unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    image: PathBuf,
    layout: DiskLayout,
    root_image: PathBuf,
    esp: Vec<u8>,
}

/// ESP (FAT, with a manifest) + root (erofs) + a big empty data partition + NODECONFIG
/// (FAT, empty): about 2 GiB, mostly holes.
/// `big`: ESP 64 MiB, root 256 MiB, data 1600 MiB (about 2 GiB); else 8 MiB each
/// (debug-build hashing of large images is slow).
fn fixture(nodeconfig_name: &str, big: bool) -> Fixture {
    let (esp_mib, root_mib, data_mib) = if big { (64, 256, 1600) } else { (8, 8, 8) };
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/os-release"), "ID=debian\n").unwrap();
    let root_image = dir.join("root.erofs");
    let mut c = tool("mkfs.erofs", "erofs-utils");
    c.arg("-T0")
        .arg("-U6c4d1a3e-0000-4000-8000-000000000001")
        .arg(&root_image)
        .arg(&tree);
    run_ok(&mut c);
    let esp = fat_volume(
        "ESP",
        0xE5B0_0001,
        esp_mib * MIB,
        &[
            ("EFI/BOOT/BOOTX64.EFI", b"MZ fake"),
            (
                "nodeimage/manifest.json",
                br#"{"name":"demo","version":"1.2.3"}"#,
            ),
        ],
    );
    let nodeconfig = fat_volume("NODECONFIG", 0x0C0F_1600, 16 * MIB, &[]);
    let g = |s: &str| derive_guid("nodeimage-test", s.as_bytes());
    let mut root = PartitionSpec::new(
        "root-x86-64",
        type_guid::ROOT_X86_64,
        g("root"),
        root_mib * MIB,
        PartitionContent::File(root_image.clone()),
    );
    root.attributes = attribute::READ_ONLY;
    let parts = vec![
        PartitionSpec::new(
            "ESP",
            type_guid::ESP,
            g("esp"),
            esp_mib * MIB,
            PartitionContent::Bytes(esp.clone()),
        ),
        root,
        PartitionSpec::new(
            "data",
            type_guid::LINUX_DATA,
            g("data"),
            data_mib * MIB,
            PartitionContent::Zero,
        ),
        PartitionSpec::new(
            nodeconfig_name,
            type_guid::MICROSOFT_BASIC_DATA,
            g("nodeconfig"),
            16 * MIB,
            PartitionContent::Bytes(nodeconfig),
        ),
    ];
    let image = dir.join("disk.raw");
    let layout = disk::write_disk(&image, g("disk"), &parts).unwrap();
    Fixture {
        _dir: d,
        dir,
        image,
        layout,
        root_image,
        esp,
    }
}

fn extract(image: &Path, start: u64, size: u64, to: &Path) {
    std::fs::write(to, read_range(image, start, size)).unwrap();
}

fn fsck(path: &Path) {
    fsck_fat(
        path,
        &[],
        &[
            "differ", "wrong", "invalid", "corrupt", "reclaim", "lost", "dirty",
        ],
    );
}

#[test]
fn table_is_valid_for_sfdisk_sgdisk_and_qemu_img() {
    let t = std::time::Instant::now();
    let f = fixture("NODECONFIG", true);
    let meta = std::fs::metadata(&f.image).unwrap();
    assert_eq!(meta.len(), f.layout.size_bytes);
    assert_eq!(meta.len() % MIB, 0);
    assert!(meta.len() > 1900 * MIB);
    // Sizes: 1 MiB head, partitions each rounded to MiB, 1 MiB tail.
    assert_eq!(meta.len(), (1 + 64 + 256 + 1600 + 16 + 1) * MIB);
    // Sparse: far less allocated than the size.
    assert!(
        meta.blocks() * 512 < 200 * MIB,
        "allocated {} bytes",
        meta.blocks() * 512
    );
    assert!(t.elapsed().as_secs() < 60, "too slow: {:?}", t.elapsed());

    // The layout read back equals the one written.
    assert_eq!(disk::read_layout(&f.image).unwrap(), f.layout);

    // sfdisk sees the same table.
    let mut c = tool("sfdisk", "fdisk");
    c.arg("--json").arg(&f.image);
    let v: serde_json::Value = serde_json::from_str(&run_ok(&mut c)).unwrap();
    let pt = &v["partitiontable"];
    assert_eq!(pt["label"], "gpt");
    assert_eq!(
        pt["id"].as_str().unwrap().to_lowercase(),
        f.layout.disk_guid.to_string()
    );
    assert_eq!(pt["sectorsize"], 512);
    let sparts = pt["partitions"].as_array().unwrap();
    assert_eq!(sparts.len(), 4);
    for (s, p) in sparts.iter().zip(&f.layout.partitions) {
        assert_eq!(s["start"].as_u64().unwrap(), p.first_lba);
        assert_eq!(s["start"].as_u64().unwrap() % 2048, 0, "not MiB-aligned");
        assert_eq!(s["size"].as_u64().unwrap() * 512, p.size_bytes);
        assert_eq!(
            s["type"].as_str().unwrap().to_lowercase(),
            p.type_guid.to_string()
        );
        assert_eq!(
            s["uuid"].as_str().unwrap().to_lowercase(),
            p.part_guid.to_string()
        );
        assert_eq!(s["name"].as_str().unwrap(), p.name);
    }
    assert_eq!(sparts[1]["attrs"].as_str().unwrap_or(""), "GUID:60");

    // sgdisk's verifier finds nothing (it also checks the protective MBR and the backup).
    let mut c = tool("sgdisk", "gdisk");
    c.arg("-v").arg(&f.image);
    let out = run_ok(&mut c);
    assert!(out.contains("No problems found"), "{out}");

    let mut c = tool("qemu-img", "qemu-utils");
    c.args(["info", "--output=json"]).arg(&f.image);
    let v: serde_json::Value = serde_json::from_str(&run_ok(&mut c)).unwrap();
    assert_eq!(v["format"], "raw");
    assert_eq!(v["virtual-size"].as_u64().unwrap(), f.layout.size_bytes);

    // Protective MBR: one 0xEE partition from LBA 1.
    let bytes = read_range(&f.image, 0, 400 * MIB);
    assert_eq!(&bytes[510..512], &[0x55, 0xAA]);
    assert_eq!(bytes[446 + 4], 0xEE);
    assert_eq!(u32::from_le_bytes(bytes[454..458].try_into().unwrap()), 1);

    // Contents landed where the table says.
    let esp = &f.layout.partitions[0];
    assert_eq!(
        &bytes[esp.start_bytes as usize..(esp.start_bytes as usize + f.esp.len())],
        &f.esp[..]
    );
    let root = &f.layout.partitions[1];
    let erofs = std::fs::read(&f.root_image).unwrap();
    assert_eq!(
        &bytes[root.start_bytes as usize..root.start_bytes as usize + erofs.len()],
        &erofs[..]
    );
    let mut r = FatImage::open(
        std::fs::File::open(&f.image).unwrap(),
        esp.start_bytes,
        esp.size_bytes,
    )
    .unwrap();
    assert_eq!(r.label(), Some("ESP"));
    assert_eq!(r.read_file("EFI/BOOT/BOOTX64.EFI").unwrap(), b"MZ fake");
}

#[test]
fn identical_inputs_give_identical_images() {
    let a = fixture("NODECONFIG", false);
    let b = fixture("NODECONFIG", false);
    assert!(same_bytes(&a.image, &b.image), "two builds differ");
    assert_eq!(a.layout, b.layout);
    // The tmp file is gone.
    assert!(!a.dir.join("disk.raw.tmp").exists());
}

#[test]
fn content_larger_than_partition_is_refused_and_nothing_is_left() {
    let d = tempfile::tempdir().unwrap();
    let big = d.path().join("big");
    std::fs::write(&big, vec![1u8; 2 * MIB as usize]).unwrap();
    let out = d.path().join("disk.raw");
    let parts = [PartitionSpec::new(
        "root",
        type_guid::ROOT_ARM64,
        derive_guid("t", b"r"),
        MIB,
        PartitionContent::File(big),
    )];
    let e = disk::write_disk(&out, derive_guid("t", b"d"), &parts).unwrap_err();
    assert!(matches!(e, DiskError::ContentTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("root"), "{e}");
    assert!(!out.exists());
    assert!(!d.path().join("disk.raw.tmp").exists());
    let e = disk::read_layout(d.path()).unwrap_err();
    assert!(
        e.to_string().contains(&d.path().display().to_string()),
        "{e}"
    );
}

#[test]
fn write_config_native_then_ignition() {
    let f = fixture("NODECONFIG", false);
    let nc = f
        .layout
        .find_partition_by_name("NODECONFIG")
        .unwrap()
        .clone();
    let before_esp = sha256_range(
        &f.image,
        f.layout.partitions[0].start_bytes,
        f.layout.partitions[0].size_bytes,
    );

    write_native_config(&f);

    let part = f.dir.join("nodeconfig.img");
    extract(&f.image, nc.start_bytes, nc.size_bytes, &part);
    fsck(&part);
    let mut c = tool("mtype", "mtools");
    c.arg("-i").arg(&part).arg("::/node.yaml");
    assert_eq!(run_ok(&mut c), NATIVE);
    let bytes = std::fs::read(&part).unwrap();
    let boot = BootSector::parse(&bytes).unwrap();
    assert_eq!(boot.volume_id, 0x0C0F_1600);
    let r = FatImage::open(std::io::Cursor::new(&bytes), 0, bytes.len() as u64).unwrap();
    assert_eq!(r.label(), Some("NODECONFIG"));
    // Other partitions and the table are untouched.
    assert_eq!(disk::read_layout(&f.image).unwrap(), f.layout);
    assert_eq!(
        sha256_range(
            &f.image,
            f.layout.partitions[0].start_bytes,
            f.layout.partitions[0].size_bytes
        ),
        before_esp
    );

    // An Ignition config replaces it: exactly one config remains.
    let ign = f.dir.join("config.ign");
    let ign_text = r#"{"ignition":{"version":"3.4.0"},"passwd":{"users":[{"name":"core","sshAuthorizedKeys":["ssh-ed25519 AAAA"]}]}}"#;
    std::fs::write(&ign, ign_text).unwrap();
    disk::write_config(&disk::WriteConfigArgs {
        image: f.image.clone(),
        config: ign,
    })
    .unwrap();
    extract(&f.image, nc.start_bytes, nc.size_bytes, &part);
    fsck(&part);
    let mut c = tool("mdir", "mtools");
    c.args(["-b", "-i"]).arg(&part).arg("::");
    let listing = run_ok(&mut c);
    assert!(
        listing.contains("config.ign") && !listing.contains("node.yaml"),
        "{listing}"
    );
    let mut c = tool("mtype", "mtools");
    c.arg("-i").arg(&part).arg("::/config.ign");
    assert_eq!(run_ok(&mut c), ign_text);
}

/// `write-config` of the native node config NATIVE (as `node.yaml`) into the fixture's image.
fn write_native_config(f: &Fixture) {
    use std::os::unix::fs::PermissionsExt;
    let cfg = f.dir.join("node.yaml");
    std::fs::write(&cfg, NATIVE).unwrap();
    std::fs::set_permissions(&f.image, std::fs::Permissions::from_mode(0o644)).unwrap();
    disk::write_config(&disk::WriteConfigArgs {
        image: f.image.clone(),
        config: cfg,
    })
    .unwrap();
    // It holds the node's secrets now: nobody else may read the image file.
    let mode = std::fs::metadata(&f.image).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "image mode after write-config");
}

fn sha256_range(p: &Path, start: u64, len: u64) -> String {
    hex::encode(Sha256::digest(read_range(p, start, len)))
}

#[test]
fn invalid_configs_are_refused_and_the_image_is_unchanged() {
    let f = fixture("NODECONFIG", false);
    write_native_config(&f);
    let before = f.dir.join("before.raw");
    std::fs::copy(&f.image, &before).unwrap();
    for (name, text, want) in [
        (
            "bad.yaml",
            format!("{NATIVE}colour: blue\n"),
            "unknown field `colour`",
        ),
        ("worker.yaml", format!("{NATIVE}  ca_key: KEY\n"), "ca_key"),
        (
            "bad.ign",
            r#"{"ignition":{"version":3}}"#.to_string(),
            "ignition.version",
        ),
    ] {
        let p = f.dir.join(name);
        std::fs::write(&p, &text).unwrap();
        let e = disk::write_config(&disk::WriteConfigArgs {
            image: f.image.clone(),
            config: p,
        })
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains(want) && msg.contains(name), "{msg}");
        assert!(same_bytes(&f.image, &before), "{name} changed the image");
    }
}

#[test]
fn nodeconfig_is_found_by_fat_label_and_missing_one_is_named() {
    let f = fixture("config", false);
    let (part, _) =
        disk::write_node_config(&f.image, "node.yaml", NATIVE.as_bytes(), 1_700_000_000).unwrap();
    assert_eq!(part.name, "config");
    let report = disk::inspect_image(&f.image).unwrap();
    assert_eq!(report.config.unwrap().file.as_deref(), Some("node.yaml"));

    // A disk without any NODECONFIG.
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("d.raw");
    let parts = [PartitionSpec::new(
        "ESP",
        type_guid::ESP,
        derive_guid("t", b"e"),
        4 * MIB,
        PartitionContent::Zero,
    )];
    disk::write_disk(&img, derive_guid("t", b"d"), &parts).unwrap();
    let e = disk::write_node_config(&img, "node.yaml", NATIVE.as_bytes(), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("NODECONFIG") && e.contains("ESP (1)"), "{e}");
    // A file that is not a GPT disk.
    let junk = d.path().join("junk.raw");
    std::fs::write(&junk, vec![0u8; MIB as usize]).unwrap();
    let e = disk::write_node_config(&junk, "node.yaml", NATIVE.as_bytes(), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("junk.raw") && e.contains("GPT"), "{e}");
}

#[test]
fn inspect_shows_partitions_manifest_and_redacted_config() {
    let f = fixture("NODECONFIG", false);
    let before = disk::inspect_image(&f.image).unwrap();
    assert_eq!(before.config.as_ref().unwrap().file, None);
    disk::write_node_config(&f.image, "node.yaml", NATIVE.as_bytes(), 1_700_000_000).unwrap();
    let r = disk::inspect_image(&f.image).unwrap();
    assert_eq!(r.manifest.as_ref().unwrap()["version"], "1.2.3");
    let c = r.config.as_ref().unwrap();
    assert_eq!(c.kind.as_deref(), Some("native"));
    assert_eq!(c.secrets_present, ["bootstrap_token", "ca_certificate"]);
    assert!(c.error.is_none());

    let text = disk::render_text(&r);
    test_support::assert_contains(
        &text,
        &[
            "ESP",
            "root-x86-64",
            "data",
            "NODECONFIG",
            "EFI System",
            "Linux root (x86-64)",
            "Microsoft basic data",
            "1.2.3",
            "node-1",
            "bootstrap_token",
        ],
    );
    let json = serde_json::to_string(&r).unwrap();
    for secret in ["0123456789abcdef", "MIIB"] {
        assert!(
            !text.contains(secret) && !json.contains(secret),
            "secret {secret} shown:\n{text}\n{json}"
        );
    }
    // The CLI entry points run.
    disk::inspect(&disk::InspectArgs {
        image: f.image.clone(),
        json: true,
    })
    .unwrap();
    disk::inspect(&disk::InspectArgs {
        image: f.image.clone(),
        json: false,
    })
    .unwrap();
}

#[test]
fn blank_nodeconfig_partition_is_formatted_on_first_write() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("d.raw");
    let g = |s: &str| derive_guid("t", s.as_bytes());
    let parts = [
        PartitionSpec::new(
            "ESP",
            type_guid::ESP,
            g("e"),
            4 * MIB,
            PartitionContent::Zero,
        ),
        PartitionSpec::new(
            "NODECONFIG",
            type_guid::MICROSOFT_BASIC_DATA,
            g("n"),
            16 * MIB,
            PartitionContent::Zero,
        ),
    ];
    let layout = disk::write_disk(&img, g("d"), &parts).unwrap();
    let (part, _) = disk::write_node_config(&img, "node.yaml", NATIVE.as_bytes(), 0).unwrap();
    assert_eq!(part.number, 2);
    let nc = &layout.partitions[1];
    let out = d.path().join("nc.img");
    extract(&img, nc.start_bytes, nc.size_bytes, &out);
    fsck(&out);
    let mut c = tool("mtype", "mtools");
    c.arg("-i").arg(&out).arg("::/node.yaml");
    assert_eq!(run_ok(&mut c), NATIVE);
    let r = FatImage::open(std::fs::File::open(&out).unwrap(), 0, nc.size_bytes).unwrap();
    assert_eq!(r.label(), Some("NODECONFIG"));
    // A second write goes through the rebuild path and keeps the serial.
    let id = r.volume_id();
    disk::write_node_config(&img, "node.yaml", NATIVE.as_bytes(), 0).unwrap();
    extract(&img, nc.start_bytes, nc.size_bytes, &out);
    fsck(&out);
    assert_eq!(
        BootSector::parse(&std::fs::read(&out).unwrap())
            .unwrap()
            .volume_id,
        id
    );
}

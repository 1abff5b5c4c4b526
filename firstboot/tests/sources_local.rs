//! Label-based and local sources on real filesystem images made here with mkfs.fat/mtools
//! and genisoimage/xorriso: the NODECONFIG partition, NoCloud, OpenStack config drive,
//! fw_cfg, sysfs discovery under a fake root, DMI platform detection and source order.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use firstboot::source::blockdev::{probe, FilesystemReader};
use firstboot::source::{
    acquire, detect_from_dmi, DeviceSet, Platform, SourceContext, SourceError,
};

const NODE_YAML: &str = "version: 1\nrole: worker\nhostname: node-1\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1:6443\n";

fn run(cmd: &mut Command) {
    let out = cmd.env("MTOOLS_SKIP_CHECK", "1").output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A FAT image of `kib` KiB labelled `label` holding `files` (path, contents); `fat` is
/// 12, 16 or 32.
fn fat_image(
    dir: &Path,
    name: &str,
    label: &str,
    fat: u8,
    kib: u32,
    files: &[(&str, &[u8])],
) -> PathBuf {
    let img = dir.join(name);
    let mut mkfs = Command::new("mkfs.fat");
    mkfs.args(["-F", &fat.to_string(), "-n", label]);
    if fat != 12 {
        mkfs.args(["-S", "512", "-s", "1"]);
    }
    run(mkfs.arg("-C").arg(&img).arg(kib.to_string()));
    let src = dir.join(format!("{name}.src"));
    for (path, data) in files {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            let _ = Command::new("mmd")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(&img)
                .arg(format!("::/{d}"))
                .output();
        }
        fs::write(&src, data).unwrap();
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&img)
            .arg(&src)
            .arg(format!("::/{path}")));
    }
    img
}

fn ctx_with(root: &Path, devices: Vec<PathBuf>) -> SourceContext {
    SourceContext::new(root, "").with_devices(DeviceSet::files(devices))
}

#[test]
fn nodeconfig_partition_supplies_the_node_config() {
    let d = tempfile::tempdir().unwrap();
    let img = fat_image(
        d.path(),
        "cfg.img",
        "NODECONFIG",
        16,
        8192,
        &[("node.yaml", NODE_YAML.as_bytes())],
    );
    let other = fat_image(
        d.path(),
        "other.img",
        "ESP",
        16,
        8192,
        &[("node.yaml", b"garbage")],
    );
    let ctx = ctx_with(d.path(), vec![other, img]).with_platform(Platform::Metal);
    let a = acquire(&ctx).unwrap();
    assert_eq!(a.source, "nodeconfig-partition");
    assert_eq!(a.node_config.hostname.as_deref(), Some("node-1"));
    assert!(a.ignition.is_none());
}

#[test]
fn empty_nodeconfig_partition_falls_through_and_names_every_source() {
    let d = tempfile::tempdir().unwrap();
    let img = fat_image(d.path(), "cfg.img", "NODECONFIG", 12, 1440, &[]);
    let ctx = ctx_with(d.path(), vec![img]).with_platform(Platform::Metal);
    let e = acquire(&ctx).unwrap_err();
    assert!(matches!(e, SourceError::NoSource { .. }), "{e}");
    let s = e.to_string();
    assert!(
        s.contains("nodeconfig-partition (present, no user data)"),
        "{s}"
    );
    assert!(s.contains("nocloud (not present"), "{s}");
    assert!(s.contains("qemu-fw-cfg (not present"), "{s}");
}

#[test]
fn bad_node_config_names_the_source_line_and_column() {
    let d = tempfile::tempdir().unwrap();
    let bad = format!("{NODE_YAML}colour: blue\n");
    let img = fat_image(
        d.path(),
        "cfg.img",
        "NODECONFIG",
        16,
        8192,
        &[("node.yaml", bad.as_bytes())],
    );
    let e = acquire(&ctx_with(d.path(), vec![img]).with_platform(Platform::Metal))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nodeconfig-partition") && e.contains("colour") && e.contains("line 7 column 1"),
        "{e}"
    );
}

#[test]
fn fat_reader_handles_fat12_16_32_long_names_and_subdirectories() {
    let d = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let files: &[(&str, &[u8])] = &[
        ("openstack/latest/meta_data.json", b"{\"uuid\":\"x\"}"),
        ("A Rather Long File Name With Spaces.yaml", b"long"),
        ("UPPER.TXT", b"upper"),
        ("deep/er/still/big.bin", &big),
    ];
    for (fat, kib) in [(12u8, 1440u32), (16, 16384), (32, 40000)] {
        let img = fat_image(
            d.path(),
            &format!("f{fat}.img"),
            "CONFIG-2",
            fat,
            kib,
            files,
        );
        let v = probe(&img).unwrap().expect("a filesystem");
        assert_eq!(v.label.as_deref(), Some("CONFIG-2"));
        assert_eq!(v.fs.kind(), format!("fat{fat}"));
        let fs: &dyn FilesystemReader = v.fs.as_ref();
        assert_eq!(
            fs.read_file("openstack/latest/meta_data.json")
                .unwrap()
                .unwrap(),
            b"{\"uuid\":\"x\"}"
        );
        assert_eq!(
            fs.read_file("/a rather long file name with spaces.YAML")
                .unwrap()
                .unwrap(),
            b"long"
        );
        assert_eq!(fs.read_file("upper.txt").unwrap().unwrap(), b"upper");
        assert_eq!(
            fs.read_file("deep/er/still/big.bin").unwrap().unwrap(),
            big,
            "fat{fat}"
        );
        assert_eq!(fs.read_file("openstack/latest/user_data").unwrap(), None);
        assert_eq!(fs.read_file("nope/x").unwrap(), None);
        assert!(fs.read_file("openstack").is_err());
    }
}

#[test]
fn sysfs_discovery_opens_dev_nodes_under_the_root_and_skips_loop_devices() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    fs::create_dir_all(root.join("sys/class/block")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    let img = fat_image(
        d.path(),
        "cfg.img",
        "NODECONFIG",
        16,
        8192,
        &[("node.yaml", NODE_YAML.as_bytes())],
    );
    // The config partition appears as a loop device (skipped) and as vdb2 (used).
    for name in ["loop0", "vda", "vdb2"] {
        fs::create_dir_all(root.join("sys/class/block").join(name)).unwrap();
    }
    fs::copy(&img, root.join("dev/loop0")).unwrap();
    fs::write(root.join("dev/vda"), vec![0u8; 4096]).unwrap();
    fs::copy(&img, root.join("dev/vdb2")).unwrap();
    let set = DeviceSet::system(&root);
    assert_eq!(
        set.candidates(),
        vec![root.join("dev/vda"), root.join("dev/vdb2")]
    );
    let vols = set.find_by_label(&["nodeconfig"]);
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].path, root.join("dev/vdb2"));

    let ctx = SourceContext::from_system(&root, Some(Platform::Metal)).unwrap();
    let a = acquire(&ctx).unwrap();
    assert_eq!(a.source, "nodeconfig-partition");
}

//! Label-based and local sources on real filesystem images made here with mkfs.fat/mtools
//! and genisoimage/xorriso: the NODECONFIG partition, NoCloud, OpenStack config drive,
//! fw_cfg, sysfs discovery under a fake root, DMI platform detection and source order.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use firstboot::source::{
    acquire, detect_from_dmi, DeviceSet, Platform, SourceContext, SourceError,
};
use firstboot::source::{blockdev::probe, FilesystemReader};
use test_support::images::{fat12, fat16, fat_image, iso_image};

const NODE_YAML: &str = "version: 1\nrole: worker\nhostname: node-1\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1:6443\n";

fn ctx_with(root: &Path, devices: Vec<PathBuf>) -> SourceContext {
    SourceContext::new(root, "").with_devices(DeviceSet::files(devices))
}

#[test]
fn nodeconfig_partition_supplies_the_node_config() {
    let d = tempfile::tempdir().unwrap();
    let img = fat16(
        d.path(),
        "cfg.img",
        "NODECONFIG",
        &[("node.yaml", NODE_YAML.as_bytes())],
    );
    let other = fat16(d.path(), "other.img", "ESP", &[("node.yaml", b"garbage")]);
    let ctx = ctx_with(d.path(), vec![other, img]).with_platform(Platform::Metal);
    let a = acquire(&ctx).unwrap();
    assert_eq!(a.source, "nodeconfig-partition");
    assert_eq!(a.node_config.hostname.as_deref(), Some("node-1"));
    assert!(a.ignition.is_none());
}

/// Only the boot disk's own NODECONFIG counts: another device with the same label that
/// sorts first (a stick as `sda` before the boot disk `vda`) is ignored, and with none on
/// the boot disk the source is absent rather than the stranger's.
#[test]
fn only_the_boot_disks_nodeconfig_counts() {
    let d = tempfile::tempdir().unwrap();
    let rogue_yaml = NODE_YAML.replace("node-1", "rogue");
    let rogue = fat16(
        d.path(),
        "sda1.img",
        "NODECONFIG",
        &[("node.yaml", rogue_yaml.as_bytes())],
    );
    let own = fat16(
        d.path(),
        "vda3.img",
        "NODECONFIG",
        &[("node.yaml", NODE_YAML.as_bytes())],
    );
    let with_boot = |files: Vec<PathBuf>, boot: Vec<PathBuf>| {
        SourceContext::new(d.path(), "")
            .with_devices(DeviceSet::FilesWithBootDisk { files, boot })
            .with_platform(Platform::Metal)
    };
    // Without a known boot disk the first by name wins (the old behaviour, kept for
    // netboot and --root trees).
    let a = acquire(
        &ctx_with(d.path(), vec![rogue.clone(), own.clone()]).with_platform(Platform::Metal),
    )
    .unwrap();
    assert_eq!(a.node_config.hostname.as_deref(), Some("rogue"));
    let a = acquire(&with_boot(
        vec![rogue.clone(), own.clone()],
        vec![own.clone()],
    ))
    .unwrap();
    assert_eq!(a.node_config.hostname.as_deref(), Some("node-1"));
    let e = acquire(&with_boot(vec![rogue.clone()], vec![own.clone()])).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("no NODECONFIG on the boot disk"), "{s}");
    assert!(!s.contains("rogue"), "{s}");
}

#[test]
fn empty_nodeconfig_partition_falls_through_and_names_every_source() {
    let d = tempfile::tempdir().unwrap();
    let img = fat12(d.path(), "cfg.img", "NODECONFIG", &[]);
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

    // An empty node.yaml is no user data either.
    let img = fat12(d.path(), "cfg2.img", "NODECONFIG", &[("node.yaml", b"\n")]);
    let e = acquire(&ctx_with(d.path(), vec![img]).with_platform(Platform::Metal)).unwrap_err();
    assert!(
        e.to_string()
            .contains("nodeconfig-partition (present, no user data)"),
        "{e}"
    );
}

#[test]
fn bad_node_config_names_the_source_line_and_column() {
    let d = tempfile::tempdir().unwrap();
    let bad = format!("{NODE_YAML}colour: blue\n");
    let img = fat16(
        d.path(),
        "cfg.img",
        "NODECONFIG",
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

/// Boot sectors written by other tools may lack the `0xEB`/`0xE9` jump instruction;
/// the probe does not require it (Linux mounts such volumes), but still refuses
/// non-FAT sectors that end in 0x55AA (a master boot record).
#[test]
fn fat_probe_does_not_require_the_jump_instruction() {
    let d = tempfile::tempdir().unwrap();
    for (fat, kib) in [(12u8, 1440u32), (16, 8192), (32, 40000)] {
        let img = fat_image(
            d.path(),
            &format!("nojump{fat}.img"),
            "CIDATA",
            fat,
            kib,
            &[("user-data", NODE_YAML.as_bytes())],
        );
        let mut bytes = fs::read(&img).unwrap();
        assert!(matches!(bytes[0], 0xEB | 0xE9), "fat{fat}");
        bytes[..3].fill(0);
        fs::write(&img, &bytes).unwrap();
        let v = probe(&img).unwrap().expect("a FAT volume");
        assert_eq!(v.label.as_deref(), Some("CIDATA"), "fat{fat}");
        assert_eq!(v.fs.kind(), format!("fat{fat}"));
        assert_eq!(
            v.fs.read_file("user-data").unwrap().unwrap(),
            NODE_YAML.as_bytes()
        );
    }
    // A disk with an MBR and no filesystem at offset 0 is not FAT.
    let mut mbr = vec![0u8; 1 << 20];
    mbr[..4].copy_from_slice(&[0xFA, 0x33, 0xC0, 0x8E]);
    mbr[446 + 4] = 0x0C;
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    let disk = d.path().join("mbr.img");
    fs::write(&disk, &mbr).unwrap();
    assert!(probe(&disk).unwrap().is_none());
}

/// Detaches a loop device when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A FAT volume on a real block device (a read-only loop device): the size of a
/// device node comes from seeking to its end, its metadata says 0 bytes. Needs root and
/// `losetup`; without them the test prints SKIP and passes (fails under CI).
#[test]
fn fat_on_a_block_device_is_probed_and_read() {
    if !test_support::Needs::new("fat_on_a_block_device_is_probed_and_read")
        .root()
        .tool("losetup", "mount")
        .met()
    {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = fat16(
        d.path(),
        "dev.img",
        "NODECONFIG",
        &[("node.yaml", NODE_YAML.as_bytes())],
    );
    let out = match Command::new("losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(&img)
        .output()
    {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let why = format!(
                "a loop device (losetup: {})",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            let _ = test_support::Needs::new("fat_on_a_block_device_is_probed_and_read")
                .check(false, why)
                .met();
            return;
        }
        Err(e) => {
            let _ = test_support::Needs::new("fat_on_a_block_device_is_probed_and_read")
                .check(false, format!("losetup ({e})"))
                .met();
            return;
        }
    };
    let dev = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let path = PathBuf::from(&dev.0);
    assert_eq!(fs::metadata(&path).unwrap().len(), 0, "{}", dev.0);
    let v = probe(&path).unwrap().expect("a FAT volume");
    assert_eq!(v.label.as_deref(), Some("NODECONFIG"));
    assert_eq!(
        v.fs.read_file("node.yaml").unwrap().unwrap(),
        NODE_YAML.as_bytes()
    );
    let ctx = ctx_with(d.path(), vec![path]).with_platform(Platform::Metal);
    let a = acquire(&ctx).unwrap();
    assert_eq!(a.source, "nodeconfig-partition");
    assert_eq!(a.node_config.hostname.as_deref(), Some("node-1"));
}

#[test]
fn sysfs_discovery_opens_dev_nodes_under_the_root_and_skips_loop_devices() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    fs::create_dir_all(root.join("sys/class/block")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    let img = fat16(
        d.path(),
        "cfg.img",
        "NODECONFIG",
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

const META_JSON: &[u8] = br#"{"uuid":"83679162-1378-4288-a2d4-70e13ec132aa","hostname":"node-cd","availability_zone":"nova","public_keys":{"k":"ssh-ed25519 AAAAcd k"}}"#;

#[test]
fn openstack_config_drive_iso_from_genisoimage_and_xorriso() {
    let d = tempfile::tempdir().unwrap();
    let files: &[(&str, &[u8])] = &[
        ("openstack/latest/meta_data.json", META_JSON),
        ("openstack/latest/user_data", NODE_YAML.as_bytes()),
        ("openstack/2012-08-10/meta_data.json", b"{}"),
        ("ec2/latest/meta-data.json", b"{}"),
    ];
    for (tool, ext) in [
        ("genisoimage", &["-J", "-r"][..]),
        ("xorriso", &["-J", "-r"][..]),
        ("genisoimage", &["-J"][..]),
        ("genisoimage", &["-r"][..]),
    ] {
        let img = iso_image(
            d.path(),
            &format!("cd-{tool}-{}.iso", ext.join("")),
            "config-2",
            tool,
            ext,
            files,
        );
        let v = probe(&img).unwrap().unwrap();
        assert_eq!(v.label.as_deref(), Some("config-2"), "{tool} {ext:?}");
        assert_eq!(v.fs.kind(), "iso9660");
        assert_eq!(
            v.fs.read_file("openstack/latest/meta_data.json")
                .unwrap()
                .unwrap(),
            META_JSON,
            "{tool} {ext:?}"
        );

        let ctx = ctx_with(d.path(), vec![img])
            .with_platform(Platform::OpenStack)
            .with_endpoint(Platform::OpenStack, "http://127.0.0.1:1");
        let a = acquire(&ctx).unwrap();
        assert_eq!(a.source, "openstack-config-drive");
        assert_eq!(
            a.metadata.instance_id.as_deref(),
            Some("83679162-1378-4288-a2d4-70e13ec132aa")
        );
        assert_eq!(a.metadata.hostname.as_deref(), Some("node-cd"));
        assert_eq!(
            a.metadata.ssh_authorized_keys,
            vec!["ssh-ed25519 AAAAcd k".to_string()]
        );
    }
}

#[test]
fn plain_iso9660_names_are_read_without_extensions() {
    let d = tempfile::tempdir().unwrap();
    let img = iso_image(
        d.path(),
        "plain.iso",
        "PLAIN",
        "genisoimage",
        &[],
        &[("README.TXT", b"hi"), ("SUB/NODE.YML", b"x")],
    );
    let v = probe(&img).unwrap().unwrap();
    assert_eq!(v.fs.read_file("readme.txt").unwrap().unwrap(), b"hi");
    assert_eq!(v.fs.read_file("SUB/NODE.YML").unwrap().unwrap(), b"x");
    assert_eq!(v.fs.read_file("SUB/none").unwrap(), None);
}

#[test]
fn openstack_config_drive_on_fat() {
    let d = tempfile::tempdir().unwrap();
    let img = fat16(
        d.path(),
        "cd.img",
        "CONFIG-2",
        &[
            ("openstack/latest/meta_data.json", META_JSON),
            ("openstack/latest/user_data", NODE_YAML.as_bytes()),
        ],
    );
    // Without a platform, config-2 is the last local fallback.
    let a = acquire(&ctx_with(d.path(), vec![img]).with_platform(Platform::Metal)).unwrap();
    assert_eq!(a.source, "openstack-config-drive");
    let names: Vec<_> = a.attempts.iter().map(|x| x.source.as_str()).collect();
    assert_eq!(names, ["nodeconfig-partition", "qemu-fw-cfg", "nocloud"]);
}

#[test]
fn nocloud_seed_on_fat_and_iso() {
    let d = tempfile::tempdir().unwrap();
    let meta = b"instance-id: iid-local01\nlocal-hostname: node-nc\n";
    let files: &[(&str, &[u8])] = &[("user-data", NODE_YAML.as_bytes()), ("meta-data", meta)];
    let fat = fat12(d.path(), "seed.img", "CIDATA", files);
    let iso = iso_image(
        d.path(),
        "seed.iso",
        "cidata",
        "genisoimage",
        &["-J", "-r"],
        files,
    );
    for img in [fat, iso] {
        let a =
            acquire(&ctx_with(d.path(), vec![img.clone()]).with_platform(Platform::Metal)).unwrap();
        assert_eq!(a.source, "nocloud", "{img:?}");
        assert_eq!(a.metadata.instance_id.as_deref(), Some("iid-local01"));
        assert_eq!(a.metadata.hostname.as_deref(), Some("node-nc"));
    }
}

#[test]
fn nodeconfig_partition_wins_over_other_local_sources() {
    let d = tempfile::tempdir().unwrap();
    let other = NODE_YAML.replace("node-1", "node-seed");
    let seed = fat12(
        d.path(),
        "seed.img",
        "CIDATA",
        &[("user-data", other.as_bytes())],
    );
    let cfg = fat12(
        d.path(),
        "cfg.img",
        "NODECONFIG",
        &[("node.yaml", NODE_YAML.as_bytes())],
    );
    let a = acquire(&ctx_with(d.path(), vec![seed, cfg]).with_platform(Platform::Metal)).unwrap();
    assert_eq!(a.source, "nodeconfig-partition");
    assert_eq!(a.node_config.hostname.as_deref(), Some("node-1"));
}

#[test]
fn qemu_fw_cfg_item() {
    let d = test_support::files::fw_cfg_root("opt/org.nodeimage/config", NODE_YAML);
    let a = acquire(&ctx_with(d.path(), vec![]).with_platform(Platform::Qemu)).unwrap();
    assert_eq!(a.source, "qemu-fw-cfg");
    assert_eq!(firstboot::source::FW_CFG_NAME, "opt/org.nodeimage/config");
    // Also found without a platform (local fallbacks).
    let a = acquire(&ctx_with(d.path(), vec![])).unwrap();
    assert_eq!(a.source, "qemu-fw-cfg");
}

fn dmi_root(fields: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("sys/class/dmi/id");
    fs::create_dir_all(&dir).unwrap();
    for (k, v) in fields {
        fs::write(dir.join(k), format!("{v}\n")).unwrap();
    }
    d
}

#[test]
fn platform_from_dmi() {
    // DMI fields as `file=value`, separated by `;`.
    #[rustfmt::skip]
    let cases: &[(&str, Option<Platform>)] = &[
        ("sys_vendor=Amazon EC2;product_name=m5.large", Some(Platform::Ec2)),
        ("sys_vendor=Xen;product_uuid=EC2E1916-9099-7CAF-FD21-012345ABCDEF", Some(Platform::Ec2)),
        ("sys_vendor=Google;product_name=Google Compute Engine", Some(Platform::Gcp)),
        ("sys_vendor=Microsoft Corporation;chassis_asset_tag=7783-7084-3265-9085-8269-3286-77", Some(Platform::Azure)),
        ("sys_vendor=Microsoft Corporation;chassis_asset_tag=None", None),
        ("sys_vendor=OpenStack Foundation;product_name=OpenStack Nova", Some(Platform::OpenStack)),
        ("sys_vendor=DigitalOcean;product_name=Droplet", Some(Platform::DigitalOcean)),
        ("sys_vendor=Hetzner;product_name=vServer", Some(Platform::Hetzner)),
        ("sys_vendor=QEMU;product_name=Standard PC (Q35 + ICH9, 2009)", Some(Platform::Qemu)),
        ("sys_vendor=Dell Inc.;product_name=PowerEdge R640", None),
        ("", None),
    ];
    for (fields, want) in cases {
        let fields: Vec<(&str, &str)> = fields
            .split(';')
            .filter(|f| !f.is_empty())
            .map(|f| f.split_once('=').unwrap())
            .collect();
        let d = dmi_root(&fields);
        assert_eq!(
            detect_from_dmi(d.path()).map(|(p, _)| p),
            *want,
            "{fields:?}"
        );
    }
}

#[test]
fn platform_flag_beats_kernel_argument_beats_dmi() {
    let d = dmi_root(&[("sys_vendor", "Amazon EC2")]);
    let c = SourceContext::new(d.path(), "");
    assert_eq!(c.platform().unwrap().0, Platform::Ec2);
    let c = SourceContext::new(d.path(), "ro firstboot.platform=hetzner");
    assert_eq!(c.platform().unwrap().0, Platform::Hetzner);
    let c = c.with_platform(Platform::Gcp);
    assert_eq!(c.platform().unwrap().0, Platform::Gcp);
    let c = SourceContext::new(d.path(), "firstboot.platform=vmware");
    assert!(c
        .platform()
        .unwrap_err()
        .to_string()
        .contains("unknown platform `vmware`"));
    let e = tempfile::tempdir().unwrap();
    assert_eq!(
        SourceContext::new(e.path(), "").platform().unwrap().0,
        Platform::Metal
    );
}

#[test]
fn nodeconfig_partition_reads_config_ign_and_names_the_file_in_errors() {
    let d = tempfile::tempdir().unwrap();
    // An Ignition config carrying the node config, as `nodeimage write-config` stores it.
    let ign = format!(
        r#"{{"ignition":{{"version":"3.4.0"}},"storage":{{"files":[{{"path":"/etc/nodeimage/node.yaml","contents":{{"source":"data:,{}"}}}}]}}}}"#,
        NODE_YAML
            .replace('\n', "%0A")
            .replace(' ', "%20")
            .replace(':', "%3A")
    );
    let img = fat16(
        d.path(),
        "ign.img",
        "NODECONFIG",
        &[("config.ign", ign.as_bytes())],
    );
    let a = acquire(&ctx_with(d.path(), vec![img]).with_platform(Platform::Metal)).unwrap();
    assert_eq!(a.source, "nodeconfig-partition");
    assert!(a.ignition.is_some());
    assert_eq!(a.node_config.hostname.as_deref(), Some("node-1"));

    // A hand-edited node.yaml with a typo: the error names the partition's file.
    let bad = NODE_YAML.replace("role: worker", "role: wrker");
    let img = fat16(
        d.path(),
        "bad.img",
        "NODECONFIG",
        &[("node.yaml", bad.as_bytes())],
    );
    let e = acquire(&ctx_with(d.path(), vec![img]).with_platform(Platform::Metal))
        .unwrap_err()
        .to_string();
    test_support::assert_contains(&e, &["nodeconfig-partition (NODECONFIG/node.yaml)", "role"]);
}

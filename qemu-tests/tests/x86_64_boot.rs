//! End to end on x86_64, in phases that pass or fail on their own:
//!
//! * the build fixture: `nodeimage build` of profiles/test-x86_64.toml plus three images
//!   from a test registry, kept in `target/qemu-tests/fixture-<variant>-<inputs>/` and reused while
//!   its inputs (both binaries, the profile, the overlays, the test images) are unchanged;
//! * [`build_is_reproducible`]: a second build with `--no-stage-cache` (every stage made
//!   afresh) is byte-identical to the fixture (which may come from the stage cache);
//! * [`fat_partitions_pass_fsck`]: `fsck.fat` on the ESP and NODECONFIG;
//! * [`first_boot_then_reboot`]: `nodeimage write-config`, a UEFI boot under QEMU where
//!   firstboot takes the node's identity from NODECONFIG, then a reboot where it must
//!   not run again;
//! * [`malformed_config_fails_clearly`]: a fresh boot with a hand-broken config that
//!   must print the clear error line;
//! * [`config_from_fw_cfg`]: the node config through QEMU's fw_cfg;
//! * [`tampered_root_is_refused`]: one byte of the root partition flipped from outside
//!   the VM: the initramfs' dm-verity check stops the boot with the block's number.
//!
//! Under TCG one VM runs at a time (they would starve each other on a small machine);
//! the rebuild and fsck run beside them. Needs root, mmdebstrap, docker-registry and
//! qemu-system-x86 (installed by .ci/install-deps).

mod common;

use std::process::Command;

use common::*;
use qemu_tests::{run, workspace_bin};

#[test]
fn build_is_reproducible() {
    if !needs("x86_64 build reproducibility") {
        return;
    }
    let fx = fixture();
    let rebuild = base().join("rebuild");
    let _ = std::fs::remove_dir_all(&rebuild);
    let raw2 = phase("rebuild without the stage cache", || {
        let registry = registry();
        let profile = images_profile(&base(), &registry.base(), &IMAGES_VARIANT);
        let (raw2, t2) = build(&profile, &registry.base(), &rebuild, &["--no-stage-cache"]);
        eprintln!("rebuild: {t2:.1} s");
        raw2
    });
    let raw1 = &fx.raw;
    let (h1, h2) = (sha256(raw1), sha256(&raw2));
    eprintln!("raw sha256 {h1}");
    assert_eq!(h1, h2, "two builds of the same profile differ");
    let zst1 = raw1.with_extension("raw.zst");
    // Every output format (the test profile asks for all) is the same bytes again:
    // SHA256SUMS lists each output and manifest.json.
    let sums = |raw: &std::path::Path| {
        std::fs::read_to_string(raw.parent().unwrap().join("SHA256SUMS")).unwrap()
    };
    eprintln!("SHA256SUMS:\n{}", sums(raw1));
    assert_eq!(sums(raw1), sums(&raw2), "two builds' outputs differ");
    for f in ["raw", "raw.zst", "qcow2", "vhd", "gce.tar.gz", "json"] {
        assert!(
            sums(raw1).lines().any(|l| l.ends_with(&format!(".{f}"))),
            "SHA256SUMS lacks a .{f}"
        );
    }
    for f in ["boot.ipxe", "vmlinuz", "initrd.img", "root.erofs"] {
        assert!(
            sums(raw1).contains(&format!("  pxe/{f}\n")),
            "SHA256SUMS lacks pxe/{f}"
        );
    }
    run(Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(raw1.parent().unwrap()))
    .unwrap();
    // The network boot's root image is the disk's root filesystem, byte for byte (the
    // partition holds it and zeros up to the next MiB).
    let (off, size) = fx.part("root-");
    let part = base().join("root-partition.img");
    extract(raw1, off, size, &part);
    let erofs = std::fs::read(raw1.parent().unwrap().join("pxe/root.erofs")).unwrap();
    let partition = std::fs::read(&part).unwrap();
    std::fs::remove_file(&part).unwrap();
    assert!(erofs.len() <= partition.len());
    assert!(
        partition[..erofs.len()] == erofs[..] && partition[erofs.len()..].iter().all(|b| *b == 0),
        "pxe/root.erofs is not the root partition's file system"
    );
    // The qcow2 and the VHD hold the raw disk, as qemu reads them.
    let dir = raw1.parent().unwrap();
    let name = raw1.file_stem().unwrap().to_str().unwrap();
    run(Command::new("qemu-img")
        .args(["check", "-f", "qcow2", &format!("{name}.qcow2")])
        .current_dir(dir))
    .unwrap();
    for (fmt, ext) in [("qcow2", "qcow2"), ("vpc", "vhd")] {
        run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", fmt])
            .arg(raw1)
            .arg(format!("{name}.{ext}"))
            .current_dir(dir))
        .unwrap();
    }
    for ext in ["qcow2", "vhd", "gce.tar.gz"] {
        eprintln!(
            "{ext}: {} MiB",
            std::fs::metadata(dir.join(format!("{name}.{ext}")))
                .unwrap()
                .len()
                >> 20
        );
    }
    eprintln!(
        "raw {} MiB (allocated {} MiB), zst {} MiB",
        std::fs::metadata(raw1).unwrap().len() >> 20,
        Command::new("du")
            .arg("-m")
            .arg(raw1)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("?")
                .to_string())
            .unwrap(),
        std::fs::metadata(&zst1).unwrap().len() >> 20
    );
    std::fs::remove_dir_all(&rebuild).unwrap();
}

#[test]
fn fat_partitions_pass_fsck() {
    if !needs("x86_64 image FAT partitions") {
        return;
    }
    let fx = fixture();
    for (name, offset, size) in fx
        .parts
        .iter()
        .filter(|p| p.0 == "ESP" || p.0 == "NODECONFIG")
    {
        let f = base().join(format!("{name}.fat"));
        extract(&fx.raw, *offset, *size, &f);
        test_support::images::fsck_fat(&f, &["-v"], &[]);
        std::fs::remove_file(&f).unwrap();
    }
}

#[test]
fn first_boot_then_reboot() {
    if !needs("x86_64 first boot and reboot") {
        return;
    }
    let fx = fixture();
    let base = base();
    // A node config goes into NODECONFIG; first boot runs firstboot.
    let nodeimage = workspace_bin("nodeimage").unwrap();
    let node_yaml = base.join("node.yaml");
    std::fs::write(
        &node_yaml,
        format!("{TEST_NODE}hostname: test-node-1\nfiles:\n  - path: /etc/nodeimage-test/hello\n    mode: \"0640\"\n    contents: hello from NODECONFIG\n"),
    )
    .unwrap();
    let disk_a = base.join("node-a.raw");
    boot_copy(&fx.raw, &disk_a, 4 << 30);
    run(Command::new(&nodeimage)
        .arg("write-config")
        .arg(&disk_a)
        .arg(&node_yaml))
    .unwrap();
    let inspect = run(Command::new(&nodeimage).arg("inspect").arg(&disk_a)).unwrap();
    test_support::assert_contains(
        &inspect,
        &[
            "NODECONFIG",
            "test-node-1",
            "dm-verity root hash",
            "verity-a",
            "root-b",
        ],
    );

    // A stranger's NODECONFIG on a second disk that sorts first (AHCI `sda` before the
    // boot disk `vda`): firstboot must take the boot disk's own, and must neither read
    // nor erase the stranger's. The disk is writable (QEMU's IDE disks refuse read-only
    // block nodes), so the check after the boot below is a real one.
    let rogue = test_support::images::fat16(
        &base,
        "rogue-nodeconfig.img",
        "NODECONFIG",
        &[(
            "node.yaml",
            format!("{TEST_NODE}hostname: rogue-node\n").as_bytes(),
        )],
    );
    let rogue_disk = vec![
        "-drive".to_string(),
        format!("file={},format=raw,if=none,id=rogue", rogue.display()),
        "-device".to_string(),
        "ide-hd,drive=rogue,bus=ide.0".to_string(),
    ];

    let slot = vm_slot();
    let r1 = phase("first boot", || {
        let (line, r1) = boot(&disk_a, "boot1", rogue_disk.clone());
        assert!(
            line.starts_with("firstboot: ok role=worker hostname=test-node-1 in "),
            "{line}"
        );
        assert_eq!(r1.len(), 1, "one report line expected: {r1:?}");
        r1[0].clone()
    });
    assert_eq!(r1["hostname"], "test-node-1");
    let rogue_bytes = std::fs::read(&rogue).unwrap();
    let rogue_len = rogue_bytes.len() as u64;
    let rogue_files =
        nodeimage_core::fat::FatImage::open(std::io::Cursor::new(rogue_bytes), 0, rogue_len)
            .unwrap()
            .read_all()
            .unwrap();
    assert_eq!(
        rogue_files.keys().collect::<Vec<_>>(),
        ["node.yaml"],
        "the stranger's NODECONFIG was changed by the first boot"
    );
    // After a successful first boot the config (and its secrets) left NODECONFIG.
    let after: serde_json::Value = serde_json::from_str(
        &run(Command::new(&nodeimage)
            .args(["inspect", "--json"])
            .arg(&disk_a))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        after["config"]["files"],
        serde_json::json!(["erased.txt"]),
        "NODECONFIG after the first boot: {after}"
    );
    assert_eq!(r1["firstboot_result"], "success");
    assert_eq!(r1["done"], true);
    assert_eq!(r1["root_fs"], "erofs");
    assert_eq!(r1["var_fs"], "ext4");
    assert_eq!(r1["etc_fs"], "overlay");
    // Issue 14: the root is mounted through dm-verity, and nothing has failed its check.
    let root = b64(r1["root-verity"]
        .as_str()
        .expect("the report carries the root's device"));
    let (source, status_json) = root.split_once('\n').unwrap_or((&root, ""));
    assert_eq!(source, "/dev/mapper/nodeimage-root", "{root}");
    let live: serde_json::Value = serde_json::from_str(status_json).expect(status_json);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fx.raw.parent().unwrap().join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(live["root"]["verity"], "dm-verity", "{live}");
    assert_eq!(live["root"]["state"], "verified", "{live}");
    assert_eq!(
        live["root"]["root_hash"],
        manifest["root"]["verity"]["root_hash"]
    );
    // The system around firstboot: a tmpfs /tmp (sandboxed units need it on the
    // read-only root), systemd-resolved running, no failed unit.
    let system = b64(r1["system-state"]
        .as_str()
        .expect("the report carries the system state"));
    eprintln!("guest system state:\n{system}");
    assert!(system.contains("tmp tmpfs"), "{system}");
    assert!(system.contains("systemd-resolved active"), "{system}");
    assert!(system.contains("resolv.conf present"), "{system}");
    assert!(!system.contains("failed "), "failed units: {system}");
    let status = &r1["status"];
    assert_eq!(status["state"], "ok");
    assert_eq!(status["role"], "worker");
    assert_eq!(status["hostname"], "test-node-1");
    assert_eq!(status["source"], "nodeconfig-partition");
    let steps: Vec<&str> = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "acquire",
            "preflight",
            "firewall",
            "hostname",
            "files",
            "containerd-config",
            "images"
        ],
        "{status}"
    );
    // Issue 4: the baked images for this role are in containerd's k8s.io namespace, and
    // the CRI uses the pinned sandbox image.
    let images = b64(r1["ctr-images"]
        .as_str()
        .expect("the report carries `ctr -n k8s.io images ls -q`"));
    eprintln!("guest images:\n{images}");
    assert!(
        images.contains(&format!("{TEST_REGISTRY}/pause:3.10")),
        "{images}"
    );
    assert!(
        images.contains(&format!("{TEST_REGISTRY}/tools:1.0")),
        "{images}"
    );
    assert!(
        !images.contains(&format!("{TEST_REGISTRY}/cp:1.0")),
        "a worker must not import master images: {images}"
    );
    let cri = b64(r1["containerd-cri"].as_str().unwrap());
    eprintln!("guest containerd CRI config:\n{cri}");
    assert!(
        cri.contains(&format!("{TEST_REGISTRY}/pause:3.10")),
        "sandbox image not pinned: {cri}"
    );
    assert!(cri.contains("SystemdCgroup = true"), "{cri}");
    let import = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "images")
        .unwrap();
    eprintln!("images step: {} ms ({})", import["ms"], import["detail"]);
    // Issue 6: the firewall firstboot loaded is the port table's worker ruleset.
    let ruleset = b64(r1["nft-ruleset"]
        .as_str()
        .expect("the report carries `nft list table inet nodeimage`"));
    eprintln!("guest ruleset:\n{ruleset}");
    assert!(ruleset.contains("table inet nodeimage"), "{ruleset}");
    assert!(ruleset.contains("10250"), "kubelet port missing: {ruleset}");
    assert!(
        !ruleset.contains("dport 6443 accept"),
        "a worker must not open 6443: {ruleset}"
    );

    // Reboot: firstboot does not run again; hostname and status persist.
    // The unit's condition is false, so firstboot prints nothing: wait for the report.
    let r2 = phase("reboot", || {
        let mut vm = start(&disk_a, "boot2", vec![]);
        vm.wait_exit(BOOT_TIMEOUT).unwrap();
        assert!(
            !vm.console().contains("firstboot: ok"),
            "firstboot ran again"
        );
        vm.report().unwrap()[0].clone()
    });
    drop(slot);
    assert_ne!(r2["boot_id"], r1["boot_id"]);
    assert_eq!(r2["hostname"], "test-node-1", "hostname did not persist");
    assert_eq!(r2["firstboot_condition"], "no", "firstboot ran again: {r2}");
    assert_eq!(
        r2["status"], r1["status"],
        "status.json changed on the second boot"
    );
    let _ = std::fs::remove_file(&disk_a);
}

#[test]
fn malformed_config_fails_clearly() {
    if !needs("x86_64 boot with a malformed config") {
        return;
    }
    let fx = fixture();
    let base = base();
    // A fresh node whose config was edited by hand into something malformed.
    let disk_b = base.join("node-b.raw");
    boot_copy(&fx.raw, &disk_b, 4 << 30);
    let (off, _) = fx.part("NODECONFIG");
    let bad = base.join("node.yaml.bad");
    std::fs::write(
        &bad,
        "version: 1\nrole: wrker\ncluster:\n  name: qemu\n  api_endpoint: x\n",
    )
    .unwrap();
    // Like a user editing the file on a laptop: mtools, not our own writer.
    run(Command::new("mcopy")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@{off}", disk_b.display()))
        .arg(&bad)
        .arg("::/node.yaml"))
    .unwrap();
    let _slot = vm_slot();
    phase("boot with a malformed config", || {
        let (line, report) = boot(&disk_b, "boot3", vec![]);
        assert!(line.starts_with("firstboot: error: "), "{line}");
        assert!(
            line.contains("node.yaml") && line.contains("role"),
            "the error must name the file and the field: {line}"
        );
        let r3 = &report[0];
        assert_eq!(r3["firstboot_result"], "exit-code");
        assert_eq!(r3["done"], false);
        assert_eq!(r3["status"]["state"], "failed");
    });
    let _ = std::fs::remove_file(&disk_b);
}

#[test]
fn config_from_fw_cfg() {
    if !needs("x86_64 boot with the config in fw_cfg") {
        return;
    }
    let fx = fixture();
    let base = base();
    // Issue 3: a real data source end to end. No NODECONFIG config; the node config
    // comes through QEMU's fw_cfg (platform detected from SMBIOS as QEMU).
    let disk_c = base.join("node-c.raw");
    boot_copy(&fx.raw, &disk_c, 4 << 30);
    let fw_yaml = base.join("fwcfg-node.yaml");
    std::fs::write(&fw_yaml, format!("{TEST_NODE}hostname: test-node-fwcfg\n")).unwrap();
    let _slot = vm_slot();
    phase("boot with the config in fw_cfg", || {
        let (line, report) = boot(
            &disk_c,
            "boot4",
            vec![
                "-fw_cfg".into(),
                format!("name=opt/org.nodeimage/config,file={}", fw_yaml.display()),
            ],
        );
        assert!(
            line.starts_with("firstboot: ok role=worker hostname=test-node-fwcfg in "),
            "{line}"
        );
        let r4 = &report[0];
        assert_eq!(r4["status"]["source"], "qemu-fw-cfg");
        eprintln!(
            "boot 4: config acquired in {} ms",
            r4["status"]["steps"][0]["ms"]
        );
    });
    let _ = std::fs::remove_file(&disk_c);
}

#[test]
fn tampered_root_is_refused() {
    if !needs("x86_64 boot with a tampered root partition") {
        return;
    }
    let fx = fixture();
    let base = base();
    let disk = base.join("node-tampered.raw");
    boot_copy(&fx.raw, &disk, 4 << 30);
    // One bit of one byte in the middle of the erofs image, written from outside, as an
    // attacker with the disk (or a failing sector) would.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fx.raw.parent().unwrap().join("manifest.json")).unwrap(),
    )
    .unwrap();
    let erofs_size = manifest["root"]["erofs_size"].as_u64().unwrap();
    let (off, _) = fx.part("root-");
    let at = erofs_size / 2 + 123;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, off + at).unwrap();
        b[0] ^= 0x10;
        f.write_all_at(&b, off + at).unwrap();
        f.sync_all().unwrap();
    }
    let block = at / 4096;
    let _slot = vm_slot();
    phase("boot with a tampered root partition", || {
        let mut vm = start(&disk, "tampered", vec![]);
        let (line, t) = vm
            .wait_for_any(
                &["nodeimage: verified root failed: ", "firstboot: "],
                BOOT_TIMEOUT,
            )
            .unwrap();
        eprintln!("tampered root: `{line}` after {:.1} s", t.as_secs_f64());
        assert!(
            line.contains(&format!(
                "fails dm-verity at byte {} (data block {block} of ",
                block * 4096
            )) && line.contains("refusing to boot it"),
            "{line}"
        );
        vm.wait_for(
            "nodeimage: the root could not be verified (see the message above)",
            BOOT_TIMEOUT,
        )
        .unwrap();
        assert!(
            !vm.console().contains("firstboot: "),
            "nothing of the tampered root may run"
        );
    });
    let _ = std::fs::remove_file(&disk);
}

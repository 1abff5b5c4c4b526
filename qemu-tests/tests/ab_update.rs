//! A/B image updates under QEMU, from signed bundles served over HTTP on 127.0.0.1 (the
//! guest's 10.0.2.2):
//!
//! * [`update_to_b_then_a_broken_bundle_rolls_back`]: a node of image A joins (first
//!   boot), is given image B's bundle (`firstboot update URL`, run by the test image's
//!   report service when fw_cfg names a URL), boots into slot B, reports B's version,
//!   keeps its hostname and does not run firstboot again (its /etc and /var survive),
//!   and blesses B's boot entry. Then a bundle signed with the right key whose root is
//!   no file system: written into slot A, tried three times (systemd-boot's boot counter),
//!   and given up: the node is back on B by itself.
//!
//! Both fixtures (the x86_64_boot image as A, a second profile as B) are built with the
//! test update key (`common::update_key`, TEST ONLY). Needs what x86_64_boot needs.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use nodeimage_core::bundle::{self, BundleManifest, BundleVerity, SigningKey};
use qemu_tests::{run, workspace_bin};
use test_support::http::TestServer;

/// The ESP's loader entries of `disk`.
fn entries(disk: &std::path::Path, esp: u64) -> Vec<String> {
    let out = run(Command::new("mdir")
        .args(["-b", "-i", &format!("{}@@{esp}", disk.display())])
        .arg("::/loader/entries"))
    .unwrap();
    let mut v: Vec<String> = out
        .lines()
        .map(|l| l.rsplit('/').next().unwrap_or(l).trim().to_string())
        .filter(|l| l.ends_with(".conf"))
        .collect();
    v.sort();
    v
}

/// The report's `root-verity` part: the root's device and `firstboot status`.
fn status_of(report: &serde_json::Value) -> serde_json::Value {
    let root = b64(report["root-verity"]
        .as_str()
        .expect("the report has the root's status"));
    let (_, json) = root.split_once('\n').unwrap_or((&root, ""));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("firstboot status: {e}: {json}"))
}

fn version_of(manifest: &std::path::Path) -> String {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    format!(
        "{}-{}",
        m["source_date_epoch"],
        &m["inputs_sha256"].as_str().unwrap()[..12]
    )
}

/// A bundle signed with the test key whose root verifies against its tree but is no
/// file system (16 MiB of noise): an image that cannot boot.
fn broken_bundle(pxe: &std::path::Path) -> Vec<u8> {
    let root = test_support::noise(16 << 20, 0x2545);
    let tree = nodeimage_core::verity::build(
        &root,
        &nodeimage_core::verity::Params::new(vec![3; 32], [5; 16]),
    )
    .unwrap();
    let m = BundleManifest {
        format: 1,
        name: "broken".into(),
        arch: "x86_64".into(),
        version: "0-broken".into(),
        inputs_sha256: "0".repeat(64),
        kernel_version: "-".into(),
        cmdline: "console=ttyS0,115200".into(),
        verity: BundleVerity {
            root_hash: hex::encode(tree.root_hash),
            data_blocks: tree.data_blocks,
        },
        members: vec![],
    };
    let (kernel, initrd) = (
        std::fs::read(pxe.join("vmlinuz")).unwrap(),
        std::fs::read(pxe.join("initrd.img")).unwrap(),
    );
    let (secret, _) = update_key();
    let key = SigningKey::from_pem(&std::fs::read_to_string(secret).unwrap(), "test key").unwrap();
    let mut out = Vec::new();
    let members: [(&str, &[u8]); 4] = [
        ("vmlinuz", &kernel),
        ("initrd.img", &initrd),
        ("root.erofs", &root),
        ("root.verity", &tree.hash_area),
    ];
    bundle::write_all(&mut out, m, &members, &key).unwrap();
    out
}

/// The console's boot loader entry lines don't exist; the kernel's command line does.
fn booted_version(console: &str) -> Option<String> {
    console
        .lines()
        .find(|l| l.contains("Command line:"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("nodeimage.version="))
        })
        .map(str::to_string)
}

#[test]
fn update_to_b_then_a_broken_bundle_rolls_back() {
    if !needs("x86_64 A/B update and rollback") {
        return;
    }
    let a = fixture();
    let b = fixture_of(&UPDATE_B_VARIANT);
    let b_out = b.raw.parent().unwrap();
    let b_bundle = b_out.join(format!("{}.bundle", UPDATE_B_VARIANT.name));
    let (version_a, version_b) = (
        version_of(&a.raw.parent().unwrap().join("manifest.json")),
        version_of(&b_out.join("manifest.json")),
    );
    assert_ne!(version_a, version_b);
    eprintln!(
        "bundle B: {} MiB, version {version_b}",
        std::fs::metadata(&b_bundle).unwrap().len() >> 20
    );
    let server = TestServer::files(vec![
        ("/b.bundle", std::fs::read(&b_bundle).unwrap()),
        ("/broken.bundle", broken_bundle(&b_out.join("pxe"))),
    ]);
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let url = |p: &str| format!("http://10.0.2.2:{port}/{p}");
    let fw_update = |u: String| {
        vec![
            "-fw_cfg".to_string(),
            format!("name=opt/org.nodeimage.test/update,string={u}"),
        ]
    };

    let base = base();
    let disk = base.join("node-ab.raw");
    boot_copy(&a.raw, &disk, 4 << 30);
    let node_yaml = base.join("ab-node.yaml");
    std::fs::write(&node_yaml, format!("{TEST_NODE}hostname: test-node-ab\n")).unwrap();
    run(Command::new(workspace_bin("nodeimage").unwrap())
        .arg("write-config")
        .arg(&disk)
        .arg(&node_yaml))
    .unwrap();
    let esp = a.part("ESP").0;
    let _slot = vm_slot();

    phase("first boot on slot A", || {
        let (line, r) = boot(&disk, "ab1", vec![]);
        assert!(
            line.starts_with("firstboot: ok role=worker hostname=test-node-ab"),
            "{line}"
        );
        let st = status_of(&r[0]);
        assert_eq!(st["slots"]["running"], "a", "{st}");
        assert_eq!(st["slots"]["version"], version_a.as_str(), "{st}");
    });
    assert_eq!(entries(&disk, esp), ["nodeimage-1-a.conf"]);

    // A boot that runs `firstboot update <bundle>` before its report; what it printed.
    let update_boot = |name: &str, bundle: &str, want: &str| {
        let mut vm = start(&disk, name, fw_update(url(bundle)));
        vm.wait_exit(BOOT_TIMEOUT).unwrap();
        let r = vm.report().unwrap();
        let out = b64(r[0]["update"].as_str().expect("the update ran"));
        eprintln!("update: {out}");
        assert!(out.contains(want) && out.ends_with("exit=0"), "{out}");
    };
    phase("update to B over HTTP", || {
        update_boot("ab2", "b.bundle", "firstboot: update: slot b now holds")
    });
    assert_eq!(
        entries(&disk, esp),
        ["nodeimage-1-a.conf", "nodeimage-2-b+3.conf"]
    );

    phase("boot into B", || {
        let mut vm = start(&disk, "ab3", vec![]);
        vm.wait_exit(BOOT_TIMEOUT).unwrap();
        assert_eq!(
            booted_version(&vm.console()).as_deref(),
            Some(version_b.as_str())
        );
        let r = vm.report().unwrap();
        let st = status_of(&r[0]);
        assert_eq!(st["slots"]["running"], "b", "{st}");
        assert_eq!(st["slots"]["version"], version_b.as_str(), "{st}");
        assert_eq!(
            st["slots"]["installed"]["b"]["version"],
            version_b.as_str(),
            "{st}"
        );
        assert_eq!(st["root"]["state"], "verified", "{st}");
        // The node's state came along: its name, and firstboot's done marker.
        assert_eq!(r[0]["hostname"], "test-node-ab");
        assert_eq!(
            r[0]["firstboot_condition"], "no",
            "firstboot ran again on B"
        );
    });
    assert_eq!(
        entries(&disk, esp),
        ["nodeimage-1-a.conf", "nodeimage-2-b.conf"],
        "B's healthy boot keeps its entry"
    );

    phase("a broken bundle into slot A", || {
        update_boot("ab4", "broken.bundle", "slot a now holds broken 0-broken")
    });
    assert_eq!(
        entries(&disk, esp),
        ["nodeimage-2-b.conf", "nodeimage-3-a+3.conf"]
    );

    phase("three failed tries, then back on B by itself", || {
        let mut failed = 0;
        for n in 5..10 {
            let mut vm = start(&disk, &format!("ab{n}"), vec![]);
            vm.wait_exit(BOOT_TIMEOUT + Duration::from_secs(60))
                .unwrap();
            let console = vm.console();
            let r = vm.report().unwrap();
            if r.is_empty() {
                assert!(
                    console.contains("nodeimage: verified root failed: the verified root holds no erofs file system"),
                    "boot {n} failed otherwise:\n{}",
                    console.lines().rev().take(30).collect::<Vec<_>>().join("\n")
                );
                failed += 1;
                continue;
            }
            let st = status_of(&r[0]);
            assert_eq!(st["slots"]["running"], "b", "{st}");
            assert_eq!(
                booted_version(&console).as_deref(),
                Some(version_b.as_str())
            );
            break;
        }
        assert_eq!(failed, 3, "the broken entry gets three tries");
    });
    let left = entries(&disk, esp);
    assert!(left.contains(&"nodeimage-2-b.conf".to_string()), "{left:?}");
    assert!(
        left.contains(&"nodeimage-3-a+0-3.conf".to_string()),
        "the broken entry is used up: {left:?}"
    );
    let _ = std::fs::remove_file(&disk);
}

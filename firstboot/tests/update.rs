//! `firstboot update`'s install against real files standing for a slot's partitions and
//! a bundle served over HTTP on 127.0.0.1: a good bundle lands byte for byte and its tree
//! verifies; a bundle signed by another key, one with a changed member, one for another
//! architecture or too large for the slot is refused with the slot untouched.

use std::fs;
use std::path::Path;

use firstboot::update::{install, open_source, SlotTargets};
use nodeimage_core::bundle::{self, BundleManifest, BundleVerity, SigningKey};
use test_support::http::TestServer;

struct Bundle {
    bytes: Vec<u8>,
    erofs: Vec<u8>,
    tree: Vec<u8>,
    root_hash: String,
}

/// A bundle whose root is `blocks` blocks of noise with its real tree.
fn make_bundle(key: &SigningKey, blocks: usize, arch: &str) -> Bundle {
    let erofs = test_support::noise(blocks * 4096, 0x9e37);
    let t = nodeimage_core::verity::build(
        &erofs,
        &nodeimage_core::verity::Params::new(vec![7; 32], [1; 16]),
    )
    .unwrap();
    let m = BundleManifest {
        format: 1,
        name: "test".into(),
        arch: arch.into(),
        version: "1767225600-abcdefabcdef".into(),
        inputs_sha256: "0".repeat(64),
        kernel_version: "6.1.0-test".into(),
        cmdline: String::new(),
        verity: BundleVerity {
            root_hash: hex::encode(t.root_hash),
            data_blocks: t.data_blocks,
        },
        members: vec![],
    };
    let mut bytes = Vec::new();
    let members: [(&str, &[u8]); 4] = [
        ("vmlinuz", b"kernel"),
        ("initrd.img", b"initrd"),
        ("root.erofs", &erofs),
        ("root.verity", &t.hash_area),
    ];
    bundle::write_all(&mut bytes, m, &members, key).unwrap();
    Bundle {
        bytes,
        root_hash: hex::encode(t.root_hash),
        tree: t.hash_area,
        erofs,
    }
}

/// Two files of `root_mib` and 1 MiB filled with 0xEE, standing for slot B.
fn slot(dir: &Path, root_mib: usize) -> SlotTargets {
    let t = SlotTargets {
        slot: "b".into(),
        root: dir.join("root-b"),
        verity: dir.join("verity-b"),
        root_partuuid: uuid::Uuid::from_u128(0xb),
        verity_partuuid: uuid::Uuid::from_u128(0xbb),
    };
    let esp = dir.join("esp");
    std::fs::create_dir_all(esp.join("loader/entries")).unwrap();
    std::fs::write(esp.join("loader/entries/nodeimage-1-a.conf"), "title a\n").unwrap();
    fs::write(&t.root, vec![0xEE; root_mib << 20]).unwrap();
    fs::write(&t.verity, vec![0xEE; 1 << 20]).unwrap();
    t
}

fn untouched(t: &SlotTargets) -> bool {
    let esp = t.root.parent().unwrap().join("esp/loader/entries");
    let entries: Vec<_> = fs::read_dir(esp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    fs::read(&t.root).unwrap().iter().all(|b| *b == 0xEE)
        && fs::read(&t.verity).unwrap().iter().all(|b| *b == 0xEE)
        && entries == ["nodeimage-1-a.conf"]
}

const ARCH: &str = "x86_64";

#[test]
fn a_good_bundle_over_http_lands_in_the_other_slot() {
    let d = tempfile::tempdir().unwrap();
    let (_, key) = SigningKey::generate().unwrap();
    let b = make_bundle(&key, 700, ARCH);
    let server = TestServer::files(vec![("/updates/test.bundle", b.bytes.clone())]);
    let t = slot(d.path(), 4);
    let mut src = open_source(&server.url("/updates/test.bundle")).unwrap();
    let esp = d.path().join("esp");
    let outcome = install(
        &mut src,
        &key.public(),
        ARCH,
        &t,
        &d.path().join("staging"),
        &esp,
        &[],
    )
    .unwrap();
    let firstboot::update::Outcome::Installed(rec) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(rec.entry, "nodeimage-2-b+3.conf");
    let entry = fs::read_to_string(esp.join("loader/entries/nodeimage-2-b+3.conf")).unwrap();
    assert!(
        entry.contains(&format!(
            "options root=PARTUUID={} ro rootfstype=erofs nodeimage.verity={} nodeimage.verity_hash=PARTUUID={} nodeimage.verity_blocks=700 nodeimage.version=1767225600-abcdefabcdef",
            uuid::Uuid::from_u128(0xb),
            b.root_hash,
            uuid::Uuid::from_u128(0xbb)
        )),
        "{entry}"
    );
    assert_eq!(
        fs::read(esp.join("nodeimage/b/vmlinuz")).unwrap(),
        b"kernel"
    );
    assert_eq!(rec.slot, "b");
    assert_eq!(rec.root_hash, b.root_hash);
    assert_eq!(rec.version, "1767225600-abcdefabcdef");
    let root = fs::read(&t.root).unwrap();
    assert_eq!(&root[..b.erofs.len()], &b.erofs[..]);
    let tree = fs::read(&t.verity).unwrap();
    assert_eq!(&tree[..b.tree.len()], &b.tree[..]);
    // What the slot now holds is what the root hash vouches for.
    let sb = nodeimage_core::verity::Superblock::parse(tree[..512].try_into().unwrap()).unwrap();
    let again = nodeimage_core::verity::build(&root[..b.erofs.len()], &sb.params).unwrap();
    assert_eq!(hex::encode(again.root_hash), b.root_hash);
    assert!(
        !d.path().join("staging").exists(),
        "the staging directory is cleaned up"
    );
    // The same bundle again, now that it is installed: read to its header, nothing written.
    fs::write(&t.verity, vec![0xEE; 1 << 20]).unwrap();
    let again = install(
        &mut &b.bytes[..],
        &key.public(),
        ARCH,
        &t,
        &d.path().join("staging"),
        &esp,
        std::slice::from_ref(&b.root_hash),
    )
    .unwrap();
    assert!(
        matches!(again, firstboot::update::Outcome::Current { .. }),
        "{again:?}"
    );
    assert!(fs::read(&t.verity).unwrap().iter().all(|x| *x == 0xEE));
}

#[test]
fn a_bad_bundle_never_reaches_the_slot() {
    let d = tempfile::tempdir().unwrap();
    let (_, key) = SigningKey::generate().unwrap();
    let (_, stranger) = SigningKey::generate().unwrap();
    let staging = d.path().join("staging");
    let t = slot(d.path(), 4);
    let refuse = |bytes: &[u8], want: &str| {
        let esp = t.root.parent().unwrap().join("esp");
        let e = install(
            &mut &bytes[..],
            &key.public(),
            ARCH,
            &t,
            &staging,
            &esp,
            &[],
        )
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains(want), "{e}\n  wanted: {want}");
        assert!(untouched(&t), "the slot was written: {want}");
    };
    // Signed by someone else.
    refuse(
        &make_bundle(&stranger, 100, ARCH).bytes,
        "does not verify with the update key",
    );
    // Signed, then one byte of the root changed: caught while staging.
    let mut b = make_bundle(&key, 100, ARCH);
    let at = b.bytes.len() - b.tree.len() - 5000;
    b.bytes[at] ^= 1;
    refuse(&b.bytes, "bundle member root.erofs: sha256 ");
    assert!(!staging.exists(), "a refused bundle leaves nothing staged");
    // Cut short.
    let b = make_bundle(&key, 100, ARCH);
    refuse(
        &b.bytes[..b.bytes.len() - 100],
        "the bundle ends inside root.verity",
    );
    // Another architecture; a root bigger than the slot.
    refuse(
        &make_bundle(&key, 100, "aarch64").bytes,
        "the bundle is for aarch64",
    );
    refuse(
        &make_bundle(&key, 1100, ARCH).bytes,
        "the image outgrew its slots",
    );
    // Not a bundle at all.
    refuse(b"<html>404</html>", "not a nodeimage update bundle");
}

/// addons.host-upgrades: the timer and service a node gets.
#[test]
fn host_upgrades_run_the_update_on_a_timer() {
    let units =
        firstboot::assemble::host_upgrade_units("https://u.example/k8s-{arch}.bundle", "12h");
    let by_path: std::collections::BTreeMap<_, _> = units
        .iter()
        .map(|u| (u.path.as_str(), u.contents.as_str()))
        .collect();
    let service = by_path["/etc/systemd/system/nodeimage-host-upgrades.service"];
    assert!(
        service
            .contains("ExecStart=/usr/bin/firstboot update https://u.example/k8s-{arch}.bundle\n"),
        "{service}"
    );
    let timer = by_path["/etc/systemd/system/nodeimage-host-upgrades.timer"];
    assert!(
        timer.contains("OnUnitActiveSec=12h\n") && timer.contains("WantedBy=timers.target"),
        "{timer}"
    );
    // systemd reads the interval as a time span (Pharos' `7d` included).
    if test_support::needs_tool("systemd time spans", "systemd-analyze", "systemd") {
        for span in ["12h", "7d", "1h30m"] {
            test_support::cmd::stdout_ok(
                span,
                std::process::Command::new("systemd-analyze").args(["timespan", span]),
            );
        }
    }
}

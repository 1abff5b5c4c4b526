//! `firstboot erase-secrets` on a NODECONFIG volume made by mkfs.fat and mtools: nothing
//! before firstboot is done; then the volume is rewritten so that no byte of the secrets
//! is left on it (checked on the raw bytes), it stays a valid FAT (`fsck.fat -n`) with
//! its label and serial, the bootstrap kubeconfig goes once the kubelet has its own
//! certificate, and the marker ends the work.

use std::path::Path;
use std::process::Command;

use firstboot::erase::{erase_secrets, ERASED_MARKER, ERASED_NOTE};
use firstboot::source::DeviceSet;
use nodeimage_core::fat::BootSector;
use nodeimage_core::layout::paths;
use test_support::images::fat16;

const TOKEN_SECRET: &str = "0123456789abcdef";
const CA_KEY_LINE: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";

fn put(root: &Path, path: &str, data: &str) {
    let p = nodeimage_core::files::rooted(root, path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn the_nodeconfig_volume_and_the_bootstrap_kubeconfig_lose_their_secrets() {
    if !test_support::Needs::new("erase-secrets")
        .tool("mkfs.fat", "dosfstools")
        .tool("mcopy", "mtools")
        .tool("fsck.fat", "dosfstools")
        .met()
    {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let yaml = format!(
        "version: 1\nrole: master\nhostname: m\ncluster: {{name: c, api_endpoint: 10.0.0.1}}\nsecrets:\n  bootstrap_token: abcdef.{TOKEN_SECRET}\n  ca_key: |\n    -----BEGIN PRIVATE KEY-----\n    {CA_KEY_LINE}\n    -----END PRIVATE KEY-----\n"
    );
    let img = fat16(
        d.path(),
        "nodeconfig.img",
        "NODECONFIG",
        &[("node.yaml", yaml.as_bytes())],
    );
    let before = std::fs::read(&img).unwrap();
    assert!(contains(&before, TOKEN_SECRET) && contains(&before, CA_KEY_LINE));
    let boot_before = BootSector::parse(&before[..512]).unwrap();
    let devices = DeviceSet::files([img.clone()]);

    // Not before the node has joined.
    let e = erase_secrets(&root, &devices, std::time::Duration::ZERO)
        .unwrap_err()
        .to_string();
    assert!(e.contains("has not completed"), "{e}");
    assert_eq!(std::fs::read(&img).unwrap(), before, "changed before done");

    put(&root, "/var/lib/firstboot/done", "");
    put(
        &root,
        paths::BOOTSTRAP_KUBELET_CONF,
        &format!("token: abcdef.{TOKEN_SECRET}\n"),
    );
    // The kubelet has no certificate yet: the volume is erased, the bootstrap
    // kubeconfig stays, no marker (the next boot finishes the work).
    let report = erase_secrets(&root, &devices, std::time::Duration::ZERO).unwrap();
    assert!(
        report.contains("erased") && report.contains("kept"),
        "{report}"
    );
    let after = std::fs::read(&img).unwrap();
    assert_eq!(after.len(), before.len());
    assert!(
        !contains(&after, TOKEN_SECRET) && !contains(&after, CA_KEY_LINE),
        "secret bytes are left on the volume"
    );
    let fsck = Command::new("fsck.fat")
        .arg("-n")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "fsck.fat -n: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let boot_after = BootSector::parse(&after[..512]).unwrap();
    assert_eq!(
        (
            boot_after.volume_id,
            boot_after.fat_type,
            boot_after.volume_bytes()
        ),
        (
            boot_before.volume_id,
            boot_before.fat_type,
            boot_before.volume_bytes()
        ),
        "serial, FAT type and size are kept"
    );
    let vol = firstboot::source::blockdev::probe(&img).unwrap().unwrap();
    assert_eq!(
        vol.label.as_deref(),
        Some("NODECONFIG"),
        "the label is kept"
    );
    assert_eq!(vol.fs.read_file("node.yaml").unwrap(), None);
    let note = String::from_utf8(vol.fs.read_file(ERASED_NOTE).unwrap().unwrap()).unwrap();
    assert!(note.contains("erased"), "{note}");
    let root_file = |p: &str| nodeimage_core::files::rooted(&root, p);
    assert!(root_file(paths::BOOTSTRAP_KUBELET_CONF).exists());
    assert!(!root_file(ERASED_MARKER).exists());

    // With the kubelet's own certificate the bootstrap kubeconfig goes, and the marker
    // ends the work.
    put(&root, paths::KUBELET_CLIENT_CURRENT, "cert");
    let report = erase_secrets(&root, &devices, std::time::Duration::ZERO).unwrap();
    assert!(report.contains("removed"), "{report}");
    assert!(!root_file(paths::BOOTSTRAP_KUBELET_CONF).exists());
    assert!(root_file(ERASED_MARKER).exists());
    let report = erase_secrets(&root, &devices, std::time::Duration::ZERO).unwrap();
    assert!(report.contains("earlier boot"), "{report}");
}

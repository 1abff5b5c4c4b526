//! SSH host keys are per node (issue 11): the test profile plus `openssh-server`, built
//! once (a fixture like x86_64_boot's), must hold no `ssh_host_*` file in its read-only
//! root nor in the cached Debian base it was made from; two nodes booted from the one
//! image must each make their own keys on first boot, run sshd with them, and share none.
//!
//! Needs what x86_64_boot needs, plus losetup and the kernel's erofs to look into the root.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use qemu_tests::{run, workspace_bin};

/// The cached Debian base the fixture's build used: the one its spec names.
fn base_tar() -> PathBuf {
    let profile = base().join(format!("profiles/{}.toml", SSH_VARIANT.name));
    std::fs::write(&profile, profile_text(&SSH_VARIANT)).unwrap();
    let lp = nodeimage::profile::load(&profile).unwrap();
    let d = &lp.profile.debian;
    let mirrors =
        nodeimage::rootfs::resolve_mirror(d.mirror.as_deref(), d.security_mirror.as_deref())
            .unwrap();
    let spec = nodeimage::rootfs::BaseSpec::new(&lp, &mirrors, EPOCH.parse().unwrap());
    let cache = std::env::var_os("NODEIMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(nodeimage::build::default_cache_dir);
    cache.join(format!("rootfs/{}-{}.tar", spec.arch, &spec.key()[..32]))
}

/// The `ssh_host_*` names under a directory listing.
fn host_keys<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    names
        .filter(|n| n.rsplit('/').next().unwrap_or("").starts_with("ssh_host_"))
        .map(str::to_string)
        .collect()
}

fn boot_node(fx: &Fixture, name: &str) -> (String, String) {
    let disk = base().join(format!("{name}.raw"));
    boot_copy(&fx.raw, &disk, 4 << 30);
    let yaml = base().join(format!("{name}.yaml"));
    std::fs::write(&yaml, format!("{TEST_NODE}hostname: {name}\n")).unwrap();
    run(Command::new(workspace_bin("nodeimage").unwrap())
        .arg("write-config")
        .arg(&disk)
        .arg(&yaml))
    .unwrap();
    let (line, report) = phase(&format!("boot {name}"), || boot(&disk, name, vec![]));
    assert!(line.starts_with("firstboot: ok "), "{line}");
    let keys = b64(report[0]["ssh-host-keys"]
        .as_str()
        .expect("the report carries ssh-host-keys"));
    let _ = std::fs::remove_file(&disk);
    (line, keys)
}

/// The fingerprints of a `ssh-keygen -l` listing: `256 SHA256:… root@host (ED25519)`.
fn fingerprints(listing: &str) -> BTreeSet<String> {
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|f| f.starts_with("SHA256:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_node_makes_its_own_host_keys() {
    if !needs("SSH host keys per node")
        || !test_support::Needs::new("SSH host keys per node")
            .tool("losetup", "util-linux")
            .met()
    {
        return;
    }
    let fx = fixture_of(&SSH_VARIANT);

    // The read-only root: sshd, its config, no host key.
    let (off, size) = fx.part("root-");
    let dev = run(Command::new("losetup")
        .args(["--find", "--show", "--read-only", "--offset"])
        .arg(off.to_string())
        .arg("--sizelimit")
        .arg(size.to_string())
        .arg(&fx.raw))
    .unwrap();
    let dev = dev.trim().to_string();
    let mnt = tempfile::tempdir().unwrap();
    let mounted = run(Command::new("mount")
        .args(["-t", "erofs", "-o", "ro", &dev])
        .arg(mnt.path()));
    let listing: Result<Vec<String>, String> = mounted.map_err(|e| e.to_string()).map(|_| {
        std::fs::read_dir(mnt.path().join("etc/ssh"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    });
    let sshd = Path::new(mnt.path()).join("usr/sbin/sshd").exists();
    let _ = Command::new("umount").arg(mnt.path()).status();
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    let listing = listing.unwrap();
    assert!(sshd, "the ssh variant's root has no /usr/sbin/sshd");
    assert!(listing.iter().any(|n| n == "sshd_config"), "{listing:?}");
    let in_root = host_keys(listing.iter().map(String::as_str));
    assert!(
        in_root.is_empty(),
        "host keys in the image's root: {in_root:?}"
    );

    // The cached base tarball the build used.
    let tar = base_tar();
    let members = run(Command::new("tar").arg("-tf").arg(&tar)).unwrap();
    assert!(
        members.lines().any(|m| m.ends_with("usr/sbin/sshd")),
        "{} is not the ssh variant's base",
        tar.display()
    );
    let in_base = host_keys(members.lines());
    assert!(
        in_base.is_empty(),
        "host keys in the cached base {}: {in_base:?}",
        tar.display()
    );

    // Two nodes from the one image: each its own keys, sshd running with them.
    let _slot = vm_slot();
    let (_, a) = boot_node(fx, "ssh-node-a");
    let (_, b) = boot_node(fx, "ssh-node-b");
    eprintln!("node a:\n{a}\nnode b:\n{b}");
    for (name, keys) in [("a", &a), ("b", &b)] {
        assert!(
            keys.contains("ssh.service active"),
            "node {name}: sshd is not running: {keys}"
        );
        for kind in ["(ED25519)", "(ECDSA)", "(RSA)"] {
            assert!(keys.contains(kind), "node {name} has no {kind} key: {keys}");
        }
    }
    let (fa, fb) = (fingerprints(&a), fingerprints(&b));
    assert_eq!(fa.len(), 3, "{a}");
    assert_eq!(fb.len(), 3, "{b}");
    let shared: Vec<_> = fa.intersection(&fb).collect();
    assert!(
        shared.is_empty(),
        "the two nodes share host keys: {shared:?}"
    );
}

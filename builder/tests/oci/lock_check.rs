//! The build's lock check (like `cargo --locked`): a profile with images needs a lock
//! file that matches it; a profile without images needs none. No network.

use crate::support::*;
use nodeimage::fetch::Digest;
use nodeimage::oci::lock::{
    images_sha256, write, BlobRef, LockFile, LockedDebian, LockedImage, LOCK_SCHEMA,
};
use nodeimage::oci::{check_lock, lock_path};
use nodeimage::profile::LoadedProfile;
use test_support::registry::*;

const INDEX: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn blob(c: char, size: u64) -> BlobRef {
    BlobRef {
        media_type: OCI_MANIFEST.into(),
        digest: Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap(),
        size,
    }
}

fn locked(name: &str, reference: &str, index: bool) -> LockedImage {
    LockedImage {
        name: name.into(),
        reference: reference.into(),
        platform: "linux/amd64".into(),
        index: index.then(|| BlobRef {
            media_type: OCI_INDEX.into(),
            digest: Digest::parse(INDEX).unwrap(),
            size: 10,
        }),
        manifest: blob('2', 20),
        config: blob('3', 30),
        layers: vec![blob('4', 40)],
        total_size: 100,
    }
}

fn lock_for(lp: &LoadedProfile, images: Vec<LockedImage>) -> LockFile {
    LockFile {
        schema: LOCK_SCHEMA,
        profile: lp.profile.name.clone(),
        arch: "x86_64".into(),
        images_sha256: images_sha256(&lp.profile),
        images,
        debian: None,
    }
}

fn err(lp: &LoadedProfile) -> String {
    check_lock(lp).unwrap_err().to_string()
}

#[test]
fn profile_without_images_needs_no_lock() {
    let d = tempfile::tempdir().unwrap();
    let lp = write_profile(d.path(), "plain", "x86_64", "");
    assert!(check_lock(&lp).unwrap().is_none());
}

#[test]
fn missing_and_stale_locks_are_refused_naming_the_entry() {
    let d = tempfile::tempdir().unwrap();
    let weave = image_entry("weave-kube", "rajchaudhuri/weave-kube:2.9.0", "");
    let pause = image_entry(
        "pause",
        "registry.k8s.io/pause:3.10.1",
        &format!("digest = \"{INDEX}\"\npurpose = \"sandbox\"\n"),
    );
    let lp = write_profile(d.path(), "x", "x86_64", &format!("{pause}{weave}"));
    let profile = lp.path.display().to_string();
    let lock = lock_path(&lp.path).display().to_string();

    // No lock file at all.
    let e = err(&lp);
    assert_eq!(
        e,
        format!("{profile}: image \"pause\" (registry.k8s.io/pause:3.10.1) has no entry in {lock} (the lock file does not exist); run nodeimage lock {profile}")
    );

    // A lock without the weave-kube entry.
    let only_pause = lock_for(
        &lp,
        vec![locked("pause", "registry.k8s.io/pause:3.10.1", true)],
    );
    write(&lock_path(&lp.path), &only_pause).unwrap();
    assert_eq!(
        err(&lp),
        format!("{profile}: image \"weave-kube\" (rajchaudhuri/weave-kube:2.9.0) has no entry in {lock}; run nodeimage lock {profile}")
    );

    // Complete: accepted.
    let good = lock_for(
        &lp,
        vec![
            locked("pause", "registry.k8s.io/pause:3.10.1", true),
            locked("weave-kube", "rajchaudhuri/weave-kube:2.9.0", false),
        ],
    );
    write(&lock_path(&lp.path), &good).unwrap();
    assert_eq!(check_lock(&lp).unwrap().unwrap(), good);

    // Role and purpose changes do not need a new lock.
    let lp2 = write_profile(
        d.path(),
        "x",
        "x86_64",
        &format!("{pause}{weave}role = \"worker\"\n"),
    );
    assert!(check_lock(&lp2).is_ok());

    // A new tag makes the entry stale.
    let lp3 = write_profile(
        d.path(),
        "x",
        "x86_64",
        &format!("{pause}{}", weave.replace("2.9.0", "2.8.8")),
    );
    let e = err(&lp3);
    assert!(e.contains("image \"weave-kube\" is stale") && e.contains("locked as rajchaudhuri/weave-kube:2.9.0 but the profile says rajchaudhuri/weave-kube:2.8.8"), "{e}");
    assert!(e.ends_with(&format!("run nodeimage lock {profile}")), "{e}");

    // A different pinned digest.
    let other = "sha256:5555555555555555555555555555555555555555555555555555555555555555";
    let lp4 = write_profile(
        d.path(),
        "x",
        "x86_64",
        &format!("{}{weave}", pause.replace(INDEX, other)),
    );
    let e = err(&lp4);
    assert!(
        e.contains("image \"pause\" is stale")
            && e.contains(&format!(
                "the profile pins {other} but the lock has {INDEX}"
            )),
        "{e}"
    );

    // An image removed from the profile.
    let lp5 = write_profile(d.path(), "x", "x86_64", &pause);
    let e = err(&lp5);
    assert!(
        e.contains("it has an entry for image \"weave-kube\", which the profile no longer lists"),
        "{e}"
    );

    // Another architecture.
    let lp6 = write_profile(d.path(), "x", "aarch64", &format!("{pause}{weave}"));
    assert!(err(&lp6).contains("it was made for x86_64, the profile is aarch64"));

    // A hand-edited images_sha256.
    let mut edited = good.clone();
    edited.images_sha256 = "0".repeat(64);
    write(&lock_path(&lp.path), &edited).unwrap();
    let lp7 = write_profile(d.path(), "x", "x86_64", &format!("{pause}{weave}"));
    assert!(err(&lp7).contains("images_sha256 differs"), "{}", err(&lp7));

    // Garbage.
    std::fs::write(lock_path(&lp.path), "{").unwrap();
    let e = err(&lp7);
    assert!(
        e.starts_with(&format!("{lock}: not a lock file")) && e.contains("run nodeimage lock"),
        "{e}"
    );
}

/// The lock records the Debian snapshot the profile pins: a lock made before the profile
/// pinned one, or for another snapshot, is stale.
#[test]
fn the_lock_pins_the_debian_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let pause = image_entry("pause", "registry.k8s.io/pause:3.10.1", "");
    let snap = |ts: &str| format!("snapshot = \"{ts}\"\n{pause}");
    let lp = write_profile(d.path(), "s", "x86_64", &snap("20261201T000000Z"));
    let profile = lp.path.display().to_string();
    let mut lf = lock_for(
        &lp,
        vec![locked("pause", "registry.k8s.io/pause:3.10.1", true)],
    );
    write(&lock_path(&lp.path), &lf).unwrap();
    let e = err(&lp);
    assert!(
        e.contains("the profile pins a Debian snapshot the lock does not record")
            && e.ends_with(&format!("run nodeimage lock {profile}")),
        "{e}"
    );
    lf.debian = Some(LockedDebian::of(&lp.profile));
    write(&lock_path(&lp.path), &lf).unwrap();
    assert_eq!(check_lock(&lp).unwrap().unwrap(), lf);
    let text = std::fs::read_to_string(lock_path(&lp.path)).unwrap();
    assert!(
        text.contains("\"snapshot\": \"20261201T000000Z\""),
        "{text}"
    );
    let lp2 = write_profile(d.path(), "s", "x86_64", &snap("20261215T000000Z"));
    let e = err(&lp2);
    assert!(
        e.contains("it pins Debian bookworm at snapshot 20261201T000000Z, the profile says bookworm at 20261215T000000Z"),
        "{e}"
    );
}

//! `nodeimage lock` and the build's image pull against a real registry (Debian's
//! docker-registry on 127.0.0.1) holding test images made and pushed here: per-arch
//! resolution, pinned index digests, registry mirrors, OCI archives that skopeo reads,
//! determinism, offline rebuilds from the cache, and tampered blobs.

use std::process::Command;

use crate::support::*;
use nodeimage::fetch::{Cache, FetchOptions, ProgressMode};
use nodeimage::oci::{self, lock::LockFile, PullOptions, Registry, RegistryOptions};
use nodeimage::profile::LoadedProfile;
use test_support::registry::*;

fn plain(reg: &TestRegistry) -> RegistryOptions {
    RegistryOptions {
        plain_http_registries: vec![reg.host()],
        ..Default::default()
    }
}

fn fetch_opts() -> FetchOptions {
    FetchOptions {
        progress: ProgressMode::Never,
        retries: 0,
        ..Default::default()
    }
}

fn lock(lp: &LoadedProfile, opts: &RegistryOptions) -> anyhow::Result<LockFile> {
    oci::lock::lock_profile(lp, &Registry::new(opts)?)
}

fn pull(
    lp: &LoadedProfile,
    lf: &LockFile,
    cache: &Cache,
    registry: RegistryOptions,
    fetch: FetchOptions,
    out: &std::path::Path,
) -> anyhow::Result<oci::PulledImages> {
    oci::pull_images(
        lp,
        lf,
        cache,
        &PullOptions {
            fetch,
            registry,
            epoch: 1_700_000_000,
        },
        out,
    )
}

#[test]
fn lock_resolves_the_manifest_of_each_arch() {
    let Some(reg) = TestRegistry::start() else {
        return;
    };
    let (amd, arm, index) = push_multiarch(&reg.base(), "test/multi", "1.0");
    let single_arm = make_image("arm64", "only arm\n");
    push_image(&reg.base(), "test/armonly", "1", &single_arm);
    let d = tempfile::tempdir().unwrap();
    let reference = format!("{}/test/multi:1.0", reg.host());

    for (arch, img) in [("x86_64", &amd), ("aarch64", &arm)] {
        let lp = write_profile(
            d.path(),
            &format!("p-{arch}"),
            arch,
            &image_entry("multi", &reference, ""),
        );
        let lf = lock(&lp, &plain(&reg)).unwrap();
        let l = &lf.images[0];
        assert_eq!(
            l.manifest.digest.to_string(),
            img.manifest_digest(),
            "{arch}"
        );
        assert_eq!(l.index.as_ref().unwrap().digest.to_string(), sha256(&index));
        assert_eq!(l.config.digest.to_string(), img.config_digest());
        assert_eq!(l.layers.len(), 1);
        assert_eq!(l.layers[0].digest.to_string(), img.layer_digest());
        assert_eq!(l.layers[0].size, img.layer.len() as u64);
        assert_eq!(
            l.total_size,
            (index.len() + img.manifest.len() + img.config.len() + img.layer.len()) as u64
        );
        assert_eq!(
            l.platform,
            if arch == "x86_64" {
                "linux/amd64"
            } else {
                "linux/arm64"
            }
        );
        assert_eq!(lf.images_sha256, oci::lock::images_sha256(&lp.profile));
        // Written beside the profile, the lock passes the build's check.
        oci::lock::write(&oci::lock_path(&lp.path), &lf).unwrap();
        assert_eq!(oci::check_lock(&lp).unwrap().unwrap(), lf);
    }

    // A pinned index digest is fetched by digest and must match.
    let pinned = image_entry(
        "multi",
        &reference,
        &format!("digest = \"{}\"\n", sha256(&index)),
    );
    let lp = write_profile(d.path(), "pinned", "x86_64", &pinned);
    assert_eq!(
        lock(&lp, &plain(&reg)).unwrap().images[0]
            .manifest
            .digest
            .to_string(),
        amd.manifest_digest()
    );
    let wrong = image_entry(
        "multi",
        &reference,
        &format!("digest = \"{}\"\n", sha256(b"other")),
    );
    let lp = write_profile(d.path(), "wrong", "x86_64", &wrong);
    let e = format!("{:#}", lock(&lp, &plain(&reg)).unwrap_err());
    assert!(e.contains("image `multi`") && e.contains("404"), "{e}");

    // A single-arch arm64 image is refused for x86_64.
    let lp = write_profile(
        d.path(),
        "armonly",
        "x86_64",
        &image_entry("a", &format!("{}/test/armonly:1", reg.host()), ""),
    );
    let e = format!("{:#}", lock(&lp, &plain(&reg)).unwrap_err());
    assert!(
        e.contains("the image is for linux/arm64, the profile needs linux/amd64"),
        "{e}"
    );
    let lp = write_profile(
        d.path(),
        "armonly64",
        "aarch64",
        &image_entry("a", &format!("{}/test/armonly:1", reg.host()), ""),
    );
    let l = &lock(&lp, &plain(&reg)).unwrap().images[0];
    assert!(l.index.is_none());
    assert_eq!(l.manifest.digest.to_string(), single_arm.manifest_digest());
}

#[test]
fn pull_writes_deterministic_archives_that_skopeo_reads() {
    let Some(reg) = TestRegistry::start() else {
        return;
    };
    let (amd, arm, index) = push_multiarch(&reg.base(), "test/app", "2.0");
    let d = tempfile::tempdir().unwrap();
    let images = format!(
        "{}{}",
        image_entry(
            "app",
            &format!("{}/test/app:2.0", reg.host()),
            "purpose = \"sandbox\"\n"
        ),
        image_entry(
            "app-worker",
            &format!("{}/test/app:2.0", reg.host()),
            "role = \"worker\"\n"
        )
    );
    let cache = Cache::new(d.path().join("cache"));
    for (arch, img) in [("x86_64", &amd), ("aarch64", &arm)] {
        let lp = write_profile(d.path(), &format!("app-{arch}"), arch, &images);
        let lf = lock(&lp, &plain(&reg)).unwrap();
        let out = d.path().join(format!("out-{arch}"));
        let pulled = pull(&lp, &lf, &cache, plain(&reg), fetch_opts(), &out).unwrap();
        assert_eq!(pulled.images.len(), 2);
        let p = &pulled.images[0];
        assert_eq!(p.baked.reference, format!("{}/test/app:2.0", reg.host()));
        assert_eq!(p.baked.digest, sha256(&index));
        assert_eq!(p.baked.manifest_digest, img.manifest_digest());
        assert_eq!(p.baked.purpose.as_deref(), Some("sandbox"));
        assert_eq!(
            pulled.images[1].baked.role,
            nodeimage_core::images::ImageRole::Worker
        );
        let baked: nodeimage_core::images::BakedImages =
            serde_json::from_slice(&std::fs::read(&pulled.index).unwrap()).unwrap();
        assert_eq!(baked.images[0], p.baked);

        // Layout: sorted entries, every blob of this arch, fixed owner and time.
        let list = Command::new("tar")
            .arg("-tvf")
            .arg(&p.archive)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&list.stdout);
        let names: Vec<&str> = listing
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(
            names.contains(&"oci-layout") && names.contains(&"index.json"),
            "{listing}"
        );
        for blob in [
            sha256(&index),
            img.manifest_digest(),
            img.config_digest(),
            img.layer_digest(),
        ] {
            assert!(
                names.contains(&format!("blobs/sha256/{}", &blob[7..]).as_str()),
                "{blob} missing:\n{listing}"
            );
        }
        assert_eq!(names.len(), 2 + 4 + 2, "{listing}");
        assert!(
            listing
                .lines()
                .all(|l| l.contains("root/root") && l.contains("2023-11-14")),
            "{listing}"
        );
        let index_json = Command::new("tar")
            .arg("-xOf")
            .arg(&p.archive)
            .arg("index.json")
            .output()
            .unwrap()
            .stdout;
        let v: serde_json::Value = serde_json::from_slice(&index_json).unwrap();
        let ann = &v["manifests"][0]["annotations"];
        assert_eq!(ann["io.containerd.image.name"], p.baked.reference.as_str());
        assert_eq!(
            ann["org.opencontainers.image.ref.name"],
            p.baked.reference.as_str()
        );
        assert_eq!(v["manifests"][0]["digest"], sha256(&index).as_str());

        // skopeo reads the archive and picks this arch's manifest.
        if std::path::Path::new("/usr/bin/skopeo").exists() {
            let goarch = &img.arch;
            let out = test_support::cmd::stdout_ok(
                "skopeo",
                Command::new("skopeo")
                    .args([
                        "--override-os",
                        "linux",
                        "--override-arch",
                        goarch,
                        "inspect",
                    ])
                    .arg(format!("oci-archive:{}", p.archive.display())),
            );
            let info: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(info["Architecture"], goarch.as_str());
            assert_eq!(info["Layers"][0], img.layer_digest().as_str());
        } else {
            let _ = test_support::Needs::new("skopeo check of the pulled archive")
                .file("/usr/bin/skopeo", "skopeo")
                .met();
        }

        // From the cache alone (offline) the same bytes come out.
        let again = d.path().join(format!("again-{arch}"));
        let offline = FetchOptions {
            offline: true,
            ..fetch_opts()
        };
        let p2 = pull(
            &lp,
            &lf,
            &cache,
            RegistryOptions::default(),
            offline,
            &again,
        )
        .unwrap();
        assert_eq!(
            std::fs::read(&p2.images[0].archive).unwrap(),
            std::fs::read(&p.archive).unwrap()
        );
        assert_eq!(p2.images[0].archive_sha256, p.archive_sha256);
    }
}

#[test]
fn registry_mirror_serves_another_registrys_images() {
    let Some(reg) = TestRegistry::start() else {
        return;
    };
    let (amd, _, _) = push_multiarch(&reg.base(), "test/mirrored", "3");
    let d = tempfile::tempdir().unwrap();
    let lp = one_image_profile(d.path(), "m", "registry.k8s.io/test/mirrored:3");
    let mut opts = RegistryOptions {
        registry_mirrors: vec![format!("registry.k8s.io={}", reg.base())],
        ..Default::default()
    };
    // A tag through a mirror is trust on first use: refused unless asked for, and the
    // error says why and what to do (the upstream registry is unreachable here).
    let e = format!("{:#}", lock(&lp, &opts).unwrap_err());
    assert!(
        e.contains("trust on first use") && e.contains("--trust-mirror-tags"),
        "{e}"
    );
    opts.trust_mirror_tags = true;
    let lf = lock(&lp, &opts).unwrap();
    assert_eq!(
        lf.images[0].manifest.digest.to_string(),
        amd.manifest_digest()
    );
    let cache = Cache::new(d.path().join("cache"));
    // --mirror-only: the upstream registry is never contacted; the registry mirror still serves.
    let fetch = FetchOptions {
        mirror_only: true,
        ..fetch_opts()
    };
    let pulled = pull(&lp, &lf, &cache, opts, fetch, &d.path().join("out")).unwrap();
    assert_eq!(
        pulled.images[0].baked.reference,
        "registry.k8s.io/test/mirrored:3"
    );
}

#[test]
fn tampered_blob_is_refused_and_nothing_is_cached() {
    let Some(reg) = TestRegistry::start() else {
        return;
    };
    let (amd, _, _) = push_multiarch(&reg.base(), "test/tamper", "1");
    let d = tempfile::tempdir().unwrap();
    let lp = one_image_profile(d.path(), "t", &format!("{}/test/tamper:1", reg.host()));
    let lf = lock(&lp, &plain(&reg)).unwrap();
    // Same length, different bytes: only the digest can tell.
    let file = reg.blob_file(&amd.layer_digest());
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let cache = Cache::new(d.path().join("cache"));
    let out = d.path().join("out");
    let e = format!(
        "{:#}",
        pull(&lp, &lf, &cache, plain(&reg), fetch_opts(), &out).unwrap_err()
    );
    test_support::assert_contains(&e, &["hash mismatch", &amd.layer_digest()]);
    let layer = digest(&amd.layer_digest());
    assert!(
        cache.get(&layer).is_none(),
        "a tampered layer must not be cached"
    );
    assert!(!cache.path_for(&layer).exists());
    let partial = d.path().join("cache/partial");
    let left: Vec<_> = std::fs::read_dir(&partial)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().contains(&amd.layer_digest()[7..])),
        "{left:?}"
    );
    assert!(!out.join("t.tar").exists());
}

//! containerd's config and hosts.toml files: golden files for both schemas (version 2
//! for containerd 1.x, version 3 for 2.x), idempotence, mirror removal, and, when
//! Debian's containerd is installed, containerd itself parsing the version-2 file.
//!
//! Regenerate the golden files with `UPDATE_GOLDEN=1 cargo test -p firstboot --test containerd_config`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use firstboot::containerd::{
    import_images, render_config, write_config, write_config_for, ConfigSchema, ContainerdSettings,
};
use nodeimage_core::config::{NodeConfig, Role};
use nodeimage_core::images::{
    BakedImage, BakedImages, ImageRole, BAKED_IMAGES_SCHEMA, IMAGES_DIR, IMAGES_INDEX,
};

const NODE: &str = "version: 1\nrole: worker\nhostname: node-1\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1:6443\n";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/containerd")
}

fn check_golden(name: &str, actual: &str) {
    test_support::golden::check(golden_dir(), name, actual);
}

fn node_with_mirrors() -> NodeConfig {
    NodeConfig::parse(
        "node.yaml",
        &format!(
            "{NODE}  registry_mirrors:\n    docker.io: [\"https://mirror.example:5000\", \"http://10.0.0.9:5000/\"]\n    registry.k8s.io: [\"k8s-mirror.example\"]\n"
        ),
    )
    .unwrap()
}

fn image(name: &str, role: ImageRole, purpose: Option<&str>) -> BakedImage {
    BakedImage {
        name: name.into(),
        reference: format!("registry.k8s.io/{name}:1.0"),
        digest: format!("sha256:{}", "a".repeat(64)),
        manifest_digest: format!("sha256:{}", "b".repeat(64)),
        platform: "linux/amd64".into(),
        role,
        purpose: purpose.map(str::to_string),
        file: format!("{name}.tar"),
        size: 10,
    }
}

/// A root with images.json: pause (sandbox, all) and coredns (master).
fn root_with_images() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join(IMAGES_DIR.trim_start_matches('/'));
    fs::create_dir_all(&dir).unwrap();
    let mut pause = image("pause", ImageRole::All, Some("sandbox"));
    pause.reference = "registry.k8s.io/pause:3.10.1".into();
    let baked = BakedImages {
        schema: BAKED_IMAGES_SCHEMA,
        images: vec![pause, image("coredns", ImageRole::Master, None)],
    };
    fs::write(
        dir.join(IMAGES_INDEX),
        serde_json::to_vec_pretty(&baked).unwrap(),
    )
    .unwrap();
    fs::write(dir.join("pause.tar"), b"x").unwrap();
    d
}

#[test]
fn golden_config_v3_and_hosts() {
    let root = root_with_images();
    let (changed, summary) =
        write_config_for(root.path(), &node_with_mirrors(), ConfigSchema::V3).unwrap();
    assert!(changed);
    test_support::assert_contains(
        &summary,
        &["config version 3", "registry.k8s.io/pause:3.10.1"],
    );
    let read = |p: &str| fs::read_to_string(root.path().join(p)).unwrap();
    check_golden("config-v3.toml", &read("etc/containerd/config.toml"));
    check_golden(
        "hosts-docker.io.toml",
        &read("etc/containerd/certs.d/docker.io/hosts.toml"),
    );
    check_golden(
        "hosts-registry.k8s.io.toml",
        &read("etc/containerd/certs.d/registry.k8s.io/hosts.toml"),
    );
}

#[test]
fn golden_config_v2() {
    let root = root_with_images();
    write_config_for(root.path(), &node_with_mirrors(), ConfigSchema::V2).unwrap();
    let text = fs::read_to_string(root.path().join("etc/containerd/config.toml")).unwrap();
    check_golden("config-v2.toml", &text);
}

#[test]
fn rewrite_is_idempotent_and_removed_mirrors_go() {
    let root = root_with_images();
    let (changed, _) =
        write_config_for(root.path(), &node_with_mirrors(), ConfigSchema::V3).unwrap();
    assert!(changed);
    let (changed, summary) =
        write_config_for(root.path(), &node_with_mirrors(), ConfigSchema::V3).unwrap();
    assert!(!changed && summary.ends_with("unchanged"), "{summary}");
    // A hosts.toml somebody else wrote is left alone.
    let foreign = root
        .path()
        .join("etc/containerd/certs.d/quay.io/hosts.toml");
    fs::create_dir_all(foreign.parent().unwrap()).unwrap();
    fs::write(&foreign, "server = \"https://quay.io\"\n").unwrap();
    let plain = NodeConfig::parse("node.yaml", NODE).unwrap();
    let (changed, _) = write_config_for(root.path(), &plain, ConfigSchema::V3).unwrap();
    assert!(changed);
    assert!(!root
        .path()
        .join("etc/containerd/certs.d/docker.io")
        .exists());
    assert!(!root
        .path()
        .join("etc/containerd/certs.d/registry.k8s.io")
        .exists());
    assert!(foreign.exists());
}

#[test]
fn without_baked_images_the_sandbox_is_containerds_default() {
    let d = tempfile::tempdir().unwrap();
    let plain = NodeConfig::parse("node.yaml", NODE).unwrap();
    let summary = write_config(d.path(), &plain, false).unwrap();
    assert!(summary.contains("(containerd default)"), "{summary}");
    let text = fs::read_to_string(d.path().join("etc/containerd/config.toml")).unwrap();
    assert!(
        text.contains("version = 3") && !text.contains("pinned_images"),
        "{text}"
    );
    assert_eq!(
        import_images(d.path(), false, Role::Worker).unwrap(),
        "no baked images"
    );
}

#[test]
fn import_checks_archives_for_the_role_when_not_live() {
    let root = root_with_images();
    // The worker needs only pause (present); the master needs coredns too (missing).
    let s = import_images(root.path(), false, Role::Worker).unwrap();
    assert!(s.starts_with("1 image archive(s) for worker"), "{s}");
    let e = import_images(root.path(), false, Role::Master)
        .unwrap_err()
        .to_string();
    test_support::assert_contains(&e, &["image `coredns`", "coredns.tar is missing"]);
}

#[test]
fn bad_registry_host_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let c = NodeConfig::parse(
        "node.yaml",
        &format!("{NODE}  registry_mirrors:\n    \"../etc\": [\"https://m\"]\n"),
    )
    .unwrap();
    let e = write_config_for(root.path(), &c, ConfigSchema::V3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`../etc` is not a registry host"), "{e}");
}

/// Debian's containerd (1.6, config version 2) parses the rendered file and sees our
/// settings in its merged view (`containerd config dump`).
#[test]
fn debian_containerd_reads_the_v2_config() {
    if !test_support::needs_tool(
        "debian_containerd_reads_the_v2_config",
        "containerd",
        "containerd",
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("config.toml");
    let s = ContainerdSettings::new(Some("registry.k8s.io/pause:3.10.1".into()));
    fs::write(&file, render_config(&s, ConfigSchema::V2)).unwrap();
    let out = test_support::cmd::stdout_ok(
        "containerd config dump",
        Command::new("containerd")
            .arg("--config")
            .arg(&file)
            .args(["config", "dump"]),
    );
    let dump = String::from_utf8_lossy(&out);
    test_support::assert_contains(
        &dump,
        &[
            "sandbox_image = \"registry.k8s.io/pause:3.10.1\"",
            "SystemdCgroup = true",
            "config_path = \"/etc/containerd/certs.d\"",
            "bin_dir = \"/opt/cni/bin\"",
            "default_runtime_name = \"runc\"",
        ],
    );
    assert!(
        !dump.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]")
            && !dump.contains("disabled_plugins = [\"cri\"]")
    );
}

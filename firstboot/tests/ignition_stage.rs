//! Ignition staging: every spec version 3.0.0–3.6.0 (fixtures), config merge/replace
//! chains served over HTTP with hashes, hash mismatches (nothing applied), refused
//! sections, unknown keys and versions, and Ignition arriving through a data source.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use firstboot::ignition::{stage, IgnitionError};
use firstboot::net::NetError;
use firstboot::source::{acquire, DeviceSet, Platform, SourceContext, Timeouts};
use serde_json::json;
use sha2::Digest;
use test_support::http::{Faults, Mock, Resp};

const NODE_YAML: &str = "version: 1\nrole: worker\nhostname: node-ign\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1:6443\n";

fn fast() -> Timeouts {
    Timeouts {
        request: Duration::from_millis(500),
        deadline: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
    }
}

fn fixture(name: &str) -> Vec<u8> {
    fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ignition")
            .join(name),
    )
    .unwrap()
}

fn node_file() -> serde_json::Value {
    use base64::Engine;
    json!({"path": "/etc/nodeimage/node.yaml", "contents": {"source": format!("data:;base64,{}", base64::engine::general_purpose::STANDARD.encode(NODE_YAML))}})
}

/// A tree shaped like the image's root: account files and a sudo group.
fn base_tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let etc = d.path().join("etc");
    fs::create_dir_all(&etc).unwrap();
    fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    fs::write(etc.join("group"), "root:x:0:\nsudo:x:27:\nusers:x:100:\n").unwrap();
    fs::write(etc.join("shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    fs::write(etc.join("gshadow"), "root:*::\nsudo:*::\nusers:*::\n").unwrap();
    d
}

#[test]
fn every_spec_version_from_3_0_to_3_6_stages_and_applies() {
    for minor in 0..=6 {
        let name = format!("v3_{minor}.ign");
        let st =
            stage("fixture", &fixture(&name), fast()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(st.version, format!("3.{minor}.0"));
        let debug = format!("{st:?}");
        assert!(
            debug.contains("/etc/motd")
                && !debug.contains("api_endpoint")
                && !debug.contains("hello from"),
            "{debug}"
        );
        assert_eq!(
            st.node_config_yaml().unwrap(),
            NODE_YAML.as_bytes(),
            "{name}"
        );
        assert!(
            !st.file_paths().contains(&"/etc/nodeimage/node.yaml"),
            "the node config is transport, not a file"
        );

        let tree = base_tree();
        let root = tree.path();
        let r = st.apply(root).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            fs::read_to_string(root.join("etc/motd")).unwrap(),
            format!("hello from Ignition 3.{minor}.0\n")
        );
        assert!(!root.join("etc/nodeimage/node.yaml").exists());
        assert_eq!(
            fs::read_link(root.join("usr/local/bin/tool")).unwrap(),
            Path::new("/opt/bin/tool")
        );
        assert_eq!(
            fs::read_link(root.join("etc/systemd/system/multi-user.target.wants/demo.service"))
                .unwrap(),
            Path::new("/etc/systemd/system/demo.service")
        );
        assert!(root
            .join("etc/systemd/system/demo.service.d/10-env.conf")
            .exists());
        assert_eq!(
            fs::read_link(root.join("etc/systemd/system/unwanted.service")).unwrap(),
            Path::new("/dev/null")
        );
        assert!(fs::read_to_string(root.join("etc/passwd"))
            .unwrap()
            .contains("core:x:1000:1000::/home/core:/bin/bash"));
        assert!(fs::read_to_string(root.join("etc/group"))
            .unwrap()
            .contains("sudo:x:27:core"));
        assert!(
            fs::read_to_string(root.join("home/core/.ssh/authorized_keys"))
                .unwrap()
                .contains("core@fixture")
        );
        if minor >= 1 {
            assert_eq!(
                fs::read_to_string(root.join("etc/compressed.txt")).unwrap(),
                format!("compressed for 3.{minor}.0\n")
            );
        }
        assert_eq!(r.users_created, ["core"]);
        assert_eq!(r.units_enabled, ["demo.service"]);
        assert_eq!(r.units_masked, ["unwanted.service"]);
    }
}

#[test]
fn unknown_versions_and_keys_are_refused() {
    let e = stage("t", br#"{"ignition":{"version":"2.2.0"}}"#, fast())
        .unwrap_err()
        .to_string();
    test_support::assert_contains(
        &e,
        &["spec version 2.2.0 is not supported", "3.0.0 to 3.6.0"],
    );
    let e = stage("t", br#"{"ignition":{"version":"3.7.0"}}"#, fast())
        .unwrap_err()
        .to_string();
    assert!(e.contains("3.7.0"), "{e}");
    let e = stage(
        "t",
        br#"{"ignition":{"version":"3.4.0"},"storage":{"filez":[]}}"#,
        fast(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("storage.filez"), "{e}");
    // A key added in 3.1 (compression) is unknown to 3.0.
    let e = stage(
        "t",
        br#"{"ignition":{"version":"3.0.0"},"storage":{"files":[{"path":"/x","contents":{"source":"data:,x","compression":"gzip"}}]}}"#,
        fast(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("compression"), "{e}");
    let e = stage("t", br#"{"storage":{}}"#, fast())
        .unwrap_err()
        .to_string();
    assert!(e.contains("ignition.version"), "{e}");
}

#[test]
fn unsupported_sections_are_refused_by_name() {
    let cases = [
        (
            json!({"storage": {"disks": [{"device": "/dev/sdb", "wipeTable": true}]}}),
            "storage.disks",
        ),
        (
            json!({"storage": {"raid": [{"name": "md0", "level": "raid1", "devices": ["/dev/a", "/dev/b"]}]}}),
            "storage.raid",
        ),
        (
            json!({"storage": {"luks": [{"name": "data", "device": "/dev/sdb"}]}}),
            "storage.luks",
        ),
        (
            json!({"storage": {"filesystems": [{"device": "/dev/sdb1", "format": "ext4", "path": "/var"}]}}),
            "storage.filesystems",
        ),
        (
            json!({"kernelArguments": {"shouldExist": ["quiet"]}}),
            "kernelArguments",
        ),
        (
            json!({"ignition": {"version": "3.6.0", "proxy": {"httpProxy": "http://proxy:3128"}}}),
            "ignition.proxy",
        ),
        (
            json!({"ignition": {"version": "3.6.0", "security": {"tls": {"certificateAuthorities": [{"source": "data:,x"}]}}}}),
            "ignition.security.tls.certificateAuthorities",
        ),
        (
            json!({"passwd": {"users": [{"name": "old", "shouldExist": false}]}}),
            "passwd.users[old].shouldExist",
        ),
        (
            json!({"storage": {"files": [{"path": "/x", "contents": {"source": "s3://bucket/key"}}]}}),
            "storage.files[/x].contents.source",
        ),
    ];
    for (mut cfg, section) in cases {
        if cfg.get("ignition").is_none() {
            cfg["ignition"] = json!({"version": "3.6.0"});
        }
        let e = stage("ec2", cfg.to_string().as_bytes(), fast()).unwrap_err();
        assert!(
            matches!(e, IgnitionError::Unsupported { .. }),
            "{section}: {e}"
        );
        let s = e.to_string();
        assert!(
            s.contains(&format!("`{section}`")) && s.starts_with("ec2: "),
            "{s}"
        );
    }
    // Empty lists ask for nothing and are accepted.
    let ok = json!({"ignition": {"version": "3.6.0"}, "storage": {"disks": [], "filesystems": []}, "kernelArguments": {}});
    stage("ec2", ok.to_string().as_bytes(), fast()).unwrap();
}

struct Served {
    mock: Mock,
}

/// Serves `documents` (path → body) on 127.0.0.1.
fn serve(documents: Vec<(&'static str, Vec<u8>)>) -> Served {
    let mock = Mock::start(Faults::default(), move |r| {
        documents
            .iter()
            .find(|(p, _)| *p == r.path)
            .map(|(_, b)| Resp::ok(b.clone()))
            .unwrap_or_else(Resp::not_found)
    });
    Served { mock }
}

fn sha512(b: &[u8]) -> String {
    format!("sha512-{}", hex::encode(sha2::Sha512::digest(b)))
}
fn sha256(b: &[u8]) -> String {
    format!("sha256-{}", hex::encode(sha2::Sha256::digest(b)))
}

/// A three-level chain: top (3.0) merges child (3.4, sha512) which merges grandchild
/// (3.6, sha256, gzip), whose file comes over HTTP with a hash.
fn chain(blob_hash: Option<String>) -> (Served, Vec<u8>) {
    // The documents name the server's own URL: start it, then fill them in.
    let blob = b"served blob\n".to_vec();
    let docs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(&'static str, Vec<u8>)>::new()));
    let d2 = docs.clone();
    let mock = Mock::start(Faults::default(), move |r| {
        d2.lock()
            .unwrap()
            .iter()
            .find(|(p, _)| *p == r.path)
            .map(|(_, b)| Resp::ok(b.clone()))
            .unwrap_or_else(Resp::not_found)
    });
    let base = mock.base.clone();
    let grandchild = json!({
        "ignition": {"version": "3.6.0"},
        "storage": {"files": [{"path": "/etc/blob.txt", "contents": {"source": format!("{base}/blob"),
            "verification": {"hash": blob_hash.unwrap_or_else(|| sha512(&blob))}}}]}
    })
    .to_string()
    .into_bytes();
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&grandchild).unwrap();
        e.finish().unwrap()
    };
    let child = json!({
        "ignition": {"version": "3.4.0", "config": {"merge": [{"source": format!("{base}/grandchild.ign.gz"), "compression": "gzip",
            "verification": {"hash": sha256(&grandchild)}}]}},
        "storage": {"files": [{"path": "/etc/a.txt", "overwrite": true, "contents": {"source": "data:,from%20child"}}]}
    })
    .to_string()
    .into_bytes();
    let top = json!({
        "ignition": {"version": "3.0.0", "config": {"merge": [{"source": format!("{base}/child.ign"), "verification": {"hash": sha512(&child)}}]}},
        "storage": {"files": [node_file(), {"path": "/etc/a.txt", "mode": 384, "contents": {"source": "data:,from%20top"}}]}
    })
    .to_string()
    .into_bytes();
    *docs.lock().unwrap() = vec![
        ("/blob", blob),
        ("/child.ign", child),
        ("/grandchild.ign.gz", gz),
    ];
    (Served { mock }, top)
}

#[test]
fn merge_chain_over_http_with_hashes() {
    let (served, top) = chain(None);
    let st = stage("nocloud", &top, fast()).unwrap();
    assert_eq!(st.referenced.len(), 2, "{:?}", st.referenced);
    let tree = base_tree();
    st.apply(tree.path()).unwrap();
    let a = tree.path().join("etc/a.txt");
    assert_eq!(fs::read_to_string(&a).unwrap(), "from child");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&a).unwrap().permissions().mode() & 0o777,
        0o600,
        "the parent's mode survives the merge"
    );
    assert_eq!(
        fs::read_to_string(tree.path().join("etc/blob.txt")).unwrap(),
        "served blob\n"
    );
    assert_eq!(st.node_config_yaml().unwrap(), NODE_YAML.as_bytes());
    let hits = served.mock.hits();
    assert_eq!(
        hits,
        ["GET /child.ign", "GET /grandchild.ign.gz", "GET /blob"],
        "{hits:?}"
    );
}

#[test]
fn a_bad_hash_anywhere_is_refused_and_nothing_is_applied() {
    // On a served file deep in the chain…
    let (_served, top) = chain(Some(format!("sha512-{}", "0".repeat(128))));
    let tree = base_tree();
    let before = fs::read_dir(tree.path().join("etc")).unwrap().count();
    let e = stage("nocloud", &top, fast()).unwrap_err();
    assert!(matches!(e, IgnitionError::HashMismatch { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("storage.files[/etc/blob.txt].contents")
            && e.to_string().contains("/blob"),
        "{e}"
    );
    // …and on a merged config.
    let served = serve(vec![(
        "/child.ign",
        br#"{"ignition":{"version":"3.6.0"}}"#.to_vec(),
    )]);
    let top = json!({"ignition": {"version": "3.6.0", "config": {"merge": [{"source": format!("{}/child.ign", served.mock.base),
        "verification": {"hash": format!("sha256-{}", "ab".repeat(32))}}]}}, "storage": {"files": [node_file()]}});
    let e = stage("nocloud", top.to_string().as_bytes(), fast()).unwrap_err();
    assert!(
        matches!(e, IgnitionError::HashMismatch { .. })
            && e.to_string().contains("ignition.config.merge[0]"),
        "{e}"
    );
    // Through acquire: the seed carries the config, acquire fails, the tree is untouched.
    let img = fw_cfg_root(&top.to_string());
    let ctx = SourceContext::new(img.path(), "")
        .with_devices(DeviceSet::files(Vec::<PathBuf>::new()))
        .with_timeouts(fast());
    assert!(acquire(&ctx).is_err());
    assert_eq!(
        fs::read_dir(tree.path().join("etc")).unwrap().count(),
        before
    );
    assert!(!tree.path().join("etc/a.txt").exists() && !tree.path().join("etc/blob.txt").exists());
}

#[test]
fn replace_discards_the_current_config() {
    let replacement = json!({"ignition": {"version": "3.2.0"}, "storage": {"files": [node_file(), {"path": "/etc/replaced", "contents": {"source": "data:,r"}}]}})
        .to_string()
        .into_bytes();
    let hash = sha512(&replacement);
    let served = serve(vec![("/r.ign", replacement)]);
    let top = json!({"ignition": {"version": "3.3.0", "config": {"replace": {"source": format!("{}/r.ign", served.mock.base), "verification": {"hash": hash}}}},
        "storage": {"files": [{"path": "/etc/original", "contents": {"source": "data:,o"}}]}});
    let st = stage("gcp", top.to_string().as_bytes(), fast()).unwrap();
    assert_eq!(st.file_paths(), ["/etc/replaced"]);
}

#[test]
fn a_missing_referenced_config_is_an_error() {
    let served = serve(vec![]);
    let top = json!({"ignition": {"version": "3.6.0", "config": {"merge": [{"source": format!("{}/nope.ign", served.mock.base)}]}}});
    let e = stage("ec2", top.to_string().as_bytes(), fast()).unwrap_err();
    assert!(
        matches!(
            e,
            IgnitionError::Fetch(NetError::Status { status: 404, .. })
        ),
        "{e}"
    );
}

fn fw_cfg_root(content: &str) -> tempfile::TempDir {
    test_support::files::fw_cfg_root(firstboot::source::FW_CFG_NAME, content)
}

#[test]
fn ignition_through_a_source_yields_the_node_config_and_the_staged_config() {
    let d = fw_cfg_root(&String::from_utf8(fixture("v3_5.ign")).unwrap());
    let ctx = SourceContext::new(d.path(), "")
        .with_platform(Platform::Qemu)
        .with_devices(DeviceSet::files(Vec::<PathBuf>::new()))
        .with_timeouts(fast());
    let a = acquire(&ctx).unwrap();
    assert_eq!(a.source, "qemu-fw-cfg");
    assert_eq!(a.node_config.hostname.as_deref(), Some("node-ign"));
    let ign = a.ignition.expect("staged");
    assert_eq!(ign.version, "3.5.0");
    assert_eq!(ign.source_name, "qemu-fw-cfg");
}

#[test]
fn ignition_without_a_node_config_is_refused() {
    let d = fw_cfg_root(
        r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/x","contents":{"source":"data:,x"}}]}}"#,
    );
    let ctx = SourceContext::new(d.path(), "")
        .with_devices(DeviceSet::files(Vec::<PathBuf>::new()))
        .with_timeouts(fast());
    let e = acquire(&ctx).unwrap_err().to_string();
    test_support::assert_contains(&e, &["qemu-fw-cfg", "/etc/nodeimage/node.yaml"]);
    // And an invalid node config inside Ignition names the path.
    let bad = json!({"ignition": {"version": "3.4.0"}, "storage": {"files": [{"path": "/etc/nodeimage/node.yaml",
        "contents": {"source": "data:,version%3A%201%0Arole%3A%20worker%0Acolour%3A%20blue%0A"}}]}});
    let d = fw_cfg_root(&bad.to_string());
    let ctx = SourceContext::new(d.path(), "")
        .with_devices(DeviceSet::files(Vec::<PathBuf>::new()))
        .with_timeouts(fast());
    let e = acquire(&ctx).unwrap_err().to_string();
    test_support::assert_contains(&e, &["qemu-fw-cfg: /etc/nodeimage/node.yaml", "colour"]);
}

//! The `firstboot` binary against a directory tree (`--root`) and a metadata server on
//! 127.0.0.1 that behaves like EC2's IMDSv2: the whole run, as on a node, without booting.

use std::process::Command;
use test_support::metadata;

use test_support::http::Faults;

const NODE_YAML: &str = "version: 1\nrole: worker\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1:6443\njoin: false\nfiles:\n  - {path: /etc/demo/motd, contents: hi}\npreflight:\n  skip: [memory, disk, architecture, kernel-modules, sysctls, ports]\n";

fn firstboot(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_firstboot"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn root_run_against_an_ec2_metadata_server() {
    let root = tempfile::tempdir().unwrap();
    let mock = metadata::ec2(metadata::Ec2::serving(Some(NODE_YAML)), Faults::default());
    let r = root.path().to_str().unwrap();
    let (code, stdout, stderr) = firstboot(&[
        "--root",
        r,
        "--platform",
        "ec2",
        "--metadata-url",
        &mock.base,
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // The config names no hostname: the instance's hostname from the metadata is used.
    assert!(
        stdout.starts_with(
            "firstboot: ok role=worker hostname=ip-172-31-5-6.eu-west-1.compute.internal in "
        ),
        "{stdout}"
    );
    let status: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.path().join("var/lib/firstboot/status.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(status["source"], "ec2");
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/demo/motd")).unwrap(),
        "hi"
    );
    assert!(root.path().join("etc/nodeimage/firewall.nft").exists());
    assert!(root.path().join("var/lib/firstboot/done").exists());
    let hits = mock.hits();
    assert_eq!(hits[0], "PUT /latest/api/token", "{hits:?}");

    // Second run: the marker makes it a no-op.
    let (code, stdout, _) = firstboot(&[
        "--root",
        r,
        "--platform",
        "ec2",
        "--metadata-url",
        &mock.base,
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("already done"), "{stdout}");
}

#[test]
fn malformed_config_is_one_clear_line_and_a_failed_status() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("node.yaml");
    std::fs::write(
        &cfg,
        "version: 1\nrole: wrker\ncluster: {name: a, api_endpoint: b}\n",
    )
    .unwrap();
    let (code, stdout, _) = firstboot(&[
        "--root",
        root.path().to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    let line = stdout.trim();
    assert!(
        line.starts_with("firstboot: error: ")
            && line.contains("node.yaml")
            && line.contains("role")
            && line.contains("line 2"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1);
    let status: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.path().join("var/lib/firstboot/status.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(status["state"], "failed");
    assert!(!root.path().join("var/lib/firstboot/done").exists());
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    // A booted node has a machine-id (systemd makes it before firstboot runs); with no
    // hostname in the config and no NIC under this root, the node is named from it.
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(
        root.path().join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let before = tree_listing(root.path());
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("node.yaml");
    std::fs::write(&cfg, NODE_YAML).unwrap();
    let (r, c) = (root.path().to_str().unwrap(), cfg.to_str().unwrap());
    let steps = [
        "preflight",
        "firewall",
        "hostname",
        "files",
        "containerd-config",
        "images",
    ];

    let (code, stdout, stderr) = firstboot(&["--root", r, "--config", c, "--dry-run"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("firstboot: dry run: worker node-0123456789ab (config from file:"),
        "{stdout}"
    );
    for (i, step) in steps.iter().enumerate() {
        assert!(
            stdout.contains(&format!("{:>2}. {step} ", i + 1)),
            "{step}: {stdout}"
        );
    }
    assert!(stdout.contains("write 1 files: /etc/demo/motd"), "{stdout}");
    assert!(!stdout.contains("[done in an earlier run]"), "{stdout}");
    assert!(stdout.contains("node-0123456789ab"), "{stdout}");
    assert_eq!(
        tree_listing(root.path()),
        before,
        "a dry run writes nothing"
    );

    // After a real run the journal has every step, and the plan says so.
    let (code, stdout, stderr) = firstboot(&["--root", r, "--config", c]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, _) = firstboot(&["--root", r, "--config", c, "--dry-run"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.matches("[done in an earlier run]").count(),
        steps.len(),
        "{stdout}"
    );
    assert!(
        stdout.contains("firstboot already ran on this node"),
        "{stdout}"
    );
}

/// Every path under `dir` with its size, sorted.
fn tree_listing(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out: Vec<_> = test_support::files::walk(dir)
        .into_iter()
        .map(|(p, md)| (p, md.len()))
        .collect();
    out.sort();
    out
}

//! End to end on x86_64: `nodeimage build` (twice: byte-identical), `fsck.fat` on both FAT
//! partitions, `nodeimage write-config`, a UEFI boot under QEMU where firstboot takes the
//! node's identity from NODECONFIG, a reboot where it must not run again, and a fresh
//! boot with a malformed config that must print the clear error line.
//!
//! Needs root, mmdebstrap and qemu-system-x86 (installed by .ci/run). The built image is
//! kept in `target/qemu-tests/` so later test binaries can reuse it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qemu_tests::{run, workspace_bin, workspace_root, Vm, VmOptions};

#[path = "../../builder/tests/oci_support/mod.rs"]
mod oci_support;

/// Where the test's images live: a name no real registry answers for, served by the
/// test's registry through `--registry-mirror` (as an air-gapped site would).
const TEST_REGISTRY: &str = "nodeimage.test";

const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// A worker that provisions only the host: the test image has no Kubernetes payload.
/// The VM's disk is 4 GiB, so the seeds' 40 GB disk requirement is lowered explicitly.
const TEST_NODE: &str = "version: 1\nrole: worker\njoin: false\ncluster:\n  name: qemu\n  api_endpoint: 10.0.2.15:6443\npreflight:\n  min_disk_gib: 2\n";

fn b64(s: &str) -> String {
    use std::io::Write;
    let out = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    out.stdin.as_ref().unwrap().write_all(s.as_bytes()).unwrap();
    String::from_utf8_lossy(&out.wait_with_output().unwrap().stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// profiles/test-x86_64.toml plus three images from the test registry (a sandbox image
/// for every node, one for workers, one for masters), locked with `nodeimage lock`.
/// Written under `base/profiles/` with `base/overlays` pointing at the repository's.
fn images_profile(base: &Path, mirror: &str) -> PathBuf {
    let dir = base.join("profiles");
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_file(base.join("overlays"));
    std::os::unix::fs::symlink(workspace_root().join("overlays"), base.join("overlays")).unwrap();
    let text = std::fs::read_to_string(workspace_root().join("profiles/test-x86_64.toml")).unwrap();
    let profile = dir.join("test-images-x86_64.toml");
    std::fs::write(
        &profile,
        format!(
            "{}\n[[image]]\nname = \"pause\"\nreference = \"{TEST_REGISTRY}/pause:3.10\"\npurpose = \"sandbox\"\n\n\
             [[image]]\nname = \"tools\"\nreference = \"{TEST_REGISTRY}/tools:1.0\"\nrole = \"worker\"\n\n\
             [[image]]\nname = \"cp\"\nreference = \"{TEST_REGISTRY}/cp:1.0\"\nrole = \"master\"\n",
            text.replace("name = \"test-x86_64\"", "name = \"test-images-x86_64\"")
        ),
    )
    .unwrap();
    run(Command::new(workspace_bin("nodeimage").unwrap())
        .arg("lock")
        .arg(&profile)
        .arg("--registry-mirror")
        .arg(format!("{TEST_REGISTRY}={mirror}")))
    .expect("nodeimage lock");
    profile
}

/// Build `profile` into `out`; returns (raw image, seconds).
fn build(profile: &Path, mirror: &str, out: &Path) -> (PathBuf, f64) {
    let t = Instant::now();
    let stdout = run(Command::new(workspace_bin("nodeimage").unwrap())
        .arg("build")
        .arg(profile)
        .arg("--registry-mirror")
        .arg(format!("{TEST_REGISTRY}={mirror}"))
        .arg("--out-dir")
        .arg(out)
        .arg("--firstboot-bin")
        .arg(workspace_bin("firstboot").unwrap())
        .env("SOURCE_DATE_EPOCH", "1767225600"))
    .expect("nodeimage build");
    (PathBuf::from(stdout.trim()), t.elapsed().as_secs_f64())
}

/// The partitions recorded in manifest.json: (name, first byte, size).
fn partitions(manifest: &Path) -> Vec<(String, u64, u64)> {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    m["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["first_lba"].as_u64().unwrap() * 512,
                p["size_bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn extract(image: &Path, offset: u64, size: u64, to: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(image).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; size as usize];
    f.read_exact(&mut buf).unwrap();
    std::fs::write(to, buf).unwrap();
}

/// A bootable copy of `image` with `extra` bytes of room for the state partition.
fn boot_copy(image: &Path, to: &Path, disk_size: u64) {
    run(Command::new("cp").arg("--sparse=always").arg(image).arg(to)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .unwrap()
        .set_len(disk_size)
        .unwrap();
}

fn start(disk: &Path, work: &Path, name: &str) -> Vm {
    Vm::start_x86_64_uefi(&VmOptions {
        disk: disk.to_path_buf(),
        memory_mib: 2048,
        cpus: 2,
        work_dir: work.to_path_buf(),
        name: name.into(),
        extra: vec![],
        user_net: true,
        netns: None,
        allow_reboot: false,
    })
    .unwrap()
}

fn boot(disk: &Path, work: &Path, name: &str) -> (Vm, String, Duration) {
    let mut vm = start(disk, work, name);
    let (line, at) = vm.wait_for("firstboot: ", BOOT_TIMEOUT).unwrap();
    (vm, line, at)
}

#[test]
fn x86_64_image_builds_reproducibly_boots_and_runs_firstboot_once() {
    if !test_support::Needs::new("x86_64 image build and boots")
        .root()
        .tool("mmdebstrap", "mmdebstrap")
        .tool("mkfs.erofs", "erofs-utils")
        .tool("qemu-system-x86_64", "qemu-system-x86 (bookworm-backports)")
        .tool("fsck.fat", "dosfstools")
        .tool("mcopy", "mtools")
        .file("/usr/bin/docker-registry", "docker-registry")
        .met()
    {
        return;
    }
    let base = workspace_root().join("target/qemu-tests");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();

    // 0. A registry with the test's images (Debian's docker-registry on 127.0.0.1).
    let registry = oci_support::TestRegistry::start()
        .expect("docker-registry (apt-get install docker-registry)");
    for repo in ["pause", "tools", "cp"] {
        let tag = if repo == "pause" { "3.10" } else { "1.0" };
        oci_support::push_multiarch(&registry.base(), repo, tag);
    }
    let profile = images_profile(&base, &registry.base());

    // 1. Two builds of the same profile are byte-identical.
    let (raw1, t1) = build(&profile, &registry.base(), &base.join("build1"));
    let (raw2, t2) = build(&profile, &registry.base(), &base.join("build2"));
    let (h1, h2) = (sha256(&raw1), sha256(&raw2));
    eprintln!("build 1: {t1:.1} s, build 2: {t2:.1} s, raw sha256 {h1}");
    assert_eq!(h1, h2, "two builds of the same profile differ");
    let zst1 = raw1.with_extension("raw.zst");
    assert_eq!(sha256(&zst1), sha256(&raw2.with_extension("raw.zst")));
    eprintln!(
        "raw {} MiB (allocated {} MiB), zst {} MiB",
        std::fs::metadata(&raw1).unwrap().len() >> 20,
        Command::new("du")
            .arg("-m")
            .arg(&raw1)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("?")
                .to_string())
            .unwrap(),
        std::fs::metadata(&zst1).unwrap().len() >> 20
    );
    std::fs::remove_dir_all(base.join("build2")).unwrap();

    // 2. Every FAT filesystem passes fsck.fat -n.
    let manifest = raw1.parent().unwrap().join("manifest.json");
    let parts = partitions(&manifest);
    for (name, offset, size) in parts.iter().filter(|p| p.0 == "ESP" || p.0 == "NODECONFIG") {
        let f = base.join(format!("{name}.fat"));
        extract(&raw1, *offset, *size, &f);
        let out = Command::new("fsck.fat")
            .arg("-n")
            .arg("-v")
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fsck.fat -n {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(&f).unwrap();
    }

    // 3. A node config goes into NODECONFIG; first boot runs firstboot.
    let nodeimage = workspace_bin("nodeimage").unwrap();
    let node_yaml = base.join("node.yaml");
    std::fs::write(
        &node_yaml,
        format!("{TEST_NODE}hostname: test-node-1\nfiles:\n  - path: /etc/nodeimage-test/hello\n    mode: \"0640\"\n    contents: hello from NODECONFIG\n"),
    )
    .unwrap();
    let disk_a = base.join("node-a.raw");
    boot_copy(&raw1, &disk_a, 4 << 30);
    run(Command::new(&nodeimage)
        .arg("write-config")
        .arg(&disk_a)
        .arg(&node_yaml))
    .unwrap();
    let inspect = run(Command::new(&nodeimage).arg("inspect").arg(&disk_a)).unwrap();
    assert!(
        inspect.contains("NODECONFIG") && inspect.contains("test-node-1"),
        "{inspect}"
    );

    let (mut vm, line, at) = boot(&disk_a, &base, "boot1");
    eprintln!(
        "boot 1: `{line}` {:.1} s after QEMU start",
        at.as_secs_f64()
    );
    assert!(
        line.starts_with("firstboot: ok role=worker hostname=test-node-1 in "),
        "{line}"
    );
    vm.wait_exit(Duration::from_secs(180)).unwrap();
    let r1 = vm.report().unwrap();
    assert_eq!(r1.len(), 1, "one report line expected: {r1:?}");
    let r1 = &r1[0];
    assert_eq!(r1["hostname"], "test-node-1");
    assert_eq!(r1["firstboot_result"], "success");
    assert_eq!(r1["done"], true);
    assert_eq!(r1["root_fs"], "erofs");
    assert_eq!(r1["var_fs"], "ext4");
    assert_eq!(r1["etc_fs"], "overlay");
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
    drop(vm);

    // 4. Reboot: firstboot does not run again; hostname and status persist.
    // The unit's condition is false, so firstboot prints nothing: wait for the report.
    let mut vm = start(&disk_a, &base, "boot2");
    vm.wait_exit(BOOT_TIMEOUT).unwrap();
    assert!(
        !vm.console().contains("firstboot: ok"),
        "firstboot ran again"
    );
    let r2 = vm.report().unwrap();
    let r2 = &r2[0];
    assert_ne!(r2["boot_id"], r1["boot_id"]);
    assert_eq!(r2["hostname"], "test-node-1", "hostname did not persist");
    assert_eq!(r2["firstboot_condition"], "no", "firstboot ran again: {r2}");
    assert_eq!(
        r2["status"], r1["status"],
        "status.json changed on the second boot"
    );
    drop(vm);

    // 5. A fresh node whose config was edited by hand into something malformed.
    let disk_b = base.join("node-b.raw");
    boot_copy(&raw1, &disk_b, 4 << 30);
    let (_, off, _) = parts.iter().find(|p| p.0 == "NODECONFIG").unwrap().clone();
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
    let (mut vm, line, at) = boot(&disk_b, &base, "boot3");
    eprintln!(
        "boot 3: `{line}` {:.1} s after QEMU start",
        at.as_secs_f64()
    );
    assert!(line.starts_with("firstboot: error: "), "{line}");
    assert!(
        line.contains("node.yaml") && line.contains("role"),
        "the error must name the file and the field: {line}"
    );
    vm.wait_exit(Duration::from_secs(180)).unwrap();
    let r3 = &vm.report().unwrap()[0];
    assert_eq!(r3["firstboot_result"], "exit-code");
    assert_eq!(r3["done"], false);
    assert_eq!(r3["status"]["state"], "failed");
    drop(vm);

    // 6. Issue 3: a real data source end to end. No NODECONFIG config; the node config
    //    comes through QEMU's fw_cfg (platform detected from SMBIOS as QEMU).
    let disk_c = base.join("node-c.raw");
    boot_copy(&raw1, &disk_c, 4 << 30);
    let fw_yaml = base.join("fwcfg-node.yaml");
    std::fs::write(&fw_yaml, format!("{TEST_NODE}hostname: test-node-fwcfg\n")).unwrap();
    let mut vm = Vm::start_x86_64_uefi(&VmOptions {
        disk: disk_c.clone(),
        memory_mib: 2048,
        cpus: 2,
        work_dir: base.clone(),
        name: "boot4".into(),
        extra: vec![
            "-fw_cfg".into(),
            format!("name=opt/org.nodeimage/config,file={}", fw_yaml.display()),
        ],
        user_net: true,
        netns: None,
        allow_reboot: false,
    })
    .unwrap();
    let (line, at) = vm.wait_for("firstboot: ", BOOT_TIMEOUT).unwrap();
    eprintln!(
        "boot 4 (fw_cfg): `{line}` {:.1} s after QEMU start",
        at.as_secs_f64()
    );
    assert!(
        line.starts_with("firstboot: ok role=worker hostname=test-node-fwcfg in "),
        "{line}"
    );
    vm.wait_exit(Duration::from_secs(180)).unwrap();
    let r4 = &vm.report().unwrap()[0];
    assert_eq!(r4["status"]["source"], "qemu-fw-cfg");
    eprintln!(
        "boot 4: config acquired in {} ms",
        r4["status"]["steps"][0]["ms"]
    );
}

//! End to end on x86_64, in phases that pass or fail on their own:
//!
//! * the build fixture: `nodeimage build` of profiles/test-x86_64.toml plus three images
//!   from a test registry, kept in `target/qemu-tests/fixture-<inputs>/` and reused while
//!   its inputs (both binaries, the profile, the overlays, the test images) are unchanged;
//! * [`build_is_reproducible`]: a second build with `--no-stage-cache` (every stage made
//!   afresh) is byte-identical to the fixture (which may come from the stage cache);
//! * [`fat_partitions_pass_fsck`]: `fsck.fat` on the ESP and NODECONFIG;
//! * [`first_boot_then_reboot`]: `nodeimage write-config`, a UEFI boot under QEMU where
//!   firstboot takes the node's identity from NODECONFIG, then a reboot where it must
//!   not run again;
//! * [`malformed_config_fails_clearly`]: a fresh boot with a hand-broken config that
//!   must print the clear error line;
//! * [`config_from_fw_cfg`]: the node config through QEMU's fw_cfg.
//!
//! Under TCG one VM runs at a time (they would starve each other on a small machine);
//! the rebuild and fsck run beside them. Needs root, mmdebstrap, docker-registry and
//! qemu-system-x86 (installed by .ci/install-deps).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use qemu_tests::{run, workspace_bin, workspace_root, Accel, Vm, VmOptions};
use test_support::registry::{make_image, make_index, push_multiarch, TestRegistry};

/// Where the test's images live: a name no real registry answers for, served by the
/// test's registry through `--registry-mirror` (as an air-gapped site would).
const TEST_REGISTRY: &str = "nodeimage.test";

/// The test images: (repository, tag).
const IMAGES: [(&str, &str); 3] = [("pause", "3.10"), ("tools", "1.0"), ("cp", "1.0")];

const EPOCH: &str = "1767225600";

const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// A worker that provisions only the host: the test image has no Kubernetes payload.
/// The VM's disk is 4 GiB, so the seeds' 40 GB disk requirement is lowered explicitly.
const TEST_NODE: &str = "version: 1\nrole: worker\njoin: false\ncluster:\n  name: qemu\n  api_endpoint: 10.0.2.15:6443\npreflight:\n  min_disk_gib: 2\n";

/// What every phase needs from the machine (a failure under CI, a skip otherwise).
fn needs(phase: &str) -> bool {
    test_support::Needs::new(phase)
        .root()
        .tool("mmdebstrap", "mmdebstrap")
        .tool("mkfs.erofs", "erofs-utils")
        .tool("qemu-system-x86_64", "qemu-system-x86 (bookworm-backports)")
        .tool("fsck.fat", "dosfstools")
        .tool("mcopy", "mtools")
        .file("/usr/bin/docker-registry", "docker-registry")
        .met()
}

/// `target/qemu-tests`.
fn base() -> PathBuf {
    workspace_root().join("target/qemu-tests")
}

/// Prints how long a phase took.
fn phase<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    eprintln!("phase {name}: {:.1} s", t.elapsed().as_secs_f64());
    r
}

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

/// A registry holding the test images.
fn registry() -> TestRegistry {
    let registry =
        TestRegistry::start().expect("docker-registry (apt-get install docker-registry)");
    for (repo, tag) in IMAGES {
        push_multiarch(&registry.base(), repo, tag);
    }
    registry
}

/// profiles/test-x86_64.toml plus three images from the test registry (a sandbox image
/// for every node, one for workers, one for masters), locked with `nodeimage lock`.
/// Written under `base/profiles/` with `base/overlays` pointing at the repository's.
fn images_profile(base: &Path, mirror: &str) -> PathBuf {
    let dir = base.join("profiles");
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_file(base.join("overlays"));
    std::os::unix::fs::symlink(workspace_root().join("overlays"), base.join("overlays")).unwrap();
    let profile = dir.join("test-images-x86_64.toml");
    std::fs::write(&profile, profile_text()).unwrap();
    run(Command::new(workspace_bin("nodeimage").unwrap())
        .arg("lock")
        .arg(&profile)
        .arg("--registry-mirror")
        .arg(format!("{TEST_REGISTRY}={mirror}")))
    .expect("nodeimage lock");
    profile
}

fn profile_text() -> String {
    let text = std::fs::read_to_string(workspace_root().join("profiles/test-x86_64.toml")).unwrap();
    format!(
        "{}\n[[image]]\nname = \"pause\"\nreference = \"{TEST_REGISTRY}/pause:3.10\"\npurpose = \"sandbox\"\n\n\
         [[image]]\nname = \"tools\"\nreference = \"{TEST_REGISTRY}/tools:1.0\"\nrole = \"worker\"\n\n\
         [[image]]\nname = \"cp\"\nreference = \"{TEST_REGISTRY}/cp:1.0\"\nrole = \"master\"\n",
        text.replace("name = \"test-x86_64\"", "name = \"test-images-x86_64\"")
    )
}

/// Build `profile` into `out`; returns (raw image, seconds).
fn build(profile: &Path, mirror: &str, out: &Path, extra: &[&str]) -> (PathBuf, f64) {
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
        .args(extra)
        .env("SOURCE_DATE_EPOCH", EPOCH))
    .expect("nodeimage build");
    (PathBuf::from(stdout.trim()), t.elapsed().as_secs_f64())
}

/// The built image every phase starts from.
struct Fixture {
    raw: PathBuf,
    /// (name, first byte, size) of each partition, from manifest.json.
    parts: Vec<(String, u64, u64)>,
}

/// sha256 over everything the fixture is built from.
fn fixture_key() -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for bin in ["nodeimage", "firstboot"] {
        h.update(std::fs::read(workspace_bin(bin).unwrap()).unwrap());
    }
    h.update(profile_text());
    hash_tree(&mut h, &workspace_root().join("overlays"));
    for (repo, _) in IMAGES {
        let amd = make_image("amd64", &format!("{repo} amd64\n"));
        let arm = make_image("arm64", &format!("{repo} arm64\n"));
        h.update(make_index(&[&amd, &arm]));
    }
    h.update(EPOCH);
    hex::encode(h.finalize())
}

fn hash_tree(h: &mut sha2::Sha256, dir: &Path) {
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        h.update(e.file_name().as_encoded_bytes());
        h.update(m.permissions().mode().to_le_bytes());
        if m.is_dir() {
            hash_tree(h, &e.path());
        } else if m.file_type().is_symlink() {
            h.update(
                std::fs::read_link(e.path())
                    .unwrap()
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else {
            h.update(std::fs::read(e.path()).unwrap());
        }
    }
}

fn make_fixture() -> Fixture {
    let base = base();
    std::fs::create_dir_all(&base).unwrap();
    let key = fixture_key();
    let dir = base.join(format!("fixture-{}", &key[..16]));
    let out = dir.join("out");
    let raw = out.join("test-images-x86_64/test-images-x86_64.raw");
    if dir.join("done").exists() && raw.exists() {
        eprintln!("fixture: {} (cached: same inputs)", raw.display());
    } else {
        for e in std::fs::read_dir(&base).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("fixture-") {
                std::fs::remove_dir_all(e.path()).unwrap();
            }
        }
        let registry = registry();
        let profile = images_profile(&base, &registry.base());
        let (built, t) = build(&profile, &registry.base(), &out, &[]);
        assert_eq!(built, raw);
        eprintln!("fixture: built in {t:.1} s");
        std::fs::write(dir.join("done"), &key).unwrap();
    }
    let parts = partitions(&raw.parent().unwrap().join("manifest.json"));
    Fixture { raw, parts }
}

static FIXTURE: OnceLock<Result<Fixture, String>> = OnceLock::new();

/// The fixture, built once per test binary; a failed build fails every phase with its message.
fn fixture() -> &'static Fixture {
    FIXTURE
        .get_or_init(|| {
            phase("build fixture", || {
                std::panic::catch_unwind(make_fixture).map_err(|e| {
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                })
            })
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("the build fixture failed: {e}"))
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

/// A bootable copy of `image`, grown to `disk_size` to leave room for the state partition.
fn boot_copy(image: &Path, to: &Path, disk_size: u64) {
    let _ = std::fs::remove_file(to);
    run(Command::new("cp").arg("--sparse=always").arg(image).arg(to)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .unwrap()
        .set_len(disk_size)
        .unwrap();
}

/// Held while a VM runs under TCG.
static VM_SLOT: Mutex<()> = Mutex::new(());

fn vm_slot() -> Option<MutexGuard<'static, ()>> {
    (Accel::detect() == Accel::Tcg).then(|| VM_SLOT.lock().unwrap_or_else(|e| e.into_inner()))
}

fn start(disk: &Path, name: &str, extra: Vec<String>) -> Vm {
    Vm::start_x86_64_uefi(&VmOptions {
        disk: disk.to_path_buf(),
        memory_mib: 2048,
        cpus: 2,
        work_dir: base(),
        name: name.into(),
        extra,
        user_net: true,
        netns: None,
        allow_reboot: false,
    })
    .unwrap()
}

/// Boot `disk` until firstboot's console line, then wait for the guest to power off;
/// returns the line and the report lines.
fn boot(disk: &Path, name: &str, extra: Vec<String>) -> (String, Vec<serde_json::Value>) {
    let mut vm = start(disk, name, extra);
    let (line, at) = vm.wait_for("firstboot: ", BOOT_TIMEOUT).unwrap();
    eprintln!(
        "{name}: `{line}` {:.1} s after QEMU start",
        at.as_secs_f64()
    );
    vm.wait_exit(Duration::from_secs(180)).unwrap();
    (line, vm.report().unwrap())
}

#[test]
fn build_is_reproducible() {
    if !needs("x86_64 build reproducibility") {
        return;
    }
    let fx = fixture();
    let rebuild = base().join("rebuild");
    let _ = std::fs::remove_dir_all(&rebuild);
    let raw2 = phase("rebuild without the stage cache", || {
        let registry = registry();
        let profile = images_profile(&base(), &registry.base());
        let (raw2, t2) = build(&profile, &registry.base(), &rebuild, &["--no-stage-cache"]);
        eprintln!("rebuild: {t2:.1} s");
        raw2
    });
    let raw1 = &fx.raw;
    let (h1, h2) = (sha256(raw1), sha256(&raw2));
    eprintln!("raw sha256 {h1}");
    assert_eq!(h1, h2, "two builds of the same profile differ");
    let zst1 = raw1.with_extension("raw.zst");
    assert_eq!(sha256(&zst1), sha256(&raw2.with_extension("raw.zst")));
    eprintln!(
        "raw {} MiB (allocated {} MiB), zst {} MiB",
        std::fs::metadata(raw1).unwrap().len() >> 20,
        Command::new("du")
            .arg("-m")
            .arg(raw1)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("?")
                .to_string())
            .unwrap(),
        std::fs::metadata(&zst1).unwrap().len() >> 20
    );
    std::fs::remove_dir_all(&rebuild).unwrap();
}

#[test]
fn fat_partitions_pass_fsck() {
    if !needs("x86_64 image FAT partitions") {
        return;
    }
    let fx = fixture();
    for (name, offset, size) in fx
        .parts
        .iter()
        .filter(|p| p.0 == "ESP" || p.0 == "NODECONFIG")
    {
        let f = base().join(format!("{name}.fat"));
        extract(&fx.raw, *offset, *size, &f);
        test_support::images::fsck_fat(&f, &["-v"], &[]);
        std::fs::remove_file(&f).unwrap();
    }
}

#[test]
fn first_boot_then_reboot() {
    if !needs("x86_64 first boot and reboot") {
        return;
    }
    let fx = fixture();
    let base = base();
    // A node config goes into NODECONFIG; first boot runs firstboot.
    let nodeimage = workspace_bin("nodeimage").unwrap();
    let node_yaml = base.join("node.yaml");
    std::fs::write(
        &node_yaml,
        format!("{TEST_NODE}hostname: test-node-1\nfiles:\n  - path: /etc/nodeimage-test/hello\n    mode: \"0640\"\n    contents: hello from NODECONFIG\n"),
    )
    .unwrap();
    let disk_a = base.join("node-a.raw");
    boot_copy(&fx.raw, &disk_a, 4 << 30);
    run(Command::new(&nodeimage)
        .arg("write-config")
        .arg(&disk_a)
        .arg(&node_yaml))
    .unwrap();
    let inspect = run(Command::new(&nodeimage).arg("inspect").arg(&disk_a)).unwrap();
    test_support::assert_contains(&inspect, &["NODECONFIG", "test-node-1"]);

    let slot = vm_slot();
    let r1 = phase("first boot", || {
        let (line, r1) = boot(&disk_a, "boot1", vec![]);
        assert!(
            line.starts_with("firstboot: ok role=worker hostname=test-node-1 in "),
            "{line}"
        );
        assert_eq!(r1.len(), 1, "one report line expected: {r1:?}");
        r1[0].clone()
    });
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

    // Reboot: firstboot does not run again; hostname and status persist.
    // The unit's condition is false, so firstboot prints nothing: wait for the report.
    let r2 = phase("reboot", || {
        let mut vm = start(&disk_a, "boot2", vec![]);
        vm.wait_exit(BOOT_TIMEOUT).unwrap();
        assert!(
            !vm.console().contains("firstboot: ok"),
            "firstboot ran again"
        );
        vm.report().unwrap()[0].clone()
    });
    drop(slot);
    assert_ne!(r2["boot_id"], r1["boot_id"]);
    assert_eq!(r2["hostname"], "test-node-1", "hostname did not persist");
    assert_eq!(r2["firstboot_condition"], "no", "firstboot ran again: {r2}");
    assert_eq!(
        r2["status"], r1["status"],
        "status.json changed on the second boot"
    );
    let _ = std::fs::remove_file(&disk_a);
}

#[test]
fn malformed_config_fails_clearly() {
    if !needs("x86_64 boot with a malformed config") {
        return;
    }
    let fx = fixture();
    let base = base();
    // A fresh node whose config was edited by hand into something malformed.
    let disk_b = base.join("node-b.raw");
    boot_copy(&fx.raw, &disk_b, 4 << 30);
    let (_, off, _) = fx
        .parts
        .iter()
        .find(|p| p.0 == "NODECONFIG")
        .unwrap()
        .clone();
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
    let _slot = vm_slot();
    phase("boot with a malformed config", || {
        let (line, report) = boot(&disk_b, "boot3", vec![]);
        assert!(line.starts_with("firstboot: error: "), "{line}");
        assert!(
            line.contains("node.yaml") && line.contains("role"),
            "the error must name the file and the field: {line}"
        );
        let r3 = &report[0];
        assert_eq!(r3["firstboot_result"], "exit-code");
        assert_eq!(r3["done"], false);
        assert_eq!(r3["status"]["state"], "failed");
    });
    let _ = std::fs::remove_file(&disk_b);
}

#[test]
fn config_from_fw_cfg() {
    if !needs("x86_64 boot with the config in fw_cfg") {
        return;
    }
    let fx = fixture();
    let base = base();
    // Issue 3: a real data source end to end. No NODECONFIG config; the node config
    // comes through QEMU's fw_cfg (platform detected from SMBIOS as QEMU).
    let disk_c = base.join("node-c.raw");
    boot_copy(&fx.raw, &disk_c, 4 << 30);
    let fw_yaml = base.join("fwcfg-node.yaml");
    std::fs::write(&fw_yaml, format!("{TEST_NODE}hostname: test-node-fwcfg\n")).unwrap();
    let _slot = vm_slot();
    phase("boot with the config in fw_cfg", || {
        let (line, report) = boot(
            &disk_c,
            "boot4",
            vec![
                "-fw_cfg".into(),
                format!("name=opt/org.nodeimage/config,file={}", fw_yaml.display()),
            ],
        );
        assert!(
            line.starts_with("firstboot: ok role=worker hostname=test-node-fwcfg in "),
            "{line}"
        );
        let r4 = &report[0];
        assert_eq!(r4["status"]["source"], "qemu-fw-cfg");
        eprintln!(
            "boot 4: config acquired in {} ms",
            r4["status"]["steps"][0]["ms"]
        );
    });
    let _ = std::fs::remove_file(&disk_c);
}

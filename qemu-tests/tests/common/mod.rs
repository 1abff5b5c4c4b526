//! What the QEMU tests share: the build fixture (a test profile plus three images from a
//! test registry, built once and kept in `target/qemu-tests/fixture-<variant>-<inputs>/`
//! while its inputs are unchanged), booting copies of it, and reading their disks.
#![allow(dead_code)] // each test binary uses a part of it

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use qemu_tests::{run, workspace_bin, workspace_root, Accel, Vm, VmOptions};
use test_support::registry::{make_image, make_index, push_multiarch, TestRegistry};

/// Where the test's images live: a name no real registry answers for, served by the
/// test's registry through `--registry-mirror` (as an air-gapped site would).
pub const TEST_REGISTRY: &str = "nodeimage.test";

/// The test images: (repository, tag).
pub const IMAGES: [(&str, &str); 3] = [("pause", "3.10"), ("tools", "1.0"), ("cp", "1.0")];

pub const EPOCH: &str = "1767225600";

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// A worker that provisions only the host: the test image has no Kubernetes payload.
/// The VM's disk is 4 GiB, so the seeds' 40 GB disk requirement is lowered explicitly.
pub const TEST_NODE: &str = "version: 1\nrole: worker\njoin: false\ncluster:\n  name: qemu\n  api_endpoint: 10.0.2.15:6443\npreflight:\n  min_disk_gib: 2\n";

/// What every phase needs from the machine (a failure under CI, a skip otherwise).
pub fn needs(phase: &str) -> bool {
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
pub fn base() -> PathBuf {
    workspace_root().join("target/qemu-tests")
}

/// Prints how long a phase took.
pub fn phase<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    eprintln!("phase {name}: {:.1} s", t.elapsed().as_secs_f64());
    r
}

pub fn b64(s: &str) -> String {
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

pub fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// A registry holding the test images.
pub fn registry() -> TestRegistry {
    let registry =
        TestRegistry::start().expect("docker-registry (apt-get install docker-registry)");
    for (repo, tag) in IMAGES {
        push_multiarch(&registry.base(), repo, tag);
    }
    registry
}

/// The variant's profile plus three images from the test registry (a sandbox image
/// for every node, one for workers, one for masters), locked with `nodeimage lock`.
/// Written under `base/profiles/` with `base/overlays` pointing at the repository's.
pub fn images_profile(base: &Path, mirror: &str, v: &Variant) -> PathBuf {
    let dir = base.join("profiles");
    std::fs::create_dir_all(&dir).unwrap();
    let link = base.join("overlays");
    if std::fs::read_link(&link).ok() != Some(workspace_root().join("overlays")) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(workspace_root().join("overlays"), &link).unwrap();
    }
    let profile = dir.join(format!("{}.toml", v.name));
    std::fs::write(&profile, profile_text(v)).unwrap();
    run(Command::new(workspace_bin("nodeimage").unwrap())
        .arg("lock")
        .arg(&profile)
        .arg("--registry-mirror")
        .arg(format!("{TEST_REGISTRY}={mirror}"))
        // The test's own registry made these tags: nothing upstream to compare with.
        .arg("--trust-mirror-tags"))
    .expect("nodeimage lock");
    profile
}

pub fn profile_text(v: &Variant) -> String {
    let text = std::fs::read_to_string(workspace_root().join("profiles/test-x86_64.toml")).unwrap();
    let packages = "packages = [\"containerd\", \"runc\"]";
    assert!(
        text.contains(packages),
        "profiles/test-x86_64.toml: {packages} expected"
    );
    let extra: String = v.packages.iter().map(|p| format!(", \"{p}\"")).collect();
    let text = text
        .replace("name = \"test-x86_64\"", &format!("name = \"{}\"", v.name))
        .replace(
            packages,
            &format!("packages = [\"containerd\", \"runc\"{extra}]"),
        );
    let (_, public) = update_key();
    format!(
        "{text}\n[update]\npublic_key = \"{}\"\n\n[[image]]\nname = \"pause\"\nreference = \"{TEST_REGISTRY}/pause:3.10\"\npurpose = \"sandbox\"\n\n\
         [[image]]\nname = \"tools\"\nreference = \"{TEST_REGISTRY}/tools:1.0\"\nrole = \"worker\"\n\n\
         [[image]]\nname = \"cp\"\nreference = \"{TEST_REGISTRY}/cp:1.0\"\nrole = \"master\"\n",
        public.display()
    )
}

/// The test images' update key pair (TEST ONLY: made from a fixed seed, so every run
/// and every clone signs with the same key): `base/keys/update.pem` (0600) and
/// `update.pub.pem`.
pub fn update_key() -> (PathBuf, PathBuf) {
    use sha2::Digest;
    let dir = base().join("keys");
    std::fs::create_dir_all(&dir).unwrap();
    let seed: [u8; 32] = sha2::Sha256::digest(b"nodeimage qemu-tests: TEST ONLY update key").into();
    let pem = nodeimage_core::bundle::SigningKey::pem_from_seed(&seed);
    let key = nodeimage_core::bundle::SigningKey::from_pem(&pem, "test key").unwrap();
    let (secret, public) = (dir.join("update.pem"), dir.join("update.pub.pem"));
    nodeimage_core::files::atomic_write(&secret, pem.as_bytes(), 0o600).unwrap();
    nodeimage_core::files::atomic_write(&public, key.public().to_pem().as_bytes(), 0o644).unwrap();
    (secret, public)
}

/// Build `profile` into `out`; returns (raw image, seconds).
pub fn build(profile: &Path, mirror: &str, out: &Path, extra: &[&str]) -> (PathBuf, f64) {
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
        .arg("--sign-key")
        .arg(update_key().0)
        .args(extra)
        .env("SOURCE_DATE_EPOCH", EPOCH))
    .expect("nodeimage build");
    (PathBuf::from(stdout.trim()), t.elapsed().as_secs_f64())
}

/// The built image every phase starts from.
pub struct Fixture {
    pub raw: PathBuf,
    /// (name, first byte, size) of each partition, from manifest.json.
    pub parts: Vec<(String, u64, u64)>,
}

impl Fixture {
    /// (first byte, size) of the partition whose name starts with `prefix` (`root-` for
    /// the root of either architecture).
    pub fn part(&self, prefix: &str) -> (u64, u64) {
        self.parts
            .iter()
            .find(|p| p.0.starts_with(prefix))
            .map(|p| (p.1, p.2))
            .unwrap_or_else(|| panic!("no partition {prefix}* in {:?}", self.parts))
    }
}

/// A test profile: profiles/test-x86_64.toml under another name, with more Debian
/// packages, plus the three test images.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub name: &'static str,
    pub packages: &'static [&'static str],
}

/// The image of x86_64_boot and power_cut.
pub const IMAGES_VARIANT: Variant = Variant {
    name: "test-images-x86_64",
    packages: &[],
};

/// Another image for the A/B update test to move to (same packages, other inputs).
pub const UPDATE_B_VARIANT: Variant = Variant {
    name: "test-update-b-x86_64",
    packages: &[],
};

/// The same with sshd (the SSH host key test).
pub const SSH_VARIANT: Variant = Variant {
    name: "test-ssh-x86_64",
    packages: &["openssh-server"],
};

/// sha256 over everything the fixture is built from.
pub fn fixture_key(v: &Variant) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for bin in ["nodeimage", "firstboot"] {
        h.update(std::fs::read(workspace_bin(bin).unwrap()).unwrap());
    }
    h.update(profile_text(v));
    hash_tree(&mut h, &workspace_root().join("overlays"));
    for (repo, _) in IMAGES {
        let amd = make_image("amd64", &format!("{repo} amd64\n"));
        let arm = make_image("arm64", &format!("{repo} arm64\n"));
        h.update(make_index(&[&amd, &arm]));
    }
    h.update(EPOCH);
    hex::encode(h.finalize())
}

pub fn hash_tree(h: &mut sha2::Sha256, dir: &Path) {
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

pub fn make_fixture(v: &Variant) -> Fixture {
    let base = base();
    std::fs::create_dir_all(&base).unwrap();
    let key = fixture_key(v);
    let dir = base.join(format!("fixture-{}-{}", v.name, &key[..16]));
    let out = dir.join("out");
    let raw = out.join(format!("{0}/{0}.raw", v.name));
    if dir.join("done").exists() && raw.exists() {
        eprintln!("fixture: {} (cached: same inputs)", raw.display());
    } else {
        // Older fixtures of this variant (and of the days before variants) go.
        let prefix = format!("fixture-{}-", v.name);
        for e in std::fs::read_dir(&base).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let legacy = n
                .strip_prefix("fixture-")
                .is_some_and(|k| k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit()));
            if n.starts_with(&prefix) || legacy {
                std::fs::remove_dir_all(e.path()).unwrap();
            }
        }
        let registry = registry();
        let profile = images_profile(&base, &registry.base(), v);
        let (built, t) = build(&profile, &registry.base(), &out, &[]);
        assert_eq!(built, raw);
        eprintln!("fixture: built in {t:.1} s");
        std::fs::write(dir.join("done"), &key).unwrap();
    }
    let parts = partitions(&raw.parent().unwrap().join("manifest.json"));
    Fixture { raw, parts }
}

type Built = Result<Fixture, String>;
static FIXTURES: Mutex<Vec<(&'static str, &'static Built)>> = Mutex::new(Vec::new());

/// The variant's fixture, built once per test binary; a failed build fails every phase
/// with its message.
pub fn fixture_of(v: &Variant) -> &'static Fixture {
    let mut all = FIXTURES.lock().unwrap_or_else(|e| e.into_inner());
    let built: &'static Built = match all.iter().find(|(n, _)| *n == v.name) {
        Some((_, b)) => b,
        None => {
            let b: &'static Built = Box::leak(Box::new(phase("build fixture", || {
                std::panic::catch_unwind(|| make_fixture(v)).map_err(|e| {
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                })
            })));
            all.push((v.name, b));
            b
        }
    };
    drop(all);
    built
        .as_ref()
        .unwrap_or_else(|e| panic!("the build fixture failed: {e}"))
}

/// The fixture of x86_64_boot.
pub fn fixture() -> &'static Fixture {
    fixture_of(&IMAGES_VARIANT)
}

/// The partitions recorded in manifest.json: (name, first byte, size).
pub fn partitions(manifest: &Path) -> Vec<(String, u64, u64)> {
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

pub fn extract(image: &Path, offset: u64, size: u64, to: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(image).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; size as usize];
    f.read_exact(&mut buf).unwrap();
    std::fs::write(to, buf).unwrap();
}

/// A bootable copy of `image`, grown to `disk_size` to leave room for the state partition.
pub fn boot_copy(image: &Path, to: &Path, disk_size: u64) {
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

pub fn vm_slot() -> Option<MutexGuard<'static, ()>> {
    (Accel::detect() == Accel::Tcg).then(|| VM_SLOT.lock().unwrap_or_else(|e| e.into_inner()))
}

pub fn start(disk: &Path, name: &str, extra: Vec<String>) -> Vm {
    Vm::start_x86_64(&VmOptions {
        extra,
        ..VmOptions::new(Some(disk.to_path_buf()), &base(), name)
    })
    .unwrap()
}

/// Boot `disk` until firstboot's last console line (ok or error, not a progress line),
/// then wait for the guest to power off; returns the line and the report lines.
pub fn boot(disk: &Path, name: &str, extra: Vec<String>) -> (String, Vec<serde_json::Value>) {
    let mut vm = start(disk, name, extra);
    let (line, at) = vm
        .wait_for_any(&["firstboot: ok", "firstboot: error"], BOOT_TIMEOUT)
        .unwrap();
    eprintln!(
        "{name}: `{line}` {:.1} s after QEMU start",
        at.as_secs_f64()
    );
    vm.wait_exit(Duration::from_secs(180)).unwrap();
    (line, vm.report().unwrap())
}

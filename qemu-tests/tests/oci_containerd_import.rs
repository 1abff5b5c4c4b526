//! End to end on the node side: images pushed to a registry, locked and pulled into OCI
//! archives by the builder, then imported by firstboot's `images` step into a real
//! containerd (Debian's, started here with a temp root, state and socket) in the
//! `k8s.io` namespace: named by reference, with the index digest, once per role, and
//! skipped when already present. Needs root, containerd and docker-registry.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use firstboot::containerd::{import_images_with, installed_version, wait_for_socket, Ctr};
use nodeimage::fetch::{Cache, FetchOptions, ProgressMode};
use nodeimage::oci::{self, PullOptions, Registry, RegistryOptions};
use nodeimage_core::config::Role;
use nodeimage_core::images::IMAGES_DIR;
use test_support::registry::*;

struct Containerd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_containerd() -> Containerd {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let socket = t.join("containerd.sock");
    let config = t.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
[grpc]\n  address = \"{sock}\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = t.join("root").display(),
            state = t.join("state").display(),
            sock = socket.display(),
            opt = t.join("opt").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(t.join("containerd.log")).unwrap();
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let c = Containerd {
        child,
        socket,
        _dir: dir,
    };
    if let Err(e) = wait_for_socket(&c.socket, Duration::from_secs(30)) {
        let log = std::fs::read_to_string(c._dir.path().join("containerd.log")).unwrap_or_default();
        panic!("{e}\n{log}");
    }
    c
}

fn host_arch() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "aarch64" => ("aarch64", "arm64"),
        _ => ("x86_64", "amd64"),
    }
}

#[test]
fn baked_images_import_into_containerd_once() {
    let have = |b: &str| installed_version(b).ok().flatten().is_some();
    if !test_support::Needs::new("baked_images_import_into_containerd_once")
        .root()
        .tool("containerd", "containerd")
        .tool("ctr", "containerd")
        .check(
            have("containerd") && have("ctr"),
            "containerd and ctr that report a version (Debian package containerd)",
        )
        .met()
    {
        return;
    }
    let Some(reg) = TestRegistry::start() else {
        return;
    };
    let (arch, goarch) = host_arch();
    let (amd, arm, index) = push_multiarch(&reg.base(), "test/pause", "3.10.1");
    let img = if goarch == "amd64" { amd } else { arm };
    push_image(&reg.base(), "test/tool", "1", &make_image(goarch, "tool\n"));

    // Builder side: lock, pull, archives + images.json into a root tree.
    let d = tempfile::tempdir().unwrap();
    let images = format!(
        "{}{}",
        image_entry(
            "pause",
            &format!("{}/test/pause:3.10.1", reg.host()),
            "purpose = \"sandbox\"\n"
        ),
        image_entry(
            "tool",
            &format!("{}/test/tool:1", reg.host()),
            "role = \"worker\"\n"
        )
    );
    let lp =
        nodeimage::profile::load(&write_profile_toml(d.path(), "node", arch, &images)).unwrap();
    let opts = RegistryOptions {
        plain_http_registries: vec![reg.host()],
        ..Default::default()
    };
    let lf = oci::lock::lock_profile(&lp, &Registry::new(&opts).unwrap()).unwrap();
    let fetch = FetchOptions {
        progress: ProgressMode::Never,
        ..Default::default()
    };
    let out = d.path().join("out");
    let pulled = oci::pull_images(
        &lp,
        &lf,
        &Cache::new(d.path().join("cache")),
        &PullOptions {
            fetch,
            registry: opts,
            epoch: 0,
        },
        &out,
    )
    .unwrap();
    let root = d.path().join("root");
    let dir = root.join(IMAGES_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&dir).unwrap();
    for i in pulled.installs() {
        let name = Path::new(&i.dest).file_name().unwrap();
        std::fs::copy(&i.source, dir.join(name)).unwrap();
    }

    // Node side.
    let c = start_containerd();
    let version = installed_version("ctr").unwrap().unwrap();
    let ctr = Ctr {
        binary: "ctr".into(),
        address: c.socket.clone(),
        namespace: "k8s.io".into(),
        local_import: version.major >= 2,
        env: Vec::new(),
    };
    let t = std::time::Instant::now();
    let report = import_images_with(&root, Role::Worker, &ctr).unwrap();
    eprintln!(
        "import of 2 images: {} ms ({})",
        t.elapsed().as_millis(),
        report.summary()
    );
    let names: Vec<&str> = report.imported.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["pause", "tool"]);
    let listed = ctr.images().unwrap();
    let pause_ref = format!("{}/test/pause:3.10.1", reg.host());
    assert_eq!(listed.get(&pause_ref), Some(&sha256(&index)), "{listed:?}");
    assert!(
        listed.contains_key(&format!("{}/test/tool:1", reg.host())),
        "{listed:?}"
    );

    // Every baked image is pinned: containerd's CRI reports it `pinned`, and the
    // kubelet's image garbage collection leaves it alone.
    let ls = Command::new("ctr")
        .arg("-a")
        .arg(&c.socket)
        .args(["-n", "k8s.io", "images", "ls"])
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    for r in [pause_ref.clone(), format!("{}/test/tool:1", reg.host())] {
        let line = ls
            .lines()
            .find(|l| l.starts_with(&format!("{r} ")))
            .unwrap_or("");
        assert!(
            line.contains("io.cri-containerd.pinned=pinned"),
            "{r} is not pinned:\n{ls}"
        );
    }

    // The content is there for this platform: containerd can read the image config.
    let config = test_support::cmd::stdout_ok(
        "ctr content get",
        Command::new("ctr").arg("-a").arg(&c.socket).args([
            "-n",
            "k8s.io",
            "content",
            "get",
            &img.config_digest(),
        ]),
    );
    assert_eq!(config, img.config);

    // Idempotent: a second run imports nothing; a master needs only pause.
    let again = import_images_with(&root, Role::Worker, &ctr).unwrap();
    assert!(
        again.imported.is_empty() && again.present == ["pause", "tool"],
        "{again:?}"
    );
    let master = import_images_with(&root, Role::Master, &ctr).unwrap();
    assert!(
        master.imported.is_empty() && master.present == ["pause"],
        "{master:?}"
    );
}

//! A container registry for tests: Debian's `docker-registry` on 127.0.0.1 with its
//! storage in a temp dir, tiny test images made here (one layer, amd64 and arm64, and
//! an index), pushed with the distribution API's upload flow, and profile text that
//! uses them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// `docker-registry` (distribution 2.x) serving a temp dir, killed on drop.
pub struct TestRegistry {
    pub dir: tempfile::TempDir,
    pub addr: std::net::IpAddr,
    pub port: u16,
    child: Child,
}

impl TestRegistry {
    /// None (with a SKIP line; a failure under CI) when /usr/bin/docker-registry is missing.
    pub fn start() -> Option<TestRegistry> {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// [`TestRegistry::start`] listening on `addr` (e.g. a lab network's host address,
    /// so that VMs reach it too).
    pub fn start_on(addr: std::net::IpAddr) -> Option<TestRegistry> {
        if !crate::Needs::new("test registry")
            .file("/usr/bin/docker-registry", "docker-registry")
            .met()
        {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = {
                let l = std::net::TcpListener::bind((addr, 0)).unwrap();
                l.local_addr().unwrap().port()
            };
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {}\n",
                    dir.path().join("storage").display(),
                    std::net::SocketAddr::from((addr, port))
                ),
            )
            .unwrap();
            let mut child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                let probe = format!("http://{}/v2/", std::net::SocketAddr::from((addr, port)));
                if let Ok(r) = reqwest::blocking::get(probe) {
                    if r.status().is_success() {
                        return Some(TestRegistry {
                            dir,
                            addr,
                            port,
                            child,
                        });
                    }
                }
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("docker-registry did not start");
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.host())
    }

    pub fn host(&self) -> String {
        std::net::SocketAddr::from((self.addr, self.port)).to_string()
    }

    /// The file the registry keeps a blob's bytes in.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.path().join(format!(
            "storage/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One single-platform image.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub arch: String,
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl TestImage {
    pub fn manifest_digest(&self) -> String {
        sha256(&self.manifest)
    }
    pub fn layer_digest(&self) -> String {
        sha256(&self.layer)
    }
    pub fn config_digest(&self) -> String {
        sha256(&self.config)
    }
}

/// An image for `arch` (`amd64`, `arm64`) whose one layer holds /hello.txt = `text`.
pub fn make_image(arch: &str, text: &str) -> TestImage {
    let mut tar_bytes = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar_bytes);
        let mut h = tar::Header::new_ustar();
        h.set_path("hello.txt").unwrap();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1);
        h.set_cksum();
        b.append(&h, text.as_bytes()).unwrap();
        b.finish().unwrap();
    }
    let diff_id = sha256(&tar_bytes);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).unwrap();
    let layer = gz.finish().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&layer), "size": layer.len()}],
    }))
    .unwrap();
    TestImage {
        arch: arch.into(),
        layer,
        config,
        manifest,
    }
}

/// An index of `images` (linux/<arch> each).
pub fn make_index(images: &[&TestImage]) -> Vec<u8> {
    let manifests: Vec<_> = images
        .iter()
        .map(|i| {
            serde_json::json!({
                "mediaType": OCI_MANIFEST, "digest": i.manifest_digest(), "size": i.manifest.len(),
                "platform": {"architecture": i.arch, "os": "linux"}
            })
        })
        .collect();
    serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
    )
    .unwrap()
}

/// Pushes one blob: POST an upload session, PUT the bytes with ?digest=.
pub fn push_blob(base: &str, repo: &str, data: &[u8]) {
    let c = reqwest::blocking::Client::new();
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "starting an upload");
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let mut url = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(&format!("digest={}", sha256(data)));
    let r = c
        .put(url)
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        201,
        "finishing an upload: {:?}",
        r.text()
    );
}

pub fn push_manifest(base: &str, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    let r = reqwest::blocking::Client::new()
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "PUT manifest: {:?}", r.text());
}

/// Pushes a single image under `tag`.
pub fn push_image(base: &str, repo: &str, tag: &str, img: &TestImage) {
    push_blob(base, repo, &img.layer);
    push_blob(base, repo, &img.config);
    push_manifest(base, repo, tag, OCI_MANIFEST, &img.manifest);
}

/// Pushes amd64 and arm64 images and their index under `tag`; returns (amd64, arm64, index).
pub fn push_multiarch(base: &str, repo: &str, tag: &str) -> (TestImage, TestImage, Vec<u8>) {
    let amd = make_image("amd64", &format!("{repo} amd64\n"));
    let arm = make_image("arm64", &format!("{repo} arm64\n"));
    for i in [&amd, &arm] {
        push_blob(base, repo, &i.layer);
        push_blob(base, repo, &i.config);
        push_manifest(base, repo, &i.manifest_digest(), OCI_MANIFEST, &i.manifest);
    }
    let index = make_index(&[&amd, &arm]);
    push_manifest(base, repo, tag, OCI_INDEX, &index);
    (amd, arm, index)
}

/// Writes `dir/<name>.toml`: a profile for `arch` with `images` ([[image]] TOML
/// snippets, see [`image_entry`]). Returns its path.
pub fn write_profile_toml(dir: &Path, name: &str, arch: &str, images: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("name = \"{name}\"\narch = \"{arch}\"\n[debian]\nsuite = \"bookworm\"\n{images}"),
    )
    .unwrap();
    path
}

/// One `[[image]]` of a profile.
pub fn image_entry(name: &str, reference: &str, extra: &str) -> String {
    format!("[[image]]\nname = \"{name}\"\nreference = \"{reference}\"\n{extra}")
}

//! containerd on the node: its configuration for Kubernetes, and the import of the
//! container images baked into the image.
//!
//! * **Config.** containerd 2.x reads config version 3 (CRI split into
//!   `io.containerd.cri.v1.images` and `io.containerd.cri.v1.runtime`, the sandbox image
//!   under `pinned_images.sandbox`); containerd 1.6/1.7 (Debian bookworm ships 1.6.20)
//!   reads version 2 (everything under `io.containerd.grpc.v1.cri`, `sandbox_image`).
//!   The installed version is asked (`containerd --version`) and the matching schema is
//!   rendered. Both enable CRI, the systemd cgroup driver for runc, the pinned pause image
//!   and registry mirrors through `config_path` + one `hosts.toml` per registry. Both
//!   files are typed values serialized with the `toml` crate.
//! * **Images.** `nodeimage build` puts each pinned image as an OCI image-layout archive
//!   under [`IMAGES_DIR`] with an index, [`IMAGES_INDEX`] ([`BakedImages`]). The `images`
//!   step imports those this node's role needs into containerd's `k8s.io` namespace
//!   (the one the CRI plugin and so the kubelet use), skipping any already present with
//!   the same digest.
//!
//! The types of `images.json` live here because both programs use them: `nodeimage`
//! writes the file, `firstboot` reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::systemd;
use nodeimage_core::config::{NodeConfig, Role};
use nodeimage_core::files::rooted;
use nodeimage_core::images::{BakedImage, BakedImages, IMAGES_DIR};
use nodeimage_core::retry::{wait_until, Backoff, Deadline, Poll};

mod render;

pub use render::{registry_server, render_config, render_hosts};

/// containerd's configuration file.
pub const CONFIG_PATH: &str = "/etc/containerd/config.toml";
/// The registry hosts directory (`config_path`): `<dir>/<registry>/hosts.toml`.
pub const CERTS_DIR: &str = "/etc/containerd/certs.d";
/// containerd's gRPC socket.
pub const SOCKET: &str = "/run/containerd/containerd.sock";
/// The containerd namespace the CRI plugin uses.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// The image label containerd's CRI reports as `pinned`: image GC leaves such images.
pub const PINNED_LABEL: &str = "io.cri-containerd.pinned";
/// First line of every file this module writes: marks files it may replace or remove.
const MARKER: &str = "# Written by firstboot (nodeimage); changes are overwritten.";
/// How long to wait for containerd's socket after (re)starting it.
const SOCKET_WAIT: Duration = Duration::from_secs(90);

// ------------------------------------------------------------------ config ---

/// containerd's config file schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSchema {
    /// `version = 2`: containerd 1.x (Debian bookworm's 1.6.20).
    V2,
    /// `version = 3`: containerd 2.x (the profiles' pinned 2.2.1).
    V3,
}

impl ConfigSchema {
    pub fn for_version(v: &ContainerdVersion) -> ConfigSchema {
        if v.major >= 2 {
            ConfigSchema::V3
        } else {
            ConfigSchema::V2
        }
    }
    pub fn number(self) -> u32 {
        match self {
            ConfigSchema::V2 => 2,
            ConfigSchema::V3 => 3,
        }
    }
}

/// A containerd (or ctr) version, from `--version` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for ContainerdVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Parses `containerd --version` / `ctr --version` output, e.g.
/// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3` or
/// `containerd github.com/containerd/containerd/v2 v2.2.1 <commit>`: the first word that
/// looks like `[v]MAJOR.MINOR[.PATCH]`.
pub fn parse_version(output: &str) -> Option<ContainerdVersion> {
    output.split_whitespace().find_map(|w| {
        let w = w.strip_prefix('v').unwrap_or(w);
        let end = w
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(w.len());
        let mut it = w[..end].split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        let patch = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(ContainerdVersion {
            major,
            minor,
            patch,
        })
    })
}

/// Runs `<binary> --version`; `None` when the binary is not installed.
pub fn installed_version(binary: &str) -> Result<Option<ContainerdVersion>> {
    let out = match Command::new(binary).arg("--version").output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("running {binary} --version")),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    parse_version(&text)
        .map(Some)
        .with_context(|| format!("{binary} --version printed no version: {}", text.trim()))
}

/// What the config says, whatever the schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerdSettings {
    /// The sandbox (pause) image; containerd's built-in default when `None`.
    pub sandbox_image: Option<String>,
    /// The registry hosts directory; always set so mirrors can be added without a restart.
    pub config_path: String,
}

impl ContainerdSettings {
    pub fn new(sandbox_image: Option<String>) -> Self {
        ContainerdSettings {
            sandbox_image,
            config_path: CERTS_DIR.to_string(),
        }
    }
}

/// A registry host usable as a directory name under certs.d (`host` or `host:port`).
fn valid_registry_dir(host: &str) -> bool {
    !host.is_empty()
        && host != "."
        && host != ".."
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:_[]".contains(c))
}

/// Writes `content` unless the file already holds it; true when it changed.
fn write_if_changed(path: &Path, content: &str, mode: u32) -> Result<bool> {
    nodeimage_core::files::write_if_changed(path, content.as_bytes(), mode)
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes config.toml and the hosts.toml files for `schema` under `root`. Returns
/// whether anything changed and a one-line summary.
pub fn write_config_for(
    root: &Path,
    config: &NodeConfig,
    schema: ConfigSchema,
) -> Result<(bool, String)> {
    let baked = BakedImages::load(root)?;
    let sandbox = baked
        .as_ref()
        .and_then(|b| b.sandbox())
        .map(|i| i.reference.clone());
    let settings = ContainerdSettings::new(sandbox.clone());
    let mut changed = write_if_changed(
        &rooted(root, CONFIG_PATH),
        &render_config(&settings, schema),
        0o644,
    )?;

    let certs = rooted(root, &settings.config_path);
    for (host, mirrors) in &config.cluster.registry_mirrors {
        if !valid_registry_dir(host) {
            bail!("cluster.registry_mirrors: `{host}` is not a registry host (expected host or host:port)");
        }
        changed |= write_if_changed(
            &certs.join(host).join("hosts.toml"),
            &render_hosts(host, mirrors),
            0o644,
        )?;
    }
    // Mirrors removed from the config: remove the hosts.toml files we wrote for them.
    if let Ok(dir) = std::fs::read_dir(&certs) {
        for e in dir.flatten() {
            let host = e.file_name().to_string_lossy().into_owned();
            let file = e.path().join("hosts.toml");
            if !config.cluster.registry_mirrors.contains_key(&host)
                && std::fs::read_to_string(&file).is_ok_and(|t| t.starts_with(MARKER))
            {
                std::fs::remove_file(&file)
                    .with_context(|| format!("removing {}", file.display()))?;
                let _ = std::fs::remove_dir(e.path());
                changed = true;
            }
        }
    }
    let summary = format!(
        "config version {}, sandbox {}, {} registry mirror host(s){}",
        schema.number(),
        sandbox.as_deref().unwrap_or("(containerd default)"),
        config.cluster.registry_mirrors.len(),
        if changed { "" } else { ", unchanged" }
    );
    Ok((changed, summary))
}

/// The `containerd-config` step. On a live node the installed containerd's version
/// picks the schema, and containerd is restarted when the config changed; under a root
/// prefix (tests, image inspection) version 3 (the profiles' pinned containerd 2.x) is
/// written and nothing is restarted.
pub fn write_config(root: &Path, config: &NodeConfig, live: bool) -> Result<String> {
    if !live {
        let (_, summary) = write_config_for(root, config, ConfigSchema::V3)?;
        return Ok(summary);
    }
    let Some(version) = installed_version("containerd")? else {
        return Ok("containerd is not installed; nothing to configure".into());
    };
    let schema = ConfigSchema::for_version(&version);
    let (changed, summary) = write_config_for(root, config, schema)?;
    if changed {
        systemd::restart("containerd")?;
        wait_for_socket(Path::new(SOCKET), SOCKET_WAIT)?;
    }
    Ok(format!(
        "containerd {version}: {summary}{}",
        if changed { ", restarted" } else { "" }
    ))
}

/// Waits until something accepts connections on the unix socket `path`.
pub fn wait_for_socket(path: &Path, timeout: Duration) -> Result<()> {
    let up = wait_until(
        &Deadline::after(timeout),
        &mut Backoff::constant(Duration::from_millis(200)),
        |_| match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Poll::Ready(()),
            Err(e) => Poll::Pending(e),
        },
    );
    if up.is_err() {
        bail!(
            "containerd's socket {} did not come up within {} s",
            path.display(),
            timeout.as_secs()
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ import ---

/// How to reach containerd with `ctr`.
#[derive(Debug, Clone)]
pub struct Ctr {
    /// The `ctr` binary.
    pub binary: PathBuf,
    /// containerd's socket (`ctr -a`).
    pub address: PathBuf,
    /// The namespace (`ctr -n`), `k8s.io` for the kubelet.
    pub namespace: String,
    /// Pass `--local` to `images import`: containerd 2.x's ctr imports through the
    /// Transfer API by default, which has had import bugs; `--local` keeps the classic
    /// client-side import that 1.x always uses (1.6's ctr has no such flag).
    pub local_import: bool,
    /// Extra environment for ctr (e.g. `CONTAINERD_SNAPSHOTTER`).
    pub env: Vec<(String, String)>,
}

impl Ctr {
    /// The node's ctr: `ctr` on PATH, the system socket, `k8s.io`.
    pub fn system() -> Result<Ctr> {
        let version =
            installed_version("ctr")?.context("ctr is not installed (it comes with containerd)")?;
        Ok(Ctr {
            binary: "ctr".into(),
            address: SOCKET.into(),
            namespace: K8S_NAMESPACE.into(),
            local_import: version.major >= 2,
            env: Vec::new(),
        })
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("-a")
            .arg(&self.address)
            .arg("-n")
            .arg(&self.namespace);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&std::ffi::OsStr]) -> Result<String> {
        let mut c = self.command();
        c.args(args);
        let out = c
            .output()
            .with_context(|| format!("running {}", self.binary.display()))?;
        if !out.status.success() {
            let shown: Vec<String> = args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            bail!(
                "ctr {}: {}",
                shown.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Image name -> target digest, from `ctr images ls`.
    pub fn images(&self) -> Result<BTreeMap<String, String>> {
        let out = self.run(&["images".as_ref(), "ls".as_ref()])?;
        Ok(parse_images_ls(&out))
    }

    /// Set `key=value` on an image (`ctr images label`); idempotent.
    pub fn label(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let kv = format!("{key}={value}");
        self.run(&[
            "images".as_ref(),
            "label".as_ref(),
            name.as_ref(),
            kv.as_ref(),
        ])
        .map(|_| ())
    }

    /// `ctr images import` of one archive, for one platform.
    pub fn import(&self, archive: &Path, platform: &str) -> Result<()> {
        let mut args: Vec<&std::ffi::OsStr> = vec!["images".as_ref(), "import".as_ref()];
        if self.local_import {
            args.push("--local".as_ref());
        }
        args.push("--platform".as_ref());
        args.push(platform.as_ref());
        args.push(archive.as_os_str());
        self.run(&args).map(|_| ())
    }
}

/// Parses `ctr images ls` (columns REF TYPE DIGEST SIZE PLATFORMS LABELS).
pub fn parse_images_ls(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?;
            let _type = w.next()?;
            let digest = w.next()?;
            (name != "REF" && digest.starts_with("sha256:"))
                .then(|| (name.to_string(), digest.to_string()))
        })
        .collect()
}

/// What an import did.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    /// (image name, milliseconds) of each image imported.
    pub imported: Vec<(String, u128)>,
    /// Names of images already present with the same digest.
    pub present: Vec<String>,
}

impl ImportReport {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} imported, {} already present",
            self.imported.len(),
            self.present.len()
        );
        if !self.imported.is_empty() {
            let times: Vec<String> = self
                .imported
                .iter()
                .map(|(n, ms)| format!("{n} {ms} ms"))
                .collect();
            s.push_str(&format!(" ({})", times.join(", ")));
        }
        s
    }
}

/// Imports the baked images `role` needs through `ctr`, skipping those present with the
/// same digest, then checks each is listed with its digest.
pub fn import_images_with(root: &Path, role: Role, ctr: &Ctr) -> Result<ImportReport> {
    let mut report = ImportReport {
        imported: Vec::new(),
        present: Vec::new(),
    };
    let Some(baked) = BakedImages::load(root)? else {
        return Ok(report);
    };
    let dir = rooted(root, IMAGES_DIR);
    let wanted: Vec<&BakedImage> = baked.for_role(role).collect();
    if wanted.is_empty() {
        return Ok(report);
    }
    let have = ctr.images()?;
    for img in &wanted {
        if have.get(&img.reference) == Some(&img.digest) {
            tracing::info!(image = %img.name, reference = %img.reference, "already present");
            report.present.push(img.name.clone());
            continue;
        }
        let archive = dir.join(&img.file);
        let t = Instant::now();
        ctr.import(&archive, &img.platform).with_context(|| {
            format!(
                "importing image `{}` ({}) from {}",
                img.name,
                img.reference,
                archive.display()
            )
        })?;
        let ms = t.elapsed().as_millis();
        tracing::info!(image = %img.name, reference = %img.reference, ms = ms as u64, "imported");
        report.imported.push((img.name.clone(), ms));
    }
    // Baked images are pinned in containerd's CRI: the kubelet's image garbage collection
    // never removes them (an air-gapped node could not pull them back).
    for img in &wanted {
        ctr.label(&img.reference, PINNED_LABEL, "pinned")
            .with_context(|| format!("pinning image `{}` ({})", img.name, img.reference))?;
    }
    if !report.imported.is_empty() {
        let have = ctr.images()?;
        for img in &wanted {
            match have.get(&img.reference) {
                Some(d) if *d == img.digest => {}
                Some(d) => bail!(
                    "after import, {} has digest {d}, expected {}",
                    img.reference,
                    img.digest
                ),
                None => bail!("after import, containerd does not list {}", img.reference),
            }
        }
    }
    Ok(report)
}

/// The `images` step: import the baked images this node's role needs into containerd's
/// `k8s.io` namespace before the kubelet starts. Under a root prefix (not live) it only
/// checks that every archive the role needs is there.
pub fn import_images(root: &Path, live: bool, role: Role) -> Result<String> {
    let Some(baked) = BakedImages::load(root)? else {
        return Ok("no baked images".into());
    };
    if !live {
        let dir = rooted(root, IMAGES_DIR);
        let mut n = 0;
        for img in baked.for_role(role) {
            let p = dir.join(&img.file);
            if !p.is_file() {
                bail!("image `{}`: {} is missing", img.name, p.display());
            }
            n += 1;
        }
        return Ok(format!(
            "{n} image archive(s) for {role} present (not live: nothing imported)"
        ));
    }
    let socket = Path::new(SOCKET);
    if std::os::unix::net::UnixStream::connect(socket).is_err() {
        systemd::start("containerd")?;
        wait_for_socket(socket, SOCKET_WAIT)?;
    }
    let report = import_images_with(root, role, &Ctr::system()?)?;
    Ok(report.summary())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = parse_version(
            "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3",
        )
        .unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 6, 20));
        assert_eq!(ConfigSchema::for_version(&v), ConfigSchema::V2);
        let v = parse_version("containerd github.com/containerd/containerd/v2 v2.2.1 dea7da592f5d1d2b7755e3a161be07f43fad8f75").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (2, 2, 1));
        assert_eq!(ConfigSchema::for_version(&v), ConfigSchema::V3);
        assert_eq!(
            parse_version("ctr github.com/containerd/containerd v1.7.24")
                .unwrap()
                .to_string(),
            "1.7.24"
        );
        assert!(parse_version("no version here").is_none());
    }

    #[test]
    fn images_ls() {
        let out = "REF TYPE DIGEST SIZE PLATFORMS LABELS\n\
registry.k8s.io/pause:3.10.1 application/vnd.oci.image.index.v1+json sha256:aaaa 300.0 KiB linux/amd64 -\n";
        let m = parse_images_ls(out);
        assert_eq!(m.len(), 1);
        assert_eq!(m["registry.k8s.io/pause:3.10.1"], "sha256:aaaa");
    }
}

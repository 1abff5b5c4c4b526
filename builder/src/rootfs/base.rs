//! The Debian base: the packages every image needs, the mirror, the spec that names the
//! cached tarball, and mmdebstrap (with binfmt for foreign architectures).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::profile::{Arch, LoadedProfile};
use crate::tools;

/// Packages every node image needs, whatever the profile says: the kernel, systemd as
/// init, the initramfs (which sets up the state partition and the /etc overlay), the
/// bootloader files, and what firstboot calls.
pub fn required_packages(arch: Arch) -> Vec<String> {
    let mut p: Vec<String> = [
        "systemd",
        "systemd-sysv",
        // DNS resolvers from DHCP or the platform (networkd hands them over); the
        // image's /etc/resolv.conf is its stub resolver, never the build machine's.
        "systemd-resolved",
        "udev",
        "dbus",
        "systemd-boot-efi",
        "initramfs-tools",
        "e2fsprogs",
        "kmod",
        "netbase",
        "iproute2",
        "nftables",
        "ca-certificates",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    p.push(format!("linux-image-{}", arch.debian()));
    p
}

/// dpkg path excludes: documentation and translations are dead weight on a node.
const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
];

/// The Debian mirror: the profile's, else the first `URIs:`/`deb` entry of the build
/// machine's apt sources that serves Debian's main archive.
pub fn resolve_mirror(profile_mirror: Option<&str>) -> Result<String> {
    if let Some(m) = profile_mirror {
        return Ok(m.to_string());
    }
    let mut candidates = Vec::new();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "sources"))
        {
            let text = fs::read_to_string(&f).unwrap_or_default();
            for stanza in text.split("\n\n") {
                let field = |k: &str| {
                    stanza
                        .lines()
                        .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                };
                if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) {
                    if !suites.split_whitespace().any(|s| s.ends_with("-security")) {
                        candidates.extend(uris.split_whitespace().map(str::to_string));
                    }
                }
            }
        }
    }
    for line in fs::read_to_string("/etc/apt/sources.list")
        .unwrap_or_default()
        .lines()
    {
        let mut w = line.split_whitespace().filter(|w| !w.starts_with('['));
        if w.next() == Some("deb") {
            if let (Some(uri), Some(suite)) = (w.next(), w.next()) {
                if !suite.ends_with("-security") {
                    candidates.push(uri.to_string());
                }
            }
        }
    }
    candidates
        .into_iter()
        .find(|u| u.trim_end_matches('/').ends_with("/debian"))
        .context("the profile names no debian.mirror and the build machine's apt sources list no Debian archive; set debian.mirror in the profile")
}

/// Everything that determines the Debian base; its hash names the cached tarball.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BaseSpec {
    pub suite: String,
    pub mirror: String,
    pub arch: String,
    pub variant: String,
    pub components: Vec<String>,
    pub packages: Vec<String>,
    pub source_date_epoch: i64,
}

impl BaseSpec {
    pub fn new(p: &LoadedProfile, mirror: String, epoch: i64) -> Self {
        let d = &p.profile.debian;
        let mut packages: Vec<String> = required_packages(p.profile.arch);
        packages.extend(d.packages.iter().cloned());
        packages.sort();
        packages.dedup();
        BaseSpec {
            suite: d.suite.clone(),
            mirror,
            arch: p.profile.arch.debian().to_string(),
            variant: d.variant.clone(),
            components: d.components.clone(),
            packages,
            source_date_epoch: epoch,
        }
    }

    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"nodeimage-base-v1\0");
        h.update(serde_json::to_vec(self).expect("serialisable"));
        h.update(DPKG_EXCLUDES.join("\n"));
        hex::encode(h.finalize())
    }
}

/// The Debian base tarball and the sha256 of its bytes (what later stages are keyed by:
/// a base rebuilt from the same spec on another day holds other package versions).
#[derive(Debug, Clone)]
pub struct BaseTar {
    pub path: PathBuf,
    pub sha256: String,
}

impl BaseTar {
    /// `path` with its digest, from the `<path>.sha256` sidecar written when the base was
    /// built (computed and written now when it is missing).
    fn open(path: PathBuf) -> Result<BaseTar> {
        let mut side = path.as_os_str().to_owned();
        side.push(".sha256");
        let side = PathBuf::from(side);
        if let Ok(s) = fs::read_to_string(&side) {
            let s = s.trim();
            if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(BaseTar {
                    path,
                    sha256: s.to_string(),
                });
            }
        }
        let mut f = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
        let sha256 = hex::encode(h.finalize());
        nodeimage_core::files::atomic_write(&side, format!("{sha256}\n").as_bytes(), 0o644)
            .with_context(|| format!("writing {}", side.display()))?;
        Ok(BaseTar { path, sha256 })
    }
}

/// Build (or take from the cache) the Debian base as a tarball.
pub fn debian_base(spec: &BaseSpec, cache_dir: &Path) -> Result<BaseTar> {
    let dir = cache_dir.join("rootfs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(format!("{}-{}.tar", spec.arch, &spec.key()[..32]));
    if out.exists() {
        tracing::info!(path = %out.display(), "debian base from cache");
        return BaseTar::open(out);
    }
    tools::require(&[tools::MMDEBSTRAP])?;
    if spec.arch != host_debian_arch() {
        ensure_binfmt(spec)?;
    }
    let tmp = out.with_extension("tar.tmp");
    if tmp.is_dir() {
        fs::remove_dir_all(&tmp)?;
    } else {
        let _ = fs::remove_file(&tmp);
    }
    let mode = if unsafe { libc::geteuid() } == 0 {
        "root"
    } else {
        "unshare"
    };
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(format!("--mode={mode}"))
        .arg(format!("--variant={}", spec.variant))
        .arg(format!("--architectures={}", spec.arch))
        .arg(format!("--components={}", spec.components.join(",")))
        .arg("--format=tar")
        .arg(format!("--include={}", spec.packages.join(",")))
        .args(DPKG_EXCLUDES.iter().map(|e| format!("--dpkgopt={e}")))
        .arg("--quiet")
        .arg(&spec.suite)
        .arg(&tmp)
        .arg(&spec.mirror)
        .env("SOURCE_DATE_EPOCH", spec.source_date_epoch.to_string());
    let started = std::time::Instant::now();
    tracing::info!(suite = %spec.suite, arch = %spec.arch, mirror = %spec.mirror, packages = spec.packages.len(), mode, "building debian base with mmdebstrap");
    tools::run(&mut cmd).context("mmdebstrap could not build the Debian base")?;
    // Durable before it gets the name later builds trust: the file, then the rename.
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    fs::rename(&tmp, &out)?;
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    tracing::info!(seconds = started.elapsed().as_secs(), path = %out.display(), "debian base built");
    BaseTar::open(out)
}

fn host_debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

/// Foreign-arch bases run maintainer scripts through qemu-user; make sure binfmt_misc is
/// mounted and the interpreter registered (PID 1 may not be systemd on build machines).
fn ensure_binfmt(spec: &BaseSpec) -> Result<()> {
    let entry = match spec.arch.as_str() {
        "arm64" => "qemu-aarch64",
        other => bail!("building {other} images on this machine is not supported"),
    };
    let status = Path::new("/proc/sys/fs/binfmt_misc/status");
    if !status.exists() {
        let _ = tools::run(Command::new("mount").args([
            "-t",
            "binfmt_misc",
            "binfmt_misc",
            "/proc/sys/fs/binfmt_misc",
        ]));
    }
    if !Path::new("/proc/sys/fs/binfmt_misc").join(entry).exists() {
        tools::require(&[tools::QEMU_USER_AARCH64])?;
        let _ = tools::run(Command::new("update-binfmts").args(["--enable", entry]));
    }
    if !Path::new("/proc/sys/fs/binfmt_misc").join(entry).exists() {
        bail!("binfmt_misc has no {entry} entry: install qemu-user-static and binfmt-support, then run `update-binfmts --enable {entry}`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_key_changes_with_packages() {
        let mk = |pk: &[&str]| BaseSpec {
            suite: "bookworm".into(),
            mirror: "http://m/debian".into(),
            arch: "amd64".into(),
            variant: "minbase".into(),
            components: vec!["main".into()],
            packages: pk.iter().map(|s| s.to_string()).collect(),
            source_date_epoch: 1,
        };
        assert_eq!(mk(&["a"]).key(), mk(&["a"]).key());
        assert_ne!(mk(&["a"]).key(), mk(&["a", "b"]).key());
    }
}

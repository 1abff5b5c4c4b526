//! The root filesystem: a Debian base from mmdebstrap (cached by its inputs), then the
//! pinned artifacts, the overlays and the firstboot binary, a regenerated initramfs, and
//! finally a read-only erofs image.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
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

/// Build (or take from the cache) the Debian base as a tarball.
pub fn debian_base(spec: &BaseSpec, cache_dir: &Path) -> Result<PathBuf> {
    let dir = cache_dir.join("rootfs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(format!("{}-{}.tar", spec.arch, &spec.key()[..32]));
    if out.exists() {
        tracing::info!(path = %out.display(), "debian base from cache");
        return Ok(out);
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
    fs::rename(&tmp, &out)?;
    tracing::info!(seconds = started.elapsed().as_secs(), path = %out.display(), "debian base built");
    Ok(out)
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

/// A file to put into the root filesystem.
#[derive(Debug, Clone)]
pub struct Install {
    pub source: PathBuf,
    /// Absolute path inside the image.
    pub dest: String,
    pub mode: u32,
}

/// Result of customising the root filesystem.
#[derive(Debug)]
pub struct Customized {
    /// Debian packages: name -> version (architecture-qualified names for foreign ones).
    pub packages: BTreeMap<String, String>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_version: String,
}

/// Unpack the base into `root`, add payload, overlays and firstboot, regenerate the
/// initramfs and take kernel and initrd out into `boot_dir`.
pub fn customize(
    base_tar: &Path,
    root: &Path,
    boot_dir: &Path,
    installs: &[Install],
    overlays: &[PathBuf],
    enable_units: &[&str],
    epoch: i64,
) -> Result<Customized> {
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing stale {}", root.display()))?;
    }
    fs::create_dir_all(root)?;
    tools::run(
        Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(base_tar)
            .arg("-C")
            .arg(root),
    )
    .context("unpacking the Debian base")?;

    for i in installs {
        let dest = nodeimage_core::files::rooted(root, &i.dest);
        fs::create_dir_all(dest.parent().unwrap())?;
        fs::copy(&i.source, &dest)
            .with_context(|| format!("installing {} to {}", i.source.display(), i.dest))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(i.mode))?;
    }
    for o in overlays {
        copy_tree(o, root).with_context(|| format!("applying overlay {}", o.display()))?;
    }
    if !enable_units.is_empty() {
        tools::run(
            Command::new("systemctl")
                .arg(format!("--root={}", root.display()))
                .arg("enable")
                .args(enable_units),
        )
        .context("enabling systemd units")?;
    }

    let kernel_version = kernel_version(root)?;
    {
        let _mounts = ChrootMounts::new(root)?;
        tools::run(
            Command::new("chroot")
                .arg(root)
                .args(["update-initramfs", "-u", "-k", &kernel_version])
                .env("SOURCE_DATE_EPOCH", epoch.to_string())
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        )
        .context("regenerating the initramfs")?;
    }

    fs::create_dir_all(boot_dir)?;
    let kernel = boot_dir.join("vmlinuz");
    let initrd = boot_dir.join("initrd.img");
    fs::copy(root.join(format!("boot/vmlinuz-{kernel_version}")), &kernel)?;
    fs::copy(
        root.join(format!("boot/initrd.img-{kernel_version}")),
        &initrd,
    )?;
    // The ESP carries kernel and initrd; the read-only root does not need a second copy.
    for e in fs::read_dir(root.join("boot"))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("initrd.img") || n.starts_with("vmlinuz") || n.starts_with("System.map") {
            fs::remove_file(e.path())?;
        }
    }
    for f in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        let _ = fs::remove_file(root.join(f));
    }

    let packages = installed_packages(root)?;
    scrub(root)?;
    Ok(Customized {
        packages,
        kernel,
        initrd,
        kernel_version,
    })
}

fn kernel_version(root: &Path) -> Result<String> {
    let mut v: Vec<String> = fs::read_dir(root.join("lib/modules"))
        .context("the base has no /lib/modules: is the linux-image package installed?")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    match v.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("the base has no kernel in /lib/modules"),
        many => bail!(
            "the base has several kernels ({}); pin one",
            many.join(", ")
        ),
    }
}

/// Package name -> version, read from the image's dpkg database without running anything in it.
pub fn installed_packages(root: &Path) -> Result<BTreeMap<String, String>> {
    let out = tools::output(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args([
                "-W",
                "-f",
                "${db:Status-Abbrev}\t${binary:Package}\t${Version}\n",
            ]),
    )?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (status, name, version) = (f.next()?, f.next()?, f.next()?);
            status
                .starts_with("ii")
                .then(|| (name.to_string(), version.to_string()))
        })
        .collect())
}

/// Remove what differs between builds or has no place in an immutable image.
fn scrub(root: &Path) -> Result<()> {
    for dir in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "var/log",
        "tmp",
        "var/tmp",
        "var/cache/debconf",
    ] {
        let d = root.join(dir);
        if let Ok(entries) = fs::read_dir(&d) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    fs::remove_dir_all(&p)?;
                } else {
                    fs::remove_file(&p)?;
                }
            }
        }
    }
    for f in [
        "var/cache/ldconfig/aux-cache",
        "etc/.pwd.lock",
        "var/lib/dbus/machine-id",
    ] {
        let _ = fs::remove_file(root.join(f));
    }
    // Empty machine-id: systemd generates one on first boot and commits it to the
    // writable /etc overlay.
    fs::write(root.join("etc/machine-id"), b"")?;
    Ok(())
}

/// Copy a directory tree over another, preserving modes and symlinks; files end up owned by root.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(src)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let s = e.path();
        let d = dst.join(e.file_name());
        let meta = fs::symlink_metadata(&s)?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&s)?;
            if fs::symlink_metadata(&d).is_ok() {
                if d.is_dir() && !d.is_symlink() {
                    fs::remove_dir_all(&d)?;
                } else {
                    fs::remove_file(&d)?;
                }
            }
            std::os::unix::fs::symlink(&target, &d)?;
        } else if meta.is_dir() {
            if fs::symlink_metadata(&d)
                .map(|m| !m.is_dir())
                .unwrap_or(false)
            {
                fs::remove_file(&d)?;
            }
            fs::create_dir_all(&d)?;
            fs::set_permissions(
                &d,
                fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
            )?;
            copy_tree(&s, &d)?;
        } else {
            if fs::symlink_metadata(&d)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false)
            {
                fs::remove_file(&d)?;
            }
            fs::copy(&s, &d)?;
            fs::set_permissions(
                &d,
                fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
            )?;
            std::os::unix::fs::lchown(&d, Some(0), Some(0)).ok();
        }
    }
    Ok(())
}

/// /proc, /sys and /dev mounted into a chroot for the duration of a command.
struct ChrootMounts {
    mounted: Vec<PathBuf>,
}

impl ChrootMounts {
    fn new(root: &Path) -> Result<Self> {
        let mut m = ChrootMounts {
            mounted: Vec::new(),
        };
        for (fstype, src, dir, bind) in [
            ("proc", "proc", "proc", false),
            ("sysfs", "sysfs", "sys", false),
            ("", "/dev", "dev", true),
        ] {
            let target = root.join(dir);
            fs::create_dir_all(&target)?;
            let mut cmd = Command::new("mount");
            if bind {
                cmd.args(["--bind", src]).arg(&target);
            } else {
                cmd.args(["-t", fstype, src]).arg(&target);
            }
            tools::run(&mut cmd).with_context(|| format!("mounting {dir} into the image root"))?;
            m.mounted.push(target);
        }
        Ok(m)
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        for t in self.mounted.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(t).status();
        }
    }
}

/// Make the read-only root filesystem: erofs, lz4hc-compressed, every timestamp and the
/// UUID fixed so the same tree gives the same bytes.
pub fn make_erofs(root: &Path, out: &Path, uuid: &uuid::Uuid, epoch: i64) -> Result<()> {
    tools::require(&[tools::MKFS_EROFS])?;
    let _ = fs::remove_file(out);
    tools::run(
        Command::new("mkfs.erofs")
            .arg("-zlz4hc")
            .arg(format!("-T{epoch}"))
            .arg(format!("-U{uuid}"))
            .arg("--quiet")
            .arg(out)
            .arg(root),
    )
    .context("mkfs.erofs could not build the root filesystem")
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

    #[test]
    fn copy_tree_preserves_modes_and_symlinks() {
        let s = tempfile::tempdir().unwrap();
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(s.path().join("etc/x")).unwrap();
        fs::write(s.path().join("etc/x/run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            s.path().join("etc/x/run.sh"),
            fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::os::unix::fs::symlink("/run/foo", s.path().join("etc/link")).unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/link"), "old").unwrap();
        copy_tree(s.path(), d.path()).unwrap();
        assert_eq!(
            fs::metadata(d.path().join("etc/x/run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o750
        );
        assert_eq!(
            fs::read_link(d.path().join("etc/link")).unwrap(),
            PathBuf::from("/run/foo")
        );
    }
}

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
    remove_tree(root).with_context(|| format!("removing stale {}", root.display()))?;
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
        install_file(root, i)
            .with_context(|| format!("installing {} to {}", i.source.display(), i.dest))?;
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

/// Put `i.source` at `i.dest` inside `root` without writing outside it, whatever links
/// the image holds (we run as root, and the base's links are absolute: alternatives,
/// `/var/run -> /run`): the parent directories are resolved inside `root` (see
/// [`resolve_in_root`]) and a symlink at the destination is replaced by the file, never
/// written through.
fn install_file(root: &Path, i: &Install) -> Result<()> {
    let rel = i.dest.trim_start_matches('/');
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    };
    if name.is_empty() || name == "." || name == ".." {
        bail!("`{}` does not name a file", i.dest);
    }
    let dir = resolve_in_root(root, Path::new(parent))?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dest = dir.join(name);
    match fs::symlink_metadata(&dest) {
        Ok(m) if m.file_type().is_symlink() => fs::remove_file(&dest)
            .with_context(|| format!("replacing the link {}", dest.display()))?,
        Ok(m) if m.is_dir() => bail!("{} is a directory in the image", i.dest),
        _ => {}
    }
    fs::copy(&i.source, &dest)?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(i.mode))?;
    Ok(())
}

/// The host path of `path` (relative to the image root) with every symlink in it
/// followed the way it would be inside the image: an absolute target starts again at
/// `root`, `..` never climbs above it. Components that do not exist yet are kept as
/// they are (the caller creates them as directories).
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    use std::collections::VecDeque;
    use std::path::Component;
    // The names and `..`s of a path (`/` and `.` say nothing inside the root).
    let steps = |p: &Path| -> VecDeque<std::ffi::OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    };
    let mut todo = steps(path);
    let mut done: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            done.pop();
            continue;
        }
        let here: PathBuf = root.join(done.iter().collect::<PathBuf>()).join(&c);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    bail!("too many levels of symbolic links at {}", here.display());
                }
                let target = fs::read_link(&here)?;
                if target.is_absolute() {
                    done.clear();
                }
                let mut next = steps(&target);
                next.extend(todo);
                todo = next;
            }
            Ok(m) if !m.is_dir() => bail!("{} is not a directory", here.display()),
            _ => done.push(c),
        }
    }
    Ok(root.join(done.iter().collect::<PathBuf>()))
}

/// Remove a file or directory tree, first unmounting anything mounted below it (a build
/// killed during the initramfs step leaves /proc, /sys and a bind mount of the host's
/// /dev in its root tree; removing through them would delete the host's device nodes).
/// A missing path is not an error.
pub fn remove_tree(path: &Path) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.is_dir() {
        return fs::remove_file(path).with_context(|| format!("removing {}", path.display()));
    }
    let canon = fs::canonicalize(path)?;
    let mounted = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .map(|m| PathBuf::from(unescape_mount_path(m)))
            .filter(|m| m.starts_with(&canon))
            .collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        v
    };
    for m in mounted() {
        tracing::warn!(mount = %m.display(), "unmounting a leftover mount before removing the tree");
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    if let Some(m) = mounted().first() {
        bail!(
            "{} is still mounted; not removing {}",
            m.display(),
            path.display()
        );
    }
    fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
}

/// `/proc/self/mounts` writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

    /// Installing as root into an image root must never write through the image's links
    /// onto the build machine: absolute links are resolved inside the root, and a link at
    /// the destination is replaced by the file.
    #[test]
    fn installs_do_not_follow_links_out_of_the_root() {
        let host = tempfile::tempdir().unwrap();
        let victim = host.path().join("victim");
        fs::write(&victim, "host file").unwrap();
        fs::create_dir_all(host.path().join("run")).unwrap();
        let root_dir = tempfile::tempdir().unwrap();
        let root = root_dir.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("var")).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("usr/bin/awk")).unwrap();
        std::os::unix::fs::symlink(host.path().join("run"), root.join("var/run")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        let src = root_dir.path().join("payload");
        fs::write(&src, "payload").unwrap();
        for dest in ["/usr/bin/awk", "/var/run/app/sock", "/bin/tool"] {
            install_file(
                root,
                &Install {
                    source: src.clone(),
                    dest: dest.into(),
                    mode: 0o755,
                },
            )
            .unwrap();
        }
        assert_eq!(fs::read_to_string(&victim).unwrap(), "host file");
        assert_eq!(fs::read_dir(host.path().join("run")).unwrap().count(), 0);
        let awk = root.join("usr/bin/awk");
        assert!(!fs::symlink_metadata(&awk).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(&awk).unwrap(), "payload");
        // `/var/run -> <host>/run` means `<root><host>/run` inside the image.
        let inside = root
            .join(host.path().strip_prefix("/").unwrap())
            .join("run/app/sock");
        assert_eq!(fs::read_to_string(inside).unwrap(), "payload");
        assert_eq!(
            fs::read_to_string(root.join("usr/bin/tool")).unwrap(),
            "payload"
        );
        assert_eq!(
            fs::metadata(root.join("usr/bin/tool"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o755
        );
    }

    #[test]
    fn resolve_in_root_never_climbs_above_the_root() {
        let r = tempfile::tempdir().unwrap();
        let root = r.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("a/b/up")).unwrap();
        std::os::unix::fs::symlink("/a", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("a/b/up/etc")).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("abs/b/new")).unwrap(),
            root.join("a/b/new")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("../../x")).unwrap(),
            root.join("x")
        );
        assert!(resolve_in_root(root, Path::new("loop/x")).is_err());
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn remove_tree_removes_files_dirs_and_missing_paths() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("t/x/y")).unwrap();
        fs::write(d.path().join("t/x/y/f"), "1").unwrap();
        fs::write(d.path().join("f"), "1").unwrap();
        remove_tree(&d.path().join("t")).unwrap();
        remove_tree(&d.path().join("f")).unwrap();
        remove_tree(&d.path().join("missing")).unwrap();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }
}

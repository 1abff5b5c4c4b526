//! The root filesystem: a Debian base from mmdebstrap (cached by its inputs), then the
//! pinned artifacts, the overlays and the firstboot binary, a regenerated initramfs, and
//! finally a read-only erofs image.
//!
//! * [`base`]: the Debian base (spec, mirror, mmdebstrap, the cached tarball).
//! * this module: [`customize`], the tree made from the base.
//! * [`files`]: installing, copying and removing inside an image root safely.
//! * [`erofs`]: the read-only filesystem image.
//! * [`modules`]: the kernel modules an image keeps (the desktop's device classes go).

mod base;
mod erofs;
mod files;
pub mod modules;

pub use base::{
    base_age_days, debian_base, parse_release_date, parse_snapshot, render_sources,
    required_packages, resolve_mirror, BaseRecord, BaseSpec, BaseTar, Mirrors, BASE_HOOKS,
};
pub use erofs::make_erofs;
pub use files::{copy_tree, remove_tree, resolve_in_root};

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::tools;
use files::install_file;

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
/// The systemd units [`customize`] enables: all of `required`, and those of
/// `if_present` whose unit file the tree has.
#[derive(Debug, Clone, Copy)]
pub struct Units<'a> {
    pub required: &'a [&'a str],
    pub if_present: &'a [&'a str],
}

pub fn customize(
    base_tar: &Path,
    root: &Path,
    boot_dir: &Path,
    installs: &[Install],
    overlays: &[PathBuf],
    units: &Units,
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
    let mut enable: Vec<&str> = units.required.to_vec();
    enable.extend(units.if_present.iter().filter(|u| {
        [
            "usr/lib/systemd/system",
            "lib/systemd/system",
            "etc/systemd/system",
        ]
        .iter()
        .any(|d| root.join(d).join(u).exists())
    }));
    if !enable.is_empty() {
        tools::run(
            Command::new("systemctl")
                .arg(format!("--root={}", root.display()))
                .arg("enable")
                .args(&enable),
        )
        .context("enabling systemd units")?;
    }

    let kernel_version = kernel_version(root)?;
    let pruned = modules::prune(root, &kernel_version)?;
    tracing::info!(
        kept = pruned.kept,
        dropped = pruned.dropped,
        kept_as_dependency = pruned.kept_as_dependency,
        mib_dropped = pruned.bytes_dropped >> 20,
        "kernel modules"
    );
    {
        let _mounts = ChrootMounts::new(root)?;
        // The module index for what is left, before the initramfs is made from it.
        tools::run(
            Command::new("chroot")
                .arg(root)
                .args(["depmod", &kernel_version])
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        )
        .context("depmod after removing modules")?;
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
    // The node's resolvers come from DHCP or the platform through systemd-resolved:
    // /etc/resolv.conf is resolved's stub, whatever the base's build left there (a copy of
    // the build machine's own file leaks its name servers and resolves nothing on a node).
    let resolv = root.join("etc/resolv.conf");
    match fs::symlink_metadata(&resolv) {
        Ok(_) => fs::remove_file(&resolv)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    std::os::unix::fs::symlink(RESOLV_CONF_TARGET, &resolv)?;
    remove_ssh_host_keys(root)?;
    check_root_locked(root)?;
    Ok(())
}

/// Where the image's /etc/resolv.conf points: systemd-resolved's stub file.
pub const RESOLV_CONF_TARGET: &str = "../run/systemd/resolve/stub-resolv.conf";

/// SSH host keys are per node: openssh-server's postinst makes a set in the base, which
/// every node of every image would share (and anyone with the image would hold). The
/// base is built without them ([`base::BASE_HOOKS`]); this removes any an overlay, a
/// package or an older cached base brought. `nodeimage-ssh-host-keys.service` makes a
/// node's own on its first boot, into the writable `/etc`.
pub fn remove_ssh_host_keys(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("etc/ssh");
    let mut removed = Vec::new();
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("ssh_host_") {
                fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
                removed.push(name);
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// The image's root account must be locked (`*` or `!` in /etc/shadow): systemd's
/// emergency and rescue shells ask for root's password (sulogin) and open no shell for
/// a locked account, but one with an empty password opens a root shell on the console
/// to anyone.
fn check_root_locked(root: &Path) -> Result<()> {
    let shadow = root.join("etc/shadow");
    let text =
        fs::read_to_string(&shadow).with_context(|| format!("reading {}", shadow.display()))?;
    let field = text
        .lines()
        .find_map(|l| l.strip_prefix("root:"))
        .map(|rest| rest.split(':').next().unwrap_or(""));
    match field {
        Some(f) if f.starts_with('*') || f.starts_with('!') => Ok(()),
        Some(_) => bail!(
            "{}: the root account has a password or none (`root:{}:`); the image must ship it locked (`*`) \
             so that no console shell opens without a credential; set a root password per node (Ignition \
             passwordHash) if you need one",
            shadow.display(),
            if field == Some("") { "" } else { "<hash>" }
        ),
        None => bail!("{}: no root entry", shadow.display()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing of the build machine's DNS setup stays in the image: whatever the base
    /// left as /etc/resolv.conf (a copy of the host's, mode 0755, seen in a built image)
    /// becomes the link to systemd-resolved's stub.
    #[test]
    fn scrub_replaces_the_build_hosts_resolv_conf() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        fs::write(root.join("etc/resolv.conf"), "nameserver 192.0.2.53\n").unwrap();
        fs::set_permissions(
            root.join("etc/resolv.conf"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        scrub(root).unwrap();
        assert_eq!(
            fs::read_link(root.join("etc/resolv.conf")).unwrap(),
            Path::new(RESOLV_CONF_TARGET)
        );
        // Idempotent, and also when nothing was there.
        scrub(root).unwrap();
        fs::remove_file(root.join("etc/resolv.conf")).unwrap();
        scrub(root).unwrap();
        assert!(fs::symlink_metadata(root.join("etc/resolv.conf"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn scrub_removes_host_keys_and_needs_a_locked_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for dir in ["etc/ssh", "var/log"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        for f in [
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
            "ssh_host_rsa_key",
            "sshd_config",
        ] {
            fs::write(root.join("etc/ssh").join(f), "x").unwrap();
        }
        fs::write(root.join("etc/shadow"), "root::19000:0:99999:7:::\n").unwrap();
        let e = format!("{:#}", scrub(root).unwrap_err());
        assert!(e.contains("root account") && e.contains("`root::`"), "{e}");
        let left: Vec<_> = fs::read_dir(root.join("etc/ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["sshd_config"]);
        fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        scrub(root).unwrap();
        fs::write(root.join("etc/shadow"), "root:$y$j9T$abc:19000::::::\n").unwrap();
        let e = format!("{:#}", scrub(root).unwrap_err());
        assert!(
            e.contains("<hash>") && !e.contains("$y$"),
            "never the hash: {e}"
        );
    }
}

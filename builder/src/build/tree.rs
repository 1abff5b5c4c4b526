//! The root filesystem tree: the Debian base (cached by its spec), then the payload,
//! the overlays, the enabled units and a regenerated initramfs (cached by all of those).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{sha256_file, Build};
use crate::profile::LoadedProfile;
use crate::rootfs::{self, BaseSpec, BaseTar, Install};

/// Version of the `customize` stage: bump when [`rootfs::customize`] changes what it makes.
const CUSTOMIZE_STAGE_VERSION: u32 = 5;

/// Units every image enables.
pub const ENABLED_UNITS: &[&str] = &[
    "firstboot.service",
    "nodeimage-firewall.service",
    "nodeimage-erase-secrets.service",
    "nodeimage-bless-boot.service",
    "nodeimage-ssh-host-keys.service",
    "systemd-networkd.service",
];

/// Units an image enables when it has them: resolved (the node's DNS servers from DHCP)
/// and containerd (from a Debian package or the kubernetes overlay's unit for the
/// profile's pinned release files), so they start on every boot, not only when
/// firstboot starts them on the first.
pub const ENABLED_IF_PRESENT: &[&str] = &["systemd-resolved.service", "containerd.service"];

/// The Debian base: its spec (what decides it) and the tarball.
#[derive(Debug, Clone)]
pub struct Base {
    pub spec: BaseSpec,
    pub tar: BaseTar,
}

/// The profile's overlay directories, in order, and a digest of their contents.
#[derive(Debug, Clone)]
pub struct Overlays {
    pub dirs: Vec<PathBuf>,
}

/// The customized root tree, ready for mkfs.erofs, and what was read out of it.
#[derive(Debug, Clone)]
pub struct RootTree {
    /// The stage key: sha256 of everything the tree was made from.
    pub key: String,
    pub root: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_version: String,
    /// Debian packages: name -> version.
    pub packages: BTreeMap<String, String>,
}

/// What the `customize` stage records beside the tree.
#[derive(Debug, Serialize, Deserialize)]
struct TreeMeta {
    kernel_version: String,
    packages: BTreeMap<String, String>,
}

/// Stage 2: the Debian base (built by mmdebstrap once per spec, then from the cache).
pub fn base(b: &Build) -> Result<Base> {
    let d = &b.lp.profile.debian;
    let mirrors = rootfs::resolve_mirror(d.mirror.as_deref(), d.security_mirror.as_deref())?;
    let spec = BaseSpec::new(&b.lp, &mirrors, b.epoch);
    let tar = rootfs::debian_base(&spec, &b.cache_dir, b.refresh_base)?;
    check_base_age(b, &spec, &tar, now())?;
    Ok(Base { spec, tar })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `debian.max_base_age_days`: a base whose package set is older than the profile allows
/// is refused (with `--allow-stale-base`, used with a warning).
pub fn check_base_age(b: &Build, spec: &BaseSpec, tar: &BaseTar, now: i64) -> Result<()> {
    let Some(max) = b.lp.profile.debian.max_base_age_days else {
        return Ok(());
    };
    let age = rootfs::base_age_days(spec, &tar.record, now);
    if age <= i64::from(max) {
        return Ok(());
    }
    let since = match &spec.snapshot {
        Some(ts) => format!("its snapshot {ts}"),
        None => "the newest Release file it was built from".to_string(),
    };
    let fix = match &spec.snapshot {
        Some(_) => "move debian.snapshot forward",
        None => "run nodeimage build --refresh-base to build it again from the archive",
    };
    if b.allow_stale_base {
        tracing::warn!(base = %tar.path.display(), age_days = age, max_base_age_days = max, "the Debian base is older than the profile allows (--allow-stale-base)");
        return Ok(());
    }
    bail!(
        "{}: debian.max_base_age_days = {max}, but the Debian base {} is {age} days old (since {since}): \
         it lacks the security updates published since; {fix}, or pass --allow-stale-base to use it anyway",
        b.lp.path.display(),
        tar.path.display()
    )
}

impl Overlays {
    /// The profile's overlays under `<profile dir>/../overlays`; each must be a directory.
    pub fn of(lp: &LoadedProfile) -> Result<Overlays> {
        let base = lp.overlays_dir();
        let dirs = lp
            .profile
            .overlays
            .iter()
            .map(|o| {
                let d = base.join(o);
                if d.is_dir() {
                    Ok(d)
                } else {
                    bail!(
                        "{}: overlays: `{o}` is not a directory under {}",
                        lp.path.display(),
                        base.display()
                    )
                }
            })
            .collect::<Result<_>>()?;
        Ok(Overlays { dirs })
    }

    /// Feed every overlay's tree (names, modes, link targets, contents) into `h`.
    pub fn hash_into(&self, h: &mut Sha256) -> Result<()> {
        for o in &self.dirs {
            hash_tree(h, o, o)?;
        }
        Ok(())
    }

    /// sha256 of [`Overlays::hash_into`].
    pub fn digest(&self) -> Result<String> {
        let mut h = Sha256::new();
        self.hash_into(&mut h)?;
        Ok(hex::encode(h.finalize()))
    }
}

fn hash_tree(h: &mut Sha256, base: &Path, dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(base).unwrap_or(&p);
        h.update(rel.to_string_lossy().as_bytes());
        let m = std::fs::symlink_metadata(&p)?;
        h.update(m.permissions().mode().to_le_bytes());
        if m.file_type().is_symlink() {
            h.update(std::fs::read_link(&p)?.to_string_lossy().as_bytes());
        } else if m.is_dir() {
            hash_tree(h, base, &p)?;
        } else {
            h.update(std::fs::read(&p)?);
        }
    }
    Ok(())
}

/// What the `customize` stage is keyed by.
#[derive(Serialize)]
struct CustomizeInputs<'a> {
    base_sha256: &'a str,
    /// (path in the image, mode, sha256 of the file)
    installs: Vec<(&'a str, u32, String)>,
    overlays_sha256: String,
    units: &'a [&'a str],
    epoch: i64,
}

/// Stage 3: unpack the base, add `installs`, the overlays and the units, regenerate
/// the initramfs. Cached by the base's bytes, every installed file's hash, the overlay
/// contents and the epoch, so a change to any of them makes a new tree and nothing
/// else does.
pub fn customize(
    b: &Build,
    base: &Base,
    installs: &[Install],
    overlays: &Overlays,
) -> Result<RootTree> {
    let all_units = [ENABLED_UNITS, ENABLED_IF_PRESENT].concat();
    let inputs = CustomizeInputs {
        base_sha256: &base.tar.sha256,
        installs: installs
            .iter()
            .map(|i| Ok((i.dest.as_str(), i.mode, sha256_file(&i.source)?.0)))
            .collect::<Result<_>>()?,
        overlays_sha256: overlays.digest()?,
        units: &all_units,
        epoch: b.epoch,
    };
    let key = super::cache::stage_key("customize", CUSTOMIZE_STAGE_VERSION, &inputs)?;
    let entry = b.stages.get_or_make("customize", &key, |dir| {
        let c = rootfs::customize(
            &base.tar.path,
            &dir.join("root"),
            &dir.join("boot"),
            installs,
            &overlays.dirs,
            &rootfs::Units {
                required: ENABLED_UNITS,
                if_present: ENABLED_IF_PRESENT,
            },
            b.epoch,
        )?;
        Ok(TreeMeta {
            kernel_version: c.kernel_version,
            packages: c.packages,
        })
    })?;
    tracing::info!(cached = entry.hit, tree = %entry.dir.join("root").display(), "root tree");
    Ok(RootTree {
        key,
        root: entry.dir.join("root"),
        kernel: entry.dir.join("boot/vmlinuz"),
        initrd: entry.dir.join("boot/initrd.img"),
        kernel_version: entry.meta.kernel_version,
        packages: entry.meta.packages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `debian.max_base_age_days`: a base within the limit passes, an older one is refused
    /// with the fix named, and `--allow-stale-base` lets it through.
    #[test]
    fn a_base_older_than_the_profile_allows_is_refused_unless_allowed() {
        let d = tempfile::tempdir().unwrap();
        let profile = super::super::tests::PROFILE.replace(
            "suite = \"bookworm\"\n",
            "suite = \"bookworm\"\nmax_base_age_days = 7\n",
        );
        let mut b = super::super::tests::test_build(d.path(), &profile, false);
        let mirrors = rootfs::Mirrors {
            debian: "http://deb.example/debian".into(),
            security: "http://deb.example/debian-security".into(),
        };
        let spec = BaseSpec::new(&b.lp, &mirrors, b.epoch);
        let now = rootfs::parse_snapshot("20261201T000000Z").unwrap();
        let tar = |date: &str| BaseTar {
            path: "/cache/rootfs/amd64-x.tar".into(),
            sha256: "0".repeat(64),
            record: rootfs::BaseRecord {
                built_at: now,
                releases: [(
                    "deb.example_debian-security_dists_bookworm-security_InRelease".to_string(),
                    date.to_string(),
                )]
                .into(),
            },
        };
        check_base_age(&b, &spec, &tar("Mon, 30 Nov 2026 00:22:33 UTC"), now).unwrap();
        let e = check_base_age(&b, &spec, &tar("Sat, 11 Jul 2026 10:16:37 UTC"), now)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_base_age_days = 7")
                && e.contains("142 days old")
                && e.contains("--refresh-base")
                && e.contains("--allow-stale-base"),
            "{e}"
        );
        b.allow_stale_base = true;
        check_base_age(&b, &spec, &tar("Sat, 11 Jul 2026 10:16:37 UTC"), now).unwrap();
    }

    #[test]
    fn overlay_digest_follows_names_modes_links_and_contents() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let o = d.path().join("o");
        std::fs::create_dir_all(o.join("etc")).unwrap();
        std::fs::write(o.join("etc/a"), "1").unwrap();
        let ov = Overlays {
            dirs: vec![o.clone()],
        };
        let d0 = ov.digest().unwrap();
        assert_eq!(d0, ov.digest().unwrap());
        std::fs::write(o.join("etc/a"), "2").unwrap();
        let d1 = ov.digest().unwrap();
        assert_ne!(d0, d1, "contents");
        std::fs::set_permissions(o.join("etc/a"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let d2 = ov.digest().unwrap();
        assert_ne!(d1, d2, "mode");
        std::os::unix::fs::symlink("/x", o.join("etc/l")).unwrap();
        let d3 = ov.digest().unwrap();
        assert_ne!(d2, d3, "a new link");
        std::fs::remove_file(o.join("etc/l")).unwrap();
        std::os::unix::fs::symlink("/y", o.join("etc/l")).unwrap();
        assert_ne!(d3, ov.digest().unwrap(), "a link's target");
    }
}

//! `nodeimage build`: a profile through typed stages into a disk image.
//!
//! | stage | function | output | cached by |
//! |---|---|---|---|
//! | 1 | [`fetch_artifacts`], [`pull_images`], [`firstboot`] | [`Artifacts`], [`Images`], [`Firstboot`] | download cache (digest); members of archives in the stage cache |
//! | 2 | [`base`] | [`Base`] (mmdebstrap tarball) | its spec (suite, mirror, packages, epoch) |
//! | 3 | [`customize`] | [`RootTree`] | base bytes, every installed file, overlays, units, epoch |
//! | – | [`Identity::new`] | [`Identity`] | (cheap) |
//! | 4a | [`root_image`] | [`RootImage`] (erofs, its dm-verity hash tree, the root hash) | root tree, identity |
//! | – | [`identity::manifest`] | the ESP's manifest (with the root hash) | (cheap) |
//! | 4b | [`filesystems`] | [`Filesystems`] (ESP, NODECONFIG) | root tree and manifest |
//! | 5 | [`assemble_disk`] | [`DiskImage`] | (cheap: written from the filesystems) |
//! | 6 | [`write_outputs`] | [`Outputs`] (the profile's formats, the [`pxe`] files, manifest.json, SHA256SUMS) | – |
//!
//! Stage outputs live in the stage cache (`<cache>/stages`, see [`cache`]) keyed by
//! the sha256 of the stage's inputs, so an unchanged profile rebuilds in seconds and a
//! changed overlay redoes the tree and what follows it, not the downloads or the base.
//! `--no-stage-cache` runs every stage afresh in the work directory; the result is
//! byte-identical either way.

pub mod assemble;
pub mod bundle;
pub mod cache;
pub mod filesystems;
pub mod identity;
pub mod outputs;
pub mod payload;
pub mod pxe;
pub mod tree;

pub use assemble::{assemble_disk, DiskImage};
pub use cache::StageCache;
pub use filesystems::{filesystems, root_image, Filesystems, RootImage};
pub use identity::Identity;
pub use outputs::{compress_zstd, write_outputs, Outputs};
pub use payload::{fetch_artifacts, firstboot, pull_images, Artifacts, Firstboot, Images};
pub use tree::{base, customize, Base, Overlays, RootTree};

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use crate::fetch::{self, Fetcher};
use crate::manifest::Manifest;
use crate::oci::{LockFile, RegistryOptions};
use crate::profile::{self, Arch, LoadedProfile};
use crate::tools;
use nodeimage_core::bundle::{PublicKey, SigningKey};

#[derive(clap::Args, Debug, Clone)]
pub struct BuildArgs {
    /// The profile to build (e.g. profiles/k8s-1.36-x86_64.toml).
    pub profile: PathBuf,
    /// Directory for the outputs (<out>/<profile name>/).
    #[arg(long, short = 'o', default_value = "out")]
    pub out_dir: PathBuf,
    /// Cache for downloads and Debian bases [default: $XDG_CACHE_HOME/nodeimage].
    #[arg(long, env = "NODEIMAGE_CACHE", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Serve pinned files from a mirror (URL or directory laid out as <mirror>/<host>/<path>); repeatable.
    #[arg(long, value_name = "URL|DIR")]
    pub mirror: Vec<String>,
    /// Never fall back to the upstream URLs (air-gapped sites).
    #[arg(long)]
    pub mirror_only: bool,
    /// Use only the download cache.
    #[arg(long)]
    pub offline: bool,
    /// The firstboot binary for the profile's architecture [default: next to this nodeimage binary].
    #[arg(long, value_name = "FILE")]
    pub firstboot_bin: Option<PathBuf>,
    /// Install missing build tools with apt-get.
    #[arg(long)]
    pub install_deps: bool,
    /// Timestamp for every file, GUID and serial [default: the profile's last git commit time].
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
    pub source_date_epoch: Option<i64>,
    /// Keep the work directory (with --no-stage-cache, the unpacked root filesystem) for inspection.
    #[arg(long)]
    pub keep_work: bool,
    /// Run every stage afresh in the work directory: read nothing from the stage cache
    /// and store nothing in it (downloads and the Debian base are still cached).
    #[arg(long, env = "NODEIMAGE_NO_STAGE_CACHE")]
    pub no_stage_cache: bool,
    /// Use a cached Debian base even when it is older than the profile's
    /// `debian.max_base_age_days` (with a warning).
    #[arg(long)]
    pub allow_stale_base: bool,
    /// Build the Debian base afresh from the archive (the newest packages of the suite,
    /// its updates and security fixes), replacing the cached one for this profile.
    #[arg(long)]
    pub refresh_base: bool,
    /// Sign an update bundle (<out>/<name>.bundle) with this Ed25519 private key (from
    /// `nodeimage keygen`; PKCS#8 PEM, readable by its owner only). Its public half must
    /// be the profile's `[update] public_key`.
    #[arg(long, env = "NODEIMAGE_SIGN_KEY", value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Container registry options for the profile's images.
    #[command(flatten)]
    pub registry: crate::oci::RegistryOptions,
}

/// What a build produced.
#[derive(Debug)]
pub struct BuildResult {
    pub out_dir: PathBuf,
    pub raw: PathBuf,
    pub manifest: Manifest,
}

pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("nodeimage")
}

pub(crate) fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

fn epoch_for(profile: &Path, explicit: Option<i64>) -> i64 {
    if let Some(e) = explicit {
        return e;
    }
    let dir = profile
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let git = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["log", "-1", "--format=%ct", "--"])
        .arg(profile.file_name().unwrap_or_default())
        .output();
    if let Ok(o) = git {
        if let Ok(v) = String::from_utf8_lossy(&o.stdout).trim().parse() {
            return v;
        }
    }
    fs::metadata(profile)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Locate the firstboot binary for `arch`.
fn find_firstboot(arch: Arch, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--firstboot-bin {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("nodeimage has no directory")?;
    let profile_dir = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release");
    let candidates = if arch.is_host() {
        vec![dir.join("firstboot")]
    } else {
        let triple = format!("{}-unknown-linux-gnu", arch.as_str());
        let target_dir = dir.parent().unwrap_or(dir);
        vec![target_dir.join(&triple).join(profile_dir).join("firstboot")]
    };
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        let target = if arch.is_host() { String::new() } else { format!(" --target {}-unknown-linux-gnu", arch.as_str()) };
        format!(
            "no firstboot binary for {} at {}; build it with `cargo build --release -p firstboot{target}` or pass --firstboot-bin",
            arch.as_str(),
            candidates[0].display()
        )
    })
}

/// One build's settings, shared by the stages.
pub struct Build {
    pub lp: LoadedProfile,
    /// The profile path as given (recorded in the manifest).
    pub profile_path: PathBuf,
    /// The image lock (None when the profile has no images).
    pub lock: Option<LockFile>,
    pub epoch: i64,
    pub firstboot_bin: PathBuf,
    pub cache_dir: PathBuf,
    /// `<out>/<profile name>`.
    pub out_dir: PathBuf,
    /// `<out_dir>/.work`, removed after the build unless `--keep-work`.
    pub work: PathBuf,
    pub fetcher: Fetcher,
    pub registry: RegistryOptions,
    pub stages: StageCache,
    /// `--allow-stale-base`, `--refresh-base`.
    pub allow_stale_base: bool,
    pub refresh_base: bool,
    /// `[update] public_key`: installed into the image, the key its nodes trust.
    pub update_key: Option<PublicKey>,
    /// `--sign-key`: sign an update bundle with it.
    pub sign_key: Option<SigningKey>,
}

/// Read `--sign-key`: owner-only, PKCS#8, and the private half of the profile's key.
fn load_sign_key(
    path: &Path,
    lp: &LoadedProfile,
    update_key: Option<&PublicKey>,
) -> Result<SigningKey> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).with_context(|| format!("--sign-key {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "--sign-key {}: readable by others (mode {:o}); a signing key must be 0600: chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let text =
        fs::read_to_string(path).with_context(|| format!("--sign-key {}", path.display()))?;
    let key = SigningKey::from_pem(&text, &format!("--sign-key {}", path.display()))?;
    match update_key {
        None => bail!(
            "--sign-key {}: {} has no [update] public_key, so its nodes would accept no bundle; \
             add `[update] public_key = \"<the .pub.pem of this key>\"`",
            path.display(),
            lp.path.display()
        ),
        Some(k) if *k != key.public() => bail!(
            "--sign-key {}: its public key {} is not the profile's update.public_key {}: \
             nodes of this image would refuse the bundle",
            path.display(),
            key.public().fingerprint(),
            k.fingerprint()
        ),
        Some(_) => Ok(key),
    }
}

impl Build {
    /// Load and check everything before any slow step: the profile and its lock, the
    /// tools, root, the firstboot binary, the fetcher.
    pub fn prepare(args: &BuildArgs) -> Result<Build> {
        let lp = profile::load(&args.profile)?;
        // Like `cargo --locked`: images come only from an up-to-date lock file.
        let lock = crate::oci::check_lock(&lp)?;
        let epoch = epoch_for(&args.profile, args.source_date_epoch);
        let needed = tools::build_tools(&lp.profile.outputs.formats);
        if args.install_deps {
            tools::install_missing(&needed)?;
        }
        tools::require(&needed)?;
        if unsafe { libc::geteuid() } != 0 {
            bail!("nodeimage build needs root (mmdebstrap root mode, chroot for the initramfs); run it with sudo");
        }
        let update_key = lp.update_key()?;
        let sign_key = args
            .sign_key
            .as_deref()
            .map(|k| load_sign_key(k, &lp, update_key.as_ref()))
            .transpose()?;
        let firstboot_bin = find_firstboot(lp.profile.arch, args.firstboot_bin.as_deref())?;
        let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
        let out_dir = args.out_dir.join(&lp.profile.name);
        let work = out_dir.join(".work");
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let mirrors = args
            .mirror
            .iter()
            .map(|m| fetch::Mirror::parse(m))
            .collect::<Result<Vec<_>, _>>()?;
        let fetcher = Fetcher::new(
            fetch::Cache::new(cache_dir.join("downloads")),
            fetch::FetchOptions {
                mirrors,
                mirror_only: args.mirror_only,
                offline: args.offline,
                ..Default::default()
            },
        )?;
        let stages = if args.no_stage_cache {
            StageCache::disabled(&work)
        } else {
            StageCache::new(&cache_dir, &work)
        };
        Ok(Build {
            lp,
            profile_path: args.profile.clone(),
            lock,
            epoch,
            firstboot_bin,
            cache_dir,
            out_dir,
            work,
            fetcher,
            registry: args.registry.clone(),
            stages,
            allow_stale_base: args.allow_stale_base,
            refresh_base: args.refresh_base,
            update_key,
            sign_key,
        })
    }
}

/// Time one stage and log it.
fn timed<T>(stage: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    let r = f()?;
    tracing::info!(stage, seconds = t.elapsed().as_secs_f64(), "stage done");
    Ok(r)
}

/// Run a build.
pub fn build(args: &BuildArgs) -> Result<BuildResult> {
    let started = Instant::now();
    let b = Build::prepare(args)?;
    let p = &b.lp.profile;
    tracing::info!(profile = %p.name, arch = p.arch.as_str(), epoch = b.epoch, out = %b.out_dir.display(),
        stage_cache = b.stages.enabled(), "build starting");

    // Pinned artifacts first: a missing download fails the build before anything slow.
    let artifacts = timed("artifacts", || fetch_artifacts(&b))?;
    let images = timed("images", || pull_images(&b))?;
    let firstboot = firstboot(&b)?;
    let update_key = payload::update_key(&b)?;
    let installs: Vec<_> = artifacts
        .installs
        .iter()
        .chain(&images.installs)
        .chain([&firstboot.install])
        .chain(update_key.as_ref())
        .cloned()
        .collect();

    let base = timed("base", || base(&b))?;
    let overlays = Overlays::of(&b.lp)?;
    let tree = timed("customize", || customize(&b, &base, &installs, &overlays))?;

    // Every GUID, serial and timestamp derives from the identity.
    let id = Identity::new(&b, &base, &tree, &artifacts, &images, &firstboot, &overlays)?;
    let root = timed("root", || root_image(&b, &tree, &id))?;
    let manifest = identity::manifest(
        &b,
        &id,
        &base,
        &tree,
        &artifacts,
        &images,
        &firstboot,
        &root.record,
    )?;

    let fs = timed("filesystems", || {
        filesystems(&b, &tree, &root, &id, &manifest)
    })?;
    let disk = timed("disk", || assemble_disk(&b, &fs, &id))?;
    let netboot = pxe::NetbootInputs {
        kernel: tree.kernel.clone(),
        initrd: tree.initrd.clone(),
        root: fs.root.clone(),
        verity: fs.verity.clone(),
        profile_cmdline: p.kernel.cmdline.clone(),
        name: p.name.clone(),
        arch: p.arch.as_str().into(),
        inputs_sha256: id.inputs.clone(),
    };
    let outputs = timed("outputs", || write_outputs(&b, &disk, &netboot, manifest))?;

    if args.keep_work {
        tracing::info!(work = %b.work.display(), tree = %tree.root.display(), "work directory kept");
    } else {
        crate::rootfs::remove_tree(&b.work)?;
    }
    if let Err(e) = b.stages.prune() {
        tracing::warn!(error = %format!("{e:#}"), "could not prune the stage cache");
    }
    tracing::info!(seconds = started.elapsed().as_secs_f64(), out = %b.out_dir.display(), "build finished");
    Ok(BuildResult {
        out_dir: b.out_dir.clone(),
        raw: disk.raw,
        manifest: outputs.manifest,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const PROFILE: &str = "name = \"t\"\narch = \"x86_64\"\n[debian]\nsuite = \"bookworm\"\n[disk]\nesp_size_mib = 128\n";

    /// A build of `profile_text` under `dir` (profile, cache, out), as `prepare` would
    /// set it up, without the checks for root and tools.
    pub(crate) fn test_build(dir: &Path, profile_text: &str, stage_cache: bool) -> Build {
        let path = dir.join("profiles/t.toml");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, profile_text).unwrap();
        let fb = dir.join("firstboot");
        fs::write(&fb, b"#!/bin/sh\n").unwrap();
        let cache_dir = dir.join("cache");
        let out_dir = dir.join("out/t");
        let work = out_dir.join(".work");
        fs::create_dir_all(&work).unwrap();
        Build {
            lp: profile::load(&path).unwrap(),
            profile_path: path,
            lock: None,
            epoch: 1767225600,
            firstboot_bin: fb,
            fetcher: Fetcher::new(
                fetch::Cache::new(cache_dir.join("downloads")),
                fetch::FetchOptions {
                    progress: fetch::ProgressMode::Never,
                    ..Default::default()
                },
            )
            .unwrap(),
            stages: if stage_cache {
                StageCache::new(&cache_dir, &work)
            } else {
                StageCache::disabled(&work)
            },
            cache_dir,
            out_dir,
            work,
            registry: Default::default(),
            allow_stale_base: false,
            refresh_base: false,
            update_key: None,
            sign_key: None,
        }
    }

    /// The ESP manifest of a build with `tree` and no payload.
    pub(crate) fn manifest_for(b: &Build, tree: &RootTree) -> Manifest {
        let base = Base {
            spec: crate::rootfs::BaseSpec::new(
                &b.lp,
                &crate::rootfs::Mirrors {
                    debian: "http://deb.example/debian".into(),
                    security: "http://deb.example/debian-security".into(),
                },
                b.epoch,
            ),
            tar: crate::rootfs::BaseTar {
                path: "/nonexistent".into(),
                sha256: "0".repeat(64),
                record: Default::default(),
            },
        };
        let fb = firstboot(b).unwrap();
        let overlays = Overlays { dirs: vec![] };
        let none = (Artifacts::default(), Images::default());
        let id = Identity::new(b, &base, tree, &none.0, &none.1, &fb, &overlays).unwrap();
        identity::manifest(b, &id, &base, tree, &none.0, &none.1, &fb, &test_root()).unwrap()
    }

    /// A root record as the root stage makes one (for a 3-block image).
    pub(crate) fn test_root() -> crate::manifest::RootRecord {
        crate::manifest::RootRecord {
            erofs_sha256: "e".repeat(64),
            erofs_size: 3 * 4096,
            verity: crate::manifest::VerityRecord {
                root_hash: "ab".repeat(32),
                salt: "5a".repeat(32),
                hash_algorithm: "sha256".into(),
                data_block_size: 4096,
                hash_block_size: 4096,
                data_blocks: 3,
                hash_size: 2 * 4096,
            },
        }
    }

    #[test]
    fn identity_changes_with_every_input() {
        let d = tempfile::tempdir().unwrap();
        let tree = filesystems::tests::fake_tree(d.path());
        let b = test_build(d.path(), PROFILE, true);
        let m1 = manifest_for(&b, &tree);
        assert_eq!(m1.inputs_sha256, manifest_for(&b, &tree).inputs_sha256);
        let mut other = tree.clone();
        other.packages.insert("extra".into(), "1".into());
        assert_ne!(
            m1.inputs_sha256,
            manifest_for(&b, &other).inputs_sha256,
            "packages"
        );
        let b2 = test_build(
            d.path(),
            &format!("{PROFILE}[kernel]\ncmdline = \"quiet\"\n"),
            true,
        );
        let m2 = manifest_for(&b2, &tree);
        assert_ne!(m1.inputs_sha256, m2.inputs_sha256, "profile text");
        assert!(
            m2.kernel
                .cmdline
                .contains(" ro rootfstype=erofs nodeimage.verity=abab"),
            "{}",
            m2.kernel.cmdline
        );
        assert!(
            m2.kernel
                .cmdline
                .contains(" nodeimage.verity_blocks=3 nodeimage.version=1767225600-")
                && m2.kernel.cmdline.ends_with(" quiet"),
            "{}",
            m2.kernel.cmdline
        );
    }
}

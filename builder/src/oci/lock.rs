//! Lock files: `profiles/NAME.lock.json` beside `profiles/NAME.toml`.
//!
//! A profile names images by tag (and, where a digest was published, pins the index or
//! manifest digest). `nodeimage lock` resolves each image, through the registry API, to
//! the manifest for the profile's architecture and records everything a pull needs:
//!
//! ```json
//! {
//!   "schema": 1,
//!   "profile": "k8s-1.36-x86_64",
//!   "arch": "x86_64",
//!   "images_sha256": "<sha256 of the profile's arch and each image's name, reference, digest>",
//!   "images": [{
//!     "name": "pause",
//!     "reference": "registry.k8s.io/pause:3.10.1",
//!     "platform": "linux/amd64",
//!     "index":    {"media_type": "...index.v1+json", "digest": "sha256:…", "size": 1234},
//!     "manifest": {"media_type": "...manifest.v1+json", "digest": "sha256:…", "size": 527},
//!     "config":   {"media_type": "...config.v1+json", "digest": "sha256:…", "size": 1000},
//!     "layers":   [{"media_type": "...layer.v1.tar+gzip", "digest": "sha256:…", "size": 300000}],
//!     "total_size": 302761
//!   }]
//! }
//! ```
//!
//! `index` is absent for an image published as a single manifest. `nodeimage build`
//! refuses a profile whose lock is missing or stale, as `cargo build --locked` does;
//! role and purpose are not part of `images_sha256`, so changing them needs no new lock.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::media::{self, Kind};
use super::reference::Reference;
use super::registry::{Endpoint, Registry, RegistryOptions};
use crate::fetch::Digest;
use crate::profile::{self, Arch, Image, LoadedProfile, Profile};

pub const LOCK_SCHEMA: u32 = 1;
/// Largest image config accepted when resolving.
const MAX_CONFIG: u64 = 8 << 20;

/// The lock file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub schema: u32,
    pub profile: String,
    pub arch: String,
    /// [`images_sha256`] of the profile the lock was made for.
    pub images_sha256: String,
    pub images: Vec<LockedImage>,
    /// The Debian package set the profile pins: its suite and archive snapshot. A build
    /// refuses a lock whose snapshot differs from the profile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debian: Option<LockedDebian>,
}

/// The Debian part of a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedDebian {
    pub suite: String,
    /// `debian.snapshot` of the profile (none: the archive as it is when the base is built).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

impl LockedDebian {
    pub fn of(p: &Profile) -> LockedDebian {
        LockedDebian {
            suite: p.debian.suite.clone(),
            snapshot: p.debian.snapshot.clone(),
        }
    }
}

/// A blob: media type, digest, size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// One resolved image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    pub name: String,
    /// The reference as the profile writes it.
    pub reference: String,
    /// `linux/amd64` or `linux/arm64`.
    pub platform: String,
    /// The multi-arch index (manifest list), when the reference points to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<BlobRef>,
    /// The manifest for [`LockedImage::platform`].
    pub manifest: BlobRef,
    pub config: BlobRef,
    pub layers: Vec<BlobRef>,
    /// Bytes of index, manifest, config and layers.
    pub total_size: u64,
}

impl LockedImage {
    /// The digest the reference resolves to: the index's, else the manifest's.
    pub fn top_digest(&self) -> Digest {
        self.index
            .as_ref()
            .map(|i| i.digest)
            .unwrap_or(self.manifest.digest)
    }

    /// Every blob of the image with the registry API path kind (`manifests` or `blobs`).
    pub fn blobs(&self) -> Vec<(&BlobRef, &'static str)> {
        let mut v = Vec::new();
        if let Some(i) = &self.index {
            v.push((i, "manifests"));
        }
        v.push((&self.manifest, "manifests"));
        v.push((&self.config, "blobs"));
        v.extend(self.layers.iter().map(|l| (l, "blobs")));
        v
    }
}

/// `profiles/NAME.toml` → `profiles/NAME.lock.json`.
pub fn lock_path(profile: &Path) -> PathBuf {
    let stem = profile
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    profile.with_file_name(format!("{stem}.lock.json"))
}

/// The hash of what decides a lock: the arch and each image's name, reference and
/// pinned digest (sorted by name).
pub fn images_sha256(p: &Profile) -> String {
    let mut items: Vec<(&str, &str, Option<&str>)> = p
        .images
        .iter()
        .map(|i| {
            (
                i.name.as_str(),
                i.reference.get_ref().as_str(),
                i.digest.as_ref().map(|d| d.get_ref().as_str()),
            )
        })
        .collect();
    items.sort();
    let doc = serde_json::json!({ "arch": p.arch.as_str(), "images": items });
    hex::encode(Sha256::digest(
        serde_json::to_vec(&doc).expect("serialisable"),
    ))
}

/// Why a profile's lock cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{profile}: image \"{name}\" ({reference}) has no entry in {lock}{note}; run nodeimage lock {profile}")]
    MissingEntry {
        profile: String,
        lock: String,
        name: String,
        reference: String,
        note: String,
    },
    #[error(
        "{profile}: image \"{name}\" is stale in {lock}: {detail}; run nodeimage lock {profile}"
    )]
    StaleEntry {
        profile: String,
        lock: String,
        name: String,
        detail: String,
    },
    #[error("{lock} is stale for {profile}: {detail}; run nodeimage lock {profile}")]
    Stale {
        profile: String,
        lock: String,
        detail: String,
    },
    #[error("{lock}: {detail}; run nodeimage lock {profile} to write it again")]
    Unreadable {
        profile: String,
        lock: String,
        detail: String,
    },
}

/// Checks that `lp` has an up-to-date lock file. A profile with no images needs none
/// (`Ok(None)`, the file is not read).
pub fn check(lp: &LoadedProfile) -> Result<Option<LockFile>, LockError> {
    let p = &lp.profile;
    if p.images.is_empty() {
        return Ok(None);
    }
    let path = lock_path(&lp.path);
    let profile = lp.path.display().to_string();
    let lock = path.display().to_string();
    let first = &p.images[0];
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LockError::MissingEntry {
                profile,
                lock,
                name: first.name.clone(),
                reference: first.reference.get_ref().clone(),
                note: " (the lock file does not exist)".into(),
            })
        }
        Err(e) => {
            return Err(LockError::Unreadable {
                profile,
                lock,
                detail: e.to_string(),
            })
        }
    };
    let lf: LockFile = serde_json::from_slice(&text).map_err(|e| LockError::Unreadable {
        profile: profile.clone(),
        lock: lock.clone(),
        detail: format!("not a lock file: {e}"),
    })?;
    if lf.schema != LOCK_SCHEMA {
        return Err(LockError::Unreadable {
            profile,
            lock,
            detail: format!("schema {} (this nodeimage reads {LOCK_SCHEMA})", lf.schema),
        });
    }
    if lf.arch != p.arch.as_str() {
        return Err(LockError::Stale {
            profile,
            lock,
            detail: format!(
                "it was made for {}, the profile is {}",
                lf.arch,
                p.arch.as_str()
            ),
        });
    }
    for i in &p.images {
        let Some(l) = lf.images.iter().find(|l| l.name == i.name) else {
            return Err(LockError::MissingEntry {
                profile,
                lock,
                name: i.name.clone(),
                reference: i.reference.get_ref().clone(),
                note: String::new(),
            });
        };
        let stale = |detail: String| LockError::StaleEntry {
            profile: profile.clone(),
            lock: lock.clone(),
            name: i.name.clone(),
            detail,
        };
        if l.reference != *i.reference.get_ref() {
            return Err(stale(format!(
                "locked as {} but the profile says {}",
                l.reference,
                i.reference.get_ref()
            )));
        }
        if let Some(d) = &i.digest {
            if l.top_digest().to_string() != *d.get_ref() {
                return Err(stale(format!(
                    "the profile pins {} but the lock has {}",
                    d.get_ref(),
                    l.top_digest()
                )));
            }
        }
        if l.platform != media::platform_string(p.arch) {
            return Err(stale(format!(
                "locked for {}, the profile is {}",
                l.platform,
                media::platform_string(p.arch)
            )));
        }
    }
    if let Some(extra) = lf
        .images
        .iter()
        .find(|l| !p.images.iter().any(|i| i.name == l.name))
    {
        return Err(LockError::Stale {
            profile,
            lock,
            detail: format!(
                "it has an entry for image \"{}\", which the profile no longer lists",
                extra.name
            ),
        });
    }
    let want = LockedDebian::of(p);
    match &lf.debian {
        Some(d) if *d != want => {
            return Err(LockError::Stale {
                profile,
                lock,
                detail: format!(
                    "it pins Debian {} at snapshot {}, the profile says {} at {}",
                    d.suite,
                    d.snapshot.as_deref().unwrap_or("(none)"),
                    want.suite,
                    want.snapshot.as_deref().unwrap_or("(none)")
                ),
            })
        }
        None if want.snapshot.is_some() => {
            return Err(LockError::Stale {
                profile,
                lock,
                detail: "the profile pins a Debian snapshot the lock does not record".into(),
            })
        }
        _ => {}
    }
    if lf.images_sha256 != images_sha256(p) {
        return Err(LockError::Stale {
            profile,
            lock,
            detail: "images_sha256 differs from the profile's image section".into(),
        });
    }
    Ok(Some(lf))
}

/// Resolves one image for `arch`: from each endpoint in turn (mirrors first), the first
/// that answers wins. An image pinned by tag only is not resolved through a mirror
/// unless the registry options trust mirror tags (then with a warning: trust on first
/// use); a pinned digest is checked wherever it comes from.
pub fn resolve(reg: &Registry, image: &Image, arch: Arch) -> Result<LockedImage> {
    let r = Reference::parse(image.reference.get_ref())
        .map_err(|e| anyhow!("image `{}`: {e}", image.name))?;
    let pinned = image
        .digest
        .as_ref()
        .map(|d| Digest::parse(d.get_ref()))
        .transpose()?;
    let mut errors = Vec::new();
    let endpoints = reg.endpoints(&r, false);
    for ep in &endpoints {
        if ep.mirror && pinned.is_none() && !reg.trust_mirror_tags {
            errors.push(format!(
                "{ep}: not asked: `{}` is pinned by tag only, and a tag resolved through a mirror is trust on first use (pin `digest` in the profile, or pass --trust-mirror-tags after checking what the mirror serves)",
                image.reference.get_ref()
            ));
            continue;
        }
        match resolve_at(reg, ep, image, &r, pinned.as_ref(), arch) {
            Ok(l) => {
                if ep.mirror && pinned.is_none() {
                    tracing::warn!(image = %image.name, mirror = %ep, digest = %l.manifest.digest, "tag resolved through a mirror (--trust-mirror-tags): trust on first use; compare the digest with the upstream registry's");
                    eprintln!(
                        "nodeimage: warning: {} ({}) resolved through the mirror {ep} to {}: trust on first use",
                        image.name,
                        image.reference.get_ref(),
                        l.manifest.digest
                    );
                }
                return Ok(l);
            }
            Err(e) => {
                if endpoints.len() > 1 {
                    tracing::warn!(image = %image.name, endpoint = %ep, error = %format!("{e:#}"), "resolving failed");
                }
                errors.push(format!("{ep}: {e:#}"));
            }
        }
    }
    bail!(
        "image `{}` ({}): {}",
        image.name,
        image.reference.get_ref(),
        errors.join("; ")
    )
}

fn blob_ref(d: &media::Descriptor) -> Result<BlobRef> {
    Ok(BlobRef {
        media_type: d.media_type.clone(),
        digest: Digest::parse(&d.digest)?,
        size: d.size,
    })
}

fn resolve_at(
    reg: &Registry,
    ep: &Endpoint,
    image: &Image,
    r: &Reference,
    pinned: Option<&Digest>,
    arch: Arch,
) -> Result<LockedImage> {
    let object = match pinned {
        Some(d) => d.to_string(),
        None => r.object().to_string(),
    };
    let top = reg.manifest(ep, &r.repository, &object)?;
    let (index, manifest) = match top.kind {
        Kind::Index => {
            let idx: media::Index =
                serde_json::from_slice(&top.body).context("parsing the index")?;
            let d = media::choose(&idx, arch).with_context(|| {
                let have: Vec<String> = idx
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref())
                    .map(|p| {
                        format!(
                            "{}/{}{}",
                            p.os,
                            p.architecture,
                            p.variant
                                .as_deref()
                                .map(|v| format!("/{v}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                format!(
                    "the index {} has no {} manifest (it has: {})",
                    top.digest,
                    media::platform_string(arch),
                    have.join(", ")
                )
            })?;
            let m = reg.manifest(ep, &r.repository, &d.digest)?;
            if m.kind != Kind::Manifest {
                bail!(
                    "the index entry {} for {} is not an image manifest",
                    d.digest,
                    media::platform_string(arch)
                );
            }
            let index = BlobRef {
                media_type: top.media_type.clone(),
                digest: top.digest,
                size: top.body.len() as u64,
            };
            (Some(index), m)
        }
        Kind::Manifest => (None, top),
    };
    let man: media::Manifest =
        serde_json::from_slice(&manifest.body).context("parsing the manifest")?;
    let config = blob_ref(&man.config)?;
    let cfg = reg.small_blob(ep, &r.repository, &config.digest, MAX_CONFIG)?;
    let plat: media::ConfigPlatform =
        serde_json::from_slice(&cfg).context("parsing the image config")?;
    if plat.os != "linux" || plat.architecture != media::oci_arch(arch) {
        bail!(
            "the image is for {}/{}, the profile needs {}",
            plat.os,
            plat.architecture,
            media::platform_string(arch)
        );
    }
    let layers = man
        .layers
        .iter()
        .map(blob_ref)
        .collect::<Result<Vec<_>>>()?;
    let manifest = BlobRef {
        media_type: manifest.media_type.clone(),
        digest: manifest.digest,
        size: manifest.body.len() as u64,
    };
    let total_size = index.as_ref().map(|i| i.size).unwrap_or(0)
        + manifest.size
        + config.size
        + layers.iter().map(|l| l.size).sum::<u64>();
    Ok(LockedImage {
        name: image.name.clone(),
        reference: image.reference.get_ref().clone(),
        platform: media::platform_string(arch),
        index,
        manifest,
        config,
        layers,
        total_size,
    })
}

/// Resolves every image of a loaded profile.
pub fn lock_profile(lp: &LoadedProfile, reg: &Registry) -> Result<LockFile> {
    let p = &lp.profile;
    let mut images = Vec::new();
    for i in &p.images {
        let l = resolve(reg, i, p.arch)?;
        tracing::info!(image = %i.name, reference = %i.reference.get_ref(), manifest = %l.manifest.digest, size = l.total_size, "resolved");
        images.push(l);
    }
    Ok(LockFile {
        schema: LOCK_SCHEMA,
        profile: p.name.clone(),
        arch: p.arch.as_str().into(),
        images_sha256: images_sha256(p),
        images,
        debian: Some(LockedDebian::of(p)),
    })
}

/// Writes a lock file (pretty JSON, atomically).
pub fn write(path: &Path, lf: &LockFile) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(lf)?;
    text.push(b'\n');
    nodeimage_core::files::atomic_write(path, &text, 0o644)
        .with_context(|| format!("writing {}", path.display()))
}

/// `nodeimage lock`.
#[derive(clap::Args, Debug, Clone)]
pub struct LockArgs {
    /// The profile whose images to resolve (the lock is written beside it as NAME.lock.json).
    pub profile: PathBuf,
    #[command(flatten)]
    pub registry: RegistryOptions,
    /// Only check that the lock file exists and matches the profile (no network).
    #[arg(long)]
    pub check: bool,
}

/// Runs `nodeimage lock`.
pub fn run_lock(args: &LockArgs) -> Result<()> {
    let lp = profile::load(&args.profile)?;
    if args.check {
        return match check(&lp)? {
            Some(lf) => {
                println!(
                    "{}: up to date ({} images)",
                    lock_path(&lp.path).display(),
                    lf.images.len()
                );
                Ok(())
            }
            None => {
                println!("{}: no images, no lock needed", lp.path.display());
                Ok(())
            }
        };
    }
    let path = lock_path(&lp.path);
    if lp.profile.images.is_empty() {
        println!("{}: no images, no lock needed", lp.path.display());
        return Ok(());
    }
    let reg = Registry::new(&args.registry)?;
    let lf = lock_profile(&lp, &reg)?;
    write(&path, &lf)?;
    for l in &lf.images {
        println!(
            "{:<24} {:<56} {} {} bytes",
            l.name, l.reference, l.manifest.digest, l.total_size
        );
    }
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_path_is_beside_the_profile() {
        assert_eq!(
            lock_path(Path::new("profiles/k8s-1.36-x86_64.toml")),
            PathBuf::from("profiles/k8s-1.36-x86_64.lock.json")
        );
    }
}

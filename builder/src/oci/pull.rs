//! The build's image stage: every locked image is pulled by digest (index, manifest,
//! config and layers through [`Fetcher`], verified while streaming into the
//! content-addressed cache, so a tampered blob is refused and leaves nothing behind)
//! and written as an OCI image-layout archive, plus `images.json` for firstboot.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nodeimage_core::images::{BakedImage, BakedImages, BAKED_IMAGES_SCHEMA, IMAGES_INDEX};

use super::layout;
use super::lock::{BlobRef, LockFile, LockedImage};
use super::media::{self, Descriptor, Platform};
use super::reference::Reference;
use super::registry::{Endpoint, Registry, RegistryOptions};
use crate::fetch::{Cache, Digest, FetchError, FetchOptions, FetchRequest, Fetcher};
use crate::profile::{Image, LoadedProfile};

/// One image ready for the root filesystem.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// Its `images.json` entry.
    pub baked: BakedImage,
    /// The archive in the output directory.
    pub archive: PathBuf,
    /// sha256 of the archive.
    pub archive_sha256: String,
}

/// Everything the image stage produced.
#[derive(Debug, Clone)]
pub struct PulledImages {
    pub images: Vec<PulledImage>,
    /// `images.json` in the output directory.
    pub index: PathBuf,
}

impl PulledImage {
    /// The image's `manifest.json` record.
    pub fn record(&self) -> crate::manifest::ImageRecord {
        let b = &self.baked;
        crate::manifest::ImageRecord {
            name: b.name.clone(),
            reference: b.reference.clone(),
            digest: b.digest.clone(),
            manifest_digest: b.manifest_digest.clone(),
            platform: b.platform.clone(),
            role: b.role.to_string(),
            purpose: b.purpose.clone(),
            install: format!("{}/{}", nodeimage_core::images::IMAGES_DIR, b.file),
            archive_sha256: self.archive_sha256.clone(),
            size: b.size,
        }
    }
}

impl PulledImages {
    /// The archives and `images.json` as root filesystem installs (mode 0644).
    pub fn installs(&self) -> Vec<crate::rootfs::Install> {
        let dir = nodeimage_core::images::IMAGES_DIR;
        let mut v: Vec<crate::rootfs::Install> = self
            .images
            .iter()
            .map(|i| crate::rootfs::Install {
                source: i.archive.clone(),
                dest: format!("{dir}/{}", i.baked.file),
                mode: 0o644,
            })
            .collect();
        v.push(crate::rootfs::Install {
            source: self.index.clone(),
            dest: format!("{dir}/{IMAGES_INDEX}"),
            mode: 0o644,
        });
        v
    }

    pub fn records(&self) -> Vec<crate::manifest::ImageRecord> {
        self.images.iter().map(PulledImage::record).collect()
    }
}

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The build's fetch options (file mirrors, `mirror_only`, `offline`, retries).
    pub fetch: FetchOptions,
    pub registry: RegistryOptions,
    /// Timestamp of every archive entry.
    pub epoch: i64,
}

/// Pulls every image of `lp` (as locked in `lock`) into `cache` and writes
/// `<out_dir>/<name>.tar` and `<out_dir>/images.json`.
pub fn pull_images(
    lp: &LoadedProfile,
    lock: &LockFile,
    cache: &Cache,
    opts: &PullOptions,
    out_dir: &Path,
) -> Result<PulledImages> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let registry = Registry::new(&opts.registry)?;
    let mut images = Vec::new();
    for image in &lp.profile.images {
        let locked = lock
            .images
            .iter()
            .find(|l| l.name == image.name)
            .with_context(|| {
                format!(
                    "image `{}` is not in the lock (checked before; a bug)",
                    image.name
                )
            })?;
        let t = std::time::Instant::now();
        let pulled = pull_one(image, locked, &registry, cache, opts, out_dir)?;
        tracing::info!(image = %image.name, reference = %pulled.baked.reference, digest = %pulled.baked.digest,
            size = pulled.baked.size, seconds = t.elapsed().as_secs_f64(), "image archived");
        images.push(pulled);
    }
    let index = out_dir.join(IMAGES_INDEX);
    let baked = BakedImages {
        schema: BAKED_IMAGES_SCHEMA,
        images: images.iter().map(|i| i.baked.clone()).collect(),
    };
    let mut text = serde_json::to_vec_pretty(&baked)?;
    text.push(b'\n');
    nodeimage_core::files::atomic_write(&index, &text, 0o644)
        .with_context(|| format!("writing {}", index.display()))?;
    Ok(PulledImages { images, index })
}

fn is_unauthorized(e: &FetchError) -> bool {
    match e {
        FetchError::HttpStatus { status, .. } => *status == 401,
        FetchError::Several(v) => v.iter().any(is_unauthorized),
        FetchError::AllSourcesFailed { failures, .. } => failures.iter().any(is_unauthorized),
        _ => false,
    }
}

/// Where to fetch a blob of a kind (`manifests`/`blobs`) from: URL and Authorization.
type Locator<'a> = dyn FnMut(&BlobRef, &'static str) -> Result<(String, Option<String>)> + 'a;

/// One fetch request per blob the cache lacks, at `url_of(blob, kind)`.
fn requests(
    image: &Image,
    missing: &[(&BlobRef, &'static str)],
    url_of: &mut Locator,
) -> Result<Vec<FetchRequest>> {
    missing
        .iter()
        .map(|(b, kind)| {
            let (url, auth) = url_of(b, kind)?;
            let mut req = FetchRequest::new(url, b.digest)
                .with_size(b.size)
                .with_label(format!("{} {}", image.name, &b.digest.hex()[..12]));
            if *kind == "manifests" {
                req = req.with_header("Accept", media::accept_header());
            }
            if let Some(a) = auth {
                req = req.with_header("Authorization", a);
            }
            Ok(req)
        })
        .collect()
}

/// Fetches the blobs of `locked` that the cache lacks: from file mirrors (`--mirror`,
/// laid out as `<mirror>/<registry>/v2/<repo>/blobs/<digest>`), then from each registry
/// endpoint in turn (registry mirrors first).
fn fetch_missing(
    image: &Image,
    r: &Reference,
    locked: &LockedImage,
    registry: &Registry,
    cache: &Cache,
    opts: &PullOptions,
) -> Result<()> {
    let missing = || -> Vec<(&BlobRef, &'static str)> {
        locked
            .blobs()
            .into_iter()
            .filter(|(b, _)| cache.get(&b.digest).is_none())
            .collect()
    };
    if missing().is_empty() {
        tracing::debug!(image = %image.name, "every blob is cached");
        return Ok(());
    }
    let endpoints: Vec<Endpoint> = registry.endpoints(r, false);
    let upstream = endpoints
        .last()
        .expect("the registry itself is always listed")
        .clone();
    let canonical = |b: &BlobRef, kind: &'static str| {
        Ok((
            upstream.url(&r.repository, kind, &b.digest.to_string()),
            None,
        ))
    };
    let mut errors = Vec::new();

    // File mirrors and the cache only: no network.
    if !opts.fetch.mirrors.is_empty() || opts.fetch.offline || opts.fetch.mirror_only {
        let local = Fetcher::new(
            cache.clone(),
            FetchOptions {
                mirror_only: true,
                ..opts.fetch.clone()
            },
        )?;
        match local.fetch_all(&requests(image, &missing(), &mut { canonical })?) {
            Ok(_) => return Ok(()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if opts.fetch.offline {
        bail!(
            "image `{}` ({}): {}",
            image.name,
            image.reference.get_ref(),
            errors.join("\n  ")
        );
    }
    // Registry mirrors, then (unless --mirror-only) the registry; redirects are followed
    // and authenticated by the registry client, the fetcher downloads from where they end.
    let network = FetchOptions {
        mirrors: Vec::new(),
        mirror_only: false,
        ..opts.fetch.clone()
    };
    let fetcher = Fetcher::new(cache.clone(), network)?;
    for ep in endpoints
        .iter()
        .filter(|e| e.mirror || !opts.fetch.mirror_only)
    {
        for attempt in 0..2 {
            let mut locate = |b: &BlobRef, kind: &'static str| {
                registry.locate(ep, &r.repository, kind, &b.digest.to_string())
            };
            let reqs = match requests(image, &missing(), &mut locate) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(format!("{ep}: {e:#}"));
                    break;
                }
            };
            match fetcher.fetch_all(&reqs) {
                Ok(_) => return Ok(()),
                Err(e) if attempt == 0 && is_unauthorized(&e) => {
                    // A token expired during a long pull: get new ones and go on.
                    registry.forget_authorization(&r.repository);
                }
                Err(e) => {
                    tracing::warn!(image = %image.name, endpoint = %ep, error = %e, "pulling from this endpoint failed");
                    errors.push(format!("{ep}: {e}"));
                    break;
                }
            }
        }
    }
    if opts.fetch.mirror_only && !endpoints.iter().any(|e| e.mirror) {
        errors.push(format!("--mirror-only is set: {} was not contacted; pass --registry-mirror {}=URL or --mirror DIR", upstream, r.registry));
    }
    bail!(
        "image `{}` ({}): {}",
        image.name,
        image.reference.get_ref(),
        errors.join("\n  ")
    )
}

fn pull_one(
    image: &Image,
    locked: &LockedImage,
    registry: &Registry,
    cache: &Cache,
    opts: &PullOptions,
    out_dir: &Path,
) -> Result<PulledImage> {
    let r = Reference::parse(image.reference.get_ref())
        .map_err(|e| anyhow!("image `{}`: {e}", image.name))?;
    fetch_missing(image, &r, locked, registry, cache, opts)?;
    let path_of = |d: &Digest| {
        cache
            .get(d)
            .with_context(|| format!("{d} vanished from the cache"))
    };

    // The lock is a file people can edit: the digest-verified manifest and index decide.
    let manifest: media::Manifest = serde_json::from_slice(&std::fs::read(path_of(
        &locked.manifest.digest,
    )?)?)
    .with_context(|| {
        format!(
            "image `{}`: parsing manifest {}",
            image.name, locked.manifest.digest
        )
    })?;
    let listed: Vec<String> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    let locked_layers: Vec<String> = locked.layers.iter().map(|l| l.digest.to_string()).collect();
    if manifest.config.digest != locked.config.digest.to_string() || listed != locked_layers {
        bail!("image `{}`: the lock's config/layers do not match manifest {}; run nodeimage lock again", image.name, locked.manifest.digest);
    }
    if let Some(index) = &locked.index {
        let idx: media::Index = serde_json::from_slice(&std::fs::read(path_of(&index.digest)?)?)
            .with_context(|| format!("image `{}`: parsing index {}", image.name, index.digest))?;
        if !idx
            .manifests
            .iter()
            .any(|m| m.digest == locked.manifest.digest.to_string())
        {
            bail!(
                "image `{}`: index {} does not list manifest {}; run nodeimage lock again",
                image.name,
                index.digest,
                locked.manifest.digest
            );
        }
    }

    let blobs: Vec<(Digest, PathBuf)> = locked
        .blobs()
        .into_iter()
        .map(|(b, _)| Ok((b.digest, path_of(&b.digest)?)))
        .collect::<Result<_>>()?;
    let name = r.to_string();
    let annotations = [
        (media::ANNOTATION_CONTAINERD_NAME.to_string(), name.clone()),
        (media::ANNOTATION_REF_NAME.to_string(), name.clone()),
    ]
    .into_iter()
    .collect();
    let (os, arch) = locked
        .platform
        .split_once('/')
        .unwrap_or(("linux", &locked.platform));
    let top = match &locked.index {
        Some(i) => Descriptor {
            media_type: i.media_type.clone(),
            digest: i.digest.to_string(),
            size: i.size,
            platform: None,
            annotations,
        },
        None => Descriptor {
            media_type: locked.manifest.media_type.clone(),
            digest: locked.manifest.digest.to_string(),
            size: locked.manifest.size,
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: None,
            }),
            annotations,
        },
    };
    let file = format!("{}.tar", image.name);
    let archive = out_dir.join(&file);
    layout::write_archive(&archive, &blobs, &top, opts.epoch)?;
    let (archive_sha256, size) = sha256_file(&archive)?;
    Ok(PulledImage {
        baked: BakedImage {
            name: image.name.clone(),
            reference: name,
            digest: locked.top_digest().to_string(),
            manifest_digest: locked.manifest.digest.to_string(),
            platform: locked.platform.clone(),
            role: image.role,
            purpose: image.purpose.clone(),
            file,
            size,
        },
        archive,
        archive_sha256,
    })
}

fn sha256_file(path: &Path) -> Result<(String, u64)> {
    use sha2::Digest as _;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((hex::encode(h.finalize()), n))
}

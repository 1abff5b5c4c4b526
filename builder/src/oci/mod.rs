//! Container images: pinned in profiles, resolved to per-architecture digests by
//! `nodeimage lock`, pulled by digest at build time and baked into the root filesystem
//! as OCI image-layout archives that firstboot imports into containerd.
//!
//! ```text
//! profiles/NAME.toml   [[image]] name, reference (tag), digest (index, optional), role, purpose
//!      │  nodeimage lock   (registry API: tag/index → linux/<arch> manifest → config, layers)
//!      ▼
//! profiles/NAME.lock.json   per image: index, manifest, config, layer digests + sizes
//!      │  nodeimage build  (refuses a missing or stale lock; blobs by digest via fetch)
//!      ▼
//! /usr/share/nodeimage/images/<name>.tar + images.json   →  firstboot `images` step
//! ```
//!
//! * [`reference`]: image references with Docker's normalisation.
//! * [`media`]: manifest media types, index/manifest documents, platform choice.
//! * [`auth`]: `WWW-Authenticate` challenges and docker `config.json` credentials.
//! * [`registry`]: the distribution API client (anonymous or credentialed bearer tokens).
//! * [`lock`]: the lock file, `nodeimage lock`, and the build's staleness check.
//! * [`pull`] and [`layout`]: the build's image stage and the deterministic archives.

pub mod auth;
pub mod layout;
pub mod lock;
pub mod media;
pub mod pull;
pub mod reference;
pub mod registry;

pub use lock::{
    check as check_lock, lock_path, run_lock, LockArgs, LockError, LockFile, LockedImage,
};
pub use pull::{pull_images, PullOptions, PulledImage, PulledImages};
pub use reference::Reference;
pub use registry::{Registry, RegistryOptions};

/// Where the image archives go in the root filesystem.
pub use nodeimage_core::images::IMAGES_DIR;

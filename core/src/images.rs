//! `images.json`: the index of the container images baked into a node image. Both
//! programs use it: `nodeimage build` writes it beside the image archives, `firstboot`
//! reads it to import the archives its role needs into containerd.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::files::rooted;

/// Where the baked image archives live in the root filesystem.
pub const IMAGES_DIR: &str = "/usr/share/nodeimage/images";
/// The index of the baked images, in [`IMAGES_DIR`].
pub const IMAGES_INDEX: &str = "images.json";

/// Reading `images.json` failed.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: schema {found} (this program reads schema {BAKED_IMAGES_SCHEMA})", path.display())]
    Schema { path: PathBuf, found: u32 },
}

/// Which nodes need an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageRole {
    /// Every node (e.g. the pause image, the CNI).
    #[default]
    All,
    /// Masters only (e.g. CoreDNS and the addons scheduled on masters).
    Master,
    /// Workers only.
    Worker,
}

impl ImageRole {
    pub fn applies_to(self, role: Role) -> bool {
        match self {
            ImageRole::All => true,
            ImageRole::Master => role == Role::Master,
            ImageRole::Worker => role == Role::Worker,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ImageRole::All => "all",
            ImageRole::Master => "master",
            ImageRole::Worker => "worker",
        }
    }
}

impl std::fmt::Display for ImageRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `images.json`: the images baked into the root filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BakedImages {
    pub schema: u32,
    pub images: Vec<BakedImage>,
}

/// One baked image: an OCI image-layout archive whose `index.json` names it
/// (`io.containerd.image.name` = [`BakedImage::reference`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BakedImage {
    /// The profile's name for the image (`pause`, `coredns`, ...).
    pub name: String,
    /// The full, normalised reference containerd gets (`registry.k8s.io/pause:3.10.1`,
    /// `docker.io/rajchaudhuri/weave-kube:2.9.0`).
    pub reference: String,
    /// The digest of the image's target in the archive: the multi-arch index when the
    /// registry published one (what `ctr images ls` shows and kubelet's RepoDigests
    /// hold), else the manifest.
    pub digest: String,
    /// The digest of the manifest for this node's platform.
    pub manifest_digest: String,
    /// `linux/amd64` or `linux/arm64`.
    pub platform: String,
    pub role: ImageRole,
    /// What the image is for; `sandbox` marks the pause image (containerd's sandbox image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The archive's file name in [`IMAGES_DIR`].
    pub file: String,
    /// The archive's size in bytes.
    pub size: u64,
}

pub const BAKED_IMAGES_SCHEMA: u32 = 1;

impl BakedImages {
    /// Reads `<root>/usr/share/nodeimage/images/images.json`; `None` when the image has
    /// no baked images.
    pub fn load(root: &Path) -> Result<Option<BakedImages>, ImagesError> {
        let path = rooted(root, &format!("{IMAGES_DIR}/{IMAGES_INDEX}"));
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ImagesError::Read { path, source }),
        };
        let b: BakedImages =
            serde_json::from_slice(&text).map_err(|source| ImagesError::Parse {
                path: path.clone(),
                source,
            })?;
        if b.schema != BAKED_IMAGES_SCHEMA {
            return Err(ImagesError::Schema {
                path,
                found: b.schema,
            });
        }
        Ok(Some(b))
    }

    /// The image marked `purpose = "sandbox"` (the pause image).
    pub fn sandbox(&self) -> Option<&BakedImage> {
        self.images
            .iter()
            .find(|i| i.purpose.as_deref() == Some("sandbox"))
    }

    /// The images a node of `role` imports, in order.
    pub fn for_role(&self, role: Role) -> impl Iterator<Item = &BakedImage> {
        self.images.iter().filter(move |i| i.role.applies_to(role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_filter() {
        assert!(ImageRole::All.applies_to(Role::Worker));
        assert!(ImageRole::Master.applies_to(Role::Master));
        assert!(!ImageRole::Master.applies_to(Role::Worker));
        assert!(!ImageRole::Worker.applies_to(Role::Master));
    }
}

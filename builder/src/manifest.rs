//! `manifest.json`: what an image is made of, and what came out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a component came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArtifactRecord {
    pub name: String,
    pub version: Option<String>,
    pub url: String,
    /// `sha256:<hex>` / `sha512:<hex>` of the downloaded file.
    pub digest: String,
    pub member: Option<String>,
    pub install: String,
    pub mode: String,
    /// sha256 of the installed file and its size.
    pub installed_sha256: String,
    pub size: u64,
}

/// A container image baked into the root filesystem (`/usr/share/nodeimage/images`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    pub name: String,
    /// The normalised reference containerd names it by.
    pub reference: String,
    /// The digest the reference resolves to (the index's, else the manifest's).
    pub digest: String,
    /// The manifest for the image's platform.
    pub manifest_digest: String,
    pub platform: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Path of the OCI archive in the image, its sha256 and size.
    pub install: String,
    pub archive_sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartitionRecord {
    pub number: u32,
    pub name: String,
    pub type_guid: String,
    pub part_guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub size_bytes: u64,
    pub filesystem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutputRecord {
    pub file: String,
    pub format: String,
    pub size: u64,
    pub sha256: String,
}

/// The manifest. The copy inside the image (ESP `/nodeimage/manifest.json`) has no
/// `partitions` or `outputs`, which do not exist yet when it is written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub schema: u32,
    pub profile: ProfileRecord,
    pub source_date_epoch: i64,
    /// sha256 over every build input; the image's GUIDs and serials derive from it.
    pub inputs_sha256: String,
    pub kernel: KernelRecord,
    /// The root filesystem and its dm-verity hash tree.
    pub root: RootRecord,
    pub firstboot: FileRecord,
    pub artifacts: Vec<ArtifactRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageRecord>,
    pub debian: DebianRecord,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_guid: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProfileRecord {
    pub name: String,
    pub arch: String,
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelRecord {
    pub version: String,
    pub cmdline: String,
    pub vmlinuz_sha256: String,
    pub initrd_sha256: String,
}

/// The read-only root: the erofs image and the dm-verity hash tree over it, whose root
/// hash the kernel command line carries (`nodeimage.verity=`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RootRecord {
    /// sha256 and size of the erofs image (the root partition's data; the partition is
    /// that rounded up to a MiB).
    pub erofs_sha256: String,
    pub erofs_size: u64,
    pub verity: VerityRecord,
}

/// A dm-verity hash tree as `veritysetup format` would write it (format 1, normal hash
/// type, superblock in the hash partition's first block).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerityRecord {
    pub root_hash: String,
    pub salt: String,
    pub hash_algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    /// Size of the hash area (superblock and tree) in the verity partition.
    pub hash_size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileRecord {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DebianRecord {
    pub suite: String,
    pub mirror: String,
    /// The apt sources the base was built from (the suite, its updates and security).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// The Debian archive snapshot, when the profile pins one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Each Release file apt used → its `Date:`: the archive state the packages are from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub releases: BTreeMap<String, String>,
    pub variant: String,
    /// Package -> version, as installed.
    pub packages: BTreeMap<String, String>,
}

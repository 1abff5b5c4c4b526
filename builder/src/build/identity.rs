//! The identity of a build: one digest over every input, from which every GUID, volume
//! serial and the root's PARTUUID derive, and the manifest that records the inputs.

use anyhow::Result;
use sha2::{Digest as _, Sha256};

use super::payload::{Artifacts, Firstboot, Images};
use super::tree::{Base, Overlays, RootTree};
use super::Build;
use crate::manifest::*;
use crate::profile::Arch;

/// The build's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// sha256 (hex) over every input; see [`Identity::new`].
    pub inputs: String,
}

/// Kernel arguments every image gets before the profile's own: slot A's root through
/// dm-verity (`layout::verity::kernel_args`: the root hash, the hash partition and the
/// number of data blocks, on this line, which the boot chain protects: the loader entry
/// on the ESP now, a signed UKI later) and the image's version. (A failing initramfs
/// reboots instead of opening a shell through `panic=30` in the initramfs' own config,
/// `overlays/base/etc/initramfs-tools/conf.d/nodeimage-panic`; a damaged primary GPT is
/// restored from the backup by the UEFI firmware before the kernel reads it, as the UEFI
/// specification requires, and by the state setup.)
fn base_cmdline(id: &Identity, b: &Build, root: &RootRecord) -> String {
    nodeimage_core::layout::verity::kernel_args(
        &id.root_partition().to_string(),
        &id.verity_partition().to_string(),
        &root.verity.root_hash,
        root.verity.data_blocks,
        &id.version(b),
    )
}

impl Identity {
    /// Hash of every input: profile text, Debian base spec and resolved package versions,
    /// artifact digests, image digests, firstboot, overlay contents, epoch.
    pub fn new(
        b: &Build,
        base: &Base,
        tree: &RootTree,
        artifacts: &Artifacts,
        images: &Images,
        firstboot: &Firstboot,
        overlays: &Overlays,
    ) -> Result<Identity> {
        let mut h = Sha256::new();
        h.update(b"nodeimage-inputs-v1\0");
        h.update(b.lp.text.as_bytes());
        h.update(serde_json::to_vec(&base.spec)?);
        h.update(serde_json::to_vec(&tree.packages)?);
        h.update(serde_json::to_vec(&artifacts.records)?);
        if !images.records.is_empty() {
            h.update(serde_json::to_vec(&images.records)?);
        }
        h.update(firstboot.record.sha256.as_bytes());
        overlays.hash_into(&mut h)?;
        if let Some(k) = &b.update_key {
            h.update(b"update-key\0");
            h.update(k.to_pem().as_bytes());
        }
        h.update(b.epoch.to_le_bytes());
        Ok(Identity {
            inputs: hex::encode(h.finalize()),
        })
    }

    /// The GUID of `what` (a partition, a filesystem, the disk) in this build.
    pub fn guid(&self, what: &str) -> uuid::Uuid {
        crate::disk::derive_guid(what, self.inputs.as_bytes())
    }

    /// The root partition's GUID (the kernel finds the root by it).
    pub fn root_partition(&self) -> uuid::Uuid {
        self.guid("root-partition")
    }

    /// The image's version: when it was built and from what.
    pub fn version(&self, b: &Build) -> String {
        version_of(b.epoch, &self.inputs)
    }

    /// The verity partition's GUID (the initramfs finds the hash tree by it).
    pub fn verity_partition(&self) -> uuid::Uuid {
        self.guid("root-verity-partition")
    }

    /// Slot B's root and verity partitions (empty until an update writes them).
    pub fn slot_b_partitions(&self) -> (uuid::Uuid, uuid::Uuid) {
        (
            self.guid("root-b-partition"),
            self.guid("root-b-verity-partition"),
        )
    }

    /// The salt of the root's hash tree: derived from the identity, so a rebuild is
    /// byte-identical and two builds never share one.
    pub fn verity_salt(&self) -> Vec<u8> {
        Sha256::new()
            .chain_update(b"nodeimage-verity-salt\0")
            .chain_update(self.inputs.as_bytes())
            .finalize()
            .to_vec()
    }

    /// The kernel command line: root, read-only, erofs, its dm-verity parameters, then
    /// the profile's arguments.
    pub fn cmdline(&self, b: &Build, root: &RootRecord) -> String {
        format!(
            "{} {}",
            base_cmdline(self, b, root),
            b.lp.profile.kernel.cmdline
        )
        .trim()
        .to_string()
    }
}

/// An image's version: `<SOURCE_DATE_EPOCH>-<inputs sha256[..12]>`.
pub fn version_of(epoch: i64, inputs_sha256: &str) -> String {
    format!("{epoch}-{}", &inputs_sha256[..12.min(inputs_sha256.len())])
}

/// The GPT type of the root partition for `arch`.
pub fn root_partition_type(arch: Arch) -> uuid::Uuid {
    use crate::disk::type_guid;
    match arch {
        Arch::X86_64 => type_guid::ROOT_X86_64,
        Arch::Aarch64 => type_guid::ROOT_ARM64,
    }
}

/// The GPT type of the root's verity partition for `arch`.
pub fn verity_partition_type(arch: Arch) -> uuid::Uuid {
    use crate::disk::type_guid;
    match arch {
        Arch::X86_64 => type_guid::ROOT_X86_64_VERITY,
        Arch::Aarch64 => type_guid::ROOT_ARM64_VERITY,
    }
}

/// The manifest as the ESP carries it: every input, no partitions or outputs yet.
#[allow(clippy::too_many_arguments)]
pub fn manifest(
    b: &Build,
    id: &Identity,
    base: &Base,
    tree: &RootTree,
    artifacts: &Artifacts,
    images: &Images,
    firstboot: &Firstboot,
    root: &RootRecord,
) -> Result<Manifest> {
    let p = &b.lp.profile;
    let (vmlinuz_sha256, _) = super::sha256_file(&tree.kernel)?;
    let (initrd_sha256, _) = super::sha256_file(&tree.initrd)?;
    Ok(Manifest {
        schema: 1,
        profile: ProfileRecord {
            name: p.name.clone(),
            arch: p.arch.as_str().into(),
            path: b.profile_path.display().to_string(),
            sha256: hex::encode(Sha256::digest(b.lp.text.as_bytes())),
        },
        source_date_epoch: b.epoch,
        inputs_sha256: id.inputs.clone(),
        kernel: KernelRecord {
            version: tree.kernel_version.clone(),
            cmdline: id.cmdline(b, root),
            vmlinuz_sha256,
            initrd_sha256,
        },
        root: root.clone(),
        firstboot: firstboot.record.clone(),
        artifacts: artifacts.records.clone(),
        images: images.records.clone(),
        debian: DebianRecord {
            suite: p.debian.suite.clone(),
            mirror: base.spec.mirror.clone(),
            sources: base.spec.sources.clone(),
            snapshot: base.spec.snapshot.clone(),
            releases: base.tar.record.releases.clone(),
            variant: p.debian.variant.clone(),
            packages: tree.packages.clone(),
        },
        partitions: Vec::new(),
        disk_guid: None,
        outputs: Vec::new(),
    })
}

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

/// Kernel arguments every image gets before the profile's own. (A failing initramfs
/// reboots instead of opening a shell through `panic=30` in the initramfs' own config,
/// `overlays/base/etc/initramfs-tools/conf.d/nodeimage-panic`; a damaged primary GPT is
/// restored from the backup by the UEFI firmware before the kernel reads it, as the UEFI
/// specification requires, and by the state setup.)
fn base_cmdline(root_partuuid: &uuid::Uuid) -> String {
    format!("root=PARTUUID={root_partuuid} ro rootfstype=erofs")
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

    /// The kernel command line: root, read-only, erofs, then the profile's arguments.
    pub fn cmdline(&self, b: &Build) -> String {
        format!(
            "{} {}",
            base_cmdline(&self.root_partition()),
            b.lp.profile.kernel.cmdline
        )
        .trim()
        .to_string()
    }
}

/// The GPT name and type of the root partition for `arch`.
pub fn root_partition_kind(arch: Arch) -> (&'static str, uuid::Uuid) {
    use crate::disk::type_guid;
    match arch {
        Arch::X86_64 => ("root-x86-64", type_guid::ROOT_X86_64),
        Arch::Aarch64 => ("root-arm64", type_guid::ROOT_ARM64),
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
            cmdline: id.cmdline(b),
            vmlinuz_sha256,
            initrd_sha256,
        },
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

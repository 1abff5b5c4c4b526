//! Profiles (`profiles/*.toml`): what one node image is made of.
//!
//! Parsing is strict: unknown keys and bad values are errors naming the file, the line
//! and column, and the expected form.

mod validate;

pub use validate::parse;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Target architecture of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    Aarch64,
}

impl Arch {
    /// Debian's name (`dpkg --print-architecture`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }
    /// The EFI architecture suffix (`BOOTX64.EFI`, `systemd-bootx64.efi`).
    pub fn efi(self) -> &'static str {
        match self {
            Arch::X86_64 => "x64",
            Arch::Aarch64 => "aa64",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
    /// Linux's `uname -m` for this arch equals its name here.
    pub fn is_host(self) -> bool {
        std::env::consts::ARCH == self.as_str()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub arch: Arch,
    #[serde(default)]
    pub description: String,
    pub debian: Debian,
    #[serde(default)]
    pub kernel: Kernel,
    /// Directories under `overlays/` copied over the root filesystem, in order.
    #[serde(default)]
    pub overlays: Vec<String>,
    /// Pinned files installed into the root filesystem.
    #[serde(default, rename = "artifact")]
    pub artifacts: Vec<Artifact>,
    /// Container images baked into the image, pulled by digest from `<profile>.lock.json`
    /// (see `crate::oci`; `nodeimage lock` writes the lock).
    #[serde(default, rename = "image")]
    pub images: Vec<Image>,
    #[serde(default)]
    pub disk: DiskSettings,
    #[serde(default)]
    pub outputs: Outputs,
    #[serde(default)]
    pub update: UpdateSettings,
}

/// `[update]`: image updates through signed bundles.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettings {
    /// The Ed25519 public key (`PUBLIC KEY` PEM, from `nodeimage keygen`; relative to the
    /// profile's directory) whose bundles the nodes accept. Without it nodes accept no
    /// update bundle.
    #[serde(default)]
    pub public_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debian {
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// Debian mirror URL. When absent, the build machine's own apt sources are used.
    #[serde(default)]
    pub mirror: Option<String>,
    /// The security archive's URL (`<suite>-security`). When absent, the build machine's
    /// apt sources' security archive, else `<mirror>-security`.
    #[serde(default)]
    pub security_mirror: Option<String>,
    /// Build the base from the Debian archive snapshot of this moment
    /// (`20261201T000000Z`, see snapshot.debian.org): the package set is then a recorded,
    /// reproducible input, updates and security fixes up to that moment included.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Where snapshots are served: `<snapshot_url>/debian/<ts>/` and
    /// `<snapshot_url>/debian-security/<ts>/`.
    #[serde(default = "default_snapshot_url")]
    pub snapshot_url: String,
    /// Refuse (unless `nodeimage build --allow-stale-base`) a Debian base whose package
    /// set is older than this many days: since its snapshot, else since the newest
    /// Release file it was built from.
    #[serde(default)]
    pub max_base_age_days: Option<u32>,
    /// mmdebstrap variant (`minbase`, `important`, ...).
    #[serde(default = "default_variant")]
    pub variant: String,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Packages on top of the variant. The kernel, systemd and the boot pieces the image
    /// needs are always added (see `rootfs::required_packages`).
    #[serde(default)]
    pub packages: Vec<String>,
}

fn default_snapshot_url() -> String {
    "http://snapshot.debian.org/archive".into()
}
fn default_variant() -> String {
    "minbase".into()
}
fn default_components() -> Vec<String> {
    vec!["main".into()]
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Extra kernel command line (the root= and ro arguments are added by the build).
    #[serde(default)]
    pub cmdline: String,
}

/// A pinned file: fetched by URL, verified by hash, optionally taken out of a tar archive,
/// installed at a path with a mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    pub url: Spanned<String>,
    #[serde(default)]
    pub sha256: Option<Spanned<String>>,
    #[serde(default)]
    pub sha512: Option<Spanned<String>>,
    /// Path of a member inside a tar(.gz) archive.
    #[serde(default)]
    pub member: Option<String>,
    /// Absolute install path in the root filesystem.
    pub install: Spanned<String>,
    /// Octal mode, e.g. "0755".
    #[serde(default = "default_mode")]
    pub mode: Spanned<String>,
}

fn default_mode() -> Spanned<String> {
    Spanned::new(0..0, "0755".to_string())
}

impl Artifact {
    /// `sha256:<hex>` or `sha512:<hex>` (validated at load time).
    pub fn digest_string(&self) -> String {
        match (&self.sha256, &self.sha512) {
            (Some(h), _) => format!("sha256:{}", h.get_ref()),
            (None, Some(h)) => format!("sha512:{}", h.get_ref()),
            (None, None) => unreachable!("validated: every artifact has a hash"),
        }
    }
    pub fn mode_bits(&self) -> u32 {
        u32::from_str_radix(self.mode.get_ref(), 8).expect("validated")
    }
}

/// A container image baked into the root filesystem as an OCI archive and imported into
/// containerd on first boot.
///
/// `digest`, when given, pins what `reference` points to: the multi-arch index (manifest
/// list) digest when the registry publishes one (as the registry.k8s.io promoter
/// manifests record them), else the single-platform manifest's digest. The per-arch
/// manifest, config and layer digests are not written here but in the lock file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Short name: the archive's file name and the lock file's key (`[a-z0-9._-]+`).
    pub name: String,
    /// `registry/repository:tag` (no registry means Docker Hub, as in `docker pull`).
    pub reference: Spanned<String>,
    #[serde(default)]
    pub digest: Option<Spanned<String>>,
    /// Which nodes import the image: `all` (default), `master` or `worker`.
    #[serde(default)]
    pub role: nodeimage_core::images::ImageRole,
    /// What the image is for (`[a-z0-9-]+`); `sandbox` makes it containerd's sandbox
    /// (pause) image and needs `role = "all"`.
    #[serde(default)]
    pub purpose: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSettings {
    /// EFI system partition size (FAT32).
    #[serde(default = "default_esp_mib")]
    pub esp_size_mib: u64,
    /// NODECONFIG partition size (FAT).
    #[serde(default = "default_config_mib")]
    pub config_size_mib: u64,
    /// Size of each of the two root slots (A holds this image's root, B the next
    /// update's) [default: 1.5 times this image's root, rounded up to 64 MiB]. Updates
    /// must fit: give room for growth here.
    #[serde(default)]
    pub root_slot_mib: Option<u64>,
}

impl Default for DiskSettings {
    fn default() -> Self {
        DiskSettings {
            esp_size_mib: default_esp_mib(),
            config_size_mib: default_config_mib(),
            root_slot_mib: None,
        }
    }
}
fn default_esp_mib() -> u64 {
    256
}
fn default_config_mib() -> u64 {
    16
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// The raw GPT disk image.
    Raw,
    /// The raw image compressed with zstd.
    RawZst,
    /// qcow2 (QEMU, OpenStack, libvirt), converted by `qemu-img` (Debian qemu-utils).
    Qcow2,
    /// A fixed VHD for Azure: the raw disk (a whole number of MiB) and a VHD footer.
    Vhd,
    /// A GCE image: the disk grown to a whole number of GiB as `disk.raw` in a gzip'd
    /// sparse oldgnu tar (`<name>.gce.tar.gz`).
    Gce,
    /// Network boot files in `pxe/`: kernel, initrd, the erofs root image and an iPXE
    /// script that pins the root image's SHA-256 (`builder/src/build/pxe.rs`).
    Pxe,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    #[serde(default = "default_formats")]
    pub formats: Vec<OutputFormat>,
}

impl Default for Outputs {
    fn default() -> Self {
        Outputs {
            formats: default_formats(),
        }
    }
}
fn default_formats() -> Vec<OutputFormat> {
    vec![OutputFormat::Raw, OutputFormat::RawZst]
}

/// A profile error: file, line and column, and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ProfileError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A loaded profile with the path it came from.
#[derive(Debug, Clone)]
pub struct LoadedProfile {
    pub path: PathBuf,
    /// The exact bytes of the profile (hashed into the build identity).
    pub text: String,
    pub profile: Profile,
}

impl LoadedProfile {
    /// `[update] public_key`, read and parsed; errors name the profile and the field.
    pub fn update_key(&self) -> anyhow::Result<Option<nodeimage_core::bundle::PublicKey>> {
        let Some(rel) = &self.profile.update.public_key else {
            return Ok(None);
        };
        let path = self.path.parent().unwrap_or(Path::new(".")).join(rel);
        let what = format!(
            "{}: update.public_key {}",
            self.path.display(),
            path.display()
        );
        let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        Ok(Some(nodeimage_core::bundle::PublicKey::from_pem(
            &text, &what,
        )?))
    }

    /// Directory of overlays: `<profile dir>/../overlays`.
    pub fn overlays_dir(&self) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        dir.join("..").join("overlays")
    }
}

pub fn load(path: &Path) -> anyhow::Result<LoadedProfile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading profile {}: {e}", path.display()))?;
    let profile = parse(&path.display().to_string(), &text)?;
    Ok(LoadedProfile {
        path: path.to_path_buf(),
        text,
        profile,
    })
}

//! Data sources: where a node finds its user data (a native node config or an Ignition
//! config) and the facts its platform knows about it (hostname, instance id, addresses).
//!
//! # Public API
//!
//! ```no_run
//! use firstboot::source::{acquire, Platform, SourceContext};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // `firstboot --root / --platform qemu`:
//! let ctx = SourceContext::from_system("/".as_ref(), Some(Platform::Qemu))?; // reads <root>/proc/cmdline
//! let acquired = acquire(&ctx)?; // finds, fetches, parses, stages; writes nothing
//! println!("{} from {} in {:?}", acquired.node_config.role.as_str(), acquired.source, acquired.elapsed);
//! if let Some(ign) = &acquired.ignition {
//!     let report = ign.apply("/".as_ref())?; // all-or-nothing writes under the root prefix
//!     println!("{} files written", report.written.len());
//! }
//! # Ok(()) }
//! ```
//!
//! * [`SourceContext`]: the root prefix, the kernel command line, the platform override,
//!   base-URL overrides per platform, the devices to probe ([`DeviceSet`]) and the
//!   [`Timeouts`].
//! * [`acquire`] returns an [`Acquired`]: the source's name, its [`Metadata`], the parsed
//!   [`NodeConfig`], the staged Ignition config if the user data was Ignition, the sources
//!   passed over and the time it took. Nothing is written by `acquire`.
//! * [`crate::ignition::StagedIgnition::apply`] writes a staged Ignition config under a
//!   root and returns an [`crate::ignition::ApplyReport`].
//!
//! # Order
//!
//! 1. `kernel-cmdline-url`: `firstboot.config_url=` on the kernel command line. When
//!    present it is the only source (the operator asked for it; a failure is an error,
//!    never a fallback).
//! 2. `nodeconfig-partition`: the image's own FAT partition labelled `NODECONFIG` holding
//!    `node.yaml` (written into this very disk, so it wins over the platform).
//! 3. The platform's own sources. The platform is `--platform` (CLI), else
//!    `firstboot.platform=` (kernel command line), else SMBIOS/DMI, else `metal`:
//!    * `ec2`: IMDSv2 · `gcp`: computeMetadata/v1 · `azure`: IMDS userData, then the OVF
//!      custom data (`azure-ovf`) · `openstack`: config drive (`openstack-config-drive`),
//!      then the metadata service (`openstack-metadata`) · `digitalocean`, `hetzner`:
//!      their metadata services · `qemu`: fw_cfg (`qemu-fw-cfg`) · `metal`: none.
//! 4. Local fallbacks not tried yet, in this order: `qemu-fw-cfg`, `nocloud` (label
//!    `cidata`), `openstack-config-drive` (label `config-2`).
//!
//! A source that is not there (no device with that label, connection refused, no fw_cfg
//! item) or that is there without user data (404, empty) is recorded and the next one is
//! tried. Any other failure (HTTP 401/403, a timeout, a hash mismatch, unparseable user
//! data) stops the search: a source that answers wrongly is never silently skipped.
//! [`Acquired::metadata`] comes from the source that supplied the user data.
//!
//! # Network behaviour
//!
//! Every HTTP request has a timeout ([`Timeouts::request`], default 5 s); 5xx, 429,
//! timeouts and network errors are retried with exponential backoff (200 ms doubling up
//! to 5 s) until the source's deadline ([`Timeouts::deadline`], default 60 s), after which
//! the source fails with the last status or a timeout. "Connection refused" from a
//! metadata service is an immediate "not present". Proxies from the environment are not
//! used. Base URLs default to `http://169.254.169.254` and are overridable per platform
//! ([`SourceContext::with_endpoint`]).
//!
//! # Kernel arguments
//!
//! * `firstboot.platform=ec2|gcp|azure|openstack|digitalocean|hetzner|qemu|metal`
//!   (`aws`, `gce`, `none` are accepted aliases)
//! * `firstboot.config_url=http(s)://…`, with `{mac}`, `{uuid}`, `{serial}` placeholders
//!   (see [`MachineIds`]), values percent-encoded
//! * `firstboot.config_sha256=<64 hex digits>`: the fetched document must match
//!
//! # User data
//!
//! Detected by content ([`userdata`]): a native node config (strict YAML) or an Ignition
//! config v3.0.0–v3.6.0 carrying the node config at
//! [`nodeimage_core::config::NODE_CONFIG_IGNITION_PATH`]; gzip is decompressed first. cloud-init
//! documents, scripts and anything else are refused, naming the source.

mod acquire;
mod azure;
pub mod blockdev;
mod cmdline;
mod digitalocean;
mod dmi;
mod ec2;
mod endpoint;
pub mod fs;
mod fwcfg;
mod gcp;
mod hetzner;
pub mod iso9660;
mod nocloud;
mod nodeconfig;
mod openstack;
mod platform;
pub mod userdata;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ignition::{IgnitionError, StagedIgnition};
use crate::net::{HashMismatch, NetError};
use nodeimage_core::config::{ConfigError, NodeConfig};

pub use crate::net::Timeouts;
pub use acquire::{acquire, source_order};
pub use blockdev::{DeviceSet, Volume};
pub use cmdline::{cmdline_param, expand_placeholders, MachineIds, BASE_URL_PARAM};
pub use dmi::detect_from_dmi;
pub use fs::FilesystemReader;
pub use fwcfg::FW_CFG_NAME;
pub use nodeconfig::{nodeconfig_volumes, IGNITION_FILE_NAME, NODECONFIG_LABEL};
pub use platform::{Platform, PlatformChoice};

/// Everything a source needs to know about the machine it runs on.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// Root prefix: `/` on the node, a directory tree in tests.
    pub root: PathBuf,
    /// The kernel command line (`<root>/proc/cmdline`).
    pub cmdline: String,
    /// `--platform` from the command line of `firstboot`; wins over everything.
    pub platform_override: Option<Platform>,
    /// Base URL per platform, replacing [`Platform::default_endpoint`] (tests).
    pub endpoints: BTreeMap<Platform, String>,
    /// Devices probed by the label-based sources.
    pub devices: DeviceSet,
    pub timeouts: Timeouts,
}

impl SourceContext {
    /// A context for the machine under `root`: reads `<root>/proc/cmdline` (an absent
    /// file counts as an empty command line), scans `<root>/sys/class/block`.
    pub fn from_system(
        root: &Path,
        platform_override: Option<Platform>,
    ) -> Result<Self, SourceError> {
        let path = nodeimage_core::files::rooted(root, "/proc/cmdline");
        let cmdline = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => {
                return Err(SourceError::Io {
                    source_name: "kernel".into(),
                    context: format!("reading {}", path.display()),
                    error,
                })
            }
        };
        let mut ctx = SourceContext::new(root, cmdline.trim());
        ctx.platform_override = platform_override;
        Ok(ctx)
    }

    /// A context with an explicit command line and default timeouts.
    pub fn new(root: &Path, cmdline: &str) -> Self {
        SourceContext {
            root: root.to_path_buf(),
            cmdline: cmdline.to_string(),
            platform_override: None,
            endpoints: BTreeMap::new(),
            devices: DeviceSet::system(root),
            timeouts: Timeouts::default(),
        }
    }

    pub fn with_platform(mut self, p: Platform) -> Self {
        self.platform_override = Some(p);
        self
    }

    pub fn with_endpoint(mut self, p: Platform, base_url: &str) -> Self {
        self.endpoints
            .insert(p, base_url.trim_end_matches('/').to_string());
        self
    }

    pub fn with_devices(mut self, d: DeviceSet) -> Self {
        self.devices = d;
        self
    }

    pub fn with_timeouts(mut self, t: Timeouts) -> Self {
        self.timeouts = t;
        self
    }

    /// Base URL of a platform's metadata service.
    pub fn endpoint(&self, p: Platform) -> String {
        self.endpoints
            .get(&p)
            .cloned()
            .or_else(|| p.default_endpoint().map(str::to_string))
            .unwrap_or_default()
    }

    /// The platform and how it was chosen.
    pub fn platform(&self) -> Result<(Platform, PlatformChoice), SourceError> {
        if let Some(p) = self.platform_override {
            return Ok((p, PlatformChoice::Flag));
        }
        if let Some(v) = cmdline_param(&self.cmdline, "firstboot.platform") {
            return Ok((v.parse()?, PlatformChoice::KernelArgument));
        }
        if let Some((p, why)) = detect_from_dmi(&self.root) {
            return Ok((p, PlatformChoice::Dmi(why)));
        }
        Ok((Platform::Metal, PlatformChoice::Default))
    }
}

/// What the platform knows about this machine. Every field is optional: a source
/// fills in what it has.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Metadata {
    pub hostname: Option<String>,
    pub instance_id: Option<String>,
    pub local_ipv4: Option<IpAddr>,
    pub public_ipv4: Option<IpAddr>,
    pub availability_zone: Option<String>,
    pub region: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    /// Everything else (tags, custom attributes), by name.
    pub attributes: BTreeMap<String, String>,
}

/// One data source. Modelled on afterburn's `MetadataProvider`: only `name` and
/// `user_data` are required, every metadata method defaults to "not known", and
/// [`DataSource::metadata`] assembles them (a source with one metadata document overrides
/// `metadata` instead).
pub trait DataSource {
    /// Stable short name ("ec2", "nodeconfig-partition").
    fn name(&self) -> &'static str;

    /// The raw user data. `Ok(None)`: the source is here but carries none.
    /// `Err(SourceError::Absent)`: the source is not here.
    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError>;

    /// What the user data was read from, for messages about it (after `user_data`):
    /// the source's name, plus the file where there is one.
    fn document(&self) -> String {
        self.name().to_string()
    }

    fn hostname(&self) -> Result<Option<String>, SourceError> {
        Ok(None)
    }
    fn instance_id(&self) -> Result<Option<String>, SourceError> {
        Ok(None)
    }
    fn local_ipv4(&self) -> Result<Option<IpAddr>, SourceError> {
        Ok(None)
    }
    fn public_ipv4(&self) -> Result<Option<IpAddr>, SourceError> {
        Ok(None)
    }
    fn availability_zone(&self) -> Result<Option<String>, SourceError> {
        Ok(None)
    }
    fn region(&self) -> Result<Option<String>, SourceError> {
        Ok(None)
    }
    fn ssh_authorized_keys(&self) -> Result<Vec<String>, SourceError> {
        Ok(Vec::new())
    }
    fn attributes(&self) -> Result<BTreeMap<String, String>, SourceError> {
        Ok(BTreeMap::new())
    }

    fn metadata(&self) -> Result<Metadata, SourceError> {
        Ok(Metadata {
            hostname: self.hostname()?,
            instance_id: self.instance_id()?,
            local_ipv4: self.local_ipv4()?,
            public_ipv4: self.public_ipv4()?,
            availability_zone: self.availability_zone()?,
            region: self.region()?,
            ssh_authorized_keys: self.ssh_authorized_keys()?,
            attributes: self.attributes()?,
        })
    }
}

/// A source that was tried and passed over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attempt {
    pub source: String,
    pub outcome: String,
}

/// The result of [`acquire`].
#[derive(Debug)]
pub struct Acquired {
    /// Name of the source that supplied the user data, e.g. `nodeconfig-partition`.
    pub source: String,
    pub platform: Platform,
    pub platform_choice: PlatformChoice,
    pub metadata: Metadata,
    pub node_config: NodeConfig,
    /// Present when the user data was an Ignition config (already fetched and validated).
    pub ignition: Option<StagedIgnition>,
    /// Sources passed over before this one.
    pub attempts: Vec<Attempt>,
    pub elapsed: Duration,
}

/// Why no node config could be acquired.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source is not present on this machine (try the next one).
    #[error("{source_name}: not present: {reason}")]
    Absent { source_name: String, reason: String },
    /// A metadata service or URL did not answer as it should (timeout, HTTP status).
    #[error(transparent)]
    Net(NetError),
    #[error("{source_name}: {context}: {error}")]
    Io {
        source_name: String,
        context: String,
        #[source]
        error: std::io::Error,
    },
    /// The document does not match `firstboot.config_sha256`.
    #[error(transparent)]
    HashMismatch(Box<HashMismatch>),
    /// The user data (or metadata) is not in a form firstboot accepts.
    #[error("{source_name}: {message}")]
    Format {
        source_name: String,
        message: String,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Ignition(Box<IgnitionError>),
    /// A kernel argument or flag is malformed.
    #[error("{0}")]
    Invalid(String),
    #[error("no data source supplied a node config (platform {platform}); tried: {}", format_attempts(.attempts))]
    NoSource {
        platform: Platform,
        attempts: Vec<Attempt>,
    },
}

fn format_attempts(a: &[Attempt]) -> String {
    if a.is_empty() {
        return "nothing".into();
    }
    a.iter()
        .map(|a| format!("{} ({})", a.source, a.outcome))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<IgnitionError> for SourceError {
    fn from(e: IgnitionError) -> Self {
        SourceError::Ignition(Box::new(e))
    }
}

impl From<NetError> for SourceError {
    /// A refused connection to a metadata service means the source is not here.
    fn from(e: NetError) -> Self {
        match e {
            NetError::Refused { who, url } => SourceError::Absent {
                source_name: who,
                reason: format!("{url}: connection refused"),
            },
            e => SourceError::Net(e),
        }
    }
}

impl SourceError {
    pub(crate) fn absent(source_name: &str, reason: impl Into<String>) -> Self {
        SourceError::Absent {
            source_name: source_name.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn format(source_name: &str, message: impl Into<String>) -> Self {
        SourceError::Format {
            source_name: source_name.into(),
            message: message.into(),
        }
    }
    pub(crate) fn io(source_name: &str, context: impl Into<String>, error: std::io::Error) -> Self {
        SourceError::Io {
            source_name: source_name.into(),
            context: context.into(),
            error,
        }
    }
}

/// `raw` as the JSON document `what` of source `source_name` (a format error names both).
pub(crate) fn json_document(
    source_name: &str,
    what: &str,
    raw: &[u8],
) -> Result<serde_json::Value, SourceError> {
    serde_json::from_slice(raw)
        .map_err(|e| SourceError::format(source_name, format!("{what}: {e}")))
}

/// The string `v` holds, unless it is absent, not a string or empty.
pub(crate) fn non_empty_str(v: Option<&serde_json::Value>) -> Option<String> {
    v.and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Read one file from the first volume carrying one of `labels` (shared by the
/// label-based sources). `Err(Absent)` when no such volume exists.
pub(crate) fn read_labelled(
    ctx: &SourceContext,
    source_name: &str,
    labels: &[&str],
    path: &str,
) -> Result<(Volume, Option<Vec<u8>>), SourceError> {
    let mut vols = ctx.devices.find_by_label(labels);
    if vols.is_empty() {
        return Err(SourceError::absent(
            source_name,
            format!("no filesystem labelled {}", labels.join(" or ")),
        ));
    }
    if vols.len() > 1 {
        tracing::warn!(source = source_name, count = vols.len(), first = %vols[0].path.display(), "several volumes carry the label; using the first");
    }
    let vol = vols.remove(0);
    let data = vol.fs.read_file(path).map_err(|e| {
        SourceError::io(
            source_name,
            format!("reading {path} on {}", vol.path.display()),
            e,
        )
    })?;
    Ok((vol, data))
}

//! Ignition v3 configs (spec 3.0.0 – 3.6.0): parse, follow `ignition.config.merge` /
//! `replace`, fetch every remote content, verify hashes, validate, and stage everything in
//! memory ([`stage`]); then write it under a root prefix all-or-nothing
//! ([`StagedIgnition::apply`]).
//!
//! # Versions
//!
//! The `ignition-config` crate (0.6) parses every spec from 3.0.0 to 3.6.0 with its own
//! types and reports unknown keys; firstboot refuses a config with unknown keys (a typo
//! is an error, not a warning). The parsed config is then lifted to the 3.6.0 types
//! (every 3.x spec is a subset of the next one), so one code path serves all versions.
//! Versions the crate does not know (2.x, 3.7+, `-experimental`) are refused.
//!
//! # Implemented
//!
//! * `ignition.config.merge` / `replace`: fetched (data:, http, https), `verification.hash`
//!   (sha512 or sha256, over the decompressed document) enforced, `compression: gzip`,
//!   `httpHeaders`; referenced configs may reference further ones (depth ≤ 10). Merging
//!   follows Ignition: keyed lists (files/directories/links by `path`, units, dropins,
//!   users, groups by `name`) merge entry by entry, the child's non-null fields win, a
//!   path moves between files/directories/links when the child says so, lists of strings
//!   are united, other lists appended.
//! * `ignition.timeouts.httpTotal` (per-request timeout).
//! * `storage.files`: contents and `append` from data: URLs (base64 or percent-encoded)
//!   or http(s) with hash verification and gzip; `mode` (default 0644); `overwrite`
//!   (default false: an existing file with other contents is a conflict; without
//!   `contents.source` the existing file is kept and appended to); `user`/`group`.
//! * `storage.directories` (mode default 0755), `storage.links` (symbolic, or `hard`).
//! * `systemd.units`: `contents` → `/etc/systemd/system/<name>`; `dropins` →
//!   `/etc/systemd/system/<name>.d/<dropin>`; `enabled: true` → symlinks from the
//!   `[Install]` section (`WantedBy=` → `<target>.wants/`, `RequiredBy=` →
//!   `<target>.requires/`, `Alias=`), read from the unit's contents or from the unit file
//!   already in the tree; `enabled: false` removes such symlinks; `mask: true` →
//!   symlink to `/dev/null`, `mask: false` removes a mask.
//! * `passwd.users` / `passwd.groups`: see module `ignition::accounts` for the account files.
//!   `sshAuthorizedKeys` are added to `<home>/.ssh/authorized_keys` (`/root` for root,
//!   `/home/<name>` by default). Users and groups are created by appending to
//!   `<root>/etc/passwd`, `group`, `shadow`, `gshadow` only when those files exist in the
//!   tree; otherwise they are recorded in the report and only the keys are written.
//!
//! # Refused (never silently ignored)
//!
//! `storage.disks`, `storage.raid`, `storage.luks`, `storage.filesystems`,
//! `kernelArguments`, `ignition.proxy`, `ignition.security.tls.certificateAuthorities`,
//! `shouldExist: false` for users and groups, and sources with schemes other than data:,
//! http and https (s3, gs, arn, tftp). Each error names the section.
//!
//! The native node config may travel inside the config as the file
//! [`nodeimage_core::config::NODE_CONFIG_IGNITION_PATH`]: it is taken out of the file
//! list (it is transport, not a file to write) and returned by
//! [`StagedIgnition::node_config_yaml`].

mod accounts;
mod apply;
mod exec;
mod fetch;
mod merge;
mod plan;
mod units;
mod validate;

use ignition_config::v3_6;
use serde_json::Value;

use crate::net::{HashMismatch, NetError, Timeouts};

use fetch::Fetcher;

pub use apply::Plan;
pub use fetch::decode_data_url;
pub use merge::merge_configs;
pub use plan::{ApplyReport, PlannedOp};

/// The newest spec version this build reads (the crate's newest).
pub const LATEST_SPEC: &str = "3.6.0";

#[derive(Debug, thiserror::Error)]
pub enum IgnitionError {
    /// Not JSON, no or unknown version, wrong types, unknown keys.
    #[error("{source_name}: Ignition config: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    /// A section firstboot does not implement.
    #[error("{source_name}: Ignition section `{section}` is not supported by firstboot{detail}")]
    Unsupported {
        source_name: String,
        section: String,
        detail: String,
    },
    /// A value is not acceptable.
    #[error("{source_name}: Ignition {field}: {message}")]
    Invalid {
        source_name: String,
        field: String,
        message: String,
    },
    /// The config and the tree disagree (e.g. a file exists and `overwrite` is false).
    #[error("Ignition: {path}: {message}")]
    Conflict { path: String, message: String },
    /// A referenced config or a file's contents could not be fetched.
    #[error(transparent)]
    Fetch(#[from] NetError),
    /// Fetched contents do not match their `verification.hash`.
    #[error(transparent)]
    HashMismatch(Box<HashMismatch>),
    /// Writing failed; everything already written was rolled back.
    #[error("Ignition: applying {path}: {error} (rolled back)")]
    Apply {
        path: String,
        #[source]
        error: std::io::Error,
    },
}

fn invalid(
    source_name: &str,
    field: impl Into<String>,
    message: impl Into<String>,
) -> IgnitionError {
    IgnitionError::Invalid {
        source_name: source_name.into(),
        field: field.into(),
        message: message.into(),
    }
}

fn unsupported(source_name: &str, section: &str, detail: impl Into<String>) -> IgnitionError {
    let d = detail.into();
    IgnitionError::Unsupported {
        source_name: source_name.into(),
        section: section.into(),
        detail: if d.is_empty() {
            String::new()
        } else {
            format!(" ({d})")
        },
    }
}

/// Owner of a node: numeric id or a name resolved against the tree's account files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Id(u32),
    Name(String),
}

#[derive(Debug, Clone)]
pub(crate) struct StagedFile {
    pub path: String,
    /// `None`: no `contents.source` (keep/create empty, then append).
    pub contents: Option<Vec<u8>>,
    pub append: Vec<Vec<u8>>,
    pub mode: Option<u32>,
    pub overwrite: bool,
    pub user: Option<Owner>,
    pub group: Option<Owner>,
}

#[derive(Debug, Clone)]
pub(crate) struct StagedDir {
    pub path: String,
    pub mode: Option<u32>,
    pub overwrite: bool,
    pub user: Option<Owner>,
    pub group: Option<Owner>,
}

#[derive(Debug, Clone)]
pub(crate) struct StagedLink {
    pub path: String,
    pub target: String,
    pub hard: bool,
    pub overwrite: bool,
    pub user: Option<Owner>,
    pub group: Option<Owner>,
}

#[derive(Debug, Clone)]
pub(crate) struct StagedUnit {
    pub name: String,
    pub contents: Option<String>,
    pub enabled: Option<bool>,
    pub mask: Option<bool>,
    pub dropins: Vec<(String, String)>,
}

/// A fully fetched, verified and validated Ignition config. Holds everything in memory;
/// nothing has been written. Its `Debug` shows counts only (contents may be secret).
#[derive(Clone)]
pub struct StagedIgnition {
    /// The data source it came from.
    pub source_name: String,
    /// Spec version of the top-level config as written (e.g. "3.4.0").
    pub version: String,
    /// URLs of the configs merged in or replacing, in fetch order (data: URLs abbreviated).
    pub referenced: Vec<String>,
    pub(crate) files: Vec<StagedFile>,
    pub(crate) directories: Vec<StagedDir>,
    pub(crate) links: Vec<StagedLink>,
    pub(crate) units: Vec<StagedUnit>,
    pub(crate) users: Vec<v3_6::User>,
    pub(crate) groups: Vec<v3_6::Group>,
    node_config: Option<Vec<u8>>,
}

fn names<'a, T>(items: &'a [T], name: fn(&'a T) -> &'a String) -> Vec<&'a str> {
    items.iter().map(|i| name(i).as_str()).collect()
}

impl std::fmt::Debug for StagedIgnition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedIgnition")
            .field("source_name", &self.source_name)
            .field("version", &self.version)
            .field("referenced", &self.referenced)
            .field("files", &self.file_paths())
            .field("directories", &self.directories.len())
            .field("links", &self.links.len())
            .field("units", &names(&self.units, |u| &u.name))
            .field("users", &names(&self.users, |u| &u.name))
            .field("groups", &names(&self.groups, |g| &g.name))
            .field("node_config", &self.node_config.is_some())
            .finish()
    }
}

impl StagedIgnition {
    /// The native node config carried at
    /// [`nodeimage_core::config::NODE_CONFIG_IGNITION_PATH`], if any.
    pub fn node_config_yaml(&self) -> Option<&[u8]> {
        self.node_config.as_deref()
    }

    /// Node paths of the staged files (the node config excluded), for logs and tests.
    pub fn file_paths(&self) -> Vec<&str> {
        self.files.iter().map(|f| f.path.as_str()).collect()
    }

    /// What the config holds, in counts (`3 files, 1 directories, …`), for `--dry-run`.
    pub fn summary(&self) -> String {
        format!(
            "{} files, {} directories, {} links, {} units, {} users, {} groups",
            self.files.len(),
            self.directories.len(),
            self.links.len(),
            self.units.len(),
            self.users.len(),
            self.groups.len()
        )
    }

    /// Compute the writes against the tree under `root` without touching it.
    pub fn plan(&self, root: &std::path::Path) -> Result<Plan, IgnitionError> {
        apply::plan(self, root)
    }

    /// Write everything under `root`: the plan is computed first (conflicts fail before
    /// any write), every file is written to a temporary name next to its target, and only
    /// then renamed into place; a failure rolls back what was already renamed.
    pub fn apply(&self, root: &std::path::Path) -> Result<ApplyReport, IgnitionError> {
        self.plan(root)?.execute()
    }
}

/// Parse `data` as an Ignition config from `source_name`, follow its config references,
/// fetch all contents and validate. Network access uses `timeouts` (one deadline for the
/// whole staging).
pub fn stage(
    source_name: &str,
    data: &[u8],
    timeouts: Timeouts,
) -> Result<StagedIgnition, IgnitionError> {
    let (version, _) = parse_version(source_name, data)?;
    let mut fetcher = Fetcher::new(source_name, timeouts);
    let mut referenced = Vec::new();
    let value = merge::resolve(source_name, data, &mut fetcher, &mut referenced, 0)?;
    let config: v3_6::Config = serde_json::from_value(value)
        .map_err(|e| parse_error(source_name, data, format!("after merging: {e}")))?;
    let mut staged = validate::validate_and_fetch(source_name, &config, &fetcher)?;
    staged.version = version;
    staged.referenced = referenced;
    tracing::info!(
        source = source_name,
        version = %staged.version,
        referenced = staged.referenced.len(),
        files = staged.files.len(),
        units = staged.units.len(),
        users = staged.users.len(),
        "Ignition config staged"
    );
    Ok(staged)
}

/// A parse error about the config `data`: the parsers quote what they refuse (a data:
/// URL carrying the node config, a pasted key), so the document's values are taken out
/// ([`nodeimage_core::errors::redact_document_values`]).
pub(crate) fn parse_error(source_name: &str, data: &[u8], message: String) -> IgnitionError {
    let doc = String::from_utf8_lossy(data);
    let secrets = nodeimage_core::config::secret_values(&doc);
    IgnitionError::Parse {
        source_name: source_name.into(),
        message: nodeimage_core::errors::redact_document_values(&message, &doc, &secrets),
    }
}

/// The spec version string and the parsed config lifted to the 3.6 JSON form.
fn parse_version(source_name: &str, data: &[u8]) -> Result<(String, Value), IgnitionError> {
    let perr = |m: String| parse_error(source_name, data, m);
    let raw: Value = serde_json::from_slice(data).map_err(|e| perr(format!("not JSON: {e}")))?;
    let version = raw
        .pointer("/ignition/version")
        .and_then(Value::as_str)
        .ok_or_else(|| perr("expected `ignition.version` (a string such as \"3.4.0\")".into()))?
        .to_string();
    let (config, warnings) = ignition_config::Config::parse_slice(data).map_err(|e| match e {
        ignition_config::Error::UnknownVersion(v) => perr(format!(
            "spec version {v} is not supported; expected 3.0.0 to {LATEST_SPEC}"
        )),
        other => perr(other.to_string()),
    })?;
    if !warnings.is_empty() {
        let keys: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
        return Err(perr(format!("{} (spec {version})", keys.join(", "))));
    }
    let mut value = serde_json::to_value(&config).map_err(|e| perr(e.to_string()))?;
    value["ignition"]["version"] = Value::String(LATEST_SPEC.into());
    Ok((version, value))
}

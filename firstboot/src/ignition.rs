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
//! * `passwd.users` / `passwd.groups`: see [`Plan`] (module `ignition::apply`) for the account files.
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
//! [`NODE_CONFIG_IGNITION_PATH`]: it is taken out of the file list (it is transport, not
//! a file to write) and returned by [`StagedIgnition::node_config_yaml`].

mod accounts;
mod apply;

use std::io::Read;
use std::time::Duration;

use base64::Engine;
use ignition_config::v3_6;
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

use crate::net::{Http, NetError, Timeouts};
use nodeimage_core::config::NODE_CONFIG_IGNITION_PATH;

pub use apply::{ApplyReport, Plan, PlannedOp};

/// The newest spec version this build reads (the crate's newest).
pub const LATEST_SPEC: &str = "3.6.0";
const MAX_CONFIG_DEPTH: usize = 10;
const MAX_RESOURCE: u64 = 256 << 20;

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
    #[error("{source_name}: {what}: expected {algorithm} {expected}, found {actual}")]
    HashMismatch {
        source_name: String,
        what: String,
        algorithm: String,
        expected: String,
        actual: String,
    },
    /// Writing failed; everything already written was rolled back.
    #[error("Ignition: applying {path}: {message} (rolled back)")]
    Apply { path: String, message: String },
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

impl std::fmt::Debug for StagedIgnition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedIgnition")
            .field("source_name", &self.source_name)
            .field("version", &self.version)
            .field("referenced", &self.referenced)
            .field("files", &self.file_paths())
            .field("directories", &self.directories.len())
            .field("links", &self.links.len())
            .field(
                "units",
                &self
                    .units
                    .iter()
                    .map(|u| u.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field(
                "users",
                &self
                    .users
                    .iter()
                    .map(|u| u.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field(
                "groups",
                &self
                    .groups
                    .iter()
                    .map(|g| g.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("node_config", &self.node_config.is_some())
            .finish()
    }
}

impl StagedIgnition {
    /// The native node config carried at [`NODE_CONFIG_IGNITION_PATH`], if any.
    pub fn node_config_yaml(&self) -> Option<&[u8]> {
        self.node_config.as_deref()
    }

    /// Node paths of the staged files (the node config excluded), for logs and tests.
    pub fn file_paths(&self) -> Vec<&str> {
        self.files.iter().map(|f| f.path.as_str()).collect()
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
    let value = resolve(source_name, data, &mut fetcher, &mut referenced, 0)?;
    let config: v3_6::Config = serde_json::from_value(value).map_err(|e| IgnitionError::Parse {
        source_name: source_name.into(),
        message: format!("after merging: {e}"),
    })?;
    let mut staged = validate_and_fetch(source_name, &config, &fetcher)?;
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

/// The spec version string and the parsed config lifted to the 3.6 JSON form.
fn parse_version(source_name: &str, data: &[u8]) -> Result<(String, Value), IgnitionError> {
    let perr = |m: String| IgnitionError::Parse {
        source_name: source_name.into(),
        message: m,
    };
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

/// Parse a config and resolve its `replace` / `merge` references recursively into one
/// JSON value (3.6 form) without config references.
fn resolve(
    source_name: &str,
    data: &[u8],
    fetcher: &mut Fetcher,
    referenced: &mut Vec<String>,
    depth: usize,
) -> Result<Value, IgnitionError> {
    if depth > MAX_CONFIG_DEPTH {
        return Err(invalid(
            source_name,
            "ignition.config",
            format!("more than {MAX_CONFIG_DEPTH} levels of merge/replace"),
        ));
    }
    let (_, mut value) = parse_version(source_name, data)?;
    let refs: v3_6::IgnitionConfig = value
        .pointer("/ignition/config")
        .filter(|v| !v.is_null())
        .map(|v| serde_json::from_value(v.clone()))
        .transpose()
        .map_err(|e| IgnitionError::Parse {
            source_name: source_name.into(),
            message: e.to_string(),
        })?
        .unwrap_or_default();
    if let Some(obj) = value.get_mut("ignition").and_then(Value::as_object_mut) {
        obj.remove("config");
    }
    apply_timeouts(&value, fetcher);
    if let Some(r) = refs.replace.as_ref().filter(|r| r.source.is_some()) {
        let child = fetcher.fetch("ignition.config.replace", r)?;
        referenced.push(fetcher.describe(r));
        return resolve(source_name, &child, fetcher, referenced, depth + 1);
    }
    for (i, r) in refs.merge.unwrap_or_default().iter().enumerate() {
        let what = format!("ignition.config.merge[{i}]");
        if r.source.is_none() {
            return Err(invalid(source_name, what, "expected a source"));
        }
        let child_data = fetcher.fetch(&what, r)?;
        referenced.push(fetcher.describe(r));
        let child = resolve(source_name, &child_data, fetcher, referenced, depth + 1)?;
        value = merge_configs(value, child);
    }
    Ok(value)
}

fn apply_timeouts(value: &Value, fetcher: &mut Fetcher) {
    if let Some(total) = value
        .pointer("/ignition/timeouts/httpTotal")
        .and_then(Value::as_i64)
        .filter(|t| *t > 0)
    {
        fetcher
            .http
            .set_request_timeout(Duration::from_secs(total as u64));
    }
}

/// Merge a child config onto its parent (child wins), Ignition style.
pub fn merge_configs(parent: Value, child: Value) -> Value {
    let mut parent = parent;
    let mut child = child;
    // The child's `ignition` section carries only its own version/timeouts: keep the parent's.
    if let Some(o) = child.as_object_mut() {
        o.remove("ignition");
    }
    // A path defined by the child in one of files/directories/links leaves the others.
    let kinds = ["files", "directories", "links"];
    for kind in kinds {
        let paths: Vec<String> = child
            .pointer(&format!("/storage/{kind}"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.get("path").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for other in kinds.iter().filter(|k| **k != kind) {
            if let Some(list) = parent
                .pointer_mut(&format!("/storage/{other}"))
                .and_then(Value::as_array_mut)
            {
                list.retain(|e| {
                    !e.get("path")
                        .and_then(Value::as_str)
                        .is_some_and(|p| paths.iter().any(|c| c == p))
                });
            }
        }
    }
    merge_value(&mut parent, child);
    parent
}

fn entry_key(v: &Value) -> Option<(&'static str, String)> {
    let o = v.as_object()?;
    for k in ["path", "name", "device"] {
        if let Some(s) = o.get(k).and_then(Value::as_str) {
            return Some((k, s.to_string()));
        }
    }
    None
}

fn merge_value(parent: &mut Value, child: Value) {
    match (parent, child) {
        (_, Value::Null) => {}
        (Value::Object(p), Value::Object(c)) => {
            for (k, v) in c {
                match p.get_mut(&k) {
                    Some(pv) if !pv.is_null() => merge_value(pv, v),
                    _ => {
                        p.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(p), Value::Array(c)) => {
            for item in c {
                let key = entry_key(&item);
                match key {
                    Some(key) => match p.iter_mut().find(|e| entry_key(e).as_ref() == Some(&key)) {
                        Some(existing) => merge_value(existing, item),
                        None => p.push(item),
                    },
                    None if item.is_string() || item.is_number() || item.is_boolean() => {
                        if !p.contains(&item) {
                            p.push(item);
                        }
                    }
                    None => p.push(item),
                }
            }
        }
        (p, c) => *p = c,
    }
}

/// Fetches resources for one staging run: one HTTP client, one deadline.
pub(crate) struct Fetcher {
    source_name: String,
    http: Http,
}

impl Fetcher {
    fn new(source_name: &str, timeouts: Timeouts) -> Self {
        Fetcher {
            source_name: source_name.into(),
            http: Http::new(format!("{source_name}: Ignition"), timeouts, false),
        }
    }

    fn describe(&self, r: &v3_6::Resource) -> String {
        let s = r.source.clone().unwrap_or_default();
        if s.starts_with("data:") {
            format!("{}…", &s[..s.len().min(24)])
        } else {
            s
        }
    }

    /// Fetch, verify and decompress one resource. `what` names it in errors
    /// (`storage.files[/etc/x].contents`).
    pub(crate) fn fetch(&self, what: &str, r: &v3_6::Resource) -> Result<Vec<u8>, IgnitionError> {
        let sn = self.source_name.as_str();
        let source = r
            .source
            .as_deref()
            .ok_or_else(|| invalid(sn, what, "expected a source"))?;
        let raw = if let Some(rest) = source.strip_prefix("data:") {
            decode_data_url(rest).map_err(|m| invalid(sn, format!("{what}.source"), m))?
        } else if source.starts_with("http://") || source.starts_with("https://") {
            let headers: Vec<(String, String)> = r
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone().unwrap_or_default()))
                .collect();
            let hdrs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            self.http.get_required(source, &hdrs)?
        } else {
            let scheme = source.split(':').next().unwrap_or("");
            return Err(unsupported(
                sn,
                &format!("{what}.source"),
                format!("scheme `{scheme}:`; firstboot fetches data:, http: and https:"),
            ));
        };
        let data = match r.compression.as_deref() {
            None | Some("") => raw,
            Some("gzip") => {
                let mut out = Vec::new();
                flate2::read::MultiGzDecoder::new(raw.as_slice())
                    .take(MAX_RESOURCE)
                    .read_to_end(&mut out)
                    .map_err(|e| {
                        invalid(sn, format!("{what}.compression"), format!("gzip: {e}"))
                    })?;
                out
            }
            Some(other) => {
                return Err(invalid(
                    sn,
                    format!("{what}.compression"),
                    format!("expected gzip, found `{other}`"),
                ))
            }
        };
        if let Some(hash) = r.verification.as_ref().and_then(|v| v.hash.as_deref()) {
            verify_hash(sn, what, source, hash, &data)?;
        }
        Ok(data)
    }
}

fn verify_hash(
    source_name: &str,
    what: &str,
    url: &str,
    spec: &str,
    data: &[u8],
) -> Result<(), IgnitionError> {
    let (algo, expected) = spec.split_once('-').ok_or_else(|| {
        invalid(
            source_name,
            format!("{what}.verification.hash"),
            format!("expected sha512-<hex> or sha256-<hex>, found `{spec}`"),
        )
    })?;
    let actual = match algo {
        "sha512" => hex::encode(Sha512::digest(data)),
        "sha256" => hex::encode(Sha256::digest(data)),
        _ => {
            return Err(invalid(
                source_name,
                format!("{what}.verification.hash"),
                format!("expected sha512 or sha256, found `{algo}`"),
            ))
        }
    };
    if !actual.eq_ignore_ascii_case(expected) {
        let shown = if url.starts_with("data:") {
            what.to_string()
        } else {
            format!("{what} ({url})")
        };
        return Err(IgnitionError::HashMismatch {
            source_name: source_name.into(),
            what: shown,
            algorithm: algo.into(),
            expected: expected.to_ascii_lowercase(),
            actual,
        });
    }
    Ok(())
}

fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape `%{hex}`"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Decode the part of an RFC 2397 data URL after `data:`.
pub fn decode_data_url(rest: &str) -> Result<Vec<u8>, String> {
    let (meta, payload) = rest
        .split_once(',')
        .ok_or("a data: URL needs a `,` before its data")?;
    let decoded = percent_decode(payload)?;
    if meta.split(';').any(|p| p.eq_ignore_ascii_case("base64")) {
        let cleaned: Vec<u8> = decoded
            .into_iter()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(&cleaned)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&cleaned))
            .map_err(|e| format!("bad base64: {e}"))
    } else {
        Ok(decoded)
    }
}

fn valid_node_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && !p.split('/').any(|c| c == ".." || c == ".")
        && !p.contains("//")
        && !p.ends_with('/')
}

fn mode_bits(source_name: &str, field: &str, m: Option<i64>) -> Result<Option<u32>, IgnitionError> {
    match m {
        None => Ok(None),
        Some(m) if (0..=0o7777).contains(&m) => Ok(Some(m as u32)),
        Some(m) => Err(invalid(
            source_name,
            field,
            format!("mode {m} is outside 0..=0o7777 (modes are decimal in JSON: 0644 is 420)"),
        )),
    }
}

fn owner(
    source_name: &str,
    field: &str,
    id: Option<i64>,
    name: Option<&String>,
) -> Result<Option<Owner>, IgnitionError> {
    match (id, name) {
        (Some(_), Some(_)) => Err(invalid(
            source_name,
            field,
            "give an id or a name, not both",
        )),
        (Some(i), None) => u32::try_from(i)
            .map(|i| Some(Owner::Id(i)))
            .map_err(|_| invalid(source_name, field, format!("bad id {i}"))),
        (None, Some(n)) => Ok(Some(Owner::Name(n.clone()))),
        (None, None) => Ok(None),
    }
}

fn nonempty<T>(v: &Option<Vec<T>>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_empty())
}

/// Refuse what is not implemented, validate the rest and fetch every content.
fn validate_and_fetch(
    sn: &str,
    c: &v3_6::Config,
    fetcher: &Fetcher,
) -> Result<StagedIgnition, IgnitionError> {
    if let Some(p) = &c.ignition.proxy {
        if p.http_proxy.is_some() || p.https_proxy.is_some() || nonempty(&p.no_proxy) {
            return Err(unsupported(sn, "ignition.proxy", ""));
        }
    }
    if let Some(tls) = c.ignition.security.as_ref().and_then(|s| s.tls.as_ref()) {
        if nonempty(&tls.certificate_authorities) {
            return Err(unsupported(
                sn,
                "ignition.security.tls.certificateAuthorities",
                "",
            ));
        }
    }
    if let Some(k) = &c.kernel_arguments {
        if nonempty(&k.should_exist) || nonempty(&k.should_not_exist) {
            return Err(unsupported(
                sn,
                "kernelArguments",
                "kernel arguments are part of the image",
            ));
        }
    }
    let storage = c.storage.clone().unwrap_or_default();
    for (section, present) in [
        ("storage.disks", nonempty(&storage.disks)),
        ("storage.raid", nonempty(&storage.raid)),
        ("storage.luks", nonempty(&storage.luks)),
        ("storage.filesystems", nonempty(&storage.filesystems)),
    ] {
        if present {
            return Err(unsupported(
                sn,
                section,
                "the image's partitions are fixed by nodeimage",
            ));
        }
    }

    let mut seen = std::collections::BTreeSet::new();
    let mut check_path = |kind: &str, p: &str| -> Result<(), IgnitionError> {
        if !valid_node_path(p) {
            return Err(invalid(
                sn,
                format!("storage.{kind}[{p}].path"),
                "expected an absolute path without `.`, `..` or `//`",
            ));
        }
        if !seen.insert(p.to_string()) {
            return Err(invalid(
                sn,
                format!("storage.{kind}[{p}]"),
                "the path appears more than once in storage",
            ));
        }
        Ok(())
    };

    let mut files = Vec::new();
    let mut node_config = None;
    for f in storage.files.iter().flatten() {
        check_path("files", &f.path)?;
        let field = format!("storage.files[{}]", f.path);
        let overwrite = f.overwrite.unwrap_or(false);
        let has_source = f.contents.as_ref().is_some_and(|r| r.source.is_some());
        if overwrite && !has_source {
            return Err(invalid(
                sn,
                format!("{field}.overwrite"),
                "overwrite needs contents.source",
            ));
        }
        let contents = match &f.contents {
            Some(r) if r.source.is_some() => Some(fetcher.fetch(&format!("{field}.contents"), r)?),
            _ => None,
        };
        let mut append = Vec::new();
        for (i, r) in f.append.iter().flatten().enumerate() {
            append.push(fetcher.fetch(&format!("{field}.append[{i}]"), r)?);
        }
        let staged = StagedFile {
            path: f.path.clone(),
            contents,
            append,
            mode: mode_bits(sn, &format!("{field}.mode"), f.mode)?,
            overwrite,
            user: owner(
                sn,
                &format!("{field}.user"),
                f.user.as_ref().and_then(|u| u.id),
                f.user.as_ref().and_then(|u| u.name.as_ref()),
            )?,
            group: owner(
                sn,
                &format!("{field}.group"),
                f.group.as_ref().and_then(|u| u.id),
                f.group.as_ref().and_then(|u| u.name.as_ref()),
            )?,
        };
        if f.path == NODE_CONFIG_IGNITION_PATH {
            let mut data = staged.contents.clone().unwrap_or_default();
            for a in &staged.append {
                data.extend_from_slice(a);
            }
            node_config = Some(data);
        } else {
            files.push(staged);
        }
    }
    let mut directories = Vec::new();
    for d in storage.directories.iter().flatten() {
        check_path("directories", &d.path)?;
        let field = format!("storage.directories[{}]", d.path);
        directories.push(StagedDir {
            path: d.path.clone(),
            mode: mode_bits(sn, &format!("{field}.mode"), d.mode)?,
            overwrite: d.overwrite.unwrap_or(false),
            user: owner(
                sn,
                &format!("{field}.user"),
                d.user.as_ref().and_then(|u| u.id),
                d.user.as_ref().and_then(|u| u.name.as_ref()),
            )?,
            group: owner(
                sn,
                &format!("{field}.group"),
                d.group.as_ref().and_then(|u| u.id),
                d.group.as_ref().and_then(|u| u.name.as_ref()),
            )?,
        });
    }
    let mut links = Vec::new();
    for l in storage.links.iter().flatten() {
        check_path("links", &l.path)?;
        let field = format!("storage.links[{}]", l.path);
        let target = l
            .target
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid(sn, format!("{field}.target"), "expected a target"))?;
        let hard = l.hard.unwrap_or(false);
        if hard && !valid_node_path(&target) {
            return Err(invalid(
                sn,
                format!("{field}.target"),
                "a hard link needs an absolute target",
            ));
        }
        links.push(StagedLink {
            path: l.path.clone(),
            target,
            hard,
            overwrite: l.overwrite.unwrap_or(false),
            user: owner(
                sn,
                &format!("{field}.user"),
                l.user.as_ref().and_then(|u| u.id),
                l.user.as_ref().and_then(|u| u.name.as_ref()),
            )?,
            group: owner(
                sn,
                &format!("{field}.group"),
                l.group.as_ref().and_then(|u| u.id),
                l.group.as_ref().and_then(|u| u.name.as_ref()),
            )?,
        });
    }

    let mut units = Vec::new();
    let mut unit_names = std::collections::BTreeSet::new();
    for u in c
        .systemd
        .as_ref()
        .and_then(|s| s.units.as_ref())
        .into_iter()
        .flatten()
    {
        let field = format!("systemd.units[{}]", u.name);
        if !valid_unit_name(&u.name) {
            return Err(invalid(
                sn,
                &field,
                "expected a unit name like `foo.service`",
            ));
        }
        if !unit_names.insert(u.name.clone()) {
            return Err(invalid(sn, &field, "the unit appears more than once"));
        }
        if u.mask == Some(true) && (u.contents.is_some() || u.enabled == Some(true)) {
            return Err(invalid(
                sn,
                &field,
                "a masked unit cannot also have contents or be enabled",
            ));
        }
        let mut dropins = Vec::new();
        for d in u.dropins.iter().flatten() {
            if !d.name.ends_with(".conf") || d.name.contains('/') {
                return Err(invalid(
                    sn,
                    format!("{field}.dropins[{}]", d.name),
                    "expected a name like `10-foo.conf`",
                ));
            }
            if let Some(c) = &d.contents {
                dropins.push((d.name.clone(), c.clone()));
            }
        }
        units.push(StagedUnit {
            name: u.name.clone(),
            contents: u.contents.clone(),
            enabled: u.enabled,
            mask: u.mask,
            dropins,
        });
    }

    let passwd = c.passwd.clone().unwrap_or_default();
    let users = passwd.users.unwrap_or_default();
    let groups = passwd.groups.unwrap_or_default();
    for u in &users {
        if u.should_exist == Some(false) {
            return Err(unsupported(
                sn,
                &format!("passwd.users[{}].shouldExist", u.name),
                "deleting users",
            ));
        }
        if !accounts::valid_account_name(&u.name) {
            return Err(invalid(
                sn,
                format!("passwd.users[{}].name", u.name),
                "expected a POSIX user name",
            ));
        }
    }
    for g in &groups {
        if g.should_exist == Some(false) {
            return Err(unsupported(
                sn,
                &format!("passwd.groups[{}].shouldExist", g.name),
                "deleting groups",
            ));
        }
        if !accounts::valid_account_name(&g.name) {
            return Err(invalid(
                sn,
                format!("passwd.groups[{}].name", g.name),
                "expected a POSIX group name",
            ));
        }
    }

    Ok(StagedIgnition {
        source_name: sn.into(),
        version: String::new(),
        referenced: Vec::new(),
        files,
        directories,
        links,
        units,
        users,
        groups,
        node_config,
    })
}

fn valid_unit_name(n: &str) -> bool {
    const SUFFIXES: [&str; 11] = [
        ".service",
        ".socket",
        ".target",
        ".timer",
        ".mount",
        ".automount",
        ".path",
        ".slice",
        ".scope",
        ".swap",
        ".device",
    ];
    !n.is_empty()
        && !n.contains('/')
        && n != "."
        && n != ".."
        && SUFFIXES.iter().any(|s| n.ends_with(s) && n.len() > s.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn data_urls() {
        assert_eq!(decode_data_url(",hello%20world").unwrap(), b"hello world");
        assert_eq!(
            decode_data_url("text/plain;charset=utf-8;base64,aGk=").unwrap(),
            b"hi"
        );
        assert_eq!(decode_data_url(";base64,aGk").unwrap(), b"hi");
        assert!(decode_data_url("nocomma").is_err());
    }

    #[test]
    fn merge_is_keyed_and_child_wins() {
        let parent = json!({"ignition": {"version": "3.6.0"}, "storage": {"files": [
            {"path": "/a", "mode": 420, "contents": {"source": "data:,p"}},
            {"path": "/b", "mode": 420}
        ]}, "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": ["k1"]}]}});
        let child = json!({"ignition": {"version": "3.6.0"}, "storage": {
            "files": [{"path": "/a", "mode": null, "contents": {"source": "data:,c"}}],
            "directories": [{"path": "/b"}]
        }, "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": ["k1", "k2"]}]}});
        let m = merge_configs(parent, child);
        assert_eq!(m["storage"]["files"].as_array().unwrap().len(), 1);
        assert_eq!(m["storage"]["files"][0]["contents"]["source"], "data:,c");
        assert_eq!(m["storage"]["files"][0]["mode"], 420);
        assert_eq!(m["storage"]["directories"][0]["path"], "/b");
        assert_eq!(
            m["passwd"]["users"][0]["sshAuthorizedKeys"],
            json!(["k1", "k2"])
        );
    }

    #[test]
    fn node_paths_and_units() {
        assert!(valid_node_path("/etc/x"));
        for bad in ["etc/x", "/", "/etc/../x", "/etc//x", "/etc/x/", "/./x"] {
            assert!(!valid_node_path(bad), "{bad}");
        }
        assert!(valid_unit_name("foo.service") && valid_unit_name("getty@tty1.service"));
        assert!(
            !valid_unit_name(".service")
                && !valid_unit_name("a/b.service")
                && !valid_unit_name("foo")
        );
    }
}

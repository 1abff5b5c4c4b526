//! `nodeimage write-config` and `nodeimage inspect`: work on a finished raw image
//! without mounting anything (no root, no loop devices).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nodeimage_core::config::{NodeConfig, NODE_CONFIG_FILE_NAME, NODE_CONFIG_IGNITION_PATH};
use nodeimage_core::fat::{self, FatImage, FatOptions, FileChanges};
use serde::Serialize;
use serde_json::{json, Value};

use super::{read_layout, type_guid, DiskError, DiskLayout, PartitionInfo};

/// GPT name and FAT label of the config partition.
pub const NODECONFIG_LABEL: &str = "NODECONFIG";
/// File name of an Ignition config on NODECONFIG.
pub const IGNITION_CONFIG_FILE_NAME: &str = "config.ign";
/// Where the build manifest lives on the ESP.
pub const ESP_MANIFEST_PATH: &str = "nodeimage/manifest.json";

/// Put a node config into a disk image's NODECONFIG partition.
#[derive(Debug, Clone, clap::Args)]
pub struct WriteConfigArgs {
    /// The raw disk image (`.raw`; convert other formats first).
    pub image: PathBuf,
    /// A native node config (`node.yaml`) or an Ignition config (JSON with
    /// `ignition.version`). Validated before the image is touched.
    pub config: PathBuf,
}

/// Show an image's partitions, build manifest and node config (secrets redacted).
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// The raw disk image.
    pub image: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A config document, classified and validated.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigKind {
    /// A native node config (stored as `node.yaml`).
    Native(Box<NodeConfig>),
    /// An Ignition config (stored as `config.ign`).
    Ignition(Value),
}

impl ConfigKind {
    /// The file name this config has on NODECONFIG.
    pub fn file_name(&self) -> &'static str {
        match self {
            ConfigKind::Native(_) => NODE_CONFIG_FILE_NAME,
            ConfigKind::Ignition(_) => IGNITION_CONFIG_FILE_NAME,
        }
    }

    /// The other config file, removed so exactly one config is on the partition.
    fn other_file_name(&self) -> &'static str {
        match self {
            ConfigKind::Native(_) => IGNITION_CONFIG_FILE_NAME,
            ConfigKind::Ignition(_) => NODE_CONFIG_FILE_NAME,
        }
    }
}

/// Decide what `text` is and validate it: JSON with a top-level `ignition` key is an
/// Ignition config and needs a string `ignition.version`; everything else must be a
/// valid native node config (YAML, or JSON in the same schema).
pub fn classify_config(source_name: &str, text: &[u8]) -> Result<ConfigKind, DiskError> {
    let text = std::str::from_utf8(text).map_err(|e| DiskError::Ignition {
        source_name: source_name.to_string(),
        message: format!("expected UTF-8 text: {e}"),
    })?;
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        if let Some(ign) = v.get("ignition") {
            return match ign.get("version").and_then(Value::as_str) {
                Some(ver) if !ver.is_empty() => Ok(ConfigKind::Ignition(v)),
                _ => Err(DiskError::Ignition {
                    source_name: source_name.to_string(),
                    message: "ignition.version: expected a version string like \"3.4.0\"".into(),
                }),
            };
        }
    }
    Ok(ConfigKind::Native(Box::new(NodeConfig::parse(
        source_name,
        text,
    )?)))
}

/// Validate `text` and write it into the NODECONFIG partition of `image` (as
/// `node.yaml` or `config.ign`, removing the other), keeping the FAT volume's geometry,
/// label and serial. A NODECONFIG partition that was never formatted (its first 4 KiB
/// are zero) is formatted first. Nothing is written when the config is invalid. Returns the
/// partition written and the config's kind.
pub fn write_node_config(
    image: &Path,
    source_name: &str,
    text: &[u8],
    timestamp: i64,
) -> Result<(PartitionInfo, ConfigKind), DiskError> {
    let kind = classify_config(source_name, text)?;
    let layout = read_layout(image)?;
    let part = find_nodeconfig(image, &layout)?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|source| DiskError::Io {
            op: "opening",
            path: image.to_path_buf(),
            source,
        })?;
    let fat_err = |source| DiskError::Fat {
        image: image.to_path_buf(),
        partition: part.name.clone(),
        source,
    };
    if partition_is_blank(&mut f, &part).map_err(|source| DiskError::Io {
        op: "reading",
        path: image.to_path_buf(),
        source,
    })? {
        // A NODECONFIG partition left empty by the build: format it now, with a serial
        // derived from the partition GUID so the result is still reproducible.
        let mut files = BTreeMap::new();
        files.insert(kind.file_name().to_string(), text.to_vec());
        let g = part.part_guid.as_bytes();
        let opts = FatOptions {
            size_bytes: part.size_bytes,
            label: NODECONFIG_LABEL.to_string(),
            volume_id: u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            timestamp,
            fat_type: None,
        };
        let volume = fat::build(&files, &opts).map_err(fat_err)?;
        f.seek(SeekFrom::Start(part.start_bytes))
            .and_then(|_| f.write_all(&volume))
            .map_err(|source| DiskError::Io {
                op: "writing",
                path: image.to_path_buf(),
                source,
            })?;
    } else {
        let mut changes = FileChanges::new();
        changes.insert(kind.file_name().to_string(), Some(text.to_vec()));
        changes.insert(kind.other_file_name().to_string(), None);
        fat::replace_files(
            &mut f,
            part.start_bytes,
            part.size_bytes,
            &changes,
            timestamp,
        )
        .map_err(fat_err)?;
    }
    f.sync_all().map_err(|source| DiskError::Io {
        op: "syncing",
        path: image.to_path_buf(),
        source,
    })?;
    Ok((part, kind))
}

/// Whether the partition's first 4 KiB are all zero (never formatted).
fn partition_is_blank(f: &mut std::fs::File, p: &PartitionInfo) -> std::io::Result<bool> {
    let mut head = vec![0u8; p.size_bytes.min(4096) as usize];
    f.seek(SeekFrom::Start(p.start_bytes))?;
    f.read_exact(&mut head)?;
    Ok(head.iter().all(|b| *b == 0))
}

/// The NODECONFIG partition: by GPT name, else the first FAT volume labelled NODECONFIG.
fn find_nodeconfig(image: &Path, layout: &DiskLayout) -> Result<PartitionInfo, DiskError> {
    if let Some(p) = layout.find_partition_by_name(NODECONFIG_LABEL) {
        return Ok(p.clone());
    }
    for p in &layout.partitions {
        if let Ok(Some(label)) = fat_label(image, p) {
            if label.eq_ignore_ascii_case(NODECONFIG_LABEL) {
                return Ok(p.clone());
            }
        }
    }
    Err(DiskError::PartitionNotFound {
        image: image.to_path_buf(),
        wanted: NODECONFIG_LABEL.into(),
        partitions: layout.names(),
    })
}

fn open_fat(image: &Path, p: &PartitionInfo) -> Result<FatImage<std::fs::File>, DiskError> {
    let f = std::fs::File::open(image).map_err(|source| DiskError::Io {
        op: "opening",
        path: image.to_path_buf(),
        source,
    })?;
    FatImage::open(f, p.start_bytes, p.size_bytes).map_err(|source| DiskError::Fat {
        image: image.to_path_buf(),
        partition: p.name.clone(),
        source,
    })
}

fn fat_label(image: &Path, p: &PartitionInfo) -> Result<Option<String>, DiskError> {
    Ok(open_fat(image, p)?.label().map(str::to_string))
}

/// `SOURCE_DATE_EPOCH` when set (reproducible rewrites), else now.
fn timestamp_now() -> i64 {
    if let Some(t) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
    {
        return t;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `nodeimage write-config IMAGE CONFIG`.
pub fn write_config(args: &WriteConfigArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = std::fs::read(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let source_name = args.config.display().to_string();
    let (part, kind) = write_node_config(&args.image, &source_name, &text, timestamp_now())?;
    tracing::info!(
        image = %args.image.display(),
        partition = %part.name,
        partition_number = part.number,
        file = kind.file_name(),
        bytes = text.len(),
        "node config written"
    );
    println!(
        "{}: wrote {} ({} bytes) to partition {} `{}`",
        args.image.display(),
        kind.file_name(),
        text.len(),
        part.number,
        part.name
    );
    Ok(())
}

/// The node config found on NODECONFIG, summarised with secrets redacted.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    pub partition: String,
    /// Every file on the partition.
    pub files: Vec<String>,
    /// `node.yaml` or `config.ign`; absent when the partition holds neither.
    pub file: Option<String>,
    /// `native` or `ignition`.
    pub kind: Option<String>,
    /// Non-secret facts of the config.
    pub summary: Option<Value>,
    /// Names of the secrets the config carries (never their values).
    pub secrets_present: Vec<String>,
    /// Why the config could not be read or is invalid.
    pub error: Option<String>,
}

/// What `inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub image: PathBuf,
    pub layout: DiskLayout,
    /// `nodeimage/manifest.json` from the ESP, when present.
    pub manifest: Option<Value>,
    pub manifest_error: Option<String>,
    pub config: Option<ConfigReport>,
    pub config_error: Option<String>,
}

/// Read everything `inspect` shows. Only the partition table must be valid; problems
/// with the manifest or the config are reported in the result.
pub fn inspect_image(image: &Path) -> Result<ImageReport, DiskError> {
    let layout = read_layout(image)?;
    let mut report = ImageReport {
        image: image.to_path_buf(),
        layout: layout.clone(),
        manifest: None,
        manifest_error: None,
        config: None,
        config_error: None,
    };
    let esp = layout
        .find_partition_by_type(&type_guid::ESP)
        .or_else(|| layout.find_partition_by_name("ESP"));
    if let Some(esp) = esp {
        match read_optional(image, esp, ESP_MANIFEST_PATH) {
            Ok(Some(bytes)) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => report.manifest = Some(v),
                Err(e) => {
                    report.manifest_error = Some(format!("{}:/{ESP_MANIFEST_PATH}: {e}", esp.name))
                }
            },
            Ok(None) => {}
            Err(e) => report.manifest_error = Some(e.to_string()),
        }
    }
    match find_nodeconfig(image, &layout) {
        Ok(p) => match config_report(image, &p) {
            Ok(c) => report.config = Some(c),
            Err(e) => report.config_error = Some(e.to_string()),
        },
        Err(e) => report.config_error = Some(e.to_string()),
    }
    Ok(report)
}

fn read_optional(
    image: &Path,
    p: &PartitionInfo,
    path: &str,
) -> Result<Option<Vec<u8>>, DiskError> {
    let mut fs = open_fat(image, p)?;
    match fs.read_file(path) {
        Ok(b) => Ok(Some(b)),
        Err(fat::FatError::NotFound { .. }) => Ok(None),
        Err(source) => Err(DiskError::Fat {
            image: image.to_path_buf(),
            partition: p.name.clone(),
            source,
        }),
    }
}

fn config_report(image: &Path, p: &PartitionInfo) -> Result<ConfigReport, DiskError> {
    let mut fs = open_fat(image, p)?;
    let fat_err = |source| DiskError::Fat {
        image: image.to_path_buf(),
        partition: p.name.clone(),
        source,
    };
    let files: Vec<String> = fs
        .list_files()
        .map_err(fat_err)?
        .into_iter()
        .map(|f| f.path)
        .collect();
    let mut r = ConfigReport {
        partition: p.name.clone(),
        files: files.clone(),
        file: None,
        kind: None,
        summary: None,
        secrets_present: Vec::new(),
        error: None,
    };
    let find = |name: &str| files.iter().find(|f| f.eq_ignore_ascii_case(name)).cloned();
    let (file, native) = match (find(NODE_CONFIG_FILE_NAME), find(IGNITION_CONFIG_FILE_NAME)) {
        (Some(f), other) => {
            if other.is_some() {
                r.error = Some(format!("both {NODE_CONFIG_FILE_NAME} and {IGNITION_CONFIG_FILE_NAME} are present; firstboot reads {NODE_CONFIG_FILE_NAME}"));
            }
            (f, true)
        }
        (None, Some(f)) => (f, false),
        (None, None) => return Ok(r),
    };
    let bytes = fs.read_file(&file).map_err(fat_err)?;
    r.file = Some(file.clone());
    let source_name = format!("{}:/{file}", p.name);
    let text = String::from_utf8_lossy(&bytes);
    if native {
        r.kind = Some("native".into());
        match NodeConfig::parse(&source_name, &text) {
            Ok(c) => {
                let (summary, secrets) = redact_native(&c);
                r.summary = Some(summary);
                r.secrets_present = secrets;
            }
            Err(e) => r.error = Some(e.to_string()),
        }
    } else {
        r.kind = Some("ignition".into());
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => {
                let (summary, secrets) = redact_ignition(&v);
                r.summary = Some(summary);
                r.secrets_present = secrets;
            }
            Err(e) => r.error = Some(format!("{source_name}: {e}")),
        }
    }
    Ok(r)
}

/// A summary of a native config built from an allow-list of non-secret fields (so a
/// secret field added to the schema later is never shown), and the names of the
/// secrets present.
pub fn redact_native(c: &NodeConfig) -> (Value, Vec<String>) {
    let s = &c.secrets;
    let mut secrets: Vec<String> = [
        ("ca_certificate", s.ca_certificate.is_some()),
        ("bootstrap_token", s.bootstrap_token.is_some()),
        ("etcd_ca_certificate", s.etcd_ca_certificate.is_some()),
        (
            "front_proxy_ca_certificate",
            s.front_proxy_ca_certificate.is_some(),
        ),
        (
            "service_account_public_key",
            s.service_account_public_key.is_some(),
        ),
    ]
    .into_iter()
    .filter(|(_, present)| *present)
    .map(|(n, _)| n.to_string())
    .collect();
    secrets.extend(s.private_keys_present().into_iter().map(str::to_string));
    if c.cluster.etcd.is_some() {
        secrets.push("cluster.etcd.key".into());
    }
    secrets.sort();
    let cl = &c.cluster;
    let files: Vec<Value> = c
        .files
        .iter()
        .map(|f| json!({"path": f.path, "mode": f.mode, "bytes": f.contents.len()}))
        .collect();
    let summary = json!({
        "version": c.version,
        "role": c.role,
        "hostname": c.hostname,
        "bootstrap": c.bootstrap,
        "address": c.address,
        "private_address": c.private_address,
        "cluster": {
            "name": cl.name,
            "api_endpoint": cl.api_endpoint,
            "network": cl.network,
            "masters": cl.masters,
            "nodes": cl.nodes,
            "etcd_endpoints": cl.etcd.as_ref().map(|e| e.endpoints.clone()),
            "token_webhook": cl.authentication.as_ref().map(|a| a.token_webhook.is_some()),
            "audit": cl.audit.is_some(),
            "cloud_provider": cl.cloud.as_ref().map(|x| x.provider.clone()),
            "registry_mirrors": cl.registry_mirrors.keys().collect::<Vec<_>>(),
        },
        "labels": c.labels,
        "taints": c.taints,
        "files": files,
        "preflight": c.preflight,
    });
    (summary, secrets)
}

/// A summary of an Ignition config: version, file paths, unit names, user names; no
/// contents, keys, passwords or source URLs (which may carry credentials).
pub fn redact_ignition(v: &Value) -> (Value, Vec<String>) {
    let arr = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let files: Vec<Value> = arr("/storage/files")
        .iter()
        .map(|f| json!({"path": f.get("path"), "mode": f.get("mode")}))
        .collect();
    let units: Vec<Value> = arr("/systemd/units")
        .iter()
        .map(|u| json!({"name": u.get("name"), "enabled": u.get("enabled")}))
        .collect();
    let users: Vec<Value> = arr("/passwd/users")
        .iter()
        .map(|u| u.get("name").cloned().unwrap_or(Value::Null))
        .collect();
    let mut secrets = Vec::new();
    for u in arr("/passwd/users") {
        let name = u.get("name").and_then(Value::as_str).unwrap_or("?");
        if u.get("passwordHash").is_some_and(|p| !p.is_null()) {
            secrets.push(format!("passwd.users[{name}].passwordHash"));
        }
    }
    let embedded = arr("/storage/files")
        .iter()
        .any(|f| f.get("path").and_then(Value::as_str) == Some(NODE_CONFIG_IGNITION_PATH));
    if embedded {
        secrets.push(format!(
            "storage.files[{NODE_CONFIG_IGNITION_PATH}] (embedded node config)"
        ));
    }
    let summary = json!({
        "ignition_version": v.pointer("/ignition/version"),
        "merge_or_replace_sources": arr("/ignition/config/merge").len()
            + usize::from(v.pointer("/ignition/config/replace/source").is_some()),
        "files": files,
        "units": units,
        "users": users,
        "embedded_node_config": embedded,
    });
    (summary, secrets)
}

/// `nodeimage inspect IMAGE [--json]`.
pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let report = inspect_image(&args.image)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(())
}

fn human_size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// The text form of `inspect`.
/// Debian packages shown by name in the components list: what a node runs.
const KEY_PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "etcd-server",
    "systemd",
    "nftables",
    "iptables",
];

/// A nodeimage manifest as a components list: every pinned file and image with its
/// version and hash, the kernel, firstboot and the key Debian packages. `None` when the
/// manifest is not one of ours (then the JSON is shown as it is).
fn components_text(m: &serde_json::Value) -> Option<String> {
    use std::fmt::Write as _;
    let profile = m.get("profile")?;
    let mut s = String::new();
    let str_of = |v: &serde_json::Value, k: &str| {
        v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string()
    };
    let _ = writeln!(
        s,
        "  profile {} ({}), inputs sha256:{}, SOURCE_DATE_EPOCH {}",
        str_of(profile, "name"),
        str_of(profile, "arch"),
        str_of(m, "inputs_sha256"),
        m.get("source_date_epoch")
            .and_then(|v| v.as_i64())
            .unwrap_or(0)
    );
    if let Some(k) = m.get("kernel") {
        let _ = writeln!(
            s,
            "  kernel {} cmdline `{}`",
            str_of(k, "version"),
            str_of(k, "cmdline")
        );
    }
    if let Some(f) = m.get("firstboot") {
        let _ = writeln!(
            s,
            "  firstboot {} sha256:{}",
            str_of(f, "path"),
            str_of(f, "sha256")
        );
    }
    let _ = writeln!(s, "\nComponents (pinned files):");
    let arts = m
        .get("artifacts")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    if arts.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for a in &arts {
        let _ = writeln!(
            s,
            "  {:<26} {:<10} {:<28} {:>10}  {}",
            str_of(a, "name"),
            str_of(a, "version"),
            str_of(a, "install"),
            human_size(a.get("size").and_then(|v| v.as_u64()).unwrap_or(0)),
            str_of(a, "digest")
        );
    }
    let _ = writeln!(s, "\nImages:");
    let imgs = m
        .get("images")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    if imgs.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for i in &imgs {
        let _ = writeln!(
            s,
            "  {:<26} {:<7} {:>10}  {}@{}",
            str_of(i, "name"),
            str_of(i, "role"),
            human_size(i.get("size").and_then(|v| v.as_u64()).unwrap_or(0)),
            str_of(i, "reference"),
            str_of(i, "digest")
        );
    }
    if let Some(pkgs) = m
        .get("debian")
        .and_then(|d| d.get("packages"))
        .and_then(|p| p.as_object())
    {
        let _ = writeln!(
            s,
            "\nFrom Debian ({} packages; `inspect --json` lists them all):",
            pkgs.len()
        );
        for name in KEY_PACKAGES {
            if let Some(v) = pkgs.get(*name).and_then(|v| v.as_str()) {
                let _ = writeln!(s, "  {name:<26} {v}");
            }
        }
        for (name, v) in pkgs.iter().filter(|(n, _)| n.starts_with("linux-image-")) {
            let _ = writeln!(s, "  {name:<26} {}", v.as_str().unwrap_or("-"));
        }
    }
    Some(s)
}

pub fn render_text(r: &ImageReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let l = &r.layout;
    let _ = writeln!(s, "Image:     {}", r.image.display());
    let _ = writeln!(
        s,
        "Size:      {} ({} bytes)",
        human_size(l.size_bytes),
        l.size_bytes
    );
    let _ = writeln!(s, "Disk GUID: {}", l.disk_guid);
    let _ = writeln!(s, "\nPartitions:");
    let _ = writeln!(
        s,
        "  {:>2}  {:<12} {:<22} {:>10} {:>10} {:>10}  GUID",
        "#", "Name", "Type", "Start LBA", "End LBA", "Size"
    );
    for p in &l.partitions {
        let ty = if p.type_name == "unknown" {
            p.type_guid.to_string()
        } else {
            p.type_name.clone()
        };
        let _ = writeln!(
            s,
            "  {:>2}  {:<12} {:<22} {:>10} {:>10} {:>10}  {}",
            p.number,
            p.name,
            ty,
            p.first_lba,
            p.last_lba,
            human_size(p.size_bytes),
            p.part_guid
        );
    }
    let _ = writeln!(s, "\nManifest:");
    match (&r.manifest, &r.manifest_error) {
        (Some(m), _) => match components_text(m) {
            Some(t) => s.push_str(&t),
            None => {
                let pretty = serde_json::to_string_pretty(m).unwrap_or_default();
                for line in pretty.lines() {
                    let _ = writeln!(s, "  {line}");
                }
            }
        },
        (None, Some(e)) => {
            let _ = writeln!(s, "  error: {e}");
        }
        (None, None) => {
            let _ = writeln!(s, "  none (no ESP:/{ESP_MANIFEST_PATH})");
        }
    }
    let _ = writeln!(s, "\nNode config:");
    match (&r.config, &r.config_error) {
        (Some(c), _) => {
            let _ = writeln!(s, "  partition: {}", c.partition);
            let _ = writeln!(
                s,
                "  files:     {}",
                if c.files.is_empty() {
                    "none".to_string()
                } else {
                    c.files.join(", ")
                }
            );
            match (&c.file, &c.kind) {
                (Some(f), Some(k)) => {
                    let _ = writeln!(s, "  config:    {f} ({k})");
                }
                _ => {
                    let _ = writeln!(s, "  config:    none (run `nodeimage write-config`)");
                }
            }
            if let Some(summary) = &c.summary {
                let y = yaml_serde::to_string(summary).unwrap_or_default();
                for line in y.lines() {
                    let _ = writeln!(s, "    {line}");
                }
            }
            let _ = writeln!(
                s,
                "  secrets present (values not shown): {}",
                if c.secrets_present.is_empty() {
                    "none".to_string()
                } else {
                    c.secrets_present.join(", ")
                }
            );
            if let Some(e) = &c.error {
                let _ = writeln!(s, "  error: {e}");
            }
        }
        (None, Some(e)) => {
            let _ = writeln!(s, "  error: {e}");
        }
        (None, None) => {
            let _ = writeln!(s, "  none");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "version: 1\nrole: worker\nhostname: node-1\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1:6443\nsecrets:\n  bootstrap_token: abcdef.0123456789abcdef\n";

    #[test]
    fn classify() {
        assert!(matches!(
            classify_config("n", MINIMAL.as_bytes()).unwrap(),
            ConfigKind::Native(_)
        ));
        let ign = br#"{"ignition":{"version":"3.4.0"}}"#;
        assert!(matches!(
            classify_config("c.ign", ign).unwrap(),
            ConfigKind::Ignition(_)
        ));
        let e = classify_config("c.ign", br#"{"ignition":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.ign: ignition.version"), "{e}");
        let e = classify_config("n.yaml", b"version: 1\nrole: worker\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("n.yaml:"), "{e}");
        assert!(classify_config("bin", &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn native_summary_never_shows_secret_values() {
        let c = NodeConfig::parse("n", MINIMAL).unwrap();
        let (summary, secrets) = redact_native(&c);
        let text = summary.to_string();
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert!(text.contains("node-1"));
        assert_eq!(secrets, ["bootstrap_token"]);
    }

    #[test]
    fn ignition_summary_lists_names_only() {
        let v: Value = serde_json::from_str(
            r#"{"ignition":{"version":"3.4.0"},"passwd":{"users":[{"name":"core","passwordHash":"$6$x","sshAuthorizedKeys":["ssh-ed25519 AAA"]}]},
               "storage":{"files":[{"path":"/etc/nodeimage/node.yaml","contents":{"source":"data:,secret"}}]}}"#,
        )
        .unwrap();
        let (summary, secrets) = redact_ignition(&v);
        let text = summary.to_string();
        assert!(
            !text.contains("secret") && !text.contains("$6$") && !text.contains("AAA"),
            "{text}"
        );
        assert_eq!(secrets.len(), 2, "{secrets:?}");
    }
}

//! `nodeimage inspect`: what a finished raw image holds (partitions, the build manifest
//! from the ESP, the node config on NODECONFIG with its secrets redacted), read in
//! place.

use std::path::{Path, PathBuf};

use nodeimage_core::config::{NodeConfig, NODE_CONFIG_FILE_NAME};
use serde::Serialize;
use serde_json::Value;

use super::redact::{redact_ignition, redact_native};
use super::render::render_text;
use super::volumes::{
    find_nodeconfig, open_fat, read_optional, ESP_MANIFEST_PATH, IGNITION_CONFIG_FILE_NAME,
};
use super::{read_layout, type_guid, DiskError, DiskLayout, PartitionInfo};

/// Show an image's partitions, build manifest and node config (secrets redacted).
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// The raw disk image.
    pub image: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
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
        // The config may hold secrets: a parse error must not show them (redacted).
        match NodeConfig::parse_untrusted(&source_name, &text) {
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

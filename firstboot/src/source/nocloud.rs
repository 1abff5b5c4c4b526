//! NoCloud: a filesystem (FAT or ISO9660) labelled `cidata`/`CIDATA` holding `user-data`
//! and `meta-data` (YAML: `instance-id`, `local-hostname`).

use std::collections::BTreeMap;

use super::{read_labelled, DataSource, Metadata, SourceContext, SourceError};

pub(crate) const SOURCE_NAME: &str = "nocloud";
const LABELS: &[&str] = &["cidata"];

pub(crate) struct NoCloudSource {
    ctx: SourceContext,
}

impl NoCloudSource {
    pub fn new(ctx: &SourceContext) -> Self {
        NoCloudSource { ctx: ctx.clone() }
    }
}

impl DataSource for NoCloudSource {
    fn name(&self) -> &'static str {
        SOURCE_NAME
    }

    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(read_labelled(&self.ctx, SOURCE_NAME, LABELS, "user-data")?
            .1
            .filter(|d| !d.is_empty()))
    }

    fn metadata(&self) -> Result<Metadata, SourceError> {
        let Some(raw) = read_labelled(&self.ctx, SOURCE_NAME, LABELS, "meta-data")?.1 else {
            return Ok(Metadata::default());
        };
        let text = String::from_utf8(raw)
            .map_err(|_| SourceError::format(SOURCE_NAME, "meta-data: not UTF-8"))?;
        if text.trim().is_empty() {
            return Ok(Metadata::default());
        }
        let doc: BTreeMap<String, yaml_serde::Value> = yaml_serde::from_str(&text)
            .map_err(|e| SourceError::format(SOURCE_NAME, format!("meta-data: {e}")))?;
        let s = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let mut m = Metadata {
            instance_id: s("instance-id"),
            hostname: s("local-hostname").or_else(|| s("hostname")),
            ..Default::default()
        };
        for (k, v) in &doc {
            if let Some(v) = v.as_str() {
                m.attributes.insert(k.clone(), v.to_string());
            }
        }
        Ok(m)
    }
}

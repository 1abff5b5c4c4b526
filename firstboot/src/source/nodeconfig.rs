//! The image's own configuration partition: a FAT filesystem labelled `NODECONFIG`
//! (written by `nodeimage`) holding `node.yaml` (native) or `config.ign` (Ignition). An
//! empty partition is "present, no user data", so the platform's sources are tried next.

use std::cell::RefCell;

use nodeimage_core::config::NODE_CONFIG_FILE_NAME;

/// The Ignition config's file name on the partition (what `nodeimage write-config` writes).
pub const IGNITION_FILE_NAME: &str = "config.ign";

use super::{read_labelled, DataSource, SourceContext, SourceError};

/// Label of the configuration partition.
pub const NODECONFIG_LABEL: &str = "NODECONFIG";

pub(crate) const SOURCE_NAME: &str = "nodeconfig-partition";

pub(crate) struct NodeConfigPartition {
    ctx: SourceContext,
    /// `NODECONFIG/<file>` once read, so errors name the file the user edits.
    found: RefCell<Option<String>>,
}

impl NodeConfigPartition {
    pub fn new(ctx: &SourceContext) -> Self {
        NodeConfigPartition {
            ctx: ctx.clone(),
            found: RefCell::new(None),
        }
    }
}

impl DataSource for NodeConfigPartition {
    fn name(&self) -> &'static str {
        SOURCE_NAME
    }

    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError> {
        for file in [NODE_CONFIG_FILE_NAME, IGNITION_FILE_NAME] {
            let (vol, data) = read_labelled(&self.ctx, SOURCE_NAME, &[NODECONFIG_LABEL], file)?;
            tracing::debug!(device = %vol.path.display(), file, found = data.is_some(), "config partition");
            if data.is_some() {
                *self.found.borrow_mut() = Some(format!("{NODECONFIG_LABEL}/{file}"));
                return Ok(data);
            }
        }
        Ok(None)
    }

    fn document(&self) -> String {
        match &*self.found.borrow() {
            Some(f) => format!("{SOURCE_NAME} ({f})"),
            None => SOURCE_NAME.to_string(),
        }
    }
}

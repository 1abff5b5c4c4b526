//! The image's own configuration partition: a FAT filesystem labelled `NODECONFIG`
//! (written by `nodeimage`) holding `node.yaml`. An empty partition is "present, no user
//! data", so the platform's sources are tried next.

use crate::config::NODE_CONFIG_FILE_NAME;

use super::{read_labelled, DataSource, SourceContext, SourceError};

/// Label of the configuration partition.
pub const NODECONFIG_LABEL: &str = "NODECONFIG";

pub(crate) const SOURCE_NAME: &str = "nodeconfig-partition";

pub(crate) struct NodeConfigPartition {
    ctx: SourceContext,
}

impl NodeConfigPartition {
    pub fn new(ctx: &SourceContext) -> Self {
        NodeConfigPartition { ctx: ctx.clone() }
    }
}

impl DataSource for NodeConfigPartition {
    fn name(&self) -> &'static str {
        SOURCE_NAME
    }

    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError> {
        let (vol, data) = read_labelled(
            &self.ctx,
            SOURCE_NAME,
            &[NODECONFIG_LABEL],
            NODE_CONFIG_FILE_NAME,
        )?;
        tracing::debug!(device = %vol.path.display(), found = data.is_some(), "config partition");
        Ok(data)
    }
}

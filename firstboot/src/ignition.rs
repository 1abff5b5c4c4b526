//! Ignition v3 configs: parse, fetch, validate and stage; then apply under a root prefix.
//! (Staging is being written; this skeleton refuses Ignition user data.)

use crate::source::{SourceError, Timeouts};

#[derive(Debug, thiserror::Error)]
pub enum IgnitionError {
    #[error("{source_name}: Ignition: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
}

/// A fully fetched and validated Ignition config, ready to apply.
#[derive(Debug)]
pub struct StagedIgnition {
    node_config: Option<Vec<u8>>,
}

impl StagedIgnition {
    pub fn node_config_yaml(&self) -> Option<&[u8]> {
        self.node_config.as_deref()
    }
    pub fn apply(&self, _root: &std::path::Path) -> Result<(), IgnitionError> {
        Ok(())
    }
}

pub fn stage(
    source_name: &str,
    _data: &[u8],
    _timeouts: Timeouts,
) -> Result<StagedIgnition, SourceError> {
    Err(IgnitionError::Invalid {
        source_name: source_name.into(),
        message: "not supported yet".into(),
    }
    .into())
}

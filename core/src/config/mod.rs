//! The configuration schema shared by `nodeimage` (workstation) and `firstboot` (node).
//!
//! * [`ClusterConfig`] is the user's `cluster.yml`, in the vocabulary of Pharos Cluster.
//! * [`NodeConfig`] is the user data one node receives: its role, the cluster facts it
//!   needs and only the secrets that role needs.
//!
//! Both are strict: unknown keys are errors that carry the line and column. Constrained
//! values (hostnames, bootstrap tokens, label keys, file modes, node paths) are types
//! ([`types`]) checked while parsing; [`validate`] holds the checks between fields.

mod cluster;
mod node;
mod types;
mod validate;

pub use cluster::*;
pub use node::*;
pub use types::*;
pub use validate::*;

use std::path::Path;

/// A configuration document could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The document is not well-formed or has unknown keys / wrong types.
    #[error("{source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    /// The document parsed but a value is not acceptable.
    #[error("{source_name}: {field}: {message}")]
    Invalid {
        source_name: String,
        field: String,
        message: String,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    pub fn invalid(
        source_name: &str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            source_name: source_name.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parse strict YAML, turning yaml_serde's error (which carries "at line L column C")
/// into a [`ConfigError::Parse`] naming the document.
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(
    source_name: &str,
    text: &str,
) -> Result<T, ConfigError> {
    yaml_serde::from_str(text).map_err(|e| ConfigError::Parse {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })
}

pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })
}

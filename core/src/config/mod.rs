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

impl ConfigError {
    /// This error with the values of `document` taken out
    /// ([`crate::errors::redact_document_values`], the document's secret fields found by
    /// [`secret_values`]): for errors about user data, which reach the console, status.json
    /// and the cloud's console log.
    pub fn redacted(self, document: &str) -> Self {
        let secrets = secret_values(document);
        let r = |m: String| crate::errors::redact_document_values(&m, document, &secrets);
        match self {
            ConfigError::Parse {
                source_name,
                message,
            } => ConfigError::Parse {
                source_name,
                message: r(message),
            },
            ConfigError::Invalid {
                source_name,
                field,
                message,
            } => ConfigError::Invalid {
                source_name,
                field: r(field),
                message: r(message),
            },
            io @ ConfigError::Io { .. } => io,
        }
    }
}

/// Every string in `document` (YAML or JSON, read leniently; nothing when it is neither)
/// under `secrets:` or under a key that names a key, password, token or secret, at any
/// depth: what must never be echoed in a message about it.
pub fn secret_values(document: &str) -> Vec<String> {
    fn secret_key(k: &str) -> bool {
        let k = k.to_ascii_lowercase();
        ["secret", "key", "password", "token", "passwd"]
            .iter()
            .any(|w| k.contains(w))
    }
    fn walk(v: &yaml_serde::Value, secret: bool, out: &mut Vec<String>) {
        match v {
            yaml_serde::Value::String(s) if secret => out.push(s.clone()),
            yaml_serde::Value::Sequence(items) => {
                items.iter().for_each(|i| walk(i, secret, out));
            }
            yaml_serde::Value::Mapping(m) => {
                for (k, v) in m {
                    let named = k.as_str().is_some_and(secret_key);
                    walk(v, secret || named, out);
                }
            }
            yaml_serde::Value::Tagged(t) => walk(&t.value, secret, out),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = yaml_serde::from_str::<yaml_serde::Value>(document) {
        walk(&v, false, &mut out);
    }
    out
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

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
///
/// Lenient means: every document of a multi-document stream, a mapping with duplicate
/// keys (which `yaml_serde::Value` refuses, while the strict parser may already have
/// quoted a secret before reaching the duplicate), and whatever comes before an error.
pub fn secret_values(document: &str) -> Vec<String> {
    strings_below_keys(document, &|k| {
        let k = k.to_ascii_lowercase();
        ["secret", "key", "password", "token", "passwd"]
            .iter()
            .any(|w| k.contains(w))
    })
}

/// Every string in `document` (read leniently, as [`secret_values`] says) below a
/// mapping key for which `key_matches` is true, at any depth.
pub fn strings_below_keys(document: &str, key_matches: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for doc in yaml_serde::Deserializer::from_str(document) {
        let seed = SecretStrings {
            secret: false,
            key_matches,
            out: &mut out,
        };
        // An error ends the walk, keeping what was found before it (a stream that does
        // not load yields that error again and again: never ask for another document).
        if serde::de::DeserializeSeed::deserialize(seed, doc).is_err() {
            break;
        }
    }
    out
}

/// Walks a YAML document entry by entry for [`strings_below_keys`].
struct SecretStrings<'a> {
    /// Under a matching key.
    secret: bool,
    key_matches: &'a dyn Fn(&str) -> bool,
    out: &'a mut Vec<String>,
}

impl SecretStrings<'_> {
    fn below(&mut self, named: bool) -> SecretStrings<'_> {
        SecretStrings {
            secret: self.secret || named,
            key_matches: self.key_matches,
            out: self.out,
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for SecretStrings<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for SecretStrings<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        if self.secret {
            self.out.push(s.to_string());
        }
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self.below(false))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<yaml_serde::Value>()? {
            let named = key.as_str().is_some_and(self.key_matches);
            map.next_value_seed(self.below(named))?;
        }
        Ok(())
    }

    /// A tagged value (`!tag value`).
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use serde::de::VariantAccess;
        let (_tag, value) = data.variant::<serde::de::IgnoredAny>()?;
        value.newtype_variant_seed(self)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (fuzz/corpus/node_config/regress-duplicate-key-hides-secret.yaml):
    /// a duplicate key anywhere made `yaml_serde::Value` refuse the document, so no
    /// secret was known, and serde's quote of a secret that looks like a schema name
    /// (lower case) stayed in the message.
    #[test]
    fn duplicate_keys_do_not_hide_secrets() {
        let doc = "version: 1\nrole: master\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1\nsecrets: \"wv3avemarkerpassw0rdxyzzy\"\nlabels:\n  tier: a\n  tier: b\n";
        assert_eq!(
            secret_values(doc),
            vec!["wv3avemarkerpassw0rdxyzzy".to_string()]
        );
        let e = NodeConfig::parse_untrusted("ec2", doc)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("wv3avemarkerpassw0rdxyzzy"), "{e}");
        // Both entries of a duplicated key count.
        assert_eq!(
            secret_values("secrets: first-secret\nsecrets: {token: second-secret}\n"),
            vec!["first-secret".to_string(), "second-secret".to_string()]
        );
    }

    #[test]
    fn every_document_counts_and_an_unloadable_one_ends_the_walk() {
        assert_eq!(
            secret_values("password: one\n---\ntoken: two\n"),
            vec!["one".to_string(), "two".to_string()]
        );
        // Found by fuzzing: a stream that does not load yields its error for ever.
        assert!(secret_values("a: [\nb: c\n").is_empty());
        assert_eq!(secret_values("key: !tagged v\n"), vec!["v".to_string()]);
    }
}

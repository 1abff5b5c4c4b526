//! kubeconfig files (`apiVersion: v1`, `kind: Config`) with one cluster, one user and
//! one context.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// How the kubeconfig's user authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum KubeconfigUser {
    /// Client certificate and key embedded (`client-certificate-data`, `client-key-data`).
    EmbeddedCert { cert_pem: String, key_pem: String },
    /// Client certificate and key in files on the node (both may be the same file).
    CertFiles { cert: String, key: String },
    /// A bearer token (bootstrap kubeconfig).
    Token(String),
}

impl std::fmt::Debug for KubeconfigUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeconfigUser::EmbeddedCert { .. } => f.write_str("EmbeddedCert(<redacted>)"),
            KubeconfigUser::CertFiles { cert, key } => write!(f, "CertFiles({cert}, {key})"),
            KubeconfigUser::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// A kubeconfig document. Field names follow the kubeconfig schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub clusters: Vec<NamedCluster>,
    pub contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    pub current_context: String,
    #[serde(default)]
    pub preferences: yaml_serde::Mapping,
    pub users: Vec<NamedUser>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: ClusterEntry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterEntry {
    #[serde(
        rename = "certificate-authority-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub certificate_authority_data: Option<String>,
    #[serde(
        rename = "certificate-authority",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub certificate_authority: Option<String>,
    pub server: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: ContextEntry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextEntry {
    pub cluster: String,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: UserEntry,
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserEntry {
    #[serde(
        rename = "client-certificate-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_certificate_data: Option<String>,
    #[serde(
        rename = "client-key-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_key_data: Option<String>,
    #[serde(
        rename = "client-certificate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_certificate: Option<String>,
    #[serde(
        rename = "client-key",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserEntry")
            .field("client_certificate", &self.client_certificate)
            .field("client_key", &self.client_key)
            .finish_non_exhaustive()
    }
}

impl Kubeconfig {
    /// One cluster (CA embedded), one user, one context `<user>@<cluster>`.
    pub fn new(
        cluster_name: &str,
        server: &str,
        ca_pem: &str,
        user_name: &str,
        user: KubeconfigUser,
    ) -> Self {
        let ctx = format!("{user_name}@{cluster_name}");
        let user = match user {
            KubeconfigUser::EmbeddedCert { cert_pem, key_pem } => UserEntry {
                client_certificate_data: Some(B64.encode(cert_pem)),
                client_key_data: Some(B64.encode(key_pem)),
                ..Default::default()
            },
            KubeconfigUser::CertFiles { cert, key } => UserEntry {
                client_certificate: Some(cert),
                client_key: Some(key),
                ..Default::default()
            },
            KubeconfigUser::Token(t) => UserEntry {
                token: Some(t),
                ..Default::default()
            },
        };
        Kubeconfig {
            api_version: "v1".into(),
            kind: "Config".into(),
            clusters: vec![NamedCluster {
                name: cluster_name.into(),
                cluster: ClusterEntry {
                    certificate_authority_data: Some(B64.encode(ca_pem)),
                    certificate_authority: None,
                    server: server.into(),
                },
            }],
            contexts: vec![NamedContext {
                name: ctx.clone(),
                context: ContextEntry {
                    cluster: cluster_name.into(),
                    user: user_name.into(),
                },
            }],
            current_context: ctx,
            preferences: Default::default(),
            users: vec![NamedUser {
                name: user_name.into(),
                user,
            }],
        }
    }

    pub fn parse(text: &str) -> Result<Self, yaml_serde::Error> {
        yaml_serde::from_str(text)
    }

    pub fn to_yaml(&self) -> String {
        // As Kubernetes' YAML 1.1 reader reads it back (a cluster named `on` stays a
        // string).
        crate::yaml::to_string(self)
    }

    pub fn server(&self) -> Option<&str> {
        self.clusters.first().map(|c| c.cluster.server.as_str())
    }

    pub fn cluster_name(&self) -> Option<&str> {
        self.clusters.first().map(|c| c.name.as_str())
    }

    pub fn ca_pem(&self) -> Option<String> {
        decode(
            self.clusters
                .first()?
                .cluster
                .certificate_authority_data
                .as_deref()?,
        )
    }

    pub fn client_certificate_pem(&self) -> Option<String> {
        decode(
            self.users
                .first()?
                .user
                .client_certificate_data
                .as_deref()?,
        )
    }

    pub fn client_key_pem(&self) -> Option<String> {
        decode(self.users.first()?.user.client_key_data.as_deref()?)
    }
}

fn decode(s: &str) -> Option<String> {
    String::from_utf8(B64.decode(s).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let k = Kubeconfig::new(
            "demo",
            "https://127.0.0.1:6443",
            "CA",
            "system:kube-scheduler",
            KubeconfigUser::EmbeddedCert {
                cert_pem: "C".into(),
                key_pem: "K".into(),
            },
        );
        let y = k.to_yaml();
        assert!(
            y.contains("current-context: system:kube-scheduler@demo"),
            "{y}"
        );
        let p = Kubeconfig::parse(&y).unwrap();
        assert_eq!(p.client_certificate_pem().as_deref(), Some("C"));
        assert_eq!(p.client_key_pem().as_deref(), Some("K"));
        assert_eq!(p.ca_pem().as_deref(), Some("CA"));
        assert_eq!(p.server(), Some("https://127.0.0.1:6443"));
        assert!(!format!("{p:?}").contains("client_key_data"));
    }
}

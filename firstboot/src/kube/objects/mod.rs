//! The Kubernetes objects the manifests are made of, as typed values: the subset of the
//! API (v1.35) the bootstrap master's manifests use, with the API's field names. Each
//! serializes `apiVersion`, `kind`, `metadata` first; optional and empty fields are left
//! out. [`nodeimage_core::yaml`] turns them into text.

use std::collections::BTreeMap;

use serde::Serialize;

mod pod;
mod rbac;

pub use pod::*;
pub use rbac::*;

/// A string-to-string map (labels, selectors, ConfigMap data), sorted by key.
pub type StringMap = BTreeMap<String, String>;

/// `[(k, v)]` as a [`StringMap`].
pub fn map<const N: usize>(pairs: [(&str, &str); N]) -> StringMap {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `["a", "b"]` as owned strings.
pub fn strings<const N: usize>(items: [&str; N]) -> Vec<String> {
    items.into_iter().map(str::to_string).collect()
}

/// An object: `apiVersion`, `kind`, `metadata`, then the kind's own fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Object<B: Serialize> {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: ObjectMeta,
    #[serde(flatten)]
    pub body: B,
}

impl<B: Serialize> Object<B> {
    pub fn new(
        api_version: &'static str,
        kind: &'static str,
        metadata: ObjectMeta,
        body: B,
    ) -> Self {
        Object {
            api_version,
            kind,
            metadata,
            body,
        }
    }
}

/// A kind without fields of its own (ServiceAccount, Namespace).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NoBody {}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: StringMap,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: StringMap,
}

/// Metadata with a name (cluster-scoped objects).
pub fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.into(),
        ..Default::default()
    }
}

/// Metadata with a name in a namespace.
pub fn meta_ns(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(namespace.into()),
        ..meta(name)
    }
}

impl ObjectMeta {
    pub fn labels(mut self, labels: StringMap) -> Self {
        self.labels = labels;
        self
    }
    pub fn annotations(mut self, annotations: StringMap) -> Self {
        self.annotations = annotations;
        self
    }
}

// ------------------------------------------------------------------ core/v1 ---

/// A Secret's fields. Debug shows the keys, never the values.
#[derive(Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretBody {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub string_data: Option<StringMap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<StringMap>,
}

impl std::fmt::Debug for SecretBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys =
            |m: &Option<StringMap>| m.as_ref().map(|m| m.keys().cloned().collect::<Vec<_>>());
        f.debug_struct("SecretBody")
            .field("type", &self.type_)
            .field("string_data", &keys(&self.string_data))
            .field("data", &keys(&self.data))
            .finish()
    }
}

/// `data` absent or present (`data: {}` is kept: the ingress controller's ConfigMap).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConfigMapBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<StringMap>,
}

pub type Secret = Object<SecretBody>;
pub type ConfigMap = Object<ConfigMapBody>;
pub type Service = Object<ServiceBody>;

/// A Secret of `type_` with `stringData` and `data` (each absent when `None`).
pub fn secret(
    metadata: ObjectMeta,
    type_: &str,
    string_data: Option<StringMap>,
    data: Option<StringMap>,
) -> Secret {
    Object::new(
        "v1",
        "Secret",
        metadata,
        SecretBody {
            type_: type_.into(),
            string_data,
            data,
        },
    )
}

/// A ConfigMap (`data` absent when `None`).
pub fn config_map(metadata: ObjectMeta, data: Option<StringMap>) -> ConfigMap {
    Object::new("v1", "ConfigMap", metadata, ConfigMapBody { data })
}

/// A Service selecting `selector`, on `ports`.
pub fn service(
    metadata: ObjectMeta,
    selector: StringMap,
    cluster_ip: Option<String>,
    ports: Vec<ServicePort>,
) -> Service {
    Object::new(
        "v1",
        "Service",
        metadata,
        ServiceBody {
            spec: ServiceSpec {
                selector,
                cluster_ip,
                ports,
            },
        },
    )
}

pub fn service_account(name: &str, namespace: &str) -> Object<NoBody> {
    Object::new("v1", "ServiceAccount", meta_ns(name, namespace), NoBody {})
}

pub fn namespace(name: &str) -> Object<NoBody> {
    Object::new("v1", "Namespace", meta(name), NoBody {})
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceBody {
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    pub selector: StringMap,
    #[serde(rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// A port by number or by name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u16),
    String(String),
}

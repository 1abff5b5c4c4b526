//! RBAC: roles, bindings, subjects.

use serde::Serialize;

use super::{strings, Object, ObjectMeta};

pub const RBAC: &str = "rbac.authorization.k8s.io/v1";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RulesBody {
    pub rules: Vec<PolicyRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    pub verbs: Vec<String>,
}

/// A rule for `resources` of the API groups `groups` (`""`: the core group).
pub fn rule<const G: usize, const R: usize, const V: usize>(
    groups: [&str; G],
    resources: [&str; R],
    verbs: [&str; V],
) -> PolicyRule {
    PolicyRule {
        api_groups: strings(groups),
        resources: strings(resources),
        resource_names: Vec::new(),
        verbs: strings(verbs),
    }
}

impl PolicyRule {
    pub fn named<const N: usize>(mut self, names: [&str; N]) -> Self {
        self.resource_names = strings(names);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingBody {
    pub role_ref: RoleRef,
    pub subjects: Vec<Subject>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleRef {
    pub api_group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A subject of kind `Group` or `User`.
pub fn rbac_subject(kind: &str, name: &str) -> Subject {
    Subject {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: kind.into(),
        name: name.into(),
        namespace: None,
    }
}

/// A ServiceAccount subject.
pub fn sa_subject(name: &str, namespace: &str) -> Subject {
    Subject {
        api_group: None,
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(namespace.into()),
    }
}

/// A ClusterRole or Role (`kind`).
pub fn role(kind: &'static str, metadata: ObjectMeta, rules: Vec<PolicyRule>) -> Object<RulesBody> {
    Object::new(RBAC, kind, metadata, RulesBody { rules })
}

/// A ClusterRoleBinding or RoleBinding (`kind`) of the ClusterRole or Role `role_kind`
/// named `role_name`.
pub fn binding(
    kind: &'static str,
    metadata: ObjectMeta,
    role_kind: &str,
    role_name: &str,
    subjects: Vec<Subject>,
) -> Object<BindingBody> {
    Object::new(
        RBAC,
        kind,
        metadata,
        BindingBody {
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: role_kind.into(),
                name: role_name.into(),
            },
            subjects,
        },
    )
}

/// Where a role applies: cluster-wide (ClusterRole, ClusterRoleBinding) or in the
/// namespace of its metadata (Role, RoleBinding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Namespace,
}

/// A role with `rules` and its binding to the ServiceAccount `sa` of `namespace`, both
/// with `metadata` (the binding is named after the role), as two documents.
pub fn role_for_service_account(
    scope: Scope,
    metadata: ObjectMeta,
    rules: Vec<PolicyRule>,
    sa: &str,
    namespace: &str,
) -> [yaml_serde::Value; 2] {
    let (role_kind, binding_kind) = match scope {
        Scope::Cluster => ("ClusterRole", "ClusterRoleBinding"),
        Scope::Namespace => ("Role", "RoleBinding"),
    };
    let name = metadata.name.clone();
    [
        nodeimage_core::yaml::value(&role(role_kind, metadata.clone(), rules)),
        nodeimage_core::yaml::value(&binding(
            binding_kind,
            metadata,
            role_kind,
            &name,
            vec![sa_subject(sa, namespace)],
        )),
    ]
}

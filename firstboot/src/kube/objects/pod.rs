//! Workloads: Deployments and DaemonSets, their pod templates and containers.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{map, strings, NoBody, Object, ObjectMeta, StringMap};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadBody {
    pub spec: WorkloadSpec,
}

/// The spec of a Deployment or a DaemonSet.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<u32>,
    /// Deployment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    pub selector: LabelSelector,
    /// DaemonSet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<Strategy>,
    pub template: PodTemplate,
}

/// A Deployment or DaemonSet (`kind`) whose pods carry, and are selected by, `labels`.
pub fn workload(
    kind: &'static str,
    metadata: ObjectMeta,
    labels: StringMap,
    spec: PodSpec,
) -> Object<WorkloadBody> {
    Object::new(
        "apps/v1",
        kind,
        metadata,
        WorkloadBody {
            spec: WorkloadSpec {
                selector: LabelSelector {
                    match_labels: labels.clone(),
                },
                template: PodTemplate {
                    metadata: TemplateMeta { labels },
                    spec,
                },
                ..Default::default()
            },
        },
    )
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

/// `type: RollingUpdate`.
pub fn rolling_update(max_unavailable: Option<u32>) -> Strategy {
    Strategy {
        type_: "RollingUpdate".into(),
        rolling_update: max_unavailable.map(|m| RollingUpdate { max_unavailable: m }),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    pub max_unavailable: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    pub match_labels: StringMap,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PodTemplate {
    pub metadata: TemplateMeta,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TemplateMeta {
    pub labels: StringMap,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    #[serde(rename = "hostPID", skip_serializing_if = "Option::is_none")]
    pub host_pid: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: StringMap,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
}

/// The selector of Linux nodes, every workload's base node selector.
pub fn linux() -> StringMap {
    map([("kubernetes.io/os", "linux")])
}

/// `seLinuxOptions: {}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    pub se_linux_options: NoBody,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Toleration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

/// The pod spec of a network plugin's host-network daemon on every node: its service
/// account, `system-node-critical`, `restartPolicy: Always` and tolerating every
/// `NoSchedule` and `NoExecute` taint.
pub fn node_network_daemon(service_account: &str) -> PodSpec {
    PodSpec {
        service_account_name: Some(service_account.into()),
        priority_class_name: Some("system-node-critical".into()),
        host_network: Some(true),
        restart_policy: Some("Always".into()),
        tolerations: ["NoSchedule", "NoExecute"]
            .into_iter()
            .map(|effect| Toleration {
                key: None,
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
            })
            .collect(),
        ..Default::default()
    }
}

/// Tolerate the control-plane taint (`key: node-role.kubernetes.io/control-plane`,
/// `effect: NoSchedule`).
pub fn tolerate_control_plane() -> Toleration {
    Toleration {
        key: Some(crate::kube::kubelet::CONTROL_PLANE_TAINT.into()),
        operator: None,
        effect: Some("NoSchedule".into()),
    }
}

/// Preferred anti-affinity between pods with the same labels (one per node where
/// possible).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    pub pod_anti_affinity: PodAntiAffinity,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodAntiAffinity {
    pub preferred_during_scheduling_ignored_during_execution: Vec<WeightedPodAffinityTerm>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedPodAffinityTerm {
    pub weight: u32,
    pub pod_affinity_term: PodAffinityTerm,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodAffinityTerm {
    pub topology_key: String,
    pub label_selector: LabelSelector,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

/// A container `name` running `image`.
pub fn container(name: &str, image: &str) -> Container {
    Container {
        name: name.into(),
        image: image.into(),
        ..Default::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// `name: value`.
pub fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// `name` from a field of the pod (`spec.nodeName`, `metadata.namespace`).
pub fn env_field(name: &str, api_version: Option<&str>, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(FieldRef {
                api_version: api_version.map(str::to_string),
                field_path: field_path.into(),
            }),
            secret_key_ref: None,
        }),
    }
}

/// `name` from the key `key` of the Secret `secret`.
pub fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: None,
            secret_key_ref: Some(SecretKeyRef {
                name: secret.into(),
                key: key.into(),
            }),
        }),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<FieldRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    pub field_path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Resources {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: StringMap,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: StringMap,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub container_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// A named container port.
pub fn port(name: &str, container_port: u16, protocol: Option<&str>) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port,
        host_port: None,
        protocol: protocol.map(str::to_string),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub http_get: HttpGet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
}

/// An HTTP GET probe of `path` on `port`.
pub fn http_probe(path: &str, port: u16) -> Probe {
    Probe {
        http_get: HttpGet {
            path: path.into(),
            port,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HttpGet {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub path: String,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    pub pre_stop: LifecycleHandler,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LifecycleHandler {
    pub exec: ExecAction,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecAction {
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_privilege_escalation: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

/// `privileged: true`.
pub fn privileged() -> Option<SecurityContext> {
    Some(SecurityContext {
        privileged: Some(true),
        ..Default::default()
    })
}

/// `add: [NET_BIND_SERVICE]`, `drop: [ALL]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capabilities {
    pub add: Vec<String>,
    pub drop: Vec<String>,
}

pub fn bind_service_only() -> Option<Capabilities> {
    Some(Capabilities {
        add: strings(["NET_BIND_SERVICE"]),
        drop: strings(["ALL"]),
    })
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// Volume `name` at `path`, read-only when `read_only`.
pub fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolume>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolume>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<NoBody>,
}

/// A hostPath volume (`type` when given, e.g. `FileOrCreate`).
pub fn host_path(name: &str, path: &str, type_: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPath {
            path: path.into(),
            type_: type_.map(str::to_string),
        }),
        ..Default::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostPath {
    pub path: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigMapVolume {
    pub name: String,
    pub items: Vec<KeyToPath>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolume {
    pub secret_name: String,
}

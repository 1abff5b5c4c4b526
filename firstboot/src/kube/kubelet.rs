//! The kubelet: KubeletConfiguration (kubelet.config.k8s.io/v1beta1), its systemd unit,
//! and its credentials: a bootstrap kubeconfig with the bootstrap token on workers (TLS
//! bootstrapping), a kubeconfig pointing at the minted client certificate on masters.

use serde::Serialize;

use super::{Flags, GeneratedFile, KubeInputs, ServiceUnit, CONTAINERD_ENDPOINT};
use nodeimage_core::config::TaintEffect;
use nodeimage_core::kubeconfig::{Kubeconfig, KubeconfigUser};
use nodeimage_core::layout::paths;

/// systemd-resolved's list of the node's upstream DNS servers (from DHCP or the platform).
pub const RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";
pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
pub const KUBELET_UNIT: &str = "/etc/systemd/system/kubelet.service";
/// Taint on masters (the key current Kubernetes and its addons tolerate).
pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane";
/// `(key, value, effect)` taints this node registers with.
pub fn register_taints(inp: &KubeInputs) -> Vec<(String, Option<String>, TaintEffect)> {
    let mut v: Vec<_> = inp
        .node
        .taints
        .iter()
        .map(|t| (t.key.to_string(), t.value.clone(), t.effect))
        .collect();
    if inp.is_master()
        && inp.node.cluster.taint_masters
        && !v.iter().any(|t| t.0 == CONTROL_PLANE_TAINT)
    {
        v.insert(
            0,
            (
                CONTROL_PLANE_TAINT.to_string(),
                None,
                TaintEffect::NoSchedule,
            ),
        );
    }
    v
}

/// KubeletConfiguration (`kubelet.config.k8s.io/v1beta1`), the fields set here.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletConfiguration {
    pub api_version: &'static str,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub read_only_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthz_bind_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthz_port: Option<u16>,
    pub authentication: KubeletAuthentication,
    pub authorization: KubeletAuthorization,
    pub cgroup_driver: &'static str,
    pub container_runtime_endpoint: &'static str,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// The resolvers pods with `dnsPolicy: Default` (CoreDNS among them) inherit:
    /// systemd-resolved's list of the servers DHCP or the platform gave the node, not its
    /// 127.0.0.53 stub, which would make CoreDNS forward to itself (its `loop` plugin
    /// stops it).
    pub resolv_conf: &'static str,
    pub rotate_certificates: bool,
    #[serde(rename = "serverTLSBootstrap")]
    pub server_tls_bootstrap: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_private_key_file: Option<&'static str>,
    pub register_node: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub register_with_taints: Vec<RegisterTaint>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KubeletAuthentication {
    pub anonymous: Enabled,
    pub webhook: AuthnWebhook,
    pub x509: X509,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Enabled {
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthnWebhook {
    pub enabled: bool,
    #[serde(rename = "cacheTTL")]
    pub cache_ttl: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct X509 {
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KubeletAuthorization {
    pub mode: &'static str,
    pub webhook: AuthzWebhook,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthzWebhook {
    #[serde(rename = "cacheAuthorizedTTL")]
    pub cache_authorized_ttl: &'static str,
    #[serde(rename = "cacheUnauthorizedTTL")]
    pub cache_unauthorized_ttl: &'static str,
}

/// A `registerWithTaints` entry (core/v1 Taint).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegisterTaint {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: TaintEffect,
}

/// KubeletConfiguration. Workers ask for a serving certificate through a CSR
/// (`serverTLSBootstrap`); masters serve with the certificate they minted.
pub fn kubelet_configuration(inp: &KubeInputs) -> KubeletConfiguration {
    let n = &inp.node.cluster.network;
    // Listeners from the port table: the API on every address (the firewall admits the
    // masters), healthz on localhost, the read-only port off (0) unless a row enables it.
    let b = &inp.binds;
    let master = inp.is_master();
    KubeletConfiguration {
        api_version: "kubelet.config.k8s.io/v1beta1",
        kind: "KubeletConfiguration",
        address: b.kubelet.map(|a| a.ip().to_string()),
        port: b.kubelet.map(|a| a.port()),
        read_only_port: b.kubelet_read_only.map_or(0, |a| a.port()),
        healthz_bind_address: b.kubelet_healthz.map(|a| a.ip().to_string()),
        healthz_port: b.kubelet_healthz.map(|a| a.port()),
        authentication: KubeletAuthentication {
            anonymous: Enabled { enabled: false },
            webhook: AuthnWebhook {
                enabled: true,
                cache_ttl: "2m0s",
            },
            x509: X509 {
                client_ca_file: paths::CA_CRT,
            },
        },
        authorization: KubeletAuthorization {
            mode: "Webhook",
            webhook: AuthzWebhook {
                cache_authorized_ttl: "5m0s",
                cache_unauthorized_ttl: "30s",
            },
        },
        cgroup_driver: "systemd",
        container_runtime_endpoint: CONTAINERD_ENDPOINT,
        cluster_dns: vec![n.dns_service_ip().to_string()],
        cluster_domain: n.dns_domain.trim_end_matches('.').to_string(),
        resolv_conf: RESOLV_CONF,
        rotate_certificates: true,
        server_tls_bootstrap: !master,
        tls_cert_file: master.then_some(paths::KUBELET_SERVING_CRT),
        tls_private_key_file: master.then_some(paths::KUBELET_SERVING_KEY),
        register_node: true,
        register_with_taints: register_taints(inp)
            .into_iter()
            .map(|(key, value, effect)| RegisterTaint { key, value, effect })
            .collect(),
    }
}

/// [`kubelet_configuration`] as the file's text.
pub fn kubelet_config(inp: &KubeInputs) -> String {
    let c = kubelet_configuration(inp);
    let over = &inp.node.cluster.components.kubelet.config;
    if over.is_empty() {
        nodeimage_core::yaml::to_string(&c)
    } else {
        nodeimage_core::yaml::to_string(&super::with_overrides(&c, over))
    }
}

/// The labels the kubelet sets on itself (`--node-labels`): the operator's labels, which
/// validation guarantees a kubelet may set. Roles come from the bootstrap master.
pub fn kubelet_node_labels(inp: &KubeInputs) -> String {
    inp.node
        .labels
        .iter()
        .filter(|(k, _)| nodeimage_core::config::kubelet_may_set_label(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// kubelet command-line flags (what KubeletConfiguration does not carry).
pub fn kubelet_flags(inp: &KubeInputs) -> Flags {
    let mut f = Flags::default();
    f.set("config", KUBELET_CONFIG)
        .set("kubeconfig", paths::KUBELET_CONF)
        .set("hostname-override", inp.hostname)
        .set("node-ip", inp.internal_ip.to_string());
    if !inp.is_master() {
        f.set("bootstrap-kubeconfig", paths::BOOTSTRAP_KUBELET_CONF);
    }
    let labels = kubelet_node_labels(inp);
    if !labels.is_empty() {
        f.set("node-labels", labels);
    }
    if inp.node.cluster.cloud.is_some() {
        f.set("cloud-provider", "external");
    }
    f.extend_from(&inp.node.cluster.components.kubelet.extra_args);
    f
}

/// The bootstrap kubeconfig of a worker: the cluster CA and the bootstrap token.
pub fn bootstrap_kubeconfig(inp: &KubeInputs) -> Option<String> {
    let s = &inp.node.secrets;
    let (ca, token) = (s.ca_certificate.as_ref()?, s.bootstrap_token.as_ref()?);
    Some(
        Kubeconfig::new(
            &inp.node.cluster.name,
            &nodeimage_core::layout::api_server_url(&inp.node.cluster.api_endpoint),
            ca,
            "tls-bootstrap-token-user",
            KubeconfigUser::Token(token.as_str().to_string()),
        )
        .to_yaml(),
    )
}

/// A master's kubelet.conf: the local API server and the client certificate minted by
/// [`crate::pki`] in the file the kubelet rotates.
pub fn master_kubelet_kubeconfig(inp: &KubeInputs) -> Option<String> {
    let ca = inp.node.secrets.ca_certificate.as_ref()?;
    Some(
        Kubeconfig::new(
            &inp.node.cluster.name,
            &nodeimage_core::layout::local_apiserver_url(),
            ca,
            &format!("system:node:{}", inp.hostname),
            KubeconfigUser::CertFiles {
                cert: paths::KUBELET_CLIENT_CURRENT.into(),
                key: paths::KUBELET_CLIENT_CURRENT.into(),
            },
        )
        .to_yaml(),
    )
}

pub fn kubelet_unit(inp: &KubeInputs) -> String {
    let flags = kubelet_flags(inp);
    ServiceUnit {
        description: "Kubernetes node agent (kubelet)",
        documentation: "https://kubernetes.io/docs/reference/command-line-tools-reference/kubelet/",
        after: &["network-online.target", "containerd.service"],
        wants: &["network-online.target"],
        requires: &["containerd.service"],
        exec: inp.bin("kubelet"),
        flags: &flags,
    }
    .render()
}

/// The kubelet's files: config, unit and credentials for this role.
pub fn kubelet_files(inp: &KubeInputs) -> Vec<GeneratedFile> {
    let mut v = vec![
        GeneratedFile::new(KUBELET_CONFIG, 0o644, kubelet_config(inp)),
        GeneratedFile::new(KUBELET_UNIT, 0o644, kubelet_unit(inp)),
    ];
    if inp.is_master() {
        if let Some(k) = master_kubelet_kubeconfig(inp) {
            v.push(GeneratedFile::new(paths::KUBELET_CONF, 0o600, k));
        }
    } else if let Some(k) = bootstrap_kubeconfig(inp) {
        v.push(GeneratedFile::new(paths::BOOTSTRAP_KUBELET_CONF, 0o600, k));
    }
    v
}

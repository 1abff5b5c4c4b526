//! kube-proxy as a systemd service on every node, running the pinned binary. There is
//! no registry to pull a kube-proxy image from, and a DaemonSet would need one; a
//! service also works before the pod network exists.
//!
//! Credentials: the kubelet's own (`/etc/kubernetes/kubelet.conf`, rotated by the
//! kubelet). [`super::manifests::rbac`] binds the group `system:nodes` to the built-in
//! `system:node-proxier` role, which is what kube-proxy needs. The service restarts
//! until the kubelet has written kubelet.conf (after TLS bootstrapping on workers).

use serde::Serialize;

use super::{Flags, GeneratedFile, KubeInputs, ServiceUnit};
use nodeimage_core::layout::paths;

pub const KUBE_PROXY_CONFIG: &str = "/var/lib/kube-proxy/config.yaml";
pub const KUBE_PROXY_UNIT: &str = "/etc/systemd/system/kube-proxy.service";
/// KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1). Mode `iptables`: Weave
/// Net and its network-policy controller program iptables as well.
/// Health (cluster nodes, for load balancers) and metrics (localhost) listeners come from
/// the port table.
pub fn kube_proxy_config(inp: &KubeInputs) -> String {
    let c = kube_proxy_configuration(inp);
    let over = &inp.node.cluster.components.kube_proxy.config;
    if over.is_empty() {
        nodeimage_core::yaml::to_string(&c)
    } else {
        nodeimage_core::yaml::to_string(&super::with_overrides(&c, over))
    }
}

/// KubeProxyConfiguration, the fields set here.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub bind_address: &'static str,
    pub client_connection: ClientConnection,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    pub hostname_override: String,
    pub healthz_bind_address: String,
    pub metrics_bind_address: String,
    pub mode: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientConnection {
    pub kubeconfig: &'static str,
}

/// The typed form of [`kube_proxy_config`].
pub fn kube_proxy_configuration(inp: &KubeInputs) -> KubeProxyConfiguration {
    let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    KubeProxyConfiguration {
        api_version: "kubeproxy.config.k8s.io/v1alpha1",
        kind: "KubeProxyConfiguration",
        bind_address: "0.0.0.0",
        client_connection: ClientConnection {
            kubeconfig: paths::KUBELET_CONF,
        },
        cluster_cidr: inp.node.cluster.network.pod_network_cidr.to_string(),
        hostname_override: inp.hostname.to_string(),
        healthz_bind_address: addr(inp.binds.kube_proxy_healthz),
        metrics_bind_address: addr(inp.binds.kube_proxy_metrics),
        mode: "iptables",
    }
}

pub fn kube_proxy_unit(inp: &KubeInputs) -> String {
    let mut f = Flags::default();
    f.set("config", KUBE_PROXY_CONFIG);
    ServiceUnit {
        description: "Kubernetes network proxy (kube-proxy)",
        documentation:
            "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-proxy/",
        after: &["network-online.target", "kubelet.service"],
        wants: &["network-online.target"],
        requires: &[],
        exec: inp.bin("kube-proxy"),
        flags: &f,
    }
    .render()
}

pub fn kube_proxy_files(inp: &KubeInputs) -> Vec<GeneratedFile> {
    vec![
        GeneratedFile::new(KUBE_PROXY_CONFIG, 0o644, kube_proxy_config(inp)),
        GeneratedFile::new(KUBE_PROXY_UNIT, 0o644, kube_proxy_unit(inp)),
    ]
}

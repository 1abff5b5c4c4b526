//! kube-proxy as a systemd service on every node, running the pinned binary. There is
//! no registry to pull a kube-proxy image from, and a DaemonSet would need one; a
//! service also works before the pod network exists.
//!
//! Credentials: the kubelet's own (`/etc/kubernetes/kubelet.conf`, rotated by the
//! kubelet). [`super::manifests::rbac`] binds the group `system:nodes` to the built-in
//! `system:node-proxier` role, which is what kube-proxy needs. The service restarts
//! until the kubelet has written kubelet.conf (after TLS bootstrapping on workers).

use super::{q, yaml_addr, Flags, GeneratedFile, KubeInputs, ServiceUnit};
use nodeimage_core::layout::paths;

pub const KUBE_PROXY_CONFIG: &str = "/var/lib/kube-proxy/config.yaml";
pub const KUBE_PROXY_UNIT: &str = "/etc/systemd/system/kube-proxy.service";
/// KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1). Mode `iptables`: Weave
/// Net and its network-policy controller program iptables as well.
/// Health (cluster nodes, for load balancers) and metrics (localhost) listeners come from
/// the port table.
pub fn kube_proxy_config(inp: &KubeInputs) -> String {
    let n = &inp.node.cluster.network;
    let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
clientConnection:\n  kubeconfig: {kubeconfig}
clusterCIDR: {cidr}
hostnameOverride: {host}
healthzBindAddress: {healthz}
metricsBindAddress: {metrics}
mode: iptables\n",
        kubeconfig = paths::KUBELET_CONF,
        cidr = n.pod_network_cidr,
        host = q(inp.hostname),
        healthz = yaml_addr(&addr(inp.binds.kube_proxy_healthz)),
        metrics = yaml_addr(&addr(inp.binds.kube_proxy_metrics)),
    )
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

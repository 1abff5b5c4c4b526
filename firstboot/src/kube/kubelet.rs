//! The kubelet: KubeletConfiguration (kubelet.config.k8s.io/v1beta1), its systemd unit,
//! and its credentials: a bootstrap kubeconfig with the bootstrap token on workers (TLS
//! bootstrapping), a kubeconfig pointing at the minted client certificate on masters.

use super::{q, yaml_addr, Flags, GeneratedFile, KubeInputs, ServiceUnit, CONTAINERD_ENDPOINT};
use crate::kubeconfig::{Kubeconfig, KubeconfigUser};
use nodeimage_core::config::TaintEffect;
use nodeimage_core::layout::paths;

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

fn effect(e: TaintEffect) -> &'static str {
    match e {
        TaintEffect::NoSchedule => "NoSchedule",
        TaintEffect::PreferNoSchedule => "PreferNoSchedule",
        TaintEffect::NoExecute => "NoExecute",
    }
}

/// KubeletConfiguration. Workers ask for a serving certificate through a CSR
/// (`serverTLSBootstrap`); masters serve with the certificate they minted.
pub fn kubelet_config(inp: &KubeInputs) -> String {
    let n = &inp.node.cluster.network;
    let mut s = String::new();
    s.push_str("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n");
    // Listeners from the port table: the API on every address (the firewall admits the
    // masters), healthz on localhost, the read-only port off (0) unless a row enables it.
    let b = &inp.binds;
    if let Some(a) = b.kubelet {
        s.push_str(&format!(
            "address: {}\nport: {}\n",
            yaml_addr(&a.ip().to_string()),
            a.port()
        ));
    }
    s.push_str(&format!(
        "readOnlyPort: {}\n",
        b.kubelet_read_only.map_or(0, |a| a.port())
    ));
    if let Some(a) = b.kubelet_healthz {
        s.push_str(&format!(
            "healthzBindAddress: {}\nhealthzPort: {}\n",
            yaml_addr(&a.ip().to_string()),
            a.port()
        ));
    }
    s.push_str("authentication:\n  anonymous:\n    enabled: false\n  webhook:\n    enabled: true\n    cacheTTL: 2m0s\n");
    s.push_str(&format!("  x509:\n    clientCAFile: {}\n", paths::CA_CRT));
    s.push_str("authorization:\n  mode: Webhook\n  webhook:\n    cacheAuthorizedTTL: 5m0s\n    cacheUnauthorizedTTL: 30s\n");
    s.push_str("cgroupDriver: systemd\n");
    s.push_str(&format!(
        "containerRuntimeEndpoint: {CONTAINERD_ENDPOINT}\n"
    ));
    s.push_str(&format!("clusterDNS:\n  - {}\n", n.dns_service_ip()));
    s.push_str(&format!(
        "clusterDomain: {}\n",
        q(n.dns_domain.trim_end_matches('.'))
    ));
    s.push_str("rotateCertificates: true\n");
    if inp.is_master() {
        s.push_str("serverTLSBootstrap: false\n");
        s.push_str(&format!(
            "tlsCertFile: {}\ntlsPrivateKeyFile: {}\n",
            paths::KUBELET_SERVING_CRT,
            paths::KUBELET_SERVING_KEY
        ));
    } else {
        s.push_str("serverTLSBootstrap: true\n");
    }
    s.push_str("registerNode: true\n");
    let taints = register_taints(inp);
    if !taints.is_empty() {
        s.push_str("registerWithTaints:\n");
        for (k, v, e) in taints {
            s.push_str(&format!("  - key: {}\n", q(&k)));
            if let Some(v) = v {
                s.push_str(&format!("    value: {}\n", q(&v)));
            }
            s.push_str(&format!("    effect: {}\n", effect(e)));
        }
    }
    s
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
            KubeconfigUser::Token(token.to_string()),
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

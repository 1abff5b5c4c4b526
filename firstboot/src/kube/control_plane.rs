//! kube-apiserver, kube-controller-manager and kube-scheduler as systemd services, with
//! the audit policy and the webhook kubeconfigs they read.

use super::{Flags, GeneratedFile, KubeInputs, ServiceUnit};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nodeimage_core::kubeconfig::{
    ClusterEntry, ContextEntry, Kubeconfig, NamedCluster, NamedContext, NamedUser, UserEntry,
};
use nodeimage_core::layout::paths;

pub const APISERVER_UNIT: &str = "/etc/systemd/system/kube-apiserver.service";
pub const CONTROLLER_MANAGER_UNIT: &str = "/etc/systemd/system/kube-controller-manager.service";
pub const SCHEDULER_UNIT: &str = "/etc/systemd/system/kube-scheduler.service";
pub const AUDIT_POLICY: &str = "/etc/kubernetes/audit/policy.yaml";
pub const AUDIT_WEBHOOK_KUBECONFIG: &str = "/etc/kubernetes/audit/webhook.kubeconfig";
pub const TOKEN_WEBHOOK_KUBECONFIG: &str = "/etc/kubernetes/webhooks/token-webhook.kubeconfig";

/// `https://addr` for a socket address (IPv6 in brackets).
fn https(a: std::net::SocketAddr) -> String {
    format!("https://{a}")
}

/// `--bind-address` and `--secure-port` of a component, from the port table.
fn set_bind(f: &mut Flags, bind: Option<std::net::SocketAddr>) {
    if let Some(a) = bind {
        f.set("bind-address", a.ip().to_string())
            .set("secure-port", a.port().to_string());
    }
}

/// As [`set_bind`] for a component that serves only health and metrics: without a row
/// in the port table it binds 127.0.0.1 (fail closed), never its upstream default
/// 0.0.0.0.
fn set_bind_local(f: &mut Flags, bind: Option<std::net::SocketAddr>) {
    match bind {
        Some(_) => set_bind(f, bind),
        None => {
            f.set("bind-address", "127.0.0.1");
        }
    }
}

/// kube-apiserver flags.
pub fn apiserver_flags(inp: &KubeInputs) -> Flags {
    let c = &inp.node.cluster;
    let mut f = Flags::default();
    f.set("advertise-address", inp.internal_ip.to_string())
        .set("allow-privileged", "true")
        .set("authorization-mode", "Node,RBAC")
        .set("client-ca-file", paths::CA_CRT)
        .set("enable-admission-plugins", "NodeRestriction")
        .set("enable-bootstrap-token-auth", "true")
        .set(
            "kubelet-client-certificate",
            paths::APISERVER_KUBELET_CLIENT_CRT,
        )
        .set("kubelet-client-key", paths::APISERVER_KUBELET_CLIENT_KEY)
        .set(
            "kubelet-preferred-address-types",
            "InternalIP,ExternalIP,Hostname",
        )
        .set("proxy-client-cert-file", paths::FRONT_PROXY_CLIENT_CRT)
        .set("proxy-client-key-file", paths::FRONT_PROXY_CLIENT_KEY)
        .set("requestheader-allowed-names", "front-proxy-client")
        .set("requestheader-client-ca-file", paths::FRONT_PROXY_CA_CRT)
        .set("requestheader-extra-headers-prefix", "X-Remote-Extra-")
        .set("requestheader-group-headers", "X-Remote-Group")
        .set("requestheader-username-headers", "X-Remote-User")
        .set(
            "service-account-issuer",
            format!(
                "https://kubernetes.default.svc.{}",
                c.network.dns_domain.trim_end_matches('.')
            ),
        )
        .set("service-account-key-file", paths::SA_PUB)
        .set("service-account-signing-key-file", paths::SA_KEY)
        .set(
            "service-cluster-ip-range",
            c.network.service_cidr.to_string(),
        )
        .set("service-node-port-range", c.network.node_port_range.clone())
        .set("tls-cert-file", paths::APISERVER_CRT)
        .set("tls-private-key-file", paths::APISERVER_KEY);
    // Every address (clients, kubelets, load balancers); the firewall admits anyone.
    set_bind(&mut f, inp.binds.apiserver);
    match &c.etcd {
        None => {
            // The stacked member's loopback listener: no dependence on the node's address.
            if let Some(a) = inp.binds.etcd_local_client {
                f.set("etcd-servers", https(a));
            }
            f.set("etcd-cafile", paths::ETCD_CA_CRT)
                .set("etcd-certfile", paths::APISERVER_ETCD_CLIENT_CRT)
                .set("etcd-keyfile", paths::APISERVER_ETCD_CLIENT_KEY);
        }
        Some(e) => {
            f.set("etcd-servers", e.endpoints.join(","))
                .set("etcd-cafile", paths::EXTERNAL_ETCD_CA_CRT)
                .set("etcd-certfile", paths::EXTERNAL_ETCD_CLIENT_CRT)
                .set("etcd-keyfile", paths::EXTERNAL_ETCD_CLIENT_KEY);
        }
    }
    if let Some(tw) = c
        .authentication
        .as_ref()
        .and_then(|a| a.token_webhook.as_ref())
    {
        f.set(
            "authentication-token-webhook-config-file",
            TOKEN_WEBHOOK_KUBECONFIG,
        );
        if let Some(ttl) = &tw.cache_ttl {
            f.set("authentication-token-webhook-cache-ttl", ttl.clone());
        }
    }
    if c.audit.is_some() {
        f.set("audit-policy-file", AUDIT_POLICY)
            .set("audit-webhook-config-file", AUDIT_WEBHOOK_KUBECONFIG)
            .set("audit-webhook-mode", "batch");
    }
    f.extend_from(&inp.node.cluster.components.kube_apiserver.extra_args);
    f
}

/// kube-controller-manager flags.
pub fn controller_manager_flags(inp: &KubeInputs) -> Flags {
    let c = &inp.node.cluster;
    let mut f = Flags::default();
    f.set("allocate-node-cidrs", "true")
        .set("authentication-kubeconfig", paths::CONTROLLER_MANAGER_CONF)
        .set("authorization-kubeconfig", paths::CONTROLLER_MANAGER_CONF)
        .set("client-ca-file", paths::CA_CRT)
        .set("cluster-cidr", c.network.pod_network_cidr.to_string())
        .set("cluster-name", c.name.clone())
        .set("cluster-signing-cert-file", paths::CA_CRT)
        .set("cluster-signing-key-file", paths::CA_KEY)
        // `*` keeps every default controller (csrapproving and csrsigning among them);
        // bootstrapsigner and tokencleaner are off by default and needed for bootstrap
        // tokens. csrapproving is named to make the dependency visible.
        .set("controllers", "*,bootstrapsigner,csrapproving,tokencleaner")
        .set("kubeconfig", paths::CONTROLLER_MANAGER_CONF)
        .set("leader-elect", "true")
        .set("requestheader-client-ca-file", paths::FRONT_PROXY_CA_CRT)
        .set("root-ca-file", paths::CA_CRT)
        .set("service-account-private-key-file", paths::SA_KEY)
        .set(
            "service-cluster-ip-range",
            c.network.service_cidr.to_string(),
        )
        .set("use-service-account-credentials", "true");
    // Health and metrics on localhost only (the port table's row).
    set_bind_local(&mut f, inp.binds.controller_manager);
    if c.cloud.is_some() {
        f.set("cloud-provider", "external");
    }
    f.extend_from(
        &inp.node
            .cluster
            .components
            .kube_controller_manager
            .extra_args,
    );
    f
}

/// kube-scheduler flags.
pub fn scheduler_flags(inp: &KubeInputs) -> Flags {
    let mut f = Flags::default();
    f.set("authentication-kubeconfig", paths::SCHEDULER_CONF)
        .set("authorization-kubeconfig", paths::SCHEDULER_CONF)
        .set("kubeconfig", paths::SCHEDULER_CONF)
        .set("leader-elect", "true");
    // Health and metrics on localhost only (the port table's row).
    set_bind_local(&mut f, inp.binds.scheduler);
    f.extend_from(&inp.node.cluster.components.kube_scheduler.extra_args);
    f
}

/// The audit policy: every request at `Metadata` level (Pharos' choice), without the
/// `RequestReceived` stage so each request is one event.
pub fn audit_policy() -> String {
    "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages:
  - RequestReceived
rules:
  - level: Metadata\n"
        .to_string()
}

fn pem_or_path(v: &str) -> (Option<String>, Option<String>) {
    // nodeimage inlines the PEM contents; a value that is not PEM is a node path.
    if v.trim_start().starts_with("-----BEGIN") {
        (Some(B64.encode(v)), None)
    } else {
        (None, Some(v.to_string()))
    }
}

fn single(cluster: &str, server: &str, ca: Option<&str>, user: &str, u: UserEntry) -> Kubeconfig {
    let (ca_data, ca_path) = ca.map(pem_or_path).unwrap_or((None, None));
    Kubeconfig {
        api_version: "v1".into(),
        kind: "Config".into(),
        clusters: vec![NamedCluster {
            name: cluster.into(),
            cluster: ClusterEntry {
                certificate_authority_data: ca_data,
                certificate_authority: ca_path,
                server: server.into(),
            },
        }],
        contexts: vec![NamedContext {
            name: "webhook".into(),
            context: ContextEntry {
                cluster: cluster.into(),
                user: user.into(),
            },
        }],
        current_context: "webhook".into(),
        preferences: Default::default(),
        users: vec![NamedUser {
            name: user.into(),
            user: u,
        }],
    }
}

/// The token webhook's kubeconfig (cluster.yml `authentication.token_webhook.config`).
pub fn token_webhook_kubeconfig(inp: &KubeInputs) -> Option<String> {
    let tw = inp
        .node
        .cluster
        .authentication
        .as_ref()?
        .token_webhook
        .as_ref()?;
    let (c, u) = (&tw.config.cluster, &tw.config.user);
    let mut user = UserEntry::default();
    if let Some(cert) = &u.client_certificate {
        let (d, p) = pem_or_path(cert);
        user.client_certificate_data = d;
        user.client_certificate = p;
    }
    if let Some(key) = &u.client_key {
        let (d, p) = pem_or_path(key);
        user.client_key_data = d;
        user.client_key = p;
    }
    Some(
        single(
            &c.name,
            &c.server,
            c.certificate_authority.as_deref(),
            &u.name,
            user,
        )
        .to_yaml(),
    )
}

/// The audit webhook's kubeconfig: batches of events POSTed to `audit.server`.
pub fn audit_webhook_kubeconfig(inp: &KubeInputs) -> Option<String> {
    let a = inp.node.cluster.audit.as_ref()?;
    Some(
        single(
            "audit-webhook",
            &a.server,
            None,
            "kube-apiserver",
            UserEntry::default(),
        )
        .to_yaml(),
    )
}

/// Every control-plane file of a master: three units, plus audit and webhook files when
/// configured, plus the external etcd client files.
pub fn control_plane_files(inp: &KubeInputs) -> Vec<GeneratedFile> {
    let unit = |desc: &str, doc: &str, bin: &str, flags: &Flags, after: &'static [&'static str]| {
        ServiceUnit {
            description: desc,
            documentation: doc,
            after,
            wants: &["network-online.target"],
            requires: &[],
            exec: inp.bin(bin),
            flags,
        }
        .render()
    };
    let stacked = inp.node.cluster.etcd.is_none();
    let api_after: &'static [&'static str] = if stacked {
        &["network-online.target", "etcd.service"]
    } else {
        &["network-online.target"]
    };
    let mut v = vec![
        GeneratedFile::new(
            APISERVER_UNIT,
            0o644,
            unit(
                "Kubernetes API server",
                "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-apiserver/",
                "kube-apiserver",
                &apiserver_flags(inp),
                api_after,
            ),
        ),
        GeneratedFile::new(
            CONTROLLER_MANAGER_UNIT,
            0o644,
            unit(
                "Kubernetes controller manager",
                "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-controller-manager/",
                "kube-controller-manager",
                &controller_manager_flags(inp),
                &["network-online.target", "kube-apiserver.service"],
            ),
        ),
        GeneratedFile::new(
            SCHEDULER_UNIT,
            0o644,
            unit(
                "Kubernetes scheduler",
                "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-scheduler/",
                "kube-scheduler",
                &scheduler_flags(inp),
                &["network-online.target", "kube-apiserver.service"],
            ),
        ),
    ];
    if let Some(k) = audit_webhook_kubeconfig(inp) {
        v.push(GeneratedFile::new(AUDIT_POLICY, 0o644, audit_policy()));
        v.push(GeneratedFile::new(AUDIT_WEBHOOK_KUBECONFIG, 0o600, k));
    }
    if let Some(k) = token_webhook_kubeconfig(inp) {
        v.push(GeneratedFile::new(TOKEN_WEBHOOK_KUBECONFIG, 0o600, k));
    }
    if let Some(e) = &inp.node.cluster.etcd {
        v.push(GeneratedFile::new(
            paths::EXTERNAL_ETCD_CA_CRT,
            0o644,
            e.ca_certificate.clone(),
        ));
        v.push(GeneratedFile::new(
            paths::EXTERNAL_ETCD_CLIENT_CRT,
            0o644,
            e.certificate.clone(),
        ));
        v.push(GeneratedFile::new(
            paths::EXTERNAL_ETCD_CLIENT_KEY,
            0o600,
            e.key.clone(),
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_only_components_bind_loopback_without_a_port_table_row() {
        let mut f = Flags::default();
        set_bind_local(&mut f, None);
        assert_eq!(f.to_args(), ["--bind-address=127.0.0.1"]);
        let mut f = Flags::default();
        set_bind_local(&mut f, Some("127.0.0.1:10259".parse().unwrap()));
        assert_eq!(
            f.to_args(),
            ["--bind-address=127.0.0.1", "--secure-port=10259"]
        );
    }
}

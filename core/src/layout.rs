//! Where things live on a node, and the names both programs agree on: the partition
//! names and labels of the disk layout, and the kubeadm file layout of Kubernetes'
//! certificates and kubeconfigs (`/etc/kubernetes/...`), so operators find what they
//! expect.

use std::net::IpAddr;

/// The FAT label of the config partition (`nodeimage write-config` writes it, firstboot
/// reads `node.yaml` / `config.ign` from it).
pub const NODECONFIG_LABEL: &str = "NODECONFIG";
/// The GPT name of the state partition firstboot appends on first boot.
pub const STATE_PARTITION_NAME: &str = "nodeimage-state";
/// The ext4 label of the state file system.
pub const STATE_FS_LABEL: &str = "nodeimage-state";

/// Group bound to `cluster-admin` by a ClusterRoleBinding of the same name (kubeadm ≥ 1.29
/// practice: admin credentials are not in the RBAC-bypassing `system:masters` group).
pub const CLUSTER_ADMINS_GROUP: &str = "kubeadm:cluster-admins";
/// The RBAC-bypassing group, used only by `super-admin.conf` on the bootstrap master to
/// create the first RBAC objects.
pub const SYSTEM_MASTERS_GROUP: &str = "system:masters";

/// Node paths (kubeadm layout).
pub mod paths {
    pub const PKI_DIR: &str = "/etc/kubernetes/pki";
    pub const CA_CRT: &str = "/etc/kubernetes/pki/ca.crt";
    pub const CA_KEY: &str = "/etc/kubernetes/pki/ca.key";
    pub const FRONT_PROXY_CA_CRT: &str = "/etc/kubernetes/pki/front-proxy-ca.crt";
    pub const FRONT_PROXY_CA_KEY: &str = "/etc/kubernetes/pki/front-proxy-ca.key";
    pub const ETCD_CA_CRT: &str = "/etc/kubernetes/pki/etcd/ca.crt";
    pub const ETCD_CA_KEY: &str = "/etc/kubernetes/pki/etcd/ca.key";
    pub const SA_KEY: &str = "/etc/kubernetes/pki/sa.key";
    pub const SA_PUB: &str = "/etc/kubernetes/pki/sa.pub";
    pub const APISERVER_CRT: &str = "/etc/kubernetes/pki/apiserver.crt";
    pub const APISERVER_KEY: &str = "/etc/kubernetes/pki/apiserver.key";
    pub const APISERVER_KUBELET_CLIENT_CRT: &str =
        "/etc/kubernetes/pki/apiserver-kubelet-client.crt";
    pub const APISERVER_KUBELET_CLIENT_KEY: &str =
        "/etc/kubernetes/pki/apiserver-kubelet-client.key";
    pub const FRONT_PROXY_CLIENT_CRT: &str = "/etc/kubernetes/pki/front-proxy-client.crt";
    pub const FRONT_PROXY_CLIENT_KEY: &str = "/etc/kubernetes/pki/front-proxy-client.key";
    pub const APISERVER_ETCD_CLIENT_CRT: &str = "/etc/kubernetes/pki/apiserver-etcd-client.crt";
    pub const APISERVER_ETCD_CLIENT_KEY: &str = "/etc/kubernetes/pki/apiserver-etcd-client.key";
    pub const ETCD_SERVER_CRT: &str = "/etc/kubernetes/pki/etcd/server.crt";
    pub const ETCD_SERVER_KEY: &str = "/etc/kubernetes/pki/etcd/server.key";
    pub const ETCD_PEER_CRT: &str = "/etc/kubernetes/pki/etcd/peer.crt";
    pub const ETCD_PEER_KEY: &str = "/etc/kubernetes/pki/etcd/peer.key";
    /// Client certificate for health checks, `etcdctl` and firstboot's join protocol.
    pub const ETCD_HEALTHCHECK_CLIENT_CRT: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.crt";
    pub const ETCD_HEALTHCHECK_CLIENT_KEY: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.key";
    /// External etcd: the files of cluster.yml's `etcd:` section, inlined by nodeimage.
    pub const EXTERNAL_ETCD_CA_CRT: &str = "/etc/kubernetes/pki/etcd-external/ca.crt";
    pub const EXTERNAL_ETCD_CLIENT_CRT: &str = "/etc/kubernetes/pki/etcd-external/client.crt";
    pub const EXTERNAL_ETCD_CLIENT_KEY: &str = "/etc/kubernetes/pki/etcd-external/client.key";
    pub const KUBELET_SERVING_CRT: &str = "/var/lib/kubelet/pki/kubelet.crt";
    pub const KUBELET_SERVING_KEY: &str = "/var/lib/kubelet/pki/kubelet.key";
    /// The kubelet's client certificate and key in one file, where the kubelet's own
    /// rotation keeps it current.
    pub const KUBELET_CLIENT_CURRENT: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";
    pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
    pub const SUPER_ADMIN_CONF: &str = "/etc/kubernetes/super-admin.conf";
    pub const CONTROLLER_MANAGER_CONF: &str = "/etc/kubernetes/controller-manager.conf";
    pub const SCHEDULER_CONF: &str = "/etc/kubernetes/scheduler.conf";
    pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
    pub const BOOTSTRAP_KUBELET_CONF: &str = "/etc/kubernetes/bootstrap-kubelet.conf";
}

/// kube-apiserver's secure port, from the port table (the default when the endpoint names
/// no port).
pub fn apiserver_port() -> u16 {
    crate::ports::table_port(crate::ports::Service::KubeApiserver)
        .expect("the port table lists kube-apiserver")
}

/// The API server as the master's own components reach it: loopback, the table's port.
pub fn local_apiserver_url() -> String {
    format!("https://127.0.0.1:{}", apiserver_port())
}
/// `host` / `host:port` / `[v6]:port` / `https://...` → `https://host:port`.
pub fn api_server_url(endpoint: &str) -> String {
    if endpoint.starts_with("https://") {
        return endpoint.trim_end_matches('/').to_string();
    }
    let (host, port) = split_host_port(endpoint);
    let port = port.unwrap_or_else(apiserver_port);
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("https://[{host}]:{port}"),
        _ => format!("https://{host}:{port}"),
    }
}

/// Split `host:port` (also `[v6]:port`, bare v6, bare host).
pub fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            return (h, p.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    if s.parse::<IpAddr>().is_ok() {
        return (s, None);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse().ok()),
        _ => (s, None),
    }
}

//! The columns of the port table: protocols, ports, roles, reaches, seeds, services.

use std::fmt;

use serde::Serialize;

use crate::config::Role;

/// Transport protocol of a row. ESP has no ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Esp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Esp => "esp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The port column of a row, before the cluster's settings are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortSpec {
    /// No port (ESP).
    None,
    Port(u16),
    /// `network.node_port_range` (default 30000-32767).
    NodePortRange,
}

/// A concrete port or inclusive port range (`first == last` for a single port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Which node roles a row applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Roles {
    Master,
    Worker,
    All,
}

impl Roles {
    pub fn includes(self, role: Role) -> bool {
        matches!(
            (self, role),
            (Roles::All, _) | (Roles::Master, Role::Master) | (Roles::Worker, Role::Worker)
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Roles::Master => "master",
            Roles::Worker => "worker",
            Roles::All => "all",
        }
    }
}

/// Who may reach a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    /// Any source (the service authenticates, or it is meant to be public).
    Anyone,
    /// Cluster nodes: masters, `cluster.nodes`, `network.node_subnets` (not pods: a pod
    /// runs on a node but is not one).
    ClusterNodes,
    /// Master nodes only.
    Masters,
    /// `network.trusted_subnets` only.
    TrustedSubnets,
    /// Loopback only; bound to 127.0.0.1 and dropped from every other interface.
    Localhost,
    /// Turned off in the component's config; dropped from everywhere but loopback.
    Disabled,
}

impl Reach {
    pub fn describe(self) -> &'static str {
        match self {
            Reach::Anyone => "anyone",
            Reach::ClusterNodes => "cluster nodes",
            Reach::Masters => "masters",
            Reach::TrustedSubnets => "trusted subnets",
            Reach::Localhost => "localhost only",
            Reach::Disabled => "disabled",
        }
    }
}

/// A source document in `/work/shared/seeds` (the project's requirements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Seed {
    /// Pharos installation: required open, monitoring and restricted ports.
    #[serde(rename = "000")]
    PharosInstall,
    /// Pharos system requirements: ports with directions.
    #[serde(rename = "001")]
    PharosRequirements,
    /// Pharos Cluster README (etcd localhost-only, weave status localhost-only).
    #[serde(rename = "002")]
    PharosReadme,
    /// Tectonic generic platform: per-role ingress rules.
    #[serde(rename = "003")]
    Tectonic,
    /// CoreOS Kubernetes networking: per-role inbound tables.
    #[serde(rename = "004")]
    CoreOsNetworking,
}

impl Seed {
    pub fn id(self) -> &'static str {
        match self {
            Seed::PharosInstall => "000",
            Seed::PharosRequirements => "001",
            Seed::PharosReadme => "002",
            Seed::Tectonic => "003",
            Seed::CoreOsNetworking => "004",
        }
    }
    pub fn file(self) -> &'static str {
        match self {
            Seed::PharosInstall => "000_ffb5dc75bcada85f.txt",
            Seed::PharosRequirements => "001_8ef583f34fab78bd.txt",
            Seed::PharosReadme => "002_66179b0e7e50e650.txt",
            Seed::Tectonic => "003_aa021f425d489956.txt",
            Seed::CoreOsNetworking => "004_65d9595c5fea6c09.txt",
        }
    }
}

/// Whether a row is part of this product or only documented for another choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Active whenever its role and condition match.
    Default,
    /// Never opened by this product: the row belongs to a component it does not ship
    /// (flannel, Calico, ...). Kept so the documentation shows the whole picture.
    Option(&'static str),
}

/// When an active row applies, beyond its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    Always,
    /// `addons.ingress-nginx.enabled` and this node runs the ingress daemonset: its labels
    /// match `node_selector` and it is schedulable (a worker, or a master with
    /// `taint_masters: false`).
    IngressNode,
    /// etcd runs on the masters (no external etcd) and `network.etcd_localhost_only` is false.
    EtcdOnMasters,
    /// etcd runs on the masters and `network.etcd_localhost_only` is true.
    EtcdLocalhostOnly,
    /// The pod network is Weave Net (`network.provider: weave`, the default).
    Weave,
    /// The pod network is flannel (`network.provider: flannel`).
    Flannel,
}

impl Condition {
    pub fn describe(self) -> &'static str {
        match self {
            Condition::Always => "",
            Condition::IngressNode => "ingress-nginx enabled and node matches its node_selector",
            Condition::EtcdOnMasters => "stacked etcd (default)",
            Condition::EtcdLocalhostOnly => "stacked etcd with network.etcd_localhost_only",
            Condition::Weave => "network.provider: weave (default)",
            Condition::Flannel => "network.provider: flannel",
        }
    }
}

/// How packets of a row arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Carrier {
    /// Directly on the wire.
    Plain,
    /// Decapsulated from IPsec ESP (Weave's encrypted fastdp): after the kernel
    /// decrypts ESP, the inner UDP packet traverses the input hook again, so it needs its
    /// own rule, restricted to packets that really came through an SA.
    Ipsec,
}

/// How a row's service binds, besides what its reach implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bind {
    /// From the reach: localhost-only on 127.0.0.1, disabled off, everything else on the
    /// unspecified address (the firewall restricts the sources).
    FromReach,
    /// The node's private address and 127.0.0.1 (etcd): the most sensitive service stays
    /// off public interfaces even when the ruleset is flushed.
    PrivateAndLoopback,
}

/// What listens on a port. One service may have several rows (TCP and UDP, or
/// alternative reaches chosen by a condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    Ssh,
    KubeApiserver,
    EtcdClient,
    EtcdPeer,
    Kubelet,
    KubeletHealthz,
    KubeletReadOnly,
    KubeProxyMetrics,
    KubeProxyHealthz,
    KubeScheduler,
    KubeControllerManager,
    WeaveControl,
    WeaveSleeve,
    WeaveFastdp,
    WeaveEsp,
    WeaveNpcMetrics,
    WeaveStatus,
    WeaveApi,
    NodePorts,
    IngressHttp,
    IngressHttps,
    IngressStatus,
    FlannelUdp,
    FlannelVxlan,
    CalicoBgp,
    NodeExporter,
}

impl Service {
    /// Stable kebab-case name (used in nft comments, JSON and preflight messages).
    pub fn name(self) -> &'static str {
        match self {
            Service::Ssh => "ssh",
            Service::KubeApiserver => "kube-apiserver",
            Service::EtcdClient => "etcd-client",
            Service::EtcdPeer => "etcd-peer",
            Service::Kubelet => "kubelet",
            Service::KubeletHealthz => "kubelet-healthz",
            Service::KubeletReadOnly => "kubelet-read-only",
            Service::KubeProxyMetrics => "kube-proxy-metrics",
            Service::KubeProxyHealthz => "kube-proxy-healthz",
            Service::KubeScheduler => "kube-scheduler",
            Service::KubeControllerManager => "kube-controller-manager",
            Service::WeaveControl => "weave-control",
            Service::WeaveSleeve => "weave-sleeve",
            Service::WeaveFastdp => "weave-fastdp",
            Service::WeaveEsp => "weave-esp",
            Service::WeaveNpcMetrics => "weave-npc-metrics",
            Service::WeaveStatus => "weave-status",
            Service::WeaveApi => "weave-api",
            Service::NodePorts => "nodeports",
            Service::IngressHttp => "ingress-http",
            Service::IngressHttps => "ingress-https",
            Service::IngressStatus => "ingress-status",
            Service::FlannelUdp => "flannel-udp",
            Service::FlannelVxlan => "flannel-vxlan",
            Service::CalicoBgp => "calico-bgp",
            Service::NodeExporter => "node-exporter",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One row of the port table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortRow {
    pub protocol: Protocol,
    pub port: PortSpec,
    pub service: Service,
    pub roles: Roles,
    pub reach: Reach,
    /// The service authenticates its clients (TLS client certs, tokens, a shared secret).
    pub authenticated: bool,
    /// The seeds that ask for this row.
    pub seeds: &'static [Seed],
    pub activation: Activation,
    pub condition: Condition,
    pub carrier: Carrier,
    pub bind: Bind,
    /// Why the row looks the way it does (disagreements, renamed ports).
    pub note: &'static str,
}

impl PortRow {
    /// The row's port column with the NodePort range written out.
    pub fn ports(&self, node_ports: PortRange) -> Option<PortRange> {
        match self.port {
            PortSpec::None => None,
            PortSpec::Port(p) => Some(PortRange::single(p)),
            PortSpec::NodePortRange => Some(node_ports),
        }
    }
}

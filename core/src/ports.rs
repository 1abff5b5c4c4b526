//! The host port table: every port a node of this product listens on, once, as data.
//!
//! The seeds (Pharos' host requirements 000/001/002, Tectonic's generic platform 003 and
//! CoreOS' networking notes 004) each list ports with different words and sometimes
//! disagree. [`PORT_TABLE`] is the one place where they are reconciled; every row names
//! the seeds it comes from. Two consumers derive their behaviour from it so they cannot
//! drift apart:
//!
//! * the firewall ([`crate::firewall`]) opens each port exactly to the sources of its row;
//! * the component configs (kubelet, kube-proxy, control plane, etcd, Weave) take their
//!   bind addresses from [`PortPolicy::bind_address`] / [`PortPolicy::listen_addresses`],
//!   so a port the firewall treats as localhost-only is also *bound* to 127.0.0.1
//!   (defence in depth: a flushed ruleset does not expose it).
//!
//! Where seeds disagree the safer reading is the default and the other one is an
//! option (see `network.etcd_localhost_only`). Rows for other CNIs (flannel, Calico)
//! are kept as inactive options so the documentation shows what they would need.
//!
//! [`PortPolicy`] resolves the table for one node: its role, labels and the cluster's
//! network settings give the active rows and the concrete source address sets.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use crate::config::{ClusterConfig, IngressNginx, Network, NodeConfig, Role};

/// The port table could not be resolved for a node.
#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    /// An address the firewall needs is not an IP address or CIDR.
    #[error("{field}: expected an IP address or CIDR, found `{value}` (the firewall needs addresses, not names)")]
    BadAddress { field: String, value: String },
    /// `network.node_port_range` does not parse.
    #[error("network.node_port_range: {0}")]
    NodePortRange(String),
    /// The NodePort range would swallow a fixed port of the table.
    #[error("network.node_port_range {first}-{last} contains {port}/{protocol} ({service}); choose a range without it")]
    NodePortOverlap {
        first: u16,
        last: u16,
        port: u16,
        protocol: Protocol,
        service: Service,
    },
    /// A service binds the node's own address but the address is not known yet.
    #[error("{service} binds the node's private address, which is not known (set private_address or detect it first)")]
    NodeAddressUnknown { service: Service },
}

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
    /// Cluster nodes: masters, `cluster.nodes`, `network.node_subnets`, the pod network.
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
}

impl Condition {
    pub fn describe(self) -> &'static str {
        match self {
            Condition::Always => "",
            Condition::IngressNode => "ingress-nginx enabled and node matches its node_selector",
            Condition::EtcdOnMasters => "stacked etcd (default)",
            Condition::EtcdLocalhostOnly => "stacked etcd with network.etcd_localhost_only",
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

use Activation::Default as On;
use Carrier::Plain;
use Condition::Always;
use Seed::{
    CoreOsNetworking as S004, PharosInstall as S000, PharosReadme as S002,
    PharosRequirements as S001, Tectonic as S003,
};

// One argument per column keeps each table row on one visual line.
#[allow(clippy::too_many_arguments)]
const fn row(
    protocol: Protocol,
    port: PortSpec,
    service: Service,
    roles: Roles,
    reach: Reach,
    authenticated: bool,
    seeds: &'static [Seed],
    note: &'static str,
) -> PortRow {
    PortRow {
        protocol,
        port,
        service,
        roles,
        reach,
        authenticated,
        seeds,
        activation: On,
        condition: Always,
        carrier: Plain,
        bind: Bind::FromReach,
        note,
    }
}

const fn when(mut r: PortRow, condition: Condition) -> PortRow {
    r.condition = condition;
    r
}

const fn option(mut r: PortRow, what: &'static str) -> PortRow {
    r.activation = Activation::Option(what);
    r
}

const fn bind_private(mut r: PortRow) -> PortRow {
    r.bind = Bind::PrivateAndLoopback;
    r
}

const fn via_ipsec(mut r: PortRow) -> PortRow {
    r.carrier = Carrier::Ipsec;
    r
}

use PortSpec::{NodePortRange, Port};
use Protocol::{Esp, Tcp, Udp};
use Reach::{Anyone, ClusterNodes, Disabled, Localhost, Masters, TrustedSubnets};

/// The port table. Order is the documentation order: required ports, monitoring ports,
/// localhost-only and disabled ports, then the inactive options for other components.
/// The fixed port the table gives `service` (the first row naming it), for components
/// that need the number outside a node's policy (kubeconfig URLs, defaults).
pub fn table_port(service: Service) -> Option<u16> {
    PORT_TABLE.iter().find_map(|r| match r.port {
        PortSpec::Port(p) if r.service == service => Some(p),
        _ => None,
    })
}

pub static PORT_TABLE: &[PortRow] = &[
    // --- required open ports ---
    row(Tcp, Port(22), Service::Ssh, Roles::All, Anyone, true, &[S000, S001, S003],
        "management channel with SSH keys; Tectonic 003 limits it to the user network"),
    row(Tcp, Port(6443), Service::KubeApiserver, Roles::Master, Anyone, true, &[S000, S001, S004],
        "TLS client certs, ServiceAccount tokens, RBAC; CoreOS 004 serves it on 443"),
    bind_private(when(row(Tcp, Port(2379), Service::EtcdClient, Roles::Master, Masters, true, &[S000, S001, S003, S004],
        "client TLS; 001 says master-to-master, 002 localhost-only (see the option); never workers (004's flannel/Calico case does not apply) nor the public"),
        Condition::EtcdOnMasters)),
    bind_private(when(row(Tcp, Port(2380), Service::EtcdPeer, Roles::Master, Masters, true, &[S000, S001, S004],
        "peer TLS; 001 says master-to-master, 002 localhost-only (see the option)"),
        Condition::EtcdOnMasters)),
    row(Tcp, Port(10250), Service::Kubelet, Roles::All, Masters, true, &[S000, S001, S003, S004],
        "TLS client certs; kube-apiserver exec/logs/port-forward; 003/004 say from masters, 001 also from workers"),
    row(Tcp, Port(6783), Service::WeaveControl, Roles::All, ClusterNodes, true, &[S000, S001, S002],
        "peer control connections with the shared weave secret"),
    row(Udp, Port(6783), Service::WeaveSleeve, Roles::All, ClusterNodes, true, &[S000, S001, S002],
        "sleeve fallback dataplane with the shared weave secret"),
    row(Udp, Port(6784), Service::WeaveFastdp, Roles::All, TrustedSubnets, false, &[S000, S001, S002],
        "unencrypted fastdp VXLAN, only for peers on network.trusted_subnets"),
    via_ipsec(row(Udp, Port(6784), Service::WeaveFastdp, Roles::All, ClusterNodes, true, &[S000, S001, S002],
        "encrypted fastdp: the VXLAN packet after the kernel decrypted its ESP envelope")),
    row(Esp, PortSpec::None, Service::WeaveEsp, Roles::All, ClusterNodes, true, &[S000, S001, S002],
        "IPsec ESP around fastdp VXLAN, SAs set up over the control channel"),
    row(Tcp, NodePortRange, Service::NodePorts, Roles::All, Anyone, false, &[S003, S004],
        "NodePort services (network.node_port_range); exposed to external load balancers and consumers"),
    row(Udp, NodePortRange, Service::NodePorts, Roles::All, Anyone, false, &[S003],
        "UDP NodePort services (003: tcp/udp)"),
    when(row(Tcp, Port(80), Service::IngressHttp, Roles::All, Anyone, false, &[S000, S001, S002],
        "ingress-nginx HTTP on workers or nodes matching addons.ingress-nginx.node_selector"),
        Condition::IngressNode),
    when(row(Tcp, Port(443), Service::IngressHttps, Roles::All, Anyone, false, &[S000, S001, S002, S003],
        "ingress-nginx HTTPS on workers or nodes matching addons.ingress-nginx.node_selector"),
        Condition::IngressNode),
    // --- monitoring ports: unauthenticated, so cluster nodes only ---
    row(Tcp, Port(6781), Service::WeaveNpcMetrics, Roles::All, ClusterNodes, false, &[S000, S001, S002],
        "weave-npc /metrics; the seeds say OPEN, restricted to cluster nodes against information leaks"),
    row(Tcp, Port(6782), Service::WeaveStatus, Roles::All, ClusterNodes, false, &[S000, S001, S002],
        "weave /status and /metrics; 000/001 say OPEN, 002 localhost-only; cluster nodes so Prometheus can scrape"),
    row(Tcp, Port(10256), Service::KubeProxyHealthz, Roles::All, ClusterNodes, false, &[S000, S001, S002],
        "kube-proxy /healthz; add load balancer health checkers to network.node_subnets"),
    when(row(Tcp, Port(18080), Service::IngressStatus, Roles::All, ClusterNodes, false, &[S000, S001, S002],
        "ingress-nginx /healthz, /nginx_status and default backend"),
        Condition::IngressNode),
    // --- localhost-only ---
    when(row(Tcp, Port(2379), Service::EtcdClient, Roles::Master, Localhost, true, &[S002],
        "002's reading: etcd on localhost only (single master); client TLS is kept"),
        Condition::EtcdLocalhostOnly),
    when(row(Tcp, Port(2380), Service::EtcdPeer, Roles::Master, Localhost, true, &[S002],
        "002's reading: etcd on localhost only (single master)"),
        Condition::EtcdLocalhostOnly),
    row(Tcp, Port(10248), Service::KubeletHealthz, Roles::All, Localhost, false, &[S000, S001, S002],
        "kubelet /healthz"),
    row(Tcp, Port(10249), Service::KubeProxyMetrics, Roles::All, Localhost, false, &[S000, S001, S002],
        "kube-proxy /metrics"),
    row(Tcp, Port(10259), Service::KubeScheduler, Roles::Master, Localhost, true, &[S000, S001, S002],
        "secure port; the seeds' 10251 was the old insecure port, removed in current Kubernetes"),
    row(Tcp, Port(10257), Service::KubeControllerManager, Roles::Master, Localhost, true, &[S000, S001, S002],
        "secure port; the seeds' 10252 was the old insecure port, removed in current Kubernetes"),
    row(Tcp, Port(6784), Service::WeaveApi, Roles::All, Localhost, false, &[S000, S001, S002],
        "unauthenticated weave control API"),
    // --- disabled ---
    row(Tcp, Port(10255), Service::KubeletReadOnly, Roles::All, Disabled, false, &[S000, S001, S002, S003, S004],
        "read-only kubelet (readOnlyPort: 0); 003/004 wanted it for Heapster, which is retired"),
    // --- inactive options for other components ---
    option(row(Udp, Port(8285), Service::FlannelUdp, Roles::All, ClusterNodes, false, &[S004],
        "flannel udp backend"), "flannel"),
    option(row(Udp, Port(8472), Service::FlannelVxlan, Roles::All, ClusterNodes, false, &[S004],
        "flannel vxlan backend"), "flannel"),
    option(row(Udp, Port(4789), Service::FlannelVxlan, Roles::All, ClusterNodes, false, &[S003],
        "flannel vxlan on the IANA port (Tectonic)"), "flannel"),
    option(row(Tcp, Port(179), Service::CalicoBgp, Roles::All, ClusterNodes, false, &[S004],
        "Calico BGP backend"), "calico"),
    option(row(Tcp, Port(9100), Service::NodeExporter, Roles::All, ClusterNodes, false, &[S003],
        "Prometheus node exporter metrics"), "node-exporter"),
];

/// The address set a rule admits. Named so nft sets and documentation can refer to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceSet {
    Masters,
    ClusterNodes,
    TrustedSubnets,
}

impl SourceSet {
    pub const ALL: [SourceSet; 3] = [
        SourceSet::Masters,
        SourceSet::ClusterNodes,
        SourceSet::TrustedSubnets,
    ];

    /// Name used for the nft sets (`<name>_v4`, `<name>_v6`).
    pub fn name(self) -> &'static str {
        match self {
            SourceSet::Masters => "masters",
            SourceSet::ClusterNodes => "cluster_nodes",
            SourceSet::TrustedSubnets => "trusted_subnets",
        }
    }
}

/// Concrete sources of a resolved rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sources {
    Anyone,
    Set(SourceSet),
    Localhost,
    Disabled,
}

/// An active row for this node with its concrete ports and sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResolvedRule {
    pub row: &'static PortRow,
    /// None for ESP.
    pub ports: Option<PortRange>,
    pub sources: Sources,
}

impl ResolvedRule {
    /// Dropped everywhere except on loopback (localhost-only and disabled rows).
    pub fn is_restriction(&self) -> bool {
        matches!(self.sources, Sources::Localhost | Sources::Disabled)
    }
}

/// Where a packet comes from, for [`PortPolicy::admits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Arrives on the loopback interface.
    Loopback,
    /// Arrives on another interface from `addr`; `ipsec` when it was decapsulated from ESP.
    Remote { addr: IpAddr, ipsec: bool },
}

/// The facts about one node and its cluster that decide its ports.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    pub role: Role,
    /// The node's labels (matched against `addons.ingress-nginx.node_selector`).
    pub labels: BTreeMap<String, String>,
    /// The node's private (cluster-internal) address, when known.
    pub node_address: Option<IpAddr>,
    pub network: Network,
    /// Internal addresses (or subnets) of every master.
    pub masters: Vec<IpNet>,
    /// Internal addresses (or subnets) of every node.
    pub nodes: Vec<IpNet>,
    pub ingress: Option<IngressNginx>,
    pub taint_masters: bool,
    /// etcd is external: no etcd ports on the masters.
    pub external_etcd: bool,
}

/// Parse an address or CIDR from the config; a bare address becomes a host network.
pub fn parse_source(field: &str, value: &str) -> Result<IpNet, PortsError> {
    let v = value.trim();
    if let Ok(net) = v.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    v.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| PortsError::BadAddress {
            field: field.to_string(),
            value: value.to_string(),
        })
}

fn parse_addr(field: &str, value: &str) -> Result<IpAddr, PortsError> {
    value
        .trim()
        .parse::<IpAddr>()
        .map_err(|_| PortsError::BadAddress {
            field: field.to_string(),
            value: value.to_string(),
        })
}

impl NodeFacts {
    /// The facts of the node a [`NodeConfig`] describes.
    pub fn from_node_config(cfg: &NodeConfig) -> Result<Self, PortsError> {
        let node_address = match (&cfg.private_address, &cfg.address) {
            (Some(a), _) => Some(parse_addr("private_address", a)?),
            (None, Some(a)) => Some(parse_addr("address", a)?),
            (None, None) => None,
        };
        let list = |field: &str, v: &[String]| -> Result<Vec<IpNet>, PortsError> {
            v.iter()
                .enumerate()
                .map(|(i, s)| parse_source(&format!("{field}[{i}]"), s))
                .collect()
        };
        Ok(NodeFacts {
            role: cfg.role,
            labels: cfg.labels.clone(),
            node_address,
            network: cfg.cluster.network.clone(),
            masters: list("cluster.masters", &cfg.cluster.masters)?,
            nodes: list("cluster.nodes", &cfg.cluster.nodes)?,
            ingress: cfg.cluster.addons.ingress_nginx.clone(),
            taint_masters: cfg.cluster.taint_masters,
            external_etcd: cfg.cluster.etcd.is_some(),
        })
    }

    /// The facts of a node of `role` with `labels` in the cluster of a `cluster.yml`
    /// (the builder's view: the node's own address is not known).
    pub fn from_cluster_config(
        cluster: &ClusterConfig,
        role: Role,
        labels: BTreeMap<String, String>,
    ) -> Result<Self, PortsError> {
        let mut masters = Vec::new();
        let mut nodes = Vec::new();
        for (i, h) in cluster.hosts.iter().enumerate() {
            let field = if h.private_address.is_some() {
                format!("hosts[{i}].private_address")
            } else {
                format!("hosts[{i}].address")
            };
            let net = parse_source(&field, h.internal_address())?;
            if h.role == Role::Master {
                masters.push(net);
            }
            nodes.push(net);
        }
        Ok(NodeFacts {
            role,
            labels,
            node_address: None,
            network: cluster.network.clone(),
            masters,
            nodes,
            ingress: cluster.addons.ingress_nginx.clone(),
            taint_masters: cluster.taint_masters,
            external_etcd: cluster.etcd.is_some(),
        })
    }

    /// Defaults: an empty cluster with the default `cluster.yml` settings.
    pub fn defaults(role: Role) -> Self {
        NodeFacts {
            role,
            labels: BTreeMap::new(),
            node_address: None,
            network: Network::default(),
            masters: Vec::new(),
            nodes: Vec::new(),
            ingress: None,
            taint_masters: true,
            external_etcd: false,
        }
    }
}

/// The port table resolved for one node: the active rules with concrete ports and source
/// sets, and the bind addresses derived from them.
#[derive(Debug, Clone, Serialize)]
pub struct PortPolicy {
    pub role: Role,
    pub node_ports: PortRange,
    #[serde(skip)]
    facts: NodeFacts,
    /// Source address sets, aggregated (no overlaps, host bits cleared).
    pub sets: BTreeMap<SourceSet, Vec<IpNet>>,
    pub rules: Vec<ResolvedRule>,
}

impl PortPolicy {
    /// Resolve the table for the node a [`NodeConfig`] describes.
    pub fn for_node(cfg: &NodeConfig) -> Result<Self, PortsError> {
        Self::new(NodeFacts::from_node_config(cfg)?)
    }

    pub fn new(facts: NodeFacts) -> Result<Self, PortsError> {
        let (first, last) = facts
            .network
            .node_ports()
            .map_err(PortsError::NodePortRange)?;
        let node_ports = PortRange { first, last };
        let ingress_here = ingress_runs_here(&facts);
        let stacked_etcd = !facts.external_etcd;
        let localhost_etcd = facts.network.etcd_localhost_only;
        let mut rules = Vec::new();
        for row in PORT_TABLE {
            if row.activation != Activation::Default || !row.roles.includes(facts.role) {
                continue;
            }
            let applies = match row.condition {
                Condition::Always => true,
                Condition::IngressNode => ingress_here,
                Condition::EtcdOnMasters => stacked_etcd && !localhost_etcd,
                Condition::EtcdLocalhostOnly => stacked_etcd && localhost_etcd,
            };
            if !applies {
                continue;
            }
            let sources = match row.reach {
                Reach::Anyone => Sources::Anyone,
                Reach::ClusterNodes => Sources::Set(SourceSet::ClusterNodes),
                Reach::Masters => Sources::Set(SourceSet::Masters),
                Reach::TrustedSubnets => Sources::Set(SourceSet::TrustedSubnets),
                Reach::Localhost => Sources::Localhost,
                Reach::Disabled => Sources::Disabled,
            };
            rules.push(ResolvedRule {
                row,
                ports: row.ports(node_ports),
                sources,
            });
        }
        // A NodePort range that contains a fixed port would open (or shadow) it.
        for r in &rules {
            if r.row.port == PortSpec::NodePortRange {
                continue;
            }
            if let Some(p) = r.ports {
                let same_proto_range = rules.iter().any(|n| {
                    n.row.port == PortSpec::NodePortRange && n.row.protocol == r.row.protocol
                });
                if same_proto_range && node_ports.contains(p.first) {
                    return Err(PortsError::NodePortOverlap {
                        first,
                        last,
                        port: p.first,
                        protocol: r.row.protocol,
                        service: r.row.service,
                    });
                }
            }
        }

        let own: Vec<IpNet> = facts.node_address.map(IpNet::from).into_iter().collect();
        let mut masters = facts.masters.clone();
        if facts.role == Role::Master {
            masters.extend(own.iter().copied());
        }
        let mut cluster = masters.clone();
        cluster.extend(facts.nodes.iter().copied());
        cluster.extend(facts.network.node_subnets.iter().copied());
        // Pods on this node reach the host from the pod network without masquerading;
        // pods elsewhere arrive masqueraded to their node's address anyway.
        cluster.push(facts.network.pod_network_cidr);
        cluster.extend(own.iter().copied());
        if facts.masters.is_empty()
            && facts.nodes.is_empty()
            && facts.network.node_subnets.is_empty()
        {
            tracing::warn!(
                role = %facts.role,
                "no masters, nodes or node_subnets known: cluster-only ports admit only the pod network and this node"
            );
        }
        let mut sets = BTreeMap::new();
        sets.insert(SourceSet::Masters, aggregate(&masters));
        sets.insert(SourceSet::ClusterNodes, aggregate(&cluster));
        sets.insert(
            SourceSet::TrustedSubnets,
            aggregate(&facts.network.trusted_subnets),
        );
        Ok(PortPolicy {
            role: facts.role,
            node_ports,
            facts,
            sets,
            rules,
        })
    }

    /// The facts the policy was resolved from.
    pub fn facts(&self) -> &NodeFacts {
        &self.facts
    }

    /// The addresses of a source set (aggregated).
    pub fn set(&self, set: SourceSet) -> &[IpNet] {
        self.sets.get(&set).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether this node runs ingress-nginx (and so opens 80/443/18080).
    pub fn ingress_here(&self) -> bool {
        ingress_runs_here(&self.facts)
    }

    /// Does `rule` accept a packet from `peer`? Loopback is always accepted by the
    /// firewall before any rule; this answers for the rule alone.
    pub fn admits(&self, rule: &ResolvedRule, peer: Peer) -> bool {
        match peer {
            Peer::Loopback => true,
            Peer::Remote { addr, ipsec } => {
                if rule.row.carrier == Carrier::Ipsec && !ipsec {
                    return false;
                }
                match rule.sources {
                    Sources::Anyone => true,
                    Sources::Set(s) => self.set(s).iter().any(|n| n.contains(&addr)),
                    Sources::Localhost | Sources::Disabled => false,
                }
            }
        }
    }

    /// The firewall's verdict for a packet addressed to this host, as a model: loopback
    /// is accepted; a localhost-only/disabled row for the port drops; otherwise the
    /// packet passes if any rule for the port admits the peer. ICMP and replies to
    /// outgoing connections (accepted by the firewall) are not modelled.
    pub fn decide(&self, protocol: Protocol, port: Option<u16>, peer: Peer) -> bool {
        if peer == Peer::Loopback {
            return true;
        }
        let matching = |r: &&ResolvedRule| {
            r.row.protocol == protocol
                && match (r.ports, port) {
                    (None, _) => true,
                    (Some(range), Some(p)) => range.contains(p),
                    (Some(_), None) => false,
                }
        };
        if self
            .rules
            .iter()
            .filter(matching)
            .any(|r| r.is_restriction())
        {
            return false;
        }
        self.rules
            .iter()
            .filter(matching)
            .any(|r| self.admits(r, peer))
    }

    /// Active rules with a port a process listens on (everything but ESP and disabled
    /// rows): what preflight checks is free.
    pub fn listening(&self) -> impl Iterator<Item = (&ResolvedRule, PortRange)> {
        self.rules
            .iter()
            .filter(|r| r.sources != Sources::Disabled)
            .filter_map(|r| r.ports.map(|p| (r, p)))
    }

    fn rule_for(&self, service: Service) -> Option<&ResolvedRule> {
        self.rules.iter().find(|r| {
            r.row.service == service && r.row.carrier == Carrier::Plain && r.ports.is_some()
        })
    }

    fn unspecified(&self) -> IpAddr {
        match self.facts.node_address {
            Some(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    /// The one address a service binds, derived from its row:
    ///
    /// * localhost-only → `127.0.0.1:port`;
    /// * etcd on the masters ([`Bind::PrivateAndLoopback`]) → the node's private address
    ///   (the firewall restricts the sources; binding the private address keeps etcd off
    ///   public interfaces even when the ruleset is flushed);
    /// * anyone / cluster nodes / masters / trusted subnets → the unspecified address
    ///   (`0.0.0.0`, or `::` on an IPv6 node); the firewall restricts the sources.
    ///
    /// `Ok(None)` when the service is disabled (kubelet's `readOnlyPort: 0`), does not
    /// run on this node (its row is inactive for this role/config) or is not a bind
    /// (the NodePort range).
    pub fn bind_address(&self, service: Service) -> Result<Option<SocketAddr>, PortsError> {
        Ok(self.listen_addresses(service)?.into_iter().next())
    }

    /// Every address a service listens on. Like [`Self::bind_address`], plus 127.0.0.1
    /// for [`Bind::PrivateAndLoopback`] services so local clients (the apiserver talking
    /// to etcd) need not know the node's address.
    pub fn listen_addresses(&self, service: Service) -> Result<Vec<SocketAddr>, PortsError> {
        let Some(rule) = self.rule_for(service) else {
            return Ok(Vec::new());
        };
        let Some(ports) = rule
            .ports
            .filter(|_| rule.row.port != PortSpec::NodePortRange)
        else {
            return Ok(Vec::new());
        };
        let port = ports.first;
        let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        Ok(match (rule.row.reach, rule.row.bind) {
            (Reach::Disabled, _) => Vec::new(),
            (Reach::Localhost, _) => vec![loopback],
            (_, Bind::PrivateAndLoopback) => {
                let ip = self
                    .facts
                    .node_address
                    .ok_or(PortsError::NodeAddressUnknown { service })?;
                vec![SocketAddr::new(ip, port), loopback]
            }
            (_, Bind::FromReach) => vec![SocketAddr::new(self.unspecified(), port)],
        })
    }

    /// The port a service uses on this node, if it is active here (0 is never returned:
    /// a disabled service gives `None`; configure it as off).
    pub fn port(&self, service: Service) -> Option<u16> {
        self.rule_for(service)
            .filter(|r| r.sources != Sources::Disabled)
            .and_then(|r| r.ports.map(|p| p.first))
    }

    /// etcd `--listen-client-urls`: the node's private address and 127.0.0.1, or
    /// 127.0.0.1 only with `network.etcd_localhost_only`. Empty without stacked etcd.
    pub fn etcd_listen_client_urls(&self) -> Result<Vec<String>, PortsError> {
        Ok(urls(&self.listen_addresses(Service::EtcdClient)?))
    }

    /// etcd `--listen-peer-urls` (same addresses as the client URLs, port 2380).
    pub fn etcd_listen_peer_urls(&self) -> Result<Vec<String>, PortsError> {
        Ok(urls(&self.listen_addresses(Service::EtcdPeer)?))
    }

    /// Every bind of this node in one value (for `nodeimage ports --format json`,
    /// status.json and the config generators). An unknown node address is written as
    /// `${node_address}`.
    pub fn bind_plan(&self) -> Vec<BindEntry> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for r in &self.rules {
            let service = r.row.service;
            if seen.contains(&service)
                || r.ports.is_none()
                || r.row.carrier != Carrier::Plain
                || r.row.port == PortSpec::NodePortRange
            {
                continue;
            }
            seen.push(service);
            let listen = match self.listen_addresses(service) {
                Ok(v) => v.iter().map(|a| a.to_string()).collect(),
                Err(PortsError::NodeAddressUnknown { .. }) => {
                    let port = r.ports.map(|p| p.first).unwrap_or_default();
                    vec![
                        format!("${{node_address}}:{port}"),
                        format!("127.0.0.1:{port}"),
                    ]
                }
                Err(e) => vec![format!("error: {e}")],
            };
            out.push(BindEntry {
                service,
                protocol: r.row.protocol,
                reach: r.row.reach,
                listen,
            });
        }
        out
    }
}

/// One line of [`PortPolicy::bind_plan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindEntry {
    pub service: Service,
    pub protocol: Protocol,
    pub reach: Reach,
    /// `addr:port` strings; empty when disabled.
    pub listen: Vec<String>,
}

fn urls(addrs: &[SocketAddr]) -> Vec<String> {
    addrs.iter().map(|a| format!("https://{a}")).collect()
}

fn ingress_runs_here(facts: &NodeFacts) -> bool {
    let Some(ing) = facts.ingress.as_ref().filter(|i| i.enabled) else {
        return false;
    };
    // A tainted master does not run the daemonset even when its labels match.
    let schedulable = facts.role == Role::Worker || !facts.taint_masters;
    schedulable
        && ing
            .node_selector
            .iter()
            .all(|(k, v)| facts.labels.get(k).is_some_and(|have| have == v))
}

/// Merge overlapping and adjacent networks: nft interval sets refuse overlaps.
fn aggregate(nets: &[IpNet]) -> Vec<IpNet> {
    let truncated: Vec<IpNet> = nets.iter().map(IpNet::trunc).collect();
    IpNet::aggregate(&truncated)
}

/// The seed ids of a row, e.g. `000, 001`.
pub fn seed_ids(row: &PortRow) -> String {
    row.seeds
        .iter()
        .map(|s| s.id())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IngressNginx;

    fn facts(role: Role) -> NodeFacts {
        let mut f = NodeFacts::defaults(role);
        f.node_address = Some("10.0.0.1".parse().unwrap());
        f.masters = vec![
            "10.0.0.1/32".parse().unwrap(),
            "10.0.0.2/32".parse().unwrap(),
        ];
        f.nodes = vec![
            "10.0.0.0/28".parse().unwrap(),
            "10.0.0.3/32".parse().unwrap(),
        ];
        f.network.trusted_subnets = vec!["172.31.0.0/16".parse().unwrap()];
        f
    }

    fn services(p: &PortPolicy) -> Vec<(Service, Sources)> {
        p.rules.iter().map(|r| (r.row.service, r.sources)).collect()
    }

    #[test]
    fn every_row_names_a_seed_and_has_a_note() {
        for r in PORT_TABLE {
            assert!(!r.seeds.is_empty(), "{:?}", r.service);
            assert!(!r.note.is_empty() && r.note.len() < 200, "{:?}", r.service);
            assert_eq!(
                r.protocol == Protocol::Esp,
                r.port == PortSpec::None,
                "{:?}",
                r.service
            );
        }
    }

    #[test]
    fn no_active_port_is_both_opened_and_restricted() {
        for role in [Role::Master, Role::Worker] {
            for localhost_etcd in [false, true] {
                let mut f = facts(role);
                f.network.etcd_localhost_only = localhost_etcd;
                f.ingress = Some(IngressNginx {
                    enabled: true,
                    ..Default::default()
                });
                f.taint_masters = false;
                let p = PortPolicy::new(f).unwrap();
                for a in p.rules.iter().filter(|r| r.is_restriction()) {
                    for b in p.rules.iter().filter(|r| !r.is_restriction()) {
                        assert!(
                            !(a.row.protocol == b.row.protocol && a.ports == b.ports),
                            "{:?} and {:?}",
                            a.row.service,
                            b.row.service
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn master_has_control_plane_worker_does_not() {
        let m = PortPolicy::new(facts(Role::Master)).unwrap();
        let w = PortPolicy::new(facts(Role::Worker)).unwrap();
        let ms = services(&m);
        let ws = services(&w);
        assert!(ms.contains(&(Service::KubeApiserver, Sources::Anyone)));
        assert!(ms.contains(&(Service::EtcdClient, Sources::Set(SourceSet::Masters))));
        assert!(ms.contains(&(Service::KubeScheduler, Sources::Localhost)));
        for s in [
            Service::KubeApiserver,
            Service::EtcdClient,
            Service::EtcdPeer,
            Service::KubeScheduler,
        ] {
            assert!(!ws.iter().any(|(x, _)| *x == s), "{s} on a worker");
        }
        assert!(ws.contains(&(Service::Kubelet, Sources::Set(SourceSet::Masters))));
        assert!(ws.contains(&(Service::KubeletReadOnly, Sources::Disabled)));
        // No inactive options (flannel, Calico) anywhere.
        assert!(!ms
            .iter()
            .chain(ws.iter())
            .any(|(s, _)| matches!(s, Service::FlannelUdp | Service::CalicoBgp)));
    }

    #[test]
    fn etcd_localhost_only_and_external() {
        let mut f = facts(Role::Master);
        f.network.etcd_localhost_only = true;
        let p = PortPolicy::new(f).unwrap();
        assert!(services(&p).contains(&(Service::EtcdClient, Sources::Localhost)));
        assert!(!services(&p).contains(&(Service::EtcdClient, Sources::Set(SourceSet::Masters))));
        assert_eq!(
            p.etcd_listen_client_urls().unwrap(),
            vec!["https://127.0.0.1:2379"]
        );
        assert_eq!(
            p.etcd_listen_peer_urls().unwrap(),
            vec!["https://127.0.0.1:2380"]
        );

        let mut f = facts(Role::Master);
        f.external_etcd = true;
        let p = PortPolicy::new(f).unwrap();
        assert!(!services(&p).iter().any(|(s, _)| *s == Service::EtcdClient));
        assert!(p.etcd_listen_client_urls().unwrap().is_empty());
    }

    #[test]
    fn bind_addresses_follow_the_rows() {
        let p = PortPolicy::new(facts(Role::Master)).unwrap();
        let b = |s| p.bind_address(s).unwrap().map(|a| a.to_string());
        assert_eq!(
            b(Service::KubeletHealthz).as_deref(),
            Some("127.0.0.1:10248")
        );
        assert_eq!(
            b(Service::KubeProxyMetrics).as_deref(),
            Some("127.0.0.1:10249")
        );
        assert_eq!(
            b(Service::KubeProxyHealthz).as_deref(),
            Some("0.0.0.0:10256")
        );
        assert_eq!(
            b(Service::KubeScheduler).as_deref(),
            Some("127.0.0.1:10259")
        );
        assert_eq!(
            b(Service::KubeControllerManager).as_deref(),
            Some("127.0.0.1:10257")
        );
        assert_eq!(b(Service::WeaveStatus).as_deref(), Some("0.0.0.0:6782"));
        assert_eq!(b(Service::WeaveApi).as_deref(), Some("127.0.0.1:6784"));
        assert_eq!(b(Service::KubeletReadOnly), None);
        assert_eq!(
            b(Service::Kubelet).as_deref(),
            Some("0.0.0.0:10250"),
            "kubelet --address takes one address"
        );
        assert_eq!(b(Service::NodePorts), None, "a range is not a bind");
        assert_eq!(p.port(Service::KubeletReadOnly), None);
        assert_eq!(b(Service::EtcdClient).as_deref(), Some("10.0.0.1:2379"));
        assert_eq!(
            p.etcd_listen_client_urls().unwrap(),
            vec!["https://10.0.0.1:2379", "https://127.0.0.1:2379"]
        );
        assert_eq!(
            p.etcd_listen_peer_urls().unwrap(),
            vec!["https://10.0.0.1:2380", "https://127.0.0.1:2380"]
        );
        // Workers run no scheduler.
        let w = PortPolicy::new(facts(Role::Worker)).unwrap();
        assert_eq!(w.bind_address(Service::KubeScheduler).unwrap(), None);
        // Unknown address: a clear error for etcd, a placeholder in the plan.
        let mut f = facts(Role::Master);
        f.node_address = None;
        let p = PortPolicy::new(f).unwrap();
        assert!(matches!(
            p.bind_address(Service::EtcdClient),
            Err(PortsError::NodeAddressUnknown {
                service: Service::EtcdClient
            })
        ));
        let plan = p.bind_plan();
        let etcd = plan
            .iter()
            .find(|e| e.service == Service::EtcdClient)
            .unwrap();
        assert_eq!(etcd.listen, vec!["${node_address}:2379", "127.0.0.1:2379"]);
    }

    #[test]
    fn ipv6_node_binds_unspecified_v6() {
        let mut f = facts(Role::Worker);
        f.node_address = Some("fd00::5".parse().unwrap());
        let p = PortPolicy::new(f).unwrap();
        assert_eq!(
            p.bind_address(Service::KubeProxyHealthz)
                .unwrap()
                .unwrap()
                .to_string(),
            "[::]:10256"
        );
    }

    #[test]
    fn ingress_respects_selector_and_taints() {
        let sel: BTreeMap<String, String> = [("disk".to_string(), "ssd".to_string())].into();
        let ing = IngressNginx {
            enabled: true,
            node_selector: sel.clone(),
            ..Default::default()
        };
        let has_http = |p: &PortPolicy| {
            p.rules
                .iter()
                .any(|r| r.row.service == Service::IngressHttp)
        };

        let mut f = facts(Role::Worker);
        f.ingress = Some(ing.clone());
        assert!(
            !has_http(&PortPolicy::new(f.clone()).unwrap()),
            "labels do not match"
        );
        f.labels = sel.clone();
        let p = PortPolicy::new(f.clone()).unwrap();
        assert!(has_http(&p));
        assert!(p
            .rules
            .iter()
            .any(|r| r.row.service == Service::IngressStatus));
        f.ingress = Some(IngressNginx {
            enabled: false,
            ..ing.clone()
        });
        assert!(!has_http(&PortPolicy::new(f).unwrap()), "disabled");

        let mut m = facts(Role::Master);
        m.labels = sel;
        m.ingress = Some(ing);
        assert!(
            !has_http(&PortPolicy::new(m.clone()).unwrap()),
            "tainted master"
        );
        m.taint_masters = false;
        assert!(has_http(&PortPolicy::new(m).unwrap()));

        // Empty selector: every (schedulable) node.
        let mut w = facts(Role::Worker);
        w.ingress = Some(IngressNginx {
            enabled: true,
            ..Default::default()
        });
        assert!(has_http(&PortPolicy::new(w).unwrap()));
    }

    #[test]
    fn sets_are_aggregated_and_include_own_address() {
        let p = PortPolicy::new(facts(Role::Master)).unwrap();
        let s = |set| p.set(set).iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(s(SourceSet::Masters), vec!["10.0.0.1/32", "10.0.0.2/32"]);
        // 10.0.0.{1,2,3} fold into 10.0.0.0/28; the pod network is there too.
        assert_eq!(
            s(SourceSet::ClusterNodes),
            vec!["10.0.0.0/28", "10.32.0.0/12"]
        );
        assert_eq!(s(SourceSet::TrustedSubnets), vec!["172.31.0.0/16"]);
    }

    #[test]
    fn decide_models_the_firewall() {
        let p = PortPolicy::new(facts(Role::Master)).unwrap();
        let from = |a: &str| Peer::Remote {
            addr: a.parse().unwrap(),
            ipsec: false,
        };
        assert!(p.decide(Protocol::Tcp, Some(22), from("192.0.2.1")));
        assert!(p.decide(Protocol::Tcp, Some(2379), from("10.0.0.2")));
        assert!(
            !p.decide(Protocol::Tcp, Some(2379), from("10.0.0.3")),
            "worker to etcd"
        );
        assert!(!p.decide(Protocol::Tcp, Some(10248), from("10.0.0.2")));
        assert!(p.decide(Protocol::Tcp, Some(10248), Peer::Loopback));
        assert!(p.decide(Protocol::Udp, Some(6784), from("172.31.4.4")));
        assert!(
            !p.decide(Protocol::Udp, Some(6784), from("10.0.0.3")),
            "plain fastdp from a node"
        );
        assert!(p.decide(
            Protocol::Udp,
            Some(6784),
            Peer::Remote {
                addr: "10.0.0.3".parse().unwrap(),
                ipsec: true
            }
        ));
        assert!(p.decide(Protocol::Esp, None, from("10.0.0.3")));
        assert!(!p.decide(Protocol::Esp, None, from("172.31.4.4")));
        assert!(p.decide(Protocol::Udp, Some(32767), from("192.0.2.1")));
        assert!(!p.decide(Protocol::Tcp, Some(12345), from("10.0.0.2")));
    }

    #[test]
    fn node_port_range_overlap_and_bad_addresses_are_named() {
        let mut f = facts(Role::Master);
        f.network.node_port_range = "6000-7000".into();
        let e = PortPolicy::new(f).unwrap_err().to_string();
        assert!(
            e.contains("network.node_port_range 6000-7000 contains 6443/tcp (kube-apiserver)"),
            "{e}"
        );

        let cfg = NodeConfig::parse(
            "n",
            "version: 1\nrole: worker\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1\n  masters: [master-1.example]\n",
        )
        .unwrap();
        let e = PortPolicy::for_node(&cfg).unwrap_err().to_string();
        assert!(
            e.contains(
                "cluster.masters[0]: expected an IP address or CIDR, found `master-1.example`"
            ),
            "{e}"
        );
    }

    #[test]
    fn from_node_config() {
        let cfg = NodeConfig::parse(
            "n",
            "version: 1\nrole: master\nprivate_address: 10.1.0.5\ncluster:\n  name: demo\n  api_endpoint: 10.1.0.5\n  masters: [10.1.0.5]\n  nodes: [10.1.0.0/24]\n  network:\n    etcd_localhost_only: true\n",
        )
        .unwrap();
        let p = PortPolicy::for_node(&cfg).unwrap();
        assert_eq!(p.role, Role::Master);
        assert_eq!(p.facts().node_address, Some("10.1.0.5".parse().unwrap()));
        assert_eq!(
            p.etcd_listen_client_urls().unwrap(),
            vec!["https://127.0.0.1:2379"]
        );
    }
}

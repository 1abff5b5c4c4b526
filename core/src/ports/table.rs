//! [`PORT_TABLE`]: the rows, as Rust consts (compile-checked data).

use super::types::*;

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

/// The fixed port the table gives `service` (the first row naming it), for components
/// that need the number outside a node's policy (kubeconfig URLs, defaults).
pub fn table_port(service: Service) -> Option<u16> {
    PORT_TABLE.iter().find_map(|r| match r.port {
        PortSpec::Port(p) if r.service == service => Some(p),
        _ => None,
    })
}

/// The port table. Order is the documentation order: required ports, monitoring ports,
/// localhost-only and disabled ports, then the inactive options for other components.
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
    when(row(Tcp, Port(6783), Service::WeaveControl, Roles::All, ClusterNodes, true, &[S000, S001, S002],
        "peer control connections with the shared weave secret"),
        Condition::Weave),
    when(row(Udp, Port(6783), Service::WeaveSleeve, Roles::All, ClusterNodes, true, &[S000, S001, S002],
        "sleeve fallback dataplane with the shared weave secret"),
        Condition::Weave),
    when(row(Udp, Port(6784), Service::WeaveFastdp, Roles::All, TrustedSubnets, false, &[S000, S001, S002],
        "unencrypted fastdp VXLAN, only for peers on network.trusted_subnets"),
        Condition::Weave),
    when(via_ipsec(row(Udp, Port(6784), Service::WeaveFastdp, Roles::All, ClusterNodes, true, &[S000, S001, S002],
        "encrypted fastdp: the VXLAN packet after the kernel decrypted its ESP envelope")),
        Condition::Weave),
    when(row(Esp, PortSpec::None, Service::WeaveEsp, Roles::All, ClusterNodes, true, &[S000, S001, S002],
        "IPsec ESP around fastdp VXLAN, SAs set up over the control channel"),
        Condition::Weave),
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
    when(row(Tcp, Port(6781), Service::WeaveNpcMetrics, Roles::All, ClusterNodes, false, &[S000, S001, S002],
        "weave-npc /metrics; the seeds say OPEN, restricted to cluster nodes against information leaks"),
        Condition::Weave),
    when(row(Tcp, Port(6782), Service::WeaveStatus, Roles::All, ClusterNodes, false, &[S000, S001, S002],
        "weave /status and /metrics; 000/001 say OPEN, 002 localhost-only; cluster nodes so Prometheus can scrape"),
        Condition::Weave),
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
    when(row(Tcp, Port(6784), Service::WeaveApi, Roles::All, Localhost, false, &[S000, S001, S002],
        "unauthenticated weave control API"),
        Condition::Weave),
    // --- disabled ---
    row(Tcp, Port(10255), Service::KubeletReadOnly, Roles::All, Disabled, false, &[S000, S001, S002, S003, S004],
        "read-only kubelet (readOnlyPort: 0); 003/004 wanted it for Heapster, which is retired"),
    // --- inactive options for other components ---
    option(row(Udp, Port(8285), Service::FlannelUdp, Roles::All, ClusterNodes, false, &[S004],
        "flannel udp backend"), "flannel"),
    when(row(Udp, Port(8472), Service::FlannelVxlan, Roles::All, ClusterNodes, false, &[S004],
        "flannel vxlan backend (network.provider: flannel); unencrypted, not authenticated"),
        Condition::Flannel),
    option(row(Udp, Port(4789), Service::FlannelVxlan, Roles::All, ClusterNodes, false, &[S003],
        "flannel vxlan on the IANA port (Tectonic)"), "flannel"),
    option(row(Tcp, Port(179), Service::CalicoBgp, Roles::All, ClusterNodes, false, &[S004],
        "Calico BGP backend"), "calico"),
    option(row(Tcp, Port(9100), Service::NodeExporter, Roles::All, ClusterNodes, false, &[S003],
        "Prometheus node exporter metrics"), "node-exporter"),
];

/// The seed ids of a row, e.g. `000, 001`.
pub fn seed_ids(row: &PortRow) -> String {
    row.seeds
        .iter()
        .map(|s| s.id())
        .collect::<Vec<_>>()
        .join(", ")
}

//! [`PortPolicy`]: the table resolved for one node (its facts, source sets, bind addresses).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use crate::config::{ClusterConfig, CniProvider, IngressNginx, Network, NodeConfig, Role};

use super::table::PORT_TABLE;
use super::types::*;
use super::PortsError;

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
            labels: cfg
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
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
                Condition::Weave => facts.network.provider == CniProvider::Weave,
                Condition::Flannel => facts.network.provider == CniProvider::Flannel,
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
        // Not the pod network: pods are not cluster nodes. A pod on this node arrives
        // from its pod address and is dropped here; a pod elsewhere would arrive
        // masqueraded to its node's address, so every node also drops forwarded pod
        // traffic to these ports of the cluster's nodes (the firewall's forward chain).
        cluster.extend(own.iter().copied());
        if facts.masters.is_empty()
            && facts.nodes.is_empty()
            && facts.network.node_subnets.is_empty()
        {
            tracing::warn!(
                role = %facts.role,
                "no masters, nodes or node_subnets known: cluster-only ports admit only this node"
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
            .all(|(k, v)| facts.labels.get(k.as_str()).is_some_and(|have| have == v))
}

/// Merge overlapping and adjacent networks: nft interval sets refuse overlaps.
fn aggregate(nets: &[IpNet]) -> Vec<IpNet> {
    let truncated: Vec<IpNet> = nets.iter().map(IpNet::trunc).collect();
    IpNet::aggregate(&truncated)
}

//! The host firewall: an nftables ruleset rendered from the node's [`PortPolicy`].
//!
//! Shape, and why:
//!
//! * One table of our own, `table inet nodeimage`, so loading it never touches the
//!   tables kube-proxy and Weave manage (iptables-nft or nft). Both families at once
//!   (`inet`), IPv4 and IPv6 source sets side by side.
//! * An `input` chain (hook input, priority filter) for what is addressed to this host:
//!   policy drop (a flushed chain fails closed) and a final counted `drop`. Loopback,
//!   replies (`ct state established,related`), ICMP/ICMPv6 (neighbour discovery, PMTU)
//!   and DHCP client replies are accepted first; then localhost-only and disabled ports
//!   are dropped with a counter *before* any accept, so a NodePort range or another rule
//!   can never open them; then each port is accepted from exactly its sources (nft sets
//!   `<set>_v4` / `<set>_v6`, so automation may add members with `nft add element`
//!   without re-rendering). Pods are not cluster nodes: a pod on this node arrives from
//!   its pod address and matches no set.
//!   (kube-proxy in IPVS mode delivers service VIPs locally; it is not used here. If it
//!   ever is, its VIPs need an accept before the final drop.)
//! * A `forward` chain (policy accept: pod-to-pod, NodePort-to-pod and service traffic
//!   is forwarded and must pass) with drops only: nothing this node forwards, i.e. pod
//!   traffic, reaches the link-local range (the cloud metadata service, which hands out
//!   the node's join secrets) or a port of a cluster node that the port table does not
//!   open to anyone (etcd, the kubelet, Weave's unauthenticated status ports, ...). The
//!   forward hook sees a pod's packet before the pod network masquerades it to this
//!   node's address, the only point where it is still known to come from a pod.
//!   Host-network pods are the node itself and are not told apart.
//! * Loading is idempotent and atomic: `table inet nodeimage {}` + `delete table` +
//!   the new table in one `nft -f` transaction (`destroy table` needs nft >= 1.0.8,
//!   Debian 12 ships 1.0.6).
//!
//! JSON (`nft -j -f`) is rendered from the same intermediate rules as the text with
//! `serde_json`, not the `nftables` crate: we need about ten expression shapes, the
//! crate would add a dependency tree and tie us to its schema version, and the tests
//! check both forms with the real `nft -c` (and load both into namespaces and compare).
//!
//! Modules: this one holds the intermediate form ([`Ruleset`]) and how a policy becomes
//! one; `render` writes it as text or JSON; `nft` checks and loads it with the real
//! `nft`.

mod nft;
mod render;

pub use nft::{apply, check, nft_binary, verify_loaded};
pub use render::{render_json, render_nft};

use std::path::PathBuf;

use ipnet::IpNet;

use crate::ports::{
    Carrier, PortPolicy, PortRange, PortSpec, Protocol, Reach, ResolvedRule, SourceSet, Sources,
    PORT_TABLE,
};

/// nftables table family and name owned by this product.
pub const TABLE_FAMILY: &str = "inet";
pub const TABLE_NAME: &str = "nodeimage";
/// Where Debian installs `nft`.
pub const DEFAULT_NFT: &str = "/usr/sbin/nft";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("{nft}: not found; install the nftables package")]
    NftMissing { nft: PathBuf },
    #[error("running {nft}: {source}")]
    Spawn {
        nft: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` rejected the ruleset ({status}): {stderr}")]
    Rejected {
        command: String,
        status: String,
        stderr: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn payload(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    fn set_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
    fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Match {
    Iif(&'static str),
    CtState(&'static [&'static str]),
    L4Proto(&'static str),
    Sport(Protocol, u16),
    Dport(Protocol, PortRange),
    SaddrSet(Family, String),
    SaddrPrefix(IpNet),
    DaddrSet(Family, String),
    DaddrPrefix(IpNet),
    /// `tcp dport { a, b }`: more than one port of a protocol.
    DportSet(Protocol, Vec<u16>),
    IpsecExists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accept,
    Drop,
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    matches: Vec<Match>,
    counter: bool,
    verdict: Verdict,
    comment: String,
}

#[derive(Debug, Clone, PartialEq)]
struct SetDef {
    name: String,
    family: Family,
    elements: Vec<IpNet>,
}

/// The intermediate form both renderings come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Ruleset {
    role: String,
    sets: Vec<SetDef>,
    /// The input chain.
    rules: Vec<Rule>,
    /// The forward chain.
    forward: Vec<Rule>,
}

/// Destinations no forwarded (pod) packet may reach: the IPv4 link-local range, where
/// every supported cloud serves its metadata (169.254.169.254), and EC2's IPv6 metadata
/// address. Link-local is never routed, so nothing legitimate is forwarded there.
pub const METADATA_DESTINATIONS: &[(&str, &str)] = &[
    (
        "169.254.0.0/16",
        "pods never reach link-local addresses (cloud metadata holds the join secrets)",
    ),
    (
        "fd00:ec2::254/128",
        "pods never reach the EC2 metadata service over IPv6",
    ),
];

fn set_name(set: SourceSet, family: Family) -> String {
    format!("{}_{}", set.name(), family.suffix())
}

fn rule(matches: Vec<Match>, counter: bool, verdict: Verdict, comment: impl Into<String>) -> Rule {
    Rule {
        matches,
        counter,
        verdict,
        comment: comment.into(),
    }
}

fn port_matches(r: &ResolvedRule) -> Vec<Match> {
    match (r.row.protocol, r.ports) {
        (Protocol::Esp, _) | (_, None) => vec![Match::L4Proto("esp")],
        (proto, Some(p)) => vec![Match::Dport(proto, p)],
    }
}

fn describe(r: &ResolvedRule) -> String {
    let ports = match r.ports {
        Some(p) => format!("{p}/{}", r.row.protocol),
        None => r.row.protocol.to_string(),
    };
    let via = if r.row.carrier == Carrier::Ipsec {
        " via ipsec"
    } else {
        ""
    };
    format!("{} {ports}{via}: {}", r.row.service, r.row.reach.describe())
}

impl Ruleset {
    /// Build the ruleset of a node from its policy.
    pub fn from_policy(policy: &PortPolicy) -> Self {
        let mut sets = Vec::new();
        for set in SourceSet::ALL {
            for family in [Family::V4, Family::V6] {
                let elements = policy
                    .set(set)
                    .iter()
                    .filter(|n| Family::of(n) == family)
                    .copied()
                    .collect();
                sets.push(SetDef {
                    name: set_name(set, family),
                    family,
                    elements,
                });
            }
        }

        let mut rules = vec![
            rule(vec![Match::Iif("lo")], false, Verdict::Accept, "loopback"),
            rule(
                vec![Match::CtState(&["established", "related"])],
                false,
                Verdict::Accept,
                "replies to connections this host opened",
            ),
            rule(vec![Match::L4Proto("icmp")], false, Verdict::Accept, "ICMP"),
            rule(
                vec![Match::L4Proto("ipv6-icmp")],
                false,
                Verdict::Accept,
                "ICMPv6, neighbour discovery",
            ),
            rule(
                vec![
                    Match::Sport(Protocol::Udp, 67),
                    Match::Dport(Protocol::Udp, PortRange::single(68)),
                ],
                false,
                Verdict::Accept,
                "DHCPv4 client",
            ),
            rule(
                vec![
                    Match::SaddrPrefix("fe80::/10".parse().expect("constant prefix")),
                    Match::Sport(Protocol::Udp, 547),
                    Match::Dport(Protocol::Udp, PortRange::single(546)),
                ],
                false,
                Verdict::Accept,
                "DHCPv6 client",
            ),
        ];
        // Restrictions before accepts: nothing later can open them.
        for r in policy.rules.iter().filter(|r| r.is_restriction()) {
            rules.push(rule(port_matches(r), true, Verdict::Drop, describe(r)));
        }
        for r in policy.rules.iter().filter(|r| !r.is_restriction()) {
            let mut base = port_matches(r);
            if r.row.carrier == Carrier::Ipsec {
                base.push(Match::IpsecExists);
            }
            match r.sources {
                Sources::Anyone => rules.push(rule(base, false, Verdict::Accept, describe(r))),
                Sources::Set(set) => {
                    for family in [Family::V4, Family::V6] {
                        let mut m = base.clone();
                        m.push(Match::SaddrSet(family, set_name(set, family)));
                        rules.push(rule(m, false, Verdict::Accept, describe(r)));
                    }
                }
                Sources::Localhost | Sources::Disabled => unreachable!("filtered above"),
            }
        }
        rules.push(rule(
            Vec::new(),
            true,
            Verdict::Drop,
            "not in the port table",
        ));
        Ruleset {
            role: policy.role.to_string(),
            sets,
            rules,
            forward: forward_rules(),
        }
    }
}

/// The forward chain: pod traffic to the metadata service and to the node-only ports of
/// every cluster node (rows of any role, condition or option whose reach is not
/// `anyone`; a port that some row opens to anyone is left out).
fn forward_rules() -> Vec<Rule> {
    use std::collections::BTreeSet;
    let mut rules: Vec<Rule> = METADATA_DESTINATIONS
        .iter()
        .map(|(d, why)| {
            let net: IpNet = d.parse().expect("constant prefix");
            rule(vec![Match::DaddrPrefix(net)], true, Verdict::Drop, *why)
        })
        .collect();
    let open: BTreeSet<(Protocol, u16)> = PORT_TABLE
        .iter()
        .filter(|r| r.reach == Reach::Anyone)
        .filter_map(|r| match r.port {
            PortSpec::Port(p) => Some((r.protocol, p)),
            _ => None,
        })
        .collect();
    let mut closed: BTreeSet<(Protocol, u16)> = BTreeSet::new();
    let mut esp = false;
    for r in PORT_TABLE.iter().filter(|r| r.reach != Reach::Anyone) {
        match (r.protocol, r.port) {
            (Protocol::Esp, _) => esp = true,
            (proto, PortSpec::Port(p)) if !open.contains(&(proto, p)) => {
                closed.insert((proto, p));
            }
            _ => {}
        }
    }
    for family in [Family::V4, Family::V6] {
        let nodes = set_name(SourceSet::ClusterNodes, family);
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let ports: Vec<u16> = closed
                .iter()
                .filter(|(p, _)| *p == proto)
                .map(|(_, n)| *n)
                .collect();
            if ports.is_empty() {
                continue;
            }
            rules.push(rule(
                vec![
                    Match::DaddrSet(family, nodes.clone()),
                    Match::DportSet(proto, ports),
                ],
                true,
                Verdict::Drop,
                format!("pods never reach node-only {proto} ports of cluster nodes"),
            ));
        }
        if esp {
            rules.push(rule(
                vec![
                    Match::DaddrSet(family, nodes.clone()),
                    Match::L4Proto("esp"),
                ],
                true,
                Verdict::Drop,
                "pods never send ESP to cluster nodes",
            ));
        }
    }
    rules
}

#[cfg(test)]
mod tests;

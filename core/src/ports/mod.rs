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

mod policy;
mod table;
mod types;

pub use policy::*;
pub use table::*;
pub use types::*;

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

#[cfg(test)]
mod tests;

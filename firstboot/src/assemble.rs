//! Cluster assembly: the steps that bring a node into its cluster once the host is ready.

use crate::config::NodeConfig;
use crate::run::Step;

/// The ordered cluster steps for this node's role.
pub fn steps<'a>(_config: &NodeConfig) -> Vec<Step<'a>> {
    Vec::new()
}

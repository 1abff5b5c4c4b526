//! Cluster assembly: the steps that bring a node into its cluster once the host is ready
//! (after preflight, firewall, hostname, Ignition and files).
//!
//! | step | role | live (`/`) | `--root DIR` |
//! |---|---|---|---|
//! | `join-check` | all | join secrets, internal address, binaries, images | same |
//! | `pki` | masters | CA files and this master's certificates and kubeconfigs | same |
//! | `etcd` | masters | stacked: start or join the etcd cluster; external: client certificates | unit and env written, nothing started or contacted |
//! | `control-plane` | masters | units written and started; waits for `/readyz` | written; not started |
//! | `kubelet` | all | kubelet and kube-proxy written and started; a worker waits for its TLS bootstrap | written; not started |
//! | `cluster-objects` | bootstrap master | manifests applied with kubectl, Nodes labelled, the CSR approver timer started | manifests and units written; not applied |
//!
//! Every step is idempotent: files are rewritten only when their contents or mode differ,
//! certificates are kept while valid, and the API objects are applied server-side.
//! Before a step uses a Kubernetes binary it checks the image has it and says which
//! profile does when it does not.

mod address;
mod api;
mod cluster_objects;
mod images;
mod kubectl;
mod kubelet;
mod master;
mod node;
mod wait;

pub use address::{
    default_route_interface_v4, default_route_interface_v6, interface_addresses, internal_ip,
    pick_address, NodeAddress,
};
pub use api::{readyz, wait_local_api, wait_tls_bootstrap};
pub use cluster_objects::{bootstrap_manifests, CLUSTER_OBJECTS};
pub use images::{
    needed_images, parse_images_json, resolve_images, ImageEntry, ImageKey, IMAGES_JSON, IMAGE_KEYS,
};
pub use kubectl::{
    apply_manifests, approve_csrs, approver_rbac, approver_units, label_nodes, plan_csr_approvals,
    plan_node_labels, read_cluster_roles, redact, ApplyReport, CsrDecision, Kubectl, KubectlOutput,
    APPROVER_SERVICE, APPROVER_TIMER, APPROVER_TIMER_UNIT, CLUSTER_ROLES_FILE, CSR_APPROVER_CONF,
    CSR_APPROVER_USER, FIELD_MANAGER, KUBECTL,
};
pub use kubelet::KUBELET;
pub use master::{CONTROL_PLANE, ETCD, PKI};
pub use node::{
    host_upgrade_units, require_binaries, required_binaries, write_changed, APISERVER_UNIT,
    CONTROL_PLANE_BINARIES, CONTROL_PLANE_UNITS, ETCD_BIN, FIRSTBOOT_BIN, HOST_UPGRADES_SERVICE,
    HOST_UPGRADES_TIMER, JOIN_CHECK, MANIFESTS_APPLIED_DIR, NODE_BINARIES, NODE_UNITS, NOT_LIVE,
};
pub use wait::{wait_until, Progress, WaitOptions};

use anyhow::{Context, Result};

use crate::step::{RunOptions, Step, StepContext};
use nodeimage_core::config::{NodeConfig, Role};

/// The ordered cluster steps for this node's role.
pub fn steps<'a>(config: &NodeConfig) -> Vec<Box<dyn Step + 'a>> {
    let mut v: Vec<Box<dyn Step + 'a>> = vec![Box::new(JOIN_CHECK)];
    if config.role == Role::Master {
        v.push(Box::new(PKI));
        v.push(Box::new(ETCD));
        v.push(Box::new(CONTROL_PLANE));
    }
    v.push(Box::new(KUBELET));
    if config.is_bootstrap_master() {
        v.push(Box::new(CLUSTER_OBJECTS));
    }
    if config
        .cluster
        .addons
        .host_upgrades
        .as_ref()
        .is_some_and(|h| h.enabled)
    {
        v.push(Box::new(node::HOST_UPGRADES));
    }
    v
}

/// Run the cluster steps of `config` once, in order, without the journal (for tests
/// and tools); stops at the first error. Returns (step, detail) pairs.
pub fn run_steps_once(
    opts: &RunOptions,
    config: &NodeConfig,
    hostname: &str,
) -> Result<Vec<(String, String)>> {
    let ctx = StepContext {
        opts,
        config,
        hostname,
    };
    let mut out = Vec::new();
    for s in steps(config) {
        let detail = s
            .apply(&ctx)
            .with_context(|| format!("step {}", s.name()))?;
        out.push((s.name().to_string(), detail));
    }
    Ok(out)
}

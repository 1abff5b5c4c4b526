//! The `kubelet` step of every node: KubeletConfiguration, the kubelet and kube-proxy
//! units and credentials; a worker then waits for its TLS bootstrap.

use std::time::Duration;

use anyhow::{anyhow, Result};

use super::api::wait_tls_bootstrap;
use super::node::{files_detail, inputs, node_address, require_binaries, write_changed};
use super::node::{NODE_BINARIES, NODE_UNITS, NOT_LIVE};
use super::wait::{Progress, WaitOptions};
use crate::kube::{self, GeneratedFile};
use crate::step::{FnStep, StepContext};
use crate::systemd;
use nodeimage_core::config::Role;
use nodeimage_core::layout::paths;

pub const KUBELET: FnStep = FnStep::new("kubelet", kubelet_plan, kubelet_step);

fn kubelet_plan(c: &StepContext) -> String {
    let mut s = "write the kubelet and kube-proxy units, configs and credentials".to_string();
    match (c.opts.live, c.config.role) {
        (false, _) => s.push_str(" (not started: not live)"),
        (true, Role::Master) => s.push_str("; start them"),
        (true, Role::Worker) => {
            s.push_str("; start them and wait up to 30 min for the kubelet's TLS bootstrap")
        }
    }
    s
}

/// Every node: KubeletConfiguration, kubelet and kube-proxy units and credentials (a
/// worker's bootstrap kubeconfig holds the token; it gets the CA certificate, never a
/// CA key). Live: both started; a worker then waits for its TLS bootstrap.
fn kubelet_step(c: &StepContext) -> Result<String> {
    let root = &c.opts.root;
    require_binaries(root, &NODE_BINARIES)?;
    let addr = node_address(c)?;
    let inp = inputs(c, addr.ip)?;
    let mut files = kube::kubelet::kubelet_files(&inp);
    files.extend(kube::proxy::kube_proxy_files(&inp));
    if c.config.role == Role::Worker {
        // The kubelet verifies API clients with it (authentication.x509.clientCAFile).
        let ca = c
            .config
            .secrets
            .ca_certificate
            .clone()
            .ok_or_else(|| anyhow!("the node config has no secrets.ca_certificate"))?;
        files.push(GeneratedFile {
            path: paths::CA_CRT.into(),
            mode: 0o644,
            contents: ca,
        });
    }
    let changed = write_changed(root, &files)?;
    let written = files_detail(files.len(), changed);
    if !c.opts.live {
        return Ok(format!("{written}; {NOT_LIVE}"));
    }
    systemd::enable_now(&NODE_UNITS)?;
    if c.config.role == Role::Master {
        return Ok(format!("{written}; {} started", NODE_UNITS.join(", ")));
    }
    let api = nodeimage_core::layout::api_server_url(&c.config.cluster.api_endpoint);
    let progress = Progress::new(Some(c.opts), "kubelet", Duration::from_secs(30));
    let took = wait_tls_bootstrap(root, &api, &WaitOptions::minutes(30), &progress)?;
    Ok(format!(
        "{written}; {} started; kubelet joined through {api} after {}s",
        NODE_UNITS.join(", "),
        took.as_secs()
    ))
}

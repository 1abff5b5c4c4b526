//! The `cluster-objects` step of the bootstrap master: the cluster manifests (bootstrap
//! token, RBAC, Weave Net, CoreDNS, addons) applied with kubectl, the Nodes labelled, and
//! the CSR approver installed.

use std::time::Duration;

use anyhow::{anyhow, Result};

use super::api::wait_local_api;
use super::images::resolve_images;
use super::kubectl::{
    apply_manifests, approver_rbac, approver_units, label_nodes, Kubectl, APPROVER_TIMER_UNIT,
    CLUSTER_ROLES_FILE, CSR_APPROVER_CONF, CSR_APPROVER_USER, KUBECTL,
};
use super::node::{
    inputs, local_apiserver_url, master_secrets, node_address, require_binaries, write_changed,
    FIRSTBOOT_BIN, MANIFESTS_APPLIED_DIR,
};
use super::wait::{Progress, WaitOptions};
use crate::kube::{self, GeneratedFile, KubeInputs};
use crate::pki;
use crate::step::{FnStep, StepContext};
use crate::systemd;
use nodeimage_core::config::NodeConfig;
use nodeimage_core::layout::paths;

pub const CLUSTER_OBJECTS: FnStep = FnStep::new(
    "cluster-objects",
    cluster_objects_plan,
    cluster_objects_step,
);

fn cluster_objects_plan(c: &StepContext) -> String {
    format!(
        "write the cluster manifests under {MANIFESTS_APPLIED_DIR} and the CSR approver's \
         units{}",
        if c.opts.live {
            "; once the API answers, apply them with kubectl, label the Nodes and start the \
             approver timer"
        } else {
            " (not applied: not live)"
        }
    )
}

/// What `cloud.provider` means since in-tree cloud providers are gone (Kubernetes 1.31):
/// the kubelets run with `--cloud-provider=external` and each Node keeps the
/// `node.cloudprovider.kubernetes.io/uninitialized` taint until that cloud's
/// cloud-controller-manager initialises it. This product deploys none, so say so where
/// the operator looks (the step's report), instead of a cluster whose DNS never schedules.
pub fn cloud_provider_note(provider: &str) -> String {
    format!(
        "cloud.provider `{provider}`: Nodes carry node.cloudprovider.kubernetes.io/uninitialized:NoSchedule \
         until a cloud-controller-manager for `{provider}` initialises them; none is deployed here: \
         apply one (e.g. in an Ignition file under /etc/kubernetes/manifests-applied) or remove cloud.provider"
    )
}

/// The bootstrap master's manifests in apply order, made at `now`: bootstrap token
/// (expiring `bootstrap_token_ttl` later), RBAC (with the approver's), Weave Net,
/// CoreDNS, then the enabled addons. kube-proxy runs as a service on every node; its
/// RBAC binding is part of the RBAC manifest.
pub fn bootstrap_manifests(
    inp: &KubeInputs,
    images: &kube::manifests::Images,
    now: time::OffsetDateTime,
) -> Result<(Vec<kube::manifests::Manifest>, Vec<String>)> {
    let mut ms = kube::manifests::cluster_manifests(inp, images, now).ok_or_else(|| {
        anyhow!("the node config lacks secrets.bootstrap_token or secrets.weave_password")
    })?;
    ms.push(approver_rbac());
    let mut plan = kube::addons::addon_manifests(inp, images);
    ms.extend(plan.manifests);
    ms.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(cloud) = &inp.node.cluster.cloud {
        plan.notes.push(cloud_provider_note(&cloud.provider));
    }
    Ok((ms, plan.notes))
}

fn secret_values(cfg: &NodeConfig) -> Vec<String> {
    let s = &cfg.secrets;
    let mut v = Vec::new();
    if let Some(t) = &s.bootstrap_token {
        v.push(t.as_str().to_string());
        v.push(t.secret().to_string());
    }
    v.extend(s.weave_password.clone());
    v
}

/// Bootstrap master: once the API answers, apply the cluster manifests, label Nodes,
/// and install the CSR approver. Under `--root` the manifests and units are written
/// only.
fn cluster_objects_step(c: &StepContext) -> Result<String> {
    let root = &c.opts.root;
    let cfg = c.config;
    require_binaries(root, &[KUBECTL])?;
    let addr = node_address(c)?;
    let inp = inputs(c, addr.ip)?;
    let (images, image_source) = resolve_images(root, cfg)?;
    let (manifests, notes) = bootstrap_manifests(&inp, &images, time::OffsetDateTime::now_utc())?;

    // An audit copy of what is applied.
    let mut files: Vec<GeneratedFile> = manifests
        .iter()
        .map(|m| GeneratedFile {
            path: format!("{MANIFESTS_APPLIED_DIR}/{}", m.name),
            mode: if m.secret { 0o600 } else { 0o644 },
            contents: m.yaml.clone(),
        })
        .collect();
    // The approver: its credential, the masters it labels, its timer.
    let ca = master_secrets(cfg)?.ca;
    let url = local_apiserver_url(&inp);
    let spec = pki::CertSpec {
        name: "csr-approver.conf".into(),
        ca: pki::CaKind::Cluster,
        common_name: CSR_APPROVER_USER.into(),
        organizations: vec![],
        dns_names: vec![],
        ips: vec![],
        usage: pki::Usage::Client,
        target: pki::Target::Kubeconfig {
            path: CSR_APPROVER_CONF.into(),
            server: url.clone(),
        },
    };
    pki::ensure_cert(
        root,
        &spec,
        &ca,
        &cfg.cluster.name,
        time::OffsetDateTime::now_utc(),
    )?;
    let mut masters = cfg.cluster.masters.clone();
    if !masters.contains(&addr.ip.to_string()) {
        masters.push(addr.ip.to_string());
    }
    files.push(GeneratedFile {
        path: CLUSTER_ROLES_FILE.into(),
        mode: 0o644,
        contents: format!(
            "{}\n",
            serde_json::to_string_pretty(&serde_json::json!({ "masters": masters }))?
        ),
    });
    for (path, text) in approver_units(FIRSTBOOT_BIN) {
        files.push(GeneratedFile {
            path: path.into(),
            mode: 0o644,
            contents: text,
        });
    }
    let changed = write_changed(root, &files)?;
    let names: Vec<&str> = manifests.iter().map(|m| m.name.as_str()).collect();
    for n in &notes {
        tracing::info!(step = "cluster-objects", note = %n, "addon note");
    }
    if !c.opts.live {
        return Ok(format!(
            "{} manifests ({}) written under {MANIFESTS_APPLIED_DIR}, images from {image_source}; \
             {changed} files changed; not applied (not live)",
            manifests.len(),
            names.join(", ")
        ));
    }

    let progress = Progress::new(Some(c.opts), "cluster-objects", Duration::from_secs(30));
    wait_local_api(root, &url, &WaitOptions::minutes(10), &progress, true)?;
    let kubectl = Kubectl::under(root, paths::SUPER_ADMIN_CONF);
    let secrets = secret_values(cfg);
    let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let report = apply_manifests(
        &kubectl,
        &manifests,
        &secret_refs,
        &WaitOptions::minutes(10),
        &progress,
    )?;
    let labelled = label_nodes(&kubectl, &masters).unwrap_or_else(|e| {
        // The approver timer labels Nodes again every 30 seconds.
        tracing::warn!(error = %crate::step::error_line(&e), "labelling nodes failed; the approver timer retries");
        0
    });
    systemd::enable_now(&[APPROVER_TIMER_UNIT])?;
    let mut detail = format!(
        "applied {} manifests; {labelled} nodes labelled; CSR approver timer started",
        report.applied.len()
    );
    for (m, why) in &report.skipped {
        detail.push_str(&format!("; skipped {m}: {why}"));
    }
    for n in &notes {
        detail.push_str(&format!("; {n}"));
    }
    Ok(detail)
}

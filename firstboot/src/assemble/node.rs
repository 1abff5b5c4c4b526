//! What every cluster step shares: the binaries and profiles, idempotent file writes,
//! the node's internal address and the generators' inputs; and the `join-check` step.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::address::{internal_ip, NodeAddress};
use super::images::resolve_images;
use super::kubectl::KUBECTL;
use crate::kube::{self, GeneratedFile, KubeInputs};
use crate::pki;
use crate::step::{FnStep, StepContext};
use nodeimage_core::config::{NodeConfig, Role};
use nodeimage_core::files::rooted;

/// Where the bootstrap master keeps a copy of every manifest it applied (secret ones 0600).
pub const MANIFESTS_APPLIED_DIR: &str = "/etc/kubernetes/manifests-applied";
/// The etcd binary (the profile installs it next to the Kubernetes binaries).
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// firstboot itself (the CSR approver timer runs `firstboot approve-csrs`).
pub const FIRSTBOOT_BIN: &str = "/usr/bin/firstboot";
/// The detail of a step that wrote files under `--root` and started nothing.
pub const NOT_LIVE: &str = "written; not started (not live)";

pub const APISERVER_UNIT: &str = "kube-apiserver.service";
pub const CONTROL_PLANE_UNITS: [&str; 3] = [
    APISERVER_UNIT,
    "kube-controller-manager.service",
    "kube-scheduler.service",
];
pub const NODE_UNITS: [&str; 2] = ["kubelet.service", "kube-proxy.service"];

/// The profiles that pin the Kubernetes payload (named in missing-binary errors).
const PAYLOAD_PROFILES: &str = "profiles/k8s-1.36-*.toml";

// ---------------------------------------------------------------- binaries ---

/// The binaries a step runs, by node path.
pub const CONTROL_PLANE_BINARIES: [&str; 3] = [
    "/usr/bin/kube-apiserver",
    "/usr/bin/kube-controller-manager",
    "/usr/bin/kube-scheduler",
];
pub const NODE_BINARIES: [&str; 2] = ["/usr/bin/kubelet", "/usr/bin/kube-proxy"];

/// Every binary this node's role runs.
pub fn required_binaries(config: &NodeConfig) -> Vec<&'static str> {
    let mut v = Vec::new();
    if config.role == Role::Master {
        if config.cluster.etcd.is_none() {
            v.push(ETCD_BIN);
        }
        v.extend(CONTROL_PLANE_BINARIES);
    }
    v.extend(NODE_BINARIES);
    if config.is_bootstrap_master() {
        v.push(KUBECTL);
    }
    v
}

/// Fail unless each binary exists under `root` and is executable, naming the first one
/// missing and the profiles that carry it.
pub fn require_binaries(root: &Path, bins: &[&str]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for b in bins {
        let name = b.rsplit('/').next().unwrap_or(b);
        match std::fs::metadata(rooted(root, b)) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
            Ok(_) => bail!("{name} in this image ({b}) is not an executable file"),
            Err(_) => bail!(
                "{name} is not in this image ({b}): build the image from a profile that pins the \
                 Kubernetes payload ({PAYLOAD_PROFILES})"
            ),
        }
    }
    Ok(())
}

// ------------------------------------------------------------------- files ---

/// Write `files` under `root`, leaving those whose contents and mode already match
/// untouched (a second run changes nothing). Returns how many were written.
pub fn write_changed(root: &Path, files: &[GeneratedFile]) -> Result<usize> {
    let mut n = 0;
    for f in files {
        if write_if_changed(root, &f.path, f.contents.as_bytes(), f.mode)? {
            n += 1;
        }
    }
    Ok(n)
}

fn write_if_changed(root: &Path, node_path: &str, data: &[u8], mode: u32) -> Result<bool> {
    let p = rooted(root, node_path);
    nodeimage_core::files::write_if_changed(&p, data, mode)
        .with_context(|| format!("writing {}", p.display()))
}

pub(super) fn files_detail(total: usize, changed: usize) -> String {
    format!("{total} files ({changed} changed)")
}

// --------------------------------------------------------------- the node ---

/// What every step derives from the context: the internal address and the generators'
/// inputs.
pub(super) fn node_address(c: &StepContext) -> Result<NodeAddress> {
    internal_ip(&c.opts.root, c.opts.live, c.config)
}

pub(super) fn inputs<'c>(c: &'c StepContext, ip: IpAddr) -> Result<KubeInputs<'c>> {
    KubeInputs::new(c.config, c.hostname, ip, kube::DEFAULT_BIN_DIR)
        .context("resolving the port table for this node")
}

/// `https://127.0.0.1:<kube-apiserver port of the port table>`.
pub(super) fn local_apiserver_url(inp: &KubeInputs) -> String {
    let port = inp
        .binds
        .apiserver
        .map(|a| a.port())
        .unwrap_or_else(nodeimage_core::layout::apiserver_port);
    format!("https://127.0.0.1:{port}")
}

pub(super) fn source_name(c: &StepContext) -> String {
    format!("node config ({})", c.hostname)
}

pub(super) fn master_secrets(cfg: &NodeConfig) -> Result<pki::MasterSecrets> {
    Ok(pki::MasterSecrets::from_secrets(
        &cfg.secrets,
        cfg.cluster.etcd.is_some(),
    )?)
}

// -------------------------------------------------------------- join-check ---

/// All nodes: the join secrets, the internal address, the binaries and (bootstrap
/// master) the manifests' images, before anything is changed.
/// The host-upgrades addon on a node: a timer that runs `firstboot update <url>` every
/// `interval` (a systemd time span: `7d`, `12h`, `1h30m`), 15 minutes after boot first,
/// spread over up to an hour so a cluster's nodes do not all fetch at once.
pub fn host_upgrade_units(url: &str, interval: &str) -> Vec<GeneratedFile> {
    vec![
        GeneratedFile::new(
            &format!("/etc/systemd/system/{HOST_UPGRADES_SERVICE}"),
            0o644,
            format!(
                "# Written by firstboot (addons.host-upgrades).\n[Unit]\nDescription=Install this node's image update, if there is one\n\
                 After=network-online.target\nWants=network-online.target\n\n[Service]\nType=oneshot\n\
                 ExecStart=/usr/bin/firstboot update {url}\n"
            ),
        ),
        GeneratedFile::new(
            &format!("/etc/systemd/system/{HOST_UPGRADES_TIMER}"),
            0o644,
            format!(
                "# Written by firstboot (addons.host-upgrades).\n[Unit]\nDescription=Check for an image update every {interval}\n\n\
                 [Timer]\nOnBootSec=15min\nOnUnitActiveSec={interval}\nRandomizedDelaySec=1h\nPersistent=true\n\n\
                 [Install]\nWantedBy=timers.target\n"
            ),
        ),
    ]
}

pub const HOST_UPGRADES_SERVICE: &str = "nodeimage-host-upgrades.service";
pub const HOST_UPGRADES_TIMER: &str = "nodeimage-host-upgrades.timer";

/// addons.host-upgrades: the update timer ([`host_upgrade_units`]) running
/// `firstboot update` (`crate::update`).
pub const HOST_UPGRADES: FnStep =
    FnStep::new("host-upgrades", host_upgrades_plan, host_upgrades_step);

fn host_upgrades_settings(c: &StepContext) -> Result<(String, String)> {
    let hu = c
        .config
        .cluster
        .addons
        .host_upgrades
        .as_ref()
        .filter(|h| h.enabled)
        .context("addons.host-upgrades is not enabled")?;
    let url = hu
        .url
        .clone()
        .context("addons.host-upgrades.url is missing")?;
    Ok((url, hu.interval.clone().unwrap_or_else(|| "7d".into())))
}

fn host_upgrades_plan(c: &StepContext) -> String {
    match host_upgrades_settings(c) {
        Ok((url, interval)) => format!("check {url} for an image update every {interval} (timer)"),
        Err(e) => format!("{e}"),
    }
}

fn host_upgrades_step(c: &StepContext) -> Result<String> {
    let (url, interval) = host_upgrades_settings(c)?;
    write_changed(&c.opts.root, &host_upgrade_units(&url, &interval))?;
    if c.opts.live {
        crate::systemd::enable_now(&[HOST_UPGRADES_TIMER])?;
        Ok(format!("update timer started: {url} every {interval}"))
    } else {
        Ok(format!(
            "update timer written (not started: not live): {url} every {interval}"
        ))
    }
}

pub const JOIN_CHECK: FnStep = FnStep::new("join-check", join_check_plan, join_check);

fn join_check_plan(c: &StepContext) -> String {
    let cfg = c.config;
    let mut s = format!(
        "check the join secrets, the internal address and the {} binaries of a {}{}",
        required_binaries(cfg).len(),
        cfg.role,
        if cfg.is_bootstrap_master() {
            " (bootstrap)"
        } else {
            ""
        }
    );
    if cfg.is_bootstrap_master() {
        s.push_str(", and the manifests' images");
    }
    s
}

/// All nodes: the join secrets, the internal address, the binaries and (bootstrap
/// master) the manifests' images, before anything is changed.
fn join_check(c: &StepContext) -> Result<String> {
    let cfg = c.config;
    cfg.require_join_secrets(&source_name(c))?;
    let addr = node_address(c)?;
    let inp = inputs(c, addr.ip)?;
    let bins = required_binaries(cfg);
    require_binaries(&c.opts.root, &bins)?;
    let mut detail = format!(
        "{}{} {} ({}, from {})",
        cfg.role,
        if cfg.is_bootstrap_master() {
            " (bootstrap)"
        } else {
            ""
        },
        c.hostname,
        addr.ip,
        addr.source
    );
    if cfg.is_bootstrap_master() {
        let (_, source) = resolve_images(&c.opts.root, cfg)?;
        detail.push_str(&format!("; images: {source}"));
    }
    tracing::info!(role = %cfg.role, node = %c.hostname, internal_ip = %addr.ip, source = %addr.source, binaries = bins.len(), apiserver = ?inp.binds.apiserver, "joining the cluster");
    detail.push_str(&format!("; {} binaries present", bins.len()));
    Ok(detail)
}

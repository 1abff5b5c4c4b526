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
mod images;
mod kubectl;
mod wait;

pub use address::{
    default_route_interface_v4, default_route_interface_v6, interface_addresses, internal_ip,
    pick_address, NodeAddress,
};
pub use images::{
    needed_images, parse_images_json, resolve_images, ImageEntry, ImageKey, IMAGES_JSON, IMAGE_KEYS,
};
pub use kubectl::{
    apply_manifests, approve_csrs, approver_rbac, approver_units, label_nodes, plan_csr_approvals,
    plan_node_labels, read_cluster_roles, redact, ApplyReport, CsrDecision, Kubectl, KubectlOutput,
    APPROVER_SERVICE, APPROVER_TIMER, APPROVER_TIMER_UNIT, CLUSTER_ROLES_FILE, CSR_APPROVER_CONF,
    CSR_APPROVER_USER, FIELD_MANAGER, KUBECTL,
};
pub use wait::{readyz, wait_until, Progress, WaitOptions};

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::config::{NodeConfig, Role};
use crate::etcd::{self, EtcdMemberSpec};
use crate::kube::{self, GeneratedFile, KubeInputs};
use crate::pki::{self, paths};
use crate::run::{RunOptions, Step, StepContext};
use crate::util::{atomic_write, rooted};

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

/// The ordered cluster steps for this node's role.
pub fn steps<'a>(config: &NodeConfig) -> Vec<Step<'a>> {
    let mut v: Vec<Step<'a>> = vec![Step {
        name: "join-check",
        apply: Box::new(join_check),
    }];
    if config.role == Role::Master {
        v.push(Step {
            name: "pki",
            apply: Box::new(pki_step),
        });
        v.push(Step {
            name: "etcd",
            apply: Box::new(etcd_step),
        });
        v.push(Step {
            name: "control-plane",
            apply: Box::new(control_plane_step),
        });
    }
    v.push(Step {
        name: "kubelet",
        apply: Box::new(kubelet_step),
    });
    if config.is_bootstrap_master() {
        v.push(Step {
            name: "cluster-objects",
            apply: Box::new(cluster_objects_step),
        });
    }
    v
}

// ---------------------------------------------------------------- binaries ---

/// The binaries a step runs, by node path.
const CONTROL_PLANE_BINARIES: [&str; 3] = [
    "/usr/bin/kube-apiserver",
    "/usr/bin/kube-controller-manager",
    "/usr/bin/kube-scheduler",
];
const NODE_BINARIES: [&str; 2] = ["/usr/bin/kubelet", "/usr/bin/kube-proxy"];

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
    use std::os::unix::fs::PermissionsExt;
    let p = rooted(root, node_path);
    if let (Ok(old), Ok(meta)) = (std::fs::read(&p), std::fs::metadata(&p)) {
        if old == data && meta.permissions().mode() & 0o7777 == mode {
            return Ok(false);
        }
    }
    atomic_write(&p, data, mode).with_context(|| format!("writing {}", p.display()))?;
    Ok(true)
}

fn files_detail(total: usize, changed: usize) -> String {
    format!("{total} files ({changed} changed)")
}

// --------------------------------------------------------------- the node ---

/// What every step derives from the context: the internal address and the generators'
/// inputs.
fn node_address(c: &StepContext) -> Result<NodeAddress> {
    internal_ip(&c.opts.root, c.opts.live, c.config)
}

fn inputs<'c>(c: &'c StepContext, ip: IpAddr) -> Result<KubeInputs<'c>> {
    KubeInputs::new(c.config, c.hostname, ip, kube::DEFAULT_BIN_DIR)
        .context("resolving the port table for this node")
}

/// `https://127.0.0.1:<kube-apiserver port of the port table>`.
fn local_apiserver_url(inp: &KubeInputs) -> String {
    let port = inp
        .binds
        .apiserver
        .map(|a| a.port())
        .unwrap_or_else(pki::apiserver_port);
    format!("https://127.0.0.1:{port}")
}

fn source_name(c: &StepContext) -> String {
    format!("node config ({})", c.hostname)
}

// -------------------------------------------------------------- join-check ---

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

// --------------------------------------------------------------------- pki ---

fn master_secrets(cfg: &NodeConfig) -> Result<pki::MasterSecrets> {
    Ok(pki::MasterSecrets::from_secrets(
        &cfg.secrets,
        cfg.cluster.etcd.is_some(),
    )?)
}

/// Masters: CA files and every certificate this master needs, kept while valid.
fn pki_step(c: &StepContext) -> Result<String> {
    let addr = node_address(c)?;
    let id = pki::MasterIdentity::from_node_config(c.config, c.hostname, &[addr.ip]);
    let report = pki::ensure_master_pki(
        &c.opts.root,
        &id,
        &master_secrets(c.config)?,
        time::OffsetDateTime::now_utc(),
    )?;
    let count = |f: fn(&pki::Outcome) -> bool| report.iter().filter(|(_, o)| f(o)).count();
    Ok(format!(
        "{} certificates: {} created, {} kept, {} replaced",
        report.len(),
        count(|o| matches!(o, pki::Outcome::Created)),
        count(|o| matches!(o, pki::Outcome::Kept)),
        count(|o| matches!(o, pki::Outcome::Replaced(_))),
    ))
}

// -------------------------------------------------------------------- etcd ---

/// An [`etcd::EtcdApi`] that turns a member list nobody answers into progress lines.
struct ProgressEtcd<'a, A: etcd::EtcdApi> {
    inner: A,
    progress: Progress<'a>,
    attempts: std::cell::Cell<u32>,
    /// Off on the bootstrap master, whose probes of the other masters are expected to
    /// go unanswered.
    report: bool,
}

impl<A: etcd::EtcdApi> etcd::EtcdApi for ProgressEtcd<'_, A> {
    fn member_list(&self, endpoint: &str) -> Result<Vec<etcd::Member>, etcd::EtcdError> {
        let r = self.inner.member_list(endpoint);
        if let (Err(e), true) = (&r, self.report) {
            self.attempts.set(self.attempts.get() + 1);
            self.progress.waiting(
                &format!("etcd peer {endpoint}"),
                self.attempts.get(),
                &e.to_string(),
            );
        }
        r
    }
    fn member_add(
        &self,
        endpoint: &str,
        peer_urls: &[String],
    ) -> Result<Vec<etcd::Member>, etcd::EtcdError> {
        self.inner.member_add(endpoint, peer_urls)
    }
    fn member_remove(&self, endpoint: &str, id: u64) -> Result<(), etcd::EtcdError> {
        self.inner.member_remove(endpoint, id)
    }
    fn healthy(&self, endpoint: &str) -> bool {
        self.inner.healthy(endpoint)
    }
}

/// Masters: bring up this master's stacked etcd member (new cluster on the bootstrap
/// master, join through the etcd API on the others), or write the external etcd's
/// client certificates.
fn etcd_step(c: &StepContext) -> Result<String> {
    let root = &c.opts.root;
    let cfg = c.config;
    if let Some(ext) = &cfg.cluster.etcd {
        let files = vec![
            GeneratedFile {
                path: paths::EXTERNAL_ETCD_CA_CRT.into(),
                mode: 0o644,
                contents: ext.ca_certificate.clone(),
            },
            GeneratedFile {
                path: paths::EXTERNAL_ETCD_CLIENT_CRT.into(),
                mode: 0o644,
                contents: ext.certificate.clone(),
            },
            GeneratedFile {
                path: paths::EXTERNAL_ETCD_CLIENT_KEY.into(),
                mode: 0o600,
                contents: ext.key.clone(),
            },
        ];
        let changed = write_changed(root, &files)?;
        return Ok(format!(
            "external etcd ({}): client certificates written ({changed} changed); no local member",
            ext.endpoints.join(",")
        ));
    }
    require_binaries(root, &[ETCD_BIN])?;
    let addr = node_address(c)?;
    let spec = EtcdMemberSpec::from_node_config(cfg, c.hostname, &addr.ip.to_string(), root)?;
    if !c.opts.live {
        let mut files = vec![GeneratedFile {
            path: etcd::UNIT_PATH.into(),
            mode: 0o644,
            contents: etcd::etcd_unit(ETCD_BIN),
        }];
        let what = if spec.bootstrap {
            let ic = format!("{}={}", spec.name, spec.peer_url());
            files.push(GeneratedFile {
                path: etcd::ENV_FILE.into(),
                mode: 0o600,
                contents: etcd::etcd_env(&spec, &ic, etcd::ClusterState::New).to_env_file(),
            });
            "new cluster".to_string()
        } else {
            // The member list (and so the environment) comes from a running member.
            format!("joins {}", spec.other_endpoints().join(","))
        };
        let changed = write_changed(root, &files)?;
        return Ok(format!("etcd {what}: {changed} files changed; {NOT_LIVE}"));
    }
    wait::check_start_order(&[etcd::UNIT_NAME])?;
    let client = etcd::HttpEtcdClient::from_tls(&spec.tls, Duration::from_secs(5))?;
    let api = ProgressEtcd {
        inner: client,
        progress: Progress::new(Some(c.opts), "etcd", Duration::from_secs(30)),
        attempts: std::cell::Cell::new(0),
        report: !spec.bootstrap,
    };
    let svc = etcd::SystemdEtcd {
        root: root.clone(),
        etcd_bin: ETCD_BIN.into(),
    };
    if !spec.bootstrap {
        tracing::info!(step = "etcd", member = %spec.name, peers = ?spec.other_endpoints(), "joining etcd: waiting for a member to answer");
    }
    let outcome = etcd::join_cluster(&spec, &api, &svc, &etcd::JoinOptions::default())?;
    Ok(match outcome {
        etcd::JoinOutcome::AlreadyRunning => "etcd already running and healthy".into(),
        etcd::JoinOutcome::Resumed => "etcd resumed from its data".into(),
        etcd::JoinOutcome::NewCluster => format!("etcd: new cluster started by {}", spec.name),
        etcd::JoinOutcome::Joined { initial_cluster } => {
            format!("etcd: joined ({initial_cluster})")
        }
        etcd::JoinOutcome::StartedUnstarted { initial_cluster } => {
            format!("etcd: started as an added member ({initial_cluster})")
        }
        etcd::JoinOutcome::Rejoined {
            removed,
            initial_cluster,
        } => format!("etcd: stale member {removed:x} removed and rejoined ({initial_cluster})"),
    })
}

// ----------------------------------------------------------- control plane ---

/// Wait until the local API server says it is ready, with a client certificate signed
/// by the cluster CA (any authenticated user may read `/readyz`).
pub fn wait_local_api(
    root: &Path,
    url: &str,
    w: &WaitOptions,
    progress: &Progress,
    live_units: bool,
) -> Result<Duration> {
    let ca = wait::read_rooted(root, paths::CA_CRT)?;
    let id = format!(
        "{}\n{}",
        wait::read_rooted(root, paths::APISERVER_KUBELET_CLIENT_CRT)?,
        wait::read_rooted(root, paths::APISERVER_KUBELET_CLIENT_KEY)?
    );
    let client = wait::https_client(&ca, Some(id), Duration::from_secs(5))?;
    wait_until(
        progress,
        &format!("the API server at {url}/readyz"),
        w,
        || {
            readyz(&client, url).map_err(|e| {
                if live_units {
                    format!("{e} ({})", wait::unit_states(&CONTROL_PLANE_UNITS))
                } else {
                    e
                }
            })
        },
    )
}

/// Masters: kube-apiserver, kube-controller-manager and kube-scheduler units (plus
/// audit/webhook files); started when live, then the API's `/readyz` is awaited.
fn control_plane_step(c: &StepContext) -> Result<String> {
    let root = &c.opts.root;
    require_binaries(root, &CONTROL_PLANE_BINARIES)?;
    let addr = node_address(c)?;
    let inp = inputs(c, addr.ip)?;
    let files = kube::control_plane::control_plane_files(&inp);
    let changed = write_changed(root, &files)?;
    let written = files_detail(files.len(), changed);
    if !c.opts.live {
        return Ok(format!("{written}; {NOT_LIVE}"));
    }
    wait::enable_now(&CONTROL_PLANE_UNITS)?;
    let url = local_apiserver_url(&inp);
    let progress = Progress::new(Some(c.opts), "control-plane", Duration::from_secs(30));
    let took = wait_local_api(root, &url, &WaitOptions::minutes(10), &progress, true)?;
    Ok(format!(
        "{written}; {} started; API ready at {url} after {}s",
        CONTROL_PLANE_UNITS.join(", "),
        took.as_secs()
    ))
}

// ----------------------------------------------------------------- kubelet ---

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
    wait::enable_now(&NODE_UNITS)?;
    if c.config.role == Role::Master {
        return Ok(format!("{written}; {} started", NODE_UNITS.join(", ")));
    }
    let api = pki::api_server_url(&c.config.cluster.api_endpoint);
    let progress = Progress::new(Some(c.opts), "kubelet", Duration::from_secs(30));
    let took = wait_tls_bootstrap(root, &api, &WaitOptions::minutes(30), &progress)?;
    Ok(format!(
        "{written}; {} started; kubelet joined through {api} after {}s",
        NODE_UNITS.join(", "),
        took.as_secs()
    ))
}

/// A worker's kubelet has joined when it has written its kubeconfig (after the API
/// signed its client certificate). Until then, say whether the API answers at all.
pub fn wait_tls_bootstrap(
    root: &Path,
    api: &str,
    w: &WaitOptions,
    progress: &Progress,
) -> Result<Duration> {
    let ca = wait::read_rooted(root, paths::CA_CRT)?;
    let client = wait::https_client(&ca, None, Duration::from_secs(5))?;
    let kubelet_conf = rooted(root, paths::KUBELET_CONF);
    wait_until(
        progress,
        &format!("the kubelet's TLS bootstrap through {api}"),
        w,
        || {
            if kubelet_conf.exists() {
                return Ok(());
            }
            Err(match readyz(&client, api) {
                Ok(()) => "the API server is ready; the kubelet has no client certificate yet \
                           (is the bootstrap token applied by the bootstrap master?)"
                    .to_string(),
                Err(e) => format!("API server not ready: {e}"),
            })
        },
    )
}

// --------------------------------------------------------- cluster objects ---

/// The bootstrap master's manifests in apply order: bootstrap token, RBAC (with the
/// approver's), Weave Net, CoreDNS, then the enabled addons. kube-proxy runs as a
/// service on every node; its RBAC binding is part of the RBAC manifest.
pub fn bootstrap_manifests(
    inp: &KubeInputs,
    images: &kube::manifests::Images,
) -> Result<(Vec<kube::manifests::Manifest>, Vec<String>)> {
    let mut ms = kube::manifests::cluster_manifests(inp, images).ok_or_else(|| {
        anyhow!("the node config lacks secrets.bootstrap_token or secrets.weave_password")
    })?;
    ms.push(approver_rbac());
    let plan = kube::addons::addon_manifests(inp, images);
    ms.extend(plan.manifests);
    ms.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((ms, plan.notes))
}

fn secret_values(cfg: &NodeConfig) -> Vec<String> {
    let s = &cfg.secrets;
    let mut v = Vec::new();
    if let Some(t) = &s.bootstrap_token {
        v.push(t.clone());
        if let Some((_, secret)) = t.split_once('.') {
            v.push(secret.to_string());
        }
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
    let (manifests, notes) = bootstrap_manifests(&inp, &images)?;

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
        tracing::warn!(error = %format!("{e:#}"), "labelling nodes failed; the approver timer retries");
        0
    });
    wait::enable_now(&[APPROVER_TIMER_UNIT])?;
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
        let detail = (s.apply)(&ctx).with_context(|| format!("step {}", s.name))?;
        out.push((s.name.to_string(), detail));
    }
    Ok(out)
}

//! The master steps: `pki` (CA files, certificates, kubeconfigs), `etcd` (the stacked
//! member, or the external etcd's client certificates) and `control-plane` (the API
//! server, controller manager and scheduler, awaited through `/readyz`).

use std::time::Duration;

use anyhow::Result;

use super::api::wait_local_api;
use super::node::{
    files_detail, inputs, local_apiserver_url, master_secrets, node_address, require_binaries,
    write_changed, CONTROL_PLANE_BINARIES, CONTROL_PLANE_UNITS, ETCD_BIN, FIRSTBOOT_BIN, NOT_LIVE,
};
use super::wait::{Progress, WaitOptions};
use crate::etcd::{self, EtcdMemberSpec};
use crate::kube::{self, GeneratedFile};
use crate::pki;
use crate::step::{FnStep, StepContext};
use crate::systemd;
use nodeimage_core::layout::paths;

/// Masters: CA files and every certificate this master needs, kept while valid.
pub const PKI: FnStep = FnStep::new("pki", pki_plan, pki_step);

fn pki_plan(_: &StepContext) -> String {
    "write the CA files and this master's certificates and kubeconfigs under \
     /etc/kubernetes (kept while valid)"
        .into()
}

/// Masters: this master's stacked etcd member, or the external etcd's client
/// certificates.
pub const ETCD: FnStep = FnStep::new("etcd", etcd_plan, etcd_step);

fn etcd_plan(c: &StepContext) -> String {
    let cfg = c.config;
    if let Some(ext) = &cfg.cluster.etcd {
        return format!(
            "write the client certificates of the external etcd ({}); no local member",
            ext.endpoints.join(",")
        );
    }
    let mut s = if cfg.bootstrap {
        format!("start a new etcd cluster with member {}", c.hostname)
    } else {
        format!(
            "join the etcd cluster of the masters {} as {}",
            cfg.cluster.masters.join(", "),
            c.hostname
        )
    };
    if !c.opts.live {
        s.push_str(" (not live: unit and environment written, nothing started or contacted)");
    }
    s
}

/// Masters: kube-apiserver, kube-controller-manager and kube-scheduler.
pub const CONTROL_PLANE: FnStep =
    FnStep::new("control-plane", control_plane_plan, control_plane_step);

fn control_plane_plan(c: &StepContext) -> String {
    format!(
        "write the units and files of {}{}",
        CONTROL_PLANE_UNITS.join(", "),
        if c.opts.live {
            "; start them and wait up to 10 min for the API's /readyz"
        } else {
            " (not started: not live)"
        }
    )
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
    // Renewal (a daily timer) reissues from what this step records and the CAs it wrote.
    crate::renew::save_identity(&c.opts.root, &id)?;
    write_changed(&c.opts.root, &crate::renew::units(FIRSTBOOT_BIN))?;
    let timer = if c.opts.live {
        systemd::enable_now(&[crate::renew::TIMER])?;
        "renewal timer started"
    } else {
        "renewal timer written (not started: not live)"
    };
    let count = |f: fn(&pki::Outcome) -> bool| report.iter().filter(|(_, o)| f(o)).count();
    Ok(format!(
        "{} certificates: {} created, {} kept, {} replaced; {timer}",
        report.len(),
        count(|o| matches!(o, pki::Outcome::Created)),
        count(|o| matches!(o, pki::Outcome::Kept)),
        count(|o| matches!(o, pki::Outcome::Replaced(_))),
    ))
}

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
    systemd::check_start_order(&[etcd::UNIT_NAME])?;
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
    systemd::enable_now(&CONTROL_PLANE_UNITS)?;
    let url = local_apiserver_url(&inp);
    let progress = Progress::new(Some(c.opts), "control-plane", Duration::from_secs(30));
    let took = wait_local_api(root, &url, &WaitOptions::minutes(10), &progress, true)?;
    Ok(format!(
        "{written}; {} started; API ready at {url} after {}s",
        CONTROL_PLANE_UNITS.join(", "),
        took.as_secs()
    ))
}

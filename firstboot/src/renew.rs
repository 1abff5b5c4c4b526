//! Certificate renewal on masters, so that no certificate of a running cluster expires
//! silently (as kubeadm's `certs renew` and Talos do): a daily timer runs
//! `firstboot renew-certs`, which reissues every certificate of the master set that is
//! in its renewal window ([`nodeimage_core::pki::renew_window`]: the last 30 days, or the
//! last third of a shorter lifetime) and restarts the components that read them.
//!
//! Renewal needs no node config: the pki step records this master's identity (names,
//! addresses, the cluster's network; nothing secret) in [`IDENTITY`], and the CA keys
//! are the ones the master keeps under /etc/kubernetes/pki.
//!
//! What renews itself and is not done here: the kubelets' client certificates
//! (`rotateCertificates`) and the workers' serving certificates (CSRs the approver timer
//! signs off).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use time::OffsetDateTime;

use crate::kube::GeneratedFile;
use crate::pki::{self, MasterIdentity, MasterSecrets, Outcome, PkiReport};
use nodeimage_core::files::{rooted, write_if_changed};

/// The master's identity as the pki step recorded it.
pub const IDENTITY: &str = "/var/lib/firstboot/master-identity.json";
pub const SERVICE: &str = "nodeimage-cert-renewal.service";
pub const TIMER: &str = "nodeimage-cert-renewal.timer";
const UNIT_DIR: &str = "/etc/systemd/system";

/// Record `id` for later renewals.
pub fn save_identity(root: &Path, id: &MasterIdentity) -> Result<()> {
    let p = rooted(root, IDENTITY);
    write_if_changed(&p, &serde_json::to_vec_pretty(id)?, 0o644)
        .map(drop)
        .with_context(|| format!("writing {}", p.display()))
}

pub fn load_identity(root: &Path) -> Result<MasterIdentity> {
    let p = rooted(root, IDENTITY);
    let text = std::fs::read(&p).with_context(|| {
        format!(
            "reading {} (written by firstboot's pki step on masters)",
            p.display()
        )
    })?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", p.display()))
}

/// The units that read a certificate of the master set, by its spec name.
fn units_of(spec: &str) -> &'static [&'static str] {
    match spec {
        s if s.starts_with("etcd-") => &["etcd.service"],
        "apiserver-etcd-client" => &["kube-apiserver.service"],
        s if s.starts_with("apiserver") || s == "front-proxy-client" => &["kube-apiserver.service"],
        "controller-manager.conf" => &["kube-controller-manager.service"],
        "scheduler.conf" => &["kube-scheduler.service"],
        s if s.starts_with("kubelet") => &["kubelet.service", "kube-proxy.service"],
        // admin.conf, super-admin.conf, csr-approver.conf: read anew by each use.
        _ => &[],
    }
}

/// Units to restart after `report`: those reading a certificate that was (re)issued.
pub fn units_to_restart(report: &PkiReport) -> BTreeSet<&'static str> {
    report
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::Kept))
        .flat_map(|(name, _)| units_of(name).iter().copied())
        .collect()
}

/// Renew what is due under `root` at `now`, issuing certificates valid for `validity`.
pub fn renew_at(root: &Path, now: OffsetDateTime, validity: time::Duration) -> Result<PkiReport> {
    let id = load_identity(root)?;
    let secrets = MasterSecrets::from_pki_dir(root, id.stacked_etcd)
        .context("reading the master's CAs under /etc/kubernetes/pki")?;
    Ok(pki::ensure_master_pki_valid_for(
        root, &id, &secrets, now, validity,
    )?)
}

/// `firstboot renew-certs`: renew, then restart the components whose certificates
/// changed (when `live`). Returns a one-line summary.
pub fn renew_certs(root: &Path, live: bool) -> Result<String> {
    let report = renew_at(root, OffsetDateTime::now_utc(), pki::LEAF_VALIDITY)?;
    let renewed: Vec<&str> = report
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::Kept))
        .map(|(n, _)| n.as_str())
        .collect();
    let restart = units_to_restart(&report);
    if live {
        for u in &restart {
            crate::systemd::restart(u).with_context(|| format!("restarting {u}"))?;
        }
    }
    Ok(format!(
        "{} certificates checked, {} renewed{}{}",
        report.len(),
        renewed.len(),
        if renewed.is_empty() {
            String::new()
        } else {
            format!(" ({})", renewed.join(", "))
        },
        if restart.is_empty() {
            String::new()
        } else {
            format!(
                "; restarted {}",
                restart.into_iter().collect::<Vec<_>>().join(", ")
            )
        }
    ))
}

/// The timer (daily, spread over an hour, caught up after downtime) and its service.
pub fn units(firstboot_bin: &str) -> Vec<GeneratedFile> {
    vec![
        GeneratedFile::new(
            &format!("{UNIT_DIR}/{SERVICE}"),
            0o644,
            format!(
                "# Written by firstboot.\n[Unit]\nDescription=Renew this master's certificates before they expire\n\
                 After=network-online.target\n\n[Service]\nType=oneshot\nExecStart={firstboot_bin} renew-certs\n"
            ),
        ),
        GeneratedFile::new(
            &format!("{UNIT_DIR}/{TIMER}"),
            0o644,
            "# Written by firstboot.\n[Unit]\nDescription=Renew this master's certificates daily\n\n\
             [Timer]\nOnBootSec=15min\nOnUnitActiveSec=1d\nRandomizedDelaySec=1h\nPersistent=true\n\n\
             [Install]\nWantedBy=timers.target\n"
                .to_string(),
        ),
    ]
}

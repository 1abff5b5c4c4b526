//! Waiting for the API server: the local one's `/readyz` with a client certificate, and
//! a worker's kubelet TLS bootstrap.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::node::CONTROL_PLANE_UNITS;
use super::wait::{wait_until, Progress, WaitOptions};
use crate::net::tls_client;
use crate::systemd;
use nodeimage_core::errors::chain as error_chain;
use nodeimage_core::files::rooted;
use nodeimage_core::kubeconfig::Kubeconfig;
use nodeimage_core::layout::paths;

/// `GET {base}/readyz`: Ok on 200, else what the server (or the network) said.
pub fn readyz(client: &reqwest::blocking::Client, base: &str) -> std::result::Result<(), String> {
    match client.get(format!("{base}/readyz?verbose")).send() {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status();
            let body = r.text().unwrap_or_default();
            // The verbose answer lists every check; say which fail (`[-]…`).
            let failing: Vec<&str> = body
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("[-]"))
                .collect();
            let detail: String = if failing.is_empty() {
                body.trim().to_string()
            } else {
                failing.join("; ")
            };
            Err(format!(
                "HTTP {status}: {}",
                detail.chars().take(400).collect::<String>()
            ))
        }
        Err(e) => Err(error_chain(&e)),
    }
}

/// Read a file under the root as text, naming it on error.
pub fn read_rooted(root: &Path, node_path: &str) -> Result<String> {
    let p = nodeimage_core::files::rooted(root, node_path);
    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
}

/// Wait until the local API server says it is ready. The bootstrap master asks as its
/// super-admin (`system:masters`, which the authorizer admits before the RBAC bootstrap
/// roles exist, as kubeadm does); other masters join a cluster whose roles exist and ask
/// with the API server's kubelet-client certificate (any authenticated user may read
/// `/readyz` once `system:public-info-viewer` is bound).
pub fn wait_local_api(
    root: &Path,
    url: &str,
    w: &WaitOptions,
    progress: &Progress,
    live_units: bool,
) -> Result<Duration> {
    let ca = read_rooted(root, paths::CA_CRT)?;
    let super_admin = nodeimage_core::files::rooted(root, paths::SUPER_ADMIN_CONF);
    let from_kubeconfig = std::fs::read_to_string(&super_admin)
        .ok()
        .and_then(|t| Kubeconfig::parse(&t).ok())
        .and_then(|k| {
            Some(format!(
                "{}\n{}",
                k.client_certificate_pem()?,
                k.client_key_pem()?
            ))
        });
    let id = match from_kubeconfig {
        Some(id) => id,
        None => format!(
            "{}\n{}",
            read_rooted(root, paths::APISERVER_KUBELET_CLIENT_CRT)?,
            read_rooted(root, paths::APISERVER_KUBELET_CLIENT_KEY)?
        ),
    };
    let client = tls_client(&ca, Some(&id), Duration::from_secs(5))?;
    wait_until(
        progress,
        &format!("the API server at {url}/readyz"),
        w,
        || {
            readyz(&client, url).map_err(|e| {
                if live_units {
                    format!("{e} ({})", systemd::unit_states(&CONTROL_PLANE_UNITS))
                } else {
                    e
                }
            })
        },
    )
}

/// A worker's kubelet has joined when it has written its kubeconfig (after the API
/// signed its client certificate). Until then, say whether the API answers at all.
pub fn wait_tls_bootstrap(
    root: &Path,
    api: &str,
    w: &WaitOptions,
    progress: &Progress,
) -> Result<Duration> {
    let ca = read_rooted(root, paths::CA_CRT)?;
    let client = tls_client(&ca, None, Duration::from_secs(5))?;
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

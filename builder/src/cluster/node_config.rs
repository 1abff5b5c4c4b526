//! Projection of cluster.yml plus the cluster secrets into one node's config, giving
//! each role only what it needs, and its rendering as native YAML or Ignition.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nodeimage_core::config::{
    ClusterConfig, Host, Hostname, LabelKey, NodeCluster, NodeConfig, NodeExternalEtcd, Role,
    Secrets, NODE_CONFIG_IGNITION_PATH, NODE_CONFIG_VERSION,
};

use super::secrets::ClusterSecrets;

/// Output format of `nodeimage node-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NodeConfigFormat {
    /// The native node config (YAML).
    #[default]
    Yaml,
    /// An Ignition v3.4.0 config carrying the node config as a file.
    Ignition,
}

/// What `node-config` knows about the node it makes a config for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeSpec {
    pub role: Option<Role>,
    pub bootstrap: bool,
    pub address: Option<String>,
    pub private_address: Option<String>,
    pub hostname: Option<Hostname>,
    pub labels: BTreeMap<LabelKey, String>,
}

impl NodeSpec {
    pub(super) fn from_host(h: &Host, bootstrap: bool) -> Self {
        NodeSpec {
            role: Some(h.role),
            bootstrap,
            address: Some(h.address.clone()),
            private_address: h.private_address.clone(),
            hostname: h.hostname.clone(),
            labels: h.labels.clone(),
        }
    }
}

fn read_relative(base: &Path, p: &str, what: &str) -> Result<String> {
    let path = if Path::new(p).is_absolute() {
        PathBuf::from(p)
    } else {
        base.join(p)
    };
    std::fs::read_to_string(&path).with_context(|| format!("reading {what} {}", path.display()))
}

/// Build the node config for one node. `base` is cluster.yml's directory: external etcd
/// and token-webhook files named in cluster.yml are read relative to it and inlined
/// (masters only).
pub fn build_node_config(
    cluster: &ClusterConfig,
    base: &Path,
    secrets: &ClusterSecrets,
    node: &NodeSpec,
) -> Result<NodeConfig> {
    let role = node
        .role
        .ok_or_else(|| anyhow!("the node's role is unknown: pass --role master|worker"))?;
    if node.bootstrap && role != Role::Master {
        bail!("only a master can bootstrap");
    }
    let api_endpoint = cluster.resolved_api_endpoint().ok_or_else(|| {
        anyhow!(
            "cluster.yml has neither `api_endpoint` nor a master host: the API endpoint is unknown"
        )
    })?;
    let master = role == Role::Master;
    let masters: Vec<String> = cluster
        .masters()
        .map(|h| h.internal_address().to_string())
        .collect();
    let mut nodes: Vec<String> = cluster
        .hosts
        .iter()
        .map(|h| h.internal_address().to_string())
        .collect();
    nodes.extend(cluster.network.node_subnets.iter().map(|n| n.to_string()));
    nodes.dedup();
    // `cluster.nodes` is for firewall sources and must be addresses or CIDRs.
    nodes.retain(|n| n.parse::<std::net::IpAddr>().is_ok() || n.parse::<ipnet::IpNet>().is_ok());

    let etcd = match (&cluster.etcd, master) {
        (Some(e), true) => Some(NodeExternalEtcd {
            endpoints: e.endpoints.clone(),
            certificate: read_relative(base, &e.certificate, "etcd.certificate")?,
            key: read_relative(base, &e.key, "etcd.key")?,
            ca_certificate: read_relative(base, &e.ca_certificate, "etcd.ca_certificate")?,
        }),
        _ => None,
    };
    let authentication = match (&cluster.authentication, master) {
        (Some(a), true) => {
            let mut a = a.clone();
            if let Some(tw) = a.token_webhook.as_mut() {
                // Inline the PEM files: a node has no access to the workstation's paths.
                let c = &mut tw.config.cluster;
                if let Some(p) = c.certificate_authority.take() {
                    c.certificate_authority = Some(read_relative(
                        base,
                        &p,
                        "token webhook certificate_authority",
                    )?);
                }
                let u = &mut tw.config.user;
                if let Some(p) = u.client_certificate.take() {
                    u.client_certificate =
                        Some(read_relative(base, &p, "token webhook client_certificate")?);
                }
                if let Some(p) = u.client_key.take() {
                    u.client_key = Some(read_relative(base, &p, "token webhook client_key")?);
                }
            }
            Some(a)
        }
        _ => None,
    };
    let s = secrets;
    let node_secrets = if master {
        Secrets {
            ca_certificate: Some(s.ca.cert_pem.clone()),
            bootstrap_token: Some(s.bootstrap_token.parse()?),
            ca_key: Some(s.ca.key_pem.clone()),
            etcd_ca_certificate: cluster.etcd.is_none().then(|| s.etcd_ca.cert_pem.clone()),
            etcd_ca_key: cluster.etcd.is_none().then(|| s.etcd_ca.key_pem.clone()),
            front_proxy_ca_certificate: Some(s.front_proxy_ca.cert_pem.clone()),
            front_proxy_ca_key: Some(s.front_proxy_ca.key_pem.clone()),
            service_account_key: Some(s.service_account.private_pem.clone()),
            service_account_public_key: Some(s.service_account.public_pem.clone()),
            weave_password: Some(s.weave_password.clone()),
        }
    } else {
        Secrets {
            ca_certificate: Some(s.ca.cert_pem.clone()),
            bootstrap_token: Some(s.bootstrap_token.parse()?),
            ..Default::default()
        }
    };
    let c = NodeConfig {
        version: NODE_CONFIG_VERSION,
        role,
        hostname: node.hostname.clone(),
        bootstrap: node.bootstrap,
        address: node.address.clone(),
        private_address: node.private_address.clone(),
        cluster: NodeCluster {
            name: cluster.name.clone(),
            api_endpoint,
            network: cluster.network.clone(),
            masters,
            nodes,
            etcd,
            authentication,
            audit: if master { cluster.audit.clone() } else { None },
            // The kubelet needs `--cloud-provider=external` on every node.
            cloud: cluster.cloud.clone(),
            // Workers need the ingress node selector for their firewall.
            addons: cluster.addons.clone(),
            taint_masters: cluster.taint_masters,
            registry_mirrors: cluster.registry_mirrors.clone(),
            components: cluster.components.clone(),
            bootstrap_token_ttl: if master {
                cluster.bootstrap_token_ttl.clone()
            } else {
                None
            },
        },
        labels: node.labels.clone(),
        taints: Vec::new(),
        files: Vec::new(),
        secrets: node_secrets,
        preflight: Default::default(),
        join: true,
    };
    // What we hand out must be what firstboot accepts.
    let text = c.to_yaml();
    let back = NodeConfig::parse("generated node config", &text)?;
    back.require_join_secrets("generated node config")?;
    Ok(back)
}

/// Render a node config in the requested format.
pub fn render(c: &NodeConfig, format: NodeConfigFormat) -> String {
    match format {
        NodeConfigFormat::Yaml => c.to_yaml(),
        NodeConfigFormat::Ignition => ignition_wrap(&c.to_yaml()),
    }
}

/// An Ignition v3.4.0 config with the node config as a 0600 file at
/// [`NODE_CONFIG_IGNITION_PATH`] (a base64 `data:` URL).
pub fn ignition_wrap(node_yaml: &str) -> String {
    let v = serde_json::json!({
        "ignition": { "version": "3.4.0" },
        "storage": {
            "files": [{
                "path": NODE_CONFIG_IGNITION_PATH,
                "mode": 0o600,
                "overwrite": true,
                "contents": { "source": format!("data:;base64,{}", B64.encode(node_yaml)) }
            }]
        }
    });
    let mut s = serde_json::to_string_pretty(&v).expect("json");
    s.push('\n');
    s
}

/// File name for a host's config: `<role>-<address>.yaml` / `.ign`.
pub fn host_file_name(h: &Host, format: NodeConfigFormat) -> String {
    let addr: String = h
        .address
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let ext = match format {
        NodeConfigFormat::Yaml => "yaml",
        NodeConfigFormat::Ignition => "ign",
    };
    format!("{}-{addr}.{ext}", h.role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        let h = Host {
            address: "fd00::1".into(),
            private_address: None,
            role: Role::Worker,
            labels: Default::default(),
            bootstrap: false,
            hostname: None,
            user: None,
            ssh_key_path: None,
            container_runtime: None,
        };
        assert_eq!(
            host_file_name(&h, NodeConfigFormat::Ignition),
            "worker-fd00__1.ign"
        );
    }
}

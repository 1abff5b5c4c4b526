//! The node config: what one node receives as user data (native YAML form).

use std::collections::BTreeMap;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    parse_yaml, read_file, Addons, Audit, Authentication, Cloud, ConfigError, Network, Role,
};

/// The only node config version this build understands.
pub const NODE_CONFIG_VERSION: u32 = 1;

/// Where a native node config travels inside an Ignition config (a `storage.files` entry).
pub const NODE_CONFIG_IGNITION_PATH: &str = "/etc/nodeimage/node.yaml";

/// File name of the node config on the NODECONFIG partition (and cidata/config-2 user data).
pub const NODE_CONFIG_FILE_NAME: &str = "node.yaml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Schema version; must be 1.
    pub version: u32,
    pub role: Role,
    /// Node name; set as the hostname. When absent, the data source's hostname is used.
    #[serde(default)]
    pub hostname: Option<String>,
    /// This master starts etcd and bootstraps cluster objects (masters only).
    #[serde(default)]
    pub bootstrap: bool,
    /// The node's own address (public); detected from the default route when absent.
    #[serde(default)]
    pub address: Option<String>,
    /// The node's address for cluster-internal traffic.
    #[serde(default)]
    pub private_address: Option<String>,
    pub cluster: NodeCluster,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
    /// Files to write on first boot.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub secrets: Secrets,
    #[serde(default)]
    pub preflight: PreflightSettings,
    /// Join the cluster (PKI, etcd, control plane, kubelet). `false` provisions only the
    /// host (preflight, firewall, hostname, files, containerd): for test images and for
    /// staging machines before they join.
    #[serde(default = "default_true")]
    pub join: bool,
}

/// The cluster facts a node needs (a projection of `cluster.yml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCluster {
    pub name: String,
    /// `host` or `host:port` of the Kubernetes API (port defaults to 6443).
    pub api_endpoint: String,
    #[serde(default)]
    pub network: Network,
    /// Internal addresses of every master (etcd peers, firewall sources).
    #[serde(default)]
    pub masters: Vec<String>,
    /// Internal addresses of every node, or subnets they live in (firewall sources).
    #[serde(default)]
    pub nodes: Vec<String>,
    #[serde(default)]
    pub etcd: Option<NodeExternalEtcd>,
    #[serde(default)]
    pub authentication: Option<Authentication>,
    #[serde(default)]
    pub audit: Option<Audit>,
    #[serde(default)]
    pub cloud: Option<Cloud>,
    #[serde(default)]
    pub addons: Addons,
    #[serde(default = "default_true")]
    pub taint_masters: bool,
    /// Registry mirrors for containerd (`registry host` -> mirror endpoints).
    #[serde(default)]
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
}

fn default_true() -> bool {
    true
}

/// External etcd with the certificate files inlined (PEM).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeExternalEtcd {
    pub endpoints: Vec<String>,
    pub certificate: String,
    pub key: String,
    pub ca_certificate: String,
}

impl std::fmt::Debug for NodeExternalEtcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeExternalEtcd")
            .field("endpoints", &self.endpoints)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    pub effect: TaintEffect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// A file the node config asks firstboot to write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path on the node.
    pub path: String,
    /// Octal mode as a string, e.g. "0644" (default "0644").
    #[serde(default)]
    pub mode: Option<String>,
    pub contents: String,
}

impl FileSpec {
    pub fn mode_bits(&self) -> Result<u32, String> {
        match &self.mode {
            None => Ok(0o644),
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|v| *v <= 0o7777)
                .ok_or_else(|| format!("expected an octal mode like \"0644\", found \"{m}\"")),
        }
    }
}

/// Join secrets. A worker's config carries only the CA certificate and the bootstrap token.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// Cluster CA certificate (PEM). Every node.
    #[serde(default)]
    pub ca_certificate: Option<String>,
    /// Bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`. Every node.
    #[serde(default)]
    pub bootstrap_token: Option<String>,
    #[serde(default)]
    pub ca_key: Option<String>,
    #[serde(default)]
    pub etcd_ca_certificate: Option<String>,
    #[serde(default)]
    pub etcd_ca_key: Option<String>,
    #[serde(default)]
    pub front_proxy_ca_certificate: Option<String>,
    #[serde(default)]
    pub front_proxy_ca_key: Option<String>,
    #[serde(default)]
    pub service_account_key: Option<String>,
    #[serde(default)]
    pub service_account_public_key: Option<String>,
    #[serde(default)]
    pub weave_password: Option<String>,
}

impl Secrets {
    /// Names of the private secrets present (for validation messages; never the values).
    pub fn private_keys_present(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (name, present) in [
            ("ca_key", self.ca_key.is_some()),
            ("etcd_ca_key", self.etcd_ca_key.is_some()),
            ("front_proxy_ca_key", self.front_proxy_ca_key.is_some()),
            ("service_account_key", self.service_account_key.is_some()),
            ("weave_password", self.weave_password.is_some()),
        ] {
            if present {
                v.push(name);
            }
        }
        v
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secret material.
        f.debug_struct("Secrets")
            .field("ca_certificate", &self.ca_certificate.is_some())
            .field(
                "bootstrap_token",
                &self.bootstrap_token.as_ref().map(|_| "<redacted>"),
            )
            .field("private", &self.private_keys_present())
            .finish()
    }
}

/// Preflight limits. The seeds ask for 2 GB memory and 40 GB disk per node; small test
/// VMs lower them explicitly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreflightSettings {
    #[serde(default = "default_min_memory_mib")]
    pub min_memory_mib: u64,
    #[serde(default = "default_min_disk_gib")]
    pub min_disk_gib: u64,
    /// Names of checks to skip, each reported as skipped.
    #[serde(default)]
    pub skip: Vec<String>,
}

impl Default for PreflightSettings {
    fn default() -> Self {
        PreflightSettings {
            min_memory_mib: default_min_memory_mib(),
            min_disk_gib: default_min_disk_gib(),
            skip: Vec::new(),
        }
    }
}

fn default_min_memory_mib() -> u64 {
    // 2 GB as in the seeds; the kernel reserves some, so accept 1800 MiB of MemTotal.
    1800
}
fn default_min_disk_gib() -> u64 {
    40
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_file(path)?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parse and validate a native node config.
    pub fn parse(source_name: &str, text: &str) -> Result<Self, ConfigError> {
        let c: NodeConfig = parse_yaml(source_name, text)?;
        c.validate(source_name)?;
        Ok(c)
    }

    pub fn to_yaml(&self) -> String {
        yaml_serde::to_string(self).expect("node config serialises")
    }

    pub fn is_bootstrap_master(&self) -> bool {
        self.role == Role::Master && self.bootstrap
    }

    pub fn validate(&self, src: &str) -> Result<(), ConfigError> {
        if self.version != NODE_CONFIG_VERSION {
            return Err(ConfigError::invalid(
                src,
                "version",
                format!("expected {NODE_CONFIG_VERSION}, found {}", self.version),
            ));
        }
        if let Some(h) = &self.hostname {
            if !valid_hostname(h) {
                return Err(ConfigError::invalid(
                    src,
                    "hostname",
                    format!("expected a DNS name of labels [a-z0-9-] (at most 63 characters each, 253 in all), found `{h}`"),
                ));
            }
        }
        if self.bootstrap && self.role != Role::Master {
            return Err(ConfigError::invalid(
                src,
                "bootstrap",
                "only a master can bootstrap",
            ));
        }
        if self.cluster.api_endpoint.is_empty() {
            return Err(ConfigError::invalid(
                src,
                "cluster.api_endpoint",
                "expected `host` or `host:port`",
            ));
        }
        if super::overlaps(
            &self.cluster.network.service_cidr,
            &self.cluster.network.pod_network_cidr,
        ) {
            return Err(ConfigError::invalid(
                src,
                "cluster.network.service_cidr",
                "overlaps cluster.network.pod_network_cidr",
            ));
        }
        self.cluster
            .network
            .node_ports()
            .map_err(|e| ConfigError::invalid(src, "cluster.network.node_port_range", e))?;
        for n in &self.cluster.nodes {
            if n.parse::<IpNet>().is_err() && n.parse::<std::net::IpAddr>().is_err() {
                return Err(ConfigError::invalid(
                    src,
                    "cluster.nodes",
                    format!("expected an IP address or CIDR, found `{n}`"),
                ));
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            if !f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
                return Err(ConfigError::invalid(
                    src,
                    format!("files[{i}].path"),
                    format!("expected an absolute path without `..`, found `{}`", f.path),
                ));
            }
            f.mode_bits()
                .map_err(|e| ConfigError::invalid(src, format!("files[{i}].mode"), e))?;
        }
        if let Some(t) = &self.secrets.bootstrap_token {
            if !valid_bootstrap_token(t) {
                return Err(ConfigError::invalid(
                    src,
                    "secrets.bootstrap_token",
                    "expected the form [a-z0-9]{6}.[a-z0-9]{16}",
                ));
            }
        }
        super::check_labels(&self.labels).map_err(|m| ConfigError::invalid(src, "labels", m))?;
        super::check_kubelet_labels(&self.labels)
            .map_err(|m| ConfigError::invalid(src, "labels", m))?;
        for (i, t) in self.taints.iter().enumerate() {
            if !super::valid_label_key(&t.key)
                || !t.value.as_deref().is_none_or(super::valid_label_value)
            {
                return Err(ConfigError::invalid(
                    src,
                    format!("taints[{i}]"),
                    format!("`{}` is not a valid taint key/value", t.key),
                ));
            }
        }
        if self.role == Role::Worker {
            if self.cluster.etcd.is_some() {
                return Err(ConfigError::invalid(
                    src,
                    "cluster.etcd",
                    "a worker must not carry the etcd client key",
                ));
            }
            let webhook_key = self
                .cluster
                .authentication
                .as_ref()
                .and_then(|a| a.token_webhook.as_ref())
                .is_some_and(|t| t.config.user.client_key.is_some());
            if webhook_key {
                return Err(ConfigError::invalid(
                    src,
                    "cluster.authentication",
                    "a worker must not carry the token webhook client key",
                ));
            }
        }
        if self.role == Role::Worker {
            let private = self.secrets.private_keys_present();
            if !private.is_empty() {
                return Err(ConfigError::invalid(
                    src,
                    "secrets",
                    format!(
                        "a worker must not carry private cluster secrets, found: {}",
                        private.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl NodeConfig {
    /// The secrets this role needs to join, checked before the first step that uses them
    /// (kept out of [`NodeConfig::validate`] so partial configs stay usable in tests and
    /// for preflight). Names the missing keys, never values.
    pub fn require_join_secrets(&self, src: &str) -> Result<(), ConfigError> {
        let s = &self.secrets;
        let mut missing = Vec::new();
        let mut need = |name: &'static str, v: &Option<String>| {
            if v.as_deref().is_none_or(|v| v.trim().is_empty()) {
                missing.push(name);
            }
        };
        need("ca_certificate", &s.ca_certificate);
        match self.role {
            Role::Worker => need("bootstrap_token", &s.bootstrap_token),
            Role::Master => {
                need("bootstrap_token", &s.bootstrap_token);
                need("ca_key", &s.ca_key);
                need("front_proxy_ca_certificate", &s.front_proxy_ca_certificate);
                need("front_proxy_ca_key", &s.front_proxy_ca_key);
                need("service_account_key", &s.service_account_key);
                need("service_account_public_key", &s.service_account_public_key);
                need("weave_password", &s.weave_password);
                if self.cluster.etcd.is_none() {
                    need("etcd_ca_certificate", &s.etcd_ca_certificate);
                    need("etcd_ca_key", &s.etcd_ca_key);
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::invalid(
                src,
                "secrets",
                format!("a {} needs: {}", self.role, missing.join(", ")),
            ))
        }
    }
}

/// RFC 1123 hostname, lower case.
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// Kubernetes bootstrap token form `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn valid_bootstrap_token(t: &str) -> bool {
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    matches!(t.split_once('.'), Some((id, secret)) if ok(id, 6) && ok(secret, 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "version: 1\nrole: worker\nhostname: node-1\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1:6443\n";

    #[test]
    fn minimal_parses() {
        let c = NodeConfig::parse("node.yaml", MINIMAL).unwrap();
        assert_eq!(c.role, Role::Worker);
        assert_eq!(c.hostname.as_deref(), Some("node-1"));
        assert_eq!(c.cluster.network.dns_domain, "cluster.local");
    }

    #[test]
    fn unknown_key_has_line_and_column() {
        let e = NodeConfig::parse("node.yaml", &format!("{MINIMAL}colour: blue\n")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("node.yaml: unknown field `colour`"), "{s}");
        assert!(s.contains("line 7 column 1"), "{s}");
    }

    #[test]
    fn worker_with_ca_key_is_refused() {
        let e = NodeConfig::parse("n", &format!("{MINIMAL}secrets:\n  ca_key: x\n")).unwrap_err();
        assert!(e.to_string().contains("ca_key"), "{e}");
    }

    #[test]
    fn bad_hostname_and_mode_are_named() {
        let e = NodeConfig::parse("n", &MINIMAL.replace("node-1", "Node_1")).unwrap_err();
        assert!(e.to_string().contains("n: hostname:"), "{e}");
        let e = NodeConfig::parse(
            "n",
            &format!("{MINIMAL}files:\n  - {{path: /etc/x, mode: \"999\", contents: a}}\n"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("files[0].mode"), "{e}");
    }

    #[test]
    fn secrets_debug_redacts() {
        let s = Secrets {
            bootstrap_token: Some("abcdef.0123456789abcdef".into()),
            ca_key: Some("KEY".into()),
            ..Default::default()
        };
        let d = format!("{s:?}");
        assert!(!d.contains("0123456789abcdef") && !d.contains("KEY"), "{d}");
    }

    #[test]
    fn token_form() {
        assert!(valid_bootstrap_token("abcdef.0123456789abcdef"));
        assert!(!valid_bootstrap_token("ABCDEF.0123456789abcdef"));
        assert!(!valid_bootstrap_token("abcdef0123456789abcdef"));
    }

    #[test]
    fn worker_must_not_carry_etcd_or_webhook_keys() {
        let e = NodeConfig::parse(
            "n",
            &MINIMAL.replace(
                "  api_endpoint: 10.0.0.1:6443\n",
                "  api_endpoint: 10.0.0.1:6443\n  etcd: {endpoints: [\"https://e:2379\"], certificate: C, key: K, ca_certificate: CA}\n",
            ),
        )
        .unwrap_err();
        assert!(e.to_string().contains("cluster.etcd"), "{e}");
    }

    #[test]
    fn join_secrets_by_role() {
        let w = NodeConfig::parse("n", MINIMAL).unwrap();
        let e = w.require_join_secrets("n").unwrap_err().to_string();
        assert!(
            e.contains("a worker needs: ca_certificate, bootstrap_token"),
            "{e}"
        );
        let ok = NodeConfig::parse(
            "n",
            &format!("{MINIMAL}secrets:\n  ca_certificate: C\n  bootstrap_token: abcdef.0123456789abcdef\n"),
        )
        .unwrap();
        ok.require_join_secrets("n").unwrap();
        let m = NodeConfig::parse("n", &MINIMAL.replace("role: worker", "role: master")).unwrap();
        let e = m.require_join_secrets("n").unwrap_err().to_string();
        assert!(
            e.contains("etcd_ca_key") && e.contains("weave_password"),
            "{e}"
        );
    }

    #[test]
    fn labels_and_taints_are_checked() {
        let e = NodeConfig::parse("n", &format!("{MINIMAL}labels:\n  \"a b\": x\n")).unwrap_err();
        assert!(e.to_string().contains("n: labels:"), "{e}");
        let e = NodeConfig::parse(
            "n",
            &format!("{MINIMAL}taints:\n  - {{key: \"a b\", effect: NoSchedule}}\n"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("taints[0]"), "{e}");
    }
}

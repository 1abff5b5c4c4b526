//! The node config: what one node receives as user data (native YAML form).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{
    parse_yaml, read_file, Addons, Audit, Authentication, BootstrapToken, Cloud, Components,
    ConfigError, FileMode, Hostname, LabelKey, Network, NodePath, Role,
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
    pub hostname: Option<Hostname>,
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
    pub labels: BTreeMap<LabelKey, String>,
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
    /// Per-component flags and configuration fields, from cluster.yml.
    #[serde(default)]
    pub components: Components,
    /// cluster.yml's `bootstrap_token_ttl` (the bootstrap master sets the token's
    /// expiration from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token_ttl: Option<String>,
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
    pub key: LabelKey,
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

/// A file the node config asks firstboot to write. Its `Debug` shows the length of the
/// contents, never the contents (a key, a kubeconfig).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path on the node.
    pub path: NodePath,
    /// Octal mode as a string, e.g. "0644" (default "0644").
    #[serde(default)]
    pub mode: Option<FileMode>,
    pub contents: String,
}

impl std::fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSpec")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .field("contents", &format_args!("<{} bytes>", self.contents.len()))
            .finish()
    }
}

impl FileSpec {
    /// The file's permission bits (0644 when the config gives none).
    pub fn mode_bits(&self) -> u32 {
        self.mode.unwrap_or(FileMode::DEFAULT).bits()
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
    pub bootstrap_token: Option<BootstrapToken>,
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

    /// [`NodeConfig::parse`] for user data: errors carry none of the document's values
    /// ([`ConfigError::redacted`]).
    pub fn parse_untrusted(source_name: &str, text: &str) -> Result<Self, ConfigError> {
        Self::parse(source_name, text).map_err(|e| e.redacted(text))
    }

    pub fn to_yaml(&self) -> String {
        yaml_serde::to_string(self).expect("node config serialises")
    }

    pub fn is_bootstrap_master(&self) -> bool {
        self.role == Role::Master && self.bootstrap
    }
}

impl NodeConfig {
    /// The secrets this role needs to join, checked before the first step that uses them
    /// (kept out of [`NodeConfig::validate`] so partial configs stay usable in tests and
    /// for preflight). Names the missing keys, never values.
    pub fn require_join_secrets(&self, src: &str) -> Result<(), ConfigError> {
        let s = &self.secrets;
        let mut missing = Vec::new();
        let mut need = |name: &'static str, v: Option<&str>| {
            if v.is_none_or(|v| v.trim().is_empty()) {
                missing.push(name);
            }
        };
        need("ca_certificate", s.ca_certificate.as_deref());
        match self.role {
            Role::Worker => need(
                "bootstrap_token",
                s.bootstrap_token.as_ref().map(BootstrapToken::as_str),
            ),
            Role::Master => {
                need(
                    "bootstrap_token",
                    s.bootstrap_token.as_ref().map(BootstrapToken::as_str),
                );
                need("ca_key", s.ca_key.as_deref());
                need(
                    "front_proxy_ca_certificate",
                    s.front_proxy_ca_certificate.as_deref(),
                );
                need("front_proxy_ca_key", s.front_proxy_ca_key.as_deref());
                need("service_account_key", s.service_account_key.as_deref());
                need(
                    "service_account_public_key",
                    s.service_account_public_key.as_deref(),
                );
                need("weave_password", s.weave_password.as_deref());
                if self.cluster.etcd.is_none() {
                    need("etcd_ca_certificate", s.etcd_ca_certificate.as_deref());
                    need("etcd_ca_key", s.etcd_ca_key.as_deref());
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

/// RFC 1123 hostname, lower case (what [`Hostname`] accepts).
pub fn valid_hostname(h: &str) -> bool {
    Hostname::try_from(h).is_ok()
}

/// Kubernetes bootstrap token form `[a-z0-9]{6}.[a-z0-9]{16}` (what [`BootstrapToken`]
/// accepts).
pub fn valid_bootstrap_token(t: &str) -> bool {
    BootstrapToken::try_from(t).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterConfig;

    const MINIMAL: &str = "version: 1\nrole: worker\nhostname: node-1\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1:6443\n";

    /// Why `text` is refused as node config `n`.
    fn refused(text: &str) -> ConfigError {
        NodeConfig::parse("n", text).unwrap_err()
    }

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
        let e = refused(&format!("{MINIMAL}secrets:\n  ca_key: x\n"));
        assert!(e.to_string().contains("ca_key"), "{e}");
    }

    #[test]
    fn bad_hostname_and_mode_are_named() {
        let e = refused(&MINIMAL.replace("node-1", "Node_1"));
        assert!(e.to_string().contains("n: hostname:"), "{e}");
        let e = refused(&format!(
            "{MINIMAL}files:\n  - {{path: /etc/x, mode: \"999\", contents: a}}\n"
        ));
        assert!(e.to_string().contains("files[0].mode"), "{e}");
    }

    #[test]
    fn secrets_debug_redacts() {
        let s = Secrets {
            bootstrap_token: Some("abcdef.0123456789abcdef".parse().unwrap()),
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
        let e = refused(&MINIMAL.replace(
                "  api_endpoint: 10.0.0.1:6443\n",
                "  api_endpoint: 10.0.0.1:6443\n  etcd: {endpoints: [\"https://e:2379\"], certificate: C, key: K, ca_certificate: CA}\n",
            ));
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
        test_support::assert_contains(&e, &["etcd_ca_key", "weave_password"]);
    }

    #[test]
    fn labels_and_taints_are_checked() {
        let e = refused(&format!("{MINIMAL}labels:\n  \"a b\": x\n"));
        assert!(e.to_string().contains("n: labels:"), "{e}");
        let e = refused(&format!(
            "{MINIMAL}taints:\n  - {{key: \"a b\", effect: NoSchedule}}\n"
        ));
        assert!(e.to_string().contains("taints[0]"), "{e}");
    }

    /// cluster.yml's keys that a node config repeats (`NodeCluster` cannot flatten
    /// `ClusterConfig`'s fields: serde's flatten does not work with
    /// deny_unknown_fields) read the same on both sides. The destructuring patterns make
    /// a new field on either struct a compile error here until it is covered.
    #[test]
    fn cluster_config_round_trips_into_node_cluster() {
        let c = ClusterConfig::parse(
            "c.yml",
            r#"
name: demo
api_endpoint: lb.example.com:6443
hosts:
  - {address: 10.0.0.1, role: master}
network:
  service_cidr: 10.100.0.0/16
  pod_network_cidr: 10.200.0.0/16
  trusted_subnets: [10.0.0.0/8]
  dns_domain: example.local
  node_port_range: 30000-31000
  node_subnets: [10.1.0.0/16]
etcd:
  endpoints: ["https://etcd-1.example.com:2379"]
  certificate: client.pem
  key: client-key.pem
  ca_certificate: ca.pem
authentication:
  token_webhook:
    config:
      cluster: {name: reviewer, server: "https://tokens.example.com/token", certificate_authority: ca.pem}
      user: {name: kube-apiserver, client_key: key.pem, client_certificate: cert.pem}
    cache_ttl: 5m
audit:
  server: https://audit.example.com/webhook
cloud:
  provider: aws
addons:
  ingress-nginx:
    enabled: true
    node_selector: {disk: ssd}
    configmap: {load-balance: least_conn}
    default_backend: {image: "backend:1"}
  cert-manager:
    enabled: true
    issuer: {name: le, server: "https://acme.example/dir", email: me@example.com}
  kured: {enabled: true}
  kubernetes-dashboard: {enabled: true}
  host-upgrades: {enabled: true, interval: 7d, url: "https://updates.example/{arch}.bundle"}
taint_masters: false
registry_mirrors:
  registry.k8s.io: ["http://10.0.0.5:5000"]
components:
  kube-apiserver: {extra_args: {etcd-healthcheck-timeout: 30s}}
  kubelet: {config: {nodeLeaseDurationSeconds: 120}}
bootstrap_token_ttl: 2h
"#,
        )
        .unwrap();
        let ClusterConfig {
            name,
            api_endpoint,
            hosts: _,
            network,
            etcd,
            authentication,
            audit,
            cloud,
            addons,
            taint_masters,
            registry_mirrors,
            components,
            bootstrap_token_ttl,
        } = c.clone();
        // Every shared field differs from its default, so a dropped one shows.
        assert_ne!(network, Network::default());
        assert!(!taint_masters && addons.host_upgrades.is_some());

        let mut m = match yaml_serde::to_value(&c).unwrap() {
            yaml_serde::Value::Mapping(m) => m,
            other => panic!("{other:?}"),
        };
        m.remove("hosts").expect("hosts is cluster.yml's own");
        // deny_unknown_fields: a cluster.yml key NodeCluster lacks fails here.
        let n: NodeCluster = yaml_serde::from_value(yaml_serde::Value::Mapping(m)).unwrap();
        let again: NodeCluster = yaml_serde::from_str(&yaml_serde::to_string(&n).unwrap()).unwrap();
        assert_eq!(again, n);
        let NodeCluster {
            name: n_name,
            api_endpoint: n_api_endpoint,
            network: n_network,
            masters,
            nodes,
            etcd: n_etcd,
            authentication: n_authentication,
            audit: n_audit,
            cloud: n_cloud,
            addons: n_addons,
            taint_masters: n_taint_masters,
            registry_mirrors: n_registry_mirrors,
            components: n_components,
            bootstrap_token_ttl: n_bootstrap_token_ttl,
        } = n;
        assert_eq!(n_name, name);
        assert_eq!(Some(n_api_endpoint), api_endpoint);
        assert_eq!(n_network, network);
        let (e, ne) = (etcd.unwrap(), n_etcd.unwrap());
        assert_eq!(
            (ne.endpoints, ne.certificate, ne.key, ne.ca_certificate),
            (e.endpoints, e.certificate, e.key, e.ca_certificate)
        );
        assert_eq!(n_authentication, authentication);
        assert_eq!(n_audit, audit);
        assert_eq!(n_cloud, cloud);
        assert_eq!(n_addons, addons);
        assert_eq!(n_taint_masters, taint_masters);
        assert!(!registry_mirrors.is_empty() && components != Components::default());
        assert_eq!(n_registry_mirrors, registry_mirrors);
        assert_eq!(n_components, components);
        assert_eq!(n_bootstrap_token_ttl, bootstrap_token_ttl);
        assert_eq!(bootstrap_token_ttl.as_deref(), Some("2h"));
        // The node config's own fields (from hosts and the workstation) keep defaults.
        assert!(masters.is_empty() && nodes.is_empty());
    }
}

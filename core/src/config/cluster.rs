//! `cluster.yml`: the cluster as the operator describes it (Pharos Cluster's keys and defaults).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{parse_yaml, read_file, ConfigError, Hostname, LabelKey};

/// The role a node plays. Tectonic's `infra` role may come later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "master" => Ok(Role::Master),
            "worker" => Ok(Role::Worker),
            other => Err(format!("expected `master` or `worker`, found `{other}`")),
        }
    }
}

/// The whole `cluster.yml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster name; used in certificate names and kubeconfig contexts.
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// API endpoint: a load-balancer name, Tectonic's `<cluster>-k8s.<subdomain>`,
    /// or a master address. Defaults to the first master's address.
    #[serde(default)]
    pub api_endpoint: Option<String>,
    /// Hosts, optional when they come from Terraform output (`--hosts-from-tf`).
    #[serde(default)]
    pub hosts: Vec<Host>,
    #[serde(default)]
    pub network: Network,
    /// External etcd; when absent, etcd is stacked on the masters.
    #[serde(default)]
    pub etcd: Option<ExternalEtcd>,
    #[serde(default)]
    pub authentication: Option<Authentication>,
    #[serde(default)]
    pub audit: Option<Audit>,
    #[serde(default)]
    pub cloud: Option<Cloud>,
    #[serde(default)]
    pub addons: Addons,
    /// Taint masters so that ordinary workloads stay off them (default true). The taint is
    /// `node-role.kubernetes.io/control-plane:NoSchedule`, the key current Kubernetes
    /// releases and addons tolerate (the older `.../master` key is no longer used).
    #[serde(default = "default_true")]
    pub taint_masters: bool,
    /// Registry mirrors for containerd on every node: `registry host` → mirror endpoints,
    /// tried in order before the registry itself (air-gapped sites, pull-through caches).
    #[serde(default)]
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
    /// Per-component settings beyond the product's (see [`Components`]).
    #[serde(default)]
    pub components: Components,
    /// How long the bootstrap token (the join secret in every worker's user data) is
    /// valid after the bootstrap master creates it: a Go duration, default
    /// [`DEFAULT_BOOTSTRAP_TOKEN_TTL`]; `0` never expires. Workers booting later need a
    /// config with a new token: `nodeimage cluster token`, then `nodeimage node-config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token_ttl: Option<String>,
}

/// kubeadm's default token lifetime.
pub const DEFAULT_BOOTSTRAP_TOKEN_TTL: &str = "24h";

/// Settings of the cluster's components the product does not choose itself, kubeadm's
/// `extraArgs` in spirit: flags added to (or replacing) the ones firstboot renders, and
/// top-level fields merged into the kubelet's and kube-proxy's configuration files.
/// Operator input like the rest of cluster.yml: nothing here is checked against the
/// components' own flag lists, so a wrong name shows when the component starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Components {
    #[serde(default, skip_serializing_if = "Component::is_empty")]
    pub kube_apiserver: Component,
    #[serde(default, skip_serializing_if = "Component::is_empty")]
    pub kube_controller_manager: Component,
    #[serde(default, skip_serializing_if = "Component::is_empty")]
    pub kube_scheduler: Component,
    #[serde(default, skip_serializing_if = "Component::is_empty")]
    pub kubelet: Component,
    #[serde(default, skip_serializing_if = "Component::is_empty")]
    pub kube_proxy: Component,
    /// etcd's flags become `ETCD_<NAME>` variables in its environment file.
    #[serde(default, skip_serializing_if = "Component::is_empty")]
    pub etcd: Component,
}

/// One component's additions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// `flag-name: value` (without the leading `--`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_args: BTreeMap<String, String>,
    /// Top-level fields of the component's configuration file (kubelet:
    /// KubeletConfiguration, kube-proxy: KubeProxyConfiguration), replacing the product's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, serde_json::Value>,
}

impl Component {
    pub fn is_empty(&self) -> bool {
        self.extra_args.is_empty() && self.config.is_empty()
    }
}

fn default_cluster_name() -> String {
    "kubernetes".to_string()
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// IP address or hostname.
    pub address: String,
    /// Preferred for cluster-internal traffic where possible.
    #[serde(default)]
    pub private_address: Option<String>,
    pub role: Role,
    #[serde(default)]
    pub labels: BTreeMap<LabelKey, String>,
    /// This master starts the etcd cluster and bootstraps the cluster objects.
    #[serde(default)]
    pub bootstrap: bool,
    /// Node name; defaults to a name derived from the address.
    #[serde(default)]
    pub hostname: Option<Hostname>,
    /// Accepted for compatibility with Pharos' cluster.yml; images are not reached over SSH.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub ssh_key_path: Option<String>,
    /// Only `containerd` is baked into the image; Pharos' `docker`/`cri-o` are refused.
    #[serde(default)]
    pub container_runtime: Option<String>,
}

impl Host {
    /// The address used for cluster-internal traffic.
    pub fn internal_address(&self) -> &str {
        self.private_address.as_deref().unwrap_or(&self.address)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The pod network (CNI): Weave Net (the default) or flannel (VXLAN).
    #[serde(default)]
    pub provider: CniProvider,
    #[serde(default = "default_service_cidr")]
    pub service_cidr: IpNet,
    #[serde(default = "default_pod_network_cidr")]
    pub pod_network_cidr: IpNet,
    /// Subnets where Weave may use unencrypted fastdp (UDP 6784).
    #[serde(default)]
    pub trusted_subnets: Vec<IpNet>,
    #[serde(default = "default_dns_domain")]
    pub dns_domain: String,
    /// NodePort range (Kubernetes default 30000-32767).
    #[serde(default = "default_node_port_range")]
    pub node_port_range: String,
    /// Extra source ranges treated as cluster nodes by the firewall (besides the hosts).
    #[serde(default)]
    pub node_subnets: Vec<IpNet>,
    /// Open etcd 2379/2380 only on localhost instead of masters-only with TLS
    /// (the stricter reading of the Pharos seed). Only valid with a single master.
    #[serde(default)]
    pub etcd_localhost_only: bool,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            provider: CniProvider::default(),
            service_cidr: default_service_cidr(),
            pod_network_cidr: default_pod_network_cidr(),
            trusted_subnets: Vec::new(),
            dns_domain: default_dns_domain(),
            node_port_range: default_node_port_range(),
            node_subnets: Vec::new(),
            etcd_localhost_only: false,
        }
    }
}

/// The pod network a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CniProvider {
    /// Weave Net: an encrypted overlay (its password from the cluster secrets; plain
    /// fastdp only inside `trusted_subnets`), weave-npc for NetworkPolicy.
    #[default]
    Weave,
    /// flannel with its VXLAN backend (UDP 8472 between cluster nodes). VXLAN is not
    /// encrypted: for networks the cluster trusts. No NetworkPolicy enforcement.
    Flannel,
}

impl CniProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            CniProvider::Weave => "weave",
            CniProvider::Flannel => "flannel",
        }
    }
}

fn default_service_cidr() -> IpNet {
    "10.96.0.0/12".parse().unwrap()
}
fn default_pod_network_cidr() -> IpNet {
    "10.32.0.0/12".parse().unwrap()
}
fn default_dns_domain() -> String {
    "cluster.local".to_string()
}
fn default_node_port_range() -> String {
    "30000-32767".to_string()
}

impl Network {
    /// The node port range as (first, last).
    pub fn node_ports(&self) -> Result<(u16, u16), String> {
        let (a, b) = self
            .node_port_range
            .split_once('-')
            .ok_or_else(|| format!("expected `FIRST-LAST`, found `{}`", self.node_port_range))?;
        let a: u16 = a.trim().parse().map_err(|_| format!("bad port `{a}`"))?;
        let b: u16 = b.trim().parse().map_err(|_| format!("bad port `{b}`"))?;
        if a == 0 || a > b {
            return Err(format!("expected 1 <= FIRST <= LAST, found {a}-{b}"));
        }
        Ok((a, b))
    }

    /// First usable address of the service CIDR: the `kubernetes` service's ClusterIP.
    pub fn kubernetes_service_ip(&self) -> IpAddr {
        nth_host(&self.service_cidr, 1)
    }

    /// The cluster DNS service IP (the tenth address, as kubeadm does).
    pub fn dns_service_ip(&self) -> IpAddr {
        nth_host(&self.service_cidr, 10)
    }
}

fn nth_host(net: &IpNet, n: u32) -> IpAddr {
    match net.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + n).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + n as u128).into()),
    }
}

/// External etcd. File paths are relative to cluster.yml; `nodeimage` inlines their
/// contents into the master node configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalEtcd {
    pub endpoints: Vec<String>,
    pub certificate: String,
    pub key: String,
    pub ca_certificate: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authentication {
    #[serde(default)]
    pub token_webhook: Option<TokenWebhook>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenWebhook {
    pub config: WebhookKubeconfig,
    /// Go duration, e.g. `5m` (kube-apiserver default 2m).
    #[serde(default)]
    pub cache_ttl: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookKubeconfig {
    pub cluster: WebhookCluster,
    pub user: WebhookUser,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookCluster {
    pub name: String,
    pub server: String,
    #[serde(default)]
    pub certificate_authority: Option<String>,
}

/// The webhook's client identity; `Debug` never shows the key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookUser {
    pub name: String,
    #[serde(default)]
    pub client_key: Option<String>,
    #[serde(default)]
    pub client_certificate: Option<String>,
}

impl std::fmt::Debug for WebhookUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookUser")
            .field("name", &self.name)
            .field(
                "client_key",
                &self.client_key.as_ref().map(|_| "<redacted>"),
            )
            .field("client_certificate", &self.client_certificate.is_some())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    pub server: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cloud {
    pub provider: String,
}

/// The addons of Pharos Cluster. Unknown addon names are errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Addons {
    #[serde(default, rename = "ingress-nginx")]
    pub ingress_nginx: Option<IngressNginx>,
    #[serde(default, rename = "cert-manager")]
    pub cert_manager: Option<CertManager>,
    #[serde(default)]
    pub kured: Option<Toggle>,
    #[serde(default, rename = "kubernetes-dashboard")]
    pub kubernetes_dashboard: Option<Toggle>,
    /// Image updates on every node: the signed bundle at `url`, checked every `interval`.
    #[serde(default, rename = "host-upgrades")]
    pub host_upgrades: Option<HostUpgrades>,
}

impl Addons {
    pub fn ingress_enabled(&self) -> bool {
        self.ingress_nginx.as_ref().is_some_and(|i| i.enabled)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toggle {
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressNginx {
    #[serde(default)]
    pub enabled: bool,
    /// Deploy ingress only to nodes with these labels (and open 80/443 only there).
    #[serde(default)]
    pub node_selector: BTreeMap<LabelKey, String>,
    #[serde(default)]
    pub configmap: BTreeMap<String, String>,
    #[serde(default)]
    pub default_backend: Option<DefaultBackend>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultBackend {
    #[serde(default)]
    pub image: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertManager {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub issuer: Option<Issuer>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    pub name: String,
    pub server: String,
    pub email: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostUpgrades {
    #[serde(default)]
    pub enabled: bool,
    /// How often a node checks for an update (`7d`, `12h`, a Go duration) [default 7d].
    #[serde(default)]
    pub interval: Option<String>,
    /// The update bundle's URL (`nodeimage build --sign-key`); `{arch}` becomes the
    /// node's architecture (`x86_64`, `aarch64`). Needed when enabled.
    #[serde(default)]
    pub url: Option<String>,
}

impl ClusterConfig {
    /// Read and validate `cluster.yml`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_file(path)?;
        Self::parse(&path.display().to_string(), &text)
    }

    pub fn parse(source_name: &str, text: &str) -> Result<Self, ConfigError> {
        let c: ClusterConfig = parse_yaml(source_name, text)?;
        c.validate(source_name)?;
        Ok(c)
    }

    pub fn masters(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.role == Role::Master)
    }

    /// The bootstrap master: the one marked `bootstrap: true`, else the first master.
    pub fn bootstrap_master(&self) -> Option<&Host> {
        self.hosts
            .iter()
            .find(|h| h.bootstrap)
            .or_else(|| self.masters().next())
    }

    /// The API endpoint: explicit, else the first master's address.
    pub fn resolved_api_endpoint(&self) -> Option<String> {
        self.api_endpoint
            .clone()
            .or_else(|| self.masters().next().map(|h| h.address.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        kubelet_may_set_label, valid_endpoint, valid_go_duration, valid_label_key,
        valid_label_value,
    };

    #[test]
    fn pharos_example_parses_with_defaults() {
        let c = ClusterConfig::parse(
            "cluster.yml",
            r#"
hosts:
  - address: "1.1.1.1"
    private_address: "1.0.1.0"
    user: root
    ssh_key_path: ~/.ssh/my_key
    role: master
  - address: "2.2.2.2"
    role: worker
    labels:
      key: value
network:
  trusted_subnets:
    - "172.31.0.0/16"
addons:
  ingress-nginx:
    enabled: true
    configmap:
      load-balance: least_conn
  host-upgrades:
    enabled: true
    interval: 7d
    url: "https://updates.example/k8s-{arch}.bundle"
  kured:
    enabled: true
"#,
        )
        .unwrap();
        assert_eq!(c.network.service_cidr.to_string(), "10.96.0.0/12");
        assert_eq!(c.network.pod_network_cidr.to_string(), "10.32.0.0/12");
        assert_eq!(c.network.kubernetes_service_ip().to_string(), "10.96.0.1");
        assert_eq!(c.network.dns_service_ip().to_string(), "10.96.0.10");
        assert_eq!(c.bootstrap_master().unwrap().address, "1.1.1.1");
        assert_eq!(c.resolved_api_endpoint().as_deref(), Some("1.1.1.1"));
        assert!(c.addons.ingress_enabled());
    }

    #[test]
    fn unknown_addon_names_line() {
        let e =
            ClusterConfig::parse("c.yml", "addons:\n  traefik:\n    enabled: true\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("c.yml: "), "{s}");
        assert!(s.contains("unknown field `traefik`"), "{s}");
        assert!(s.contains("line 2"), "{s}");
    }

    #[test]
    fn overlapping_cidrs_are_refused() {
        let e =
            ClusterConfig::parse("c.yml", "network:\n  service_cidr: 10.32.0.0/16\n").unwrap_err();
        assert!(e.to_string().contains("network.service_cidr"), "{e}");
    }

    #[test]
    fn worker_bootstrap_and_two_bootstraps_are_refused() {
        let e = ClusterConfig::parse(
            "c.yml",
            "hosts:\n  - {address: a, role: worker, bootstrap: true}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("hosts[0].bootstrap"), "{e}");
        let e = ClusterConfig::parse(
            "c.yml",
            "hosts:\n  - {address: a, role: master, bootstrap: true}\n  - {address: b, role: master, bootstrap: true}\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("more than one bootstrap master"),
            "{e}"
        );
    }

    fn err(yaml: &str) -> String {
        ClusterConfig::parse("c.yml", yaml).unwrap_err().to_string()
    }

    #[test]
    fn refined_checks_name_the_key() {
        let m = "hosts:\n  - {address: 10.0.0.1, role: master}\n";
        assert!(err(&format!("{m}api_endpoint: https://x\n")).contains("c.yml: api_endpoint:"));
        assert!(
            ClusterConfig::parse("c", &format!("{m}api_endpoint: lb.example.com:6443\n")).is_ok()
        );
        assert!(
            ClusterConfig::parse("c", &format!("{m}api_endpoint: \"[fd00::1]:6443\"\n")).is_ok()
        );
        assert!(err("hosts:\n  - {address: 10.0.0.1, role: worker}\n")
            .contains("c.yml: hosts: expected at least one host with `role: master`"));
        assert!(
            err("hosts:\n  - {address: 10.0.0.1, role: master, labels: {\"bad key!\": x}}\n")
                .contains("hosts[0].labels")
        );
        assert!(
            err("hosts:\n  - {address: 10.0.0.1, role: master, hostname: Bad_Name}\n")
                .contains("hosts[0].hostname")
        );
        assert!(err(&format!("{m}etcd:\n  endpoints: [\"etcd-1:2379\"]\n  certificate: c.pem\n  key: k.pem\n  ca_certificate: ca.pem\n")).contains("etcd.endpoints[0]"));
        assert!(err(&format!("{m}authentication:\n  token_webhook:\n    config:\n      cluster: {{name: t, server: \"http://localhost:9292/token\"}}\n      user: {{name: kube-apiserver}}\n    cache_ttl: 5 minutes\n")).contains("cache_ttl"));
        assert!(err(&format!("{m}audit:\n  server: audit.example.com\n")).contains("audit.server"));
        assert!(
            err(&format!("{m}addons:\n  cert-manager:\n    enabled: true\n"))
                .contains("addons.cert-manager.issuer")
        );
        assert!(err(&format!("{m}addons:\n  cert-manager:\n    enabled: true\n    issuer: {{name: le, server: \"https://acme.example/dir\", email: nobody}}\n")).contains("issuer.email"));
        assert!(err(&format!(
            "{m}addons:\n  host-upgrades:\n    enabled: true\n    interval: weekly\n    url: \"https://u.example/b\"\n"
        ))
        .contains("interval"));
        assert!(
            err(&format!("{m}network:\n  dns_domain: \"Cluster Local\"\n"))
                .contains("network.dns_domain")
        );
    }

    #[test]
    fn pharos_readme_sections_parse() {
        let c = ClusterConfig::parse(
            "c.yml",
            r#"
hosts:
  - {address: 10.0.0.1, role: master}
etcd:
  endpoints:
    - https://etcd-1.example.com:2379
  certificate: ./etcd_certs/client.pem
  key: ./etcd_certs/client-key.pem
  ca_certificate: ./etcd_certs/ca.pem
authentication:
  token_webhook:
    config:
      cluster:
        name: token-reviewer
        server: http://localhost:9292/token
        certificate_authority: /path/to/ca.pem
      user:
        name: kube-apiserver
        client_key: /path/to/key.pem
        client_certificate: /path/to/cert.pem
    cache_ttl: 5m
audit:
  server: "http://audit.example.com/webhook"
cloud:
  provider: aws
addons:
  ingress-nginx:
    enabled: true
    node_selector:
      disk: ssd
    configmap:
      load-balance: least_conn
    default_backend:
      image: my-custom-image:latest
  cert-manager:
    enabled: true
    issuer:
      name: letsencrypt-staging
      server: https://acme-staging.api.letsencrypt.org/directory
      email: me@domain.com
  kubernetes-dashboard:
    enabled: true
"#,
        )
        .unwrap();
        assert_eq!(c.etcd.unwrap().endpoints.len(), 1);
    }

    #[test]
    fn restricted_labels() {
        assert!(kubelet_may_set_label("disk") && kubelet_may_set_label("example.com/x"));
        assert!(
            kubelet_may_set_label("topology.kubernetes.io/zone")
                && kubelet_may_set_label("node.kubernetes.io/pool")
        );
        assert!(!kubelet_may_set_label("node-role.kubernetes.io/master"));
        assert!(!kubelet_may_set_label("node-restriction.kubernetes.io/x"));
        assert!(!kubelet_may_set_label("foo.k8s.io/x"));
        let e = err("hosts:\n  - {address: a, role: master, labels: {node-role.kubernetes.io/infra: \"\"}}\n");
        test_support::assert_contains(&e, &["hosts[0].labels", "NodeRestriction"]);
    }

    #[test]
    fn helpers() {
        assert!(
            valid_go_duration("1h30m") && valid_go_duration("300ms") && valid_go_duration("1.5h")
        );
        assert!(!valid_go_duration("5") && !valid_go_duration("m") && !valid_go_duration("5 m"));
        use std::time::Duration;
        let d = crate::config::validate::go_duration;
        assert_eq!(d("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(d("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(d("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(d("0"), Some(Duration::ZERO));
        assert_eq!(d("24h"), Some(Duration::from_secs(86400)));
        assert_eq!(d("5"), None);
        assert_eq!(d("-1h"), None);
        assert_eq!(d("9999999h"), None, "beyond an int64 of nanoseconds");
        assert!(valid_label_key("node-role.kubernetes.io/master") && valid_label_key("disk"));
        assert!(!valid_label_key("/x") && !valid_label_key("a/b/c") && !valid_label_key("-x"));
        assert!(valid_label_value("") && valid_label_value("ssd") && !valid_label_value("a b"));
        assert!(
            valid_endpoint("10.0.0.1:6443")
                && valid_endpoint("fd00::1")
                && !valid_endpoint("host:0")
        );
    }
}

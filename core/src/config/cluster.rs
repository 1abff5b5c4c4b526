//! `cluster.yml`: the cluster as the operator describes it (Pharos Cluster's keys and defaults).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{parse_yaml, read_file, ConfigError};

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
    pub labels: BTreeMap<String, String>,
    /// This master starts the etcd cluster and bootstraps the cluster objects.
    #[serde(default)]
    pub bootstrap: bool,
    /// Node name; defaults to a name derived from the address.
    #[serde(default)]
    pub hostname: Option<String>,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookUser {
    pub name: String,
    #[serde(default)]
    pub client_key: Option<String>,
    #[serde(default)]
    pub client_certificate: Option<String>,
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
    /// Accepted and reported as not supported yet (immutable images upgrade by reimaging).
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
    pub node_selector: BTreeMap<String, String>,
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
    #[serde(default)]
    pub interval: Option<String>,
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

    /// Checks that serde cannot express. Each error names the key.
    pub fn validate(&self, src: &str) -> Result<(), ConfigError> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(ConfigError::invalid(
                src,
                "name",
                format!("expected a DNS label ([a-z0-9-]+), found `{}`", self.name),
            ));
        }
        let n = &self.network;
        if overlaps(&n.service_cidr, &n.pod_network_cidr) {
            return Err(ConfigError::invalid(
                src,
                "network.service_cidr",
                format!(
                    "{} overlaps network.pod_network_cidr {}",
                    n.service_cidr, n.pod_network_cidr
                ),
            ));
        }
        n.node_ports()
            .map_err(|e| ConfigError::invalid(src, "network.node_port_range", e))?;
        let bootstraps: Vec<_> = self.hosts.iter().filter(|h| h.bootstrap).collect();
        for (i, h) in self.hosts.iter().enumerate() {
            if h.bootstrap && h.role != Role::Master {
                return Err(ConfigError::invalid(
                    src,
                    format!("hosts[{i}].bootstrap"),
                    format!(
                        "host {} is a worker; only a master can bootstrap",
                        h.address
                    ),
                ));
            }
            if let Some(rt) = &h.container_runtime {
                if rt != "containerd" {
                    return Err(ConfigError::invalid(
                        src,
                        format!("hosts[{i}].container_runtime"),
                        format!("the image bakes containerd; `{rt}` is not available"),
                    ));
                }
            }
            if self.hosts[..i].iter().any(|o| o.address == h.address) {
                return Err(ConfigError::invalid(
                    src,
                    format!("hosts[{i}].address"),
                    format!("{} is listed twice", h.address),
                ));
            }
        }
        if bootstraps.len() > 1 {
            return Err(ConfigError::invalid(
                src,
                "hosts[].bootstrap",
                format!(
                    "more than one bootstrap master: {}",
                    bootstraps
                        .iter()
                        .map(|h| h.address.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if n.etcd_localhost_only && self.masters().count() > 1 {
            return Err(ConfigError::invalid(
                src,
                "network.etcd_localhost_only",
                "localhost-only etcd cannot serve more than one master",
            ));
        }
        if let Some(e) = &self.etcd {
            if e.endpoints.is_empty() {
                return Err(ConfigError::invalid(
                    src,
                    "etcd.endpoints",
                    "expected at least one endpoint",
                ));
            }
        }
        self.validate_refined(src)
    }

    /// The checks added on top of the schema's first cut: endpoint, hosts, labels, URLs,
    /// durations, addon settings.
    fn validate_refined(&self, src: &str) -> Result<(), ConfigError> {
        let bad = |field: String, msg: String| Err(ConfigError::invalid(src, field, msg));
        if let Some(ep) = &self.api_endpoint {
            if !valid_endpoint(ep) {
                return bad(
                    "api_endpoint".into(),
                    format!("expected `host` or `host:port` (port 1-65535), found `{ep}`"),
                );
            }
        }
        if !super::valid_hostname(&self.network.dns_domain) {
            return bad(
                "network.dns_domain".into(),
                format!("expected a DNS name, found `{}`", self.network.dns_domain),
            );
        }
        if !self.hosts.is_empty() && self.masters().next().is_none() {
            return bad(
                "hosts".into(),
                "expected at least one host with `role: master`".into(),
            );
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if h.address.trim().is_empty() || h.address.contains(char::is_whitespace) {
                return bad(
                    format!("hosts[{i}].address"),
                    format!("expected an IP address or hostname, found `{}`", h.address),
                );
            }
            if let Some(p) = &h.private_address {
                if p.trim().is_empty() || p.contains(char::is_whitespace) {
                    return bad(
                        format!("hosts[{i}].private_address"),
                        format!("expected an IP address or hostname, found `{p}`"),
                    );
                }
            }
            if let Some(n) = &h.hostname {
                if !super::valid_hostname(n) {
                    return bad(
                        format!("hosts[{i}].hostname"),
                        format!("expected a lower-case DNS name, found `{n}`"),
                    );
                }
            }
            check_labels(&h.labels)
                .map_err(|m| ConfigError::invalid(src, format!("hosts[{i}].labels"), m))?;
            check_kubelet_labels(&h.labels)
                .map_err(|m| ConfigError::invalid(src, format!("hosts[{i}].labels"), m))?;
        }
        if let Some(e) = &self.etcd {
            for (i, ep) in e.endpoints.iter().enumerate() {
                check_url(ep, &["https", "http"])
                    .map_err(|m| ConfigError::invalid(src, format!("etcd.endpoints[{i}]"), m))?;
            }
            for (k, v) in [
                ("certificate", &e.certificate),
                ("key", &e.key),
                ("ca_certificate", &e.ca_certificate),
            ] {
                if v.trim().is_empty() {
                    return bad(
                        format!("etcd.{k}"),
                        "expected a file path relative to cluster.yml".into(),
                    );
                }
            }
            if self.network.etcd_localhost_only {
                return bad(
                    "network.etcd_localhost_only".into(),
                    "has no meaning with external etcd (`etcd:`)".into(),
                );
            }
        }
        if let Some(tw) = self
            .authentication
            .as_ref()
            .and_then(|a| a.token_webhook.as_ref())
        {
            check_url(&tw.config.cluster.server, &["https", "http"]).map_err(|m| {
                ConfigError::invalid(src, "authentication.token_webhook.config.cluster.server", m)
            })?;
            if let Some(ttl) = &tw.cache_ttl {
                if !valid_go_duration(ttl) {
                    return bad(
                        "authentication.token_webhook.cache_ttl".into(),
                        format!("expected a duration like `5m` or `1h30m`, found `{ttl}`"),
                    );
                }
            }
            let u = &tw.config.user;
            if u.client_key.is_some() != u.client_certificate.is_some() {
                return bad(
                    "authentication.token_webhook.config.user".into(),
                    "client_key and client_certificate go together".into(),
                );
            }
        }
        if let Some(a) = &self.audit {
            check_url(&a.server, &["https", "http"])
                .map_err(|m| ConfigError::invalid(src, "audit.server", m))?;
        }
        if let Some(c) = &self.cloud {
            if c.provider.trim().is_empty() {
                return bad("cloud.provider".into(), "expected a provider name".into());
            }
        }
        if let Some(i) = &self.addons.ingress_nginx {
            check_labels(&i.node_selector)
                .map_err(|m| ConfigError::invalid(src, "addons.ingress-nginx.node_selector", m))?;
        }
        if let Some(cm) = &self.addons.cert_manager {
            match &cm.issuer {
                None if cm.enabled => {
                    return bad(
                        "addons.cert-manager.issuer".into(),
                        "expected `name`, `server` and `email`".into(),
                    )
                }
                Some(is) => {
                    if !super::valid_hostname(&is.name) {
                        return bad(
                            "addons.cert-manager.issuer.name".into(),
                            format!("expected a DNS name, found `{}`", is.name),
                        );
                    }
                    check_url(&is.server, &["https", "http"]).map_err(|m| {
                        ConfigError::invalid(src, "addons.cert-manager.issuer.server", m)
                    })?;
                    let ok = is
                        .email
                        .split_once('@')
                        .is_some_and(|(a, d)| !a.is_empty() && d.contains('.'));
                    if !ok {
                        return bad(
                            "addons.cert-manager.issuer.email".into(),
                            format!("expected an email address, found `{}`", is.email),
                        );
                    }
                }
                None => {}
            }
        }
        if let Some(hu) = &self.addons.host_upgrades {
            if let Some(iv) = &hu.interval {
                if !valid_interval(iv) {
                    return bad(
                        "addons.host-upgrades.interval".into(),
                        format!("expected a duration like `7d` or `12h`, found `{iv}`"),
                    );
                }
            }
        }
        Ok(())
    }
}

/// `host` or `host:port`, `[v6]:port`; no scheme, no path.
pub fn valid_endpoint(ep: &str) -> bool {
    if ep.is_empty() || ep.contains(char::is_whitespace) || ep.contains('/') {
        return false;
    }
    if ep.parse::<IpAddr>().is_ok() {
        return true;
    }
    let (host, port) = if let Some(rest) = ep.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) if h.parse::<std::net::Ipv6Addr>().is_ok() => {
                (h.to_string(), p.strip_prefix(':').map(str::to_string))
            }
            _ => return false,
        }
    } else {
        match ep.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (ep.to_string(), None),
        }
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let host_ok =
        host.parse::<IpAddr>().is_ok() || super::valid_hostname(&host.to_ascii_lowercase());
    port_ok && host_ok
}

fn check_url(s: &str, schemes: &[&str]) -> Result<(), String> {
    match url::Url::parse(s) {
        Ok(u) if schemes.contains(&u.scheme()) && u.host().is_some() => Ok(()),
        Ok(u) => Err(format!(
            "expected a {} URL with a host, found `{s}` (scheme `{}`)",
            schemes.join("/"),
            u.scheme()
        )),
        Err(e) => Err(format!("expected a URL, found `{s}`: {e}")),
    }
}

/// A Go `time.ParseDuration` string without sign: `300ms`, `5m`, `1h30m`, `1.5h`.
pub fn valid_go_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    if rest == "0" {
        return true;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty()
            || num.starts_with('.')
            || num.ends_with('.')
            || num.matches('.').count() > 1
        {
            return false;
        }
        rest = &rest[num_len..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .into_iter()
            .filter(|u| rest.starts_with(u))
            .max_by_key(|u| u.len());
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

/// Pharos' host-upgrades interval: a Go duration or whole days (`7d`).
fn valid_interval(s: &str) -> bool {
    s.strip_suffix('d')
        .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0))
        || valid_go_duration(s)
}

/// Kubernetes label key: `[prefix/]name`, prefix a DNS subdomain (≤ 253), name ≤ 63 of
/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
pub fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(|p| p.len() <= 253 && super::valid_hostname(p))
        && !name.is_empty()
        && valid_label_value(name)
}

/// Kubernetes label value: empty, or ≤ 63 of `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
pub fn valid_label_value(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    v.len() <= 63
        && v.starts_with(alnum)
        && v.ends_with(alnum)
        && v.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// Whether a kubelet may set this label on its own Node (the NodeRestriction admission
/// plugin and the kubelet's own check): not in `node-restriction.kubernetes.io`, and in
/// the `kubernetes.io` / `k8s.io` namespaces only the well-known kubelet labels and the
/// `kubelet.kubernetes.io/`, `node.kubernetes.io/` namespaces. Node roles
/// (`node-role.kubernetes.io/*`) are therefore set through the API by the bootstrap
/// master, not by the kubelet.
pub fn kubelet_may_set_label(key: &str) -> bool {
    let ns = match key.split_once('/') {
        Some((ns, _)) => ns,
        None => return true,
    };
    let under = |ns: &str, d: &str| ns == d || ns.ends_with(&format!(".{d}"));
    if under(ns, "node-restriction.kubernetes.io") {
        return false;
    }
    if !(under(ns, "kubernetes.io") || under(ns, "k8s.io")) {
        return true;
    }
    const WELL_KNOWN: [&str; 11] = [
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    WELL_KNOWN.contains(&key)
        || under(ns, "kubelet.kubernetes.io")
        || under(ns, "node.kubernetes.io")
}

pub(crate) fn check_kubelet_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    match labels.keys().find(|k| !kubelet_may_set_label(k)) {
        Some(k) => Err(format!(
            "`{k}` cannot be set by the node itself (NodeRestriction); node roles are set by nodeimage \
             (node-role.kubernetes.io/master on masters, node-role.kubernetes.io/node on workers)"
        )),
        None => Ok(()),
    }
}

pub(crate) fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in labels {
        if !valid_label_key(k) {
            return Err(format!("`{k}` is not a valid label key"));
        }
        if !valid_label_value(v) {
            return Err(format!("`{v}` (for `{k}`) is not a valid label value"));
        }
    }
    Ok(())
}

/// Two networks overlap when either contains the other's network address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "{m}addons:\n  host-upgrades:\n    enabled: true\n    interval: weekly\n"
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
        assert!(
            e.contains("hosts[0].labels") && e.contains("NodeRestriction"),
            "{e}"
        );
    }

    #[test]
    fn helpers() {
        assert!(
            valid_go_duration("1h30m") && valid_go_duration("300ms") && valid_go_duration("1.5h")
        );
        assert!(!valid_go_duration("5") && !valid_go_duration("m") && !valid_go_duration("5 m"));
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

//! The checks of a parsed config that its types cannot express: relations between
//! fields (overlapping networks, one bootstrap master, what a worker may carry),
//! URLs, durations, label values and the labels a kubelet may set on itself. Each error
//! names the key. The syntax of hostnames, tokens, label keys, modes and paths is
//! checked by their types ([`super::types`]) while the document is parsed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{
    valid_dns_name, valid_label_value, ClusterConfig, ConfigError, LabelKey, NodeConfig, Role,
    NODE_CONFIG_VERSION,
};

/// `components.<name>.extra_args`: flag names of `[a-z0-9-]` (no leading `--`), values on
/// one line (a unit file or environment file line each). `components.kube-proxy` has
/// no flags of its own here: its settings go to `config`.
fn validate_components(src: &str, prefix: &str, c: &super::Components) -> Result<(), ConfigError> {
    let all = [
        ("kube-apiserver", &c.kube_apiserver),
        ("kube-controller-manager", &c.kube_controller_manager),
        ("kube-scheduler", &c.kube_scheduler),
        ("kubelet", &c.kubelet),
        ("kube-proxy", &c.kube_proxy),
        ("etcd", &c.etcd),
    ];
    for (name, comp) in all {
        for (flag, value) in &comp.extra_args {
            let key = format!("{prefix}components.{name}.extra_args.{flag}");
            let ok_name = !flag.is_empty()
                && !flag.starts_with('-')
                && flag
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok_name {
                return Err(ConfigError::invalid(
                    src,
                    &key,
                    "expected a flag name of [a-z0-9-] without the leading `--`",
                ));
            }
            if value.chars().any(|ch| ch.is_control()) {
                return Err(ConfigError::invalid(
                    src,
                    &key,
                    "expected a value on one line (no newline or control character)",
                ));
            }
        }
        if !comp.config.is_empty() && !matches!(name, "kubelet" | "kube-proxy") {
            return Err(ConfigError::invalid(
                src,
                format!("{prefix}components.{name}.config"),
                "only kubelet and kube-proxy read a configuration file; use extra_args",
            ));
        }
        if name == "kube-proxy" && !comp.extra_args.is_empty() {
            return Err(ConfigError::invalid(
                src,
                format!("{prefix}components.kube-proxy.extra_args"),
                "kube-proxy runs from its configuration file: put settings under components.kube-proxy.config",
            ));
        }
    }
    Ok(())
}

/// A bootstrap token lifetime: a Go duration of at most a year (`0`: never expires).
/// The error says what was expected and what was found.
pub fn check_bootstrap_token_ttl(ttl: &str) -> Result<std::time::Duration, String> {
    match go_duration(ttl) {
        Some(d) if d <= std::time::Duration::from_secs(366 * 86400) => Ok(d),
        Some(_) => Err(format!(
            "expected at most a year (8784h), found `{ttl}`; `0` never expires"
        )),
        None => Err(format!(
            "expected a duration like `24h` or `90m` (`0`: never expires), found `{ttl}`"
        )),
    }
}

/// `bootstrap_token_ttl` of a config, when set.
fn validate_token_ttl(src: &str, field: &str, ttl: Option<&str>) -> Result<(), ConfigError> {
    match ttl.map(check_bootstrap_token_ttl) {
        Some(Err(m)) => Err(ConfigError::invalid(src, field, m)),
        _ => Ok(()),
    }
}

impl ClusterConfig {
    /// Checks that serde cannot express. Each error names the key.
    pub fn validate(&self, src: &str) -> Result<(), ConfigError> {
        validate_components(src, "", &self.components)?;
        validate_token_ttl(
            src,
            "bootstrap_token_ttl",
            self.bootstrap_token_ttl.as_deref(),
        )?;
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
        if !valid_dns_name(&self.network.dns_domain) {
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
                    if !valid_dns_name(&is.name) {
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
            if hu.enabled {
                match hu.url.as_deref() {
                    None => {
                        return bad(
                            "addons.host-upgrades.url".into(),
                            "expected the update bundle's URL (http:// or https://, `{arch}` for the node's architecture): nodes run an image and update from its signed bundle".into(),
                        )
                    }
                    Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                        return bad(
                            "addons.host-upgrades.url".into(),
                            format!("expected an http:// or https:// URL, found `{u}`"),
                        )
                    }
                    Some(_) => {}
                }
            }
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

impl NodeConfig {
    /// Checks that the types cannot express. Each error names the key.
    pub fn validate(&self, src: &str) -> Result<(), ConfigError> {
        validate_components(src, "cluster.", &self.cluster.components)?;
        validate_token_ttl(
            src,
            "cluster.bootstrap_token_ttl",
            self.cluster.bootstrap_token_ttl.as_deref(),
        )?;
        if self.version != NODE_CONFIG_VERSION {
            return Err(ConfigError::invalid(
                src,
                "version",
                format!("expected {NODE_CONFIG_VERSION}, found {}", self.version),
            ));
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
        if overlaps(
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
            if n.parse::<IpNet>().is_err() && n.parse::<IpAddr>().is_err() {
                return Err(ConfigError::invalid(
                    src,
                    "cluster.nodes",
                    format!("expected an IP address or CIDR, found `{n}`"),
                ));
            }
        }
        check_labels(&self.labels).map_err(|m| ConfigError::invalid(src, "labels", m))?;
        check_kubelet_labels(&self.labels).map_err(|m| ConfigError::invalid(src, "labels", m))?;
        for (i, t) in self.taints.iter().enumerate() {
            if !t.value.as_deref().is_none_or(valid_label_value) {
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
    let host_ok = host.parse::<IpAddr>().is_ok() || valid_dns_name(&host.to_ascii_lowercase());
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
    go_duration(s).is_some()
}

/// The length of a Go `time.ParseDuration` string without sign (`0`, `300ms`, `1h30m`,
/// `1.5h`), to the nanosecond; `None` when it is not one.
pub fn go_duration(s: &str) -> Option<std::time::Duration> {
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut nanos: f64 = 0.0;
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
            return None;
        }
        rest = &rest[num_len..];
        let (unit, scale) = [
            ("ns", 1.0),
            ("us", 1e3),
            ("µs", 1e3),
            ("ms", 1e6),
            ("s", 1e9),
            ("m", 60e9),
            ("h", 3600e9),
        ]
        .into_iter()
        .filter(|(u, _)| rest.starts_with(u))
        .max_by_key(|(u, _)| u.len())?;
        rest = &rest[unit.len()..];
        nanos += num.parse::<f64>().ok()? * scale;
    }
    // Go's limit: an int64 of nanoseconds (about 290 years).
    (nanos <= i64::MAX as f64).then(|| std::time::Duration::from_nanos(nanos.round() as u64))
}

/// Pharos' host-upgrades interval: a Go duration or whole days (`7d`).
fn valid_interval(s: &str) -> bool {
    s.strip_suffix('d')
        .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0))
        || valid_go_duration(s)
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

fn check_kubelet_labels(labels: &BTreeMap<LabelKey, String>) -> Result<(), String> {
    match labels.keys().find(|k| !kubelet_may_set_label(k)) {
        Some(k) => Err(format!(
            "`{k}` cannot be set by the node itself (NodeRestriction); node roles are set by nodeimage \
             (node-role.kubernetes.io/master on masters, node-role.kubernetes.io/node on workers)"
        )),
        None => Ok(()),
    }
}

/// Label values (the keys are [`LabelKey`]s, checked when parsed).
fn check_labels(labels: &BTreeMap<LabelKey, String>) -> Result<(), String> {
    for (k, v) in labels {
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

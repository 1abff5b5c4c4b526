//! The master's own PKI: which certificates a master mints for itself (the kubeadm set,
//! with its addresses and names), and keeping them under a root prefix: what is still
//! valid is kept, the rest is (re)issued with [`nodeimage_core::pki`] and written 0600.

use std::net::IpAddr;
use std::path::Path;

use time::OffsetDateTime;

use nodeimage_core::config::{NodeConfig, Secrets};
use nodeimage_core::files::{atomic_write, rooted, write_secret};
use nodeimage_core::layout::{
    api_server_url, local_apiserver_url, paths, split_host_port, CLUSTER_ADMINS_GROUP,
    SYSTEM_MASTERS_GROUP,
};
pub use nodeimage_core::pki::*;

use nodeimage_core::kubeconfig::{Kubeconfig, KubeconfigUser};

/// The CAs and keys a master receives in its node config.
#[derive(Debug, Clone)]
pub struct MasterSecrets {
    pub ca: CaPair,
    pub front_proxy_ca: CaPair,
    /// Absent with external etcd.
    pub etcd_ca: Option<CaPair>,
    pub service_account: ServiceAccountKey,
}

impl MasterSecrets {
    /// Take the master's secrets out of a node config. `external_etcd` drops the etcd CA
    /// requirement.
    pub fn from_secrets(s: &Secrets, external_etcd: bool) -> Result<Self, PkiError> {
        fn need(v: &Option<String>, name: &'static str) -> Result<String, PkiError> {
            v.clone().ok_or(PkiError::MissingSecret(name))
        }
        let etcd_ca = if external_etcd {
            None
        } else {
            Some(CaPair {
                cert_pem: need(&s.etcd_ca_certificate, "etcd_ca_certificate")?,
                key_pem: need(&s.etcd_ca_key, "etcd_ca_key")?,
            })
        };
        Ok(MasterSecrets {
            ca: CaPair {
                cert_pem: need(&s.ca_certificate, "ca_certificate")?,
                key_pem: need(&s.ca_key, "ca_key")?,
            },
            front_proxy_ca: CaPair {
                cert_pem: need(&s.front_proxy_ca_certificate, "front_proxy_ca_certificate")?,
                key_pem: need(&s.front_proxy_ca_key, "front_proxy_ca_key")?,
            },
            etcd_ca,
            service_account: ServiceAccountKey {
                private_pem: need(&s.service_account_key, "service_account_key")?,
                public_pem: need(&s.service_account_public_key, "service_account_public_key")?,
            },
        })
    }

    /// The CAs and keys the master keeps under /etc/kubernetes/pki (written by the pki
    /// step), for renewal long after the node config's secrets were erased.
    pub fn from_pki_dir(root: &Path, stacked_etcd: bool) -> Result<Self, PkiError> {
        let read = |p: &str| -> Result<String, PkiError> {
            let path = rooted(root, p);
            std::fs::read_to_string(&path).map_err(io_err(&path))
        };
        let pair = |c: &str, k: &str| -> Result<CaPair, PkiError> {
            Ok(CaPair {
                cert_pem: read(c)?,
                key_pem: read(k)?,
            })
        };
        Ok(MasterSecrets {
            ca: pair(paths::CA_CRT, paths::CA_KEY)?,
            front_proxy_ca: pair(paths::FRONT_PROXY_CA_CRT, paths::FRONT_PROXY_CA_KEY)?,
            etcd_ca: if stacked_etcd {
                Some(pair(paths::ETCD_CA_CRT, paths::ETCD_CA_KEY)?)
            } else {
                None
            },
            service_account: ServiceAccountKey {
                private_pem: read(paths::SA_KEY)?,
                public_pem: read(paths::SA_PUB)?,
            },
        })
    }

    fn ca(&self, kind: CaKind) -> Option<&CaPair> {
        match kind {
            CaKind::Cluster => Some(&self.ca),
            CaKind::FrontProxy => Some(&self.front_proxy_ca),
            CaKind::Etcd => self.etcd_ca.as_ref(),
        }
    }
}

/// What a master knows about itself and the cluster when it mints its certificates.
/// Kept on the node (no secrets in it) so that renewal needs no node config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MasterIdentity {
    pub cluster_name: String,
    /// This node's name (hostname).
    pub hostname: String,
    /// This node's addresses (public, private, detected): IPs or DNS names.
    pub addresses: Vec<String>,
    /// Every master address the node config lists.
    pub masters: Vec<String>,
    /// `host` or `host:port` of the API endpoint.
    pub api_endpoint: String,
    pub service_cidr: ipnet::IpNet,
    pub dns_domain: String,
    /// Stacked etcd on this master (false with external etcd).
    pub stacked_etcd: bool,
    /// The bootstrap master also gets `super-admin.conf` (system:masters) to create the
    /// first RBAC objects, as kubeadm init does.
    pub bootstrap: bool,
}

impl MasterIdentity {
    /// From a master's node config plus the addresses detected on the node.
    pub fn from_node_config(c: &NodeConfig, hostname: &str, detected: &[IpAddr]) -> Self {
        let mut addresses: Vec<String> = Vec::new();
        for a in c
            .address
            .iter()
            .chain(c.private_address.iter())
            .cloned()
            .chain(detected.iter().map(|i| i.to_string()))
        {
            if !addresses.contains(&a) {
                addresses.push(a);
            }
        }
        MasterIdentity {
            cluster_name: c.cluster.name.clone(),
            hostname: hostname.to_string(),
            addresses,
            masters: c.cluster.masters.clone(),
            api_endpoint: c.cluster.api_endpoint.clone(),
            service_cidr: c.cluster.network.service_cidr,
            dns_domain: c.cluster.network.dns_domain.clone(),
            stacked_etcd: c.cluster.etcd.is_none(),
            bootstrap: c.bootstrap,
        }
    }

    /// `https://host:port` for the API endpoint.
    pub fn api_server_url(&self) -> String {
        api_server_url(&self.api_endpoint)
    }
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

/// Sort names into DNS SANs and IP SANs.
fn sans_of<'a>(names: impl IntoIterator<Item = &'a str>) -> (Vec<String>, Vec<IpAddr>) {
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    for n in names {
        let n = n.trim();
        if n.is_empty() {
            continue;
        }
        match n.parse::<IpAddr>() {
            Ok(ip) => push_unique(&mut ips, ip),
            Err(_) => push_unique(&mut dns, n.to_ascii_lowercase()),
        }
    }
    (dns, ips)
}

/// Every certificate a master mints, in the order they are written.
pub fn master_cert_specs(id: &MasterIdentity) -> Vec<CertSpec> {
    let files = |base: &str| Target::Files {
        cert: format!("{}/{base}.crt", paths::PKI_DIR),
        key: format!("{}/{base}.key", paths::PKI_DIR),
    };
    let (endpoint_host, _) = split_host_port(&id.api_endpoint);
    let kubernetes_ip = nodeimage_core::config::Network {
        service_cidr: id.service_cidr,
        ..Default::default()
    }
    .kubernetes_service_ip();
    let domain = id.dns_domain.trim_end_matches('.');
    let svc_default = format!("kubernetes.default.svc.{domain}");
    let kube_ip = kubernetes_ip.to_string();
    let mut api_names: Vec<&str> = vec![&id.hostname, endpoint_host];
    api_names.extend(id.masters.iter().map(String::as_str));
    api_names.extend(id.addresses.iter().map(String::as_str));
    api_names.extend([
        kube_ip.as_str(),
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        svc_default.as_str(),
        "localhost",
        "127.0.0.1",
    ]);
    let (api_dns, api_ips) = sans_of(api_names);

    let mut node_names: Vec<&str> = vec![&id.hostname];
    node_names.extend(id.addresses.iter().map(String::as_str));
    node_names.extend(["localhost", "127.0.0.1", "::1"]);
    let (node_dns, node_ips) = sans_of(node_names);

    let client = |name: &str, ca: CaKind, cn: &str, orgs: &[&str], target: Target| CertSpec {
        name: name.into(),
        ca,
        common_name: cn.into(),
        organizations: orgs.iter().map(|s| s.to_string()).collect(),
        dns_names: vec![],
        ips: vec![],
        usage: Usage::Client,
        target,
    };
    let mut v = vec![
        CertSpec {
            name: "apiserver".into(),
            ca: CaKind::Cluster,
            common_name: "kube-apiserver".into(),
            organizations: vec![],
            dns_names: api_dns,
            ips: api_ips,
            usage: Usage::Server,
            target: files("apiserver"),
        },
        client(
            "apiserver-kubelet-client",
            CaKind::Cluster,
            "kube-apiserver-kubelet-client",
            &[CLUSTER_ADMINS_GROUP],
            files("apiserver-kubelet-client"),
        ),
        client(
            "front-proxy-client",
            CaKind::FrontProxy,
            "front-proxy-client",
            &[],
            files("front-proxy-client"),
        ),
    ];
    if id.stacked_etcd {
        for (name, base, usage) in [
            ("etcd-server", "etcd/server", Usage::ServerAndClient),
            ("etcd-peer", "etcd/peer", Usage::ServerAndClient),
        ] {
            v.push(CertSpec {
                name: name.into(),
                ca: CaKind::Etcd,
                common_name: id.hostname.clone(),
                organizations: vec![],
                dns_names: node_dns.clone(),
                ips: node_ips.clone(),
                usage,
                target: files(base),
            });
        }
        v.push(client(
            "etcd-healthcheck-client",
            CaKind::Etcd,
            "kube-etcd-healthcheck-client",
            &[],
            files("etcd/healthcheck-client"),
        ));
        v.push(client(
            "apiserver-etcd-client",
            CaKind::Etcd,
            "kube-apiserver-etcd-client",
            &[],
            files("apiserver-etcd-client"),
        ));
    }
    let kc = |path: &str, server: String| Target::Kubeconfig {
        path: path.into(),
        server,
    };
    let endpoint_url = id.api_server_url();
    v.push(client(
        "admin.conf",
        CaKind::Cluster,
        "kubernetes-admin",
        &[CLUSTER_ADMINS_GROUP],
        kc(paths::ADMIN_CONF, endpoint_url),
    ));
    if id.bootstrap {
        v.push(client(
            "super-admin.conf",
            CaKind::Cluster,
            "kubernetes-super-admin",
            &[SYSTEM_MASTERS_GROUP],
            kc(paths::SUPER_ADMIN_CONF, local_apiserver_url()),
        ));
    }
    v.push(client(
        "controller-manager.conf",
        CaKind::Cluster,
        "system:kube-controller-manager",
        &[],
        kc(paths::CONTROLLER_MANAGER_CONF, local_apiserver_url()),
    ));
    v.push(client(
        "scheduler.conf",
        CaKind::Cluster,
        "system:kube-scheduler",
        &[],
        kc(paths::SCHEDULER_CONF, local_apiserver_url()),
    ));
    let node_user = format!("system:node:{}", id.hostname);
    v.push(client(
        "kubelet-client",
        CaKind::Cluster,
        &node_user,
        &["system:nodes"],
        Target::Combined {
            path: paths::KUBELET_CLIENT_CURRENT.into(),
        },
    ));
    let (kdns, kips) = sans_of(
        std::iter::once(id.hostname.as_str()).chain(id.addresses.iter().map(String::as_str)),
    );
    v.push(CertSpec {
        name: "kubelet-serving".into(),
        ca: CaKind::Cluster,
        common_name: node_user,
        organizations: vec!["system:nodes".into()],
        dns_names: kdns,
        ips: kips,
        usage: Usage::Server,
        target: Target::Files {
            cert: paths::KUBELET_SERVING_CRT.into(),
            key: paths::KUBELET_SERVING_KEY.into(),
        },
    });
    v
}

/// What happened to one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Kept,
    Created,
    /// Reissued, with the reason the old one could not be kept.
    Replaced(String),
}

/// Report of [`ensure_master_pki`]: (spec name, outcome).
pub type PkiReport = Vec<(String, Outcome)>;

/// Write the CA material a master keeps on disk (CA certs 0644, keys 0600, SA keys).
pub fn write_master_cas(root: &Path, s: &MasterSecrets) -> Result<(), PkiError> {
    let mut files: Vec<(&str, &str, bool)> = vec![
        (paths::CA_CRT, &s.ca.cert_pem, false),
        (paths::CA_KEY, &s.ca.key_pem, true),
        (paths::FRONT_PROXY_CA_CRT, &s.front_proxy_ca.cert_pem, false),
        (paths::FRONT_PROXY_CA_KEY, &s.front_proxy_ca.key_pem, true),
        (paths::SA_KEY, &s.service_account.private_pem, true),
        (paths::SA_PUB, &s.service_account.public_pem, false),
    ];
    if let Some(e) = &s.etcd_ca {
        files.push((paths::ETCD_CA_CRT, &e.cert_pem, false));
        files.push((paths::ETCD_CA_KEY, &e.key_pem, true));
    }
    for (p, data, secret) in files {
        write_if_changed(&rooted(root, p), data.as_bytes(), secret)?;
    }
    Ok(())
}

fn write_if_changed(path: &Path, data: &[u8], secret: bool) -> Result<(), PkiError> {
    let mode = if secret { 0o600 } else { 0o644 };
    nodeimage_core::files::write_if_changed(path, data, mode)
        .map(drop)
        .map_err(io_err(path))
}

/// Mint (or keep) every certificate of [`master_cert_specs`] under `root`, and write the
/// CA files. Idempotent: a certificate that is still valid for the current CA, subject,
/// SANs and usage is kept.
pub fn ensure_master_pki(
    root: &Path,
    id: &MasterIdentity,
    s: &MasterSecrets,
    now: OffsetDateTime,
) -> Result<PkiReport, PkiError> {
    ensure_master_pki_valid_for(root, id, s, now, LEAF_VALIDITY)
}

/// [`ensure_master_pki`], issuing certificates valid for `validity` (renewal tests use
/// short-lived ones).
pub fn ensure_master_pki_valid_for(
    root: &Path,
    id: &MasterIdentity,
    s: &MasterSecrets,
    now: OffsetDateTime,
    validity: time::Duration,
) -> Result<PkiReport, PkiError> {
    write_master_cas(root, s)?;
    let mut report = Vec::new();
    for spec in master_cert_specs(id) {
        let ca = s
            .ca(spec.ca)
            .ok_or(PkiError::MissingSecret("etcd_ca_key"))?;
        let outcome = ensure_cert_valid_for(root, &spec, ca, &id.cluster_name, now, validity)?;
        tracing::info!(cert = %spec.name, outcome = ?outcome, "certificate");
        report.push((spec.name.clone(), outcome));
    }
    Ok(report)
}

/// Ensure one certificate exists and is valid, writing it under `root`.
pub fn ensure_cert(
    root: &Path,
    spec: &CertSpec,
    ca: &CaPair,
    cluster_name: &str,
    now: OffsetDateTime,
) -> Result<Outcome, PkiError> {
    ensure_cert_valid_for(root, spec, ca, cluster_name, now, LEAF_VALIDITY)
}

/// [`ensure_cert`] with another lifetime for a certificate it (re)issues.
pub fn ensure_cert_valid_for(
    root: &Path,
    spec: &CertSpec,
    ca: &CaPair,
    cluster_name: &str,
    now: OffsetDateTime,
    validity: time::Duration,
) -> Result<Outcome, PkiError> {
    let outcome = match read_existing(root, spec, ca, cluster_name) {
        Existing::Absent => Outcome::Created,
        Existing::Unusable(why) => Outcome::Replaced(why),
        Existing::Pair(c, k) => match check_existing(&c, &k, spec, ca, now) {
            None => return Ok(Outcome::Kept),
            Some(why) => Outcome::Replaced(why),
        },
    };
    let issued = issue_valid_for(spec, ca, now, validity)?;
    write_issued(root, spec, ca, cluster_name, &issued)?;
    Ok(outcome)
}

enum Existing {
    Absent,
    Unusable(String),
    Pair(String, String),
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The kubelet certificate store's layout for `current` (`<prefix>-current.pem`): the
/// data in `<prefix>-<YYYY-MM-DD-HH-MM-SS>.pem` (0600) and `current` a relative symlink
/// to it, swapped in with a rename (never a moment without one, a regular file left by
/// an earlier version replaced too).
fn write_dated_pair(current: &Path, data: &[u8], now: OffsetDateTime) -> Result<(), PkiError> {
    let name = current
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let prefix = name.strip_suffix("-current.pem").unwrap_or(name);
    let stamp = format!(
        "{:04}-{:02}-{:02}-{:02}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let dir = current.parent().unwrap_or(Path::new("."));
    let dated = dir.join(format!("{prefix}-{stamp}.pem"));
    write_secret(&dated, data).map_err(io_err(&dated))?;
    let tmp = dir.join(format!(".{name}.link.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(dated.file_name().expect("named"), &tmp).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, current).map_err(io_err(current))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Existing (cert, key) for a spec; for kubeconfigs also requires the server and CA to match.
fn read_existing(root: &Path, spec: &CertSpec, ca: &CaPair, cluster_name: &str) -> Existing {
    let unusable = |why: &str| Existing::Unusable(why.to_string());
    match &spec.target {
        Target::Files { cert, key } => {
            match (read(&rooted(root, cert)), read(&rooted(root, key))) {
                (Some(c), Some(k)) => Existing::Pair(c, k),
                (None, None) => Existing::Absent,
                _ => unusable("certificate or key missing"),
            }
        }
        Target::Combined { path } => {
            let Some(all) = read(&rooted(root, path)) else {
                return Existing::Absent;
            };
            match all
                .find("-----BEGIN PRIVATE KEY-----")
                .or_else(|| all.find("-----BEGIN EC PRIVATE KEY-----"))
            {
                Some(at) => Existing::Pair(all[..at].to_string(), all[at..].to_string()),
                None => unusable("no private key"),
            }
        }
        Target::Kubeconfig { path, server } => {
            let Some(text) = read(&rooted(root, path)) else {
                return Existing::Absent;
            };
            let Ok(k) = Kubeconfig::parse(&text) else {
                return unusable("kubeconfig does not parse");
            };
            if k.server() != Some(server.as_str()) || k.cluster_name() != Some(cluster_name) {
                return unusable("server or cluster name differs");
            }
            if k.ca_pem().as_deref() != Some(ca.cert_pem.as_str()) {
                return unusable("CA differs");
            }
            match (k.client_certificate_pem(), k.client_key_pem()) {
                (Some(c), Some(key)) => Existing::Pair(c, key),
                _ => unusable("no embedded client certificate"),
            }
        }
    }
}

fn write_issued(
    root: &Path,
    spec: &CertSpec,
    ca: &CaPair,
    cluster_name: &str,
    i: &Issued,
) -> Result<(), PkiError> {
    match &spec.target {
        Target::Files { cert, key } => {
            let (c, k) = (rooted(root, cert), rooted(root, key));
            write_secret(&k, i.key_pem.as_bytes()).map_err(io_err(&k))?;
            atomic_write(&c, i.cert_pem.as_bytes(), 0o644).map_err(io_err(&c))
        }
        // The link itself is replaced, never the dated file it points to.
        Target::Combined { path } => write_dated_pair(
            &nodeimage_core::files::rooted_nofollow(root, path),
            format!("{}{}", i.cert_pem, i.key_pem).as_bytes(),
            OffsetDateTime::now_utc(),
        ),
        Target::Kubeconfig { path, server } => {
            let k = Kubeconfig::new(
                cluster_name,
                server,
                &ca.cert_pem,
                &spec.common_name,
                KubeconfigUser::EmbeddedCert {
                    cert_pem: i.cert_pem.clone(),
                    key_pem: i.key_pem.clone(),
                },
            );
            let p = rooted(root, path);
            write_secret(&p, k.to_yaml().as_bytes()).map_err(io_err(&p))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn identity() -> MasterIdentity {
        MasterIdentity {
            cluster_name: "demo".into(),
            hostname: "m1".into(),
            addresses: vec!["10.0.0.11".into()],
            masters: vec!["10.0.0.11".into(), "10.0.0.12".into()],
            api_endpoint: "api.example.com".into(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            dns_domain: "cluster.local".into(),
            stacked_etcd: true,
            bootstrap: false,
        }
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a.b:6443"), ("a.b", Some(6443)));
        assert_eq!(split_host_port("a.b"), ("a.b", None));
        assert_eq!(split_host_port("[fd00::1]:443"), ("fd00::1", Some(443)));
        assert_eq!(split_host_port("fd00::1"), ("fd00::1", None));
        assert_eq!(api_server_url("10.0.0.1"), "https://10.0.0.1:6443");
        assert_eq!(api_server_url("fd00::1"), "https://[fd00::1]:6443");
        assert_eq!(api_server_url("lb:443"), "https://lb:443");
    }

    #[test]
    fn specs_cover_the_master_set() {
        let names: Vec<_> = master_cert_specs(&identity())
            .into_iter()
            .map(|s| s.name)
            .collect();
        for n in [
            "apiserver",
            "apiserver-kubelet-client",
            "front-proxy-client",
            "etcd-server",
            "etcd-peer",
            "apiserver-etcd-client",
            "admin.conf",
            "controller-manager.conf",
            "scheduler.conf",
            "kubelet-client",
            "kubelet-serving",
        ] {
            assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
        }
        assert!(!names.contains(&"super-admin.conf".to_string()));
        let mut ext = identity();
        ext.stacked_etcd = false;
        ext.bootstrap = true;
        let names: Vec<_> = master_cert_specs(&ext)
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert!(!names.iter().any(|n| n.starts_with("etcd")), "{names:?}");
        assert!(names.contains(&"super-admin.conf".to_string()));
    }

    #[test]
    fn issued_cert_is_kept_and_mismatches_are_reissued() {
        let ca = CaPair::generate("kubernetes", now()).unwrap();
        let spec = master_cert_specs(&identity()).remove(0);
        let i = issue(&spec, &ca, now()).unwrap();
        assert_eq!(
            check_existing(&i.cert_pem, &i.key_pem, &spec, &ca, now()),
            None
        );
        let other = CaPair::generate("other", now()).unwrap();
        assert!(check_existing(&i.cert_pem, &i.key_pem, &spec, &other, now()).is_some());
        let mut more = spec.clone();
        more.ips.push("10.0.0.99".parse().unwrap());
        assert!(check_existing(&i.cert_pem, &i.key_pem, &more, &ca, now()).is_some());
        let later = now() + LEAF_VALIDITY - Duration::days(10);
        assert!(check_existing(&i.cert_pem, &i.key_pem, &spec, &ca, later).is_some());
        let j = issue(&spec, &ca, now()).unwrap();
        assert!(check_existing(&i.cert_pem, &j.key_pem, &spec, &ca, now())
            .unwrap()
            .contains("key"));
    }
}

//! Cluster PKI: certificate authorities (made once on the workstation by `nodeimage
//! cluster new`) and the leaf certificates each master mints for itself from the CA keys
//! its node config carries.
//!
//! Keys are ECDSA P-256. Kubernetes and etcd accept ECDSA and RSA alike (kubeadm offers
//! `ECDSA-P256` as its `encryptionAlgorithm`); P-256 keys are small and fast to make on
//! a small node, and the `ring` backend of rcgen cannot generate RSA keys at all.
//!
//! The file layout follows kubeadm (`/etc/kubernetes/pki/...`), so operators find what
//! they expect. Everything here is a pure function of its inputs except
//! [`ensure_master_pki`], which writes under a root prefix and keeps what is still valid.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::config::{NodeConfig, Secrets};
use crate::kube::kubeconfig::{Kubeconfig, KubeconfigUser};
use crate::util::{atomic_write, rooted, write_secret};

/// CA certificates are valid for ten years.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// Leaf certificates are valid for one year.
pub const LEAF_VALIDITY: Duration = Duration::days(365);
/// An existing leaf certificate that expires sooner than this is reissued.
pub const RENEW_BEFORE: Duration = Duration::days(30);
/// Certificates start a little in the past to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::minutes(5);

/// Group bound to `cluster-admin` by a ClusterRoleBinding of the same name (kubeadm ≥ 1.29
/// practice: admin credentials are not in the RBAC-bypassing `system:masters` group).
pub const CLUSTER_ADMINS_GROUP: &str = "kubeadm:cluster-admins";
/// The RBAC-bypassing group, used only by `super-admin.conf` on the bootstrap master to
/// create the first RBAC objects.
pub const SYSTEM_MASTERS_GROUP: &str = "system:masters";

/// Node paths (kubeadm layout).
pub mod paths {
    pub const PKI_DIR: &str = "/etc/kubernetes/pki";
    pub const CA_CRT: &str = "/etc/kubernetes/pki/ca.crt";
    pub const CA_KEY: &str = "/etc/kubernetes/pki/ca.key";
    pub const FRONT_PROXY_CA_CRT: &str = "/etc/kubernetes/pki/front-proxy-ca.crt";
    pub const FRONT_PROXY_CA_KEY: &str = "/etc/kubernetes/pki/front-proxy-ca.key";
    pub const ETCD_CA_CRT: &str = "/etc/kubernetes/pki/etcd/ca.crt";
    pub const ETCD_CA_KEY: &str = "/etc/kubernetes/pki/etcd/ca.key";
    pub const SA_KEY: &str = "/etc/kubernetes/pki/sa.key";
    pub const SA_PUB: &str = "/etc/kubernetes/pki/sa.pub";
    pub const APISERVER_CRT: &str = "/etc/kubernetes/pki/apiserver.crt";
    pub const APISERVER_KEY: &str = "/etc/kubernetes/pki/apiserver.key";
    pub const APISERVER_KUBELET_CLIENT_CRT: &str =
        "/etc/kubernetes/pki/apiserver-kubelet-client.crt";
    pub const APISERVER_KUBELET_CLIENT_KEY: &str =
        "/etc/kubernetes/pki/apiserver-kubelet-client.key";
    pub const FRONT_PROXY_CLIENT_CRT: &str = "/etc/kubernetes/pki/front-proxy-client.crt";
    pub const FRONT_PROXY_CLIENT_KEY: &str = "/etc/kubernetes/pki/front-proxy-client.key";
    pub const APISERVER_ETCD_CLIENT_CRT: &str = "/etc/kubernetes/pki/apiserver-etcd-client.crt";
    pub const APISERVER_ETCD_CLIENT_KEY: &str = "/etc/kubernetes/pki/apiserver-etcd-client.key";
    pub const ETCD_SERVER_CRT: &str = "/etc/kubernetes/pki/etcd/server.crt";
    pub const ETCD_SERVER_KEY: &str = "/etc/kubernetes/pki/etcd/server.key";
    pub const ETCD_PEER_CRT: &str = "/etc/kubernetes/pki/etcd/peer.crt";
    pub const ETCD_PEER_KEY: &str = "/etc/kubernetes/pki/etcd/peer.key";
    /// Client certificate for health checks, `etcdctl` and firstboot's join protocol.
    pub const ETCD_HEALTHCHECK_CLIENT_CRT: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.crt";
    pub const ETCD_HEALTHCHECK_CLIENT_KEY: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.key";
    /// External etcd: the files of cluster.yml's `etcd:` section, inlined by nodeimage.
    pub const EXTERNAL_ETCD_CA_CRT: &str = "/etc/kubernetes/pki/etcd-external/ca.crt";
    pub const EXTERNAL_ETCD_CLIENT_CRT: &str = "/etc/kubernetes/pki/etcd-external/client.crt";
    pub const EXTERNAL_ETCD_CLIENT_KEY: &str = "/etc/kubernetes/pki/etcd-external/client.key";
    pub const KUBELET_SERVING_CRT: &str = "/var/lib/kubelet/pki/kubelet.crt";
    pub const KUBELET_SERVING_KEY: &str = "/var/lib/kubelet/pki/kubelet.key";
    /// The kubelet's client certificate and key in one file, where the kubelet's own
    /// rotation keeps it current.
    pub const KUBELET_CLIENT_CURRENT: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";
    pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
    pub const SUPER_ADMIN_CONF: &str = "/etc/kubernetes/super-admin.conf";
    pub const CONTROLLER_MANAGER_CONF: &str = "/etc/kubernetes/controller-manager.conf";
    pub const SCHEDULER_CONF: &str = "/etc/kubernetes/scheduler.conf";
    pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
    pub const BOOTSTRAP_KUBELET_CONF: &str = "/etc/kubernetes/bootstrap-kubelet.conf";
}

/// kube-apiserver's secure port, from the port table (the default when the endpoint names
/// no port).
pub fn apiserver_port() -> u16 {
    crate::ports::table_port(crate::ports::Service::KubeApiserver)
        .expect("the port table lists kube-apiserver")
}

/// The API server as the master's own components reach it: loopback, the table's port.
pub fn local_apiserver_url() -> String {
    format!("https://127.0.0.1:{}", apiserver_port())
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what}: {message}")]
    Crypto { what: String, message: String },
    #[error("the node config has no `secrets.{0}`, which a master needs")]
    MissingSecret(&'static str),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn crypto(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |e| PkiError::Crypto {
        what,
        message: e.to_string(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A certificate authority: certificate and private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CaPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPair")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl CaPair {
    /// A new self-signed CA valid for [`CA_VALIDITY`].
    pub fn generate(common_name: &str, now: OffsetDateTime) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(crypto("generating a CA key"))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(common_name, &[]);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        p.not_before = now - BACKDATE;
        p.not_after = now + CA_VALIDITY;
        p.serial_number = Some(random_serial());
        let cert = p
            .self_signed(&key)
            .map_err(crypto(format!("signing CA {common_name}")))?;
        Ok(CaPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA as an rcgen issuer (certificate rebuilt from the PEM, key parsed).
    fn issuer(&self, what: &str) -> Result<(Certificate, KeyPair), PkiError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(crypto(format!("{what} key")))?;
        let params = CertificateParams::from_ca_cert_pem(&self.cert_pem)
            .map_err(crypto(format!("{what} certificate")))?;
        let cert = params
            .self_signed(&key)
            .map_err(crypto(format!("{what} certificate")))?;
        Ok((cert, key))
    }
}

/// A service-account signing key pair (PEM private key, PEM public key).
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceAccountKey {
    pub private_pem: String,
    pub public_pem: String,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("private_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    /// A new ECDSA P-256 key: kube-apiserver signs tokens with ES256.
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(crypto("generating the service-account key"))?;
        Ok(ServiceAccountKey {
            private_pem: key.serialize_pem(),
            public_pem: key.public_key_pem(),
        })
    }
}

fn random_serial() -> SerialNumber {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&b)
}

fn dn(cn: &str, orgs: &[String]) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    for o in orgs {
        d.push(DnType::OrganizationName, o.as_str());
    }
    d.push(DnType::CommonName, cn);
    d
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    ServerAndClient,
}

impl Usage {
    fn ekus(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        }
    }
}

/// Which CA signs a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKind {
    Cluster,
    Etcd,
    FrontProxy,
}

/// Where an issued certificate goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Certificate (0644) and key (0600) files.
    Files { cert: String, key: String },
    /// Certificate followed by key in one 0600 file (the kubelet's `*-current.pem`).
    Combined { path: String },
    /// A kubeconfig (0600) with the client certificate and key embedded.
    Kubeconfig { path: String, server: String },
}

/// One certificate a master mints for itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// Short name for logs and reports ("apiserver", "etcd-peer", "admin.conf").
    pub name: String,
    pub ca: CaKind,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub usage: Usage,
    pub target: Target,
}

/// A freshly issued certificate and its key.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Issue a leaf certificate for `spec`, signed by `ca`, valid for [`LEAF_VALIDITY`].
pub fn issue(spec: &CertSpec, ca: &CaPair, now: OffsetDateTime) -> Result<Issued, PkiError> {
    let (ca_cert, ca_key) = ca.issuer(&format!("CA for {}", spec.name))?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(crypto(format!("generating the {} key", spec.name)))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(&spec.common_name, &spec.organizations);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = spec.usage.ekus();
    p.use_authority_key_identifier_extension = true;
    p.not_before = now - BACKDATE;
    p.not_after =
        (now + LEAF_VALIDITY).min(ca_not_after(&ca.cert_pem).unwrap_or(now + LEAF_VALIDITY));
    p.serial_number = Some(random_serial());
    let mut sans = Vec::new();
    for d in &spec.dns_names {
        sans.push(SanType::DnsName(
            d.clone()
                .try_into()
                .map_err(crypto(format!("{}: DNS name `{d}`", spec.name)))?,
        ));
    }
    for ip in &spec.ips {
        sans.push(SanType::IpAddress(*ip));
    }
    p.subject_alt_names = sans;
    let cert = p
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(crypto(format!("signing {}", spec.name)))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn ca_not_after(ca_pem: &str) -> Option<OffsetDateTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.to_datetime())
}

/// Why an existing certificate cannot be kept (None: it can).
pub fn check_existing(
    cert_pem: &str,
    key_pem: &str,
    spec: &CertSpec,
    ca: &CaPair,
    now: OffsetDateTime,
) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, pem) = match x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) {
        Ok(p) => p,
        Err(_) => return Some("certificate is not PEM".into()),
    };
    let cert = match pem.parse_x509() {
        Ok(c) => c,
        Err(_) => return Some("certificate does not parse".into()),
    };
    let (_, ca_pem) = match x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()) {
        Ok(p) => p,
        Err(_) => return Some("CA certificate is not PEM".into()),
    };
    let ca_cert = match ca_pem.parse_x509() {
        Ok(c) => c,
        Err(_) => return Some("CA certificate does not parse".into()),
    };
    if cert.issuer().as_raw() != ca_cert.subject().as_raw()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Some("not signed by the current CA".into());
    }
    let not_after = cert.validity().not_after.to_datetime();
    if not_after - now < RENEW_BEFORE || cert.validity().not_before.to_datetime() > now + BACKDATE {
        return Some(format!("validity ends {not_after}"));
    }
    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let orgs: BTreeSet<_> = cert
        .subject()
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .collect();
    if cn != [spec.common_name.as_str()]
        || orgs != spec.organizations.iter().map(String::as_str).collect()
    {
        return Some("subject differs".into());
    }
    let (mut dns, mut ips) = (BTreeSet::new(), BTreeSet::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => {
                    dns.insert(d.to_string());
                }
                GeneralName::IPAddress(b) => {
                    if let Some(ip) = ip_from_bytes(b) {
                        ips.insert(ip);
                    }
                }
                _ => {}
            }
        }
    }
    if !spec.dns_names.iter().all(|d| dns.contains(d)) || !spec.ips.iter().all(|i| ips.contains(i))
    {
        return Some("subject alternative names are missing".into());
    }
    let eku_ok = match cert.extended_key_usage() {
        Ok(Some(e)) => match spec.usage {
            Usage::Server => e.value.server_auth,
            Usage::Client => e.value.client_auth,
            Usage::ServerAndClient => e.value.server_auth && e.value.client_auth,
        },
        _ => false,
    };
    if !eku_ok {
        return Some("extended key usage differs".into());
    }
    match KeyPair::from_pem(key_pem) {
        Ok(k) if k.public_key_der() == cert.public_key().raw => None,
        Ok(_) => Some("key does not match the certificate".into()),
        Err(_) => Some("key does not parse".into()),
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

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

    fn ca(&self, kind: CaKind) -> Option<&CaPair> {
        match kind {
            CaKind::Cluster => Some(&self.ca),
            CaKind::FrontProxy => Some(&self.front_proxy_ca),
            CaKind::Etcd => self.etcd_ca.as_ref(),
        }
    }
}

/// What a master knows about itself and the cluster when it mints its certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// `host` / `host:port` / `[v6]:port` / `https://...` → `https://host:port`.
pub fn api_server_url(endpoint: &str) -> String {
    if endpoint.starts_with("https://") {
        return endpoint.trim_end_matches('/').to_string();
    }
    let (host, port) = split_host_port(endpoint);
    let port = port.unwrap_or_else(apiserver_port);
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("https://[{host}]:{port}"),
        _ => format!("https://{host}:{port}"),
    }
}

/// Split `host:port` (also `[v6]:port`, bare v6, bare host).
pub fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            return (h, p.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    if s.parse::<IpAddr>().is_ok() {
        return (s, None);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse().ok()),
        _ => (s, None),
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
    let kubernetes_ip = crate::config::Network {
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
    use std::os::unix::fs::PermissionsExt;
    let want_mode = if secret { 0o600 } else { 0o644 };
    if let (Ok(old), Ok(meta)) = (std::fs::read(path), std::fs::metadata(path)) {
        if old == data && meta.permissions().mode() & 0o777 == want_mode {
            return Ok(());
        }
    }
    atomic_write(path, data, want_mode).map_err(io_err(path))
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
    write_master_cas(root, s)?;
    let mut report = Vec::new();
    for spec in master_cert_specs(id) {
        let ca = s
            .ca(spec.ca)
            .ok_or(PkiError::MissingSecret("etcd_ca_key"))?;
        let outcome = ensure_cert(root, &spec, ca, &id.cluster_name, now)?;
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
    let outcome = match read_existing(root, spec, ca, cluster_name) {
        Existing::Absent => Outcome::Created,
        Existing::Unusable(why) => Outcome::Replaced(why),
        Existing::Pair(c, k) => match check_existing(&c, &k, spec, ca, now) {
            None => return Ok(Outcome::Kept),
            Some(why) => Outcome::Replaced(why),
        },
    };
    let issued = issue(spec, ca, now)?;
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
        Target::Combined { path } => {
            let p = rooted(root, path);
            write_secret(&p, format!("{}{}", i.cert_pem, i.key_pem).as_bytes()).map_err(io_err(&p))
        }
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

/// Node path of a spec's certificate file (for tests and reports).
pub fn cert_path(spec: &CertSpec) -> PathBuf {
    match &spec.target {
        Target::Files { cert, .. } => PathBuf::from(cert),
        Target::Combined { path } | Target::Kubeconfig { path, .. } => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

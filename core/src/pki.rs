//! Cluster PKI, the part both programs share: certificate authorities (made once on the
//! workstation by `nodeimage cluster new`) and the issuing and checking of leaf
//! certificates, which each master does for itself from the CA keys its node config
//! carries (`firstboot`'s `pki` module decides which certificates and writes them).
//!
//! Keys are ECDSA P-256. Kubernetes and etcd accept ECDSA and RSA alike (kubeadm offers
//! `ECDSA-P256` as its `encryptionAlgorithm`); P-256 keys are small and fast to make on
//! a small node, and the `ring` backend of rcgen cannot generate RSA keys at all.
//!
//! The file layout follows kubeadm (`/etc/kubernetes/pki/...`), so operators find what
//! they expect ([`crate::layout`]). Everything here is a pure function of its inputs.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

/// CA certificates are valid for ten years.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// Leaf certificates are valid for one year.
pub const LEAF_VALIDITY: Duration = Duration::days(365);
/// An existing leaf certificate that expires sooner than this is reissued (see
/// [`renew_window`]).
pub const RENEW_BEFORE: Duration = Duration::days(30);

/// How long before its end a certificate is reissued: [`RENEW_BEFORE`], or the last
/// third of its lifetime when that is shorter (a one-hour certificate is renewed in its
/// last 20 minutes, not at once).
pub fn renew_window(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Duration {
    RENEW_BEFORE.min((not_after - not_before) / 3)
}
/// Certificates start a little in the past to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::minutes(5);

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

/// Maps an I/O error on `path` to [`PkiError::Io`].
pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `Debug` naming the type and that its secret field is there (`<redacted>`), never the
/// secret itself.
macro_rules! redacted_debug {
    ($ty:ident, $secret:literal) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field($secret, &"<redacted>")
                    .finish_non_exhaustive()
            }
        }
    };
}

/// A certificate authority: certificate and private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CaPair {
    pub cert_pem: String,
    pub key_pem: String,
}

redacted_debug!(CaPair, "key_pem");

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

redacted_debug!(ServiceAccountKey, "private_pem");

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
    /// Certificate followed by key in one 0600 file, laid out as the kubelet's certificate
    /// store does: `path` (`…/kubelet-client-current.pem`) is a symlink to a dated file
    /// beside it (`kubelet-client-<YYYY-MM-DD-HH-MM-SS>.pem`). The kubelet rotates the
    /// certificate by writing a new dated file and moving the link; it refuses to when
    /// `-current.pem` is a regular file.
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

redacted_debug!(Issued, "key_pem");

/// Issue a leaf certificate for `spec`, signed by `ca`, valid for [`LEAF_VALIDITY`].
pub fn issue(spec: &CertSpec, ca: &CaPair, now: OffsetDateTime) -> Result<Issued, PkiError> {
    issue_valid_for(spec, ca, now, LEAF_VALIDITY)
}

/// [`issue`] with another lifetime (never past the CA's own end).
pub fn issue_valid_for(
    spec: &CertSpec,
    ca: &CaPair,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<Issued, PkiError> {
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
    p.not_after = (now + validity).min(ca_not_after(&ca.cert_pem).unwrap_or(now + validity));
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
    let not_before = cert.validity().not_before.to_datetime();
    if not_after - now < renew_window(not_before, not_after) || not_before > now + BACKDATE {
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

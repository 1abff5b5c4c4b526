//! A master mints its certificates from the CAs in its node config; parse them back.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ::time::OffsetDateTime;
use firstboot::pki::{self, CaPair, MasterIdentity, MasterSecrets, Outcome, ServiceAccountKey};
use nodeimage_core::files::rooted;
use nodeimage_core::kubeconfig::Kubeconfig;
use nodeimage_core::layout::paths;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::parse_x509_pem;

fn secrets(now: OffsetDateTime) -> MasterSecrets {
    MasterSecrets {
        ca: CaPair::generate("kubernetes", now).unwrap(),
        front_proxy_ca: CaPair::generate("front-proxy-ca", now).unwrap(),
        etcd_ca: Some(CaPair::generate("etcd-ca", now).unwrap()),
        service_account: ServiceAccountKey::generate().unwrap(),
    }
}

fn identity() -> MasterIdentity {
    MasterIdentity {
        cluster_name: "demo".into(),
        hostname: "master-1".into(),
        addresses: vec!["203.0.113.11".into(), "10.0.0.11".into()],
        masters: vec!["10.0.0.11".into(), "10.0.0.12".into(), "10.0.0.13".into()],
        api_endpoint: "demo-k8s.example.com:6443".into(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        dns_domain: "cluster.local".into(),
        stacked_etcd: true,
        bootstrap: true,
    }
}

struct Parsed {
    subject_cn: String,
    orgs: BTreeSet<String>,
    issuer_cn: String,
    dns: BTreeSet<String>,
    ips: BTreeSet<IpAddr>,
    server_auth: bool,
    client_auth: bool,
    is_ca: bool,
    days: i64,
}

fn parse(pem_text: &str, ca_pem: &str) -> Parsed {
    let (_, pem) = parse_x509_pem(pem_text.as_bytes()).unwrap();
    let c = pem.parse_x509().unwrap();
    let (_, capem) = parse_x509_pem(ca_pem.as_bytes()).unwrap();
    let ca = capem.parse_x509().unwrap();
    c.verify_signature(Some(ca.public_key()))
        .expect("signed by the CA");
    let mut dns = BTreeSet::new();
    let mut ips = BTreeSet::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => {
                    dns.insert(d.to_string());
                }
                GeneralName::IPAddress(b) => {
                    let ip: IpAddr = if b.len() == 4 {
                        <[u8; 4]>::try_from(*b).unwrap().into()
                    } else {
                        <[u8; 16]>::try_from(*b).unwrap().into()
                    };
                    ips.insert(ip);
                }
                _ => {}
            }
        }
    }
    let eku = c.extended_key_usage().unwrap().map(|e| e.value.clone());
    let v = c.validity();
    let parsed = Parsed {
        subject_cn: common_name(c.subject()),
        orgs: c
            .subject()
            .iter_organization()
            .map(|o| o.as_str().unwrap().to_string())
            .collect(),
        issuer_cn: common_name(c.issuer()),
        dns,
        ips,
        server_auth: eku.as_ref().is_some_and(|e| e.server_auth),
        client_auth: eku.as_ref().is_some_and(|e| e.client_auth),
        is_ca: c.is_ca(),
        days: (v.not_after.to_datetime() - v.not_before.to_datetime()).whole_days(),
    };
    parsed
}

/// The first CN of a certificate's subject or issuer.
fn common_name(name: &x509_parser::x509::X509Name) -> String {
    name.iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// Each of `private` is 0600, `public` 0644.
fn assert_private_and_public(root: &Path, private: &[&str], public: &str) {
    for k in private {
        assert_eq!(mode(root, k), 0o600, "{k}");
    }
    assert_eq!(mode(root, public), 0o644, "{public}");
}

fn mode(root: &Path, p: &str) -> u32 {
    std::fs::metadata(rooted(root, p))
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

fn read(root: &Path, p: &str) -> String {
    std::fs::read_to_string(rooted(root, p)).unwrap()
}

fn kubeconfig_cert(root: &Path, p: &str) -> (Kubeconfig, String) {
    let k = Kubeconfig::parse(&read(root, p)).unwrap();
    let c = k.client_certificate_pem().unwrap();
    (k, c)
}

#[test]
fn master_pki_is_complete_correct_and_idempotent() {
    let now = OffsetDateTime::now_utc();
    let s = secrets(now);
    let id = identity();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    let report = pki::ensure_master_pki(root, &id, &s, now).unwrap();
    assert!(
        report.iter().all(|(_, o)| *o == Outcome::Created),
        "{report:?}"
    );
    let ca = &s.ca.cert_pem;
    let etcd_ca = &s.etcd_ca.as_ref().unwrap().cert_pem;

    // CA files, keys 0600.
    assert_eq!(read(root, paths::CA_CRT), *ca);
    assert_private_and_public(
        root,
        &[
            paths::CA_KEY,
            paths::ETCD_CA_KEY,
            paths::FRONT_PROXY_CA_KEY,
            paths::SA_KEY,
        ],
        paths::SA_PUB,
    );
    let ca_parsed = parse(ca, ca);
    assert!(ca_parsed.is_ca);
    assert!(ca_parsed.days >= 3650, "{}", ca_parsed.days);

    // apiserver serving certificate.
    let a = parse(&read(root, paths::APISERVER_CRT), ca);
    assert_eq!(a.subject_cn, "kube-apiserver");
    assert_eq!(a.issuer_cn, "kubernetes");
    assert!(a.server_auth && !a.client_auth && !a.is_ca);
    assert!((365..=366).contains(&a.days), "{}", a.days);
    for d in [
        "demo-k8s.example.com",
        "master-1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
    ] {
        assert!(a.dns.contains(d), "{d} not in {:?}", a.dns);
    }
    for ip in [
        "10.96.0.1",
        "127.0.0.1",
        "10.0.0.11",
        "10.0.0.12",
        "10.0.0.13",
        "203.0.113.11",
    ] {
        assert!(
            a.ips.contains(&ip.parse().unwrap()),
            "{ip} not in {:?}",
            a.ips
        );
    }
    assert_private_and_public(
        root,
        &[
            paths::APISERVER_KEY,
            paths::APISERVER_KUBELET_CLIENT_KEY,
            paths::FRONT_PROXY_CLIENT_KEY,
            paths::APISERVER_ETCD_CLIENT_KEY,
            paths::ETCD_SERVER_KEY,
            paths::ETCD_PEER_KEY,
            paths::ETCD_HEALTHCHECK_CLIENT_KEY,
            paths::KUBELET_SERVING_KEY,
            paths::KUBELET_CLIENT_CURRENT,
            paths::ADMIN_CONF,
            paths::SUPER_ADMIN_CONF,
            paths::CONTROLLER_MANAGER_CONF,
            paths::SCHEDULER_CONF,
        ],
        paths::APISERVER_CRT,
    );

    let k = parse(&read(root, paths::APISERVER_KUBELET_CLIENT_CRT), ca);
    assert_eq!(k.subject_cn, "kube-apiserver-kubelet-client");
    assert_eq!(
        k.orgs,
        BTreeSet::from(["kubeadm:cluster-admins".to_string()])
    );
    assert!(k.client_auth && !k.server_auth);

    let fp = parse(
        &read(root, paths::FRONT_PROXY_CLIENT_CRT),
        &s.front_proxy_ca.cert_pem,
    );
    assert_eq!(
        (fp.subject_cn.as_str(), fp.issuer_cn.as_str()),
        ("front-proxy-client", "front-proxy-ca")
    );
    assert!(fp.client_auth && !fp.server_auth);

    for p in [paths::ETCD_SERVER_CRT, paths::ETCD_PEER_CRT] {
        let e = parse(&read(root, p), etcd_ca);
        assert_eq!(e.issuer_cn, "etcd-ca");
        assert!(e.server_auth && e.client_auth, "{p}");
        assert!(
            e.dns.contains("master-1") && e.dns.contains("localhost"),
            "{:?}",
            e.dns
        );
        for ip in ["127.0.0.1", "10.0.0.11", "203.0.113.11"] {
            assert!(e.ips.contains(&ip.parse().unwrap()), "{p}: {ip}");
        }
        assert!(
            !e.ips.contains(&"10.0.0.12".parse().unwrap()),
            "peer SANs are this master only"
        );
    }
    let ec = parse(&read(root, paths::APISERVER_ETCD_CLIENT_CRT), etcd_ca);
    assert_eq!(ec.subject_cn, "kube-apiserver-etcd-client");
    assert!(ec.client_auth && !ec.server_auth);

    // Kubeconfigs: client certs with the component identities.
    for (p, cn, org, server) in [
        (
            paths::ADMIN_CONF,
            "kubernetes-admin",
            Some("kubeadm:cluster-admins"),
            "https://demo-k8s.example.com:6443",
        ),
        (
            paths::SUPER_ADMIN_CONF,
            "kubernetes-super-admin",
            Some("system:masters"),
            "https://127.0.0.1:6443",
        ),
        (
            paths::CONTROLLER_MANAGER_CONF,
            "system:kube-controller-manager",
            None,
            "https://127.0.0.1:6443",
        ),
        (
            paths::SCHEDULER_CONF,
            "system:kube-scheduler",
            None,
            "https://127.0.0.1:6443",
        ),
    ] {
        let (kc, cert) = kubeconfig_cert(root, p);
        assert_eq!(kc.server(), Some(server), "{p}");
        assert_eq!(kc.ca_pem().as_deref(), Some(ca.as_str()));
        let c = parse(&cert, ca);
        assert_eq!(c.subject_cn, cn);
        assert_eq!(c.orgs, org.iter().map(|s| s.to_string()).collect());
        assert!(c.client_auth && !c.server_auth);
    }

    // Kubelet client (combined file) and serving certificates.
    let combined = read(root, paths::KUBELET_CLIENT_CURRENT);
    assert!(combined.contains("PRIVATE KEY"));
    // The kubelet's certificate store layout, which rotation needs: `-current.pem` is a
    // symlink to a dated 0600 file beside it (client-go refuses to rotate a regular file).
    let current = nodeimage_core::files::rooted_nofollow(root, paths::KUBELET_CLIENT_CURRENT);
    let link = std::fs::read_link(&current).expect("kubelet-client-current.pem is a symlink");
    let link = link.to_str().unwrap();
    assert!(
        link.starts_with("kubelet-client-2") && link.ends_with(".pem") && !link.contains('/'),
        "{link}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(current.parent().unwrap().join(link)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
    let kc = parse(&combined, ca);
    assert_eq!(kc.subject_cn, "system:node:master-1");
    assert_eq!(kc.orgs, BTreeSet::from(["system:nodes".to_string()]));
    let ks = parse(&read(root, paths::KUBELET_SERVING_CRT), ca);
    assert!(
        ks.server_auth
            && ks.dns.contains("master-1")
            && ks.ips.contains(&"10.0.0.11".parse().unwrap())
    );

    // Second run keeps everything, byte for byte.
    let before = read(root, paths::APISERVER_CRT);
    let report = pki::ensure_master_pki(root, &id, &s, now).unwrap();
    assert!(
        report.iter().all(|(_, o)| *o == Outcome::Kept),
        "{report:?}"
    );
    assert_eq!(read(root, paths::APISERVER_CRT), before);

    // A master address learned later: only certificates naming it are reissued.
    let mut id2 = id.clone();
    id2.masters.push("10.0.0.14".into());
    let report = pki::ensure_master_pki(root, &id2, &s, now).unwrap();
    let changed: Vec<_> = report
        .iter()
        .filter(|(_, o)| *o != Outcome::Kept)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(changed, ["apiserver"]);

    // A rotated CA replaces everything it signed.
    let mut s2 = s.clone();
    s2.ca = CaPair::generate("kubernetes", now).unwrap();
    let report = pki::ensure_master_pki(root, &id2, &s2, now).unwrap();
    let replaced: Vec<_> = report
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Replaced(_)))
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(
        replaced.contains(&"apiserver")
            && replaced.contains(&"admin.conf")
            && replaced.contains(&"kubelet-client"),
        "{replaced:?}"
    );
    assert!(!replaced.contains(&"etcd-peer"), "{replaced:?}");
}

#[test]
fn master_secrets_come_from_the_node_config() {
    let s = nodeimage_core::config::Secrets {
        ca_certificate: Some("c".into()),
        ca_key: Some("k".into()),
        ..Default::default()
    };
    let e = MasterSecrets::from_secrets(&s, true).unwrap_err();
    assert!(e.to_string().contains("front_proxy_ca_certificate"), "{e}");
}

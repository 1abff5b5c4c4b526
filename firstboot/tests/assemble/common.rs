//! Shared by the assemble tests: cluster secrets made with firstboot's own PKI, node
//! configs for each role, and node roots with (fake) Kubernetes binaries.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use firstboot::pki::{CaPair, ServiceAccountKey};
use nodeimage_core::config::{NodeConfig, Role, Secrets};

pub const TOKEN: &str = "k8sabc.0123456789abcdef";
pub const WEAVE_PASSWORD: &str = "WeavePassw0rdForTheTestCluster42";
pub const MASTERS: [&str; 3] = ["10.10.0.11", "10.10.0.12", "10.10.0.13"];
pub const WORKER_IP: &str = "10.10.0.21";

/// What `nodeimage cluster new` makes, made here with the same firstboot functions.
pub struct ClusterSecrets {
    pub ca: CaPair,
    pub etcd_ca: CaPair,
    pub front_proxy_ca: CaPair,
    pub sa: ServiceAccountKey,
}

impl ClusterSecrets {
    pub fn new() -> Self {
        let now = time::OffsetDateTime::now_utc();
        ClusterSecrets {
            ca: CaPair::generate("kubernetes", now).unwrap(),
            etcd_ca: CaPair::generate("etcd-ca", now).unwrap(),
            front_proxy_ca: CaPair::generate("front-proxy-ca", now).unwrap(),
            sa: ServiceAccountKey::generate().unwrap(),
        }
    }

    /// A role's secrets, as `nodeimage node-config` hands them out.
    pub fn for_role(&self, role: Role) -> Secrets {
        match role {
            Role::Worker => Secrets {
                ca_certificate: Some(self.ca.cert_pem.clone()),
                bootstrap_token: Some(TOKEN.parse().unwrap()),
                ..Default::default()
            },
            Role::Master => Secrets {
                ca_certificate: Some(self.ca.cert_pem.clone()),
                bootstrap_token: Some(TOKEN.parse().unwrap()),
                ca_key: Some(self.ca.key_pem.clone()),
                etcd_ca_certificate: Some(self.etcd_ca.cert_pem.clone()),
                etcd_ca_key: Some(self.etcd_ca.key_pem.clone()),
                front_proxy_ca_certificate: Some(self.front_proxy_ca.cert_pem.clone()),
                front_proxy_ca_key: Some(self.front_proxy_ca.key_pem.clone()),
                service_account_key: Some(self.sa.private_pem.clone()),
                service_account_public_key: Some(self.sa.public_pem.clone()),
                weave_password: Some(WEAVE_PASSWORD.into()),
            },
        }
    }

    /// The node config of one node of a 3-master cluster with ingress-nginx and kured.
    pub fn node(&self, role: Role, bootstrap: bool, hostname: &str, ip: &str) -> NodeConfig {
        let masters = MASTERS.join(", ");
        let yaml = format!(
            "version: 1
role: {role}
hostname: {hostname}
bootstrap: {bootstrap}
address: {ip}
private_address: {ip}
cluster:
  name: demo
  api_endpoint: api.demo.example.com:6443
  masters: [{masters}]
  nodes: [10.10.0.0/24]
  network:
    trusted_subnets: [10.10.0.0/24]
  addons:
    ingress-nginx:
      enabled: true
    kured:
      enabled: true
preflight:
  skip: [memory, disk, architecture, kernel-modules, sysctls, ports]
"
        );
        let mut c = NodeConfig::parse("test node config", &yaml).unwrap();
        c.secrets = self.for_role(role);
        c.validate("test node config").unwrap();
        c
    }
}

/// A node root with executable stand-ins for the binaries at these node paths.
pub fn node_root(dir: &Path, bins: &[&str]) {
    for b in bins {
        let p = nodeimage_core::files::rooted(dir, b);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

pub const ALL_BINARIES: [&str; 7] = [
    "/usr/bin/etcd",
    "/usr/bin/kube-apiserver",
    "/usr/bin/kube-controller-manager",
    "/usr/bin/kube-scheduler",
    "/usr/bin/kubelet",
    "/usr/bin/kube-proxy",
    "/usr/bin/kubectl",
];

pub fn path(root: &Path, node_path: &str) -> PathBuf {
    nodeimage_core::files::rooted(root, node_path)
}

pub fn read(root: &Path, node_path: &str) -> String {
    std::fs::read_to_string(path(root, node_path)).unwrap_or_else(|e| panic!("{node_path}: {e}"))
}

pub fn mode(root: &Path, node_path: &str) -> u32 {
    std::fs::metadata(path(root, node_path))
        .unwrap_or_else(|e| panic!("{node_path}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

/// Every regular file under `root`: (relative path) -> (mode, inode, mtime ns, contents).
/// Every file under `root`: mode, inode, mtime and contents (compared, never printed:
/// some are private keys).
pub fn snapshot(root: &Path) -> BTreeMap<String, (u32, u64, i64, Contents)> {
    let mut out = BTreeMap::new();
    for (p, m) in test_support::files::walk(root) {
        if m.is_file() {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.insert(
                rel,
                (
                    m.permissions().mode() & 0o7777,
                    m.ino(),
                    m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                    Contents(std::fs::read(&p).unwrap()),
                ),
            );
        }
    }
    out
}

/// File contents whose Debug output is a length, not the bytes (keys are among them).
#[derive(PartialEq, Eq)]
pub struct Contents(pub Vec<u8>);

impl std::fmt::Debug for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

/// The paths whose entries differ between two snapshots.
pub fn changed_paths<V: PartialEq>(
    a: &BTreeMap<String, V>,
    b: &BTreeMap<String, V>,
) -> Vec<String> {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

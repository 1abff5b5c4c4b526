//! One master's etcd member: where it listens and what it advertises (from the port
//! table), and its configuration rendered as an environment file and a systemd unit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nodeimage_core::config::NodeConfig;
use nodeimage_core::layout::paths;

use super::{EtcdError, DATA_DIR, ENV_FILE, LOCAL_METRICS_URL};

/// TLS files etcd and the join client use (paths as etcd sees them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub peer_cert: PathBuf,
    pub peer_key: PathBuf,
    /// Client certificate for member management and health checks.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    /// The kubeadm layout minted by [`crate::pki`], under a root prefix.
    pub fn under(root: &Path) -> Self {
        let r = |p: &str| nodeimage_core::files::rooted(root, p);
        EtcdTls {
            ca: r(paths::ETCD_CA_CRT),
            server_cert: r(paths::ETCD_SERVER_CRT),
            server_key: r(paths::ETCD_SERVER_KEY),
            peer_cert: r(paths::ETCD_PEER_CRT),
            peer_key: r(paths::ETCD_PEER_KEY),
            client_cert: r(paths::ETCD_HEALTHCHECK_CLIENT_CRT),
            client_key: r(paths::ETCD_HEALTHCHECK_CLIENT_KEY),
        }
    }
}

/// One master's etcd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMemberSpec {
    /// Member name: the node's hostname.
    pub name: String,
    /// This master's internal address (peer and client traffic).
    pub address: String,
    /// Every master's internal address, this one included.
    pub masters: Vec<String>,
    pub bootstrap: bool,
    pub data_dir: PathBuf,
    /// `initial-cluster-token`: the cluster name, so two clusters never merge by mistake.
    pub cluster_token: String,
    pub tls: EtcdTls,
    pub client_port: u16,
    pub peer_port: u16,
    /// `listen-client-urls`, from the port table (the private address and 127.0.0.1;
    /// 127.0.0.1 only with `network.etcd_localhost_only`). Empty: the advertised URL.
    pub listen_client_urls: Vec<String>,
    /// `listen-peer-urls`, from the port table. Empty: the advertised peer URL.
    pub listen_peer_urls: Vec<String>,
    /// `components.etcd.extra_args` as environment variables (`heartbeat-interval` →
    /// `ETCD_HEARTBEAT_INTERVAL`), replacing the product's.
    pub extra_env: BTreeMap<String, String>,
}

fn url(host: &str, port: u16) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

impl EtcdMemberSpec {
    /// From a master's node config. `address` is the master's internal address as the
    /// other masters know it (its `private_address`, else `address`, else detected).
    /// Ports and listeners come from the port table; with `network.etcd_localhost_only`
    /// the member advertises 127.0.0.1 (a single master, as validation requires).
    pub fn from_node_config(
        c: &NodeConfig,
        hostname: &str,
        address: &str,
        root: &Path,
    ) -> Result<Self, EtcdError> {
        use nodeimage_core::ports::Service;
        if c.cluster.etcd.is_some() {
            return Err(EtcdError::Config(
                "external etcd is configured: no stacked etcd member".into(),
            ));
        }
        let ip: std::net::IpAddr = address.parse().map_err(|_| {
            EtcdError::Config(format!(
                "the master's internal address `{address}` is not an IP address"
            ))
        })?;
        let policy = crate::kube::port_policy(c, ip)?;
        let (Some(client_port), Some(peer_port)) = (
            policy.port(Service::EtcdClient),
            policy.port(Service::EtcdPeer),
        ) else {
            return Err(EtcdError::Config(
                "the port table has no etcd rows for this master".into(),
            ));
        };
        let listen_client_urls = policy.etcd_listen_client_urls()?;
        let listen_peer_urls = policy.etcd_listen_peer_urls()?;
        let loopback_only = policy
            .listen_addresses(Service::EtcdClient)?
            .iter()
            .all(|a| a.ip().is_loopback());
        let address = if loopback_only {
            "127.0.0.1".to_string()
        } else {
            address.to_string()
        };
        let mut masters = c.cluster.masters.clone();
        if loopback_only {
            masters = vec![address.clone()];
        } else if !masters.contains(&address) {
            masters.push(address.clone());
        }
        Ok(EtcdMemberSpec {
            name: hostname.to_string(),
            address,
            masters,
            bootstrap: c.bootstrap,
            data_dir: nodeimage_core::files::rooted(root, DATA_DIR),
            cluster_token: c.cluster.name.clone(),
            tls: EtcdTls::under(root),
            client_port,
            peer_port,
            listen_client_urls,
            listen_peer_urls,
            extra_env: c
                .cluster
                .components
                .etcd
                .extra_args
                .iter()
                .map(|(k, v)| {
                    (
                        format!("ETCD_{}", k.to_ascii_uppercase().replace('-', "_")),
                        v.clone(),
                    )
                })
                .collect(),
        })
    }

    pub fn peer_url(&self) -> String {
        url(&self.address, self.peer_port)
    }

    pub fn client_url(&self) -> String {
        url(&self.address, self.client_port)
    }

    /// Client URLs of the other masters, in config order.
    pub fn other_endpoints(&self) -> Vec<String> {
        self.masters
            .iter()
            .filter(|m| **m != self.address)
            .map(|m| url(m, self.client_port))
            .collect()
    }

    /// Whether the data directory holds a member (a WAL), i.e. etcd will ignore the
    /// initial-cluster settings and resume.
    pub fn has_data(&self) -> bool {
        let wal = self.data_dir.join("member").join("wal");
        std::fs::read_dir(wal)
            .map(|mut d| {
                d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal")))
            })
            .unwrap_or(false)
    }
}

/// `initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// etcd's configuration as `ETCD_*` environment variables (one per command-line flag).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EtcdEnv {
    pub vars: BTreeMap<String, String>,
}

impl EtcdEnv {
    /// The systemd `EnvironmentFile=` form, sorted.
    pub fn to_env_file(&self) -> String {
        let mut s = String::from("# Written by firstboot: this master's etcd member.\n");
        for (k, v) in &self.vars {
            s.push_str(&format!("{k}={v}\n"));
        }
        s
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.vars.get(k).map(String::as_str)
    }
}

/// The environment for this member. It listens where the port table says (the internal
/// address and 127.0.0.1, so the local kube-apiserver need not know the node's address)
/// and advertises the internal address. Client and peer connections both need a
/// certificate signed by the etcd CA.
pub fn etcd_env(spec: &EtcdMemberSpec, initial_cluster: &str, state: ClusterState) -> EtcdEnv {
    let p = |x: &Path| x.display().to_string();
    let client = spec.client_url();
    let listen = |urls: &[String], advertised: String| {
        if urls.is_empty() {
            advertised
        } else {
            urls.join(",")
        }
    };
    let listen_client = listen(&spec.listen_client_urls, client.clone());
    let listen_peer = listen(&spec.listen_peer_urls, spec.peer_url());
    let mut v = BTreeMap::new();
    let mut set = |k: &str, val: String| {
        v.insert(k.to_string(), val);
    };
    set("ETCD_NAME", spec.name.clone());
    set("ETCD_DATA_DIR", p(&spec.data_dir));
    set("ETCD_LISTEN_CLIENT_URLS", listen_client);
    set("ETCD_ADVERTISE_CLIENT_URLS", client);
    set("ETCD_LISTEN_PEER_URLS", listen_peer);
    set("ETCD_INITIAL_ADVERTISE_PEER_URLS", spec.peer_url());
    set("ETCD_LISTEN_METRICS_URLS", LOCAL_METRICS_URL.to_string());
    set("ETCD_INITIAL_CLUSTER", initial_cluster.to_string());
    set(
        "ETCD_INITIAL_CLUSTER_STATE",
        match state {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
        .to_string(),
    );
    set("ETCD_INITIAL_CLUSTER_TOKEN", spec.cluster_token.clone());
    set("ETCD_CERT_FILE", p(&spec.tls.server_cert));
    set("ETCD_KEY_FILE", p(&spec.tls.server_key));
    set("ETCD_TRUSTED_CA_FILE", p(&spec.tls.ca));
    set("ETCD_CLIENT_CERT_AUTH", "true".into());
    set("ETCD_PEER_CERT_FILE", p(&spec.tls.peer_cert));
    set("ETCD_PEER_KEY_FILE", p(&spec.tls.peer_key));
    set("ETCD_PEER_TRUSTED_CA_FILE", p(&spec.tls.ca));
    set("ETCD_PEER_CLIENT_CERT_AUTH", "true".into());
    set("ETCD_SNAPSHOT_COUNT", "10000".into());
    set("ETCD_STRICT_RECONFIG_CHECK", "true".into());
    for (k, val) in &spec.extra_env {
        set(k, val.clone());
    }
    EtcdEnv { vars: v }
}

/// The systemd unit that runs etcd with the environment file.
pub fn etcd_unit(etcd_bin: &str) -> String {
    format!(
        "[Unit]
Description=etcd member of the cluster's stacked etcd (configured by firstboot)
Documentation=https://etcd.io/docs/
After=network-online.target nodeimage-firewall.service
Wants=network-online.target
Requires=nodeimage-firewall.service

[Service]
Type=notify
EnvironmentFile={ENV_FILE}
ExecStart={etcd_bin}
Restart=on-failure
RestartSec=5s
LimitNOFILE=65536
Nice=-10
IOSchedulingClass=best-effort
IOSchedulingPriority=0

[Install]
WantedBy=multi-user.target\n"
    )
}

#[cfg(test)]
mod tests {
    use super::super::{CLIENT_PORT, PEER_PORT};
    use super::*;

    #[test]
    fn env_listens_on_the_private_address_and_localhost() {
        let spec = EtcdMemberSpec {
            name: "m1".into(),
            address: "10.0.0.1".into(),
            masters: vec!["10.0.0.1".into(), "10.0.0.2".into()],
            bootstrap: true,
            data_dir: "/var/lib/etcd".into(),
            cluster_token: "demo".into(),
            tls: EtcdTls::under(Path::new("/")),
            client_port: CLIENT_PORT,
            peer_port: PEER_PORT,
            listen_client_urls: vec![],
            listen_peer_urls: vec![],
            extra_env: [("ETCD_HEARTBEAT_INTERVAL".to_string(), "500".to_string())].into(),
        };
        let e = etcd_env(&spec, "m1=https://10.0.0.1:2380", ClusterState::New);
        // components.etcd.extra_args arrive as ETCD_ variables.
        assert_eq!(e.get("ETCD_HEARTBEAT_INTERVAL"), Some("500"));
        assert_eq!(
            e.get("ETCD_LISTEN_CLIENT_URLS"),
            Some("https://10.0.0.1:2379")
        );
        assert_eq!(
            e.get("ETCD_LISTEN_PEER_URLS"),
            Some("https://10.0.0.1:2380")
        );
        assert_eq!(e.get("ETCD_CLIENT_CERT_AUTH"), Some("true"));
        assert_eq!(spec.other_endpoints(), ["https://10.0.0.2:2379"]);
    }

    fn master_config(extra_network: &str) -> NodeConfig {
        NodeConfig::parse(
            "m",
            &format!(
                "version: 1\nrole: master\nbootstrap: true\nprivate_address: 10.0.0.1\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1\n  masters: [10.0.0.1, 10.0.0.2]\n  network:\n    node_port_range: 30000-32767\n{extra_network}"
            ),
        )
        .unwrap()
    }

    #[test]
    fn listeners_come_from_the_port_table() {
        use nodeimage_core::ports::{PortPolicy, Service};
        let c = master_config("");
        let spec = EtcdMemberSpec::from_node_config(&c, "m1", "10.0.0.1", Path::new("/")).unwrap();
        let policy = PortPolicy::for_node(&c).unwrap();
        assert_eq!(policy.port(Service::EtcdClient), Some(CLIENT_PORT));
        assert_eq!(policy.port(Service::EtcdPeer), Some(PEER_PORT));
        let e = etcd_env(&spec, "m1=https://10.0.0.1:2380", ClusterState::New);
        assert_eq!(
            e.get("ETCD_LISTEN_CLIENT_URLS"),
            Some("https://10.0.0.1:2379,https://127.0.0.1:2379")
        );
        assert_eq!(
            e.get("ETCD_LISTEN_PEER_URLS"),
            Some("https://10.0.0.1:2380,https://127.0.0.1:2380")
        );
        assert_eq!(
            e.get("ETCD_ADVERTISE_CLIENT_URLS"),
            Some("https://10.0.0.1:2379")
        );
        // Localhost-only etcd (one master): listen and advertise on 127.0.0.1.
        let mut one = master_config("    etcd_localhost_only: true\n");
        one.cluster.masters = vec!["10.0.0.1".into()];
        let spec =
            EtcdMemberSpec::from_node_config(&one, "m1", "10.0.0.1", Path::new("/")).unwrap();
        let e = etcd_env(&spec, "m1=https://127.0.0.1:2380", ClusterState::New);
        assert_eq!(
            e.get("ETCD_LISTEN_CLIENT_URLS"),
            Some("https://127.0.0.1:2379")
        );
        assert_eq!(
            e.get("ETCD_ADVERTISE_CLIENT_URLS"),
            Some("https://127.0.0.1:2379")
        );
        assert!(spec.other_endpoints().is_empty());
    }

    #[test]
    fn env_file_is_sorted_and_mutual_tls() {
        let spec =
            EtcdMemberSpec::from_node_config(&master_config(""), "m1", "10.0.0.1", Path::new("/"))
                .unwrap();
        let e = etcd_env(&spec, "m1=https://10.0.0.1:2380", ClusterState::New);
        assert_eq!(e.get("ETCD_CLIENT_CERT_AUTH"), Some("true"));
        assert_eq!(e.get("ETCD_PEER_CLIENT_CERT_AUTH"), Some("true"));
        assert_eq!(spec.other_endpoints(), ["https://10.0.0.2:2379"]);
        let file = e.to_env_file();
        let keys: Vec<&str> = file
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }
}

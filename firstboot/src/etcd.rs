//! Stacked etcd: how the masters assemble one etcd cluster without a coordinator.
//!
//! Exactly one master (the bootstrap master: marked in its node config, else the first
//! master of cluster.yml) starts a *new* cluster. Every other master waits until an
//! existing member answers, adds itself through etcd's v3 API (the JSON gRPC gateway
//! over client TLS: `/v3/cluster/member/{list,add,remove}`), then starts etcd with
//! `initial-cluster-state=existing` and the member list the add returned.
//!
//! * Concurrent joins serialise themselves: etcd refuses a member add while the cluster
//!   has an unstarted member it would need for quorum ("not enough started members") or
//!   a member not yet connected long enough; the refused master backs off and retries.
//! * A master that crashed mid-join (already a member, never started) starts with the
//!   current member list.
//! * A master whose data directory is gone but which is still listed as a started
//!   member is removed and added again.
//! * A bootstrap master whose data is gone finds the running cluster (another member
//!   answers) and rejoins it the same way instead of starting a second cluster.
//!
//! Starting etcd is behind [`EtcdService`]: systemd on the node ([`SystemdEtcd`]), a child
//! process in tests. Talking to etcd is behind [`EtcdApi`] ([`HttpEtcdClient`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use nodeimage_core::config::NodeConfig;
use nodeimage_core::layout::paths;

/// etcd client port as the port table has it (for tests and tools; a node takes its
/// ports and listeners from [`nodeimage_core::ports::PortPolicy`], and a test keeps the two equal).
pub const CLIENT_PORT: u16 = 2379;
/// etcd peer port as the port table has it (see [`CLIENT_PORT`]).
pub const PEER_PORT: u16 = 2380;
/// etcd metrics/health listener, plain HTTP on loopback. Not a row of the port table:
/// nothing outside the node uses it, and the firewall drops every port it does not list.
pub const LOCAL_METRICS_URL: &str = "http://127.0.0.1:2381";
/// Where the etcd environment file lives on the node.
pub const ENV_FILE: &str = "/etc/etcd/etcd.env";
pub const UNIT_NAME: &str = "etcd.service";
pub const UNIT_PATH: &str = "/etc/systemd/system/etcd.service";
pub const DATA_DIR: &str = "/var/lib/etcd";

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd API {endpoint}: {message}")]
    Api { endpoint: String, message: String },
    #[error("starting etcd: {0}")]
    Service(String),
    #[error("timed out after {waited:?} {doing}; last error: {last}")]
    Deadline {
        waited: Duration,
        doing: String,
        last: String,
    },
    #[error("{0}")]
    Config(String),
}

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
        let ports = |e: nodeimage_core::ports::PortsError| EtcdError::Config(e.to_string());
        let policy = crate::kube::port_policy(c, ip).map_err(ports)?;
        let (Some(client_port), Some(peer_port)) = (
            policy.port(Service::EtcdClient),
            policy.port(Service::EtcdPeer),
        ) else {
            return Err(EtcdError::Config(
                "the port table has no etcd rows for this master".into(),
            ));
        };
        let listen_client_urls = policy.etcd_listen_client_urls().map_err(ports)?;
        let listen_peer_urls = policy.etcd_listen_peer_urls().map_err(ports)?;
        let loopback_only = policy
            .listen_addresses(Service::EtcdClient)
            .map_err(ports)?
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
    EtcdEnv { vars: v }
}

/// The systemd unit that runs etcd with the environment file.
pub fn etcd_unit(etcd_bin: &str) -> String {
    format!(
        "[Unit]
Description=etcd member of the cluster's stacked etcd (configured by firstboot)
Documentation=https://etcd.io/docs/
After=network-online.target
Wants=network-online.target

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

/// An etcd member as the v3 API reports it. An unstarted member has no name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    #[serde(rename = "ID", deserialize_with = "de_u64")]
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    pub client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

impl Member {
    pub fn is_started(&self) -> bool {
        !self.name.is_empty()
    }
}

/// grpc-gateway writes uint64 as a JSON string.
fn de_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        N(u64),
    }
    match N::deserialize(d)? {
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
        N::N(n) => Ok(n),
    }
}

/// `name=peerURL,...` for `initial-cluster`: every member of the list, this one under its
/// own name. Unstarted members have no name yet; they get a placeholder (etcd matches
/// the other members by peer URL, not by name, when it joins an existing cluster).
pub fn initial_cluster(members: &[Member], self_name: &str, self_peer_url: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for m in members {
        let is_self = m.peer_urls.iter().any(|u| u == self_peer_url);
        let name = if is_self {
            self_name.to_string()
        } else if m.name.is_empty() {
            format!("unstarted-{:x}", m.id)
        } else {
            m.name.clone()
        };
        for u in &m.peer_urls {
            parts.push(format!("{name}={u}"));
        }
    }
    if !members
        .iter()
        .any(|m| m.peer_urls.iter().any(|u| u == self_peer_url))
    {
        parts.push(format!("{self_name}={self_peer_url}"));
    }
    parts.sort();
    parts.join(",")
}

/// What a joining master does next, given the member list an existing member returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinAction {
    /// Not a member: add this member.
    Add,
    /// Already a member (added, never started, or data intact): start with this
    /// initial-cluster and state `existing`.
    Start { initial_cluster: String },
    /// Listed as a started member (or under its name with another peer URL) but its data
    /// is gone: remove that member, then add again.
    Remove { id: u64 },
}

/// Decide the next join step. Pure.
pub fn plan_join(name: &str, peer_url: &str, members: &[Member], has_data: bool) -> JoinAction {
    if let Some(m) = members
        .iter()
        .find(|m| m.peer_urls.iter().any(|u| u == peer_url))
    {
        if m.is_started() && !has_data {
            return JoinAction::Remove { id: m.id };
        }
        return JoinAction::Start {
            initial_cluster: initial_cluster(members, name, peer_url),
        };
    }
    if let Some(m) = members.iter().find(|m| m.name == name) {
        // Same name, different peer URL: this node's address changed.
        return JoinAction::Remove { id: m.id };
    }
    JoinAction::Add
}

/// Access to the etcd v3 cluster API.
pub trait EtcdApi {
    fn member_list(&self, endpoint: &str) -> Result<Vec<Member>, EtcdError>;
    /// Add a voting member; returns the member list after the add.
    fn member_add(&self, endpoint: &str, peer_urls: &[String]) -> Result<Vec<Member>, EtcdError>;
    fn member_remove(&self, endpoint: &str, id: u64) -> Result<(), EtcdError>;
    /// `GET /health` reports `"health":"true"`.
    fn healthy(&self, endpoint: &str) -> bool;
}

/// Starts and checks the local etcd.
pub trait EtcdService {
    /// Write `env` where etcd reads it and (re)start etcd.
    fn start(&self, env: &EtcdEnv) -> Result<(), EtcdError>;
    fn is_running(&self) -> bool;
}

/// The v3 JSON gateway over HTTPS with a client certificate.
pub struct HttpEtcdClient {
    client: reqwest::blocking::Client,
}

#[derive(Deserialize)]
struct MembersResponse {
    #[serde(default)]
    members: Vec<Member>,
}

impl HttpEtcdClient {
    /// `ca_pem` verifies the members; `cert_pem` + `key_pem` authenticate this client.
    pub fn new(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        timeout: Duration,
    ) -> Result<Self, EtcdError> {
        let cfg = |e: reqwest::Error| EtcdError::Config(format!("etcd client TLS: {e}"));
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(cfg)?;
        let id = reqwest::Identity::from_pem(format!("{cert_pem}\n{key_pem}").as_bytes())
            .map_err(cfg)?;
        let client = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(id)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .timeout(timeout)
            .no_proxy()
            .build()
            .map_err(cfg)?;
        Ok(HttpEtcdClient { client })
    }

    /// From the TLS files of a member spec.
    pub fn from_tls(tls: &EtcdTls, timeout: Duration) -> Result<Self, EtcdError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| EtcdError::Config(format!("{}: {e}", p.display())))
        };
        Self::new(
            &read(&tls.ca)?,
            &read(&tls.client_cert)?,
            &read(&tls.client_key)?,
            timeout,
        )
    }

    fn post<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, EtcdError> {
        let api = |message: String| EtcdError::Api {
            endpoint: endpoint.to_string(),
            message,
        };
        let resp = self
            .client
            .post(format!("{}{path}", endpoint.trim_end_matches('/')))
            .json(&body)
            .send()
            .map_err(|e| api(error_chain(&e)))?;
        let status = resp.status();
        let text = resp.text().map_err(|e| api(error_chain(&e)))?;
        if !status.is_success() {
            #[derive(Deserialize)]
            struct E {
                #[serde(default)]
                error: String,
            }
            let msg = serde_json::from_str::<E>(&text)
                .map(|e| e.error)
                .unwrap_or_default();
            return Err(api(format!(
                "{status}: {}",
                if msg.is_empty() { text.trim() } else { &msg }
            )));
        }
        serde_json::from_str(&text)
            .map_err(|e| api(format!("unexpected response ({e}): {}", text.trim())))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl EtcdApi for HttpEtcdClient {
    fn member_list(&self, endpoint: &str) -> Result<Vec<Member>, EtcdError> {
        Ok(self
            .post::<MembersResponse>(endpoint, "/v3/cluster/member/list", serde_json::json!({}))?
            .members)
    }

    fn member_add(&self, endpoint: &str, peer_urls: &[String]) -> Result<Vec<Member>, EtcdError> {
        Ok(self
            .post::<MembersResponse>(
                endpoint,
                "/v3/cluster/member/add",
                serde_json::json!({ "peerURLs": peer_urls }),
            )?
            .members)
    }

    fn member_remove(&self, endpoint: &str, id: u64) -> Result<(), EtcdError> {
        self.post::<serde_json::Value>(
            endpoint,
            "/v3/cluster/member/remove",
            serde_json::json!({ "ID": id.to_string() }),
        )?;
        Ok(())
    }

    fn healthy(&self, endpoint: &str) -> bool {
        #[derive(Deserialize)]
        struct H {
            health: String,
        }
        self.client
            .get(format!("{}/health", endpoint.trim_end_matches('/')))
            .send()
            .ok()
            .and_then(|r| r.json::<H>().ok())
            .is_some_and(|h| h.health == "true")
    }
}

/// Timing of the join protocol.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// Give up after this long.
    pub deadline: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a started etcd may take to report healthy before the join looks again.
    pub health_timeout: Duration,
}

impl Default for JoinOptions {
    fn default() -> Self {
        JoinOptions {
            deadline: Duration::from_secs(30 * 60),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(15),
            health_timeout: Duration::from_secs(60),
        }
    }
}

/// How this member came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// etcd was already running and healthy.
    AlreadyRunning,
    /// The data directory held a member: etcd was started and resumed from it.
    Resumed,
    /// The bootstrap master started a new one-member cluster.
    NewCluster,
    /// Added to the cluster and started.
    Joined { initial_cluster: String },
    /// Already a member that had never started (crashed mid-join): started.
    StartedUnstarted { initial_cluster: String },
    /// Listed with its data gone: removed, added again and started.
    Rejoined {
        removed: u64,
        initial_cluster: String,
    },
}

struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn wait(&mut self, deadline: Instant) {
        let now = Instant::now();
        let d = self.next.min(deadline.saturating_duration_since(now));
        std::thread::sleep(d);
        self.next = (self.next * 2).min(self.max);
    }
}

/// Bring this master's etcd member up: start a new cluster (bootstrap master), resume
/// from data, or join the running cluster. Idempotent; safe to run again after a crash.
pub fn join_cluster(
    spec: &EtcdMemberSpec,
    api: &dyn EtcdApi,
    svc: &dyn EtcdService,
    opts: &JoinOptions,
) -> Result<JoinOutcome, EtcdError> {
    let started = Instant::now();
    let deadline = started + opts.deadline;
    let own = spec.client_url();
    if svc.is_running() && api.healthy(&own) {
        tracing::info!(member = %spec.name, "etcd already running and healthy");
        return Ok(JoinOutcome::AlreadyRunning);
    }
    if spec.has_data() {
        tracing::info!(member = %spec.name, data_dir = %spec.data_dir.display(), "etcd data present: resuming");
        // etcd ignores the initial-cluster settings when its data directory has a member.
        let env = etcd_env(
            spec,
            &format!("{}={}", spec.name, spec.peer_url()),
            ClusterState::Existing,
        );
        svc.start(&env)?;
        wait_healthy(spec, api, svc, deadline, started)?;
        return Ok(JoinOutcome::Resumed);
    }
    let others = spec.other_endpoints();
    if spec.bootstrap {
        // A running cluster means this bootstrap master lost its data: rejoin it.
        let existing = others
            .iter()
            .find_map(|ep| api.member_list(ep).ok().map(|m| (ep.clone(), m)));
        match existing {
            None => {
                let ic = format!("{}={}", spec.name, spec.peer_url());
                tracing::info!(member = %spec.name, initial_cluster = %ic, "bootstrap master: starting a new etcd cluster");
                svc.start(&etcd_env(spec, &ic, ClusterState::New))?;
                wait_healthy(spec, api, svc, deadline, started)?;
                return Ok(JoinOutcome::NewCluster);
            }
            Some((ep, _)) => {
                tracing::info!(member = %spec.name, endpoint = %ep, "bootstrap master without data: a cluster is running, rejoining it");
            }
        }
    }
    if others.is_empty() {
        return Err(EtcdError::Config(format!(
            "{} is not the bootstrap master and no other master is known: nothing to join",
            spec.name
        )));
    }

    let mut backoff = Backoff {
        next: opts.initial_backoff,
        max: opts.max_backoff,
    };
    let mut removed: Option<u64> = None;
    let mut last = String::from("no member answered yet");
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        if Instant::now() >= deadline {
            return Err(EtcdError::Deadline {
                waited: started.elapsed(),
                doing: format!("joining etcd as {}", spec.name),
                last,
            });
        }
        let mut answered = None;
        for ep in &others {
            match api.member_list(ep) {
                Ok(m) => {
                    answered = Some((ep.clone(), m));
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        let Some((ep, members)) = answered else {
            tracing::info!(member = %spec.name, attempt, waited_s = started.elapsed().as_secs(), last_error = %last, "waiting for an etcd member to answer");
            backoff.wait(deadline);
            continue;
        };
        let action = plan_join(&spec.name, &spec.peer_url(), &members, spec.has_data());
        tracing::info!(member = %spec.name, endpoint = %ep, members = members.len(), action = ?action_name(&action), "etcd member list");
        let initial_cluster = match action {
            JoinAction::Remove { id } => {
                tracing::info!(member = %spec.name, id = format!("{id:x}"), "removing this node's stale etcd member (data lost)");
                match api.member_remove(&ep, id) {
                    Ok(()) => removed = Some(id),
                    Err(e) => {
                        tracing::info!(member = %spec.name, error = %e, "member remove refused; retrying");
                        last = e.to_string();
                        backoff.wait(deadline);
                    }
                }
                continue;
            }
            JoinAction::Start { initial_cluster } => {
                tracing::info!(member = %spec.name, "already a member that never started: starting");
                svc.start(&etcd_env(spec, &initial_cluster, ClusterState::Existing))?;
                if wait_healthy_for(spec, api, svc, deadline, opts.health_timeout)? {
                    tracing::info!(member = %spec.name, elapsed_ms = started.elapsed().as_millis() as u64, "etcd member healthy");
                    return Ok(match removed {
                        Some(r) => JoinOutcome::Rejoined {
                            removed: r,
                            initial_cluster,
                        },
                        None => JoinOutcome::StartedUnstarted { initial_cluster },
                    });
                }
                last = "started etcd did not become healthy".into();
                continue;
            }
            JoinAction::Add => match api.member_add(&ep, &[spec.peer_url()]) {
                Ok(after) => initial_cluster(&after, &spec.name, &spec.peer_url()),
                Err(e) => {
                    tracing::info!(member = %spec.name, attempt, error = %e, "member add refused (another member is joining?); backing off");
                    last = e.to_string();
                    backoff.wait(deadline);
                    continue;
                }
            },
        };
        tracing::info!(member = %spec.name, initial_cluster = %initial_cluster, "added to the etcd cluster: starting");
        svc.start(&etcd_env(spec, &initial_cluster, ClusterState::Existing))?;
        if wait_healthy_for(spec, api, svc, deadline, opts.health_timeout)? {
            tracing::info!(member = %spec.name, elapsed_ms = started.elapsed().as_millis() as u64, "etcd member healthy");
            return Ok(match removed {
                Some(r) => JoinOutcome::Rejoined {
                    removed: r,
                    initial_cluster,
                },
                None => JoinOutcome::Joined { initial_cluster },
            });
        }
        // etcd exited or stayed unhealthy (e.g. the member list changed under a concurrent
        // add): look at the list again; this member is now listed and will be started
        // with the current list.
        last = "started etcd did not become healthy".into();
    }
}

fn action_name(a: &JoinAction) -> &'static str {
    match a {
        JoinAction::Add => "add",
        JoinAction::Start { .. } => "start",
        JoinAction::Remove { .. } => "remove",
    }
}

fn wait_healthy(
    spec: &EtcdMemberSpec,
    api: &dyn EtcdApi,
    svc: &dyn EtcdService,
    deadline: Instant,
    started: Instant,
) -> Result<(), EtcdError> {
    if wait_healthy_for(
        spec,
        api,
        svc,
        deadline,
        deadline.saturating_duration_since(Instant::now()),
    )? {
        tracing::info!(member = %spec.name, elapsed_ms = started.elapsed().as_millis() as u64, "etcd member healthy");
        Ok(())
    } else {
        Err(EtcdError::Deadline {
            waited: started.elapsed(),
            doing: format!("waiting for etcd member {} to become healthy", spec.name),
            last: if svc.is_running() {
                "not healthy".into()
            } else {
                "etcd is not running".into()
            },
        })
    }
}

/// Poll the member's own /health. Ok(false) when etcd exited or `limit` passed.
fn wait_healthy_for(
    spec: &EtcdMemberSpec,
    api: &dyn EtcdApi,
    svc: &dyn EtcdService,
    deadline: Instant,
    limit: Duration,
) -> Result<bool, EtcdError> {
    let until = (Instant::now() + limit).min(deadline);
    let own = spec.client_url();
    let mut exited_checks = 0;
    loop {
        if api.healthy(&own) {
            return Ok(true);
        }
        if !svc.is_running() {
            exited_checks += 1;
            // systemd may be restarting it; a child process that exited stays exited.
            if exited_checks >= 3 {
                tracing::info!(member = %spec.name, "etcd is not running");
                return Ok(false);
            }
        } else {
            exited_checks = 0;
        }
        if Instant::now() >= until {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// etcd under systemd on the node: env file + unit under a root prefix, then systemctl.
pub struct SystemdEtcd {
    pub root: PathBuf,
    pub etcd_bin: String,
}

impl SystemdEtcd {
    fn systemctl(&self, args: &[&str]) -> Result<bool, EtcdError> {
        let st = std::process::Command::new("systemctl")
            .args(args)
            .status()
            .map_err(|e| EtcdError::Service(format!("running systemctl: {e}")))?;
        Ok(st.success())
    }
}

impl EtcdService for SystemdEtcd {
    fn start(&self, env: &EtcdEnv) -> Result<(), EtcdError> {
        let w = |p: &str, data: &str, mode: u32| {
            let path = nodeimage_core::files::rooted(&self.root, p);
            nodeimage_core::files::atomic_write(&path, data.as_bytes(), mode)
                .map_err(|e| EtcdError::Service(format!("{}: {e}", path.display())))
        };
        w(ENV_FILE, &env.to_env_file(), 0o600)?;
        w(UNIT_PATH, &etcd_unit(&self.etcd_bin), 0o644)?;
        if self.root != Path::new("/") {
            // Applying to a directory tree: nothing to start.
            return Ok(());
        }
        self.systemctl(&["daemon-reload"])?;
        self.systemctl(&["enable", UNIT_NAME])?;
        // --no-block: Type=notify would otherwise wait for a quorum this member may
        // only reach together with others.
        if !self.systemctl(&["restart", "--no-block", UNIT_NAME])? {
            return Err(EtcdError::Service(format!(
                "systemctl restart {UNIT_NAME} failed"
            )));
        }
        Ok(())
    }

    fn is_running(&self) -> bool {
        if self.root != Path::new("/") {
            return false;
        }
        std::process::Command::new("systemctl")
            .args(["is-active", "--quiet", UNIT_NAME])
            .status()
            .is_ok_and(|s| s.success())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, name: &str, peer: &str) -> Member {
        Member {
            id,
            name: name.into(),
            peer_urls: vec![peer.into()],
            client_urls: vec![],
            is_learner: false,
        }
    }

    #[test]
    fn member_json_from_the_gateway() {
        let r: MembersResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"1"},"members":[{"ID":"13278297627402085795","peerURLs":["https://10.0.0.2:2380"]},{"ID":"42","name":"m1","peerURLs":["https://10.0.0.1:2380"],"clientURLs":["https://10.0.0.1:2379"]}]}"#,
        )
        .unwrap();
        assert_eq!(r.members[0].id, 13278297627402085795);
        assert!(!r.members[0].is_started() && r.members[1].is_started());
    }

    #[test]
    fn plans() {
        let me = "https://10.0.0.3:2380";
        let list = vec![
            m(1, "m1", "https://10.0.0.1:2380"),
            m(2, "", "https://10.0.0.2:2380"),
        ];
        assert_eq!(plan_join("m3", me, &list, false), JoinAction::Add);
        let mut with_me = list.clone();
        with_me.push(m(3, "", me));
        assert_eq!(
            plan_join("m3", me, &with_me, false),
            JoinAction::Start {
                initial_cluster: "m1=https://10.0.0.1:2380,m3=https://10.0.0.3:2380,unstarted-2=https://10.0.0.2:2380".into()
            }
        );
        let mut started = list.clone();
        started.push(m(3, "m3", me));
        assert_eq!(
            plan_join("m3", me, &started, false),
            JoinAction::Remove { id: 3 }
        );
        let moved = vec![
            m(1, "m1", "https://10.0.0.1:2380"),
            m(9, "m3", "https://10.0.0.9:2380"),
        ];
        assert_eq!(
            plan_join("m3", me, &moved, false),
            JoinAction::Remove { id: 9 }
        );
    }

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
        };
        let e = etcd_env(&spec, "m1=https://10.0.0.1:2380", ClusterState::New);
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
